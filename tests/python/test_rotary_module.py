"""RotaryEmbedding with RoPE scalings, xPos, packed sequences and the precision modes, in its
three twins: posenc.nn (scriptable Python), posenc.cpp (the bound C++ module) and, through
test_rotary_module.cpp, posenc::nn in C++.

References: an fp64 rotation written here from the RoFormer formula (Su et al. 2021, eq. 34)
with the frequencies and attention factor of RopeConfig.compute and the xPos factors of Sun et
al. 2022 sec. 3.2; for yarn, longrope and dynamic also transformers' LlamaRotaryEmbedding +
apply_rotary_pos_emb. transformers is a hard requirement (as in test_rope_scaling.py).
"""
import math

import pytest
import torch
import torch._dynamo.testing
import transformers
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb as hf_apply

import posenc
from posenc import ops
from posenc.rope_config import RopeConfig

transformers.logging.set_verbosity_error()

F64 = torch.float64
IMPLS = ["nn", "cpp"]
HEAD_DIM = 16
ORIG = 32  # original_max_position_embeddings of the scaled types


def _short_long(n):
    g = torch.Generator().manual_seed(n)
    return (1.0 + torch.rand(n, generator=g, dtype=F64)).tolist(), (
        1.0 + 8.0 * torch.rand(n, generator=g, dtype=F64)
    ).tolist()


def config(rope_type, head_dim=HEAD_DIM, partial=1.0, base=1e4):
    """A small RopeConfig of each type (lengths small enough to cross the switch points)."""
    n = (int(head_dim * partial) + 1) // 2
    fields = {
        "default": {},
        "linear": dict(factor=4.0),
        "ntk": dict(factor=4.0),
        "dynamic": dict(factor=4.0, max_position_embeddings=ORIG),
        "yarn": dict(factor=4.0, original_max_position_embeddings=ORIG),
        "llama3": dict(
            factor=8.0, original_max_position_embeddings=ORIG, low_freq_factor=1.0, high_freq_factor=4.0
        ),
        "longrope": dict(
            factor=4.0, original_max_position_embeddings=ORIG, max_position_embeddings=4 * ORIG,
            short_factor=_short_long(n)[0], long_factor=_short_long(n)[1],
        ),
        "xpos": dict(xpos_gamma=0.4, xpos_scale_base=64.0),
    }[rope_type]
    return RopeConfig(head_dim=head_dim, rope_type=rope_type, rope_theta=base,
                      partial_rotary_factor=partial, **fields)


TYPES = ["default", "linear", "ntk", "dynamic", "yarn", "llama3", "longrope", "xpos"]


def make(impl, *args, **kwargs):
    return getattr(posenc, impl).RotaryEmbedding(*args, **kwargs)


def freqs(m, seq_len=None):
    return m.frequencies(seq_len)


def state(m):
    return dict(posenc.cpp.state_dict(m)) if isinstance(m, posenc.cpp.RotaryEmbedding) else m.state_dict()


def ref_rope(x, pos, inv_freq, rotary_dim, interleaved=False, attention_factor=1.0, zeta=None,
             scale_base=512.0, centre=0, inverse=False, fp32_angle=True):
    """fp64 RoPE of x (B, H, S, D) at absolute positions pos (S,) or (B, S) (eq. 34): pair i
    rotated by pos * inv_freq[i], times attention_factor, times the xPos factor
    zeta_i ** (+-(pos - centre) / scale_base). fp32_angle: the angle is the float32 product
    float(pos) * inv_freq (the documented reference-precision rounding); else fp64."""
    x = x.to(F64)
    pos = pos.reshape(-1, pos.shape[-1])[:, None, :, None]  # (B|1, 1, S, 1)
    if fp32_angle:
        ang = (pos.float() * inv_freq.float()).to(F64)
    else:
        ang = pos.to(F64) * inv_freq.to(F64)
    cos, sin = torch.cos(ang) * attention_factor, torch.sin(ang) * attention_factor
    if zeta is not None:
        e = (pos.to(F64) - centre) / scale_base
        sc = zeta.to(F64) ** (-e if inverse else e)
        cos, sin = cos * sc, sin * sc
    half = rotary_dim // 2
    out = x.clone()
    if interleaved:
        a, b = x[..., 0:rotary_dim:2], x[..., 1:rotary_dim:2]
        out[..., 0:rotary_dim:2] = a * cos - b * sin
        out[..., 1:rotary_dim:2] = a * sin + b * cos
    else:
        a, b = x[..., :half], x[..., half:rotary_dim]
        out[..., :half] = a * cos - b * sin
        out[..., half:rotary_dim] = a * sin + b * cos
    return out


def expected(cfg, q, k, pos, seq_len, interleaved=False, centre=0):
    inv, af = cfg.compute(seq_len=seq_len)
    zeta = cfg.xpos_zeta() if cfg.rope_type == "xpos" else None
    r = 2 * inv.numel()
    kw = dict(interleaved=interleaved, attention_factor=af, zeta=zeta,
              scale_base=cfg.xpos_scale_base, centre=centre)
    return ref_rope(q, pos, inv, r, **kw), ref_rope(k, pos, inv, r, inverse=True, **kw)


# ---- every type: paper reference, twins bit for bit, state, bf16 ---------------------------


@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("partial", [1.0, 0.5])
@pytest.mark.parametrize("rope_type", TYPES)
def test_every_type_equals_reference_and_twins_agree(rope_type, partial, interleaved):
    cfg = config(rope_type, partial=partial)
    centre = 20 if rope_type == "xpos" else 0
    mods = {impl: make(impl, HEAD_DIM, scaling=cfg, interleaved=interleaved, xpos_centre=centre)
            for impl in IMPLS}
    g = torch.Generator().manual_seed(3)
    q = torch.randn(2, 3, 12, HEAD_DIM, generator=g)
    k = torch.randn(2, 1, 12, HEAD_DIM, generator=g)
    # offset 4: total length 16 (short); offset 30: 42 > ORIG (long / dynamic rescaled).
    for offset in (4, 30):
        seq_len = offset + 12
        want_q, want_k = expected(cfg, q, k, torch.arange(offset, seq_len), seq_len, interleaved, centre)
        outs = {impl: m(q, k, offset=offset) for impl, m in mods.items()}
        for impl in IMPLS:
            torch.testing.assert_close(outs[impl][0].double(), want_q, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(outs[impl][1].double(), want_k, rtol=1e-5, atol=1e-5)
        for a, b in zip(outs["nn"], outs["cpp"]):
            assert torch.equal(a, b)
    for impl, m in mods.items():
        assert state(m) == {}
        assert m.attention_factor == cfg.compute()[1]
        f = freqs(m)
        assert f.dtype == torch.float32 and torch.equal(f, cfg.compute()[0])
        m.to(torch.bfloat16)
        assert freqs(m).dtype == torch.float32 and torch.equal(freqs(m), f)
        assert freqs(m, 100).dtype == torch.float32
        q2, k2 = m(q.bfloat16(), k.bfloat16(), offset=30)
        assert q2.dtype == torch.bfloat16
        want_q, _ = expected(cfg, q.bfloat16().float(), k, torch.arange(30, 42), 42, interleaved, centre)
        torch.testing.assert_close(q2.double(), want_q, rtol=2e-2, atol=2e-2)


def test_attention_factor_on_both_q_and_k_and_xpos_relative():
    # yarn: q.k of the module is af^2 times the plain rotation's; xpos: q.k depends only on
    # the distance, whatever the offset (so cached keys stay valid).
    cfg = config("yarn")
    m = posenc.nn.RotaryEmbedding(HEAD_DIM, scaling=cfg)
    af = m.attention_factor
    assert af == pytest.approx(0.1 * math.log(4.0) + 1.0)
    q = torch.randn(1, 1, 5, HEAD_DIM, dtype=F64)
    qr, kr = m(q, q)
    inv = cfg.compute()[0]
    plain = ops.rope(q, None, inv)
    torch.testing.assert_close(qr, plain * af, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(kr, plain * af, rtol=1e-12, atol=1e-12)

    # (exact precision: fp64 angles, so the invariance holds to fp64 rounding)
    x = posenc.nn.RotaryEmbedding(HEAD_DIM, scaling=config("xpos"), xpos_centre=100, precision="exact")
    q = torch.randn(1, 1, 1, HEAD_DIM, dtype=F64)
    k = torch.randn(1, 1, 1, HEAD_DIM, dtype=F64)
    scores = []
    for p in (0, 37, 250):
        qa, _ = x(q, k, offset=p + 3)
        _, kb = x(q, k, offset=p)
        scores.append((qa * kb).sum().item())
    assert scores[0] == pytest.approx(scores[1], rel=1e-10)
    assert scores[0] == pytest.approx(scores[2], rel=1e-10)
    # ... and the magnitude is the xPos one, not 1.
    qa, _ = x(q, k, offset=3)
    _, kb = posenc.nn.RotaryEmbedding(HEAD_DIM)(q, k)
    assert abs((qa * kb).sum().item() - scores[0]) > 1e-6


# ---- parity with transformers (yarn, longrope, dynamic) ------------------------------------


def llama_config(rope_type):
    head_dim, heads = 32, 2
    params = {"rope_type": rope_type, "rope_theta": 1e4}
    max_pos = ORIG
    if rope_type == "yarn":
        params.update(factor=4.0, original_max_position_embeddings=ORIG)
        max_pos = 4 * ORIG
    elif rope_type == "longrope":
        short, long = _short_long(head_dim // 2)
        params.update(factor=4.0, original_max_position_embeddings=ORIG, short_factor=short,
                      long_factor=long)
        max_pos = 4 * ORIG
    elif rope_type == "dynamic":
        params.update(factor=2.0)
    return LlamaConfig(hidden_size=heads * head_dim, num_attention_heads=heads, head_dim=head_dim,
                       max_position_embeddings=max_pos, rope_parameters=params)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("rope_type", ["yarn", "longrope", "dynamic"])
@pytest.mark.parametrize("length", [20, 48])
def test_transformers_parity(rope_type, length, impl):
    cfg = llama_config(rope_type)
    cls = getattr(posenc, impl).RotaryEmbedding
    m = cls.from_config(cfg)
    hf = LlamaRotaryEmbedding(cfg)
    q = torch.randn(2, 2, length, 32)
    k = torch.randn(2, 2, length, 32)
    pos = torch.arange(length)[None].expand(2, -1)
    cos, sin = hf(q, pos)
    q_hf, k_hf = hf_apply(q, k, cos, sin)
    q_ours, k_ours = m(q, k)  # seq_len inferred: length, as transformers' max(position_ids) + 1
    assert (q_ours - q_hf).abs().max().item() <= 1e-6
    assert (k_ours - k_hf).abs().max().item() <= 1e-6
    # The same with (B, S) positions, from which both infer the length.
    q_p, k_p = m(q, k, pos)
    assert torch.equal(q_p, q_ours) and torch.equal(k_p, k_ours)


# ---- length-dependent types: seq_len explicit vs inferred, switch at the original length ---


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("rope_type", ["dynamic", "longrope"])
def test_seq_len_explicit_inferred_and_switch(rope_type, impl):
    cfg = config(rope_type)
    m = make(impl, HEAD_DIM, scaling=cfg)
    short = cfg.compute()[0]
    # The switch: <= ORIG uses the construction table, ORIG + 1 the other one.
    assert torch.equal(freqs(m, ORIG), short) and torch.equal(freqs(m, 0), short)
    assert torch.equal(freqs(m, None), short)
    above = freqs(m, ORIG + 1)
    assert torch.equal(above, cfg.compute(ORIG + 1)[0]) and not torch.equal(above, short)
    if rope_type == "dynamic":
        assert torch.equal(freqs(m, 3 * ORIG), cfg.compute(3 * ORIG)[0])
        assert not torch.equal(freqs(m, 3 * ORIG), above)
    q = torch.randn(1, 2, 4, HEAD_DIM)
    k = torch.randn(1, 2, 4, HEAD_DIM)
    r = HEAD_DIM
    af = cfg.compute()[1]

    def op(x, inv, offset, positions=None):
        return ops.rope(x, positions, inv, offset, r, attention_factor=af)

    # No positions: offset + S. offset 28 -> 32 (short); offset 29 -> 33 (long).
    for offset, table in ((28, short), (29, above)):
        qa, ka = m(q, k, offset=offset)
        assert torch.equal(qa, op(q, table, offset)) and torch.equal(ka, op(k, table, offset))
        qb, kb = m(q, k, offset=offset, seq_len=offset + 4)
        assert torch.equal(qa, qb) and torch.equal(ka, kb)
    # Explicit seq_len wins over the inferred one (decode step at position 5 of a 100-long context).
    qa, _ = m(q, k, offset=5, seq_len=100)
    assert torch.equal(qa, op(q, cfg.compute(100)[0], 5))
    # Positions (B, S): max + 1 + offset.
    pos = torch.tensor([[0, 3, 31, 2]])
    qa, _ = m(q, k, pos, 0)
    assert torch.equal(qa, op(q, short, 0, pos))
    qa, _ = m(q, k, pos, 1)
    assert torch.equal(qa, op(q, above, 1, pos))
    qb, _ = m(q, k, pos, 1, seq_len=33)
    assert torch.equal(qa, qb)
    # Packed: the longest sequence + offset.
    x = torch.randn(40, 2, HEAD_DIM)
    cu = torch.tensor([0, 8, 40])  # longest 32
    m_thd = make(impl, HEAD_DIM, scaling=cfg, layout="thd")
    for offset, table in ((0, short), (1, above)):
        qa, _ = m_thd(x, x, cu_seqlens=cu, offset=offset)
        want = ops.rope(x, None, table, offset, r, layout="thd", cu_seqlens=cu, attention_factor=af)
        assert torch.equal(qa, want)


def test_dynamic_cache_recomputes_only_on_change():
    m = posenc.nn.RotaryEmbedding(HEAD_DIM, scaling=config("dynamic"))
    first = m.inv_freq
    m.frequencies(ORIG - 5)
    assert m.inv_freq is first  # same effective length (max(seq_len, max_pos)): no recompute
    t = m.frequencies(50)
    assert m.inv_freq is t and m.frequencies(50) is t
    assert m.frequencies(51) is not t
    assert torch.equal(m.frequencies(ORIG), first)


# ---- precision ------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLS)
def test_exact_precision_to_1e6(impl):
    d, base = 128, 1e6
    g = torch.Generator().manual_seed(5)
    pos = torch.cat([torch.randint(0, 1_000_001, (62,), generator=g), torch.tensor([999_999, 1_000_000])])
    q = torch.randn(1, 2, pos.numel(), d, generator=g)
    k = torch.randn(1, 1, pos.numel(), d, generator=g)
    inv64 = base ** (-torch.arange(0, d, 2, dtype=F64) / d)
    want_q = ref_rope(q, pos, inv64, d, fp32_angle=False)
    want_k = ref_rope(k, pos, inv64, d, fp32_angle=False)

    def rel(out, want):
        return ((out.double() - want).abs().max() / want.abs().max()).item()

    exact = make(impl, d, base=base, precision="exact")
    assert freqs(exact).dtype == F64
    qe, ke = exact(q, k, pos)
    assert qe.dtype == torch.float32
    assert rel(qe, want_q) <= 1e-6 and rel(ke, want_k) <= 1e-6
    qr, _ = make(impl, d, base=base)(q, k, pos)
    assert rel(qr, want_q) > 1e-6  # reference precision drifts at these positions
    # Exact with a scaling (default type: same frequencies), and after a bfloat16 cast.
    scaled = make(impl, d, scaling=RopeConfig(head_dim=d, rope_theta=base), precision="exact")
    assert rel(scaled(q, k, pos)[0], want_q) <= 1e-6
    exact.to(torch.bfloat16)
    assert freqs(exact).dtype == F64


# ---- layouts and positions -------------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("rope_type", ["default", "yarn", "xpos", "longrope"])
def test_thd_equals_per_sequence_bhsd(rope_type, impl):
    cfg = config(rope_type)
    kw = dict(scaling=cfg, xpos_centre=3)
    packed = make(impl, HEAD_DIM, layout="thd", **kw)
    lens = [5, 0, 9, 1]
    cu = torch.tensor([0, 5, 5, 14, 15])
    q = torch.randn(15, 3, HEAD_DIM)
    k = torch.randn(15, 1, HEAD_DIM)
    qp, kp = packed(q, k, offset=2, cu_seqlens=cu, seq_len=11)
    ref = make(impl, HEAD_DIM, **kw)
    start = 0
    for n in lens:
        qs = q[start:start + n].transpose(0, 1)[None]  # (1, H, n, D)
        ks = k[start:start + n].transpose(0, 1)[None]
        qb, kb = ref(qs, ks, offset=2, seq_len=11)
        assert torch.equal(qp[start:start + n], qb[0].transpose(0, 1))
        assert torch.equal(kp[start:start + n], kb[0].transpose(0, 1))
        start += n


@pytest.mark.parametrize("impl", IMPLS)
def test_bshd_and_batched_positions(impl):
    cfg = config("yarn")
    bhsd = make(impl, HEAD_DIM, scaling=cfg, interleaved=True)
    bshd = make(impl, HEAD_DIM, scaling=cfg, interleaved=True, layout="bshd")
    q = torch.randn(2, 6, 3, HEAD_DIM)
    k = torch.randn(2, 6, 1, HEAD_DIM)
    pos = torch.tensor([[0, 1, 2, 3, 4, 5], [7, 7, 2, 40, 1, 0]])
    qa, ka = bshd(q, k, pos, 3)
    qb, kb = bhsd(q.transpose(1, 2), k.transpose(1, 2), pos, 3)
    assert torch.equal(qa, qb.transpose(1, 2)) and torch.equal(ka, kb.transpose(1, 2))
    want_q, want_k = expected(cfg, q.transpose(1, 2), k.transpose(1, 2), pos + 3, None, True)
    torch.testing.assert_close(qa.transpose(1, 2).double(), want_q, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ka.transpose(1, 2).double(), want_k, rtol=1e-5, atol=1e-5)


# ---- TorchScript and torch.compile --------------------------------------------------------------


@pytest.mark.parametrize("rope_type", TYPES)
def test_script_equals_eager(rope_type):
    kw = dict(scaling=config(rope_type), xpos_centre=7)
    eager = posenc.nn.RotaryEmbedding(HEAD_DIM, **kw)
    s = torch.jit.script(posenc.nn.RotaryEmbedding(HEAD_DIM, **kw))
    q = torch.randn(1, 2, 6, HEAD_DIM)
    k = torch.randn(1, 1, 6, HEAD_DIM)
    for args, fkw in (((), dict(offset=3)), ((), dict(offset=40)),
                      ((torch.tensor([1, 50, 2, 3, 0, 9]),), {}), ((), dict(offset=2, seq_len=90))):
        a, b = s(q, k, *args, **fkw), eager(q, k, *args, **fkw)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert torch.equal(s.frequencies(70), eager.frequencies(70))
    assert dict(s.state_dict()) == {}
    thd = posenc.nn.RotaryEmbedding(HEAD_DIM, layout="thd", **kw)
    st = torch.jit.script(thd)
    x, cu = torch.randn(9, 2, HEAD_DIM), torch.tensor([0, 4, 9])
    assert torch.equal(st(x, x, cu_seqlens=cu, offset=30)[0], thd(x, x, cu_seqlens=cu, offset=30)[0])


@pytest.mark.parametrize("rope_type", ["yarn", "xpos", "llama3"])
def test_compile_fullgraph_static_type(rope_type):
    m = posenc.nn.RotaryEmbedding(HEAD_DIM, scaling=config(rope_type), xpos_centre=4)
    cnt = torch._dynamo.testing.CompileCounter()
    f = torch.compile(m, backend=cnt, fullgraph=True, dynamic=True)
    for s in (5, 7, 9):
        q = torch.randn(2, 2, s, HEAD_DIM)
        k = torch.randn(2, 1, s, HEAD_DIM)
        a, b = f(q, k, offset=s), m(q, k, offset=s)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert cnt.frame_count == 1


@pytest.mark.parametrize("rope_type", ["longrope", "dynamic"])
def test_compile_fullgraph_length_dependent_with_explicit_seq_len(rope_type):
    # With seq_len passed there is no tensor read, so the graph stays whole (it may recompile
    # when the table changes).
    m = posenc.nn.RotaryEmbedding(HEAD_DIM, scaling=config(rope_type))
    f = torch.compile(m, backend="eager", fullgraph=True)
    for n in (20, 40, 60):
        q = torch.randn(1, 2, 4, HEAD_DIM)
        a, b = f(q, q, offset=n - 4, seq_len=n), m(q, q, offset=n - 4, seq_len=n)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


# ---- from_config, repr, devices -------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLS)
def test_from_config(impl):
    cls = getattr(posenc, impl).RotaryEmbedding
    hf_cfg = llama_config("yarn")
    a = cls.from_config(hf_cfg, interleaved=True)
    b = cls.from_config(posenc.hf.rope_from_config(hf_cfg), interleaved=True)
    q = torch.randn(1, 2, 5, 32)
    assert torch.equal(a(q, q, offset=3)[0], b(q, q, offset=3)[0])
    assert "scaling=yarn" in repr(a) and "interleaved=" in repr(a)
    assert "precision=exact" in repr(cls(8, precision="exact"))


def test_tables_follow_device_and_keep_dtype():
    m = posenc.nn.RotaryEmbedding(HEAD_DIM, scaling=config("longrope"), precision="exact")
    m.to("meta")
    assert m.inv_freq.device.type == "meta" and m.inv_freq.dtype == F64
    assert m.long_inv_freq.device.type == "meta" and m.long_inv_freq.dtype == F64
    x = posenc.nn.RotaryEmbedding(HEAD_DIM, scaling=config("xpos"))
    x.to("meta")
    assert x.xpos_zeta.device.type == "meta" and x.xpos_zeta.dtype == torch.float32
    q = torch.randn(1, 1, 3, HEAD_DIM)  # CPU inputs: the module copies its tables over
    y = posenc.nn.RotaryEmbedding(HEAD_DIM, scaling=config("xpos"))
    assert torch.equal(x.to("cpu")(q, q)[0], y(q, q)[0])


# ---- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLS)
def test_option_errors(impl):
    cls = getattr(posenc, impl).RotaryEmbedding
    cfg = config("yarn", partial=0.5)  # 8 rotary dims of 16
    name = r"posenc\.RotaryEmbedding: option"
    with pytest.raises(ValueError, match=name + r" 'scaling' must have head_dim == dim \(32\), but got head_dim 16"):
        cls(32, scaling=cfg)
    with pytest.raises(ValueError, match=name + r" 'rotary_dim' must equal 2 \* scaling's number of frequencies \(8\).*but got 16"):
        cls(16, rotary_dim=16, scaling=cfg)
    with pytest.raises(ValueError, match=name + r" 'base' must be left at 10000 or equal scaling.rope_theta \(500000\).*but got 1000"):
        cls(16, base=1000.0, scaling=config("yarn", base=5e5))
    with pytest.raises(ValueError, match=name + r" 'precision' must be \"reference\" or \"exact\", but got \"fp64\""):
        cls(16, precision="fp64")
    with pytest.raises(ValueError, match=name + r" 'layout' must be \"bhsd\", \"bshd\" or \"thd\", but got \"sbhd\""):
        cls(16, layout="sbhd")
    with pytest.raises(TypeError, match=name + r" 'scaling' must be a posenc.rope_config.RopeConfig"):
        cls(16, scaling={"rope_type": "yarn"})
    # Fine: rotary_dim equal to the config's, base equal to rope_theta.
    cls(16, rotary_dim=8, base=5e5, scaling=config("yarn", partial=0.5, base=5e5))


@pytest.mark.parametrize("impl", IMPLS)
def test_forward_errors(impl):
    err = (RuntimeError, torch.jit.Error)
    mods = [make(impl, 8, layout="thd"), make(impl, 8)]
    if impl == "nn":
        mods += [torch.jit.script(posenc.nn.RotaryEmbedding(8, layout="thd")),
                 torch.jit.script(posenc.nn.RotaryEmbedding(8))]
    thd, bhsd = mods[0::2], mods[1::2]
    x3, x4 = torch.randn(5, 1, 8), torch.randn(1, 1, 5, 8)
    for m in thd:
        with pytest.raises(err, match=r"posenc.RotaryEmbedding: argument 'cu_seqlens' must be given with layout \"thd\", but got None"):
            m(x3, x3)
    for m in bhsd:
        with pytest.raises(err, match=r"argument 'cu_seqlens' must be None with layout \"bhsd\", but got a tensor"):
            m(x4, x4, cu_seqlens=torch.tensor([0, 5]))
        with pytest.raises(err, match=r"posenc.RotaryEmbedding: argument 'seq_len' must be >= 0 \(or None\), but got -1"):
            m(x4, x4, seq_len=-1)
    # The op's own checks still apply (positions with "thd").
    with pytest.raises(err, match=r"posenc.rope_qk: argument 'positions'"):
        thd[0](x3, x3, torch.arange(5), cu_seqlens=torch.tensor([0, 5]))
    m = make(impl, 8, scaling=RopeConfig(head_dim=8, rope_type="dynamic", factor=2.0, max_position_embeddings=4))
    with pytest.raises(RuntimeError, match=r"argument 'seq_len' must be >= 0"):
        m.frequencies(-3)


def test_invalid_config_raises_the_config_error():
    cfg = config("yarn")
    cfg.factor = -1.0  # mutated after validation
    for impl in IMPLS:
        with pytest.raises(RuntimeError, match=r"posenc.rope_scaling_inv_freq: argument 'factor'"):
            make(impl, HEAD_DIM, scaling=cfg)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("rope_type", ["dynamic", "longrope"])
def test_negative_offset_or_positions_infer_length_zero(rope_type, impl):
    # Negative offsets / positions are valid for the op; the inferred total length must not
    # become a negative 'seq_len' the caller never passed (it is clamped at 0: the default /
    # short table), for the scripted twin too.
    m = make(impl, HEAD_DIM, scaling=config(rope_type))
    mods = [m] + ([torch.jit.script(m)] if impl == "nn" else [])
    q = torch.randn(1, 2, 3, HEAD_DIM, dtype=F64)
    inv = freqs(m, 0).double()
    af = m.attention_factor
    for mod in mods:
        for kw in [dict(offset=-10), dict(positions=torch.tensor([-5, -4, -3])),
                   dict(positions=torch.tensor([-5, -4, -3]), offset=-1)]:
            pos = kw.get("positions", torch.arange(3)) + kw.get("offset", 0)
            got = mod(q, q, **kw)[0]
            want = ref_rope(q, pos, inv, 2 * inv.numel(), attention_factor=af)
            assert torch.allclose(got, want, atol=1e-12)
    thd = make(impl, HEAD_DIM, scaling=config(rope_type), layout="thd")
    x = torch.randn(4, 2, HEAD_DIM, dtype=F64)
    got = thd(x, x, offset=-7, cu_seqlens=torch.tensor([0, 1, 4]))[0]
    want = ref_rope(x.permute(1, 0, 2)[None], torch.tensor([-7, -7, -6, -5]), inv, 2 * inv.numel(),
                    attention_factor=af)[0].permute(1, 0, 2)
    assert torch.allclose(got, want, atol=1e-12)


def test_cpp_to_returns_the_module_and_takes_nn_module_arguments():
    # torch.nn.Module.to semantics: chaining, strings, keywords; frequencies keep their dtype.
    m = posenc.cpp.RotaryEmbedding(HEAD_DIM, precision="exact")
    assert m.to(torch.bfloat16) is m
    assert m.frequencies().dtype == F64
    assert m.to("meta") is m and m.frequencies().device.type == "meta"
    assert m.to(device="cpu", dtype=torch.float16) is m and m.frequencies().device.type == "cpu"
    q = torch.randn(1, 1, 3, HEAD_DIM)
    assert torch.equal(m(q, q)[0], posenc.nn.RotaryEmbedding(HEAD_DIM, precision="exact")(q, q)[0])
    t = posenc.cpp.T5RelativeBias(4).to(torch.float64)
    assert posenc.cpp.state_dict(t)["weight"].dtype == F64
    with pytest.raises(TypeError, match="only accepts floating point or complex dtypes"):
        t.to(torch.int64)
