"""T5 relative bias (Raffel et al. 2020) against a plain-torch reimplementation of Hugging Face's
T5Attention._relative_position_bucket (fp32 log term, written here, independent of the C++)."""
import math

import pytest
import torch
import torch._dynamo.testing
from conftest import FLOAT_DTYPES
from hypothesis import given, settings
from hypothesis import strategies as st

from posenc import ops


def hf_bucket(relative_position, bidirectional=True, num_buckets=32, max_distance=128):
    # relative_position = memory - context = key - query
    rp = relative_position
    buckets = torch.zeros_like(rp)
    if bidirectional:
        num_buckets //= 2
        buckets += (rp > 0).to(torch.long) * num_buckets
        rp = torch.abs(rp)
    else:
        rp = -torch.min(rp, torch.zeros_like(rp))
    max_exact = num_buckets // 2
    is_small = rp < max_exact
    large = max_exact + (
        torch.log(rp.float() / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact)
    ).to(torch.long)
    large = torch.min(large, torch.full_like(large, num_buckets - 1))
    return buckets + torch.where(is_small, rp, large)


def ref_bias(table, q_len, k_len, q_offset=0, k_offset=0, bidirectional=True, max_distance=128):
    qp = torch.arange(q_len) + q_offset
    kp = torch.arange(k_len) + k_offset
    b = hf_bucket(kp[None, :] - qp[:, None], bidirectional, table.shape[0], max_distance)
    return table[b].permute(2, 0, 1)  # HF: embedding(b) -> (q, k, H) -> (H, q, k)


def test_C13_bidirectional():
    d = torch.tensor([-1000, -128, -64, -16, -9, -8, -7, -1, 0, 1, 8, 16, 64, 127, 1000])
    want = torch.tensor([15, 15, 14, 10, 8, 8, 7, 1, 0, 17, 24, 26, 30, 31, 31])
    assert torch.equal(ops.t5_relative_bucket(d, True, 32, 128), want)


def test_C13_causal():
    d = torch.tensor([-1000, -128, -100, -32, -16, -8, -1, 0, 1, 7, 1000, 10**9])
    want = torch.tensor([31, 31, 30, 21, 16, 8, 1, 0, 0, 0, 0, 0])
    assert torch.equal(ops.t5_relative_bucket(d, False, 32, 128), want)


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("num_buckets,max_distance", [(32, 128), (64, 256), (8, 16), (4, 3), (16, 10000)])
def test_buckets_match_hf_dense(bidirectional, num_buckets, max_distance):
    rp = torch.arange(-30000, 30000)
    got = ops.t5_relative_bucket(rp, bidirectional, num_buckets, max_distance)
    assert torch.equal(got, hf_bucket(rp, bidirectional, num_buckets, max_distance))
    assert got.min() >= 0 and got.max() < num_buckets


@pytest.mark.parametrize(
    "num_buckets,max_distance,distance,want",
    [(10, 160, -10, 6), (9, 4096, -16, 5), (48, 81, -54, 39), (99, 169, -91, 73)],
)
def test_fp32_log_term_boundaries(num_buckets, max_distance, distance, want):
    # Points where the log term lands on an integer: evaluated in fp64 the bucket is one off
    # (e.g. 5 instead of 6 for the first), in fp32 as HF it is `want`.
    rp = torch.tensor([distance])
    assert hf_bucket(rp, False, num_buckets, max_distance).item() == want
    assert ops.t5_relative_bucket(rp, False, num_buckets, max_distance).item() == want
    me = num_buckets // 2
    fp64 = me + int(math.log(-distance / me) / math.log(max_distance / me) * (num_buckets - me))
    assert fp64 != want


@st.composite
def bucket_config(draw):
    bidirectional = draw(st.booleans())
    if bidirectional:
        num_buckets = 2 * draw(st.integers(2, 128))
    else:
        num_buckets = draw(st.integers(2, 256))
    max_exact = (num_buckets // 2 if bidirectional else num_buckets) // 2
    max_distance = draw(st.integers(max_exact + 1, max_exact + 5000))
    return bidirectional, num_buckets, max_distance


@settings(max_examples=300, deadline=None, database=None)
@given(
    cfg=bucket_config(),
    distances=st.lists(
        st.one_of(st.integers(-2000, 2000), st.integers(-(2**62), 2**62)), min_size=1, max_size=64
    ),
)
def test_buckets_property_against_hf(cfg, distances):
    bidirectional, num_buckets, max_distance = cfg
    rp = torch.tensor(distances, dtype=torch.long)
    got = ops.t5_relative_bucket(rp, bidirectional, num_buckets, max_distance)
    assert torch.equal(got, hf_bucket(rp, bidirectional, num_buckets, max_distance))


def test_bucket_any_shape_and_non_contiguous():
    rp = torch.arange(-60, 60).reshape(4, 5, 6)
    view = rp.transpose(0, 2)
    assert not view.is_contiguous()
    got = ops.t5_relative_bucket(view)
    assert got.shape == view.shape and got.is_contiguous()
    assert torch.equal(got, hf_bucket(view.contiguous()))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("shape", [(4, 7, 9, 0, 0), (3, 5, 200, 195, 0), (2, 1, 300, 299, 0), (5, 8, 4, 3, 7), (2, 6, 6, 0, 40)])
def test_bias_matches_reference(dtype, bidirectional, shape):
    h, q_len, k_len, q_off, k_off = shape
    table = torch.randn(32, h, dtype=dtype)
    got = ops.t5_bias(table, q_len, k_len, q_off, k_off, bidirectional, 128)
    assert got.dtype == dtype and got.shape == (h, q_len, k_len) and got.is_contiguous()
    # a gather: bit-exact in every dtype
    assert torch.equal(got, ref_bias(table, q_len, k_len, q_off, k_off, bidirectional, 128))


@pytest.mark.parametrize("bidirectional", [True, False])
def test_gradcheck(bidirectional):
    table = torch.randn(8, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: ops.t5_bias(t, 5, 9, 3, 0, bidirectional, 20), (table,))


@pytest.mark.parametrize("bidirectional", [True, False])
def test_grad_against_reference_and_deterministic(bidirectional):
    table = torch.randn(32, 4, dtype=torch.float64, requires_grad=True)
    g = torch.randn(4, 30, 170, dtype=torch.float64)
    (ops.t5_bias(table, 30, 170, 140, 0, bidirectional) * g).sum().backward()
    t2 = table.detach().clone().requires_grad_()
    (ref_bias(t2, 30, 170, 140, 0, bidirectional) * g).sum().backward()
    torch.testing.assert_close(table.grad, t2.grad)
    first = table.grad.clone()
    table.grad = None
    (ops.t5_bias(table, 30, 170, 140, 0, bidirectional) * g).sum().backward()
    assert torch.equal(table.grad, first)


def test_grad_half_accumulates_in_fp64():
    # 5000 upstream ones land in one bucket: an fp16 running sum would stall at 2048, the
    # fp64 accumulator gives the exact count (5000 is representable in fp16)
    table = torch.zeros(4, 1, dtype=torch.float16, requires_grad=True)
    out = ops.t5_bias(table, 1, 5000, 10000, 0, False, 3)  # keys >= 5001 in the past: last bucket
    out.sum().backward()
    assert table.grad[:, 0].tolist() == [0.0, 0.0, 0.0, 5000.0]


@pytest.mark.parametrize("bidirectional", [True, False])
def test_C09_incremental_rows_equal_full(bidirectional):
    table = torch.randn(32, 3)
    full = ops.t5_bias(table, 40, 40, bidirectional=bidirectional)
    for p in (0, 1, 17, 39):
        row = ops.t5_bias(table, 1, p + 1, q_offset=p, bidirectional=bidirectional)
        assert torch.equal(row[:, 0], full[:, p, : p + 1])
    assert torch.equal(ops.t5_bias(table, 3, 40, q_offset=5, bidirectional=bidirectional), full[:, 5:8])
    # keys offset too (a later shard of the keys)
    assert torch.equal(ops.t5_bias(table, 4, 10, 20, 30, bidirectional), full[:, 20:24, 30:40])


def test_C07_non_contiguous_table():
    base = torch.randn(3, 32)
    view = base.T  # (32, 3), strides (1, 32)
    assert not view.is_contiguous()
    assert torch.equal(ops.t5_bias(view, 5, 7, 2, 0), ops.t5_bias(view.contiguous(), 5, 7, 2, 0))


@pytest.mark.parametrize("h,q_len,k_len", [(0, 3, 3), (2, 0, 3), (2, 3, 0), (1, 1, 1), (2, 1, 5), (2, 5, 1)])
def test_C06_empty_and_unit_sizes(h, q_len, k_len):
    table = torch.randn(32, h, requires_grad=True)
    out = ops.t5_bias(table, q_len, k_len, 2, 0)
    assert out.shape == (h, q_len, k_len)
    assert torch.equal(out, ref_bias(table.detach(), q_len, k_len, 2, 0))
    out.sum().backward()
    assert table.grad.shape == (32, h)
    assert torch.equal(table.grad, ref_bias_grad_of_sum(32, h, q_len, k_len, 2, 0))


def ref_bias_grad_of_sum(nb, h, q_len, k_len, q_offset, k_offset):
    t = torch.zeros(nb, h, dtype=torch.float64, requires_grad=True)
    ref_bias(t, q_len, k_len, q_offset, k_offset).sum().backward()
    return t.grad.float()


def test_bucket_empty():
    assert ops.t5_relative_bucket(torch.empty(0, 4, dtype=torch.long)).shape == (0, 4)


BIAS_SAMPLES = [
    (torch.randn(32, 4), 3, 5, 0, 0, True, 128),
    (torch.randn(32, 4, dtype=torch.float64, requires_grad=True), 3, 5, 2, 0, False, 128),
    (torch.randn(16, 2, dtype=torch.float16), 1, 7, 6, 0, True, 50),
    (torch.randn(8, 3, requires_grad=True), 0, 4, 0, 0, False, 20),
    (torch.randn(3, 32).T.requires_grad_(), 4, 6, 0, 3, True, 128),  # non-contiguous leaf
]


@pytest.mark.parametrize("args", BIAS_SAMPLES)
def test_opcheck_bias(args):
    torch.library.opcheck(torch.ops.posenc.t5_bias.default, args)


@pytest.mark.parametrize(
    "args",
    [
        (torch.arange(-50, 50), True, 32, 128),
        (torch.arange(-50, 50).reshape(10, 10).T, False, 16, 40),
        (torch.empty(0, dtype=torch.long), True, 8, 16),
    ],
)
def test_opcheck_bucket(args):
    torch.library.opcheck(torch.ops.posenc.t5_relative_bucket.default, args)


def test_opcheck_backward():
    table = torch.randn(32, 2)
    torch.library.opcheck(
        torch.ops.posenc.t5_bias_backward.default, (torch.randn(2, 3, 4), table, 3, 4, 1, 0, True, 128)
    )


def test_C16_compile_dynamic_no_recompile():
    table = torch.randn(32, 4)
    torch._dynamo.reset()
    counter = torch._dynamo.testing.CompileCounter()
    f = torch.compile(lambda t, n, off: ops.t5_bias(t, n, n + off, off, 0, True), backend=counter, fullgraph=True, dynamic=True)
    for n, off in ((5, 0), (7, 3), (11, 9)):
        assert torch.equal(f(table, n, off), ops.t5_bias(table, n, n + off, off, 0, True))
    assert counter.frame_count == 1


def test_compile_inductor_with_grad():
    table = torch.randn(32, 2, requires_grad=True)
    f = torch.compile(lambda t: (ops.t5_bias(t, 6, 9, 3, 0, False) ** 2).sum(), fullgraph=True)
    f(table).backward()
    t2 = table.detach().clone().requires_grad_()
    (ref_bias(t2, 6, 9, 3, 0, False) ** 2).sum().backward()
    torch.testing.assert_close(table.grad, t2.grad)


def test_script():
    bias = torch.jit.script(ops.t5_bias)
    bucket = torch.jit.script(ops.t5_relative_bucket)
    table = torch.randn(32, 2)
    assert torch.equal(bias(table, 3, 4, 1, 0, False, 128), ops.t5_bias(table, 3, 4, 1, 0, False, 128))
    rp = torch.arange(-9, 9)
    assert torch.equal(bucket(rp, True, 32, 128), ops.t5_relative_bucket(rp))


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: ops.t5_relative_bucket(torch.arange(3, dtype=torch.int32)), r"posenc\.t5_relative_bucket: argument 'relative_position' must have dtype Long, but got dtype Int"),
        (lambda: ops.t5_relative_bucket(torch.arange(3), True, 2), r"posenc\.t5_relative_bucket: argument 'num_buckets' must be even and >= 4 when bidirectional \(half per direction\), but got 2"),
        (lambda: ops.t5_relative_bucket(torch.arange(3), True, 31), r"argument 'num_buckets' must be even and >= 4 when bidirectional .*, but got 31"),
        (lambda: ops.t5_relative_bucket(torch.arange(3), False, 1), r"argument 'num_buckets' must be >= 2 when causal, but got 1"),
        (lambda: ops.t5_relative_bucket(torch.arange(3), True, 32, 8), r"argument 'max_distance' must be > max_exact = 8 .*, but got 8"),
        (lambda: ops.t5_bias(torch.randn(32), 3, 3), r"posenc\.t5_bias: argument 'table' must be a 2-D tensor of shape \(num_buckets, num_heads\), but got a 1-D tensor"),
        (lambda: ops.t5_bias(torch.zeros(32, 2, dtype=torch.long), 3, 3), r"posenc\.t5_bias: argument 'table' must have dtype float16, bfloat16, float32 or float64, but got dtype Long"),
        (lambda: ops.t5_bias(torch.randn(2, 4), 3, 3), r"posenc\.t5_bias: argument 'table' must have a number of rows \(num_buckets\) that is even and >= 4 when bidirectional .*, but got 2 rows"),
        (lambda: ops.t5_bias(torch.randn(1, 4), 3, 3, bidirectional=False), r"argument 'table' must have a number of rows \(num_buckets\) that is >= 2 when causal, but got 1 rows"),
        (lambda: ops.t5_bias(torch.randn(32, 4), 3, 3, max_distance=4), r"posenc\.t5_bias: argument 'max_distance' must be > max_exact = 8 .*, but got 4"),
        (lambda: ops.t5_bias(torch.randn(32, 4), -2, 3), r"posenc\.t5_bias: argument 'q_len' must be >= 0, but got -2"),
        (lambda: ops.t5_bias(torch.randn(32, 4), 2, -3), r"posenc\.t5_bias: argument 'k_len' must be >= 0, but got -3"),
        (lambda: torch.ops.posenc.t5_bias_backward(torch.randn(4, 3, 2), torch.randn(32, 4), 3, 3, 0, 0, True, 128), r"posenc\.t5_bias_backward: argument 'grad' must have shape \(num_heads, q_len, k_len\) = \[4, 3, 3\], but got shape \[4, 3, 2\]"),
    ],
)
def test_bad_inputs(call, match):
    with pytest.raises(RuntimeError, match=match):
        call()


def test_bad_inputs_fake_tensor():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        table = torch.randn(7, 2)
        with pytest.raises(RuntimeError, match=r"posenc\.t5_bias: argument 'table' must have a number of rows"):
            torch.ops.posenc.t5_bias(table, 3, 3)
