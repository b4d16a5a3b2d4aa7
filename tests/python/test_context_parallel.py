"""Context parallelism: sharding a sequence across W simulated ranks and reassembling the
per-rank results gives the unsharded result, for every position-encoding family.

The reference is always the unsharded call of the same op at global positions; the split
itself is checked against torch.tensor_split and against the layout of Megatron-LM /
Llama 3 (rank r holds chunks r and 2W - 1 - r of 2W).
"""
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import posenc
from posenc import context_parallel as cp
from posenc import ops

WORLD = [2, 4]
SPLITS = [False, True]
# Divisible by 2W for both W, uneven, and shorter than the number of chunks (empty chunks).
LENGTHS = [16, 13, 3]


def case_ids(w, lb, s):
    return f"W{w}-{'balanced' if lb else 'plain'}-S{s}"


CASES = [(w, lb, s) for w in WORLD for lb in SPLITS for s in LENGTHS]
CASE_IDS = [case_ids(*c) for c in CASES]


def split_reference(seq_len, world_size, rank, load_balanced):
    """Global indices of rank's tokens, from torch.tensor_split (independent of the module)."""
    idx = torch.arange(seq_len)
    if not load_balanced:
        return torch.tensor_split(idx, world_size)[rank]
    pieces = torch.tensor_split(idx, 2 * world_size)
    return torch.cat([pieces[rank], pieces[2 * world_size - 1 - rank]])


# ---------------------------------------------------------------------------------------------
# The split itself


def test_chunks_examples():
    # Megatron-LM / Llama 3 layout: W = 2, four chunks of 4: rank 0 holds 0 and 3, rank 1 1 and 2.
    assert cp.chunks(16, 2, 0, True) == [(0, 4), (12, 4)]
    assert cp.chunks(16, 2, 1, True) == [(4, 4), (8, 4)]
    assert cp.chunks(16, 4, 3, True) == [(6, 2), (8, 2)]
    assert cp.chunks(16, 4, 1) == [(4, 4)]
    # Uneven: tensor_split lengths 3, 3, 2, 2.
    assert [cp.chunks(10, 4, r) for r in range(4)] == [[(0, 3)], [(3, 3)], [(6, 2)], [(8, 2)]]
    # 10 tokens in 8 chunks: lengths 2, 2, 1, 1, 1, 1, 1, 1.
    assert cp.chunks(10, 4, 0, True) == [(0, 2), (9, 1)]
    assert cp.chunks(10, 4, 1, True) == [(2, 2), (8, 1)]
    # Fewer tokens than chunks: trailing chunks are empty.
    assert cp.chunks(3, 4, 3) == [(3, 0)]
    assert cp.chunks(0, 2, 1, True) == [(0, 0), (0, 0)]
    assert cp.chunks(5, 1, 0) == [(0, 5)]
    assert cp.chunks(5, 1, 0, True) == [(0, 3), (3, 2)]


@pytest.mark.parametrize("w,lb,s", CASES, ids=CASE_IDS)
def test_positions_match_tensor_split(w, lb, s):
    for r in range(w):
        got = cp.positions(s, w, r, lb)
        assert got.dtype == torch.int64 and got.dim() == 1
        assert torch.equal(got, split_reference(s, w, r, lb))
        assert torch.equal(cp.positions(s, w, r, lb, offset=-7), split_reference(s, w, r, lb) - 7)


@settings(max_examples=300, deadline=None)
@given(
    seq_len=st.integers(0, 200),
    world_size=st.integers(1, 9),
    load_balanced=st.booleans(),
    data=st.data(),
)
def test_property_chunks_partition(seq_len, world_size, load_balanced, data):
    covered = torch.zeros(seq_len, dtype=torch.long)
    lengths = []
    for r in range(world_size):
        ch = cp.chunks(seq_len, world_size, r, load_balanced)
        assert len(ch) == (2 if load_balanced else 1)
        for start, length in ch:
            assert 0 <= start <= seq_len and length >= 0 and start + length <= seq_len
            covered[start : start + length] += 1
        lengths.append(sum(length for _, length in ch))
        if load_balanced:
            n = 2 * world_size
            base, extra = divmod(seq_len, n)
            # Chunk r and chunk 2W - 1 - r of the 2W tensor_split chunks, in that order.
            for (start, length), idx in zip(ch, (r, n - 1 - r)):
                assert start == idx * base + min(idx, extra)
                assert length == base + (1 if idx < extra else 0)
    assert torch.equal(covered, torch.ones(seq_len, dtype=torch.long))  # every token exactly once
    assert max(lengths) - min(lengths) <= 1  # ranks balanced to one token
    rank = data.draw(st.integers(0, world_size - 1))
    assert torch.equal(
        cp.positions(seq_len, world_size, rank, load_balanced),
        split_reference(seq_len, world_size, rank, load_balanced),
    )


@pytest.mark.parametrize("w,lb,s", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("dim", [0, 1, -1])
def test_shard_unshard_round_trip(w, lb, s, dim):
    shape = [3, 5, 2]
    shape[dim] = s
    x = torch.randn(shape, dtype=torch.float64)
    parts = [cp.shard(x, dim, w, r, lb) for r in range(w)]
    for r, p in enumerate(parts):
        assert torch.equal(p, x.index_select(dim, split_reference(s, w, r, lb)))
    assert torch.equal(cp.unshard(parts, dim, lb), x)


def test_shard_plain_is_a_view_and_accepts_non_contiguous():
    x = torch.randn(4, 12, 6).transpose(0, 1)  # (12, 4, 6), non-contiguous
    p = cp.shard(x, 0, 4, 2)
    assert p._base is not None and p.data_ptr() == x[6].data_ptr()
    # 12 tokens in 8 chunks: lengths 2, 2, 2, 2, 1, 1, 1, 1; rank 2 holds chunks 2 and 5.
    b = cp.shard(x, 0, 4, 2, True)
    assert torch.equal(b, torch.cat([x[4:6], x[9:10]]))
    assert torch.equal(cp.unshard([cp.shard(x, 0, 4, r, True) for r in range(4)], 0, True), x)


def test_unshard_uses_load_balanced_flag():
    x = torch.arange(8)
    parts = [cp.shard(x, 0, 2, r, True) for r in range(2)]
    assert not torch.equal(cp.unshard(parts, 0, False), x)  # the wrong layout is detectable
    assert torch.equal(cp.unshard(parts, 0, True), x)


# ---------------------------------------------------------------------------------------------
# RoPE


def rope_inputs(s, layout="bhsd", dtype=torch.float32):
    shape = (2, 3, s, 8) if layout == "bhsd" else (2, s, 3, 8)
    return torch.randn(shape, dtype=dtype), ops.rope_inv_freq(8, 10000.0)


@pytest.mark.parametrize("w,lb,s", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("layout", ["bhsd", "bshd"])
@pytest.mark.parametrize("interleaved", [False, True])
def test_rope_sharded_equals_unsharded(w, lb, s, layout, interleaved):
    x, inv_freq = rope_inputs(s, layout)
    seq_dim = 2 if layout == "bhsd" else 1
    full = ops.rope(x, None, inv_freq, 0, interleaved=interleaved, layout=layout)
    parts = []
    for r in range(w):
        pos = cp.positions(s, w, r, lb)
        parts.append(
            ops.rope(cp.shard(x, seq_dim, w, r, lb), pos, inv_freq, interleaved=interleaved, layout=layout)
        )
    assert torch.equal(cp.unshard(parts, seq_dim, lb), full)


@pytest.mark.parametrize("w,lb,s", CASES, ids=CASE_IDS)
def test_rope_offset_and_partial_rotary(w, lb, s):
    # The sharded sequence continues a cache of 37 tokens: offset goes into positions().
    x = torch.randn(1, 2, s, 12, dtype=torch.float64)
    inv_freq = ops.rope_inv_freq(8, 500.0)
    full = ops.rope(x, None, inv_freq, 37, rotary_dim=8)
    parts = [
        ops.rope(cp.shard(x, 2, w, r, lb), cp.positions(s, w, r, lb, offset=37), inv_freq, rotary_dim=8)
        for r in range(w)
    ]
    assert torch.equal(cp.unshard(parts, 2, lb), full)
    # Equivalently offset 37 passed to the op on top of the rank's positions.
    parts = [
        ops.rope(cp.shard(x, 2, w, r, lb), cp.positions(s, w, r, lb), inv_freq, 37, rotary_dim=8)
        for r in range(w)
    ]
    assert torch.equal(cp.unshard(parts, 2, lb), full)


@pytest.mark.parametrize("w,lb,s", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("layout", ["bhsd", "bshd"])
def test_rope_batch_position_table(w, lb, s, layout):
    # Per-sequence positions (B, S), e.g. left padding: the table is sharded like the tokens.
    x, inv_freq = rope_inputs(s, layout)
    seq_dim = 2 if layout == "bhsd" else 1
    table = torch.stack([torch.arange(s), torch.arange(s) * 3 + 100])
    full = ops.rope(x, table, inv_freq, layout=layout)
    parts = [
        ops.rope(cp.shard(x, seq_dim, w, r, lb), cp.shard(table, 1, w, r, lb), inv_freq, layout=layout)
        for r in range(w)
    ]
    assert torch.equal(cp.unshard(parts, seq_dim, lb), full)
    # A plain (B, S) table of global positions: positions() expanded over the batch.
    full = ops.rope(x, None, inv_freq, layout=layout)
    parts = [
        ops.rope(
            cp.shard(x, seq_dim, w, r, lb),
            cp.positions(s, w, r, lb).expand(2, -1),
            inv_freq,
            layout=layout,
        )
        for r in range(w)
    ]
    assert torch.equal(cp.unshard(parts, seq_dim, lb), full)


@pytest.mark.parametrize("w,lb,s", CASES, ids=CASE_IDS)
def test_rotary_embedding_module(w, lb, s):
    rope = posenc.nn.RotaryEmbedding(8, rotary_dim=6, layout="bshd")
    q, k = torch.randn(2, s, 3, 8), torch.randn(2, s, 3, 8)
    fq, fk = rope(q, k)
    qs, ks = [], []
    for r in range(w):
        lq, lk = rope(cp.shard(q, 1, w, r, lb), cp.shard(k, 1, w, r, lb), cp.positions(s, w, r, lb))
        qs.append(lq)
        ks.append(lk)
    assert torch.equal(cp.unshard(qs, 1, lb), fq)
    assert torch.equal(cp.unshard(ks, 1, lb), fk)


def test_wrong_positions_are_detected():
    # The check can fail: a load-balanced shard rotated with the plain split's positions (or
    # with local 0..S_local-1) is not the unsharded result.
    s, w = 16, 2
    x, inv_freq = rope_inputs(s)
    full = ops.rope(x, None, inv_freq)
    wrong = [ops.rope(cp.shard(x, 2, w, r, True), cp.positions(s, w, r, False), inv_freq) for r in range(w)]
    assert not torch.equal(cp.unshard(wrong, 2, True), full)
    local = [ops.rope(cp.shard(x, 2, w, r, True), None, inv_freq) for r in range(w)]
    assert not torch.equal(cp.unshard(local, 2, True), full)
    bias = lambda ql, kl, qo, ko: ops.alibi_bias(ops.alibi_slopes(4), ql, kl, qo, ko)  # noqa: E731
    full_bias = bias(s, s, 0, 0)
    rows = [cp.local_bias(bias, s, w, r, False) for r in range(w)]
    assert not torch.equal(cp.unshard(rows, -2, True), full_bias)  # plain rows, balanced layout
    assert torch.equal(cp.unshard(rows, -2, False), full_bias)


# ---------------------------------------------------------------------------------------------
# Absolute sinusoidal table


@pytest.mark.parametrize("w,lb,s", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("interleaved", [True, False])
def test_sinusoidal_table(w, lb, s, interleaved):
    offset = 5
    full = ops.sinusoidal_table(s, 16, 10000.0, offset, interleaved)
    by_positions, by_chunks = [], []
    for r in range(w):
        pos = cp.positions(s, w, r, lb, offset=offset)
        by_positions.append(torch.ops.posenc.sinusoidal_table(pos, 16, 10000.0, interleaved, None))
        by_chunks.append(
            torch.cat(
                [
                    ops.sinusoidal_table(length, 16, 10000.0, offset + start, interleaved)
                    for start, length in cp.chunks(s, w, r, lb)
                ]
            )
        )
    assert torch.equal(cp.unshard(by_positions, 0, lb), full)
    assert torch.equal(cp.unshard(by_chunks, 0, lb), full)


# ---------------------------------------------------------------------------------------------
# Bias families


def bias_families():
    slopes = ops.alibi_slopes(6, dtype=torch.float64)
    t5_table = torch.randn(32, 6, dtype=torch.float64)
    t5_causal = torch.randn(16, 6, dtype=torch.float64)
    r1 = torch.rand(6, dtype=torch.float64) + 0.1
    r2 = torch.rand(6, dtype=torch.float64) + 0.1
    return {
        "alibi_causal": lambda ql, kl, qo, ko: ops.alibi_bias(slopes, ql, kl, qo, ko, True),
        "alibi_sym": lambda ql, kl, qo, ko: ops.alibi_bias(slopes, ql, kl, qo, ko, False),
        "t5_bidir": lambda ql, kl, qo, ko: ops.t5_bias(t5_table, ql, kl, qo, ko, True, 12),
        "t5_causal": lambda ql, kl, qo, ko: ops.t5_bias(t5_causal, ql, kl, qo, ko, False, 9),
        "kerple_log": lambda ql, kl, qo, ko: ops.kerple_bias(r1, r2, ql, kl, qo, ko, "log", True),
        "kerple_power": lambda ql, kl, qo, ko: ops.kerple_bias(r1, r2, ql, kl, qo, ko, "power", False),
        "module_alibi": posenc.nn.ALiBi(6, causal=False),
        "module_t5": posenc.nn.T5RelativeBias(6, num_buckets=8, max_distance=10),
        "module_kerple_log": posenc.nn.KERPLEBias(6, "log"),
        "module_kerple_power": posenc.nn.KERPLEBias(6, "power", causal=False),
    }


FAMILIES = list(bias_families())


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("w,lb,s", CASES, ids=CASE_IDS)
def test_bias_local_queries_vs_all_keys(family, w, lb, s):
    fn = bias_families()[family]
    offset = 11
    full = fn(s, s, offset, offset)
    rows = []
    for r in range(w):
        local = cp.local_bias(fn, s, w, r, lb, offset=offset)
        assert local.shape == (6, len(split_reference(s, w, r, lb)), s)
        assert torch.equal(local, full.index_select(1, split_reference(s, w, r, lb)))
        rows.append(local)
    assert torch.equal(cp.unshard(rows, -2, lb), full)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("w,lb,s", CASES, ids=CASE_IDS)
def test_bias_ring_blocks_for_every_rank_pair(family, w, lb, s):
    # Ring attention: rank r computes its queries against the key shard of every rank kr in
    # turn; each block is the (r rows, kr columns) part of the full bias, and assembling all
    # W x W blocks gives the full bias.
    fn = bias_families()[family]
    full = fn(s, s, 0, 0)
    rows = []
    for r in range(w):
        blocks = []
        for kr in range(w):
            blk = cp.local_bias(fn, s, w, r, lb, k_rank=kr)
            want = full.index_select(1, split_reference(s, w, r, lb)).index_select(
                2, split_reference(s, w, kr, lb)
            )
            assert torch.equal(blk, want), (r, kr)
            blocks.append(blk)
        rows.append(cp.unshard(blocks, -1, lb))
    assert torch.equal(cp.unshard(rows, -2, lb), full)


def test_bias_blocks_values():
    # W = 2 balanced, S = 16: rank 0 holds [0, 4) and [12, 16); rank 1 holds [4, 8) and [8, 12).
    assert cp.bias_blocks(16, 2, 0, True) == [[(0, 4, 0, 16)], [(12, 4, 0, 16)]]
    assert cp.bias_blocks(16, 2, 0, True, k_rank=1, offset=100) == [
        [(100, 4, 104, 4), (100, 4, 108, 4)],
        [(112, 4, 104, 4), (112, 4, 108, 4)],
    ]
    assert cp.bias_blocks(10, 4, 2) == [[(6, 2, 0, 10)]]
    assert cp.bias_blocks(10, 4, 2, k_rank=0) == [[(6, 2, 0, 3)]]


def test_bias_gradients_match_unsharded():
    # Gradients flow through local_bias to a module's parameters; the per-rank gradients sum
    # to the unsharded gradient (different summation order: tolerance, not equality).
    s, w = 13, 4
    mod = posenc.nn.T5RelativeBias(4, num_buckets=8, max_distance=10).double()
    kerple = posenc.nn.KERPLEBias(4, "power").double()
    weight = torch.randn(4, s, s, dtype=torch.float64)
    for m in (mod, kerple):
        m.zero_grad()
        (m(s, s) * weight).sum().backward()
        want = [p.grad.clone() for p in m.parameters()]
        m.zero_grad()
        for r in range(w):
            local_w = cp.shard(weight, 1, w, r, True)
            (cp.local_bias(m, s, w, r, True) * local_w).sum().backward()
        for p, g in zip(m.parameters(), want):
            torch.testing.assert_close(p.grad, g, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# Relative scores (Transformer-XL / Shaw): q is sharded, rel_emb is not


@pytest.mark.parametrize("w,lb,s", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("max_distance", [None, 4])
def test_rel_pos_scores(w, lb, s, max_distance):
    c = max(s - 1, 4)
    q = torch.randn(2, 3, s, 8, dtype=torch.float64)
    rel_emb = torch.randn(3, 2 * c + 1, 8, dtype=torch.float64)
    offset = 3
    full = ops.rel_pos_scores(q, rel_emb, offset, offset, s, max_distance)
    rows = []
    for r in range(w):
        q_local = cp.shard(q, 2, w, r, lb)
        local = cp.local_rel_pos_scores(q_local, rel_emb, s, w, r, lb, offset=offset, max_distance=max_distance)
        assert torch.equal(local, full.index_select(2, split_reference(s, w, r, lb)))
        rows.append(local)
        # What it does by hand: each local q chunk gets its global start as q_offset.
        by_hand, at = [], 0
        for start, length in cp.chunks(s, w, r, lb):
            q_chunk = q_local[:, :, at : at + length]
            at += length
            by_hand.append(ops.rel_pos_scores(q_chunk, rel_emb, offset + start, offset, s, max_distance))
        assert torch.equal(torch.cat(by_hand, 2), local)
        # Ring blocks against every rank's keys.
        blocks = [
            cp.local_rel_pos_scores(q_local, rel_emb, s, w, r, lb, k_rank=kr, offset=offset, max_distance=max_distance)
            for kr in range(w)
        ]
        assert torch.equal(cp.unshard(blocks, -1, lb), local)
    assert torch.equal(cp.unshard(rows, 2, lb), full)


# ---------------------------------------------------------------------------------------------
# Errors


def message(fn, arg, expected, given):
    return re.escape(f"posenc.{fn}: argument '{arg}' {expected}, but got {given}")


@pytest.mark.parametrize(
    "call,fn,arg,expected,given",
    [
        (lambda: cp.chunks(-1, 2, 0), "chunks", "seq_len", "must be >= 0", -1),
        (lambda: cp.chunks(8, 0, 0), "chunks", "world_size", "must be > 0", 0),
        (lambda: cp.chunks(8, 2, 2), "chunks", "rank", "must be in [0, world_size) = [0, 2)", 2),
        (lambda: cp.chunks(8, 2, -1, True), "chunks", "rank", "must be in [0, world_size) = [0, 2)", -1),
        (lambda: cp.positions(8, -3, 0), "positions", "world_size", "must be > 0", -3),
        (lambda: cp.shard(torch.zeros(4, 8), 2, 2, 0), "shard", "dim", "must be in [-2, 2) for a 2-D tensor", 2),
        (lambda: cp.shard(torch.zeros(4, 8), 1, 2, 5), "shard", "rank", "must be in [0, world_size) = [0, 2)", 5),
        (lambda: cp.shard(torch.tensor(1.0), 0, 2, 0), "shard", "x", "must have at least 1 dimension", "a 0-D tensor"),
        (lambda: cp.unshard([], 0), "unshard", "parts", "must hold one tensor per rank", "an empty list"),
        (
            lambda: cp.unshard([torch.zeros(3), torch.zeros(5)], 0),
            "unshard",
            "parts",
            "must have rank 0's local length 4 along dim 0 (global length 8, world_size 2)",
            3,
        ),
        (
            lambda: cp.bias_blocks(8, 2, 0, k_rank=2),
            "bias_blocks",
            "k_rank",
            "must be in [0, world_size) = [0, 2) (or omitted for all keys)",
            2,
        ),
        (
            lambda: cp.local_bias(lambda *a: torch.zeros(1), 8, 2, 0, k_rank=-1),
            "bias_blocks",
            "k_rank",
            "must be in [0, world_size) = [0, 2) (or omitted for all keys)",
            -1,
        ),
        (
            lambda: cp.local_rel_pos_scores(torch.zeros(1, 1, 3, 2), torch.zeros(1, 5, 2), 8, 2, 1),
            "local_rel_pos_scores",
            "q",
            "must be a 4-D tensor (B, H, 4, D) holding rank 1's local queries",
            "shape [1, 1, 3, 2]",
        ),
    ],
)
def test_bad_arguments_raise(call, fn, arg, expected, given):
    with pytest.raises(ValueError, match=message(fn, arg, expected, given)):
        call()


# ---------------------------------------------------------------------------------------------
# TorchScript


def test_torchscript():
    chunks = torch.jit.script(cp.chunks)
    positions = torch.jit.script(cp.positions)
    shard = torch.jit.script(cp.shard)
    unshard = torch.jit.script(cp.unshard)
    bias_blocks = torch.jit.script(cp.bias_blocks)
    rel = torch.jit.script(cp.local_rel_pos_scores)
    x = torch.randn(2, 13, 4)
    q = torch.randn(1, 2, 13, 4)
    rel_emb = torch.randn(2, 25, 4)
    for w in WORLD:
        for lb in SPLITS:
            parts = []
            for r in range(w):
                assert chunks(13, w, r, lb) == cp.chunks(13, w, r, lb)
                assert torch.equal(positions(13, w, r, lb, 2, None), cp.positions(13, w, r, lb, 2))
                assert bias_blocks(13, w, r, lb, 1, 4) == cp.bias_blocks(13, w, r, lb, 1, 4)
                parts.append(shard(x, 1, w, r, lb))
                assert torch.equal(parts[-1], cp.shard(x, 1, w, r, lb))
                q_local = cp.shard(q, 2, w, r, lb)
                assert torch.equal(
                    rel(q_local, rel_emb, 13, w, r, lb, None, 0, None),
                    cp.local_rel_pos_scores(q_local, rel_emb, 13, w, r, lb),
                )
            assert torch.equal(unshard(parts, 1, lb), x)
    # Scripted errors keep the message (as torch.jit.Error).
    with pytest.raises(torch.jit.Error, match=message("chunks", "rank", "must be in [0, world_size) = [0, 2)", 3)):
        chunks(8, 2, 3, False)
