#include <torch/autograd.h>
#include <torch/library.h>

#include "../t5.h"

namespace posenc {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::Variable;
using torch::autograd::variable_list;

class T5BiasFunction : public torch::autograd::Function<T5BiasFunction> {
 public:
  static Variable forward(AutogradContext* ctx, const Variable& table, c10::SymInt q_len,
                          c10::SymInt k_len, c10::SymInt q_offset, c10::SymInt k_offset,
                          bool bidirectional, int64_t max_distance) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({table});
    ctx->saved_data["q_len"] = q_len;
    ctx->saved_data["k_len"] = k_len;
    ctx->saved_data["q_offset"] = q_offset;
    ctx->saved_data["k_offset"] = k_offset;
    ctx->saved_data["bidirectional"] = bidirectional;
    ctx->saved_data["max_distance"] = max_distance;
    return detail::t5_bias_op().call(table, q_len, k_len, q_offset, k_offset, bidirectional,
                                     max_distance);
  }

  static variable_list backward(AutogradContext* ctx, const variable_list& grad_outputs) {
    const auto table = ctx->get_saved_variables()[0];
    auto grad_table = detail::t5_bias_backward_op().call(
        grad_outputs[0], table, ctx->saved_data["q_len"].toSymInt(),
        ctx->saved_data["k_len"].toSymInt(), ctx->saved_data["q_offset"].toSymInt(),
        ctx->saved_data["k_offset"].toSymInt(), ctx->saved_data["bidirectional"].toBool(),
        ctx->saved_data["max_distance"].toInt());
    return {grad_table, Variable(), Variable(), Variable(), Variable(), Variable(), Variable()};
  }
};

at::Tensor t5_bias_autograd(const at::Tensor& table, c10::SymInt q_len, c10::SymInt k_len,
                            c10::SymInt q_offset, c10::SymInt k_offset, bool bidirectional,
                            int64_t max_distance) {
  return T5BiasFunction::apply(table, std::move(q_len), std::move(k_len), std::move(q_offset),
                               std::move(k_offset), bidirectional, max_distance);
}

}  // namespace
}  // namespace posenc

TORCH_LIBRARY_IMPL(posenc, Autograd, m) {
  m.impl("t5_bias", &posenc::t5_bias_autograd);
}
