"""KERPLE (Chi et al. 2022): logarithmic and power kernels, against an fp64 reference written
from the paper, gradients against autograd through that reference."""
import math

import pytest
import torch
import torch._dynamo.testing
from conftest import FLOAT_DTYPES, TOL

from posenc import ops


def ref_distance(q_len, k_len, q_offset, k_offset, causal):
    qp = torch.arange(q_len, dtype=torch.float64) + q_offset
    kp = torch.arange(k_len, dtype=torch.float64) + k_offset
    d = qp[:, None] - kp[None, :]
    return d.clamp(min=0) if causal else d.abs()


def ref_bias(r1, r2, q_len, k_len, q_offset=0, k_offset=0, kind="log", causal=True):
    d = ref_distance(q_len, k_len, q_offset, k_offset, causal)[None]
    a = r1.double()[:, None, None]
    b = r2.double()[:, None, None]
    if kind == "log":
        return -a * torch.log(1 + b * d)  # logarithmic variant
    # power variant -a d^b, 0 at d = 0; pow kept away from d = 0 so autograd gives 0 there
    safe = torch.where(d > 0, d, torch.ones_like(d))
    return torch.where(d > 0, -a * safe**b, torch.zeros_like(d * a))


def params(h, dtype=torch.float64, requires_grad=False):
    r1 = (torch.rand(h, dtype=torch.float64) * 2 + 0.05).to(dtype)
    r2 = (torch.rand(h, dtype=torch.float64) * 0.9 + 0.05).to(dtype)
    return r1.requires_grad_(requires_grad), r2.requires_grad_(requires_grad)


def test_known_values():
    r1, r2 = torch.tensor([2.0], dtype=torch.float64), torch.tensor([0.5], dtype=torch.float64)
    got = ops.kerple_bias(r1, r2, 1, 5, 3, 0, "log", True)[0, 0]
    want = torch.tensor([-2 * math.log(2.5), -2 * math.log(2.0), -2 * math.log(1.5), 0.0, 0.0], dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=1e-14, atol=1e-14)
    got = ops.kerple_bias(r1, r2, 1, 5, 3, 0, "power", False)[0, 0]
    want = torch.tensor([-2 * math.sqrt(3), -2 * math.sqrt(2), -2.0, 0.0, -2.0], dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("kind", ["log", "power"])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("shape", [(4, 7, 9, 0, 0), (3, 5, 11, 6, 0), (2, 1, 33, 32, 0), (5, 8, 4, 3, 7), (1, 50, 50, 0, 0)])
def test_bias_matches_reference(dtype, kind, causal, shape):
    h, q_len, k_len, q_off, k_off = shape
    r1, r2 = params(h, dtype)
    got = ops.kerple_bias(r1, r2, q_len, k_len, q_off, k_off, kind, causal)
    assert got.dtype == dtype and got.shape == (h, q_len, k_len) and got.is_contiguous()
    want = ref_bias(r1, r2, q_len, k_len, q_off, k_off, kind, causal)
    tol = TOL[dtype]
    if dtype in (torch.float16, torch.bfloat16):
        # values reach ~2 * log(50) ~ 8 or 2 * 50 ~ 100: compare relative to the output's ulp
        tol = dict(rtol=tol["rtol"], atol=tol["atol"] * want.abs().max().item())
    torch.testing.assert_close(got.double(), want, **tol)


def test_causal_future_keys_are_zero_and_bidirectional_is_symmetric():
    r1, r2 = params(3)
    causal = ops.kerple_bias(r1, r2, 6, 6, kind="log", causal=True)
    assert torch.equal(causal.triu(1), torch.zeros_like(causal))
    for kind in ("log", "power"):
        bi = ops.kerple_bias(r1, r2, 6, 6, kind=kind, causal=False)
        assert torch.equal(bi, bi.transpose(1, 2))
        assert (bi.diagonal(dim1=1, dim2=2) == 0).all()
        assert not torch.signbit(bi.diagonal(dim1=1, dim2=2)).any()  # +0, not -0


@pytest.mark.parametrize("kind", ["log", "power"])
@pytest.mark.parametrize("causal", [True, False])
def test_gradcheck(kind, causal):
    r1, r2 = params(3, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: ops.kerple_bias(a, b, 4, 7, 3, 1, kind, causal), (r1, r2))


@pytest.mark.parametrize("kind", ["log", "power"])
@pytest.mark.parametrize("causal", [True, False])
def test_grad_against_reference_and_deterministic(kind, causal):
    r1, r2 = params(4, requires_grad=True)
    g = torch.randn(4, 30, 90, dtype=torch.float64)
    (ops.kerple_bias(r1, r2, 30, 90, 60, 0, kind, causal) * g).sum().backward()
    a, b = r1.detach().clone().requires_grad_(), r2.detach().clone().requires_grad_()
    (ref_bias(a, b, 30, 90, 60, 0, kind, causal) * g).sum().backward()
    torch.testing.assert_close(r1.grad, a.grad)
    torch.testing.assert_close(r2.grad, b.grad)
    first = (r1.grad.clone(), r2.grad.clone())
    r1.grad = r2.grad = None
    (ops.kerple_bias(r1, r2, 30, 90, 60, 0, kind, causal) * g).sum().backward()
    assert torch.equal(r1.grad, first[0]) and torch.equal(r2.grad, first[1])


def test_power_at_zero_distance_no_nan():
    # d = 0 only: 0^r2 is taken as 0 for every r2 (0^0 too) and d/dr2 as its limit 0
    r1 = torch.tensor([1.5, 2.0, 0.7], dtype=torch.float64, requires_grad=True)
    r2 = torch.tensor([0.5, 0.0, 1.0], dtype=torch.float64, requires_grad=True)
    out = ops.kerple_bias(r1, r2, 3, 3, 5, 5, "power", True)  # causal: only d = 0 on and above the diagonal
    out[:, 0].sum().backward()  # row 0 sees keys at d = 0, 0, 0
    assert torch.equal(out[:, 0], torch.zeros(3, 3, dtype=torch.float64))
    assert torch.equal(r1.grad, torch.zeros(3, dtype=torch.float64))
    assert torch.equal(r2.grad, torch.zeros(3, dtype=torch.float64))
    r1.grad = r2.grad = None
    ops.kerple_bias(r1, r2, 5, 5, 0, 0, "power", False).sum().backward()
    assert torch.isfinite(r1.grad).all() and torch.isfinite(r2.grad).all()


def test_grad_half_accumulates_in_fp64():
    # grad_r1 = -sum_d log(1 + d), d = 1..4096, about -3e4: an fp16 running sum drifts to
    # -32768 (9% off); the fp64 accumulator is within fp16 rounding of the exact value.
    r1 = torch.ones(1, dtype=torch.float16, requires_grad=True)
    r2 = torch.ones(1, dtype=torch.float16, requires_grad=True)
    out = ops.kerple_bias(r1, r2, 4096, 1, 1, 0, "log", True)  # query i at i + 1, key 0: d = i + 1
    out.sum().backward()
    want = -sum(math.log1p(i + 1.0) for i in range(4096))
    assert abs(r1.grad.item() - want) <= abs(want) * 1e-3


@pytest.mark.parametrize("kind", ["log", "power"])
@pytest.mark.parametrize("causal", [True, False])
def test_C09_incremental_rows_equal_full(kind, causal):
    r1, r2 = params(3, torch.float32)
    full = ops.kerple_bias(r1, r2, 12, 12, kind=kind, causal=causal)
    for p in range(12):
        row = ops.kerple_bias(r1, r2, 1, p + 1, q_offset=p, kind=kind, causal=causal)
        assert torch.equal(row[:, 0], full[:, p, : p + 1])
    assert torch.equal(ops.kerple_bias(r1, r2, 3, 12, 5, 0, kind, causal), full[:, 5:8])
    assert torch.equal(ops.kerple_bias(r1, r2, 4, 6, 6, 6, kind, causal), full[:, 6:10, 6:12])


def test_C07_non_contiguous_params():
    buf = torch.rand(2, 8) + 0.1
    r1, r2 = buf[0, ::2], buf[1, 1::2]
    assert not r1.is_contiguous() and not r2.is_contiguous()
    for kind in ("log", "power"):
        assert torch.equal(
            ops.kerple_bias(r1, r2, 4, 6, 2, 0, kind, False),
            ops.kerple_bias(r1.contiguous(), r2.contiguous(), 4, 6, 2, 0, kind, False),
        )


@pytest.mark.parametrize("h,q_len,k_len", [(0, 3, 3), (2, 0, 3), (2, 3, 0), (1, 1, 1), (2, 1, 5), (2, 5, 1)])
@pytest.mark.parametrize("kind", ["log", "power"])
def test_C06_empty_and_unit_sizes(h, q_len, k_len, kind):
    r1, r2 = params(h, torch.float32, requires_grad=True)
    out = ops.kerple_bias(r1, r2, q_len, k_len, 2, 0, kind, False)
    assert out.shape == (h, q_len, k_len)
    torch.testing.assert_close(out.double(), ref_bias(r1.detach(), r2.detach(), q_len, k_len, 2, 0, kind, False), **TOL[torch.float32])
    out.sum().backward()
    assert r1.grad.shape == (h,) and r2.grad.shape == (h,)


SAMPLES = [
    (*params(4, torch.float32), 3, 5, 0, 0, "log", True),
    (*params(4, torch.float64, requires_grad=True), 3, 5, 2, 0, "power", False),
    (*params(3, torch.float64, requires_grad=True), 4, 4, 0, 1, "log", False),
    (*params(2, torch.float16), 1, 7, 6, 0, "power", True),
    (*params(3, torch.float32, requires_grad=True), 0, 4, 0, 0, "log", False),
]


@pytest.mark.parametrize("args", SAMPLES)
def test_opcheck(args):
    torch.library.opcheck(torch.ops.posenc.kerple_bias.default, args)


def test_opcheck_backward():
    r1, r2 = params(2)
    torch.library.opcheck(
        torch.ops.posenc.kerple_bias_backward.default,
        (torch.randn(2, 3, 4, dtype=torch.float64), r1, r2, 3, 4, 1, 0, "power", False),
    )


def test_C16_compile_dynamic_no_recompile():
    r1, r2 = params(4, torch.float32)
    torch._dynamo.reset()
    counter = torch._dynamo.testing.CompileCounter()
    f = torch.compile(lambda a, b, n, off: ops.kerple_bias(a, b, n, n + off, off, 0, "log", True), backend=counter, fullgraph=True, dynamic=True)
    for n, off in ((5, 0), (7, 3), (11, 9)):
        assert torch.equal(f(r1, r2, n, off), ops.kerple_bias(r1, r2, n, n + off, off, 0, "log", True))
    assert counter.frame_count == 1


def test_compile_inductor_with_grad():
    r1, r2 = params(2, requires_grad=True)
    f = torch.compile(lambda a, b: (ops.kerple_bias(a, b, 5, 8, 3, 0, "power", False) ** 2).sum(), fullgraph=True)
    f(r1, r2).backward()
    a, b = r1.detach().clone().requires_grad_(), r2.detach().clone().requires_grad_()
    (ref_bias(a, b, 5, 8, 3, 0, "power", False) ** 2).sum().backward()
    torch.testing.assert_close(r1.grad, a.grad)
    torch.testing.assert_close(r2.grad, b.grad)


def test_script():
    fn = torch.jit.script(ops.kerple_bias)
    r1, r2 = params(2, torch.float32)
    assert torch.equal(fn(r1, r2, 3, 4, 1, 0, "power", False), ops.kerple_bias(r1, r2, 3, 4, 1, 0, "power", False))


R = torch.rand(3)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: ops.kerple_bias(R, R, 3, 3, kind="cosine"), r"posenc\.kerple_bias: argument 'kind' must be one of \"log\", \"power\", but got \"cosine\""),
        (lambda: ops.kerple_bias(R[None], R, 3, 3), r"posenc\.kerple_bias: argument 'r1' must be a 1-D tensor of shape \(num_heads,\), but got a 2-D tensor"),
        (lambda: ops.kerple_bias(R, R[None], 3, 3), r"argument 'r2' must be a 1-D tensor of shape \(num_heads,\), but got a 2-D tensor"),
        (lambda: ops.kerple_bias(R, torch.rand(4), 3, 3), r"argument 'r2' must have the length of 'r1' \(3\), but got length 4"),
        (lambda: ops.kerple_bias(R, R.double(), 3, 3), r"argument 'r2' must have the dtype of 'r1' \(Float\), but got dtype Double"),
        (lambda: ops.kerple_bias(torch.ones(3, dtype=torch.long), torch.ones(3, dtype=torch.long), 3, 3), r"argument 'r1' must have dtype float16, bfloat16, float32 or float64, but got dtype Long"),
        (lambda: ops.kerple_bias(R, R, -1, 3), r"posenc\.kerple_bias: argument 'q_len' must be >= 0, but got -1"),
        (lambda: ops.kerple_bias(R, R, 1, -3), r"posenc\.kerple_bias: argument 'k_len' must be >= 0, but got -3"),
        (lambda: ops.kerple_bias(R, torch.tensor([0.5, -0.25, 1.0]), 3, 3, kind="log"), r"posenc\.kerple_bias: argument 'r2' must be >= 0 for kind \"log\" .*, but got r2\[1\] = -0\.25"),
        (lambda: ops.kerple_bias(R, torch.tensor([0.5, float("nan"), 1.0]), 3, 3, kind="log"), r"argument 'r2' must be finite, but got r2\[1\] = nan"),
        (lambda: torch.ops.posenc.kerple_bias_backward(torch.randn(3, 2, 2), R, R, 2, 5, 0, 0, "log", True), r"posenc\.kerple_bias_backward: argument 'grad' must have shape \(num_heads, q_len, k_len\) = \[3, 2, 5\], but got shape \[3, 2, 2\]"),
    ],
)
def test_bad_inputs(call, match):
    with pytest.raises(RuntimeError, match=match):
        call()


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("kind", ["log", "power"])
@pytest.mark.parametrize(
    "r1,r2,arg,index,value",
    [
        ([1.0, NAN, 1.0], [0.5, 0.5, 0.5], "r1", 1, "nan"),
        ([1.0, 1.0, -INF], [0.5, 0.5, 0.5], "r1", 2, "-inf"),
        ([1.0, 1.0, 1.0], [INF, 0.5, 0.5], "r2", 0, "inf"),
        ([1.0, 1.0, 1.0], [0.5, NAN, 0.5], "r2", 1, "nan"),
    ],
)
def test_non_finite_parameters_raise(dtype, kind, r1, r2, arg, index, value):
    # Before: NaN/inf biases for every distance > 0, silently.
    a, b = torch.tensor(r1, dtype=dtype), torch.tensor(r2, dtype=dtype)
    msg = rf"posenc\.kerple_bias: argument '{arg}' must be finite, but got {arg}\[{index}\] = {value}"
    with pytest.raises(RuntimeError, match=msg):
        ops.kerple_bias(a, b, 3, 4, kind=kind)
    g = torch.ones(3, 3, 4, dtype=dtype)
    with pytest.raises(RuntimeError, match=msg.replace("kerple_bias:", "kerple_bias_backward:")):
        torch.ops.posenc.kerple_bias_backward(g, a, b, 3, 4, 0, 0, kind, True)


def test_power_accepts_negative_r2():
    r2 = torch.tensor([-0.5], dtype=torch.float64)
    got = ops.kerple_bias(torch.ones(1, dtype=torch.float64), r2, 1, 4, 3, 0, "power", True)
    torch.testing.assert_close(got, ref_bias(torch.ones(1), r2, 1, 4, 3, 0, "power", True))


def test_bad_inputs_fake_tensor():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        r = torch.rand(3)
        with pytest.raises(RuntimeError, match=r"posenc\.kerple_bias: argument 'kind' must be one of"):
            torch.ops.posenc.kerple_bias(r, r, 3, 3, 0, 0, "linear", True)
