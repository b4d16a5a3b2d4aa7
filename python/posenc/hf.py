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

``rope_config_from_json(text)`` / ``rope_config_from_file(path)`` read a ``config.json`` with
the C++ reader (``posenc::rope_config_from_json``, csrc/posenc/hf_config.h), which applies the
same rules with the same warnings and errors (named ``posenc.rope_config_from_json``); it is
stricter about JSON types (a number given as a string is an error there).
"""
import difflib
import os
import warnings
from typing import Any, Dict, Mapping, Optional, Union

from . import _C
from .rope_config import ROPE_TYPES, RopeConfig

__all__ = ["rope_from_config", "rope_config_from_json", "rope_config_from_file", "ROPE_TYPE_KEYS"]

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
            f"but got {type(params).__name__}: {params!r}"
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
            f"posenc.hf.rope_from_config: rope_type must be a string, but got {name!r}"
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
                f"num_attention_heads, but got head_dim={head_dim!r}, hidden_size={hidden!r}, "
                f"num_attention_heads={heads!r}"
            )
        head_dim = hidden // heads

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
        head_dim=int(head_dim),
        rope_type=rope_type,
        rope_theta=float(rope_theta),
        partial_rotary_factor=float(partial),
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
        xpos_gamma=float(params.get("xpos_gamma", 0.4)),
        xpos_scale_base=float(params.get("xpos_scale_base", 512.0)),
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
