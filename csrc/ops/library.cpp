// The one TORCH_LIBRARY for the namespace; every op's schema lives in its own front file
// (csrc/ops/<op>.cpp) as a TORCH_LIBRARY_FRAGMENT.
#include <torch/library.h>

#include "posenc/version.h"

TORCH_LIBRARY(posenc, m) {
  m.def("version() -> str", []() -> std::string { return posenc::version(); });
  m.def("cuda_version() -> str", []() -> std::string { return posenc::cuda_version(); });
}

namespace posenc {
std::string version() { return POSENC_VERSION; }
std::string cuda_version() { return POSENC_CUDA_VERSION; }
}  // namespace posenc
