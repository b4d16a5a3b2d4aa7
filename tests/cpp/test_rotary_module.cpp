// posenc::nn::RotaryEmbedding with RoPE scalings, xPos, packed sequences and the precision
// modes: every rope type against an fp64 rotation written here from RoFormer eq. 34 (with
// compute_rope_parameters' frequencies and attention factor, xPos of Sun et al. 2022 §3.2),
// the length-dependent types' switch, exact precision at positions up to 1e6, thd == per
// sequence bhsd, option and input errors, dtype/device moves of the tables.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <sstream>
#include <string>
#include <vector>

#include "posenc/posenc.h"
#include "test_util.h"

namespace pn = posenc::nn;
namespace po = posenc::ops;
using posenc::RopeScalingConfig;
using posenc::RopeType;

namespace {

constexpr int64_t kHeadDim = 16;
constexpr int64_t kOrig = 32;

using posenc_test::expect_error;

void expect_equal(const torch::Tensor& a, const torch::Tensor& b) {
  ASSERT_EQ(a.sizes(), b.sizes());
  ASSERT_EQ(a.scalar_type(), b.scalar_type());
  EXPECT_TRUE(torch::equal(a, b)) << "max abs diff " << (a - b).abs().max().item<double>();
}

void expect_close(const torch::Tensor& a, const torch::Tensor& want, double tol) {
  ASSERT_EQ(a.sizes(), want.sizes());
  const double diff = (a.to(torch::kDouble) - want).abs().max().item<double>();
  EXPECT_LE(diff, tol);
}

// A small config of each type (lengths that cross the switch points).
RopeScalingConfig config(RopeType type, double partial = 1.0) {
  RopeScalingConfig c;
  c.type = type;
  c.head_dim = kHeadDim;
  c.partial_rotary_factor = partial;
  const int64_t n = c.num_frequencies();
  switch (type) {
    case RopeType::Default:
      break;
    case RopeType::Linear:
    case RopeType::NTK:
      c.factor = 4.0;
      break;
    case RopeType::Dynamic:
      c.factor = 4.0;
      c.max_position_embeddings = kOrig;
      break;
    case RopeType::YaRN:
      c.factor = 4.0;
      c.original_max_position_embeddings = kOrig;
      break;
    case RopeType::Llama3:
      c.factor = 8.0;
      c.original_max_position_embeddings = kOrig;
      c.low_freq_factor = 1.0;
      c.high_freq_factor = 4.0;
      break;
    case RopeType::LongRoPE:
      c.factor = 4.0;
      c.original_max_position_embeddings = kOrig;
      for (int64_t i = 0; i < n; ++i) {
        c.short_factor.push_back(1.0 + 0.1 * static_cast<double>(i));
        c.long_factor.push_back(2.0 + 0.5 * static_cast<double>(i));
      }
      break;
    case RopeType::XPos:
      c.xpos_scale_base = 64.0;
      break;
  }
  return c;
}

const std::vector<RopeType> kTypes = {RopeType::Default, RopeType::Linear, RopeType::NTK,
                                      RopeType::Dynamic, RopeType::YaRN,   RopeType::Llama3,
                                      RopeType::LongRoPE, RopeType::XPos};

// fp64 RoPE (RoFormer eq. 34) of x (B, H, S, D) at absolute positions pos (S,): pair i
// (half-split) rotated by pos * inv_freq[i] (the float32 product when fp32_angle, as the
// reference precision documents), times af, times the xPos factor zeta_i^(+-(pos - c) / sb).
torch::Tensor ref_rope(const torch::Tensor& x_in, const torch::Tensor& pos,
                       const torch::Tensor& inv_freq, double af = 1.0,
                       const torch::Tensor& zeta = {}, double sb = 512.0, int64_t centre = 0,
                       bool inverse = false, bool fp32_angle = true) {
  auto x = x_in.to(torch::kDouble);
  const int64_t half = inv_freq.size(0);
  auto p = pos.view({-1, 1});
  auto ang = fp32_angle ? (p.to(torch::kFloat) * inv_freq.to(torch::kFloat)).to(torch::kDouble)
                        : p.to(torch::kDouble) * inv_freq.to(torch::kDouble);
  auto cos = torch::cos(ang) * af;
  auto sin = torch::sin(ang) * af;
  if (zeta.defined()) {
    auto e = (p.to(torch::kDouble) - static_cast<double>(centre)) / sb;
    auto sc = torch::pow(zeta.to(torch::kDouble), inverse ? -e : e);
    cos = cos * sc;
    sin = sin * sc;
  }
  auto a = x.narrow(-1, 0, half);
  auto b = x.narrow(-1, half, half);
  auto out = x.clone();
  out.narrow(-1, 0, half).copy_(a * cos - b * sin);
  out.narrow(-1, half, half).copy_(a * sin + b * cos);
  return out;
}

}  // namespace

TEST(RotaryEmbeddingScaling, EveryTypeEqualsReference) {
  for (RopeType type : kTypes) {
    for (double partial : {1.0, 0.5}) {
      SCOPED_TRACE(posenc::rope_type_name(type) + " partial " + std::to_string(partial));
      const auto cfg = config(type, partial);
      const int64_t centre = type == RopeType::XPos ? 20 : 0;
      pn::RotaryEmbedding m(pn::RotaryEmbeddingOptions(kHeadDim).scaling(cfg).xpos_centre(centre));
      EXPECT_EQ(m->rotary_dim(), 2 * cfg.num_frequencies());
      EXPECT_TRUE(m->named_parameters().is_empty() && m->named_buffers().is_empty());
      auto q = torch::randn({2, 3, 12, kHeadDim});
      auto k = torch::randn({2, 1, 12, kHeadDim});
      for (int64_t offset : {4, 30}) {
        const int64_t seq_len = offset + 12;
        auto p = posenc::compute_rope_parameters(cfg, seq_len);
        auto pos = torch::arange(offset, seq_len);
        auto [qr, kr] = m(q, k, std::nullopt, offset);
        expect_close(qr, ref_rope(q, pos, p.inv_freq, p.attention_factor, p.xpos_zeta,
                                  cfg.xpos_scale_base, centre, false),
                     1e-5);
        expect_close(kr, ref_rope(k, pos, p.inv_freq, p.attention_factor, p.xpos_zeta,
                                  cfg.xpos_scale_base, centre, true),
                     1e-5);
      }
      // bfloat16 cast keeps float32 tables.
      const auto before = m->frequencies();
      m->to(torch::kBFloat16);
      EXPECT_EQ(m->frequencies().scalar_type(), torch::kFloat);
      EXPECT_EQ(m->frequencies(100).scalar_type(), torch::kFloat);
      expect_equal(m->frequencies(), before);
    }
  }
}

TEST(RotaryEmbeddingScaling, AttentionFactorOnQAndK) {
  pn::RotaryEmbedding m(pn::RotaryEmbeddingOptions::from_config(config(RopeType::YaRN)));
  const double af = m->attention_factor();
  EXPECT_NEAR(af, 0.1 * std::log(4.0) + 1.0, 1e-15);
  auto q = torch::randn({1, 1, 5, kHeadDim}, torch::kDouble);
  auto [qr, kr] = m(q, q);
  auto plain = po::rope(q, std::nullopt, m->inv_freq);
  EXPECT_TRUE(torch::allclose(qr, plain * af, 1e-12, 1e-12));
  EXPECT_TRUE(torch::allclose(kr, plain * af, 1e-12, 1e-12));
}

TEST(RotaryEmbeddingScaling, LengthDependentSwitchAndInference) {
  for (RopeType type : {RopeType::Dynamic, RopeType::LongRoPE}) {
    SCOPED_TRACE(posenc::rope_type_name(type));
    const auto cfg = config(type);
    pn::RotaryEmbedding m(pn::RotaryEmbeddingOptions(kHeadDim).scaling(cfg));
    const auto short_t = posenc::compute_rope_parameters(cfg).inv_freq;
    const auto long_t = posenc::compute_rope_parameters(cfg, kOrig + 1).inv_freq;
    EXPECT_FALSE(torch::equal(short_t, long_t));
    expect_equal(m->frequencies(kOrig), short_t);
    expect_equal(m->frequencies(std::nullopt), short_t);
    expect_equal(m->frequencies(kOrig + 1), long_t);
    const double af = m->attention_factor();
    auto q = torch::randn({1, 2, 4, kHeadDim});
    auto op = [&](const torch::Tensor& t, const torch::Tensor& inv, int64_t offset,
                  const std::optional<torch::Tensor>& pos = std::nullopt) {
      return po::rope(t, pos, inv, offset, kHeadDim, false, "bhsd", std::nullopt, af);
    };
    // offset + S: 32 -> short, 33 -> long; explicit seq_len equal to the inferred one.
    for (auto [offset, table] : {std::pair{int64_t{28}, short_t}, std::pair{int64_t{29}, long_t}}) {
      auto [qa, ka] = m(q, q, std::nullopt, offset);
      expect_equal(qa, op(q, table, offset));
      auto [qb, kb] = m(q, q, std::nullopt, offset, std::nullopt, offset + 4);
      expect_equal(qa, qb);
    }
    // Positions: max + 1 + offset.
    auto pos = torch::tensor({0, 3, 31, 2}, torch::kLong);
    expect_equal(std::get<0>(m(q, q, pos, 0)), op(q, short_t, 0, pos));
    expect_equal(std::get<0>(m(q, q, pos, 1)), op(q, long_t, 1, pos));
    // Packed: the longest sequence + offset.
    pn::RotaryEmbedding p(pn::RotaryEmbeddingOptions(kHeadDim).scaling(cfg).layout("thd"));
    auto x = torch::randn({40, 2, kHeadDim});
    auto cu = torch::tensor({0, 8, 40}, torch::kLong);
    for (auto [offset, table] : {std::pair{int64_t{0}, short_t}, std::pair{int64_t{1}, long_t}}) {
      auto [qa, ka] = p(x, x, std::nullopt, offset, cu);
      expect_equal(qa, po::rope(x, std::nullopt, table, offset, kHeadDim, false, "thd", cu, af));
    }
  }
}

TEST(RotaryEmbeddingScaling, ExactPrecisionTo1e6) {
  const int64_t d = 128;
  const double base = 1e6;
  auto pos = torch::cat({torch::randint(0, 1000001, {62}, torch::kLong),
                         torch::tensor({999999, 1000000}, torch::kLong)});
  auto q = torch::randn({1, 2, pos.size(0), d});
  auto inv64 = torch::pow(base, -torch::arange(0, d, 2, torch::kDouble) / d);
  auto want = ref_rope(q, pos, inv64, 1.0, {}, 512.0, 0, false, /*fp32_angle=*/false);
  auto rel = [&](const torch::Tensor& out) {
    return ((out.to(torch::kDouble) - want).abs().max() / want.abs().max()).item<double>();
  };
  pn::RotaryEmbedding exact(pn::RotaryEmbeddingOptions(d).base(base).precision("exact"));
  EXPECT_EQ(exact->inv_freq.scalar_type(), torch::kDouble);
  auto [qe, ke] = exact(q, q, pos);
  EXPECT_EQ(qe.scalar_type(), torch::kFloat);
  EXPECT_LE(rel(qe), 1e-6);
  pn::RotaryEmbedding reference(pn::RotaryEmbeddingOptions(d).base(base));
  EXPECT_GT(rel(std::get<0>(reference(q, q, pos))), 1e-6);
  exact->to(torch::kBFloat16);
  EXPECT_EQ(exact->inv_freq.scalar_type(), torch::kDouble);
  // Same with a scaling config (default type).
  RopeScalingConfig c;
  c.head_dim = d;
  c.rope_theta = base;
  pn::RotaryEmbedding scaled(pn::RotaryEmbeddingOptions::from_config(c).precision("exact"));
  EXPECT_LE(rel(std::get<0>(scaled(q, q, pos))), 1e-6);
}

TEST(RotaryEmbeddingScaling, ThdEqualsPerSequenceBhsd) {
  const auto cfg = config(RopeType::XPos);
  pn::RotaryEmbedding packed(
      pn::RotaryEmbeddingOptions(kHeadDim).scaling(cfg).layout("thd").xpos_centre(3));
  pn::RotaryEmbedding ref(pn::RotaryEmbeddingOptions(kHeadDim).scaling(cfg).xpos_centre(3));
  auto q = torch::randn({15, 3, kHeadDim});
  auto cu = torch::tensor({0, 5, 5, 14, 15}, torch::kLong);
  auto [qp, kp] = packed(q, q, std::nullopt, 2, cu);
  int64_t start = 0;
  for (int64_t n : {5, 0, 9, 1}) {
    auto s = q.narrow(0, start, n).transpose(0, 1).unsqueeze(0);
    auto [qb, kb] = ref(s, s, std::nullopt, 2);
    expect_equal(qp.narrow(0, start, n), qb[0].transpose(0, 1));
    expect_equal(kp.narrow(0, start, n), kb[0].transpose(0, 1));
    start += n;
  }
}

TEST(RotaryEmbeddingScaling, OptionAndInputErrors) {
  auto half = config(RopeType::YaRN, 0.5);  // 8 rotary dims of 16
  expect_error<c10::ValueError>(
      [&] { pn::RotaryEmbedding(pn::RotaryEmbeddingOptions(32).scaling(half)); },
      {"posenc.RotaryEmbedding: option 'scaling' must have head_dim == dim (32)",
       "but got head_dim 16"});
  expect_error<c10::ValueError>(
      [&] { pn::RotaryEmbedding(pn::RotaryEmbeddingOptions(16).scaling(half).rotary_dim(16)); },
      {"option 'rotary_dim' must equal 2 * scaling's number of frequencies (8)", "but got 16"});
  auto theta = half;
  theta.rope_theta = 5e5;
  expect_error<c10::ValueError>(
      [&] { pn::RotaryEmbedding(pn::RotaryEmbeddingOptions(16).scaling(theta).base(1000.0)); },
      {"option 'base' must be left at 10000 or equal scaling.rope_theta (500000)",
       "but got 1000"});
  pn::RotaryEmbedding ok(pn::RotaryEmbeddingOptions(16).scaling(theta).base(5e5).rotary_dim(8));
  EXPECT_EQ(ok->base(), 5e5);
  expect_error<c10::ValueError>(
      [] { pn::RotaryEmbedding(pn::RotaryEmbeddingOptions(16).precision("fp64")); },
      {"option 'precision' must be \"reference\" or \"exact\", but got \"fp64\""});
  expect_error<c10::ValueError>(
      [] { pn::RotaryEmbedding(pn::RotaryEmbeddingOptions(16).layout("sbhd")); },
      {"option 'layout' must be \"bhsd\", \"bshd\" or \"thd\", but got \"sbhd\""});
  auto bad = config(RopeType::YaRN);
  bad.factor = -1.0;
  expect_error([&] { pn::RotaryEmbedding(pn::RotaryEmbeddingOptions(16).scaling(bad)); },
               {"posenc.rope_scaling_inv_freq: argument 'factor'"});

  pn::RotaryEmbedding thd(pn::RotaryEmbeddingOptions(8).layout("thd"));
  auto x3 = torch::randn({5, 1, 8});
  expect_error([&] { thd(x3, x3); },
               {"posenc.RotaryEmbedding: argument 'cu_seqlens' must be given with layout \"thd\"",
                "but got None"});
  pn::RotaryEmbedding bhsd(8);
  auto x4 = torch::randn({1, 1, 5, 8});
  auto cu = torch::tensor({0, 5}, torch::kLong);
  expect_error([&] { bhsd(x4, x4, std::nullopt, 0, cu); },
               {"argument 'cu_seqlens' must be None with layout \"bhsd\"", "but got a tensor"});
  expect_error([&] { bhsd(x4, x4, std::nullopt, 0, std::nullopt, -1); },
               {"posenc.RotaryEmbedding: argument 'seq_len' must be >= 0 (or None), but got -1"});
  // q and k of one shape are rotated by one rope_qk call, which names itself.
  expect_error([&] { thd(x3, x3, torch::arange(5), 0, cu); }, {"posenc.rope_qk: argument 'positions'"});
}

TEST(RotaryEmbeddingScaling, CloneToAndPrettyPrint) {
  pn::RotaryEmbedding m(pn::RotaryEmbeddingOptions(kHeadDim)
                            .scaling(config(RopeType::LongRoPE))
                            .precision("exact")
                            .xpos_centre(5));
  EXPECT_EQ(m->inv_freq.scalar_type(), torch::kDouble);
  EXPECT_EQ(m->long_inv_freq.scalar_type(), torch::kDouble);
  auto c = std::dynamic_pointer_cast<pn::RotaryEmbeddingImpl>(m->clone());
  ASSERT_TRUE(c);
  expect_equal(c->frequencies(kOrig + 1), m->frequencies(kOrig + 1));
  m->to(torch::Device("meta"));
  EXPECT_EQ(m->inv_freq.device().type(), torch::kMeta);
  EXPECT_EQ(m->long_inv_freq.device().type(), torch::kMeta);
  EXPECT_EQ(m->long_inv_freq.scalar_type(), torch::kDouble);
  // Back from meta (recomputed, since meta tensors hold no data).
  m->to(torch::kCPU);
  expect_equal(m->frequencies(kOrig + 1), c->frequencies(kOrig + 1));
  expect_equal(m->frequencies(), c->frequencies());
  std::ostringstream os;
  os << *m;
  EXPECT_EQ(os.str(),
            "posenc::nn::RotaryEmbedding(dim=16, rotary_dim=16, base=10000, interleaved=false, "
            "layout=bhsd, scaling=longrope, precision=exact, xpos_centre=5)");
  // Dynamic: a clone starts from the default table again.
  pn::RotaryEmbedding dyn(pn::RotaryEmbeddingOptions(kHeadDim).scaling(config(RopeType::Dynamic)));
  const auto first = dyn->inv_freq;
  dyn->frequencies(100);
  EXPECT_FALSE(torch::equal(dyn->inv_freq, first));
  auto d2 = std::dynamic_pointer_cast<pn::RotaryEmbeddingImpl>(dyn->clone());
  expect_equal(d2->inv_freq, first);
}
