// Sinusoidal absolute table (Vaswani et al. 2017 §3.5): dispatcher handle and argument checks
// shared by the kernels.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <vector>

#include "check.h"

namespace posenc {
namespace detail {

inline auto& sinusoidal_table_op() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("posenc::sinusoidal_table", "")
                       .typed<at::Tensor(const at::Tensor&, int64_t, double, bool,
                                         std::optional<at::ScalarType>)>();
  return op;
}

// Output dtype: the requested one, float32 by default.
inline at::ScalarType sinusoidal_dtype(std::optional<at::ScalarType> dtype) {
  return dtype.value_or(at::kFloat);
}

inline void check_sinusoidal_table(const char* op, const at::Tensor& positions, int64_t dim,
                                   double base, std::optional<at::ScalarType> dtype) {
  check_dim(op, "positions", positions, 1, "(N,)");
  check_index_dtype(op, "positions", positions);
  POSENC_CHECK_ARG(dim > 0 && dim % 2 == 0, op, "dim", "must be even and > 0", dim);
  // base <= 0 (or nan/inf) makes every frequency nan or 0.
  POSENC_CHECK_ARG(std::isfinite(base) && base > 0, op, "base", "must be finite and > 0", base);
  POSENC_CHECK_ARG(is_float_dtype(sinusoidal_dtype(dtype)), op, "dtype",
                   "must be float16, bfloat16, float32 or float64", sinusoidal_dtype(dtype));
  // The positions exist, so a table too large to describe comes from dim.
  check_output_size(op, "dim", {positions.sym_size(0), c10::SymInt(dim)}, sinusoidal_dtype(dtype));
}

// The dim / 2 frequencies in fp64, computed on the host by every kernel (CPU and CUDA) so that
// both backends multiply positions by bit-identical values.
inline std::vector<double> sinusoidal_frequencies(int64_t dim, double base, bool interleaved) {
  const int64_t half = dim / 2;
  std::vector<double> freq(half);
  if (interleaved) {
    // Vaswani et al. §3.5: PE(p, 2i) = sin(p / base^(2i/dim)), PE(p, 2i+1) = cos(...).
    for (int64_t i = 0; i < half; ++i) {
      freq[i] = std::pow(base, -2.0 * static_cast<double>(i) / static_cast<double>(dim));
    }
  } else {
    // tensor2tensor get_timing_signal_1d: log-spaced from 1 down to 1/base over h-1 steps.
    const double step = std::log(base) / static_cast<double>(std::max<int64_t>(half - 1, 1));
    for (int64_t i = 0; i < half; ++i) freq[i] = std::exp(-static_cast<double>(i) * step);
  }
  return freq;
}

}  // namespace detail
}  // namespace posenc
