// KERPLE (Chi et al. 2022): dispatcher handles and argument checks shared by the kernels.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/macros/Macros.h>

#include <string>
#include <tuple>

#include "check.h"

namespace posenc {
namespace detail {

inline auto& kerple_bias_op() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("posenc::kerple_bias", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, c10::SymInt,
                                         c10::SymInt, c10::SymInt, c10::SymInt, c10::string_view,
                                         bool)>();
  return op;
}

inline auto& kerple_bias_backward_op() {
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("posenc::kerple_bias_backward", "")
          .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                    const at::Tensor&, c10::SymInt, c10::SymInt,
                                                    c10::SymInt, c10::SymInt, c10::string_view,
                                                    bool)>();
  return op;
}

enum class KerpleKind { Log, Power };

inline KerpleKind parse_kerple_kind(const char* op, c10::string_view kind,
                                    const char* arg = "kind") {
  if (kind == "log") return KerpleKind::Log;
  if (kind == "power") return KerpleKind::Power;
  POSENC_CHECK_ARG(false, op, arg, "must be one of \"log\", \"power\"", "\"",
                   std::string(kind), "\"");
  return KerpleKind::Log;  // unreachable
}

template <typename Int>
KerpleKind check_kerple_bias(const char* op, const at::Tensor& r1, const at::Tensor& r2,
                             const Int& q_len, const Int& k_len, c10::string_view kind) {
  check_dim(op, "r1", r1, 1, "(num_heads,)");
  check_floating(op, "r1", r1);
  check_dim(op, "r2", r2, 1, "(num_heads,)");
  check_same_dtype(op, "r2", r2, "r1", r1);
  check_same_device(op, "r2", r2, "r1", r1);
  POSENC_CHECK_ARG(r2.sym_size(0) == r1.sym_size(0), op, "r2",
                   c10::str("must have the length of 'r1' (", r1.sym_size(0), ")"), "length ",
                   r2.sym_size(0));
  check_length(op, "q_len", q_len);
  check_length(op, "k_len", k_len);
  const auto k = parse_kerple_kind(op, kind);
  check_bias_size(op, r1.sym_size(0), q_len, k_len, r1.scalar_type());
  return k;
}

template <typename Int>
KerpleKind check_kerple_bias_backward(const char* op, const at::Tensor& grad, const at::Tensor& r1,
                                      const at::Tensor& r2, const Int& q_len, const Int& k_len,
                                      c10::string_view kind) {
  const auto k = check_kerple_bias(op, r1, r2, q_len, k_len, kind);
  check_dim(op, "grad", grad, 3, "(num_heads, q_len, k_len)");
  check_floating(op, "grad", grad);
  check_grad_dtype(op, "grad", grad, "r1", r1);
  check_same_device(op, "grad", grad, "r1", r1);
  const bool same = grad.sym_size(0) == r1.sym_size(0) &&
                    grad.sym_size(1) == c10::SymInt(q_len) && grad.sym_size(2) == c10::SymInt(k_len);
  POSENC_CHECK_ARG(same, op, "grad",
                   c10::str("must have shape (num_heads, q_len, k_len) = [", r1.sym_size(0), ", ",
                            q_len, ", ", k_len, "]"),
                   "shape ", shape_str(grad));
  return k;
}

// Values are only readable on the host: r2 < 0 makes 1 + r2 * d negative for some d, and the
// log kernel's value NaN. `r2` must be a CPU tensor. The finiteness test comes first so that a
// NaN r2 reads the same here as in check_kerple_values.
inline void check_kerple_r2_values(const char* op, const at::Tensor& r2, KerpleKind kind) {
  if (kind != KerpleKind::Log) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, r2.scalar_type(), "kerple_check_r2", [&] {
    const scalar_t* v = r2.const_data_ptr<scalar_t>();
    const int64_t stride = r2.stride(0);
    for (int64_t h = 0; h < r2.size(0); ++h) {
      const double x = static_cast<double>(v[h * stride]);
      POSENC_CHECK_ARG(std::isfinite(x), op, "r2", "must be finite", "r2[", h, "] = ", x);
      POSENC_CHECK_ARG(x >= 0, op, "r2",
                       "must be >= 0 for kind \"log\" (1 + r2 * d must stay positive)", "r2[",
                       h, "] = ", x);
    }
  });
}

// Every value check of CPU parameters: r1 and r2 finite, then r2's sign for kind "log".
inline void check_kerple_values(const char* op, const at::Tensor& r1, const at::Tensor& r2,
                                KerpleKind kind) {
  check_finite(op, "r1", r1);
  check_finite(op, "r2", r2);
  check_kerple_r2_values(op, r2, kind);
}

// The kernel's distance on diagonal t = j - i + q_len - 1 of the (q_len, k_len) grid:
// d = q_pos - k_pos, then max(d, 0) (causal) or |d| (bidirectional). The bias depends on
// (head, distance) only.
C10_HOST_DEVICE inline int64_t kerple_distance(int64_t t, int64_t q_len, int64_t q_offset,
                                               int64_t k_offset, bool causal) {
  const int64_t d = q_offset - k_offset + (q_len - 1) - t;
  if (causal) return d > 0 ? d : 0;
  return d < 0 ? -d : d;
}

}  // namespace detail
}  // namespace posenc
