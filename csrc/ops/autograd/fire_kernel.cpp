#include <torch/autograd.h>
#include <torch/library.h>

#include "../fire.h"

namespace posenc {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::Variable;
using torch::autograd::variable_list;

class FireBiasFunction : public torch::autograd::Function<FireBiasFunction> {
 public:
  static Variable forward(AutogradContext* ctx, const Variable& c, const Variable& L,
                          const Variable& w1, const Variable& b1, const Variable& w2,
                          const Variable& b2, c10::SymInt q_len, c10::SymInt k_len,
                          c10::SymInt q_offset, c10::SymInt k_offset, bool causal, double eps) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({c, L, w1, b1, w2, b2});
    ctx->saved_data["q_len"] = q_len;
    ctx->saved_data["k_len"] = k_len;
    ctx->saved_data["q_offset"] = q_offset;
    ctx->saved_data["k_offset"] = k_offset;
    ctx->saved_data["causal"] = causal;
    ctx->saved_data["eps"] = eps;
    return detail::fire_bias_op().call(c, L, w1, b1, w2, b2, q_len, k_len, q_offset, k_offset,
                                       causal, eps);
  }

  static variable_list backward(AutogradContext* ctx, const variable_list& grad_outputs) {
    const auto s = ctx->get_saved_variables();
    auto [gc, gL, gw1, gb1, gw2, gb2] = detail::fire_bias_backward_op().call(
        grad_outputs[0], s[0], s[1], s[2], s[3], s[4], s[5], ctx->saved_data["q_len"].toSymInt(),
        ctx->saved_data["k_len"].toSymInt(), ctx->saved_data["q_offset"].toSymInt(),
        ctx->saved_data["k_offset"].toSymInt(), ctx->saved_data["causal"].toBool(),
        ctx->saved_data["eps"].toDouble());
    return {gc,         gL,         gw1,        gb1,        gw2,        gb2,
            Variable(), Variable(), Variable(), Variable(), Variable(), Variable()};
  }
};

at::Tensor fire_bias_autograd(const at::Tensor& c, const at::Tensor& L, const at::Tensor& w1,
                              const at::Tensor& b1, const at::Tensor& w2, const at::Tensor& b2,
                              c10::SymInt q_len, c10::SymInt k_len, c10::SymInt q_offset,
                              c10::SymInt k_offset, bool causal, double eps) {
  return FireBiasFunction::apply(c, L, w1, b1, w2, b2, std::move(q_len), std::move(k_len),
                                 std::move(q_offset), std::move(k_offset), causal, eps);
}

}  // namespace
}  // namespace posenc

TORCH_LIBRARY_IMPL(posenc, Autograd, m) {
  m.impl("fire_bias", &posenc::fire_bias_autograd);
}
