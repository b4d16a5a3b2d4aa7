// Row helpers of the CPU attention kernels (fp32 and fp64). The fp32 versions are compiled for
// the baseline x86-64 and for x86-64-v3 (AVX2 + FMA) and v4 (AVX-512), picked once at load
// time (GCC target_clones), so one binary runs everywhere and vectorises where it can. Every
// reduction runs in a fixed order for a given length: results do not depend on the thread.
#pragma once

#include <cstdint>

namespace posenc {
namespace cpu {

// x[i] = x[i] * scale + bias[i] (bias may be null).
void scale_add(float* x, const float* bias, int64_t n, float scale);
void scale_add(double* x, const double* bias, int64_t n, double scale);

// max(x[0..n)), -inf for n == 0; NaNs are skipped (they propagate through exp instead).
float max_of(const float* x, int64_t n);
double max_of(const double* x, int64_t n);

// x[i] = exp(x[i] - shift), returns the sum. exp of -inf (masked entries) is exactly 0.
// fp32: a Cody-Waite reduction and a degree-6 polynomial, within 2 ulp of expf.
float exp_shift_sum(float* x, int64_t n, float shift);
double exp_shift_sum(double* x, int64_t n, double shift);

// x[i] = exp(x[i] - shift).
void exp_shift(float* x, int64_t n, float shift);
void exp_shift(double* x, int64_t n, double shift);

// p[i] = p[i] * (dp[i] - d): the softmax gradient dS = P * (dP - rowsum(dO * O)).
void softmax_grad(float* p, const float* dp, int64_t n, float d);
void softmax_grad(double* p, const double* dp, int64_t n, double d);

// acc[i] += x[i], accumulated in fp64.
void accumulate(double* acc, const float* x, int64_t n);
void accumulate(double* acc, const double* x, int64_t n);

float dot(const float* a, const float* b, int64_t n);
double dot(const double* a, const double* b, int64_t n);
float sum_of(const float* x, int64_t n);
double sum_of(const double* x, int64_t n);

// x[i] *= a; y[i] += a * x[i].
void scale(float* x, int64_t n, float a);
void scale(double* x, int64_t n, double a);
void axpy(float* y, float a, const float* x, int64_t n);
void axpy(double* y, double a, const double* x, int64_t n);

}  // namespace cpu
}  // namespace posenc
