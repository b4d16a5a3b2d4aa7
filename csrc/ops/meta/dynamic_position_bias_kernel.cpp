#include <torch/library.h>

#include <tuple>
#include <vector>

#include "../dynamic_position_bias.h"

namespace posenc {
namespace {

using detail::TensorVec;

// Parameter values (finite) are checked by the CPU kernel only.
at::Tensor dynamic_position_bias_meta(at::TensorList weights, at::TensorList biases,
                                      at::TensorList norm_weights, c10::SymInt q_len,
                                      c10::SymInt k_len, c10::SymInt q_offset,
                                      c10::SymInt k_offset, bool log_distance, bool causal,
                                      double norm_eps) {
  const auto heads = detail::check_dynamic_position_bias("dynamic_position_bias", weights, biases,
                                                         q_len, k_len, norm_weights, norm_eps);
  detail::check_offsets("dynamic_position_bias", q_offset, k_offset);
  return at::empty_symint({heads, q_len, k_len}, weights[0].options());
}

std::tuple<TensorVec, TensorVec, TensorVec> dynamic_position_bias_backward_meta(
    const at::Tensor& grad, at::TensorList weights, at::TensorList biases,
    at::TensorList norm_weights, c10::SymInt q_len, c10::SymInt k_len, c10::SymInt q_offset,
    c10::SymInt k_offset, bool log_distance, bool causal, double norm_eps) {
  const char* op = "dynamic_position_bias_backward";
  detail::check_dynamic_position_bias_backward(op, grad, weights, biases, q_len, k_len,
                                               norm_weights, norm_eps);
  detail::check_offsets(op, q_offset, k_offset);
  auto like = [](at::TensorList ts) {
    TensorVec out;
    for (const auto& t : ts) out.push_back(at::empty_symint(t.sym_sizes(), t.options()));
    return out;
  };
  return {like(weights), like(biases), like(norm_weights)};
}

}  // namespace
}  // namespace posenc

TORCH_LIBRARY_IMPL(posenc, Meta, m) {
  m.impl("dynamic_position_bias", &posenc::dynamic_position_bias_meta);
  m.impl("dynamic_position_bias_backward", &posenc::dynamic_position_bias_backward_meta);
}
