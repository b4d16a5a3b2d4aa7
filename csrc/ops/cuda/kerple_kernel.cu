// KERPLE (Chi et al. 2022) on CUDA: the numbers of ../cpu/kerple_kernel.cpp up to the last ulp
// of CUDA's log1p/pow (values in the parameters' opmath type, gradients in double).
//
// The r2 >= 0 check of kind "log": r2 lives on the device, so the check copies the (heads,)
// vector to the host, which waits for the stream. We keep it, as torch.linalg does for its
// value errors: the same RuntimeError as on the CPU instead of a bias full of NaN that would
// surface far away in the softmax. The one exception is CUDA graph capture, where a sync is
// illegal: there the check is skipped and a negative r2 gives NaN where 1 + r2 * d < 0.
// The same host copy also rejects a non-finite r2 (as the CPU kernel does). r1, and r2 of
// kind "power", are not copied: finiteness is checked on CPU tensors only, so that a call
// needs no sync that it did not already have.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

#include "../kerple.h"
#include "bias_utils.cuh"

namespace posenc {
namespace {

using bias_cuda::kThreads;
using detail::KerpleKind;

__device__ __forceinline__ float log1p_(float x) { return log1pf(x); }
__device__ __forceinline__ double log1p_(double x) { return log1p(x); }
__device__ __forceinline__ float pow_(float x, float y) { return powf(x, y); }
__device__ __forceinline__ double pow_(double x, double y) { return pow(x, y); }

// -r1 * log(1 + r2 d) or -r1 * d^r2, +0 at d = 0 for every r2 (as the CPU kernel).
template <typename T, typename I>
__device__ __forceinline__ T kerple_value(bool log_kind, T r1, T r2, I d) {
  if (d == 0) return T(0);
  const T x = static_cast<T>(d);
  return T(0) - r1 * (log_kind ? log1p_(r2 * x) : pow_(x, r2));
}

void check_r2_values_cuda(const char* op, const at::Tensor& r2, KerpleKind kind) {
  if (kind != KerpleKind::Log || r2.numel() == 0) return;
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  C10_CUDA_CHECK(cudaStreamIsCapturing(c10::cuda::getCurrentCUDAStream(), &status));
  if (status != cudaStreamCaptureStatusNone) return;  // no host sync inside a graph capture
  detail::check_kerple_r2_values(op, r2.to(at::kCPU), kind);
}

// Rows are (head, query i); the threadIdx.x lanes fill a row with 16-byte stores. The distance
// along a row is affine in j (max(d, 0) or |d| of d = d0 - j): no division per element, and
// 32-bit index math where the sizes allow.
template <typename scalar_t, typename index_t>
__global__ void kerple_bias_kernel(const scalar_t* __restrict__ r1, const scalar_t* __restrict__ r2,
                                   scalar_t* __restrict__ out, int64_t rows, index_t q_len,
                                   index_t k_len, index_t dq, bool log_kind, bool causal) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t row_stride = static_cast<int64_t>(gridDim.x) * blockDim.y;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y; row < rows;
       row += row_stride) {
    const int64_t h = row / q_len;
    const auto d0 = static_cast<index_t>(dq + (row - h * q_len));  // q_pos - k_pos at key 0
    const opmath_t a = static_cast<opmath_t>(r1[h]);
    const opmath_t b = static_cast<opmath_t>(r2[h]);
    bias_cuda::fill_row(out + row * k_len, k_len, [&](index_t j) {
      const index_t d = d0 - j;
      const index_t dist = causal ? (d > 0 ? d : 0) : (d < 0 ? -d : d);  // detail::kerple_distance
      return static_cast<scalar_t>(kerple_value<opmath_t>(log_kind, a, b, dist));
    });
  }
}

// Block per head: the per-diagonal sums of the upstream gradient weighted by the derivatives at
// that diagonal's distance, in double, fixed-order block sums: deterministic.
template <typename scalar_t>
__global__ void kerple_grad_kernel(const double* __restrict__ diag, const scalar_t* __restrict__ r1,
                                   const scalar_t* __restrict__ r2, scalar_t* __restrict__ grad_r1,
                                   scalar_t* __restrict__ grad_r2, int64_t heads, int64_t nd,
                                   int64_t q_len, int64_t q_offset, int64_t k_offset,
                                   bool log_kind, bool causal) {
  __shared__ double scratch[33];
  for (int64_t h = blockIdx.x; h < heads; h += gridDim.x) {
    const double a = static_cast<double>(r1[h]);
    const double b = static_cast<double>(r2[h]);
    const double* drow = diag + h * nd;
    double acc1 = 0.0, acc2 = 0.0;
    for (int64_t t = threadIdx.x; t < nd; t += blockDim.x) {
      const int64_t di = detail::kerple_distance(t, q_len, q_offset, k_offset, causal);
      if (di == 0) continue;  // value 0 for every r1, r2: both derivatives are 0
      const double d = static_cast<double>(di);
      const double s = drow[t];
      if (log_kind) {
        // f = -a log(1 + b d): df/da = -log(1 + b d), df/db = -a d / (1 + b d)
        acc1 -= s * log1p(b * d);
        acc2 -= s * a * d / (1.0 + b * d);
      } else {
        // f = -a d^b: df/da = -d^b, df/db = -a d^b log d
        const double p = pow(d, b);
        acc1 -= s * p;
        acc2 -= s * a * p * log(d);
      }
    }
    acc1 = bias_cuda::block_sum(acc1, scratch);
    acc2 = bias_cuda::block_sum(acc2, scratch);
    if (threadIdx.x == 0) {
      grad_r1[h] = static_cast<scalar_t>(acc1);
      grad_r2[h] = static_cast<scalar_t>(acc2);
    }
  }
}

void kerple_bias_fill_cuda(const at::Tensor& r1, const at::Tensor& r2, int64_t q_len,
                           int64_t k_len, int64_t q_offset, int64_t k_offset, KerpleKind kind,
                           bool causal, const at::Tensor& out) {
  if (out.numel() == 0) return;
  const int64_t rows = r1.size(0) * q_len;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, r1.scalar_type(), "kerple_bias_cuda", [&] {
    const auto launch = bias_cuda::vector_row_launch<scalar_t>(rows, k_len);
    bias_cuda::with_index_type(q_len, k_len, q_offset, k_offset, [&](auto index) {
      using index_t = decltype(index);
      kerple_bias_kernel<scalar_t, index_t><<<launch.grid, launch.block, 0, stream>>>(
          r1.const_data_ptr<scalar_t>(), r2.const_data_ptr<scalar_t>(),
          out.mutable_data_ptr<scalar_t>(), rows, static_cast<index_t>(q_len),
          static_cast<index_t>(k_len), static_cast<index_t>(q_offset - k_offset),
          kind == KerpleKind::Log, causal);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

at::Tensor kerple_bias_cuda(const at::Tensor& r1_in, const at::Tensor& r2_in, int64_t q_len,
                            int64_t k_len, int64_t q_offset, int64_t k_offset,
                            c10::string_view kind_str, bool causal) {
  const char* op = "kerple_bias";
  const auto kind = detail::check_kerple_bias(op, r1_in, r2_in, q_len, k_len, kind_str);
  detail::check_offsets(op, q_offset, k_offset);
  const c10::cuda::CUDAGuard guard(r1_in.device());
  const auto r1 = r1_in.contiguous();
  const auto r2 = r2_in.contiguous();
  check_r2_values_cuda(op, r2, kind);
  auto out = detail::empty_output("kerple_bias", q_len > k_len ? "q_len" : "k_len",
                                  {r1.size(0), q_len, k_len}, r1.options());
  kerple_bias_fill_cuda(r1, r2, q_len, k_len, q_offset, k_offset, kind, causal, out);
  return out;
}

void kerple_bias_out_cuda(const at::Tensor& r1_in, const at::Tensor& r2_in, int64_t q_len,
                          int64_t k_len, int64_t q_offset, int64_t k_offset,
                          c10::string_view kind_str, bool causal, at::Tensor& out) {
  const char* op = "kerple_bias";
  const auto kind = detail::check_kerple_bias(op, r1_in, r2_in, q_len, k_len, kind_str);
  detail::check_offsets(op, q_offset, k_offset);
  detail::check_bias_out(op, out, r1_in.size(0), q_len, k_len, r1_in, "r1");
  const c10::cuda::CUDAGuard guard(r1_in.device());
  const auto r1 = r1_in.contiguous();
  const auto r2 = r2_in.contiguous();
  check_r2_values_cuda(op, r2, kind);
  kerple_bias_fill_cuda(r1, r2, q_len, k_len, q_offset, k_offset, kind, causal, out);
}

std::tuple<at::Tensor, at::Tensor> kerple_bias_backward_cuda(
    const at::Tensor& grad_in, const at::Tensor& r1_in, const at::Tensor& r2_in, int64_t q_len,
    int64_t k_len, int64_t q_offset, int64_t k_offset, c10::string_view kind_str, bool causal) {
  const char* op = "kerple_bias_backward";
  const auto kind =
      detail::check_kerple_bias_backward(op, grad_in, r1_in, r2_in, q_len, k_len, kind_str);
  detail::check_offsets(op, q_offset, k_offset);
  const c10::cuda::CUDAGuard guard(r1_in.device());
  const auto r1 = r1_in.contiguous();
  const auto r2 = r2_in.contiguous();
  check_r2_values_cuda(op, r2, kind);
  const int64_t heads = r1.size(0);
  if (heads == 0 || q_len == 0 || k_len == 0) {
    return {at::zeros({heads}, r1.options()), at::zeros({heads}, r1.options())};
  }
  auto grad_r1 = at::empty({heads}, r1.options());  // every entry is written
  auto grad_r2 = at::empty({heads}, r1.options());
  // As the CPU kernel: an upstream gradient of another dtype is rounded to r1's first.
  const auto grad = grad_in.scalar_type() == r1.scalar_type() ? grad_in : grad_in.to(r1.scalar_type());
  const auto diag = bias_cuda::diagonal_sums(grad);
  const int64_t nd = q_len + k_len - 1;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, r1.scalar_type(), "kerple_bias_backward_cuda", [&] {
    kerple_grad_kernel<scalar_t><<<bias_cuda::blocks_for(heads), kThreads, 0, stream>>>(
        diag.const_data_ptr<double>(), r1.const_data_ptr<scalar_t>(), r2.const_data_ptr<scalar_t>(),
        grad_r1.mutable_data_ptr<scalar_t>(), grad_r2.mutable_data_ptr<scalar_t>(), heads, nd,
        q_len, q_offset, k_offset, kind == KerpleKind::Log, causal);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {grad_r1, grad_r2};
}

}  // namespace
}  // namespace posenc

TORCH_LIBRARY_IMPL(posenc, CUDA, m) {
  m.impl("kerple_bias", &posenc::kerple_bias_cuda);
  m.impl("kerple_bias.out", &posenc::kerple_bias_out_cuda);
  m.impl("kerple_bias_backward", &posenc::kerple_bias_backward_cuda);
}
