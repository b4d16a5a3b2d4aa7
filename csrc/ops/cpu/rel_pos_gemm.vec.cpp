// Compiled once per CPU capability (see CMakeLists.txt). Register-blocked: kRows rows of a
// times one panel of two vectors of b, accumulated with Vectorized fmadd (an FMA under
// AVX2); partial panels use the same vector ops on zero-padded columns, so every element
// sees the identical operation sequence.
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstring>

#include "rel_pos_gemm.h"

namespace posenc {
namespace cpu {
namespace CPU_CAPABILITY {
namespace {

using at::vec::Vectorized;

// 6 rows x 2 vectors: 12 accumulators, enough independent FMAs to hide their latency.
constexpr int64_t kRows = 6;

template <typename T, int64_t R>
void micro(const T* a, int64_t lda, const T* pack, int64_t k, T* c, int64_t ldc, int64_t nc) {
  using Vec = Vectorized<T>;
  constexpr int64_t V = Vec::size();
  Vec acc[R][2];
  for (int64_t r = 0; r < R; ++r) acc[r][0] = acc[r][1] = Vec(T(0));
  for (int64_t e = 0; e < k; ++e) {
    const Vec b0 = Vec::loadu(pack + e * 2 * V);
    const Vec b1 = Vec::loadu(pack + e * 2 * V + V);
    for (int64_t r = 0; r < R; ++r) {
      const Vec x(a[r * lda + e]);
      acc[r][0] = at::vec::fmadd(x, b0, acc[r][0]);
      acc[r][1] = at::vec::fmadd(x, b1, acc[r][1]);
    }
  }
  for (int64_t r = 0; r < R; ++r) {
    T* cr = c + r * ldc;
    if (nc == 2 * V) {
      acc[r][0].store(cr);
      acc[r][1].store(cr + V);
    } else if (nc > V) {
      acc[r][0].store(cr);
      acc[r][1].store(cr + V, static_cast<int>(nc - V));
    } else {
      acc[r][0].store(cr, static_cast<int>(nc));
    }
  }
}

template <typename T>
void band_gemm_impl(const T* a, int64_t lda, int64_t m, const T* b, int64_t ldb, int64_t n,
                    int64_t k, const int64_t* col_lo, const int64_t* col_hi, T* pack, T* c,
                    int64_t ldc) {
  constexpr int64_t P = 2 * Vectorized<T>::size();
  static_assert(P <= detail::kBandPanel, "pack buffer too small");
  for (int64_t w0 = 0; w0 < n; w0 += P) {
    const int64_t nc = std::min(P, n - w0);
    bool packed = false;
    for (int64_t t0 = 0; t0 < m; t0 += kRows) {
      const int64_t rows = std::min(kRows, m - t0);
      bool needed = false;
      for (int64_t t = t0; t < t0 + rows; ++t) {
        needed = needed || (col_lo[t] < col_hi[t] && col_lo[t] < w0 + nc && col_hi[t] > w0);
      }
      if (!needed) continue;
      if (!packed) {  // the panel, k x P contiguous, zero past column n
        for (int64_t e = 0; e < k; ++e) {
          std::memcpy(pack + e * P, b + e * ldb + w0, static_cast<size_t>(nc) * sizeof(T));
          std::fill(pack + e * P + nc, pack + (e + 1) * P, T(0));
        }
        packed = true;
      }
      const T* at = a + t0 * lda;
      T* ct = c + t0 * ldc + w0;
      switch (rows) {
        case 6: micro<T, 6>(at, lda, pack, k, ct, ldc, nc); break;
        case 5: micro<T, 5>(at, lda, pack, k, ct, ldc, nc); break;
        case 4: micro<T, 4>(at, lda, pack, k, ct, ldc, nc); break;
        case 3: micro<T, 3>(at, lda, pack, k, ct, ldc, nc); break;
        case 2: micro<T, 2>(at, lda, pack, k, ct, ldc, nc); break;
        default: micro<T, 1>(at, lda, pack, k, ct, ldc, nc); break;
      }
    }
  }
}

}  // namespace

void band_gemm(const float* a, int64_t lda, int64_t m, const float* b, int64_t ldb, int64_t n,
               int64_t k, const int64_t* col_lo, const int64_t* col_hi, float* pack, float* c,
               int64_t ldc) {
  band_gemm_impl(a, lda, m, b, ldb, n, k, col_lo, col_hi, pack, c, ldc);
}

void band_gemm(const double* a, int64_t lda, int64_t m, const double* b, int64_t ldb,
               int64_t n, int64_t k, const int64_t* col_lo, const int64_t* col_hi,
               double* pack, double* c, int64_t ldc) {
  band_gemm_impl(a, lda, m, b, ldb, n, k, col_lo, col_hi, pack, c, ldc);
}

void round_floats(const float* src, c10::Half* dst, int64_t n) { at::vec::convert(src, dst, n); }

void round_floats(const float* src, c10::BFloat16* dst, int64_t n) {
  at::vec::convert(src, dst, n);
}

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace posenc
