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

// A 4-D tensor seen as (B, H, S, D) whatever its layout: sizes and element strides, so that
// views into packed qkv buffers (any strides, last one included) are read in place.
struct Bhsd {
  int64_t size[4];
  int64_t stride[4];
  int64_t offset(int64_t b, int64_t h, int64_t s) const {
    return b * stride[0] + h * stride[1] + s * stride[2];
  }
};

Bhsd bhsd(const at::Tensor& t, bool bshd) {
  static constexpr int64_t kBhsd[4] = {0, 1, 2, 3};
  static constexpr int64_t kBshd[4] = {0, 2, 1, 3};
  const int64_t* perm = bshd ? kBshd : kBhsd;
  Bhsd g{};
  for (int i = 0; i < 4; ++i) {
    g.size[i] = t.size(perm[i]);
    g.stride[i] = t.stride(perm[i]);
  }
  return g;
}

using detail::rope_pair_index;

// Shared by rope (conjugate = false) and rope_backward (conjugate = true): the adjoint of a
// rotation is the rotation by the negative angle.
at::Tensor rope_cpu(const char* op, const char* arg, const at::Tensor& x,
                    const std::optional<at::Tensor>& positions, const at::Tensor& inv_freq_in,
                    int64_t offset, std::optional<int64_t> rotary_dim, bool interleaved,
                    c10::string_view layout, bool conjugate) {
  detail::check_rope(op, arg, x, positions, inv_freq_in, rotary_dim, layout);
  const bool bshd = layout == "bshd";
  auto out = at::empty(x.sizes(), x.options());
  if (out.numel() == 0) return out;

  const auto inv_freq = inv_freq_in.contiguous();  // (R/2,): tiny
  const int64_t half = inv_freq.size(0);
  const Bhsd xg = bhsd(x, bshd);
  const Bhsd og = bhsd(out, bshd);
  const int64_t B = xg.size[0], H = xg.size[1], S = xg.size[2], D = xg.size[3];

  const bool has_pos = positions.has_value() && positions->defined();
  const int64_t* pos = has_pos ? positions->const_data_ptr<int64_t>() : nullptr;
  int64_t pos_sb = 0, pos_ss = 0;  // a (S,) table is shared by every batch row
  if (has_pos) {
    pos_ss = positions->stride(-1);
    if (positions->dim() == 2) pos_sb = positions->stride(0);
  }

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "rope_cpu", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* op_ = out.mutable_data_ptr<scalar_t>();
    const float* freq = inv_freq.const_data_ptr<float>();
    const int64_t xd = xg.stride[3], od = og.stride[3];
    // One task per (batch, position): cos/sin computed once, applied to every head.
    at::parallel_for(0, B * S, detail::row_grain(H * D), [&](int64_t begin, int64_t end) {
      std::vector<opmath_t> cs(half), sn(half);
      for (int64_t bs = begin; bs < end; ++bs) {
        const int64_t b = bs / S, s = bs % S;
        const int64_t p = (has_pos ? pos[b * pos_sb + s * pos_ss] : s) + offset;
        // The angle is a float32 product, as Hugging Face computes it; only its cos/sin is
        // taken in opmath (double for fp64 inputs).
        const float pf = static_cast<float>(p);
        for (int64_t k = 0; k < half; ++k) {
          const float angle = pf * freq[k];
          cs[k] = std::cos(static_cast<opmath_t>(angle));
          const opmath_t sv = std::sin(static_cast<opmath_t>(angle));
          sn[k] = conjugate ? -sv : sv;
        }
        for (int64_t h = 0; h < H; ++h) {
          const scalar_t* xr = xp + xg.offset(b, h, s);
          scalar_t* orow = op_ + og.offset(b, h, s);
          for (int64_t k = 0; k < half; ++k) {
            int64_t i1, i2;
            rope_pair_index(k, half, interleaved, i1, i2);
            const opmath_t a = static_cast<opmath_t>(xr[i1 * xd]);
            const opmath_t c = static_cast<opmath_t>(xr[i2 * xd]);
            orow[i1 * od] = static_cast<scalar_t>(a * cs[k] - c * sn[k]);
            orow[i2 * od] = static_cast<scalar_t>(c * cs[k] + a * sn[k]);
          }
          for (int64_t d = 2 * half; d < D; ++d) orow[d * od] = xr[d * xd];  // bit-exact copy
        }
      }
    });
  });
  return out;
}

at::Tensor rope_forward_kernel(const at::Tensor& x, const std::optional<at::Tensor>& positions,
                               const at::Tensor& inv_freq, int64_t offset,
                               std::optional<int64_t> rotary_dim, bool interleaved,
                               c10::string_view layout) {
  return rope_cpu("rope", "x", x, positions, inv_freq, offset, rotary_dim, interleaved, layout,
                  /*conjugate=*/false);
}

at::Tensor rope_backward_kernel(const at::Tensor& grad, const std::optional<at::Tensor>& positions,
                                const at::Tensor& inv_freq, int64_t offset,
                                std::optional<int64_t> rotary_dim, bool interleaved,
                                c10::string_view layout) {
  return rope_cpu("rope_backward", "grad", grad, positions, inv_freq, offset, rotary_dim,
                  interleaved, layout, /*conjugate=*/true);
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
  m.impl("rope", &posenc::rope_forward_kernel);
  m.impl("rope_backward", &posenc::rope_backward_kernel);
  m.impl("apply_rotary_pos_emb", &posenc::apply_rotary_pos_emb_forward_kernel);
  m.impl("apply_rotary_pos_emb_backward", &posenc::apply_rotary_pos_emb_backward_kernel);
}
