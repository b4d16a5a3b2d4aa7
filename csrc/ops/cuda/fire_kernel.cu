// FIRE on CUDA (compile-checked; the numbers of ../cpu/fire_kernel.cpp up to the order of the
// sums). Forward: a thread per (query, key), the MLP weights in shared memory. Backward: a block
// per tile of kTileRows query rows with one thread per hidden unit k, walking the tile's
// entries in order; thread k accumulates its unit's gradients (w1[k], b1[k], w2[:, k], and its
// share of c and L) in double, so no entry needs a reduction across threads; the tiles' partials
// are then added in tile order. Deterministic, no atomics.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../fire.h"
#include "bias_utils.cuh"

namespace posenc {
namespace {

using detail::FireGrads;

constexpr int64_t kTileRows = 4;
constexpr size_t kMaxShared = 48 * 1024;

__device__ __forceinline__ int64_t row_end_dev(int64_t q_pos, int64_t k_len, int64_t k_offset,
                                               bool causal) {
  if (!causal) return k_len;
  const int64_t e = q_pos - k_offset + 1;
  return e < 0 ? 0 : (e > k_len ? k_len : e);
}

// params: w1 (hid), b1 (hid), w2 (heads * hid), b2 (heads), in the math type T.
template <typename scalar_t>
__global__ void fire_forward_kernel(const at::opmath_type<scalar_t>* __restrict__ params,
                                    scalar_t* __restrict__ out, int64_t heads, int64_t hid,
                                    int64_t q_len, int64_t k_len, int64_t q_offset,
                                    int64_t k_offset, bool causal, at::opmath_type<scalar_t> c_abs,
                                    at::opmath_type<scalar_t> L_abs, at::opmath_type<scalar_t> eps) {
  using T = at::opmath_type<scalar_t>;
  extern __shared__ unsigned char smem_raw[];
  T* sp = reinterpret_cast<T*>(smem_raw);
  const int64_t np = hid * (2 + heads) + heads;
  for (int64_t k = cuda::block_tid(); k < np; k += cuda::block_threads()) sp[k] = params[k];
  __syncthreads();
  const T* w1 = sp;
  const T* b1 = sp + hid;
  const T* w2 = sp + 2 * hid;
  const T* b2 = w2 + heads * hid;
  const int64_t plane = q_len * k_len;
  const int64_t row_stride = static_cast<int64_t>(gridDim.x) * blockDim.y;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y; i < q_len;
       i += row_stride) {
    const int64_t q_pos = q_offset + i;
    const T n = detail::fire_normalizer(c_abs, L_abs, q_pos, eps);
    const int64_t j_end = row_end_dev(q_pos, k_len, k_offset, causal);
    for (int64_t j = threadIdx.x; j < k_len; j += blockDim.x) {
      if (j >= j_end) {
        for (int64_t h = 0; h < heads; ++h) out[h * plane + i * k_len + j] = scalar_t(0);
        continue;
      }
      const int64_t d = q_pos - (k_offset + j);
      const T x = detail::fire_psi(c_abs, static_cast<T>(d < 0 ? -d : d)) / n;
      for (int64_t h = 0; h < heads; ++h) {
        T acc = 0;
        for (int64_t k = 0; k < hid; ++k) {
          const T pre = w1[k] * x + b1[k];
          acc += w2[h * hid + k] * (pre > T(0) ? pre : T(0));
        }
        out[h * plane + i * k_len + j] = static_cast<scalar_t>(b2[h] + acc);
      }
    }
  }
}

// One block per tile of rows; thread k < hid owns hidden unit k. partial[tile * np + ...]:
// c, L, w1 (hid), b1 (hid), w2 (heads * hid), b2 (heads), in double.
template <typename scalar_t>
__global__ void fire_backward_kernel(const scalar_t* __restrict__ g,
                                     const at::opmath_type<scalar_t>* __restrict__ params,
                                     double* __restrict__ partial, int64_t tiles, int64_t heads,
                                     int64_t hid, int64_t q_len, int64_t k_len, int64_t q_offset,
                                     int64_t k_offset, bool causal, double c, double L, double eps) {
  using T = at::opmath_type<scalar_t>;
  extern __shared__ unsigned char smem_raw[];
  double* acc_w2 = reinterpret_cast<double*>(smem_raw);  // heads * hid
  double* acc_b2 = acc_w2 + heads * hid;                 // heads
  T* sp = reinterpret_cast<T*>(acc_b2 + heads);
  __shared__ double scratch[33];
  const int64_t np_params = hid * (2 + heads) + heads;
  const int64_t np = 2 + np_params;
  for (int64_t k = cuda::block_tid(); k < np_params; k += cuda::block_threads()) sp[k] = params[k];
  const T* w1 = sp;
  const T* b1 = sp + hid;
  const T* w2 = sp + 2 * hid;
  const T c_abs = static_cast<T>(c < 0 ? -c : c), L_abs = static_cast<T>(L < 0 ? -L : L);
  const T sc = static_cast<T>(c > 0 ? 1 : (c < 0 ? -1 : 0));
  const T teps = static_cast<T>(eps);
  const int64_t plane = q_len * k_len;
  const int k = threadIdx.x;
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    __syncthreads();
    for (int64_t e = threadIdx.x; e < heads * hid + heads; e += blockDim.x) acc_w2[e] = 0.0;
    __syncthreads();
    double gw1 = 0, gb1 = 0, gc = 0, gL = 0;
    const int64_t i_end = (tile + 1) * kTileRows < q_len ? (tile + 1) * kTileRows : q_len;
    for (int64_t i = tile * kTileRows; i < i_end; ++i) {
      const int64_t q_pos = q_offset + i;
      const T n = detail::fire_normalizer(c_abs, L_abs, q_pos, teps);
      const int64_t j_end = row_end_dev(q_pos, k_len, k_offset, causal);
      double r_dudc = 0, r_u = 0;
      for (int64_t j = 0; j < j_end; ++j) {
        const int64_t d = q_pos - (k_offset + j);
        const T ad = static_cast<T>(d < 0 ? -d : d);
        const T u = detail::fire_psi(c_abs, ad);
        const T x = u / n;
        const scalar_t* ge = g + i * k_len + j;
        if (k < hid) {
          const T pre = w1[k] * x + b1[k];
          const T relu = pre > T(0) ? pre : T(0);
          T s = 0;
          for (int64_t h = 0; h < heads; ++h) {
            const T gh = static_cast<T>(ge[h * plane]);
            s += gh * w2[h * hid + k];
            acc_w2[h * hid + k] += static_cast<double>(gh * relu);
          }
          if (pre > T(0)) {  // relu'(0) = 0, as torch
            gb1 += static_cast<double>(s);
            gw1 += static_cast<double>(s * x);
            r_dudc += static_cast<double>(s * (sc * ad / (c_abs * ad + T(1))));
            r_u += static_cast<double>(s * u);
          }
        }
        for (int64_t h = threadIdx.x; h < heads; h += blockDim.x) {
          acc_b2[h] += static_cast<double>(ge[h * plane]);
        }
      }
      double dn_dc, dn_dL;
      detail::fire_normalizer_derivatives(c, L, q_pos, &dn_dc, &dn_dL);
      const double nd = static_cast<double>(n);
      gc += r_dudc / nd - r_u * dn_dc / (nd * nd);
      gL -= r_u * dn_dL / (nd * nd);
    }
    // dx summed over units: gradient to c and L is sum_k w1[k] * (unit k's share).
    const double wk = k < hid ? static_cast<double>(w1[k]) : 0.0;
    const double tc = cuda::block_sum(wk * gc, scratch);
    const double tL = cuda::block_sum(wk * gL, scratch);
    double* out = partial + tile * np;
    if (threadIdx.x == 0) {
      out[0] = tc;
      out[1] = tL;
    }
    if (k < hid) {
      out[2 + k] = gw1;
      out[2 + hid + k] = gb1;
    }
    __syncthreads();
    for (int64_t e = threadIdx.x; e < heads * hid + heads; e += blockDim.x) {
      out[2 + 2 * hid + e] = acc_w2[e];
    }
  }
}

__global__ void fire_reduce_kernel(const double* __restrict__ partial, double* __restrict__ total,
                                   int64_t tiles, int64_t np) {
  for (int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; p < np;
       p += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    double acc = 0;
    for (int64_t t = 0; t < tiles; ++t) acc += partial[t * np + p];  // tile order
    total[p] = acc;
  }
}

// w1, b1, w2, b2 flattened into one (np,) tensor of the math type.
at::Tensor packed_params(const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2,
                         const at::Tensor& b2) {
  const auto mt = w1.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  return at::cat({w1.reshape(-1), b1.reshape(-1), w2.reshape(-1), b2.reshape(-1)}).to(mt).contiguous();
}

at::Tensor fire_bias_cuda(const at::Tensor& c, const at::Tensor& L, const at::Tensor& w1,
                          const at::Tensor& b1, const at::Tensor& w2, const at::Tensor& b2,
                          int64_t q_len, int64_t k_len, int64_t q_offset, int64_t k_offset,
                          bool causal, double eps) {
  const char* op = "fire_bias";
  detail::check_fire_bias(op, c, L, w1, b1, w2, b2, q_len, k_len, q_offset, eps);
  detail::check_offsets(op, q_offset, k_offset);
  const c10::cuda::CUDAGuard guard(c.device());
  const int64_t heads = w2.size(0), hid = w1.size(0);
  auto out = detail::empty_output(op, q_len > k_len ? "q_len" : "k_len", {heads, q_len, k_len},
                                  c.options());
  if (out.numel() == 0) return out;
  const auto params = packed_params(w1, b1, w2, b2);
  const size_t shared = params.numel() * params.element_size();
  POSENC_CHECK_ARG(shared <= kMaxShared, op, "w2",
                   "must be small enough for the CUDA kernel's shared memory (hidden * (num_heads "
                   "+ 2) + num_heads <= 12288 float32 values)",
                   "shape ", detail::shape_str(w2));
  // c and L are read on the host once per call (a sync), as KERPLE's r2 check does.
  const double cv = c.item<double>(), Lv = L.item<double>();
  const auto launch = bias_cuda::row_launch(q_len, k_len);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, c.scalar_type(), "fire_bias_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    fire_forward_kernel<scalar_t><<<launch.grid, launch.block, shared, stream>>>(
        params.const_data_ptr<T>(), out.mutable_data_ptr<scalar_t>(), heads, hid, q_len, k_len,
        q_offset, k_offset, causal, static_cast<T>(std::abs(cv)), static_cast<T>(std::abs(Lv)),
        static_cast<T>(eps));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

FireGrads fire_bias_backward_cuda(const at::Tensor& grad_in, const at::Tensor& c,
                                  const at::Tensor& L, const at::Tensor& w1, const at::Tensor& b1,
                                  const at::Tensor& w2, const at::Tensor& b2, int64_t q_len,
                                  int64_t k_len, int64_t q_offset, int64_t k_offset, bool causal,
                                  double eps) {
  const char* op = "fire_bias_backward";
  detail::check_fire_bias_backward(op, grad_in, c, L, w1, b1, w2, b2, q_len, k_len, q_offset, eps);
  detail::check_offsets(op, q_offset, k_offset);
  const c10::cuda::CUDAGuard guard(c.device());
  const int64_t heads = w2.size(0), hid = w1.size(0);
  const int64_t np = 2 + hid * (2 + heads) + heads;
  auto total = at::zeros({np}, c.options().dtype(at::kDouble));
  if (heads > 0 && q_len > 0 && k_len > 0) {
    POSENC_CHECK_ARG(hid <= 1024, op, "w1", "must have hidden <= 1024 on CUDA (a thread per unit)",
                     "shape ", detail::shape_str(w1));
    const auto params = packed_params(w1, b1, w2, b2);
    const size_t shared = (heads * hid + heads) * sizeof(double) + params.numel() * params.element_size();
    POSENC_CHECK_ARG(shared <= kMaxShared, op, "w2",
                     "must be small enough for the CUDA kernel's shared memory (hidden * num_heads "
                     "<= about 3000)",
                     "shape ", detail::shape_str(w2));
    const auto grad = (grad_in.scalar_type() == c.scalar_type() ? grad_in : grad_in.to(c.scalar_type())).contiguous();
    const int64_t tiles = (q_len + kTileRows - 1) / kTileRows;
    auto partial = at::empty({tiles, np}, total.options());
    const int threads = static_cast<int>(std::max<int64_t>(32, (hid + 31) / 32 * 32));
    const double cv = c.item<double>(), Lv = L.item<double>();
    const auto stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, c.scalar_type(), "fire_bias_backward_cuda", [&] {
      using T = at::opmath_type<scalar_t>;
      fire_backward_kernel<scalar_t><<<bias_cuda::blocks_for(tiles), threads, shared, stream>>>(
          grad.const_data_ptr<scalar_t>(), params.const_data_ptr<T>(),
          partial.mutable_data_ptr<double>(), tiles, heads, hid, q_len, k_len, q_offset, k_offset,
          causal, cv, Lv, eps);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    fire_reduce_kernel<<<bias_cuda::blocks_for(np, bias_cuda::kThreads), bias_cuda::kThreads, 0, stream>>>(
        partial.const_data_ptr<double>(), total.mutable_data_ptr<double>(), tiles, np);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  const auto t = total.to(c.scalar_type());
  return {t[0].clone(), t[1].clone(), t.narrow(0, 2, hid).view({hid, 1}).clone(),
          t.narrow(0, 2 + hid, hid).clone(),
          t.narrow(0, 2 + 2 * hid, heads * hid).view({heads, hid}).clone(),
          t.narrow(0, 2 + 2 * hid + heads * hid, heads).clone()};
}

}  // namespace
}  // namespace posenc

TORCH_LIBRARY_IMPL(posenc, CUDA, m) {
  m.impl("fire_bias", &posenc::fire_bias_cuda);
  m.impl("fire_bias_backward", &posenc::fire_bias_backward_cuda);
}
