// RoPE (Su et al. 2021): dispatcher handles and argument checks shared by the kernels.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/macros/Macros.h>

#include <cmath>

#include <optional>
#include <string>
#include <tuple>

#include "check.h"

namespace posenc {
namespace detail {

// rope and rope_backward share one signature: x (or grad), positions, inv_freq, offset,
// rotary_dim, interleaved, layout, cu_seqlens, attention_factor, xpos_zeta, xpos_scale_base,
// xpos_inverse, xpos_centre.
using RopeSig = at::Tensor(const at::Tensor&, const std::optional<at::Tensor>&, const at::Tensor&,
                           c10::SymInt, std::optional<int64_t>, bool, c10::string_view,
                           const std::optional<at::Tensor>&, double,
                           const std::optional<at::Tensor>&, double, bool, c10::SymInt);

inline auto& rope_op() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("posenc::rope", "")
                       .typed<RopeSig>();
  return op;
}

inline auto& rope_backward_op() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("posenc::rope_backward", "")
                       .typed<RopeSig>();
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

// Packed "thd" input: the start of the sequence holding token t, i.e. cu[i] for the largest
// i < n - 1 with cu[i] <= t (cu = cu_seqlens, n = its length >= 1). Binary search, so every
// token finds its sequence on its own (no host sync on CUDA); it reads only cu[0, n - 1), so
// an unchecked (device) cu_seqlens can give wrong positions but never an out-of-bounds read.
C10_HOST_DEVICE inline int64_t rope_seq_start(const int64_t* cu, int64_t n, int64_t t) {
  int64_t lo = 1, hi = n - 1;  // first index in [1, n - 1) with cu[i] > t
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (cu[mid] <= t) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return cu[lo - 1];
}

// Magnitude multiplying cos and sin of pair k at absolute position p: attention_factor times,
// with xPos (Sun et al. 2022), zeta_k^(+-(p - centre) / scale_base) (minus for keys,
// xpos_inverse). In T = opmath (fp32, fp64 for fp64 inputs). Shared by CPU and CUDA kernels.
template <typename T>
C10_HOST_DEVICE inline T rope_magnitude(T factor, const float* zeta, int64_t k, int64_t p,
                                        int64_t centre, T scale_base, bool inverse) {
  if (zeta == nullptr) return factor;
  T e = static_cast<T>(p - centre) / scale_base;
  if (inverse) e = -e;
#ifdef __CUDA_ARCH__
  return factor * ::pow(static_cast<T>(zeta[k]), e);
#else
  return factor * std::pow(static_cast<T>(zeta[k]), e);
#endif
}

// cos and sin of the angle of pair k at position p, in T (opmath). Reference precision
// (freq32, float32 inv_freq): the angle is the float32 product float(p) * inv_freq[k], as
// Hugging Face computes it. Exact precision (freq64, float64 inv_freq): the product is fp64
// (exact positions up to 2^53); for T = float it is reduced modulo 2 pi in fp64 first, so the
// float32 cos/sin only see an angle in [-pi, pi] and the result is within ~1e-7 of the true
// value at any position. Shared by the CPU and CUDA kernels.
template <typename T>
C10_HOST_DEVICE inline void rope_cos_sin(int64_t p, const float* freq32, const double* freq64,
                                         int64_t k, T& c, T& s) {
  T a;
  if (freq64 != nullptr) {
    const double angle = static_cast<double>(p) * freq64[k];
    if constexpr (sizeof(T) >= sizeof(double)) {
      a = static_cast<T>(angle);
    } else {
      // Cody-Waite: 2 pi = kHi + kLo (kHi the double nearest 2 pi); each fma is exact up to its
      // final rounding, so the reduced angle is accurate to ~1e-16 * n, not ulp(angle).
      constexpr double kHi = 6.283185307179586232;
      constexpr double kLo = 2.4492935982947064e-16;
#ifdef __CUDA_ARCH__
      const double n = ::rint(angle * (1.0 / kHi));
      a = static_cast<T>(::fma(-n, kLo, ::fma(-n, kHi, angle)));
#else
      const double n = std::rint(angle * (1.0 / kHi));
      a = static_cast<T>(std::fma(-n, kLo, std::fma(-n, kHi, angle)));
#endif
    }
  } else {
    a = static_cast<T>(static_cast<float>(p) * freq32[k]);
  }
#ifdef __CUDA_ARCH__
  if constexpr (sizeof(T) >= sizeof(double)) {
    ::sincos(a, &s, &c);
  } else {
    ::sincosf(a, &s, &c);
  }
#else
  c = std::cos(a);
  s = std::sin(a);
#endif
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

enum class RopeLayout { kBhsd, kBshd, kThd };

// Checks rope / rope_backward arguments; x is 'x' or 'grad'. Returns the layout. The values of
// cu_seqlens and xpos_zeta are checked by check_rope_values (CPU kernel only: they need data).
inline RopeLayout check_rope(const char* op, const char* arg, const at::Tensor& x,
                             const std::optional<at::Tensor>& positions,
                             const at::Tensor& inv_freq, std::optional<int64_t> rotary_dim,
                             c10::string_view layout, const std::optional<at::Tensor>& cu_seqlens,
                             double attention_factor, const std::optional<at::Tensor>& xpos_zeta,
                             double xpos_scale_base) {
  POSENC_CHECK_ARG(layout == "bhsd" || layout == "bshd" || layout == "thd", op, "layout",
                   "must be one of \"bhsd\", \"bshd\", \"thd\"", "\"", std::string(layout),
                   "\"");
  const RopeLayout lay = layout == "thd"    ? RopeLayout::kThd
                         : layout == "bshd" ? RopeLayout::kBshd
                                            : RopeLayout::kBhsd;
  const bool has_pos = positions.has_value() && positions->defined();
  const bool has_cu = cu_seqlens.has_value() && cu_seqlens->defined();
  c10::SymInt head_dim;
  if (lay == RopeLayout::kThd) {
    check_dim(op, arg, x, 3, "(total_tokens, heads, head_dim)");
    check_floating(op, arg, x);
    head_dim = x.sym_size(2);
    POSENC_CHECK_ARG(!has_pos, op, "positions",
                     "must be None with layout \"thd\" (positions restart at offset in each "
                     "sequence of 'cu_seqlens')",
                     "a tensor of shape ", shape_str(*positions));
    POSENC_CHECK_ARG(has_cu, op, "cu_seqlens",
                     "must be an int64 or int32 (num_seqs + 1,) tensor with layout \"thd\"", "None");
    const at::Tensor& cu = *cu_seqlens;
    check_dim(op, "cu_seqlens", cu, 1, "(num_seqs + 1,)");
    check_index_dtype(op, "cu_seqlens", cu);
    POSENC_CHECK_ARG(!known_gt(c10::SymInt(1), cu.sym_size(0)), op, "cu_seqlens",
                     "must have at least one element (num_seqs + 1 >= 1)", "shape ",
                     shape_str(cu));
    check_same_device(op, "cu_seqlens", cu, arg, x);
  } else {
    check_rope_input(op, arg, x, layout);
    POSENC_CHECK_ARG(!has_cu, op, "cu_seqlens", "must be None unless layout is \"thd\"",
                     "a tensor of shape ", shape_str(*cu_seqlens), " with layout \"",
                     std::string(layout), "\"");
    const bool bshd = lay == RopeLayout::kBshd;
    const c10::SymInt batch = x.sym_size(0);
    const c10::SymInt seq = x.sym_size(bshd ? 1 : 2);
    head_dim = x.sym_size(3);
    if (has_pos) {
      const at::Tensor& pos = *positions;
      check_index_dtype(op, "positions", pos);
      POSENC_CHECK_ARG(pos.dim() == 1 || pos.dim() == 2, op, "positions",
                       "must be a 1-D (seq,) or 2-D (batch, seq) tensor", "a ", pos.dim(),
                       "-D tensor of shape ", shape_str(pos));
      POSENC_CHECK_ARG(!known_ne(pos.sym_size(-1), seq) &&
                           (pos.dim() == 1 || !known_ne(pos.sym_size(0), batch)),
                       op, "positions",
                       c10::str("must have shape (", seq, ",) or (", batch, ", ", seq,
                                ") to match '", arg, "' of shape ", shape_str(x), " (layout \"",
                                std::string(layout), "\")"),
                       "shape ", shape_str(pos));
      check_same_device(op, "positions", pos, arg, x);
    }
  }

  check_dim(op, "inv_freq", inv_freq, 1, "(rotary_dim / 2,)");
  POSENC_CHECK_ARG(inv_freq.scalar_type() == at::kFloat || inv_freq.scalar_type() == at::kDouble,
                   op, "inv_freq",
                   "must have dtype float32 (reference precision) or float64 (exact precision)",
                   "dtype ", inv_freq.scalar_type());
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

  POSENC_CHECK_ARG(std::isfinite(attention_factor), op, "attention_factor", "must be finite",
                   attention_factor);
  if (xpos_zeta.has_value() && xpos_zeta->defined()) {
    const at::Tensor& zeta = *xpos_zeta;
    check_dim(op, "xpos_zeta", zeta, 1, "(rotary_dim / 2,)");
    check_dtype(op, "xpos_zeta", zeta, at::kFloat);
    POSENC_CHECK_ARG(!known_ne(zeta.sym_size(0), inv_freq.sym_size(0)), op, "xpos_zeta",
                     c10::str("must have len(inv_freq) = ", inv_freq.sym_size(0), " elements"),
                     "shape ", shape_str(zeta));
    check_same_device(op, "xpos_zeta", zeta, arg, x);
    POSENC_CHECK_ARG(std::isfinite(xpos_scale_base) && xpos_scale_base > 0, op,
                     "xpos_scale_base", "must be finite and > 0", xpos_scale_base);
  }
  return lay;
}

// rope_qk: k (k_arg: "k" or "grad_k") must be rotatable by the same call as q (q_arg): the
// rope checks, then the same dtype and device, the same batch, sequence and head_dim; the head
// counts may differ (grouped-query attention).
template <typename Params>
inline void check_rope_pair(const char* op, const char* q_arg, const at::Tensor& q,
                            const char* k_arg, const at::Tensor& k, const Params& a,
                            RopeLayout lay) {
  check_rope(op, k_arg, k, a.positions, a.inv_freq, a.rotary_dim, a.layout, a.cu_seqlens,
             a.attention_factor, a.xpos_zeta, a.xpos_scale_base);
  check_same_dtype(op, k_arg, k, q_arg, q);
  check_same_device(op, k_arg, k, q_arg, q);
  // (tokens, head_dim) for "thd", (batch, seq, head_dim) otherwise.
  const bool packed = lay == RopeLayout::kThd;
  const int seq = lay == RopeLayout::kBshd ? 1 : 2;
  for (int d : {0, packed ? 2 : seq, packed ? 2 : 3}) {
    POSENC_CHECK_ARG(!known_ne(k.sym_size(d), q.sym_size(d)), op, k_arg,
                     c10::str("must match '", q_arg, "' of shape ", shape_str(q),
                              " in every dim but the heads (layout \"", std::string(a.layout),
                              "\")"),
                     "shape ", shape_str(k));
  }
}

// Without explicit positions, token s sits at offset + s (s < S; in "thd", s < T bounds the
// position within its sequence): the last one must not wrap past int64, or it would rotate by
// the angle of a large negative position without any error. Explicit positions are values
// (offset + positions[i] is the caller's, as on CUDA for every value check).
template <typename Int>
inline void check_rope_offset(const char* op, const std::optional<at::Tensor>& positions,
                              const Int& offset, const c10::SymInt& seq_len) {
  if (positions.has_value() && positions->defined()) return;
  const auto o = concrete(offset);
  const auto s = seq_len.maybe_as_int();
  if (!o || !s || *s == 0) return;
  POSENC_CHECK_ARG(*o <= std::numeric_limits<int64_t>::max() - (*s - 1), op, "offset",
                   c10::str("must keep the last position offset + ", *s - 1, " within int64"),
                   *o);
}

// The sequence length check_rope_offset bounds: S ("bhsd": dim 2, "bshd": dim 1), T ("thd").
inline c10::SymInt rope_seq_len(const at::Tensor& x, RopeLayout lay) {
  return x.sym_size(lay == RopeLayout::kThd ? 0 : (lay == RopeLayout::kBshd ? 1 : 2));
}

// Value checks that need the data (CPU tensors only; on CUDA they are the caller's
// responsibility, to keep the op free of host syncs): cu_seqlens starts at 0, ends at
// total_tokens and is non-decreasing; inv_freq is finite; xpos_zeta is > 0.
inline void check_rope_values(const char* op, const std::optional<at::Tensor>& cu_seqlens,
                              int64_t total_tokens, const at::Tensor& inv_freq,
                              const std::optional<at::Tensor>& xpos_zeta) {
  {
    // Read in place (float32 or float64): no converted copy on every call.
    const at::Tensor f = inv_freq.contiguous();
    const bool f64 = f.scalar_type() == at::kDouble;
    for (int64_t i = 0; i < f.size(0); ++i) {
      const double v = f64 ? f.const_data_ptr<double>()[i] : f.const_data_ptr<float>()[i];
      POSENC_CHECK_ARG(std::isfinite(v), op, "inv_freq", "must be finite", "inv_freq[", i,
                       "] = ", v);
    }
  }
  if (cu_seqlens.has_value() && cu_seqlens->defined()) {
    const at::Tensor cu = cu_seqlens->to(at::kLong).contiguous();
    const int64_t* c = cu.const_data_ptr<int64_t>();
    const int64_t n = cu.size(0);
    POSENC_CHECK_ARG(c[0] == 0, op, "cu_seqlens", "must start at 0", "cu_seqlens[0] = ", c[0]);
    for (int64_t i = 0; i + 1 < n; ++i) {
      POSENC_CHECK_ARG(c[i] <= c[i + 1], op, "cu_seqlens", "must be non-decreasing",
                       "cu_seqlens[", i, "] = ", c[i], " > cu_seqlens[", i + 1, "] = ", c[i + 1]);
    }
    POSENC_CHECK_ARG(c[n - 1] == total_tokens, op, "cu_seqlens",
                     c10::str("must end at total_tokens (", total_tokens, ")"), "cu_seqlens[",
                     n - 1, "] = ", c[n - 1]);
  }
  if (xpos_zeta.has_value() && xpos_zeta->defined()) {
    const at::Tensor zeta = xpos_zeta->contiguous();
    const float* z = zeta.const_data_ptr<float>();
    for (int64_t i = 0; i < zeta.size(0); ++i) {
      POSENC_CHECK_ARG(z[i] > 0 && std::isfinite(z[i]), op, "xpos_zeta",
                       "must be finite and > 0", "xpos_zeta[", i, "] = ", z[i]);
    }
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

// A 4-D tensor seen as (B, H, S, D) whatever its layout: sizes and element strides, so that
// views into packed qkv buffers (any strides, last one included) are read in place. Shared by
// the CPU and CUDA kernels.
struct Bhsd {
  int64_t size[4];
  int64_t stride[4];
  C10_HOST_DEVICE int64_t offset(int64_t b, int64_t h, int64_t s) const {
    return b * stride[0] + h * stride[1] + s * stride[2];
  }
};

inline Bhsd bhsd(const at::Tensor& t, bool bshd) {
  static constexpr int64_t kBhsd[4] = {0, 1, 2, 3};
  static constexpr int64_t kBshd[4] = {0, 2, 1, 3};
  const int64_t* perm = bshd ? kBshd : kBhsd;
  Bhsd g{};
  for (int i = 0; i < 4; ++i) {
    g.size[i] = t.size(perm[i]);
    g.stride[i] = t.stride(perm[i]);
  }
  return g;
}

// A packed "thd" tensor (T, H, D) seen as (1, H, T, D).
inline Bhsd thd(const at::Tensor& t) {
  return {{1, t.size(1), t.size(0), t.size(2)}, {0, t.stride(1), t.stride(0), t.stride(2)}};
}

// Everything of a rope call except the tensor it rotates.
struct RopeParams {
  const std::optional<at::Tensor>& positions;
  const at::Tensor& inv_freq;
  int64_t offset;
  std::optional<int64_t> rotary_dim;
  bool interleaved;
  c10::string_view layout;
  const std::optional<at::Tensor>& cu_seqlens;
  double attention_factor;
  const std::optional<at::Tensor>& xpos_zeta;
  double xpos_scale_base;
  bool xpos_inverse;
  int64_t xpos_centre;
};

// A backend's rope implementation: Impl(op, arg, x, params, conjugate).
using RopeImpl = at::Tensor (*)(const char*, const char*, const at::Tensor&, const RopeParams&,
                                bool);

// The rope (Backward = false) and rope_backward (true) kernels of a backend, in the op's
// signature: one definition for CPU and CUDA. The backward is the conjugate rotation.
template <RopeImpl Impl, bool Backward>
at::Tensor rope_kernel_entry(const at::Tensor& x, const std::optional<at::Tensor>& positions,
                             const at::Tensor& inv_freq, int64_t offset,
                             std::optional<int64_t> rotary_dim, bool interleaved,
                             c10::string_view layout, const std::optional<at::Tensor>& cu_seqlens,
                             double attention_factor, const std::optional<at::Tensor>& xpos_zeta,
                             double xpos_scale_base, bool xpos_inverse, int64_t xpos_centre) {
  return Impl(Backward ? "rope_backward" : "rope", Backward ? "grad" : "x", x,
              {positions, inv_freq, offset, rotary_dim, interleaved, layout, cu_seqlens,
               attention_factor, xpos_zeta, xpos_scale_base, xpos_inverse, xpos_centre},
              Backward);
}

// rope_qk and rope_qk_backward share one signature: q (or grad_q), k (or grad_k), then rope's
// arguments without xpos_inverse (q takes the xPos magnitude, k its inverse).
using RopeQkSig = std::tuple<at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, const at::Tensor&,
    c10::SymInt, std::optional<int64_t>, bool, c10::string_view,
    const std::optional<at::Tensor>&, double, const std::optional<at::Tensor>&, double,
    c10::SymInt);

inline auto& rope_qk_op() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("posenc::rope_qk", "")
                       .typed<RopeQkSig>();
  return op;
}

inline auto& rope_qk_backward_op() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("posenc::rope_qk_backward", "")
                       .typed<RopeQkSig>();
  return op;
}

}  // namespace detail
}  // namespace posenc

