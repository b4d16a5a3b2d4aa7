"""Typed RoPE scaling configuration: the Python twin of C++ ``posenc::RopeScalingConfig``.

:class:`RopeConfig` holds every field of every RoPE type (named as in Hugging Face's
``rope_parameters``); :meth:`RopeConfig.compute` turns it into ``inv_freq`` (float32) and the
attention factor through the op ``torch.ops.posenc.rope_scaling_inv_freq``, which holds all
the math (C++). :func:`posenc.hf.rope_from_config` builds a :class:`RopeConfig` from a
transformers config.

Types (``rope_type``), with ``d = int(head_dim * partial_rotary_factor)`` the rotary dimension,
``theta_i = rope_theta ** (-2 i / d)`` and ``s = factor``:

* ``"default"``: ``theta_i`` (Su et al. 2021, RoFormer, eq. 15).
* ``"linear"``: position interpolation, ``theta_i / s`` (Chen et al. 2023, §2.2).
* ``"ntk"``: NTK-aware static base ``rope_theta * s ** (d / (d - 2))`` (bloc97 2023; Peng et
  al. 2023 §3.2). Not a transformers type.
* ``"dynamic"``: dynamic NTK, the NTK base with ``s * L / max_position_embeddings - (s - 1)``,
  ``L = max(seq_len, max_position_embeddings)`` (emozilla 2023; transformers ``dynamic``).
  The base is computed in double as ``ROPE_INIT_FUNCTIONS["dynamic"](config, seq_len=int)``;
  a transformers model's forward rounds it in float32 (tensor ``seq_len``): ~1e-6 apart.
* ``"yarn"``: YaRN (Peng et al. 2023, §3.3-3.5): NTK-by-parts ramp between ``theta_i / s`` and
  ``theta_i`` bounded by ``beta_fast`` / ``beta_slow`` rotations over
  ``original_max_position_embeddings``; attention factor ``0.1 ln s + 1``.
* ``"llama3"``: Llama 3.1 band scaling (``factor``, ``low_freq_factor``, ``high_freq_factor``,
  ``original_max_position_embeddings``).
* ``"longrope"``: LongRoPE (Ding et al. 2024): ``theta_i / long_factor[i]`` when
  ``seq_len > original_max_position_embeddings``, else ``theta_i / short_factor[i]``; attention
  factor ``sqrt(1 + ln s / ln original_max_position_embeddings)``.
* ``"xpos"``: xPos (Sun et al. 2022, §3.2): ``theta_i`` plus the magnitude scaling of
  :func:`xpos_scale` with per-pair ``zeta_i = (2i/d + xpos_gamma) / (1 + xpos_gamma)``.

Precedence rules (tested in tests/python/test_rope_scaling.py):

1. An explicit ``attention_factor`` wins over any derived one, for every type.
2. yarn without it: ``mscale`` and ``mscale_all_dim`` both set and non-zero give
   ``(0.1 mscale ln s + 1) / (0.1 mscale_all_dim ln s + 1)``; otherwise ``0.1 ln s + 1`` for
   ``s > 1`` and 1 for ``s <= 1`` (``mscale`` alone is not used).
3. longrope without it: ``sqrt(1 + ln s / ln L)`` for ``s > 1``, else 1.
4. yarn / longrope: an explicit ``factor`` wins over
   ``max_position_embeddings / original_max_position_embeddings``.
5. yarn: ``beta_fast`` / ``beta_slow`` unset or 0 mean 32 / 1.
6. dynamic: ``L = max(seq_len, max_position_embeddings)``; no ``seq_len`` gives the default
   frequencies.
7. longrope: ``long_factor`` exactly when ``seq_len > original_max_position_embeddings``.

The numbers equal transformers' ``ROPE_INIT_FUNCTIONS`` (and the models'
``compute_default_rope_parameters``) bit for bit: the same float32 operations in the same
order, scalars in double. They are computed on the CPU and copied to ``device``.
"""
import math
import numbers
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
from torch import Tensor

__all__ = [
    "ROPE_TYPES",
    "RopeConfig",
    "rope_scaling_inv_freq",
    "xpos_zeta",
    "xpos_scale",
]

#: The canonical ``rope_type`` names, in the order of C++ ``posenc::RopeType``.
ROPE_TYPES: Tuple[str, ...] = (
    "default",
    "linear",
    "ntk",
    "dynamic",
    "yarn",
    "llama3",
    "longrope",
    "xpos",
)


def rope_scaling_inv_freq(
    rope_type: str,
    rope_theta: float,
    head_dim: int,
    partial_rotary_factor: float = 1.0,
    factor: Optional[float] = None,
    max_position_embeddings: Optional[int] = None,
    original_max_position_embeddings: Optional[int] = None,
    attention_factor: Optional[float] = None,
    beta_fast: Optional[float] = None,
    beta_slow: Optional[float] = None,
    mscale: Optional[float] = None,
    mscale_all_dim: Optional[float] = None,
    truncate: bool = True,
    low_freq_factor: Optional[float] = None,
    high_freq_factor: Optional[float] = None,
    short_factor: Optional[List[float]] = None,
    long_factor: Optional[List[float]] = None,
    xpos_gamma: float = 0.4,
    xpos_scale_base: float = 512.0,
    seq_len: Optional[int] = None,
    device: Optional[torch.device] = None,
    dtype: Optional[torch.dtype] = None,
) -> Tuple[Tensor, float]:
    """Inverse frequencies and attention factor of a RoPE type (see the module docstring).

    Returns ``(inv_freq, attention_factor)``: ``inv_freq`` ``(ceil(d / 2),)`` on ``device``
    (default CPU) in ``dtype``: ``torch.float32`` (default; *reference* precision, transformers'
    float32 table bit for bit) or ``torch.float64`` (*exact* precision: the same formulas in
    fp64, for :func:`posenc.ops.rope`'s fp64 angles), ``d = int(head_dim * partial_rotary_factor)``; pass
    ``rotary_dim=2 * len(inv_freq)`` to :func:`posenc.ops.rope`. ``attention_factor`` multiplies
    cos and sin (:func:`posenc.ops.apply_rotary_pos_emb`), i.e. the rotated q and k.
    ``seq_len`` (>= 0) is the current total length, read by "dynamic" and "longrope".
    Scriptable; not differentiable.

    Raises ``RuntimeError`` ("posenc.rope_scaling_inv_freq: argument '<field>' <expected>, but
    got <given>") for an unknown ``rope_type`` (listing the supported ones), a field the type
    needs that is missing, or an out-of-range value: ``head_dim <= 0`` or ``> 2**20``;
    ``partial_rotary_factor`` outside (0, 1] or leaving ``d < 2`` (``d <= 2`` for ntk/dynamic,
    odd ``d`` for yarn); ``rope_theta <= 1``; ``factor``, ``attention_factor``,
    ``low_freq_factor``, ``high_freq_factor``, ``xpos_gamma``, ``xpos_scale_base`` not finite
    and > 0; ``high_freq_factor <= low_freq_factor``; ``beta_fast < beta_slow``; lengths
    ``<= 0``; ``short_factor``/``long_factor`` not ``ceil(d / 2)`` positive values;
    ``seq_len < 0``; a derived attention factor (yarn's mscale ratio, longrope's
    ``sqrt(1 + ln s / ln L)``) that is not finite and > 0. :class:`RopeConfig` also raises it
    for a field of the wrong type (``argument '<field>' must be a number, but got ...``).
    """
    return torch.ops.posenc.rope_scaling_inv_freq(
        rope_type,
        rope_theta,
        head_dim,
        partial_rotary_factor,
        factor=factor,
        max_position_embeddings=max_position_embeddings,
        original_max_position_embeddings=original_max_position_embeddings,
        attention_factor=attention_factor,
        beta_fast=beta_fast,
        beta_slow=beta_slow,
        mscale=mscale,
        mscale_all_dim=mscale_all_dim,
        truncate=truncate,
        low_freq_factor=low_freq_factor,
        high_freq_factor=high_freq_factor,
        short_factor=short_factor,
        long_factor=long_factor,
        xpos_gamma=xpos_gamma,
        xpos_scale_base=xpos_scale_base,
        seq_len=seq_len,
        device=device,
        dtype=dtype,
    )


def xpos_zeta(rotary_dim: int, gamma: float = 0.4, device: Optional[torch.device] = None) -> Tensor:
    """xPos per-pair scale ``zeta_i = (2 i / d + gamma) / (1 + gamma)``, ``i < ceil(d / 2)``.

    Sun et al. 2022, "A Length-Extrapolatable Transformer", §3.2 (``gamma = 0.4`` in the
    reference implementation). ``d = rotary_dim > 0``, ``gamma > 0``. Computed in fp64,
    returned as float32 ``(ceil(d / 2),)``. Raises ``RuntimeError`` ("posenc.xpos_zeta: ...")
    otherwise.
    """
    return torch.ops.posenc.xpos_zeta(rotary_dim, gamma, device=device)


def xpos_scale(
    positions: Tensor,
    zeta: Tensor,
    scale_base: float = 512.0,
    centre: int = 0,
    inverse: bool = False,
) -> Tensor:
    """xPos magnitude factors: ``zeta_i ** ((p - centre) / scale_base)`` for q, and the inverse
    ``zeta_i ** (-(p - centre) / scale_base)`` for k (``inverse=True``) (Sun et al. 2022, §3.2).

    ``positions``: int64, any shape ``P`` (absolute positions, e.g. ``q_offset + arange(S)``);
    ``zeta``: float32/float64 ``(n,)``, all > 0 (:func:`xpos_zeta`). Returns ``P + (n,)`` in
    ``zeta``'s dtype, computed in fp64: one factor per rotary pair (repeat it over both members
    of a pair; multiply q, respectively k, or scale its cos/sin rows). ``q_n . k_m`` then scales
    by ``zeta ** ((n - m) / scale_base)`` whatever ``centre`` is, so ``centre`` must be one
    absolute position shared by every call (KV-cache decoding, chunks): choose it near the
    middle of the context, since ``zeta_0 ** (|p - centre| / scale_base)`` over/underflows
    float32 for ``|p - centre|`` in the tens of thousands with ``scale_base=512``. Gradients
    flow to ``zeta`` (plain ATen composition).

    Raises ``RuntimeError`` ("posenc.xpos_scale: ...") for ``positions`` not int64, ``zeta``
    not 1-D float32/float64 or on another device, ``scale_base`` not finite and > 0.
    """
    return torch.ops.posenc.xpos_scale(positions, zeta, scale_base, centre, inverse)


# RopeConfig fields -> the op's argument types. Numbers given as strings (a config.json edited
# by hand) are accepted as float() reads them; anything else gets the op's message format
# naming the field, instead of a bare TypeError from float() or the schema.
def _value_repr(value: object, depth: int = 0) -> str:
    """repr() of a config value, with lists and dicts nested deeper than 32 levels written as
    "..." (the C++ reader's rule): a hostile config.json cannot make the message itself fail
    (repr raises RecursionError past Python's recursion limit)."""
    if depth > 32:
        return "..."
    if isinstance(value, list):
        return "[" + ", ".join(_value_repr(v, depth + 1) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {_value_repr(v, depth + 1)}" for k, v in value.items()) + "}"
    return repr(value)


def _type_error(name: str, expected: str, value: object) -> RuntimeError:
    return RuntimeError(
        f"posenc.rope_scaling_inv_freq: argument '{name}' must be {expected}, but got "
        f"{type(value).__name__} {_value_repr(value)}"
    )


def _float(name: str, value: object) -> float:
    if isinstance(value, (list, tuple, dict)) or value is None:
        raise _type_error(name, "a number", value)
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise _type_error(name, "a number", value) from None


def _opt_float(name: str, value: object) -> Optional[float]:
    return None if value is None else _float(name, value)


def _int(name: str, value: object) -> int:
    # transformers reads these lengths with Python arithmetic, so 4096.0 works there
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(value)
        or value != int(value)
    ):
        raise _type_error(name, "an integer", value)
    out = int(value)
    if not -(2**63) <= out < 2**63:
        raise _type_error(name, "an integer that fits in int64", value)
    return out


def _opt_int(name: str, value: object) -> Optional[int]:
    return None if value is None else _int(name, value)


def _floats(name: str, value: object) -> Optional[List[float]]:
    if value is None:
        return None
    if isinstance(value, (str, bytes, dict)) or not hasattr(value, "__iter__"):
        raise _type_error(name, "a list of numbers", value)
    return [_float(f"{name}[{i}]", x) for i, x in enumerate(value)]  # type: ignore[union-attr]


@dataclass
class RopeConfig:
    """Every RoPE scaling field, as C++ ``posenc::RopeScalingConfig`` (same names, defaults).

    ``head_dim`` (> 0) is required; the rotary dimension is
    ``d = int(head_dim * partial_rotary_factor)``. Fields a type does not read are ignored
    (:func:`posenc.hf.rope_from_config` warns about them). Construction validates the fields
    through the op, so a bad configuration raises ``RuntimeError`` here (see
    :func:`rope_scaling_inv_freq` for the messages).
    """

    head_dim: int
    rope_type: str = "default"
    rope_theta: float = 10000.0
    partial_rotary_factor: float = 1.0
    factor: Optional[float] = None
    max_position_embeddings: Optional[int] = None
    original_max_position_embeddings: Optional[int] = None
    attention_factor: Optional[float] = None
    beta_fast: Optional[float] = None
    beta_slow: Optional[float] = None
    mscale: Optional[float] = None
    mscale_all_dim: Optional[float] = None
    truncate: bool = True
    low_freq_factor: Optional[float] = None
    high_freq_factor: Optional[float] = None
    short_factor: Optional[List[float]] = None
    long_factor: Optional[List[float]] = None
    xpos_gamma: float = 0.4
    xpos_scale_base: float = 512.0

    def __post_init__(self) -> None:
        # Integral lengths given as floats (4096.0) become ints, so that every reader of the
        # fields (RotaryEmbedding, RopeKVCache) can pass them to the op's int arguments.
        self.head_dim = _int("head_dim", self.head_dim)
        self.max_position_embeddings = _opt_int("max_position_embeddings", self.max_position_embeddings)
        self.original_max_position_embeddings = _opt_int(
            "original_max_position_embeddings", self.original_max_position_embeddings
        )
        self.compute()  # validates (a handful of float32 numbers on the CPU)

    @property
    def rotary_dim(self) -> int:
        """``int(head_dim * partial_rotary_factor)``, as transformers truncates it."""
        return int(self.head_dim * self.partial_rotary_factor)

    @property
    def num_frequencies(self) -> int:
        """``ceil(rotary_dim / 2)``: the length of ``inv_freq``."""
        return (self.rotary_dim + 1) // 2

    def compute(
        self,
        seq_len: Optional[int] = None,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> Tuple[Tensor, float]:
        """``(inv_freq, attention_factor)`` for the current total length ``seq_len``.

        ``dtype``: ``torch.float32`` (default, reference precision) or ``torch.float64``
        (exact precision); see :func:`rope_scaling_inv_freq`.
        """

        return rope_scaling_inv_freq(
            self.rope_type,
            _float("rope_theta", self.rope_theta),
            _int("head_dim", self.head_dim),
            _float("partial_rotary_factor", self.partial_rotary_factor),
            factor=_opt_float("factor", self.factor),
            max_position_embeddings=_opt_int("max_position_embeddings", self.max_position_embeddings),
            original_max_position_embeddings=_opt_int(
                "original_max_position_embeddings", self.original_max_position_embeddings
            ),
            attention_factor=_opt_float("attention_factor", self.attention_factor),
            beta_fast=_opt_float("beta_fast", self.beta_fast),
            beta_slow=_opt_float("beta_slow", self.beta_slow),
            mscale=_opt_float("mscale", self.mscale),
            mscale_all_dim=_opt_float("mscale_all_dim", self.mscale_all_dim),
            truncate=bool(self.truncate),
            low_freq_factor=_opt_float("low_freq_factor", self.low_freq_factor),
            high_freq_factor=_opt_float("high_freq_factor", self.high_freq_factor),
            short_factor=_floats("short_factor", self.short_factor),
            long_factor=_floats("long_factor", self.long_factor),
            xpos_gamma=_float("xpos_gamma", self.xpos_gamma),
            xpos_scale_base=_float("xpos_scale_base", self.xpos_scale_base),
            seq_len=seq_len,
            device=device,
            dtype=dtype,
        )

    def xpos_zeta(self, device: Optional[torch.device] = None) -> Tensor:
        """Per-pair xPos ``zeta`` for this rotary dimension and ``xpos_gamma``."""
        return xpos_zeta(self.rotary_dim, float(self.xpos_gamma), device)
