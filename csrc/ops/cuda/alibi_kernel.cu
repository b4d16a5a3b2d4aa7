// ALiBi (Press et al. 2022) on CUDA: the same numbers as ../cpu/alibi_kernel.cpp.
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
#include "cuda_utils.cuh"

namespace posenc {
namespace {

constexpr int kThreads = 256;

// One pass over the (H, Lq, Lk) output: the distance comes from the flat index.
template <typename scalar_t>
__global__ void alibi_bias_kernel(const scalar_t* __restrict__ slopes, scalar_t* __restrict__ out,
                                  int64_t n, int64_t q_len, int64_t k_len, int64_t q_offset,
                                  int64_t k_offset, bool causal) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < n;
       idx += stride) {
    const int64_t j = idx % k_len;
    const int64_t row = idx / k_len;
    const int64_t d0 = q_offset + row % q_len - k_offset;
    const int64_t d = detail::alibi_distance(d0, j, causal);
    out[idx] = static_cast<scalar_t>(static_cast<opmath_t>(-d) *
                                     static_cast<opmath_t>(slopes[row / q_len]));
  }
}

// Pass 1 of the slope gradient: block (h, chunk) sums g * d over its chunk of head h's
// Lq * Lk elements in double. Fixed chunking and a fixed-order block reduction: deterministic.
template <typename scalar_t>
__global__ void alibi_grad_partial_kernel(const scalar_t* __restrict__ g, int64_t gs0, int64_t gs1,
                                          int64_t gs2, double* __restrict__ partial, int64_t heads,
                                          int64_t chunks, int64_t chunk_len, int64_t q_len,
                                          int64_t k_len, int64_t q_offset, int64_t k_offset,
                                          bool causal) {
  __shared__ double scratch[33];
  const int64_t per_head = q_len * k_len;
  for (int64_t unit = blockIdx.x; unit < heads * chunks; unit += gridDim.x) {
    const int64_t h = unit / chunks;
    const int64_t begin = (unit % chunks) * chunk_len;
    const int64_t end = begin + chunk_len < per_head ? begin + chunk_len : per_head;
    double acc = 0.0;
    for (int64_t t = begin + threadIdx.x; t < end; t += blockDim.x) {
      const int64_t i = t / k_len;
      const int64_t j = t % k_len;
      const int64_t d = detail::alibi_distance(q_offset + i - k_offset, j, causal);
      acc += static_cast<double>(g[h * gs0 + i * gs1 + j * gs2]) * static_cast<double>(d);
    }
    acc = cuda::block_sum(acc, scratch);
    if (threadIdx.x == 0) partial[unit] = acc;
  }
}

// Pass 2: one thread per head adds its chunks in order. d(bias)/d(slope) = -d.
template <typename scalar_t>
__global__ void alibi_grad_final_kernel(const double* __restrict__ partial,
                                        scalar_t* __restrict__ grad_slopes, int64_t heads,
                                        int64_t chunks) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t h = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; h < heads;
       h += stride) {
    double s = 0.0;
    for (int64_t c = 0; c < chunks; ++c) s += partial[h * chunks + c];
    grad_slopes[h] = static_cast<scalar_t>(-s);
  }
}

void alibi_bias_fill_cuda(const at::Tensor& slopes, int64_t q_len, int64_t k_len,
                          int64_t q_offset, int64_t k_offset, bool causal, const at::Tensor& out) {
  const int64_t n = out.numel();
  if (n == 0) return;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, slopes.scalar_type(), "alibi_bias_cuda", [&] {
    alibi_bias_kernel<scalar_t><<<cuda::num_blocks(n, kThreads), kThreads, 0, stream>>>(
        slopes.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), n, q_len, k_len,
        q_offset, k_offset, causal);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
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
  const auto grad = grad_in.to(slopes.scalar_type());

  // Chunks of at least 8192 elements, about 1024 blocks in all when the heads are few.
  const int64_t per_head = q_len * k_len;
  const int64_t chunks =
      std::clamp<int64_t>((1024 + heads - 1) / heads, 1, (per_head + 8191) / 8192);
  const int64_t chunk_len = (per_head + chunks - 1) / chunks;
  auto partial = at::empty({heads * chunks}, slopes.options().dtype(at::kDouble));

  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, slopes.scalar_type(), "alibi_bias_backward_cuda", [&] {
    alibi_grad_partial_kernel<scalar_t><<<cuda::num_blocks(heads * chunks), kThreads, 0, stream>>>(
        grad.const_data_ptr<scalar_t>(), grad.stride(0), grad.stride(1), grad.stride(2),
        partial.mutable_data_ptr<double>(), heads, chunks, chunk_len, q_len, k_len, q_offset,
        k_offset, causal);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    alibi_grad_final_kernel<scalar_t><<<cuda::num_blocks(heads, kThreads), kThreads, 0, stream>>>(
        partial.const_data_ptr<double>(), grad_slopes.mutable_data_ptr<scalar_t>(), heads, chunks);
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
