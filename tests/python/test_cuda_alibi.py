"""ALiBi CUDA kernels against the CPU kernels and the fp64 reference of test_alibi.py
(Press et al. 2022)."""
import pytest
import torch
from conftest import CUDA_TEST_DEVICE as DEV
from conftest import FLOAT_DTYPES, TOL, requires_cuda, requires_real_cuda, to_device
from test_alibi import SAMPLES as ALIBI_SAMPLES
from test_alibi import ref_bias

from posenc import ops

pytestmark = [requires_cuda, pytest.mark.usefixtures("nan_filled_empty")]

F64 = torch.float64

SHAPES = [  # heads, q_len, k_len, q_offset, k_offset
    (4, 7, 9, 0, 0),
    (3, 5, 11, 6, 0),
    (2, 1, 33, 32, 0),
    (5, 8, 4, 3, 7),
    (12, 64, 300, 1000, -5),
]


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_matches_cpu_and_reference(shape, causal, dtype):
    h, q_len, k_len, q_off, k_off = shape
    slopes = ops.alibi_slopes(h, dtype=dtype)
    got = ops.alibi_bias(slopes.to(DEV), q_len, k_len, q_off, k_off, causal)
    assert got.device.type == DEV and got.dtype == dtype and got.shape == (h, q_len, k_len)
    assert got.is_contiguous()
    # The same single rounding of (-d) * slope in opmath on both devices: bit-exact.
    cpu = ops.alibi_bias(slopes, q_len, k_len, q_off, k_off, causal)
    torch.testing.assert_close(got.cpu(), cpu, rtol=0, atol=0)
    torch.testing.assert_close(got.cpu().double(), ref_bias(slopes, q_len, k_len, q_off, k_off, causal), **TOL[dtype])


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
def test_backward_matches_cpu_and_reference(shape, causal, dtype):
    h, q_len, k_len, q_off, k_off = shape
    slopes = torch.rand(h, dtype=F64).to(dtype)
    # scaled so that the gradient stays O(1), inside float16's range
    dmax = max(abs(q_off + q_len - 1 - k_off), abs(q_off - k_off - k_len + 1), 1)
    g = (torch.randn(h, q_len, k_len, dtype=F64) / (dmax * (q_len * k_len) ** 0.5)).to(dtype)

    def grad_on(device):
        s = slopes.to(device).requires_grad_()
        (gs,) = torch.autograd.grad(ops.alibi_bias(s, q_len, k_len, q_off, k_off, causal), s, g.to(device))
        return gs

    got, cpu = grad_on(DEV), grad_on("cpu")
    assert got.device.type == DEV and got.dtype == dtype and got.shape == (h,)
    s64 = slopes.double().requires_grad_()
    (want,) = torch.autograd.grad(ref_bias(s64, q_len, k_len, q_off, k_off, causal), s64, g.double())
    # double accumulation in another order, one rounding to the dtype
    tol = dict(rtol=1e-6, atol=1e-6) if dtype == torch.float32 else TOL[dtype]
    torch.testing.assert_close(got.cpu(), cpu, **tol)
    torch.testing.assert_close(got.cpu().double(), want, **tol)


@pytest.mark.parametrize("causal", [True, False])
def test_C10_C12_values(causal):
    s = torch.tensor([0.5], device=DEV)
    out = ops.alibi_bias(s, 3, 5, q_offset=2, k_offset=0, causal=causal)[0, 0].cpu()
    want = [-1.0, -0.5, 0.0, 0.5, 1.0] if causal else [-1.0, -0.5, 0.0, -0.5, -1.0]
    torch.testing.assert_close(out, torch.tensor(want))
    bidir = ops.alibi_bias(s, 3, 3, causal=False)[0].cpu()
    torch.testing.assert_close(bidir[0], torch.tensor([0.0, -0.5, -1.0]))
    torch.testing.assert_close(bidir, bidir.T)


@pytest.mark.parametrize("causal", [True, False])
def test_C09_incremental_rows_equal_full(causal):
    slopes = ops.alibi_slopes(4, device=DEV)
    full = ops.alibi_bias(slopes, 10, 10, causal=causal)
    for p in range(10):
        row = ops.alibi_bias(slopes, 1, p + 1, q_offset=p, causal=causal)
        assert torch.equal(row[:, 0], full[:, p, : p + 1])
    assert torch.equal(ops.alibi_bias(slopes, 3, 10, q_offset=5, causal=causal), full[:, 5:8])


def test_non_contiguous_slopes_and_grad():
    base = torch.rand(8, device=DEV)
    view = base[::2]
    assert not view.is_contiguous()
    assert torch.equal(ops.alibi_bias(view, 3, 4, causal=False), ops.alibi_bias(view.contiguous(), 3, 4, causal=False))
    s = torch.rand(4, device=DEV, dtype=F64)
    g = torch.randn(5, 4, 3, device=DEV, dtype=F64).permute(1, 2, 0)  # (4, 3, 5), strided
    expanded = torch.ones(1, 1, 1, device=DEV, dtype=F64).expand(4, 3, 5)  # stride 0, as from .sum()
    for grad in (g, expanded):
        got = torch.ops.posenc.alibi_bias_backward(grad, s, 3, 5, 1, 0, False)
        assert torch.equal(got, torch.ops.posenc.alibi_bias_backward(grad.contiguous(), s, 3, 5, 1, 0, False))
        want = torch.ops.posenc.alibi_bias_backward(grad.cpu(), s.cpu(), 3, 5, 1, 0, False)
        torch.testing.assert_close(got.cpu(), want)
    # an upstream gradient in another dtype is converted as on CPU
    got = torch.ops.posenc.alibi_bias_backward(g.float(), s, 3, 5, 1, 0, False)
    torch.testing.assert_close(got.cpu(), torch.ops.posenc.alibi_bias_backward(g.float().cpu(), s.cpu(), 3, 5, 1, 0, False))


@pytest.mark.parametrize("h,q_len,k_len", [(0, 3, 3), (2, 0, 3), (2, 3, 0), (1, 1, 1)])
def test_C06_empty_and_unit_sizes(h, q_len, k_len):
    slopes = torch.rand(h, device=DEV, requires_grad=True)
    out = ops.alibi_bias(slopes, q_len, k_len)
    assert out.shape == (h, q_len, k_len) and out.device.type == DEV
    torch.testing.assert_close(out.detach().cpu().double(), ref_bias(slopes.detach().cpu(), q_len, k_len, 0, 0, True))
    out.sum().backward()
    assert slopes.grad.shape == (h,)
    if out.numel() == 0:
        assert torch.count_nonzero(slopes.grad) == 0


@pytest.mark.parametrize("causal", [True, False])
def test_long_keys(causal):
    # 300 x 70000 = 21M elements: more than 65535 blocks of 256, so the grid-stride loop runs;
    # the gradient splits each head into many chunks.
    slopes = ops.alibi_slopes(1)
    q_len, k_len = 300, 70000
    got = ops.alibi_bias(slopes.to(DEV), q_len, k_len, k_len - q_len, 0, causal)
    assert torch.equal(got.cpu(), ops.alibi_bias(slopes, q_len, k_len, k_len - q_len, 0, causal))
    g = torch.randn(1, q_len, k_len)
    back = torch.ops.posenc.alibi_bias_backward(g.to(DEV), slopes.to(DEV), q_len, k_len, k_len - q_len, 0, causal)
    want = torch.ops.posenc.alibi_bias_backward(g, slopes, q_len, k_len, k_len - q_len, 0, causal)
    torch.testing.assert_close(back.cpu(), want, rtol=1e-6, atol=1e-6)


def test_wide_heads():
    # 70000 heads: 70000 blocks in the gradient's first pass (grid-stride), 70000 rows forward.
    slopes = torch.rand(70000)
    got = ops.alibi_bias(slopes.to(DEV), 2, 3, 1, 0, False)
    assert torch.equal(got.cpu(), ops.alibi_bias(slopes, 2, 3, 1, 0, False))
    g = torch.randn(70000, 2, 3)
    back = torch.ops.posenc.alibi_bias_backward(g.to(DEV), slopes.to(DEV), 2, 3, 1, 0, False)
    torch.testing.assert_close(back.cpu(), torch.ops.posenc.alibi_bias_backward(g, slopes, 2, 3, 1, 0, False))


def test_deterministic_gradient():
    slopes = torch.rand(8, device=DEV, requires_grad=True)
    g = torch.randn(8, 512, 1024, device=DEV)
    old = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        runs = [torch.autograd.grad(ops.alibi_bias(slopes, 512, 1024, 0, 0, False), slopes, g)[0] for _ in range(2)]
    finally:
        torch.use_deterministic_algorithms(old)
    assert torch.equal(runs[0], runs[1])


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda s: ops.alibi_bias(s[None], 3, 3), r"posenc\.alibi_bias: argument 'slopes' must be a 1-D tensor"),
        (lambda s: ops.alibi_bias(s, -1, 3), r"argument 'q_len' must be >= 0, but got -1"),
        (lambda s: ops.alibi_bias(s, 2**40, 2**40), r"posenc\.alibi_bias: argument 'k_len' is too large: the output's size in bytes must fit in int64, but got an output of shape \[2, 1099511627776, 1099511627776\] and dtype Float"),
        (lambda s: ops.alibi_bias(s.long(), 3, 3), r"argument 'slopes' must have dtype float.*Long"),
        (lambda s: torch.ops.posenc.alibi_bias_backward(torch.ones(2, 3, 4, device=s.device), s, 3, 5, 0, 0, True),
         r"posenc\.alibi_bias_backward: argument 'grad' must have shape \(num_heads, q_len, k_len\) = \[2, 3, 5\], but got shape \[2, 3, 4\]"),
    ],
)
def test_bad_inputs_raise_and_device_keeps_working(call, match):
    s = torch.rand(2, device=DEV)
    with pytest.raises(RuntimeError, match=match):
        call(s)
    assert torch.equal(ops.alibi_bias(s, 2, 3).cpu(), ops.alibi_bias(s.cpu(), 2, 3))
    if DEV == "cuda":
        torch.cuda.synchronize()


@requires_real_cuda
def test_device_mismatch():
    s = torch.rand(2, device="cuda")
    with pytest.raises(RuntimeError, match=r"posenc\.alibi_bias_backward: argument 'grad' must be on the device of 'slopes' \(cuda:0\), but got device cpu"):
        torch.ops.posenc.alibi_bias_backward(torch.ones(2, 3, 3), s, 3, 3, 0, 0, True)
    with pytest.raises(RuntimeError, match=r"argument 'grad' must be on the device of 'slopes' \(cpu\)"):
        torch.ops.posenc.alibi_bias_backward(torch.ones(2, 3, 3, device="cuda"), s.cpu(), 3, 3, 0, 0, True)


@pytest.mark.parametrize("args", ALIBI_SAMPLES)
def test_opcheck(args):
    torch.library.opcheck(torch.ops.posenc.alibi_bias.default, to_device(args))


def test_opcheck_backward():
    s = torch.rand(3, device=DEV, dtype=F64)
    torch.library.opcheck(torch.ops.posenc.alibi_bias_backward.default, (torch.randn(3, 4, 6, device=DEV, dtype=F64), s, 4, 6, 2, 1, False))


def test_non_finite_slopes_checked_on_cpu_only():
    # Documented: the slopes are not read on the host on CUDA (that would sync every call), so
    # a NaN slope gives a NaN bias there; the CPU kernel rejects it.
    s = torch.tensor([0.5, float("nan")], device=DEV)
    if DEV == "cpu":
        with pytest.raises(RuntimeError, match=r"argument 'slopes' must be finite, but got slopes\[1\] = nan"):
            ops.alibi_bias(s, 2, 3)
    else:
        out = ops.alibi_bias(s, 2, 3).cpu()
        assert torch.isnan(out[1]).all() and not torch.isnan(out[0]).any()

