#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "../rope.h"

namespace posenc {
namespace {

using detail::Bhsd;
using detail::bhsd;
using detail::RopeParams;
using detail::thd;

using detail::rope_pair_index;


// Shared by rope (conjugate = false) and rope_backward (conjugate = true). The forward is the
// linear map m_k(p) * R(angle) on each pair; its adjoint is m_k(p) * R(-angle), the same
// magnitude with the rotation by the negative angle.
at::Tensor rope_cpu(const char* op, const char* arg, const at::Tensor& x, const RopeParams& a,
                    bool conjugate) {
  const detail::RopeLayout lay =
      detail::check_rope(op, arg, x, a.positions, a.inv_freq, a.rotary_dim, a.layout,
                         a.cu_seqlens, a.attention_factor, a.xpos_zeta, a.xpos_scale_base);
  const bool packed = lay == detail::RopeLayout::kThd;
  detail::check_rope_values(op, a.cu_seqlens, packed ? x.size(0) : 0, a.inv_freq, a.xpos_zeta);
  auto out = at::empty(x.sizes(), x.options());
  if (out.numel() == 0) return out;

  const auto inv_freq = a.inv_freq.contiguous();  // (R/2,): tiny
  const int64_t half = inv_freq.size(0);
  const bool bshd = lay == detail::RopeLayout::kBshd;
  const Bhsd xg = packed ? thd(x) : bhsd(x, bshd);
  const Bhsd og = packed ? thd(out) : bhsd(out, bshd);
  const int64_t B = xg.size[0], H = xg.size[1], S = xg.size[2], D = xg.size[3];
  const int64_t offset = a.offset;

  const bool has_pos = a.positions.has_value() && a.positions->defined();
  const int64_t* pos = has_pos ? a.positions->const_data_ptr<int64_t>() : nullptr;
  int64_t pos_sb = 0, pos_ss = 0;  // a (S,) table is shared by every batch row
  if (has_pos) {
    pos_ss = a.positions->stride(-1);
    if (a.positions->dim() == 2) pos_sb = a.positions->stride(0);
  }
  at::Tensor cu;
  if (packed) cu = a.cu_seqlens->contiguous();
  const int64_t* cup = packed ? cu.const_data_ptr<int64_t>() : nullptr;
  const int64_t n_cu = packed ? cu.size(0) : 0;
  at::Tensor zeta;
  if (a.xpos_zeta.has_value() && a.xpos_zeta->defined()) zeta = a.xpos_zeta->contiguous();
  const float* zp = zeta.defined() ? zeta.const_data_ptr<float>() : nullptr;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "rope_cpu", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* op_ = out.mutable_data_ptr<scalar_t>();
    const bool exact = inv_freq.scalar_type() == at::kDouble;
    const float* freq32 = exact ? nullptr : inv_freq.const_data_ptr<float>();
    const double* freq64 = exact ? inv_freq.const_data_ptr<double>() : nullptr;
    const int64_t xd = xg.stride[3], od = og.stride[3];
    const bool interleaved = a.interleaved;
    const auto factor = static_cast<opmath_t>(a.attention_factor);
    const auto scale_base = static_cast<opmath_t>(a.xpos_scale_base);
    // One task per (batch, position): cos/sin computed once, applied to every head.
    at::parallel_for(0, B * S, detail::row_grain(H * D), [&](int64_t begin, int64_t end) {
      std::vector<opmath_t> cs(half), sn(half);
      for (int64_t bs = begin; bs < end; ++bs) {
        const int64_t b = bs / S, s = bs % S;
        const int64_t p =
            (has_pos ? pos[b * pos_sb + s * pos_ss]
                     : (packed ? s - detail::rope_seq_start(cup, n_cu, s) : s)) + offset;
        // The magnitude scales cos and sin, as HF's attention_scaling does, so only the
        // rotary dims are scaled.
        for (int64_t k = 0; k < half; ++k) {
          opmath_t c, sv;
          detail::rope_cos_sin<opmath_t>(p, freq32, freq64, k, c, sv);
          const opmath_t m = detail::rope_magnitude<opmath_t>(factor, zp, k, p, a.xpos_centre,
                                                              scale_base, a.xpos_inverse);
          cs[k] = m * c;
          sv *= m;
          sn[k] = conjugate ? -sv : sv;
        }
        for (int64_t h = 0; h < H; ++h) {
          const scalar_t* xr = xp + xg.offset(b, h, s);
          scalar_t* orow = op_ + og.offset(b, h, s);
          for (int64_t k = 0; k < half; ++k) {
            int64_t i1, i2;
            rope_pair_index(k, half, interleaved, i1, i2);
            const opmath_t u = static_cast<opmath_t>(xr[i1 * xd]);
            const opmath_t c = static_cast<opmath_t>(xr[i2 * xd]);
            orow[i1 * od] = static_cast<scalar_t>(u * cs[k] - c * sn[k]);
            orow[i2 * od] = static_cast<scalar_t>(c * cs[k] + u * sn[k]);
          }
          for (int64_t d = 2 * half; d < D; ++d) orow[d * od] = xr[d * xd];  // bit-exact copy
        }
      }
    });
  });
  return out;
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
    using opmath_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* cp = cos.const_data_ptr<scalar_t>();
    const scalar_t* sp = sin.const_data_ptr<scalar_t>();
    scalar_t* op_ = out.mutable_data_ptr<scalar_t>();
    const int64_t xd = xg.stride[3], od = og.stride[3];
    at::parallel_for(0, B * S, detail::row_grain(H * D), [&](int64_t begin, int64_t end) {
      for (int64_t bs = begin; bs < end; ++bs) {
        const int64_t b = bs / S, s = bs % S;
        const scalar_t* cr = cp + b * ct.sb + s * ct.ss;
        const scalar_t* sr = sp + b * st.sb + s * st.ss;
        for (int64_t h = 0; h < H; ++h) {
          const scalar_t* xr = xp + xg.offset(b, h, s);
          scalar_t* orow = op_ + og.offset(b, h, s);
          for (int64_t k = 0; k < half; ++k) {
            int64_t i1, i2;
            rope_pair_index(k, half, interleaved, i1, i2);
            const opmath_t a = static_cast<opmath_t>(xr[i1 * xd]);
            const opmath_t c = static_cast<opmath_t>(xr[i2 * xd]);
            // rotate(x) is -c at i1 and a at i2; each element has its own cos and sin.
            orow[i1 * od] = static_cast<scalar_t>(a * static_cast<opmath_t>(cr[i1 * ct.sr]) -
                                                  c * static_cast<opmath_t>(sr[i1 * st.sr]));
            orow[i2 * od] = static_cast<scalar_t>(c * static_cast<opmath_t>(cr[i2 * ct.sr]) +
                                                  a * static_cast<opmath_t>(sr[i2 * st.sr]));
          }
          for (int64_t d = 2 * half; d < D; ++d) orow[d * od] = xr[d * xd];
        }
      }
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
    using opmath_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* gp = grad.const_data_ptr<scalar_t>();
    const scalar_t* cp = cos.const_data_ptr<scalar_t>();
    const scalar_t* sp = sin.const_data_ptr<scalar_t>();
    scalar_t* gxp = grad_x.mutable_data_ptr<scalar_t>();
    const int64_t xd = xg.stride[3], gd = gg.stride[3], od = og.stride[3];

    // grad_x = R^T g per element: dx[i1] = g1 cos[i1] + g2 sin[i2], dx[i2] = g2 cos[i2] - g1 sin[i1].
    at::parallel_for(0, B * S, detail::row_grain(H * D), [&](int64_t begin, int64_t end) {
      for (int64_t bs = begin; bs < end; ++bs) {
        const int64_t b = bs / S, s = bs % S;
        const scalar_t* cr = cp + b * ct.sb + s * ct.ss;
        const scalar_t* sr = sp + b * st.sb + s * st.ss;
        for (int64_t h = 0; h < H; ++h) {
          const scalar_t* gr = gp + gg.offset(b, h, s);
          scalar_t* orow = gxp + og.offset(b, h, s);
          for (int64_t k = 0; k < half; ++k) {
            int64_t i1, i2;
            rope_pair_index(k, half, interleaved, i1, i2);
            const opmath_t g1 = static_cast<opmath_t>(gr[i1 * gd]);
            const opmath_t g2 = static_cast<opmath_t>(gr[i2 * gd]);
            orow[i1 * od] = static_cast<scalar_t>(g1 * static_cast<opmath_t>(cr[i1 * ct.sr]) +
                                                  g2 * static_cast<opmath_t>(sr[i2 * st.sr]));
            orow[i2 * od] = static_cast<scalar_t>(g2 * static_cast<opmath_t>(cr[i2 * ct.sr]) -
                                                  g1 * static_cast<opmath_t>(sr[i1 * st.sr]));
          }
          for (int64_t d = rot; d < D; ++d) orow[d * od] = gr[d * gd];
        }
      }
    });

    // grad_cos = sum g * x, grad_sin = sum g * rotate(x) over heads (and batch for an (S, R)
    // table): one task per table row, fixed summation order, double accumulators.
    scalar_t* gcp = grad_cos.mutable_data_ptr<scalar_t>();  // contiguous (.., S, R)
    scalar_t* gsp = grad_sin.mutable_data_ptr<scalar_t>();
    const int64_t nb = batched ? 1 : B;
    at::parallel_for(0, table_rows, detail::row_grain(nb * H * rot), [&](int64_t begin, int64_t end) {
      std::vector<double> acc_c(rot), acc_s(rot);
      for (int64_t row = begin; row < end; ++row) {
        const int64_t s = row % S;
        const int64_t b0 = batched ? row / S : 0;
        std::fill(acc_c.begin(), acc_c.end(), 0.0);
        std::fill(acc_s.begin(), acc_s.end(), 0.0);
        for (int64_t b = b0; b < b0 + nb; ++b) {
          for (int64_t h = 0; h < H; ++h) {
            const scalar_t* xr = xp + xg.offset(b, h, s);
            const scalar_t* gr = gp + gg.offset(b, h, s);
            for (int64_t k = 0; k < half; ++k) {
              int64_t i1, i2;
              rope_pair_index(k, half, interleaved, i1, i2);
              const double a = static_cast<double>(xr[i1 * xd]);
              const double c = static_cast<double>(xr[i2 * xd]);
              const double g1 = static_cast<double>(gr[i1 * gd]);
              const double g2 = static_cast<double>(gr[i2 * gd]);
              acc_c[i1] += g1 * a;
              acc_c[i2] += g2 * c;
              acc_s[i1] -= g1 * c;
              acc_s[i2] += g2 * a;
            }
          }
        }
        for (int64_t j = 0; j < rot; ++j) {
          gcp[row * rot + j] = static_cast<scalar_t>(acc_c[j]);
          gsp[row * rot + j] = static_cast<scalar_t>(acc_s[j]);
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
  m.impl("apply_rotary_pos_emb", &posenc::apply_rotary_pos_emb_forward_kernel);
  m.impl("apply_rotary_pos_emb_backward", &posenc::apply_rotary_pos_emb_backward_kernel);
}
