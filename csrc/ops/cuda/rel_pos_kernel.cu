// Relative position scores (Transformer-XL / Shaw) on CUDA: the same numbers as
// ../cpu/rel_pos_kernel.cpp. out[b,h,i,j] = q[b,h,i,:] . rel_emb[h, c + clamp(d0 - j, -M, M), :]
// with d0 = base + i: computed per query row for the distances it needs, with no (Lq x R)
// product and no shift copy.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

#include "../rel_pos.h"
#include "cuda_utils.cuh"

namespace posenc {
namespace {

// A fixed block size for the kernels that reduce across the block: their rounding then
// depends on nothing but the data (so a full call and an incremental call agree).
constexpr int kThreads = 128;
// q rows up to this many bytes (in opmath) are staged in shared memory.
constexpr int64_t kMaxSharedQBytes = 40 * 1024;

struct Strides4 {
  int64_t s0, s1, s2, s3;
};

Strides4 strides4(const at::Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)}; }

using Geometry = detail::RelPosGeometry;


// One block per query row (b, h, i), grid-stride. The q row is staged in shared memory (in
// opmath) when it fits; each thread then takes keys j. Keys clipped to an edge row share one
// dot product, computed once by the whole block; the other keys each use their own row.
// causal: keys after the query (j >= visible) are written as 0 without reading rel_emb.
template <typename scalar_t, bool kSharedQ>
__global__ void rel_pos_scores_kernel(const scalar_t* __restrict__ q, Strides4 qs,
                                      const scalar_t* __restrict__ emb,
                                      scalar_t* __restrict__ out, Geometry G, int64_t n_rows,
                                      bool causal) {
  using opmath_t = at::opmath_type<scalar_t>;
  extern __shared__ __align__(sizeof(double)) unsigned char smem_raw[];
  opmath_t* qsh = reinterpret_cast<opmath_t*>(smem_raw);
  __shared__ opmath_t scratch[33];
  const int64_t D = G.dim;
  for (int64_t row = blockIdx.x; row < n_rows; row += gridDim.x) {
    const int64_t i = row % G.q_len;
    const int64_t h = (row / G.q_len) % G.heads;
    const int64_t b = row / (G.q_len * G.heads);
    const scalar_t* qrow = q + b * qs.s0 + h * qs.s1 + i * qs.s2;
    if (kSharedQ) {
      for (int64_t e = threadIdx.x; e < D; e += blockDim.x) {
        qsh[e] = static_cast<opmath_t>(qrow[e * qs.s3]);
      }
      __syncthreads();
    }
    auto qv = [&](int64_t e) -> opmath_t {
      return kSharedQ ? qsh[e] : static_cast<opmath_t>(qrow[e * qs.s3]);
    };
    const scalar_t* eh = emb + h * G.rows * D;
    const int64_t d0 = G.base + i;
    const auto span = detail::rel_pos_span(d0, G.k_len, G.m);
    const int64_t visible = detail::rel_pos_visible(d0, G.k_len, causal);
    // Edge values; the conditions are the same in every thread of the block.
    opmath_t v_top = 0, v_bottom = 0;
    if (span.j1 > 0) {
      opmath_t part = 0;
      const scalar_t* er = eh + (G.c + G.m) * D;
      for (int64_t e = threadIdx.x; e < D; e += blockDim.x) part += qv(e) * static_cast<opmath_t>(er[e]);
      v_top = cuda::block_sum(part, scratch);
    }
    if (span.j2 < visible) {
      opmath_t part = 0;
      const scalar_t* er = eh + (G.c - G.m) * D;
      for (int64_t e = threadIdx.x; e < D; e += blockDim.x) part += qv(e) * static_cast<opmath_t>(er[e]);
      v_bottom = cuda::block_sum(part, scratch);
    }
    scalar_t* orow = out + row * G.k_len;
    for (int64_t j = threadIdx.x; j < G.k_len; j += blockDim.x) {
      opmath_t v;
      if (j >= visible) {
        v = 0;
      } else if (j < span.j1) {
        v = v_top;
      } else if (j >= span.j2) {
        v = v_bottom;
      } else {
        const scalar_t* er = eh + (G.c + d0 - j) * D;
        v = 0;
        for (int64_t e = 0; e < D; ++e) v += qv(e) * static_cast<opmath_t>(er[e]);
      }
      orow[j] = static_cast<scalar_t>(v);
    }
    if (kSharedQ) __syncthreads();  // qsh is rewritten for the next row
  }
}

// Backward, pass 1: one block per query row. Sums the upstream gradient over the keys clipped
// to each edge row (kept in `edge_sums` for pass 2) and gathers grad_q[b,h,i,:] =
// sum_j g[b,h,i,j] rel_emb[h, row(i,j), :], threads over the head dim, in double.
template <typename scalar_t>
__global__ void rel_pos_grad_q_kernel(const scalar_t* __restrict__ g, Strides4 gs,
                                      const scalar_t* __restrict__ emb,
                                      scalar_t* __restrict__ grad_q, double* __restrict__ edge_sums,
                                      Geometry G, int64_t n_rows, bool causal) {
  __shared__ double scratch[33];
  const int64_t D = G.dim;
  for (int64_t row = blockIdx.x; row < n_rows; row += gridDim.x) {
    const int64_t i = row % G.q_len;
    const int64_t h = (row / G.q_len) % G.heads;
    const int64_t b = row / (G.q_len * G.heads);
    const scalar_t* grow = g + b * gs.s0 + h * gs.s1 + i * gs.s2;
    const int64_t d0 = G.base + i;
    const auto span = detail::rel_pos_span(d0, G.k_len, G.m);
    // Masked keys (causal) carry no gradient: with M >= 0 they all lie past j1, so only the
    // bottom edge and the unclipped run end early.
    const int64_t visible = detail::rel_pos_visible(d0, G.k_len, causal);
    const int64_t j_copy = span.j2 < visible ? span.j2 : visible;
    double top = 0.0, bottom = 0.0;
    for (int64_t j = threadIdx.x; j < span.j1; j += blockDim.x) top += static_cast<double>(grow[j * gs.s3]);
    for (int64_t j = span.j2 + threadIdx.x; j < visible; j += blockDim.x) {
      bottom += static_cast<double>(grow[j * gs.s3]);
    }
    top = cuda::block_sum(top, scratch);
    bottom = cuda::block_sum(bottom, scratch);
    if (threadIdx.x == 0) {
      edge_sums[2 * row] = top;
      edge_sums[2 * row + 1] = bottom;
    }
    const scalar_t* eh = emb + h * G.rows * D;
    const bool has_top = span.j1 > 0, has_bottom = span.j2 < visible;
    for (int64_t e = threadIdx.x; e < D; e += blockDim.x) {
      double acc = 0.0;
      if (G.m == 0) {
        if (has_top || has_bottom) acc += (top + bottom) * static_cast<double>(eh[G.c * D + e]);
      } else {
        if (has_top) acc += top * static_cast<double>(eh[(G.c + G.m) * D + e]);
        if (has_bottom) acc += bottom * static_cast<double>(eh[(G.c - G.m) * D + e]);
      }
      for (int64_t j = span.j1; j < j_copy; ++j) {
        acc += static_cast<double>(grow[j * gs.s3]) * static_cast<double>(eh[(G.c + d0 - j) * D + e]);
      }
      grad_q[row * D + e] = static_cast<scalar_t>(acc);
    }
  }
}

// Backward, pass 2: grad_rel_emb[h, r, :] = sum over (b, i) of w(b,h,i,r) q[b,h,i,:], where w
// is g at the one key at distance r - c (interior rows) or an edge sum from pass 1 (rows
// c +- M). Block u = (split, h, r) owns a fixed share of the (b, i) terms, added in order in
// double into `partial`, or straight into `grad_emb` when there is a single split; threads
// over the head dim. No atomics.
template <typename scalar_t>
__global__ void rel_pos_grad_emb_partial_kernel(const scalar_t* __restrict__ g, Strides4 gs,
                                                const scalar_t* __restrict__ q, Strides4 qs,
                                                const double* __restrict__ edge_sums,
                                                double* __restrict__ partial,
                                                scalar_t* __restrict__ grad_emb, Geometry G,
                                                int64_t splits, int64_t per_split, bool causal) {
  const int64_t D = G.dim;
  const int64_t n_bi = G.batch * G.q_len;
  const int64_t units = splits * G.heads * G.rows;
  for (int64_t u = blockIdx.x; u < units; u += gridDim.x) {
    const int64_t r = u % G.rows;
    const int64_t h = (u / G.rows) % G.heads;
    const int64_t sp = u / (G.rows * G.heads);
    const int64_t dist = r - G.c;  // the (clipped) distance that row r stands for
    // Causal: keys at negative distances are masked, so those rows get no gradient (the
    // bottom edge sums of pass 1 are 0 then, and M = 0 adds only the top sums).
    const bool used = dist >= -G.m && dist <= G.m && !(causal && dist < 0);
    const int64_t t0 = sp * per_split;
    const int64_t t1 = used ? (t0 + per_split < n_bi ? t0 + per_split : n_bi) : t0;
    for (int64_t e = threadIdx.x; e < D; e += blockDim.x) {
      double acc = 0.0;
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t b = t / G.q_len, i = t % G.q_len;
        const int64_t qrow = (b * G.heads + h) * G.q_len + i;
        const int64_t d0 = G.base + i;
        const auto span = detail::rel_pos_span(d0, G.k_len, G.m);
        double w;
        if (G.m == 0) {
          if (span.j1 == 0 && span.j2 == G.k_len) continue;
          w = edge_sums[2 * qrow] + edge_sums[2 * qrow + 1];
        } else if (dist == G.m) {
          if (span.j1 == 0) continue;
          w = edge_sums[2 * qrow];
        } else if (dist == -G.m) {
          if (span.j2 == G.k_len) continue;
          w = edge_sums[2 * qrow + 1];
        } else {
          const int64_t j = d0 - dist;  // inside [j1, j2) whenever it is a key
          if (j < 0 || j >= G.k_len) continue;
          w = static_cast<double>(g[b * gs.s0 + h * gs.s1 + i * gs.s2 + j * gs.s3]);
        }
        acc += w * static_cast<double>(q[b * qs.s0 + h * qs.s1 + i * qs.s2 + e * qs.s3]);
      }
      if (splits == 1) {
        grad_emb[u * D + e] = static_cast<scalar_t>(acc);
      } else {
        partial[u * D + e] = acc;
      }
    }
  }
}

// Pass 3: add the splits in order and cast.
template <typename scalar_t>
__global__ void rel_pos_grad_emb_final_kernel(const double* __restrict__ partial,
                                              scalar_t* __restrict__ grad_emb, int64_t n,
                                              int64_t splits) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < n;
       idx += stride) {
    double s = 0.0;
    for (int64_t sp = 0; sp < splits; ++sp) s += partial[sp * n + idx];
    grad_emb[idx] = static_cast<scalar_t>(s);
  }
}

at::Tensor rel_pos_scores_cuda(const at::Tensor& q, const at::Tensor& rel_emb_in,
                               int64_t q_offset, int64_t k_offset, int64_t k_len,
                               std::optional<int64_t> max_distance, bool causal) {
  detail::check_rel_pos_scores("rel_pos_scores", q, rel_emb_in, k_len, max_distance);
  const c10::cuda::CUDAGuard guard(q.device());
  auto out = at::empty({q.size(0), q.size(1), q.size(2), k_len}, q.options());
  if (out.numel() == 0) return out;
  const auto rel_emb = rel_emb_in.contiguous();  // a parameter: small
  const Geometry G = detail::rel_pos_geometry(q, rel_emb, q_offset, k_offset, k_len, max_distance);
  const int64_t n_rows = G.batch * G.heads * G.q_len;
  const auto stream = c10::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "rel_pos_scores_cuda", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const int64_t q_bytes = G.dim * static_cast<int64_t>(sizeof(opmath_t));
    const unsigned int blocks = cuda::num_blocks(n_rows);
    if (q_bytes <= kMaxSharedQBytes) {
      rel_pos_scores_kernel<scalar_t, true><<<blocks, kThreads, q_bytes, stream>>>(
          q.const_data_ptr<scalar_t>(), strides4(q), rel_emb.const_data_ptr<scalar_t>(),
          out.mutable_data_ptr<scalar_t>(), G, n_rows, causal);
    } else {
      rel_pos_scores_kernel<scalar_t, false><<<blocks, kThreads, 0, stream>>>(
          q.const_data_ptr<scalar_t>(), strides4(q), rel_emb.const_data_ptr<scalar_t>(),
          out.mutable_data_ptr<scalar_t>(), G, n_rows, causal);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> rel_pos_scores_backward_cuda(
    const at::Tensor& grad_in, const at::Tensor& q, const at::Tensor& rel_emb_in,
    int64_t q_offset, int64_t k_offset, int64_t k_len, std::optional<int64_t> max_distance,
    bool causal) {
  detail::check_rel_pos_scores_backward("rel_pos_scores_backward", grad_in, q, rel_emb_in, k_len,
                                        max_distance);
  const c10::cuda::CUDAGuard guard(q.device());
  if (grad_in.numel() == 0 || q.size(3) == 0) {
    return {at::zeros(q.sizes(), q.options()), at::zeros(rel_emb_in.sizes(), rel_emb_in.options())};
  }
  const auto grad = grad_in.to(q.scalar_type());  // read through its strides
  const auto rel_emb = rel_emb_in.contiguous();
  const Geometry G = detail::rel_pos_geometry(q, rel_emb, q_offset, k_offset, k_len, max_distance);
  const int64_t n_rows = G.batch * G.heads * G.q_len;
  auto grad_q = at::empty(q.sizes(), q.options());
  auto grad_emb = at::empty(rel_emb.sizes(), rel_emb.options());
  auto edge_sums = at::empty({n_rows, 2}, q.options().dtype(at::kDouble));

  // Split the (b, i) terms of each rel_emb row when there are few rows, aiming at about 1024
  // blocks with at least 16 terms each; the partial buffer then stays small.
  const int64_t n_bi = G.batch * G.q_len;
  const int64_t hr = G.heads * G.rows;
  const int64_t splits = std::clamp<int64_t>((1024 + hr - 1) / hr, 1, (n_bi + 15) / 16);
  const int64_t per_split = (n_bi + splits - 1) / splits;
  // One split (many rel_emb rows) needs no buffer: a table with long distances stays one
  // (H, R, D) tensor, not also a double copy of it.
  auto partial = at::empty({splits > 1 ? splits * hr * G.dim : 0}, q.options().dtype(at::kDouble));
  const int emb_threads = cuda::pow2_at_least(std::max<int64_t>(G.dim, 32), 256);
  const auto stream = c10::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "rel_pos_scores_backward_cuda", [&] {
    rel_pos_grad_q_kernel<scalar_t><<<cuda::num_blocks(n_rows), kThreads, 0, stream>>>(
        grad.const_data_ptr<scalar_t>(), strides4(grad), rel_emb.const_data_ptr<scalar_t>(),
        grad_q.mutable_data_ptr<scalar_t>(), edge_sums.mutable_data_ptr<double>(), G, n_rows,
        causal);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    rel_pos_grad_emb_partial_kernel<scalar_t><<<cuda::num_blocks(splits * hr), emb_threads, 0, stream>>>(
        grad.const_data_ptr<scalar_t>(), strides4(grad), q.const_data_ptr<scalar_t>(), strides4(q),
        edge_sums.const_data_ptr<double>(), partial.mutable_data_ptr<double>(),
        grad_emb.mutable_data_ptr<scalar_t>(), G, splits, per_split, causal);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (splits > 1) {
      const int64_t n = grad_emb.numel();
      rel_pos_grad_emb_final_kernel<scalar_t><<<cuda::num_blocks(n, 256), 256, 0, stream>>>(
          partial.const_data_ptr<double>(), grad_emb.mutable_data_ptr<scalar_t>(), n, splits);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {grad_q, grad_emb};
}

}  // namespace
}  // namespace posenc

TORCH_LIBRARY_IMPL(posenc, CUDA, m) {
  m.impl("rel_pos_scores", &posenc::rel_pos_scores_cuda);
  m.impl("rel_pos_scores_backward", &posenc::rel_pos_scores_backward_cuda);
}
