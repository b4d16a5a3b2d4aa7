// ALiBi (Press et al. 2022) against an fp64 reference written from the paper in plain ATen.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <limits>
#include <vector>

#include "posenc/ops.h"
#include "test_util.h"

namespace {

std::vector<double> paper_slopes(int64_t n) {
  auto geometric = [](int64_t m) {
    std::vector<double> s;
    const double start = std::pow(2.0, -8.0 / static_cast<double>(m));
    for (int64_t k = 1; k <= m; ++k) s.push_back(std::pow(start, static_cast<double>(k)));
    return s;
  };
  int64_t p = 1;
  while (p * 2 <= n) p *= 2;
  auto s = geometric(p);
  if (p < n) {
    auto extra = geometric(2 * p);
    for (int64_t k = 0; static_cast<int64_t>(s.size()) < n; k += 2) s.push_back(extra[k]);
  }
  return s;
}

torch::Tensor reference_bias(const torch::Tensor& slopes, int64_t q_len, int64_t k_len,
                             int64_t q_offset, int64_t k_offset, bool causal) {
  auto f64 = torch::TensorOptions().dtype(torch::kDouble);
  auto qp = torch::arange(q_len, f64) + static_cast<double>(q_offset);
  auto kp = torch::arange(k_len, f64) + static_cast<double>(k_offset);
  auto d = qp.unsqueeze(1) - kp.unsqueeze(0);
  if (!causal) d = d.abs();
  return -slopes.to(torch::kDouble).view({-1, 1, 1}) * d.unsqueeze(0);
}

}  // namespace

class AlibiSlopes : public ::testing::TestWithParam<int64_t> {};

TEST_P(AlibiSlopes, MatchPaper) {
  const int64_t n = GetParam();
  auto got = posenc::ops::alibi_slopes(n, torch::kDouble);
  auto want = torch::tensor(paper_slopes(n), torch::kDouble);
  EXPECT_TRUE(torch::allclose(got, want, 1e-14, 0.0)) << got << want;
}

INSTANTIATE_TEST_SUITE_P(Heads, AlibiSlopes, ::testing::Values(1, 2, 3, 6, 8, 12, 16, 24));

struct BiasCase {
  int64_t heads, q_len, k_len, q_offset, k_offset;
  bool causal;
};

// Without a PrintTo, gtest prints a parameter as its raw bytes, padding after `causal`
// included: valgrind reported those uninitialised reads (scripts/valgrind.sh).
static void PrintTo(const BiasCase& c, std::ostream* os) {
  *os << "heads " << c.heads << ", q_len " << c.q_len << ", k_len " << c.k_len << ", q_offset "
      << c.q_offset << ", k_offset " << c.k_offset << (c.causal ? ", causal" : "");
}

class AlibiBias : public ::testing::TestWithParam<BiasCase> {};

TEST_P(AlibiBias, ForwardMatchesReference) {
  const auto c = GetParam();
  for (auto dtype : {torch::kFloat, torch::kDouble}) {
    auto slopes = posenc::ops::alibi_slopes(c.heads, dtype);
    auto got = posenc::ops::alibi_bias(slopes, c.q_len, c.k_len, c.q_offset, c.k_offset, c.causal);
    ASSERT_EQ(got.sizes(), torch::IntArrayRef({c.heads, c.q_len, c.k_len}));
    ASSERT_EQ(got.scalar_type(), dtype);
    auto want = reference_bias(slopes, c.q_len, c.k_len, c.q_offset, c.k_offset, c.causal);
    EXPECT_TRUE(torch::allclose(got.to(torch::kDouble), want, 1e-6, 1e-6));
  }
}

TEST_P(AlibiBias, GradientMatchesReference) {
  const auto c = GetParam();
  auto slopes = torch::rand({c.heads}, torch::kDouble).requires_grad_();
  auto upstream = torch::randn({c.heads, c.q_len, c.k_len}, torch::kDouble);
  (posenc::ops::alibi_bias(slopes, c.q_len, c.k_len, c.q_offset, c.k_offset, c.causal) * upstream)
      .sum()
      .backward();
  auto ref = slopes.detach().clone().requires_grad_();
  (reference_bias(ref, c.q_len, c.k_len, c.q_offset, c.k_offset, c.causal) * upstream)
      .sum()
      .backward();
  EXPECT_TRUE(torch::allclose(slopes.grad(), ref.grad(), 1e-10, 1e-10));
}

INSTANTIATE_TEST_SUITE_P(Shapes, AlibiBias,
                         ::testing::Values(BiasCase{4, 7, 9, 0, 0, true},
                                           BiasCase{4, 7, 9, 0, 0, false},
                                           BiasCase{3, 5, 11, 6, 0, false},
                                           BiasCase{2, 1, 33, 32, 0, true},
                                           BiasCase{5, 8, 4, 3, 7, false},
                                           BiasCase{1, 1, 1, 0, 0, true}));

TEST(Alibi, HalfAcceptedWithFloatMath) {
  auto slopes = posenc::ops::alibi_slopes(4, torch::kHalf);
  auto got = posenc::ops::alibi_bias(slopes, 6, 6, 0, 0, false);
  EXPECT_EQ(got.scalar_type(), torch::kHalf);
  EXPECT_TRUE(torch::allclose(got.to(torch::kDouble),
                              reference_bias(slopes, 6, 6, 0, 0, false), 2e-3, 2e-3));
}

TEST(Alibi, EmptySizes) {
  EXPECT_EQ(posenc::ops::alibi_bias(torch::rand({0}), 3, 4).sizes(), torch::IntArrayRef({0, 3, 4}));
  EXPECT_EQ(posenc::ops::alibi_bias(torch::rand({2}), 0, 4).sizes(), torch::IntArrayRef({2, 0, 4}));
}

TEST(Alibi, BadInputsNameOpAndArgument) {
  try {
    posenc::ops::alibi_bias(torch::rand({2, 2}), 3, 3);
    FAIL() << "expected an error";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("posenc.alibi_bias: argument 'slopes' must be a 1-D"),
              std::string::npos)
        << e.what();
  }
  EXPECT_THROW(posenc::ops::alibi_bias(torch::rand({2}), -1, 3), c10::Error);
  EXPECT_THROW(posenc::ops::alibi_bias(torch::arange(3), 3, 3), c10::Error);
  EXPECT_THROW(posenc::ops::alibi_slopes(0), c10::Error);
}

TEST(Alibi, NonFiniteSlopesRaise) {
  using posenc_test::expect_error;
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  for (auto dtype : {at::kFloat, at::kDouble, at::kHalf, at::kBFloat16}) {
    auto s = at::tensor({0.5, 0.25, nan, 0.125}, at::kDouble).to(dtype);
    expect_error([&] { posenc::ops::alibi_bias(s, 3, 4); },
                 "posenc.alibi_bias: argument 'slopes' must be finite, but got slopes[2] = nan");
    s = at::tensor({-inf, 0.25}, at::kDouble).to(dtype);
    expect_error([&] { posenc::ops::alibi_bias(s, 3, 4, 0, 0, false); },
                 "posenc.alibi_bias: argument 'slopes' must be finite, but got slopes[0] = -inf");
  }
}

TEST(Alibi, OutputTooLargeForInt64) {
  const int64_t n = int64_t{1} << 40;
  posenc_test::expect_error(
      [&] { posenc::ops::alibi_bias(torch::ones({8}), n, n); },
      "posenc.alibi_bias: argument 'k_len' is too large: the output's size in bytes must fit in "
      "int64, but got an output of shape [8, 1099511627776, 1099511627776] and dtype Float");
  posenc_test::expect_error([&] { posenc::ops::alibi_bias(torch::ones({8}), n * 4, 1 << 22); },
                            "argument 'q_len' is too large");
  // the Meta kernel raises the same
  posenc_test::expect_error(
      [&] { posenc::ops::alibi_bias(torch::ones({8}, torch::kMeta), n, n); },
      "posenc.alibi_bias: argument 'k_len' is too large");
  // empty outputs with a long length are fine (0 counts as 1)
  EXPECT_EQ(posenc::ops::alibi_bias(torch::ones({8}), 0, n).sizes(), torch::IntArrayRef({8, 0, n}));
}

TEST(Alibi, OutVariantWritesTheBuffer) {
  const auto slopes = torch::rand({3}) + 0.1;
  auto buf = torch::full({3, 70, 33}, std::numeric_limits<float>::quiet_NaN());
  for (bool causal : {true, false}) {
    auto& ret = posenc::ops::alibi_bias_out(buf, slopes, 70, 33, 5, 0, causal);
    EXPECT_EQ(ret.data_ptr(), buf.data_ptr());
    EXPECT_TRUE(torch::allclose(buf.to(torch::kDouble), reference_bias(slopes, 70, 33, 5, 0, causal),
                                1e-6, 1e-6));
  }
  auto t5_buf = torch::empty({3, 8, 9});
  const auto table = torch::randn({32, 3});
  posenc::ops::t5_bias_out(t5_buf, table, 8, 9);
  EXPECT_TRUE(torch::equal(t5_buf, posenc::ops::t5_bias(table, 8, 9)));
  auto k_buf = torch::empty({3, 8, 9});
  posenc::ops::kerple_bias_out(k_buf, slopes, slopes, 8, 9, 0, 0, "power", false);
  EXPECT_TRUE(torch::equal(k_buf, posenc::ops::kerple_bias(slopes, slopes, 8, 9, 0, 0, "power", false)));
  auto wrong = torch::empty({3, 8, 10});
  posenc_test::expect_error(
      [&] { posenc::ops::alibi_bias_out(wrong, slopes, 8, 9); },
      "posenc.alibi_bias: argument 'out' must have shape (num_heads, q_len, k_len) = [3, 8, 9], "
      "but got shape [3, 8, 10]");
  auto needs_grad = slopes.clone().requires_grad_();
  posenc_test::expect_error([&] { posenc::ops::alibi_bias_out(buf, needs_grad, 70, 33); },
                            "posenc.alibi_bias: argument 'slopes' requires grad");
}
