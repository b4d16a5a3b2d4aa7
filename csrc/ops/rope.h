// RoPE (Su et al. 2021): dispatcher handles shared by the kernels.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>

#include <tuple>

#include "check.h"

namespace posenc {
namespace detail {

inline auto& rope_op() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("posenc::rope", "")
                       .typed<at::Tensor(const at::Tensor&, const std::optional<at::Tensor>&,
                                         const at::Tensor&, c10::SymInt, std::optional<int64_t>,
                                         bool, c10::string_view)>();
  return op;
}

inline auto& rope_backward_op() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("posenc::rope_backward", "")
                       .typed<at::Tensor(const at::Tensor&, const std::optional<at::Tensor>&,
                                         const at::Tensor&, c10::SymInt, std::optional<int64_t>,
                                         bool, c10::string_view)>();
  return op;
}

inline auto& apply_rotary_pos_emb_op() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("posenc::apply_rotary_pos_emb", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         bool, c10::string_view)>();
  return op;
}

inline auto& apply_rotary_pos_emb_backward_op() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("posenc::apply_rotary_pos_emb_backward", "")
                       .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                           const at::Tensor&, const at::Tensor&, const at::Tensor&,
                           const at::Tensor&, bool, c10::string_view)>();
  return op;
}

}  // namespace detail
}  // namespace posenc
