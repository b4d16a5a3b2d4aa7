// KERPLE (Chi et al. 2022): dispatcher handles shared by the kernels.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>

#include <tuple>

#include "check.h"

namespace posenc {
namespace detail {

inline auto& kerple_bias_op() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("posenc::kerple_bias", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, c10::SymInt,
                                         c10::SymInt, c10::SymInt, c10::SymInt, c10::string_view,
                                         bool)>();
  return op;
}

inline auto& kerple_bias_backward_op() {
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("posenc::kerple_bias_backward", "")
          .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                    const at::Tensor&, c10::SymInt, c10::SymInt,
                                                    c10::SymInt, c10::SymInt, c10::string_view,
                                                    bool)>();
  return op;
}

}  // namespace detail
}  // namespace posenc
