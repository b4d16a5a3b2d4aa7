"""Calls of every differentiable posenc op (and the modules without an op of their own), shared
by test_determinism.py and test_concurrency.py.

A case builds its inputs from a seed and returns the forward outputs and the gradients of
``sum(out * g)`` (``g`` fixed random upstream gradients) for every leaf: one flat list of
tensors, which two runs must reproduce bit for bit (``torch.equal``).

``big=True`` shapes make every CPU kernel split its work over two threads. The grain sizes
(``at::parallel_for`` in csrc/ops/cpu) they are sized against:

* bias ops (ALiBi, T5, KERPLE) forward: ``heads * q_len`` rows, grain ``64 KiB / (k_len * 4)``
  = 16 rows at k_len 1024 (fp32): 2048 rows; backward: one task per (head, block of 64
  rows): 4 x 8 = 32 tasks, grain 1. KERPLE's tables: ``heads * (q_len + k_len - 1)`` = 6140
  entries, grain 2048.
* rel_pos_scores: ``batch * heads * row tiles`` tasks, grain 1; backward ``heads * ...``.
* rope: tasks of a block of positions and a range of heads, grain ``64K / task elements``:
  (2, 8, 512, 64) gives 4 blocks of 128 positions and, with 2 threads, 2 head ranges (the
  split depends on the thread count and must not change a value); apply_rotary_pos_emb:
  ``B * H * S`` = 8192 rows, grain 512; its backward S = 512 table rows, grain 32.
* sinusoidal_table: 4096 rows of dim 64, grain 512.
* relative_attention: ``batch * heads`` (x query blocks) tasks, grain 1.
"""
from typing import Callable, Dict, List, NamedTuple

import torch

from posenc import nn as pnn
from posenc import ops


class Case(NamedTuple):
    name: str
    run: Callable[[str, int, bool], List[torch.Tensor]]  # (device, seed, big) -> tensors


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(g: torch.Generator, *shape, device: str = "cpu", dtype=torch.float32, grad=True):
    t = torch.randn(*shape, generator=g, dtype=dtype).to(device)
    return t.requires_grad_(grad)


def _finish(outs: List[torch.Tensor], leaves: List[torch.Tensor], g: torch.Generator) -> List[torch.Tensor]:
    """Forward outputs + gradients of sum(out * upstream) for every leaf (None -> zeros)."""
    diff = [o for o in outs if o.requires_grad]
    ups = [torch.randn(o.shape, generator=g, dtype=torch.float64).to(o.device, o.dtype) for o in diff]
    grads = torch.autograd.grad(diff, leaves, ups, allow_unused=True) if diff else []
    res = [o.detach() for o in outs]
    for leaf, gr in zip(leaves, grads):
        res.append(torch.zeros_like(leaf) if gr is None else gr)
    return res


def _bias_lengths(big: bool):
    return (512, 1024) if big else (64, 96)


def _alibi(causal: bool):
    def run(device, seed, big):
        g = _gen(seed)
        slopes = (torch.rand(4, generator=g) * 0.5 + 0.01).to(device).requires_grad_()
        q_len, k_len = _bias_lengths(big)
        out = ops.alibi_bias(slopes, q_len, k_len, q_offset=k_len - q_len + 3, k_offset=0, causal=causal)
        return _finish([out], [slopes], g)

    return run


def _t5(bidirectional: bool):
    def run(device, seed, big):
        g = _gen(seed)
        table = _randn(g, 32, 4, device=device)
        q_len, k_len = _bias_lengths(big)
        out = ops.t5_bias(table, q_len, k_len, q_offset=k_len - q_len, k_offset=0,
                          bidirectional=bidirectional, max_distance=128)
        return _finish([out], [table], g)

    return run


def _kerple(kind: str, causal: bool):
    def run(device, seed, big):
        g = _gen(seed)
        r1 = (torch.rand(4, generator=g) + 0.1).to(device).requires_grad_()
        r2 = (torch.rand(4, generator=g) * 1.5 + 0.1).to(device).requires_grad_()
        q_len, k_len = _bias_lengths(big)
        out = ops.kerple_bias(r1, r2, q_len, k_len, q_offset=k_len - q_len, k_offset=0,
                              kind=kind, causal=causal)
        return _finish([out], [r1, r2], g)

    return run


def _rel_pos(causal: bool, max_distance):
    def run(device, seed, big):
        g = _gen(seed)
        b, h, lq, d = (2, 4, 256, 32) if big else (1, 2, 24, 8)
        k_len = lq + 16
        c = k_len + 8
        q = _randn(g, b, h, lq, d, device=device)
        rel = _randn(g, h, 2 * c + 1, d, device=device)
        out = ops.rel_pos_scores(q, rel, q_offset=16, k_offset=0, k_len=k_len,
                                 max_distance=max_distance, causal=causal)
        return _finish([out], [q, rel], g)

    return run


def _rope(layout: str, interleaved=False, partial=False, xpos=False, positions=None):
    def run(device, seed, big):
        g = _gen(seed)
        b, h, s, d = (2, 8, 512, 64) if big else (1, 2, 20, 16)
        rot = d // 2 if partial else d
        inv = ops.rope_inv_freq(rot, 10000.0, device=torch.device(device))
        cu = None
        pos = None
        if layout == "bhsd":
            x = _randn(g, b, h, s, d, device=device)
        elif layout == "bshd":
            x = _randn(g, b, s, h, d, device=device)
        else:
            x = _randn(g, b * s, h, d, device=device)
            cu = torch.tensor([0, s // 3, s, b * s], device=device)
        if positions == "batched":
            pos = torch.randint(0, 4 * s, (b, s), generator=g).to(device)
        elif positions == "shared":
            pos = torch.randint(0, 4 * s, (s,), generator=g, dtype=torch.int32).to(device)
        zeta = None
        if xpos:
            i = torch.arange(rot // 2, dtype=torch.float32)
            zeta = ((2 * i / rot + 0.4) / 1.4).to(device)
        out = ops.rope(x, pos, inv, offset=7, rotary_dim=rot if partial else None,
                       interleaved=interleaved, layout=layout, cu_seqlens=cu,
                       attention_factor=1.25 if xpos else 1.0, xpos_zeta=zeta,
                       xpos_scale_base=64.0, xpos_inverse=False, xpos_centre=s // 2)
        return _finish([out], [x], g)

    return run


def _apply_rotary(batched: bool, layout: str = "bhsd", interleaved: bool = False):
    def run(device, seed, big):
        g = _gen(seed)
        b, h, s, d = (2, 8, 512, 64) if big else (1, 2, 20, 16)
        r = d // 2
        x = _randn(g, *((b, h, s, d) if layout == "bhsd" else (b, s, h, d)), device=device)
        tshape = (b, s, r) if batched else (s, r)
        cos = _randn(g, *tshape, device=device)
        sin = _randn(g, *tshape, device=device)
        out = ops.apply_rotary_pos_emb(x, cos, sin, interleaved=interleaved, layout=layout)
        return _finish([out], [x, cos, sin], g)

    return run


def _sinusoidal_table(device, seed, big):
    n = 4096 if big else 64
    t32 = ops.sinusoidal_table(n, 64, offset=seed, device=torch.device(device))
    t64 = ops.sinusoidal_table(n, 64, offset=-seed, interleaved=False, dtype=torch.float64,
                               device=torch.device(device))
    return [t32, t64]


def _sinusoidal_module(device, seed, big):
    g = _gen(seed)
    x = _randn(g, 2, 1024 if big else 16, 64, device=device)
    m = pnn.SinusoidalPositionalEncoding(64)
    return _finish([m(x, offset=seed)], [x], g)


def _learned_module(device, seed, big):
    g = _gen(seed)
    m = pnn.LearnedPositionalEmbedding(2048, 64).to(device)
    with torch.no_grad():  # from the case's generator (the global RNG is shared by threads)
        m.weight.copy_(torch.randn(2048, 64, generator=g) * 0.02)
    x = _randn(g, 2, 1024 if big else 16, 64, device=device)
    return _finish([m(x, offset=5)], [x, m.weight], g)


def _attention(term: str, causal: bool = False, layout: str = "bhsd"):
    def run(device, seed, big):
        g = _gen(seed)
        b, h, lq, d = (2, 4, 192, 32) if big else (1, 2, 24, 8)
        lk = lq + 8
        if layout == "bhsd":
            q = _randn(g, b, h, lq, d, device=device)
            k = _randn(g, b, h, lk, d, device=device)
            v = _randn(g, b, h, lk, d, device=device)
            cu = None
        else:
            q = _randn(g, b * lq, h, d, device=device)
            k = _randn(g, b * lq, h, d, device=device)
            v = _randn(g, b * lq, h, d, device=device)
            cu = torch.tensor([0, lq // 2, b * lq], device=device)
        leaves = [q, k, v]
        kw: Dict[str, object] = {}
        if term == "alibi":
            kw["slopes"] = ops.alibi_slopes(h, device=torch.device(device)).requires_grad_()
        elif term == "t5":
            kw["table"] = _randn(g, 32, h, device=device)
        elif term == "kerple":
            kw["r1"] = (torch.rand(h, generator=g) + 0.1).to(device).requires_grad_()
            kw["r2"] = (torch.rand(h, generator=g) + 0.1).to(device).requires_grad_()
            kw["kerple_kind"] = "power"
        elif term in ("txl", "shaw"):
            c = lk + lq
            kw["rel_emb"] = (_randn(g, h, 2 * c + 1, d, device=device, grad=False) * 0.1).requires_grad_()
            if term == "txl":
                kw["q_rel"] = _randn(g, *q.shape, device=device)
            else:
                kw["max_distance"] = 16
        leaves += [t for t in kw.values() if isinstance(t, torch.Tensor)]
        if layout == "thd":
            out, lse = ops.relative_attention(q, k, v, causal=causal, layout="thd", cu_seqlens_q=cu,
                                              **kw)  # type: ignore[arg-type]
        else:
            out, lse = ops.relative_attention(q, k, v, causal=causal, q_offset=lk - lq, **kw)  # type: ignore[arg-type]
        return _finish([out, lse], leaves, g)

    return run


CASES: List[Case] = [
    Case("alibi-causal", _alibi(True)),
    Case("alibi-symmetric", _alibi(False)),
    Case("t5-bidirectional", _t5(True)),
    Case("t5-causal", _t5(False)),
    Case("kerple-log-causal", _kerple("log", True)),
    Case("kerple-log-bidirectional", _kerple("log", False)),
    Case("kerple-power", _kerple("power", False)),
    Case("rel-pos-bidirectional", _rel_pos(False, None)),
    Case("rel-pos-causal", _rel_pos(True, None)),
    Case("rel-pos-shaw-clipped", _rel_pos(False, 16)),
    Case("rope-bhsd", _rope("bhsd")),
    Case("rope-bshd-positions", _rope("bshd", positions="batched")),
    Case("rope-bhsd-int32-positions", _rope("bhsd", positions="shared")),
    Case("rope-thd", _rope("thd")),
    Case("rope-interleaved", _rope("bhsd", interleaved=True)),
    Case("rope-partial", _rope("bshd", partial=True)),
    Case("rope-xpos", _rope("bhsd", xpos=True)),
    Case("apply-rotary-shared", _apply_rotary(False)),
    Case("apply-rotary-batched-bshd", _apply_rotary(True, "bshd", interleaved=True)),
    Case("sinusoidal-table", _sinusoidal_table),
    Case("sinusoidal-module", _sinusoidal_module),
    Case("learned-module", _learned_module),
    Case("attention-none-causal", _attention("none", causal=True)),
    Case("attention-alibi", _attention("alibi")),
    Case("attention-t5-causal", _attention("t5", causal=True)),
    Case("attention-kerple", _attention("kerple")),
    Case("attention-txl-causal", _attention("txl", causal=True)),
    Case("attention-shaw", _attention("shaw")),
    Case("attention-thd-alibi", _attention("alibi", causal=True, layout="thd")),
]


def assert_equal_runs(a: List[torch.Tensor], b: List[torch.Tensor], what: str) -> None:
    assert len(a) == len(b), what
    for i, (x, y) in enumerate(zip(a, b)):
        assert x.dtype == y.dtype and x.shape == y.shape, f"{what}: tensor {i}"
        if not torch.equal(x, y):
            diff = (x.double() - y.double()).abs().max().item()
            raise AssertionError(f"{what}: tensor {i} differs (max abs diff {diff})")
