// RoPE scaling: a typed configuration and the one function that turns it into the inverse
// frequencies (float32) and the attention factor that a rotary embedding uses.
//
// Numbers: for every type that Hugging Face transformers implements (default, linear, dynamic,
// yarn, llama3, longrope) the inverse frequencies are bit-identical to transformers'
// ROPE_INIT_FUNCTIONS / compute_default_rope_parameters on CPU (same float32 operations in the
// same order; scalars such as a rescaled base are computed in double, as Python does), and the
// attention factor is the same double. They are always computed on the CPU and then copied to
// the requested device, so every device sees the same numbers (a Hugging Face model also
// builds its inv_freq on the CPU at construction).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace posenc {

/// The RoPE variants. The canonical names (rope_type_name / parse_rope_type) are Hugging
/// Face's `rope_type` strings where transformers has the type.
enum class RopeType : int8_t {
  /// "default": theta_i = base^(-2i/d), i < d/2 (Su et al. 2021, RoFormer, eq. 15), with d the
  /// rotary dimension. Attention factor 1.
  Default,
  /// "linear": position interpolation (Chen et al. 2023, "Extending Context Window of Large
  /// Language Models via Positional Interpolation", §2.2): positions m -> m / s, i.e.
  /// theta_i / s with s = `factor`. Attention factor 1.
  Linear,
  /// "ntk": NTK-aware static base rescaling (bloc97 2023; Peng et al. 2023, YaRN §3.2):
  /// base' = base * s^(d / (d - 2)), s = `factor`; then the default frequencies. Not a
  /// transformers type. Attention factor 1.
  NTK,
  /// "dynamic": dynamic NTK (emozilla 2023; Peng et al. 2023, "Dynamic NTK"): the NTK base with the scale
  /// taken from the current total length L = max(seq_len, max_position_embeddings):
  /// base' = base * (s * L / max_position_embeddings - (s - 1))^(d / (d - 2)). Equals the
  /// default frequencies for L <= max_position_embeddings. Attention factor 1. The base is
  /// computed in double, as transformers' ROPE_INIT_FUNCTIONS["dynamic"] with an int seq_len
  /// (bit-identical); a transformers model's forward passes seq_len as a tensor and so rounds
  /// the base in float32 (inv_freq within ~1e-6 relative of ours).
  Dynamic,
  /// "yarn": YaRN (Peng et al. 2023, "YaRN: Efficient Context Window Extension of Large
  /// Language Models", §3.3-3.5). With s = `factor`, L = original_max_position_embeddings,
  /// r(n) = d ln(L / (2 pi n)) / (2 ln base) the dimension index whose wavelength makes n
  /// rotations over L: low = r(beta_fast), high = r(beta_slow) (floor / ceil when `truncate`),
  /// clamped to [0, d - 1]; gamma_i = clamp((i - low) / (high - low), 0, 1) the ramp over pair
  /// index i < d/2 (high += 0.001 when low == high); mixing weight e_i = 1 - gamma_i, and
  /// inv_freq_i = theta_i / s * (1 - e_i) + theta_i * e_i. Attention factor ("mscale",
  /// sqrt(1/t) of §3.5): 0.1 ln(s) + 1 for s > 1, else 1.
  YaRN,
  /// "llama3": Llama 3.1 band scaling (Meta, Llama 3 reference `apply_scaling`). With
  /// lambda_i = 2 pi / theta_i, L = original_max_position_embeddings, s = factor,
  /// a = low_freq_factor, b = high_freq_factor: lambda_i < L / b keeps theta_i;
  /// lambda_i > L / a uses theta_i / s; in between
  /// (1 - mu) theta_i / s + mu theta_i with mu = (L / lambda_i - a) / (b - a). Attention factor 1.
  Llama3,
  /// "longrope": LongRoPE (Ding et al. 2024, "LongRoPE: Extending LLM Context Window Beyond 2
  /// Million Tokens", §2; Phi-3): inv_freq_i = theta_i / lambda_i, lambda = long_factor when
  /// seq_len > original_max_position_embeddings, else short_factor (also when seq_len is not
  /// given). Attention factor sqrt(1 + ln s / ln L) for s > 1, else 1, with
  /// s = factor or max_position_embeddings / L.
  LongRoPE,
  /// "xpos": xPos (Sun et al. 2022, "A Length-Extrapolatable Transformer", §3.2): the default
  /// frequencies plus a magnitude scaling of q and k: q_n *= zeta^((n - c) / scale_base),
  /// k_m *= zeta^(-(m - c) / scale_base), per pair zeta_i = (2i/d + gamma) / (1 + gamma)
  /// (xpos_zeta, xpos_scale). c is an absolute centre, the same for every call, so q_n . k_m
  /// depends on zeta^((n - m) / scale_base) only and cached keys stay valid. Attention factor 1.
  XPos,
};

/// Canonical name of a type: "default", "linear", "ntk", "dynamic", "yarn", "llama3",
/// "longrope", "xpos".
std::string rope_type_name(RopeType type);

/// The canonical names, in RopeType order.
std::vector<std::string> rope_type_names();

/// Parses a canonical name, or "su" (old Phi-3 configs: longrope). Names are case-sensitive
/// as in transformers. Anything else throws c10::Error
/// "posenc.rope_scaling_inv_freq: argument 'rope_type' must be one of ..., but got ..." (with a
/// hint when only the case differs), never silently falling back to "default".
RopeType parse_rope_type(const std::string& name);

/// Every field of every RoPE type, named as in Hugging Face's `rope_parameters`. Fields that a
/// type does not read are ignored (posenc.hf.rope_from_config warns about them).
///
/// Precedence rules:
///  1. An explicit `attention_factor` always wins, for every type (transformers only reads it
///     for yarn and longrope; rope_from_config passes it only for those).
///  2. yarn without `attention_factor`: if `mscale` and `mscale_all_dim` are both set and
///     non-zero, (0.1 mscale ln s + 1) / (0.1 mscale_all_dim ln s + 1) (DeepSeek-V2/V3);
///     otherwise 0.1 ln s + 1 (s > 1) or 1 (s <= 1). `mscale` alone is not used.
///  3. longrope without `attention_factor`: sqrt(1 + ln s / ln L) for s > 1, else 1.
///  4. yarn / longrope scale s: an explicit `factor` wins; without it,
///     s = max_position_embeddings / original_max_position_embeddings.
///  5. yarn `beta_fast` / `beta_slow`: unset or 0 means the paper's 32 / 1.
///  6. dynamic: the total length is max(seq_len, max_position_embeddings); no seq_len means
///     max_position_embeddings (the default frequencies).
///  7. longrope: long_factor exactly when seq_len > original_max_position_embeddings.
struct RopeScalingConfig {
  RopeType type = RopeType::Default;
  /// Base of the frequencies ("rope_theta"); finite and > 1.
  double rope_theta = 10000.0;
  /// Attention head dimension, in [1, 2^20]; transformers' default is hidden_size / num_heads.
  int64_t head_dim = 0;
  /// Rotary fraction of head_dim, in (0, 1]: the rotary dimension is
  /// d = int(head_dim * partial_rotary_factor) (truncated, as transformers does) and >= 2.
  /// An odd d gives ceil(d/2) frequencies (exponents 2i/d), as transformers does.
  double partial_rotary_factor = 1.0;
  /// Scale s (> 0): required for linear, ntk, dynamic, llama3; optional for yarn, longrope
  /// (rule 4).
  std::optional<double> factor;
  /// Length the model is configured for: required for dynamic; used by rule 4.
  std::optional<int64_t> max_position_embeddings;
  /// Pre-training length L: required for yarn, llama3, longrope.
  std::optional<int64_t> original_max_position_embeddings;
  /// Explicit attention factor (> 0): multiplies cos and sin (rule 1).
  std::optional<double> attention_factor;
  /// yarn: rotation counts bounding the ramp (> 0, beta_fast >= beta_slow; rule 5).
  std::optional<double> beta_fast;
  std::optional<double> beta_slow;
  /// yarn: attention-factor terms (rule 2); finite.
  std::optional<double> mscale;
  std::optional<double> mscale_all_dim;
  /// yarn: floor/ceil the correction range (transformers' default true).
  bool truncate = true;
  /// llama3: band edges a < b, both > 0.
  std::optional<double> low_freq_factor;
  std::optional<double> high_freq_factor;
  /// longrope: per-frequency divisors (ceil(d/2) values, each finite and > 0).
  std::vector<double> short_factor;
  std::vector<double> long_factor;
  /// xpos: gamma > 0 (paper 0.4) and scale_base > 0 (paper 512).
  double xpos_gamma = 0.4;
  double xpos_scale_base = 512.0;

  /// d = int(head_dim * partial_rotary_factor).
  int64_t rotary_dim() const;
  /// Number of frequencies: ceil(d / 2). Pass rotary_dim = 2 * num_frequencies() to posenc::rope.
  int64_t num_frequencies() const;
  /// Throws c10::Error naming the field, what was expected and what was given.
  void validate() const;
};

/// Result of compute_rope_parameters.
struct RopeParameters {
  /// (ceil(d/2),) on the requested device: float32 (reference precision, bit-identical to
  /// transformers) or float64 (exact precision; pass it to posenc::ops::rope for fp64 angles).
  at::Tensor inv_freq;
  /// Multiplies cos and sin (q.k scales by its square); 1 for most types.
  double attention_factor = 1.0;
  /// xpos only: float32 (ceil(d/2),) per-pair zeta (see xpos_zeta); undefined otherwise.
  at::Tensor xpos_zeta;
};

/// Turns a configuration into inv_freq and the attention factor. seq_len is the current total
/// length (dynamic: rule 6; longrope: rule 7); other types ignore it; it must be >= 0.
/// Calls the dispatcher op posenc::rope_scaling_inv_freq. dtype: at::kFloat (reference
/// precision: transformers' float32 tables) or at::kDouble (exact precision: the same formulas
/// in double). Throws c10::Error for an invalid configuration (RopeScalingConfig::validate) or
/// another dtype.
RopeParameters compute_rope_parameters(const RopeScalingConfig& config,
                                       std::optional<int64_t> seq_len = std::nullopt,
                                       at::Device device = at::kCPU,
                                       at::ScalarType dtype = at::kFloat);

namespace ops {

/// The dispatcher op behind compute_rope_parameters, taking the fields of RopeScalingConfig
/// with the type as its name (parse_rope_type): the C++ twin of posenc.hf.rope_from_config's
/// fields. Returns (inv_freq (ceil(d/2),) in dtype (float32 or float64), attention_factor).
std::tuple<at::Tensor, double> rope_scaling_inv_freq(
    const std::string& rope_type, double rope_theta, int64_t head_dim,
    double partial_rotary_factor = 1.0, std::optional<double> factor = std::nullopt,
    std::optional<int64_t> max_position_embeddings = std::nullopt,
    std::optional<int64_t> original_max_position_embeddings = std::nullopt,
    std::optional<double> attention_factor = std::nullopt,
    std::optional<double> beta_fast = std::nullopt, std::optional<double> beta_slow = std::nullopt,
    std::optional<double> mscale = std::nullopt, std::optional<double> mscale_all_dim = std::nullopt,
    bool truncate = true, std::optional<double> low_freq_factor = std::nullopt,
    std::optional<double> high_freq_factor = std::nullopt,
    std::optional<std::vector<double>> short_factor = std::nullopt,
    std::optional<std::vector<double>> long_factor = std::nullopt, double xpos_gamma = 0.4,
    double xpos_scale_base = 512.0, std::optional<int64_t> seq_len = std::nullopt,
    at::Device device = at::kCPU, at::ScalarType dtype = at::kFloat);

/// xPos per-pair scale zeta_i = (2i/d + gamma) / (1 + gamma), i < ceil(d/2) (Sun et al. 2022,
/// §3.2, with the reference implementation's gamma = 0.4), d = rotary_dim (> 0), gamma > 0.
/// Computed in fp64, returned as float32 (ceil(d/2),).
at::Tensor xpos_zeta(int64_t rotary_dim, double gamma = 0.4, at::Device device = at::kCPU);

/// xPos magnitude factors zeta_i^((p - centre) / scale_base) for q (inverse = false) and
/// zeta_i^(-(p - centre) / scale_base) for k (inverse = true) (Sun et al. 2022, §3.2).
/// positions: int64, any shape P; zeta: float32/float64 (n,), all > 0; scale_base > 0.
/// Returns float32 P + (n,), computed in fp64 and rounded once; one factor per rotary pair
/// (repeat it over both members of a pair). The centre is an absolute position shared by all
/// calls (e.g. the middle of the context): factors far from it over/underflow float32, since
/// zeta_0^(|p - centre| / scale_base) with zeta_0 = gamma / (1 + gamma).
at::Tensor xpos_scale(const at::Tensor& positions, const at::Tensor& zeta,
                      double scale_base = 512.0, int64_t centre = 0, bool inverse = false);

}  // namespace ops
}  // namespace posenc
