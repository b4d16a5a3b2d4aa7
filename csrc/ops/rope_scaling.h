// RoPE scaling: dispatcher handles and the configuration checks (shared by the op and
// RopeScalingConfig::validate, so C++ and Python see the same messages).
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>

#include <cmath>
#include <limits>
#include <optional>
#include <string>
#include <tuple>

#include "check.h"
#include "posenc/rope_scaling.h"

namespace posenc {
namespace detail {

inline constexpr const char* kRopeScalingOp = "rope_scaling_inv_freq";

inline auto& rope_scaling_inv_freq_op() {
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("posenc::rope_scaling_inv_freq", "")
          .typed<std::tuple<at::Tensor, double>(
              c10::string_view, double, int64_t, double, std::optional<double>,
              std::optional<int64_t>, std::optional<int64_t>, std::optional<double>,
              std::optional<double>, std::optional<double>, std::optional<double>,
              std::optional<double>, bool, std::optional<double>, std::optional<double>,
              std::optional<c10::ArrayRef<double>>, std::optional<c10::ArrayRef<double>>, double,
              double, std::optional<int64_t>, std::optional<at::Device>,
              std::optional<at::ScalarType>)>();
  return op;
}

inline auto& xpos_zeta_op() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("posenc::xpos_zeta", "")
                       .typed<at::Tensor(int64_t, double, std::optional<at::Device>)>();
  return op;
}

inline auto& xpos_scale_op() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("posenc::xpos_scale", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, double, int64_t,
                                         bool)>();
  return op;
}

// ---- configuration checks ------------------------------------------------------------------

inline std::string quoted(const std::string& s) { return "\"" + s + "\""; }

inline std::string for_type(RopeType t) {
  return c10::str("for rope_type \"", rope_type_name(t), "\"");
}

// A field the type needs: present, finite and > 0.
inline double require_positive(const char* arg, const std::optional<double>& v, RopeType t) {
  POSENC_CHECK_ARG(v.has_value(), kRopeScalingOp, arg, c10::str("must be given ", for_type(t)),
                   "None");
  POSENC_CHECK_ARG(std::isfinite(*v) && *v > 0.0, kRopeScalingOp, arg,
                   c10::str("must be finite and > 0 ", for_type(t)), *v);
  return *v;
}

inline int64_t require_length(const char* arg, const std::optional<int64_t>& v, RopeType t) {
  POSENC_CHECK_ARG(v.has_value(), kRopeScalingOp, arg, c10::str("must be given ", for_type(t)),
                   "None");
  POSENC_CHECK_ARG(*v > 0, kRopeScalingOp, arg, c10::str("must be > 0 ", for_type(t)), *v);
  return *v;
}

inline void check_optional_finite(const char* arg, const std::optional<double>& v, RopeType t) {
  if (v.has_value()) {
    POSENC_CHECK_ARG(std::isfinite(*v), kRopeScalingOp, arg, c10::str("must be finite ", for_type(t)),
                     *v);
  }
}

// yarn / longrope: explicit factor (rule 4) or max_position_embeddings / original.
inline void check_factor_or_ratio(const RopeScalingConfig& c) {
  if (c.factor.has_value()) {
    require_positive("factor", c.factor, c.type);
  } else {
    POSENC_CHECK_ARG(c.max_position_embeddings.has_value(), kRopeScalingOp, "factor",
                     c10::str("must be given ", for_type(c.type),
                              " unless max_position_embeddings is (factor = "
                              "max_position_embeddings / original_max_position_embeddings)"),
                     "None (and max_position_embeddings None)");
    require_length("max_position_embeddings", c.max_position_embeddings, c.type);
  }
}

inline void check_scale_list(const char* arg, const std::vector<double>& v, int64_t n, RopeType t) {
  POSENC_CHECK_ARG(static_cast<int64_t>(v.size()) == n, kRopeScalingOp, arg,
                   c10::str("must have ", n, " values (one per frequency, ceil(rotary_dim / 2)) ",
                            for_type(t)),
                   v.size(), " values");
  for (size_t i = 0; i < v.size(); ++i) {
    POSENC_CHECK_ARG(std::isfinite(v[i]) && v[i] > 0.0, kRopeScalingOp, arg,
                     c10::str("must hold finite values > 0 ", for_type(t)), v[i], " at index ", i);
    // The factors are used as float32 (as transformers does): 1e308 passed the check above and
    // then failed the float conversion with c10's generic overflow error (found by tests/fuzz).
    POSENC_CHECK_ARG(v[i] <= std::numeric_limits<float>::max() &&
                         v[i] >= std::numeric_limits<float>::min(),
                     kRopeScalingOp, arg,
                     c10::str("must hold values in float32's normal range [",
                              std::numeric_limits<float>::min(), ", ",
                              std::numeric_limits<float>::max(), "] ", for_type(t)),
                     v[i], " at index ", i);
  }
}

// Largest head_dim accepted: 2^20, far above any model's (<= 512), and small enough that the
// (ceil(d/2),) tables and their temporaries stay a few MB. Without a bound a config.json
// claiming head_dim 2^40 asked the allocator for terabytes (an allocator error, or an
// overcommitted allocation that kills the process), and one near 2^63 overflowed the
// double -> int64 cast of rotary_dim() (found by tests/fuzz).
constexpr int64_t kMaxRopeHeadDim = int64_t{1} << 20;

inline void check_rope_scaling_config(const RopeScalingConfig& c) {
  const RopeType t = c.type;
  POSENC_CHECK_ARG(c.head_dim > 0, kRopeScalingOp, "head_dim", "must be > 0", c.head_dim);
  POSENC_CHECK_ARG(c.head_dim <= kMaxRopeHeadDim, kRopeScalingOp, "head_dim",
                   c10::str("must be <= ", kMaxRopeHeadDim, " (2^20)"), c.head_dim);
  POSENC_CHECK_ARG(std::isfinite(c.partial_rotary_factor) && c.partial_rotary_factor > 0.0 &&
                       c.partial_rotary_factor <= 1.0,
                   kRopeScalingOp, "partial_rotary_factor", "must be in (0, 1]",
                   c.partial_rotary_factor);
  const int64_t dim = c.rotary_dim();
  POSENC_CHECK_ARG(dim >= 2, kRopeScalingOp, "partial_rotary_factor",
                   c10::str("must leave a rotary dimension int(head_dim * partial_rotary_factor) "
                            ">= 2 (head_dim ",
                            c.head_dim, ")"),
                   c.partial_rotary_factor, " (rotary dimension ", dim, ")");
  POSENC_CHECK_ARG(std::isfinite(c.rope_theta) && c.rope_theta > 1.0, kRopeScalingOp,
                   "rope_theta", "must be finite and > 1", c.rope_theta);
  if (c.attention_factor.has_value()) {
    POSENC_CHECK_ARG(std::isfinite(*c.attention_factor) && *c.attention_factor > 0.0,
                     kRopeScalingOp, "attention_factor", "must be finite and > 0 (or None)",
                     *c.attention_factor);
  }

  switch (t) {
    case RopeType::Default:
      break;
    case RopeType::Linear:
      require_positive("factor", c.factor, t);
      break;
    case RopeType::NTK:
    case RopeType::Dynamic:
      require_positive("factor", c.factor, t);
      // base' = base * (...)^(d / (d - 2)) needs d > 2
      POSENC_CHECK_ARG(dim > 2, kRopeScalingOp, "partial_rotary_factor",
                       c10::str("must leave a rotary dimension > 2 ", for_type(t),
                                " (the base is raised to d / (d - 2); head_dim ", c.head_dim, ")"),
                       c.partial_rotary_factor, " (rotary dimension ", dim, ")");
      if (t == RopeType::Dynamic) {
        require_length("max_position_embeddings", c.max_position_embeddings, t);
      }
      break;
    case RopeType::YaRN: {
      require_length("original_max_position_embeddings", c.original_max_position_embeddings, t);
      check_factor_or_ratio(c);
      POSENC_CHECK_ARG(dim % 2 == 0, kRopeScalingOp, "partial_rotary_factor",
                       c10::str("must give an even rotary dimension ", for_type(t),
                                " (head_dim ", c.head_dim, ")"),
                       c.partial_rotary_factor, " (rotary dimension ", dim, ")");
      for (const auto& [arg, v] : {std::pair<const char*, std::optional<double>>{"beta_fast", c.beta_fast},
                                   {"beta_slow", c.beta_slow}}) {
        if (v.has_value()) {
          POSENC_CHECK_ARG(std::isfinite(*v) && *v >= 0.0, kRopeScalingOp, arg,
                           c10::str("must be finite and >= 0 (0 or None: the default) ", for_type(t)),
                           *v);
        }
      }
      const double fast = c.beta_fast.value_or(0.0) != 0.0 ? *c.beta_fast : 32.0;
      const double slow = c.beta_slow.value_or(0.0) != 0.0 ? *c.beta_slow : 1.0;
      POSENC_CHECK_ARG(fast >= slow, kRopeScalingOp, "beta_fast",
                       c10::str("must be >= beta_slow (", slow, ") ", for_type(t)), fast);
      check_optional_finite("mscale", c.mscale, t);
      check_optional_finite("mscale_all_dim", c.mscale_all_dim, t);
      break;
    }
    case RopeType::Llama3: {
      require_positive("factor", c.factor, t);
      require_length("original_max_position_embeddings", c.original_max_position_embeddings, t);
      const double lo = require_positive("low_freq_factor", c.low_freq_factor, t);
      const double hi = require_positive("high_freq_factor", c.high_freq_factor, t);
      POSENC_CHECK_ARG(hi > lo, kRopeScalingOp, "high_freq_factor",
                       c10::str("must be > low_freq_factor (", lo, ") ", for_type(t)), hi);
      break;
    }
    case RopeType::LongRoPE:
      require_length("original_max_position_embeddings", c.original_max_position_embeddings, t);
      check_factor_or_ratio(c);
      check_scale_list("short_factor", c.short_factor, c.num_frequencies(), t);
      check_scale_list("long_factor", c.long_factor, c.num_frequencies(), t);
      break;
    case RopeType::XPos:
      POSENC_CHECK_ARG(std::isfinite(c.xpos_gamma) && c.xpos_gamma > 0.0, kRopeScalingOp,
                       "xpos_gamma", c10::str("must be finite and > 0 ", for_type(t)),
                       c.xpos_gamma);
      POSENC_CHECK_ARG(std::isfinite(c.xpos_scale_base) && c.xpos_scale_base > 0.0,
                       kRopeScalingOp, "xpos_scale_base",
                       c10::str("must be finite and > 0 ", for_type(t)), c.xpos_scale_base);
      break;
  }
}

}  // namespace detail
}  // namespace posenc
