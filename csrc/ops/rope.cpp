// RoPE schemas, rope_inv_freq, and the public C++ functions.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>

#include "posenc/ops.h"
#include "rope.h"

namespace posenc {
namespace {

// A handful of numbers per model: plain ATen in fp64, rounded once to fp32, stays exact and
// traceable on every device.
at::Tensor rope_inv_freq_impl(int64_t dim, double base, std::optional<at::Device> device,
                              std::optional<at::ScalarType> dtype) {
  POSENC_CHECK_ARG(dim > 0 && dim % 2 == 0, "rope_inv_freq", "dim", "must be even and > 0", dim);
  POSENC_CHECK_ARG(std::isfinite(base) && base > 1.0, "rope_inv_freq", "base",
                   "must be finite and > 1", base);
  const at::ScalarType dt = dtype.value_or(at::kFloat);
  POSENC_CHECK_ARG(dt == at::kFloat || dt == at::kDouble, "rope_inv_freq", "dtype",
                   "must be torch.float32 (reference precision) or torch.float64 (exact)", dt);
  auto opts = at::TensorOptions().dtype(at::kDouble).device(device.value_or(at::kCPU));
  auto i2 = at::arange(0, dim, 2, opts);
  return at::pow(base, i2 * (-1.0 / static_cast<double>(dim))).to(dt);
}

}  // namespace

namespace ops {

at::Tensor rope_inv_freq(int64_t dim, double base, at::Device device, at::ScalarType dtype) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("posenc::rope_inv_freq", "")
                       .typed<at::Tensor(int64_t, double, std::optional<at::Device>,
                                         std::optional<at::ScalarType>)>();
  return op.call(dim, base, device, dtype);
}

at::Tensor rope(const at::Tensor& x, const std::optional<at::Tensor>& positions,
                const at::Tensor& inv_freq, int64_t offset, std::optional<int64_t> rotary_dim,
                bool interleaved, const std::string& layout,
                const std::optional<at::Tensor>& cu_seqlens, double attention_factor,
                const std::optional<at::Tensor>& xpos_zeta, double xpos_scale_base,
                bool xpos_inverse, int64_t xpos_centre) {
  return detail::rope_op().call(x, positions, inv_freq, offset, rotary_dim, interleaved, layout,
                                cu_seqlens, attention_factor, xpos_zeta, xpos_scale_base,
                                xpos_inverse, xpos_centre);
}

std::tuple<at::Tensor, at::Tensor> rope_qk(
    const at::Tensor& q, const at::Tensor& k, const std::optional<at::Tensor>& positions,
    const at::Tensor& inv_freq, int64_t offset, std::optional<int64_t> rotary_dim,
    bool interleaved, const std::string& layout, const std::optional<at::Tensor>& cu_seqlens,
    double attention_factor, const std::optional<at::Tensor>& xpos_zeta, double xpos_scale_base,
    int64_t xpos_centre) {
  return detail::rope_qk_op().call(q, k, positions, inv_freq, offset, rotary_dim, interleaved,
                                   layout, cu_seqlens, attention_factor, xpos_zeta,
                                   xpos_scale_base, xpos_centre);
}

at::Tensor apply_rotary_pos_emb(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin,
                                bool interleaved, const std::string& layout) {
  return detail::apply_rotary_pos_emb_op().call(x, cos, sin, interleaved, layout);
}

}  // namespace ops
}  // namespace posenc

TORCH_LIBRARY_FRAGMENT(posenc, m) {
  m.def(
      "rope_inv_freq(int dim, float base=10000.0, *, Device? device=None, "
      "ScalarType? dtype=None) -> Tensor");
  m.def(
      "rope(Tensor x, Tensor? positions, Tensor inv_freq, SymInt offset=0, int? rotary_dim=None, "
      "bool interleaved=False, str layout=\"bhsd\", Tensor? cu_seqlens=None, "
      "float attention_factor=1.0, Tensor? xpos_zeta=None, float xpos_scale_base=512.0, "
      "bool xpos_inverse=False, SymInt xpos_centre=0) -> Tensor");
  m.def(
      "rope_backward(Tensor grad, Tensor? positions, Tensor inv_freq, SymInt offset, "
      "int? rotary_dim, bool interleaved, str layout, Tensor? cu_seqlens=None, "
      "float attention_factor=1.0, Tensor? xpos_zeta=None, float xpos_scale_base=512.0, "
      "bool xpos_inverse=False, SymInt xpos_centre=0) -> Tensor");
  m.def(
      "rope_qk(Tensor q, Tensor k, Tensor? positions, Tensor inv_freq, SymInt offset=0, "
      "int? rotary_dim=None, bool interleaved=False, str layout=\"bhsd\", "
      "Tensor? cu_seqlens=None, float attention_factor=1.0, Tensor? xpos_zeta=None, "
      "float xpos_scale_base=512.0, SymInt xpos_centre=0) -> (Tensor q_rot, Tensor k_rot)");
  m.def(
      "rope_qk_backward(Tensor grad_q, Tensor grad_k, Tensor? positions, Tensor inv_freq, "
      "SymInt offset, int? rotary_dim, bool interleaved, str layout, Tensor? cu_seqlens=None, "
      "float attention_factor=1.0, Tensor? xpos_zeta=None, float xpos_scale_base=512.0, "
      "SymInt xpos_centre=0) -> (Tensor grad_q, Tensor grad_k)");
  m.def(
      "apply_rotary_pos_emb(Tensor x, Tensor cos, Tensor sin, bool interleaved=False, "
      "str layout=\"bhsd\") -> Tensor");
  m.def(
      "apply_rotary_pos_emb_backward(Tensor grad, Tensor x, Tensor cos, Tensor sin, "
      "bool interleaved, str layout) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(posenc, CompositeImplicitAutograd, m) {
  m.impl("rope_inv_freq", &posenc::rope_inv_freq_impl);
}
