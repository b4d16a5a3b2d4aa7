"""rel_pos_scores(causal=True): keys after the query are neither computed nor read and are
written as 0. Checked against the fp64 gather reference of test_rel_pos with those entries
zeroed, and against the bidirectional call on and below the diagonal."""
import pytest
import torch
from conftest import TOL
from test_rel_pos import SHAPES, TILE_SHAPES, grads, make, ref_scores, with_threads

from posenc import nn as pnn
from posenc import ops


def future(q_len, k_len, q_offset, k_offset):
    """(q_len, k_len) bool: k_pos > q_pos, the entries causal mode zeroes."""
    qp = torch.arange(q_len, dtype=torch.int64) + q_offset
    kp = torch.arange(k_len, dtype=torch.int64) + k_offset
    return kp[None, :] > qp[:, None]


def ref_causal(q, rel_emb, q_offset, k_offset, k_len, max_distance):
    full = ref_scores(q, rel_emb, q_offset, k_offset, k_len, max_distance)
    return full.masked_fill(future(q.shape[2], k_len, q_offset, k_offset), 0.0)


ALL_SHAPES = SHAPES + TILE_SHAPES


@pytest.mark.parametrize("shape", ALL_SHAPES)
def test_forward_backward_match_reference(shape):
    b, h, q_len, d, r, q_off, k_off, k_len, m = shape
    q, e = make(b, h, q_len, d, r)
    g = torch.randn(b, h, q_len, k_len, dtype=torch.float64)
    args = (q_off, k_off, k_len, m)
    got = grads(lambda q, e: ops.rel_pos_scores(q, e, *args, causal=True), q, e, g)
    want = grads(lambda q, e: ref_causal(q, e, *args), q, e, g)
    for name, a, w in zip(("out", "grad_q", "grad_rel_emb"), got, want):
        torch.testing.assert_close(a, w, msg=lambda s: f"{name}: {s}")
    got32 = grads(lambda q, e: ops.rel_pos_scores(q, e, *args, causal=True), q.float(), e.float(), g.float())
    for name, a, w in zip(("out", "grad_q", "grad_rel_emb"), got32, want):
        atol = 1e-5 if name == "out" else 1e-5 * max(1.0, w.abs().max().item() / 4)
        torch.testing.assert_close(a.double(), w, rtol=1e-5, atol=atol, msg=lambda s: f"{name}: {s}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", ALL_SHAPES)
def test_equals_bidirectional_below_diagonal(dtype, shape):
    # Each forward score is one fixed FMA chain whatever the tiling, so the causal call agrees
    # with the full one bit for bit where a key is visible, and is exactly 0 elsewhere.
    b, h, q_len, d, r, q_off, k_off, k_len, m = shape
    q, e = make(b, h, q_len, d, r, dtype=dtype)
    causal = ops.rel_pos_scores(q, e, q_off, k_off, k_len, m, causal=True)
    full = ops.rel_pos_scores(q, e, q_off, k_off, k_len, m)
    mask = future(q_len, k_len, q_off, k_off).expand_as(full)
    assert torch.equal(causal[~mask], full[~mask])
    assert torch.equal(causal[mask], torch.zeros_like(causal[mask]))


@pytest.mark.parametrize("m", [None, 0, 4])
def test_future_rows_of_rel_emb_are_not_read(m):
    # Rows c - 1 .. 0 stand for negative distances (keys after the query): poison them. Only a
    # kernel that reads them can turn an output or gradient entry non-finite. With M = 0 every
    # key uses row c; with M = 4 the keys past the query clip to row c - 4, also poisoned.
    b, h, q_len, d, r = 2, 2, 130, 8, 301
    c = (r - 1) // 2
    q, e = make(b, h, q_len, d, r, dtype=torch.float32)
    e[:, :c] = float("nan")
    args = (40, 0, 170, m)
    g = torch.randn(b, h, q_len, 170)
    out, gq, ge = grads(lambda q, e: ops.rel_pos_scores(q, e, *args, causal=True), q, e, g)
    assert torch.isfinite(out).all() and torch.isfinite(gq).all()
    assert torch.isfinite(ge).all()
    assert torch.equal(ge[:, :c], torch.zeros_like(ge[:, :c]))
    want = ref_causal(q.double(), e.double().nan_to_num(0.0), *args)
    torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [SHAPES[2], SHAPES[5], TILE_SHAPES[4], TILE_SHAPES[8]])
def test_low_precision_match_reference(dtype, shape):
    b, h, q_len, d, r, q_off, k_off, k_len, m = shape
    q, e = (t.to(dtype) for t in make(b, h, q_len, d, r))
    g = torch.randn(b, h, q_len, k_len, dtype=torch.float64).to(dtype)
    args = (q_off, k_off, k_len, m)
    got = grads(lambda q, e: ops.rel_pos_scores(q, e, *args, causal=True), q, e, g)
    want = grads(lambda q, e: ref_causal(q, e, *args), q.double(), e.double(), g.double())
    for name, a, w in zip(("out", "grad_q", "grad_rel_emb"), got, want):
        assert a.dtype == dtype, name
        scale = max(1.0, w.abs().max().item() / 8) if name == "grad_rel_emb" else 1.0
        tol = {k: v * scale for k, v in TOL[dtype].items()}
        torch.testing.assert_close(a.double(), w, **tol, msg=lambda s: f"{name}: {s}")


@pytest.mark.parametrize("shape", SHAPES)
def test_gradcheck(shape):
    b, h, q_len, d, r, q_off, k_off, k_len, m = shape
    q, e = make(b, h, q_len, d, r, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda q, e: ops.rel_pos_scores(q, e, q_off, k_off, k_len, m, causal=True), (q, e)
    )


@pytest.mark.parametrize("m", [None, 3])
def test_single_query_decode_equals_last_row(m):
    q, e = make(1, 2, 9, 8, 21)
    full = ops.rel_pos_scores(q, e, 4, 0, 13, m, causal=True)
    for i in range(9):
        row = ops.rel_pos_scores(q[:, :, i : i + 1], e, 4 + i, 0, 13, m, causal=True)
        assert torch.equal(row, full[:, :, i : i + 1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bit_identical_across_thread_counts(dtype):
    b, h, q_len, d, r, q_off, k_off, k_len, m = TILE_SHAPES[4]
    q, e = (t.to(dtype) for t in make(b, h, q_len, d, r))
    g = torch.randn(b, h, q_len, k_len).to(dtype)
    args = (q_off, k_off, k_len, m, True)

    def run():
        return (ops.rel_pos_scores(q, e, *args), *torch.ops.posenc.rel_pos_scores_backward(g, q, e, *args))

    one, two = with_threads(1, run), with_threads(2, run)
    for a, b_ in zip(one, two):
        assert torch.equal(a, b_)


SAMPLES = [
    ((*make(2, 3, 4, 8, 9, dtype=torch.float32), 0, 0, 4), {"causal": True}),
    ((*make(1, 2, 3, 5, 9, requires_grad=True), 2, 0, 5), {"max_distance": 2, "causal": True}),
    ((*make(2, 2, 4, 6, 7, requires_grad=True), -3, 4, 6), {"max_distance": 0, "causal": True}),
    ((*make(1, 1, 3, 4, 3, dtype=torch.bfloat16, requires_grad=True), 0, 0, 3), {"causal": True}),
]


@pytest.mark.parametrize("args,kwargs", SAMPLES)
def test_opcheck(args, kwargs):
    torch.library.opcheck(torch.ops.posenc.rel_pos_scores.default, args, kwargs)


@pytest.mark.parametrize("args,kwargs", SAMPLES)
def test_opcheck_backward(args, kwargs):
    q, e, q_off, k_off, k_len = args
    g = torch.randn(*q.shape[:3], k_len, dtype=q.dtype)
    bargs = (g, q.detach(), e.detach(), q_off, k_off, k_len, kwargs.get("max_distance"), True)
    torch.library.opcheck(torch.ops.posenc.rel_pos_scores_backward.default, bargs)


def test_compile_fullgraph():
    q, e = make(1, 2, 6, 8, 15, dtype=torch.float32)
    fn = torch.compile(lambda q, e: ops.rel_pos_scores(q, e, 3, 0, 9, None, causal=True), fullgraph=True)
    assert torch.equal(fn(q, e), ops.rel_pos_scores(q, e, 3, 0, 9, None, causal=True))


def test_script():
    def f(q: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        return ops.rel_pos_scores(q, e, 2, 0, 7, None, True)

    q, e = make(1, 2, 5, 4, 13)
    assert torch.equal(torch.jit.script(f)(q, e), ops.rel_pos_scores(q, e, 2, 0, 7, causal=True))


def _txl_modules():
    import posenc.cpp as pcpp  # the C++ module through pybind

    torch.manual_seed(0)
    py = pnn.TransformerXLRelativeScore(16, 2, 4)
    cpp = pcpp.TransformerXLRelativeScore(16, 2, 4)
    pcpp.load_state_dict(cpp, py.state_dict())
    return {"python": py, "scripted": torch.jit.script(py), "cpp": cpp}


@pytest.mark.parametrize("kind", ["python", "scripted", "cpp"])
def test_transformer_xl_module_causal(kind):
    mod = _txl_modules()[kind]
    q = torch.randn(2, 2, 5, 4)
    for mem in (0, 3):
        full = mod(q, mem)
        causal = mod(q, mem, True)
        mask = future(5, mem + 5, mem, 0).expand_as(full)
        torch.testing.assert_close(causal, full.masked_fill(mask, 0.0), rtol=0, atol=0)
