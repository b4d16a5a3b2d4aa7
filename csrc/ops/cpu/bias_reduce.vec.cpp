// Compiled once per CPU capability (see CMakeLists.txt): Vectorized<float> is 8 lanes under
// AVX2. Each diagonal's sum adds the rows in order, whatever the lane: results are the same
// for any alignment of the window.
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>

#include "bias_reduce.h"

namespace posenc {
namespace cpu {
namespace CPU_CAPABILITY {
namespace {

using at::vec::Vectorized;

template <typename acc_t>
void add_row(const acc_t* g, int64_t k_len, acc_t* acc) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t W = Vec::size();
  int64_t j = 0;
  for (; j + 2 * W <= k_len; j += 2 * W) {
    (Vec::loadu(acc + j) + Vec::loadu(g + j)).store(acc + j);
    (Vec::loadu(acc + j + W) + Vec::loadu(g + j + W)).store(acc + j + W);
  }
  for (; j + W <= k_len; j += W) (Vec::loadu(acc + j) + Vec::loadu(g + j)).store(acc + j);
  for (; j < k_len; ++j) acc[j] += g[j];
}

template <typename reduced_t>
void add_row_reduced(const reduced_t* g, int64_t k_len, float* acc) {
  using Vec = Vectorized<float>;
  constexpr int64_t W = Vec::size();
  int64_t j = 0;
  for (; j + W <= k_len; j += W) {
    Vec x;
    at::vec::load_to_float<reduced_t>(g + j, x);
    (Vec::loadu(acc + j) + x).store(acc + j);
  }
  for (; j < k_len; ++j) acc[j] += static_cast<float>(g[j]);
}

// fp32 into fp64, four rows per pass: acc is loaded and stored once per four gradient rows,
// which halves the time of a row-at-a-time pass. at::vec has no fast fp32 -> fp64 widening,
// but these loops are ones GCC vectorises in each capability's copy (vcvtps2pd under AVX2).
// The order of the additions per diagonal is fixed by the row grouping alone: results do not
// depend on the capability or the thread count.
template <typename in_t>
void add_row_widened(const in_t* __restrict g, int64_t k_len, double* __restrict acc) {
  for (int64_t j = 0; j < k_len; ++j) acc[j] += static_cast<double>(g[j]);
}

// Rows r .. r + 3 of the block go to acc + b, acc + b - 1, acc + b - 2, acc + b - 3.
template <typename in_t>
void add_four_rows_widened(const in_t* __restrict g0, const in_t* __restrict g1,
                           const in_t* __restrict g2, const in_t* __restrict g3, int64_t k_len,
                           double* __restrict acc_b) {
  double* __restrict lo = acc_b - 3;
  // Diagonals reached by only some of the four rows (the first and last three).
  for (int64_t x = 0; x < 3; ++x) {
    // lo[x] gets row k (k >= 1) element x - 3 + k where it exists; rows in order
    if (x >= 2 && x - 2 < k_len) lo[x] += static_cast<double>(g1[x - 2]);
    if (x >= 1 && x - 1 < k_len) lo[x] += static_cast<double>(g2[x - 1]);
    if (x < k_len) lo[x] += static_cast<double>(g3[x]);
  }
  for (int64_t x = 3; x < k_len; ++x) {
    lo[x] += (static_cast<double>(g0[x - 3]) + static_cast<double>(g1[x - 2])) +
             (static_cast<double>(g2[x - 1]) + static_cast<double>(g3[x]));
  }
  for (int64_t x = std::max<int64_t>(k_len, 3); x < k_len + 3; ++x) {
    if (x - 3 < k_len) lo[x] += static_cast<double>(g0[x - 3]);
    if (x - 2 < k_len) lo[x] += static_cast<double>(g1[x - 2]);
    if (x - 1 < k_len) lo[x] += static_cast<double>(g2[x - 1]);
  }
}

// Columns per pass: the fp64 sums a pass touches (kColumnTile + rows doubles, ~17 KiB) stay in
// L1 beside the four streamed rows; a whole 4096-wide row of sums (33 KiB) would not, and the
// pass then runs at L2 speed (1.5x slower at L = 4096). Fixed, so the summation order depends
// on k_len only.
constexpr int64_t kColumnTile = 2048;

template <typename in_t>
void diagonal_sums_widened(const in_t* g, int64_t rows, int64_t k_len, int64_t row_stride,
                           double* acc) {
  for (int64_t c0 = 0; c0 < k_len; c0 += kColumnTile) {
    const int64_t w = std::min(kColumnTile, k_len - c0);
    int64_t r = 0;
    if (w >= 3) {
      for (; r + 4 <= rows; r += 4) {
        add_four_rows_widened(g + r * row_stride + c0, g + (r + 1) * row_stride + c0,
                              g + (r + 2) * row_stride + c0, g + (r + 3) * row_stride + c0, w,
                              acc + (rows - 1 - r) + c0);
      }
    }
    for (; r < rows; ++r) add_row_widened(g + r * row_stride + c0, w, acc + (rows - 1 - r) + c0);
  }
}

}  // namespace

void diagonal_sums(const float* g, int64_t rows, int64_t k_len, int64_t row_stride, double* acc) {
  diagonal_sums_widened(g, rows, k_len, row_stride, acc);
}

void diagonal_sums(const double* g, int64_t rows, int64_t k_len, int64_t row_stride,
                   double* acc) {
  diagonal_sums_widened(g, rows, k_len, row_stride, acc);
}

void diagonal_sums(const c10::Half* g, int64_t rows, int64_t k_len, int64_t row_stride,
                   float* acc) {
  for (int64_t r = 0; r < rows; ++r) {
    add_row_reduced(g + r * row_stride, k_len, acc + (rows - 1 - r));
  }
}

void diagonal_sums(const c10::BFloat16* g, int64_t rows, int64_t k_len, int64_t row_stride,
                   float* acc) {
  for (int64_t r = 0; r < rows; ++r) {
    add_row_reduced(g + r * row_stride, k_len, acc + (rows - 1 - r));
  }
}

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace posenc
