// Fused relative-position attention on the CPU: softmax(scale q k^T + P + mask) v without the
// (q_len, k_len) tensor, forward and FlashAttention-2 style backward (Dao 2023, Alg. 1-2).
//
// Forward: one task per (sequence, head, block of queries). Keys stream through in blocks:
// S = q_blk k_blk^T by GEMM, plus the position term of the tile, masks, online softmax, then
// O += P v_blk by GEMM. The Toeplitz terms (ALiBi, T5, KERPLE) depend on (head, q_pos - k_pos)
// only, so each head's values along the q_len + k_len - 1 diagonals are computed once per call
// from the parameters (position_terms.h) and a tile row adds a contiguous run of them. The
// relative-scores term q_rel . R[c + clamp(d)] is a GEMM of the query block with the window of
// R rows the tile reaches (rows stored in reverse, so that each tile row reads its diagonal as
// a contiguous run); keys clipped to +-max_distance share one row, whose dot product is taken
// once per query. The forgetting gate's c[t_q] - c[j] comes from the fp64 prefix sums c of the
// log gates, computed once per call; a tile row reads a contiguous run of c.
//
// Backward: one task per (sequence, head), blocks in a fixed order: recompute P from the saved
// log-sum-exp, dV += P^T dO, dP = dO v^T, dS = P (dP - D), dQ += dS k, dK += dS^T q. Parameter
// gradients come from per-task sums along the diagonals (and, for R, per-task window
// gradients; for the forgetting gate, per-task row and column sums of dS, then the reverse
// prefix sum), reduced over sequences in index order; grouped-query dK/dV from per-head
// partials reduced in head order. No atomics: results are bit-identical across runs and
// thread counts.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <memory>
#include <type_traits>
#include <vector>

#include "../attention.h"
#include "../rel_pos.h"
#include "blas.h"
#include "vec_math.h"

namespace posenc {
namespace {

using detail::AttentionArgs;
using detail::AttentionConfig;
using detail::PositionFamily;

using Args = AttentionArgs<int64_t>;

constexpr const char* kOp = detail::kAttentionOp;
constexpr const char* kBwdOp = detail::kAttentionBackwardOp;

// 64-byte aligned scratch (GEMM tiles); contents uninitialised.
template <typename T>
class Scratch {
 public:
  explicit Scratch(int64_t n = 0) { resize(n); }
  void resize(int64_t n) {
    if (n <= size_) return;
    const size_t bytes = ((static_cast<size_t>(n) * sizeof(T) + 63) / 64) * 64;
    ptr_.reset(static_cast<T*>(std::aligned_alloc(64, bytes)));
    TORCH_CHECK(ptr_ != nullptr, "posenc.relative_attention: out of memory for a ", bytes,
                "-byte scratch buffer");
    size_ = n;
  }
  T* data() { return ptr_.get(); }

 private:
  struct Free {
    void operator()(T* p) const { std::free(p); }
  };
  std::unique_ptr<T, Free> ptr_;
  int64_t size_ = 0;
};

// One sequence: its first row (thd) or batch index (bhsd), and lengths.
struct Seq {
  int64_t q_start, q_len, k_start, k_len;
};

// Element offset of row i of head h of sequence start `start` in a (B, H, L, D) or (T, H, D)
// tensor: start * start_stride + h * head_stride + i * row_stride.
struct Rows {
  int64_t start_stride = 0, head_stride = 0, row_stride = 0;
  int64_t at(int64_t start, int64_t h, int64_t i) const {
    return start * start_stride + h * head_stride + i * row_stride;
  }
};

Rows rows_of(const at::Tensor& t, bool thd) {
  if (thd) return {t.stride(0), t.stride(1), t.stride(0)};
  return {t.stride(0), t.stride(1), t.stride(2)};
}

// GEMM reads rows through a leading dimension: the last dim must be dense and rows must not
// overlap (an expanded length dim has stride 0). Heads may be expanded (GQA via expand).
at::Tensor gemm_ready(const at::Tensor& t, bool thd) {
  const int64_t d = t.size(-1);
  const int64_t row_stride = thd ? t.stride(0) : t.stride(2);
  if ((t.stride(-1) == 1 || d <= 1) && (row_stride >= d || t.size(thd ? 0 : 2) <= 1)) return t;
  return t.contiguous();
}

struct Geometry {
  bool thd = false, causal = false;
  int64_t heads = 0, kv_heads = 0, group = 1, dim = 0, v_dim = 0;
  int64_t lq_max = 0, lk_max = 0;
  int64_t base = 0;  // q_offset - k_offset: key j is allowed for query i iff j <= base + i
  std::vector<Seq> seqs;
  // Diagonal t = j - i + lq_max - 1 of a sequence's grid has distance d = dist0 - t.
  int64_t n_diag() const { return lq_max + lk_max - 1; }
  int64_t dist0() const { return base + lq_max - 1; }
  // Smallest and largest distance q_pos - k_pos of any (query, key) pair.
  int64_t d_min() const { return base - (lk_max - 1); }
  int64_t d_max() const { return base + lq_max - 1; }
};

std::vector<int64_t> read_cu_seqlens(const at::Tensor& cu, int64_t total, const char* op,
                                     const char* arg, const char* len_arg) {
  const auto c = cu.to(at::kLong).contiguous();  // int32 (flash-attn's convention) too
  const int64_t* p = c.const_data_ptr<int64_t>();
  std::vector<int64_t> v(p, p + c.numel());
  POSENC_CHECK_ARG(v.front() == 0, op, arg, "must start at 0", arg, "[0] = ", v.front());
  for (size_t i = 1; i < v.size(); ++i) {
    POSENC_CHECK_ARG(v[i] >= v[i - 1], op, arg, "must be non-decreasing", arg, "[", i, "] = ",
                     v[i], " < ", arg, "[", i - 1, "] = ", v[i - 1]);
  }
  POSENC_CHECK_ARG(v.back() == total, op, arg,
                   c10::str("must end at the number of packed tokens ", len_arg, " = ", total),
                   arg, "[-1] = ", v.back());
  return v;
}

Geometry make_geometry(const char* op, const at::Tensor& q, const at::Tensor& k,
                       const at::Tensor& v, const Args& a,
                       const AttentionConfig& cfg) {
  Geometry g;
  g.thd = cfg.thd;
  g.causal = a.causal;
  g.base = a.q_offset - a.k_offset;  // offsets within +-2^61: no overflow
  const int64_t hd = 1;
  g.heads = q.size(hd);
  g.kv_heads = k.size(hd);
  g.group = g.kv_heads > 0 ? g.heads / g.kv_heads : 1;
  g.dim = q.size(-1);
  g.v_dim = v.size(-1);
  if (!cfg.thd) {
    const int64_t lq = q.size(2), lk = k.size(2);
    for (int64_t b = 0; b < q.size(0); ++b) g.seqs.push_back({b, lq, b, lk});
    g.lq_max = lq;
    g.lk_max = lk;
  } else {
    const auto cq = read_cu_seqlens(*a.cu_seqlens_q, q.size(0), op, "cu_seqlens_q", "total_q");
    const auto ck = a.cu_seqlens_k.has_value()
                        ? read_cu_seqlens(*a.cu_seqlens_k, k.size(0), op, "cu_seqlens_k", "total_k")
                        : read_cu_seqlens(*a.cu_seqlens_q, k.size(0), op, "cu_seqlens_q",
                                          "total_k (cu_seqlens_k defaults to cu_seqlens_q)");
    for (size_t s = 0; s + 1 < cq.size(); ++s) {
      g.seqs.push_back({cq[s], cq[s + 1] - cq[s], ck[s], ck[s + 1] - ck[s]});
      g.lq_max = std::max(g.lq_max, cq[s + 1] - cq[s]);
      g.lk_max = std::max(g.lk_max, ck[s + 1] - ck[s]);
    }
    if (a.max_seqlen_q.has_value()) {
      POSENC_CHECK_ARG(*a.max_seqlen_q >= g.lq_max, op, "max_seqlen_q",
                       c10::str("must be >= the longest query sequence (", g.lq_max, ")"),
                       *a.max_seqlen_q);
    }
    if (a.max_seqlen_k.has_value()) {
      POSENC_CHECK_ARG(*a.max_seqlen_k >= g.lk_max, op, "max_seqlen_k",
                       c10::str("must be >= the longest key sequence (", g.lk_max, ")"),
                       *a.max_seqlen_k);
    }
  }
  return g;
}

// Finite parameter values (a NaN slope would poison whole rows far from its cause) and the
// KERPLE log kernel's r2 >= 0.
void check_values(const char* op, const Args& a, const AttentionConfig& cfg) {
  auto finite_all = [&](const char* arg, const at::Tensor& t) {
    if (t.numel() == 0) return;
    const bool ok = at::isfinite(t).all().item<bool>();
    if (ok) return;
    const auto flat = t.reshape(-1);
    const int64_t idx = at::logical_not(at::isfinite(flat)).nonzero().min().item<int64_t>();
    POSENC_CHECK_ARG(false, op, arg, "must be finite", arg, " element ", idx, " (flattened) = ",
                     flat[idx].item<double>());
  };
  switch (cfg.family) {
    case PositionFamily::ALiBi:
      detail::check_finite(op, "slopes", *a.slopes);
      break;
    case PositionFamily::T5:
      finite_all("table", *a.table);
      break;
    case PositionFamily::KERPLE:
      detail::check_finite(op, "r1", *a.r1);
      detail::check_finite(op, "r2", *a.r2);
      detail::check_kerple_r2_values(op, a.r2->contiguous(),
                                     cfg.kerple_log ? detail::KerpleKind::Log
                                                    : detail::KerpleKind::Power);
      break;
    case PositionFamily::RelScores:
      finite_all("rel_emb", *a.rel_emb);
      break;
    case PositionFamily::ForgettingGate:
      detail::check_log_fgate_values(op, "log_fgate", *a.log_fgate);
      break;
    default:
      break;
  }
}

// Forgetting gate, packed sequences: every query of sequence s at a key position of s.
void check_fgate_seqs(const char* op, const Geometry& g) {
  for (size_t s = 0; s < g.seqs.size(); ++s) {
    const Seq& sq = g.seqs[s];
    if (sq.q_len == 0) continue;
    POSENC_CHECK_ARG(g.base >= 0 && g.base + sq.q_len <= sq.k_len, op, "log_fgate",
                     "needs every query at a key position of its sequence (q_offset - k_offset "
                     ">= 0 and q_offset - k_offset + q_len <= k_len per sequence)",
                     "sequence ", s, " with q_len = ", sq.q_len, ", k_len = ", sq.k_len,
                     ", q_offset - k_offset = ", g.base);
  }
}

// Forgetting gate: fp64 inclusive prefix sums of the log gates per (sequence, head), laid out
// as Call::fgate_off says: bhsd (B, H, Lk); thd (H, Tk), restarting at each sequence start.
std::vector<double> fgate_prefix(const Geometry& g, const at::Tensor& log_fgate) {
  const auto x = g.thd ? log_fgate.to(at::kDouble).t().contiguous()
                       : log_fgate.to(at::kDouble).contiguous();
  const double* p = x.const_data_ptr<double>();
  std::vector<double> c(static_cast<size_t>(x.numel()));
  const int64_t n_seq = static_cast<int64_t>(g.seqs.size());
  const int64_t len = g.thd ? x.size(1) : g.lk_max;
  at::parallel_for(0, g.heads * n_seq, 1, [&](int64_t b, int64_t e) {
    for (int64_t u = b; u < e; ++u) {
      const int64_t h = u % g.heads, s = u / g.heads;
      const Seq& sq = g.seqs[s];
      const int64_t off = g.thd ? h * len + sq.k_start : (s * g.heads + h) * len;
      double acc = 0.0;
      for (int64_t t = 0; t < sq.k_len; ++t) {
        acc += p[off + t];
        c[off + t] = acc;
      }
    }
  });
  return c;
}

// ---- position terms ------------------------------------------------------------------------

// Toeplitz terms: lut[h * n_diag + t] = the bias of head h on diagonal t, in acc_t.
template <typename acc_t>
std::vector<acc_t> diagonal_values(const Geometry& g, const Args& a,
                                   const AttentionConfig& cfg) {
  const int64_t nd = g.n_diag(), H = g.heads;
  std::vector<acc_t> lut(static_cast<size_t>(std::max<int64_t>(H * nd, 0)));
  if (nd <= 0 || H == 0) return lut;
  const int64_t d0 = g.dist0();
  if (cfg.family == PositionFamily::ALiBi) {
    const auto s = a.slopes->to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    const acc_t* sp = s.template const_data_ptr<acc_t>();
    at::parallel_for(0, H * nd, 4096, [&](int64_t b, int64_t e) {
      for (int64_t x = b; x < e; ++x) {
        lut[x] = detail::alibi_term_value<acc_t>(sp[x / nd], d0 - x % nd, cfg.symmetric);
      }
    });
  } else if (cfg.family == PositionFamily::KERPLE) {
    const auto dt = c10::CppTypeToScalarType<acc_t>::value;
    const auto r1 = a.r1->to(dt).contiguous(), r2 = a.r2->to(dt).contiguous();
    const acc_t* p1 = r1.template const_data_ptr<acc_t>();
    const acc_t* p2 = r2.template const_data_ptr<acc_t>();
    at::parallel_for(0, H * nd, 1024, [&](int64_t b, int64_t e) {
      for (int64_t x = b; x < e; ++x) {
        const int64_t h = x / nd;
        const int64_t dist = detail::kerple_term_distance(d0 - x % nd, cfg.symmetric);
        lut[x] = detail::kerple_term_value<acc_t>(cfg.kerple_log, p1[h], p2[h], dist);
      }
    });
  } else if (cfg.family == PositionFamily::T5) {
    const auto tab = a.table->to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    const acc_t* tp = tab.template const_data_ptr<acc_t>();
    const int64_t nb = tab.size(0);
    std::vector<int64_t> bucket(nd);
    at::parallel_for(0, nd, 4096, [&](int64_t b, int64_t e) {
      for (int64_t t = b; t < e; ++t) {
        bucket[t] = detail::t5_term_bucket(d0 - t, cfg.symmetric, nb, cfg.max_distance);
      }
    });
    for (int64_t h = 0; h < H; ++h) {
      for (int64_t t = 0; t < nd; ++t) lut[h * nd + t] = tp[bucket[t] * H + h];
    }
  }
  return lut;
}

// Relative scores: the rows of R that the call reaches, reversed. Window index w = c - d holds
// R[h, c + d] (d clipped to [-M, M]); w runs over [w_lo, w_hi], and query i's keys j, j + 1
// read w, w + 1: a tile row's values are a contiguous run of a GEMM with the window.
struct RelWindow {
  int64_t c = 0, m = 0, w_lo = 0, w_hi = -1;
  int64_t rows() const { return w_hi - w_lo + 1; }
  // Some pair has d >= M (d <= -M); never for an empty window (no queries or no keys).
  bool has_top(const Geometry& g) const { return rows() > 0 && g.d_max() >= m; }
  bool has_bottom(const Geometry& g) const { return rows() > 0 && g.d_min() <= -m; }
  int64_t top() const { return c - m; }     // w of R[c + M]
  int64_t bottom() const { return c + m; }  // w of R[c - M]
};

RelWindow rel_window(const Geometry& g, int64_t rows, int64_t max_distance) {
  RelWindow w;
  w.c = (rows - 1) / 2;
  w.m = max_distance;
  if (g.lq_max == 0 || g.lk_max == 0) return w;
  w.w_lo = w.c - std::min(w.m, std::max(g.d_max(), -w.m));
  w.w_hi = w.c - std::max(-w.m, std::min(g.d_min(), w.m));
  return w;
}

// rrev[(h * rows + (w - w_lo)) * dim + e] = R[h, 2c - w, e] in acc_t.
template <typename acc_t, typename scalar_t>
std::vector<acc_t> reversed_window(const at::Tensor& rel_emb, const RelWindow& w, int64_t heads,
                                   int64_t dim) {
  const int64_t n = w.rows();
  std::vector<acc_t> out(static_cast<size_t>(std::max<int64_t>(heads * n * dim, 0)));
  if (n <= 0) return out;
  const auto e = rel_emb.contiguous();
  const scalar_t* ep = e.const_data_ptr<scalar_t>();
  const int64_t R = e.size(1);
  at::parallel_for(0, heads * n, 64, [&](int64_t b, int64_t en) {
    for (int64_t x = b; x < en; ++x) {
      const int64_t h = x / n, wi = x % n;
      const scalar_t* src = ep + (h * R + (2 * w.c - (w.w_lo + wi))) * dim;
      acc_t* dst = out.data() + x * dim;
      for (int64_t k = 0; k < dim; ++k) dst[k] = static_cast<acc_t>(src[k]);
    }
  });
  return out;
}

// Column runs of one tile row of the relative term: [0, j1) read R[c + M], [j1, j2) the window
// at w = w0 + col, [j2, cols) read R[c - M]. e = distance of the row's first column.
struct RelRun {
  int64_t j1, j2, w0;
};

inline RelRun rel_run(int64_t e, int64_t cols, const RelWindow& w) {
  const auto span = detail::rel_pos_span(e, cols, w.m);
  return {span.j1, span.j2, w.c - e};
}

// ---- tile helpers --------------------------------------------------------------------------

// Rows of a strided (possibly half precision) matrix as a dense acc_t block: a pointer into
// the input when it already is acc_t, else a converted copy in `buf`. Returns (ptr, ld).
template <typename acc_t, typename scalar_t>
std::pair<const acc_t*, int64_t> block(const scalar_t* src, int64_t ld, int64_t rows,
                                       int64_t cols, acc_t* buf) {
  if constexpr (std::is_same_v<acc_t, scalar_t>) {
    return {src, ld};
  } else {
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t c = 0; c < cols; ++c) buf[r * cols + c] = static_cast<acc_t>(src[r * ld + c]);
    }
    return {buf, cols};
  }
}

template <typename scalar_t, typename acc_t>
void store_row(scalar_t* dst, const acc_t* src, int64_t n, acc_t mul) {
  for (int64_t e = 0; e < n; ++e) dst[e] = static_cast<scalar_t>(src[e] * mul);
}

// Runs fn(worker_state, task) for every task in `order`, each thread pulling the next task
// from a shared counter (causal tasks differ in cost; contiguous static chunks would leave one
// thread with most of the work). make_state() builds one worker's scratch. Each task's
// result depends only on the task, never on the thread that ran it.
template <typename MakeState, typename Fn>
void run_tasks(const std::vector<int64_t>& order, MakeState make_state, Fn fn) {
  const int64_t n = static_cast<int64_t>(order.size());
  if (n == 0) return;
  std::atomic<int64_t> next{0};
  const int64_t workers = std::min<int64_t>(n, at::get_num_threads());
  at::parallel_for(0, workers, 1, [&](int64_t b, int64_t e) {
    for (int64_t w = b; w < e; ++w) {
      (void)w;
      auto state = make_state();
      for (int64_t i = next.fetch_add(1); i < n; i = next.fetch_add(1)) fn(state, order[i]);
    }
  });
}

// Task ids 0..n-1 ordered by decreasing cost (ties keep id order): longest first.
std::vector<int64_t> longest_first(const std::vector<int64_t>& cost) {
  std::vector<int64_t> order(cost.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int64_t>(i);
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return cost[a] > cost[b]; });
  return order;
}

struct BlockSizes {
  int64_t q, k;
};

// Query blocks amortise the GEMM calls; key blocks keep a (q, k) tile of scores in L2. The
// relative term's window is q + k - 1 rows, so it uses shorter query blocks.
BlockSizes forward_blocks(int64_t lq, int64_t lk, PositionFamily f) {
  int64_t bq = lq >= 768 ? 128 : (lq >= 192 ? 64 : 32);
  if (f == PositionFamily::RelScores) bq = std::min<int64_t>(bq, 64);
  return {std::max<int64_t>(1, std::min(bq, lq)), std::max<int64_t>(1, std::min<int64_t>(512, lk))};
}

BlockSizes backward_blocks(int64_t lq, int64_t lk, PositionFamily f) {
  const int64_t bq = lq >= 192 ? 64 : 32;
  const int64_t bk = f == PositionFamily::RelScores ? 128 : 256;
  return {std::max<int64_t>(1, std::min(bq, lq)), std::max<int64_t>(1, std::min(bk, lk))};
}

// Shared read-only state of one call.
template <typename scalar_t, typename acc_t>
struct Call {
  const Geometry& g;
  const AttentionConfig& cfg;
  acc_t scale;
  const scalar_t* q = nullptr;
  const scalar_t* k = nullptr;
  const scalar_t* v = nullptr;
  const scalar_t* q_rel = nullptr;
  Rows q_rows{}, k_rows{}, v_rows{}, q_rel_rows{};
  const bool* kpm = nullptr;  // (B, Lk) key padding mask, true = ignored
  int64_t kpm_stride = 0;
  const acc_t* lut = nullptr;   // Toeplitz values per (head, diagonal)
  const acc_t* rrev = nullptr;  // relative term: reversed window per head
  const double* fc = nullptr;   // forgetting gate: prefix sums (fgate_prefix)
  int64_t fc_len = 0;           // bhsd: Lk; thd: Tk
  RelWindow win{};
  bool fgate() const { return cfg.family == PositionFamily::ForgettingGate; }
  // Start of sequence sq's (head h) run of prefix sums (bhsd: sq.k_start is the batch index).
  int64_t fgate_off(const Seq& sq, int64_t h) const {
    return g.thd ? h * fc_len + sq.k_start : (sq.k_start * g.heads + h) * fc_len;
  }
  bool toeplitz() const {
    return cfg.family == PositionFamily::ALiBi || cfg.family == PositionFamily::T5 ||
           cfg.family == PositionFamily::KERPLE;
  }
  bool rel() const { return cfg.family == PositionFamily::RelScores; }
  const acc_t* rrev_row(int64_t h, int64_t w) const {
    return rrev + (h * win.rows() + (w - win.w_lo)) * g.dim;
  }
};

// Keys a tile row may see: [0, n) of the block starting at j0 (causal), all otherwise.
inline int64_t causal_cols(const Geometry& g, int64_t i, int64_t j0, int64_t cols) {
  if (!g.causal) return cols;
  return std::clamp<int64_t>(g.base + i + 1 - j0, 0, cols);
}

// End of the keys a block of query rows [i0, i0 + rows) may see: under the causal mask the
// keys past the block's last allowed one are masked for every row and skipped.
inline int64_t block_k_end(const Geometry& g, const Seq& sq, int64_t i0, int64_t rows) {
  return g.causal ? std::clamp<int64_t>(g.base + i0 + rows, 0, sq.k_len) : sq.k_len;
}

// The score tile: s = scale * q k^T + P, masked entries -inf. s is (rows, cols) with ld ldS.
// For the relative term, `trel` receives q_rel @ window^T for the tile's window.
template <typename scalar_t, typename acc_t>
void score_tile(const Call<scalar_t, acc_t>& C, const Seq& sq, int64_t h, int64_t i0,
                int64_t rows, int64_t j0, int64_t cols, const acc_t* qb, int64_t ldq,
                const acc_t* kb, int64_t ldk, const acc_t* qrb, int64_t ldqr, const acc_t* top,
                const acc_t* bottom, acc_t* s, int64_t lds, acc_t* trel, int64_t* n_valid) {
  const Geometry& g = C.g;
  cpu::gemm(false, true, rows, cols, g.dim, acc_t(1), qb, ldq, kb, ldk, acc_t(0), s, lds);
  // The relative term's window for this tile: union of the rows' unclipped runs.
  int64_t wa = std::numeric_limits<int64_t>::max(), wb = std::numeric_limits<int64_t>::min();
  if (C.rel()) {
    for (int64_t r = 0; r < rows; ++r) {
      const auto run = rel_run(g.base + i0 + r - j0, cols, C.win);
      if (run.j2 > run.j1) {
        wa = std::min(wa, run.w0 + run.j1);
        wb = std::max(wb, run.w0 + run.j2 - 1);
      }
    }
    if (wb >= wa) {
      cpu::gemm(false, true, rows, wb - wa + 1, g.dim, acc_t(1), qrb, ldqr, C.rrev_row(h, wa),
                g.dim, acc_t(0), trel, wb - wa + 1);
    }
  }
  const acc_t ninf = -std::numeric_limits<acc_t>::infinity();
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t i = i0 + r;
    acc_t* srow = s + r * lds;
    const int64_t n = causal_cols(g, i, j0, cols);
    n_valid[r] = n;
    const acc_t* bias =
        C.toeplitz() ? C.lut + h * g.n_diag() + (j0 - i + g.lq_max - 1) : nullptr;
    if (C.fgate() && n > 0) {
      // c[t_q] - c[j] for the row's allowed keys (n <= t_q - j0 + 1 under the causal mask).
      const double* cr = C.fc + C.fgate_off(sq, h);
      const double cq = cr[detail::fgate_term_query_index(g.base, i)];
      for (int64_t c = 0; c < n; ++c) trel[c] = detail::fgate_term_value<acc_t>(cq, cr[j0 + c]);
      bias = trel;
    }
    cpu::scale_add(srow, bias, n, C.scale);
    if (C.rel()) {
      const auto run = rel_run(g.base + i - j0, cols, C.win);
      const int64_t j1 = std::min(run.j1, n), j2 = std::min(run.j2, n);
      for (int64_t c = 0; c < j1; ++c) srow[c] += top[r];
      if (j2 > j1) {
        const acc_t* t = trel + r * (wb - wa + 1) + (run.w0 - wa);
        for (int64_t c = j1; c < j2; ++c) srow[c] += t[c];
      }
      for (int64_t c = std::max(j2, j1); c < n; ++c) srow[c] += bottom[r];
    }
    if (C.kpm != nullptr) {
      const bool* pad = C.kpm + sq.q_start * C.kpm_stride + j0;
      for (int64_t c = 0; c < n; ++c) srow[c] = pad[c] ? ninf : srow[c];
    }
    for (int64_t c = n; c < cols; ++c) srow[c] = ninf;
  }
}

// q_rel . R[c + M] and q_rel . R[c - M] per query row (keys clipped on either side).
template <typename scalar_t, typename acc_t>
void clipped_values(const Call<scalar_t, acc_t>& C, int64_t h, int64_t rows, const acc_t* qrb,
                    int64_t ldqr, acc_t* top, acc_t* bottom) {
  const Geometry& g = C.g;
  for (int64_t r = 0; r < rows; ++r) {
    top[r] = C.win.has_top(g) ? cpu::dot(qrb + r * ldqr, C.rrev_row(h, C.win.top()), g.dim) : 0;
    bottom[r] =
        C.win.has_bottom(g) ? cpu::dot(qrb + r * ldqr, C.rrev_row(h, C.win.bottom()), g.dim) : 0;
  }
}

// ---- forward ---------------------------------------------------------------------------------

template <typename scalar_t, typename acc_t>
void forward_impl(const Call<scalar_t, acc_t>& C, scalar_t* out, acc_t* lse, const Rows& out_rows,
                  const Rows& lse_rows) {
  const Geometry& g = C.g;
  const BlockSizes bs = forward_blocks(g.lq_max, g.lk_max, C.cfg.family);
  // Work items (sequence, query block) x heads.
  std::vector<std::pair<int64_t, int64_t>> items;
  for (int64_t s = 0; s < static_cast<int64_t>(g.seqs.size()); ++s) {
    for (int64_t i0 = 0; i0 < g.seqs[s].q_len; i0 += bs.q) items.push_back({s, i0});
  }
  const int64_t n_items = static_cast<int64_t>(items.size());
  const int64_t D = g.dim, Dv = g.v_dim;
  const int64_t w_max = bs.q + bs.k - 1;
  // Cost of a task: the keys its query block reaches.
  std::vector<int64_t> cost(n_items * g.heads);
  for (int64_t t = 0; t < n_items * g.heads; ++t) {
    const auto [s, i0] = items[t / g.heads];
    const Seq& sq = g.seqs[s];
    const int64_t rows = std::min(bs.q, sq.q_len - i0);
    cost[t] = rows * (g.causal ? std::clamp<int64_t>(g.base + i0 + rows, 0, sq.k_len) : sq.k_len);
  }
  struct Worker {
    Scratch<acc_t> S, O, qbuf, qrbuf, kbuf, vbuf, trel;
    std::vector<acc_t> m, l, top, bottom;
    std::vector<int64_t> n_valid;
  };
  auto make_worker = [&] {
    return Worker{Scratch<acc_t>(bs.q * bs.k), Scratch<acc_t>(bs.q * std::max<int64_t>(Dv, 1)),
                  Scratch<acc_t>(bs.q * D), Scratch<acc_t>(bs.q * D), Scratch<acc_t>(bs.k * D),
                  Scratch<acc_t>(bs.k * Dv),
                  Scratch<acc_t>(C.rel() ? bs.q * w_max : (C.fgate() ? bs.k : 0)),
                  std::vector<acc_t>(bs.q), std::vector<acc_t>(bs.q), std::vector<acc_t>(bs.q),
                  std::vector<acc_t>(bs.q), std::vector<int64_t>(bs.q)};
  };
  run_tasks(longest_first(cost), make_worker, [&](Worker& W, int64_t task) {
      auto& [S, O, qbuf, qrbuf, kbuf, vbuf, trel, m, l, top, bottom, n_valid] = W;
      const auto [s, i0] = items[task / g.heads];
      const int64_t h = task % g.heads, hk = h / g.group;
      const Seq& sq = g.seqs[s];
      const int64_t rows = std::min(bs.q, sq.q_len - i0);
      const auto [qb, ldq] = block<acc_t>(C.q + C.q_rows.at(sq.q_start, h, i0),
                                          C.q_rows.row_stride, rows, D, qbuf.data());
      const acc_t* qrb = nullptr;
      int64_t ldqr = 0;
      if (C.rel()) {
        std::tie(qrb, ldqr) = block<acc_t>(C.q_rel + C.q_rel_rows.at(sq.q_start, h, i0),
                                           C.q_rel_rows.row_stride, rows, D, qrbuf.data());
        clipped_values(C, h, rows, qrb, ldqr, top.data(), bottom.data());
      }
      std::fill(m.begin(), m.end(), -std::numeric_limits<acc_t>::infinity());
      std::fill(l.begin(), l.end(), acc_t(0));
      std::fill(O.data(), O.data() + rows * Dv, acc_t(0));
      const int64_t k_end = block_k_end(g, sq, i0, rows);
      for (int64_t j0 = 0; j0 < k_end; j0 += bs.k) {
        const int64_t cols = std::min(bs.k, k_end - j0);
        const auto [kb, ldk] = block<acc_t>(C.k + C.k_rows.at(sq.k_start, hk, j0),
                                            C.k_rows.row_stride, cols, D, kbuf.data());
        score_tile(C, sq, h, i0, rows, j0, cols, qb, ldq, kb, ldk, qrb, ldqr, top.data(),
                   bottom.data(), S.data(), bs.k, trel.data(), n_valid.data());
        for (int64_t r = 0; r < rows; ++r) {
          acc_t* srow = S.data() + r * bs.k;
          const acc_t mx = cpu::max_of(srow, cols);
          const acc_t m_new = std::isnan(mx) ? mx : std::max(m[r], mx);
          if (m_new == -std::numeric_limits<acc_t>::infinity()) {
            std::fill(srow, srow + cols, acc_t(0));  // every key so far masked
            continue;
          }
          const acc_t sum = cpu::exp_shift_sum(srow, cols, m_new);
          const acc_t alpha = std::exp(m[r] - m_new);  // 0 when m[r] = -inf
          if (alpha != acc_t(1)) cpu::scale(O.data() + r * Dv, Dv, alpha);
          l[r] = l[r] * alpha + sum;
          m[r] = m_new;
        }
        const auto [vb, ldv] = block<acc_t>(C.v + C.v_rows.at(sq.k_start, hk, j0),
                                            C.v_rows.row_stride, cols, Dv, vbuf.data());
        cpu::gemm(false, false, rows, Dv, cols, acc_t(1), S.data(), bs.k, vb, ldv, acc_t(1),
                  O.data(), Dv);
      }
      for (int64_t r = 0; r < rows; ++r) {
        scalar_t* orow = out + out_rows.at(sq.q_start, h, i0 + r);
        acc_t* lrow = lse + lse_rows.at(sq.q_start, h, i0 + r);
        // A row saw an unmasked key iff its running max left -inf (l >= 1 then, unless a NaN
        // or inf score made it NaN: that propagates to out and lse, as in SDPA).
        if (m[r] != -std::numeric_limits<acc_t>::infinity()) {
          store_row(orow, O.data() + r * Dv, Dv, acc_t(1) / l[r]);
          *lrow = m[r] + std::log(l[r]);
        } else {  // every key masked: zeros, and lse = log(0)
          std::fill(orow, orow + Dv, scalar_t(0));
          *lrow = -std::numeric_limits<acc_t>::infinity();
        }
      }
  });
}

// The inputs as the kernels read them, and the scale.
struct Inputs {
  at::Tensor q, k, v, q_rel, kpm;
  double scale = 1.0;
};

Inputs prepare_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                      const Args& a, const AttentionConfig& cfg, const Geometry& g) {
  Inputs in;
  in.q = gemm_ready(q, cfg.thd);
  in.k = gemm_ready(k, cfg.thd);
  in.v = gemm_ready(v, cfg.thd);
  if (cfg.family == PositionFamily::RelScores) {
    in.q_rel = a.q_rel.has_value() ? gemm_ready(*a.q_rel, cfg.thd) : in.q;
  }
  if (a.key_padding_mask.has_value()) in.kpm = a.key_padding_mask->contiguous();
  in.scale = a.scale.value_or(g.dim > 0 ? 1.0 / std::sqrt(static_cast<double>(g.dim)) : 1.0);
  return in;
}

// The call's shared state; `lut` / `rrev` receive the position term's tables.
template <typename scalar_t, typename acc_t>
Call<scalar_t, acc_t> make_call(const Geometry& g, const AttentionConfig& cfg, const Args& a,
                                const Inputs& in, std::vector<acc_t>& lut,
                                std::vector<acc_t>& rrev, std::vector<double>& fpre) {
  Call<scalar_t, acc_t> C{g, cfg, static_cast<acc_t>(in.scale)};
  C.q = in.q.const_data_ptr<scalar_t>();
  C.k = in.k.const_data_ptr<scalar_t>();
  C.v = in.v.const_data_ptr<scalar_t>();
  C.q_rows = rows_of(in.q, cfg.thd);
  C.k_rows = rows_of(in.k, cfg.thd);
  C.v_rows = rows_of(in.v, cfg.thd);
  if (in.q_rel.defined()) {
    C.q_rel = in.q_rel.const_data_ptr<scalar_t>();
    C.q_rel_rows = rows_of(in.q_rel, cfg.thd);
  }
  if (in.kpm.defined()) {
    C.kpm = in.kpm.const_data_ptr<bool>();
    C.kpm_stride = in.kpm.size(1);
  }
  if (cfg.family == PositionFamily::RelScores) {
    C.win = rel_window(g, a.rel_emb->size(1), cfg.max_distance);
    rrev = reversed_window<acc_t, scalar_t>(*a.rel_emb, C.win, g.heads, g.dim);
  } else if (cfg.family == PositionFamily::ForgettingGate) {
    fpre = fgate_prefix(g, *a.log_fgate);
    C.fc = fpre.data();
    C.fc_len = g.thd ? in.k.size(0) : g.lk_max;
  } else if (cfg.family != PositionFamily::None) {
    lut = diagonal_values<acc_t>(g, a, cfg);
  }
  C.lut = lut.data();
  C.rrev = rrev.data();
  return C;
}

// lse (B, H, Lq), or (H, Tq) for packed sequences, addressed like the other tensors.
Rows lse_rows_of(const at::Tensor& lse, bool thd) {
  return thd ? Rows{1, lse.stride(0), 1} : Rows{lse.stride(0), lse.stride(1), 1};
}

std::tuple<at::Tensor, at::Tensor> run_forward(const at::Tensor& q_in, const at::Tensor& k_in,
                                               const at::Tensor& v_in, const Args& a) {
  const AttentionConfig cfg = detail::check_relative_attention(kOp, q_in, k_in, v_in, a);
  const Geometry g = make_geometry(kOp, q_in, k_in, v_in, a, cfg);
  check_values(kOp, a, cfg);
  if (cfg.family == PositionFamily::ForgettingGate && cfg.thd) check_fgate_seqs(kOp, g);
  const auto acc_type = detail::attention_acc_type(q_in.scalar_type());
  auto out = at::empty_symint(detail::attention_out_sizes(q_in, v_in), q_in.options());
  auto lse = at::empty_symint(detail::attention_lse_sizes(q_in, cfg.thd),
                              q_in.options().dtype(acc_type));
  if (lse.numel() == 0) return {out, lse};  // no queries
  const Inputs in = prepare_inputs(q_in, k_in, v_in, a, cfg, g);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.q.scalar_type(), "relative_attention_cpu", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    std::vector<acc_t> lut, rrev;
    std::vector<double> fpre;
    const auto C = make_call<scalar_t, acc_t>(g, cfg, a, in, lut, rrev, fpre);
    forward_impl(C, out.mutable_data_ptr<scalar_t>(), lse.mutable_data_ptr<acc_t>(),
                 rows_of(out, cfg.thd), lse_rows_of(lse, cfg.thd));
  });
  return {out, lse};
}

// ---- backward --------------------------------------------------------------------------------

// Per-sequence slabs of the backward's position-gradient scratch. A packed batch of many short
// sequences must not pay n_seqs * (the longest sequence's) scratch: sequence s keeps only its
// own diagonals t in [lq_max - q_len, lq_max + k_len - 2] and its own window rows.
struct SeqSlabs {
  std::vector<int64_t> diag_off, diag_lo, diag_n;  // per sequence; offsets are per head
  std::vector<int64_t> win_off, win_lo, win_rows;
  int64_t diag_total = 0, win_total = 0;            // per head
};

SeqSlabs seq_slabs(const Geometry& g, const RelWindow* win) {
  SeqSlabs S;
  for (const Seq& sq : g.seqs) {
    const bool any = sq.q_len > 0 && sq.k_len > 0;
    S.diag_off.push_back(S.diag_total);
    S.diag_lo.push_back(g.lq_max - sq.q_len);
    S.diag_n.push_back(any ? sq.q_len + sq.k_len - 1 : 0);
    S.diag_total += S.diag_n.back();
    int64_t lo = 0, rows = 0;
    if (win != nullptr && any && win->rows() > 0) {
      const int64_t d_max = g.base + sq.q_len - 1, d_min = g.base - (sq.k_len - 1);
      lo = win->c - std::min(win->m, std::max(d_max, -win->m));
      rows = win->c - std::max(-win->m, std::min(d_min, win->m)) - lo + 1;
    }
    S.win_off.push_back(S.win_total);
    S.win_lo.push_back(lo);
    S.win_rows.push_back(rows);
    S.win_total += rows;
  }
  return S;
}

template <typename scalar_t, typename acc_t>
struct BackwardBuffers {
  // Per task (sequence, head): gradient sums along the sequence's diagonals (Toeplitz terms)
  // or the window gradient of R (relative term), reduced over sequences afterwards. Task
  // (s, h) owns diag[(h * diag_total + diag_off[s]) ...] and the matching rwin rows.
  SeqSlabs slabs;
  std::vector<double> diag;  // heads * diag_total
  std::vector<acc_t> rwin;   // heads * win_total * dim
  // Forgetting gate: per task, dS summed along query t_q's row (at index t_q) and along each
  // key column, laid out as the prefix sums (Call::fgate_off).
  std::vector<double> frow, fcol;
  // dK, dV in acc_t: per q head (grouped-query attention, or half precision inputs).
  std::vector<acc_t> dk, dv;
  bool dkv_direct = false;  // fp32/fp64 without groups: dK/dV accumulate in the outputs
};

template <typename scalar_t, typename acc_t>
void backward_impl(const Call<scalar_t, acc_t>& C, const scalar_t* out, const scalar_t* dout,
                   const Rows& out_rows, const acc_t* lse, const acc_t* glse, const Rows& lse_rows,
                   scalar_t* dq, scalar_t* dq_rel, const Rows& dq_rows, scalar_t* dk_out,
                   scalar_t* dv_out, const Rows& dk_rows, const Rows& dv_rows,
                   BackwardBuffers<scalar_t, acc_t>& B) {
  const Geometry& g = C.g;
  const BlockSizes bs = backward_blocks(g.lq_max, g.lk_max, C.cfg.family);
  const int64_t D = g.dim, Dv = g.v_dim;
  const int64_t n_tasks = static_cast<int64_t>(g.seqs.size()) * g.heads;
  const int64_t w_max = bs.q + bs.k - 1;
  const bool rel_into_q = C.rel() && dq_rel == nullptr;  // Shaw: q_rel is q itself
  std::vector<int64_t> cost(n_tasks);
  for (int64_t t = 0; t < n_tasks; ++t) {
    const Seq& sq = g.seqs[t / g.heads];
    cost[t] = sq.q_len * sq.k_len;
  }
  struct Worker {
    Scratch<acc_t> P, dP, qbuf, qrbuf, dobuf, kbuf, vbuf, dqa, dqra, trel, dwin;
    std::vector<acc_t> lse_r, dvec, top, bottom, s_top, s_bot;
    std::vector<int64_t> n_valid;
  };
  auto make_worker = [&] {
    auto v = [&](int64_t n) { return std::vector<acc_t>(n); };
    return Worker{Scratch<acc_t>(bs.q * bs.k), Scratch<acc_t>(bs.q * bs.k),
                  Scratch<acc_t>(bs.q * D), Scratch<acc_t>(bs.q * D),
                  Scratch<acc_t>(bs.q * std::max<int64_t>(Dv, 1)), Scratch<acc_t>(bs.k * D),
                  Scratch<acc_t>(bs.k * Dv), Scratch<acc_t>(bs.q * D), Scratch<acc_t>(bs.q * D),
                  Scratch<acc_t>(C.rel() ? bs.q * w_max : (C.fgate() ? bs.k : 0)),
                  Scratch<acc_t>(C.rel() ? w_max * D : 0),
                  v(bs.q), v(bs.q), v(bs.q), v(bs.q), v(bs.q), v(bs.q),
                  std::vector<int64_t>(bs.q)};
  };
  run_tasks(longest_first(cost), make_worker, [&](Worker& W, int64_t task) {
      auto& [P, dP, qbuf, qrbuf, dobuf, kbuf, vbuf, dqa, dqra, trel, dwin, lse_r, dvec, top,
             bottom, s_top, s_bot, n_valid] = W;
      const int64_t s = task / g.heads, h = task % g.heads, hk = h / g.group;
      const Seq& sq = g.seqs[s];
      // Where this task's dK/dV rows accumulate (acc_t), and their row stride.
      acc_t* dk_acc;
      acc_t* dv_acc;
      int64_t ldk_acc, ldv_acc;
      if (B.dkv_direct) {
        dk_acc = reinterpret_cast<acc_t*>(dk_out) + dk_rows.at(sq.k_start, hk, 0);
        dv_acc = reinterpret_cast<acc_t*>(dv_out) + dv_rows.at(sq.k_start, hk, 0);
        ldk_acc = dk_rows.row_stride;
        ldv_acc = dv_rows.row_stride;
      } else {
        // Per-task slab: sequence s's keys of q head h, rows contiguous.
        dk_acc = B.dk.data() + (g.thd ? (sq.k_start * g.heads + h * sq.k_len) : task * g.lk_max) * D;
        dv_acc = B.dv.data() + (g.thd ? (sq.k_start * g.heads + h * sq.k_len) : task * g.lk_max) * Dv;
        ldk_acc = D;
        ldv_acc = Dv;
        std::fill(dk_acc, dk_acc + sq.k_len * D, acc_t(0));
        std::fill(dv_acc, dv_acc + sq.k_len * Dv, acc_t(0));
      }
      const SeqSlabs& S = B.slabs;
      double* diag =
          C.toeplitz() ? B.diag.data() + h * S.diag_total + S.diag_off[s] : nullptr;
      acc_t* rwin = C.rel() ? B.rwin.data() + (h * S.win_total + S.win_off[s]) * D : nullptr;
      double* frow = C.fgate() ? B.frow.data() + C.fgate_off(sq, h) : nullptr;
      double* fcol = C.fgate() ? B.fcol.data() + C.fgate_off(sq, h) : nullptr;
      const int64_t w_lo = S.win_lo[s];
      for (int64_t i0 = 0; i0 < sq.q_len; i0 += bs.q) {
        const int64_t rows = std::min(bs.q, sq.q_len - i0);
        const auto [qb, ldq] = block<acc_t>(C.q + C.q_rows.at(sq.q_start, h, i0),
                                            C.q_rows.row_stride, rows, D, qbuf.data());
        const auto [dob, lddo] = block<acc_t>(dout + out_rows.at(sq.q_start, h, i0),
                                              out_rows.row_stride, rows, Dv, dobuf.data());
        const acc_t* qrb = nullptr;
        int64_t ldqr = 0;
        if (C.rel()) {
          std::tie(qrb, ldqr) = block<acc_t>(C.q_rel + C.q_rel_rows.at(sq.q_start, h, i0),
                                             C.q_rel_rows.row_stride, rows, D, qrbuf.data());
          clipped_values(C, h, rows, qrb, ldqr, top.data(), bottom.data());
          std::fill(s_top.begin(), s_top.end(), acc_t(0));
          std::fill(s_bot.begin(), s_bot.end(), acc_t(0));
          std::fill(dqra.data(), dqra.data() + rows * D, acc_t(0));
        }
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t lo = lse_rows.at(sq.q_start, h, i0 + r);
          lse_r[r] = lse[lo];
          const scalar_t* orow = out + out_rows.at(sq.q_start, h, i0 + r);
          acc_t d = 0;
          for (int64_t e = 0; e < Dv; ++e) d += static_cast<acc_t>(orow[e]) * dob[r * lddo + e];
          dvec[r] = d - (glse != nullptr ? glse[lo] : acc_t(0));
        }
        std::fill(dqa.data(), dqa.data() + rows * D, acc_t(0));
        const int64_t k_end = block_k_end(g, sq, i0, rows);
        for (int64_t j0 = 0; j0 < k_end; j0 += bs.k) {
          const int64_t cols = std::min(bs.k, k_end - j0);
          const auto [kb, ldk] = block<acc_t>(C.k + C.k_rows.at(sq.k_start, hk, j0),
                                              C.k_rows.row_stride, cols, D, kbuf.data());
          const auto [vb, ldv] = block<acc_t>(C.v + C.v_rows.at(sq.k_start, hk, j0),
                                              C.v_rows.row_stride, cols, Dv, vbuf.data());
          score_tile(C, sq, h, i0, rows, j0, cols, qb, ldq, kb, ldk, qrb, ldqr, top.data(),
                     bottom.data(), P.data(), bs.k, trel.data(), n_valid.data());
          for (int64_t r = 0; r < rows; ++r) {
            acc_t* prow = P.data() + r * bs.k;
            if (lse_r[r] == -std::numeric_limits<acc_t>::infinity()) {
              std::fill(prow, prow + cols, acc_t(0));  // fully masked row: no gradient
            } else {
              cpu::exp_shift(prow, cols, lse_r[r]);
            }
          }
          // dV += P^T dO ; dP = dO v^T
          cpu::gemm(true, false, cols, Dv, rows, acc_t(1), P.data(), bs.k, dob, lddo, acc_t(1),
                    dv_acc + j0 * ldv_acc, ldv_acc);
          cpu::gemm(false, true, rows, cols, Dv, acc_t(1), dob, lddo, vb, ldv, acc_t(0),
                    dP.data(), bs.k);
          for (int64_t r = 0; r < rows; ++r) {
            acc_t* ds = P.data() + r * bs.k;  // P becomes dS in place
            cpu::softmax_grad(ds, dP.data() + r * bs.k, cols, dvec[r]);
            if (diag != nullptr) {
              // diagonal j - i + lq_max - 1, relative to the slab's first (lq_max - q_len)
              cpu::accumulate(diag + (j0 - (i0 + r) + sq.q_len - 1), ds, cols);
            }
            if (frow != nullptr) {  // masked entries of dS are 0
              frow[detail::fgate_term_query_index(g.base, i0 + r)] += cpu::sum_of(ds, cols);
              cpu::accumulate(fcol + j0, ds, cols);
            }
          }
          if (C.rel()) {
            // dS in the window layout (zeros where clipped), sums of the clipped runs.
            int64_t wa = std::numeric_limits<int64_t>::max(), wb = std::numeric_limits<int64_t>::min();
            for (int64_t r = 0; r < rows; ++r) {
              const auto run = rel_run(g.base + i0 + r - j0, cols, C.win);
              if (run.j2 > run.j1) {
                wa = std::min(wa, run.w0 + run.j1);
                wb = std::max(wb, run.w0 + run.j2 - 1);
              }
            }
            const int64_t W = wb >= wa ? wb - wa + 1 : 0;
            if (W > 0) std::fill(trel.data(), trel.data() + rows * W, acc_t(0));
            for (int64_t r = 0; r < rows; ++r) {
              const acc_t* ds = P.data() + r * bs.k;
              const auto run = rel_run(g.base + i0 + r - j0, cols, C.win);
              s_top[r] += cpu::sum_of(ds, run.j1);
              s_bot[r] += cpu::sum_of(ds + std::max(run.j2, run.j1), cols - std::max(run.j2, run.j1));
              if (run.j2 > run.j1) {
                std::copy(ds + run.j1, ds + run.j2, trel.data() + r * W + (run.w0 + run.j1 - wa));
              }
            }
            if (W > 0) {
              // dq_rel += dT window ; dR_window += dT^T q_rel
              cpu::gemm(false, false, rows, D, W, acc_t(1), trel.data(), W, C.rrev_row(h, wa), D,
                        acc_t(1), dqra.data(), D);
              cpu::gemm(true, false, W, D, rows, acc_t(1), trel.data(), W, qrb, ldqr, acc_t(0),
                        dwin.data(), D);
              acc_t* dst = rwin + (wa - w_lo) * D;
              for (int64_t x = 0; x < W * D; ++x) dst[x] += dwin.data()[x];
            }
          }
          // dQ += scale dS k ; dK += scale dS^T q
          cpu::gemm(false, false, rows, D, cols, C.scale, P.data(), bs.k, kb, ldk, acc_t(1),
                    dqa.data(), D);
          cpu::gemm(true, false, cols, D, rows, C.scale, P.data(), bs.k, qb, ldq, acc_t(1),
                    dk_acc + j0 * ldk_acc, ldk_acc);
        }
        if (C.rel()) {
          // Clipped keys: dq_rel += s_top R[c + M] + s_bot R[c - M]; the two R rows collect
          // the same sums times q_rel.
          for (int64_t r = 0; r < rows; ++r) {
            if (C.win.has_top(g) && s_top[r] != acc_t(0)) {
              cpu::axpy(dqra.data() + r * D, s_top[r], C.rrev_row(h, C.win.top()), D);
              cpu::axpy(rwin + (C.win.top() - w_lo) * D, s_top[r], qrb + r * ldqr, D);
            }
            if (C.win.has_bottom(g) && s_bot[r] != acc_t(0)) {
              cpu::axpy(dqra.data() + r * D, s_bot[r], C.rrev_row(h, C.win.bottom()), D);
              cpu::axpy(rwin + (C.win.bottom() - w_lo) * D, s_bot[r], qrb + r * ldqr, D);
            }
          }
          if (rel_into_q) {
            for (int64_t x = 0; x < rows * D; ++x) dqa.data()[x] += dqra.data()[x];
          }
        }
        for (int64_t r = 0; r < rows; ++r) {
          store_row(dq + dq_rows.at(sq.q_start, h, i0 + r), dqa.data() + r * D, D, acc_t(1));
          if (C.rel() && !rel_into_q) {
            store_row(dq_rel + dq_rows.at(sq.q_start, h, i0 + r), dqra.data() + r * D, D, acc_t(1));
          }
        }
      }
  });

  if (B.dkv_direct) return;
  // dK/dV: sum the group's q heads in head order, convert to the input dtype.
  const int64_t n_seq = static_cast<int64_t>(g.seqs.size());
  at::parallel_for(0, n_seq * g.kv_heads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t x = begin; x < end; ++x) {
      const int64_t s = x / g.kv_heads, hk = x % g.kv_heads;
      const Seq& sq = g.seqs[s];
      auto slab = [&](const std::vector<acc_t>& buf, int64_t h, int64_t dim) {
        return buf.data() +
               (g.thd ? (sq.k_start * g.heads + h * sq.k_len) : (s * g.heads + h) * g.lk_max) * dim;
      };
      for (int64_t j = 0; j < sq.k_len; ++j) {
        scalar_t* kr = dk_out + dk_rows.at(sq.k_start, hk, j);
        scalar_t* vr = dv_out + dv_rows.at(sq.k_start, hk, j);
        for (int64_t e = 0; e < D; ++e) {
          acc_t t = 0;
          for (int64_t gi = 0; gi < g.group; ++gi) t += slab(B.dk, hk * g.group + gi, D)[j * D + e];
          kr[e] = static_cast<scalar_t>(t);
        }
        for (int64_t e = 0; e < Dv; ++e) {
          acc_t t = 0;
          for (int64_t gi = 0; gi < g.group; ++gi) t += slab(B.dv, hk * g.group + gi, Dv)[j * Dv + e];
          vr[e] = static_cast<scalar_t>(t);
        }
      }
    }
  });
}

// Parameter gradients from the per-task diagonal sums: sum the sequences in order, then apply
// each term's derivative per diagonal (position_terms.h).
void toeplitz_param_grads(const Geometry& g, const Args& a,
                          const AttentionConfig& cfg, const SeqSlabs& S,
                          const std::vector<double>& diag, at::Tensor& g1, at::Tensor& g2) {
  const int64_t H = g.heads, nd = g.n_diag(), n_seq = static_cast<int64_t>(g.seqs.size());
  const int64_t d0 = g.dist0();
  std::vector<double> per_head(static_cast<size_t>(std::max<int64_t>(H * nd, 0)), 0.0);
  at::parallel_for(0, H, 1, [&](int64_t b, int64_t e) {
    for (int64_t h = b; h < e; ++h) {
      for (int64_t s = 0; s < n_seq; ++s) {
        cpu::accumulate(per_head.data() + h * nd + S.diag_lo[s],
                        diag.data() + h * S.diag_total + S.diag_off[s], S.diag_n[s]);
      }
    }
  });
  if (cfg.family == PositionFamily::ALiBi) {
    auto gs = at::empty({H}, at::kDouble);
    double* p = gs.mutable_data_ptr<double>();
    for (int64_t h = 0; h < H; ++h) {
      double acc = 0;
      for (int64_t t = 0; t < nd; ++t) {
        acc += per_head[h * nd + t] * detail::alibi_term_slope_derivative(d0 - t, cfg.symmetric);
      }
      p[h] = acc;
    }
    g1 = gs.to(a.slopes->scalar_type());
  } else if (cfg.family == PositionFamily::KERPLE) {
    const auto r1 = a.r1->to(at::kDouble).contiguous(), r2 = a.r2->to(at::kDouble).contiguous();
    auto gr1 = at::empty({H}, at::kDouble), gr2 = at::empty({H}, at::kDouble);
    for (int64_t h = 0; h < H; ++h) {
      double acc1 = 0, acc2 = 0;
      for (int64_t t = 0; t < nd; ++t) {
        detail::kerple_term_accumulate(cfg.kerple_log, r1.const_data_ptr<double>()[h],
                                       r2.const_data_ptr<double>()[h],
                                       detail::kerple_term_distance(d0 - t, cfg.symmetric),
                                       per_head[h * nd + t], &acc1, &acc2);
      }
      gr1.mutable_data_ptr<double>()[h] = acc1;
      gr2.mutable_data_ptr<double>()[h] = acc2;
    }
    g1 = gr1.to(a.r1->scalar_type());
    g2 = gr2.to(a.r2->scalar_type());
  } else if (cfg.family == PositionFamily::T5) {
    const int64_t nb = a.table->size(0);
    auto gt = at::zeros({nb, H}, at::kDouble);
    double* p = gt.mutable_data_ptr<double>();
    for (int64_t t = 0; t < nd; ++t) {
      const int64_t bucket = detail::t5_term_bucket(d0 - t, cfg.symmetric, nb, cfg.max_distance);
      for (int64_t h = 0; h < H; ++h) p[bucket * H + h] += per_head[h * nd + t];
    }
    g1 = gt.to(a.table->scalar_type());
  }
}

// Forgetting gate: d log_fgate_s = sum_{t >= s} (rows[t] - cols[t]) per (sequence, head), in
// fp64 and index order; returned in log_fgate's layout ((B, H, Lk), or (Tk, H) packed).
template <typename scalar_t, typename acc_t>
at::Tensor fgate_grad(const Geometry& g, const Call<scalar_t, acc_t>& C,
                      const std::vector<double>& rows, const std::vector<double>& cols) {
  const int64_t n_seq = static_cast<int64_t>(g.seqs.size());
  auto out = at::zeros(g.thd ? std::vector<int64_t>{g.heads, C.fc_len}
                             : std::vector<int64_t>{n_seq, g.heads, C.fc_len},
                       at::kDouble);
  double* o = out.mutable_data_ptr<double>();
  at::parallel_for(0, g.heads * n_seq, 1, [&](int64_t b, int64_t e) {
    for (int64_t u = b; u < e; ++u) {
      const Seq& sq = g.seqs[u / g.heads];
      const int64_t off = C.fgate_off(sq, u % g.heads);
      double acc = 0.0;
      for (int64_t t = sq.k_len - 1; t >= 0; --t) {
        acc += detail::fgate_term_dc(rows[off + t], cols[off + t]);
        o[off + t] = acc;
      }
    }
  });
  return g.thd ? out.t().contiguous() : out;
}

detail::RelativeAttentionGrads run_backward(const at::Tensor& grad_out_in,
                                            const detail::OptTensor& grad_lse_in,
                                            const at::Tensor& q_in, const at::Tensor& k_in,
                                            const at::Tensor& v_in, const at::Tensor& out_in,
                                            const at::Tensor& lse_in, const Args& a) {
  const AttentionConfig cfg = detail::check_relative_attention(kBwdOp, q_in, k_in, v_in, a);
  detail::check_relative_attention_backward(kBwdOp, grad_out_in, grad_lse_in, q_in, v_in, out_in,
                                            lse_in, cfg.thd);
  const Geometry g = make_geometry(kBwdOp, q_in, k_in, v_in, a, cfg);
  check_values(kBwdOp, a, cfg);
  if (cfg.family == PositionFamily::ForgettingGate && cfg.thd) check_fgate_seqs(kBwdOp, g);
  const auto empty = at::empty({0}, q_in.options());
  auto grad_q = at::zeros(q_in.sizes(), q_in.options());
  auto grad_k = at::zeros(k_in.sizes(), k_in.options());
  auto grad_v = at::zeros(v_in.sizes(), v_in.options());
  at::Tensor g_slopes = empty, g_table = empty, g_r1 = empty, g_r2 = empty, g_rel = empty,
             g_q_rel = empty, g_fgate = empty;
  auto zeros_like_param = [](const detail::OptTensor& t) { return at::zeros(t->sizes(), t->options()); };
  switch (cfg.family) {
    case PositionFamily::ALiBi: g_slopes = zeros_like_param(a.slopes); break;
    case PositionFamily::T5: g_table = zeros_like_param(a.table); break;
    case PositionFamily::KERPLE:
      g_r1 = zeros_like_param(a.r1);
      g_r2 = zeros_like_param(a.r2);
      break;
    case PositionFamily::RelScores:
      g_rel = zeros_like_param(a.rel_emb);
      if (a.q_rel.has_value()) g_q_rel = at::zeros(q_in.sizes(), q_in.options());
      break;
    case PositionFamily::ForgettingGate: g_fgate = zeros_like_param(a.log_fgate); break;
    default: break;
  }
  auto result = [&] {
    return detail::RelativeAttentionGrads{grad_q, grad_k, grad_v, g_slopes, g_table,
                                          g_r1, g_r2, g_rel, g_q_rel, g_fgate};
  };
  // No (query, key) pair: every gradient is zero.
  if (lse_in.numel() == 0 || k_in.size(cfg.thd ? 0 : 2) == 0) return result();

  const Inputs in = prepare_inputs(q_in, k_in, v_in, a, cfg, g);
  const auto out = out_in.contiguous();
  const auto dout = grad_out_in.to(in.q.scalar_type()).contiguous();
  const auto acc_type = detail::attention_acc_type(in.q.scalar_type());
  const auto lse = lse_in.contiguous();
  at::Tensor glse;
  if (grad_lse_in.has_value()) glse = grad_lse_in->to(acc_type).contiguous();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.q.scalar_type(), "relative_attention_backward_cpu", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    std::vector<acc_t> lut, rrev;
    std::vector<double> fpre;
    const auto C = make_call<scalar_t, acc_t>(g, cfg, a, in, lut, rrev, fpre);
    const RelWindow& win = C.win;
    BackwardBuffers<scalar_t, acc_t> B;
    B.dkv_direct = std::is_same_v<scalar_t, acc_t> && g.group == 1;
    if (!B.dkv_direct) {
      const int64_t keys = g.thd ? in.k.size(0) : static_cast<int64_t>(g.seqs.size()) * g.lk_max;
      B.dk.resize(static_cast<size_t>(keys * g.heads * g.dim));
      B.dv.resize(static_cast<size_t>(keys * g.heads * g.v_dim));
    }
    B.slabs = seq_slabs(g, C.rel() ? &win : nullptr);
    if (C.toeplitz()) B.diag.assign(static_cast<size_t>(g.heads * B.slabs.diag_total), 0.0);
    if (C.rel()) B.rwin.assign(static_cast<size_t>(g.heads * B.slabs.win_total * g.dim), acc_t(0));
    if (C.fgate()) {
      B.frow.assign(fpre.size(), 0.0);
      B.fcol.assign(fpre.size(), 0.0);
    }

    backward_impl(C, out.const_data_ptr<scalar_t>(), dout.const_data_ptr<scalar_t>(),
                  rows_of(out, cfg.thd), lse.const_data_ptr<acc_t>(),
                  glse.defined() ? glse.const_data_ptr<acc_t>() : nullptr, lse_rows_of(lse, cfg.thd),
                  grad_q.mutable_data_ptr<scalar_t>(),
                  g_q_rel.numel() > 0 ? g_q_rel.mutable_data_ptr<scalar_t>() : nullptr,
                  rows_of(grad_q, cfg.thd), grad_k.mutable_data_ptr<scalar_t>(),
                  grad_v.mutable_data_ptr<scalar_t>(), rows_of(grad_k, cfg.thd),
                  rows_of(grad_v, cfg.thd), B);

    if (C.toeplitz()) {
      at::Tensor g1, g2;
      toeplitz_param_grads(g, a, cfg, B.slabs, B.diag, g1, g2);
      if (cfg.family == PositionFamily::ALiBi) g_slopes = g1;
      if (cfg.family == PositionFamily::T5) g_table = g1;
      if (cfg.family == PositionFamily::KERPLE) {
        g_r1 = g1;
        g_r2 = g2;
      }
    } else if (C.rel() && win.rows() > 0) {
      // grad R[h, 2c - w] = sum over sequences (in order) of the tasks' window gradients.
      const int64_t n_seq = static_cast<int64_t>(g.seqs.size()), D = g.dim;
      const int64_t R = a.rel_emb->size(1);
      const SeqSlabs& S = B.slabs;
      auto acc = at::zeros({g.heads, R, D}, at::kDouble);
      double* ap = acc.mutable_data_ptr<double>();
      at::parallel_for(0, g.heads, 1, [&](int64_t b, int64_t e) {
        for (int64_t h = b; h < e; ++h) {
          for (int64_t s = 0; s < n_seq; ++s) {
            const acc_t* src = B.rwin.data() + (h * S.win_total + S.win_off[s]) * D;
            for (int64_t wi = 0; wi < S.win_rows[s]; ++wi) {
              cpu::accumulate(ap + (h * R + (2 * win.c - (S.win_lo[s] + wi))) * D, src + wi * D, D);
            }
          }
        }
      });
      g_rel = acc.to(a.rel_emb->scalar_type());
    } else if (C.fgate()) {
      g_fgate = fgate_grad(g, C, B.frow, B.fcol).to(a.log_fgate->scalar_type());
    }
  });
  return result();
}

}  // namespace
}  // namespace posenc

TORCH_LIBRARY_IMPL(posenc, CPU, m) {
  m.impl("relative_attention",
         &posenc::detail::relative_attention_kernel_entry<posenc::run_forward>);
  m.impl("relative_attention_backward",
         &posenc::detail::relative_attention_backward_kernel_entry<posenc::run_backward>);
}
