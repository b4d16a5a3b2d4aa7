#include <torch/autograd.h>
#include <torch/library.h>

#include "../rope.h"

namespace posenc {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::Variable;
using torch::autograd::variable_list;

// rope and rope_backward are rotations by +angle and -angle, each the other's adjoint, so
// each one's backward is the other op (which also makes double backward work). positions and
// inv_freq are not differentiable.
struct RopeArgs {
  static void save(AutogradContext* ctx, const std::optional<at::Tensor>& positions,
                   const at::Tensor& inv_freq, const c10::SymInt& offset,
                   std::optional<int64_t> rotary_dim, bool interleaved, c10::string_view layout) {
    ctx->save_for_backward({positions.value_or(at::Tensor()), inv_freq});
    ctx->saved_data["offset"] = offset;
    ctx->saved_data["rotary_dim"] = rotary_dim;
    ctx->saved_data["interleaved"] = interleaved;
    ctx->saved_data["layout"] = std::string(layout);
  }

  template <typename Op>
  static at::Tensor call_with_saved(Op& op, AutogradContext* ctx, const at::Tensor& grad) {
    const auto saved = ctx->get_saved_variables();
    const std::optional<at::Tensor> positions =
        saved[0].defined() ? std::optional<at::Tensor>(saved[0]) : std::nullopt;
    const std::string layout = ctx->saved_data["layout"].toStringRef();
    return op.call(grad, positions, saved[1], ctx->saved_data["offset"].toSymInt(),
                   ctx->saved_data["rotary_dim"].toOptional<int64_t>(),
                   ctx->saved_data["interleaved"].toBool(), layout);
  }
};

class RopeFunction : public torch::autograd::Function<RopeFunction> {
 public:
  static Variable forward(AutogradContext* ctx, const Variable& x,
                          const std::optional<at::Tensor>& positions, const Variable& inv_freq,
                          c10::SymInt offset, std::optional<int64_t> rotary_dim, bool interleaved,
                          c10::string_view layout) {
    at::AutoDispatchBelowADInplaceOrView guard;
    RopeArgs::save(ctx, positions, inv_freq, offset, rotary_dim, interleaved, layout);
    return detail::rope_op().call(x, positions, inv_freq, offset, rotary_dim, interleaved, layout);
  }

  static variable_list backward(AutogradContext* ctx, const variable_list& grad_outputs) {
    auto grad_x = RopeArgs::call_with_saved(detail::rope_backward_op(), ctx, grad_outputs[0]);
    return {grad_x, Variable(), Variable(), Variable(), Variable(), Variable(), Variable()};
  }
};

class RopeBackwardFunction : public torch::autograd::Function<RopeBackwardFunction> {
 public:
  static Variable forward(AutogradContext* ctx, const Variable& grad,
                          const std::optional<at::Tensor>& positions, const Variable& inv_freq,
                          c10::SymInt offset, std::optional<int64_t> rotary_dim, bool interleaved,
                          c10::string_view layout) {
    at::AutoDispatchBelowADInplaceOrView guard;
    RopeArgs::save(ctx, positions, inv_freq, offset, rotary_dim, interleaved, layout);
    return detail::rope_backward_op().call(grad, positions, inv_freq, offset, rotary_dim,
                                           interleaved, layout);
  }

  static variable_list backward(AutogradContext* ctx, const variable_list& grad_outputs) {
    auto grad_grad = RopeArgs::call_with_saved(detail::rope_op(), ctx, grad_outputs[0]);
    return {grad_grad, Variable(), Variable(), Variable(), Variable(), Variable(), Variable()};
  }
};

at::Tensor rope_autograd(const at::Tensor& x, const std::optional<at::Tensor>& positions,
                         const at::Tensor& inv_freq, c10::SymInt offset,
                         std::optional<int64_t> rotary_dim, bool interleaved,
                         c10::string_view layout) {
  return RopeFunction::apply(x, positions, inv_freq, std::move(offset), rotary_dim, interleaved,
                             layout);
}

at::Tensor rope_backward_autograd(const at::Tensor& grad, const std::optional<at::Tensor>& positions,
                                  const at::Tensor& inv_freq, c10::SymInt offset,
                                  std::optional<int64_t> rotary_dim, bool interleaved,
                                  c10::string_view layout) {
  return RopeBackwardFunction::apply(grad, positions, inv_freq, std::move(offset), rotary_dim,
                                     interleaved, layout);
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
  m.impl("rope", &posenc::rope_autograd);
  m.impl("rope_backward", &posenc::rope_backward_autograd);
  m.impl("apply_rotary_pos_emb", &posenc::apply_rotary_pos_emb_autograd);
}
