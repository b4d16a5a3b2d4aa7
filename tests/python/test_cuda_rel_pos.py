"""Relative position scores CUDA kernels against the CPU kernels and the fp64 reference of
test_rel_pos.py (Transformer-XL, Dai et al. 2019 §3.3; Shaw et al. 2018 eq. 5)."""
import pytest
import torch
from conftest import CUDA_TEST_DEVICE as DEV
from conftest import FLOAT_DTYPES, TOL, requires_cuda, requires_real_cuda, to_device
from test_rel_pos import SAMPLES as REL_POS_SAMPLES
from test_rel_pos import SHAPES as REL_POS_SHAPES
from test_rel_pos import make, ref_scores

from posenc import ops

pytestmark = [requires_cuda, pytest.mark.usefixtures("nan_filled_empty")]

F64 = torch.float64

SHAPES = REL_POS_SHAPES + [
    # (B, H, Lq, D, R, q_offset, k_offset, k_len, max_distance)
    (4, 1, 512, 8, 5, 0, 0, 512, None),  # few rel_emb rows, many queries: split reduction
    (1, 2, 3, 200, 9, 0, 0, 300, 3),  # head_dim and keys beyond one block of threads
    (2, 2, 5, 4, 11, -(2**61), 2**61, 6, None),  # offsets far apart: every key clipped
]


def tol(dtype):
    # fp32 dot products summed in another order than on CPU and in the reference
    return dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else TOL[dtype]


def grads_on(device, q, e, g, args):
    qd, ed = q.to(device).requires_grad_(), e.to(device).requires_grad_()
    out = ops.rel_pos_scores(qd, ed, *args)
    return (out, *torch.autograd.grad(out, (qd, ed), g.to(device)))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_backward_match_cpu_and_reference(shape, dtype):
    b, h, q_len, d, r, q_off, k_off, k_len, m = shape
    q, e = (t.to(dtype) for t in make(b, h, q_len, d, r))
    g = torch.randn(b, h, q_len, k_len, dtype=F64).to(dtype)
    args = (q_off, k_off, k_len, m)
    got, cpu = grads_on(DEV, q, e, g, args), grads_on("cpu", q, e, g, args)
    q64, e64 = q.double().requires_grad_(), e.double().requires_grad_()
    ref = ref_scores(q64, e64, *args)
    want = (ref, *torch.autograd.grad(ref, (q64, e64), g.double()))
    for name, a, c, w in zip(("out", "grad_q", "grad_rel_emb"), got, cpu, want):
        assert a.device.type == DEV and a.dtype == dtype and a.shape == c.shape and a.is_contiguous(), name
        torch.testing.assert_close(a.cpu(), c, **tol(dtype), msg=lambda s: f"{name} vs CPU: {s}")
        torch.testing.assert_close(a.cpu().double(), w, **tol(dtype), msg=lambda s: f"{name} vs reference: {s}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_q_row_too_large_for_shared_memory(dtype):
    # head_dim * sizeof(opmath) > 40 KiB: the forward reads q from global memory instead.
    d = 6000 if dtype == F64 else 11000
    q, e = (t.to(dtype) for t in make(1, 2, 3, d, 7))
    g = torch.randn(1, 2, 3, 6, dtype=dtype)
    args = (2, 0, 6, 2)
    for a, c in zip(grads_on(DEV, q, e, g, args), grads_on("cpu", q, e, g, args)):
        torch.testing.assert_close(a.cpu(), c, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("m", [None, 0, 5])
def test_long_keys(m):
    # k_len 70000 (Transformer-XL memory): a query row spans many thread strides.
    q, e = make(1, 2, 3, 8, 129, dtype=torch.float32)
    g = torch.randn(1, 2, 3, 70000)
    args = (69997, 0, 70000, m)
    for a, c in zip(grads_on(DEV, q, e, g, args), grads_on("cpu", q, e, g, args)):
        torch.testing.assert_close(a.cpu(), c, rtol=1e-5, atol=1e-4)


def test_long_table():
    # bidirectional with unclipped distances up to 70000: R = 2 * 70000 + 1 rows
    q, e = make(1, 1, 4, 4, 140001, dtype=torch.float32)
    g = torch.randn(1, 1, 4, 70000)
    args = (35000, 0, 70000, None)
    for a, c in zip(grads_on(DEV, q, e, g, args), grads_on("cpu", q, e, g, args)):
        torch.testing.assert_close(a.cpu(), c, rtol=1e-5, atol=1e-5)


def test_wide_batch_times_heads():
    # 70000 heads: 70000 query rows forward and 210000 (head, row) blocks backward.
    q, e = make(1, 70000, 1, 4, 3, dtype=torch.float32)
    g = torch.randn(1, 70000, 1, 2)
    args = (1, 0, 2, None)
    for a, c in zip(grads_on(DEV, q, e, g, args), grads_on("cpu", q, e, g, args)):
        torch.testing.assert_close(a.cpu(), c, rtol=1e-5, atol=1e-5)
    q, e = make(300, 300, 1, 4, 3, dtype=torch.float32)  # batch * heads = 90000
    g = torch.randn(300, 300, 1, 2)
    for a, c in zip(grads_on(DEV, q, e, g, args), grads_on("cpu", q, e, g, args)):
        torch.testing.assert_close(a.cpu(), c, rtol=1e-5, atol=1e-5)


def test_deterministic_backward():
    q, e = make(4, 4, 256, 32, 65, dtype=torch.float32)
    q, e = q.to(DEV), e.to(DEV)
    g = torch.randn(4, 4, 256, 300, device=DEV)
    old = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        runs = [torch.ops.posenc.rel_pos_scores_backward(g, q, e, 44, 0, 300, m) for m in (None, None, 8, 8)]
    finally:
        torch.use_deterministic_algorithms(old)
    for a, b in ((runs[0], runs[1]), (runs[2], runs[3])):
        assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_C14_memory_offset_true_distances():
    c = 4
    q = torch.ones(1, 1, 3, 1, dtype=F64, device=DEV)
    e = (torch.arange(2 * c + 1, dtype=F64, device=DEV) - c).view(1, -1, 1)
    got = ops.rel_pos_scores(q, e, q_offset=2, k_offset=0, k_len=5)[0, 0].cpu()
    want = torch.tensor([[2.0, 1.0, 0.0, -1.0, -2.0], [3.0, 2.0, 1.0, 0.0, -1.0], [4.0, 3.0, 2.0, 1.0, 0.0]], dtype=F64)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("m", [None, 3])
def test_C09_incremental_rows_equal_full(m):
    q, e = make(2, 3, 10, 8, 9, dtype=torch.float32)
    q, e = q.to(DEV), e.to(DEV)
    full = ops.rel_pos_scores(q, e, 0, 0, 10, m)
    for p in range(10):
        row = ops.rel_pos_scores(q[:, :, p : p + 1], e, q_offset=p, k_offset=0, k_len=p + 1, max_distance=m)
        torch.testing.assert_close(row[:, :, 0], full[:, :, p, : p + 1], rtol=0, atol=1e-6)
    torch.testing.assert_close(ops.rel_pos_scores(q[:, :, 5:8], e, 5, 0, 10, m), full[:, :, 5:8], rtol=0, atol=1e-6)
    torch.testing.assert_close(ops.rel_pos_scores(q, e, 0, 4, 3, m), full[..., 4:7], rtol=0, atol=1e-6)


def test_C07_non_contiguous_inputs():
    b, h, l, d, r = 2, 3, 5, 8, 9
    qkv = torch.randn(b, l, 3 * h * d, device=DEV)
    before = qkv.clone()
    q = qkv[..., : h * d].view(b, l, h, d).transpose(1, 2)
    e = torch.randn(r, h, d, device=DEV).transpose(0, 1)
    assert not q.is_contiguous() and not e.is_contiguous()
    got = ops.rel_pos_scores(q, e, 2, 0, 7, 3)
    assert torch.equal(got, ops.rel_pos_scores(q.contiguous(), e.contiguous(), 2, 0, 7, 3))
    torch.testing.assert_close(got.cpu(), ops.rel_pos_scores(q.cpu(), e.cpu(), 2, 0, 7, 3))
    assert torch.equal(qkv, before)
    q4 = q[..., 4:]  # the last 4 of 8 dims of a head: last-dim offset, row strides of 24
    e4 = torch.randn(h, r, 8, device=DEV)[..., 4:]
    g = torch.randn(7, b, h, l, device=DEV).permute(1, 2, 3, 0)
    assert torch.equal(ops.rel_pos_scores(q4, e4, 2, 0, 7), ops.rel_pos_scores(q4.contiguous(), e4.contiguous(), 2, 0, 7))
    gq, ge = torch.ops.posenc.rel_pos_scores_backward(g, q4, e4, 2, 0, 7, None)
    gq2, ge2 = torch.ops.posenc.rel_pos_scores_backward(g.contiguous(), q4.contiguous(), e4.contiguous(), 2, 0, 7, None)
    assert torch.equal(gq, gq2) and torch.equal(ge, ge2)
    q2 = q[..., ::2]  # last-dim stride 2
    e2 = torch.randn(h, r, 4, device=DEV)
    assert torch.equal(ops.rel_pos_scores(q2, e2, 1, 0, 6, 2), ops.rel_pos_scores(q2.contiguous(), e2, 1, 0, 6, 2))
    # an expanded upstream gradient (stride 0), as from out.sum().backward()
    ones = torch.ones(1, 1, 1, 1, device=DEV).expand(b, h, l, 7)
    a = torch.ops.posenc.rel_pos_scores_backward(ones, q4, e4, 2, 0, 7, 1)
    c = torch.ops.posenc.rel_pos_scores_backward(ones.cpu(), q4.cpu(), e4.cpu(), 2, 0, 7, 1)
    for x, y in zip(a, c):
        torch.testing.assert_close(x.cpu(), y)


@pytest.mark.parametrize(
    "b,h,q_len,d,r,k_len",
    [(0, 2, 3, 4, 5, 3), (1, 0, 3, 4, 5, 3), (1, 2, 0, 4, 5, 3), (1, 2, 3, 0, 5, 3),
     (1, 2, 3, 4, 5, 0), (1, 1, 1, 1, 1, 1), (1, 2, 3, 4, 1, 4), (1, 1, 1, 1, 3, 1)],
)
def test_C06_empty_and_unit_sizes(b, h, q_len, d, r, k_len):
    q, e = make(b, h, q_len, d, r)
    q, e = q.to(DEV).requires_grad_(), e.to(DEV).requires_grad_()
    out = ops.rel_pos_scores(q, e, 1, 0, k_len)
    assert out.shape == (b, h, q_len, k_len) and out.device.type == DEV
    torch.testing.assert_close(out.detach().cpu(), ref_scores(q.detach().cpu(), e.detach().cpu(), 1, 0, k_len))
    g = torch.randn_like(out)
    (out * g).sum().backward()
    assert q.grad.shape == q.shape and e.grad.shape == e.shape
    if out.numel() == 0:
        assert not q.grad.any() and not e.grad.any()
    else:
        q2, e2 = q.detach().cpu().requires_grad_(), e.detach().cpu().requires_grad_()
        (ref_scores(q2, e2, 1, 0, k_len) * g.cpu()).sum().backward()
        torch.testing.assert_close(q.grad.cpu(), q2.grad)
        torch.testing.assert_close(e.grad.cpu(), e2.grad)


Q = torch.randn(1, 2, 3, 4)
E = torch.randn(2, 7, 4)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda q, e: ops.rel_pos_scores(q, e[:, :6]), r"posenc\.rel_pos_scores: argument 'rel_emb' must have an odd number of rows"),
        (lambda q, e: ops.rel_pos_scores(q, e, max_distance=4), r"argument 'max_distance' must be in \[0, c\] with c = \(R - 1\) / 2 = 3, but got 4"),
        (lambda q, e: ops.rel_pos_scores(q, e[:, :, :3]), r"argument 'rel_emb' must have q's head_dim \(4\) in dim 2"),
        (lambda q, e: ops.rel_pos_scores(q, e.double()), r"argument 'rel_emb' must have the dtype of 'q' \(Float\), but got dtype Double"),
        (lambda q, e: ops.rel_pos_scores(q, e, 0, 0, -1), r"argument 'k_len' must be >= 0, but got -1"),
        (lambda q, e: ops.rel_pos_scores(q, e, 0, 0, 2**62), r"posenc\.rel_pos_scores: argument 'k_len' is too large: the output's size in bytes must fit in int64, but got an output of shape \[1, 2, 3, 4611686018427387904\] and dtype Float"),
        (lambda q, e: torch.ops.posenc.rel_pos_scores_backward(torch.randn(1, 2, 3, 6, device=q.device), q, e, 0, 0, 5, None),
         r"posenc\.rel_pos_scores_backward: argument 'grad' must have shape \(batch, heads, q_len, k_len\) = \[1, 2, 3, 5\]"),
    ],
)
def test_bad_inputs_raise_and_device_keeps_working(call, match):
    q, e = Q.to(DEV), E.to(DEV)
    with pytest.raises(RuntimeError, match=match):
        call(q, e)
    torch.testing.assert_close(ops.rel_pos_scores(q, e, 1, 0, 4).cpu(), ops.rel_pos_scores(Q, E, 1, 0, 4))
    if DEV == "cuda":
        torch.cuda.synchronize()


@requires_real_cuda
def test_device_mismatch():
    q, e = Q.cuda(), E.cuda()
    with pytest.raises(RuntimeError, match=r"posenc\.rel_pos_scores: argument 'rel_emb' must be on the device of 'q' \(cuda:0\), but got device cpu"):
        ops.rel_pos_scores(q, E)
    with pytest.raises(RuntimeError, match=r"argument 'rel_emb' must be on the device of 'q' \(cpu\)"):
        ops.rel_pos_scores(Q, e)
    with pytest.raises(RuntimeError, match=r"posenc\.rel_pos_scores_backward: argument 'grad' must be on the device of 'q'"):
        torch.ops.posenc.rel_pos_scores_backward(torch.randn(1, 2, 3, 3), q, e, 0, 0, 3, None)


@pytest.mark.parametrize("args,kwargs", REL_POS_SAMPLES)
def test_opcheck(args, kwargs):
    torch.library.opcheck(torch.ops.posenc.rel_pos_scores.default, to_device(args), kwargs)


@pytest.mark.parametrize("args,kwargs", REL_POS_SAMPLES)
def test_opcheck_backward(args, kwargs):
    q, e, q_off, k_off, k_len = to_device(args)
    g = torch.randn(*q.shape[:3], k_len, dtype=q.dtype, device=q.device)
    bargs = (g, q.detach(), e.detach(), q_off, k_off, k_len, kwargs.get("max_distance"))
    torch.library.opcheck(torch.ops.posenc.rel_pos_scores_backward.default, bargs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
def test_causal_matches_cpu(shape, dtype):
    # causal=True: keys after the query are 0 and pass no gradient, as on the CPU
    b, h, q_len, d, r, q_off, k_off, k_len, m = shape
    q, e = (t.to(dtype) for t in make(b, h, q_len, d, r))
    g = torch.randn(b, h, q_len, k_len, dtype=F64).to(dtype)
    args = (q_off, k_off, k_len, m, True)
    got = grads_on(DEV, q, e, g, args)
    want = grads_on("cpu", q, e, g, args)
    for name, a, w in zip(("out", "grad_q", "grad_rel_emb"), got, want):
        scale = max(1.0, w.abs().max().item() / 8) if name == "grad_rel_emb" else 1.0
        t = {k_: v_ * scale for k_, v_ in tol(dtype).items()}
        torch.testing.assert_close(a.cpu(), w, **t, msg=lambda s: f"{name}: {s}")
