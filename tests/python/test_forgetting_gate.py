"""Forgetting-gate bias (Lin et al. 2025, "Forgetting Transformer") against an fp64 reference
written here from the paper: D_ij = log F_ij, F_ij = prod_{j < s <= i} f_s for j <= i and 0
after, i.e. D_ij = sum of the log gates strictly after key j up to the query's own position,
-inf for future keys. Gradients: autograd through that reference in fp64."""
import math

import pytest
import torch
import torch._dynamo.testing
import torch.nn.functional as F
from conftest import FLOAT_DTYPES, TOL

import posenc
import posenc.cpp as pcpp
from posenc import nn as pnn
from posenc import ops
from test_torchscript_cpp import _assert_same, _run_cpp, example_bin  # noqa: F401 (fixture)

NINF = float("-inf")


def log_gates(b, h, k, dtype=torch.float32, requires_grad=False):
    # log sigmoid of random logits: values in (-inf, 0), as a FoX layer produces
    lf = F.logsigmoid(torch.randn(b, h, k, dtype=torch.float64) * 2 + 1).to(dtype)
    return lf.requires_grad_(requires_grad)


def ref_bias(lf, q_len, q_offset=0, k_offset=0):
    """D[b, h, i, j] = sum_{s = j + 1}^{t_i} lf[b, h, s], t_i = q_offset - k_offset + i, for
    j <= t_i; -inf for j > t_i. Explicit segment sums (the paper's product form), in fp64."""
    lf = lf.double()
    B, H, K = lf.shape
    rows = []
    for i in range(q_len):
        t = q_offset - k_offset + i
        cols = []
        for j in range(K):
            if j <= t:
                cols.append(lf[:, :, j + 1 : t + 1].sum(-1))
            else:
                cols.append(torch.full((B, H), NINF, dtype=torch.float64))
        rows.append(torch.stack(cols, -1))
    if not rows:
        return torch.empty(B, H, 0, K, dtype=torch.float64)
    return torch.stack(rows, -2)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape", [(2, 3, 7, 7, 0, 0), (1, 2, 9, 4, 5, 0), (2, 1, 6, 1, 12, 7), (1, 1, 1, 1, 0, 0)])
def test_forward_matches_reference(dtype, shape):
    b, h, k, q_len, q_off, k_off = shape
    lf = log_gates(b, h, k, dtype)
    got = ops.forgetting_gate_bias(lf, q_len, q_off, k_off)
    want = ref_bias(lf, q_len, q_off, k_off)
    assert got.dtype == dtype and got.shape == (b, h, q_len, k) and got.is_contiguous()
    future = torch.isinf(want)
    assert torch.equal(torch.isinf(got), future) and (got[future] < 0).all()
    torch.testing.assert_close(got.double()[~future], want[~future], **TOL[dtype])


def test_diagonal_zero_and_values_nonpositive():
    lf = log_gates(2, 2, 8)
    d = ops.forgetting_gate_bias(lf, 8)
    assert torch.equal(torch.diagonal(d, dim1=-2, dim2=-1), torch.zeros(2, 2, 8))
    assert (d[torch.isfinite(d)] <= 0).all()


def test_non_contiguous_and_expanded_input():
    base = log_gates(3, 4, 10)
    lf = base.transpose(0, 1)  # (4, 3, 10) non-contiguous
    torch.testing.assert_close(ops.forgetting_gate_bias(lf, 10).double(), ref_bias(lf, 10), **TOL[torch.float32])
    e = log_gates(1, 2, 5).expand(3, 2, 5)
    torch.testing.assert_close(ops.forgetting_gate_bias(e, 5).double(), ref_bias(e, 5), **TOL[torch.float32])


def test_decode_and_chunks_equal_full_call():
    lf = log_gates(2, 3, 11, torch.float64)
    full = ops.forgetting_gate_bias(lf, 11)
    # KV-cache decode: one query at the last key position
    last = ops.forgetting_gate_bias(lf, 1, 10, 0)
    assert torch.equal(last, full[:, :, 10:])
    # chunked prefill: queries 4..7 against the keys 0..7 (cache grows with the chunk)
    chunk = ops.forgetting_gate_bias(lf[..., :8], 4, 4, 0)
    torch.testing.assert_close(chunk, full[:, :, 4:8, :8], rtol=0, atol=1e-13)
    # only the offset difference matters
    assert torch.equal(ops.forgetting_gate_bias(lf, 1, 110, 100), last)


def test_gradcheck():
    lf = log_gates(2, 2, 6, torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: ops.forgetting_gate_bias(x, 6).masked_fill(torch.isinf(ref_bias(x.detach(), 6)), 0), (lf,))
    assert torch.autograd.gradcheck(lambda x: ops.forgetting_gate_bias(x, 2, 3, 0).clamp_min(-1e9), (lf,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("q_len,q_off", [(9, 0), (3, 6), (1, 8)])
def test_grad_matches_reference(dtype, q_len, q_off):
    lf = log_gates(2, 3, 9, dtype, requires_grad=True)
    g = torch.randn(2, 3, q_len, 9, dtype=torch.float64)
    out = ops.forgetting_gate_bias(lf, q_len, q_off)
    (got,) = torch.autograd.grad(out, lf, g.to(dtype))
    x = lf.detach().double().requires_grad_(True)
    ref = ref_bias(x, q_len, q_off)
    (want,) = torch.autograd.grad(ref.masked_fill(torch.isinf(ref), 0), x, g)
    torch.testing.assert_close(got.double(), want, **TOL[dtype])


def test_grad_half_precision_inputs():
    lf = log_gates(1, 2, 40, torch.float16, requires_grad=True)
    g = torch.randn(1, 2, 40, 40, dtype=torch.float64)
    (got,) = torch.autograd.grad(ops.forgetting_gate_bias(lf, 40), lf, g.half())
    x = lf.detach().double().requires_grad_(True)
    ref = ref_bias(x, 40)
    (want,) = torch.autograd.grad(ref.masked_fill(torch.isinf(ref), 0), x, g.half().double())
    # fp64 sums: only the final rounding to fp16
    torch.testing.assert_close(got.double(), want, rtol=1e-3, atol=1e-2)


def test_grad_deterministic_across_runs_and_threads():
    lf = log_gates(3, 4, 257, requires_grad=True)
    g = torch.randn(3, 4, 257, 257)
    threads = torch.get_num_threads()
    grads = []
    try:
        for n in (1, 2, 1, 2):
            torch.set_num_threads(n)
            (gl,) = torch.autograd.grad(ops.forgetting_gate_bias(lf, 257), lf, g)
            grads.append(gl)
    finally:
        torch.set_num_threads(threads)
    for gl in grads[1:]:
        assert torch.equal(gl, grads[0])


def test_sdpa_with_the_bias_is_forgetting_attention():
    # FoX: o_i = sum_j F_ij exp(q_i.k_j s) v_j / sum_j F_ij exp(q_i.k_j s), F from the gates
    torch.manual_seed(1)
    B, H, L, D = 2, 2, 6, 4
    q, k, v = (torch.randn(B, H, L, D, dtype=torch.float64) for _ in range(3))
    lf = log_gates(B, H, L, torch.float64)
    f = lf.exp()
    scale = 1 / math.sqrt(D)
    want = torch.zeros(B, H, L, D, dtype=torch.float64)
    for i in range(L):
        w = torch.zeros(B, H, L, dtype=torch.float64)
        for j in range(i + 1):
            Fij = f[:, :, j + 1 : i + 1].prod(-1)
            w[:, :, j] = Fij * torch.exp((q[:, :, i] * k[:, :, j]).sum(-1) * scale)
        want[:, :, i] = (w[..., None] * v).sum(2) / w.sum(-1, keepdim=True)
    bias = ops.forgetting_gate_bias(lf, L)
    got = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    # an extra causal mask changes nothing
    causal = torch.ones(L, L, dtype=torch.bool).tril()
    both = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.masked_fill(~causal, NINF))
    torch.testing.assert_close(both, got, rtol=0, atol=0)


@pytest.mark.parametrize(
    "args",
    [
        (log_gates(2, 3, 5, requires_grad=True), 5, 0, 0),
        (log_gates(1, 2, 7, torch.float64, requires_grad=True), 2, 9, 4),
        (log_gates(1, 1, 4, torch.float16), 4, 0, 0),
        (log_gates(2, 1, 0), 0, 0, 0),
    ],
)
def test_opcheck(args):
    torch.library.opcheck(torch.ops.posenc.forgetting_gate_bias.default, args)


def test_opcheck_backward():
    lf = log_gates(2, 2, 6)
    torch.library.opcheck(
        torch.ops.posenc.forgetting_gate_bias_backward.default, (torch.randn(2, 2, 3, 6), lf, 3, 3, 0)
    )


def test_meta_shapes():
    lf = torch.empty(2, 3, 9, device="meta")
    assert ops.forgetting_gate_bias(lf, 4, 5, 0).shape == (2, 3, 4, 9)


def test_compile_dynamic_no_recompile():
    counter = torch._dynamo.testing.CompileCounter()
    f = torch.compile(lambda x, n, off: ops.forgetting_gate_bias(x, n, off, 0), backend=counter, fullgraph=True, dynamic=True)
    for k, n in ((6, 6), (9, 4), (12, 2)):
        lf = log_gates(1, 2, k)
        torch.testing.assert_close(f(lf, n, k - n), ops.forgetting_gate_bias(lf, n, k - n))
    assert counter.frame_count == 1


def test_compile_inductor_with_grad():
    lf = log_gates(2, 2, 7, requires_grad=True)
    loss = lambda x: ops.forgetting_gate_bias(x, 7).clamp_min(-50).square().sum()
    (want,) = torch.autograd.grad(loss(lf), lf)
    (got,) = torch.autograd.grad(torch.compile(loss, fullgraph=True)(lf), lf)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: ops.forgetting_gate_bias(torch.zeros(2, 5), 5),
         r"posenc\.forgetting_gate_bias: argument 'log_fgate' must be a 3-D tensor of shape \(batch, num_heads, k_len\), but got a 2-D tensor"),
        (lambda: ops.forgetting_gate_bias(torch.zeros(1, 2, 5, dtype=torch.long), 5),
         r"argument 'log_fgate' must have dtype float16, bfloat16, float32 or float64, but got dtype Long"),
        (lambda: ops.forgetting_gate_bias(torch.zeros(1, 2, 5), -1),
         r"argument 'q_len' must be >= 0, but got -1"),
        (lambda: ops.forgetting_gate_bias(torch.zeros(1, 2, 5), 6),
         r"argument 'q_offset' must place every query at a key position \(k_offset <= q_offset and q_offset \+ q_len <= k_offset \+ k_len = 5\).*but got 0 with q_len = 6, k_offset = 0, k_len = 5"),
        (lambda: ops.forgetting_gate_bias(torch.zeros(1, 2, 5), 2, 0, 1),
         r"argument 'q_offset' must place every query at a key position.*but got 0 with q_len = 2, k_offset = 1"),
        (lambda: ops.forgetting_gate_bias(torch.zeros(1, 2, 5), 1, 5, 0),
         r"argument 'q_offset' must place every query.*but got 5 with q_len = 1"),
        (lambda: ops.forgetting_gate_bias(torch.tensor([[[0.0, float("nan"), -1.0]]]), 3),
         r"argument 'log_fgate' must be finite .*but got log_fgate\[0, 0, 1\] = nan"),
        (lambda: ops.forgetting_gate_bias(torch.tensor([[[0.0], [float("-inf")]]]), 1),
         r"argument 'log_fgate' must be finite .*but got log_fgate\[0, 1, 0\] = -inf"),
        (lambda: ops.forgetting_gate_bias(torch.tensor([[[-1.0, float("inf")]]]), 2),
         r"argument 'log_fgate' must be finite .*but got log_fgate\[0, 0, 1\] = inf"),
        (lambda: ops.forgetting_gate_bias(torch.tensor([[[-1.0, 0.25]]]), 2),
         r"argument 'log_fgate' must be <= 0 \(the log of a forget gate in \(0, 1\].*but got log_fgate\[0, 0, 1\] = 0.25"),
        (lambda: ops.forgetting_gate_bias(torch.zeros(1, 1, 3), 1, 2**62, 0),
         r"argument 'q_offset' must be within \[-2\^61, 2\^61\]"),
        (lambda: ops.forgetting_gate_bias(torch.zeros(1, 1, 1).expand(2**20, 1, 2**21), 2**21),
         r"argument 'log_fgate' is too large"),
        (lambda: torch.ops.posenc.forgetting_gate_bias_backward(torch.zeros(1, 2, 3, 4), torch.zeros(1, 2, 5), 3, 0, 0),
         r"posenc\.forgetting_gate_bias_backward: argument 'grad' must have shape \(batch, num_heads, q_len, k_len\) = \[1, 2, 3, 5\], but got shape \[1, 2, 3, 4\]"),
    ],
)
def test_bad_inputs(call, match):
    with pytest.raises(RuntimeError, match=match):
        call()


def test_zero_gate_is_allowed_and_exact():
    # log f = 0 (f = 1: nothing forgotten): the bias is 0 on and below the diagonal
    d = ops.forgetting_gate_bias(torch.zeros(1, 1, 4), 4)
    assert torch.equal(d, torch.zeros(4, 4).masked_fill(torch.ones(4, 4, dtype=torch.bool).triu(1), NINF)[None, None])


# ---- modules -------------------------------------------------------------------------------


def test_module_forward_python_and_cpp_agree():
    py = pnn.ForgettingGate(8, 3)
    cc = pcpp.ForgettingGate(8, 3)
    assert list(py.state_dict()) == ["proj.weight", "proj.bias"]
    assert list(pcpp.state_dict(cc)) == ["proj.weight", "proj.bias"]
    assert torch.equal(py.proj.bias, torch.zeros(3)) and 0.005 < py.proj.weight.std() < 0.05
    pcpp.load_state_dict(cc, py.state_dict())
    x = torch.randn(2, 5, 8)
    lf = F.logsigmoid(x @ py.proj.weight.detach().T + py.proj.bias.detach()).transpose(1, 2)
    torch.testing.assert_close(py.log_fgate(x), lf)
    torch.testing.assert_close(cc.log_fgate(x), lf)
    want = ref_bias(lf, 5)
    for m in (py, cc):
        out = m(x)
        assert out.shape == (2, 3, 5, 5) and out.dtype == torch.float32
        torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=1e-6)
    assert repr(cc) == "posenc::nn::ForgettingGate(d_model=8, num_heads=3, init_std=0.02)"
    assert "d_model=8, num_heads=3, init_std=0.02" in repr(py)


def test_module_gradient_reaches_the_projection():
    m = pnn.ForgettingGate(4, 2)
    x = torch.randn(1, 6, 4)
    m(x).clamp_min(-100).sum().backward()
    assert m.proj.weight.grad is not None and m.proj.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("M", [pnn, pcpp])
def test_module_bad_options_and_inputs(M):
    with pytest.raises(ValueError, match=r"posenc\.ForgettingGate: option 'd_model' must be > 0, but got 0"):
        M.ForgettingGate(0, 2)
    with pytest.raises(ValueError, match=r"posenc\.ForgettingGate: option 'num_heads' must be > 0, but got -1"):
        M.ForgettingGate(4, -1)
    with pytest.raises(ValueError, match=r"posenc\.ForgettingGate: option 'init_std' must be finite and >= 0, but got -1"):
        M.ForgettingGate(4, 2, init_std=-1.0)
    with pytest.raises(RuntimeError, match=r"posenc\.ForgettingGate: argument 'x' must be a 3-D tensor of shape \(batch, seq, d_model = 4\), but got shape \[2, 5\]"):
        M.ForgettingGate(4, 2)(torch.randn(2, 5))


def _decode_bias(lf: torch.Tensor, n: int, off: int) -> torch.Tensor:
    return ops.forgetting_gate_bias(lf, n, off, 0)


def test_script_module_and_op():
    m = pnn.ForgettingGate(8, 2)
    s = torch.jit.script(m)
    x = torch.randn(2, 5, 8)
    assert torch.equal(s(x), m(x))
    assert torch.equal(s.log_fgate(x), m.log_fgate(x))
    f = torch.jit.script(_decode_bias)
    lf = log_gates(1, 2, 6)
    assert torch.equal(f(lf, 2, 4), ops.forgetting_gate_bias(lf, 2, 4))


def test_compile_module_fullgraph():
    m = pnn.ForgettingGate(8, 2)
    x = torch.randn(2, 5, 8)
    torch.testing.assert_close(torch.compile(m, fullgraph=True)(x), m(x))


def test_scripted_module_runs_in_cpp(example_bin, tmp_path):
    # torch.jit.script in Python, torch::jit::load in the C++ example program (the op resolves
    # as torch.ops.posenc.forgetting_gate_bias there)
    m = pnn.ForgettingGate(8, 2).eval()
    x = torch.randn(2, 5, 8)
    with torch.no_grad():
        want = m(x)
    _assert_same(_run_cpp(example_bin, torch.jit.script(m), (x,), tmp_path), want)


# ---- the fused term: posenc.ops.relative_attention(..., log_fgate=...) ---------------------


def ref_attention(q, k, v, lf, q_offset=0, k_offset=0, scale=None, kpm=None):
    """softmax(scale q k^T + D [+ padding mask]) v and its log-sum-exp, fp64, D from ref_bias."""
    q, k, v = q.double(), k.double(), v.double()
    g = q.size(1) // k.size(1)
    k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    scale = q.size(-1) ** -0.5 if scale is None else scale
    s = q @ k.transpose(-1, -2) * scale + ref_bias(lf, q.size(2), q_offset, k_offset)
    if kpm is not None:
        s = s.masked_fill(kpm[:, None, None, :], NINF)
    return torch.softmax(s, -1) @ v, torch.logsumexp(s, -1)


def _qkv(B, H, Hkv, Lq, Lk, D, dtype=torch.float32, requires_grad=False):
    out = [torch.randn(B, H, Lq, D, dtype=dtype), torch.randn(B, Hkv, Lk, D, dtype=dtype), torch.randn(B, Hkv, Lk, D, dtype=dtype)]
    return [t.requires_grad_(requires_grad) for t in out]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "B,H,Hkv,Lq,Lk,q_off,k_off",
    [(2, 2, 2, 9, 9, 0, 0), (1, 4, 2, 5, 13, 8, 0), (2, 2, 1, 1, 40, 39, 0), (1, 2, 2, 70, 70, 3, 3), (1, 1, 1, 600, 600, 0, 0)],
)
def test_fused_matches_reference_forward_lse_and_grads(dtype, B, H, Hkv, Lq, Lk, q_off, k_off):
    q, k, v = _qkv(B, H, Hkv, Lq, Lk, 8, dtype, requires_grad=True)
    lf = log_gates(B, H, Lk, dtype, requires_grad=True)
    if Lq * Lk > 10000:  # ref_bias loops in Python: use the (checked) bias op for the long case
        bias_fn = lambda x: ops.forgetting_gate_bias(x, Lq, q_off, k_off).double()
    else:
        bias_fn = lambda x: ref_bias(x, Lq, q_off, k_off)
    out, lse = ops.relative_attention(q, k, v, causal=True, q_offset=q_off, k_offset=k_off, log_fgate=lf)
    go, gl = torch.randn_like(out), torch.randn_like(lse)
    grads = torch.autograd.grad((out * go).sum() + (lse * gl).sum(), (q, k, v, lf))
    xs = [t.detach().double().requires_grad_(True) for t in (q, k, v, lf)]
    g = H // Hkv
    kk, vv = xs[1].repeat_interleave(g, 1), xs[2].repeat_interleave(g, 1)
    s = xs[0] @ kk.transpose(-1, -2) * 8 ** -0.5 + bias_fn(xs[3])
    want_out, want_lse = torch.softmax(s, -1) @ vv, torch.logsumexp(s, -1)
    wants = torch.autograd.grad((want_out * go.double()).sum() + (want_lse * gl.double()).sum(), xs)
    tol = dict(rtol=1e-9, atol=1e-9) if dtype == torch.float64 else dict(rtol=2e-4, atol=2e-4)
    torch.testing.assert_close(out.double(), want_out, **tol)
    torch.testing.assert_close(lse.double(), want_lse, **tol)
    for name, got, want in zip("q k v log_fgate".split(), grads, wants):
        torch.testing.assert_close(got.double(), want, **tol, msg=lambda m: f"grad {name}: {m}")


def test_fused_equals_materialized_bias_with_sdpa_half():
    q, k, v = _qkv(2, 2, 2, 33, 33, 16, torch.bfloat16)
    lf = log_gates(2, 2, 33)
    out, _ = ops.relative_attention(q, k, v, causal=True, log_fgate=lf)
    want, _ = ref_attention(q, k, v, lf)
    torch.testing.assert_close(out.double(), want, **TOL[torch.bfloat16])


def test_fused_padding_mask():
    q, k, v = _qkv(2, 2, 2, 7, 7, 8, torch.float64)
    lf = log_gates(2, 2, 7, torch.float64)
    kpm = torch.zeros(2, 7, dtype=torch.bool)
    kpm[1, :2] = True
    out, lse = ops.relative_attention(q, k, v, causal=True, key_padding_mask=kpm, log_fgate=lf)
    want, want_lse = ref_attention(q, k, v, lf, kpm=kpm)
    # rows whose every allowed key is padding: zeros and lse = -inf (the op's convention)
    dead = torch.isinf(want_lse)
    torch.testing.assert_close(out[~dead], want[~dead], rtol=1e-10, atol=1e-12)
    assert (out[dead] == 0).all() and torch.isneginf(lse[dead]).all()


def test_fused_decode_step_equals_last_row():
    q, k, v = _qkv(1, 2, 2, 12, 12, 8, torch.float64)
    lf = log_gates(1, 2, 12, torch.float64)
    full, full_lse = ops.relative_attention(q, k, v, causal=True, log_fgate=lf)
    last, last_lse = ops.relative_attention(q[:, :, -1:], k, v, causal=True, q_offset=11, log_fgate=lf)
    torch.testing.assert_close(last, full[:, :, -1:], rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(last_lse, full_lse[:, :, -1:], rtol=1e-12, atol=1e-13)


def test_fused_thd_equals_per_sequence_calls():
    lens = [5, 9, 3]
    cu = torch.tensor([0, 5, 14, 17])
    q = torch.randn(17, 4, 8, dtype=torch.float64, requires_grad=True)
    k = torch.randn(17, 2, 8, dtype=torch.float64, requires_grad=True)
    v = torch.randn(17, 2, 8, dtype=torch.float64, requires_grad=True)
    lf = log_gates(1, 17, 4, torch.float64)[0].requires_grad_(True)  # (Tk, H)
    out, lse = ops.relative_attention(q, k, v, causal=True, layout="thd", cu_seqlens_q=cu, log_fgate=lf)
    (out.square().sum() + lse.sum()).backward()
    for s, n in enumerate(lens):
        a, b = int(cu[s]), int(cu[s + 1])
        qs, ks, vs = (t.detach()[a:b].transpose(0, 1)[None].requires_grad_(True) for t in (q, k, v))
        ls = lf.detach()[a:b].t()[None].contiguous().requires_grad_(True)
        o, l = ops.relative_attention(qs, ks, vs, causal=True, log_fgate=ls)
        torch.testing.assert_close(out[a:b].transpose(0, 1)[None], o, rtol=1e-12, atol=1e-13)
        torch.testing.assert_close(lse[:, a:b][None], l, rtol=1e-12, atol=1e-13)
        (o.square().sum() + l.sum()).backward()
        torch.testing.assert_close(lf.grad[a:b].t()[None], ls.grad, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(q.grad[a:b].transpose(0, 1)[None], qs.grad, rtol=1e-10, atol=1e-12)


def test_fused_log_fgate_grad_deterministic():
    q, k, v = _qkv(2, 4, 2, 300, 300, 16, requires_grad=True)
    lf = log_gates(2, 4, 300, requires_grad=True)
    threads = torch.get_num_threads()
    grads = []
    try:
        for n in (1, 2, 2, 1):
            torch.set_num_threads(n)
            out, lse = ops.relative_attention(q, k, v, causal=True, log_fgate=lf)
            grads.append(torch.autograd.grad(out.sum() + lse.sum(), (lf, q, k, v)))
    finally:
        torch.set_num_threads(threads)
    for gs in grads[1:]:
        for a, b in zip(gs, grads[0]):
            assert torch.equal(a, b)


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(causal=False), r"argument 'log_fgate' requires causal=True"),
        (dict(causal=True, slopes=torch.ones(2)), r"argument 'log_fgate' must not be combined with another position term.*both 'slopes' and 'log_fgate'"),
        (dict(causal=True, bidirectional=False), r"argument 'bidirectional' is used only by ALiBi, T5 and KERPLE"),
        (dict(causal=True, q_offset=1), r"argument 'q_offset' must place every query at a key position"),
    ],
)
def test_fused_bad_inputs(kw, match):
    q, k, v = _qkv(1, 2, 2, 4, 4, 8)
    with pytest.raises(RuntimeError, match=r"posenc\.relative_attention: " + match):
        ops.relative_attention(q, k, v, log_fgate=log_gates(1, 2, 4), **kw)


def test_fused_bad_log_fgate_shape_and_values():
    q, k, v = _qkv(1, 2, 2, 4, 4, 8)
    with pytest.raises(RuntimeError, match=r"argument 'log_fgate' must have shape \(batch, heads, k_len\) = \[1, 2, 4\].*but got shape \[1, 2, 5\]"):
        ops.relative_attention(q, k, v, causal=True, log_fgate=log_gates(1, 2, 5))
    bad = log_gates(1, 2, 4)
    bad[0, 1, 2] = float("nan")
    with pytest.raises(RuntimeError, match=r"argument 'log_fgate' must be finite .*log_fgate\[0, 1, 2\] = nan"):
        ops.relative_attention(q, k, v, causal=True, log_fgate=bad)
    cu = torch.tensor([0, 2, 4])
    with pytest.raises(RuntimeError, match=r"argument 'log_fgate' needs every query at a key position of its sequence.*sequence 0 with q_len = 2, k_len = 1"):
        ops.relative_attention(q[0].transpose(0, 1), k[0].transpose(0, 1)[:3], v[0].transpose(0, 1)[:3], causal=True, layout="thd",
                               cu_seqlens_q=cu, cu_seqlens_k=torch.tensor([0, 1, 3]), log_fgate=log_gates(1, 3, 2)[0])


def test_fused_opcheck():
    q, k, v = _qkv(1, 2, 1, 6, 6, 8, requires_grad=True)
    lf = log_gates(1, 2, 6, requires_grad=True)
    torch.library.opcheck(torch.ops.posenc.relative_attention.default, (q, k, v), dict(causal=True, log_fgate=lf))
    q2 = torch.randn(9, 2, 8)
    k2 = torch.randn(9, 2, 8)
    torch.library.opcheck(
        torch.ops.posenc.relative_attention.default, (q2, k2, k2.clone()),
        dict(causal=True, layout="thd", cu_seqlens_q=torch.tensor([0, 4, 9]), log_fgate=log_gates(1, 9, 2)[0]),
    )


def test_fused_compile_fullgraph():
    q, k, v = _qkv(1, 2, 2, 10, 10, 8, requires_grad=True)
    lf = log_gates(1, 2, 10, requires_grad=True)
    f = lambda q, k, v, lf: ops.relative_attention(q, k, v, causal=True, log_fgate=lf)[0].sum()
    want = torch.autograd.grad(f(q, k, v, lf), (q, k, v, lf))
    got = torch.autograd.grad(torch.compile(f, fullgraph=True)(q, k, v, lf), (q, k, v, lf))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("M", [pnn, pcpp])
def test_module_attention_equals_forward_bias_with_sdpa(M):
    m = M.ForgettingGate(16, 2)
    x = torch.randn(2, 7, 16)
    q, k, v = _qkv(2, 2, 2, 7, 7, 8)
    got = m.attention(q, k, v, x)
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=m(x))
    torch.testing.assert_close(got, want, rtol=2e-5, atol=2e-6)


def test_module_attention_scripted():
    m = pnn.ForgettingGate(16, 2)
    s = torch.jit.script(m)
    x = torch.randn(1, 5, 16)
    q, k, v = _qkv(1, 2, 1, 5, 5, 8)
    assert torch.equal(s.attention(q, k, v, x), m.attention(q, k, v, x))


# ---- NoPE ----------------------------------------------------------------------------------


@pytest.mark.parametrize("M", [pnn, pcpp])
def test_nope_module(M):
    m = M.NoPE()
    x = torch.randn(2, 3, 4)
    assert m(x) is x or torch.equal(m(x), x)
    q, k, v = _qkv(2, 2, 1, 6, 6, 8, torch.float64)
    kk, vv = k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)
    s = q @ kk.transpose(-1, -2) / math.sqrt(8)
    s = s.masked_fill(torch.ones(6, 6, dtype=torch.bool).triu(1), NINF)
    torch.testing.assert_close(m.attention(q, k, v), torch.softmax(s, -1) @ vv, rtol=1e-12, atol=1e-12)
    nc = M.NoPE(causal=False)
    torch.testing.assert_close(nc.attention(q, k, v), torch.softmax(q @ kk.transpose(-1, -2) / math.sqrt(8), -1) @ vv, rtol=1e-12, atol=1e-12)
    assert len(list(m.parameters())) == 0


def test_nope_scripted_and_repr():
    s = torch.jit.script(pnn.NoPE())
    q, k, v = _qkv(1, 2, 2, 4, 4, 8)
    assert torch.equal(s.attention(q, k, v), pnn.NoPE().attention(q, k, v))
    assert repr(pcpp.NoPE()) == "posenc::nn::NoPE(causal=true)"
    assert "causal=True" in repr(pnn.NoPE())
