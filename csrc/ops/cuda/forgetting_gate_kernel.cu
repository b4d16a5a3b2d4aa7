// Forgetting-gate bias (Lin et al. 2025) on CUDA: the numbers of ../cpu/forgetting_gate_kernel.cpp
// (prefix sums in fp64, fgate_scan.cuh; their chunked order rounds differently from the CPU's
// sequential one in the last fp64 bits). Values are not read on the host (a stream sync per
// call): non-finite log gates give NaN/inf biases here, positive ones are used as given.
// Backward, deterministic: one warp per output row sums it (fixed shuffle tree), one thread
// per key column sums it over the rows in order, then dc = rows - cols and the reverse scan.
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <math_constants.h>
#include <torch/library.h>

#include "../forgetting_gate.h"
#include "../position_terms.h"
#include "cuda_utils.cuh"
#include "fgate_scan.cuh"

namespace posenc {
namespace {

constexpr int kThreads = 256;
constexpr const char* kOp = detail::kFgateOp;
constexpr const char* kBwdOp = detail::kFgateBackwardOp;

template <typename scalar_t>
__global__ void fgate_bias_kernel(const double* __restrict__ c, scalar_t* __restrict__ out,
                                  int64_t n, int64_t q_len, int64_t k_len, int64_t base) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < n;
       idx += stride) {
    const int64_t j = idx % k_len, row = idx / k_len;
    const int64_t bh = row / q_len, tq = detail::fgate_term_query_index(base, row % q_len);
    const double* cr = c + bh * k_len;
    out[idx] = j <= tq ? detail::fgate_term_value<scalar_t>(cr[tq], cr[j])
                       : static_cast<scalar_t>(-CUDART_INF_F);
  }
}

// dc[bh, tq(i)] = sum_{j <= tq} g[bh, i, j]: one warp per row.
template <typename scalar_t>
__global__ void fgate_row_sum_kernel(const scalar_t* __restrict__ g, double* __restrict__ dc,
                                     int64_t rows, int64_t q_len, int64_t k_len, int64_t base) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = blockDim.x >> 5;
  const int64_t step = static_cast<int64_t>(gridDim.x) * warps;
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * warps + (threadIdx.x >> 5); r < rows;
       r += step) {
    const int64_t bh = r / q_len, tq = detail::fgate_term_query_index(base, r % q_len);
    const scalar_t* grow = g + r * k_len;
    double acc = 0.0;
    for (int64_t j = lane; j <= tq; j += 32) acc += static_cast<double>(grow[j]);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
    if (lane == 0) dc[bh * k_len + tq] = acc;  // one query per key index: no race
  }
}

// dc[bh, j] -= sum over the rows i with tq(i) >= j of g[bh, i, j], rows in order.
template <typename scalar_t>
__global__ void fgate_col_sum_kernel(const scalar_t* __restrict__ g, double* __restrict__ dc,
                                     int64_t cols, int64_t q_len, int64_t k_len, int64_t base) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t x = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; x < cols;
       x += stride) {
    const int64_t bh = x / k_len, j = x % k_len;
    const scalar_t* gp = g + bh * q_len * k_len + j;
    double acc = 0.0;
    for (int64_t i = j - base > 0 ? j - base : 0; i < q_len; ++i) {
      acc += static_cast<double>(gp[i * k_len]);
    }
    dc[x] = detail::fgate_term_dc(dc[x], acc);
  }
}

template <typename scalar_t>
__global__ void fgate_cast_kernel(const double* __restrict__ in, scalar_t* __restrict__ out,
                                  int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t x = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; x < n;
       x += stride) {
    out[x] = static_cast<scalar_t>(in[x]);
  }
}

at::Tensor forgetting_gate_bias_cuda(const at::Tensor& log_fgate_in, int64_t q_len,
                                     int64_t q_offset, int64_t k_offset) {
  detail::check_forgetting_gate_bias(kOp, log_fgate_in, q_len, q_offset, k_offset);
  const c10::cuda::CUDAGuard guard(log_fgate_in.device());
  const auto log_fgate = log_fgate_in.contiguous();
  const int64_t B = log_fgate.size(0), H = log_fgate.size(1), K = log_fgate.size(2);
  auto out = detail::empty_output(kOp, "log_fgate", {B, H, q_len, K}, log_fgate.options());
  const int64_t n = out.numel();
  if (n == 0) return out;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  auto c = at::empty({B * H * K}, log_fgate.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, log_fgate.scalar_type(), "forgetting_gate_bias_cuda", [&] {
    cuda::ScanRows R;
    R.rows = B * H;
    R.len = K;
    cuda::fgate_scan(log_fgate.const_data_ptr<scalar_t>(), c.mutable_data_ptr<double>(), R, false,
                     stream);
    fgate_bias_kernel<scalar_t><<<cuda::num_blocks(n, kThreads), kThreads, 0, stream>>>(
        c.const_data_ptr<double>(), out.mutable_data_ptr<scalar_t>(), n, q_len, K,
        q_offset - k_offset);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor forgetting_gate_bias_backward_cuda(const at::Tensor& grad_in,
                                              const at::Tensor& log_fgate, int64_t q_len,
                                              int64_t q_offset, int64_t k_offset) {
  detail::check_forgetting_gate_bias_backward(kBwdOp, grad_in, log_fgate, q_len, q_offset,
                                              k_offset);
  const c10::cuda::CUDAGuard guard(log_fgate.device());
  const int64_t B = log_fgate.size(0), H = log_fgate.size(1), K = log_fgate.size(2);
  if (B * H * K == 0 || q_len == 0) return at::zeros({B, H, K}, log_fgate.options());
  auto grad_l = at::empty({B, H, K}, log_fgate.options());
  const auto grad = grad_in.to(log_fgate.scalar_type()).contiguous();
  const int64_t base = q_offset - k_offset;
  const auto f64 = log_fgate.options().dtype(at::kDouble);
  auto dc = at::zeros({B * H * K}, f64);
  auto acc = at::empty({B * H * K}, f64);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "forgetting_gate_bias_backward_cuda", [&] {
    const scalar_t* g = grad.const_data_ptr<scalar_t>();
    const int64_t rows = B * H * q_len, cols = B * H * K;
    fgate_row_sum_kernel<scalar_t><<<cuda::num_blocks(rows, kThreads / 32), kThreads, 0, stream>>>(
        g, dc.mutable_data_ptr<double>(), rows, q_len, K, base);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    fgate_col_sum_kernel<scalar_t><<<cuda::num_blocks(cols, kThreads), kThreads, 0, stream>>>(
        g, dc.mutable_data_ptr<double>(), cols, q_len, K, base);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    cuda::ScanRows R;
    R.rows = B * H;
    R.len = K;
    cuda::fgate_scan(dc.const_data_ptr<double>(), acc.mutable_data_ptr<double>(), R, true, stream);
    fgate_cast_kernel<scalar_t><<<cuda::num_blocks(cols, kThreads), kThreads, 0, stream>>>(
        acc.const_data_ptr<double>(), grad_l.mutable_data_ptr<scalar_t>(), cols);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_l;
}

}  // namespace
}  // namespace posenc

TORCH_LIBRARY_IMPL(posenc, CUDA, m) {
  m.impl("forgetting_gate_bias", &posenc::forgetting_gate_bias_cuda);
  m.impl("forgetting_gate_bias_backward", &posenc::forgetting_gate_bias_backward_cuda);
}
