"""RoPE (Su et al. 2021) and HF-style apply_rotary_pos_emb against fp64 references."""
import math

import pytest
import torch
import torch._dynamo.testing
from conftest import FLOAT_DTYPES, TOL

from posenc import ops

F64 = torch.float64


# ---- references (plain torch, fp64, from the paper) -------------------------------------------


def ref_inv_freq(rot: int, base: float = 10000.0):
    # Su et al. eq. 15: theta_i = base^(-2(i-1)/d), i = 1..d/2, with d the rotary dimension.
    return torch.tensor([base ** (-2.0 * i / rot) for i in range(rot // 2)], dtype=F64)


def split(x, rot, interleaved):
    if interleaved:
        return x[..., 0:rot:2], x[..., 1:rot:2]
    return x[..., : rot // 2], x[..., rot // 2 : rot]


def join(a, b, rest, interleaved):
    r = torch.stack([a, b], -1).flatten(-2) if interleaved else torch.cat([a, b], -1)
    return torch.cat([r, rest], -1)


def to_bhsd(x, layout):
    return x if layout == "bhsd" else x.transpose(1, 2)


def ref_rope(x, pos, angle_fn, rot, interleaved, layout):
    """Rotate pairs of x by angle_fn(pos) (B, S, rot/2); pos (B, S) absolute positions."""
    xb = to_bhsd(x.to(F64), layout)
    ang = angle_fn(pos)[:, None]  # (B, 1, S, rot/2)
    a, b = split(xb, rot, interleaved)
    out = join(a * ang.cos() - b * ang.sin(), b * ang.cos() + a * ang.sin(), xb[..., rot:], interleaved)
    return to_bhsd(out, layout)


def paper_angles(rot, base=10000.0):
    inv = ref_inv_freq(rot, base)
    return lambda pos: pos.to(F64)[..., None] * inv


def f32_angles(inv_freq):
    # What the op is specified to compute: float32 product float(pos) * inv_freq (as HF does).
    return lambda pos: (pos.float()[..., None] * inv_freq).to(F64)


def abs_positions(positions, B, S, offset):
    if positions is None:
        return (torch.arange(S) + offset).expand(B, S)
    return (positions + offset).expand(B, S)


def make_x(B, H, S, D, layout, dtype=torch.float32):
    shape = (B, H, S, D) if layout == "bhsd" else (B, S, H, D)
    return torch.randn(shape, dtype=dtype)


def rotate_ref(x, interleaved):
    if interleaved:
        return torch.stack([-x[..., 1::2], x[..., 0::2]], -1).flatten(-2)
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], -1)


def ref_apply(x, cos, sin, interleaved, layout):
    """Hugging Face: x * cos + rotate(x) * sin on the first R dims, the rest unchanged."""
    rot = cos.shape[-1]
    xb = to_bhsd(x, layout)
    c = cos[:, None] if cos.dim() == 3 else cos
    s = sin[:, None] if sin.dim() == 3 else sin
    r = xb[..., :rot]
    out = torch.cat([r * c + rotate_ref(r, interleaved) * s, xb[..., rot:]], -1)
    return to_bhsd(out, layout)


# ---- rope_inv_freq ---------------------------------------------------------------------------


@pytest.mark.parametrize("dim,base", [(2, 10000.0), (8, 10000.0), (32, 10000.0), (128, 500000.0), (64, 1.5)])
def test_inv_freq_matches_formula(dim, base):
    got = ops.rope_inv_freq(dim, base)
    assert got.dtype == torch.float32 and got.shape == (dim // 2,)
    # fp64 formula rounded once to fp32: equal to the nearest float.
    torch.testing.assert_close(got, ref_inv_freq(dim, base).float(), rtol=0, atol=0)


@pytest.mark.parametrize(
    "args,match",
    [
        ((3,), r"posenc\.rope_inv_freq: argument 'dim' must be even and > 0, but got 3"),
        ((0,), r"argument 'dim' must be even and > 0, but got 0"),
        ((-4,), r"argument 'dim' must be even and > 0, but got -4"),
        ((8, 1.0), r"argument 'base' must be finite and > 1, but got 1"),
        ((8, -2.0), r"argument 'base' must be finite and > 1, but got -2"),
    ],
)
def test_inv_freq_errors(args, match):
    with pytest.raises(RuntimeError, match=match):
        ops.rope_inv_freq(*args)


# ---- rope forward ----------------------------------------------------------------------------

FWD_CASES = [
    # B, H, S, D, rot, offset, positions kind
    (2, 3, 5, 8, 8, 0, None),
    (1, 2, 7, 16, 8, 11, None),
    (3, 1, 4, 10, 6, 3, "1d"),
    (2, 2, 6, 12, 12, 0, "2d"),
    (2, 2, 6, 12, 4, 7, "2d"),
    (1, 1, 3, 65, 64, 1800, None),
]


def make_positions(kind, B, S):
    if kind == "1d":
        return torch.randint(0, 500, (S,))
    if kind == "2d":
        return torch.randint(0, 500, (B, S))
    return None


@pytest.mark.parametrize("layout", ["bhsd", "bshd"])
@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("case", FWD_CASES)
def test_rope_matches_paper(case, interleaved, layout):
    B, H, S, D, rot, offset, kind = case
    x = make_x(B, H, S, D, layout, F64)
    positions = make_positions(kind, B, S)
    inv = ops.rope_inv_freq(rot)
    out = ops.rope(x, positions, inv, offset, rot, interleaved, layout)
    assert out.shape == x.shape and out.dtype == F64 and out.is_contiguous()
    pos = abs_positions(positions, B, S, offset)
    # Against the paper's fp64 angles: the float32 angle is off by <= ~1.2e-7 * pos rad.
    want = ref_rope(x, pos, paper_angles(rot), rot, interleaved, layout)
    tol = 2.4e-7 * (pos.max().item() + 1) * 2 * x.abs().max().item()
    torch.testing.assert_close(out, want, rtol=0, atol=tol)
    # With the specified float32 angles an fp64 input is exact to fp64 rounding.
    exact = ref_rope(x, pos, f32_angles(inv), rot, interleaved, layout)
    torch.testing.assert_close(out, exact, **TOL[F64])
    # dims >= rot are copied bit-exactly
    assert torch.equal(out[..., rot:], x[..., rot:])


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("interleaved", [False, True])
def test_rope_dtypes(dtype, interleaved):
    x = make_x(2, 3, 9, 16, "bhsd", F64)
    inv = ops.rope_inv_freq(16)
    out = ops.rope(x.to(dtype), None, inv, 100, interleaved=interleaved)
    assert out.dtype == dtype
    pos = abs_positions(None, 2, 9, 100)
    want = ref_rope(x.to(dtype), pos, f32_angles(inv), 16, interleaved, "bhsd")
    torch.testing.assert_close(out.to(F64), want, **TOL[dtype])


def test_rope_default_rotary_dim_and_offset_on_positions():
    x = torch.randn(2, 2, 4, 10)
    inv = ops.rope_inv_freq(6)
    pos = torch.tensor([3, 1, 4, 1])
    a = ops.rope(x, pos, inv, 5)  # rotary_dim defaults to 2 * len(inv_freq) = 6
    b = ops.rope(x, pos + 5, inv, 0, 6)
    c = ops.rope(x, pos.expand(2, 4) + 5, inv, 0, 6)
    assert torch.equal(a, b) and torch.equal(a, c)
    assert torch.equal(a[..., 6:], x[..., 6:])


def test_rope_positions_none_is_arange():
    x = torch.randn(1, 2, 6, 8)
    inv = ops.rope_inv_freq(8)
    assert torch.equal(ops.rope(x, None, inv, 2), ops.rope(x, torch.arange(6), inv, 2))


def test_rope_position_zero_identity_and_norm():
    x = torch.randn(2, 3, 5, 8, dtype=F64)
    inv = ops.rope_inv_freq(8)
    out = ops.rope(x, torch.zeros(5, dtype=torch.long), inv)
    torch.testing.assert_close(out, x, rtol=0, atol=0)
    # a rotation keeps each pair's norm
    out = ops.rope(x, None, inv, 37)
    a, b = split(x, 8, False)
    oa, ob = split(out, 8, False)
    torch.testing.assert_close(oa**2 + ob**2, a**2 + b**2)


def test_rope_relative_property():
    # Su et al. eq. 16: <R_m q, R_n k> depends only on n - m.
    q = torch.randn(1, 1, 1, 16, dtype=F64)
    k = torch.randn(1, 1, 1, 16, dtype=F64)
    inv = ops.rope_inv_freq(16)

    def score(m, n):
        return (ops.rope(q, None, inv, m) * ops.rope(k, None, inv, n)).sum()

    torch.testing.assert_close(score(3, 10), score(103, 110), rtol=1e-5, atol=1e-5)


# ---- field cases -----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("layout", ["bhsd", "bshd"])
def test_C01_half_inputs_use_fp32_angles(dtype, layout):
    # rotary dim 32, position 1857, pair 1: cos 0.306711 (fp16 angles would give about -0.408).
    inv = ops.rope_inv_freq(32)
    assert inv.dtype == torch.float32
    assert abs(inv[1].item() - 0.5623413) < 1e-7
    x = torch.zeros(1, 1, 1, 32, dtype=dtype)
    x[..., 1] = 1  # unit vector on the first member of pair 1 -> (cos, sin) at dims 1 and 17
    out = ops.rope(x, torch.tensor([1857]), inv, 0, layout=layout).float().flatten()
    want_cos = 0.306711
    want_sin = math.sin(1857 * 10000 ** (-2 / 32))
    eps = torch.finfo(dtype).eps  # plus the output's own rounding
    assert abs(out[1].item() - want_cos) <= 1e-3 + eps
    assert abs(out[17].item() - want_sin) <= 1e-3 + eps
    # nothing else is touched
    out[1] = out[17] = 0
    assert torch.count_nonzero(out) == 0
    # and every position < 2048 stays within 1e-3 of fp64 for every pair
    xs = torch.zeros(1, 1, 2048, 32, dtype=dtype)
    xs[..., :16] = 1
    got = ops.rope(xs, None, inv).double()[0, 0]
    ang = torch.arange(2048, dtype=F64)[:, None] * ref_inv_freq(32)
    torch.testing.assert_close(got[:, :16], ang.cos().to(dtype).double(), rtol=0, atol=1e-3 + eps)


@pytest.mark.parametrize("layout", ["bhsd", "bshd"])
def test_C02_pairing(layout):
    x = torch.tensor([1.0, 0.0, 0.0, 0.0]).view(1, 1, 1, 4)
    inv = ops.rope_inv_freq(4)
    half = ops.rope(x, torch.tensor([1]), inv, layout=layout).flatten()
    inter = ops.rope(x, torch.tensor([1]), inv, interleaved=True, layout=layout).flatten()
    torch.testing.assert_close(half, torch.tensor([0.5403023, 0.0, 0.8414710, 0.0]))
    torch.testing.assert_close(inter, torch.tensor([0.5403023, 0.8414710, 0.0, 0.0]))
    # position 0 is the identity for both
    for il in (False, True):
        assert torch.equal(ops.rope(x, torch.tensor([0]), inv, interleaved=il), x)


def test_C03_partial_rotary():
    x = torch.tensor([1.0, 0.0, 0.0, 0.0, 5.0, 6.0, 7.0, 8.0]).view(1, 1, 1, 8)
    inv = ops.rope_inv_freq(4)
    out = ops.rope(x, torch.tensor([1]), inv, rotary_dim=4).flatten()
    torch.testing.assert_close(out[:4], torch.tensor([0.5403023, 0.0, 0.8414710, 0.0]))
    assert torch.equal(out[4:], torch.tensor([5.0, 6.0, 7.0, 8.0]))
    # the exponent's denominator is rotary_dim: pair 1 at position 100 turns by 1.0 rad
    y = torch.tensor([0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]).view(1, 1, 1, 8)
    out = ops.rope(y, torch.tensor([100]), inv, rotary_dim=4).flatten()
    torch.testing.assert_close(out[[1, 3]], torch.tensor([math.cos(1.0), math.sin(1.0)]))


def test_C05_odd_head_dim_and_odd_rotary_dim():
    x = torch.randn(2, 3, 4, 65)
    inv = ops.rope_inv_freq(64)
    out = ops.rope(x, None, inv, 9, 64)
    assert torch.equal(out[..., 64], x[..., 64])
    want = ref_rope(x, abs_positions(None, 2, 4, 9), f32_angles(inv), 64, False, "bhsd")
    torch.testing.assert_close(out.double(), want, **TOL[torch.float32])
    with pytest.raises(RuntimeError, match=r"posenc\.rope: argument 'rotary_dim' must be even and >= 0, but got 3"):
        ops.rope(torch.randn(1, 1, 2, 4), None, ops.rope_inv_freq(2), 0, 3)
    with pytest.raises(RuntimeError, match=r"rope_inv_freq: argument 'dim' must be even and > 0, but got 3"):
        ops.rope_inv_freq(3)


C06_SHAPES = [(1, 8, 0, 8), (1, 0, 5, 8), (0, 2, 5, 8), (1, 1, 1, 8), (1, 1, 1, 2), (2, 1, 3, 0)]


@pytest.mark.parametrize("layout", ["bhsd", "bshd"])
@pytest.mark.parametrize("shape", C06_SHAPES)
def test_C06_empty_and_unit_sizes(shape, layout):
    B, H, S, D = shape
    x = make_x(B, H, S, D, layout, F64).requires_grad_()
    rot = min(D, 8)
    inv = ops.rope_inv_freq(rot) if rot else torch.empty(0)
    out = ops.rope(x, None, inv, 3, layout=layout)
    assert out.shape == x.shape
    want = ref_rope(x.detach(), abs_positions(None, B, S, 3), f32_angles(inv), rot, False, layout)
    torch.testing.assert_close(out.detach(), want)
    out.sum().backward()
    assert x.grad.shape == x.shape
    cos = torch.randn(B, S, rot, dtype=F64, requires_grad=True)
    sin = torch.randn(B, S, rot, dtype=F64, requires_grad=True)
    y = ops.apply_rotary_pos_emb(x, cos, sin, layout=layout)
    assert y.shape == x.shape
    torch.testing.assert_close(y.detach(), ref_apply(x.detach(), cos.detach(), sin.detach(), False, layout))
    y.sum().backward()
    assert cos.grad.shape == cos.shape and sin.grad.shape == sin.shape
    if x.numel() == 0:
        assert torch.count_nonzero(cos.grad) == 0


def test_C07_views_into_packed_qkv():
    torch.manual_seed(7)
    qkv = torch.randn(5, 3 * 2 * 8)
    before = qkv.clone()
    q = qkv[:, 0:16].view(1, 5, 2, 8)  # (B, S, H, D) views, row stride 48
    k = qkv[:, 16:32].view(1, 5, 2, 8)
    assert not q.is_contiguous() and not k.is_contiguous()
    inv8, inv4 = ops.rope_inv_freq(8), ops.rope_inv_freq(4)
    for t in (q, k):
        for il in (False, True):
            got = ops.rope(t, None, inv8, 3, interleaved=il, layout="bshd")
            assert torch.equal(got, ops.rope(t.contiguous(), None, inv8, 3, interleaved=il, layout="bshd"))
            # the same view read as bhsd through a transpose
            tv = t.transpose(1, 2)
            got = ops.rope(tv, None, inv8, 3, interleaved=il)
            assert torch.equal(got, ops.rope(tv.contiguous(), None, inv8, 3, interleaved=il))
        # the last 4 of 8 dims of each head
        tail = t[..., 4:]
        assert torch.equal(
            ops.rope(tail, torch.arange(5), inv4, 0, layout="bshd"),
            ops.rope(tail.contiguous(), torch.arange(5), inv4, 0, layout="bshd"),
        )
        # last-dim stride 2 (every other dim) and apply_rotary_pos_emb on the same view
        odd = t[..., ::2]
        assert torch.equal(ops.rope(odd, None, inv4, 1, layout="bshd"), ops.rope(odd.contiguous(), None, inv4, 1, layout="bshd"))
        cos, sin = torch.randn(8, 5).t(), torch.randn(5, 16)[:, ::2]
        assert torch.equal(
            ops.apply_rotary_pos_emb(t, cos, sin, layout="bshd"),
            ops.apply_rotary_pos_emb(t.contiguous(), cos.contiguous(), sin.contiguous(), layout="bshd"),
        )
    # the op never writes into its input: v columns (and q, k) untouched
    assert torch.equal(qkv, before)


@pytest.mark.parametrize("interleaved", [False, True])
def test_C08_asymmetric_table_adjoint(interleaved):
    x = torch.tensor([0.3, -0.7], dtype=F64).view(1, 1, 1, 2).requires_grad_()
    cos = torch.tensor([[1.0, 1.0]], dtype=F64, requires_grad=True)
    sin = torch.tensor([[0.5, 0.1]], dtype=F64, requires_grad=True)
    ops.apply_rotary_pos_emb(x, cos, sin, interleaved).backward(torch.ones(1, 1, 1, 2, dtype=F64))
    torch.testing.assert_close(x.grad.flatten(), torch.tensor([1.1, 0.5], dtype=F64))
    torch.testing.assert_close(cos.grad.flatten(), torch.tensor([0.3, -0.7], dtype=F64))
    torch.testing.assert_close(sin.grad.flatten(), torch.tensor([0.7, 0.3], dtype=F64))


@pytest.mark.parametrize("layout", ["bhsd", "bshd"])
@pytest.mark.parametrize("interleaved", [False, True])
def test_C09_offsets_and_decoding(interleaved, layout):
    x = make_x(2, 3, 10, 8, layout)
    inv = ops.rope_inv_freq(8)
    sdim = 2 if layout == "bhsd" else 1
    full = ops.rope(x, None, inv, 0, interleaved=interleaved, layout=layout)
    block = ops.rope(x.narrow(sdim, 5, 3), None, inv, 5, interleaved=interleaved, layout=layout)
    torch.testing.assert_close(block, full.narrow(sdim, 5, 3), rtol=0, atol=0)
    steps = [ops.rope(x.narrow(sdim, p, 1), None, inv, p, interleaved=interleaved, layout=layout) for p in range(10)]
    torch.testing.assert_close(torch.cat(steps, sdim), full, rtol=0, atol=1e-6)
    # per-batch positions (B, S): each row decoded at its own position
    pos = torch.tensor([[5], [2]])
    step = ops.rope(x.narrow(sdim, 0, 1), pos, inv, 0, interleaved=interleaved, layout=layout)
    for b, p in enumerate((5, 2)):
        want = ops.rope(x[b : b + 1].narrow(sdim, 0, 1), None, inv, p, interleaved=interleaved, layout=layout)
        torch.testing.assert_close(step[b : b + 1], want, rtol=0, atol=0)


# ---- apply_rotary_pos_emb --------------------------------------------------------------------


def hf_tables(B, S, rot, offset=0, batched=False, dtype=F64):
    # Hugging Face builds emb = cat(freqs, freqs) (half-split) from fp32 angles.
    inv = ops.rope_inv_freq(rot)
    pos = torch.arange(S) + offset
    freqs = pos.float()[:, None] * inv
    emb = torch.cat([freqs, freqs], -1)
    cos, sin = emb.cos().to(dtype), emb.sin().to(dtype)
    if batched:
        cos, sin = cos.expand(B, S, rot), sin.expand(B, S, rot)
    return cos, sin


@pytest.mark.parametrize("layout", ["bhsd", "bshd"])
@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("batched", [False, True])
@pytest.mark.parametrize("rot,D", [(8, 8), (4, 10)])
def test_apply_matches_hf_formula(rot, D, batched, interleaved, layout):
    x = make_x(2, 3, 5, D, layout, F64)
    shape = (2, 5, rot) if batched else (5, rot)
    cos, sin = torch.randn(shape, dtype=F64), torch.randn(shape, dtype=F64)
    out = ops.apply_rotary_pos_emb(x, cos, sin, interleaved, layout)
    assert out.shape == x.shape and out.is_contiguous()
    torch.testing.assert_close(out, ref_apply(x, cos, sin, interleaved, layout), **TOL[F64])
    assert torch.equal(out[..., rot:], x[..., rot:])


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_apply_dtypes(dtype):
    x = torch.randn(2, 3, 5, 8, dtype=F64)
    cos, sin = torch.randn(5, 8, dtype=F64), torch.randn(5, 8, dtype=F64)
    x, cos, sin = x.to(dtype), cos.to(dtype), sin.to(dtype)
    out = ops.apply_rotary_pos_emb(x, cos, sin)
    assert out.dtype == dtype
    torch.testing.assert_close(out.double(), ref_apply(x.double(), cos.double(), sin.double(), False, "bhsd"), **TOL[dtype])


@pytest.mark.parametrize("interleaved", [False, True])
def test_apply_with_rope_tables_equals_rope(interleaved):
    # apply_rotary_pos_emb with the cos/sin tables rope uses gives rope's result.
    x = torch.randn(2, 3, 6, 12, dtype=F64)
    inv = ops.rope_inv_freq(8)
    freqs = (torch.arange(6) + 4).float()[:, None] * inv
    emb = torch.stack([freqs, freqs], -1).flatten(-2) if interleaved else torch.cat([freqs, freqs], -1)
    emb = emb.double()
    out = ops.apply_rotary_pos_emb(x, emb.cos(), emb.sin(), interleaved)
    torch.testing.assert_close(out, ops.rope(x, None, inv, 4, interleaved=interleaved), **TOL[F64])


def test_apply_hf_tables_match_rope_fp32():
    x = torch.randn(1, 2, 7, 16)
    cos, sin = hf_tables(1, 7, 16, offset=3, dtype=torch.float32)
    torch.testing.assert_close(
        ops.apply_rotary_pos_emb(x, cos, sin), ops.rope(x, None, ops.rope_inv_freq(16), 3), rtol=1e-6, atol=1e-6
    )


@pytest.mark.parametrize("layout", ["bhsd", "bshd"])
@pytest.mark.parametrize("batched", [False, True])
def test_apply_grads_match_reference(batched, layout):
    x = make_x(2, 3, 4, 10, layout, F64).requires_grad_()
    shape = (2, 4, 6) if batched else (4, 6)
    cos = torch.randn(shape, dtype=F64, requires_grad=True)
    sin = torch.randn(shape, dtype=F64, requires_grad=True)
    g = torch.randn(x.shape, dtype=F64)
    for il in (False, True):
        got = torch.autograd.grad((ops.apply_rotary_pos_emb(x, cos, sin, il, layout) * g).sum(), (x, cos, sin))
        want = torch.autograd.grad((ref_apply(x, cos, sin, il, layout) * g).sum(), (x, cos, sin))
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, **TOL[F64])


def test_apply_grad_tables_deterministic():
    x = torch.randn(4, 8, 64, 32)
    cos, sin = torch.randn(64, 32, requires_grad=True), torch.randn(64, 32, requires_grad=True)
    g = torch.randn_like(x)
    a = torch.autograd.grad(ops.apply_rotary_pos_emb(x, cos, sin), (cos, sin), g)
    b = torch.autograd.grad(ops.apply_rotary_pos_emb(x, cos, sin), (cos, sin), g)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    want = torch.autograd.grad(ref_apply(x.double(), cos.double(), sin.double(), False, "bhsd"), (cos, sin), g.double())
    for u, v in zip(a, want):
        torch.testing.assert_close(u.double(), v.double(), rtol=1e-6, atol=1e-6)


# ---- autograd --------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["bhsd", "bshd"])
@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("kind", [None, "1d", "2d"])
def test_rope_gradcheck(kind, interleaved, layout):
    x = make_x(2, 2, 3, 6, layout, F64).requires_grad_()
    positions = make_positions(kind, 2, 3)
    inv = ops.rope_inv_freq(4)
    fn = lambda t: ops.rope(t, positions, inv, 5, 4, interleaved, layout)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


def test_rope_grad_is_inverse_rotation():
    x = torch.randn(2, 3, 4, 8, dtype=F64, requires_grad=True)
    inv = ops.rope_inv_freq(8)
    g = torch.randn_like(x)
    (gx,) = torch.autograd.grad(ops.rope(x, None, inv, 7), x, g)
    want = ref_rope(g, abs_positions(None, 2, 4, 7), lambda p: -f32_angles(inv)(p), 8, False, "bhsd")
    torch.testing.assert_close(gx, want, **TOL[F64])
    # and rope_backward undoes rope
    back = torch.ops.posenc.rope_backward(ops.rope(x, None, inv, 7), None, inv, 7, None, False, "bhsd")
    torch.testing.assert_close(back, x, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("batched", [False, True])
def test_apply_gradcheck(batched, interleaved):
    layout = "bshd" if batched else "bhsd"
    x = make_x(2, 2, 3, 6, layout, F64).requires_grad_()
    shape = (2, 3, 4) if batched else (3, 4)
    cos = torch.randn(shape, dtype=F64, requires_grad=True)
    sin = torch.randn(shape, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, c, s: ops.apply_rotary_pos_emb(a, c, s, interleaved, layout), (x, cos, sin)
    )


def test_half_grads():
    for dtype in (torch.float16, torch.bfloat16):
        x = torch.randn(1, 2, 3, 8, dtype=dtype, requires_grad=True)
        ops.rope(x, None, ops.rope_inv_freq(8), 2).float().sum().backward()
        assert x.grad.dtype == dtype
        c = torch.randn(3, 8, dtype=dtype, requires_grad=True)
        s = torch.randn(3, 8, dtype=dtype, requires_grad=True)
        ops.apply_rotary_pos_emb(x, c, s).float().sum().backward()
        assert c.grad.dtype == dtype and s.grad.dtype == dtype


# ---- opcheck, compile, script ----------------------------------------------------------------


def rope_samples():
    inv8 = ops.rope_inv_freq(8)
    return [
        (torch.randn(2, 3, 5, 8), None, inv8, 0, None, False, "bhsd"),
        (torch.randn(2, 5, 3, 8, dtype=F64, requires_grad=True), torch.randint(0, 9, (5,)), inv8, 3, 8, True, "bshd"),
        (torch.randn(2, 3, 4, 10, requires_grad=True), torch.randint(0, 9, (2, 4)), ops.rope_inv_freq(4), 2, 4, False, "bhsd"),
        (torch.randn(1, 2, 3, 8, dtype=torch.float16), None, inv8, 7, None, True, "bhsd"),
        (torch.randn(1, 6, 16)[..., :8].view(1, 6, 1, 8), None, inv8, 1, None, False, "bshd"),
        (torch.randn(1, 0, 3, 8, requires_grad=True), None, inv8, 0, None, False, "bhsd"),
    ]


@pytest.mark.parametrize("args", rope_samples())
def test_opcheck_rope(args):
    torch.library.opcheck(torch.ops.posenc.rope.default, args)


@pytest.mark.parametrize("args", rope_samples())
def test_opcheck_rope_backward(args):
    torch.library.opcheck(torch.ops.posenc.rope_backward.default, args)


def apply_samples():
    return [
        (torch.randn(2, 3, 5, 8), torch.randn(5, 8), torch.randn(5, 8), False, "bhsd"),
        (torch.randn(2, 5, 3, 10, dtype=F64, requires_grad=True), torch.randn(2, 5, 4, dtype=F64, requires_grad=True),
         torch.randn(2, 5, 4, dtype=F64, requires_grad=True), True, "bshd"),
        (torch.randn(1, 2, 3, 8, dtype=torch.float16), torch.randn(3, 8, dtype=torch.float16),
         torch.randn(3, 8, dtype=torch.float16), False, "bhsd"),
        (torch.randn(1, 4, 2, 16)[..., ::2], torch.randn(4, 8, requires_grad=True), torch.randn(4, 8), False, "bshd"),
        (torch.randn(1, 2, 0, 8, requires_grad=True), torch.randn(0, 8), torch.randn(0, 8), False, "bhsd"),
    ]


@pytest.mark.parametrize("args", apply_samples())
def test_opcheck_apply(args):
    torch.library.opcheck(torch.ops.posenc.apply_rotary_pos_emb.default, args)


@pytest.mark.parametrize("args", apply_samples())
def test_opcheck_apply_backward(args):
    x, cos, sin, il, layout = (a.detach() if isinstance(a, torch.Tensor) else a for a in args)
    torch.library.opcheck(torch.ops.posenc.apply_rotary_pos_emb_backward.default, (torch.randn_like(x), x, cos, sin, il, layout))


def test_opcheck_inv_freq():
    torch.library.opcheck(torch.ops.posenc.rope_inv_freq.default, (8, 10000.0))


def test_C16_compile_dynamic_no_recompile():
    inv = ops.rope_inv_freq(8)
    torch._dynamo.reset()
    counter = torch._dynamo.testing.CompileCounter()

    def f(x, cos, sin, off: int):
        return ops.rope(x, None, inv, off, interleaved=True) + ops.apply_rotary_pos_emb(x, cos, sin)

    cf = torch.compile(f, backend=counter, fullgraph=True, dynamic=True)
    for s, off in ((5, 0), (7, 3), (11, 9)):
        x, cos, sin = torch.randn(2, 3, s, 12), torch.randn(s, 8), torch.randn(s, 8)
        torch.testing.assert_close(cf(x, cos, sin, off), f(x, cos, sin, off))
    assert counter.frame_count == 1


def test_compile_backward_dynamic():
    inv = ops.rope_inv_freq(8)
    torch._dynamo.reset()
    counter = torch._dynamo.testing.CompileCounter()
    f = torch.compile(lambda x, p: ops.rope(x, p, inv, 0, layout="bshd"), backend=counter, fullgraph=True, dynamic=True)
    for s in (5, 6, 9):  # not 4 = len(inv): duck sizing would tie the two
        x = torch.randn(2, s, 3, 8, requires_grad=True)
        p = torch.randint(0, 50, (2, s))
        (gx,) = torch.autograd.grad(f(x, p).square().sum(), x)
        x2 = x.detach().requires_grad_()
        (want,) = torch.autograd.grad(ops.rope(x2, p, inv, 0, layout="bshd").square().sum(), x2)
        torch.testing.assert_close(gx, want)
    assert counter.frame_count == 1


def test_script():
    rope = torch.jit.script(ops.rope)
    apply = torch.jit.script(ops.apply_rotary_pos_emb)
    inv_freq = torch.jit.script(ops.rope_inv_freq)
    x = torch.randn(1, 4, 2, 8)
    inv = inv_freq(8, 10000.0, None)
    assert torch.equal(inv, ops.rope_inv_freq(8))
    assert torch.equal(rope(x, None, inv, 2, None, True, "bshd"), ops.rope(x, None, inv, 2, None, True, "bshd"))
    c, s = torch.randn(4, 8), torch.randn(4, 8)
    assert torch.equal(apply(x, c, s, False, "bshd"), ops.apply_rotary_pos_emb(x, c, s, False, "bshd"))


# ---- bad inputs ------------------------------------------------------------------------------

X = torch.randn(2, 3, 5, 8)
INV = ops.rope_inv_freq(8)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: ops.rope(X, None, INV, layout="sbhd"), r"posenc\.rope: argument 'layout' must be one of \"bhsd\", \"bshd\", \"thd\", but got \"sbhd\""),
        (lambda: ops.rope(X[0], None, INV), r"posenc\.rope: argument 'x' must be a 4-D tensor of shape \(batch, heads, seq, head_dim\), but got a 3-D"),
        (lambda: ops.rope(X.long(), None, INV), r"argument 'x' must have dtype float16, bfloat16, float32 or float64, but got dtype Long"),
        (lambda: ops.rope(X, torch.arange(5).short(), INV), r"argument 'positions' must have dtype int64 or int32, but got dtype Short"),
        (lambda: ops.rope(X, torch.arange(6), INV), r"argument 'positions' must have shape \(5,\) or \(2, 5\) to match 'x' of shape \[2, 3, 5, 8\].*but got shape \[6\]"),
        (lambda: ops.rope(X, torch.zeros(3, 5, dtype=torch.long), INV), r"argument 'positions' must have shape \(5,\) or \(2, 5\).*but got shape \[3, 5\]"),
        (lambda: ops.rope(X, torch.arange(5), INV, layout="bshd"), r"argument 'positions' must have shape \(3,\) or \(2, 3\).*layout \"bshd\"\), but got shape \[5\]"),
        (lambda: ops.rope(X, torch.zeros(1, 2, 5, dtype=torch.long), INV), r"argument 'positions' must be a 1-D \(seq,\) or 2-D \(batch, seq\) tensor, but got a 3-D"),
        (lambda: ops.rope(X, None, INV.half()), r"argument 'inv_freq' must have dtype float32 \(reference precision\) or float64 \(exact precision\), but got dtype Half"),
        (lambda: ops.rope(X, None, INV[None]), r"argument 'inv_freq' must be a 1-D tensor of shape \(rotary_dim / 2,\), but got a 2-D"),
        (lambda: ops.rope(X, None, ops.rope_inv_freq(10)), r"argument 'inv_freq' must have at most head_dim / 2 elements \(head_dim 8\).*but got 5 elements"),
        (lambda: ops.rope(X, None, INV, 0, 7), r"argument 'rotary_dim' must be even and >= 0, but got 7"),
        (lambda: ops.rope(X, None, INV, 0, -2), r"argument 'rotary_dim' must be even and >= 0, but got -2"),
        (lambda: ops.rope(X, None, INV, 0, 4), r"argument 'rotary_dim' must equal 2 \* len\(inv_freq\) = 8, but got 4"),
        (lambda: ops.rope(X, None, ops.rope_inv_freq(10), 0, 10), r"argument 'rotary_dim' must be <= head_dim \(8\), but got 10"),
        (lambda: torch.ops.posenc.rope_backward(X[0], None, INV, 0, None, False, "bhsd"), r"posenc\.rope_backward: argument 'grad' must be a 4-D"),
        (lambda: ops.apply_rotary_pos_emb(X, torch.randn(5, 8), torch.randn(5, 8), layout="x"), r"posenc\.apply_rotary_pos_emb: argument 'layout' must be one of"),
        (lambda: ops.apply_rotary_pos_emb(X, torch.randn(8), torch.randn(8)), r"argument 'cos' must be a 2-D \(seq, rotary_dim\) or 3-D \(batch, seq, rotary_dim\) tensor, but got a 1-D"),
        (lambda: ops.apply_rotary_pos_emb(X, torch.randn(5, 8), torch.randn(5, 6)), r"argument 'sin' must have the shape of 'cos' \[5, 8\], but got shape \[5, 6\]"),
        (lambda: ops.apply_rotary_pos_emb(X, torch.randn(4, 8), torch.randn(4, 8)), r"argument 'cos' must have shape \(5, rotary_dim\) or \(2, 5, rotary_dim\).*but got shape \[4, 8\]"),
        (lambda: ops.apply_rotary_pos_emb(X, torch.randn(3, 5, 8), torch.randn(3, 5, 8)), r"argument 'cos' must have shape.*but got shape \[3, 5, 8\]"),
        (lambda: ops.apply_rotary_pos_emb(X, torch.randn(5, 7), torch.randn(5, 7)), r"argument 'cos' must have an even last dim \(rotary_dim\), but got shape \[5, 7\]"),
        (lambda: ops.apply_rotary_pos_emb(X, torch.randn(5, 10), torch.randn(5, 10)), r"argument 'cos' must have a last dim \(rotary_dim\) <= head_dim \(8\), but got shape \[5, 10\]"),
        (lambda: ops.apply_rotary_pos_emb(X, torch.randn(5, 8).double(), torch.randn(5, 8).double()), r"argument 'cos' must have the dtype of 'x' \(Float\), but got dtype Double"),
        (lambda: torch.ops.posenc.apply_rotary_pos_emb_backward(X[:1], X, torch.randn(5, 8), torch.randn(5, 8), False, "bhsd"), r"apply_rotary_pos_emb_backward: argument 'grad' must have the shape of 'x' \[2, 3, 5, 8\], but got shape \[1, 3, 5, 8\]"),
    ],
)
def test_bad_inputs(call, match):
    with pytest.raises(RuntimeError, match=match):
        call()


def test_bad_inputs_on_meta_same_message():
    x = torch.empty(2, 3, 5, 8, device="meta")
    with pytest.raises(RuntimeError, match=r"posenc\.rope: argument 'rotary_dim' must be even and >= 0, but got 7"):
        ops.rope(x, None, INV.to("meta"), 0, 7)
    with pytest.raises(RuntimeError, match=r"argument 'positions' must have shape \(5,\)"):
        ops.rope(x, torch.empty(6, dtype=torch.long, device="meta"), INV.to("meta"))
    out = ops.rope(x, None, INV.to("meta"), 0)
    assert out.shape == x.shape and out.stride() == (120, 40, 8, 1)
    with pytest.raises(RuntimeError, match=r"argument 'inv_freq' must be on the device of 'x'"):
        ops.rope(x, None, INV)


# ---- packed sequences (layout "thd"), attention_factor, xPos --------------------------------


def cu_tensor(lengths):
    return torch.tensor([0] + list(torch.tensor(lengths).cumsum(0).tolist()), dtype=torch.long)


def thd_positions(lengths, offset):
    """Per-token absolute positions of a packed batch: restart at offset in every sequence."""
    return torch.cat([torch.arange(n) + offset for n in lengths]).long() if lengths else torch.zeros(0, dtype=torch.long)


def ref_rope_thd(x, lengths, angle_fn, rot, interleaved, offset=0):
    """fp64 reference for a packed (T, H, D) x: the bshd reference with B = 1 and positions
    restarting per sequence."""
    pos = thd_positions(lengths, offset)[None]
    return ref_rope(x[None], pos, angle_fn, rot, interleaved, "bshd")[0]


def ref_xpos_zeta(rot, gamma=0.4):
    # Sun et al. 2022: zeta_i = (2i / R + gamma) / (1 + gamma), i < R/2.
    return torch.tensor([(2.0 * i / rot + gamma) / (1 + gamma) for i in range(rot // 2)], dtype=F64)


def ref_scale(x, pos, mag_fn, rot, interleaved, layout):
    """Multiplies pair i of the first rot dims of x (bhsd/bshd) by mag_fn(pos) (B, S, rot/2)."""
    xb = to_bhsd(x, layout)
    m = mag_fn(pos)[:, None]  # (B, 1, S, rot/2)
    a, b = split(xb, rot, interleaved)
    return to_bhsd(join(a * m, b * m, xb[..., rot:], interleaved), layout)


def xpos_mag(zeta, scale_base, inverse, centre):
    sign = -1.0 if inverse else 1.0
    return lambda pos: zeta.to(F64) ** (sign * (pos.to(F64)[..., None] - centre) / scale_base)


THD_CASES = [
    # lengths, H, D, rot, offset
    ([3, 5, 1], 2, 8, 8, 0),
    ([4], 3, 10, 6, 7),
    ([2, 0, 6, 0], 1, 16, 16, 2),  # empty sequences
    ([1, 1, 1, 1, 1], 2, 65, 64, 1800),
]


@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("case", THD_CASES)
def test_thd_matches_per_sequence_and_paper(case, interleaved):
    lengths, H, D, rot, offset = case
    T = sum(lengths)
    x = torch.randn(T, H, D, dtype=F64)
    cu = cu_tensor(lengths)
    inv = ops.rope_inv_freq(rot)
    out = ops.rope(x, None, inv, offset, rot, interleaved, "thd", cu)
    assert out.shape == x.shape and out.dtype == F64 and out.is_contiguous()
    want = ref_rope_thd(x, lengths, f32_angles(inv), rot, interleaved, offset)
    torch.testing.assert_close(out, want, **TOL[F64])
    # every sequence alone through the bhsd path, positions restarting at offset
    for i, n in enumerate(lengths):
        s0 = int(cu[i])
        seq = x[s0 : s0 + n].transpose(0, 1)[None]  # (1, H, n, D)
        alone = ops.rope(seq, None, inv, offset, rot, interleaved, "bhsd")[0].transpose(0, 1)
        assert torch.equal(out[s0 : s0 + n], alone)
    assert torch.equal(out[..., rot:], x[..., rot:])


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_thd_dtypes_and_views(dtype):
    lengths = [3, 4]
    qkv = torch.randn(7, 3 * 2 * 8, dtype=F64).to(dtype)
    q = qkv[:, :16].view(7, 2, 8)  # (T, H, D) view, token stride 48
    assert not q.is_contiguous()
    inv = ops.rope_inv_freq(8)
    cu = cu_tensor(lengths)
    out = ops.rope(q, None, inv, 1, layout="thd", cu_seqlens=cu)
    assert out.dtype == dtype
    assert torch.equal(out, ops.rope(q.contiguous(), None, inv, 1, layout="thd", cu_seqlens=cu))
    # a non-contiguous cu_seqlens too
    cu2 = torch.stack([cu, cu], 1)[:, 0]
    assert not cu2.is_contiguous()
    assert torch.equal(out, ops.rope(q, None, inv, 1, layout="thd", cu_seqlens=cu2))
    want = ref_rope_thd(q.double(), lengths, f32_angles(inv), 8, False, 1)
    torch.testing.assert_close(out.double(), want, **TOL[dtype])


def test_thd_empty_and_single():
    inv = ops.rope_inv_freq(8)
    for cu in (torch.tensor([0]), torch.tensor([0, 0, 0])):
        x = torch.randn(0, 2, 8, requires_grad=True)
        out = ops.rope(x, None, inv, layout="thd", cu_seqlens=cu)
        assert out.shape == (0, 2, 8)
        out.sum().backward()
        assert x.grad.shape == x.shape
    x = torch.randn(1, 1, 8, dtype=F64)
    out = ops.rope(x, None, inv, 0, layout="thd", cu_seqlens=torch.tensor([0, 1]))
    assert torch.equal(out, x)  # position 0 of its sequence: the identity


def test_thd_decoding_rows_of_full_call():
    # C09 for packed input: one sequence, the tail called with offset = its start.
    x = torch.randn(10, 2, 8)
    inv = ops.rope_inv_freq(8)
    full = ops.rope(x, None, inv, 0, layout="thd", cu_seqlens=torch.tensor([0, 10]))
    tail = ops.rope(x[6:], None, inv, 6, layout="thd", cu_seqlens=torch.tensor([0, 4]))
    torch.testing.assert_close(tail, full[6:], rtol=0, atol=0)


@pytest.mark.parametrize("layout", ["bhsd", "bshd"])
@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("rot,D", [(8, 8), (4, 10)])
def test_attention_factor_matches_hf(rot, D, interleaved, layout):
    # HF (YaRN / LongRoPE): cos = emb.cos() * attention_scaling, sin = emb.sin() * attention_scaling,
    # then apply_rotary_pos_emb on the rotary dims only; the pass-through dims are not scaled.
    B, H, S, offset, f = 2, 3, 5, 4, 1.2345
    x = make_x(B, H, S, D, layout, F64)
    inv = ops.rope_inv_freq(rot)
    freqs = ((torch.arange(S) + offset).float()[:, None] * inv).double()
    emb = torch.stack([freqs, freqs], -1).flatten(-2) if interleaved else torch.cat([freqs, freqs], -1)
    want = ref_apply(x, emb.cos() * f, emb.sin() * f, interleaved, layout)
    out = ops.rope(x, None, inv, offset, rot, interleaved, layout, attention_factor=f)
    torch.testing.assert_close(out, want, **TOL[F64])
    assert torch.equal(out[..., rot:], x[..., rot:])
    # and it is f times the unscaled op on the rotary dims
    plain = ops.rope(x, None, inv, offset, rot, interleaved, layout)
    torch.testing.assert_close(out[..., :rot], plain[..., :rot] * f, **TOL[F64])


@pytest.mark.parametrize("layout", ["bhsd", "bshd", "thd"])
@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("inverse", [False, True])
def test_xpos_matches_reference(inverse, interleaved, layout):
    B, H, S, D, rot, offset, sb, centre = 2, 3, 6, 10, 8, 5, 16.0, 3
    zeta = ref_xpos_zeta(rot)
    inv = ops.rope_inv_freq(rot)
    f = 0.75
    if layout == "thd":
        lengths = [4, 2, 6]
        x = torch.randn(sum(lengths), H, D, dtype=F64)
        out = ops.rope(x, None, inv, offset, rot, interleaved, "thd", cu_tensor(lengths), f, zeta.float(), sb, inverse, centre)
        pos = thd_positions(lengths, offset)[None]
        rotd = ref_rope(x[None], pos, f32_angles(inv), rot, interleaved, "bshd")
        want = ref_scale(rotd, pos, xpos_mag(zeta.float(), sb, inverse, centre), rot, interleaved, "bshd")[0]
        want = torch.cat([want[..., :rot] * f, want[..., rot:]], -1)
    else:
        x = make_x(B, H, S, D, layout, F64)
        positions = torch.randint(0, 40, (B, S))
        out = ops.rope(x, positions, inv, offset, rot, interleaved, layout, None, f, zeta.float(), sb, inverse, centre)
        pos = abs_positions(positions, B, S, offset)
        rotd = ref_rope(x, pos, f32_angles(inv), rot, interleaved, layout)
        want = ref_scale(rotd, pos, lambda p: f * xpos_mag(zeta.float(), sb, inverse, centre)(p), rot, interleaved, layout)
    torch.testing.assert_close(out, want, **TOL[F64])
    assert torch.equal(out[..., rot:], x[..., rot:])


def test_xpos_score_depends_on_relative_position_only():
    # Sun et al. 2022: q scaled by zeta^(m/sb), k by zeta^(-n/sb): q.k depends on m - n only
    # (the rotation part by Su et al. eq. 16), and xpos_centre cancels.
    q = torch.randn(1, 1, 1, 16, dtype=F64)
    k = torch.randn(1, 1, 1, 16, dtype=F64)
    inv = ops.rope_inv_freq(16)
    zeta = ref_xpos_zeta(16).float()

    def score(m, n, centre=0):
        rq = ops.rope(q, None, inv, m, xpos_zeta=zeta, xpos_scale_base=64.0, xpos_centre=centre)
        rk = ops.rope(k, None, inv, n, xpos_zeta=zeta, xpos_scale_base=64.0, xpos_inverse=True, xpos_centre=centre)
        return (rq * rk).sum()

    torch.testing.assert_close(score(10, 3), score(110, 103), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(score(10, 3), score(10, 3, centre=57), rtol=1e-12, atol=1e-12)
    # and the scaling really decays with distance: for identical unit pairs (no rotation,
    # inv_freq = 0) the score is sum_i zeta_i^((m - n)/sb)
    zero = torch.zeros(8)
    one = torch.ones(1, 1, 1, 16, dtype=F64)
    for m, n in ((5, 0), (40, 2), (0, 30)):
        rq = ops.rope(one, None, zero, m, xpos_zeta=zeta, xpos_scale_base=64.0)
        rk = ops.rope(one, None, zero, n, xpos_zeta=zeta, xpos_scale_base=64.0, xpos_inverse=True)
        want = 2 * (zeta.double() ** ((m - n) / 64.0)).sum()
        torch.testing.assert_close((rq * rk).sum(), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_magnitudes_low_precision(dtype):
    x = torch.randn(2, 3, 5, 8, dtype=F64).to(dtype)
    inv = ops.rope_inv_freq(8)
    zeta = ref_xpos_zeta(8).float()
    out = ops.rope(x, None, inv, 100, attention_factor=1.1, xpos_zeta=zeta, xpos_scale_base=32.0)
    pos = abs_positions(None, 2, 5, 100)
    rotd = ref_rope(x.double(), pos, f32_angles(inv), 8, False, "bhsd")
    want = ref_scale(rotd, pos, lambda p: 1.1 * xpos_mag(zeta, 32.0, False, 0)(p), 8, False, "bhsd")
    torch.testing.assert_close(out.double(), want, **TOL[dtype])


MAG_CASES = [
    # layout, attention_factor, xpos
    ("bhsd", 1.3, False),
    ("bshd", 1.0, True),
    ("thd", 0.8, True),
    ("thd", 1.0, False),
]


def mag_args(layout, f, xpos, inverse=False):
    """x shape and the trailing rope arguments (from layout on) of a MAG_CASES row."""
    cu = cu_tensor([2, 3]) if layout == "thd" else None
    shape = (5, 2, 6) if layout == "thd" else ((2, 2, 3, 6) if layout == "bhsd" else (2, 3, 2, 6))
    zeta = ref_xpos_zeta(4).float() if xpos else None
    return shape, (layout, cu, f, zeta, 8.0, inverse, 1)


@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("case", MAG_CASES)
def test_magnitudes_gradcheck_and_reference_grad(case, interleaved):
    layout, f, xpos = case
    shape, tail = mag_args(layout, f, xpos, inverse=interleaved)
    inv = ops.rope_inv_freq(4)
    x = torch.randn(shape, dtype=F64, requires_grad=True)
    fn = lambda t: ops.rope(t, None, inv, 5, 4, interleaved, *tail)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))
    # the gradient is that of the fp64 reference
    _, cu, _, zeta, sb, inverse, centre = tail
    g = torch.randn(shape, dtype=F64)
    (got,) = torch.autograd.grad(fn(x), x, g)
    if layout == "thd":
        pos = thd_positions([2, 3], 5)[None]
        xr, lay = x[None], "bshd"
    else:
        pos, xr, lay = abs_positions(None, 2, 3, 5), x, layout
    mag = (lambda p: f * xpos_mag(zeta, sb, inverse, centre)(p)) if xpos else (lambda p: torch.full(p.shape + (2,), f, dtype=F64))
    ref = ref_scale(ref_rope(xr, pos, f32_angles(inv), 4, interleaved, lay), pos, mag, 4, interleaved, lay)
    (want,) = torch.autograd.grad(ref, x, g[None] if layout == "thd" else g)
    torch.testing.assert_close(got, want, **TOL[F64])


def magnitude_samples():
    inv8 = ops.rope_inv_freq(8)
    zeta = ref_xpos_zeta(8).float()
    return [
        (torch.randn(7, 3, 8), None, inv8, 0, None, False, "thd", cu_tensor([3, 4])),
        (torch.randn(6, 2, 10, dtype=F64, requires_grad=True), None, inv8, 2, 8, True, "thd", cu_tensor([1, 0, 5]), 1.2),
        (torch.randn(2, 3, 5, 8, requires_grad=True), torch.randint(0, 9, (2, 5)), inv8, 3, None, False, "bhsd", None, 0.9, zeta, 16.0, True, 2),
        (torch.randn(5, 2, 8, dtype=torch.float16), None, inv8, 1, None, False, "thd", cu_tensor([5]), 1.0, zeta, 4.0, False, 0),
        (torch.randn(0, 2, 8, requires_grad=True), None, inv8, 0, None, False, "thd", torch.tensor([0])),
    ]


@pytest.mark.parametrize("args", magnitude_samples())
def test_opcheck_rope_magnitudes_thd(args):
    torch.library.opcheck(torch.ops.posenc.rope.default, args)


@pytest.mark.parametrize("args", magnitude_samples())
def test_opcheck_rope_backward_magnitudes_thd(args):
    torch.library.opcheck(torch.ops.posenc.rope_backward.default, args)


def test_compile_thd_dynamic_no_recompile():
    inv = ops.rope_inv_freq(8)
    zeta = ref_xpos_zeta(8).float()
    torch._dynamo.reset()
    counter = torch._dynamo.testing.CompileCounter()

    def f(x, cu, off: int):
        return ops.rope(x, None, inv, off, layout="thd", cu_seqlens=cu, attention_factor=1.5, xpos_zeta=zeta, xpos_scale_base=32.0)

    cf = torch.compile(f, backend=counter, fullgraph=True, dynamic=True)
    # first call: cu_seqlens length 6 differs from every other size (duck sizing would tie them)
    for lengths, off in (([2, 3, 4, 1, 5], 0), ([5, 1, 3], 2), ([6, 1, 2, 7], 5)):
        x = torch.randn(sum(lengths), 3, 8, requires_grad=True)
        cu = cu_tensor(lengths)
        got = cf(x, cu, off)
        torch.testing.assert_close(got, f(x, cu, off))
        (gx,) = torch.autograd.grad(got.square().sum(), x)
        (want,) = torch.autograd.grad(f(x, cu, off).square().sum(), x)
        torch.testing.assert_close(gx, want)
    assert counter.frame_count == 1


def test_script_new_arguments():
    rope = torch.jit.script(ops.rope)
    x = torch.randn(5, 2, 8)
    inv = ops.rope_inv_freq(8)
    cu = cu_tensor([2, 3])
    zeta = ref_xpos_zeta(8).float()
    args = (x, None, inv, 2, None, True, "thd", cu, 1.25, zeta, 16.0, True, 3)
    assert torch.equal(rope(*args), ops.rope(*args))


XT = torch.randn(5, 3, 8)
CU = torch.tensor([0, 2, 5])


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: ops.rope(XT, None, INV, layout="thd"), r"posenc\.rope: argument 'cu_seqlens' must be an int64 or int32 \(num_seqs \+ 1,\) tensor with layout \"thd\", but got None"),
        (lambda: ops.rope(X, None, INV, cu_seqlens=CU), r"posenc\.rope: argument 'cu_seqlens' must be None unless layout is \"thd\", but got a tensor of shape \[3\] with layout \"bhsd\""),
        (lambda: ops.rope(X, None, INV, layout="thd", cu_seqlens=CU), r"posenc\.rope: argument 'x' must be a 3-D tensor of shape \(total_tokens, heads, head_dim\), but got a 4-D"),
        (lambda: ops.rope(XT, torch.arange(5), INV, layout="thd", cu_seqlens=CU), r"argument 'positions' must be None with layout \"thd\".*but got a tensor of shape \[5\]"),
        (lambda: ops.rope(XT, None, INV, layout="thd", cu_seqlens=CU.float()), r"argument 'cu_seqlens' must have dtype int64 or int32, but got dtype Float"),
        (lambda: ops.rope(XT, None, INV, layout="thd", cu_seqlens=CU[None]), r"argument 'cu_seqlens' must be a 1-D tensor of shape \(num_seqs \+ 1,\), but got a 2-D"),
        (lambda: ops.rope(XT, None, INV, layout="thd", cu_seqlens=CU[:0]), r"argument 'cu_seqlens' must have at least one element.*but got shape \[0\]"),
        (lambda: ops.rope(XT, None, INV, layout="thd", cu_seqlens=torch.tensor([1, 2, 5])), r"argument 'cu_seqlens' must start at 0, but got cu_seqlens\[0\] = 1"),
        (lambda: ops.rope(XT, None, INV, layout="thd", cu_seqlens=torch.tensor([0, 3, 2, 5])), r"argument 'cu_seqlens' must be non-decreasing, but got cu_seqlens\[1\] = 3 > cu_seqlens\[2\] = 2"),
        (lambda: ops.rope(XT, None, INV, layout="thd", cu_seqlens=torch.tensor([0, 2, 4])), r"argument 'cu_seqlens' must end at total_tokens \(5\), but got cu_seqlens\[2\] = 4"),
        (lambda: torch.ops.posenc.rope_backward(XT, None, INV, 0, None, False, "thd", torch.tensor([0, 6])), r"posenc\.rope_backward: argument 'cu_seqlens' must end at total_tokens \(5\)"),
        (lambda: ops.rope(X, None, INV, layout="tdh"), r"posenc\.rope: argument 'layout' must be one of \"bhsd\", \"bshd\", \"thd\", but got \"tdh\""),
        (lambda: ops.rope(X, None, INV, attention_factor=float("inf")), r"argument 'attention_factor' must be finite, but got inf"),
        (lambda: ops.rope(X, None, INV, xpos_zeta=torch.ones(3)), r"argument 'xpos_zeta' must have len\(inv_freq\) = 4 elements, but got shape \[3\]"),
        (lambda: ops.rope(X, None, INV, xpos_zeta=torch.ones(4).double()), r"argument 'xpos_zeta' must have dtype Float, but got dtype Double"),
        (lambda: ops.rope(X, None, INV, xpos_zeta=torch.ones(1, 4)), r"argument 'xpos_zeta' must be a 1-D tensor of shape \(rotary_dim / 2,\), but got a 2-D"),
        (lambda: ops.rope(X, None, INV, xpos_zeta=torch.tensor([1.0, 0.5, 0.0, 0.9])), r"argument 'xpos_zeta' must be finite and > 0, but got xpos_zeta\[2\] = 0"),
        (lambda: ops.rope(X, None, INV, xpos_zeta=torch.ones(4), xpos_scale_base=0.0), r"argument 'xpos_scale_base' must be finite and > 0, but got 0"),
        (lambda: ops.rope(X, None, INV, xpos_zeta=torch.ones(4), xpos_scale_base=-512.0), r"argument 'xpos_scale_base' must be finite and > 0, but got -512"),
    ],
)
def test_bad_inputs_thd_and_magnitudes(call, match):
    with pytest.raises(RuntimeError, match=match):
        call()


def test_bad_thd_inputs_on_meta_same_message():
    x = torch.empty(5, 3, 8, device="meta")
    inv = INV.to("meta")
    with pytest.raises(RuntimeError, match=r"posenc\.rope: argument 'cu_seqlens' must be an int64 or int32"):
        ops.rope(x, None, inv, layout="thd")
    with pytest.raises(RuntimeError, match=r"argument 'cu_seqlens' must be on the device of 'x'"):
        ops.rope(x, None, inv, layout="thd", cu_seqlens=CU)
    with pytest.raises(RuntimeError, match=r"argument 'xpos_zeta' must have len\(inv_freq\) = 4"):
        ops.rope(x, None, inv, layout="thd", cu_seqlens=CU.to("meta"), xpos_zeta=torch.ones(3, device="meta"))
    out = ops.rope(x, None, inv, layout="thd", cu_seqlens=CU.to("meta"))
    assert out.shape == x.shape and out.stride() == (24, 8, 1)
