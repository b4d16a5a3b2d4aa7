"""posenc ops benchmark: every op, forward and backward, against its floors and against the eager
code people run today, with the goals of issue 10 evaluated per row.

    python benchmarks/bench_ops.py --device cpu           # issue sizes, fp32+bf16, 1 and 2 threads
    python benchmarks/bench_ops.py --device cpu --quick   # small sizes: a smoke run (< 1 min)
    python benchmarks/bench_ops.py                        # CUDA (when present): realistic sizes, bf16
    python benchmarks/bench_ops.py --device cpu --ops rope:thd,rel_pos_scores --dtypes fp32 --threads 2
    python benchmarks/bench_ops.py --device cpu --json out.json --markdown out.md

Rows: one per (op, variant, size, dtype, threads, direction). Directions:

  fwd       the op's forward under no_grad, a fresh output every call
  fwd out=  (bias ops) the forward writing into one reused buffer via ``out=``
  bwd       the backward alone: torch.autograd.grad from a retained graph
  fwd+bwd   a fresh forward and its backward in every call

Floors, measured in the same run on tensors of the row's size and dtype:

  fill      ``torch.empty(out_shape).fill_(1)``: a fresh output written once. It pays the page
            faults every op that returns a fresh CPU tensor pays (most of a bias op's time).
  copy_     ``dst.copy_(src)`` into a preallocated buffer of the output's size: the floor of an
            ``out=`` variant only (no page faults; it reads as much as it writes).
  sum       ``grad.sum(dim=(1, 2))`` over the (H, L, L) gradient: a same-size reduction, the floor
            of the bias backward ops; fwd+bwd of a bias op is compared with fill+sum.
  matmul    ``q @ k.transpose(-1, -2)`` with k of q's shape (B, H, L, D): the same-shape GEMM
            (rel_pos_scores); bwd rows use its backward, fwd+bwd rows its forward+backward.
  clone     ``x.clone()`` (fwd), the gradient's clone (bwd), both (fwd+bwd): one read and one
            fresh write of the activation (rope, apply_rotary_pos_emb).

Columns: the fill and copy_ times of the output size on every row; "floor" names the floor the
row is compared with and posenc/floor is the time ratio (1.00 = as fast as the floor); eager is
the eager composition of the same math (listed under the table), each checked against the op
first (fp32, small size, forward and backward; causal rel_pos on and below the diagonal only);
eager/posenc is posenc's speed-up over it; 2T/1T is posenc's 1-thread time over its 2-thread
time.

Goals (issue 10; CPU, fp32, 2 threads; other rows show "-"). Each goal bounds the posenc time;
"NOT met (by X vs P)" says the op is X times slower than its bound, P being the binding part:

  bias fwd (t5, alibi, kerple)     <= fill, and >= 3x faster than eager
  bias bwd                         >= 0.8x the speed of sum, i.e. posenc <= sum / 0.8
  rel_pos_scores fwd, causal       <= 1.2x matmul, and >= 1.5x faster than TXL eager
  rel_pos_scores fwd, bidir 2L-1   <= 2.2x matmul, and no slower than TXL eager
  rel_pos_scores fwd+bwd, causal   <= 1.5x matmul fwd+bwd
  rope fwd and bwd, every variant  >= 0.9x the speed of clone (<= clone / 0.9), >= 4x faster
                                   than the HF-style eager (rope and rope_exact; the issue sets
                                   none for apply_rotary_pos_emb or sinusoidal_table)
  2T/1T (fp32, default sizes)      >= 1.7x

Timing: medians of ``--target-s`` worth of calls (at least ``--min-reps``) after a warm-up;
CUDA events on a GPU, perf_counter on the CPU. One measurement spends at most about
``--budget-s``: a call slower than half of it is timed once after its warm-up, one slower than
all of it only by its first call (the L=4096 bias rows, slow eager code). ``--skip-eager-above``
skips the eager code for large outputs. Not a test: nothing here asserts speed; the exit code
is 1 only when an eager composition disagrees with the op.
"""
import argparse
import gc
import inspect
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, List, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
import posenc  # noqa: E402
from posenc import ops  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp64": torch.float64}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


def accepts(fn, name):
    """Whether the Python wrapper ``fn`` has a parameter ``name`` (an option another branch adds)."""
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


# ---- eager compositions (plain torch, as people write them) -----------------------------------

def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rotate_every_two(x):
    # GPT-J / GPT-NeoX-interleaved: pairs (2i, 2i+1) -> (-x[2i+1], x[2i])
    x1, x2 = x[..., ::2], x[..., 1::2]
    return torch.stack((-x2, x1), dim=-1).flatten(-2)


def hf_cos_sin(pos, inv_freq, dtype, repeat=False, scale=None):
    # LlamaRotaryEmbedding.forward: angles in inv_freq's precision, cos/sin cast to x's dtype.
    # repeat: GPT-J's duplicate_interleave instead of cat((freqs, freqs)); scale: xPos factors.
    freqs = torch.outer(pos.to(inv_freq.dtype), inv_freq)
    emb = freqs.repeat_interleave(2, dim=-1) if repeat else torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos(), emb.sin()
    if scale is not None:
        s = torch.cat((scale, scale), dim=-1)
        cos, sin = cos * s, sin * s
    return cos.to(dtype), sin.to(dtype)


def eager_rope(x, inv_freq, offset=0):
    # Hugging Face LlamaRotaryEmbedding + apply_rotary_pos_emb: fp32 angles, tables cast to x's dtype
    pos = torch.arange(offset, offset + x.shape[-2], device=x.device, dtype=torch.float32)
    freqs = torch.outer(pos, inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
    return x * cos + rotate_half(x) * sin


def eager_rope_exact(x, inv_freq64):
    # The eager way to get exact angles: fp64 positions x fp64 inv_freq, fp64 cos/sin tables.
    pos = torch.arange(x.shape[-2], device=x.device, dtype=torch.float64)
    freqs = torch.outer(pos, inv_freq64)
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
    return x * cos + rotate_half(x) * sin


def eager_rope_bshd(x, inv_freq):
    # HF apply_rotary_pos_emb(..., unsqueeze_dim=2) on (B, S, H, D): tables broadcast over heads
    pos = torch.arange(x.shape[1], device=x.device)
    cos, sin = hf_cos_sin(pos, inv_freq, x.dtype)
    cos, sin = cos[:, None], sin[:, None]
    return x * cos + rotate_half(x) * sin


def packed_positions(cu_seqlens, total):
    # position_ids of packed sequences (what HF's DataCollatorWithFlattening emits)
    starts = cu_seqlens[:-1].repeat_interleave(cu_seqlens.diff(), output_size=total)
    return torch.arange(total, device=cu_seqlens.device) - starts


def eager_rope_thd(x, inv_freq, cu_seqlens):
    # HF-style on packed (T, H, D): per-token positions restart in every sequence
    cos, sin = hf_cos_sin(packed_positions(cu_seqlens, x.shape[0]), inv_freq, x.dtype)
    cos, sin = cos[:, None], sin[:, None]
    return x * cos + rotate_half(x) * sin


def eager_rope_interleaved(x, inv_freq):
    # GPT-J apply_rotary_pos_emb: cos/sin repeat_interleave'd, rotate_every_two
    cos, sin = hf_cos_sin(torch.arange(x.shape[-2], device=x.device), inv_freq, x.dtype, repeat=True)
    return x * cos + rotate_every_two(x) * sin


def eager_rope_partial(x, inv_freq):
    # GPT-NeoX / Phi partial rotary: rotate the first R dims, concatenate the pass-through rest
    R = 2 * inv_freq.shape[0]
    x_rot, x_pass = x[..., :R], x[..., R:]
    cos, sin = hf_cos_sin(torch.arange(x.shape[-2], device=x.device), inv_freq, x.dtype)
    return torch.cat((x_rot * cos + rotate_half(x_rot) * sin, x_pass), dim=-1)


def eager_rope_xpos(x, inv_freq, zeta, scale_base):
    # xPos (Sun et al. 2022) for queries: zeta_i ** (pos / scale_base) folded into cos and sin
    pos = torch.arange(x.shape[-2], device=x.device, dtype=torch.float32)
    scale = zeta[None, :] ** (pos[:, None] / scale_base)
    cos, sin = hf_cos_sin(pos, inv_freq, x.dtype, scale=scale)
    return x * cos + rotate_half(x) * sin


def eager_apply_rotary(x, cos, sin):
    return x * cos + rotate_half(x) * sin


def eager_rel_pos(q, rel_emb):
    # Transformer-XL: (B, H, L, R) product with R in decreasing-distance order, then the
    # pad-and-reshape shift that moves row i left by L - 1 - i (R = 2L - 1 covers both sides).
    B, H, L, _ = q.shape
    W = rel_emb.shape[1]
    bd = q @ rel_emb.flip(1).transpose(-1, -2)
    flat = bd.reshape(B, H, L * W)[..., L - 1 : L - 1 + L * (W - 1)]
    return flat.reshape(B, H, L, W - 1)[..., :L].contiguous()


def eager_rel_pos_causal(q, rel_emb):
    # Transformer-XL as published (causal): the L non-negative distances L-1 .. 0 only
    # (pos_seq = arange(klen - 1, -1, -1)), an (L, L) product, then _rel_shift (a zero column in
    # front, reshape, drop the first row). Entries above the diagonal are left as garbage for the
    # attention mask to remove; the result is the shift's view, no copy.
    B, H, L, _ = q.shape
    c = (rel_emb.shape[1] - 1) // 2
    bd = q @ rel_emb[:, c : c + L].flip(1).transpose(-1, -2)
    padded = torch.cat((bd.new_zeros(B, H, L, 1), bd), dim=-1)
    return padded.view(B, H, L + 1, L)[:, :, 1:]


def eager_shaw(q, rel_emb, max_distance):
    # Shaw et al. relative keys with per-head tables: q @ rel_emb^T over the R = 2M + 1 clipped
    # distances, then a gather of each (i, j)'s distance (cheaper than the (L, L, D) key gather).
    B, H, L, _ = q.shape
    c = (rel_emb.shape[1] - 1) // 2
    pos = torch.arange(L, device=q.device)
    idx = c + (pos[:, None] - pos[None, :]).clamp(-max_distance, max_distance)
    return (q @ rel_emb.transpose(-1, -2)).gather(-1, idx.expand(B, H, L, L))


def hf_relative_position_bucket(rp, bidirectional=True, num_buckets=32, max_distance=128):
    # T5Attention._relative_position_bucket
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


def eager_t5(table, q_len, k_len, bidirectional=True, max_distance=128):
    # T5Attention.compute_bias: bucket matrix, embedding gather, permute to (H, q, k)
    dev = table.device
    ctx = torch.arange(q_len, dtype=torch.long, device=dev)[:, None]
    mem = torch.arange(k_len, dtype=torch.long, device=dev)[None, :]
    bucket = hf_relative_position_bucket(mem - ctx, bidirectional, table.shape[0], max_distance)
    return torch.nn.functional.embedding(bucket, table).permute(2, 0, 1).contiguous()


def distance(q_len, k_len, device, causal):
    d = torch.arange(q_len, device=device)[:, None] - torch.arange(k_len, device=device)[None, :]
    return d if causal else d.abs()


def eager_alibi(slopes, q_len, k_len, causal=True):
    d = distance(q_len, k_len, slopes.device, causal).float()
    return (-slopes.float()[:, None, None] * d).to(slopes.dtype)


def eager_kerple(r1, r2, q_len, k_len, causal=True):
    d = distance(q_len, k_len, r1.device, causal).clamp(min=0).float()
    return (-r1.float()[:, None, None] * torch.log1p(r2.float()[:, None, None] * d)).to(r1.dtype)


def eager_dpb(ws, bs, q_len, k_len, log_distance=True):
    # x-transformers' DynamicPositionBias.forward (generalised to q_len != k_len): the MLP on the
    # q_len + k_len - 1 distances, then an advanced-index gather of the (i, j) distance matrix
    # and a rearrange to (H, q, k).
    dev = ws[0].device
    d_min, d_max = -(k_len - 1), q_len - 1
    pos = torch.arange(d_min, d_max + 1, device=dev).to(ws[0].dtype)[:, None]
    if log_distance:
        pos = torch.sign(pos) * torch.log(pos.abs() + 1)
    for w, b in zip(ws[:-1], bs[:-1]):
        pos = torch.nn.functional.silu(torch.nn.functional.linear(pos, w, b))
    pos = torch.nn.functional.linear(pos, ws[-1], bs[-1])
    idx = torch.arange(q_len, device=dev)[:, None] - torch.arange(k_len, device=dev)[None, :] - d_min
    return pos[idx].permute(2, 0, 1)


def eager_fire(c, L, w1, b1, w2, b2, q_len, k_len, eps=1e-6):
    # The FIRE paper's reference code: the normalized distance matrix, then the MLP on every
    # (i, j) entry ((q, k, hidden) activations), permuted to (H, q, k).
    dev = c.device
    qp = torch.arange(q_len, device=dev, dtype=c.dtype)
    kp = torch.arange(k_len, device=dev, dtype=c.dtype)
    rel = torch.log(torch.abs(c * (qp[:, None] - kp[None, :])) + 1)
    norm = torch.log(torch.abs(c * torch.max(qp, torch.abs(L))) + 1) + eps
    x = (rel / norm[:, None])[..., None]
    h = torch.nn.functional.relu(torch.nn.functional.linear(x, w1, b1))
    return torch.nn.functional.linear(h, w2, b2).permute(2, 0, 1)


def eager_fgate(log_fgate, q_len):
    # x-transformers' data-dependent ALiBi / FoX: cumsum, broadcast subtraction, causal mask
    c = log_fgate.float().cumsum(-1)
    k_len = log_fgate.size(-1)
    bias = c[..., k_len - q_len:, None] - c[..., None, :]
    future = torch.ones(q_len, k_len, dtype=torch.bool, device=log_fgate.device).triu(k_len - q_len + 1)
    return bias.masked_fill(future, float("-inf")).to(log_fgate.dtype)


def eager_sinusoidal(positions, dim, dtype, base=10000.0):
    freq = base ** (-torch.arange(0, dim, 2, dtype=torch.float64, device=positions.device) / dim)
    ang = positions.double()[:, None] * freq[None]
    return torch.stack((ang.sin(), ang.cos()), dim=-1).reshape(len(positions), dim).to(dtype)


# ---- cases --------------------------------------------------------------------------------------

@dataclass
class Case:
    """One op call and what it is measured against."""
    fn: Callable[[], torch.Tensor]            # posenc forward
    inputs: List[torch.Tensor]                # differentiable inputs (empty: forward only)
    eager: Optional[Callable[[], torch.Tensor]]
    family: str                               # floors: "bias", "matmul", "clone" or "fill"
    out_shape: tuple
    nbytes: tuple                             # ideal bytes moved (fwd, bwd)
    out_fn: Optional[Callable[[torch.Tensor], torch.Tensor]] = None  # posenc forward into a buffer
    out_note: Optional[str] = None            # why a bias op has no out= row
    mm_shape: Optional[tuple] = None          # (B, H, L, D) of the matmul floor
    x: Optional[torch.Tensor] = None          # the activation cloned by the clone floor
    tril: bool = False                        # causal scores: compare on/below the diagonal only


@dataclass
class Variant:
    label: str
    build: Callable[..., Case]                # (dev, dtype, **size) -> Case
    eager_name: str
    goal: Optional[str] = None                # key of GOALS
    unsupported: Callable[[], Optional[str]] = lambda: None  # a reason, when posenc lacks it
    check_kw: dict = field(default_factory=dict)
    shape: Optional[Callable[[dict], str]] = None  # the shape label, when not the size's keys


def esize(dtype):
    return torch.empty((), dtype=dtype).element_size()


def bias_case(name, params, call, eager, H, Lq, Lk, dtype):
    op = getattr(ops, name)
    out_fn = (lambda buf: call(out=buf)) if accepts(op, "out") else None
    n = H * Lq * Lk * esize(dtype)
    return Case(fn=call, inputs=params, eager=eager, family="bias", out_shape=(H, Lq, Lk), nbytes=(n, n),
                out_fn=out_fn, out_note=None if out_fn else "out=: not supported")


def case_t5(dev, dtype, H, Lq, Lk):
    table = torch.randn(32, H, device=dev, dtype=dtype, requires_grad=True)
    return bias_case("t5_bias", [table], partial(ops.t5_bias, table, Lq, Lk),
                     lambda: eager_t5(table, Lq, Lk), H, Lq, Lk, dtype)


def case_alibi(dev, dtype, H, Lq, Lk, causal):
    slopes = ops.alibi_slopes(H, dtype=dtype, device=dev).requires_grad_()
    return bias_case("alibi_bias", [slopes], partial(ops.alibi_bias, slopes, Lq, Lk, causal=causal),
                     lambda: eager_alibi(slopes, Lq, Lk, causal), H, Lq, Lk, dtype)


def case_kerple(dev, dtype, H, Lq, Lk):
    r1 = (torch.rand(H, device=dev) + 0.5).to(dtype).requires_grad_()
    r2 = (torch.rand(H, device=dev) * 0.5 + 0.1).to(dtype).requires_grad_()
    return bias_case("kerple_bias", [r1, r2], partial(ops.kerple_bias, r1, r2, Lq, Lk, kind="log"),
                     lambda: eager_kerple(r1, r2, Lq, Lk), H, Lq, Lk, dtype)


def case_dpb(dev, dtype, H, Lq, Lk, dim=128, depth=2):
    ws, bs, d_in = [], [], 1
    for l in range(depth + 1):
        d_out = H if l == depth else dim
        lin = torch.nn.Linear(d_in, d_out)
        ws.append(lin.weight.detach().to(dev, dtype).requires_grad_())
        bs.append(lin.bias.detach().to(dev, dtype).requires_grad_())
        d_in = d_out
    return bias_case("dynamic_position_bias", ws + bs,
                     partial(ops.dynamic_position_bias, ws, bs, Lq, Lk, log_distance=True),
                     lambda: eager_dpb(ws, bs, Lq, Lk), H, Lq, Lk, dtype)


def case_fire(dev, dtype, H, Lq, Lk, hidden=32):
    l1, l2 = torch.nn.Linear(1, hidden), torch.nn.Linear(hidden, H)
    p = [torch.tensor(0.1), torch.tensor(float(Lq) / 2), l1.weight, l1.bias, l2.weight, l2.bias]
    p = [t.detach().to(dev, dtype).requires_grad_() for t in p]
    return bias_case("fire_bias", p, partial(ops.fire_bias, *p, Lq, Lk, causal=False),
                     lambda: eager_fire(*p, Lq, Lk), H, Lq, Lk, dtype)


def case_fgate(dev, dtype, B, H, Lq, Lk):
    lf = torch.nn.functional.logsigmoid(torch.randn(B, H, Lk, device=dev) + 2).to(dtype).requires_grad_()
    n = B * H * Lq * Lk * esize(dtype)
    return Case(fn=partial(ops.forgetting_gate_bias, lf, Lq, Lk - Lq), inputs=[lf],
                eager=lambda: eager_fgate(lf, Lq), family="bias", out_shape=(B, H, Lq, Lk),
                nbytes=(n, n), out_note="out=: not supported", tril=Lq == Lk)


def case_rel_pos(dev, dtype, B, H, L, D, mode, M=128):
    """mode "bidir": R = 2L - 1 both sides; "causal": R = 2L - 1, causal=True; "shaw": R = 2M + 1."""
    q = torch.randn(B, H, L, D, device=dev, dtype=dtype, requires_grad=True)
    R = 2 * M + 1 if mode == "shaw" else 2 * L - 1
    rel = (torch.randn(H, R, D, device=dev, dtype=dtype) / math.sqrt(D)).requires_grad_()
    if mode == "causal":
        fn, eager = (lambda: ops.rel_pos_scores(q, rel, causal=True)), (lambda: eager_rel_pos_causal(q, rel))
    elif mode == "shaw":
        fn, eager = (lambda: ops.rel_pos_scores(q, rel, max_distance=M)), (lambda: eager_shaw(q, rel, M))
    else:
        fn, eager = (lambda: ops.rel_pos_scores(q, rel)), (lambda: eager_rel_pos(q, rel))
    es = esize(dtype)
    small = (q.numel() + rel.numel()) * es
    out = B * H * L * L * es
    return Case(fn=fn, inputs=[q, rel], eager=eager, family="matmul", out_shape=(B, H, L, L),
                nbytes=(out + small, out + 2 * small), mm_shape=(B, H, L, D), tril=mode == "causal")


def eager_cope(q, k, pos_emb):
    """CoPE as the paper's listing (Golovneva et al. 2024, Fig. / appendix code): sigmoid of the
    scaled, causally masked logits, flip-cumsum-flip, clamp, ceil/floor gather of q @ e^T,
    linear interpolation. Future entries are not zeroed (the mask removes them)."""
    L, Lk, D = q.shape[-2], k.shape[-2], q.shape[-1]
    logits = (q @ k.transpose(-1, -2)) / math.sqrt(D)
    future = torch.ones(L, Lk, dtype=torch.bool, device=q.device).triu(1 + Lk - L)
    logits = logits.masked_fill(future, float("-inf"))
    gates = torch.sigmoid(logits)
    pos = gates.flip(-1).cumsum(dim=-1).flip(-1).clamp(max=pos_emb.shape[0] - 1)
    pos_ceil, pos_floor = pos.ceil().long(), pos.floor().long()
    logits_int = q @ pos_emb.t()
    w = pos - pos_floor
    return logits_int.gather(-1, pos_ceil) * w + logits_int.gather(-1, pos_floor) * (1 - w)


def case_cope(dev, dtype, B, H, L, D, P=None):
    P = L if P is None else P  # None: npos_max = L, no position is clamped
    q = torch.randn(B, H, L, D, device=dev, dtype=dtype, requires_grad=True)
    k = torch.randn(B, H, L, D, device=dev, dtype=dtype, requires_grad=True)
    e = (torch.randn(P, D, device=dev, dtype=dtype) / math.sqrt(D)).requires_grad_()
    es = esize(dtype)
    small = (q.numel() + k.numel() + e.numel()) * es
    out = B * H * L * L * es
    return Case(fn=lambda: ops.cope_scores(q, k, e), inputs=[q, k, e], eager=lambda: eager_cope(q, k, e),
                family="matmul", out_shape=(B, H, L, L), nbytes=(out + small, out + 2 * small),
                mm_shape=(B, H, L, D), tril=True)


def packed_cu_seqlens(total, dev, weights=(3, 2, 2, 1)):
    # 4 packed sequences of unequal lengths (3/8, 1/4, 1/4, 1/8 of the tokens)
    cuts = [total * sum(weights[:i]) // sum(weights) for i in range(len(weights) + 1)]
    return torch.tensor(cuts, dtype=torch.long, device=dev)


def case_rope(dev, dtype, B, H, S, D, layout="bhsd", interleaved=False, partial_rotary=False, xpos=False):
    shape = {"bhsd": (B, H, S, D), "bshd": (B, S, H, D), "thd": (B * S, H, D)}[layout]
    x = torch.randn(*shape, device=dev, dtype=dtype, requires_grad=True)
    R = D // 2 if partial_rotary else D
    inv_freq = ops.rope_inv_freq(R, device=dev)
    if layout == "thd":
        cu = packed_cu_seqlens(B * S, dev)
        fn = lambda: ops.rope(x, None, inv_freq, layout="thd", cu_seqlens=cu)  # noqa: E731
        eager = lambda: eager_rope_thd(x, inv_freq, cu)  # noqa: E731
    elif layout == "bshd":
        fn = lambda: ops.rope(x, None, inv_freq, layout="bshd")  # noqa: E731
        eager = lambda: eager_rope_bshd(x, inv_freq)  # noqa: E731
    elif interleaved:
        fn = lambda: ops.rope(x, None, inv_freq, interleaved=True)  # noqa: E731
        eager = lambda: eager_rope_interleaved(x, inv_freq)  # noqa: E731
    elif partial_rotary:
        fn = lambda: ops.rope(x, None, inv_freq)  # noqa: E731  (rotary_dim = 2 * len(inv_freq))
        eager = lambda: eager_rope_partial(x, inv_freq)  # noqa: E731
    elif xpos:
        zeta = (torch.arange(0, R, 2, device=dev, dtype=torch.float32) / R + 0.4) / 1.4
        fn = lambda: ops.rope(x, None, inv_freq, xpos_zeta=zeta, xpos_scale_base=512.0)  # noqa: E731
        eager = lambda: eager_rope_xpos(x, inv_freq, zeta, 512.0)  # noqa: E731
    else:
        fn, eager = (lambda: ops.rope(x, None, inv_freq)), (lambda: eager_rope(x, inv_freq))
    n = x.numel() * esize(dtype)
    return Case(fn=fn, inputs=[x], eager=eager, family="clone", out_shape=shape, nbytes=(2 * n, 2 * n), x=x)


def case_rope_exact(dev, dtype, B, H, S, D):
    # Exact precision (float64 inv_freq): fp64 angle reduced mod 2 pi, same memory traffic.
    x = torch.randn(B, H, S, D, device=dev, dtype=dtype, requires_grad=True)
    inv_freq = ops.rope_inv_freq(D, device=dev, dtype=torch.float64)
    n = x.numel() * esize(dtype)
    return Case(fn=lambda: ops.rope(x, None, inv_freq), inputs=[x], eager=lambda: eager_rope_exact(x, inv_freq),
                family="clone", out_shape=tuple(x.shape), nbytes=(2 * n, 2 * n), x=x)


def case_apply_rotary(dev, dtype, B, H, S, D):
    x = torch.randn(B, H, S, D, device=dev, dtype=dtype, requires_grad=True)
    cos, sin = hf_cos_sin(torch.arange(S, device=dev), ops.rope_inv_freq(D, device=dev), dtype)
    n = x.numel() * esize(dtype)
    return Case(fn=lambda: ops.apply_rotary_pos_emb(x, cos, sin), inputs=[x],
                eager=lambda: eager_apply_rotary(x, cos, sin), family="clone", out_shape=tuple(x.shape),
                nbytes=(2 * n, 2 * n), x=x)


def case_sinusoidal(dev, dtype, N, dim):
    positions = torch.arange(N, device=dev)
    n = N * dim * esize(dtype) + positions.numel() * 8
    return Case(fn=lambda: torch.ops.posenc.sinusoidal_table(positions, dim, 10000.0, True, dtype),
                inputs=[], eager=lambda: eager_sinusoidal(positions, dim, dtype), family="fill",
                out_shape=(N, dim), nbytes=(n, 0))


def _rel_causal_missing():
    return None if accepts(ops.rel_pos_scores, "causal") else "causal: not supported"


VARIANTS = {
    "t5_bias": [
        Variant("bidir", case_t5, "T5Attention.compute_bias: bucket matrix + embedding gather + permute", "bias"),
    ],
    "alibi_bias": [
        Variant("bidir", partial(case_alibi, causal=False), "-slope * |i - j| from arange", "bias"),
        Variant("causal", partial(case_alibi, causal=True), "-slope * (i - j) from arange", "bias"),
    ],
    "kerple_bias": [Variant("log", case_kerple, "-r1 * log1p(r2 * d) from a distance matrix (causal d)", "bias")],
    "dynamic_position_bias": [
        Variant("dim128 depth2 log", case_dpb,
                "x-transformers DynamicPositionBias: MLP on the 2L-1 distances + index gather + rearrange"),
    ],
    "fire_bias": [
        Variant("hidden32 bidir", case_fire,
                "FIRE paper code: normalized distance matrix + MLP on every (i, j) entry"),
    ],
    "forgetting_gate_bias": [
        Variant("causal", case_fgate, "cumsum + broadcast c_i - c_j + causal masked_fill (x-transformers)", "bias"),
    ],
    "rel_pos_scores": [
        Variant("bidir R=2L-1", partial(case_rel_pos, mode="bidir"),
                "TXL: q @ rel_emb.flip^T over 2L-1 distances + pad-and-reshape shift", "rel_bidir"),
        Variant("causal R=2L-1", partial(case_rel_pos, mode="causal"),
                "TXL as published: (L, L) product over distances L-1..0 + zero-pad _rel_shift (no mask)",
                "rel_causal", unsupported=_rel_causal_missing),
        Variant("Shaw R=257", partial(case_rel_pos, mode="shaw"),
                "Shaw: q @ rel_emb^T over 2M+1 clipped distances + gather", check_kw=dict(M=3)),
    ],
    "rope": [
        Variant("bhsd", case_rope, "HF Llama: cos/sin per call + rotate_half", "rope"),
        Variant("bshd", partial(case_rope, layout="bshd"), "HF on (B, S, H, D): tables unsqueezed over heads", "rope",
                shape=lambda s: f"B{s['B']} S{s['S']} H{s['H']} D{s['D']}"),
        Variant("thd", partial(case_rope, layout="thd"), "HF on packed (T, H, D), 4 seqs: position_ids from cu_seqlens",
                "rope", shape=lambda s: f"T{s['B'] * s['S']} H{s['H']} D{s['D']} 4 seqs"),
        Variant("interleaved", partial(case_rope, interleaved=True),
                "GPT-J: repeat_interleave'd cos/sin + rotate_every_two", "rope"),
        Variant("partial R=D/2", partial(case_rope, partial_rotary=True),
                "GPT-NeoX partial rotary: rotate D/2 dims + cat", "rope"),
        Variant("xpos", partial(case_rope, xpos=True),
                "HF rotary with xPos zeta**(pos/512) folded into cos/sin", "rope"),
    ],
    "rope_exact": [Variant("bhsd fp64 freq", case_rope_exact, "fp64 angle tables + rotate_half", "rope")],
    "apply_rotary_pos_emb": [Variant("bhsd", case_apply_rotary, "x * cos + rotate_half(x) * sin (given tables)")],
    "sinusoidal_table": [Variant("interleaved", case_sinusoidal, "fp64 outer product, sin/cos stacked")],
    "cope_scores": [
        Variant("P=64", partial(case_cope, P=64),
                "CoPE paper listing: sigmoid(masked q k^T / sqrt(D)), flip-cumsum-flip, clamp, gather of q e^T, lerp",
                shape=lambda s: f"B{s['B']} H{s['H']} L{s['L']} D{s['D']} P64", check_kw=dict(P=3)),
        Variant("P=L", partial(case_cope, P=None),
                "the same with npos_max = L (no clamping: every gate computed)",
                shape=lambda s: f"B{s['B']} H{s['H']} L{s['L']} D{s['D']} P{s['L']}"),
    ],
}

CPU_SIZES = {  # the sizes of issue 10
    "t5_bias": [dict(H=12, Lq=2048, Lk=2048), dict(H=12, Lq=4096, Lk=4096)],
    "alibi_bias": [dict(H=12, Lq=2048, Lk=2048), dict(H=12, Lq=4096, Lk=4096)],
    "kerple_bias": [dict(H=12, Lq=2048, Lk=2048), dict(H=12, Lq=4096, Lk=4096)],
    "dynamic_position_bias": [dict(H=12, Lq=2048, Lk=2048), dict(H=12, Lq=4096, Lk=4096)],
    "fire_bias": [dict(H=12, Lq=1024, Lk=1024), dict(H=12, Lq=2048, Lk=2048)],
    "forgetting_gate_bias": [dict(B=1, H=12, Lq=2048, Lk=2048), dict(B=1, H=12, Lq=1, Lk=4096)],
    "rel_pos_scores": [dict(B=4, H=8, L=1024, D=64)],
    "rope": [dict(B=4, H=32, S=2048, D=128)],
    "rope_exact": [dict(B=4, H=32, S=2048, D=128)],
    "apply_rotary_pos_emb": [dict(B=4, H=32, S=2048, D=128)],
    "sinusoidal_table": [dict(N=16384, dim=1024)],
    "cope_scores": [dict(B=4, H=8, L=1024, D=64)],
}
SIZES = {  # realistic GPU sizes
    "rope": [dict(B=8, H=16, S=2048, D=128), dict(B=1, H=32, S=8192, D=128)],
    "rope_exact": [dict(B=8, H=16, S=2048, D=128)],
    "apply_rotary_pos_emb": [dict(B=8, H=16, S=2048, D=128)],
    "rel_pos_scores": [dict(B=8, H=16, L=2048, D=128), dict(B=2, H=16, L=1024, D=64)],
    "t5_bias": [dict(H=16, Lq=4096, Lk=4096), dict(H=16, Lq=1, Lk=4096)],
    "alibi_bias": [dict(H=16, Lq=4096, Lk=4096), dict(H=16, Lq=1, Lk=4096)],
    "kerple_bias": [dict(H=16, Lq=4096, Lk=4096), dict(H=16, Lq=1, Lk=4096)],
    "dynamic_position_bias": [dict(H=16, Lq=4096, Lk=4096), dict(H=16, Lq=1, Lk=4096)],
    "fire_bias": [dict(H=16, Lq=4096, Lk=4096), dict(H=16, Lq=1, Lk=4096)],
    "forgetting_gate_bias": [dict(B=2, H=16, Lq=4096, Lk=4096), dict(B=8, H=16, Lq=1, Lk=4096)],
    "sinusoidal_table": [dict(N=32768, dim=1024)],
    "cope_scores": [dict(B=8, H=16, L=2048, D=128)],
}
QUICK_SIZES = {  # a smoke run
    "rope": [dict(B=1, H=4, S=256, D=64)],
    "rope_exact": [dict(B=1, H=4, S=256, D=64)],
    "apply_rotary_pos_emb": [dict(B=1, H=4, S=256, D=64)],
    "rel_pos_scores": [dict(B=1, H=2, L=128, D=32)],
    "t5_bias": [dict(H=4, Lq=256, Lk=256)],
    "alibi_bias": [dict(H=4, Lq=256, Lk=256)],
    "kerple_bias": [dict(H=4, Lq=256, Lk=256)],
    "dynamic_position_bias": [dict(H=4, Lq=256, Lk=256)],
    "fire_bias": [dict(H=4, Lq=256, Lk=256)],
    "forgetting_gate_bias": [dict(B=1, H=4, Lq=256, Lk=256)],
    "sinusoidal_table": [dict(N=1024, dim=64)],
    "cope_scores": [dict(B=1, H=2, L=128, D=32)],
}
CHECK_SIZES = {  # the eager == op check (fp32)
    "rope": dict(B=2, H=3, S=17, D=8),
    "rope_exact": dict(B=2, H=3, S=17, D=8),
    "apply_rotary_pos_emb": dict(B=2, H=3, S=17, D=8),
    "rel_pos_scores": dict(B=2, H=3, L=9, D=4),
    "t5_bias": dict(H=3, Lq=150, Lk=170),
    "alibi_bias": dict(H=5, Lq=9, Lk=13),
    "kerple_bias": dict(H=3, Lq=9, Lk=13),
    "dynamic_position_bias": dict(H=3, Lq=9, Lk=13),
    "fire_bias": dict(H=3, Lq=9, Lk=13),
    "forgetting_gate_bias": dict(B=2, H=3, Lq=11, Lk=11),
    "sinusoidal_table": dict(N=50, dim=16),
    "cope_scores": dict(B=2, H=3, L=9, D=4),
}


def size_label(size):
    s = dict(size)
    if s.get("Lq") is not None and s.get("Lq") == s.get("Lk"):
        s["L"] = s.pop("Lq")
        s.pop("Lk")
    return " ".join(f"{k}{v}" for k, v in s.items())


# ---- timing -------------------------------------------------------------------------------------

class Timer:
    def __init__(self, device, target_s, min_reps, max_reps, budget_s):
        self.cuda = device.type == "cuda"
        self.target_s, self.min_reps, self.max_reps, self.budget_s = target_s, min_reps, max_reps, budget_s

    def once(self, fn):
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end)
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3

    def measure(self, fn):
        """(median ms, repetitions). Warm-up calls size the repetitions; slow calls get fewer."""
        budget_ms = self.budget_s * 1e3
        warm = self.once(fn)
        if warm >= budget_ms:
            return warm, 1  # one call is all the budget allows: the warm-up is the measurement
        if warm < budget_ms / 10:
            warm = self.once(fn)  # a second warm-up: the first may pay one-off costs
        reps = max(self.min_reps, min(self.max_reps, round(self.target_s * 1e3 / max(warm, 1e-3))))
        reps = max(1, min(reps, int(budget_ms / max(warm, 1e-3))))
        return statistics.median(self.once(fn) for _ in range(reps)), reps


def no_grad_fn(fn):
    def run():
        with torch.no_grad():
            return fn()
    return run


def direction_fn(make_out, inputs, direction, grad):
    """The callable timed for a direction: fresh forward, backward from a retained graph, both."""
    if direction == "fwd":
        return no_grad_fn(make_out)
    if direction == "bwd":
        out = make_out()
        return lambda: torch.autograd.grad(out, inputs, grad, retain_graph=True)
    if direction == "fwd+bwd":
        return lambda: torch.autograd.grad(make_out(), inputs, grad)
    raise ValueError(direction)


def directions(case):
    dirs = ["fwd"]
    if case.family == "bias":
        dirs.append("fwd out=")
    if case.inputs:
        dirs += ["bwd", "fwd+bwd"]
    return dirs


FLOOR_OF = {  # the floor a (family, direction) row is compared with
    "bias": {"fwd": "fill", "fwd out=": "copy_", "bwd": "sum", "fwd+bwd": "fill+sum"},
    "matmul": {"fwd": "matmul", "bwd": "matmul bwd", "fwd+bwd": "matmul f+b"},
    "clone": {"fwd": "clone", "bwd": "clone(grad)", "fwd+bwd": "2 clones"},
    "fill": {"fwd": "fill"},
}


def floor_fn(name, case, grad, dtype, dev):
    shape = case.out_shape
    fresh = lambda: torch.empty(shape, dtype=dtype, device=dev).fill_(1)  # noqa: E731
    if name == "fill":
        return fresh
    if name == "copy_":
        src = torch.empty(shape, dtype=dtype, device=dev).fill_(0.5)
        dst = torch.zeros(shape, dtype=dtype, device=dev)
        return lambda: dst.copy_(src)
    if name == "sum":
        return lambda: grad.sum(dim=(1, 2))
    if name == "fill+sum":
        return lambda: (fresh(), grad.sum(dim=(1, 2)))
    if name.startswith("matmul"):
        q, k = (torch.randn(case.mm_shape, dtype=dtype, device=dev, requires_grad=True) for _ in range(2))
        direction = {"matmul": "fwd", "matmul bwd": "bwd", "matmul f+b": "fwd+bwd"}[name]
        return direction_fn(lambda: q @ k.transpose(-1, -2), [q, k], direction, grad)
    x = case.x.detach()
    if name == "clone":
        return lambda: x.clone()
    if name == "clone(grad)":
        return lambda: grad.clone()
    if name == "2 clones":
        return lambda: (x.clone(), grad.clone())
    raise ValueError(name)


class Floors:
    """Floor times per (name, size, dtype, threads), measured once and shared by the cases."""

    def __init__(self, timer, dev):
        self.timer, self.dev, self.ms = timer, dev, {}

    def get(self, name, case, grad, dtype, threads):
        size = math.prod(case.out_shape) if case.family == "clone" else (tuple(case.out_shape), case.mm_shape)
        key = (name, size, dtype, threads)
        if key not in self.ms:
            try:
                fn = floor_fn(name, case, grad, dtype, self.dev)
                self.ms[key] = self.timer.measure(fn)[0]
            except Exception as e:  # noqa: BLE001
                self.ms[key] = "error: " + short_error(e)
            fn = None  # frees the floor's buffers
        return self.ms[key]


def short_error(e):
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if "Could not run" in msg:
        return "no kernel for this device"
    return msg[:80]


def _free(dev):
    gc.collect()  # between cases only: a collection costs ~0.1 s with torch loaded
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


# ---- check: eager == op -------------------------------------------------------------------------

def _close(a, b, tol):
    if a.shape != b.shape:
        return f"shape {tuple(a.shape)} vs {tuple(b.shape)}"
    if not torch.allclose(a, b, rtol=tol, atol=tol):
        return f"max abs diff {(a - b).abs().max().item():.2e}"
    return None


def check(op, variant, dev):
    """The eager composition gives the op's numbers (fp32, small size), forward and backward;
    the out= form, where there is one, gives the forward's numbers."""
    reason = variant.unsupported()
    if reason:
        return reason
    torch.manual_seed(0)
    case = variant.build(dev, torch.float32, **CHECK_SIZES[op], **variant.check_kw)
    a, b = case.fn(), case.eager()
    keep = (lambda t: t.tril()) if case.tril else (lambda t: t)  # noqa: E731
    bad = _close(keep(a), keep(b), 1e-4)
    if bad:
        return "forward mismatch: " + bad
    if case.inputs:
        g = keep(torch.randn_like(a))
        for x, y in zip(torch.autograd.grad(a, case.inputs, g), torch.autograd.grad(b, case.inputs, g)):
            bad = _close(x, y, 1e-3)
            if bad:
                return "backward mismatch: " + bad
    if case.out_fn is not None:
        with torch.no_grad():
            buf = torch.full(case.out_shape, float("nan"), device=dev)
            try:
                res = case.out_fn(buf)
            except Exception as e:  # noqa: BLE001
                return "ok; out=: error: " + short_error(e)
            bad = _close(buf, case.fn(), 1e-6) or (None if res.data_ptr() == buf.data_ptr() else "not returned")
        if bad:
            return "out= mismatch: " + bad
    return "ok"


# ---- goals (issue 10: CPU, fp32, 2 threads) -----------------------------------------------------

# (goal family, direction) -> (text, [(part, bound on posenc ms from the row)])
GOALS = {
    ("bias", "fwd"): ("<= fill, >= 3x eager",
                      [("fill", lambda r: r["floor_ms"]), ("eager", lambda r: r["eager_ms"] / 3)]),
    ("bias", "bwd"): (">= 0.8x sum speed", [("sum", lambda r: r["floor_ms"] / 0.8)]),
    ("rel_causal", "fwd"): ("<= 1.2x matmul, >= 1.5x eager",
                            [("matmul", lambda r: 1.2 * r["floor_ms"]), ("eager", lambda r: r["eager_ms"] / 1.5)]),
    ("rel_bidir", "fwd"): ("<= 2.2x matmul, >= 1x eager",
                           [("matmul", lambda r: 2.2 * r["floor_ms"]), ("eager", lambda r: r["eager_ms"])]),
    ("rel_causal", "fwd+bwd"): ("<= 1.5x matmul f+b", [("matmul f+b", lambda r: 1.5 * r["floor_ms"])]),
    ("rope", "fwd"): (">= 0.9x clone speed, >= 4x eager",
                      [("clone", lambda r: r["floor_ms"] / 0.9), ("eager", lambda r: r["eager_ms"] / 4)]),
    ("rope", "bwd"): (">= 0.9x clone speed, >= 4x eager",
                      [("clone", lambda r: r["floor_ms"] / 0.9), ("eager", lambda r: r["eager_ms"] / 4)]),
}
GOAL_THREADS = 2
SCALING_GOAL = 1.7


def evaluate_goal(row, goal_key):
    """Fill row["goal"] (text + verdict), row["goal_met"], row["goal_by"] for a goal row."""
    spec = GOALS.get((goal_key, row["dir"]))
    if spec is None:
        return
    text, parts = spec
    row["goal"] = text
    if row.get("posenc_ms") is None:
        row["goal_met"], row["goal_status"] = False, "NOT met (" + (row.get("note") or "posenc error") + ")"
        return
    bounds, missing = [], []
    for part, bound in parts:
        try:
            bounds.append((bound(row), part))
        except (KeyError, TypeError):
            missing.append(part)
    if not bounds:
        row["goal_met"], row["goal_status"] = None, "n/a (" + ", ".join(missing) + " missing)"
        return
    allowed, part = min(bounds)
    by = row["posenc_ms"] / allowed
    row["goal_met"], row["goal_by"], row["goal_vs"] = by <= 1.0, by, part
    status = "met" if by <= 1.0 else f"NOT met (by {by:.2f}x vs {part})"
    if missing:
        status += " [" + ", ".join(missing) + " n/a]"
    row["goal_status"] = status


# ---- running ------------------------------------------------------------------------------------

def run_variant(op, variant, size, dtype, dev, threads_list, timer, floors, args, goals_on):
    shape = variant.shape(size) if variant.shape else size_label(size)
    base = dict(op=op, variant=variant.label, shape=shape, size=size, dtype=DTYPE_NAMES[dtype],
                eager_name=variant.eager_name)
    reason = variant.unsupported()
    if reason:
        rows = [dict(base, threads=t, dir=d, note=reason) for t in threads_list for d in ("fwd", "bwd", "fwd+bwd")]
        for r in rows:
            if goals_on(r):
                evaluate_goal(r, variant.goal)
        return rows
    try:
        torch.manual_seed(0)
        case = variant.build(dev, dtype, **size)
        grad = torch.randn(case.out_shape, dtype=dtype, device=dev) if case.inputs else None
    except Exception as e:  # noqa: BLE001  (report and go on: e.g. out of memory)
        return [dict(base, threads=t, dir="fwd", error=short_error(e)) for t in threads_list]
    skip_eager = args.skip_eager_above is not None and math.prod(case.out_shape) > args.skip_eager_above
    rows = []
    for threads in threads_list:
        if threads:
            torch.set_num_threads(threads)
        fill = floors.get("fill", case, grad, dtype, threads)
        copy = floors.get("copy_", case, grad, dtype, threads)
        for d in directions(case):
            nbytes = {"bwd": case.nbytes[1], "fwd+bwd": sum(case.nbytes)}.get(d, case.nbytes[0])
            row = dict(base, threads=threads, dir=d, bytes=nbytes, fill_ms=fill, copy_ms=copy)
            rows.append(row)
            if d == "fwd out=" and case.out_fn is None:
                row["note"] = case.out_note
                continue
            try:
                if d == "fwd out=":
                    buf = torch.empty(case.out_shape, dtype=dtype, device=dev)
                    f = no_grad_fn(partial(case.out_fn, buf))
                else:
                    f = direction_fn(case.fn, case.inputs, d, grad)
                row["posenc_ms"], row["posenc_reps"] = timer.measure(f)
            except Exception as exc:  # noqa: BLE001
                row["error"] = short_error(exc)
            f = buf = None  # drop the retained graph / buffer before the next measurement
            row["floor"] = FLOOR_OF[case.family][d]
            row["floor_ms"] = floors.get(row["floor"], case, grad, dtype, threads)
            if d != "fwd out=" and case.eager is not None:
                if skip_eager:
                    row["eager_error"] = "skipped"
                else:
                    try:
                        e = direction_fn(case.eager, case.inputs, d, grad)
                        row["eager_ms"], row["eager_reps"] = timer.measure(e)
                    except Exception as exc:  # noqa: BLE001
                        row["eager_error"] = short_error(exc)
                    e = None
            for k in ("fill_ms", "copy_ms", "floor_ms"):
                if isinstance(row.get(k), str):
                    row[k + "_error"] = row.pop(k)
            if goals_on(row):
                evaluate_goal(row, variant.goal)
    add_scaling(rows, args.scaling_goal_on)
    case = grad = None
    _free(dev)
    return rows


def add_scaling(rows, goal_on):
    """2T/1T: posenc's time at 1 thread over its time at the most threads, on the latter's row."""
    by_key = {(r["threads"], r["dir"]): r for r in rows}
    top = max((r["threads"] or 0) for r in rows)
    if top <= 1:
        return
    for r in rows:
        one = by_key.get((1, r["dir"]))
        if r["threads"] == top and one and r.get("posenc_ms") and one.get("posenc_ms"):
            r["scaling"] = one["posenc_ms"] / r["posenc_ms"]
            if goal_on and r["dtype"] == "fp32" and top == GOAL_THREADS:
                r["scaling_met"] = r["scaling"] >= SCALING_GOAL


# ---- report -------------------------------------------------------------------------------------

COLUMNS = ["op", "variant", "shape", "dtype", "thr", "dir", "posenc ms", "fill ms", "copy_ ms", "floor",
           "floor ms", "posenc/floor", "eager ms", "eager/posenc", "2T/1T", "goal"]


def fmt_ms(v):
    if v is None:
        return ""
    if isinstance(v, str):
        return v
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}" if v >= 10 else f"{v:.2f}" if v >= 1 else f"{v:.3f}"


def cells(row):
    p = row.get("posenc_ms")
    if p is None:
        posenc = row.get("note") or ("error: " + row["error"] if "error" in row else "")
    else:
        posenc = fmt_ms(p)
    floor_ms = row.get("floor_ms")
    eager = row.get("eager_ms")
    if "scaling" in row:
        scaling = f"{row['scaling']:.2f}"
        if "scaling_met" in row:
            scaling += "" if row["scaling_met"] else f" (<{SCALING_GOAL})"
    else:
        scaling = ""
    goal = "-"
    if "goal" in row:
        goal = f"{row['goal']}: {row['goal_status']}"
    return [
        row["op"], row["variant"], row["shape"], row["dtype"], str(row["threads"] or "-"), row["dir"], posenc,
        fmt_ms(row.get("fill_ms", row.get("fill_ms_error"))), fmt_ms(row.get("copy_ms", row.get("copy_ms_error"))),
        row.get("floor", ""), fmt_ms(floor_ms if floor_ms is not None else row.get("floor_ms_error")),
        f"{p / floor_ms:.2f}" if p and floor_ms else "",
        fmt_ms(eager) if eager is not None else (row.get("eager_error", "") if row.get("dir") != "fwd out=" else ""),
        f"{eager / p:.2f}x" if p and eager else "",
        scaling, goal,
    ]


def table_text(rows, header=True):
    data = [COLUMNS] + [cells(r) for r in rows]
    widths = [max(len(str(r[i])) for r in data) for i in range(len(COLUMNS))]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip() for r in data]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines if header else lines[2:])


def table_markdown(rows):
    out = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in cells(r)) + " |" for r in rows]
    return "\n".join(out)


def sections(rows):
    """Rows grouped by (dtype, threads): the goal pass (fp32, 2 threads) first."""
    keys = []
    for r in rows:
        k = (r["dtype"], r["threads"])
        if k not in keys:
            keys.append(k)
    keys.sort(key=lambda k: (k != ("fp32", GOAL_THREADS), k[0] != "fp32", -(k[1] or 0)))
    return [(k, [r for r in rows if (r["dtype"], r["threads"]) == k]) for k in keys]


def legend_lines(selected):
    lines = ["eager compositions (checked against the op first):"]
    for op, variants in selected.items():
        for v in variants:
            lines.append(f"  {op} {v.label}: {v.eager_name}")
    return lines


def goal_summary(rows):
    goal_rows = [r for r in rows if "goal" in r]
    scal = [r for r in rows if "scaling_met" in r]
    lines = []
    if goal_rows:
        met = sum(1 for r in goal_rows if r.get("goal_met"))
        lines.append(f"goals (CPU, fp32, {GOAL_THREADS} threads): {met}/{len(goal_rows)} met")
        for r in goal_rows:
            if not r.get("goal_met"):
                lines.append(f"  {r['op']} {r['variant']} {r['shape']} {r['dir']}: {r['goal']}: {r['goal_status']}")
    if scal:
        met = sum(1 for r in scal if r["scaling_met"])
        lines.append(f"2T/1T >= {SCALING_GOAL}x (fp32, default sizes): {met}/{len(scal)} met")
        for r in scal:
            if not r["scaling_met"]:
                lines.append(f"  {r['op']} {r['variant']} {r['shape']} {r['dir']}: {r['scaling']:.2f}x")
    return lines


def cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _loadavg():
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def parse_list(text, conv, what, p):
    try:
        return [conv(v.strip()) for v in text.split(",") if v.strip()]
    except (KeyError, ValueError):
        p.error(f"bad {what} list {text!r}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtypes", "--dtype", dest="dtypes", default=None,
                   help="comma-separated, of " + ", ".join(DTYPES) + " (default: fp32,bf16 on CPU, bf16 on CUDA)")
    p.add_argument("--threads", default=None,
                   help="CPU: comma-separated torch.set_num_threads values, one pass each (default 1,2)")
    p.add_argument("--ops", default=",".join(VARIANTS),
                   help="comma-separated ops or op:variant (variant label prefix), of: " + ", ".join(VARIANTS))
    p.add_argument("--quick", action="store_true", help="small sizes, short timing (smoke run)")
    p.add_argument("--target-s", type=float, default=None, help="time per measurement (s; default 0.25, quick 0.01)")
    p.add_argument("--min-reps", type=int, default=3)
    p.add_argument("--max-reps", type=int, default=None, help="default 50, quick 20")
    p.add_argument("--budget-s", type=float, default=None,
                   help="at most about this long per measurement: slower calls get fewer repetitions, "
                        "a call slower than it only its warm-up (default 2, quick 0.25)")
    p.add_argument("--skip-eager-above", type=int, default=None, metavar="N",
                   help="skip the eager compositions for outputs of more than N elements")
    p.add_argument("--json", type=Path, help="write the rows and the environment as JSON")
    p.add_argument("--markdown", type=Path, help="write the table as Markdown")
    p.add_argument("--no-check", action="store_true", help="skip the eager == op check")
    args = p.parse_args(argv)

    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but no CUDA device is available")
    cpu = dev.type == "cpu"
    dtypes = parse_list(args.dtypes or ("fp32,bf16" if cpu else "bf16"), lambda s: DTYPES[s], "dtype", p)
    threads_list = parse_list(args.threads or "1,2", int, "threads", p) if cpu else [None]
    if any(t is not None and t < 1 for t in threads_list):
        p.error("--threads must be >= 1")
    selected = {}
    for item in (s.strip() for s in args.ops.split(",") if s.strip()):
        op, _, var = item.partition(":")
        if op not in VARIANTS:
            p.error(f"unknown op {op!r}; choose from {list(VARIANTS)}")
        chosen = [v for v in VARIANTS[op] if v.label.startswith(var)] if var else VARIANTS[op]
        if not chosen:
            p.error(f"{op} has no variant {var!r}; choose from {[v.label for v in VARIANTS[op]]}")
        selected.setdefault(op, [])
        selected[op] += [v for v in chosen if v not in selected[op]]
    sizes = QUICK_SIZES if args.quick else CPU_SIZES if cpu else SIZES
    target_s = args.target_s if args.target_s is not None else (0.01 if args.quick else 0.25)
    budget_s = args.budget_s if args.budget_s is not None else (0.25 if args.quick else 2.0)
    max_reps = args.max_reps if args.max_reps is not None else (20 if args.quick else 50)
    timer = Timer(dev, target_s, args.min_reps, max_reps, budget_s)
    floors = Floors(timer, dev)
    args.scaling_goal_on = cpu and not args.quick

    def goals_on(row):
        return cpu and row["dtype"] == "fp32" and row["threads"] == GOAL_THREADS

    default_threads = torch.get_num_threads()
    env = dict(
        torch=torch.__version__, cuda=torch.version.cuda, posenc=posenc.__version__, python=platform.python_version(),
        device=torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_model(),
        cpu_model=cpu_model(), cores=os.cpu_count(),
        cores_available=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        cpu_capability=torch.backends.cpu.get_cpu_capability(), torch_threads_default=default_threads,
        threads=threads_list, dtypes=[DTYPE_NAMES[d] for d in dtypes], quick=args.quick,
        target_s=target_s, min_reps=args.min_reps, max_reps=max_reps, budget_s=budget_s,
        skip_eager_above=args.skip_eager_above, loadavg_start=_loadavg(),
    )
    print("posenc bench:", ", ".join(f"{k}={v}" for k, v in env.items()), flush=True)

    checks = {}
    if not args.no_check:
        for op, variants in selected.items():
            for v in variants:
                try:
                    checks[f"{op} {v.label}"] = check(op, v, dev)
                except Exception as e:  # noqa: BLE001
                    checks[f"{op} {v.label}"] = "error: " + short_error(e)
        print("eager == op (fp32, small):", "; ".join(f"{k}: {v}" for k, v in checks.items()), flush=True)

    rows = []
    t0 = time.perf_counter()
    try:
        for op, variants in selected.items():
            for v in variants:
                for size in sizes[op]:
                    for dtype in dtypes:
                        t1 = time.perf_counter()
                        new = run_variant(op, v, size, dtype, dev, threads_list, timer, floors, args, goals_on)
                        rows += new
                        print(table_text(new, header=not rows[: -len(new)]), f"  [{time.perf_counter() - t1:.1f} s]",
                              flush=True)
    finally:
        torch.set_num_threads(default_threads)
    elapsed = time.perf_counter() - t0
    env["elapsed_s"], env["loadavg_end"] = round(elapsed, 1), _loadavg()
    if cpu and max(env["loadavg_start"] or 0, env["loadavg_end"] or 0) > 0.5 * env["cores_available"]:
        print(f"\nwarning: load average {env['loadavg_start']} -> {env['loadavg_end']} on "
              f"{env['cores_available']} cores: other work competed for the CPU; multi-thread times are unreliable")

    print(f"\n{len(rows)} rows in {elapsed:.1f} s")
    for (dt, th), group in sections(rows):
        print(f"\n### {dt}, {th or '-'} thread(s)\n")
        print(table_text(group))
    notes = legend_lines(selected) + [
        "floors: fill = fresh empty().fill_(1) of the output; copy_ = into a preallocated buffer (out= floor); "
        "sum = grad.sum(dim=(1, 2)); matmul = q @ k^T of the same shape; clone = x.clone() / grad.clone().",
        "posenc/floor: time ratio (1.00 = floor speed); eager/posenc: speed-up over eager; 2T/1T: 1-thread time / "
        f"{GOAL_THREADS}-thread time.",
    ]
    summary = goal_summary(rows)
    print("\n" + "\n".join(notes + [""] + summary))

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(dict(env=env, checks=checks, rows=rows), indent=1, default=str))
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        head = (f"posenc ops benchmark — {env['device']} ({env['cores']} cores, {env['cpu_capability']}), "
                f"torch {env['torch']}, {elapsed:.0f} s\n\n" if cpu else
                f"posenc ops benchmark — {env['device']}, torch {env['torch']}, CUDA {env['cuda']}\n\n")
        chk = "; ".join(f"{k}: {v}" for k, v in checks.items())
        chk = f"eager == op check (fp32): {chk}\n\n" if checks else ""
        body = "".join(f"### {dt}, {th or '-'} thread(s)\n\n{table_markdown(g)}\n\n" for (dt, th), g in sections(rows))
        tail = "\n".join("- " + line.strip() if line.startswith("  ") else line for line in notes + [""] + summary)
        args.markdown.write_text(head + chk + body + tail + "\n")
    # a composition that disagrees with the op makes the comparison meaningless: fail loudly
    return 1 if any("mismatch" in v for v in checks.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
