#include <torch/library.h>

#include "../rope.h"

namespace posenc {
namespace {

// Outputs are fresh contiguous tensors of the input's shape, as the CPU kernels return.

at::Tensor rope_meta(const at::Tensor& x, const std::optional<at::Tensor>& positions,
                     const at::Tensor& inv_freq, c10::SymInt offset,
                     std::optional<int64_t> rotary_dim, bool interleaved, c10::string_view layout) {
  detail::check_rope("rope", "x", x, positions, inv_freq, rotary_dim, layout);
  return at::empty_symint(x.sym_sizes(), x.options());
}

at::Tensor rope_backward_meta(const at::Tensor& grad, const std::optional<at::Tensor>& positions,
                              const at::Tensor& inv_freq, c10::SymInt offset,
                              std::optional<int64_t> rotary_dim, bool interleaved,
                              c10::string_view layout) {
  detail::check_rope("rope_backward", "grad", grad, positions, inv_freq, rotary_dim, layout);
  return at::empty_symint(grad.sym_sizes(), grad.options());
}

at::Tensor apply_rotary_pos_emb_meta(const at::Tensor& x, const at::Tensor& cos,
                                     const at::Tensor& sin, bool interleaved,
                                     c10::string_view layout) {
  detail::check_apply_rotary("apply_rotary_pos_emb", x, cos, sin, layout);
  return at::empty_symint(x.sym_sizes(), x.options());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> apply_rotary_pos_emb_backward_meta(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin,
    bool interleaved, c10::string_view layout) {
  detail::check_apply_rotary_backward("apply_rotary_pos_emb_backward", grad, x, cos, sin, layout);
  return {at::empty_symint(x.sym_sizes(), x.options()),
          at::empty_symint(cos.sym_sizes(), cos.options()),
          at::empty_symint(sin.sym_sizes(), sin.options())};
}

}  // namespace
}  // namespace posenc

TORCH_LIBRARY_IMPL(posenc, Meta, m) {
  m.impl("rope", &posenc::rope_meta);
  m.impl("rope_backward", &posenc::rope_backward_meta);
  m.impl("apply_rotary_pos_emb", &posenc::apply_rotary_pos_emb_meta);
  m.impl("apply_rotary_pos_emb_backward", &posenc::apply_rotary_pos_emb_backward_meta);
}
