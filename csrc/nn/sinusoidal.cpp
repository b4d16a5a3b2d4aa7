#include "posenc/nn/sinusoidal.h"

#include <torch/nn/functional/dropout.h>

#include "nn/check.h"
#include "posenc/ops.h"

namespace posenc {
namespace nn {

namespace {
constexpr const char* kName = "SinusoidalPositionalEncoding";
}

SinusoidalPositionalEncodingImpl::SinusoidalPositionalEncodingImpl(
    const SinusoidalPositionalEncodingOptions& options_)
    : options(options_) {
  reset();
}

void SinusoidalPositionalEncodingImpl::reset() {
  POSENC_CHECK_OPTION(options.dim() > 0 && options.dim() % 2 == 0, kName, "dim",
                      "must be even and > 0 (sin/cos pairs)", options.dim());
  POSENC_CHECK_OPTION(options.base() > 0, kName, "base", "must be > 0", options.base());
  POSENC_CHECK_OPTION(options.dropout() >= 0 && options.dropout() < 1, kName, "dropout",
                      "must be in [0, 1)", options.dropout());
}

void SinusoidalPositionalEncodingImpl::pretty_print(std::ostream& stream) const {
  stream << "posenc::nn::SinusoidalPositionalEncoding(dim=" << options.dim()
         << ", base=" << detail::fmt(options.base()) << ", dropout=" << detail::fmt(options.dropout())
         << ", interleaved=" << detail::fmt(options.interleaved()) << ")";
}

torch::Tensor SinusoidalPositionalEncodingImpl::forward(const torch::Tensor& x, int64_t offset) {
  POSENC_CHECK_INPUT(x.defined() && x.dim() == 3 && x.size(-1) == options.dim(), kName, "x",
                     c10::str("must be a 3-D tensor (batch, seq, ", options.dim(), ")"),
                     x.defined() ? c10::str(x.sizes()) : std::string("an undefined tensor"));
  auto table = ops::sinusoidal_table(x.size(1), options.dim(), options.base(), offset,
                                     options.interleaved(), x.scalar_type(), x.device());
  return torch::nn::functional::detail::dropout(x + table, options.dropout(), is_training(),
                                                /*inplace=*/false);
}

}  // namespace nn
}  // namespace posenc
