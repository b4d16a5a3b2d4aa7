"""T5 relative bias on CUDA: against the CPU kernel and against the Hugging Face-formula
reference of test_t5 (fp32 log term), forward and backward, every dtype."""
import pytest
import torch
from conftest import FLOAT_DTYPES, TOL
from test_t5 import hf_bucket, ref_bias

from posenc import ops

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

DEV = "cuda"
I64 = torch.iinfo(torch.int64)


def grad_tol(dtype, scale):
    # gradients are sums of many upstream values: compare relative to their magnitude
    tol = TOL[dtype]
    return dict(rtol=tol["rtol"], atol=tol["atol"] * max(1.0, scale))


def test_C13_buckets():
    d = torch.tensor([-1000, -128, -64, -16, -9, -8, -7, -1, 0, 1, 8, 16, 64, 127, 1000], device=DEV)
    want = torch.tensor([15, 15, 14, 10, 8, 8, 7, 1, 0, 17, 24, 26, 30, 31, 31], device=DEV)
    assert torch.equal(ops.t5_relative_bucket(d, True, 32, 128), want)
    d = torch.tensor([-1000, -128, -100, -32, -16, -8, -1, 0, 1, 7, 1000, 10**9], device=DEV)
    want = torch.tensor([31, 31, 30, 21, 16, 8, 1, 0, 0, 0, 0, 0], device=DEV)
    assert torch.equal(ops.t5_relative_bucket(d, False, 32, 128), want)


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("num_buckets,max_distance", [(32, 128), (64, 256), (8, 16), (4, 3), (16, 10000), (320, 800)])
def test_buckets_match_cpu_and_hf(bidirectional, num_buckets, max_distance):
    # the device's logf must put every boundary where the host's does
    rp = torch.arange(-30000, 30000)
    extremes = torch.tensor([I64.min, I64.min + 1, -(2**62), -(2**40), 2**40, 2**62, I64.max])
    rp = torch.cat([rp, extremes, torch.randint(-(2**62), 2**62, (5000,))])
    got = ops.t5_relative_bucket(rp.to(DEV), bidirectional, num_buckets, max_distance)
    assert got.device.type == "cuda" and got.dtype == torch.long
    assert torch.equal(got.cpu(), ops.t5_relative_bucket(rp, bidirectional, num_buckets, max_distance))
    body = rp[:60000]
    assert torch.equal(got[:60000].cpu(), hf_bucket(body, bidirectional, num_buckets, max_distance))


@pytest.mark.parametrize(
    "num_buckets,max_distance,distance,want",
    [(10, 160, -10, 6), (9, 4096, -16, 5), (48, 81, -54, 39), (99, 169, -91, 73)],
)
def test_fp32_log_term_boundaries(num_buckets, max_distance, distance, want):
    rp = torch.tensor([distance], device=DEV)
    assert ops.t5_relative_bucket(rp, False, num_buckets, max_distance).item() == want


def test_bucket_shapes_non_contiguous_and_empty():
    rp = torch.arange(-60, 60, device=DEV).reshape(4, 5, 6).transpose(0, 2)
    assert not rp.is_contiguous()
    got = ops.t5_relative_bucket(rp)
    assert got.shape == rp.shape and got.is_contiguous()
    assert torch.equal(got.cpu(), ops.t5_relative_bucket(rp.cpu()))
    empty = ops.t5_relative_bucket(torch.empty(0, 4, dtype=torch.long, device=DEV))
    assert empty.shape == (0, 4) and empty.device.type == "cuda"


SHAPES = [  # heads, q_len, k_len, q_offset, k_offset
    (4, 7, 9, 0, 0),
    (3, 5, 200, 195, 0),
    (13, 130, 70, 0, 0),  # two head groups, the second partial; several row tiles
    (2, 1, 300, 299, 0),
    (5, 8, 4, 3, 7),
    (2, 6, 6, 0, 40),
    (1, 200, 333, -50, 17),
]


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_matches_cpu_and_reference(dtype, bidirectional, shape):
    h, q_len, k_len, q_off, k_off = shape
    table = torch.randn(32, h, dtype=dtype)
    got = ops.t5_bias(table.to(DEV), q_len, k_len, q_off, k_off, bidirectional, 128)
    assert got.device.type == "cuda" and got.dtype == dtype
    assert got.shape == (h, q_len, k_len) and got.is_contiguous()
    # a gather: bit-exact against both
    assert torch.equal(got.cpu(), ops.t5_bias(table, q_len, k_len, q_off, k_off, bidirectional, 128))
    assert torch.equal(got.cpu(), ref_bias(table, q_len, k_len, q_off, k_off, bidirectional, 128))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
def test_backward_matches_cpu_and_reference(dtype, bidirectional, shape):
    h, q_len, k_len, q_off, k_off = shape
    table = torch.randn(32, h, dtype=dtype)
    g = torch.randn(h, q_len, k_len, dtype=dtype)
    got = torch.ops.posenc.t5_bias_backward(g.to(DEV), table.to(DEV), q_len, k_len, q_off, k_off, bidirectional, 128)
    assert got.device.type == "cuda" and got.dtype == dtype and got.shape == (32, h)
    cpu = torch.ops.posenc.t5_bias_backward(g, table, q_len, k_len, q_off, k_off, bidirectional, 128)
    t64 = table.double().requires_grad_()
    (ref_bias(t64, q_len, k_len, q_off, k_off, bidirectional, 128) * g.double()).sum().backward()
    scale = t64.grad.abs().max().item()
    if dtype == torch.float64:
        torch.testing.assert_close(got.cpu(), cpu, rtol=1e-12, atol=1e-12)
    else:
        # both sum in fp64 and round once: equal up to that one rounding
        torch.testing.assert_close(got.cpu().double(), cpu.double(), rtol=torch.finfo(dtype).eps, atol=0)
    torch.testing.assert_close(got.cpu().double(), t64.grad, **grad_tol(dtype, scale))


@pytest.mark.parametrize("bidirectional", [True, False])
def test_autograd_matches_cpu(bidirectional):
    table = torch.randn(32, 4, dtype=torch.float64)
    g = torch.randn(4, 70, 90, dtype=torch.float64)
    grads = []
    for dev in ("cpu", DEV):
        t = table.to(dev).requires_grad_()
        (ops.t5_bias(t, 70, 90, 30, 0, bidirectional) * g.to(dev)).sum().backward()
        grads.append(t.grad.cpu())
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-12, atol=1e-12)


def test_gradcheck():
    table = torch.randn(8, 3, dtype=torch.float64, device=DEV, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: ops.t5_bias(t, 5, 9, 3, 0, True, 20), (table,))


def test_grad_non_contiguous_and_expanded():
    table = torch.randn(32, 3, device=DEV)
    g = torch.randn(40, 30, 3, device=DEV).permute(2, 1, 0)  # (3, 30, 40), keys strided
    assert not g.is_contiguous()
    args = (table, 30, 40, 5, 0, True, 128)
    got = torch.ops.posenc.t5_bias_backward(g, *args)
    assert torch.equal(got, torch.ops.posenc.t5_bias_backward(g.contiguous(), *args))
    # out.sum().backward() hands the kernel a stride-0 gradient
    ones = torch.ones(1, 1, 1, device=DEV).expand(3, 30, 40)
    assert torch.equal(torch.ops.posenc.t5_bias_backward(ones, *args),
                       torch.ops.posenc.t5_bias_backward(ones.contiguous(), *args))


def test_grad_other_dtype_is_rounded_to_table_dtype_first():
    table = torch.randn(32, 2, dtype=torch.float16)
    g = torch.randn(2, 9, 11, dtype=torch.float32)
    got = torch.ops.posenc.t5_bias_backward(g.to(DEV), table.to(DEV), 9, 11, 0, 0, True, 128)
    want = torch.ops.posenc.t5_bias_backward(g, table, 9, 11, 0, 0, True, 128)
    assert got.dtype == torch.float16
    torch.testing.assert_close(got.cpu(), want, rtol=torch.finfo(torch.float16).eps, atol=0)


def test_grad_half_accumulates_in_fp64():
    table = torch.zeros(4, 1, dtype=torch.float16, device=DEV, requires_grad=True)
    ops.t5_bias(table, 1, 5000, 10000, 0, False, 3).sum().backward()
    assert table.grad[:, 0].tolist() == [0.0, 0.0, 0.0, 5000.0]


@pytest.mark.parametrize("bidirectional", [True, False])
def test_deterministic_backward(bidirectional):
    table = torch.randn(32, 8, device=DEV, requires_grad=True)
    g = torch.randn(8, 300, 500, device=DEV)
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        runs = []
        for _ in range(2):
            table.grad = None
            (ops.t5_bias(table, 300, 500, 200, 0, bidirectional) * g).sum().backward()
            runs.append(table.grad.clone())
    finally:
        torch.use_deterministic_algorithms(prev)
    assert torch.equal(runs[0], runs[1])


@pytest.mark.parametrize("bidirectional", [True, False])
def test_C09_incremental_rows_equal_full(bidirectional):
    table = torch.randn(32, 3, device=DEV)
    full = ops.t5_bias(table, 40, 40, bidirectional=bidirectional)
    for p in (0, 1, 17, 39):
        row = ops.t5_bias(table, 1, p + 1, q_offset=p, bidirectional=bidirectional)
        assert torch.equal(row[:, 0], full[:, p, : p + 1])
    assert torch.equal(ops.t5_bias(table, 4, 10, 20, 30, bidirectional), full[:, 20:24, 30:40])


def test_C07_non_contiguous_table():
    view = torch.randn(3, 32, device=DEV).T
    assert not view.is_contiguous()
    assert torch.equal(ops.t5_bias(view, 5, 7, 2, 0), ops.t5_bias(view.contiguous(), 5, 7, 2, 0))


@pytest.mark.parametrize("h,q_len,k_len", [(0, 3, 3), (2, 0, 3), (2, 3, 0), (1, 1, 1), (2, 1, 5), (2, 5, 1)])
def test_C06_empty_and_unit_sizes(h, q_len, k_len):
    table = torch.randn(32, h)
    t = table.to(DEV).requires_grad_()
    out = ops.t5_bias(t, q_len, k_len, 2, 0)
    assert out.shape == (h, q_len, k_len) and out.device.type == "cuda"
    assert torch.equal(out.cpu(), ops.t5_bias(table, q_len, k_len, 2, 0))
    out.sum().backward()
    tc = table.clone().requires_grad_()
    ops.t5_bias(tc, q_len, k_len, 2, 0).sum().backward()
    assert torch.equal(t.grad.cpu(), tc.grad)


@pytest.mark.parametrize("q_len,k_len", [(70000, 3), (2, 70000)])
def test_long_sequence(q_len, k_len):
    table = torch.randn(32, 2)
    t = table.to(DEV).requires_grad_()
    out = ops.t5_bias(t, q_len, k_len, 0, 0, True)
    assert torch.equal(out.cpu(), ops.t5_bias(table, q_len, k_len, 0, 0, True))
    g = torch.randn(2, q_len, k_len)
    (out * g.to(DEV)).sum().backward()
    want = torch.ops.posenc.t5_bias_backward(g, table, q_len, k_len, 0, 0, True, 128)
    torch.testing.assert_close(t.grad.cpu(), want, rtol=1e-6, atol=1e-5)


def test_wide_heads():
    # 70000 heads: more units than gridDim would allow on y/z, walked by grid-stride loops
    table = torch.randn(32, 70000)
    t = table.to(DEV).requires_grad_()
    out = ops.t5_bias(t, 2, 3, 1, 0, False)
    assert torch.equal(out.cpu(), ops.t5_bias(table, 2, 3, 1, 0, False))
    g = torch.randn(70000, 2, 3)
    (out * g.to(DEV)).sum().backward()
    want = torch.ops.posenc.t5_bias_backward(g, table, 2, 3, 1, 0, False, 128)
    torch.testing.assert_close(t.grad.cpu(), want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: ops.t5_relative_bucket(torch.arange(3, dtype=torch.int32, device=DEV)), r"posenc\.t5_relative_bucket: argument 'relative_position' must have dtype Long, but got dtype Int"),
        (lambda: ops.t5_relative_bucket(torch.arange(3, device=DEV), True, 31), r"argument 'num_buckets' must be even and >= 4 when bidirectional .*, but got 31"),
        (lambda: ops.t5_bias(torch.randn(2, 4, device=DEV), 3, 3), r"posenc\.t5_bias: argument 'table' must have a number of rows \(num_buckets\) that is even and >= 4 .*, but got 2 rows"),
        (lambda: ops.t5_bias(torch.randn(32, 4, device=DEV), 3, 3, max_distance=4), r"argument 'max_distance' must be > max_exact = 8 .*, but got 4"),
        (lambda: ops.t5_bias(torch.randn(32, 4, device=DEV), -2, 3), r"posenc\.t5_bias: argument 'q_len' must be >= 0, but got -2"),
        (lambda: ops.t5_bias(torch.randn(32, 4, device=DEV), 3, 2**62), r"posenc\.t5_bias: argument 'k_len' is too large: the output's size in bytes must fit in int64, but got an output of shape \[4, 3, 4611686018427387904\] and dtype Float"),
        (lambda: torch.ops.posenc.t5_bias_backward(torch.randn(4, 3, 2, device=DEV), torch.randn(32, 4, device=DEV), 3, 3, 0, 0, True, 128), r"posenc\.t5_bias_backward: argument 'grad' must have shape \(num_heads, q_len, k_len\) = \[4, 3, 3\], but got shape \[4, 3, 2\]"),
        (lambda: torch.ops.posenc.t5_bias_backward(torch.randn(4, 3, 3), torch.randn(32, 4, device=DEV), 3, 3, 0, 0, True, 128), r"posenc\.t5_bias_backward: argument 'grad' must be on the device of 'table' \(cuda:0\), but got device cpu"),
    ],
)
def test_bad_inputs_raise_and_context_survives(call, match):
    with pytest.raises(RuntimeError, match=match):
        call()
    torch.cuda.synchronize()
    table = torch.randn(32, 2, device=DEV)
    assert torch.equal(ops.t5_bias(table, 2, 2).cpu(), ops.t5_bias(table.cpu(), 2, 2))


BIAS_SAMPLES = [
    lambda: (torch.randn(32, 4, device=DEV), 3, 5, 0, 0, True, 128),
    lambda: (torch.randn(32, 4, dtype=torch.float64, device=DEV, requires_grad=True), 3, 5, 2, 0, False, 128),
    lambda: (torch.randn(16, 2, dtype=torch.float16, device=DEV, requires_grad=True), 1, 7, 6, 0, True, 50),
    lambda: (torch.randn(3, 32, device=DEV).T.requires_grad_(), 4, 6, 0, 3, True, 128),
]


@pytest.mark.parametrize("make", BIAS_SAMPLES)
def test_opcheck_bias(make):
    torch.library.opcheck(torch.ops.posenc.t5_bias.default, make())


def test_opcheck_bucket_and_backward():
    torch.library.opcheck(torch.ops.posenc.t5_relative_bucket.default, (torch.arange(-50, 50, device=DEV), True, 32, 128))
    torch.library.opcheck(
        torch.ops.posenc.t5_bias_backward.default,
        (torch.randn(2, 3, 4, device=DEV), torch.randn(32, 2, device=DEV), 3, 4, 1, 0, True, 128),
    )
