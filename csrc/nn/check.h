// Option and argument checks shared by the posenc::nn modules (not installed).
// Messages read like the ops' ("posenc.<Module>: option '<name>' <expected>, but got <given>")
// and the Python twins raise the same text, so users see one wording in both languages.
#pragma once

#include <c10/util/Exception.h>

#include <sstream>
#include <string>

// Bad constructor options: c10::ValueError (Python: ValueError), raised from reset().
#define POSENC_CHECK_OPTION(cond, module, option, expected, ...)                         \
  TORCH_CHECK_VALUE((cond), "posenc.", module, ": option '", option, "' ", expected, \
                    ", but got ", __VA_ARGS__)

// Bad forward arguments: c10::Error (Python: RuntimeError).
#define POSENC_CHECK_INPUT(cond, module, arg, expected, ...)                        \
  TORCH_CHECK((cond), "posenc.", module, ": argument '", arg, "' ", expected, \
              ", but got ", __VA_ARGS__)

namespace posenc {
namespace nn {
namespace detail {

// Python-style float formatting for pretty_print (10000.0 -> "10000", 0.01 -> "0.01").
inline std::string fmt(double v) {
  std::ostringstream os;
  os << v;
  return os.str();
}

inline const char* fmt(bool v) { return v ? "true" : "false"; }

}  // namespace detail
}  // namespace nn
}  // namespace posenc
