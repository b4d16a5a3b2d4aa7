"""The bad-input table: every public op, module (Python, C++ through pybind, scripted) and
config reader, fed wrong ranks, dtypes, devices, shapes, sizes, offsets, parameter values,
layouts and packings.

Each row states its outcome: an error of a given type whose message (checked with a regex)
names the op or module, the argument, what was expected and what was given; or a result,
checked against an fp64 reference written here from the formulas. After every row a valid
call of the same family runs and is checked, so an error leaves the process usable.

The "meta" device stands in for a second device on this CPU-only machine: mixing a meta
tensor with CPU tensors is a device mix like CUDA + CPU. Parameter values (NaN, inf, signs)
are checked on CPU tensors only (reading a CUDA tensor would synchronise the stream).
"""
import json
import math
import re
from typing import Callable, List, NamedTuple, Optional

import pytest
import torch

import posenc
import posenc.cpp as pcpp
from posenc import hf, ops
from posenc import nn as pnn

I64_MAX = 2**63 - 1
I64_MIN = -(2**63)
NAN = float("nan")
INF = float("inf")
META = torch.device("meta")
F64 = torch.float64


class Row(NamedTuple):
    family: str  # the valid call run after the row
    fn: Callable[[], object]
    exc: Optional[type]  # None: fn must return a correct result
    pattern: Optional[str]  # regex on the message (error rows)
    check: Optional[Callable[[object], None]]  # result check (result rows)


def err(op: str, arg: str, expected: str, given: str, exc: type = RuntimeError, kind: str = "argument") -> dict:
    """posenc.<op>: <kind> '<arg>' <expected> ..., but got ... <given> (regex fragments)."""
    return dict(
        exc=exc,
        pattern=rf"posenc\.{re.escape(op)}: {kind} '{re.escape(arg)}' .*{expected}.*but got.*{given}",
    )


def opt(module: str, option: str, expected: str, given: str, exc: type = ValueError) -> dict:
    return err(module, option, expected, given, exc, kind="option")


ROWS: List = []


def row(id: str, family: str, fn: Callable[[], object], **outcome) -> None:
    if "check" in outcome:
        r = Row(family, fn, None, None, outcome["check"])
    else:
        r = Row(family, fn, outcome["exc"], outcome["pattern"], None)
    marks = outcome.get("marks", ())
    ROWS.append(pytest.param(r, id=id, marks=marks))


def close(ref: torch.Tensor, atol: float = 1e-5, rtol: float = 1e-5, dtype=None):
    def check(out):
        assert isinstance(out, torch.Tensor)
        if dtype is not None:
            assert out.dtype == dtype
        assert out.shape == ref.shape, (out.shape, ref.shape)
        torch.testing.assert_close(out.double(), ref.double(), atol=atol, rtol=rtol, equal_nan=True)

    return check


def shape_is(*shape, dtype=None):
    def check(out):
        assert tuple(out.shape) == shape, (tuple(out.shape), shape)
        if dtype is not None:
            assert out.dtype == dtype

    return check


# ---- fp64 references, from the papers' formulas -----------------------------------------------


def ref_sinusoidal(positions, dim, base=10000.0):
    # Vaswani et al. 2017 §3.5, interleaved [sin, cos] pairs
    p = torch.as_tensor(positions, dtype=F64).reshape(-1, 1)
    i = torch.arange(dim // 2, dtype=F64)
    ang = p * base ** (-2 * i / dim)
    return torch.stack([torch.sin(ang), torch.cos(ang)], -1).reshape(p.shape[0], dim)


def distances(q_len, k_len, q_offset, k_offset):
    # exact int64 positions (offsets near 2^61 are not exact in fp64), then the difference
    qp = torch.arange(q_len) + q_offset
    kp = torch.arange(k_len) + k_offset
    return (qp[:, None] - kp[None, :]).double()  # q_pos - k_pos


def ref_alibi(slopes, q_len, k_len, q_offset=0, k_offset=0, causal=True):
    d = distances(q_len, k_len, q_offset, k_offset)
    d = d if causal else d.abs()
    return -slopes.double()[:, None, None] * d


def ref_kerple(r1, r2, q_len, k_len, q_offset=0, k_offset=0, kind="log", causal=True):
    d = distances(q_len, k_len, q_offset, k_offset)
    d = d.clamp(min=0) if causal else d.abs()
    r1, r2 = r1.double()[:, None, None], r2.double()[:, None, None]
    if kind == "log":
        return -r1 * torch.log1p(r2 * d)
    return torch.where(d == 0, torch.zeros(()), -r1 * d.pow(r2))


def ref_t5_bucket(rp: int, bidirectional=True, num_buckets=32, max_distance=128) -> int:
    # Raffel et al. 2020 / the T5 reference: exact small distances, log-spaced large ones
    ret = 0
    if bidirectional:
        num_buckets //= 2
        ret += num_buckets if rp > 0 else 0
        n = abs(rp)
    else:
        n = max(-rp, 0)
    max_exact = num_buckets // 2
    if n < max_exact:
        return ret + n
    if n >= max_distance:  # log term >= the last bucket: clamped
        return ret + num_buckets - 1
    large = max_exact + int(
        math.log(n / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact)
    )
    return ret + min(large, num_buckets - 1)


def ref_t5_bias(table, q_len, k_len, q_offset=0, k_offset=0, bidirectional=True, max_distance=128):
    nb, h = table.shape
    out = torch.empty(h, q_len, k_len, dtype=F64)
    for i in range(q_len):
        for j in range(k_len):
            b = ref_t5_bucket((k_offset + j) - (q_offset + i), bidirectional, nb, max_distance)
            out[:, i, j] = table[b].double()
    return out


def ref_rope(x, pos, inv_freq, rotary_dim=None):
    # Su et al. 2021 eq. 34, half-split pairs (i, i + R/2); x (B, H, S, D), pos (S,)
    x = x.double()
    r = 2 * inv_freq.numel() if rotary_dim is None else rotary_dim
    ang = torch.as_tensor(pos, dtype=F64)[:, None] * inv_freq.double()[None, :]
    c, s = torch.cos(ang), torch.sin(ang)
    x1, x2, rest = x[..., : r // 2], x[..., r // 2 : r], x[..., r:]
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s, rest], -1)


def ref_rel_pos(q, rel_emb, q_offset, k_offset, k_len, max_distance=None):
    # Shaw et al. 2018 eq. 5: score[b,h,i,j] = q[b,h,i] . R[h, c + clamp(q_pos - k_pos, -M, M)]
    c = (rel_emb.shape[1] - 1) // 2
    m = c if max_distance is None else max_distance
    d = distances(q.shape[2], k_len, q_offset, k_offset).long().clamp(-m, m) + c
    r = rel_emb.double()[:, d]  # (H, Lq, Lk, D)
    return torch.einsum("bhid,hijd->bhij", q.double(), r)


def ref_cope(q, k, e, q_offset=0, k_offset=0):
    # Golovneva et al. 2024 eqs. 3-5 (the paper's listing), future keys 0, fp64.
    q, k, e = q.double(), k.double(), e.double()
    qp = torch.arange(q.shape[-2]) + q_offset
    kp = torch.arange(k.shape[-2]) + k_offset
    future = kp[None, :] > qp[:, None]
    gates = torch.sigmoid(((q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])).masked_fill(future, -INF))
    pos = gates.flip(-1).cumsum(-1).flip(-1).clamp(max=e.shape[0] - 1)
    z = q @ e.t()
    lo, w = pos.floor().long(), pos - pos.floor()
    out = z.gather(-1, pos.ceil().long()) * w + z.gather(-1, lo) * (1 - w)
    return out.masked_fill(future, 0.0)


def ref_attention(q, k, v, bias=None, scale=None):
    s = (q.double() @ k.double().transpose(-1, -2)) * (scale if scale is not None else q.shape[-1] ** -0.5)
    if bias is not None:
        s = s + bias
    return torch.softmax(s, -1) @ v.double()


def _overcommit_mode() -> str:
    try:
        with open("/proc/sys/vm/overcommit_memory") as f:
            return f.read().strip()
    except OSError:
        return "unknown"


# Rows whose 16 TiB output must fail in the allocator: with vm.overcommit_memory = 1 Linux
# grants it and the kernel's first writes would exhaust memory instead.
NEEDS_NO_OVERCOMMIT = pytest.mark.skipif(
    _overcommit_mode() not in ("0", "2"),
    reason=f"vm.overcommit_memory is {_overcommit_mode()!r}: a 16 TiB allocation would not fail",
)

g = torch.Generator().manual_seed(0)


def randn(*shape, dtype=torch.float32):
    return torch.randn(*shape, generator=g, dtype=dtype)


S2 = torch.tensor([0.5, 0.25])
X = randn(1, 2, 3, 8)
INV4 = ops.rope_inv_freq(8)  # (4,)


# ---- sinusoidal_table ---------------------------------------------------------------------------
F = "sinusoidal_table"
row("sin-dim-odd", F, lambda: ops.sinusoidal_table(4, 3), **err(F, "dim", "even and > 0", "3"))
row("sin-dim-zero", F, lambda: ops.sinusoidal_table(4, 0), **err(F, "dim", "even and > 0", "0"))
row("sin-dim-neg", F, lambda: ops.sinusoidal_table(4, -2), **err(F, "dim", "even and > 0", "-2"))
row("sin-n-neg", F, lambda: ops.sinusoidal_table(-1, 4), **err(F, "num_positions", ">= 0", "-1"))
row("sin-base-nan", F, lambda: ops.sinusoidal_table(4, 4, NAN), **err(F, "base", "finite and > 0", "nan"))
row("sin-base-inf", F, lambda: ops.sinusoidal_table(4, 4, INF), **err(F, "base", "finite and > 0", "inf"))
row("sin-base-neg", F, lambda: ops.sinusoidal_table(4, 4, -1.0), **err(F, "base", "finite and > 0", "-1"))
row("sin-dtype-int", F, lambda: ops.sinusoidal_table(4, 4, dtype=torch.int64),
    **err(F, "dtype", "float16, bfloat16, float32 or float64", "Long"))
row("sin-dtype-bool", F, lambda: ops.sinusoidal_table(4, 4, dtype=torch.bool),
    **err(F, "dtype", "float16, bfloat16, float32 or float64", "Bool"))
row("sin-dtype-complex", F, lambda: ops.sinusoidal_table(4, 4, dtype=torch.complex64),
    **err(F, "dtype", "float16, bfloat16, float32 or float64", "ComplexFloat"))
row("sin-bytes-overflow", F, lambda: ops.sinusoidal_table(2**62, 1024),
    **err(F, "num_positions", "too large: the output's size in bytes must fit in int64", r"\[4611686018427387904, 1024\]"))
row("sin-cannot-allocate", F, lambda: ops.sinusoidal_table(2**40, 1024),
    **err(F, "num_positions", "too large: the output cannot be allocated", r"\[1099511627776, 1024\].*4503599627370496 bytes"))
row("sin-cannot-allocate-scripted", F, lambda: torch.jit.script(ops.sinusoidal_table)(2**40, 1024, 10000.0, 0, True, torch.float16, None),
    exc=torch.jit.Error, pattern=r"posenc\.sinusoidal_table: argument 'num_positions' is too large: the output cannot be allocated.*torch\.float16 \(2251799813685248 bytes\)")
# explicit positions, expanded (no memory): the table is what cannot be allocated
row("sin-raw-past-address-space", F, lambda: torch.ops.posenc.sinusoidal_table(torch.tensor(0).expand(2**40), 1024),
    **err(F, "positions", r"cannot be allocated \(more than 2\^47 bytes", r"\[1099511627776, 1024\].*4503599627370496 bytes"))
row("sin-raw-allocator-fails", F, lambda: torch.ops.posenc.sinusoidal_table(torch.tensor(0).expand(2**32), 1024),
    **err(F, "positions", "too large: the output cannot be allocated", r"\[4294967296, 1024\].*17592186044416 bytes.*allocat"),
    marks=NEEDS_NO_OVERCOMMIT)
row("sin-offset-past-int64", F, lambda: ops.sinusoidal_table(2, 4, offset=I64_MAX),
    **err(F, "offset", "within int64", str(I64_MAX)))
row("sin-offset-int64-max", F, lambda: ops.sinusoidal_table(1, 4, offset=I64_MAX, dtype=F64),
    check=close(ref_sinusoidal([float(I64_MAX)], 4), atol=1e-9))
row("sin-offset-int64-min", F, lambda: ops.sinusoidal_table(2, 4, offset=I64_MIN, dtype=F64),
    check=close(ref_sinusoidal([float(I64_MIN), float(I64_MIN + 1)], 4), atol=1e-9))
row("sin-empty", F, lambda: ops.sinusoidal_table(0, 6), check=shape_is(0, 6, dtype=torch.float32))
row("sin-raw-positions-float", F, lambda: torch.ops.posenc.sinusoidal_table(torch.zeros(3), 4),
    **err(F, "positions", "int64 or int32", "Float"))
row("sin-raw-positions-bool", F, lambda: torch.ops.posenc.sinusoidal_table(torch.zeros(3, dtype=torch.bool), 4),
    **err(F, "positions", "int64 or int32", "Bool"))
row("sin-raw-positions-2d", F, lambda: torch.ops.posenc.sinusoidal_table(torch.zeros(2, 3, dtype=torch.long), 4),
    **err(F, "positions", "1-D", "2-D"))
row("sin-raw-positions-strided", F,
    lambda: torch.ops.posenc.sinusoidal_table(torch.arange(10)[::3], 4, dtype=F64),
    check=close(ref_sinusoidal([0, 3, 6, 9], 4), atol=1e-12))
row("sin-raw-positions-expanded", F,
    lambda: torch.ops.posenc.sinusoidal_table(torch.tensor(7).expand(3), 4, dtype=F64),
    check=close(ref_sinusoidal([7, 7, 7], 4), atol=1e-12))

# ---- alibi_slopes / alibi_bias ------------------------------------------------------------------
F = "alibi_slopes"
row("alibi-slopes-zero", F, lambda: ops.alibi_slopes(0), **err(F, "num_heads", "> 0", "0"))
row("alibi-slopes-neg", F, lambda: ops.alibi_slopes(-3), **err(F, "num_heads", "> 0", "-3"))
row("alibi-slopes-dtype-int", F, lambda: ops.alibi_slopes(4, dtype=torch.int32),
    **err(F, "dtype", "float", "Int"))
row("alibi-slopes-6heads", F, lambda: ops.alibi_slopes(6, dtype=F64),
    # Press et al.: 4 slopes of 2^(-8k/4), then the odd ones of 8 heads, 2^(-8k/8) for k = 1, 3
    check=close(torch.tensor([2.0**-2, 2.0**-4, 2.0**-6, 2.0**-8, 2.0**-1, 2.0**-3], dtype=F64), atol=0))

F = "alibi_bias"
row("alibi-slopes-2d", F, lambda: ops.alibi_bias(S2[None], 3, 3), **err(F, "slopes", "1-D", "2-D"))
row("alibi-slopes-0d", F, lambda: ops.alibi_bias(torch.tensor(0.5), 3, 3), **err(F, "slopes", "1-D", "0-D"))
row("alibi-slopes-int", F, lambda: ops.alibi_bias(torch.tensor([1, 2]), 3, 3),
    **err(F, "slopes", "float16, bfloat16, float32 or float64", "Long"))
row("alibi-slopes-bool", F, lambda: ops.alibi_bias(torch.tensor([True]), 3, 3),
    **err(F, "slopes", "float16, bfloat16, float32 or float64", "Bool"))
row("alibi-slopes-complex", F, lambda: ops.alibi_bias(S2.to(torch.complex64), 3, 3),
    **err(F, "slopes", "float16, bfloat16, float32 or float64", "ComplexFloat"))
row("alibi-qlen-neg", F, lambda: ops.alibi_bias(S2, -1, 3), **err(F, "q_len", ">= 0", "-1"))
row("alibi-klen-neg", F, lambda: ops.alibi_bias(S2, 3, -5), **err(F, "k_len", ">= 0", "-5"))
row("alibi-slope-nan", F, lambda: ops.alibi_bias(torch.tensor([0.5, NAN]), 3, 3),
    **err(F, "slopes", "finite", r"slopes\[1\] = nan"))
row("alibi-slope-inf", F, lambda: ops.alibi_bias(torch.tensor([INF, 0.5]), 3, 3),
    **err(F, "slopes", "finite", r"slopes\[0\] = inf"))
row("alibi-slope-neginf-bidir", F, lambda: ops.alibi_bias(torch.tensor([-INF]), 3, 3, causal=False),
    **err(F, "slopes", "finite", r"slopes\[0\] = -inf"))
row("alibi-bytes-overflow", F, lambda: ops.alibi_bias(S2, 2**40, 2**40),
    **err(F, "k_len", "too large: the output's size in bytes must fit in int64", r"\[2, 1099511627776, 1099511627776\]"))
row("alibi-past-address-space", F, lambda: ops.alibi_bias(S2, 2**24, 2**23),
    **err(F, "q_len", r"too large: the output cannot be allocated \(more than 2\^47 bytes", r"\[2, 16777216, 8388608\].*1125899906842624 bytes"))
row("alibi-allocator-fails", F, lambda: ops.alibi_bias(S2, 2**21, 2**20),
    **err(F, "q_len", "too large: the output cannot be allocated", r"\[2, 2097152, 1048576\].*17592186044416 bytes.*allocat"),
    marks=NEEDS_NO_OVERCOMMIT)
row("alibi-qoffset-huge", F, lambda: ops.alibi_bias(S2, 2, 2, q_offset=2**62),
    **err(F, "q_offset", r"within \[-2\^61, 2\^61\]", str(2**62)))
row("alibi-koffset-int64-min", F, lambda: ops.alibi_bias(S2, 2, 2, k_offset=I64_MIN),
    **err(F, "k_offset", r"within \[-2\^61, 2\^61\]", str(I64_MIN)))
row("alibi-offsets-at-limit", F, lambda: ops.alibi_bias(S2.double(), 2, 3, q_offset=2**61, k_offset=2**61 - 1),
    check=close(ref_alibi(S2, 2, 3, 2**61, 2**61 - 1), atol=0))
row("alibi-empty-q", F, lambda: ops.alibi_bias(S2, 0, 4), check=shape_is(2, 0, 4))
row("alibi-slopes-strided", F, lambda: ops.alibi_bias(torch.tensor([0.5, 9.0, 0.25, 9.0])[::2], 3, 4, 2, 0, False),
    check=close(ref_alibi(S2, 3, 4, 2, 0, False)))
row("alibi-slopes-expanded", F, lambda: ops.alibi_bias(torch.tensor(0.5).expand(3), 2, 2),
    check=close(ref_alibi(torch.full((3,), 0.5), 2, 2)))
row("alibi-out-shape", F, lambda: ops.alibi_bias(S2, 3, 3, out=torch.empty(2, 3, 4)),
    **err(F, "out", r"must have shape \(num_heads, q_len, k_len\) = \[2, 3, 3\]", r"\[2, 3, 4\]"))
row("alibi-out-dtype", F, lambda: ops.alibi_bias(S2, 3, 3, out=torch.empty(2, 3, 3, dtype=F64)),
    **err(F, "out", "dtype of 'slopes'", "Double"))
row("alibi-out-strided", F, lambda: ops.alibi_bias(S2, 3, 3, out=torch.empty(2, 3, 6)[..., ::2]),
    **err(F, "out", "contiguous", "strides"))
row("alibi-out-device", F, lambda: ops.alibi_bias(S2, 3, 3, out=torch.empty(2, 3, 3, device=META)),
    **err(F, "out", "device of 'slopes'", "meta"))


def _alibi_out_requires_grad():
    s = S2.clone().requires_grad_()
    return ops.alibi_bias(s, 3, 3, out=torch.empty(2, 3, 3))


OUT_NO_GRAPH = r"requires grad, but the out= variant records no autograd graph"
row("alibi-out-requires-grad", F, _alibi_out_requires_grad, exc=RuntimeError,
    pattern=r"posenc\.alibi_bias: argument 'slopes' " + OUT_NO_GRAPH)

# ---- t5_relative_bucket / t5_bias ---------------------------------------------------------------
F = "t5_relative_bucket"
RP = torch.arange(-5, 6)
row("t5b-float", F, lambda: ops.t5_relative_bucket(RP.float()), **err(F, "relative_position", "dtype Long", "Float"))
row("t5b-bool", F, lambda: ops.t5_relative_bucket(RP > 0), **err(F, "relative_position", "dtype Long", "Bool"))
row("t5b-buckets-odd", F, lambda: ops.t5_relative_bucket(RP, True, 5), **err(F, "num_buckets", "even", "5"))
row("t5b-buckets-2-bidir", F, lambda: ops.t5_relative_bucket(RP, True, 2), **err(F, "num_buckets", ">= 4", "2"))
row("t5b-buckets-1-causal", F, lambda: ops.t5_relative_bucket(RP, False, 1), **err(F, "num_buckets", ">= 2", "1"))
row("t5b-buckets-neg", F, lambda: ops.t5_relative_bucket(RP, False, -4), **err(F, "num_buckets", ">= 2", "-4"))
row("t5b-maxdist-small", F, lambda: ops.t5_relative_bucket(RP, True, 32, 8), **err(F, "max_distance", "max_exact", "8"))
row("t5b-int64-extremes", F,
    lambda: ops.t5_relative_bucket(torch.tensor([I64_MIN, I64_MIN + 1, -1, 0, 1, I64_MAX])),
    check=close(torch.tensor([float(ref_t5_bucket(v)) for v in [I64_MIN, I64_MIN + 1, -1, 0, 1, I64_MAX]]), atol=0))
row("t5b-int64-extremes-causal", F,
    lambda: ops.t5_relative_bucket(torch.tensor([I64_MIN, -1000, 0, I64_MAX]), False),
    check=close(torch.tensor([float(ref_t5_bucket(v, False)) for v in [I64_MIN, -1000, 0, I64_MAX]]), atol=0))
row("t5b-strided-2d", F, lambda: ops.t5_relative_bucket(torch.arange(-200, 200, 7).view(2, -1).t()),
    check=close(torch.tensor([float(ref_t5_bucket(v)) for v in range(-200, 200, 7)]).view(2, -1).t(), atol=0))
row("t5b-empty", F, lambda: ops.t5_relative_bucket(torch.zeros(0, 3, dtype=torch.long)), check=shape_is(0, 3, dtype=torch.long))

F = "t5_bias"
TAB = randn(32, 2)
row("t5-table-1d", F, lambda: ops.t5_bias(TAB[:, 0], 3, 3), **err(F, "table", "2-D", "1-D"))
row("t5-table-int", F, lambda: ops.t5_bias(TAB.long(), 3, 3), **err(F, "table", "float", "Long"))
row("t5-table-complex", F, lambda: ops.t5_bias(TAB.to(torch.complex64), 3, 3), **err(F, "table", "float", "ComplexFloat"))
row("t5-table-rows-odd", F, lambda: ops.t5_bias(randn(5, 2), 3, 3), **err(F, "table", r"rows \(num_buckets\) that is even", "5 rows"))
row("t5-qlen-neg", F, lambda: ops.t5_bias(TAB, -1, 3), **err(F, "q_len", ">= 0", "-1"))
row("t5-bytes-overflow", F, lambda: ops.t5_bias(TAB, 2**40, 2**41),
    **err(F, "k_len", "size in bytes must fit in int64", r"\[2, 1099511627776, 2199023255552\]"))
row("t5-past-address-space", F, lambda: ops.t5_bias(TAB, 2**23, 2**24),
    **err(F, "k_len", "too large: the output cannot be allocated", r"1125899906842624 bytes"))
row("t5-allocator-fails", F, lambda: ops.t5_bias(TAB, 2**20, 2**21),
    **err(F, "k_len", "too large: the output cannot be allocated", r"17592186044416 bytes"), marks=NEEDS_NO_OVERCOMMIT)
row("t5-koffset-huge", F, lambda: ops.t5_bias(TAB, 2, 2, k_offset=-(2**62)),
    **err(F, "k_offset", r"within \[-2\^61, 2\^61\]", str(-(2**62))))
row("t5-maxdist-small", F, lambda: ops.t5_bias(TAB, 2, 2, max_distance=4), **err(F, "max_distance", "max_exact", "4"))
row("t5-table-transposed", F, lambda: ops.t5_bias(TAB.t().contiguous().t(), 4, 5, 3, 0),
    check=close(ref_t5_bias(TAB, 4, 5, 3, 0)))
row("t5-table-nan-is-data", F, lambda: ops.t5_bias(torch.full((32, 1), NAN), 1, 2),
    check=close(torch.full((1, 1, 2), NAN, dtype=F64)))
row("t5-out-requires-grad", F, lambda: ops.t5_bias(TAB.clone().requires_grad_(), 3, 3, out=torch.empty(2, 3, 3)),
    exc=RuntimeError, pattern=r"posenc\.t5_bias: argument 'table' " + OUT_NO_GRAPH)
row("t5-empty-k", F, lambda: ops.t5_bias(TAB, 3, 0), check=shape_is(2, 3, 0))
row("t5-out-dtype", F, lambda: ops.t5_bias(TAB, 3, 3, out=torch.empty(2, 3, 3, dtype=torch.half)),
    **err(F, "out", "dtype of 'table'", "Half"))

# ---- kerple_bias --------------------------------------------------------------------------------
F = "kerple_bias"
R1, R2 = torch.tensor([1.0, 2.0]), torch.tensor([0.5, 1.5])
row("kerple-r1-2d", F, lambda: ops.kerple_bias(R1[None], R2, 3, 3), **err(F, "r1", "1-D", "2-D"))
row("kerple-r1-int", F, lambda: ops.kerple_bias(R1.long(), R2.long(), 3, 3), **err(F, "r1", "float", "Long"))
row("kerple-r2-dtype", F, lambda: ops.kerple_bias(R1, R2.double(), 3, 3), **err(F, "r2", "dtype of 'r1'", "Double"))
row("kerple-r2-length", F, lambda: ops.kerple_bias(R1, R2[:1], 3, 3), **err(F, "r2", r"length of 'r1' \(2\)", "length 1"))
row("kerple-r2-device", F, lambda: ops.kerple_bias(R1, R2.to(META), 3, 3), **err(F, "r2", "device of 'r1'", "meta"))
row("kerple-kind", F, lambda: ops.kerple_bias(R1, R2, 3, 3, kind="exp"), **err(F, "kind", "one of", '"exp"'))
row("kerple-r1-nan", F, lambda: ops.kerple_bias(torch.tensor([NAN, 1.0]), R2, 3, 3), **err(F, "r1", "finite", r"r1\[0\] = nan"))
row("kerple-r1-inf", F, lambda: ops.kerple_bias(torch.tensor([1.0, INF]), R2, 3, 3), **err(F, "r1", "finite", r"r1\[1\] = inf"))
row("kerple-r2-nan-log", F, lambda: ops.kerple_bias(R1, torch.tensor([NAN, 1.0]), 3, 3), **err(F, "r2", "finite", r"r2\[0\] = nan"))
row("kerple-r2-neg-log", F, lambda: ops.kerple_bias(R1, torch.tensor([0.5, -0.1]), 3, 3),
    **err(F, "r2", '>= 0 for kind "log"', r"r2\[1\] = -0.1"))
row("kerple-r2-inf-power", F, lambda: ops.kerple_bias(R1, torch.tensor([INF, 1.0]), 3, 3, kind="power"),
    **err(F, "r2", "finite", r"r2\[0\] = inf"))
row("kerple-r2-neg-power-defined", F, lambda: ops.kerple_bias(R1.double(), torch.tensor([-0.5, 0.5], dtype=F64), 3, 4, 1, 0, "power", False),
    check=close(ref_kerple(R1, torch.tensor([-0.5, 0.5]), 3, 4, 1, 0, "power", False), atol=1e-12))
row("kerple-qlen-neg", F, lambda: ops.kerple_bias(R1, R2, -2, 3), **err(F, "q_len", ">= 0", "-2"))
row("kerple-bytes-overflow", F, lambda: ops.kerple_bias(R1, R2, 2**41, 2**40),
    **err(F, "q_len", "size in bytes must fit in int64", r"\[2, 2199023255552, 1099511627776\]"))
row("kerple-past-address-space", F, lambda: ops.kerple_bias(R1.double(), R2.double(), 2**23, 2**23),
    **err(F, "k_len", "too large: the output cannot be allocated", "1125899906842624 bytes"))
row("kerple-allocator-fails", F, lambda: ops.kerple_bias(R1, R2, 2**20, 2**21),
    **err(F, "k_len", "too large: the output cannot be allocated", "17592186044416 bytes"), marks=NEEDS_NO_OVERCOMMIT)
row("kerple-qoffset-int64-min", F, lambda: ops.kerple_bias(R1, R2, 2, 2, q_offset=I64_MIN),
    **err(F, "q_offset", r"within \[-2\^61, 2\^61\]", str(I64_MIN)))
row("kerple-r1-strided", F, lambda: ops.kerple_bias(torch.tensor([1.0, 7.0, 2.0, 7.0])[::2], R2, 3, 5, 0, 2, "log", True),
    check=close(ref_kerple(R1, R2, 3, 5, 0, 2, "log", True)))
row("kerple-out-requires-grad", F, lambda: ops.kerple_bias(R1, R2.clone().requires_grad_(), 3, 3, out=torch.empty(2, 3, 3)),
    exc=RuntimeError, pattern=r"posenc\.kerple_bias: argument 'r[12]' " + OUT_NO_GRAPH)
row("kerple-empty", F, lambda: ops.kerple_bias(R1, R2, 0, 0), check=shape_is(2, 0, 0))
row("kerple-out-shape", F, lambda: ops.kerple_bias(R1, R2, 3, 3, out=torch.empty(3, 3, 3)),
    **err(F, "out", r"\[2, 3, 3\]", r"\[3, 3, 3\]"))

# ---- dynamic_position_bias (x-transformers' DynamicPositionBias) ------------------------------------
F = "dynamic_position_bias"
DW = [torch.tensor([[0.5], [-1.0], [0.25]]), torch.tensor([[0.3, -0.2, 0.1], [0.4, 0.5, -0.6]])]
DB = [torch.tensor([0.1, 0.0, -0.2]), torch.tensor([0.05, -0.05])]


def ref_dpb(ws, bs, q_len, k_len, q_offset=0, k_offset=0, log_distance=False, causal=False):
    # x-transformers: Linear(1, dim) -> SiLU -> Linear(dim, H) on every distance q_pos - k_pos
    d = distances(q_len, k_len, q_offset, k_offset)
    x = (torch.sign(d) * torch.log(d.abs() + 1) if log_distance else d)[..., None]
    h = torch.nn.functional.silu(x @ ws[0].double().t() + bs[0].double())
    out = (h @ ws[1].double().t() + bs[1].double()).permute(2, 0, 1)
    return torch.where(d[None] < 0, torch.zeros_like(out), out) if causal else out


row("dpb-one-layer", F, lambda: ops.dynamic_position_bias(DW[:1], DB[:1], 3, 3), **err(F, "weights", "at least 2 tensors", "1 tensors"))
row("dpb-biases-count", F, lambda: ops.dynamic_position_bias(DW, DB[:1], 3, 3), **err(F, "biases", r"one tensor per weight \(2\)", "1 tensors"))
row("dpb-w0-in", F, lambda: ops.dynamic_position_bias([DW[0].t(), DW[1]], DB, 3, 3), **err(F, "weights[0]", "in_features 1", r"\[1, 3\]"))
row("dpb-chain", F, lambda: ops.dynamic_position_bias([DW[0], DW[1][:, :2]], DB, 3, 3), **err(F, "weights[1]", "in_features 3", r"\[2, 2\]"))
row("dpb-bias-length", F, lambda: ops.dynamic_position_bias(DW, [DB[0][:2], DB[1]], 3, 3), **err(F, "biases[0]", r"out_features of weights\[0\] \(3\)", r"\[2\]"))
row("dpb-dtype", F, lambda: ops.dynamic_position_bias([DW[0], DW[1].double()], DB, 3, 3), **err(F, "weights[1]", "dtype of 'weights\\[0\\]'", "Double"))
row("dpb-device", F, lambda: ops.dynamic_position_bias([DW[0], DW[1].to(META)], DB, 3, 3), **err(F, "weights[1]", "device of 'weights\\[0\\]'", "meta"))
row("dpb-int", F, lambda: ops.dynamic_position_bias([w.long() for w in DW], [b.long() for b in DB], 3, 3), **err(F, "weights[0]", "float", "Long"))
row("dpb-norm-count", F, lambda: ops.dynamic_position_bias(DW, DB, 3, 3, norm_weights=[torch.ones(3), torch.ones(2)]), **err(F, "norm_weights", r"one tensor per hidden layer \(1\)", "2 tensors"))
row("dpb-norm-eps", F, lambda: ops.dynamic_position_bias(DW, DB, 3, 3, norm_weights=[torch.ones(3)], norm_eps=-1.0), **err(F, "norm_eps", "finite and > 0", "-1"))
row("dpb-nan", F, lambda: ops.dynamic_position_bias([DW[0], torch.tensor([[0.3, NAN, 0.1], [0.4, 0.5, -0.6]])], DB, 3, 3), **err(F, "weights[1]", "finite", r"weights\[1\]\[0, 1\] = nan"))
row("dpb-qlen-neg", F, lambda: ops.dynamic_position_bias(DW, DB, -1, 3), **err(F, "q_len", ">= 0", "-1"))
row("dpb-qoffset-int64-min", F, lambda: ops.dynamic_position_bias(DW, DB, 2, 2, I64_MIN), **err(F, "q_offset", r"within \[-2\^61, 2\^61\]", str(I64_MIN)))
row("dpb-bytes-overflow", F, lambda: ops.dynamic_position_bias(DW, DB, 2**41, 2**40), **err(F, "q_len", "size in bytes must fit in int64", r"\[2, 2199023255552, 1099511627776\]"))
row("dpb-empty", F, lambda: ops.dynamic_position_bias(DW, DB, 0, 5), check=shape_is(2, 0, 5))
row("dpb-offsets-causal", F, lambda: ops.dynamic_position_bias(DW, DB, 3, 6, 4, 1, True, True), check=close(ref_dpb(DW, DB, 3, 6, 4, 1, True, True)))
row("dpb-strided-weight", F, lambda: ops.dynamic_position_bias([DW[0], torch.stack([DW[1], DW[1]], 2)[..., 0]], DB, 3, 4), check=close(ref_dpb(DW, DB, 3, 4)))
row("dpb-module-depth", "modules-py", lambda: pnn.DynamicPositionBias(4, 2, depth=0), **opt("DynamicPositionBias", "depth", ">= 1", "0"))
row("dpb-module-depth-cpp", "modules-cpp", lambda: pcpp.DynamicPositionBias(4, 2, depth=0), **opt("DynamicPositionBias", "depth", ">= 1", "0"))

# ---- fire_bias (Li et al. 2023) -----------------------------------------------------------------------
F = "fire_bias"
FP = [torch.tensor(0.2), torch.tensor(3.5), torch.tensor([[1.0], [-2.0]]), torch.tensor([0.1, 0.5]),
      torch.tensor([[0.3, -0.4], [0.2, 0.6]]), torch.tensor([0.0, 0.1])]


def ref_fire(c, L, w1, b1, w2, b2, q_len, k_len, q_offset=0, k_offset=0, causal=True, eps=1e-6):
    # FIRE eq. 3-4: f(psi(i - j) / (psi(max(L, i)) + eps)), psi(x) = log(|c| x + 1)
    d = distances(q_len, k_len, q_offset, k_offset)
    qp = torch.arange(q_len, dtype=F64) + q_offset
    c, L = abs(float(c)), abs(float(L))
    x = (torch.log1p(c * d.abs()) / (torch.log1p(c * qp.clamp(min=L)) + eps)[:, None])[..., None]
    h = torch.relu(x * w1.double()[:, 0] + b1.double())
    out = (h @ w2.double().t() + b2.double()).permute(2, 0, 1)
    return torch.where(d[None] < 0, torch.zeros_like(out), out) if causal else out


def _fp(k, v):
    q = list(FP)
    q[k] = v
    return q


row("fire-c-1d", F, lambda: ops.fire_bias(*_fp(0, torch.tensor([0.2])), 3, 3), **err(F, "c", "0-D", "1-D"))
row("fire-int", F, lambda: ops.fire_bias(*[t.long() for t in FP], 3, 3), **err(F, "c", "float", "Long"))
row("fire-L-dtype", F, lambda: ops.fire_bias(*_fp(1, torch.tensor(3.5, dtype=F64)), 3, 3), **err(F, "L", "dtype of 'c'", "Double"))
row("fire-w1-device", F, lambda: ops.fire_bias(*_fp(2, FP[2].to(META)), 3, 3), **err(F, "w1", "device of 'c'", "meta"))
row("fire-w1-shape", F, lambda: ops.fire_bias(*_fp(2, torch.ones(2, 3)), 3, 3), **err(F, "w1", r"\(hidden, 1\)", r"\[2, 3\]"))
row("fire-b1-length", F, lambda: ops.fire_bias(*_fp(3, torch.ones(3)), 3, 3), **err(F, "b1", r"length hidden \(2\)", r"\[3\]"))
row("fire-w2-shape", F, lambda: ops.fire_bias(*_fp(4, torch.ones(2, 3)), 3, 3), **err(F, "w2", r"hidden = 2", r"\[2, 3\]"))
row("fire-b2-length", F, lambda: ops.fire_bias(*_fp(5, torch.ones(3)), 3, 3), **err(F, "b2", r"length num_heads \(2\)", r"\[3\]"))
row("fire-eps", F, lambda: ops.fire_bias(*FP, 3, 3, eps=NAN), **err(F, "eps", "finite and > 0", "nan"))
row("fire-qoffset-neg", F, lambda: ops.fire_bias(*FP, 3, 3, -4, 0), **err(F, "q_offset", ">= 0", "-4"))
row("fire-koffset-range", F, lambda: ops.fire_bias(*FP, 3, 3, 0, I64_MAX), **err(F, "k_offset", r"within \[-2\^61, 2\^61\]", str(I64_MAX)))
row("fire-c-nan", F, lambda: ops.fire_bias(*_fp(0, torch.tensor(NAN)), 3, 3), **err(F, "c", "finite", "c = nan"))
row("fire-L-inf", F, lambda: ops.fire_bias(*_fp(1, torch.tensor(-INF)), 3, 3), **err(F, "L", "finite", "L = -inf"))
row("fire-b1-nan", F, lambda: ops.fire_bias(*_fp(3, torch.tensor([0.1, NAN])), 3, 3), **err(F, "b1", "finite", r"b1\[1\] = nan"))
row("fire-klen-neg", F, lambda: ops.fire_bias(*FP, 3, -3), **err(F, "k_len", ">= 0", "-3"))
row("fire-bytes-overflow", F, lambda: ops.fire_bias(*FP, 2**41, 2**40), **err(F, "q_len", "size in bytes must fit in int64", r"\[2, 2199023255552, 1099511627776\]"))
row("fire-empty", F, lambda: ops.fire_bias(*FP, 4, 0), check=shape_is(2, 4, 0))
row("fire-negative-c-L-as-abs", F, lambda: ops.fire_bias(*_fp(0, torch.tensor(-0.2)), 5, 7, 2, 0, False), check=close(ref_fire(*FP, 5, 7, 2, 0, False)))
row("fire-keys-ahead-causal", F, lambda: ops.fire_bias(*FP, 3, 6, 0, 2), check=close(ref_fire(*FP, 3, 6, 0, 2)))
row("fire-module-init-c", "modules-py", lambda: pnn.FIRE(2, init_c=0.0), **opt("FIRE", "init_c", "finite and != 0", "0"))
row("fire-module-init-c-cpp", "modules-cpp", lambda: pcpp.FIRE(2, init_c=0.0), **opt("FIRE", "init_c", "finite and != 0", "0"))
row("fire-module-qoffset", "modules-py", lambda: pnn.FIRE(2)(3, 3, -1, 0), **err("fire_bias", "q_offset", ">= 0", "-1"))

# ---- rel_pos_scores -----------------------------------------------------------------------------
F = "rel_pos_scores"
Q4 = randn(1, 2, 3, 4)
REL = randn(2, 7, 4)
row("relpos-q-3d", F, lambda: ops.rel_pos_scores(Q4[0], REL), **err(F, "q", "4-D", "3-D"))
row("relpos-q-int", F, lambda: ops.rel_pos_scores(Q4.long(), REL.long()), **err(F, "q", "float", "Long"))
row("relpos-q-complex", F, lambda: ops.rel_pos_scores(Q4.to(torch.complex64), REL), **err(F, "q", "float", "ComplexFloat"))
row("relpos-rel-dtype", F, lambda: ops.rel_pos_scores(Q4, REL.double()), **err(F, "rel_emb", "dtype of 'q'", "Double"))
row("relpos-heads", F, lambda: ops.rel_pos_scores(Q4, randn(3, 7, 4)), **err(F, "rel_emb", "heads", r"\[3, 7, 4\]"))
row("relpos-head-dim", F, lambda: ops.rel_pos_scores(Q4, randn(2, 7, 5)), **err(F, "rel_emb", "head_dim", r"\[2, 7, 5\]"))
row("relpos-R-even", F, lambda: ops.rel_pos_scores(Q4, randn(2, 6, 4)), **err(F, "rel_emb", "odd", "6"))
row("relpos-maxdist-big", F, lambda: ops.rel_pos_scores(Q4, REL, max_distance=4), **err(F, "max_distance", r"\[0, c\] with c = \(R - 1\) / 2 = 3", "4"))
row("relpos-maxdist-neg", F, lambda: ops.rel_pos_scores(Q4, REL, max_distance=-1), **err(F, "max_distance", r"\[0, c\] with c = \(R - 1\) / 2 = 3", "-1"))
row("relpos-klen-neg", F, lambda: ops.rel_pos_scores(Q4, REL, k_len=-1), **err(F, "k_len", ">= 0", "-1"))
row("relpos-rel-device", F, lambda: ops.rel_pos_scores(Q4, REL.to(META)), **err(F, "rel_emb", "device of 'q'", "meta"))
row("relpos-bytes-overflow", F, lambda: ops.rel_pos_scores(Q4, REL, k_len=2**62),
    **err(F, "k_len", "size in bytes must fit in int64", str(2**62)))
row("relpos-q-transposed", F, lambda: ops.rel_pos_scores(Q4.transpose(1, 2).contiguous().transpose(1, 2), REL, 2, 0, 6),
    check=close(ref_rel_pos(Q4, REL, 2, 0, 6), atol=1e-5))
row("relpos-rel-expanded", F, lambda: ops.rel_pos_scores(Q4, REL[:1].expand(2, 7, 4), 0, 0, 3),
    check=close(ref_rel_pos(Q4, REL[:1].expand(2, 7, 4), 0, 0, 3), atol=1e-5))
row("relpos-empty-q", F, lambda: ops.rel_pos_scores(Q4[:, :, :0], REL, k_len=5), check=shape_is(1, 2, 0, 5))

# ---- cope_scores ----------------------------------------------------------------------------------
F = "cope_scores"
QC, KC, EC = randn(1, 2, 3, 4), randn(1, 2, 5, 4), randn(6, 4)
row("cope-q-3d", F, lambda: ops.cope_scores(QC[0], KC, EC), **err(F, "q", "4-D", "3-D"))
row("cope-q-int", F, lambda: ops.cope_scores(QC.long(), KC.long(), EC.long()), **err(F, "q", "float", "Long"))
row("cope-k-dtype", F, lambda: ops.cope_scores(QC, KC.double(), EC), **err(F, "k", "dtype of 'q'", "Double"))
row("cope-k-device", F, lambda: ops.cope_scores(QC, KC.to(META), EC), **err(F, "k", "device of 'q'", "meta"))
row("cope-k-heads", F, lambda: ops.cope_scores(QC, randn(1, 3, 5, 4), EC), **err(F, "k", "batch, heads and head_dim", r"\[1, 3, 5, 4\]"))
row("cope-emb-3d", F, lambda: ops.cope_scores(QC, KC, EC[None]), **err(F, "pos_emb", "2-D", "3-D"))
row("cope-emb-head-dim", F, lambda: ops.cope_scores(QC, KC, randn(6, 5)), **err(F, "pos_emb", r"head_dim \(4\)", r"\[6, 5\]"))
row("cope-emb-empty", F, lambda: ops.cope_scores(QC, KC, randn(0, 4)), **err(F, "pos_emb", r"npos_max >= 1", r"\[0, 4\]"))
row("cope-emb-device", F, lambda: ops.cope_scores(QC, KC, EC.to(META)), **err(F, "pos_emb", "device of 'q'", "meta"))
row("cope-scale-nan", F, lambda: ops.cope_scores(QC, KC, EC, NAN), **err(F, "scale", "finite", "nan"))
row("cope-offset-big", F, lambda: ops.cope_scores(QC, KC, EC, None, 2**62), **err(F, "q_offset", r"\[-2\^61, 2\^61\]", str(2**62)))
row("cope-offset-int64-min", F, lambda: ops.cope_scores(QC, KC, EC, None, 0, I64_MIN), **err(F, "k_offset", r"\[-2\^61, 2\^61\]", str(I64_MIN)))
row("cope-grad-shape", F, lambda: torch.ops.posenc.cope_scores_backward(randn(1, 2, 3, 4), QC, KC, EC, None, 0, 0),
    **err("cope_scores_backward", "grad", r"\[1, 2, 3, 5\]", r"\[1, 2, 3, 4\]"))
row("cope-bytes-overflow", F, lambda: ops.cope_scores(torch.zeros(1, 1, 1, 4).expand(1, 1, 2**31, 4), torch.zeros(1, 1, 1, 4).expand(1, 1, 2**31, 4), EC),
    **err(F, "k", "too large", r"\[1, 1, 2147483648, 2147483648\]"))
row("cope-k-expanded", F, lambda: ops.cope_scores(QC, KC[:, :1].expand(1, 2, 5, 4), EC, None, 2, 0),
    check=close(ref_cope(QC, KC[:, :1].expand(1, 2, 5, 4), EC, 2, 0), atol=1e-5))
row("cope-query-before-keys", F, lambda: ops.cope_scores(QC, KC, EC, None, 0, 5), check=close(torch.zeros(1, 2, 3, 5), atol=0))
row("cope-empty-k", F, lambda: ops.cope_scores(QC, KC[:, :, :0], EC), check=shape_is(1, 2, 3, 0))

# ---- rope_inv_freq / rope / apply_rotary_pos_emb ------------------------------------------------
F = "rope_inv_freq"
row("invfreq-dim-odd", F, lambda: ops.rope_inv_freq(5), **err(F, "dim", "even", "5"))
row("invfreq-dim-zero", F, lambda: ops.rope_inv_freq(0), **err(F, "dim", "even", "0"))
row("invfreq-base-one", F, lambda: ops.rope_inv_freq(8, 1.0), **err(F, "base", "> 1", "1"))
row("invfreq-base-inf", F, lambda: ops.rope_inv_freq(8, INF), **err(F, "base", "finite", "inf"))
row("invfreq-base-nan", F, lambda: ops.rope_inv_freq(8, NAN), **err(F, "base", "finite", "nan"))
row("invfreq-dtype-half", F, lambda: ops.rope_inv_freq(8, dtype=torch.half), **err(F, "dtype", r"torch.float32 \(reference precision\) or torch.float64", "Half"))
row("invfreq-fp64", F, lambda: ops.rope_inv_freq(6, 500.0, dtype=F64),
    check=close(500.0 ** (-torch.arange(0, 6, 2, dtype=F64) / 6), atol=0, rtol=1e-15))

F = "rope"
CU = torch.tensor([0, 2, 5])
XT = randn(5, 2, 8)
row("rope-x-3d", F, lambda: ops.rope(X[0], None, INV4), **err(F, "x", "4-D", "3-D"))
row("rope-x-int", F, lambda: ops.rope(X.long(), None, INV4), **err(F, "x", "float", "Long"))
row("rope-x-bool", F, lambda: ops.rope(X > 0, None, INV4), **err(F, "x", "float", "Bool"))
row("rope-x-complex", F, lambda: ops.rope(X.to(torch.complex64), None, INV4), **err(F, "x", "float", "ComplexFloat"))
row("rope-layout", F, lambda: ops.rope(X, None, INV4, layout="sbhd"), **err(F, "layout", "one of", '"sbhd"'))
row("rope-positions-float", F, lambda: ops.rope(X, torch.zeros(3), INV4), **err(F, "positions", "int64 or int32", "Float"))
row("rope-positions-length", F, lambda: ops.rope(X, torch.arange(4), INV4), **err(F, "positions", r"shape \(3,\) or \(1, 3\) to match 'x'", r"shape \[4\]"))
row("rope-positions-batch", F, lambda: ops.rope(X, torch.zeros(2, 3, dtype=torch.long), INV4), **err(F, "positions", r"shape \(3,\) or \(1, 3\) to match 'x'", r"shape \[2, 3\]"))
row("rope-positions-device", F, lambda: ops.rope(X, torch.arange(3, device=META), INV4), **err(F, "positions", "device", "meta"))
row("rope-positions-with-thd", F, lambda: ops.rope(XT, torch.arange(5), INV4, layout="thd", cu_seqlens=CU),
    **err(F, "positions", "None", "thd|tensor"))
row("rope-thd-no-cu", F, lambda: ops.rope(XT, None, INV4, layout="thd"), **err(F, "cu_seqlens", "thd", "None"))
row("rope-cu-unsorted", F, lambda: ops.rope(XT, None, INV4, layout="thd", cu_seqlens=torch.tensor([0, 4, 2, 5])),
    **err(F, "cu_seqlens", "non-decreasing|decreas", r"4.*2|2.*4"))
row("rope-cu-not-T", F, lambda: ops.rope(XT, None, INV4, layout="thd", cu_seqlens=torch.tensor([0, 2, 4])),
    **err(F, "cu_seqlens", r"end at|T \(5\)|= 5", "4"))
row("rope-cu-not-0", F, lambda: ops.rope(XT, None, INV4, layout="thd", cu_seqlens=torch.tensor([1, 2, 5])),
    **err(F, "cu_seqlens", "start at 0|0", "1"))
row("rope-cu-device", F, lambda: ops.rope(XT, None, INV4, layout="thd", cu_seqlens=CU.to(META)), **err(F, "cu_seqlens", "device", "meta"))
row("rope-cu-float", F, lambda: ops.rope(XT, None, INV4, layout="thd", cu_seqlens=CU.float()), **err(F, "cu_seqlens", "int64 or int32", "Float"))
row("rope-cu-with-bhsd", F, lambda: ops.rope(X, None, INV4, cu_seqlens=CU), **err(F, "cu_seqlens", "thd", "bhsd|tensor"))
row("rope-invfreq-half", F, lambda: ops.rope(X, None, INV4.half()), **err(F, "inv_freq", "float32", "Half"))
row("rope-invfreq-nan", F, lambda: ops.rope(X, None, torch.tensor([1.0, NAN, 0.1, 0.01])),
    **err(F, "inv_freq", "finite", r"inv_freq\[1\] = nan"))
row("rope-invfreq-inf", F, lambda: ops.rope(X, None, torch.tensor([INF, 1.0, 0.1, 0.01])),
    **err(F, "inv_freq", "finite", r"inv_freq\[0\] = inf"))
row("rope-invfreq-device", F, lambda: ops.rope(X, None, INV4.to(META)), **err(F, "inv_freq", "device", "meta"))
row("rope-invfreq-2d", F, lambda: ops.rope(X, None, INV4[None]), **err(F, "inv_freq", "1-D", "2-D"))
row("rope-rotary-dim-odd", F, lambda: ops.rope(X, None, INV4[:2], rotary_dim=3), **err(F, "rotary_dim", "even", "3"))
row("rope-rotary-dim-big", F, lambda: ops.rope(X, None, ops.rope_inv_freq(10)),
    **err(F, "inv_freq", r"at most head_dim / 2 elements \(head_dim 8\)", "5 elements"))
row("rope-rotary-dim-mismatch", F, lambda: ops.rope(X, None, INV4, rotary_dim=6), **err(F, "rotary_dim", "inv_freq", "6"))
row("rope-attn-factor-nan", F, lambda: ops.rope(X, None, INV4, attention_factor=NAN), **err(F, "attention_factor", "finite", "nan"))
row("rope-attn-factor-inf", F, lambda: ops.rope(X, None, INV4, attention_factor=INF), **err(F, "attention_factor", "finite", "inf"))
row("rope-xpos-zeta-neg", F, lambda: ops.rope(X, None, INV4, xpos_zeta=torch.tensor([1.0, -0.5, 1.0, 1.0])),
    **err(F, "xpos_zeta", "> 0", "-0.5"))
row("rope-xpos-zeta-length", F, lambda: ops.rope(X, None, INV4, xpos_zeta=torch.ones(3)), **err(F, "xpos_zeta", r"\(R/2\)|\(4\)|4", "3"))
row("rope-xpos-scale-zero", F, lambda: ops.rope(X, None, INV4, xpos_zeta=torch.ones(4), xpos_scale_base=0.0),
    **err(F, "xpos_scale_base", "> 0", "0"))
row("rope-x-noncontiguous", F, lambda: ops.rope(X.transpose(1, 2).contiguous().transpose(1, 2), None, INV4, offset=5),
    check=close(ref_rope(X, torch.arange(5, 8), INV4), atol=1e-5))
row("rope-x-expanded", F, lambda: ops.rope(X[:, :1].expand(1, 2, 3, 8), torch.tensor([4, 0, 9]), INV4),
    check=close(ref_rope(X[:, :1].expand(1, 2, 3, 8), torch.tensor([4, 0, 9]), INV4), atol=1e-5))
row("rope-partial-rotary", F, lambda: ops.rope(X.double(), None, INV4[:2].double(), rotary_dim=4),
    check=close(ref_rope(X, torch.arange(3), INV4[:2].double(), 4), atol=1e-12))
row("rope-empty-seq", F, lambda: ops.rope(X[:, :, :0], None, INV4), check=shape_is(1, 2, 0, 8))
row("rope-thd-cu-int32", F, lambda: ops.rope(XT.double(), None, INV4.double(), layout="thd", cu_seqlens=CU.int()),
    check=close(torch.cat([ref_rope(XT[:2].transpose(0, 1)[None], torch.arange(2), INV4)[0].transpose(0, 1),
                           ref_rope(XT[2:].transpose(0, 1)[None], torch.arange(3), INV4)[0].transpose(0, 1)]), atol=1e-6))
row("rope-thd-strided-x", F, lambda: ops.rope(XT.double().transpose(0, 1).contiguous().transpose(0, 1), None, INV4.double(), layout="thd", cu_seqlens=CU),
    check=close(torch.cat([ref_rope(XT[:2].transpose(0, 1)[None], torch.arange(2), INV4)[0].transpose(0, 1),
                           ref_rope(XT[2:].transpose(0, 1)[None], torch.arange(3), INV4)[0].transpose(0, 1)]), atol=1e-6))
row("rope-offset-past-int64", F, lambda: ops.rope(X, None, INV4, offset=I64_MAX),
    **err(F, "offset", "within int64", str(I64_MAX)))

F = "apply_rotary_pos_emb"
COS, SIN = randn(3, 8), randn(3, 8)
row("arpe-x-int", F, lambda: ops.apply_rotary_pos_emb(X.long(), COS, SIN), **err(F, "x", "float", "Long"))
row("arpe-cos-1d", F, lambda: ops.apply_rotary_pos_emb(X, COS[0], SIN[0]), **err(F, "cos", r"2-D \(seq, rotary_dim\) or 3-D", r"1-D tensor of shape \[8\]"))
row("arpe-cos-seq", F, lambda: ops.apply_rotary_pos_emb(X, COS[:2], SIN[:2]), **err(F, "cos", r"shape \(3, rotary_dim\) or \(1, 3, rotary_dim\) to match 'x'", r"shape \[2, 8\]"))
row("arpe-sin-shape", F, lambda: ops.apply_rotary_pos_emb(X, COS, SIN[:, :6]), **err(F, "sin", "shape of 'cos'", r"\[3, 6\]"))
row("arpe-R-odd", F, lambda: ops.apply_rotary_pos_emb(X, COS[:, :5], SIN[:, :5]), **err(F, "cos", "even", "5"))
row("arpe-R-big", F, lambda: ops.apply_rotary_pos_emb(X, randn(3, 10), randn(3, 10)), **err(F, "cos", "<=", "10"))
row("arpe-cos-dtype", F, lambda: ops.apply_rotary_pos_emb(X, COS.double(), SIN.double()), **err(F, "cos", "dtype of 'x'", "Double"))
row("arpe-cos-device", F, lambda: ops.apply_rotary_pos_emb(X, COS.to(META), SIN.to(META)), **err(F, "cos", "device of 'x'", "meta"))
row("arpe-expanded-tables", F, lambda: ops.apply_rotary_pos_emb(X.double(), COS[:1].double().expand(3, 8), SIN[:1].double().expand(3, 8)),
    check=close(X.double() * COS[:1].double() + torch.cat([-X[..., 4:], X[..., :4]], -1).double() * SIN[:1].double(), atol=1e-12))

# ---- relative_attention -------------------------------------------------------------------------
F = "relative_attention"
QA, KA, VA = randn(1, 2, 3, 4), randn(1, 2, 5, 4), randn(1, 2, 5, 4)
QT, KT, VT = randn(5, 2, 4), randn(5, 2, 4), randn(5, 2, 4)
row("attn-q-3d", F, lambda: ops.relative_attention(QA[0], KA, VA), **err(F, "q", "4-D", "3-D"))
row("attn-q-none", F, lambda: ops.relative_attention(None, KA, VA), **err(F, "q", "Tensor", "NoneType", TypeError))
row("attn-k-dtype", F, lambda: ops.relative_attention(QA, KA.double(), VA), **err(F, "k", "dtype", "Double"))
row("attn-q-int", F, lambda: ops.relative_attention(QA.long(), KA.long(), VA.long()), **err(F, "q", "float", "Long"))
row("attn-v-device", F, lambda: ops.relative_attention(QA, KA, VA.to(META)), **err(F, "v", "device", "meta"))
row("attn-batch", F, lambda: ops.relative_attention(QA, KA.expand(2, 2, 5, 4), VA.expand(2, 2, 5, 4)), **err(F, "k", "batch", "2"))
row("attn-gqa", F, lambda: ops.relative_attention(randn(1, 3, 3, 4), KA, VA), **err(F, "k", "divide|%", "2"))
row("attn-head-dim", F, lambda: ops.relative_attention(QA, randn(1, 2, 5, 6), VA), **err(F, "k", "head_dim", "6"))
row("attn-kv-len", F, lambda: ops.relative_attention(QA, KA, randn(1, 2, 4, 4)), **err(F, "v", "length|Lk|5", "4"))
row("attn-head-dim-257", F, lambda: ops.relative_attention(randn(1, 1, 1, 257), randn(1, 1, 1, 257), randn(1, 1, 1, 4)),
    **err(F, "q", "256", "257"))
row("attn-two-terms", F, lambda: ops.relative_attention(QA, KA, VA, slopes=S2, table=TAB), **err(F, "table", "one position term|at most one", "slopes"))
row("attn-qrel-alone", F, lambda: ops.relative_attention(QA, KA, VA, q_rel=QA), **err(F, "q_rel", "used only with 'rel_emb'", "a tensor without it"))
row("attn-scale-nan", F, lambda: ops.relative_attention(QA, KA, VA, scale=NAN), **err(F, "scale", "finite", "nan"))
row("attn-qoffset-huge", F, lambda: ops.relative_attention(QA, KA, VA, q_offset=2**62), **err(F, "q_offset", r"2\^61", str(2**62)))
row("attn-slopes-nan", F, lambda: ops.relative_attention(QA, KA, VA, slopes=torch.tensor([NAN, 1.0])), **err(F, "slopes", "finite", "nan"))
row("attn-slopes-heads", F, lambda: ops.relative_attention(QA, KA, VA, slopes=torch.ones(3)), **err(F, "slopes", "2", "3"))
row("attn-kerple-r2-neg", F, lambda: ops.relative_attention(QA, KA, VA, r1=R1, r2=-R2), **err(F, "r2", ">= 0", "-0.5"))
row("attn-cu-unsorted", F, lambda: ops.relative_attention(QT, KT, VT, layout="thd", cu_seqlens_q=torch.tensor([0, 4, 2, 5])),
    **err(F, "cu_seqlens_q", "non-decreasing|decreas", r"4.*2|2.*4"))
row("attn-cu-not-T", F, lambda: ops.relative_attention(QT, KT, VT, layout="thd", cu_seqlens_q=torch.tensor([0, 2, 4])),
    **err(F, "cu_seqlens_q", r"5|T", "4"))
row("attn-cu-float", F, lambda: ops.relative_attention(QT, KT, VT, layout="thd", cu_seqlens_q=CU.float()),
    **err(F, "cu_seqlens_q", "int64 or int32", "Float"))
row("attn-cu-device", F, lambda: ops.relative_attention(QT, KT, VT, layout="thd", cu_seqlens_q=CU.to(META)),
    **err(F, "cu_seqlens_q", "device", "meta"))
row("attn-kpm-float", F, lambda: ops.relative_attention(QA, KA, VA, key_padding_mask=torch.zeros(1, 5)),
    **err(F, "key_padding_mask", "dtype Bool", "Float"))
row("attn-kpm-thd", F, lambda: ops.relative_attention(QT, KT, VT, layout="thd", cu_seqlens_q=CU, key_padding_mask=torch.zeros(1, 5, dtype=torch.bool)),
    **err(F, "key_padding_mask", "bhsd", "thd|tensor"))
row("attn-empty-q", F, lambda: ops.relative_attention(QA[:, :, :0], KA, VA)[0], check=shape_is(1, 2, 0, 4))
row("attn-noncontiguous-alibi", F,
    lambda: ops.relative_attention(QA.double().transpose(2, 3).contiguous().transpose(2, 3), KA.double(), VA.double(),
                                   slopes=S2.double(), q_offset=2)[0],
    check=close(ref_attention(QA, KA, VA, ref_alibi(S2, 3, 5, 2, 0, False)), atol=1e-10))
row("attn-expanded-kv", F, lambda: ops.relative_attention(QA.double(), KA[:, :1].double().expand(1, 2, 5, 4), VA.double())[0],
    check=close(ref_attention(QA, KA[:, :1].expand(1, 2, 5, 4), VA), atol=1e-10))

# ---- forgetting_gate_bias (and the fused term) ------------------------------------------------------
F = "forgetting_gate_bias"
LF = torch.tensor([[[-0.5, -1.0, -0.25, -2.0], [-0.1, -0.2, -0.3, -0.4]]])  # (1, 2, 4)


def ref_fgate(lf, q_len, q_offset=0, k_offset=0):
    # Lin et al. 2025: D_ij = sum_{j < s <= t_i} log f_s for j <= t_i = q_offset - k_offset + i, -inf after
    lf = lf.double()
    out = torch.full(lf.shape[:2] + (q_len, lf.shape[2]), -INF, dtype=F64)
    for i in range(q_len):
        t = q_offset - k_offset + i
        for j in range(t + 1):
            out[:, :, i, j] = lf[:, :, j + 1 : t + 1].sum(-1)
    return out


row("fgate-2d", F, lambda: ops.forgetting_gate_bias(LF[0], 4), **err(F, "log_fgate", "3-D", "2-D"))
row("fgate-int", F, lambda: ops.forgetting_gate_bias(LF.long(), 4), **err(F, "log_fgate", "float", "Long"))
row("fgate-qlen-neg", F, lambda: ops.forgetting_gate_bias(LF, -1), **err(F, "q_len", ">= 0", "-1"))
row("fgate-query-past-keys", F, lambda: ops.forgetting_gate_bias(LF, 5), **err(F, "q_offset", "key position", "q_len = 5"))
row("fgate-query-before-keys", F, lambda: ops.forgetting_gate_bias(LF, 1, 0, 2), **err(F, "q_offset", "key position", "k_offset = 2"))
row("fgate-nan", F, lambda: ops.forgetting_gate_bias(torch.tensor([[[-1.0, NAN]]]), 2), **err(F, "log_fgate", "finite", r"log_fgate\[0, 0, 1\] = nan"))
row("fgate-neg-inf", F, lambda: ops.forgetting_gate_bias(torch.tensor([[[-INF, -1.0]]]), 2), **err(F, "log_fgate", "finite", r"log_fgate\[0, 0, 0\] = -inf"))
row("fgate-positive", F, lambda: ops.forgetting_gate_bias(torch.tensor([[[-1.0, 0.5]]]), 2), **err(F, "log_fgate", "<= 0", "0.5"))
row("fgate-offset-huge", F, lambda: ops.forgetting_gate_bias(LF, 1, 2**62, 2**62), **err(F, "q_offset", r"2\^61", str(2**62)))
row("fgate-bytes-overflow", F, lambda: ops.forgetting_gate_bias(torch.zeros(1, 1, 1).expand(2**20, 1, 2**21), 2**21),
    **err(F, "log_fgate", "too large", "shape"))
row("fgate-grad-shape", F, lambda: torch.ops.posenc.forgetting_gate_bias_backward(torch.zeros(1, 2, 3, 3), LF, 3, 0, 0),
    **err("forgetting_gate_bias_backward", "grad", r"\[1, 2, 3, 4\]", r"\[1, 2, 3, 3\]"))
row("fgate-zero-gates-defined", F, lambda: ops.forgetting_gate_bias(torch.zeros(1, 1, 3, dtype=F64), 3),
    check=close(ref_fgate(torch.zeros(1, 1, 3), 3), atol=0))
row("fgate-decode-row", F, lambda: ops.forgetting_gate_bias(LF.double(), 1, 3, 0), check=close(ref_fgate(LF, 1, 3, 0), atol=1e-12))
F = "relative_attention"
QF, KF, VF = randn(1, 2, 4, 4), randn(1, 2, 4, 4), randn(1, 2, 4, 4)
row("attn-fgate-not-causal", F, lambda: ops.relative_attention(QF, KF, VF, log_fgate=LF), **err(F, "log_fgate", "causal=True", "causal=False"))
row("attn-fgate-shape", F, lambda: ops.relative_attention(QF, KF, VF, causal=True, log_fgate=LF[:, :, :3]),
    **err(F, "log_fgate", r"\[1, 2, 4\]", r"\[1, 2, 3\]"))
row("attn-fgate-with-slopes", F, lambda: ops.relative_attention(QF, KF, VF, causal=True, slopes=S2, log_fgate=LF),
    **err(F, "log_fgate", "at most one", "slopes"))
row("attn-fgate-nan", F, lambda: ops.relative_attention(QF, KF, VF, causal=True, log_fgate=torch.full((1, 2, 4), NAN)),
    **err(F, "log_fgate", "finite", "nan"))
row("attn-fgate-offset", F, lambda: ops.relative_attention(QF, KF, VF, causal=True, q_offset=1, log_fgate=LF),
    **err(F, "q_offset", "key position", "1"))
row("attn-fgate-valid", F, lambda: ops.relative_attention(QF.double(), KF.double(), VF.double(), causal=True, log_fgate=LF.double())[0],
    check=close(ref_attention(QF, KF, VF, ref_fgate(LF, 4)), atol=1e-10))

# ---- the Python modules (posenc.nn), the C++ modules (posenc.cpp), scripted -------------------------
for impl, M in (("py", pnn), ("cpp", pcpp)):
    fam = "modules-" + impl
    row(f"{impl}-sin-dim-odd", fam, lambda M=M: M.SinusoidalPositionalEncoding(5),
        **opt("SinusoidalPositionalEncoding", "dim", "even", "5"))
    row(f"{impl}-sin-x-2d", fam, lambda M=M: M.SinusoidalPositionalEncoding(4)(torch.zeros(3, 4)),
        **err("SinusoidalPositionalEncoding", "x", "3-D|\\(batch, seq", r"\[3, 4\]"))
    row(f"{impl}-learned-maxlen-zero", fam, lambda M=M: M.LearnedPositionalEmbedding(0, 4),
        **opt("LearnedPositionalEmbedding", "max_len", "> 0", "0"))
    row(f"{impl}-learned-past-table", fam, lambda M=M: M.LearnedPositionalEmbedding(8, 4)(torch.zeros(1, 3, 4), offset=6),
        exc=RuntimeError, pattern=r"posenc\.LearnedPositionalEmbedding: position 8 is past the table of 8 positions \(max_len\)")
    row(f"{impl}-learned-offset-int64-max", fam, lambda M=M: M.LearnedPositionalEmbedding(8, 4)(torch.zeros(1, 3, 4), offset=I64_MAX),
        exc=RuntimeError, pattern=rf"posenc\.LearnedPositionalEmbedding: position {I64_MAX} \+ 2 is past the table of 8 positions")
    row(f"{impl}-learned-offset-neg", fam, lambda M=M: M.LearnedPositionalEmbedding(8, 4)(torch.zeros(1, 3, 4), offset=-1),
        **err("LearnedPositionalEmbedding", "offset", ">= 0", "-1"))
    row(f"{impl}-rotary-rd-odd", fam, lambda M=M: M.RotaryEmbedding(8, rotary_dim=3), **opt("RotaryEmbedding", "rotary_dim", "even", "3"))
    row(f"{impl}-rotary-base-one", fam, lambda M=M: M.RotaryEmbedding(8, base=1.0), **opt("RotaryEmbedding", "base", "> 1", "1"))
    row(f"{impl}-rotary-layout", fam, lambda M=M: M.RotaryEmbedding(8, layout="sbhd"), **opt("RotaryEmbedding", "layout", '"bhsd", "bshd" or "thd"', "sbhd"))
    row(f"{impl}-rotary-mixed-dtype", fam, lambda M=M: M.RotaryEmbedding(8)(X, X.double()),
        **err("RotaryEmbedding", "k", r"dtype of 'q' \((torch\.float32|Float)\)", "(torch.float64|Double)"))
    row(f"{impl}-rotary-mixed-device", fam, lambda M=M: M.RotaryEmbedding(8)(X, X.to(META)),
        **err("RotaryEmbedding", "k", r"device of 'q' \(cpu\)", "meta"))
    row(f"{impl}-rotary-q-dim", fam, lambda M=M: M.RotaryEmbedding(8)(randn(1, 2, 3, 6), X),
        **err("RotaryEmbedding", "q", r"last dimension dim \(8\)", r"\[1, 2, 3, 6\]"))
    row(f"{impl}-rotary-seq-len-neg", fam, lambda M=M: M.RotaryEmbedding(8)(X, X, seq_len=-1),
        **err("RotaryEmbedding", "seq_len", ">= 0", "-1"))
    row(f"{impl}-rotary-thd-no-cu", fam, lambda M=M: M.RotaryEmbedding(8, layout="thd")(XT, XT),
        **err("RotaryEmbedding", "cu_seqlens", "thd", "None"))
    row(f"{impl}-alibi-heads-zero", fam, lambda M=M: M.ALiBi(0), exc=(ValueError, RuntimeError),
        pattern=r"posenc\.(ALiBi|alibi_slopes): (option|argument) 'num_heads' must be > 0, but got 0")
    row(f"{impl}-alibi-qlen-neg", fam, lambda M=M: M.ALiBi(2)(-1, 3), **err("alibi_bias", "q_len", ">= 0", "-1"))
    row(f"{impl}-t5-buckets-odd", fam, lambda M=M: M.T5RelativeBias(2, num_buckets=7), **opt("T5RelativeBias", "num_buckets", "even", "7"))
    row(f"{impl}-kerple-power-eps", fam, lambda M=M: M.KERPLEBias(2, kind="power", eps=2.5),
        **opt("KERPLEBias", "eps", '<= 2 for kind "power"', "2.5"))
    row(f"{impl}-kerple-eps-nan", fam, lambda M=M: M.KERPLEBias(2, eps=NAN), **opt("KERPLEBias", "eps", "", "nan"))
    row(f"{impl}-kerple-kind", fam, lambda M=M: M.KERPLEBias(2, kind="exp"), **opt("KERPLEBias", "kind", "one of|log", "exp"))
    row(f"{impl}-cope-npos-zero", fam, lambda M=M: M.CoPE(0, 4), **opt("CoPE", "npos_max", "> 0", "0"))
    row(f"{impl}-cope-scale-inf", fam, lambda M=M: M.CoPE(4, 4, scale=INF), **opt("CoPE", "scale", "finite", "inf"))
    row(f"{impl}-cope-q-head-dim", fam, lambda M=M: M.CoPE(4, 4)(randn(1, 1, 3, 6), randn(1, 1, 3, 6)),
        **err("cope_scores", "pos_emb", r"head_dim \(6\)", r"\[4, 4\]"))
    row(f"{impl}-fgate-d-model", fam, lambda M=M: M.ForgettingGate(0, 2), **opt("ForgettingGate", "d_model", "> 0", "0"))
    row(f"{impl}-fgate-init-std", fam, lambda M=M: M.ForgettingGate(4, 2, init_std=-1.0), **opt("ForgettingGate", "init_std", ">= 0", "-1"))
    row(f"{impl}-fgate-x-rank", fam, lambda M=M: M.ForgettingGate(4, 2)(torch.randn(2, 4)),
        **err("ForgettingGate", "x", "3-D", r"\[2, 4\]"))
    row(f"{impl}-txl-int-q", fam, lambda M=M: M.TransformerXLRelativeScore(8, 2, 4)(torch.zeros(1, 2, 3, 4, dtype=torch.long)),
        **err("TransformerXLRelativeScore", "q", "float", "int64|Long"))
    row(f"{impl}-txl-heads", fam, lambda M=M: M.TransformerXLRelativeScore(8, 2, 4)(randn(1, 3, 3, 4)),
        **err("TransformerXLRelativeScore", "q", r"2|heads", r"\[1, 3, 3, 4\]"))
    row(f"{impl}-txl-mem-neg", fam, lambda M=M: M.TransformerXLRelativeScore(8, 2, 4)(randn(1, 2, 3, 4), mem_len=-1),
        **err("TransformerXLRelativeScore", "mem_len", ">= 0", "-1"))


def _scripted(module, *args, **kwargs):
    return torch.jit.script(module)(*args, **kwargs)


def script_err(module: str, arg: str, expected: str, given: str) -> dict:
    # TorchScript re-raises as torch.jit.Error, the original type and message inside
    e = err(module, arg, expected, given)
    return dict(exc=torch.jit.Error, pattern=r"RuntimeError: " + e["pattern"])


row("script-learned-past-table", "modules-py", lambda: _scripted(pnn.LearnedPositionalEmbedding(8, 4), torch.zeros(1, 3, 4), 6),
    exc=torch.jit.Error, pattern=r"RuntimeError: posenc\.LearnedPositionalEmbedding: position 8 is past the table of 8 positions")
row("script-rotary-mixed-dtype", "modules-py", lambda: _scripted(pnn.RotaryEmbedding(8), X, X.double()),
    **script_err("RotaryEmbedding", "k", r"dtype of 'q' \(torch.float32\)", "dtype torch.float64"))
row("script-cope-k-dtype", "modules-py", lambda: _scripted(pnn.CoPE(6, 4), QC, KC.double()),
    **err("cope_scores", "k", r"dtype of 'q' \(Float\)", "dtype Double"))
row("script-alibi-klen-neg", "modules-py", lambda: _scripted(pnn.ALiBi(2), 3, -1), **err("alibi_bias", "k_len", ">= 0", "-1"))
row("script-txl-int-q", "modules-py", lambda: _scripted(pnn.TransformerXLRelativeScore(8, 2, 4), torch.zeros(1, 2, 3, 4, dtype=torch.long)),
    **script_err("TransformerXLRelativeScore", "q", "floating dtype", "dtype torch.int64"))
row("script-sin-x-dim", "modules-py", lambda: _scripted(pnn.SinusoidalPositionalEncoding(4), torch.zeros(1, 3, 6)),
    **script_err("SinusoidalPositionalEncoding", "x", r"3-D tensor \(batch, seq, 4\)", r"\[1, 3, 6\]"))
row("script-kerple-alibi-ok", "modules-py", lambda: _scripted(pnn.ALiBi(2), 2, 3, 1, 0),
    check=close(ref_alibi(ops.alibi_slopes(2), 2, 3, 1, 0), atol=1e-6))

# ---- inputs that require grad where no gradient is defined -----------------------------------------


def _rope_invfreq_requires_grad():
    inv = INV4.clone().requires_grad_()
    x = X.clone().requires_grad_()
    out = ops.rope(x, None, inv)
    out.sum().backward()
    return inv.grad


row("grad-rope-invfreq", "rope", _rope_invfreq_requires_grad, check=lambda g_: None if g_ is None else pytest.fail("inv_freq got a gradient"))


def _rope_xpos_zeta_requires_grad():
    zeta = torch.ones(4, requires_grad=True)
    out = ops.rope(X.clone().requires_grad_(), None, INV4, xpos_zeta=zeta)
    out.sum().backward()
    return zeta.grad


# documented: xpos_zeta (like inv_freq, positions, cu_seqlens) gets no gradient
row("grad-rope-xpos-zeta", "rope", _rope_xpos_zeta_requires_grad,
    check=lambda g_: None if g_ is None else pytest.fail("xpos_zeta got a gradient"))


def _sin_table_positions_grad():
    return torch.ops.posenc.sinusoidal_table(torch.arange(3), 4).requires_grad


row("grad-sin-table-none", "sinusoidal_table", _sin_table_positions_grad, check=lambda r: None if r is False else pytest.fail("table requires grad"))

# ---- offsets and positions near the int64 limits; backward gradients of the wrong dtype ----------
F = "rope"
row("rope-positions-offset-wraps", F, lambda: ops.rope(X, torch.tensor([0, 1, I64_MAX - 5]), INV4, offset=10),
    **err(F, "offset", r"every position offset \+ positions\[i\] within int64", rf"10 with positions in \[0, {I64_MAX - 5}\]"))
row("rope-positions-offset-wraps-negative", F, lambda: ops.rope(X, torch.tensor([[-(2**62), 0, 1]]), INV4, offset=I64_MIN + 2**61),
    **err(F, "offset", "within int64", rf"{I64_MIN + 2**61} with positions in \[{-(2**62)}, 1\]"))
row("rope-int32-positions-offset-wraps", F,
    lambda: ops.rope(X, torch.tensor([0, 1, 2**31 - 1], dtype=torch.int32), INV4, offset=I64_MAX - 2**30),
    **err(F, "offset", "within int64", rf"{I64_MAX - 2**30} with positions in \[0, {2**31 - 1}\]"))
row("rope-backward-positions-offset-wraps", F,
    lambda: torch.ops.posenc.rope_backward(X, torch.tensor([5, 6, 7]), INV4, I64_MAX - 6, None, False, "bhsd"),
    **err("rope_backward", "offset", "within int64", rf"{I64_MAX - 6} with positions in \[5, 7\]"))
# the last position exactly at the limit is valid: the same numbers as without positions
row("rope-positions-offset-at-limit", F, lambda: ops.rope(X, torch.tensor([0, 1, 2]), INV4, offset=I64_MAX - 2),
    check=lambda out: None if torch.equal(out, ops.rope(X, None, INV4, offset=I64_MAX - 2)) else pytest.fail("differs"))
row("rope-int32-positions-negative-offset-ok", F,
    lambda: ops.rope(X.double(), torch.tensor([-3, 0, 2**31 - 1], dtype=torch.int32), INV4.double(), offset=-(2**31)),
    check=close(ref_rope(X, torch.tensor([-3, 0, 2**31 - 1]) - 2**31, INV4.double()), atol=1e-9))
row("rope-offset-python-int-past-int64", F, lambda: ops.rope(X, None, INV4, offset=2**63),
    **err(F, "offset", r"within int64 \[-2\^63, 2\^63 - 1\]", str(2**63)))
row("rope-xpos-centre-past-int64", F, lambda: ops.rope(X, None, INV4, xpos_centre=-(2**63) - 1),
    **err(F, "xpos_centre", "within int64", str(-(2**63) - 1)))
row("sin-offset-python-int-past-int64", "sinusoidal_table", lambda: ops.sinusoidal_table(0, 4, offset=2**64),
    **err("sinusoidal_table", "offset", "within int64", str(2**64)))
row("sin-dim-python-int-past-int64", "sinusoidal_table", lambda: ops.sinusoidal_table(2, 2**64),
    **err("sinusoidal_table", "dim", "within int64", str(2**64)))
row("alibi-slopes-heads-past-int64", "alibi_slopes", lambda: ops.alibi_slopes(2**63),
    **err("alibi_slopes", "num_heads", "within int64", str(2**63)))
row("alibi-qoffset-python-int-past-int64", "alibi_bias", lambda: ops.alibi_bias(S2, 2, 2, q_offset=2**63),
    **err("alibi_bias", "q_offset", "within int64", str(2**63)))
row("alibi-klen-python-int-past-int64", "alibi_bias", lambda: ops.alibi_bias(S2, 2, 2**64),
    **err("alibi_bias", "k_len", "within int64", str(2**64)))
row("t5-koffset-python-int-past-int64", "t5_bias", lambda: ops.t5_bias(TAB, 2, 2, k_offset=I64_MIN - 1),
    **err("t5_bias", "k_offset", "within int64", str(I64_MIN - 1)))
row("t5-bucket-maxdist-past-int64", "t5_relative_bucket", lambda: ops.t5_relative_bucket(RP, max_distance=2**63),
    **err("t5_relative_bucket", "max_distance", "within int64", str(2**63)))
row("kerple-qlen-python-int-past-int64", "kerple_bias", lambda: ops.kerple_bias(R1, R2, 2**70, 2),
    **err("kerple_bias", "q_len", "within int64", str(2**70)))
row("relpos-default-klen-past-int64", "rel_pos_scores", lambda: ops.rel_pos_scores(Q4, REL, q_offset=2**62, k_offset=-(2**62)),
    **err("rel_pos_scores", "k_len", r"\(default q_offset \+ q_len - k_offset\) must be within int64",
          rf"q_offset {2**62}, q_len 3 and k_offset {-(2**62)}"))
row("relpos-koffset-python-int-past-int64", "rel_pos_scores", lambda: ops.rel_pos_scores(Q4, REL, k_offset=2**63, k_len=3),
    **err("rel_pos_scores", "k_offset", "within int64", str(2**63)))
row("attn-koffset-python-int-past-int64", "relative_attention", lambda: ops.relative_attention(QA, KA, VA, k_offset=-(2**64)),
    **err("relative_attention", "k_offset", "within int64", str(-(2**64))))
row("invfreq-dim-python-int-past-int64", "rope_inv_freq", lambda: ops.rope_inv_freq(2**64),
    **err("rope_inv_freq", "dim", "within int64", str(2**64)))
# posenc.nn modules (the C++ twins take int64 through pybind11, which raises its TypeError)
row("py-rotary-offset-past-int64", "modules-py", lambda: pnn.RotaryEmbedding(8)(X, X, offset=2**63),
    **err("RotaryEmbedding", "offset", "within int64", str(2**63)))
row("py-txl-mem-len-past-int64", "modules-py", lambda: pnn.TransformerXLRelativeScore(8, 2, 4)(Q4, mem_len=2**63),
    **err("TransformerXLRelativeScore", "mem_len", "within int64", str(2**63)))
row("py-alibi-koffset-past-int64", "modules-py", lambda: pnn.ALiBi(2)(2, 2, 0, 2**63),
    **err("alibi_bias", "k_offset", "within int64", str(2**63)))

# the gradient of a backward op must have the forward output's dtype (no silent conversion)
GRAD_DTYPE = r"must have the dtype of the forward's output, the dtype of '{}' \({}\)"
row("relpos-backward-grad-dtype", "rel_pos_scores",
    lambda: torch.ops.posenc.rel_pos_scores_backward(torch.zeros(1, 2, 3, 3), Q4.double(), REL.double(), 0, 0, 3, None),
    **err("rel_pos_scores_backward", "grad", GRAD_DTYPE.format("q", "Double"), "dtype Float"))
row("alibi-backward-grad-dtype", "alibi_bias",
    lambda: torch.ops.posenc.alibi_bias_backward(torch.zeros(2, 3, 3, dtype=F64), S2, 3, 3, 0, 0, True),
    **err("alibi_bias_backward", "grad", GRAD_DTYPE.format("slopes", "Float"), "dtype Double"))
row("t5-backward-grad-dtype", "t5_bias",
    lambda: torch.ops.posenc.t5_bias_backward(torch.zeros(2, 3, 3, dtype=torch.bfloat16), TAB, 3, 3, 0, 0, True, 128),
    **err("t5_bias_backward", "grad", GRAD_DTYPE.format("table", "Float"), "dtype BFloat16"))
row("kerple-backward-grad-dtype", "kerple_bias",
    lambda: torch.ops.posenc.kerple_bias_backward(torch.zeros(2, 3, 3, dtype=torch.half), R1, R2, 3, 3, 0, 0, "log", True),
    **err("kerple_bias_backward", "grad", GRAD_DTYPE.format("r1", "Float"), "dtype Half"))


def _attention_backward(grad_out_dtype, grad_lse_dtype=None):
    q, k, v = QA.double(), KA.double(), VA.double()
    out, lse = ops.relative_attention(q, k, v)
    g_lse = None if grad_lse_dtype is None else torch.zeros_like(lse, dtype=grad_lse_dtype)
    return torch.ops.posenc.relative_attention_backward(
        torch.zeros_like(out, dtype=grad_out_dtype), g_lse, q, k, v, out, lse, None, None, None, None,
        None, None, False, None, None, 0, 0, None, None, None, "bhsd", None, None, None, None)


row("attn-backward-grad-out-dtype", "relative_attention", lambda: _attention_backward(torch.float32),
    **err("relative_attention_backward", "grad_out", GRAD_DTYPE.format("q", "Double"), "dtype Float"))
row("attn-backward-grad-lse-dtype", "relative_attention", lambda: _attention_backward(F64, torch.float32),
    **err("relative_attention_backward", "grad_lse", GRAD_DTYPE.format("lse", "Double"), "dtype Float"))
# the matching dtypes work: alibi's slope gradient is sum(grad * -d) (fp64 reference)
row("alibi-backward-grad-dtype-ok", "alibi_bias",
    lambda: torch.ops.posenc.alibi_bias_backward(torch.ones(2, 3, 4), S2, 3, 4, 1, 0, True),
    check=close(-distances(3, 4, 1, 0).sum().expand(2), atol=1e-5))

# ---- config readers: posenc.hf.rope_from_config, rope_config_from_json -------------------------------
F = "config"
BASE = {"head_dim": 64, "rope_theta": 10000.0, "max_position_embeddings": 2048}


def cfg(**kw):
    d = dict(BASE)
    d.update(kw)
    return d


row("cfg-no-head-dim", F, lambda: hf.rope_from_config({"rope_theta": 1e4}),
    exc=ValueError, pattern=r"posenc\.hf\.rope_from_config: the config needs head_dim or hidden_size and num_attention_heads, but got head_dim=None")
row("cfg-unknown-type", F, lambda: hf.rope_from_config(cfg(rope_scaling={"rope_type": "warp", "factor": 2.0})),
    exc=ValueError, pattern=r"posenc\.hf\.rope_from_config: .*rope.type.*warp")
row("cfg-theta-nan", F, lambda: hf.rope_from_config(cfg(rope_theta=NAN)).compute(16),
    exc=(RuntimeError, ValueError), pattern=r"posenc\.[a-z_.]+: (argument|field|option) '(rope_theta|base)'.*finite.*nan")
row("cfg-theta-neg", F, lambda: hf.rope_from_config(cfg(rope_theta=-5.0)).compute(16),
    exc=(RuntimeError, ValueError), pattern=r"posenc\.[a-z_.]+: (argument|field|option) '(rope_theta|base)'.*> 1.*-5")
row("cfg-linear-factor-zero", F, lambda: hf.rope_from_config(cfg(rope_scaling={"rope_type": "linear", "factor": 0.0})).compute(16),
    exc=(RuntimeError, ValueError), pattern=r"posenc\.[a-z_.]+: (argument|field) 'factor'.*>.*0")
row("cfg-yarn-factor-inf", F, lambda: hf.rope_from_config(cfg(rope_scaling={"rope_type": "yarn", "factor": INF})).compute(16),
    exc=(RuntimeError, ValueError), pattern=r"posenc\.[a-z_.]+: (argument|field) 'factor'.*finite.*inf")
row("cfg-partial-big", F, lambda: hf.rope_from_config(cfg(partial_rotary_factor=1.5)).compute(16),
    exc=(RuntimeError, ValueError), pattern=r"posenc\.[a-z_.]+: (argument|field) 'partial_rotary_factor'.*1\.5")
row("cfg-longrope-short-len", F, lambda: hf.rope_from_config(cfg(rope_scaling={"rope_type": "longrope", "short_factor": [1.0], "long_factor": [1.0] * 32, "original_max_position_embeddings": 1024})).compute(16),
    exc=(RuntimeError, ValueError), pattern=r"posenc\.[a-z_.]+: (argument|field) 'short_factor'.*32.*1")
# transformers accepts an odd head_dim: base^(-arange(0, 63, 2) / 63), 32 frequencies
row("cfg-head-dim-odd-as-hf", F, lambda: hf.rope_from_config(cfg(head_dim=63)).compute(16)[0],
    check=close(10000.0 ** (-torch.arange(0, 63, 2, dtype=F64) / 63), atol=1e-7))
row("cfg-theta-string", F, lambda: hf.rope_from_config(cfg(rope_theta="big")),
    **err("rope_scaling_inv_freq", "rope_theta", "a number", "str 'big'"))
row("cfg-theta-numeric-string", F, lambda: hf.rope_from_config(cfg(rope_theta="5e5")).rope_theta,
    check=lambda v: None if v == 5e5 else pytest.fail(f"rope_theta {v}"))  # as float() reads it
row("cfg-head-dim-string", F, lambda: hf.rope_from_config(cfg(head_dim="wide")),
    **err("rope_scaling_inv_freq", "head_dim", "an integer", "str 'wide'"))
row("cfg-partial-list", F, lambda: hf.rope_from_config(cfg(partial_rotary_factor=[0.5])),
    **err("rope_scaling_inv_freq", "partial_rotary_factor", "a number", r"list \[0\.5\]"))
row("json-not-json", F, lambda: hf.rope_config_from_json("{\"head_dim\": 64,"),
    exc=ValueError, pattern=r"posenc\.rope_config_from_json: .*JSON")
row("json-not-object", F, lambda: hf.rope_config_from_json("[1, 2]"),
    exc=ValueError, pattern=r"posenc\.rope_config_from_json: .*object")
row("json-theta-type", F, lambda: hf.rope_config_from_json(json.dumps(cfg(rope_theta="big"))),
    exc=ValueError, pattern=r"posenc\.rope_config_from_json: .*rope_theta.*number.*\"big\"|posenc\.rope_config_from_json: .*rope_theta")
row("json-nan-literal", F, lambda: hf.rope_config_from_json('{"head_dim": 64, "rope_theta": NaN}'),
    exc=ValueError, pattern=r"posenc\.rope_config_from_json: .*")
row("json-deep-nesting", F, lambda: hf.rope_config_from_json("[" * 100000 + "]" * 100000),
    exc=ValueError, pattern=r"posenc\.rope_config_from_json: .*(deep|nest|object)")
row("json-factor-neg", F, lambda: hf.rope_config_from_json(json.dumps(cfg(rope_scaling={"rope_type": "linear", "factor": -2.0}))).compute(16),
    exc=(RuntimeError, ValueError), pattern=r"posenc\.[a-z_.]+: (argument|field) 'factor'.*-2")
row("json-huge-int", F, lambda: hf.rope_config_from_json('{"head_dim": 99999999999999999999999, "rope_theta": 10000.0}'),
    exc=(ValueError, RuntimeError), pattern=r"posenc\.rope_config_from_json: .*head_dim")
row("json-valid-llama3", F, lambda: hf.rope_config_from_json(json.dumps(cfg(rope_theta=500000.0, rope_scaling={
    "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192}))).compute(16)[0],
    check=lambda inv: _check_llama3(inv))


def _check_llama3(inv):
    # Meta Llama 3: wavelengths above orig/low_freq_factor divided by factor, below
    # orig/high_freq_factor kept, smooth interpolation in between
    base = 500000.0 ** (-torch.arange(0, 64, 2, dtype=F64) / 64)
    wl = 2 * math.pi / base
    lo, hi, orig, factor = 8192 / 1.0, 8192 / 4.0, 8192, 8.0
    smooth = (orig / wl - 1.0) / (4.0 - 1.0)
    mid = (1 - smooth) * base / factor + smooth * base
    ref = torch.where(wl > lo, base / factor, torch.where(wl < hi, base, mid))
    close(ref, atol=0, rtol=1e-6)(inv)


# ---- the valid call each family runs after its rows ------------------------------------------------


def _valid(family: str) -> None:
    if family == "sinusoidal_table":
        close(ref_sinusoidal([3, 4], 4), atol=1e-6)(ops.sinusoidal_table(2, 4, offset=3))
    elif family == "alibi_slopes":
        close(torch.tensor([2.0**-4, 2.0**-8], dtype=F64), atol=0)(ops.alibi_slopes(2, dtype=F64))
    elif family == "alibi_bias":
        close(ref_alibi(S2, 3, 4, 1, 0), atol=1e-6)(ops.alibi_bias(S2, 3, 4, 1, 0))
    elif family == "t5_relative_bucket":
        close(torch.tensor([float(ref_t5_bucket(v)) for v in range(-5, 6)]), atol=0)(ops.t5_relative_bucket(RP))
    elif family == "t5_bias":
        close(ref_t5_bias(TAB, 2, 3), atol=1e-6)(ops.t5_bias(TAB, 2, 3))
    elif family == "kerple_bias":
        close(ref_kerple(R1, R2, 3, 3), atol=1e-5)(ops.kerple_bias(R1, R2, 3, 3))
    elif family == "dynamic_position_bias":
        close(ref_dpb(DW, DB, 3, 4, 1, 0, True), atol=1e-6)(ops.dynamic_position_bias(DW, DB, 3, 4, 1, 0, True))
    elif family == "fire_bias":
        close(ref_fire(*FP, 3, 4, 1, 0), atol=1e-6)(ops.fire_bias(*FP, 3, 4, 1, 0))
    elif family == "rel_pos_scores":
        close(ref_rel_pos(Q4, REL, 0, 0, 3), atol=1e-5)(ops.rel_pos_scores(Q4, REL))
    elif family == "cope_scores":
        close(ref_cope(QC, KC, EC, 2, 0), atol=1e-5)(ops.cope_scores(QC, KC, EC, None, 2, 0))
    elif family == "rope_inv_freq":
        close(10000.0 ** (-torch.arange(0, 8, 2, dtype=F64) / 8), atol=1e-7)(ops.rope_inv_freq(8))
    elif family in ("rope", "apply_rotary_pos_emb"):
        close(ref_rope(X, torch.arange(3), INV4), atol=1e-5)(ops.rope(X, None, INV4))
    elif family == "forgetting_gate_bias":
        close(ref_fgate(LF, 4), atol=1e-6)(ops.forgetting_gate_bias(LF, 4))
    elif family == "relative_attention":
        close(ref_attention(QA, KA, VA), atol=1e-5)(ops.relative_attention(QA, KA, VA)[0])
    elif family.startswith("modules-"):
        M = pnn if family == "modules-py" else pcpp
        q, k = M.RotaryEmbedding(8)(X, X)
        close(ref_rope(X, torch.arange(3), INV4), atol=1e-5)(q)
        close(ref_alibi(ops.alibi_slopes(2), 2, 2), atol=1e-6)(M.ALiBi(2)(2, 2))
    elif family == "config":
        inv, factor = hf.rope_from_config(BASE).compute(16)
        close(10000.0 ** (-torch.arange(0, 64, 2, dtype=F64) / 64), atol=1e-7)(inv)
    else:
        raise AssertionError(f"no valid call for family {family}")


@pytest.mark.parametrize("case", ROWS)
def test_bad_input(case: Row) -> None:
    if case.exc is None:
        case.check(case.fn())
    else:
        with pytest.raises(case.exc) as info:
            case.fn()
        msg = str(info.value)
        assert re.search(case.pattern, msg, re.DOTALL), f"message {msg!r} does not match {case.pattern!r}"
    _valid(case.family)


def test_table_size() -> None:
    assert len(ROWS) >= 100
