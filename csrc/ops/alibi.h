// ALiBi (Press et al. 2022): dispatcher handles and argument checks shared by the kernels.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/macros/Macros.h>

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
  check_bias_size(op, slopes.sym_size(0), q_len, k_len, slopes.scalar_type());
}

template <typename Int>
void check_alibi_bias_backward(const char* op, const at::Tensor& grad, const at::Tensor& slopes,
                               const Int& q_len, const Int& k_len) {
  check_alibi_bias(op, slopes, q_len, k_len);
  check_dim(op, "grad", grad, 3, "(num_heads, q_len, k_len)");
  // The kernels index grad by (head, i, j): a wrong shape must not read out of bounds.
  POSENC_CHECK_ARG(grad.sym_size(0) == slopes.sym_size(0) && grad.sym_size(1) == q_len &&
                       grad.sym_size(2) == k_len,
                   op, "grad",
                   c10::str("must have shape (num_heads, q_len, k_len) = [", slopes.sym_size(0),
                            ", ", q_len, ", ", k_len, "]"),
                   "shape ", shape_str(grad));
  check_grad_dtype(op, "grad", grad, "slopes", slopes);
  check_same_device(op, "grad", grad, "slopes", slopes);
}

// Distance of query i to key j given d0 = (q_offset + i) - k_offset, the distance to key 0:
// q_pos - k_pos for the causal bias, |q_pos - k_pos| for the symmetric one. Host and device.
C10_HOST_DEVICE inline int64_t alibi_distance(int64_t d0, int64_t j, bool causal) {
  const int64_t d = d0 - j;
  return (!causal && d < 0) ? -d : d;
}

}  // namespace detail
}  // namespace posenc
