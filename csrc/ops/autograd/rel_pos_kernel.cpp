#include <torch/autograd.h>
#include <torch/library.h>

#include "../rel_pos.h"

namespace posenc {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::Variable;
using torch::autograd::variable_list;

class RelPosScoresFunction : public torch::autograd::Function<RelPosScoresFunction> {
 public:
  static Variable forward(AutogradContext* ctx, const Variable& q, const Variable& rel_emb,
                          c10::SymInt q_offset, c10::SymInt k_offset, c10::SymInt k_len,
                          std::optional<int64_t> max_distance, bool causal) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({q, rel_emb});
    ctx->saved_data["q_offset"] = q_offset;
    ctx->saved_data["k_offset"] = k_offset;
    ctx->saved_data["k_len"] = k_len;
    ctx->saved_data["max_distance"] = max_distance;
    ctx->saved_data["causal"] = causal;
    return detail::rel_pos_scores_op().call(q, rel_emb, q_offset, k_offset, k_len, max_distance,
                                            causal);
  }

  static variable_list backward(AutogradContext* ctx, const variable_list& grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const auto& md = ctx->saved_data["max_distance"];
    auto [grad_q, grad_emb] = detail::rel_pos_scores_backward_op().call(
        grad_outputs[0], saved[0], saved[1], ctx->saved_data["q_offset"].toSymInt(),
        ctx->saved_data["k_offset"].toSymInt(), ctx->saved_data["k_len"].toSymInt(),
        md.isNone() ? std::nullopt : std::optional<int64_t>(md.toInt()),
        ctx->saved_data["causal"].toBool());
    return {grad_q, grad_emb, Variable(), Variable(), Variable(), Variable(), Variable()};
  }
};

at::Tensor rel_pos_scores_autograd(const at::Tensor& q, const at::Tensor& rel_emb,
                                   c10::SymInt q_offset, c10::SymInt k_offset, c10::SymInt k_len,
                                   std::optional<int64_t> max_distance, bool causal) {
  return RelPosScoresFunction::apply(q, rel_emb, std::move(q_offset), std::move(k_offset),
                                     std::move(k_len), max_distance, causal);
}

}  // namespace
}  // namespace posenc

TORCH_LIBRARY_IMPL(posenc, Autograd, m) {
  m.impl("rel_pos_scores", &posenc::rel_pos_scores_autograd);
}
