// RoPE (Su et al. 2021) and Hugging Face's apply_rotary_pos_emb on CUDA: the same numbers as
// ../cpu/rope_kernel.cpp. x is read through its strides (bhsd, bshd, views into packed qkv,
// any last-dim stride) and every element is read and written once: 16-byte vectors where the
// rows are aligned and contiguous, single elements otherwise (the same values). cos/sin are
// computed (rope) or read (apply_rotary_pos_emb) once per (batch, position, pair) and shared
// by every head.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

#include "../rope.h"
#include "cuda_utils.cuh"

namespace posenc {
namespace {

using detail::rope_pair_index;

constexpr int kThreads = 256;
// Pairs whose cos/sin a block keeps in shared memory at a time (8 KiB of fp64 for
// apply_rotary_pos_emb's four rows); longer rotary dims are walked in chunks of this many.
constexpr int64_t kPairChunk = 256;

using detail::Bhsd;
using detail::bhsd;
using detail::RopeParams;
using detail::thd;

// A (S, R) or (B, S, R) cos/sin table: element strides, batch stride 0 for a shared table.
struct Table {
  int64_t sb, ss, sr;
};

Table table(const at::Tensor& t) {
  if (t.dim() == 2) return {0, t.stride(0), t.stride(1)};
  return {t.stride(0), t.stride(1), t.stride(2)};
}

// The rotation kernels: a block owns one (batch, position) unit at a time (grid-stride over
// the B * S units). Its threads first put the unit's cos/sin of a chunk of pairs into shared
// memory -- computed (rope) or loaded (apply_rotary_pos_emb) once per (position, frequency) --
// then threadIdx.y runs over the heads and threadIdx.x over groups of pairs, every head
// rotated from the same shared values. A group is one 16-byte vector of x (V elements: V pairs
// half-split, V / 2 interleaved) when the rows allow it (vector_width), else one pair read
// through x's strides (V = 1); both paths compute each element by the same expression.
dim3 rotation_block(int64_t H, int64_t half, int64_t D, int V, bool interleaved) {
  const int64_t per_group = V == 1 ? 1 : (interleaved ? V / 2 : V);
  const int64_t groups = (std::min(half, kPairChunk) + per_group - 1) / per_group;
  const int64_t pass = (D - 2 * half + V - 1) / V;  // pass-through vectors
  const int tx = cuda::pow2_at_least(std::max<int64_t>({groups, pass, 1}), 64);
  const int ty = std::min(kThreads / tx, cuda::pow2_at_least(H, kThreads));
  return dim3(tx, ty);
}

// Strides of the (b, h, s) dims that matter (size > 1) are multiples of V.
bool rows_aligned(const Bhsd& g, int64_t V) {
  for (int i = 0; i < 3; ++i) {
    if (g.size[i] > 1 && g.stride[i] % V != 0) return false;
  }
  return true;
}

// V = 16 / sizeof(scalar_t) when every row of x and out starts 16-byte aligned, is contiguous,
// and the pairs and the pass-through dims split into whole vectors; 1 otherwise.
template <typename scalar_t>
int vector_width(const scalar_t* x, const Bhsd& xg, const scalar_t* out, const Bhsd& og,
                 int64_t half, bool interleaved) {
  constexpr int V = cuda::kVec<scalar_t>;
  const bool ok = xg.stride[3] == 1 && og.stride[3] == 1 && cuda::is_aligned16(x) &&
                  cuda::is_aligned16(out) && rows_aligned(xg, V) && rows_aligned(og, V) &&
                  half % (interleaved ? V / 2 : V) == 0 && xg.size[3] % V == 0;
  return ok ? V : 1;
}

template <typename T, int N>
__device__ __forceinline__ cuda::Pack<T, N> load_pack(const T* p) {
  return *reinterpret_cast<const cuda::Pack<T, N>*>(p);
}

template <typename T, int N>
__device__ __forceinline__ void store_pack(T* p, const cuda::Pack<T, N>& v) {
  *reinterpret_cast<cuda::Pack<T, N>*>(p) = v;
}

// The pair (a, b) = (x[i1], x[i2]) rotated by (c1, s1) at i1 and (c2, s2) at i2:
//   forward  o1 = a c1 - b s1,  o2 = b c2 + a s2   (rope: c1 = c2 = cos, s1 = s2 = sin)
//   adjoint  o1 = a c1 + b s2,  o2 = b c2 - a s1   (apply_rotary_pos_emb's x-gradient)
template <typename T>
__device__ __forceinline__ void rotate_pair(T a, T b, T c1, T s1, T c2, T s2, bool adjoint, T& o1,
                                            T& o2) {
  if (adjoint) {
    o1 = a * c1 + b * s2;
    o2 = b * c2 - a * s1;
  } else {
    o1 = a * c1 - b * s1;
    o2 = b * c2 + a * s2;
  }
}

// Per-pair cos/sin of a chunk in shared memory: c1/s1 at i1, c2/s2 at i2 (rope: c2 = c1 and
// s2 = s1, the same arrays).
template <typename T>
struct ChunkTable {
  const T* c1;
  const T* s1;
  const T* c2;
  const T* s2;
};

// Rotates the group of pairs starting at pair k (local index q in the chunk table) of one row.
template <int V, typename scalar_t, typename T>
__device__ __forceinline__ void rotate_group(const scalar_t* __restrict__ xr, int64_t xd,
                                             scalar_t* __restrict__ orow, int64_t od, int64_t k,
                                             int64_t q, int64_t half, bool interleaved,
                                             const ChunkTable<T>& t, bool adjoint) {
  if constexpr (V == 1) {
    int64_t i1, i2;
    rope_pair_index(k, half, interleaved, i1, i2);
    T o1, o2;
    rotate_pair(static_cast<T>(xr[i1 * xd]), static_cast<T>(xr[i2 * xd]), t.c1[q], t.s1[q],
                t.c2[q], t.s2[q], adjoint, o1, o2);
    orow[i1 * od] = static_cast<scalar_t>(o1);
    orow[i2 * od] = static_cast<scalar_t>(o2);
  } else if (interleaved) {  // V / 2 pairs (2k, 2k + 1), ... in one vector
    const auto v = load_pack<scalar_t, V>(xr + 2 * k);
    cuda::Pack<scalar_t, V> o;
#pragma unroll
    for (int e = 0; e < V / 2; ++e) {
      T o1, o2;
      rotate_pair(static_cast<T>(v.v[2 * e]), static_cast<T>(v.v[2 * e + 1]), t.c1[q + e],
                  t.s1[q + e], t.c2[q + e], t.s2[q + e], adjoint, o1, o2);
      o.v[2 * e] = static_cast<scalar_t>(o1);
      o.v[2 * e + 1] = static_cast<scalar_t>(o2);
    }
    store_pack(orow + 2 * k, o);
  } else {  // V pairs (k, k + half), ... in two vectors
    const auto u = load_pack<scalar_t, V>(xr + k);
    const auto w = load_pack<scalar_t, V>(xr + half + k);
    cuda::Pack<scalar_t, V> o1v, o2v;
#pragma unroll
    for (int e = 0; e < V; ++e) {
      T o1, o2;
      rotate_pair(static_cast<T>(u.v[e]), static_cast<T>(w.v[e]), t.c1[q + e], t.s1[q + e],
                  t.c2[q + e], t.s2[q + e], adjoint, o1, o2);
      o1v.v[e] = static_cast<scalar_t>(o1);
      o2v.v[e] = static_cast<scalar_t>(o2);
    }
    store_pack(orow + k, o1v);
    store_pack(orow + half + k, o2v);
  }
}

// Rotates the pairs [k0, k0 + nk) of every head of unit (b, s) from the chunk table, then
// (last chunk) copies the pass-through dims [2 half, D) bit-exactly.
template <int V, typename scalar_t, typename T>
__device__ __forceinline__ void rotate_unit_chunk(const scalar_t* __restrict__ x, const Bhsd& xg,
                                                  scalar_t* __restrict__ out, const Bhsd& og,
                                                  int64_t b, int64_t s, int64_t k0, int64_t nk,
                                                  int64_t half, bool interleaved,
                                                  const ChunkTable<T>& t, bool adjoint) {
  const int64_t per_group = V == 1 ? 1 : (interleaved ? V / 2 : V);
  const int64_t H = xg.size[1], xd = xg.stride[3], od = og.stride[3];
  for (int64_t h = threadIdx.y; h < H; h += blockDim.y) {
    const scalar_t* xr = x + xg.offset(b, h, s);
    scalar_t* orow = out + og.offset(b, h, s);
    for (int64_t q = threadIdx.x * per_group; q < nk; q += blockDim.x * per_group) {
      rotate_group<V>(xr, xd, orow, od, k0 + q, q, half, interleaved, t, adjoint);
    }
  }
}

template <int V, typename scalar_t>
__device__ __forceinline__ void copy_pass_through(const scalar_t* __restrict__ x, const Bhsd& xg,
                                                  scalar_t* __restrict__ out, const Bhsd& og,
                                                  int64_t b, int64_t s, int64_t half) {
  const int64_t H = xg.size[1], D = xg.size[3], xd = xg.stride[3], od = og.stride[3];
  for (int64_t h = threadIdx.y; h < H; h += blockDim.y) {
    const scalar_t* xr = x + xg.offset(b, h, s);
    scalar_t* orow = out + og.offset(b, h, s);
    for (int64_t d = 2 * half + threadIdx.x * V; d < D; d += blockDim.x * V) {
      if constexpr (V == 1) {
        orow[d * od] = xr[d * xd];  // bit-exact
      } else {
        store_pack(orow + d, load_pack<scalar_t, V>(xr + d));
      }
    }
  }
}

// Magnitude parameters of rope (attention_factor, xPos), in the kernel's math type.
template <typename T>
struct Magnitude {
  const float* zeta;  // nullptr: no xPos
  T factor, scale_base;
  bool inverse;
  int64_t centre;
};

// A tensor rotated by the kernels: x (or the upstream gradient) and its output, both seen as
// (B, H, S, D). x == nullptr: none.
template <typename scalar_t>
struct Rotated {
  const scalar_t* x;
  Bhsd xg;
  scalar_t* out;
  Bhsd og;
};

// rope (conjugate = false) and rope_backward (conjugate = true, the same magnitude times the
// rotation by -angle), of q alone or of q and k in one launch (rope_qk: the same B, S and D,
// heads may differ; k takes the inverse xPos magnitude). cu != nullptr: packed "thd" input
// seen as (1, H, T, D), the position of token s found by a binary search in cu_seqlens (n_cu
// entries). cos/sin are computed once per (unit, pair) and shared by every head of q and k;
// the magnitude once per (unit, pair) and tensor.
template <typename scalar_t, int V>
__global__ void rope_kernel(Rotated<scalar_t> q, Rotated<scalar_t> k,
                            const int64_t* __restrict__ pos, int64_t pos_sb, int64_t pos_ss,
                            const int64_t* __restrict__ cu, int64_t n_cu, int64_t offset,
                            const float* __restrict__ freq32, const double* __restrict__ freq64,
                            int64_t half, Magnitude<at::opmath_type<scalar_t>> mag,
                            bool interleaved, bool conjugate) {
  using opmath_t = at::opmath_type<scalar_t>;
  __shared__ opmath_t cs[2][kPairChunk], sn[2][kPairChunk];  // [0]: q, [1]: k
  const ChunkTable<opmath_t> tq{cs[0], sn[0], cs[0], sn[0]};
  const ChunkTable<opmath_t> tk{cs[1], sn[1], cs[1], sn[1]};
  const bool has_k = k.x != nullptr;
  const int64_t S = q.xg.size[2];
  const int64_t units = q.xg.size[0] * S;
  const int tid = cuda::block_tid(), nthreads = cuda::block_threads();
  for (int64_t u = blockIdx.x; u < units; u += gridDim.x) {  // uniform in the block
    const int64_t b = u / S, s = u - b * S;
    const int64_t p = (pos != nullptr  ? pos[b * pos_sb + s * pos_ss]
                       : cu != nullptr ? s - detail::rope_seq_start(cu, n_cu, s)
                                       : s) +
                      offset;
    for (int64_t k0 = 0; k0 < half; k0 += kPairChunk) {
      const int64_t nk = half - k0 < kPairChunk ? half - k0 : kPairChunk;
      __syncthreads();  // the previous chunk (or unit) is no longer read
      for (int64_t kk = tid; kk < nk; kk += nthreads) {
        // Angle as on CPU (detail::rope_cos_sin); cos/sin and magnitude in opmath.
        opmath_t c, sv;
        detail::rope_cos_sin<opmath_t>(p, freq32, freq64, k0 + kk, c, sv);
        for (int w = 0; w < (has_k ? 2 : 1); ++w) {
          const opmath_t m = detail::rope_magnitude<opmath_t>(
              mag.factor, mag.zeta, k0 + kk, p, mag.centre, mag.scale_base,
              w == 0 ? mag.inverse : !mag.inverse);
          cs[w][kk] = c * m;
          sn[w][kk] = sv * (conjugate ? -m : m);
        }
      }
      __syncthreads();
      rotate_unit_chunk<V>(q.x, q.xg, q.out, q.og, b, s, k0, nk, half, interleaved, tq, false);
      if (has_k) {
        rotate_unit_chunk<V>(k.x, k.xg, k.out, k.og, b, s, k0, nk, half, interleaved, tk, false);
      }
    }
    copy_pass_through<V>(q.x, q.xg, q.out, q.og, b, s, half);
    if (has_k) copy_pass_through<V>(k.x, k.xg, k.out, k.og, b, s, half);
  }
}

// apply_rotary_pos_emb (adjoint = false) and its x-gradient (adjoint = true), see rotate_pair,
// with (a, b) the pair of x (forward) or of the upstream gradient (adjoint), for one tensor or
// for q and k in one launch (the same B, S and D; heads may differ). The unit's table row is
// read once (per chunk) into shared memory, in opmath, and shared by every head of q and k.
template <typename scalar_t, int V>
__global__ void apply_rotary_kernel(Rotated<scalar_t> q, Rotated<scalar_t> k,
                                    const scalar_t* __restrict__ cosp, Table ct,
                                    const scalar_t* __restrict__ sinp, Table st, int64_t half,
                                    bool interleaved, bool adjoint) {
  using opmath_t = at::opmath_type<scalar_t>;
  __shared__ opmath_t c1[kPairChunk], c2[kPairChunk], s1[kPairChunk], s2[kPairChunk];
  const ChunkTable<opmath_t> t{c1, s1, c2, s2};
  const int64_t S = q.xg.size[2];
  const int64_t units = q.xg.size[0] * S;
  const int tid = cuda::block_tid(), nthreads = cuda::block_threads();
  for (int64_t u = blockIdx.x; u < units; u += gridDim.x) {  // uniform in the block
    const int64_t b = u / S, s = u - b * S;
    const scalar_t* cr = cosp + b * ct.sb + s * ct.ss;
    const scalar_t* sr = sinp + b * st.sb + s * st.ss;
    for (int64_t k0 = 0; k0 < half; k0 += kPairChunk) {
      const int64_t nk = half - k0 < kPairChunk ? half - k0 : kPairChunk;
      __syncthreads();  // the previous chunk (or unit) is no longer read
      for (int64_t kk = tid; kk < nk; kk += nthreads) {
        int64_t i1, i2;
        rope_pair_index(k0 + kk, half, interleaved, i1, i2);
        c1[kk] = static_cast<opmath_t>(cr[i1 * ct.sr]);
        c2[kk] = static_cast<opmath_t>(cr[i2 * ct.sr]);
        s1[kk] = static_cast<opmath_t>(sr[i1 * st.sr]);
        s2[kk] = static_cast<opmath_t>(sr[i2 * st.sr]);
      }
      __syncthreads();
      rotate_unit_chunk<V>(q.x, q.xg, q.out, q.og, b, s, k0, nk, half, interleaved, t, adjoint);
      if (k.x != nullptr) {
        rotate_unit_chunk<V>(k.x, k.xg, k.out, k.og, b, s, k0, nk, half, interleaved, t, adjoint);
      }
    }
    copy_pass_through<V>(q.x, q.xg, q.out, q.og, b, s, half);
    if (k.x != nullptr) copy_pass_through<V>(k.x, k.xg, k.out, k.og, b, s, half);
  }
}

// cos/sin gradients of apply_rotary_pos_emb: grad_cos = sum g * x, grad_sin = sum g * rotate(x)
// over heads (and batch for an (S, R) table). A block owns a table row; threadIdx.x runs over
// pairs, threadIdx.y over a strided share of the (batch, head) terms in double; the shares are
// then added in threadIdx.y order. No atomics, a fixed order: deterministic.
template <typename scalar_t>
__global__ void apply_rotary_table_grad_kernel(const scalar_t* __restrict__ x, Bhsd xg,
                                               const scalar_t* __restrict__ g, Bhsd gg,
                                               scalar_t* __restrict__ grad_cos,
                                               scalar_t* __restrict__ grad_sin, int64_t half,
                                               bool interleaved, bool batched,
                                               int64_t table_rows) {
  extern __shared__ double shares[];  // 4 per thread
  const int64_t B = xg.size[0], H = xg.size[1], S = xg.size[2];
  const int64_t xd = xg.stride[3], gd = gg.stride[3];
  const int64_t nbh = (batched ? 1 : B) * H;
  const int64_t rot = 2 * half;
  double* mine = shares + 4 * (threadIdx.y * blockDim.x + threadIdx.x);
  for (int64_t row = blockIdx.x; row < table_rows; row += gridDim.x) {
    const int64_t s = row % S;
    const int64_t b0 = batched ? row / S : 0;
    for (int64_t k0 = 0; k0 < half; k0 += blockDim.x) {  // the same trip count in every thread
      const int64_t k = k0 + threadIdx.x;
      int64_t i1 = 0, i2 = 0;
      double ac1 = 0.0, ac2 = 0.0, as1 = 0.0, as2 = 0.0;
      if (k < half) {
        rope_pair_index(k, half, interleaved, i1, i2);
        for (int64_t bh = threadIdx.y; bh < nbh; bh += blockDim.y) {
          const int64_t b = b0 + bh / H, h = bh % H;
          const scalar_t* xr = x + xg.offset(b, h, s);
          const scalar_t* gr = g + gg.offset(b, h, s);
          const double a = static_cast<double>(xr[i1 * xd]);
          const double c = static_cast<double>(xr[i2 * xd]);
          const double g1 = static_cast<double>(gr[i1 * gd]);
          const double g2 = static_cast<double>(gr[i2 * gd]);
          ac1 += g1 * a;
          ac2 += g2 * c;
          as1 -= g1 * c;
          as2 += g2 * a;
        }
      }
      mine[0] = ac1;
      mine[1] = ac2;
      mine[2] = as1;
      mine[3] = as2;
      __syncthreads();
      if (threadIdx.y == 0 && k < half) {
        double t[4] = {0.0, 0.0, 0.0, 0.0};
        for (unsigned int y = 0; y < blockDim.y; ++y) {
          const double* other = shares + 4 * (y * blockDim.x + threadIdx.x);
          for (int q = 0; q < 4; ++q) t[q] += other[q];
        }
        grad_cos[row * rot + i1] = static_cast<scalar_t>(t[0]);
        grad_cos[row * rot + i2] = static_cast<scalar_t>(t[1]);
        grad_sin[row * rot + i1] = static_cast<scalar_t>(t[2]);
        grad_sin[row * rot + i2] = static_cast<scalar_t>(t[3]);
      }
      __syncthreads();
    }
  }
}


// Rotates x and, when k is defined (rope_qk), k (already checked against x) by one launch.
// The values of cu_seqlens and xpos_zeta are not checked here (that needs a device-to-host
// copy and a sync); see detail::check_rope_values and the docs of posenc::ops::rope.
std::tuple<at::Tensor, at::Tensor> launch_rope(const at::Tensor& x, const at::Tensor& k,
                                               const RopeParams& a, detail::RopeLayout lay,
                                               bool conjugate) {
  const bool packed = lay == detail::RopeLayout::kThd;
  const bool has_k = k.defined() && k.numel() > 0;
  auto out = at::empty(x.sizes(), x.options());
  auto k_out = k.defined() ? at::empty(k.sizes(), k.options()) : at::Tensor();
  if (out.numel() == 0) {  // the units are x's: rotate k alone, with k's (inverse) magnitude
    if (has_k) {
      const RopeParams ak{a.positions,  a.inv_freq,         a.offset,          a.rotary_dim,
                          a.interleaved, a.layout,          a.cu_seqlens,      a.attention_factor,
                          a.xpos_zeta,  a.xpos_scale_base,  !a.xpos_inverse,   a.xpos_centre};
      k_out = std::get<0>(launch_rope(k, at::Tensor(), ak, lay, conjugate));
    }
    return {out, k_out};
  }

  const auto inv_freq = a.inv_freq.contiguous();  // (R/2,): tiny
  const int64_t half = inv_freq.size(0);
  const bool exact = inv_freq.scalar_type() == at::kDouble;
  const bool bshd = lay == detail::RopeLayout::kBshd;
  auto view = [&](const at::Tensor& t) { return packed ? thd(t) : bhsd(t, bshd); };
  const Bhsd xg = view(x), og = view(out);
  const Bhsd kg = has_k ? view(k) : xg, kog = has_k ? view(k_out) : og;
  const int64_t B = xg.size[0], S = xg.size[2], D = xg.size[3];
  const int64_t H = std::max(xg.size[1], has_k ? kg.size[1] : int64_t{0});

  const bool has_pos = a.positions.has_value() && a.positions->defined();
  // int32 position ids are widened (a (B, S) copy, small beside x); int64 ones read in place.
  at::Tensor pos_t;
  if (has_pos) pos_t = a.positions->scalar_type() == at::kLong ? *a.positions : a.positions->to(at::kLong);
  const int64_t* pos = has_pos ? pos_t.const_data_ptr<int64_t>() : nullptr;
  int64_t pos_sb = 0, pos_ss = 0;  // a (S,) table is shared by every batch row
  if (has_pos) {
    pos_ss = pos_t.stride(-1);
    if (pos_t.dim() == 2) pos_sb = pos_t.stride(0);
  }
  at::Tensor cu;  // tiny; .contiguous() is an async device copy at most
  if (packed) cu = a.cu_seqlens->to(at::kLong).contiguous();
  at::Tensor zeta;
  if (a.xpos_zeta.has_value() && a.xpos_zeta->defined()) zeta = a.xpos_zeta->contiguous();

  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "rope_cuda", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const Magnitude<opmath_t> mag{zeta.defined() ? zeta.const_data_ptr<float>() : nullptr,
                                  static_cast<opmath_t>(a.attention_factor),
                                  static_cast<opmath_t>(a.xpos_scale_base), a.xpos_inverse,
                                  a.xpos_centre};
    const Rotated<scalar_t> rq{x.const_data_ptr<scalar_t>(), xg, out.mutable_data_ptr<scalar_t>(), og};
    const Rotated<scalar_t> rk{has_k ? k.const_data_ptr<scalar_t>() : nullptr, kg,
                               has_k ? k_out.mutable_data_ptr<scalar_t>() : nullptr, kog};
    int V = vector_width(rq.x, rq.xg, rq.out, rq.og, half, a.interleaved);
    if (has_k) V = std::min(V, vector_width(rk.x, rk.xg, rk.out, rk.og, half, a.interleaved));
    const dim3 block = rotation_block(H, half, D, V, a.interleaved);
    auto launch = [&](auto kernel) {
      kernel<<<cuda::num_blocks(B * S), block, 0, stream>>>(
          rq, rk, pos, pos_sb, pos_ss, packed ? cu.const_data_ptr<int64_t>() : nullptr,
          packed ? cu.size(0) : 0, a.offset, exact ? nullptr : inv_freq.const_data_ptr<float>(),
          exact ? inv_freq.const_data_ptr<double>() : nullptr, half, mag, a.interleaved,
          conjugate);
    };
    if (V == 1) {
      launch(rope_kernel<scalar_t, 1>);
    } else {
      launch(rope_kernel<scalar_t, cuda::kVec<scalar_t>>);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out, k_out};
}

// offset + positions[i] within int64: reads two numbers (a sync) where a wrap is possible,
// never during a graph capture.
void check_positions_wrap(const char* op, const std::optional<at::Tensor>& positions,
                          int64_t offset) {
  if (!positions.has_value() || !positions->defined() ||
      !detail::rope_positions_may_wrap(*positions, offset)) {
    return;
  }
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  C10_CUDA_CHECK(cudaStreamIsCapturing(c10::cuda::getCurrentCUDAStream(), &status));
  if (status == cudaStreamCaptureStatusNone) {
    detail::check_rope_positions_offset(op, *positions, offset);
  }
}

at::Tensor rope_cuda(const char* op, const char* arg, const at::Tensor& x, const RopeParams& a,
                     bool conjugate) {
  const detail::RopeLayout lay =
      detail::check_rope(op, arg, x, a.positions, a.inv_freq, a.rotary_dim, a.layout,
                         a.cu_seqlens, a.attention_factor, a.xpos_zeta, a.xpos_scale_base);
  detail::check_rope_offset(op, a.positions, a.offset, detail::rope_seq_len(x, lay));
  const c10::cuda::CUDAGuard guard(x.device());
  check_positions_wrap(op, a.positions, a.offset);
  return std::get<0>(launch_rope(x, at::Tensor(), a, lay, conjugate));
}

// rope_qk (Backward = false) and rope_qk_backward: the two rope calls it is defined to equal
// (q with the xPos magnitude, k with its inverse), in one launch that computes each cos/sin
// once for every head of q and k.
template <bool Backward>
std::tuple<at::Tensor, at::Tensor> rope_qk_cuda(
    const at::Tensor& q, const at::Tensor& k, const std::optional<at::Tensor>& positions,
    const at::Tensor& inv_freq, int64_t offset, std::optional<int64_t> rotary_dim,
    bool interleaved, c10::string_view layout, const std::optional<at::Tensor>& cu_seqlens,
    double attention_factor, const std::optional<at::Tensor>& xpos_zeta, double xpos_scale_base,
    int64_t xpos_centre) {
  const char* op = Backward ? "rope_qk_backward" : "rope_qk";
  const char* q_arg = Backward ? "grad_q" : "q";
  const detail::RopeLayout lay = detail::check_rope(op, q_arg, q, positions, inv_freq, rotary_dim,
                                                    layout, cu_seqlens, attention_factor,
                                                    xpos_zeta, xpos_scale_base);
  const RopeParams a{positions,  inv_freq,   offset,           rotary_dim,
                     interleaved, layout,    cu_seqlens,       attention_factor,
                     xpos_zeta,  xpos_scale_base, /*xpos_inverse=*/false, xpos_centre};
  detail::check_rope_pair(op, q_arg, q, Backward ? "grad_k" : "k", k, a, lay);
  detail::check_rope_offset(op, positions, offset, detail::rope_seq_len(q, lay));
  const c10::cuda::CUDAGuard guard(q.device());
  check_positions_wrap(op, positions, offset);
  return launch_rope(q, k, a, lay, /*conjugate=*/Backward);
}

// Rotates `q_src` (x, or the upstream gradient when adjoint) and, when defined, `k_src` (the
// same B, S, D and layout) into fresh contiguous tensors, in one launch.
std::tuple<at::Tensor, at::Tensor> launch_apply_rotary(const at::Tensor& q_src,
                                                       const at::Tensor& k_src,
                                                       const at::Tensor& cos, const at::Tensor& sin,
                                                       bool interleaved, bool bshd, bool adjoint) {
  const bool has_k = k_src.defined() && k_src.numel() > 0;
  if (q_src.numel() == 0) {  // the units are q's: rotate k alone
    at::Tensor k_out = k_src.defined() ? at::empty(k_src.sizes(), k_src.options()) : at::Tensor();
    if (has_k) {
      k_out = std::get<0>(launch_apply_rotary(k_src, at::Tensor(), cos, sin, interleaved, bshd,
                                              adjoint));
    }
    return {at::empty(q_src.sizes(), q_src.options()), k_out};
  }
  auto q_out = at::empty(q_src.sizes(), q_src.options());
  auto k_out = k_src.defined() ? at::empty(k_src.sizes(), k_src.options()) : at::Tensor();
  const Bhsd qg = bhsd(q_src, bshd), qog = bhsd(q_out, bshd);
  const Bhsd kg = has_k ? bhsd(k_src, bshd) : qg, kog = has_k ? bhsd(k_out, bshd) : qog;
  const int64_t B = qg.size[0], S = qg.size[2], D = qg.size[3];
  const int64_t H = std::max(qg.size[1], has_k ? kg.size[1] : 0);
  const int64_t half = cos.size(-1) / 2;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q_src.scalar_type(), "apply_rotary_pos_emb_cuda", [&] {
    const Rotated<scalar_t> q{q_src.const_data_ptr<scalar_t>(), qg,
                              q_out.mutable_data_ptr<scalar_t>(), qog};
    const Rotated<scalar_t> k{has_k ? k_src.const_data_ptr<scalar_t>() : nullptr, kg,
                              has_k ? k_out.mutable_data_ptr<scalar_t>() : nullptr, kog};
    int V = vector_width(q.x, q.xg, q.out, q.og, half, interleaved);
    if (has_k) V = std::min(V, vector_width(k.x, k.xg, k.out, k.og, half, interleaved));
    const dim3 block = rotation_block(H, half, D, V, interleaved);
    auto launch = [&](auto kernel) {
      kernel<<<cuda::num_blocks(B * S), block, 0, stream>>>(
          q, k, cos.const_data_ptr<scalar_t>(), table(cos), sin.const_data_ptr<scalar_t>(),
          table(sin), half, interleaved, adjoint);
    };
    if (V == 1) {
      launch(apply_rotary_kernel<scalar_t, 1>);
    } else {
      launch(apply_rotary_kernel<scalar_t, cuda::kVec<scalar_t>>);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {q_out, k_out};
}

at::Tensor apply_rotary_pos_emb_forward_cuda(const at::Tensor& x, const at::Tensor& cos,
                                             const at::Tensor& sin, bool interleaved,
                                             c10::string_view layout) {
  const bool bshd = detail::check_apply_rotary("apply_rotary_pos_emb", x, cos, sin, layout);
  const c10::cuda::CUDAGuard guard(x.device());
  if (x.numel() == 0) return at::empty(x.sizes(), x.options());
  return std::get<0>(
      launch_apply_rotary(x, at::Tensor(), cos, sin, interleaved, bshd, /*adjoint=*/false));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> apply_rotary_pos_emb_backward_cuda(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin,
    bool interleaved, c10::string_view layout) {
  const bool bshd =
      detail::check_apply_rotary_backward("apply_rotary_pos_emb_backward", grad, x, cos, sin, layout);
  const c10::cuda::CUDAGuard guard(x.device());
  if (x.numel() == 0) {
    return {at::empty(x.sizes(), x.options()), at::zeros(cos.sizes(), cos.options()),
            at::zeros(sin.sizes(), sin.options())};
  }
  auto grad_x = std::get<0>(
      launch_apply_rotary(grad, at::Tensor(), cos, sin, interleaved, bshd, /*adjoint=*/true));
  auto grad_cos = at::empty(cos.sizes(), cos.options());
  auto grad_sin = at::empty(sin.sizes(), sin.options());
  if (grad_cos.numel() == 0) return {grad_x, grad_cos, grad_sin};

  const Bhsd xg = bhsd(x, bshd);
  const Bhsd gg = bhsd(grad, bshd);
  const int64_t B = xg.size[0], H = xg.size[1], S = xg.size[2];
  const int64_t half = cos.size(-1) / 2;
  const bool batched = cos.dim() == 3;
  const int64_t table_rows = (batched ? B : 1) * S;
  const int64_t nbh = (batched ? 1 : B) * H;
  const int tx = cuda::pow2_at_least(half, 32);
  const int ty = std::min(kThreads / tx, cuda::pow2_at_least(nbh, kThreads));
  const dim3 block(tx, ty);
  const size_t smem = sizeof(double) * 4 * tx * ty;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "apply_rotary_pos_emb_backward_cuda", [&] {
    apply_rotary_table_grad_kernel<scalar_t><<<cuda::num_blocks(table_rows), block, smem, stream>>>(
        x.const_data_ptr<scalar_t>(), xg, grad.const_data_ptr<scalar_t>(), gg,
        grad_cos.mutable_data_ptr<scalar_t>(), grad_sin.mutable_data_ptr<scalar_t>(), half,
        interleaved, batched, table_rows);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {grad_x, grad_cos, grad_sin};
}

}  // namespace
}  // namespace posenc

TORCH_LIBRARY_IMPL(posenc, CUDA, m) {
  m.impl("rope", &posenc::detail::rope_kernel_entry<posenc::rope_cuda, false>);
  m.impl("rope_backward", &posenc::detail::rope_kernel_entry<posenc::rope_cuda, true>);
  m.impl("rope_qk", &posenc::rope_qk_cuda<false>);
  m.impl("rope_qk_backward", &posenc::rope_qk_cuda<true>);
  m.impl("apply_rotary_pos_emb", &posenc::apply_rotary_pos_emb_forward_cuda);
  m.impl("apply_rotary_pos_emb_backward", &posenc::apply_rotary_pos_emb_backward_cuda);
}
