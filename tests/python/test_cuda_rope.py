"""RoPE and apply_rotary_pos_emb CUDA kernels against the CPU kernels and the fp64 references
of test_rope.py (Su et al. 2021; Hugging Face's apply_rotary_pos_emb)."""
import pytest
import torch
from conftest import CUDA_TEST_DEVICE as DEV
from conftest import FLOAT_DTYPES, TOL, requires_cuda, requires_real_cuda, to_device
from test_rope import (
    F64,
    abs_positions,
    apply_samples,
    cu_tensor,
    f32_angles,
    magnitude_samples,
    make_positions,
    make_x,
    ref_apply,
    ref_rope,
    ref_rope_thd,
    ref_scale,
    ref_xpos_zeta,
    rope_samples,
    thd_positions,
    xpos_mag,
)

from posenc import ops

pytestmark = [requires_cuda, pytest.mark.usefixtures("nan_filled_empty")]


def tol(dtype):
    # fp32: products of N(0, 1) inputs are rounded (or fused) differently by the two kernels
    # and the reference; 1e-5 absolute covers the rare large term.
    return dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else TOL[dtype]


def dev(t):
    return None if t is None else t.to(DEV)


def rope_both(x, positions, inv, offset, rot, interleaved, layout):
    """The op on the CPU and on the device, with the same inputs."""
    cpu = ops.rope(x, positions, inv, offset, rot, interleaved, layout)
    out = ops.rope(dev(x), dev(positions), dev(inv), offset, rot, interleaved, layout)
    assert out.device.type == DEV and out.dtype == x.dtype and out.shape == x.shape
    assert out.is_contiguous()
    return cpu, out


CASES = [
    # B, H, S, D, rot, offset, positions kind
    (2, 3, 5, 8, 8, 0, None),
    (1, 2, 7, 16, 8, 11, None),
    (3, 1, 4, 10, 6, 3, "1d"),
    (2, 2, 6, 12, 4, 7, "2d"),
    (1, 1, 3, 65, 64, 1800, None),  # odd head_dim: element 64 passes through
    (2, 5, 3, 256, 256, 0, "2d"),  # more pairs than threads in x
    (1, 37, 2, 8, 8, 5, None),  # heads spread over threadIdx.y and several heads per thread
    (2, 3, 4, 6, 0, 2, None),  # rotary_dim 0: a copy
]


@pytest.mark.parametrize("layout", ["bhsd", "bshd"])
@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_rope_forward_matches_cpu_and_reference(case, dtype, interleaved, layout):
    B, H, S, D, rot, offset, kind = case
    x = make_x(B, H, S, D, layout, F64).to(dtype)
    positions = make_positions(kind, B, S)
    inv = ops.rope_inv_freq(rot) if rot else torch.empty(0)
    cpu, out = rope_both(x, positions, inv, offset, rot, interleaved, layout)
    torch.testing.assert_close(out.cpu(), cpu, **tol(dtype))
    want = ref_rope(x, abs_positions(positions, B, S, offset), f32_angles(inv), rot, interleaved, layout)
    torch.testing.assert_close(out.cpu().double(), want, **tol(dtype))
    assert torch.equal(out[..., rot:].cpu(), x[..., rot:])  # pass-through dims bit-exact


@pytest.mark.parametrize("layout", ["bhsd", "bshd"])
@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("kind", [None, "2d"])
def test_rope_backward_matches_cpu_and_inverse_rotation(kind, dtype, interleaved, layout):
    B, H, S, D, rot, offset = 2, 3, 6, 12, 8, 9
    x = make_x(B, H, S, D, layout, F64).to(dtype)
    g = torch.randn(x.shape, dtype=F64).to(dtype)
    positions = make_positions(kind, B, S)
    inv = ops.rope_inv_freq(rot)

    def grad_on(device):
        xd = x.to(device).requires_grad_()
        pos = None if positions is None else positions.to(device)
        out = ops.rope(xd, pos, inv.to(device), offset, rot, interleaved, layout)
        (gx,) = torch.autograd.grad(out, xd, g.to(device))
        return gx

    got, cpu = grad_on(DEV), grad_on("cpu")
    assert got.device.type == DEV and got.dtype == dtype
    torch.testing.assert_close(got.cpu(), cpu, **tol(dtype))
    pos = abs_positions(positions, B, S, offset)
    want = ref_rope(g, pos, lambda p: -f32_angles(inv)(p), rot, interleaved, layout)
    torch.testing.assert_close(got.cpu().double(), want, **tol(dtype))
    # rope_backward called directly undoes rope
    y = ops.rope(dev(x.double()), dev(positions), dev(inv), offset, rot, interleaved, layout)
    back = torch.ops.posenc.rope_backward(y, dev(positions), dev(inv), offset, rot, interleaved, layout)
    torch.testing.assert_close(back.cpu(), x.double(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("layout", ["bhsd", "bshd"])
@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("batched", [False, True])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape", [(2, 3, 5, 8, 8), (2, 3, 4, 10, 6), (3, 9, 2, 130, 128)])
def test_apply_forward_backward_match_cpu_and_reference(shape, dtype, batched, interleaved, layout):
    B, H, S, D, rot = shape
    x = make_x(B, H, S, D, layout, F64).to(dtype)
    tshape = (B, S, rot) if batched else (S, rot)
    cos = torch.randn(tshape, dtype=F64).to(dtype)
    sin = torch.randn(tshape, dtype=F64).to(dtype)
    g = torch.randn(x.shape, dtype=F64).to(dtype)

    def run(device):
        args = [t.to(device).requires_grad_() for t in (x, cos, sin)]
        out = ops.apply_rotary_pos_emb(*args, interleaved, layout)
        return (out, *torch.autograd.grad(out, args, g.to(device)))

    got, cpu = run(DEV), run("cpu")
    ref_args = [t.double().requires_grad_() for t in (x, cos, sin)]
    ref_out = ref_apply(*ref_args, interleaved, layout)
    want = (ref_out, *torch.autograd.grad(ref_out, ref_args, g.double()))
    names = ("out", "grad_x", "grad_cos", "grad_sin")
    for name, a, c, w in zip(names, got, cpu, want):
        assert a.device.type == DEV and a.dtype == dtype and a.shape == c.shape, name
        assert a.is_contiguous(), name
        torch.testing.assert_close(a.cpu(), c, **tol(dtype), msg=lambda m: f"{name} vs CPU: {m}")
        torch.testing.assert_close(a.cpu().double(), w, **tol(dtype), msg=lambda m: f"{name} vs reference: {m}")
    assert torch.equal(got[0][..., rot:].cpu(), x[..., rot:])
    assert torch.equal(got[1][..., rot:].cpu(), g[..., rot:])


@pytest.mark.parametrize("interleaved", [False, True])
def test_C08_asymmetric_table_adjoint(interleaved):
    x = torch.tensor([0.3, -0.7], dtype=F64, device=DEV).view(1, 1, 1, 2).requires_grad_()
    cos = torch.tensor([[1.0, 1.0]], dtype=F64, device=DEV, requires_grad=True)
    sin = torch.tensor([[0.5, 0.1]], dtype=F64, device=DEV, requires_grad=True)
    ops.apply_rotary_pos_emb(x, cos, sin, interleaved).backward(torch.ones(1, 1, 1, 2, dtype=F64, device=DEV))
    torch.testing.assert_close(x.grad.flatten().cpu(), torch.tensor([1.1, 0.5], dtype=F64))
    torch.testing.assert_close(cos.grad.flatten().cpu(), torch.tensor([0.3, -0.7], dtype=F64))
    torch.testing.assert_close(sin.grad.flatten().cpu(), torch.tensor([0.7, 0.3], dtype=F64))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_C01_half_inputs_use_fp32_angles(dtype):
    inv = ops.rope_inv_freq(32, device=DEV)
    xs = torch.zeros(1, 1, 2048, 32, dtype=dtype, device=DEV)
    xs[..., :16] = 1
    got = ops.rope(xs, None, inv).double()[0, 0].cpu()
    ang = torch.arange(2048, dtype=F64)[:, None] * (10000.0 ** (-torch.arange(0, 32, 2, dtype=F64) / 32))
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(got[:, :16], ang.cos().to(dtype).double(), rtol=0, atol=1e-3 + eps)
    torch.testing.assert_close(got[:, 16:], ang.sin().to(dtype).double(), rtol=0, atol=1e-3 + eps)
    assert abs(got[1857, 1].item() - 0.306711) <= 1e-3 + eps


@pytest.mark.parametrize("layout", ["bhsd", "bshd"])
def test_C02_pairing(layout):
    x = torch.tensor([1.0, 0.0, 0.0, 0.0], device=DEV).view(1, 1, 1, 4)
    inv = ops.rope_inv_freq(4, device=DEV)
    pos = torch.tensor([1], device=DEV)
    half = ops.rope(x, pos, inv, layout=layout).flatten().cpu()
    inter = ops.rope(x, pos, inv, interleaved=True, layout=layout).flatten().cpu()
    torch.testing.assert_close(half, torch.tensor([0.5403023, 0.0, 0.8414710, 0.0]))
    torch.testing.assert_close(inter, torch.tensor([0.5403023, 0.8414710, 0.0, 0.0]))


def test_C07_views_into_packed_qkv():
    qkv = torch.randn(5, 3 * 2 * 8, device=DEV)
    before = qkv.clone()
    q = qkv[:, 0:16].view(1, 5, 2, 8)  # (B, S, H, D) views, row stride 48
    k = qkv[:, 16:32].view(1, 5, 2, 8)
    inv8, inv4 = ops.rope_inv_freq(8, device=DEV), ops.rope_inv_freq(4, device=DEV)
    for t in (q, k):
        assert not t.is_contiguous()
        for il in (False, True):
            got = ops.rope(t, None, inv8, 3, interleaved=il, layout="bshd")
            assert torch.equal(got, ops.rope(t.contiguous(), None, inv8, 3, interleaved=il, layout="bshd"))
            torch.testing.assert_close(got.cpu(), ops.rope(t.cpu(), None, inv8.cpu(), 3, interleaved=il, layout="bshd"))
            tv = t.transpose(1, 2)  # the same view read as bhsd
            assert torch.equal(ops.rope(tv, None, inv8, 3, interleaved=il), ops.rope(tv.contiguous(), None, inv8, 3, interleaved=il))
            back = torch.ops.posenc.rope_backward(t, None, inv8, 3, None, il, "bshd")
            assert torch.equal(back, torch.ops.posenc.rope_backward(t.contiguous(), None, inv8, 3, None, il, "bshd"))
        tail = t[..., 4:]  # the last 4 of 8 dims of each head
        pos = torch.arange(5, device=DEV)
        assert torch.equal(ops.rope(tail, pos, inv4, 0, layout="bshd"), ops.rope(tail.contiguous(), pos, inv4, 0, layout="bshd"))
        odd = t[..., ::2]  # last-dim stride 2
        assert torch.equal(ops.rope(odd, None, inv4, 1, layout="bshd"), ops.rope(odd.contiguous(), None, inv4, 1, layout="bshd"))
        cos, sin = torch.randn(8, 5, device=DEV).t(), torch.randn(5, 16, device=DEV)[:, ::2]
        assert torch.equal(
            ops.apply_rotary_pos_emb(t, cos, sin, layout="bshd"),
            ops.apply_rotary_pos_emb(t.contiguous(), cos.contiguous(), sin.contiguous(), layout="bshd"),
        )
        g = torch.randn(8, 5, 2, device=DEV).permute(1, 2, 0).unsqueeze(0)  # non-contiguous upstream grad
        assert not g.is_contiguous()
        gb = torch.ops.posenc.apply_rotary_pos_emb_backward(g, t, cos, sin, False, "bshd")
        gc = torch.ops.posenc.apply_rotary_pos_emb_backward(g.contiguous(), t.contiguous(), cos.contiguous(), sin.contiguous(), False, "bshd")
        assert all(torch.equal(a, b) for a, b in zip(gb, gc))
    # positions given through a strided (B, S) view
    pos2 = torch.randint(0, 100, (2, 10), device=DEV)[:, ::2]
    x = torch.randn(2, 3, 5, 8, device=DEV)
    assert torch.equal(ops.rope(x, pos2, inv8, 1), ops.rope(x, pos2.contiguous(), inv8, 1))
    assert torch.equal(qkv, before)  # the op never writes into its input


C06_SHAPES = [(1, 8, 0, 8), (1, 0, 5, 8), (0, 2, 5, 8), (1, 1, 1, 8), (1, 1, 1, 2), (2, 1, 3, 0)]


@pytest.mark.parametrize("layout", ["bhsd", "bshd"])
@pytest.mark.parametrize("shape", C06_SHAPES)
def test_C06_empty_and_unit_sizes(shape, layout):
    B, H, S, D = shape
    x = make_x(B, H, S, D, layout, F64).to(DEV).requires_grad_()
    rot = min(D, 8)
    inv = ops.rope_inv_freq(rot, device=DEV) if rot else torch.empty(0, device=DEV)
    out = ops.rope(x, None, inv, 3, layout=layout)
    assert out.shape == x.shape and out.device.type == DEV
    want = ref_rope(x.detach().cpu(), abs_positions(None, B, S, 3), f32_angles(inv.cpu()), rot, False, layout)
    torch.testing.assert_close(out.detach().cpu(), want)
    out.sum().backward()
    assert x.grad.shape == x.shape
    cos = torch.randn(B, S, rot, dtype=F64, device=DEV, requires_grad=True)
    sin = torch.randn(B, S, rot, dtype=F64, device=DEV, requires_grad=True)
    y = ops.apply_rotary_pos_emb(x, cos, sin, layout=layout)
    torch.testing.assert_close(y.detach().cpu(), ref_apply(x.detach().cpu(), cos.detach().cpu(), sin.detach().cpu(), False, layout))
    y.sum().backward()
    assert cos.grad.shape == cos.shape and sin.grad.shape == sin.shape
    if x.numel() == 0:
        assert torch.count_nonzero(cos.grad) == 0 and torch.count_nonzero(sin.grad) == 0


@pytest.mark.parametrize("layout", ["bhsd", "bshd"])
def test_long_sequence(layout):
    # 70000 positions: more (batch, position) units than blocks, so the grid-stride loop runs;
    # fp32 angles up to 7e4 rad take the slow argument reduction of sincosf.
    B, H, S, D = 1, 2, 70000, 8
    x = make_x(B, H, S, D, layout)
    inv = ops.rope_inv_freq(D)
    cpu, out = rope_both(x, None, inv, 0, None, False, layout)
    torch.testing.assert_close(out.cpu(), cpu, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(x)
    back = torch.ops.posenc.rope_backward(dev(g), None, dev(inv), 0, None, False, layout)
    torch.testing.assert_close(back.cpu(), torch.ops.posenc.rope_backward(g, None, inv, 0, None, False, layout), rtol=1e-5, atol=1e-5)
    cos, sin = torch.randn(S, D), torch.randn(S, D)
    for batched in (False, True):
        c, s = (cos[None], sin[None]) if batched else (cos, sin)
        got = torch.ops.posenc.apply_rotary_pos_emb_backward(dev(g), dev(x), dev(c), dev(s), False, layout)
        want = torch.ops.posenc.apply_rotary_pos_emb_backward(g, x, c, s, False, layout)
        for a, b in zip(got, want):
            torch.testing.assert_close(a.cpu(), b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(70000, 1, 1, 4), (1, 70000, 1, 4), (300, 300, 1, 4)])
@pytest.mark.parametrize("layout", ["bhsd", "bshd"])
def test_wide_batch_times_heads(shape, layout):
    # batch * heads > 65535: nothing may sit on gridDim.y/z.
    B, H, S, D = shape
    x = make_x(B, H, S, D, layout)
    inv = ops.rope_inv_freq(D)
    positions = torch.randint(0, 1000, (B, S))
    cpu, out = rope_both(x, positions, inv, 3, None, True, layout)
    torch.testing.assert_close(out.cpu(), cpu, rtol=1e-5, atol=1e-5)
    cos, sin = torch.randn(B, S, D), torch.randn(B, S, D)
    g = torch.randn_like(x)
    got = torch.ops.posenc.apply_rotary_pos_emb_backward(dev(g), dev(x), dev(cos), dev(sin), True, layout)
    want = torch.ops.posenc.apply_rotary_pos_emb_backward(g, x, cos, sin, True, layout)
    for a, b in zip(got, want):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-5, atol=1e-5)
    # an (S, R) table: every (batch, head) term summed into one row, in double
    got = torch.ops.posenc.apply_rotary_pos_emb_backward(dev(g), dev(x), dev(cos[0]), dev(sin[0]), True, layout)
    want = torch.ops.posenc.apply_rotary_pos_emb_backward(g, x, cos[0], sin[0], True, layout)
    for a, b in zip(got, want):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-5, atol=1e-4)


def test_deterministic_table_gradients():
    x = torch.randn(4, 64, 128, 64, device=DEV)
    cos = torch.randn(128, 64, device=DEV, requires_grad=True)
    sin = torch.randn(128, 64, device=DEV, requires_grad=True)
    g = torch.randn_like(x)
    old = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        runs = [torch.autograd.grad(ops.apply_rotary_pos_emb(x, cos, sin), (cos, sin), g) for _ in range(2)]
        xr = x.clone().requires_grad_()
        inv = ops.rope_inv_freq(32, device=DEV)
        rruns = [torch.autograd.grad(ops.rope(xr, None, inv, 5), xr, g)[0] for _ in range(2)]
    finally:
        torch.use_deterministic_algorithms(old)
    assert all(torch.equal(a, b) for a, b in zip(*runs))
    assert torch.equal(*rruns)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda X, I: ops.rope(X, None, I, layout="sbhd"), r"posenc\.rope: argument 'layout' must be one of"),
        (lambda X, I: ops.rope(X[0], None, I), r"posenc\.rope: argument 'x' must be a 4-D tensor"),
        (lambda X, I: ops.rope(X, torch.arange(6, device=X.device), I), r"argument 'positions' must have shape \(5,\) or \(2, 5\)"),
        (lambda X, I: ops.rope(X, None, I, 0, 7), r"argument 'rotary_dim' must be even and >= 0, but got 7"),
        (lambda X, I: ops.rope(X, None, I.half()), r"argument 'inv_freq' must have dtype float32 \(reference precision\) or float64 \(exact precision\), but got dtype Half"),
        (lambda X, I: ops.rope(X, None, torch.ones(5, device=X.device)), r"argument 'inv_freq' must have at most head_dim / 2 elements"),
        (lambda X, I: ops.apply_rotary_pos_emb(X, torch.randn(5, 7, device=X.device), torch.randn(5, 7, device=X.device)),
         r"argument 'cos' must have an even last dim \(rotary_dim\), but got shape \[5, 7\]"),
        (lambda X, I: ops.apply_rotary_pos_emb(X, torch.randn(5, 10, device=X.device), torch.randn(5, 10, device=X.device)),
         r"argument 'cos' must have a last dim \(rotary_dim\) <= head_dim \(8\)"),
        (lambda X, I: torch.ops.posenc.apply_rotary_pos_emb_backward(X[:1], X, torch.randn(5, 8, device=X.device), torch.randn(5, 8, device=X.device), False, "bhsd"),
         r"argument 'grad' must have the shape of 'x' \[2, 3, 5, 8\], but got shape \[1, 3, 5, 8\]"),
    ],
)
def test_bad_inputs_raise_and_device_keeps_working(call, match):
    X = torch.randn(2, 3, 5, 8, device=DEV)
    inv = ops.rope_inv_freq(8, device=DEV)
    with pytest.raises(RuntimeError, match=match):
        call(X, inv)
    # raised on the host before any launch: the device still works
    torch.testing.assert_close(ops.rope(X, None, inv, 2).cpu(), ops.rope(X.cpu(), None, inv.cpu(), 2))
    if DEV == "cuda":
        torch.cuda.synchronize()


@requires_real_cuda
def test_device_mismatch():
    x = torch.randn(2, 3, 5, 8, device="cuda")
    inv = ops.rope_inv_freq(8)
    with pytest.raises(RuntimeError, match=r"posenc\.rope: argument 'inv_freq' must be on the device of 'x' \(cuda:0\), but got device cpu"):
        ops.rope(x, None, inv)
    with pytest.raises(RuntimeError, match=r"argument 'positions' must be on the device of 'x'"):
        ops.rope(x, torch.arange(5), inv.cuda())
    with pytest.raises(RuntimeError, match=r"argument 'inv_freq' must be on the device of 'x' \(cpu\)"):
        ops.rope(x.cpu(), None, inv.cuda())
    with pytest.raises(RuntimeError, match=r"argument 'cos' must be on the device of 'x'"):
        ops.apply_rotary_pos_emb(x, torch.randn(5, 8), torch.randn(5, 8, device="cuda"))
    with pytest.raises(RuntimeError, match=r"argument 'grad' must be on the device of 'x'"):
        torch.ops.posenc.apply_rotary_pos_emb_backward(x.cpu(), x, torch.randn(5, 8, device="cuda"), torch.randn(5, 8, device="cuda"), False, "bhsd")


@pytest.mark.parametrize("args", rope_samples())
def test_opcheck_rope(args):
    torch.library.opcheck(torch.ops.posenc.rope.default, to_device(args))


@pytest.mark.parametrize("args", rope_samples())
def test_opcheck_rope_backward(args):
    torch.library.opcheck(torch.ops.posenc.rope_backward.default, to_device(args))


@pytest.mark.parametrize("args", apply_samples())
def test_opcheck_apply(args):
    torch.library.opcheck(torch.ops.posenc.apply_rotary_pos_emb.default, to_device(args))


@pytest.mark.parametrize("args", apply_samples())
def test_opcheck_apply_backward(args):
    x, cos, sin, il, layout = to_device(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
    torch.library.opcheck(torch.ops.posenc.apply_rotary_pos_emb_backward.default, (torch.randn_like(x), x, cos, sin, il, layout))


# ---- packed "thd", attention_factor, xPos ----------------------------------------------------

THD_CASES = [
    # lengths, H, D, rot, offset
    ([3, 5, 1], 2, 8, 8, 0),
    ([2, 0, 6, 0], 3, 16, 12, 7),  # empty sequences (repeated cu_seqlens values)
    ([1] * 40 + [17, 0, 300], 5, 130, 128, 3),  # many sequences; more pairs than threads in x
]


@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("case", THD_CASES)
def test_thd_forward_backward_match_cpu_and_reference(case, dtype, interleaved):
    lengths, H, D, rot, offset = case
    T = sum(lengths)
    x = torch.randn(T, H, D, dtype=F64).to(dtype)
    g = torch.randn(T, H, D, dtype=F64).to(dtype)
    cu = cu_tensor(lengths)
    inv = ops.rope_inv_freq(rot)

    def run(device):
        xd = x.to(device).requires_grad_()
        out = ops.rope(xd, None, inv.to(device), offset, rot, interleaved, "thd", cu.to(device))
        (gx,) = torch.autograd.grad(out, xd, g.to(device))
        return out, gx

    (out, gx), (cout, cgx) = run(DEV), run("cpu")
    assert out.device.type == DEV and out.dtype == dtype and out.is_contiguous()
    torch.testing.assert_close(out.cpu(), cout, **tol(dtype))
    torch.testing.assert_close(gx.cpu(), cgx, **tol(dtype))
    want = ref_rope_thd(x.double(), lengths, f32_angles(inv), rot, interleaved, offset)
    torch.testing.assert_close(out.detach().cpu().double(), want, **tol(dtype))
    gwant = ref_rope_thd(g.double(), lengths, lambda p: -f32_angles(inv)(p), rot, interleaved, offset)
    torch.testing.assert_close(gx.cpu().double(), gwant, **tol(dtype))
    assert torch.equal(out[..., rot:].detach().cpu(), x[..., rot:])


def test_thd_views_and_long_packed_batch():
    # 70000 tokens in ~700 sequences (binary search per token, grid-stride loop), read from a
    # strided view into a packed qkv buffer.
    torch.manual_seed(3)
    lengths = torch.randint(0, 200, (700,)).tolist()
    lengths.append(70000 - sum(lengths))
    T = sum(lengths)
    qkv = torch.randn(T, 3 * 2 * 8)
    q = qkv[:, 16:32].view(T, 2, 8)
    inv = ops.rope_inv_freq(8)
    cu = cu_tensor(lengths)
    zeta = ref_xpos_zeta(8).float()
    kw = dict(layout="thd", cu_seqlens=cu, attention_factor=1.1, xpos_zeta=zeta, xpos_scale_base=4096.0, xpos_centre=100)
    cpu = ops.rope(q, None, inv, 2, **kw)
    kwd = dict(kw, cu_seqlens=dev(cu), xpos_zeta=dev(zeta))
    qd = dev(qkv)[:, 16:32].view(T, 2, 8)
    out = ops.rope(qd, None, dev(inv), 2, **kwd)
    torch.testing.assert_close(out.cpu(), cpu, rtol=1e-5, atol=1e-5)
    assert torch.equal(out, ops.rope(qd.contiguous(), None, dev(inv), 2, **kwd))
    back = torch.ops.posenc.rope_backward(qd, None, dev(inv), 2, None, False, "thd", dev(cu), 1.1, dev(zeta), 4096.0, False, 100)
    want = torch.ops.posenc.rope_backward(q, None, inv, 2, None, False, "thd", cu, 1.1, zeta, 4096.0, False, 100)
    torch.testing.assert_close(back.cpu(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout", ["bhsd", "bshd", "thd"])
@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("inverse", [False, True])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_magnitudes_match_cpu_and_reference(dtype, inverse, interleaved, layout):
    H, D, rot, offset, f, sb, centre = 3, 10, 8, 5, 0.8, 16.0, 4
    zeta = ref_xpos_zeta(rot).float()
    inv = ops.rope_inv_freq(rot)
    if layout == "thd":
        lengths = [4, 2, 6]
        x = torch.randn(sum(lengths), H, D, dtype=F64).to(dtype)
        positions, cu = None, cu_tensor(lengths)
        pos = thd_positions(lengths, offset)[None]
        xr, lay = x[None], "bshd"
    else:
        x = make_x(2, H, 6, D, layout, F64).to(dtype)
        positions, cu = torch.randint(0, 50, (2, 6)), None
        pos = abs_positions(positions, 2, 6, offset)
        xr, lay = x, layout
    g = torch.randn(x.shape, dtype=F64).to(dtype)

    def run(device):
        xd = x.to(device).requires_grad_()
        out = ops.rope(xd, None if positions is None else positions.to(device), inv.to(device), offset, rot,
                       interleaved, layout, None if cu is None else cu.to(device), f, zeta.to(device), sb, inverse, centre)
        (gx,) = torch.autograd.grad(out, xd, g.to(device))
        return out.detach(), gx

    (out, gx), (cout, cgx) = run(DEV), run("cpu")
    torch.testing.assert_close(out.cpu(), cout, **tol(dtype))
    torch.testing.assert_close(gx.cpu(), cgx, **tol(dtype))
    mag = lambda p: f * xpos_mag(zeta, sb, inverse, centre)(p)  # noqa: E731
    want = ref_scale(ref_rope(xr.double(), pos, f32_angles(inv), rot, interleaved, lay), pos, mag, rot, interleaved, lay)
    gr = g[None] if layout == "thd" else g
    gwant = ref_scale(ref_rope(gr.double(), pos, lambda p: -f32_angles(inv)(p), rot, interleaved, lay), pos, mag, rot, interleaved, lay)
    if layout == "thd":
        want, gwant = want[0], gwant[0]
    torch.testing.assert_close(out.cpu().double(), want, **tol(dtype))
    torch.testing.assert_close(gx.cpu().double(), gwant, **tol(dtype))
    assert torch.equal(out[..., rot:].cpu(), x[..., rot:])


def test_thd_deterministic_and_unchecked_cu_seqlens_is_safe():
    x = torch.randn(50, 4, 16, device=DEV, requires_grad=True)
    cu = cu_tensor([10, 25, 15]).to(DEV)
    inv = ops.rope_inv_freq(16, device=DEV)
    g = torch.randn_like(x)
    old = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        runs = [torch.autograd.grad(ops.rope(x, None, inv, 1, layout="thd", cu_seqlens=cu), x, g)[0] for _ in range(2)]
    finally:
        torch.use_deterministic_algorithms(old)
    assert torch.equal(*runs)
    if DEV == "cuda":
        # values are not checked on the device: out-of-range cu_seqlens give wrong positions but
        # no fault (the binary search stays inside the tensor), and the context keeps working.
        bad = torch.tensor([5, 1000, -3, 2], device=DEV)
        ops.rope(x.detach(), None, inv, 0, layout="thd", cu_seqlens=bad)
        torch.cuda.synchronize()
        torch.testing.assert_close(ops.rope(x.detach(), None, inv, 0, layout="thd", cu_seqlens=cu).cpu(),
                                   ops.rope(x.detach().cpu(), None, inv.cpu(), 0, layout="thd", cu_seqlens=cu.cpu()))


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda X, I: ops.rope(X, None, I, layout="thd"), r"posenc\.rope: argument 'cu_seqlens' must be an int64 or int32"),
        (lambda X, I: ops.rope(X, torch.arange(5, device=X.device), I, layout="thd", cu_seqlens=torch.tensor([0, 5], device=X.device)),
         r"argument 'positions' must be None with layout \"thd\""),
        (lambda X, I: ops.rope(X, None, I, layout="thd", cu_seqlens=torch.tensor([0, 5], device=X.device).float()), r"argument 'cu_seqlens' must have dtype int64 or int32"),
        (lambda X, I: ops.rope(X, None, I, layout="thd", cu_seqlens=torch.tensor([0, 5], device=X.device), xpos_zeta=torch.ones(3, device=X.device)),
         r"argument 'xpos_zeta' must have len\(inv_freq\) = 4 elements"),
        (lambda X, I: ops.rope(X, None, I, layout="thd", cu_seqlens=torch.tensor([0, 5], device=X.device), attention_factor=float("nan")),
         r"argument 'attention_factor' must be finite"),
    ],
)
def test_bad_thd_inputs_raise_and_device_keeps_working(call, match):
    X = torch.randn(5, 3, 8, device=DEV)
    inv = ops.rope_inv_freq(8, device=DEV)
    with pytest.raises(RuntimeError, match=match):
        call(X, inv)
    cu = torch.tensor([0, 2, 5], device=DEV)
    torch.testing.assert_close(ops.rope(X, None, inv, 2, layout="thd", cu_seqlens=cu).cpu(),
                               ops.rope(X.cpu(), None, inv.cpu(), 2, layout="thd", cu_seqlens=cu.cpu()))


@requires_real_cuda
def test_thd_device_mismatch():
    x = torch.randn(5, 3, 8, device="cuda")
    inv = ops.rope_inv_freq(8, device="cuda")
    with pytest.raises(RuntimeError, match=r"argument 'cu_seqlens' must be on the device of 'x' \(cuda:0\), but got device cpu"):
        ops.rope(x, None, inv, layout="thd", cu_seqlens=torch.tensor([0, 5]))
    with pytest.raises(RuntimeError, match=r"argument 'xpos_zeta' must be on the device of 'x'"):
        ops.rope(x, None, inv, layout="thd", cu_seqlens=torch.tensor([0, 5], device="cuda"), xpos_zeta=torch.ones(4))


@pytest.mark.parametrize("args", magnitude_samples())
def test_opcheck_rope_magnitudes_thd(args):
    torch.library.opcheck(torch.ops.posenc.rope.default, to_device(args))


@pytest.mark.parametrize("args", magnitude_samples())
def test_opcheck_rope_backward_magnitudes_thd(args):
    torch.library.opcheck(torch.ops.posenc.rope_backward.default, to_device(args))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("layout", ["bhsd", "bshd"])
def test_exact_precision_matches_cpu_and_fp64_at_1e6(dtype, layout):
    # Exact precision (float64 inv_freq): fp64 angle reduced mod 2 pi before the cos/sin.
    from test_rope_precision import BASE, HEAD_DIM, far_positions, ref_exact, rel_err

    B, H, S = 2, 3, 64
    pos = far_positions(S, B)
    x = make_x(B, H, S, HEAD_DIM, layout, dtype)
    inv64 = ops.rope_inv_freq(HEAD_DIM, BASE, dtype=F64)
    out = ops.rope(x.to(DEV), pos.to(DEV), inv64.to(DEV), layout=layout)
    cpu = ops.rope(x, pos, inv64, layout=layout)
    bound = {torch.float32: 1e-6, torch.float64: 1e-10, torch.bfloat16: 1.6e-2}[dtype]
    assert rel_err(out.cpu(), ref_exact(x, pos, HEAD_DIM, BASE, False, layout)) <= bound
    torch.testing.assert_close(out.cpu(), cpu, **tol(dtype))
    g = torch.randn_like(x)
    back = torch.ops.posenc.rope_backward(g.to(DEV), pos.to(DEV), inv64.to(DEV), 0, None, False, layout)
    back_cpu = torch.ops.posenc.rope_backward(g, pos, inv64, 0, None, False, layout)
    torch.testing.assert_close(back.cpu(), back_cpu, **tol(dtype))


def _rotary_configs():
    from posenc.rope_config import RopeConfig

    f = [1.0 + 0.05 * i for i in range(16)]
    return [
        RopeConfig(32, "yarn", 1e4, factor=8.0, original_max_position_embeddings=16),
        RopeConfig(32, "dynamic", 1e4, factor=2.0, max_position_embeddings=16),
        RopeConfig(32, "longrope", 1e4, factor=4.0, original_max_position_embeddings=16,
                   short_factor=f, long_factor=[2 * v for v in f]),
        RopeConfig(32, "xpos", 1e4),
    ]


@pytest.mark.parametrize("precision", ["reference", "exact"])
@pytest.mark.parametrize("cfg", _rotary_configs(), ids=lambda c: c.rope_type)
def test_rotary_module_scalings_on_device_match_cpu(cfg, precision):
    # The module's device path: tables recomputed on the device after .to(), seq_len inferred
    # from device positions (a host sync) or given, packed thd with device cu_seqlens.
    from posenc import nn as pnn

    cpu = pnn.RotaryEmbedding(32, scaling=cfg, precision=precision, xpos_centre=8)
    mod = pnn.RotaryEmbedding(32, scaling=cfg, precision=precision, xpos_centre=8).to(DEV)
    q, k = torch.randn(2, 4, 24, 32), torch.randn(2, 2, 24, 32)
    pos = torch.arange(24).expand(2, 24)
    for kw in ({}, {"seq_len": 40}):
        got = mod(q.to(DEV), k.to(DEV), pos.to(DEV), **kw)
        want = cpu(q, k, pos, **kw)
        for g, w in zip(got, want):
            torch.testing.assert_close(g.cpu(), w, rtol=1e-5, atol=1e-5)
    thd = pnn.RotaryEmbedding(32, scaling=cfg, precision=precision, layout="thd").to(DEV)
    thd_cpu = pnn.RotaryEmbedding(32, scaling=cfg, precision=precision, layout="thd")
    x, cu = torch.randn(30, 2, 32), torch.tensor([0, 10, 30])
    got = thd(x.to(DEV), x.to(DEV), cu_seqlens=cu.to(DEV))
    want = thd_cpu(x, x, cu_seqlens=cu)
    torch.testing.assert_close(got[0].cpu(), want[0], rtol=1e-5, atol=1e-5)
