"""Hugging Face adapters: read a transformers config into a :class:`posenc.rope_config.RopeConfig`.

``rope_from_config(config)`` accepts a ``transformers.PretrainedConfig`` or the plain dict of
a ``config.json``, in both RoPE styles:

* older: ``"rope_scaling": {"type" | "rope_type": ..., "factor": ..., ...}`` next to a
  top-level ``"rope_theta"`` (and ``"partial_rotary_factor"``);
* newer (transformers >= 5): ``"rope_parameters": {"rope_type": ..., "rope_theta": ...,
  "partial_rotary_factor": ..., ...}``, possibly nested per layer type
  (``{"full_attention": {...}, "sliding_attention": {...}}``: pass ``layer_type``).

The fields are resolved as transformers resolves them, so that
``rope_from_config(config).compute()`` equals transformers' ``ROPE_INIT_FUNCTIONS`` (and the
models' default RoPE) bit for bit:

* ``rope_scaling`` wins over ``rope_parameters`` when both are set (as transformers'
  ``convert_rope_params_to_dict``); ``rope_type`` wins over the legacy ``type``; no type is
  ``"default"``.
* ``rope_theta``: the RoPE dict's, else the config's ``rope_theta`` (or GPT-NeoX's
  ``rotary_emb_base``), else 10000. ``partial_rotary_factor``: the dict's, else the config's (or
  GPT-NeoX's ``rotary_pct``), else 1.
* ``head_dim``: ``config.head_dim`` when set, else ``hidden_size // num_attention_heads``.
* ``original_max_position_embeddings`` (yarn, llama3, longrope): a top-level config value wins
  (Phi-3), else the dict's, else ``max_position_embeddings``.
* ``attention_factor`` is read for yarn and longrope only (transformers ignores it elsewhere),
  ``beta_fast``/``beta_slow``/``mscale``/``mscale_all_dim``/``truncate`` for yarn,
  ``low_freq_factor``/``high_freq_factor`` for llama3, ``short_factor``/``long_factor`` for
  longrope, ``factor`` for all but default/xpos. Keys a type does not read, and unknown keys,
  raise a ``UserWarning`` (transformers logs them) and are ignored.
* Aliases: ``"su"`` -> ``"longrope"``; Phi-3's ``"yarn"`` -> ``"longrope"`` (as
  ``Phi3Config``); Qwen2-VL's ``"mrope"`` -> ``"default"`` (``mrope_section`` only splits
  positions, the frequencies are the default ones).

Any other ``rope_type`` (misspelled, other case, or a transformers type posenc does not
implement such as ``"proportional"``) raises ``ValueError`` listing the supported types; it is
never silently treated as ``"default"``.

Swapping posenc's RoPE into a transformers model (Llama family: Llama, Mistral, Qwen2, Phi-3,
GPT-NeoX, ... whose attention calls the modeling module's ``apply_rotary_pos_emb`` with the
``(cos, sin)`` pair of the model-level ``<Model>RotaryEmbedding``):

* :class:`RotaryEmbedding` replaces ``<Model>RotaryEmbedding`` (frequencies from
  :func:`rope_from_config`, including the "dynamic" / "longrope" updates of transformers'
  ``dynamic_rope_update``);
* :func:`apply_rotary_pos_emb` replaces the modeling module's function (the rotation is the
  fused op :func:`posenc.ops.apply_rotary_pos_emb`, or :func:`posenc.ops.rope` with angles
  computed in the kernel for ``fused=True``);
* :func:`use_posenc_rope` swaps both into a model (and restores them).

``rope_config_from_json(text)`` / ``rope_config_from_file(path)`` read a ``config.json`` with
the C++ reader (``posenc::rope_config_from_json``, csrc/posenc/hf_config.h), which applies the
same rules with the same warnings and errors (named ``posenc.rope_config_from_json``); it is
stricter about JSON types (a number given as a string is an error there).
"""
import copy
import difflib
import inspect
import numbers
import os
import sys
import threading
import warnings
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from . import _C, ops
from .nn import _same_but_heads
from .rope_config import ROPE_TYPES, RopeConfig, _float, _type_error, _value_repr

__all__ = [
    "rope_from_config",
    "rope_config_from_json",
    "rope_config_from_file",
    "ROPE_TYPE_KEYS",
    "RotaryEmbedding",
    "RopeAngles",
    "apply_rotary_pos_emb",
    "use_posenc_rope",
    "PosencRopeSwap",
]

#: RoPE dict keys each type reads (besides rope_type/type, rope_theta, partial_rotary_factor).
ROPE_TYPE_KEYS: Dict[str, tuple] = {
    "default": (),
    "linear": ("factor",),
    "ntk": ("factor",),
    "dynamic": ("factor",),
    "yarn": (
        "factor",
        "original_max_position_embeddings",
        "attention_factor",
        "beta_fast",
        "beta_slow",
        "mscale",
        "mscale_all_dim",
        "truncate",
    ),
    "llama3": ("factor", "original_max_position_embeddings", "low_freq_factor", "high_freq_factor"),
    "longrope": (
        "factor",
        "original_max_position_embeddings",
        "attention_factor",
        "short_factor",
        "long_factor",
    ),
    "xpos": ("xpos_gamma", "xpos_scale_base"),
}
_COMMON_KEYS = {"rope_type", "type", "rope_theta", "partial_rotary_factor"}
# Keys transformers knows that carry nothing for the frequencies.
_IGNORED_KEYS = {"mrope_section", "mrope_interleaved"}
_ALL_KEYS = set().union(*ROPE_TYPE_KEYS.values()) | _COMMON_KEYS | _IGNORED_KEYS
_USES_ORIGINAL_LENGTH = ("yarn", "llama3", "longrope")


def _get(config: Any, key: str, default: Any = None) -> Any:
    if isinstance(config, Mapping):
        value = config.get(key, default)
    else:
        value = getattr(config, key, default)
    return default if value is None else value


def _rope_dict(config: Any, layer_type: Optional[str]) -> Dict[str, Any]:
    params = _get(config, "rope_scaling") or _get(config, "rope_parameters") or {}
    if not isinstance(params, Mapping):
        raise ValueError(
            f"posenc.hf.rope_from_config: 'rope_scaling'/'rope_parameters' must be a dict, "
            f"but got {type(params).__name__}: {_value_repr(params)}"
        )
    nested = bool(params) and all(
        isinstance(v, Mapping) or v is None for v in params.values()
    ) and not ({"rope_type", "type"} & set(params))
    if nested:
        if layer_type is None:
            raise ValueError(
                "posenc.hf.rope_from_config: the config has RoPE parameters per layer type "
                f"{sorted(params)}; pass layer_type= one of them"
            )
        if layer_type not in params:
            raise ValueError(
                f"posenc.hf.rope_from_config: layer_type must be one of {sorted(params)}, "
                f"but got {layer_type!r}"
            )
        if params[layer_type] is None:
            raise ValueError(
                f"posenc.hf.rope_from_config: layer type {layer_type!r} has no RoPE (its "
                "parameters are None)"
            )
        params = params[layer_type]
    return dict(params)


def _rope_type(params: Mapping[str, Any], config: Any) -> str:
    name = params.get("rope_type") or params.get("type") or "default"
    if not isinstance(name, str):
        raise ValueError(
            f"posenc.hf.rope_from_config: rope_type must be a string, but got {_value_repr(name)}"
        )
    model_type = _get(config, "model_type")
    if name == "su" or (model_type == "phi3" and name == "yarn"):
        return "longrope"
    if name == "mrope":
        return "default"
    if name not in ROPE_TYPES:
        close = difflib.get_close_matches(name.lower(), ROPE_TYPES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(
            f"posenc.hf.rope_from_config: rope_type must be one of {', '.join(map(repr, ROPE_TYPES))}, "
            f"but got {name!r}{hint}"
        )
    return name


def _head_dim_ratio(hidden: Any, heads: Any) -> Any:
    """hidden_size // num_attention_heads, with a ValueError naming the field (as the C++
    reader's) for a value that is not a number, instead of Python's bare TypeError."""
    for name, value in (("hidden_size", hidden), ("num_attention_heads", heads)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError(
                f"posenc.hf.rope_from_config: '{name}' must be a number, but got {_value_repr(value)}"
            )
    try:
        return hidden // heads
    except OverflowError:  # an int beyond float range // a float
        raise ValueError(
            "posenc.hf.rope_from_config: 'head_dim' must be an integer within int64, but got "
            f"hidden_size // num_attention_heads = {hidden!r} // {heads!r}"
        ) from None


def _head_dim_int(value: Any) -> int:
    # int() as transformers reads it (so "64" works), with the field named when it fails
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        raise _type_error("head_dim", "an integer", value) from None


def rope_from_config(config: Any, layer_type: Optional[str] = None) -> RopeConfig:
    """RoPE configuration of a transformers config (object or ``config.json`` dict).

    See the module docstring for how each field is resolved. ``layer_type`` selects one entry
    of per-layer-type ``rope_parameters`` (required then, ignored otherwise).

    Returns a validated :class:`~posenc.rope_config.RopeConfig`; ``.compute(seq_len, device)``
    gives ``(inv_freq, attention_factor)``. Raises ``ValueError`` for an unknown rope type, a
    missing ``head_dim`` (and ``hidden_size``/``num_attention_heads``) or a malformed RoPE
    dict, and ``RuntimeError`` (from the op, naming the field) for missing or out-of-range
    fields of the type.
    """
    params = _rope_dict(config, layer_type)
    rope_type = _rope_type(params, config)

    used = set(ROPE_TYPE_KEYS[rope_type])
    unknown = sorted(k for k in params if k not in _ALL_KEYS)
    unused = sorted(k for k in params if k in _ALL_KEYS and k not in used | _COMMON_KEYS | _IGNORED_KEYS)
    if unknown:
        warnings.warn(
            f"posenc.hf.rope_from_config: unrecognized keys for rope_type {rope_type!r} "
            f"ignored: {unknown}"
        )
    if unused:
        warnings.warn(
            f"posenc.hf.rope_from_config: keys not used by rope_type {rope_type!r} ignored: {unused}"
        )

    head_dim = _get(config, "head_dim")
    if not head_dim:
        hidden = _get(config, "hidden_size")
        heads = _get(config, "num_attention_heads")
        if not hidden or not heads:
            raise ValueError(
                "posenc.hf.rope_from_config: the config needs head_dim or hidden_size and "
                f"num_attention_heads, but got head_dim={_value_repr(head_dim)}, "
                f"hidden_size={_value_repr(hidden)}, num_attention_heads={_value_repr(heads)}"
            )
        head_dim = _head_dim_ratio(hidden, heads)

    rope_theta = params.get("rope_theta")
    if rope_theta is None:
        rope_theta = _get(config, "rope_theta", _get(config, "rotary_emb_base", 10000.0))
    partial = params.get("partial_rotary_factor")
    if partial is None:
        partial = _get(config, "partial_rotary_factor", _get(config, "rotary_pct", 1.0))
    max_len = _get(config, "max_position_embeddings")

    def field(key: str) -> Any:
        return params.get(key) if key in used else None

    original = None
    if rope_type in _USES_ORIGINAL_LENGTH:
        original = _get(config, "original_max_position_embeddings")
        if original is None:
            original = params.get("original_max_position_embeddings", max_len)

    # transformers: `if config.rope_parameters.get("truncate", True)`, so None is False
    truncate = bool(params.get("truncate", True)) if rope_type == "yarn" else True
    return RopeConfig(
        head_dim=_head_dim_int(head_dim),
        rope_type=rope_type,
        rope_theta=_float("rope_theta", rope_theta),
        partial_rotary_factor=_float("partial_rotary_factor", partial),
        factor=field("factor"),
        max_position_embeddings=max_len,
        original_max_position_embeddings=original,
        attention_factor=field("attention_factor"),
        beta_fast=field("beta_fast"),
        beta_slow=field("beta_slow"),
        mscale=field("mscale"),
        mscale_all_dim=field("mscale_all_dim"),
        truncate=truncate,
        low_freq_factor=field("low_freq_factor"),
        high_freq_factor=field("high_freq_factor"),
        short_factor=field("short_factor"),
        long_factor=field("long_factor"),
        xpos_gamma=_float("xpos_gamma", params.get("xpos_gamma", 0.4)),
        xpos_scale_base=_float("xpos_scale_base", params.get("xpos_scale_base", 512.0)),
    )


def rope_config_from_json(config_json: str, layer_type: Optional[str] = None) -> RopeConfig:
    """RoPE configuration of a transformers ``config.json`` text, read by the C++ reader
    ``posenc::rope_config_from_json`` (the rules of :func:`rope_from_config`).

    Raises ``ValueError`` for text that is not a JSON object, and for everything
    :func:`rope_from_config` raises ``ValueError`` for (same text after the
    ``posenc.rope_config_from_json:`` prefix) or a value of the wrong JSON type;
    ``RuntimeError`` (from the op) for missing or out-of-range fields. Warns (``UserWarning``)
    about ignored keys as :func:`rope_from_config` does.
    """
    return RopeConfig(**_C.rope_config_from_json(config_json, layer_type))


def rope_config_from_file(
    path: Union[str, "os.PathLike[str]"], layer_type: Optional[str] = None
) -> RopeConfig:
    """:func:`rope_config_from_json` on the file ``path`` (C++ ``posenc::rope_config_from_file``).

    A file that cannot be read raises ``RuntimeError`` naming the path and the reason.
    """
    return RopeConfig(**_C.rope_config_from_file(os.fspath(path), layer_type))


# ---- drop-in replacements for transformers' rotary embedding and apply_rotary_pos_emb -------


class RopeAngles(NamedTuple):
    """What :class:`RotaryEmbedding` with ``fused=True`` returns in place of each of ``cos``
    and ``sin``: the inputs of :func:`posenc.ops.rope`, which computes the angles in-kernel.

    ``positions``: int64 ``(B, S)`` (the model's ``position_ids``); ``inv_freq``: float32
    ``(R/2,)``, ``R`` the rotary dimension; ``attention_factor``: the factor transformers
    multiplies cos and sin by (YaRN, LongRoPE); ``dtype``: the dtype transformers would have
    cast cos/sin to (the activations'). Only :func:`apply_rotary_pos_emb` understands it.
    """

    positions: Tensor
    inv_freq: Tensor
    attention_factor: float
    dtype: torch.dtype


class RotaryEmbedding(nn.Module):
    """Drop-in replacement for transformers' model-level rotary embedding
    (``LlamaRotaryEmbedding``, ``Phi3RotaryEmbedding``, ``GPTNeoXRotaryEmbedding``, ...), with
    the frequencies from :func:`rope_from_config` (``RopeConfig.compute``, i.e. the op
    ``posenc.rope_scaling_inv_freq``).

    ``config``: a transformers config (or ``config.json`` dict) with one set of RoPE
    parameters (``layer_type`` picks one of per-layer-type parameters, as
    :func:`rope_from_config`); ``device``: where the frequency buffers live.

    ``forward(x, position_ids) -> (cos, sin)``, exactly as transformers: ``position_ids``
    int64 ``(B, S)``; the angle is the float32 product ``position * inv_freq``, the tables are
    ``cat([angle, angle], -1)`` (half-split pairs), ``cos``/``sin`` of it times
    ``attention_scaling``, cast to ``x.dtype`` (``x`` is only read for its dtype and device);
    shape ``(B, S, R)`` with ``R = 2 * len(inv_freq)`` (``R < head_dim`` with
    ``partial_rotary_factor < 1``). With ``fused=True`` it returns ``(a, a)`` with
    ``a = RopeAngles(position_ids, inv_freq, attention_scaling, x.dtype)`` instead, and
    :func:`apply_rotary_pos_emb` rotates with :func:`posenc.ops.rope` (angles in-kernel, the
    same float32 product; cos/sin in fp32, no table in ``x``'s dtype: equal to the table path
    in fp32, closer to fp32 math in fp16/bf16).

    Frequency updates, as transformers' ``dynamic_rope_update`` (``seq_len`` is
    ``max(position_ids) + 1``, so a KV-cache decode step sees the total length):

    * ``"dynamic"``: when ``seq_len`` exceeds the longest length seen so far
      (``max_seq_len_cached``, initially ``max_position_embeddings``), the frequencies are
      recomputed for ``seq_len`` and ``max_seq_len_cached = seq_len``; when ``seq_len`` drops
      below ``max_position_embeddings`` after a growth, the original frequencies come back.
      (transformers computes the grown base from a tensor ``seq_len``, in float32; posenc in
      double: the frequencies differ by ~1e-6 relative.)
    * ``"longrope"``: the ``long_factor`` frequencies when
      ``seq_len > original_max_position_embeddings``, else the ``short_factor`` ones;
      ``attention_scaling`` does not change.

    Buffers ``inv_freq`` (current) and ``original_inv_freq`` are float32 and non-persistent,
    as transformers'; ``attention_scaling`` is a float. Casting the module
    (``.to(torch.bfloat16)``) keeps the frequencies in float32.
    """

    inv_freq: Tensor
    original_inv_freq: Tensor

    def __init__(
        self,
        config: Any,
        device: Optional[Union[str, torch.device]] = None,
        layer_type: Optional[str] = None,
        fused: bool = False,
    ) -> None:
        super().__init__()
        self.config = config
        self.rope = rope_from_config(config, layer_type)
        self.rope_type = self.rope.rope_type
        self.fused = bool(fused)
        max_len = _get(config, "max_position_embeddings")
        if self.rope_type == "dynamic" and not max_len:
            raise ValueError(
                "posenc.hf.RotaryEmbedding: rope_type 'dynamic' needs max_position_embeddings, "
                f"but got {max_len!r}"
            )
        self.max_seq_len_cached = max_len
        self.original_max_seq_len = max_len
        inv_freq, self.attention_scaling = self.rope.compute(device=device)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.register_buffer("original_inv_freq", inv_freq.clone(), persistent=False)
        self._long_inv_freq: Optional[Tensor] = None

    def _apply(self, fn, recurse=True):  # type: ignore[override]
        # Follow device moves only: a dtype cast must not round the float32 frequencies.
        saved = dict(self._buffers)
        super()._apply(fn, recurse)
        for name, buf in saved.items():
            if buf is not None:
                self._buffers[name] = buf.to(self._buffers[name].device)
        return self

    def grow(self, seq_len: int) -> None:
        """"dynamic": recompute the frequencies for total length ``seq_len`` (what ``forward``
        does when ``seq_len`` exceeds ``max_seq_len_cached``)."""
        inv_freq, self.attention_scaling = self.rope.compute(
            seq_len=int(seq_len), device=self.inv_freq.device
        )
        self.inv_freq = inv_freq
        self.max_seq_len_cached = int(seq_len)

    def _update(self, position_ids: Tensor) -> None:
        if self.rope_type == "dynamic":
            seq_len = int(position_ids.max()) + 1
            cached = self.max_seq_len_cached
            if seq_len > cached:
                self.grow(seq_len)
            if seq_len < self.original_max_seq_len and cached > self.original_max_seq_len:
                self.inv_freq = self.original_inv_freq
                self.max_seq_len_cached = self.original_max_seq_len
        elif self.rope_type == "longrope":
            original = self.rope.original_max_position_embeddings
            if self._long_inv_freq is None or self._long_inv_freq.device != self.inv_freq.device:
                self._long_inv_freq = self.rope.compute(
                    seq_len=original + 1, device=self.inv_freq.device
                )[0]
            # no host sync (as transformers): one table for the whole batch
            seq_len = position_ids.max() + 1
            self.inv_freq.copy_(
                torch.where(seq_len > original, self._long_inv_freq, self.original_inv_freq)
            )

    def forward(
        self, x: Tensor, position_ids: Tensor
    ) -> Union[Tuple[Tensor, Tensor], Tuple[RopeAngles, RopeAngles]]:
        self._update(position_ids)
        inv_freq = self.inv_freq.to(device=x.device, dtype=torch.float32)
        if self.fused:
            angles = RopeAngles(position_ids, inv_freq, float(self.attention_scaling), x.dtype)
            return angles, angles
        # transformers' rounding: fp32 angle, then cos/sin, then the factor, then x's dtype
        freqs = position_ids[..., None].float() * inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        cos = emb.cos() * self.attention_scaling
        sin = emb.sin() * self.attention_scaling
        return cos.to(dtype=x.dtype), sin.to(dtype=x.dtype)

    def extra_repr(self) -> str:
        return (
            f"rope_type={self.rope_type!r}, rotary_dim={self.rope.rotary_dim}, "
            f"attention_scaling={self.attention_scaling}, fused={self.fused}"
        )


def _layout(unsqueeze_dim: int, q: Tensor) -> str:
    # transformers unsqueezes the (B, S, R) tables at the heads dim of q/k
    dim = unsqueeze_dim + q.dim() if unsqueeze_dim < 0 else unsqueeze_dim
    if q.dim() == 4 and dim == 1:
        return "bhsd"
    if q.dim() == 4 and dim == 2:
        return "bshd"
    raise ValueError(
        "posenc.hf.apply_rotary_pos_emb: argument 'unsqueeze_dim' must be 1 (q/k of shape "
        "(B, H, S, D)) or 2 ((B, S, H, D)), but got "
        f"{unsqueeze_dim} with q of shape {list(q.shape)}"
    )


def _rotate_tables(x: Tensor, cos: Tensor, sin: Tensor, layout: str) -> Tensor:
    # (1, S, R) tables broadcast over the batch: pass them as (S, R)
    if cos.dim() == 3 and cos.size(0) == 1 and x.size(0) != 1:
        cos, sin = cos[0], sin[0]
    return ops.apply_rotary_pos_emb(x, cos, sin, False, layout)


def _rotate_fused(x: Tensor, a: RopeAngles, layout: str) -> Tensor:
    positions = a.positions
    if positions.dim() == 2 and positions.size(0) == 1 and x.size(0) != 1:
        positions = positions[0]
    out = ops.rope(
        x, positions, a.inv_freq, layout=layout, attention_factor=a.attention_factor
    )
    return out.to(a.dtype) if x.dtype != a.dtype else out


def _rotate_fused_qk(q: Tensor, k: Tensor, a: RopeAngles, layout: str) -> Tuple[Tensor, Tensor]:
    """Both rotations of :func:`_rotate_fused` in one op (shared cos/sin)."""
    positions = a.positions
    if positions.dim() == 2 and positions.size(0) == 1 and q.size(0) != 1:
        positions = positions[0]
    q_out, k_out = ops.rope_qk(
        q, k, positions, a.inv_freq, layout=layout, attention_factor=a.attention_factor
    )
    if q.dtype != a.dtype:
        q_out, k_out = q_out.to(a.dtype), k_out.to(a.dtype)
    return q_out, k_out


def apply_rotary_pos_emb(
    q: Tensor,
    k: Tensor,
    cos: Union[Tensor, RopeAngles],
    sin: Union[Tensor, RopeAngles],
    position_ids: Optional[Tensor] = None,
    unsqueeze_dim: int = 1,
) -> Tuple[Tensor, Tensor]:
    """Drop-in replacement for transformers' ``apply_rotary_pos_emb`` (Llama, Mistral, Qwen2,
    Phi-3, GPT-NeoX, ...): ``(q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin)``
    on the first ``R = cos.shape[-1]`` dims, the rest passing through (Phi-3 / GPT-NeoX
    partial rotary), through the fused op :func:`posenc.ops.apply_rotary_pos_emb`
    (half-split pairs).

    ``q``: ``(B, H_q, S, D)``, ``k``: ``(B, H_kv, S, D)`` for ``unsqueeze_dim=1`` (transformers'
    default), or ``(B, S, H, D)`` for ``unsqueeze_dim=2``; any strides. ``cos``/``sin``:
    ``(B, S, R)`` or ``(1, S, R)`` (broadcast over the batch), as the model's rotary embedding
    returns them, in ``q``'s dtype and device — or, from :class:`RotaryEmbedding` with
    ``fused=True``, :class:`RopeAngles`, in which case the rotation is
    :func:`posenc.ops.rope` with the angles computed in the kernel and the attention factor
    folded in. ``position_ids`` is accepted for the older transformers signature and ignored
    (as there). Returns new contiguous ``(q_embed, k_embed)`` of ``q``'s / ``k``'s shape and
    dtype; gradients flow to ``q``, ``k`` (and the tables).

    Raises ``ValueError`` for an ``unsqueeze_dim`` other than 1 or 2 (for 4-D ``q``), and the
    ops' ``RuntimeError`` for mismatched shapes, dtypes or devices.
    """
    layout = _layout(unsqueeze_dim, q)
    if isinstance(cos, RopeAngles):
        if _same_but_heads(q, k, layout):
            return _rotate_fused_qk(q, k, cos, layout)
        return _rotate_fused(q, cos, layout), _rotate_fused(k, cos, layout)
    return _rotate_tables(q, cos, sin, layout), _rotate_tables(k, cos, sin, layout)


# ---- swapping into a model ------------------------------------------------------------------

# modeling module -> (its own apply_rotary_pos_emb, number of active swaps)
_PATCHED: Dict[Any, List[Any]] = {}
_PATCH_LOCK = threading.Lock()


def _modeling_module(model: nn.Module):
    name = type(model).__module__
    module = sys.modules.get(name)
    if not name.startswith("transformers.models.") or module is None:
        raise TypeError(
            "posenc.hf.use_posenc_rope: argument 'model' must be a transformers model (a class "
            f"from transformers.models.*), but got {type(model).__module__}.{type(model).__name__}"
        )
    if not callable(getattr(module, "apply_rotary_pos_emb", None)):
        raise TypeError(
            f"posenc.hf.use_posenc_rope: model {type(model).__name__} is not supported: its "
            f"modeling module {name} has no apply_rotary_pos_emb (not a RoPE model of the Llama "
            "family)"
        )
    return module


def _rotary_modules(model: nn.Module, module) -> List[Tuple[nn.Module, str, nn.Module]]:
    """(parent, attribute, rotary embedding) for every rotary embedding of the modeling module."""
    found = []
    for parent in model.modules():
        for attr, child in parent.named_children():
            cls = type(child)
            if cls.__module__ == module.__name__ and cls.__name__.endswith("RotaryEmbedding"):
                found.append((parent, attr, child))
    if not found:
        raise TypeError(
            f"posenc.hf.use_posenc_rope: model {type(model).__name__} is not supported: no "
            f"*RotaryEmbedding module from {module.__name__} found in it"
        )
    for _, attr, emb in found:
        params = list(inspect.signature(emb.forward).parameters)
        if params[:2] != ["x", "position_ids"] or len(params) != 2:
            raise TypeError(
                f"posenc.hf.use_posenc_rope: model {type(model).__name__} is not supported: its "
                f"{type(emb).__name__}.forward takes {params}, not (x, position_ids) (per-layer-"
                "type or multimodal RoPE)"
            )
    return found


def _check_same_rotation(model_name: str, module, ours: RotaryEmbedding, theirs: nn.Module,
                         head_dim: int) -> None:
    """Probe: the model's rotary embedding and apply_rotary_pos_emb equal ours on a few
    positions (catches interleaved or otherwise different RoPE variants)."""
    g = torch.Generator().manual_seed(0)
    device = ours.inv_freq.device
    x = torch.randn(2, 3, 5, head_dim, generator=g).to(device)
    k = torch.randn(2, 1, 5, head_dim, generator=g).to(device)
    pos = torch.tensor([[0, 1, 2, 7, 3], [4, 5, 6, 1, 0]], device=device)
    # copies: never change the state of the model's own (dynamic) module
    theirs = copy.deepcopy(theirs)
    probe = copy.deepcopy(ours)
    probe.fused = False
    try:
        cos_t, sin_t = theirs(x, pos)
        q_t, k_t = module.apply_rotary_pos_emb(x, k, cos_t, sin_t)
    except Exception as e:  # a signature or shape convention we do not know
        raise TypeError(
            f"posenc.hf.use_posenc_rope: model {model_name} is not supported: probing its "
            f"rotary embedding / apply_rotary_pos_emb failed: {e}"
        ) from e
    cos_o, sin_o = probe(x, pos)
    q_o, k_o = apply_rotary_pos_emb(x, k, cos_o, sin_o)
    ok = (
        isinstance(cos_t, Tensor)
        and cos_t.shape == cos_o.shape
        and bool(torch.allclose(cos_t, cos_o, rtol=0, atol=1e-6))
        and bool(torch.allclose(sin_t, sin_o, rtol=0, atol=1e-6))
        and q_t.shape == q_o.shape
        and bool(torch.allclose(q_t, q_o, rtol=0, atol=1e-5))
        and bool(torch.allclose(k_t, k_o, rtol=0, atol=1e-5))
    )
    if not ok:
        raise TypeError(
            f"posenc.hf.use_posenc_rope: model {model_name} is not supported: its rotary "
            f"embedding or {module.__name__}.apply_rotary_pos_emb is not the half-split RoPE "
            "of rope_from_config(config) (different variant)"
        )


class PosencRopeSwap:
    """posenc's RoPE swapped into a model; returned by :func:`use_posenc_rope`.

    ``rotary_embs``: the installed :class:`RotaryEmbedding` modules (usually one);
    ``originals``: the modules they replaced. :meth:`restore` (or leaving the ``with`` block)
    puts the model's own modules and ``apply_rotary_pos_emb`` back; idempotent.
    """

    def __init__(self, model: nn.Module, fused: bool = False, check: bool = True) -> None:
        module = _modeling_module(model)
        found = _rotary_modules(model, module)
        self.model = model
        self.module = module
        self.rotary_embs: List[RotaryEmbedding] = []
        self.originals: List[nn.Module] = []
        self._slots: List[Tuple[nn.Module, str]] = []
        for parent, attr, theirs in found:
            config = getattr(theirs, "config", None)
            if config is None:
                config = model.config
            device = theirs.inv_freq.device if isinstance(
                getattr(theirs, "inv_freq", None), Tensor) else None
            ours = RotaryEmbedding(config, device=device, fused=fused)
            if check:
                head_dim = getattr(config, "head_dim", None) or (
                    config.hidden_size // config.num_attention_heads)
                _check_same_rotation(type(model).__name__, module, ours, theirs, int(head_dim))
            # carry a grown dynamic state over (transformers keeps the longest length seen)
            cached = getattr(theirs, "max_seq_len_cached", None)
            if ours.rope_type == "dynamic" and cached is not None and cached > ours.max_seq_len_cached:
                ours.grow(int(cached))
            self.rotary_embs.append(ours)
            self.originals.append(theirs)
            self._slots.append((parent, attr))
        for (parent, attr), ours in zip(self._slots, self.rotary_embs):
            setattr(parent, attr, ours)
        with _PATCH_LOCK:
            entry = _PATCHED.get(module)
            if entry is None:
                _PATCHED[module] = [module.apply_rotary_pos_emb, 1]
                module.apply_rotary_pos_emb = apply_rotary_pos_emb
            else:
                entry[1] += 1
        self.active = True

    def restore(self) -> None:
        if not self.active:
            return
        for (parent, attr), theirs in zip(self._slots, self.originals):
            setattr(parent, attr, theirs)
        with _PATCH_LOCK:
            entry = _PATCHED[self.module]
            entry[1] -= 1
            if entry[1] == 0:
                self.module.apply_rotary_pos_emb = entry[0]
                del _PATCHED[self.module]
        self.active = False

    def __enter__(self) -> "PosencRopeSwap":
        return self

    def __exit__(self, *exc) -> None:
        self.restore()


def use_posenc_rope(model: nn.Module, fused: bool = False, check: bool = True) -> PosencRopeSwap:
    """Swap posenc's RoPE into a transformers model of the Llama family; usable as a context
    manager (``with use_posenc_rope(model): ...`` restores on exit) or a call (keep the
    returned :class:`PosencRopeSwap` and call ``.restore()``).

    The model's modeling module is ``sys.modules[type(model).__module__]`` (e.g.
    ``transformers.models.llama.modeling_llama``). Every ``*RotaryEmbedding`` submodule of that
    module (``model.model.rotary_emb``) is replaced by a :class:`RotaryEmbedding` of its config
    (on its device; a grown "dynamic" length is carried over), and the module's global
    ``apply_rotary_pos_emb``, which the attention layers call, by
    :func:`apply_rotary_pos_emb`. The global is process-wide: other models of the same family
    also use posenc's rotation (with their own tables: the same numbers) until the last swap
    of that module is restored. ``fused=True`` rotates with :func:`posenc.ops.rope` (angles
    in-kernel) instead of cos/sin tables.

    ``check=True`` first probes the model's own rotary embedding and ``apply_rotary_pos_emb``
    on a few positions against posenc's (copies of the modules: the model's state is not
    touched) and refuses a model whose RoPE differs (interleaved GPT-J style, multimodal
    sections, ...).

    Raises ``TypeError`` for a model that is not a transformers model, whose modeling module
    has no ``apply_rotary_pos_emb`` or no ``*RotaryEmbedding`` module with
    ``forward(x, position_ids)``, or whose RoPE the probe finds different; ``ValueError`` (from
    :func:`rope_from_config`) for a RoPE configuration posenc does not support.
    """
    return PosencRopeSwap(model, fused=fused, check=check)
