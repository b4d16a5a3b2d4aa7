// posenc::nn::FIRE: functional interpolation for relative positions (Li et al. 2023).
#pragma once

#include <torch/arg.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/modules/common.h>
#include <torch/nn/modules/container/any_value.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

#include <ostream>

namespace posenc {
namespace nn {

/// Options for FIRE (Python: posenc.nn.FIRE).
struct FIREOptions {
  /* implicit */ FIREOptions(int64_t num_heads) : num_heads_(num_heads) {}
  /// Number of attention heads H (the MLP's outputs); > 0.
  TORCH_ARG(int64_t, num_heads);
  /// Hidden width of the MLP f (the paper: 32); > 0.
  TORCH_ARG(int64_t, mlp_width) = 32;
  /// Initial c of psi(x) = log(c x + 1) (the paper's code: 0.1); finite and != 0.
  TORCH_ARG(double, init_c) = 0.1;
  /// Initial threshold L (the paper's code: 512); finite and > 0.
  TORCH_ARG(double, init_L) = 512.0;
  /// Added to the normalizer psi(max(L, i)) (the paper's code: 1e-6); > 0.
  TORCH_ARG(double, eps) = 1e-6;
  /// true: keys after the query get 0 (decoder; FIRE is defined for j <= i); false: the
  /// paper's code's |i - j| for every key.
  TORCH_ARG(bool, causal) = true;
};

/// FIRE (Li et al. 2023, "Functional Interpolation for Relative Positions Improves Long
/// Context Transformers", ICLR 2024, eq. 3-4): forward(q_len, k_len, q_offset = 0, k_offset = 0)
/// returns posenc::ops::fire_bias(c, L_multiplier * init_L, mlp...): (H, q_len, k_len),
/// b(i, j) = f(psi(i - j) / (psi(max(L, i)) + eps)), query i at q_offset + i, key j at
/// k_offset + j. Parameters and state_dict keys are those of the paper's reference code:
/// `mlp.0.weight` (mlp_width, 1), `mlp.0.bias`, `mlp.2.weight` (H, mlp_width), `mlp.2.bias`
/// (Linear, ReLU, Linear; torch's default Linear init), `c` () = init_c, `L_multiplier` () = 1,
/// and the buffer `init_L` () = init_L (a frozen parameter in that code; same key). c and L enter
/// as |c| and |L|, as there. Errors: num_heads, mlp_width <= 0, init_c 0 or not finite, init_L
/// <= 0, eps <= 0 at construction (c10::ValueError); q_offset < 0, negative lengths, non-finite
/// parameters (CPU) in forward.
class FIREImpl : public torch::nn::Cloneable<FIREImpl> {
 public:
  explicit FIREImpl(int64_t num_heads) : FIREImpl(FIREOptions(num_heads)) {}
  explicit FIREImpl(const FIREOptions& options_);

  /// Validates the options and registers the parameters.
  void reset() override;

  /// Prints e.g. `posenc::nn::FIRE(num_heads=8, mlp_width=32, init_c=0.1, ...)`.
  void pretty_print(std::ostream& stream) const override;

  /// -> (H, q_len, k_len) in the parameters' dtype.
  torch::Tensor forward(int64_t q_len, int64_t k_len, int64_t q_offset = 0, int64_t k_offset = 0);

  /// The options the module was built with.
  FIREOptions options;
  /// Linear(1, mlp_width), ReLU, Linear(mlp_width, num_heads).
  torch::nn::Sequential mlp{nullptr};
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
  /// () log-transform scale; state_dict key "c".
  torch::Tensor c;
  /// () learned multiplier of the threshold; key "L_multiplier".
  torch::Tensor L_multiplier;
  /// () buffer, the initial threshold; key "init_L".
  torch::Tensor init_L;

 protected:
  FORWARD_HAS_DEFAULT_ARGS({2, torch::nn::AnyValue(int64_t{0})},
                           {3, torch::nn::AnyValue(int64_t{0})})
};

/// ModuleHolder for FIREImpl.
TORCH_MODULE(FIRE);

}  // namespace nn
}  // namespace posenc
