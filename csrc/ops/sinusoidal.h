// Sinusoidal absolute table (Vaswani et al. 2017 §3.5): dispatcher handle and argument checks
// shared by the kernels.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>

#include <cmath>
#include <optional>

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
  check_dtype(op, "positions", positions, at::kLong);
  POSENC_CHECK_ARG(dim > 0 && dim % 2 == 0, op, "dim", "must be even and > 0", dim);
  // base <= 0 (or nan/inf) makes every frequency nan or 0.
  POSENC_CHECK_ARG(std::isfinite(base) && base > 0, op, "base", "must be finite and > 0", base);
  POSENC_CHECK_ARG(is_float_dtype(sinusoidal_dtype(dtype)), op, "dtype",
                   "must be float16, bfloat16, float32 or float64", sinusoidal_dtype(dtype));
}

}  // namespace detail
}  // namespace posenc
