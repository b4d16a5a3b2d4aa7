"""Dynamic position bias (x-transformers' DynamicPositionBias, after Wang et al. 2021): the op and
the modules against an fp64 reference written in the test as x-transformers computes it (the MLP
on a full (q_len, k_len) distance matrix, plain torch), forward and every gradient."""
import pytest
import torch
import torch.nn.functional as F
from conftest import TOL

import posenc
from posenc import ops


def make_params(dim=6, heads=3, depth=2, norm=False, dtype=torch.float64, requires_grad=False):
    ws, bs, gs = [], [], []
    d_in = 1
    for l in range(depth + 1):
        d_out = heads if l == depth else dim
        ws.append(torch.randn(d_out, d_in, dtype=dtype) * 0.7)
        bs.append(torch.randn(d_out, dtype=dtype) * 0.3)
        if norm and l < depth:
            gs.append(1 + 0.2 * torch.randn(d_out, dtype=dtype))
        d_in = d_out
    for t in ws + bs + gs:
        t.requires_grad_(requires_grad)
    return ws, bs, gs


def ref_bias(ws, bs, gs, q_len, k_len, q_offset=0, k_offset=0, log_distance=False,
             causal=False, eps=1e-5):
    """x-transformers' DynamicPositionBias.forward, in fp64: the MLP on every (i, j) entry."""
    qp = torch.arange(q_len, dtype=torch.float64) + q_offset
    kp = torch.arange(k_len, dtype=torch.float64) + k_offset
    d = qp[:, None] - kp[None, :]  # query minus key, as x-transformers' seq_arange - context_arange
    x = torch.sign(d) * torch.log(d.abs() + 1) if log_distance else d
    x = x[..., None]
    for l in range(len(ws) - 1):
        x = F.linear(x, ws[l].double(), bs[l].double())
        if gs:  # x-transformers' LayerNorm: F.layer_norm without affine, times gamma
            x = F.layer_norm(x, (x.shape[-1],), eps=eps) * gs[l].double()
        x = F.silu(x)
    x = F.linear(x, ws[-1].double(), bs[-1].double())  # (q_len, k_len, H)
    out = x.permute(2, 0, 1)
    if causal:
        out = torch.where((kp[None, :] > qp[:, None])[None], torch.zeros_like(out), out)
    return out


def call(ws, bs, gs, *args, **kw):
    return ops.dynamic_position_bias(ws, bs, *args, norm_weights=gs, **kw)


CASES = [
    # depth, norm, log_distance, causal, q_len, k_len, q_offset, k_offset
    (1, False, False, False, 5, 5, 0, 0),
    (2, False, True, False, 7, 7, 0, 0),
    (2, True, False, False, 4, 9, 5, 0),
    (3, True, True, True, 6, 6, 0, 0),
    (2, False, False, True, 3, 11, 8, 0),
    (2, True, True, True, 9, 4, 0, 3),  # keys ahead: most entries future
    (2, False, True, False, 1, 13, 12, 0),
    (2, True, False, True, 70, 80, 10, 0),  # more than one backward block of rows
]


@pytest.mark.parametrize("depth,norm,log_distance,causal,q_len,k_len,q_offset,k_offset", CASES)
def test_forward_matches_reference(depth, norm, log_distance, causal, q_len, k_len, q_offset, k_offset):
    ws, bs, gs = make_params(depth=depth, norm=norm)
    got = call(ws, bs, gs, q_len, k_len, q_offset, k_offset, log_distance, causal)
    want = ref_bias(ws, bs, gs, q_len, k_len, q_offset, k_offset, log_distance, causal)
    assert got.shape == (3, q_len, k_len) and got.dtype == torch.float64
    torch.testing.assert_close(got, want, **TOL[torch.float64])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_forward_low_precision(dtype):
    ws, bs, gs = make_params(norm=True, dtype=dtype)
    got = call(ws, bs, gs, 6, 8, 2, 0, True, False)
    assert got.dtype == dtype
    want = ref_bias(ws, bs, gs, 6, 8, 2, 0, True, False)
    # fp32 math: only the output's rounding for half types.
    torch.testing.assert_close(got.double(), want, **TOL[dtype])


@pytest.mark.parametrize("depth,norm,log_distance,causal,q_len,k_len,q_offset,k_offset", CASES)
def test_gradients_match_reference(depth, norm, log_distance, causal, q_len, k_len, q_offset, k_offset):
    ws, bs, gs = make_params(depth=depth, norm=norm, requires_grad=True)
    g = torch.randn(3, q_len, k_len, dtype=torch.float64)
    params = ws + bs + gs
    got = torch.autograd.grad((call(ws, bs, gs, q_len, k_len, q_offset, k_offset, log_distance, causal) * g).sum(), params)
    want = torch.autograd.grad((ref_bias(ws, bs, gs, q_len, k_len, q_offset, k_offset, log_distance, causal) * g).sum(), params)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("norm,log_distance,causal", [(False, False, False), (True, True, True), (True, False, False)])
def test_gradcheck(norm, log_distance, causal):
    ws, bs, gs = make_params(dim=3, heads=2, norm=norm, requires_grad=True)
    n, m = len(ws), len(gs)

    def f(*p):
        return call(list(p[:n]), list(p[n:2 * n]), list(p[2 * n:]), 4, 6, 2, 0, log_distance, causal)

    assert torch.autograd.gradcheck(f, tuple(ws + bs + gs))
    assert m == (2 if norm else 0)


def test_float32_gradients_close_to_fp64():
    ws, bs, gs = make_params(norm=True, dtype=torch.float32, requires_grad=True)
    g = torch.randn(3, 40, 40)
    got = torch.autograd.grad((call(ws, bs, gs, 40, 40, 0, 0, True, True) * g).sum(), ws + bs + gs)
    w64 = [t.detach().double().requires_grad_() for t in ws + bs + gs]
    n = len(ws)
    ref = ref_bias(w64[:n], w64[n:2 * n], w64[2 * n:], 40, 40, 0, 0, True, True)
    want = torch.autograd.grad((ref * g.double()).sum(), w64)
    for a, b in zip(got, want):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a.double(), b, rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("log_distance,causal", [(False, True), (True, False)])
def test_decode_row_equals_last_row_of_full_call(log_distance, causal):
    ws, bs, gs = make_params(norm=True, dtype=torch.float32)
    L = 17
    full = call(ws, bs, gs, L, L, 0, 0, log_distance, causal)
    step = call(ws, bs, gs, 1, L, L - 1, 0, log_distance, causal)
    assert torch.equal(step[:, 0], full[:, -1])
    # Transformer-XL-style: a block of queries after a memory equals the full call's rows.
    blk = call(ws, bs, gs, 5, L, L - 5, 0, log_distance, causal)
    assert torch.equal(blk, full[:, -5:])


def test_gradients_deterministic_across_runs_and_threads():
    ws, bs, gs = make_params(dim=32, heads=4, norm=True, dtype=torch.float32, requires_grad=True)
    g = torch.randn(4, 300, 520)
    threads = torch.get_num_threads()

    def grads():
        out = call(ws, bs, gs, 300, 520, 220, 0, True, False)
        return torch.autograd.grad(out, ws + bs + gs, g)

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
    ws, bs, gs = make_params(norm=True)
    wt = [w.t().contiguous().t() if w.shape[1] > 1 else w for w in ws]  # column-major copies
    bt = [torch.stack([b, b], 1)[:, 0] for b in bs]
    assert not wt[1].is_contiguous() and not bt[0].is_contiguous()
    assert torch.equal(call(wt, bt, gs, 4, 6), call(ws, bs, gs, 4, 6))


@pytest.mark.parametrize("q_len,k_len", [(0, 4), (4, 0), (1, 1)])
def test_empty_and_unit_sizes(q_len, k_len):
    ws, bs, gs = make_params(requires_grad=True)
    out = call(ws, bs, gs, q_len, k_len, 0, 0, False, True)
    assert out.shape == (3, q_len, k_len)
    torch.testing.assert_close(out, ref_bias(ws, bs, gs, q_len, k_len, causal=True))
    grads = torch.autograd.grad(out.sum(), ws + bs, allow_unused=True)
    for gr, p in zip(grads, ws + bs):
        assert gr is None or gr.shape == p.shape


def test_all_future_causal_is_zero_with_zero_gradient():
    ws, bs, gs = make_params(requires_grad=True)
    out = call(ws, bs, gs, 3, 4, 0, 10, False, True)  # every key after every query
    assert torch.equal(out, torch.zeros(3, 3, 4, dtype=torch.float64))
    for gr in torch.autograd.grad(out.sum(), ws + bs):
        assert torch.equal(gr, torch.zeros_like(gr))


SAMPLES = [
    (*make_params()[:2], [], 3, 5, 2, 0, False, False, 1e-5),
    (*make_params(norm=True, requires_grad=True), 4, 4, 0, 0, True, True, 1e-5),
    (*make_params(dtype=torch.float32, requires_grad=True)[:2], [], 2, 7, 5, 0, True, True, 1e-5),
    (*make_params(depth=1, dtype=torch.float16)[:2], [], 1, 6, 5, 0, False, False, 1e-5),
]


@pytest.mark.parametrize("args", SAMPLES)
def test_opcheck(args):
    torch.library.opcheck(torch.ops.posenc.dynamic_position_bias.default, args)


def test_opcheck_backward():
    ws, bs, gs = make_params(norm=True)
    torch.library.opcheck(
        torch.ops.posenc.dynamic_position_bias_backward.default,
        (torch.randn(3, 3, 4, dtype=torch.float64), ws, bs, gs, 3, 4, 1, 0, True, True, 1e-5),
    )


def test_compile_fullgraph_with_grad():
    m = posenc.nn.DynamicPositionBias(8, 2, norm=True, log_distance=True, causal=True)
    f = torch.compile(lambda n, off: (m(n, n + off, off, 0) ** 2).sum(), fullgraph=True)
    f(6, 2).backward()
    got = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    (m(6, 8, 2, 0) ** 2).sum().backward()
    for a, p in zip(got, m.parameters()):
        torch.testing.assert_close(a, p.grad)


def test_module_equals_op_and_reference():
    torch.manual_seed(1)
    m = posenc.nn.DynamicPositionBias(8, 4, depth=3, log_distance=True, norm=True).double()
    ws = [m.mlp[l][0].weight for l in range(3)] + [m.mlp[3].weight]
    bs = [m.mlp[l][0].bias for l in range(3)] + [m.mlp[3].bias]
    gs = [m.mlp[l][1].gamma for l in range(3)]
    torch.testing.assert_close(m(5, 7, 2, 0), ref_bias(ws, bs, gs, 5, 7, 2, 0, True), **TOL[torch.float64])


def test_state_dict_keys_are_x_transformers():
    # x-transformers: mlp = [Sequential(Linear(1, dim), [LayerNorm(dim)], SiLU), ... depth - 1
    # more with Linear(dim, dim) ..., Linear(dim, heads)]; its LayerNorm holds `gamma`.
    plain = posenc.nn.DynamicPositionBias(16, 4, depth=2)
    assert list(plain.state_dict()) == [
        "mlp.0.0.weight", "mlp.0.0.bias", "mlp.1.0.weight", "mlp.1.0.bias", "mlp.2.weight", "mlp.2.bias",
    ]
    normed = posenc.nn.DynamicPositionBias(16, 4, depth=2, norm=True)
    assert list(normed.state_dict()) == [
        "mlp.0.0.weight", "mlp.0.0.bias", "mlp.0.1.gamma", "mlp.1.0.weight", "mlp.1.0.bias",
        "mlp.1.1.gamma", "mlp.2.weight", "mlp.2.bias",
    ]
    shapes = {k: tuple(v.shape) for k, v in normed.state_dict().items()}
    assert shapes["mlp.0.0.weight"] == (16, 1) and shapes["mlp.2.weight"] == (4, 16)


@pytest.mark.parametrize("norm", [False, True])
def test_cpp_twin_same_keys_and_numbers(norm):
    py = posenc.nn.DynamicPositionBias(8, 3, depth=2, norm=norm, log_distance=True, causal=True)
    cc = posenc.cpp.DynamicPositionBias(8, 3, depth=2, norm=norm, log_distance=True, causal=True)
    assert list(posenc.cpp.state_dict(cc)) == list(py.state_dict())
    with torch.no_grad():
        for p in py.parameters():
            p.add_(0.1 * torch.randn_like(p))
    posenc.cpp.load_state_dict(cc, py.state_dict())
    assert torch.equal(cc(5, 9, 4, 0), py(5, 9, 4, 0))
    assert "DynamicPositionBias(dim=8, num_heads=3, depth=2" in repr(cc)


def test_script_module_and_op():
    m = posenc.nn.DynamicPositionBias(8, 2, norm=True, log_distance=True)
    s = torch.jit.script(m)
    assert torch.equal(s(4, 6, 2, 0), m(4, 6, 2, 0))
    assert list(s.state_dict()) == list(m.state_dict())
    fn = torch.jit.script(ops.dynamic_position_bias)
    ws, bs, _ = make_params()
    assert torch.equal(fn(ws, bs, 3, 4, 1, 0, False, True, None, 1e-5), call(ws, bs, [], 3, 4, 1, 0, False, True))


def test_module_layers_refuse_direct_call():
    m = posenc.nn.DynamicPositionBias(4, 2)
    with pytest.raises(RuntimeError, match="evaluated by the op"):
        m.mlp[0](torch.zeros(1, 1))


W, B, G = make_params(norm=True)


@pytest.mark.parametrize(
    "fn,match",
    [
        (lambda: call(W[:1], B[:1], [], 3, 3), r"posenc\.dynamic_position_bias: argument 'weights' must hold at least 2 tensors .*, but got 1 tensors"),
        (lambda: call(W, B[:2], [], 3, 3), r"argument 'biases' must hold one tensor per weight \(3\), but got 2 tensors"),
        (lambda: call(W, B, G[:1], 3, 3), r"argument 'norm_weights' must be empty or hold one tensor per hidden layer \(2\), but got 1 tensors"),
        (lambda: call([W[0].t()] + W[1:], B, [], 3, 3), r"argument 'weights\[0\]' must have in_features 1 \(the distance is a scalar\), but got shape \[1, 6\]"),
        (lambda: call([W[0], W[1][:, :4], W[2]], B, [], 3, 3), r"argument 'weights\[1\]' must have in_features 6 \(the previous layer's out_features\), but got shape \[6, 4\]"),
        (lambda: call(W, [B[0][:5]] + B[1:], [], 3, 3), r"argument 'biases\[0\]' must have length out_features of weights\[0\] \(6\), but got shape \[5\]"),
        (lambda: call([W[0].float()] + W[1:], B, [], 3, 3), r"argument 'biases\[0\]' must have the dtype of 'weights\[0\]' \(Float\), but got dtype Double"),
        (lambda: call([W[0].long()] + W[1:], B, [], 3, 3), r"argument 'weights\[0\]' must have dtype float16, bfloat16, float32 or float64, but got dtype Long"),
        (lambda: call([W[0][0]] + W[1:], B, [], 3, 3), r"argument 'weights\[0\]' must be a 2-D tensor of shape \(out_features, in_features\), but got a 1-D tensor"),
        (lambda: call(W, B, [G[0], G[1][:2]], 3, 3), r"argument 'norm_weights\[1\]' must have length out_features of weights\[1\] \(6\), but got shape \[2\]"),
        (lambda: call(W, B, G, 3, 3, norm_eps=0.0), r"argument 'norm_eps' must be finite and > 0, but got 0"),
        (lambda: call(W, B, [], -1, 3), r"posenc\.dynamic_position_bias: argument 'q_len' must be >= 0, but got -1"),
        (lambda: call(W, B, [], 3, 3, 2**62), r"argument 'q_offset' must be within \[-2\^61, 2\^61\], but got 4611686018427387904"),
        (lambda: call([W[0], W[1].clone().index_fill_(1, torch.tensor([2]), float("nan")), W[2]], B, [], 3, 3), r"argument 'weights\[1\]' must be finite, but got weights\[1\]\[0, 2\] = nan"),
        (lambda: call(W, B, [G[0], torch.full((6,), float("inf"), dtype=torch.float64)], 3, 3), r"argument 'norm_weights\[1\]' must be finite, but got norm_weights\[1\]\[0\] = inf"),
        (lambda: torch.ops.posenc.dynamic_position_bias_backward(torch.randn(3, 2, 2, dtype=torch.float64), W, B, [], 2, 5, 0, 0, False, False, 1e-5), r"posenc\.dynamic_position_bias_backward: argument 'grad' must have shape \(num_heads, q_len, k_len\) = \[3, 2, 5\], but got shape \[3, 2, 2\]"),
    ],
)
def test_bad_inputs(fn, match):
    with pytest.raises(RuntimeError, match=match):
        fn()


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(dim=0, num_heads=2), r"posenc\.DynamicPositionBias: option 'dim' must be > 0, but got 0"),
        (dict(dim=4, num_heads=0), r"option 'num_heads' must be > 0, but got 0"),
        (dict(dim=4, num_heads=2, depth=0), r"option 'depth' must be >= 1, but got 0"),
    ],
)
@pytest.mark.parametrize("cls", [posenc.nn.DynamicPositionBias, posenc.cpp.DynamicPositionBias])
def test_bad_options(cls, kw, match):
    with pytest.raises(ValueError, match=match):
        cls(**kw)


def test_bad_inputs_fake_tensor():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        ws = [torch.rand(4, 1), torch.rand(2, 3)]
        bs = [torch.rand(4), torch.rand(2)]
        with pytest.raises(RuntimeError, match=r"argument 'weights\[1\]' must have in_features 4"):
            torch.ops.posenc.dynamic_position_bias(ws, bs, [], 3, 3)
