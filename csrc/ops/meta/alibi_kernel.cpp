#include <torch/library.h>

#include "../alibi.h"

namespace posenc {
namespace {

at::Tensor alibi_bias_meta(const at::Tensor& slopes, c10::SymInt q_len, c10::SymInt k_len,
                           c10::SymInt q_offset, c10::SymInt k_offset, bool causal) {
  detail::check_alibi_bias("alibi_bias", slopes, q_len, k_len);
  detail::check_offsets("alibi_bias", q_offset, k_offset);
  return at::empty_symint({slopes.sym_size(0), q_len, k_len}, slopes.options());
}

void alibi_bias_out_meta(const at::Tensor& slopes, c10::SymInt q_len, c10::SymInt k_len,
                         c10::SymInt q_offset, c10::SymInt k_offset, bool causal,
                         at::Tensor& out) {
  detail::check_alibi_bias("alibi_bias", slopes, q_len, k_len);
  detail::check_offsets("alibi_bias", q_offset, k_offset);
  detail::check_bias_out("alibi_bias", out, slopes.sym_size(0), q_len, k_len, slopes, "slopes");
}

at::Tensor alibi_bias_backward_meta(const at::Tensor& grad, const at::Tensor& slopes,
                                    c10::SymInt q_len, c10::SymInt k_len, c10::SymInt q_offset,
                                    c10::SymInt k_offset, bool causal) {
  detail::check_alibi_bias_backward("alibi_bias_backward", grad, slopes, q_len, k_len);
  detail::check_offsets("alibi_bias_backward", q_offset, k_offset);
  return at::empty_symint({slopes.sym_size(0)}, slopes.options());
}

}  // namespace
}  // namespace posenc

TORCH_LIBRARY_IMPL(posenc, Meta, m) {
  m.impl("alibi_bias", &posenc::alibi_bias_meta);
  m.impl("alibi_bias.out", &posenc::alibi_bias_out_meta);
  m.impl("alibi_bias_backward", &posenc::alibi_bias_backward_meta);
}
