"""posenc.flash_attn against an fp64 reference written from flash-attn 2's documented semantics
(bottom-right aligned causal mask; ALiBi bias -slope * |i + seqlen_k - seqlen_q - j|), and
int32 cu_seqlens / position ids across posenc's ops."""
import math

import pytest
import torch

from posenc import flash_attn as fa
from posenc import ops


def ref_attention(q, k, v, scale=None, causal=False, slopes=None):
    """One sequence: q (Sq, H, D), k (Sk, Hkv, D), v (Sk, Hkv, Dv), fp64 -> (out, lse (H, Sq))."""
    q, k, v = q.double(), k.double(), v.double()
    sq, h, d = q.shape
    sk, hkv = k.shape[0], k.shape[1]
    rep = h // hkv
    k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    s = torch.einsum("ihd,jhd->hij", q, k) * scale
    i = torch.arange(sq, dtype=torch.float64)[:, None]
    j = torch.arange(sk, dtype=torch.float64)[None, :]
    rel = i + sk - sq - j
    if slopes is not None:
        s = s - slopes.double()[:, None, None] * rel.abs()
    if causal:
        s = s.masked_fill(rel < 0, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    p = torch.exp(s - lse[..., None]).nan_to_num(0.0)  # a fully masked row: zeros
    out = torch.einsum("hij,jhd->ihd", p, v)
    return out, lse


def ref_varlen(q, k, v, cq, ck, **kw):
    outs, lses = [], []
    for b in range(len(cq) - 1):
        o, s = ref_attention(q[cq[b] : cq[b + 1]], k[ck[b] : ck[b + 1]], v[ck[b] : ck[b + 1]], **kw)
        outs.append(o)
        lses.append(s)
    return torch.cat(outs), torch.cat(lses, dim=1)


def packed(lens_q, lens_k, h=4, hkv=2, d=8, dv=6, dtype=torch.float64, grad=False):
    tq, tk = sum(lens_q), sum(lens_k)
    q = torch.randn(tq, h, d, dtype=dtype, requires_grad=grad)
    k = torch.randn(tk, hkv, d, dtype=dtype, requires_grad=grad)
    v = torch.randn(tk, hkv, dv, dtype=dtype, requires_grad=grad)
    cq = [0]
    ck = [0]
    for a, b in zip(lens_q, lens_k):
        cq.append(cq[-1] + a)
        ck.append(ck[-1] + b)
    return q, k, v, cq, ck


CASES = [
    ([5, 3, 7], [5, 3, 7]),  # training: equal lengths, one fused call
    ([2, 1, 4], [6, 5, 8]),  # the same delta (4) for every sequence: one fused call
    ([2, 3, 1], [7, 3, 9]),  # chunked prefill: per-sequence deltas
    ([4, 0, 3], [2, 0, 3]),  # an empty sequence; sq > sk: leading queries see no key (causal)
]


@pytest.mark.parametrize("cu_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("alibi", [None, "heads", "batch_heads"])
@pytest.mark.parametrize("lens", CASES)
def test_varlen_matches_reference(cu_dtype, causal, alibi, lens):
    torch.manual_seed(0)
    q, k, v, cq, ck = packed(*lens)
    b = len(cq) - 1
    slopes = None
    if alibi == "heads":
        slopes = ops.alibi_slopes(4).float()
    elif alibi == "batch_heads":
        slopes = torch.rand(b, 4) * 0.5
    out, lse, probs = fa.flash_attn_varlen_func(
        q, k, v, torch.tensor(cq, dtype=cu_dtype), torch.tensor(ck, dtype=cu_dtype),
        max(lens[0]), max(lens[1]), softmax_scale=0.3, causal=causal, alibi_slopes=slopes,
        return_attn_probs=True,
    )
    assert probs is None
    outs, lses = [], []
    for i in range(b):
        sl = None if slopes is None else (slopes if slopes.dim() == 1 else slopes[i])
        o, s = ref_attention(q[cq[i] : cq[i + 1]], k[ck[i] : ck[i + 1]], v[ck[i] : ck[i + 1]],
                             scale=0.3, causal=causal, slopes=sl)
        outs.append(o)
        lses.append(s)
    want_out, want_lse = torch.cat(outs), torch.cat(lses, dim=1)
    torch.testing.assert_close(out, want_out, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(lse, want_lse, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("lens", [CASES[0], CASES[2]])
def test_varlen_backward_matches_reference(lens):
    torch.manual_seed(1)
    q, k, v, cq, ck = packed(*lens, grad=True)
    slopes = ops.alibi_slopes(4)
    out = fa.flash_attn_varlen_func(q, k, v, torch.tensor(cq, dtype=torch.int32), torch.tensor(ck, dtype=torch.int32),
                                    max(lens[0]), max(lens[1]), causal=True, alibi_slopes=slopes.float())
    g = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v), g)
    ref = []
    for i in range(len(cq) - 1):
        ref.append(ref_attention(q[cq[i] : cq[i + 1]], k[ck[i] : ck[i + 1]], v[ck[i] : ck[i + 1]],
                                 causal=True, slopes=slopes)[0])
    want = torch.autograd.grad(torch.cat(ref), (q, k, v), g)
    for a, w in zip(got, want):
        torch.testing.assert_close(a, w, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("alibi", [None, "heads", "batch_heads"])
@pytest.mark.parametrize("sq,sk", [(6, 6), (3, 8), (5, 2)])
def test_dense_matches_reference(causal, alibi, sq, sk):
    torch.manual_seed(2)
    B, H, Hkv, D = 2, 4, 1, 8
    # flash-attn's (B, S, H, D) layout, made non-contiguous on purpose
    q = torch.randn(B, H, sq, D, dtype=torch.float64).transpose(1, 2)
    k = torch.randn(B, sk, Hkv, D, dtype=torch.float64)
    v = torch.randn(B, sk, Hkv, 5, dtype=torch.float64)
    slopes = None if alibi is None else (ops.alibi_slopes(H).float() if alibi == "heads" else torch.rand(B, H))
    out, lse, _ = fa.flash_attn_func(q, k, v, causal=causal, alibi_slopes=slopes, return_attn_probs=True)
    assert out.shape == (B, sq, H, 5) and lse.shape == (B, H, sq)
    for b in range(B):
        sl = None if slopes is None else (slopes if slopes.dim() == 1 else slopes[b])
        o, s = ref_attention(q[b], k[b], v[b], causal=causal, slopes=sl)
        torch.testing.assert_close(out[b], o, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(lse[b], s, rtol=1e-10, atol=1e-10)


def test_fp32_and_bf16_inputs():
    torch.manual_seed(3)
    q, k, v, cq, ck = packed([5, 7], [5, 7], dtype=torch.float32)
    cu_q, cu_k = torch.tensor(cq, dtype=torch.int32), torch.tensor(ck, dtype=torch.int32)
    want = ref_varlen(q, k, v, cq, ck, causal=True)[0]
    got = fa.flash_attn_varlen_func(q, k, v, cu_q, cu_k, 7, 7, causal=True)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    got16 = fa.flash_attn_varlen_func(q.bfloat16(), k.bfloat16(), v.bfloat16(), cu_q, cu_k, 7, 7, causal=True)
    assert got16.dtype == torch.bfloat16
    torch.testing.assert_close(got16.double(), want, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"dropout_p": 0.1}, "argument 'dropout_p' must be 0.0"),
        ({"window_size": (4, 0)}, r"argument 'window_size' must be \(-1, -1\)"),
        ({"softcap": 30.0}, "argument 'softcap' must be 0.0"),
        ({"block_table": torch.zeros(1, 1, dtype=torch.int32)}, "argument 'block_table' must be None"),
        ({"alibi_slopes": torch.ones(3)}, r"argument 'alibi_slopes' must have shape \(4,\) or \(2, 4\)"),
        ({"max_seqlen_q": 3}, "argument 'max_seqlen_q' must be >= the longest query sequence"),
    ],
)
def test_unsupported_and_bad_arguments(kwargs, match):
    q, k, v, cq, ck = packed([5, 7], [5, 7])
    args = dict(max_seqlen_q=7, max_seqlen_k=7)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        fa.flash_attn_varlen_func(q, k, v, torch.tensor(cq, dtype=torch.int32), torch.tensor(ck, dtype=torch.int32), **args)


@pytest.mark.parametrize("bad", [[0, 5, 11], [1, 5, 12], [0, 7, 5, 12]])
def test_bad_cu_seqlens(bad):
    q, k, v, cq, ck = packed([5, 7], [5, 7])
    ck_t = torch.tensor(ck if len(bad) == 3 else [0, 2, 5, 12], dtype=torch.int32)
    with pytest.raises(ValueError, match=r"argument 'cu_seqlens_q' must start at 0, never decrease and end at total_q = 12, but got \["):
        fa.flash_attn_varlen_func(q, k, v, torch.tensor(bad, dtype=torch.int32), ck_t, 7, 7)
    # still usable after the error
    fa.flash_attn_varlen_func(q, k, v, torch.tensor(cq, dtype=torch.int32), torch.tensor(ck, dtype=torch.int32), 7, 7)


def test_bad_cu_seqlens_dtype_and_rank():
    q, k, v, cq, ck = packed([5, 7], [5, 7])
    with pytest.raises(ValueError, match="argument 'cu_seqlens_k' must be a non-empty 1-D int32 or int64 tensor.*float32"):
        fa.flash_attn_varlen_func(q, k, v, torch.tensor(cq, dtype=torch.int32), torch.tensor(ck, dtype=torch.float32), 7, 7)
    with pytest.raises(ValueError, match=r"argument 'q' must be 3-D \(total_tokens, heads, head_dim\)"):
        fa.flash_attn_varlen_func(q[None], k, v, torch.tensor(cq, dtype=torch.int32), torch.tensor(ck, dtype=torch.int32), 7, 7)


# ---- int32 index tensors in the ops themselves ------------------------------------------------


def test_relative_attention_int32_cu_seqlens_equal_int64():
    torch.manual_seed(4)
    q, k, v, cq, ck = packed([3, 6], [3, 6], dtype=torch.float32, grad=True)
    table = torch.randn(32, 4, requires_grad=True)
    runs = []
    for dt in (torch.int64, torch.int32):
        out, lse = ops.relative_attention(q, k, v, table=table, causal=True, layout="thd",
                                          cu_seqlens_q=torch.tensor(cq, dtype=dt))
        grads = torch.autograd.grad(out.sum() + lse.sum(), (q, k, v, table))
        runs.append((out, lse, *grads))
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def test_relative_attention_rejects_other_cu_dtypes():
    q, k, v, cq, _ = packed([3, 6], [3, 6], dtype=torch.float32)
    with pytest.raises(RuntimeError, match="argument 'cu_seqlens_q' must have dtype int64 or int32.*Float"):
        ops.relative_attention(q, k, v, layout="thd", cu_seqlens_q=torch.tensor(cq, dtype=torch.float32))
    with pytest.raises(RuntimeError, match="argument 'cu_seqlens_q' must have dtype int64 or int32.*Short"):
        ops.relative_attention(q, k, v, layout="thd", cu_seqlens_q=torch.tensor(cq, dtype=torch.int16))


def test_sinusoidal_table_int32_positions():
    pos = torch.tensor([0, 5, -3, 2**30], dtype=torch.int64)
    want = torch.ops.posenc.sinusoidal_table(pos, 16, 10000.0, False, None)
    got = torch.ops.posenc.sinusoidal_table(pos.int(), 16, 10000.0, False, None)
    assert torch.equal(got, want)


def test_xpos_scale_int32_positions():
    zeta = torch.rand(8) * 0.5 + 0.4
    pos = torch.tensor([0, 7, -4, 2**31 - 1], dtype=torch.int64)
    want = torch.ops.posenc.xpos_scale(pos, zeta, 512.0, 0, False)
    # centre far from the positions: the difference must be formed in int64, not int32
    assert torch.equal(torch.ops.posenc.xpos_scale(pos.int(), zeta, 512.0, 0, False), want)
    far = torch.ops.posenc.xpos_scale(pos, zeta, 512.0, -(2**40), False)
    assert torch.equal(torch.ops.posenc.xpos_scale(pos.int(), zeta, 512.0, -(2**40), False), far)


@pytest.mark.parametrize("layout", ["bhsd", "bshd"])
@pytest.mark.parametrize("batched", [False, True])
def test_rope_int32_positions_equal_int64(layout, batched):
    torch.manual_seed(5)
    x = torch.randn(2, 3, 7, 16) if layout == "bhsd" else torch.randn(2, 7, 3, 16)
    pos = torch.randint(-50, 2**20, (2, 7) if batched else (7,))
    inv = ops.rope_inv_freq(16)
    want = ops.rope(x, pos, inv, layout=layout)
    xg = x.clone().requires_grad_()
    got = ops.rope(xg, pos.int(), inv, layout=layout)
    assert torch.equal(got, want)
    g = torch.randn_like(got)
    (gx,) = torch.autograd.grad(got, xg, g)
    xg64 = x.clone().requires_grad_()
    (gx64,) = torch.autograd.grad(ops.rope(xg64, pos, inv, layout=layout), xg64, g)
    assert torch.equal(gx, gx64)


def test_rope_thd_int32_cu_seqlens_equal_int64():
    torch.manual_seed(6)
    x = torch.randn(12, 2, 8)
    cu = torch.tensor([0, 5, 5, 12])
    inv = ops.rope_inv_freq(8)
    want = ops.rope(x, None, inv, offset=3, layout="thd", cu_seqlens=cu)
    assert torch.equal(ops.rope(x, None, inv, offset=3, layout="thd", cu_seqlens=cu.int()), want)
    with pytest.raises(RuntimeError, match=r"posenc.rope: argument 'cu_seqlens' must end at"):
        ops.rope(x, None, inv, layout="thd", cu_seqlens=torch.tensor([0, 5, 11], dtype=torch.int32))


def test_rotary_module_int32_ids():
    import posenc.cpp as pcpp
    from posenc import nn as pnn

    q, k = torch.randn(1, 7, 2, 8), torch.randn(1, 7, 2, 8)
    pos = torch.arange(3, 10)
    for mod in (pnn.RotaryEmbedding(8, layout="bshd"), pcpp.RotaryEmbedding(8, layout="bshd")):
        a = mod(q, k, pos)
        b = mod(q, k, pos.int())
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_adversarial_rows():
    q, k, v, cq, ck = packed([5, 7], [5, 7])
    cu_q, cu_k = torch.tensor(cq, dtype=torch.int32), torch.tensor(ck, dtype=torch.int32)
    with pytest.raises(ValueError, match="argument 'alibi_slopes' must be a floating tensor.*bool"):
        fa.flash_attn_varlen_func(q, k, v, cu_q, cu_k, 7, 7, alibi_slopes=torch.tensor([True, False, True, True]))
    with pytest.raises(ValueError, match="argument 'cu_seqlens_q' must hold values.*meta"):
        fa.flash_attn_varlen_func(q, k, v, cu_q.to("meta"), cu_k, 7, 7)
    # an empty batch with per-batch slopes: an empty result, as with (H,) slopes
    z = torch.tensor([0], dtype=torch.int32)
    out = fa.flash_attn_varlen_func(q[:0], k[:0], v[:0], z, z, 0, 0, alibi_slopes=torch.zeros(0, 4))
    assert out.shape == (0, 4, 6)
