#include <torch/library.h>

#include <tuple>

#include "../kerple.h"

namespace posenc {
namespace {

at::Tensor kerple_bias_meta(const at::Tensor& r1, const at::Tensor& r2, c10::SymInt q_len,
                            c10::SymInt k_len, c10::SymInt q_offset, c10::SymInt k_offset,
                            c10::string_view kind, bool causal) {
  // r2's values (r2 >= 0 for "log") are checked by the CPU kernel only.
  detail::check_kerple_bias("kerple_bias", r1, r2, q_len, k_len, kind);
  detail::check_offsets("kerple_bias", q_offset, k_offset);
  return at::empty_symint({r1.sym_size(0), q_len, k_len}, r1.options());
}

void kerple_bias_out_meta(const at::Tensor& r1, const at::Tensor& r2, c10::SymInt q_len,
                          c10::SymInt k_len, c10::SymInt q_offset, c10::SymInt k_offset,
                          c10::string_view kind, bool causal, at::Tensor& out) {
  detail::check_kerple_bias("kerple_bias", r1, r2, q_len, k_len, kind);
  detail::check_offsets("kerple_bias", q_offset, k_offset);
  detail::check_bias_out("kerple_bias", out, r1.sym_size(0), q_len, k_len, r1, "r1");
}

std::tuple<at::Tensor, at::Tensor> kerple_bias_backward_meta(
    const at::Tensor& grad, const at::Tensor& r1, const at::Tensor& r2, c10::SymInt q_len,
    c10::SymInt k_len, c10::SymInt q_offset, c10::SymInt k_offset, c10::string_view kind,
    bool causal) {
  detail::check_kerple_bias_backward("kerple_bias_backward", grad, r1, r2, q_len, k_len, kind);
  detail::check_offsets("kerple_bias_backward", q_offset, k_offset);
  return {at::empty_symint({r1.sym_size(0)}, r1.options()),
          at::empty_symint({r1.sym_size(0)}, r1.options())};
}

}  // namespace
}  // namespace posenc

TORCH_LIBRARY_IMPL(posenc, Meta, m) {
  m.impl("kerple_bias", &posenc::kerple_bias_meta);
  m.impl("kerple_bias.out", &posenc::kerple_bias_out_meta);
  m.impl("kerple_bias_backward", &posenc::kerple_bias_backward_meta);
}
