// RoPE (Su et al. 2021): dispatcher handles and argument checks shared by the kernels.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/macros/Macros.h>

#include <optional>
#include <string>
#include <tuple>

#include "check.h"

namespace posenc {
namespace detail {

inline auto& rope_op() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("posenc::rope", "")
                       .typed<at::Tensor(const at::Tensor&, const std::optional<at::Tensor>&,
                                         const at::Tensor&, c10::SymInt, std::optional<int64_t>,
                                         bool, c10::string_view)>();
  return op;
}

inline auto& rope_backward_op() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("posenc::rope_backward", "")
                       .typed<at::Tensor(const at::Tensor&, const std::optional<at::Tensor>&,
                                         const at::Tensor&, c10::SymInt, std::optional<int64_t>,
                                         bool, c10::string_view)>();
  return op;
}

inline auto& apply_rotary_pos_emb_op() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("posenc::apply_rotary_pos_emb", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         bool, c10::string_view)>();
  return op;
}

inline auto& apply_rotary_pos_emb_backward_op() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("posenc::apply_rotary_pos_emb_backward", "")
                       .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                           const at::Tensor&, const at::Tensor&, const at::Tensor&,
                           const at::Tensor&, bool, c10::string_view)>();
  return op;
}

// Element pair k of the first rotary dims (half = rotary_dim / 2): (k, k + half) half-split,
// (2k, 2k + 1) interleaved. Shared by the CPU and CUDA kernels.
C10_HOST_DEVICE inline void rope_pair_index(int64_t k, int64_t half, bool interleaved,
                                            int64_t& i1, int64_t& i2) {
  i1 = interleaved ? 2 * k : k;
  i2 = interleaved ? 2 * k + 1 : k + half;
}

// ---- argument checks (CPU and Meta kernels) ------------------------------------------------
// Sizes are read as SymInt so the Meta kernel runs the same code; a comparison involving a
// symbolic size is skipped there and made by the real kernel once the size is concrete.

inline bool known_ne(const c10::SymInt& a, const c10::SymInt& b) {
  const auto ca = a.maybe_as_int();
  const auto cb = b.maybe_as_int();
  return ca && cb && *ca != *cb;
}

inline bool known_gt(const c10::SymInt& a, const c10::SymInt& b) {
  const auto ca = a.maybe_as_int();
  const auto cb = b.maybe_as_int();
  return ca && cb && *ca > *cb;
}

inline bool known_shape_ne(const at::Tensor& a, const at::Tensor& b) {
  if (a.dim() != b.dim()) return true;
  for (int64_t i = 0; i < a.dim(); ++i) {
    if (known_ne(a.sym_size(i), b.sym_size(i))) return true;
  }
  return false;
}

// Returns true for "bshd". x is (B,H,S,D) for "bhsd" and (B,S,H,D) for "bshd".
inline bool check_rope_layout(const char* op, c10::string_view layout) {
  POSENC_CHECK_ARG(layout == "bhsd" || layout == "bshd", op, "layout",
                   "must be one of \"bhsd\", \"bshd\"", "\"", std::string(layout), "\"");
  return layout == "bshd";
}

// Checks the rotated tensor ('x' in rope, 'grad' in rope_backward). Returns true for "bshd".
inline bool check_rope_input(const char* op, const char* arg, const at::Tensor& x,
                             c10::string_view layout) {
  const bool bshd = check_rope_layout(op, layout);
  check_dim(op, arg, x, 4, bshd ? "(batch, seq, heads, head_dim)" : "(batch, heads, seq, head_dim)");
  check_floating(op, arg, x);
  return bshd;
}

inline void check_rope(const char* op, const char* arg, const at::Tensor& x,
                       const std::optional<at::Tensor>& positions, const at::Tensor& inv_freq,
                       std::optional<int64_t> rotary_dim, c10::string_view layout) {
  const bool bshd = check_rope_input(op, arg, x, layout);
  const c10::SymInt batch = x.sym_size(0);
  const c10::SymInt seq = x.sym_size(bshd ? 1 : 2);
  const c10::SymInt head_dim = x.sym_size(3);

  if (positions.has_value() && positions->defined()) {
    const at::Tensor& pos = *positions;
    check_dtype(op, "positions", pos, at::kLong);
    POSENC_CHECK_ARG(pos.dim() == 1 || pos.dim() == 2, op, "positions",
                     "must be a 1-D (seq,) or 2-D (batch, seq) tensor", "a ", pos.dim(),
                     "-D tensor of shape ", shape_str(pos));
    POSENC_CHECK_ARG(!known_ne(pos.sym_size(-1), seq) &&
                         (pos.dim() == 1 || !known_ne(pos.sym_size(0), batch)),
                     op, "positions",
                     c10::str("must have shape (", seq, ",) or (", batch, ", ", seq, ") to match '",
                              arg, "' of shape ", shape_str(x), " (layout \"",
                              std::string(layout), "\")"),
                     "shape ", shape_str(pos));
    check_same_device(op, "positions", pos, arg, x);
  }

  check_dim(op, "inv_freq", inv_freq, 1, "(rotary_dim / 2,)");
  check_dtype(op, "inv_freq", inv_freq, at::kFloat);
  check_same_device(op, "inv_freq", inv_freq, arg, x);
  const c10::SymInt rot = inv_freq.sym_size(0) * 2;
  if (rotary_dim.has_value()) {
    const int64_t r = *rotary_dim;
    POSENC_CHECK_ARG(r >= 0 && r % 2 == 0, op, "rotary_dim", "must be even and >= 0", r);
    POSENC_CHECK_ARG(!known_ne(rot, c10::SymInt(r)), op, "rotary_dim",
                     c10::str("must equal 2 * len(inv_freq) = ", rot), r);
    POSENC_CHECK_ARG(!known_gt(c10::SymInt(r), head_dim), op, "rotary_dim",
                     c10::str("must be <= head_dim (", head_dim, ")"), r);
  } else {
    POSENC_CHECK_ARG(!known_gt(rot, head_dim), op, "inv_freq",
                     c10::str("must have at most head_dim / 2 elements (head_dim ", head_dim,
                              "), since rotary_dim = 2 * len(inv_freq) <= head_dim"),
                     inv_freq.sym_size(0), " elements");
  }
}

// Checks x and the cos/sin tables of apply_rotary_pos_emb. Returns true for "bshd".
inline bool check_apply_rotary(const char* op, const at::Tensor& x, const at::Tensor& cos,
                               const at::Tensor& sin, c10::string_view layout) {
  const bool bshd = check_rope_input(op, "x", x, layout);
  const c10::SymInt batch = x.sym_size(0);
  const c10::SymInt seq = x.sym_size(bshd ? 1 : 2);
  const c10::SymInt head_dim = x.sym_size(3);
  check_defined(op, "cos", cos);
  POSENC_CHECK_ARG(cos.dim() == 2 || cos.dim() == 3, op, "cos",
                   "must be a 2-D (seq, rotary_dim) or 3-D (batch, seq, rotary_dim) tensor",
                   "a ", cos.dim(), "-D tensor of shape ", shape_str(cos));
  check_defined(op, "sin", sin);
  POSENC_CHECK_ARG(!known_shape_ne(sin, cos), op, "sin",
                   c10::str("must have the shape of 'cos' ", shape_str(cos)), "shape ",
                   shape_str(sin));
  check_same_dtype(op, "cos", cos, "x", x);
  check_same_dtype(op, "sin", sin, "x", x);
  check_same_device(op, "cos", cos, "x", x);
  check_same_device(op, "sin", sin, "x", x);
  const c10::SymInt rot = cos.sym_size(-1);
  POSENC_CHECK_ARG(!known_ne(cos.sym_size(-2), seq) &&
                       (cos.dim() == 2 || !known_ne(cos.sym_size(0), batch)),
                   op, "cos",
                   c10::str("must have shape (", seq, ", rotary_dim) or (", batch, ", ", seq,
                            ", rotary_dim) to match 'x' of shape ", shape_str(x), " (layout \"",
                            std::string(layout), "\")"),
                   "shape ", shape_str(cos));
  if (auto r = rot.maybe_as_int()) {
    POSENC_CHECK_ARG(*r % 2 == 0, op, "cos", "must have an even last dim (rotary_dim)",
                     "shape ", shape_str(cos));
  }
  POSENC_CHECK_ARG(!known_gt(rot, head_dim), op, "cos",
                   c10::str("must have a last dim (rotary_dim) <= head_dim (", head_dim, ")"),
                   "shape ", shape_str(cos));
  return bshd;
}

inline bool check_apply_rotary_backward(const char* op, const at::Tensor& grad,
                                        const at::Tensor& x, const at::Tensor& cos,
                                        const at::Tensor& sin, c10::string_view layout) {
  const bool bshd = check_apply_rotary(op, x, cos, sin, layout);
  check_defined(op, "grad", grad);
  POSENC_CHECK_ARG(!known_shape_ne(grad, x), op, "grad",
                   c10::str("must have the shape of 'x' ", shape_str(x)), "shape ",
                   shape_str(grad));
  check_same_dtype(op, "grad", grad, "x", x);
  check_same_device(op, "grad", grad, "x", x);
  return bshd;
}

}  // namespace detail
}  // namespace posenc
