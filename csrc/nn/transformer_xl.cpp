#include "posenc/nn/transformer_xl.h"

#include <torch/nn/init.h>

#include <algorithm>
#include <cmath>

#include "nn/check.h"
#include "posenc/ops.h"

namespace posenc {
namespace nn {

namespace {
constexpr const char* kName = "TransformerXLRelativeScore";
}

TransformerXLRelativeScoreImpl::TransformerXLRelativeScoreImpl(
    const TransformerXLRelativeScoreOptions& options_)
    : options(options_) {
  reset();
}

void TransformerXLRelativeScoreImpl::reset() {
  const auto& o = options;
  POSENC_CHECK_OPTION(o.d_model() > 0 && o.d_model() % 2 == 0, kName, "d_model",
                      "must be even and > 0 (sin/cos pairs)", o.d_model());
  POSENC_CHECK_OPTION(o.num_heads() > 0, kName, "num_heads", "must be > 0", o.num_heads());
  POSENC_CHECK_OPTION(o.head_dim() > 0, kName, "head_dim", "must be > 0", o.head_dim());
  POSENC_CHECK_OPTION(o.base() > 0, kName, "base", "must be > 0", o.base());
  u = register_parameter("u", torch::empty({o.num_heads(), o.head_dim()}));
  v = register_parameter("v", torch::empty({o.num_heads(), o.head_dim()}));
  torch::nn::init::normal_(u, 0.0, 0.02);
  torch::nn::init::normal_(v, 0.0, 0.02);
  r_proj = register_module(
      "r_proj", torch::nn::Linear(
                    torch::nn::LinearOptions(o.d_model(), o.num_heads() * o.head_dim()).bias(false)));
}

void TransformerXLRelativeScoreImpl::pretty_print(std::ostream& stream) const {
  stream << "posenc::nn::TransformerXLRelativeScore(d_model=" << options.d_model()
         << ", num_heads=" << options.num_heads() << ", head_dim=" << options.head_dim()
         << ", base=" << detail::fmt(options.base()) << ")";
}

static void check_q(const torch::Tensor& q, const TransformerXLRelativeScoreOptions& o) {
  POSENC_CHECK_INPUT(
      q.defined() && q.dim() == 4 && q.size(1) == o.num_heads() && q.size(3) == o.head_dim(),
      kName, "q", c10::str("must be a 4-D tensor (batch, ", o.num_heads(), ", q_len, ", o.head_dim(), ")"),
      q.defined() ? c10::str("shape ", q.sizes()) : std::string("an undefined tensor"));
  // An integer q would be promoted by q + v and give float scores without complaint.
  const auto t = q.scalar_type();
  POSENC_CHECK_INPUT(t == at::kHalf || t == at::kBFloat16 || t == at::kFloat || t == at::kDouble,
                     kName, "q",
                     "must have a floating dtype (float16, bfloat16, float32 or float64)",
                     "dtype ", q.scalar_type());
}

// W_R R as the op's rel_emb (H, 2c + 1, D) in `dtype`, R at distances -c .. c with
// c = k_len - 1 (with q_offset = mem_len the distances q_pos - k_pos span [-(q_len - 1),
// k_len - 1]; the op indexes row c + distance).
static torch::Tensor projected_rel_emb(TransformerXLRelativeScoreImpl& m, int64_t k_len,
                                       at::ScalarType dtype, const torch::Device& device) {
  const int64_t h = m.options.num_heads(), d = m.options.head_dim();
  const int64_t c = std::max<int64_t>(k_len - 1, 0);
  const int64_t r = 2 * c + 1;
  auto table = ops::sinusoidal_table(r, m.options.d_model(), m.options.base(), -c,
                                     /*interleaved=*/true, m.r_proj->weight.scalar_type(), device);
  return m.r_proj->forward(table).view({r, h, d}).permute({1, 0, 2}).to(dtype);
}

torch::Tensor TransformerXLRelativeScoreImpl::forward(const torch::Tensor& q, int64_t mem_len,
                                                      bool causal) {
  check_q(q, options);
  POSENC_CHECK_INPUT(mem_len >= 0, kName, "mem_len", "must be >= 0", mem_len);
  const int64_t k_len = mem_len + q.size(2);
  auto qv = q + v.view({1, options.num_heads(), 1, options.head_dim()});
  // The op wants one dtype: follow q + v's (type promotion of the input and the parameters).
  auto rel_emb = projected_rel_emb(*this, k_len, qv.scalar_type(), q.device());
  return ops::rel_pos_scores(qv, rel_emb, /*q_offset=*/mem_len, /*k_offset=*/0, k_len,
                             /*max_distance=*/std::nullopt, causal);
}

torch::Tensor TransformerXLRelativeScoreImpl::attention(
    const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v_in, int64_t mem_len,
    const std::optional<torch::Tensor>& key_padding_mask, std::optional<double> scale,
    bool causal) {
  check_q(q, options);
  POSENC_CHECK_INPUT(mem_len >= 0, kName, "mem_len", "must be >= 0", mem_len);
  POSENC_CHECK_INPUT(k.defined() && k.dim() == 4 && k.size(2) == mem_len + q.size(2), kName, "k",
                     c10::str("must be a 4-D tensor (batch, kv_heads, mem_len + q_len = ",
                              mem_len + q.size(2), ", head_dim)"),
                     k.defined() ? c10::str("shape ", k.sizes()) : std::string("an undefined tensor"));
  const int64_t h = options.num_heads(), d = options.head_dim();
  const auto dt = q.scalar_type();
  // The op scales only q.k: the position term gets the same factor through rel_emb.
  const double s = scale.value_or(1.0 / std::sqrt(static_cast<double>(d)));
  auto rel_emb = projected_rel_emb(*this, k.size(2), dt, q.device()) * s;
  auto qu = q + u.to(dt).view({1, h, 1, d});
  auto qv = q + v.to(dt).view({1, h, 1, d});
  const auto o = ops::RelativeAttentionOptions()
                     .rel_emb(rel_emb)
                     .q_rel(qv)
                     .causal(causal)
                     .key_padding_mask(key_padding_mask)
                     .scale(s)
                     .q_offset(mem_len);
  return std::get<0>(ops::relative_attention(qu, k, v_in, o));
}

torch::Tensor TransformerXLRelativeScoreImpl::content_query(const torch::Tensor& q) {
  check_q(q, options);
  return q + u.view({1, options.num_heads(), 1, options.head_dim()});
}

}  // namespace nn
}  // namespace posenc
