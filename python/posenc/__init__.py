"""posenc: positional encodings for transformers as LibTorch ops.

Importing posenc loads ``libposenc`` (which registers ``torch.ops.posenc.*``) and the
pybind11 module of C++ modules (``posenc.cpp``). See ``posenc.ops`` for the functions and
``posenc.nn`` for scriptable modules, ``posenc.rope_config`` / ``posenc.hf`` for RoPE scalings
and Hugging Face configs, ``posenc.kv_cache`` for a KV cache that stays exact when RoPE
frequencies change with the length, and ``posenc.context_parallel`` for sharding a sequence
across context-parallel ranks with the right global positions.
"""
from pathlib import Path as _Path

import torch as _torch

_here = _Path(__file__).resolve().parent
_lib = _here / "libposenc.so"
if not _lib.exists():
    raise ImportError(
        f"posenc: {_lib} is missing; build the package first "
        "(pip install --no-build-isolation -e . or scripts/build.sh)"
    )
_torch.ops.load_library(str(_lib))

from . import _C  # noqa: E402  (needs the ops registered above)


def _check_cuda_version() -> None:
    built = _torch.ops.posenc.cuda_version()
    have = _torch.version.cuda or ""
    if built and have and built.split(".")[0] != have.split(".")[0]:
        raise ImportError(
            f"posenc was compiled for CUDA {built} but torch uses CUDA {have}; rebuild posenc "
            "against the installed torch"
        )


_check_cuda_version()

#: Folder to add to ``CMAKE_PREFIX_PATH`` so that a C++ project's ``find_package(posenc)`` finds
#: this installed package (headers, ``libposenc.so``, ``posencConfig.cmake``), as
#: ``torch.utils.cmake_prefix_path`` does for torch. Pass both:
#: ``-DCMAKE_PREFIX_PATH="$(python -c 'import torch, posenc; print(torch.utils.cmake_prefix_path + ";" + posenc.cmake_prefix_path)')"``.
cmake_prefix_path: str = str(_here / "share" / "cmake")

from . import ops  # noqa: E402
from . import nn  # noqa: E402
from . import cpp  # noqa: E402
from . import rope_config  # noqa: E402
from . import hf  # noqa: E402
from . import kv_cache  # noqa: E402
from . import context_parallel  # noqa: E402
from . import flash_attn  # noqa: E402
from .kv_cache import RopeKVCache  # noqa: E402

__version__: str = _torch.ops.posenc.version()
__all__ = [
    "ops",
    "nn",
    "cpp",
    "rope_config",
    "hf",
    "kv_cache",
    "flash_attn",
    "context_parallel",
    "RopeKVCache",
    "__version__",
    "cmake_prefix_path",
]
