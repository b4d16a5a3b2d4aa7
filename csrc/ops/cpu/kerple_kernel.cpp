#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <vector>

#include "../kerple.h"
#include "bias_reduce.h"

namespace posenc {
namespace {

using detail::KerpleKind;

// Distance of diagonal t = j - i + q_len - 1 of the (q_len, k_len) grid. The bias depends on
// (head, distance) only, so each kernel evaluates it once per head and diagonal.
struct Diagonals {
  int64_t q_len, k_len, q_offset, k_offset;
  bool causal;
  int64_t count() const { return q_len + k_len - 1; }
  int64_t distance(int64_t t) const {
    return detail::kerple_distance(t, q_len, q_offset, k_offset, causal);
  }
};

// -r1 * log(1 + r2 d) (Chi et al. 2022, logarithmic kernel) or -r1 * d^r2 (power kernel,
// 0 at d = 0 for every r2). Starting from +0 keeps the diagonal at +0 rather than -0.
template <typename T>
T kerple_value(KerpleKind kind, T r1, T r2, int64_t d) {
  if (d == 0) return T(0);
  const T x = static_cast<T>(d);
  return T(0) - r1 * (kind == KerpleKind::Log ? std::log1p(r2 * x) : std::pow(x, r2));
}

void kerple_bias_fill(const at::Tensor& r1, const at::Tensor& r2, int64_t q_len, int64_t k_len,
                      int64_t q_offset, int64_t k_offset, KerpleKind kind, bool causal,
                      const at::Tensor& out) {
  const int64_t heads = r1.size(0);
  const Diagonals diag{q_len, k_len, q_offset, k_offset, causal};
  const int64_t nd = diag.count();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, r1.scalar_type(), "kerple_bias_cpu", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const scalar_t* p1 = r1.const_data_ptr<scalar_t>();
    const scalar_t* p2 = r2.const_data_ptr<scalar_t>();
    std::vector<scalar_t> lut(heads * nd);  // lut[h * nd + t]: bias of head h on diagonal t
    at::parallel_for(0, heads * nd, 2048, [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k) {
        const int64_t h = k / nd;
        lut[k] = static_cast<scalar_t>(kerple_value<opmath_t>(
            kind, static_cast<opmath_t>(p1[h]), static_cast<opmath_t>(p2[h]), diag.distance(k % nd)));
      }
    });
    detail::fill_bias_from_diagonals(out.mutable_data_ptr<scalar_t>(), lut.data(), heads, q_len,
                                     k_len);
  });
}

at::Tensor kerple_bias_forward_kernel(const at::Tensor& r1_in, const at::Tensor& r2_in,
                                      int64_t q_len, int64_t k_len, int64_t q_offset,
                                      int64_t k_offset, c10::string_view kind_str, bool causal) {
  const char* op = "kerple_bias";
  const auto kind = detail::check_kerple_bias(op, r1_in, r2_in, q_len, k_len, kind_str);
  detail::check_offsets(op, q_offset, k_offset);
  const auto r1 = r1_in.contiguous();
  const auto r2 = r2_in.contiguous();
  detail::check_kerple_values(op, r1, r2, kind);
  auto out = detail::empty_output("kerple_bias", q_len > k_len ? "q_len" : "k_len",
                                  {r1.size(0), q_len, k_len}, r1.options());
  if (out.numel() > 0) kerple_bias_fill(r1, r2, q_len, k_len, q_offset, k_offset, kind, causal, out);
  return out;
}

void kerple_bias_out_kernel(const at::Tensor& r1_in, const at::Tensor& r2_in,
                            int64_t q_len, int64_t k_len, int64_t q_offset,
                            int64_t k_offset, c10::string_view kind_str, bool causal,
                            at::Tensor& out) {
  const char* op = "kerple_bias";
  const auto kind = detail::check_kerple_bias(op, r1_in, r2_in, q_len, k_len, kind_str);
  detail::check_offsets(op, q_offset, k_offset);
  detail::check_bias_out(op, out, r1_in.size(0), q_len, k_len, r1_in, "r1");
  const auto r1 = r1_in.contiguous();
  const auto r2 = r2_in.contiguous();
  detail::check_kerple_values(op, r1, r2, kind);
  if (out.numel() > 0) kerple_bias_fill(r1, r2, q_len, k_len, q_offset, k_offset, kind, causal, out);
}

std::tuple<at::Tensor, at::Tensor> kerple_bias_backward_kernel(
    const at::Tensor& grad_in, const at::Tensor& r1_in, const at::Tensor& r2_in, int64_t q_len,
    int64_t k_len, int64_t q_offset, int64_t k_offset, c10::string_view kind_str, bool causal) {
  const char* op = "kerple_bias_backward";
  const auto kind =
      detail::check_kerple_bias_backward(op, grad_in, r1_in, r2_in, q_len, k_len, kind_str);
  detail::check_offsets(op, q_offset, k_offset);
  const auto r1 = r1_in.contiguous();
  const auto r2 = r2_in.contiguous();
  detail::check_kerple_values(op, r1, r2, kind);
  const int64_t heads = r1.size(0);
  auto grad_r1 = at::zeros({heads}, r1.options());
  auto grad_r2 = at::zeros({heads}, r1.options());
  if (heads == 0 || q_len == 0 || k_len == 0) return {grad_r1, grad_r2};
  const auto grad = grad_in.to(r1.scalar_type()).contiguous();
  const Diagonals diag{q_len, k_len, q_offset, k_offset, causal};
  const int64_t nd = diag.count();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, r1.scalar_type(), "kerple_bias_backward_cpu", [&] {
    const scalar_t* p1 = r1.const_data_ptr<scalar_t>();
    const scalar_t* p2 = r2.const_data_ptr<scalar_t>();
    // The derivatives per (head, diagonal), fp64, computed once: w1 = df/dr1, w2 = df/dr2.
    std::vector<double> w1(heads * nd), w2(heads * nd);
    at::parallel_for(0, heads * nd, 2048, [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k) {
        const int64_t h = k / nd;
        const int64_t di = diag.distance(k % nd);
        if (di == 0) {  // value 0 for every r1, r2: both derivatives are 0
          w1[k] = w2[k] = 0.0;
          continue;
        }
        const double a = static_cast<double>(p1[h]);
        const double b = static_cast<double>(p2[h]);
        const double d = static_cast<double>(di);
        if (kind == KerpleKind::Log) {
          // f = -a log(1 + b d): df/da = -log(1 + b d), df/db = -a d / (1 + b d)
          w1[k] = -std::log1p(b * d);
          w2[k] = -a * d / (1.0 + b * d);
        } else {
          // f = -a d^b: df/da = -d^b, df/db = -a d^b log d
          const double p = std::pow(d, b);
          w1[k] = -p;
          w2[k] = -a * p * std::log(d);
        }
      }
    });
    const auto total = detail::reduce_bias_gradient(
        grad.const_data_ptr<scalar_t>(), heads, q_len, k_len, 2,
        [&](int64_t h, int64_t t_lo, const double* ds, int64_t n, double* partial) {
          const double* a = w1.data() + h * nd + t_lo;
          const double* b = w2.data() + h * nd + t_lo;
          double acc1 = 0.0, acc2 = 0.0;
          for (int64_t u = 0; u < n; ++u) {
            acc1 += ds[u] * a[u];
            acc2 += ds[u] * b[u];
          }
          partial[0] += acc1;
          partial[1] += acc2;
        });
    scalar_t* g1 = grad_r1.mutable_data_ptr<scalar_t>();
    scalar_t* g2 = grad_r2.mutable_data_ptr<scalar_t>();
    for (int64_t h = 0; h < heads; ++h) {
      g1[h] = static_cast<scalar_t>(total[2 * h]);
      g2[h] = static_cast<scalar_t>(total[2 * h + 1]);
    }
  });
  return {grad_r1, grad_r2};
}

}  // namespace
}  // namespace posenc

TORCH_LIBRARY_IMPL(posenc, CPU, m) {
  m.impl("kerple_bias", &posenc::kerple_bias_forward_kernel);
  m.impl("kerple_bias.out", &posenc::kerple_bias_out_kernel);
  m.impl("kerple_bias_backward", &posenc::kerple_bias_backward_kernel);
}
