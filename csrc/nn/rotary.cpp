#include "posenc/nn/rotary.h"

#include <algorithm>

#include "nn/check.h"
#include "posenc/ops.h"

namespace posenc {
namespace nn {

namespace {
constexpr const char* kName = "RotaryEmbedding";
constexpr double kDefaultBase = 10000.0;
}  // namespace

RotaryEmbeddingOptions RotaryEmbeddingOptions::from_config(const RopeScalingConfig& config) {
  RotaryEmbeddingOptions o(config.head_dim);
  o.scaling(config).base(config.rope_theta);
  return o;
}

RotaryEmbeddingImpl::RotaryEmbeddingImpl(const RotaryEmbeddingOptions& options_)
    : options(options_) {
  reset();
}

int64_t RotaryEmbeddingImpl::rotary_dim() const {
  if (options.scaling().has_value()) {
    return options.rotary_dim().value_or(2 * options.scaling()->num_frequencies());
  }
  return options.rotary_dim().value_or(options.dim());
}

double RotaryEmbeddingImpl::base() const {
  return options.scaling().has_value() ? options.scaling()->rope_theta : options.base();
}

bool RotaryEmbeddingImpl::length_dependent() const {
  const auto& s = options.scaling();
  return s.has_value() && (s->type == RopeType::Dynamic || s->type == RopeType::LongRoPE);
}

torch::ScalarType RotaryEmbeddingImpl::freq_dtype() const {
  return options.precision() == "exact" ? torch::kDouble : torch::kFloat;
}

void RotaryEmbeddingImpl::reset() {
  POSENC_CHECK_OPTION(options.dim() > 0, kName, "dim", "must be > 0", options.dim());
  const auto& scaling = options.scaling();
  if (scaling.has_value()) {
    scaling->validate();  // c10::Error naming the field, as RopeConfig / rope_scaling_inv_freq
    POSENC_CHECK_OPTION(scaling->head_dim == options.dim(), kName, "scaling",
                        c10::str("must have head_dim == dim (", options.dim(), ")"),
                        "head_dim ", scaling->head_dim);
    const int64_t want = 2 * scaling->num_frequencies();
    POSENC_CHECK_OPTION(!options.rotary_dim().has_value() || *options.rotary_dim() == want, kName,
                        "rotary_dim",
                        c10::str("must equal 2 * scaling's number of frequencies (", want,
                                 ") when scaling is given (or be unset)"),
                        *options.rotary_dim());
    POSENC_CHECK_OPTION(options.base() == kDefaultBase || options.base() == scaling->rope_theta,
                        kName, "base",
                        c10::str("must be left at 10000 or equal scaling.rope_theta (",
                                 scaling->rope_theta, ") when scaling is given"),
                        options.base());
  }
  const int64_t rd = rotary_dim();
  // An odd rotary dim has a dim without a partner; refuse it here rather than at
  // the first forward.
  POSENC_CHECK_OPTION(rd > 0 && rd % 2 == 0, kName, "rotary_dim",
                      "must be even and > 0 (dims are rotated in pairs)", rd);
  POSENC_CHECK_OPTION(rd <= options.dim(), kName, "rotary_dim",
                      c10::str("must be <= dim (", options.dim(), ")"), rd);
  POSENC_CHECK_OPTION(options.base() > 1, kName, "base", "must be > 1", options.base());
  const auto& layout = options.layout();
  POSENC_CHECK_OPTION(layout == "bhsd" || layout == "bshd" || layout == "thd", kName, "layout",
                      "must be \"bhsd\", \"bshd\" or \"thd\"", "\"", layout, "\"");
  POSENC_CHECK_OPTION(options.precision() == "reference" || options.precision() == "exact", kName,
                      "precision", "must be \"reference\" or \"exact\"", "\"",
                      options.precision(), "\"");

  compute_tables(inv_freq.defined() ? inv_freq.device() : torch::Device(torch::kCPU));
}

void RotaryEmbeddingImpl::compute_tables(torch::Device device) {
  // Kept unregistered: module.to(kBFloat16) must not round the frequencies. Computed
  // (on the CPU, then copied) rather than moved, so a module on the meta device can move.
  const auto& scaling = options.scaling();
  const auto dt = freq_dtype();
  attention_factor_ = 1.0;
  long_inv_freq = torch::Tensor();
  xpos_zeta = torch::Tensor();
  cached_length_ = -1;
  if (!scaling.has_value()) {
    inv_freq = ops::rope_inv_freq(rotary_dim(), options.base(), device, dt);
    return;
  }
  auto p = compute_rope_parameters(*scaling, std::nullopt, device, dt);
  inv_freq = p.inv_freq;
  attention_factor_ = p.attention_factor;
  xpos_zeta = p.xpos_zeta;
  if (scaling->type == RopeType::LongRoPE) {
    // Only two tables exist: compute the long one once (transformers does the same).
    long_inv_freq =
        compute_rope_parameters(*scaling, *scaling->original_max_position_embeddings + 1, device,
                                dt)
            .inv_freq;
  } else if (scaling->type == RopeType::Dynamic) {
    cached_length_ = *scaling->max_position_embeddings;
  }
}

void RotaryEmbeddingImpl::pretty_print(std::ostream& stream) const {
  stream << "posenc::nn::RotaryEmbedding(dim=" << options.dim() << ", rotary_dim=" << rotary_dim()
         << ", base=" << detail::fmt(base())
         << ", interleaved=" << detail::fmt(options.interleaved()) << ", layout=" << options.layout();
  if (options.scaling().has_value()) {
    stream << ", scaling=" << rope_type_name(options.scaling()->type);
  }
  if (options.precision() != "reference") stream << ", precision=" << options.precision();
  if (options.xpos_centre() != 0) stream << ", xpos_centre=" << options.xpos_centre();
  stream << ")";
}

void RotaryEmbeddingImpl::to(torch::Device device, torch::Dtype dtype, bool non_blocking) {
  torch::nn::Module::to(device, dtype, non_blocking);
  move_tables(device, non_blocking);
}

void RotaryEmbeddingImpl::to(torch::Dtype dtype, bool non_blocking) {
  torch::nn::Module::to(dtype, non_blocking);
}

void RotaryEmbeddingImpl::to(torch::Device device, bool non_blocking) {
  torch::nn::Module::to(device, non_blocking);
  move_tables(device, non_blocking);
}

void RotaryEmbeddingImpl::move_tables(torch::Device device, bool non_blocking) {
  std::lock_guard<std::mutex> guard(lock_.m);
  if (inv_freq.defined() && inv_freq.device() == device) return;
  (void)non_blocking;  // recomputed, not copied: nothing to overlap
  compute_tables(device);
}

torch::Tensor RotaryEmbeddingImpl::frequencies(std::optional<int64_t> seq_len) {
  if (seq_len.has_value()) {
    POSENC_CHECK_INPUT(*seq_len >= 0, kName, "seq_len", "must be >= 0 (or None)", *seq_len);
  }
  const auto& scaling = options.scaling();
  if (!scaling.has_value()) return inv_freq;
  if (scaling->type == RopeType::LongRoPE) {
    const bool use_long =
        seq_len.has_value() && *seq_len > *scaling->original_max_position_embeddings;
    return use_long ? long_inv_freq : inv_freq;
  }
  if (scaling->type == RopeType::Dynamic) {
    const int64_t max_len = *scaling->max_position_embeddings;
    const int64_t total = std::max(seq_len.value_or(max_len), max_len);
    std::lock_guard<std::mutex> guard(lock_.m);
    if (total != cached_length_) {
      inv_freq = compute_rope_parameters(*scaling, total, inv_freq.device(), freq_dtype()).inv_freq;
      cached_length_ = total;
    }
    return inv_freq;
  }
  return inv_freq;
}

int64_t RotaryEmbeddingImpl::infer_seq_len(const torch::Tensor& q, const torch::Tensor& k,
                                           const std::optional<torch::Tensor>& positions,
                                           int64_t offset,
                                           const std::optional<torch::Tensor>& cu_seqlens) const {
  // Ill-typed tensors are left to the op, which raises right after with its own message.
  // Negative offsets/positions are valid for the op; they hold no length, so clamp at 0
  // (else frequencies() would reject a 'seq_len' the caller never passed).
  if (options.layout() == "thd") {
    const auto& cu = *cu_seqlens;
    const bool index = cu.scalar_type() == torch::kLong || cu.scalar_type() == torch::kInt;
    if (cu.dim() != 1 || !index || cu.numel() < 2) {
      return std::max<int64_t>(offset, 0);
    }
    return std::max<int64_t>(
        offset + (cu.slice(0, 1) - cu.slice(0, 0, -1)).max().item<int64_t>(), 0);
  }
  if (positions.has_value() && positions->defined()) {
    const auto t = positions->scalar_type();
    if ((t != torch::kLong && t != torch::kInt) || positions->numel() == 0) {
      return std::max<int64_t>(offset, 0);
    }
    return std::max<int64_t>(offset + positions->max().item<int64_t>() + 1, 0);
  }
  const int64_t sdim = options.layout() == "bhsd" ? 2 : 1;
  int64_t s = 0;
  if (q.dim() == 4) s = std::max(s, q.size(sdim));
  if (k.dim() == 4) s = std::max(s, k.size(sdim));
  return std::max<int64_t>(offset + s, 0);
}

std::tuple<torch::Tensor, torch::Tensor> RotaryEmbeddingImpl::forward(
    const torch::Tensor& q, const torch::Tensor& k, const std::optional<torch::Tensor>& positions,
    int64_t offset, const std::optional<torch::Tensor>& cu_seqlens,
    std::optional<int64_t> seq_len) {
  const int64_t d = options.dim();
  POSENC_CHECK_INPUT(q.defined() && q.dim() >= 1 && q.size(-1) == d, kName, "q",
                     c10::str("must have last dimension dim (", d, ")"),
                     q.defined() ? c10::str("shape ", q.sizes()) : std::string("undefined"));
  POSENC_CHECK_INPUT(k.defined() && k.dim() >= 1 && k.size(-1) == d, kName, "k",
                     c10::str("must have last dimension dim (", d, ")"),
                     k.defined() ? c10::str("shape ", k.sizes()) : std::string("undefined"));
  // q and k rotate with one set of tables and are multiplied together next: a mixed pair
  // would silently return two dtypes (or fail on inv_freq's device).
  POSENC_CHECK_INPUT(k.scalar_type() == q.scalar_type(), kName, "k",
                     c10::str("must have the dtype of 'q' (", q.scalar_type(), ")"), "dtype ",
                     k.scalar_type());
  POSENC_CHECK_INPUT(k.device() == q.device(), kName, "k",
                     c10::str("must be on the device of 'q' (", q.device(), ")"), "device ",
                     k.device());
  const bool thd = options.layout() == "thd";
  const bool has_cu = cu_seqlens.has_value() && cu_seqlens->defined();
  POSENC_CHECK_INPUT(!thd || has_cu, kName, "cu_seqlens", "must be given with layout \"thd\"",
                     "None");
  POSENC_CHECK_INPUT(thd || !has_cu, kName, "cu_seqlens",
                     c10::str("must be None with layout \"", options.layout(), "\""),
                     "a tensor");
  if (seq_len.has_value()) {
    POSENC_CHECK_INPUT(*seq_len >= 0, kName, "seq_len", "must be >= 0 (or None)", *seq_len);
  }
  torch::Tensor inv;
  if (length_dependent()) {
    inv = frequencies(seq_len.has_value() ? *seq_len
                                          : infer_seq_len(q, k, positions, offset, cu_seqlens));
  } else {
    inv = inv_freq;
  }
  // Inputs on another device than the module (a module never moved) get a copy; the cached
  // tensors are only replaced by to() and (dynamic NTK) frequencies().
  if (inv.device() != q.device()) inv = inv.to(q.device());
  std::optional<torch::Tensor> zeta;
  if (xpos_zeta.defined()) {
    zeta = xpos_zeta.device() == q.device() ? xpos_zeta : xpos_zeta.to(q.device());
  }
  const double scale_base = options.scaling().has_value() ? options.scaling()->xpos_scale_base : 512.0;
  const int64_t rd = rotary_dim();
  const auto cu = has_cu ? cu_seqlens : std::nullopt;
  // One call when k is q's shape but for the heads: each block's cos/sin serve both.
  const int64_t heads_dim = options.layout() == "bshd" ? 2 : 1;
  bool together = q.dim() == k.dim() && q.scalar_type() == k.scalar_type() &&
                  q.device() == k.device();
  for (int64_t d = 0; together && d < q.dim(); ++d) {
    together = d == heads_dim || q.size(d) == k.size(d);
  }
  if (together) {
    return ops::rope_qk(q, k, positions, inv, offset, rd, options.interleaved(), options.layout(),
                        cu, attention_factor_, zeta, scale_base, options.xpos_centre());
  }
  auto q_rot = ops::rope(q, positions, inv, offset, rd, options.interleaved(), options.layout(), cu,
                         attention_factor_, zeta, scale_base, /*xpos_inverse=*/false,
                         options.xpos_centre());
  auto k_rot = ops::rope(k, positions, inv, offset, rd, options.interleaved(), options.layout(), cu,
                         attention_factor_, zeta, scale_base, /*xpos_inverse=*/true,
                         options.xpos_centre());
  return {q_rot, k_rot};
}

}  // namespace nn
}  // namespace posenc
