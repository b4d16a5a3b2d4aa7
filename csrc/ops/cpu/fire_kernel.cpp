// FIRE on the CPU. Forward: parallel over query rows; per row the normalizer once, then the MLP
// per key in blocks of kFireCols keys (fixed-length loops the compiler vectorises). Backward: one
// task per block of kFireRows rows (fixed, not derived from the thread count) accumulates every
// parameter's gradient in fp64 (per key block first, in the math type); the tasks' partials are
// added in task order. Deterministic and bit-identical for any thread count, no atomics.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "../fire.h"

namespace posenc {
namespace {

using detail::FireGrads;

constexpr int64_t kFireCols = 16;
constexpr int64_t kFireRows = 8;

// The parameters in the math type T, contiguous.
template <typename T>
struct FireParams {
  double c, L;  // signed, as given
  T c_abs, L_abs, eps;
  int64_t hidden, heads;
  std::vector<T> w1, b1, w2, b2;  // w2[h * hidden + k]
};

template <typename scalar_t, typename T>
FireParams<T> read_params(const at::Tensor& c, const at::Tensor& L, const at::Tensor& w1,
                          const at::Tensor& b1, const at::Tensor& w2, const at::Tensor& b2,
                          double eps) {
  FireParams<T> p;
  p.c = static_cast<double>(c.item<scalar_t>());
  p.L = static_cast<double>(L.item<scalar_t>());
  p.c_abs = static_cast<T>(std::abs(p.c));
  p.L_abs = static_cast<T>(std::abs(p.L));
  p.eps = static_cast<T>(eps);
  p.hidden = w1.size(0);
  p.heads = w2.size(0);
  auto vec = [](const at::Tensor& t) {
    const auto ct = t.contiguous();
    const scalar_t* v = ct.const_data_ptr<scalar_t>();
    return std::vector<T>(v, v + ct.numel());
  };
  p.w1 = vec(w1);
  p.b1 = vec(b1);
  p.w2 = vec(w2);
  p.b2 = vec(b2);
  return p;
}

// Keys j < j_end of query row i are computed; the others are causal future keys (value 0).
int64_t row_end(int64_t q_pos, int64_t k_len, int64_t k_offset, bool causal) {
  if (!causal) return k_len;
  return std::clamp<int64_t>(q_pos - k_offset + 1, 0, k_len);
}

void check_values(const char* op, const at::Tensor& c, const at::Tensor& L,
                  const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2,
                  const at::Tensor& b2) {
  const std::pair<const char*, const at::Tensor*> all[] = {
      {"c", &c}, {"L", &L}, {"w1", &w1}, {"b1", &b1}, {"w2", &w2}, {"b2", &b2}};
  for (const auto& [name, t] : all) {
    const auto flat = t->reshape(-1);
    const auto bad = at::logical_not(at::isfinite(flat));
    if (!bad.any().item<bool>()) continue;
    const int64_t k = bad.nonzero().select(0, 0).item<int64_t>();
    const double v = flat[k].item<double>();
    if (t->dim() == 0) {
      POSENC_CHECK_ARG(false, op, name, "must be finite", name, " = ", v);
    }
    const int64_t cols = t->dim() == 2 ? t->size(1) : 1;
    const std::string where =
        t->dim() == 2 ? c10::str(k / cols, ", ", k % cols) : std::to_string(k);
    POSENC_CHECK_ARG(false, op, name, "must be finite", name, "[", where, "] = ", v);
  }
}

at::Tensor fire_bias_cpu(const at::Tensor& c, const at::Tensor& L, const at::Tensor& w1,
                         const at::Tensor& b1, const at::Tensor& w2, const at::Tensor& b2,
                         int64_t q_len, int64_t k_len, int64_t q_offset, int64_t k_offset,
                         bool causal, double eps) {
  const char* op = "fire_bias";
  detail::check_fire_bias(op, c, L, w1, b1, w2, b2, q_len, k_len, q_offset, eps);
  detail::check_offsets(op, q_offset, k_offset);
  check_values(op, c, L, w1, b1, w2, b2);
  const int64_t heads = w2.size(0);
  auto out = detail::empty_output(op, q_len > k_len ? "q_len" : "k_len", {heads, q_len, k_len},
                                  c.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, c.scalar_type(), "fire_bias_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const auto p = read_params<scalar_t, T>(c, L, w1, b1, w2, b2, eps);
    const int64_t hid = p.hidden;
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    const int64_t plane = q_len * k_len;
    at::parallel_for(0, q_len, detail::row_grain(k_len * heads * hid / 4 + 1), [&](int64_t begin, int64_t end) {
      std::vector<T> acc(heads * kFireCols);
      T x[kFireCols], hk[kFireCols];
      for (int64_t i = begin; i < end; ++i) {
        const int64_t q_pos = q_offset + i;
        const T n = detail::fire_normalizer(p.c_abs, p.L_abs, q_pos, p.eps);
        const int64_t j_end = row_end(q_pos, k_len, k_offset, causal);
        for (int64_t h = 0; h < heads; ++h) {
          std::fill(o + h * plane + i * k_len + j_end, o + h * plane + (i + 1) * k_len, scalar_t(0));
        }
        for (int64_t j0 = 0; j0 < j_end; j0 += kFireCols) {
          const int64_t nb = std::min(kFireCols, j_end - j0);
          for (int64_t u = 0; u < kFireCols; ++u) {
            const int64_t d = q_pos - (k_offset + j0 + std::min(u, nb - 1));
            x[u] = detail::fire_psi(p.c_abs, static_cast<T>(d < 0 ? -d : d)) / n;
          }
          std::fill(acc.begin(), acc.end(), T(0));
          for (int64_t k = 0; k < hid; ++k) {
            const T a = p.w1[k], b = p.b1[k];
            for (int64_t u = 0; u < kFireCols; ++u) hk[u] = std::max(a * x[u] + b, T(0));
            for (int64_t h = 0; h < heads; ++h) {
              const T w = p.w2[h * hid + k];
              T* ah = acc.data() + h * kFireCols;
              for (int64_t u = 0; u < kFireCols; ++u) ah[u] += w * hk[u];
            }
          }
          for (int64_t h = 0; h < heads; ++h) {
            scalar_t* orow = o + h * plane + i * k_len + j0;
            const T* ah = acc.data() + h * kFireCols;
            for (int64_t u = 0; u < nb; ++u) orow[u] = static_cast<scalar_t>(p.b2[h] + ah[u]);
          }
        }
      }
    });
  });
  return out;
}

FireGrads fire_bias_backward_cpu(const at::Tensor& grad_in, const at::Tensor& c,
                                 const at::Tensor& L, const at::Tensor& w1, const at::Tensor& b1,
                                 const at::Tensor& w2, const at::Tensor& b2, int64_t q_len,
                                 int64_t k_len, int64_t q_offset, int64_t k_offset, bool causal,
                                 double eps) {
  const char* op = "fire_bias_backward";
  detail::check_fire_bias_backward(op, grad_in, c, L, w1, b1, w2, b2, q_len, k_len, q_offset, eps);
  detail::check_offsets(op, q_offset, k_offset);
  check_values(op, c, L, w1, b1, w2, b2);
  const int64_t heads = w2.size(0), hid = w1.size(0);
  // Layout of the fp64 sums: c, L, w1 (hid), b1 (hid), w2 (heads * hid), b2 (heads).
  const int64_t o_w1 = 2, o_b1 = 2 + hid, o_w2 = 2 + 2 * hid, o_b2 = o_w2 + heads * hid;
  const int64_t np = o_b2 + heads;
  std::vector<double> total(np, 0.0);
  if (heads > 0 && q_len > 0 && k_len > 0) {
    const auto grad = grad_in.to(c.scalar_type()).contiguous();
    const int64_t tasks = (q_len + kFireRows - 1) / kFireRows;
    std::vector<double> partial(tasks * np, 0.0);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, c.scalar_type(), "fire_bias_backward_cpu", [&] {
      using T = at::opmath_type<scalar_t>;
      const auto p = read_params<scalar_t, T>(c, L, w1, b1, w2, b2, eps);
      const scalar_t* g = grad.const_data_ptr<scalar_t>();
      const int64_t plane = q_len * k_len;
      const T sc = static_cast<T>(p.c > 0 ? 1 : (p.c < 0 ? -1 : 0));
      at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
        std::vector<T> G(heads * kFireCols);
        T x[kFireCols], uu[kFireCols], dudc[kFireCols], pre[kFireCols], s[kFireCols],
            gx[kFireCols];
        for (int64_t task = begin; task < end; ++task) {
          double* acc = partial.data() + task * np;
          const int64_t i_end = std::min(q_len, (task + 1) * kFireRows);
          for (int64_t i = task * kFireRows; i < i_end; ++i) {
            const int64_t q_pos = q_offset + i;
            const T n = detail::fire_normalizer(p.c_abs, p.L_abs, q_pos, p.eps);
            const int64_t j_end = row_end(q_pos, k_len, k_offset, causal);
            double row_gx_dudc = 0.0, row_gx_u = 0.0;
            for (int64_t j0 = 0; j0 < j_end; j0 += kFireCols) {
              const int64_t nb = std::min(kFireCols, j_end - j0);
              for (int64_t u = 0; u < kFireCols; ++u) {
                const int64_t d = q_pos - (k_offset + j0 + std::min(u, nb - 1));
                const T ad = static_cast<T>(d < 0 ? -d : d);
                uu[u] = detail::fire_psi(p.c_abs, ad);
                x[u] = uu[u] / n;
                dudc[u] = sc * ad / (p.c_abs * ad + T(1));
                gx[u] = T(0);
              }
              // Upstream gradient of the block; lanes past nb read 0 (they add nothing).
              for (int64_t h = 0; h < heads; ++h) {
                const scalar_t* grow = g + h * plane + i * k_len + j0;
                T* gh = G.data() + h * kFireCols;
                for (int64_t u = 0; u < kFireCols; ++u) gh[u] = u < nb ? static_cast<T>(grow[u]) : T(0);
                T sum = 0;
                for (int64_t u = 0; u < kFireCols; ++u) sum += gh[u];
                acc[o_b2 + h] += static_cast<double>(sum);
              }
              for (int64_t k = 0; k < hid; ++k) {
                const T a = p.w1[k], b = p.b1[k];
                for (int64_t u = 0; u < kFireCols; ++u) {
                  pre[u] = a * x[u] + b;
                  s[u] = T(0);
                }
                for (int64_t h = 0; h < heads; ++h) {
                  const T w = p.w2[h * hid + k];
                  const T* gh = G.data() + h * kFireCols;
                  T sw = 0;
                  for (int64_t u = 0; u < kFireCols; ++u) {
                    s[u] += gh[u] * w;
                    sw += gh[u] * std::max(pre[u], T(0));
                  }
                  acc[o_w2 + h * hid + k] += static_cast<double>(sw);
                }
                T sb = 0, sx = 0;
                for (int64_t u = 0; u < kFireCols; ++u) {
                  const T sk = pre[u] > T(0) ? s[u] : T(0);  // relu'(0) = 0, as torch
                  sb += sk;
                  sx += sk * x[u];
                  gx[u] += sk * a;
                }
                acc[o_b1 + k] += static_cast<double>(sb);
                acc[o_w1 + k] += static_cast<double>(sx);
              }
              T s1 = 0, s2 = 0;
              for (int64_t u = 0; u < kFireCols; ++u) {
                s1 += gx[u] * dudc[u];
                s2 += gx[u] * uu[u];
              }
              row_gx_dudc += static_cast<double>(s1);
              row_gx_u += static_cast<double>(s2);
            }
            // x = u / n: dx/dc = u'(c) / n - u n'(c) / n^2, dx/dL = -u n'(L) / n^2.
            double dn_dc, dn_dL;
            detail::fire_normalizer_derivatives(p.c, p.L, q_pos, &dn_dc, &dn_dL);
            const double nd = static_cast<double>(n);
            acc[0] += row_gx_dudc / nd - row_gx_u * dn_dc / (nd * nd);
            acc[1] -= row_gx_u * dn_dL / (nd * nd);
          }
        }
      });
    });
    for (int64_t t = 0; t < tasks; ++t) {
      for (int64_t k = 0; k < np; ++k) total[k] += partial[t * np + k];
    }
  }
  const auto t = at::tensor(total, at::TensorOptions().dtype(at::kDouble)).to(c.scalar_type());
  return {t[0].clone(), t[1].clone(), t.narrow(0, o_w1, hid).view({hid, 1}).clone(),
          t.narrow(0, o_b1, hid).clone(), t.narrow(0, o_w2, heads * hid).view({heads, hid}).clone(),
          t.narrow(0, o_b2, heads).clone()};
}

}  // namespace
}  // namespace posenc

TORCH_LIBRARY_IMPL(posenc, CPU, m) {
  m.impl("fire_bias", &posenc::fire_bias_cpu);
  m.impl("fire_bias_backward", &posenc::fire_bias_backward_cpu);
}
