"""Fused relative-position attention (posenc.ops.relative_attention): against an fp64 reference
written from the formula softmax(scale q k^T + P + mask) v, with P materialized by the existing
bias ops; against SDPA with the materialized bias; gradients, determinism, decoding, tile
edges, bad inputs, opcheck, torch.compile and TorchScript."""
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import TOL

import posenc
from posenc import ops

FAMILIES = ["none", "alibi", "t5", "kerple_log", "kerple_power", "txl", "shaw"]
# The position parameters each family passes to the op (gradients are checked for all).
PARAM_NAMES = {
    "none": [],
    "alibi": ["slopes"],
    "t5": ["table"],
    "kerple_log": ["r1", "r2"],
    "kerple_power": ["r1", "r2"],
    "txl": ["rel_emb", "q_rel"],
    "shaw": ["rel_emb"],
}


def make_params(family, H, D, Lq, Lk, dtype, q_offset=0, k_offset=0, gen=None):
    """Keyword arguments of the op for one family (leaf tensors requiring grad)."""
    p = {}
    rnd = lambda *s, lo=0.0, hi=1.0: (torch.rand(*s, generator=gen, dtype=torch.float64) * (hi - lo) + lo)
    if family == "alibi":
        p["slopes"] = ops.alibi_slopes(H).to(torch.float64) * rnd(H, lo=0.5, hi=1.5)
    elif family == "t5":
        p["table"] = torch.randn(32, H, generator=gen, dtype=torch.float64)
        p["max_distance"] = 20
    elif family.startswith("kerple"):
        p["r1"] = rnd(H, lo=0.2, hi=2.0)
        p["r2"] = rnd(H, lo=0.2, hi=1.0 if family == "kerple_log" else 1.8)
        p["kerple_kind"] = family.split("_")[1]
    elif family == "txl":
        # Rows for every distance the call can reach (as Transformer-XL's table).
        c = max(abs(q_offset - (k_offset + Lk - 1)), abs(q_offset + Lq - 1 - k_offset), 1)
        p["rel_emb"] = torch.randn(H, 2 * c + 1, D, generator=gen, dtype=torch.float64) * 0.3
        p["q_rel"] = None  # filled from q by the caller
    elif family == "shaw":
        p["rel_emb"] = torch.randn(H, 2 * 6 + 1, D, generator=gen, dtype=torch.float64) * 0.3
        p["max_distance"] = 5
    for name in PARAM_NAMES[family]:
        if p.get(name) is not None:
            p[name] = p[name].to(dtype if name in ("rel_emb",) else torch.float64)
    return p


def position_term(family, p, q, Lq, Lk, q_offset, k_offset, causal, bidirectional):
    """P (B or 1, H, Lq, Lk) from the bias ops (fp64 in, fp64 out)."""
    sym = (not causal) if bidirectional is None else bidirectional
    if family == "none":
        return None
    if family == "alibi":
        return ops.alibi_bias(p["slopes"], Lq, Lk, q_offset, k_offset, not sym)[None]
    if family == "t5":
        return ops.t5_bias(p["table"], Lq, Lk, q_offset, k_offset, sym, p.get("max_distance", 128))[None]
    if family.startswith("kerple"):
        return ops.kerple_bias(p["r1"], p["r2"], Lq, Lk, q_offset, k_offset, p["kerple_kind"], not sym)[None]
    qr = p.get("q_rel")
    qr = q if qr is None else qr
    return ops.rel_pos_scores(qr, p["rel_emb"], q_offset, k_offset, Lk, p.get("max_distance"))


def reference(q, k, v, p, family, causal=False, key_padding_mask=None, scale=None, q_offset=0,
              k_offset=0, bidirectional=None):
    """fp64 attention from the formula, bhsd; rows without keys give 0 and lse = -inf."""
    B, H, Lq, D = q.shape
    Lk = k.shape[2]
    g = H // k.shape[1]
    k = k.repeat_interleave(g, dim=1)
    v = v.repeat_interleave(g, dim=1)
    s = (D ** -0.5 if scale is None else scale) * q @ k.transpose(-1, -2)
    P = position_term(family, p, q, Lq, Lk, q_offset, k_offset, causal, bidirectional)
    if P is not None:
        s = s + P
    keep = torch.ones(B, 1, Lq, Lk, dtype=torch.bool)
    if causal:
        qi = torch.arange(Lq)[:, None] + q_offset
        kj = torch.arange(Lk)[None, :] + k_offset
        keep = keep & (kj <= qi)
    if key_padding_mask is not None:
        keep = keep & ~key_padding_mask[:, None, None, :]
    row_ok = keep.any(-1, keepdim=True)
    s = torch.where(keep, s, torch.tensor(-math.inf, dtype=s.dtype))
    s = torch.where(row_ok, s, torch.zeros((), dtype=s.dtype))
    lse = torch.logsumexp(s, -1)
    out = (torch.softmax(s, -1) @ v) * row_ok
    lse = torch.where(row_ok[..., 0], lse, torch.tensor(-math.inf, dtype=lse.dtype))
    return out, lse


def call_op(q, k, v, p, **kw):
    args = {n: val for n, val in p.items()}
    return ops.relative_attention(q, k, v, **args, **kw)


def leaves(q, k, v, p):
    """Tensors whose gradients are compared, by name."""
    out = {"q": q, "k": k, "v": v}
    for n in ("slopes", "table", "r1", "r2", "rel_emb", "q_rel"):
        if isinstance(p.get(n), torch.Tensor):
            out[n] = p[n]
    return out


def setup_case(family, B, H, Hkv, Lq, Lk, D, dtype, q_offset=0, k_offset=0, seed=0, Dv=None):
    gen = torch.Generator().manual_seed(seed)
    Dv = D if Dv is None else Dv
    q = torch.randn(B, H, Lq, D, generator=gen, dtype=torch.float64)
    k = torch.randn(B, Hkv, Lk, D, generator=gen, dtype=torch.float64)
    v = torch.randn(B, Hkv, Lk, Dv, generator=gen, dtype=torch.float64)
    p = make_params(family, H, D, Lq, Lk, torch.float64, q_offset, k_offset, gen)
    if family == "txl":
        p["q_rel"] = q + torch.randn(1, H, 1, D, generator=gen, dtype=torch.float64) * 0.5
    q, k, v = (t.to(dtype).requires_grad_() for t in (q, k, v))
    for n in PARAM_NAMES[family]:
        t = p[n].detach()
        if n in ("rel_emb", "q_rel"):
            t = t.to(dtype)
        p[n] = t.requires_grad_()
    return q, k, v, p


def as64(q, k, v, p):
    c = lambda t: t.detach().to(torch.float64).requires_grad_()
    p64 = {n: (c(t) if isinstance(t, torch.Tensor) else t) for n, t in p.items()}
    return c(q), c(k), c(v), p64


def compare(family, q, k, v, p, tol, **kw):
    """Fused op vs the fp64 reference: out, lse and the gradients of every leaf, with a random
    upstream gradient for out and for lse."""
    out, lse = call_op(q, k, v, p, **kw)
    q64, k64, v64, p64 = as64(q, k, v, p)
    ref_out, ref_lse = reference(q64, k64, v64, p64, family, **kw)
    assert out.dtype == q.dtype and out.shape == ref_out.shape
    assert lse.dtype == (torch.float64 if q.dtype == torch.float64 else torch.float32)
    torch.testing.assert_close(out.double(), ref_out, **tol)
    fin = torch.isfinite(ref_lse)
    assert torch.equal(torch.isfinite(lse), fin)
    torch.testing.assert_close(lse.double()[fin], ref_lse[fin], **tol)
    assert not torch.isnan(out).any()

    gen = torch.Generator().manual_seed(7)
    g_out = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    g_lse = torch.randn(lse.shape, generator=gen, dtype=torch.float64) * fin
    mine = leaves(q, k, v, p)
    ref = leaves(q64, k64, v64, p64)
    got = torch.autograd.grad((out.double() * g_out).sum() + (lse.double().nan_to_num(0, 0, 0) * g_lse).sum(),
                              list(mine.values()), allow_unused=False)
    want = torch.autograd.grad((ref_out * g_out).sum() + (ref_lse.nan_to_num(0, 0, 0) * g_lse).sum(),
                               list(ref.values()))
    for name, a, b in zip(mine, got, want):
        assert a.shape == b.shape, name
        assert not torch.isnan(a).any(), name
        scale = max(1.0, b.abs().max().item())
        torch.testing.assert_close(a.double(), b, rtol=tol["rtol"], atol=tol["atol"] * scale,
                                   msg=lambda m: f"grad {name}: {m}")


TOL64 = dict(rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("offsets", [(0, 0), (20, 3), (0, 9)])
def test_fp64_every_family(family, causal, offsets):
    qo, ko = offsets
    q, k, v, p = setup_case(family, 2, 4, 2, 37, 53, 16, torch.float64, qo, ko)
    compare(family, q, k, v, p, TOL64, causal=causal, q_offset=qo, k_offset=ko)


@pytest.mark.parametrize("family", ["alibi", "t5", "kerple_log"])
def test_bidirectional_term_with_causal_mask(family):
    # the term's form is independent of the mask when given explicitly
    q, k, v, p = setup_case(family, 1, 2, 2, 19, 19, 8, torch.float64)
    compare(family, q, k, v, p, TOL64, causal=True, bidirectional=True)
    compare(family, q, k, v, p, TOL64, causal=False, bidirectional=False)


@pytest.mark.parametrize("family", FAMILIES)
def test_key_padding_mask_and_empty_rows(family):
    q, k, v, p = setup_case(family, 3, 4, 1, 21, 30, 12, torch.float64, q_offset=0, k_offset=5)
    kpm = torch.zeros(3, 30, dtype=torch.bool)
    kpm[0, 25:] = True
    kpm[1, ::3] = True
    kpm[2, :] = True  # every key padded: zeros, lse -inf, zero gradients
    compare(family, q, k, v, p, TOL64, key_padding_mask=kpm, causal=True, k_offset=5)
    out, lse = call_op(q, k, v, p, key_padding_mask=kpm, causal=True, k_offset=5)
    assert torch.equal(out[2], torch.zeros_like(out[2]))
    assert torch.isneginf(lse[2]).all()
    # causal with keys after every query's position: rows 0..4 see nothing
    assert torch.isneginf(lse[:, :, :5]).all() and (out[:, :, :5] == 0).all()
    g = torch.autograd.grad(out.sum(), [q])[0]
    assert (g[2] == 0).all() and (g[:, :, :5] == 0).all()


@pytest.mark.parametrize("family", ["none", "alibi", "t5", "kerple_power", "txl", "shaw"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_low_precision_against_fp64(family, dtype):
    q, k, v, p = setup_case(family, 1, 4, 2, 40, 70, 32, dtype, q_offset=30)
    tol = {torch.float32: dict(rtol=2e-5, atol=2e-5), torch.float16: dict(rtol=1e-2, atol=1e-2),
           torch.bfloat16: dict(rtol=5e-2, atol=5e-2)}[dtype]
    compare(family, q, k, v, p, tol, causal=True, q_offset=30)


@pytest.mark.parametrize("family", FAMILIES)
def test_fp32_against_sdpa_with_materialized_bias(family):
    q, k, v, p = setup_case(family, 2, 8, 8, 300, 300, 64, torch.float32, seed=3)
    out, _ = call_op(q, k, v, p, causal=True)
    P = position_term(family, {n: t for n, t in p.items()}, q, 300, 300, 0, 0, True, None)
    mask = torch.ones(300, 300, dtype=torch.bool).tril()
    bias = torch.zeros(300, 300).masked_fill(~mask, -math.inf)
    if P is not None:
        bias = bias + P.float()
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.expand(2, 8, 300, 300))
    torch.testing.assert_close(out, want, rtol=2e-5, atol=2e-5)
    g = torch.randn_like(out)
    mine = leaves(q, k, v, p)
    a = torch.autograd.grad((out * g).sum(), list(mine.values()))
    b = torch.autograd.grad((want * g).sum(), list(mine.values()))
    for name, x, y in zip(mine, a, b):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-4 * max(1.0, y.abs().max().item()),
                                   msg=lambda m: f"grad {name}: {m}")


@pytest.mark.parametrize("family", FAMILIES)
def test_gradcheck(family):
    q, k, v, p = setup_case(family, 1, 2, 1, 5, 7, 3, torch.float64, q_offset=2)
    names = list(leaves(q, k, v, p))
    extra = {n: val for n, val in p.items() if n not in names}

    def f(*ts):
        d = dict(zip(names, ts))
        pp = dict(extra)
        pp.update({n: d[n] for n in names if n not in ("q", "k", "v")})
        out, lse = call_op(d["q"], d["k"], d["v"], pp, causal=True, q_offset=2)
        return out, lse

    assert torch.autograd.gradcheck(f, tuple(leaves(q, k, v, p).values()))


@pytest.mark.parametrize("family", FAMILIES)
def test_packed_thd_equals_per_sequence(family):
    lens = [5, 0, 17, 1, 33]
    cu = torch.tensor([0] + list(torch.tensor(lens).cumsum(0)), dtype=torch.long)
    T, H, Hkv, D = int(cu[-1]), 4, 2, 8
    q, k, v, p = setup_case(family, 1, H, Hkv, T, T, D, torch.float64)
    if family == "txl":
        p["rel_emb"] = torch.randn(H, 2 * 40 + 1, D, dtype=torch.float64).requires_grad_()
    qt, kt, vt = (t.detach()[0].transpose(0, 1).contiguous().requires_grad_() for t in (q, k, v))
    pt = dict(p)
    if family == "txl":
        pt["q_rel"] = p["q_rel"].detach()[0].transpose(0, 1).contiguous().requires_grad_()
    out, lse = call_op(qt, kt, vt, pt, causal=True, layout="thd", cu_seqlens_q=cu,
                       cu_seqlens_k=cu, max_seqlen_q=max(lens), max_seqlen_k=max(lens))
    assert out.shape == (T, H, D) and lse.shape == (H, T)
    g = torch.randn_like(out)
    (out * g).sum().backward()
    for s in range(len(lens)):
        a, b = int(cu[s]), int(cu[s + 1])
        sl = lambda t: t.detach()[a:b].transpose(0, 1)[None].contiguous().requires_grad_()
        qs, ks, vs = sl(qt), sl(kt), sl(vt)
        ps = {n: (val.detach().requires_grad_() if isinstance(val, torch.Tensor) else val)
              for n, val in p.items()}
        if family == "txl":
            ps["q_rel"] = sl(pt["q_rel"])
        o_s, l_s = call_op(qs, ks, vs, ps, causal=True)
        torch.testing.assert_close(out[a:b], o_s[0].transpose(0, 1), **TOL64)
        torch.testing.assert_close(lse[:, a:b], l_s[0], **TOL64)
        (o_s * g[a:b].transpose(0, 1)[None]).sum().backward()
        torch.testing.assert_close(qt.grad[a:b], qs.grad[0].transpose(0, 1), **TOL64)
        torch.testing.assert_close(kt.grad[a:b], ks.grad[0].transpose(0, 1), **TOL64)
        torch.testing.assert_close(vt.grad[a:b], vs.grad[0].transpose(0, 1), **TOL64)
        for n in PARAM_NAMES[family]:
            if n != "q_rel":
                p[n].grad = ps[n].grad if p[n].grad is None else p[n].grad + ps[n].grad
    for n in PARAM_NAMES[family]:
        if n != "q_rel":
            torch.testing.assert_close(pt[n].grad, p[n].grad, **TOL64)


@pytest.mark.parametrize("family", ["alibi", "t5", "kerple_log", "txl"])
def test_decode_loop_equals_full_causal_call(family):
    # prefill then single-token steps against a growing cache, row by row
    B, H, Hkv, L, D = 1, 4, 2, 24, 16
    q, k, v, p = setup_case(family, B, H, Hkv, L, L, D, torch.float32)
    full, full_lse = call_op(q, k, v, p, causal=True)
    n0 = 9
    rows, lses = [], []
    pre, pre_lse = call_op(q[:, :, :n0], k[:, :, :n0], v[:, :, :n0],
                           dict(p, q_rel=p["q_rel"][:, :, :n0]) if family == "txl" else p, causal=True)
    rows.append(pre)
    lses.append(pre_lse)
    for t in range(n0, L):
        pt = dict(p, q_rel=p["q_rel"][:, :, t:t + 1]) if family == "txl" else p
        o, l_ = call_op(q[:, :, t:t + 1], k[:, :, :t + 1], v[:, :, :t + 1], pt, causal=True, q_offset=t)
        rows.append(o)
        lses.append(l_)
    torch.testing.assert_close(torch.cat(rows, 2), full, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.cat(lses, 2), full_lse, rtol=1e-5, atol=1e-6)


def _grads(family, threads, seed=5, L=200):
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        q, k, v, p = setup_case(family, 2, 4, 2, L, L, 32, torch.float32, seed=seed)
        out, lse = call_op(q, k, v, p, causal=True)
        gen = torch.Generator().manual_seed(1)
        loss = (out * torch.randn(out.shape, generator=gen)).sum() + lse.sum()
        ls = leaves(q, k, v, p)
        return [out, lse] + list(torch.autograd.grad(loss, list(ls.values())))
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("family", FAMILIES)
def test_bit_identical_reruns_and_thread_counts(family):
    a = _grads(family, torch.get_num_threads())
    b = _grads(family, torch.get_num_threads())
    c = _grads(family, 1)
    for x, y, z in zip(a, b, c):
        assert torch.equal(x, y)
        assert torch.equal(x, z)


@pytest.mark.parametrize("Lq,Lk", [(1, 1), (1, 700), (700, 1), (63, 65), (64, 64), (65, 63),
                                   (127, 129), (129, 257), (255, 513), (513, 511), (192, 190)])
@pytest.mark.parametrize("family", ["none", "alibi", "txl", "shaw"])
def test_tile_boundaries(family, Lq, Lk):
    D = 13  # not a multiple of 8
    q, k, v, p = setup_case(family, 1, 2, 1, Lq, Lk, D, torch.float64, q_offset=max(Lk - Lq, 0),
                            Dv=7)
    compare(family, q, k, v, p, TOL64, causal=True, q_offset=max(Lk - Lq, 0))


def test_head_dim_256_and_strided_inputs():
    q, k, v, p = setup_case("alibi", 1, 2, 2, 20, 20, 256, torch.float64)
    compare("alibi", q, k, v, p, TOL64, causal=True)
    # bshd views transposed to bhsd (non-contiguous)
    base = torch.randn(1, 20, 2, 40, dtype=torch.float64)
    qs = base.transpose(1, 2)
    out, _ = ops.relative_attention(qs, qs, qs, causal=True)
    want, _ = ops.relative_attention(qs.contiguous(), qs.contiguous(), qs.contiguous(), causal=True)
    assert torch.equal(out, want)


def test_scale_and_empty_shapes():
    q, k, v, p = setup_case("t5", 1, 2, 2, 10, 12, 8, torch.float64)
    compare("t5", q, k, v, p, TOL64, scale=1.0)
    compare("t5", q, k, v, p, TOL64, scale=0.0)
    for shape_q, shape_k in [((0, 2, 5, 8), (0, 2, 5, 8)), ((1, 2, 0, 8), (1, 2, 5, 8)),
                             ((1, 2, 5, 8), (1, 2, 0, 8))]:
        qe = torch.randn(shape_q, requires_grad=True)
        ke = torch.randn(shape_k, requires_grad=True)
        out, lse = ops.relative_attention(qe, ke, ke, causal=True)
        assert out.shape == shape_q and lse.shape == shape_q[:3]
        if shape_k[2] == 0:
            assert (out == 0).all() and torch.isneginf(lse).all()
        out.sum().backward()
        assert qe.grad.shape == qe.shape and ke.grad.shape == ke.shape


# ---- modules ------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", ["python", "cpp", "scripted"])
@pytest.mark.parametrize("name", ["ALiBi", "T5RelativeBias", "KERPLEBias"])
def test_module_attention_matches_bias_plus_sdpa(impl, name):
    kwargs = {"ALiBi": dict(causal=True), "T5RelativeBias": dict(bidirectional=False),
              "KERPLEBias": dict(kind="power", causal=True)}[name]
    torch.manual_seed(0)
    py_mod = getattr(posenc.nn, name)(4, **kwargs)
    if impl == "cpp":
        mod = getattr(posenc.cpp, name)(4, **kwargs)
        posenc.cpp.load_state_dict(mod, py_mod.state_dict())
    elif impl == "scripted":
        mod = torch.jit.script(py_mod)
    else:
        mod = py_mod
    B, L, D = 2, 33, 16
    q = torch.randn(B, 4, L, D)
    k = torch.randn(B, 2, L + 5, D)
    v = torch.randn(B, 2, L + 5, D)
    kpm = torch.zeros(B, L + 5, dtype=torch.bool)
    kpm[1, :3] = True
    out = mod.attention(q, k, v, key_padding_mask=kpm, q_offset=5)
    bias = py_mod(L, L + 5, 5, 0)
    causal = torch.arange(L + 5)[None, :] <= torch.arange(L)[:, None] + 5
    mask = causal[None, None] & ~kpm[:, None, None, :]
    want = F.scaled_dot_product_attention(
        q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1),
        attn_mask=bias[None].masked_fill(~mask, -math.inf))
    torch.testing.assert_close(out, want, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("impl", ["python", "cpp", "scripted"])
def test_transformer_xl_attention_matches_paper_formula(impl):
    torch.manual_seed(0)
    py_mod = posenc.nn.TransformerXLRelativeScore(32, 4, 8).double()
    if impl == "cpp":
        mod = posenc.cpp.TransformerXLRelativeScore(32, 4, 8)
        mod.double()
        posenc.cpp.load_state_dict(mod, py_mod.state_dict())
    elif impl == "scripted":
        mod = torch.jit.script(py_mod)
    else:
        mod = py_mod
    B, L, M, D = 2, 11, 6, 8
    q = torch.randn(B, 4, L, D, dtype=torch.float64)
    k = torch.randn(B, 4, M + L, D, dtype=torch.float64)
    v = torch.randn(B, 4, M + L, D, dtype=torch.float64)
    out = mod.attention(q, k, v, mem_len=M)
    # (a) + (c) = (q + u) k^T, (b) + (d) from forward(); everything scaled by 1/sqrt(D)
    scores = (py_mod.content_query(q) @ k.transpose(-1, -2) + py_mod(q, M)) / math.sqrt(D)
    keep = torch.arange(M + L)[None, :] <= torch.arange(L)[:, None] + M
    want = torch.softmax(scores.masked_fill(~keep, -math.inf), -1) @ v
    torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-10)
    # gradients reach u, v and W_R
    params = list(mod.parameters())
    assert len(params) == 3
    grads = torch.autograd.grad(out.sum(), params)
    assert all(g.abs().sum() > 0 for g in grads)


# ---- bad inputs ---------------------------------------------------------------------------


def _qkv(B=1, H=4, L=8, D=16, Hkv=None, dtype=torch.float32):
    Hkv = H if Hkv is None else Hkv
    return torch.randn(B, H, L, D, dtype=dtype), torch.randn(B, Hkv, L, D, dtype=dtype), torch.randn(B, Hkv, L, D, dtype=dtype)


def _bad_cases():
    q, k, v = _qkv()
    slopes = ops.alibi_slopes(4)
    cu = torch.tensor([0, 3, 8])
    qt, kt = torch.randn(8, 4, 16), torch.randn(8, 4, 16)
    nan_slopes = slopes.clone()
    nan_slopes[1] = float("nan")
    return [
        ("batch", dict(q=q, k=torch.randn(2, 4, 8, 16), v=torch.randn(2, 4, 8, 16)), "'k'.*batch"),
        ("head_dim", dict(q=q, k=torch.randn(1, 4, 8, 8), v=v), "'k'.*head_dim"),
        ("gqa", dict(q=q, k=torch.randn(1, 3, 8, 16), v=torch.randn(1, 3, 8, 16)), "'k'.*divides"),
        ("v heads", dict(q=q, k=k, v=torch.randn(1, 2, 8, 16)), "'v'.*heads"),
        ("v len", dict(q=q, k=k, v=torch.randn(1, 4, 9, 16)), "'v'.*length"),
        ("rank", dict(q=q[0], k=k, v=v), "'q'"),
        ("int q", dict(q=q.long(), k=k.long(), v=v.long()), "'q'.*float"),
        ("dtype mix", dict(q=q, k=k.double(), v=v), "'k'.*dtype"),
        ("head_dim 257", dict(q=torch.randn(1, 1, 2, 257), k=torch.randn(1, 1, 2, 257), v=torch.randn(1, 1, 2, 257)), "head_dim <= 256"),
        ("two terms", dict(q=q, k=k, v=v, slopes=slopes, table=torch.randn(32, 4)), "at most one"),
        ("slopes shape", dict(q=q, k=k, v=v, slopes=torch.ones(3)), "'slopes'.*heads"),
        ("slopes nan", dict(q=q, k=k, v=v, slopes=nan_slopes), "'slopes'.*finite"),
        ("table heads", dict(q=q, k=k, v=v, table=torch.randn(32, 3)), "'table'.*heads"),
        ("r1 alone", dict(q=q, k=k, v=v, r1=torch.ones(4)), "'r2'"),
        ("r2 negative", dict(q=q, k=k, v=v, r1=torch.ones(4), r2=-torch.ones(4)), "'r2'"),
        ("r1 inf", dict(q=q, k=k, v=v, r1=torch.full((4,), float("inf")), r2=torch.ones(4)), "'r1'.*finite"),
        ("kind", dict(q=q, k=k, v=v, r1=torch.ones(4), r2=torch.ones(4), kerple_kind="cubic"), "kerple_kind|kind"),
        ("rel even", dict(q=q, k=k, v=v, rel_emb=torch.randn(4, 4, 16)), "'rel_emb'.*odd"),
        ("rel dtype", dict(q=q, k=k, v=v, rel_emb=torch.randn(4, 5, 16, dtype=torch.float64)), "'rel_emb'.*dtype"),
        ("q_rel alone", dict(q=q, k=k, v=v, q_rel=q), "'q_rel'"),
        ("q_rel shape", dict(q=q, k=k, v=v, rel_emb=torch.randn(4, 5, 16), q_rel=q[:, :, :4]), "'q_rel'.*shape"),
        ("max_distance range", dict(q=q, k=k, v=v, rel_emb=torch.randn(4, 5, 16), max_distance=3), "'max_distance'"),
        ("max_distance alibi", dict(q=q, k=k, v=v, slopes=slopes, max_distance=3), "'max_distance'"),
        ("bidirectional none", dict(q=q, k=k, v=v, bidirectional=True), "'bidirectional'"),
        ("t5 buckets", dict(q=q, k=k, v=v, table=torch.randn(3, 4)), "'table'"),
        ("kpm shape", dict(q=q, k=k, v=v, key_padding_mask=torch.zeros(1, 7, dtype=torch.bool)), "'key_padding_mask'"),
        ("kpm dtype", dict(q=q, k=k, v=v, key_padding_mask=torch.zeros(1, 8)), "'key_padding_mask'.*dtype"),
        ("scale nan", dict(q=q, k=k, v=v, scale=float("nan")), "'scale'.*finite"),
        ("offset", dict(q=q, k=k, v=v, q_offset=2**62), "q_offset"),
        ("layout", dict(q=q, k=k, v=v, layout="bshd"), "'layout'"),
        ("thd no cu", dict(q=qt, k=kt, v=kt, layout="thd"), "'cu_seqlens_q'"),
        ("cu not ending at T", dict(q=qt, k=kt, v=kt, layout="thd", cu_seqlens_q=torch.tensor([0, 3, 7])), "'cu_seqlens_q'"),
        ("cu unsorted", dict(q=qt, k=kt, v=kt, layout="thd", cu_seqlens_q=torch.tensor([0, 5, 3, 8])), "'cu_seqlens_q'"),
        ("cu dtype", dict(q=qt, k=kt, v=kt, layout="thd", cu_seqlens_q=cu.float()), "'cu_seqlens_q' must have dtype int64 or int32"),
        ("cu with bhsd", dict(q=q, k=k, v=v, cu_seqlens_q=cu), "'cu_seqlens_q'"),
        ("kpm with thd", dict(q=qt, k=kt, v=kt, layout="thd", cu_seqlens_q=cu, key_padding_mask=torch.zeros(1, 8, dtype=torch.bool)), "'key_padding_mask'"),
    ]


@pytest.mark.parametrize("case", _bad_cases(), ids=lambda c: c[0])
def test_bad_inputs(case):
    _, kw, pattern = case
    kw = dict(kw)
    q, k, v = kw.pop("q"), kw.pop("k"), kw.pop("v")
    with pytest.raises(RuntimeError, match=r"posenc\.relative_attention: argument .*" + pattern):
        ops.relative_attention(q, k, v, **kw)
    # the process is still usable
    out, _ = ops.relative_attention(*_qkv())
    assert torch.isfinite(out).all()


def test_bad_backward_inputs():
    q, k, v = _qkv()
    out, lse = ops.relative_attention(q, k, v)
    op = torch.ops.posenc.relative_attention_backward
    common = (None, None, None, None, None, None, False, None, None, 0, 0, None, None, None, "bhsd", None, None, None, None)
    with pytest.raises(RuntimeError, match=r"posenc\.relative_attention_backward: argument 'grad_out'"):
        op(out[:, :, :3], None, q, k, v, out, lse, *common)
    with pytest.raises(RuntimeError, match=r"posenc\.relative_attention_backward: argument 'lse'"):
        op(out, None, q, k, v, out, lse.double(), *common)


# ---- dispatcher: opcheck, compile, script -------------------------------------------------


def _opcheck_samples():
    torch.manual_seed(0)
    out = []
    for family in FAMILIES:
        q, k, v, p = setup_case(family, 1, 2, 1, 6, 9, 4, torch.float64, q_offset=3)
        kw = {n: val for n, val in p.items()}
        kw.update(causal=True, q_offset=3)
        out.append(((q, k, v), kw))
    qt = torch.randn(9, 2, 4, dtype=torch.float64, requires_grad=True)
    cu = torch.tensor([0, 4, 9])
    out.append(((qt, qt.detach().clone().requires_grad_(), qt.detach().clone().requires_grad_()),
                dict(slopes=torch.rand(2, dtype=torch.float64, requires_grad=True), causal=True,
                     layout="thd", cu_seqlens_q=cu)))
    return out


@pytest.mark.parametrize("sample", _opcheck_samples(), ids=lambda s: str(sorted(s[1])))
def test_opcheck(sample):
    args, kw = sample
    torch.library.opcheck(torch.ops.posenc.relative_attention.default, args, kw)


def test_compile_fullgraph_dynamic_no_graph_break():
    counter = torch._dynamo.testing.CompileCounter()

    def f(q, k, v, slopes, off):
        out, lse = ops.relative_attention(q, k, v, slopes=slopes, causal=True, q_offset=off)
        return out.sum() + lse.sum()

    cf = torch.compile(f, backend=counter, fullgraph=True, dynamic=True)
    slopes = ops.alibi_slopes(4)
    for L in (8, 13, 21):
        q, k, v = _qkv(L=L, Hkv=2)
        torch.testing.assert_close(cf(q, k, v, slopes, L), f(q, k, v, slopes, L))
    assert counter.frame_count == 1


def test_compile_inductor_backward():
    q, k, v, p = setup_case("t5", 1, 2, 2, 12, 12, 8, torch.float32)
    f = lambda q, k, v, t: ops.relative_attention(q, k, v, table=t, max_distance=20, causal=True)[0].square().sum()
    cf = torch.compile(f, fullgraph=True)
    a = torch.autograd.grad(cf(q, k, v, p["table"]), [q, k, v, p["table"]])
    b = torch.autograd.grad(f(q, k, v, p["table"]), [q, k, v, p["table"]])
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y)


def test_torchscript_function():
    def f(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slopes: torch.Tensor) -> torch.Tensor:
        return ops.relative_attention(q, k, v, slopes=slopes, causal=True)[0]

    sf = torch.jit.script(f)
    q, k, v = _qkv()
    torch.testing.assert_close(sf(q, k, v, ops.alibi_slopes(4)), f(q, k, v, ops.alibi_slopes(4)))


# ---- found by review ----------------------------------------------------------------------


@pytest.mark.parametrize("kw", [dict(rel_emb=torch.randn(1, 3, 8)),
                                dict(rel_emb=torch.randn(1, 21, 8), max_distance=0),
                                dict(slopes=torch.ones(1))])
def test_no_keys_gives_zeros(kw):
    q = torch.randn(1, 1, 4, 8, requires_grad=True)
    k = torch.randn(1, 1, 0, 8)
    out, lse = ops.relative_attention(q, k, k, **kw)
    assert (out == 0).all() and torch.isneginf(lse).all()
    assert (torch.autograd.grad(out.sum(), q)[0] == 0).all()


def test_nan_scores_propagate_not_masked():
    q, k, v = _qkv(L=40)
    k = k.clone()
    k[0, 0, 30, 3] = float("nan")
    out, lse = ops.relative_attention(q, k, v)
    assert torch.isnan(out[0, 0]).all() and torch.isnan(lse[0, 0]).all()
    assert torch.isfinite(out[0, 1:]).all()
    qn = q.clone()
    qn[0, 2, 5] = float("nan")
    out, lse = ops.relative_attention(qn, k[:, :, :8], v[:, :, :8])
    assert torch.isnan(out[0, 2, 5]).all() and torch.isnan(lse[0, 2, 5])
    with pytest.raises(RuntimeError, match=r"posenc\.relative_attention: argument 'scale'.*float32"):
        ops.relative_attention(q, k, v, scale=1e39)


def test_double_backward_raises():
    q, k, v = (t.requires_grad_() for t in _qkv())
    out, _ = ops.relative_attention(q, k, v)
    gq, = torch.autograd.grad(out.sum(), q, create_graph=True)
    with pytest.raises(RuntimeError, match="not differentiable"):
        torch.autograd.grad((gq ** 2).sum(), q)


def test_none_tensor_and_head_rules():
    q, k, v = _qkv()
    with pytest.raises(TypeError, match=r"posenc\.relative_attention: argument 'k' must be a Tensor"):
        ops.relative_attention(q, None, v)
    with pytest.raises(RuntimeError, match=r"argument 'k'.*divides"):
        ops.relative_attention(q[:, :0], k, v)
    with pytest.raises(RuntimeError, match=r"argument 'kerple_kind'"):
        ops.relative_attention(q, k, v, r1=torch.ones(4), r2=torch.ones(4), kerple_kind="cubic")


_THD_SCRATCH_SCRIPT = r"""
import resource, sys, torch
sys.path.insert(0, sys.argv[1])
from posenc import ops
torch.manual_seed(0)
H, D, n_short, long = 8, 16, 3000, 2048
lens = [1] * n_short + [long]
cu = torch.tensor([0] + list(torch.tensor(lens).cumsum(0)), dtype=torch.long)
T = int(cu[-1])
q, k, v = (torch.randn(T, H, D, requires_grad=True) for _ in range(3))
extra = dict(slopes=ops.alibi_slopes(H).requires_grad_()) if sys.argv[2] == "alibi" else dict(
    rel_emb=torch.randn(H, 2 * long - 1, D, requires_grad=True), q_rel=torch.randn(T, H, D))
out, lse = ops.relative_attention(q, k, v, causal=True, layout="thd", cu_seqlens_q=cu,
                                  cu_seqlens_k=cu, max_seqlen_q=long, max_seqlen_k=long, **extra)
g = torch.randn_like(out)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out.backward(g)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
"""


@pytest.mark.parametrize("family", ["alibi", "txl"])
def test_packed_backward_scratch_scales_with_tokens_not_sequences_times_longest(family):
    # 3000 one-token sequences next to one of 2048 tokens: scratch sized n_seqs * H * (2 L_max - 1)
    # would be 3001 * 8 * 4095 doubles = 786 MB (ALiBi) or 3001 * 8 * 4095 * 16 floats (txl);
    # per-sequence slabs need a few MB.
    import subprocess
    import sys
    from pathlib import Path

    python_dir = str(Path(__file__).resolve().parents[2] / "python")
    res = subprocess.run([sys.executable, "-c", _THD_SCRATCH_SCRIPT, python_dir, family],
                         capture_output=True, text=True, check=True)
    grown_mib = float(res.stdout.strip().splitlines()[-1])
    assert grown_mib < 200, f"backward grew the peak RSS by {grown_mib:.0f} MiB"
