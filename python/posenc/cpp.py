"""The C++ ``posenc::nn`` modules, bound through pybind11 (``torch::python::bind_module``).

``posenc.cpp.<Name>`` takes the same keyword arguments and defaults as the scriptable twin
``posenc.nn.<Name>`` and is a ``torch.nn.Module`` wrapper that delegates to the C++ module
(``.cpp_module`` is the raw C++ object). Such modules run the C++ code path but are not
scriptable; script the ``posenc.nn`` twins instead.

A state_dict moves between the two languages with :func:`state_dict` and
:func:`load_state_dict` (the keys are the same in both)::

    py = posenc.nn.T5RelativeBias(8)
    cc = posenc.cpp.T5RelativeBias(8)
    posenc.cpp.load_state_dict(cc, py.state_dict())   # Python -> C++
    py.load_state_dict(posenc.cpp.state_dict(cc))     # C++ -> Python
"""
import types
from collections import OrderedDict
from typing import Any, Dict

import torch
from torch import Tensor

from . import _C

SinusoidalPositionalEncoding = _C.SinusoidalPositionalEncoding
LearnedPositionalEmbedding = _C.LearnedPositionalEmbedding
RotaryEmbedding = _C.RotaryEmbedding
ALiBi = _C.ALiBi
T5RelativeBias = _C.T5RelativeBias
KERPLEBias = _C.KERPLEBias
DynamicPositionBias = _C.DynamicPositionBias
FIRE = _C.FIRE
TransformerXLRelativeScore = _C.TransformerXLRelativeScore
CoPE = _C.CoPE
ForgettingGate = _C.ForgettingGate
NoPE = _C.NoPE


def _rotary_from_config(cls: Any, config: Any, **kwargs: Any) -> Any:
    """A C++ RotaryEmbedding for a :class:`~posenc.rope_config.RopeConfig` or a transformers
    config (read by :func:`posenc.hf.rope_from_config`), as
    :meth:`posenc.nn.RotaryEmbedding.from_config`: ``dim = head_dim``, ``scaling`` the config,
    ``base = rope_theta``; ``kwargs`` are the other constructor options."""
    from .rope_config import RopeConfig

    if not isinstance(config, RopeConfig):
        from .hf import rope_from_config

        config = rope_from_config(config)
    return cls(config.head_dim, scaling=config, base=float(config.rope_theta), **kwargs)


RotaryEmbedding.from_config = classmethod(_rotary_from_config)


def _module_to(self: Any, *args: Any, **kwargs: Any) -> Any:
    """``torch.nn.Module.to`` for a C++ module: the same arguments (a device, a dtype, a
    string, a tensor, ``device=``/``dtype=`` keywords), applied by the C++ ``to`` (which keeps
    RotaryEmbedding's frequencies in their precision); returns the module."""
    device, dtype, non_blocking, _ = torch._C._nn._parse_to(*args, **kwargs)
    if dtype is not None and not (dtype.is_floating_point or dtype.is_complex):
        raise TypeError(
            f"nn.Module.to only accepts floating point or complex dtypes, but got desired dtype={dtype}"
        )
    if device is not None or dtype is not None:
        self.cpp_module.to(device, dtype, non_blocking)
    return self


def _with_module_to(cls: Any) -> None:
    # torch.nn.cpp.ModuleWrapper copies the bound C++ `to` into each instance; that one
    # returns None (so `m = X(...).to(dtype)` gave None) and rejects "cpu" and keywords.
    init = cls.__init__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        self.__dict__["to"] = types.MethodType(_module_to, self)

    cls.__init__ = __init__

for _cls in (
    SinusoidalPositionalEncoding,
    LearnedPositionalEmbedding,
    RotaryEmbedding,
    ALiBi,
    T5RelativeBias,
    KERPLEBias,
    DynamicPositionBias,
    FIRE,
    TransformerXLRelativeScore,
    CoPE,
):
    _with_module_to(_cls)

__all__ = [
    "SinusoidalPositionalEncoding",
    "LearnedPositionalEmbedding",
    "RotaryEmbedding",
    "ALiBi",
    "T5RelativeBias",
    "KERPLEBias",
    "DynamicPositionBias",
    "FIRE",
    "TransformerXLRelativeScore",
    "CoPE",
    "ForgettingGate",
    "NoPE",
    "state_dict",
    "load_state_dict",
]


def _cpp(module: Any) -> Any:
    # Accept the torch.nn.Module wrapper or the raw pybind object.
    return getattr(module, "cpp_module", module)


def _collect(module: Any, prefix: str, out: "OrderedDict[str, Tensor]") -> None:
    # Same order as torch.nn.Module.state_dict: own parameters, own buffers, then children.
    for name, p in module._parameters.items():
        out[prefix + name] = p.detach()
    for name, b in module._buffers.items():
        out[prefix + name] = b.detach()
    for name, child in module._modules.items():
        _collect(child, prefix + name + ".", out)


def state_dict(module: Any) -> "OrderedDict[str, Tensor]":
    """Parameters and buffers of a C++ module, by the names torch.nn.Module.state_dict uses.

    The tensors are detached views of the module's own storage (as ``state_dict()`` returns
    them); copy them to keep a snapshot.
    """
    out: "OrderedDict[str, Tensor]" = OrderedDict()
    _collect(_cpp(module), "", out)
    return out


def load_state_dict(module: Any, state: Dict[str, Tensor]) -> None:
    """Copy ``state`` into a C++ module's parameters and buffers, strictly.

    Raises ``RuntimeError`` (and changes nothing) if a key is missing or unexpected, or a
    shape differs. Values are copied in place (cast to the module's dtype and device), so
    the module keeps its tensors and any optimizer holding them stays valid.
    """
    own = state_dict(module)
    cls = type(module).__name__
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise RuntimeError(
            f"posenc.cpp.load_state_dict: error(s) loading state_dict for {cls}: "
            f"missing keys {missing}, unexpected keys {unexpected}"
        )
    for key, dst in own.items():
        src = state[key]
        if not isinstance(src, Tensor):
            raise RuntimeError(
                f"posenc.cpp.load_state_dict: error(s) loading state_dict for {cls}: "
                f"'{key}' must be a Tensor, but got {type(src).__name__}"
            )
        if src.shape != dst.shape:
            raise RuntimeError(
                f"posenc.cpp.load_state_dict: error(s) loading state_dict for {cls}: size "
                f"mismatch for '{key}': copying a tensor of shape {tuple(src.shape)}, the shape "
                f"in the module is {tuple(dst.shape)}"
            )
    with torch.no_grad():
        for key, dst in own.items():
            dst.copy_(state[key])
