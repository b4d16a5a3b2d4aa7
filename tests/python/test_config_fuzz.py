"""Untrusted configs: posenc.hf.rope_from_config (the Python reader) and
posenc.hf.rope_config_from_json (the C++ reader through pybind) on config dicts derived from the
fuzz corpus (tests/fuzz/corpus/*.json: Llama, Llama 3, Mistral, Qwen2 YaRN, Phi-3 LongRoPE,
Gemma, Gemma 3 per-layer-type, dynamic NTK, linear, DeepSeek YaRN, GPT-NeoX) with fields
mutated by hypothesis: type swaps, huge / negative / NaN / inf / -0 numbers, numbers as strings,
long and deeply nested lists, deleted keys, moved RoPE dicts.

The only allowed outcomes: a validated RopeConfig whose compute() works, or ValueError /
TypeError / RuntimeError (the op's validation: posenc's documented error for an out-of-range
field) whose message starts with "posenc." and names a field; never another exception type
(KeyError, AttributeError, OverflowError, RecursionError, ZeroDivisionError, ...). Where the
strict C++ reader reads a config, the duck-typed Python reader reads the same fields.

Case counts come from the hypothesis profile (tests/python/conftest.py: ci / full). The C++
fuzz driver (tests/fuzz/fuzz_hf_config.cpp, scripts/sanitize.sh) covers the text level
(truncation, invalid UTF-8, duplicate keys, deep nesting) under ASan + UBSan.
"""
import copy
import dataclasses
import json
import math
import re
import warnings
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import posenc  # noqa: F401
from posenc.hf import rope_config_from_json, rope_from_config
from posenc.rope_config import RopeConfig

CORPUS_DIR = Path(__file__).resolve().parents[1] / "fuzz" / "corpus"
CORPUS = {p.name: json.loads(p.read_text()) for p in sorted(CORPUS_DIR.glob("*.json"))}

# Keys either reader reads (top level and inside the RoPE dict).
TOP_KEYS = [
    "rope_scaling", "rope_parameters", "rope_theta", "rotary_emb_base", "partial_rotary_factor",
    "rotary_pct", "head_dim", "hidden_size", "num_attention_heads", "max_position_embeddings",
    "original_max_position_embeddings", "model_type",
]
ROPE_KEYS = [
    "rope_type", "type", "rope_theta", "partial_rotary_factor", "factor",
    "original_max_position_embeddings", "attention_factor", "beta_fast", "beta_slow", "mscale",
    "mscale_all_dim", "truncate", "low_freq_factor", "high_freq_factor", "short_factor",
    "long_factor", "xpos_gamma", "xpos_scale_base", "mrope_section", "unknown_key",
]
# A message names the field when it names one of these (or the layer type asked for).
FIELD_NAMES = sorted(set(TOP_KEYS + ROPE_KEYS) | {"layer_type", "layer type", "rope_type"}, key=len, reverse=True)
FIELD_RE = re.compile("|".join(re.escape(k) for k in FIELD_NAMES))

TYPE_NAMES = ["default", "linear", "ntk", "dynamic", "yarn", "llama3", "longrope", "xpos", "su",
              "mrope", "Yarn", "LLAMA3", "llama_3", "proportional", "", "2.0"]

numbers = st.one_of(
    st.sampled_from([0, -0.0, 1, -1, 2, 0.5, 1e-300, 5e-324, 1e308, 1e309, -1e309, math.nan,
                     2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64, 2**70, 4096, 131072, 1e19,
                     9.3e18, 4096.0, 4096.5, True, False]),
    st.integers(-(2**66), 2**66),
    st.floats(allow_nan=True, allow_infinity=True),
)
scalars = st.one_of(
    st.none(), st.booleans(), numbers, st.sampled_from(TYPE_NAMES),
    st.sampled_from(["4096", "1e309", "nan", "inf", "-1", "0x10", " 8 ", "phi3"]), st.text(max_size=8),
)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(st.sampled_from(ROPE_KEYS + TOP_KEYS), children, max_size=4)),
    max_leaves=8,
)


class _Deep:
    """Stands for a list or dict nested `depth` levels, built in the test (hypothesis would
    print the real one recursively)."""

    def __init__(self, depth, kind):
        self.depth, self.kind = depth, kind

    def __repr__(self):
        return f"_Deep({self.depth}, {self.kind!r})"

    def build(self):
        v = 1.0
        for _ in range(self.depth):  # without recursion
            v = [v] if self.kind == "list" else {"rope_type": v}
        return v


def _materialize(obj):
    if isinstance(obj, _Deep):
        return obj.build()
    if isinstance(obj, dict):
        return {k: _materialize(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_materialize(v) for v in obj]
    return obj


@st.composite
def values(draw):
    kind = draw(st.sampled_from(["json", "json", "json", "long", "deep", "numlist"]))
    if kind == "json":
        return draw(json_values)
    if kind == "long":
        n = draw(st.sampled_from([0, 1, 47, 48, 49, 64, 1000, 100_000]))
        x = draw(st.one_of(numbers, st.just(1.5)))
        return [x] * n
    if kind == "deep":
        return _Deep(draw(st.sampled_from([2, 40, 1000, 5000, 50_000])), draw(st.sampled_from(["list", "dict"])))
    return draw(st.lists(numbers, max_size=64))


@st.composite
def mutated_configs(draw):
    name = draw(st.sampled_from(sorted(CORPUS)))
    cfg = copy.deepcopy(CORPUS[name])
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["set_top", "set_rope", "delete", "swap", "move", "replace_rope"]))
        rope_key = "rope_scaling" if isinstance(cfg.get("rope_scaling"), dict) else "rope_parameters"
        rope = cfg.get(rope_key)
        if op == "set_top":
            cfg[draw(st.sampled_from(TOP_KEYS))] = draw(values())
        elif op == "set_rope":
            if not isinstance(rope, dict):
                rope = cfg["rope_scaling"] = {}
            target = rope
            if rope and all(isinstance(v, dict) for v in rope.values()) and draw(st.booleans()):
                target = rope[draw(st.sampled_from(sorted(rope)))]  # one layer type's dict
            target[draw(st.sampled_from(ROPE_KEYS))] = draw(values())
        elif op == "delete":
            pool = [k for k in cfg if k in TOP_KEYS]
            if isinstance(rope, dict) and rope and draw(st.booleans()):
                del rope[draw(st.sampled_from(sorted(rope)))]
            elif pool:
                del cfg[draw(st.sampled_from(sorted(pool)))]
        elif op == "swap":  # the same value as another JSON type
            pool = sorted(k for k in cfg if k in TOP_KEYS)
            if pool:
                k = draw(st.sampled_from(pool))
                v = cfg[k]
                cfg[k] = draw(st.sampled_from([None, str(v), [v], {"value": v}, not v if isinstance(v, bool) else True]))
        elif op == "move":  # other RoPE style, per layer type
            if isinstance(rope, dict):
                how = draw(st.sampled_from(["params", "nested", "both"]))
                if how == "params":
                    cfg.pop("rope_scaling", None)
                    cfg["rope_parameters"] = rope
                elif how == "nested":
                    cfg.pop("rope_scaling", None)
                    cfg["rope_parameters"] = {"full_attention": rope, "sliding_attention": draw(st.sampled_from([None, rope]))}
                else:
                    cfg["rope_parameters"] = draw(values())
        else:
            cfg[rope_key] = draw(values())
    layer_type = draw(st.sampled_from([None, None, "full_attention", "sliding_attention", "other"]))
    return cfg, layer_type


def _names_field(msg):
    # a field, or (C++ reader) the text itself: "is not valid JSON ...", "must be a JSON object"
    return FIELD_RE.search(msg) is not None or " JSON" in msg


def _check_error(e, prefix="posenc."):
    msg = str(e)
    assert msg, f"{type(e).__name__} with an empty message"
    assert msg.startswith(prefix), f"{type(e).__name__} not naming posenc: {msg[:300]}"
    assert _names_field(msg), f"{type(e).__name__} not naming a field: {msg[:300]}"


def _read(fn):
    """(result, error) of fn(); an exception other than ValueError/TypeError/RuntimeError fails."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            return fn(), None
        except (ValueError, TypeError, RuntimeError) as e:
            return None, e
        finally:
            for w in caught:
                assert issubclass(w.category, UserWarning), w
                assert str(w.message).startswith("posenc."), str(w.message)


def _json_text(cfg):
    try:
        return json.dumps(cfg)  # NaN / inf as Python writes them (the C++ reader rejects them)
    except (RecursionError, ValueError):
        return None  # deeper than json.dumps goes: the C++ driver covers deep text


@given(mutated_configs())
def test_mutated_configs_read_or_fail_cleanly(case):
    cfg, layer_type = case
    cfg = _materialize(cfg)
    py, py_err = _read(lambda: rope_from_config(cfg, layer_type=layer_type))
    if py_err is not None:
        _check_error(py_err)
    else:
        assert isinstance(py, RopeConfig)
        for seq_len in (None, 0, (py.max_position_embeddings or 4096) + 1):
            inv_freq, attention_factor = py.compute(seq_len)
            assert inv_freq.numel() == py.num_frequencies
            assert math.isfinite(attention_factor) and attention_factor > 0

    text = _json_text(cfg)
    if text is None:
        return
    cc, cc_err = _read(lambda: rope_config_from_json(text, layer_type))
    if cc_err is not None:
        assert isinstance(cc_err, (ValueError, RuntimeError)), cc_err
        _check_error(cc_err)
    else:
        # the strict reader accepts a subset of what the duck-typed one does, with the same fields
        assert py_err is None, (text[:300], py_err)
        assert dataclasses.asdict(cc) == dataclasses.asdict(py), text[:300]


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_corpus_configs_read(name):
    """Every corpus file is a config both readers read (per layer type where it has them)."""
    cfg = CORPUS[name]
    layer_type = "full_attention" if name.startswith("gemma3") else None
    py, py_err = _read(lambda: rope_from_config(cfg, layer_type=layer_type))
    assert py_err is None, py_err
    cc, cc_err = _read(lambda: rope_config_from_json(json.dumps(cfg), layer_type))
    assert cc_err is None, cc_err
    assert dataclasses.asdict(cc) == dataclasses.asdict(py)


# ---- regressions found by the tests above (and by tests/fuzz on the C++ side) ---------------


@pytest.mark.parametrize("hidden", ["4096", [4096], {"v": 4096}, True])
def test_non_number_hidden_size_is_named(hidden):
    """hidden_size // num_attention_heads raised a bare TypeError for a string or list."""
    cfg = {"hidden_size": hidden, "num_attention_heads": 32}
    with pytest.raises(ValueError, match=r"^posenc\.hf\.rope_from_config: 'hidden_size' must be a number, but got "):
        rope_from_config(cfg)
    with pytest.raises(ValueError, match=r"'num_attention_heads' must be a number, but got '32'"):
        rope_from_config({"hidden_size": 4096, "num_attention_heads": "32"})
    # the C++ reader names the same field
    with pytest.raises(ValueError, match=r"'hidden_size' must be a number"):
        rope_config_from_json(json.dumps(cfg))


def test_deeply_nested_values_in_messages():
    """A value nested past Python's recursion limit made the error message's repr() raise
    RecursionError; it is now printed with "..." below 32 levels."""
    deep = _Deep(5000, "dict").build()
    with pytest.raises(ValueError, match=r"rope_type must be a string, but got \{'rope_type': .*\.\.\."):
        rope_from_config({"head_dim": 64, "rope_scaling": {"rope_type": deep}})
    with pytest.raises(RuntimeError, match=r"argument 'factor' must be a number, but got list \[\[\[.*\.\.\."):
        rope_from_config({"head_dim": 64, "rope_scaling": {"rope_type": "linear", "factor": _Deep(5000, "list").build()}})


def test_huge_head_dim_is_refused_by_name():
    """head_dim 2**40 asked the allocator for a 2**39-entry table (C++ fuzz finding)."""
    with pytest.raises(RuntimeError, match=r"argument 'head_dim' must be <= 1048576 \(2\^20\), but got 1099511627776"):
        rope_from_config({"head_dim": 2**40})
    assert rope_from_config({"head_dim": 2**20}).num_frequencies == 2**19
