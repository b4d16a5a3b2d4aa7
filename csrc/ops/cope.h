// CoPE, contextual position encoding (Golovneva et al. 2024): dispatcher handles, argument
// checks and the per-key position term shared by the CPU, CUDA and Meta kernels.
//
// For query i and the keys j it sees (k_offset + j <= q_offset + i; CoPE is causal):
//   g_ij = sigmoid(scale * q_i . k_j)                  gates (eq. 3)
//   p_ij = sum_{t = j}^{i} g_it, clamped to P - 1      contextual positions (eq. 4; the paper's
//                                                      code clamps to npos_max - 1, P = npos_max)
//   z_i[p] = q_i . e[p], p = 0 .. P - 1                 the integer positions' scores
//   out_ij = (1 - w) z_i[floor p] + w z_i[ceil p],   w = p - floor p   (eq. 5, interpolation)
// and out_ij = 0 for the keys after the query. p_ij falls as j grows, so keys are walked from
// the last visible one leftwards; once p reaches P - 1 every key further left is clamped too
// (gates are >= 0) and takes z_i[P - 1] without its gate being computed.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/macros/Macros.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <tuple>

#include "check.h"

namespace posenc {
namespace detail {

inline auto& cope_scores_op() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("posenc::cope_scores", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         std::optional<double>, c10::SymInt, c10::SymInt)>();
  return op;
}

inline auto& cope_scores_backward_op() {
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("posenc::cope_scores_backward", "")
          .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
              const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
              std::optional<double>, c10::SymInt, c10::SymInt)>();
  return op;
}

// Sizes read with sym_size(), so the same code checks real tensors and fake ones.
template <typename Int>
void check_cope_scores(const char* op, const at::Tensor& q, const at::Tensor& k,
                       const at::Tensor& pos_emb, std::optional<double> scale,
                       const Int& q_offset, const Int& k_offset) {
  check_dim(op, "q", q, 4, "(batch, heads, q_len, head_dim)");
  check_floating(op, "q", q);
  check_dim(op, "k", k, 4, "(batch, heads, k_len, head_dim)");
  check_same_dtype(op, "k", k, "q", q);
  check_same_device(op, "k", k, "q", q);
  const bool same = k.sym_size(0) == q.sym_size(0) && k.sym_size(1) == q.sym_size(1) &&
                    k.sym_size(3) == q.sym_size(3);
  POSENC_CHECK_ARG(same, op, "k",
                   c10::str("must have q's batch, heads and head_dim ([", q.sym_size(0), ", ",
                            q.sym_size(1), ", k_len, ", q.sym_size(3), "])"),
                   "shape ", shape_str(k));
  check_dim(op, "pos_emb", pos_emb, 2, "(npos_max, head_dim)");
  check_same_dtype(op, "pos_emb", pos_emb, "q", q);
  check_same_device(op, "pos_emb", pos_emb, "q", q);
  POSENC_CHECK_ARG(pos_emb.sym_size(1) == q.sym_size(3), op, "pos_emb",
                   c10::str("must have q's head_dim (", q.sym_size(3), ") in dim 1"), "shape ",
                   shape_str(pos_emb));
  if (auto n = concrete(pos_emb.sym_size(0))) {
    POSENC_CHECK_ARG(*n >= 1, op, "pos_emb",
                     "must have at least one row (npos_max >= 1) in dim 0", "shape ",
                     shape_str(pos_emb));
  }
  if (scale.has_value()) {
    POSENC_CHECK_ARG(std::isfinite(*scale), op, "scale", "must be finite", *scale);
  }
  check_offsets(op, q_offset, k_offset);
  check_output_size(op, "k",
                    {q.sym_size(0), q.sym_size(1), q.sym_size(2), k.sym_size(2)},
                    q.scalar_type());
}

template <typename Int>
void check_cope_scores_backward(const char* op, const at::Tensor& grad, const at::Tensor& q,
                                const at::Tensor& k, const at::Tensor& pos_emb,
                                std::optional<double> scale, const Int& q_offset,
                                const Int& k_offset) {
  check_cope_scores(op, q, k, pos_emb, scale, q_offset, k_offset);
  check_dim(op, "grad", grad, 4, "(batch, heads, q_len, k_len)");
  check_floating(op, "grad", grad);
  check_same_device(op, "grad", grad, "q", q);
  const bool same = grad.sym_size(0) == q.sym_size(0) && grad.sym_size(1) == q.sym_size(1) &&
                    grad.sym_size(2) == q.sym_size(2) && grad.sym_size(3) == k.sym_size(2);
  POSENC_CHECK_ARG(same, op, "grad",
                   c10::str("must have shape (batch, heads, q_len, k_len) = [", q.sym_size(0),
                            ", ", q.sym_size(1), ", ", q.sym_size(2), ", ", k.sym_size(2), "]"),
                   "shape ", shape_str(grad));
}

// The paper's scale: the gates are the sigmoid of the attention logits q.k / sqrt(head_dim).
inline double cope_scale(std::optional<double> scale, int64_t head_dim) {
  return scale.has_value() ? *scale : 1.0 / std::sqrt(static_cast<double>(std::max<int64_t>(head_dim, 1)));
}

// Keys [0, n) are seen by query i: k_offset + j <= q_offset + i. base = q_offset - k_offset
// (offsets are within +-2^61, so base and base + i cannot overflow).
C10_HOST_DEVICE inline int64_t cope_visible(int64_t base, int64_t i, int64_t k_len) {
  const int64_t last = base + i;  // the last key seen, may be < 0 or >= k_len
  return last < 0 ? 0 : (last >= k_len ? k_len : last + 1);
}

// Where a (clamped) position p in [0, P - 1] falls: floor f, weight w of ceil(p) = f + 1 (0
// when p is an integer, so f + 1 is only read when it is <= P - 1).
struct CopeCell {
  int64_t f;
  double w;
};

C10_HOST_DEVICE inline CopeCell cope_cell(double p) {
  const double f = ::floor(p);
  return {static_cast<int64_t>(f), p - f};
}

}  // namespace detail
}  // namespace posenc
