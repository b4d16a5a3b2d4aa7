// Relative position scores on the CPU as GEMMs.
//
// Query i and key j use rel_emb row c + clamp(d0(i) - j, -M, M), d0(i) = base + i. A tile of
// queries [i0, i1) and a block of keys [jb, je) reach one contiguous range of rows, the
// window. With the table flipped along its rows (flipped row p = row 2c - p), the window is
// contiguous in decreasing distance, so S = q_tile · windowᵀ (one GEMM into a scratch in
// cache) holds, in row t, the scores of consecutive keys at consecutive columns: output row
// i0 + t is a copy of S[t, off(t) + j] with off(t) falling by one per row, and clipped keys
// take the value of the edge column. The backward runs the same tiling the other way.
//
// The forward GEMM is band_gemm (rel_pos_gemm.h): each score is one fixed FMA chain, so a
// query's scores do not depend on the tiling, and a call for a block of queries or keys
// equals the matching part of the full call bit for bit (as the direct kernel did). The
// backward uses the BLAS: its gradients are deterministic but may differ from a call on
// other shapes by rounding. Every summation order is fixed by the shapes alone (tiles, key
// blocks, row blocks are constants), each task writes only its own outputs, and BLAS runs
// single-threaded in each task, so results are bit-identical for any thread count. As with
// any GEMM formulation, a non-finite value in q or rel_emb can reach gradient entries of
// neighbours in its tile (the zeros of the scratch multiply it) that an element-wise gather
// would leave finite.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <vector>

#include "../rel_pos.h"
#include "blas.h"
#include "rel_pos_gemm.h"

namespace posenc {
namespace {

using Geometry = detail::RelPosGeometry;

// Queries per forward / grad_q tile and keys per block: the scratch, kTileQ x (kTileK +
// kTileQ - 1) floats, and the window stay in L2. Fixed, so results do not depend on threads.
constexpr int64_t kTileQ = 64;
constexpr int64_t kTileK = 512;
// grad_rel_emb: distances per task and queries per GEMM (its inner dimension).
constexpr int64_t kRowBlock = 128;
constexpr int64_t kTileQEmb = 128;

// GEMM type: fp32 for fp32/fp16/bf16, fp64 for fp64.
template <typename scalar_t>
using acc_type = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

template <typename dst_t, typename src_t>
inline void convert_run(dst_t* dst, const src_t* src, int64_t n) {
  if constexpr (std::is_same_v<dst_t, src_t>) {
    if (n > 0) std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(dst_t));
  } else {
    for (int64_t k = 0; k < n; ++k) dst[k] = static_cast<dst_t>(src[k]);
  }
}

// Sum of a run in fp64 with eight partial sums in a fixed order (vectorisable without
// -ffast-math): the clipped keys of a row can number k_len.
template <typename scalar_t>
inline double sum_run(const scalar_t* g, int64_t n) {
  constexpr int64_t kLanes = 8;
  double part[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    for (int64_t l = 0; l < kLanes; ++l) part[l] += static_cast<double>(g[j + l]);
  }
  double s = 0.0;
  for (; j < n; ++j) s += static_cast<double>(g[j]);
  for (int64_t l = 0; l < kLanes; ++l) s += part[l];
  return s;
}

// Rows of rel_emb a (query tile, key block) reads: [r_hi - width + 1, r_hi], scratch column
// w standing for row r_hi - w. width 0: every key of the block is masked (causal).
struct Window {
  int64_t r_hi;
  int64_t width;
};

inline Window tile_window(const Geometry& G, bool causal, int64_t i0, int64_t i1, int64_t jb,
                          int64_t je) {
  const int64_t d_max = G.base + i1 - 1 - jb;
  int64_t d_min = G.base + i0 - (je - 1);
  if (causal) {
    if (d_max < 0) return {0, 0};
    d_min = std::max<int64_t>(d_min, 0);
  }
  const int64_t hi = G.c + detail::rel_pos_clamp(d_max, -G.m, G.m);
  const int64_t lo = G.c + detail::rel_pos_clamp(d_min, -G.m, G.m);
  return {hi, hi - lo + 1};
}

// Keys of query row d0 within a block [jb, je), in order: [jb, top) clipped to row c + M,
// [top, copy) unclipped (row c + d0 - j), [copy, bottom) clipped to row c - M, [bottom, je)
// after the query and masked (causal only).
struct RowKeys {
  int64_t top, copy, bottom;
};

inline RowKeys row_keys(const Geometry& G, bool causal, int64_t d0, int64_t jb, int64_t je) {
  const auto span = detail::rel_pos_span(d0, G.k_len, G.m);
  // Keys j <= d0 have k_pos <= q_pos; with M >= 0 the keys clipped to c - M all come after.
  const int64_t visible = detail::rel_pos_visible(d0, G.k_len, causal);
  const int64_t top = detail::rel_pos_clamp(span.j1, jb, je);
  const int64_t copy = detail::rel_pos_clamp(std::min(span.j2, visible), top, je);
  const int64_t bottom = detail::rel_pos_clamp(visible, copy, je);
  return {top, copy, bottom};
}

// The scores of a row segment from fp32 scratch: vectorised rounding for fp16/bf16.
template <typename scalar_t, typename acc_t>
inline void store_scores(scalar_t* dst, const acc_t* src, int64_t n) {
  if constexpr (std::is_same_v<scalar_t, c10::Half> || std::is_same_v<scalar_t, c10::BFloat16>) {
    if (n > 0) POSENC_CPU_DISPATCH(round_floats, src, dst, n);
  } else {
    convert_run(dst, src, n);
  }
}

// flipped_t: (heads, D, R), flipped_t[h, k, p] = rel_emb[h, 2c - p, k], so that a window is a
// column range (band_gemm's b).
template <typename scalar_t>
void forward_impl(const Geometry& G, bool causal, const at::Tensor& q,
                  const at::Tensor& flipped_t, at::Tensor& out) {
  using acc_t = acc_type<scalar_t>;
  const acc_t* qp = q.const_data_ptr<acc_t>();
  const acc_t* fp = flipped_t.const_data_ptr<acc_t>();
  scalar_t* op = out.mutable_data_ptr<scalar_t>();
  const int64_t D = G.dim;
  const int64_t n_tiles = (G.q_len + kTileQ - 1) / kTileQ;
  const int64_t scratch_len = kTileQ * (std::min(kTileK, G.k_len) + kTileQ - 1);
  at::parallel_for(0, G.batch * G.heads * n_tiles, 1, [&](int64_t begin, int64_t end) {
    auto scratch_t = at::empty({scratch_len + D * detail::kBandPanel}, q.options());
    acc_t* s = scratch_t.mutable_data_ptr<acc_t>();
    acc_t* pack = s + scratch_len;
    int64_t col_lo[kTileQ], col_hi[kTileQ];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t bh = task / n_tiles;
      const int64_t h = bh % G.heads;
      const int64_t i0 = (task % n_tiles) * kTileQ;
      const int64_t i1 = std::min(G.q_len, i0 + kTileQ);
      const acc_t* qt = qp + (bh * G.q_len + i0) * D;
      const acc_t* fh = fp + h * D * G.rows;
      scalar_t* ot = op + (bh * G.q_len + i0) * G.k_len;
      for (int64_t jb = 0; jb < G.k_len; jb += kTileK) {
        const int64_t je = std::min(G.k_len, jb + kTileK);
        const Window w = tile_window(G, causal, i0, i1, jb, je);
        if (w.width > 0) {
          // Columns row t reads: the edges if it has clipped keys, else its unclipped run.
          for (int64_t t = 0; t < i1 - i0; ++t) {
            const int64_t d0 = G.base + i0 + t;
            const RowKeys k = row_keys(G, causal, d0, jb, je);
            const int64_t off = w.r_hi - G.c - d0;
            int64_t lo = w.width, hi = 0;
            if (k.top > jb) lo = 0, hi = 1;
            if (k.copy > k.top) lo = std::min(lo, off + k.top), hi = std::max(hi, off + k.copy);
            if (k.bottom > k.copy) lo = std::min(lo, w.width - 1), hi = w.width;
            col_lo[t] = lo;
            col_hi[t] = hi;
          }
          POSENC_CPU_DISPATCH(band_gemm, qt, D, i1 - i0, fh + (2 * G.c - w.r_hi), G.rows,
                              w.width, D, col_lo, col_hi, pack, s, w.width);
        }
        for (int64_t t = 0; t < i1 - i0; ++t) {
          const int64_t d0 = G.base + i0 + t;
          const RowKeys k = row_keys(G, causal, d0, jb, je);
          const acc_t* srow = s + t * w.width;
          scalar_t* orow = ot + t * G.k_len;
          if (k.top > jb) {
            std::fill(orow + jb, orow + k.top, static_cast<scalar_t>(srow[w.r_hi - G.c - G.m]));
          }
          store_scores(orow + k.top, srow + (w.r_hi - G.c - d0 + k.top), k.copy - k.top);
          if (k.bottom > k.copy) {
            std::fill(orow + k.copy, orow + k.bottom,
                      static_cast<scalar_t>(srow[w.r_hi - G.c + G.m]));
          }
          std::fill(orow + k.bottom, orow + je, scalar_t(0));
        }
      }
    }
  });
}

// Pass 1 of the backward: per (b, h, query tile), the gradient's diagonals scattered into a
// window-shaped scratch (clipped keys summed into the edge columns), then grad_q_tile =
// scratch · window, one GEMM per key block, the blocks added in order in fp64 (a row can
// have 10^5 keys; one fp32 GEMM sums at most kTileK + kTileQ - 1). Also keeps each query
// row's fp64 sums over the keys clipped to c + M (`top`) and c - M (`bottom`) for pass 2;
// with M = 0 both edges are row c and `top` holds the total.
template <typename scalar_t>
void grad_q_impl(const Geometry& G, bool causal, const scalar_t* gp, const at::Tensor& flipped,
                 at::Tensor& grad_q, double* top, double* bottom) {
  using acc_t = acc_type<scalar_t>;
  const acc_t* fp = flipped.const_data_ptr<acc_t>();
  scalar_t* gqp = grad_q.mutable_data_ptr<scalar_t>();
  const int64_t D = G.dim;
  const int64_t n_tiles = (G.q_len + kTileQ - 1) / kTileQ;
  const int64_t scratch_len = kTileQ * (std::min(kTileK, G.k_len) + kTileQ - 1);
  at::parallel_for(0, G.batch * G.heads * n_tiles, 1, [&](int64_t begin, int64_t end) {
    cpu::SequentialBlas sequential;
    auto buf = at::empty({scratch_len + kTileQ * D}, flipped.options());
    acc_t* s = buf.mutable_data_ptr<acc_t>();
    acc_t* part = s + scratch_len;
    std::vector<double> gq(kTileQ * D);
    double edge[2][kTileQ];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t bh = task / n_tiles;
      const int64_t h = bh % G.heads;
      const int64_t i0 = (task % n_tiles) * kTileQ;
      const int64_t rows = std::min(G.q_len, i0 + kTileQ) - i0;
      const int64_t row0 = bh * G.q_len + i0;
      const scalar_t* gt = gp + row0 * G.k_len;
      const acc_t* fh = fp + h * G.rows * D;
      std::fill(gq.begin(), gq.begin() + rows * D, 0.0);
      std::fill(&edge[0][0], &edge[0][0] + 2 * kTileQ, 0.0);
      for (int64_t jb = 0; jb < G.k_len; jb += kTileK) {
        const int64_t je = std::min(G.k_len, jb + kTileK);
        const Window w = tile_window(G, causal, i0, i0 + rows, jb, je);
        if (w.width == 0) continue;
        std::fill(s, s + rows * w.width, acc_t(0));
        for (int64_t t = 0; t < rows; ++t) {
          const int64_t d0 = G.base + i0 + t;
          const RowKeys k = row_keys(G, causal, d0, jb, je);
          const scalar_t* grow = gt + t * G.k_len;
          acc_t* srow = s + t * w.width;
          convert_run(srow + (w.r_hi - G.c - d0 + k.top), grow + k.top, k.copy - k.top);
          const double st = sum_run(grow + jb, k.top - jb);
          const double sb = sum_run(grow + k.copy, k.bottom - k.copy);
          if (G.m == 0) {
            if (k.top > jb || k.bottom > k.copy) srow[0] = static_cast<acc_t>(st + sb);
            edge[0][t] += st + sb;
          } else {
            if (k.top > jb) srow[w.r_hi - G.c - G.m] = static_cast<acc_t>(st);
            if (k.bottom > k.copy) srow[w.r_hi - G.c + G.m] = static_cast<acc_t>(sb);
            edge[0][t] += st;
            edge[1][t] += sb;
          }
        }
        cpu::gemm(false, false, rows, D, w.width, acc_t(1), s, w.width,
                  fh + (2 * G.c - w.r_hi) * D, D, acc_t(0), part, D);
        for (int64_t e = 0; e < rows * D; ++e) gq[e] += static_cast<double>(part[e]);
      }
      convert_run(gqp + row0 * D, gq.data(), rows * D);
      for (int64_t t = 0; t < rows; ++t) {
        top[row0 + t] = edge[0][t];
        bottom[row0 + t] = edge[1][t];
      }
    }
  });
}

// Pass 2: grad_rel_emb. A task owns one head's rows for a block of up to kRowBlock unclipped
// distances (|d| < M; d >= 0 when causal) and adds, over (b, query tile) in order,
// scratchᵀ · q_tile with the scratch holding the gradient at those distances (one fp32 GEMM
// sums kTileQEmb queries; the tiles are added in fp64, as a row sums B * Lq terms); one more
// task per head adds the edge rows c +- M from pass 1's sums, in fp64. No task writes
// another's rows.
template <typename scalar_t>
void grad_emb_impl(const Geometry& G, bool causal, const scalar_t* gp, const at::Tensor& q,
                   const double* top, const double* bottom, at::Tensor& grad_emb) {
  using acc_t = acc_type<scalar_t>;
  const acc_t* qp = q.const_data_ptr<acc_t>();
  scalar_t* gep = grad_emb.mutable_data_ptr<scalar_t>();
  const int64_t D = G.dim;
  // Distances present: base - (k_len - 1) .. base + q_len - 1.
  const int64_t d_lo = std::max({-G.m + 1, G.base - G.k_len + 1, causal ? int64_t{0} : -G.m + 1});
  const int64_t d_hi = std::min(G.m - 1, G.base + G.q_len - 1);
  const int64_t n_blocks = d_hi >= d_lo ? (d_hi - d_lo + kRowBlock) / kRowBlock : 0;
  const bool has_top = G.base + G.q_len - 1 >= G.m;  // key 0 of the last query clips
  const bool has_bottom = !causal && G.base - (G.k_len - 1) <= -G.m;  // last key of query 0
  const bool has_edges = has_top || has_bottom;
  const int64_t per_head = n_blocks + (has_edges ? 1 : 0);
  const int64_t n_tiles = (G.q_len + kTileQEmb - 1) / kTileQEmb;
  at::parallel_for(0, G.heads * per_head, 1, [&](int64_t begin, int64_t end) {
    cpu::SequentialBlas sequential;
    auto buf = at::empty({kTileQEmb * kRowBlock + kRowBlock * D}, q.options());
    acc_t* s = buf.mutable_data_ptr<acc_t>();
    acc_t* part = s + kTileQEmb * kRowBlock;
    std::vector<double> acc(kRowBlock * D);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t h = task / per_head;
      const int64_t blk = task % per_head;
      scalar_t* eh = gep + h * G.rows * D;
      if (blk == n_blocks) {
        // Edge rows: sum over (b, i), in order, of the clipped sums times q.
        auto edge_row = [&](const double* sums, int64_t row) {
          std::fill(acc.begin(), acc.begin() + D, 0.0);
          for (int64_t b = 0; b < G.batch; ++b) {
            const int64_t row0 = (b * G.heads + h) * G.q_len;
            for (int64_t i = 0; i < G.q_len; ++i) {
              const double w = sums[row0 + i];
              const acc_t* qi = qp + (row0 + i) * D;
              for (int64_t e = 0; e < D; ++e) acc[e] += w * static_cast<double>(qi[e]);
            }
          }
          convert_run(eh + row * D, acc.data(), D);
        };
        if (G.m == 0) {
          edge_row(top, G.c);
        } else {
          if (has_top) edge_row(top, G.c + G.m);
          if (has_bottom) edge_row(bottom, G.c - G.m);
        }
        continue;
      }
      // Distances bhi, bhi - 1, ..., blo: scratch column u is distance bhi - u.
      const int64_t bhi = d_hi - blk * kRowBlock;
      const int64_t blo = std::max(d_lo, bhi - kRowBlock + 1);
      const int64_t nu = bhi - blo + 1;
      bool first = true;
      std::fill(acc.begin(), acc.begin() + nu * D, 0.0);
      for (int64_t b = 0; b < G.batch; ++b) {
        const int64_t bh = b * G.heads + h;
        for (int64_t tile = 0; tile < n_tiles; ++tile) {
          const int64_t i0 = tile * kTileQEmb;
          const int64_t i1 = std::min(G.q_len, i0 + kTileQEmb);
          // Query i reads keys d0 - bhi .. d0 - blo; keep the rows where some is a key.
          const int64_t t_lo = std::max<int64_t>(0, blo - G.base - i0);
          const int64_t t_hi = std::min<int64_t>(i1 - i0, G.k_len - 1 + bhi - G.base - i0 + 1);
          if (t_hi <= t_lo) continue;
          const int64_t n = t_hi - t_lo;
          std::fill(s, s + n * nu, acc_t(0));
          for (int64_t t = t_lo; t < t_hi; ++t) {
            const int64_t d0 = G.base + i0 + t;
            // column u is key j = d0 - bhi + u
            const int64_t u0 = std::max<int64_t>(0, bhi - d0);
            const int64_t u1 = std::min<int64_t>(nu, G.k_len + bhi - d0);
            convert_run(s + (t - t_lo) * nu + u0,
                        gp + (bh * G.q_len + i0 + t) * G.k_len + (d0 - bhi + u0), u1 - u0);
          }
          cpu::gemm(true, false, nu, D, n, acc_t(1), s, nu, qp + (bh * G.q_len + i0 + t_lo) * D,
                    D, acc_t(0), part, D);
          for (int64_t e = 0; e < nu * D; ++e) acc[e] += static_cast<double>(part[e]);
          first = false;
        }
      }
      // Flipped row p = c - d holds distance d, i.e. rel_emb row c + d.
      if (!first) {
        for (int64_t u = 0; u < nu; ++u) {
          convert_run(eh + (G.c + bhi - u) * D, acc.data() + u * D, D);
        }
      }
    }
  });
}

at::Tensor rel_pos_scores_cpu(const at::Tensor& q_in, const at::Tensor& rel_emb_in,
                              int64_t q_offset, int64_t k_offset, int64_t k_len,
                              std::optional<int64_t> max_distance, bool causal) {
  detail::check_rel_pos_scores("rel_pos_scores", q_in, rel_emb_in, k_len, max_distance);
  auto out = at::empty({q_in.size(0), q_in.size(1), q_in.size(2), k_len}, q_in.options());
  if (out.numel() == 0) return out;
  const Geometry G =
      detail::rel_pos_geometry(q_in, rel_emb_in, q_offset, k_offset, k_len, max_distance);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q_in.scalar_type(), "rel_pos_scores_cpu", [&] {
    const auto acc = c10::CppTypeToScalarType<acc_type<scalar_t>>::value;
    // q and the flipped table in the GEMM's type (a no-op for fp32/fp64 contiguous q).
    const auto q = q_in.to(acc).contiguous();
    const auto flipped_t = rel_emb_in.flip(1).transpose(1, 2).to(acc).contiguous();
    forward_impl<scalar_t>(G, causal, q, flipped_t, out);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> rel_pos_scores_backward_cpu(
    const at::Tensor& grad_in, const at::Tensor& q_in, const at::Tensor& rel_emb_in,
    int64_t q_offset, int64_t k_offset, int64_t k_len, std::optional<int64_t> max_distance,
    bool causal) {
  detail::check_rel_pos_scores_backward("rel_pos_scores_backward", grad_in, q_in, rel_emb_in,
                                        k_len, max_distance);
  auto grad_emb = at::zeros(rel_emb_in.sizes(), rel_emb_in.options());
  if (grad_in.numel() == 0 || q_in.size(3) == 0) {
    return {at::zeros(q_in.sizes(), q_in.options()), grad_emb};
  }
  auto grad_q = at::empty(q_in.sizes(), q_in.options());
  const auto grad = grad_in.to(q_in.scalar_type()).contiguous();
  const Geometry G =
      detail::rel_pos_geometry(q_in, rel_emb_in, q_offset, k_offset, k_len, max_distance);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q_in.scalar_type(), "rel_pos_scores_backward_cpu", [&] {
    using acc_t = acc_type<scalar_t>;
    const auto acc = c10::CppTypeToScalarType<acc_t>::value;
    const auto q = q_in.to(acc).contiguous();
    const auto flipped = rel_emb_in.flip(1).to(acc).contiguous();
    std::vector<double> edges(2 * G.batch * G.heads * G.q_len);
    double* top = edges.data();
    double* bottom = top + G.batch * G.heads * G.q_len;
    const scalar_t* gp = grad.const_data_ptr<scalar_t>();
    grad_q_impl<scalar_t>(G, causal, gp, flipped, grad_q, top, bottom);
    grad_emb_impl<scalar_t>(G, causal, gp, q, top, bottom, grad_emb);
  });
  return {grad_q, grad_emb};
}

at::Tensor rel_pos_scores_forward_kernel(const at::Tensor& q, const at::Tensor& rel_emb,
                                         int64_t q_offset, int64_t k_offset, int64_t k_len,
                                         std::optional<int64_t> max_distance, bool causal) {
  return rel_pos_scores_cpu(q, rel_emb, q_offset, k_offset, k_len, max_distance, causal);
}

std::tuple<at::Tensor, at::Tensor> rel_pos_scores_backward_kernel(
    const at::Tensor& grad, const at::Tensor& q, const at::Tensor& rel_emb, int64_t q_offset,
    int64_t k_offset, int64_t k_len, std::optional<int64_t> max_distance, bool causal) {
  return rel_pos_scores_backward_cpu(grad, q, rel_emb, q_offset, k_offset, k_len, max_distance,
                                     causal);
}

}  // namespace
}  // namespace posenc

TORCH_LIBRARY_IMPL(posenc, CPU, m) {
  m.impl("rel_pos_scores", &posenc::rel_pos_scores_forward_kernel);
  m.impl("rel_pos_scores_backward", &posenc::rel_pos_scores_backward_kernel);
}
