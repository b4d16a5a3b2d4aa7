// Helpers shared by the CUDA kernels of the bias families (T5, KERPLE) and the sinusoidal
// table: launch shapes, a deterministic block reduction, and the per-diagonal reduction of an
// upstream (heads, q_len, k_len) gradient that every "bias depends on k_pos - q_pos only"
// backward starts from.
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/macros/Macros.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

namespace posenc {
namespace bias_cuda {

constexpr int kThreads = 256;
// Grid-stride loops everywhere, so the grid can be capped; 65535 blocks of 256 threads fill
// an H200 many times over.
constexpr int64_t kMaxBlocks = 65535;

inline unsigned int blocks_for(int64_t units, int64_t per_block = 1) {
  const int64_t want = (units + per_block - 1) / std::max<int64_t>(per_block, 1);
  return static_cast<unsigned int>(std::clamp<int64_t>(want, 1, kMaxBlocks));
}

// Launch shape for an output made of `rows` rows of `row_len` elements: threadIdx.x walks the
// row, threadIdx.y picks one of the block's rows. A row's indices are decoded once per row, so
// the per-element work has no 64-bit division. Short rows share a block (at least 32 lanes).
struct RowLaunch {
  dim3 grid, block;
};

inline RowLaunch row_launch(int64_t rows, int64_t row_len) {
  int bx = 32;
  while (bx < row_len && bx < kThreads) bx *= 2;
  const int by = kThreads / bx;
  return {dim3(blocks_for(rows, by)), dim3(bx, by)};
}

// Sum of v over the block, returned to every thread. Deterministic: a fixed shuffle tree per
// warp, then warp 0 folds the warp sums in warp order. All threads of the block must call it;
// the block size must be a multiple of 32. `scratch` holds >= 33 elements of shared memory.
template <typename T>
__device__ T block_sum(T v, T* scratch) {
  const int tid = threadIdx.y * blockDim.x + threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const int warps = (blockDim.x * blockDim.y) >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  if (warp == 0) {
    T w = lane < warps ? scratch[lane] : T(0);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) w += __shfl_down_sync(0xffffffffu, w, o);
    if (lane == 0) scratch[32] = w;
  }
  __syncthreads();
  const T total = scratch[32];
  __syncthreads();
  return total;
}

// ---- per-diagonal sums of an upstream gradient ---------------------------------------------
//
// Diagonal t = j - i + q_len - 1 of a (q_len, k_len) grid holds the pairs with one relative
// position. Pass 1: block (h, tile) sums a tile of kDiagRows rows along each diagonal it
// crosses (thread = diagonal; at each step r the threads of a warp read consecutive keys, so
// the loads are coalesced), in double, rows in order. Pass 2: thread (h, t) adds the tiles that
// cross t in tile order. Every sum has a fixed order whatever the launch shape: the result is
// bit-reproducible without atomics.
constexpr int64_t kDiagRows = 64;

C10_HOST_DEVICE inline int64_t floor_div(int64_t a, int64_t b) {  // b > 0
  return a >= 0 ? a / b : -((-a + b - 1) / b);
}

template <typename scalar_t>
__global__ void diag_partial_kernel(const scalar_t* __restrict__ g, int64_t s0, int64_t s1,
                                    int64_t s2, double* __restrict__ partial, int64_t units,
                                    int64_t tiles, int64_t tile_rows, int64_t width,
                                    int64_t q_len, int64_t k_len) {
  for (int64_t unit = blockIdx.x; unit < units; unit += gridDim.x) {
    const int64_t h = unit / tiles;
    const int64_t i0 = (unit - h * tiles) * tile_rows;
    const int64_t rows = std::min(tile_rows, q_len - i0);
    const scalar_t* gt = g + h * s0 + i0 * s1;
    double* out = partial + unit * width;
    for (int64_t local = threadIdx.x; local < width; local += blockDim.x) {
      const int64_t jr = local - (tile_rows - 1);  // key index at tile row 0
      const int64_t r_begin = std::max<int64_t>(0, -jr);
      const int64_t r_end = std::min(rows, k_len - jr);
      double acc = 0.0;
#pragma unroll 4
      for (int64_t r = r_begin; r < r_end; ++r) {
        acc += static_cast<double>(gt[r * s1 + (jr + r) * s2]);
      }
      out[local] = acc;
    }
  }
}

template <typename acc_t>
__global__ void diag_reduce_kernel(const acc_t* __restrict__ partial, acc_t* __restrict__ diag,
                                   int64_t heads, int64_t nd, int64_t tiles, int64_t tile_rows,
                                   int64_t width, int64_t q_len) {
  const int64_t n = heads * nd;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < n;
       idx += stride) {
    const int64_t h = idx / nd;
    const int64_t t = idx - h * nd;
    // tile k holds diagonal t at local index a + k * tile_rows, valid in [0, width)
    const int64_t a = t - q_len + tile_rows;
    const int64_t k_lo = std::max<int64_t>(0, -floor_div(a, tile_rows));
    const int64_t k_hi = std::min(tiles - 1, floor_div(width - 1 - a, tile_rows));
    acc_t acc = 0;
    for (int64_t k = k_lo; k <= k_hi; ++k) acc += partial[(h * tiles + k) * width + a + k * tile_rows];
    diag[idx] = acc;
  }
}

// (heads, q_len + k_len - 1) float64 on grad's device: out[h, t] = sum over the pairs (i, j)
// of diagonal t of grad[h, i, j]. grad: (heads, q_len, k_len), any strides, non-empty. The
// caller holds a device guard for grad's device.
inline at::Tensor diagonal_sums(const at::Tensor& grad) {
  const int64_t heads = grad.size(0), q_len = grad.size(1), k_len = grad.size(2);
  const int64_t nd = q_len + k_len - 1;
  const int64_t tile_rows = std::min(kDiagRows, q_len);
  const int64_t tiles = (q_len + tile_rows - 1) / tile_rows;
  const int64_t width = k_len + tile_rows - 1;
  const auto f64 = grad.options().dtype(at::kDouble);
  auto partial = at::empty({heads * tiles, width}, f64);
  auto diag = at::empty({heads, nd}, f64);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "posenc_diag_partial", [&] {
    diag_partial_kernel<scalar_t><<<blocks_for(heads * tiles), kThreads, 0, stream>>>(
        grad.const_data_ptr<scalar_t>(), grad.stride(0), grad.stride(1), grad.stride(2),
        partial.mutable_data_ptr<double>(), heads * tiles, tiles, tile_rows, width, q_len, k_len);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  diag_reduce_kernel<double><<<blocks_for(heads * nd, kThreads), kThreads, 0, stream>>>(
      partial.const_data_ptr<double>(), diag.mutable_data_ptr<double>(), heads, nd, tiles,
      tile_rows, width, q_len);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return diag;
}

}  // namespace bias_cuda
}  // namespace posenc
