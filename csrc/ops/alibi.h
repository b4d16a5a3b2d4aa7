// ALiBi (Press et al. 2022): dispatcher handles and argument checks shared by the kernels.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>

#include "check.h"

namespace posenc {
namespace detail {

inline auto& alibi_bias_op() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("posenc::alibi_bias", "")
                       .typed<at::Tensor(const at::Tensor&, c10::SymInt, c10::SymInt, c10::SymInt,
                                         c10::SymInt, bool)>();
  return op;
}

inline auto& alibi_bias_backward_op() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("posenc::alibi_bias_backward", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, c10::SymInt,
                                         c10::SymInt, c10::SymInt, c10::SymInt, bool)>();
  return op;
}

template <typename Int>
void check_alibi_bias(const char* op, const at::Tensor& slopes, const Int& q_len,
                      const Int& k_len) {
  check_dim(op, "slopes", slopes, 1, "(num_heads,)");
  check_floating(op, "slopes", slopes);
  check_length(op, "q_len", q_len);
  check_length(op, "k_len", k_len);
}

template <typename Int>
void check_alibi_bias_backward(const char* op, const at::Tensor& grad, const at::Tensor& slopes,
                               const Int& q_len, const Int& k_len) {
  check_alibi_bias(op, slopes, q_len, k_len);
  check_dim(op, "grad", grad, 3, "(num_heads, q_len, k_len)");
  check_same_device(op, "grad", grad, "slopes", slopes);
}

}  // namespace detail
}  // namespace posenc
