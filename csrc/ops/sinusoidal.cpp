// Sinusoidal table schema and public C++ functions.
#include <torch/library.h>

#include <cstdint>
#include <limits>
#include <string>

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
  TORCH_CHECK(num_positions == 0 || offset <= std::numeric_limits<int64_t>::max() - (num_positions - 1),
              "posenc.sinusoidal_table: argument 'offset' must keep the last position offset + "
              "num_positions - 1 within int64, but got offset ", offset, " with num_positions ",
              num_positions);
  // The positions are allocated before the op's output (guarded the same way in the kernel).
  if (dim > 0) {  // a bad dim gets the op's own message
    detail::check_allocatable("sinusoidal_table", num_positions >= dim ? "num_positions" : "dim",
                              {num_positions, dim}, dtype);
  }
  at::Tensor positions;
  try {
    // arange(offset, offset + n) would overflow at the int64 limit; the last position fits.
    positions = at::arange(num_positions, at::TensorOptions().dtype(at::kLong).device(device));
  } catch (const c10::Error& e) {
    const std::string why = e.what_without_backtrace();
    TORCH_CHECK(false, "posenc.sinusoidal_table: argument 'num_positions' is too large: the output "
                "cannot be allocated, but got an output of shape [", num_positions, ", ", dim,
                "] and dtype ", dtype, " (",
                detail::size_bytes({num_positions, dim}, dtype),
                " bytes; ", why.substr(0, why.find('\n')), ")");
  }
  positions.add_(offset);
  return sinusoidal_table_at(positions, dim, base, interleaved, dtype);
}

}  // namespace ops
}  // namespace posenc

TORCH_LIBRARY_FRAGMENT(posenc, m) {
  m.def(
      "sinusoidal_table(Tensor positions, int dim, float base=10000.0, bool interleaved=True, "
      "ScalarType? dtype=None) -> Tensor");
}
