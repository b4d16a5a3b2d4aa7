// Sinusoidal absolute table (Vaswani et al. 2017 §3.5): dispatcher handle shared by kernels.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>

#include "check.h"

namespace posenc {
namespace detail {

inline auto& sinusoidal_table_op() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("posenc::sinusoidal_table", "")
                       .typed<at::Tensor(const at::Tensor&, int64_t, double, bool,
                                         std::optional<at::ScalarType>)>();
  return op;
}

}  // namespace detail
}  // namespace posenc
