"""Scriptable torch.nn modules (twins of the C++ posenc::nn modules)."""
