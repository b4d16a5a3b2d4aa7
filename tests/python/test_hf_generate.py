"""posenc.hf.use_posenc_rope in real generation: tiny random checkpoints of the Llama-family
architectures transformers ships (Llama, Mistral, Qwen2, Qwen3, Phi-3 with LongRoPE, Gemma,
Gemma 2; YaRN on Qwen2, Llama 3 and dynamic NTK on Llama) generate 20 tokens greedily with
a KV cache; with posenc swapped in (table and fused paths) the tokens are identical and every
step's logits are within 1e-5 (fp32) of stock transformers.

The reference is the same model generating without the swap, never posenc's own output.
Tiny sizes as transformers' own model testers use (2 layers, vocab 99): hidden 64, 4 query and
2 KV heads, head_dim 16, fp32 on the CPU, eval mode; initializer_range 0.1 so that attention,
and so the tokens, depend on the positions (test_wrong_rope_changes_generation checks that
they do).

LongRoPE across original_max_position_embeddings during generation: transformers picks the
long factors for a forward pass whose largest position + 1 exceeds the original length, the
short ones otherwise, for all its positions. Phi3ForCausalLM.prepare_inputs_for_generation
drops the KV cache at the step that first crosses it and re-runs the whole sequence, so from
then on every key was rotated with the long factors. posenc's RotaryEmbedding makes the same
choice from the same position_ids, and the cache reset is the model's own generation code, so
posenc follows it unchanged (test_phi3_longrope_cache_reset_at_the_switch). A model without
that reset (LongRoPE on Llama) keeps the short-factor keys in its cache after the switch, in
transformers and with posenc alike.
"""
import copy
import sys

import pytest
import torch

transformers = pytest.importorskip("transformers")

from transformers import (  # noqa: E402
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GemmaConfig,
    GemmaForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

import posenc.hf as hf  # noqa: E402

transformers.logging.set_verbosity_error()

VOCAB = 99
NEW_TOKENS = 20
PROMPT = 8
ORIG = 16  # original_max_position_embeddings: prompt + generation (28) crosses it
ATOL = 1e-5

COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    initializer_range=0.1,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # tiny models: one intra-op thread is fastest, and several are far slower on busy cores
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def longrope_factors(n):
    g = torch.Generator().manual_seed(3)
    short = (1.0 + torch.rand(n, generator=g, dtype=torch.float64)).tolist()
    long = (2.0 + 10.0 * torch.rand(n, generator=g, dtype=torch.float64)).tolist()
    return short, long


def _longrope(**kw):
    short, long = longrope_factors(8)  # head_dim 16 -> 8 frequencies
    return dict(rope_type="longrope", rope_theta=1e4, short_factor=short, long_factor=long, **kw)


# name -> (config class, model class, extra config fields)
ARCHS = {
    "llama": (LlamaConfig, LlamaForCausalLM, dict(head_dim=16)),
    "llama-llama3": (LlamaConfig, LlamaForCausalLM, dict(
        head_dim=16, rope_parameters=dict(
            rope_type="llama3", rope_theta=5e5, factor=8.0, original_max_position_embeddings=ORIG,
            low_freq_factor=1.0, high_freq_factor=4.0))),
    # max_position_embeddings 16 < 28: the frequencies grow at every decode step past 16
    "llama-dynamic": (LlamaConfig, LlamaForCausalLM, dict(
        head_dim=16, max_position_embeddings=ORIG,
        rope_parameters=dict(rope_type="dynamic", rope_theta=1e4, factor=4.0))),
    # LongRoPE on a model without Phi-3's cache reset: stale short-factor keys, as transformers
    "llama-longrope": (LlamaConfig, LlamaForCausalLM, dict(
        head_dim=16, rope_parameters=_longrope(original_max_position_embeddings=ORIG))),
    "mistral": (MistralConfig, MistralForCausalLM, dict(head_dim=16)),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, dict()),
    "qwen2-yarn": (Qwen2Config, Qwen2ForCausalLM, dict(
        rope_parameters=dict(rope_type="yarn", rope_theta=1e4, factor=4.0,
                             original_max_position_embeddings=ORIG))),
    "qwen3": (Qwen3Config, Qwen3ForCausalLM, dict(head_dim=16)),
    # Phi-3 keeps original_max_position_embeddings at the top level (it wins over the dict's)
    "phi3-longrope": (Phi3Config, Phi3ForCausalLM, dict(
        original_max_position_embeddings=ORIG, rope_parameters=_longrope())),
    # Gemma scales the input embeddings by sqrt(hidden_size): with tied embeddings a random
    # tiny model just repeats the last token, so the output head is untied here
    "gemma": (GemmaConfig, GemmaForCausalLM, dict(head_dim=16, tie_word_embeddings=False)),
    "gemma2": (Gemma2Config, Gemma2ForCausalLM, dict(
        head_dim=16, query_pre_attn_scalar=16, sliding_window=8, tie_word_embeddings=False,
        attn_implementation="eager")),  # Gemma 2 has no SDPA path (attention softcapping)
}


def build(name):
    config_cls, model_cls, extra = ARCHS[name]
    cfg = config_cls(**{**COMMON, **extra})
    torch.manual_seed(0)
    return model_cls(cfg).eval()


def prompt(length=PROMPT, batch=2):
    g = torch.Generator().manual_seed(1)
    return torch.randint(3, VOCAB, (batch, length), generator=g)


def rotary(model):
    return model.model.rotary_emb


def generate(model, ids, attention_mask=None):
    """Greedy, KV cache, 20 new tokens. Returns (sequences, raw logits (steps, B, V), processed
    scores (steps, B, V), (seq_len, largest position) of every rotary embedding call)."""
    calls = []

    def hook(module, args, kwargs, out):
        pos = kwargs["position_ids"] if "position_ids" in kwargs else args[1]
        calls.append((pos.shape[-1], int(pos.max())))

    handle = rotary(model).register_forward_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids) if attention_mask is None else attention_mask,
                do_sample=False,
                max_new_tokens=NEW_TOKENS,
                min_new_tokens=NEW_TOKENS,  # no early stop at eos
                use_cache=True,
                return_dict_in_generate=True,
                output_logits=True,
                output_scores=True,
            )
    finally:
        handle.remove()
    assert out.sequences.shape[-1] == ids.shape[-1] + NEW_TOKENS
    return out.sequences, torch.stack(out.logits), torch.stack(out.scores), calls


def assert_same_generation(ref, ours, where):
    seq_r, logits_r, scores_r, calls_r = ref
    seq_o, logits_o, scores_o, calls_o = ours
    # the same forward passes (prefill, one token per step, Phi-3's re-run at the switch)
    assert calls_o == calls_r, where
    assert torch.equal(seq_o, seq_r), f"{where}: tokens differ\n{seq_r}\n{seq_o}"
    torch.testing.assert_close(logits_o, logits_r, rtol=0, atol=ATOL, msg=lambda m: f"{where}: {m}")
    torch.testing.assert_close(scores_o, scores_r, rtol=0, atol=ATOL, msg=lambda m: f"{where}: {m}")
    return (logits_o - logits_r).abs().max().item()


def check_arch(name, ids, attention_mask=None):
    fresh = build(name)
    stock_cls = type(rotary(fresh))
    modeling = sys.modules[type(fresh).__module__]  # whose apply_rotary_pos_emb is swapped
    stock_fn = modeling.apply_rotary_pos_emb
    assert stock_fn is not hf.apply_rotary_pos_emb  # no swap left over: the reference is stock
    ref = generate(copy.deepcopy(fresh), ids, attention_mask)
    # a KV cache really is used: after the prefill, one position per forward pass
    assert ref[3][1][0] == 1, ref[3]
    # not a degenerate model repeating one token (token equality would then say little)
    for row in ref[0][:, ids.shape[-1]:].tolist():
        assert len(set(row)) > 2, ref[0]
    worst = 0.0
    for fused in (False, True):
        model = copy.deepcopy(fresh)
        with hf.use_posenc_rope(model, fused=fused) as swap:
            assert rotary(model) is swap.rotary_embs[0]
            assert isinstance(rotary(model), hf.RotaryEmbedding)
            assert modeling.apply_rotary_pos_emb is hf.apply_rotary_pos_emb
            ours = generate(model, ids, attention_mask)
        worst = max(worst, assert_same_generation(ref, ours, f"{name} fused={fused}"))
        # undone: the model's own module and function, the stock numbers to the bit
        assert type(rotary(model)) is stock_cls and modeling.apply_rotary_pos_emb is stock_fn
        again = generate(model, ids, attention_mask)
        assert torch.equal(again[0], ref[0]) and torch.equal(again[1], ref[1]), name
    return worst, ref


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_generate_matches_transformers(name):
    worst, _ = check_arch(name, prompt())
    print(f"\n{name}: max abs logit difference over 20 steps {worst:.3g}")


def test_left_padded_batch():
    # per-row position ids: transformers derives them from the attention mask, so the padded
    # row starts 3 positions behind the other one
    ids = prompt(PROMPT + 3)
    mask = torch.ones_like(ids)
    ids[0, :3] = COMMON["pad_token_id"]
    mask[0, :3] = 0
    check_arch("llama-llama3", ids, mask)
    model = build("llama-llama3")
    seen = []
    rotary(model).register_forward_hook(
        lambda m, args, kwargs, out: seen.append(kwargs["position_ids"][:, -1].tolist()),
        with_kwargs=True)
    generate(model, ids, mask)
    last = NEW_TOKENS - 1  # the last generated token is not fed back
    assert seen[0] == [PROMPT - 1, PROMPT + 2], seen
    assert seen[-1] == [PROMPT - 1 + last, PROMPT + 2 + last], seen


def test_phi3_longrope_cache_reset_at_the_switch():
    # prompt 8 + 20 tokens crosses ORIG = 16: short factors up to length 16, then a full
    # re-run of the 17 tokens with the long factors, then one token per step again
    _, ref = check_arch("phi3-longrope", prompt())
    calls = ref[3]
    assert calls[0] == (PROMPT, PROMPT - 1)
    rerun = [c for c in calls[1:] if c[0] > 1]
    assert rerun == [(ORIG + 1, ORIG)], calls
    # a prompt already longer than ORIG: long factors from the prefill on, no re-run
    _, ref = check_arch("phi3-longrope", prompt(ORIG + 4))
    assert all(c[0] == 1 for c in ref[3][1:]), ref[3]


def test_longrope_switch_changes_frequencies():
    # the crossing above is not vacuous: position ORIG - 1 in a pass of length ORIG (short
    # factors) and of length ORIG + 1 (long factors) gets different cos/sin, in transformers
    # and in posenc alike
    theirs = rotary(build("phi3-longrope"))
    ours = hf.RotaryEmbedding(theirs.config)
    x = torch.zeros(1, 1, 1, 16)
    short_pass = torch.arange(ORIG)[None]
    long_pass = torch.arange(ORIG + 1)[None]
    for emb in (theirs, ours):
        short_cos = emb(x, short_pass)[0][0, -1]
        long_cos = emb(x, long_pass)[0][0, -2]
        assert (short_cos - long_cos).abs().max() > 1e-2, type(emb).__name__
    for pos in (short_pass, long_pass, short_pass):
        torch.testing.assert_close(ours(x, pos), theirs(x, pos), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["llama", "qwen2-yarn", "phi3-longrope", "gemma", "llama-dynamic"])
def test_wrong_rope_changes_generation(name):
    # negative control: posenc with a 2% different rope_theta (probe off) moves the logits far
    # beyond the tolerance, so the agreement above is not RoPE being irrelevant here
    fresh = build(name)
    ids = prompt()
    ref = generate(copy.deepcopy(fresh), ids)
    model = copy.deepcopy(fresh)
    model.config.rope_parameters["rope_theta"] *= 1.02
    with hf.use_posenc_rope(model, check=False):
        wrong = generate(model, ids)
    assert (wrong[1] - ref[1]).abs().max() > 1e-3


def test_probe_refuses_a_model_whose_rope_was_changed():
    # check=True compares against the model's own rotary embedding: a config edited after
    # the model was built (the model still uses the old theta) is refused, nothing swapped
    model = build("llama")
    model.config.rope_parameters["rope_theta"] *= 1.02
    own = rotary(model)
    with pytest.raises(TypeError, match="LlamaForCausalLM is not supported"):
        hf.use_posenc_rope(model)
    assert rotary(model) is own


def test_rejects_per_layer_type_rope_gemma3():
    # Gemma 3's rotary embedding takes (x, position_ids, layer_type) (local and global RoPE):
    # refused clearly, nothing swapped
    cfg = Gemma3TextConfig(**{**COMMON, "head_dim": 16})
    torch.manual_seed(0)
    model = Gemma3ForCausalLM(cfg).eval()
    own = rotary(model)
    with pytest.raises(TypeError, match="Gemma3ForCausalLM is not supported.*per-layer-type"):
        hf.use_posenc_rope(model)
    assert rotary(model) is own
