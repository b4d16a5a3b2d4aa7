#include <torch/library.h>

#include "../forgetting_gate.h"

namespace posenc {
namespace {

at::Tensor forgetting_gate_bias_meta(const at::Tensor& log_fgate, c10::SymInt q_len,
                                     c10::SymInt q_offset, c10::SymInt k_offset) {
  detail::check_forgetting_gate_bias(detail::kFgateOp, log_fgate, q_len, q_offset, k_offset);
  return at::empty_symint(
      {log_fgate.sym_size(0), log_fgate.sym_size(1), q_len, log_fgate.sym_size(2)},
      log_fgate.options());
}

at::Tensor forgetting_gate_bias_backward_meta(const at::Tensor& grad, const at::Tensor& log_fgate,
                                              c10::SymInt q_len, c10::SymInt q_offset,
                                              c10::SymInt k_offset) {
  detail::check_forgetting_gate_bias_backward(detail::kFgateBackwardOp, grad, log_fgate, q_len,
                                              q_offset, k_offset);
  return at::empty_symint(log_fgate.sym_sizes(), log_fgate.options().memory_format(
                                                     at::MemoryFormat::Contiguous));
}

}  // namespace
}  // namespace posenc

TORCH_LIBRARY_IMPL(posenc, Meta, m) {
  m.impl("forgetting_gate_bias", &posenc::forgetting_gate_bias_meta);
  m.impl("forgetting_gate_bias_backward", &posenc::forgetting_gate_bias_backward_meta);
}
