#include <torch/autograd.h>
#include <torch/library.h>

#include "../rope.h"

namespace posenc {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::Variable;
using torch::autograd::variable_list;

// rope and rope_backward are the linear maps m * R(+angle) and m * R(-angle) on each pair
// (m the attention_factor / xPos magnitude, a constant), each the other's adjoint, so each
// one's backward is the other op (which also makes double backward work). positions,
// inv_freq, cu_seqlens and xpos_zeta are not differentiable.
struct RopeArgs {
  const std::optional<at::Tensor>& positions;
  const at::Tensor& inv_freq;
  c10::SymInt offset;
  std::optional<int64_t> rotary_dim;
  bool interleaved;
  c10::string_view layout;
  const std::optional<at::Tensor>& cu_seqlens;
  double attention_factor;
  const std::optional<at::Tensor>& xpos_zeta;
  double xpos_scale_base;
  bool xpos_inverse;
  c10::SymInt xpos_centre;

  at::Tensor call(decltype(detail::rope_op())& op, const at::Tensor& t) const {
    return op.call(t, positions, inv_freq, offset, rotary_dim, interleaved, layout, cu_seqlens,
                   attention_factor, xpos_zeta, xpos_scale_base, xpos_inverse, xpos_centre);
  }

  void save(AutogradContext* ctx) const {
    ctx->save_for_backward({positions.value_or(at::Tensor()), inv_freq,
                            cu_seqlens.value_or(at::Tensor()), xpos_zeta.value_or(at::Tensor())});
    ctx->saved_data["offset"] = offset;
    ctx->saved_data["rotary_dim"] = rotary_dim;
    ctx->saved_data["interleaved"] = interleaved;
    ctx->saved_data["layout"] = std::string(layout);
    ctx->saved_data["attention_factor"] = attention_factor;
    ctx->saved_data["xpos_scale_base"] = xpos_scale_base;
    ctx->saved_data["xpos_inverse"] = xpos_inverse;
    ctx->saved_data["xpos_centre"] = xpos_centre;
  }

  static at::Tensor call_with_saved(decltype(detail::rope_op())& op, AutogradContext* ctx,
                                    const at::Tensor& grad) {
    const auto saved = ctx->get_saved_variables();
    auto opt = [](const at::Tensor& t) {
      return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
    };
    const std::optional<at::Tensor> positions = opt(saved[0]);
    const std::optional<at::Tensor> cu_seqlens = opt(saved[2]);
    const std::optional<at::Tensor> xpos_zeta = opt(saved[3]);
    const std::string layout = ctx->saved_data["layout"].toStringRef();
    auto& d = ctx->saved_data;
    return op.call(grad, positions, saved[1], d["offset"].toSymInt(),
                   d["rotary_dim"].toOptional<int64_t>(), d["interleaved"].toBool(), layout,
                   cu_seqlens, d["attention_factor"].toDouble(), xpos_zeta,
                   d["xpos_scale_base"].toDouble(), d["xpos_inverse"].toBool(),
                   d["xpos_centre"].toSymInt());
  }
};

// One gradient slot per op argument: the tensor, then 12 non-differentiable ones.
variable_list first_only(const at::Tensor& g) {
  variable_list out(13);
  out[0] = g;
  return out;
}

template <bool kBackwardOp>
class RopeFunction : public torch::autograd::Function<RopeFunction<kBackwardOp>> {
 public:
  static Variable forward(AutogradContext* ctx, const Variable& x,
                          const std::optional<at::Tensor>& positions, const Variable& inv_freq,
                          c10::SymInt offset, std::optional<int64_t> rotary_dim, bool interleaved,
                          c10::string_view layout, const std::optional<at::Tensor>& cu_seqlens,
                          double attention_factor, const std::optional<at::Tensor>& xpos_zeta,
                          double xpos_scale_base, bool xpos_inverse, c10::SymInt xpos_centre) {
    at::AutoDispatchBelowADInplaceOrView guard;
    const RopeArgs args{positions,  inv_freq,         offset,    rotary_dim,
                        interleaved, layout,          cu_seqlens, attention_factor,
                        xpos_zeta,  xpos_scale_base,  xpos_inverse, std::move(xpos_centre)};
    args.save(ctx);
    return args.call(kBackwardOp ? detail::rope_backward_op() : detail::rope_op(), x);
  }

  static variable_list backward(AutogradContext* ctx, const variable_list& grad_outputs) {
    return first_only(RopeArgs::call_with_saved(
        kBackwardOp ? detail::rope_op() : detail::rope_backward_op(), ctx, grad_outputs[0]));
  }
};

template <bool kBackwardOp>
at::Tensor rope_autograd(const at::Tensor& x, const std::optional<at::Tensor>& positions,
                         const at::Tensor& inv_freq, c10::SymInt offset,
                         std::optional<int64_t> rotary_dim, bool interleaved,
                         c10::string_view layout, const std::optional<at::Tensor>& cu_seqlens,
                         double attention_factor, const std::optional<at::Tensor>& xpos_zeta,
                         double xpos_scale_base, bool xpos_inverse, c10::SymInt xpos_centre) {
  return RopeFunction<kBackwardOp>::apply(x, positions, inv_freq, std::move(offset), rotary_dim,
                                          interleaved, layout, cu_seqlens, attention_factor,
                                          xpos_zeta, xpos_scale_base, xpos_inverse,
                                          std::move(xpos_centre));
}

// rope_qk / rope_qk_backward: the pair version of RopeFunction (q with the xPos magnitude, k
// with its inverse); each op's backward is the other. An output without a gradient gets
// zeros (materialized by autograd), which rotate to zeros.
template <bool kBackwardOp>
class RopeQkFunction : public torch::autograd::Function<RopeQkFunction<kBackwardOp>> {
 public:
  static variable_list forward(AutogradContext* ctx, const Variable& q, const Variable& k,
                               const std::optional<at::Tensor>& positions,
                               const Variable& inv_freq, c10::SymInt offset,
                               std::optional<int64_t> rotary_dim, bool interleaved,
                               c10::string_view layout,
                               const std::optional<at::Tensor>& cu_seqlens,
                               double attention_factor,
                               const std::optional<at::Tensor>& xpos_zeta, double xpos_scale_base,
                               c10::SymInt xpos_centre) {
    at::AutoDispatchBelowADInplaceOrView guard;
    const RopeArgs args{positions,  inv_freq,         offset,    rotary_dim,
                        interleaved, layout,          cu_seqlens, attention_factor,
                        xpos_zeta,  xpos_scale_base,  false,     xpos_centre};
    args.save(ctx);
    auto& op = kBackwardOp ? detail::rope_qk_backward_op() : detail::rope_qk_op();
    auto [a, b] = op.call(q, k, positions, inv_freq, std::move(offset), rotary_dim, interleaved,
                          layout, cu_seqlens, attention_factor, xpos_zeta, xpos_scale_base,
                          std::move(xpos_centre));
    return {a, b};
  }

  static variable_list backward(AutogradContext* ctx, const variable_list& grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    auto opt = [](const at::Tensor& t) {
      return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
    };
    const std::string layout = ctx->saved_data["layout"].toStringRef();
    auto& d = ctx->saved_data;
    auto& op = kBackwardOp ? detail::rope_qk_op() : detail::rope_qk_backward_op();
    auto [gq, gk] = op.call(grad_outputs[0], grad_outputs[1], opt(saved[0]), saved[1],
                            d["offset"].toSymInt(), d["rotary_dim"].toOptional<int64_t>(),
                            d["interleaved"].toBool(), layout, opt(saved[2]),
                            d["attention_factor"].toDouble(), opt(saved[3]),
                            d["xpos_scale_base"].toDouble(), d["xpos_centre"].toSymInt());
    variable_list out(13);  // q, k, then 11 non-differentiable arguments
    out[0] = gq;
    out[1] = gk;
    return out;
  }
};

template <bool kBackwardOp>
std::tuple<at::Tensor, at::Tensor> rope_qk_autograd(
    const at::Tensor& q, const at::Tensor& k, const std::optional<at::Tensor>& positions,
    const at::Tensor& inv_freq, c10::SymInt offset, std::optional<int64_t> rotary_dim,
    bool interleaved, c10::string_view layout, const std::optional<at::Tensor>& cu_seqlens,
    double attention_factor, const std::optional<at::Tensor>& xpos_zeta, double xpos_scale_base,
    c10::SymInt xpos_centre) {
  auto out = RopeQkFunction<kBackwardOp>::apply(q, k, positions, inv_freq, std::move(offset),
                                                rotary_dim, interleaved, layout, cu_seqlens,
                                                attention_factor, xpos_zeta, xpos_scale_base,
                                                std::move(xpos_centre));
  return {out[0], out[1]};
}

class ApplyRotaryPosEmbFunction : public torch::autograd::Function<ApplyRotaryPosEmbFunction> {
 public:
  static Variable forward(AutogradContext* ctx, const Variable& x, const Variable& cos,
                          const Variable& sin, bool interleaved, c10::string_view layout) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({x, cos, sin});
    ctx->saved_data["interleaved"] = interleaved;
    ctx->saved_data["layout"] = std::string(layout);
    return detail::apply_rotary_pos_emb_op().call(x, cos, sin, interleaved, layout);
  }

  static variable_list backward(AutogradContext* ctx, const variable_list& grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const std::string layout = ctx->saved_data["layout"].toStringRef();
    auto [grad_x, grad_cos, grad_sin] = detail::apply_rotary_pos_emb_backward_op().call(
        grad_outputs[0], saved[0], saved[1], saved[2], ctx->saved_data["interleaved"].toBool(),
        layout);
    return {grad_x, grad_cos, grad_sin, Variable(), Variable()};
  }
};

at::Tensor apply_rotary_pos_emb_autograd(const at::Tensor& x, const at::Tensor& cos,
                                         const at::Tensor& sin, bool interleaved,
                                         c10::string_view layout) {
  return ApplyRotaryPosEmbFunction::apply(x, cos, sin, interleaved, layout);
}

}  // namespace
}  // namespace posenc

TORCH_LIBRARY_IMPL(posenc, Autograd, m) {
  m.impl("rope", &posenc::rope_autograd<false>);
  m.impl("rope_backward", &posenc::rope_autograd<true>);
  m.impl("rope_qk", &posenc::rope_qk_autograd<false>);
  m.impl("rope_qk_backward", &posenc::rope_qk_autograd<true>);
  m.impl("apply_rotary_pos_emb", &posenc::apply_rotary_pos_emb_autograd);
}
