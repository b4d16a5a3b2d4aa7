// posenc::nn::SinusoidalPositionalEncoding: adds the fixed sinusoidal table to embeddings.
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

/// Options for SinusoidalPositionalEncoding (Python: posenc.nn.SinusoidalPositionalEncoding,
/// same argument names and defaults).
struct SinusoidalPositionalEncodingOptions {
  /* implicit */ SinusoidalPositionalEncodingOptions(int64_t dim) : dim_(dim) {}
  /// Embedding size (last dimension of the input); even and > 0.
  TORCH_ARG(int64_t, dim);
  /// Frequency base (10000 in the paper); > 0.
  TORCH_ARG(double, base) = 10000.0;
  /// Dropout probability applied after the addition, in [0, 1).
  TORCH_ARG(double, dropout) = 0.0;
  /// true: the paper's interleaved [sin, cos, sin, cos, ...] layout; false: tensor2tensor's
  /// [all sines, all cosines] (see posenc::ops::sinusoidal_table).
  TORCH_ARG(bool, interleaved) = true;
};

/// Sinusoidal absolute positional encoding (Vaswani et al. 2017, §3.5):
///   forward(x, offset) = dropout(x + sinusoidal_table(S, dim, base, offset, interleaved))
/// x: (B, S, dim), float16/bfloat16/float32/float64; the table is computed in fp64 by
/// posenc::ops::sinusoidal_table and rounded once to x's dtype, on x's device. Row s encodes
/// absolute position offset + s (offset > 0 when decoding with a cache). No parameters, no
/// buffers (state_dict is empty).
/// Errors (c10::ValueError at construction, c10::Error in forward), naming the module and
/// the option or argument: dim odd or <= 0, base <= 0, dropout outside [0, 1); x not 3-D or
/// x.size(-1) != dim.
class SinusoidalPositionalEncodingImpl
    : public torch::nn::Cloneable<SinusoidalPositionalEncodingImpl> {
 public:
  explicit SinusoidalPositionalEncodingImpl(int64_t dim)
      : SinusoidalPositionalEncodingImpl(SinusoidalPositionalEncodingOptions(dim)) {}
  explicit SinusoidalPositionalEncodingImpl(const SinusoidalPositionalEncodingOptions& options_);

  /// Validates the options; there is nothing to register.
  void reset() override;

  /// Prints e.g. `posenc::nn::SinusoidalPositionalEncoding(dim=512, base=10000, ...)`.
  void pretty_print(std::ostream& stream) const override;

  /// x: (B, S, dim) -> (B, S, dim) in x's dtype.
  torch::Tensor forward(const torch::Tensor& x, int64_t offset = 0);

  /// The options the module was built with.
  SinusoidalPositionalEncodingOptions options;

 protected:
  FORWARD_HAS_DEFAULT_ARGS({1, torch::nn::AnyValue(int64_t{0})})
};

/// ModuleHolder for SinusoidalPositionalEncodingImpl (see torch::nn::ModuleHolder).
TORCH_MODULE(SinusoidalPositionalEncoding);

}  // namespace nn
}  // namespace posenc
