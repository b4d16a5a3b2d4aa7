#include <torch/autograd.h>
#include <torch/library.h>

#include "../alibi.h"

namespace posenc {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::Variable;
using torch::autograd::variable_list;

class AlibiBiasFunction : public torch::autograd::Function<AlibiBiasFunction> {
 public:
  static Variable forward(AutogradContext* ctx, const Variable& slopes, c10::SymInt q_len,
                          c10::SymInt k_len, c10::SymInt q_offset, c10::SymInt k_offset,
                          bool causal) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({slopes});
    ctx->saved_data["q_len"] = q_len;
    ctx->saved_data["k_len"] = k_len;
    ctx->saved_data["q_offset"] = q_offset;
    ctx->saved_data["k_offset"] = k_offset;
    ctx->saved_data["causal"] = causal;
    return detail::alibi_bias_op().call(slopes, q_len, k_len, q_offset, k_offset, causal);
  }

  static variable_list backward(AutogradContext* ctx, const variable_list& grad_outputs) {
    const auto slopes = ctx->get_saved_variables()[0];
    auto grad_slopes = detail::alibi_bias_backward_op().call(
        grad_outputs[0], slopes, ctx->saved_data["q_len"].toSymInt(),
        ctx->saved_data["k_len"].toSymInt(), ctx->saved_data["q_offset"].toSymInt(),
        ctx->saved_data["k_offset"].toSymInt(), ctx->saved_data["causal"].toBool());
    return {grad_slopes, Variable(), Variable(), Variable(), Variable(), Variable()};
  }
};

at::Tensor alibi_bias_autograd(const at::Tensor& slopes, c10::SymInt q_len, c10::SymInt k_len,
                               c10::SymInt q_offset, c10::SymInt k_offset, bool causal) {
  return AlibiBiasFunction::apply(slopes, std::move(q_len), std::move(k_len),
                                  std::move(q_offset), std::move(k_offset), causal);
}

}  // namespace
}  // namespace posenc

TORCH_LIBRARY_IMPL(posenc, Autograd, m) {
  m.impl("alibi_bias", &posenc::alibi_bias_autograd);
}
