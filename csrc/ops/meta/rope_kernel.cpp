#include <torch/library.h>

#include "../rope.h"

namespace posenc {
namespace {

// Outputs are fresh contiguous tensors of the input's shape, as the CPU kernels return.

// rope (kBackwardOp = false) and rope_backward (true) share a signature and the checks.
template <bool kBackwardOp>
at::Tensor rope_meta(const at::Tensor& x, const std::optional<at::Tensor>& positions,
                     const at::Tensor& inv_freq, c10::SymInt offset,
                     std::optional<int64_t> rotary_dim, bool interleaved, c10::string_view layout,
                     const std::optional<at::Tensor>& cu_seqlens, double attention_factor,
                     const std::optional<at::Tensor>& xpos_zeta, double xpos_scale_base,
                     bool xpos_inverse, c10::SymInt xpos_centre) {
  const char* op = kBackwardOp ? "rope_backward" : "rope";
  const auto lay = detail::check_rope(op, kBackwardOp ? "grad" : "x", x, positions, inv_freq,
                                      rotary_dim, layout, cu_seqlens, attention_factor,
                                      xpos_zeta, xpos_scale_base);
  detail::check_rope_offset(op, positions, offset, detail::rope_seq_len(x, lay));
  return at::empty_symint(x.sym_sizes(), x.options());
}

template <bool kBackwardOp>
std::tuple<at::Tensor, at::Tensor> rope_qk_meta(
    const at::Tensor& q, const at::Tensor& k, const std::optional<at::Tensor>& positions,
    const at::Tensor& inv_freq, c10::SymInt offset, std::optional<int64_t> rotary_dim,
    bool interleaved, c10::string_view layout, const std::optional<at::Tensor>& cu_seqlens,
    double attention_factor, const std::optional<at::Tensor>& xpos_zeta, double xpos_scale_base,
    c10::SymInt xpos_centre) {
  const char* op = kBackwardOp ? "rope_qk_backward" : "rope_qk";
  const char* q_arg = kBackwardOp ? "grad_q" : "q";
  const auto lay = detail::check_rope(op, q_arg, q, positions, inv_freq, rotary_dim, layout,
                                      cu_seqlens, attention_factor, xpos_zeta, xpos_scale_base);
  const detail::RopeParams a{positions,  inv_freq,         0,     rotary_dim,
                             interleaved, layout,          cu_seqlens, attention_factor,
                             xpos_zeta,  xpos_scale_base,  false, 0};
  detail::check_rope_pair(op, q_arg, q, kBackwardOp ? "grad_k" : "k", k, a, lay);
  detail::check_rope_offset(op, positions, offset, detail::rope_seq_len(q, lay));
  return {at::empty_symint(q.sym_sizes(), q.options()),
          at::empty_symint(k.sym_sizes(), k.options())};
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
  m.impl("rope", &posenc::rope_meta<false>);
  m.impl("rope_backward", &posenc::rope_meta<true>);
  m.impl("rope_qk", &posenc::rope_qk_meta<false>);
  m.impl("rope_qk_backward", &posenc::rope_qk_meta<true>);
  m.impl("apply_rotary_pos_emb", &posenc::apply_rotary_pos_emb_meta);
  m.impl("apply_rotary_pos_emb_backward", &posenc::apply_rotary_pos_emb_backward_meta);
}
