// Relative position scores (Transformer-XL / Shaw): dispatcher handles shared by the kernels.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>

#include <tuple>

#include "check.h"

namespace posenc {
namespace detail {

inline auto& rel_pos_scores_op() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("posenc::rel_pos_scores", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, c10::SymInt,
                                         c10::SymInt, c10::SymInt, std::optional<int64_t>)>();
  return op;
}

inline auto& rel_pos_scores_backward_op() {
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("posenc::rel_pos_scores_backward", "")
          .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                    const at::Tensor&, c10::SymInt, c10::SymInt,
                                                    c10::SymInt, std::optional<int64_t>)>();
  return op;
}

}  // namespace detail
}  // namespace posenc
