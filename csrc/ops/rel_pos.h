// Relative position scores (Transformer-XL / Shaw): dispatcher handles and argument checks
// shared by the kernels.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/macros/Macros.h>

#include <algorithm>
#include <limits>
#include <tuple>

#include "check.h"

namespace posenc {
namespace detail {

inline auto& rel_pos_scores_op() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("posenc::rel_pos_scores", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, c10::SymInt,
                                         c10::SymInt, c10::SymInt, std::optional<int64_t>,
                                         bool)>();
  return op;
}

inline auto& rel_pos_scores_backward_op() {
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("posenc::rel_pos_scores_backward", "")
          .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                    const at::Tensor&, c10::SymInt, c10::SymInt,
                                                    c10::SymInt, std::optional<int64_t>, bool)>();
  return op;
}

// Sizes are read with sym_size() so that the same code checks real tensors (CPU kernels)
// and fake ones (Meta kernels).
template <typename Int>
void check_rel_pos_scores(const char* op, const at::Tensor& q, const at::Tensor& rel_emb,
                          const Int& k_len, std::optional<int64_t> max_distance) {
  check_dim(op, "q", q, 4, "(batch, heads, q_len, head_dim)");
  check_floating(op, "q", q);
  check_dim(op, "rel_emb", rel_emb, 3, "(heads, R, head_dim)");
  check_same_dtype(op, "rel_emb", rel_emb, "q", q);
  check_same_device(op, "rel_emb", rel_emb, "q", q);
  POSENC_CHECK_ARG(rel_emb.sym_size(0) == q.sym_size(1), op, "rel_emb",
                   c10::str("must have q's number of heads (", q.sym_size(1), ") in dim 0"),
                   "shape ", shape_str(rel_emb));
  POSENC_CHECK_ARG(rel_emb.sym_size(2) == q.sym_size(3), op, "rel_emb",
                   c10::str("must have q's head_dim (", q.sym_size(3), ") in dim 2"), "shape ",
                   shape_str(rel_emb));
  const c10::SymInt rows = rel_emb.sym_size(1);
  POSENC_CHECK_ARG(rows % 2 == 1, op, "rel_emb",
                   "must have an odd number of rows R = 2c + 1 (distances -c..c) in dim 1",
                   "shape ", shape_str(rel_emb));
  check_length(op, "k_len", k_len);
  check_output_size(op, "k_len", {q.sym_size(0), q.sym_size(1), q.sym_size(2), c10::SymInt(k_len)},
                    q.scalar_type());
  if (max_distance.has_value()) {
    const c10::SymInt c = (rows - 1) / 2;
    POSENC_CHECK_ARG(*max_distance >= 0 && *max_distance <= c, op, "max_distance",
                     c10::str("must be in [0, c] with c = (R - 1) / 2 = ", c), *max_distance);
  }
}

template <typename Int>
void check_rel_pos_scores_backward(const char* op, const at::Tensor& grad, const at::Tensor& q,
                                   const at::Tensor& rel_emb, const Int& k_len,
                                   std::optional<int64_t> max_distance) {
  check_rel_pos_scores(op, q, rel_emb, k_len, max_distance);
  check_dim(op, "grad", grad, 4, "(batch, heads, q_len, k_len)");
  check_floating(op, "grad", grad);
  check_grad_dtype(op, "grad", grad, "q", q);
  check_same_device(op, "grad", grad, "q", q);
  const bool same = grad.sym_size(0) == q.sym_size(0) && grad.sym_size(1) == q.sym_size(1) &&
                    grad.sym_size(2) == q.sym_size(2) && grad.sym_size(3) == k_len;
  POSENC_CHECK_ARG(same, op, "grad",
                   c10::str("must have shape (batch, heads, q_len, k_len) = [", q.sym_size(0),
                            ", ", q.sym_size(1), ", ", q.sym_size(2), ", ", k_len, "]"),
                   "shape ", shape_str(grad));
}

// q_offset - k_offset, saturated to int64 and clamped to a window in which every query row
// clips exactly as with the true difference (all keys beyond max_distance on one side stay
// beyond it), so that offsets anywhere in int64 cannot overflow the row arithmetic.
inline int64_t rel_pos_base_distance(int64_t q_offset, int64_t k_offset, int64_t max_distance,
                                     int64_t q_len, int64_t k_len) {
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
  constexpr int64_t kMin = std::numeric_limits<int64_t>::min();
  int64_t base;
  if (k_offset < 0 && q_offset > kMax + k_offset) {
    base = kMax;
  } else if (k_offset > 0 && q_offset < kMin + k_offset) {
    base = kMin;
  } else {
    base = q_offset - k_offset;
  }
  const int64_t hi = max_distance + k_len + 1;
  return std::clamp(base, -(hi + q_len), hi);
}

// Keys of one query row, d0 = distance of key 0 (d = d0 - j falls with j): keys [0, j1)
// clip to row c + M, keys [j2, k_len) clip to row c - M, key j in [j1, j2) uses row
// c + d0 - j (distinct rows, a contiguous range). With M = 0 both edges are row c.
struct RelPosSpan {
  int64_t j1;
  int64_t j2;
};

// Host and device (the CUDA kernels share it), hence no std::clamp.
C10_HOST_DEVICE inline int64_t rel_pos_clamp(int64_t v, int64_t lo, int64_t hi) {
  return v < lo ? lo : (v > hi ? hi : v);
}

// Keys [0, visible) of query row d0 are scored: every key without `causal`, else the keys
// with k_pos <= q_pos (j <= d0); the rest are masked (written as 0, not read).
C10_HOST_DEVICE inline int64_t rel_pos_visible(int64_t d0, int64_t k_len, bool causal) {
  if (!causal) return k_len;
  return d0 < 0 ? 0 : (d0 >= k_len ? k_len : d0 + 1);
}

C10_HOST_DEVICE inline RelPosSpan rel_pos_span(int64_t d0, int64_t k_len, int64_t max_distance) {
  const int64_t j1 = rel_pos_clamp(d0 - max_distance + 1, 0, k_len);
  const int64_t j2 = rel_pos_clamp(d0 + max_distance, j1, k_len);
  return {j1, j2};
}

// Sizes of a rel_pos_scores call and where its distances start, shared by the CPU and CUDA
// kernels: c is the centre row, m the clipping distance.
struct RelPosGeometry {
  int64_t batch, heads, q_len, dim, rows, k_len, c, m, base;
};

inline RelPosGeometry rel_pos_geometry(const at::Tensor& q, const at::Tensor& rel_emb,
                                       int64_t q_offset, int64_t k_offset, int64_t k_len,
                                       std::optional<int64_t> max_distance) {
  RelPosGeometry g{};
  g.batch = q.size(0);
  g.heads = q.size(1);
  g.q_len = q.size(2);
  g.dim = q.size(3);
  g.rows = rel_emb.size(1);
  g.k_len = k_len;
  g.c = (g.rows - 1) / 2;
  g.m = max_distance.value_or(g.c);
  g.base = rel_pos_base_distance(q_offset, k_offset, g.m, g.q_len, k_len);
  return g;
}

}  // namespace detail
}  // namespace posenc

