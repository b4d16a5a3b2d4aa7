"""posenc.nn (scriptable Python twins) and posenc.cpp (bound C++ modules).

Each twin: outputs equal the op it wraps and an fp64 reference written from the paper;
torch.jit.script gives the eager result; state_dict keys equal the C++ module's; a state_dict
moved C++ -> Python and Python -> C++ gives identical outputs. Plus the field cases that apply
to modules (C05, C15, C01 via RotaryEmbedding.to(bfloat16)) and torch.compile(fullgraph=True)
of a small model made of all of them.
"""
import inspect
import math

import pytest
import torch
from posenc_test_models import TinyPositionalAttention

import posenc
from posenc import ops

NAMES = [
    "SinusoidalPositionalEncoding",
    "LearnedPositionalEmbedding",
    "RotaryEmbedding",
    "ALiBi",
    "T5RelativeBias",
    "KERPLEBias",
    "TransformerXLRelativeScore",
]


def _inputs(name):
    """Non-default constructor kwargs and forward (args, kwargs) for each module."""
    g = torch.Generator().manual_seed(1)
    if name == "SinusoidalPositionalEncoding":
        return dict(dim=8, base=500.0, interleaved=False), (torch.randn(2, 5, 8, generator=g),), dict(offset=3)
    if name == "LearnedPositionalEmbedding":
        return dict(max_len=16, dim=8), (torch.randn(2, 5, 8, generator=g),), dict(offset=2)
    if name == "RotaryEmbedding":
        q = torch.randn(2, 5, 3, 8, generator=g)
        k = torch.randn(2, 5, 1, 8, generator=g)
        return (
            dict(dim=8, rotary_dim=6, base=1000.0, interleaved=True, layout="bshd"),
            (q, k),
            dict(offset=4),
        )
    if name == "ALiBi":
        return dict(num_heads=6, causal=False), (3, 5), dict(q_offset=2, k_offset=0)
    if name == "T5RelativeBias":
        return (
            dict(num_heads=4, num_buckets=16, max_distance=64, bidirectional=False),
            (4, 6),
            dict(q_offset=2),
        )
    if name == "KERPLEBias":
        return dict(num_heads=3, kind="power", causal=False, eps=0.05), (4, 6), dict(q_offset=1)
    if name == "TransformerXLRelativeScore":
        return (
            dict(d_model=8, num_heads=2, head_dim=4, base=100.0),
            (torch.randn(2, 2, 3, 4, generator=g),),
            dict(mem_len=2),
        )
    raise AssertionError(name)


def _as_tuple(out):
    return out if isinstance(out, tuple) else (out,)


def _assert_identical(a, b):
    for x, y in zip(_as_tuple(a), _as_tuple(b), strict=True):
        assert x.shape == y.shape and x.dtype == y.dtype
        assert torch.equal(x, y), (x - y).abs().max()


def _pair(name):
    kwargs, args, fkw = _inputs(name)
    py = getattr(posenc.nn, name)(**kwargs)
    cc = getattr(posenc.cpp, name)(**kwargs)
    return py, cc, args, fkw


# ------------------------------------------------------------------ fp64 references (papers)


def ref_sinusoidal(positions, dim, base, interleaved):
    p = positions.double()[:, None]
    h = dim // 2
    i = torch.arange(h, dtype=torch.float64)
    if interleaved:  # Vaswani et al. §3.5: PE(p, 2i) = sin(p / base^(2i/d)), PE(p, 2i+1) = cos
        ang = p * base ** (-2 * i / dim)
        return torch.stack([ang.sin(), ang.cos()], -1).reshape(len(positions), dim)
    ang = p * torch.exp(-i * math.log(base) / max(h - 1, 1))  # tensor2tensor
    return torch.cat([ang.sin(), ang.cos()], -1)


def ref_rope(x, positions, rotary_dim, base, interleaved):
    # Su et al. eq. 34 on (B, H, S, D) in fp64: pair i rotated by pos * base^(-2i/R).
    x = x.double()
    r = rotary_dim
    inv = base ** (-torch.arange(0, r, 2, dtype=torch.float64) / r)
    ang = positions.double()[:, None] * inv[None]  # (S, R/2)
    cos, sin = ang.cos(), ang.sin()
    rot, rest = x[..., :r], x[..., r:]
    if interleaved:
        a, b = rot[..., 0::2], rot[..., 1::2]
        out = torch.stack([a * cos - b * sin, a * sin + b * cos], -1).flatten(-2)
    else:
        a, b = rot[..., : r // 2], rot[..., r // 2 :]
        out = torch.cat([a * cos - b * sin, a * sin + b * cos], -1)
    return torch.cat([out, rest], -1)


def ref_t5_bucket(rel, bidirectional, num_buckets, max_distance):
    # Raffel et al. / HF T5Attention._relative_position_bucket (fp32 log as the reference).
    ret = torch.zeros_like(rel)
    n = num_buckets
    if bidirectional:
        n //= 2
        ret = ret + (rel > 0).long() * n
        rel = rel.abs()
    else:
        rel = -torch.clamp(rel, max=0)
    max_exact = n // 2
    large = max_exact + (
        torch.log(rel.float() / max_exact) / math.log(max_distance / max_exact) * (n - max_exact)
    ).long()
    large = torch.clamp(large, max=n - 1)
    return ret + torch.where(rel < max_exact, rel, large)


def _dist(q_len, k_len, q_offset, k_offset):
    qp = torch.arange(q_len) + q_offset
    kp = torch.arange(k_len) + k_offset
    return qp[:, None] - kp[None, :]  # q_pos - k_pos


def ref_txl(q, m, mem_len):
    # Dai et al. §3.3 (b)+(d): (q_i + v) . W_R R_{(mem + i) - j}, fp64, one distance at a time.
    h, d = m.num_heads, m.head_dim
    lq = q.size(2)
    kl = mem_len + lq
    w = m.r_proj.weight.detach().double()
    qv = q.double() + m.v.detach().double().view(1, h, 1, d)
    out = torch.zeros(q.size(0), h, lq, kl, dtype=torch.float64)
    for i in range(lq):
        for j in range(kl):
            r = ref_sinusoidal(torch.tensor([mem_len + i - j]), m.d_model, m.base, True)[0]
            proj = (w @ r).view(h, d)
            out[:, :, i, j] = (qv[:, :, i, :] * proj[None]).sum(-1)
    return out


# ------------------------------------------------------------------ per-module correctness


def test_sinusoidal_equals_op_and_reference():
    m = posenc.nn.SinusoidalPositionalEncoding(8, base=500.0)
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    y = m(x, offset=3)
    torch.testing.assert_close(y, x + ops.sinusoidal_table(5, 8, 500.0, 3, True, dtype=torch.float64), rtol=0, atol=0)
    torch.testing.assert_close(y, x + ref_sinusoidal(torch.arange(3, 8), 8, 500.0, True))
    t2t = posenc.nn.SinusoidalPositionalEncoding(8, interleaved=False)
    torch.testing.assert_close(t2t(x), x + ref_sinusoidal(torch.arange(5), 8, 10000.0, False))
    # Table in the input's dtype.
    assert m(x.half()).dtype == torch.float16


def test_sinusoidal_dropout_follows_training():
    m = posenc.nn.SinusoidalPositionalEncoding(16, dropout=0.5)
    x = torch.randn(4, 32, 16)
    m.eval()
    torch.testing.assert_close(m(x), x + ops.sinusoidal_table(32, 16), rtol=0, atol=0)
    m.train()
    assert (m(x) == 0).any()


def test_learned_forward_and_gradient():
    m = posenc.nn.LearnedPositionalEmbedding(16, 4)
    assert list(m.state_dict()) == ["weight"] and m.weight.shape == (16, 4)
    x = torch.randn(2, 5, 4)
    torch.testing.assert_close(m(x, 11), x + m.weight[11:16], rtol=0, atol=0)
    m(x, 3).sum().backward()
    assert torch.equal(m.weight.grad[3:8], torch.full((5, 4), 2.0))
    assert m.weight.grad[:3].abs().sum() == 0 and m.weight.grad[8:].abs().sum() == 0


def test_learned_init_is_normal_002():
    w = posenc.nn.LearnedPositionalEmbedding(512, 64).weight.detach()
    assert abs(w.mean().item()) < 2e-3
    assert abs(w.std().item() - 0.02) < 1e-3


def _learned_16x4(impl):
    if impl == "cpp":
        return posenc.cpp.LearnedPositionalEmbedding(16, 4)
    m = posenc.nn.LearnedPositionalEmbedding(16, 4)
    return torch.jit.script(m) if impl == "scripted" else m


@pytest.mark.parametrize("impl", ["nn", "scripted", "cpp"])
def test_C15_learned_past_table(impl):
    m = _learned_16x4(impl)
    # A scripted module raises torch.jit.Error (not a RuntimeError subclass) carrying the text.
    err = (RuntimeError, torch.jit.Error)
    msg = "posenc.LearnedPositionalEmbedding: position 16 is past the table of 16 positions (max_len)"
    with pytest.raises(err, match=msg.replace("(", r"\(").replace(")", r"\)")):
        m(torch.randn(1, 17, 4))
    with pytest.raises(err, match=r"position 16 is past the table of 16 positions"):
        m(torch.randn(1, 3, 4), 14)
    # Still usable: 16 positions fit, and the last row alone too.
    x = torch.randn(1, 16, 4)
    w = posenc.cpp.state_dict(m)["weight"] if impl == "cpp" else m.weight
    torch.testing.assert_close(m(x), x + w, rtol=0, atol=0)
    torch.testing.assert_close(m(torch.zeros(1, 1, 4), 15)[0], w[15:16], rtol=0, atol=0)


@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("layout", ["bhsd", "bshd"])
def test_rotary_equals_op_and_reference(interleaved, layout):
    m = posenc.nn.RotaryEmbedding(8, rotary_dim=6, base=500.0, interleaved=interleaved, layout=layout)
    shape = (2, 3, 5, 8) if layout == "bhsd" else (2, 5, 3, 8)
    q, k = torch.randn(shape), torch.randn(shape)
    qr, kr = m(q, k, offset=7)
    inv = ops.rope_inv_freq(6, 500.0)
    torch.testing.assert_close(qr, ops.rope(q, None, inv, 7, 6, interleaved, layout), rtol=0, atol=0)
    torch.testing.assert_close(kr, ops.rope(k, None, inv, 7, 6, interleaved, layout), rtol=0, atol=0)
    to_bhsd = (lambda t: t) if layout == "bhsd" else (lambda t: t.transpose(1, 2))
    want = ref_rope(to_bhsd(q), torch.arange(7, 12), 6, 500.0, interleaved)
    torch.testing.assert_close(to_bhsd(qr).double(), want, rtol=1e-5, atol=1e-5)
    # Explicit positions (plus offset).
    pos = torch.tensor([4, 0, 9, 2, 2])
    qp, _ = m(q, k, pos, 1)
    torch.testing.assert_close(
        to_bhsd(qp).double(), ref_rope(to_bhsd(q), pos + 1, 6, 500.0, interleaved), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("impl", ["nn", "cpp"])
def test_C05_rotary_odd_rotary_dim_fails_at_construction(impl):
    cls = getattr(posenc, impl).RotaryEmbedding
    with pytest.raises(ValueError, match=r"posenc.RotaryEmbedding: option 'rotary_dim' must be even.*but got 3"):
        cls(4, rotary_dim=3)
    with pytest.raises(ValueError, match=r"option 'rotary_dim' must be <= dim \(4\), but got 6"):
        cls(4, rotary_dim=6)
    with pytest.raises(ValueError, match=r"option 'layout' must be \"bhsd\", \"bshd\" or \"thd\", but got \"sbhd\""):
        cls(4, layout="sbhd")
    # head_dim 65, rotary_dim 64: works, element 64 untouched.
    m = cls(65, rotary_dim=64)
    q = torch.randn(1, 2, 6, 65)
    qr, _ = m(q, q, offset=1)
    assert torch.equal(qr[..., 64], q[..., 64])
    assert not torch.equal(qr[..., :64], q[..., :64])


def test_rotary_bfloat16_keeps_fp32_frequencies():
    # C01: the module cast to bfloat16 must not round its frequencies.
    m = posenc.nn.RotaryEmbedding(32)
    before = m.inv_freq.clone()
    m = m.to(torch.bfloat16)
    assert m.inv_freq.dtype == torch.float32
    assert torch.equal(m.inv_freq, before)
    assert abs(m.inv_freq[1].item() - 0.5623413) < 1e-7
    assert m.state_dict() == {}
    # Scripting keeps it as a non-state attribute too.
    assert dict(torch.jit.script(m).state_dict()) == {}
    # Rotation at position 1857 (C01) stays close to the fp64 result in bfloat16.
    x = torch.zeros(1, 1, 1, 32)
    x[..., 1] = 1.0  # pair 1, half-split: (1, 17)
    qr, _ = m(x.bfloat16(), x.bfloat16(), offset=1857)
    assert abs(qr[0, 0, 0, 1].float().item() - 0.306711) < 8e-3
    assert abs(qr[0, 0, 0, 17].float().item() - math.sin(1044.2678)) < 8e-3


def test_rotary_inputs_on_other_device_get_a_copy():
    # The module keeps its frequencies where they are; inputs elsewhere (meta here) work.
    m = posenc.nn.RotaryEmbedding(8)
    q = torch.randn(1, 1, 3, 8, device="meta")
    qr, kr = m(q, q)
    assert qr.device.type == "meta" and qr.shape == q.shape
    assert m.inv_freq.device.type == "cpu"
    m.to("meta")
    assert m.inv_freq.device.type == "meta" and m.inv_freq.dtype == torch.float32


@pytest.mark.parametrize("causal", [True, False])
def test_alibi_equals_op_and_reference(causal):
    m = posenc.nn.ALiBi(6, causal=causal)
    assert list(m.state_dict()) == ["slopes"]
    assert torch.equal(m.slopes, ops.alibi_slopes(6))
    out = m(3, 7, 5, 1)
    torch.testing.assert_close(out, ops.alibi_bias(ops.alibi_slopes(6), 3, 7, 5, 1, causal), rtol=0, atol=0)
    d = _dist(3, 7, 5, 1).double()
    if not causal:
        d = d.abs()
    want = -torch.tensor([0.25, 0.0625, 0.015625, 0.00390625, 0.5, 0.125], dtype=torch.float64)[:, None, None] * d
    torch.testing.assert_close(out.double(), want)


def test_alibi_C10_alignment_through_module():
    m = posenc.nn.ALiBi(1, causal=False)
    s = 2.0**-8  # one head's slope
    torch.testing.assert_close(m(3, 5, 2, 0)[0, 0], torch.tensor([-1.0, -0.5, 0.0, -0.5, -1.0]) * 2 * s)
    torch.testing.assert_close(m(3, 5)[0, 0], torch.tensor([0.0, -0.5, -1.0, -1.5, -2.0]) * 2 * s)


@pytest.mark.parametrize("bidirectional", [True, False])
def test_t5_equals_op_and_reference(bidirectional):
    m = posenc.nn.T5RelativeBias(4, num_buckets=16, max_distance=64, bidirectional=bidirectional)
    assert list(m.state_dict()) == ["weight"] and m.weight.shape == (16, 4)
    out = m(5, 90, 40, 0)
    torch.testing.assert_close(out, ops.t5_bias(m.weight, 5, 90, 40, 0, bidirectional, 64), rtol=0, atol=0)
    rel = -_dist(5, 90, 40, 0)  # key - query
    buckets = ref_t5_bucket(rel, bidirectional, 16, 64)
    want = m.weight.detach()[buckets].permute(2, 0, 1)
    torch.testing.assert_close(out, want, rtol=0, atol=0)
    out.sum().backward()
    assert m.weight.grad.sum().item() == pytest.approx(4 * 5 * 90)


@pytest.mark.parametrize("kind", ["log", "power"])
@pytest.mark.parametrize("causal", [True, False])
def test_kerple_equals_op_and_reference(kind, causal):
    m = posenc.nn.KERPLEBias(3, kind=kind, causal=causal, eps=0.05).double()
    with torch.no_grad():
        m.r1.copy_(torch.tensor([-1.0, 0.5, 1.5], dtype=torch.float64))
        m.r2.copy_(torch.tensor([0.01, 0.7, 3.0], dtype=torch.float64))
    r1 = torch.tensor([0.05, 0.5, 1.5], dtype=torch.float64)
    r2 = torch.tensor([0.05, 0.7, 2.0 if kind == "power" else 3.0], dtype=torch.float64)
    out = m(4, 6, 2, 0)
    torch.testing.assert_close(out, ops.kerple_bias(r1, r2, 4, 6, 2, 0, kind, causal), rtol=0, atol=0)
    d = _dist(4, 6, 2, 0).double()
    d = d.clamp(min=0) if causal else d.abs()
    if kind == "log":
        want = -r1[:, None, None] * torch.log1p(r2[:, None, None] * d)
    else:
        want = -r1[:, None, None] * d ** r2[:, None, None]
    torch.testing.assert_close(out, want)
    out.sum().backward()
    assert m.r1.grad[0] == 0 and m.r1.grad[1] != 0  # clamped head gets no gradient


def test_kerple_init_ranges():
    m = posenc.nn.KERPLEBias(1000)
    assert list(m.state_dict()) == ["r1", "r2"]
    assert 0 < m.r1.min() and m.r1.max() <= 2 and m.r1.max() > 1.5
    assert 0 < m.r2.min() and m.r2.max() <= 1


@pytest.mark.parametrize("mem_len", [0, 2])
def test_transformer_xl_equals_op_and_reference(mem_len):
    m = posenc.nn.TransformerXLRelativeScore(8, 2, 4)
    q = torch.randn(2, 2, 3, 4)
    out = m(q, mem_len)
    assert out.shape == (2, 2, 3, mem_len + 3)
    c = mem_len + 2
    rel = m.r_proj(ops.sinusoidal_table(2 * c + 1, 8, 10000.0, -c, True)).view(2 * c + 1, 2, 4).permute(1, 0, 2)
    torch.testing.assert_close(
        out, ops.rel_pos_scores(q + m.v.view(1, 2, 1, 4), rel, mem_len, 0, mem_len + 3), rtol=0, atol=0
    )
    torch.testing.assert_close(out.double(), ref_txl(q, m, mem_len), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(m.content_query(q), q + m.u.view(1, 2, 1, 4), rtol=0, atol=0)


@pytest.mark.parametrize("impl", ["nn", "cpp"])
def test_transformer_xl_mixed_dtypes_follow_promotion(impl):
    m = getattr(posenc, impl).TransformerXLRelativeScore(8, 2, 4)
    m.to(torch.bfloat16)
    q = torch.randn(1, 2, 3, 4)
    assert m(q, 1).dtype == torch.float32  # q + v promotes to fp32; the table follows
    assert m(q.bfloat16(), 1).dtype == torch.bfloat16


def test_transformer_xl_state_and_empty_query():
    m = posenc.nn.TransformerXLRelativeScore(8, 2, 4)
    assert list(m.state_dict()) == ["u", "v", "r_proj.weight"]
    assert m(torch.randn(1, 2, 0, 4)).shape == (1, 2, 0, 0)
    assert m(torch.randn(1, 2, 0, 4), 3).shape == (1, 2, 0, 3)


# ------------------------------------------------------------------ errors (Python twins)


@pytest.mark.parametrize(
    "name,kwargs,pattern",
    [
        ("SinusoidalPositionalEncoding", dict(dim=7), r"posenc.SinusoidalPositionalEncoding: option 'dim' must be even and > 0.*but got 7"),
        ("SinusoidalPositionalEncoding", dict(dim=8, dropout=1.0), r"option 'dropout' must be in \[0, 1\), but got 1"),
        ("LearnedPositionalEmbedding", dict(max_len=0, dim=4), r"posenc.LearnedPositionalEmbedding: option 'max_len' must be > 0, but got 0"),
        ("RotaryEmbedding", dict(dim=8, base=1.0), r"posenc.RotaryEmbedding: option 'base' must be > 1, but got 1"),
        ("ALiBi", dict(num_heads=0), r"posenc.ALiBi: option 'num_heads' must be > 0, but got 0"),
        ("T5RelativeBias", dict(num_heads=2, num_buckets=31), r"option 'num_buckets' must be even and >= 4 when bidirectional.*but got 31"),
        ("T5RelativeBias", dict(num_heads=2, num_buckets=2), r"option 'num_buckets' must be even and >= 4 when bidirectional.*but got 2"),
        ("T5RelativeBias", dict(num_heads=2, num_buckets=1, bidirectional=False), r"option 'num_buckets' must be >= 2 when causal, but got 1"),
        ("T5RelativeBias", dict(num_heads=2, max_distance=8), r"option 'max_distance' must be > the number of exact buckets \(8\), but got 8"),
        ("KERPLEBias", dict(num_heads=2, kind="exp"), r"posenc.KERPLEBias: option 'kind' must be \"log\" or \"power\", but got \"exp\""),
        ("KERPLEBias", dict(num_heads=2, eps=0.0), r"option 'eps' must be > 0"),
        ("KERPLEBias", dict(num_heads=2, kind="power", eps=2.5), r"posenc.KERPLEBias: option 'eps' must be <= 2 for kind \"power\" \(r2 is clamped to \[eps, 2\]\), but got 2.5"),
        ("TransformerXLRelativeScore", dict(d_model=7, num_heads=2, head_dim=4), r"posenc.TransformerXLRelativeScore: option 'd_model'.*but got 7"),
    ],
)
@pytest.mark.parametrize("impl", ["nn", "cpp"])
def test_option_errors(impl, name, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        getattr(getattr(posenc, impl), name)(**kwargs)


@pytest.mark.parametrize("impl", ["nn", "cpp"])
def test_forward_argument_errors(impl):
    mod = getattr(posenc, impl)
    with pytest.raises(RuntimeError, match=r"posenc.SinusoidalPositionalEncoding: argument 'x' must be a 3-D tensor \(batch, seq, 8\), but got \[2, 5, 6\]"):
        mod.SinusoidalPositionalEncoding(8)(torch.randn(2, 5, 6))
    with pytest.raises(RuntimeError, match=r"posenc.RotaryEmbedding: argument 'q' must have last dimension dim \(8\), but got shape \[1, 1, 2, 6\]"):
        mod.RotaryEmbedding(8)(torch.randn(1, 1, 2, 6), torch.randn(1, 1, 2, 8))
    with pytest.raises(RuntimeError, match=r"posenc.TransformerXLRelativeScore: argument 'q' must be a 4-D tensor \(batch, 2, q_len, 4\), but got shape \[1, 3, 3, 4\]"):
        mod.TransformerXLRelativeScore(8, 2, 4)(torch.randn(1, 3, 3, 4))
    with pytest.raises(RuntimeError, match=r"argument 'mem_len' must be >= 0, but got -1"):
        mod.TransformerXLRelativeScore(8, 2, 4)(torch.randn(1, 2, 3, 4), -1)
    with pytest.raises(RuntimeError, match=r"posenc.LearnedPositionalEmbedding: argument 'offset' must be >= 0, but got -1"):
        mod.LearnedPositionalEmbedding(8, 4)(torch.randn(1, 2, 4), -1)


def test_kerple_power_eps_up_to_2_is_accepted():
    for impl in ("nn", "cpp"):
        m = getattr(posenc, impl).KERPLEBias(2, kind="power", eps=2.0)
        assert m(2, 3).shape == (2, 2, 3)
        assert getattr(posenc, impl).KERPLEBias(2, kind="log", eps=3.0)(2, 3).shape == (2, 2, 3)


@pytest.mark.parametrize("impl", ["nn", "scripted", "cpp"])
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool])
def test_transformer_xl_rejects_non_floating_q(impl, dtype):
    # Before: q + v promoted an integer q to float and the scores came back without complaint.
    m = getattr(posenc, "cpp" if impl == "cpp" else "nn").TransformerXLRelativeScore(8, 2, 4)
    if impl == "scripted":
        m = torch.jit.script(m)
    q = torch.ones(1, 2, 3, 4, dtype=dtype)
    pattern = (r"posenc.TransformerXLRelativeScore: argument 'q' must have a floating dtype "
               r"\(float16, bfloat16, float32 or float64\), but got dtype")
    with pytest.raises((RuntimeError, torch.jit.Error), match=pattern):
        m(q)
    with pytest.raises((RuntimeError, torch.jit.Error), match=pattern):
        m.content_query(q)


@pytest.mark.parametrize("impl", ["nn", "scripted", "cpp"])
def test_learned_huge_offset_is_past_the_table(impl):
    # offset + S overflowed int64 (C++, TorchScript): narrow's IndexError or a broadcast error.
    m = _learned_16x4(impl)
    err = (RuntimeError, torch.jit.Error)
    big = 2**63 - 1
    with pytest.raises(err, match=rf"posenc.LearnedPositionalEmbedding: position {big} \+ 2 is past the table of 16 positions"):
        m(torch.randn(1, 3, 4), big)
    with pytest.raises(err, match=rf"position {big} is past the table of 16 positions"):
        m(torch.randn(1, 1, 4), big)
    with pytest.raises(err, match=rf"position {2**62 + 1} is past the table of 16 positions"):
        m(torch.randn(1, 2, 4), 2**62)
    assert m(torch.zeros(1, 1, 4), 15).shape == (1, 1, 4)


# ------------------------------------------------------------------ twins vs C++ bindings


@pytest.mark.parametrize("name", NAMES)
def test_constructor_signature_matches_cpp_binding(name):
    # Same keyword names and defaults: constructing both with every argument by keyword works
    # and so does relying on every default.
    params = inspect.signature(getattr(posenc.nn, name).__init__).parameters
    kwargs, _, _ = _inputs(name)
    assert set(kwargs) <= set(params)
    getattr(posenc.cpp, name)(**kwargs)
    required = {k: kwargs[k] for k, p in params.items() if k != "self" and p.default is inspect.Parameter.empty}
    py, cc = getattr(posenc.nn, name)(**required), getattr(posenc.cpp, name)(**required)
    assert list(py.state_dict()) == list(posenc.cpp.state_dict(cc))


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_keys_and_shapes_match_cpp(name):
    py, cc, _, _ = _pair(name)
    sd_py, sd_cc = py.state_dict(), posenc.cpp.state_dict(cc)
    assert list(sd_py) == list(sd_cc)
    for k in sd_py:
        assert sd_py[k].shape == sd_cc[k].shape and sd_py[k].dtype == sd_cc[k].dtype


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_cpp_to_python(name):
    py, cc, args, fkw = _pair(name)
    py.load_state_dict(posenc.cpp.state_dict(cc))
    _assert_identical(py(*args, **fkw), cc(*args, **fkw))


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_python_to_cpp(name):
    py, cc, args, fkw = _pair(name)
    posenc.cpp.load_state_dict(cc, py.state_dict())
    _assert_identical(cc(*args, **fkw), py(*args, **fkw))
    # The C++ module keeps its own tensors (copied in place, not aliased to Python's).
    for k, v in posenc.cpp.state_dict(cc).items():
        if v.numel():
            assert v.data_ptr() != py.state_dict()[k].data_ptr()


def test_cpp_load_state_dict_is_strict():
    cc = posenc.cpp.TransformerXLRelativeScore(8, 2, 4)
    sd = posenc.nn.TransformerXLRelativeScore(8, 2, 4).state_dict()
    before = {k: v.clone() for k, v in posenc.cpp.state_dict(cc).items()}
    missing = dict(sd)
    del missing["u"]
    with pytest.raises(RuntimeError, match=r"missing keys \['u'\], unexpected keys \[\]"):
        posenc.cpp.load_state_dict(cc, missing)
    extra = dict(sd, w=torch.zeros(1))
    with pytest.raises(RuntimeError, match=r"missing keys \[\], unexpected keys \['w'\]"):
        posenc.cpp.load_state_dict(cc, extra)
    wrong = dict(sd, v=torch.zeros(2, 5))
    with pytest.raises(RuntimeError, match=r"size mismatch for 'v': copying a tensor of shape \(2, 5\), the shape in the module is \(2, 4\)"):
        posenc.cpp.load_state_dict(cc, wrong)
    for k, v in posenc.cpp.state_dict(cc).items():  # nothing was half-loaded
        assert torch.equal(v, before[k])


def test_cpp_modules_are_nn_modules_with_repr():
    m = posenc.cpp.RotaryEmbedding(64, rotary_dim=32, interleaved=True)
    assert isinstance(m, torch.nn.Module)
    assert repr(m) == (
        "posenc::nn::RotaryEmbedding(dim=64, rotary_dim=32, base=10000, interleaved=true, layout=bhsd)"
    )
    assert "num_heads=8" in repr(posenc.cpp.ALiBi(8))
    t = posenc.cpp.TransformerXLRelativeScore(8, 2, 4)
    q = torch.randn(1, 2, 3, 4)
    torch.testing.assert_close(t.content_query(q), q + posenc.cpp.state_dict(t)["u"].view(1, 2, 1, 4))


def test_cpp_rotary_to_bfloat16_still_rotates_in_fp32():
    m = posenc.cpp.RotaryEmbedding(32)
    m.to(torch.bfloat16)
    x = torch.zeros(1, 1, 1, 32)
    x[..., 1] = 1.0
    qr, _ = m(x.bfloat16(), x.bfloat16(), offset=1857)
    assert abs(qr[0, 0, 0, 1].float().item() - 0.306711) < 8e-3


# ------------------------------------------------------------------ TorchScript / compile


@pytest.mark.parametrize("name", NAMES)
def test_scriptable(name):
    kwargs, args, fkw = _inputs(name)
    m = getattr(posenc.nn, name)(**kwargs).eval()
    s = torch.jit.script(m)
    _assert_identical(s(*args, **fkw), m(*args, **fkw))
    assert list(s.state_dict()) == list(m.state_dict())


def test_script_content_query_exported():
    m = posenc.nn.TransformerXLRelativeScore(8, 2, 4)
    s = torch.jit.script(m)
    q = torch.randn(1, 2, 3, 4)
    torch.testing.assert_close(s.content_query(q), m.content_query(q), rtol=0, atol=0)


def test_compile_fullgraph_small_model():
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    model = TinyPositionalAttention().eval()
    cnt = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, fullgraph=True, backend=cnt, dynamic=True)
    frames = []
    for s, offset in [(5, 2), (7, 3), (9, 4)]:
        x = torch.randn(2, s, 16)
        got = compiled(x, offset)
        want = model(x, offset)
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
        frames.append(cnt.frame_count)
    # fullgraph: no graph break. The first call may count two compiler calls (dynamo restarts
    # the analysis once to tensorify float scalars); new lengths and offsets compile nothing.
    assert frames[0] >= 1 and frames[1:] == [frames[0], frames[0]], frames
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1


def test_compile_backward_small_model():
    torch._dynamo.reset()
    model = TinyPositionalAttention()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 6, 16)
    compiled(x, 2)[0].sum().backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad()
    model(x, 2)[0].sum().backward()
    for k, p in model.named_parameters():
        torch.testing.assert_close(grads[k], p.grad, rtol=1e-5, atol=1e-6, msg=k)
        # Every module's parameters take part in the loss.
    assert model.t5.weight.grad.abs().sum() > 0 and model.kerple.r2.grad.abs().sum() > 0
    assert model.txl.v.grad.abs().sum() > 0 and model.learned.weight.grad.abs().sum() > 0
