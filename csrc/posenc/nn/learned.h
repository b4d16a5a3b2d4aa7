// posenc::nn::LearnedPositionalEmbedding: a trained table of absolute position embeddings.
#pragma once

#include <torch/arg.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/modules/common.h>
#include <torch/nn/modules/container/any_value.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

#include <ostream>

namespace posenc {
namespace nn {

/// Options for LearnedPositionalEmbedding (Python: posenc.nn.LearnedPositionalEmbedding).
struct LearnedPositionalEmbeddingOptions {
  LearnedPositionalEmbeddingOptions(int64_t max_len, int64_t dim) : max_len_(max_len), dim_(dim) {}
  /// Number of positions in the table (rows of `weight`); > 0.
  TORCH_ARG(int64_t, max_len);
  /// Embedding size (columns of `weight`, last dimension of the input); > 0.
  TORCH_ARG(int64_t, dim);
  /// Dropout probability applied after the addition, in [0, 1).
  TORCH_ARG(double, dropout) = 0.0;
};

/// Learned absolute position embeddings (BERT, Devlin et al. 2019; GPT-2):
///   forward(x, offset) = dropout(x + weight[offset : offset + S])
/// Parameter `weight` (max_len, dim), float32, initialised N(0, 0.02) (BERT's
/// initializer_range). x: (B, S, dim), any float dtype; the sum follows type promotion.
/// Errors: a learned table cannot extrapolate, so positions offset + S - 1 >= max_len raise
/// c10::Error "posenc.LearnedPositionalEmbedding: position P is past the table of N positions
/// (max_len)" before any computation; the module stays usable. Also: offset < 0,
/// x not 3-D, x.size(-1) != dim; at construction max_len or dim <= 0, dropout outside [0, 1).
class LearnedPositionalEmbeddingImpl
    : public torch::nn::Cloneable<LearnedPositionalEmbeddingImpl> {
 public:
  LearnedPositionalEmbeddingImpl(int64_t max_len, int64_t dim)
      : LearnedPositionalEmbeddingImpl(LearnedPositionalEmbeddingOptions(max_len, dim)) {}
  explicit LearnedPositionalEmbeddingImpl(const LearnedPositionalEmbeddingOptions& options_);

  /// Validates the options and registers `weight`, initialised N(0, 0.02).
  void reset() override;

  /// Prints e.g. `posenc::nn::LearnedPositionalEmbedding(max_len=512, dim=768, dropout=0)`.
  void pretty_print(std::ostream& stream) const override;

  /// x: (B, S, dim) -> (B, S, dim).
  torch::Tensor forward(const torch::Tensor& x, int64_t offset = 0);

  /// The options the module was built with.
  LearnedPositionalEmbeddingOptions options;
  /// The table, (max_len, dim); state_dict key "weight".
  torch::Tensor weight;

 protected:
  FORWARD_HAS_DEFAULT_ARGS({1, torch::nn::AnyValue(int64_t{0})})
};

/// ModuleHolder for LearnedPositionalEmbeddingImpl.
TORCH_MODULE(LearnedPositionalEmbedding);

}  // namespace nn
}  // namespace posenc
