"""The C++ ``posenc::nn`` modules, bound through pybind11 (filled in by posenc._C)."""
