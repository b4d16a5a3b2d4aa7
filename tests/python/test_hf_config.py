"""The C++ config.json reader (posenc::rope_config_from_json, bound as
posenc._C.rope_config_from_json and wrapped by posenc.hf.rope_config_from_json) against the
Python reader posenc.hf.rope_from_config: same fields, same compute() results, same warnings and
errors on a broad generated set of configs; and against transformers itself (bit-identical
inv_freq) for configs written by transformers' own config classes.

transformers is a hard requirement of this file (scripts/setup.sh installs it).
"""
import dataclasses
import json
import math
import random
import warnings

import pytest
import torch
import transformers
from transformers import (
    DeepseekV3Config,
    Gemma3TextConfig,
    GPTNeoXConfig,
    LlamaConfig,
    Phi3Config,
    Qwen2Config,
)
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.gemma3.modeling_gemma3 import Gemma3RotaryEmbedding
from transformers.models.gpt_neox.modeling_gpt_neox import GPTNeoXRotaryEmbedding

from posenc import _C
from posenc.hf import ROPE_TYPE_KEYS, rope_config_from_file, rope_config_from_json, rope_from_config
from posenc.rope_config import ROPE_TYPES, RopeConfig

transformers.logging.set_verbosity_error()

PY = "posenc.hf.rope_from_config: "
CPP = "posenc.rope_config_from_json: "


# ---- running both readers -----------------------------------------------------------------


def _run(fn):
    """(result, error, warning messages) of fn(), every warning recorded."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            out, err = fn(), None
        except (ValueError, RuntimeError, TypeError) as e:
            out, err = None, e
    msgs = []
    for w in caught:
        assert issubclass(w.category, UserWarning), w
        msgs.append(str(w.message))
    return out, err, msgs


def _tail(msg, prefix):
    line = str(msg).splitlines()[0]
    if prefix and line.startswith(prefix):
        return line[len(prefix):]
    return line


SEQ_LENS = [None, 0, 1, 2048, 4096, 4097, 8192, 40000, 200000]


def assert_same(cfg, layer_type=None):
    """Both readers agree on cfg: same RopeConfig fields and numbers, or the same error; and the
    same warnings. Returns the C++ reader's RopeConfig (or None)."""
    text = json.dumps(cfg)
    py, py_err, py_warn = _run(lambda: rope_from_config(cfg, layer_type=layer_type))
    cc, cc_err, cc_warn = _run(lambda: rope_config_from_json(text, layer_type))
    assert [_tail(m, CPP) for m in cc_warn] == [_tail(m, PY) for m in py_warn], text
    assert all(m.startswith(CPP) for m in cc_warn), cc_warn
    if py_err is not None or cc_err is not None:
        assert py_err is not None and cc_err is not None, (text, py_err, cc_err)
        assert type(cc_err) is type(py_err), (text, py_err, cc_err)
        if isinstance(py_err, ValueError):
            assert str(cc_err).startswith(CPP) and str(py_err).startswith(PY), (py_err, cc_err)
            assert _tail(cc_err, CPP) == _tail(py_err, PY), text
        else:  # the op's own message, from RopeConfig / RopeScalingConfig validation
            assert _tail(cc_err, None) == _tail(py_err, None), text
        return None
    assert dataclasses.asdict(cc) == dataclasses.asdict(py), text
    for seq_len in SEQ_LENS:
        inv_c, af_c = cc.compute(seq_len)
        inv_p, af_p = py.compute(seq_len)
        assert torch.equal(inv_c, inv_p) and af_c == af_p, (text, seq_len)
    if cc.rope_type == "xpos":
        assert torch.equal(cc.xpos_zeta(), py.xpos_zeta())
    return cc


# ---- a broad generated set ----------------------------------------------------------------

# Valid values of every key a type reads (lists: generated per rotary dimension).
VALUES = {
    "factor": [2.0, 4, 8.0, 16.0, 0.5],
    "original_max_position_embeddings": [2048, 4096, 8192],
    "attention_factor": [1.0, 0.9, 1.25],
    "beta_fast": [32, 16.0, 0],
    "beta_slow": [1, 2.0, 0],
    "mscale": [1.0, 0.707, 0],
    "mscale_all_dim": [1.0, 0.707, 0],
    "truncate": [True, False, None],
    "low_freq_factor": [1.0, 2],
    "high_freq_factor": [4.0, 8],
    "xpos_gamma": [0.4, 0.5],
    "xpos_scale_base": [512.0, 256],
}
TYPE_NAMES = list(ROPE_TYPES) + ["su", "mrope", "phi3-yarn"]


def _lists(rng, n, lo, spread):
    return [round(lo + spread * rng.random(), 6) for _ in range(n)]


def generated_configs(count=500, seed=1234):
    rng = random.Random(seed)
    for _ in range(count):
        name = rng.choice(TYPE_NAMES)
        rope_type = {"su": "longrope", "phi3-yarn": "longrope", "mrope": "default"}.get(name, name)
        cfg = {}
        if name == "phi3-yarn":
            cfg["model_type"], name = "phi3", "yarn"
        elif rng.random() < 0.3:
            cfg["model_type"] = rng.choice(["llama", "qwen2", "gpt_neox"])

        head_dim = rng.choice([64, 128])
        how = rng.choice(["head_dim", "ratio", "zero", "null", "both"])
        if how in ("head_dim", "both"):
            cfg["head_dim"] = head_dim
        if how in ("ratio", "zero", "null", "both"):
            heads = rng.choice([4, 8, 32])
            cfg["hidden_size"] = head_dim * heads + (3 if how == "both" else 0)
            cfg["num_attention_heads"] = heads
            cfg["head_dim"] = {"zero": 0, "null": None}.get(how, cfg.get("head_dim"))
            if cfg["head_dim"] is None and how == "ratio":
                del cfg["head_dim"]

        params = {}
        if name != "default" or rng.random() < 0.5:
            key = rng.choice(["rope_type", "type", "both"])
            if key == "both":  # rope_type wins over the legacy type
                params["type"] = rng.choice(["linear", "dynamic", "nonsense"])
                params["rope_type"] = name
            else:
                params[key] = name
        partial = rng.choice([1.0, 1.0, 0.5, 0.25])
        rot = int(head_dim * partial)
        for key in ROPE_TYPE_KEYS[rope_type]:
            if rng.random() < 0.85:
                if key in ("short_factor", "long_factor"):
                    n = (rot + 1) // 2 if rng.random() < 0.95 else rot
                    params[key] = _lists(rng, n, 1.0, 1.0 if key == "short_factor" else 30.0)
                else:
                    params[key] = rng.choice(VALUES[key])
        if rng.random() < 0.15:
            params["beta_fastt"] = 8.0  # misspelled: warned about, ignored
        if rng.random() < 0.15:  # a key of another type (warned about), or a used one overwritten
            key = rng.choice(["low_freq_factor", "mscale", "short_factor", "factor", "xpos_gamma"])
            params[key] = [1.0] * ((rot + 1) // 2) if key == "short_factor" else 1.0
        if rng.random() < 0.1:
            params["mrope_section"] = [16, 24, 24]
        if rng.random() < 0.1:
            params[rng.choice(["factor", "attention_factor", "beta_slow", "rope_theta"])] = None

        theta = rng.choice([1e4, 5e5, 1e6, 10000])
        where = rng.choice(["dict", "top", "neox", "none"])
        if where == "dict":
            params["rope_theta"] = theta
        elif where == "top":
            cfg["rope_theta"] = theta
        elif where == "neox":
            cfg["rotary_emb_base"] = theta
        where = rng.choice(["dict", "top", "neox", "none"]) if partial != 1.0 else rng.choice(["dict", "none"])
        if where == "dict":
            params["partial_rotary_factor"] = partial
        elif where == "top":
            cfg["partial_rotary_factor"] = partial
        elif where == "neox":
            cfg["rotary_pct"] = partial
        else:
            rot = head_dim  # partial not set: the lists above may now be the wrong length

        if rng.random() < 0.85:
            cfg["max_position_embeddings"] = rng.choice([4096, 32768, 131072])
        if rope_type in ("yarn", "llama3", "longrope") and rng.random() < 0.3:
            cfg["original_max_position_embeddings"] = rng.choice([2048, 4096])  # Phi-3: wins

        layer_type = None
        style = rng.choice(["old", "new", "new", "both", "empty_scaling", "nested"])
        if style == "old":
            cfg["rope_scaling"] = params
        elif style == "new":
            cfg["rope_parameters"] = params
        elif style == "both":  # rope_scaling wins
            cfg["rope_scaling"] = params
            cfg["rope_parameters"] = {"rope_type": "linear", "factor": 3.0, "rope_theta": 77.0}
        elif style == "empty_scaling":
            cfg["rope_scaling"] = rng.choice([{}, None])
            cfg["rope_parameters"] = params
        else:
            cfg["rope_parameters"] = {
                "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
                "full_attention": params,
            }
            layer_type = rng.choice(["full_attention", "full_attention", "sliding_attention"])
        yield cfg, layer_type


GENERATED = list(generated_configs())


def test_generated_configs_agree():
    outcomes = {"ok": 0, "ValueError": 0, "RuntimeError": 0, "warned": 0}
    types = set()
    for cfg, layer_type in GENERATED:
        cc = assert_same(cfg, layer_type)
        if cc is None:
            _, err, _ = _run(lambda: rope_from_config(cfg, layer_type=layer_type))
            outcomes[type(err).__name__] += 1
        else:
            outcomes["ok"] += 1
            types.add(cc.rope_type)
        _, _, warns = _run(lambda: rope_from_config(cfg, layer_type=layer_type))
        outcomes["warned"] += bool(warns)
    # the set exercises every type, valid and invalid configs, and the warnings
    assert types == set(ROPE_TYPES)
    assert outcomes["ok"] > 250 and outcomes["RuntimeError"] > 20 and outcomes["warned"] > 50, outcomes


# ---- edge cases, one by one ---------------------------------------------------------------

BASE = {"head_dim": 64, "max_position_embeddings": 8192}

EDGE = [
    # rope_type resolution: falsy names fall through to type, then to default
    dict(BASE, rope_scaling={"rope_type": "", "type": "linear", "factor": 2.0}),
    dict(BASE, rope_scaling={"rope_type": 0, "type": None, "factor": 2.0}),
    dict(BASE, rope_scaling={"rope_type": False}),
    dict(BASE, rope_scaling={"rope_type": [], "type": "ntk", "factor": 2.0}),
    # not a string
    dict(BASE, rope_scaling={"rope_type": 3}),
    dict(BASE, rope_scaling={"rope_type": 3.5}),
    dict(BASE, rope_scaling={"type": True}),
    dict(BASE, rope_scaling={"rope_type": ["yarn"]}),
    dict(BASE, rope_scaling={"rope_type": {"a": 1, "b": [None, 1e-05, 1e16, 0.1]}}),
    # unknown names, with and without a hint, odd characters in the repr
    *[dict(BASE, rope_scaling={"rope_type": n, "factor": 2.0}) for n in
      ["Yarn", "YARN", "lineer", "LLAMA3", "long_rope", "longrope2", "proportional", "dynamic-ntk",
       "Su", "MROPE", "ya'rn", "ya\"rn", "it's \"x\"", "yarn\n", "tab\there", "back\\slash",
       "\x01ctrl", "\x7f", "d\u00e9fault", "\u00a0yarn", "l" * 300, "x y", "ntK", "xPos", "x"]],
    # RoPE dict not a dict
    dict(BASE, rope_scaling="abc"),
    dict(BASE, rope_scaling=1),
    dict(BASE, rope_scaling=1.5),
    dict(BASE, rope_scaling=True),
    dict(BASE, rope_scaling=[1, "a", None]),
    dict(BASE, rope_parameters=[[1, [2]], {"k": "v"}]),
    # falsy RoPE dicts fall through to rope_parameters
    dict(BASE, rope_scaling=0, rope_parameters={"rope_type": "linear", "factor": 2.0}),
    dict(BASE, rope_scaling=False, rope_parameters={"rope_type": "linear", "factor": 2.0}),
    dict(BASE, rope_scaling="", rope_parameters={"rope_type": "linear", "factor": 2.0}),
    dict(BASE, rope_scaling=[], rope_parameters={"rope_type": "linear", "factor": 2.0}),
    dict(BASE, rope_scaling={}, rope_parameters=None),
    # all-None values look nested (hf.py's rule): layer_type required
    dict(BASE, rope_scaling={"factor": None}),
    # head_dim resolution
    {"rope_theta": 1e4},
    {"head_dim": None, "hidden_size": 0, "num_attention_heads": 8},
    {"head_dim": 0, "hidden_size": 512, "num_attention_heads": 0},
    {"head_dim": 0.0, "hidden_size": 512, "num_attention_heads": 8},
    {"hidden_size": 4096.0, "num_attention_heads": 32},
    {"hidden_size": 1000, "num_attention_heads": 3},
    {"hidden_size": 7, "num_attention_heads": 8},
    {"hidden_size": -512, "num_attention_heads": 7},
    {"head_dim": 64.7},
    {"head_dim": -64},
    {"head_dim": 5},
    # theta / partial fallbacks and range errors
    {"head_dim": 64, "rope_theta": 1.0},
    {"head_dim": 64, "rotary_emb_base": 1e5, "rope_theta": None},
    {"head_dim": 64, "partial_rotary_factor": None, "rotary_pct": 0.5},
    {"head_dim": 64, "partial_rotary_factor": 1.5},
    {"head_dim": 64, "rope_scaling": {"rope_type": "default", "partial_rotary_factor": 0.01}},
    {"head_dim": 64, "partial_rotary_factor": 0.4},
    {"head_dim": 50, "partial_rotary_factor": 0.5, "rope_scaling": {"rope_type": "yarn", "factor": 2.0}},
    # original_max_position_embeddings: top level wins, a null in the dict stays None
    dict(BASE, original_max_position_embeddings=2048,
         rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 1024}),
    dict(BASE, rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": None}),
    dict(BASE, original_max_position_embeddings=None,
         rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0}),
    {"head_dim": 64, "rope_scaling": {"rope_type": "yarn", "original_max_position_embeddings": 1024}},
    # truncate truthiness
    *[dict(BASE, rope_scaling={"rope_type": "yarn", "factor": 4.0, "truncate": t})
      for t in [None, 0, 1, "", "no", [], [0], {}, 0.0, False]],
    # attention_factor: read for yarn and longrope only
    dict(BASE, rope_scaling={"rope_type": "dynamic", "factor": 2.0, "attention_factor": 3.0}),
    dict(BASE, rope_scaling={"rope_type": "yarn", "factor": 2.0, "attention_factor": 3.0}),
    dict(BASE, rope_scaling={"rope_type": "yarn", "factor": 2.0, "attention_factor": 0.0}),
    # xpos fields are read whatever the type
    dict(BASE, rope_scaling={"rope_type": "linear", "factor": 2.0, "xpos_gamma": 0.7}),
    dict(BASE, rope_scaling={"rope_type": "xpos", "xpos_gamma": 0, "xpos_scale_base": 3}),
    # warnings: unknown and unused keys, sorted, non-ASCII and quoted names
    dict(BASE, rope_scaling={"rope_type": "default", "zeta": 1, "alpha": 2, "factor": 2.0,
                             "beta_fast": None, "facteur_\u00e9": 1, "it's": 0, "mrope_section": [1]}),
    # aliases
    dict(BASE, model_type="phi3", rope_scaling={"type": "yarn", "short_factor": [1.0] * 32,
                                                "long_factor": [2.0] * 32}),
    dict(BASE, model_type="phi3", rope_scaling={"type": "su", "short_factor": [1.0] * 32,
                                                "long_factor": [2.0] * 32, "factor": 4}),
    dict(BASE, model_type="phi3", rope_scaling={"type": "linear", "factor": 2.0}),
    dict(BASE, model_type="llama", rope_scaling={"type": "yarn", "short_factor": [1.0] * 32}),
    dict(BASE, rope_scaling={"type": "mrope", "mrope_section": [16, 8, 8], "mrope_interleaved": True}),
    # longrope lists
    dict(BASE, rope_scaling={"rope_type": "longrope", "short_factor": [1.0] * 31, "long_factor": [1.0] * 32}),
    dict(BASE, rope_scaling={"rope_type": "longrope", "short_factor": [1.0] * 32, "long_factor": [1.0] * 31 + [0]}),
    dict(BASE, rope_scaling={"rope_type": "longrope", "short_factor": [1.0] * 32}),
    # missing or invalid required fields (the op's errors)
    dict(BASE, rope_scaling={"rope_type": "linear"}),
    dict(BASE, rope_scaling={"rope_type": "linear", "factor": -1}),
    {"head_dim": 64, "rope_scaling": {"rope_type": "dynamic", "factor": 2.0}},
    dict(BASE, rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0, "high_freq_factor": 1.0}),
    dict(BASE, rope_scaling={"rope_type": "yarn", "factor": 2.0, "beta_fast": 1, "beta_slow": 2}),
    {"head_dim": 64, "max_position_embeddings": 0, "rope_scaling": {"rope_type": "dynamic", "factor": 2.0}},
]


@pytest.mark.parametrize("cfg", EDGE, ids=range(len(EDGE)))
def test_edge_configs_agree(cfg):
    assert_same(cfg)


NESTED = {"head_dim": 256, "max_position_embeddings": 131072, "rope_parameters": {
    "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
    "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
    "it's": None}}


@pytest.mark.parametrize("layer_type", [None, "full_attention", "sliding_attention", "it's", "global", "",
                                        "a\"b'c"])
def test_nested_layer_types_agree(layer_type):
    assert_same(NESTED, layer_type)
    assert_same(dict(BASE, rope_scaling={"rope_type": "linear", "factor": 2.0}), layer_type)  # ignored


def test_messages_are_explicit():
    # spot checks of the texts compared above (so a shared regression cannot pass unnoticed)
    with pytest.raises(ValueError, match=r"^posenc\.rope_config_from_json: rope_type must be one of 'default', "
                       r"'linear', 'ntk', 'dynamic', 'yarn', 'llama3', 'longrope', 'xpos', but got 'Yarn' "
                       r"\(did you mean 'yarn'\?\)$"):
        rope_config_from_json(json.dumps(dict(BASE, rope_scaling={"rope_type": "Yarn"})))
    with pytest.raises(ValueError, match=r"but got 'proportional'$"):
        rope_config_from_json(json.dumps(dict(BASE, rope_scaling={"rope_type": "proportional"})))
    with pytest.warns(UserWarning, match=r"^posenc\.rope_config_from_json: unrecognized keys for rope_type "
                      r"'yarn' ignored: \['beta_fastt'\]$"):
        rc = rope_config_from_json(json.dumps(dict(BASE, rope_scaling={"rope_type": "yarn", "factor": 4.0,
                                                                      "beta_fastt": 8.0})))
    assert rc.beta_fast is None
    with pytest.raises(RuntimeError, match=r"argument 'factor' must be given for rope_type \"linear\", but got None"):
        rope_config_from_json(json.dumps({"head_dim": 64, "rope_scaling": {"type": "linear"}}))


# ---- what only the C++ reader checks: JSON syntax and JSON types --------------------------


@pytest.mark.parametrize(
    "text,match",
    [
        ('{"head_dim": 64,', r"the config is not valid JSON: parse error at line 1, column \d+"),
        ("", "the config is not valid JSON"),
        ('{"head_dim": NaN}', "the config is not valid JSON"),
        ('{"head_dim": 64} trailing', "the config is not valid JSON"),
        ("[1, 2]", r"the config must be a JSON object, but got list: \[1, 2\]"),
        ('"abc"', "the config must be a JSON object, but got str: 'abc'"),
        ("[" * 100000, "the config is not valid JSON"),
        ('{"head_dim": "64"}', r"'head_dim' must be an integer, but got '64'"),
        ('{"head_dim": true}', r"'head_dim' must be an integer, but got True"),
        ('{"head_dim": 1e300}', r"'head_dim' must be an integer within int64, but got 1e\+300"),
        ('{"head_dim": 64, "max_position_embeddings": 4096.0}', r"'max_position_embeddings' must be an integer, but got 4096.0"),
        ('{"head_dim": 64, "max_position_embeddings": 18446744073709551615}', "'max_position_embeddings' must be an integer within int64"),
        ('{"head_dim": 64, "rope_theta": "1e4"}', r"'rope_theta' must be a number, but got '1e4'"),
        ('{"head_dim": 64, "rope_scaling": {"type": "linear", "factor": "2"}}', r"'factor' must be a number, but got '2'"),
        ('{"head_dim": 64, "rope_scaling": {"type": "xpos", "xpos_gamma": null}}', r"'xpos_gamma' must be a number, but got None"),
        ('{"head_dim": 64, "rope_scaling": {"type": "longrope", "short_factor": 1.0}}', r"'short_factor' must be a list of numbers, but got 1.0"),
        ('{"head_dim": 64, "rope_scaling": {"type": "longrope", "short_factor": [1, "2"]}}', r"'short_factor' must be a list of numbers, but got '2' at index 1"),
        ('{"hidden_size": "512", "num_attention_heads": 8}', r"'hidden_size' must be a number, but got '512'"),
    ],
)
def test_cpp_json_errors(text, match):
    with pytest.raises(ValueError, match=r"^posenc\.rope_config_from_json: " + match):
        _C.rope_config_from_json(text)


def test_cpp_dict_and_file(tmp_path):
    cfg = dict(BASE, rope_scaling={"rope_type": "yarn", "factor": 4, "beta_fast": 16})
    d = _C.rope_config_from_json(json.dumps(cfg))
    assert set(d) == {f.name for f in dataclasses.fields(RopeConfig)}
    assert d["rope_type"] == "yarn" and d["factor"] == 4.0 and isinstance(d["factor"], float)
    assert d["short_factor"] is None and d["original_max_position_embeddings"] == 8192
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg, indent=2))
    assert rope_config_from_file(path) == rope_config_from_json(json.dumps(cfg)) == rope_from_config(cfg)
    assert rope_config_from_file(str(path)) == rope_from_config(cfg)
    with pytest.raises(RuntimeError, match=r"posenc\.rope_config_from_file: cannot open '.*missing\.json': "
                       "No such file or directory"):
        rope_config_from_file(tmp_path / "missing.json")
    with pytest.raises(RuntimeError, match="it is a directory"):
        rope_config_from_file(tmp_path)
    (tmp_path / "bad.json").write_text('{\n  "head_dim": 64,\n  "rope_theta": 1e4,,\n}')
    with pytest.raises(ValueError, match=r"posenc\.rope_config_from_file: '.*bad\.json' is not valid JSON: "
                       "parse error at line 3"):
        rope_config_from_file(tmp_path / "bad.json")


# ---- configs written by transformers' own classes: bit-identical to ROPE_INIT_FUNCTIONS --------


def _cpp(config, layer_type=None):
    return rope_config_from_json(config.to_json_string(), layer_type)


def test_transformers_llama31():
    obj = LlamaConfig(hidden_size=4096, num_attention_heads=32, max_position_embeddings=131072,
                      rope_theta=500000.0, rope_scaling={"rope_type": "llama3", "factor": 8.0,
                      "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 8192})
    rc = _cpp(obj)
    assert (rc.rope_type, rc.head_dim, rc.rope_theta, rc.original_max_position_embeddings) == ("llama3", 128, 5e5, 8192)
    inv, af = rc.compute()
    ref_inv, ref_af = ROPE_INIT_FUNCTIONS["llama3"](obj)
    assert torch.equal(inv, ref_inv) and af == ref_af
    assert rc == rope_from_config(obj)


@pytest.mark.parametrize("factor", [2.0, 4.0, 8.0])
def test_transformers_linear_and_dynamic(factor):
    for rope_type in ("linear", "dynamic"):
        obj = LlamaConfig(hidden_size=1024, num_attention_heads=8, max_position_embeddings=4096,
                          rope_theta=1e4, rope_scaling={"rope_type": rope_type, "factor": factor})
        rc = _cpp(obj)
        for seq_len in ([None] if rope_type == "linear" else [None, 4096, 4097, 3 * 4096 + 5]):
            inv, af = rc.compute(seq_len)
            ref_inv, ref_af = ROPE_INIT_FUNCTIONS[rope_type](obj, seq_len=seq_len)
            assert torch.equal(inv, ref_inv) and af == ref_af, (rope_type, seq_len)


@pytest.mark.parametrize("factor", [4.0, 8.0])
def test_transformers_qwen2_yarn(factor):
    obj = Qwen2Config(hidden_size=3584, num_attention_heads=28, max_position_embeddings=131072,
                      rope_theta=1e6, rope_scaling={"type": "yarn", "factor": factor,
                                                    "original_max_position_embeddings": 32768})
    rc = _cpp(obj)
    assert (rc.rope_type, rc.head_dim, rc.factor) == ("yarn", 128, factor)
    inv, af = rc.compute()
    ref_inv, ref_af = ROPE_INIT_FUNCTIONS["yarn"](obj)
    assert torch.equal(inv, ref_inv) and af == ref_af


def test_transformers_deepseek_yarn_mscale():
    obj = DeepseekV3Config(max_position_embeddings=163840, rope_scaling={
        "type": "yarn", "factor": 40.0, "original_max_position_embeddings": 4096, "beta_fast": 32,
        "beta_slow": 1, "mscale": 0.707, "mscale_all_dim": 1.0})
    rc = _cpp(obj)
    assert (rc.rope_type, rc.head_dim, rc.mscale, rc.mscale_all_dim) == ("yarn", 64, 0.707, 1.0)
    inv, af = rc.compute()
    ref_inv, ref_af = ROPE_INIT_FUNCTIONS["yarn"](obj)
    assert torch.equal(inv, ref_inv) and af == ref_af
    assert af != 1.0


def test_transformers_phi3_longrope():
    n = 48
    g = torch.Generator().manual_seed(3)
    short = (1.0 + torch.rand(n, generator=g, dtype=torch.float64)).tolist()
    long = (1.0 + 40.0 * torch.rand(n, generator=g, dtype=torch.float64)).tolist()
    obj = Phi3Config(hidden_size=3072, num_attention_heads=32, max_position_embeddings=131072,
                     original_max_position_embeddings=4096,
                     rope_scaling={"type": "longrope", "short_factor": short, "long_factor": long})
    # transformers writes rope_type "longrope"; older Phi-3 files say only "su" or "yarn"
    written = json.loads(obj.to_json_string())
    texts = [obj.to_json_string()]
    for name in ("su", "yarn"):
        d = json.loads(json.dumps(written))
        del d["rope_parameters"]["rope_type"], d["rope_parameters"]["original_max_position_embeddings"]
        d["rope_parameters"]["type"] = name
        texts.append(json.dumps(d))
    for text in texts:
        rc = rope_config_from_json(text)
        assert rc.rope_type == "longrope" and rc.original_max_position_embeddings == 4096
        for seq_len in (None, 4096, 4097):
            inv, af = rc.compute(seq_len)
            ref_inv, ref_af = ROPE_INIT_FUNCTIONS["longrope"](obj, seq_len=seq_len)
            assert torch.equal(inv, ref_inv) and af == ref_af, (text[:80], seq_len)
        assert_same(json.loads(text))


@pytest.mark.parametrize("pct", [0.25, 0.5, 1.0])
def test_transformers_gpt_neox_partial(pct):
    obj = GPTNeoXConfig(hidden_size=512, num_attention_heads=4, rotary_pct=pct, rotary_emb_base=50000)
    rc = _cpp(obj)
    assert (rc.head_dim, rc.partial_rotary_factor, rc.rope_theta) == (128, pct, 50000.0)
    assert torch.equal(rc.compute()[0], GPTNeoXRotaryEmbedding(obj).inv_freq)


def test_transformers_gemma3_per_layer_type():
    obj = Gemma3TextConfig(head_dim=128, max_position_embeddings=32768, rope_parameters={
        "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
        "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}})
    emb = Gemma3RotaryEmbedding(obj)
    for layer_type in ("full_attention", "sliding_attention"):
        rc = _cpp(obj, layer_type)
        inv, af = rc.compute()
        assert torch.equal(inv, getattr(emb, f"{layer_type}_inv_freq")), layer_type
        assert af == getattr(emb, f"{layer_type}_attention_scaling")
    with pytest.raises(ValueError, match=r"per layer type \['full_attention', 'sliding_attention'\]"):
        _cpp(obj)


def test_transformers_dicts_agree_with_python_reader():
    # every transformers config above, as its to_dict(), through both readers
    configs = [
        LlamaConfig(hidden_size=256, num_attention_heads=4, rope_scaling={"type": "linear", "factor": 2.0}),
        Qwen2Config(hidden_size=512, num_attention_heads=4, max_position_embeddings=65536,
                    rope_scaling={"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 32768}),
        GPTNeoXConfig(hidden_size=512, num_attention_heads=8, rotary_pct=0.25),
        DeepseekV3Config(),
    ]
    for obj in configs:
        d = json.loads(obj.to_json_string())
        assert_same(d)
        assert math.isfinite(rope_config_from_json(obj.to_json_string()).compute()[1])
