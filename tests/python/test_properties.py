"""Property tests: every op and its backward on random shapes (0 and 1 included), offsets,
strides, dtypes, heads, buckets, distances and scalings, against fp64 references written
here from the papers' formulas (T5 buckets: transformers' own function). Gradients are
compared with torch autograd through the fp64 reference, not with our backward kernels.

The number of cases per test comes from the hypothesis profile (tests/python/conftest.py):
HYPOTHESIS_PROFILE=ci (default, 25 per test) or full (1000 per test, 11,000 in all).
"""
import math

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

import posenc  # noqa: F401
from posenc import ops

F64 = torch.float64
TOL = {torch.float32: dict(rtol=2e-5, atol=2e-5), F64: dict(rtol=1e-10, atol=1e-10)}
float_dtypes = st.sampled_from([torch.float32, F64])
offsets = st.integers(-(2**20), 2**20)


def assert_close(out, ref, dtype, scale=1.0):
    tol = TOL[dtype]
    torch.testing.assert_close(out.double(), ref.double(), rtol=tol["rtol"], atol=tol["atol"] * scale)


@st.composite
def vectors(draw, n, lo, hi, dtype):
    """An (n,) tensor, sometimes a strided view (every other element of a longer buffer)."""
    vals = draw(st.lists(st.floats(lo, hi, allow_nan=False, allow_infinity=False), min_size=n, max_size=n))
    t = torch.tensor(vals, dtype=dtype)
    if draw(st.booleans()) and n > 0:
        buf = torch.full((2 * n,), 1e30, dtype=dtype)
        buf[::2] = t
        t = buf[::2]
    return t


def rand(gen_seed, *shape, dtype=F64):
    g = torch.Generator().manual_seed(gen_seed)
    return torch.randn(*shape, generator=g, dtype=F64).to(dtype)


def maybe_transposed(data, t):
    """t itself or the same values in a non-contiguous layout (last two dims swapped in memory)."""
    if t.dim() >= 2 and data.draw(st.booleans()):
        return t.transpose(-1, -2).contiguous().transpose(-1, -2)
    return t


def distances(q_len, k_len, q_offset, k_offset):
    qp = torch.arange(q_len) + q_offset
    kp = torch.arange(k_len) + k_offset
    return (qp[:, None] - kp[None, :]).double()  # q_pos - k_pos, exact in int64


# ---- sinusoidal table (Vaswani et al. 2017 §3.5; tensor2tensor's get_timing_signal_1d) -----------


@given(
    n=st.integers(0, 40), half=st.integers(1, 32), base=st.floats(1.5, 1e5), offset=st.integers(-(2**20), 2**20),
    interleaved=st.booleans(), dtype=float_dtypes,
)
def test_sinusoidal_table(n, half, base, offset, interleaved, dtype):
    dim = 2 * half
    out = ops.sinusoidal_table(n, dim, base, offset, interleaved, dtype)
    p = torch.arange(n, dtype=F64)[:, None] + offset
    i = torch.arange(half, dtype=F64)
    if interleaved:
        ang = p * torch.exp(-2 * i / dim * math.log(base))
        ref = torch.stack([torch.sin(ang), torch.cos(ang)], -1).reshape(n, dim)
    else:
        ang = p * torch.exp(-i * math.log(base) / max(half - 1, 1))
        ref = torch.cat([torch.sin(ang), torch.cos(ang)], -1)
    assert out.dtype == dtype
    # fp64 angles up to 2^20 rad: the two frequency formulas differ by an ulp, ~1e-10 rad there
    torch.testing.assert_close(out.double(), ref, rtol=0, atol=2e-6 if dtype == torch.float32 else 1e-8)


# ---- ALiBi (Press et al. 2022) ------------------------------------------------------------------


@given(h=st.integers(1, 80))
def test_alibi_slopes(h):
    def geometric(n):
        start = 2.0 ** (-8.0 / n)
        return [start ** (k + 1) for k in range(n)]

    p = 2 ** int(math.floor(math.log2(h)))
    ref = geometric(p) + (geometric(2 * p)[0::2][: h - p] if p < h else [])
    torch.testing.assert_close(ops.alibi_slopes(h, dtype=F64), torch.tensor(ref, dtype=F64), rtol=1e-14, atol=0)


@st.composite
def bias_case(draw):
    return dict(
        h=draw(st.integers(1, 4)), q_len=draw(st.integers(0, 12)), k_len=draw(st.integers(0, 12)),
        q_offset=draw(offsets), k_offset=draw(offsets), causal=draw(st.booleans()), dtype=draw(float_dtypes),
        seed=draw(st.integers(0, 2**31)),
    )


@given(c=bias_case(), data=st.data())
def test_alibi_bias_and_backward(c, data):
    # keep the distances where fp32 still resolves them
    assume(abs(c["q_offset"] - c["k_offset"]) < 2**22)
    slopes = data.draw(vectors(c["h"], 0.0, 1.0, c["dtype"])).requires_grad_()
    out = ops.alibi_bias(slopes, c["q_len"], c["k_len"], c["q_offset"], c["k_offset"], c["causal"])
    s64 = slopes.detach().double().requires_grad_()
    d = distances(c["q_len"], c["k_len"], c["q_offset"], c["k_offset"])
    ref = -s64[:, None, None] * (d if c["causal"] else d.abs())
    scale = max(1.0, float(d.abs().max()) if d.numel() else 1.0)
    assert_close(out, ref, c["dtype"], scale)
    grad = rand(c["seed"], *out.shape, dtype=c["dtype"])
    out.backward(grad)
    ref.backward(grad.double())
    assert_close(slopes.grad, s64.grad, c["dtype"], scale * max(1, out[0].numel()))


# ---- T5 buckets and bias (Raffel et al. 2020; numbers from transformers' T5Attention) -------------

T5Attention = pytest.importorskip("transformers.models.t5.modeling_t5").T5Attention


def hf_bucket(rp, bidirectional, num_buckets, max_distance):
    return T5Attention._relative_position_bucket(rp, bidirectional, num_buckets, max_distance)


@st.composite
def bucket_params(draw):
    bidirectional = draw(st.booleans())
    nb = 2 * draw(st.integers(2 if bidirectional else 1, 40))
    max_exact = (nb // 2) // 2 if bidirectional else nb // 2
    md = draw(st.integers(max_exact + 1, 2000))
    return bidirectional, nb, md


@given(
    params=bucket_params(),
    rp=st.lists(st.one_of(st.integers(-3000, 3000), st.integers(-(2**62), 2**62)), min_size=0, max_size=40),
    rows=st.integers(1, 2),
)
def test_t5_relative_bucket(params, rp, rows):
    bidirectional, nb, md = params
    t = torch.tensor(rp * rows, dtype=torch.long).view(rows, -1).t()  # (n, rows): strided rows
    out = ops.t5_relative_bucket(t, bidirectional, nb, md)
    assert out.dtype == torch.long
    assert torch.equal(out, hf_bucket(t.contiguous(), bidirectional, nb, md))


@given(c=bias_case(), params=bucket_params(), transposed=st.booleans())
def test_t5_bias_and_backward(c, params, transposed):
    bidirectional, nb, md = params
    table = rand(c["seed"], nb, c["h"], dtype=c["dtype"])
    if transposed:
        table = table.t().contiguous().t()
    table.requires_grad_()
    out = ops.t5_bias(table, c["q_len"], c["k_len"], c["q_offset"], c["k_offset"], bidirectional, md)
    qp = torch.arange(c["q_len"]) + c["q_offset"]
    kp = torch.arange(c["k_len"]) + c["k_offset"]
    buckets = hf_bucket(kp[None, :] - qp[:, None], bidirectional, nb, md)  # (q, k)
    t64 = table.detach().double().requires_grad_()
    ref = t64[buckets].permute(2, 0, 1)
    assert_close(out, ref, c["dtype"])
    grad = rand(c["seed"] + 1, *out.shape, dtype=c["dtype"])
    out.backward(grad)
    ref.backward(grad.double())
    assert_close(table.grad, t64.grad, c["dtype"], max(1, c["q_len"] * c["k_len"]))


# ---- KERPLE (Chi et al. 2022) -------------------------------------------------------------------


@given(c=bias_case(), kind=st.sampled_from(["log", "power"]), data=st.data())
def test_kerple_bias_and_backward(c, kind, data):
    assume(abs(c["q_offset"] - c["k_offset"]) < 2**12)
    r1 = data.draw(vectors(c["h"], 0.01, 3.0, c["dtype"])).requires_grad_()
    r2 = data.draw(vectors(c["h"], 0.01, 2.0, c["dtype"])).requires_grad_()
    out = ops.kerple_bias(r1, r2, c["q_len"], c["k_len"], c["q_offset"], c["k_offset"], kind, c["causal"])
    a, b = r1.detach().double().requires_grad_(), r2.detach().double().requires_grad_()
    d = distances(c["q_len"], c["k_len"], c["q_offset"], c["k_offset"])
    d = d.clamp(min=0) if c["causal"] else d.abs()
    a3, b3 = a[:, None, None], b[:, None, None]
    if kind == "log":
        ref = -a3 * torch.log1p(b3 * d)
    else:
        # d ** r2 is taken as 0 at d = 0 (gradient 0 there); d_safe keeps log(0) out of autograd
        d_safe = torch.where(d == 0, torch.ones(()), d)
        ref = torch.where(d == 0, torch.zeros(()), -a3 * d_safe**b3)
    scale = max(1.0, float(ref.detach().abs().max()) if ref.numel() else 1.0)
    assert_close(out, ref, c["dtype"], scale)
    grad = rand(c["seed"], *out.shape, dtype=c["dtype"])
    out.backward(grad)
    ref.backward(grad.double())
    n = max(1, c["q_len"] * c["k_len"])
    assert_close(r1.grad, a.grad, c["dtype"], scale * n)
    assert_close(r2.grad, b.grad, c["dtype"], scale * n * 10)


# ---- relative scores (Shaw et al. 2018 eq. 5; Transformer-XL terms (b)+(d)) -------------------------


@given(
    b=st.integers(1, 2), h=st.integers(1, 3), lq=st.integers(0, 6), d=st.integers(1, 8), c=st.integers(0, 6),
    q_offset=st.integers(-50, 50), k_offset=st.integers(-50, 50), k_len=st.integers(0, 10),
    md=st.one_of(st.none(), st.integers(0, 6)), causal=st.booleans(), dtype=float_dtypes,
    seed=st.integers(0, 2**31), data=st.data(),
)
def test_rel_pos_scores_and_backward(b, h, lq, d, c, q_offset, k_offset, k_len, md, causal, dtype, seed, data):
    if md is not None:
        md = min(md, c)
    r = 2 * c + 1
    q = maybe_transposed(data, rand(seed, b, h, lq, d, dtype=dtype)).requires_grad_()
    rel = maybe_transposed(data, rand(seed + 1, h, r, d, dtype=dtype)).requires_grad_()
    out = ops.rel_pos_scores(q, rel, q_offset, k_offset, k_len, md, causal)
    q64, rel64 = q.detach().double().requires_grad_(), rel.detach().double().requires_grad_()
    dist = distances(lq, k_len, q_offset, k_offset).long()
    m = c if md is None else md
    rows = rel64[:, dist.clamp(-m, m) + c]  # (H, Lq, Lk, D)
    ref = torch.einsum("bhid,hijd->bhij", q64, rows)
    if causal:
        ref = ref * (dist >= 0)  # keys after the query (k_pos > q_pos) are 0
    assert_close(out, ref, dtype, d)
    grad = rand(seed + 2, *out.shape, dtype=dtype)
    out.backward(grad)
    ref.backward(grad.double())
    assert_close(q.grad, q64.grad, dtype, max(1, k_len))
    assert_close(rel.grad, rel64.grad, dtype, max(1, b * lq * k_len))


# ---- RoPE (Su et al. 2021) ----------------------------------------------------------------------


@given(half=st.integers(1, 64), base=st.floats(1.01, 1e7), dtype=float_dtypes)
def test_rope_inv_freq(half, base, dtype):
    dim = 2 * half
    ref = torch.exp(-torch.arange(0, dim, 2, dtype=F64) / dim * math.log(base))
    out = ops.rope_inv_freq(dim, base, dtype=dtype)
    assert out.dtype == dtype
    torch.testing.assert_close(out.double(), ref, rtol=1e-7 if dtype == torch.float32 else 1e-14, atol=0)


def rope_reference(x, pos, inv_freq, rotary_dim, interleaved, factor):
    """x (..., S, H?, D) already as (B, S, H, D); pos (B, S) int64. Angles as the op's
    documented precision: fp32 product float(p) * inv_freq for float32 inv_freq, fp64 else."""
    if inv_freq.dtype == torch.float32:
        ang = (pos.float()[..., None] * inv_freq).double()
    else:
        ang = pos.double()[..., None] * inv_freq
    c = (torch.cos(ang) * factor)[:, :, None, :]  # (B, S, 1, R/2)
    s = (torch.sin(ang) * factor)[:, :, None, :]
    half = rotary_dim // 2
    rot, rest = x[..., :rotary_dim], x[..., rotary_dim:]
    if interleaved:
        x1, x2 = rot[..., 0::2], rot[..., 1::2]
        y = torch.stack([x1 * c - x2 * s, x2 * c + x1 * s], -1).flatten(-2)
    else:
        x1, x2 = rot[..., :half], rot[..., half:]
        y = torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], -1)
    return torch.cat([y, rest], -1)


@given(
    b=st.integers(1, 2), s=st.integers(0, 7), h=st.integers(1, 3), half_d=st.integers(1, 8), data=st.data(),
    layout=st.sampled_from(["bhsd", "bshd", "thd"]), interleaved=st.booleans(), offset=st.integers(-1000, 10**6),
    pos_kind=st.sampled_from(["none", "shared", "batch"]), exact=st.booleans(), dtype=float_dtypes,
    factor=st.floats(0.5, 2.0), seed=st.integers(0, 2**31),
)
def test_rope_and_backward(b, s, h, half_d, data, layout, interleaved, offset, pos_kind, exact, dtype, factor, seed):
    d = 2 * half_d
    rotary_dim = 2 * data.draw(st.integers(1, half_d))
    inv = ops.rope_inv_freq(rotary_dim, 10000.0, dtype=F64 if exact else torch.float32)
    x_bshd = rand(seed, b, s, h, d)  # reference layout
    positions = None
    cu = None
    if layout == "thd":
        # b sequences of random lengths packed back to back; positions restart in each
        lens = data.draw(st.lists(st.integers(0, 5), min_size=b, max_size=b))
        t = sum(lens)
        x_ref = rand(seed, 1, t, h, d)
        cu = torch.tensor([0] + list(torch.tensor(lens).cumsum(0).tolist()), dtype=torch.long)
        pos_ref = torch.cat([torch.arange(n) for n in lens] or [torch.zeros(0, dtype=torch.long)])[None] + offset
        x_in = x_ref[0]
    else:
        x_ref = x_bshd
        if pos_kind == "none":
            pos_ref = (torch.arange(s) + offset).expand(b, s)
        else:
            pos = torch.randint(-1000, 100000, (s,) if pos_kind == "shared" else (b, s), generator=torch.Generator().manual_seed(seed))
            positions = pos
            pos_ref = (pos + offset).expand(b, s)
        x_in = x_bshd if layout == "bshd" else x_bshd.transpose(1, 2)  # bhsd: a strided view
    x_in = maybe_transposed(data, x_in.to(dtype)).detach().requires_grad_()
    out = ops.rope(x_in, positions, inv, offset, rotary_dim, interleaved, layout, cu, factor)
    x64 = x_ref.detach().double().clone().requires_grad_()
    ref = rope_reference(x64, pos_ref, inv, rotary_dim, interleaved, factor)
    ref_in_layout = ref[0] if layout == "thd" else (ref if layout == "bshd" else ref.transpose(1, 2))
    assert out.dtype == dtype
    # reference precision: the fp32 angle is what it is; our cos/sin of it are fp32 (1e-7)
    assert_close(out, ref_in_layout, dtype, 4.0)
    grad = rand(seed + 1, *out.shape, dtype=dtype)
    out.backward(grad)
    g_ref = grad.double()[None] if layout == "thd" else (grad.double() if layout == "bshd" else grad.double().transpose(1, 2))
    ref.backward(g_ref)
    x_grad_ref = x64.grad[0] if layout == "thd" else (x64.grad if layout == "bshd" else x64.grad.transpose(1, 2))
    assert_close(x_in.grad, x_grad_ref, dtype, 4.0)


@given(
    b=st.integers(1, 2), h=st.integers(1, 3), s=st.integers(0, 6), half_d=st.integers(1, 6), data=st.data(),
    interleaved=st.booleans(), batched=st.booleans(), layout=st.sampled_from(["bhsd", "bshd"]), dtype=float_dtypes,
    seed=st.integers(0, 2**31),
)
def test_apply_rotary_pos_emb_and_backward(b, h, s, half_d, data, interleaved, batched, layout, dtype, seed):
    d = 2 * half_d
    r = 2 * data.draw(st.integers(1, half_d))
    x = rand(seed, b, h, s, d, dtype=dtype)  # bhsd
    tshape = (b, s, r) if batched else (s, r)
    cos = maybe_transposed(data, rand(seed + 1, *tshape, dtype=dtype)).requires_grad_()
    sin = maybe_transposed(data, rand(seed + 2, *tshape, dtype=dtype)).requires_grad_()
    x_in = (x if layout == "bhsd" else x.transpose(1, 2).contiguous()).requires_grad_()
    out = ops.apply_rotary_pos_emb(x_in, cos, sin, interleaved, layout)
    x64 = x.detach().double().clone().requires_grad_()
    c64, s64 = cos.detach().double().requires_grad_(), sin.detach().double().requires_grad_()
    c4 = c64[:, None] if batched else c64[None, None]  # broadcast over heads (and batch)
    s4 = s64[:, None] if batched else s64[None, None]
    rot = x64[..., :r]
    if interleaved:
        rotated = torch.stack([-rot[..., 1::2], rot[..., 0::2]], -1).flatten(-2)
    else:
        rotated = torch.cat([-rot[..., r // 2 :], rot[..., : r // 2]], -1)
    ref = torch.cat([rot * c4 + rotated * s4, x64[..., r:]], -1)  # bhsd
    ref_l = ref if layout == "bhsd" else ref.transpose(1, 2)
    assert_close(out, ref_l, dtype, 4.0)
    grad = rand(seed + 3, *out.shape, dtype=dtype)
    out.backward(grad)
    ref_l.backward(grad.double())
    x_grad = x_in.grad if layout == "bhsd" else x_in.grad.transpose(1, 2)
    assert_close(x_grad, x64.grad, dtype, 4.0)
    assert_close(cos.grad, c64.grad, dtype, 4.0 * b * h)
    assert_close(sin.grad, s64.grad, dtype, 4.0 * b * h)


# ---- fused relative attention (softmax(scale q k^T + P + mask) v) ------------------------------------


@given(
    b=st.integers(1, 2), h_kv=st.integers(1, 2), groups=st.integers(1, 2), lq=st.integers(0, 6), lk=st.integers(0, 7),
    d=st.integers(1, 8), dv=st.integers(1, 8), term=st.sampled_from(["none", "alibi", "kerple", "t5"]),
    causal=st.booleans(), q_offset=st.integers(-20, 20), k_offset=st.integers(-20, 20),
    scale=st.one_of(st.none(), st.floats(0.1, 2.0)), dtype=float_dtypes, seed=st.integers(0, 2**31), data=st.data(),
)
def test_relative_attention_and_backward(b, h_kv, groups, lq, lk, d, dv, term, causal, q_offset, k_offset, scale, dtype, seed, data):
    h = h_kv * groups
    q = maybe_transposed(data, rand(seed, b, h, lq, d, dtype=dtype)).requires_grad_()
    k = maybe_transposed(data, rand(seed + 1, b, h_kv, lk, d, dtype=dtype)).requires_grad_()
    v = rand(seed + 2, b, h_kv, lk, dv, dtype=dtype).requires_grad_()
    dist = distances(lq, lk, q_offset, k_offset)  # q_pos - k_pos
    bidirectional = not causal
    params = {}
    if term == "alibi":
        params["slopes"] = (torch.rand(h, generator=torch.Generator().manual_seed(seed), dtype=F64) * 0.5).to(dtype).requires_grad_()
    elif term == "kerple":
        gen = torch.Generator().manual_seed(seed)
        params["r1"] = (0.1 + torch.rand(h, generator=gen, dtype=F64)).to(dtype).requires_grad_()
        params["r2"] = (0.1 + torch.rand(h, generator=gen, dtype=F64)).to(dtype).requires_grad_()
    elif term == "t5":
        params["table"] = rand(seed + 3, 32, h, dtype=dtype).requires_grad_()
    out, lse = ops.relative_attention(q, k, v, causal=causal, scale=scale, q_offset=q_offset, k_offset=k_offset, **params)

    p64 = {n: t.detach().double().requires_grad_() for n, t in params.items()}
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    kr = k64.repeat_interleave(groups, 1)
    vr = v64.repeat_interleave(groups, 1)
    sc = (d ** -0.5) if scale is None else scale
    logits = (q64 @ kr.transpose(-1, -2)) * sc
    if term == "alibi":
        dd = dist if not bidirectional else dist.abs()
        logits = logits - p64["slopes"][:, None, None] * dd
    elif term == "kerple":
        dd = dist.clamp(min=0) if not bidirectional else dist.abs()
        logits = logits - p64["r1"][:, None, None] * torch.log1p(p64["r2"][:, None, None] * dd)
    elif term == "t5":
        qp = torch.arange(lq) + q_offset
        kp = torch.arange(lk) + k_offset
        buckets = hf_bucket(kp[None, :] - qp[:, None], bidirectional, 32, 128)
        logits = logits + p64["table"][buckets].permute(2, 0, 1)
    if causal:
        logits = logits.masked_fill(dist < 0, -math.inf)  # keys after the query
    seen = torch.isfinite(logits).any(-1, keepdim=True)
    w = torch.softmax(logits.masked_fill(~seen, 0.0), -1) * seen  # fully masked query -> 0
    ref = w @ vr
    ref_lse = torch.where(seen[..., 0], torch.logsumexp(logits.masked_fill(~seen, 0.0), -1), -math.inf)
    assert_close(out, ref, dtype, 10.0)
    torch.testing.assert_close(lse.double(), ref_lse, rtol=1e-4, atol=1e-4)
    grad = rand(seed + 4, *out.shape, dtype=dtype)
    out.backward(grad)
    ref.backward(grad.double())
    for ours, theirs in [(q, q64), (k, k64), (v, v64)] + [(params[n], p64[n]) for n in params]:
        expected = theirs.grad if theirs.grad is not None else torch.zeros_like(theirs)
        got = ours.grad if ours.grad is not None else torch.zeros_like(ours)
        assert_close(got, expected, dtype, 10.0 * max(1, lq * lk))
