"""Real multi-process training: torch.distributed groups of 2 and 4 ranks give the
single-process numbers.

* Context parallelism: the sequence is sharded with ``posenc.context_parallel`` (plain and
  zig-zag / load-balanced split), RoPE takes the rank's global ``positions``, and attention over
  the whole sequence is computed two ways — keys/values all-gathered with the bias of
  ``local_bias`` / ``local_rel_pos_scores``, and ring attention that passes key/value blocks
  rank to rank, calls the fused ``posenc.ops.relative_attention`` per block with the block's
  global offsets and merges the partial outputs by their log-sum-exp. Output and gradients
  (inputs, and the position parameters all-reduced) equal the unsharded computation, for RoPE,
  ALiBi, T5, KERPLE (log, power) and relative scores (Shaw / Transformer-XL), causal and
  bidirectional.
* DDP over ``TinyPositionalAttention`` (RoPE + every bias module) and FSDP2 (``fully_shard``)
  over a fused RoPE + KERPLE model: a few SGD steps give the gradients, losses and parameters of
  single-process training on the whole batch.
* The torchrun example (examples/context_parallel_torchrun.py) runs with 2 processes.

The expected values are the single-process computation in the parent (fp64; attention written
out as softmax(scale q k^T + P + mask) v with the unsharded position term), compared with
``assert_close(rtol=1e-10, atol=1e-10)``: the distributed run only reorders fp64 sums. One
process group per world size runs every check (spawning dominates the time); ranks write their
results to files, a failing rank fails the test and a hung group is killed after
``TIMEOUT_S``. Backend: gloo on the CPU; NCCL runs instead when there are as many GPUs as ranks.
"""
import math
import os
import socket
import subprocess
import sys
import time
import zlib
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.testing import assert_close

import posenc
from posenc import context_parallel as cp
from posenc import ops
from posenc_test_models import TinyPositionalAttention

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 120.0
TOL = dict(rtol=1e-10, atol=1e-10)
WORLD = [2, 4]
B, H, D = 2, 4, 8
# Divisible by 2W for both world sizes, and uneven (ranks' local lengths differ).
LENGTHS = [16, 13]
FAMILIES = ["rope", "alibi", "t5", "kerple_log", "kerple_power", "rel_pos"]
T5_BUCKETS, T5_MAX_DISTANCE = 8, 6
REL_R = 9  # rel_emb rows: distances -4..4, so S = 13 and 16 clip


def backend_for(world_size):
    return "nccl" if torch.cuda.device_count() >= world_size else "gloo"


# ---------------------------------------------------------------------------------------------
# Launching ranks


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_entry(rank, fn, world_size, port, out_dir, args):
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size)
    )
    torch.set_num_threads(1)
    backend = backend_for(world_size)
    if backend == "nccl":
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=timedelta(seconds=60))
    result = fn(rank, world_size, *args)
    torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()


def run_ranks(fn, world_size, out_dir, *args, timeout=TIMEOUT_S):
    """Runs ``fn(rank, world_size, *args)`` in ``world_size`` spawned processes of one process
    group; returns each rank's result (saved with torch.save). A rank's exception is raised here
    with its traceback (torch.multiprocessing.ProcessRaisedException; the other ranks are
    terminated); a group still running after ``timeout`` seconds is killed (TimeoutError)."""
    ctx = mp.start_processes(
        _rank_entry,
        args=(fn, world_size, free_port(), str(out_dir), args),
        nprocs=world_size,
        join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=max(0.05, min(1.0, deadline - time.monotonic()))):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
            for p in ctx.processes:
                p.join()
            raise TimeoutError(f"{world_size} ranks of {fn.__name__} still running after {timeout} s")
    return [torch.load(Path(out_dir) / f"rank{r}.pt") for r in range(world_size)]


# ---------------------------------------------------------------------------------------------
# Context parallelism: inputs, the single-process reference, and the two distributed methods


def cp_case(family, causal, seq_len):
    """Global fp64 q, k, v, output cotangent g (B, H, S, D) and the family's parameters, the
    same in every process (a fixed seed per case)."""
    # crc32, not hash(): str hashes differ between processes.
    gen = torch.Generator().manual_seed(zlib.crc32(f"{family}-{causal}-{seq_len}".encode()))

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    t = {name: randn(B, H, seq_len, D) for name in ("q", "k", "v", "g")}
    params = {}
    if family == "alibi":
        params["slopes"] = ops.alibi_slopes(H, dtype=torch.float64) * (1 + randn(H).abs())
    elif family == "t5":
        params["table"] = randn(T5_BUCKETS, H)
    elif family.startswith("kerple"):
        params["r1"] = randn(H).abs() + 0.2
        params["r2"] = randn(H).abs() * 0.5 + 0.2
    elif family == "rel_pos":
        params["rel_emb"] = randn(H, REL_R, D) * 0.3
    return t, params


def inv_freq():
    return ops.rope_inv_freq(D, 10000.0, dtype=torch.float64)


def bias_fn(family, params, causal):
    """The family's bias op as ``fn(q_len, k_len, q_offset, k_offset)`` (None: no bias op)."""
    if family == "alibi":
        return lambda ql, kl, qo, ko: ops.alibi_bias(params["slopes"], ql, kl, qo, ko, causal)
    if family == "t5":
        return lambda ql, kl, qo, ko: ops.t5_bias(
            params["table"], ql, kl, qo, ko, not causal, T5_MAX_DISTANCE
        )
    if family.startswith("kerple"):
        kind = family.split("_")[1]
        return lambda ql, kl, qo, ko: ops.kerple_bias(
            params["r1"], params["r2"], ql, kl, qo, ko, kind, causal
        )
    return None


def attend(q, k, v, term, mask):
    """softmax(q k^T / sqrt(D) + term + mask) v, written out (mask: True = hidden)."""
    scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(D)
    if term is not None:
        scores = scores + term
    if mask is not None:
        scores = scores.masked_fill(mask, float("-inf"))
    return torch.matmul(torch.softmax(scores, -1), v)


def single_process(family, causal, seq_len):
    """The unsharded forward and backward: out and the gradients of sum(out * g)."""
    t, params = cp_case(family, causal, seq_len)
    q, k, v = (t[n].clone().requires_grad_() for n in ("q", "k", "v"))
    params = {n: p.clone().requires_grad_() for n, p in params.items()}
    qr, kr = q, k
    if family == "rope":
        qr, kr = ops.rope(q, None, inv_freq()), ops.rope(k, None, inv_freq())
    fn = bias_fn(family, params, causal)
    term = fn(seq_len, seq_len, 0, 0) if fn is not None else None
    if family == "rel_pos":
        term = ops.rel_pos_scores(qr, params["rel_emb"], 0, 0, seq_len)
    mask = None
    if causal:
        mask = torch.ones(seq_len, seq_len, dtype=torch.bool).triu(1)
    out = attend(qr, kr, v, term, mask)
    leaves = {"q": q, "k": k, "v": v, **params}
    grads = torch.autograd.grad((out * t["g"]).sum(), list(leaves.values()))
    return out.detach(), dict(zip(leaves, grads))


class _AllGatherSeq(torch.autograd.Function):
    """All ranks' local tensors concatenated in rank order along ``dim`` (ranks' lengths may
    differ; padded for the collective). Backward: the gradient summed over ranks, this rank's
    slice. Keys and values go in one call, so every rank runs the same collectives in the same
    order in the backward too."""

    @staticmethod
    def forward(ctx, x, dim, lengths):
        r = dist.get_rank()
        pad = [0, 0] * (x.dim() - 1 - dim) + [0, max(lengths) - x.size(dim)]
        padded = torch.nn.functional.pad(x, pad).contiguous()
        parts = [torch.empty_like(padded) for _ in lengths]
        dist.all_gather(parts, padded)
        ctx.dim, ctx.lengths, ctx.rank = dim, lengths, r
        return torch.cat([p.narrow(dim, 0, n) for p, n in zip(parts, lengths)], dim)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad)
        start = sum(ctx.lengths[: ctx.rank])
        return grad.narrow(ctx.dim, start, ctx.lengths[ctx.rank]), None, None


def _send_recv(send, dst, recv, src):
    ops_ = [dist.P2POp(dist.isend, send, dst), dist.P2POp(dist.irecv, recv, src)]
    for req in dist.batch_isend_irecv(ops_):
        req.wait()


class _Ring(torch.autograd.Function):
    """The key/value blocks of ring attention: output ``s`` is the block of rank ``(r - s) mod
    W`` (``lengths[i]`` long along ``dim``), received from rank ``r - 1`` at step ``s``. The
    backward sends the accumulated gradients round the ring the other way, so every rank runs
    the same W - 1 exchanges even when it used none of the blocks it received (a causal
    rank 0). One autograd node for the whole ring: a node per step would not run in the
    backward of a rank whose received blocks were all in the future, and its neighbour would
    wait forever."""

    @staticmethod
    def forward(ctx, x, dim, lengths):
        r, w = dist.get_rank(), dist.get_world_size()
        blocks = [x.clone()]
        for step in range(1, w):
            shape = list(x.shape)
            shape[dim] = lengths[(r - step) % w]
            recv = x.new_empty(shape)
            _send_recv(blocks[-1].contiguous(), (r + 1) % w, recv, (r - 1) % w)
            blocks.append(recv)
        return tuple(blocks)

    @staticmethod
    def backward(ctx, *grads):
        # grads[s] belongs to rank r - s; after the exchange at step s the accumulator holds
        # what rank r + 1 gathered for rank (r + 1) - s = r - (s - 1).
        r, w = dist.get_rank(), dist.get_world_size()
        acc = grads[w - 1].clone()
        for step in range(w - 1, 0, -1):
            recv = grads[step - 1].new_empty(grads[step - 1].shape)
            _send_recv(acc.contiguous(), (r - 1) % w, recv, (r + 1) % w)
            acc = recv + grads[step - 1]
        return acc, None, None


def merge_lse(acc, part):
    """Merges two partial attention results (out (B, H, L, D), lse (B, H, L)) over disjoint key
    sets: weights exp(lse_i - lse) with lse = logaddexp(lse_1, lse_2). Rows with no visible key
    in either part (lse = -inf) stay zero."""
    if acc is None:
        return part
    (o1, l1), (o2, l2) = acc, part
    lse = torch.logaddexp(l1, l2)
    ref = torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)
    out = o1 * torch.exp(l1 - ref).unsqueeze(-1) + o2 * torch.exp(l2 - ref).unsqueeze(-1)
    return out, lse


def fused_block(family, params, causal, q, k, v, q_offset, k_offset):
    kw = dict(causal=causal, q_offset=q_offset, k_offset=k_offset)
    if family == "alibi":
        kw["slopes"] = params["slopes"]
    elif family == "t5":
        kw.update(table=params["table"], max_distance=T5_MAX_DISTANCE)
    elif family.startswith("kerple"):
        kw.update(r1=params["r1"], r2=params["r2"], kerple_kind=family.split("_")[1])
    elif family == "rel_pos":
        kw["rel_emb"] = params["rel_emb"]
    return ops.relative_attention(q, k, v, **kw)


def ring_attention(family, params, causal, q, k, v, seq_len, lb):
    """This rank's attention output by ring attention: W steps; at step s the key/value shard
    of rank (r - s) mod W is here, and every (local query chunk, key chunk) block goes to the
    fused op with its global offsets. Blocks wholly in the future of a causal query chunk are
    skipped (the work the zig-zag split balances)."""
    r, w = dist.get_rank(), dist.get_world_size()
    q_chunks = cp.chunks(seq_len, w, r, lb)
    lengths = [sum(n for _, n in cp.chunks(seq_len, w, i, lb)) for i in range(w)]
    ring = _Ring.apply(torch.stack([k, v]), 3, lengths)
    acc = [None] * len(q_chunks)
    work = 0
    for step in range(w):
        src = (r - step) % w
        k_chunks = cp.chunks(seq_len, w, src, lb)
        kv = ring[step]
        q_at = 0
        for a, (qs, qn) in enumerate(q_chunks):
            k_at = 0
            for ks, kn in k_chunks:
                if not (causal and ks > qs + qn - 1):
                    blk = fused_block(
                        family, params, causal, q[:, :, q_at : q_at + qn],
                        kv[0][:, :, k_at : k_at + kn], kv[1][:, :, k_at : k_at + kn], qs, ks,
                    )
                    acc[a] = merge_lse(acc[a], blk)
                    work += qn * kn
                k_at += kn
            q_at += qn
    return torch.cat([o for o, _ in acc], 2), work


def gathered_attention(family, params, causal, q, k, v, seq_len, lb):
    """This rank's attention output with all keys/values gathered (global order) and the
    position term of local_bias / local_rel_pos_scores."""
    r, w = dist.get_rank(), dist.get_world_size()
    lengths = [sum(n for _, n in cp.chunks(seq_len, w, i, lb)) for i in range(w)]
    kv = _AllGatherSeq.apply(torch.stack([k, v]), 3, lengths)
    k_all, v_all = cp.unshard(list(kv.split(lengths, 3)), 3, lb)
    fn = bias_fn(family, params, causal)
    term = cp.local_bias(fn, seq_len, w, r, lb) if fn is not None else None
    if family == "rel_pos":
        term = cp.local_rel_pos_scores(q, params["rel_emb"], seq_len, w, r, lb)
    mask = None
    if causal:
        pos = cp.positions(seq_len, w, r, lb, device=q.device)
        mask = pos[:, None] < torch.arange(seq_len, device=q.device)[None, :]
    return attend(q, k_all, v_all, term, mask)


CP_CASES = [
    (family, causal, lb, seq_len)
    for family in FAMILIES
    for causal in (True, False)
    for lb in (False, True)
    for seq_len in LENGTHS
]
METHODS = ["gathered", "ring"]


def context_parallel_checks(rank, world_size, device):
    out = {}
    for family, causal, lb, seq_len in CP_CASES:
        t, params = cp_case(family, causal, seq_len)
        for method in METHODS:
            local = {
                n: cp.shard(t[n], 2, world_size, rank, lb).clone().to(device).requires_grad_()
                for n in ("q", "k", "v")
            }
            p = {n: x.clone().to(device).requires_grad_() for n, x in params.items()}
            q, k = local["q"], local["k"]
            if family == "rope":
                pos = cp.positions(seq_len, world_size, rank, lb, device=device)
                freq = inv_freq().to(device)
                q, k = ops.rope(q, pos, freq), ops.rope(k, pos, freq)
            args = (family, p, causal, q, k, local["v"], seq_len, lb)
            work = None
            if method == "ring":
                y, work = ring_attention(*args)
            else:
                y = gathered_attention(*args)
            g = cp.shard(t["g"], 2, world_size, rank, lb).to(device)
            (y * g).sum().backward()
            grads = {n: x.grad for n, x in local.items()}
            for n, x in p.items():
                dist.all_reduce(x.grad)  # each rank holds its queries' share
                grads[n] = x.grad
            out[(family, causal, lb, seq_len, method)] = dict(
                out=y.detach().cpu(), grads={n: x.cpu() for n, x in grads.items()}, work=work
            )
    return out


# ---------------------------------------------------------------------------------------------
# Data parallelism: DDP and FSDP2


class FusedBlock(nn.Module):
    """Causal attention with RoPE and the fused KERPLE term, plus an MLP."""

    def __init__(self, d_model=16, heads=2):
        super().__init__()
        self.heads, self.head_dim = heads, d_model // heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, 32), nn.GELU(), nn.Linear(32, d_model))
        self.rope = posenc.nn.RotaryEmbedding(self.head_dim)
        self.kerple = posenc.nn.KERPLEBias(heads, "log", causal=True)

    def forward(self, x):
        b, s, _ = x.shape
        qkv = self.qkv(x).view(b, s, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = self.rope(qkv[0], qkv[1])
        y = self.kerple.attention(q, k, qkv[2]).transpose(1, 2).reshape(b, s, -1)
        x = x + self.out(y)
        return x + self.mlp(x)


class FusedModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([FusedBlock(), FusedBlock()])
        self.head = nn.Linear(16, 16)

    def forward(self, x):
        for blk in self.blocks:
            x = blk(x)
        return self.head(x)


GLOBAL_BATCH, SEQ, STEPS, LR = 8, 12, 4, 0.2


def make_model(kind):
    torch.manual_seed(1234)
    model = TinyPositionalAttention(d_model=16, num_heads=2, max_len=32) if kind == "ddp" else FusedModel()
    return model.double()


def batch():
    # One batch for every step: the loss must then fall (the model fits it).
    gen = torch.Generator().manual_seed(100)
    x = torch.randn(GLOBAL_BATCH, SEQ, 16, generator=gen, dtype=torch.float64)
    return x, torch.roll(x, 1, dims=1).tanh()  # a learnable target: the previous token


def sgd_step(model):
    # Plain SGD by hand: torch.optim's first step imports torch._dynamo (seconds per process).
    with torch.no_grad():
        for p in model.parameters():
            p -= LR * p.grad


def model_out(kind, model, x):
    y = model(x)
    return y[0] if kind == "ddp" else y


def single_process_training(kind):
    """SGD on the whole batch: per-step losses and gradients, final parameters."""
    model = make_model(kind)
    losses, grads = [], []
    for step in range(STEPS):
        x, y = batch()
        model.zero_grad()
        loss = (model_out(kind, model, x) - y).square().mean()
        loss.backward()
        losses.append(loss.detach())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
        sgd_step(model)
    return losses, grads, {n: p.detach() for n, p in model.named_parameters()}


def data_parallel_training(rank, world_size, device, kind):
    """DDP or FSDP2 training, every rank on its slice of the global batch."""
    model = make_model(kind).to(device)
    local_numel = None
    if kind == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        wrapped = DistributedDataParallel(model)
    else:
        from torch.distributed.fsdp import fully_shard

        for blk in model.blocks:
            fully_shard(blk)
        wrapped = fully_shard(model)
        local_numel = {n: p.to_local().numel() for n, p in model.named_parameters()}
    per = GLOBAL_BATCH // world_size
    losses, grads = [], []
    for step in range(STEPS):
        x, y = batch()
        x, y = x[rank * per : (rank + 1) * per].to(device), y[rank * per : (rank + 1) * per].to(device)
        model.zero_grad()
        loss = (model_out(kind, wrapped, x) - y).square().mean()
        loss.backward()
        # Equal slices: the mean of the ranks' losses is the whole batch's loss.
        global_loss = loss.detach().clone()
        dist.all_reduce(global_loss)
        losses.append(global_loss.cpu() / world_size)
        grads.append({n: _full(p.grad).cpu() for n, p in model.named_parameters()})
        sgd_step(model)
    params = {n: _full(p.detach()).cpu() for n, p in model.named_parameters()}
    return dict(losses=losses, grads=grads, params=params, local_numel=local_numel)


def _full(t):
    # FSDP2 parameters and gradients are DTensors sharded on dim 0.
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def all_checks(rank, world_size):
    device = torch.device("cuda", rank) if backend_for(world_size) == "nccl" else torch.device("cpu")
    return dict(
        cp=context_parallel_checks(rank, world_size, device),
        ddp=data_parallel_training(rank, world_size, device, "ddp"),
        fsdp=data_parallel_training(rank, world_size, device, "fsdp"),
    )


_RESULTS = {}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """``results(W)``: every rank's results of :func:`all_checks`, run once per world size (a
    failed run is re-raised, not re-run)."""

    def get(world_size):
        if world_size not in _RESULTS:
            try:
                _RESULTS[world_size] = run_ranks(all_checks, world_size, tmp_path_factory.mktemp(f"w{world_size}"))
            except Exception as e:  # noqa: BLE001 (stored, re-raised for every test of this W)
                _RESULTS[world_size] = e
        r = _RESULTS[world_size]
        if isinstance(r, Exception):
            raise r
        return r

    return get


# ---------------------------------------------------------------------------------------------
# Tests


def case_id(c):
    family, causal, lb, seq_len = c
    return f"{family}-{'causal' if causal else 'bidir'}-{'zigzag' if lb else 'plain'}-S{seq_len}"


_REFERENCE = {}


def reference(family, causal, seq_len):
    key = (family, causal, seq_len)
    if key not in _REFERENCE:
        _REFERENCE[key] = single_process(family, causal, seq_len)
    return _REFERENCE[key]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("case", CP_CASES, ids=[case_id(c) for c in CP_CASES])
@pytest.mark.parametrize("world_size", WORLD)
def test_context_parallel_equals_single_process(results, world_size, case, method):
    family, causal, lb, seq_len = case
    ranks = results(world_size)
    want_out, want_grads = reference(family, causal, seq_len)
    got = [rk["cp"][(family, causal, lb, seq_len, method)] for rk in ranks]
    assert_close(cp.unshard([g["out"] for g in got], 2, lb), want_out, **TOL)
    for name in ("q", "k", "v"):
        assert_close(cp.unshard([g["grads"][name] for g in got], 2, lb), want_grads[name], **TOL)
    for name in want_grads.keys() - {"q", "k", "v"}:
        for g in got:  # all-reduced: every rank holds the full gradient
            assert_close(g["grads"][name], want_grads[name], **TOL)


@pytest.mark.parametrize("world_size", WORLD)
def test_zigzag_balances_causal_ring_work(results, world_size):
    # Query-key pairs each rank's ring attention computed (future blocks skipped), causal, S=16.
    def work(lb):
        return [rk["cp"][("alibi", True, lb, 16, "ring")]["work"] for rk in results(world_size)]

    # Zig-zag, chunks of n = S / 2W: chunk c computes c + 1 blocks of n x n (the earlier chunks
    # and its diagonal), so rank r computes (r + 1) + (2W - r) blocks, the same on every rank.
    n = 16 // (2 * world_size)
    assert work(True) == [(2 * world_size + 1) * n * n] * world_size
    # Plain, chunks of m = S / W: rank r computes r + 1 blocks of m x m.
    m = 16 // world_size
    assert work(False) == [(r + 1) * m * m for r in range(world_size)]


@pytest.mark.parametrize("kind", ["ddp", "fsdp"])
@pytest.mark.parametrize("world_size", WORLD)
def test_data_parallel_training_equals_single_process(results, world_size, kind):
    want_losses, want_grads, want_params = single_process_training(kind)
    assert want_losses[-1] < 0.9 * want_losses[0]  # it trains
    for rk in results(world_size):
        got = rk[kind]
        assert_close(torch.stack(got["losses"]), torch.stack(want_losses), **TOL)
        for step in range(STEPS):
            assert got["grads"][step].keys() == want_grads[step].keys()
            for n, g in want_grads[step].items():
                assert_close(got["grads"][step][n], g, **TOL, msg=lambda m: f"step {step} {n}: {m}")
        for n, p in want_params.items():
            assert_close(got["params"][n], p, **TOL)
    if kind == "fsdp":
        # Parameters really are sharded: the ranks' local pieces add up to each parameter
        # (dim 0 split), and the largest one is split W ways.
        numel = [rk["fsdp"]["local_numel"] for rk in results(world_size)]
        for n, p in want_params.items():
            assert sum(x[n] for x in numel) == p.numel(), n
        big = "blocks.0.mlp.0.weight"
        assert [x[big] for x in numel] == [want_params[big].numel() // world_size] * world_size


def _fail_on_rank_1(rank, world_size):
    if rank == 1:
        raise ValueError("rank 1 fails on purpose")
    dist.barrier()  # rank 0 would wait for rank 1 forever


def _sleep(rank, world_size):
    time.sleep(600)


def test_failing_rank_fails_the_run(tmp_path):
    start = time.monotonic()
    with pytest.raises(mp.ProcessRaisedException, match="rank 1 fails on purpose"):
        run_ranks(_fail_on_rank_1, 2, tmp_path)
    assert time.monotonic() - start < 60  # the waiting rank was terminated, not timed out


def test_hung_run_is_killed(tmp_path):
    with pytest.raises(TimeoutError, match="still running after 5"):
        run_ranks(_sleep, 2, tmp_path, timeout=5)


def test_torchrun_example():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if os.environ.get("POSENC_TEST_INSTALLED") != "1":
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "python"), env.get("PYTHONPATH")]))
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        str(ROOT / "examples" / "context_parallel_torchrun.py"),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "context parallel == single process" in proc.stdout, proc.stdout
