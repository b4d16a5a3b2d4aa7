// ALiBi schemas and the public C++ functions.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>

#include "alibi.h"
#include "posenc/ops.h"

namespace posenc {
namespace {

// Slopes are a handful of numbers computed once per model: plain ATen in fp64 keeps them
// exact and traceable (FakeTensor, torch.compile) on every device.
at::Tensor alibi_slopes_impl(int64_t num_heads, std::optional<at::ScalarType> dtype,
                             std::optional<at::Device> device) {
  detail::check_positive("alibi_slopes", "num_heads", num_heads);
  const auto out_dtype = dtype.value_or(at::kFloat);
  POSENC_CHECK_ARG(detail::is_float_dtype(out_dtype), "alibi_slopes", "dtype",
                   "must be float16, bfloat16, float32 or float64", out_dtype);
  auto opts = at::TensorOptions().dtype(at::kDouble).device(device.value_or(at::kCPU));
  // n = largest power of two <= num_heads; slopes 2^(-8 k / n), k = 1..n.
  int64_t n = 1;
  while (n <= num_heads / 2) n *= 2;  // not n * 2 <= num_heads: that overflows near 2^63
  auto k = at::arange(1, n + 1, opts);
  auto slopes = at::exp2(k * (-8.0 / static_cast<double>(n)));
  if (n < num_heads) {
    // The remaining heads take the odd-numbered slopes of the 2n-head sequence.
    auto k2 = at::arange(1, 2 * (num_heads - n), 2, opts);
    slopes = at::cat({slopes, at::exp2(k2 * (-8.0 / static_cast<double>(2 * n)))});
  }
  return slopes.to(out_dtype);
}

}  // namespace

namespace ops {

at::Tensor alibi_slopes(int64_t num_heads, at::ScalarType dtype, at::Device device) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("posenc::alibi_slopes", "")
                       .typed<at::Tensor(int64_t, std::optional<at::ScalarType>,
                                         std::optional<at::Device>)>();
  return op.call(num_heads, dtype, device);
}

at::Tensor alibi_bias(const at::Tensor& slopes, int64_t q_len, int64_t k_len, int64_t q_offset,
                      int64_t k_offset, bool causal) {
  return detail::alibi_bias_op().call(slopes, q_len, k_len, q_offset, k_offset, causal);
}

at::Tensor& alibi_bias_out(at::Tensor& out, const at::Tensor& slopes, int64_t q_len,
                           int64_t k_len, int64_t q_offset, int64_t k_offset, bool causal) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("posenc::alibi_bias", "out")
                       .typed<void(const at::Tensor&, c10::SymInt, c10::SymInt,
                                          c10::SymInt, c10::SymInt, bool, at::Tensor&)>();
  op.call(slopes, q_len, k_len, q_offset, k_offset, causal, out);
  return out;
}

}  // namespace ops
}  // namespace posenc

TORCH_LIBRARY_FRAGMENT(posenc, m) {
  m.def("alibi_slopes(int num_heads, *, ScalarType? dtype=None, Device? device=None) -> Tensor");
  m.def(
      "alibi_bias(Tensor slopes, SymInt q_len, SymInt k_len, SymInt q_offset=0, "
      "SymInt k_offset=0, bool causal=True) -> Tensor");
  // Writes a caller's (H, q_len, k_len) buffer: reusing it across calls skips the page faults
  // of a fresh output. No autograd (as for ATen's out= ops). Returns nothing rather than an
  // alias of `out`: torch.compile functionalizes custom ops only without aliased outputs.
  m.def(
      "alibi_bias.out(Tensor slopes, SymInt q_len, SymInt k_len, SymInt q_offset=0, "
      "SymInt k_offset=0, bool causal=True, *, Tensor(a!) out) -> ()");
  m.def(
      "alibi_bias_backward(Tensor grad, Tensor slopes, SymInt q_len, SymInt k_len, "
      "SymInt q_offset, SymInt k_offset, bool causal) -> Tensor");
}

TORCH_LIBRARY_IMPL(posenc, CompositeImplicitAutograd, m) {
  m.impl("alibi_slopes", &posenc::alibi_slopes_impl);
}
