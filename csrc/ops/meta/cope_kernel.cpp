#include <torch/library.h>

#include <tuple>

#include "../cope.h"

namespace posenc {
namespace {

// Same checks and the same fresh contiguous outputs as the CPU and CUDA kernels.
at::Tensor cope_scores_meta(const at::Tensor& q, const at::Tensor& k, const at::Tensor& pos_emb,
                            std::optional<double> scale, c10::SymInt q_offset,
                            c10::SymInt k_offset) {
  detail::check_cope_scores("cope_scores", q, k, pos_emb, scale, q_offset, k_offset);
  return at::empty_symint({q.sym_size(0), q.sym_size(1), q.sym_size(2), k.sym_size(2)},
                          q.options());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> cope_scores_backward_meta(
    const at::Tensor& grad, const at::Tensor& q, const at::Tensor& k, const at::Tensor& pos_emb,
    std::optional<double> scale, c10::SymInt q_offset, c10::SymInt k_offset) {
  detail::check_cope_scores_backward("cope_scores_backward", grad, q, k, pos_emb, scale,
                                     q_offset, k_offset);
  return {at::empty_symint(q.sym_sizes(), q.options()),
          at::empty_symint(k.sym_sizes(), k.options()),
          at::empty_symint(pos_emb.sym_sizes(), pos_emb.options())};
}

}  // namespace
}  // namespace posenc

TORCH_LIBRARY_IMPL(posenc, Meta, m) {
  m.impl("cope_scores", &posenc::cope_scores_meta);
  m.impl("cope_scores_backward", &posenc::cope_scores_backward_meta);
}
