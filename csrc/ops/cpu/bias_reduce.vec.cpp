// Compiled once per CPU capability (see CMakeLists.txt): Vectorized<float> is 8 lanes under
// AVX2. Each diagonal's sum adds the rows in order, whatever the lane: results are the same
// for any alignment of the window.
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

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

// fp32 into fp64: at::vec has no fast widening conversion, but this loop is one that GCC
// vectorises in each capability's copy (vcvtps2pd under AVX2).
void add_row_widened(const float* __restrict g, int64_t k_len, double* __restrict acc) {
  for (int64_t j = 0; j < k_len; ++j) acc[j] += static_cast<double>(g[j]);
}

}  // namespace

void diagonal_sums(const float* g, int64_t rows, int64_t k_len, int64_t row_stride, double* acc) {
  for (int64_t r = 0; r < rows; ++r) {
    add_row_widened(g + r * row_stride, k_len, acc + (rows - 1 - r));
  }
}

void diagonal_sums(const double* g, int64_t rows, int64_t k_len, int64_t row_stride,
                   double* acc) {
  for (int64_t r = 0; r < rows; ++r) add_row(g + r * row_stride, k_len, acc + (rows - 1 - r));
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
