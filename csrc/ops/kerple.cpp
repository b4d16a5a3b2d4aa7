// KERPLE schemas and public C++ functions.
#include <torch/library.h>

#include "kerple.h"
#include "posenc/ops.h"

namespace posenc {
namespace ops {

at::Tensor kerple_bias(const at::Tensor& r1, const at::Tensor& r2, int64_t q_len, int64_t k_len,
                       int64_t q_offset, int64_t k_offset, const std::string& kind, bool causal) {
  return detail::kerple_bias_op().call(r1, r2, q_len, k_len, q_offset, k_offset, kind, causal);
}

at::Tensor& kerple_bias_out(at::Tensor& out, const at::Tensor& r1, const at::Tensor& r2,
                            int64_t q_len, int64_t k_len, int64_t q_offset, int64_t k_offset,
                            const std::string& kind, bool causal) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("posenc::kerple_bias", "out")
                       .typed<void(const at::Tensor&, const at::Tensor&, c10::SymInt,
                                          c10::SymInt, c10::SymInt, c10::SymInt,
                                          c10::string_view, bool, at::Tensor&)>();
  op.call(r1, r2, q_len, k_len, q_offset, k_offset, kind, causal, out);
  return out;
}

}  // namespace ops
}  // namespace posenc

TORCH_LIBRARY_FRAGMENT(posenc, m) {
  m.def(
      "kerple_bias(Tensor r1, Tensor r2, SymInt q_len, SymInt k_len, SymInt q_offset=0, "
      "SymInt k_offset=0, str kind=\"log\", bool causal=True) -> Tensor");
  m.def(
      "kerple_bias.out(Tensor r1, Tensor r2, SymInt q_len, SymInt k_len, SymInt q_offset=0, "
      "SymInt k_offset=0, str kind=\"log\", bool causal=True, *, Tensor(a!) out) -> ()");
  m.def(
      "kerple_bias_backward(Tensor grad, Tensor r1, Tensor r2, SymInt q_len, SymInt k_len, "
      "SymInt q_offset, SymInt k_offset, str kind, bool causal) -> (Tensor, Tensor)");
}
