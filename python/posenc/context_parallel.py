"""Context parallelism: which global positions a rank's local sequence chunk holds.

Context (sequence) parallelism shards one long sequence along its sequence dimension across
``world_size`` ranks. Every positional encoding in posenc needs *global* absolute positions
(query ``i`` at ``q_offset + i``, key ``j`` at ``k_offset + j``), so a rank must know which
global positions its local tokens have. This module answers that for two layouts:

* **plain**: the sequence is cut into ``world_size`` contiguous chunks; rank ``r`` holds chunk
  ``r``.
* **load-balanced** (``load_balanced=True``): the sequence is cut into ``2 * world_size``
  chunks and rank ``r`` holds chunks ``r`` and ``2 * world_size - 1 - r``, in that order. With
  a causal mask the late chunks attend to more keys than the early ones; pairing an early
  chunk with a late one gives every rank about the same work. This is the split of
  Megatron-LM's ``get_batch_on_this_cp_rank`` (context parallelism) and of the Llama 3 paper
  (Llama Team, "The Llama 3 Herd of Models", 2024, §3.3.2: the i-th CP rank receives the
  i-th and the (2 x CP - 1 - i)-th chunks).

**Uneven lengths.** ``seq_len`` need not be divisible by the number of chunks ``n``
(``world_size``, or ``2 * world_size`` when load-balanced): chunks follow
``torch.tensor_split`` — the first ``seq_len % n`` chunks have ``seq_len // n + 1`` tokens, the
others ``seq_len // n`` (possibly 0). Chunks always partition ``[0, seq_len)`` exactly once,
in order; ranks' local lengths differ by at most one token in both layouts. (Megatron-LM
requires divisibility; with divisible lengths the chunks are identical to its.)

**Local order.** A rank's local tensor is its chunks concatenated in the order returned by
:func:`chunks` (for the load-balanced split: chunk ``r`` first, then ``2W - 1 - r``), as
:func:`shard` builds it and :func:`unshard` undoes it.

**Using the positions.**

* RoPE: ``posenc.ops.rope(x_local, positions(S, W, r, lb), inv_freq, layout=...)`` or
  ``RotaryEmbedding(...)(q_local, k_local, positions=positions(S, W, r, lb))`` rotates the
  local tokens exactly as the unsharded call rotates them (the angle depends only on the
  position).
* Absolute tables: ``torch.ops.posenc.sinusoidal_table(positions(...), dim, ...)``, or one
  ``posenc.ops.sinusoidal_table(length, dim, offset=start)`` per chunk.
* Bias families (ALiBi, T5, KERPLE, and any callable with the signature
  ``bias_fn(q_len, k_len, q_offset, k_offset) -> (..., q_len, k_len)``, which the forward of
  ``posenc.nn.ALiBi`` / ``T5RelativeBias`` / ``KERPLEBias`` has): :func:`bias_blocks` gives the
  ``(q_offset, q_len, k_offset, k_len)`` blocks and :func:`local_bias` assembles the bias of
  this rank's queries against all keys (global order) or against the keys held by one rank
  ``k_rank`` (ring attention: the key/value block that arrives from that rank, in its local
  order).
* Relative scores (``posenc.ops.rel_pos_scores``): :func:`local_rel_pos_scores` slices the
  local queries per chunk and passes each chunk's global start as ``q_offset``.

Errors: a bad argument raises ``ValueError`` reading ``posenc.<fn>: argument '<arg>'
<expected>, but got <given>`` (the C++ twin ``posenc::context_parallel`` throws
``c10::ValueError`` with the same text). Under TorchScript the same message arrives as
``torch.jit.Error``. Every function except :func:`local_bias` (which takes
a Python callable) is scriptable with ``torch.jit.script``.
"""
from typing import Callable, List, Optional, Tuple

import torch
from torch import Tensor

from . import ops

__all__ = [
    "chunks",
    "positions",
    "shard",
    "unshard",
    "bias_blocks",
    "local_bias",
    "local_rel_pos_scores",
]


def _check_split(fn: str, seq_len: int, world_size: int, rank: int) -> None:
    if seq_len < 0:
        raise ValueError(f"posenc.{fn}: argument 'seq_len' must be >= 0, but got {seq_len}")
    if world_size <= 0:
        raise ValueError(f"posenc.{fn}: argument 'world_size' must be > 0, but got {world_size}")
    if rank < 0 or rank >= world_size:
        raise ValueError(
            f"posenc.{fn}: argument 'rank' must be in [0, world_size) = [0, {world_size}), "
            f"but got {rank}"
        )


def _chunk(seq_len: int, num_chunks: int, index: int) -> Tuple[int, int]:
    # torch.tensor_split: the first seq_len % n chunks are one token longer.
    base = seq_len // num_chunks
    extra = seq_len % num_chunks
    start = index * base + min(index, extra)
    length = base + (1 if index < extra else 0)
    return (start, length)


def _chunks(seq_len: int, world_size: int, rank: int, load_balanced: bool) -> List[Tuple[int, int]]:
    if load_balanced:
        n = 2 * world_size
        return [_chunk(seq_len, n, rank), _chunk(seq_len, n, n - 1 - rank)]
    return [_chunk(seq_len, world_size, rank)]


def chunks(
    seq_len: int, world_size: int, rank: int, load_balanced: bool = False
) -> List[Tuple[int, int]]:
    """The global ``(start, length)`` chunks of the sequence that ``rank`` holds, in local order.

    Plain split: one chunk, ``rank``'s of ``world_size`` contiguous chunks. Load-balanced
    split: two chunks, number ``rank`` and ``2 * world_size - 1 - rank`` of ``2 * world_size``
    (Megatron-LM context parallelism; Llama 3 paper §3.3.2). Chunk lengths follow
    ``torch.tensor_split`` (the first ``seq_len % n`` chunks are one longer; chunks may be
    empty when ``seq_len`` is small), so the chunks of all ranks partition ``[0, seq_len)``.

    Args:
        seq_len: global sequence length, >= 0.
        world_size: number of context-parallel ranks, > 0.
        rank: this rank, in ``[0, world_size)``.
        load_balanced: the two-chunk split instead of the plain one.

    Returns:
        ``[(start, length)]`` (plain) or ``[(start_r, length_r), (start_m, length_m)]`` with
        ``m = 2 * world_size - 1 - rank`` (load-balanced).

    Raises:
        ValueError: ``seq_len < 0``, ``world_size <= 0`` or ``rank`` outside
        ``[0, world_size)``.
    """
    _check_split("chunks", seq_len, world_size, rank)
    return _chunks(seq_len, world_size, rank, load_balanced)


def positions(
    seq_len: int,
    world_size: int,
    rank: int,
    load_balanced: bool = False,
    offset: int = 0,
    device: Optional[torch.device] = None,
) -> Tensor:
    """Global positions of ``rank``'s local tokens: int64 ``(S_local,)``.

    ``out[t] = offset + (global index of local token t)``, i.e. the concatenation of
    ``arange(start, start + length)`` over :func:`chunks` plus ``offset`` (the position of the
    sequence's first token, e.g. the length of a KV cache before it). Feed it to
    ``posenc.ops.rope(..., positions=...)`` / ``posenc.nn.RotaryEmbedding`` (expand to
    ``(B, S_local)`` for a per-batch table) or to ``torch.ops.posenc.sinusoidal_table``.

    Args:
        seq_len, world_size, rank, load_balanced: as :func:`chunks`.
        offset: added to every position (any int).
        device: device of the result (default CPU).

    Raises:
        ValueError: as :func:`chunks`.
    """
    _check_split("positions", seq_len, world_size, rank)
    parts: List[Tensor] = []
    for start, length in _chunks(seq_len, world_size, rank, load_balanced):
        parts.append(
            torch.arange(offset + start, offset + start + length, dtype=torch.long, device=device)
        )
    if len(parts) == 1:
        return parts[0]
    return torch.cat(parts)


def _norm_dim(fn: str, dim: int, ndim: int) -> int:
    if dim < -ndim or dim >= ndim:
        raise ValueError(
            f"posenc.{fn}: argument 'dim' must be in [-{ndim}, {ndim}) for a {ndim}-D tensor, "
            f"but got {dim}"
        )
    return dim + ndim if dim < 0 else dim


def shard(x: Tensor, dim: int, world_size: int, rank: int, load_balanced: bool = False) -> Tensor:
    """``rank``'s local part of ``x`` along its sequence dimension ``dim``.

    The chunks of :func:`chunks` with ``seq_len = x.size(dim)``, concatenated in local order.
    Plain split: a view (``x.narrow``); load-balanced: a new tensor (``torch.cat`` of two
    views). Any dtype, device and strides. Inverse: :func:`unshard` of every rank's part.

    Raises:
        ValueError: ``x`` 0-D, ``dim`` out of range, or the arguments of :func:`chunks`.
    """
    if x.dim() == 0:
        raise ValueError("posenc.shard: argument 'x' must have at least 1 dimension, but got a 0-D tensor")
    d = _norm_dim("shard", dim, x.dim())
    _check_split("shard", x.size(d), world_size, rank)
    parts: List[Tensor] = []
    for start, length in _chunks(x.size(d), world_size, rank, load_balanced):
        parts.append(x.narrow(d, start, length))
    if len(parts) == 1:
        return parts[0]
    return torch.cat(parts, d)


def unshard(parts: List[Tensor], dim: int, load_balanced: bool = False) -> Tensor:
    """Reassembles the global tensor from every rank's local part (inverse of :func:`shard`).

    ``parts[r]`` is rank ``r``'s local tensor, ``world_size = len(parts)``; the global length
    is the sum of the parts' sizes along ``dim``, and each part must have exactly the local
    length :func:`chunks` gives rank ``r`` for it. Returns a new tensor (``torch.cat``); the
    other dimensions must agree as ``torch.cat`` requires.

    Raises:
        ValueError: ``parts`` empty, a 0-D part, ``dim`` out of range, or a part whose length
        along ``dim`` is not its rank's local length.
    """
    world_size = len(parts)
    if world_size == 0:
        raise ValueError("posenc.unshard: argument 'parts' must hold one tensor per rank, but got an empty list")
    if parts[0].dim() == 0:
        raise ValueError("posenc.unshard: argument 'parts' must hold tensors of at least 1 dimension, but got a 0-D tensor")
    d = _norm_dim("unshard", dim, parts[0].dim())
    seq_len = 0
    for p in parts:
        if p.dim() != parts[0].dim():
            raise ValueError(
                f"posenc.unshard: argument 'parts' must hold tensors of equal rank "
                f"({parts[0].dim()}), but got a {p.dim()}-D tensor"
            )
        seq_len += p.size(d)
    # Global chunk index -> (rank, start within that rank's local tensor, length).
    num_chunks = 2 * world_size if load_balanced else world_size
    pieces: List[Optional[Tensor]] = [None for _ in range(num_chunks)]
    for r in range(world_size):
        local = _chunks(seq_len, world_size, r, load_balanced)
        expected = 0
        for _, length in local:
            expected += length
        if parts[r].size(d) != expected:
            raise ValueError(
                f"posenc.unshard: argument 'parts' must have rank {r}'s local length {expected} "
                f"along dim {dim} (global length {seq_len}, world_size {world_size}), but got "
                f"{parts[r].size(d)}"
            )
        indices = [r, num_chunks - 1 - r] if load_balanced else [r]
        at = 0
        for c in range(len(local)):
            pieces[indices[c]] = parts[r].narrow(d, at, local[c][1])
            at += local[c][1]
    ordered: List[Tensor] = []
    for p in pieces:
        assert p is not None
        ordered.append(p)
    return torch.cat(ordered, d)


def bias_blocks(
    seq_len: int,
    world_size: int,
    rank: int,
    load_balanced: bool = False,
    k_rank: Optional[int] = None,
    offset: int = 0,
) -> List[List[Tuple[int, int, int, int]]]:
    """The ``(q_offset, q_len, k_offset, k_len)`` blocks of ``rank``'s queries against a key set.

    ``out[a][b]`` is the block of local query chunk ``a`` (in local order, see :func:`chunks`)
    against key chunk ``b``. Keys are either all ``seq_len`` keys in global order
    (``k_rank=None``: one block per query chunk, ``k_offset = offset``, ``k_len = seq_len``)
    or the keys held by rank ``k_rank``, in that rank's local order (ring attention: the
    key/value shard received from ``k_rank``; ``k_rank == rank`` is the local diagonal).
    Offsets are global absolute positions (``offset`` added to both), so
    ``bias_fn(q_len, k_len, q_offset, k_offset)`` of every block, concatenated along the key
    axis within a row and then along the query axis, equals the corresponding rows and
    columns of the unsharded bias (:func:`local_bias` does exactly that).

    Raises:
        ValueError: as :func:`chunks`, or ``k_rank`` outside ``[0, world_size)``.
    """
    _check_split("bias_blocks", seq_len, world_size, rank)
    if k_rank is not None and (k_rank < 0 or k_rank >= world_size):
        raise ValueError(
            f"posenc.bias_blocks: argument 'k_rank' must be in [0, world_size) = "
            f"[0, {world_size}) (or omitted for all keys), but got {k_rank}"
        )
    if k_rank is None:
        k_chunks = [(0, seq_len)]
    else:
        k_chunks = _chunks(seq_len, world_size, k_rank, load_balanced)
    out: List[List[Tuple[int, int, int, int]]] = []
    for q_start, q_len in _chunks(seq_len, world_size, rank, load_balanced):
        row: List[Tuple[int, int, int, int]] = []
        for k_start, k_len in k_chunks:
            row.append((offset + q_start, q_len, offset + k_start, k_len))
        out.append(row)
    return out


def local_bias(
    bias_fn: Callable[[int, int, int, int], Tensor],
    seq_len: int,
    world_size: int,
    rank: int,
    load_balanced: bool = False,
    k_rank: Optional[int] = None,
    offset: int = 0,
) -> Tensor:
    """The bias of ``rank``'s local queries against all keys, or against ``k_rank``'s keys.

    Calls ``bias_fn(q_len, k_len, q_offset, k_offset)`` for every block of
    :func:`bias_blocks` and concatenates (key blocks along the last dim, query blocks along
    the second last). ``bias_fn`` returns ``(..., q_len, k_len)``: the forward of
    ``posenc.nn.ALiBi`` / ``T5RelativeBias`` / ``KERPLEBias`` (``(H, q_len, k_len)``) as it
    is, or an op through a lambda, e.g.
    ``lambda ql, kl, qo, ko: posenc.ops.alibi_bias(slopes, ql, kl, qo, ko)``.

    Returns ``(..., S_local, seq_len)`` for ``k_rank=None`` — the rows of the full
    ``bias_fn(seq_len, seq_len, offset, offset)`` at this rank's positions — or
    ``(..., S_local, S_local(k_rank))``: those rows at the columns of ``k_rank``'s keys in its
    local order. Gradients flow through ``bias_fn`` (e.g. to a module's parameters). Not
    scriptable (it takes a Python callable); :func:`bias_blocks` is.

    Raises:
        ValueError: as :func:`bias_blocks`; whatever ``bias_fn`` raises.
    """
    rows: List[Tensor] = []
    for row in bias_blocks(seq_len, world_size, rank, load_balanced, k_rank, offset):
        # block = (q_offset, q_len, k_offset, k_len); bias_fn takes (q_len, k_len, q_offset, k_offset)
        cols = [bias_fn(b[1], b[3], b[0], b[2]) for b in row]
        rows.append(cols[0] if len(cols) == 1 else torch.cat(cols, -1))
    return rows[0] if len(rows) == 1 else torch.cat(rows, -2)


def local_rel_pos_scores(
    q: Tensor,
    rel_emb: Tensor,
    seq_len: int,
    world_size: int,
    rank: int,
    load_balanced: bool = False,
    k_rank: Optional[int] = None,
    offset: int = 0,
    max_distance: Optional[int] = None,
) -> Tensor:
    """``posenc.ops.rel_pos_scores`` for ``rank``'s local queries ``q`` ``(B, H, S_local, D)``.

    Each local query chunk ``q[:, :, a:a + q_len]`` goes to the op with its global start as
    ``q_offset`` and each key block of :func:`bias_blocks` as ``(k_offset, k_len)``; the
    results are concatenated as in :func:`local_bias`. Returns ``(B, H, S_local, seq_len)``
    (``k_rank=None``: equal to the rows of the unsharded
    ``rel_pos_scores(q_full, rel_emb, offset, offset, seq_len)``) or
    ``(B, H, S_local, S_local(k_rank))``. Differentiable in ``q`` and ``rel_emb``.

    Raises:
        ValueError: as :func:`bias_blocks`; ``q`` not 4-D or ``q.size(2)`` not this rank's
        local length. RuntimeError: the op's own checks (``rel_emb``, dtypes, devices).
    """
    blocks = bias_blocks(seq_len, world_size, rank, load_balanced, k_rank, offset)
    local_len = 0
    for row in blocks:
        local_len += row[0][1]
    if q.dim() != 4 or q.size(2) != local_len:
        raise ValueError(
            f"posenc.local_rel_pos_scores: argument 'q' must be a 4-D tensor (B, H, {local_len}, D) "
            f"holding rank {rank}'s local queries, but got shape {list(q.shape)}"
        )
    rows: List[Tensor] = []
    at = 0
    for row in blocks:
        q_chunk = q.narrow(2, at, row[0][1])
        at += row[0][1]
        cols: List[Tensor] = []
        for b in row:
            cols.append(ops.rel_pos_scores(q_chunk, rel_emb, b[0], b[2], b[3], max_distance))
        rows.append(cols[0] if len(cols) == 1 else torch.cat(cols, -1))
    return rows[0] if len(rows) == 1 else torch.cat(rows, -2)
