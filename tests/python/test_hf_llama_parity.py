"""posenc's RoPE swapped into tiny randomly initialised transformers models (posenc.hf:
RotaryEmbedding, apply_rotary_pos_emb, use_posenc_rope): the logits equal the model's own
(fp32, max abs diff <= 1e-5) for every transformers rope type, and the swap really happens.

The reference is transformers itself (the model run without the swap), never posenc's output.
The models use initializer_range=0.1 so that attention is far from uniform: halving the
frequencies moves the logits (|logits| ~ 3) by ~2, so 1e-5 is a tight bound.
"""
import inspect

import pytest
import torch

transformers = pytest.importorskip("transformers")

from transformers import (  # noqa: E402
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)
from transformers.models.cohere.modeling_cohere import CohereConfig, CohereForCausalLM  # noqa: E402
from transformers.models.llama import modeling_llama  # noqa: E402
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding  # noqa: E402

import posenc.hf as hf  # noqa: E402
from posenc import ops  # noqa: E402

transformers.logging.set_verbosity_error()  # yarn's "factor != max/original" notice etc.

TOL = 1e-5
MAX_POS = 64  # max_position_embeddings of the tiny models
ORIG = 32  # original_max_position_embeddings of yarn / llama3 / longrope
VOCAB = 100


def longrope_lists(n, seed):
    g = torch.Generator().manual_seed(seed)
    short = (1.0 + torch.rand(n, generator=g, dtype=torch.float64)).tolist()
    long = (1.0 + 20.0 * torch.rand(n, generator=g, dtype=torch.float64)).tolist()
    return short, long


def rope_params(rope_type, factor=8.0, base=1e4, rot=16, **extra):
    p = {"rope_type": rope_type, "rope_theta": base}
    if rope_type in ("linear", "dynamic"):
        p["factor"] = factor
    elif rope_type == "yarn":
        p.update(factor=factor, original_max_position_embeddings=ORIG)
    elif rope_type == "llama3":
        p.update(factor=factor, original_max_position_embeddings=ORIG, low_freq_factor=1.0,
                 high_freq_factor=4.0)
    elif rope_type == "longrope":
        short, long = longrope_lists(rot // 2, int(factor))
        p.update(factor=factor, original_max_position_embeddings=ORIG, short_factor=short,
                 long_factor=long)
    p.update(extra)
    return p


COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=MAX_POS,
    initializer_range=0.1,
    attn_implementation="eager",
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)


def tiny_llama(params, head_dim=16, seed=0, cls=LlamaForCausalLM, config_cls=LlamaConfig):
    cfg = config_cls(head_dim=head_dim, rope_parameters=params, **COMMON)
    torch.manual_seed(seed)
    return cls(cfg).eval()


def input_ids(seq_len, batch=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (batch, seq_len), generator=g)


@torch.no_grad()
def logits(model, ids, **kw):
    return model(ids, **kw).logits


def max_diff(a, b):
    return (a - b).abs().max().item()


def assert_parity(model, ids_list, where):
    """For each input (in order, so the dynamic state evolves alike), the logits with the
    swap (table and fused paths) equal the model's own. Returns the largest difference."""
    worst = 0.0
    for fused in (False, True):
        # fresh state on both sides: the model's rotary embedding may have grown
        ref_model = model
        refs = [logits(ref_model, ids) for ids in ids_list]
        reset_dynamic(model)
        with hf.use_posenc_rope(model, fused=fused):
            ours = [logits(model, ids) for ids in ids_list]
        reset_dynamic(model)
        for i, (r, o) in enumerate(zip(refs, ours)):
            d = max_diff(r, o)
            worst = max(worst, d)
            assert d <= TOL, f"{where} fused={fused} input {i} (len {ids_list[i].shape[-1]}): {d}"
    return worst


def reset_dynamic(model):
    """Back to the state of a freshly loaded model (the model's own rotary embedding)."""
    emb = model.model.rotary_emb
    emb.inv_freq = emb.original_inv_freq.clone()
    emb.max_seq_len_cached = emb.original_max_seq_len


MEASURED = {}  # case -> largest max abs logit difference seen (printed at the end with -s)


def record(key, d):
    MEASURED[key] = max(MEASURED.get(key, 0.0), d)


@pytest.fixture(scope="module", autouse=True)
def _print_measured():
    yield
    if MEASURED:
        print("\nmax abs logit difference, posenc RoPE swapped in vs the model's own:")
        for key in sorted(MEASURED):
            print(f"  {key}: {MEASURED[key]:.3g}")


# ---- every rope type, full rotary, head_dim 16 and 32 ---------------------------------------

SEQS = [5, 40]  # below and above ORIG (32), below MAX_POS (64)


@pytest.mark.parametrize("head_dim", [16, 32])
@pytest.mark.parametrize("base", [1e4, 5e5])
def test_default(head_dim, base):
    model = tiny_llama(rope_params("default", base=base), head_dim)
    d = assert_parity(model, [input_ids(n) for n in SEQS], ("default", head_dim, base))
    record("default", d)


@pytest.mark.parametrize("head_dim", [16, 32])
@pytest.mark.parametrize("factor", [2.0, 8.0, 32.0])
@pytest.mark.parametrize("rope_type", ["linear", "yarn", "llama3"])
def test_static_scalings(rope_type, factor, head_dim):
    base = 1e4 if head_dim == 16 else 5e5  # both bases, without doubling the grid
    model = tiny_llama(rope_params(rope_type, factor, base, head_dim), head_dim)
    d = assert_parity(model, [input_ids(n) for n in SEQS], (rope_type, factor, base, head_dim))
    record(rope_type, d)


@pytest.mark.parametrize(
    "extra",
    [
        dict(beta_fast=16.0, beta_slow=2.0),
        dict(mscale=0.707, mscale_all_dim=0.707),
        dict(mscale=1.0, mscale_all_dim=0.5),
        dict(attention_factor=1.3),
        dict(truncate=False),
    ],
)
def test_yarn_options(extra):
    model = tiny_llama(rope_params("yarn", 16.0, 1e4, 16, **extra), 16)
    d = assert_parity(model, [input_ids(n) for n in SEQS], ("yarn", extra))
    record("yarn", d)


@pytest.mark.parametrize("head_dim", [16, 32])
@pytest.mark.parametrize("factor", [2.0, 8.0, 32.0])
def test_longrope_below_and_above_original_length(factor, head_dim):
    # 20 < ORIG: short factors; 33 = ORIG + 1 and 50: long factors; 32 = ORIG: short again;
    # in one sequence of calls (the model switches back and forth, as transformers does)
    model = tiny_llama(rope_params("longrope", factor, 1e4, head_dim), head_dim)
    d = assert_parity(model, [input_ids(n) for n in (20, 33, ORIG, 50, 7)], ("longrope", factor, head_dim))
    record("longrope", d)


def test_longrope_explicit_attention_factor_and_no_factor():
    params = rope_params("longrope", 8.0, 5e5, 16, attention_factor=0.9)
    model = tiny_llama(params, 16)
    record("longrope", assert_parity(model, [input_ids(n) for n in (20, 50)], "longrope af"))
    params = rope_params("longrope", 8.0, 5e5, 16)
    del params["factor"]  # factor from max_position_embeddings / original (= 2)
    model = tiny_llama(params, 16)
    record("longrope", assert_parity(model, [input_ids(n) for n in (20, 50)], "longrope no factor"))


@pytest.mark.parametrize("head_dim", [16, 32])
@pytest.mark.parametrize("factor", [2.0, 8.0, 32.0])
def test_dynamic_growth_and_reset(factor, head_dim):
    # 40: original frequencies; 100 and 150 > MAX_POS: grown bases; 120: keeps the 150 ones
    # (transformers caches the longest length); 30 < MAX_POS: reset to the original ones
    model = tiny_llama(rope_params("dynamic", factor, 1e4, head_dim), head_dim)
    seqs = [40, 100, 150, 120, 30, 90]
    d = assert_parity(model, [input_ids(n, batch=1) for n in seqs], ("dynamic", factor, head_dim))
    record("dynamic", d)


# ---- KV-cache decoding: the frequency updates see the total length --------------------------


@pytest.mark.parametrize("rope_type", ["dynamic", "longrope", "yarn"])
def test_kv_cache_decode_matches_model(rope_type):
    # prefill 28 tokens, then decode one at a time past ORIG (longrope switch) and past
    # MAX_POS (dynamic growth): every step's logits equal the model's own decode
    model = tiny_llama(rope_params(rope_type, 8.0, 1e4, 16), 16)
    ids = input_ids(MAX_POS + 4, batch=1)

    # transformers 5.x renamed past_key_values to cache (5.24 warns about the old name)
    cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    def decode(m):
        out = []
        with torch.no_grad():
            res = m(ids[:, :28], use_cache=True)
            out.append(res.logits)
            for t in range(28, ids.shape[1]):
                cache = getattr(res, "cache", None) or res.past_key_values
                res = m(ids[:, t : t + 1], use_cache=True, **{cache_kw: cache})
                out.append(res.logits)
        return out

    for fused in (False, True):
        reset_dynamic(model)
        ref = decode(model)
        reset_dynamic(model)
        with hf.use_posenc_rope(model, fused=fused):
            ours = decode(model)
        reset_dynamic(model)
        d = max(max_diff(r, o) for r, o in zip(ref, ours))
        assert d <= TOL, (rope_type, fused, d)
        record(f"{rope_type} (kv-cache decode)", d)


# ---- partial rotary: Phi-3 and GPT-NeoX (Llama's apply_rotary_pos_emb has no pass-through) --


def tiny_phi3(params, partial, seed=0):
    cfg = Phi3Config(rope_parameters=params, partial_rotary_factor=partial, **COMMON)
    torch.manual_seed(seed)
    return Phi3ForCausalLM(cfg).eval()


@pytest.mark.parametrize("partial", [0.5, 0.75])
@pytest.mark.parametrize("rope_type", ["default", "longrope"])
def test_phi3_partial_rotary(rope_type, partial):
    # Phi-3: head_dim 16, rotary dims int(16 * partial); the rest passes through. Phi3Config
    # accepts only these two types (its validator rejects the others).
    rot = int(16 * partial)
    params = rope_params(rope_type, 8.0, 1e4, rot, partial_rotary_factor=partial)
    model = tiny_phi3(params, partial)
    assert model.model.rotary_emb.inv_freq.numel() == rot // 2  # really partial
    seqs = [20, 50, 100, 30] if rope_type in ("dynamic", "longrope") else SEQS
    d = assert_parity(model, [input_ids(n, batch=1) for n in seqs], ("phi3", rope_type, partial))
    record(f"partial rotary (Phi-3) {rope_type}", d)


def test_phi3_top_level_original_length():
    # Phi-3 checkpoints carry original_max_position_embeddings at the top level
    params = rope_params("longrope", 8.0, 1e4, 16)
    del params["original_max_position_embeddings"]
    cfg = Phi3Config(rope_parameters=params, original_max_position_embeddings=ORIG, **COMMON)
    torch.manual_seed(0)
    model = Phi3ForCausalLM(cfg).eval()
    d = assert_parity(model, [input_ids(n) for n in (20, 50)], "phi3 top-level original")
    record("longrope", d)


@pytest.mark.parametrize("rope_type", ["default", "linear", "dynamic", "yarn", "llama3", "longrope"])
def test_gpt_neox_partial_rotary(rope_type):
    params = rope_params(rope_type, 4.0, 1e4, 4, partial_rotary_factor=0.25)
    cfg = GPTNeoXConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=MAX_POS, initializer_range=0.1,
        attn_implementation="eager", rope_parameters=params,
    )
    torch.manual_seed(0)
    model = GPTNeoXForCausalLM(cfg).eval()
    assert model.gpt_neox.rotary_emb.inv_freq.numel() == 2  # 16 * 0.25 = 4 rotary dims
    seqs = [input_ids(n, batch=1) for n in (20, 100, 30)]
    for fused in (False, True):
        model.gpt_neox.rotary_emb.inv_freq = model.gpt_neox.rotary_emb.original_inv_freq.clone()
        model.gpt_neox.rotary_emb.max_seq_len_cached = MAX_POS
        ref = [logits(model, ids) for ids in seqs]
        with hf.use_posenc_rope(model, fused=fused) as swap:
            assert model.gpt_neox.rotary_emb is swap.rotary_embs[0]
            ours = [logits(model, ids) for ids in seqs]
        d = max(max_diff(r, o) for r, o in zip(ref, ours))
        assert d <= TOL, (rope_type, fused, d)
        record(f"partial rotary (GPT-NeoX) {rope_type}", d)


# ---- other Llama-family models --------------------------------------------------------------


@pytest.mark.parametrize(
    "cls,config_cls", [(MistralForCausalLM, MistralConfig), (Qwen2ForCausalLM, Qwen2Config)]
)
@pytest.mark.parametrize("rope_type", ["default", "yarn", "dynamic"])
def test_other_llama_family_models(cls, config_cls, rope_type):
    model = tiny_llama(rope_params(rope_type, 8.0, 1e4, 16), 16, cls=cls, config_cls=config_cls)
    seqs = [input_ids(n, batch=1) for n in (20, 100)]
    d = assert_parity(model, seqs, (cls.__name__, rope_type))
    record(f"{cls.__name__} {rope_type}", d)


# ---- the swap really happens, and is undone ---------------------------------------------------


def test_swap_calls_posenc_ops(monkeypatch):
    model = tiny_llama(rope_params("yarn", 8.0, 1e4, 16), 16)
    ids = input_ids(40)
    calls = {"apply_rotary_pos_emb": 0, "rope": 0, "rope_qk": 0}
    real_apply, real_rope, real_rope_qk = ops.apply_rotary_pos_emb, ops.rope, ops.rope_qk

    def counting_apply(*a, **kw):
        calls["apply_rotary_pos_emb"] += 1
        return real_apply(*a, **kw)

    def counting_rope(*a, **kw):
        calls["rope"] += 1
        return real_rope(*a, **kw)

    def counting_rope_qk(*a, **kw):
        calls["rope_qk"] += 1
        return real_rope_qk(*a, **kw)

    monkeypatch.setattr(ops, "apply_rotary_pos_emb", counting_apply)
    monkeypatch.setattr(ops, "rope", counting_rope)
    monkeypatch.setattr(ops, "rope_qk", counting_rope_qk)
    logits(model, ids)
    assert calls == {"apply_rotary_pos_emb": 0, "rope": 0, "rope_qk": 0}
    with hf.use_posenc_rope(model):
        calls["apply_rotary_pos_emb"] = 0  # the probe also calls it
        logits(model, ids)
    assert calls == {"apply_rotary_pos_emb": 2 * 2, "rope": 0, "rope_qk": 0}  # q, k x 2 layers
    with hf.use_posenc_rope(model, fused=True):
        calls["apply_rotary_pos_emb"] = 0
        logits(model, ids)
    # q and k together (shared cos/sin) in each of the 2 layers
    assert calls == {"apply_rotary_pos_emb": 0, "rope": 0, "rope_qk": 2}


@pytest.mark.parametrize("fused", [False, True])
def test_corrupted_frequencies_change_logits(fused):
    model = tiny_llama(rope_params("llama3", 8.0, 5e5, 16), 16)
    ids = input_ids(40)
    ref = logits(model, ids)
    with hf.use_posenc_rope(model, fused=fused) as swap:
        assert isinstance(model.model.rotary_emb, hf.RotaryEmbedding)
        assert modeling_llama.apply_rotary_pos_emb is hf.apply_rotary_pos_emb
        assert max_diff(logits(model, ids), ref) <= TOL
        swap.rotary_embs[0].inv_freq.mul_(1.01)  # ours only: the model's own is untouched
        assert max_diff(logits(model, ids), ref) > 1e-3
        swap.rotary_embs[0].attention_scaling = 1.05
        swap.rotary_embs[0].inv_freq.div_(1.01)
        assert max_diff(logits(model, ids), ref) > 1e-3
    assert isinstance(model.model.rotary_emb, LlamaRotaryEmbedding)
    assert modeling_llama.apply_rotary_pos_emb is not hf.apply_rotary_pos_emb
    assert torch.equal(logits(model, ids), ref)


def test_restore_as_call_and_nested_swaps():
    a = tiny_llama(rope_params("default"), 16, seed=0)
    b = tiny_llama(rope_params("linear", 2.0), 16, seed=1)
    original = modeling_llama.apply_rotary_pos_emb
    sa = hf.use_posenc_rope(a)
    sb = hf.use_posenc_rope(b)
    sa.restore()
    assert modeling_llama.apply_rotary_pos_emb is hf.apply_rotary_pos_emb  # b still swapped
    assert isinstance(a.model.rotary_emb, LlamaRotaryEmbedding)
    assert isinstance(b.model.rotary_emb, hf.RotaryEmbedding)
    sa.restore()  # idempotent
    sb.restore()
    assert modeling_llama.apply_rotary_pos_emb is original
    assert isinstance(b.model.rotary_emb, LlamaRotaryEmbedding)


def test_restore_on_exception():
    model = tiny_llama(rope_params("default"), 16)
    original = modeling_llama.apply_rotary_pos_emb
    with pytest.raises(KeyError):
        with hf.use_posenc_rope(model):
            raise KeyError("boom")
    assert modeling_llama.apply_rotary_pos_emb is original
    assert isinstance(model.model.rotary_emb, LlamaRotaryEmbedding)


def test_swap_carries_grown_dynamic_state():
    model = tiny_llama(rope_params("dynamic", 4.0), 16)
    logits(model, input_ids(150, batch=1))  # the model's own embedding grows to 150
    ids = input_ids(100, batch=1)  # 100 < 150: transformers keeps the 150 frequencies
    ref = logits(model, ids)
    with hf.use_posenc_rope(model) as swap:
        assert swap.rotary_embs[0].max_seq_len_cached == 150
        d = max_diff(logits(model, ids), ref)
    assert d <= TOL
    record("dynamic", d)


# ---- the modules on their own ---------------------------------------------------------------


@pytest.mark.parametrize("rope_type", ["default", "linear", "yarn", "llama3", "longrope", "dynamic"])
def test_rotary_embedding_tables_equal_transformers(rope_type):
    cfg = LlamaConfig(head_dim=32, rope_parameters=rope_params(rope_type, 8.0, 5e5, 32), **COMMON)
    theirs, ours = LlamaRotaryEmbedding(cfg), hf.RotaryEmbedding(cfg)
    assert torch.equal(ours.inv_freq, theirs.inv_freq)
    assert ours.attention_scaling == theirs.attention_scaling
    x = torch.randn(2, 3, 1, 32)
    for n in (10, 50):  # longrope: short then long table; dynamic: below max length
        pos = torch.arange(n).expand(2, n) + torch.tensor([[0], [3]])
        ct, st = theirs(x, pos)
        co, so = ours(x, pos)
        # same float32 operations in the same order: bit-identical
        assert torch.equal(co, ct) and torch.equal(so, st), (rope_type, n)
        assert co.dtype == torch.float32 and co.shape == (2, n, 32)
    for dtype in (torch.float16, torch.bfloat16):
        co, so = ours(x.to(dtype), pos)
        ct, st = theirs(x.to(dtype), pos)
        assert co.dtype == dtype and torch.equal(co, ct) and torch.equal(so, st)


@pytest.mark.parametrize("unsqueeze_dim", [1, 2])
def test_apply_rotary_pos_emb_equals_transformers(unsqueeze_dim):
    cfg = LlamaConfig(head_dim=16, rope_parameters=rope_params("yarn", 4.0), **COMMON)
    emb = hf.RotaryEmbedding(cfg)
    B, S, D = 2, 7, 16
    pos = torch.arange(S).expand(B, S) + torch.tensor([[0], [5]])
    shape_q = (B, 4, S, D) if unsqueeze_dim == 1 else (B, S, 4, D)
    shape_k = (B, 2, S, D) if unsqueeze_dim == 1 else (B, S, 2, D)
    q, k = torch.randn(shape_q), torch.randn(shape_k)
    cos, sin = emb(q, pos)
    qt, kt = modeling_llama.apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=unsqueeze_dim)
    qo, ko = hf.apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=unsqueeze_dim)
    assert max_diff(qo, qt) <= 1e-6 and max_diff(ko, kt) <= 1e-6
    # non-contiguous q/k (transposed views, as the attention layers pass them)
    qo2, _ = hf.apply_rotary_pos_emb(q.transpose(1, 2).contiguous().transpose(1, 2), k, cos, sin,
                                     unsqueeze_dim=unsqueeze_dim)
    assert torch.equal(qo2, qo)
    # the fused path: angles in-kernel, the attention factor folded in
    emb.fused = True
    a, _ = emb(q, pos)
    assert isinstance(a, hf.RopeAngles) and a.attention_factor == emb.attention_scaling
    qf, kf = hf.apply_rotary_pos_emb(q, k, a, a, unsqueeze_dim=unsqueeze_dim)
    assert max_diff(qf, qt) <= 1e-5 and max_diff(kf, kt) <= 1e-5
    # one table / one row of positions for the whole batch
    qb, _ = hf.apply_rotary_pos_emb(q, k, cos[:1], sin[:1], unsqueeze_dim=unsqueeze_dim)
    qbt, _ = modeling_llama.apply_rotary_pos_emb(q, k, cos[:1], sin[:1], unsqueeze_dim=unsqueeze_dim)
    assert max_diff(qb, qbt) <= 1e-6
    with pytest.raises(ValueError, match="unsqueeze_dim.*must be 1.*or 2.*but got 3"):
        hf.apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=3)


def test_rotary_embedding_keeps_fp32_frequencies_on_cast():
    cfg = LlamaConfig(head_dim=16, rope_parameters=rope_params("yarn", 8.0), **COMMON)
    emb = hf.RotaryEmbedding(cfg)
    inv = emb.inv_freq.clone()
    emb.to(torch.bfloat16)
    assert emb.inv_freq.dtype == torch.float32 and torch.equal(emb.inv_freq, inv)
    assert emb.original_inv_freq.dtype == torch.float32
    assert "inv_freq" not in emb.state_dict()  # non-persistent, as transformers'


# ---- unsupported models fail clearly ----------------------------------------------------------


def test_rejects_non_transformers_model():
    with pytest.raises(TypeError, match="must be a transformers model"):
        hf.use_posenc_rope(torch.nn.Linear(2, 2))


def test_rejects_model_without_rope():
    cfg = GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=1, n_head=2, n_positions=32)
    with pytest.raises(TypeError, match="GPT2LMHeadModel is not supported.*apply_rotary_pos_emb"):
        hf.use_posenc_rope(GPT2LMHeadModel(cfg))


def test_rejects_interleaved_rope_model():
    # Cohere rotates interleaved pairs: the probe finds a different rotation and refuses
    cfg = CohereConfig(**{k: v for k, v in COMMON.items() if k != "initializer_range"})
    model = CohereForCausalLM(cfg).eval()
    original = model.model.rotary_emb
    with pytest.raises(TypeError, match="CohereForCausalLM is not supported.*half-split"):
        hf.use_posenc_rope(model)
    assert model.model.rotary_emb is original  # nothing swapped


def test_rejects_unknown_rope_type_clearly():
    model = tiny_llama(rope_params("default"), 16)
    model.config.rope_parameters = {"rope_type": "Yarn", "rope_theta": 1e4, "factor": 2.0}
    with pytest.raises(ValueError, match="rope_type must be one of.*but got 'Yarn'"):
        hf.use_posenc_rope(model)
    assert isinstance(model.model.rotary_emb, LlamaRotaryEmbedding)
