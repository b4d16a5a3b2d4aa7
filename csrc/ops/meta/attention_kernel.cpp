#include <torch/library.h>

#include "../attention.h"

namespace posenc {
namespace {

using detail::OptTensor;

// Same checks and the same fresh contiguous outputs as the CPU and CUDA kernels.
std::tuple<at::Tensor, at::Tensor> relative_attention_meta(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const OptTensor& slopes,
    const OptTensor& table, const OptTensor& r1, const OptTensor& r2, const OptTensor& rel_emb,
    const OptTensor& q_rel, bool causal, const OptTensor& key_padding_mask,
    std::optional<double> scale, c10::SymInt q_offset, c10::SymInt k_offset,
    std::optional<bool> bidirectional, std::optional<int64_t> max_distance,
    std::optional<c10::string_view> kerple_kind, c10::string_view layout,
    const OptTensor& cu_seqlens_q, const OptTensor& cu_seqlens_k,
    std::optional<c10::SymInt> max_seqlen_q, std::optional<c10::SymInt> max_seqlen_k,
    const OptTensor& log_fgate) {
  const auto a = detail::make_attention_args<c10::SymInt>(
      slopes, table, r1, r2, rel_emb, q_rel, causal, key_padding_mask, scale, std::move(q_offset),
      std::move(k_offset), bidirectional, max_distance, kerple_kind, layout, cu_seqlens_q,
      cu_seqlens_k, std::move(max_seqlen_q), std::move(max_seqlen_k), log_fgate);
  const auto cfg = detail::check_relative_attention(detail::kAttentionOp, q, k, v, a);
  return {at::empty_symint(detail::attention_out_sizes(q, v), q.options()),
          at::empty_symint(detail::attention_lse_sizes(q, cfg.thd),
                           q.options().dtype(detail::attention_acc_type(q.scalar_type())))};
}

detail::RelativeAttentionGrads relative_attention_backward_meta(
    const at::Tensor& grad_out, const OptTensor& grad_lse, const at::Tensor& q,
    const at::Tensor& k, const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
    const OptTensor& slopes, const OptTensor& table, const OptTensor& r1, const OptTensor& r2,
    const OptTensor& rel_emb, const OptTensor& q_rel, bool causal,
    const OptTensor& key_padding_mask, std::optional<double> scale, c10::SymInt q_offset,
    c10::SymInt k_offset, std::optional<bool> bidirectional, std::optional<int64_t> max_distance,
    std::optional<c10::string_view> kerple_kind, c10::string_view layout,
    const OptTensor& cu_seqlens_q, const OptTensor& cu_seqlens_k,
    std::optional<c10::SymInt> max_seqlen_q, std::optional<c10::SymInt> max_seqlen_k,
    const OptTensor& log_fgate) {
  const auto a = detail::make_attention_args<c10::SymInt>(
      slopes, table, r1, r2, rel_emb, q_rel, causal, key_padding_mask, scale, std::move(q_offset),
      std::move(k_offset), bidirectional, max_distance, kerple_kind, layout, cu_seqlens_q,
      cu_seqlens_k, std::move(max_seqlen_q), std::move(max_seqlen_k), log_fgate);
  const auto cfg = detail::check_relative_attention(detail::kAttentionBackwardOp, q, k, v, a);
  detail::check_relative_attention_backward(detail::kAttentionBackwardOp, grad_out, grad_lse, q,
                                            v, out, lse, cfg.thd);
  auto like = [](const OptTensor& t) { return at::empty_symint(t->sym_sizes(), t->options()); };
  const auto none = at::empty({0}, q.options());
  using F = detail::PositionFamily;
  return {at::empty_symint(q.sym_sizes(), q.options()),
          at::empty_symint(k.sym_sizes(), k.options()),
          at::empty_symint(v.sym_sizes(), v.options()),
          cfg.family == F::ALiBi ? like(slopes) : none,
          cfg.family == F::T5 ? like(table) : none,
          cfg.family == F::KERPLE ? like(r1) : none,
          cfg.family == F::KERPLE ? like(r2) : none,
          cfg.family == F::RelScores ? like(rel_emb) : none,
          cfg.family == F::RelScores && q_rel.has_value() ? at::empty_symint(q.sym_sizes(), q.options())
                                                          : none,
          cfg.family == F::ForgettingGate ? like(log_fgate) : none};
}

}  // namespace
}  // namespace posenc

TORCH_LIBRARY_IMPL(posenc, Meta, m) {
  m.impl("relative_attention", &posenc::relative_attention_meta);
  m.impl("relative_attention_backward", &posenc::relative_attention_backward_meta);
}
