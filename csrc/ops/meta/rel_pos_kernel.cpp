#include <torch/library.h>

#include <tuple>

#include "../rel_pos.h"

namespace posenc {
namespace {

// Same checks and the same fresh contiguous outputs as the CPU kernel.
at::Tensor rel_pos_scores_meta(const at::Tensor& q, const at::Tensor& rel_emb,
                               c10::SymInt q_offset, c10::SymInt k_offset, c10::SymInt k_len,
                               std::optional<int64_t> max_distance, bool causal) {
  detail::check_rel_pos_scores("rel_pos_scores", q, rel_emb, k_len, max_distance);
  return at::empty_symint({q.sym_size(0), q.sym_size(1), q.sym_size(2), k_len}, q.options());
}

std::tuple<at::Tensor, at::Tensor> rel_pos_scores_backward_meta(
    const at::Tensor& grad, const at::Tensor& q, const at::Tensor& rel_emb, c10::SymInt q_offset,
    c10::SymInt k_offset, c10::SymInt k_len, std::optional<int64_t> max_distance, bool causal) {
  detail::check_rel_pos_scores_backward("rel_pos_scores_backward", grad, q, rel_emb, k_len,
                                        max_distance);
  return {at::empty_symint(q.sym_sizes(), q.options()),
          at::empty_symint(rel_emb.sym_sizes(), rel_emb.options())};
}

}  // namespace
}  // namespace posenc

TORCH_LIBRARY_IMPL(posenc, Meta, m) {
  m.impl("rel_pos_scores", &posenc::rel_pos_scores_meta);
  m.impl("rel_pos_scores_backward", &posenc::rel_pos_scores_backward_meta);
}
