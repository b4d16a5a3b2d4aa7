// Autocast (torch.autocast, CPU and CUDA) for the ops that multiply activations, as ATen's
// matmul and scaled_dot_product_attention do under its lower-precision policy: the activation
// tensors of an eligible dtype (float32, float16, bfloat16; never float64) are cast to the
// autocast dtype, the op runs on them (math in fp32 inside, as always), and the output has the
// autocast dtype. Position parameters (ALiBi slopes, the T5 table, KERPLE r1/r2) are read as
// they are: each kernel computes the position term in fp32 from any float parameter dtype.
//
// Every other posenc op needs no registration (autocast falls through to it): rope and
// apply_rotary_pos_emb keep x's dtype, the bias ops and sinusoidal_table their parameters' /
// requested dtype, like ATen's elementwise ops under autocast.
#include <ATen/autocast_mode.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include "../attention.h"
#include "../rel_pos.h"

namespace posenc {
namespace {

using detail::OptTensor;

template <c10::DeviceType kDevice>
std::tuple<at::Tensor, at::Tensor> relative_attention_autocast(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const OptTensor& slopes,
    const OptTensor& table, const OptTensor& r1, const OptTensor& r2, const OptTensor& rel_emb,
    const OptTensor& q_rel, bool causal, const OptTensor& key_padding_mask,
    std::optional<double> scale, c10::SymInt q_offset, c10::SymInt k_offset,
    std::optional<bool> bidirectional, std::optional<int64_t> max_distance,
    std::optional<c10::string_view> kerple_kind, c10::string_view layout,
    const OptTensor& cu_seqlens_q, const OptTensor& cu_seqlens_k,
    std::optional<c10::SymInt> max_seqlen_q, std::optional<c10::SymInt> max_seqlen_k,
    const OptTensor& log_fgate) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(
      at::autocast::get_autocast_dispatch_key_from_device_type(kDevice));
  const at::ScalarType dt = at::autocast::get_autocast_dtype(kDevice);
  using at::autocast::cached_cast;
  return detail::relative_attention_op().call(
      cached_cast(dt, q, kDevice), cached_cast(dt, k, kDevice), cached_cast(dt, v, kDevice),
      slopes, table, r1, r2, cached_cast(dt, rel_emb, kDevice), cached_cast(dt, q_rel, kDevice),
      causal, key_padding_mask, scale, std::move(q_offset), std::move(k_offset), bidirectional,
      max_distance, kerple_kind, layout, cu_seqlens_q, cu_seqlens_k, std::move(max_seqlen_q),
      std::move(max_seqlen_k), log_fgate);  // the gates, a position parameter, as they are
}

// q · R[dist(i, j)]: a product of activations (q) with an embedding table, as matmul.
template <c10::DeviceType kDevice>
at::Tensor rel_pos_scores_autocast(const at::Tensor& q, const at::Tensor& rel_emb,
                                   c10::SymInt q_offset, c10::SymInt k_offset, c10::SymInt k_len,
                                   std::optional<int64_t> max_distance, bool causal) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(
      at::autocast::get_autocast_dispatch_key_from_device_type(kDevice));
  const at::ScalarType dt = at::autocast::get_autocast_dtype(kDevice);
  return detail::rel_pos_scores_op().call(at::autocast::cached_cast(dt, q, kDevice),
                                          at::autocast::cached_cast(dt, rel_emb, kDevice),
                                          std::move(q_offset), std::move(k_offset),
                                          std::move(k_len), max_distance, causal);
}

}  // namespace
}  // namespace posenc

TORCH_LIBRARY_IMPL(posenc, AutocastCPU, m) {
  m.impl("relative_attention", &posenc::relative_attention_autocast<c10::DeviceType::CPU>);
  m.impl("rel_pos_scores", &posenc::rel_pos_scores_autocast<c10::DeviceType::CPU>);
}

TORCH_LIBRARY_IMPL(posenc, AutocastCUDA, m) {
  m.impl("relative_attention", &posenc::relative_attention_autocast<c10::DeviceType::CUDA>);
  m.impl("rel_pos_scores", &posenc::rel_pos_scores_autocast<c10::DeviceType::CUDA>);
}
