#include <torch/library.h>

#include "../sinusoidal.h"

namespace posenc {
namespace {

at::Tensor sinusoidal_table_meta(const at::Tensor& positions, int64_t dim, double base,
                                 bool interleaved, std::optional<at::ScalarType> dtype) {
  detail::check_sinusoidal_table("sinusoidal_table", positions, dim, base, dtype);
  return at::empty_symint({positions.sym_size(0), c10::SymInt(dim)},
                          positions.options().dtype(detail::sinusoidal_dtype(dtype)));
}

}  // namespace
}  // namespace posenc

TORCH_LIBRARY_IMPL(posenc, Meta, m) {
  m.impl("sinusoidal_table", &posenc::sinusoidal_table_meta);
}
