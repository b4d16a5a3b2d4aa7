// T5 relative bias (Raffel et al. 2020) on CUDA: the numbers of ../cpu/t5_kernel.cpp. The bucket
// depends on the diagonal j - i only: it is computed once per diagonal (q_len + k_len - 1
// int32, never a (q_len, k_len) bucket tensor) by the same C10_HOST_DEVICE detail::t5_bucket
// as on the CPU (fp32 log term in Hugging Face's order).
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

// bucket[t] = the bucket of diagonal t = j - i + q_len - 1 (relative position d0 + t), computed
// once per diagonal by the same detail::t5_bucket as on the CPU and shared by every head and row.
// With run_lo / run_end (backward): each bucket's diagonals form one run (the bucket is
// monotone in |d0 + t| on each side of 0), whose first diagonal and one-past-last are recorded
// by the threads at run boundaries (atomicMin / atomicMax: the result does not depend on
// their order). Were fp32 rounding ever to split a run, the range still covers all its pieces.
__global__ void t5_diag_bucket_kernel(int32_t* __restrict__ bucket, int64_t nd, int64_t d0,
                                      bool bidirectional, int64_t num_buckets,
                                      int64_t max_distance,
                                      unsigned long long* __restrict__ run_lo,
                                      unsigned long long* __restrict__ run_end) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  auto bucket_of = [&](int64_t t) {
    return detail::t5_bucket(d0 + t, bidirectional, num_buckets, max_distance);
  };
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < nd;
       t += stride) {
    const int64_t b = bucket_of(t);
    bucket[t] = static_cast<int32_t>(b);
    if (run_lo == nullptr) continue;
    if (t == 0 || bucket_of(t - 1) != b) atomicMin(run_lo + b, static_cast<unsigned long long>(t));
    if (t == nd - 1 || bucket_of(t + 1) != b) {
      atomicMax(run_end + b, static_cast<unsigned long long>(t + 1));
    }
  }
}

// Rows are (head, query i); the threadIdx.x lanes fill a row with 16-byte stores. Row i reads
// the diagonal buckets from bucket + q_len - 1 - i on: the runs of one bucket are the same in
// every row, shifted by the row.
template <typename scalar_t, typename index_t>
__global__ void t5_bias_kernel(const scalar_t* __restrict__ table,
                               const int32_t* __restrict__ bucket, scalar_t* __restrict__ out,
                               int64_t heads, int64_t rows, index_t q_len, index_t k_len) {
  const int64_t row_stride = static_cast<int64_t>(gridDim.x) * blockDim.y;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y; row < rows;
       row += row_stride) {
    const int64_t h = row / q_len;
    const int64_t i = row - h * q_len;
    const int32_t* brow = bucket + (q_len - 1 - i);
    const scalar_t* column = table + h;  // table[b, h] = column[b * heads]
    bias_cuda::fill_row(out + row * k_len, k_len,
                        [&](index_t j) { return column[static_cast<int64_t>(brow[j]) * heads]; });
  }
}

// (q_len + k_len - 1,) int32: the bucket of each diagonal (see t5_diag_bucket_kernel).
at::Tensor diagonal_buckets_cuda(const char* op, const at::Tensor& like, int64_t q_len,
                                 int64_t k_len, int64_t q_offset, int64_t k_offset,
                                 bool bidirectional, int64_t num_buckets, int64_t max_distance,
                                 at::Tensor* run_lo = nullptr, at::Tensor* run_end = nullptr) {
  const int64_t nd = q_len + k_len - 1;
  const int64_t d0 = k_offset - q_offset - (q_len - 1);  // k_pos - q_pos on diagonal 0
  POSENC_CHECK_ARG(num_buckets <= INT32_MAX, op, "table",
                   "must have at most 2^31 - 1 rows (buckets) on CUDA", num_buckets, " rows");
  auto bucket = at::empty({nd}, like.options().dtype(at::kInt));
  unsigned long long* lo = nullptr;
  unsigned long long* end = nullptr;
  if (run_lo != nullptr) {
    const auto i64 = like.options().dtype(at::kLong);
    *run_lo = at::full({num_buckets}, INT64_MAX, i64);  // no run: lo = INT64_MAX, end = 0
    *run_end = at::zeros({num_buckets}, i64);
    lo = reinterpret_cast<unsigned long long*>(run_lo->mutable_data_ptr<int64_t>());
    end = reinterpret_cast<unsigned long long*>(run_end->mutable_data_ptr<int64_t>());
  }
  t5_diag_bucket_kernel<<<bias_cuda::blocks_for(nd, kThreads), kThreads, 0,
                          c10::cuda::getCurrentCUDAStream()>>>(
      bucket.mutable_data_ptr<int32_t>(), nd, d0, bidirectional, num_buckets, max_distance, lo,
      end);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return bucket;
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
  const int64_t rows = heads * q_len;
  const auto bucket = diagonal_buckets_cuda("t5_bias", table, q_len, k_len, q_offset, k_offset,
                                            bidirectional, num_buckets, max_distance);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, table.scalar_type(), "t5_bias_cuda", [&] {
    const auto launch = bias_cuda::vector_row_launch<scalar_t>(rows, k_len);
    // the offsets only enter through the bucket table
    bias_cuda::with_index_type(q_len, k_len, 0, 0, [&](auto index) {
      using index_t = decltype(index);
      t5_bias_kernel<scalar_t, index_t><<<launch.grid, launch.block, 0, stream>>>(
          table.const_data_ptr<scalar_t>(), bucket.const_data_ptr<int32_t>(),
          out.mutable_data_ptr<scalar_t>(), heads, rows, static_cast<index_t>(q_len),
          static_cast<index_t>(k_len));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
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

// grad_table[b, h] = sum over the diagonals t of bucket b of diag[h, t]. Block per (b, h),
// threads stride over b's run [run_lo[b], run_end[b]) (checking each diagonal's bucket, so the
// sum is right even if the run were split), fixed-order block sum: deterministic. The work is
// the run's length, O(heads * (q_len + k_len)) in all.
template <typename scalar_t>
__global__ void t5_bucket_sum_kernel(const double* __restrict__ diag,
                                     const int32_t* __restrict__ bucket,
                                     const int64_t* __restrict__ run_lo,
                                     const int64_t* __restrict__ run_end,
                                     scalar_t* __restrict__ grad_table, int64_t heads,
                                     int64_t num_buckets, int64_t nd) {
  __shared__ double scratch[33];
  for (int64_t unit = blockIdx.x; unit < num_buckets * heads; unit += gridDim.x) {
    const int64_t b = unit / heads;
    const int64_t h = unit - b * heads;
    const double* drow = diag + h * nd;
    const int64_t lo = run_lo[b], end = run_end[b];  // lo = INT64_MAX, end = 0: no run
    double acc = 0.0;
    if (lo < end) {
      for (int64_t t = lo + threadIdx.x; t < end; t += blockDim.x) {
        if (bucket[t] == b) acc += drow[t];
      }
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
  at::Tensor run_lo, run_end;
  const auto bucket = diagonal_buckets_cuda("t5_bias_backward", table, q_len, k_len, q_offset,
                                            k_offset, bidirectional, num_buckets, max_distance,
                                            &run_lo, &run_end);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, table.scalar_type(), "t5_bias_backward_cuda", [&] {
    t5_bucket_sum_kernel<scalar_t><<<bias_cuda::blocks_for(num_buckets * heads), kThreads, 0, stream>>>(
        diag.const_data_ptr<double>(), bucket.const_data_ptr<int32_t>(),
        run_lo.const_data_ptr<int64_t>(), run_end.const_data_ptr<int64_t>(),
        grad_table.mutable_data_ptr<scalar_t>(), heads, num_buckets, nd);
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
