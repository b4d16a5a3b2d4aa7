"""CoPE (Golovneva et al. 2024): cope_scores against an fp64 reference written from the paper
(its eqs. 3-5 and the PyTorch listing: sigmoid of the scaled, masked logits, flip-cumsum-flip,
clamp to npos_max - 1, floor/ceil gather of q·e, linear interpolation), gradients against
autograd through that reference."""
import math

import pytest
import torch
import torch._dynamo.testing
from conftest import FLOAT_DTYPES, TOL

from posenc import ops


def ref_cope(q, k, e, scale=None, q_offset=0, k_offset=0):
    """The paper's CoPE in fp64 with the offsets contract; future keys written as 0."""
    q, k, e = q.double(), k.double(), e.double()
    lq, lk, d = q.shape[-2], k.shape[-2], q.shape[-1]
    npos = e.shape[0]
    scale = 1.0 / math.sqrt(max(d, 1)) if scale is None else scale  # d = 0: every logit is 0
    qp = torch.arange(lq) + q_offset
    kp = torch.arange(lk) + k_offset
    visible = kp[None, :] <= qp[:, None]
    logits = (q @ k.transpose(-1, -2)) * scale
    logits = logits.masked_fill(~visible, float("-inf"))  # the listing's mask.log()
    gates = torch.sigmoid(logits)  # eq. 3
    pos = gates.flip(-1).cumsum(-1).flip(-1)  # eq. 4: p_ij = sum_{t >= j} g_it
    pos = pos.clamp(max=npos - 1)
    pos_ceil, pos_floor = pos.ceil().long(), pos.floor().long()
    logits_int = q @ e.t()  # z_i[n] = q_i . e[n]
    w = pos - pos_floor
    out = logits_int.gather(-1, pos_ceil) * w + logits_int.gather(-1, pos_floor) * (1 - w)  # eq. 5
    return out.masked_fill(~visible, 0.0)


def make(b, h, lq, lk, d, npos, dtype=torch.float64, requires_grad=False, gate_shift=0.0):
    q = torch.randn(b, h, lq, d, dtype=torch.float64)
    k = torch.randn(b, h, lk, d, dtype=torch.float64) + gate_shift
    e = torch.randn(npos, d, dtype=torch.float64)
    return [t.to(dtype).requires_grad_(requires_grad) for t in (q, k, e)]


SHAPES = [
    # b, h, lq, lk, d, npos, q_offset, k_offset, scale
    (2, 3, 7, 7, 8, 4, 0, 0, None),
    (1, 2, 5, 12, 16, 16, 7, 0, None),  # chunked prefill: queries 7..11 over keys 0..11
    (2, 1, 9, 6, 4, 3, 0, 2, 0.7),  # keys start later: early queries see nothing
    (1, 1, 33, 40, 5, 64, 10, 3, 1.0),  # table longer than any position (no clamping)
    (1, 2, 20, 20, 8, 1, 0, 0, None),  # npos_max 1: every key at position 0
    (2, 2, 1, 300, 8, 8, 299, 0, None),  # decode over a long cache (many clamped keys)
]


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_matches_reference(dtype, shape):
    b, h, lq, lk, d, npos, qo, ko, scale = shape
    q, k, e = make(b, h, lq, lk, d, npos, dtype)
    got = ops.cope_scores(q, k, e, scale, qo, ko)
    assert got.dtype == dtype and got.shape == (b, h, lq, lk) and got.is_contiguous()
    want = ref_cope(q, k, e, scale, qo, ko)
    tol = TOL[dtype]
    if dtype in (torch.float16, torch.bfloat16):
        # inputs are rounded, math is fp32: compare relative to the output's magnitude
        tol = dict(rtol=tol["rtol"], atol=tol["atol"] * max(1.0, want.abs().max().item()))
    elif dtype == torch.float32:
        tol = dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.double(), want, **tol)


def test_known_values():
    # D = 1, q = 1, k = 0: every gate is sigmoid(0) = 1/2, so p_ij = (i - j + 1) / 2, and
    # z_i[n] = e[n]. Query 3 sees keys 0..3: p = 2, 1.5, 1, 0.5 -> clamped to 2 (npos_max 3).
    q = torch.ones(1, 1, 4, 1, dtype=torch.float64)
    k = torch.zeros(1, 1, 4, 1, dtype=torch.float64)
    e = torch.tensor([[10.0], [20.0], [40.0]], dtype=torch.float64)
    got = ops.cope_scores(q, k, e)[0, 0]
    want = torch.tensor(
        [
            [15.0, 0.0, 0.0, 0.0],  # p = 0.5: (10 + 20) / 2
            [20.0, 15.0, 0.0, 0.0],  # p = 1, 0.5
            [30.0, 20.0, 15.0, 0.0],  # p = 1.5, 1, 0.5
            [40.0, 30.0, 20.0, 15.0],  # p = 2 (= npos_max - 1), 1.5, 1, 0.5
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(got, want, rtol=0, atol=1e-13)
    # A longer row clamps at npos_max - 1 = 2: keys with p >= 2 all take e[2] = 40.
    got = ops.cope_scores(torch.ones(1, 1, 1, 1), torch.zeros(1, 1, 9, 1), e.float(), None, 8, 0)
    torch.testing.assert_close(got[0, 0, 0], torch.tensor([40.0] * 6 + [30.0, 20.0, 15.0]))


def test_scale_default_is_inverse_sqrt_head_dim():
    q, k, e = make(1, 2, 6, 6, 9, 5)
    torch.testing.assert_close(ops.cope_scores(q, k, e), ops.cope_scores(q, k, e, 1.0 / 3.0), rtol=0, atol=0)
    assert not torch.equal(ops.cope_scores(q, k, e), ops.cope_scores(q, k, e, 1.0))


GRAD_SHAPES = [
    (1, 2, 5, 5, 4, 3, 0, 0, None),
    (2, 1, 4, 7, 3, 6, 3, 0, 0.9),
    (1, 1, 6, 4, 2, 2, 0, 1, 1.3),
]


@pytest.mark.parametrize("shape", GRAD_SHAPES)
def test_gradcheck(shape):
    b, h, lq, lk, d, npos, qo, ko, scale = shape
    q, k, e = make(b, h, lq, lk, d, npos, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, c, x: ops.cope_scores(a, c, x, scale, qo, ko), (q, k, e))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
def test_grads_match_reference(dtype, shape):
    b, h, lq, lk, d, npos, qo, ko, scale = shape
    q, k, e = make(b, h, lq, lk, d, npos, dtype, requires_grad=True)
    g = torch.randn(b, h, lq, lk, dtype=torch.float64)
    ops.cope_scores(q, k, e, scale, qo, ko).backward(g.to(dtype))
    q2, k2, e2 = [t.detach().double().requires_grad_() for t in (q, k, e)]
    ref_cope(q2, k2, e2, scale, qo, ko).backward(g)
    for got, want in ((q.grad, q2.grad), (k.grad, k2.grad), (e.grad, e2.grad)):
        assert got.dtype == dtype
        if dtype == torch.float64:
            tol = TOL[dtype]
        elif dtype == torch.float32:
            tol = dict(rtol=1e-4, atol=1e-4 * max(1.0, want.abs().max().item()))
        else:
            tol = dict(rtol=TOL[dtype]["rtol"], atol=2 * TOL[dtype]["atol"] * max(1.0, want.abs().max().item()))
        torch.testing.assert_close(got.double(), want, **tol)


@pytest.mark.parametrize("npos", [70, 6])
def test_backward_matches_reference_with_many_chunks(npos):
    # Enough rows and keys for several key blocks, row chunks and table blocks in the
    # backward's GEMM passes (fixed 128 / 256 / 64 tiles). npos_max 70 leaves about half of
    # the (query, key) pairs unclamped (grad_k by GEMMs); 6 only a few keys per row (grad_k
    # summed over each row's window).
    q, k, e = make(2, 4, 260, 300, 8, npos, requires_grad=True, gate_shift=-0.5)
    g = torch.randn(2, 4, 260, 300, dtype=torch.float64)
    ops.cope_scores(q, k, e, None, 40, 0).backward(g)
    q2, k2, e2 = [t.detach().clone().requires_grad_() for t in (q, k, e)]
    ref_cope(q2, k2, e2, None, 40, 0).backward(g)
    for got, want in ((q.grad, q2.grad), (k.grad, k2.grad), (e.grad, e2.grad)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_future_keys_are_zero_and_pass_no_gradient():
    q, k, e = make(1, 2, 6, 6, 4, 8, requires_grad=True)
    out = ops.cope_scores(q, k, e)
    assert torch.equal(out.triu(1), torch.zeros_like(out))
    # A gradient only on the future entries reaches nothing.
    g = torch.ones_like(out).triu(1)
    gq, gk, ge = torch.autograd.grad(out, (q, k, e), g)
    assert not gq.any() and not gk.any() and not ge.any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_decode_equals_last_row_of_full_call(dtype):
    q, k, e = make(2, 3, 24, 24, 16, 8, dtype)
    full = ops.cope_scores(q, k, e)
    step = ops.cope_scores(q[:, :, -1:], k, e, None, 23, 0)
    assert torch.equal(step, full[:, :, -1:])
    # Chunked prefill: queries 10..16 at q_offset 10 over keys 0..16.
    part = ops.cope_scores(q[:, :, 10:17], k[:, :, :17], e, None, 10, 0)
    assert torch.equal(part, full[:, :, 10:17, :17])
    # The same positions shifted by a common offset: only differences matter.
    shifted = ops.cope_scores(q, k, e, None, 1000, 1000)
    assert torch.equal(shifted, full)


def _backward(args):
    return torch.ops.posenc.cope_scores_backward(*args)


@pytest.mark.parametrize("npos", [40, 5])  # grad_k by GEMMs / by window sums
def test_backward_deterministic_across_runs_and_threads(npos):
    q, k, e = make(2, 4, 256, 256, 16, npos, torch.float32, gate_shift=-0.3)
    g = torch.randn(2, 4, 256, 256)
    args = (g, q, k, e, None, 0, 0)
    first = _backward(args)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = _backward(args)
        torch.set_num_threads(2)
        two = _backward(args)
    finally:
        torch.set_num_threads(old)
    again = _backward(args)
    for a, b_, c, d in zip(first, single, two, again):
        assert torch.equal(a, b_) and torch.equal(a, c) and torch.equal(a, d)


def test_long_row_clamps_without_computing_far_gates():
    # npos_max 4 over 2000 keys: keys with p >= 3 all get q·e[3]; checked against the
    # reference (which computes every gate).
    q, k, e = make(1, 1, 3, 2000, 8, 4, torch.float32)
    got = ops.cope_scores(q, k, e, None, 1997, 0)
    want = ref_cope(q, k, e, None, 1997, 0)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    z3 = (q.double() @ e.double()[3])[0, 0]
    torch.testing.assert_close(got[0, 0, :, :1000].double(), z3[:, None].expand(3, 1000), rtol=1e-5, atol=1e-5)


def test_non_contiguous_inputs():
    q, k, e = make(2, 3, 6, 8, 5, 4)
    qn = q.transpose(1, 2).contiguous().transpose(1, 2)
    kn = torch.randn(2, 8, 3, 10, dtype=torch.float64).transpose(1, 2)[..., :5]
    en = torch.randn(5, 4, dtype=torch.float64).t()
    assert not (qn.is_contiguous() or kn.is_contiguous() or en.is_contiguous())
    got = ops.cope_scores(qn, kn, en, None, 2, 0)
    torch.testing.assert_close(got, ref_cope(qn, kn, en, None, 2, 0), **TOL[torch.float64])


@pytest.mark.parametrize(
    "b,h,lq,lk,d,npos",
    [(0, 2, 3, 3, 4, 2), (1, 0, 3, 3, 4, 2), (1, 2, 0, 3, 4, 2), (1, 2, 3, 0, 4, 2), (1, 2, 3, 3, 0, 2), (1, 1, 1, 1, 1, 1)],
)
def test_empty_and_unit_sizes(b, h, lq, lk, d, npos):
    q, k, e = make(b, h, lq, lk, d, npos, requires_grad=True)
    out = ops.cope_scores(q, k, e)
    assert out.shape == (b, h, lq, lk)
    want = ref_cope(q.detach(), k.detach(), e.detach()) if out.numel() else out.detach()
    torch.testing.assert_close(out.detach(), want)
    out.sum().backward()
    assert q.grad.shape == q.shape and k.grad.shape == k.shape and e.grad.shape == e.shape


def test_nan_input_gives_nan_not_a_crash():
    q, k, e = make(1, 1, 4, 4, 3, 3)
    q[0, 0, 2, 1] = float("nan")
    out = ops.cope_scores(q, k, e)
    assert out[0, 0, 2, :3].isnan().all() and not out[0, 0, [0, 1, 3]].isnan().any()
    gq, gk, ge = torch.ops.posenc.cope_scores_backward(torch.ones_like(out), q, k, e, None, 0, 0)
    assert gq[0, 0, 2].isnan().all() and not gq[0, 0, [0, 1, 3]].isnan().any()


def _samples():
    q, k, e = make(2, 2, 5, 6, 4, 3, torch.float32, requires_grad=True)
    yield (q, k, e), {}
    q, k, e = make(1, 3, 1, 9, 8, 4, torch.float64, requires_grad=True)
    yield (q, k, e, 0.5, 8, 0), {}
    q, k, e = make(1, 1, 4, 4, 2, 2, torch.float32)
    yield (q, k, e), {"scale": None, "q_offset": 3, "k_offset": 1}


@pytest.mark.parametrize("sample", list(_samples()))
def test_opcheck(sample):
    args, kwargs = sample
    torch.library.opcheck(torch.ops.posenc.cope_scores.default, args, kwargs)


def test_opcheck_backward():
    q, k, e = make(1, 2, 4, 5, 3, 3, torch.float32)
    g = torch.randn(1, 2, 4, 5)
    torch.library.opcheck(torch.ops.posenc.cope_scores_backward.default, (g, q, k, e, None, 1, 0))


def test_compile_fullgraph_dynamic_no_recompile():
    counter = torch._dynamo.testing.CompileCounter()
    f = torch.compile(lambda q, k, e, off: ops.cope_scores(q, k, e, None, off, 0), backend=counter, fullgraph=True, dynamic=True)
    for lq, lk in ((3, 5), (4, 9), (2, 11)):
        # npos_max 7 equals no length: duck sizing would tie it to one and recompile
        q, k, e = make(1, 2, lq, lk, 4, 7, torch.float32)
        torch.testing.assert_close(f(q, k, e, lk - lq), ops.cope_scores(q, k, e, None, lk - lq, 0))
    assert counter.frame_count == 1


def test_compile_inductor_with_grad():
    q, k, e = make(1, 2, 5, 7, 4, 3, torch.float32, requires_grad=True)
    f = torch.compile(lambda a, c, x: (ops.cope_scores(a, c, x, 0.8, 2, 0) ** 2).sum(), fullgraph=True)
    f(q, k, e).backward()
    q2, k2, e2 = [t.detach().clone().requires_grad_() for t in (q, k, e)]
    (ops.cope_scores(q2, k2, e2, 0.8, 2, 0) ** 2).sum().backward()
    for a, b_ in ((q.grad, q2.grad), (k.grad, k2.grad), (e.grad, e2.grad)):
        torch.testing.assert_close(a, b_)


def test_script():
    fn = torch.jit.script(ops.cope_scores)
    q, k, e = make(1, 2, 3, 4, 4, 3, torch.float32)
    assert torch.equal(fn(q, k, e, None, 1, 0), ops.cope_scores(q, k, e, None, 1, 0))


Q = torch.randn(1, 2, 3, 4)
K = torch.randn(1, 2, 5, 4)
E = torch.randn(6, 4)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: ops.cope_scores(Q[0], K, E), r"posenc\.cope_scores: argument 'q' must be a 4-D tensor of shape \(batch, heads, q_len, head_dim\), but got a 3-D tensor of shape \[2, 3, 4\]"),
        (lambda: ops.cope_scores(Q.long(), K.long(), E.long()), r"posenc\.cope_scores: argument 'q' must have dtype float16, bfloat16, float32 or float64, but got dtype Long"),
        (lambda: ops.cope_scores(Q, K[0], E), r"posenc\.cope_scores: argument 'k' must be a 4-D tensor of shape \(batch, heads, k_len, head_dim\), but got a 3-D tensor"),
        (lambda: ops.cope_scores(Q, K.double(), E), r"posenc\.cope_scores: argument 'k' must have the dtype of 'q' \(Float\), but got dtype Double"),
        (lambda: ops.cope_scores(Q, torch.randn(1, 3, 5, 4), E), r"posenc\.cope_scores: argument 'k' must have q's batch, heads and head_dim \(\[1, 2, k_len, 4\]\), but got shape \[1, 3, 5, 4\]"),
        (lambda: ops.cope_scores(Q, torch.randn(1, 2, 5, 3), E), r"argument 'k' must have q's batch, heads and head_dim \(\[1, 2, k_len, 4\]\), but got shape \[1, 2, 5, 3\]"),
        (lambda: ops.cope_scores(Q, K, E[None]), r"posenc\.cope_scores: argument 'pos_emb' must be a 2-D tensor of shape \(npos_max, head_dim\), but got a 3-D tensor of shape \[1, 6, 4\]"),
        (lambda: ops.cope_scores(Q, K, E.double()), r"argument 'pos_emb' must have the dtype of 'q' \(Float\), but got dtype Double"),
        (lambda: ops.cope_scores(Q, K, torch.randn(6, 5)), r"posenc\.cope_scores: argument 'pos_emb' must have q's head_dim \(4\) in dim 1, but got shape \[6, 5\]"),
        (lambda: ops.cope_scores(Q, K, torch.randn(0, 4)), r"posenc\.cope_scores: argument 'pos_emb' must have at least one row \(npos_max >= 1\) in dim 0, but got shape \[0, 4\]"),
        (lambda: ops.cope_scores(Q, K, E, float("nan")), r"posenc\.cope_scores: argument 'scale' must be finite, but got nan"),
        (lambda: ops.cope_scores(Q, K, E, float("inf")), r"posenc\.cope_scores: argument 'scale' must be finite, but got inf"),
        (lambda: ops.cope_scores(Q, K, E, None, 2**62, 0), r"posenc\.cope_scores: argument 'q_offset' must be within \[-2\^61, 2\^61\], but got 4611686018427387904"),
        (lambda: ops.cope_scores(Q, K, E, None, 0, -(2**62)), r"posenc\.cope_scores: argument 'k_offset' must be within \[-2\^61, 2\^61\], but got -4611686018427387904"),
        (lambda: ops.cope_scores(Q, K[:, :1].expand(1, 2, 5, 4), E), None),
        (lambda: torch.ops.posenc.cope_scores_backward(torch.randn(1, 2, 3, 4), Q, K, E, None, 0, 0), r"posenc\.cope_scores_backward: argument 'grad' must have shape \(batch, heads, q_len, k_len\) = \[1, 2, 3, 5\], but got shape \[1, 2, 3, 4\]"),
        (lambda: torch.ops.posenc.cope_scores_backward(torch.randn(2, 3, 5), Q, K, E, None, 0, 0), r"posenc\.cope_scores_backward: argument 'grad' must be a 4-D tensor of shape \(batch, heads, q_len, k_len\), but got a 3-D tensor"),
    ],
)
def test_bad_inputs(call, match):
    if match is None:  # a valid call between the bad ones: an expanded (stride-0) k
        torch.testing.assert_close(call(), ref_cope(Q, K[:, :1].expand(1, 2, 5, 4), E).float())
        return
    with pytest.raises(RuntimeError, match=match):
        call()


def test_output_too_large_is_refused_by_name():
    # (1, 1, 2^31, 2^31) float32 = 2^64 bytes: refused before any allocation.
    q = torch.zeros(1, 1, 1, 4).expand(1, 1, 2**31, 4)
    k = torch.zeros(1, 1, 1, 4).expand(1, 1, 2**31, 4)
    with pytest.raises(RuntimeError, match=r"posenc\.cope_scores: argument 'k' is too large"):
        ops.cope_scores(q, k, E)


def test_bad_inputs_fake_tensor():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        q, k = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 5, 4)
        with pytest.raises(RuntimeError, match=r"posenc\.cope_scores: argument 'pos_emb' must have q's head_dim \(4\)"):
            torch.ops.posenc.cope_scores(q, k, torch.randn(6, 3), None, 0, 0)


# ---- modules: posenc.nn.CoPE (scriptable), posenc.cpp.CoPE (C++ posenc::nn::CoPE) -----------------

import posenc  # noqa: E402


def _trained(m, npos, d):
    # pos_emb starts at zeros (the paper's code); give it values so forward is not all zeros
    with torch.no_grad():
        m.pos_emb.copy_(torch.randn(npos, d))
    return m


def test_module_init_state_dict_and_forward():
    m = posenc.nn.CoPE(8, 4)
    assert list(m.state_dict()) == ["pos_emb"] and m.pos_emb.shape == (8, 4)
    assert m.pos_emb.dtype == torch.float32 and not m.pos_emb.any()  # zeros, as the paper's code
    c = posenc.cpp.CoPE(8, 4)
    assert list(posenc.cpp.state_dict(c)) == ["pos_emb"] and not posenc.cpp.state_dict(c)["pos_emb"].any()
    _trained(m, 8, 4)
    posenc.cpp.load_state_dict(c, m.state_dict())
    q, k = torch.randn(2, 3, 5, 4), torch.randn(2, 3, 7, 4)
    want = ref_cope(q, k, m.pos_emb.detach(), None, 2, 0)
    torch.testing.assert_close(m(q, k, 2, 0).double(), want, rtol=1e-5, atol=1e-5)
    assert torch.equal(c(q, k, 2, 0), m(q, k, 2, 0))
    # scale option, and a bf16 q (pos_emb is cast to q's dtype)
    m2, c2 = posenc.nn.CoPE(8, 4, scale=0.3), posenc.cpp.CoPE(8, 4, scale=0.3)
    m2.load_state_dict(m.state_dict())
    posenc.cpp.load_state_dict(c2, m.state_dict())
    assert torch.equal(m2(q, k), ops.cope_scores(q, k, m.pos_emb.detach(), 0.3))
    assert torch.equal(c2(q, k), m2(q, k))
    assert m2(q.bfloat16(), k.bfloat16()).dtype == torch.bfloat16
    assert repr(m2) == "CoPE(npos_max=8, head_dim=4, scale=0.3)"
    assert "posenc::nn::CoPE(npos_max=8, head_dim=4, scale=0.3)" in repr(c2)


def test_module_gradients_reach_pos_emb_q_and_k():
    m = _trained(posenc.nn.CoPE(5, 4), 5, 4)
    q = torch.randn(1, 2, 6, 4, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 2, 6, 4, dtype=torch.float64, requires_grad=True)
    g = torch.randn(1, 2, 6, 6, dtype=torch.float64)
    m.double()(q, k).backward(g)
    e2 = m.pos_emb.detach().clone().requires_grad_()
    q2, k2 = q.detach().clone().requires_grad_(), k.detach().clone().requires_grad_()
    ref_cope(q2, k2, e2).backward(g)
    for a, b_ in ((m.pos_emb.grad, e2.grad), (q.grad, q2.grad), (k.grad, k2.grad)):
        torch.testing.assert_close(a, b_, **TOL[torch.float64])


def _ref_attention(q, k, v, e, q_offset=0, k_offset=0):
    # The paper's SelfAttn: softmax(q k^T / sqrt(D) + mask.log() + cope) v, in fp64.
    q, k, v, e = q.double(), k.double(), v.double(), e.double()
    qp = torch.arange(q.shape[-2]) + q_offset
    kp = torch.arange(k.shape[-2]) + k_offset
    logits = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    logits = logits.masked_fill(kp[None, :] > qp[:, None], float("-inf"))
    logits = logits + ref_cope(q, k, e, None, q_offset, k_offset)
    return torch.softmax(logits, -1) @ v


def test_module_attention_matches_paper_self_attention():
    m = _trained(posenc.nn.CoPE(6, 8), 6, 8)
    c = posenc.cpp.CoPE(6, 8)
    posenc.cpp.load_state_dict(c, m.state_dict())
    q, k, v = torch.randn(2, 2, 5, 8), torch.randn(2, 2, 9, 8), torch.randn(2, 2, 9, 3)
    want = _ref_attention(q, k, v, m.pos_emb.detach(), 4, 0)
    torch.testing.assert_close(m.attention(q, k, v, 4, 0).double(), want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(c.attention(q, k, v, 4, 0), m.attention(q, k, v, 4, 0), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(npos_max=0, head_dim=4), r"posenc\.CoPE: option 'npos_max' must be > 0, but got 0"),
        (dict(npos_max=4, head_dim=-1), r"posenc\.CoPE: option 'head_dim' must be > 0, but got -1"),
        (dict(npos_max=4, head_dim=4, scale=float("nan")), r"posenc\.CoPE: option 'scale' must be finite, but got nan"),
    ],
)
@pytest.mark.parametrize("cls", ["nn", "cpp"])
def test_module_bad_options(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        getattr(posenc, cls).CoPE(**kwargs)


@pytest.mark.parametrize("cls", ["nn", "cpp"])
def test_module_bad_forward_input(cls):
    m = getattr(posenc, cls).CoPE(4, 8)
    with pytest.raises(RuntimeError, match=r"posenc\.cope_scores: argument 'pos_emb' must have q's head_dim \(6\) in dim 1, but got shape \[4, 8\]"):
        m(torch.randn(1, 1, 3, 6), torch.randn(1, 1, 3, 6))


def test_module_script_and_compile():
    m = _trained(posenc.nn.CoPE(6, 4, scale=0.5), 6, 4)
    s = torch.jit.script(m)
    q, k, v = torch.randn(1, 2, 4, 4), torch.randn(1, 2, 6, 4), torch.randn(1, 2, 6, 4)
    assert torch.equal(s(q, k, 2, 0), m(q, k, 2, 0))
    torch.testing.assert_close(s.attention(q, k, v, 2, 0), m.attention(q, k, v, 2, 0))
    f = torch.compile(m, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(f(q, k, 2, 0), m(q, k, 2, 0))
