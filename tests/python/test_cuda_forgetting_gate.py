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


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("B,H,Hkv,Lq,Lk,q_off", [(2, 2, 2, 9, 9, 0), (1, 4, 2, 5, 130, 125), (1, 2, 1, 200, 200, 0)])
def test_fused_equals_cpu(dtype, B, H, Hkv, Lq, Lk, q_off):
    q = torch.randn(B, H, Lq, 16, dtype=dtype)
    k = torch.randn(B, Hkv, Lk, 16, dtype=dtype)
    v = torch.randn(B, Hkv, Lk, 16, dtype=dtype)
    lf = gates(B, H, Lk)
    ins = [t.requires_grad_(True) for t in (q, k, v, lf)]
    out, lse = ops.relative_attention(*ins[:3], causal=True, q_offset=q_off, log_fgate=ins[3])
    want = torch.autograd.grad(out.float().sum() + lse.sum(), ins)
    dins = [t.detach().to(DEV).requires_grad_(True) for t in ins]
    o2, l2 = ops.relative_attention(*dins[:3], causal=True, q_offset=q_off, log_fgate=dins[3])
    got = torch.autograd.grad(o2.float().sum() + l2.sum(), dins)
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=2e-2 if dtype == torch.bfloat16 else 2e-4, atol=2e-2 if dtype == torch.bfloat16 else 2e-4)
    torch.testing.assert_close(o2.cpu(), out, **tol)
    torch.testing.assert_close(l2.cpu(), lse, **tol)
    for a, b in zip(got, want):
        torch.testing.assert_close(a.cpu(), b, **tol)
    again = torch.autograd.grad(sum(t.float().sum() for t in ops.relative_attention(*dins[:3], causal=True, q_offset=q_off, log_fgate=dins[3])), dins)
    again0 = torch.autograd.grad(sum(t.float().sum() for t in ops.relative_attention(*dins[:3], causal=True, q_offset=q_off, log_fgate=dins[3])), dins)
    for a, b in zip(again, again0):
        assert torch.equal(a, b)


def test_fused_thd_equals_cpu():
    cu = torch.tensor([0, 5, 14, 17])
    q, k, v = torch.randn(17, 4, 8), torch.randn(17, 2, 8), torch.randn(17, 2, 8)
    lf = gates(17, 4)
    ins = [t.requires_grad_(True) for t in (q, k, v, lf)]
    out, lse = ops.relative_attention(*ins[:3], causal=True, layout="thd", cu_seqlens_q=cu, log_fgate=ins[3])
    want = torch.autograd.grad(out.sum() + lse.sum(), ins)
    dins = [t.detach().to(DEV).requires_grad_(True) for t in ins]
    o2, l2 = ops.relative_attention(*dins[:3], causal=True, layout="thd", cu_seqlens_q=cu.to(DEV), log_fgate=dins[3])
    got = torch.autograd.grad(o2.sum() + l2.sum(), dins)
    torch.testing.assert_close(o2.cpu(), out, rtol=2e-4, atol=2e-4)
    for a, b in zip(got, want):
        torch.testing.assert_close(a.cpu(), b, rtol=2e-4, atol=2e-4)
