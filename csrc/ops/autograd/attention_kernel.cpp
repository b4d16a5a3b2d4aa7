#include <torch/autograd.h>
#include <torch/csrc/autograd/functions/basic_ops.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/library.h>

#include "../attention.h"

namespace posenc {
namespace {

using detail::OptTensor;
using torch::autograd::AutogradContext;
using torch::autograd::Variable;
using torch::autograd::variable_list;

// The backward op has no derivative: under create_graph the gradients get an Error node as
// their grad_fn (what Python's @once_differentiable does), so differentiating them again raises
// instead of silently giving zeros.
variable_list once_differentiable(variable_list grads, const variable_list& inputs) {
  if (!at::GradMode::is_enabled()) return grads;
  bool any = false;
  for (const auto& t : inputs) any = any || (t.defined() && t.requires_grad());
  if (!any) return grads;
  // The Error node's edges lead to the forward's inputs, so a second derivative with respect
  // to any of them reaches it.
  auto node = c10::make_intrusive<torch::autograd::Error>(
      "posenc.relative_attention: the backward is not differentiable (no double backward; "
      "use the materialized bias ops for higher-order gradients)",
      torch::autograd::collect_next_edges(inputs));
  for (auto& g : grads) {
    if (!g.defined()) continue;
    g = g.detach();
    torch::autograd::set_history(g, node);
  }
  return grads;
}

// Gradients come from relative_attention_backward (FlashAttention-2 recomputation from the
// saved log-sum-exp); both outputs are differentiable (lse's gradient enters as grad_lse).
// The backward op is not itself differentiable: no double backward.
class RelativeAttentionFunction : public torch::autograd::Function<RelativeAttentionFunction> {
 public:
  static variable_list forward(
      AutogradContext* ctx, const Variable& q, const Variable& k, const Variable& v,
      const OptTensor& slopes, const OptTensor& table, const OptTensor& r1, const OptTensor& r2,
      const OptTensor& rel_emb, const OptTensor& q_rel, bool causal,
      const OptTensor& key_padding_mask, std::optional<double> scale, c10::SymInt q_offset,
      c10::SymInt k_offset, std::optional<bool> bidirectional, std::optional<int64_t> max_distance,
      std::optional<c10::string_view> kerple_kind, c10::string_view layout,
      const OptTensor& cu_seqlens_q, const OptTensor& cu_seqlens_k,
      std::optional<c10::SymInt> max_seqlen_q, std::optional<c10::SymInt> max_seqlen_k,
      const OptTensor& log_fgate) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [out, lse] = detail::relative_attention_op().call(
        q, k, v, slopes, table, r1, r2, rel_emb, q_rel, causal, key_padding_mask, scale, q_offset,
        k_offset, bidirectional, max_distance, kerple_kind, layout, cu_seqlens_q, cu_seqlens_k,
        max_seqlen_q, max_seqlen_k, log_fgate);
    auto opt = [](const OptTensor& t) { return t.value_or(at::Tensor()); };
    ctx->save_for_backward({q, k, v, out, lse, opt(slopes), opt(table), opt(r1), opt(r2),
                            opt(rel_emb), opt(q_rel), opt(key_padding_mask), opt(cu_seqlens_q),
                            opt(cu_seqlens_k), opt(log_fgate)});
    auto& d = ctx->saved_data;
    d["causal"] = causal;
    d["scale"] = scale;
    d["q_offset"] = q_offset;
    d["k_offset"] = k_offset;
    d["bidirectional"] = bidirectional;
    d["max_distance"] = max_distance;
    d["kerple_kind"] = kerple_kind.has_value() ? c10::IValue(std::string(*kerple_kind)) : c10::IValue();
    d["layout"] = std::string(layout);
    d["max_seqlen_q"] = max_seqlen_q.has_value() ? c10::IValue(*max_seqlen_q) : c10::IValue();
    d["max_seqlen_k"] = max_seqlen_k.has_value() ? c10::IValue(*max_seqlen_k) : c10::IValue();
    return {out, lse};
  }

  static variable_list backward(AutogradContext* ctx, const variable_list& grads) {
    const auto s = ctx->get_saved_variables();
    auto opt = [](const at::Tensor& t) { return t.defined() ? OptTensor(t) : std::nullopt; };
    auto& d = ctx->saved_data;
    auto opt_symint = [](const c10::IValue& v) {
      return v.isNone() ? std::nullopt : std::optional<c10::SymInt>(v.toSymInt());
    };
    const auto kind_iv = d["kerple_kind"];
    const std::string kind = kind_iv.isNone() ? std::string() : kind_iv.toStringRef();
    const std::string layout = d["layout"].toStringRef();
    at::Tensor grad_out = grads[0];
    if (!grad_out.defined()) grad_out = at::zeros_like(s[3]);
    const OptTensor grad_lse = opt(grads[1]);
    auto [gq, gk, gv, g_slopes, g_table, g_r1, g_r2, g_rel, g_q_rel, g_log_fgate] =
        detail::relative_attention_backward_op().call(
            grad_out, grad_lse, s[0], s[1], s[2], s[3], s[4], opt(s[5]), opt(s[6]), opt(s[7]),
            opt(s[8]), opt(s[9]), opt(s[10]), d["causal"].toBool(), opt(s[11]),
            d["scale"].toOptional<double>(), d["q_offset"].toSymInt(), d["k_offset"].toSymInt(),
            d["bidirectional"].toOptional<bool>(), d["max_distance"].toOptional<int64_t>(),
            kind_iv.isNone() ? std::nullopt : std::optional<c10::string_view>(kind), layout,
            opt(s[12]), opt(s[13]), opt_symint(d["max_seqlen_q"]), opt_symint(d["max_seqlen_k"]),
            opt(s[14]));
    auto given = [](const at::Tensor& saved, const at::Tensor& g) {
      return saved.defined() ? g : Variable();
    };
    variable_list out(23);
    out[0] = gq;
    out[1] = gk;
    out[2] = gv;
    out[3] = given(s[5], g_slopes);
    out[4] = given(s[6], g_table);
    out[5] = given(s[7], g_r1);
    out[6] = given(s[8], g_r2);
    out[7] = given(s[9], g_rel);
    out[8] = given(s[10], g_q_rel);
    out[22] = given(s[14], g_log_fgate);
    variable_list inputs;
    for (int i = 0; i < 11; ++i) {
      if (i != 3 && i != 4) inputs.push_back(s[i]);  // q, k, v and the parameters
    }
    inputs.push_back(s[14]);
    return once_differentiable(std::move(out), inputs);
  }
};

std::tuple<at::Tensor, at::Tensor> relative_attention_autograd(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const OptTensor& slopes,
    const OptTensor& table, const OptTensor& r1, const OptTensor& r2, const OptTensor& rel_emb,
    const OptTensor& q_rel, bool causal, const OptTensor& key_padding_mask,
    std::optional<double> scale, c10::SymInt q_offset, c10::SymInt k_offset,
    std::optional<bool> bidirectional, std::optional<int64_t> max_distance,
    std::optional<c10::string_view> kerple_kind, c10::string_view layout,
    const OptTensor& cu_seqlens_q, const OptTensor& cu_seqlens_k,
    std::optional<c10::SymInt> max_seqlen_q, std::optional<c10::SymInt> max_seqlen_k,
    const OptTensor& log_fgate) {
  auto outs = RelativeAttentionFunction::apply(
      q, k, v, slopes, table, r1, r2, rel_emb, q_rel, causal, key_padding_mask, scale,
      std::move(q_offset), std::move(k_offset), bidirectional, max_distance, kerple_kind, layout,
      cu_seqlens_q, cu_seqlens_k, std::move(max_seqlen_q), std::move(max_seqlen_k), log_fgate);
  return {outs[0], outs[1]};
}

}  // namespace
}  // namespace posenc

TORCH_LIBRARY_IMPL(posenc, Autograd, m) {
  m.impl("relative_attention", &posenc::relative_attention_autograd);
}
