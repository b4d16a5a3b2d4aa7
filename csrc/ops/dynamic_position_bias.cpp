// Dynamic position bias: schemas, the public C++ function, and the MLP (forward and backward in
// plain ATen, shared by the CPU and CUDA kernels).
#include "dynamic_position_bias.h"

#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "posenc/ops_mlp_bias.h"

namespace posenc {
namespace detail {

namespace {

at::ScalarType math_type(const at::Tensor& w) {
  return w.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// The MLP's input at the evaluated diagonals: d(t) = d_max - t, or sign(d) log(|d| + 1)
// (x-transformers' log_distance), formed in fp64 and rounded once to the math type.
at::Tensor dpb_inputs(int64_t d_max, int64_t n_eval, bool log_distance, const at::Tensor& like) {
  auto t = at::arange(n_eval, like.options().dtype(at::kDouble));
  auto d = at::neg(t).add_(static_cast<double>(d_max));
  if (log_distance) d = at::sign(d) * at::log1p(at::abs(d));
  return d.to(math_type(like)).unsqueeze(1);
}

// Rows per block of the sums over distances. Fixed, so the order of every sum is the same
// whatever the thread count, backend or BLAS.
constexpr int64_t kDistBlock = 256;

// sum_n a[n, :]^T b[n, :] -> (p, q) in fp64: per block of kDistBlock rows one batched GEMM
// (a reduction of kDistBlock terms per entry), then the blocks added in order.
at::Tensor blocked_tmm(const at::Tensor& a, const at::Tensor& b) {
  const int64_t n = a.size(0), p = a.size(1), q = b.size(1);
  const int64_t nb = (n + kDistBlock - 1) / kDistBlock;
  const int64_t pad = nb * kDistBlock - n;
  auto a64 = a.to(at::kDouble);
  auto b64 = b.to(at::kDouble);
  if (pad > 0) {
    a64 = at::constant_pad_nd(a64, {0, 0, 0, pad});
    b64 = at::constant_pad_nd(b64, {0, 0, 0, pad});
  }
  const auto parts = at::bmm(a64.view({nb, kDistBlock, p}).transpose(1, 2),
                             b64.view({nb, kDistBlock, q}));  // (nb, p, q)
  auto acc = parts.select(0, 0).clone();
  for (int64_t k = 1; k < nb; ++k) acc.add_(parts.select(0, k));
  return acc;
}

at::Tensor blocked_colsum(const at::Tensor& x) {
  return blocked_tmm(at::ones({x.size(0), 1}, x.options()), x).squeeze(0);
}

struct Normed {
  at::Tensor xhat, rstd;
};

// Bias-free LayerNorm statistics over the features (x-transformers' LayerNorm: F.layer_norm
// without affine, times gamma).
Normed layer_norm_stats(const at::Tensor& z, double eps) {
  const auto mu = z.mean(-1, true);
  const auto c = z - mu;
  const auto rstd = at::rsqrt(c.square().mean(-1, true).add_(eps));
  return {c * rstd, rstd};
}

at::Tensor silu_derivative(const at::Tensor& y) {
  const auto s = at::sigmoid(y);
  return s * (1 + y * (1 - s));
}

}  // namespace

void check_dynamic_position_bias_values(const char* op, at::TensorList weights,
                                        at::TensorList biases, at::TensorList norm_weights) {
  auto check = [&](const char* list, size_t l, const at::Tensor& t) {
    if (!t.device().is_cpu() || t.numel() == 0) return;
    const auto flat = t.reshape(-1);
    const auto bad = at::logical_not(at::isfinite(flat));
    if (!bad.any().item<bool>()) return;
    int64_t k = bad.nonzero().select(0, 0).item<int64_t>();
    const double v = flat[k].item<double>();
    std::string where;  // the multi-index of the first non-finite element
    for (int64_t dim = t.dim() - 1; dim >= 0; --dim) {
      where = std::to_string(k % t.size(dim)) + (where.empty() ? "" : ", ") + where;
      k /= t.size(dim);
    }
    POSENC_CHECK_ARG(false, op, c10::str(list, "[", l, "]"), "must be finite", list, "[", l,
                     "][", where, "] = ", v);
  };
  for (size_t l = 0; l < weights.size(); ++l) check("weights", l, weights[l]);
  for (size_t l = 0; l < biases.size(); ++l) check("biases", l, biases[l]);
  for (size_t l = 0; l < norm_weights.size(); ++l) check("norm_weights", l, norm_weights[l]);
}

at::Tensor dpb_mlp_forward(at::TensorList weights, at::TensorList biases,
                           at::TensorList norm_weights, double norm_eps, int64_t d_max,
                           int64_t n_eval, bool log_distance) {
  const auto mt = math_type(weights[0]);
  auto a = dpb_inputs(d_max, n_eval, log_distance, weights[0]);
  const int64_t n = static_cast<int64_t>(weights.size());
  for (int64_t l = 0; l < n; ++l) {
    auto z = at::addmm(biases[l].to(mt), a, weights[l].to(mt).t());
    if (l == n - 1) return z;
    if (!norm_weights.empty()) z = layer_norm_stats(z, norm_eps).xhat * norm_weights[l].to(mt);
    a = at::silu(z);
  }
  return a;  // unreachable: n >= 2
}

std::tuple<TensorVec, TensorVec, TensorVec> dpb_zero_grads(at::TensorList weights,
                                                           at::TensorList biases,
                                                           at::TensorList norm_weights) {
  TensorVec gw, gb, gg;
  for (const auto& w : weights) gw.push_back(at::zeros_like(w, at::MemoryFormat::Contiguous));
  for (const auto& b : biases) gb.push_back(at::zeros_like(b, at::MemoryFormat::Contiguous));
  for (const auto& g : norm_weights) gg.push_back(at::zeros_like(g, at::MemoryFormat::Contiguous));
  return {gw, gb, gg};
}

std::tuple<TensorVec, TensorVec, TensorVec> dpb_mlp_backward(
    const at::Tensor& grad_table, at::TensorList weights, at::TensorList biases,
    at::TensorList norm_weights, double norm_eps, int64_t d_max, int64_t n_eval,
    bool log_distance) {
  if (n_eval == 0) return dpb_zero_grads(weights, biases, norm_weights);
  const auto mt = math_type(weights[0]);
  const int64_t n = static_cast<int64_t>(weights.size());
  const bool norm = !norm_weights.empty();
  // Recompute the activations (O(n_eval * dim^2), small next to the (H, q_len, k_len) input).
  std::vector<at::Tensor> acts{dpb_inputs(d_max, n_eval, log_distance, weights[0])};
  std::vector<at::Tensor> pre, xhat, rstd;  // per hidden layer: SiLU input, LayerNorm terms
  for (int64_t l = 0; l + 1 < n; ++l) {
    auto z = at::addmm(biases[l].to(mt), acts.back(), weights[l].to(mt).t());
    if (norm) {
      auto st = layer_norm_stats(z, norm_eps);
      z = st.xhat * norm_weights[l].to(mt);
      xhat.push_back(st.xhat);
      rstd.push_back(st.rstd);
    }
    pre.push_back(z);
    acts.push_back(at::silu(z));
  }
  TensorVec gw(n), gb(n), gg(norm ? n - 1 : 0);
  auto dz = grad_table.to(mt);
  for (int64_t l = n - 1; l >= 0; --l) {
    const auto& a = acts[l];
    const auto wb = blocked_tmm(dz, at::cat({a, at::ones({a.size(0), 1}, a.options())}, 1));
    const int64_t in = a.size(1);
    gw[l] = wb.narrow(1, 0, in).to(weights[l].scalar_type()).contiguous();
    gb[l] = wb.select(1, in).to(biases[l].scalar_type()).contiguous();
    if (l == 0) break;
    auto dy = at::mm(dz, weights[l].to(mt)) * silu_derivative(pre[l - 1]);
    if (norm) {
      const auto& xh = xhat[l - 1];
      gg[l - 1] = blocked_colsum(dy * xh).to(norm_weights[l - 1].scalar_type()).contiguous();
      const auto dxh = dy * norm_weights[l - 1].to(mt);
      dy = rstd[l - 1] * (dxh - dxh.mean(-1, true) - xh * (dxh * xh).mean(-1, true));
    }
    dz = dy;
  }
  return {gw, gb, gg};
}

}  // namespace detail

namespace ops {

at::Tensor dynamic_position_bias(at::TensorList weights, at::TensorList biases, int64_t q_len,
                                 int64_t k_len, int64_t q_offset, int64_t k_offset,
                                 bool log_distance, bool causal, at::TensorList norm_weights,
                                 double norm_eps) {
  return detail::dynamic_position_bias_op().call(weights, biases, norm_weights, q_len, k_len,
                                                 q_offset, k_offset, log_distance, causal,
                                                 norm_eps);
}

}  // namespace ops
}  // namespace posenc

TORCH_LIBRARY_FRAGMENT(posenc, m) {
  m.def(
      "dynamic_position_bias(Tensor[] weights, Tensor[] biases, Tensor[] norm_weights, "
      "SymInt q_len, SymInt k_len, SymInt q_offset=0, SymInt k_offset=0, "
      "bool log_distance=False, bool causal=False, float norm_eps=1e-05) -> Tensor");
  m.def(
      "dynamic_position_bias_backward(Tensor grad, Tensor[] weights, Tensor[] biases, "
      "Tensor[] norm_weights, SymInt q_len, SymInt k_len, SymInt q_offset, SymInt k_offset, "
      "bool log_distance, bool causal, float norm_eps) -> (Tensor[], Tensor[], Tensor[])");
}
