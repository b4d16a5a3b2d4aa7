#include <torch/library.h>

#include "../t5.h"

namespace posenc {
namespace {

at::Tensor t5_relative_bucket_meta(const at::Tensor& relative_position, bool bidirectional,
                                   int64_t num_buckets, int64_t max_distance) {
  detail::check_t5_relative_bucket("t5_relative_bucket", relative_position, bidirectional,
                                   num_buckets, max_distance);
  return at::empty_symint(relative_position.sym_sizes(), relative_position.options());
}

at::Tensor t5_bias_meta(const at::Tensor& table, c10::SymInt q_len, c10::SymInt k_len,
                        c10::SymInt q_offset, c10::SymInt k_offset, bool bidirectional,
                        int64_t max_distance) {
  detail::check_t5_bias("t5_bias", table, q_len, k_len, bidirectional, max_distance);
  detail::check_offsets("t5_bias", q_offset, k_offset);
  return at::empty_symint({table.sym_size(1), q_len, k_len}, table.options());
}

void t5_bias_out_meta(const at::Tensor& table, c10::SymInt q_len, c10::SymInt k_len,
                      c10::SymInt q_offset, c10::SymInt k_offset, bool bidirectional,
                      int64_t max_distance, at::Tensor& out) {
  detail::check_t5_bias("t5_bias", table, q_len, k_len, bidirectional, max_distance);
  detail::check_offsets("t5_bias", q_offset, k_offset);
  detail::check_bias_out("t5_bias", out, table.sym_size(1), q_len, k_len, table, "table");
}

at::Tensor t5_bias_backward_meta(const at::Tensor& grad, const at::Tensor& table,
                                 c10::SymInt q_len, c10::SymInt k_len, c10::SymInt q_offset,
                                 c10::SymInt k_offset, bool bidirectional, int64_t max_distance) {
  detail::check_t5_bias_backward("t5_bias_backward", grad, table, q_len, k_len, bidirectional,
                                 max_distance);
  detail::check_offsets("t5_bias_backward", q_offset, k_offset);
  return at::empty_symint(table.sym_sizes(), table.options());
}

}  // namespace
}  // namespace posenc

TORCH_LIBRARY_IMPL(posenc, Meta, m) {
  m.impl("t5_relative_bucket", &posenc::t5_relative_bucket_meta);
  m.impl("t5_bias", &posenc::t5_bias_meta);
  m.impl("t5_bias.out", &posenc::t5_bias_out_meta);
  m.impl("t5_bias_backward", &posenc::t5_bias_backward_meta);
}
