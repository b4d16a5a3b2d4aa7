"""torch.export of every torch.ops.posenc op and every posenc.nn module (issue 11).

Each case is exported with ``torch.export.export`` in strict (TorchDynamo) and non-strict mode;
the exported program must give the eager outputs exactly (it runs the same kernels on the same
inputs) and again after a ``torch.export.save`` / ``torch.export.load`` round trip. The RoPE
and bias cases are also exported with a dynamic sequence length (``torch.export.Dim``) and run
at another length, where they must equal eager at that length.

Not exportable, by design: ``torch.ops.posenc.version`` / ``cuda_version`` (they return a
``str``, which an exported program cannot output) and the pybind11 modules ``posenc.cpp.*``
(opaque C++ objects: TorchDynamo cannot trace into them and non-strict export sees no ops).
Backward through an exported program is not tested; the backward ops are exported as ops.
"""
import dataclasses
from typing import Any, Callable, Optional

import pytest
import torch
from torch import Tensor, nn
from torch.export import Dim
from torch.utils._pytree import tree_leaves

import posenc
from posenc import ops
from posenc.rope_config import RopeConfig

P = torch.ops.posenc
F64 = torch.float64


class Fn(nn.Module):
    """Module whose forward is ``fn(*args)``: lets export see a bare op call."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, *args):
        return self.fn(*args)


class Method(nn.Module):
    """Exports ``module.<name>(*args)``, for the modules' fused ``attention`` methods."""

    def __init__(self, module: nn.Module, name: str) -> None:
        super().__init__()
        self.module = module
        self.name = name

    def forward(self, *args):
        return getattr(self.module, self.name)(*args)


@dataclasses.dataclass
class Case:
    id: str
    make: Callable[[], nn.Module]
    # args(L): the forward arguments at sequence length L
    args: Callable[[int], tuple]
    # dynamic(L_dim): dynamic_shapes for export with a symbolic length (None: static case only)
    dynamic: Optional[Callable[[Any], Any]] = None
    # xfail reason for a known export failure (strict=True: the test flips when it is fixed)
    xfail: Optional[str] = None
    # whether a posenc op stays a node of the graph (False: modules that call no op)
    op_in_graph: bool = True


def rnd(*shape, dtype=torch.float32):
    return torch.randn(*shape, dtype=dtype)


def qkv(L, B=2, H=2, Hkv=1, D=8):
    return rnd(B, H, L, D), rnd(B, Hkv, L, D), rnd(B, Hkv, L, D)


def thd_cu(L):
    # two packed sequences of lengths 3 and L - 3
    return torch.tensor([0, 3, L], dtype=torch.long)


# int lengths take Dim.DYNAMIC (torch.export names Dims for tensor sizes only)
D = Dim.DYNAMIC


def bias_dims(L):
    # (q_len, k_len, q_offset, k_offset): keys longer than queries by one (a cache entry)
    return (L, L + 1, 1, 0)


# ---- the ops, one wrapper each ----------------------------------------------------------------

OP_CASES = [
    Case("sinusoidal_table", lambda: Fn(lambda pos: P.sinusoidal_table(pos, 8, 10000.0, False, F64)),
         lambda L: (torch.arange(-2, L - 2),), lambda L: ({0: L},)),
    # factories without tensor inputs (CompositeImplicitAutograd: export keeps them as nodes)
    Case("alibi_slopes", lambda: Fn(lambda x: x * P.alibi_slopes(6, dtype=F64)), lambda L: (rnd(6, dtype=F64),)),
    Case("alibi_bias", lambda: Fn(lambda s, lq, lk, oq, ok: P.alibi_bias(s, lq, lk, oq, ok, False)),
         lambda L: (ops.alibi_slopes(3),) + bias_dims(L), lambda L: (None, D, D, None, None)),
    Case("alibi_bias.out",
         lambda: Fn(lambda s, lq, lk: _out_call(P.alibi_bias.out, (s.size(0), lq, lk), s, lq, lk, 2, 0, True)),
         lambda L: (ops.alibi_slopes(3), L, L + 2), lambda L: (None, D, D)),
    Case("alibi_bias_backward", lambda: Fn(lambda g, s: P.alibi_bias_backward(g, s, g.size(1), g.size(2), 3, 1, True)),
         lambda L: (rnd(3, L, L + 1), ops.alibi_slopes(3)), lambda L: ({1: L, 2: L + 1}, None)),
    Case("t5_relative_bucket", lambda: Fn(lambda rp: P.t5_relative_bucket(rp, False, 16, 40)),
         lambda L: (torch.arange(L)[None, :] - torch.arange(L)[:, None] - 20,), lambda L: ({0: Dim.DYNAMIC, 1: Dim.DYNAMIC},)),
    Case("t5_bias", lambda: Fn(lambda t, lq, lk, oq, ok: P.t5_bias(t, lq, lk, oq, ok, True, 20)),
         lambda L: (rnd(8, 3),) + bias_dims(L), lambda L: (None, D, D, None, None)),
    Case("t5_bias.out",
         lambda: Fn(lambda t, lq, lk: _out_call(P.t5_bias.out, (t.size(1), lq, lk), t, lq, lk, 0, 3, False, 20)),
         lambda L: (rnd(8, 3), L, L + 2), lambda L: (None, D, D)),
    Case("t5_bias_backward", lambda: Fn(lambda g, t: P.t5_bias_backward(g, t, g.size(1), g.size(2), 0, 2, True, 20)),
         lambda L: (rnd(3, L, L + 1), rnd(8, 3)), lambda L: ({1: L, 2: L + 1}, None)),
    Case("kerple_bias", lambda: Fn(lambda a, b, lq, lk, oq, ok: P.kerple_bias(a, b, lq, lk, oq, ok, "power", False)),
         lambda L: (torch.rand(3) + 0.1, torch.rand(3) + 0.1) + bias_dims(L),
         lambda L: (None, None, D, D, None, None)),
    Case("kerple_bias.out",
         lambda: Fn(lambda a, b, lq, lk: _out_call(P.kerple_bias.out, (a.size(0), lq, lk), a, b, lq, lk, 1, 0, "log", True)),
         lambda L: (torch.rand(3) + 0.1, torch.rand(3) + 0.1, L, L + 2), lambda L: (None, None, D, D)),
    Case("kerple_bias_backward",
         lambda: Fn(lambda g, a, b: P.kerple_bias_backward(g, a, b, g.size(1), g.size(2), 0, 1, "log", False)),
         lambda L: (rnd(3, L, L + 1), torch.rand(3) + 0.1, torch.rand(3) + 0.1), lambda L: ({1: L, 2: L + 1}, None, None)),
    Case("rel_pos_scores", lambda: Fn(lambda q, r, mem: P.rel_pos_scores(q, r, mem, 0, mem + q.size(2), None)),
         lambda L: (rnd(2, 2, L, 4), rnd(2, 9, 4), 2), lambda L: ({2: L}, None, None)),
    Case("rel_pos_scores_backward",
         lambda: Fn(lambda g, q, r: P.rel_pos_scores_backward(g, q, r, 1, 0, g.size(3), 3)),
         lambda L: (rnd(2, 2, L, L + 1), rnd(2, 2, L, 4), rnd(2, 9, 4)), lambda L: ({2: L, 3: L + 1}, {2: L}, None)),
    Case("rope_inv_freq", lambda: Fn(lambda x: x * P.rope_inv_freq(8, 500.0, dtype=F64)), lambda L: (rnd(4, dtype=F64),)),
    Case("rope", lambda: Fn(lambda x, inv, off: P.rope(x, None, inv, off, 6, True, "bhsd")),
         lambda L: (rnd(2, 3, L, 8), ops.rope_inv_freq(6), 5), lambda L: ({2: L}, None, None)),
    Case("rope[positions,bshd,xpos]",
         lambda: Fn(lambda x, pos, inv, z: P.rope(x, pos, inv, 0, None, False, "bshd", None, 1.5, z, 64.0, True, 3)),
         lambda L: (rnd(2, L, 3, 8), torch.randint(0, 100, (2, L)), ops.rope_inv_freq(8), P.xpos_zeta(8)),
         lambda L: ({1: L}, {1: L}, None, None)),
    Case("rope[thd]", lambda: Fn(lambda x, inv, cu: P.rope(x, None, inv, 2, None, False, "thd", cu)),
         lambda L: (rnd(L, 3, 8), ops.rope_inv_freq(8), thd_cu(L)), lambda L: ({0: L}, None, None)),
    Case("rope_backward", lambda: Fn(lambda g, inv: P.rope_backward(g, None, inv, 4, None, False, "bhsd")),
         lambda L: (rnd(2, 3, L, 8), ops.rope_inv_freq(8)), lambda L: ({2: L}, None)),
    Case("rope_qk[xpos]",
         lambda: Fn(lambda q, k, inv, z: P.rope_qk(q, k, None, inv, 3, None, False, "bhsd", None, 1.5, z, 64.0, 2)),
         lambda L: (rnd(2, 4, L, 8), rnd(2, 2, L, 8), ops.rope_inv_freq(8), P.xpos_zeta(8)),
         lambda L: ({2: L}, {2: L}, None, None)),
    Case("rope_qk_backward",
         lambda: Fn(lambda gq, gk, inv: P.rope_qk_backward(gq, gk, None, inv, 1, None, True, "bshd")),
         lambda L: (rnd(2, L, 4, 8), rnd(2, L, 1, 8), ops.rope_inv_freq(8)), lambda L: ({1: L}, {1: L}, None)),
    Case("apply_rotary_pos_emb", lambda: Fn(lambda x, c, s: P.apply_rotary_pos_emb(x, c, s, False, "bhsd")),
         lambda L: (rnd(2, 3, L, 8), rnd(L, 6), rnd(L, 6)), lambda L: ({2: L}, {0: L}, {0: L})),
    Case("apply_rotary_pos_emb_backward",
         lambda: Fn(lambda g, x, c, s: P.apply_rotary_pos_emb_backward(g, x, c, s, True, "bshd")),
         lambda L: (rnd(2, L, 3, 8), rnd(2, L, 3, 8), rnd(2, L, 8), rnd(2, L, 8)),
         lambda L: ({1: L}, {1: L}, {1: L}, {1: L})),
    Case("rope_scaling_inv_freq",
         lambda: Fn(lambda x: _scaled(x, *P.rope_scaling_inv_freq("yarn", 10000.0, 8, factor=4.0, original_max_position_embeddings=16))),
         lambda L: (rnd(4),)),
    Case("xpos_zeta", lambda: Fn(lambda x: x * P.xpos_zeta(8, 0.5)), lambda L: (rnd(4),)),
    Case("xpos_scale", lambda: Fn(lambda pos, z: P.xpos_scale(pos, z, 64.0, 2, True)),
         lambda L: (torch.arange(L), P.xpos_zeta(8)), lambda L: ({0: L}, None)),
    Case("relative_attention[alibi]",
         lambda: Fn(lambda q, k, v, s, off: P.relative_attention(q, k, v, slopes=s, causal=True, q_offset=off, k_offset=off)),
         lambda L: qkv(L) + (ops.alibi_slopes(2), 3), lambda L: ({2: L}, {2: L}, {2: L}, None, None)),
    Case("relative_attention[t5,mask]",
         lambda: Fn(lambda q, k, v, t, m: P.relative_attention(q, k, v, table=t, key_padding_mask=m, max_distance=20, scale=1.0)),
         lambda L: qkv(L) + (rnd(8, 2), torch.arange(L)[None, :].expand(2, L) >= L - 1),
         lambda L: ({2: L}, {2: L}, {2: L}, None, {1: L})),
    Case("relative_attention[kerple]",
         lambda: Fn(lambda q, k, v, a, b: P.relative_attention(q, k, v, r1=a, r2=b, causal=True, kerple_kind="power")),
         lambda L: qkv(L) + (torch.rand(2) + 0.1, torch.rand(2) + 0.1), lambda L: ({2: L}, {2: L}, {2: L}, None, None)),
    Case("relative_attention[rel_emb]",
         lambda: Fn(lambda q, k, v, r, qr: P.relative_attention(q, k, v, rel_emb=r, q_rel=qr, causal=True)),
         lambda L: qkv(L) + (rnd(2, 7, 8), rnd(2, 2, L, 8)), lambda L: ({2: L}, {2: L}, {2: L}, None, {2: L})),
    Case("relative_attention[thd]",
         lambda: Fn(lambda q, k, v, s, cu: P.relative_attention(q, k, v, slopes=s, causal=True, layout="thd", cu_seqlens_q=cu)),
         lambda L: (rnd(L, 2, 8), rnd(L, 1, 8), rnd(L, 1, 8), ops.alibi_slopes(2), thd_cu(L)),
         lambda L: ({0: L}, {0: L}, {0: L}, None, None)),
    Case("forgetting_gate_bias", lambda: Fn(lambda lf, lq: P.forgetting_gate_bias(lf, lq, lf.size(2) - lq, 0)),
         lambda L: (torch.nn.functional.logsigmoid(rnd(2, 3, L)), 4)),
    Case("forgetting_gate_bias_backward",
         lambda: Fn(lambda g, lf: P.forgetting_gate_bias_backward(g, lf, g.size(2), lf.size(2) - g.size(2), 0)),
         lambda L: (rnd(2, 3, 4, L), torch.nn.functional.logsigmoid(rnd(2, 3, L)))),
    Case("relative_attention[forgetting_gate]",
         lambda: Fn(lambda q, k, v, lf: P.relative_attention(q, k, v, causal=True, log_fgate=lf)),
         lambda L: qkv(L) + (torch.nn.functional.logsigmoid(rnd(2, 2, L)),)),
    Case("relative_attention_backward", lambda: Fn(_attention_backward),
         lambda L: qkv(L) + (ops.alibi_slopes(2),), lambda L: ({2: L}, {2: L}, {2: L}, None)),
]


def _out_call(op, shape, *args):
    # a fresh buffer inside the graph, written by the out= overload (functionalized by export)
    out = torch.empty(shape, dtype=args[0].dtype)
    op(*args, out=out)
    return out


def _scaled(x: Tensor, inv_freq: Tensor, attention_factor: float) -> Tensor:
    return x * inv_freq * attention_factor


def _attention_backward(q, k, v, s):
    out, lse = P.relative_attention(q, k, v, slopes=s, causal=True)
    g = out * 0.5 + 1.0
    return P.relative_attention_backward(
        g, None, q, k, v, out, lse, s, None, None, None, None, None, True, None, None, 0, 0,
        None, None, None, "bhsd", None, None, None, None,
    )


# ---- the posenc.nn modules (and the Hugging Face drop-ins) ------------------------------------


def _config(rope_type):
    fields = {
        "default": {},
        "yarn": dict(factor=4.0, original_max_position_embeddings=16),
        "xpos": dict(xpos_gamma=0.4, xpos_scale_base=64.0),
        "dynamic": dict(factor=4.0, max_position_embeddings=16),
        "longrope": dict(factor=4.0, original_max_position_embeddings=16, max_position_embeddings=64,
                         short_factor=[1.0, 1.1, 1.3, 1.7], long_factor=[1.0, 2.0, 4.0, 8.0]),
    }[rope_type]
    return RopeConfig(head_dim=8, rope_type=rope_type, **fields)


class RopeSeqLen(nn.Module):
    """A length-dependent RotaryEmbedding given ``seq_len`` (as a compiled decode loop does)."""

    def __init__(self, rope: nn.Module) -> None:
        super().__init__()
        self.rope = rope

    def forward(self, q: Tensor, k: Tensor, seq_len: int):
        return self.rope(q, k, None, 0, None, seq_len)


class HFRope(nn.Module):
    """transformers' rotary path: model-level embedding, then apply_rotary_pos_emb."""

    def __init__(self, fused: bool) -> None:
        super().__init__()
        from transformers import LlamaConfig

        config = LlamaConfig(hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                             max_position_embeddings=64, rope_theta=500.0)
        self.rotary = posenc.hf.RotaryEmbedding(config, fused=fused)

    def forward(self, q: Tensor, k: Tensor, position_ids: Tensor):
        cos, sin = self.rotary(q, position_ids)
        return posenc.hf.apply_rotary_pos_emb(q, k, cos, sin)


def _rope_args(layout):
    def args(L):
        if layout == "bhsd":
            return (rnd(2, 3, L, 8), rnd(2, 1, L, 8), None, 4)
        if layout == "bshd":
            return (rnd(2, L, 3, 8), rnd(2, L, 1, 8), torch.arange(L) + 7)
        return (rnd(L, 3, 8), rnd(L, 1, 8), None, 0, thd_cu(L))

    return args


def _rope_dynamic(layout):
    def dyn(L):
        if layout == "bhsd":
            return ({2: L}, {2: L}, None, None)
        if layout == "bshd":
            return ({1: L}, {1: L}, {0: L})
        return ({0: L}, {0: L}, None, None, None)

    return dyn


def _bias_dynamic(L):
    return (D, D, None, None)


def _module_attention_args(L):
    return qkv(L, H=3, Hkv=3) + (None, 2, 2)


MODULE_CASES = [
    Case("SinusoidalPositionalEncoding", lambda: posenc.nn.SinusoidalPositionalEncoding(8, interleaved=False),
         lambda L: (rnd(2, L, 8), 3), lambda L: ({1: L}, None)),
    Case("LearnedPositionalEmbedding", lambda: posenc.nn.LearnedPositionalEmbedding(32, 8),
         lambda L: (rnd(2, L, 8), 5), op_in_graph=False),
] + [
    Case(f"RotaryEmbedding[{layout}]", lambda layout=layout: posenc.nn.RotaryEmbedding(8, 6, layout=layout, interleaved=layout == "bshd"),
         _rope_args(layout), _rope_dynamic(layout))
    for layout in ("bhsd", "bshd", "thd")
] + [
    Case(f"RotaryEmbedding[{t}]", lambda t=t: posenc.nn.RotaryEmbedding(8, scaling=_config(t)),
         lambda L: (rnd(2, 3, L, 8), rnd(2, 3, L, 8), None, 2), lambda L: ({2: L}, {2: L}, None, None))
    for t in ("yarn", "xpos")
] + [
    Case("RotaryEmbedding[exact]", lambda: posenc.nn.RotaryEmbedding(8, precision="exact"),
         lambda L: (rnd(1, 2, L, 8, dtype=F64), rnd(1, 2, L, 8, dtype=F64), None, 1000),
         lambda L: ({2: L}, {2: L}, None, None)),
    Case("cope_scores", lambda: Fn(lambda q, k, e: P.cope_scores(q, k, e, 0.7, k.size(2) - q.size(2), 0)),
         lambda L: (rnd(2, 2, L, 4), rnd(2, 2, L + 3, 4), rnd(5, 4)), lambda L: ({2: L}, {2: L + 3}, None)),
    Case("cope_scores_backward",
         lambda: Fn(lambda g, q, k, e: P.cope_scores_backward(g, q, k, e, None, 3, 0)),
         lambda L: (rnd(2, 2, L, L + 3), rnd(2, 2, L, 4), rnd(2, 2, L + 3, 4), rnd(5, 4)),
         lambda L: ({2: L, 3: L + 3}, {2: L}, {2: L + 3}, None)),
    # Length-dependent types with an explicit seq_len (a specialised int: the table is chosen at
    # export time, as torch.compile recompiles when it changes).
    Case("RotaryEmbedding[dynamic,seq_len]", lambda: RopeSeqLen(posenc.nn.RotaryEmbedding(8, scaling=_config("dynamic"))),
         lambda L: (rnd(1, 2, L, 8), rnd(1, 2, L, 8), 40)),
    Case("RotaryEmbedding[longrope,seq_len]", lambda: RopeSeqLen(posenc.nn.RotaryEmbedding(8, scaling=_config("longrope"))),
         lambda L: (rnd(1, 2, L, 8), rnd(1, 2, L, 8), 40)),
    Case("ALiBi", lambda: posenc.nn.ALiBi(3, causal=False), bias_dims, _bias_dynamic),
    Case("ALiBi.attention", lambda: Method(posenc.nn.ALiBi(3), "attention"), _module_attention_args,
         lambda L: ({2: L}, {2: L}, {2: L}, None, None, None)),
    Case("T5RelativeBias", lambda: posenc.nn.T5RelativeBias(3, num_buckets=8, max_distance=16), bias_dims, _bias_dynamic),
    Case("T5RelativeBias.attention", lambda: Method(posenc.nn.T5RelativeBias(3, bidirectional=False), "attention"),
         _module_attention_args, lambda L: ({2: L}, {2: L}, {2: L}, None, None, None)),
    Case("KERPLEBias", lambda: posenc.nn.KERPLEBias(3, kind="power"), bias_dims, _bias_dynamic),
    Case("KERPLEBias.attention", lambda: Method(posenc.nn.KERPLEBias(3, causal=False), "attention"),
         _module_attention_args, lambda L: ({2: L}, {2: L}, {2: L}, None, None, None)),
    Case("ForgettingGate", lambda: posenc.nn.ForgettingGate(8, 2), lambda L: (rnd(2, L, 8),)),
    Case("NoPE.attention", lambda: Method(posenc.nn.NoPE(), "attention"), lambda L: qkv(L)),
    Case("TransformerXLRelativeScore", lambda: posenc.nn.TransformerXLRelativeScore(8, 2, 4),
         lambda L: (rnd(2, 2, L, 4), 3), lambda L: ({2: L}, None)),
    Case("TransformerXLRelativeScore.attention", lambda: Method(posenc.nn.TransformerXLRelativeScore(8, 2, 4), "attention"),
         lambda L: (rnd(2, 2, L, 4), rnd(2, 1, L + 3, 4), rnd(2, 1, L + 3, 4), 3),
         lambda L: ({2: L}, {2: L + 3}, {2: L + 3}, None)),
    Case("TransformerXLRelativeScore.content_query", lambda: Method(posenc.nn.TransformerXLRelativeScore(8, 2, 4), "content_query"),
         lambda L: (rnd(2, 2, L, 4),), op_in_graph=False),
    Case("CoPE", lambda: posenc.nn.CoPE(5, 4, scale=0.7), lambda L: (rnd(2, 2, L, 4), rnd(2, 2, L, 4)),
         lambda L: ({2: L}, {2: L})),
    Case("hf.RotaryEmbedding+apply_rotary_pos_emb", lambda: HFRope(fused=False),
         lambda L: (rnd(2, 4, L, 8), rnd(2, 2, L, 8), torch.arange(L).expand(2, L) + 3),
         lambda L: ({2: L}, {2: L}, {1: L})),
    Case("hf.RotaryEmbedding[fused]+apply_rotary_pos_emb", lambda: HFRope(fused=True),
         lambda L: (rnd(2, 4, L, 8), rnd(2, 2, L, 8), torch.arange(L).expand(2, L) + 3),
         lambda L: ({2: L}, {2: L}, {1: L})),
]

CASES = OP_CASES + MODULE_CASES
DYNAMIC_CASES = [c for c in CASES if c.dynamic is not None]
L0, L1 = 6, 11


def _params(cases):
    out = []
    for c in cases:
        marks = [pytest.mark.xfail(reason=c.xfail, strict=True)] if c.xfail else []
        out.append(pytest.param(c, id=c.id, marks=marks))
    return out


def _assert_equal(got, want):
    got, want = tree_leaves(got), tree_leaves(want)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype, (g.shape, w.shape, g.dtype, w.dtype)
        # the exported program runs the same kernels on the same inputs: bit-identical
        torch.testing.assert_close(g, w, rtol=0, atol=0, equal_nan=True)


def _eager(model, args):
    with torch.no_grad():
        return model(*args)


def _export(model, args, strict, dynamic_shapes=None):
    if dynamic_shapes is not None and isinstance(model, (Fn, Method)):
        dynamic_shapes = (dynamic_shapes,)  # forward(*args): one varargs entry
    return torch.export.export(model, args, dynamic_shapes=dynamic_shapes, strict=strict)


@pytest.mark.parametrize("strict", [False, True], ids=["nonstrict", "strict"])
@pytest.mark.parametrize("case", _params(CASES))
def test_export_runs_and_round_trips(case, strict, tmp_path):
    model = case.make().eval()
    args = case.args(L0)
    want = _eager(model, args)
    ep = _export(model, args, strict)
    # the op reaches the graph as a posenc node, not baked into a constant
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert any(t.startswith("posenc.") for t in targets) == case.op_in_graph, targets
    _assert_equal(ep.module()(*args), want)

    path = tmp_path / "model.pt2"
    torch.export.save(ep, path)
    loaded = torch.export.load(path)
    _assert_equal(loaded.module()(*args), want)


@pytest.mark.parametrize("strict", [False, True], ids=["nonstrict", "strict"])
@pytest.mark.parametrize("case", _params(DYNAMIC_CASES))
def test_export_dynamic_sequence_length(case, strict, tmp_path):
    model = case.make().eval()
    L = Dim("L", min=4, max=64)
    ep = _export(model, case.args(L0), strict, dynamic_shapes=case.dynamic(L))
    path = tmp_path / "model.pt2"
    torch.export.save(ep, path)
    loaded = torch.export.load(path).module()
    for n in (L1, L0, 4):
        args = case.args(n)
        want = _eager(model, args)
        _assert_equal(ep.module()(*args), want)
        _assert_equal(loaded(*args), want)



@pytest.mark.parametrize("strict", [False, True], ids=["nonstrict", "strict"])
def test_pybind_module_is_not_exportable_its_twin_is(strict):
    # posenc.cpp modules wrap a C++ object (torch.nn.cpp.ModuleWrapper) whose parameters
    # export cannot enumerate; the posenc.nn twin with the same state_dict exports instead.
    cc = posenc.cpp.T5RelativeBias(3, num_buckets=8, max_distance=16)
    with pytest.raises(TypeError, match=r"named_parameters\(\): incompatible function arguments"):
        torch.export.export(cc, (5, 6), strict=strict)
    py = posenc.nn.T5RelativeBias(3, num_buckets=8, max_distance=16)
    py.load_state_dict(posenc.cpp.state_dict(cc))
    ep = torch.export.export(py, (5, 6), dynamic_shapes=(D, D), strict=strict)
    with torch.no_grad():
        _assert_equal(ep.module()(9, 12), cc(9, 12))
