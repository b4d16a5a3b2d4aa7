// CoPE on CUDA (formulas in ../cope.h; the CPU kernel's plan, one block per query row).
//
// z = q e^T, (B*H*Lq, P), is one cuBLAS GEMM in the math type. A block walks its row's visible
// keys from the last one leftwards in chunks of kThreads (thread t takes key c0 - t): gate by a
// dot product, a fixed-tree inclusive scan of the chunk's gates in fp64 plus the running sum,
// the interpolated score; once the running sum reaches P - 1 the keys further left are filled
// with z[P - 1] (their gates are not computed).
//
// Backward, per row: pass 1 repeats the walk, writes dp_j = grad_ij (z[ceil] - z[floor]) into
// the ds buffer and adds grad (1 - w) / grad w into dz[row, floor] / dz[row, ceil]. Within a
// chunk floor(p) does not fall as t grows, so keys sharing a cell are a run of threads: the
// run's first thread adds the run in order (no atomics), A terms then B terms. Pass 2 walks
// the unclamped keys [m, n) rightwards with a scan of dp (the forward cumsum adjoint of the
// reverse cumsum) and writes ds = dg g (1 - g). Pass 3: grad_q[row, d] = scale sum_t ds_t k_t +
// sum_p dz_p e_p, each d summed by one thread in order. grad_k = scale ds^T q and grad_pos_emb
// = dz^T q are cuBLAS GEMMs. Deterministic run to run (no atomics; cuBLAS is deterministic on
// one GPU model and stream). Compile-checked only until a GPU run (scripts/gpu_check.sh).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>
#include <type_traits>

#include "../cope.h"
#include "cuda_utils.cuh"

namespace posenc {
namespace {

constexpr int kThreads = 256;

template <typename scalar_t>
using acc_type = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

struct Geometry {
  int64_t rows, q_len, k_len, dim, npos, base;
};

__device__ __forceinline__ float exp_(float x) { return expf(x); }
__device__ __forceinline__ double exp_(double x) { return exp(x); }

template <typename T>
__device__ __forceinline__ T sigmoid_(T x) {
  return T(1) / (T(1) + exp_(-x));
}

template <typename T>
__device__ __forceinline__ T dot_(const T* a, const T* __restrict__ b, int64_t n) {
  T s = 0;
  for (int64_t d = 0; d < n; ++d) s += a[d] * b[d];
  return s;
}

// Inclusive prefix sum of v over threadIdx.x (fixed Hillis-Steele tree, deterministic); every
// thread must call it. scan: kThreads doubles of shared memory. Returns the prefix; the chunk
// total is scan[kThreads - 1] until the next call.
__device__ double block_inclusive_scan(double v, double* scan) {
  const int t = threadIdx.x;
  scan[t] = v;
  __syncthreads();
  for (int off = 1; off < kThreads; off *= 2) {
    const double add = t >= off ? scan[t - off] : 0.0;
    __syncthreads();
    scan[t] += add;
    __syncthreads();
  }
  return scan[t];
}

template <typename acc_t>
__device__ void load_row(const acc_t* __restrict__ src, acc_t* dst, int64_t n) {
  for (int64_t d = threadIdx.x; d < n; d += kThreads) dst[d] = src[d];
}

template <typename scalar_t, typename acc_t>
__global__ void cope_forward_kernel(const acc_t* __restrict__ q, const acc_t* __restrict__ k,
                                    const acc_t* __restrict__ z, scalar_t* __restrict__ out,
                                    Geometry G, acc_t scale) {
  extern __shared__ unsigned char smem[];
  double* scan = reinterpret_cast<double*>(smem);
  acc_t* qi = reinterpret_cast<acc_t*>(scan + kThreads);
  const int64_t lim = G.npos - 1;
  for (int64_t row = blockIdx.x; row < G.rows; row += gridDim.x) {
    const int64_t i = row % G.q_len;
    const acc_t* kh = k + (row / G.q_len) * G.k_len * G.dim;
    const acc_t* zr = z + row * G.npos;
    scalar_t* orow = out + row * G.k_len;
    const int64_t n = detail::cope_visible(G.base, i, G.k_len);
    for (int64_t j = n + threadIdx.x; j < G.k_len; j += kThreads) orow[j] = scalar_t(0);
    load_row(q + row * G.dim, qi, G.dim);
    __syncthreads();
    double carry = 0.0;
    int64_t c0 = n - 1;
    for (; c0 >= 0; c0 -= kThreads) {
      const int64_t j = c0 - threadIdx.x;
      const acc_t g = j >= 0 ? sigmoid_(scale * dot_(qi, kh + j * G.dim, G.dim)) : acc_t(0);
      const double p = carry + block_inclusive_scan(static_cast<double>(g), scan);
      if (j >= 0) {
        acc_t v;
        if (p >= static_cast<double>(lim)) {
          v = zr[lim];
        } else if (isnan(p)) {
          v = static_cast<acc_t>(p);
        } else {
          const auto c = detail::cope_cell(p);
          const acc_t w = static_cast<acc_t>(c.w);
          v = c.w > 0 ? zr[c.f + 1] * w + zr[c.f] * (acc_t(1) - w) : zr[c.f];
        }
        orow[j] = static_cast<scalar_t>(v);
      }
      carry += scan[kThreads - 1];
      __syncthreads();
      if (carry >= static_cast<double>(lim)) break;  // the same value in every thread
    }
    // Keys left of the last chunk walked: clamped.
    for (int64_t j = threadIdx.x; j < c0 - kThreads + 1; j += kThreads) {
      orow[j] = static_cast<scalar_t>(zr[lim]);
    }
    __syncthreads();
  }
}

template <typename scalar_t, typename acc_t>
__global__ void cope_backward_rows_kernel(const scalar_t* __restrict__ grad,
                                          const acc_t* __restrict__ q,
                                          const acc_t* __restrict__ k,
                                          const acc_t* __restrict__ e,
                                          const acc_t* __restrict__ z, acc_t* __restrict__ ds,
                                          acc_t* __restrict__ dz, scalar_t* __restrict__ grad_q,
                                          Geometry G, acc_t scale) {
  extern __shared__ unsigned char smem[];
  double* scan = reinterpret_cast<double*>(smem);
  double* run_a = scan + kThreads;
  double* run_b = run_a + kThreads;
  int64_t* cell = reinterpret_cast<int64_t*>(run_b + kThreads);
  int64_t* first_unclamped = cell + kThreads;
  int* is_clamped = reinterpret_cast<int*>(first_unclamped + 1);
  acc_t* qi = reinterpret_cast<acc_t*>(is_clamped + kThreads);
  const int64_t lim = G.npos - 1;
  const int t = threadIdx.x;
  for (int64_t row = blockIdx.x; row < G.rows; row += gridDim.x) {
    const int64_t i = row % G.q_len;
    const acc_t* kh = k + (row / G.q_len) * G.k_len * G.dim;
    const acc_t* zr = z + row * G.npos;
    const scalar_t* grow = grad + row * G.k_len;
    acc_t* dsr = ds + row * G.k_len;  // zero-initialised
    acc_t* dzr = dz + row * G.npos;   // zero-initialised
    const int64_t n = detail::cope_visible(G.base, i, G.k_len);
    load_row(q + row * G.dim, qi, G.dim);
    if (t == 0) *first_unclamped = 0;
    __syncthreads();
    // Pass 1: right to left.
    double carry = 0.0;
    int64_t c0 = n - 1;
    for (; c0 >= 0; c0 -= kThreads) {
      const int64_t j = c0 - t;
      const acc_t g = j >= 0 ? sigmoid_(scale * dot_(qi, kh + j * G.dim, G.dim)) : acc_t(0);
      const double p = carry + block_inclusive_scan(static_cast<double>(g), scan);
      int64_t f = -1;  // -1: no key
      double a = 0.0, b = 0.0;
      bool clamped = false;
      if (j >= 0) {
        const double gr = static_cast<double>(grow[j]);
        if (p >= static_cast<double>(lim)) {
          f = lim;
          a = gr;
          clamped = true;
        } else if (isnan(p)) {
          f = lim;
          a = p;
          dsr[j] = static_cast<acc_t>(p);
        } else {
          const auto c = detail::cope_cell(p);
          f = c.f;
          a = gr * (1.0 - c.w);
          b = gr * c.w;
          dsr[j] = c.w > 0 ? static_cast<acc_t>(gr * (static_cast<double>(zr[c.f + 1]) -
                                                      static_cast<double>(zr[c.f])))
                           : acc_t(0);
        }
      }
      cell[t] = f;
      is_clamped[t] = clamped ? 1 : 0;
      run_a[t] = a;
      run_b[t] = b;
      carry += scan[kThreads - 1];
      __syncthreads();
      const bool leader = f >= 0 && (t == 0 || cell[t - 1] != f);
      if (leader) {
        double s = 0.0;
        for (int u = t; u < kThreads && cell[u] == f; ++u) s += run_a[u];
        dzr[f] += static_cast<acc_t>(s);
      }
      __syncthreads();
      if (leader && f < lim) {
        double s = 0.0;
        for (int u = t; u < kThreads && cell[u] == f; ++u) s += run_b[u];
        if (s != 0.0) dzr[f + 1] += static_cast<acc_t>(s);
      }
      // Clamped keys are a suffix of the chunk's threads (p does not fall as t grows), all in
      // the chunk where the running sum reaches P - 1: the first one sets m.
      if (clamped && (t == 0 || !is_clamped[t - 1])) *first_unclamped = j + 1;
      __syncthreads();
      if (carry >= static_cast<double>(lim)) break;
    }
    // Keys left of the last chunk walked: clamped, weight 1 at P - 1.
    double rest = 0.0;
    for (int64_t j = t; j < c0 - kThreads + 1; j += kThreads) rest += static_cast<double>(grow[j]);
    rest = cuda::block_sum(rest, scan);
    if (t == 0 && c0 - kThreads + 1 > 0) dzr[lim] += static_cast<acc_t>(rest);
    __syncthreads();
    const int64_t m = *first_unclamped;
    // Pass 2: left to right over the unclamped keys, dg = cumsum of dp.
    double acc = 0.0;
    for (int64_t b0 = m; b0 < n; b0 += kThreads) {
      const int64_t j = b0 + t;
      double dp = 0.0, g = 0.0;
      if (j < n) {
        dp = static_cast<double>(dsr[j]);
        g = static_cast<double>(sigmoid_(scale * dot_(qi, kh + j * G.dim, G.dim)));
      }
      const double dg = acc + block_inclusive_scan(dp, scan);
      if (j < n) dsr[j] = static_cast<acc_t>(dg * g * (1.0 - g));
      acc += scan[kThreads - 1];
      __syncthreads();
    }
    // Pass 3: grad_q, one thread per feature, terms in order.
    for (int64_t d = t; d < G.dim; d += kThreads) {
      double s = 0.0;
      for (int64_t j = m; j < n; ++j) {
        s += static_cast<double>(dsr[j]) * static_cast<double>(kh[j * G.dim + d]);
      }
      s *= static_cast<double>(scale);
      if (n > 0) {
        for (int64_t p = 0; p < G.npos; ++p) {
          s += static_cast<double>(dzr[p]) * static_cast<double>(e[p * G.dim + d]);
        }
      }
      grad_q[row * G.dim + d] = static_cast<scalar_t>(s);
    }
    __syncthreads();
  }
}

Geometry geometry(const at::Tensor& q, const at::Tensor& k, const at::Tensor& pos_emb,
                  int64_t q_offset, int64_t k_offset) {
  return {q.size(0) * q.size(1) * q.size(2), q.size(2), k.size(2), q.size(3), pos_emb.size(0),
          q_offset - k_offset};
}

template <typename acc_t>
size_t shared_bytes(int64_t dim, bool backward) {
  const size_t base = backward ? 3 * kThreads * sizeof(double) +
                                     (kThreads + 1) * sizeof(int64_t) + kThreads * sizeof(int)
                               : kThreads * sizeof(double);
  return base + static_cast<size_t>(dim) * sizeof(acc_t);
}

// head_dim in shared memory (the query row): 48 KiB holds head_dim up to ~5000 in fp64.
void check_dim_fits(const char* op, int64_t dim, size_t bytes) {
  POSENC_CHECK_ARG(bytes <= 48 * 1024, op, "q", "must have head_dim small enough for one CUDA block's "
                   "shared memory (48 KiB)", "head_dim ", dim);
}

at::Tensor cope_scores_cuda(const at::Tensor& q_in, const at::Tensor& k_in,
                            const at::Tensor& pos_emb_in, std::optional<double> scale,
                            int64_t q_offset, int64_t k_offset) {
  detail::check_cope_scores("cope_scores", q_in, k_in, pos_emb_in, scale, q_offset, k_offset);
  const c10::cuda::CUDAGuard guard(q_in.device());
  auto out = detail::empty_output("cope_scores", "k",
                                  {q_in.size(0), q_in.size(1), q_in.size(2), k_in.size(2)},
                                  q_in.options());
  if (out.numel() == 0) return out;
  const Geometry G = geometry(q_in, k_in, pos_emb_in, q_offset, k_offset);
  const double sc = detail::cope_scale(scale, G.dim);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q_in.scalar_type(), "cope_scores_cuda", [&] {
    using acc_t = acc_type<scalar_t>;
    const auto acc = c10::CppTypeToScalarType<acc_t>::value;
    const auto q = q_in.to(acc).contiguous();
    const auto k = k_in.to(acc).contiguous();
    const auto e = pos_emb_in.to(acc).contiguous();
    const auto z = at::matmul(q.reshape({G.rows, G.dim}), e.t()).contiguous();
    const size_t bytes = shared_bytes<acc_t>(G.dim, false);
    check_dim_fits("cope_scores", G.dim, bytes);
    cope_forward_kernel<scalar_t, acc_t><<<cuda::num_blocks(G.rows), kThreads, bytes, stream>>>(
        q.const_data_ptr<acc_t>(), k.const_data_ptr<acc_t>(), z.const_data_ptr<acc_t>(),
        out.mutable_data_ptr<scalar_t>(), G, static_cast<acc_t>(sc));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> cope_scores_backward_cuda(
    const at::Tensor& grad_in, const at::Tensor& q_in, const at::Tensor& k_in,
    const at::Tensor& pos_emb_in, std::optional<double> scale, int64_t q_offset,
    int64_t k_offset) {
  detail::check_cope_scores_backward("cope_scores_backward", grad_in, q_in, k_in, pos_emb_in,
                                     scale, q_offset, k_offset);
  const c10::cuda::CUDAGuard guard(q_in.device());
  if (grad_in.numel() == 0 || q_in.size(3) == 0) {
    return {at::zeros(q_in.sizes(), q_in.options()), at::zeros(k_in.sizes(), k_in.options()),
            at::zeros(pos_emb_in.sizes(), pos_emb_in.options())};
  }
  const Geometry G = geometry(q_in, k_in, pos_emb_in, q_offset, k_offset);
  const double sc = detail::cope_scale(scale, G.dim);
  const auto grad = grad_in.to(q_in.scalar_type()).contiguous();
  auto grad_q = at::empty(q_in.sizes(), q_in.options());
  at::Tensor grad_k, grad_emb;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q_in.scalar_type(), "cope_scores_backward_cuda", [&] {
    using acc_t = acc_type<scalar_t>;
    const auto acc = c10::CppTypeToScalarType<acc_t>::value;
    const auto q = q_in.to(acc).contiguous();
    const auto k = k_in.to(acc).contiguous();
    const auto e = pos_emb_in.to(acc).contiguous();
    const auto q2 = q.reshape({G.rows, G.dim});
    const auto z = at::matmul(q2, e.t()).contiguous();
    auto ds = at::zeros({q.size(0), q.size(1), G.q_len, G.k_len}, q.options());
    auto dz = at::zeros({G.rows, G.npos}, q.options());
    const size_t bytes = shared_bytes<acc_t>(G.dim, true);
    check_dim_fits("cope_scores_backward", G.dim, bytes);
    cope_backward_rows_kernel<scalar_t, acc_t>
        <<<cuda::num_blocks(G.rows), kThreads, bytes, stream>>>(
            grad.const_data_ptr<scalar_t>(), q.const_data_ptr<acc_t>(), k.const_data_ptr<acc_t>(),
            e.const_data_ptr<acc_t>(), z.const_data_ptr<acc_t>(), ds.mutable_data_ptr<acc_t>(),
            dz.mutable_data_ptr<acc_t>(), grad_q.mutable_data_ptr<scalar_t>(), G,
            static_cast<acc_t>(sc));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    grad_k = (at::matmul(ds.transpose(-1, -2), q) * sc).to(k_in.scalar_type());
    grad_emb = at::matmul(dz.t(), q2).to(pos_emb_in.scalar_type());
  });
  return {grad_q, grad_k.contiguous(), grad_emb.contiguous()};
}

}  // namespace
}  // namespace posenc

TORCH_LIBRARY_IMPL(posenc, CUDA, m) {
  m.impl("cope_scores", &posenc::cope_scores_cuda);
  m.impl("cope_scores_backward", &posenc::cope_scores_backward_cuda);
}
