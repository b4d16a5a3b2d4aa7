"""FIRE (Li et al. 2023, ICLR 2024): the op and the modules against an fp64 reference written in
the test from the paper's formula as its reference code computes it (the MLP on the full
(q_len, k_len) matrix of normalized distances), forward and every gradient."""
import pytest
import torch
import torch.nn.functional as F
from conftest import TOL

import posenc
from posenc import ops


def make_params(hidden=5, heads=3, dtype=torch.float64, c=0.3, L=6.5, requires_grad=False):
    p = [
        torch.tensor(c, dtype=dtype),
        torch.tensor(L, dtype=dtype),
        torch.randn(hidden, 1, dtype=dtype),
        torch.randn(hidden, dtype=dtype) * 0.5,
        torch.randn(heads, hidden, dtype=dtype) * 0.5,
        torch.randn(heads, dtype=dtype) * 0.2,
    ]
    for t in p:
        t.requires_grad_(requires_grad)
    return p


def ref_bias(c, L, w1, b1, w2, b2, q_len, k_len, q_offset=0, k_offset=0, causal=True, eps=1e-6):
    """FIRE, eq. 3-4, as the paper's code: f(log(|c (i - j)| + 1) / (log(|c max(i, |L|)| + 1) + eps))."""
    c, L = c.double(), L.double()
    qp = torch.arange(q_len, dtype=torch.float64) + q_offset
    kp = torch.arange(k_len, dtype=torch.float64) + k_offset
    rel = qp[:, None] - kp[None, :]
    num = torch.log(torch.abs(c * rel) + 1)
    norm = torch.log(torch.abs(c * torch.maximum(qp, torch.abs(L))) + 1) + eps
    x = (num / norm[:, None])[..., None]
    h = F.relu(F.linear(x, w1.double(), b1.double()))
    out = F.linear(h, w2.double(), b2.double()).permute(2, 0, 1)
    if causal:
        out = torch.where((kp[None, :] > qp[:, None])[None], torch.zeros_like(out), out)
    return out


CASES = [
    # q_len, k_len, q_offset, k_offset, causal, c, L
    (6, 6, 0, 0, True, 0.3, 6.5),
    (6, 6, 0, 0, False, 0.3, 2.5),
    (5, 12, 7, 0, True, -0.2, 9.5),  # negative c enters as |c|
    (9, 4, 0, 3, True, 0.1, -3.5),  # negative L enters as |L|; most keys in the future
    (1, 20, 19, 0, True, 0.5, 512.0),
    (30, 30, 100, 90, False, 1.5, 110.5),
    (20, 33, 0, 0, True, 0.05, 0.0),  # L = 0: the normalizer is psi(i) (+ eps at i = 0)
]


@pytest.mark.parametrize("q_len,k_len,q_offset,k_offset,causal,c,L", CASES)
def test_forward_matches_reference(q_len, k_len, q_offset, k_offset, causal, c, L):
    p = make_params(c=c, L=L)
    got = ops.fire_bias(*p, q_len, k_len, q_offset, k_offset, causal)
    want = ref_bias(*p, q_len, k_len, q_offset, k_offset, causal)
    assert got.shape == (3, q_len, k_len) and got.dtype == torch.float64
    torch.testing.assert_close(got, want, **TOL[torch.float64])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_forward_low_precision(dtype):
    p = make_params(dtype=dtype)
    got = ops.fire_bias(*p, 7, 9, 2, 0, False)
    assert got.dtype == dtype
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else TOL[dtype]
    torch.testing.assert_close(got.double(), ref_bias(*p, 7, 9, 2, 0, False), **tol)


@pytest.mark.parametrize("q_len,k_len,q_offset,k_offset,causal,c,L", CASES)
def test_gradients_match_reference(q_len, k_len, q_offset, k_offset, causal, c, L):
    p = make_params(c=c, L=L, requires_grad=True)
    g = torch.randn(3, q_len, k_len, dtype=torch.float64)
    got = torch.autograd.grad((ops.fire_bias(*p, q_len, k_len, q_offset, k_offset, causal) * g).sum(), p)
    want = torch.autograd.grad((ref_bias(*p, q_len, k_len, q_offset, k_offset, causal) * g).sum(), p)
    for name, a, b in zip(["c", "L", "w1", "b1", "w2", "b2"], got, want):
        assert a.shape == b.shape, name
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10, msg=name)


def test_threshold_tie_splits_the_gradient_as_torch_maximum():
    # |L| == query position 4: the maximum's derivative goes half to L.
    p = make_params(L=4.0, requires_grad=True)
    g = torch.randn(3, 8, 8, dtype=torch.float64)
    got = torch.autograd.grad((ops.fire_bias(*p, 8, 8) * g).sum(), p[1])
    want = torch.autograd.grad((ref_bias(*p, 8, 8) * g).sum(), p[1])
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("causal", [True, False])
def test_gradcheck(causal):
    p = make_params(hidden=4, heads=2, L=3.5, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: ops.fire_bias(*a, 5, 7, 1, 0, causal), tuple(p))


def test_float32_gradients_close_to_fp64():
    p = make_params(hidden=32, heads=4, dtype=torch.float32, L=20.5, requires_grad=True)
    g = torch.randn(4, 50, 50)
    got = torch.autograd.grad((ops.fire_bias(*p, 50, 50) * g).sum(), p)
    p64 = [t.detach().double().requires_grad_() for t in p]
    want = torch.autograd.grad((ref_bias(*p64, 50, 50) * g.double()).sum(), p64)
    for a, b in zip(got, want):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("causal", [True, False])
def test_decode_row_equals_last_row_of_full_call(causal):
    p = make_params(dtype=torch.float32, L=8.0)
    n = 23
    full = ops.fire_bias(*p, n, n, 0, 0, causal)
    step = ops.fire_bias(*p, 1, n, n - 1, 0, causal)
    assert torch.equal(step[:, 0], full[:, -1])
    blk = ops.fire_bias(*p, 6, n, n - 6, 0, causal)
    assert torch.equal(blk, full[:, -6:])


def test_gradients_deterministic_across_runs_and_threads():
    p = make_params(hidden=32, heads=4, dtype=torch.float32, L=100.0, requires_grad=True)
    g = torch.randn(4, 130, 150)
    threads = torch.get_num_threads()

    def grads():
        return torch.autograd.grad(ops.fire_bias(*p, 130, 150, 20, 0, True), p, g)

    try:
        torch.set_num_threads(1)
        one = grads()
        torch.set_num_threads(2)
        two, again = grads(), grads()
    finally:
        torch.set_num_threads(threads)
    for a, b, c in zip(one, two, again):
        assert torch.equal(a, b) and torch.equal(b, c)


def test_non_contiguous_params():
    p = make_params()
    w2t = p[4].t().contiguous().t()
    b1s = torch.stack([p[3], p[3]], 1)[:, 0]
    assert not w2t.is_contiguous() and not b1s.is_contiguous()
    q = [p[0], p[1], p[2], b1s, w2t, p[5]]
    assert torch.equal(ops.fire_bias(*q, 4, 6, 1, 0), ops.fire_bias(*p, 4, 6, 1, 0))


@pytest.mark.parametrize("q_len,k_len", [(0, 4), (4, 0), (1, 1)])
def test_empty_and_unit_sizes(q_len, k_len):
    p = make_params(requires_grad=True)
    out = ops.fire_bias(*p, q_len, k_len)
    assert out.shape == (3, q_len, k_len)
    torch.testing.assert_close(out, ref_bias(*p, q_len, k_len))
    grads = torch.autograd.grad(out.sum(), p, allow_unused=True)
    for gr, t in zip(grads, p):
        assert gr is None or gr.shape == t.shape


SAMPLES = [
    (*make_params(), 3, 5, 2, 0, True, 1e-6),
    (*make_params(requires_grad=True), 4, 4, 0, 0, False, 1e-6),
    (*make_params(dtype=torch.float32, requires_grad=True), 2, 7, 5, 1, True, 1e-3),
    (*make_params(dtype=torch.float16), 1, 6, 5, 0, True, 1e-6),
]


@pytest.mark.parametrize("args", SAMPLES)
def test_opcheck(args):
    torch.library.opcheck(torch.ops.posenc.fire_bias.default, args)


def test_opcheck_backward():
    torch.library.opcheck(
        torch.ops.posenc.fire_bias_backward.default,
        (torch.randn(3, 3, 4, dtype=torch.float64), *make_params(), 3, 4, 1, 0, True, 1e-6),
    )


def test_compile_fullgraph_with_grad():
    m = posenc.nn.FIRE(2, mlp_width=8, init_L=4.0)
    f = torch.compile(lambda n, off: (m(n, n + off, off, 0) ** 2).sum(), fullgraph=True)
    f(6, 2).backward()
    got = [q.grad.clone() for q in m.parameters()]
    m.zero_grad()
    (m(6, 8, 2, 0) ** 2).sum().backward()
    for a, q in zip(got, m.parameters()):
        torch.testing.assert_close(a, q.grad)


def test_module_equals_reference_and_paper_defaults():
    m = posenc.nn.FIRE(4).double()
    assert m.mlp[0].weight.shape == (32, 1) and isinstance(m.mlp[1], torch.nn.ReLU)
    assert float(m.c) == pytest.approx(0.1) and float(m.init_L) == 512.0 and float(m.L_multiplier) == 1.0
    with torch.no_grad():
        m.L_multiplier.fill_(0.01)  # L = 5.12: the threshold matters at these lengths
    want = ref_bias(m.c, m.L_multiplier * m.init_L, m.mlp[0].weight, m.mlp[0].bias, m.mlp[2].weight, m.mlp[2].bias, 9, 9)
    torch.testing.assert_close(m(9, 9), want, **TOL[torch.float64])


def test_state_dict_keys_are_the_reference_codes():
    m = posenc.nn.FIRE(4, mlp_width=8)
    assert sorted(m.state_dict()) == sorted(
        ["c", "init_L", "L_multiplier", "mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias"]
    )
    assert [n for n, _ in m.named_parameters()] == ["c", "L_multiplier", "mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias"]


def test_cpp_twin_same_keys_and_numbers():
    py = posenc.nn.FIRE(3, mlp_width=6, init_c=0.2, init_L=7.0, causal=False)
    cc = posenc.cpp.FIRE(3, mlp_width=6, init_c=0.2, init_L=7.0, causal=False)
    assert list(posenc.cpp.state_dict(cc)) == list(py.state_dict())
    posenc.cpp.load_state_dict(cc, py.state_dict())
    assert torch.equal(cc(5, 9, 4, 0), py(5, 9, 4, 0))
    assert "FIRE(num_heads=3, mlp_width=6, init_c=0.2, init_L=7, eps=1e-06, causal=false)" in repr(cc)


def test_script_module_and_op():
    m = posenc.nn.FIRE(2, mlp_width=4)
    s = torch.jit.script(m)
    assert torch.equal(s(4, 6, 2, 0), m(4, 6, 2, 0))
    assert sorted(s.state_dict()) == sorted(m.state_dict())
    fn = torch.jit.script(ops.fire_bias)
    p = make_params()
    assert torch.equal(fn(*p, 3, 4, 1, 0, True, 1e-6), ops.fire_bias(*p, 3, 4, 1, 0))


P = make_params()


def _with(k, v):
    q = list(P)
    q[k] = v
    return q


@pytest.mark.parametrize(
    "fn,match",
    [
        (lambda: ops.fire_bias(*_with(0, torch.ones(1, dtype=torch.float64)), 3, 3), r"posenc\.fire_bias: argument 'c' must be a 0-D tensor of shape \(\) \(a scalar\), but got a 1-D tensor of shape \[1\]"),
        (lambda: ops.fire_bias(*_with(2, torch.ones(5, 2, dtype=torch.float64)), 3, 3), r"argument 'w1' must have shape \(hidden, 1\) with hidden > 0, but got shape \[5, 2\]"),
        (lambda: ops.fire_bias(*_with(3, torch.ones(4, dtype=torch.float64)), 3, 3), r"argument 'b1' must have length hidden \(5\), but got shape \[4\]"),
        (lambda: ops.fire_bias(*_with(4, torch.ones(3, 4, dtype=torch.float64)), 3, 3), r"argument 'w2' must have shape \(num_heads, hidden = 5\), but got shape \[3, 4\]"),
        (lambda: ops.fire_bias(*_with(5, torch.ones(2, dtype=torch.float64)), 3, 3), r"argument 'b2' must have length num_heads \(3\), but got shape \[2\]"),
        (lambda: ops.fire_bias(*_with(1, torch.tensor(1.0)), 3, 3), r"argument 'L' must have the dtype of 'c' \(Double\), but got dtype Float"),
        (lambda: ops.fire_bias(*[t.long() for t in P], 3, 3), r"argument 'c' must have dtype float16, bfloat16, float32 or float64, but got dtype Long"),
        (lambda: ops.fire_bias(*P, 3, 3, -1, 0), r"posenc\.fire_bias: argument 'q_offset' must be >= 0 \(FIRE normalizes by psi\(max\(L, i\)\) at query position i >= 0\), but got -1"),
        (lambda: ops.fire_bias(*P, -2, 3), r"argument 'q_len' must be >= 0, but got -2"),
        (lambda: ops.fire_bias(*P, 3, 3, eps=0.0), r"argument 'eps' must be finite and > 0, but got 0"),
        (lambda: ops.fire_bias(*P, 3, 3, 0, 2**62), r"argument 'k_offset' must be within \[-2\^61, 2\^61\], but got 4611686018427387904"),
        (lambda: ops.fire_bias(*_with(0, torch.tensor(float("nan"), dtype=torch.float64)), 3, 3), r"argument 'c' must be finite, but got c = nan"),
        (lambda: ops.fire_bias(*_with(4, P[4].clone().index_fill_(1, torch.tensor([3]), float("inf"))), 3, 3), r"argument 'w2' must be finite, but got w2\[0, 3\] = inf"),
        (lambda: torch.ops.posenc.fire_bias_backward(torch.randn(3, 2, 2, dtype=torch.float64), *P, 2, 5, 0, 0, True, 1e-6), r"posenc\.fire_bias_backward: argument 'grad' must have shape \(num_heads, q_len, k_len\) = \[3, 2, 5\], but got shape \[3, 2, 2\]"),
    ],
)
def test_bad_inputs(fn, match):
    with pytest.raises(RuntimeError, match=match):
        fn()


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(num_heads=0), r"posenc\.FIRE: option 'num_heads' must be > 0, but got 0"),
        (dict(num_heads=2, mlp_width=0), r"option 'mlp_width' must be > 0, but got 0"),
        (dict(num_heads=2, init_c=0.0), r"option 'init_c' must be finite and != 0, but got 0"),
        (dict(num_heads=2, init_L=-1.0), r"option 'init_L' must be finite and > 0, but got -1"),
        (dict(num_heads=2, eps=0.0), r"option 'eps' must be finite and > 0, but got 0"),
    ],
)
@pytest.mark.parametrize("cls", [posenc.nn.FIRE, posenc.cpp.FIRE])
def test_bad_options(cls, kw, match):
    with pytest.raises(ValueError, match=match):
        cls(**kw)


def test_bad_inputs_fake_tensor():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        p = [torch.tensor(0.1), torch.tensor(5.0), torch.rand(4, 1), torch.rand(3), torch.rand(2, 4), torch.rand(2)]
        with pytest.raises(RuntimeError, match=r"argument 'b1' must have length hidden \(4\)"):
            torch.ops.posenc.fire_bias(*p, 3, 3)
