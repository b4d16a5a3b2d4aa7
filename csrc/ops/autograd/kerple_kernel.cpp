#include <torch/autograd.h>
#include <torch/library.h>

#include <string>

#include "../kerple.h"

namespace posenc {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::Variable;
using torch::autograd::variable_list;

class KerpleBiasFunction : public torch::autograd::Function<KerpleBiasFunction> {
 public:
  static Variable forward(AutogradContext* ctx, const Variable& r1, const Variable& r2,
                          c10::SymInt q_len, c10::SymInt k_len, c10::SymInt q_offset,
                          c10::SymInt k_offset, c10::string_view kind, bool causal) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({r1, r2});
    ctx->saved_data["q_len"] = q_len;
    ctx->saved_data["k_len"] = k_len;
    ctx->saved_data["q_offset"] = q_offset;
    ctx->saved_data["k_offset"] = k_offset;
    ctx->saved_data["kind"] = std::string(kind);
    ctx->saved_data["causal"] = causal;
    return detail::kerple_bias_op().call(r1, r2, q_len, k_len, q_offset, k_offset, kind, causal);
  }

  static variable_list backward(AutogradContext* ctx, const variable_list& grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const std::string kind = ctx->saved_data["kind"].toStringRef();
    auto [grad_r1, grad_r2] = detail::kerple_bias_backward_op().call(
        grad_outputs[0], saved[0], saved[1], ctx->saved_data["q_len"].toSymInt(),
        ctx->saved_data["k_len"].toSymInt(), ctx->saved_data["q_offset"].toSymInt(),
        ctx->saved_data["k_offset"].toSymInt(), kind, ctx->saved_data["causal"].toBool());
    return {grad_r1,    grad_r2,    Variable(), Variable(), Variable(),
            Variable(), Variable(), Variable()};
  }
};

at::Tensor kerple_bias_autograd(const at::Tensor& r1, const at::Tensor& r2, c10::SymInt q_len,
                                c10::SymInt k_len, c10::SymInt q_offset, c10::SymInt k_offset,
                                c10::string_view kind, bool causal) {
  return KerpleBiasFunction::apply(r1, r2, std::move(q_len), std::move(k_len),
                                   std::move(q_offset), std::move(k_offset), kind, causal);
}

}  // namespace
}  // namespace posenc

TORCH_LIBRARY_IMPL(posenc, Autograd, m) {
  m.impl("kerple_bias", &posenc::kerple_bias_autograd);
}
