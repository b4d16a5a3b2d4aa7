#include <torch/extension.h>

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "posenc C++ modules (posenc::nn) bound to Python";
}
