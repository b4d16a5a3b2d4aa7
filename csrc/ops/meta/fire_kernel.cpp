#include <torch/library.h>

#include "../fire.h"

namespace posenc {
namespace {

// Parameter values (finite) are checked by the CPU kernel only.
at::Tensor fire_bias_meta(const at::Tensor& c, const at::Tensor& L, const at::Tensor& w1,
                          const at::Tensor& b1, const at::Tensor& w2, const at::Tensor& b2,
                          c10::SymInt q_len, c10::SymInt k_len, c10::SymInt q_offset,
                          c10::SymInt k_offset, bool causal, double eps) {
  const auto heads =
      detail::check_fire_bias("fire_bias", c, L, w1, b1, w2, b2, q_len, k_len, q_offset, eps);
  detail::check_offsets("fire_bias", q_offset, k_offset);
  return at::empty_symint({heads, q_len, k_len}, c.options());
}

detail::FireGrads fire_bias_backward_meta(const at::Tensor& grad, const at::Tensor& c,
                                          const at::Tensor& L, const at::Tensor& w1,
                                          const at::Tensor& b1, const at::Tensor& w2,
                                          const at::Tensor& b2, c10::SymInt q_len,
                                          c10::SymInt k_len, c10::SymInt q_offset,
                                          c10::SymInt k_offset, bool causal, double eps) {
  const char* op = "fire_bias_backward";
  detail::check_fire_bias_backward(op, grad, c, L, w1, b1, w2, b2, q_len, k_len, q_offset, eps);
  detail::check_offsets(op, q_offset, k_offset);
  auto like = [](const at::Tensor& t) { return at::empty_symint(t.sym_sizes(), t.options()); };
  return {like(c), like(L), like(w1), like(b1), like(w2), like(b2)};
}

}  // namespace
}  // namespace posenc

TORCH_LIBRARY_IMPL(posenc, Meta, m) {
  m.impl("fire_bias", &posenc::fire_bias_meta);
  m.impl("fire_bias_backward", &posenc::fire_bias_backward_meta);
}
