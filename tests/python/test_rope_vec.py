"""Edges of the vectorised CPU RoPE kernels (rope_rotate.vec.cpp): rows whose rotary part starts
or ends inside a vector, head / rotary dims that are not multiples of the vector width, strided
inputs, packed sequences with empty ones, partial rotary, xPos, interleaved pairs, fp16/bf16,
(S,) / (B, S) positions and offsets, forward and backward, against fp64 references written from
the formulas (Su et al. 2021; Sun et al. 2022 for xPos; Hugging Face's apply_rotary_pos_emb),
and the bit-for-bit equalities the kernels promise (thread count, layout, row blocking, the
portable vs AVX2 copies)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TOL

from posenc import ops

F64 = torch.float64

# head_dim, rotary_dim: rotary halves of 1..33 pairs around the fp32 vector widths (8 lanes, 16
# per step; bf16/fp16 16 per step; fp64 4 and 8), odd head dims, rotary_dim < head_dim.
DIMS = [(2, 2), (3, 2), (8, 6), (14, 14), (16, 16), (17, 16), (30, 30), (32, 32), (34, 34),
        (35, 18), (40, 24), (64, 62), (66, 66), (67, 64), (128, 64)]


# ---- fp64 references ----------------------------------------------------------------------------


def split(x, rot, interleaved):
    if interleaved:
        return x[..., 0:rot:2], x[..., 1:rot:2]
    return x[..., : rot // 2], x[..., rot // 2 : rot]


def join(a, b, rest, interleaved):
    r = torch.stack([a, b], -1).flatten(-2) if interleaved else torch.cat([a, b], -1)
    return torch.cat([r, rest], -1)


def ref_rope_bhsd(x, pos, inv_freq, rot, interleaved, mag=None, sign=1.0):
    """x (B, H, S, D) any dtype, pos (B, S) int64 absolute positions. The angle is the float32
    product float(pos) * inv_freq (reference precision, as HF rounds it) or, for a float64
    inv_freq, the fp64 product; then everything in fp64. mag (B, S, rot/2) scales cos and sin;
    sign = -1 rotates by the negative angle (the backward)."""
    if inv_freq.dtype == torch.float32:
        ang = (pos.float()[..., None] * inv_freq).to(F64)
    else:
        ang = pos.to(F64)[..., None] * inv_freq
    c, s = ang.cos(), sign * ang.sin()
    if mag is not None:
        c, s = c * mag, s * mag
    c, s = c[:, None], s[:, None]
    xb = x.to(F64)
    a, b = split(xb, rot, interleaved)
    return join(a * c - b * s, b * c + a * s, xb[..., rot:], interleaved)


def layout_x(B, H, S, D, layout, dtype=torch.float32):
    shape = (B, H, S, D) if layout == "bhsd" else (B, S, H, D)
    return torch.randn(shape, dtype=F64).to(dtype)


def to_bhsd(x, layout):
    return x if layout == "bhsd" else x.transpose(1, 2)


def tol(dtype):
    return TOL[dtype]


# ---- forward and backward against the reference -------------------------------------------------


@pytest.mark.parametrize("layout", ["bhsd", "bshd"])
@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("D,rot", DIMS)
def test_odd_widths_match_reference(D, rot, interleaved, layout):
    B, H, S = 2, 3, 5
    x = layout_x(B, H, S, D, layout)
    inv = ops.rope_inv_freq(rot)
    pos = torch.arange(S).expand(B, S)
    out = ops.rope(x, None, inv, 0, rot, interleaved, layout)
    want = ref_rope_bhsd(to_bhsd(x, layout), pos, inv, rot, interleaved)
    torch.testing.assert_close(to_bhsd(out, layout).double(), want, **tol(torch.float32))
    assert torch.equal(out[..., rot:], x[..., rot:])  # pass-through dims bit-exact
    g = torch.ops.posenc.rope_backward(x, None, inv, 0, rot, interleaved, layout)
    want_g = ref_rope_bhsd(to_bhsd(x, layout), pos, inv, rot, interleaved, sign=-1.0)
    torch.testing.assert_close(to_bhsd(g, layout).double(), want_g, **tol(torch.float32))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("D,rot", [(16, 16), (35, 18), (66, 66), (128, 128)])
def test_dtypes_match_reference(D, rot, interleaved, dtype):
    B, H, S = 2, 2, 7
    x = layout_x(B, H, S, D, "bhsd", dtype)
    inv = ops.rope_inv_freq(rot)
    out = ops.rope(x, None, inv, 3, rot, interleaved)
    assert out.dtype == dtype
    want = ref_rope_bhsd(x, torch.arange(3, S + 3).expand(B, S), inv, rot, interleaved)
    torch.testing.assert_close(out.double(), want, **tol(dtype))
    if dtype != torch.float64:
        # fp32 math, one rounding to the narrow type: exactly the fp32 op on the widened input,
        # rounded (both round to nearest even).
        assert torch.equal(out, ops.rope(x.float(), None, inv, 3, rot, interleaved).to(dtype))
        g = torch.ops.posenc.rope_backward(x, None, inv, 3, rot, interleaved, "bhsd")
        g32 = torch.ops.posenc.rope_backward(x.float(), None, inv, 3, rot, interleaved, "bhsd")
        assert torch.equal(g, g32.to(dtype))


@pytest.mark.parametrize("kind", ["S", "BS", "BS_strided"])
@pytest.mark.parametrize("layout", ["bhsd", "bshd"])
def test_positions_tensors_and_offset(kind, layout):
    B, H, S, D, rot = 3, 2, 9, 20, 18
    x = layout_x(B, H, S, D, layout)
    inv = ops.rope_inv_freq(rot)
    if kind == "S":
        positions = torch.randperm(50)[:S]
        pos = positions.expand(B, S)
    else:
        full = torch.randint(0, 3000, (B, 2 * S))
        positions = full[:, ::2] if kind == "BS_strided" else full[:, :S].contiguous()
        pos = positions
    for interleaved in (False, True):
        out = ops.rope(x, positions, inv, 11, rot, interleaved, layout)
        want = ref_rope_bhsd(to_bhsd(x, layout), pos + 11, inv, rot, interleaved)
        torch.testing.assert_close(to_bhsd(out, layout).double(), want, **tol(torch.float32))
        g = torch.ops.posenc.rope_backward(x, positions, inv, 11, rot, interleaved, layout)
        want_g = ref_rope_bhsd(to_bhsd(x, layout), pos + 11, inv, rot, interleaved, sign=-1.0)
        torch.testing.assert_close(to_bhsd(g, layout).double(), want_g, **tol(torch.float32))


@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("inverse", [False, True])
def test_xpos_and_attention_factor(inverse, interleaved):
    # Sun et al. 2022: pair i scaled by zeta_i^(+-(pos - centre) / scale_base).
    B, H, S, D, rot = 2, 3, 13, 37, 34
    x = layout_x(B, H, S, D, "bhsd")
    inv = ops.rope_inv_freq(rot)
    zeta = torch.tensor([(2.0 * i / rot + 0.4) / 1.4 for i in range(rot // 2)], dtype=F64)
    centre, base, factor = 4, 64.0, 0.75
    pos = torch.arange(S).expand(B, S) + 2
    e = (pos.to(F64)[..., None] - centre) / base
    mag = factor * zeta ** (-e if inverse else e)
    out = ops.rope(x, None, inv, 2, rot, interleaved, "bhsd", None, factor, zeta.float(), base,
                   inverse, centre)
    want = ref_rope_bhsd(x, pos, inv, rot, interleaved, mag=mag)
    torch.testing.assert_close(out.double(), want, **tol(torch.float32))
    g = torch.ops.posenc.rope_backward(x, None, inv, 2, rot, interleaved, "bhsd", None, factor,
                                       zeta.float(), base, inverse, centre)
    want_g = ref_rope_bhsd(x, pos, inv, rot, interleaved, mag=mag, sign=-1.0)
    torch.testing.assert_close(g.double(), want_g, **tol(torch.float32))


@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("lengths", [[0, 3, 0, 0, 5, 1, 0], [0], [0, 0], [17, 0, 2]])
def test_thd_with_empty_sequences(lengths, interleaved):
    T, H, D, rot = sum(lengths), 3, 19, 18
    x = torch.randn(T, H, D)
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist())
    inv = ops.rope_inv_freq(rot)
    out = ops.rope(x, None, inv, 5, rot, interleaved, "thd", cu)
    assert out.shape == x.shape
    pos = torch.cat([torch.arange(n) for n in lengths]).long() + 5 if T else torch.zeros(0).long()
    want = ref_rope_bhsd(x.transpose(0, 1)[None], pos[None], inv, rot, interleaved)[0].transpose(0, 1)
    torch.testing.assert_close(out.double(), want, **tol(torch.float32))
    g = torch.ops.posenc.rope_backward(x, None, inv, 5, rot, interleaved, "thd", cu)
    want_g = ref_rope_bhsd(x.transpose(0, 1)[None], pos[None], inv, rot, interleaved,
                           sign=-1.0)[0].transpose(0, 1)
    torch.testing.assert_close(g.double(), want_g, **tol(torch.float32))


@pytest.mark.parametrize("backward", [False, True])
def test_reference_cos_sin_within_one_ulp(backward):
    # Reference precision with fp32 math evaluates cos/sin of the fp32 angle float(p) * inv_freq
    # in fp64 vectors and rounds once: within 1 ulp of the correctly rounded fp32 value (as the
    # C library's and torch's cos/sin are), equal to it but in rare near-halfway cases. With
    # x = (1, .., 1, 0, .., 0) the output is (cos, sin) itself (products by 1 and 0 are exact).
    rot = 128
    inv = ops.rope_inv_freq(rot, 500000.0)
    positions = torch.cat([torch.arange(-3000, 3000), torch.arange(0, 4_000_000, 997),
                           torch.tensor([2**24 + 1, 2**31, 2**40])])
    x = torch.zeros(1, 1, len(positions), rot)
    x[..., : rot // 2] = 1
    if backward:
        out = torch.ops.posenc.rope_backward(x, positions, inv, 0, None, False, "bhsd")
    else:
        out = ops.rope(x, positions, inv)
    c, s = out[0, 0, :, : rot // 2].double(), out[0, 0, :, rot // 2 :].double()
    ang = (positions.float()[:, None] * inv).double()  # the fp32 angle, exactly
    want_c = ang.cos().float().double()
    want_s = (-1.0 if backward else 1.0) * ang.sin().float().double()
    for got, want in ((c, want_c), (s, want_s)):
        ulp = torch.finfo(torch.float32).eps * want.abs().clamp_min(2.0**-126)
        assert ((got - want).abs() <= ulp).all()
        # angles from 1e6 up go to the C library's cosf/sinf, not always correctly rounded
        small = ang.abs() < 1e6
        assert (got[small] != want[small]).double().mean() < 1e-5


def test_exact_precision_large_positions():
    # float64 inv_freq: the angle is the fp64 product; the fp32 result stays within 1e-6 of the
    # fp64 rotation at positions around 1e6 (the fp32 angle alone would be off by ~0.03 rad).
    B, H, S, D = 1, 2, 6, 42
    x = layout_x(B, H, S, D, "bhsd")
    inv = ops.rope_inv_freq(D, dtype=F64)
    positions = torch.tensor([0, 1, 999_999, 1_000_000, 123_456_789, 2**40])
    out = ops.rope(x, positions, inv)
    want = ref_rope_bhsd(x, positions.expand(B, S), inv, D, False)
    torch.testing.assert_close(out.double(), want, rtol=0, atol=1e-6)


# ---- bit-for-bit equalities ---------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_strided_inputs_equal_contiguous(dtype):
    B, H, S, D, rot = 2, 3, 10, 34, 30
    inv = ops.rope_inv_freq(rot)
    qkv = torch.randn(B, S, 3 * H * D + 5, dtype=F64).to(dtype)
    q = qkv[..., 5 : 5 + H * D].view(B, S, H, D)  # inner dim contiguous, rows strided
    qt = torch.randn(B, S, D, H, dtype=F64).to(dtype).transpose(-1, -2)  # inner dim stride H
    qs = torch.randn(B, S, H, 2 * D, dtype=F64).to(dtype)[..., ::2]  # inner dim stride 2
    for t in (q, qt, qs):
        assert not t.is_contiguous()
        for interleaved in (False, True):
            for layout in ("bshd", "bhsd"):
                want = ops.rope(t.contiguous(), None, inv, 1, rot, interleaved, layout)
                assert torch.equal(ops.rope(t, None, inv, 1, rot, interleaved, layout), want)
                gw = torch.ops.posenc.rope_backward(t.contiguous(), None, inv, 1, rot,
                                                    interleaved, layout)
                g = torch.ops.posenc.rope_backward(t, None, inv, 1, rot, interleaved, layout)
                assert torch.equal(g, gw)
    # packed thd view
    x = torch.randn(9, 2 * H * D + 3, dtype=F64).to(dtype)[:, 3 : 3 + H * D].view(9, H, D)
    cu = torch.tensor([0, 4, 4, 9])
    assert torch.equal(ops.rope(x, None, inv, 0, rot, False, "thd", cu),
                       ops.rope(x.contiguous(), None, inv, 0, rot, False, "thd", cu))


def test_layouts_and_blocks_agree_bitwise():
    # bhsd, bshd and thd rotate each row with the same table entries and arithmetic; a block of
    # positions (decoding with an offset) gives the full call's rows.
    B, H, S, D, rot = 2, 4, 300, 72, 66
    x = torch.randn(B, H, S, D)
    inv = ops.rope_inv_freq(rot)
    for interleaved in (False, True):
        full = ops.rope(x, None, inv, 0, rot, interleaved, "bhsd")
        bshd = ops.rope(x.transpose(1, 2).contiguous(), None, inv, 0, rot, interleaved, "bshd")
        assert torch.equal(full, bshd.transpose(1, 2))
        packed = x.transpose(1, 2).reshape(B * S, H, D)
        cu = torch.tensor([0, S, 2 * S])
        thd = ops.rope(packed, None, inv, 0, rot, interleaved, "thd", cu)
        assert torch.equal(thd.view(B, S, H, D).transpose(1, 2), full)
        part = ops.rope(x[:, :, 137:], None, inv, 137, rot, interleaved, "bhsd")
        assert torch.equal(part, full[:, :, 137:])
        pos = torch.arange(S).expand(B, S).contiguous()
        assert torch.equal(ops.rope(x, pos, inv, 0, rot, interleaved, "bhsd"), full)


def test_thread_count_does_not_change_bits():
    x = torch.randn(3, 5, 1000, 50)
    inv = ops.rope_inv_freq(46)
    cos = torch.randn(3, 1000, 46)
    sin = torch.randn(3, 1000, 46)
    g = torch.randn_like(x)
    old = torch.get_num_threads()
    outs = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            outs.append((
                ops.rope(x, None, inv),
                torch.ops.posenc.rope_backward(x, None, inv, 0, None, True, "bhsd"),
                ops.apply_rotary_pos_emb(x, cos, sin, False, "bhsd"),
                *torch.ops.posenc.apply_rotary_pos_emb_backward(g, x, cos, sin, False, "bhsd"),
                *torch.ops.posenc.apply_rotary_pos_emb_backward(g, x, cos[0], sin[0], True, "bhsd"),
            ))
    finally:
        torch.set_num_threads(old)
    for a, b in zip(*outs):
        assert torch.equal(a, b)


# ---- apply_rotary_pos_emb (caller-given tables) -------------------------------------------------


def ref_apply_bhsd(x, cos, sin, interleaved):
    """HF: x * cos + rotate(x) * sin on the first R dims, rest unchanged (fp64)."""
    rot = cos.shape[-1]
    c = (cos[:, None] if cos.dim() == 3 else cos).to(F64)
    s = (sin[:, None] if sin.dim() == 3 else sin).to(F64)
    xb = x.to(F64)
    r = xb[..., :rot]
    if interleaved:
        rr = torch.stack([-r[..., 1::2], r[..., 0::2]], -1).flatten(-2)
    else:
        rr = torch.cat([-r[..., rot // 2 :], r[..., : rot // 2]], -1)
    return torch.cat([r * c + rr * s, xb[..., rot:]], -1)


@pytest.mark.parametrize("layout", ["bhsd", "bshd"])
@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("batched", [False, True])
@pytest.mark.parametrize("D,rot", [(3, 2), (17, 16), (35, 34), (67, 64)])
def test_apply_odd_widths_and_grads(D, rot, batched, interleaved, layout):
    B, H, S = 2, 3, 6
    x = layout_x(B, H, S, D, layout).requires_grad_()
    tshape = (B, S, rot) if batched else (S, rot)
    # independent cos and sin per element (not HF's repeated halves): every index is checked
    cos = torch.randn(tshape, requires_grad=True)
    sin = torch.randn(tshape, requires_grad=True)
    out = ops.apply_rotary_pos_emb(x, cos, sin, interleaved, layout)
    want = ref_apply_bhsd(to_bhsd(x.detach(), layout), cos.detach(), sin.detach(), interleaved)
    torch.testing.assert_close(to_bhsd(out, layout).double(), want, **tol(torch.float32))
    g = torch.randn_like(out)
    gx, gc, gs = torch.autograd.grad(out, (x, cos, sin), g)
    x64 = x.detach().double().requires_grad_()
    c64 = cos.detach().double().requires_grad_()
    s64 = sin.detach().double().requires_grad_()
    ref = to_bhsd(ref_apply_bhsd(to_bhsd(x64, layout), c64, s64, interleaved), layout)
    wx, wc, ws = torch.autograd.grad(ref, (x64, c64, s64), g.double())
    torch.testing.assert_close(gx.double(), wx, **tol(torch.float32))
    torch.testing.assert_close(gc.double(), wc, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gs.double(), ws, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_apply_narrow_dtypes_round_fp32_math(dtype):
    B, H, S, D, rot = 2, 2, 5, 40, 34
    x = torch.randn(B, H, S, D).to(dtype)
    cos = torch.randn(S, rot).to(dtype)
    sin = torch.randn(S, rot).to(dtype)
    for interleaved in (False, True):
        out = ops.apply_rotary_pos_emb(x, cos, sin, interleaved, "bhsd")
        want = ops.apply_rotary_pos_emb(x.float(), cos.float(), sin.float(), interleaved, "bhsd")
        assert torch.equal(out, want.to(dtype))
        torch.testing.assert_close(out.double(), ref_apply_bhsd(x, cos, sin, interleaved),
                                   **tol(dtype))


def test_apply_strided_tables_and_input():
    B, H, S, D, rot = 2, 3, 7, 36, 34
    x = torch.randn(B, S, D, H).transpose(-1, -2)  # bshd view, inner stride H
    big = torch.randn(S, 2 * rot)
    cos, sin = big[:, ::2], big[:, 1::2]  # inner stride 2
    g = torch.randn(B, S, H, D)
    for interleaved in (False, True):
        want = ops.apply_rotary_pos_emb(x.contiguous(), cos.contiguous(), sin.contiguous(),
                                        interleaved, "bshd")
        assert torch.equal(ops.apply_rotary_pos_emb(x, cos, sin, interleaved, "bshd"), want)
        a = torch.ops.posenc.apply_rotary_pos_emb_backward(g, x, cos, sin, interleaved, "bshd")
        b = torch.ops.posenc.apply_rotary_pos_emb_backward(
            g, x.contiguous(), cos.contiguous(), sin.contiguous(), interleaved, "bshd")
        for u, v in zip(a, b):
            assert torch.equal(u, v)


# ---- the portable and AVX2 copies ---------------------------------------------------------------

_CAPABILITY_SCRIPT = r"""
import sys
sys.path.insert(0, sys.argv[1])
import torch
import posenc
from posenc import ops
torch.manual_seed(0)
res = {}
for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
    for D, rot in ((17, 16), (35, 34), (67, 64), (128, 128), (40, 6)):
        x = torch.randn(2, 3, 9, D).to(dtype)
        cos = torch.randn(9, rot).to(dtype)
        sin = torch.randn(9, rot).to(dtype)
        for il in (False, True):
            inv = ops.rope_inv_freq(rot)
            zeta = torch.linspace(0.5, 1.0, rot // 2)
            res[f"{dtype}-{D}-{rot}-{il}"] = [
                ops.rope(x, None, inv, 7, rot, il),
                ops.rope(x.transpose(1, 2), None, inv, 7, rot, il, "bshd"),
                ops.rope(x, None, ops.rope_inv_freq(rot, dtype=torch.float64), 10**6, rot, il),
                torch.ops.posenc.rope_backward(x, None, inv, 7, rot, il, "bhsd", None, 0.5,
                                               zeta, 64.0, False, 3),
                ops.apply_rotary_pos_emb(x, cos, sin, il, "bhsd"),
                *torch.ops.posenc.apply_rotary_pos_emb_backward(x, x, cos, sin, il, "bhsd"),
            ]
torch.save(res, sys.argv[2])
"""


def test_portable_and_avx2_copies_agree_bitwise(tmp_path):
    # No FMA contraction and the same per-element arithmetic in lanes and tails: the portable
    # copy (forced by the environment) must equal the default choice bit for bit.
    python_dir = str(Path(__file__).resolve().parents[2] / "python")
    outs = {}
    for cap in ("default", "auto"):
        env = dict(os.environ)
        env.pop("POSENC_CPU_CAPABILITY", None)
        if cap == "default":
            env["POSENC_CPU_CAPABILITY"] = "default"
        path = tmp_path / f"{cap}.pt"
        subprocess.run([sys.executable, "-c", _CAPABILITY_SCRIPT, python_dir, str(path)],
                       env=env, check=True)
        outs[cap] = torch.load(path)
    assert outs["default"].keys() == outs["auto"].keys()
    for name in outs["default"]:
        for a, b in zip(outs["default"][name], outs["auto"][name]):
            assert torch.equal(a, b), name
