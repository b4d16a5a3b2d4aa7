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
  int64_t kl = 0;
  if (k_len.has_value()) {
    kl = *k_len;
  } else {
    // q_offset + q_len - k_offset in int64: offsets far apart would wrap into a wrong length.
    int64_t end = 0;
    const bool wraps = __builtin_add_overflow(q_offset, q.size(2), &end) ||
                       __builtin_sub_overflow(end, k_offset, &kl);
    POSENC_CHECK_ARG(!wraps, "rel_pos_scores", "k_len",
                     "(default q_offset + q_len - k_offset) must be within int64",
                     "q_offset ", q_offset, ", q_len ", q.size(2), " and k_offset ", k_offset);
  }
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
