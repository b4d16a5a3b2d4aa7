"""flash-attn's call signatures on top of :func:`posenc.ops.relative_attention`.

Code written for the ``flash_attn`` package (``flash_attn_func``, ``flash_attn_varlen_func``,
flash-attn 2.x) runs on posenc — on the CPU too, and with posenc's deterministic backward —
by changing the import::

    from posenc.flash_attn import flash_attn_varlen_func

The semantics are flash-attn's (its docstrings, v2.1+): ``causal`` aligns the mask to the
bottom-right corner, so query ``i`` of a sequence with ``seqlen_q`` queries and ``seqlen_k``
keys sees the keys ``j <= i + seqlen_k - seqlen_q``; ``alibi_slopes`` add
``-slope * |i + seqlen_k - seqlen_q - j|`` to the scores. In posenc terms the queries sit at
positions ``seqlen_k - seqlen_q + i`` and the keys at ``j``, and ALiBi is the bidirectional
``alibi_bias`` (equal to the causal one wherever the causal mask lets a key through).

Supported: ``q``/``k``/``v`` in flash-attn's layouts with GQA/MQA, int32 (flash-attn's dtype)
or int64 ``cu_seqlens``, ``softmax_scale``, ``causal``, ``alibi_slopes`` ``(H,)`` or
``(B, H)``, ``return_attn_probs`` (returns ``(out, softmax_lse, None)``: posenc never forms
the probabilities). Rejected with a ``ValueError`` naming the argument: ``dropout_p != 0``,
``window_size != (-1, -1)``, ``softcap != 0``, ``block_table``. ``deterministic`` is accepted
and has no effect (posenc's backward is always deterministic).

When every sequence of a varlen batch has ``seqlen_k - seqlen_q`` equal (training: both equal)
and the slopes are ``(H,)``, one fused call covers the batch; otherwise (chunked prefill
against a cache, per-batch slopes) the adapter makes one call per sequence, reading
``cu_seqlens`` on the host.
"""
from typing import List, Optional, Tuple, Union

import torch
from torch import Tensor

from . import ops

__all__ = ["flash_attn_func", "flash_attn_varlen_func"]

_Result = Union[Tensor, Tuple[Tensor, Tensor, None]]


def _reject_unsupported(
    fn: str, dropout_p: float, window_size: Tuple[int, int], softcap: float, block_table: Optional[Tensor]
) -> None:
    if dropout_p != 0.0:
        raise ValueError(f"posenc.flash_attn.{fn}: argument 'dropout_p' must be 0.0 (posenc has no "
                         f"attention dropout), but got {dropout_p}")
    if tuple(window_size) != (-1, -1):
        raise ValueError(f"posenc.flash_attn.{fn}: argument 'window_size' must be (-1, -1) (no "
                         f"sliding window in posenc), but got {tuple(window_size)}")
    if softcap != 0.0:
        raise ValueError(f"posenc.flash_attn.{fn}: argument 'softcap' must be 0.0 (no logit "
                         f"soft-capping in posenc), but got {softcap}")
    if block_table is not None:
        raise ValueError(f"posenc.flash_attn.{fn}: argument 'block_table' must be None (no paged "
                         f"KV cache in posenc), but got a tensor")


def _check_slopes(fn: str, alibi_slopes: Optional[Tensor], batch: int, heads: int) -> None:
    if alibi_slopes is None:
        return
    if not alibi_slopes.is_floating_point():
        raise ValueError(f"posenc.flash_attn.{fn}: argument 'alibi_slopes' must be a floating tensor "
                         f"(float32, as flash-attn takes it), but got dtype {alibi_slopes.dtype}")
    shape = list(alibi_slopes.shape)
    if shape != [heads] and shape != [batch, heads]:
        raise ValueError(f"posenc.flash_attn.{fn}: argument 'alibi_slopes' must have shape "
                         f"({heads},) or ({batch}, {heads}), but got {shape}")


def _slopes_for(alibi_slopes: Optional[Tensor], b: int, dtype: torch.dtype) -> Optional[Tensor]:
    # flash-attn takes fp32 slopes for any q dtype; posenc's op wants them in fp32 as well
    # (fp64 for fp64 inputs).
    if alibi_slopes is None:
        return None
    s = alibi_slopes if alibi_slopes.dim() == 1 else alibi_slopes[b]
    return s.to(torch.float64 if dtype == torch.float64 else torch.float32)


def flash_attn_func(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    dropout_p: float = 0.0,
    softmax_scale: Optional[float] = None,
    causal: bool = False,
    window_size: Tuple[int, int] = (-1, -1),
    softcap: float = 0.0,
    alibi_slopes: Optional[Tensor] = None,
    deterministic: bool = False,
    return_attn_probs: bool = False,
) -> _Result:
    """flash-attn's ``flash_attn_func``: ``q`` ``(B, Sq, H, D)``, ``k`` ``(B, Sk, H_kv, D)``,
    ``v`` ``(B, Sk, H_kv, Dv)`` -> ``out`` ``(B, Sq, H, Dv)`` in ``q``'s dtype (with
    ``return_attn_probs``: ``(out, softmax_lse (B, H, Sq) float32, None)``). Semantics and
    limits: see the module docstring. Errors: as :func:`posenc.ops.relative_attention` for
    shapes/dtypes/devices, ``ValueError`` for the unsupported options."""
    fn = "flash_attn_func"
    _reject_unsupported(fn, dropout_p, window_size, softcap, None)
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"posenc.flash_attn.{fn}: arguments 'q', 'k', 'v' must be 4-D (batch, seqlen, "
                         f"heads, head_dim), but got shapes {list(q.shape)}, {list(k.shape)}, {list(v.shape)}")
    batch, sq, heads = q.shape[0], q.shape[1], q.shape[2]
    sk = k.shape[1]
    _check_slopes(fn, alibi_slopes, batch, heads)
    qh, kh, vh = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # views: any strides
    if alibi_slopes is None or alibi_slopes.dim() == 1:
        out, lse = ops.relative_attention(
            qh, kh, vh, slopes=_slopes_for(alibi_slopes, 0, q.dtype), causal=causal, scale=softmax_scale,
            q_offset=sk - sq, bidirectional=True if alibi_slopes is not None else None,
        )
    else:
        parts = [
            ops.relative_attention(
                qh[b : b + 1], kh[b : b + 1], vh[b : b + 1], slopes=_slopes_for(alibi_slopes, b, q.dtype),
                causal=causal, scale=softmax_scale, q_offset=sk - sq, bidirectional=True,
            )
            for b in range(batch)
        ]
        out = torch.cat([p[0] for p in parts]) if parts else qh.new_empty(0, heads, sq, v.shape[-1])
        lse = torch.cat([p[1] for p in parts]) if parts else qh.new_empty(0, heads, sq, dtype=torch.float32)
    out = out.transpose(1, 2)
    return (out, lse, None) if return_attn_probs else out


def _host_cu(fn: str, name: str, cu: Tensor, total: int, total_name: str) -> List[int]:
    if cu.device.type == "meta":
        raise ValueError(f"posenc.flash_attn.{fn}: argument '{name}' must hold values (CPU or CUDA), "
                         f"but got a tensor on the meta device")
    if cu.dim() != 1 or cu.dtype not in (torch.int32, torch.int64) or cu.numel() < 1:
        raise ValueError(f"posenc.flash_attn.{fn}: argument '{name}' must be a non-empty 1-D int32 or "
                         f"int64 tensor, but got shape {list(cu.shape)} and dtype {cu.dtype}")
    v = [int(x) for x in cu.tolist()]
    # Checked here too: the per-sequence path slices with these values before the op sees them.
    if v[0] != 0 or v[-1] != total or any(b < a for a, b in zip(v, v[1:])):
        raise ValueError(f"posenc.flash_attn.{fn}: argument '{name}' must start at 0, never decrease and "
                         f"end at {total_name} = {total}, but got {v}")
    return v


def flash_attn_varlen_func(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    cu_seqlens_q: Tensor,
    cu_seqlens_k: Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    dropout_p: float = 0.0,
    softmax_scale: Optional[float] = None,
    causal: bool = False,
    window_size: Tuple[int, int] = (-1, -1),
    softcap: float = 0.0,
    alibi_slopes: Optional[Tensor] = None,
    deterministic: bool = False,
    return_attn_probs: bool = False,
    block_table: Optional[Tensor] = None,
) -> _Result:
    """flash-attn's ``flash_attn_varlen_func``: packed ``q`` ``(total_q, H, D)``, ``k``
    ``(total_k, H_kv, D)``, ``v`` ``(total_k, H_kv, Dv)``, ``cu_seqlens_q``/``cu_seqlens_k``
    ``(B + 1,)`` int32 (or int64) on ``q``'s device -> ``out`` ``(total_q, H, Dv)`` in ``q``'s
    dtype (with ``return_attn_probs``: ``(out, softmax_lse (H, total_q) float32, None)``, the
    layout flash-attn 2 returns). ``max_seqlen_q``/``max_seqlen_k`` must be at least the
    longest sequences (as in flash-attn; checked). Semantics and limits: see the module
    docstring. Errors: ``ValueError`` naming the argument for inputs not 3-D, ``cu_seqlens``
    not int32/int64, not starting at 0, decreasing or not ending at the token count, of
    different lengths, ``max_seqlen`` below the longest sequence, and the unsupported options;
    otherwise those of :func:`posenc.ops.relative_attention`."""
    fn = "flash_attn_varlen_func"
    _reject_unsupported(fn, dropout_p, window_size, softcap, block_table)
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 3:
            raise ValueError(f"posenc.flash_attn.{fn}: argument '{name}' must be 3-D (total_tokens, heads, "
                             f"head_dim), but got shape {list(t.shape)}")
    cq = _host_cu(fn, "cu_seqlens_q", cu_seqlens_q, q.shape[0], "total_q")
    ck = _host_cu(fn, "cu_seqlens_k", cu_seqlens_k, k.shape[0], "total_k")
    if len(cq) != len(ck) or len(cq) < 1:
        raise ValueError(f"posenc.flash_attn.{fn}: arguments 'cu_seqlens_q' and 'cu_seqlens_k' must have "
                         f"the same length >= 1 (batch + 1), but got {len(cq)} and {len(ck)}")
    batch, heads = len(cq) - 1, q.shape[1]
    _check_slopes(fn, alibi_slopes, batch, heads)
    lens_q = [cq[i + 1] - cq[i] for i in range(batch)]
    lens_k = [ck[i + 1] - ck[i] for i in range(batch)]
    if lens_q and max(lens_q) > max_seqlen_q:
        raise ValueError(f"posenc.flash_attn.{fn}: argument 'max_seqlen_q' must be >= the longest query "
                         f"sequence ({max(lens_q)}), but got {max_seqlen_q}")
    if lens_k and max(lens_k) > max_seqlen_k:
        raise ValueError(f"posenc.flash_attn.{fn}: argument 'max_seqlen_k' must be >= the longest key "
                         f"sequence ({max(lens_k)}), but got {max_seqlen_k}")
    deltas = {lk - lq for lq, lk in zip(lens_q, lens_k)}
    bidir = True if alibi_slopes is not None else None
    if batch == 0 or (len(deltas) <= 1 and (alibi_slopes is None or alibi_slopes.dim() == 1)):
        # One fused call: the op's positions restart per sequence, offset by the common delta.
        out, lse = ops.relative_attention(
            q, k, v, slopes=None if batch == 0 else _slopes_for(alibi_slopes, 0, q.dtype), causal=causal,
            scale=softmax_scale, q_offset=deltas.pop() if deltas else 0,
            bidirectional=bidir if batch else None, layout="thd",
            cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k,
            max_seqlen_q=max_seqlen_q, max_seqlen_k=max_seqlen_k,
        )
    else:
        outs, lses = [], []
        for b in range(batch):
            lq, lk = lens_q[b], lens_k[b]
            cu_b_q = torch.tensor([0, lq], dtype=cu_seqlens_q.dtype, device=q.device)
            cu_b_k = torch.tensor([0, lk], dtype=cu_seqlens_k.dtype, device=q.device)
            o, s = ops.relative_attention(
                q[cq[b] : cq[b + 1]], k[ck[b] : ck[b + 1]], v[ck[b] : ck[b + 1]],
                slopes=_slopes_for(alibi_slopes, b, q.dtype), causal=causal, scale=softmax_scale,
                q_offset=lk - lq, bidirectional=bidir, layout="thd", cu_seqlens_q=cu_b_q,
                cu_seqlens_k=cu_b_k, max_seqlen_q=lq, max_seqlen_k=lk,
            )
            outs.append(o)
            lses.append(s)
        out = torch.cat(outs, dim=0)
        lse = torch.cat(lses, dim=1)
    return (out, lse, None) if return_attn_probs else out
