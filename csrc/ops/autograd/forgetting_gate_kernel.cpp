#include <torch/autograd.h>
#include <torch/library.h>

#include "../forgetting_gate.h"

namespace posenc {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::Variable;
using torch::autograd::variable_list;

// The gradient to log_fgate comes from forgetting_gate_bias_backward (a registered op, so it
// is dispatchable and scriptable too), as for the other bias ops.
class ForgettingGateBiasFunction : public torch::autograd::Function<ForgettingGateBiasFunction> {
 public:
  static Variable forward(AutogradContext* ctx, const Variable& log_fgate, c10::SymInt q_len,
                          c10::SymInt q_offset, c10::SymInt k_offset) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({log_fgate});
    ctx->saved_data["q_len"] = q_len;
    ctx->saved_data["q_offset"] = q_offset;
    ctx->saved_data["k_offset"] = k_offset;
    return detail::forgetting_gate_bias_op().call(log_fgate, q_len, q_offset, k_offset);
  }

  static variable_list backward(AutogradContext* ctx, const variable_list& grad_outputs) {
    const auto log_fgate = ctx->get_saved_variables()[0];
    auto grad = detail::forgetting_gate_bias_backward_op().call(
        grad_outputs[0], log_fgate, ctx->saved_data["q_len"].toSymInt(),
        ctx->saved_data["q_offset"].toSymInt(), ctx->saved_data["k_offset"].toSymInt());
    return {grad, Variable(), Variable(), Variable()};
  }
};

at::Tensor forgetting_gate_bias_autograd(const at::Tensor& log_fgate, c10::SymInt q_len,
                                         c10::SymInt q_offset, c10::SymInt k_offset) {
  return ForgettingGateBiasFunction::apply(log_fgate, std::move(q_len), std::move(q_offset),
                                           std::move(k_offset));
}

}  // namespace
}  // namespace posenc

TORCH_LIBRARY_IMPL(posenc, Autograd, m) {
  m.impl("forgetting_gate_bias", &posenc::forgetting_gate_bias_autograd);
}
