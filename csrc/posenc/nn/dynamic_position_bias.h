// posenc::nn::DynamicPositionBias: an MLP over the relative distance (x-transformers).
#pragma once

#include <torch/arg.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/modules/common.h>
#include <torch/nn/modules/container/any_value.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

#include <ostream>
#include <vector>

namespace posenc {
namespace nn {

/// Options for DynamicPositionBias (Python: posenc.nn.DynamicPositionBias).
struct DynamicPositionBiasOptions {
  DynamicPositionBiasOptions(int64_t dim, int64_t num_heads) : dim_(dim), num_heads_(num_heads) {}
  /// Width of the MLP's hidden layers; > 0 (x-transformers uses model dim / 4).
  TORCH_ARG(int64_t, dim);
  /// Number of attention heads H (the MLP's outputs); > 0.
  TORCH_ARG(int64_t, num_heads);
  /// Hidden layers (Linear + SiLU); >= 1 (x-transformers' attention layers use 2).
  TORCH_ARG(int64_t, depth) = 2;
  /// Feed sign(d) * log(|d| + 1) instead of d.
  TORCH_ARG(bool, log_distance) = false;
  /// Bias-free LayerNorm (learned gamma) before each SiLU, as x-transformers' norm=True.
  TORCH_ARG(bool, norm) = false;
  /// true: keys after the query get 0 (decoder; the causal mask removes them anyway).
  TORCH_ARG(bool, causal) = false;
};

/// The learned gain of x-transformers' bias-free LayerNorm (state_dict key "gamma"). Holds the
/// parameter only: DynamicPositionBias passes it to the op.
class DynamicPositionBiasNormImpl : public torch::nn::Cloneable<DynamicPositionBiasNormImpl> {
 public:
  explicit DynamicPositionBiasNormImpl(int64_t dim) : dim(dim) { reset(); }
  void reset() override;
  void pretty_print(std::ostream& stream) const override;
  int64_t dim;
  /// (dim,), initialised to 1.
  torch::Tensor gamma;
};
TORCH_MODULE(DynamicPositionBiasNorm);

/// Dynamic position bias (x-transformers' DynamicPositionBias, after Wang et al. 2021,
/// "CrossFormer" §3.3). forward(q_len, k_len, q_offset = 0, k_offset = 0) returns
/// posenc::ops::dynamic_position_bias of this module's MLP: (H, q_len, k_len) in the
/// parameters' dtype, query i at q_offset + i, key j at k_offset + j, MLP input
/// d = q_pos - k_pos. Layers and state_dict keys are x-transformers': `mlp.<l>.0.weight`,
/// `mlp.<l>.0.bias` (Linear(1, dim), then Linear(dim, dim)), `mlp.<l>.1.gamma` with norm, and
/// `mlp.<depth>.weight`, `mlp.<depth>.bias` (Linear(dim, num_heads)); torch's default Linear
/// init, gamma = 1. A state_dict of x-transformers' module loads as is (with its norm flag).
/// Errors: dim, num_heads <= 0 or depth < 1 at construction (c10::ValueError); negative
/// lengths, non-finite parameters (CPU) in forward.
class DynamicPositionBiasImpl : public torch::nn::Cloneable<DynamicPositionBiasImpl> {
 public:
  DynamicPositionBiasImpl(int64_t dim, int64_t num_heads)
      : DynamicPositionBiasImpl(DynamicPositionBiasOptions(dim, num_heads)) {}
  explicit DynamicPositionBiasImpl(const DynamicPositionBiasOptions& options_);

  /// Validates the options and registers the MLP.
  void reset() override;

  /// Prints e.g. `posenc::nn::DynamicPositionBias(dim=64, num_heads=8, depth=2, ...)`.
  void pretty_print(std::ostream& stream) const override;

  /// -> (H, q_len, k_len) in the parameters' dtype.
  torch::Tensor forward(int64_t q_len, int64_t k_len, int64_t q_offset = 0, int64_t k_offset = 0);

  /// The options the module was built with.
  DynamicPositionBiasOptions options;
  /// depth blocks (Linear [, DynamicPositionBiasNorm], SiLU), then the output Linear.
  torch::nn::ModuleList mlp{nullptr};
  /// The Linear layers in order (depth + 1) and the norms' gammas (depth, or none).
  std::vector<torch::nn::Linear> linears;
  std::vector<DynamicPositionBiasNorm> norms;

 protected:
  FORWARD_HAS_DEFAULT_ARGS({2, torch::nn::AnyValue(int64_t{0})},
                           {3, torch::nn::AnyValue(int64_t{0})})
};

/// ModuleHolder for DynamicPositionBiasImpl.
TORCH_MODULE(DynamicPositionBias);

}  // namespace nn
}  // namespace posenc
