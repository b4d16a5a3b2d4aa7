// Small helpers shared by the CUDA kernels: launch sizes, a deterministic block reduction,
// and precise sin/cos in the op's math type.
#pragma once

#include <c10/macros/Macros.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

namespace posenc {
namespace cuda {

// Every kernel loops over its work with a grid stride, so the grid can be capped: 65535 blocks
// fill an H200 many times over, and the cap makes the wide/long tests walk the stride loop.
constexpr int64_t kMaxBlocks = 65535;

// Blocks for `units` independent work items of `per_block` items per block (>= 1 block).
inline unsigned int num_blocks(int64_t units, int64_t per_block = 1) {
  const int64_t want = (units + per_block - 1) / std::max<int64_t>(per_block, 1);
  return static_cast<unsigned int>(std::clamp<int64_t>(want, 1, kMaxBlocks));
}

// Smallest power of two >= n (n >= 1), capped at `cap` (a power of two).
inline int pow2_at_least(int64_t n, int cap) {
  int p = 1;
  while (p < n && p < cap) p *= 2;
  return p;
}

// Linear thread index and count within the block (blocks may be 2-D).
__device__ __forceinline__ int block_tid() { return threadIdx.y * blockDim.x + threadIdx.x; }
__device__ __forceinline__ int block_threads() { return blockDim.x * blockDim.y; }

// Sum of v over the block, returned to every thread. Deterministic: a fixed tree of warp
// shuffles, then the first warp folds the per-warp sums in warp order, so the result depends
// only on the values and the block size. Every thread of the block must call it (no divergent
// return before it); the block size must be a multiple of 32 (<= 1024). `scratch` is shared
// memory of at least 33 elements, free for reuse when the function returns.
template <typename T>
__device__ T block_sum(T v, T* scratch) {
  const int tid = block_tid();
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const int warps = block_threads() >> 5;
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

// N elements of T moved by one access of N * sizeof(T) bytes (a 16-byte ld/st.v4 for N =
// 16 / sizeof(T)); the address must be a multiple of that size.
template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

// Elements of T in one 16-byte access: 4 fp32, 8 fp16/bf16, 2 fp64.
template <typename T>
constexpr int kVec = static_cast<int>(16 / sizeof(T));

// Whether p is 16-byte aligned (host and device).
C10_HOST_DEVICE inline bool is_aligned16(const void* p) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0;
}

// Precise sin and cos (the build does not use --use_fast_math) in float or double.
__device__ __forceinline__ void sin_cos(float a, float* s, float* c) { sincosf(a, s, c); }
__device__ __forceinline__ void sin_cos(double a, double* s, double* c) { sincos(a, s, c); }

}  // namespace cuda
}  // namespace posenc
