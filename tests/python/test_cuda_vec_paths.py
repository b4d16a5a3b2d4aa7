"""The CUDA kernels' 16-byte vector paths against their single-element paths (issue 10): a
contiguous, 16-byte aligned tensor takes the vector loads/stores, the same values behind a
one-element offset (misaligned) or a stride take the scalar ones; both must give the same
bits, and both match the fp64 references of the CPU test files (Press et al. 2022; Raffel et
al. 2020; Chi et al. 2022; Su et al. 2021)."""
import pytest
import torch
from conftest import CUDA_TEST_DEVICE as DEV
from conftest import FLOAT_DTYPES, TOL, requires_cuda
from test_alibi import ref_bias as alibi_ref
from test_kerple import ref_bias as kerple_ref
from test_rope import F64, f32_angles, make_x, ref_apply, ref_rope
from test_t5 import ref_bias as t5_ref

from posenc import ops

pytestmark = [requires_cuda, pytest.mark.usefixtures("nan_filled_empty")]


def misaligned(t):
    """The values of t in a buffer that starts one element past a 16-byte boundary."""
    flat = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
    view = flat[1:].view(t.shape)
    view.copy_(t)
    return view


# heads, q_len, k_len, q_offset, k_offset: row tiles of 64 and column tiles of 32 vectors end
# inside a tile, k_len not a multiple of any vector width, rows shorter than a vector
SHAPES = [(3, 67, 131, 0, 0), (2, 130, 263, 40, 3), (1, 1, 513, 512, 0), (5, 9, 3, 2, 0), (2, 64, 256, 0, 64)]


def bias_grad_inputs(shape, dtype):
    h, q_len, k_len, _, _ = shape
    return torch.randn(h, q_len, k_len, dtype=F64).div(q_len * k_len).to(dtype)


def check_paths(fn, g):
    """fn(grad) on the contiguous gradient, a misaligned copy and a key-strided copy."""
    want = fn(g.to(DEV))
    strided = torch.empty(g.shape[0], g.shape[1], 2 * g.shape[2], dtype=g.dtype, device=DEV)[..., ::2]
    strided.copy_(g)
    for other in (misaligned(g.to(DEV)), strided):
        got = fn(other)
        for a, b in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,)):
            assert torch.equal(a, b)
    return want


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
def test_alibi_paths(shape, causal, dtype):
    h, q_len, k_len, qo, ko = shape
    slopes = torch.rand(h, dtype=F64).to(dtype)
    s = slopes.to(DEV)
    out = misaligned(torch.zeros(h, q_len, k_len, dtype=dtype, device=DEV))
    torch.ops.posenc.alibi_bias.out(s, q_len, k_len, qo, ko, causal, out=out)  # peeled head and tail
    fresh = ops.alibi_bias(s, q_len, k_len, qo, ko, causal)
    assert torch.equal(out, fresh)
    assert torch.equal(fresh.cpu(), ops.alibi_bias(slopes, q_len, k_len, qo, ko, causal))
    g = bias_grad_inputs(shape, dtype)
    got = check_paths(lambda gr: torch.ops.posenc.alibi_bias_backward(gr, s, q_len, k_len, qo, ko, causal), g)
    s64 = slopes.double().requires_grad_()
    (want,) = torch.autograd.grad(alibi_ref(s64, q_len, k_len, qo, ko, causal), s64, g.double())
    tol = dict(rtol=1e-6, atol=1e-6) if dtype == torch.float32 else TOL[dtype]
    torch.testing.assert_close(got.cpu().double(), want, **tol)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
def test_t5_paths(shape, bidirectional, dtype):
    h, q_len, k_len, qo, ko = shape
    table = torch.randn(32, h, dtype=dtype)
    t = table.to(DEV)
    out = misaligned(torch.zeros(h, q_len, k_len, dtype=dtype, device=DEV))
    torch.ops.posenc.t5_bias.out(t, q_len, k_len, qo, ko, bidirectional, 20, out=out)
    fresh = ops.t5_bias(t, q_len, k_len, qo, ko, bidirectional, 20)
    assert torch.equal(out, fresh)
    assert torch.equal(fresh.cpu(), t5_ref(table, q_len, k_len, qo, ko, bidirectional, 20))
    g = bias_grad_inputs(shape, dtype)
    got = check_paths(lambda gr: torch.ops.posenc.t5_bias_backward(gr, t, q_len, k_len, qo, ko, bidirectional, 20), g)
    t64 = table.double().requires_grad_()
    (want,) = torch.autograd.grad(t5_ref(t64, q_len, k_len, qo, ko, bidirectional, 20), t64, g.double())
    tol = dict(rtol=1e-6, atol=1e-6) if dtype == torch.float32 else TOL[dtype]
    torch.testing.assert_close(got.cpu().double(), want, **tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
def test_kerple_paths(shape, causal, dtype):
    h, q_len, k_len, qo, ko = shape
    r1 = (torch.rand(h, dtype=F64) + 0.5).to(dtype)
    r2 = (torch.rand(h, dtype=F64) * 0.5 + 0.1).to(dtype)
    a, b = r1.to(DEV), r2.to(DEV)
    out = misaligned(torch.zeros(h, q_len, k_len, dtype=dtype, device=DEV))
    torch.ops.posenc.kerple_bias.out(a, b, q_len, k_len, qo, ko, "log", causal, out=out)
    fresh = ops.kerple_bias(a, b, q_len, k_len, qo, ko, "log", causal)
    assert torch.equal(out, fresh)
    r64 = (r1.double().requires_grad_(), r2.double().requires_grad_())
    ref = kerple_ref(*r64, q_len, k_len, qo, ko, "log", causal)
    torch.testing.assert_close(fresh.cpu().double(), ref.detach(), rtol=1e-5 if dtype == torch.float32 else 1e-12, atol=1e-6)
    g = bias_grad_inputs(shape, dtype)
    got = check_paths(lambda gr: torch.ops.posenc.kerple_bias_backward(gr, a, b, q_len, k_len, qo, ko, "log", causal), g)
    want = torch.autograd.grad(ref, r64, g.double())
    for x, w in zip(got, want):
        torch.testing.assert_close(x.cpu().double(), w, rtol=1e-6, atol=1e-6)


# B, H, S, D, rot: half-split / interleaved groups, pass-through dims, more pairs than one
# shared-memory chunk (256), a head_dim that is no multiple of 8
ROPE_CASES = [(2, 3, 5, 64, 64), (1, 4, 3, 40, 32), (1, 2, 2, 1024, 1024), (2, 1, 3, 1040, 528), (1, 3, 4, 24, 16)]


@pytest.mark.parametrize("layout", ["bhsd", "bshd"])
@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("case", ROPE_CASES)
def test_rope_paths(case, dtype, interleaved, layout):
    B, H, S, D, rot = case
    x = make_x(B, H, S, D, layout, dtype)
    inv = ops.rope_inv_freq(rot)
    xd, invd = x.to(DEV), inv.to(DEV)
    vec = ops.rope(xd, None, invd, 7, rot, interleaved, layout)
    for other in (misaligned(xd), torch.empty(*x.shape[:-1], 2 * D, dtype=dtype, device=DEV)[..., ::2].copy_(xd)):
        assert torch.equal(ops.rope(other, None, invd, 7, rot, interleaved, layout), vec)
    pos = (torch.arange(S) + 7).expand(B, S)
    want = ref_rope(x, pos, f32_angles(inv), rot, interleaved, layout)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else TOL[dtype]
    torch.testing.assert_close(vec.cpu().double(), want, **tol)
    assert torch.equal(vec[..., rot:].cpu(), x[..., rot:])
    if dtype == torch.float64:  # the conjugate path: rope_backward undoes rope
        back = torch.ops.posenc.rope_backward(vec, None, invd, 7, rot, interleaved, layout)
        torch.testing.assert_close(back.cpu(), x, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("layout", ["bhsd", "bshd"])
@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("case", ROPE_CASES)
def test_apply_rotary_paths(case, dtype, interleaved, layout):
    B, H, S, D, rot = case
    x = make_x(B, H, S, D, layout, dtype)
    ang = torch.randn(B, S, rot, dtype=F64)
    cos, sin = ang.cos().to(dtype), ang.sin().to(dtype)
    xd, cd, sd = x.to(DEV), cos.to(DEV), sin.to(DEV)
    vec = ops.apply_rotary_pos_emb(xd, cd, sd, interleaved, layout)
    assert torch.equal(ops.apply_rotary_pos_emb(misaligned(xd), cd, sd, interleaved, layout), vec)
    want = ref_apply(x.double(), cos.double(), sin.double(), interleaved, layout)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else TOL[dtype]
    torch.testing.assert_close(vec.cpu().double(), want, **tol)
    g = torch.randn_like(x)
    gd = g.to(DEV)
    got = torch.ops.posenc.apply_rotary_pos_emb_backward(gd, xd, cd, sd, interleaved, layout)
    other = torch.ops.posenc.apply_rotary_pos_emb_backward(misaligned(gd), xd, cd, sd, interleaved, layout)
    assert torch.equal(got[0], other[0])
    cpu = torch.ops.posenc.apply_rotary_pos_emb_backward(g, x, cos, sin, interleaved, layout)
    torch.testing.assert_close(got[0].cpu().double(), cpu[0].double(), **tol)


# B, Hq, Hk, S, D, rot (grouped-query heads; a rotary_dim below head_dim; more pairs than a chunk)
QK_CASES = [(2, 8, 2, 5, 64, 64), (1, 3, 5, 4, 40, 32), (1, 2, 1, 3, 1040, 528)]


@pytest.mark.parametrize("xpos", [False, True])
@pytest.mark.parametrize("layout", ["bhsd", "bshd", "thd"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("case", QK_CASES)
def test_rope_qk_is_two_rope_calls(case, dtype, layout, xpos):
    # rope_qk is defined as rope(q, xpos_inverse=False), rope(k, xpos_inverse=True): one launch
    # on CUDA must give those bits, for q and k aligned (vector path) or k misaligned (scalar).
    B, Hq, Hk, S, D, rot = case
    if layout == "thd":
        q, k = torch.randn(B * S, Hq, D, dtype=dtype), torch.randn(B * S, Hk, D, dtype=dtype)
        cu = torch.tensor([0, S // 2, B * S], dtype=torch.long).to(DEV)
    else:
        q, k = make_x(B, Hq, S, D, layout, dtype), make_x(B, Hk, S, D, layout, dtype)
        cu = None
    inv = ops.rope_inv_freq(rot).to(DEV)
    zeta = ((torch.arange(0, rot, 2, dtype=torch.float32) / rot + 0.4) / 1.4).to(DEV) if xpos else None
    kw = dict(offset=3, rotary_dim=rot, layout=layout, cu_seqlens=cu, attention_factor=1.25, xpos_zeta=zeta)
    qd, kd = q.to(DEV), k.to(DEV)
    for k_in in (kd, misaligned(kd)):
        got = ops.rope_qk(qd, k_in, None, inv, **kw)
        assert torch.equal(got[0], ops.rope(qd, None, inv, **kw))
        assert torch.equal(got[1], ops.rope(k_in, None, inv, xpos_inverse=True, **kw))
        back = torch.ops.posenc.rope_qk_backward(qd, k_in, None, inv, 3, rot, False, layout, cu, 1.25, zeta)
        assert torch.equal(back[0], torch.ops.posenc.rope_backward(qd, None, inv, 3, rot, False, layout, cu, 1.25, zeta))
        assert torch.equal(back[1], torch.ops.posenc.rope_backward(k_in, None, inv, 3, rot, False, layout, cu, 1.25, zeta, 512.0, True))
    cpu_kw = dict(kw, cu_seqlens=None if cu is None else cu.cpu(), xpos_zeta=None if zeta is None else zeta.cpu())
    cpu = ops.rope_qk(q, k, None, inv.cpu(), **cpu_kw)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else TOL[dtype]
    for a, b in zip(got, cpu):
        torch.testing.assert_close(a.cpu(), b, **tol)
