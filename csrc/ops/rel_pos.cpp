// Relative position scores schemas and public C++ functions.
#include <torch/library.h>

#include "posenc/ops.h"
#include "rel_pos.h"

namespace posenc {
namespace ops {

at::Tensor rel_pos_scores(const at::Tensor& q, const at::Tensor& rel_emb, int64_t q_offset,
                          int64_t k_offset, std::optional<int64_t> k_len,
                          std::optional<int64_t> max_distance, bool causal) {
  if (!k_len.has_value()) {
    // q's rank is checked before q.size(-2) is read for the default k_len.
    detail::check_dim("rel_pos_scores", "q", q, 4, "(batch, heads, q_len, head_dim)");
  }
  const int64_t kl = k_len.has_value() ? *k_len : q_offset + q.size(2) - k_offset;
  return detail::rel_pos_scores_op().call(q, rel_emb, q_offset, k_offset, kl, max_distance,
                                           causal);
}

}  // namespace ops
}  // namespace posenc

TORCH_LIBRARY_FRAGMENT(posenc, m) {
  m.def(
      "rel_pos_scores(Tensor q, Tensor rel_emb, SymInt q_offset, SymInt k_offset, SymInt k_len, "
      "int? max_distance=None, bool causal=False) -> Tensor");
  m.def(
      "rel_pos_scores_backward(Tensor grad, Tensor q, Tensor rel_emb, SymInt q_offset, "
      "SymInt k_offset, SymInt k_len, int? max_distance, bool causal=False) -> (Tensor, Tensor)");
}
