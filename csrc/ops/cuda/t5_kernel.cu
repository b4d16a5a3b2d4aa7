// T5 relative bias (Raffel et al. 2020) on CUDA: the numbers of ../cpu/t5_kernel.cpp. The bucket
// of every (i, j) is computed on the fly by the same C10_HOST_DEVICE detail::t5_bucket as on the
// CPU (fp32 log term in Hugging Face's order); no bucket tensor is materialised.
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "../t5.h"
#include "bias_utils.cuh"

namespace posenc {
namespace {

using bias_cuda::kThreads;

__global__ void t5_relative_bucket_kernel(const int64_t* __restrict__ rp, int64_t* __restrict__ out,
                                          int64_t n, bool bidirectional, int64_t num_buckets,
                                          int64_t max_distance) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < n; k += stride) {
    out[k] = detail::t5_bucket(rp[k], bidirectional, num_buckets, max_distance);
  }
}

// Heads handled by one thread per (i, j): the bucket (a logf) is computed once for all of them.
constexpr int64_t kHeadGroup = 8;

// Rows are (head group, query i); threadIdx.x walks the keys j. One pass over the output; the
// writes of a warp are consecutive keys of one head.
template <typename scalar_t>
__global__ void t5_bias_kernel(const scalar_t* __restrict__ table, scalar_t* __restrict__ out,
                               int64_t heads, int64_t groups, int64_t q_len, int64_t k_len,
                               int64_t d0, bool bidirectional, int64_t num_buckets,
                               int64_t max_distance) {
  const int64_t plane = q_len * k_len;
  const int64_t rows = groups * q_len;
  const int64_t row_stride = static_cast<int64_t>(gridDim.x) * blockDim.y;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y; row < rows;
       row += row_stride) {
    const int64_t g = row / q_len;
    const int64_t i = row - g * q_len;
    const int64_t h_begin = g * kHeadGroup;
    const int64_t h_end = std::min(heads, h_begin + kHeadGroup);
    scalar_t* orow = out + i * k_len;
    for (int64_t j = threadIdx.x; j < k_len; j += blockDim.x) {
      // as the CPU kernel: d0 + diagonal index = k_pos - q_pos
      const int64_t b = detail::t5_bucket(d0 + (j - i + q_len - 1), bidirectional, num_buckets,
                                          max_distance);
      const scalar_t* trow = table + b * heads;
      for (int64_t h = h_begin; h < h_end; ++h) orow[h * plane + j] = trow[h];
    }
  }
}

at::Tensor t5_relative_bucket_cuda(const at::Tensor& relative_position_in, bool bidirectional,
                                   int64_t num_buckets, int64_t max_distance) {
  detail::check_t5_relative_bucket("t5_relative_bucket", relative_position_in, bidirectional,
                                   num_buckets, max_distance);
  const c10::cuda::CUDAGuard guard(relative_position_in.device());
  const auto rp = relative_position_in.contiguous();
  auto out = at::empty(rp.sizes(), rp.options());
  const int64_t n = rp.numel();
  if (n == 0) return out;
  t5_relative_bucket_kernel<<<bias_cuda::blocks_for(n, kThreads), kThreads, 0,
                              c10::cuda::getCurrentCUDAStream()>>>(
      rp.const_data_ptr<int64_t>(), out.mutable_data_ptr<int64_t>(), n, bidirectional,
      num_buckets, max_distance);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

void t5_bias_fill_cuda(const at::Tensor& table, int64_t q_len, int64_t k_len, int64_t q_offset,
                       int64_t k_offset, bool bidirectional, int64_t max_distance,
                       const at::Tensor& out) {
  if (out.numel() == 0) return;
  const int64_t num_buckets = table.size(0);
  const int64_t heads = table.size(1);
  const int64_t groups = (heads + kHeadGroup - 1) / kHeadGroup;
  const int64_t d0 = k_offset - q_offset - (q_len - 1);  // k_pos - q_pos on diagonal 0
  const auto launch = bias_cuda::row_launch(groups * q_len, k_len);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, table.scalar_type(), "t5_bias_cuda", [&] {
    t5_bias_kernel<scalar_t><<<launch.grid, launch.block, 0, stream>>>(
        table.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), heads, groups, q_len,
        k_len, d0, bidirectional, num_buckets, max_distance);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

at::Tensor t5_bias_cuda(const at::Tensor& table_in, int64_t q_len, int64_t k_len,
                        int64_t q_offset, int64_t k_offset, bool bidirectional,
                        int64_t max_distance) {
  detail::check_t5_bias("t5_bias", table_in, q_len, k_len, bidirectional, max_distance);
  detail::check_offsets("t5_bias", q_offset, k_offset);
  const c10::cuda::CUDAGuard guard(table_in.device());
  const auto table = table_in.contiguous();
  auto out = detail::empty_output("t5_bias", q_len > k_len ? "q_len" : "k_len",
                                  {table.size(1), q_len, k_len}, table.options());
  t5_bias_fill_cuda(table, q_len, k_len, q_offset, k_offset, bidirectional, max_distance, out);
  return out;
}

void t5_bias_out_cuda(const at::Tensor& table_in, int64_t q_len, int64_t k_len,
                      int64_t q_offset, int64_t k_offset, bool bidirectional,
                      int64_t max_distance, at::Tensor& out) {
  detail::check_t5_bias("t5_bias", table_in, q_len, k_len, bidirectional, max_distance);
  detail::check_offsets("t5_bias", q_offset, k_offset);
  detail::check_bias_out("t5_bias", out, table_in.size(1), q_len, k_len, table_in, "table");
  const c10::cuda::CUDAGuard guard(table_in.device());
  t5_bias_fill_cuda(table_in.contiguous(), q_len, k_len, q_offset, k_offset, bidirectional,
                    max_distance, out);
}

// grad_table[b, h] = sum over the diagonals t with bucket(d0 + t) == b of diag[h, t]. Block per
// (b, h), threads stride over the diagonals, fixed-order block sum: deterministic.
template <typename scalar_t>
__global__ void t5_bucket_sum_kernel(const double* __restrict__ diag,
                                     scalar_t* __restrict__ grad_table, int64_t heads,
                                     int64_t num_buckets, int64_t nd, int64_t d0,
                                     bool bidirectional, int64_t max_distance) {
  __shared__ double scratch[33];
  for (int64_t unit = blockIdx.x; unit < num_buckets * heads; unit += gridDim.x) {
    const int64_t b = unit / heads;
    const int64_t h = unit - b * heads;
    const double* drow = diag + h * nd;
    double acc = 0.0;
    for (int64_t t = threadIdx.x; t < nd; t += blockDim.x) {
      if (detail::t5_bucket(d0 + t, bidirectional, num_buckets, max_distance) == b) acc += drow[t];
    }
    acc = bias_cuda::block_sum(acc, scratch);
    if (threadIdx.x == 0) grad_table[unit] = static_cast<scalar_t>(acc);
  }
}

at::Tensor t5_bias_backward_cuda(const at::Tensor& grad_in, const at::Tensor& table,
                                 int64_t q_len, int64_t k_len, int64_t q_offset, int64_t k_offset,
                                 bool bidirectional, int64_t max_distance) {
  detail::check_t5_bias_backward("t5_bias_backward", grad_in, table, q_len, k_len, bidirectional,
                                 max_distance);
  detail::check_offsets("t5_bias_backward", q_offset, k_offset);
  const c10::cuda::CUDAGuard guard(table.device());
  const int64_t num_buckets = table.size(0);
  const int64_t heads = table.size(1);
  if (heads == 0 || q_len == 0 || k_len == 0) return at::zeros({num_buckets, heads}, table.options());
  auto grad_table = at::empty({num_buckets, heads}, table.options());  // every entry is written
  // As the CPU kernel: an upstream gradient of another dtype is rounded to the table's first.
  const auto grad = grad_in.scalar_type() == table.scalar_type() ? grad_in : grad_in.to(table.scalar_type());
  const auto diag = bias_cuda::diagonal_sums(grad);
  const int64_t nd = q_len + k_len - 1;
  const int64_t d0 = k_offset - q_offset - (q_len - 1);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, table.scalar_type(), "t5_bias_backward_cuda", [&] {
    t5_bucket_sum_kernel<scalar_t><<<bias_cuda::blocks_for(num_buckets * heads), kThreads, 0, stream>>>(
        diag.const_data_ptr<double>(), grad_table.mutable_data_ptr<scalar_t>(), heads,
        num_buckets, nd, d0, bidirectional, max_distance);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_table;
}

}  // namespace
}  // namespace posenc

TORCH_LIBRARY_IMPL(posenc, CUDA, m) {
  m.impl("t5_relative_bucket", &posenc::t5_relative_bucket_cuda);
  m.impl("t5_bias", &posenc::t5_bias_cuda);
  m.impl("t5_bias.out", &posenc::t5_bias_out_cuda);
  m.impl("t5_bias_backward", &posenc::t5_bias_backward_cuda);
}
