#include "posenc/nn/nope.h"

#include "nn/check.h"
#include "posenc/ops.h"

namespace posenc {
namespace nn {

NoPEImpl::NoPEImpl(const NoPEOptions& options_) : options(options_) { reset(); }

void NoPEImpl::pretty_print(std::ostream& stream) const {
  stream << "posenc::nn::NoPE(causal=" << detail::fmt(options.causal()) << ")";
}

torch::Tensor NoPEImpl::forward(const torch::Tensor& x) { return x; }

torch::Tensor NoPEImpl::attention(const torch::Tensor& q, const torch::Tensor& k,
                                  const torch::Tensor& v,
                                  const std::optional<torch::Tensor>& key_padding_mask,
                                  int64_t q_offset, int64_t k_offset, std::optional<double> scale) {
  const auto o = ops::RelativeAttentionOptions()
                     .causal(options.causal())
                     .key_padding_mask(key_padding_mask)
                     .scale(scale)
                     .q_offset(q_offset)
                     .k_offset(k_offset);
  return std::get<0>(ops::relative_attention(q, k, v, o));
}

}  // namespace nn
}  // namespace posenc
