#include "posenc/nn/learned.h"

#include <torch/nn/functional/dropout.h>
#include <torch/nn/init.h>

#include <algorithm>
#include <limits>

#include "nn/check.h"

namespace posenc {
namespace nn {

namespace {
constexpr const char* kName = "LearnedPositionalEmbedding";
}

LearnedPositionalEmbeddingImpl::LearnedPositionalEmbeddingImpl(
    const LearnedPositionalEmbeddingOptions& options_)
    : options(options_) {
  reset();
}

void LearnedPositionalEmbeddingImpl::reset() {
  POSENC_CHECK_OPTION(options.max_len() > 0, kName, "max_len", "must be > 0", options.max_len());
  POSENC_CHECK_OPTION(options.dim() > 0, kName, "dim", "must be > 0", options.dim());
  POSENC_CHECK_OPTION(options.dropout() >= 0 && options.dropout() < 1, kName, "dropout",
                      "must be in [0, 1)", options.dropout());
  weight = register_parameter("weight", torch::empty({options.max_len(), options.dim()}));
  torch::nn::init::normal_(weight, 0.0, 0.02);
}

void LearnedPositionalEmbeddingImpl::pretty_print(std::ostream& stream) const {
  stream << "posenc::nn::LearnedPositionalEmbedding(max_len=" << options.max_len()
         << ", dim=" << options.dim() << ", dropout=" << detail::fmt(options.dropout()) << ")";
}

torch::Tensor LearnedPositionalEmbeddingImpl::forward(const torch::Tensor& x, int64_t offset) {
  POSENC_CHECK_INPUT(x.defined() && x.dim() == 3 && x.size(-1) == options.dim(), kName, "x",
                     c10::str("must be a 3-D tensor (batch, seq, ", options.dim(), ")"),
                     x.defined() ? c10::str(x.sizes()) : std::string("an undefined tensor"));
  POSENC_CHECK_INPUT(offset >= 0, kName, "offset", "must be >= 0", offset);
  const int64_t seq = x.size(1);
  // A learned table cannot extrapolate: say which position fell off, before any work.
  // Compared as offset > max_len - seq (both >= 0): offset + seq may overflow for huge offsets,
  // and so may the last position, which is then printed as a sum.
  TORCH_CHECK(offset <= options.max_len() - seq, "posenc.", kName, ": position ",
              offset <= std::numeric_limits<int64_t>::max() - std::max<int64_t>(seq - 1, 0)
                  ? c10::str(offset + seq - 1)
                  : c10::str(offset, " + ", seq - 1),
              " is past the table of ", options.max_len(), " positions (max_len)");
  return torch::nn::functional::detail::dropout(x + weight.narrow(0, offset, seq),
                                                options.dropout(), is_training(),
                                                /*inplace=*/false);
}

}  // namespace nn
}  // namespace posenc
