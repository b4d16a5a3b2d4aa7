// Sinusoidal table (Vaswani et al. 2017 §3.5) on CUDA: the numbers of
// ../cpu/sinusoidal_kernel.cpp. The frequencies are computed on the host by the same function
// as the CPU kernel and copied to the device, so each angle p * w_i is the same fp64 product on
// both backends; sin and cos are CUDA's precise double functions (within 2 ulp of glibc), and
// the result is rounded once to the output dtype. Not differentiable: no backward.
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "../sinusoidal.h"
#include "bias_utils.cuh"

namespace posenc {
namespace {

// double -> float rounded to odd (truncate, then set the last bit if inexact), so that the
// second rounding to half/bfloat16 equals one correct rounding of the double; as the CPU kernel.
__device__ __forceinline__ float to_float_round_odd(double x) {
  const float f = __double2float_rz(x);
  if (static_cast<double>(f) == x || isnan(x)) return f;
  return __int_as_float(__float_as_int(f) | 1);
}

template <typename scalar_t>
__device__ __forceinline__ scalar_t round_once(double x) {
  if constexpr (std::is_same_v<scalar_t, double> || std::is_same_v<scalar_t, float>) {
    return static_cast<scalar_t>(x);
  } else {
    return static_cast<scalar_t>(to_float_round_odd(x));
  }
}

// Row r = position, threadIdx.x walks the dim / 2 frequency pairs of that row.
template <typename scalar_t>
__global__ void sinusoidal_table_kernel(const int64_t* __restrict__ pos,
                                        const double* __restrict__ freq,
                                        scalar_t* __restrict__ out, int64_t n, int64_t half,
                                        bool interleaved) {
  const int64_t dim = 2 * half;
  const int64_t row_stride = static_cast<int64_t>(gridDim.x) * blockDim.y;
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y; r < n;
       r += row_stride) {
    const double p = static_cast<double>(pos[r]);
    scalar_t* orow = out + r * dim;
    for (int64_t i = threadIdx.x; i < half; i += blockDim.x) {
      double s, c;
      sincos(p * freq[i], &s, &c);
      if (interleaved) {
        orow[2 * i] = round_once<scalar_t>(s);
        orow[2 * i + 1] = round_once<scalar_t>(c);
      } else {
        orow[i] = round_once<scalar_t>(s);
        orow[half + i] = round_once<scalar_t>(c);
      }
    }
  }
}

at::Tensor sinusoidal_table_cuda(const at::Tensor& positions_in, int64_t dim, double base,
                                 bool interleaved, std::optional<at::ScalarType> dtype) {
  detail::check_sinusoidal_table("sinusoidal_table", positions_in, dim, base, dtype);
  const c10::cuda::CUDAGuard guard(positions_in.device());
  const auto positions = positions_in.to(at::kLong).contiguous();  // int32 ids widened
  const int64_t n = positions.size(0);
  auto out = detail::empty_output("sinusoidal_table", n >= dim ? "positions" : "dim", {n, dim},
                                  positions.options().dtype(detail::sinusoidal_dtype(dtype)));
  if (out.numel() == 0) return out;

  const int64_t half = dim / 2;
  const std::vector<double> freq_host = detail::sinusoidal_frequencies(dim, base, interleaved);
  // Pinned staging + non_blocking copy: stream-ordered, no host synchronisation; the caching
  // host allocator keeps the staging buffer alive until the copy has run.
  auto staging = at::empty({half}, at::TensorOptions().dtype(at::kDouble).pinned_memory(true));
  std::copy(freq_host.begin(), freq_host.end(), staging.mutable_data_ptr<double>());
  const auto freq = staging.to(out.device(), /*non_blocking=*/true);

  const auto launch = bias_cuda::row_launch(n, half);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "sinusoidal_table_cuda", [&] {
    sinusoidal_table_kernel<scalar_t><<<launch.grid, launch.block, 0, stream>>>(
        positions.const_data_ptr<int64_t>(), freq.const_data_ptr<double>(),
        out.mutable_data_ptr<scalar_t>(), n, half, interleaved);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace
}  // namespace posenc

TORCH_LIBRARY_IMPL(posenc, CUDA, m) {
  m.impl("sinusoidal_table", &posenc::sinusoidal_table_cuda);
}
