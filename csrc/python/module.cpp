#include <torch/extension.h>

namespace posenc {
namespace python {
void init_nn(pybind11::module& m);
void init_hf_config(pybind11::module& m);
}
}  // namespace posenc

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "posenc C++ modules (posenc::nn) and the config.json reader bound to Python";
  posenc::python::init_nn(m);
  posenc::python::init_hf_config(m);
}
