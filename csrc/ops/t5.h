// T5 relative bias (Raffel et al. 2020): bucket function, dispatcher handles and argument
// checks shared by the kernels.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/macros/Macros.h>

#include <cmath>
#include <cstdint>

#include "check.h"

namespace posenc {
namespace detail {

inline auto& t5_relative_bucket_op() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("posenc::t5_relative_bucket", "")
                       .typed<at::Tensor(const at::Tensor&, bool, int64_t, int64_t)>();
  return op;
}

inline auto& t5_bias_op() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("posenc::t5_bias", "")
                       .typed<at::Tensor(const at::Tensor&, c10::SymInt, c10::SymInt, c10::SymInt,
                                         c10::SymInt, bool, int64_t)>();
  return op;
}

inline auto& t5_bias_backward_op() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("posenc::t5_bias_backward", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, c10::SymInt,
                                         c10::SymInt, c10::SymInt, c10::SymInt, bool, int64_t)>();
  return op;
}

// Bucket of one relative position (key - query), as Hugging Face's
// T5Attention._relative_position_bucket: max_exact = (buckets per direction) / 2 exact
// distances, then log-spaced buckets up to max_distance, clamped to the last bucket. The log
// term is evaluated in fp32 in the same order as HF (fp32 log of n / max_exact, divided by the
// fp64 log(max_distance / max_exact) rounded to fp32, times the number of log buckets,
// truncated), so that bucket boundaries agree with checkpoints trained with it.
// Arguments must have passed check_t5_buckets (max_exact >= 1, max_distance > max_exact).
C10_HOST_DEVICE inline int64_t t5_bucket(int64_t relative_position, bool bidirectional,
                                         int64_t num_buckets, int64_t max_distance) {
  int64_t bucket = 0;
  int64_t n;  // distance measured in the bucketed direction, >= 0
  // |INT64_MIN| does not fit: saturate (it lands in the last bucket either way).
  const int64_t magnitude = relative_position == INT64_MIN ? INT64_MAX
                            : relative_position < 0        ? -relative_position
                                                           : relative_position;
  if (bidirectional) {
    num_buckets /= 2;
    if (relative_position > 0) bucket = num_buckets;  // keys after the query: upper half
    n = magnitude;
  } else {
    n = relative_position < 0 ? magnitude : 0;  // keys after the query share bucket 0
  }
  const int64_t max_exact = num_buckets / 2;
  if (n < max_exact) return bucket + n;
  const float scaled =
      ::logf(static_cast<float>(n) / static_cast<float>(max_exact)) /
      static_cast<float>(::log(static_cast<double>(max_distance) / static_cast<double>(max_exact))) *
      static_cast<float>(num_buckets - max_exact);
  // scaled >= 0 here; clamping before the float -> int conversion keeps that conversion defined
  // for huge distances and equals HF's min(max_exact + trunc(scaled), num_buckets - 1).
  const int64_t last = num_buckets - 1 - max_exact;
  const int64_t large = scaled >= static_cast<float>(last) ? last : static_cast<int64_t>(scaled);
  return bucket + max_exact + large;
}

// num_buckets is an argument of t5_relative_bucket and the row count of t5_bias's table
// (`is_table`); it may be symbolic in a Meta kernel under dynamic shapes and is then checked
// by the real kernel.
template <typename Int>
void check_t5_buckets(const char* op, const char* nb_arg, bool is_table,
                      const Int& num_buckets_in, bool bidirectional, int64_t max_distance) {
  const auto num_buckets_opt = concrete(num_buckets_in);
  if (!num_buckets_opt) return;
  const int64_t num_buckets = *num_buckets_opt;
  const char* subject = is_table ? "must have a number of rows (num_buckets) that is " : "must be ";
  const char* unit = is_table ? " rows" : "";
  // Each direction needs max_exact >= 1 exact bucket, or the log term divides by zero.
  if (bidirectional) {
    POSENC_CHECK_ARG(num_buckets >= 4 && num_buckets % 2 == 0, op, nb_arg,
                     c10::str(subject, "even and >= 4 when bidirectional (half per direction)"),
                     num_buckets, unit);
  } else {
    POSENC_CHECK_ARG(num_buckets >= 2, op, nb_arg, c10::str(subject, ">= 2 when causal"),
                     num_buckets, unit);
  }
  const int64_t max_exact = (bidirectional ? num_buckets / 2 : num_buckets) / 2;
  POSENC_CHECK_ARG(max_distance > max_exact, op, "max_distance",
                   c10::str("must be > max_exact = ", max_exact, " (the exact buckets of ",
                            num_buckets, bidirectional ? " bidirectional" : " causal",
                            " buckets)"),
                   max_distance);
}

inline void check_t5_relative_bucket(const char* op, const at::Tensor& relative_position,
                                     bool bidirectional, int64_t num_buckets,
                                     int64_t max_distance) {
  check_dtype(op, "relative_position", relative_position, at::kLong);
  check_t5_buckets(op, "num_buckets", false, num_buckets, bidirectional, max_distance);
}

template <typename Int>
void check_t5_bias(const char* op, const at::Tensor& table, const Int& q_len, const Int& k_len,
                   bool bidirectional, int64_t max_distance) {
  check_dim(op, "table", table, 2, "(num_buckets, num_heads)");
  check_floating(op, "table", table);
  check_length(op, "q_len", q_len);
  check_length(op, "k_len", k_len);
  // the table's rows are the buckets
  check_t5_buckets(op, "table", true, table.sym_size(0), bidirectional, max_distance);
  check_bias_size(op, table.sym_size(1), q_len, k_len, table.scalar_type());
}

template <typename Int>
void check_t5_bias_backward(const char* op, const at::Tensor& grad, const at::Tensor& table,
                            const Int& q_len, const Int& k_len, bool bidirectional,
                            int64_t max_distance) {
  check_t5_bias(op, table, q_len, k_len, bidirectional, max_distance);
  check_dim(op, "grad", grad, 3, "(num_heads, q_len, k_len)");
  check_floating(op, "grad", grad);
  check_grad_dtype(op, "grad", grad, "table", table);
  check_same_device(op, "grad", grad, "table", table);
  const bool same = grad.sym_size(0) == table.sym_size(1) &&
                    grad.sym_size(1) == c10::SymInt(q_len) && grad.sym_size(2) == c10::SymInt(k_len);
  POSENC_CHECK_ARG(same, op, "grad",
                   c10::str("must have shape (num_heads, q_len, k_len) = [", table.sym_size(1),
                            ", ", q_len, ", ", k_len, "]"),
                   "shape ", shape_str(grad));
}

}  // namespace detail
}  // namespace posenc
