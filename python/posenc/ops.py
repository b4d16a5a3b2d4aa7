"""Typed, documented functions over ``torch.ops.posenc.*``.

All math lives in the C++ ops (CPU kernels, C++ autograd and Meta kernels); these wrappers
only resolve defaults. Every function is TorchScript-scriptable and traceable by
``torch.compile(fullgraph=True)``.

Position contract of the relative ops: query ``i`` sits at absolute position
``q_offset + i`` and key ``j`` at ``k_offset + j``. Offsets are how KV-cache decoding,
Transformer-XL memory and context parallelism line queries up with keys. Errors are
``RuntimeError`` naming the op, the argument, what was expected and what was given.
"""
from typing import List, Optional, Tuple

import torch
from torch import Tensor

__all__ = [
    "sinusoidal_table",
    "alibi_slopes",
    "alibi_bias",
    "t5_relative_bucket",
    "t5_bias",
    "kerple_bias",
    "dynamic_position_bias",
    "fire_bias",
    "rel_pos_scores",
    "cope_scores",
    "rope_inv_freq",
    "rope",
    "rope_qk",
    "apply_rotary_pos_emb",
    "relative_attention",
    "forgetting_gate_bias",
]


def _dtype_name(dtype: torch.dtype) -> str:
    """``str(dtype)`` for error messages, also under TorchScript (which prints a dtype as its
    enum number)."""
    names = [
        (torch.float32, "torch.float32"), (torch.float64, "torch.float64"),
        (torch.float16, "torch.float16"), (torch.bfloat16, "torch.bfloat16"),
        (torch.int64, "torch.int64"), (torch.int32, "torch.int32"), (torch.int16, "torch.int16"),
        (torch.int8, "torch.int8"), (torch.uint8, "torch.uint8"), (torch.bool, "torch.bool"),
        (torch.complex64, "torch.complex64"), (torch.complex128, "torch.complex128"),
    ]
    for d, name in names:
        if dtype == d:
            return name
    return "another dtype"


def _check_int64(op: str, arg: str, value: int) -> None:
    """A Python int outside int64 would reach the dispatcher as torch's schema error ("value
    cannot be converted to type int64_t"); raise a posenc one. (Under TorchScript every int is
    an int64 and the check never fires.)"""
    if value > 9223372036854775807 or value < -9223372036854775807 - 1:
        raise RuntimeError(
            f"posenc.{op}: argument '{arg}' must be within int64 [-2^63, 2^63 - 1], but got {value}"
        )


def _check_int64_opt(op: str, arg: str, value: Optional[int]) -> None:
    if value is not None:
        _check_int64(op, arg, value)


def _check_lengths_offsets(op: str, q_len: int, k_len: int, q_offset: int, k_offset: int) -> None:
    _check_int64(op, "q_len", q_len)
    _check_int64(op, "k_len", k_len)
    _check_int64(op, "q_offset", q_offset)
    _check_int64(op, "k_offset", k_offset)


def sinusoidal_table(
    num_positions: int,
    dim: int,
    base: float = 10000.0,
    offset: int = 0,
    interleaved: bool = True,
    dtype: Optional[torch.dtype] = None,
    device: Optional[torch.device] = None,
) -> Tensor:
    """Sinusoidal absolute position table (Vaswani et al. 2017, §3.5).

    Returns ``(num_positions, dim)`` in ``dtype`` (default float32); row ``p`` encodes the
    absolute position ``offset + p`` (``offset`` may be negative, e.g. for relative
    distances). Angles are computed in fp64 and rounded once.

    * ``interleaved=True`` (the paper): ``[sin(p w_0), cos(p w_0), sin(p w_1), ...]`` with
      ``w_i = base ** (-2 i / dim)``.
    * ``interleaved=False`` (tensor2tensor ``get_timing_signal_1d``, fairseq, Transformer-XL
      ports): all sines then all cosines, ``v_i = exp(-i ln(base) / max(dim/2 - 1, 1))``.

    Values are rounded once from fp64 to ``dtype`` (float16/bfloat16/float32/float64). Not
    differentiable. ``torch.ops.posenc.sinusoidal_table(positions, dim, base, interleaved,
    dtype)`` takes explicit int64 or int32 positions ``(N,)``.

    Errors: ``dim`` must be even and > 0, ``num_positions`` >= 0, ``base`` finite and > 0,
    ``dtype`` floating, ``offset + num_positions - 1`` within int64; a table whose size in
    bytes overflows int64 (checked before the positions are allocated), or that cannot be
    allocated (``"argument 'num_positions' is too large: the output cannot be allocated"``,
    with its size in bytes).
    """
    _check_int64("sinusoidal_table", "num_positions", num_positions)
    _check_int64("sinusoidal_table", "dim", dim)
    _check_int64("sinusoidal_table", "offset", offset)
    if num_positions < 0:
        raise RuntimeError(
            f"posenc.sinusoidal_table: argument 'num_positions' must be >= 0, but got {num_positions}"
        )
    # As the C++ check: sizes (0 counted as 1) times the element size must fit in int64. The
    # element size (at most 8 for the float dtypes) is only looked up for huge tables.
    int64_max = 9223372036854775807
    if dim >= 0 and max(num_positions, 1) > int64_max // 8 // max(dim, 1):
        out_dtype = torch.float32 if dtype is None else dtype
        max_elems = int64_max // torch.empty(0, dtype=out_dtype).element_size()
        if max(num_positions, 1) > max_elems // max(dim, 1):
            arg = "num_positions" if num_positions >= dim else "dim"
            raise RuntimeError(
                f"posenc.sinusoidal_table: argument '{arg}' is too large: the output's size in "
                f"bytes must fit in int64, but got an output of shape [{num_positions}, {dim}] "
                f"and dtype {_dtype_name(out_dtype)}"
            )
    # As the C++ bound: more than 2^47 bytes (the address space of 48-bit virtual addresses)
    # cannot be allocated, and with memory overcommit an attempt could "succeed" and then kill
    # the process when written.
    if dim > 0 and num_positions * dim > 2**47 // 8:
        out_dtype = torch.float32 if dtype is None else dtype
        size = torch.empty(0, dtype=out_dtype).element_size() * num_positions * dim
        if size > 2**47:
            arg = "num_positions" if num_positions >= dim else "dim"
            raise RuntimeError(
                f"posenc.sinusoidal_table: argument '{arg}' is too large: the output cannot be "
                f"allocated (more than 2^47 bytes, the address space), but got an output of "
                f"shape [{num_positions}, {dim}] and dtype {_dtype_name(out_dtype)} ({size} bytes)"
            )
    if num_positions > 0 and (offset < -int64_max - 1 or offset > int64_max - (num_positions - 1)):
        raise RuntimeError(
            f"posenc.sinusoidal_table: argument 'offset' must keep the last position "
            f"offset + num_positions - 1 within int64, but got offset {offset} with "
            f"num_positions {num_positions}"
        )
    if torch.jit.is_scripting():
        positions = torch.arange(num_positions, dtype=torch.long, device=device).add_(offset)
    else:
        positions = _table_positions(offset, num_positions, dim, dtype, device)
    return torch.ops.posenc.sinusoidal_table(positions, dim, base, interleaved, dtype)


@torch.jit.unused
def _table_positions(
    offset: int, num_positions: int, dim: int, dtype: Optional[torch.dtype],
    device: Optional[torch.device],
) -> Tensor:
    # The positions are allocated before the op's own output (which the op guards the same
    # way); a table that cannot be allocated gets a posenc message, not the allocator's.
    # Eager only: TorchScript has no try (a scripted call gets the allocator's error).
    try:
        positions = torch.arange(num_positions, dtype=torch.long, device=device)
    except RuntimeError as e:  # torch.OutOfMemoryError (CUDA) is a RuntimeError too
        out_dtype = torch.float32 if dtype is None else dtype
        size = torch.empty(0, dtype=out_dtype).element_size() * num_positions * dim
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise RuntimeError(
            f"posenc.sinusoidal_table: argument 'num_positions' is too large: the output cannot "
            f"be allocated, but got an output of shape [{num_positions}, {dim}] and dtype "
            f"{out_dtype} ({size} bytes; {why})"
        ) from None
    return positions.add_(offset)  # arange(offset, offset + n) would overflow at the int64 limit


def alibi_slopes(
    num_heads: int, dtype: Optional[torch.dtype] = None, device: Optional[torch.device] = None
) -> Tensor:
    """ALiBi head slopes (Press et al. 2022, §3), ``(num_heads,)`` in ``dtype`` (default float32).

    For ``n`` a power of two: ``2 ** (-8 k / n)``, ``k = 1..n``. Otherwise the slopes of the
    largest power of two ``n < num_heads`` followed by the odd-numbered slopes of ``2n`` heads
    (the paper's reference implementation). Computed in fp64. Errors: ``num_heads`` > 0.
    """
    _check_int64("alibi_slopes", "num_heads", num_heads)
    return torch.ops.posenc.alibi_slopes(num_heads, dtype=dtype, device=device)


def alibi_bias(
    slopes: Tensor,
    q_len: int,
    k_len: int,
    q_offset: int = 0,
    k_offset: int = 0,
    causal: bool = True,
    out: Optional[Tensor] = None,
) -> Tensor:
    """ALiBi attention bias (Press et al. 2022, eq. in §3), ``(H, q_len, k_len)``.

    ``slopes``: ``(H,)`` float16/bfloat16/float32/float64. With ``d = q_pos - k_pos``:
    causal ``-slope * d`` (keys after the query get positive values; the causal mask removes
    them), bidirectional ``-slope * |d|``. Output dtype is the slopes' dtype; gradient flows to
    ``slopes``. Add to ``q @ k^T`` or pass (unsqueezed) as ``attn_mask`` to SDPA.

    Errors: ``slopes`` 1-D floating; lengths >= 0; an output whose size in bytes overflows
    int64 (``"argument 'k_len' is too large: ..."``); non-finite slopes
    (``"argument 'slopes' must be finite, but got slopes[i] = nan"``), checked for CPU
    tensors only: on CUDA the check would need a stream sync on every call, and NaN/inf
    slopes give a NaN/inf bias there.

    ``out``: optional contiguous ``(H, q_len, k_len)`` tensor of the slopes' dtype and device to
    write into (returned). Reusing one buffer across calls with the same lengths skips the page
    faults of a fresh output, which are most of this op's time on the CPU. The out= form records
    no autograd graph: with grad mode on, slopes' that require grad raise (as ATen's out= ops do).
    Errors for a wrong ``out``: shape, dtype, device or strides, named in the message.
    """
    _check_lengths_offsets("alibi_bias", q_len, k_len, q_offset, k_offset)
    if out is None:
        return torch.ops.posenc.alibi_bias(slopes, q_len, k_len, q_offset, k_offset, causal)
    torch.ops.posenc.alibi_bias(slopes, q_len, k_len, q_offset, k_offset, causal, out=out)
    return out


def t5_relative_bucket(
    relative_position: Tensor,
    bidirectional: bool = True,
    num_buckets: int = 32,
    max_distance: int = 128,
) -> Tensor:
    """T5 relative position buckets (Raffel et al. 2020), int64, same shape as the input.

    ``relative_position`` is ``key - query`` (int64). Matches Hugging Face
    ``T5Attention._relative_position_bucket`` including the final clamp to the last bucket:
    half the buckets are exact distances, the rest log-spaced up to ``max_distance``;
    bidirectional uses half the buckets per direction (positive distances in the upper half),
    causal puts every key after the query in bucket 0. The log term is evaluated in fp32 in
    HF's order, so bucket boundaries agree with HF exactly. Not differentiable.

    Errors: ``relative_position`` must be int64; ``num_buckets`` even and >= 4 when
    bidirectional, >= 2 when causal; ``max_distance`` > ``max_exact`` (the exact buckets per
    direction, ``num_buckets // 2`` halved once more when bidirectional).
    """
    _check_int64("t5_relative_bucket", "num_buckets", num_buckets)
    _check_int64("t5_relative_bucket", "max_distance", max_distance)
    return torch.ops.posenc.t5_relative_bucket(
        relative_position, bidirectional, num_buckets, max_distance
    )


def t5_bias(
    table: Tensor,
    q_len: int,
    k_len: int,
    q_offset: int = 0,
    k_offset: int = 0,
    bidirectional: bool = True,
    max_distance: int = 128,
    out: Optional[Tensor] = None,
) -> Tensor:
    """T5 relative attention bias, ``(H, q_len, k_len)``.

    ``table``: ``(num_buckets, H)`` (the weight of HF's ``relative_attention_bias``
    embedding). ``out[h, i, j] = table[bucket(k_pos - q_pos), h]``; the bucket is computed
    in the kernel (no bucket tensor). Output has the table's dtype (float16/bfloat16/float32/
    float64). Gradient flows to ``table`` (deterministic reduction per head and bucket).

    Errors: ``table`` 2-D floating, its row count obeying the ``num_buckets`` rules of
    :func:`t5_relative_bucket`; ``max_distance`` > ``max_exact``; lengths >= 0; an output
    whose size in bytes overflows int64.

    ``out``: optional contiguous ``(H, q_len, k_len)`` tensor of the table's dtype and device to
    write into (returned). Reusing one buffer across calls with the same lengths skips the page
    faults of a fresh output, which are most of this op's time on the CPU. The out= form records
    no autograd graph: with grad mode on, table's that require grad raise (as ATen's out= ops do).
    Errors for a wrong ``out``: shape, dtype, device or strides, named in the message.
    """
    _check_lengths_offsets("t5_bias", q_len, k_len, q_offset, k_offset)
    _check_int64("t5_bias", "max_distance", max_distance)
    if out is None:
        return torch.ops.posenc.t5_bias(
            table, q_len, k_len, q_offset, k_offset, bidirectional, max_distance
        )
    torch.ops.posenc.t5_bias(
        table, q_len, k_len, q_offset, k_offset, bidirectional, max_distance, out=out
    )
    return out


def kerple_bias(
    r1: Tensor,
    r2: Tensor,
    q_len: int,
    k_len: int,
    q_offset: int = 0,
    k_offset: int = 0,
    kind: str = "log",
    causal: bool = True,
    out: Optional[Tensor] = None,
) -> Tensor:
    """KERPLE bias (Chi et al. 2022, eqs. for the logarithmic and power kernels), ``(H, q_len, k_len)``.

    ``r1, r2``: ``(H,)``, same floating dtype and device, both > 0 in a trained model (the
    module clamps them). ``kind="log"``: ``-r1 * log(1 + r2 * d)``; ``kind="power"``:
    ``-r1 * d ** r2`` (KERPLE keeps ``0 < r2 <= 2``), taken as 0 at ``d = 0`` for every ``r2``
    with ``d/dr2 = 0`` there. ``d = |q_pos - k_pos|`` (bidirectional) or
    ``max(q_pos - k_pos, 0)`` (causal: future keys get 0; the causal mask removes them).
    Output has the parameters' dtype. Gradients flow to ``r1`` and ``r2`` (deterministic
    reduction per head).

    Errors: ``r1``/``r2`` 1-D of equal length, same dtype and device; ``kind`` one of
    ``"log"``, ``"power"``; lengths >= 0; an output whose size in bytes overflows int64;
    ``r1``, ``r2`` finite (``"argument 'r1' must be finite, but got r1[i] = nan"``) and
    ``r2 >= 0`` for ``"log"`` (else ``1 + r2 * d`` turns negative and the log NaN). On CUDA
    only ``r2`` of ``"log"`` is value-checked (finite and >= 0): that check copies ``r2`` to
    the host (a stream sync) and is skipped during CUDA graph capture, where a negative
    ``r2`` gives NaN; ``r1``, and ``r2`` of ``"power"``, are not read on the host there (no
    sync), so non-finite values give a non-finite bias.

    ``out``: optional contiguous ``(H, q_len, k_len)`` tensor of the parameters' dtype and device to
    write into (returned). Reusing one buffer across calls with the same lengths skips the page
    faults of a fresh output, which are most of this op's time on the CPU. The out= form records
    no autograd graph: with grad mode on, parameters' that require grad raise (as ATen's out= ops do).
    Errors for a wrong ``out``: shape, dtype, device or strides, named in the message.
    """
    _check_lengths_offsets("kerple_bias", q_len, k_len, q_offset, k_offset)
    if out is None:
        return torch.ops.posenc.kerple_bias(r1, r2, q_len, k_len, q_offset, k_offset, kind, causal)
    torch.ops.posenc.kerple_bias(r1, r2, q_len, k_len, q_offset, k_offset, kind, causal, out=out)
    return out


def dynamic_position_bias(
    weights: List[Tensor],
    biases: List[Tensor],
    q_len: int,
    k_len: int,
    q_offset: int = 0,
    k_offset: int = 0,
    log_distance: bool = False,
    causal: bool = False,
    norm_weights: Optional[List[Tensor]] = None,
    norm_eps: float = 1e-5,
) -> Tensor:
    """Dynamic position bias (x-transformers' ``DynamicPositionBias``, after Wang et al. 2021,
    "CrossFormer", §3.3), ``(H, q_len, k_len)``.

    An MLP over the signed distance ``d = q_pos - k_pos`` (query minus key, as x-transformers
    feeds it), evaluated once per distinct distance (``q_len + k_len - 1`` values) and gathered:
    ``x = d`` (or ``sign(d) * log(|d| + 1)`` with ``log_distance``, formed in fp64), then per
    hidden layer ``x = silu(norm(W x + b))`` and ``out = W_last x + b_last``.

    ``weights[l]``: ``(out_l, in_l)`` as ``nn.Linear`` stores it, ``in_0 = 1``,
    ``in_l = out_{l-1}``, ``out_last = H``; ``biases[l]``: ``(out_l,)``; ``norm_weights``: none
    or one ``(out_l,)`` gamma per hidden layer, making ``norm`` x-transformers' bias-free
    LayerNorm ``(z - mean) / sqrt(var + norm_eps) * gamma``. One floating dtype and device;
    the MLP runs in fp32 for half/bfloat16 (fp64 for fp64) and the output has the parameters'
    dtype. ``causal=True`` writes 0 for keys after the query (``k_pos > q_pos``; a causal mask
    removes them anyway) without evaluating the MLP there; ``False`` gives x-transformers'
    numbers on every entry.

    Gradients flow to every weight, bias and gamma: the upstream gradient is summed per
    distance first (fixed-order diagonal sums in fp64), then backpropagated through the MLP with
    every sum over distances in fixed blocks: bit-identical across runs and CPU thread counts.

    Errors: fewer than 2 layers; list lengths; shapes that do not chain; mixed dtype/device;
    non-finite parameters (CPU tensors only); ``norm_eps <= 0``; negative lengths; offsets
    outside +-2^61; an output whose size in bytes overflows int64.
    """
    norms: List[Tensor] = [] if norm_weights is None else norm_weights
    return torch.ops.posenc.dynamic_position_bias(
        weights, biases, norms, q_len, k_len, q_offset, k_offset, log_distance, causal, norm_eps
    )


def fire_bias(
    c: Tensor,
    L: Tensor,
    w1: Tensor,
    b1: Tensor,
    w2: Tensor,
    b2: Tensor,
    q_len: int,
    k_len: int,
    q_offset: int = 0,
    k_offset: int = 0,
    causal: bool = True,
    eps: float = 1e-6,
) -> Tensor:
    """FIRE bias (Li et al. 2023, "Functional Interpolation for Relative Positions Improves Long
    Context Transformers", ICLR 2024, eq. 3-4), ``(H, q_len, k_len)``.

    ``b(i, j) = f(psi(i - j) / (psi(max(L, i)) + eps))`` with ``psi(x) = log(c x + 1)`` and
    ``f(x) = w2 relu(w1 x + b1) + b2``, for query position ``i = q_offset + row`` and key
    position ``j = k_offset + col``. As in the paper's reference code, ``c`` and ``L`` enter as
    ``|c|`` and ``|L|`` (so raw trained parameters stay valid) and ``eps`` (default 1e-6, the
    code's) keeps the normalizer away from 0. ``causal=True``: keys after the query
    (``j > i``, where FIRE is not defined) are 0 with zero gradient; ``False``: the code's
    ``|i - j|`` for every key. Not a Toeplitz bias: the normalizer depends on ``i``, so the MLP
    is evaluated on every entry, in fp32 for half/bfloat16 parameters (fp64 for fp64).

    ``c``, ``L``: 0-dim; ``w1`` ``(hidden, 1)``, ``b1`` ``(hidden,)``, ``w2``
    ``(H, hidden)``, ``b2`` ``(H,)`` (``nn.Linear`` layouts); one floating dtype and device.
    Output in that dtype. Differentiable in all six (fp64 sums in fixed blocks of rows:
    bit-identical across runs and CPU thread counts); ``max(L, i)`` splits its derivative in half
    at a tie, as ``torch.maximum``.

    Errors: shapes and dtypes as above; ``eps`` not finite and > 0; ``q_offset < 0`` (the
    normalizer needs positions >= 0); negative lengths; offsets outside +-2^61; non-finite
    parameters (CPU; on CUDA ``c`` and ``L`` are read on the host, the weights are not).
    """
    return torch.ops.posenc.fire_bias(c, L, w1, b1, w2, b2, q_len, k_len, q_offset, k_offset, causal, eps)


def rel_pos_scores(
    q: Tensor,
    rel_emb: Tensor,
    q_offset: int = 0,
    k_offset: int = 0,
    k_len: Optional[int] = None,
    max_distance: Optional[int] = None,
    causal: bool = False,
) -> Tensor:
    """Relative position scores ``q · R[dist(i, j)]``, ``(B, H, Lq, k_len)``.

    Transformer-XL's position terms (b)+(d) (Dai et al. 2019, §3.3; pass ``q + v``) and
    Shaw et al. 2018's clipped relative keys (eq. 5). ``q``: ``(B, H, Lq, D)``; ``rel_emb``:
    ``(H, R, D)`` with ``R`` odd, row ``c + clamp(q_pos - k_pos, -M, M)`` where
    ``c = (R - 1) / 2`` and ``M = max_distance`` (default ``c``, at most ``c``).
    ``k_len`` defaults to ``q_offset + Lq - k_offset`` (keys end with the last query).
    Computed directly per (i, j): no ``(Lq, R)`` product and no pad-and-reshape shift, so
    bidirectional attention sees the right distances on both sides of the diagonal.
    Offsets may be any int64 (negative too). ``q`` and ``rel_emb`` share a dtype (float32,
    float64, or float16/bfloat16 with float32 accumulation) and a device; any strides.
    Returns a fresh contiguous tensor of ``q``'s dtype. Gradients flow to ``q`` and
    ``rel_emb`` (deterministic). ``causal=True``: keys after the query (``k_pos > q_pos``)
    are neither computed nor read and are written as 0 (the causal mask removes them); about
    half the work for causal Transformer-XL, and those entries pass no gradient. Under
    ``torch.autocast``, float32/float16/bfloat16 ``q`` and ``rel_emb`` are cast to the autocast
    dtype (as for ``matmul``; float64 is not cast) and the result has that dtype.
    Raises ``RuntimeError`` naming the argument for a wrong
    rank, dtype or device, mismatched heads or head_dim, even ``R``, ``max_distance``
    outside ``[0, c]``, ``k_len < 0``, or an output whose size in bytes overflows int64.
    """
    _check_int64("rel_pos_scores", "q_offset", q_offset)
    _check_int64("rel_pos_scores", "k_offset", k_offset)
    _check_int64_opt("rel_pos_scores", "max_distance", max_distance)
    if k_len is None:
        # a q of the wrong rank gets the op's own error, not an IndexError here
        q_len = q.size(-2) if q.dim() >= 2 else 0
        # Compared without forming the sum, so that a scripted call (int64 ints) cannot wrap.
        i64_max = 9223372036854775807
        i64_min = -9223372036854775807 - 1
        wraps = q_offset > 0 and q_len > i64_max - q_offset
        if not wraps:
            end = q_offset + q_len
            wraps = (k_offset < 0 and end > i64_max + k_offset) or (
                k_offset > 0 and end < i64_min + k_offset
            )
        if wraps:
            raise RuntimeError(
                f"posenc.rel_pos_scores: argument 'k_len' (default q_offset + q_len - k_offset) "
                f"must be within int64, but got q_offset {q_offset}, q_len {q_len} and "
                f"k_offset {k_offset}"
            )
        k_len = q_offset + q_len - k_offset
    else:
        _check_int64("rel_pos_scores", "k_len", k_len)
    return torch.ops.posenc.rel_pos_scores(q, rel_emb, q_offset, k_offset, k_len, max_distance, causal)


def cope_scores(
    q: Tensor,
    k: Tensor,
    pos_emb: Tensor,
    scale: Optional[float] = None,
    q_offset: int = 0,
    k_offset: int = 0,
) -> Tensor:
    """CoPE position term (Golovneva et al. 2024, "Contextual Position Encoding: Learning to
    Count What's Important", §3, eqs. 3-5), ``(B, H, Lq, Lk)``, to add to the attention logits.

    For query ``i`` (position ``q_offset + i``) and each key ``j`` it sees
    (``k_offset + j <= q_offset + i``; CoPE is causal):

    - gates ``g_ij = sigmoid(scale * q_i · k_j)`` (eq. 3). ``scale`` defaults to
      ``1/sqrt(head_dim)``: the paper's code takes the gates from the scaled attention
      logits; ``q · k`` is computed inside, so no ``(Lq, Lk)`` logits tensor is read;
    - positions ``p_ij = sum_{t=j..i} g_it`` (eq. 4), clamped to ``npos_max - 1`` with
      ``npos_max = pos_emb.size(0)`` (as the paper's code);
    - ``out_ij = (1 - w) · z_i[floor p] + w · z_i[ceil p]``, ``w = p - floor p``,
      ``z_i[n] = q_i · e[n]`` (eq. 5, interpolating the embeddings of the two nearest
      integer positions).

    Keys after the query are written as 0 and pass no gradient: add a causal mask.
    ``q``: ``(B, H, Lq, D)``; ``k``: ``(B, H, Lk, D)``; ``pos_emb``: ``(npos_max, D)``, shared
    by the heads (the paper's per-layer table; :class:`posenc.nn.CoPE` holds one). One dtype
    (float32, float64, or float16/bfloat16 with float32 math) and one device; any strides.
    Returns a fresh contiguous tensor of ``q``'s dtype. Gradients flow to ``q``, ``k`` and
    ``pos_emb``, deterministic (no atomics; bit-identical across runs and CPU thread
    counts). Rows are independent: a decode call (one query at the last position against all
    keys, ``q_offset = Lk - 1``) equals the last row of the full call. Once ``p`` reaches
    ``npos_max - 1`` the keys further left are clamped too (gates are >= 0) and their gates
    are not computed, so a small table makes a row cost far less than ``Lk · D``.

    Raises ``RuntimeError`` naming the argument for a wrong rank, dtype or device, ``k`` or
    ``pos_emb`` not matching ``q``'s batch, heads or head_dim, an empty ``pos_emb``, a
    non-finite ``scale``, offsets outside ``[-2^61, 2^61]``, or an output that cannot be
    allocated.
    """
    return torch.ops.posenc.cope_scores(q, k, pos_emb, scale, q_offset, k_offset)


def rope_inv_freq(
    dim: int,
    base: float = 10000.0,
    device: Optional[torch.device] = None,
    dtype: Optional[torch.dtype] = None,
) -> Tensor:
    """RoPE inverse frequencies ``base ** (-2 i / dim)``, ``i < dim / 2`` (Su et al. 2021, eq. 15).

    ``dim`` is the rotary dimension (even, > 0); ``base`` finite and > 1. Computed in fp64,
    returned as ``(dim / 2,)`` in ``dtype``: ``torch.float32`` (default, reference precision)
    or ``torch.float64`` (exact precision: :func:`rope` then computes the angles in fp64) —
    never in the activations' half precision (angles at position ~2000 need more bits than
    fp16 has). Raises ``RuntimeError`` ("posenc.rope_inv_freq: argument ...") otherwise.
    """
    _check_int64("rope_inv_freq", "dim", dim)
    return torch.ops.posenc.rope_inv_freq(dim, base, device=device, dtype=dtype)


def rope(
    x: Tensor,
    positions: Optional[Tensor],
    inv_freq: Tensor,
    offset: int = 0,
    rotary_dim: Optional[int] = None,
    interleaved: bool = False,
    layout: str = "bhsd",
    cu_seqlens: Optional[Tensor] = None,
    attention_factor: float = 1.0,
    xpos_zeta: Optional[Tensor] = None,
    xpos_scale_base: float = 512.0,
    xpos_inverse: bool = False,
    xpos_centre: int = 0,
) -> Tensor:
    """Rotary position embedding (Su et al. 2021, eq. 34): rotate pairs of ``x`` by ``pos * inv_freq``.

    ``x``: ``(B, H, S, D)`` for ``layout="bhsd"``, ``(B, S, H, D)`` for ``"bshd"`` or packed
    ``(T, H, D)`` for ``"thd"``, any strides (views into a packed qkv buffer work without a
    copy). ``positions``: int64 or int32 ``(S,)`` or ``(B, S)``, or ``None`` for ``arange(S)``;
    ``offset`` is added in both cases (KV-cache decoding), and every ``offset + position`` must
    stay within int64 (with a nonzero ``offset`` and int64 positions the op reads the positions'
    min and max: on CUDA a host sync, skipped during CUDA graph capture). ``inv_freq``: float32 or float64
    ``(R/2,)``, ``R = rotary_dim`` (default ``2 * len(inv_freq)``, must be even and <= D);
    dims ``>= R`` pass through unchanged. Half-split pairs ``(i, i + R/2)`` (GPT-NeoX,
    Llama); interleaved pairs ``(2i, 2i+1)`` (GPT-J, RoFormer).

    Precision, chosen by ``inv_freq``'s dtype (whatever ``x``'s dtype):

    * float32 ``inv_freq`` — *reference* precision (the default everywhere in posenc): the
      angle is the float32 product ``float(pos) * inv_freq[i]``, rounded exactly where
      Hugging Face rounds it, so outputs match transformers (and the checkpoints trained with
      it). Its error grows with the position: at ``pos = 1e6`` the angle is off by up to
      ``~0.03`` rad (float32 ``pos * inv_freq`` keeps 24 bits).
    * float64 ``inv_freq`` (``rope_inv_freq(..., dtype=torch.float64)``,
      ``RopeConfig.compute(dtype=torch.float64)``) — *exact* precision: the angle is the
      fp64 product (positions exact up to 2**53), reduced modulo ``2 pi`` in fp64 before the
      fp32 cos/sin, so a float32 output stays within ``~1e-6`` relative of an fp64 reference
      at any position (tested up to ``1e6`` with head_dim 128, base 1e6).

    cos/sin and the rotation are in fp32 for fp16/bf16/fp32 ``x`` and in fp64 for fp64 ``x``.
    Output: a new contiguous tensor of ``x``'s dtype and shape. Gradient flows to ``x`` (the
    same magnitude times the rotation by the negative angle, op ``rope_backward``);
    ``positions``, ``inv_freq``, ``cu_seqlens`` and ``xpos_zeta`` get none.

    Packed sequences (``layout="thd"``, varlen / FlashAttention style): ``cu_seqlens`` int64 or int32
    ``(num_seqs + 1,)`` on ``x``'s device, the cumulative starts ``0 = c_0 <= c_1 <= ... = T``;
    token ``t`` with ``c_i <= t < c_{i+1}`` has position ``t - c_i + offset`` (positions restart
    in every sequence). ``positions`` must be ``None`` with ``"thd"``; for explicit per-token
    positions use ``layout="bshd"`` on ``x.unsqueeze(0)`` with ``positions`` of shape
    ``(T,)``. The ``cu_seqlens`` values are checked for CPU tensors only; on CUDA they are the
    caller's responsibility (no host sync: bad values give wrong positions, never
    out-of-bounds reads).

    Magnitude scalings, folded into cos and sin (so only the ``R`` rotary dims are scaled,
    the pass-through dims are not; no extra pass over ``x``):

    * ``attention_factor`` multiplies every rotary pair, as Hugging Face's YaRN / LongRoPE
      ``attention_scaling`` (``cos * f``, ``sin * f`` in ``apply_rotary_pos_emb``).
    * xPos (Sun et al. 2022, "A Length-Extrapolatable Transformer", sec. 3): with
      ``xpos_zeta`` float32 ``(R/2,)``, values > 0 (the paper's
      ``zeta_i = (2i/R + gamma) / (1 + gamma)``, gamma = 0.4), pair ``i`` at position ``p``
      is scaled by ``zeta_i ** ((p - xpos_centre) / xpos_scale_base)`` for queries and by its
      inverse for keys (``xpos_inverse=True``), so that ``q . k`` depends on the positions only
      through ``p_q - p_k`` (``xpos_centre`` cancels; use it to keep the factors in range for
      long sequences). ``xpos_scale_base``, ``xpos_inverse`` and ``xpos_centre`` are ignored
      without ``xpos_zeta``.

    The magnitude is computed in fp32 (fp64 for fp64 ``x``).

    Raises ``RuntimeError`` ("posenc.rope: argument '<arg>' ...") for: ``x`` not 4-D (3-D for
    ``"thd"``) float; ``layout`` not "bhsd"/"bshd"/"thd"; ``positions`` not int64/int32, not
    ``(S,)``/``(B, S)``, on another device, or given with ``"thd"``; ``cu_seqlens`` missing
    with ``"thd"``, given with another layout, not int64 1-D non-empty, on another device, or
    (CPU) not starting at 0, decreasing, or not ending at ``T``; ``inv_freq`` not float32 1-D
    or float64 1-D, on another device or (CPU) not finite; ``rotary_dim`` odd,
    ``!= 2 * len(inv_freq)`` or ``> D``;
    ``attention_factor`` not finite; ``xpos_zeta`` not float32 ``(R/2,)``, on another device
    or (CPU) not > 0; ``xpos_scale_base`` not > 0 (with ``xpos_zeta``); ``offset`` (a Python int
    outside int64, or ``offset + position`` past int64: "argument 'offset' must keep every
    position offset + positions[i] within int64, but got <offset> with positions in [lo, hi]").
    """
    _check_int64("rope", "offset", offset)
    _check_int64_opt("rope", "rotary_dim", rotary_dim)
    _check_int64("rope", "xpos_centre", xpos_centre)
    return torch.ops.posenc.rope(
        x,
        positions,
        inv_freq,
        offset,
        rotary_dim,
        interleaved,
        layout,
        cu_seqlens,
        attention_factor,
        xpos_zeta,
        xpos_scale_base,
        xpos_inverse,
        xpos_centre,
    )


def rope_qk(
    q: Tensor,
    k: Tensor,
    positions: Optional[Tensor],
    inv_freq: Tensor,
    offset: int = 0,
    rotary_dim: Optional[int] = None,
    interleaved: bool = False,
    layout: str = "bhsd",
    cu_seqlens: Optional[Tensor] = None,
    attention_factor: float = 1.0,
    xpos_zeta: Optional[Tensor] = None,
    xpos_scale_base: float = 512.0,
    xpos_centre: int = 0,
) -> Tuple[Tensor, Tensor]:
    """:func:`rope` for queries and keys in one call: returns
    ``(rope(q, ..., xpos_inverse=False), rope(k, ..., xpos_inverse=True))``, bit for bit equal
    to the two calls, with the cos/sin (and xPos magnitudes) of each block of positions
    computed once for every head of ``q`` and ``k`` (CPU; on CUDA it runs the two calls).

    ``q`` and ``k`` share the layout, dtype, device, batch, sequence length and head_dim;
    their head counts may differ (grouped-query attention: ``k`` with ``H_kv`` heads).
    Every other argument is :func:`rope`'s, applied to both; with ``xpos_zeta`` the queries
    take the xPos magnitude and the keys its inverse (Sun et al. 2022, sec. 3). Gradients
    flow to ``q`` and ``k`` (op ``rope_qk_backward``, the conjugate rotations).

    Raises ``RuntimeError`` ("posenc.rope_qk: argument '<arg>' ...") for everything
    :func:`rope` refuses (naming ``q`` or ``k``), and for a ``k`` of another dtype or device
    than ``q`` or another batch, sequence length or head_dim.
    """
    q_rot, k_rot = torch.ops.posenc.rope_qk(
        q,
        k,
        positions,
        inv_freq,
        offset,
        rotary_dim,
        interleaved,
        layout,
        cu_seqlens,
        attention_factor,
        xpos_zeta,
        xpos_scale_base,
        xpos_centre,
    )
    return q_rot, k_rot


def apply_rotary_pos_emb(
    x: Tensor, cos: Tensor, sin: Tensor, interleaved: bool = False, layout: str = "bhsd"
) -> Tensor:
    """Rotary embedding with caller-supplied tables, as Hugging Face's ``apply_rotary_pos_emb``.

    ``out = x * cos + rotate(x) * sin`` on the first ``R`` dims, where ``cos``/``sin`` are
    ``(S, R)`` or ``(B, S, R)`` (one value per element, so the two members of a pair may have
    different values) and ``rotate`` is ``rotate_half`` (half-split) or the pairwise swap
    (interleaved): ``[-x2, x1]`` or ``[-x1, x0, -x3, x2, ...]``. ``R`` (even, <= D) is
    ``cos.shape[-1]``; dims ``>= R`` pass through. ``x`` as in :func:`rope` (``"bhsd"`` or
    ``"bshd"``, any strides); ``cos``/``sin`` have ``x``'s dtype and device, any strides.
    Math in fp32 for fp16/bf16 (fp64 for fp64). Gradients flow to ``x``, ``cos`` and ``sin``;
    the table gradients are summed over heads (and batch for ``(S, R)`` tables) in a fixed
    order in fp64 (deterministic).

    Raises ``RuntimeError`` ("posenc.apply_rotary_pos_emb: argument '<arg>' ...") for a bad
    ``x``/``layout`` (as :func:`rope`), ``cos`` not ``(S, R)``/``(B, S, R)``, ``sin`` not of
    ``cos``'s shape, odd ``R`` or ``R > D``, or a dtype/device other than ``x``'s.
    """
    return torch.ops.posenc.apply_rotary_pos_emb(x, cos, sin, interleaved, layout)


def relative_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    slopes: Optional[Tensor] = None,
    table: Optional[Tensor] = None,
    r1: Optional[Tensor] = None,
    r2: Optional[Tensor] = None,
    rel_emb: Optional[Tensor] = None,
    q_rel: Optional[Tensor] = None,
    causal: bool = False,
    key_padding_mask: Optional[Tensor] = None,
    scale: Optional[float] = None,
    q_offset: int = 0,
    k_offset: int = 0,
    bidirectional: Optional[bool] = None,
    max_distance: Optional[int] = None,
    kerple_kind: Optional[str] = None,
    layout: str = "bhsd",
    cu_seqlens_q: Optional[Tensor] = None,
    cu_seqlens_k: Optional[Tensor] = None,
    max_seqlen_q: Optional[int] = None,
    max_seqlen_k: Optional[int] = None,
    log_fgate: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor]:
    """Fused relative-position attention ``softmax(scale * q k^T + P + mask) v``, no L x L tensor.

    FlashAttention-2's tiling (Dao 2023, Algorithms 1-2) with the position term ``P`` computed
    per tile from its parameters. ``P`` is exactly what the matching bias op gives with the same
    offsets, and the term is chosen by the parameters passed (at most one):

    * none: plain attention (NoPE);
    * ``slopes`` ``(H,)``: ALiBi, :func:`alibi_bias` with ``causal = not bidirectional``;
    * ``table`` ``(num_buckets, H)``: T5, :func:`t5_bias` (``max_distance`` default 128);
    * ``r1``, ``r2`` ``(H,)``: KERPLE, :func:`kerple_bias` with ``causal = not bidirectional``
      and ``kind = kerple_kind`` (default ``"log"``);
    * ``rel_emb`` ``(H, R, D)`` (R odd, q's dtype): relative scores
      :func:`rel_pos_scores` ``(q_rel, rel_emb, q_offset, k_offset, k_len, max_distance)`` —
      Transformer-XL's terms (b)+(d) with ``q_rel = q + v_bias`` (Dai et al. 2019, §3.3), Shaw et
      al. 2018's relative keys with ``q_rel=None`` (``q`` itself). ``P`` is not multiplied by
      ``scale``: scale ``rel_emb`` for Transformer-XL's ``1/sqrt(d)``;
    * ``log_fgate`` ``(B, H, Lk)`` (``"thd"``: ``(Tk, H)``; any float dtype): the forgetting
      gate (Lin et al. 2025), :func:`forgetting_gate_bias` ``(log_fgate, Lq, q_offset,
      k_offset)`` (per sequence for "thd", the prefix sums restarting at each sequence), computed
      per tile from the fp64 prefix sums of the log gates. Requires ``causal=True`` and every
      query at a key position (``k_offset <= q_offset``, ``q_offset + Lq <= k_offset + Lk``).

    ``bidirectional`` (ALiBi/KERPLE: ``|d|`` instead of the causal form; T5: bidirectional
    buckets) defaults to ``not causal``. Position contract as the bias ops: query ``i`` at
    ``q_offset + i``, key ``j`` at ``k_offset + j``; with ``causal``, key ``j`` is seen by
    query ``i`` iff ``k_offset + j <= q_offset + i``, so a decode step (``Lq = 1``,
    ``q_offset = cache length``) sees its whole cache.

    Shapes: layout ``"bhsd"``: ``q`` ``(B, H, Lq, D)``, ``k`` ``(B, H_kv, Lk, D)``, ``v``
    ``(B, H_kv, Lk, Dv)``; ``"thd"`` (packed varlen): ``q`` ``(Tq, H, D)``, ``k``/``v``
    ``(Tk, H_kv, D/Dv)`` with int64 or int32 ``cu_seqlens_q`` (and ``cu_seqlens_k``, default the same)
    ``(num_seqs + 1,)``; positions restart in every sequence and a query sees only its own
    sequence's keys. ``H % H_kv == 0`` (GQA / MQA); ``D, Dv <= 256``. ``q``, ``k``, ``v`` share a
    float dtype (fp16/bf16 computed in fp32, fp64 in fp64) and a device; any strides.
    ``key_padding_mask``: ``(B, Lk)`` bool, ``True`` marks padding keys (as
    ``torch.nn.MultiheadAttention``), ``"bhsd"`` only. ``scale`` defaults to ``1/sqrt(D)``
    (T5 checkpoints use ``scale=1.0``). ``max_seqlen_q/k`` ("thd", optional): the longest
    sequences (a CUDA call without them reads ``cu_seqlens``, a host sync).

    Returns ``(out, lse)``: ``out`` like ``q`` with ``Dv`` last, ``q``'s dtype, contiguous;
    ``lse`` the log-sum-exp of each query's logits, ``(B, H, Lq)`` (``(H, Tq)`` for "thd"),
    float32 (float64 for float64 inputs), for merging partial results (ring attention). A query
    whose keys are all masked gets zeros, ``lse = -inf`` and zero gradients, never NaN.

    Under ``torch.autocast`` (CPU or CUDA), float32/float16/bfloat16 ``q``, ``k``, ``v``,
    ``rel_emb`` and ``q_rel`` are cast to the autocast dtype, as ``scaled_dot_product_attention``
    does (float64 is not cast); the position parameters are read as they are; ``out`` has the
    autocast dtype and ``lse`` stays float32.

    Gradients flow to ``q``, ``k``, ``v``, the position parameters, ``q_rel`` and ``log_fgate``, also through
    ``lse``; the backward recomputes tiles from ``lse`` and reduces parameter gradients in a
    fixed order without atomics (bit-identical across runs and CPU thread counts). Extra
    memory is O(B·H·L) (O(B·H·L·D) for the relative-scores term and GQA gradients).

    Raises ``RuntimeError`` ("posenc.relative_attention: argument '<arg>' ...") for wrong
    ranks, dtypes or devices; mismatched batch, heads, lengths or head_dim; ``H % H_kv != 0``;
    head_dim > 256; two position terms; ``q_rel`` without ``rel_emb``; ``bidirectional`` /
    ``max_distance`` / ``kerple_kind`` for a term without that option; parameter shapes not
    matching ``H``; T5's bucket rules; even ``R``; ``max_distance`` outside ``[0, c]``;
    non-finite ``scale``; offsets outside ``+-2**61``; ``cu_seqlens`` not int64/int32 1-D or (CPU) not
    ``0 .. T`` non-decreasing; ``key_padding_mask`` not ``(B, Lk)`` bool or given with "thd".
    Parameter values are checked on CPU tensors (finite slopes/table/r1/r2/rel_emb, ``r2 >= 0``
    for the log kernel); on CUDA, as for the bias ops, only KERPLE log's ``r2`` is read.
    """
    _check_int64("relative_attention", "q_offset", q_offset)
    _check_int64("relative_attention", "k_offset", k_offset)
    _check_int64_opt("relative_attention", "max_distance", max_distance)
    _check_int64_opt("relative_attention", "max_seqlen_q", max_seqlen_q)
    _check_int64_opt("relative_attention", "max_seqlen_k", max_seqlen_k)
    if not torch.jit.is_scripting():
        # None would reach the dispatcher as "tensor does not have a device"
        for name, t in (("q", q), ("k", k), ("v", v)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(
                    f"posenc.relative_attention: argument '{name}' must be a Tensor, "
                    f"but got {type(t).__name__}"
                )
    return torch.ops.posenc.relative_attention(
        q,
        k,
        v,
        slopes=slopes,
        table=table,
        r1=r1,
        r2=r2,
        rel_emb=rel_emb,
        q_rel=q_rel,
        causal=causal,
        key_padding_mask=key_padding_mask,
        scale=scale,
        q_offset=q_offset,
        k_offset=k_offset,
        bidirectional=bidirectional,
        max_distance=max_distance,
        kerple_kind=kerple_kind,
        layout=layout,
        cu_seqlens_q=cu_seqlens_q,
        cu_seqlens_k=cu_seqlens_k,
        max_seqlen_q=max_seqlen_q,
        max_seqlen_k=max_seqlen_k,
        log_fgate=log_fgate,
    )


def forgetting_gate_bias(
    log_fgate: Tensor, q_len: int, q_offset: int = 0, k_offset: int = 0
) -> Tensor:
    """Forgetting-gate attention bias (Lin et al. 2025, "Forgetting Transformer", §2), ``(B, H, q_len, k_len)``.

    FoX computes ``O = softmax(Q K^T + D) V`` with ``D_ij = log F_ij``, ``F_ij = prod_{j < s <= i} f_s``
    for ``j <= i`` and 0 after; ``f_s = sigmoid(w_f^T x_s + b_f)`` is a per-head forget gate of
    token ``s`` (x-transformers calls it data-dependent ALiBi). With the caller's log gates
    ``log_fgate`` ``(B, H, k_len)`` (``F.logsigmoid`` of the gate logits; key ``t`` at position
    ``k_offset + t``) and ``c_t = sum_{s <= t} log_fgate_s`` (in fp64), query ``i`` at position
    ``q_offset + i`` is key index ``t_i = q_offset - k_offset + i`` and

    ``out[b, h, i, j] = c[t_i] - c[j]`` for ``j <= t_i``, ``-inf`` for ``j > t_i``.

    The bias is its own causal mask: pass it (in the queries' dtype) as ``attn_mask`` to SDPA
    with ``is_causal=False``; adding a causal mask as well changes nothing. A single-query call
    at ``q_offset = k_offset + k_len - 1`` equals the last row of the full call (KV-cache
    decoding). Output dtype is ``log_fgate``'s (float16/bfloat16/float32/float64; any strides),
    contiguous. Gradient flows to ``log_fgate``: the reverse cumulative sum of (row sum minus
    column sum) of the incoming gradient, in fp64 and a fixed order (deterministic, no atomics).

    Errors (``RuntimeError``, "posenc.forgetting_gate_bias: argument ..."): ``log_fgate`` not
    3-D floating; ``q_len`` < 0; offsets outside ``+-2**61``; a query not at a key position
    (``k_offset <= q_offset`` and ``q_offset + q_len <= k_offset + k_len`` are required: query
    ``i`` reads the gates up to its own position); an output whose size in bytes overflows
    int64; ``log_fgate`` values not finite or > 0 ("must be finite ..., but got
    log_fgate[b, h, t] = nan"), checked for CPU tensors only: on CUDA the check would need a
    stream sync on every call, and non-finite gates give NaN there.
    """
    return torch.ops.posenc.forgetting_gate_bias(log_fgate, q_len, q_offset, k_offset)
