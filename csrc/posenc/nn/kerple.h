// posenc::nn::KERPLEBias: kernelized relative position bias with learnable r1, r2.
#pragma once

#include <torch/arg.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/modules/common.h>
#include <torch/nn/modules/container/any_value.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

#include <optional>
#include <utility>
#include <ostream>
#include <string>

namespace posenc {
namespace nn {

/// Options for KERPLEBias (Python: posenc.nn.KERPLEBias).
struct KERPLEBiasOptions {
  /* implicit */ KERPLEBiasOptions(int64_t num_heads) : num_heads_(num_heads) {}
  /// Number of attention heads H; > 0.
  TORCH_ARG(int64_t, num_heads);
  /// "log": -r1 * log(1 + r2 * d); "power": -r1 * d^r2.
  TORCH_ARG(std::string, kind) = "log";
  /// true: d = max(q_pos - k_pos, 0) (decoder); false: d = |q_pos - k_pos|.
  TORCH_ARG(bool, causal) = true;
  /// Lower bound applied to r1 and r2 in forward, keeping the kernel conditionally positive
  /// definite while they train; > 0.
  TORCH_ARG(double, eps) = 1e-2;
};

/// KERPLE (Chi et al. 2022, eqs. for the logarithmic and power variants). Parameters `r1`,
/// `r2` (H,), float32, initialised uniformly in (0, 2] and (0, 1] (the paper's code). forward
/// returns posenc::ops::kerple_bias(r1.clamp(min=eps), r2.clamp(min=eps), ...) (for "power"
/// r2 is also clamped to <= 2, where the kernel stays valid): (H, q_len, k_len), query i at
/// q_offset + i, key j at k_offset + j. Gradients flow to r1 and r2 (zero where clamped).
/// Errors: num_heads <= 0, kind not "log"/"power", eps <= 0, eps > 2 with kind "power" at
/// construction (c10::ValueError); negative lengths, non-finite r1/r2 (CPU) in forward.
class KERPLEBiasImpl : public torch::nn::Cloneable<KERPLEBiasImpl> {
 public:
  explicit KERPLEBiasImpl(int64_t num_heads) : KERPLEBiasImpl(KERPLEBiasOptions(num_heads)) {}
  explicit KERPLEBiasImpl(const KERPLEBiasOptions& options_);

  /// Validates the options and registers `r1` and `r2`.
  void reset() override;

  /// Prints e.g. `posenc::nn::KERPLEBias(num_heads=8, kind=log, causal=true, eps=0.01)`.
  void pretty_print(std::ostream& stream) const override;

  /// -> (H, q_len, k_len) in the parameters' dtype.
  torch::Tensor forward(int64_t q_len, int64_t k_len, int64_t q_offset = 0, int64_t k_offset = 0);

  /// Fused attention with this module's position term, without the (q_len, k_len) bias:
  /// softmax(scale q k^T + bias + mask) v by posenc::ops::relative_attention (the numbers of
  /// SDPA with forward()'s bias as attn_mask, plus a causal mask when options.causal()).
  /// q (B, H, Lq, D), k (B, H_kv, Lk, D), v (B, H_kv, Lk, Dv) (H % H_kv == 0);
  /// key_padding_mask (B, Lk) bool, true = padding; offsets as in forward; scale default
  /// 1/sqrt(D). -> (B, H, Lq, Dv) in q's dtype. Errors: those of relative_attention.
  torch::Tensor attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                          const std::optional<torch::Tensor>& key_padding_mask = std::nullopt,
                          int64_t q_offset = 0, int64_t k_offset = 0,
                          std::optional<double> scale = std::nullopt);

  /// (r1, r2) as forward and attention use them: clamped to [eps, inf) ([eps, 2] for r2 of
  /// "power").
  std::pair<torch::Tensor, torch::Tensor> clamped_params() const;

  /// The options the module was built with.
  KERPLEBiasOptions options;
  /// Scale (H,); state_dict key "r1".
  torch::Tensor r1;
  /// Distance exponent / rate (H,); state_dict key "r2".
  torch::Tensor r2;

 protected:
  FORWARD_HAS_DEFAULT_ARGS({2, torch::nn::AnyValue(int64_t{0})},
                           {3, torch::nn::AnyValue(int64_t{0})})
};

/// ModuleHolder for KERPLEBiasImpl.
TORCH_MODULE(KERPLEBias);

}  // namespace nn
}  // namespace posenc
