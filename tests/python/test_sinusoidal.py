"""Sinusoidal table (Vaswani et al. 2017 §3.5; tensor2tensor get_timing_signal_1d) against an
fp64 reference written from the formulas."""
import math

import pytest
import torch
import torch._dynamo.testing
from conftest import FLOAT_DTYPES, TOL

from posenc import ops


def ref_table(positions, dim, base=10000.0, interleaved=True):
    p = torch.as_tensor(positions, dtype=torch.float64)
    half = dim // 2
    i = torch.arange(half, dtype=torch.float64)
    if interleaved:
        # PE(p, 2i) = sin(p / base^(2i/dim)), PE(p, 2i+1) = cos(p / base^(2i/dim))
        angle = p[:, None] / base ** (2 * i / dim)[None]
        return torch.stack([angle.sin(), angle.cos()], dim=-1).reshape(len(p), dim)
    inc = math.log(base) / max(half - 1, 1)
    angle = p[:, None] * torch.exp(-inc * i)[None]
    return torch.cat([angle.sin(), angle.cos()], dim=1)


def test_C04_variants():
    paper = ops.sinusoidal_table(1, 4, offset=1, dtype=torch.float64)[0]
    torch.testing.assert_close(
        paper, torch.tensor([0.8414710, 0.5403023, 0.0099998, 0.9999500], dtype=torch.float64),
        rtol=0, atol=1e-7,
    )
    t2t = ops.sinusoidal_table(1, 4, offset=1, interleaved=False, dtype=torch.float64)[0]
    torch.testing.assert_close(
        t2t, torch.tensor([0.8414710, 0.0001, 0.5403023, 0.99999999], dtype=torch.float64),
        rtol=0, atol=5e-8,
    )


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("interleaved", [True, False])
@pytest.mark.parametrize("dim,base,offset", [(2, 10000.0, 0), (4, 10000.0, 3), (6, 100.0, -5), (64, 10000.0, 1000), (130, 1e6, -40)])
def test_matches_reference(dtype, interleaved, dim, base, offset):
    got = ops.sinusoidal_table(37, dim, base, offset, interleaved, dtype)
    assert got.dtype == dtype and got.shape == (37, dim) and got.is_contiguous()
    want = ref_table(range(offset, offset + 37), dim, base, interleaved)
    torch.testing.assert_close(got.double(), want, **TOL[dtype])


def round_nearest_even(x, dtype):
    """fp64 -> dtype with one correct rounding, computed on the fp64 grid of the target format
    (torch's own double -> half conversion goes through float and can round twice)."""
    fi = torch.finfo(dtype)
    mant = {torch.float16: 10, torch.bfloat16: 7, torch.float32: 23}[dtype]
    min_exp = int(math.log2(fi.smallest_normal))
    e = torch.floor(torch.log2(x.abs())).clamp(min=min_exp)
    ulp = torch.pow(2.0, e - mant)
    return torch.round(x / ulp) * ulp  # torch.round is round-half-to-even


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_rounded_once_from_fp64(dtype):
    # Angles in fp64, one rounding to the output dtype. fp32 angles at position ~5000 would be
    # off by ~3e-4; rounding fp64 -> fp32 -> fp16 would differ in a few ties.
    pos = torch.arange(4000, 5000)
    got = torch.ops.posenc.sinusoidal_table(pos, 32, 10000.0, True, dtype)
    want = round_nearest_even(ref_table(pos, 32), dtype)
    assert torch.equal(got.double(), want)


def test_wrapper_negative_offset():
    got = ops.sinusoidal_table(7, 10, offset=-3, dtype=torch.float64)
    torch.testing.assert_close(got, ref_table(range(-3, 4), 10))
    # sin is odd and cos even in the position: row -p mirrors row p
    torch.testing.assert_close(got[0, 0::2], -got[6, 0::2])
    torch.testing.assert_close(got[0, 1::2], got[6, 1::2])
    # Transformer-XL style: distances c..-c with a negative offset and reversed order equal
    # the table at the explicit positions
    pos = torch.arange(5, -6, -1)
    torch.testing.assert_close(
        torch.ops.posenc.sinusoidal_table(pos, 10, 10000.0, True, torch.float64),
        ops.sinusoidal_table(11, 10, offset=-5, dtype=torch.float64).flip(0),
        rtol=0, atol=0,
    )


def test_default_dtype_and_no_grad():
    t = ops.sinusoidal_table(3, 4)
    assert t.dtype == torch.float32 and t.device.type == "cpu" and not t.requires_grad


@pytest.mark.parametrize("interleaved", [True, False])
def test_C09_offset_rows_equal_full(interleaved):
    full = ops.sinusoidal_table(20, 16, interleaved=interleaved)
    for p in (0, 5, 19):
        torch.testing.assert_close(
            ops.sinusoidal_table(1, 16, offset=p, interleaved=interleaved)[0], full[p], rtol=0, atol=0
        )
    torch.testing.assert_close(
        ops.sinusoidal_table(3, 16, offset=5, interleaved=interleaved), full[5:8], rtol=0, atol=0
    )


def test_C07_non_contiguous_positions():
    buf = torch.arange(24).reshape(6, 4)
    view = buf[:, 1]
    assert not view.is_contiguous()
    torch.testing.assert_close(
        torch.ops.posenc.sinusoidal_table(view, 8, 10000.0, False, None),
        torch.ops.posenc.sinusoidal_table(view.contiguous(), 8, 10000.0, False, None),
        rtol=0, atol=0,
    )


@pytest.mark.parametrize("n,dim", [(0, 4), (1, 2), (1, 4), (0, 2)])
def test_C06_empty_and_unit_sizes(n, dim):
    got = ops.sinusoidal_table(n, dim, offset=3)
    assert got.shape == (n, dim)
    torch.testing.assert_close(got.double(), ref_table(range(3, 3 + n), dim), **TOL[torch.float32])


SAMPLES = [
    (torch.arange(5), 8, 10000.0, True, None),
    (torch.arange(-3, 4), 6, 100.0, False, torch.float64),
    (torch.arange(10)[::3], 4, 10000.0, True, torch.float16),
    (torch.arange(0), 4, 10000.0, False, torch.bfloat16),
]


@pytest.mark.parametrize("args", SAMPLES)
def test_opcheck(args):
    # positions are int64, so there is no requires_grad sample to give
    torch.library.opcheck(torch.ops.posenc.sinusoidal_table.default, args)


def test_C16_compile_dynamic_no_recompile():
    torch._dynamo.reset()
    counter = torch._dynamo.testing.CompileCounter()
    f = torch.compile(lambda n, off: ops.sinusoidal_table(n, 16, offset=off), backend=counter, fullgraph=True, dynamic=True)
    for n, off in ((5, 0), (7, 2), (11, -4)):
        torch.testing.assert_close(f(n, off), ops.sinusoidal_table(n, 16, offset=off), rtol=0, atol=0)
    assert counter.frame_count == 1


def test_compile_inductor():
    f = torch.compile(lambda p: torch.ops.posenc.sinusoidal_table(p, 8, 10000.0, False, None) * 2, fullgraph=True)
    p = torch.arange(6)
    torch.testing.assert_close(f(p), torch.ops.posenc.sinusoidal_table(p, 8, 10000.0, False, None) * 2)


def test_script():
    fn = torch.jit.script(ops.sinusoidal_table)
    torch.testing.assert_close(
        fn(5, 8, 10000.0, -2, False, torch.float64),
        ops.sinusoidal_table(5, 8, 10000.0, -2, False, torch.float64),
        rtol=0, atol=0,
    )


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: ops.sinusoidal_table(3, 5), r"posenc\.sinusoidal_table: argument 'dim' must be even and > 0, but got 5"),
        (lambda: ops.sinusoidal_table(3, 0), r"argument 'dim' must be even and > 0, but got 0"),
        (lambda: ops.sinusoidal_table(-1, 4), r"posenc\.sinusoidal_table: argument 'num_positions' must be >= 0, but got -1"),
        (lambda: ops.sinusoidal_table(3, 4, base=0.0), r"argument 'base' must be finite and > 0, but got 0"),
        (lambda: ops.sinusoidal_table(3, 4, dtype=torch.int32), r"argument 'dtype' must be float16, bfloat16, float32 or float64, but got Int"),
        (lambda: torch.ops.posenc.sinusoidal_table(torch.arange(3.0), 4), r"argument 'positions' must have dtype int64 or int32, but got dtype Float"),
        (lambda: torch.ops.posenc.sinusoidal_table(torch.zeros(2, 2, dtype=torch.long), 4), r"argument 'positions' must be a 1-D tensor of shape \(N,\), but got a 2-D tensor"),
    ],
)
def test_bad_inputs(call, match):
    with pytest.raises(RuntimeError, match=match):
        call()


def test_bad_inputs_fake_tensor():
    # the Meta kernel raises the same error under FakeTensor
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        p = torch.arange(3)
        with pytest.raises(RuntimeError, match=r"posenc\.sinusoidal_table: argument 'dim' must be even"):
            torch.ops.posenc.sinusoidal_table(p, 3)
