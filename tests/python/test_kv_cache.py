"""RopeKVCache: prefill + decode equals a full recompute when the RoPE frequencies change with
the length (LongRoPE switch, dynamic NTK growth), and the static cache provably does not.

The full recompute never uses the cache nor posenc.ops.rope: it rotates with a plain-torch
reference written from RoFormer eq. 34 (angle = float32(pos) * inv_freq as Hugging Face
computes it, cos/sin and the rotation in fp64, times the attention factor; xPos from Sun et
al. 2022 §3.2), at every position with the frequencies for the whole length L.
"""
import math

import pytest
import torch
from torch import Tensor, nn

import posenc
from posenc import RopeKVCache
from posenc.rope_config import RopeConfig

F64 = torch.float64
HEAD_DIM = 16
TOL = 1e-5  # max abs logit difference, fp32


# ---- configurations ------------------------------------------------------------------------


def make_config(kind: str, head_dim: int = HEAD_DIM, partial: float = 1.0) -> RopeConfig:
    n = int(head_dim * partial) // 2
    if kind == "longrope":
        g = torch.Generator().manual_seed(1)
        short = (1.0 + 0.2 * torch.rand(n, generator=g, dtype=F64)).tolist()
        long = (2.0 + 6.0 * torch.rand(n, generator=g, dtype=F64)).tolist()
        return RopeConfig(
            head_dim=head_dim, rope_type="longrope", partial_rotary_factor=partial,
            max_position_embeddings=64, original_max_position_embeddings=16,
            short_factor=short, long_factor=long,
        )
    if kind == "dynamic":
        return RopeConfig(
            head_dim=head_dim, rope_type="dynamic", partial_rotary_factor=partial, factor=4.0,
            max_position_embeddings=16,
        )
    if kind == "default":
        return RopeConfig(head_dim=head_dim, partial_rotary_factor=partial)
    if kind == "yarn":
        return RopeConfig(
            head_dim=head_dim, rope_type="yarn", partial_rotary_factor=partial, factor=4.0,
            original_max_position_embeddings=16, max_position_embeddings=64,
        )
    if kind == "xpos":
        # small scale_base so that the magnitude factors matter over 24 positions
        return RopeConfig(head_dim=head_dim, rope_type="xpos", partial_rotary_factor=partial,
                          xpos_scale_base=16.0)
    raise AssertionError(kind)


# ---- reference rotation (never posenc.ops.rope) ---------------------------------------------


def ref_rope(x: Tensor, cfg: RopeConfig, total_len: int, interleaved: bool, layout: str,
             key: bool, xpos_centre: int = 0) -> Tensor:
    """Rotates all S positions 0..S-1 of x (bhsd/bshd) with the frequencies for total_len."""
    inv_freq, factor = cfg.compute(total_len)
    xb = x if layout == "bhsd" else x.transpose(1, 2)
    s = xb.size(2)
    r = 2 * inv_freq.numel()
    pos = torch.arange(s, dtype=torch.float32)
    ang = (pos[:, None] * inv_freq[None, :]).to(F64)  # float32 product, as HF
    cos, sin = ang.cos() * factor, ang.sin() * factor
    if cfg.rope_type == "xpos":
        i = torch.arange(r // 2, dtype=F64)
        zeta = (2 * i / r + cfg.xpos_gamma) / (1 + cfg.xpos_gamma)
        power = (torch.arange(s, dtype=F64) - xpos_centre) / cfg.xpos_scale_base
        mag = zeta[None, :] ** (power[:, None] * (-1.0 if key else 1.0))
        cos, sin = cos * mag, sin * mag
    xr = xb[..., :r].to(F64)
    if interleaved:
        a, b = xr[..., 0::2], xr[..., 1::2]
        out = torch.stack([a * cos - b * sin, b * cos + a * sin], -1).flatten(-2)
    else:
        a, b = xr[..., : r // 2], xr[..., r // 2:]
        out = torch.cat([a * cos - b * sin, b * cos + a * sin], -1)
    out = torch.cat([out.to(x.dtype), xb[..., r:]], -1)
    return out if layout == "bhsd" else out.transpose(1, 2)


# ---- tiny model ---------------------------------------------------------------------------


def attend(q: Tensor, k: Tensor, v: Tensor, layout: str) -> Tensor:
    """Causal attention; q's S queries sit at the last S of k's L positions; GQA by repeat.
    Returns (B, S, Hq * D)."""
    if layout == "bshd":
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    rep = q.size(1) // k.size(1)
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    s, l = q.size(2), k.size(2)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.size(-1))
    qpos = torch.arange(l - s, l)[:, None]
    scores = scores.masked_fill(torch.arange(l)[None, :] > qpos, float("-inf"))
    out = scores.softmax(-1) @ v
    return out.transpose(1, 2).flatten(2)


class Layer(nn.Module):
    def __init__(self, hidden, heads, kv_heads, head_dim):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.q = nn.Linear(hidden, heads * head_dim)
        self.k = nn.Linear(hidden, kv_heads * head_dim)
        self.v = nn.Linear(hidden, kv_heads * head_dim)
        self.o = nn.Linear(heads * head_dim, hidden)
        self.mlp = nn.Sequential(nn.Linear(hidden, 2 * hidden), nn.GELU(), nn.Linear(2 * hidden, hidden))

    def project(self, x: Tensor, layout: str):
        b, s = x.shape[:2]

        def split(t, h):
            t = t.view(b, s, h, self.head_dim)
            return t.transpose(1, 2) if layout == "bhsd" else t

        return split(self.q(x), self.heads), split(self.k(x), self.kv_heads), split(self.v(x), self.kv_heads)

    def finish(self, x: Tensor, attn: Tensor) -> Tensor:
        x = x + self.o(attn)
        return x + self.mlp(x)


class TinyModel(nn.Module):
    """Embedding, n_layers x (RoPE attention + MLP, residual), head. fp32, random init."""

    def __init__(self, cfg: RopeConfig, n_layers=1, vocab=40, hidden=32, heads=4, kv_heads=2,
                 interleaved=False, layout="bhsd", seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.cfg, self.interleaved, self.layout = cfg, interleaved, layout
        self.embed = nn.Embedding(vocab, hidden)
        self.layers = nn.ModuleList(Layer(hidden, heads, kv_heads, cfg.head_dim) for _ in range(n_layers))
        self.head = nn.Linear(hidden, vocab)
        with torch.no_grad():  # sharper attention than the default init, so positions matter
            for layer in self.layers:
                layer.q.weight.mul_(4.0)
                layer.k.weight.mul_(4.0)

    def caches(self, mode="exact", xpos_centre=0):
        return [RopeKVCache(self.cfg, self.interleaved, self.layout, mode, xpos_centre) for _ in self.layers]

    @torch.no_grad()
    def full(self, tokens: Tensor, xpos_centre: int = 0) -> Tensor:
        """Full recompute over the whole prefix: the frequencies for L at every position."""
        total = tokens.size(1)
        x = self.embed(tokens)
        for layer in self.layers:
            q, k, v = layer.project(x, self.layout)
            q = ref_rope(q, self.cfg, total, self.interleaved, self.layout, False, xpos_centre)
            k = ref_rope(k, self.cfg, total, self.interleaved, self.layout, True, xpos_centre)
            x = layer.finish(x, attend(q, k, v, self.layout))
        return self.head(x)

    @torch.no_grad()
    def step(self, tokens: Tensor, caches, record=None) -> Tensor:
        """Runs the new tokens through the model with the caches; logits of the new tokens."""
        x = self.embed(tokens)
        for i, (layer, cache) in enumerate(zip(self.layers, caches)):
            q, k, v = layer.project(x, self.layout)
            q_rot, k_all, v_all = cache(q, k, v)
            attn = attend(q_rot, k_all, v_all, self.layout)
            if record is not None:
                record.append((i, q, attn))
            x = layer.finish(x, attn)
        return self.head(x)


def decode_diffs(model: TinyModel, tokens: Tensor, prefill: int, mode="exact", xpos_centre=0):
    """Prefill then single-token steps; max abs logit diff against the full recompute at every
    step (the prefill compares all prefill positions). Returns (diffs, lengths, caches)."""
    caches = model.caches(mode, xpos_centre)
    diffs, lengths = [], []
    out = model.step(tokens[:, :prefill], caches)
    full = model.full(tokens[:, :prefill], xpos_centre)
    diffs.append((out - full).abs().max().item())
    lengths.append(prefill)
    for t in range(prefill, tokens.size(1)):
        out = model.step(tokens[:, t:t + 1], caches)
        full = model.full(tokens[:, : t + 1], xpos_centre)[:, -1:]
        diffs.append((out - full).abs().max().item())
        lengths.append(t + 1)
    return diffs, lengths, caches


def tokens_for(total: int, batch: int = 2, vocab: int = 40) -> Tensor:
    return torch.randint(0, vocab, (batch, total), generator=torch.Generator().manual_seed(7))


# (kind, prefill, total, rerotations the exact cache must do)
CASES = {
    "longrope": (12, 24, 1),    # crosses original_max_position_embeddings = 16 once
    "dynamic": (12, 28, 12),    # every length 17..28 grows the NTK base
    "default": (12, 24, 0),
    "yarn": (12, 24, 0),
}


# ---- one attention layer: decode equals the full recompute ----------------------------------


@pytest.mark.parametrize("kind", list(CASES))
def test_exact_decode_equals_full_recompute(kind):
    prefill, total, rerot = CASES[kind]
    model = TinyModel(make_config(kind))
    diffs, lengths, caches = decode_diffs(model, tokens_for(total), prefill)
    assert len(diffs) == total - prefill + 1
    assert max(diffs) <= TOL, list(zip(lengths, diffs))
    assert caches[0].num_rerotations == rerot
    assert caches[0].seq_len == total


@pytest.mark.parametrize("kind", ["longrope", "dynamic"])
def test_static_cache_drifts_after_frequency_change(kind):
    """The transformers-style cache differs from the full recompute once the frequencies change
    (so the exact test above can fail), and agrees before."""
    prefill, total, _ = CASES[kind]
    model = TinyModel(make_config(kind))
    diffs, lengths, _ = decode_diffs(model, tokens_for(total), prefill, mode="static")
    before = [d for d, n in zip(diffs, lengths) if n <= 16]
    after = [d for d, n in zip(diffs, lengths) if n > 16]
    assert max(before) <= TOL, before
    assert max(after) > 1e-3, after
    assert diffs[-1] > 1e-3


@pytest.mark.parametrize("kind", ["default", "yarn", "xpos"])
def test_static_equals_exact_when_frequencies_fixed(kind):
    model = TinyModel(make_config(kind))
    tokens = tokens_for(20)
    outs = {}
    for mode in ("exact", "static"):
        caches = model.caches(mode)
        outs[mode] = [model.step(tokens[:, :8], caches)]
        outs[mode] += [model.step(tokens[:, t:t + 1], caches) for t in range(8, 20)]
        assert caches[0].num_rerotations == 0
    for a, b in zip(outs["exact"], outs["static"]):
        assert torch.equal(a, b)


def test_rerotation_only_at_frequency_changes():
    cfg = make_config("longrope")
    cache = RopeKVCache(cfg)
    k = torch.randn(1, 2, 24, HEAD_DIM)
    changed = []
    cache.update(k[:, :, :12], k[:, :, :12])
    for t in range(12, 24):
        cache.update(k[:, :, t:t + 1], k[:, :, t:t + 1])
        changed.append((t + 1, cache.last_update_changed_frequencies))
    assert [n for n, c in changed if c] == [17]
    inv_freq, factor = cfg.compute(24)
    assert torch.equal(cache.inv_freq, inv_freq) and cache.attention_factor == factor
    assert len(cache.k_raw) and torch.equal(cache.k_raw, k)  # raw keys kept as given


# ---- layouts, GQA, batch, chunks, xPos, partial rotary ---------------------------------------


@pytest.mark.parametrize("layout", ["bhsd", "bshd"])
@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("kind", ["longrope", "dynamic"])
def test_layouts_interleaved(kind, layout, interleaved):
    prefill, total, _ = CASES[kind]
    model = TinyModel(make_config(kind), layout=layout, interleaved=interleaved)
    diffs, _, _ = decode_diffs(model, tokens_for(total, batch=3), prefill)
    assert max(diffs) <= TOL


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_gqa_mqa_batch(kv_heads):
    model = TinyModel(make_config("longrope"), heads=4, kv_heads=kv_heads)
    diffs, _, caches = decode_diffs(model, tokens_for(24, batch=3), 12)
    assert max(diffs) <= TOL
    assert caches[0].k_rot.shape == (3, kv_heads, 24, HEAD_DIM)


def test_partial_rotary():
    cfg = make_config("dynamic", partial=0.5)
    model = TinyModel(cfg)
    diffs, _, caches = decode_diffs(model, tokens_for(24), 12)
    assert max(diffs) <= TOL
    assert caches[0].rotary_dim == HEAD_DIM // 2


def test_xpos_decode_equals_full_recompute():
    model = TinyModel(make_config("xpos"))
    diffs, _, _ = decode_diffs(model, tokens_for(24), 12, xpos_centre=10)
    assert max(diffs) <= TOL


@pytest.mark.parametrize("kind", ["longrope", "dynamic"])
def test_prefill_only_equals_full(kind):
    model = TinyModel(make_config(kind))
    tokens = tokens_for(26)
    caches = model.caches()
    out = model.step(tokens, caches)
    assert (out - model.full(tokens)).abs().max().item() <= TOL
    assert caches[0].num_rerotations == 0


@pytest.mark.parametrize("kind", ["longrope", "dynamic"])
def test_chunked_prefill_across_switch(kind):
    """Multi-token updates (10, 5, 6, 1 tokens) crossing the switch: each chunk's logits equal
    the full recompute's last rows."""
    model = TinyModel(make_config(kind))
    tokens = tokens_for(22)
    caches = model.caches()
    start = 0
    for n in (10, 5, 6, 1):
        out = model.step(tokens[:, start:start + n], caches)
        full = model.full(tokens[:, : start + n])[:, start:]
        assert (out - full).abs().max().item() <= TOL, (start, n)
        start += n


# ---- several attention layers ---------------------------------------------------------------


@pytest.mark.parametrize("kind", ["longrope", "dynamic"])
def test_multilayer_each_layer_exact_for_its_inputs(kind):
    """Each layer's attention output equals attention over its own cached raw keys/values and
    its queries, all rotated by the reference with the frequencies for the current length."""
    prefill, total, _ = CASES[kind]
    cfg = make_config(kind)
    model = TinyModel(cfg, n_layers=3)
    tokens = tokens_for(total)
    caches = model.caches()
    worst = 0.0
    for start, stop in [(0, prefill)] + [(t, t + 1) for t in range(prefill, total)]:
        record = []
        model.step(tokens[:, start:stop], caches, record)
        for i, q, attn in record:
            cache = caches[i]
            n = cache.seq_len
            # reference queries: rotate a full-length buffer and keep the last positions
            q_full = torch.zeros(q.size(0), q.size(1), n, q.size(3))
            q_full[:, :, n - q.size(2):] = q
            q_ref = ref_rope(q_full, cfg, n, False, "bhsd", False)[:, :, n - q.size(2):]
            k_ref = ref_rope(cache.k_raw, cfg, n, False, "bhsd", True)
            ref = attend(q_ref, k_ref, cache.v, "bhsd")
            worst = max(worst, (attn - ref).abs().max().item())
    assert worst <= TOL


@pytest.mark.parametrize("kind", ["longrope", "dynamic"])
def test_multilayer_caveat_cached_states_are_stale(kind):
    """The documented caveat, measured: with 2+ layers, once the frequencies change the cached
    layer-2 keys/values come from hidden states computed with the old frequencies, so decoding
    (exact cache) leaves the full recompute; before the change it matches."""
    prefill, total, _ = CASES[kind]
    model = TinyModel(make_config(kind), n_layers=2)
    diffs, lengths, _ = decode_diffs(model, tokens_for(total), prefill)
    before = [d for d, n in zip(diffs, lengths) if n <= 16]
    after = [d for d, n in zip(diffs, lengths) if n > 16]
    assert max(before) <= TOL
    assert max(after) > 1e-3


@pytest.mark.parametrize("kind", ["default", "yarn"])
def test_multilayer_fixed_frequencies_equals_full(kind):
    model = TinyModel(make_config(kind), n_layers=3)
    diffs, _, _ = decode_diffs(model, tokens_for(24), 12)
    assert max(diffs) <= TOL


# ---- module behaviour ------------------------------------------------------------------------


def test_jit_script_matches_eager():
    cfg = make_config("longrope")
    eager, scripted = RopeKVCache(cfg), torch.jit.script(RopeKVCache(cfg))
    q_all, k_all, v_all = torch.randn(2, 4, 24, HEAD_DIM), torch.randn(2, 2, 24, HEAD_DIM), torch.randn(2, 2, 24, HEAD_DIM)
    for start, stop in [(0, 12)] + [(t, t + 1) for t in range(12, 24)]:
        q, k, v = (t_[:, :, start:stop] for t_ in (q_all, k_all, v_all))
        for a, b in zip(eager(q, k, v), scripted(q, k, v)):
            assert torch.equal(a, b)
    assert scripted.num_rerotations == 1 and scripted.seq_len == 24


def test_half_precision_keys():
    cfg = make_config("dynamic")
    c32, c16 = RopeKVCache(cfg), RopeKVCache(cfg)
    k = torch.randn(2, 2, 20, HEAD_DIM)
    for t in range(20):
        a, _ = c32.update(k[:, :, t:t + 1], k[:, :, t:t + 1])
        b, _ = c16.update(k[:, :, t:t + 1].bfloat16(), k[:, :, t:t + 1].bfloat16())
    assert b.dtype == torch.bfloat16 and c16.inv_freq.dtype == torch.float32
    torch.testing.assert_close(b.float(), a, rtol=2e-2, atol=2e-2)


def test_reset_and_empty_state_dict():
    cache = RopeKVCache(make_config("longrope"))
    cache.update(torch.randn(1, 2, 20, HEAD_DIM), torch.randn(1, 2, 20, HEAD_DIM))
    assert cache.seq_len == 20 and dict(cache.state_dict()) == {}
    cache.reset()
    assert cache.seq_len == 0 and cache.k_rot.numel() == 0 and cache.num_rerotations == 0
    k, _ = cache.update(torch.randn(1, 2, 3, HEAD_DIM), torch.randn(1, 2, 3, HEAD_DIM))
    assert k.shape == (1, 2, 3, HEAD_DIM)


def test_static_keeps_no_raw_keys():
    cache = RopeKVCache(make_config("longrope"), mode="static")
    cache.update(torch.randn(1, 2, 20, HEAD_DIM), torch.randn(1, 2, 20, HEAD_DIM))
    assert cache.k_raw.numel() == 0


# ---- bad inputs ------------------------------------------------------------------------------


def test_bad_options():
    cfg = make_config("default")
    with pytest.raises(ValueError, match=r"posenc\.RopeKVCache: option 'mode' must be \"exact\" or \"static\", but got \"fast\""):
        RopeKVCache(cfg, mode="fast")
    with pytest.raises(ValueError, match=r"posenc\.RopeKVCache: option 'layout' must be .*, but got \"thd\""):
        RopeKVCache(cfg, layout="thd")
    with pytest.raises(ValueError, match=r"posenc\.RopeKVCache: option 'config' must be a posenc\.rope_config\.RopeConfig, but got dict"):
        RopeKVCache({"head_dim": 16})  # type: ignore[arg-type]


def _msg(arg, expected, given):
    return rf"posenc\.RopeKVCache: argument '{arg}' {expected}.*, but got {given}"


def test_bad_inputs():
    cache = RopeKVCache(make_config("longrope"))
    k = torch.randn(2, 2, 4, HEAD_DIM)
    with pytest.raises(RuntimeError, match=_msg("q_new", "must come after update", "an empty cache")):
        cache.rotate_queries(torch.randn(2, 4, 1, HEAD_DIM))
    with pytest.raises(RuntimeError, match=_msg("k_new", "must be 4-D", "3-D")):
        cache.update(k[0], k[0])
    with pytest.raises(RuntimeError, match=_msg("k_new", "must be a floating point tensor", "torch.int64")):
        cache.update(k.long(), k)
    with pytest.raises(RuntimeError, match=_msg("k_new", r"must have last dimension head_dim \(16\)", r"shape \[2, 2, 4, 8\]")):
        cache.update(k[..., :8], k)
    with pytest.raises(RuntimeError, match=_msg("v_new", "must match k_new's batch, heads and length", r"shape \[2, 2, 3, 16\]")):
        cache.update(k, k[:, :, :3])
    with pytest.raises(RuntimeError, match=_msg("v_new", "must have the k_new's dtype", "torch.float64")):
        cache.update(k, k.double())
    cache.update(k, k)
    with pytest.raises(RuntimeError, match=_msg("k_new", "must have the cached keys' dtype", "torch.float64")):
        cache.update(k.double(), k.double())
    with pytest.raises(RuntimeError, match=_msg("k_new", r"must have the cached keys' batch size \(2\)", r"shape \[3, 2, 1, 16\]")):
        cache.update(torch.randn(3, 2, 1, HEAD_DIM), torch.randn(3, 2, 1, HEAD_DIM))
    with pytest.raises(RuntimeError, match=_msg("k_new", r"must have the cached number of key heads \(2\)", r"shape \[2, 3, 1, 16\]")):
        cache.update(torch.randn(2, 3, 1, HEAD_DIM), torch.randn(2, 3, 1, HEAD_DIM))
    with pytest.raises(RuntimeError, match=_msg("v_new", r"must have the cached value dimension \(16\)", r"shape \[2, 2, 1, 8\]")):
        cache.update(torch.randn(2, 2, 1, HEAD_DIM), torch.randn(2, 2, 1, 8))
    with pytest.raises(RuntimeError, match=_msg("k_new", "must be on the cached keys' device", "meta")):
        cache.update(torch.randn(2, 2, 1, HEAD_DIM, device="meta"), torch.randn(2, 2, 1, HEAD_DIM, device="meta"))
    with pytest.raises(RuntimeError, match=_msg("q_new", r"must have a multiple of the key heads \(2\) as heads", r"shape \[2, 3, 1, 16\]")):
        cache.rotate_queries(torch.randn(2, 3, 1, HEAD_DIM))
    with pytest.raises(RuntimeError, match=_msg("q_new", r"must have at most seq_len \(4\) tokens", r"shape \[2, 4, 5, 16\]")):
        cache.rotate_queries(torch.randn(2, 4, 5, HEAD_DIM))
    with pytest.raises(RuntimeError, match=_msg("q_new", r"must have last dimension head_dim \(16\)", r"shape \[2, 4, 1, 8\]")):
        cache.rotate_queries(torch.randn(2, 4, 1, 8))
    # failed calls left the cache untouched
    assert cache.seq_len == 4 and cache.k_rot.shape == (2, 2, 4, HEAD_DIM)


def test_bad_inputs_bshd():
    cache = RopeKVCache(make_config("default"), layout="bshd")
    cache.update(torch.randn(2, 4, 2, HEAD_DIM), torch.randn(2, 4, 2, HEAD_DIM))
    with pytest.raises(RuntimeError, match=_msg("k_new", r"must have the cached number of key heads \(2\)", r"shape \[2, 1, 3, 16\]")):
        cache.update(torch.randn(2, 1, 3, HEAD_DIM), torch.randn(2, 1, 3, HEAD_DIM))
    q = cache.rotate_queries(torch.randn(2, 1, 4, HEAD_DIM))
    assert q.shape == (2, 1, 4, HEAD_DIM)


def test_zero_key_heads():
    # 0 key heads: only 0 query heads are a multiple; more is the usual error, not a
    # ZeroDivisionError from `% 0`.
    cache = RopeKVCache(make_config("default"))
    empty = torch.randn(1, 0, 3, HEAD_DIM)
    q, k, v = cache(empty, empty, empty)
    assert q.shape == k.shape == v.shape == (1, 0, 3, HEAD_DIM)
    with pytest.raises(RuntimeError, match=_msg("q_new", r"must have a multiple of the key heads \(0\) as heads", r"shape \[1, 2, 1, 16\]")):
        cache.rotate_queries(torch.randn(1, 2, 1, HEAD_DIM))
    scripted = torch.jit.script(RopeKVCache(make_config("default")))
    scripted.update(empty, empty)
    with pytest.raises(torch.jit.Error, match=r"must have a multiple of the key heads \(0\)"):
        scripted.rotate_queries(torch.randn(1, 2, 1, HEAD_DIM))
