// Fused relative-position attention: dispatcher handles and the argument checks shared by the
// CPU, CUDA and Meta kernels (so a bad call reads the same on every backend).
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>

#include <cmath>
#include <limits>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "check.h"
#include "forgetting_gate.h"
#include "kerple.h"
#include "position_terms.h"
#include "t5.h"

namespace posenc {
namespace detail {

constexpr const char* kAttentionOp = "relative_attention";
constexpr const char* kAttentionBackwardOp = "relative_attention_backward";
// Head dims up to this many elements (the CUDA kernels size their tiles for it).
constexpr int64_t kMaxAttentionHeadDim = 256;

using OptTensor = std::optional<at::Tensor>;

using RelativeAttentionSig = std::tuple<at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const OptTensor&, const OptTensor&,
    const OptTensor&, const OptTensor&, const OptTensor&, const OptTensor&, bool,
    const OptTensor&, std::optional<double>, c10::SymInt, c10::SymInt, std::optional<bool>,
    std::optional<int64_t>, std::optional<c10::string_view>, c10::string_view, const OptTensor&,
    const OptTensor&, std::optional<c10::SymInt>, std::optional<c10::SymInt>, const OptTensor&);

using RelativeAttentionGrads =
    std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
               at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

using RelativeAttentionBackwardSig = RelativeAttentionGrads(
    const at::Tensor&, const OptTensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    const at::Tensor&, const at::Tensor&, const OptTensor&, const OptTensor&, const OptTensor&,
    const OptTensor&, const OptTensor&, const OptTensor&, bool, const OptTensor&,
    std::optional<double>, c10::SymInt, c10::SymInt, std::optional<bool>, std::optional<int64_t>,
    std::optional<c10::string_view>, c10::string_view, const OptTensor&, const OptTensor&,
    std::optional<c10::SymInt>, std::optional<c10::SymInt>, const OptTensor&);

inline auto& relative_attention_op() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("posenc::relative_attention", "")
                       .typed<RelativeAttentionSig>();
  return op;
}

inline auto& relative_attention_backward_op() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("posenc::relative_attention_backward", "")
                       .typed<RelativeAttentionBackwardSig>();
  return op;
}

// Every argument of a call but q, k, v (and, for the backward, the gradients and saved
// outputs). Int is int64_t in the CPU/CUDA kernels and c10::SymInt in the Meta kernels.
template <typename Int>
struct AttentionArgs {
  OptTensor slopes, table, r1, r2, rel_emb, q_rel;
  bool causal = false;
  OptTensor key_padding_mask;
  std::optional<double> scale;
  Int q_offset{0}, k_offset{0};
  std::optional<bool> bidirectional;
  std::optional<int64_t> max_distance;
  std::optional<std::string> kerple_kind;
  std::string layout = "bhsd";
  OptTensor cu_seqlens_q, cu_seqlens_k;
  std::optional<Int> max_seqlen_q, max_seqlen_k;
  OptTensor log_fgate;  // forgetting gate: (B, H, Lk), or (Tk, H) packed
};

template <typename Int>
AttentionArgs<Int> make_attention_args(const OptTensor& slopes, const OptTensor& table,
                                       const OptTensor& r1, const OptTensor& r2,
                                       const OptTensor& rel_emb, const OptTensor& q_rel,
                                       bool causal, const OptTensor& key_padding_mask,
                                       std::optional<double> scale, Int q_offset, Int k_offset,
                                       std::optional<bool> bidirectional,
                                       std::optional<int64_t> max_distance,
                                       std::optional<c10::string_view> kerple_kind,
                                       c10::string_view layout, const OptTensor& cu_seqlens_q,
                                       const OptTensor& cu_seqlens_k,
                                       std::optional<Int> max_seqlen_q,
                                       std::optional<Int> max_seqlen_k,
                                       const OptTensor& log_fgate) {
  AttentionArgs<Int> a;
  a.slopes = slopes;
  a.table = table;
  a.r1 = r1;
  a.r2 = r2;
  a.rel_emb = rel_emb;
  a.q_rel = q_rel;
  a.causal = causal;
  a.key_padding_mask = key_padding_mask;
  a.scale = scale;
  a.q_offset = std::move(q_offset);
  a.k_offset = std::move(k_offset);
  a.bidirectional = bidirectional;
  a.max_distance = max_distance;
  if (kerple_kind.has_value()) a.kerple_kind = std::string(*kerple_kind);
  a.layout = std::string(layout);
  a.cu_seqlens_q = cu_seqlens_q;
  a.cu_seqlens_k = cu_seqlens_k;
  a.max_seqlen_q = std::move(max_seqlen_q);
  a.max_seqlen_k = std::move(max_seqlen_k);
  a.log_fgate = log_fgate;
  return a;
}

// What a checked call computes.
struct AttentionConfig {
  PositionFamily family = PositionFamily::None;
  bool thd = false;
  // ALiBi / KERPLE: |d| instead of the causal form; T5: bidirectional buckets.
  bool symmetric = false;
  // T5: max_distance of the buckets; relative scores: the clipping distance M.
  int64_t max_distance = 0;
  bool kerple_log = true;
};

// The argument that selects a family (KERPLE: r1 or r2, whichever is given).
inline const char* family_arg(PositionFamily f, bool has_r1) {
  switch (f) {
    case PositionFamily::ALiBi: return "slopes";
    case PositionFamily::T5: return "table";
    case PositionFamily::KERPLE: return has_r1 ? "r1" : "r2";
    case PositionFamily::RelScores: return "rel_emb";
    case PositionFamily::ForgettingGate: return "log_fgate";
    default: return "";
  }
}

inline const char* family_name(PositionFamily f) {
  switch (f) {
    case PositionFamily::ALiBi: return "ALiBi ('slopes')";
    case PositionFamily::T5: return "T5 ('table')";
    case PositionFamily::KERPLE: return "KERPLE ('r1', 'r2')";
    case PositionFamily::RelScores: return "relative scores ('rel_emb')";
    case PositionFamily::ForgettingGate: return "forgetting gate ('log_fgate')";
    default: return "none";
  }
}

// Accumulation type of an attention call: fp64 for fp64 inputs, fp32 otherwise.
inline at::ScalarType attention_acc_type(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

// Sizes of the outputs: out like q with v's head_dim; lse (B, H, Lq), or (H, Tq) packed.
inline std::vector<c10::SymInt> attention_out_sizes(const at::Tensor& q, const at::Tensor& v) {
  auto s = q.sym_sizes().vec();
  s.back() = v.sym_sizes().back();
  return s;
}

inline std::vector<c10::SymInt> attention_lse_sizes(const at::Tensor& q, bool thd) {
  if (thd) return {q.sym_size(1), q.sym_size(0)};
  return {q.sym_size(0), q.sym_size(1), q.sym_size(2)};
}

inline void check_param_vector(const char* op, const char* arg, const at::Tensor& t,
                               const at::Tensor& q, const c10::SymInt& heads) {
  check_dim(op, arg, t, 1, "(num_heads,)");
  check_floating(op, arg, t);
  check_same_device(op, arg, t, "q", q);
  POSENC_CHECK_ARG(t.sym_size(0) == heads, op, arg,
                   c10::str("must have q's number of heads (", heads, ") elements"), "shape ",
                   shape_str(t));
}

// Shapes, dtypes, devices and option rules of a forward call; values (finite parameters,
// cu_seqlens contents) are checked by the CPU kernel. Returns the parsed configuration.
template <typename Int>
AttentionConfig check_relative_attention(const char* op, const at::Tensor& q, const at::Tensor& k,
                                         const at::Tensor& v, const AttentionArgs<Int>& a) {
  AttentionConfig cfg;
  check_defined(op, "q", q);
  check_defined(op, "k", k);
  check_defined(op, "v", v);
  POSENC_CHECK_ARG(a.layout == "bhsd" || a.layout == "thd", op, "layout",
                   "must be \"bhsd\" or \"thd\"", "\"", a.layout, "\"");
  cfg.thd = a.layout == "thd";
  const int64_t rank = cfg.thd ? 3 : 4;
  const char* q_doc = cfg.thd ? "(total_q, heads, head_dim)" : "(batch, heads, q_len, head_dim)";
  const char* k_doc =
      cfg.thd ? "(total_k, kv_heads, head_dim)" : "(batch, kv_heads, k_len, head_dim)";
  const char* v_doc =
      cfg.thd ? "(total_k, kv_heads, v_head_dim)" : "(batch, kv_heads, k_len, v_head_dim)";
  check_dim(op, "q", q, rank, q_doc);
  check_floating(op, "q", q);
  check_dim(op, "k", k, rank, k_doc);
  check_dim(op, "v", v, rank, v_doc);
  check_same_dtype(op, "k", k, "q", q);
  check_same_dtype(op, "v", v, "q", q);
  check_same_device(op, "k", k, "q", q);
  check_same_device(op, "v", v, "q", q);
  // Dimension indices of (batch, heads, length, dim); thd has no batch dim.
  const int64_t hd = 1, ld = cfg.thd ? 0 : 2, dd = rank - 1;
  if (!cfg.thd) {
    POSENC_CHECK_ARG(k.sym_size(0) == q.sym_size(0), op, "k",
                     c10::str("must have q's batch size (", q.sym_size(0), ") in dim 0"),
                     "shape ", shape_str(k));
    POSENC_CHECK_ARG(v.sym_size(0) == q.sym_size(0), op, "v",
                     c10::str("must have q's batch size (", q.sym_size(0), ") in dim 0"),
                     "shape ", shape_str(v));
  }
  POSENC_CHECK_ARG(k.sym_size(dd) == q.sym_size(dd), op, "k",
                   c10::str("must have q's head_dim (", q.sym_size(dd), ") in its last dim"),
                   "shape ", shape_str(k));
  POSENC_CHECK_ARG(v.sym_size(hd) == k.sym_size(hd), op, "v",
                   c10::str("must have k's number of heads (", k.sym_size(hd), ") in dim ", hd),
                   "shape ", shape_str(v));
  POSENC_CHECK_ARG(v.sym_size(ld) == k.sym_size(ld), op, "v",
                   c10::str("must have k's length (", k.sym_size(ld), ") in dim ", ld), "shape ",
                   shape_str(v));
  const c10::SymInt heads = q.sym_size(hd), kv_heads = k.sym_size(hd);
  if (heads != 0 || kv_heads != 0) {
    POSENC_CHECK_ARG(kv_heads > 0 && heads >= kv_heads && heads % kv_heads == 0, op, "k",
                     c10::str("must have a number of heads that divides q's (", heads,
                              "; grouped-query attention)"),
                     "shape ", shape_str(k));
  }
  if (auto d = concrete(q.sym_size(dd))) {
    POSENC_CHECK_ARG(*d <= kMaxAttentionHeadDim, op, "q",
                     c10::str("must have head_dim <= ", kMaxAttentionHeadDim), "shape ",
                     shape_str(q));
  }
  if (auto d = concrete(v.sym_size(dd))) {
    POSENC_CHECK_ARG(*d <= kMaxAttentionHeadDim, op, "v",
                     c10::str("must have head_dim <= ", kMaxAttentionHeadDim), "shape ",
                     shape_str(v));
  }

  // Packed sequences.
  if (cfg.thd) {
    POSENC_CHECK_ARG(a.cu_seqlens_q.has_value(), op, "cu_seqlens_q",
                     "must be given with layout \"thd\"", "None");
    const at::Tensor& cq = *a.cu_seqlens_q;
    check_dim(op, "cu_seqlens_q", cq, 1, "(num_seqs + 1,)");
    check_index_dtype(op, "cu_seqlens_q", cq);
    check_same_device(op, "cu_seqlens_q", cq, "q", q);
    POSENC_CHECK_ARG(cq.sym_size(0) >= 1, op, "cu_seqlens_q",
                     "must hold at least one element (the start 0)", "shape ", shape_str(cq));
    if (a.cu_seqlens_k.has_value()) {
      const at::Tensor& ck = *a.cu_seqlens_k;
      check_dim(op, "cu_seqlens_k", ck, 1, "(num_seqs + 1,)");
      check_index_dtype(op, "cu_seqlens_k", ck);
      check_same_device(op, "cu_seqlens_k", ck, "q", q);
      POSENC_CHECK_ARG(ck.sym_size(0) == cq.sym_size(0), op, "cu_seqlens_k",
                       c10::str("must have the length of 'cu_seqlens_q' (", cq.sym_size(0), ")"),
                       "shape ", shape_str(ck));
    }
    POSENC_CHECK_ARG(!a.key_padding_mask.has_value(), op, "key_padding_mask",
                     "must be None with layout \"thd\" (packed sequences have no padding)",
                     "a tensor");
    if (a.max_seqlen_q.has_value()) check_length(op, "max_seqlen_q", *a.max_seqlen_q);
    if (a.max_seqlen_k.has_value()) check_length(op, "max_seqlen_k", *a.max_seqlen_k);
  } else {
    POSENC_CHECK_ARG(!a.cu_seqlens_q.has_value(), op, "cu_seqlens_q",
                     "must be None with layout \"bhsd\"", "a tensor");
    POSENC_CHECK_ARG(!a.cu_seqlens_k.has_value(), op, "cu_seqlens_k",
                     "must be None with layout \"bhsd\"", "a tensor");
    POSENC_CHECK_ARG(!a.max_seqlen_q.has_value(), op, "max_seqlen_q",
                     "must be None with layout \"bhsd\"", *a.max_seqlen_q);
    POSENC_CHECK_ARG(!a.max_seqlen_k.has_value(), op, "max_seqlen_k",
                     "must be None with layout \"bhsd\"", *a.max_seqlen_k);
  }
  if (a.key_padding_mask.has_value()) {
    const at::Tensor& m = *a.key_padding_mask;
    check_dim(op, "key_padding_mask", m, 2, "(batch, k_len)");
    check_dtype(op, "key_padding_mask", m, at::kBool);
    check_same_device(op, "key_padding_mask", m, "q", q);
    POSENC_CHECK_ARG(m.sym_size(0) == q.sym_size(0) && m.sym_size(1) == k.sym_size(ld), op,
                     "key_padding_mask",
                     c10::str("must have shape (batch, k_len) = [", q.sym_size(0), ", ",
                              k.sym_size(ld), "]"),
                     "shape ", shape_str(m));
  }
  if (a.scale.has_value()) {
    POSENC_CHECK_ARG(std::isfinite(*a.scale), op, "scale", "must be finite (or None)", *a.scale);
    // The kernels multiply in the accumulation type: fp32 unless the inputs are fp64.
    POSENC_CHECK_ARG(attention_acc_type(q.scalar_type()) == at::kDouble ||
                         std::abs(*a.scale) <= std::numeric_limits<float>::max(),
                     op, "scale", "must be finite in float32 (|scale| <= 3.4e38) for non-fp64 inputs",
                     *a.scale);
  }
  check_offsets(op, a.q_offset, a.k_offset);

  // The position term: at most one, chosen by the parameters given.
  const char* first = nullptr;
  auto take = [&](bool given, PositionFamily f) {
    if (!given) return;
    const char* arg = family_arg(f, a.r1.has_value());
    POSENC_CHECK_ARG(first == nullptr, op, arg,
                     "must not be combined with another position term (at most one per call)",
                     "both '", first, "' and '", arg, "'");
    cfg.family = f;
    first = arg;
  };
  take(a.slopes.has_value(), PositionFamily::ALiBi);
  take(a.table.has_value(), PositionFamily::T5);
  take(a.r1.has_value() || a.r2.has_value(), PositionFamily::KERPLE);
  take(a.rel_emb.has_value(), PositionFamily::RelScores);
  take(a.log_fgate.has_value(), PositionFamily::ForgettingGate);
  const auto fam = cfg.family;
  const bool toeplitz = fam == PositionFamily::ALiBi || fam == PositionFamily::T5 ||
                        fam == PositionFamily::KERPLE;
  POSENC_CHECK_ARG(!a.q_rel.has_value() || fam == PositionFamily::RelScores, op, "q_rel",
                   "is used only with 'rel_emb' (the relative-scores term)", "a tensor without it");
  POSENC_CHECK_ARG(!a.bidirectional.has_value() || toeplitz, op, "bidirectional",
                   "is used only by ALiBi, T5 and KERPLE (leave it None)",
                   *a.bidirectional ? "True" : "False", " with position term ", family_name(fam));
  POSENC_CHECK_ARG(!a.max_distance.has_value() || fam == PositionFamily::T5 ||
                       fam == PositionFamily::RelScores,
                   op, "max_distance",
                   "is used only by T5 ('table') and relative scores ('rel_emb')",
                   *a.max_distance, " with position term ", family_name(fam));
  POSENC_CHECK_ARG(!a.kerple_kind.has_value() || fam == PositionFamily::KERPLE, op,
                   "kerple_kind", "is used only by KERPLE ('r1', 'r2')", "\"",
                   a.kerple_kind.value_or(""), "\" with position term ", family_name(fam));
  // The position term's form follows the mask unless told otherwise.
  cfg.symmetric = a.bidirectional.value_or(!a.causal);

  switch (fam) {
    case PositionFamily::ALiBi:
      check_param_vector(op, "slopes", *a.slopes, q, heads);
      break;
    case PositionFamily::T5: {
      const at::Tensor& t = *a.table;
      check_dim(op, "table", t, 2, "(num_buckets, num_heads)");
      check_floating(op, "table", t);
      check_same_device(op, "table", t, "q", q);
      POSENC_CHECK_ARG(t.sym_size(1) == heads, op, "table",
                       c10::str("must have q's number of heads (", heads, ") in dim 1"), "shape ",
                       shape_str(t));
      cfg.max_distance = a.max_distance.value_or(128);
      check_t5_buckets(op, "table", true, t.sym_size(0), cfg.symmetric, cfg.max_distance);
      break;
    }
    case PositionFamily::KERPLE: {
      POSENC_CHECK_ARG(a.r1.has_value(), op, "r1", "must be given with 'r2' (KERPLE)", "None");
      POSENC_CHECK_ARG(a.r2.has_value(), op, "r2", "must be given with 'r1' (KERPLE)", "None");
      check_param_vector(op, "r1", *a.r1, q, heads);
      check_param_vector(op, "r2", *a.r2, q, heads);
      check_same_dtype(op, "r2", *a.r2, "r1", *a.r1);
      cfg.kerple_log = parse_kerple_kind(op, a.kerple_kind.value_or("log"), "kerple_kind") == KerpleKind::Log;
      break;
    }
    case PositionFamily::RelScores: {
      const at::Tensor& e = *a.rel_emb;
      check_dim(op, "rel_emb", e, 3, "(heads, R, head_dim)");
      check_same_dtype(op, "rel_emb", e, "q", q);
      check_same_device(op, "rel_emb", e, "q", q);
      POSENC_CHECK_ARG(e.sym_size(0) == heads, op, "rel_emb",
                       c10::str("must have q's number of heads (", heads, ") in dim 0"),
                       "shape ", shape_str(e));
      POSENC_CHECK_ARG(e.sym_size(2) == q.sym_size(dd), op, "rel_emb",
                       c10::str("must have q's head_dim (", q.sym_size(dd), ") in dim 2"),
                       "shape ", shape_str(e));
      POSENC_CHECK_ARG(e.sym_size(1) % 2 == 1, op, "rel_emb",
                       "must have an odd number of rows R = 2c + 1 (distances -c..c) in dim 1",
                       "shape ", shape_str(e));
      if (auto rows = concrete(e.sym_size(1))) {
        const int64_t c = (*rows - 1) / 2;
        cfg.max_distance = a.max_distance.value_or(c);
        POSENC_CHECK_ARG(cfg.max_distance >= 0 && cfg.max_distance <= c, op, "max_distance",
                         c10::str("must be in [0, c] with c = (R - 1) / 2 = ", c),
                         cfg.max_distance);
      }
      if (a.q_rel.has_value()) {
        const at::Tensor& qr = *a.q_rel;
        check_defined(op, "q_rel", qr);
        check_same_dtype(op, "q_rel", qr, "q", q);
        check_same_device(op, "q_rel", qr, "q", q);
        POSENC_CHECK_ARG(qr.sym_sizes() == q.sym_sizes(), op, "q_rel",
                         c10::str("must have q's shape ", shape_str(q)), "shape ", shape_str(qr));
      }
      break;
    }
    case PositionFamily::ForgettingGate: {
      const at::Tensor& l = *a.log_fgate;
      // The term masks future keys itself (F_ij = 0); the kernels skip them only under the
      // causal mask, so the two must go together.
      POSENC_CHECK_ARG(a.causal, op, "log_fgate",
                       "requires causal=True (the forgetting gate is defined for keys at or "
                       "before the query, Lin et al. 2025)",
                       "causal=False");
      const char* doc = cfg.thd ? "(total_k, heads)" : "(batch, heads, k_len)";
      check_dim(op, "log_fgate", l, cfg.thd ? 2 : 3, doc);
      check_floating(op, "log_fgate", l);
      check_same_device(op, "log_fgate", l, "q", q);
      const bool shape_ok =
          cfg.thd ? (l.sym_size(0) == k.sym_size(0) && l.sym_size(1) == heads)
                  : (l.sym_size(0) == q.sym_size(0) && l.sym_size(1) == heads &&
                     l.sym_size(2) == k.sym_size(2));
      POSENC_CHECK_ARG(shape_ok, op, "log_fgate",
                       cfg.thd ? c10::str("must have shape (total_k, heads) = [", k.sym_size(0),
                                          ", ", heads, "] (one gate per key token and q head)")
                               : c10::str("must have shape (batch, heads, k_len) = [",
                                          q.sym_size(0), ", ", heads, ", ", k.sym_size(2),
                                          "] (one gate per key and q head)"),
                       "shape ", shape_str(l));
      if (!cfg.thd) {
        check_fgate_positions(op, concrete(q.sym_size(2)), concrete(k.sym_size(2)),
                              concrete(a.q_offset), concrete(a.k_offset));
      }
      break;
    }
    default:
      break;
  }

  // Outputs: out like q with v's head_dim, lse (B, H, Lq) or (H, Tq) in fp32 (fp64).
  check_output_size(op, "q", attention_out_sizes(q, v), q.scalar_type());
  return cfg;
}

// The extra checks of a backward call: the saved outputs and the incoming gradients have the
// shapes the forward gives (the kernels index them with q's geometry).
inline void check_relative_attention_backward(const char* op, const at::Tensor& grad_out,
                                              const OptTensor& grad_lse, const at::Tensor& q,
                                              const at::Tensor& v, const at::Tensor& out,
                                              const at::Tensor& lse, bool thd) {
  const auto out_sizes = attention_out_sizes(q, v);
  const auto lse_sizes = attention_lse_sizes(q, thd);
  const c10::SymIntArrayRef out_ref(out_sizes), lse_ref(lse_sizes);
  check_defined(op, "out", out);
  check_same_dtype(op, "out", out, "q", q);
  check_same_device(op, "out", out, "q", q);
  POSENC_CHECK_ARG(out.sym_sizes() == out_ref, op, "out",
                   c10::str("must have the forward output's shape ", out_ref), "shape ",
                   shape_str(out));
  check_defined(op, "grad_out", grad_out);
  check_floating(op, "grad_out", grad_out);
  check_grad_dtype(op, "grad_out", grad_out, "q", q);
  check_same_device(op, "grad_out", grad_out, "q", q);
  POSENC_CHECK_ARG(grad_out.sym_sizes() == out_ref, op, "grad_out",
                   c10::str("must have the shape of 'out' ", out_ref), "shape ",
                   shape_str(grad_out));
  check_defined(op, "lse", lse);
  check_dtype(op, "lse", lse, attention_acc_type(q.scalar_type()));
  check_same_device(op, "lse", lse, "q", q);
  POSENC_CHECK_ARG(lse.sym_sizes() == lse_ref, op, "lse",
                   c10::str("must have the forward lse's shape ", lse_ref), "shape ",
                   shape_str(lse));
  if (grad_lse.has_value()) {
    check_floating(op, "grad_lse", *grad_lse);
    check_grad_dtype(op, "grad_lse", *grad_lse, "lse", lse);
    check_same_device(op, "grad_lse", *grad_lse, "q", q);
    POSENC_CHECK_ARG(grad_lse->sym_sizes() == lse_ref, op, "grad_lse",
                     c10::str("must have the shape of 'lse' ", lse_ref), "shape ",
                     shape_str(*grad_lse));
  }
}


// The forward and backward kernels of a backend in the ops' signatures: the arguments are
// gathered into AttentionArgs here once, for CPU and CUDA alike.
using AttentionForwardImpl = std::tuple<at::Tensor, at::Tensor> (*)(const at::Tensor&,
                                                                    const at::Tensor&,
                                                                    const at::Tensor&,
                                                                    const AttentionArgs<int64_t>&);
using AttentionBackwardImpl = RelativeAttentionGrads (*)(
    const at::Tensor&, const OptTensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    const at::Tensor&, const at::Tensor&, const AttentionArgs<int64_t>&);

template <AttentionForwardImpl Impl>
std::tuple<at::Tensor, at::Tensor> relative_attention_kernel_entry(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const OptTensor& slopes,
    const OptTensor& table, const OptTensor& r1, const OptTensor& r2, const OptTensor& rel_emb,
    const OptTensor& q_rel, bool causal, const OptTensor& key_padding_mask,
    std::optional<double> scale, int64_t q_offset, int64_t k_offset,
    std::optional<bool> bidirectional, std::optional<int64_t> max_distance,
    std::optional<c10::string_view> kerple_kind, c10::string_view layout,
    const OptTensor& cu_seqlens_q, const OptTensor& cu_seqlens_k,
    std::optional<int64_t> max_seqlen_q, std::optional<int64_t> max_seqlen_k,
    const OptTensor& log_fgate) {
  return Impl(q, k, v,
              make_attention_args<int64_t>(slopes, table, r1, r2, rel_emb, q_rel, causal,
                                           key_padding_mask, scale, q_offset, k_offset,
                                           bidirectional, max_distance, kerple_kind, layout,
                                           cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                                           max_seqlen_k, log_fgate));
}

template <AttentionBackwardImpl Impl>
RelativeAttentionGrads relative_attention_backward_kernel_entry(
    const at::Tensor& grad_out, const OptTensor& grad_lse, const at::Tensor& q,
    const at::Tensor& k, const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
    const OptTensor& slopes, const OptTensor& table, const OptTensor& r1, const OptTensor& r2,
    const OptTensor& rel_emb, const OptTensor& q_rel, bool causal,
    const OptTensor& key_padding_mask, std::optional<double> scale, int64_t q_offset,
    int64_t k_offset, std::optional<bool> bidirectional, std::optional<int64_t> max_distance,
    std::optional<c10::string_view> kerple_kind, c10::string_view layout,
    const OptTensor& cu_seqlens_q, const OptTensor& cu_seqlens_k,
    std::optional<int64_t> max_seqlen_q, std::optional<int64_t> max_seqlen_k,
    const OptTensor& log_fgate) {
  return Impl(grad_out, grad_lse, q, k, v, out, lse,
              make_attention_args<int64_t>(slopes, table, r1, r2, rel_emb, q_rel, causal,
                                           key_padding_mask, scale, q_offset, k_offset,
                                           bidirectional, max_distance, kerple_kind, layout,
                                           cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                                           max_seqlen_k, log_fgate));
}

}  // namespace detail
}  // namespace posenc
