// Forgetting gate (Lin et al. 2025, "Forgetting Transformer"): dispatcher handles, argument
// and value checks shared by the CPU, CUDA and Meta kernels, and the fp64 prefix sums of the
// log gates that the bias op and the fused attention term both read.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "check.h"

namespace posenc {
namespace detail {

constexpr const char* kFgateOp = "forgetting_gate_bias";
constexpr const char* kFgateBackwardOp = "forgetting_gate_bias_backward";

inline auto& forgetting_gate_bias_op() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("posenc::forgetting_gate_bias", "")
                       .typed<at::Tensor(const at::Tensor&, c10::SymInt, c10::SymInt,
                                         c10::SymInt)>();
  return op;
}

inline auto& forgetting_gate_bias_backward_op() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("posenc::forgetting_gate_bias_backward", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, c10::SymInt,
                                         c10::SymInt, c10::SymInt)>();
  return op;
}

// Query i reads the gates of the keys up to its own position: its position q_offset + i must
// be a key position k_offset + t, 0 <= t < k_len. For every query of a call that is
// k_offset <= q_offset and q_offset + q_len <= k_offset + k_len (prefill, chunked prefill,
// KV-cache decoding: the keys end at or after the last query).
// Checked when every value is concrete (the real kernels); a negative q_len is reported by
// check_length.
inline void check_fgate_positions(const char* op, std::optional<int64_t> ql,
                                  std::optional<int64_t> kl, std::optional<int64_t> qo,
                                  std::optional<int64_t> ko) {
  if (!ql || !kl || !qo || !ko || *ql < 0) return;
  const int64_t base = *qo - *ko;  // offsets within +-2^61 (check_offsets): no overflow
  POSENC_CHECK_ARG(base >= 0 && base + *ql <= *kl, op, "q_offset",
                   c10::str("must place every query at a key position (k_offset <= q_offset and "
                            "q_offset + q_len <= k_offset + k_len = ", *ko + *kl,
                            "): query i reads the gates of the keys up to its own position"),
                   *qo, " with q_len = ", *ql, ", k_offset = ", *ko, ", k_len = ", *kl);
}

template <typename Int>
void check_forgetting_gate_bias(const char* op, const at::Tensor& log_fgate, const Int& q_len,
                                const Int& q_offset, const Int& k_offset) {
  check_dim(op, "log_fgate", log_fgate, 3, "(batch, num_heads, k_len)");
  check_floating(op, "log_fgate", log_fgate);
  check_length(op, "q_len", q_len);
  check_offsets(op, q_offset, k_offset);
  const c10::SymInt k_len = log_fgate.sym_size(2);
  check_fgate_positions(op, concrete(q_len), concrete(k_len), concrete(q_offset),
                        concrete(k_offset));
  check_output_size(op, "log_fgate",
                    {log_fgate.sym_size(0), log_fgate.sym_size(1), c10::SymInt(q_len), k_len},
                    log_fgate.scalar_type());
}

template <typename Int>
void check_forgetting_gate_bias_backward(const char* op, const at::Tensor& grad,
                                         const at::Tensor& log_fgate, const Int& q_len,
                                         const Int& q_offset, const Int& k_offset) {
  check_forgetting_gate_bias(op, log_fgate, q_len, q_offset, k_offset);
  check_dim(op, "grad", grad, 4, "(batch, num_heads, q_len, k_len)");
  check_floating(op, "grad", grad);
  check_same_device(op, "grad", grad, "log_fgate", log_fgate);
  const bool same = grad.sym_size(0) == log_fgate.sym_size(0) &&
                    grad.sym_size(1) == log_fgate.sym_size(1) &&
                    grad.sym_size(2) == c10::SymInt(q_len) &&
                    grad.sym_size(3) == log_fgate.sym_size(2);
  POSENC_CHECK_ARG(same, op, "grad",
                   c10::str("must have shape (batch, num_heads, q_len, k_len) = [",
                            log_fgate.sym_size(0), ", ", log_fgate.sym_size(1), ", ", q_len, ", ",
                            log_fgate.sym_size(2), "]"),
                   "shape ", shape_str(grad));
}

// Values of a host tensor: finite and <= 0 (a log of a gate sigmoid(f) in (0, 1]). A NaN or
// -inf gate would turn c_q - c_k into NaN for every later pair; a positive one is not a
// forget gate. The first bad element in index order is named. Device tensors are not read
// (a stream sync per call); see the ops' docs.
inline void check_log_fgate_values(const char* op, const char* arg, const at::Tensor& t) {
  if (!t.device().is_cpu() || t.numel() == 0) return;
  const auto c = t.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, c.scalar_type(), "posenc_check_log_fgate", [&] {
    const scalar_t* v = c.const_data_ptr<scalar_t>();
    const int64_t n = c.numel();
    for (int64_t x = 0; x < n; ++x) {
      const double y = static_cast<double>(v[x]);
      if (std::isfinite(y) && y <= 0) continue;
      // Name the element by its index in the tensor's own shape.
      std::string idx;
      int64_t rem = x;
      std::vector<int64_t> sub(c.dim());
      for (int64_t d = c.dim() - 1; d >= 0; --d) {
        sub[d] = c.size(d) > 0 ? rem % c.size(d) : 0;
        rem = c.size(d) > 0 ? rem / c.size(d) : 0;
      }
      for (int64_t d = 0; d < c.dim(); ++d) idx += c10::str(d > 0 ? ", " : "", sub[d]);
      POSENC_CHECK_ARG(std::isfinite(y), op, arg,
                       "must be finite (log sigmoid of the gate logits; -inf or NaN makes "
                       "c_q - c_k NaN)",
                       arg, "[", idx, "] = ", y);
      POSENC_CHECK_ARG(false, op, arg,
                       "must be <= 0 (the log of a forget gate in (0, 1], Lin et al. 2025; "
                       "pass torch.nn.functional.logsigmoid of the gate logits)",
                       arg, "[", idx, "] = ", y);
    }
  });
}

}  // namespace detail
}  // namespace posenc
