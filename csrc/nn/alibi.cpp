#include "posenc/nn/alibi.h"

#include "nn/check.h"
#include "posenc/ops.h"

namespace posenc {
namespace nn {

ALiBiImpl::ALiBiImpl(const ALiBiOptions& options_) : options(options_) { reset(); }

void ALiBiImpl::reset() {
  POSENC_CHECK_OPTION(options.num_heads() > 0, "ALiBi", "num_heads", "must be > 0",
                      options.num_heads());
  slopes = register_buffer("slopes", ops::alibi_slopes(options.num_heads()));
}

void ALiBiImpl::pretty_print(std::ostream& stream) const {
  stream << "posenc::nn::ALiBi(num_heads=" << options.num_heads()
         << ", causal=" << detail::fmt(options.causal()) << ")";
}

torch::Tensor ALiBiImpl::forward(int64_t q_len, int64_t k_len, int64_t q_offset,
                                 int64_t k_offset) {
  return ops::alibi_bias(slopes, q_len, k_len, q_offset, k_offset, options.causal());
}

}  // namespace nn
}  // namespace posenc
