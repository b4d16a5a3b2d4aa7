// CoPE schemas and public C++ functions.
#include <torch/library.h>

#include "cope.h"
#include "posenc/ops.h"

namespace posenc {
namespace ops {

at::Tensor cope_scores(const at::Tensor& q, const at::Tensor& k, const at::Tensor& pos_emb,
                       std::optional<double> scale, int64_t q_offset, int64_t k_offset) {
  return detail::cope_scores_op().call(q, k, pos_emb, scale, q_offset, k_offset);
}

}  // namespace ops
}  // namespace posenc

TORCH_LIBRARY_FRAGMENT(posenc, m) {
  m.def(
      "cope_scores(Tensor q, Tensor k, Tensor pos_emb, float? scale=None, SymInt q_offset=0, "
      "SymInt k_offset=0) -> Tensor");
  m.def(
      "cope_scores_backward(Tensor grad, Tensor q, Tensor k, Tensor pos_emb, float? scale, "
      "SymInt q_offset, SymInt k_offset) -> (Tensor, Tensor, Tensor)");
}
