// Position terms: each relative family's formula as the fused attention op evaluates it, on the
// CPU and on CUDA (C10_HOST_DEVICE), giving the numbers of the family's bias op (the tests
// compare the two).
//
// Every term is a function of the head h and the signed distance d = q_pos - k_pos (the
// Toeplitz families ALiBi, T5 and KERPLE), or of d and the query row (the relative-scores
// term, whose value is q_rel . R[row(d)]), or of the two positions themselves (the
// forgetting gate, c[q] - c[k] of a data-dependent prefix sum). Each term has two entry points: `value`, the bias at
// distance d, and the derivative that folds a gradient summed over one distance (a diagonal
// of the (q_len, k_len) grid) into the term's parameters. The kernels sum gradients per
// diagonal in a fixed order and then call the derivative once per diagonal, so parameter
// gradients are deterministic on every backend.
#pragma once

#include <c10/macros/Macros.h>

#include <cmath>
#include <cstdint>

#include "t5.h"

namespace posenc {
namespace detail {

// Host code calls std:: (the float overloads, as the bias kernels always did); device code
// CUDA's global overloads.
#if defined(__CUDA_ARCH__)
#define POSENC_TERM_MATH(fn) ::fn
#else
#define POSENC_TERM_MATH(fn) std::fn
#endif

enum class PositionFamily : int {
  None = 0,
  ALiBi = 1,
  T5 = 2,
  KERPLE = 3,
  RelScores = 4,
  ForgettingGate = 5
};

// ---- ALiBi (Press et al. 2022, §3) --------------------------------------------------------
// Causal form -slope * d (future keys get positive values; a causal mask removes them),
// symmetric form -slope * |d|.
C10_HOST_DEVICE inline int64_t alibi_term_distance(int64_t d, bool symmetric) {
  return (symmetric && d < 0) ? -d : d;
}

template <typename T>
C10_HOST_DEVICE inline T alibi_term_value(T slope, int64_t d, bool symmetric) {
  // -distance converted first, so the diagonal is +0 and not -0.
  return static_cast<T>(-alibi_term_distance(d, symmetric)) * slope;
}

// d value / d slope at distance d.
C10_HOST_DEVICE inline double alibi_term_slope_derivative(int64_t d, bool symmetric) {
  return static_cast<double>(-alibi_term_distance(d, symmetric));
}

// ---- KERPLE (Chi et al. 2022, eq. 6/7) -----------------------------------------------------
// Distance max(d, 0) (causal: future keys get 0) or |d| (symmetric).
C10_HOST_DEVICE inline int64_t kerple_term_distance(int64_t d, bool symmetric) {
  if (symmetric) return d < 0 ? -d : d;
  return d > 0 ? d : 0;
}

// -r1 log(1 + r2 x) (log kernel) or -r1 x^r2 (power kernel), +0 at x = 0 for every r2.
template <typename T>
C10_HOST_DEVICE inline T kerple_term_value(bool log_kernel, T r1, T r2, int64_t dist) {
  if (dist == 0) return T(0);
  const T x = static_cast<T>(dist);
  return T(0) - r1 * (log_kernel ? POSENC_TERM_MATH(log1p)(r2 * x) : POSENC_TERM_MATH(pow)(x, r2));
}

// Adds g * d value / d r1 and g * d value / d r2 at distance `dist` (fp64).
C10_HOST_DEVICE inline void kerple_term_accumulate(bool log_kernel, double r1, double r2,
                                                   int64_t dist, double g, double* acc_r1,
                                                   double* acc_r2) {
  if (dist == 0) return;  // value 0 for every r1, r2: both derivatives are 0
  const double x = static_cast<double>(dist);
  if (log_kernel) {
    *acc_r1 -= g * POSENC_TERM_MATH(log1p)(r2 * x);
    *acc_r2 -= g * r1 * x / (1.0 + r2 * x);
  } else {
    const double p = POSENC_TERM_MATH(pow)(x, r2);
    *acc_r1 -= g * p;
    *acc_r2 -= g * r1 * p * POSENC_TERM_MATH(log)(x);
  }
}

// ---- T5 (Raffel et al. 2020) ---------------------------------------------------------------
// The bucket of distance d: T5 buckets the relative position key - query = -d.
C10_HOST_DEVICE inline int64_t t5_term_bucket(int64_t d, bool bidirectional, int64_t num_buckets,
                                              int64_t max_distance) {
  const int64_t rel = d == INT64_MIN ? INT64_MAX : -d;
  return t5_bucket(rel, bidirectional, num_buckets, max_distance);
}

// ---- Relative scores (Transformer-XL (b)+(d), Dai et al. 2019 §3.3; Shaw et al. 2018) ------
// The value is q_rel . R[h, c + clamp(d, -M, M)]: the row of R that distance d reads.
C10_HOST_DEVICE inline int64_t rel_term_row(int64_t d, int64_t c, int64_t max_distance) {
  const int64_t dc = d < -max_distance ? -max_distance : (d > max_distance ? max_distance : d);
  return c + dc;
}

// ---- Forgetting gate (Lin et al. 2025, FoX §2: softmax(q k^T + D) v) ----------------------
// Per (sequence, head) the caller's log gates l_t = log sigmoid(f_t) <= 0 of the key positions
// t = 0 .. k_len - 1 (key t at k_offset + t), and their inclusive prefix sums c_t = sum_{s<=t}
// l_s, kept in fp64 (a fixed-order sum; fp32 would lose c_q - c_k to cancellation once |c|
// grows with the sequence). Query i (position q_offset + i) is key index t_q = base + i,
// base = q_offset - k_offset (the ops require 0 <= t_q < k_len). The term of key j is
// D_ij = c[t_q] - c[j] = sum_{j < s <= t_q} l_s for j <= t_q, and -inf for j > t_q (the paper's
// F_ij = 0: the term is its own causal mask).
C10_HOST_DEVICE inline int64_t fgate_term_query_index(int64_t base, int64_t i) { return base + i; }

template <typename T>
C10_HOST_DEVICE inline T fgate_term_value(double c_q, double c_k) {
  return static_cast<T>(c_q - c_k);
}

// Gradient: an incoming g at (i, j), j <= t_q, adds +g to dc[t_q] and -g to dc[j]; with
// rows[t] the summed g of the query whose t_q = t (0 if none) and cols[t] the summed g of key
// column t, dc[t] = rows[t] - cols[t], and d l_s = sum_{t >= s} dc[t] (a reverse prefix sum,
// again in a fixed order).
C10_HOST_DEVICE inline double fgate_term_dc(double row_sum, double col_sum) {
  return row_sum - col_sum;
}

}  // namespace detail
}  // namespace posenc
