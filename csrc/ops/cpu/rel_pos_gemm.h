// A small GEMM for the rel_pos_scores forward whose every output element is the same chain
// of fused multiply-adds over k in order, whatever the matrix sizes, the element's position
// or the alignment. A query's scores then do not depend on the tile, the key block or the
// other queries of the call, so a block of queries or keys (KV-cache decoding, context
// parallelism) gives exactly the full call's numbers. A BLAS GEMM picks its kernels by size
// and cannot promise that.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>

#include "capability.h"

namespace posenc {
namespace detail {
// Columns per packed panel of b, at most (two vectors of 8 floats under AVX2).
constexpr int64_t kBandPanel = 16;
}  // namespace detail
}  // namespace posenc

#define POSENC_REL_POS_GEMM_DECLS                                                           \
  /* c[t * ldc + w] = sum_k a[t * lda + k] * b[k * ldb + w], t < m, w < n; only the column \
     panels that some row's [col_lo[t], col_hi[t]) touches are computed (per block of      \
     rows). pack holds k * kBandPanel elements. */                                          \
  void band_gemm(const float* a, int64_t lda, int64_t m, const float* b, int64_t ldb,       \
                 int64_t n, int64_t k, const int64_t* col_lo, const int64_t* col_hi,        \
                 float* pack, float* c, int64_t ldc);                                       \
  void band_gemm(const double* a, int64_t lda, int64_t m, const double* b, int64_t ldb,     \
                 int64_t n, int64_t k, const int64_t* col_lo, const int64_t* col_hi,        \
                 double* pack, double* c, int64_t ldc);                                     \
  /* dst[i] = src[i] rounded to the reduced type, i < n. */                                \
  void round_floats(const float* src, c10::Half* dst, int64_t n);                           \
  void round_floats(const float* src, c10::BFloat16* dst, int64_t n);
POSENC_DECLARE_CPU_KERNELS(POSENC_REL_POS_GEMM_DECLS)
#undef POSENC_REL_POS_GEMM_DECLS
