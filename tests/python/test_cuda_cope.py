"""CoPE on CUDA: forward and the three gradients against the fp64 reference of test_cope (the
paper's listing), decode consistency, determinism of the backward, bad inputs. Skipped without a
CUDA device (the kernel is compile-checked on CPU-only machines)."""
import pytest
import torch
from conftest import FLOAT_DTYPES, TOL
from test_cope import SHAPES, make, ref_cope

from posenc import ops

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

DEV = "cuda"

CUDA_SHAPES = SHAPES + [
    (1, 2, 300, 700, 16, 64, 400, 0, None),  # several 256-key chunks per row, clamping inside one
    (2, 1, 40, 600, 8, 900, 560, 0, None),  # npos_max > any position: every key walked
]


def _tol(dtype, want):
    if dtype == torch.float64:
        return TOL[dtype]
    mag = max(1.0, want.abs().max().item())
    if dtype == torch.float32:
        return dict(rtol=1e-4, atol=1e-4 * mag)
    return dict(rtol=TOL[dtype]["rtol"], atol=2 * TOL[dtype]["atol"] * mag)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape", CUDA_SHAPES)
def test_forward_and_grads_match_reference(dtype, shape):
    b, h, lq, lk, d, npos, qo, ko, scale = shape
    q, k, e = (t.to(DEV).requires_grad_() for t in make(b, h, lq, lk, d, npos, dtype))
    g = torch.randn(b, h, lq, lk, dtype=torch.float64)
    out = ops.cope_scores(q, k, e, scale, qo, ko)
    assert out.device.type == "cuda" and out.dtype == dtype and out.is_contiguous()
    out.backward(g.to(DEV, dtype))
    q2, k2, e2 = (t.detach().cpu().double().requires_grad_() for t in (q, k, e))
    want = ref_cope(q2, k2, e2, scale, qo, ko)
    want.backward(g)
    torch.testing.assert_close(out.detach().cpu().double(), want.detach(), **_tol(dtype, want))
    for got, ref in ((q.grad, q2.grad), (k.grad, k2.grad), (e.grad, e2.grad)):
        torch.testing.assert_close(got.cpu().double(), ref, **_tol(dtype, ref))


def test_decode_equals_last_row_and_backward_is_deterministic():
    q, k, e = (t.to(DEV) for t in make(2, 3, 300, 300, 16, 32, torch.float32))
    full = ops.cope_scores(q, k, e)
    assert torch.equal(ops.cope_scores(q[:, :, -1:], k, e, None, 299, 0), full[:, :, -1:])
    g = torch.randn_like(full)
    a = torch.ops.posenc.cope_scores_backward(g, q, k, e, None, 0, 0)
    b = torch.ops.posenc.cope_scores_backward(g, q, k, e, None, 0, 0)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def test_bad_inputs_on_cuda():
    q = torch.randn(1, 2, 3, 4, device=DEV)
    with pytest.raises(RuntimeError, match=r"posenc\.cope_scores: argument 'k' must be on the device of 'q'"):
        ops.cope_scores(q, torch.randn(1, 2, 3, 4), torch.randn(5, 4, device=DEV))
    with pytest.raises(RuntimeError, match=r"posenc\.cope_scores: argument 'pos_emb' must have q's head_dim \(4\)"):
        ops.cope_scores(q, q, torch.randn(5, 3, device=DEV))
