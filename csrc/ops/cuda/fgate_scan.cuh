// Forgetting gate (Lin et al. 2025) on CUDA: the fp64 prefix sums of the log gates and the
// reverse prefix sums of their gradient, shared by the bias op and the fused attention op.
// One warp per (sequence, head) row: lane l sums its contiguous chunk in order, a fixed
// shuffle scan combines the 32 chunk sums, and each lane rescans its chunk from its prefix.
// Every sum has one fixed order: deterministic.
#pragma once

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda_utils.cuh"

namespace posenc {
namespace cuda {

// Row r of a scan: elements base + t * stride, t < n. bhsd: rows of `len` contiguous elements.
// thd (cu != nullptr): r = s * heads + h, element (cu[s] + t, h) of a (total, heads) tensor;
// cu is clamped to [0, total] (bad values give wrong sums, never out-of-bounds reads).
struct ScanRows {
  int64_t rows = 0, len = 0, heads = 1, total = 0;
  const int64_t* cu = nullptr;
  __device__ __forceinline__ void row(int64_t r, int64_t* base, int64_t* stride, int64_t* n) const {
    if (cu == nullptr) {
      *base = r * len;
      *stride = 1;
      *n = len;
      return;
    }
    const int64_t s = r / heads, h = r - s * heads;
    const int64_t a = min(max(cu[s], int64_t{0}), total);
    const int64_t b = min(max(cu[s + 1], a), total);
    *base = a * heads + h;
    *stride = heads;
    *n = b - a;
  }
};

// out[t] = sum_{s <= t} in[s] (reverse: sum_{s >= t}) along every row, fp64.
// `in` is any float type (converted on read); `out` is double and may alias nothing else.
template <typename T>
__global__ void fgate_scan_kernel(const T* __restrict__ in, double* __restrict__ out,
                                  ScanRows R, bool reverse) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = static_cast<int64_t>(blockDim.x) >> 5;
  const int64_t step = static_cast<int64_t>(gridDim.x) * warps;
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * warps + (threadIdx.x >> 5); r < R.rows;
       r += step) {
    int64_t base, stride, n;
    R.row(r, &base, &stride, &n);
    const int64_t chunk = (n + 31) / 32;
    const int64_t t0 = lane * chunk, t1 = min(t0 + chunk, n);
    auto pos = [&](int64_t t) { return base + (reverse ? (n - 1 - t) : t) * stride; };
    double local = 0.0;
    for (int64_t t = t0; t < t1; ++t) local += static_cast<double>(in[pos(t)]);
    // Inclusive shuffle scan of the chunk sums (a fixed tree); lane l starts from lane l - 1's
    // total, the sum of the chunks before its own.
    double incl = local;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const double y = __shfl_up_sync(0xffffffffu, incl, o);
      if (lane >= o) incl += y;
    }
    double acc = __shfl_up_sync(0xffffffffu, incl, 1);
    if (lane == 0) acc = 0.0;
    for (int64_t t = t0; t < t1; ++t) {
      acc += static_cast<double>(in[pos(t)]);
      out[pos(t)] = acc;
    }
  }
}

template <typename T>
inline void fgate_scan(const T* in, double* out, const ScanRows& R, bool reverse,
                       cudaStream_t stream) {
  if (R.rows == 0) return;
  constexpr int kThreads = 256;
  fgate_scan_kernel<T><<<num_blocks(R.rows, kThreads / 32), kThreads, 0, stream>>>(in, out, R,
                                                                                    reverse);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace cuda
}  // namespace posenc
