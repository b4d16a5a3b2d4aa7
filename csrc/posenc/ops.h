// Public C++ API: one function per op, each calling the dispatcher (so CPU, CUDA, Meta and
// Autograd kernels are all reachable from C++ exactly as from torch.ops.posenc.* in Python).
//
// Position contract shared by every relative op: query i sits at absolute position
// q_offset + i, key j at k_offset + j. Offsets are how KV-cache decoding, Transformer-XL
// memory and context parallelism line queries up with keys.
//
// Errors: every function raises c10::Error (std::exception) naming the op, the argument,
// what was expected and what was given, before any kernel runs.
#pragma once

#include <ATen/ATen.h>
#include <torch/arg.h>

#include <optional>
#include <string>
#include <tuple>

namespace posenc {
namespace ops {

/// Sinusoidal absolute position table (Vaswani et al. 2017, §3.5).
/// Returns (num_positions, dim) in `dtype` (default float32) on `device`; row p is the
/// encoding of absolute position offset + p. Angles are computed in fp64.
///  interleaved=true : [sin(p w_0), cos(p w_0), sin(p w_1), ...], w_i = base^(-2i/dim) (paper).
///  interleaved=false: [sin(p v_0..v_{h-1}), cos(p v_0..v_{h-1})], v_i = exp(-i ln(base)/max(h-1,1)),
///                     h = dim/2 (tensor2tensor's get_timing_signal_1d, used by fairseq and TXL ports).
/// Values are computed in fp64 and rounded once to `dtype` (float16/bfloat16/float32/float64).
/// Not differentiable (positions are integers). Errors: dim must be even and > 0;
/// num_positions >= 0; base finite and > 0; dtype floating; offset + num_positions - 1 within
/// int64; a table whose size in bytes overflows int64 ("argument 'num_positions' is too
/// large: ...", checked before the positions are allocated) or that cannot be allocated
/// ("... the output cannot be allocated", with its size in bytes).
at::Tensor sinusoidal_table(int64_t num_positions, int64_t dim, double base = 10000.0,
                            int64_t offset = 0, bool interleaved = true,
                            at::ScalarType dtype = at::kFloat, at::Device device = at::kCPU);

/// Same as above for arbitrary int64 positions of shape (N,) -> (N, dim) (any strides, any
/// sign); dtype defaults to float32. Errors as above, and positions must be 1-D int64.
at::Tensor sinusoidal_table_at(const at::Tensor& positions, int64_t dim, double base = 10000.0,
                               bool interleaved = true,
                               std::optional<at::ScalarType> dtype = std::nullopt);

/// ALiBi head slopes (Press et al. 2022, §3): (num_heads,) geometric sequence 2^(-8i/n);
/// for num_heads not a power of two, the slopes of the closest lower power of two followed by
/// every other slope of twice that many heads. Computed in fp64, returned in `dtype`.
at::Tensor alibi_slopes(int64_t num_heads, at::ScalarType dtype = at::kFloat,
                        at::Device device = at::kCPU);

/// ALiBi bias (H, q_len, k_len) from slopes (H,): causal -slope*(q_pos - k_pos),
/// bidirectional -slope*|q_pos - k_pos|. Differentiable in slopes. Errors: slopes 1-D
/// floating; q_len, k_len >= 0; an output whose size in bytes overflows int64; slopes not
/// finite ("argument 'slopes' must be finite, but got slopes[i] = nan"), checked on CPU
/// tensors only: on CUDA that would need a stream sync per call, and NaN/inf slopes give a
/// NaN/inf bias there.
at::Tensor alibi_bias(const at::Tensor& slopes, int64_t q_len, int64_t k_len,
                      int64_t q_offset = 0, int64_t k_offset = 0, bool causal = true);

/// alibi_bias written into `out`, a contiguous (H, q_len, k_len) tensor of the slopes' dtype and
/// device: reusing one buffer across calls (same lengths) skips the page faults of a fresh
/// output. Returns `out`. No autograd: slopes that require grad raise (use alibi_bias).
/// The same out= form exists for t5_bias and kerple_bias.
at::Tensor& alibi_bias_out(at::Tensor& out, const at::Tensor& slopes, int64_t q_len,
                           int64_t k_len, int64_t q_offset = 0, int64_t k_offset = 0,
                           bool causal = true);

/// T5 relative position buckets (Raffel et al. 2020; HF T5Attention._relative_position_bucket,
/// final clamp included). relative_position = key - query, any shape, int64 -> int64 buckets
/// in [0, num_buckets), contiguous. Bidirectional: half the buckets per direction, keys after
/// the query in the upper half; causal: keys after the query share bucket 0. Per direction,
/// max_exact = (buckets per direction) / 2 exact distances, then log-spaced buckets up to
/// max_distance; the log term is evaluated in fp32 as HF does, so boundaries agree with it.
/// Not differentiable. Errors: relative_position int64; num_buckets even and >= 4 when
/// bidirectional, >= 2 when causal; max_distance > max_exact.
at::Tensor t5_relative_bucket(const at::Tensor& relative_position, bool bidirectional = true,
                              int64_t num_buckets = 32, int64_t max_distance = 128);

/// T5 relative bias: table (num_buckets, H) float16/bfloat16/float32/float64 (the weight of
/// HF's relative_attention_bias embedding) -> (H, q_len, k_len) in the table's dtype,
/// out[h,i,j] = table[bucket(k_pos - q_pos), h], buckets computed in the kernel (no bucket
/// tensor). Differentiable in table (deterministic reduction per head and bucket).
/// Errors: table 2-D floating whose rows satisfy the num_buckets rules above; max_distance >
/// max_exact; q_len, k_len >= 0; an output whose size in bytes overflows int64.
at::Tensor t5_bias(const at::Tensor& table, int64_t q_len, int64_t k_len, int64_t q_offset = 0,
                   int64_t k_offset = 0, bool bidirectional = true, int64_t max_distance = 128);
at::Tensor& t5_bias_out(at::Tensor& out, const at::Tensor& table, int64_t q_len, int64_t k_len,
                        int64_t q_offset = 0, int64_t k_offset = 0, bool bidirectional = true,
                        int64_t max_distance = 128);

/// KERPLE bias (Chi et al. 2022, eq. 6/7) from r1, r2 (H,) (float16/bfloat16/float32/float64,
/// same dtype and device; the module keeps them > 0) -> (H, q_len, k_len) in their dtype:
///  kind "log"  : -r1 * log(1 + r2 * d)
///  kind "power": -r1 * d^r2, taken as 0 at d = 0 for every r2 (and d/dr2 = 0 there)
/// d = |q_pos - k_pos| (bidirectional) or max(q_pos - k_pos, 0) (causal: future keys, which
/// the causal mask removes anyway, get 0). Differentiable in r1 and r2 (deterministic
/// reduction per head). Errors: r1, r2 1-D of equal length; kind "log" or "power";
/// q_len, k_len >= 0; an output whose size in bytes overflows int64; r1, r2 finite
/// ("argument 'r1' must be finite, but got r1[i] = nan") and r2 >= 0 for "log". Value checks
/// read the values: the Meta kernel cannot see them; on CUDA only r2 of kind "log" is checked
/// (finite and >= 0: the check copies r2 to the host, a stream sync, and is skipped during
/// CUDA graph capture, where a negative r2 gives NaN where 1 + r2 * d < 0); r1, and r2 of
/// kind "power", are not read on CUDA, where non-finite values give a non-finite bias.
at::Tensor kerple_bias(const at::Tensor& r1, const at::Tensor& r2, int64_t q_len, int64_t k_len,
                       int64_t q_offset = 0, int64_t k_offset = 0, const std::string& kind = "log",
                       bool causal = true);
at::Tensor& kerple_bias_out(at::Tensor& out, const at::Tensor& r1, const at::Tensor& r2,
                            int64_t q_len, int64_t k_len, int64_t q_offset = 0,
                            int64_t k_offset = 0, const std::string& kind = "log",
                            bool causal = true);

/// Forgetting-gate bias (Lin et al. 2025, "Forgetting Transformer", §2: O = softmax(Q K^T + D) V;
/// the data-dependent ALiBi of x-transformers). log_fgate (B, H, k_len): the log forget gate
/// log sigmoid(f_t) of key t (at position k_offset + t), computed by the caller from the tokens;
/// float16/bfloat16/float32/float64, any strides. With c_t = sum_{s <= t} log_fgate_s (fp64) and
/// query i at q_offset + i, i.e. key index t_i = q_offset - k_offset + i:
///   out[b, h, i, j] = c[t_i] - c[j] (= sum_{j < s <= t_i} log_fgate_s) for j <= t_i, -inf for j > t_i
/// -> (B, H, q_len, k_len) in log_fgate's dtype, contiguous: the log of the paper's F_ij = prod
/// f_s, so future keys get -inf (F_ij = 0) and the bias is its own causal mask (pass it to SDPA
/// as attn_mask with is_causal=false; an extra causal mask changes nothing). A single-query call
/// at q_offset = k_offset + k_len - 1 is the last row of the full call (KV-cache decoding).
/// Differentiable in log_fgate: d log_fgate_s = sum_{t >= s} (rows_t - cols_t), rows_t = the
/// gradient summed over query t's row, cols_t = over key column t, in fixed order (fp64,
/// deterministic, no atomics). Errors: log_fgate 3-D floating; q_len >= 0; offsets within
/// +-2^61; every query at a key position (k_offset <= q_offset, q_offset + q_len <= k_offset +
/// k_len; "argument 'q_offset' must place every query at a key position ..."); an output whose
/// size in bytes overflows int64; log_fgate values finite and <= 0 ("argument 'log_fgate' must
/// be finite ..., but got log_fgate[b, h, t] = nan"), checked on CPU tensors only: on CUDA the
/// check would need a stream sync, and non-finite values give NaN there.
at::Tensor forgetting_gate_bias(const at::Tensor& log_fgate, int64_t q_len, int64_t q_offset = 0,
                                int64_t k_offset = 0);

/// Relative position scores (Transformer-XL terms (b)+(d), Dai et al. 2019 §3.3; Shaw et al.
/// 2018 eq. 5 relative keys): out[b,h,i,j] = q[b,h,i,:] . rel_emb[h, c + clamp(d, -M, M), :]
/// with d = q_pos - k_pos, c = (R - 1) / 2 (R odd), M = max_distance (default c, at most c).
/// q (B,H,Lq,D), rel_emb (H,R,D) -> (B,H,Lq,k_len). k_len defaults to q_offset + Lq - k_offset
/// (keys end with the last query); offsets may be any int64. Computed directly: no (Lq x R)
/// product, no shift. q and rel_emb share dtype (fp32, fp64, fp16/bf16 with fp32 math) and
/// device, any strides; the result is contiguous in q's dtype. Differentiable in q and
/// rel_emb (deterministic). causal: keys after the query (k_pos > q_pos) are neither
/// computed nor read and are written as 0 (a causal mask removes them anyway); about half
/// the work for Transformer-XL's causal attention, and their gradient is 0. Throws c10::Error
/// naming the argument for wrong rank/dtype/device, mismatched heads or head_dim, even R,
/// max_distance outside [0, c], k_len < 0, or an output whose size in bytes overflows int64.
at::Tensor rel_pos_scores(const at::Tensor& q, const at::Tensor& rel_emb, int64_t q_offset = 0,
                          int64_t k_offset = 0, std::optional<int64_t> k_len = std::nullopt,
                          std::optional<int64_t> max_distance = std::nullopt,
                          bool causal = false);

/// CoPE, contextual position encoding (Golovneva et al. 2024, "Contextual Position Encoding:
/// Learning to Count What's Important", §3, eqs. 3-5): the position term to add to the
/// attention logits, (B, H, Lq, Lk) in q's dtype, contiguous. For query i (position
/// q_offset + i) and each key j it sees (k_offset + j <= q_offset + i; CoPE is causal):
///   g_ij = sigmoid(scale * q_i . k_j)        (scale: default 1/sqrt(head_dim), the paper's
///                                             code takes the gates from the scaled logits)
///   p_ij = min(sum_{t=j}^{i} g_it, P - 1)    (P = npos_max = pos_emb.size(0))
///   out_ij = (1 - w) q_i . e[floor p] + w q_i . e[ceil p],  w = p - floor p
/// Keys after the query are written as 0: a causal mask must remove them. q (B, H, Lq, D),
/// k (B, H, Lk, D), pos_emb (P, D), shared by the heads (the paper's per-layer table); one
/// floating dtype (fp16/bf16 with fp32 math) and device, any strides. Differentiable in q, k
/// and pos_emb (deterministic: no atomics, bit-identical across runs and CPU thread counts).
/// The rows are independent, so a decode call (one query at the last position, all keys)
/// equals the last row of the full call. Throws c10::Error naming the argument for wrong
/// rank, dtype or device, k or pos_emb not matching q's batch/heads/head_dim, an empty
/// pos_emb, a non-finite scale, offsets outside +-2^61, or an output that cannot be allocated.
at::Tensor cope_scores(const at::Tensor& q, const at::Tensor& k, const at::Tensor& pos_emb,
                       std::optional<double> scale = std::nullopt, int64_t q_offset = 0,
                       int64_t k_offset = 0);

/// RoPE inverse frequencies base^(-2i/dim), i < dim/2 (Su et al. 2021, eq. 15), computed in
/// fp64, returned as (dim/2,) in dtype: at::kFloat (reference precision, the default) or
/// at::kDouble (exact precision: rope then computes the angles in fp64). dim is the rotary
/// dimension and must be even; base finite and > 1.
at::Tensor rope_inv_freq(int64_t dim, double base = 10000.0, at::Device device = at::kCPU,
                         at::ScalarType dtype = at::kFloat);

/// Rotary position embedding (Su et al. 2021, eq. 34). x (B,H,S,D) for layout "bhsd",
/// (B,S,H,D) for "bshd", or packed (T,H,D) for "thd", any strides; positions int64 or int32 (S,) or
/// (B,S), or none for offset + arange(S) (offset is added to given positions too); inv_freq
/// float32 (R/2,) with R = rotary_dim <= D even. Pairs (i, i + R/2) (half-split,
/// GPT-NeoX/Llama) or (2i, 2i+1) (interleaved, GPT-J/RoFormer); dims >= R pass through
/// bit-exactly. The angle is the float32 product float(pos) * inv_freq[i] (as Hugging Face
/// computes it) for every dtype; cos/sin and the rotation are fp32 for half/bfloat16/float x,
/// fp64 for double x. Returns a new contiguous tensor of x's shape and dtype; differentiable in
/// x only (the backward is the same magnitude times the rotation by the negative angle).
///
/// Packed sequences (layout "thd"): cu_seqlens int64 or int32 (num_seqs + 1,) on x's device holds the
/// cumulative sequence starts (0, ..., T, non-decreasing); token t of the sequence starting at
/// cu_seqlens[i] has position t - cu_seqlens[i] + offset. positions must be none (for explicit
/// per-token positions use "bshd" on x.unsqueeze(0) with positions (T,)). The cu_seqlens
/// values are checked for CPU tensors only; on CUDA they are the caller's responsibility (no
/// host sync; bad values give wrong positions, never out-of-bounds reads).
///
/// Magnitudes, folded into cos and sin (only the R rotary dims are scaled): attention_factor
/// multiplies every pair (Hugging Face's YaRN / LongRoPE attention_scaling); xpos_zeta float32
/// (R/2,) > 0 enables xPos (Sun et al. 2022, "A Length-Extrapolatable Transformer"): pair i
/// at position p is scaled by zeta_i^((p - xpos_centre) / xpos_scale_base), or by its inverse
/// when xpos_inverse (keys), so that q.k depends on the positions only through p_q - p_k. The
/// magnitude is computed in opmath (fp32, fp64 for double x).
///
/// Throws c10::Error naming the argument for a non-4-D (non-3-D for "thd") or non-float x, an
/// unknown layout, positions not int64/int32 (S,)/(B,S) or given with "thd", cu_seqlens missing with
/// "thd", given otherwise, not int64 1-D non-empty, or (CPU) not 0..T non-decreasing, inv_freq
/// not float32 1-D, xpos_zeta not float32 (R/2,) or (CPU) not > 0, a non-finite
/// attention_factor, xpos_scale_base <= 0, a tensor on another device, rotary_dim odd,
/// != 2*len(inv_freq), or > D, or a position offset + s (no positions) or offset + positions[i]
/// past int64 (argument 'offset'). With a nonzero offset and int64 positions (or int32 ones and
/// |offset| > 2^63 - 2^31) the positions' min and max are read: on CUDA a host sync, skipped
/// during CUDA graph capture.
at::Tensor rope(const at::Tensor& x, const std::optional<at::Tensor>& positions,
                const at::Tensor& inv_freq, int64_t offset = 0,
                std::optional<int64_t> rotary_dim = std::nullopt, bool interleaved = false,
                const std::string& layout = "bhsd",
                const std::optional<at::Tensor>& cu_seqlens = std::nullopt,
                double attention_factor = 1.0,
                const std::optional<at::Tensor>& xpos_zeta = std::nullopt,
                double xpos_scale_base = 512.0, bool xpos_inverse = false,
                int64_t xpos_centre = 0);

/// rope for queries and keys in one call: (rope(q, ..., xpos_inverse=false),
/// rope(k, ..., xpos_inverse=true)), bit for bit, with each block of positions' cos/sin (and
/// magnitudes) computed once for every head of q and of k on the CPU. q and k have the same
/// layout, dtype, device, batch, sequence and head_dim; their head counts may differ
/// (grouped-query attention). Arguments, errors (naming 'q' or 'k') and precision as rope.
/// Differentiable in q and k (the backward is the conjugate rotation, rope_qk_backward).
std::tuple<at::Tensor, at::Tensor> rope_qk(
    const at::Tensor& q, const at::Tensor& k, const std::optional<at::Tensor>& positions,
    const at::Tensor& inv_freq, int64_t offset = 0,
    std::optional<int64_t> rotary_dim = std::nullopt, bool interleaved = false,
    const std::string& layout = "bhsd", const std::optional<at::Tensor>& cu_seqlens = std::nullopt,
    double attention_factor = 1.0, const std::optional<at::Tensor>& xpos_zeta = std::nullopt,
    double xpos_scale_base = 512.0, int64_t xpos_centre = 0);

/// Rotary embedding from caller-supplied cos/sin tables, as Hugging Face's
/// apply_rotary_pos_emb: out = x*cos + rotate(x)*sin on the first R dims, with cos/sin of
/// shape (S, R) or (B, S, R), one value per element, in x's dtype and on x's device (any
/// strides). rotate is rotate_half [-x2, x1] (half-split) or [-x1, x0, -x3, x2, ...]
/// (interleaved); R = cos.size(-1), even and <= D; dims >= R pass through. fp32 math for half
/// inputs. Differentiable in x, cos and sin; the table gradients are summed over heads (and
/// batch for (S, R) tables) in a fixed order in fp64. Throws c10::Error naming the argument
/// for mismatched shapes, odd R, R > D, or another dtype/device.
at::Tensor apply_rotary_pos_emb(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin,
                                bool interleaved = false, const std::string& layout = "bhsd");

/// Options of relative_attention: every argument but q, k and v, with chaining setters
/// (RelativeAttentionOptions().slopes(s).causal(true)). Defaults give plain attention.
struct RelativeAttentionOptions {
  /// ALiBi position term: slopes (H,) (any float dtype; posenc::ops::alibi_slopes).
  TORCH_ARG(std::optional<at::Tensor>, slopes) = std::nullopt;
  /// T5 position term: table (num_buckets, H) (HF's relative_attention_bias.weight).
  TORCH_ARG(std::optional<at::Tensor>, table) = std::nullopt;
  /// KERPLE position term: r1, r2 (H,), same dtype and device; r2 >= 0 for the log kernel.
  TORCH_ARG(std::optional<at::Tensor>, r1) = std::nullopt;
  TORCH_ARG(std::optional<at::Tensor>, r2) = std::nullopt;
  /// Relative-scores term: rel_emb (H, R, D) in q's dtype, R = 2c + 1 odd.
  TORCH_ARG(std::optional<at::Tensor>, rel_emb) = std::nullopt;
  /// Query of the relative-scores term (q's shape and dtype): Transformer-XL's q + v; none
  /// means q itself (Shaw et al.).
  TORCH_ARG(std::optional<at::Tensor>, q_rel) = std::nullopt;
  /// Mask keys after the query: key j is kept for query i iff k_offset + j <= q_offset + i.
  TORCH_ARG(bool, causal) = false;
  /// (B, k_len) bool, true marks a padding key that no query attends to (as
  /// torch.nn.MultiheadAttention's key_padding_mask). Layout "bhsd" only.
  TORCH_ARG(std::optional<at::Tensor>, key_padding_mask) = std::nullopt;
  /// Multiplies q k^T (not the position term); default 1 / sqrt(head_dim) (1 when 0).
  TORCH_ARG(std::optional<double>, scale) = std::nullopt;
  /// Absolute position of query 0 and key 0 (KV-cache decoding, memory, context parallelism).
  TORCH_ARG(int64_t, q_offset) = 0;
  TORCH_ARG(int64_t, k_offset) = 0;
  /// ALiBi / KERPLE: |d| (true) or the causal form; T5: bidirectional buckets. Default
  /// !causal. Only for those three terms.
  TORCH_ARG(std::optional<bool>, bidirectional) = std::nullopt;
  /// T5: max_distance of the buckets (default 128); relative scores: the clipping distance M
  /// (default c). Only for those two terms.
  TORCH_ARG(std::optional<int64_t>, max_distance) = std::nullopt;
  /// KERPLE: "log" (default) or "power". Only for KERPLE.
  TORCH_ARG(std::optional<std::string>, kerple_kind) = std::nullopt;
  /// "bhsd": q (B, H, Lq, D), k (B, H_kv, Lk, D), v (B, H_kv, Lk, Dv). "thd": packed
  /// q (Tq, H, D), k (Tk, H_kv, D), v (Tk, H_kv, Dv) with cu_seqlens.
  TORCH_ARG(std::string, layout) = "bhsd";
  /// "thd": cumulative sequence starts (num_seqs + 1,) int64 of q (and of k; default: q's).
  TORCH_ARG(std::optional<at::Tensor>, cu_seqlens_q) = std::nullopt;
  TORCH_ARG(std::optional<at::Tensor>, cu_seqlens_k) = std::nullopt;
  /// "thd": the longest sequences (optional; on CUDA they save a host sync).
  TORCH_ARG(std::optional<int64_t>, max_seqlen_q) = std::nullopt;
  TORCH_ARG(std::optional<int64_t>, max_seqlen_k) = std::nullopt;
  /// Forgetting-gate term (Lin et al. 2025): the log forget gates log sigmoid(f) <= 0 of the
  /// keys, (B, H, k_len) for "bhsd" or (total_k, H) for "thd" (any float dtype); the term is
  /// forgetting_gate_bias(log_fgate, q_len, q_offset, k_offset), per sequence for "thd".
  /// Requires causal = true and every query at a key position (k_offset <= q_offset,
  /// q_offset + q_len <= k_offset + k_len, per sequence).
  TORCH_ARG(std::optional<at::Tensor>, log_fgate) = std::nullopt;
};

/// Fused relative-position attention: softmax(scale * q k^T + P + mask) v, computed in tiles
/// without any (q_len, k_len) tensor (FlashAttention-2, Dao 2023, with the position term
/// computed per tile from its parameters). P is exactly what the matching bias op gives with
/// the same offsets: none, ALiBi (alibi_bias with causal = !bidirectional), T5 (t5_bias), KERPLE
/// (kerple_bias with causal = !bidirectional), or relative scores rel_pos_scores(q_rel,
/// rel_emb, q_offset, k_offset, k_len, max_distance) (Transformer-XL's (b)+(d) with q_rel = q +
/// v, Shaw et al. 2018 with q_rel = q), or the forgetting gate (forgetting_gate_bias(log_fgate,
/// q_len, q_offset, k_offset), per sequence for "thd"; causal only). At most one position term
/// per call, selected by the parameters given. P is added unscaled (pre-scale rel_emb for Transformer-XL's 1/sqrt(d)).
///
/// q, k, v: float16/bfloat16/float32/float64 (one dtype, one device, any strides), head_dim
/// (and v's) <= 256, H % H_kv == 0 (grouped-query / multi-query attention). Math in fp32 for
/// half inputs (fp64 for fp64). Packed sequences ("thd"): positions restart in each sequence
/// (query t of sequence s is at q_offset + t - cu_seqlens_q[s]), and queries see only their own
/// sequence's keys.
///
/// Returns (out, lse): out like q with v's head_dim, in q's dtype, contiguous; lse the natural
/// log-sum-exp of each query's logits, (B, H, Lq) or (H, Tq) for "thd", fp32 (fp64 for fp64),
/// for merging partial results (ring attention). A query whose keys are all masked gets out = 0
/// and lse = -inf, and zero gradients (never NaN).
///
/// Differentiable in q, k, v, the position parameters (slopes, table, r1, r2, rel_emb, q_rel,
/// log_fgate)
/// and through lse. The backward recomputes the tiles from lse; parameter gradients are reduced
/// in a fixed order without atomics (bit-identical across runs and CPU thread counts).
///
/// Errors (c10::Error naming the op, the argument, expected and given): wrong ranks, dtypes,
/// devices; mismatched batch, heads, lengths or head_dim; H % H_kv != 0; head_dim > 256; two
/// position terms; q_rel without rel_emb; bidirectional / max_distance / kerple_kind given to a
/// term that has no such option; parameter shapes not matching H; the T5 bucket rules; R even;
/// max_distance outside [0, c]; non-finite scale; offsets outside +-2^61; bad cu_seqlens (not
/// int64 1-D, on CPU: not starting at 0, decreasing, or not ending at the token count);
/// key_padding_mask not (B, k_len) bool or given with "thd". Parameter values are checked on
/// CPU tensors (finite slopes, table, r1, r2, rel_emb; r2 >= 0 for the log kernel); on CUDA,
/// as for the bias ops, only KERPLE log's r2 is read on the host.
std::tuple<at::Tensor, at::Tensor> relative_attention(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const RelativeAttentionOptions& options = RelativeAttentionOptions());

}  // namespace ops
}  // namespace posenc
