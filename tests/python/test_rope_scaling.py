"""RoPE scaling (RopeConfig, rope_scaling_inv_freq, posenc.hf, xPos) against transformers and
fp64 references from the papers.

transformers is a hard requirement of this file (scripts/setup.sh installs it): a missing
transformers is an import error here, never a skip.
"""
import math
import warnings

import pytest
import torch
import torch._dynamo.testing
import transformers  # noqa: F401  (fails loudly when missing)
from transformers import GPTNeoXConfig, LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.gpt_neox.modeling_gpt_neox import GPTNeoXRotaryEmbedding
from transformers.models.gpt_neox.modeling_gpt_neox import apply_rotary_pos_emb as hf_apply_neox
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb as hf_apply_llama

import posenc
from posenc import ops
from posenc.hf import rope_from_config
from posenc.rope_config import (
    ROPE_TYPES,
    RopeConfig,
    rope_scaling_inv_freq,
    xpos_scale,
    xpos_zeta,
)

transformers.logging.set_verbosity_error()  # yarn's "factor != max/original" notice etc.

F64 = torch.float64
FACTORS = [2.0, 4.0, 8.0, 16.0, 32.0, 64.0]
HEAD_DIMS = [64, 128]
BASES = [1e4, 5e5, 1e6]
PARTIALS = [1.0, 0.5, 0.25]
ORIG = 4096  # original_max_position_embeddings of the scaled types


# ---- transformers side ----------------------------------------------------------------------


def longrope_lists(n, seed):
    g = torch.Generator().manual_seed(seed)
    short = (1.0 + torch.rand(n, generator=g, dtype=F64)).tolist()
    long = (1.0 + 40.0 * torch.rand(n, generator=g, dtype=F64)).tolist()
    return short, long


def type_fields(rope_type, factor, rot):
    """rope_parameters (without rope_type/theta/partial) and max_position_embeddings."""
    if rope_type == "default":
        return {}, 2048
    if rope_type == "linear":
        return {"factor": factor}, int(2048 * factor)
    if rope_type == "dynamic":
        return {"factor": factor}, 2048
    if rope_type == "yarn":
        return {"factor": factor, "original_max_position_embeddings": ORIG}, int(ORIG * factor)
    if rope_type == "llama3":
        return (
            {
                "factor": factor,
                "original_max_position_embeddings": ORIG,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
            },
            int(ORIG * factor),
        )
    if rope_type == "longrope":
        short, long = longrope_lists(rot // 2, int(factor))
        return (
            {
                "factor": factor,
                "original_max_position_embeddings": ORIG,
                "short_factor": short,
                "long_factor": long,
            },
            int(ORIG * factor),
        )
    raise AssertionError(rope_type)


def neox_config(rope_type, head_dim, partial, base, fields, max_pos):
    """A transformers config whose rotary embedding honours partial_rotary_factor (GPT-NeoX)."""
    params = {"rope_type": rope_type, "rope_theta": base, "partial_rotary_factor": partial}
    params.update(fields)
    return GPTNeoXConfig(
        hidden_size=4 * head_dim,
        num_attention_heads=4,
        max_position_embeddings=max_pos,
        rope_parameters=params,
    )


def hf_init(config, rope_type, seq_len=None):
    if rope_type == "default":
        return GPTNeoXRotaryEmbedding.compute_default_rope_parameters(config)
    return ROPE_INIT_FUNCTIONS[rope_type](config, seq_len=seq_len)


def grid():
    for head_dim in HEAD_DIMS:
        for base in BASES:
            for partial in PARTIALS:
                yield head_dim, base, partial


# ---- posenc side ----------------------------------------------------------------------------


def our_cos_sin(positions, inv_freq):
    """cos/sin tables (S, R) produced by posenc.ops.rope itself: rotating e = [1..1, 0..0]
    (half-split) gives [cos, sin]."""
    half = inv_freq.numel()
    x = torch.zeros(1, 1, positions.numel(), 2 * half)
    x[..., :half] = 1.0
    out = ops.rope(x, positions, inv_freq)[0, 0]
    c, s = out[:, :half], out[:, half:]
    return torch.cat([c, c], -1), torch.cat([s, s], -1)


def rope_scaled(x, positions, inv_freq, attention_factor):
    """posenc.ops.rope, with the rotary part scaled by the attention factor (the pass-through
    part is not: transformers scales cos and sin)."""
    r = 2 * inv_freq.numel()
    y = ops.rope(x, positions, inv_freq, rotary_dim=r)
    return torch.cat([y[..., :r] * attention_factor, y[..., r:]], -1)


# ---- inv_freq and attention factor: bit-identical to transformers --------------------------


@pytest.mark.parametrize("factor", FACTORS)
@pytest.mark.parametrize("rope_type", ["linear", "yarn", "llama3", "longrope", "dynamic"])
def test_inv_freq_matches_transformers(rope_type, factor):
    for head_dim, base, partial in grid():
        rot = int(head_dim * partial)
        fields, max_pos = type_fields(rope_type, factor, rot)
        cfg = neox_config(rope_type, head_dim, partial, base, fields, max_pos)
        ours = rope_from_config(cfg)
        seq_lens = [None]
        if rope_type == "dynamic":
            seq_lens = [None, 0, max_pos, max_pos + 1, int(factor * max_pos), 7 * max_pos + 3]
        if rope_type == "longrope":
            seq_lens = [None, ORIG, ORIG + 1]
        for seq_len in seq_lens:
            ref_inv, ref_af = hf_init(cfg, rope_type, seq_len)
            inv, af = ours.compute(seq_len)
            where = (rope_type, factor, head_dim, base, partial, seq_len)
            assert inv.dtype == torch.float32 and inv.shape == (rot // 2,), where
            assert torch.equal(inv, ref_inv), where
            assert af == ref_af, where


def test_default_inv_freq_matches_transformers():
    for head_dim, base, partial in grid():
        cfg = neox_config("default", head_dim, partial, base, {}, 2048)
        ref_inv, ref_af = hf_init(cfg, "default")
        inv, af = rope_from_config(cfg).compute()
        assert torch.equal(inv, ref_inv) and af == ref_af == 1.0, (head_dim, base, partial)
        # Llama's own default (full rotary) too
        if partial == 1.0:
            llama = LlamaConfig(
                hidden_size=4 * head_dim, num_attention_heads=4, head_dim=head_dim,
                rope_parameters={"rope_type": "default", "rope_theta": base},
            )
            assert torch.equal(LlamaRotaryEmbedding(llama).inv_freq, inv)


def test_odd_rotary_dim_rounds_up_as_transformers():
    # int(64 * 0.4) = 25: transformers gives ceil(25 / 2) = 13 frequencies with exponents 2i/25.
    cfg = neox_config("default", 64, 0.4, 1e4, {}, 2048)
    inv, _ = rope_from_config(cfg).compute()
    ref, _ = hf_init(cfg, "default")
    assert inv.shape == (13,) and torch.equal(inv, ref)
    lin = neox_config("linear", 64, 0.4, 1e4, {"factor": 3.0}, 2048)
    assert torch.equal(rope_from_config(lin).compute()[0], hf_init(lin, "linear")[0])
    rc = RopeConfig(head_dim=64, partial_rotary_factor=0.4)
    assert rc.rotary_dim == 25 and rc.num_frequencies == 13


@pytest.mark.parametrize(
    "opts",
    [
        {"beta_fast": 16.0, "beta_slow": 2.0},
        {"beta_fast": 64, "beta_slow": 1},
        {"truncate": False},
        {"truncate": False, "beta_fast": 8.0, "beta_slow": 0.5},
        {"mscale": 0.707, "mscale_all_dim": 0.707},  # DeepSeek-V3
        {"mscale": 1.0, "mscale_all_dim": 0.5},
        {"mscale": 2.0},  # alone: not used (rule 2)
        {"attention_factor": 0.8},
        {"attention_factor": 1.25, "mscale": 1.0, "mscale_all_dim": 0.5},  # rule 1 over rule 2
        {"factor": None},  # rule 4: max / original
        {"beta_fast": 0, "beta_slow": 0},  # rule 5: 0 is the default
    ],
)
@pytest.mark.parametrize("factor", [2.0, 40.0])
def test_yarn_options_match_transformers(opts, factor):
    for head_dim, base, partial in [(64, 1e4, 1.0), (128, 5e5, 0.5), (128, 1e6, 1.0)]:
        fields = {"factor": factor, "original_max_position_embeddings": ORIG}
        fields.update(opts)
        cfg = neox_config("yarn", head_dim, partial, base, fields, int(ORIG * 32))
        ref_inv, ref_af = hf_init(cfg, "yarn")
        inv, af = rope_from_config(cfg).compute()
        assert torch.equal(inv, ref_inv), (opts, factor, head_dim)
        assert af == ref_af, (opts, factor, head_dim, af, ref_af)


@pytest.mark.parametrize("low,high", [(1.0, 4.0), (2.0, 8.0), (0.5, 1.5)])
@pytest.mark.parametrize("orig", [2048, 8192])
def test_llama3_bands_match_transformers(low, high, orig):
    for head_dim, base, partial in grid():
        fields = {
            "factor": 8.0, "original_max_position_embeddings": orig,
            "low_freq_factor": low, "high_freq_factor": high,
        }
        cfg = neox_config("llama3", head_dim, partial, base, fields, orig * 16)
        ref_inv, _ = hf_init(cfg, "llama3")
        assert torch.equal(rope_from_config(cfg).compute()[0], ref_inv)


@pytest.mark.parametrize(
    "opts",
    [{}, {"factor": None}, {"attention_factor": 1.5}, {"factor": 1.0}, {"factor": 0.5}],
)
def test_longrope_options_match_transformers(opts):
    for head_dim, base, partial in [(64, 1e4, 1.0), (128, 1e6, 0.5)]:
        rot = int(head_dim * partial)
        fields, _ = type_fields("longrope", 16.0, rot)
        fields.update(opts)
        cfg = neox_config("longrope", head_dim, partial, base, fields, ORIG * 32)
        for seq_len in [None, ORIG + 1]:
            ref_inv, ref_af = hf_init(cfg, "longrope", seq_len)
            inv, af = rope_from_config(cfg).compute(seq_len)
            assert torch.equal(inv, ref_inv) and af == ref_af, (opts, seq_len)


# ---- cos/sin and rotated q/k against the model's rotary embedding ---------------------------


def probe_positions(factor, max_pos):
    """Positions inside and beyond original_max_position_embeddings."""
    p = [0, 1, 2, 3, 17, ORIG - 1, ORIG, ORIG + 1, 2 * ORIG + 7, max_pos - 1, int(factor * ORIG) + 12345]
    return torch.tensor(sorted(set(p)), dtype=torch.long)


@pytest.mark.parametrize("factor", [2.0, 8.0, 64.0])
@pytest.mark.parametrize("rope_type", ["default", "linear", "yarn", "llama3", "longrope"])
def test_cos_sin_and_rotation_match_model(rope_type, factor):
    for head_dim, base, partial in [(64, 1e4, 1.0), (128, 1e6, 1.0), (128, 5e5, 0.5), (64, 1e6, 0.25)]:
        rot = int(head_dim * partial)
        fields, max_pos = type_fields(rope_type, factor, rot)
        cfg = neox_config(rope_type, head_dim, partial, base, fields, max_pos)
        model_rope = GPTNeoXRotaryEmbedding(cfg)
        pos = probe_positions(factor, max_pos)
        q = torch.randn(2, 3, pos.numel(), head_dim)
        k = torch.randn(2, 3, pos.numel(), head_dim)
        cos_hf, sin_hf = model_rope(q, pos[None])  # (1, S, R), already times the factor
        q_hf, k_hf = hf_apply_neox(q, k, cos_hf, sin_hf)

        # longrope picks its table from the total length the model sees: max(pos) + 1
        inv, af = rope_from_config(cfg).compute(seq_len=int(pos.max()) + 1)
        cos, sin = our_cos_sin(pos, inv)
        where = (rope_type, factor, head_dim, base, partial)
        torch.testing.assert_close(cos * af, cos_hf[0], rtol=0, atol=1e-6, msg=str(where))
        torch.testing.assert_close(sin * af, sin_hf[0], rtol=0, atol=1e-6, msg=str(where))
        # rope() then the factor, and apply_rotary_pos_emb with the scaled tables
        for x, ref in ((q, q_hf), (k, k_hf)):
            torch.testing.assert_close(rope_scaled(x, pos, inv, af), ref, rtol=0, atol=1e-5)
            torch.testing.assert_close(
                ops.apply_rotary_pos_emb(x, cos * af, sin * af), ref, rtol=0, atol=1e-5
            )


@pytest.mark.parametrize("rope_type", ["linear", "yarn", "llama3"])
def test_llama_model_rotation_full_rotary(rope_type):
    head_dim, factor = 128, 16.0
    fields, max_pos = type_fields(rope_type, factor, head_dim)
    cfg = LlamaConfig(
        hidden_size=4 * head_dim, num_attention_heads=4, head_dim=head_dim,
        max_position_embeddings=max_pos,
        rope_parameters={"rope_type": rope_type, "rope_theta": 5e5, **fields},
    )
    model_rope = LlamaRotaryEmbedding(cfg)
    pos = probe_positions(factor, max_pos)
    q = torch.randn(1, 2, pos.numel(), head_dim, dtype=torch.float32)
    k = torch.randn_like(q)
    cos_hf, sin_hf = model_rope(q, pos[None])
    q_hf, k_hf = hf_apply_llama(q, k, cos_hf, sin_hf)
    inv, af = rope_from_config(cfg).compute()
    assert torch.equal(inv, model_rope.inv_freq) and af == model_rope.attention_scaling
    torch.testing.assert_close(ops.rope(q, pos, inv) * af, q_hf, rtol=0, atol=1e-5)
    torch.testing.assert_close(ops.rope(k, pos, inv) * af, k_hf, rtol=0, atol=1e-5)


def test_bf16_rotation_close_to_model():
    fields, max_pos = type_fields("yarn", 8.0, 64)
    cfg = neox_config("yarn", 64, 1.0, 1e4, fields, max_pos)
    pos = probe_positions(8.0, max_pos)
    q = torch.randn(1, 2, pos.numel(), 64).to(torch.bfloat16)
    cos_hf, sin_hf = GPTNeoXRotaryEmbedding(cfg)(q, pos[None])
    q_hf, _ = hf_apply_neox(q, q, cos_hf, sin_hf)
    inv, af = rope_from_config(cfg).compute()
    cos, sin = our_cos_sin(pos, inv)
    ours = ops.apply_rotary_pos_emb(q, (cos * af).to(q.dtype), (sin * af).to(q.dtype))
    torch.testing.assert_close(ours.float(), q_hf.float(), rtol=3e-2, atol=3e-2)


# ---- dynamic NTK and the LongRoPE switch ---------------------------------------------------


@pytest.mark.parametrize("factor", [2.0, 4.0, 16.0])
def test_dynamic_ntk_several_seq_lens(factor):
    head_dim, base, max_pos = 128, 1e4, 2048
    cfg = neox_config("dynamic", head_dim, 1.0, base, {"factor": factor}, max_pos)
    rc = rope_from_config(cfg)
    default, _ = rope_from_config(neox_config("default", head_dim, 1.0, base, {}, max_pos)).compute()
    for seq_len in [1, max_pos // 2, max_pos]:
        assert torch.equal(rc.compute(seq_len)[0], default)  # rule 6: no rescaling up to max
    assert torch.equal(rc.compute()[0], default)
    prev = default
    for seq_len in [max_pos + 1, 2 * max_pos, 3 * max_pos + 5, 16 * max_pos]:
        inv, af = rc.compute(seq_len)
        assert torch.equal(inv, ROPE_INIT_FUNCTIONS["dynamic"](cfg, seq_len=seq_len)[0])
        assert af == 1.0
        # fp64 reference (emozilla / YaRN "Dynamic NTK"): base' = base (s L / L0 - s + 1)^(d/(d-2))
        scale = factor * seq_len / max_pos - (factor - 1)
        b = base * scale ** (head_dim / (head_dim - 2))
        ref = b ** (-torch.arange(0, head_dim, 2, dtype=F64) / head_dim)
        torch.testing.assert_close(inv.double(), ref, rtol=3e-6, atol=0)
        assert inv[0] == 1.0 and bool((inv[1:] < prev[1:]).all())  # longer -> lower frequencies
        prev = inv


def test_dynamic_ntk_model_path():
    # The model computes the rescaled base from a tensor seq_len, i.e. in float32: equal to
    # ours (double base) up to float32 rounding of the base, then identical cos/sin math.
    head_dim, base, max_pos, factor = 64, 1e4, 1024, 4.0
    cfg = neox_config("dynamic", head_dim, 1.0, base, {"factor": factor}, max_pos)
    model_rope = GPTNeoXRotaryEmbedding(cfg)
    rc = rope_from_config(cfg)
    x = torch.randn(1, 1, 1, head_dim)
    for seq_len in [max_pos // 2, max_pos + 1, 3 * max_pos, 5 * max_pos + 7]:
        pos = torch.arange(seq_len)
        cos_hf, sin_hf = model_rope(x, pos[None])
        inv, af = rc.compute(seq_len)
        torch.testing.assert_close(inv, model_rope.inv_freq, rtol=3e-6, atol=0)
        cos, sin = our_cos_sin(pos, model_rope.inv_freq)
        torch.testing.assert_close(cos, cos_hf[0], rtol=0, atol=1e-6)
        torch.testing.assert_close(sin, sin_hf[0], rtol=0, atol=1e-6)
    # back under the original length, transformers resets to the default frequencies; so do we
    model_rope(x, torch.arange(max_pos // 4)[None])
    assert torch.equal(rc.compute(max_pos // 4)[0], model_rope.inv_freq)


@pytest.mark.parametrize("head_dim,partial", [(64, 1.0), (128, 0.5), (96, 1.0)])
def test_longrope_switch_at_original_length(head_dim, partial):
    rot = int(head_dim * partial)
    fields, max_pos = type_fields("longrope", 32.0, rot)
    cfg = neox_config("longrope", head_dim, partial, 1e4, fields, max_pos)
    rc = rope_from_config(cfg)
    short = rc.compute(ORIG)[0]
    long = rc.compute(ORIG + 1)[0]
    assert not torch.equal(short, long)
    theta = 1e4 ** (-torch.arange(0, rot, 2, dtype=F64) / rot)
    torch.testing.assert_close(short.double(), theta / torch.tensor(fields["short_factor"], dtype=F64),
                               rtol=3e-6, atol=0)
    torch.testing.assert_close(long.double(), theta / torch.tensor(fields["long_factor"], dtype=F64),
                               rtol=3e-6, atol=0)
    for seq_len in [None, 0, 1, ORIG - 1, ORIG]:
        assert torch.equal(rc.compute(seq_len)[0], short), seq_len  # rule 7
    for seq_len in [ORIG + 1, 2 * ORIG, max_pos, 10 * max_pos]:
        assert torch.equal(rc.compute(seq_len)[0], long), seq_len
    # the model: largest position ORIG - 1 (length ORIG) keeps short, position ORIG switches
    model_rope = GPTNeoXRotaryEmbedding(cfg)
    x = torch.randn(1, 1, 1, head_dim)
    model_rope(x, torch.tensor([[0, ORIG - 1]]))
    assert torch.equal(model_rope.inv_freq, short)
    model_rope(x, torch.tensor([[0, ORIG]]))
    assert torch.equal(model_rope.inv_freq, long)
    af = rc.compute()[1]
    assert af == model_rope.attention_scaling == math.sqrt(1 + math.log(32.0) / math.log(ORIG))


# ---- NTK-aware static (not a transformers type) ---------------------------------------------


@pytest.mark.parametrize("alpha", [2.0, 3.0, 8.0, 65.0])
def test_ntk_static(alpha):
    for head_dim, base, partial in grid():
        rot = int(head_dim * partial)
        inv, af = rope_scaling_inv_freq("ntk", base, head_dim, partial, factor=alpha)
        # bloc97 / YaRN §3.2: base' = base * alpha^(d / (d - 2))
        b = base * alpha ** (rot / (rot - 2))
        ref = b ** (-torch.arange(0, rot, 2, dtype=F64) / rot)
        torch.testing.assert_close(inv.double(), ref, rtol=3e-6, atol=0)
        assert af == 1.0
        # transformers' dynamic NTK at length 2 * L0 with factor alpha - 1 is the same base
        cfg = neox_config("dynamic", head_dim, partial, base, {"factor": alpha - 1.0}, 2048)
        assert torch.equal(inv, ROPE_INIT_FUNCTIONS["dynamic"](cfg, seq_len=4096)[0])
        # NTK-aware: the highest frequency is kept, the lowest is alpha times lower
        default = rope_scaling_inv_freq("default", base, head_dim, partial)[0]
        assert inv[0] == default[0] == 1.0
        torch.testing.assert_close(inv[-1].double(), default[-1].double() / alpha, rtol=3e-6, atol=0)


# ---- paper references (fp64) for the other types --------------------------------------------


def theta64(rot, base):
    return base ** (-torch.arange(0, rot, 2, dtype=F64) / rot)


def test_paper_references_linear_yarn_llama3():
    for head_dim, base, partial in grid():
        rot = int(head_dim * partial)
        t = theta64(rot, base)
        for s in FACTORS:
            inv = rope_scaling_inv_freq("linear", base, head_dim, partial, factor=s)[0]
            torch.testing.assert_close(inv.double(), t / s, rtol=3e-6, atol=0)  # Chen et al.

            # YaRN §3.3 NTK-by-parts with beta_fast 32, beta_slow 1, truncation
            inv, af = rope_scaling_inv_freq("yarn", base, head_dim, partial, factor=s,
                                            original_max_position_embeddings=ORIG)
            r = lambda n: rot * math.log(ORIG / (2 * math.pi * n)) / (2 * math.log(base))
            lo, hi = max(math.floor(r(32)), 0), min(math.ceil(r(1)), rot - 1)
            hi = hi + 0.001 if lo == hi else hi
            ramp = ((torch.arange(rot // 2, dtype=F64) - lo) / (hi - lo)).clamp(0, 1)
            ref = t / s * ramp + t * (1 - ramp)
            torch.testing.assert_close(inv.double(), ref, rtol=3e-6, atol=0)
            assert af == pytest.approx(0.1 * math.log(s) + 1, rel=1e-15)  # §3.5

            # Llama 3.1 apply_scaling(factor=s, low=1, high=4, old=8192)
            inv = rope_scaling_inv_freq("llama3", base, head_dim, partial, factor=s,
                                        original_max_position_embeddings=8192,
                                        low_freq_factor=1.0, high_freq_factor=4.0)[0]
            ref = []
            for f in t.tolist():
                wl = 2 * math.pi / f
                if wl < 8192 / 4.0:
                    ref.append(f)
                elif wl > 8192 / 1.0:
                    ref.append(f / s)
                else:
                    mu = (8192 / wl - 1.0) / (4.0 - 1.0)
                    ref.append((1 - mu) * f / s + mu * f)
            torch.testing.assert_close(inv.double(), torch.tensor(ref, dtype=F64), rtol=3e-6, atol=0)


# ---- precedence rules ----------------------------------------------------------------------


def test_precedence_attention_factor():
    yarn = dict(factor=16.0, original_max_position_embeddings=ORIG)
    # rule 1: explicit wins for every type
    for t, kw in [("default", {}), ("linear", {"factor": 4.0}), ("yarn", yarn),
                  ("llama3", dict(factor=8.0, original_max_position_embeddings=ORIG,
                                  low_freq_factor=1.0, high_freq_factor=4.0)),
                  ("xpos", {}), ("ntk", {"factor": 2.0})]:
        assert rope_scaling_inv_freq(t, 1e4, 64, attention_factor=0.75, **kw)[1] == 0.75, t
    assert rope_scaling_inv_freq("yarn", 1e4, 64, attention_factor=0.75, mscale=1.0,
                                 mscale_all_dim=0.5, **yarn)[1] == 0.75
    # rule 2: mscale ratio needs both; otherwise 0.1 ln s + 1
    ms = lambda s, m: 0.1 * m * math.log(s) + 1.0
    assert rope_scaling_inv_freq("yarn", 1e4, 64, mscale=1.0, mscale_all_dim=0.5, **yarn)[1] == \
        ms(16.0, 1.0) / ms(16.0, 0.5)
    for extra in [{}, {"mscale": 3.0}, {"mscale_all_dim": 3.0}, {"mscale": 3.0, "mscale_all_dim": 0.0}]:
        assert rope_scaling_inv_freq("yarn", 1e4, 64, **yarn, **extra)[1] == ms(16.0, 1.0), extra
    assert rope_scaling_inv_freq("yarn", 1e4, 64, factor=1.0, original_max_position_embeddings=ORIG)[1] == 1.0
    assert rope_scaling_inv_freq("yarn", 1e4, 64, factor=0.5, original_max_position_embeddings=ORIG)[1] == 1.0
    # rule 3: longrope
    lr = dict(original_max_position_embeddings=ORIG, short_factor=[1.0] * 32, long_factor=[4.0] * 32)
    assert rope_scaling_inv_freq("longrope", 1e4, 64, factor=8.0, **lr)[1] == \
        math.sqrt(1 + math.log(8.0) / math.log(ORIG))
    assert rope_scaling_inv_freq("longrope", 1e4, 64, factor=1.0, **lr)[1] == 1.0
    assert rope_scaling_inv_freq("longrope", 1e4, 64, factor=8.0, attention_factor=2.0, **lr)[1] == 2.0


def test_precedence_factor_over_length_ratio():
    # rule 4: explicit factor wins; without it, max_position_embeddings / original
    for t, extra in [("yarn", {}), ("longrope", dict(short_factor=[1.0] * 32, long_factor=[4.0] * 32))]:
        base = dict(original_max_position_embeddings=ORIG, **extra)
        by_ratio = rope_scaling_inv_freq(t, 1e4, 64, max_position_embeddings=8 * ORIG, **base)
        explicit = rope_scaling_inv_freq(t, 1e4, 64, factor=8.0, **base)
        assert torch.equal(by_ratio[0], explicit[0]) and by_ratio[1] == explicit[1], t
        both = rope_scaling_inv_freq(t, 1e4, 64, factor=2.0, max_position_embeddings=8 * ORIG, **base)
        two = rope_scaling_inv_freq(t, 1e4, 64, factor=2.0, **base)
        assert torch.equal(both[0], two[0]) and both[1] == two[1] != explicit[1], t


def test_precedence_beta_defaults():
    yarn = dict(factor=16.0, original_max_position_embeddings=ORIG)
    ref = rope_scaling_inv_freq("yarn", 1e4, 128, **yarn)[0]
    for b in [dict(beta_fast=32.0, beta_slow=1.0), dict(beta_fast=0.0, beta_slow=0.0)]:
        assert torch.equal(rope_scaling_inv_freq("yarn", 1e4, 128, **yarn, **b)[0], ref)
    assert not torch.equal(rope_scaling_inv_freq("yarn", 1e4, 128, beta_fast=8.0, **yarn)[0], ref)


def test_hf_ignores_attention_factor_where_transformers_does():
    cfg = neox_config("linear", 64, 1.0, 1e4, {"factor": 4.0, "attention_factor": 0.5}, 8192)
    with pytest.warns(UserWarning, match="not used by rope_type 'linear'.*attention_factor"):
        rc = rope_from_config(cfg)
    assert rc.attention_factor is None
    assert rc.compute()[1] == hf_init(cfg, "linear")[1] == 1.0


# ---- reading transformers configs -----------------------------------------------------------


LLAMA31 = {
    "model_type": "llama",
    "hidden_size": 4096,
    "num_attention_heads": 32,
    "max_position_embeddings": 131072,
    "rope_theta": 500000.0,
    "rope_scaling": {
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    },
}


def test_hf_old_and_new_styles_agree():
    new = {k: v for k, v in LLAMA31.items() if k not in ("rope_scaling", "rope_theta")}
    new["rope_parameters"] = dict(LLAMA31["rope_scaling"], rope_theta=500000.0)
    obj = LlamaConfig(**{k: v for k, v in LLAMA31.items() if k != "model_type"})
    ref_inv, _ = ROPE_INIT_FUNCTIONS["llama3"](obj)
    for cfg in (LLAMA31, new, obj, obj.to_dict()):
        rc = rope_from_config(cfg)
        assert rc.rope_type == "llama3" and rc.head_dim == 128 and rc.rope_theta == 500000.0
        assert rc.original_max_position_embeddings == 8192
        assert torch.equal(rc.compute()[0], ref_inv)


def test_hf_legacy_type_key_and_theta_default():
    cfg = {"hidden_size": 256, "num_attention_heads": 4, "rope_scaling": {"type": "linear", "factor": 2.0}}
    rc = rope_from_config(cfg)
    assert (rc.rope_type, rc.factor, rc.rope_theta, rc.head_dim) == ("linear", 2.0, 10000.0, 64)
    obj = LlamaConfig(hidden_size=256, num_attention_heads=4, rope_scaling={"type": "linear", "factor": 2.0})
    assert torch.equal(rc.compute()[0], ROPE_INIT_FUNCTIONS["linear"](obj)[0])
    # rope_type wins over type; rope_scaling wins over rope_parameters (as transformers)
    cfg = {"head_dim": 64, "rope_scaling": {"type": "linear", "rope_type": "dynamic", "factor": 2.0},
           "rope_parameters": {"rope_type": "yarn"}, "max_position_embeddings": 4096}
    assert rope_from_config(cfg).rope_type == "dynamic"
    # no RoPE dict at all: default with the top-level theta
    rc = rope_from_config({"head_dim": 32, "rope_theta": 1e6})
    assert (rc.rope_type, rc.rope_theta) == ("default", 1e6)


def test_hf_head_dim_and_partial_rotary():
    cfg = {"hidden_size": 2560, "num_attention_heads": 32, "partial_rotary_factor": 0.4,
           "rope_theta": 1e4}  # Phi-2: head_dim 80, rotary 32
    rc = rope_from_config(cfg)
    assert (rc.head_dim, rc.rotary_dim) == (80, 32)
    assert rc.compute()[0].shape == (16,)
    # explicit head_dim wins over hidden_size // heads; the dict's partial over the top level
    cfg = {"hidden_size": 2048, "num_attention_heads": 32, "head_dim": 128, "partial_rotary_factor": 0.5,
           "rope_parameters": {"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.25}}
    rc = rope_from_config(cfg)
    assert (rc.head_dim, rc.partial_rotary_factor, rc.rotary_dim) == (128, 0.25, 32)
    # GPT-NeoX legacy names
    rc = rope_from_config({"hidden_size": 512, "num_attention_heads": 8, "rotary_pct": 0.25,
                           "rotary_emb_base": 50000})
    assert (rc.rotary_dim, rc.rope_theta) == (16, 50000.0)
    # a transformers object with partial rotary: equal to its rotary embedding
    obj = neox_config("yarn", 128, 0.5, 1e6, {"factor": 8.0, "original_max_position_embeddings": ORIG}, 8 * ORIG)
    assert torch.equal(rope_from_config(obj).compute()[0], GPTNeoXRotaryEmbedding(obj).inv_freq)


def test_hf_original_length_resolution():
    base = {"hidden_size": 3072, "num_attention_heads": 32, "max_position_embeddings": 131072,
            "rope_theta": 1e4}
    n = 48
    short, long = longrope_lists(n, 0)
    scaling = {"type": "longrope", "short_factor": short, "long_factor": long}
    # Phi-3: the top-level original_max_position_embeddings wins over the dict's
    cfg = dict(base, original_max_position_embeddings=4096,
               rope_scaling=dict(scaling, original_max_position_embeddings=999))
    rc = rope_from_config(cfg)
    assert rc.original_max_position_embeddings == 4096
    assert rc.compute()[1] == math.sqrt(1 + math.log(131072 / 4096) / math.log(4096))  # rule 4
    # neither: max_position_embeddings (transformers' standardisation)
    rc = rope_from_config(dict(base, rope_scaling={"rope_type": "yarn", "factor": 4.0}))
    assert rc.original_max_position_embeddings == 131072


def test_hf_aliases():
    short, long = longrope_lists(48, 1)
    phi3 = {"model_type": "phi3", "hidden_size": 3072, "num_attention_heads": 32,
            "max_position_embeddings": 131072, "original_max_position_embeddings": 4096,
            "rope_scaling": {"type": "su", "short_factor": short, "long_factor": long}}
    assert rope_from_config(phi3).rope_type == "longrope"
    phi3["rope_scaling"]["type"] = "yarn"  # Phi3Config maps this to longrope too
    assert rope_from_config(phi3).rope_type == "longrope"
    qwen2vl = {"head_dim": 128, "rope_theta": 1e6,
               "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]}}
    assert rope_from_config(qwen2vl).rope_type == "default"


def test_hf_nested_layer_types():
    cfg = {"head_dim": 256, "max_position_embeddings": 131072, "rope_parameters": {
        "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
        "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}}
    full = rope_from_config(cfg, layer_type="full_attention")
    local = rope_from_config(cfg, layer_type="sliding_attention")
    assert (full.rope_type, full.factor, full.rope_theta) == ("linear", 8.0, 1e6)
    assert (local.rope_type, local.rope_theta) == ("default", 1e4)
    with pytest.raises(ValueError, match=r"per layer type \['full_attention', 'sliding_attention'\]"):
        rope_from_config(cfg)
    with pytest.raises(ValueError, match="layer_type must be one of .* but got 'global'"):
        rope_from_config(cfg, layer_type="global")


def test_hf_warns_on_unknown_keys():
    cfg = {"head_dim": 64, "max_position_embeddings": 8192,
           "rope_scaling": {"rope_type": "yarn", "factor": 4.0, "beta_fastt": 8.0}}
    with pytest.warns(UserWarning, match=r"unrecognized keys for rope_type 'yarn' ignored: \['beta_fastt'\]"):
        rc = rope_from_config(cfg)
    assert rc.beta_fast is None


@pytest.mark.parametrize(
    "name,hint",
    [("Yarn", "did you mean 'yarn'"), ("lineer", "did you mean 'linear'"), ("LLAMA3", "did you mean 'llama3'"),
     ("proportional", ""), ("dynamic-ntk", ""), ("", "")],
)
def test_hf_rejects_unknown_types(name, hint):
    cfg = {"head_dim": 64, "max_position_embeddings": 8192, "rope_scaling": {"rope_type": name or "x y", "factor": 2.0}}
    with pytest.raises(ValueError) as e:
        rope_from_config(cfg)
    msg = str(e.value)
    assert "rope_type must be one of 'default', 'linear', 'ntk', 'dynamic', 'yarn', 'llama3', 'longrope', 'xpos'" in msg
    assert hint in msg


def test_hf_missing_head_dim():
    with pytest.raises(ValueError, match="needs head_dim or hidden_size and num_attention_heads"):
        rope_from_config({"rope_theta": 1e4})


def test_hf_missing_required_field_names_it():
    with pytest.raises(RuntimeError, match=r"argument 'factor' must be given for rope_type \"linear\", but got None"):
        rope_from_config({"head_dim": 64, "rope_scaling": {"type": "linear"}})
    with pytest.raises(RuntimeError, match="argument 'low_freq_factor' must be given"):
        rope_from_config({"head_dim": 64, "max_position_embeddings": 8192,
                          "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "high_freq_factor": 4.0}})


# ---- bad configurations: op errors --------------------------------------------------------


OP = "posenc.rope_scaling_inv_freq: argument"
LR = dict(original_max_position_embeddings=ORIG, short_factor=[1.0] * 32, long_factor=[2.0] * 32)
YARN = dict(factor=4.0, original_max_position_embeddings=ORIG)
L3 = dict(factor=8.0, original_max_position_embeddings=ORIG, low_freq_factor=1.0, high_freq_factor=4.0)


@pytest.mark.parametrize(
    "args,kwargs,match",
    [
        (("Yarn", 1e4, 64), {}, r"'rope_type' must be one of \"default\", \"linear\", \"ntk\", \"dynamic\", "
                                r"\"yarn\", \"llama3\", \"longrope\", \"xpos\", but got \"Yarn\" \(did you mean \"yarn\"\?"),
        (("proportional", 1e4, 64), {}, r"'rope_type' must be one of .* but got \"proportional\""),
        (("default", 1e4, 0), {}, r"'head_dim' must be > 0, but got 0"),
        (("default", 1e4, 64, 0.0), {}, r"'partial_rotary_factor' must be in \(0, 1\], but got 0"),
        (("default", 1e4, 64, 1.5), {}, r"'partial_rotary_factor' must be in \(0, 1\], but got 1.5"),
        (("default", 1e4, 64, 0.01), {}, r"'partial_rotary_factor' must leave a rotary dimension .* >= 2 "
                                         r"\(head_dim 64\), but got 0.01 \(rotary dimension 0\)"),
        (("default", 1.0, 64), {}, r"'rope_theta' must be finite and > 1, but got 1"),
        (("default", float("inf"), 64), {}, r"'rope_theta' must be finite and > 1, but got inf"),
        (("default", 1e4, 64), {"attention_factor": 0.0}, r"'attention_factor' must be finite and > 0"),
        (("linear", 1e4, 64), {}, r"'factor' must be given for rope_type \"linear\", but got None"),
        (("linear", 1e4, 64), {"factor": 0.0}, r"'factor' must be finite and > 0 for rope_type \"linear\", but got 0"),
        (("linear", 1e4, 64), {"factor": float("nan")}, r"'factor' must be finite and > 0 .* but got nan"),
        (("ntk", 1e4, 64), {"factor": -2.0}, r"'factor' must be finite and > 0 for rope_type \"ntk\", but got -2"),
        (("ntk", 1e4, 4, 0.5), {"factor": 2.0}, r"'partial_rotary_factor' must leave a rotary dimension > 2"),
        (("dynamic", 1e4, 64), {"factor": 2.0}, r"'max_position_embeddings' must be given for rope_type \"dynamic\""),
        (("dynamic", 1e4, 64), {"factor": 2.0, "max_position_embeddings": 0},
         r"'max_position_embeddings' must be > 0 for rope_type \"dynamic\", but got 0"),
        (("dynamic", 1e4, 64), {"factor": 2.0, "max_position_embeddings": 8, "seq_len": -1},
         r"'seq_len' must be >= 0 \(or None\), but got -1"),
        (("yarn", 1e4, 64), {"factor": 4.0}, r"'original_max_position_embeddings' must be given for rope_type \"yarn\""),
        (("yarn", 1e4, 64), {"original_max_position_embeddings": ORIG},
         r"'factor' must be given for rope_type \"yarn\" unless max_position_embeddings is"),
        (("yarn", 1e4, 64), dict(YARN, beta_fast=1.0, beta_slow=2.0), r"'beta_fast' must be >= beta_slow \(2\)"),
        (("yarn", 1e4, 64), dict(YARN, beta_slow=-1.0), r"'beta_slow' must be finite and >= 0"),
        (("yarn", 1e4, 64), dict(YARN, mscale=float("inf")), r"'mscale' must be finite for rope_type \"yarn\""),
        (("yarn", 1e4, 50, 0.5), YARN, r"'partial_rotary_factor' must give an even rotary dimension .* "
                                       r"\(rotary dimension 25\)"),
        (("llama3", 1e4, 64), dict(L3, high_freq_factor=1.0), r"'high_freq_factor' must be > low_freq_factor \(1\)"),
        (("llama3", 1e4, 64), dict(L3, low_freq_factor=None), r"'low_freq_factor' must be given for rope_type \"llama3\""),
        (("longrope", 1e4, 64), dict(LR, factor=2.0, short_factor=[1.0] * 31),
         r"'short_factor' must have 32 values \(one per frequency, ceil\(rotary_dim / 2\)\) "
         r"for rope_type \"longrope\", but got 31 values"),
        (("longrope", 1e4, 64), dict(LR, factor=2.0, long_factor=[1.0] * 31 + [0.0]),
         r"'long_factor' must hold finite values > 0 for rope_type \"longrope\", but got 0 at index 31"),
        (("longrope", 1e4, 64), dict(LR, factor=2.0, long_factor=None), r"'long_factor' must have 32 values .* got 0 values"),
        (("xpos", 1e4, 64), {"xpos_gamma": 0.0}, r"'xpos_gamma' must be finite and > 0"),
        (("xpos", 1e4, 64), {"xpos_scale_base": -1.0}, r"'xpos_scale_base' must be finite and > 0"),
    ],
)
def test_bad_configs(args, kwargs, match):
    with pytest.raises(RuntimeError, match=f"{OP} {match}"):
        rope_scaling_inv_freq(*args, **kwargs)


def test_ropeconfig_validates_on_construction():
    with pytest.raises(RuntimeError, match=f"{OP} 'factor' must be given for rope_type \"llama3\""):
        RopeConfig(head_dim=64, rope_type="llama3")
    with pytest.raises(RuntimeError, match=f"{OP} 'rope_type' must be one of"):
        RopeConfig(head_dim=64, rope_type="ntk-aware")


def test_every_type_name_accepted_by_the_op():
    kw = dict(factor=4.0, max_position_embeddings=8192, original_max_position_embeddings=ORIG,
              low_freq_factor=1.0, high_freq_factor=4.0, short_factor=[1.0] * 32, long_factor=[2.0] * 32)
    for name in ROPE_TYPES + ("su",):
        inv, af = rope_scaling_inv_freq(name, 1e4, 64, **kw)
        assert inv.shape == (32,) and inv.dtype == torch.float32 and af > 0, name


# ---- RopeConfig, device, scripting, opcheck, compile ----------------------------------------


def test_ropeconfig_mirrors_op_and_device():
    rc = RopeConfig(head_dim=128, rope_type="yarn", rope_theta=1e6, factor=8.0,
                    original_max_position_embeddings=ORIG, partial_rotary_factor=0.5)
    inv, af = rc.compute()
    ref = rope_scaling_inv_freq("yarn", 1e6, 128, 0.5, factor=8.0, original_max_position_embeddings=ORIG)
    assert torch.equal(inv, ref[0]) and af == ref[1]
    meta, _ = rc.compute(device=torch.device("meta"))
    assert meta.device.type == "meta" and meta.shape == inv.shape and meta.dtype == torch.float32
    # ints are accepted where the fields are floats (config.json often has them)
    rc2 = RopeConfig(head_dim=128, rope_type="yarn", rope_theta=1000000, factor=8,
                     original_max_position_embeddings=ORIG, partial_rotary_factor=0.5)
    assert torch.equal(rc2.compute()[0], inv)


def test_script_wrappers():
    f = torch.jit.script(rope_scaling_inv_freq)
    inv, af = f("yarn", 1e4, 64, factor=4.0, original_max_position_embeddings=2048)
    ref = rope_scaling_inv_freq("yarn", 1e4, 64, factor=4.0, original_max_position_embeddings=2048)
    assert torch.equal(inv, ref[0]) and af == ref[1]
    lr = torch.jit.script(rope_scaling_inv_freq)("longrope", 1e4, 8, factor=2.0,
                                                 original_max_position_embeddings=16,
                                                 short_factor=[1.0, 2.0, 3.0, 4.0],
                                                 long_factor=[5.0, 6.0, 7.0, 8.0], seq_len=17)
    torch.testing.assert_close(lr[0].double(), theta64(8, 1e4) / torch.tensor([5.0, 6.0, 7.0, 8.0], dtype=F64))
    z = torch.jit.script(xpos_zeta)(16, 0.4)
    assert torch.equal(z, xpos_zeta(16))
    p = torch.arange(5)
    assert torch.equal(torch.jit.script(xpos_scale)(p, z, 512.0, 2, True), xpos_scale(p, z, 512.0, 2, True))


@pytest.mark.parametrize(
    "args,kwargs",
    [
        (("yarn", 1e4, 64), dict(factor=4.0, original_max_position_embeddings=2048)),
        (("dynamic", 5e5, 128, 0.5), dict(factor=4.0, max_position_embeddings=512, seq_len=4000)),
        (("longrope", 1e4, 8), dict(original_max_position_embeddings=16, factor=2.0,
                                    short_factor=[1.0, 2.0, 3.0, 4.0], long_factor=[2.0] * 4, seq_len=20)),
        (("llama3", 1e4, 64), L3),
    ],
)
def test_opcheck_rope_scaling_inv_freq(args, kwargs):
    torch.library.opcheck(torch.ops.posenc.rope_scaling_inv_freq.default, args, kwargs)


def test_compile_rope_scaling_inv_freq():
    cnt = torch._dynamo.testing.CompileCounter()

    def f(x):
        inv, af = rope_scaling_inv_freq("yarn", 1e4, 64, factor=4.0, original_max_position_embeddings=2048)
        return x * inv * af

    g = torch.compile(f, backend=cnt, fullgraph=True)
    x = torch.randn(32)
    torch.testing.assert_close(g(x), f(x), rtol=0, atol=0)
    assert cnt.frame_count == 1


# ---- xPos ---------------------------------------------------------------------------------


@pytest.mark.parametrize("rot,gamma", [(64, 0.4), (128, 0.4), (32, 0.1), (25, 0.4), (2, 1.0)])
def test_xpos_zeta(rot, gamma):
    z = xpos_zeta(rot, gamma)
    i = torch.arange((rot + 1) // 2, dtype=F64)
    ref = (2 * i / rot + gamma) / (1 + gamma)  # Sun et al. 2022 §3.2
    assert z.dtype == torch.float32 and z.shape == ref.shape
    torch.testing.assert_close(z.double(), ref, rtol=1e-7, atol=0)
    if gamma == 0.4 and rot % 2 == 0:
        # the reference implementation's (arange(0, d, 2) + 0.4 d) / (1.4 d)
        ts = (torch.arange(0, rot, 2, dtype=F64) + 0.4 * rot) / (1.4 * rot)
        torch.testing.assert_close(z.double(), ts, rtol=1e-7, atol=0)
    rc = RopeConfig(head_dim=rot, rope_type="xpos", xpos_gamma=gamma)
    assert torch.equal(rc.xpos_zeta(), z)
    inv, af = rc.compute()
    assert torch.equal(inv, rope_scaling_inv_freq("default", 1e4, rot)[0]) and af == 1.0


def test_xpos_scale_values_and_inverse():
    z = xpos_zeta(64).double()
    pos = torch.tensor([[0, 5, 511, 512, 3000], [7, 7, 7, 7, 7]])
    for centre in [0, 256, -100]:
        q = xpos_scale(pos, z, 512.0, centre)
        k = xpos_scale(pos, z, 512.0, centre, inverse=True)
        e = (pos.to(F64) - centre)[..., None] / 512.0
        torch.testing.assert_close(q, z ** e, rtol=1e-14, atol=0)
        torch.testing.assert_close(k, z ** (-e), rtol=1e-14, atol=0)
        torch.testing.assert_close(q * k, torch.ones_like(q), rtol=1e-14, atol=0)
        assert q.shape == (2, 5, 32) and q.dtype == F64
    assert xpos_scale(pos, z.float()).dtype == torch.float32
    assert xpos_scale(torch.zeros(0, dtype=torch.long), z).shape == (0, 32)  # C06
    assert xpos_scale(torch.tensor(3), z).shape == (32,)


def test_xpos_scores_depend_on_distance_only():
    """q_n . k_m with rope and xPos = sum_i zeta_i^((n-m)/B) [pair dot rotated by (n-m) theta_i]:
    the same for every centre and for offset (cached) calls; fp64 reference from the paper."""
    torch.manual_seed(1)
    rot, S, B = 32, 12, 16.0
    inv = rope_scaling_inv_freq("xpos", 1e4, rot)[0]
    z = xpos_zeta(rot).double()
    q = torch.randn(1, 1, S, rot, dtype=F64)
    k = torch.randn(1, 1, S, rot, dtype=F64)
    pos = torch.arange(S) + 100

    def scaled_q(centre, rows=slice(None)):
        qs = xpos_scale(pos[rows], z, B, centre).repeat(1, 2)
        return ops.rope(q[:, :, rows], pos[rows], inv) * qs

    def scores(centre):
        ks = xpos_scale(pos, z, B, centre, inverse=True).repeat(1, 2)
        kk = ops.rope(k, pos, inv) * ks
        return (scaled_q(centre) @ kk.transpose(-1, -2))[0, 0]

    ang = (pos.float()[:, None] * inv).double()  # the op's angles are float32 products
    h = rot // 2
    ref = torch.zeros(S, S, dtype=F64)
    for n in range(S):
        for m in range(S):
            d = ang[n] - ang[m]
            a, b = q[0, 0, n, :h], q[0, 0, n, h:]
            c, e = k[0, 0, m, :h], k[0, 0, m, h:]
            pair = (a * c + b * e) * torch.cos(d) + (a * e - b * c) * torch.sin(d)
            ref[n, m] = (z ** ((n - m) / B) * pair).sum()
    for centre in [0, 106, 1000]:
        torch.testing.assert_close(scores(centre), ref, rtol=1e-9, atol=1e-9)
    # C09: a decoding step (last query row only) equals the last row of the full call
    last = scaled_q(106, slice(S - 1, S))
    assert torch.equal(last[0, 0, 0], scaled_q(106)[0, 0, -1])


def test_xpos_scale_gradcheck_and_opcheck():
    z = xpos_zeta(16).double().requires_grad_()
    pos = torch.arange(-3, 9).view(3, 4)
    assert torch.autograd.gradcheck(lambda zz: xpos_scale(pos, zz, 8.0, 2), (z,))
    assert torch.autograd.gradcheck(lambda zz: xpos_scale(pos, zz, 8.0, 2, True), (z,))
    zf = xpos_zeta(16)
    for args in [(pos, zf), (pos, z), (pos.t(), zf, 256.0, 3, True), (torch.arange(0), zf)]:
        torch.library.opcheck(torch.ops.posenc.xpos_scale.default, args)
    torch.library.opcheck(torch.ops.posenc.xpos_zeta.default, (16, 0.4))


def test_C16_xpos_scale_compile_no_recompile():
    cnt = torch._dynamo.testing.CompileCounter()
    z = xpos_zeta(16)
    f = torch.compile(lambda p, zz: xpos_scale(p, zz, 512.0, 7), backend=cnt, fullgraph=True, dynamic=True)
    for n in [5, 9, 13]:
        p = torch.arange(n)
        torch.testing.assert_close(f(p, z), xpos_scale(p, z, 512.0, 7), rtol=0, atol=0)
    assert cnt.frame_count == 1


def test_C07_xpos_scale_non_contiguous():
    z = xpos_zeta(32, 0.4).double()
    zz = torch.stack([z, z], 1)[:, 0]  # stride 2
    pos = torch.arange(24).view(4, 6).t()
    assert not zz.is_contiguous() and not pos.is_contiguous()
    assert torch.equal(xpos_scale(pos, zz, 64.0, 5), xpos_scale(pos.contiguous(), z, 64.0, 5))


def test_xpos_bad_inputs():
    z = xpos_zeta(8)
    with pytest.raises(RuntimeError, match=r"posenc.xpos_scale: argument 'positions' must have dtype int64 or int32, but got dtype Float"):
        xpos_scale(torch.zeros(3), z)
    with pytest.raises(RuntimeError, match=r"posenc.xpos_scale: argument 'zeta' must be a 1-D tensor of shape \(n,\), but got a 2-D"):
        xpos_scale(torch.arange(3), z[None])
    with pytest.raises(RuntimeError, match=r"posenc.xpos_scale: argument 'zeta' must have dtype float32 or float64, but got dtype Half"):
        xpos_scale(torch.arange(3), z.half())
    with pytest.raises(RuntimeError, match=r"posenc.xpos_scale: argument 'scale_base' must be finite and > 0, but got 0"):
        xpos_scale(torch.arange(3), z, 0.0)
    with pytest.raises(RuntimeError, match=r"posenc.xpos_zeta: argument 'rotary_dim' must be > 0, but got 0"):
        xpos_zeta(0)
    with pytest.raises(RuntimeError, match=r"posenc.xpos_zeta: argument 'gamma' must be finite and > 0, but got -0.1"):
        xpos_zeta(8, -0.1)


def test_degenerate_derived_attention_factor_is_an_error():
    # yarn: 0.1 * mscale_all_dim * ln(s) + 1 == 0 divides by zero; longrope:
    # original_max_position_embeddings == 1 divides by ln 1 = 0; a negative yarn ratio would
    # scale q and k by a negative number. All used to come back as inf / negative factors.
    s = 4.0
    zero_den = -1.0 / (0.1 * math.log(s))
    bad = [
        dict(rope_type="yarn", factor=s, original_max_position_embeddings=8, mscale=1.0, mscale_all_dim=zero_den),
        dict(rope_type="yarn", factor=s, original_max_position_embeddings=8, mscale=1.0, mscale_all_dim=-100.0),
        dict(rope_type="longrope", factor=s, original_max_position_embeddings=1, max_position_embeddings=4,
             short_factor=[1.0] * 4, long_factor=[2.0] * 4),
    ]
    for kw in bad:
        t = kw.pop("rope_type")
        with pytest.raises(RuntimeError, match=rf"posenc.rope_scaling_inv_freq: argument 'attention_factor' derived for rope_type \"{t}\" must be finite and > 0.*, but got"):
            rope_scaling_inv_freq(t, 1e4, 8, **kw)
        with pytest.raises(RuntimeError, match=r"argument 'attention_factor' derived"):
            RopeConfig(8, t, **kw)
    # An explicit attention_factor wins (rule 1), so the same fields are then fine.
    _, af = rope_scaling_inv_freq("longrope", 1e4, 8, factor=s, original_max_position_embeddings=1,
                                  attention_factor=1.5, short_factor=[1.0] * 4, long_factor=[2.0] * 4)
    assert af == 1.5


def test_config_fields_of_the_wrong_type_name_the_field():
    name = r"posenc.rope_scaling_inv_freq: argument"
    cases = [
        (dict(rope_type="linear", factor=[2.0]), r"'factor' must be a number, but got list \[2.0\]"),
        (dict(rope_type="yarn", factor=2.0, original_max_position_embeddings=8, beta_fast={}),
         r"'beta_fast' must be a number, but got dict \{\}"),
        (dict(rope_type="longrope", factor=2.0, original_max_position_embeddings=8,
              short_factor="1.0", long_factor=[1.0] * 8), r"'short_factor' must be a list of numbers, but got str '1.0'"),
        (dict(rope_type="longrope", factor=2.0, original_max_position_embeddings=8,
              short_factor=[1.0] * 8, long_factor=[[1.0]] * 8), r"'long_factor\[0\]' must be a number, but got list \[1.0\]"),
        (dict(rope_type="dynamic", factor=2.0, max_position_embeddings=4096.5),
         r"'max_position_embeddings' must be an integer, but got float 4096.5"),
        (dict(rope_type="dynamic", factor=2.0, max_position_embeddings=2**70),
         r"'max_position_embeddings' must be an integer that fits in int64, but got int"),
    ]
    for kw, msg in cases:
        with pytest.raises(RuntimeError, match=name + " " + msg):
            RopeConfig(16, **kw)
    with pytest.raises(RuntimeError, match=name + r" 'head_dim' must be an integer, but got str '16'"):
        RopeConfig("16")
    # transformers reads lengths with Python arithmetic: integral floats work there and here,
    # stored as ints so that every reader (RotaryEmbedding, RopeKVCache) can use them.
    cfg = rope_from_config({"head_dim": 16, "max_position_embeddings": 64.0,
                            "rope_scaling": {"rope_type": "dynamic", "factor": 2.0}})
    assert cfg.max_position_embeddings == 64 and type(cfg.max_position_embeddings) is int
    ref = RopeConfig(16, "dynamic", factor=2.0, max_position_embeddings=64)
    assert torch.equal(cfg.compute(seq_len=100)[0], ref.compute(seq_len=100)[0])
    k = torch.randn(1, 1, 70, 16)
    assert torch.equal(posenc.RopeKVCache(cfg)(k, k, k)[1], posenc.RopeKVCache(ref)(k, k, k)[1])
