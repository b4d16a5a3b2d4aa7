// Which copy of the vectorised CPU kernels (csrc/ops/cpu/*.vec.cpp) runs. CMake compiles those
// files once per capability into namespaces posenc::cpu::DEFAULT and posenc::cpu::AVX2 (x86-64
// only); POSENC_CPU_DISPATCH calls the copy chosen once per process.
#pragma once

namespace posenc {
namespace cpu {

enum class Capability { kDefault, kAvx2 };

// AVX2 when this build has it and the CPU has AVX2 and FMA. POSENC_CPU_CAPABILITY=default
// (or ATen's own ATEN_CPU_CAPABILITY=default) forces the portable copy, e.g. to test it.
Capability capability();
const char* capability_name(Capability c);

}  // namespace cpu
}  // namespace posenc

#ifdef POSENC_HAVE_CPU_AVX2
#define POSENC_CPU_DISPATCH(fn, ...)                                             \
  (::posenc::cpu::capability() == ::posenc::cpu::Capability::kAvx2               \
       ? ::posenc::cpu::AVX2::fn(__VA_ARGS__)                                    \
       : ::posenc::cpu::DEFAULT::fn(__VA_ARGS__))
#else
#define POSENC_CPU_DISPATCH(fn, ...) ::posenc::cpu::DEFAULT::fn(__VA_ARGS__)
#endif

// Declares a kernel list in every capability namespace; the .vec.cpp file defines it in
// posenc::cpu::CPU_CAPABILITY.
#define POSENC_DECLARE_CPU_KERNELS(DECLS) \
  namespace posenc {                      \
  namespace cpu {                         \
  namespace DEFAULT {                     \
  DECLS                                   \
  }                                       \
  namespace AVX2 {                        \
  DECLS                                   \
  }                                       \
  }                                       \
  }
