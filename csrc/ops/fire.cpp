// FIRE schemas and the public C++ function.
#include <torch/library.h>

#include "fire.h"
#include "posenc/ops_mlp_bias.h"

namespace posenc {
namespace ops {

at::Tensor fire_bias(const at::Tensor& c, const at::Tensor& L, const at::Tensor& w1,
                     const at::Tensor& b1, const at::Tensor& w2, const at::Tensor& b2,
                     int64_t q_len, int64_t k_len, int64_t q_offset, int64_t k_offset,
                     bool causal, double eps) {
  return detail::fire_bias_op().call(c, L, w1, b1, w2, b2, q_len, k_len, q_offset, k_offset,
                                     causal, eps);
}

}  // namespace ops
}  // namespace posenc

TORCH_LIBRARY_FRAGMENT(posenc, m) {
  m.def(
      "fire_bias(Tensor c, Tensor L, Tensor w1, Tensor b1, Tensor w2, Tensor b2, SymInt q_len, "
      "SymInt k_len, SymInt q_offset=0, SymInt k_offset=0, bool causal=True, float eps=1e-06) "
      "-> Tensor");
  m.def(
      "fire_bias_backward(Tensor grad, Tensor c, Tensor L, Tensor w1, Tensor b1, Tensor w2, "
      "Tensor b2, SymInt q_len, SymInt k_len, SymInt q_offset, SymInt k_offset, bool causal, "
      "float eps) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
}
