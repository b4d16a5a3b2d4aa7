// T5 relative bias schemas and public C++ functions.
#include <torch/library.h>

#include "posenc/ops.h"
#include "t5.h"

namespace posenc {
namespace ops {

at::Tensor t5_relative_bucket(const at::Tensor& relative_position, bool bidirectional,
                              int64_t num_buckets, int64_t max_distance) {
  return detail::t5_relative_bucket_op().call(relative_position, bidirectional, num_buckets,
                                              max_distance);
}

at::Tensor t5_bias(const at::Tensor& table, int64_t q_len, int64_t k_len, int64_t q_offset,
                   int64_t k_offset, bool bidirectional, int64_t max_distance) {
  return detail::t5_bias_op().call(table, q_len, k_len, q_offset, k_offset, bidirectional,
                                   max_distance);
}

at::Tensor& t5_bias_out(at::Tensor& out, const at::Tensor& table, int64_t q_len, int64_t k_len,
                        int64_t q_offset, int64_t k_offset, bool bidirectional,
                        int64_t max_distance) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("posenc::t5_bias", "out")
                       .typed<void(const at::Tensor&, c10::SymInt, c10::SymInt,
                                          c10::SymInt, c10::SymInt, bool, int64_t, at::Tensor&)>();
  op.call(table, q_len, k_len, q_offset, k_offset, bidirectional, max_distance, out);
  return out;
}

}  // namespace ops
}  // namespace posenc

TORCH_LIBRARY_FRAGMENT(posenc, m) {
  m.def(
      "t5_relative_bucket(Tensor relative_position, bool bidirectional=True, int num_buckets=32, "
      "int max_distance=128) -> Tensor");
  m.def(
      "t5_bias(Tensor table, SymInt q_len, SymInt k_len, SymInt q_offset=0, SymInt k_offset=0, "
      "bool bidirectional=True, int max_distance=128) -> Tensor");
  m.def(
      "t5_bias.out(Tensor table, SymInt q_len, SymInt k_len, SymInt q_offset=0, "
      "SymInt k_offset=0, bool bidirectional=True, int max_distance=128, *, Tensor(a!) out) "
      "-> ()");
  m.def(
      "t5_bias_backward(Tensor grad, Tensor table, SymInt q_len, SymInt k_len, SymInt q_offset, "
      "SymInt k_offset, bool bidirectional, int max_distance) -> Tensor");
}
