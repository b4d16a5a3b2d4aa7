// RoPE scaling schemas (rope_scaling_inv_freq, xpos_zeta, xpos_scale), the computation of
// inv_freq and the attention factor per RopeType, and the public C++ functions.
//
// Parity with Hugging Face transformers (modeling_rope_utils): the frequency tables are built
// with the same float32 ATen operations in the same order as transformers' Python (e.g.
// `1.0 / x` is x.reciprocal(), a Python scalar combined with a float32 tensor is rounded to
// float32 by the op), and the scalars (rescaled bases, correction ranges, attention factors)
// in double as Python computes them. This file is compiled with -ffp-contract=off so that no
// a * b + c of those scalars is fused into an FMA that Python would not use.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cmath>
#include <numbers>
#include <utility>

#include "posenc/rope_scaling.h"
#include "rope_scaling.h"

namespace posenc {

namespace {

constexpr std::array<std::pair<const char*, RopeType>, 8> kTypes{{
    {"default", RopeType::Default},
    {"linear", RopeType::Linear},
    {"ntk", RopeType::NTK},
    {"dynamic", RopeType::Dynamic},
    {"yarn", RopeType::YaRN},
    {"llama3", RopeType::Llama3},
    {"longrope", RopeType::LongRoPE},
    {"xpos", RopeType::XPos},
}};

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char ch) { return std::tolower(ch); });
  return s;
}

}  // namespace

std::string rope_type_name(RopeType type) {
  for (const auto& [name, t] : kTypes) {
    if (t == type) return name;
  }
  TORCH_CHECK(false, "posenc: unknown RopeType ", static_cast<int>(type));
  return "";
}

std::vector<std::string> rope_type_names() {
  std::vector<std::string> out;
  for (const auto& [name, t] : kTypes) out.emplace_back(name);
  return out;
}

RopeType parse_rope_type(const std::string& name) {
  for (const auto& [n, t] : kTypes) {
    if (name == n) return t;
  }
  if (name == "su") return RopeType::LongRoPE;  // Phi-3's name before "longrope"
  std::string expected = "must be one of";
  for (size_t i = 0; i < kTypes.size(); ++i) {
    expected += c10::str(i ? ", \"" : " \"", kTypes[i].first, "\"");
  }
  std::string hint;
  for (const auto& [n, t] : kTypes) {
    if (lower(name) == n) hint = c10::str(" (did you mean \"", n, "\"? names are case-sensitive)");
  }
  POSENC_CHECK_ARG(false, detail::kRopeScalingOp, "rope_type", expected, "\"", name, "\"", hint);
  return RopeType::Default;  // unreachable
}

int64_t RopeScalingConfig::rotary_dim() const {
  // int(head_dim * partial_rotary_factor) in Python: a double product, truncated. A product
  // that is not finite or leaves int64 (validate() refuses such fields) gives 0: the cast
  // would be undefined behaviour.
  const double d = static_cast<double>(head_dim) * partial_rotary_factor;
  if (!(std::fabs(d) < 9.2e18)) return 0;
  return static_cast<int64_t>(d);
}

int64_t RopeScalingConfig::num_frequencies() const { return (rotary_dim() + 1) / 2; }

void RopeScalingConfig::validate() const { detail::check_rope_scaling_config(*this); }

namespace {

constexpr double kPi = std::numbers::pi;

// Every table below is built in `dt`: float32 reproduces transformers bit for bit; float64
// runs the same formulas in double (the exact precision mode).

// arange(0, d, 2) / d (transformers: torch.arange(0, dim, 2).float() / dim).
at::Tensor exponents(int64_t dim, at::ScalarType dt) {
  return at::arange(0, dim, 2, at::TensorOptions().dtype(dt)) / dim;
}

// base ** (2i/d): in float32 base is rounded to float32 by pow, as in `base ** tensor`.
at::Tensor base_powers(double base, int64_t dim, at::ScalarType dt) {
  return at::pow(base, exponents(dim, dt));
}

// 1.0 / (base ** (2i/d)): Su et al. 2021, eq. 15.
at::Tensor default_inv_freq(double base, int64_t dim, at::ScalarType dt) {
  return at::reciprocal(base_powers(base, dim, dt));
}

// The NTK-aware exponent d / (d - 2) applied to a scale: base * scale^(d / (d - 2)).
double ntk_base(double base, double scale, int64_t dim) {
  return base * std::pow(scale, static_cast<double>(dim) / static_cast<double>(dim - 2));
}

// YaRN's 0.1 * mscale * ln(s) + 1 for s > 1 (sqrt(1/t), Peng et al. 2023 §3.5).
double yarn_mscale(double scale, double mscale) {
  if (scale <= 1.0) return 1.0;
  return 0.1 * mscale * std::log(scale) + 1.0;
}

bool truthy(const std::optional<double>& v) { return v.has_value() && *v != 0.0; }

double yarn_or_longrope_factor(const RopeScalingConfig& c) {
  if (c.factor.has_value()) return *c.factor;
  return static_cast<double>(*c.max_position_embeddings) /
         static_cast<double>(*c.original_max_position_embeddings);
}

std::pair<at::Tensor, double> yarn(const RopeScalingConfig& c, int64_t dim, at::ScalarType dt) {
  const double base = c.rope_theta;
  const double factor = yarn_or_longrope_factor(c);
  const double orig = static_cast<double>(*c.original_max_position_embeddings);

  double attention_factor;
  if (c.attention_factor.has_value()) {
    attention_factor = *c.attention_factor;
  } else if (truthy(c.mscale) && truthy(c.mscale_all_dim)) {
    attention_factor = yarn_mscale(factor, *c.mscale) / yarn_mscale(factor, *c.mscale_all_dim);
  } else {
    attention_factor = yarn_mscale(factor, 1.0);
  }

  const double beta_fast = truthy(c.beta_fast) ? *c.beta_fast : 32.0;
  const double beta_slow = truthy(c.beta_slow) ? *c.beta_slow : 1.0;
  // Pair index whose wavelength 2 pi base^(2i/d) makes n rotations over the original length.
  auto correction_dim = [&](double n) {
    return (static_cast<double>(dim) * std::log(orig / (n * 2.0 * kPi))) / (2.0 * std::log(base));
  };
  double low = correction_dim(beta_fast);
  double high = correction_dim(beta_slow);
  if (c.truncate) {
    low = std::floor(low);
    high = std::ceil(high);
  }
  low = std::max(low, 0.0);
  high = std::min(high, static_cast<double>(dim - 1));
  if (low == high) high += 0.001;  // avoid 0 / 0 in the ramp

  const at::Tensor pos_freqs = base_powers(base, dim, dt);
  const at::Tensor inv_extrapolation = at::reciprocal(pos_freqs);
  const at::Tensor inv_interpolation = at::reciprocal(pos_freqs * factor);
  const at::Tensor ramp = at::clamp(
      (at::arange(dim / 2, at::TensorOptions().dtype(dt)) - low) / (high - low), 0, 1);
  const at::Tensor extrapolation_weight = at::rsub(ramp, 1);
  const at::Tensor inv_freq = inv_interpolation * at::rsub(extrapolation_weight, 1) +
                              inv_extrapolation * extrapolation_weight;
  return {inv_freq, attention_factor};
}

at::Tensor llama3(const RopeScalingConfig& c, int64_t dim, at::ScalarType dt) {
  const at::Tensor inv_freq = default_inv_freq(c.rope_theta, dim, dt);
  const double factor = *c.factor;
  const double low = *c.low_freq_factor;
  const double high = *c.high_freq_factor;
  const double old_len = static_cast<double>(*c.original_max_position_embeddings);
  const double low_freq_wavelen = old_len / low;
  const double high_freq_wavelen = old_len / high;

  const at::Tensor wavelen = at::reciprocal(inv_freq) * (2.0 * kPi);
  at::Tensor scaled = at::where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq);
  const at::Tensor smooth = (at::reciprocal(wavelen) * old_len - low) / (high - low);
  const at::Tensor smoothed = at::rsub(smooth, 1) * scaled / factor + smooth * scaled;
  const at::Tensor medium =
      at::logical_and(at::logical_not(wavelen < high_freq_wavelen),
                      at::logical_not(wavelen > low_freq_wavelen));
  return at::where(medium, smoothed, scaled);
}

// (n,) holding `values` in dt (float32: each rounded, as torch.tensor(list, dtype=float32)),
// built from fills rather than by writing memory, so that it also works on fake tensors.
at::Tensor float_tensor(const std::vector<double>& values, at::ScalarType dt) {
  std::vector<at::Tensor> parts;
  parts.reserve(values.size());
  for (double v : values) parts.push_back(at::full({1}, v, at::TensorOptions().dtype(dt)));
  return at::cat(parts);
}

std::pair<at::Tensor, double> longrope(const RopeScalingConfig& c, int64_t dim,
                                       std::optional<int64_t> seq_len, at::ScalarType dt) {
  const double factor = yarn_or_longrope_factor(c);
  const int64_t orig = *c.original_max_position_embeddings;
  double attention_factor;
  if (c.attention_factor.has_value()) {
    attention_factor = *c.attention_factor;
  } else if (factor <= 1.0) {
    attention_factor = 1.0;
  } else {
    attention_factor = std::sqrt(1.0 + std::log(factor) / std::log(static_cast<double>(orig)));
  }
  const bool use_long = seq_len.has_value() && *seq_len > orig;
  const auto& list = use_long ? c.long_factor : c.short_factor;
  const at::Tensor ext = float_tensor(list, dt);
  return {at::reciprocal(ext * base_powers(c.rope_theta, dim, dt)), attention_factor};
}

// Everything on the CPU (same numbers on every device), copied to `device` at the end.
std::tuple<at::Tensor, double> compute_impl(const RopeScalingConfig& c,
                                            std::optional<int64_t> seq_len, at::Device device,
                                            at::ScalarType dt) {
  c.validate();
  POSENC_CHECK_ARG(dt == at::kFloat || dt == at::kDouble, detail::kRopeScalingOp, "dtype",
                   "must be torch.float32 (reference precision) or torch.float64 (exact)", dt);
  if (seq_len.has_value()) {
    POSENC_CHECK_ARG(*seq_len >= 0, detail::kRopeScalingOp, "seq_len", "must be >= 0 (or None)",
                     *seq_len);
  }
  const int64_t dim = c.rotary_dim();
  RopeParameters out;
  out.attention_factor = c.attention_factor.value_or(1.0);  // rule 1
  switch (c.type) {
    case RopeType::Default:
      out.inv_freq = default_inv_freq(c.rope_theta, dim, dt);
      break;
    case RopeType::Linear:
      out.inv_freq = default_inv_freq(c.rope_theta, dim, dt);
      out.inv_freq.div_(*c.factor);
      break;
    case RopeType::NTK:
      out.inv_freq = default_inv_freq(ntk_base(c.rope_theta, *c.factor, dim), dim, dt);
      break;
    case RopeType::Dynamic: {
      const int64_t max_len = *c.max_position_embeddings;
      const int64_t total = std::max(seq_len.value_or(max_len), max_len);
      const double factor = *c.factor;
      // (s * L / L_max) - (s - 1), evaluated left to right as Python does.
      const double scale = factor * static_cast<double>(total) / static_cast<double>(max_len) -
                           (factor - 1.0);
      out.inv_freq = default_inv_freq(ntk_base(c.rope_theta, scale, dim), dim, dt);
      break;
    }
    case RopeType::YaRN:
      std::tie(out.inv_freq, out.attention_factor) = yarn(c, dim, dt);
      break;
    case RopeType::Llama3:
      out.inv_freq = llama3(c, dim, dt);
      break;
    case RopeType::LongRoPE:
      std::tie(out.inv_freq, out.attention_factor) = longrope(c, dim, seq_len, dt);
      break;
    case RopeType::XPos:
      out.inv_freq = default_inv_freq(c.rope_theta, dim, dt);  // zeta: xpos_zeta
      break;
  }
  // A derived factor (yarn's mscale ratio, longrope's sqrt(1 + ln s / ln L)) is inf, 0 or
  // negative for degenerate fields (0.1 mscale_all_dim ln s = -1, L = 1): refuse it here
  // rather than scale q and k by it.
  POSENC_CHECK_ARG(std::isfinite(out.attention_factor) && out.attention_factor > 0.0,
                   detail::kRopeScalingOp, "attention_factor",
                   c10::str("derived ", detail::for_type(c.type),
                            " must be finite and > 0 (check mscale / mscale_all_dim for yarn, "
                            "original_max_position_embeddings > 1 for longrope)"),
                   out.attention_factor);
  return {out.inv_freq.contiguous().to(device), out.attention_factor};
}

std::tuple<at::Tensor, double> rope_scaling_inv_freq_impl(
    c10::string_view rope_type, double rope_theta, int64_t head_dim, double partial_rotary_factor,
    std::optional<double> factor, std::optional<int64_t> max_position_embeddings,
    std::optional<int64_t> original_max_position_embeddings,
    std::optional<double> attention_factor, std::optional<double> beta_fast,
    std::optional<double> beta_slow, std::optional<double> mscale,
    std::optional<double> mscale_all_dim, bool truncate, std::optional<double> low_freq_factor,
    std::optional<double> high_freq_factor, std::optional<c10::ArrayRef<double>> short_factor,
    std::optional<c10::ArrayRef<double>> long_factor, double xpos_gamma, double xpos_scale_base,
    std::optional<int64_t> seq_len, std::optional<at::Device> device,
    std::optional<at::ScalarType> dtype) {
  RopeScalingConfig c;
  c.type = parse_rope_type(std::string(rope_type));
  c.rope_theta = rope_theta;
  c.head_dim = head_dim;
  c.partial_rotary_factor = partial_rotary_factor;
  c.factor = factor;
  c.max_position_embeddings = max_position_embeddings;
  c.original_max_position_embeddings = original_max_position_embeddings;
  c.attention_factor = attention_factor;
  c.beta_fast = beta_fast;
  c.beta_slow = beta_slow;
  c.mscale = mscale;
  c.mscale_all_dim = mscale_all_dim;
  c.truncate = truncate;
  c.low_freq_factor = low_freq_factor;
  c.high_freq_factor = high_freq_factor;
  if (short_factor.has_value()) c.short_factor = short_factor->vec();
  if (long_factor.has_value()) c.long_factor = long_factor->vec();
  c.xpos_gamma = xpos_gamma;
  c.xpos_scale_base = xpos_scale_base;
  return compute_impl(c, seq_len, device.value_or(at::kCPU), dtype.value_or(at::kFloat));
}

at::Tensor xpos_zeta_impl(int64_t rotary_dim, double gamma, std::optional<at::Device> device) {
  POSENC_CHECK_ARG(rotary_dim > 0, "xpos_zeta", "rotary_dim", "must be > 0", rotary_dim);
  POSENC_CHECK_ARG(std::isfinite(gamma) && gamma > 0.0, "xpos_zeta", "gamma",
                   "must be finite and > 0", gamma);
  auto opts = at::TensorOptions().dtype(at::kDouble);
  const auto i2 = at::arange(0, rotary_dim, 2, opts);
  // (2i/d + gamma) / (1 + gamma): Sun et al. 2022 §3.2.
  return ((i2 / static_cast<double>(rotary_dim) + gamma) / (1.0 + gamma))
      .to(at::kFloat)
      .to(device.value_or(at::kCPU));
}

at::Tensor xpos_scale_impl(const at::Tensor& positions, const at::Tensor& zeta, double scale_base,
                           int64_t centre, bool inverse) {
  constexpr const char* op = "xpos_scale";
  detail::check_index_dtype(op, "positions", positions);
  detail::check_dim(op, "zeta", zeta, 1, "(n,)");
  POSENC_CHECK_ARG(zeta.scalar_type() == at::kFloat || zeta.scalar_type() == at::kDouble, op,
                   "zeta", "must have dtype float32 or float64", "dtype ", zeta.scalar_type());
  detail::check_same_device(op, "zeta", zeta, "positions", positions);
  POSENC_CHECK_ARG(std::isfinite(scale_base) && scale_base > 0.0, op, "scale_base",
                   "must be finite and > 0", scale_base);
  // Exponent (p - centre) / scale_base: the difference is exact in int64, the rest in fp64.
  // Contiguous inputs: the same loop (vectorised pow or not) for every layout, so that strided
  // and contiguous calls give the same bits.
  at::Tensor e = (positions.contiguous().to(at::kLong) - centre).to(at::kDouble) / scale_base;
  if (inverse) e = -e;
  return at::pow(zeta.contiguous().to(at::kDouble), e.unsqueeze(-1)).to(zeta.scalar_type());
}

}  // namespace

RopeParameters compute_rope_parameters(const RopeScalingConfig& config,
                                       std::optional<int64_t> seq_len, at::Device device,
                                       at::ScalarType dtype) {
  const std::optional<c10::ArrayRef<double>> short_factor =
      config.short_factor.empty() ? std::nullopt
                                  : std::optional<c10::ArrayRef<double>>(config.short_factor);
  const std::optional<c10::ArrayRef<double>> long_factor =
      config.long_factor.empty() ? std::nullopt
                                 : std::optional<c10::ArrayRef<double>>(config.long_factor);
  auto [inv_freq, attention_factor] = detail::rope_scaling_inv_freq_op().call(
      rope_type_name(config.type), config.rope_theta, config.head_dim,
      config.partial_rotary_factor, config.factor, config.max_position_embeddings,
      config.original_max_position_embeddings, config.attention_factor, config.beta_fast,
      config.beta_slow, config.mscale, config.mscale_all_dim, config.truncate,
      config.low_freq_factor, config.high_freq_factor, short_factor, long_factor,
      config.xpos_gamma, config.xpos_scale_base, seq_len, device, dtype);
  RopeParameters out;
  out.inv_freq = inv_freq;
  out.attention_factor = attention_factor;
  if (config.type == RopeType::XPos) {
    out.xpos_zeta = ops::xpos_zeta(config.rotary_dim(), config.xpos_gamma, device);
  }
  return out;
}

namespace ops {

std::tuple<at::Tensor, double> rope_scaling_inv_freq(
    const std::string& rope_type, double rope_theta, int64_t head_dim,
    double partial_rotary_factor, std::optional<double> factor,
    std::optional<int64_t> max_position_embeddings,
    std::optional<int64_t> original_max_position_embeddings,
    std::optional<double> attention_factor, std::optional<double> beta_fast,
    std::optional<double> beta_slow, std::optional<double> mscale,
    std::optional<double> mscale_all_dim, bool truncate, std::optional<double> low_freq_factor,
    std::optional<double> high_freq_factor, std::optional<std::vector<double>> short_factor,
    std::optional<std::vector<double>> long_factor, double xpos_gamma, double xpos_scale_base,
    std::optional<int64_t> seq_len, at::Device device, at::ScalarType dtype) {
  std::optional<c10::ArrayRef<double>> s, l;
  if (short_factor.has_value()) s = c10::ArrayRef<double>(*short_factor);
  if (long_factor.has_value()) l = c10::ArrayRef<double>(*long_factor);
  return detail::rope_scaling_inv_freq_op().call(
      rope_type, rope_theta, head_dim, partial_rotary_factor, factor, max_position_embeddings,
      original_max_position_embeddings, attention_factor, beta_fast, beta_slow, mscale,
      mscale_all_dim, truncate, low_freq_factor, high_freq_factor, s, l, xpos_gamma,
      xpos_scale_base, seq_len, device, dtype);
}

at::Tensor xpos_zeta(int64_t rotary_dim, double gamma, at::Device device) {
  return detail::xpos_zeta_op().call(rotary_dim, gamma, device);
}

at::Tensor xpos_scale(const at::Tensor& positions, const at::Tensor& zeta, double scale_base,
                      int64_t centre, bool inverse) {
  return detail::xpos_scale_op().call(positions, zeta, scale_base, centre, inverse);
}

}  // namespace ops
}  // namespace posenc

TORCH_LIBRARY_FRAGMENT(posenc, m) {
  m.def(
      "rope_scaling_inv_freq(str rope_type, float rope_theta, int head_dim, "
      "float partial_rotary_factor=1.0, *, float? factor=None, int? max_position_embeddings=None, "
      "int? original_max_position_embeddings=None, float? attention_factor=None, "
      "float? beta_fast=None, float? beta_slow=None, float? mscale=None, "
      "float? mscale_all_dim=None, bool truncate=True, float? low_freq_factor=None, "
      "float? high_freq_factor=None, float[]? short_factor=None, float[]? long_factor=None, "
      "float xpos_gamma=0.4, float xpos_scale_base=512.0, int? seq_len=None, "
      "Device? device=None, ScalarType? dtype=None) -> (Tensor inv_freq, float attention_factor)");
  m.def("xpos_zeta(int rotary_dim, float gamma=0.4, *, Device? device=None) -> Tensor");
  m.def(
      "xpos_scale(Tensor positions, Tensor zeta, float scale_base=512.0, int centre=0, "
      "bool inverse=False) -> Tensor");
}

TORCH_LIBRARY_IMPL(posenc, CompositeImplicitAutograd, m) {
  m.impl("rope_scaling_inv_freq", &posenc::rope_scaling_inv_freq_impl);
  m.impl("xpos_zeta", &posenc::xpos_zeta_impl);
  m.impl("xpos_scale", &posenc::xpos_scale_impl);
}
