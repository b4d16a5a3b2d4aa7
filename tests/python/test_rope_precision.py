"""RoPE precision modes: reference (float32 inv_freq, Hugging Face's float32 angle) and exact
(float64 inv_freq, fp64 angle reduced mod 2 pi) against an fp64 reference from the paper
(Su et al. 2021, eqs. 15 and 34)."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_rope import F64, f32_angles, make_x, ref_rope, rope_samples

from posenc import ops
from posenc.rope_config import ROPE_TYPES, RopeConfig, xpos_zeta

HEAD_DIM = 128
BASE = 1e6


def paper_inv_freq64(rot, base):
    # eq. 15 in fp64, written independently of the op: theta_i = base^(-2i/d).
    return torch.tensor([base ** (-2.0 * i / rot) for i in range(rot // 2)], dtype=F64)


def ref_exact(x, pos, rot, base, interleaved=False, layout="bhsd", factor=1.0):
    inv = paper_inv_freq64(rot, base)
    B, S = pos.shape
    # fp64 angle; cos/sin of large fp64 angles are accurate to ~1e-16 * angle (< 1e-9 here).
    return ref_rope(x, pos, lambda p: p.to(F64)[..., None] * inv, rot, interleaved, layout) * factor


def rel_err(out, ref):
    return ((out.to(F64) - ref).abs().max() / ref.abs().max()).item()


def far_positions(S, B=2, top=10**6):
    # Positions spread up to 1e6, including the end points and values near multiples of 2 pi.
    g = torch.Generator().manual_seed(1)
    pos = torch.randint(0, top + 1, (B, S), generator=g)
    pos[0, 0], pos[0, -1], pos[-1, -1] = top, 0, top - 1
    return pos


@pytest.mark.parametrize("layout", ["bhsd", "bshd"])
@pytest.mark.parametrize("interleaved", [False, True])
def test_exact_fp32_within_1e6_of_fp64_at_1e6(layout, interleaved):
    B, H, S = 2, 3, 64
    pos = far_positions(S, B)
    x = make_x(B, H, S, HEAD_DIM, layout, torch.float32)
    inv64 = ops.rope_inv_freq(HEAD_DIM, BASE, dtype=F64)
    out = ops.rope(x, pos, inv64, interleaved=interleaved, layout=layout)
    assert out.dtype == torch.float32
    ref = ref_exact(x, pos, HEAD_DIM, BASE, interleaved, layout)
    assert rel_err(out, ref) <= 1e-6
    # elementwise too: no element is off by more than 1e-6 of the largest magnitude
    torch.testing.assert_close(out.to(F64), ref, rtol=0, atol=1e-6 * ref.abs().max().item())


def test_reference_mode_drifts_at_1e6():
    # The check above can fail: float32 angles (the reference mode, as transformers) at
    # positions ~1e6 are off by up to ~0.03 rad, far beyond 1e-6.
    B, H, S = 2, 3, 64
    pos = far_positions(S, B)
    x = make_x(B, H, S, HEAD_DIM, "bhsd", torch.float32)
    out = ops.rope(x, pos, ops.rope_inv_freq(HEAD_DIM, BASE), layout="bhsd")
    assert rel_err(out, ref_exact(x, pos, HEAD_DIM, BASE)) > 1e-3


def test_reference_mode_is_hf_float32_angle():
    # Reference precision rounds where Hugging Face rounds: float32 angle = float(p) * inv_freq.
    B, H, S = 1, 2, 32
    pos = far_positions(S, B)
    x = make_x(B, H, S, HEAD_DIM, "bhsd", torch.float64)
    inv32 = ops.rope_inv_freq(HEAD_DIM, BASE)
    out = ops.rope(x, pos, inv32)
    torch.testing.assert_close(out, ref_rope(x, pos, f32_angles(inv32), HEAD_DIM, False, "bhsd"),
                               rtol=1e-12, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(
    p=st.integers(min_value=0, max_value=2**40),
    rot=st.sampled_from([2, 16, 64, 128]),
    base=st.sampled_from([1e4, 5e5, 1e6]),
)
def test_exact_any_position(p, rot, base):
    # The reference sees the same fp64 product p * inv_freq; the fma-based reduction mod 2 pi
    # loses nothing, so fp32 cos/sin stay within a few 1e-7 at any position up to 2^40.
    pos = torch.tensor([[p, p + 1]])
    x = torch.randn(1, 1, 2, rot, generator=torch.Generator().manual_seed(p % 1000))
    out = ops.rope(x, pos, ops.rope_inv_freq(rot, base, dtype=F64))
    ref = ref_exact(x, pos, rot, base)
    assert (out.to(F64) - ref).abs().max().item() <= 2e-6 * max(ref.abs().max().item(), 1.0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_exact_other_dtypes(dtype):
    B, H, S = 1, 2, 16
    pos = far_positions(S, B)
    x = make_x(B, H, S, HEAD_DIM, "bhsd", dtype)
    out = ops.rope(x, pos, ops.rope_inv_freq(HEAD_DIM, BASE, dtype=F64))
    assert out.dtype == dtype
    ref = ref_exact(x, pos, HEAD_DIM, BASE)
    bound = {torch.float64: 1e-10, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]
    assert rel_err(out, ref) <= bound


def test_exact_magnitudes_thd_and_backward():
    # The exact angle goes through the same kernel as every other option: attention factor,
    # xPos, packed thd, and the backward (rotation by the negative fp64 angle).
    T, H, D = 10, 2, 16
    inv64 = ops.rope_inv_freq(D, 1e4, dtype=F64)
    zeta = xpos_zeta(D)
    x = torch.randn(T, H, D, dtype=F64, requires_grad=True)
    cu = torch.tensor([0, 4, 10])
    kw = dict(layout="thd", cu_seqlens=cu, attention_factor=1.25, xpos_zeta=zeta, offset=999_000)
    out = ops.rope(x, None, inv64, **kw)
    pos = torch.cat([torch.arange(4), torch.arange(6)]) + 999_000
    ang = pos.to(F64)[:, None] * paper_inv_freq64(D, 1e4)
    mag = 1.25 * zeta.to(F64) ** ((pos.to(F64) - 0) / 512.0)[:, None]
    a, b = x[..., : D // 2], x[..., D // 2 :]
    c, s = (ang.cos() * mag)[:, None], (ang.sin() * mag)[:, None]
    ref = torch.cat([a * c - b * s, b * c + a * s], -1)
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-9)
    g = torch.randn_like(out)
    (gx,) = torch.autograd.grad(out, x, g)
    (gref,) = torch.autograd.grad(ref, x, g)
    torch.testing.assert_close(gx, gref, rtol=1e-9, atol=1e-9)
    assert torch.autograd.gradcheck(
        lambda t: ops.rope(t, None, inv64, **kw), (x.detach().requires_grad_(),)
    )


def test_exact_opcheck():
    for args in list(rope_samples())[:4]:
        a = list(args)
        a[2] = a[2].double()  # inv_freq -> exact precision
        torch.library.opcheck(torch.ops.posenc.rope.default, tuple(a))


def test_exact_compile_no_graph_break():
    inv64 = ops.rope_inv_freq(16, dtype=F64)

    def f(x, pos):
        return ops.rope(x, pos, inv64)

    x = torch.randn(1, 2, 8, 16)
    pos = torch.arange(8) + 123456
    torch.testing.assert_close(torch.compile(f, fullgraph=True)(x, pos), f(x, pos), rtol=0, atol=0)


def test_rope_inv_freq_dtypes_and_errors():
    f32 = ops.rope_inv_freq(64, 1e6)
    f64 = ops.rope_inv_freq(64, 1e6, dtype=F64)
    assert f32.dtype == torch.float32 and f64.dtype == F64
    torch.testing.assert_close(f64, paper_inv_freq64(64, 1e6), rtol=1e-15, atol=0)
    assert torch.equal(f64.float(), f32)
    with pytest.raises(RuntimeError, match=r"posenc\.rope_inv_freq: argument 'dtype' must be torch\.float32"):
        ops.rope_inv_freq(64, dtype=torch.float16)
    for base in (math.inf, math.nan, 1.0):
        with pytest.raises(RuntimeError, match=r"posenc\.rope_inv_freq: argument 'base' must be finite and > 1"):
            ops.rope_inv_freq(64, base)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_inv_freq_rejected(bad):
    inv = ops.rope_inv_freq(8)
    inv[1] = bad
    x = torch.randn(1, 1, 3, 8)
    with pytest.raises(RuntimeError, match=r"posenc\.rope: argument 'inv_freq' must be finite, but got inv_freq\[1\]"):
        ops.rope(x, None, inv)
    with pytest.raises(RuntimeError, match=r"posenc\.rope: argument 'inv_freq' must be finite"):
        ops.rope(x, None, inv.double())


def test_inv_freq_dtype_error():
    x = torch.randn(1, 1, 3, 8)
    with pytest.raises(RuntimeError, match=r"posenc\.rope: argument 'inv_freq' must have dtype float32 \(reference precision\) or float64"):
        ops.rope(x, None, ops.rope_inv_freq(8).half())


def scaling_configs():
    d = 64
    yield RopeConfig(d, "default", 1e6)
    yield RopeConfig(d, "linear", 1e4, factor=4.0)
    yield RopeConfig(d, "ntk", 1e4, factor=8.0)
    yield RopeConfig(d, "dynamic", 1e4, factor=2.0, max_position_embeddings=128)
    yield RopeConfig(d, "yarn", 1e4, factor=16.0, original_max_position_embeddings=256)
    yield RopeConfig(d, "llama3", 5e5, factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                     original_max_position_embeddings=8192)
    f = [1.0 + 0.1 * i for i in range(d // 2)]
    yield RopeConfig(d, "longrope", 1e4, factor=4.0, original_max_position_embeddings=64,
                     short_factor=f, long_factor=[2 * v for v in f])
    yield RopeConfig(d, "xpos", 1e4)


@pytest.mark.parametrize("cfg", list(scaling_configs()), ids=lambda c: c.rope_type)
def test_scaling_exact_tables(cfg):
    # The fp64 table is the same formula in double: within fp32 rounding of the reference one,
    # and much closer than that to an fp64 evaluation of the paper's formula where we have one.
    assert {cfg.rope_type for cfg in scaling_configs()} == set(ROPE_TYPES)
    for seq_len in (None, 100, 1000):
        inv32, af32 = cfg.compute(seq_len=seq_len)
        inv64, af64 = cfg.compute(seq_len=seq_len, dtype=F64)
        assert inv64.dtype == F64 and inv32.dtype == torch.float32
        assert af64 == af32
        torch.testing.assert_close(inv64, inv32.to(F64), rtol=1e-6, atol=0)
    if cfg.rope_type in ("default", "xpos"):
        torch.testing.assert_close(cfg.compute(dtype=F64)[0], paper_inv_freq64(64, cfg.rope_theta),
                                   rtol=1e-15, atol=0)
    if cfg.rope_type == "linear":
        torch.testing.assert_close(cfg.compute(dtype=F64)[0], paper_inv_freq64(64, 1e4) / 4.0,
                                   rtol=1e-15, atol=0)
    with pytest.raises(RuntimeError, match=r"posenc\.rope_scaling_inv_freq: argument 'dtype'"):
        cfg.compute(dtype=torch.bfloat16)
