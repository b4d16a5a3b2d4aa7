// Reading the RoPE configuration of a Hugging Face transformers `config.json`: the C++ twin of
// posenc.hf.rope_from_config (python/posenc/hf.py), with the same resolution rules, warnings
// and errors, so that both readers give the same RopeScalingConfig for the same config.
#pragma once

#include <optional>
#include <string>

#include "posenc/rope_scaling.h"

namespace posenc {

/// The RoPE configuration of a transformers config, given as the text of its `config.json`.
///
/// Both RoPE styles are read:
///  * older: `"rope_scaling": {"type" | "rope_type": ..., "factor": ..., ...}` next to a
///    top-level `"rope_theta"` (and `"partial_rotary_factor"`);
///  * newer (transformers >= 5): `"rope_parameters": {"rope_type": ..., "rope_theta": ...,
///    "partial_rotary_factor": ..., ...}`, possibly nested per layer type
///    (`{"full_attention": {...}, "sliding_attention": {...}}`): `layer_type` selects one
///    (required then, ignored otherwise).
///
/// Fields are resolved as transformers resolves them, so that compute_rope_parameters() of the
/// result equals transformers' ROPE_INIT_FUNCTIONS bit for bit:
///  * `rope_scaling` wins over `rope_parameters` (an empty or null one counts as absent);
///    `rope_type` wins over the legacy `type`; no type means "default".
///  * rope_theta: the RoPE dict's, else the config's `rope_theta` (or GPT-NeoX's
///    `rotary_emb_base`), else 10000. partial_rotary_factor: the dict's, else the config's
///    (or GPT-NeoX's `rotary_pct`), else 1.
///  * head_dim: the config's `head_dim` when set and non-zero, else
///    hidden_size // num_attention_heads.
///  * original_max_position_embeddings (yarn, llama3, longrope): a top-level value wins
///    (Phi-3), else the dict's, else `max_position_embeddings`.
///  * attention_factor is read for yarn and longrope only; beta_fast, beta_slow, mscale,
///    mscale_all_dim, truncate for yarn; low_freq_factor, high_freq_factor for llama3;
///    short_factor, long_factor for longrope; factor for all but default and xpos;
///    xpos_gamma, xpos_scale_base (defaults 0.4, 512) whenever present. A JSON null is an
///    absent value (but a null `truncate` is false, as transformers reads it).
///  * Aliases: "su" -> "longrope"; "yarn" in a config whose model_type is "phi3" -> "longrope"
///    (as Phi3Config does; Phi-3's "yarn" never meant YaRN); "mrope" -> "default"
///    (mrope_section only splits positions).
///
/// Warnings (TORCH_WARN, a UserWarning in Python): RoPE dict keys that no type reads
/// ("unrecognized keys for rope_type '<type>' ignored: [...]") and keys that the type does
/// not read ("keys not used by rope_type '<type>' ignored: [...]"); the values are ignored.
///
/// Errors (messages "posenc.rope_config_from_json: ...", the same text after the prefix as
/// posenc.hf.rope_from_config's, values written as Python writes them):
///  * c10::ValueError (ValueError in Python): text that is not JSON or not a JSON object, or
///    that nests arrays/objects more than 128 levels deep (a config.json nests 3 or 4); an
///    unknown rope_type ("rope_type must be one of 'default', 'linear', ..., but got 'Yarn'
///    (did you mean 'yarn'?)": misspelled names, other case, and transformers types posenc
///    does not implement are never treated as "default"); a rope_type that is not a string; a
///    RoPE dict that is not an object; nested per-layer-type parameters without a valid
///    layer_type; no head_dim and no hidden_size / num_attention_heads; a field of the wrong
///    JSON type ("'factor' must be a number, but got '2.0'"), a length that is not an integer.
///    The Python reader is duck-typed there (it accepts "2.0" or true as numbers); this one
///    reads JSON and is strict.
///  * c10::Error (RuntimeError in Python), from RopeScalingConfig::validate(): a missing or
///    out-of-range field of the type, e.g. "posenc.rope_scaling_inv_freq: argument 'factor'
///    must be given for rope_type "linear", but got None".
///
/// JSON is read with nlohmann/json: NaN and Infinity (which Python's json.dumps writes) are
/// not JSON and are rejected as a syntax error.
RopeScalingConfig rope_config_from_json(const std::string& config_json,
                                        const std::optional<std::string>& layer_type = std::nullopt);

/// rope_config_from_json on the contents of the file `path` (a `config.json`). Errors name
/// "posenc.rope_config_from_file" and the path: a file that cannot be opened or read throws
/// c10::Error with the system's reason; a syntax error throws c10::ValueError with the line
/// and column.
RopeScalingConfig rope_config_from_file(const std::string& path,
                                        const std::optional<std::string>& layer_type = std::nullopt);

}  // namespace posenc
