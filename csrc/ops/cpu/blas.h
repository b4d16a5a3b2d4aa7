// Row-major GEMM for the CPU kernels: C = alpha * op(A) op(B) + beta * C, op(X) = X or X^T,
// with leading dimensions (row strides), so tiles of strided inputs need no copy.
//
// It calls the BLAS that torch itself links (MKL's sgemm_/dgemm_ in the x86 wheels, the GEMM
// behind torch's own CPU attention) when that library exports it, and at::mm_out on tensor
// views otherwise. Calls run on the calling thread's BLAS settings; inside at::parallel_for
// the BLAS sees a parallel region and stays single-threaded.
#pragma once

#include <cstdint>

namespace posenc {
namespace cpu {

void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
          const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
          int64_t ldc);

void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, double alpha,
          const double* a, int64_t lda, const double* b, int64_t ldb, double beta, double* c,
          int64_t ldc);

// Whether gemm reaches a BLAS library (false: the at::mm_out fallback).
bool gemm_uses_blas();

// Keeps gemm on the calling thread while alive (MKL: MKL_Set_Num_Threads_Local(1); a no-op
// for other BLAS). at::parallel_for runs a lone task inline, outside any parallel region,
// where MKL may split one GEMM over threads and so change its rounding with the thread
// count; kernels that promise thread-count-independent results hold one per task chunk.
class SequentialBlas {
 public:
  SequentialBlas();
  ~SequentialBlas();
  SequentialBlas(const SequentialBlas&) = delete;
  SequentialBlas& operator=(const SequentialBlas&) = delete;

 private:
  int previous_ = 0;
};

}  // namespace cpu
}  // namespace posenc
