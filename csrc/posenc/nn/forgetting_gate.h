// posenc::nn::ForgettingGate: the data-dependent forget gate of the Forgetting Transformer.
#pragma once

#include <torch/arg.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

#include <optional>
#include <ostream>

namespace posenc {
namespace nn {

/// Options for ForgettingGate (Python: posenc.nn.ForgettingGate).
struct ForgettingGateOptions {
  ForgettingGateOptions(int64_t d_model, int64_t num_heads)
      : d_model_(d_model), num_heads_(num_heads) {}
  /// Width of the token features x; > 0.
  TORCH_ARG(int64_t, d_model);
  /// Number of attention heads H (one gate per head and token); > 0.
  TORCH_ARG(int64_t, num_heads);
  /// Standard deviation of the normal init of proj.weight (FoX's initializer_range); >= 0.
  /// proj.bias starts at 0 (FoX's "full" data-dependent gate).
  TORCH_ARG(double, init_std) = 0.02;
};

/// Forgetting gate (Lin et al. 2025, "Forgetting Transformer", §2): f_t = sigmoid(w_f^T x_t +
/// b_f) per head, D_ij = sum_{j < s <= i} log f_s for j <= i, -inf after, added to q k^T.
/// Submodule `proj` = Linear(d_model -> H) with bias (state_dict keys "proj.weight",
/// "proj.bias"). log_fgate(x) -> (B, H, L) float32 = log sigmoid(proj(x)) (in fp32 as FoX);
/// forward(x) -> (B, H, L, L) in x's dtype = posenc::ops::forgetting_gate_bias(log_fgate(x), L)
/// (self-attention over the tokens x). For a KV cache, keep log_fgate of the cached tokens
/// and call the op with q_offset. Errors: d_model or num_heads <= 0, init_std < 0 or not finite
/// at construction (c10::ValueError); x not (B, L, d_model) (c10::Error).
class ForgettingGateImpl : public torch::nn::Cloneable<ForgettingGateImpl> {
 public:
  explicit ForgettingGateImpl(const ForgettingGateOptions& options_);

  /// Validates the options and registers `proj`.
  void reset() override;

  /// Prints e.g. `posenc::nn::ForgettingGate(d_model=64, num_heads=4, init_std=0.02)`.
  void pretty_print(std::ostream& stream) const override;

  /// x (B, L, d_model) -> log sigmoid(proj(x)) as (B, H, L) float32.
  torch::Tensor log_fgate(const torch::Tensor& x);

  /// x (B, L, d_model) -> the bias (B, H, L, L) in x's dtype (future keys -inf).
  torch::Tensor forward(const torch::Tensor& x);

  /// Fused forgetting attention without the (Lq, Lk) bias: posenc::ops::relative_attention
  /// with log_fgate = log_fgate(x) and causal = true (the numbers of SDPA with forward(x) as
  /// attn_mask). x (B, Lk, d_model): the key tokens; q (B, H, Lq, D), k (B, H_kv, Lk, D), v
  /// (B, H_kv, Lk, Dv); key_padding_mask (B, Lk) bool, true = padding; query i at q_offset + i,
  /// key j at k_offset + j (every query at a key position); scale default 1/sqrt(D).
  /// -> (B, H, Lq, Dv) in q's dtype. Errors: those of log_fgate and relative_attention.
  torch::Tensor attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                          const torch::Tensor& x,
                          const std::optional<torch::Tensor>& key_padding_mask = std::nullopt,
                          int64_t q_offset = 0, int64_t k_offset = 0,
                          std::optional<double> scale = std::nullopt);

  /// The options the module was built with.
  ForgettingGateOptions options;
  /// The gate projection; state_dict keys "proj.weight" (H, d_model), "proj.bias" (H,).
  torch::nn::Linear proj{nullptr};
};

/// ModuleHolder for ForgettingGateImpl.
TORCH_MODULE(ForgettingGate);

}  // namespace nn
}  // namespace posenc
