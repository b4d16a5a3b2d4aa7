// Dynamic position bias (x-transformers' DynamicPositionBias, after Wang et al. 2021,
// CrossFormer §3.3): dispatcher handles, argument checks and the MLP shared by the kernels.
//
// The bias depends on the signed distance d = q_pos - k_pos only (query minus key, as
// x-transformers feeds its MLP and as posenc's ALiBi/KERPLE terms), so the MLP is evaluated once
// per diagonal t = j - i + q_len - 1 of the (q_len, k_len) grid, at d(t) = d_max - t with
// d_max = q_offset - k_offset + q_len - 1, and gathered. The MLP runs in plain ATen (matmuls,
// device-agnostic); only the gather and the per-diagonal gradient sums are backend kernels.
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <string>
#include <tuple>
#include <vector>

#include "check.h"

namespace posenc {
namespace detail {

using TensorVec = std::vector<at::Tensor>;

inline auto& dynamic_position_bias_op() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("posenc::dynamic_position_bias", "")
                       .typed<at::Tensor(at::TensorList, at::TensorList, at::TensorList,
                                         c10::SymInt, c10::SymInt, c10::SymInt, c10::SymInt,
                                         bool, bool, double)>();
  return op;
}

inline auto& dynamic_position_bias_backward_op() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("posenc::dynamic_position_bias_backward", "")
                       .typed<std::tuple<TensorVec, TensorVec, TensorVec>(
                           const at::Tensor&, at::TensorList, at::TensorList, at::TensorList,
                           c10::SymInt, c10::SymInt, c10::SymInt, c10::SymInt, bool, bool,
                           double)>();
  return op;
}

// weights[l] (out_l, in_l) as nn.Linear stores them, in_0 = 1, in_l = out_{l-1}, the last
// out_depth = num_heads; biases[l] (out_l,); norm_weights empty or one (out_l,) gamma per hidden
// layer. One floating dtype, one device. Returns the number of heads.
template <typename Int>
c10::SymInt check_dynamic_position_bias(const char* op, at::TensorList weights,
                                        at::TensorList biases, const Int& q_len,
                                        const Int& k_len, at::TensorList norm_weights,
                                        double norm_eps) {
  const int64_t n = static_cast<int64_t>(weights.size());
  POSENC_CHECK_ARG(n >= 2, op, "weights",
                   "must hold at least 2 tensors (Linear(1, dim), ..., Linear(dim, num_heads))",
                   n, " tensors");
  POSENC_CHECK_ARG(static_cast<int64_t>(biases.size()) == n, op, "biases",
                   c10::str("must hold one tensor per weight (", n, ")"), biases.size(),
                   " tensors");
  const int64_t nn = static_cast<int64_t>(norm_weights.size());
  POSENC_CHECK_ARG(nn == 0 || nn == n - 1, op, "norm_weights",
                   c10::str("must be empty or hold one tensor per hidden layer (", n - 1, ")"), nn,
                   " tensors");
  const at::Tensor& w0 = weights[0];
  c10::SymInt in = 1;
  for (int64_t l = 0; l < n; ++l) {
    const std::string wn = c10::str("weights[", l, "]");
    const std::string bn = c10::str("biases[", l, "]");
    const at::Tensor& w = weights[l];
    check_dim(op, wn.c_str(), w, 2, "(out_features, in_features)");
    check_floating(op, wn.c_str(), w);
    if (l > 0) {
      check_same_dtype(op, wn.c_str(), w, "weights[0]", w0);
      check_same_device(op, wn.c_str(), w, "weights[0]", w0);
    }
    POSENC_CHECK_ARG(w.sym_size(1) == in, op, wn.c_str(),
                     c10::str("must have in_features ", in,
                              l == 0 ? " (the distance is a scalar)" : " (the previous layer's out_features)"),
                     "shape ", shape_str(w));
    POSENC_CHECK_ARG(l == n - 1 || w.sym_size(0) > 0, op, wn.c_str(),
                     "must have out_features > 0", "shape ", shape_str(w));
    const at::Tensor& b = biases[l];
    check_dim(op, bn.c_str(), b, 1, "(out_features,)");
    check_same_dtype(op, bn.c_str(), b, "weights[0]", w0);
    check_same_device(op, bn.c_str(), b, "weights[0]", w0);
    POSENC_CHECK_ARG(b.sym_size(0) == w.sym_size(0), op, bn.c_str(),
                     c10::str("must have length out_features of ", wn, " (", w.sym_size(0), ")"),
                     "shape ", shape_str(b));
    if (nn > 0 && l < n - 1) {
      const std::string gn = c10::str("norm_weights[", l, "]");
      const at::Tensor& g = norm_weights[l];
      check_dim(op, gn.c_str(), g, 1, "(out_features,)");
      check_same_dtype(op, gn.c_str(), g, "weights[0]", w0);
      check_same_device(op, gn.c_str(), g, "weights[0]", w0);
      POSENC_CHECK_ARG(g.sym_size(0) == w.sym_size(0), op, gn.c_str(),
                       c10::str("must have length out_features of ", wn, " (", w.sym_size(0), ")"),
                       "shape ", shape_str(g));
    }
    in = w.sym_size(0);
  }
  POSENC_CHECK_ARG(std::isfinite(norm_eps) && norm_eps > 0, op, "norm_eps",
                   "must be finite and > 0", norm_eps);
  check_length(op, "q_len", q_len);
  check_length(op, "k_len", k_len);
  const c10::SymInt heads = weights[n - 1].sym_size(0);
  check_bias_size(op, heads, q_len, k_len, w0.scalar_type());
  return heads;
}

template <typename Int>
void check_dynamic_position_bias_backward(const char* op, const at::Tensor& grad,
                                          at::TensorList weights, at::TensorList biases,
                                          const Int& q_len, const Int& k_len,
                                          at::TensorList norm_weights, double norm_eps) {
  const auto heads =
      check_dynamic_position_bias(op, weights, biases, q_len, k_len, norm_weights, norm_eps);
  check_dim(op, "grad", grad, 3, "(num_heads, q_len, k_len)");
  check_floating(op, "grad", grad);
  check_same_device(op, "grad", grad, "weights[0]", weights[0]);
  const bool same = grad.sym_size(0) == heads && grad.sym_size(1) == c10::SymInt(q_len) &&
                    grad.sym_size(2) == c10::SymInt(k_len);
  POSENC_CHECK_ARG(same, op, "grad",
                   c10::str("must have shape (num_heads, q_len, k_len) = [", heads, ", ", q_len,
                            ", ", k_len, "]"),
                   "shape ", shape_str(grad));
}

// Parameter values on the host must be finite (a NaN weight would fill the bias with NaN).
void check_dynamic_position_bias_values(const char* op, at::TensorList weights,
                                        at::TensorList biases, at::TensorList norm_weights);

// Diagonals t in [0, n_eval) are evaluated: all q_len + k_len - 1 of them, or with `causal`
// those with d(t) >= 0 (the others are future keys, written as 0).
inline int64_t dpb_num_evaluated(int64_t q_len, int64_t k_len, int64_t q_offset,
                                 int64_t k_offset, bool causal) {
  const int64_t nd = q_len + k_len - 1;
  if (!causal) return nd;
  const int64_t d_max = q_offset - k_offset + q_len - 1;
  return std::clamp<int64_t>(d_max + 1, 0, nd);
}

// The MLP at d(t), t < n_eval: (n_eval, num_heads) in the math type (float32 for half/bfloat16
// parameters, else theirs), on the parameters' device.
at::Tensor dpb_mlp_forward(at::TensorList weights, at::TensorList biases,
                           at::TensorList norm_weights, double norm_eps, int64_t d_max,
                           int64_t n_eval, bool log_distance);

// Backpropagates grad_table (n_eval, num_heads) (any floating dtype) through the MLP at the same
// distances: gradients of weights, biases and norm_weights, each in its parameter's dtype.
// Every sum over distances runs in fixed blocks added in order (deterministic).
std::tuple<TensorVec, TensorVec, TensorVec> dpb_mlp_backward(
    const at::Tensor& grad_table, at::TensorList weights, at::TensorList biases,
    at::TensorList norm_weights, double norm_eps, int64_t d_max, int64_t n_eval,
    bool log_distance);

// Zero gradients shaped like the parameters (empty output or no evaluated distance).
std::tuple<TensorVec, TensorVec, TensorVec> dpb_zero_grads(at::TensorList weights,
                                                           at::TensorList biases,
                                                           at::TensorList norm_weights);

}  // namespace detail
}  // namespace posenc
