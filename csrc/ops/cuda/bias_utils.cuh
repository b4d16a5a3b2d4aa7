// Helpers shared by the CUDA kernels of the bias families (ALiBi, T5, KERPLE) and the
// sinusoidal table: row launch shapes, the vectorised fill of an output row, and the
// per-diagonal reduction of an upstream (heads, q_len, k_len) gradient that every "bias
// depends on k_pos - q_pos only" backward starts from.
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/macros/Macros.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "cuda_utils.cuh"

namespace posenc {
namespace bias_cuda {

constexpr int kThreads = 256;
using cuda::block_sum;
using cuda::kMaxBlocks;
// Grid-stride loops everywhere, so the grid is capped (see cuda_utils.cuh).
inline unsigned int blocks_for(int64_t units, int64_t per_block = 1) {
  return cuda::num_blocks(units, per_block);
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

// The launch for fill_row: threadIdx.x takes a 16-byte vector of the row at a time.
template <typename scalar_t>
inline RowLaunch vector_row_launch(int64_t rows, int64_t row_len) {
  return row_launch(rows, row_len / cuda::kVec<scalar_t> + 2);
}

// Whether the in-row indices and every distance q_pos - k_pos = (q_offset - k_offset) + i - j
// of a (q_len, k_len) grid fit in int32, so the per-element index math can be 32-bit (with a
// margin for a grid-stride step past the end of a row).
inline bool fits_int32(int64_t q_len, int64_t k_len, int64_t q_offset, int64_t k_offset) {
  constexpr int64_t lim = INT32_MAX - (int64_t{1} << 16);
  const int64_t dq = q_offset - k_offset;  // |offsets| <= 2^61 (check_offsets): no overflow
  return q_len < lim && k_len < lim && dq + q_len < lim && dq - k_len > -lim;
}

// Calls launch(int32_t{}) when fits_int32 holds, launch(int64_t{}) otherwise.
template <typename Launch>
void with_index_type(int64_t q_len, int64_t k_len, int64_t q_offset, int64_t k_offset,
                     const Launch& launch) {
  if (fits_int32(q_len, k_len, q_offset, k_offset)) {
    launch(int32_t{});
  } else {
    launch(int64_t{});
  }
}

// row[j] = f(j) for j < n (a contiguous output row), by the threadIdx.x lanes of the block:
// 16-byte stores from the row's first 16-byte aligned element on, single stores for the < V
// elements before it and the < V after the last full vector. f is called once per element,
// so the values do not depend on the row's alignment.
template <typename scalar_t, typename index_t, typename F>
__device__ __forceinline__ void fill_row(scalar_t* __restrict__ row, index_t n, const F& f) {
  constexpr int V = cuda::kVec<scalar_t>;
  const auto mis = static_cast<index_t>((reinterpret_cast<uintptr_t>(row) % 16) / sizeof(scalar_t));
  const index_t head = mis == 0 ? 0 : (V - mis < n ? V - mis : n);
  const index_t body_end = head + (n - head) / V * V;
  for (index_t j = head + static_cast<index_t>(threadIdx.x) * V; j < body_end;
       j += static_cast<index_t>(blockDim.x) * V) {
    cuda::Pack<scalar_t, V> p;
#pragma unroll
    for (int k = 0; k < V; ++k) p.v[k] = f(j + k);
    *reinterpret_cast<cuda::Pack<scalar_t, V>*>(row + j) = p;
  }
  const auto x = static_cast<index_t>(threadIdx.x);
  if (x < head) row[x] = f(x);
  if (x < n - body_end) row[body_end + x] = f(body_end + x);
}

// ---- per-diagonal sums of an upstream gradient ---------------------------------------------
//
// Diagonal t = j - i + q_len - 1 of a (q_len, k_len) grid holds the pairs with one relative
// position; the bias families' parameter gradients are sums over t of (the gradient summed
// along t) times (a derivative that depends on t only).
//
// Pass 1 (diag_tile_kernel): a warp owns a tile of R = min(kDiagRows, q_len) rows by
// W = 32 * V columns of one head, V = one 16-byte load of the gradient's dtype per lane. Lane l
// keeps in registers the running (double) sums of the V diagonals through its columns
// lV .. lV + V - 1. After each row every sum moves one column right (a register move, and a
// shuffle from the lane on the left), so a row costs one load and V adds per lane; the sum
// leaving the tile's last column is complete and is written out. A tile writes the sums of all
// W + R - 1 diagonals of its window (0 where none of its elements lie on one).
// Pass 2 (diag_total_kernel): thread (h, t) adds the tiles that hold t, row tiles then column
// tiles in order.
// Every sum has a fixed order set by the tiling alone -- not by the launch shape, the
// alignment or the load width -- so the result is bit-reproducible without atomics, and a
// strided gradient (scalar loads) gives the bits of a contiguous one (16-byte loads).
constexpr int64_t kDiagRows = 64;

// Tiles of a (heads, q_len, k_len) gradient of scalar_t.
template <typename scalar_t>
struct DiagTiles {
  static constexpr int V = cuda::kVec<scalar_t>;
  static constexpr int W = 32 * V;  // columns of a tile
  int64_t rows;                     // R: rows of a tile (the last one may have fewer)
  int64_t row_tiles, col_tiles;
  C10_HOST_DEVICE int64_t width() const { return W + rows - 1; }  // diagonals of a tile
};

// Columns c .. c + V - 1 of a gradient row (0 past k_len): one 16-byte load when kVector (the
// row is 16-byte aligned, contiguous, c a multiple of V) and the V columns exist.
template <typename scalar_t, bool kVector>
__device__ __forceinline__ cuda::Pack<scalar_t, cuda::kVec<scalar_t>> load_cols(
    const scalar_t* __restrict__ row, int64_t s2, int64_t c, int64_t k_len) {
  constexpr int V = cuda::kVec<scalar_t>;
  cuda::Pack<scalar_t, V> p;
  if (kVector && c + V <= k_len) {
    p = *reinterpret_cast<const cuda::Pack<scalar_t, V>*>(row + c);
  } else {
#pragma unroll
    for (int k = 0; k < V; ++k) p.v[k] = c + k < k_len ? row[(c + k) * s2] : scalar_t(0);
  }
  return p;
}

// partial[tile, u], u < W + R - 1: the sum over the tile's elements on its local diagonal
// u - (R - 1) = (j - j0) - (i - i0), tile = (h * row_tiles + a) * col_tiles + b with
// i0 = a R, j0 = b W. The block's warps take tiles independently (grid-stride over warps).
template <typename scalar_t, bool kVector>
__global__ void diag_tile_kernel(const scalar_t* __restrict__ g, int64_t s0, int64_t s1,
                                 int64_t s2, double* __restrict__ partial, DiagTiles<scalar_t> dt,
                                 int64_t tiles, int64_t q_len, int64_t k_len) {
  constexpr int V = DiagTiles<scalar_t>::V;
  constexpr int W = DiagTiles<scalar_t>::W;
  const int R = static_cast<int>(dt.rows);
  const int64_t width = dt.width();
  const int lane = threadIdx.x & 31;
  const int64_t warps = blockDim.x >> 5;
  const int64_t per_head = dt.row_tiles * dt.col_tiles;
  for (int64_t tile = blockIdx.x * warps + (threadIdx.x >> 5); tile < tiles;
       tile += static_cast<int64_t>(gridDim.x) * warps) {  // uniform in the warp
    const int64_t h = tile / per_head;
    const int64_t a = (tile - h * per_head) / dt.col_tiles;
    const int64_t b = tile - h * per_head - a * dt.col_tiles;
    const int64_t i0 = a * R;
    const int rows = q_len - i0 < R ? static_cast<int>(q_len - i0) : R;
    const int64_t c = b * W + lane * V;  // this lane's first column
    const scalar_t* grow = g + h * s0 + i0 * s1;
    double* out = partial + tile * width;
    double acc[V];
#pragma unroll
    for (int k = 0; k < V; ++k) acc[k] = 0.0;
    auto next = load_cols<scalar_t, kVector>(grow, s2, c, k_len);
    for (int r = 0; r < rows; ++r) {
      const auto cur = next;
      if (r + 1 < rows) next = load_cols<scalar_t, kVector>(grow + (r + 1) * s1, s2, c, k_len);
#pragma unroll
      for (int k = 0; k < V; ++k) acc[k] += static_cast<double>(cur.v[k]);
      if (r + 1 == rows) break;
      // acc[k] of lane l is local diagonal lV + k - r. Lane 31's last one, W - 1 - r, has no
      // element in later rows: complete. The others move to the next column.
      const double leaving = acc[V - 1];
      if (lane == 31) out[W - 1 - r + R - 1] = leaving;
      const double from_left = __shfl_up_sync(0xffffffffu, leaving, 1);
#pragma unroll
      for (int k = V - 1; k > 0; --k) acc[k] = acc[k - 1];
      acc[0] = lane == 0 ? 0.0 : from_left;  // diagonal -1 - r starts at row r + 1
    }
    // acc[k] of lane l is local diagonal lV + k - (rows - 1); those below -(rows - 1) (only
    // in a short last row tile) have no element here.
#pragma unroll
    for (int k = 0; k < V; ++k) out[lane * V + k + R - rows] = acc[k];
    for (int u = lane; u < R - rows; u += 32) out[u] = 0.0;
  }
}

// diag[h, t] = the sum of the tiles' partials on diagonal t, row tiles then column tiles in
// order. Tile (a, b) holds t at u = e + a R + R - 1 - b W (e = t - q_len + 1 = j - i) when
// 0 <= u < W + R - 1; the row tiles are those of the rows the diagonal crosses.
template <typename scalar_t>
__global__ void diag_total_kernel(const double* __restrict__ partial, double* __restrict__ diag,
                                  DiagTiles<scalar_t> dt, int64_t heads, int64_t q_len,
                                  int64_t k_len) {
  constexpr int64_t W = DiagTiles<scalar_t>::W;
  const int64_t R = dt.rows, width = dt.width();
  const int64_t nd = q_len + k_len - 1;
  const int64_t n = heads * nd;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < n;
       idx += stride) {
    const int64_t h = idx / nd;
    const int64_t e = idx - h * nd - (q_len - 1);
    const int64_t i_lo = e < 0 ? -e : 0;
    const int64_t i_hi = q_len - 1 < k_len - 1 - e ? q_len - 1 : k_len - 1 - e;
    double acc = 0.0;
    for (int64_t a = i_lo / R; a <= i_hi / R; ++a) {
      const int64_t base = e + a * R + R - 1;  // u in column tile 0; >= 0 for these a
      const int64_t lo = base - width + 1;
      const int64_t b_lo = lo <= 0 ? 0 : (lo + W - 1) / W;
      const int64_t b_hi = base / W < dt.col_tiles - 1 ? base / W : dt.col_tiles - 1;
      const double* pa = partial + (h * dt.row_tiles + a) * dt.col_tiles * width;
      for (int64_t b = b_lo; b <= b_hi; ++b) acc += pa[b * width + base - b * W];
    }
    diag[idx] = acc;
  }
}

// (heads, q_len + k_len - 1) float64 on grad's device: out[h, t] = sum over the pairs (i, j)
// of diagonal t of grad[h, i, j]. grad: (heads, q_len, k_len), any strides (an expanded
// gradient is read in place), non-empty. The caller holds a device guard for grad's device.
inline at::Tensor diagonal_sums(const at::Tensor& grad) {
  const int64_t heads = grad.size(0), q_len = grad.size(1), k_len = grad.size(2);
  const int64_t nd = q_len + k_len - 1;
  const auto f64 = grad.options().dtype(at::kDouble);
  auto diag = at::empty({heads, nd}, f64);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "posenc_diagonal_sums", [&] {
    using Tiles = DiagTiles<scalar_t>;
    constexpr int V = Tiles::V;
    Tiles dt{};
    dt.rows = std::min(kDiagRows, q_len);
    dt.row_tiles = (q_len + dt.rows - 1) / dt.rows;
    dt.col_tiles = (k_len + Tiles::W - 1) / Tiles::W;
    const int64_t tiles = heads * dt.row_tiles * dt.col_tiles;
    auto partial = at::empty({tiles, dt.width()}, f64);
    const scalar_t* g = grad.const_data_ptr<scalar_t>();
    const int64_t s0 = grad.stride(0), s1 = grad.stride(1), s2 = grad.stride(2);
    // Every row start 16-byte aligned and the keys contiguous: 16-byte loads.
    const bool vec = s2 == 1 && (q_len == 1 || s1 % V == 0) && (heads == 1 || s0 % V == 0) &&
                     cuda::is_aligned16(g);
    const unsigned int blocks = blocks_for(tiles, kThreads / 32);
    double* p = partial.mutable_data_ptr<double>();
    if (vec) {
      diag_tile_kernel<scalar_t, true><<<blocks, kThreads, 0, stream>>>(g, s0, s1, s2, p, dt,
                                                                       tiles, q_len, k_len);
    } else {
      diag_tile_kernel<scalar_t, false><<<blocks, kThreads, 0, stream>>>(g, s0, s1, s2, p, dt,
                                                                        tiles, q_len, k_len);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    diag_total_kernel<scalar_t><<<blocks_for(heads * nd, kThreads), kThreads, 0, stream>>>(
        partial.const_data_ptr<double>(), diag.mutable_data_ptr<double>(), dt, heads, q_len,
        k_len);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return diag;
}

}  // namespace bias_cuda
}  // namespace posenc
