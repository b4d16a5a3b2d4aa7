// FIRE (Li et al. 2023, "Functional Interpolation for Relative Positions Improves Long Context
// Transformers", ICLR 2024, §3 eq. 3-4): dispatcher handles, argument checks and the position
// term shared by the CPU and CUDA kernels.
//
//   b(i, j) = f(psi(i - j) / (psi(max(L, i)) + eps)),  psi(x) = log(c x + 1),
//   f(x) = W2 relu(W1 x + b1) + b2 (1 -> hidden -> H),
//
// i = q_offset + row, j = k_offset + col the absolute positions. c and L enter as |c| and |L|,
// as the paper's reference code writes them (log(|c x| + 1), threshold |L_multiplier * L0|), so
// the raw parameters stay valid however training moves them. Not Toeplitz: the normalizer
// depends on the query position, so every (i, j) entry evaluates the MLP.
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/macros/Macros.h>

#include <cmath>
#include <tuple>

#include "check.h"

namespace posenc {
namespace detail {

inline auto& fire_bias_op() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("posenc::fire_bias", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         c10::SymInt, c10::SymInt, c10::SymInt, c10::SymInt,
                                         bool, double)>();
  return op;
}

using FireGrads =
    std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

inline auto& fire_bias_backward_op() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("posenc::fire_bias_backward", "")
                       .typed<FireGrads(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                        const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                        const at::Tensor&, c10::SymInt, c10::SymInt, c10::SymInt,
                                        c10::SymInt, bool, double)>();
  return op;
}

// c, L 0-dim; w1 (hidden, 1), b1 (hidden,), w2 (H, hidden), b2 (H,); one floating dtype and
// device. Returns H.
template <typename Int>
c10::SymInt check_fire_bias(const char* op, const at::Tensor& c, const at::Tensor& L,
                            const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2,
                            const at::Tensor& b2, const Int& q_len, const Int& k_len,
                            const Int& q_offset, double eps) {
  check_dim(op, "c", c, 0, "() (a scalar)");
  check_floating(op, "c", c);
  check_dim(op, "L", L, 0, "() (a scalar)");
  check_dim(op, "w1", w1, 2, "(hidden, 1)");
  check_dim(op, "b1", b1, 1, "(hidden,)");
  check_dim(op, "w2", w2, 2, "(num_heads, hidden)");
  check_dim(op, "b2", b2, 1, "(num_heads,)");
  const std::pair<const char*, const at::Tensor*> others[] = {
      {"L", &L}, {"w1", &w1}, {"b1", &b1}, {"w2", &w2}, {"b2", &b2}};
  for (const auto& [name, t] : others) {
    check_same_dtype(op, name, *t, "c", c);
    check_same_device(op, name, *t, "c", c);
  }
  const auto hidden = w1.sym_size(0);
  POSENC_CHECK_ARG(w1.sym_size(1) == 1 && hidden > 0, op, "w1",
                   "must have shape (hidden, 1) with hidden > 0", "shape ", shape_str(w1));
  POSENC_CHECK_ARG(b1.sym_size(0) == hidden, op, "b1",
                   c10::str("must have length hidden (", hidden, ")"), "shape ", shape_str(b1));
  POSENC_CHECK_ARG(w2.sym_size(1) == hidden, op, "w2",
                   c10::str("must have shape (num_heads, hidden = ", hidden, ")"), "shape ",
                   shape_str(w2));
  POSENC_CHECK_ARG(b2.sym_size(0) == w2.sym_size(0), op, "b2",
                   c10::str("must have length num_heads (", w2.sym_size(0), ")"), "shape ",
                   shape_str(b2));
  POSENC_CHECK_ARG(std::isfinite(eps) && eps > 0, op, "eps", "must be finite and > 0", eps);
  check_length(op, "q_len", q_len);
  check_length(op, "k_len", k_len);
  if (auto q = concrete(q_offset)) {
    // psi(max(L, i)) is FIRE's normalizer at query position i; the paper's positions start at 0.
    POSENC_CHECK_ARG(*q >= 0, op, "q_offset",
                     "must be >= 0 (FIRE normalizes by psi(max(L, i)) at query position i >= 0)",
                     *q);
  }
  check_bias_size(op, w2.sym_size(0), q_len, k_len, c.scalar_type());
  return w2.sym_size(0);
}

template <typename Int>
void check_fire_bias_backward(const char* op, const at::Tensor& grad, const at::Tensor& c,
                              const at::Tensor& L, const at::Tensor& w1, const at::Tensor& b1,
                              const at::Tensor& w2, const at::Tensor& b2, const Int& q_len,
                              const Int& k_len, const Int& q_offset, double eps) {
  const auto heads = check_fire_bias(op, c, L, w1, b1, w2, b2, q_len, k_len, q_offset, eps);
  check_dim(op, "grad", grad, 3, "(num_heads, q_len, k_len)");
  check_floating(op, "grad", grad);
  check_same_device(op, "grad", grad, "c", c);
  const bool same = grad.sym_size(0) == heads && grad.sym_size(1) == c10::SymInt(q_len) &&
                    grad.sym_size(2) == c10::SymInt(k_len);
  POSENC_CHECK_ARG(same, op, "grad",
                   c10::str("must have shape (num_heads, q_len, k_len) = [", heads, ", ", q_len,
                            ", ", k_len, "]"),
                   "shape ", shape_str(grad));
}

#if defined(__CUDA_ARCH__)
#define POSENC_FIRE_MATH(fn) ::fn
#else
#define POSENC_FIRE_MATH(fn) std::fn
#endif

// ---- the position term (host and device) ------------------------------------------------
// psi(x) = log(|c| x + 1), x >= 0.
template <typename T>
C10_HOST_DEVICE inline T fire_psi(T c_abs, T x) {
  return POSENC_FIRE_MATH(log1p)(c_abs * x);
}

// The normalizer of query position q_pos >= 0: psi(max(|L|, q_pos)) + eps.
template <typename T>
C10_HOST_DEVICE inline T fire_normalizer(T c_abs, T L_abs, int64_t q_pos, T eps) {
  const T p = static_cast<T>(q_pos);
  return fire_psi(c_abs, p > L_abs ? p : L_abs) + eps;
}

// d normalizer / d c and d normalizer / d L at q_pos (fp64), with c, L signed: |.| brings
// sign(.). At |L| == q_pos the maximum's derivative is split in half between its arguments, as
// torch.maximum's backward does.
C10_HOST_DEVICE inline void fire_normalizer_derivatives(double c, double L, int64_t q_pos,
                                                        double* dn_dc, double* dn_dL) {
  const double ca = c < 0 ? -c : c, La = L < 0 ? -L : L;
  const double p = static_cast<double>(q_pos);
  const double m = p > La ? p : La;
  const double sc = c > 0 ? 1.0 : (c < 0 ? -1.0 : 0.0);
  const double sL = L > 0 ? 1.0 : (L < 0 ? -1.0 : 0.0);
  *dn_dc = sc * m / (ca * m + 1.0);
  const double share = La > p ? 1.0 : (La == p ? 0.5 : 0.0);
  *dn_dL = share * sL * ca / (ca * m + 1.0);
}

}  // namespace detail
}  // namespace posenc
