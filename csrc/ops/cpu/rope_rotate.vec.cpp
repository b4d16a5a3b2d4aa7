// Compiled once per CPU capability (see CMakeLists.txt), with -ffp-contract=off: every output
// element is the same two products and one sum, each rounded once, in a vector lane or in the
// scalar tail, so results do not depend on the capability, the alignment or where a row
// starts relative to a vector.
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <vector>

#include "rope_rotate.h"

namespace posenc {
namespace cpu {
namespace CPU_CAPABILITY {
namespace {

using at::vec::Vectorized;

// N elements of T as two opmath vectors: fp32/fp64 directly, fp16/bf16 widened to fp32 (and
// rounded to nearest even on the way back, as a scalar static_cast does). The _n forms move
// the first 0 < n < N elements (lanes past n load as 0 and are not stored): a row's tail
// takes the same vector arithmetic as its body.
template <typename T, typename Enable = void>
struct Io {
  using V = Vectorized<T>;
  static constexpr int64_t W = V::size();
  static constexpr int64_t N = 2 * W;
  static void load(const T* p, V& a, V& b) {
    a = V::loadu(p);
    b = V::loadu(p + W);
  }
  static void load_n(const T* p, int64_t n, V& a, V& b) {
    a = V::loadu(p, std::min(n, W));
    b = n > W ? V::loadu(p + W, n - W) : V(T(0));
  }
  static void store(T* p, const V& a, const V& b) {
    a.store(p);
    b.store(p + W);
  }
  static void store_n(T* p, int64_t n, const V& a, const V& b) {
    a.store(p, std::min(n, W));
    if (n > W) b.store(p + W, n - W);
  }
};

template <typename T>
struct Io<T, std::enable_if_t<std::is_same_v<T, c10::Half> || std::is_same_v<T, c10::BFloat16>>> {
  using V = Vectorized<float>;
  static constexpr int64_t W = V::size();
  static constexpr int64_t N = Vectorized<T>::size();
  static_assert(N == 2 * W);
  static void load(const T* p, V& a, V& b) {
    std::tie(a, b) = at::vec::convert_to_float<T>(Vectorized<T>::loadu(p));
  }
  static void load_n(const T* p, int64_t n, V& a, V& b) {
    std::tie(a, b) = at::vec::convert_to_float<T>(Vectorized<T>::loadu(p, n));
  }
  static void store(T* p, const V& a, const V& b) {
    at::vec::convert_from_float<T>(a, b).store(p);
  }
  static void store_n(T* p, int64_t n, const V& a, const V& b) {
    at::vec::convert_from_float<T>(a, b).store(p, n);
  }
};

// A row with element stride xd, made contiguous: rows whose inner dim is contiguous are read in
// place; others (rare: a transposed head dim) are first copied into buf.
template <typename T>
const T* contiguous_row(const T* x, int64_t xd, int64_t n, std::vector<T>& buf) {
  if (xd == 1) return x;
  buf.resize(static_cast<size_t>(n));
  for (int64_t d = 0; d < n; ++d) buf[d] = x[d * xd];
  return buf.data();
}

template <typename T>
void copy_tail(const T* x, T* out, int64_t from, int64_t D) {
  if (from < D) std::memcpy(out + from, x + from, static_cast<size_t>(D - from) * sizeof(T));
}

// One contiguous row by one half-width table row (cs = cos, sn = sin).
template <typename T, typename O>
void rope_row(const T* x, T* out, const O* cs, const O* sn, int64_t half, int64_t D,
              bool interleaved) {
  using IO = Io<T>;
  using TO = Io<O>;  // the opmath table
  using V = typename IO::V;
  constexpr int64_t N = IO::N;
  constexpr int64_t W = IO::W;
  static_assert(std::is_same_v<typename V::value_type, O>);
  int64_t k = 0;
  if (!interleaved) {
    for (; k + N <= half; k += N) {
      V u0, u1, v0, v1, c0, c1, s0, s1;
      IO::load(x + k, u0, u1);
      IO::load(x + half + k, v0, v1);
      TO::load(cs + k, c0, c1);
      TO::load(sn + k, s0, s1);
      IO::store(out + k, u0 * c0 - v0 * s0, u1 * c1 - v1 * s1);
      IO::store(out + half + k, v0 * c0 + u0 * s0, v1 * c1 + u1 * s1);
    }
    if (const int64_t m = half - k; m > 0) {
      V u0, u1, v0, v1, c0, c1, s0, s1;
      IO::load_n(x + k, m, u0, u1);
      IO::load_n(x + half + k, m, v0, v1);
      TO::load_n(cs + k, m, c0, c1);
      TO::load_n(sn + k, m, s0, s1);
      IO::store_n(out + k, m, u0 * c0 - v0 * s0, u1 * c1 - v1 * s1);
      IO::store_n(out + half + k, m, v0 * c0 + u0 * s0, v1 * c1 + u1 * s1);
    }
  } else {
    for (; k < half; k += W) {  // W pairs = N elements a step
      const int64_t m = std::min(W, half - k);
      V a, b, c, s, unused;
      if (m == W) {
        IO::load(x + 2 * k, a, b);
        c = V::loadu(cs + k);
        s = V::loadu(sn + k);
      } else {
        IO::load_n(x + 2 * k, 2 * m, a, b);
        TO::load_n(cs + k, m, c, unused);
        TO::load_n(sn + k, m, s, unused);
      }
      const auto [u, v] = at::vec::deinterleave2(a, b);
      const auto [o0, o1] = at::vec::interleave2(u * c - v * s, v * c + u * s);
      if (m == W) {
        IO::store(out + 2 * k, o0, o1);
      } else {
        IO::store_n(out + 2 * k, 2 * m, o0, o1);
      }
    }
  }
  copy_tail(x, out, 2 * half, D);
}

// One contiguous row by contiguous full-width cos/sin rows (c1, s1 at i1; c2, s2 at i2):
//   forward   o1 = u c1 - v s1,  o2 = v c2 + u s2
//   transpose o1 = u c1 + v s2,  o2 = v c2 - u s1
template <typename T>
void table_row(const T* x, T* out, const T* c, const T* s, int64_t half, int64_t D,
               bool interleaved, bool transpose) {
  using IO = Io<T>;
  using V = typename IO::V;
  constexpr int64_t N = IO::N;
  constexpr int64_t W = IO::W;
  auto rot = [transpose](const V& u, const V& v, const V& c1, const V& c2, const V& s1,
                         const V& s2, V& o1, V& o2) {
    if (transpose) {
      o1 = u * c1 + v * s2;
      o2 = v * c2 - u * s1;
    } else {
      o1 = u * c1 - v * s1;
      o2 = v * c2 + u * s2;
    }
  };
  int64_t k = 0;
  if (!interleaved) {
    for (; k < half; k += N) {
      const int64_t m = std::min(N, half - k);
      V u[2], v[2], c1[2], c2[2], s1[2], s2[2], o1[2], o2[2];
      if (m == N) {
        IO::load(x + k, u[0], u[1]);
        IO::load(x + half + k, v[0], v[1]);
        IO::load(c + k, c1[0], c1[1]);
        IO::load(c + half + k, c2[0], c2[1]);
        IO::load(s + k, s1[0], s1[1]);
        IO::load(s + half + k, s2[0], s2[1]);
      } else {
        IO::load_n(x + k, m, u[0], u[1]);
        IO::load_n(x + half + k, m, v[0], v[1]);
        IO::load_n(c + k, m, c1[0], c1[1]);
        IO::load_n(c + half + k, m, c2[0], c2[1]);
        IO::load_n(s + k, m, s1[0], s1[1]);
        IO::load_n(s + half + k, m, s2[0], s2[1]);
      }
      for (int j = 0; j < 2; ++j) rot(u[j], v[j], c1[j], c2[j], s1[j], s2[j], o1[j], o2[j]);
      if (m == N) {
        IO::store(out + k, o1[0], o1[1]);
        IO::store(out + half + k, o2[0], o2[1]);
      } else {
        IO::store_n(out + k, m, o1[0], o1[1]);
        IO::store_n(out + half + k, m, o2[0], o2[1]);
      }
    }
  } else {
    for (; k < half; k += W) {
      const int64_t m = std::min(W, half - k);
      auto load = [m](const T* p, V& a, V& b) {
        if (m == W) {
          IO::load(p, a, b);
        } else {
          IO::load_n(p, 2 * m, a, b);
        }
      };
      V a, b;
      load(x + 2 * k, a, b);
      const auto [u, v] = at::vec::deinterleave2(a, b);
      load(c + 2 * k, a, b);
      const auto [c1, c2] = at::vec::deinterleave2(a, b);
      load(s + 2 * k, a, b);
      const auto [s1, s2] = at::vec::deinterleave2(a, b);
      V o1, o2;
      rot(u, v, c1, c2, s1, s2, o1, o2);
      const auto [r0, r1] = at::vec::interleave2(o1, o2);
      if (m == W) {
        IO::store(out + 2 * k, r0, r1);
      } else {
        IO::store_n(out + 2 * k, 2 * m, r0, r1);
      }
    }
  }
  copy_tail(x, out, 2 * half, D);
}

// In fp64 a product of two fp32 (or narrower) values is exact, so only the sums round; the
// half-split contiguous case is a loop the compiler vectorises in each capability's copy.
template <typename T>
void grad_accumulate(const T* __restrict x, int64_t xd, const T* __restrict g, int64_t gd,
                     int64_t half, bool interleaved, double* __restrict acc_c,
                     double* __restrict acc_s) {
  if (!interleaved && xd == 1 && gd == 1) {
    const T* __restrict x2 = x + half;
    const T* __restrict g2 = g + half;
    double* __restrict c2 = acc_c + half;
    double* __restrict s2 = acc_s + half;
    for (int64_t k = 0; k < half; ++k) {
      const double u = static_cast<double>(x[k]), v = static_cast<double>(x2[k]);
      const double h1 = static_cast<double>(g[k]), h2 = static_cast<double>(g2[k]);
      acc_c[k] += h1 * u;
      c2[k] += h2 * v;
      acc_s[k] -= h1 * v;
      s2[k] += h2 * u;
    }
    return;
  }
  for (int64_t k = 0; k < half; ++k) {
    const int64_t i1 = interleaved ? 2 * k : k;
    const int64_t i2 = interleaved ? 2 * k + 1 : k + half;
    const double u = static_cast<double>(x[i1 * xd]), v = static_cast<double>(x[i2 * xd]);
    const double h1 = static_cast<double>(g[i1 * gd]), h2 = static_cast<double>(g[i2 * gd]);
    acc_c[i1] += h1 * u;
    acc_c[i2] += h2 * v;
    acc_s[i1] -= h1 * v;
    acc_s[i2] += h2 * u;
  }
}

// cos/sin for |a| below this take the vector path: n = round(a * 2 / pi) < 2^20, so n times
// the 33-bit parts of pi/2 are exact and the reduced angle is accurate to ~1e-16. Larger angles
// (positions beyond ~1e6 at the highest frequency) go to the C library.
constexpr double kMaxFastAngle = 1.0e6;

// r = a - q pi/2 in [-pi/4, pi/4] (fdlibm's three-part split of pi/2), sin and cos of r by
// fdlibm's minimax polynomials, then the quadrant q mod 4 picks and negates them:
// (sin, cos)(r + q pi/2) = (s, c), (c, -s), (-s, -c), (-c, s). Selections and negations are
// exact, and branch-free (quadrants of consecutive frequencies are random).
void sin_cos(const double* a, int64_t n, double* so, double* co) {
  using V = Vectorized<double>;
  constexpr int64_t W = V::size();
  const V inv_pio2(6.36619772367581382433e-01), shifter(0x1.8p52);
  const V p1(1.57079632673412561417e+00), p2(6.07710050630396597660e-11),
      p3(2.02226624871116645580e-21);
  const V S1(-1.66666666666666324348e-01), S2(8.33333333332248946124e-03),
      S3(-1.98412698298579493134e-04), S4(2.75573137070700676789e-06),
      S5(-2.50507602534068634195e-08), S6(1.58969099521155010221e-10);
  const V C1(4.16666666666666019037e-02), C2(-1.38888888888741095749e-03),
      C3(2.48015872894767294178e-05), C4(-2.75573143513906633035e-07),
      C5(2.08757232129817482790e-09), C6(-1.13596475577881948265e-11);
  const V one(1.0), half(0.5), quarter(0.25), three_eighths(0.375), four(4.0), two(2.0);
  for (int64_t i = 0; i < n; i += W) {
    const int64_t m = std::min(W, n - i);
    const V x = m == W ? V::loadu(a + i) : V::loadu(a + i, m);
    const V q = (x * inv_pio2 + shifter) - shifter;  // round to nearest integer
    const V r = ((x - q * p1) - q * p2) - q * p3;
    const V z = r * r;
    const V ps = S1 + z * (S2 + z * (S3 + z * (S4 + z * (S5 + z * S6))));
    const V pc = C1 + z * (C2 + z * (C3 + z * (C4 + z * (C5 + z * C6))));
    const V sr = r + (r * z) * ps;
    const V cr = (one - half * z) + (z * z) * pc;
    // q mod 4 (q an integer, |q| < 2^50): floor(q / 4) is round(q / 4 - 3/8)
    const V fl = ((q * quarter - three_eighths) + shifter) - shifter;
    const V qm = q - four * fl;  // in {0, 1, 2, 3}
    const V odd = (qm == one) | (qm == V(3.0));
    const V sv = V::blendv(sr, cr, odd);
    const V cv = V::blendv(cr, sr, odd);
    const V sn = V::blendv(sv, sv.neg(), qm >= two);
    const V cn = V::blendv(cv, cv.neg(), (qm == one) | (qm == two));
    if (m == W) {
      sn.store(so + i);
      cn.store(co + i);
    } else {
      sn.store(so + i, m);
      cn.store(co + i, m);
    }
  }
}

}  // namespace

void rope_cos_sin_f32(float p, const float* freq, int64_t n, float* c, float* s) {
  constexpr int64_t kChunk = 64;
  float af[kChunk];
  double a[kChunk], so[kChunk], co[kChunk];
  using VF = Vectorized<float>;
  for (int64_t k0 = 0; k0 < n; k0 += kChunk) {
    const int64_t m = std::min(kChunk, n - k0);
    int64_t j = 0;
    for (; j + VF::size() <= m; j += VF::size()) {
      (VF(p) * VF::loadu(freq + k0 + j)).store(af + j);  // the fp32 angle, one rounding
    }
    for (; j < m; ++j) af[j] = p * freq[k0 + j];
    float big = 0.0f;
    for (j = 0; j < m; ++j) {
      big = std::max(big, std::fabs(af[j]));
      a[j] = static_cast<double>(af[j]);  // exact
    }
    sin_cos(a, m, so, co);
    for (j = 0; j < m; ++j) {
      c[k0 + j] = static_cast<float>(co[j]);  // the one rounding to fp32
      s[k0 + j] = static_cast<float>(so[j]);
    }
    if (!(big < kMaxFastAngle)) {
      for (j = 0; j < m; ++j) {
        if (!(std::fabs(af[j]) < kMaxFastAngle)) {
          c[k0 + j] = std::cos(af[j]);
          s[k0 + j] = std::sin(af[j]);
        }
      }
    }
  }
}

#define POSENC_ROPE_ROTATE_DEFINE(T, O)                                                         \
  void rope_rotate(const T* x, int64_t xs, int64_t xd, T* out, int64_t os, const O* table,      \
                   int64_t ts, int64_t rows, int64_t half, int64_t D, bool interleaved) {       \
    std::vector<T> buf;                                                                         \
    for (int64_t r = 0; r < rows; ++r) {                                                        \
      const O* t = table + r * ts;                                                              \
      rope_row<T, O>(contiguous_row(x + r * xs, xd, D, buf), out + r * os, t, t + half, half,   \
                     D, interleaved);                                                           \
    }                                                                                           \
  }                                                                                             \
  void rope_rotate_table(const T* x, int64_t xs, int64_t xd, T* out, int64_t os, const T* cos,  \
                         int64_t cs, int64_t cd, const T* sin, int64_t ss, int64_t sd,          \
                         int64_t rows, int64_t half, int64_t D, bool interleaved,               \
                         bool transpose) {                                                      \
    std::vector<T> xb, cb, sb;                                                                  \
    for (int64_t r = 0; r < rows; ++r) {                                                        \
      table_row<T>(contiguous_row(x + r * xs, xd, D, xb), out + r * os,                         \
                   contiguous_row(cos + r * cs, cd, 2 * half, cb),                              \
                   contiguous_row(sin + r * ss, sd, 2 * half, sb), half, D, interleaved,        \
                   transpose);                                                                  \
    }                                                                                           \
  }                                                                                             \
  void rope_table_grad_accumulate(const T* x, int64_t xd, const T* g, int64_t gd, int64_t half, \
                                  bool interleaved, double* acc_c, double* acc_s) {             \
    grad_accumulate<T>(x, xd, g, gd, half, interleaved, acc_c, acc_s);                          \
  }

POSENC_ROPE_ROTATE_DEFINE(float, float)
POSENC_ROPE_ROTATE_DEFINE(double, double)
POSENC_ROPE_ROTATE_DEFINE(c10::Half, float)
POSENC_ROPE_ROTATE_DEFINE(c10::BFloat16, float)
#undef POSENC_ROPE_ROTATE_DEFINE

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace posenc
