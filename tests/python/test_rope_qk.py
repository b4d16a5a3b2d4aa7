"""posenc.ops.rope_qk: queries and keys rotated by one call, sharing each block's cos/sin.

It is defined as (rope(q, ..., xpos_inverse=False), rope(k, ..., xpos_inverse=True)): the tests
hold it to that bit for bit (every layout, interleaved, partial, xPos, attention_factor, (S,) and
(B, S) positions, int32 ids, packed sequences, grouped-query head counts, strided views, both
precisions, every dtype, 1 and 2 threads), check one case against an fp64 reference written
from the formula (Su et al. 2021, eq. 34; Sun et al. 2022 for xPos), and cover the gradients,
the errors, opcheck, torch.compile and the modules that now call it."""
import pytest
import torch

import posenc
from posenc import ops

F64 = torch.float64


def make(B, Hq, Hk, S, D, layout, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    if layout == "thd":
        q = torch.randn(S, Hq, D, generator=g, dtype=F64).to(dtype)
        k = torch.randn(S, Hk, D, generator=g, dtype=F64).to(dtype)
    elif layout == "bshd":
        q = torch.randn(B, S, Hq, D, generator=g, dtype=F64).to(dtype)
        k = torch.randn(B, S, Hk, D, generator=g, dtype=F64).to(dtype)
    else:
        q = torch.randn(B, Hq, S, D, generator=g, dtype=F64).to(dtype)
        k = torch.randn(B, Hk, S, D, generator=g, dtype=F64).to(dtype)
    return q, k


def two_calls(q, k, *args, **kw):
    xpos_centre = kw.pop("xpos_centre", 0)
    return (
        ops.rope(q, *args, xpos_inverse=False, xpos_centre=xpos_centre, **kw),
        ops.rope(k, *args, xpos_inverse=True, xpos_centre=xpos_centre, **kw),
    )


def assert_bitwise(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape
    assert torch.equal(a, b), (a.double() - b.double()).abs().max()


CASES = [
    # (B, Hq, Hk, S, D, layout, kwargs)
    (2, 8, 2, 67, 64, "bhsd", {}),
    (2, 8, 8, 67, 64, "bshd", {}),
    (1, 4, 1, 130, 32, "bhsd", {"interleaved": True}),
    (3, 6, 3, 33, 40, "bshd", {"rotary_dim": 24}),
    (2, 4, 2, 50, 64, "bhsd", {"attention_factor": 1.2}),
    (2, 4, 2, 50, 64, "bhsd", {"xpos": True}),
    (2, 4, 2, 50, 64, "bshd", {"xpos": True, "xpos_centre": 25, "attention_factor": 0.9}),
    (2, 4, 1, 300, 16, "bhsd", {"offset": 1000}),
    (1, 32, 8, 2048, 128, "bhsd", {}),  # many blocks: threads split positions, not heads
    (1, 3, 5, 4, 8, "bhsd", {}),  # fewer blocks than tasks: head ranges span q and k
]


def run_case(B, Hq, Hk, S, D, layout, kw, dtype=torch.float32, exact=False, positions=None):
    kw = dict(kw)
    rot = kw.pop("rotary_dim", None)
    R = rot if rot is not None else D
    inv = ops.rope_inv_freq(R, 10000.0, dtype=F64 if exact else torch.float32)
    if kw.pop("xpos", False):
        kw["xpos_zeta"] = torch.linspace(0.5, 1.0, R // 2)
    if rot is not None:
        kw["rotary_dim"] = rot
    q, k = make(B, Hq, Hk, S, D, layout, dtype)
    got = ops.rope_qk(q, k, positions, inv, layout=layout, **kw)
    want = two_calls(q, k, positions, inv, layout=layout, **kw)
    return q, k, got, want


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[5]}-H{c[1]}/{c[2]}-S{c[3]}-D{c[4]}-{sorted(c[6])}")
@pytest.mark.parametrize("threads", [1, 2])
def test_equals_two_rope_calls(case, threads):
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _, _, got, want = run_case(*case)
    finally:
        torch.set_num_threads(old)
    assert_bitwise(got[0], want[0])
    assert_bitwise(got[1], want[1])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("exact", [False, True])
def test_dtypes_and_precisions(dtype, exact):
    _, _, got, want = run_case(2, 4, 2, 70, 48, "bhsd", {"xpos": True}, dtype=dtype, exact=exact)
    assert_bitwise(got[0], want[0])
    assert_bitwise(got[1], want[1])


@pytest.mark.parametrize("pos_dtype", [torch.int64, torch.int32])
@pytest.mark.parametrize("batched", [False, True])
def test_positions(pos_dtype, batched):
    B, S = 3, 41
    g = torch.Generator().manual_seed(3)
    shape = (B, S) if batched else (S,)
    positions = torch.randint(0, 5000, shape, generator=g).to(pos_dtype)
    _, _, got, want = run_case(B, 4, 2, S, 32, "bshd", {"offset": 7}, positions=positions)
    assert_bitwise(got[0], want[0])
    assert_bitwise(got[1], want[1])


def test_packed_with_empty_sequences():
    T = 40
    q, k = make(1, 4, 2, T, 32, "thd")
    cu = torch.tensor([0, 0, 13, 13, 40], dtype=torch.int32)
    inv = ops.rope_inv_freq(32)
    got = ops.rope_qk(q, k, None, inv, offset=3, layout="thd", cu_seqlens=cu)
    want = two_calls(q, k, None, inv, offset=3, layout="thd", cu_seqlens=cu)
    assert_bitwise(got[0], want[0])
    assert_bitwise(got[1], want[1])


def test_strided_views_of_a_packed_qkv_buffer():
    B, S, Hq, Hk, D = 2, 37, 8, 2, 64
    qkv = torch.randn(B, S, Hq + 2 * Hk, D)
    q, k = qkv[:, :, :Hq], qkv[:, :, Hq : Hq + Hk]  # bshd views, not contiguous
    assert not q.is_contiguous() and not k.is_contiguous()
    inv = ops.rope_inv_freq(D)
    got = ops.rope_qk(q, k, None, inv, layout="bshd")
    want = two_calls(q.contiguous(), k.contiguous(), None, inv, layout="bshd")
    assert_bitwise(got[0], want[0])
    assert_bitwise(got[1], want[1])


def test_fp64_reference_with_xpos():
    """From the formulas: pair (a, b) at position p rotated by p * inv_freq (the fp32 product,
    as HF rounds it), cos and sin scaled by zeta ** (p / scale_base) for queries and by its
    inverse for keys."""
    B, H, S, D = 1, 2, 9, 8
    q, k = make(B, H, H, S, D, "bhsd", F64)
    inv = ops.rope_inv_freq(D)
    zeta = torch.tensor([0.6, 0.7, 0.8, 0.9])
    got_q, got_k = ops.rope_qk(q, k, None, inv, offset=5, xpos_zeta=zeta, xpos_scale_base=16.0)
    p = torch.arange(S) + 5
    ang = (p.float()[:, None] * inv).double()
    mag = zeta.double() ** (p.double()[:, None] / 16.0)

    def ref(x, m):
        c, s = ang.cos() * m, ang.sin() * m
        a, b = x[..., : D // 2], x[..., D // 2 :]
        return torch.cat([a * c - b * s, b * c + a * s], -1)

    torch.testing.assert_close(got_q, ref(q, mag), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got_k, ref(k, 1.0 / mag), rtol=1e-12, atol=1e-12)


# ---- gradients --------------------------------------------------------------------------------


def test_backward_equals_rope_backward():
    B, Hq, Hk, S, D = 2, 4, 2, 50, 32
    q, k = make(B, Hq, Hk, S, D, "bhsd")
    q.requires_grad_(True)
    k.requires_grad_(True)
    inv = ops.rope_inv_freq(D)
    zeta = torch.linspace(0.5, 1.0, D // 2)
    gq, gk = torch.randn(B, Hq, S, D), torch.randn(B, Hk, S, D)
    qr, kr = ops.rope_qk(q, k, None, inv, offset=11, xpos_zeta=zeta)
    dq, dk = torch.autograd.grad((qr, kr), (q, k), (gq, gk))
    assert_bitwise(dq, torch.ops.posenc.rope_backward(gq, None, inv, 11, None, False, "bhsd", None,
                                                      1.0, zeta, 512.0, False, 0))
    assert_bitwise(dk, torch.ops.posenc.rope_backward(gk, None, inv, 11, None, False, "bhsd", None,
                                                      1.0, zeta, 512.0, True, 0))


def test_gradient_of_one_output_only():
    q, k = make(1, 2, 2, 10, 8, "bhsd")
    q.requires_grad_(True)
    k.requires_grad_(True)
    qr, _ = ops.rope_qk(q, k, None, ops.rope_inv_freq(8))
    qr.sum().backward()
    assert k.grad is not None and torch.equal(k.grad, torch.zeros_like(k))
    assert q.grad.abs().sum() > 0


@pytest.mark.parametrize("layout", ["bhsd", "bshd", "thd"])
def test_gradcheck(layout):
    q, k = make(2, 2, 1, 5, 6, layout, F64)
    q.requires_grad_(True)
    k.requires_grad_(True)
    inv = ops.rope_inv_freq(4, dtype=F64)
    zeta = torch.tensor([0.7, 0.9])
    cu = torch.tensor([0, 2, 5]) if layout == "thd" else None
    fn = lambda a, b: ops.rope_qk(a, b, None, inv, offset=3, rotary_dim=4, layout=layout,
                                  cu_seqlens=cu, xpos_zeta=zeta, xpos_scale_base=8.0)
    assert torch.autograd.gradcheck(fn, (q, k))
    assert torch.autograd.gradgradcheck(fn, (q, k))


# ---- errors -----------------------------------------------------------------------------------


def test_errors_name_the_argument():
    inv = ops.rope_inv_freq(8)
    q, k = make(2, 4, 2, 6, 8, "bhsd")
    with pytest.raises(RuntimeError, match=r"posenc\.rope_qk: argument 'k' must have the dtype of 'q' \(Float\), but got dtype Double"):
        ops.rope_qk(q, k.double(), None, inv)
    with pytest.raises(RuntimeError, match=r"posenc\.rope_qk: argument 'k' must match 'q' of shape \[2, 4, 6, 8\] in every dim but the heads.*shape \[2, 2, 7, 8\]"):
        ops.rope_qk(q, torch.randn(2, 2, 7, 8), None, inv)
    with pytest.raises(RuntimeError, match=r"posenc\.rope_qk: argument 'k' must match 'q'.*shape \[3, 2, 6, 8\]"):
        ops.rope_qk(q, torch.randn(3, 2, 6, 8), None, inv)
    with pytest.raises(RuntimeError, match=r"posenc\.rope_qk: argument 'k' must match 'q'.*shape \[2, 2, 6, 10\]"):
        ops.rope_qk(q, torch.randn(2, 2, 6, 10), None, inv)
    with pytest.raises(RuntimeError, match=r"posenc\.rope_qk: argument 'k' must be a 4-D"):
        ops.rope_qk(q, torch.randn(2, 6, 8), None, inv)
    with pytest.raises(RuntimeError, match=r"posenc\.rope_qk: argument 'q' must have dtype float16, bfloat16, float32 or float64, but got dtype Long"):
        ops.rope_qk(q.long(), k, None, inv)
    with pytest.raises(RuntimeError, match=r"posenc\.rope_qk: argument 'offset' must keep"):
        ops.rope_qk(q, k, None, inv, offset=2**63 - 3)
    with pytest.raises(RuntimeError, match=r"posenc\.rope_qk_backward: argument 'grad_k' must match 'grad_q'"):
        torch.ops.posenc.rope_qk_backward(q, torch.randn(2, 2, 7, 8), None, inv, 0, None, False,
                                          "bhsd")
    # Still usable after the errors.
    got = ops.rope_qk(q, k, None, inv)
    assert_bitwise(got[1], two_calls(q, k, None, inv)[1])


def test_meta_checks_match():
    inv = ops.rope_inv_freq(8, device="meta")
    q = torch.empty(2, 4, 6, 8, device="meta")
    with pytest.raises(RuntimeError, match=r"posenc\.rope_qk: argument 'k' must match 'q'"):
        ops.rope_qk(q, torch.empty(2, 2, 5, 8, device="meta"), None, inv)
    a, b = ops.rope_qk(q, torch.empty(2, 2, 6, 8, device="meta"), None, inv)
    assert a.shape == (2, 4, 6, 8) and b.shape == (2, 2, 6, 8) and a.device.type == "meta"


# ---- opcheck, compile, modules ----------------------------------------------------------------


def opcheck_args():
    q, k = make(2, 4, 2, 5, 8, "bhsd")
    inv = ops.rope_inv_freq(8)
    zeta = torch.linspace(0.5, 1.0, 4)
    return [
        (q.requires_grad_(True), k.requires_grad_(True), None, inv),
        (q.detach(), k.detach(), torch.arange(5), inv, 3, None, True, "bhsd", None, 1.5, zeta,
         64.0, 2),
    ]


@pytest.mark.parametrize("args", opcheck_args())
def test_opcheck(args):
    torch.library.opcheck(torch.ops.posenc.rope_qk.default, args)


def test_opcheck_backward():
    q, k = make(2, 4, 2, 5, 8, "bshd")
    torch.library.opcheck(torch.ops.posenc.rope_qk_backward.default,
                          (q, k, None, ops.rope_inv_freq(8), 0, None, False, "bshd"))


def test_compile_fullgraph():
    q, k = make(2, 4, 2, 16, 32, "bhsd")
    inv = ops.rope_inv_freq(32)

    def f(a, b):
        return ops.rope_qk(a, b, None, inv, offset=4)

    got = torch.compile(f, fullgraph=True)(q, k)
    want = f(q, k)
    assert_bitwise(got[0], want[0])
    assert_bitwise(got[1], want[1])


@pytest.mark.parametrize("layout", ["bhsd", "bshd"])
def test_rotary_embedding_modules_use_it_and_still_match(layout):
    """posenc.nn.RotaryEmbedding (and its scripted copy, and the C++ module) rotate q and k in
    one call when their shapes allow; the results are the two rope calls' bit for bit."""
    torch.manual_seed(0)
    from posenc.rope_config import RopeConfig

    m = posenc.nn.RotaryEmbedding(32, layout=layout,
                                  scaling=RopeConfig(head_dim=32, rope_type="xpos"))
    assert m.xpos_zeta is not None
    q, k = make(2, 4, 2, 20, 32, layout)
    inv, zeta = m.inv_freq, m.xpos_zeta
    want = (
        ops.rope(q, None, inv, 5, 32, False, layout, None, 1.0, zeta, m.xpos_scale_base, False, 0),
        ops.rope(k, None, inv, 5, 32, False, layout, None, 1.0, zeta, m.xpos_scale_base, True, 0),
    )
    for mod in (m, torch.jit.script(m)):
        got = mod(q, k, offset=5)
        assert_bitwise(got[0], want[0])
        assert_bitwise(got[1], want[1])
    # k of another length (allowed by the module): two calls, same results as before.
    k_long = make(2, 4, 2, 25, 32, layout, seed=4)[1]
    got = m(q, k_long, offset=5)
    assert_bitwise(got[1], ops.rope(k_long, None, inv, 5, 32, False, layout, None, 1.0, zeta,
                                    m.xpos_scale_base, True, 0))


def test_cpp_rotary_module_matches():
    cpp = posenc.cpp.RotaryEmbedding(32)
    q, k = make(2, 4, 2, 20, 32, "bhsd")
    got = cpp(q, k)
    want = two_calls(q, k, None, ops.rope_inv_freq(32))
    assert_bitwise(got[0], want[0])
    assert_bitwise(got[1], want[1])
