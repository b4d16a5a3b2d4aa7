"""Scriptable ``torch.nn`` modules: twins of the C++ ``posenc::nn`` modules.

Same class names, constructor arguments (names and defaults), forward signatures and
``state_dict`` keys as ``posenc::nn::<Name>`` in C++ and its binding ``posenc.cpp.<Name>``, so
a state_dict saved from one loads into the other and gives the same outputs. Every module
holds parameters and calls :mod:`posenc.ops`; none re-implements an op's math. All of them
work with ``torch.jit.script`` (and so with ``torch::jit::load`` in C++, where the ops resolve
as ``torch.ops.posenc.*``) and with ``torch.compile(fullgraph=True)``.

Bad constructor arguments raise ``ValueError`` (``c10::ValueError`` in C++), bad forward
arguments ``RuntimeError``; messages read ``posenc.<Module>: option '<name>' <expected>, but
got <given>`` (``argument`` in forward).
"""
import math
from typing import Any, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import ops
from .rope_config import RopeConfig

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
]


def _fmt(v: float) -> str:
    # As C++ prints doubles (ostream, 6 significant digits), so messages read the same.
    return f"{v:g}"


def _check_option(cond: bool, module: str, option: str, expected: str, given) -> None:
    if not cond:
        raise ValueError(f"posenc.{module}: option '{option}' {expected}, but got {given}")


def _saveable_tables(inv_freq: Tensor, zeta: Optional[Tensor]) -> Tuple[Tensor, Optional[Tensor]]:
    # Inference tensors cannot be saved for backward; a clone made outside inference mode can.
    if inv_freq.is_inference():
        inv_freq = inv_freq.clone()
    if zeta is not None and zeta.is_inference():
        zeta = zeta.clone()
    return inv_freq, zeta


class SinusoidalPositionalEncoding(nn.Module):
    """Sinusoidal absolute positional encoding (Vaswani et al. 2017, §3.5).

    ``forward(x, offset=0) = dropout(x + sinusoidal_table(S, dim, base, offset, interleaved))``
    with ``x`` of shape ``(B, S, dim)`` (float16/bfloat16/float32/float64). The table comes
    from :func:`posenc.ops.sinusoidal_table` (fp64 angles) in ``x``'s dtype and on its
    device; row ``s`` encodes absolute position ``offset + s``. No parameters or buffers.

    Args:
        dim: embedding size, even and > 0.
        base: frequency base (10000 in the paper), > 0.
        dropout: dropout probability after the addition, in [0, 1).
        interleaved: ``True`` for the paper's ``[sin, cos, sin, cos, ...]``; ``False`` for
            tensor2tensor's ``[sines, cosines]``.

    Raises:
        ValueError: bad options. RuntimeError: ``x`` not ``(B, S, dim)``.
    """

    dim: int
    base: float
    dropout: float
    interleaved: bool

    def __init__(
        self, dim: int, base: float = 10000.0, dropout: float = 0.0, interleaved: bool = True
    ) -> None:
        super().__init__()
        name = "SinusoidalPositionalEncoding"
        _check_option(dim > 0 and dim % 2 == 0, name, "dim", "must be even and > 0 (sin/cos pairs)", dim)
        _check_option(base > 0, name, "base", "must be > 0", base)
        _check_option(0 <= dropout < 1, name, "dropout", "must be in [0, 1)", dropout)
        self.dim = dim
        self.base = base
        self.dropout = dropout
        self.interleaved = interleaved

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        if x.dim() != 3 or x.size(-1) != self.dim:
            raise RuntimeError(
                f"posenc.SinusoidalPositionalEncoding: argument 'x' must be a 3-D tensor "
                f"(batch, seq, {self.dim}), but got {list(x.shape)}"
            )
        table = ops.sinusoidal_table(
            x.size(1), self.dim, self.base, offset, self.interleaved, dtype=x.dtype, device=x.device
        )
        return F.dropout(x + table, self.dropout, self.training)

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, base={self.base}, dropout={self.dropout}, "
            f"interleaved={self.interleaved}"
        )


class LearnedPositionalEmbedding(nn.Module):
    """Learned absolute position embeddings (BERT, Devlin et al. 2019; GPT-2).

    ``forward(x, offset=0) = dropout(x + weight[offset : offset + S])``, ``x`` of shape
    ``(B, S, dim)``. Parameter ``weight`` ``(max_len, dim)`` initialised N(0, 0.02).

    A learned table cannot extrapolate: positions past ``max_len - 1`` raise ``RuntimeError``
    ``"posenc.LearnedPositionalEmbedding: position P is past the table of N positions
    (max_len)"`` before any computation, and the module stays usable.

    Raises:
        ValueError: ``max_len`` or ``dim`` <= 0, ``dropout`` outside [0, 1).
        RuntimeError: positions past the table, ``offset`` < 0, ``x`` not ``(B, S, dim)``.
    """

    max_len: int
    dim: int
    dropout: float

    def __init__(self, max_len: int, dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        name = "LearnedPositionalEmbedding"
        _check_option(max_len > 0, name, "max_len", "must be > 0", max_len)
        _check_option(dim > 0, name, "dim", "must be > 0", dim)
        _check_option(0 <= dropout < 1, name, "dropout", "must be in [0, 1)", dropout)
        self.max_len = max_len
        self.dim = dim
        self.dropout = dropout
        self.weight = nn.Parameter(torch.empty(max_len, dim))
        nn.init.normal_(self.weight, 0.0, 0.02)

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        if x.dim() != 3 or x.size(-1) != self.dim:
            raise RuntimeError(
                f"posenc.LearnedPositionalEmbedding: argument 'x' must be a 3-D tensor "
                f"(batch, seq, {self.dim}), but got {list(x.shape)}"
            )
        if offset < 0:
            raise RuntimeError(
                f"posenc.LearnedPositionalEmbedding: argument 'offset' must be >= 0, but got {offset}"
            )
        seq = x.size(1)
        # offset > max_len - seq: offset + seq wraps in TorchScript's int64 for huge offsets,
        # and so may the last position, which is then printed as a sum (as the C++ module).
        if offset > self.max_len - seq:
            if offset <= 9223372036854775807 - max(seq - 1, 0):
                position = str(offset + seq - 1)
            else:
                position = f"{offset} + {seq - 1}"
            raise RuntimeError(
                f"posenc.LearnedPositionalEmbedding: position {position} is past the "
                f"table of {self.max_len} positions (max_len)"
            )
        return F.dropout(x + self.weight[offset : offset + seq], self.dropout, self.training)

    def extra_repr(self) -> str:
        return f"max_len={self.max_len}, dim={self.dim}, dropout={self.dropout}"


def _same_but_heads(q: Tensor, k: Tensor, layout: str) -> bool:
    """Whether ``posenc.ops.rope_qk`` can rotate ``q`` and ``k`` together: the same rank,
    dtype and device, and the same sizes but for the heads dim of ``layout``."""
    if q.dim() != k.dim() or q.dtype != k.dtype or q.device != k.device:
        return False
    heads = 1 if layout != "bshd" else 2
    for d in range(q.dim()):
        if d != heads and q.size(d) != k.size(d):
            return False
    return True


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (Su et al. 2021, RoFormer, eq. 34) for queries and keys, with
    every RoPE scaling of :class:`posenc.rope_config.RopeConfig`, xPos and packed sequences.

    ``forward(q, k, positions=None, offset=0, cu_seqlens=None, seq_len=None) -> (q_rot, k_rot)``
    via :func:`posenc.ops.rope`:

    * ``q``/``k``: ``(B, H, S, D)`` (``layout="bhsd"``), ``(B, S, H, D)`` (``"bshd"``) or packed
      ``(T, H, D)`` (``"thd"``), any float dtype and strides, with ``D == dim`` (head counts may
      differ, as in GQA). Outputs have the inputs' shapes and dtypes.
    * ``positions``: int64 or int32 ``(S,)`` or ``(B, S)``, or ``None`` for ``arange(S)`` (must be
      ``None`` with ``"thd"``); ``offset`` is added in every case (KV-cache decoding).
    * ``cu_seqlens``: int64 or int32 ``(num_seqs + 1,)`` cumulative sequence starts, required with
      ``"thd"`` and only then; positions restart at ``offset`` in every packed sequence.
    * ``seq_len``: the current total length, read by the length-dependent types ``"dynamic"``
      and ``"longrope"`` (ignored otherwise). ``None`` infers it as transformers does (max
      position + 1): ``offset + S`` without ``positions`` (``S`` the longer of q's and k's),
      ``offset + positions.max() + 1`` with them, ``offset +`` the longest packed sequence with
      ``"thd"``. Inferring from ``positions`` or ``cu_seqlens`` reads a tensor value: a host
      sync on CUDA and a graph break under ``torch.compile``, so pass ``seq_len`` explicitly in
      compiled or decode loops (with it, ``torch.compile(fullgraph=True)`` works for these
      types too, recompiling when the table changes; static types never read it).

    Frequencies. Without ``scaling``: ``base ** (-2 i / rotary_dim)`` (eq. 15) from
    :func:`posenc.ops.rope_inv_freq`. With ``scaling``: :meth:`RopeConfig.compute
    <posenc.rope_config.RopeConfig.compute>` (bit-identical to transformers'
    ``ROPE_INIT_FUNCTIONS`` in reference precision), which also gives the attention factor
    (YaRN / LongRoPE ``attention_scaling``; it multiplies the rotary dims of both q and k, as
    transformers multiplies cos and sin) and, for ``"xpos"``, the per-pair ``zeta`` (Sun et al.
    2022, sec. 3.2): q is scaled by ``zeta ** ((p - xpos_centre) / xpos_scale_base)``, k by the
    inverse, so ``q . k`` depends on ``p_q - p_k`` only. Static types compute their table once
    at construction; ``"longrope"`` computes its short and long tables once and picks the long
    one when ``seq_len > original_max_position_embeddings``; ``"dynamic"`` recomputes (through
    ``torch.ops.posenc.rope_scaling_inv_freq``) only when the effective length
    ``max(seq_len, max_position_embeddings)`` changes and keeps the last table. Unlike
    transformers, whose dynamic NTK keeps a grown table until the length falls below
    ``max_position_embeddings``, the table here is a function of ``seq_len`` only.

    The tables (``inv_freq``, ``long_inv_freq``, ``xpos_zeta``) are plain tensor attributes, not
    parameters or buffers: the state_dict is empty, ``module.to(torch.bfloat16)`` keeps them
    float32 (float64 in exact precision) while ``module.to(device)`` moves them;
    inputs on another device use a copy.

    Precision. ``"reference"`` (default): float32 ``inv_freq`` and float32 angles
    ``pos * inv_freq``, rounded exactly where transformers rounds them, so outputs match
    transformers and the checkpoints trained with its rounding (a model trained with those
    angles expects them). ``"exact"``: float64 ``inv_freq``, fp64 angles reduced mod ``2 pi``, so
    a float32 output stays within ~1e-6 relative of an fp64 reference at any position; the
    float32 angle is off by up to ~0.03 rad at position 1e6. Use it for long-context work and
    training from scratch at positions where fp32 angles drift.

    Args:
        dim: head dimension D, > 0.
        rotary_dim: rotated leading dims (even, <= dim); ``None`` means ``dim``, or
            ``2 * scaling.num_frequencies`` with ``scaling`` (which it must equal if given).
        base: frequency base, > 1. With ``scaling`` the base is ``scaling.rope_theta``;
            ``base`` must then be left at 10000 or equal it.
        interleaved: ``False`` pairs ``(i, i + R/2)`` (GPT-NeoX, Llama), ``True`` pairs
            ``(2i, 2i+1)`` (GPT-J, RoFormer).
        layout: ``"bhsd"``, ``"bshd"`` or ``"thd"``.
        scaling: a :class:`posenc.rope_config.RopeConfig` with ``head_dim == dim``, or ``None``.
            See :meth:`from_config` for a transformers config.
        precision: ``"reference"`` or ``"exact"`` (above).
        xpos_centre: xPos only: the absolute position where the factors are 1, shared by all
            calls (keep it near the middle of the context: the factors over/underflow float32
            tens of thousands of positions away from it).

    Raises:
        ValueError at construction: odd/non-positive ``rotary_dim``, ``rotary_dim``
        > ``dim``, ``base`` <= 1, unknown ``layout`` or ``precision``, ``scaling.head_dim !=
        dim``, ``rotary_dim != 2 * scaling.num_frequencies``, ``base`` neither 10000 nor
        ``scaling.rope_theta``. TypeError: ``scaling`` not a RopeConfig. RuntimeError: an
        invalid RopeConfig (``posenc.rope_scaling_inv_freq: ...``). RuntimeError in forward:
        last dim of ``q`` or ``k`` is not ``dim``, ``k`` of another dtype or device than
        ``q``, ``cu_seqlens`` missing with ``"thd"`` or
        given otherwise, ``seq_len < 0`` (and the op's own checks).
    """

    __jit_ignored_attributes__ = ["scaling"]

    dim: int
    rotary_dim: int
    base: float
    interleaved: bool
    layout: str
    precision: str
    xpos_centre: int
    rope_type: str
    attention_factor: float
    xpos_scale_base: float
    xpos_zeta: Optional[Tensor]
    long_inv_freq: Optional[Tensor]
    _length_dependent: bool
    _partial_rotary_factor: float
    _factor: Optional[float]
    _max_position_embeddings: int
    _original_max_position_embeddings: int
    _explicit_attention_factor: Optional[float]
    _cached_length: int
    _dynamic_table: Tuple[int, Tensor]

    def __init__(
        self,
        dim: int,
        rotary_dim: Optional[int] = None,
        base: float = 10000.0,
        interleaved: bool = False,
        layout: str = "bhsd",
        scaling: Optional[RopeConfig] = None,
        precision: str = "reference",
        xpos_centre: int = 0,
    ) -> None:
        super().__init__()
        name = "RotaryEmbedding"
        _check_option(dim > 0, name, "dim", "must be > 0", dim)
        if scaling is not None:
            if not isinstance(scaling, RopeConfig):
                raise TypeError(
                    f"posenc.{name}: option 'scaling' must be a posenc.rope_config.RopeConfig or "
                    f"None (use posenc.nn.RotaryEmbedding.from_config for a transformers config), "
                    f"but got {type(scaling)}"
                )
            scaling.compute()  # validates the fields (RuntimeError naming the field)
            _check_option(
                scaling.head_dim == dim, name, "scaling", f"must have head_dim == dim ({dim})",
                f"head_dim {scaling.head_dim}",
            )
            want = 2 * scaling.num_frequencies
            _check_option(
                rotary_dim is None or rotary_dim == want, name, "rotary_dim",
                f"must equal 2 * scaling's number of frequencies ({want}) when scaling is given "
                "(or be unset)", rotary_dim,
            )
            _check_option(
                base == 10000.0 or base == scaling.rope_theta, name, "base",
                f"must be left at 10000 or equal scaling.rope_theta ({_fmt(scaling.rope_theta)}) "
                "when scaling is given", _fmt(base),
            )
            rd = want
        else:
            rd = dim if rotary_dim is None else rotary_dim
        _check_option(
            rd > 0 and rd % 2 == 0, name, "rotary_dim",
            "must be even and > 0 (dims are rotated in pairs)", rd,
        )
        _check_option(rd <= dim, name, "rotary_dim", f"must be <= dim ({dim})", rd)
        _check_option(base > 1, name, "base", "must be > 1", base)
        _check_option(
            layout in ("bhsd", "bshd", "thd"), name, "layout", 'must be "bhsd", "bshd" or "thd"',
            f'"{layout}"',
        )
        _check_option(
            precision in ("reference", "exact"), name, "precision",
            'must be "reference" or "exact"', f'"{precision}"',
        )
        self.dim = dim
        self.rotary_dim = rd
        self.interleaved = interleaved
        self.layout = layout
        self.precision = precision
        self.xpos_centre = xpos_centre
        self.scaling = scaling
        self.xpos_zeta = None
        self.long_inv_freq = None
        self.attention_factor = 1.0
        self.xpos_scale_base = 512.0
        self._length_dependent = False
        self._partial_rotary_factor = 1.0
        self._factor = None
        self._max_position_embeddings = 0
        self._original_max_position_embeddings = 0
        self._explicit_attention_factor = None
        self._cached_length = -1
        self._dynamic_table: Tuple[int, Tensor] = (-1, torch.empty(0))
        if scaling is None:
            self.rope_type = "default"
            self.base = float(base)
        else:
            self.rope_type = "longrope" if scaling.rope_type == "su" else scaling.rope_type
            self.base = float(scaling.rope_theta)
            self.xpos_scale_base = float(scaling.xpos_scale_base)
            if self.rope_type == "longrope":
                self._length_dependent = True
                self._original_max_position_embeddings = int(scaling.original_max_position_embeddings)
            elif self.rope_type == "dynamic":
                # Typed copies of the fields the dynamic table reads, for the scripted forward.
                self._length_dependent = True
                self._partial_rotary_factor = float(scaling.partial_rotary_factor)
                self._factor = float(scaling.factor)
                self._max_position_embeddings = int(scaling.max_position_embeddings)
                af = scaling.attention_factor
                self._explicit_attention_factor = None if af is None else float(af)
        self.inv_freq: Tensor = torch.empty(0)
        self._compute_tables(torch.device("cpu"))

    @torch.jit.unused
    def _compute_tables(self, device: torch.device) -> None:
        # Deliberately not buffers: dtype casts of the module must not round the tables. They
        # are recomputed (not copied) on a device move, so a module built on the meta device
        # can be materialised.
        dtype = torch.float64 if self.precision == "exact" else torch.float32
        scaling = self.scaling
        if scaling is None:
            self.inv_freq = ops.rope_inv_freq(self.rotary_dim, self.base, device=device, dtype=dtype)
            return
        self.inv_freq, self.attention_factor = scaling.compute(device=device, dtype=dtype)
        if self.rope_type == "xpos":
            self.xpos_zeta = scaling.xpos_zeta(device)
        if self.rope_type == "longrope":
            # Only two tables exist: compute the long one once (as transformers does).
            orig = self._original_max_position_embeddings
            self.long_inv_freq = scaling.compute(seq_len=orig + 1, device=device, dtype=dtype)[0]
        elif self.rope_type == "dynamic":
            self._cached_length = self._max_position_embeddings
            self._dynamic_table = (self._cached_length, self.inv_freq)

    @classmethod
    def from_config(cls, config: Any, **kwargs: Any) -> "RotaryEmbedding":
        """A module for a :class:`~posenc.rope_config.RopeConfig` or a transformers config
        (read by :func:`posenc.hf.rope_from_config`): ``dim = head_dim``, ``scaling`` the config,
        ``base = rope_theta``; ``kwargs`` are the other constructor options (``interleaved``,
        ``layout``, ``precision``, ``xpos_centre``)."""
        if not isinstance(config, RopeConfig):
            from .hf import rope_from_config

            config = rope_from_config(config)
        return cls(config.head_dim, scaling=config, base=float(config.rope_theta), **kwargs)

    def _apply(self, fn, recurse=True):  # type: ignore[override]
        # Follow device moves only; the tables keep their dtype (fp32, or fp64 when exact).
        super()._apply(fn, recurse)
        try:
            device = fn(torch.empty(0, device=self.inv_freq.device)).device
        except NotImplementedError:  # .to() off the meta device: probe from the CPU instead
            device = fn(torch.empty(0)).device
        if device != self.inv_freq.device:
            self._compute_tables(device)
        return self

    @torch.jit.export
    def frequencies(self, seq_len: Optional[int] = None) -> Tensor:
        """The inverse frequencies forward uses at total length ``seq_len`` (``None``: the table
        of a static type, the short table of longrope, the default table of dynamic):
        ``(R/2,)`` float32 (float64 when exact) on the module's device."""
        if seq_len is not None and seq_len < 0:
            raise RuntimeError(
                f"posenc.RotaryEmbedding: argument 'seq_len' must be >= 0 (or None), but got {seq_len}"
            )
        if self.rope_type == "longrope":
            long_inv_freq = self.long_inv_freq
            if (
                seq_len is not None
                and seq_len > self._original_max_position_embeddings
                and long_inv_freq is not None
            ):
                return long_inv_freq
            return self.inv_freq
        if self.rope_type == "dynamic":
            max_len = self._max_position_embeddings
            total = max_len if seq_len is None else max(seq_len, max_len)
            # One attribute holds the length and its table, replaced as a whole: forwards
            # running concurrently (threads) with different lengths each get their own table,
            # never a table another thread stored between reading the length and the table.
            cached_len, cached = self._dynamic_table
            if total != cached_len:
                inv, _ = torch.ops.posenc.rope_scaling_inv_freq(
                    "dynamic",
                    self.base,
                    self.dim,
                    self._partial_rotary_factor,
                    factor=self._factor,
                    max_position_embeddings=max_len,
                    attention_factor=self._explicit_attention_factor,
                    seq_len=total,
                    device=self.inv_freq.device,
                    dtype=self.inv_freq.dtype,
                )
                self._dynamic_table = (total, inv)
                self.inv_freq = inv
                self._cached_length = total
                return inv
            return cached
        return self.inv_freq

    def _infer_seq_len(
        self, q: Tensor, k: Tensor, positions: Optional[Tensor], offset: int, cu_seqlens: Optional[Tensor]
    ) -> int:
        # Ill-typed tensors are left to the op, which raises right after with its own message.
        # Negative offsets/positions are valid for the op; they hold no length, so clamp at 0
        # (else frequencies() would reject a 'seq_len' the caller never passed).
        if self.layout == "thd":
            if cu_seqlens is None or cu_seqlens.dim() != 1 or cu_seqlens.dtype not in (torch.int64, torch.int32):
                return max(offset, 0)
            if cu_seqlens.numel() < 2:
                return max(offset, 0)
            return max(offset + int((cu_seqlens[1:] - cu_seqlens[:-1]).max()), 0)
        if positions is not None:
            if positions.dtype not in (torch.int64, torch.int32) or positions.numel() == 0:
                return max(offset, 0)
            return max(offset + int(positions.max()) + 1, 0)
        sdim = 2 if self.layout == "bhsd" else 1
        s = 0
        if q.dim() == 4:
            s = max(s, q.size(sdim))
        if k.dim() == 4:
            s = max(s, k.size(sdim))
        return max(offset + s, 0)

    def forward(
        self,
        q: Tensor,
        k: Tensor,
        positions: Optional[Tensor] = None,
        offset: int = 0,
        cu_seqlens: Optional[Tensor] = None,
        seq_len: Optional[int] = None,
    ) -> Tuple[Tensor, Tensor]:
        if q.dim() < 1 or q.size(-1) != self.dim:
            raise RuntimeError(
                f"posenc.RotaryEmbedding: argument 'q' must have last dimension dim "
                f"({self.dim}), but got shape {list(q.shape)}"
            )
        if k.dim() < 1 or k.size(-1) != self.dim:
            raise RuntimeError(
                f"posenc.RotaryEmbedding: argument 'k' must have last dimension dim "
                f"({self.dim}), but got shape {list(k.shape)}"
            )
        # q and k rotate with one set of tables and are multiplied together next: a mixed pair
        # would silently return two dtypes (or fail on inv_freq's device).
        if k.dtype != q.dtype:
            raise RuntimeError(
                f"posenc.RotaryEmbedding: argument 'k' must have the dtype of 'q' "
                f"({ops._dtype_name(q.dtype)}), but got dtype {ops._dtype_name(k.dtype)}"
            )
        if k.device != q.device:
            raise RuntimeError(
                f"posenc.RotaryEmbedding: argument 'k' must be on the device of 'q' ({q.device}), "
                f"but got device {k.device}"
            )
        if self.layout == "thd":
            if cu_seqlens is None:
                raise RuntimeError(
                    "posenc.RotaryEmbedding: argument 'cu_seqlens' must be given with layout "
                    '"thd", but got None'
                )
        elif cu_seqlens is not None:
            raise RuntimeError(
                f"posenc.RotaryEmbedding: argument 'cu_seqlens' must be None with layout "
                f'"{self.layout}", but got a tensor'
            )
        if seq_len is not None and seq_len < 0:
            raise RuntimeError(
                f"posenc.RotaryEmbedding: argument 'seq_len' must be >= 0 (or None), but got {seq_len}"
            )
        # before offset + length is formed and passed on as a (schema-checked) int64
        ops._check_int64("RotaryEmbedding", "offset", offset)
        ops._check_int64_opt("RotaryEmbedding", "seq_len", seq_len)
        if self._length_dependent:
            n = seq_len if seq_len is not None else self._infer_seq_len(q, k, positions, offset, cu_seqlens)
            # a length past int64 (offset + positions wrapping) is left to rope's own error
            n = min(n, 9223372036854775807)
            inv_freq = self.frequencies(n)
        else:
            inv_freq = self.inv_freq
        if inv_freq.device != q.device:
            inv_freq = inv_freq.to(q.device)
        zeta = self.xpos_zeta
        if zeta is not None and zeta.device != q.device:
            zeta = zeta.to(q.device)
        # A table made under torch.inference_mode() (a dynamic NTK length first seen there, or a
        # module built there) cannot be saved for backward: autograd gets a normal copy.
        # (torch.compile cannot trace is_inference(); a compiled forward skips the check.)
        if q.requires_grad or k.requires_grad:
            if torch.jit.is_scripting():
                inv_freq, zeta = _saveable_tables(inv_freq, zeta)
            elif not torch.compiler.is_compiling():
                inv_freq, zeta = _saveable_tables(inv_freq, zeta)
        r = self.rotary_dim
        if _same_but_heads(q, k, self.layout):
            # One call: each block's cos/sin serve the heads of q and of k.
            return ops.rope_qk(
                q, k, positions, inv_freq, offset, r, self.interleaved, self.layout, cu_seqlens,
                self.attention_factor, zeta, self.xpos_scale_base, self.xpos_centre,
            )
        q_rot = ops.rope(
            q, positions, inv_freq, offset, r, self.interleaved, self.layout, cu_seqlens,
            self.attention_factor, zeta, self.xpos_scale_base, False, self.xpos_centre,
        )
        k_rot = ops.rope(
            k, positions, inv_freq, offset, r, self.interleaved, self.layout, cu_seqlens,
            self.attention_factor, zeta, self.xpos_scale_base, True, self.xpos_centre,
        )
        return q_rot, k_rot

    def extra_repr(self) -> str:
        s = (
            f"dim={self.dim}, rotary_dim={self.rotary_dim}, base={self.base}, "
            f"interleaved={self.interleaved}, layout={self.layout}"
        )
        if self.scaling is not None:
            s += f", scaling={self.rope_type}"
        if self.precision != "reference":
            s += f", precision={self.precision}"
        if self.xpos_centre != 0:
            s += f", xpos_centre={self.xpos_centre}"
        return s


class ALiBi(nn.Module):
    """Attention with Linear Biases (Press et al. 2022, §3).

    ``forward(q_len, k_len, q_offset=0, k_offset=0) -> (H, q_len, k_len)`` via
    :func:`posenc.ops.alibi_bias`: ``-slope * (q_pos - k_pos)`` (causal) or
    ``-slope * |q_pos - k_pos|``, query ``i`` at ``q_offset + i``, key ``j`` at
    ``k_offset + j`` (align blocks with the offsets). Buffer ``slopes`` ``(H,)`` from
    :func:`posenc.ops.alibi_slopes`. Add the result to the attention scores or pass
    it (unsqueezed) as SDPA's ``attn_mask``.

    Raises:
        ValueError: ``num_heads`` <= 0. RuntimeError: negative lengths.
    """

    num_heads: int
    causal: bool

    def __init__(self, num_heads: int, causal: bool = True) -> None:
        super().__init__()
        _check_option(num_heads > 0, "ALiBi", "num_heads", "must be > 0", num_heads)
        self.num_heads = num_heads
        self.causal = causal
        self.register_buffer("slopes", ops.alibi_slopes(num_heads))

    def forward(self, q_len: int, k_len: int, q_offset: int = 0, k_offset: int = 0) -> Tensor:
        return ops.alibi_bias(self.slopes, q_len, k_len, q_offset, k_offset, self.causal)

    @torch.jit.export
    def attention(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        key_padding_mask: Optional[Tensor] = None,
        q_offset: int = 0,
        k_offset: int = 0,
        scale: Optional[float] = None,
    ) -> Tensor:
        """Fused attention with this module's position term, no ``(Lq, Lk)`` bias tensor.

        ``softmax(scale * q k^T + bias + mask) v`` by :func:`posenc.ops.relative_attention`:
        the numbers of SDPA with :meth:`forward`'s bias as ``attn_mask`` and a causal mask when ``causal``.
        ``q`` ``(B, H, Lq, D)``, ``k`` ``(B, H_kv, Lk, D)``, ``v`` ``(B, H_kv, Lk, Dv)``
        (``H % H_kv == 0``); ``key_padding_mask`` ``(B, Lk)`` bool, ``True`` = padding;
        offsets as in :meth:`forward`; ``scale`` defaults to ``1/sqrt(D)``. Returns
        ``(B, H, Lq, Dv)`` in ``q``'s dtype. Raises ``RuntimeError`` as the op does.
        """
        out, _ = ops.relative_attention(
            q, k, v, slopes=self.slopes, causal=self.causal, key_padding_mask=key_padding_mask,
            scale=scale, q_offset=q_offset, k_offset=k_offset,
        )
        return out

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, causal={self.causal}"


class T5RelativeBias(nn.Module):
    """T5 relative attention bias (Raffel et al. 2020, §2.1; Hugging Face T5Attention's numbers).

    ``forward(q_len, k_len, q_offset=0, k_offset=0) -> (H, q_len, k_len)`` via
    :func:`posenc.ops.t5_bias`: ``out[h, i, j] = weight[bucket(k_pos - q_pos), h]``.
    Parameter ``weight`` ``(num_buckets, num_heads)`` initialised N(0, 0.02) — the layout of
    HF's ``relative_attention_bias.weight``.

    Raises:
        ValueError: ``num_heads`` <= 0; ``num_buckets`` odd or < 4 when bidirectional, < 2
        when causal;
        ``max_distance`` not above the exact-bucket count. RuntimeError: negative lengths.
    """

    num_heads: int
    num_buckets: int
    max_distance: int
    bidirectional: bool

    def __init__(
        self,
        num_heads: int,
        num_buckets: int = 32,
        max_distance: int = 128,
        bidirectional: bool = True,
    ) -> None:
        super().__init__()
        name = "T5RelativeBias"
        _check_option(num_heads > 0, name, "num_heads", "must be > 0", num_heads)
        # Each direction needs an exact bucket besides its log-spaced ones.
        if bidirectional:
            _check_option(
                num_buckets >= 4 and num_buckets % 2 == 0, name, "num_buckets",
                "must be even and >= 4 when bidirectional (half the buckets per direction)",
                num_buckets,
            )
        else:
            _check_option(num_buckets >= 2, name, "num_buckets", "must be >= 2 when causal", num_buckets)
        max_exact = (num_buckets // 2 if bidirectional else num_buckets) // 2
        _check_option(
            max_distance > max_exact, name, "max_distance",
            f"must be > the number of exact buckets ({max_exact})", max_distance,
        )
        self.num_heads = num_heads
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.bidirectional = bidirectional
        self.weight = nn.Parameter(torch.empty(num_buckets, num_heads))
        nn.init.normal_(self.weight, 0.0, 0.02)

    def forward(self, q_len: int, k_len: int, q_offset: int = 0, k_offset: int = 0) -> Tensor:
        return ops.t5_bias(
            self.weight, q_len, k_len, q_offset, k_offset, self.bidirectional, self.max_distance
        )

    @torch.jit.export
    def attention(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        key_padding_mask: Optional[Tensor] = None,
        q_offset: int = 0,
        k_offset: int = 0,
        scale: Optional[float] = None,
    ) -> Tensor:
        """Fused attention with this module's position term, no ``(Lq, Lk)`` bias tensor.

        ``softmax(scale * q k^T + bias + mask) v`` by :func:`posenc.ops.relative_attention`:
        the numbers of SDPA with :meth:`forward`'s bias as ``attn_mask`` and, for a decoder (``bidirectional=False``), a causal mask.
        ``q`` ``(B, H, Lq, D)``, ``k`` ``(B, H_kv, Lk, D)``, ``v`` ``(B, H_kv, Lk, Dv)``
        (``H % H_kv == 0``); ``key_padding_mask`` ``(B, Lk)`` bool, ``True`` = padding;
        offsets as in :meth:`forward`; ``scale`` defaults to ``1/sqrt(D)``. Returns
        ``(B, H, Lq, Dv)`` in ``q``'s dtype. Raises ``RuntimeError`` as the op does.
        """
        out, _ = ops.relative_attention(
            q, k, v, table=self.weight, causal=not self.bidirectional,
            key_padding_mask=key_padding_mask, scale=scale, q_offset=q_offset,
            k_offset=k_offset, bidirectional=self.bidirectional, max_distance=self.max_distance,
        )
        return out

    def extra_repr(self) -> str:
        return (
            f"num_heads={self.num_heads}, num_buckets={self.num_buckets}, "
            f"max_distance={self.max_distance}, bidirectional={self.bidirectional}"
        )


class KERPLEBias(nn.Module):
    """KERPLE relative bias (Chi et al. 2022), logarithmic or power kernel, learnable.

    ``forward(q_len, k_len, q_offset=0, k_offset=0) -> (H, q_len, k_len)`` =
    :func:`posenc.ops.kerple_bias` of ``r1.clamp(min=eps)`` and ``r2.clamp(min=eps)`` (for
    ``kind="power"`` also ``r2 <= 2``, where the kernel stays conditionally positive
    definite). ``"log"``: ``-r1 * log(1 + r2 * d)``; ``"power"``: ``-r1 * d ** r2``;
    ``d = max(q_pos - k_pos, 0)`` (causal) or ``|q_pos - k_pos|``. Parameters ``r1``, ``r2``
    ``(H,)`` initialised uniformly in (0, 2] and (0, 1] (the paper's code).

    Raises:
        ValueError: ``num_heads`` <= 0, unknown ``kind``, ``eps`` <= 0, ``eps`` > 2 with
        ``kind="power"``. RuntimeError: negative lengths; non-finite ``r1``/``r2`` on CPU
        (see :func:`posenc.ops.kerple_bias`).
    """

    num_heads: int
    kind: str
    causal: bool
    eps: float

    def __init__(
        self, num_heads: int, kind: str = "log", causal: bool = True, eps: float = 1e-2
    ) -> None:
        super().__init__()
        name = "KERPLEBias"
        _check_option(num_heads > 0, name, "num_heads", "must be > 0", num_heads)
        _check_option(kind in ("log", "power"), name, "kind", 'must be "log" or "power"', f'"{kind}"')
        _check_option(eps > 0, name, "eps", "must be > 0", eps)
        # forward clamps r2 of the power kernel to [eps, 2]: eps > 2 leaves no valid value.
        _check_option(
            kind != "power" or eps <= 2, name, "eps",
            'must be <= 2 for kind "power" (r2 is clamped to [eps, 2])', eps,
        )
        self.num_heads = num_heads
        self.kind = kind
        self.causal = causal
        self.eps = eps
        # 1 - U[0, 1) lies in (0, 1]: zero is excluded as in the paper's init.
        self.r1 = nn.Parameter((1.0 - torch.rand(num_heads)) * 2.0)
        self.r2 = nn.Parameter(1.0 - torch.rand(num_heads))

    def forward(self, q_len: int, k_len: int, q_offset: int = 0, k_offset: int = 0) -> Tensor:
        r1, r2 = self._clamped_params()
        return ops.kerple_bias(r1, r2, q_len, k_len, q_offset, k_offset, self.kind, self.causal)

    def _clamped_params(self) -> Tuple[Tensor, Tensor]:
        r1 = self.r1.clamp(min=self.eps)
        if self.kind == "power":
            r2 = self.r2.clamp(min=self.eps, max=2.0)
        else:
            r2 = self.r2.clamp(min=self.eps)
        return r1, r2

    @torch.jit.export
    def attention(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        key_padding_mask: Optional[Tensor] = None,
        q_offset: int = 0,
        k_offset: int = 0,
        scale: Optional[float] = None,
    ) -> Tensor:
        """Fused attention with this module's position term, no ``(Lq, Lk)`` bias tensor.

        ``softmax(scale * q k^T + bias + mask) v`` by :func:`posenc.ops.relative_attention`:
        the numbers of SDPA with :meth:`forward`'s bias as ``attn_mask`` and a causal mask when ``causal``.
        ``q`` ``(B, H, Lq, D)``, ``k`` ``(B, H_kv, Lk, D)``, ``v`` ``(B, H_kv, Lk, Dv)``
        (``H % H_kv == 0``); ``key_padding_mask`` ``(B, Lk)`` bool, ``True`` = padding;
        offsets as in :meth:`forward`; ``scale`` defaults to ``1/sqrt(D)``. Returns
        ``(B, H, Lq, Dv)`` in ``q``'s dtype. Raises ``RuntimeError`` as the op does.
        """
        r1, r2 = self._clamped_params()
        out, _ = ops.relative_attention(
            q, k, v, r1=r1, r2=r2, causal=self.causal, key_padding_mask=key_padding_mask,
            scale=scale, q_offset=q_offset, k_offset=k_offset, kerple_kind=self.kind,
        )
        return out

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, kind={self.kind}, causal={self.causal}, eps={self.eps}"


class _DPBNorm(nn.Module):
    """The gain ``gamma`` of x-transformers' bias-free LayerNorm (parameter only: the op applies it)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))


class _DPBLayer(nn.Sequential):
    """A hidden layer of DynamicPositionBias' MLP, x-transformers' ``Sequential(Linear, SiLU)``
    (state_dict keys ``<l>.0.weight``, ``<l>.0.bias``). Holds parameters only:
    :func:`posenc.ops.dynamic_position_bias` evaluates the MLP."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__(nn.Linear(d_in, d_out), nn.SiLU())

    @torch.jit.export
    def params(self) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
        lin = self[0]
        return lin.weight, lin.bias, None

    def forward(self, x: Tensor) -> Tensor:
        raise RuntimeError(
            "posenc.DynamicPositionBias: its MLP layers are evaluated by the op; call the module"
        )


class _DPBNormLayer(nn.Sequential):
    """A hidden layer with x-transformers' bias-free LayerNorm, ``Sequential(Linear, LayerNorm,
    SiLU)`` (keys ``<l>.0.weight``, ``<l>.0.bias``, ``<l>.1.gamma``). Parameters only."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__(nn.Linear(d_in, d_out), _DPBNorm(d_out), nn.SiLU())

    @torch.jit.export
    def params(self) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
        lin = self[0]
        return lin.weight, lin.bias, self[1].gamma

    def forward(self, x: Tensor) -> Tensor:
        raise RuntimeError(
            "posenc.DynamicPositionBias: its MLP layers are evaluated by the op; call the module"
        )


class _DPBOut(nn.Linear):
    """The output layer ``Linear(dim, num_heads)`` of DynamicPositionBias' MLP."""

    @torch.jit.export
    def params(self) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
        return self.weight, self.bias, None


class DynamicPositionBias(nn.Module):
    """Dynamic position bias (x-transformers' ``DynamicPositionBias``, after Wang et al. 2021,
    "CrossFormer" §3.3): an MLP over the relative distance, one value per head.

    ``forward(q_len, k_len, q_offset=0, k_offset=0) -> (H, q_len, k_len)`` =
    :func:`posenc.ops.dynamic_position_bias` of this module's MLP: query ``i`` at
    ``q_offset + i``, key ``j`` at ``k_offset + j``, MLP input ``d = q_pos - k_pos`` (or
    ``sign(d) * log(|d| + 1)``), evaluated once per distinct distance. The layers and
    ``state_dict`` keys are x-transformers': ``mlp.<l>.0.weight`` / ``.bias`` for
    ``Linear(1, dim)`` then ``depth - 1`` times ``Linear(dim, dim)``, each followed by SiLU
    (with ``norm``, a bias-free LayerNorm with gain ``mlp.<l>.1.gamma`` before it), and
    ``mlp.<depth>.weight`` / ``.bias`` for ``Linear(dim, num_heads)``; torch's default
    ``Linear`` init, ``gamma = 1``. A state_dict of x-transformers' module (same ``dim``,
    ``depth``, ``norm``) loads as is and gives its numbers (with ``causal=False``).

    Args:
        dim: hidden width, > 0 (x-transformers uses model dim / 4).
        num_heads: heads H, > 0.
        depth: hidden layers, >= 1 (x-transformers' attention layers use 2).
        log_distance: feed ``sign(d) * log(|d| + 1)``.
        norm: bias-free LayerNorm before each SiLU.
        causal: keys after the query get 0 (the causal mask removes them anyway).

    Raises:
        ValueError: ``dim``/``num_heads`` <= 0, ``depth`` < 1. RuntimeError: negative lengths,
        non-finite parameters on CPU (see :func:`posenc.ops.dynamic_position_bias`).
    """

    dim: int
    num_heads: int
    depth: int
    log_distance: bool
    norm: bool
    causal: bool

    def __init__(
        self,
        dim: int,
        num_heads: int,
        depth: int = 2,
        log_distance: bool = False,
        norm: bool = False,
        causal: bool = False,
    ) -> None:
        super().__init__()
        name = "DynamicPositionBias"
        _check_option(dim > 0, name, "dim", "must be > 0", dim)
        _check_option(num_heads > 0, name, "num_heads", "must be > 0", num_heads)
        _check_option(depth >= 1, name, "depth", "must be >= 1", depth)
        self.dim = dim
        self.num_heads = num_heads
        self.depth = depth
        self.log_distance = log_distance
        self.norm = norm
        self.causal = causal
        layer = _DPBNormLayer if norm else _DPBLayer
        layers: List[nn.Module] = [layer(1 if l == 0 else dim, dim) for l in range(depth)]
        layers.append(_DPBOut(dim, num_heads))
        self.mlp = nn.ModuleList(layers)

    def forward(self, q_len: int, k_len: int, q_offset: int = 0, k_offset: int = 0) -> Tensor:
        weights: List[Tensor] = []
        biases: List[Tensor] = []
        norms: List[Tensor] = []
        for layer in self.mlp:
            w, b, g = layer.params()
            weights.append(w)
            biases.append(b)
            if g is not None:
                norms.append(g)
        return ops.dynamic_position_bias(
            weights, biases, q_len, k_len, q_offset, k_offset, self.log_distance, self.causal,
            norms,
        )

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, num_heads={self.num_heads}, depth={self.depth}, "
            f"log_distance={self.log_distance}, norm={self.norm}, causal={self.causal}"
        )


class FIRE(nn.Module):
    """FIRE relative bias (Li et al. 2023, "Functional Interpolation for Relative Positions
    Improves Long Context Transformers", ICLR 2024, eq. 3-4), learnable.

    ``forward(q_len, k_len, q_offset=0, k_offset=0) -> (H, q_len, k_len)`` =
    :func:`posenc.ops.fire_bias` of ``c``, ``L_multiplier * init_L`` and the MLP:
    ``b(i, j) = f(psi(i - j) / (psi(max(L, i)) + eps))``, ``psi(x) = log(|c| x + 1)``, query
    ``i`` at ``q_offset + row``, key ``j`` at ``k_offset + col``. Parameters and ``state_dict``
    keys are those of the paper's reference code: ``mlp`` = ``Linear(1, mlp_width), ReLU,
    Linear(mlp_width, num_heads)`` (``mlp.0.*``, ``mlp.2.*``; torch's default init), ``c`` = init_c,
    ``L_multiplier`` = 1 and ``init_L`` (a buffer here, a frozen parameter there; same key).

    Args:
        num_heads: heads H, > 0.
        mlp_width: hidden width of f (the paper: 32), > 0.
        init_c: initial c (the code: 0.1), finite and != 0.
        init_L: initial threshold L (the code: 512), finite and > 0.
        eps: added to the normalizer (the code: 1e-6), > 0.
        causal: keys after the query get 0 (FIRE is defined for ``j <= i``); ``False`` gives
            the code's ``|i - j|`` on every entry.

    Raises:
        ValueError: bad options as above. RuntimeError: ``q_offset < 0``, negative lengths,
        non-finite parameters on CPU (see :func:`posenc.ops.fire_bias`).
    """

    num_heads: int
    mlp_width: int
    init_c: float
    eps: float
    causal: bool

    def __init__(
        self,
        num_heads: int,
        mlp_width: int = 32,
        init_c: float = 0.1,
        init_L: float = 512.0,
        eps: float = 1e-6,
        causal: bool = True,
    ) -> None:
        super().__init__()
        name = "FIRE"
        _check_option(num_heads > 0, name, "num_heads", "must be > 0", num_heads)
        _check_option(mlp_width > 0, name, "mlp_width", "must be > 0", mlp_width)
        _check_option(math.isfinite(init_c) and init_c != 0, name, "init_c", "must be finite and != 0", _fmt(init_c))
        _check_option(math.isfinite(init_L) and init_L > 0, name, "init_L", "must be finite and > 0", _fmt(init_L))
        _check_option(math.isfinite(eps) and eps > 0, name, "eps", "must be finite and > 0", _fmt(eps))
        self.num_heads = num_heads
        self.mlp_width = mlp_width
        self.init_c = init_c
        self.eps = eps
        self.causal = causal
        self.mlp = nn.Sequential(nn.Linear(1, mlp_width), nn.ReLU(), nn.Linear(mlp_width, num_heads))
        self.c = nn.Parameter(torch.tensor(init_c))
        self.L_multiplier = nn.Parameter(torch.tensor(1.0))
        self.register_buffer("init_L", torch.tensor(init_L))

    def forward(self, q_len: int, k_len: int, q_offset: int = 0, k_offset: int = 0) -> Tensor:
        fc1 = self.mlp[0]
        fc2 = self.mlp[2]
        return ops.fire_bias(
            self.c, self.L_multiplier * self.init_L, fc1.weight, fc1.bias, fc2.weight, fc2.bias,
            q_len, k_len, q_offset, k_offset, self.causal, self.eps,
        )

    def extra_repr(self) -> str:
        return (
            f"num_heads={self.num_heads}, mlp_width={self.mlp_width}, init_c={self.init_c}, "
            f"init_L={float(self.init_L)}, eps={self.eps}, causal={self.causal}"
        )


class TransformerXLRelativeScore(nn.Module):
    """Position terms of Transformer-XL attention (Dai et al. 2019, §3.3).

    With ``A_ij = (a) + (b) + (c) + (d)``, ``forward(q, mem_len=0, causal=False)`` gives ``(b) + (d)``:
    ``out[b, h, i, j] = (q_i + v_h) · W_R R_{(mem_len + i) - j}`` for keys over
    ``[memory; segment]``, shape ``(B, H, Lq, mem_len + Lq)`` for ``q`` of shape
    ``(B, H, Lq, head_dim)``. ``R`` is :func:`posenc.ops.sinusoidal_table` (interleaved,
    ``d_model`` wide) at distances ``-c .. c`` with ``c = mem_len + Lq - 1``, projected by
    ``r_proj`` (``nn.Linear(d_model, H * head_dim, bias=False)``, ``W_R``), and the scores
    come from :func:`posenc.ops.rel_pos_scores` — exact for both signs of the distance, no
    pad-and-shift. ``causal=True`` writes 0 for the keys after each query without
    computing them (half the work for a causal language model; the causal mask removes them).
    ``content_query(q) = q + u`` is the query for ``(a) + (c)``. The scores have the dtype of
    ``q + v`` (type promotion with the parameters), or the autocast dtype under
    ``torch.autocast`` (the policy of :func:`posenc.ops.rel_pos_scores`).

    Parameters: ``r_proj.weight`` ``(H * head_dim, d_model)``, ``u``, ``v`` ``(H, head_dim)``
    (N(0, 0.02)).

    Raises:
        ValueError: ``d_model`` odd or <= 0, ``num_heads``/``head_dim`` <= 0, ``base`` <= 0.
        RuntimeError: ``q`` not ``(B, H, Lq, head_dim)`` or not floating, ``mem_len`` < 0.
    """

    d_model: int
    num_heads: int
    head_dim: int
    base: float

    def __init__(self, d_model: int, num_heads: int, head_dim: int, base: float = 10000.0) -> None:
        super().__init__()
        name = "TransformerXLRelativeScore"
        _check_option(
            d_model > 0 and d_model % 2 == 0, name, "d_model",
            "must be even and > 0 (sin/cos pairs)", d_model,
        )
        _check_option(num_heads > 0, name, "num_heads", "must be > 0", num_heads)
        _check_option(head_dim > 0, name, "head_dim", "must be > 0", head_dim)
        _check_option(base > 0, name, "base", "must be > 0", base)
        self.d_model = d_model
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.base = base
        self.u = nn.Parameter(torch.empty(num_heads, head_dim))
        self.v = nn.Parameter(torch.empty(num_heads, head_dim))
        nn.init.normal_(self.u, 0.0, 0.02)
        nn.init.normal_(self.v, 0.0, 0.02)
        self.r_proj = nn.Linear(d_model, num_heads * head_dim, bias=False)

    def _check_q(self, q: Tensor) -> None:
        if q.dim() != 4 or q.size(1) != self.num_heads or q.size(3) != self.head_dim:
            raise RuntimeError(
                f"posenc.TransformerXLRelativeScore: argument 'q' must be a 4-D tensor "
                f"(batch, {self.num_heads}, q_len, {self.head_dim}), but got shape {list(q.shape)}"
            )
        # An integer q would be promoted by q + v and give float scores without complaint.
        if q.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
            raise RuntimeError(
                f"posenc.TransformerXLRelativeScore: argument 'q' must have a floating dtype "
                f"(float16, bfloat16, float32 or float64), but got dtype {ops._dtype_name(q.dtype)}"
            )

    def forward(self, q: Tensor, mem_len: int = 0, causal: bool = False) -> Tensor:
        self._check_q(q)
        ops._check_int64("TransformerXLRelativeScore", "mem_len", mem_len)
        if mem_len < 0:
            raise RuntimeError(
                f"posenc.TransformerXLRelativeScore: argument 'mem_len' must be >= 0, but got {mem_len}"
            )
        k_len = mem_len + q.size(2)
        qv = q + self.v.view(1, self.num_heads, 1, self.head_dim)
        # The op wants one dtype: follow q + v's (type promotion of input and parameters).
        rel_emb = self._rel_emb(k_len, qv.dtype, q.device)
        return ops.rel_pos_scores(qv, rel_emb, mem_len, 0, k_len, None, causal)

    def _rel_emb(self, k_len: int, dtype: torch.dtype, device: torch.device) -> Tensor:
        # W_R R as (H, 2c + 1, D): distances q_pos - k_pos span [-(Lq - 1), k_len - 1] with
        # q_offset = mem_len, and rows -c..c (c = k_len - 1) cover them.
        c = max(k_len - 1, 0)
        r = 2 * c + 1
        table = ops.sinusoidal_table(
            r, self.d_model, self.base, -c, True, dtype=self.r_proj.weight.dtype, device=device
        )
        return self.r_proj(table).view(r, self.num_heads, self.head_dim).permute(1, 0, 2).to(dtype)

    @torch.jit.export
    def attention(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        mem_len: int = 0,
        key_padding_mask: Optional[Tensor] = None,
        scale: Optional[float] = None,
        causal: bool = True,
    ) -> Tensor:
        """Full Transformer-XL attention, fused: no ``(Lq, mem_len + Lq)`` score tensor.

        ``softmax(scale * ((q + u) · k_j + (q + v) · W_R R_{i - j}) + mask) v_j`` — the paper's
        ``A = (a) + (b) + (c) + (d)`` (Dai et al. 2019, §3.3) scaled by ``scale`` (default
        ``1/sqrt(head_dim)``) — by :func:`posenc.ops.relative_attention`. ``q``
        ``(B, H, Lq, head_dim)``; ``k`` ``(B, H_kv, mem_len + Lq, head_dim)`` and ``v``
        ``(B, H_kv, mem_len + Lq, Dv)`` over ``[memory; segment]``; ``causal`` (default,
        language modelling): query ``i`` sees the memory and the segment up to ``i``.
        ``key_padding_mask`` ``(B, mem_len + Lq)`` bool, ``True`` = padding. Returns
        ``(B, H, Lq, Dv)`` in ``q``'s dtype (``u``, ``v``, ``W_R R`` are cast to it).

        Raises:
            RuntimeError: ``q`` as in :meth:`forward`, ``mem_len`` < 0, ``k`` not
            ``(B, H_kv, mem_len + Lq, head_dim)``, and the op's errors.
        """
        self._check_q(q)
        ops._check_int64("TransformerXLRelativeScore", "mem_len", mem_len)
        if mem_len < 0:
            raise RuntimeError(
                f"posenc.TransformerXLRelativeScore: argument 'mem_len' must be >= 0, but got {mem_len}"
            )
        if k.dim() != 4 or k.size(2) != mem_len + q.size(2):
            raise RuntimeError(
                f"posenc.TransformerXLRelativeScore: argument 'k' must be a 4-D tensor "
                f"(batch, kv_heads, mem_len + q_len = {mem_len + q.size(2)}, head_dim), "
                f"but got shape {list(k.shape)}"
            )
        h, d = self.num_heads, self.head_dim
        s = scale if scale is not None else 1.0 / math.sqrt(d)
        # The op scales only q . k: the position term gets the same factor through rel_emb.
        rel_emb = self._rel_emb(k.size(2), q.dtype, q.device) * s
        qu = q + self.u.to(q.dtype).view(1, h, 1, d)
        qv = q + self.v.to(q.dtype).view(1, h, 1, d)
        out, _ = ops.relative_attention(
            qu, k, v, rel_emb=rel_emb, q_rel=qv, causal=causal,
            key_padding_mask=key_padding_mask, scale=s, q_offset=mem_len,
        )
        return out

    @torch.jit.export
    def content_query(self, q: Tensor) -> Tensor:
        """``q + u[None, :, None, :]``: the query of the content terms (a) + (c)."""
        self._check_q(q)
        return q + self.u.view(1, self.num_heads, 1, self.head_dim)

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, num_heads={self.num_heads}, head_dim={self.head_dim}, "
            f"base={self.base}"
        )


class CoPE(nn.Module):
    """CoPE, contextual position encoding (Golovneva et al. 2024, §3, eqs. 3-5).

    ``forward(q, k, q_offset=0, k_offset=0) -> (B, H, Lq, Lk)`` =
    :func:`posenc.ops.cope_scores` of ``q``, ``k`` and this module's ``pos_emb`` (cast to
    ``q``'s dtype): the term to add to the attention logits, 0 for keys after the query (a
    causal mask must remove them). Gates ``sigmoid(scale * q·k)`` (``scale`` default
    ``1/sqrt(head_dim)``, as the paper's code), positions ``p_ij = sum_{t=j..i} g_it``
    clamped to ``npos_max - 1``, the score ``q·e[p]`` interpolated between the two nearest
    integer positions. Parameter ``pos_emb`` ``(npos_max, head_dim)``, shared by the heads,
    initialised to zeros (the paper's code). Same options, state_dict keys and numbers as
    ``posenc::nn::CoPE`` (C++) and ``posenc.cpp.CoPE``.

    Raises:
        ValueError: ``npos_max`` <= 0, ``head_dim`` <= 0, a non-finite ``scale``.
        RuntimeError: the errors of :func:`posenc.ops.cope_scores` (e.g. ``q``'s head_dim not
        ``head_dim``).
    """

    npos_max: int
    head_dim: int
    scale: Optional[float]

    def __init__(self, npos_max: int, head_dim: int, scale: Optional[float] = None) -> None:
        super().__init__()
        name = "CoPE"
        _check_option(npos_max > 0, name, "npos_max", "must be > 0", npos_max)
        _check_option(head_dim > 0, name, "head_dim", "must be > 0", head_dim)
        _check_option(scale is None or math.isfinite(scale), name, "scale", "must be finite", scale)
        self.npos_max = npos_max
        self.head_dim = head_dim
        self.scale = scale
        # The paper's code: nn.Parameter(torch.zeros(1, head_dim, npos_max)), here (npos_max, head_dim).
        self.pos_emb = nn.Parameter(torch.zeros(npos_max, head_dim))

    def forward(self, q: Tensor, k: Tensor, q_offset: int = 0, k_offset: int = 0) -> Tensor:
        return ops.cope_scores(q, k, self.pos_emb.to(q.dtype), self.scale, q_offset, k_offset)

    @torch.jit.export
    def attention(self, q: Tensor, k: Tensor, v: Tensor, q_offset: int = 0, k_offset: int = 0) -> Tensor:
        """Causal attention with CoPE, as the paper's ``SelfAttn``.

        ``softmax(scale * q k^T + forward(q, k) + causal mask) v`` by
        ``F.scaled_dot_product_attention`` with the masked term as ``attn_mask`` (one scale for
        the logits and the gates). ``v`` ``(B, H, Lk, Dv)`` -> ``(B, H, Lq, Dv)``. A query that
        sees no key (``k_offset > q_offset + i``) gets NaN, as SDPA gives for a fully masked
        row. Raises ``RuntimeError`` as :meth:`forward` and SDPA do.
        """
        term = self.forward(q, k, q_offset, k_offset)
        qp = torch.arange(q.size(2), device=q.device) + q_offset
        kp = torch.arange(k.size(2), device=q.device) + k_offset
        future = kp[None, :] > qp[:, None]
        mask = term.masked_fill(future, float("-inf"))
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)

    def extra_repr(self) -> str:
        s = f"npos_max={self.npos_max}, head_dim={self.head_dim}"
        if self.scale is not None:
            s += f", scale={self.scale}"
        return s


class ForgettingGate(nn.Module):
    """Forgetting gate of the Forgetting Transformer (Lin et al. 2025, §2), per head.

    ``f_t = sigmoid(w_f^T x_t + b_f)``; the attention bias is ``D_ij = sum_{j < s <= i} log f_s``
    for ``j <= i`` and ``-inf`` after (:func:`posenc.ops.forgetting_gate_bias`): softmax
    attention with a data-dependent decay, no position embedding needed. ``proj`` is
    ``Linear(d_model, num_heads)`` with bias (state_dict keys ``proj.weight``, ``proj.bias``,
    as ``posenc::nn::ForgettingGate``), weight ``N(0, init_std)`` and bias 0 (FoX's "full" gate).

    ``log_fgate(x)``: ``x`` ``(B, L, d_model)`` -> ``log sigmoid(proj(x))`` as ``(B, H, L)``
    float32 (fp32 as FoX). ``forward(x)`` -> the bias ``(B, H, L, L)`` in ``x``'s dtype for
    self-attention over ``x``; pass it as ``attn_mask`` to SDPA (it already masks future keys).
    For a KV cache keep ``log_fgate`` of the cached tokens and call the op with ``q_offset``.

    Raises:
        ValueError: ``d_model`` or ``num_heads`` <= 0, ``init_std`` < 0 or not finite.
        RuntimeError: ``x`` not ``(B, L, d_model)``.
    """

    d_model: int
    num_heads: int
    init_std: float

    def __init__(self, d_model: int, num_heads: int, init_std: float = 0.02) -> None:
        super().__init__()
        name = "ForgettingGate"
        _check_option(d_model > 0, name, "d_model", "must be > 0", d_model)
        _check_option(num_heads > 0, name, "num_heads", "must be > 0", num_heads)
        _check_option(
            math.isfinite(init_std) and init_std >= 0, name, "init_std",
            "must be finite and >= 0", _fmt(init_std),
        )
        self.d_model = d_model
        self.num_heads = num_heads
        self.init_std = init_std
        self.proj = nn.Linear(d_model, num_heads)
        with torch.no_grad():
            self.proj.weight.normal_(0.0, init_std)
            self.proj.bias.zero_()

    @torch.jit.export
    def log_fgate(self, x: Tensor) -> Tensor:
        """``x`` ``(B, L, d_model)`` -> ``log sigmoid(proj(x))``, ``(B, H, L)`` float32."""
        if x.dim() != 3 or x.size(2) != self.d_model:
            raise RuntimeError(
                f"posenc.ForgettingGate: argument 'x' must be a 3-D tensor of shape "
                f"(batch, seq, d_model = {self.d_model}), but got shape {list(x.shape)}"
            )
        return F.logsigmoid(self.proj(x).float()).transpose(1, 2)

    def forward(self, x: Tensor) -> Tensor:
        lf = self.log_fgate(x)
        return ops.forgetting_gate_bias(lf, lf.size(2)).to(x.dtype)

    @torch.jit.export
    def attention(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        x: Tensor,
        key_padding_mask: Optional[Tensor] = None,
        q_offset: int = 0,
        k_offset: int = 0,
        scale: Optional[float] = None,
    ) -> Tensor:
        """Fused forgetting attention, no ``(Lq, Lk)`` bias tensor.

        :func:`posenc.ops.relative_attention` with ``log_fgate = self.log_fgate(x)`` and
        ``causal=True``: the numbers of SDPA with :meth:`forward`'s bias as ``attn_mask``.
        ``x`` ``(B, Lk, d_model)`` are the key tokens; ``q`` ``(B, H, Lq, D)``, ``k``
        ``(B, H_kv, Lk, D)``, ``v`` ``(B, H_kv, Lk, Dv)``; ``key_padding_mask`` ``(B, Lk)``
        bool, ``True`` = padding; query ``i`` at ``q_offset + i``, key ``j`` at ``k_offset + j``
        (every query at a key position); ``scale`` defaults to ``1/sqrt(D)``. Returns
        ``(B, H, Lq, Dv)`` in ``q``'s dtype. Raises ``RuntimeError`` as the op does.
        """
        out, _ = ops.relative_attention(
            q, k, v, causal=True, key_padding_mask=key_padding_mask, scale=scale,
            q_offset=q_offset, k_offset=k_offset, log_fgate=self.log_fgate(x),
        )
        return out

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, num_heads={self.num_heads}, init_std={_fmt(self.init_std)}"


class NoPE(nn.Module):
    """No position encoding (NoPE; Kazemnejad et al. 2023), as an explicit choice.

    ``forward(x)`` returns ``x`` unchanged (the slot of an absolute encoding);
    :meth:`attention` is :func:`posenc.ops.relative_attention` without a position term, with
    the causal mask when ``causal`` (in a decoder the mask is the only position signal). No
    parameters or buffers; twin of ``posenc::nn::NoPE``.
    """

    causal: bool

    def __init__(self, causal: bool = True) -> None:
        super().__init__()
        self.causal = causal

    def forward(self, x: Tensor) -> Tensor:
        return x

    @torch.jit.export
    def attention(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        key_padding_mask: Optional[Tensor] = None,
        q_offset: int = 0,
        k_offset: int = 0,
        scale: Optional[float] = None,
    ) -> Tensor:
        """``softmax(scale * q k^T + mask) v``: shapes, offsets and errors as
        :func:`posenc.ops.relative_attention`; the numbers of SDPA with ``is_causal``."""
        out, _ = ops.relative_attention(
            q, k, v, causal=self.causal, key_padding_mask=key_padding_mask, scale=scale,
            q_offset=q_offset, k_offset=k_offset,
        )
        return out

    def extra_repr(self) -> str:
        return f"causal={self.causal}"
