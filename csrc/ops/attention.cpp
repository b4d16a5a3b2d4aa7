// Fused relative-position attention: schemas and the public C++ function.
#include <torch/library.h>

#include "attention.h"
#include "posenc/ops.h"

namespace posenc {
namespace ops {

std::tuple<at::Tensor, at::Tensor> relative_attention(const at::Tensor& q, const at::Tensor& k,
                                                      const at::Tensor& v,
                                                      const RelativeAttentionOptions& o) {
  std::optional<c10::SymInt> msq, msk;
  if (o.max_seqlen_q()) msq = c10::SymInt(*o.max_seqlen_q());
  if (o.max_seqlen_k()) msk = c10::SymInt(*o.max_seqlen_k());
  std::optional<c10::string_view> kind;
  if (o.kerple_kind()) kind = c10::string_view(*o.kerple_kind());
  return detail::relative_attention_op().call(
      q, k, v, o.slopes(), o.table(), o.r1(), o.r2(), o.rel_emb(), o.q_rel(), o.causal(),
      o.key_padding_mask(), o.scale(), o.q_offset(), o.k_offset(), o.bidirectional(),
      o.max_distance(), kind, o.layout(), o.cu_seqlens_q(), o.cu_seqlens_k(), msq, msk,
      o.log_fgate());
}

}  // namespace ops
}  // namespace posenc

TORCH_LIBRARY_FRAGMENT(posenc, m) {
  m.def(
      "relative_attention(Tensor q, Tensor k, Tensor v, *, Tensor? slopes=None, "
      "Tensor? table=None, Tensor? r1=None, Tensor? r2=None, Tensor? rel_emb=None, "
      "Tensor? q_rel=None, bool causal=False, Tensor? key_padding_mask=None, float? scale=None, "
      "SymInt q_offset=0, SymInt k_offset=0, bool? bidirectional=None, int? max_distance=None, "
      "str? kerple_kind=None, str layout=\"bhsd\", Tensor? cu_seqlens_q=None, "
      "Tensor? cu_seqlens_k=None, SymInt? max_seqlen_q=None, SymInt? max_seqlen_k=None, "
      "Tensor? log_fgate=None) -> (Tensor out, Tensor lse)");
  m.def(
      "relative_attention_backward(Tensor grad_out, Tensor? grad_lse, Tensor q, Tensor k, "
      "Tensor v, Tensor out, Tensor lse, Tensor? slopes, Tensor? table, Tensor? r1, Tensor? r2, "
      "Tensor? rel_emb, Tensor? q_rel, bool causal, Tensor? key_padding_mask, float? scale, "
      "SymInt q_offset, SymInt k_offset, bool? bidirectional, int? max_distance, "
      "str? kerple_kind, str layout, Tensor? cu_seqlens_q, Tensor? cu_seqlens_k, "
      "SymInt? max_seqlen_q, SymInt? max_seqlen_k, Tensor? log_fgate=None) -> (Tensor grad_q, "
      "Tensor grad_k, Tensor grad_v, Tensor grad_slopes, Tensor grad_table, Tensor grad_r1, "
      "Tensor grad_r2, Tensor grad_rel_emb, Tensor grad_q_rel, Tensor grad_log_fgate)");
}
