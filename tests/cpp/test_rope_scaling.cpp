// RoPE scaling (RopeScalingConfig / compute_rope_parameters, xPos) against fp64 references
// written from the papers, the precedence rules, and the configuration errors.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <functional>
#include <numbers>
#include <string>
#include <vector>

#include "posenc/posenc.h"
#include "test_util.h"

namespace {

using posenc::compute_rope_parameters;
using posenc::RopeScalingConfig;
using posenc::RopeType;

constexpr double kPi = std::numbers::pi;
constexpr double kRtol = 3e-6;  // float32 result against an fp64 reference

// Su et al. 2021, eq. 15: theta_i = base^(-2i/d), i < ceil(d/2).
std::vector<double> theta(int64_t d, double base) {
  std::vector<double> t;
  for (int64_t i = 0; 2 * i < d; ++i) t.push_back(std::pow(base, -2.0 * i / d));
  return t;
}

void expect_close(const at::Tensor& got, const std::vector<double>& ref, double rtol = kRtol) {
  ASSERT_EQ(got.scalar_type(), at::kFloat);
  ASSERT_EQ(got.dim(), 1);
  ASSERT_EQ(got.size(0), static_cast<int64_t>(ref.size()));
  auto g = got.to(at::kDouble).contiguous();
  const double* p = g.data_ptr<double>();
  for (size_t i = 0; i < ref.size(); ++i) {
    EXPECT_NEAR(p[i], ref[i], rtol * std::abs(ref[i])) << "index " << i;
  }
}

using posenc_test::expect_error;

struct Grid {
  int64_t head_dim;
  double base;
  double partial;
};

std::vector<Grid> grid() {
  std::vector<Grid> g;
  for (int64_t hd : {64, 128}) {
    for (double b : {1e4, 5e5, 1e6}) {
      for (double p : {1.0, 0.5, 0.25}) g.push_back({hd, b, p});
    }
  }
  return g;
}

const std::vector<double> kFactors = {2.0, 4.0, 8.0, 16.0, 32.0, 64.0};

TEST(RopeScaling, TypeNames) {
  const std::vector<std::string> names = posenc::rope_type_names();
  ASSERT_EQ(names.size(), 8u);
  for (const auto& n : names) EXPECT_EQ(posenc::rope_type_name(posenc::parse_rope_type(n)), n);
  EXPECT_EQ(posenc::parse_rope_type("su"), RopeType::LongRoPE);
  expect_error([] { posenc::parse_rope_type("Yarn"); },
               "posenc.rope_scaling_inv_freq: argument 'rope_type' must be one of \"default\", "
               "\"linear\", \"ntk\", \"dynamic\", \"yarn\", \"llama3\", \"longrope\", \"xpos\", "
               "but got \"Yarn\" (did you mean \"yarn\"? names are case-sensitive)");
  expect_error([] { posenc::parse_rope_type("proportional"); }, "but got \"proportional\"");
  expect_error([] { posenc::parse_rope_type(""); }, "but got \"\"");
}

TEST(RopeScaling, DefaultAndPartialRotary) {
  for (const auto& g : grid()) {
    RopeScalingConfig c{.rope_theta = g.base, .head_dim = g.head_dim, .partial_rotary_factor = g.partial};
    const int64_t d = c.rotary_dim();
    EXPECT_EQ(d, static_cast<int64_t>(g.head_dim * g.partial));
    auto r = compute_rope_parameters(c);
    expect_close(r.inv_freq, theta(d, g.base));
    EXPECT_EQ(r.attention_factor, 1.0);
    EXPECT_FALSE(r.xpos_zeta.defined());
  }
  // odd rotary dimension: ceil(d/2) frequencies with exponents 2i/d (transformers' rounding up)
  RopeScalingConfig odd{.head_dim = 64, .partial_rotary_factor = 0.4};
  EXPECT_EQ(odd.rotary_dim(), 25);
  EXPECT_EQ(odd.num_frequencies(), 13);
  expect_close(compute_rope_parameters(odd).inv_freq, theta(25, 1e4));
}

TEST(RopeScaling, LinearPositionInterpolation) {
  // Chen et al. 2023 §2.2: f(x, m / s) <=> theta_i / s.
  for (const auto& g : grid()) {
    for (double s : kFactors) {
      RopeScalingConfig c{.type = RopeType::Linear, .rope_theta = g.base, .head_dim = g.head_dim,
                          .partial_rotary_factor = g.partial, .factor = s};
      auto ref = theta(c.rotary_dim(), g.base);
      for (auto& v : ref) v /= s;
      auto r = compute_rope_parameters(c);
      expect_close(r.inv_freq, ref);
      EXPECT_EQ(r.attention_factor, 1.0);
    }
  }
}

TEST(RopeScaling, NtkAwareStatic) {
  // bloc97; Peng et al. 2023 §3.2: base' = base * s^(d / (d - 2)).
  for (const auto& g : grid()) {
    for (double s : kFactors) {
      RopeScalingConfig c{.type = RopeType::NTK, .rope_theta = g.base, .head_dim = g.head_dim,
                          .partial_rotary_factor = g.partial, .factor = s};
      const int64_t d = c.rotary_dim();
      auto r = compute_rope_parameters(c);
      const auto ref = theta(d, g.base * std::pow(s, static_cast<double>(d) / (d - 2)));
      expect_close(r.inv_freq, ref);
      // highest frequency kept, lowest divided by exactly s
      const auto t = theta(d, g.base);
      EXPECT_NEAR(ref.back(), t.back() / s, 1e-12 * t.back());
      EXPECT_EQ(r.inv_freq[0].item<float>(), 1.0f);
    }
  }
}

TEST(RopeScaling, DynamicNtk) {
  const int64_t max_len = 2048;
  for (const auto& g : grid()) {
    for (double s : {2.0, 8.0, 64.0}) {
      RopeScalingConfig c{.type = RopeType::Dynamic, .rope_theta = g.base, .head_dim = g.head_dim,
                          .partial_rotary_factor = g.partial, .factor = s,
                          .max_position_embeddings = max_len};
      const int64_t d = c.rotary_dim();
      RopeScalingConfig plain{.rope_theta = g.base, .head_dim = g.head_dim,
                              .partial_rotary_factor = g.partial};
      const auto def = compute_rope_parameters(plain).inv_freq;
      // rule 6: up to max_position_embeddings (and without seq_len) the default frequencies
      for (std::optional<int64_t> L : {std::optional<int64_t>(), std::optional<int64_t>(0),
                                       std::optional<int64_t>(max_len / 3),
                                       std::optional<int64_t>(max_len)}) {
        EXPECT_TRUE(torch::equal(compute_rope_parameters(c, L).inv_freq, def));
      }
      for (int64_t L : {max_len + 1, 2 * max_len, 5 * max_len + 3, 100 * max_len}) {
        const double scale = s * L / max_len - (s - 1);
        auto r = compute_rope_parameters(c, L);
        expect_close(r.inv_freq, theta(d, g.base * std::pow(scale, static_cast<double>(d) / (d - 2))));
        EXPECT_EQ(r.attention_factor, 1.0);
      }
    }
  }
}

// YaRN (Peng et al. 2023 §3.3 NTK-by-parts, §3.5 attention scaling), written from the paper.
std::vector<double> yarn_ref(int64_t d, double base, double s, double L, double fast, double slow,
                             bool truncate) {
  auto r = [&](double n) { return d * std::log(L / (2 * kPi * n)) / (2 * std::log(base)); };
  double lo = r(fast), hi = r(slow);
  if (truncate) {
    lo = std::floor(lo);
    hi = std::ceil(hi);
  }
  lo = std::max(lo, 0.0);
  hi = std::min(hi, static_cast<double>(d - 1));
  if (lo == hi) hi += 0.001;
  auto t = theta(d, base);
  for (size_t i = 0; i < t.size(); ++i) {
    const double ramp = std::clamp((static_cast<double>(i) - lo) / (hi - lo), 0.0, 1.0);
    t[i] = t[i] / s * ramp + t[i] * (1 - ramp);
  }
  return t;
}

TEST(RopeScaling, YaRN) {
  for (const auto& g : grid()) {
    for (double s : kFactors) {
      for (bool truncate : {true, false}) {
        RopeScalingConfig c{.type = RopeType::YaRN, .rope_theta = g.base, .head_dim = g.head_dim,
                            .partial_rotary_factor = g.partial, .factor = s,
                            .original_max_position_embeddings = 4096, .truncate = truncate};
        auto r = compute_rope_parameters(c);
        // The float32 ramp (as transformers computes it) is off by ~1e-7 absolute; where the
        // mix is mostly theta / s that is up to ~1e-7 * s relative to the result.
        expect_close(r.inv_freq, yarn_ref(c.rotary_dim(), g.base, s, 4096, 32, 1, truncate),
                     kRtol + 2e-7 * s);
        EXPECT_NEAR(r.attention_factor, 0.1 * std::log(s) + 1.0, 1e-15);
      }
    }
  }
  RopeScalingConfig c{.type = RopeType::YaRN, .rope_theta = 1e4, .head_dim = 128, .factor = 16.0,
                      .original_max_position_embeddings = 4096, .beta_fast = 8.0, .beta_slow = 2.0};
  expect_close(compute_rope_parameters(c).inv_freq, yarn_ref(128, 1e4, 16.0, 4096, 8, 2, true));
}

TEST(RopeScaling, YaRNPrecedence) {
  const auto ms = [](double s, double m) { return s <= 1 ? 1.0 : 0.1 * m * std::log(s) + 1.0; };
  RopeScalingConfig c{.type = RopeType::YaRN, .rope_theta = 1e4, .head_dim = 64, .factor = 40.0,
                      .original_max_position_embeddings = 4096};
  EXPECT_DOUBLE_EQ(compute_rope_parameters(c).attention_factor, ms(40.0, 1.0));
  // rule 2: both mscale terms -> their ratio; one alone or a zero -> the plain formula
  c.mscale = 0.707;
  EXPECT_DOUBLE_EQ(compute_rope_parameters(c).attention_factor, ms(40.0, 1.0));
  c.mscale_all_dim = 0.0;
  EXPECT_DOUBLE_EQ(compute_rope_parameters(c).attention_factor, ms(40.0, 1.0));
  c.mscale = 1.0;
  c.mscale_all_dim = 0.5;
  EXPECT_DOUBLE_EQ(compute_rope_parameters(c).attention_factor, ms(40.0, 1.0) / ms(40.0, 0.5));
  // rule 1: explicit attention_factor wins
  c.attention_factor = 0.9;
  EXPECT_EQ(compute_rope_parameters(c).attention_factor, 0.9);
  // rule 4: no factor -> max / original; explicit wins
  RopeScalingConfig ratio{.type = RopeType::YaRN, .rope_theta = 1e4, .head_dim = 64,
                          .max_position_embeddings = 4096 * 8,
                          .original_max_position_embeddings = 4096};
  RopeScalingConfig eight = ratio;
  eight.factor = 8.0;
  eight.max_position_embeddings = std::nullopt;
  auto a = compute_rope_parameters(ratio), b = compute_rope_parameters(eight);
  EXPECT_TRUE(torch::equal(a.inv_freq, b.inv_freq));
  EXPECT_EQ(a.attention_factor, b.attention_factor);
  ratio.factor = 2.0;
  EXPECT_NEAR(compute_rope_parameters(ratio).attention_factor, ms(2.0, 1.0), 1e-15);
  // rule 5: beta 0 means the default 32 / 1
  RopeScalingConfig zero = eight;
  zero.beta_fast = 0.0;
  zero.beta_slow = 0.0;
  EXPECT_TRUE(torch::equal(compute_rope_parameters(zero).inv_freq, b.inv_freq));
  // s <= 1: attention factor 1
  eight.factor = 1.0;
  EXPECT_EQ(compute_rope_parameters(eight).attention_factor, 1.0);
}

TEST(RopeScaling, Llama3Bands) {
  for (const auto& g : grid()) {
    for (double s : kFactors) {
      for (auto [lo, hi] : {std::pair{1.0, 4.0}, std::pair{2.0, 8.0}}) {
        const double L = 8192;
        RopeScalingConfig c{.type = RopeType::Llama3, .rope_theta = g.base, .head_dim = g.head_dim,
                            .partial_rotary_factor = g.partial, .factor = s,
                            .original_max_position_embeddings = 8192, .low_freq_factor = lo,
                            .high_freq_factor = hi};
        auto ref = theta(c.rotary_dim(), g.base);
        for (auto& f : ref) {
          const double wl = 2 * kPi / f;
          if (wl < L / hi) continue;
          if (wl > L / lo) {
            f /= s;
          } else {
            const double mu = (L / wl - lo) / (hi - lo);
            f = (1 - mu) * f / s + mu * f;
          }
        }
        auto r = compute_rope_parameters(c);
        expect_close(r.inv_freq, ref);
        EXPECT_EQ(r.attention_factor, 1.0);
      }
    }
  }
}

TEST(RopeScaling, LongRoPESwitchAndAttentionFactor) {
  const int64_t L = 4096;
  for (const auto& g : grid()) {
    RopeScalingConfig c{.type = RopeType::LongRoPE, .rope_theta = g.base, .head_dim = g.head_dim,
                        .partial_rotary_factor = g.partial, .factor = 32.0,
                        .original_max_position_embeddings = L};
    const int64_t n = c.num_frequencies();
    for (int64_t i = 0; i < n; ++i) {
      c.short_factor.push_back(1.0 + 0.05 * i);
      c.long_factor.push_back(1.0 + 1.5 * i);
    }
    auto short_ref = theta(c.rotary_dim(), g.base), long_ref = short_ref;
    for (int64_t i = 0; i < n; ++i) {
      short_ref[i] /= c.short_factor[i];
      long_ref[i] /= c.long_factor[i];
    }
    for (std::optional<int64_t> sl : {std::optional<int64_t>(), std::optional<int64_t>(0),
                                      std::optional<int64_t>(L - 1), std::optional<int64_t>(L)}) {
      expect_close(compute_rope_parameters(c, sl).inv_freq, short_ref);
    }
    for (int64_t sl : {L + 1, 2 * L, 1000 * L}) {
      expect_close(compute_rope_parameters(c, sl).inv_freq, long_ref);
    }
    // Ding et al. / Phi-3: sqrt(1 + ln s / ln L)
    EXPECT_NEAR(compute_rope_parameters(c).attention_factor,
                std::sqrt(1 + std::log(32.0) / std::log(4096.0)), 1e-15);
    c.factor = std::nullopt;  // rule 4: max / original
    c.max_position_embeddings = 16 * L;
    EXPECT_NEAR(compute_rope_parameters(c).attention_factor,
                std::sqrt(1 + std::log(16.0) / std::log(4096.0)), 1e-15);
    c.attention_factor = 1.3;  // rule 1
    EXPECT_EQ(compute_rope_parameters(c).attention_factor, 1.3);
  }
}

TEST(RopeScaling, ExplicitAttentionFactorForEveryType) {
  for (auto t : {RopeType::Default, RopeType::Linear, RopeType::NTK, RopeType::XPos}) {
    RopeScalingConfig c{.type = t, .head_dim = 64, .factor = 2.0, .attention_factor = 0.5};
    EXPECT_EQ(compute_rope_parameters(c).attention_factor, 0.5);
  }
}

TEST(RopeScaling, XPos) {
  // Sun et al. 2022 §3.2: zeta_i = (2i/d + gamma) / (1 + gamma); q_n scaled by
  // zeta^((n - c)/B), k_m by zeta^(-(m - c)/B).
  RopeScalingConfig c{.type = RopeType::XPos, .rope_theta = 1e4, .head_dim = 64, .xpos_gamma = 0.4};
  auto r = compute_rope_parameters(c);
  expect_close(r.inv_freq, theta(64, 1e4));
  EXPECT_EQ(r.attention_factor, 1.0);
  ASSERT_TRUE(r.xpos_zeta.defined());
  std::vector<double> zref;
  for (int64_t i = 0; i < 32; ++i) zref.push_back((2.0 * i / 64 + 0.4) / 1.4);
  expect_close(r.xpos_zeta, zref, 1e-7);

  auto pos = torch::tensor({0, 3, 100, 511, 5000}, torch::kLong);
  const int64_t centre = 250;
  const double B = 512.0;
  auto zd = r.xpos_zeta.to(torch::kDouble);
  auto q = posenc::ops::xpos_scale(pos, zd, B, centre);
  auto k = posenc::ops::xpos_scale(pos, zd, B, centre, /*inverse=*/true);
  ASSERT_EQ(q.sizes(), (std::vector<int64_t>{5, 32}));
  ASSERT_EQ(q.scalar_type(), torch::kDouble);
  auto qa = q.accessor<double, 2>(), ka = k.accessor<double, 2>();
  auto za = zd.accessor<double, 1>();
  const std::vector<int64_t> p = {0, 3, 100, 511, 5000};
  for (int64_t n = 0; n < 5; ++n) {
    for (int64_t i = 0; i < 32; ++i) {
      const double e = static_cast<double>(p[n] - centre) / B;
      EXPECT_NEAR(qa[n][i], std::pow(za[i], e), 1e-13 * std::pow(za[i], e));
      EXPECT_NEAR(ka[n][i], std::pow(za[i], -e), 1e-13 * std::pow(za[i], -e));
    }
  }
  // the product for query n and key m depends on n - m only, whatever the centre
  auto q0 = posenc::ops::xpos_scale(pos, zd, B, 0), k0 = posenc::ops::xpos_scale(pos, zd, B, 0, true);
  EXPECT_TRUE(torch::allclose(q[2] * k[1], q0[2] * k0[1], 1e-13, 0));
  // float32 zeta gives float32 factors
  EXPECT_EQ(posenc::ops::xpos_scale(pos, r.xpos_zeta).scalar_type(), torch::kFloat);
  // gradient through zeta: d/dz z^e = e z^(e-1)
  auto z = zd.clone().requires_grad_();
  posenc::ops::xpos_scale(pos.slice(0, 4, 5), z, B, centre).sum().backward();
  const double e = (5000.0 - centre) / B;
  auto ga = z.grad().accessor<double, 1>();
  for (int64_t i = 0; i < 32; ++i) EXPECT_NEAR(ga[i], e * std::pow(za[i], e - 1), 1e-10 * std::abs(ga[i]));
}

TEST(RopeScaling, OpTwinAndDevice) {
  auto [inv, af] = posenc::ops::rope_scaling_inv_freq(
      "yarn", 1e6, 128, 0.5, 8.0, std::nullopt, 4096);
  RopeScalingConfig c{.type = RopeType::YaRN, .rope_theta = 1e6, .head_dim = 128,
                      .partial_rotary_factor = 0.5, .factor = 8.0,
                      .original_max_position_embeddings = 4096};
  auto r = compute_rope_parameters(c);
  EXPECT_TRUE(torch::equal(inv, r.inv_freq));
  EXPECT_EQ(af, r.attention_factor);
  auto meta = compute_rope_parameters(c, std::nullopt, at::Device(at::kMeta));
  EXPECT_TRUE(meta.inv_freq.is_meta());
  EXPECT_EQ(meta.inv_freq.sizes(), r.inv_freq.sizes());
  // the C++ twin of the config fields, longrope lists included
  auto [lr, laf] = posenc::ops::rope_scaling_inv_freq(
      "longrope", 1e4, 8, 1.0, 2.0, std::nullopt, 16, std::nullopt, std::nullopt, std::nullopt,
      std::nullopt, std::nullopt, true, std::nullopt, std::nullopt,
      std::vector<double>{1, 2, 3, 4}, std::vector<double>{4, 3, 2, 1}, 0.4, 512.0, 17);
  expect_close(lr, {1.0 / 4, std::pow(1e4, -0.25) / 3, std::pow(1e4, -0.5) / 2, std::pow(1e4, -0.75)});
  EXPECT_NEAR(laf, std::sqrt(1 + std::log(2.0) / std::log(16.0)), 1e-15);
}

TEST(RopeScaling, Errors) {
  const std::string op = "posenc.rope_scaling_inv_freq: argument ";
  auto check = [&](RopeScalingConfig c, const std::string& needle,
                   std::optional<int64_t> seq_len = std::nullopt) {
    EXPECT_THROW(c.validate(), c10::Error) << needle;
    expect_error([&] { compute_rope_parameters(c, seq_len); }, op + needle);
  };
  check({.head_dim = 0}, "'head_dim' must be > 0, but got 0");
  check({.head_dim = 64, .partial_rotary_factor = 0.0}, "'partial_rotary_factor' must be in (0, 1], but got 0");
  check({.head_dim = 64, .partial_rotary_factor = 0.01},
        "'partial_rotary_factor' must leave a rotary dimension int(head_dim * partial_rotary_factor) "
        ">= 2 (head_dim 64), but got 0.01 (rotary dimension 0)");
  check({.rope_theta = 0.5, .head_dim = 64}, "'rope_theta' must be finite and > 1, but got 0.5");
  check({.head_dim = 64, .attention_factor = -1.0}, "'attention_factor' must be finite and > 0 (or None), but got -1");
  check({.type = RopeType::Linear, .head_dim = 64}, "'factor' must be given for rope_type \"linear\", but got None");
  check({.type = RopeType::Linear, .head_dim = 64, .factor = 0.0},
        "'factor' must be finite and > 0 for rope_type \"linear\", but got 0");
  check({.type = RopeType::NTK, .head_dim = 2, .factor = 2.0},
        "'partial_rotary_factor' must leave a rotary dimension > 2 for rope_type \"ntk\"");
  check({.type = RopeType::Dynamic, .head_dim = 64, .factor = 2.0},
        "'max_position_embeddings' must be given for rope_type \"dynamic\", but got None");
  check({.type = RopeType::YaRN, .head_dim = 64, .factor = 2.0},
        "'original_max_position_embeddings' must be given for rope_type \"yarn\", but got None");
  check({.type = RopeType::YaRN, .head_dim = 64, .original_max_position_embeddings = 10},
        "'factor' must be given for rope_type \"yarn\" unless max_position_embeddings is");
  check({.type = RopeType::YaRN, .head_dim = 64, .factor = 2.0, .original_max_position_embeddings = 10,
         .beta_fast = 1.0, .beta_slow = 4.0},
        "'beta_fast' must be >= beta_slow (4) for rope_type \"yarn\", but got 1");
  check({.type = RopeType::YaRN, .head_dim = 50, .partial_rotary_factor = 0.5, .factor = 2.0,
         .original_max_position_embeddings = 10},
        "'partial_rotary_factor' must give an even rotary dimension for rope_type \"yarn\" (head_dim 50), "
        "but got 0.5 (rotary dimension 25)");
  check({.type = RopeType::Llama3, .head_dim = 64, .factor = 8.0, .original_max_position_embeddings = 10,
         .low_freq_factor = 4.0, .high_freq_factor = 4.0},
        "'high_freq_factor' must be > low_freq_factor (4) for rope_type \"llama3\", but got 4");
  check({.type = RopeType::LongRoPE, .head_dim = 8, .factor = 2.0, .original_max_position_embeddings = 10,
         .short_factor = {1, 1, 1}, .long_factor = {1, 1, 1, 1}},
        "'short_factor' must have 4 values (one per frequency, ceil(rotary_dim / 2)) for rope_type "
        "\"longrope\", but got 3 values");
  check({.type = RopeType::LongRoPE, .head_dim = 8, .factor = 2.0, .original_max_position_embeddings = 10,
         .short_factor = {1, 1, 1, 1}, .long_factor = {1, 1, -1, 1}},
        "'long_factor' must hold finite values > 0 for rope_type \"longrope\", but got -1 at index 2");
  check({.type = RopeType::XPos, .head_dim = 8, .xpos_gamma = 0.0}, "'xpos_gamma' must be finite and > 0");
  RopeScalingConfig ok{.head_dim = 8};
  expect_error([&] { compute_rope_parameters(ok, -3); }, op + "'seq_len' must be >= 0 (or None), but got -3");

  expect_error([] { posenc::ops::xpos_zeta(0); }, "posenc.xpos_zeta: argument 'rotary_dim' must be > 0, but got 0");
  auto z = posenc::ops::xpos_zeta(8);
  expect_error([&] { posenc::ops::xpos_scale(torch::zeros({3}), z); },
               "posenc.xpos_scale: argument 'positions' must have dtype int64 or int32, but got dtype Float");
  expect_error([&] { posenc::ops::xpos_scale(torch::arange(3), z, 0.0); },
               "posenc.xpos_scale: argument 'scale_base' must be finite and > 0, but got 0");
}

}  // namespace
