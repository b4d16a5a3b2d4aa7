// posenc::nn::T5RelativeBias: learned per-bucket, per-head attention bias (T5).
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

/// Options for T5RelativeBias (Python: posenc.nn.T5RelativeBias).
struct T5RelativeBiasOptions {
  /* implicit */ T5RelativeBiasOptions(int64_t num_heads) : num_heads_(num_heads) {}
  /// Number of attention heads H; > 0.
  TORCH_ARG(int64_t, num_heads);
  /// Number of relative position buckets (T5: 32); even and >= 4 when bidirectional, >= 2
  /// when causal.
  TORCH_ARG(int64_t, num_buckets) = 32;
  /// Distance at which the log-spaced buckets end (T5: 128); larger than the number of
  /// exact buckets (num_buckets / 2, halved again when bidirectional).
  TORCH_ARG(int64_t, max_distance) = 128;
  /// true for encoders (separate buckets for keys before and after the query); false for
  /// decoders (keys after the query share bucket 0).
  TORCH_ARG(bool, bidirectional) = true;
};

/// T5 relative attention bias (Raffel et al. 2020, §2.1; numbers match Hugging Face's
/// T5Attention, final clamp included). Parameter `weight` (num_buckets, H),
/// float32, initialised N(0, 0.02) (the layout of HF's relative_attention_bias.weight, so a
/// checkpoint's table loads as is). forward returns (H, q_len, k_len) with
/// out[h, i, j] = weight[bucket(k_pos - q_pos), h], from posenc::ops::t5_bias; query i sits
/// at q_offset + i, key j at k_offset + j. Gradients flow to `weight`.
/// Errors: bad options at construction (c10::ValueError naming the option); negative lengths
/// in forward.
class T5RelativeBiasImpl : public torch::nn::Cloneable<T5RelativeBiasImpl> {
 public:
  explicit T5RelativeBiasImpl(int64_t num_heads)
      : T5RelativeBiasImpl(T5RelativeBiasOptions(num_heads)) {}
  explicit T5RelativeBiasImpl(const T5RelativeBiasOptions& options_);

  /// Validates the options and registers `weight`, initialised N(0, 0.02).
  void reset() override;

  /// Prints e.g. `posenc::nn::T5RelativeBias(num_heads=8, num_buckets=32, ...)`.
  void pretty_print(std::ostream& stream) const override;

  /// -> (H, q_len, k_len) in weight's dtype.
  torch::Tensor forward(int64_t q_len, int64_t k_len, int64_t q_offset = 0, int64_t k_offset = 0);

  /// Fused attention with this module's position term, without the (q_len, k_len) bias:
  /// softmax(scale q k^T + bias + mask) v by posenc::ops::relative_attention (the numbers of
  /// SDPA with forward()'s bias as attn_mask, plus a causal mask when !options.bidirectional() (decoder)).
  /// q (B, H, Lq, D), k (B, H_kv, Lk, D), v (B, H_kv, Lk, Dv) (H % H_kv == 0);
  /// key_padding_mask (B, Lk) bool, true = padding; offsets as in forward; scale default
  /// 1/sqrt(D). -> (B, H, Lq, Dv) in q's dtype. Errors: those of relative_attention.
  torch::Tensor attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                          const std::optional<torch::Tensor>& key_padding_mask = std::nullopt,
                          int64_t q_offset = 0, int64_t k_offset = 0,
                          std::optional<double> scale = std::nullopt);

  /// The options the module was built with.
  T5RelativeBiasOptions options;
  /// Bias table (num_buckets, H); state_dict key "weight".
  torch::Tensor weight;

 protected:
  FORWARD_HAS_DEFAULT_ARGS({2, torch::nn::AnyValue(int64_t{0})},
                           {3, torch::nn::AnyValue(int64_t{0})})
};

/// ModuleHolder for T5RelativeBiasImpl.
TORCH_MODULE(T5RelativeBias);

}  // namespace nn
}  // namespace posenc
