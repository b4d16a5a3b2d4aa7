#include <torch/autograd.h>
#include <torch/library.h>

#include <vector>

#include "../dynamic_position_bias.h"

namespace posenc {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::Variable;
using torch::autograd::variable_list;

class DynamicPositionBiasFunction
    : public torch::autograd::Function<DynamicPositionBiasFunction> {
 public:
  static Variable forward(AutogradContext* ctx, at::TensorList weights, at::TensorList biases,
                          at::TensorList norm_weights, c10::SymInt q_len, c10::SymInt k_len,
                          c10::SymInt q_offset, c10::SymInt k_offset, bool log_distance,
                          bool causal, double norm_eps) {
    at::AutoDispatchBelowADInplaceOrView guard;
    std::vector<at::Tensor> saved(weights.begin(), weights.end());
    saved.insert(saved.end(), biases.begin(), biases.end());
    saved.insert(saved.end(), norm_weights.begin(), norm_weights.end());
    ctx->save_for_backward(saved);
    ctx->saved_data["n"] = static_cast<int64_t>(weights.size());
    ctx->saved_data["n_norm"] = static_cast<int64_t>(norm_weights.size());
    ctx->saved_data["q_len"] = q_len;
    ctx->saved_data["k_len"] = k_len;
    ctx->saved_data["q_offset"] = q_offset;
    ctx->saved_data["k_offset"] = k_offset;
    ctx->saved_data["log_distance"] = log_distance;
    ctx->saved_data["causal"] = causal;
    ctx->saved_data["norm_eps"] = norm_eps;
    return detail::dynamic_position_bias_op().call(weights, biases, norm_weights, q_len, k_len,
                                                   q_offset, k_offset, log_distance, causal,
                                                   norm_eps);
  }

  static variable_list backward(AutogradContext* ctx, const variable_list& grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const int64_t n = ctx->saved_data["n"].toInt();
    const int64_t m = ctx->saved_data["n_norm"].toInt();
    const std::vector<at::Tensor> weights(saved.begin(), saved.begin() + n);
    const std::vector<at::Tensor> biases(saved.begin() + n, saved.begin() + 2 * n);
    const std::vector<at::Tensor> norms(saved.begin() + 2 * n, saved.begin() + 2 * n + m);
    auto [gw, gb, gg] = detail::dynamic_position_bias_backward_op().call(
        grad_outputs[0], weights, biases, norms, ctx->saved_data["q_len"].toSymInt(),
        ctx->saved_data["k_len"].toSymInt(), ctx->saved_data["q_offset"].toSymInt(),
        ctx->saved_data["k_offset"].toSymInt(), ctx->saved_data["log_distance"].toBool(),
        ctx->saved_data["causal"].toBool(), ctx->saved_data["norm_eps"].toDouble());
    // One gradient per input, tensor lists flattened, in argument order.
    variable_list out(gw.begin(), gw.end());
    out.insert(out.end(), gb.begin(), gb.end());
    out.insert(out.end(), gg.begin(), gg.end());
    for (int k = 0; k < 7; ++k) out.emplace_back();  // q_len .. norm_eps
    return out;
  }
};

at::Tensor dynamic_position_bias_autograd(at::TensorList weights, at::TensorList biases,
                                          at::TensorList norm_weights, c10::SymInt q_len,
                                          c10::SymInt k_len, c10::SymInt q_offset,
                                          c10::SymInt k_offset, bool log_distance, bool causal,
                                          double norm_eps) {
  return DynamicPositionBiasFunction::apply(weights, biases, norm_weights, std::move(q_len),
                                            std::move(k_len), std::move(q_offset),
                                            std::move(k_offset), log_distance, causal, norm_eps);
}

}  // namespace
}  // namespace posenc

TORCH_LIBRARY_IMPL(posenc, Autograd, m) {
  m.impl("dynamic_position_bias", &posenc::dynamic_position_bias_autograd);
}
