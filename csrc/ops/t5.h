// T5 relative bias (Raffel et al. 2020): bucket function and dispatcher handles.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/macros/Macros.h>

#include <cmath>

#include "check.h"

namespace posenc {
namespace detail {

inline auto& t5_relative_bucket_op() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("posenc::t5_relative_bucket", "")
                       .typed<at::Tensor(const at::Tensor&, bool, int64_t, int64_t)>();
  return op;
}

inline auto& t5_bias_op() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("posenc::t5_bias", "")
                       .typed<at::Tensor(const at::Tensor&, c10::SymInt, c10::SymInt, c10::SymInt,
                                         c10::SymInt, bool, int64_t)>();
  return op;
}

inline auto& t5_bias_backward_op() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("posenc::t5_bias_backward", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, c10::SymInt,
                                         c10::SymInt, c10::SymInt, c10::SymInt, bool, int64_t)>();
  return op;
}

}  // namespace detail
}  // namespace posenc
