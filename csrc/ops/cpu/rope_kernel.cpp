#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "../rope.h"
#include "rope_rotate.h"

namespace posenc {
namespace {

using detail::Bhsd;
using detail::bhsd;
using detail::RopeParams;
using detail::thd;

using detail::rope_pair_index;


// Calls fn(b, h, s, n) for runs of n rows of a (B, H, S) grid of rows, in the memory order of
// the contiguous output: s innermost for "bhsd" (s_inner), h innermost otherwise. Runs never
// cross the inner dim; a thread's range is contiguous in memory, so both threads stream.
template <typename Fn>
void for_row_runs(int64_t B, int64_t H, int64_t S, bool s_inner, int64_t grain, const Fn& fn) {
  const int64_t inner = s_inner ? S : H;
  at::parallel_for(0, B * H * S, grain, [&](int64_t begin, int64_t end) {
    int64_t i = begin;
    while (i < end) {
      const int64_t o = i / inner, j = i % inner;
      const int64_t n = std::min(inner - j, end - i);
      if (s_inner) {
        fn(o / H, o % H, j, n);
      } else {
        fn(o / S, j, o % S, n);
      }
      i += n;
    }
  });
}

// Rows per parallel chunk: ~32K elements (128 KiB of fp32), so a big tensor splits evenly over
// the threads and a small one is not split into tasks that cost more than they do.
int64_t rotate_grain(int64_t D) { return detail::row_grain(D); }

// Bytes of cos/sin table per block of positions (64 positions at rotary_dim 128 in fp32): it
// stays in L1/L2 while every head (and batch row) of the block reads it, and the blocks of a
// long sequence are many tasks.
constexpr int64_t kTableBytes = int64_t{32} << 10;

inline void fast_cos_sin(float p, const float* freq, int64_t n, float* c, float* s) {
  POSENC_CPU_DISPATCH(rope_cos_sin_f32, p, freq, n, c, s);
}
inline void fast_cos_sin(float, const float*, int64_t, double*, double*) {}  // fp64: not used

// Shared by rope (conjugate = false), rope_backward (conjugate = true) and rope_qk /
// rope_qk_backward (x2 defined: the keys, rotated with the same angles and, for xPos, the
// inverse magnitude). The forward is the linear map m_k(p) * R(angle) on each pair; its
// adjoint is m_k(p) * R(-angle), the same magnitude with the rotation by the negative angle.
//
// cos/sin are computed once per (position, frequency) -- per (batch row, position) only for
// (B, S) positions -- into a table for a block of positions, then every head (of x and x2)
// and batch row of the block is rotated from it by the vectorised rope_rotate
// (rope_rotate.vec.cpp). With xPos the two tensors' magnitudes differ, so each gets its own
// table (built the same way, so each output equals a rope call on that tensor bit for bit).
std::pair<at::Tensor, at::Tensor> rope_cpu_impl(const char* op, const char* arg,
                                                const at::Tensor& x, const char* arg2,
                                                const at::Tensor& x2, const RopeParams& a,
                                                bool conjugate) {
  const detail::RopeLayout lay =
      detail::check_rope(op, arg, x, a.positions, a.inv_freq, a.rotary_dim, a.layout,
                         a.cu_seqlens, a.attention_factor, a.xpos_zeta, a.xpos_scale_base);
  const bool pair = x2.defined();
  if (pair) detail::check_rope_pair(op, arg, x, arg2, x2, a, lay);
  detail::check_rope_offset(op, a.positions, a.offset, detail::rope_seq_len(x, lay));
  const bool packed = lay == detail::RopeLayout::kThd;
  detail::check_rope_values(op, a.cu_seqlens, packed ? x.size(0) : 0, a.inv_freq, a.xpos_zeta);
  auto out = at::empty(x.sizes(), x.options());
  at::Tensor out2;
  if (pair) out2 = at::empty(x2.sizes(), x2.options());
  if (out.numel() == 0 && (!pair || out2.numel() == 0)) return {out, out2};

  const auto inv_freq = a.inv_freq.contiguous();  // (R/2,): tiny
  const int64_t half = inv_freq.size(0);
  const bool bshd = lay == detail::RopeLayout::kBshd;
  const Bhsd xg = packed ? thd(x) : bhsd(x, bshd);
  const Bhsd og = packed ? thd(out) : bhsd(out, bshd);
  Bhsd xg2{}, og2{};
  if (pair) {
    xg2 = packed ? thd(x2) : bhsd(x2, bshd);
    og2 = packed ? thd(out2) : bhsd(out2, bshd);
  }
  const int64_t B = xg.size[0], S = xg.size[2], D = xg.size[3];
  // Heads [0, H1) are x's, [H1, H) x2's: one index space, so a task's range of heads may span
  // both tensors and the table of a block serves all of them.
  const int64_t H1 = xg.size[1], H = H1 + (pair ? xg2.size[1] : 0);
  if (B == 0 || S == 0 || H == 0 || D == 0) return {out, out2};
  const int64_t offset = a.offset;

  const bool has_pos = a.positions.has_value() && a.positions->defined();
  // int32 position ids are widened (a (B, S) copy, small beside x); int64 ones read in place.
  at::Tensor pos_t;
  if (has_pos) pos_t = a.positions->scalar_type() == at::kLong ? *a.positions : a.positions->to(at::kLong);
  const int64_t* pos = has_pos ? pos_t.const_data_ptr<int64_t>() : nullptr;
  int64_t pos_sb = 0, pos_ss = 0;  // a (S,) table is shared by every batch row
  if (has_pos) {
    pos_ss = pos_t.stride(-1);
    if (pos_t.dim() == 2) pos_sb = pos_t.stride(0);
  }
  // Table rows: one per position, or one per (batch row, position) for (B, S) positions.
  const bool batched = has_pos && a.positions->dim() == 2;
  const int64_t nb = batched ? B : 1;
  at::Tensor cu;
  if (packed) cu = a.cu_seqlens->to(at::kLong).contiguous();
  const int64_t* cup = packed ? cu.const_data_ptr<int64_t>() : nullptr;
  const int64_t n_cu = packed ? cu.size(0) : 0;
  at::Tensor zeta;
  if (a.xpos_zeta.has_value() && a.xpos_zeta->defined()) zeta = a.xpos_zeta->contiguous();
  const float* zp = zeta.defined() ? zeta.const_data_ptr<float>() : nullptr;
  const bool two_tables = pair && zp != nullptr;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "rope_cpu", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* op_ = out.mutable_data_ptr<scalar_t>();
    const scalar_t* xp2 = pair ? x2.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* op2 = pair ? out2.mutable_data_ptr<scalar_t>() : nullptr;
    const bool exact = inv_freq.scalar_type() == at::kDouble;
    const float* freq32 = exact ? nullptr : inv_freq.const_data_ptr<float>();
    const double* freq64 = exact ? inv_freq.const_data_ptr<double>() : nullptr;
    const auto factor = static_cast<opmath_t>(a.attention_factor);
    const auto scale_base = static_cast<opmath_t>(a.xpos_scale_base);
    const int64_t row = 2 * half;  // table row: cos[0, half) then sin[0, half)
    // One parallel region (a barrier per block stalls both threads whenever one is
    // descheduled). A task is a block of positions -- of one batch row for (B, S) positions --
    // and a range of heads: it computes the block's cos/sin table (L1-sized) and rotates every
    // row of the block from it. Heads are split only when there are too few blocks to keep
    // every thread busy; the split recomputes the (then small) table, never changes a value.
    const int64_t block =
        std::clamp<int64_t>(kTableBytes / std::max<int64_t>(1, row * static_cast<int64_t>(sizeof(opmath_t))), 1, S);
    const int64_t nblocks = (S + block - 1) / block;
    const int64_t want_tasks = 4 * static_cast<int64_t>(at::get_num_threads());
    const int64_t hsplit = std::clamp<int64_t>((want_tasks + nb * nblocks - 1) / (nb * nblocks), 1, H);
    const int64_t hchunk = (H + hsplit - 1) / hsplit;
    const int64_t ntasks = nb * nblocks * hsplit;
    const bool s_inner = !bshd && !packed;
    // Rows of a task: B / nb batch rows x hchunk heads x block positions.
    const int64_t task_elems = (B / nb) * hchunk * block * D;
    const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(1, task_elems));
    at::parallel_for(0, ntasks, grain, [&](int64_t begin, int64_t end) {
      std::vector<opmath_t> table(static_cast<size_t>((two_tables ? 2 : 1) * block * row));
      for (int64_t task = begin; task < end; ++task) {
        const int64_t hs = task % hsplit;
        const int64_t blk = (task / hsplit) % nblocks;
        const int64_t bb = task / (hsplit * nblocks);  // the batch row of (B, S) positions
        const int64_t s0 = blk * block, n = std::min(block, S - s0);
        const int64_t h0 = hs * hchunk, h1 = std::min(H, h0 + hchunk);
        if (h0 >= h1) continue;
        // The magnitude scales cos and sin, as HF's attention_scaling does, so only the rotary
        // dims are scaled.
        auto build = [&](opmath_t* tab, bool inverse) {
          for (int64_t j = 0; j < n; ++j) {
            const int64_t s = s0 + j;
            const int64_t p =
                (has_pos ? pos[bb * pos_sb + s * pos_ss]
                         : (packed ? s - detail::rope_seq_start(cup, n_cu, s) : s)) + offset;
            opmath_t* cs = tab + j * row;
            opmath_t* sn = cs + half;
            // Reference precision in fp32 math: cos/sin of the fp32 angles in vectors.
            const bool fast = std::is_same_v<opmath_t, float> && freq32 != nullptr;
            if (fast) {
              fast_cos_sin(static_cast<float>(p), freq32, half, cs, sn);
              if (zp == nullptr) {  // magnitude = factor for every pair
                if (factor != opmath_t(1) || conjugate) {
                  for (int64_t k = 0; k < half; ++k) {
                    cs[k] *= factor;
                    const opmath_t sv = sn[k] * factor;
                    sn[k] = conjugate ? -sv : sv;
                  }
                }
                continue;
              }
            }
            for (int64_t k = 0; k < half; ++k) {
              opmath_t c, sv;
              if (fast) {
                c = cs[k];
                sv = sn[k];
              } else {
                detail::rope_cos_sin<opmath_t>(p, freq32, freq64, k, c, sv);
              }
              const opmath_t m = detail::rope_magnitude<opmath_t>(factor, zp, k, p, a.xpos_centre,
                                                                  scale_base, inverse);
              cs[k] = m * c;
              sv *= m;
              sn[k] = conjugate ? -sv : sv;
            }
          }
        };
        opmath_t* tab = table.data();
        opmath_t* tab2 = two_tables ? tab + block * row : tab;
        // Without xPos the magnitude is the same for q and k: one table serves every head.
        if (h0 < H1 || !two_tables) build(tab, a.xpos_inverse);
        if (two_tables && h1 > H1) build(tab2, !a.xpos_inverse);
        // The block's rows in the output's memory order: runs along s ("bhsd": one table row
        // per row) or along heads ("bshd", "thd": one table row for the run).
        const int64_t b_lo = batched ? bb : 0, b_hi = batched ? bb + 1 : B;
        for (int64_t b = b_lo; b < b_hi; ++b) {
          // The part [lo, hi) of the task's heads that lies in one tensor (heads local to it).
          auto rotate = [&](const scalar_t* src, const Bhsd& sg, scalar_t* dst, const Bhsd& dg,
                            const opmath_t* t, int64_t lo, int64_t hi) {
            if (lo >= hi) return;
            if (s_inner) {
              for (int64_t h = lo; h < hi; ++h) {
                POSENC_CPU_DISPATCH(rope_rotate, src + sg.offset(b, h, s0), sg.stride[2],
                                    sg.stride[3], dst + dg.offset(b, h, s0), dg.stride[2], t,
                                    row, n, half, D, a.interleaved);
              }
            } else {
              for (int64_t j = 0; j < n; ++j) {
                POSENC_CPU_DISPATCH(rope_rotate, src + sg.offset(b, lo, s0 + j), sg.stride[1],
                                    sg.stride[3], dst + dg.offset(b, lo, s0 + j), dg.stride[1],
                                    t + j * row, 0, hi - lo, half, D, a.interleaved);
              }
            }
          };
          rotate(xp, xg, op_, og, tab, h0, std::min(h1, H1));
          if (pair) rotate(xp2, xg2, op2, og2, tab2, std::max(h0, H1) - H1, h1 - H1);
        }
      }
    });
  });
  return {out, out2};
}

at::Tensor rope_cpu(const char* op, const char* arg, const at::Tensor& x, const RopeParams& a,
                    bool conjugate) {
  return rope_cpu_impl(op, arg, x, nullptr, at::Tensor(), a, conjugate).first;
}

// rope_qk (Backward = false) and rope_qk_backward (true): q with the xPos magnitude, k with its
// inverse, from one cos/sin table per block of positions.
template <bool Backward>
std::tuple<at::Tensor, at::Tensor> rope_qk_cpu(
    const at::Tensor& q, const at::Tensor& k, const std::optional<at::Tensor>& positions,
    const at::Tensor& inv_freq, int64_t offset, std::optional<int64_t> rotary_dim,
    bool interleaved, c10::string_view layout, const std::optional<at::Tensor>& cu_seqlens,
    double attention_factor, const std::optional<at::Tensor>& xpos_zeta, double xpos_scale_base,
    int64_t xpos_centre) {
  auto [q_out, k_out] = rope_cpu_impl(
      Backward ? "rope_qk_backward" : "rope_qk", Backward ? "grad_q" : "q", q,
      Backward ? "grad_k" : "k", k,
      {positions, inv_freq, offset, rotary_dim, interleaved, layout, cu_seqlens, attention_factor,
       xpos_zeta, xpos_scale_base, /*xpos_inverse=*/false, xpos_centre},
      Backward);
  return {q_out, k_out};
}

// A (S, R) or (B, S, R) cos/sin table: element strides, batch stride 0 for a shared table.
struct Table {
  int64_t sb, ss, sr;
};

Table table(const at::Tensor& t) {
  if (t.dim() == 2) return {0, t.stride(0), t.stride(1)};
  return {t.stride(0), t.stride(1), t.stride(2)};
}

at::Tensor apply_rotary_pos_emb_forward_kernel(const at::Tensor& x, const at::Tensor& cos,
                                               const at::Tensor& sin, bool interleaved,
                                               c10::string_view layout) {
  const bool bshd = detail::check_apply_rotary("apply_rotary_pos_emb", x, cos, sin, layout);
  auto out = at::empty(x.sizes(), x.options());
  if (out.numel() == 0) return out;

  const Bhsd xg = bhsd(x, bshd);
  const Bhsd og = bhsd(out, bshd);
  const int64_t B = xg.size[0], H = xg.size[1], S = xg.size[2], D = xg.size[3];
  const int64_t half = cos.size(-1) / 2;
  const Table ct = table(cos), st = table(sin);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "apply_rotary_pos_emb_cpu", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* cp = cos.const_data_ptr<scalar_t>();
    const scalar_t* sp = sin.const_data_ptr<scalar_t>();
    scalar_t* op_ = out.mutable_data_ptr<scalar_t>();
    // Rows in the output's memory order; a run along s ("bhsd") steps through the tables.
    const bool s_inner = !bshd;
    for_row_runs(B, H, S, s_inner, rotate_grain(D), [&](int64_t b, int64_t h, int64_t s,
                                                        int64_t len) {
      POSENC_CPU_DISPATCH(rope_rotate_table, xp + xg.offset(b, h, s),
                          s_inner ? xg.stride[2] : xg.stride[1], xg.stride[3],
                          op_ + og.offset(b, h, s), s_inner ? og.stride[2] : og.stride[1],
                          cp + b * ct.sb + s * ct.ss, s_inner ? ct.ss : 0, ct.sr,
                          sp + b * st.sb + s * st.ss, s_inner ? st.ss : 0, st.sr, len, half, D,
                          interleaved, false);
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> apply_rotary_pos_emb_backward_kernel(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin,
    bool interleaved, c10::string_view layout) {
  const bool bshd =
      detail::check_apply_rotary_backward("apply_rotary_pos_emb_backward", grad, x, cos, sin, layout);
  auto grad_x = at::empty(x.sizes(), x.options());
  auto grad_cos = at::zeros(cos.sizes(), cos.options());
  auto grad_sin = at::zeros(sin.sizes(), sin.options());
  if (x.numel() == 0) return {grad_x, grad_cos, grad_sin};

  const Bhsd xg = bhsd(x, bshd);
  const Bhsd gg = bhsd(grad, bshd);
  const Bhsd og = bhsd(grad_x, bshd);
  const int64_t B = xg.size[0], H = xg.size[1], S = xg.size[2], D = xg.size[3];
  const int64_t rot = cos.size(-1), half = rot / 2;
  const Table ct = table(cos), st = table(sin);
  // Table rows: one per (batch, position) for a (B, S, R) table, one per position for (S, R).
  const bool batched = cos.dim() == 3;
  const int64_t table_rows = (batched ? B : 1) * S;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "apply_rotary_pos_emb_backward_cpu", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* gp = grad.const_data_ptr<scalar_t>();
    const scalar_t* cp = cos.const_data_ptr<scalar_t>();
    const scalar_t* sp = sin.const_data_ptr<scalar_t>();
    scalar_t* gxp = grad_x.mutable_data_ptr<scalar_t>();
    const int64_t xd = xg.stride[3], gd = gg.stride[3];

    // One pass, one task per table row: grad_x = R^T g for each of the row's (batch, head)
    // rows (dx[i1] = g1 cos[i1] + g2 sin[i2], dx[i2] = g2 cos[i2] - g1 sin[i1]), and, while
    // x and g are in L1, grad_cos += g * x, grad_sin += g * rotate(x) in fp64, batch rows then
    // heads in order: the sums do not depend on the thread count.
    scalar_t* gcp = grad_cos.mutable_data_ptr<scalar_t>();  // contiguous (.., S, R)
    scalar_t* gsp = grad_sin.mutable_data_ptr<scalar_t>();
    const int64_t nb = batched ? 1 : B;
    at::parallel_for(0, table_rows, detail::row_grain(nb * H * D), [&](int64_t begin, int64_t end) {
      std::vector<double> acc(2 * rot);
      for (int64_t row = begin; row < end; ++row) {
        const int64_t s = row % S;
        const int64_t b0 = batched ? row / S : 0;
        std::fill(acc.begin(), acc.end(), 0.0);
        const scalar_t* cr = cp + b0 * ct.sb + s * ct.ss;
        const scalar_t* sr = sp + b0 * st.sb + s * st.ss;
        for (int64_t b = b0; b < b0 + nb; ++b) {
          for (int64_t h = 0; h < H; ++h) {
            const scalar_t* xr = xp + xg.offset(b, h, s);
            const scalar_t* gr = gp + gg.offset(b, h, s);
            POSENC_CPU_DISPATCH(rope_rotate_table, gr, 0, gd, gxp + og.offset(b, h, s), 0, cr, 0,
                                ct.sr, sr, 0, st.sr, 1, half, D, interleaved, true);
            POSENC_CPU_DISPATCH(rope_table_grad_accumulate, xr, xd, gr, gd, half, interleaved,
                                acc.data(), acc.data() + rot);
          }
        }
        for (int64_t j = 0; j < rot; ++j) {
          gcp[row * rot + j] = static_cast<scalar_t>(acc[j]);
          gsp[row * rot + j] = static_cast<scalar_t>(acc[rot + j]);
        }
      }
    });
  });
  return {grad_x, grad_cos, grad_sin};
}

}  // namespace
}  // namespace posenc

TORCH_LIBRARY_IMPL(posenc, CPU, m) {
  m.impl("rope", &posenc::detail::rope_kernel_entry<posenc::rope_cpu, false>);
  m.impl("rope_backward", &posenc::detail::rope_kernel_entry<posenc::rope_cpu, true>);
  m.impl("rope_qk", &posenc::rope_qk_cpu<false>);
  m.impl("rope_qk_backward", &posenc::rope_qk_cpu<true>);
  m.impl("apply_rotary_pos_emb", &posenc::apply_rotary_pos_emb_forward_kernel);
  m.impl("apply_rotary_pos_emb_backward", &posenc::apply_rotary_pos_emb_backward_kernel);
}
