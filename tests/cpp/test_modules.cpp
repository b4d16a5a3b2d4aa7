// posenc::nn modules: shapes, outputs equal to the ops they wrap (and, where the module adds
// something of its own, to a reference written here), option validation, C15, pretty_print,
// state_dict keys, clone, device/dtype moves.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "posenc/posenc.h"
#include "test_util.h"

namespace pn = posenc::nn;
namespace po = posenc::ops;

namespace {

std::vector<std::string> keys(const torch::nn::Module& m) {
  std::vector<std::string> out;
  for (const auto& p : m.named_parameters()) out.push_back(p.key());
  for (const auto& b : m.named_buffers()) out.push_back(b.key());
  return out;
}

template <typename M>
std::string printed(const M& m) {
  std::ostringstream os;
  os << *m;
  return os.str();
}

using posenc_test::expect_error;

void expect_equal(const torch::Tensor& a, const torch::Tensor& b) {
  ASSERT_EQ(a.sizes(), b.sizes());
  ASSERT_EQ(a.scalar_type(), b.scalar_type());
  EXPECT_TRUE(torch::equal(a, b)) << "max abs diff " << (a - b).abs().max().item<double>();
}

}  // namespace

// ---------------------------------------------------------------- SinusoidalPositionalEncoding

TEST(SinusoidalPositionalEncodingModule, EqualsOp) {
  pn::SinusoidalPositionalEncoding m(pn::SinusoidalPositionalEncodingOptions(8).base(500.0));
  auto x = torch::randn({2, 5, 8});
  for (int64_t offset : {0, 3}) {
    auto y = m(x, offset);
    expect_equal(y, x + po::sinusoidal_table(5, 8, 500.0, offset, true));
  }
  pn::SinusoidalPositionalEncoding t2t(pn::SinusoidalPositionalEncodingOptions(8).interleaved(false));
  expect_equal(t2t(x), x + po::sinusoidal_table(5, 8, 10000.0, 0, false));
}

TEST(SinusoidalPositionalEncodingModule, DtypeFollowsInput) {
  pn::SinusoidalPositionalEncoding m(4);
  auto x = torch::zeros({1, 3, 4}, torch::kDouble);
  auto y = m(x, 1);
  EXPECT_EQ(y.scalar_type(), torch::kDouble);
  // C04: position 1, d = 4, interleaved.
  auto want = torch::tensor({0.8414709848, 0.5403023059, 0.0099998333, 0.9999500004}, torch::kDouble);
  EXPECT_TRUE(torch::allclose(y[0][0], want, 1e-9, 1e-9));
  auto h = m(torch::zeros({1, 3, 4}, torch::kHalf));
  EXPECT_EQ(h.scalar_type(), torch::kHalf);
}

TEST(SinusoidalPositionalEncodingModule, Dropout) {
  pn::SinusoidalPositionalEncoding m(pn::SinusoidalPositionalEncodingOptions(16).dropout(0.5));
  auto x = torch::randn({4, 32, 16});
  m->eval();
  expect_equal(m(x), x + po::sinusoidal_table(32, 16));
  m->train();
  auto y = m(x);
  EXPECT_GT((y == 0).sum().item<int64_t>(), 0);
}

TEST(SinusoidalPositionalEncodingModule, Errors) {
  expect_error<c10::ValueError>([] { pn::SinusoidalPositionalEncoding(7); },
                                {"posenc.SinusoidalPositionalEncoding", "option 'dim'", "7"});
  expect_error<c10::ValueError>(
      [] { pn::SinusoidalPositionalEncoding(pn::SinusoidalPositionalEncodingOptions(8).dropout(1.0)); },
      {"posenc.SinusoidalPositionalEncoding", "option 'dropout'"});
  pn::SinusoidalPositionalEncoding m(8);
  expect_error([&] { m(torch::randn({2, 5, 6})); },
               {"posenc.SinusoidalPositionalEncoding", "argument 'x'", "[2, 5, 6]"});
}

TEST(SinusoidalPositionalEncodingModule, PrettyPrintAndState) {
  pn::SinusoidalPositionalEncoding m(8);
  EXPECT_EQ(printed(m),
            "posenc::nn::SinusoidalPositionalEncoding(dim=8, base=10000, dropout=0, interleaved=true)");
  EXPECT_TRUE(keys(*m).empty());
}

// ---------------------------------------------------------------- LearnedPositionalEmbedding

TEST(LearnedPositionalEmbeddingModule, ForwardAndState) {
  pn::LearnedPositionalEmbedding m(16, 4);
  EXPECT_EQ(keys(*m), std::vector<std::string>{"weight"});
  EXPECT_EQ(m->weight.sizes(), (std::vector<int64_t>{16, 4}));
  EXPECT_TRUE(m->weight.requires_grad());
  auto x = torch::randn({2, 5, 4});
  expect_equal(m(x), x + m->weight.narrow(0, 0, 5));
  expect_equal(m(x, 11), x + m->weight.narrow(0, 11, 5));
  // Gradient reaches exactly the rows used.
  m(x, 3).sum().backward();
  auto g = m->weight.grad();
  EXPECT_EQ(g.narrow(0, 3, 5).eq(2).all().item<bool>(), true);
  EXPECT_EQ(g.narrow(0, 0, 3).abs().sum().item<float>(), 0.0f);
  EXPECT_EQ(printed(m), "posenc::nn::LearnedPositionalEmbedding(max_len=16, dim=4, dropout=0)");
}

TEST(LearnedPositionalEmbeddingModule, InitNormal002) {
  pn::LearnedPositionalEmbedding m(512, 64);
  auto w = m->weight.detach();
  EXPECT_NEAR(w.mean().item<double>(), 0.0, 2e-3);
  EXPECT_NEAR(w.std().item<double>(), 0.02, 1e-3);
}

// C15: 16 rows, 17 positions: catchable, names the position and the table size, and the
// module (and process) keep working afterwards.
TEST(LearnedPositionalEmbeddingModule, C15_PastTheTable) {
  pn::LearnedPositionalEmbedding m(16, 4);
  expect_error([&] { m(torch::randn({1, 17, 4})); },
               {"posenc.LearnedPositionalEmbedding: position 16 is past the table of 16 "
                "positions (max_len)"});
  expect_error([&] { m(torch::randn({1, 3, 4}), 14); }, {"position 16", "table of 16 positions"});
  auto x = torch::randn({1, 16, 4});
  expect_equal(m(x), x + m->weight);
  expect_equal(m(torch::zeros({1, 1, 4}), 15), m->weight.narrow(0, 15, 1).unsqueeze(0));
}

TEST(LearnedPositionalEmbeddingModule, Errors) {
  expect_error<c10::ValueError>([] { pn::LearnedPositionalEmbedding(0, 4); },
                                {"posenc.LearnedPositionalEmbedding", "option 'max_len'"});
  expect_error<c10::ValueError>([] { pn::LearnedPositionalEmbedding(4, -1); },
                                {"option 'dim'", "-1"});
  pn::LearnedPositionalEmbedding m(16, 4);
  expect_error([&] { m(torch::randn({1, 2, 4}), -1); }, {"argument 'offset'", "-1"});
  expect_error([&] { m(torch::randn({2, 4})); }, {"argument 'x'"});
  // offset + S overflowed int64: narrow raised its own IndexError
  const int64_t big = std::numeric_limits<int64_t>::max();
  expect_error([&] { m(torch::randn({1, 3, 4}), big); },
               {"posenc.LearnedPositionalEmbedding: position 9223372036854775807 + 2 is past the "
                "table of 16 positions (max_len)"});
  expect_error([&] { m(torch::randn({1, 1, 4}), big); },
               {"position 9223372036854775807 is past the table of 16 positions"});
  expect_error([&] { m(torch::randn({1, 2, 4}), int64_t{1} << 62); },
               {"position 4611686018427387905 is past the table of 16 positions"});
}

// ---------------------------------------------------------------- RotaryEmbedding

TEST(RotaryEmbeddingModule, EqualsOp) {
  for (bool interleaved : {false, true}) {
    pn::RotaryEmbedding m(pn::RotaryEmbeddingOptions(8).interleaved(interleaved).base(500.0));
    auto q = torch::randn({2, 3, 5, 8});
    auto k = torch::randn({2, 1, 5, 8});
    auto inv = po::rope_inv_freq(8, 500.0);
    for (int64_t offset : {0, 7}) {
      auto [qr, kr] = m(q, k, std::nullopt, offset);
      expect_equal(qr, po::rope(q, std::nullopt, inv, offset, 8, interleaved, "bhsd"));
      expect_equal(kr, po::rope(k, std::nullopt, inv, offset, 8, interleaved, "bhsd"));
    }
    auto pos = torch::tensor({4, 0, 9, 2, 2}, torch::kLong);
    auto [qp, kp] = m(q, k, pos, 1);
    expect_equal(qp, po::rope(q, pos, inv, 1, 8, interleaved, "bhsd"));
    expect_equal(kp, po::rope(k, pos, inv, 1, 8, interleaved, "bhsd"));
  }
}

TEST(RotaryEmbeddingModule, LayoutBshdAndPartial) {
  pn::RotaryEmbedding m(pn::RotaryEmbeddingOptions(8).rotary_dim(4).layout("bshd"));
  auto q = torch::randn({2, 5, 3, 8});
  auto [qr, kr] = m(q, q, std::nullopt, 2);
  expect_equal(qr, po::rope(q, std::nullopt, po::rope_inv_freq(4), 2, 4, false, "bshd"));
  expect_equal(qr.narrow(-1, 4, 4), q.narrow(-1, 4, 4));
}

// C05: rotary_dim 3 (head_dim 4, fraction 0.75) fails at construction; head_dim 65 with
// rotary_dim 64 works and leaves element 64 untouched.
TEST(RotaryEmbeddingModule, C05_OddRotaryDim) {
  expect_error<c10::ValueError>(
      [] { pn::RotaryEmbedding(pn::RotaryEmbeddingOptions(4).rotary_dim(3)); },
      {"posenc.RotaryEmbedding: option 'rotary_dim' must be even", "but got 3"});
  expect_error<c10::ValueError>([] { pn::RotaryEmbedding(5); }, {"option 'rotary_dim'", "5"});
  pn::RotaryEmbedding m(pn::RotaryEmbeddingOptions(65).rotary_dim(64));
  auto q = torch::randn({1, 2, 6, 65});
  auto [qr, kr] = m(q, q);
  EXPECT_TRUE(torch::equal(qr.select(-1, 64), q.select(-1, 64)));
  EXPECT_FALSE(torch::equal(qr.narrow(-1, 0, 64), q.narrow(-1, 0, 64)));
}

TEST(RotaryEmbeddingModule, OptionErrors) {
  expect_error<c10::ValueError>(
      [] { pn::RotaryEmbedding(pn::RotaryEmbeddingOptions(4).rotary_dim(6)); },
      {"option 'rotary_dim' must be <= dim (4)", "6"});
  expect_error<c10::ValueError>(
      [] { pn::RotaryEmbedding(pn::RotaryEmbeddingOptions(4).layout("sbhd")); },
      {"posenc.RotaryEmbedding: option 'layout'", "\"sbhd\""});
  expect_error<c10::ValueError>(
      [] { pn::RotaryEmbedding(pn::RotaryEmbeddingOptions(4).base(1.0)); }, {"option 'base'"});
  expect_error<c10::ValueError>([] { pn::RotaryEmbedding(0); }, {"option 'dim'"});
  pn::RotaryEmbedding m(8);
  expect_error([&] { m(torch::randn({1, 1, 2, 6}), torch::randn({1, 1, 2, 8})); },
               {"posenc.RotaryEmbedding: argument 'q'", "[1, 1, 2, 6]"});
  expect_error([&] { m(torch::randn({1, 1, 2, 8}), torch::randn({1, 1, 2, 4})); },
               {"argument 'k'"});
}

TEST(RotaryEmbeddingModule, FrequenciesStayFp32AndUnregistered) {
  pn::RotaryEmbedding m(pn::RotaryEmbeddingOptions(32).rotary_dim(32));
  EXPECT_TRUE(keys(*m).empty());
  const auto before = m->inv_freq.clone();
  EXPECT_EQ(before.scalar_type(), torch::kFloat);
  EXPECT_EQ(before.size(0), 16);
  m->to(torch::kBFloat16);
  EXPECT_EQ(m->inv_freq.scalar_type(), torch::kFloat);
  EXPECT_TRUE(torch::equal(m->inv_freq, before));
  m->to(torch::kCPU, torch::kHalf);
  EXPECT_EQ(m->inv_freq.scalar_type(), torch::kFloat);
  // C01: pair 1 at rotary dim 32 has inv_freq 0.5623413 (fp16 would round it).
  EXPECT_NEAR(m->inv_freq[1].item<double>(), 0.5623413252, 1e-7);
  // clone() recomputes the same frequencies.
  auto c = std::dynamic_pointer_cast<pn::RotaryEmbeddingImpl>(m->clone());
  ASSERT_TRUE(c);
  EXPECT_TRUE(torch::equal(c->inv_freq, before));
}

TEST(RotaryEmbeddingModule, PrettyPrint) {
  pn::RotaryEmbedding m(pn::RotaryEmbeddingOptions(64).rotary_dim(32).interleaved(true));
  EXPECT_EQ(printed(m),
            "posenc::nn::RotaryEmbedding(dim=64, rotary_dim=32, base=10000, interleaved=true, "
            "layout=bhsd)");
}

// ---------------------------------------------------------------- ALiBi

TEST(ALiBiModule, EqualsOpAndState) {
  for (bool causal : {true, false}) {
    pn::ALiBi m(pn::ALiBiOptions(6).causal(causal));
    EXPECT_EQ(keys(*m), std::vector<std::string>{"slopes"});
    expect_equal(m->slopes, po::alibi_slopes(6));
    EXPECT_FALSE(m->slopes.requires_grad());
    expect_equal(m(3, 5), po::alibi_bias(po::alibi_slopes(6), 3, 5, 0, 0, causal));
    expect_equal(m(2, 7, 5, 1), po::alibi_bias(po::alibi_slopes(6), 2, 7, 5, 1, causal));
  }
}

// C10 through the module: query block aligned to the end of the keys via q_offset.
TEST(ALiBiModule, C10_Alignment) {
  pn::ALiBi m(pn::ALiBiOptions(1).causal(false));
  auto end = m(3, 5, 2, 0);
  EXPECT_EQ(end.sizes(), (std::vector<int64_t>{1, 3, 5}));
  // One head: slope 2^-8.
  auto want = torch::tensor({-2.0, -1.0, 0.0, -1.0, -2.0}) * std::pow(2.0, -8.0);
  EXPECT_TRUE(torch::allclose(end[0][0], want.to(torch::kFloat)));
}

TEST(ALiBiModule, ErrorsAndPrint) {
  expect_error<c10::ValueError>([] { pn::ALiBi(0); },
                                {"posenc.ALiBi: option 'num_heads' must be > 0, but got 0"});
  pn::ALiBi m(8);
  expect_error([&] { m(-1, 3); }, {"posenc.alibi_bias", "q_len"});
  EXPECT_EQ(printed(m), "posenc::nn::ALiBi(num_heads=8, causal=true)");
}

// ---------------------------------------------------------------- T5RelativeBias

TEST(T5RelativeBiasModule, EqualsOpAndState) {
  for (bool bidirectional : {true, false}) {
    pn::T5RelativeBias m(pn::T5RelativeBiasOptions(4).bidirectional(bidirectional).num_buckets(16).max_distance(64));
    EXPECT_EQ(keys(*m), std::vector<std::string>{"weight"});
    EXPECT_EQ(m->weight.sizes(), (std::vector<int64_t>{16, 4}));
    expect_equal(m(5, 9, 4, 0), po::t5_bias(m->weight, 5, 9, 4, 0, bidirectional, 64));
    expect_equal(m(3, 3), po::t5_bias(m->weight, 3, 3, 0, 0, bidirectional, 64));
  }
}

TEST(T5RelativeBiasModule, GradientReachesWeight) {
  pn::T5RelativeBias m(2);
  auto out = m(4, 4);
  EXPECT_EQ(out.sizes(), (std::vector<int64_t>{2, 4, 4}));
  out.sum().backward();
  ASSERT_TRUE(m->weight.grad().defined());
  // 16 (i, j) pairs per head land in some bucket each.
  EXPECT_EQ(m->weight.grad().sum().item<float>(), 32.0f);
}

TEST(T5RelativeBiasModule, ErrorsAndPrint) {
  expect_error<c10::ValueError>([] { pn::T5RelativeBias(0); }, {"posenc.T5RelativeBias", "option 'num_heads'"});
  expect_error<c10::ValueError>(
      [] { pn::T5RelativeBias(pn::T5RelativeBiasOptions(2).num_buckets(31)); },
      {"option 'num_buckets' must be even and >= 4 when bidirectional", "31"});
  expect_error<c10::ValueError>(
      [] { pn::T5RelativeBias(pn::T5RelativeBiasOptions(2).num_buckets(2)); },
      {"option 'num_buckets' must be even and >= 4 when bidirectional", "but got 2"});
  expect_error<c10::ValueError>(
      [] { pn::T5RelativeBias(pn::T5RelativeBiasOptions(2).num_buckets(1).bidirectional(false)); },
      {"option 'num_buckets' must be >= 2 when causal"});
  expect_error<c10::ValueError>(
      [] { pn::T5RelativeBias(pn::T5RelativeBiasOptions(2).max_distance(8)); },
      {"option 'max_distance' must be > the number of exact buckets (8)", "8"});
  pn::T5RelativeBias m(8);
  EXPECT_EQ(printed(m),
            "posenc::nn::T5RelativeBias(num_heads=8, num_buckets=32, max_distance=128, "
            "bidirectional=true)");
}

// ---------------------------------------------------------------- KERPLEBias

TEST(KERPLEBiasModule, InitAndState) {
  pn::KERPLEBias m(1000);
  EXPECT_EQ(keys(*m), (std::vector<std::string>{"r1", "r2"}));
  EXPECT_GT(m->r1.min().item<float>(), 0.0f);
  EXPECT_LE(m->r1.max().item<float>(), 2.0f);
  EXPECT_GT(m->r1.max().item<float>(), 1.5f);  // spans (0, 2], not (0, 1]
  EXPECT_GT(m->r2.min().item<float>(), 0.0f);
  EXPECT_LE(m->r2.max().item<float>(), 1.0f);
  EXPECT_TRUE(m->r1.requires_grad());
}

TEST(KERPLEBiasModule, EqualsOpWithClamp) {
  for (const char* kind : {"log", "power"}) {
    for (bool causal : {true, false}) {
      pn::KERPLEBias m(pn::KERPLEBiasOptions(3).kind(kind).causal(causal).eps(0.05));
      {
        torch::NoGradGuard g;
        m->r1.copy_(torch::tensor({-1.0f, 0.5f, 1.5f}));
        m->r2.copy_(torch::tensor({0.01f, 0.7f, 3.0f}));
      }
      auto r1 = torch::tensor({0.05f, 0.5f, 1.5f});
      auto r2 = torch::tensor({0.05f, 0.7f, std::string(kind) == "power" ? 2.0f : 3.0f});
      expect_equal(m(4, 6, 2, 0), po::kerple_bias(r1, r2, 4, 6, 2, 0, kind, causal));
    }
  }
}

TEST(KERPLEBiasModule, GradientIsZeroWhereClamped) {
  pn::KERPLEBias m(2);
  {
    torch::NoGradGuard g;
    m->r1.copy_(torch::tensor({-1.0f, 1.0f}));
  }
  m(4, 4, 0, 0).sum().backward();
  EXPECT_EQ(m->r1.grad()[0].item<float>(), 0.0f);
  EXPECT_NE(m->r1.grad()[1].item<float>(), 0.0f);
}

TEST(KERPLEBiasModule, ErrorsAndPrint) {
  expect_error<c10::ValueError>(
      [] { pn::KERPLEBias(pn::KERPLEBiasOptions(2).kind("exp")); },
      {"posenc.KERPLEBias: option 'kind' must be \"log\" or \"power\", but got \"exp\""});
  expect_error<c10::ValueError>([] { pn::KERPLEBias(pn::KERPLEBiasOptions(2).eps(0)); },
                                {"option 'eps'"});
  expect_error<c10::ValueError>([] { pn::KERPLEBias(-2); }, {"option 'num_heads'", "-2"});
  // the power kernel clamps r2 to [eps, 2]: eps > 2 is contradictory
  expect_error<c10::ValueError>(
      [] { pn::KERPLEBias(pn::KERPLEBiasOptions(2).kind("power").eps(2.5)); },
      {"posenc.KERPLEBias: option 'eps' must be <= 2 for kind \"power\" (r2 is clamped to "
       "[eps, 2]), but got 2.5"});
  EXPECT_EQ(pn::KERPLEBias(pn::KERPLEBiasOptions(2).kind("power").eps(2.0))(2, 3).sizes(),
            (std::vector<int64_t>{2, 2, 3}));
  EXPECT_EQ(pn::KERPLEBias(pn::KERPLEBiasOptions(2).eps(2.5))(2, 3).sizes(),
            (std::vector<int64_t>{2, 2, 3}));
  pn::KERPLEBias m(8);
  EXPECT_EQ(printed(m), "posenc::nn::KERPLEBias(num_heads=8, kind=log, causal=true, eps=0.01)");
}

// ---------------------------------------------------------------- TransformerXLRelativeScore

namespace {

// Dai et al. 2019 §3.3 terms (b)+(d), in fp64, straight from the formula:
// (q_i + v) . W_R R_{(mem + i) - j}, R_d = [sin(d w_0), cos(d w_0), ...], w_k = base^(-2k/d_model).
torch::Tensor txl_reference(const torch::Tensor& q, const pn::TransformerXLRelativeScoreImpl& m,
                            int64_t mem_len) {
  const auto& o = m.options;
  auto opts = torch::TensorOptions().dtype(torch::kDouble);
  const int64_t lq = q.size(2), kl = mem_len + lq, h = o.num_heads(), d = o.head_dim();
  auto w = m.r_proj->weight.detach().to(torch::kDouble);
  auto qv = q.to(torch::kDouble) + m.v.detach().to(torch::kDouble).view({1, h, 1, d});
  auto out = torch::zeros({q.size(0), h, lq, kl}, opts);
  auto k = torch::arange(o.d_model() / 2, opts);
  auto freq = torch::pow(o.base(), -2.0 * k / static_cast<double>(o.d_model()));
  for (int64_t i = 0; i < lq; ++i) {
    for (int64_t j = 0; j < kl; ++j) {
      const double dist = static_cast<double>(mem_len + i - j);
      auto ang = dist * freq;
      auto r = torch::stack({ang.sin(), ang.cos()}, 1).reshape({o.d_model()});
      auto proj = torch::mv(w, r).view({h, d});  // (H, D)
      out.select(2, i).select(2, j).copy_((qv.select(2, i) * proj.unsqueeze(0)).sum(-1));
    }
  }
  return out;
}

}  // namespace

TEST(TransformerXLRelativeScoreModule, EqualsOpAndReference) {
  pn::TransformerXLRelativeScore m(8, 2, 4);
  auto q = torch::randn({2, 2, 3, 4});
  for (int64_t mem : {0, 2}) {
    auto got = m(q, mem);
    EXPECT_EQ(got.sizes(), (std::vector<int64_t>{2, 2, 3, mem + 3}));
    const int64_t c = mem + 2, r = 2 * c + 1;
    auto rel = m->r_proj(po::sinusoidal_table(r, 8, 10000.0, -c, true)).view({r, 2, 4}).permute({1, 0, 2});
    expect_equal(got, po::rel_pos_scores(q + m->v.view({1, 2, 1, 4}), rel, mem, 0, mem + 3));
    EXPECT_TRUE(torch::allclose(got.to(torch::kDouble), txl_reference(q, *m, mem), 1e-5, 1e-6));
  }
}

TEST(TransformerXLRelativeScoreModule, ContentQueryAndState) {
  pn::TransformerXLRelativeScore m(pn::TransformerXLRelativeScoreOptions(8, 2, 4).base(100.0));
  EXPECT_EQ(keys(*m), (std::vector<std::string>{"u", "v", "r_proj.weight"}));
  EXPECT_EQ(m->r_proj->weight.sizes(), (std::vector<int64_t>{8, 8}));
  EXPECT_EQ(m->u.sizes(), (std::vector<int64_t>{2, 4}));
  auto q = torch::randn({1, 2, 5, 4});
  expect_equal(m->content_query(q), q + m->u.view({1, 2, 1, 4}));
  EXPECT_EQ(printed(m),
            "posenc::nn::TransformerXLRelativeScore(d_model=8, num_heads=2, head_dim=4, base=100)(\n"
            "  (r_proj): torch::nn::Linear(in_features=8, out_features=8, bias=false)\n)");
}

TEST(TransformerXLRelativeScoreModule, GradientsReachParameters) {
  pn::TransformerXLRelativeScore m(8, 2, 4);
  auto q = torch::randn({1, 2, 3, 4}, torch::requires_grad());
  m(q, 1).sum().backward();
  EXPECT_TRUE(q.grad().defined());
  EXPECT_GT(m->v.grad().abs().sum().item<float>(), 0.0f);
  EXPECT_GT(m->r_proj->weight.grad().abs().sum().item<float>(), 0.0f);
}

TEST(TransformerXLRelativeScoreModule, Errors) {
  expect_error<c10::ValueError>([] { pn::TransformerXLRelativeScore(7, 2, 4); },
                                {"posenc.TransformerXLRelativeScore: option 'd_model'", "7"});
  expect_error<c10::ValueError>([] { pn::TransformerXLRelativeScore(8, 0, 4); },
                                {"option 'num_heads'"});
  expect_error<c10::ValueError>([] { pn::TransformerXLRelativeScore(8, 2, 0); },
                                {"option 'head_dim'"});
  pn::TransformerXLRelativeScore m(8, 2, 4);
  expect_error([&] { m(torch::randn({1, 3, 3, 4})); },
               {"posenc.TransformerXLRelativeScore: argument 'q'", "[1, 3, 3, 4]"});
  expect_error([&] { m(torch::randn({1, 2, 3, 4}), -1); }, {"argument 'mem_len'", "-1"});
  expect_error([&] { m->content_query(torch::randn({2, 4})); }, {"argument 'q'"});
  // an integer q used to be promoted by q + v into float scores
  for (auto dtype : {torch::kLong, torch::kInt, torch::kBool}) {
    const auto q = torch::ones({1, 2, 3, 4}, dtype);
    const char* msg =
        "posenc.TransformerXLRelativeScore: argument 'q' must have a floating dtype (float16, "
        "bfloat16, float32 or float64), but got dtype ";
    expect_error([&] { m(q); }, {msg});
    expect_error([&] { m->content_query(q); }, {msg});
  }
}

// ---------------------------------------------------------------- generic

TEST(Modules, CloneCopiesParameters) {
  pn::T5RelativeBias m(4);
  auto c = std::dynamic_pointer_cast<pn::T5RelativeBiasImpl>(m->clone());
  ASSERT_TRUE(c);
  EXPECT_TRUE(torch::equal(c->weight, m->weight));
  EXPECT_NE(c->weight.data_ptr(), m->weight.data_ptr());
  pn::TransformerXLRelativeScore t(8, 2, 4);
  auto tc = std::dynamic_pointer_cast<pn::TransformerXLRelativeScoreImpl>(t->clone());
  EXPECT_TRUE(torch::equal(tc->r_proj->weight, t->r_proj->weight));
}

TEST(Modules, WorkInsideSequentialWithDefaults) {
  // FORWARD_HAS_DEFAULT_ARGS: AnyModule fills in offset = 0.
  torch::nn::Sequential seq(pn::SinusoidalPositionalEncoding(8), pn::LearnedPositionalEmbedding(8, 8));
  auto x = torch::randn({1, 4, 8});
  auto learned = seq->ptr<pn::LearnedPositionalEmbeddingImpl>(1);
  expect_equal(seq->forward(x), x + po::sinusoidal_table(4, 8) + learned->weight.narrow(0, 0, 4));
}

TEST(Modules, VersionIsExported) { EXPECT_FALSE(posenc::version().empty()); }
