"""Forgetting gate on CUDA (bias op and the fused attention term) against the CPU kernels,
which test_forgetting_gate checks against the fp64 reference; determinism of the log_fgate
gradient across runs. Skips without a GPU (POSENC_CUDA_TEST_DEVICE=cpu: a dry run on the CPU)."""
import pytest
import torch
import torch.nn.functional as F
from conftest import CUDA_TEST_DEVICE, requires_cuda

from posenc import ops

pytestmark = requires_cuda
DEV = CUDA_TEST_DEVICE


def gates(*shape, dtype=torch.float32):
    return F.logsigmoid(torch.randn(*shape, dtype=torch.float64) * 2 + 1).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("B,H,K,q_len,q_off", [(2, 3, 7, 7, 0), (1, 2, 300, 5, 295), (2, 1, 1000, 1, 999), (1, 4, 65, 65, 0)])
def test_bias_forward_backward_equal_cpu(dtype, B, H, K, q_len, q_off):
    lf = gates(B, H, K, dtype=dtype)
    g = torch.randn(B, H, q_len, K, dtype=dtype)
    want = ops.forgetting_gate_bias(lf, q_len, q_off)
    x = lf.to(DEV).requires_grad_(True)
    got = ops.forgetting_gate_bias(x, q_len, q_off)
    # fp64 prefix sums in another order (chunked scan): equal up to the output's rounding
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=torch.finfo(dtype).eps, atol=1e-6)
    torch.testing.assert_close(got.cpu(), want, **tol)
    (gx,) = torch.autograd.grad(got, x, g.to(DEV))
    (gc,) = torch.autograd.grad(ops.forgetting_gate_bias(lf.requires_grad_(True), q_len, q_off), lf, g)
    torch.testing.assert_close(gx.cpu(), gc, **(tol if dtype == torch.float64 else dict(rtol=2 * torch.finfo(dtype).eps, atol=1e-4)))
    (gx2,) = torch.autograd.grad(ops.forgetting_gate_bias(x, q_len, q_off), x, g.to(DEV))
    assert torch.equal(gx, gx2)

