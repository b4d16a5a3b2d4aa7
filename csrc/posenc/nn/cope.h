// posenc::nn::CoPE: contextual position encoding with a learned position table.
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

/// Options for CoPE (Python: posenc.nn.CoPE).
struct CoPEOptions {
  CoPEOptions(int64_t npos_max, int64_t head_dim) : npos_max_(npos_max), head_dim_(head_dim) {}
  /// Rows of the position table; positions are clamped to npos_max - 1. > 0.
  TORCH_ARG(int64_t, npos_max);
  /// Head dimension D of q and k. > 0.
  TORCH_ARG(int64_t, head_dim);
  /// Scale of the gate logits q.k; nullopt: 1/sqrt(head_dim) (the paper's code). Finite.
  TORCH_ARG(std::optional<double>, scale) = std::nullopt;
};

/// CoPE (Golovneva et al. 2024, §3, eqs. 3-5). Parameter `pos_emb` (npos_max, head_dim),
/// float32, initialised to zeros (the paper's code), shared by the heads. forward(q, k)
/// returns posenc::ops::cope_scores(q, k, pos_emb, scale, q_offset, k_offset): (B, H, Lq, Lk)
/// to add to the attention logits, 0 for keys after the query (a causal mask must remove
/// them); pos_emb is cast to q's dtype. Gradients flow to q, k and pos_emb.
/// Errors: npos_max <= 0, head_dim <= 0, a non-finite scale at construction
/// (c10::ValueError); in forward, those of cope_scores (q's head_dim must be head_dim).
class CoPEImpl : public torch::nn::Cloneable<CoPEImpl> {
 public:
  CoPEImpl(int64_t npos_max, int64_t head_dim) : CoPEImpl(CoPEOptions(npos_max, head_dim)) {}
  explicit CoPEImpl(const CoPEOptions& options_);

  /// Validates the options and registers `pos_emb`.
  void reset() override;

  /// Prints e.g. `posenc::nn::CoPE(npos_max=64, head_dim=32)`.
  void pretty_print(std::ostream& stream) const override;

  /// q (B, H, Lq, head_dim), k (B, H, Lk, head_dim) -> (B, H, Lq, Lk) in q's dtype.
  torch::Tensor forward(const torch::Tensor& q, const torch::Tensor& k, int64_t q_offset = 0,
                        int64_t k_offset = 0);

  /// Causal attention with CoPE, as the paper's SelfAttn: softmax(scale q k^T + forward(q, k)
  /// + causal mask) v by at::scaled_dot_product_attention with the masked term as attn_mask
  /// (the same scale for the logits and the gates). v (B, H, Lk, Dv) -> (B, H, Lq, Dv). A
  /// query that sees no key (k_offset > q_offset + i) gets NaN, as SDPA gives for a fully
  /// masked row. Errors: those of forward and of SDPA.
  torch::Tensor attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                          int64_t q_offset = 0, int64_t k_offset = 0);

  /// The options the module was built with.
  CoPEOptions options;
  /// Position embeddings e (npos_max, head_dim); state_dict key "pos_emb".
  torch::Tensor pos_emb;

 protected:
  FORWARD_HAS_DEFAULT_ARGS({2, torch::nn::AnyValue(int64_t{0})},
                           {3, torch::nn::AnyValue(int64_t{0})})
};

/// ModuleHolder for CoPEImpl.
TORCH_MODULE(CoPE);

}  // namespace nn
}  // namespace posenc
