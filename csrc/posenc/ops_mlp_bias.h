// Public C++ API of the MLP position biases: dynamic position bias (x-transformers) and FIRE
// (Li et al. 2023), one function per op calling the dispatcher, as posenc/ops.h does for the
// other families (same position contract: query i at q_offset + i, key j at k_offset + j; same
// errors: c10::Error naming the op, the argument, what was expected and what was given).
// Included by posenc/posenc.h.
#pragma once

#include <ATen/ATen.h>

namespace posenc {
namespace ops {

/// Dynamic position bias (x-transformers' DynamicPositionBias, after Wang et al. 2021,
/// "CrossFormer", §3.3 dynamic position bias): an MLP over the signed distance
/// d = q_pos - k_pos (query minus key, x-transformers' input), evaluated once per distinct
/// distance (q_len + k_len - 1 values) and gathered into (H, q_len, k_len):
///   x = d, or sign(d) * log(|d| + 1) with log_distance (formed in fp64);
///   a = x; per hidden layer l: a = SiLU(norm_l(W_l a + b_l)); out = W_last a + b_last.
/// weights[l] (out_l, in_l) as nn.Linear stores them (in_0 = 1, in_l = out_{l-1}, out_last = H),
/// biases[l] (out_l,), norm_weights empty or one gamma (out_l,) per hidden layer: norm_l is then
/// x-transformers' bias-free LayerNorm, (z - mean) / sqrt(var + norm_eps) * gamma. All one
/// float dtype and device; the MLP runs in fp32 for half/bfloat16 (fp64 for fp64), the output
/// takes the parameters' dtype. causal: keys after the query (k_pos > q_pos) get 0 and the MLP
/// is not evaluated there (a causal mask removes them anyway); false gives x-transformers'
/// numbers everywhere. Differentiable in every weight, bias and gamma: the gradient is summed
/// per distance first (fixed-order diagonal sums, fp64), then backpropagated through the MLP,
/// every sum over distances in fixed blocks (bit-identical across runs and CPU thread counts).
/// Errors: fewer than 2 layers; list lengths; shapes that do not chain; mixed dtype/device;
/// non-finite parameters (CPU tensors only; on CUDA they give a non-finite bias); norm_eps
/// <= 0; negative lengths; offsets outside +-2^61; an output whose size overflows int64.
at::Tensor dynamic_position_bias(at::TensorList weights, at::TensorList biases, int64_t q_len,
                                 int64_t k_len, int64_t q_offset = 0, int64_t k_offset = 0,
                                 bool log_distance = false, bool causal = false,
                                 at::TensorList norm_weights = {}, double norm_eps = 1e-5);

/// FIRE bias (Li et al. 2023, "Functional Interpolation for Relative Positions Improves Long
/// Context Transformers", ICLR 2024, eq. 3-4) -> (H, q_len, k_len) in the parameters' dtype:
///   b(i, j) = f(psi(i - j) / (psi(max(L, i)) + eps)),  psi(x) = log(|c| x + 1),
///   f(x) = w2 relu(w1 x + b1) + b2,
/// i = q_offset + row, j = k_offset + col (absolute positions). c and L enter as |c| and |L|, as
/// in the paper's reference code. c, L 0-dim; w1 (hidden, 1), b1 (hidden,), w2 (H, hidden), b2
/// (H,) (nn.Linear layouts); one floating dtype and device; math in fp32 for half/bfloat16
/// (fp64 for fp64). causal: keys after the query (j > i) are 0 with zero gradient; false: the
/// reference code's |i - j| on every entry. Not Toeplitz (the normalizer depends on i): the MLP
/// is evaluated per entry. Differentiable in all six parameters (fp64 sums in fixed blocks of
/// rows: bit-identical across runs and CPU thread counts; at |L| == i the maximum's derivative
/// is split in half, as torch.maximum). Errors: shapes/dtypes/devices; eps not finite and > 0;
/// q_offset < 0; negative lengths; offsets outside +-2^61; non-finite parameters (CPU tensors;
/// on CUDA c and L are read on the host, a sync).
at::Tensor fire_bias(const at::Tensor& c, const at::Tensor& L, const at::Tensor& w1,
                     const at::Tensor& b1, const at::Tensor& w2, const at::Tensor& b2,
                     int64_t q_len, int64_t k_len, int64_t q_offset = 0, int64_t k_offset = 0,
                     bool causal = true, double eps = 1e-6);

}  // namespace ops
}  // namespace posenc
