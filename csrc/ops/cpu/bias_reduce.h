// CPU building blocks of the Toeplitz bias ops (ALiBi, T5, KERPLE): the bias depends on
// (head, diagonal) only, with diagonal t = j - i + q_len - 1 of the (q_len, k_len) grid.
//
// Forward: each head's values per diagonal go into a table of q_len + k_len - 1 entries, and
// row i of the output is the window table[q_len - 1 - i, ... + k_len): one memcpy per row.
// Backward: the upstream gradient is summed along diagonals (vectorised; one task per head
// and block of kRowBlock rows, so the blocking and every summation order are fixed whatever
// the thread count), and each task reduces its diagonal sums to parameter partials in fp64;
// the partials of a head are added in block order. Deterministic, no atomics.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "capability.h"

#define POSENC_BIAS_REDUCE_DECLS                                                             \
  /* acc[(rows - 1 - r) + j] += g[r * row_stride + j], r < rows, j < k_len: the sums along   \
     the rows + k_len - 1 diagonals of a block of rows (acc in the accumulation type). */   \
  void diagonal_sums(const float* g, int64_t rows, int64_t k_len, int64_t row_stride,       \
                     double* acc);                                                           \
  void diagonal_sums(const double* g, int64_t rows, int64_t k_len, int64_t row_stride,      \
                     double* acc);                                                           \
  void diagonal_sums(const c10::Half* g, int64_t rows, int64_t k_len, int64_t row_stride,   \
                     float* acc);                                                            \
  void diagonal_sums(const c10::BFloat16* g, int64_t rows, int64_t k_len,                   \
                     int64_t row_stride, float* acc);
POSENC_DECLARE_CPU_KERNELS(POSENC_BIAS_REDUCE_DECLS)
#undef POSENC_BIAS_REDUCE_DECLS

namespace posenc {
namespace detail {

// Rows per backward task. Fixed (not derived from the thread count) so that results are
// bit-identical for any number of threads.
constexpr int64_t kBiasRowBlock = 64;

// out[h, i, :] = lut[h * (q_len + k_len - 1) + q_len - 1 - i, ... + k_len). out is
// contiguous (heads, q_len, k_len).
template <typename scalar_t>
void fill_bias_from_diagonals(scalar_t* out, const scalar_t* lut, int64_t heads, int64_t q_len,
                              int64_t k_len) {
  const int64_t nd = q_len + k_len - 1;
  // A chunk of ~64 KiB of output per task: enough to amortise the task, small enough that
  // both threads get work on a short output.
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(1, k_len * static_cast<int64_t>(sizeof(scalar_t))));
  at::parallel_for(0, heads * q_len, grain, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const scalar_t* src = lut + (row / q_len) * nd + (q_len - 1 - row % q_len);
      std::memcpy(out + row * k_len, src, static_cast<size_t>(k_len) * sizeof(scalar_t));
    }
  });
}

// fp32 and fp64 gradients sum in fp64 (an fp32 parameter gradient is then the correctly
// rounded sum of thousands of terms); fp16/bf16 in fp32, whose rounding is far below theirs.
template <typename scalar_t>
using bias_acc_t = std::conditional_t<std::is_same_v<scalar_t, double> || std::is_same_v<scalar_t, float>, double, float>;

// Calls reduce(h, t_lo, diag, n, partial) once per (head, block of rows), with diag[u] (fp64)
// the block's gradient sum along diagonal t_lo + u, u < n; reduce adds the block's share to
// partial[0, n_params). Returns the (heads, n_params) fp64 sums of the partials, blocks in
// order. grad is contiguous (heads, q_len, k_len).
template <typename scalar_t, typename Reduce>
std::vector<double> reduce_bias_gradient(const scalar_t* grad, int64_t heads, int64_t q_len,
                                         int64_t k_len, int64_t n_params, const Reduce& reduce) {
  using acc_t = bias_acc_t<scalar_t>;
  const int64_t blocks = (q_len + kBiasRowBlock - 1) / kBiasRowBlock;
  std::vector<double> partial(heads * blocks * n_params, 0.0);
  at::parallel_for(0, heads * blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc;
    std::vector<double> diag;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t h = task / blocks;
      const int64_t i0 = (task % blocks) * kBiasRowBlock;
      const int64_t rows = std::min(kBiasRowBlock, q_len - i0);
      const int64_t n = rows + k_len - 1;
      acc.assign(n, acc_t(0));
      POSENC_CPU_DISPATCH(diagonal_sums, grad + (h * q_len + i0) * k_len, rows, k_len, k_len,
                          acc.data());
      diag.assign(acc.begin(), acc.end());
      // Row i0 + rows - 1 holds the block's lowest diagonal.
      reduce(h, q_len - i0 - rows, diag.data(), n, partial.data() + task * n_params);
    }
  });
  std::vector<double> total(heads * n_params, 0.0);
  for (int64_t h = 0; h < heads; ++h) {
    for (int64_t b = 0; b < blocks; ++b) {
      const double* p = partial.data() + (h * blocks + b) * n_params;
      for (int64_t k = 0; k < n_params; ++k) total[h * n_params + k] += p[k];
    }
  }
  return total;
}

}  // namespace detail
}  // namespace posenc
