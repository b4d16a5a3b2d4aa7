"""ALiBi (Press et al. 2022): slopes, bias, gradients, against an fp64 reference from the paper."""
import math

import pytest
import torch
import torch._dynamo.testing
from conftest import FLOAT_DTYPES, TOL

from posenc import ops


def ref_slopes(n: int):
    # Press et al.: geometric sequence starting at 2^(-8/n) with that ratio; for n not a power
    # of two, the closest lower power of two and every other slope of twice that.
    def pow2(m):
        start = 2.0 ** (-8.0 / m)
        return [start ** (k + 1) for k in range(m)]

    p = 2 ** int(math.floor(math.log2(n)))
    if p == n:
        return pow2(n)
    return pow2(p) + pow2(2 * p)[0::2][: n - p]


def ref_bias(slopes, q_len, k_len, q_offset, k_offset, causal):
    s = slopes.double()
    qp = torch.arange(q_len, dtype=torch.float64) + q_offset
    kp = torch.arange(k_len, dtype=torch.float64) + k_offset
    d = qp[:, None] - kp[None, :]
    if not causal:
        d = d.abs()
    return -s[:, None, None] * d[None]


def test_slopes_power_of_two_search_does_not_overflow():
    # num_heads near 2^63 used to wrap the doubling loop into an endless loop; the op must
    # get past it (and then fail to allocate with a catchable error, not hang).
    with pytest.raises(RuntimeError):
        ops.alibi_slopes(2**62 + 1)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 6, 8, 12, 16, 20, 32])
def test_slopes_match_paper(n):
    got = ops.alibi_slopes(n, dtype=torch.float64)
    torch.testing.assert_close(got, torch.tensor(ref_slopes(n), dtype=torch.float64))


def test_C11_slopes():
    torch.testing.assert_close(
        ops.alibi_slopes(8),
        torch.tensor([0.5, 0.25, 0.125, 0.0625, 0.03125, 0.015625, 0.0078125, 0.00390625]),
    )
    torch.testing.assert_close(
        ops.alibi_slopes(12)[8:],
        torch.tensor([0.70710678, 0.35355339, 0.17677670, 0.08838835]),
    )
    torch.testing.assert_close(
        ops.alibi_slopes(6), torch.tensor([0.25, 0.0625, 0.015625, 0.00390625, 0.5, 0.125])
    )


def test_C10_alignment():
    s = torch.tensor([0.5])
    end = ops.alibi_bias(s, 3, 5, q_offset=2, k_offset=0, causal=False)
    torch.testing.assert_close(end[0, 0], torch.tensor([-1.0, -0.5, 0.0, -0.5, -1.0]))
    start = ops.alibi_bias(s, 3, 5, q_offset=0, k_offset=0, causal=False)
    torch.testing.assert_close(start[0, 0], torch.tensor([0.0, -0.5, -1.0, -1.5, -2.0]))


def test_C12_sign():
    s = torch.tensor([0.5])
    causal = ops.alibi_bias(s, 3, 3, causal=True)
    torch.testing.assert_close(causal[0, 2], torch.tensor([-1.0, -0.5, 0.0]))
    bidir = ops.alibi_bias(s, 3, 3, causal=False)
    torch.testing.assert_close(bidir[0, 0], torch.tensor([0.0, -0.5, -1.0]))
    # the bidirectional bias is symmetric in |i - j|, unlike a per-row causal ramp
    torch.testing.assert_close(bidir[0], bidir[0].T)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("shape", [(4, 7, 9, 0, 0), (3, 5, 11, 6, 0), (2, 1, 33, 32, 0), (5, 8, 4, 3, 7)])
def test_bias_matches_reference(dtype, causal, shape):
    h, q_len, k_len, q_off, k_off = shape
    slopes = ops.alibi_slopes(h, dtype=dtype)
    got = ops.alibi_bias(slopes, q_len, k_len, q_off, k_off, causal)
    assert got.dtype == dtype and got.shape == (h, q_len, k_len)
    want = ref_bias(slopes, q_len, k_len, q_off, k_off, causal)
    torch.testing.assert_close(got.double(), want, **TOL[dtype])


@pytest.mark.parametrize("causal", [True, False])
def test_C09_incremental_rows_equal_full(causal):
    slopes = ops.alibi_slopes(4)
    full = ops.alibi_bias(slopes, 10, 10, causal=causal)
    for p in range(10):
        row = ops.alibi_bias(slopes, 1, p + 1, q_offset=p, causal=causal)
        torch.testing.assert_close(row[:, 0], full[:, p, : p + 1], rtol=0, atol=0)
    block = ops.alibi_bias(slopes, 3, 10, q_offset=5, causal=causal)
    torch.testing.assert_close(block, full[:, 5:8], rtol=0, atol=0)


@pytest.mark.parametrize("causal", [True, False])
def test_gradcheck(causal):
    slopes = torch.rand(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda s: ops.alibi_bias(s, 4, 6, 2, 1, causal), (slopes,)
    )


def test_grad_against_reference():
    slopes = torch.rand(3, dtype=torch.float64, requires_grad=True)
    g = torch.randn(3, 5, 7, dtype=torch.float64)
    (ops.alibi_bias(slopes, 5, 7, 1, 0, False) * g).sum().backward()
    s2 = slopes.detach().clone().requires_grad_()
    (ref_bias(s2, 5, 7, 1, 0, False) * g).sum().backward()
    torch.testing.assert_close(slopes.grad, s2.grad)


def test_non_contiguous_slopes():
    base = torch.rand(8)
    view = base[::2]
    assert not view.is_contiguous()
    torch.testing.assert_close(
        ops.alibi_bias(view, 3, 4, causal=False), ops.alibi_bias(view.contiguous(), 3, 4, causal=False),
        rtol=0, atol=0,
    )


@pytest.mark.parametrize("h,q_len,k_len", [(0, 3, 3), (2, 0, 3), (2, 3, 0), (1, 1, 1)])
def test_C06_empty_and_unit_sizes(h, q_len, k_len):
    slopes = torch.rand(h, requires_grad=True)
    out = ops.alibi_bias(slopes, q_len, k_len)
    assert out.shape == (h, q_len, k_len)
    out.sum().backward()
    assert slopes.grad.shape == (h,)


SAMPLES = [
    (torch.rand(4), 3, 5, 0, 0, True),
    (torch.rand(4, dtype=torch.float64, requires_grad=True), 3, 5, 2, 0, False),
    (torch.rand(2, dtype=torch.float16), 1, 7, 6, 0, True),
    (torch.rand(6)[::2].requires_grad_(), 0, 4, 0, 0, False),
]


@pytest.mark.parametrize("args", SAMPLES)
def test_opcheck(args):
    torch.library.opcheck(torch.ops.posenc.alibi_bias.default, args)


def test_opcheck_slopes():
    torch.library.opcheck(torch.ops.posenc.alibi_slopes.default, (6,), {"dtype": torch.float64})


def test_C16_compile_dynamic_no_recompile():
    slopes = ops.alibi_slopes(4)
    torch._dynamo.reset()
    counter = torch._dynamo.testing.CompileCounter()
    f = torch.compile(lambda s, n: ops.alibi_bias(s, n, n, 0, 0, False), backend=counter, fullgraph=True, dynamic=True)
    for n in (5, 7, 11):
        torch.testing.assert_close(f(slopes, n), ops.alibi_bias(slopes, n, n, 0, 0, False))
    assert counter.frame_count == 1


def test_script():
    fn = torch.jit.script(ops.alibi_bias)
    s = ops.alibi_slopes(2)
    torch.testing.assert_close(fn(s, 3, 4, 1, 0, False), ops.alibi_bias(s, 3, 4, 1, 0, False))


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: ops.alibi_bias(torch.rand(2, 2), 3, 3), r"posenc\.alibi_bias: argument 'slopes' must be a 1-D tensor.*2-D"),
        (lambda: ops.alibi_bias(torch.arange(3), 3, 3), r"argument 'slopes' must have dtype float.*Long"),
        (lambda: ops.alibi_bias(torch.rand(2), -1, 3), r"argument 'q_len' must be >= 0, but got -1"),
        (lambda: ops.alibi_bias(torch.rand(2), 1, -3), r"argument 'k_len' must be >= 0, but got -3"),
        (lambda: ops.alibi_slopes(0), r"posenc\.alibi_slopes: argument 'num_heads' must be > 0, but got 0"),
        (lambda: ops.alibi_slopes(4, dtype=torch.int64), r"posenc\.alibi_slopes: argument 'dtype' must be float.*Long"),
        (lambda: ops.alibi_slopes(4, dtype=torch.bool), r"posenc\.alibi_slopes: argument 'dtype' must be float.*Bool"),
        (lambda: torch.ops.posenc.alibi_bias_backward(torch.ones(2, 3, 4), torch.rand(2), 3, 5, 0, 0, True),
         r"posenc\.alibi_bias_backward: argument 'grad' must have shape \(num_heads, q_len, k_len\) = \[2, 3, 5\], but got shape \[2, 3, 4\]"),
    ],
)
def test_bad_inputs(call, match):
    with pytest.raises(RuntimeError, match=match):
        call()


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_slopes_raise(bad, dtype):
    # A NaN/inf slope would fill its head's bias with NaN/inf, found much later in the softmax.
    slopes = torch.tensor([0.5, 0.25, 0.125, 0.0625, 0.03125, 0.015625], dtype=dtype)
    slopes[2] = bad
    msg = rf"posenc\.alibi_bias: argument 'slopes' must be finite, but got slopes\[1\] = {bad}"
    with pytest.raises(RuntimeError, match=msg):
        ops.alibi_bias(slopes[::2], 3, 4)  # strided: index 1 of the view
    with pytest.raises(RuntimeError, match=msg.replace(r"\[1\]", r"\[2\]")):
        ops.alibi_bias(slopes, 3, 4, causal=False)
    # empty outputs do not read the slopes' effect, but the parameters are still checked
    with pytest.raises(RuntimeError, match=r"argument 'slopes' must be finite"):
        ops.alibi_bias(slopes, 0, 4)
