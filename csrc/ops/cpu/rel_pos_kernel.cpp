#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "../rel_pos.h"

namespace posenc {
namespace {

// Dot product with a few independent partial sums in a fixed order: vectorisable without
// -ffast-math, and deterministic.
template <typename acc_t, typename scalar_t>
inline acc_t dot(const scalar_t* a, const scalar_t* b, int64_t n) {
  constexpr int64_t kLanes = 8;
  acc_t part[kLanes] = {};
  int64_t e = 0;
  for (; e + kLanes <= n; e += kLanes) {
    for (int64_t l = 0; l < kLanes; ++l) {
      part[l] += static_cast<acc_t>(a[e + l]) * static_cast<acc_t>(b[e + l]);
    }
  }
  acc_t s = 0;
  for (; e < n; ++e) s += static_cast<acc_t>(a[e]) * static_cast<acc_t>(b[e]);
  for (int64_t l = 0; l < kLanes; ++l) s += part[l];
  return s;
}

template <typename scalar_t>
inline void axpy(double* acc, double s, const scalar_t* x, int64_t n) {
  for (int64_t e = 0; e < n; ++e) acc[e] += s * static_cast<double>(x[e]);
}

template <typename scalar_t>
inline double sum(const scalar_t* g, int64_t begin, int64_t end) {
  double s = 0.0;
  for (int64_t j = begin; j < end; ++j) s += static_cast<double>(g[j]);
  return s;
}

using Geometry = detail::RelPosGeometry;


at::Tensor rel_pos_scores_forward_kernel(const at::Tensor& q_in, const at::Tensor& rel_emb_in,
                                         int64_t q_offset, int64_t k_offset, int64_t k_len,
                                         std::optional<int64_t> max_distance) {
  detail::check_rel_pos_scores("rel_pos_scores", q_in, rel_emb_in, k_len, max_distance);
  auto out = at::empty({q_in.size(0), q_in.size(1), q_in.size(2), k_len}, q_in.options());
  if (out.numel() == 0) return out;
  const auto q = q_in.contiguous();
  const auto rel_emb = rel_emb_in.contiguous();
  const Geometry G = detail::rel_pos_geometry(q, rel_emb, q_offset, k_offset, k_len, max_distance);
  const int64_t n_rows = G.batch * G.heads * G.q_len;
  // Work per query row: k_len stores and at most min(k_len, 2M + 1) dot products.
  const int64_t row_work = G.k_len + std::min(G.k_len, 2 * G.m + 1) * G.dim;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "rel_pos_scores_cpu", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const scalar_t* qp = q.const_data_ptr<scalar_t>();
    const scalar_t* ep = rel_emb.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, n_rows, detail::row_grain(row_work), [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t i = row % G.q_len;
        const int64_t h = (row / G.q_len) % G.heads;
        const scalar_t* qv = qp + row * G.dim;
        const scalar_t* emb = ep + h * G.rows * G.dim;
        scalar_t* orow = op + row * G.k_len;
        const int64_t d0 = G.base + i;
        const auto [j1, j2] = detail::rel_pos_span(d0, G.k_len, G.m);
        // Clipped keys share one row of rel_emb: one dot product, then fill.
        if (j1 > 0) {
          const auto v = static_cast<scalar_t>(dot<opmath_t>(qv, emb + (G.c + G.m) * G.dim, G.dim));
          std::fill(orow, orow + j1, v);
        }
        for (int64_t j = j1; j < j2; ++j) {
          orow[j] = static_cast<scalar_t>(dot<opmath_t>(qv, emb + (G.c + d0 - j) * G.dim, G.dim));
        }
        if (j2 < G.k_len) {
          const auto v = (G.m == 0 && j1 > 0)
                             ? orow[0]
                             : static_cast<scalar_t>(dot<opmath_t>(qv, emb + (G.c - G.m) * G.dim, G.dim));
          std::fill(orow + j2, orow + G.k_len, v);
        }
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> rel_pos_scores_backward_kernel(
    const at::Tensor& grad_in, const at::Tensor& q_in, const at::Tensor& rel_emb_in,
    int64_t q_offset, int64_t k_offset, int64_t k_len, std::optional<int64_t> max_distance) {
  detail::check_rel_pos_scores_backward("rel_pos_scores_backward", grad_in, q_in, rel_emb_in,
                                        k_len, max_distance);
  auto grad_q = at::zeros(q_in.sizes(), q_in.options());
  auto grad_emb = at::zeros(rel_emb_in.sizes(), rel_emb_in.options());
  if (grad_in.numel() == 0 || q_in.size(3) == 0) return {grad_q, grad_emb};
  const auto grad = grad_in.to(q_in.scalar_type()).contiguous();
  const auto q = q_in.contiguous();
  const auto rel_emb = rel_emb_in.contiguous();
  const Geometry G = detail::rel_pos_geometry(q, rel_emb, q_offset, k_offset, k_len, max_distance);
  const int64_t n_rows = G.batch * G.heads * G.q_len;
  const int64_t row_work = G.k_len + std::min(G.k_len, 2 * G.m + 1) * G.dim;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "rel_pos_scores_backward_cpu", [&] {
    const scalar_t* gp = grad.const_data_ptr<scalar_t>();
    const scalar_t* qp = q.const_data_ptr<scalar_t>();
    const scalar_t* ep = rel_emb.const_data_ptr<scalar_t>();

    // grad_q[b,h,i,:] = sum_j g[b,h,i,j] rel_emb[h,row(i,j),:]: reduce g over the keys that
    // share a row, then one axpy per distinct row.
    scalar_t* gqp = grad_q.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, n_rows, detail::row_grain(row_work), [&](int64_t begin, int64_t end) {
      std::vector<double> acc(G.dim);
      for (int64_t row = begin; row < end; ++row) {
        const int64_t i = row % G.q_len;
        const int64_t h = (row / G.q_len) % G.heads;
        const scalar_t* grow = gp + row * G.k_len;
        const scalar_t* emb = ep + h * G.rows * G.dim;
        const int64_t d0 = G.base + i;
        const auto [j1, j2] = detail::rel_pos_span(d0, G.k_len, G.m);
        std::fill(acc.begin(), acc.end(), 0.0);
        const double s_top = sum(grow, 0, j1);
        const double s_bottom = sum(grow, j2, G.k_len);
        if (G.m == 0) {
          if (j1 > 0 || j2 < G.k_len) axpy(acc.data(), s_top + s_bottom, emb + G.c * G.dim, G.dim);
        } else {
          if (j1 > 0) axpy(acc.data(), s_top, emb + (G.c + G.m) * G.dim, G.dim);
          if (j2 < G.k_len) axpy(acc.data(), s_bottom, emb + (G.c - G.m) * G.dim, G.dim);
        }
        for (int64_t j = j1; j < j2; ++j) {
          axpy(acc.data(), static_cast<double>(grow[j]), emb + (G.c + d0 - j) * G.dim, G.dim);
        }
        scalar_t* out = gqp + row * G.dim;
        for (int64_t e = 0; e < G.dim; ++e) out[e] = static_cast<scalar_t>(acc[e]);
      }
    });

    // grad_rel_emb[h,r,:] = sum over (b,i,j) with row(i,j) = r of g[b,h,i,j] q[b,h,i,:].
    // One task per (head, block of rows) owns its outputs: no atomics. Every element is
    // summed over (b, i) in order whatever the blocking, so the result does not depend on
    // the thread count either.
    scalar_t* gep = grad_emb.mutable_data_ptr<scalar_t>();
    const int64_t target_tasks = 4 * static_cast<int64_t>(at::get_num_threads());
    const int64_t blocks_per_head =
        std::clamp<int64_t>((target_tasks + G.heads - 1) / G.heads, 1, G.rows);
    const int64_t block = (G.rows + blocks_per_head - 1) / blocks_per_head;
    const int64_t n_blocks = (G.rows + block - 1) / block;
    const int64_t top = G.c + G.m;
    const int64_t bottom = G.c - G.m;
    at::parallel_for(0, G.heads * n_blocks, 1, [&](int64_t begin, int64_t end) {
      std::vector<double> acc;
      for (int64_t task = begin; task < end; ++task) {
        const int64_t h = task / n_blocks;
        const int64_t r0 = (task % n_blocks) * block;
        const int64_t r1 = std::min(G.rows, r0 + block);
        acc.assign((r1 - r0) * G.dim, 0.0);
        auto in_block = [&](int64_t r) { return r0 <= r && r < r1; };
        for (int64_t b = 0; b < G.batch; ++b) {
          for (int64_t i = 0; i < G.q_len; ++i) {
            const int64_t row = (b * G.heads + h) * G.q_len + i;
            const scalar_t* grow = gp + row * G.k_len;
            const scalar_t* qv = qp + row * G.dim;
            const int64_t d0 = G.base + i;
            const auto [j1, j2] = detail::rel_pos_span(d0, G.k_len, G.m);
            if (G.m == 0) {
              if (in_block(G.c) && (j1 > 0 || j2 < G.k_len)) {
                const double s = sum(grow, 0, j1) + sum(grow, j2, G.k_len);
                axpy(acc.data() + (G.c - r0) * G.dim, s, qv, G.dim);
              }
            } else {
              if (j1 > 0 && in_block(top)) {
                axpy(acc.data() + (top - r0) * G.dim, sum(grow, 0, j1), qv, G.dim);
              }
              if (j2 < G.k_len && in_block(bottom)) {
                axpy(acc.data() + (bottom - r0) * G.dim, sum(grow, j2, G.k_len), qv, G.dim);
              }
            }
            // Unclipped keys j in [j1, j2) use row c + d0 - j; keep those inside [r0, r1).
            const int64_t ja = std::max(j1, G.c + d0 - r1 + 1);
            const int64_t jb = std::min(j2, G.c + d0 - r0 + 1);
            for (int64_t j = ja; j < jb; ++j) {
              axpy(acc.data() + (G.c + d0 - j - r0) * G.dim, static_cast<double>(grow[j]), qv,
                   G.dim);
            }
          }
        }
        scalar_t* out = gep + (h * G.rows + r0) * G.dim;
        for (int64_t e = 0; e < (r1 - r0) * G.dim; ++e) out[e] = static_cast<scalar_t>(acc[e]);
      }
    });
  });
  return {grad_q, grad_emb};
}

}  // namespace
}  // namespace posenc

TORCH_LIBRARY_IMPL(posenc, CPU, m) {
  m.impl("rel_pos_scores", &posenc::rel_pos_scores_forward_kernel);
  m.impl("rel_pos_scores_backward", &posenc::rel_pos_scores_backward_kernel);
}
