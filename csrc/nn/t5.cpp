#include "posenc/nn/t5.h"

#include <torch/nn/init.h>

#include "nn/check.h"
#include "posenc/ops.h"

namespace posenc {
namespace nn {

namespace {
constexpr const char* kName = "T5RelativeBias";
}

T5RelativeBiasImpl::T5RelativeBiasImpl(const T5RelativeBiasOptions& options_)
    : options(options_) {
  reset();
}

void T5RelativeBiasImpl::reset() {
  const auto& o = options;
  POSENC_CHECK_OPTION(o.num_heads() > 0, kName, "num_heads", "must be > 0", o.num_heads());
  // Each direction needs an exact bucket (distance 0 / 1) besides its log-spaced ones.
  if (o.bidirectional()) {
    POSENC_CHECK_OPTION(o.num_buckets() >= 4 && o.num_buckets() % 2 == 0, kName, "num_buckets",
                        "must be even and >= 4 when bidirectional (half the buckets per direction)",
                        o.num_buckets());
  } else {
    POSENC_CHECK_OPTION(o.num_buckets() >= 2, kName, "num_buckets", "must be >= 2 when causal",
                        o.num_buckets());
  }
  // Half of a direction's buckets are exact distances; the log-spaced rest spans
  // [max_exact, max_distance), which must not be empty.
  const int64_t max_exact = (o.bidirectional() ? o.num_buckets() / 2 : o.num_buckets()) / 2;
  POSENC_CHECK_OPTION(o.max_distance() > max_exact, kName, "max_distance",
                      c10::str("must be > the number of exact buckets (", max_exact, ")"),
                      o.max_distance());
  weight = register_parameter("weight", torch::empty({o.num_buckets(), o.num_heads()}));
  torch::nn::init::normal_(weight, 0.0, 0.02);
}

void T5RelativeBiasImpl::pretty_print(std::ostream& stream) const {
  stream << "posenc::nn::T5RelativeBias(num_heads=" << options.num_heads()
         << ", num_buckets=" << options.num_buckets() << ", max_distance=" << options.max_distance()
         << ", bidirectional=" << detail::fmt(options.bidirectional()) << ")";
}

torch::Tensor T5RelativeBiasImpl::forward(int64_t q_len, int64_t k_len, int64_t q_offset,
                                          int64_t k_offset) {
  return ops::t5_bias(weight, q_len, k_len, q_offset, k_offset, options.bidirectional(),
                      options.max_distance());
}

torch::Tensor T5RelativeBiasImpl::attention(const torch::Tensor& q, const torch::Tensor& k,
                                            const torch::Tensor& v,
                                            const std::optional<torch::Tensor>& key_padding_mask,
                                            int64_t q_offset, int64_t k_offset, std::optional<double> scale) {
  // A decoder's buckets are one-sided: it attends causally.
  const auto o = ops::RelativeAttentionOptions()
                     .table(weight)
                     .causal(!options.bidirectional())
                     .bidirectional(options.bidirectional())
                     .max_distance(options.max_distance())
                     .key_padding_mask(key_padding_mask)
                     .scale(scale)
                     .q_offset(q_offset)
                     .k_offset(k_offset);
  return std::get<0>(ops::relative_attention(q, k, v, o));
}

}  // namespace nn
}  // namespace posenc
