// posenc::nn::NoPE: no position encoding, as an explicit choice.
#pragma once

#include <torch/arg.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

#include <optional>
#include <ostream>

namespace posenc {
namespace nn {

/// Options for NoPE (Python: posenc.nn.NoPE).
struct NoPEOptions {
  /// attention(): mask keys after the query (a decoder; Kazemnejad et al. 2023 study NoPE in
  /// decoders, where the causal mask is the only position signal).
  TORCH_ARG(bool, causal) = true;
};

/// No position encoding (NoPE; Kazemnejad et al. 2023, "The Impact of Positional Encoding on
/// Length Generalization in Transformers"): the slot of a position module that adds nothing.
/// forward(x) returns x unchanged (where an absolute encoding would be added); attention(q, k,
/// v, ...) is posenc::ops::relative_attention without a position term (the causal mask only
/// when options.causal()), the numbers of SDPA with is_causal. No parameters or buffers.
class NoPEImpl : public torch::nn::Cloneable<NoPEImpl> {
 public:
  NoPEImpl() : NoPEImpl(NoPEOptions()) {}
  explicit NoPEImpl(const NoPEOptions& options_);

  void reset() override {}

  /// Prints `posenc::nn::NoPE(causal=true)`.
  void pretty_print(std::ostream& stream) const override;

  /// x unchanged (any shape).
  torch::Tensor forward(const torch::Tensor& x);

  /// softmax(scale q k^T + mask) v: q (B, H, Lq, D), k (B, H_kv, Lk, D), v (B, H_kv, Lk, Dv);
  /// key_padding_mask (B, Lk) bool, true = padding; offsets place queries and keys for the
  /// causal mask (KV-cache decoding); scale default 1/sqrt(D). Errors: relative_attention's.
  torch::Tensor attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                          const std::optional<torch::Tensor>& key_padding_mask = std::nullopt,
                          int64_t q_offset = 0, int64_t k_offset = 0,
                          std::optional<double> scale = std::nullopt);

  /// The options the module was built with.
  NoPEOptions options;
};

/// ModuleHolder for NoPEImpl.
TORCH_MODULE(NoPE);

}  // namespace nn
}  // namespace posenc
