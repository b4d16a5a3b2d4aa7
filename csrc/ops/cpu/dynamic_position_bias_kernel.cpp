// Dynamic position bias on the CPU: the MLP table (ATen, ../dynamic_position_bias.cpp) gathered
// one row at a time (a memcpy per row), and the backward's per-diagonal gradient sums
// (bias_reduce.h: fixed blocks of rows, fp64, added in block order; deterministic).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "../dynamic_position_bias.h"
#include "bias_reduce.h"

namespace posenc {
namespace {

using detail::TensorVec;

std::vector<at::Tensor> contiguous_all(at::TensorList ts) {
  std::vector<at::Tensor> out;
  out.reserve(ts.size());
  for (const auto& t : ts) out.push_back(t.contiguous());
  return out;
}

at::Tensor dynamic_position_bias_cpu(at::TensorList weights_in, at::TensorList biases_in,
                                     at::TensorList norm_in, int64_t q_len, int64_t k_len,
                                     int64_t q_offset, int64_t k_offset, bool log_distance,
                                     bool causal, double norm_eps) {
  const char* op = "dynamic_position_bias";
  detail::check_dynamic_position_bias(op, weights_in, biases_in, q_len, k_len, norm_in, norm_eps);
  detail::check_offsets(op, q_offset, k_offset);
  const auto weights = contiguous_all(weights_in);
  const auto biases = contiguous_all(biases_in);
  const auto norms = contiguous_all(norm_in);
  detail::check_dynamic_position_bias_values(op, weights, biases, norms);
  const int64_t heads = weights.back().size(0);
  auto out = detail::empty_output(op, q_len > k_len ? "q_len" : "k_len", {heads, q_len, k_len},
                                  weights[0].options());
  if (out.numel() == 0) return out;
  const int64_t nd = q_len + k_len - 1;
  const int64_t d_max = q_offset - k_offset + q_len - 1;
  const int64_t n_eval = detail::dpb_num_evaluated(q_len, k_len, q_offset, k_offset, causal);
  // lut[h, t]: the bias of head h on diagonal t (0 past n_eval: causal future keys).
  auto lut = at::zeros({heads, nd}, weights[0].options());
  if (n_eval > 0) {
    const auto table = detail::dpb_mlp_forward(weights, biases, norms, norm_eps, d_max, n_eval,
                                               log_distance);  // (n_eval, heads)
    lut.narrow(1, 0, n_eval).copy_(table.t());
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "dynamic_position_bias_cpu", [&] {
    detail::fill_bias_from_diagonals(out.mutable_data_ptr<scalar_t>(),
                                     lut.const_data_ptr<scalar_t>(), heads, q_len, k_len);
  });
  return out;
}

std::tuple<TensorVec, TensorVec, TensorVec> dynamic_position_bias_backward_cpu(
    const at::Tensor& grad_in, at::TensorList weights_in, at::TensorList biases_in,
    at::TensorList norm_in, int64_t q_len, int64_t k_len, int64_t q_offset, int64_t k_offset,
    bool log_distance, bool causal, double norm_eps) {
  const char* op = "dynamic_position_bias_backward";
  detail::check_dynamic_position_bias_backward(op, grad_in, weights_in, biases_in, q_len, k_len,
                                               norm_in, norm_eps);
  detail::check_offsets(op, q_offset, k_offset);
  const auto weights = contiguous_all(weights_in);
  const auto biases = contiguous_all(biases_in);
  const auto norms = contiguous_all(norm_in);
  detail::check_dynamic_position_bias_values(op, weights, biases, norms);
  const int64_t heads = weights.back().size(0);
  const int64_t n_eval = detail::dpb_num_evaluated(q_len, k_len, q_offset, k_offset, causal);
  if (heads == 0 || q_len == 0 || k_len == 0 || n_eval == 0) {
    return detail::dpb_zero_grads(weights, biases, norms);
  }
  const int64_t nd = q_len + k_len - 1;
  // As the other bias ops: an upstream gradient of another dtype is rounded to the weights'.
  const auto grad = grad_in.to(weights[0].scalar_type()).contiguous();
  std::vector<double> total;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "dynamic_position_bias_backward_cpu", [&] {
    // Each block's diagonal sums go to their diagonal: (heads, nd) sums, blocks in order.
    total = detail::reduce_bias_gradient(
        grad.const_data_ptr<scalar_t>(), heads, q_len, k_len, nd,
        [&](int64_t, int64_t t_lo, const double* diag, int64_t n, double* partial) {
          for (int64_t u = 0; u < n; ++u) partial[t_lo + u] += diag[u];
        });
  });
  // (n_eval, heads): the gradient of the MLP table; diagonals past n_eval are causal future
  // keys, written as 0, whose gradient is dropped.
  auto diag = at::from_blob(total.data(), {heads, nd}, at::TensorOptions().dtype(at::kDouble));
  const auto grad_table = diag.narrow(1, 0, n_eval).t().contiguous();
  return detail::dpb_mlp_backward(grad_table, weights, biases, norms, norm_eps,
                                  q_offset - k_offset + q_len - 1, n_eval, log_distance);
}

}  // namespace
}  // namespace posenc

TORCH_LIBRARY_IMPL(posenc, CPU, m) {
  m.impl("dynamic_position_bias", &posenc::dynamic_position_bias_cpu);
  m.impl("dynamic_position_bias_backward", &posenc::dynamic_position_bias_backward_cpu);
}
