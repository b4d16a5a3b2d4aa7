#include "blas.h"

#include <ATen/ATen.h>

#include <limits>

// Fortran BLAS entry points. Weak: a torch build whose BLAS does not export them leaves them
// null and gemm falls back to ATen.
extern "C" {
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
            const float* beta, float* c, const int* ldc) __attribute__((weak));
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const double* alpha, const double* a, const int* lda, const double* b,
            const int* ldb, const double* beta, double* c, const int* ldc) __attribute__((weak));
// MKL's thread-local thread count, C interface (returns the previous one; 0 means "the global
// setting"). The lower-case mkl_set_num_threads_local is the Fortran one, taking int*.
int MKL_Set_Num_Threads_Local(int nt) __attribute__((weak));
}

namespace posenc {
namespace cpu {
namespace {

bool fits_int(int64_t v) { return v <= std::numeric_limits<int>::max(); }

// op(X) of a row-major matrix with `rows` x `cols` = op's shape and row stride ld.
template <typename T>
at::Tensor view(const T* p, bool trans, int64_t rows, int64_t cols, int64_t ld) {
  auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  if (!trans) return at::from_blob(const_cast<T*>(p), {rows, cols}, {ld, 1}, opts);
  return at::from_blob(const_cast<T*>(p), {cols, rows}, {ld, 1}, opts).t();
}

template <typename T, typename Blas>
void gemm_impl(Blas* blas, bool ta, bool tb, int64_t m, int64_t n, int64_t k, T alpha,
               const T* a, int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  if (k == 0) {  // BLAS may skip beta scaling here; do it explicitly
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t j = 0; j < n; ++j) c[i * ldc + j] = beta == T(0) ? T(0) : beta * c[i * ldc + j];
    }
    return;
  }
  // Leading dimensions must be >= the row length even for unused strides.
  lda = std::max<int64_t>(lda, ta ? m : k);
  ldb = std::max<int64_t>(ldb, tb ? k : n);
  if (blas != nullptr && fits_int(m) && fits_int(n) && fits_int(k) && fits_int(lda) &&
      fits_int(ldb) && fits_int(ldc)) {
    // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: swap the operands.
    const int im = static_cast<int>(n), in = static_cast<int>(m), ik = static_cast<int>(k);
    const int ila = static_cast<int>(ldb), ilb = static_cast<int>(lda), ilc = static_cast<int>(ldc);
    const char opa = tb ? 'T' : 'N', opb = ta ? 'T' : 'N';
    blas(&opa, &opb, &im, &in, &ik, &alpha, b, &ila, a, &ilb, &beta, c, &ilc);
    return;
  }
  auto cv = at::from_blob(c, {m, n}, {ldc, 1}, at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value));
  auto prod = at::mm(view(a, ta, m, k, lda), view(b, tb, k, n, ldb));
  if (beta == T(0)) {
    cv.copy_(prod.mul_(alpha));
  } else {
    cv.mul_(beta).add_(prod, alpha);
  }
}

}  // namespace

void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
          int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  gemm_impl(sgemm_, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, double alpha, const double* a,
          int64_t lda, const double* b, int64_t ldb, double beta, double* c, int64_t ldc) {
  gemm_impl(dgemm_, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

bool gemm_uses_blas() { return sgemm_ != nullptr && dgemm_ != nullptr; }

SequentialBlas::SequentialBlas() {
  if (MKL_Set_Num_Threads_Local != nullptr) previous_ = MKL_Set_Num_Threads_Local(1);
}

SequentialBlas::~SequentialBlas() {
  if (MKL_Set_Num_Threads_Local != nullptr) MKL_Set_Num_Threads_Local(previous_);
}

}  // namespace cpu
}  // namespace posenc
