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

torch::Tensor ALiBiImpl::attention(const torch::Tensor& q, const torch::Tensor& k,
                                   const torch::Tensor& v,
                                   const std::optional<torch::Tensor>& key_padding_mask,
                                   int64_t q_offset, int64_t k_offset, std::optional<double> scale) {
  const auto o = ops::RelativeAttentionOptions()
                     .slopes(slopes)
                     .causal(options.causal())
                     .key_padding_mask(key_padding_mask)
                     .scale(scale)
                     .q_offset(q_offset)
                     .k_offset(k_offset);
  return std::get<0>(ops::relative_attention(q, k, v, o));
}

}  // namespace nn
}  // namespace posenc
