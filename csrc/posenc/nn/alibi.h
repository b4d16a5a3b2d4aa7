// posenc::nn::ALiBi: attention bias linear in the query-key distance.
#pragma once

#include <torch/arg.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/modules/common.h>
#include <torch/nn/modules/container/any_value.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

#include <optional>
#include <ostream>

namespace posenc {
namespace nn {

/// Options for ALiBi (Python: posenc.nn.ALiBi).
struct ALiBiOptions {
  /* implicit */ ALiBiOptions(int64_t num_heads) : num_heads_(num_heads) {}
  /// Number of attention heads H; > 0. Not-power-of-two counts follow the paper's rule.
  TORCH_ARG(int64_t, num_heads);
  /// true: -slope * (q_pos - k_pos) (decoder, used with a causal mask); false:
  /// -slope * |q_pos - k_pos| (encoder / bidirectional).
  TORCH_ARG(bool, causal) = true;
};

/// Attention with Linear Biases (Press et al. 2022, §3). Buffer `slopes` (H,), float32, from
/// posenc::ops::alibi_slopes (the paper's geometric sequence). forward returns the
/// bias (H, q_len, k_len) in the slopes' dtype from posenc::ops::alibi_bias, to add to the
/// attention scores (unsqueeze(0) for a batch) or pass as an SDPA attn_mask. Query i sits at
/// absolute position q_offset + i, key j at k_offset + j (pass the offsets, never
/// rely on lengths to align a query block with the keys).
/// Errors: num_heads <= 0 at construction (c10::ValueError); negative lengths in forward.
class ALiBiImpl : public torch::nn::Cloneable<ALiBiImpl> {
 public:
  explicit ALiBiImpl(int64_t num_heads) : ALiBiImpl(ALiBiOptions(num_heads)) {}
  explicit ALiBiImpl(const ALiBiOptions& options_);

  /// Validates the options and registers the `slopes` buffer.
  void reset() override;

  /// Prints e.g. `posenc::nn::ALiBi(num_heads=8, causal=true)`.
  void pretty_print(std::ostream& stream) const override;

  /// -> (H, q_len, k_len).
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

  /// The options the module was built with.
  ALiBiOptions options;
  /// Head slopes (H,); state_dict key "slopes".
  torch::Tensor slopes;

 protected:
  FORWARD_HAS_DEFAULT_ARGS({2, torch::nn::AnyValue(int64_t{0})},
                           {3, torch::nn::AnyValue(int64_t{0})})
};

/// ModuleHolder for ALiBiImpl.
TORCH_MODULE(ALiBi);

}  // namespace nn
}  // namespace posenc
