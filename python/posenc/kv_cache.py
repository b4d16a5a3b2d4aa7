"""A RoPE KV cache that stays consistent when the frequencies depend on the length.

Dynamic NTK and LongRoPE choose their frequencies from the current total length ``L``
(:meth:`posenc.rope_config.RopeConfig.compute`). A full forward pass over ``L`` tokens rotates
*every* position with the frequencies for ``L``. An ordinary KV cache stores keys already
rotated, each with the frequencies current at the step that produced it (what transformers
does with its ``DynamicCache``), so once the frequencies change the cached keys and the new queries no
longer share one rotation: decoding drifts away from a full recompute. :class:`RopeKVCache`
keeps the un-rotated keys and re-rotates them whenever the frequencies change ("exact" mode).

Semantics, cost and memory
--------------------------

* "exact" (default): after appending, the total length is ``L``; the cache computes
  ``(inv_freq, attention_factor) = config.compute(L)``. If they differ from those the cached
  keys were rotated with (element-wise ``inv_freq`` equality and equal attention factor), all
  ``L`` raw keys are rotated again (positions ``0..L-1``); otherwise only the new keys are
  rotated (positions ``L-S..L-1``) and appended. Queries are rotated with the same
  frequencies. So the keys and queries one attention layer sees are exactly those of a full
  recompute at length ``L`` given the same un-rotated inputs.
  Cost: re-rotation is O(cache) work, done only when the frequencies change: for dynamic NTK
  at every step once ``L > max_position_embeddings``, for LongRoPE once, when ``L`` first
  exceeds ``original_max_position_embeddings``; never for the other types (their
  frequencies do not depend on the length, and are computed once; dynamic and LongRoPE
  recompute ``inv_freq``, a few floats, at every update). Memory: the raw and the
  rotated keys (one extra key-sized tensor over an ordinary cache) plus the values.
* "static": each key is rotated once, with the frequencies current at the step it arrives,
  and never again (transformers' behaviour); no raw keys are kept. Given for comparison:
  it equals "exact" for types whose frequencies do not depend on the length.

Multi-layer caveat
------------------

"exact" makes each attention layer consistent *given its inputs*. In a full recompute at
length ``L`` the hidden states of earlier tokens after the first attention layer are
themselves computed with the frequencies for ``L``; the keys and values a layer >= 2 cached
at earlier steps came from hidden states computed with the old frequencies. So, once the
frequencies change, a stack of two or more RoPE attention layers decoded with any KV cache
(this one included) cannot give the logits of a full recompute unless every layer is
recomputed over the whole prefix. For a single attention layer (or layers whose inputs do
not depend on the frequencies) decoding equals the full recompute; for a deeper model the
first layer is exact and the later ones are exact for their cached inputs. Measured in
tests/python/test_kv_cache.py on a tiny random fp32 model: one layer stays within 1e-6 of
the full recompute's logits across the LongRoPE switch and dynamic NTK growth (the static
cache: 0.3-0.8 apart); two layers with this cache are 0.1-0.6 apart once the frequencies
have changed (within 1e-6 before, and throughout for types with fixed frequencies).
``last_update_changed_frequencies`` tells a caller when the frequencies changed, e.g. to
re-run the prefix through the model when agreement with a full recompute matters more than
the cost.

Magnitude scalings pass through :func:`posenc.ops.rope`: the attention factor multiplies
queries and keys; for ``rope_type="xpos"`` queries get ``zeta ** ((p - xpos_centre) /
xpos_scale_base)`` and keys its inverse (Sun et al. 2022, §3.2).
"""
from typing import List, Optional, Tuple

import torch
from torch import Tensor, nn

from . import ops
from .rope_config import RopeConfig, rope_scaling_inv_freq

__all__ = ["RopeKVCache", "KV_CACHE_MODES"]

#: Modes of :class:`RopeKVCache`.
KV_CACHE_MODES: Tuple[str, ...] = ("exact", "static")

# Only these types read seq_len (rope_config.py, precedence rules 6 and 7).
_LENGTH_DEPENDENT = ("dynamic", "longrope")


def _option_error(option: str, expected: str, given) -> ValueError:
    return ValueError(f"posenc.RopeKVCache: option '{option}' {expected}, but got {given}")


class RopeKVCache(nn.Module):
    """KV cache of one RoPE attention layer (see the module docstring for semantics and cost).

    Usage per step, with ``k_new``/``v_new``/``q_new`` the un-rotated projections of the
    ``S`` new tokens::

        k_all, v_all = cache.update(k_new, v_new)   # rotated keys 0..L-1, values 0..L-1
        q = cache.rotate_queries(q_new)             # positions L-S..L-1, frequencies for L

    or ``q, k_all, v_all = cache(q_new, k_new, v_new)``.

    Shapes: ``(B, H, S, D)`` for ``layout="bhsd"``, ``(B, S, H, D)`` for ``"bshd"``, any float
    dtype, any strides. ``D == config.head_dim`` for queries and keys (values may have another
    last dimension). Queries may have more heads than keys (GQA/MQA: a multiple of the key
    heads); the cache returns keys and values with their own head count. Outputs are
    contiguous, keys in the input dtype; frequencies stay float32 (computed on the keys'
    device).

    Args:
        config: the RoPE configuration (:class:`posenc.rope_config.RopeConfig`, e.g. from
            :func:`posenc.hf.rope_from_config`); rotary dims ``2 * config.num_frequencies``.
        interleaved: pairs ``(2i, 2i+1)`` instead of ``(i, i + R/2)``.
        layout: ``"bhsd"`` or ``"bshd"``.
        mode: ``"exact"`` or ``"static"``.
        xpos_centre: the absolute position xPos scales are centred on (``rope_type="xpos"``
            only; it cancels in ``q . k``, keep it near the middle of long contexts).

    Attributes: ``seq_len`` (cached tokens), ``k_raw`` (un-rotated keys, "exact" only),
    ``k_rot``, ``v``, ``inv_freq`` / ``attention_factor`` (the frequencies the cached keys are
    rotated with), ``num_rerotations`` (how many times the whole cache was re-rotated),
    ``last_update_changed_frequencies``. None of them is a parameter or buffer (empty
    state_dict). :meth:`reset` empties the cache.

    Raises:
        ValueError at construction ("posenc.RopeKVCache: option '<name>' ..."): ``config``
        not a RopeConfig, unknown ``layout`` or ``mode``, rotary dims > head_dim.
        RuntimeError in update / rotate_queries ("posenc.RopeKVCache: argument '<arg>' ...,
        but got ..."): not 4-D, not floating point, last dim not ``head_dim``, ``v_new``
        batch/length not ``k_new``'s, head count, batch, dtype or device different from the
        cache's, query heads not a multiple of key heads, queries before any update or more
        query tokens than cached; and the op's own errors.

    Scriptable with ``torch.jit.script`` (the configuration is copied into plain attributes).
    """

    __jit_ignored_attributes__ = ["config"]

    rope_type: str
    rope_theta: float
    head_dim: int
    partial_rotary_factor: float
    factor: Optional[float]
    max_position_embeddings: Optional[int]
    original_max_position_embeddings: Optional[int]
    attention_factor_override: Optional[float]
    beta_fast: Optional[float]
    beta_slow: Optional[float]
    mscale: Optional[float]
    mscale_all_dim: Optional[float]
    truncate: bool
    low_freq_factor: Optional[float]
    high_freq_factor: Optional[float]
    short_factor: Optional[List[float]]
    long_factor: Optional[List[float]]
    xpos_gamma: float
    xpos_scale_base: float
    xpos_centre: int
    use_xpos: bool
    length_dependent: bool

    rotary_dim: int
    interleaved: bool
    layout: str
    mode: str
    seq_dim: int
    head_dim_index: int

    seq_len: int
    num_rerotations: int
    last_update_changed_frequencies: bool
    attention_factor: float

    def __init__(
        self,
        config: RopeConfig,
        interleaved: bool = False,
        layout: str = "bhsd",
        mode: str = "exact",
        xpos_centre: int = 0,
    ) -> None:
        super().__init__()
        if not isinstance(config, RopeConfig):
            raise _option_error("config", "must be a posenc.rope_config.RopeConfig", type(config).__name__)
        if layout not in ("bhsd", "bshd"):
            raise _option_error("layout", 'must be "bhsd" or "bshd"', f'"{layout}"')
        if mode not in KV_CACHE_MODES:
            raise _option_error("mode", 'must be "exact" or "static"', f'"{mode}"')
        rotary_dim = 2 * config.num_frequencies
        if rotary_dim > config.head_dim:
            raise _option_error(
                "config", f"must give 2 * ceil(rotary_dim / 2) <= head_dim ({config.head_dim})", rotary_dim
            )
        self.config = config
        self.rope_type = config.rope_type
        self.rope_theta = float(config.rope_theta)
        self.head_dim = int(config.head_dim)
        self.partial_rotary_factor = float(config.partial_rotary_factor)
        self.factor = None if config.factor is None else float(config.factor)
        self.max_position_embeddings = config.max_position_embeddings
        self.original_max_position_embeddings = config.original_max_position_embeddings
        self.attention_factor_override = (
            None if config.attention_factor is None else float(config.attention_factor)
        )
        self.beta_fast = None if config.beta_fast is None else float(config.beta_fast)
        self.beta_slow = None if config.beta_slow is None else float(config.beta_slow)
        self.mscale = None if config.mscale is None else float(config.mscale)
        self.mscale_all_dim = None if config.mscale_all_dim is None else float(config.mscale_all_dim)
        self.truncate = bool(config.truncate)
        self.low_freq_factor = None if config.low_freq_factor is None else float(config.low_freq_factor)
        self.high_freq_factor = None if config.high_freq_factor is None else float(config.high_freq_factor)
        self.short_factor = None if config.short_factor is None else [float(x) for x in config.short_factor]
        self.long_factor = None if config.long_factor is None else [float(x) for x in config.long_factor]
        self.xpos_gamma = float(config.xpos_gamma)
        self.xpos_scale_base = float(config.xpos_scale_base)
        self.xpos_centre = int(xpos_centre)
        self.use_xpos = config.rope_type == "xpos"
        self.length_dependent = config.rope_type in _LENGTH_DEPENDENT

        self.rotary_dim = rotary_dim
        self.interleaved = interleaved
        self.layout = layout
        self.mode = mode
        self.seq_dim = 2 if layout == "bhsd" else 1
        self.head_dim_index = 1 if layout == "bhsd" else 2

        # xPos zeta (float32, moved to the keys' device on use); empty when not xPos.
        self.xpos_zeta: Tensor = config.xpos_zeta() if self.use_xpos else torch.empty(0)
        self.k_raw: Tensor = torch.empty(0)
        self.k_rot: Tensor = torch.empty(0)
        self.v: Tensor = torch.empty(0)
        self.inv_freq: Tensor = torch.empty(0)
        self.attention_factor = 1.0
        self.seq_len = 0
        self.num_rerotations = 0
        self.last_update_changed_frequencies = False

    def reset(self) -> None:
        """Empties the cache (the configuration stays)."""
        self.k_raw = torch.empty(0)
        self.k_rot = torch.empty(0)
        self.v = torch.empty(0)
        self.inv_freq = torch.empty(0)
        self.attention_factor = 1.0
        self.seq_len = 0
        self.num_rerotations = 0
        self.last_update_changed_frequencies = False

    def frequencies(self, total_len: int, device: torch.device) -> Tuple[Tensor, float]:
        """``(inv_freq, attention_factor)`` for total length ``total_len``: the config's
        ``compute(total_len)`` (float32 ``inv_freq`` on ``device``)."""
        return rope_scaling_inv_freq(
            self.rope_type,
            self.rope_theta,
            self.head_dim,
            self.partial_rotary_factor,
            factor=self.factor,
            max_position_embeddings=self.max_position_embeddings,
            original_max_position_embeddings=self.original_max_position_embeddings,
            attention_factor=self.attention_factor_override,
            beta_fast=self.beta_fast,
            beta_slow=self.beta_slow,
            mscale=self.mscale,
            mscale_all_dim=self.mscale_all_dim,
            truncate=self.truncate,
            low_freq_factor=self.low_freq_factor,
            high_freq_factor=self.high_freq_factor,
            short_factor=self.short_factor,
            long_factor=self.long_factor,
            xpos_gamma=self.xpos_gamma,
            xpos_scale_base=self.xpos_scale_base,
            seq_len=total_len,
            device=device,
        )

    def _rotate(self, x: Tensor, offset: int, inv_freq: Tensor, attention_factor: float, inverse: bool) -> Tensor:
        zeta: Optional[Tensor] = None
        if self.use_xpos:
            zeta = self.xpos_zeta.to(x.device)
        return ops.rope(
            x,
            None,
            inv_freq,
            offset,
            self.rotary_dim,
            self.interleaved,
            self.layout,
            None,
            attention_factor,
            zeta,
            self.xpos_scale_base,
            inverse,
            self.xpos_centre,
        )

    def _check_input(self, x: Tensor, arg: str) -> None:
        if x.dim() != 4:
            raise RuntimeError(
                f"posenc.RopeKVCache: argument '{arg}' must be 4-D ({self.layout}), but got "
                f"{x.dim()}-D shape {list(x.shape)}"
            )
        if not x.is_floating_point():
            raise RuntimeError(
                f"posenc.RopeKVCache: argument '{arg}' must be a floating point tensor, but got {x.dtype}"
            )

    def _check_like_cache(self, x: Tensor, arg: str, what: str, ref: Tensor) -> None:
        if x.dtype != ref.dtype:
            raise RuntimeError(
                f"posenc.RopeKVCache: argument '{arg}' must have the {what} dtype ({ref.dtype}), "
                f"but got {x.dtype}"
            )
        if x.device != ref.device:
            raise RuntimeError(
                f"posenc.RopeKVCache: argument '{arg}' must be on the {what} device ({ref.device}), "
                f"but got {x.device}"
            )
        if x.size(0) != ref.size(0):
            raise RuntimeError(
                f"posenc.RopeKVCache: argument '{arg}' must have the {what} batch size "
                f"({ref.size(0)}), but got shape {list(x.shape)}"
            )

    def update(self, k_new: Tensor, v_new: Tensor) -> Tuple[Tensor, Tensor]:
        """Appends ``S`` un-rotated keys and values; returns ``(k_rot_all, v_all)`` for all
        ``L = seq_len`` cached tokens, keys rotated at positions ``0..L-1`` ("exact": all with
        the frequencies for ``L``; "static": each with those of the step it arrived at)."""
        self._check_input(k_new, "k_new")
        self._check_input(v_new, "v_new")
        if k_new.size(3) != self.head_dim:
            raise RuntimeError(
                f"posenc.RopeKVCache: argument 'k_new' must have last dimension head_dim "
                f"({self.head_dim}), but got shape {list(k_new.shape)}"
            )
        sd = self.seq_dim
        hd = self.head_dim_index
        if (
            v_new.size(0) != k_new.size(0)
            or v_new.size(sd) != k_new.size(sd)
            or v_new.size(hd) != k_new.size(hd)
        ):
            raise RuntimeError(
                f"posenc.RopeKVCache: argument 'v_new' must match k_new's batch, heads and length "
                f"({list(k_new.shape)[:3]} in {self.layout}), but got shape {list(v_new.shape)}"
            )
        self._check_like_cache(v_new, "v_new", "k_new's", k_new)
        if self.seq_len > 0:
            self._check_like_cache(k_new, "k_new", "cached keys'", self.k_rot)
            if k_new.size(hd) != self.k_rot.size(hd):
                raise RuntimeError(
                    f"posenc.RopeKVCache: argument 'k_new' must have the cached number of key heads "
                    f"({self.k_rot.size(hd)}), but got shape {list(k_new.shape)}"
                )
            if v_new.size(3) != self.v.size(3):
                raise RuntimeError(
                    f"posenc.RopeKVCache: argument 'v_new' must have the cached value dimension "
                    f"({self.v.size(3)}), but got shape {list(v_new.shape)}"
                )

        old_len = self.seq_len
        total = old_len + k_new.size(sd)
        if self.length_dependent or self.inv_freq.numel() == 0 or self.inv_freq.device != k_new.device:
            inv_freq, factor = self.frequencies(total, k_new.device)
        else:
            inv_freq, factor = self.inv_freq, self.attention_factor
        changed = old_len > 0 and (
            factor != self.attention_factor or not torch.equal(inv_freq, self.inv_freq)
        )

        if self.mode == "exact":
            k_raw = k_new.clone(memory_format=torch.contiguous_format) if old_len == 0 else torch.cat([self.k_raw, k_new], sd)
            if changed:
                k_rot = self._rotate(k_raw, 0, inv_freq, factor, True)
                self.num_rerotations += 1
            else:
                k_rot_new = self._rotate(k_new, old_len, inv_freq, factor, True)
                k_rot = k_rot_new if old_len == 0 else torch.cat([self.k_rot, k_rot_new], sd)
            self.k_raw = k_raw
        else:
            k_rot_new = self._rotate(k_new, old_len, inv_freq, factor, True)
            k_rot = k_rot_new if old_len == 0 else torch.cat([self.k_rot, k_rot_new], sd)
        v = v_new.clone(memory_format=torch.contiguous_format) if old_len == 0 else torch.cat([self.v, v_new], sd)

        self.k_rot = k_rot
        self.v = v
        self.inv_freq = inv_freq
        self.attention_factor = factor
        self.seq_len = total
        self.last_update_changed_frequencies = changed
        return k_rot, v

    def rotate_queries(self, q_new: Tensor) -> Tensor:
        """Rotates the ``S`` newest queries, at positions ``seq_len - S .. seq_len - 1``, with
        the frequencies for the current total length (call after :meth:`update`)."""
        self._check_input(q_new, "q_new")
        if self.seq_len == 0:
            raise RuntimeError(
                "posenc.RopeKVCache: argument 'q_new' must come after update() (the queries' "
                "positions end at the cached length), but got an empty cache"
            )
        if q_new.size(3) != self.head_dim:
            raise RuntimeError(
                f"posenc.RopeKVCache: argument 'q_new' must have last dimension head_dim "
                f"({self.head_dim}), but got shape {list(q_new.shape)}"
            )
        self._check_like_cache(q_new, "q_new", "cached keys'", self.k_rot)
        hd = self.head_dim_index
        kv_heads = self.k_rot.size(hd)
        # With 0 key heads only 0 query heads are a multiple (and `% 0` raises ZeroDivisionError).
        q_heads = q_new.size(hd)
        if (q_heads % kv_heads != 0) if kv_heads > 0 else (q_heads != 0):
            raise RuntimeError(
                f"posenc.RopeKVCache: argument 'q_new' must have a multiple of the key heads "
                f"({kv_heads}) as heads, but got shape {list(q_new.shape)}"
            )
        s = q_new.size(self.seq_dim)
        if s > self.seq_len:
            raise RuntimeError(
                f"posenc.RopeKVCache: argument 'q_new' must have at most seq_len ({self.seq_len}) "
                f"tokens, but got shape {list(q_new.shape)}"
            )
        return self._rotate(q_new, self.seq_len - s, self.inv_freq, self.attention_factor, False)

    def forward(self, q_new: Tensor, k_new: Tensor, v_new: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """``update(k_new, v_new)`` then ``rotate_queries(q_new)``: returns
        ``(q_rot, k_rot_all, v_all)``."""
        k_all, v_all = self.update(k_new, v_new)
        return self.rotate_queries(q_new), k_all, v_all

    def extra_repr(self) -> str:
        return (
            f"rope_type={self.rope_type}, head_dim={self.head_dim}, rotary_dim={self.rotary_dim}, "
            f"interleaved={self.interleaved}, layout={self.layout}, mode={self.mode}, "
            f"seq_len={self.seq_len}"
        )
