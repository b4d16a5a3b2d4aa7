"""Fused relative attention on CUDA: against the CPU kernel and the fp64 reference of
test_attention.py, forward and every gradient, each family and dtype; deterministic backward;
bad inputs checked before launch."""
import pytest
import torch
from conftest import CUDA_TEST_DEVICE as DEV
from conftest import requires_cuda, requires_real_cuda
from test_attention import FAMILIES, PARAM_NAMES, as64, call_op, leaves, reference, setup_case

from posenc import ops

pytestmark = [requires_cuda, pytest.mark.usefixtures("nan_filled_empty")]

TOLS = {
    torch.float64: dict(rtol=1e-10, atol=1e-10),
    torch.float32: dict(rtol=2e-5, atol=2e-5),
    torch.float16: dict(rtol=1e-2, atol=1e-2),
    torch.bfloat16: dict(rtol=5e-2, atol=5e-2),
}


def on(device, q, k, v, p):
    mv = lambda t: t.detach().to(device).requires_grad_()
    return mv(q), mv(k), mv(v), {n: (mv(t) if isinstance(t, torch.Tensor) else t) for n, t in p.items()}


def run(device, q, k, v, p, **kw):
    qd, kd, vd, pd = on(device, q, k, v, p)
    out, lse = call_op(qd, kd, vd, pd, **kw)
    gen = torch.Generator().manual_seed(11)
    g = torch.randn(out.shape, generator=gen).to(device, out.dtype)
    ls = leaves(qd, kd, vd, pd)
    grads = torch.autograd.grad((out * g).sum() + lse.nan_to_num(0, 0, 0).sum(), list(ls.values()))
    return [out, lse] + list(grads), list(ls), g


# (B, H, H_kv, Lq, Lk, D, q_offset, causal)
SHAPES = [
    (2, 4, 2, 37, 53, 16, 20, True),
    (1, 2, 1, 1, 300, 64, 299, True),  # decode step over a cache
    (1, 8, 8, 200, 200, 64, 0, False),
    (1, 2, 2, 129, 130, 128, 0, True),  # tile edges, head_dim 128
    (1, 1, 1, 65, 65, 256, 0, True),  # the largest head_dim
    (1, 2, 1, 40, 40, 13, 0, True),  # head_dim not a multiple of 8
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("family", FAMILIES)
def test_matches_cpu_and_reference(family, shape, dtype):
    B, H, Hkv, Lq, Lk, D, qo, causal = shape
    q, k, v, p = setup_case(family, B, H, Hkv, Lq, Lk, D, dtype, q_offset=qo)
    got, names, g = run(DEV, q, k, v, p, causal=causal, q_offset=qo)
    cpu, _, _ = run("cpu", q, k, v, p, causal=causal, q_offset=qo)
    tol = TOLS[dtype]
    for name, a, c in zip(["out", "lse"] + names, got, cpu):
        assert a.device.type == DEV and a.dtype == c.dtype and a.shape == c.shape, name
        assert not torch.isnan(a).any(), name
        scale = max(1.0, c.abs().max().item()) if name not in ("out", "lse") else 1.0
        fin = torch.isfinite(c)
        assert torch.equal(torch.isfinite(a.cpu()), fin), name
        torch.testing.assert_close(a.cpu()[fin].double(), c[fin].double(), rtol=tol["rtol"],
                                   atol=tol["atol"] * scale, msg=lambda s: f"{name} vs CPU: {s}")
    q64, k64, v64, p64 = as64(q, k, v, p)
    ref_out, _ = reference(q64, k64, v64, p64, family, causal=causal, q_offset=qo)
    torch.testing.assert_close(got[0].cpu().double(), ref_out, **tol)


@pytest.mark.parametrize("family", FAMILIES)
def test_padding_thd_and_empty_rows(family):
    q, k, v, p = setup_case(family, 2, 4, 1, 21, 30, 32, torch.float32, k_offset=5)
    kpm = torch.zeros(2, 30, dtype=torch.bool)
    kpm[1, :] = True
    kw = dict(causal=True, k_offset=5, key_padding_mask=kpm)
    got, names, _ = run(DEV, q, k, v, p, **{**kw, "key_padding_mask": kpm.to(DEV)})
    cpu, _, _ = run("cpu", q, k, v, p, **kw)
    for name, a, c in zip(["out", "lse"] + names, got, cpu):
        fin = torch.isfinite(c)
        assert torch.equal(torch.isfinite(a.cpu()), fin), name
        torch.testing.assert_close(a.cpu()[fin], c[fin], rtol=2e-5, atol=2e-5 * max(1.0, c[fin].abs().max().item()))
    assert (got[0][1] == 0).all()
    # packed sequences
    cu = torch.tensor([0, 5, 5, 22, 40])
    qt = torch.randn(40, 4, 16)
    kt = torch.randn(40, 2, 16)
    extra = {}
    if family in ("txl", "shaw"):
        extra["rel_emb"] = torch.randn(4, 81, 16) * 0.3
        if family == "txl":
            extra["q_rel"] = torch.randn(40, 4, 16)
        if family == "shaw":
            extra["max_distance"] = 5
    else:
        extra = {n: t for n, t in p.items() if n not in ("rel_emb", "q_rel")}
    kw = dict(causal=True, layout="thd", cu_seqlens_q=cu, max_seqlen_q=18, max_seqlen_k=18)
    a, _, _ = run(DEV, qt, kt, kt, extra, **{**kw, "cu_seqlens_q": cu.to(DEV)})
    c, _, _ = run("cpu", qt, kt, kt, extra, **kw)
    for x, y in zip(a, c):
        fin = torch.isfinite(y)
        torch.testing.assert_close(x.cpu()[fin], y[fin], rtol=2e-5, atol=2e-5 * max(1.0, y[fin].abs().max().item()))
    # int32 cu_seqlens (flash-attn's convention): the same bits as int64
    a32, _, _ = run(DEV, qt, kt, kt, extra, **{**kw, "cu_seqlens_q": cu.to(DEV, torch.int32)})
    for x, y in zip(a, a32):
        assert torch.equal(x, y)


@pytest.mark.parametrize("family", FAMILIES)
def test_backward_bit_identical_across_runs(family):
    q, k, v, p = setup_case(family, 1, 4, 2, 300, 300, 64, torch.float32, seed=2)
    a, _, _ = run(DEV, q, k, v, p, causal=True)
    b, _, _ = run(DEV, q, k, v, p, causal=True)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


@requires_real_cuda
def test_errors_before_launch_and_device_mix():
    q = torch.randn(1, 4, 8, 16, device="cuda")
    with pytest.raises(RuntimeError, match=r"posenc\.relative_attention: argument 'slopes'.*device"):
        ops.relative_attention(q, q, q, slopes=ops.alibi_slopes(4))
    with pytest.raises(RuntimeError, match=r"posenc\.relative_attention: argument 'k'.*device"):
        ops.relative_attention(q, q.cpu(), q)
    with pytest.raises(RuntimeError, match=r"posenc\.relative_attention: argument 'r2'"):
        ops.relative_attention(q, q, q, r1=torch.ones(4, device="cuda"), r2=-torch.ones(4, device="cuda"))
    out, _ = ops.relative_attention(q, q, q, causal=True)  # the context survives
    torch.cuda.synchronize()
    assert torch.isfinite(out).all()


@requires_real_cuda
def test_opcheck_cuda():
    q, k, v, p = setup_case("t5", 1, 2, 1, 6, 9, 8, torch.float32)
    qd, kd, vd, pd = on("cuda", q, k, v, p)
    torch.library.opcheck(torch.ops.posenc.relative_attention.default, (qd, kd, vd),
                          dict(table=pd["table"], max_distance=pd["max_distance"], causal=True))
