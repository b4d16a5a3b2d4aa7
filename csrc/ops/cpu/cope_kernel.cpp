// CoPE on the CPU (formulas in ../cope.h).
//
// Forward: one task per query row i (at::parallel_for over batch x heads x q_len): z_i = e q_i
// (P dot products), then the visible keys from the last one leftwards: gate, running sum p,
// interpolated score, until p reaches P - 1; every key further left takes z_i[P - 1] without
// its gate (gates are >= 0, so its position is clamped too). With a small table (the paper
// clips positions to a small npos_max) a row costs O((P + keys until p = P - 1) * D), not
// O(L * D).
//
// Backward, per row (the same walk recomputed): dz_i[p] collects grad * (1 - w) at floor p and
// grad * w at ceil p (the clamped keys all at P - 1); dp_j = grad_ij (z[ceil] - z[floor]) for
// the unclamped keys; the reverse cumsum's adjoint is a forward cumsum, dg_t = sum_{j <= t}
// dp_j; ds_t = dg_t g_t (1 - g_t). grad_q_i = sum_p dz_i[p] e[p] + scale sum_t ds_t k_t stays
// in the row. ds and dz are kept as (B, H, Lq, Lk) and (B*H*Lq, P) buffers; ds is nonzero
// only on each row's window of unclamped keys. grad_k = scale ds^T q: per (b, h), the rows'
// windows added in order when they are sparse (a small table), else GEMMs per (b, h, key block)
// over fixed query chunks; grad_pos_emb = dz^T q over every row as GEMMs of fixed
// chunks, added in fp64 in a fixed order. Each task writes only its own outputs and BLAS runs
// single-threaded inside a task, so results are bit-identical across runs and thread counts,
// and a row's forward values do not depend on the other rows (a decode call equals the last
// row of the full call bit for bit). Math in fp32 (fp64 for fp64 inputs), running sums of
// gates and of their gradients in fp64.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>
#include <type_traits>
#include <vector>

#include "../cope.h"
#include "blas.h"

namespace posenc {
namespace {

template <typename scalar_t>
using acc_type = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

// grad_k: keys per task, query rows per GEMM. grad_pos_emb: table rows per task, rows per GEMM.
constexpr int64_t kKeyBlock = 128;
constexpr int64_t kRowChunk = 256;
constexpr int64_t kPosBlock = 64;

struct Geometry {
  int64_t batch, heads, q_len, k_len, dim, npos, base;
  double scale;
};

Geometry geometry(const at::Tensor& q, const at::Tensor& k, const at::Tensor& pos_emb,
                  std::optional<double> scale, int64_t q_offset, int64_t k_offset) {
  return {q.size(0), q.size(1), q.size(2), k.size(2), q.size(3), pos_emb.size(0),
          q_offset - k_offset, detail::cope_scale(scale, q.size(3))};
}

// a . b with eight partial sums added in a fixed order: vectorisable without -ffast-math, and
// the same bits for a row whatever else the call computes.
template <typename T>
inline T dot(const T* a, const T* b, int64_t n) {
  constexpr int64_t kLanes = 8;
  T part[kLanes] = {};
  int64_t d = 0;
  for (; d + kLanes <= n; d += kLanes) {
    for (int64_t l = 0; l < kLanes; ++l) part[l] += a[d + l] * b[d + l];
  }
  T s = 0;
  for (; d < n; ++d) s += a[d] * b[d];
  for (int64_t l = 0; l < kLanes; ++l) s += part[l];
  return s;
}

template <typename T>
inline T sigmoid(T x) {
  return T(1) / (T(1) + std::exp(-x));
}

inline int64_t row_grain(const Geometry& G) {
  const int64_t work = std::max<int64_t>(1, (G.npos + G.k_len) * std::max<int64_t>(G.dim, 1));
  return std::max<int64_t>(1, (int64_t{1} << 16) / work);
}

template <typename scalar_t>
void forward_impl(const Geometry& G, const at::Tensor& q, const at::Tensor& k,
                  const at::Tensor& e, at::Tensor& out) {
  using acc_t = acc_type<scalar_t>;
  const acc_t* qp = q.const_data_ptr<acc_t>();
  const acc_t* kp = k.const_data_ptr<acc_t>();
  const acc_t* ep = e.const_data_ptr<acc_t>();
  scalar_t* op = out.mutable_data_ptr<scalar_t>();
  const int64_t D = G.dim, P = G.npos, lim = P - 1;
  const acc_t scale = static_cast<acc_t>(G.scale);
  at::parallel_for(0, G.batch * G.heads * G.q_len, row_grain(G), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> z(P);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t bh = row / G.q_len;
      const int64_t i = row % G.q_len;
      const acc_t* qi = qp + row * D;
      const acc_t* kh = kp + bh * G.k_len * D;
      scalar_t* orow = op + row * G.k_len;
      const int64_t n = detail::cope_visible(G.base, i, G.k_len);
      std::fill(orow + n, orow + G.k_len, scalar_t(0));
      if (n == 0) continue;
      for (int64_t p = 0; p < P; ++p) z[p] = dot(qi, ep + p * D, D);
      double carry = 0.0;
      int64_t j = n - 1;
      bool nan = false;
      for (; j >= 0; --j) {
        carry += static_cast<double>(sigmoid(scale * dot(qi, kh + j * D, D)));
        if (carry >= static_cast<double>(lim)) break;  // key j and all before it: clamped
        if (std::isnan(carry)) {
          nan = true;
          break;
        }
        const auto c = detail::cope_cell(carry);
        const acc_t w = static_cast<acc_t>(c.w);
        const acc_t v = c.w > 0 ? z[c.f + 1] * w + z[c.f] * (acc_t(1) - w) : z[c.f];
        orow[j] = static_cast<scalar_t>(v);
      }
      if (j >= 0) {
        const scalar_t fill =
            nan ? static_cast<scalar_t>(std::numeric_limits<acc_t>::quiet_NaN())
                : static_cast<scalar_t>(z[lim]);
        std::fill(orow, orow + j + 1, fill);
      }
    }
  });
}

// Pass 1: per row, ds (into `ds`, only the row's window [m, n) of unclamped visible keys is
// written; `window` gets m and n), dz (into `dz`) and grad_q.
template <typename scalar_t>
void backward_rows(const Geometry& G, const scalar_t* gp, const at::Tensor& q,
                   const at::Tensor& k, const at::Tensor& e, at::Tensor& ds_t, at::Tensor& dz_t,
                   at::Tensor& grad_q, int64_t* window) {
  using acc_t = acc_type<scalar_t>;
  const acc_t* qp = q.const_data_ptr<acc_t>();
  const acc_t* kp = k.const_data_ptr<acc_t>();
  const acc_t* ep = e.const_data_ptr<acc_t>();
  acc_t* dsp = ds_t.mutable_data_ptr<acc_t>();
  acc_t* dzp = dz_t.mutable_data_ptr<acc_t>();
  scalar_t* gqp = grad_q.mutable_data_ptr<scalar_t>();
  const int64_t D = G.dim, P = G.npos, lim = P - 1;
  const acc_t scale = static_cast<acc_t>(G.scale);
  at::parallel_for(0, G.batch * G.heads * G.q_len, row_grain(G), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> z(P), gate(G.k_len);
    std::vector<double> dz(P), dp(G.k_len), gq(D);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t bh = row / G.q_len;
      const int64_t i = row % G.q_len;
      const acc_t* qi = qp + row * D;
      const acc_t* kh = kp + bh * G.k_len * D;
      const scalar_t* grow = gp + row * G.k_len;
      acc_t* dsrow = dsp + row * G.k_len;
      scalar_t* gqrow = gqp + row * D;
      const int64_t n = detail::cope_visible(G.base, i, G.k_len);
      std::fill(dz.begin(), dz.end(), 0.0);
      std::fill(gq.begin(), gq.end(), 0.0);
      if (n > 0) {
        for (int64_t p = 0; p < P; ++p) z[p] = dot(qi, ep + p * D, D);
      }
      double carry = 0.0;
      int64_t j = n - 1;
      bool nan = false;
      for (; j >= 0; --j) {
        const acc_t g = sigmoid(scale * dot(qi, kh + j * D, D));
        carry += static_cast<double>(g);
        if (carry >= static_cast<double>(lim)) break;
        if (std::isnan(carry)) {
          nan = true;
          break;
        }
        const double gr = static_cast<double>(grow[j]);
        const auto c = detail::cope_cell(carry);
        gate[j] = g;
        dz[c.f] += gr * (1.0 - c.w);
        if (c.w > 0) {
          dz[c.f + 1] += gr * c.w;
          dp[j] = gr * (static_cast<double>(z[c.f + 1]) - static_cast<double>(z[c.f]));
        } else {
          dp[j] = 0.0;
        }
      }
      if (nan) {
        const acc_t v = std::numeric_limits<acc_t>::quiet_NaN();
        std::fill(dsrow, dsrow + n, v);
        std::fill(dzp + row * P, dzp + (row + 1) * P, v);
        std::fill(gqrow, gqrow + D, static_cast<scalar_t>(v));
        window[2 * row] = 0;
        window[2 * row + 1] = n;
        continue;
      }
      // Keys [0, m) are clamped: position P - 1 with weight 1, no gradient to their gates.
      const int64_t m = j + 1;
      window[2 * row] = m;
      window[2 * row + 1] = std::max<int64_t>(n, m);
      double clamped = 0.0;
      for (int64_t t = 0; t < m; ++t) clamped += static_cast<double>(grow[t]);
      if (n > 0) dz[lim] += clamped;
      double dg = 0.0;
      for (int64_t t = m; t < n; ++t) {
        dg += dp[t];
        const double g = static_cast<double>(gate[t]);
        const acc_t s = static_cast<acc_t>(dg * g * (1.0 - g));
        dsrow[t] = s;
        const acc_t* kt = kh + t * D;
        const double sd = static_cast<double>(scale) * static_cast<double>(s);
        for (int64_t d = 0; d < D; ++d) gq[d] += sd * static_cast<double>(kt[d]);
      }
      for (int64_t p = 0; p < P; ++p) {
        const double w = dz[p];
        dzp[row * P + p] = static_cast<acc_t>(w);
        if (w == 0.0) continue;
        const acc_t* ept = ep + p * D;
        for (int64_t d = 0; d < D; ++d) gq[d] += w * static_cast<double>(ept[d]);
      }
      for (int64_t d = 0; d < D; ++d) gqrow[d] = static_cast<scalar_t>(gq[d]);
    }
  });
}

// Pass 2: grad_k[b, h, jb:je] = scale * sum over query chunks of ds[:, jb:je]^T q, in order.
template <typename scalar_t>
void grad_k_impl(const Geometry& G, const at::Tensor& ds_t, const at::Tensor& q,
                 at::Tensor& grad_k) {
  using acc_t = acc_type<scalar_t>;
  const acc_t* dsp = ds_t.const_data_ptr<acc_t>();
  const acc_t* qp = q.const_data_ptr<acc_t>();
  scalar_t* gkp = grad_k.mutable_data_ptr<scalar_t>();
  const int64_t D = G.dim;
  const int64_t n_blocks = (G.k_len + kKeyBlock - 1) / kKeyBlock;
  at::parallel_for(0, G.batch * G.heads * n_blocks, 1, [&](int64_t begin, int64_t end) {
    cpu::SequentialBlas sequential;
    std::vector<acc_t> part(kKeyBlock * D);
    std::vector<double> acc(kKeyBlock * D);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t bh = task / n_blocks;
      const int64_t jb = (task % n_blocks) * kKeyBlock;
      const int64_t nk = std::min(G.k_len, jb + kKeyBlock) - jb;
      std::fill(acc.begin(), acc.begin() + nk * D, 0.0);
      // Query i sees key jb only if base + i >= jb.
      const int64_t first = std::clamp<int64_t>(jb - G.base, 0, G.q_len);
      for (int64_t i0 = first - first % kRowChunk; i0 < G.q_len; i0 += kRowChunk) {
        const int64_t rows = std::min(G.q_len, i0 + kRowChunk) - i0;
        const int64_t r0 = bh * G.q_len + i0;
        cpu::gemm(true, false, nk, D, rows, acc_t(1), dsp + r0 * G.k_len + jb, G.k_len,
                  qp + r0 * D, D, acc_t(0), part.data(), D);
        for (int64_t x = 0; x < nk * D; ++x) acc[x] += static_cast<double>(part[x]);
      }
      scalar_t* dst = gkp + (bh * G.k_len + jb) * D;
      for (int64_t x = 0; x < nk * D; ++x) dst[x] = static_cast<scalar_t>(G.scale * acc[x]);
    }
  });
}

// Pass 2 when the windows are sparse (a small table clamps most keys): per (b, h), the rows in
// order add ds_it q_i to the keys t of their window, in fp64.
template <typename scalar_t>
void grad_k_sparse_impl(const Geometry& G, const at::Tensor& ds_t, const at::Tensor& q,
                        const int64_t* window, at::Tensor& grad_k) {
  using acc_t = acc_type<scalar_t>;
  const acc_t* dsp = ds_t.const_data_ptr<acc_t>();
  const acc_t* qp = q.const_data_ptr<acc_t>();
  scalar_t* gkp = grad_k.mutable_data_ptr<scalar_t>();
  const int64_t D = G.dim;
  at::parallel_for(0, G.batch * G.heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<double> acc(G.k_len * D);
    for (int64_t bh = begin; bh < end; ++bh) {
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t i = 0; i < G.q_len; ++i) {
        const int64_t row = bh * G.q_len + i;
        const acc_t* qi = qp + row * D;
        const acc_t* dsrow = dsp + row * G.k_len;
        for (int64_t t = window[2 * row]; t < window[2 * row + 1]; ++t) {
          const double w = static_cast<double>(dsrow[t]);
          double* a = acc.data() + t * D;
          for (int64_t d = 0; d < D; ++d) a[d] += w * static_cast<double>(qi[d]);
        }
      }
      scalar_t* dst = gkp + bh * G.k_len * D;
      for (int64_t x = 0; x < G.k_len * D; ++x) dst[x] = static_cast<scalar_t>(G.scale * acc[x]);
    }
  });
}

// The dense GEMM pass reads every ds entry: zero the entries outside each row's window.
template <typename scalar_t>
void zero_outside_windows(const Geometry& G, at::Tensor& ds_t, const int64_t* window) {
  using acc_t = acc_type<scalar_t>;
  acc_t* dsp = ds_t.mutable_data_ptr<acc_t>();
  at::parallel_for(0, G.batch * G.heads * G.q_len, row_grain(G), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      acc_t* r = dsp + row * G.k_len;
      std::fill(r, r + window[2 * row], acc_t(0));
      std::fill(r + window[2 * row + 1], r + G.k_len, acc_t(0));
    }
  });
}

// Pass 3: grad_pos_emb = dz^T q over all B * H * Lq rows: tasks are (table block, row group);
// a group adds its row chunks in order in fp64, then the groups are added in order.
template <typename scalar_t>
void grad_emb_impl(const Geometry& G, const at::Tensor& dz_t, const at::Tensor& q,
                   at::Tensor& grad_emb) {
  using acc_t = acc_type<scalar_t>;
  const acc_t* dzp = dz_t.const_data_ptr<acc_t>();
  const acc_t* qp = q.const_data_ptr<acc_t>();
  scalar_t* gep = grad_emb.mutable_data_ptr<scalar_t>();
  const int64_t D = G.dim, P = G.npos;
  const int64_t N = G.batch * G.heads * G.q_len;
  const int64_t n_chunks = (N + kRowChunk - 1) / kRowChunk;
  // Groups from the shapes only (never the thread count); partial sums stay under 2^23 doubles.
  const int64_t max_groups = std::max<int64_t>(1, (int64_t{1} << 23) / std::max<int64_t>(1, P * D));
  const int64_t groups = std::clamp<int64_t>(std::min<int64_t>(n_chunks / 4, max_groups), 1, 16);
  const int64_t per_group = (n_chunks + groups - 1) / groups;
  const int64_t n_pblocks = (P + kPosBlock - 1) / kPosBlock;
  std::vector<double> partial(groups * P * D, 0.0);
  at::parallel_for(0, groups * n_pblocks, 1, [&](int64_t begin, int64_t end) {
    cpu::SequentialBlas sequential;
    std::vector<acc_t> part(kPosBlock * D);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t grp = task / n_pblocks;
      const int64_t p0 = (task % n_pblocks) * kPosBlock;
      const int64_t np = std::min(P, p0 + kPosBlock) - p0;
      double* acc = partial.data() + (grp * P + p0) * D;
      const int64_t c1 = std::min(n_chunks, (grp + 1) * per_group);
      for (int64_t c = grp * per_group; c < c1; ++c) {
        const int64_t r0 = c * kRowChunk;
        const int64_t rows = std::min(N, r0 + kRowChunk) - r0;
        cpu::gemm(true, false, np, D, rows, acc_t(1), dzp + r0 * P + p0, P, qp + r0 * D, D,
                  acc_t(0), part.data(), D);
        for (int64_t x = 0; x < np * D; ++x) acc[x] += static_cast<double>(part[x]);
      }
    }
  });
  at::parallel_for(0, P * D, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t x = begin; x < end; ++x) {
      double s = 0.0;
      for (int64_t grp = 0; grp < groups; ++grp) s += partial[grp * P * D + x];
      gep[x] = static_cast<scalar_t>(s);
    }
  });
}

at::Tensor cope_scores_cpu(const at::Tensor& q_in, const at::Tensor& k_in,
                           const at::Tensor& pos_emb_in, std::optional<double> scale,
                           int64_t q_offset, int64_t k_offset) {
  detail::check_cope_scores("cope_scores", q_in, k_in, pos_emb_in, scale, q_offset, k_offset);
  auto out = detail::empty_output("cope_scores", "k",
                                  {q_in.size(0), q_in.size(1), q_in.size(2), k_in.size(2)},
                                  q_in.options());
  if (out.numel() == 0) return out;
  const Geometry G = geometry(q_in, k_in, pos_emb_in, scale, q_offset, k_offset);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q_in.scalar_type(), "cope_scores_cpu", [&] {
    const auto acc = c10::CppTypeToScalarType<acc_type<scalar_t>>::value;
    const auto q = q_in.to(acc).contiguous();
    const auto k = k_in.to(acc).contiguous();
    const auto e = pos_emb_in.to(acc).contiguous();
    forward_impl<scalar_t>(G, q, k, e, out);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> cope_scores_backward_cpu(
    const at::Tensor& grad_in, const at::Tensor& q_in, const at::Tensor& k_in,
    const at::Tensor& pos_emb_in, std::optional<double> scale, int64_t q_offset,
    int64_t k_offset) {
  detail::check_cope_scores_backward("cope_scores_backward", grad_in, q_in, k_in, pos_emb_in,
                                     scale, q_offset, k_offset);
  if (grad_in.numel() == 0 || q_in.size(3) == 0) {
    return {at::zeros(q_in.sizes(), q_in.options()), at::zeros(k_in.sizes(), k_in.options()),
            at::zeros(pos_emb_in.sizes(), pos_emb_in.options())};
  }
  const Geometry G = geometry(q_in, k_in, pos_emb_in, scale, q_offset, k_offset);
  auto grad_q = at::empty(q_in.sizes(), q_in.options());
  auto grad_k = at::empty(k_in.sizes(), k_in.options());
  auto grad_emb = at::empty(pos_emb_in.sizes(), pos_emb_in.options());
  const auto grad = grad_in.to(q_in.scalar_type()).contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q_in.scalar_type(), "cope_scores_backward_cpu", [&] {
    const auto acc = c10::CppTypeToScalarType<acc_type<scalar_t>>::value;
    const auto q = q_in.to(acc).contiguous();
    const auto k = k_in.to(acc).contiguous();
    const auto e = pos_emb_in.to(acc).contiguous();
    auto ds = detail::empty_output("cope_scores_backward", "grad",
                                   {G.batch, G.heads, G.q_len, G.k_len}, q.options());
    auto dz = detail::empty_output("cope_scores_backward", "pos_emb",
                                   {G.batch * G.heads * G.q_len, G.npos}, q.options());
    std::vector<int64_t> window(2 * G.batch * G.heads * G.q_len);
    backward_rows<scalar_t>(G, grad.const_data_ptr<scalar_t>(), q, k, e, ds, dz, grad_q,
                            window.data());
    // The windows decide the path (the data, never the thread count): the GEMM pass when at
    // least 1/8 of the (q, k) pairs are unclamped, else the sparse sums (a GEMM does ~10x more
    // multiply-adds per second than the scalar loop, and it also reads every zero).
    int64_t unclamped = 0;
    for (size_t r = 0; r < window.size(); r += 2) unclamped += window[r + 1] - window[r];
    if (unclamped * 8 >= G.batch * G.heads * G.q_len * G.k_len) {
      zero_outside_windows<scalar_t>(G, ds, window.data());
      grad_k_impl<scalar_t>(G, ds, q, grad_k);
    } else {
      grad_k_sparse_impl<scalar_t>(G, ds, q, window.data(), grad_k);
    }
    grad_emb_impl<scalar_t>(G, dz, q, grad_emb);
  });
  return {grad_q, grad_k, grad_emb};
}

}  // namespace
}  // namespace posenc

TORCH_LIBRARY_IMPL(posenc, CPU, m) {
  m.impl("cope_scores", &posenc::cope_scores_cpu);
  m.impl("cope_scores_backward", &posenc::cope_scores_backward_cpu);
}
