// Sinusoidal table schema and public C++ functions.
#include <torch/library.h>

#include "posenc/ops.h"
#include "sinusoidal.h"

namespace posenc {
namespace ops {

at::Tensor sinusoidal_table_at(const at::Tensor& positions, int64_t dim, double base,
                               bool interleaved, std::optional<at::ScalarType> dtype) {
  return detail::sinusoidal_table_op().call(positions, dim, base, interleaved, dtype);
}

at::Tensor sinusoidal_table(int64_t num_positions, int64_t dim, double base, int64_t offset,
                            bool interleaved, at::ScalarType dtype, at::Device device) {
  detail::check_nonnegative("sinusoidal_table", "num_positions", num_positions);
  // Before the positions are allocated; the op checks again from the positions it gets.
  detail::check_output_size("sinusoidal_table", num_positions >= dim ? "num_positions" : "dim",
                            {c10::SymInt(num_positions), c10::SymInt(dim)}, dtype);
  auto positions = at::arange(offset, offset + num_positions,
                              at::TensorOptions().dtype(at::kLong).device(device));
  return sinusoidal_table_at(positions, dim, base, interleaved, dtype);
}

}  // namespace ops
}  // namespace posenc

TORCH_LIBRARY_FRAGMENT(posenc, m) {
  m.def(
      "sinusoidal_table(Tensor positions, int dim, float base=10000.0, bool interleaved=True, "
      "ScalarType? dtype=None) -> Tensor");
}
