// ALiBi (Press et al. 2022) on CUDA: the same numbers as ../cpu/alibi_kernel.cpp (the bias
// bit for bit; the slope gradient, like the CPU one, from per-diagonal sums in fp64).
// The CPU kernel rejects non-finite slopes; here the slopes are not read on the host (that
// would synchronise the stream on every call), so NaN/inf slopes give NaN/inf biases.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "../alibi.h"
#include "bias_utils.cuh"

namespace posenc {
namespace {

using bias_cuda::kThreads;

// Rows are (head, query i); the threadIdx.x lanes fill a row with 16-byte stores. The distance
// is affine in j along a row (two runs, q_pos - k_pos then its negation, for the symmetric
// bias): no division per element, and 32-bit index math where the sizes allow.
template <typename scalar_t, typename index_t>
__global__ void alibi_bias_kernel(const scalar_t* __restrict__ slopes, scalar_t* __restrict__ out,
                                  int64_t rows, index_t q_len, index_t k_len, index_t dq,
                                  bool causal) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t row_stride = static_cast<int64_t>(gridDim.x) * blockDim.y;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y; row < rows;
       row += row_stride) {
    const int64_t h = row / q_len;
    const auto d0 = static_cast<index_t>(dq + (row - h * q_len));  // q_pos - k_pos at key 0
    const auto slope = static_cast<opmath_t>(slopes[h]);
    bias_cuda::fill_row(out + row * k_len, k_len, [&](index_t j) {
      const index_t d = d0 - j;
      const index_t dist = (!causal && d < 0) ? -d : d;  // detail::alibi_distance
      return static_cast<scalar_t>(static_cast<opmath_t>(-dist) * slope);  // +0 at d = 0
    });
  }
}

// d(bias)/d(slope) = -distance, so grad_slopes[h] = -sum over t of distance(t) * diag[h, t]
// (diag: the per-diagonal sums of the upstream gradient). Block per head, fixed-order block
// sum: deterministic.
template <typename scalar_t>
__global__ void alibi_grad_kernel(const double* __restrict__ diag,
                                  scalar_t* __restrict__ grad_slopes, int64_t heads, int64_t nd,
                                  int64_t d_top, bool causal) {
  __shared__ double scratch[33];
  for (int64_t h = blockIdx.x; h < heads; h += gridDim.x) {
    const double* drow = diag + h * nd;
    double acc = 0.0;
    for (int64_t t = threadIdx.x; t < nd; t += blockDim.x) {
      // q_pos - k_pos on diagonal t is d_top - t
      acc += drow[t] * static_cast<double>(detail::alibi_distance(d_top, t, causal));
    }
    acc = cuda::block_sum(acc, scratch);
    if (threadIdx.x == 0) grad_slopes[h] = static_cast<scalar_t>(-acc);
  }
}

void alibi_bias_fill_cuda(const at::Tensor& slopes, int64_t q_len, int64_t k_len,
                          int64_t q_offset, int64_t k_offset, bool causal, const at::Tensor& out) {
  if (out.numel() == 0) return;
  const int64_t rows = slopes.size(0) * q_len;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, slopes.scalar_type(), "alibi_bias_cuda", [&] {
    const auto launch = bias_cuda::vector_row_launch<scalar_t>(rows, k_len);
    bias_cuda::with_index_type(q_len, k_len, q_offset, k_offset, [&](auto index) {
      using index_t = decltype(index);
      alibi_bias_kernel<scalar_t, index_t><<<launch.grid, launch.block, 0, stream>>>(
          slopes.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), rows,
          static_cast<index_t>(q_len), static_cast<index_t>(k_len),
          static_cast<index_t>(q_offset - k_offset), causal);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

at::Tensor alibi_bias_cuda(const at::Tensor& slopes_in, int64_t q_len, int64_t k_len,
                           int64_t q_offset, int64_t k_offset, bool causal) {
  detail::check_alibi_bias("alibi_bias", slopes_in, q_len, k_len);
  detail::check_offsets("alibi_bias", q_offset, k_offset);
  const c10::cuda::CUDAGuard guard(slopes_in.device());
  const auto slopes = slopes_in.contiguous();
  auto out = detail::empty_output("alibi_bias", q_len > k_len ? "q_len" : "k_len",
                                  {slopes.size(0), q_len, k_len}, slopes.options());
  alibi_bias_fill_cuda(slopes, q_len, k_len, q_offset, k_offset, causal, out);
  return out;
}

void alibi_bias_out_cuda(const at::Tensor& slopes_in, int64_t q_len, int64_t k_len,
                         int64_t q_offset, int64_t k_offset, bool causal, at::Tensor& out) {
  detail::check_alibi_bias("alibi_bias", slopes_in, q_len, k_len);
  detail::check_offsets("alibi_bias", q_offset, k_offset);
  detail::check_bias_out("alibi_bias", out, slopes_in.size(0), q_len, k_len, slopes_in, "slopes");
  const c10::cuda::CUDAGuard guard(slopes_in.device());
  alibi_bias_fill_cuda(slopes_in.contiguous(), q_len, k_len, q_offset, k_offset, causal, out);
}

at::Tensor alibi_bias_backward_cuda(const at::Tensor& grad_in, const at::Tensor& slopes,
                                    int64_t q_len, int64_t k_len, int64_t q_offset,
                                    int64_t k_offset, bool causal) {
  detail::check_alibi_bias_backward("alibi_bias_backward", grad_in, slopes, q_len, k_len);
  detail::check_offsets("alibi_bias_backward", q_offset, k_offset);
  const c10::cuda::CUDAGuard guard(slopes.device());
  const int64_t heads = slopes.size(0);
  if (heads == 0 || q_len == 0 || k_len == 0) return at::zeros({heads}, slopes.options());
  auto grad_slopes = at::empty({heads}, slopes.options());
  // Read through strides (an expanded upstream gradient is not copied); dtype as on CPU.
  const auto grad = grad_in.scalar_type() == slopes.scalar_type() ? grad_in : grad_in.to(slopes.scalar_type());
  const auto diag = bias_cuda::diagonal_sums(grad);
  const int64_t nd = q_len + k_len - 1;
  const int64_t d_top = q_offset - k_offset + (q_len - 1);  // q_pos - k_pos on diagonal 0
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, slopes.scalar_type(), "alibi_bias_backward_cuda", [&] {
    alibi_grad_kernel<scalar_t><<<bias_cuda::blocks_for(heads), kThreads, 0, stream>>>(
        diag.const_data_ptr<double>(), grad_slopes.mutable_data_ptr<scalar_t>(), heads, nd,
        d_top, causal);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_slopes;
}

}  // namespace
}  // namespace posenc

TORCH_LIBRARY_IMPL(posenc, CUDA, m) {
  m.impl("alibi_bias", &posenc::alibi_bias_cuda);
  m.impl("alibi_bias.out", &posenc::alibi_bias_out_cuda);
  m.impl("alibi_bias_backward", &posenc::alibi_bias_backward_cuda);
}
