"""KERPLE on CUDA: against the CPU kernel and the fp64 reference of test_kerple, forward and
backward (r1 and r2), every dtype."""
import math

import pytest
import torch
from conftest import FLOAT_DTYPES, TOL
from test_kerple import params, ref_bias, ref_distance

from posenc import ops

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

DEV = "cuda"


def cpu_tol(dtype):
    # CUDA's log1pf/powf are within a few ulp of glibc's, the output is rounded once more
    # for half types: equal up to about one ulp of the output dtype
    return {
        torch.float64: dict(rtol=1e-14, atol=1e-14),
        torch.float32: dict(rtol=1e-6, atol=1e-7),
        torch.float16: dict(rtol=torch.finfo(torch.float16).eps, atol=1e-5),
        torch.bfloat16: dict(rtol=torch.finfo(torch.bfloat16).eps, atol=1e-5),
    }[dtype]


def ref_tol(dtype, scale):
    tol = TOL[dtype]
    return dict(rtol=tol["rtol"], atol=tol["atol"] * max(1.0, scale))


SHAPES = [  # heads, q_len, k_len, q_offset, k_offset
    (4, 7, 9, 0, 0),
    (3, 5, 11, 6, 0),
    (2, 1, 33, 32, 0),
    (5, 8, 4, 3, 7),
    (3, 130, 70, 0, 0),  # several row tiles of the gradient reduction
    (2, 60, 300, 250, 0),
    (1, 200, 150, -40, 9),
]


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("kind", ["log", "power"])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_matches_cpu_and_reference(dtype, kind, causal, shape):
    h, q_len, k_len, q_off, k_off = shape
    r1, r2 = params(h, dtype)
    got = ops.kerple_bias(r1.to(DEV), r2.to(DEV), q_len, k_len, q_off, k_off, kind, causal)
    assert got.device.type == "cuda" and got.dtype == dtype
    assert got.shape == (h, q_len, k_len) and got.is_contiguous()
    cpu = ops.kerple_bias(r1, r2, q_len, k_len, q_off, k_off, kind, causal)
    torch.testing.assert_close(got.cpu().double(), cpu.double(), **cpu_tol(dtype))
    want = ref_bias(r1, r2, q_len, k_len, q_off, k_off, kind, causal)
    torch.testing.assert_close(got.cpu().double(), want, **ref_tol(dtype, want.abs().max().item()))
    # d = 0 gives +0, never -0
    zero = ref_distance(q_len, k_len, q_off, k_off, causal) == 0
    assert not torch.signbit(got.cpu()[:, zero]).any()


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("kind", ["log", "power"])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
def test_backward_matches_cpu_and_reference(dtype, kind, causal, shape):
    h, q_len, k_len, q_off, k_off = shape
    r1, r2 = params(h, dtype)
    g = torch.randn(h, q_len, k_len, dtype=dtype)
    args = (q_len, k_len, q_off, k_off, kind, causal)
    g1, g2 = torch.ops.posenc.kerple_bias_backward(g.to(DEV), r1.to(DEV), r2.to(DEV), *args)
    assert g1.device.type == "cuda" and g1.dtype == dtype and g1.shape == (h,) and g2.shape == (h,)
    c1, c2 = torch.ops.posenc.kerple_bias_backward(g, r1, r2, *args)
    a, b = r1.double().requires_grad_(), r2.double().requires_grad_()
    (ref_bias(a, b, q_len, k_len, q_off, k_off, kind, causal) * g.double()).sum().backward()
    for got, cpu, ref in ((g1, c1, a.grad), (g2, c2, b.grad)):
        if dtype == torch.float64:
            torch.testing.assert_close(got.cpu(), cpu, rtol=1e-12, atol=1e-12)
        else:
            # both reduce in fp64 and round once; the fp64 sums differ in order only
            torch.testing.assert_close(got.cpu().double(), cpu.double(), rtol=torch.finfo(dtype).eps, atol=1e-6)
        torch.testing.assert_close(got.cpu().double(), ref, **ref_tol(dtype, ref.abs().max().item()))


@pytest.mark.parametrize("kind", ["log", "power"])
def test_autograd_and_gradcheck(kind):
    r1, r2 = params(3, requires_grad=True)
    a, b = r1.detach().to(DEV).requires_grad_(), r2.detach().to(DEV).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, y: ops.kerple_bias(x, y, 4, 7, 3, 1, kind, False), (a, b))
    g = torch.randn(3, 50, 80, dtype=torch.float64)
    (ops.kerple_bias(r1, r2, 50, 80, 30, 0, kind, True) * g).sum().backward()
    a.grad = b.grad = None
    (ops.kerple_bias(a, b, 50, 80, 30, 0, kind, True) * g.to(DEV)).sum().backward()
    torch.testing.assert_close(a.grad.cpu(), r1.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(b.grad.cpu(), r2.grad, rtol=1e-12, atol=1e-12)


def test_grad_non_contiguous_and_expanded():
    r1, r2 = (t.to(DEV) for t in params(3, torch.float32))
    g = torch.randn(40, 30, 3, device=DEV).permute(2, 1, 0)
    assert not g.is_contiguous()
    args = (30, 40, 5, 0, "log", False)
    got = torch.ops.posenc.kerple_bias_backward(g, r1, r2, *args)
    want = torch.ops.posenc.kerple_bias_backward(g.contiguous(), r1, r2, *args)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    ones = torch.ones(1, 1, 1, device=DEV).expand(3, 30, 40)
    got = torch.ops.posenc.kerple_bias_backward(ones, r1, r2, *args)
    want = torch.ops.posenc.kerple_bias_backward(ones.contiguous(), r1, r2, *args)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_grad_half_accumulates_in_fp64():
    r1 = torch.ones(1, dtype=torch.float16, device=DEV, requires_grad=True)
    r2 = torch.ones(1, dtype=torch.float16, device=DEV, requires_grad=True)
    ops.kerple_bias(r1, r2, 4096, 1, 1, 0, "log", True).sum().backward()
    want = -sum(math.log1p(i + 1.0) for i in range(4096))
    assert abs(r1.grad.item() - want) <= abs(want) * 1e-3


@pytest.mark.parametrize("kind", ["log", "power"])
def test_deterministic_backward(kind):
    r1, r2 = (t.to(DEV).requires_grad_() for t in params(8, torch.float32))
    g = torch.randn(8, 300, 500, device=DEV)
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        runs = []
        for _ in range(2):
            r1.grad = r2.grad = None
            (ops.kerple_bias(r1, r2, 300, 500, 200, 0, kind, False) * g).sum().backward()
            runs.append((r1.grad.clone(), r2.grad.clone()))
    finally:
        torch.use_deterministic_algorithms(prev)
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


def test_power_at_zero_distance_no_nan():
    r1 = torch.tensor([1.5, 2.0, 0.7], dtype=torch.float64, device=DEV, requires_grad=True)
    r2 = torch.tensor([0.5, 0.0, 1.0], dtype=torch.float64, device=DEV, requires_grad=True)
    out = ops.kerple_bias(r1, r2, 3, 3, 5, 5, "power", True)
    out[:, 0].sum().backward()
    assert torch.equal(out[:, 0].cpu(), torch.zeros(3, 3, dtype=torch.float64))
    assert torch.equal(r1.grad.cpu(), torch.zeros(3, dtype=torch.float64))
    assert torch.equal(r2.grad.cpu(), torch.zeros(3, dtype=torch.float64))


@pytest.mark.parametrize("kind", ["log", "power"])
@pytest.mark.parametrize("causal", [True, False])
def test_C09_incremental_rows_equal_full(kind, causal):
    r1, r2 = (t.to(DEV) for t in params(3, torch.float32))
    full = ops.kerple_bias(r1, r2, 12, 12, kind=kind, causal=causal)
    for p in range(12):
        row = ops.kerple_bias(r1, r2, 1, p + 1, q_offset=p, kind=kind, causal=causal)
        assert torch.equal(row[:, 0], full[:, p, : p + 1])
    assert torch.equal(ops.kerple_bias(r1, r2, 4, 6, 6, 6, kind, causal), full[:, 6:10, 6:12])


def test_C07_non_contiguous_params():
    buf = torch.rand(2, 8, device=DEV) + 0.1
    r1, r2 = buf[0, ::2], buf[1, 1::2]
    for kind in ("log", "power"):
        assert torch.equal(
            ops.kerple_bias(r1, r2, 4, 6, 2, 0, kind, False),
            ops.kerple_bias(r1.contiguous(), r2.contiguous(), 4, 6, 2, 0, kind, False),
        )


@pytest.mark.parametrize("h,q_len,k_len", [(0, 3, 3), (2, 0, 3), (2, 3, 0), (1, 1, 1), (2, 1, 5), (2, 5, 1)])
@pytest.mark.parametrize("kind", ["log", "power"])
def test_C06_empty_and_unit_sizes(h, q_len, k_len, kind):
    r1, r2 = params(h, torch.float32)
    a, b = r1.to(DEV).requires_grad_(), r2.to(DEV).requires_grad_()
    out = ops.kerple_bias(a, b, q_len, k_len, 2, 0, kind, False)
    assert out.shape == (h, q_len, k_len) and out.device.type == "cuda"
    torch.testing.assert_close(out.cpu(), ops.kerple_bias(r1, r2, q_len, k_len, 2, 0, kind, False), **cpu_tol(torch.float32))
    out.sum().backward()
    c1, c2 = r1.clone().requires_grad_(), r2.clone().requires_grad_()
    ops.kerple_bias(c1, c2, q_len, k_len, 2, 0, kind, False).sum().backward()
    torch.testing.assert_close(a.grad.cpu(), c1.grad, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(b.grad.cpu(), c2.grad, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("q_len,k_len", [(70000, 3), (2, 70000)])
def test_long_sequence(q_len, k_len):
    r1, r2 = params(2, torch.float32)
    a, b = r1.to(DEV).requires_grad_(), r2.to(DEV).requires_grad_()
    out = ops.kerple_bias(a, b, q_len, k_len, 0, 0, "log", False)
    torch.testing.assert_close(out.cpu(), ops.kerple_bias(r1, r2, q_len, k_len, 0, 0, "log", False), **cpu_tol(torch.float32))
    g = torch.randn(2, q_len, k_len)
    (out * g.to(DEV)).sum().backward()
    w1, w2 = torch.ops.posenc.kerple_bias_backward(g, r1, r2, q_len, k_len, 0, 0, "log", False)
    torch.testing.assert_close(a.grad.cpu(), w1, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b.grad.cpu(), w2, rtol=1e-5, atol=1e-5)


def test_wide_heads():
    r1, r2 = params(70000, torch.float32)
    a, b = r1.to(DEV).requires_grad_(), r2.to(DEV).requires_grad_()
    out = ops.kerple_bias(a, b, 2, 3, 1, 0, "power", False)
    torch.testing.assert_close(out.cpu(), ops.kerple_bias(r1, r2, 2, 3, 1, 0, "power", False), **cpu_tol(torch.float32))
    g = torch.randn(70000, 2, 3)
    (out * g.to(DEV)).sum().backward()
    w1, w2 = torch.ops.posenc.kerple_bias_backward(g, r1, r2, 2, 3, 1, 0, "power", False)
    torch.testing.assert_close(a.grad.cpu(), w1, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b.grad.cpu(), w2, rtol=1e-5, atol=1e-6)


R = lambda *s: torch.rand(*s, device=DEV)  # noqa: E731


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: ops.kerple_bias(R(3), R(3), 3, 3, kind="cosine"), r"posenc\.kerple_bias: argument 'kind' must be one of \"log\", \"power\", but got \"cosine\""),
        (lambda: ops.kerple_bias(R(3), R(4), 3, 3), r"argument 'r2' must have the length of 'r1' \(3\), but got length 4"),
        (lambda: ops.kerple_bias(R(3), R(3).double(), 3, 3), r"argument 'r2' must have the dtype of 'r1' \(Float\), but got dtype Double"),
        (lambda: ops.kerple_bias(R(3), R(3), -1, 3), r"posenc\.kerple_bias: argument 'q_len' must be >= 0, but got -1"),
        # the value check reads r2 on the host (a sync), as on the CPU: no silent NaN
        (lambda: ops.kerple_bias(R(3), torch.tensor([0.5, -0.25, 1.0], device=DEV), 3, 3, kind="log"), r"posenc\.kerple_bias: argument 'r2' must be >= 0 for kind \"log\" .*, but got r2\[1\] = -0\.25"),
        (lambda: ops.kerple_bias(R(3), torch.tensor([0.5, float("nan"), 1.0], device=DEV), 3, 3, kind="log"), r"argument 'r2' must be finite, but got r2\[1\] = nan"),
        (lambda: ops.kerple_bias(R(4), R(4), 2**40, 2**40), r"posenc\.kerple_bias: argument 'k_len' is too large: the output's size in bytes must fit in int64, but got an output of shape \[4, 1099511627776, 1099511627776\] and dtype Float"),
        (lambda: torch.ops.posenc.kerple_bias_backward(torch.randn(3, 2, 5, device=DEV), R(3), torch.tensor([0.5, 1.0, -2.0], device=DEV), 2, 5, 0, 0, "log", True), r"posenc\.kerple_bias_backward: argument 'r2' must be >= 0 for kind \"log\" .*, but got r2\[2\] = -2"),
        (lambda: torch.ops.posenc.kerple_bias_backward(torch.randn(3, 2, 2, device=DEV), R(3), R(3), 2, 5, 0, 0, "log", True), r"posenc\.kerple_bias_backward: argument 'grad' must have shape \(num_heads, q_len, k_len\) = \[3, 2, 5\], but got shape \[3, 2, 2\]"),
        (lambda: ops.kerple_bias(R(3), torch.rand(3), 3, 3), r"posenc\.kerple_bias: argument 'r2' must be on the device of 'r1' \(cuda:0\), but got device cpu"),
        (lambda: torch.ops.posenc.kerple_bias_backward(torch.randn(3, 2, 5), R(3), R(3), 2, 5, 0, 0, "log", True), r"posenc\.kerple_bias_backward: argument 'grad' must be on the device of 'r1' \(cuda:0\), but got device cpu"),
    ],
)
def test_bad_inputs_raise_and_context_survives(call, match):
    with pytest.raises(RuntimeError, match=match):
        call()
    torch.cuda.synchronize()
    r = R(2)
    torch.testing.assert_close(ops.kerple_bias(r, r, 2, 2).cpu(), ops.kerple_bias(r.cpu(), r.cpu(), 2, 2))


def test_power_accepts_negative_r2():
    r2 = torch.tensor([-0.5], dtype=torch.float64)
    got = ops.kerple_bias(torch.ones(1, dtype=torch.float64, device=DEV), r2.to(DEV), 1, 4, 3, 0, "power", True)
    torch.testing.assert_close(got.cpu(), ref_bias(torch.ones(1), r2, 1, 4, 3, 0, "power", True))


SAMPLES = [
    lambda: (*(t.to(DEV) for t in params(4, torch.float32)), 3, 5, 0, 0, "log", True),
    lambda: (*(t.to(DEV).requires_grad_() for t in params(4, torch.float64)), 3, 5, 2, 0, "power", False),
    lambda: (*(t.to(DEV).requires_grad_() for t in params(2, torch.float16)), 1, 7, 6, 0, "log", False),
]


@pytest.mark.parametrize("make", SAMPLES)
def test_opcheck(make):
    torch.library.opcheck(torch.ops.posenc.kerple_bias.default, make())


def test_opcheck_backward():
    r1, r2 = (t.to(DEV) for t in params(2))
    torch.library.opcheck(
        torch.ops.posenc.kerple_bias_backward.default,
        (torch.randn(2, 3, 4, dtype=torch.float64, device=DEV), r1, r2, 3, 4, 1, 0, "power", False),
    )


def test_non_finite_r1_checked_on_cpu_only():
    # Documented: r1 (and r2 of "power") is not read on the host on CUDA (no stream sync), so a
    # NaN gives NaN biases there; the CPU kernel rejects it.
    r1 = torch.tensor([1.0, float("nan")], device=DEV)
    r2 = torch.tensor([0.5, 0.5], device=DEV)
    for kind in ("log", "power"):
        if DEV == "cpu":
            with pytest.raises(RuntimeError, match=r"argument 'r1' must be finite, but got r1\[1\] = nan"):
                ops.kerple_bias(r1, r2, 2, 3, kind=kind)
        else:
            out = ops.kerple_bias(r1, r2, 2, 3, kind=kind, causal=False).cpu()
            assert torch.isnan(out[1]).sum() == 4 and not torch.isnan(out[0]).any()  # d > 0 only

