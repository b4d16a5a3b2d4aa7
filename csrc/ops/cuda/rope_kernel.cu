// RoPE (Su et al. 2021) and Hugging Face's apply_rotary_pos_emb on CUDA: the same numbers as
// ../cpu/rope_kernel.cpp. x is read through its strides (bhsd, bshd, views into packed qkv,
// any last-dim stride) and every element is read and written once.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

#include "../rope.h"
#include "cuda_utils.cuh"

namespace posenc {
namespace {

using detail::rope_pair_index;

constexpr int kThreads = 256;
constexpr int64_t kMaxHeadsPerThread = 4;

using detail::Bhsd;
using detail::bhsd;
using detail::RopeParams;
using detail::thd;

// A (S, R) or (B, S, R) cos/sin table: element strides, batch stride 0 for a shared table.
struct Table {
  int64_t sb, ss, sr;
};

Table table(const at::Tensor& t) {
  if (t.dim() == 2) return {0, t.stride(0), t.stride(1)};
  return {t.stride(0), t.stride(1), t.stride(2)};
}

// Launch shape shared by the elementwise kernels. A block owns one (batch, position) and a
// chunk of heads: threadIdx.x runs over the pairs (and the pass-through dims), threadIdx.y
// over heads, each thread taking up to kMaxHeadsPerThread heads so that the cos/sin of a pair
// is computed (or loaded) once and applied to several heads.
struct RowLaunch {
  dim3 block;
  int64_t heads_per_thread;
  int64_t head_chunks;
  int64_t units;  // B * S * head_chunks
};

RowLaunch row_launch(int64_t B, int64_t H, int64_t S, int64_t D, int64_t half) {
  RowLaunch l{};
  const int tx = cuda::pow2_at_least(std::max<int64_t>({half, D - 2 * half, 1}), 64);
  const int ty = std::min(kThreads / tx, cuda::pow2_at_least(H, kThreads));
  l.block = dim3(tx, ty);
  l.heads_per_thread = std::clamp<int64_t>((H + ty - 1) / ty, 1, kMaxHeadsPerThread);
  const int64_t chunk = ty * l.heads_per_thread;
  l.head_chunks = (H + chunk - 1) / chunk;
  l.units = B * S * l.head_chunks;
  return l;
}

// Unit u of a RowLaunch -> (b, s, first head of this thread).
struct Unit {
  int64_t b, s, h0;
};

__device__ __forceinline__ Unit decode_unit(int64_t u, int64_t S, int64_t head_chunks,
                                            int64_t heads_per_thread) {
  const int64_t hc = u % head_chunks;
  const int64_t bs = u / head_chunks;
  return {bs / S, bs % S, hc * blockDim.y * heads_per_thread + threadIdx.y};
}

// Magnitude parameters of rope (attention_factor, xPos), in the kernel's math type.
template <typename T>
struct Magnitude {
  const float* zeta;  // nullptr: no xPos
  T factor, scale_base;
  bool inverse;
  int64_t centre;
};

// rope (conjugate = false) and rope_backward (conjugate = true, the same magnitude times the
// rotation by -angle). cu != nullptr: packed "thd" input seen as (1, H, T, D), the position of
// token s found by a binary search in cu_seqlens (n_cu entries).
template <typename scalar_t>
__global__ void rope_kernel(const scalar_t* __restrict__ x, Bhsd xg, scalar_t* __restrict__ out,
                            Bhsd og, const int64_t* __restrict__ pos, int64_t pos_sb,
                            int64_t pos_ss, const int64_t* __restrict__ cu, int64_t n_cu,
                            int64_t offset, const float* __restrict__ freq32,
                            const double* __restrict__ freq64, int64_t half,
                            Magnitude<at::opmath_type<scalar_t>> mag, bool interleaved,
                            bool conjugate, int64_t units, int64_t head_chunks,
                            int64_t heads_per_thread) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t H = xg.size[1], S = xg.size[2], D = xg.size[3];
  const int64_t xd = xg.stride[3], od = og.stride[3];
  for (int64_t u = blockIdx.x; u < units; u += gridDim.x) {
    const Unit w = decode_unit(u, S, head_chunks, heads_per_thread);
    const int64_t p = (pos != nullptr  ? pos[w.b * pos_sb + w.s * pos_ss]
                       : cu != nullptr ? w.s - detail::rope_seq_start(cu, n_cu, w.s)
                                       : w.s) +
                      offset;
    // Angle as on CPU (detail::rope_cos_sin); cos/sin and magnitude in opmath.
    for (int64_t k = threadIdx.x; k < half; k += blockDim.x) {
      opmath_t sn, cs;
      detail::rope_cos_sin<opmath_t>(p, freq32, freq64, k, cs, sn);
      const opmath_t m = detail::rope_magnitude<opmath_t>(mag.factor, mag.zeta, k, p, mag.centre,
                                                          mag.scale_base, mag.inverse);
      cs *= m;
      sn *= conjugate ? -m : m;
      int64_t i1, i2;
      rope_pair_index(k, half, interleaved, i1, i2);
      for (int64_t q = 0; q < heads_per_thread; ++q) {
        const int64_t h = w.h0 + q * blockDim.y;
        if (h >= H) break;
        const scalar_t* xr = x + xg.offset(w.b, h, w.s);
        scalar_t* orow = out + og.offset(w.b, h, w.s);
        const opmath_t a = static_cast<opmath_t>(xr[i1 * xd]);
        const opmath_t c = static_cast<opmath_t>(xr[i2 * xd]);
        orow[i1 * od] = static_cast<scalar_t>(a * cs - c * sn);
        orow[i2 * od] = static_cast<scalar_t>(c * cs + a * sn);
      }
    }
    for (int64_t d = 2 * half + threadIdx.x; d < D; d += blockDim.x) {
      for (int64_t q = 0; q < heads_per_thread; ++q) {
        const int64_t h = w.h0 + q * blockDim.y;
        if (h >= H) break;
        out[og.offset(w.b, h, w.s) + d * od] = x[xg.offset(w.b, h, w.s) + d * xd];  // bit-exact
      }
    }
  }
}

// apply_rotary_pos_emb (adjoint = false) and its x-gradient (adjoint = true):
//   forward  o[i1] = a c[i1] - b s[i1],  o[i2] = b c[i2] + a s[i2]
//   adjoint  o[i1] = a c[i1] + b s[i2],  o[i2] = b c[i2] - a s[i1]
// with (a, b) the pair of x (forward) or of the upstream gradient (adjoint).
template <typename scalar_t>
__global__ void apply_rotary_kernel(const scalar_t* __restrict__ x, Bhsd xg,
                                    scalar_t* __restrict__ out, Bhsd og,
                                    const scalar_t* __restrict__ cosp, Table ct,
                                    const scalar_t* __restrict__ sinp, Table st, int64_t half,
                                    bool interleaved, bool adjoint, int64_t units,
                                    int64_t head_chunks, int64_t heads_per_thread) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t H = xg.size[1], S = xg.size[2], D = xg.size[3];
  const int64_t xd = xg.stride[3], od = og.stride[3];
  for (int64_t u = blockIdx.x; u < units; u += gridDim.x) {
    const Unit w = decode_unit(u, S, head_chunks, heads_per_thread);
    const scalar_t* cr = cosp + w.b * ct.sb + w.s * ct.ss;
    const scalar_t* sr = sinp + w.b * st.sb + w.s * st.ss;
    for (int64_t k = threadIdx.x; k < half; k += blockDim.x) {
      int64_t i1, i2;
      rope_pair_index(k, half, interleaved, i1, i2);
      const opmath_t c1 = static_cast<opmath_t>(cr[i1 * ct.sr]);
      const opmath_t c2 = static_cast<opmath_t>(cr[i2 * ct.sr]);
      const opmath_t s1 = static_cast<opmath_t>(sr[i1 * st.sr]);
      const opmath_t s2 = static_cast<opmath_t>(sr[i2 * st.sr]);
      for (int64_t m = 0; m < heads_per_thread; ++m) {
        const int64_t h = w.h0 + m * blockDim.y;
        if (h >= H) break;
        const scalar_t* xr = x + xg.offset(w.b, h, w.s);
        scalar_t* orow = out + og.offset(w.b, h, w.s);
        const opmath_t a = static_cast<opmath_t>(xr[i1 * xd]);
        const opmath_t b = static_cast<opmath_t>(xr[i2 * xd]);
        if (adjoint) {
          orow[i1 * od] = static_cast<scalar_t>(a * c1 + b * s2);
          orow[i2 * od] = static_cast<scalar_t>(b * c2 - a * s1);
        } else {
          orow[i1 * od] = static_cast<scalar_t>(a * c1 - b * s1);
          orow[i2 * od] = static_cast<scalar_t>(b * c2 + a * s2);
        }
      }
    }
    for (int64_t d = 2 * half + threadIdx.x; d < D; d += blockDim.x) {
      for (int64_t m = 0; m < heads_per_thread; ++m) {
        const int64_t h = w.h0 + m * blockDim.y;
        if (h >= H) break;
        out[og.offset(w.b, h, w.s) + d * od] = x[xg.offset(w.b, h, w.s) + d * xd];
      }
    }
  }
}

// cos/sin gradients of apply_rotary_pos_emb: grad_cos = sum g * x, grad_sin = sum g * rotate(x)
// over heads (and batch for an (S, R) table). A block owns a table row; threadIdx.x runs over
// pairs, threadIdx.y over a strided share of the (batch, head) terms in double; the shares are
// then added in threadIdx.y order. No atomics, a fixed order: deterministic.
template <typename scalar_t>
__global__ void apply_rotary_table_grad_kernel(const scalar_t* __restrict__ x, Bhsd xg,
                                               const scalar_t* __restrict__ g, Bhsd gg,
                                               scalar_t* __restrict__ grad_cos,
                                               scalar_t* __restrict__ grad_sin, int64_t half,
                                               bool interleaved, bool batched,
                                               int64_t table_rows) {
  extern __shared__ double shares[];  // 4 per thread
  const int64_t B = xg.size[0], H = xg.size[1], S = xg.size[2];
  const int64_t xd = xg.stride[3], gd = gg.stride[3];
  const int64_t nbh = (batched ? 1 : B) * H;
  const int64_t rot = 2 * half;
  double* mine = shares + 4 * (threadIdx.y * blockDim.x + threadIdx.x);
  for (int64_t row = blockIdx.x; row < table_rows; row += gridDim.x) {
    const int64_t s = row % S;
    const int64_t b0 = batched ? row / S : 0;
    for (int64_t k0 = 0; k0 < half; k0 += blockDim.x) {  // the same trip count in every thread
      const int64_t k = k0 + threadIdx.x;
      int64_t i1 = 0, i2 = 0;
      double ac1 = 0.0, ac2 = 0.0, as1 = 0.0, as2 = 0.0;
      if (k < half) {
        rope_pair_index(k, half, interleaved, i1, i2);
        for (int64_t bh = threadIdx.y; bh < nbh; bh += blockDim.y) {
          const int64_t b = b0 + bh / H, h = bh % H;
          const scalar_t* xr = x + xg.offset(b, h, s);
          const scalar_t* gr = g + gg.offset(b, h, s);
          const double a = static_cast<double>(xr[i1 * xd]);
          const double c = static_cast<double>(xr[i2 * xd]);
          const double g1 = static_cast<double>(gr[i1 * gd]);
          const double g2 = static_cast<double>(gr[i2 * gd]);
          ac1 += g1 * a;
          ac2 += g2 * c;
          as1 -= g1 * c;
          as2 += g2 * a;
        }
      }
      mine[0] = ac1;
      mine[1] = ac2;
      mine[2] = as1;
      mine[3] = as2;
      __syncthreads();
      if (threadIdx.y == 0 && k < half) {
        double t[4] = {0.0, 0.0, 0.0, 0.0};
        for (unsigned int y = 0; y < blockDim.y; ++y) {
          const double* other = shares + 4 * (y * blockDim.x + threadIdx.x);
          for (int q = 0; q < 4; ++q) t[q] += other[q];
        }
        grad_cos[row * rot + i1] = static_cast<scalar_t>(t[0]);
        grad_cos[row * rot + i2] = static_cast<scalar_t>(t[1]);
        grad_sin[row * rot + i1] = static_cast<scalar_t>(t[2]);
        grad_sin[row * rot + i2] = static_cast<scalar_t>(t[3]);
      }
      __syncthreads();
    }
  }
}


// The values of cu_seqlens and xpos_zeta are not checked here (that needs a device-to-host
// copy and a sync); see detail::check_rope_values and the docs of posenc::ops::rope.
at::Tensor rope_cuda(const char* op, const char* arg, const at::Tensor& x, const RopeParams& a,
                     bool conjugate) {
  const detail::RopeLayout lay =
      detail::check_rope(op, arg, x, a.positions, a.inv_freq, a.rotary_dim, a.layout,
                         a.cu_seqlens, a.attention_factor, a.xpos_zeta, a.xpos_scale_base);
  detail::check_rope_offset(op, a.positions, a.offset, detail::rope_seq_len(x, lay));
  const c10::cuda::CUDAGuard guard(x.device());
  if (a.positions.has_value() && a.positions->defined() &&
      detail::rope_positions_may_wrap(*a.positions, a.offset)) {
    // offset + positions[i] within int64: reads two numbers (a sync), never during a capture
    cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
    C10_CUDA_CHECK(cudaStreamIsCapturing(c10::cuda::getCurrentCUDAStream(), &status));
    if (status == cudaStreamCaptureStatusNone) {
      detail::check_rope_positions_offset(op, *a.positions, a.offset);
    }
  }
  const bool packed = lay == detail::RopeLayout::kThd;
  auto out = at::empty(x.sizes(), x.options());
  if (out.numel() == 0) return out;

  const auto inv_freq = a.inv_freq.contiguous();  // (R/2,): tiny
  const int64_t half = inv_freq.size(0);
  const bool exact = inv_freq.scalar_type() == at::kDouble;
  const bool bshd = lay == detail::RopeLayout::kBshd;
  const Bhsd xg = packed ? thd(x) : bhsd(x, bshd);
  const Bhsd og = packed ? thd(out) : bhsd(out, bshd);
  const int64_t B = xg.size[0], H = xg.size[1], S = xg.size[2], D = xg.size[3];

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
  at::Tensor cu;  // tiny; .contiguous() is an async device copy at most
  if (packed) cu = a.cu_seqlens->to(at::kLong).contiguous();
  at::Tensor zeta;
  if (a.xpos_zeta.has_value() && a.xpos_zeta->defined()) zeta = a.xpos_zeta->contiguous();

  const RowLaunch l = row_launch(B, H, S, D, half);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "rope_cuda", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const Magnitude<opmath_t> mag{zeta.defined() ? zeta.const_data_ptr<float>() : nullptr,
                                  static_cast<opmath_t>(a.attention_factor),
                                  static_cast<opmath_t>(a.xpos_scale_base), a.xpos_inverse,
                                  a.xpos_centre};
    rope_kernel<scalar_t><<<cuda::num_blocks(l.units), l.block, 0, stream>>>(
        x.const_data_ptr<scalar_t>(), xg, out.mutable_data_ptr<scalar_t>(), og, pos, pos_sb,
        pos_ss, packed ? cu.const_data_ptr<int64_t>() : nullptr, packed ? cu.size(0) : 0,
        a.offset, exact ? nullptr : inv_freq.const_data_ptr<float>(),
        exact ? inv_freq.const_data_ptr<double>() : nullptr, half, mag, a.interleaved, conjugate,
        l.units, l.head_chunks, l.heads_per_thread);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

// Rotates `src` (x, or the upstream gradient when adjoint) into a fresh contiguous tensor.
at::Tensor launch_apply_rotary(const at::Tensor& src, const at::Tensor& cos, const at::Tensor& sin,
                               bool interleaved, bool bshd, bool adjoint) {
  auto out = at::empty(src.sizes(), src.options());
  const Bhsd sg = bhsd(src, bshd);
  const Bhsd og = bhsd(out, bshd);
  const int64_t B = sg.size[0], H = sg.size[1], S = sg.size[2], D = sg.size[3];
  const int64_t half = cos.size(-1) / 2;
  const RowLaunch l = row_launch(B, H, S, D, half);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, src.scalar_type(), "apply_rotary_pos_emb_cuda", [&] {
    apply_rotary_kernel<scalar_t><<<cuda::num_blocks(l.units), l.block, 0, stream>>>(
        src.const_data_ptr<scalar_t>(), sg, out.mutable_data_ptr<scalar_t>(), og,
        cos.const_data_ptr<scalar_t>(), table(cos), sin.const_data_ptr<scalar_t>(), table(sin),
        half, interleaved, adjoint, l.units, l.head_chunks, l.heads_per_thread);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor apply_rotary_pos_emb_forward_cuda(const at::Tensor& x, const at::Tensor& cos,
                                             const at::Tensor& sin, bool interleaved,
                                             c10::string_view layout) {
  const bool bshd = detail::check_apply_rotary("apply_rotary_pos_emb", x, cos, sin, layout);
  const c10::cuda::CUDAGuard guard(x.device());
  if (x.numel() == 0) return at::empty(x.sizes(), x.options());
  return launch_apply_rotary(x, cos, sin, interleaved, bshd, /*adjoint=*/false);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> apply_rotary_pos_emb_backward_cuda(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin,
    bool interleaved, c10::string_view layout) {
  const bool bshd =
      detail::check_apply_rotary_backward("apply_rotary_pos_emb_backward", grad, x, cos, sin, layout);
  const c10::cuda::CUDAGuard guard(x.device());
  if (x.numel() == 0) {
    return {at::empty(x.sizes(), x.options()), at::zeros(cos.sizes(), cos.options()),
            at::zeros(sin.sizes(), sin.options())};
  }
  auto grad_x = launch_apply_rotary(grad, cos, sin, interleaved, bshd, /*adjoint=*/true);
  auto grad_cos = at::empty(cos.sizes(), cos.options());
  auto grad_sin = at::empty(sin.sizes(), sin.options());
  if (grad_cos.numel() == 0) return {grad_x, grad_cos, grad_sin};

  const Bhsd xg = bhsd(x, bshd);
  const Bhsd gg = bhsd(grad, bshd);
  const int64_t B = xg.size[0], H = xg.size[1], S = xg.size[2];
  const int64_t half = cos.size(-1) / 2;
  const bool batched = cos.dim() == 3;
  const int64_t table_rows = (batched ? B : 1) * S;
  const int64_t nbh = (batched ? 1 : B) * H;
  const int tx = cuda::pow2_at_least(half, 32);
  const int ty = std::min(kThreads / tx, cuda::pow2_at_least(nbh, kThreads));
  const dim3 block(tx, ty);
  const size_t smem = sizeof(double) * 4 * tx * ty;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "apply_rotary_pos_emb_backward_cuda", [&] {
    apply_rotary_table_grad_kernel<scalar_t><<<cuda::num_blocks(table_rows), block, smem, stream>>>(
        x.const_data_ptr<scalar_t>(), xg, grad.const_data_ptr<scalar_t>(), gg,
        grad_cos.mutable_data_ptr<scalar_t>(), grad_sin.mutable_data_ptr<scalar_t>(), half,
        interleaved, batched, table_rows);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {grad_x, grad_cos, grad_sin};
}

}  // namespace
}  // namespace posenc

TORCH_LIBRARY_IMPL(posenc, CUDA, m) {
  m.impl("rope", &posenc::detail::rope_kernel_entry<posenc::rope_cuda, false>);
  m.impl("rope_backward", &posenc::detail::rope_kernel_entry<posenc::rope_cuda, true>);
  m.impl("apply_rotary_pos_emb", &posenc::apply_rotary_pos_emb_forward_cuda);
  m.impl("apply_rotary_pos_emb_backward", &posenc::apply_rotary_pos_emb_backward_cuda);
}
