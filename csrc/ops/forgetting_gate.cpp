// Forgetting-gate bias (Lin et al. 2025): schemas and the public C++ function.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "forgetting_gate.h"
#include "posenc/ops.h"

namespace posenc {
namespace ops {

at::Tensor forgetting_gate_bias(const at::Tensor& log_fgate, int64_t q_len, int64_t q_offset,
                                int64_t k_offset) {
  return detail::forgetting_gate_bias_op().call(log_fgate, q_len, q_offset, k_offset);
}

}  // namespace ops
}  // namespace posenc

TORCH_LIBRARY_FRAGMENT(posenc, m) {
  m.def(
      "forgetting_gate_bias(Tensor log_fgate, SymInt q_len, SymInt q_offset=0, "
      "SymInt k_offset=0) -> Tensor");
  m.def(
      "forgetting_gate_bias_backward(Tensor grad, Tensor log_fgate, SymInt q_len, "
      "SymInt q_offset, SymInt k_offset) -> Tensor");
}
