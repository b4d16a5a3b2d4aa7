// RoPE (Su et al. 2021) against an fp64 reference written in plain ATen from the paper.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <tuple>
#include <vector>

#include "posenc/ops.h"
#include "test_util.h"

namespace {

using posenc::ops::apply_rotary_pos_emb;
using posenc::ops::rope;
using posenc::ops::rope_inv_freq;

const auto kF64 = torch::TensorOptions().dtype(torch::kFloat64);

// Splits the first R dims into the two members of each pair.
std::tuple<at::Tensor, at::Tensor> split_pairs(const at::Tensor& x, int64_t R, bool interleaved) {
  if (interleaved) {
    return {x.slice(-1, 0, R, 2), x.slice(-1, 1, R, 2)};
  }
  return {x.slice(-1, 0, R / 2), x.slice(-1, R / 2, R)};
}

at::Tensor join_pairs(const at::Tensor& a, const at::Tensor& b, const at::Tensor& rest,
                      bool interleaved) {
  auto rot = interleaved ? torch::stack({a, b}, -1).flatten(-2) : torch::cat({a, b}, -1);
  return torch::cat({rot, rest}, -1);
}

// Su et al. eq. 34 on an (B, H, S, D) tensor: pair k rotated by pos * base^(-2k/R), with the
// angle as given (B, S, R/2), in fp64.
at::Tensor ref_rotate(const at::Tensor& x, const at::Tensor& angle, int64_t R, bool interleaved) {
  auto [a, b] = split_pairs(x, R, interleaved);
  auto c = angle.cos().unsqueeze(1), s = angle.sin().unsqueeze(1);
  return join_pairs(a * c - b * s, b * c + a * s, x.slice(-1, R), interleaved);
}

// positions (B, S) int64 -> fp64 angles from an fp64 inv_freq (the paper's numbers).
at::Tensor ref_angles(const at::Tensor& positions, int64_t R, double base) {
  auto i = torch::arange(0, R, 2, kF64);
  auto inv = torch::pow(base, -i / static_cast<double>(R));
  return positions.to(torch::kFloat64).unsqueeze(-1) * inv;
}

// The angles the op is specified to use: a float32 product of float(pos) and inv_freq.
at::Tensor f32_angles(const at::Tensor& positions, const at::Tensor& inv_freq) {
  return (positions.to(torch::kFloat32).unsqueeze(-1) * inv_freq).to(torch::kFloat64);
}

at::Tensor default_positions(int64_t B, int64_t S, int64_t offset) {
  return (torch::arange(S, torch::kLong) + offset).expand({B, S});
}

struct Case {
  int64_t B, H, S, D, R, offset;
  bool interleaved;
  std::string layout;
  bool pos2d;
};

class RopeForward : public ::testing::TestWithParam<Case> {};

TEST_P(RopeForward, MatchesPaperReference) {
  const auto c = GetParam();
  torch::manual_seed(0);
  auto x = torch::randn({c.B, c.H, c.S, c.D}, kF64);  // bhsd for the reference
  auto inv = rope_inv_freq(c.R);
  std::optional<at::Tensor> positions;
  at::Tensor pos = default_positions(c.B, c.S, c.offset);
  if (c.pos2d) {
    positions = torch::randint(0, 300, {c.B, c.S}, torch::kLong);
    pos = *positions + c.offset;
  }
  const bool bshd = c.layout == "bshd";
  auto x_in = bshd ? x.transpose(1, 2).contiguous() : x;
  auto out = rope(x_in, positions, inv, c.offset, c.R, c.interleaved, c.layout);
  ASSERT_EQ(out.sizes(), x_in.sizes());
  ASSERT_TRUE(out.is_contiguous());
  if (bshd) out = out.transpose(1, 2);

  // Paper's fp64 angles: the op's float32 angles are off by at most ~1.2e-7 * pos rad, so the
  // output by that times a pair's norm.
  auto want = ref_rotate(x, ref_angles(pos, c.R, 10000.0), c.R, c.interleaved);
  const double tol = 2.4e-7 * (pos.max().item<double>() + 1) * 2 * x.abs().max().item<double>();
  EXPECT_TRUE(torch::allclose(out, want, 0, tol)) << (out - want).abs().max() << " > " << tol;
  // With the specified float32 angles the fp64 op is exact to fp64 rounding.
  auto exact = ref_rotate(x, f32_angles(pos, inv), c.R, c.interleaved);
  EXPECT_TRUE(torch::allclose(out, exact, 1e-12, 1e-12)) << (out - exact).abs().max();
  // Dims >= R pass through bit-exactly.
  EXPECT_TRUE(torch::equal(out.slice(-1, c.R), x.slice(-1, c.R)));
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, RopeForward,
    ::testing::Values(Case{2, 3, 5, 8, 8, 0, false, "bhsd", false},
                      Case{2, 3, 5, 8, 8, 0, true, "bhsd", false},
                      Case{1, 2, 7, 16, 8, 11, false, "bshd", false},
                      Case{1, 2, 7, 16, 8, 11, true, "bshd", false},
                      Case{3, 1, 4, 10, 6, 3, false, "bhsd", true},
                      Case{3, 2, 4, 12, 12, 0, true, "bshd", true},
                      Case{1, 1, 1, 65, 64, 1857, false, "bhsd", false}));

TEST(Rope, DtypesAgreeWithFp64) {
  torch::manual_seed(1);
  auto x = torch::randn({2, 3, 6, 8}, kF64);
  auto inv = rope_inv_freq(8);
  auto want = rope(x, std::nullopt, inv, 4);
  for (auto dt : {torch::kFloat32, torch::kFloat16, torch::kBFloat16}) {
    auto got = rope(x.to(dt), std::nullopt, inv, 4);
    EXPECT_EQ(got.scalar_type(), dt);
    const double tol = dt == torch::kFloat32 ? 1e-6 : (dt == torch::kFloat16 ? 4e-3 : 3e-2);
    EXPECT_TRUE(torch::allclose(got.to(torch::kFloat64), want, tol, tol)) << dt;
  }
}

TEST(Rope, StridedViewEqualsContiguous) {
  // A (5, 48) packed qkv buffer: q columns as (1, 5, 2, 8) bshd, and every other dim of it.
  auto qkv = torch::randn({5, 48});
  auto before = qkv.clone();
  auto q = qkv.slice(1, 0, 16).view({1, 5, 2, 8});
  auto inv = rope_inv_freq(8);
  EXPECT_TRUE(torch::equal(rope(q, std::nullopt, inv, 3, std::nullopt, false, "bshd"),
                           rope(q.contiguous(), std::nullopt, inv, 3, std::nullopt, false, "bshd")));
  auto every_other = q.slice(-1, 0, 8, 2);  // last-dim stride 2
  auto inv4 = rope_inv_freq(4);
  EXPECT_TRUE(torch::equal(rope(every_other, std::nullopt, inv4, 0, 4, true, "bshd"),
                           rope(every_other.contiguous(), std::nullopt, inv4, 0, 4, true, "bshd")));
  EXPECT_TRUE(torch::equal(qkv, before));
}

TEST(Rope, AutogradMatchesReference) {
  torch::manual_seed(2);
  for (bool interleaved : {false, true}) {
    auto x = torch::randn({2, 2, 5, 6}, kF64).requires_grad_();
    auto g = torch::randn({2, 2, 5, 6}, kF64);
    auto inv = rope_inv_freq(4);
    (rope(x, std::nullopt, inv, 2, 4, interleaved) * g).sum().backward();
    auto x2 = x.detach().clone().requires_grad_();
    auto pos = default_positions(2, 5, 2);
    (ref_rotate(x2, f32_angles(pos, inv), 4, interleaved) * g).sum().backward();
    EXPECT_TRUE(torch::allclose(x.grad(), x2.grad(), 1e-12, 1e-12));
  }
}

TEST(ApplyRotaryPosEmb, MatchesHuggingFaceFormula) {
  torch::manual_seed(3);
  for (bool interleaved : {false, true}) {
    auto x = torch::randn({2, 3, 4, 10}, kF64);
    auto cos = torch::randn({2, 4, 6}, kF64), sin = torch::randn({2, 4, 6}, kF64);
    auto out = apply_rotary_pos_emb(x, cos, sin, interleaved);
    // x * cos + rotate(x) * sin on the first 6 dims.
    auto [a, b] = split_pairs(x, 6, interleaved);
    auto rot = join_pairs(-b, a, x.slice(-1, 6, 6), interleaved);
    auto want = x.slice(-1, 0, 6) * cos.unsqueeze(1) + rot * sin.unsqueeze(1);
    EXPECT_TRUE(torch::allclose(out.slice(-1, 0, 6), want, 1e-12, 1e-12));
    EXPECT_TRUE(torch::equal(out.slice(-1, 6), x.slice(-1, 6)));
  }
}

TEST(ApplyRotaryPosEmb, C08AsymmetricTableAdjoint) {
  auto x = torch::tensor({0.3, -0.7}, kF64).view({1, 1, 1, 2}).requires_grad_();
  auto cos = torch::tensor({1.0, 1.0}, kF64).view({1, 2}).requires_grad_();
  auto sin = torch::tensor({0.5, 0.1}, kF64).view({1, 2}).requires_grad_();
  apply_rotary_pos_emb(x, cos, sin).backward(torch::ones({1, 1, 1, 2}, kF64));
  EXPECT_TRUE(torch::allclose(x.grad().flatten(), torch::tensor({1.1, 0.5}, kF64)));
  // grad_cos = g * x, grad_sin = g * rotate_half(x) = [-x1, x0].
  EXPECT_TRUE(torch::allclose(cos.grad().flatten(), torch::tensor({0.3, -0.7}, kF64)));
  EXPECT_TRUE(torch::allclose(sin.grad().flatten(), torch::tensor({0.7, 0.3}, kF64)));
}

TEST(ApplyRotaryPosEmb, AutogradMatchesReference) {
  torch::manual_seed(4);
  for (bool interleaved : {false, true}) {
    for (bool batched : {false, true}) {
      auto x = torch::randn({2, 3, 4, 6}, kF64).requires_grad_();
      std::vector<int64_t> ts = batched ? std::vector<int64_t>{2, 4, 4} : std::vector<int64_t>{4, 4};
      auto cos = torch::randn(ts, kF64).requires_grad_();
      auto sin = torch::randn(ts, kF64).requires_grad_();
      auto g = torch::randn({2, 3, 4, 6}, kF64);
      (apply_rotary_pos_emb(x, cos, sin, interleaved) * g).sum().backward();

      auto x2 = x.detach().clone().requires_grad_();
      auto c2 = cos.detach().clone().requires_grad_();
      auto s2 = sin.detach().clone().requires_grad_();
      auto [a, b] = split_pairs(x2, 4, interleaved);
      auto rot = join_pairs(-b, a, x2.slice(-1, 4, 4), interleaved);
      auto cu = batched ? c2.unsqueeze(1) : c2;
      auto su = batched ? s2.unsqueeze(1) : s2;
      auto want = torch::cat({x2.slice(-1, 0, 4) * cu + rot * su, x2.slice(-1, 4)}, -1);
      (want * g).sum().backward();
      EXPECT_TRUE(torch::allclose(x.grad(), x2.grad(), 1e-12, 1e-12));
      EXPECT_TRUE(torch::allclose(cos.grad(), c2.grad(), 1e-12, 1e-12));
      EXPECT_TRUE(torch::allclose(sin.grad(), s2.grad(), 1e-12, 1e-12));
    }
  }
}

using posenc_test::expect_error;

TEST(Rope, Errors) {
  auto x = torch::randn({1, 2, 3, 8});
  auto inv = rope_inv_freq(8);
  EXPECT_THROW(rope(x, std::nullopt, inv, 0, std::nullopt, false, "sbhd"), c10::Error);
  expect_error([&] { rope(x, std::nullopt, inv, 0, std::nullopt, false, "sbhd"); },
               "posenc.rope: argument 'layout' must be one of \"bhsd\", \"bshd\", \"thd\", but got \"sbhd\"");
  expect_error([&] { rope(x[0], std::nullopt, inv); }, "posenc.rope: argument 'x' must be a 4-D");
  expect_error([&] { rope(x, std::nullopt, inv, 0, 7); },
               "posenc.rope: argument 'rotary_dim' must be even and >= 0, but got 7");
  expect_error([&] { rope(x, std::nullopt, inv, 0, 6); },
               "argument 'rotary_dim' must equal 2 * len(inv_freq) = 8, but got 6");
  expect_error([&] { rope(x, std::nullopt, rope_inv_freq(10)); },
               "posenc.rope: argument 'inv_freq' must have at most head_dim / 2 elements");
  expect_error([&] { rope(x, torch::arange(4), inv); },
               "posenc.rope: argument 'positions' must have shape (3,) or (1, 3)");
  expect_error([&] { rope(x, torch::arange(3).to(torch::kShort), inv); },
               "argument 'positions' must have dtype int64 or int32, but got dtype Short");
  expect_error([&] { rope(x, std::nullopt, inv.to(torch::kInt)); },
               "argument 'inv_freq' must have dtype float32 (reference precision) or float64 "
               "(exact precision), but got dtype Int");
  expect_error([&] { rope(x.to(torch::kLong), std::nullopt, inv); },
               "argument 'x' must have dtype float16, bfloat16, float32 or float64");
  expect_error([&] { rope_inv_freq(3); },
               "posenc.rope_inv_freq: argument 'dim' must be even and > 0, but got 3");
}

TEST(ApplyRotaryPosEmb, Errors) {
  auto x = torch::randn({1, 2, 3, 8});
  auto t = torch::randn({3, 8});
  expect_error([&] { apply_rotary_pos_emb(x, torch::randn({3, 5}), torch::randn({3, 5})); },
               "posenc.apply_rotary_pos_emb: argument 'cos' must have an even last dim");
  expect_error([&] { apply_rotary_pos_emb(x, torch::randn({3, 10}), torch::randn({3, 10})); },
               "argument 'cos' must have a last dim (rotary_dim) <= head_dim (8)");
  expect_error([&] { apply_rotary_pos_emb(x, t, torch::randn({3, 6})); },
               "argument 'sin' must have the shape of 'cos'");
  expect_error([&] { apply_rotary_pos_emb(x, torch::randn({4, 8}), torch::randn({4, 8})); },
               "argument 'cos' must have shape (3, rotary_dim) or (1, 3, rotary_dim)");
  expect_error([&] { apply_rotary_pos_emb(x, t.to(torch::kDouble), t.to(torch::kDouble)); },
               "argument 'cos' must have the dtype of 'x'");
}


// Packed "thd": each sequence equals the bhsd op on that sequence alone (positions restart at
// offset) and the fp64 reference with per-sequence positions; the backward is the adjoint.
TEST(Rope, PackedThd) {
  const std::vector<int64_t> lengths = {3, 0, 5, 1};
  const auto cu = torch::tensor({0, 3, 3, 8, 9}, torch::kLong);
  const int64_t T = 9, H = 2, D = 10, R = 8, offset = 4;
  auto inv = rope_inv_freq(R);
  for (bool interleaved : {false, true}) {
    auto x = torch::randn({T, H, D}, kF64).requires_grad_();
    auto out = rope(x, std::nullopt, inv, offset, R, interleaved, "thd", cu);
    int64_t s0 = 0;
    std::vector<at::Tensor> pos;
    for (int64_t n : lengths) {
      auto seq = x.detach().slice(0, s0, s0 + n).transpose(0, 1).unsqueeze(0);
      auto alone = rope(seq, std::nullopt, inv, offset, R, interleaved, "bhsd");
      EXPECT_TRUE(torch::equal(out.detach().slice(0, s0, s0 + n), alone[0].transpose(0, 1)));
      pos.push_back(torch::arange(n, torch::kLong) + offset);
      s0 += n;
    }
    auto p = torch::cat(pos).unsqueeze(0);  // (1, T)
    auto xr = x.unsqueeze(0).transpose(1, 2);  // (1, H, T, D)
    auto want = ref_rotate(xr, f32_angles(p, inv), R, interleaved).transpose(1, 2)[0];
    EXPECT_TRUE(torch::allclose(out, want, 1e-12, 1e-12));
    auto g = torch::randn({T, H, D}, kF64);
    auto gx = torch::autograd::grad({out}, {x}, {g})[0];
    auto gw = torch::autograd::grad({want}, {x}, {g})[0];
    EXPECT_TRUE(torch::allclose(gx, gw, 1e-12, 1e-12));
  }
}

// attention_factor and xPos scale cos and sin of pair k by f * zeta_k^(+-(p - c) / sb); the
// pass-through dims are untouched.
TEST(Rope, Magnitudes) {
  const int64_t B = 2, H = 3, S = 5, D = 10, R = 8, offset = 6, centre = 2;
  const double f = 1.3, sb = 16.0;
  auto inv = rope_inv_freq(R);
  auto zeta = (torch::arange(0, R, 2, kF64) / R + 0.4) / 1.4;  // Sun et al. 2022, gamma = 0.4
  for (bool inverse : {false, true}) {
    for (bool interleaved : {false, true}) {
      auto x = torch::randn({B, H, S, D}, kF64).requires_grad_();
      auto out = rope(x, std::nullopt, inv, offset, R, interleaved, "bhsd", std::nullopt, f,
                      zeta.to(torch::kFloat32), sb, inverse, centre);
      auto p = default_positions(B, S, offset);
      auto e = (p.to(torch::kFloat64).unsqueeze(-1) - centre) / sb * (inverse ? -1.0 : 1.0);
      auto m = (f * torch::pow(zeta.to(torch::kFloat32).to(torch::kFloat64), e)).unsqueeze(1);
      auto rot = ref_rotate(x, f32_angles(p, inv), R, interleaved);
      auto [a, b] = split_pairs(rot, R, interleaved);
      auto want = join_pairs(a * m, b * m, rot.slice(-1, R), interleaved);
      EXPECT_TRUE(torch::allclose(out, want, 1e-12, 1e-12));
      EXPECT_TRUE(torch::equal(out.detach().slice(-1, R), x.detach().slice(-1, R)));
      auto g = torch::randn({B, H, S, D}, kF64);
      auto gx = torch::autograd::grad({out}, {x}, {g})[0];
      auto gw = torch::autograd::grad({want}, {x}, {g})[0];
      EXPECT_TRUE(torch::allclose(gx, gw, 1e-12, 1e-12));
    }
  }
}

TEST(Rope, PackedAndMagnitudeErrors) {
  auto x = torch::randn({5, 2, 8});
  auto inv = rope_inv_freq(8);
  auto cu = torch::tensor({0, 2, 5}, torch::kLong);
  expect_error([&] { rope(x, std::nullopt, inv, 0, std::nullopt, false, "thd"); },
               "posenc.rope: argument 'cu_seqlens' must be an int64 or int32 (num_seqs + 1,) tensor");
  expect_error([&] { rope(x, torch::arange(5), inv, 0, std::nullopt, false, "thd", cu); },
               "argument 'positions' must be None with layout \"thd\"");
  expect_error([&] { rope(x.unsqueeze(0), std::nullopt, inv, 0, std::nullopt, false, "bhsd", cu); },
               "argument 'cu_seqlens' must be None unless layout is \"thd\"");
  expect_error(
      [&] { rope(x, std::nullopt, inv, 0, std::nullopt, false, "thd", torch::tensor({0, 4, 3, 5})); },
      "argument 'cu_seqlens' must be non-decreasing, but got cu_seqlens[1] = 4 > cu_seqlens[2] = 3");
  expect_error([&] { rope(x, std::nullopt, inv, 0, std::nullopt, false, "thd", torch::tensor({0, 4})); },
               "argument 'cu_seqlens' must end at total_tokens (5), but got cu_seqlens[1] = 4");
  expect_error([&] { rope(x, std::nullopt, inv, 0, std::nullopt, false, "thd", torch::tensor({1, 5})); },
               "argument 'cu_seqlens' must start at 0, but got cu_seqlens[0] = 1");
  expect_error([&] { rope(x, std::nullopt, inv, 0, std::nullopt, false, "thd", cu, 1.0, torch::ones({3})); },
               "argument 'xpos_zeta' must have len(inv_freq) = 4 elements, but got shape [3]");
  expect_error([&] { rope(x, std::nullopt, inv, 0, std::nullopt, false, "thd", cu, 1.0, -torch::ones({4})); },
               "argument 'xpos_zeta' must be finite and > 0, but got xpos_zeta[0] = -1");
  expect_error([&] { rope(x, std::nullopt, inv, 0, std::nullopt, false, "thd", cu, 1.0, torch::ones({4}), 0.0); },
               "argument 'xpos_scale_base' must be finite and > 0, but got 0");
  expect_error([&] { rope(x, std::nullopt, inv, 0, std::nullopt, false, "thd", cu, NAN); },
               "argument 'attention_factor' must be finite, but got nan");
}

}  // namespace

namespace {

// Exact precision: float64 inv_freq gives fp64 angles; fp32 output within 1e-6 (relative to
// the largest magnitude) of the fp64 reference at positions up to 1e6, head_dim 128, base 1e6.
// Reference precision (float32 inv_freq, Hugging Face's float32 angle) is far outside that.
TEST(Rope, ExactPrecisionAtMillionPositions) {
  const int64_t B = 2, H = 2, S = 48, D = 128;
  const double base = 1e6;
  torch::manual_seed(3);
  auto pos = torch::randint(0, 1000001, {B, S}, torch::kLong);
  pos.index_put_({0, 0}, 1000000);
  auto x = torch::randn({B, H, S, D});
  auto ref = ref_rotate(x.to(torch::kFloat64), ref_angles(pos, D, base), D, false);
  const double scale = ref.abs().max().item<double>();

  auto inv64 = rope_inv_freq(D, base, torch::kCPU, torch::kFloat64);
  ASSERT_EQ(inv64.scalar_type(), torch::kFloat64);
  auto exact = rope(x, pos, inv64);
  ASSERT_EQ(exact.scalar_type(), torch::kFloat32);
  EXPECT_LE((exact.to(torch::kFloat64) - ref).abs().max().item<double>() / scale, 1e-6);

  auto reference = rope(x, pos, rope_inv_freq(D, base));
  EXPECT_GT((reference.to(torch::kFloat64) - ref).abs().max().item<double>() / scale, 1e-3);
}

TEST(Rope, PrecisionErrors) {
  auto x = torch::randn({1, 1, 3, 8});
  auto inv = rope_inv_freq(8);
  expect_error([&] { rope(x, std::nullopt, inv.to(torch::kHalf)); }, "posenc.rope: argument 'inv_freq' must have dtype float32 (reference precision) or float64");
  auto bad = inv.clone();
  bad.index_put_({2}, std::numeric_limits<float>::infinity());
  expect_error([&] { rope(x, std::nullopt, bad); }, "posenc.rope: argument 'inv_freq' must be finite, but got inv_freq[2] = inf");
  expect_error([&] { rope_inv_freq(8, 10000.0, torch::kCPU, torch::kHalf); },
               "posenc.rope_inv_freq: argument 'dtype' must be torch.float32");
  expect_error([&] { rope_inv_freq(8, std::numeric_limits<double>::infinity()); },
               "posenc.rope_inv_freq: argument 'base' must be finite and > 1");
}

}  // namespace

// rope_qk is defined as the two rope calls (k with the inverse xPos magnitude): bit for bit,
// grouped-query head counts, 1 and 2 threads, and its gradients are the two rope_backwards.
TEST(RopeQk, EqualsTwoRopeCallsBitForBit) {
  torch::manual_seed(7);
  const auto inv = rope_inv_freq(32);
  const auto zeta = torch::linspace(0.5, 1.0, 16);
  const auto q = torch::randn({2, 8, 45, 32}, torch::requires_grad());
  const auto k = torch::randn({2, 2, 45, 32}, torch::requires_grad());
  const int old_threads = at::get_num_threads();
  for (int threads : {1, 2}) {
    at::set_num_threads(threads);
    auto [qr, kr] = posenc::ops::rope_qk(q, k, std::nullopt, inv, 9, std::nullopt, false, "bhsd",
                                         std::nullopt, 1.25, zeta, 64.0, 3);
    const auto want_q = rope(q, std::nullopt, inv, 9, std::nullopt, false, "bhsd", std::nullopt,
                             1.25, zeta, 64.0, false, 3);
    const auto want_k = rope(k, std::nullopt, inv, 9, std::nullopt, false, "bhsd", std::nullopt,
                             1.25, zeta, 64.0, true, 3);
    EXPECT_TRUE(torch::equal(qr, want_q));
    EXPECT_TRUE(torch::equal(kr, want_k));
    const auto gq = torch::randn_like(qr), gk = torch::randn_like(kr);
    auto grads = torch::autograd::grad({qr, kr}, {q, k}, {gq, gk});
    auto want = torch::autograd::grad({want_q, want_k}, {q, k}, {gq, gk});
    EXPECT_TRUE(torch::equal(grads[0], want[0]));
    EXPECT_TRUE(torch::equal(grads[1], want[1]));
  }
  at::set_num_threads(old_threads);
  expect_error([&] { posenc::ops::rope_qk(q, k.narrow(2, 0, 40), std::nullopt, inv); },
               "posenc.rope_qk: argument 'k' must match 'q' of shape [2, 8, 45, 32] in every dim "
               "but the heads");
}
