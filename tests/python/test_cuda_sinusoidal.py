"""Sinusoidal table on CUDA: against the CPU kernel and the fp64 reference of test_sinusoidal.
The table has no differentiable input, so there is no backward to test."""
import pytest
import torch
from conftest import FLOAT_DTYPES, TOL
from test_sinusoidal import ref_table, round_nearest_even

from posenc import ops

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

DEV = "cuda"


def test_C04_variants():
    paper = ops.sinusoidal_table(1, 4, offset=1, dtype=torch.float64, device=DEV)[0]
    assert paper.device.type == "cuda"
    want = torch.tensor([0.8414710, 0.5403023, 0.0099998, 0.9999500], dtype=torch.float64)
    torch.testing.assert_close(paper.cpu(), want, rtol=0, atol=1e-7)
    t2t = ops.sinusoidal_table(1, 4, offset=1, interleaved=False, dtype=torch.float64, device=DEV)[0]
    want = torch.tensor([0.8414710, 0.0001, 0.5403023, 0.99999999], dtype=torch.float64)
    torch.testing.assert_close(t2t.cpu(), want, rtol=0, atol=5e-8)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("interleaved", [True, False])
@pytest.mark.parametrize("dim,base,offset", [(2, 10000.0, 0), (4, 10000.0, 3), (6, 100.0, -5), (64, 10000.0, 1000), (130, 1e6, -40), (1024, 10000.0, 7)])
def test_matches_cpu_and_reference(dtype, interleaved, dim, base, offset):
    got = ops.sinusoidal_table(37, dim, base, offset, interleaved, dtype, device=DEV)
    assert got.device.type == "cuda" and got.dtype == dtype
    assert got.shape == (37, dim) and got.is_contiguous()
    cpu = ops.sinusoidal_table(37, dim, base, offset, interleaved, dtype)
    if dtype == torch.float64:
        # the same fp64 angles (host-computed frequencies); CUDA's sin/cos are within 2 ulp
        torch.testing.assert_close(got.cpu(), cpu, rtol=0, atol=1e-15)
    else:
        # rounded once from fp64: equal to the CPU's rounding
        assert torch.equal(got.cpu(), cpu)
    want = ref_table(range(offset, offset + 37), dim, base, interleaved)
    torch.testing.assert_close(got.cpu().double(), want, **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_rounded_once_from_fp64(dtype):
    pos = torch.arange(4000, 5000)
    got = torch.ops.posenc.sinusoidal_table(pos.to(DEV), 32, 10000.0, True, dtype)
    assert torch.equal(got.cpu().double(), round_nearest_even(ref_table(pos, 32), dtype))


def test_explicit_positions_negative_and_reversed():
    pos = torch.tensor([5, -3, 0, 70000, -(2**40), 2**40, 12])
    for dtype in (torch.float64, torch.float32):
        got = torch.ops.posenc.sinusoidal_table(pos.to(DEV), 10, 10000.0, True, dtype)
        want = torch.ops.posenc.sinusoidal_table(pos, 10, 10000.0, True, dtype)
        torch.testing.assert_close(got.cpu(), want, rtol=0, atol=1e-15 if dtype == torch.float64 else 0)


def test_C07_non_contiguous_positions():
    view = torch.arange(24, device=DEV).reshape(6, 4)[:, 1]
    assert not view.is_contiguous()
    got = torch.ops.posenc.sinusoidal_table(view, 8, 10000.0, False, None)
    assert torch.equal(got, torch.ops.posenc.sinusoidal_table(view.contiguous(), 8, 10000.0, False, None))


@pytest.mark.parametrize("interleaved", [True, False])
def test_C09_offset_rows_equal_full(interleaved):
    full = ops.sinusoidal_table(20, 16, interleaved=interleaved, device=DEV)
    for p in (0, 5, 19):
        assert torch.equal(ops.sinusoidal_table(1, 16, offset=p, interleaved=interleaved, device=DEV)[0], full[p])
    assert torch.equal(ops.sinusoidal_table(3, 16, offset=5, interleaved=interleaved, device=DEV), full[5:8])


@pytest.mark.parametrize("n,dim", [(0, 4), (1, 2), (1, 4), (0, 2)])
def test_C06_empty_and_unit_sizes(n, dim):
    got = ops.sinusoidal_table(n, dim, offset=3, device=DEV)
    assert got.shape == (n, dim) and got.device.type == "cuda"
    assert torch.equal(got.cpu(), ops.sinusoidal_table(n, dim, offset=3))


def test_long_table():
    # 600000 rows: more rows than one launch of capped blocks covers (grid-stride loop)
    got = ops.sinusoidal_table(600000, 2, dtype=torch.float32, device=DEV)
    assert torch.equal(got.cpu(), ops.sinusoidal_table(600000, 2, dtype=torch.float32))


def test_default_dtype_and_no_grad():
    t = ops.sinusoidal_table(3, 4, device=DEV)
    assert t.dtype == torch.float32 and t.device.type == "cuda" and not t.requires_grad


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: ops.sinusoidal_table(3, 5, device=DEV), r"posenc\.sinusoidal_table: argument 'dim' must be even and > 0, but got 5"),
        (lambda: ops.sinusoidal_table(3, 4, base=0.0, device=DEV), r"argument 'base' must be finite and > 0, but got 0"),
        (lambda: ops.sinusoidal_table(3, 4, dtype=torch.int32, device=DEV), r"argument 'dtype' must be float16, bfloat16, float32 or float64, but got Int"),
        (lambda: torch.ops.posenc.sinusoidal_table(torch.arange(3.0, device=DEV), 4), r"argument 'positions' must have dtype int64 or int32, but got dtype Float"),
        (lambda: torch.ops.posenc.sinusoidal_table(torch.zeros(2, 2, dtype=torch.long, device=DEV), 4), r"argument 'positions' must be a 1-D tensor of shape \(N,\), but got a 2-D tensor"),
        (lambda: ops.sinusoidal_table(2**62, 64, device=DEV), r"posenc\.sinusoidal_table: argument 'num_positions' is too large: the output's size in bytes must fit in int64, but got an output of shape \[4611686018427387904, 64\]"),
        (lambda: torch.ops.posenc.sinusoidal_table(torch.arange(3, device=DEV), 2**62), r"posenc\.sinusoidal_table: argument 'dim' is too large: .* shape \[3, 4611686018427387904\] and dtype Float"),
    ],
)
def test_bad_inputs_raise_and_context_survives(call, match):
    with pytest.raises(RuntimeError, match=match):
        call()
    torch.cuda.synchronize()
    assert torch.equal(ops.sinusoidal_table(3, 4, device=DEV).cpu(), ops.sinusoidal_table(3, 4))


SAMPLES = [
    lambda: (torch.arange(5, device=DEV), 8, 10000.0, True, None),
    lambda: (torch.arange(-3, 4, device=DEV), 6, 100.0, False, torch.float64),
    lambda: (torch.arange(10, device=DEV)[::3], 4, 10000.0, True, torch.float16),
]


@pytest.mark.parametrize("make", SAMPLES)
def test_opcheck(make):
    torch.library.opcheck(torch.ops.posenc.sinusoidal_table.default, make())
