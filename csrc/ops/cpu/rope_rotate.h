// CPU building blocks of the RoPE kernels (compiled per capability, rope_rotate.vec.cpp).
//
// rope_rotate: the rotation of a run of rows (head vectors) by precomputed cos/sin table rows.
// A table row holds cos[0, half) then sin[0, half) (magnitude and, for the backward, the sign
// of sin already folded in), in the opmath type (fp32, fp64 for fp64 inputs). Pair k is
// (k, k + half) half-split or (2k, 2k + 1) interleaved:
//   out[i1] = x[i1] * cos[k] - x[i2] * sin[k],   out[i2] = x[i2] * cos[k] + x[i1] * sin[k]
// each product and sum rounded once (no FMA: the file is compiled with -ffp-contract=off), so
// the vector lanes, the scalar tails and both capability copies give the same bits. Dims
// [2 * half, D) are copied bit-exactly.
//
// rope_cos_sin_f32: a table row's cos and sin of fp32 angles, evaluated in fp64 vectors (a
// Cody-Waite reduction by pi/2 and fdlibm's polynomials, ~1e-16 relative) and rounded once to
// fp32: the correctly rounded value except in rare near-halfway cases, always within 1 ulp --
// as glibc's cosf/sinf and torch's (Sleef) cos/sin are. The same bits in both capability copies.
//
// rope_rotate_table: the same for apply_rotary_pos_emb's caller-given full-width tables (one
// cos and one sin per element, in x's dtype); transpose = true applies R^T (its grad_x).
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>

#include "capability.h"

#define POSENC_ROPE_ROTATE_DECLS_T(T, OPMATH)                                                 \
  /* Row r < rows: x + r * xs (element stride xd inside the row), out + r * os (contiguous  \
     row), table row table + r * ts (ts = 0: one table row for every row of the run). */    \
  void rope_rotate(const T* x, int64_t xs, int64_t xd, T* out, int64_t os,                   \
                   const OPMATH* table, int64_t ts, int64_t rows, int64_t half, int64_t D,   \
                   bool interleaved);                                                        \
  /* Row r < rows of x (stride xd inside), grad out (contiguous) rotated by cos / sin rows   \
     (cs, ss strides between rows; cd, sd inside) of rot = 2 * half elements. */            \
  void rope_rotate_table(const T* x, int64_t xs, int64_t xd, T* out, int64_t os,             \
                         const T* cos, int64_t cs, int64_t cd, const T* sin, int64_t ss,      \
                         int64_t sd, int64_t rows, int64_t half, int64_t D, bool interleaved, \
                         bool transpose);                                             \
  /* apply_rotary_pos_emb backward, one (batch, head) row: acc_c[j] += g[j] x[j],            \
     acc_s[i1] -= g[i1] x[i2], acc_s[i2] += g[i2] x[i1] over the rot = 2 * half dims, in fp64. */ \
  void rope_table_grad_accumulate(const T* x, int64_t xd, const T* g, int64_t gd,            \
                                  int64_t half, bool interleaved, double* acc_c,             \
                                  double* acc_s);

#define POSENC_ROPE_ROTATE_DECLS                                                             \
  /* c[k] = cos(a_k), s[k] = sin(a_k) rounded to fp32, a_k = the fp32 product p * freq[k]     \
     (reference precision: the angle rounded where Hugging Face rounds it), k < n. */         \
  void rope_cos_sin_f32(float p, const float* freq, int64_t n, float* c, float* s);          \
  POSENC_ROPE_ROTATE_DECLS_T(float, float)               \
  POSENC_ROPE_ROTATE_DECLS_T(double, double)             \
  POSENC_ROPE_ROTATE_DECLS_T(c10::Half, float)           \
  POSENC_ROPE_ROTATE_DECLS_T(c10::BFloat16, float)
POSENC_DECLARE_CPU_KERNELS(POSENC_ROPE_ROTATE_DECLS)
#undef POSENC_ROPE_ROTATE_DECLS
#undef POSENC_ROPE_ROTATE_DECLS_T
