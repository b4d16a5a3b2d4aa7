#include "capability.h"

#include <cstdlib>
#include <cstring>
#include <string>

namespace posenc {
namespace cpu {
namespace {

bool forced_default(const char* var) {
  const char* v = std::getenv(var);
  if (v == nullptr) return false;
  std::string s(v);
  for (auto& ch : s) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  return s == "default";
}

Capability detect() {
#if defined(POSENC_HAVE_CPU_AVX2) && (defined(__x86_64__) || defined(_M_X64))
  if (forced_default("POSENC_CPU_CAPABILITY") || forced_default("ATEN_CPU_CAPABILITY")) {
    return Capability::kDefault;
  }
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Capability::kAvx2;
#endif
  return Capability::kDefault;
}

}  // namespace

Capability capability() {
  static const Capability c = detect();
  return c;
}

const char* capability_name(Capability c) { return c == Capability::kAvx2 ? "avx2" : "default"; }

}  // namespace cpu
}  // namespace posenc
