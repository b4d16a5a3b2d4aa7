// posenc::nn::RotaryEmbedding: rotates queries and keys by their positions (RoPE).
#pragma once

#include <torch/arg.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/modules/common.h>
#include <torch/nn/modules/container/any_value.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

#include <optional>
#include <ostream>
#include <string>
#include <tuple>

namespace posenc {
namespace nn {

/// Options for RotaryEmbedding (Python: posenc.nn.RotaryEmbedding).
struct RotaryEmbeddingOptions {
  /* implicit */ RotaryEmbeddingOptions(int64_t dim) : dim_(dim) {}
  /// Head dimension D of q and k (their last dimension); > 0.
  TORCH_ARG(int64_t, dim);
  /// Number of leading dims that are rotated (even, <= dim); the rest pass through
  /// (partial rotary, GPT-NeoX / Phi). Unset means dim.
  TORCH_ARG(std::optional<int64_t>, rotary_dim) = std::nullopt;
  /// Frequency base (10000 in RoFormer, 500000 in Llama 3); > 1.
  TORCH_ARG(double, base) = 10000.0;
  /// false: half-split pairs (i, i + R/2) (GPT-NeoX, Llama); true: interleaved pairs
  /// (2i, 2i+1) (GPT-J, RoFormer).
  TORCH_ARG(bool, interleaved) = false;
  /// "bhsd" for (B, H, S, D) inputs, "bshd" for (B, S, H, D).
  TORCH_ARG(std::string, layout) = "bhsd";
};

/// Rotary position embedding (Su et al. 2021, RoFormer, eq. 34), applied to q and k with
/// posenc::ops::rope. Inverse frequencies base^(-2i/R), R = rotary_dim (eq. 15), are computed
/// once by posenc::ops::rope_inv_freq in fp64 and kept as a float32 tensor that is NOT a
/// parameter or buffer: the state_dict is empty, and to(torch::kBFloat16) keeps them fp32
/// (angles at positions in the thousands need fp32, case C01); to(device) moves them, and
/// forward uses a copy on the inputs' device when they live elsewhere.
/// Errors (c10::ValueError at construction, naming the module and option; case C05): dim <= 0,
/// rotary_dim odd, <= 0 or > dim, base <= 1, layout not "bhsd"/"bshd". In forward
/// (c10::Error): q or k whose last dimension is not dim, plus the op's own checks.
class RotaryEmbeddingImpl : public torch::nn::Cloneable<RotaryEmbeddingImpl> {
 public:
  explicit RotaryEmbeddingImpl(int64_t dim) : RotaryEmbeddingImpl(RotaryEmbeddingOptions(dim)) {}
  explicit RotaryEmbeddingImpl(const RotaryEmbeddingOptions& options_);

  /// Validates the options and computes inv_freq (float32, (rotary_dim / 2,), on the CPU).
  void reset() override;

  /// Prints e.g. `posenc::nn::RotaryEmbedding(dim=64, rotary_dim=64, base=10000, ...)`.
  void pretty_print(std::ostream& stream) const override;

  /// q, k: (B, H, S, D) ("bhsd") or (B, S, H, D) ("bshd"), any float dtype and strides (q and
  /// k may have different head counts, as in grouped-query attention). positions: int64 (S,)
  /// or (B, S), or none for arange(S); offset is added to the positions in both cases
  /// (KV-cache decoding). Returns (q_rot, k_rot) with the inputs' shapes and dtypes.
  std::tuple<torch::Tensor, torch::Tensor> forward(
      const torch::Tensor& q, const torch::Tensor& k,
      const std::optional<torch::Tensor>& positions = std::nullopt, int64_t offset = 0);

  /// Moves inv_freq with the module; a dtype change leaves it float32.
  void to(torch::Device device, torch::Dtype dtype, bool non_blocking = false) override;
  void to(torch::Dtype dtype, bool non_blocking = false) override;
  void to(torch::Device device, bool non_blocking = false) override;

  /// The resolved rotary dimension (options.rotary_dim() or dim).
  int64_t rotary_dim() const;

  /// The options the module was built with.
  RotaryEmbeddingOptions options;
  /// float32 (rotary_dim / 2,) inverse frequencies; not registered (no state_dict key).
  torch::Tensor inv_freq;

 protected:
  FORWARD_HAS_DEFAULT_ARGS({2, torch::nn::AnyValue(std::optional<torch::Tensor>())},
                           {3, torch::nn::AnyValue(int64_t{0})})
};

/// ModuleHolder for RotaryEmbeddingImpl.
TORCH_MODULE(RotaryEmbedding);

}  // namespace nn
}  // namespace posenc
