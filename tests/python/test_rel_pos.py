"""Relative position scores (Transformer-XL terms (b)+(d), Dai et al. 2019 §3.3; Shaw et al.
2018 eq. 5) against an fp64 reference that gathers rel_emb rows by distance, then contracts."""
import pytest
import torch
from conftest import FLOAT_DTYPES, TOL

from posenc import ops


def ref_index(q_len, k_len, q_offset, k_offset, c, m):
    """(q_len, k_len) rows of rel_emb: c + clamp(q_pos - k_pos, -M, M)."""
    qp = torch.arange(q_len, dtype=torch.int64) + q_offset
    kp = torch.arange(k_len, dtype=torch.int64) + k_offset
    return c + (qp[:, None] - kp[None, :]).clamp(-m, m)


def ref_scores(q, rel_emb, q_offset=0, k_offset=0, k_len=None, max_distance=None):
    q_len = q.shape[2]
    if k_len is None:
        k_len = q_offset + q_len - k_offset
    c = (rel_emb.shape[1] - 1) // 2
    m = c if max_distance is None else max_distance
    idx = ref_index(q_len, k_len, q_offset, k_offset, c, m)
    gathered = rel_emb.double()[:, idx]  # (H, Lq, k_len, D)
    return torch.einsum("bhid,hijd->bhij", q.double(), gathered)


def rel_shift(x):
    """Transformer-XL's pad-and-reshape shift (Dai et al. 2019, appendix B) of x (q_len, k_len)
    whose column m holds the term for distance k_len - 1 - m."""
    q_len, k_len = x.shape
    padded = torch.cat([x.new_zeros(q_len, 1), x], dim=1).view(k_len + 1, q_len)
    return padded[1:].view(q_len, k_len)


def make(b, h, q_len, d, r, dtype=torch.float64, requires_grad=False):
    q = torch.randn(b, h, q_len, d, dtype=dtype, requires_grad=requires_grad)
    e = torch.randn(h, r, d, dtype=dtype, requires_grad=requires_grad)
    return q, e


# (B, H, Lq, D, R, q_offset, k_offset, k_len, max_distance)
SHAPES = [
    (2, 3, 5, 8, 11, 0, 0, 5, None),  # square, no clipping reached
    (1, 2, 3, 4, 9, 2, 0, 5, None),  # Transformer-XL memory of 2
    (2, 2, 4, 16, 7, 6, 0, 10, None),  # distances past c: clipped to the edge rows
    (1, 3, 6, 5, 9, 0, 0, 6, 2),  # Shaw clipping, M < c
    (2, 1, 7, 3, 5, 3, 1, 12, 0),  # M = 0: every key uses row c
    (1, 2, 4, 9, 13, -5, -3, 7, 4),  # negative offsets
    (1, 1, 3, 2, 5, 0, 5, 4, None),  # keys after the queries (bidirectional lookahead)
    (1, 2, 2, 33, 15, 100, 0, 101, 6),  # long memory, mostly clipped
]


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_matches_reference(dtype, shape):
    b, h, q_len, d, r, q_off, k_off, k_len, m = shape
    q, e = make(b, h, q_len, d, r, dtype=dtype)
    got = ops.rel_pos_scores(q, e, q_off, k_off, k_len, m)
    assert got.dtype == dtype and got.shape == (b, h, q_len, k_len) and got.is_contiguous()
    want = ref_scores(q, e, q_off, k_off, k_len, m)
    tol = TOL[dtype] if dtype != torch.float32 else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.double(), want, **tol)


def test_default_k_len_ends_with_last_query():
    q, e = make(1, 2, 3, 4, 9)
    got = ops.rel_pos_scores(q, e, q_offset=4)
    assert got.shape == (1, 2, 3, 7)
    torch.testing.assert_close(got, ref_scores(q, e, 4, 0, 7))


@pytest.mark.parametrize("shape", SHAPES)
def test_gradcheck(shape):
    b, h, q_len, d, r, q_off, k_off, k_len, m = shape
    q, e = make(min(b, 2), h, min(q_len, 4), min(d, 5), r, requires_grad=True)
    k_len = min(k_len, 8)
    assert torch.autograd.gradcheck(
        lambda q, e: ops.rel_pos_scores(q, e, q_off, k_off, k_len, m), (q, e)
    )


@pytest.mark.parametrize("m", [None, 0, 2])
def test_grad_against_reference(m):
    q, e = make(2, 3, 5, 6, 7, requires_grad=True)
    g = torch.randn(2, 3, 5, 9, dtype=torch.float64)
    (ops.rel_pos_scores(q, e, 3, 1, 9, m) * g).sum().backward()
    q2, e2 = q.detach().clone().requires_grad_(), e.detach().clone().requires_grad_()
    (ref_scores(q2, e2, 3, 1, 9, m) * g).sum().backward()
    torch.testing.assert_close(q.grad, q2.grad)
    torch.testing.assert_close(e.grad, e2.grad)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_grad_low_precision_against_reference(dtype):
    q, e = make(2, 2, 6, 8, 9)
    g = torch.randn(2, 2, 6, 10, dtype=torch.float64)
    gq, ge = torch.ops.posenc.rel_pos_scores_backward(
        g.to(dtype), q.to(dtype), e.to(dtype), 4, 0, 10, 3
    )
    assert gq.dtype == dtype and ge.dtype == dtype
    q2, e2 = q.to(dtype).double().requires_grad_(), e.to(dtype).double().requires_grad_()
    (ref_scores(q2, e2, 4, 0, 10, 3) * g.to(dtype).double()).sum().backward()
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else TOL[dtype]
    torch.testing.assert_close(gq.double(), q2.grad, **tol)
    torch.testing.assert_close(ge.double(), e2.grad, **tol)


def test_backward_deterministic_across_threads():
    q, e = make(3, 2, 17, 8, 9, dtype=torch.float32)
    g = torch.randn(3, 2, 17, 20)
    args = (g, q, e, 5, 0, 20, None)
    first = torch.ops.posenc.rel_pos_scores_backward(*args)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = torch.ops.posenc.rel_pos_scores_backward(*args)
    finally:
        torch.set_num_threads(old)
    again = torch.ops.posenc.rel_pos_scores_backward(*args)
    for a, b_, c in zip(first, single, again):
        assert torch.equal(a, b_) and torch.equal(a, c)


def test_C14_memory_offset_true_distances_vs_rel_shift():
    # q_len 3, memory 2, k_len 5: query i at absolute position i + 2, key j at j.
    # With D = 1, q = 1 and rel_emb row c + d holding d, the score is the distance itself.
    c = 4
    q = torch.ones(1, 1, 3, 1, dtype=torch.float64)
    e = (torch.arange(2 * c + 1, dtype=torch.float64) - c).view(1, -1, 1)
    got = ops.rel_pos_scores(q, e, q_offset=2, k_offset=0, k_len=5)[0, 0]
    want = torch.tensor(
        [[2.0, 1.0, 0.0, -1.0, -2.0], [3.0, 2.0, 1.0, 0.0, -1.0], [4.0, 3.0, 2.0, 1.0, 0.0]],
        dtype=torch.float64,
    )
    torch.testing.assert_close(got, want, rtol=0, atol=0)

    # Transformer-XL's way: BD = q · R^T against R for distances k_len-1, ..., 0, then shift.
    bd = q[0, 0] @ e[0, c + torch.arange(4, -1, -1)].T
    shifted = rel_shift(bd)
    torch.testing.assert_close(
        shifted,
        torch.tensor([[2.0, 1.0, 0.0, 0.0, 4.0], [3.0, 2.0, 1.0, 0.0, 0.0], [4.0, 3.0, 2.0, 1.0, 0.0]],
                     dtype=torch.float64),
    )
    causal = torch.ones(3, 5, dtype=torch.bool).tril(diagonal=2)
    torch.testing.assert_close(got[causal], shifted[causal], rtol=0, atol=0)
    # right of the diagonal: a zero and a value borrowed from the next row vs the true -1, -2
    assert not torch.equal(got[~causal], shifted[~causal])
    torch.testing.assert_close(got[~causal], torch.tensor([-1.0, -2.0, -1.0], dtype=torch.float64))


def test_C14_random_lower_triangle_equals_rel_shift():
    q_len, mem, d, c = 4, 3, 6, 7
    k_len = q_len + mem
    q, e = make(1, 1, q_len, d, 2 * c + 1)
    got = ops.rel_pos_scores(q, e, q_offset=mem, k_offset=0, k_len=k_len)[0, 0]
    bd = q[0, 0] @ e[0, c + torch.arange(k_len - 1, -1, -1)].T
    shifted = rel_shift(bd)
    causal = torch.ones(q_len, k_len, dtype=torch.bool).tril(diagonal=mem)
    torch.testing.assert_close(got[causal], shifted[causal])
    # bidirectional part: the true negative distances, as the reference gathers them
    torch.testing.assert_close(got, ref_scores(q, e, mem, 0, k_len)[0, 0])
    assert not torch.allclose(got[~causal], shifted[~causal])


def test_shaw_clipping_uses_edge_rows():
    # Shaw et al. eq. 5: clip(j - i, k) with k = 2; our distance is q_pos - k_pos.
    c, m = 4, 2
    q = torch.ones(1, 1, 6, 1, dtype=torch.float64)
    e = (torch.arange(2 * c + 1, dtype=torch.float64) - c).view(1, -1, 1)
    got = ops.rel_pos_scores(q, e, 0, 0, 6, max_distance=m)[0, 0]
    d = torch.arange(6)[:, None] - torch.arange(6)[None, :]
    torch.testing.assert_close(got, d.clamp(-m, m).double(), rtol=0, atol=0)
    # a table of exactly 2k + 1 rows (Shaw's own size) with the default M = c clips likewise
    q2, e2 = make(2, 3, 8, 5, 2 * m + 1)
    out = ops.rel_pos_scores(q2, e2, 0, 0, 8)
    far_past = torch.einsum("bhid,hd->bhi", q2, e2[:, 2 * m])  # d >= M: row c + M
    far_future = torch.einsum("bhid,hd->bhi", q2, e2[:, 0])  # d <= -M: row c - M
    torch.testing.assert_close(out[:, :, 7, 0], far_past[:, :, 7])
    torch.testing.assert_close(out[:, :, 0, 7], far_future[:, :, 0])
    torch.testing.assert_close(out, ref_scores(q2, e2, 0, 0, 8))


def test_extreme_offsets_do_not_overflow():
    q, e = make(1, 2, 3, 4, 7)
    big = 2**62
    past = ops.rel_pos_scores(q, e, big, -big, 4)  # q_pos - k_pos overflows int64
    torch.testing.assert_close(past, torch.einsum("bhid,hd->bhi", q, e[:, 6])[..., None].expand(-1, -1, -1, 4))
    future = ops.rel_pos_scores(q, e, -big - 5, big, 4, max_distance=1)  # underflows
    torch.testing.assert_close(future, torch.einsum("bhid,hd->bhi", q, e[:, 2])[..., None].expand(-1, -1, -1, 4))


@pytest.mark.parametrize("m", [None, 3])
def test_C09_incremental_rows_equal_full(m):
    q, e = make(2, 3, 10, 8, 9, dtype=torch.float32)
    full = ops.rel_pos_scores(q, e, 0, 0, 10, m)
    for p in range(10):
        row = ops.rel_pos_scores(q[:, :, p : p + 1], e, q_offset=p, k_offset=0, k_len=p + 1, max_distance=m)
        torch.testing.assert_close(row[:, :, 0], full[:, :, p, : p + 1], rtol=0, atol=1e-6)
    block = ops.rel_pos_scores(q[:, :, 5:8], e, 5, 0, 10, m)
    torch.testing.assert_close(block, full[:, :, 5:8], rtol=0, atol=1e-6)
    # a key window (sharded keys) equals the matching columns
    window = ops.rel_pos_scores(q, e, 0, 4, 3, m)
    torch.testing.assert_close(window, full[..., 4:7], rtol=0, atol=1e-6)


def test_C07_non_contiguous_inputs():
    # q is a column slice of a packed (B, L, 3*H*D) qkv buffer seen as (B, H, L, D).
    b, h, l, d, r = 2, 3, 5, 8, 9
    qkv = torch.randn(b, l, 3 * h * d)
    q = qkv[..., : h * d].view(b, l, h, d).transpose(1, 2)
    e = torch.randn(r, h, d).transpose(0, 1)
    assert not q.is_contiguous() and not e.is_contiguous()
    before = qkv.clone()
    got = ops.rel_pos_scores(q, e, 2, 0, 7, 3)
    torch.testing.assert_close(got, ops.rel_pos_scores(q.contiguous(), e.contiguous(), 2, 0, 7, 3), rtol=0, atol=0)
    assert torch.equal(qkv, before)
    # the last 4 of 8 dims of a head, and a non-contiguous upstream gradient
    q4 = q[..., 4:]
    e4 = torch.randn(h, r, 8)[..., 4:]
    g = torch.randn(7, b, h, l).permute(1, 2, 3, 0)
    args = (q4, e4, 2, 0, 7, None)
    torch.testing.assert_close(
        ops.rel_pos_scores(*args), ops.rel_pos_scores(q4.contiguous(), e4.contiguous(), 2, 0, 7), rtol=0, atol=0
    )
    gq, ge = torch.ops.posenc.rel_pos_scores_backward(g, q4, e4, 2, 0, 7, None)
    gq2, ge2 = torch.ops.posenc.rel_pos_scores_backward(g.contiguous(), q4.contiguous(), e4.contiguous(), 2, 0, 7, None)
    assert torch.equal(gq, gq2) and torch.equal(ge, ge2)


@pytest.mark.parametrize(
    "b,h,q_len,d,r,k_len",
    [(0, 2, 3, 4, 5, 3), (1, 0, 3, 4, 5, 3), (1, 2, 0, 4, 5, 3), (1, 2, 3, 0, 5, 3),
     (1, 2, 3, 4, 5, 0), (1, 1, 1, 1, 1, 1), (1, 2, 3, 4, 1, 4), (1, 1, 1, 1, 3, 1)],
)
def test_C06_empty_and_unit_sizes(b, h, q_len, d, r, k_len):
    q, e = make(b, h, q_len, d, r, requires_grad=True)
    out = ops.rel_pos_scores(q, e, 1, 0, k_len)
    assert out.shape == (b, h, q_len, k_len)
    torch.testing.assert_close(out, ref_scores(q.detach(), e.detach(), 1, 0, k_len))
    (out * torch.randn_like(out)).sum().backward()
    assert q.grad.shape == q.shape and e.grad.shape == e.shape
    if out.numel() == 0:
        assert not q.grad.any() and not e.grad.any()


SAMPLES = [
    ((*make(2, 3, 4, 8, 9, dtype=torch.float32), 0, 0, 4), {}),
    ((*make(1, 2, 3, 5, 9, requires_grad=True), 2, 0, 5), {"max_distance": 2}),
    ((*make(2, 2, 4, 6, 7, requires_grad=True), -3, 4, 6), {"max_distance": 0}),
    ((*make(1, 2, 5, 8, 5, dtype=torch.float16), 7, 0, 12), {}),
    ((*make(1, 1, 3, 4, 3, dtype=torch.bfloat16, requires_grad=True), 0, 0, 3), {}),
    ((*make(1, 2, 0, 4, 5, requires_grad=True), 0, 0, 0), {}),
]


@pytest.mark.parametrize("args,kwargs", SAMPLES)
def test_opcheck(args, kwargs):
    torch.library.opcheck(torch.ops.posenc.rel_pos_scores.default, args, kwargs)


@pytest.mark.parametrize("args,kwargs", SAMPLES)
def test_opcheck_backward(args, kwargs):
    q, e, q_off, k_off, k_len = args
    g = torch.randn(*q.shape[:3], k_len, dtype=q.dtype)
    bargs = (g, q.detach(), e.detach(), q_off, k_off, k_len, kwargs.get("max_distance"))
    torch.library.opcheck(torch.ops.posenc.rel_pos_scores_backward.default, bargs)


def test_C16_compile_dynamic_no_recompile():
    e = torch.randn(2, 9, 8)
    torch._dynamo.reset()
    counter = torch._dynamo.testing.CompileCounter()
    f = torch.compile(
        lambda q, e, off, n: ops.rel_pos_scores(q, e, off, 0, n, 3),
        backend=counter, fullgraph=True, dynamic=True,
    )
    for l, off in ((5, 2), (7, 4), (11, 1)):
        q = torch.randn(1, 2, l, 8)
        torch.testing.assert_close(f(q, e, off, l + off), ops.rel_pos_scores(q, e, off, 0, l + off, 3))
    assert counter.frame_count == 1


def test_C16_compile_backward_aot():
    # aot_eager traces forward and backward through the Meta kernels.
    torch._dynamo.reset()
    f = torch.compile(lambda q, e: ops.rel_pos_scores(q, e, 2, 0, 6, 2), backend="aot_eager", fullgraph=True)
    q, e = make(1, 2, 4, 5, 7, requires_grad=True)
    g = torch.randn(1, 2, 4, 6, dtype=torch.float64)
    (f(q, e) * g).sum().backward()
    q2, e2 = q.detach().clone().requires_grad_(), e.detach().clone().requires_grad_()
    (ops.rel_pos_scores(q2, e2, 2, 0, 6, 2) * g).sum().backward()
    torch.testing.assert_close(q.grad, q2.grad)
    torch.testing.assert_close(e.grad, e2.grad)


def test_script():
    fn = torch.jit.script(ops.rel_pos_scores)
    q, e = make(1, 2, 3, 4, 7)
    torch.testing.assert_close(fn(q, e, 2, 0, 5, 1), ops.rel_pos_scores(q, e, 2, 0, 5, 1))
    torch.testing.assert_close(fn(q, e, 2), ops.rel_pos_scores(q, e, 2, 0, 5))


Q = torch.randn(1, 2, 3, 4)
E = torch.randn(2, 7, 4)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: ops.rel_pos_scores(Q, torch.randn(2, 6, 4)),
         r"posenc\.rel_pos_scores: argument 'rel_emb' must have an odd number of rows R.*but got shape \[2, 6, 4\]"),
        (lambda: ops.rel_pos_scores(Q, torch.randn(2, 0, 4)),
         r"argument 'rel_emb' must have an odd number of rows.*but got shape \[2, 0, 4\]"),
        (lambda: ops.rel_pos_scores(Q, E, max_distance=4),
         r"posenc\.rel_pos_scores: argument 'max_distance' must be in \[0, c\] with c = \(R - 1\) / 2 = 3, but got 4"),
        (lambda: ops.rel_pos_scores(Q, E, max_distance=-1),
         r"argument 'max_distance' must be in \[0, c\].*but got -1"),
        (lambda: ops.rel_pos_scores(Q, torch.randn(2, 7, 5)),
         r"argument 'rel_emb' must have q's head_dim \(4\) in dim 2, but got shape \[2, 7, 5\]"),
        (lambda: ops.rel_pos_scores(Q, torch.randn(3, 7, 4)),
         r"argument 'rel_emb' must have q's number of heads \(2\) in dim 0, but got shape \[3, 7, 4\]"),
        (lambda: ops.rel_pos_scores(torch.randn(2, 3, 4), E),
         r"argument 'q' must be a 4-D tensor of shape \(batch, heads, q_len, head_dim\), but got a 3-D tensor"),
        (lambda: ops.rel_pos_scores(torch.randn(4), E),
         r"argument 'q' must be a 4-D tensor of shape \(batch, heads, q_len, head_dim\), but got a 1-D tensor"),
        (lambda: ops.rel_pos_scores(Q, E[0]),
         r"argument 'rel_emb' must be a 3-D tensor of shape \(heads, R, head_dim\), but got a 2-D tensor"),
        (lambda: ops.rel_pos_scores(Q, E.double()),
         r"argument 'rel_emb' must have the dtype of 'q' \(Float\), but got dtype Double"),
        (lambda: ops.rel_pos_scores(Q.long(), E.long()),
         r"argument 'q' must have dtype float16, bfloat16, float32 or float64, but got dtype Long"),
        (lambda: ops.rel_pos_scores(Q, E, 0, 0, -1),
         r"posenc\.rel_pos_scores: argument 'k_len' must be >= 0, but got -1"),
        (lambda: ops.rel_pos_scores(Q, E, 0, 5),  # default k_len = 0 + 3 - 5
         r"argument 'k_len' must be >= 0, but got -2"),
        (lambda: torch.ops.posenc.rel_pos_scores_backward(torch.randn(1, 2, 3, 6), Q, E, 0, 0, 5, None),
         r"posenc\.rel_pos_scores_backward: argument 'grad' must have shape \(batch, heads, q_len, k_len\) = \[1, 2, 3, 5\], but got shape \[1, 2, 3, 6\]"),
    ],
)
def test_bad_inputs(call, match):
    with pytest.raises(RuntimeError, match=match):
        call()


def test_bad_inputs_raise_under_fake_tensors():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        q, e = torch.randn(1, 2, 3, 4), torch.randn(2, 6, 4)
        with pytest.raises(RuntimeError, match=r"posenc\.rel_pos_scores: argument 'rel_emb' must have an odd"):
            torch.ops.posenc.rel_pos_scores(q, e, 0, 0, 3)


# The CPU kernel works in tiles of 64 queries and blocks of 512 keys (csrc/ops/cpu/
# rel_pos_kernel.cpp): lengths on both sides of those edges, several key blocks, and offsets
# that put the diagonal, or the clipping edges, inside or outside a tile.
# (B, H, Lq, D, R, q_offset, k_offset, k_len, max_distance)
TILE_SHAPES = [
    (2, 2, 1, 5, 3, 0, 0, 1, None),
    (1, 2, 63, 5, 125, 0, 0, 63, None),
    (1, 2, 64, 5, 127, 6, 0, 70, None),
    (2, 1, 65, 7, 129, 0, 0, 65, 10),
    (1, 2, 130, 5, 1199, 470, 0, 600, None),  # two key blocks, diagonal in the second
    (1, 1, 130, 5, 2061, 0, 900, 1030, None),  # every key after every query
    (1, 2, 65, 5, 301, 1000, 0, 700, 150),  # far past: most keys clipped to c + M
    (1, 2, 64, 6, 17, 300, 0, 520, 8),  # small M: a few unclipped keys per row
    (1, 2, 130, 5, 257, -100, 0, 200, 128),  # keys before and after, Shaw M = 128
    (1, 1, 63, 4, 2001, 250, 0, 600, 3),  # M far below c
    (2, 1, 65, 3, 5, 3, 0, 530, 0),  # M = 0 across key blocks
    (1, 1, 130, 4, 2301, 1100, 0, 1150, None),  # k_len > 2 blocks, diagonal past the first
]


def grads(fn, q, e, g):
    q, e = q.detach().clone().requires_grad_(), e.detach().clone().requires_grad_()
    out = fn(q, e)
    return (out, *torch.autograd.grad(out, (q, e), g))


@pytest.mark.parametrize("shape", TILE_SHAPES)
def test_tile_edges_forward_backward_match_reference(shape):
    b, h, q_len, d, r, q_off, k_off, k_len, m = shape
    q, e = make(b, h, q_len, d, r)
    g = torch.randn(b, h, q_len, k_len, dtype=torch.float64)
    args = (q_off, k_off, k_len, m)
    got = grads(lambda q, e: ops.rel_pos_scores(q, e, *args), q, e, g)
    want = grads(lambda q, e: ref_scores(q, e, *args), q, e, g)
    for name, a, w in zip(("out", "grad_q", "grad_rel_emb"), got, want):
        torch.testing.assert_close(a, w, msg=lambda s: f"{name}: {s}")
    # fp32: the forward within the tolerance of the small shapes above; the gradients sum up
    # to k_len (grad_q) or B * Lq (grad_rel_emb) products, so their tolerance scales with size
    got32 = grads(lambda q, e: ops.rel_pos_scores(q, e, *args), q.float(), e.float(), g.float())
    for name, a, w in zip(("out", "grad_q", "grad_rel_emb"), got32, want):
        atol = 1e-5 if name == "out" else 1e-5 * max(1.0, w.abs().max().item() / 4)
        torch.testing.assert_close(a.double(), w, rtol=1e-5, atol=atol, msg=lambda s: f"{name}: {s}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [TILE_SHAPES[3], TILE_SHAPES[4], TILE_SHAPES[8], TILE_SHAPES[10]])
def test_tile_edges_low_precision_match_reference(dtype, shape):
    # fp32 math on the rounded inputs: within the dtype's tolerance of the fp64 reference
    b, h, q_len, d, r, q_off, k_off, k_len, m = shape
    q, e = (t.to(dtype) for t in make(b, h, q_len, d, r))
    g = torch.randn(b, h, q_len, k_len, dtype=torch.float64).to(dtype)
    args = (q_off, k_off, k_len, m)
    got = grads(lambda q, e: ops.rel_pos_scores(q, e, *args), q, e, g)
    want = grads(lambda q, e: ref_scores(q, e, *args), q.double(), e.double(), g.double())
    for name, a, w in zip(("out", "grad_q", "grad_rel_emb"), got, want):
        assert a.dtype == dtype, name
        # grad_rel_emb sums up to B * Lq products: scale the tolerance by the values' size
        scale = max(1.0, w.abs().max().item() / 8) if name == "grad_rel_emb" else 1.0
        tol = {k: v * scale for k, v in TOL[dtype].items()}
        torch.testing.assert_close(a.double(), w, **tol, msg=lambda s: f"{name}: {s}")


def with_threads(n, fn):
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(n)
        return fn()
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [TILE_SHAPES[4], TILE_SHAPES[8], TILE_SHAPES[11]])
def test_forward_backward_bit_identical_across_thread_counts(dtype, shape):
    b, h, q_len, d, r, q_off, k_off, k_len, m = shape
    q, e = (t.to(dtype) for t in make(b, h, q_len, d, r))
    g = torch.randn(b, h, q_len, k_len).to(dtype)
    args = (q_off, k_off, k_len, m)

    def run():
        return (ops.rel_pos_scores(q, e, *args), *torch.ops.posenc.rel_pos_scores_backward(g, q, e, *args))

    one, two, again = with_threads(1, run), with_threads(2, run), with_threads(2, run)
    for a, b_, c in zip(one, two, again):
        assert torch.equal(a, b_) and torch.equal(b_, c)
