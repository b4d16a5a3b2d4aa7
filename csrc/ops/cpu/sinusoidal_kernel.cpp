#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "../sinusoidal.h"

namespace posenc {
namespace {

// double -> float rounded to odd: keeps the sticky information, so that a second rounding
// to a format with fewer mantissa bits (half, bfloat16) equals a single correct rounding
// of the double. Plain double -> float -> half can round twice.
float to_float_round_odd(double x) {
  float f = static_cast<float>(x);
  if (static_cast<double>(f) == x || std::isnan(x)) return f;
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  if (std::fabs(static_cast<double>(f)) > std::fabs(x)) bits -= 1;  // truncate toward zero
  bits |= 1u;
  std::memcpy(&f, &bits, sizeof(bits));
  return f;
}

// The fp64 value rounded once to the output dtype.
template <typename scalar_t>
scalar_t round_once(double x) {
  if constexpr (std::is_same_v<scalar_t, double> || std::is_same_v<scalar_t, float>) {
    return static_cast<scalar_t>(x);
  } else {
    return static_cast<scalar_t>(to_float_round_odd(x));
  }
}

at::Tensor sinusoidal_table_kernel(const at::Tensor& positions_in, int64_t dim, double base,
                                   bool interleaved, std::optional<at::ScalarType> dtype) {
  detail::check_sinusoidal_table("sinusoidal_table", positions_in, dim, base, dtype);
  const int64_t n = positions_in.size(0);
  // The output first: a table that cannot be allocated fails before an expanded positions
  // tensor is copied.
  auto out = detail::empty_output("sinusoidal_table", n >= dim ? "positions" : "dim", {n, dim},
                                  positions_in.options().dtype(detail::sinusoidal_dtype(dtype)));
  const auto positions = positions_in.to(at::kLong).contiguous();  // int32 ids widened
  if (out.numel() == 0) return out;

  // Frequencies in fp64, once per call.
  const int64_t half = dim / 2;
  const std::vector<double> freq = detail::sinusoidal_frequencies(dim, base, interleaved);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "sinusoidal_table_cpu", [&] {
    const int64_t* pos = positions.const_data_ptr<int64_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, n, detail::row_grain(dim), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const double p = static_cast<double>(pos[r]);
        scalar_t* orow = o + r * dim;
        for (int64_t i = 0; i < half; ++i) {
          const double angle = p * freq[i];
          const scalar_t s = round_once<scalar_t>(std::sin(angle));
          const scalar_t c = round_once<scalar_t>(std::cos(angle));
          if (interleaved) {
            orow[2 * i] = s;
            orow[2 * i + 1] = c;
          } else {
            orow[i] = s;
            orow[half + i] = c;
          }
        }
      }
    });
  });
  return out;
}

}  // namespace
}  // namespace posenc

TORCH_LIBRARY_IMPL(posenc, CPU, m) {
  m.impl("sinusoidal_table", &posenc::sinusoidal_table_kernel);
}
