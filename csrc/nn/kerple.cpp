#include "posenc/nn/kerple.h"

#include "nn/check.h"
#include "posenc/ops.h"

namespace posenc {
namespace nn {

namespace {
constexpr const char* kName = "KERPLEBias";
}

KERPLEBiasImpl::KERPLEBiasImpl(const KERPLEBiasOptions& options_) : options(options_) {
  reset();
}

void KERPLEBiasImpl::reset() {
  const int64_t h = options.num_heads();
  POSENC_CHECK_OPTION(h > 0, kName, "num_heads", "must be > 0", h);
  POSENC_CHECK_OPTION(options.kind() == "log" || options.kind() == "power", kName, "kind",
                      "must be \"log\" or \"power\"", "\"", options.kind(), "\"");
  POSENC_CHECK_OPTION(options.eps() > 0, kName, "eps", "must be > 0", options.eps());
  // forward clamps r2 of the power kernel to [eps, 2]: eps > 2 leaves no valid value.
  POSENC_CHECK_OPTION(options.kind() != "power" || options.eps() <= 2, kName, "eps",
                      "must be <= 2 for kind \"power\" (r2 is clamped to [eps, 2])",
                      options.eps());
  // The paper's code: r1 ~ U(0, 2], r2 ~ U(0, 1]. 1 - U[0, 1) keeps zero out of the range.
  torch::NoGradGuard no_grad;
  r1 = register_parameter("r1", (1 - torch::rand({h})) * 2);
  r2 = register_parameter("r2", 1 - torch::rand({h}));
}

void KERPLEBiasImpl::pretty_print(std::ostream& stream) const {
  stream << "posenc::nn::KERPLEBias(num_heads=" << options.num_heads() << ", kind=" << options.kind()
         << ", causal=" << detail::fmt(options.causal()) << ", eps=" << detail::fmt(options.eps())
         << ")";
}

std::pair<torch::Tensor, torch::Tensor> KERPLEBiasImpl::clamped_params() const {
  const double eps = options.eps();
  // The power kernel -r1 * d^r2 is conditionally positive definite only for 0 < r2 <= 2.
  return {r1.clamp_min(eps), options.kind() == "power" ? r2.clamp(eps, 2.0) : r2.clamp_min(eps)};
}

torch::Tensor KERPLEBiasImpl::forward(int64_t q_len, int64_t k_len, int64_t q_offset,
                                      int64_t k_offset) {
  auto [a, b] = clamped_params();
  return ops::kerple_bias(a, b, q_len, k_len, q_offset, k_offset, options.kind(),
                          options.causal());
}

torch::Tensor KERPLEBiasImpl::attention(const torch::Tensor& q, const torch::Tensor& k,
                                        const torch::Tensor& v,
                                        const std::optional<torch::Tensor>& key_padding_mask,
                                        int64_t q_offset, int64_t k_offset, std::optional<double> scale) {
  auto [a, b] = clamped_params();
  const auto o = ops::RelativeAttentionOptions()
                     .r1(a)
                     .r2(b)
                     .kerple_kind(options.kind())
                     .causal(options.causal())
                     .key_padding_mask(key_padding_mask)
                     .scale(scale)
                     .q_offset(q_offset)
                     .k_offset(k_offset);
  return std::get<0>(ops::relative_attention(q, k, v, o));
}

}  // namespace nn
}  // namespace posenc
