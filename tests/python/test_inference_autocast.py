"""torch.inference_mode() and torch.autocast with the posenc modules and ops (README:
"Determinism, threads, inference_mode and autocast").

inference_mode: every module gives exactly its no_grad outputs, as inference tensors; a
RotaryEmbedding that first met a length (dynamic NTK) or was built under inference_mode
still trains afterwards.

autocast (CPU, bfloat16; CUDA variants skip without a GPU): rope / apply_rotary_pos_emb /
the bias ops / sinusoidal_table are not cast (output in x's or the parameters' dtype, exactly
as outside autocast); rel_pos_scores and relative_attention follow autocast's lower-precision
policy like matmul and scaled_dot_product_attention (fp32 activations cast to the autocast
dtype, fp64 left alone, position parameters read as they are, lse in fp32).
"""
import math

import pytest
import torch

import posenc.cpp as pcpp
from posenc import nn as pnn
from posenc import ops
from posenc.rope_config import RopeConfig

BF16 = torch.bfloat16
F64 = torch.float64


def _g(seed=0):
    return torch.Generator().manual_seed(seed)


def _dynamic_cfg():
    return RopeConfig(head_dim=16, rope_theta=10000.0, rope_type="dynamic", factor=2.0,
                      max_position_embeddings=8)


def _xpos_cfg():
    return RopeConfig(head_dim=16, rope_type="xpos")


def _module_calls(M):
    """(name, module, call) for every module of M (posenc.nn or posenc.cpp)."""
    torch.manual_seed(0)
    g = _g()
    q = torch.randn(2, 4, 12, 16, generator=g)
    k = torch.randn(2, 4, 12, 16, generator=g)
    v = torch.randn(2, 4, 12, 16, generator=g)
    x = torch.randn(2, 12, 16, generator=g)
    rot = M.RotaryEmbedding(16)
    dyn = M.RotaryEmbedding(16, scaling=_dynamic_cfg())
    xpos = M.RotaryEmbedding(16, scaling=_xpos_cfg())
    alibi, t5, kerple = M.ALiBi(4), M.T5RelativeBias(4), M.KERPLEBias(4, kind="power")
    txl = M.TransformerXLRelativeScore(32, 4, 16)
    sin, learned = M.SinusoidalPositionalEncoding(16), M.LearnedPositionalEmbedding(64, 16)
    kpm = torch.zeros(2, 12, dtype=torch.bool)
    kpm[1, -3:] = True
    return [
        ("rotary", lambda: rot(q, k, offset=3)),
        ("rotary-dynamic", lambda: dyn(q, k, offset=20)),
        ("rotary-xpos", lambda: xpos(q, k, offset=5)),
        ("alibi", lambda: alibi(12, 12, 4, 0)),
        ("alibi-attention", lambda: alibi.attention(q, k, v)),
        ("t5", lambda: t5(12, 20)),
        ("t5-attention", lambda: t5.attention(q, k, v, kpm)),
        ("kerple", lambda: kerple(12, 12)),
        ("kerple-attention", lambda: kerple.attention(q, k, v)),
        ("txl", lambda: txl(q, mem_len=4)),
        ("txl-attention", lambda: txl.attention(q[:, :, :8], k, v, mem_len=4)),
        ("sinusoidal", lambda: sin(x, offset=7)),
        ("learned", lambda: learned(x, offset=9)),
    ]


def _flat(out):
    return list(out) if isinstance(out, (tuple, list)) else [out]


@pytest.mark.parametrize("impl", ["py", "cpp"])
def test_inference_mode_matches_no_grad(impl):
    M = pnn if impl == "py" else pcpp
    calls = _module_calls(M)
    with torch.no_grad():
        expected = {name: _flat(f()) for name, f in calls}
    with torch.inference_mode():
        got = {name: _flat(f()) for name, f in calls}
    for name, _ in calls:
        for e, o in zip(expected[name], got[name]):
            assert o.is_inference(), f"{impl} {name}: not an inference tensor"
            assert not e.is_inference()
            assert torch.equal(e, o), f"{impl} {name}: inference_mode differs from no_grad"


@pytest.mark.parametrize("impl", ["py", "cpp"])
@pytest.mark.parametrize("case", ["dynamic-length-seen-in-inference", "built-in-inference"])
def test_rotary_trains_after_inference_mode(impl, case):
    # The tables saved for rope's backward must not be inference tensors (they used to be:
    # "Inference tensors cannot be saved for backward").
    M = pnn if impl == "py" else pcpp
    scaling = _dynamic_cfg() if case.startswith("dynamic") else None
    g = _g(1)
    q = torch.randn(1, 2, 24, 16, generator=g)
    if case == "built-in-inference":
        with torch.inference_mode():
            mod = M.RotaryEmbedding(16, scaling=scaling)
    else:
        mod = M.RotaryEmbedding(16, scaling=scaling)
        with torch.inference_mode():
            mod(q, q)  # length 24 > max_position_embeddings: a new table, made in inference mode
    fresh = M.RotaryEmbedding(16, scaling=scaling)
    grads = []
    for m in (mod, fresh):
        qq = q.clone().requires_grad_()
        kk = q.clone().requires_grad_()
        qr, kr = m(qq, kk)
        (qr * 1.5 + kr).sum().backward()
        grads.append((qr.detach(), qq.grad, kk.grad))
    for a, b in zip(*grads):
        assert torch.equal(a, b)


# ---- autocast ------------------------------------------------------------------------------------


def test_ops_without_an_autocast_cast_keep_their_dtypes():
    g = _g(2)
    x32 = torch.randn(1, 2, 6, 16, generator=g)
    x16 = x32.to(BF16)
    inv = ops.rope_inv_freq(16)
    cos, sin = torch.randn(6, 16, generator=g), torch.randn(6, 16, generator=g)
    slopes, table = ops.alibi_slopes(2), torch.randn(32, 2, generator=g)
    r1, r2 = torch.rand(2, generator=g) + 0.1, torch.rand(2, generator=g) + 0.1
    calls = [
        ("rope-bf16", lambda: ops.rope(x16, None, inv, offset=3), BF16),
        ("rope-fp32", lambda: ops.rope(x32, None, inv, offset=3), torch.float32),
        ("apply-rotary-fp32", lambda: ops.apply_rotary_pos_emb(x32, cos, sin), torch.float32),
        ("apply-rotary-bf16", lambda: ops.apply_rotary_pos_emb(x16, cos.to(BF16), sin.to(BF16)), BF16),
        ("alibi", lambda: ops.alibi_bias(slopes, 6, 9, 3), torch.float32),
        ("t5", lambda: ops.t5_bias(table, 6, 9), torch.float32),
        ("kerple", lambda: ops.kerple_bias(r1, r2, 6, 9), torch.float32),
        ("sinusoidal", lambda: ops.sinusoidal_table(6, 16), torch.float32),
    ]
    plain = {name: f() for name, f, _ in calls}
    with torch.autocast("cpu", dtype=BF16):
        for name, f, dtype in calls:
            out = f()
            assert out.dtype == dtype, name
            assert torch.equal(out, plain[name]), name
        # mixed tables are refused as outside autocast (no silent mixed-dtype result)
        with pytest.raises(RuntimeError, match=r"posenc\.apply_rotary_pos_emb: argument 'cos' must have the dtype of 'x' \(BFloat16\), but got dtype Float"):
            ops.apply_rotary_pos_emb(x16, cos, sin)


def test_rel_pos_scores_autocast_policy():
    g = _g(3)
    q = torch.randn(2, 2, 5, 8, generator=g)
    rel = torch.randn(2, 15, 8, generator=g)
    want = ops.rel_pos_scores(q.to(BF16), rel.to(BF16), 2, 0, 7)  # explicit casts, no autocast
    with torch.autocast("cpu", dtype=BF16):
        for qq, rr in ((q, rel), (q.to(BF16), rel), (q, rel.to(BF16))):
            out = ops.rel_pos_scores(qq, rr, 2, 0, 7)
            assert out.dtype == BF16
            assert torch.equal(out, want)
        # fp64 is never cast: fp64 in, fp64 out
        assert ops.rel_pos_scores(q.double(), rel.double(), 2, 0, 7).dtype == F64
    # backward: gradients reach the fp32 leaves in fp32
    ql, rl = q.clone().requires_grad_(), rel.clone().requires_grad_()
    with torch.autocast("cpu", dtype=BF16):
        out = ops.rel_pos_scores(ql, rl, 2, 0, 7)
    out.float().sum().backward()
    assert ql.grad.dtype == torch.float32 and rl.grad.dtype == torch.float32
    # d/dq sum_j q_i . R[row(i, j)] = sum_j R[row(i, j)] (fp64, from the bf16-rounded R)
    c = 7
    i = torch.arange(5)[:, None] + 2
    j = torch.arange(7)[None, :]
    rows = (i - j).clamp(-c, c) + c
    ref = rel.to(BF16).double()[:, rows].sum(2)  # (H, Lq, D)
    torch.testing.assert_close(ql.grad.double(), ref[None].expand(2, -1, -1, -1), atol=0.1, rtol=0.02)


def _ref_alibi_attention(q, k, v, slopes, q_offset):
    # softmax(q k^T / sqrt(D) - slope * |q_pos - k_pos|) v in fp64 (Press et al. 2022)
    q, k, v = q.double(), k.double(), v.double()
    d = (torch.arange(q.shape[2])[:, None] + q_offset - torch.arange(k.shape[2])[None, :]).double()
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) - slopes.double()[:, None, None] * d.abs()
    return torch.softmax(s, -1) @ v


def test_relative_attention_autocast_policy():
    g = _g(4)
    q = torch.randn(1, 2, 6, 8, generator=g)
    k = torch.randn(1, 2, 9, 8, generator=g)
    v = torch.randn(1, 2, 9, 8, generator=g)
    slopes = ops.alibi_slopes(2)  # fp32 parameters: read as they are
    want_out, want_lse = ops.relative_attention(q.to(BF16), k.to(BF16), v.to(BF16), slopes=slopes, q_offset=3)
    with torch.autocast("cpu", dtype=BF16):
        # a bf16 query with fp32 keys (an fp32 cache) is no longer a dtype error
        for qq in (q, q.to(BF16)):
            out, lse = ops.relative_attention(qq, k, v, slopes=slopes, q_offset=3)
            assert out.dtype == BF16 and lse.dtype == torch.float32
            assert torch.equal(out, want_out) and torch.equal(lse, want_lse)
        out64, lse64 = ops.relative_attention(q.double(), k.double(), v.double(), slopes=slopes, q_offset=3)
        assert out64.dtype == F64 and lse64.dtype == F64
    ref = _ref_alibi_attention(q.to(BF16), k.to(BF16), v.to(BF16), slopes, 3)
    torch.testing.assert_close(want_out.double(), ref, atol=2e-2, rtol=2e-2)


def test_autocast_model_trains():
    # A small attention block: Linear projections (autocast: bf16), RoPE, fused ALiBi attention,
    # Transformer-XL scores. Outputs in bf16, gradients in the fp32 parameters' dtype.
    torch.manual_seed(5)
    proj = torch.nn.Linear(32, 3 * 32)
    rot, alibi = pnn.RotaryEmbedding(16), pnn.ALiBi(2)
    txl = pnn.TransformerXLRelativeScore(32, 2, 16)
    x = torch.randn(2, 10, 32)

    def block(x):
        qkv = proj(x).view(2, 10, 3, 2, 16).permute(2, 0, 3, 1, 4)
        q, k = rot(qkv[0], qkv[1])
        return alibi.attention(q, k, qkv[2]), txl(q)

    with torch.autocast("cpu", dtype=BF16):
        out, scores = block(x)
    assert out.dtype == BF16 and scores.dtype == BF16
    (out.float().sum() + scores.float().sum()).backward()
    for p in list(proj.parameters()) + [txl.v, txl.r_proj.weight]:  # forward does not use u
        assert p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()
    # the fp32 block without autocast gives the same numbers within bf16 rounding
    with torch.no_grad():
        out32, scores32 = block(x)
    torch.testing.assert_close(out.float(), out32, atol=5e-2, rtol=5e-2)
    torch.testing.assert_close(scores.float(), scores32, atol=5e-2, rtol=5e-2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float16, BF16])
def test_cuda_autocast_policy(dtype):
    g = _g(6)
    q = torch.randn(1, 2, 6, 8, generator=g).cuda()
    k = torch.randn(1, 2, 9, 8, generator=g).cuda()
    rel = torch.randn(2, 31, 8, generator=g).cuda()
    inv = ops.rope_inv_freq(8, device=torch.device("cuda"))
    want, _ = ops.relative_attention(q.to(dtype), k.to(dtype), k.to(dtype))
    want_rel = ops.rel_pos_scores(q.to(dtype), rel.to(dtype), 0, 0, 6)
    with torch.autocast("cuda", dtype=dtype):
        out, lse = ops.relative_attention(q, k, k)
        assert out.dtype == dtype and lse.dtype == torch.float32 and torch.equal(out, want)
        assert torch.equal(ops.rel_pos_scores(q, rel, 0, 0, 6), want_rel)
        assert ops.rope(q, None, inv).dtype == torch.float32
        assert ops.alibi_bias(ops.alibi_slopes(2, device=torch.device("cuda")), 6, 9).dtype == torch.float32
