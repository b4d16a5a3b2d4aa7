#include <torch/autograd.h>
#include <torch/library.h>

#include "../cope.h"

namespace posenc {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::Variable;
using torch::autograd::variable_list;

class CopeScoresFunction : public torch::autograd::Function<CopeScoresFunction> {
 public:
  static Variable forward(AutogradContext* ctx, const Variable& q, const Variable& k,
                          const Variable& pos_emb, std::optional<double> scale,
                          c10::SymInt q_offset, c10::SymInt k_offset) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({q, k, pos_emb});
    ctx->saved_data["scale"] = scale;
    ctx->saved_data["q_offset"] = q_offset;
    ctx->saved_data["k_offset"] = k_offset;
    return detail::cope_scores_op().call(q, k, pos_emb, scale, q_offset, k_offset);
  }

  static variable_list backward(AutogradContext* ctx, const variable_list& grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const auto& s = ctx->saved_data["scale"];
    auto [grad_q, grad_k, grad_emb] = detail::cope_scores_backward_op().call(
        grad_outputs[0], saved[0], saved[1], saved[2],
        s.isNone() ? std::nullopt : std::optional<double>(s.toDouble()),
        ctx->saved_data["q_offset"].toSymInt(), ctx->saved_data["k_offset"].toSymInt());
    return {grad_q, grad_k, grad_emb, Variable(), Variable(), Variable()};
  }
};

at::Tensor cope_scores_autograd(const at::Tensor& q, const at::Tensor& k,
                                const at::Tensor& pos_emb, std::optional<double> scale,
                                c10::SymInt q_offset, c10::SymInt k_offset) {
  return CopeScoresFunction::apply(q, k, pos_emb, scale, std::move(q_offset),
                                   std::move(k_offset));
}

}  // namespace
}  // namespace posenc

TORCH_LIBRARY_IMPL(posenc, Autograd, m) {
  m.impl("cope_scores", &posenc::cope_scores_autograd);
}
