#include "posenc/nn/forgetting_gate.h"

#include <cmath>
#include <string>

#include "nn/check.h"
#include "posenc/ops.h"

namespace posenc {
namespace nn {

namespace {
constexpr const char* kName = "ForgettingGate";
}

ForgettingGateImpl::ForgettingGateImpl(const ForgettingGateOptions& options_) : options(options_) {
  reset();
}

void ForgettingGateImpl::reset() {
  const auto& o = options;
  POSENC_CHECK_OPTION(o.d_model() > 0, kName, "d_model", "must be > 0", o.d_model());
  POSENC_CHECK_OPTION(o.num_heads() > 0, kName, "num_heads", "must be > 0", o.num_heads());
  POSENC_CHECK_OPTION(std::isfinite(o.init_std()) && o.init_std() >= 0, kName, "init_std",
                      "must be finite and >= 0", o.init_std());
  proj = register_module("proj", torch::nn::Linear(torch::nn::LinearOptions(o.d_model(),
                                                                            o.num_heads())));
  torch::NoGradGuard no_grad;
  proj->weight.normal_(0.0, o.init_std());
  proj->bias.zero_();
}

void ForgettingGateImpl::pretty_print(std::ostream& stream) const {
  stream << "posenc::nn::ForgettingGate(d_model=" << options.d_model()
         << ", num_heads=" << options.num_heads() << ", init_std=" << detail::fmt(options.init_std())
         << ")";
}

torch::Tensor ForgettingGateImpl::log_fgate(const torch::Tensor& x) {
  POSENC_CHECK_INPUT(x.defined() && x.dim() == 3 && x.size(2) == options.d_model(), kName, "x",
                     c10::str("must be a 3-D tensor of shape (batch, seq, d_model = ",
                              options.d_model(), ")"),
                     x.defined() ? c10::str("shape ", x.sizes()) : std::string("an undefined tensor"));
  // In fp32 as FoX does: log sigmoid near 0 (gates near 1) needs more than half precision.
  return torch::log_sigmoid(proj->forward(x).to(torch::kFloat)).transpose(1, 2);
}

torch::Tensor ForgettingGateImpl::forward(const torch::Tensor& x) {
  const auto l = log_fgate(x);
  return ops::forgetting_gate_bias(l, l.size(2)).to(x.scalar_type());
}

torch::Tensor ForgettingGateImpl::attention(const torch::Tensor& q, const torch::Tensor& k,
                                            const torch::Tensor& v, const torch::Tensor& x,
                                            const std::optional<torch::Tensor>& key_padding_mask,
                                            int64_t q_offset, int64_t k_offset,
                                            std::optional<double> scale) {
  const auto o = ops::RelativeAttentionOptions()
                     .log_fgate(log_fgate(x))
                     .causal(true)
                     .key_padding_mask(key_padding_mask)
                     .scale(scale)
                     .q_offset(q_offset)
                     .k_offset(k_offset);
  return std::get<0>(ops::relative_attention(q, k, v, o));
}

}  // namespace nn
}  // namespace posenc
