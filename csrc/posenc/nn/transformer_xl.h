// posenc::nn::TransformerXLRelativeScore: the position terms of Transformer-XL attention.
#pragma once

#include <torch/arg.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/modules/common.h>
#include <torch/nn/modules/container/any_value.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

#include <optional>
#include <ostream>

namespace posenc {
namespace nn {

/// Options for TransformerXLRelativeScore (Python: posenc.nn.TransformerXLRelativeScore).
struct TransformerXLRelativeScoreOptions {
  TransformerXLRelativeScoreOptions(int64_t d_model, int64_t num_heads, int64_t head_dim)
      : d_model_(d_model), num_heads_(num_heads), head_dim_(head_dim) {}
  /// Size of the sinusoidal relative encodings R (the model width); even, > 0.
  TORCH_ARG(int64_t, d_model);
  /// Number of attention heads H; > 0.
  TORCH_ARG(int64_t, num_heads);
  /// Per-head query size D; > 0.
  TORCH_ARG(int64_t, head_dim);
  /// Frequency base of the sinusoidal encodings; > 0.
  TORCH_ARG(double, base) = 10000.0;
};

/// Relative attention scores of Transformer-XL (Dai et al. 2019, §3.3). With
/// A_ij = (a) + (b) + (c) + (d), this module gives the position part (b) + (d):
///   forward(q, mem_len)[b, h, i, j] = (q_i + v_h) . W_R R_{(mem_len + i) - j}
/// for keys j over [memory; current segment] (k_len = mem_len + Lq), computed by
/// posenc::ops::rel_pos_scores without the pad-and-shift trick, so both signs of the distance
/// are exact (bidirectional use). R is posenc::ops::sinusoidal_table (interleaved,
/// d_model wide) at distances -(c) .. c, c = mem_len + Lq - 1, projected by `r_proj` (a
/// Linear d_model -> H * D without bias, W_R in the paper). content_query(q) = q + u gives
/// the query of the content part (a) + (c), to multiply with the keys.
/// Parameters: r_proj.weight (H * D, d_model) (Linear's default init), u and v (H, D)
/// initialised N(0, 0.02). Output dtype is that of q + v.
/// Errors: bad options at construction (c10::ValueError); q not (B, H, Lq, D) or not
/// floating, or mem_len < 0 in forward (c10::Error naming the module and argument).
class TransformerXLRelativeScoreImpl
    : public torch::nn::Cloneable<TransformerXLRelativeScoreImpl> {
 public:
  TransformerXLRelativeScoreImpl(int64_t d_model, int64_t num_heads, int64_t head_dim)
      : TransformerXLRelativeScoreImpl(
            TransformerXLRelativeScoreOptions(d_model, num_heads, head_dim)) {}
  explicit TransformerXLRelativeScoreImpl(const TransformerXLRelativeScoreOptions& options_);

  /// Validates the options and registers r_proj, u and v.
  void reset() override;

  /// Prints e.g. `posenc::nn::TransformerXLRelativeScore(d_model=512, num_heads=8, ...)`.
  void pretty_print(std::ostream& stream) const override;

  /// q: (B, H, Lq, D), the current segment's queries (after the query projection);
  /// mem_len: number of cached memory positions before them. -> (B, H, Lq, mem_len + Lq).
  /// causal: the entries of keys after each query are written as 0 and not computed
  /// (posenc::ops::rel_pos_scores' causal mode; Transformer-XL's language model is causal).
  torch::Tensor forward(const torch::Tensor& q, int64_t mem_len = 0, bool causal = false);

  /// Full Transformer-XL attention, fused (no (Lq, k_len) tensor): softmax(scale ((q + u) . k_j
  /// + (q + v) . W_R R_{i - j}) + mask) v_j by posenc::ops::relative_attention, i.e. the
  /// paper's A = (a) + (b) + (c) + (d) scaled by `scale` (default 1/sqrt(D)) then softmax.
  /// q (B, H, Lq, D), k (B, H_kv, mem_len + Lq, D) and v (B, H_kv, mem_len + Lq, Dv) over
  /// [memory; segment]; causal (default, language modelling): query i sees the memory and the
  /// segment's keys up to i. key_padding_mask (B, mem_len + Lq) bool, true = padding.
  /// -> (B, H, Lq, Dv) in q's dtype. Errors: q as in forward, mem_len < 0, and those of
  /// relative_attention.
  torch::Tensor attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                          int64_t mem_len = 0,
                          const std::optional<torch::Tensor>& key_padding_mask = std::nullopt,
                          std::optional<double> scale = std::nullopt, bool causal = true);

  /// q + u[None, :, None, :]: the query for the content terms (a) + (c).
  torch::Tensor content_query(const torch::Tensor& q);

  /// The options the module was built with.
  TransformerXLRelativeScoreOptions options;
  /// W_R: projects the sinusoidal encodings to H * D; state_dict key "r_proj.weight".
  torch::nn::Linear r_proj{nullptr};
  /// Global content bias u (H, D); state_dict key "u".
  torch::Tensor u;
  /// Global position bias v (H, D); state_dict key "v".
  torch::Tensor v;

 protected:
  FORWARD_HAS_DEFAULT_ARGS({1, torch::nn::AnyValue(int64_t{0})})
};

/// ModuleHolder for TransformerXLRelativeScoreImpl.
TORCH_MODULE(TransformerXLRelativeScore);

}  // namespace nn
}  // namespace posenc
