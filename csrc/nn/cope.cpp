#include "posenc/nn/cope.h"

#include <ATen/ATen.h>

#include <cmath>
#include <limits>

#include "nn/check.h"
#include "posenc/ops.h"

namespace posenc {
namespace nn {

namespace {
constexpr const char* kName = "CoPE";
}

CoPEImpl::CoPEImpl(const CoPEOptions& options_) : options(options_) { reset(); }

void CoPEImpl::reset() {
  POSENC_CHECK_OPTION(options.npos_max() > 0, kName, "npos_max", "must be > 0",
                      options.npos_max());
  POSENC_CHECK_OPTION(options.head_dim() > 0, kName, "head_dim", "must be > 0",
                      options.head_dim());
  if (options.scale().has_value()) {
    POSENC_CHECK_OPTION(std::isfinite(*options.scale()), kName, "scale", "must be finite",
                        *options.scale());
  }
  // The paper's code: nn.Parameter(torch.zeros(1, head_dim, npos_max)), here (npos_max, head_dim).
  pos_emb = register_parameter("pos_emb", torch::zeros({options.npos_max(), options.head_dim()}));
}

void CoPEImpl::pretty_print(std::ostream& stream) const {
  stream << "posenc::nn::CoPE(npos_max=" << options.npos_max()
         << ", head_dim=" << options.head_dim();
  if (options.scale().has_value()) stream << ", scale=" << detail::fmt(*options.scale());
  stream << ")";
}

torch::Tensor CoPEImpl::forward(const torch::Tensor& q, const torch::Tensor& k, int64_t q_offset,
                                int64_t k_offset) {
  const auto e = q.defined() ? pos_emb.to(q.scalar_type()) : pos_emb;
  return ops::cope_scores(q, k, e, options.scale(), q_offset, k_offset);
}

torch::Tensor CoPEImpl::attention(const torch::Tensor& q, const torch::Tensor& k,
                                  const torch::Tensor& v, int64_t q_offset, int64_t k_offset) {
  auto term = forward(q, k, q_offset, k_offset);
  auto opts = torch::TensorOptions().dtype(torch::kLong).device(q.device());
  auto qp = torch::arange(q.size(2), opts) + q_offset;
  auto kp = torch::arange(k.size(2), opts) + k_offset;
  auto future = kp.unsqueeze(0) > qp.unsqueeze(1);
  auto mask = term.masked_fill(future, -std::numeric_limits<double>::infinity());
  return at::scaled_dot_product_attention(q, k, v, mask, 0.0, false, options.scale());
}

}  // namespace nn
}  // namespace posenc
