#pragma once
#include <string>

namespace posenc {
/// Version of the posenc library, e.g. "0.1.0".
std::string version();
/// CUDA version the library's kernels were compiled for ("" for a CPU-only build).
std::string cuda_version();
}  // namespace posenc
