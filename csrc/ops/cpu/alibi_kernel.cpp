#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../alibi.h"

namespace posenc {
namespace {

at::Tensor alibi_bias_forward_kernel(const at::Tensor& slopes_in, int64_t q_len, int64_t k_len,
                                     int64_t q_offset, int64_t k_offset, bool causal) {
  detail::check_alibi_bias("alibi_bias", slopes_in, q_len, k_len);
  detail::check_offsets("alibi_bias", q_offset, k_offset);
  const auto slopes = slopes_in.contiguous();
  detail::check_finite("alibi_bias", "slopes", slopes);
  const int64_t heads = slopes.size(0);
  auto out = at::empty({heads, q_len, k_len}, slopes.options());
  if (out.numel() == 0) return out;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, slopes.scalar_type(), "alibi_bias_cpu", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const scalar_t* s = slopes.const_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, heads * q_len, detail::row_grain(k_len), [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const opmath_t slope = static_cast<opmath_t>(s[row / q_len]);
        const int64_t d0 = q_offset + row % q_len - k_offset;  // distance to key 0
        scalar_t* orow = o + row * k_len;
        for (int64_t j = 0; j < k_len; ++j) {
          const int64_t d = detail::alibi_distance(d0, j, causal);
          orow[j] = static_cast<scalar_t>(static_cast<opmath_t>(-d) * slope);  // +0 on the diagonal
        }
      }
    });
  });
  return out;
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
    const scalar_t* g = grad.const_data_ptr<scalar_t>();
    scalar_t* gs = grad_slopes.mutable_data_ptr<scalar_t>();
    // One head per task and a fixed summation order: deterministic.
    at::parallel_for(0, heads, 1, [&](int64_t begin, int64_t end) {
      for (int64_t h = begin; h < end; ++h) {
        double acc = 0.0;
        for (int64_t i = 0; i < q_len; ++i) {
          const int64_t d0 = q_offset + i - k_offset;
          const scalar_t* grow = g + (h * q_len + i) * k_len;
          for (int64_t j = 0; j < k_len; ++j) {
            const int64_t d = detail::alibi_distance(d0, j, causal);
            acc -= static_cast<double>(grow[j]) * static_cast<double>(d);
          }
        }
        gs[h] = static_cast<scalar_t>(acc);
      }
    });
  });
  return grad_slopes;
}

}  // namespace
}  // namespace posenc

TORCH_LIBRARY_IMPL(posenc, CPU, m) {
  m.impl("alibi_bias", &posenc::alibi_bias_forward_kernel);
  m.impl("alibi_bias_backward", &posenc::alibi_bias_backward_kernel);
}
