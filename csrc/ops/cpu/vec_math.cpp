#include "vec_math.h"

#include <bit>
#include <cmath>
#include <limits>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define POSENC_VEC_CLONES __attribute__((target_clones("default", "arch=x86-64-v3", "arch=x86-64-v4")))
#else
#define POSENC_VEC_CLONES
#endif

namespace posenc {
namespace cpu {
namespace {

// Lanes of the partial results of a reduction: enough for one AVX-512 register of fp32, and
// the order in which they combine is fixed.
constexpr int64_t kLanes = 16;

// exp(v) in fp32 (Cephes' expf scheme): v = k ln2 + r with |r| <= ln2 / 2, exp(r) by a
// polynomial, 2^k through the exponent bits. Inputs below -87.3 (exp < 2^-126, denormal)
// give 0, so a masked -inf is exactly 0; NaN stays NaN.
inline float exp_f32(float v) {
  const float x = v < -104.f ? -104.f : (v > 88.7f ? 88.7f : v);
  const float k = (x * 1.44269504088896341f + 12582912.f) - 12582912.f;  // round to nearest
  float r = x - k * 0.693359375f;
  r = r + k * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t e = static_cast<int32_t>(k) + 127;
  const float two_k = std::bit_cast<float>(static_cast<uint32_t>(e) << 23);
  return v < -87.3f ? 0.f : p * two_k;
}

// max that keeps a NaN (a NaN score must reach the output, not vanish from the max).
template <typename T>
inline T nan_max(T acc, T x) {
  return (x > acc || x != x) ? x : acc;
}

}  // namespace

POSENC_VEC_CLONES void scale_add(float* x, const float* bias, int64_t n, float scale) {
  if (bias == nullptr) {
    for (int64_t i = 0; i < n; ++i) x[i] = x[i] * scale;
  } else {
    for (int64_t i = 0; i < n; ++i) x[i] = x[i] * scale + bias[i];
  }
}

void scale_add(double* x, const double* bias, int64_t n, double scale) {
  for (int64_t i = 0; i < n; ++i) x[i] = x[i] * scale + (bias ? bias[i] : 0.0);
}

POSENC_VEC_CLONES float max_of(const float* x, int64_t n) {
  float acc[kLanes];
  for (int64_t l = 0; l < kLanes; ++l) acc[l] = -std::numeric_limits<float>::infinity();
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int64_t l = 0; l < kLanes; ++l) acc[l] = nan_max(acc[l], x[i + l]);
  }
  float m = -std::numeric_limits<float>::infinity();
  for (; i < n; ++i) m = nan_max(m, x[i]);
  for (int64_t l = 0; l < kLanes; ++l) m = nan_max(m, acc[l]);
  return m;
}

double max_of(const double* x, int64_t n) {
  double m = -std::numeric_limits<double>::infinity();
  for (int64_t i = 0; i < n; ++i) m = nan_max(m, x[i]);
  return m;
}

POSENC_VEC_CLONES float exp_shift_sum(float* x, int64_t n, float shift) {
  float acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int64_t l = 0; l < kLanes; ++l) {
      const float y = exp_f32(x[i + l] - shift);
      x[i + l] = y;
      acc[l] += y;
    }
  }
  float s = 0.f;
  for (; i < n; ++i) {
    const float y = exp_f32(x[i] - shift);
    x[i] = y;
    s += y;
  }
  for (int64_t l = 0; l < kLanes; ++l) s += acc[l];
  return s;
}

double exp_shift_sum(double* x, int64_t n, double shift) {
  double s = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] - shift);
    s += x[i];
  }
  return s;
}

POSENC_VEC_CLONES void exp_shift(float* x, int64_t n, float shift) {
  for (int64_t i = 0; i < n; ++i) x[i] = exp_f32(x[i] - shift);
}

void exp_shift(double* x, int64_t n, double shift) {
  for (int64_t i = 0; i < n; ++i) x[i] = std::exp(x[i] - shift);
}

POSENC_VEC_CLONES void softmax_grad(float* p, const float* dp, int64_t n, float d) {
  for (int64_t i = 0; i < n; ++i) p[i] = p[i] * (dp[i] - d);
}

void softmax_grad(double* p, const double* dp, int64_t n, double d) {
  for (int64_t i = 0; i < n; ++i) p[i] = p[i] * (dp[i] - d);
}

POSENC_VEC_CLONES void accumulate(double* acc, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) acc[i] += static_cast<double>(x[i]);
}

void accumulate(double* acc, const double* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) acc[i] += x[i];
}

POSENC_VEC_CLONES float dot(const float* a, const float* b, int64_t n) {
  float acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int64_t l = 0; l < kLanes; ++l) acc[l] += a[i + l] * b[i + l];
  }
  float s = 0.f;
  for (; i < n; ++i) s += a[i] * b[i];
  for (int64_t l = 0; l < kLanes; ++l) s += acc[l];
  return s;
}

double dot(const double* a, const double* b, int64_t n) {
  double s = 0.0;
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

POSENC_VEC_CLONES float sum_of(const float* x, int64_t n) {
  float acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int64_t l = 0; l < kLanes; ++l) acc[l] += x[i + l];
  }
  float s = 0.f;
  for (; i < n; ++i) s += x[i];
  for (int64_t l = 0; l < kLanes; ++l) s += acc[l];
  return s;
}

double sum_of(const double* x, int64_t n) {
  double s = 0.0;
  for (int64_t i = 0; i < n; ++i) s += x[i];
  return s;
}

POSENC_VEC_CLONES void scale(float* x, int64_t n, float a) {
  for (int64_t i = 0; i < n; ++i) x[i] *= a;
}

void scale(double* x, int64_t n, double a) {
  for (int64_t i = 0; i < n; ++i) x[i] *= a;
}

POSENC_VEC_CLONES void axpy(float* y, float a, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

void axpy(double* y, double a, const double* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

}  // namespace cpu
}  // namespace posenc
