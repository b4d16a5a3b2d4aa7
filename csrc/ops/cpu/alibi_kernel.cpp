#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "../alibi.h"
#include "bias_reduce.h"

namespace posenc {
namespace {

// Distance q_pos - k_pos on diagonal t = j - i + q_len - 1; |.| for the symmetric bias.
inline int64_t diagonal_distance(int64_t t, int64_t q_len, int64_t q_offset, int64_t k_offset,
                                 bool causal) {
  return detail::alibi_distance(q_offset - k_offset + (q_len - 1) - t, 0, causal);
}

void alibi_bias_fill(const at::Tensor& slopes, int64_t q_len, int64_t k_len, int64_t q_offset,
                     int64_t k_offset, bool causal, const at::Tensor& out) {
  const int64_t heads = slopes.size(0);
  const int64_t nd = q_len + k_len - 1;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, slopes.scalar_type(), "alibi_bias_cpu", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const scalar_t* s = slopes.const_data_ptr<scalar_t>();
    std::vector<scalar_t> lut(heads * nd);
    for (int64_t h = 0; h < heads; ++h) {
      const auto slope = static_cast<opmath_t>(s[h]);
      for (int64_t t = 0; t < nd; ++t) {
        const int64_t d = diagonal_distance(t, q_len, q_offset, k_offset, causal);
        lut[h * nd + t] = static_cast<scalar_t>(static_cast<opmath_t>(-d) * slope);  // +0 at d = 0
      }
    }
    detail::fill_bias_from_diagonals(out.mutable_data_ptr<scalar_t>(), lut.data(), heads, q_len,
                                     k_len);
  });
}

at::Tensor alibi_bias_forward_kernel(const at::Tensor& slopes_in, int64_t q_len, int64_t k_len,
                                     int64_t q_offset, int64_t k_offset, bool causal) {
  detail::check_alibi_bias("alibi_bias", slopes_in, q_len, k_len);
  detail::check_offsets("alibi_bias", q_offset, k_offset);
  const auto slopes = slopes_in.contiguous();
  detail::check_finite("alibi_bias", "slopes", slopes);
  auto out = detail::empty_output("alibi_bias", q_len > k_len ? "q_len" : "k_len",
                                  {slopes.size(0), q_len, k_len}, slopes.options());
  if (out.numel() > 0) alibi_bias_fill(slopes, q_len, k_len, q_offset, k_offset, causal, out);
  return out;
}

void alibi_bias_out_kernel(const at::Tensor& slopes_in, int64_t q_len, int64_t k_len,
                           int64_t q_offset, int64_t k_offset, bool causal,
                           at::Tensor& out) {
  detail::check_alibi_bias("alibi_bias", slopes_in, q_len, k_len);
  detail::check_offsets("alibi_bias", q_offset, k_offset);
  detail::check_bias_out("alibi_bias", out, slopes_in.size(0), q_len, k_len, slopes_in, "slopes");
  const auto slopes = slopes_in.contiguous();
  detail::check_finite("alibi_bias", "slopes", slopes);
  if (out.numel() > 0) alibi_bias_fill(slopes, q_len, k_len, q_offset, k_offset, causal, out);
}

at::Tensor alibi_bias_backward_kernel(const at::Tensor& grad_in, const at::Tensor& slopes,
                                      int64_t q_len, int64_t k_len, int64_t q_offset,
                                      int64_t k_offset, bool causal) {
  detail::check_alibi_bias_backward("alibi_bias_backward", grad_in, slopes, q_len, k_len);
  detail::check_offsets("alibi_bias_backward", q_offset, k_offset);
  const int64_t heads = slopes.size(0);
  auto grad_slopes = at::zeros({heads}, slopes.options());
  if (heads == 0 || q_len == 0 || k_len == 0) return grad_slopes;
  const auto grad = grad_in.to(slopes.scalar_type()).contiguous();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, slopes.scalar_type(), "alibi_bias_backward_cpu", [&] {
    // d bias / d slope = -d on every diagonal.
    const auto total = detail::reduce_bias_gradient(
        grad.const_data_ptr<scalar_t>(), heads, q_len, k_len, 1,
        [&](int64_t, int64_t t_lo, const double* diag, int64_t n, double* partial) {
          double acc = 0.0;
          for (int64_t u = 0; u < n; ++u) {
            acc -= diag[u] * static_cast<double>(
                                 diagonal_distance(t_lo + u, q_len, q_offset, k_offset, causal));
          }
          partial[0] += acc;
        });
    scalar_t* gs = grad_slopes.mutable_data_ptr<scalar_t>();
    for (int64_t h = 0; h < heads; ++h) gs[h] = static_cast<scalar_t>(total[h]);
  });
  return grad_slopes;
}

}  // namespace
}  // namespace posenc

TORCH_LIBRARY_IMPL(posenc, CPU, m) {
  m.impl("alibi_bias", &posenc::alibi_bias_forward_kernel);
  m.impl("alibi_bias.out", &posenc::alibi_bias_out_kernel);
  m.impl("alibi_bias_backward", &posenc::alibi_bias_backward_kernel);
}
