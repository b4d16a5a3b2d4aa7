// Dynamic position bias on CUDA: the MLP table (ATen, ../dynamic_position_bias.cpp, cuBLAS)
// gathered by a row kernel, and the backward's per-diagonal sums (bias_utils.cuh: fixed-order
// tiles in double, no atomics), then the MLP backward in ATen. Numbers of the CPU kernel up to
// the GEMMs' rounding.
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "../dynamic_position_bias.h"
#include "bias_utils.cuh"

namespace posenc {
namespace {

using detail::TensorVec;

std::vector<at::Tensor> contiguous_all(at::TensorList ts) {
  std::vector<at::Tensor> out;
  out.reserve(ts.size());
  for (const auto& t : ts) out.push_back(t.contiguous());
  return out;
}

// out[h, i, j] = lut[h, j - i + q_len - 1]; rows are (head, query), threadIdx.x walks the keys.
template <typename scalar_t>
__global__ void dpb_gather_kernel(const scalar_t* __restrict__ lut, scalar_t* __restrict__ out,
                                  int64_t heads, int64_t q_len, int64_t k_len) {
  const int64_t rows = heads * q_len;
  const int64_t nd = q_len + k_len - 1;
  const int64_t row_stride = static_cast<int64_t>(gridDim.x) * blockDim.y;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y; row < rows;
       row += row_stride) {
    const int64_t h = row / q_len;
    const int64_t i = row - h * q_len;
    const scalar_t* src = lut + h * nd + (q_len - 1 - i);
    scalar_t* orow = out + row * k_len;
    for (int64_t j = threadIdx.x; j < k_len; j += blockDim.x) orow[j] = src[j];
  }
}

at::Tensor dynamic_position_bias_cuda(at::TensorList weights_in, at::TensorList biases_in,
                                      at::TensorList norm_in, int64_t q_len, int64_t k_len,
                                      int64_t q_offset, int64_t k_offset, bool log_distance,
                                      bool causal, double norm_eps) {
  const char* op = "dynamic_position_bias";
  detail::check_dynamic_position_bias(op, weights_in, biases_in, q_len, k_len, norm_in, norm_eps);
  detail::check_offsets(op, q_offset, k_offset);
  const c10::cuda::CUDAGuard guard(weights_in[0].device());
  const auto weights = contiguous_all(weights_in);
  const auto biases = contiguous_all(biases_in);
  const auto norms = contiguous_all(norm_in);
  const int64_t heads = weights.back().size(0);
  auto out = detail::empty_output(op, q_len > k_len ? "q_len" : "k_len", {heads, q_len, k_len},
                                  weights[0].options());
  if (out.numel() == 0) return out;
  const int64_t nd = q_len + k_len - 1;
  const int64_t n_eval = detail::dpb_num_evaluated(q_len, k_len, q_offset, k_offset, causal);
  auto lut = at::zeros({heads, nd}, weights[0].options());
  if (n_eval > 0) {
    const auto table = detail::dpb_mlp_forward(weights, biases, norms, norm_eps,
                                               q_offset - k_offset + q_len - 1, n_eval,
                                               log_distance);
    lut.narrow(1, 0, n_eval).copy_(table.t());
  }
  const auto launch = bias_cuda::row_launch(heads * q_len, k_len);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "dynamic_position_bias_cuda", [&] {
    dpb_gather_kernel<scalar_t><<<launch.grid, launch.block, 0, stream>>>(
        lut.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), heads, q_len, k_len);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<TensorVec, TensorVec, TensorVec> dynamic_position_bias_backward_cuda(
    const at::Tensor& grad_in, at::TensorList weights_in, at::TensorList biases_in,
    at::TensorList norm_in, int64_t q_len, int64_t k_len, int64_t q_offset, int64_t k_offset,
    bool log_distance, bool causal, double norm_eps) {
  const char* op = "dynamic_position_bias_backward";
  detail::check_dynamic_position_bias_backward(op, grad_in, weights_in, biases_in, q_len, k_len,
                                               norm_in, norm_eps);
  detail::check_offsets(op, q_offset, k_offset);
  const c10::cuda::CUDAGuard guard(weights_in[0].device());
  const auto weights = contiguous_all(weights_in);
  const auto biases = contiguous_all(biases_in);
  const auto norms = contiguous_all(norm_in);
  const int64_t heads = weights.back().size(0);
  const int64_t n_eval = detail::dpb_num_evaluated(q_len, k_len, q_offset, k_offset, causal);
  if (heads == 0 || q_len == 0 || k_len == 0 || n_eval == 0) {
    return detail::dpb_zero_grads(weights, biases, norms);
  }
  const auto grad = grad_in.scalar_type() == weights[0].scalar_type()
                        ? grad_in
                        : grad_in.to(weights[0].scalar_type());
  const auto diag = bias_cuda::diagonal_sums(grad);  // (heads, nd) float64
  const auto grad_table = diag.narrow(1, 0, n_eval).t().contiguous();
  return detail::dpb_mlp_backward(grad_table, weights, biases, norms, norm_eps,
                                  q_offset - k_offset + q_len - 1, n_eval, log_distance);
}

}  // namespace
}  // namespace posenc

TORCH_LIBRARY_IMPL(posenc, CUDA, m) {
  m.impl("dynamic_position_bias", &posenc::dynamic_position_bias_cuda);
  m.impl("dynamic_position_bias_backward", &posenc::dynamic_position_bias_backward_cuda);
}
