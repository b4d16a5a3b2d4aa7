"""Train short, test long: how far past its training length each positional encoding goes.

This reproduces the experiment of Press et al. 2022 ("Train Short, Test Long: Attention with
Linear Biases Enables Input Length Extrapolation", §2 and Figure 1) at laptop scale: one small
causal byte-level transformer language model is trained per positional encoding at a short
training length ``L``, then each model is evaluated on held-out text at ``1x, 2x, 4x, 8x, 16x
L``. Press et al. found that encodings which only know the positions they were trained on
(sinusoidal, RoPE; learned cannot even run) degrade quickly past ``L``, while ALiBi keeps its
``L`` perplexity and T5's bucketed bias degrades slowly; KERPLE (Chi et al. 2022) was built to
extrapolate like ALiBi. ``docs/extrapolate/`` holds the table and plot of the default run.

Encodings (``--encodings``, comma separated, default all):

* ``none``        NoPE (Kazemnejad et al. 2023; ``nope`` is accepted as an alias): no position
  information except the causal mask (``posenc.nn.NoPE.attention``: the fused op without a
  position term).
* ``sinusoidal``  ``posenc.nn.SinusoidalPositionalEncoding`` added to the byte embeddings.
* ``learned``     ``posenc.nn.LearnedPositionalEmbedding`` with ``max_len = L``; it cannot go
  past its table, which the table reports as ``n/a (table L)`` (the module's error is caught).
* ``rope``        ``posenc.nn.RotaryEmbedding`` on queries and keys in every layer.
* ``alibi``       ``posenc.nn.ALiBi`` bias (shared by all layers, fixed slopes).
* ``t5``          ``posenc.nn.T5RelativeBias`` (32 causal buckets, ``max_distance = L/2`` so
  that the last bucket, which every longer distance shares, is trained; shared by all layers,
  as in T5).
* ``kerple``      ``posenc.nn.KERPLEBias`` (logarithmic kernel, learned per layer).
* ``xl``          Transformer-XL relative attention: content score ``(q + u) k^T`` plus the
  position score of ``posenc.nn.TransformerXLRelativeScore`` (per layer), no memory.
* ``forgetting_gate``  the Forgetting Transformer's data-dependent forget gate (Lin et al.
  2025; x-transformers' data-dependent ALiBi): ``posenc.nn.ForgettingGate`` per layer, bias
  ``sum_{j < s <= i} log sigmoid(w^T x_s + b)``, no other position information.

RoPE scalings (``--rope-scalings``, default all; rows ``rope+<scaling>``): the trained ``rope``
model, not retrained, evaluated with the frequencies of a context-extension scaling from
``posenc.rope_config.RopeConfig`` (``posenc.ops.rope`` with its ``inv_freq`` and
``attention_factor``). The papers set the factor to target length / original length; here the
target is the evaluated length ``n``, so the factor is ``s = max(1, n / L)``: at ``n <= L``
every scaling is the identity and the row equals ``rope`` exactly.

* ``linear``   position interpolation (Chen et al. 2023): frequencies divided by ``s``.
* ``ntk``      NTK-aware base ``10000 * s ** (d / (d - 2))`` (bloc97 2023).
* ``dynamic``  dynamic NTK (emozilla 2023; transformers ``dynamic`` with ``factor = 1``,
  ``max_position_embeddings = L``): the NTK base for ``s = max(1, current length / L)``. Run
  over a whole window at once it would equal ``ntk`` (the current length is ``n``), so it is
  evaluated as in generation: the bytes of each block of ``L`` are predicted by a pass over the
  window up to the block's end with ``s`` = that length / ``L`` (a full recompute: every
  earlier key is rotated with the current frequencies). This costs ``(n / L + 1) / 2`` passes.
* ``yarn``     YaRN (Peng et al. 2023): NTK-by-parts with ``original_max_position_embeddings =
  L``, ``beta_fast = 32``, ``beta_slow = 1``, attention factor ``0.1 ln s + 1`` on q and k.

Fine-tuned scalings (``--finetune-steps``, default 10% of ``--steps``, 0 disables; rows
``rope+linear-ft2x`` and ``rope+yarn-ft2x``): as in the PI and YaRN papers, a copy of the rope
model is fine-tuned briefly at ``2L`` with the scaling at factor 2 (fresh AdamW, peak rate
``--finetune-lr``, default 0.1 x ``--lr``, the training schedule, batches from seed + 1), then
evaluated at every length with factor ``max(2, n / L)``: the factor it was tuned with up to
``2L`` (the papers evaluate a fine-tuned model at its fixed factor), and a factor that grows
with the length past it, like the zero-shot rows (with factor 2 fixed, lengths past ``2L`` would
put positions outside the tuned range). At ``n = L`` these rows show what fine-tuning with
scaling costs at the original length. The table's ``train s`` column holds their fine-tune time.

Model: pre-LayerNorm decoder (byte embedding, ``--layers`` blocks of causal multi-head
attention with ``--heads`` heads + 4x GELU MLP, final LayerNorm, linear head over 256 bytes),
no dropout. The relative encodings (alibi, t5, kerple, xl) attend through
:func:`posenc.ops.relative_attention` (their modules' ``attention`` method: the position term
computed per tile, no ``L x L`` tensor); ``--attention materialized`` passes their bias (plus
an additive causal mask) to ``torch.nn.functional.scaled_dot_product_attention`` instead, for
comparison (same numbers, O(L^2) memory). The others use SDPA with ``is_causal``. Every
evaluation length reports its wall time and peak resident memory. Training: AdamW, linear
warm-up then cosine decay, gradient clipping at 1, random windows of ``L + 1`` bytes from the
training split. Every encoding sees exactly the same batches.

Evaluation: the held-out split is cut to a multiple of the longest evaluation length (at most
``--eval-bytes``) and read
as NON-OVERLAPPING windows of each evaluation length (Press et al.'s "nonoverlapping
inference"): every held-out byte after the first is predicted exactly once at every length, so
the columns score the same bytes; a byte's context is the part of its window before it. The
table reports perplexity per byte (``exp`` of the mean negative log-likelihood); the JSON also
holds bits per byte. For scale, the table prints the perplexity of a unigram byte model
(train-split frequencies) on the same bytes: a model that learned anything sits well below it.

Corpus: by default the Python language reference that ships with every Python install, the
pydoc topics of the standard library (``pydoc_data.topics.topics``, about 465 KB of English
with code): the values joined in sorted key order, as UTF-8 bytes; the last
``--heldout-frac`` (default 10%) is held out. ``--corpus PATH`` reads your own file (bytes)
instead. Nothing is downloaded and nothing is written outside ``--out``.

Outputs in ``--out`` (default ``./extrapolate_out``): ``table.txt`` (the printed table),
``extrapolate.png`` (perplexity vs evaluation length, log2 x axis, one line per encoding, a
dashed line at ``L``) and ``results.json`` (config, corpus, per-encoding results).

Flags (``--help`` lists the defaults):

* model and training: ``--encodings``, ``--train-len`` (L, 64), ``--steps`` (800),
  ``--batch-size`` (16), ``--d-model`` (64), ``--layers`` (2), ``--heads`` (4), ``--lr``
  (peak AdamW rate, 6e-3), ``--seed`` (0);
* data: ``--corpus PATH``, ``--heldout-frac`` (0.1), ``--eval-factors`` (``1,2,4,8,16``),
  ``--eval-bytes`` (held-out bytes scored, 32768), ``--eval-tokens`` (bytes per evaluation
  batch: a memory knob, the numbers change only in the last bits);
* RoPE scaling: ``--rope-scalings`` (``linear,ntk,dynamic,yarn``; ``none``),
  ``--finetune-steps`` (10% of ``--steps``), ``--finetune-lr`` (0.1 x ``--lr``);
* running: ``--out``, ``--threads`` (``torch.set_num_threads``; default 1, ``0`` for all
  usable cores: see below), ``--no-plot``, ``--no-progress`` (tqdm bars go to stderr, drawn
  only when it is a terminal);
* ``--quick``: L=32, a 1-layer d_model 32 model, 200 steps, evaluated at 1x, 2x and 4x L on
  8192 bytes: the whole pipeline in seconds (explicit flags still override it).

Defaults take about 4-5 minutes on one core of a busy machine (8 under heavy load; the RoPE
scaling rows add about 10%); ``--quick`` 15-30 seconds.
The same ``--seed`` gives the same numbers twice: the model initialisation, the batch order
and the kernels are deterministic.

Threads: the models are tiny (matrices of 64 x 256), so intra-op threads hardly pay, and on a
machine whose cores are busy with other work they cost a lot (measured on a loaded 2-core
machine: 0.03 s per training step with 1 thread, 0.12-0.5 s with 2). One thread is also what
makes the numbers independent of the core count (reductions split across threads sum in a
different order). Hence ``--threads 1`` by default; ``--threads 0`` uses every usable core.

Run as ``posenc-extrapolate`` (console script) or ``python -m posenc.extrapolate``.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import sys
import textwrap
import time
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import posenc
import posenc.nn as pnn
from posenc.rope_config import RopeConfig

ENCODINGS = ("none", "sinusoidal", "learned", "rope", "alibi", "t5", "kerple", "xl", "forgetting_gate")
# Other names accepted by --encodings.
ALIASES = {"nope": "none"}
DEFAULT_FACTORS = (1, 2, 4, 8, 16)
QUICK_FACTORS = (1, 2, 4)

# Defaults of the full run, and what --quick changes (explicit flags win over both).
# Sized to finish all nine encodings in a few minutes on 2 CPU cores while every model still
# learns (held-out perplexity ~5-8 per byte against ~26 for a unigram model).
DEFAULTS = dict(train_len=64, steps=800, batch_size=16, d_model=64, layers=2, heads=4, lr=6e-3)
QUICK = dict(train_len=32, steps=200, batch_size=16, d_model=32, layers=1, heads=2, lr=1e-2)
T5_BUCKETS = 32
# RoPE scalings applied to the trained rope model at evaluation time, and the ones that also get
# a short fine-tune at FT_FACTOR x L (as Chen et al. 2023 and Peng et al. 2023 fine-tune).
SCALINGS = ("linear", "ntk", "dynamic", "yarn")
FT_SCALINGS = ("linear", "yarn")
FT_FACTOR = 2


# --------------------------------------------------------------------------------------------
# Data


def default_corpus() -> bytes:
    """The pydoc topics of the standard library, values in sorted key order, as UTF-8."""
    from pydoc_data.topics import topics

    return "".join(topics[k] for k in sorted(topics)).encode("utf-8")


def load_corpus(path: Optional[str]) -> tuple:
    if path is None:
        return default_corpus(), "pydoc_data.topics (Python %s standard library)" % (
            platform.python_version()
        )
    with open(path, "rb") as f:
        return f.read(), os.path.abspath(path)


def unigram_ppl(train: Tensor, heldout_targets: Tensor) -> float:
    """Perplexity of add-one-smoothed train byte frequencies on the held-out targets."""
    counts = torch.bincount(train, minlength=256).double() + 1.0
    logp = (counts / counts.sum()).log()
    return math.exp(-logp[heldout_targets].mean().item())


# --------------------------------------------------------------------------------------------
# Model


class RopeScaling:
    """RoPE frequencies of one scaling for a forward pass over ``length`` tokens.

    ``frequencies(length)`` returns ``(inv_freq, attention_factor)`` from
    :class:`posenc.rope_config.RopeConfig`, or ``None`` when the scaling is the identity
    (factor 1, or dynamic at ``length <= train_len``): the model then keeps the frequencies it
    was trained with, so a row equals plain ``rope`` there exactly. (RopeConfig rounds like
    transformers, 1 ulp away from ``posenc.ops.rope_inv_freq`` for some frequencies.)

    * ``linear`` (PI), ``ntk``, ``yarn``: ``factor = max(min_factor, length / train_len)``, the
      papers' ``s = target length / original length`` with the target being the evaluated
      length; yarn with ``original_max_position_embeddings = train_len``, its default
      ``beta_fast``/``beta_slow`` (32/1) and attention factor ``0.1 ln s + 1``.
    * ``dynamic``: dynamic NTK with ``factor = 1`` and ``max_position_embeddings = train_len``,
      i.e. the NTK base for ``s = max(1, length / train_len)`` with ``length`` the current
      total length (``seq_len``).
    """

    def __init__(self, kind: str, head_dim: int, train_len: int, min_factor: float = 1.0):
        if kind not in SCALINGS:
            raise ValueError(f"unknown RoPE scaling {kind!r}; choose from {', '.join(SCALINGS)}")
        self.kind = kind
        self.head_dim = head_dim
        self.train_len = train_len
        self.min_factor = float(min_factor)
        self._cache: Dict[int, Optional[Tuple[Tensor, float]]] = {}

    def factor(self, length: int) -> float:
        return max(self.min_factor, length / self.train_len)

    def config(self, length: int) -> Optional[RopeConfig]:
        if self.kind == "dynamic":
            if length <= self.train_len:
                return None
            return RopeConfig(self.head_dim, rope_type="dynamic", factor=1.0,
                              max_position_embeddings=self.train_len)
        s = self.factor(length)
        if s == 1.0:
            return None
        if self.kind == "yarn":
            return RopeConfig(self.head_dim, rope_type="yarn", factor=s,
                              original_max_position_embeddings=self.train_len)
        return RopeConfig(self.head_dim, rope_type=self.kind, factor=s)

    def frequencies(self, length: int) -> Optional[Tuple[Tensor, float]]:
        if length not in self._cache:
            cfg = self.config(length)
            self._cache[length] = None if cfg is None else cfg.compute(seq_len=length)
        return self._cache[length]

    def describe(self) -> dict:
        if self.kind == "dynamic":
            return {"rope_type": "dynamic", "factor": 1.0, "max_position_embeddings": self.train_len,
                    "seq_len": "current total length (see dynamic_block)"}
        d = {"rope_type": self.kind, "factor": f"max({self.min_factor:g}, eval_len / {self.train_len})"}
        if self.kind == "yarn":
            d.update(original_max_position_embeddings=self.train_len, beta_fast=32, beta_slow=1,
                     attention_factor="0.1 ln(factor) + 1")
        return d


class Attention(nn.Module):
    """Causal multi-head self-attention; the encoding decides what goes into the scores."""

    def __init__(self, d_model: int, heads: int, encoding: str):
        super().__init__()
        self.heads = heads
        self.head_dim = d_model // heads
        self.encoding = encoding
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)
        self.rope = pnn.RotaryEmbedding(self.head_dim) if encoding == "rope" else None
        # KERPLE learns its kernel per layer (Chi et al. 2022); Transformer-XL projects the
        # relative sinusoids per layer (Dai et al. 2019).
        self.kerple = pnn.KERPLEBias(heads, kind="log", causal=True) if encoding == "kerple" else None
        self.xl = (
            pnn.TransformerXLRelativeScore(d_model, heads, self.head_dim) if encoding == "xl" else None
        )
        # The forget gate reads the tokens of each layer (Lin et al. 2025).
        self.fgate = pnn.ForgettingGate(d_model, heads) if encoding == "forgetting_gate" else None
        self.nope = pnn.NoPE(causal=True) if encoding == "none" else None

    def forward(self, x: Tensor, shared_bias: Optional[Tensor], causal: Optional[Tensor],
                rope_freqs: Optional[Tuple[Tensor, float]] = None,
                shared: Optional[nn.Module] = None) -> Tensor:
        """``causal`` is the additive (S, S) mask of the materialized path; ``None`` selects the
        fused path (``posenc.ops.relative_attention`` through the modules' ``attention``), where
        ``shared`` is the model's shared ALiBi / T5 module."""
        B, S, D = x.shape
        q, k, v = self.qkv(x).view(B, S, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if causal is None and self.rope is None:
            if shared is not None:
                y = shared.attention(q, k, v)
            elif self.kerple is not None:
                y = self.kerple.attention(q, k, v)
            elif self.xl is not None:
                y = self.xl.attention(q, k, v)
            elif self.fgate is not None:
                y = self.fgate.attention(q, k, v, x)
            elif self.nope is not None:
                y = self.nope.attention(q, k, v)
            else:
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return self.out(y.transpose(1, 2).reshape(B, S, D))
        mask: Optional[Tensor] = None
        if self.rope is not None and rope_freqs is not None:
            # A RoPE scaling at evaluation (or fine-tuning) time: same weights, other frequencies.
            inv_freq, attention_factor = rope_freqs
            q, k = posenc.ops.rope_qk(q, k, None, inv_freq, attention_factor=attention_factor)
        elif self.rope is not None:
            q, k = self.rope(q, k)
        elif shared_bias is not None:
            mask = shared_bias + causal
        elif self.kerple is not None:
            mask = self.kerple(S, S) + causal
        elif self.xl is not None:
            # SDPA scales q k^T by 1/sqrt(d) and then adds attn_mask: scale the position part
            # the same way, so the logits are ((q+u) k^T + (q+v) R^T) / sqrt(d) as in the paper.
            mask = self.xl(q) * (self.head_dim ** -0.5) + causal
            q = self.xl.content_query(q)
        elif self.fgate is not None:
            mask = self.fgate(x)  # masks future keys itself (-inf)
        if mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.to(q.dtype))
        return self.out(y.transpose(1, 2).reshape(B, S, D))


class Block(nn.Module):
    def __init__(self, d_model: int, heads: int, encoding: str):
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = Attention(d_model, heads, encoding)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model)
        )

    def forward(self, x: Tensor, shared_bias: Optional[Tensor], causal: Optional[Tensor],
                rope_freqs: Optional[Tuple[Tensor, float]] = None,
                shared: Optional[nn.Module] = None) -> Tensor:
        x = x + self.attn(self.ln1(x), shared_bias, causal, rope_freqs, shared)
        return x + self.mlp(self.ln2(x))


def t5_max_distance(train_len: int) -> int:
    """``L / 2`` (but above the 16 exact buckets): the last, "far" bucket is trained.

    T5 maps every distance past ``max_distance`` to its last bucket; it extrapolates only if
    training saw that bucket, as with T5's 128 at Press et al.'s L = 512 or more. With
    ``max_distance > L`` the far buckets would keep their random init.
    """
    return max(train_len // 2, T5_BUCKETS // 2 + 1)


class ByteLM(nn.Module):
    """Small causal byte-level transformer LM with a pluggable positional encoding."""

    def __init__(self, encoding: str, train_len: int, d_model: int, layers: int, heads: int):
        super().__init__()
        if encoding not in ENCODINGS:
            raise ValueError(f"unknown encoding {encoding!r}; choose from {', '.join(ENCODINGS)}")
        if d_model % heads != 0 or (d_model // heads) % 2 != 0:
            raise ValueError(
                f"--d-model ({d_model}) must be a multiple of --heads ({heads}) with an even "
                "head dimension"
            )
        self.encoding = encoding
        self.embed = nn.Embedding(256, d_model)  # N(0, 1): on the scale of the sinusoids
        self.absolute: Optional[nn.Module] = None
        if encoding == "sinusoidal":
            self.absolute = pnn.SinusoidalPositionalEncoding(d_model)
        elif encoding == "learned":
            self.absolute = pnn.LearnedPositionalEmbedding(train_len, d_model)
        # ALiBi and T5 compute one bias per forward, shared by all layers (as in both papers).
        self.shared: Optional[nn.Module] = None
        if encoding == "alibi":
            self.shared = pnn.ALiBi(heads, causal=True)
        elif encoding == "t5":
            self.shared = pnn.T5RelativeBias(
                heads, num_buckets=T5_BUCKETS, max_distance=t5_max_distance(train_len),
                bidirectional=False,
            )
        self.blocks = nn.ModuleList(Block(d_model, heads, encoding) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, 256)
        # rope only: a RopeScaling to use instead of the trained frequencies (None: plain RoPE).
        self.rope_scaling: Optional[RopeScaling] = None
        # "fused": posenc.ops.relative_attention (no (S, S) tensor); "materialized": the bias
        # (plus an additive causal mask) as SDPA's attn_mask. Same parameters, same numbers.
        self.attention_path = "fused"

    def forward(self, idx: Tensor) -> Tensor:
        S = idx.size(1)
        x = self.embed(idx)
        if self.absolute is not None:
            x = self.absolute(x)  # learned: raises past its table, before any compute
        rope_freqs = self.rope_scaling.frequencies(S) if self.rope_scaling is not None else None
        if self.attention_path == "fused" and self.encoding not in ("rope",):
            for block in self.blocks:
                x = block(x, None, None, rope_freqs, self.shared)
            return self.head(self.ln_f(x))
        causal = torch.full((S, S), float("-inf"), device=idx.device).triu(1)
        shared_bias = self.shared(S, S) if self.shared is not None else None
        for block in self.blocks:
            x = block(x, shared_bias, causal, rope_freqs)
        return self.head(self.ln_f(x))


# --------------------------------------------------------------------------------------------
# Train / evaluate


def lr_at(step: int, steps: int, lr: float) -> float:
    warm = max(1, steps // 20)
    if step < warm:
        return lr * (step + 1) / warm
    t = (step - warm) / max(1, steps - warm)
    return lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * t)))


def _bar_disable(quiet: bool) -> Optional[bool]:
    """tqdm's ``disable``: off with --no-progress, and None (tqdm's own test: no bar unless
    stderr is a terminal) otherwise, so a job whose output goes to a log file does not fill
    it with carriage-return redraws."""
    return True if quiet else None


def batch_starts(n_train: int, train_len: int, steps: int, batch_size: int, seed: int) -> Tensor:
    """(steps, batch_size) window starts; the same for every encoding."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, n_train - train_len - 1, (steps, batch_size), generator=g)


def train_one(
    model: ByteLM, train: Tensor, starts: Tensor, train_len: int, lr: float, desc: str, quiet: bool
) -> List[float]:
    from tqdm import tqdm

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "embed" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr,
        betas=(0.9, 0.95),
    )
    offsets = torch.arange(train_len + 1)
    losses: List[float] = []
    model.train()
    bar = tqdm(range(starts.size(0)), desc=desc, leave=False, disable=_bar_disable(quiet),
               dynamic_ncols=True)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, starts.size(0), lr)
        chunk = train[starts[step][:, None] + offsets]
        logits = model(chunk[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, 256), chunk[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if step % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    return losses


def is_past_table(err: RuntimeError) -> bool:
    msg = str(err)
    return "LearnedPositionalEmbedding" in msg and "past the table" in msg


OOM_MARKER = "out of memory"


def is_out_of_memory(err: BaseException) -> bool:
    """An allocation the machine cannot serve (CPU allocator or CUDA), e.g. an L x L bias."""
    msg = str(err)
    return isinstance(err, torch.OutOfMemoryError) or "can't allocate memory" in msg \
        or "out of memory" in msg.lower()


def finetune(
    base: ByteLM, kind: str, train: Tensor, train_len: int, steps: int, batch_size: int,
    lr: float, seed: int, desc: str, quiet: bool,
) -> Tuple[ByteLM, List[float]]:
    """A copy of the trained rope model fine-tuned at ``FT_FACTOR * L`` with scaling ``kind``.

    The copy is trained with the scaling fixed at ``FT_FACTOR`` (factor ``max(FT_FACTOR,
    n / L)`` at a length ``n``), on random windows of ``FT_FACTOR * L + 1`` training bytes
    (seed ``seed + 1``: the same batches for every scaling), with a fresh AdamW and the same
    warm-up + cosine schedule as training at peak rate ``lr``. ``base`` is not changed.
    """
    model = copy.deepcopy(base)
    model.rope_scaling = RopeScaling(kind, model.blocks[0].attn.head_dim, train_len, FT_FACTOR)
    length = FT_FACTOR * train_len
    starts = batch_starts(train.numel(), length, steps, batch_size, seed + 1)
    return model, train_one(model, train, starts, length, lr, desc, quiet)


@torch.inference_mode()
def evaluate(
    model: ByteLM, heldout: Tensor, length: int, eval_tokens: int, desc: str, quiet: bool,
    block: Optional[int] = None,
) -> Dict[str, object]:
    """Mean NLL over non-overlapping windows of ``length`` bytes (each predicts its next bytes).

    ``block`` (for dynamic scaling): predict each window's bytes ``block`` at a time, the bytes
    in ``[e - block, e)`` from one forward pass over the window's first ``e`` bytes, so that
    the model's current total length is ``e``, as when generating. ``None``: one pass.
    """
    from tqdm import tqdm

    model.eval()
    n_win = (heldout.numel() - 1) // length
    x = heldout[: n_win * length].view(n_win, length)
    y = heldout[1 : n_win * length + 1].view(n_win, length)
    per_batch = max(1, eval_tokens // length)
    total = 0.0
    count = 0
    bar = tqdm(range(0, n_win, per_batch), desc=desc, leave=False, disable=_bar_disable(quiet),
               dynamic_ncols=True)
    ends = [length] if block is None else sorted(set(range(block, length, block)) | {length})
    for i in bar:
        start = 0
        for end in ends:
            logits = model(x[i : i + per_batch, :end])[:, start:]
            target = y[i : i + per_batch, start:end]
            nll = F.cross_entropy(logits.reshape(-1, 256).double(), target.reshape(-1), reduction="sum")
            total += nll.item()
            count += target.numel()
            start = end
    bar.close()
    mean = total / count
    return {"ppl": math.exp(mean), "bits_per_byte": mean / math.log(2), "bytes": count}


def reset_peak_rss() -> None:
    """Resets the process's resident-set high-water mark (Linux: /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss_mib() -> Optional[float]:
    """Peak resident memory since the last reset_peak_rss (VmHWM), MiB; None off Linux."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


# --------------------------------------------------------------------------------------------
# Report


def na_marker(train_len: int) -> str:
    return f"n/a (table {train_len})"


def scaled_name(kind: str) -> str:
    return f"rope+{kind}"


def finetuned_name(kind: str) -> str:
    return f"rope+{kind}-ft{FT_FACTOR}x"


def table_notes(cfg: dict) -> List[str]:
    notes = []
    if "rope" in cfg["encodings"] and cfg["rope_scalings"]:
        notes.append(
            "rope+<scaling>: the trained rope model, no retraining, evaluated with that RoPE "
            "scaling at factor max(1, n/L) for length n (dynamic NTK: s = max(1, current length / "
            "L), growing every L bytes as in generation); at n <= L it is plain rope.")
    if "rope" in cfg["encodings"] and cfg["finetune_steps"]:
        notes.append(
            f"rope+<scaling>-ft{FT_FACTOR}x: the rope model fine-tuned {cfg['finetune_steps']} steps "
            f"at {FT_FACTOR}L with factor {FT_FACTOR}, evaluated at factor max({FT_FACTOR}, n/L); "
            "its 'train s' is the fine-tune time.")
    return notes


def format_table(results: Dict[str, dict], lengths: Sequence[int], train_len: int, unigram: float,
                 scored: int, notes: Sequence[str] = ()) -> str:
    width = max(9, len(na_marker(train_len)) + 1)
    name_w = max(11, max(len(k) for k in results) + 1)
    head = f"{'encoding':<{name_w}}" + "".join(f"{n:>{width}}" for n in lengths) + f"{'train s':>10}"
    lines = [
        f"Perplexity per byte on held-out text; trained at L={train_len}; "
        f"non-overlapping windows of each length score the same {scored} bytes "
        f"(unigram baseline {unigram:.2f}).",
        head,
        "-" * len(head),
    ]
    for enc, r in results.items():
        cells = []
        for n in lengths:
            e = r["eval"][str(n)]
            cells.append(f"{e['ppl']:>{width}.3f}" if e["ppl"] is not None else f"{e['note']:>{width}}")
        secs = r["train_seconds"]
        lines.append(f"{enc:<{name_w}}" + "".join(cells)
                     + (f"{secs:>10.1f}" if secs is not None else f"{'-':>10}"))
    if notes:
        lines.append("-" * len(head))
        for note in notes:
            lines.extend(textwrap.wrap(note, width=len(head), subsequent_indent="  "))
    return "\n".join(lines)


def format_cost_table(results: Dict[str, dict], lengths: Sequence[int], attention: str) -> str:
    """Evaluation wall time and peak resident memory per length (the cost of going long)."""
    width = 16
    name_w = max(11, max(len(k) for k in results) + 1)
    head = f"{'encoding':<{name_w}}" + "".join(f"{n:>{width}}" for n in lengths)
    lines = [f"Evaluation cost per length: seconds / peak RSS MiB (attention path: {attention}; "
             "relative encodings only differ between paths).", head, "-" * len(head)]
    for enc, r in results.items():
        cells = []
        for n in lengths:
            e = r["eval_cost"].get(str(n), {})
            if e.get("seconds") is None:
                cells.append(f"{'-':>{width}}")
                continue
            mem = e.get("peak_rss_mib")
            cells.append(f"{e['seconds']:.1f}s / {mem:.0f}".rjust(width) if mem is not None
                         else f"{e['seconds']:.1f}s".rjust(width))
        lines.append(f"{enc:<{name_w}}" + "".join(cells))
    return "\n".join(lines)


def plot(results: Dict[str, dict], lengths: Sequence[int], train_len: int, unigram: float,
         path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    fig, ax = plt.subplots(figsize=(9.5, 5.2), dpi=120)
    # Encodings solid in the default colours; the RoPE scaling rows in rope's colour family,
    # dashed (evaluation-time scaling) or dotted (fine-tuned).
    base_colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    rope_shades = plt.get_cmap("Reds")
    scaled = [enc for enc, r in results.items() if r.get("base") == "rope"]
    for enc, r in results.items():
        xs = [n for n in lengths if r["eval"][str(n)]["ppl"] is not None]
        ys = [r["eval"][str(n)]["ppl"] for n in xs]
        label = enc if len(xs) == len(lengths) else f"{enc} (n/a past {max(xs) if xs else 0})"
        if enc in scaled:
            shade = rope_shades(0.35 + 0.65 * scaled.index(enc) / max(1, len(scaled) - 1))
            style = ":" if "finetune" in r else "--"
            ax.plot(xs, ys, marker=".", linestyle=style, color=shade, label=label)
        else:
            # One colour per encoding whatever --encodings selects (rope is always red).
            color = base_colors[ENCODINGS.index(enc) % len(base_colors)]
            ax.plot(xs, ys, marker="o", color=color, label=label)
    ax.axvline(train_len, color="gray", linestyle="--", linewidth=1)
    ax.text(train_len, 0.98, f" training length {train_len}", transform=ax.get_xaxis_transform(),
            va="top", ha="left", color="gray", fontsize=8)
    ax.axhline(unigram, color="lightgray", linestyle=":", linewidth=1,
               label=f"unigram bytes ({unigram:.1f})")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(list(lengths))
    ax.set_xticklabels([str(n) for n in lengths])
    ax.xaxis.set_minor_formatter(NullFormatter())
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    ax.tick_params(axis="y", which="minor", labelsize=7)
    ax.set_xlabel("evaluation length (bytes, log2 scale)")
    ax.set_ylabel("held-out perplexity per byte (log scale)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# CLI


def default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def positive_int(s: str) -> int:
    v = int(s)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {v}")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="posenc-extrapolate",
        description="Train short, test long (Press et al. 2022): train one small byte-level "
        "LM per positional encoding at a short length L, evaluate held-out perplexity at "
        "1x..16x L. Defaults run on CPU in a few minutes.",
    )
    d = DEFAULTS
    p.add_argument("--encodings", default=",".join(ENCODINGS),
                   help="comma-separated subset of: " + ",".join(ENCODINGS) + " (default all)")
    p.add_argument("--train-len", type=positive_int, default=None, help=f"L (default {d['train_len']})")
    p.add_argument("--steps", type=positive_int, default=None, help=f"training steps (default {d['steps']})")
    p.add_argument("--batch-size", type=positive_int, default=None, help=f"default {d['batch_size']}")
    p.add_argument("--d-model", type=positive_int, default=None, help=f"default {d['d_model']}")
    p.add_argument("--layers", type=positive_int, default=None, help=f"default {d['layers']}")
    p.add_argument("--heads", type=positive_int, default=None, help=f"default {d['heads']}")
    p.add_argument("--lr", type=float, default=None, help=f"peak AdamW learning rate (default {d['lr']})")
    p.add_argument("--seed", type=int, default=0, help="default 0")
    p.add_argument("--corpus", default=None,
                   help="text file to use instead of the pydoc topics of the standard library")
    p.add_argument("--heldout-frac", type=float, default=0.1,
                   help="fraction of the corpus (its end) held out for evaluation (default 0.1)")
    p.add_argument("--eval-factors", default=None,
                   help="evaluation lengths as multiples of L (default 1,2,4,8,16; --quick 1,2,4)")
    p.add_argument("--eval-bytes", type=positive_int, default=None,
                   help="score at most this many held-out bytes (default 32768; --quick 8192)")
    p.add_argument("--eval-tokens", type=positive_int, default=16384,
                   help="bytes per evaluation batch (default 16384; a memory knob: the numbers change "
                   "only in the last bits)")
    p.add_argument("--rope-scalings", default=None,
                   help="RoPE scalings applied to the trained rope model at evaluation time, comma "
                   "separated subset of " + ",".join(SCALINGS) + " (default all; 'none' for no "
                   "rows); factor max(1, n/L) at length n, dynamic NTK from the current length")
    p.add_argument("--finetune-steps", type=int, default=None,
                   help=f"fine-tune copies of the rope model this many steps at {FT_FACTOR}L with "
                   f"linear (PI) and YaRN scaling, factor {FT_FACTOR} (evaluated at max("
                   f"{FT_FACTOR}, n/L)); default 10%% of --steps, 0 disables")
    p.add_argument("--finetune-lr", type=float, default=None,
                   help="peak learning rate of the fine-tune (default 0.1 x --lr)")
    p.add_argument("--out", default="extrapolate_out",
                   help="output directory (default ./extrapolate_out)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch.set_num_threads; 0 = all usable cores (tiny models: 1 is "
                   "usually fastest and gives numbers independent of the core count; default 1)")
    p.add_argument("--quick", action="store_true",
                   help="tiny model, few steps, eval at 1x,2x,4x L: a smoke test in seconds")
    p.add_argument("--attention", choices=("fused", "materialized"), default="fused",
                   help="relative encodings (alibi, t5, kerple, xl, forgetting_gate): 'fused' runs "
                   "posenc.ops.relative_attention (no L x L tensor, O(L) extra memory); "
                   "'materialized' passes the (H, L, L) bias + causal mask to SDPA, for "
                   "comparison (default fused)")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def resolve_config(args: argparse.Namespace) -> dict:
    base = dict(DEFAULTS)
    if args.quick:
        base.update(QUICK)
    cfg = {k: (getattr(args, k) if getattr(args, k) is not None else v) for k, v in base.items()}
    encodings = [ALIASES.get(e.strip(), e.strip()) for e in args.encodings.split(",") if e.strip()]
    bad = [e for e in encodings if e not in ENCODINGS]
    if bad or not encodings:
        raise SystemExit(
            f"posenc-extrapolate: unknown encoding(s) {bad or args.encodings!r}; "
            f"choose from {','.join(ENCODINGS)}"
        )
    if args.eval_factors is not None:
        try:
            factors = sorted({int(f) for f in args.eval_factors.split(",") if f.strip()})
        except ValueError:
            factors = []
        if not factors or factors[0] < 1:
            raise SystemExit("posenc-extrapolate: --eval-factors must be positive integers")
    else:
        factors = list(QUICK_FACTORS if args.quick else DEFAULT_FACTORS)
    if args.rope_scalings is None:
        scalings = list(SCALINGS) if "rope" in encodings else []
    else:
        scalings = [k.strip() for k in args.rope_scalings.split(",") if k.strip()]
        if scalings == ["none"]:
            scalings = []
        bad = [k for k in scalings if k not in SCALINGS]
        if bad:
            raise SystemExit(
                f"posenc-extrapolate: unknown RoPE scaling(s) {bad}; choose from "
                f"{','.join(SCALINGS)} or none")
        if scalings and "rope" not in encodings:
            raise SystemExit("posenc-extrapolate: --rope-scalings needs rope in --encodings")
    if args.finetune_steps is None:
        ft_steps = cfg["steps"] // 10 if "rope" in encodings else 0
    else:
        ft_steps = args.finetune_steps
        if ft_steps < 0:
            raise SystemExit("posenc-extrapolate: --finetune-steps must be >= 0")
        if ft_steps and "rope" not in encodings:
            raise SystemExit("posenc-extrapolate: --finetune-steps needs rope in --encodings")
    ft_lr = args.finetune_lr if args.finetune_lr is not None else 0.1 * cfg["lr"]
    if not ft_lr > 0.0:
        raise SystemExit("posenc-extrapolate: --finetune-lr must be > 0")
    if args.threads < 0:
        raise SystemExit("posenc-extrapolate: --threads must be >= 0")
    if not 0.0 < args.heldout_frac < 1.0:
        raise SystemExit("posenc-extrapolate: --heldout-frac must be in (0, 1)")
    cfg.update(
        encodings=list(dict.fromkeys(encodings)),
        eval_factors=factors,
        rope_scalings=list(dict.fromkeys(scalings)),
        finetune_steps=ft_steps,
        finetune_lr=ft_lr,
        seed=args.seed,
        heldout_frac=args.heldout_frac,
        threads=args.threads if args.threads > 0 else default_threads(),
        quick=bool(args.quick),
        eval_bytes=args.eval_bytes or (8192 if args.quick else 32768),
        attention=args.attention,
    )
    return cfg


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = resolve_config(args)
    quiet = args.no_progress
    torch.set_num_threads(cfg["threads"])
    # CPU kernels used here are deterministic already; this turns any regression into a warning.
    torch.use_deterministic_algorithms(True, warn_only=True)

    text, corpus_name = load_corpus(args.corpus)
    data = torch.frombuffer(bytearray(text), dtype=torch.uint8).long()
    L = cfg["train_len"]
    lengths = [L * f for f in cfg["eval_factors"]]
    split = int(len(data) * (1.0 - cfg["heldout_frac"]))
    train, held = data[:split], data[split:]
    # Cut the held-out split so that every evaluation length scores the same bytes.
    longest = max(lengths)
    n_scored = ((held.numel() - 1) // longest) * longest
    if n_scored == 0 or train.numel() < L + 2:
        raise SystemExit(
            f"posenc-extrapolate: corpus too small ({len(data)} bytes): need more than "
            f"{longest + 1} held-out bytes for the longest evaluation length and {L + 2} "
            "training bytes"
        )
    n_scored = min(n_scored, max(longest, cfg["eval_bytes"] // longest * longest))
    held = held[: n_scored + 1]
    unigram = unigram_ppl(train, held[1:])

    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    print(
        f"posenc-extrapolate: corpus {corpus_name}: {len(data)} bytes "
        f"({train.numel()} train, {n_scored} scored held-out); L={L}, eval lengths {lengths}; "
        f"{len(cfg['encodings'])} encodings x {cfg['steps']} steps of {cfg['batch_size']}x{L}; "
        f"d_model={cfg['d_model']} layers={cfg['layers']} heads={cfg['heads']} lr={cfg['lr']} "
        f"seed={cfg['seed']} threads={cfg['threads']}",
        flush=True,
    )
    starts = batch_starts(train.numel(), L, cfg["steps"], cfg["batch_size"], cfg["seed"])
    results: Dict[str, dict] = {}
    t_all = time.perf_counter()

    # Wall time and peak memory per evaluation, by name and length (kept out of "eval", whose
    # numbers are reproducible).
    costs: Dict[str, Dict[str, dict]] = {}

    def run_evals(model: ByteLM, name: str, block: Optional[int] = None) -> tuple:
        ev: Dict[str, dict] = {}
        cost = costs.setdefault(name, {})
        t0 = time.perf_counter()
        for n in lengths:
            try:
                reset_peak_rss()
                t1 = time.perf_counter()
                ev[str(n)] = evaluate(model, held, n, args.eval_tokens, f"eval {name} @{n}", quiet,
                                      block)
                cost[str(n)] = {"seconds": time.perf_counter() - t1, "peak_rss_mib": peak_rss_mib()}
            except RuntimeError as err:
                # Past the learned table, or past what this machine's memory can hold (the
                # materialized path's L x L bias): a cell that says so; longer lengths are not
                # tried after running out of memory.
                if name == "learned" and is_past_table(err):
                    note = na_marker(L)
                elif is_out_of_memory(err):
                    note = OOM_MARKER
                else:
                    raise
                ev[str(n)] = {"ppl": None, "bits_per_byte": None, "note": note,
                              "error": str(err).splitlines()[0]}
                if note == OOM_MARKER:
                    for m in lengths[lengths.index(n) + 1:]:
                        ev[str(m)] = {"ppl": None, "bits_per_byte": None, "note": OOM_MARKER,
                                      "error": f"not tried after running out of memory at {n}"}
                    break
        return ev, time.perf_counter() - t0

    def report(name: str, what: str, ev: Dict[str, dict], train_s: Optional[float],
               eval_s: float) -> None:
        at_l = ev[str(L)]["ppl"] if str(L) in ev else None
        timing = (f"{train_s:.1f}s train, " if train_s is not None else "") + f"{eval_s:.1f}s eval"
        print(f"  {name:<{name_width}} {what}"
              + (f"held-out ppl @L {at_l:.2f}" if at_l is not None else "")
              + f" ({timing})", flush=True)

    names = list(cfg["encodings"])
    if "rope" in names:
        at = names.index("rope") + 1
        names[at:at] = [scaled_name(k) for k in cfg["rope_scalings"]] + (
            [finetuned_name(k) for k in FT_SCALINGS] if cfg["finetune_steps"] else [])
    name_width = max(len(n) for n in names)
    for enc in cfg["encodings"]:
        torch.manual_seed(cfg["seed"])
        model = ByteLM(enc, L, cfg["d_model"], cfg["layers"], cfg["heads"])
        model.attention_path = cfg["attention"]
        t0 = time.perf_counter()
        losses = train_one(model, train, starts, L, cfg["lr"], f"train {enc}", quiet)
        train_s = time.perf_counter() - t0
        tail = losses[-max(1, len(losses) // 10):]
        ev, eval_s = run_evals(model, enc)
        n_params = sum(p.numel() for p in model.parameters())
        results[enc] = {
            "params": n_params,
            "train_loss_last10pct": sum(tail) / len(tail),
            "train_ppl_last10pct": math.exp(sum(tail) / len(tail)),
            "eval": ev,
            "train_seconds": train_s,
            "eval_seconds": eval_s,
        }
        report(enc, f"train ppl {results[enc]['train_ppl_last10pct']:.2f}, ", ev, train_s, eval_s)
        if enc != "rope":
            continue
        head_dim = cfg["d_model"] // cfg["heads"]
        # The same trained weights under each scaling: evaluation passes only.
        for kind in cfg["rope_scalings"]:
            model.rope_scaling = RopeScaling(kind, head_dim, L)
            ev, eval_s = run_evals(model, scaled_name(kind), L if kind == "dynamic" else None)
            model.rope_scaling = None
            results[scaled_name(kind)] = {
                "base": "rope", "scaling": RopeScaling(kind, head_dim, L).describe(),
                "params": n_params, "train_loss_last10pct": None, "train_ppl_last10pct": None,
                "eval": ev, "train_seconds": None, "eval_seconds": eval_s,
            }
            if kind == "dynamic":
                results[scaled_name(kind)]["dynamic_block"] = L
            report(scaled_name(kind), "", ev, None, eval_s)
        for kind in FT_SCALINGS if cfg["finetune_steps"] else ():
            name = finetuned_name(kind)
            t0 = time.perf_counter()
            tuned, losses = finetune(model, kind, train, L, cfg["finetune_steps"], cfg["batch_size"],
                                     cfg["finetune_lr"], cfg["seed"], f"fine-tune {name}", quiet)
            ft_s = time.perf_counter() - t0
            tail = losses[-max(1, len(losses) // 10):]
            ev, eval_s = run_evals(tuned, name)
            results[name] = {
                "base": "rope", "scaling": tuned.rope_scaling.describe(),
                "finetune": {"steps": cfg["finetune_steps"], "length": FT_FACTOR * L,
                             "factor": FT_FACTOR, "lr": cfg["finetune_lr"],
                             "batch_size": cfg["batch_size"], "seed": cfg["seed"] + 1},
                "params": n_params,
                "train_loss_last10pct": sum(tail) / len(tail),
                "train_ppl_last10pct": math.exp(sum(tail) / len(tail)),
                "eval": ev, "train_seconds": ft_s, "eval_seconds": eval_s,
            }
            report(name, f"fine-tune ppl {results[name]['train_ppl_last10pct']:.2f}, ", ev, ft_s,
                   eval_s)
    total_s = time.perf_counter() - t_all
    for name, r in results.items():
        r["eval_cost"] = costs.get(name, {})

    table = format_table(results, lengths, L, unigram, n_scored, table_notes(cfg))
    cost = format_cost_table(results, lengths, cfg["attention"])
    print()
    print(cost)
    print()
    print(table)
    with open(os.path.join(out, "table.txt"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(out, "cost.txt"), "w") as f:
        f.write(cost + "\n")
    payload = {
        "experiment": "train short, test long (Press et al. 2022)",
        "evaluation": "non-overlapping windows; every length scores the same held-out bytes",
        "config": {**cfg, "eval_lengths": lengths},
        "encoding_details": {
            "t5": {"num_buckets": T5_BUCKETS, "max_distance": t5_max_distance(L),
                   "bidirectional": False, "shared_across_layers": True},
            "alibi": {"slopes": posenc.ops.alibi_slopes(cfg["heads"]).tolist(),
                      "shared_across_layers": True},
            "kerple": {"kind": "log", "per_layer": True},
            "xl": {"mem_len": 0, "per_layer": True},
            "forgetting_gate": {"gate": "sigmoid(Linear(d_model -> heads))", "per_layer": True,
                                "init": "weight N(0, 0.02), bias 0"},
            "learned": {"max_len": L},
            "rope": {"base": 10000.0, "rotary_dim": cfg["d_model"] // cfg["heads"],
                     "scalings": cfg["rope_scalings"],
                     "finetuned": list(FT_SCALINGS) if cfg["finetune_steps"] else []},
        },
        "notes": table_notes(cfg),
        "corpus": {"name": corpus_name, "bytes": len(data), "train_bytes": train.numel(),
                   "scored_bytes": n_scored},
        "unigram_ppl": unigram,
        "na_marker": na_marker(L),
        "results": results,
        "total_seconds": total_s,
        "versions": {"posenc": posenc.__version__, "torch": torch.__version__,
                     "python": platform.python_version()},
    }
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(payload, f, indent=2)
    if not args.no_plot:
        short = "pydoc topics" if args.corpus is None else os.path.basename(args.corpus)
        plot(results, lengths, L, unigram, os.path.join(out, "extrapolate.png"),
             f"Train short, test long: byte-level LM trained at L={L}\n"
             f"{cfg['layers']} layers, d_model {cfg['d_model']}, {cfg['heads']} heads, "
             f"{cfg['steps']} steps x {cfg['batch_size']}; corpus: {short}; non-overlapping windows")
    print(f"\nwrote {out}/table.txt, cost.txt, results.json" + ("" if args.no_plot else ", extrapolate.png")
          + f" ({total_s:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
