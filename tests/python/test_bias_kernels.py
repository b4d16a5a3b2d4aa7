"""The vectorised CPU bias kernels (issue 10): forward by diagonal tables, backward by
diagonal sums over fixed 64-row blocks, and the out= variants.

References are fp64 and independent of posenc: distances from ``arange``, T5 buckets from
Hugging Face's ``T5Attention._relative_position_bucket``, KERPLE derivatives from autograd of
the formula. Shapes are picked at the kernels' edges: key counts that are not a multiple of
the vector width, query counts around the 64-row block, offsets that put the diagonal outside
the grid, T5 distances across the exact/log boundary and past ``max_distance``.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers.models.t5.modeling_t5 import T5Attention

from posenc import ops

# (q_len, k_len, q_offset, k_offset)
EDGE_SHAPES = [
    (1, 1, 0, 0),
    (1, 37, 36, 0),  # decode row
    (7, 9, 0, 0),
    (63, 65, 0, 0),
    (64, 64, 0, 0),
    (65, 130, 65, 0),
    (129, 17, 0, 0),
    (70, 33, 1000, 0),  # every key far in the past: the diagonal is outside the grid
    (33, 70, 0, 500),  # every key in the future
    (200, 300, 37, 11),
]


def distance64(q_len, k_len, q_offset, k_offset):
    qp = torch.arange(q_len, dtype=torch.float64) + q_offset
    kp = torch.arange(k_len, dtype=torch.float64) + k_offset
    return qp[:, None] - kp[None, :]  # q_pos - k_pos


def ref_alibi(slopes, q_len, k_len, q_offset, k_offset, causal):
    d = distance64(q_len, k_len, q_offset, k_offset)
    if not causal:
        d = d.abs()
    return -slopes.to(torch.float64)[:, None, None] * d


def ref_kerple(r1, r2, q_len, k_len, q_offset, k_offset, kind, causal):
    d = distance64(q_len, k_len, q_offset, k_offset)
    d = d.clamp(min=0) if causal else d.abs()
    r1 = r1.to(torch.float64)[:, None, None]
    r2 = r2.to(torch.float64)[:, None, None]
    if kind == "log":
        return -r1 * torch.log1p(r2 * d)
    # 0 at d = 0 for every r2, with a zero r2-derivative there
    safe = torch.where(d > 0, d, torch.ones_like(d))
    return torch.where(d > 0, -r1 * safe**r2, torch.zeros_like(d))


def ref_t5(table, q_len, k_len, q_offset, k_offset, bidirectional, max_distance):
    qp = torch.arange(q_len) + q_offset
    kp = torch.arange(k_len) + k_offset
    b = T5Attention._relative_position_bucket(
        kp[None, :] - qp[:, None], bidirectional, table.shape[0], max_distance
    )
    return table.to(torch.float64)[b].permute(2, 0, 1)


def fp64_grads(fn, params, grad):
    leaves = [p.detach().to(torch.float64).requires_grad_() for p in params]
    (fn(*leaves) * grad.to(torch.float64)).sum().backward()
    return [p.grad for p in leaves]


FAMILIES = ["alibi", "t5", "kerple_log", "kerple_power"]


def make_case(family, heads, q_len, k_len, q_offset, k_offset, flag, dtype=torch.float32):
    """(op call, fp64 reference call, parameters) for one family; flag = causal (ALiBi,
    KERPLE) or bidirectional (T5)."""
    if family == "alibi":
        p = [torch.rand(heads, dtype=dtype) + 0.01]
        return (lambda s, out=None: ops.alibi_bias(s, q_len, k_len, q_offset, k_offset, flag, out=out),
                lambda s: ref_alibi(s, q_len, k_len, q_offset, k_offset, flag), p)
    if family == "t5":
        p = [torch.randn(32, heads, dtype=dtype)]
        return (lambda t, out=None: ops.t5_bias(t, q_len, k_len, q_offset, k_offset, flag, 128, out=out),
                lambda t: ref_t5(t, q_len, k_len, q_offset, k_offset, flag, 128), p)
    kind = family.split("_")[1]
    p = [torch.rand(heads, dtype=dtype) + 0.1, torch.rand(heads, dtype=dtype) * 1.5 + 0.1]
    return (lambda a, b, out=None: ops.kerple_bias(a, b, q_len, k_len, q_offset, k_offset, kind, flag, out=out),
            lambda a, b: ref_kerple(a, b, q_len, k_len, q_offset, k_offset, kind, flag), p)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("shape", EDGE_SHAPES)
@pytest.mark.parametrize("flag", [True, False])
def test_forward_and_backward_at_kernel_edges(family, shape, flag):
    q_len, k_len, q_offset, k_offset = shape
    op, ref, params = make_case(family, 3, q_len, k_len, q_offset, k_offset, flag)
    torch.testing.assert_close(op(*params), ref(*params).float(), rtol=1e-6, atol=1e-6)
    grad = torch.randn(3, q_len, k_len)
    leaves = [p.clone().requires_grad_() for p in params]
    (op(*leaves) * grad).sum().backward()
    for got, want in zip([p.grad for p in leaves], fp64_grads(ref, params, grad)):
        # the reductions sum up to 60000 terms: fp32 rounding relative to their magnitude
        scale = want.abs().max().item() + 1.0
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.parametrize("max_distance", [24, 128])
@pytest.mark.parametrize("bidirectional", [True, False])
def test_t5_runs_across_exact_log_boundary_and_max_distance(max_distance, bidirectional):
    # Distances 0 ... 400 on both sides: the exact buckets, every log bucket, and the clamped
    # last bucket beyond max_distance, each with several rows per run.
    q_len, k_len = 201, 401
    table = torch.randn(32, 2, dtype=torch.float64)
    out = ops.t5_bias(table, q_len, k_len, 0, -200, bidirectional, max_distance)
    want = ref_t5(table, q_len, k_len, 0, -200, bidirectional, max_distance)
    assert torch.equal(out, want)  # a gather: exact
    grad = torch.randn(2, q_len, k_len, dtype=torch.float64)
    leaf = table.clone().requires_grad_()
    (ops.t5_bias(leaf, q_len, k_len, 0, -200, bidirectional, max_distance) * grad).sum().backward()
    (want_grad,) = fp64_grads(
        lambda t: ref_t5(t, q_len, k_len, 0, -200, bidirectional, max_distance), [table], grad
    )
    torch.testing.assert_close(leaf.grad, want_grad, rtol=1e-12, atol=1e-10)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reduced_precision_grads_accumulate_in_fp32_or_better(family, dtype):
    op, ref, params = make_case(family, 2, 150, 77, 3, 0, True, dtype)
    grad = torch.randn(2, 150, 77).to(dtype)
    leaves = [p.clone().requires_grad_() for p in params]
    (op(*leaves).float() * grad.float()).sum().backward()
    for got, want in zip([p.grad for p in leaves], fp64_grads(ref, params, grad)):
        # inputs are exact in fp64; only the final rounding to dtype remains
        torch.testing.assert_close(got.double(), want.to(dtype).double(), rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("family", FAMILIES)
def test_backward_bit_identical_for_1_and_2_threads(family):
    op, _, params = make_case(family, 4, 300, 257, 5, 0, False)
    grad = torch.randn(4, 300, 257)
    results = []
    prev = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            leaves = [p.clone().requires_grad_() for p in params]
            (op(*leaves) * grad).sum().backward()
            results.append([p.grad for p in leaves])
    finally:
        torch.set_num_threads(prev)
    for a, b in zip(*results):
        assert torch.equal(a, b)


_CAPABILITY_SCRIPT = r"""
import sys, torch
sys.path.insert(0, sys.argv[1])
from posenc import ops
torch.manual_seed(0)
s = torch.rand(3) + 0.1
t = torch.randn(32, 3)
r1, r2 = torch.rand(3) + 0.1, torch.rand(3) + 0.1
g = torch.randn(3, 131, 77)
res = {}
for name, fn, params in [
    ("alibi", lambda s: ops.alibi_bias(s, 131, 77, 9, 0, False), [s]),
    ("t5", lambda t: ops.t5_bias(t, 131, 77, 9, 0, True), [t]),
    ("kerple", lambda a, b: ops.kerple_bias(a, b, 131, 77, 9, 0, "log", False), [r1, r2]),
]:
    leaves = [p.clone().requires_grad_() for p in params]
    out = fn(*leaves)
    (out * g).sum().backward()
    res[name] = [out.detach()] + [p.grad for p in leaves]
for dt in (torch.float16, torch.bfloat16):
    leaf = t.to(dt).requires_grad_()
    (ops.t5_bias(leaf, 131, 77, 9, 0, True) * g.to(dt)).sum().backward()
    res["t5_" + str(dt)] = [leaf.grad]
torch.save(res, sys.argv[2])
"""


def test_portable_and_avx2_copies_agree_bitwise(tmp_path):
    # Each diagonal adds its rows in order in every lane, so the vector width does not change
    # a single rounding: the portable copy (forced by the environment, read once per process)
    # must equal the default choice bit for bit.
    python_dir = str(Path(__file__).resolve().parents[2] / "python")
    outs = {}
    for cap in ("default", "auto"):
        env = dict(os.environ)
        env.pop("POSENC_CPU_CAPABILITY", None)
        if cap == "default":
            env["POSENC_CPU_CAPABILITY"] = "default"
        path = tmp_path / f"{cap}.pt"
        subprocess.run([sys.executable, "-c", _CAPABILITY_SCRIPT, python_dir, str(path)],
                       env=env, check=True)
        outs[cap] = torch.load(path)
    for name in outs["default"]:
        for a, b in zip(outs["default"][name], outs["auto"][name]):
            assert torch.equal(a, b), name


# ---- out= --------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_out_writes_the_buffer_and_equals_the_functional_op(family):
    op, _, params = make_case(family, 3, 40, 70, 5, 0, True)
    want = op(*params)
    buf = torch.full((3, 40, 70), float("nan"))
    for _ in range(2):  # reused across calls
        got = op(*params, out=buf)
        assert got.data_ptr() == buf.data_ptr()
        assert torch.equal(buf, want)


@pytest.mark.parametrize("family", FAMILIES)
def test_out_refuses_autograd_and_works_under_no_grad(family):
    op, _, params = make_case(family, 2, 5, 6, 0, 0, True)
    leaves = [p.clone().requires_grad_() for p in params]
    name = {"alibi": "alibi_bias", "t5": "t5_bias"}.get(family, "kerple_bias")
    with pytest.raises(RuntimeError, match=rf"posenc\.{name}: argument '\w+' requires grad, but the out= variant records no autograd graph"):
        op(*leaves, out=torch.empty(2, 5, 6))
    buf = torch.empty(2, 5, 6)
    version = buf._version
    with torch.no_grad():
        op(*leaves, out=buf)
    assert buf._version > version  # in-place write is visible to autograd's checks
    torch.testing.assert_close(buf, op(*params))


@pytest.mark.parametrize(
    "bad, message",
    [
        (torch.empty(3, 5, 7), r"argument 'out' must have shape \(num_heads, q_len, k_len\) = \[2, 5, 6\], but got shape \[3, 5, 7\]"),
        (torch.empty(2, 5, 6, dtype=torch.float64), r"argument 'out' must have the dtype of '\w+' \(Float\), but got dtype Double"),
        (torch.empty(2, 6, 5).transpose(1, 2), r"argument 'out' must be contiguous, but got strides"),
        (torch.empty(1, 5, 6).expand(2, 5, 6), r"argument 'out' must be contiguous, but got strides"),
        (torch.empty(2, 5, 6, device="meta"), r"argument 'out' must be on the device of '\w+' \(cpu\), but got device meta"),
    ],
)
@pytest.mark.parametrize("family", FAMILIES)
def test_out_bad_buffer_errors(family, bad, message):
    op, _, params = make_case(family, 2, 5, 6, 0, 0, True)
    with pytest.raises(RuntimeError, match=message):
        op(*params, out=bad)
    assert op(*params).shape == (2, 5, 6)  # still usable


def test_out_on_meta_tensors_checks_and_returns_the_buffer():
    s = torch.empty(4, device="meta")
    buf = torch.empty(4, 8, 9, device="meta")
    assert ops.alibi_bias(s, 8, 9, out=buf) is buf
    with pytest.raises(RuntimeError, match="argument 'out' must have shape"):
        ops.alibi_bias(s, 8, 10, out=buf)


def test_out_scripts():
    def f(s: torch.Tensor, buf: torch.Tensor) -> torch.Tensor:
        return ops.alibi_bias(s, 8, 9, 0, 0, True, out=buf)

    scripted = torch.jit.script(f)
    s = torch.rand(2)
    buf = torch.empty(2, 8, 9)
    scripted(s, buf)
    assert torch.equal(buf, ops.alibi_bias(s, 8, 9))


def test_out_compiles_fullgraph():
    def f(s, buf):
        return ops.alibi_bias(s, 8, 9, out=buf) + 1

    s = torch.rand(2)
    buf = torch.empty(2, 8, 9)
    # aot_eager functionalizes the mutation, as inductor does
    got = torch.compile(f, fullgraph=True, backend="aot_eager")(s, buf)
    torch.testing.assert_close(got, ops.alibi_bias(s, 8, 9) + 1)
    torch.testing.assert_close(buf, ops.alibi_bias(s, 8, 9))


def test_out_opcheck():
    s = torch.rand(2)
    torch.library.opcheck(torch.ops.posenc.alibi_bias.out, (s, 8, 9, 0, 0, True), {"out": torch.empty(2, 8, 9)})
    t = torch.randn(32, 2)
    torch.library.opcheck(torch.ops.posenc.t5_bias.out, (t, 8, 9, 0, 0, True, 128), {"out": torch.empty(2, 8, 9)})
    r1, r2 = torch.rand(2) + 0.1, torch.rand(2) + 0.1
    torch.library.opcheck(torch.ops.posenc.kerple_bias.out, (r1, r2, 8, 9, 0, 0, "log", True), {"out": torch.empty(2, 8, 9)})
