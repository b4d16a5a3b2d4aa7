// Autograd kernel of the bias ops' out= overloads: like ATen's out= ops they record no graph,
// so a call that would need one is refused instead of silently returning a tensor without
// gradient. Otherwise the buffer is written below autograd and its version bumped (an earlier
// use of `out` saved for backward then raises rather than reading new values).
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/VariableTypeUtils.h>
#include <torch/library.h>

#include <string>

namespace posenc {
namespace {

void bias_out_autograd(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  const auto& schema = op.schema();
  const size_t n = schema.arguments().size();
  std::string name = schema.name();
  if (name.rfind("posenc::", 0) == 0) name = name.substr(8);
  auto args = torch::jit::last(*stack, n);
  if (at::GradMode::is_enabled()) {
    for (size_t i = 0; i < n; ++i) {
      if (!args[i].isTensor()) continue;
      const auto& t = args[i].toTensor();
      TORCH_CHECK(!(t.defined() && t.requires_grad()), "posenc.", name, ": argument '",
                  schema.arguments()[i].name(),
                  "' requires grad, but the out= variant records no autograd graph; call it "
                  "without out= to train the parameters, or under torch.no_grad()");
    }
  }
  const at::Tensor out = args[n - 1].toTensor();
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    op.callBoxed(stack);
  }
  torch::autograd::increment_version(out);
}

}  // namespace
}  // namespace posenc

TORCH_LIBRARY_IMPL(posenc, Autograd, m) {
  m.impl("alibi_bias.out", torch::CppFunction::makeFromBoxedFunction<&posenc::bias_out_autograd>());
  m.impl("t5_bias.out", torch::CppFunction::makeFromBoxedFunction<&posenc::bias_out_autograd>());
  m.impl("kerple_bias.out", torch::CppFunction::makeFromBoxedFunction<&posenc::bias_out_autograd>());
}
