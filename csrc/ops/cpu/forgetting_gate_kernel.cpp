// Forgetting-gate bias (Lin et al. 2025) on the CPU. Forward: the fp64 prefix sums c of each
// (batch, head) row of log gates, then row i of the output is c[t_i] - c[j] for j <= t_i and
// -inf after (position_terms.h). Backward: one task per (batch, head) sums the incoming
// gradient along its rows and columns (rows in order, 8 fixed partial sums per row), forms
// dc = rows - cols and takes the reverse prefix sum: deterministic whatever the thread count.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "../forgetting_gate.h"
#include "../position_terms.h"

namespace posenc {
namespace {

constexpr const char* kOp = detail::kFgateOp;
constexpr const char* kBwdOp = detail::kFgateBackwardOp;

// c[r * len + t] = sum_{s <= t} x[r, s] in fp64, x (rows, len) contiguous.
template <typename scalar_t>
std::vector<double> prefix_sums(const scalar_t* x, int64_t rows, int64_t len) {
  std::vector<double> c(static_cast<size_t>(rows * len));
  at::parallel_for(0, rows, detail::row_grain(len), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      double acc = 0.0;
      for (int64_t t = 0; t < len; ++t) {
        acc += static_cast<double>(x[r * len + t]);
        c[r * len + t] = acc;
      }
    }
  });
  return c;
}

at::Tensor forgetting_gate_bias_cpu(const at::Tensor& log_fgate_in, int64_t q_len,
                                    int64_t q_offset, int64_t k_offset) {
  detail::check_forgetting_gate_bias(kOp, log_fgate_in, q_len, q_offset, k_offset);
  const auto log_fgate = log_fgate_in.contiguous();
  detail::check_log_fgate_values(kOp, "log_fgate", log_fgate);
  const int64_t B = log_fgate.size(0), H = log_fgate.size(1), K = log_fgate.size(2);
  auto out = detail::empty_output(kOp, "log_fgate", {B, H, q_len, K}, log_fgate.options());
  if (out.numel() == 0) return out;
  const int64_t base = q_offset - k_offset;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, log_fgate.scalar_type(), "forgetting_gate_bias_cpu", [&] {
    const auto c = prefix_sums(log_fgate.const_data_ptr<scalar_t>(), B * H, K);
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    const auto ninf = static_cast<scalar_t>(-std::numeric_limits<float>::infinity());
    at::parallel_for(0, B * H * q_len, detail::row_grain(K), [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        const int64_t bh = r / q_len, tq = detail::fgate_term_query_index(base, r % q_len);
        const double* cr = c.data() + bh * K;
        const double cq = cr[tq];
        scalar_t* orow = o + r * K;
        for (int64_t j = 0; j <= tq; ++j) orow[j] = detail::fgate_term_value<scalar_t>(cq, cr[j]);
        for (int64_t j = tq + 1; j < K; ++j) orow[j] = ninf;
      }
    });
  });
  return out;
}

at::Tensor forgetting_gate_bias_backward_cpu(const at::Tensor& grad_in,
                                             const at::Tensor& log_fgate, int64_t q_len,
                                             int64_t q_offset, int64_t k_offset) {
  detail::check_forgetting_gate_bias_backward(kBwdOp, grad_in, log_fgate, q_len, q_offset,
                                              k_offset);
  const int64_t B = log_fgate.size(0), H = log_fgate.size(1), K = log_fgate.size(2);
  auto grad_l = at::zeros({B, H, K}, log_fgate.options());
  if (grad_l.numel() == 0 || q_len == 0) return grad_l;
  const auto grad = grad_in.to(log_fgate.scalar_type()).contiguous();
  const int64_t base = q_offset - k_offset;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "forgetting_gate_bias_backward_cpu", [&] {
    const scalar_t* g = grad.const_data_ptr<scalar_t>();
    scalar_t* gl = grad_l.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, B * H, 1, [&](int64_t b, int64_t e) {
      std::vector<double> cols(K), dc(K);
      for (int64_t bh = b; bh < e; ++bh) {
        std::fill(cols.begin(), cols.end(), 0.0);
        std::fill(dc.begin(), dc.end(), 0.0);
        for (int64_t i = 0; i < q_len; ++i) {
          const int64_t tq = detail::fgate_term_query_index(base, i);
          const scalar_t* grow = g + (bh * q_len + i) * K;
          double part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
          const int64_t n = tq + 1;
          int64_t j = 0;
          for (; j + 8 <= n; j += 8) {
            for (int u = 0; u < 8; ++u) {
              const double v = static_cast<double>(grow[j + u]);
              part[u] += v;
              cols[j + u] += v;
            }
          }
          for (; j < n; ++j) {
            const double v = static_cast<double>(grow[j]);
            part[0] += v;
            cols[j] += v;
          }
          dc[tq] += ((part[0] + part[1]) + (part[2] + part[3])) +
                    ((part[4] + part[5]) + (part[6] + part[7]));
        }
        double acc = 0.0;
        scalar_t* out = gl + bh * K;
        for (int64_t t = K - 1; t >= 0; --t) {
          acc += detail::fgate_term_dc(dc[t], cols[t]);
          out[t] = static_cast<scalar_t>(acc);
        }
      }
    });
  });
  return grad_l;
}

}  // namespace
}  // namespace posenc

TORCH_LIBRARY_IMPL(posenc, CPU, m) {
  m.impl("forgetting_gate_bias", &posenc::forgetting_gate_bias_cpu);
  m.impl("forgetting_gate_bias_backward", &posenc::forgetting_gate_bias_backward_cpu);
}
