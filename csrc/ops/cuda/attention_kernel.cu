// Fused relative-position attention on CUDA: the semantics of ../cpu/attention_kernel.cpp
// (softmax(scale q k^T + P + mask) v without the (q_len, k_len) tensor), FlashAttention-2's
// tiling and recomputing backward (Dao 2023, Alg. 1-2), written for this op.
//
// Every kernel runs 256 threads; a block takes one work unit at a time (grid-stride, capped
// grid). Tiles of B (64/32/16/8, a template argument chosen on the host so that the tiles fit
// in shared memory) queries and B keys are staged in shared memory in the accumulation type
// (fp32, or fp64 for fp64 inputs), head dims are runtime values (<= 256). The tile GEMMs are
// SIMT: each thread owns a fixed set of outputs and sums over k in order, so every value has
// one rounding whatever the launch.
//
// Forward: unit = (query tile, head, sequence). Keys stream through in tiles: S = scale q k^T,
// plus the position term per element (Toeplitz terms from a per-tile table of the 2B - 1
// distances the tile spans, position_terms.h; relative scores as q_rel . R[row(d)] against the
// window of R rows the tile reaches), masks, online softmax, O = alpha O + P v. Key tiles past
// the causal limit are skipped. fp16/bf16 without the relative-scores term run the two
// products on tensor cores (WMMA 16x16x16, fp32 accumulation, P rounded to the input type);
// everything else, and the whole backward, is SIMT.
//
// Backward, deterministic (no atomics, fixed reduction orders):
//  1. Dp = rowsum(dO * O) - grad_lse, one warp per row.
//  2. dK/dV: unit = (key tile, kv head, sequence); loops over the group's query heads and the
//     query tiles in order, recomputing P from lse; dK/dV are written once.
//  3. dQ (and dq_rel): unit = (query tile, head, sequence). The same kernel leaves per-unit
//     partials of the Toeplitz parameter gradients (per-diagonal sums of dS folded with the
//     term's derivative, or per-bucket sums for T5) and, for relative scores, the per-row sums
//     of dS over the keys clipped to the edge rows c +- M. A reduce kernel sums the partials in
//     (sequence, tile) order in fp64.
//  4. Relative scores, grad_rel_emb: unit = (band of distances, head, split of the query
//     tiles); recomputes dS along the band's diagonals and adds dS q_rel into the band's rows
//     (edge rows from the clipped sums), in fp64; splits are summed in order afterwards.
//
// thd: sequence bounds are read from cu_seqlens on the device (clamped to the tensors), and on
// the host as well (a sync; validated as on the CPU) only when max_seqlen_q/k are not given.
// Parameter values are not read on the host, except KERPLE log's r2 (as the bias ops).
//
// Forgetting gate: the fp64 prefix sums c of the log gates come from fgate_scan.cuh (one
// warp per (sequence, head)); the term c[t_q] - c[j] is read per score from c (SIMT kernels
// only: the tensor-core forward is not used with it). Its gradient: the dQ kernel's units sum
// dS along their query rows (thread r owns row r, key tiles in order), the dK/dV kernel's
// units along their key columns per query head (thread c owns column c, query tiles in
// order); dc = rows - cols and the reverse scan give d log_fgate. Deterministic.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math_constants.h>
#include <mma.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include "../attention.h"
#include "cuda_utils.cuh"
#include "fgate_scan.cuh"

namespace posenc {
namespace {

using detail::AttentionArgs;
using detail::AttentionConfig;
using detail::PositionFamily;
using Args = AttentionArgs<int64_t>;

constexpr const char* kOp = detail::kAttentionOp;
constexpr const char* kBwdOp = detail::kAttentionBackwardOp;

// Threads of every kernel: the tile GEMMs map a 16 x 16 thread grid onto their outputs.
constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

// ---- device math ---------------------------------------------------------------------------

// Explicit roundings where the forward and the backward kernels must agree bit for bit on a
// score (no FMA contraction of scale * qk + term, which would depend on the code around it).
__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ float add_rn(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ double add_rn(double a, double b) { return __dadd_rn(a, b); }
__device__ __forceinline__ float exp_(float x) { return expf(x); }
__device__ __forceinline__ double exp_(double x) { return exp(x); }
__device__ __forceinline__ float log_(float x) { return logf(x); }
__device__ __forceinline__ double log_(double x) { return log(x); }
// max that keeps a NaN (as the CPU kernel: a NaN score reaches out and lse, as in SDPA).
template <typename T>
__device__ __forceinline__ T nan_max(T acc, T x) {
  return (x > acc || x != x) ? x : acc;
}

template <typename T>
__device__ __forceinline__ T neg_inf() {
  if constexpr (std::is_same_v<T, double>) {
    return -CUDART_INF;
  } else {
    return -CUDART_INF_F;
  }
}

// xor butterflies: every lane ends with the same value, in a fixed order.
template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

template <typename T>
__device__ __forceinline__ T warp_max(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = nan_max(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// ---- geometry ------------------------------------------------------------------------------

// Element offset of row i of head h of the sequence starting at `start` (batch index for bhsd,
// first packed row for thd): start * start_stride + h * head_stride + i * row_stride.
struct Rows {
  int64_t start_stride = 0, head_stride = 0, row_stride = 0;
  C10_HOST_DEVICE int64_t at(int64_t start, int64_t h, int64_t i) const {
    return start * start_stride + h * head_stride + i * row_stride;
  }
};

Rows rows_of(const at::Tensor& t, bool thd) {
  if (thd) return {t.stride(0), t.stride(1), t.stride(0)};
  return {t.stride(0), t.stride(1), t.stride(2)};
}

// lse (B, H, Lq) or (H, Tq), contiguous.
Rows lse_rows_of(const at::Tensor& lse, bool thd) {
  return thd ? Rows{1, lse.stride(0), 1} : Rows{lse.stride(0), lse.stride(1), 1};
}

struct Geo {
  int64_t n_seq = 0, heads = 0, kv_heads = 0, group = 1;
  // bhsd: the lengths; thd: the longest sequences (grid sizes; longer ones are cut there).
  int64_t lq = 0, lk = 0;
  int64_t base = 0;  // q_offset - k_offset: key j is allowed for query i iff j <= base + i
  int64_t total_q = 0, total_k = 0;
  int dim = 0, v_dim = 0;
  bool thd = false, causal = false;
  const int64_t* cu_q = nullptr;
  const int64_t* cu_k = nullptr;
  const bool* kpm = nullptr;  // (B, Lk) contiguous, true = masked key
  int64_t kpm_stride = 0;
};

struct Seq {
  int64_t q_start, q_len, k_start, k_len;
};

// Bounds of sequence s. Device-read cu_seqlens are clamped to the tensors (bad values give
// wrong results, never out-of-bounds reads).
__device__ __forceinline__ Seq seq_of(const Geo& g, int64_t s) {
  if (!g.thd) return {s, g.lq, s, g.lk};
  const int64_t q0 = min(max(g.cu_q[s], int64_t{0}), g.total_q);
  const int64_t q1 = min(max(g.cu_q[s + 1], q0), g.total_q);
  const int64_t k0 = min(max(g.cu_k[s], int64_t{0}), g.total_k);
  const int64_t k1 = min(max(g.cu_k[s + 1], k0), g.total_k);
  return {q0, min(q1 - q0, g.lq), k0, min(k1 - k0, g.lk)};
}

// Element (key j of sequence sq, head h) of an array laid out like log_fgate: (B, H, Lk) with
// sq.k_start the batch index, or (Tk, H) packed.
__device__ __forceinline__ int64_t fgate_index(const Geo& g, const Seq& sq, int64_t h,
                                               int64_t j) {
  return g.thd ? (sq.k_start + j) * g.heads + h : (sq.k_start * g.heads + h) * g.lk + j;
}

// Key index t_q of query i, clamped into the sequence (the host checks it where it can; device
// bounds must not turn into out-of-bounds reads).
__device__ __forceinline__ int64_t fgate_query(const Geo& g, const Seq& sq, int64_t i) {
  const int64_t t = detail::fgate_term_query_index(g.base, i);
  return min(max(t, int64_t{0}), max(sq.k_len - 1, int64_t{0}));
}

// The position term's parameters on the device, in acc_t (r1d/r2d: KERPLE in fp64, for the
// derivatives).
template <typename acc_t>
struct Term {
  PositionFamily family = PositionFamily::None;
  bool symmetric = false, kerple_log = true;
  int64_t heads = 0;
  const acc_t* p1 = nullptr;  // slopes, r1, or the T5 table (num_buckets, H)
  const acc_t* p2 = nullptr;  // r2
  const double* r1d = nullptr;
  const double* r2d = nullptr;
  int64_t num_buckets = 0, max_distance = 0;  // T5
  int64_t rel_rows = 0, rel_c = 0, rel_m = 0;  // relative scores: R = 2c + 1 rows, clip M
  // Forgetting gate: prefix sums laid out like log_fgate, (B, H, Lk) or (Tk, H).
  const double* fc = nullptr;
  C10_HOST_DEVICE bool fgate() const { return family == PositionFamily::ForgettingGate; }
  C10_HOST_DEVICE bool toeplitz() const {
    return family == PositionFamily::ALiBi || family == PositionFamily::T5 ||
           family == PositionFamily::KERPLE;
  }
  C10_HOST_DEVICE bool rel() const { return family == PositionFamily::RelScores; }
};

template <typename acc_t>
__device__ __forceinline__ acc_t toeplitz_value(const Term<acc_t>& T, int64_t h, int64_t d) {
  switch (T.family) {
    case PositionFamily::ALiBi:
      return detail::alibi_term_value<acc_t>(T.p1[h], d, T.symmetric);
    case PositionFamily::KERPLE:
      return detail::kerple_term_value<acc_t>(T.kerple_log, T.p1[h], T.p2[h],
                                              detail::kerple_term_distance(d, T.symmetric));
    case PositionFamily::T5:
      return T.p1[detail::t5_term_bucket(d, T.symmetric, T.num_buckets, T.max_distance) *
                      T.heads +
                  h];
    default:
      return acc_t(0);
  }
}

// Shared state of one call, as the kernels read it.
template <typename scalar_t, typename acc_t>
struct Call {
  const scalar_t* q = nullptr;
  const scalar_t* k = nullptr;
  const scalar_t* v = nullptr;
  const scalar_t* qr = nullptr;   // q_rel, or q itself (Shaw)
  const scalar_t* rel = nullptr;  // rel_emb (H, R, D) contiguous
  Rows q_rows, k_rows, v_rows, qr_rows;
  bool own_qr = false;  // q_rel given: staged separately, its gradient returned separately
  acc_t scale = 1;
  Geo g;
  Term<acc_t> t;
};

// Backward buffers.
template <typename scalar_t, typename acc_t>
struct Grads {
  const scalar_t* out = nullptr;
  const scalar_t* dout = nullptr;
  Rows out_rows;  // out and dO (same contiguous shape)
  const acc_t* lse = nullptr;
  const acc_t* dp = nullptr;  // rowsum(dO * O) - grad_lse, laid out like lse
  Rows lse_rows;
  scalar_t* dq = nullptr;
  scalar_t* dq_rel = nullptr;  // q_rel given only
  Rows dq_rows;
  scalar_t* dk = nullptr;
  scalar_t* dv = nullptr;
  Rows dk_rows, dv_rows;
  double* part = nullptr;  // Toeplitz: (n_seq, H, n_qt, nv) partials of the dQ kernel's units
  int64_t nv = 0;
  double* edge = nullptr;  // relative scores: (lse index, 2) dS sums over clipped keys
  double* frow = nullptr;  // forgetting gate: dS row sums at t_q, laid out like log_fgate
  double* fcol = nullptr;  // forgetting gate: dS column sums, laid out like log_fgate
};

// ---- shared-memory tiles -------------------------------------------------------------------

// Byte offsets of a kernel's shared arrays (computed on the host, passed by value). Row
// strides are odd so that threads walking down a column hit distinct banks.
struct Carve {
  size_t off = 0;
  size_t take(int64_t n, size_t elem) {
    off = (off + 127) / 128 * 128;  // WMMA tile pointers need 32-byte alignment
    const size_t o = off;
    off += static_cast<size_t>(std::max<int64_t>(n, 0)) * elem;
    return o;
  }
};

struct Dims {
  int B = 0, D = 0, Dv = 0, ldD = 1, ldV = 1, ldKV = 1, ldS = 1;
  bool toep = false, rel = false, own_qr = false;
};

Dims make_dims(int B, int D, int Dv, PositionFamily f, bool own_qr) {
  Dims d;
  d.B = B;
  d.D = D;
  d.Dv = Dv;
  d.ldD = D | 1;
  d.ldV = Dv | 1;
  d.ldKV = std::max(D, Dv) | 1;
  d.ldS = B + 1;
  d.toep = f == PositionFamily::ALiBi || f == PositionFamily::T5 || f == PositionFamily::KERPLE;
  d.rel = f == PositionFamily::RelScores;
  d.own_qr = d.rel && own_qr;
  return d;
}

struct FwdSmem {
  Dims d;
  size_t q, qr, kv, r, s, o, pos, m, l, al, bytes;
};

FwdSmem fwd_smem(const Dims& d, size_t e) {
  FwdSmem L;
  L.d = d;
  Carve c;
  const int W = 2 * d.B - 1;
  L.q = c.take(int64_t{d.B} * d.ldD, e);
  L.qr = d.own_qr ? c.take(int64_t{d.B} * d.ldD, e) : L.q;
  L.kv = c.take(int64_t{d.B} * d.ldKV, e);
  L.r = c.take(d.rel ? int64_t{W} * d.ldD : 0, e);
  L.s = c.take(int64_t{d.B} * d.ldS, e);
  L.o = c.take(int64_t{d.B} * d.ldV, e);
  L.pos = c.take(d.toep ? W : 0, e);
  L.m = c.take(d.B, e);
  L.l = c.take(d.B, e);
  L.al = c.take(d.B, e);
  L.bytes = c.off;
  return L;
}

// dQ and dK/dV kernels: the same arrays (acc = dQ, dq_rel or dK, dV).
struct BwdSmem {
  Dims d;
  size_t q, dO, qr, k, v, r, p, acc1, acc2, pos, lse, dp, g, bk, bytes;
};

BwdSmem bwd_smem(const Dims& d, size_t e, bool dkv) {
  BwdSmem L;
  L.d = d;
  Carve c;
  const int W = 2 * d.B - 1;
  L.g = c.take(d.toep ? W : 0, sizeof(double));
  L.bk = c.take(d.toep ? W : 0, sizeof(int64_t));
  L.q = c.take(int64_t{d.B} * d.ldD, e);
  L.dO = c.take(int64_t{d.B} * d.ldV, e);
  L.qr = d.own_qr ? c.take(int64_t{d.B} * d.ldD, e) : L.q;
  L.k = c.take(int64_t{d.B} * d.ldD, e);
  L.v = c.take(int64_t{d.B} * d.ldV, e);
  L.r = c.take(d.rel ? int64_t{W} * d.ldD : 0, e);
  L.p = c.take(int64_t{d.B} * d.ldS, e);
  if (dkv) {
    L.acc1 = c.take(int64_t{d.B} * d.ldD, e);  // dK
    L.acc2 = c.take(int64_t{d.B} * d.ldV, e);  // dV
  } else {
    L.acc1 = c.take(int64_t{d.B} * d.ldD, e);                  // dQ
    L.acc2 = c.take(d.rel ? int64_t{d.B} * d.ldD : 0, e);      // dq_rel
  }
  L.pos = c.take(d.toep ? W : 0, e);
  L.lse = c.take(d.B, e);
  L.dp = c.take(d.B, e);
  L.bytes = c.off;
  return L;
}

// WMMA forward (fp16 / bf16): operand tiles in the input type, zero-padded to multiples of 16
// (pad rows and columns contribute exact zeros); scores and O in fp32. Strides are multiples of
// 8 halves / 4 floats (WMMA's rule), offset from powers of two against bank conflicts.
struct FwdMmaSmem {
  int B = 0, Dp = 0, Dvp = 0, ldH = 0, ldKV = 0, ldS = 0, ldP = 0, ldO = 0;
  size_t q, kv, s, p, o, pos, m, l, al, bytes;
};

FwdMmaSmem fwd_mma_smem(int B, int D, int Dv, bool toep) {
  FwdMmaSmem L;
  L.B = B;
  L.Dp = (D + 15) / 16 * 16;
  L.Dvp = (Dv + 15) / 16 * 16;
  L.ldH = L.Dp + 8;
  L.ldKV = std::max(L.Dp, L.Dvp) + 8;
  L.ldS = B + 4;
  L.ldP = B + 8;
  L.ldO = L.Dvp + 4;
  const size_t h = 2, f = sizeof(float);
  Carve c;
  L.q = c.take(int64_t{B} * L.ldH, h);
  L.kv = c.take(int64_t{B} * L.ldKV, h);
  L.s = c.take(int64_t{B} * L.ldS, f);
  L.p = c.take(int64_t{B} * L.ldP, h);
  L.o = c.take(int64_t{B} * L.ldO, f);
  L.pos = c.take(toep ? 2 * B - 1 : 0, f);
  L.m = c.take(B, f);
  L.l = c.take(B, f);
  L.al = c.take(B, f);
  L.bytes = c.off;
  return L;
}

struct BandSmem {
  Dims d;
  size_t dr, top, bot, q, dO, qr, kw, vw, rb, w, lse, dp, bytes;
};

BandSmem band_smem(const Dims& d, size_t e) {
  BandSmem L;
  L.d = d;
  Carve c;
  const int W = 2 * d.B - 1;
  L.dr = c.take(int64_t{d.B} * d.ldD, sizeof(double));
  L.top = c.take(d.B, sizeof(double));
  L.bot = c.take(d.B, sizeof(double));
  L.q = c.take(int64_t{d.B} * d.ldD, e);
  L.dO = c.take(int64_t{d.B} * d.ldV, e);
  L.qr = d.own_qr ? c.take(int64_t{d.B} * d.ldD, e) : L.q;
  L.kw = c.take(int64_t{W} * d.ldD, e);
  L.vw = c.take(int64_t{W} * d.ldV, e);
  L.rb = c.take(int64_t{d.B} * d.ldD, e);
  L.w = c.take(int64_t{d.B} * d.ldS, e);
  L.lse = c.take(d.B, e);
  L.dp = c.take(d.B, e);
  L.bytes = c.off;
  return L;
}

template <typename T>
__device__ __forceinline__ T* smem_at(unsigned char* base, size_t off) {
  return reinterpret_cast<T*>(base + off);
}

// rows x cols of a strided matrix (unit stride along cols) into dst (ld), converted to acc_t.
template <typename acc_t, typename scalar_t>
__device__ __forceinline__ void load_tile(acc_t* dst, int ld, const scalar_t* __restrict__ src,
                                          int64_t row_stride, int rows, int cols) {
  for (int x = threadIdx.x; x < rows * cols; x += kThreads) {
    const int r = x / cols, c = x - r * cols;
    dst[r * ld + c] = static_cast<acc_t>(src[r * row_stride + c]);
  }
}

template <typename T>
__device__ __forceinline__ void zero_tile(T* dst, int ld, int rows, int cols) {
  for (int x = threadIdx.x; x < rows * cols; x += kThreads) {
    const int r = x / cols, c = x - r * cols;
    dst[r * ld + c] = T(0);
  }
}

// ---- tile GEMMs ------------------------------------------------------------------------------

// Block-wide C (M x N) = sum_k A(m, k) B(k, n). Thread (ty, tx) of the 16 x 16 grid owns the
// TM x TN outputs (m0 + ty + 16 a, n0 + tx + 16 b) of each step and sums over k in order in
// registers; st(m, n, value) receives each output once. Indices past M / N are clamped for the
// loads (no branch in the k loop) and dropped at the store.
template <int TM, int TN, typename acc_t, typename LA, typename LB, typename ST>
__device__ __forceinline__ void block_gemm(int M, int N, int K, const LA& a, const LB& b,
                                           const ST& st) {
  const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
  for (int m0 = 0; m0 < M; m0 += 16 * TM) {
    for (int n0 = 0; n0 < N; n0 += 16 * TN) {
      int mi[TM], ni[TN];
#pragma unroll
      for (int x = 0; x < TM; ++x) mi[x] = min(m0 + ty + 16 * x, M - 1);
#pragma unroll
      for (int y = 0; y < TN; ++y) ni[y] = min(n0 + tx + 16 * y, N - 1);
      acc_t acc[TM][TN];
#pragma unroll
      for (int x = 0; x < TM; ++x) {
#pragma unroll
        for (int y = 0; y < TN; ++y) acc[x][y] = acc_t(0);
      }
      for (int k = 0; k < K; ++k) {
        acc_t av[TM], bv[TN];
#pragma unroll
        for (int x = 0; x < TM; ++x) av[x] = a(mi[x], k);
#pragma unroll
        for (int y = 0; y < TN; ++y) bv[y] = b(k, ni[y]);
#pragma unroll
        for (int x = 0; x < TM; ++x) {
#pragma unroll
          for (int y = 0; y < TN; ++y) acc[x][y] += av[x] * bv[y];
        }
      }
#pragma unroll
      for (int x = 0; x < TM; ++x) {
#pragma unroll
        for (int y = 0; y < TN; ++y) {
          const int m = m0 + ty + 16 * x, n = n0 + tx + 16 * y;
          if (m < M && n < N) st(m, n, acc[x][y]);
        }
      }
    }
  }
}

// As block_gemm with a B operand whose row k depends on the output row: brow(m, k) points at
// row k of output row m's B (the gather of dq_rel += dS R[row(d)]).
template <int TM, int TN, typename acc_t, typename LA, typename LB, typename ST>
__device__ __forceinline__ void block_gemm_rows(int M, int N, int K, const LA& a, const LB& brow,
                                                const ST& st) {
  const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
  for (int m0 = 0; m0 < M; m0 += 16 * TM) {
    for (int n0 = 0; n0 < N; n0 += 16 * TN) {
      int mi[TM], ni[TN];
#pragma unroll
      for (int x = 0; x < TM; ++x) mi[x] = min(m0 + ty + 16 * x, M - 1);
#pragma unroll
      for (int y = 0; y < TN; ++y) ni[y] = min(n0 + tx + 16 * y, N - 1);
      acc_t acc[TM][TN];
#pragma unroll
      for (int x = 0; x < TM; ++x) {
#pragma unroll
        for (int y = 0; y < TN; ++y) acc[x][y] = acc_t(0);
      }
      for (int k = 0; k < K; ++k) {
#pragma unroll
        for (int x = 0; x < TM; ++x) {
          const acc_t av = a(mi[x], k);
          const acc_t* row = brow(mi[x], k);
#pragma unroll
          for (int y = 0; y < TN; ++y) acc[x][y] += av * row[ni[y]];
        }
      }
#pragma unroll
      for (int x = 0; x < TM; ++x) {
#pragma unroll
        for (int y = 0; y < TN; ++y) {
          const int m = m0 + ty + 16 * x, n = n0 + tx + 16 * y;
          if (m < M && n < N) st(m, n, acc[x][y]);
        }
      }
    }
  }
}

template <typename acc_t>
__device__ __forceinline__ acc_t dot_rows(const acc_t* a, const acc_t* b, int n) {
  acc_t s = acc_t(0);
  for (int e = 0; e < n; ++e) s += a[e] * b[e];
  return s;
}

// ---- score tiles ---------------------------------------------------------------------------

// One (query tile, key tile) pair of a sequence and head.
struct Tile {
  int64_t s, h, q0, k0;  // first query and key (local indices)
  int rows, cols;
};

// Stages the rows of R that the tile's distances reach, [row(d_min), row(d_max)] (at most
// rows + cols - 1), and returns the first one.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ int64_t load_rel_window(const Call<scalar_t, acc_t>& C, acc_t* Rs,
                                                   int ldD, const Tile& t) {
  const int64_t dmin = C.g.base + t.q0 - (t.k0 + t.cols - 1);
  const int64_t dmax = C.g.base + t.q0 + t.rows - 1 - t.k0;
  const int64_t lo = detail::rel_term_row(dmin, C.t.rel_c, C.t.rel_m);
  const int nw = static_cast<int>(detail::rel_term_row(dmax, C.t.rel_c, C.t.rel_m) - lo + 1);
  load_tile(Rs, ldD, C.rel + (t.h * C.t.rel_rows + lo) * C.g.dim, C.g.dim, nw, C.g.dim);
  return lo;
}

// Toeplitz terms at the 2B - 1 distances of a tile: pos[c - r + B - 1] is the term of (r, c).
template <int B, typename scalar_t, typename acc_t>
__device__ __forceinline__ void fill_pos(const Call<scalar_t, acc_t>& C, acc_t* pos,
                                         const Tile& t) {
  const int64_t d0 = C.g.base + t.q0 - t.k0 + (B - 1);
  for (int x = threadIdx.x; x < 2 * B - 1; x += kThreads) pos[x] = toeplitz_value(C.t, t.h, d0 - x);
}

// Completes the score tile in place: Ss holds scale q.k; adds the position term and the masks
// (-inf). With kProb, replaces each score by P = exp(s - lse_row) (0 for a row with no key).
template <int B, bool kProb, typename scalar_t, typename acc_t>
__device__ __forceinline__ void finish_scores(const Call<scalar_t, acc_t>& C, acc_t* Ss, int ldS,
                                              const acc_t* pos, const acc_t* Qrs,
                                              const acc_t* Rs, int ldD, int64_t rho_lo,
                                              const Tile& t, const acc_t* lse_s) {
  const Geo& g = C.g;
  const bool toep = C.t.toeplitz(), rel = C.t.rel(), fg = C.t.fgate();
  Seq sq{0, 0, 0, 0};
  if (fg) sq = seq_of(g, t.s);
  for (int x = threadIdx.x; x < t.rows * B; x += kThreads) {
    const int r = x / B, c = x % B;
    if (c >= t.cols) continue;
    const int64_t i = t.q0 + r, j = t.k0 + c;
    bool keep = !g.causal || j <= g.base + i;
    if (keep && g.kpm != nullptr) keep = !g.kpm[t.s * g.kpm_stride + j];
    acc_t v = neg_inf<acc_t>();
    if (keep) {
      v = Ss[r * ldS + c];
      if (toep) {
        v = add_rn(v, pos[c - r + B - 1]);
      } else if (fg) {
        const double cq = C.t.fc[fgate_index(g, sq, t.h, fgate_query(g, sq, i))];
        v = add_rn(v, detail::fgate_term_value<acc_t>(cq, C.t.fc[fgate_index(g, sq, t.h, j)]));
      } else if (rel) {
        const int64_t w = detail::rel_term_row(g.base + i - j, C.t.rel_c, C.t.rel_m) - rho_lo;
        v = add_rn(v, dot_rows(Qrs + r * ldD, Rs + w * ldD, g.dim));
      }
    }
    if (kProb) {
      const acc_t l = lse_s[r];
      v = l == neg_inf<acc_t>() ? acc_t(0) : exp_(v - l);
    }
    Ss[r * ldS + c] = v;
  }
}

// ---- forward ---------------------------------------------------------------------------------

template <typename scalar_t, typename acc_t, int B>
__global__ void __launch_bounds__(kThreads)
    attention_fwd_kernel(const Call<scalar_t, acc_t> C, const FwdSmem L,
                         scalar_t* __restrict__ out, Rows out_rows, acc_t* __restrict__ lse,
                         Rows lse_rows) {
  constexpr int TM = B >= 16 ? B / 16 : 1;
  extern __shared__ __align__(128) unsigned char smem[];
  acc_t* Qs = smem_at<acc_t>(smem, L.q);
  acc_t* Qrs = smem_at<acc_t>(smem, L.qr);
  acc_t* KVs = smem_at<acc_t>(smem, L.kv);
  acc_t* Rs = smem_at<acc_t>(smem, L.r);
  acc_t* Ss = smem_at<acc_t>(smem, L.s);
  acc_t* Os = smem_at<acc_t>(smem, L.o);
  acc_t* pos = smem_at<acc_t>(smem, L.pos);
  acc_t* Ms = smem_at<acc_t>(smem, L.m);
  acc_t* Ls = smem_at<acc_t>(smem, L.l);
  acc_t* Al = smem_at<acc_t>(smem, L.al);
  const Geo& g = C.g;
  const int D = g.dim, Dv = g.v_dim;
  const int ldD = L.d.ldD, ldV = L.d.ldV, ldKV = L.d.ldKV, ldS = L.d.ldS;
  const bool toep = C.t.toeplitz(), rel = C.t.rel();
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int64_t n_qt = (g.lq + B - 1) / B;
  const int64_t units = g.n_seq * g.heads * n_qt;
  for (int64_t unit = blockIdx.x; unit < units; unit += gridDim.x) {
    // Last query tiles first: under a causal mask they see the most keys.
    const int64_t qt = n_qt - 1 - unit % n_qt;
    const int64_t h = (unit / n_qt) % g.heads;
    const int64_t s = unit / (n_qt * g.heads);
    const Seq sq = seq_of(g, s);
    Tile t{s, h, qt * B, 0, 0, 0};
    if (t.q0 >= sq.q_len) continue;  // the same for the whole block
    t.rows = static_cast<int>(min(int64_t{B}, sq.q_len - t.q0));
    const int64_t hk = h / g.group;
    load_tile(Qs, ldD, C.q + C.q_rows.at(sq.q_start, h, t.q0), C.q_rows.row_stride, t.rows, D);
    if (L.d.own_qr) {
      load_tile(Qrs, ldD, C.qr + C.qr_rows.at(sq.q_start, h, t.q0), C.qr_rows.row_stride, t.rows,
                D);
    }
    zero_tile(Os, ldV, t.rows, Dv);
    for (int r = tid; r < t.rows; r += kThreads) {
      Ms[r] = neg_inf<acc_t>();
      Ls[r] = acc_t(0);
    }
    // Keys past the tile's last allowed one are masked for every row.
    const int64_t k_end =
        g.causal ? min(max(g.base + t.q0 + t.rows, int64_t{0}), sq.k_len) : sq.k_len;
    for (t.k0 = 0; t.k0 < k_end; t.k0 += B) {
      t.cols = static_cast<int>(min(int64_t{B}, k_end - t.k0));
      __syncthreads();  // the previous tile's readers are done
      load_tile(KVs, ldKV, C.k + C.k_rows.at(sq.k_start, hk, t.k0), C.k_rows.row_stride, t.cols,
                D);
      int64_t rho_lo = 0;
      if (rel) rho_lo = load_rel_window(C, Rs, ldD, t);
      if (toep) fill_pos<B>(C, pos, t);
      __syncthreads();
      block_gemm<TM, TM, acc_t>(
          t.rows, t.cols, D, [&](int r, int e) { return Qs[r * ldD + e]; },
          [&](int e, int c) { return KVs[c * ldKV + e]; },
          [&](int r, int c, acc_t x) { Ss[r * ldS + c] = mul_rn(x, C.scale); });
      __syncthreads();
      // K is no longer needed: v takes its place while the scores are completed.
      load_tile(KVs, ldKV, C.v + C.v_rows.at(sq.k_start, hk, t.k0), C.v_rows.row_stride, t.cols,
                Dv);
      finish_scores<B, false>(C, Ss, ldS, pos, Qrs, Rs, ldD, rho_lo, t, static_cast<const acc_t*>(nullptr));
      __syncthreads();
      // Online softmax, a warp per row.
      for (int r = warp; r < t.rows; r += kWarps) {
        acc_t* srow = Ss + r * ldS;
        acc_t mx = neg_inf<acc_t>();
        for (int c = lane; c < t.cols; c += 32) mx = nan_max(mx, srow[c]);
        mx = warp_max(mx);
        const acc_t m_old = Ms[r];
        const acc_t m_new = nan_max(m_old, mx);
        if (m_new == neg_inf<acc_t>()) {  // every key so far masked
          for (int c = lane; c < t.cols; c += 32) srow[c] = acc_t(0);
          if (lane == 0) Al[r] = acc_t(1);
          continue;
        }
        acc_t sum = acc_t(0);
        for (int c = lane; c < t.cols; c += 32) {
          const acc_t p = exp_(srow[c] - m_new);
          srow[c] = p;
          sum += p;
        }
        sum = warp_sum(sum);
        if (lane == 0) {
          const acc_t alpha = exp_(m_old - m_new);  // 0 when m_old = -inf
          Al[r] = alpha;
          Ls[r] = Ls[r] * alpha + sum;
          Ms[r] = m_new;
        }
      }
      __syncthreads();
      block_gemm<TM, TM, acc_t>(
          t.rows, Dv, t.cols, [&](int r, int c) { return Ss[r * ldS + c]; },
          [&](int c, int e) { return KVs[c * ldKV + e]; },
          [&](int r, int e, acc_t x) { Os[r * ldV + e] = Os[r * ldV + e] * Al[r] + x; });
    }
    __syncthreads();
    // A row saw an unmasked key iff its running max left -inf (then l >= 1, or NaN from a NaN
    // or inf score, which propagates); else zeros and lse = log(0).
    for (int x = tid; x < t.rows * Dv; x += kThreads) {
      const int r = x / Dv, e = x - r * Dv;
      scalar_t* orow = out + out_rows.at(sq.q_start, h, t.q0 + r);
      orow[e] = Ms[r] != neg_inf<acc_t>()
                    ? static_cast<scalar_t>(Os[r * ldV + e] * (acc_t(1) / Ls[r]))
                    : static_cast<scalar_t>(acc_t(0));
    }
    for (int r = tid; r < t.rows; r += kThreads) {
      const acc_t m = Ms[r];
      lse[lse_rows.at(sq.q_start, h, t.q0 + r)] = m != neg_inf<acc_t>() ? m + log_(Ls[r]) : m;
    }
    __syncthreads();
  }
}

// ---- forward with tensor cores (fp16 / bf16) --------------------------------------------------

template <typename scalar_t>
struct MmaOf;
template <>
struct MmaOf<c10::Half> {
  using type = __half;
};
template <>
struct MmaOf<c10::BFloat16> {
  using type = __nv_bfloat16;
};

template <typename T>
__device__ __forceinline__ T mma_from_float(float x);
template <>
__device__ __forceinline__ __half mma_from_float<__half>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 mma_from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// rows x cols of a strided matrix into a B x cols_p tile of mma_t, zeros outside.
template <typename mma_t, typename scalar_t>
__device__ __forceinline__ void load_tile_padded(mma_t* dst, int ld, const scalar_t* __restrict__ src,
                                                 int64_t row_stride, int rows, int cols,
                                                 int rows_p, int cols_p) {
  for (int x = threadIdx.x; x < rows_p * cols_p; x += kThreads) {
    const int r = x / cols_p, c = x - r * cols_p;
    const float v = r < rows && c < cols ? static_cast<float>(src[r * row_stride + c]) : 0.f;
    dst[r * ld + c] = mma_from_float<mma_t>(v);
  }
}

// As attention_fwd_kernel (no relative-scores term), with S = q k^T and O += P v on tensor
// cores (16 x 16 x 16 WMMA tiles, fp32 accumulation; each warp owns whole output tiles). P is
// rounded to the input type for the second product; l and lse use the fp32 P.
template <typename scalar_t, int B>
__global__ void __launch_bounds__(kThreads)
    attention_fwd_mma_kernel(const Call<scalar_t, float> C, const FwdMmaSmem L,
                             scalar_t* __restrict__ out, Rows out_rows, float* __restrict__ lse,
                             Rows lse_rows) {
  namespace wmma = nvcuda::wmma;
  using mma_t = typename MmaOf<scalar_t>::type;
  static_assert(B % 16 == 0, "WMMA tiles are 16 x 16");
  constexpr int NT = B / 16;
  extern __shared__ __align__(128) unsigned char smem[];
  mma_t* Qh = smem_at<mma_t>(smem, L.q);
  mma_t* KVh = smem_at<mma_t>(smem, L.kv);
  float* Ss = smem_at<float>(smem, L.s);
  mma_t* Ph = smem_at<mma_t>(smem, L.p);
  float* Os = smem_at<float>(smem, L.o);
  float* pos = smem_at<float>(smem, L.pos);
  float* Ms = smem_at<float>(smem, L.m);
  float* Ls = smem_at<float>(smem, L.l);
  const Geo& g = C.g;
  const int D = g.dim, Dv = g.v_dim, Dp = L.Dp, Dvp = L.Dvp;
  const int ldH = L.ldH, ldKV = L.ldKV, ldS = L.ldS, ldP = L.ldP, ldO = L.ldO;
  const int NV = Dvp / 16;
  const bool toep = C.t.toeplitz();
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int64_t n_qt = (g.lq + B - 1) / B;
  const int64_t units = g.n_seq * g.heads * n_qt;
  for (int64_t unit = blockIdx.x; unit < units; unit += gridDim.x) {
    const int64_t qt = n_qt - 1 - unit % n_qt;
    const int64_t h = (unit / n_qt) % g.heads;
    const int64_t s = unit / (n_qt * g.heads);
    const Seq sq = seq_of(g, s);
    Tile t{s, h, qt * B, 0, 0, 0};
    if (t.q0 >= sq.q_len) continue;
    t.rows = static_cast<int>(min(int64_t{B}, sq.q_len - t.q0));
    const int64_t hk = h / g.group;
    load_tile_padded(Qh, ldH, C.q + C.q_rows.at(sq.q_start, h, t.q0), C.q_rows.row_stride, t.rows,
                     D, B, Dp);
    zero_tile(Os, ldO, B, Dvp);
    for (int r = tid; r < B; r += kThreads) {
      Ms[r] = neg_inf<float>();
      Ls[r] = 0.f;
    }
    const int64_t k_end =
        g.causal ? min(max(g.base + t.q0 + t.rows, int64_t{0}), sq.k_len) : sq.k_len;
    for (t.k0 = 0; t.k0 < k_end; t.k0 += B) {
      t.cols = static_cast<int>(min(int64_t{B}, k_end - t.k0));
      __syncthreads();
      load_tile_padded(KVh, ldKV, C.k + C.k_rows.at(sq.k_start, hk, t.k0), C.k_rows.row_stride,
                       t.cols, D, B, Dp);
      if (toep) fill_pos<B>(C, pos, t);
      __syncthreads();
      for (int f = warp; f < NT * NT; f += kWarps) {
        const int ti = f / NT, tj = f % NT;
        wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
        wmma::fill_fragment(acc, 0.f);
        for (int kk = 0; kk < Dp; kk += 16) {
          wmma::fragment<wmma::matrix_a, 16, 16, 16, mma_t, wmma::row_major> fa;
          wmma::fragment<wmma::matrix_b, 16, 16, 16, mma_t, wmma::col_major> fb;  // k^T
          wmma::load_matrix_sync(fa, Qh + ti * 16 * ldH + kk, ldH);
          wmma::load_matrix_sync(fb, KVh + tj * 16 * ldKV + kk, ldKV);
          wmma::mma_sync(acc, fa, fb, acc);
        }
        for (int i = 0; i < acc.num_elements; ++i) acc.x[i] = mul_rn(acc.x[i], C.scale);
        wmma::store_matrix_sync(Ss + ti * 16 * ldS + tj * 16, acc, ldS, wmma::mem_row_major);
      }
      __syncthreads();
      load_tile_padded(KVh, ldKV, C.v + C.v_rows.at(sq.k_start, hk, t.k0), C.v_rows.row_stride,
                       t.cols, Dv, B, Dvp);
      finish_scores<B, false>(C, Ss, ldS, pos, static_cast<const float*>(nullptr),
                              static_cast<const float*>(nullptr), 0, 0, t,
                              static_cast<const float*>(nullptr));
      __syncthreads();
      // Online softmax, a warp per row; P (zero outside the valid keys and rows) in mma_t, and
      // the row of O rescaled by alpha.
      for (int r = warp; r < B; r += kWarps) {
        mma_t* prow = Ph + r * ldP;
        const float* srow = Ss + r * ldS;
        float mx = neg_inf<float>();
        if (r < t.rows) {
          for (int c = lane; c < t.cols; c += 32) mx = nan_max(mx, srow[c]);
          mx = warp_max(mx);
        }
        const float m_old = Ms[r];
        const float m_new = nan_max(m_old, mx);
        if (r >= t.rows || m_new == neg_inf<float>()) {
          for (int c = lane; c < B; c += 32) prow[c] = mma_from_float<mma_t>(0.f);
          continue;
        }
        float sum = 0.f;
        for (int c = lane; c < B; c += 32) {
          const float p = c < t.cols ? exp_(srow[c] - m_new) : 0.f;
          prow[c] = mma_from_float<mma_t>(p);
          sum += p;
        }
        sum = warp_sum(sum);
        const float alpha = exp_(m_old - m_new);  // 0 when m_old = -inf
        for (int e = lane; e < Dvp; e += 32) Os[r * ldO + e] *= alpha;
        if (lane == 0) {
          Ls[r] = Ls[r] * alpha + sum;
          Ms[r] = m_new;
        }
      }
      __syncthreads();
      for (int f = warp; f < NT * NV; f += kWarps) {
        const int ti = f / NV, tn = f % NV;
        wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
        wmma::load_matrix_sync(acc, Os + ti * 16 * ldO + tn * 16, ldO, wmma::mem_row_major);
        for (int kk = 0; kk < B; kk += 16) {
          wmma::fragment<wmma::matrix_a, 16, 16, 16, mma_t, wmma::row_major> fa;
          wmma::fragment<wmma::matrix_b, 16, 16, 16, mma_t, wmma::row_major> fb;
          wmma::load_matrix_sync(fa, Ph + ti * 16 * ldP + kk, ldP);
          wmma::load_matrix_sync(fb, KVh + kk * ldKV + tn * 16, ldKV);
          wmma::mma_sync(acc, fa, fb, acc);
        }
        wmma::store_matrix_sync(Os + ti * 16 * ldO + tn * 16, acc, ldO, wmma::mem_row_major);
      }
    }
    __syncthreads();
    for (int x = tid; x < t.rows * Dv; x += kThreads) {
      const int r = x / Dv, e = x - r * Dv;
      scalar_t* orow = out + out_rows.at(sq.q_start, h, t.q0 + r);
      orow[e] = Ms[r] != neg_inf<float>() ? static_cast<scalar_t>(Os[r * ldO + e] * (1.f / Ls[r]))
                                          : static_cast<scalar_t>(0.f);
    }
    for (int r = tid; r < t.rows; r += kThreads) {
      const float m = Ms[r];
      lse[lse_rows.at(sq.q_start, h, t.q0 + r)] = m != neg_inf<float>() ? m + log_(Ls[r]) : m;
    }
    __syncthreads();
  }
}

// ---- backward --------------------------------------------------------------------------------

// Dp[row] = sum_e dO[row, e] O[row, e] - grad_lse[row], a warp per row (lse's layout).
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    attention_bwd_dp_kernel(const scalar_t* __restrict__ out, const scalar_t* __restrict__ dout,
                            Rows out_rows, const acc_t* __restrict__ glse, acc_t* __restrict__ dp,
                            int64_t n_rows, int64_t heads, int64_t len, int Dv, bool thd) {
  const int lane = threadIdx.x & 31;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kWarps;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5); row < n_rows;
       row += stride) {
    int64_t off;
    if (thd) {  // lse (H, Tq)
      off = out_rows.at(row % len, row / len, 0);
    } else {  // lse (B, H, Lq)
      off = out_rows.at(row / (len * heads), (row / len) % heads, row % len);
    }
    acc_t sum = acc_t(0);
    for (int e = lane; e < Dv; e += 32) {
      sum += static_cast<acc_t>(out[off + e]) * static_cast<acc_t>(dout[off + e]);
    }
    sum = warp_sum(sum);
    if (lane == 0) dp[row] = sum - (glse != nullptr ? glse[row] : acc_t(0));
  }
}

// Loads the query-side tiles of a backward unit: q, dO, q_rel, lse, Dp.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void load_query_side(const Call<scalar_t, acc_t>& C,
                                                const Grads<scalar_t, acc_t>& G, const Dims& d,
                                                const Seq& sq, const Tile& t, acc_t* Qs,
                                                acc_t* dOs, acc_t* Qrs, acc_t* lse_s,
                                                acc_t* dp_s) {
  load_tile(Qs, d.ldD, C.q + C.q_rows.at(sq.q_start, t.h, t.q0), C.q_rows.row_stride, t.rows,
            d.D);
  load_tile(dOs, d.ldV, G.dout + G.out_rows.at(sq.q_start, t.h, t.q0), G.out_rows.row_stride,
            t.rows, d.Dv);
  if (d.own_qr) {
    load_tile(Qrs, d.ldD, C.qr + C.qr_rows.at(sq.q_start, t.h, t.q0), C.qr_rows.row_stride,
              t.rows, d.D);
  }
  for (int r = threadIdx.x; r < t.rows; r += kThreads) {
    const int64_t li = G.lse_rows.at(sq.q_start, t.h, t.q0 + r);
    lse_s[r] = G.lse[li];
    dp_s[r] = G.dp[li];
  }
}

// dK, dV: unit = (key tile, kv head, sequence). The group's query heads, then the query tiles,
// in order; each pass recomputes P from lse: dV += P^T dO, dS = P (dO v^T - Dp),
// dK += scale dS^T q.
template <typename scalar_t, typename acc_t, int B>
__global__ void __launch_bounds__(kThreads)
    attention_bwd_dkv_kernel(const Call<scalar_t, acc_t> C, const Grads<scalar_t, acc_t> G,
                             const BwdSmem L) {
  constexpr int TM = B >= 16 ? B / 16 : 1;
  extern __shared__ __align__(128) unsigned char smem[];
  acc_t* Qs = smem_at<acc_t>(smem, L.q);
  acc_t* dOs = smem_at<acc_t>(smem, L.dO);
  acc_t* Qrs = smem_at<acc_t>(smem, L.qr);
  acc_t* Ks = smem_at<acc_t>(smem, L.k);
  acc_t* Vs = smem_at<acc_t>(smem, L.v);
  acc_t* Rs = smem_at<acc_t>(smem, L.r);
  acc_t* Ps = smem_at<acc_t>(smem, L.p);
  acc_t* dKs = smem_at<acc_t>(smem, L.acc1);
  acc_t* dVs = smem_at<acc_t>(smem, L.acc2);
  acc_t* pos = smem_at<acc_t>(smem, L.pos);
  acc_t* lse_s = smem_at<acc_t>(smem, L.lse);
  acc_t* dp_s = smem_at<acc_t>(smem, L.dp);
  const Geo& g = C.g;
  const int D = g.dim, Dv = g.v_dim;
  const int ldD = L.d.ldD, ldV = L.d.ldV, ldS = L.d.ldS;
  const bool toep = C.t.toeplitz(), rel = C.t.rel();
  const int tid = threadIdx.x;
  const int64_t n_kt = (g.lk + B - 1) / B;
  const int64_t units = g.n_seq * g.kv_heads * n_kt;
  for (int64_t unit = blockIdx.x; unit < units; unit += gridDim.x) {
    // First key tiles first: under a causal mask they are seen by the most queries.
    const int64_t kt = unit % n_kt;
    const int64_t hk = (unit / n_kt) % g.kv_heads;
    const int64_t s = unit / (n_kt * g.kv_heads);
    const Seq sq = seq_of(g, s);
    Tile t{s, 0, 0, kt * B, 0, 0};
    if (t.k0 >= sq.k_len) continue;
    t.cols = static_cast<int>(min(int64_t{B}, sq.k_len - t.k0));
    load_tile(Ks, ldD, C.k + C.k_rows.at(sq.k_start, hk, t.k0), C.k_rows.row_stride, t.cols, D);
    load_tile(Vs, ldV, C.v + C.v_rows.at(sq.k_start, hk, t.k0), C.v_rows.row_stride, t.cols, Dv);
    zero_tile(dKs, ldD, t.cols, D);
    zero_tile(dVs, ldV, t.cols, Dv);
    // Causal: query tiles before the first one that sees key j0 contribute nothing.
    const int64_t i_first = g.causal ? max(t.k0 - g.base, int64_t{0}) : int64_t{0};
    const int64_t i_begin = i_first / B * B;
    for (int64_t gi = 0; gi < g.group; ++gi) {
      t.h = hk * g.group + gi;
      double fcol = 0.0;  // forgetting gate: thread c < cols sums column c, query tiles in order
      for (t.q0 = i_begin; t.q0 < sq.q_len; t.q0 += B) {
        t.rows = static_cast<int>(min(int64_t{B}, sq.q_len - t.q0));
        __syncthreads();
        load_query_side(C, G, L.d, sq, t, Qs, dOs, Qrs, lse_s, dp_s);
        int64_t rho_lo = 0;
        if (rel) rho_lo = load_rel_window(C, Rs, ldD, t);
        if (toep) fill_pos<B>(C, pos, t);
        __syncthreads();
        block_gemm<TM, TM, acc_t>(
            t.rows, t.cols, D, [&](int r, int e) { return Qs[r * ldD + e]; },
            [&](int e, int c) { return Ks[c * ldD + e]; },
            [&](int r, int c, acc_t x) { Ps[r * ldS + c] = mul_rn(x, C.scale); });
        __syncthreads();
        finish_scores<B, true>(C, Ps, ldS, pos, Qrs, Rs, ldD, rho_lo, t, lse_s);
        __syncthreads();
        block_gemm<TM, TM, acc_t>(
            t.cols, Dv, t.rows, [&](int c, int r) { return Ps[r * ldS + c]; },
            [&](int r, int e) { return dOs[r * ldV + e]; },
            [&](int c, int e, acc_t x) { dVs[c * ldV + e] += x; });
        __syncthreads();
        block_gemm<TM, TM, acc_t>(
            t.rows, t.cols, Dv, [&](int r, int e) { return dOs[r * ldV + e]; },
            [&](int e, int c) { return Vs[c * ldV + e]; },
            [&](int r, int c, acc_t x) { Ps[r * ldS + c] = Ps[r * ldS + c] * (x - dp_s[r]); });
        __syncthreads();
        if (C.t.fgate() && tid < t.cols) {
          for (int r = 0; r < t.rows; ++r) fcol += static_cast<double>(Ps[r * ldS + tid]);
        }
        block_gemm<TM, TM, acc_t>(
            t.cols, D, t.rows, [&](int c, int r) { return Ps[r * ldS + c]; },
            [&](int r, int e) { return Qs[r * ldD + e]; },
            [&](int c, int e, acc_t x) { dKs[c * ldD + e] += x * C.scale; });
      }
      if (C.t.fgate() && tid < t.cols) G.fcol[fgate_index(g, sq, t.h, t.k0 + tid)] = fcol;
    }
    __syncthreads();
    for (int x = tid; x < t.cols * D; x += kThreads) {
      const int c = x / D, e = x - c * D;
      G.dk[G.dk_rows.at(sq.k_start, hk, t.k0 + c) + e] = static_cast<scalar_t>(dKs[c * ldD + e]);
    }
    for (int x = tid; x < t.cols * Dv; x += kThreads) {
      const int c = x / Dv, e = x - c * Dv;
      G.dv[G.dv_rows.at(sq.k_start, hk, t.k0 + c) + e] = static_cast<scalar_t>(dVs[c * ldV + e]);
    }
    __syncthreads();
  }
}

// dQ (and dq_rel): unit = (query tile, head, sequence), key tiles in order. Also the unit's
// partials of the position parameters' gradients (see the file comment).
template <typename scalar_t, typename acc_t, int B>
__global__ void __launch_bounds__(kThreads)
    attention_bwd_dq_kernel(const Call<scalar_t, acc_t> C, const Grads<scalar_t, acc_t> G,
                            const BwdSmem L) {
  constexpr int TM = B >= 16 ? B / 16 : 1;
  constexpr int W = 2 * B - 1;
  extern __shared__ __align__(128) unsigned char smem[];
  __shared__ double scratch[33];
  acc_t* Qs = smem_at<acc_t>(smem, L.q);
  acc_t* dOs = smem_at<acc_t>(smem, L.dO);
  acc_t* Qrs = smem_at<acc_t>(smem, L.qr);
  acc_t* Ks = smem_at<acc_t>(smem, L.k);
  acc_t* Vs = smem_at<acc_t>(smem, L.v);
  acc_t* Rs = smem_at<acc_t>(smem, L.r);
  acc_t* Ps = smem_at<acc_t>(smem, L.p);
  acc_t* dQs = smem_at<acc_t>(smem, L.acc1);
  acc_t* dQrs = smem_at<acc_t>(smem, L.acc2);
  acc_t* pos = smem_at<acc_t>(smem, L.pos);
  acc_t* lse_s = smem_at<acc_t>(smem, L.lse);
  acc_t* dp_s = smem_at<acc_t>(smem, L.dp);
  double* Gs = smem_at<double>(smem, L.g);
  int64_t* Bks = smem_at<int64_t>(smem, L.bk);
  const Geo& g = C.g;
  const Term<acc_t>& T = C.t;
  const int D = g.dim, Dv = g.v_dim;
  const int ldD = L.d.ldD, ldV = L.d.ldV, ldS = L.d.ldS;
  const bool toep = T.toeplitz(), rel = T.rel();
  const int tid = threadIdx.x;
  const int64_t n_qt = (g.lq + B - 1) / B;
  const int64_t units = g.n_seq * g.heads * n_qt;
  for (int64_t unit = blockIdx.x; unit < units; unit += gridDim.x) {
    const int64_t qt = n_qt - 1 - unit % n_qt;
    const int64_t h = (unit / n_qt) % g.heads;
    const int64_t s = unit / (n_qt * g.heads);
    const Seq sq = seq_of(g, s);
    Tile t{s, h, qt * B, 0, 0, 0};
    if (t.q0 >= sq.q_len) continue;  // its partials stay zero
    t.rows = static_cast<int>(min(int64_t{B}, sq.q_len - t.q0));
    const int64_t hk = h / g.group;
    const int64_t pidx = (s * g.heads + h) * n_qt + qt;
    load_query_side(C, G, L.d, sq, t, Qs, dOs, Qrs, lse_s, dp_s);
    zero_tile(dQs, ldD, t.rows, D);
    if (rel) zero_tile(dQrs, ldD, t.rows, D);
    // Per-thread running sums, each in a fixed order: thread x < 2B - 1 owns tile diagonal x
    // (Toeplitz terms), thread r < B owns query row r's clipped sums (relative scores).
    double acc1 = 0.0, acc2 = 0.0, top = 0.0, bot = 0.0, frow = 0.0;
    const int64_t k_end =
        g.causal ? min(max(g.base + t.q0 + t.rows, int64_t{0}), sq.k_len) : sq.k_len;
    for (t.k0 = 0; t.k0 < k_end; t.k0 += B) {
      t.cols = static_cast<int>(min(int64_t{B}, k_end - t.k0));
      __syncthreads();
      load_tile(Ks, ldD, C.k + C.k_rows.at(sq.k_start, hk, t.k0), C.k_rows.row_stride, t.cols, D);
      load_tile(Vs, ldV, C.v + C.v_rows.at(sq.k_start, hk, t.k0), C.v_rows.row_stride, t.cols,
                Dv);
      int64_t rho_lo = 0;
      if (rel) rho_lo = load_rel_window(C, Rs, ldD, t);
      if (toep) fill_pos<B>(C, pos, t);
      __syncthreads();
      block_gemm<TM, TM, acc_t>(
          t.rows, t.cols, D, [&](int r, int e) { return Qs[r * ldD + e]; },
          [&](int e, int c) { return Ks[c * ldD + e]; },
          [&](int r, int c, acc_t x) { Ps[r * ldS + c] = mul_rn(x, C.scale); });
      __syncthreads();
      finish_scores<B, true>(C, Ps, ldS, pos, Qrs, Rs, ldD, rho_lo, t, lse_s);
      __syncthreads();
      block_gemm<TM, TM, acc_t>(
          t.rows, t.cols, Dv, [&](int r, int e) { return dOs[r * ldV + e]; },
          [&](int e, int c) { return Vs[c * ldV + e]; },
          [&](int r, int c, acc_t x) { Ps[r * ldS + c] = Ps[r * ldS + c] * (x - dp_s[r]); });
      __syncthreads();
      // Ps holds dS now.
      if (toep && tid < W) {
        const int x = tid;
        double gsum = 0.0;
        for (int r = max(0, B - 1 - x); r < t.rows; ++r) {
          const int c = r + x - (B - 1);
          if (c >= t.cols) break;
          gsum += static_cast<double>(Ps[r * ldS + c]);
        }
        const int64_t d = g.base + t.q0 - t.k0 + (B - 1) - x;
        if (T.family == PositionFamily::ALiBi) {
          acc1 += gsum * detail::alibi_term_slope_derivative(d, T.symmetric);
        } else if (T.family == PositionFamily::KERPLE) {
          detail::kerple_term_accumulate(T.kerple_log, T.r1d[h], T.r2d[h],
                                         detail::kerple_term_distance(d, T.symmetric), gsum,
                                         &acc1, &acc2);
        } else {
          Gs[x] = gsum;
          Bks[x] = detail::t5_term_bucket(d, T.symmetric, T.num_buckets, T.max_distance);
        }
      }
      if (T.family == PositionFamily::T5) {
        __syncthreads();
        // Thread b owns bucket b of this unit's partial row; diagonals in order.
        double* prow = G.part + pidx * G.nv;
        for (int64_t b = tid; b < T.num_buckets; b += kThreads) {
          double a = 0.0;
          for (int x = 0; x < W; ++x) a += Bks[x] == b ? Gs[x] : 0.0;
          prow[b] += a;
        }
      }
      if (T.fgate() && tid < t.rows) {
        for (int c = 0; c < t.cols; ++c) frow += static_cast<double>(Ps[tid * ldS + c]);
      }
      if (rel && tid < t.rows) {
        const int r = tid;
        const int64_t d0 = g.base + t.q0 + r - t.k0;
        for (int c = 0; c < t.cols; ++c) {
          const int64_t d = d0 - c;
          const double x = static_cast<double>(Ps[r * ldS + c]);
          if (d >= T.rel_m) {
            top += x;  // row c + M
          } else if (d <= -T.rel_m) {
            bot += x;  // row c - M
          }
        }
      }
      block_gemm<TM, TM, acc_t>(
          t.rows, D, t.cols, [&](int r, int c) { return Ps[r * ldS + c]; },
          [&](int c, int e) { return Ks[c * ldD + e]; },
          [&](int r, int e, acc_t x) { dQs[r * ldD + e] += x * C.scale; });
      if (rel) {
        const int64_t d0 = g.base + t.q0 - t.k0;
        block_gemm_rows<TM, TM, acc_t>(
            t.rows, D, t.cols, [&](int r, int c) { return Ps[r * ldS + c]; },
            [&](int r, int c) {
              return Rs + (detail::rel_term_row(d0 + r - c, T.rel_c, T.rel_m) - rho_lo) * ldD;
            },
            [&](int r, int e, acc_t x) { dQrs[r * ldD + e] += x; });
      }
    }
    __syncthreads();
    for (int x = tid; x < t.rows * D; x += kThreads) {
      const int r = x / D, e = x - r * D;
      const int64_t o = G.dq_rows.at(sq.q_start, h, t.q0 + r) + e;
      acc_t v = dQs[r * ldD + e];
      if (rel) {
        if (L.d.own_qr) {
          G.dq_rel[o] = static_cast<scalar_t>(dQrs[r * ldD + e]);
        } else {
          v += dQrs[r * ldD + e];  // Shaw: q_rel is q itself
        }
      }
      G.dq[o] = static_cast<scalar_t>(v);
    }
    if (T.family == PositionFamily::ALiBi || T.family == PositionFamily::KERPLE) {
      const double s1 = cuda::block_sum(acc1, scratch);
      const double s2 = T.family == PositionFamily::KERPLE ? cuda::block_sum(acc2, scratch) : 0.0;
      if (tid == 0) {
        G.part[pidx * G.nv] = s1;
        if (T.family == PositionFamily::KERPLE) G.part[pidx * G.nv + 1] = s2;
      }
    }
    if (rel && tid < t.rows) {
      const int64_t li = G.lse_rows.at(sq.q_start, h, t.q0 + tid);
      G.edge[2 * li] = top;
      G.edge[2 * li + 1] = bot;
    }
    if (T.fgate() && tid < t.rows && sq.k_len > 0) {
      G.frow[fgate_index(g, sq, h, fgate_query(g, sq, t.q0 + tid))] = frow;
    }
    __syncthreads();
  }
}

// out[k * H + h] = sum over (sequence, query tile) in order of part[(s, h, tile), k].
__global__ void __launch_bounds__(kThreads)
    attention_param_reduce_kernel(const double* __restrict__ part, double* __restrict__ out,
                                  int64_t heads, int64_t nv, int64_t n_seq, int64_t n_qt) {
  const int64_t n = heads * nv;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < n;
       idx += stride) {
    const int64_t k = idx / heads, h = idx - k * heads;
    double acc = 0.0;
    for (int64_t s = 0; s < n_seq; ++s) {
      const double* p = part + ((s * heads + h) * n_qt) * nv + k;
      for (int64_t qt = 0; qt < n_qt; ++qt) acc += p[qt * nv];
    }
    out[idx] = acc;
  }
}

// grad_rel_emb rows c - M .. c + M: unit = (band of B distances, head, split of the query
// tiles). Interior distances |d| < M: dR[c + d] += dS(i, i - d) q_rel_i over the pairs of the
// diagonal, dS recomputed as in the dQ kernel (same roundings); the edge rows c +- M take the
// clipped sums of the dQ kernel (both, for M = 0) times q_rel_i. Tiles in order, fp64.
template <typename scalar_t, typename acc_t, int B>
__global__ void __launch_bounds__(kThreads)
    attention_bwd_rel_band_kernel(const Call<scalar_t, acc_t> C, const Grads<scalar_t, acc_t> G,
                                  const BandSmem L, scalar_t* __restrict__ grad_rel,
                                  double* __restrict__ part, int64_t n_bands, int64_t splits,
                                  int64_t per_split) {
  constexpr int TM = B >= 16 ? B / 16 : 1;
  extern __shared__ __align__(128) unsigned char smem[];
  double* dRs = smem_at<double>(smem, L.dr);
  double* Tops = smem_at<double>(smem, L.top);
  double* Bots = smem_at<double>(smem, L.bot);
  acc_t* Qs = smem_at<acc_t>(smem, L.q);
  acc_t* dOs = smem_at<acc_t>(smem, L.dO);
  acc_t* Qrs = smem_at<acc_t>(smem, L.qr);
  acc_t* Kw = smem_at<acc_t>(smem, L.kw);
  acc_t* Vw = smem_at<acc_t>(smem, L.vw);
  acc_t* Rb = smem_at<acc_t>(smem, L.rb);
  acc_t* Ws = smem_at<acc_t>(smem, L.w);
  acc_t* lse_s = smem_at<acc_t>(smem, L.lse);
  acc_t* dp_s = smem_at<acc_t>(smem, L.dp);
  const Geo& g = C.g;
  const Term<acc_t>& T = C.t;
  const int D = g.dim, Dv = g.v_dim;
  const int ldD = L.d.ldD, ldV = L.d.ldV, ldS = L.d.ldS;
  const int tid = threadIdx.x;
  const int64_t M = T.rel_m, cc = T.rel_c;
  const int64_t n_qt = (g.lq + B - 1) / B;
  const int64_t n_tiles = g.n_seq * n_qt;
  const int64_t units = splits * g.heads * n_bands;
  for (int64_t unit = blockIdx.x; unit < units; unit += gridDim.x) {
    const int64_t band = unit % n_bands;
    const int64_t h = (unit / n_bands) % g.heads;
    const int64_t sp = unit / (n_bands * g.heads);
    const int64_t hk = h / g.group;
    const int64_t d_lo = -M + band * B;
    const int64_t d_hi = min(M, d_lo + B - 1);
    const int nbd = static_cast<int>(d_hi - d_lo + 1);
    const bool has_edge = d_lo == -M || d_hi == M;
    zero_tile(dRs, ldD, nbd, D);
    load_tile(Rb, ldD, C.rel + (h * T.rel_rows + cc + d_lo) * D, D, nbd, D);
    const int64_t t_begin = sp * per_split;
    const int64_t t_end = min(n_tiles, t_begin + per_split);
    for (int64_t tt = t_begin; tt < t_end; ++tt) {
      const int64_t s = tt / n_qt, qt = tt - s * n_qt;
      const Seq sq = seq_of(g, s);
      const int64_t i0 = qt * B;
      if (i0 >= sq.q_len) continue;
      const int rows = static_cast<int>(min(int64_t{B}, sq.q_len - i0));
      // Some pair (i, j = base + i - d) of the band inside the key range?
      const bool any_pair = sq.k_len > 0 && g.base + i0 + rows - 1 - d_lo >= 0 &&
                            g.base + i0 - d_hi <= sq.k_len - 1 && !(g.causal && d_hi < 0);
      if (!has_edge && !any_pair) continue;
      Tile t{s, h, i0, 0, rows, 0};
      __syncthreads();
      load_query_side(C, G, L.d, sq, t, Qs, dOs, Qrs, lse_s, dp_s);
      if (has_edge) {
        for (int r = tid; r < rows; r += kThreads) {
          const int64_t li = G.lse_rows.at(sq.q_start, h, i0 + r);
          Tops[r] = G.edge[2 * li];
          Bots[r] = G.edge[2 * li + 1];
        }
      }
      // Keys base + i0 - d_hi .. base + i0 + rows - 1 - d_lo: window row w = r + d_hi - d.
      const int64_t jw0 = g.base + i0 - d_hi;
      const int nwin = rows + nbd - 1;
      if (any_pair) {
        for (int x = tid; x < nwin * D; x += kThreads) {
          const int w = x / D, e = x - w * D;
          const int64_t j = jw0 + w;
          if (j >= 0 && j < sq.k_len) {
            Kw[w * ldD + e] = static_cast<acc_t>(C.k[C.k_rows.at(sq.k_start, hk, j) + e]);
          }
        }
        for (int x = tid; x < nwin * Dv; x += kThreads) {
          const int w = x / Dv, e = x - w * Dv;
          const int64_t j = jw0 + w;
          if (j >= 0 && j < sq.k_len) {
            Vw[w * ldV + e] = static_cast<acc_t>(C.v[C.v_rows.at(sq.k_start, hk, j) + e]);
          }
        }
      }
      __syncthreads();
      for (int x = tid; x < rows * B; x += kThreads) {
        const int r = x / B, b = x % B;
        if (b >= nbd) continue;
        const int64_t d = d_lo + b;
        acc_t w = acc_t(0);
        if (d > -M && d < M) {
          const int64_t i = i0 + r, j = g.base + i - d;
          bool keep = j >= 0 && j < sq.k_len && (!g.causal || d >= 0);
          if (keep && g.kpm != nullptr) keep = !g.kpm[s * g.kpm_stride + j];
          const acc_t l = lse_s[r];
          if (keep && l != neg_inf<acc_t>()) {
            const int wi = r + nbd - 1 - b;
            acc_t sv = mul_rn(dot_rows(Qs + r * ldD, Kw + wi * ldD, D), C.scale);
            sv = add_rn(sv, dot_rows(Qrs + r * ldD, Rb + b * ldD, D));
            const acc_t p = exp_(sv - l);
            const acc_t dpv = dot_rows(dOs + r * ldV, Vw + wi * ldV, Dv);
            w = p * (dpv - dp_s[r]);
          }
        } else if (M == 0) {
          w = static_cast<acc_t>(Tops[r] + Bots[r]);
        } else if (d == M) {
          w = static_cast<acc_t>(Tops[r]);
        } else {
          w = static_cast<acc_t>(Bots[r]);
        }
        Ws[r * ldS + b] = w;
      }
      __syncthreads();
      block_gemm<TM, TM, acc_t>(
          nbd, D, rows, [&](int b, int r) { return Ws[r * ldS + b]; },
          [&](int r, int e) { return Qrs[r * ldD + e]; },
          [&](int b, int e, acc_t x) { dRs[b * ldD + e] += static_cast<double>(x); });
    }
    __syncthreads();
    const int64_t n_rows = 2 * M + 1;
    for (int x = tid; x < nbd * D; x += kThreads) {
      const int b = x / D, e = x - b * D;
      if (splits == 1) {
        grad_rel[(h * T.rel_rows + cc + d_lo + b) * D + e] = static_cast<scalar_t>(dRs[b * ldD + e]);
      } else {
        part[((sp * g.heads + h) * n_rows + (d_lo + M + b)) * D + e] = dRs[b * ldD + e];
      }
    }
    __syncthreads();
  }
}

// grad_rel_emb rows c - M .. c + M from the band kernel's splits, added in order.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    attention_rel_reduce_kernel(const double* __restrict__ part, scalar_t* __restrict__ grad_rel,
                                int64_t heads, int64_t n_rows, int64_t R, int64_t first_row,
                                int64_t D, int64_t splits) {
  const int64_t per_split = heads * n_rows * D;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < per_split;
       idx += stride) {
    const int64_t e = idx % D, x = (idx / D) % n_rows, h = idx / (D * n_rows);
    double acc = 0.0;
    for (int64_t sp = 0; sp < splits; ++sp) acc += part[sp * per_split + idx];
    grad_rel[(h * R + first_row + x) * D + e] = static_cast<scalar_t>(acc);
  }
}

// ---- host --------------------------------------------------------------------------------------

std::vector<int64_t> read_cu_seqlens(const at::Tensor& cu_dev, int64_t total, const char* op,
                                     const char* arg, const char* len_arg) {
  const auto c = cu_dev.to(at::kCPU).to(at::kLong).contiguous();  // waits for the stream
  const int64_t* p = c.const_data_ptr<int64_t>();
  std::vector<int64_t> v(p, p + c.numel());
  POSENC_CHECK_ARG(v.front() == 0, op, arg, "must start at 0", arg, "[0] = ", v.front());
  for (size_t i = 1; i < v.size(); ++i) {
    POSENC_CHECK_ARG(v[i] >= v[i - 1], op, arg, "must be non-decreasing", arg, "[", i, "] = ",
                     v[i], " < ", arg, "[", i - 1, "] = ", v[i - 1]);
  }
  POSENC_CHECK_ARG(v.back() == total, op, arg,
                   c10::str("must end at the number of packed tokens ", len_arg, " = ", total),
                   arg, "[-1] = ", v.back());
  return v;
}

struct HostGeo {
  Geo g;
  // thd with max_seqlen_q/k given: cu_seqlens unread on the host, so the outputs are
  // pre-filled (rows outside every sequence, or past max_seqlen, are never visited).
  bool device_bounds = false;
  at::Tensor cu_q, cu_k, kpm;
};

HostGeo make_geometry(const char* op, const at::Tensor& q, const at::Tensor& k,
                      const at::Tensor& v, const Args& a, const AttentionConfig& cfg) {
  HostGeo hg;
  Geo& g = hg.g;
  g.thd = cfg.thd;
  g.causal = a.causal;
  g.base = a.q_offset - a.k_offset;  // offsets within +-2^61: no overflow
  g.heads = q.size(1);
  g.kv_heads = k.size(1);
  g.group = g.kv_heads > 0 ? g.heads / g.kv_heads : 1;
  g.dim = static_cast<int>(q.size(-1));
  g.v_dim = static_cast<int>(v.size(-1));
  if (!cfg.thd) {
    g.n_seq = q.size(0);
    g.lq = q.size(2);
    g.lk = k.size(2);
    g.total_q = g.lq;
    g.total_k = g.lk;
  } else {
    // The kernels index with int64: an int32 cu_seqlens (flash-attn's convention) is widened.
    hg.cu_q = a.cu_seqlens_q->to(at::kLong).contiguous();
    hg.cu_k = a.cu_seqlens_k.has_value() ? a.cu_seqlens_k->to(at::kLong).contiguous() : hg.cu_q;
    g.n_seq = hg.cu_q.size(0) - 1;
    g.total_q = q.size(0);
    g.total_k = k.size(0);
    if (a.max_seqlen_q.has_value() && a.max_seqlen_k.has_value()) {
      hg.device_bounds = true;
      g.lq = *a.max_seqlen_q;
      g.lk = *a.max_seqlen_k;
    } else {
      const auto cq = read_cu_seqlens(hg.cu_q, g.total_q, op, "cu_seqlens_q", "total_q");
      const auto ck = a.cu_seqlens_k.has_value()
                          ? read_cu_seqlens(hg.cu_k, g.total_k, op, "cu_seqlens_k", "total_k")
                          : read_cu_seqlens(hg.cu_q, g.total_k, op, "cu_seqlens_q",
                                            "total_k (cu_seqlens_k defaults to cu_seqlens_q)");
      for (size_t s = 0; s + 1 < cq.size(); ++s) {
        g.lq = std::max(g.lq, cq[s + 1] - cq[s]);
        g.lk = std::max(g.lk, ck[s + 1] - ck[s]);
        const int64_t ql = cq[s + 1] - cq[s], kl = ck[s + 1] - ck[s];
        POSENC_CHECK_ARG(!a.log_fgate.has_value() || ql == 0 ||
                             (g.base >= 0 && g.base + ql <= kl),
                         op, "log_fgate",
                         "needs every query at a key position of its sequence (q_offset - "
                         "k_offset >= 0 and q_offset - k_offset + q_len <= k_len per sequence)",
                         "sequence ", s, " with q_len = ", ql, ", k_len = ", kl,
                         ", q_offset - k_offset = ", g.base);
      }
      if (a.max_seqlen_q.has_value()) {
        POSENC_CHECK_ARG(*a.max_seqlen_q >= g.lq, op, "max_seqlen_q",
                         c10::str("must be >= the longest query sequence (", g.lq, ")"),
                         *a.max_seqlen_q);
      }
      if (a.max_seqlen_k.has_value()) {
        POSENC_CHECK_ARG(*a.max_seqlen_k >= g.lk, op, "max_seqlen_k",
                         c10::str("must be >= the longest key sequence (", g.lk, ")"),
                         *a.max_seqlen_k);
      }
    }
    g.cu_q = hg.cu_q.const_data_ptr<int64_t>();
    g.cu_k = hg.cu_k.const_data_ptr<int64_t>();
  }
  if (a.key_padding_mask.has_value()) {
    hg.kpm = a.key_padding_mask->contiguous();
    g.kpm = hg.kpm.const_data_ptr<bool>();
    g.kpm_stride = hg.kpm.size(1);
  }
  return hg;
}

// KERPLE log's r2 >= 0 (and finite), read on the host as kerple_bias does; skipped during CUDA
// graph capture, where a sync is illegal. No other parameter value is read (no sync).
void check_values_cuda(const char* op, const Args& a, const AttentionConfig& cfg) {
  if (cfg.family != PositionFamily::KERPLE || !cfg.kerple_log || a.r2->numel() == 0) return;
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  C10_CUDA_CHECK(cudaStreamIsCapturing(c10::cuda::getCurrentCUDAStream(), &status));
  if (status != cudaStreamCaptureStatusNone) return;
  detail::check_kerple_r2_values(op, a.r2->to(at::kCPU), detail::KerpleKind::Log);
}

// GEMM-style reads need a dense last dim and non-overlapping rows (heads may be expanded).
at::Tensor gemm_ready(const at::Tensor& t, bool thd) {
  const int64_t d = t.size(-1);
  const int64_t row_stride = thd ? t.stride(0) : t.stride(2);
  if ((t.stride(-1) == 1 || d <= 1) && (row_stride >= d || t.size(thd ? 0 : 2) <= 1)) return t;
  return t.contiguous();
}

// The inputs as the kernels read them, and the position term's parameters in acc_t (fp64 for
// the KERPLE derivatives). Tensors kept here outlive the launches of the call.
struct Prepared {
  at::Tensor q, k, v, q_rel, rel_emb, p1, p2, r1d, r2d, fc;
  cuda::ScanRows fgate_rows;  // the (sequence, head) rows of log_fgate
  double scale = 1.0;
};

Prepared prepare(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const Args& a,
                 const AttentionConfig& cfg, const HostGeo& hg, bool backward) {
  Prepared P;
  P.q = gemm_ready(q, cfg.thd);
  P.k = gemm_ready(k, cfg.thd);
  P.v = gemm_ready(v, cfg.thd);
  const int64_t D = q.size(-1);
  P.scale = a.scale.value_or(D > 0 ? 1.0 / std::sqrt(static_cast<double>(D)) : 1.0);
  const auto acc = detail::attention_acc_type(q.scalar_type());
  switch (cfg.family) {
    case PositionFamily::ALiBi:
      P.p1 = a.slopes->to(acc).contiguous();
      break;
    case PositionFamily::T5:
      P.p1 = a.table->to(acc).contiguous();
      break;
    case PositionFamily::KERPLE:
      P.p1 = a.r1->to(acc).contiguous();
      P.p2 = a.r2->to(acc).contiguous();
      if (backward) {
        P.r1d = a.r1->to(at::kDouble).contiguous();
        P.r2d = a.r2->to(at::kDouble).contiguous();
      }
      break;
    case PositionFamily::RelScores:
      P.rel_emb = a.rel_emb->contiguous();
      if (a.q_rel.has_value()) P.q_rel = gemm_ready(*a.q_rel, cfg.thd);
      break;
    case PositionFamily::ForgettingGate: {
      const auto l = a.log_fgate->contiguous();
      cuda::ScanRows& R = P.fgate_rows;
      if (cfg.thd) {  // (Tk, H): rows (sequence, head) restart at cu_seqlens_k
        R.rows = hg.g.n_seq * hg.g.heads;
        R.heads = hg.g.heads;
        R.total = hg.g.total_k;
        R.cu = hg.g.cu_k;
      } else {  // (B, H, Lk)
        R.rows = l.size(0) * l.size(1);
        R.len = l.size(2);
      }
      // Zeros: packed rows outside every sequence are never written.
      P.fc = at::zeros(l.sizes(), l.options().dtype(at::kDouble));
      const auto stream = c10::cuda::getCurrentCUDAStream();
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, l.scalar_type(), "fgate_prefix_cuda", [&] {
        cuda::fgate_scan(l.const_data_ptr<scalar_t>(), P.fc.mutable_data_ptr<double>(), R, false,
                         stream);
      });
      break;
    }
    default:
      break;
  }
  return P;
}

template <typename scalar_t, typename acc_t>
Call<scalar_t, acc_t> make_call(const HostGeo& hg, const AttentionConfig& cfg, const Prepared& P) {
  Call<scalar_t, acc_t> C;
  C.g = hg.g;
  C.q = P.q.const_data_ptr<scalar_t>();
  C.k = P.k.const_data_ptr<scalar_t>();
  C.v = P.v.const_data_ptr<scalar_t>();
  C.q_rows = rows_of(P.q, cfg.thd);
  C.k_rows = rows_of(P.k, cfg.thd);
  C.v_rows = rows_of(P.v, cfg.thd);
  C.qr = C.q;
  C.qr_rows = C.q_rows;
  C.scale = static_cast<acc_t>(P.scale);
  Term<acc_t>& T = C.t;
  T.family = cfg.family;
  T.symmetric = cfg.symmetric;
  T.kerple_log = cfg.kerple_log;
  T.heads = hg.g.heads;
  if (P.p1.defined()) T.p1 = P.p1.const_data_ptr<acc_t>();
  if (P.p2.defined()) T.p2 = P.p2.const_data_ptr<acc_t>();
  if (P.r1d.defined()) T.r1d = P.r1d.const_data_ptr<double>();
  if (P.r2d.defined()) T.r2d = P.r2d.const_data_ptr<double>();
  if (P.fc.defined()) T.fc = P.fc.const_data_ptr<double>();
  if (cfg.family == PositionFamily::T5) {
    T.num_buckets = P.p1.size(0);
    T.max_distance = cfg.max_distance;
  }
  if (cfg.family == PositionFamily::RelScores) {
    C.rel = P.rel_emb.const_data_ptr<scalar_t>();
    T.rel_rows = P.rel_emb.size(1);
    T.rel_c = (T.rel_rows - 1) / 2;
    T.rel_m = cfg.max_distance;
    if (P.q_rel.defined()) {
      C.qr = P.q_rel.const_data_ptr<scalar_t>();
      C.qr_rows = rows_of(P.q_rel, cfg.thd);
      C.own_qr = true;
    }
  }
  return C;
}

// Dynamic shared memory a block may use on the current device (opt-in limit), less the
// kernels' static arrays.
int64_t smem_budget() {
  int dev = 0, optin = 0;
  C10_CUDA_CHECK(cudaGetDevice(&dev));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  return static_cast<int64_t>(optin) - 1024;
}

// Tile size B for a kernel: the largest of 64/32/16/8 (no larger than the sequences need) whose
// layout fits in half the budget (two blocks per SM), else in the whole budget.
template <typename Layout>
int choose_tile(const Layout& layout_of, int64_t longest, const char* op, int D, int Dv) {
  const int64_t budget = smem_budget();
  const int cap = std::max(8, cuda::pow2_at_least(std::max<int64_t>(longest, 1), 64));
  for (const int64_t limit : {budget / 2, budget}) {
    for (const int b : {64, 32, 16, 8}) {
      if (b <= cap && static_cast<int64_t>(layout_of(b).bytes) <= limit) return b;
    }
  }
  TORCH_CHECK(false, "posenc.", op, ": head_dim ", D, " / v_head_dim ", Dv,
              " need more shared memory than this GPU allows per block (", budget, " bytes)");
  return 8;
}

template <typename F>
void with_tile(int b, const F& f) {
  switch (b) {
    case 64: f(std::integral_constant<int, 64>()); break;
    case 32: f(std::integral_constant<int, 32>()); break;
    case 16: f(std::integral_constant<int, 16>()); break;
    default: f(std::integral_constant<int, 8>()); break;
  }
}

template <typename Kernel>
void allow_smem(Kernel* kernel, size_t bytes) {
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(bytes)));
}

std::tuple<at::Tensor, at::Tensor> run_forward(const at::Tensor& q_in, const at::Tensor& k_in,
                                               const at::Tensor& v_in, const Args& a) {
  const AttentionConfig cfg = detail::check_relative_attention(kOp, q_in, k_in, v_in, a);
  const c10::cuda::CUDAGuard guard(q_in.device());
  const HostGeo hg = make_geometry(kOp, q_in, k_in, v_in, a, cfg);
  check_values_cuda(kOp, a, cfg);
  const auto acc_type = detail::attention_acc_type(q_in.scalar_type());
  const auto out_sizes = detail::attention_out_sizes(q_in, v_in);
  const auto lse_sizes = detail::attention_lse_sizes(q_in, cfg.thd);
  at::Tensor out, lse;
  if (hg.device_bounds) {
    out = at::zeros_symint(out_sizes, q_in.options());
    lse = at::full_symint(lse_sizes, -std::numeric_limits<double>::infinity(),
                          q_in.options().dtype(acc_type));
  } else {
    out = at::empty_symint(out_sizes, q_in.options());
    lse = at::empty_symint(lse_sizes, q_in.options().dtype(acc_type));
  }
  const Geo& g = hg.g;
  if (lse.numel() == 0 || g.n_seq == 0 || g.lq == 0 || g.heads == 0) return {out, lse};
  const Prepared P = prepare(q_in, k_in, v_in, a, cfg, hg, false);
  const auto stream = c10::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, P.q.scalar_type(), "relative_attention_cuda", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    const auto C = make_call<scalar_t, acc_t>(hg, cfg, P);
    if constexpr (std::is_same_v<scalar_t, c10::Half> || std::is_same_v<scalar_t, c10::BFloat16>) {
      if (cfg.family != PositionFamily::RelScores && cfg.family != PositionFamily::ForgettingGate) {
        auto layout = [&](int b) { return fwd_mma_smem(b, g.dim, g.v_dim, C.t.toeplitz()); };
        const int tile = std::max(16, choose_tile(layout, std::max(g.lq, g.lk), kOp, g.dim, g.v_dim));
        const FwdMmaSmem L = layout(tile);
        const int64_t units = g.n_seq * g.heads * ((g.lq + tile - 1) / tile);
        with_tile(tile, [&](auto tag) {
          constexpr int kB = std::max(16, static_cast<int>(decltype(tag)::value));
          auto* kernel = &attention_fwd_mma_kernel<scalar_t, kB>;
          allow_smem(kernel, L.bytes);
          kernel<<<cuda::num_blocks(units), kThreads, L.bytes, stream>>>(
              C, L, out.mutable_data_ptr<scalar_t>(), rows_of(out, cfg.thd),
              lse.mutable_data_ptr<acc_t>(), lse_rows_of(lse, cfg.thd));
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
        return;
      }
    }
    auto layout = [&](int b) {
      return fwd_smem(make_dims(b, g.dim, g.v_dim, cfg.family, C.own_qr), sizeof(acc_t));
    };
    const int tile = choose_tile(layout, std::max(g.lq, g.lk), kOp, g.dim, g.v_dim);
    const FwdSmem L = layout(tile);
    const int64_t units = g.n_seq * g.heads * ((g.lq + tile - 1) / tile);
    with_tile(tile, [&](auto tag) {
      constexpr int kB = decltype(tag)::value;
      auto* kernel = &attention_fwd_kernel<scalar_t, acc_t, kB>;
      allow_smem(kernel, L.bytes);
      kernel<<<cuda::num_blocks(units), kThreads, L.bytes, stream>>>(
          C, L, out.mutable_data_ptr<scalar_t>(), rows_of(out, cfg.thd),
          lse.mutable_data_ptr<acc_t>(), lse_rows_of(lse, cfg.thd));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {out, lse};
}

detail::RelativeAttentionGrads run_backward(const at::Tensor& grad_out_in,
                                            const detail::OptTensor& grad_lse_in,
                                            const at::Tensor& q_in, const at::Tensor& k_in,
                                            const at::Tensor& v_in, const at::Tensor& out_in,
                                            const at::Tensor& lse_in, const Args& a) {
  const AttentionConfig cfg = detail::check_relative_attention(kBwdOp, q_in, k_in, v_in, a);
  detail::check_relative_attention_backward(kBwdOp, grad_out_in, grad_lse_in, q_in, v_in, out_in,
                                            lse_in, cfg.thd);
  const c10::cuda::CUDAGuard guard(q_in.device());
  const HostGeo hg = make_geometry(kBwdOp, q_in, k_in, v_in, a, cfg);
  check_values_cuda(kBwdOp, a, cfg);
  const auto empty = at::empty({0}, q_in.options());
  // Zero-filled: rows that no unit visits (none for bhsd) keep a zero gradient.
  auto grad_q = at::zeros(q_in.sizes(), q_in.options());
  auto grad_k = at::zeros(k_in.sizes(), k_in.options());
  auto grad_v = at::zeros(v_in.sizes(), v_in.options());
  at::Tensor g_slopes = empty, g_table = empty, g_r1 = empty, g_r2 = empty, g_rel = empty,
             g_q_rel = empty, g_fgate = empty;
  auto zeros_like_param = [](const detail::OptTensor& t) {
    return at::zeros(t->sizes(), t->options());
  };
  switch (cfg.family) {
    case PositionFamily::ALiBi: g_slopes = zeros_like_param(a.slopes); break;
    case PositionFamily::T5: g_table = zeros_like_param(a.table); break;
    case PositionFamily::KERPLE:
      g_r1 = zeros_like_param(a.r1);
      g_r2 = zeros_like_param(a.r2);
      break;
    case PositionFamily::RelScores:
      g_rel = zeros_like_param(a.rel_emb);
      if (a.q_rel.has_value()) g_q_rel = at::zeros(q_in.sizes(), q_in.options());
      break;
    case PositionFamily::ForgettingGate: g_fgate = zeros_like_param(a.log_fgate); break;
    default: break;
  }
  auto result = [&] {
    return detail::RelativeAttentionGrads{grad_q, grad_k, grad_v, g_slopes, g_table,
                                          g_r1,   g_r2,   g_rel,  g_q_rel, g_fgate};
  };
  const Geo& g = hg.g;
  // No (query, key) pair: every gradient is zero.
  if (lse_in.numel() == 0 || k_in.size(cfg.thd ? 0 : 2) == 0) return result();
  if (g.n_seq == 0 || g.lq == 0 || g.lk == 0 || g.heads == 0) return result();

  const Prepared P = prepare(q_in, k_in, v_in, a, cfg, hg, true);
  const auto acc_type = detail::attention_acc_type(P.q.scalar_type());
  const auto out = out_in.contiguous();
  const auto dout = grad_out_in.to(P.q.scalar_type()).contiguous();
  const auto lse = lse_in.contiguous();
  at::Tensor glse;
  if (grad_lse_in.has_value()) glse = grad_lse_in->to(acc_type).contiguous();
  auto dp = at::empty(lse.sizes(), lse.options());
  const auto f64 = q_in.options().dtype(at::kDouble);
  const bool toep = cfg.family == PositionFamily::ALiBi || cfg.family == PositionFamily::T5 ||
                    cfg.family == PositionFamily::KERPLE;
  const bool rel = cfg.family == PositionFamily::RelScores;
  const bool fg = cfg.family == PositionFamily::ForgettingGate;
  at::Tensor frow, fcol;
  if (fg) {
    frow = at::zeros(P.fc.sizes(), f64);
    fcol = at::zeros(P.fc.sizes(), f64);
  }
  const auto stream = c10::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, P.q.scalar_type(), "relative_attention_backward_cuda", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    const auto C = make_call<scalar_t, acc_t>(hg, cfg, P);
    Grads<scalar_t, acc_t> G;
    G.out = out.const_data_ptr<scalar_t>();
    G.dout = dout.const_data_ptr<scalar_t>();
    G.out_rows = rows_of(out, cfg.thd);
    G.lse = lse.const_data_ptr<acc_t>();
    G.dp = dp.const_data_ptr<acc_t>();
    G.lse_rows = lse_rows_of(lse, cfg.thd);
    G.dq = grad_q.mutable_data_ptr<scalar_t>();
    G.dq_rows = rows_of(grad_q, cfg.thd);
    if (g_q_rel.numel() > 0) G.dq_rel = g_q_rel.mutable_data_ptr<scalar_t>();
    G.dk = grad_k.mutable_data_ptr<scalar_t>();
    G.dv = grad_v.mutable_data_ptr<scalar_t>();
    G.dk_rows = rows_of(grad_k, cfg.thd);
    G.dv_rows = rows_of(grad_v, cfg.thd);
    if (fg) {
      G.frow = frow.mutable_data_ptr<double>();
      G.fcol = fcol.mutable_data_ptr<double>();
    }

    // 1. Dp
    {
      const int64_t n_rows = lse.numel();
      attention_bwd_dp_kernel<scalar_t, acc_t><<<cuda::num_blocks(n_rows, kWarps), kThreads, 0, stream>>>(
          G.out, G.dout, G.out_rows, glse.defined() ? glse.const_data_ptr<acc_t>() : nullptr,
          dp.mutable_data_ptr<acc_t>(), n_rows, g.heads, cfg.thd ? lse.size(1) : lse.size(2),
          g.v_dim, cfg.thd);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }

    auto bwd_layout = [&](bool dkv) {
      return [&, dkv](int b) {
        return bwd_smem(make_dims(b, g.dim, g.v_dim, cfg.family, C.own_qr), sizeof(acc_t), dkv);
      };
    };
    const int64_t longest = std::max(g.lq, g.lk);

    // 2. dK, dV
    {
      const auto layout = bwd_layout(true);
      const int tile = choose_tile(layout, longest, kBwdOp, g.dim, g.v_dim);
      const BwdSmem L = layout(tile);
      const int64_t units = g.n_seq * g.kv_heads * ((g.lk + tile - 1) / tile);
      with_tile(tile, [&](auto tag) {
        constexpr int kB = decltype(tag)::value;
        auto* kernel = &attention_bwd_dkv_kernel<scalar_t, acc_t, kB>;
        allow_smem(kernel, L.bytes);
        kernel<<<cuda::num_blocks(units), kThreads, L.bytes, stream>>>(C, G, L);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    }

    // 3. dQ, dq_rel and the partials of the position parameters
    const auto layout_q = bwd_layout(false);
    const int tile_q = choose_tile(layout_q, longest, kBwdOp, g.dim, g.v_dim);
    const int64_t n_qt = (g.lq + tile_q - 1) / tile_q;
    at::Tensor part, edge;
    if (toep) {
      G.nv = cfg.family == PositionFamily::T5 ? a.table->size(0)
                                              : (cfg.family == PositionFamily::KERPLE ? 2 : 1);
      part = at::zeros({g.n_seq * g.heads * n_qt * G.nv}, f64);
      G.part = part.mutable_data_ptr<double>();
    }
    if (rel) {
      edge = at::zeros({lse.numel() * 2}, f64);
      G.edge = edge.mutable_data_ptr<double>();
    }
    {
      const BwdSmem L = layout_q(tile_q);
      const int64_t units = g.n_seq * g.heads * n_qt;
      with_tile(tile_q, [&](auto tag) {
        constexpr int kB = decltype(tag)::value;
        auto* kernel = &attention_bwd_dq_kernel<scalar_t, acc_t, kB>;
        allow_smem(kernel, L.bytes);
        kernel<<<cuda::num_blocks(units), kThreads, L.bytes, stream>>>(C, G, L);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    }

    if (toep) {
      auto red = at::empty({G.nv, g.heads}, f64);
      attention_param_reduce_kernel<<<cuda::num_blocks(G.nv * g.heads, kThreads), kThreads, 0, stream>>>(
          part.const_data_ptr<double>(), red.mutable_data_ptr<double>(), g.heads, G.nv, g.n_seq,
          n_qt);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      if (cfg.family == PositionFamily::ALiBi) {
        g_slopes = red[0].to(a.slopes->scalar_type()).contiguous();
      } else if (cfg.family == PositionFamily::KERPLE) {
        g_r1 = red[0].to(a.r1->scalar_type()).contiguous();
        g_r2 = red[1].to(a.r2->scalar_type()).contiguous();
      } else {
        g_table = red.to(a.table->scalar_type()).contiguous();  // (num_buckets, H)
      }
    }

    // Forgetting gate: d log_fgate = reverse prefix sums of rows - cols.
    if (fg) {
      const auto dc = frow - fcol;  // elementwise: deterministic
      auto acc = at::zeros(dc.sizes(), f64);
      cuda::fgate_scan(dc.const_data_ptr<double>(), acc.mutable_data_ptr<double>(), P.fgate_rows,
                       true, stream);
      g_fgate = acc.to(a.log_fgate->scalar_type());
    }

    // 4. grad_rel_emb
    if (rel) {
      const int64_t M = cfg.max_distance, R = a.rel_emb->size(1);
      auto layout = [&](int b) {
        return band_smem(make_dims(b, g.dim, g.v_dim, cfg.family, C.own_qr), sizeof(acc_t));
      };
      const int tile = choose_tile(layout, std::max<int64_t>(longest, 2 * M + 1), kBwdOp, g.dim,
                                   g.v_dim);
      const BandSmem L = layout(tile);
      const int64_t n_bands = (2 * M + 1 + tile - 1) / tile;
      const int64_t n_tiles = g.n_seq * ((g.lq + tile - 1) / tile);
      // Split the query tiles when there are few (band, head) units, for about 4 blocks per SM.
      int sms = 0, dev = 0;
      C10_CUDA_CHECK(cudaGetDevice(&dev));
      C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
      const int64_t want = 4 * static_cast<int64_t>(std::max(sms, 1));
      const int64_t hb = g.heads * n_bands;
      int64_t splits = std::clamp<int64_t>((want + hb - 1) / hb, 1, std::max<int64_t>(1, (n_tiles + 3) / 4));
      const int64_t per_split = (n_tiles + splits - 1) / splits;
      splits = (n_tiles + per_split - 1) / per_split;
      at::Tensor band_part;
      if (splits > 1) band_part = at::empty({splits * g.heads * (2 * M + 1) * g.dim}, f64);
      with_tile(tile, [&](auto tag) {
        constexpr int kB = decltype(tag)::value;
        auto* kernel = &attention_bwd_rel_band_kernel<scalar_t, acc_t, kB>;
        allow_smem(kernel, L.bytes);
        kernel<<<cuda::num_blocks(splits * hb), kThreads, L.bytes, stream>>>(
            C, G, L, g_rel.mutable_data_ptr<scalar_t>(),
            splits > 1 ? band_part.mutable_data_ptr<double>() : nullptr, n_bands, splits,
            per_split);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
      if (splits > 1) {
        const int64_t n = g.heads * (2 * M + 1) * g.dim;
        attention_rel_reduce_kernel<scalar_t><<<cuda::num_blocks(n, kThreads), kThreads, 0, stream>>>(
            band_part.const_data_ptr<double>(), g_rel.mutable_data_ptr<scalar_t>(), g.heads,
            2 * M + 1, R, (R - 1) / 2 - M, g.dim, splits);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    }
  });
  return result();
}

}  // namespace
}  // namespace posenc

TORCH_LIBRARY_IMPL(posenc, CUDA, m) {
  m.impl("relative_attention",
         &posenc::detail::relative_attention_kernel_entry<posenc::run_forward>);
  m.impl("relative_attention_backward",
         &posenc::detail::relative_attention_backward_kernel_entry<posenc::run_backward>);
}
