// CoPE (Golovneva et al. 2024) against an fp64 reference written from the paper's eqs. 3-5 and
// its listing: sigmoid of the scaled, masked logits, flip-cumsum-flip, clamp to npos_max - 1,
// floor/ceil gather of q e^T, linear interpolation. Gradients against autograd through it.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <optional>
#include <sstream>
#include <vector>

#include "posenc/nn/cope.h"
#include "posenc/ops.h"
#include "test_util.h"

namespace {

torch::Tensor ref_cope(torch::Tensor q, torch::Tensor k, torch::Tensor e,
                       std::optional<double> scale, int64_t q_offset, int64_t k_offset) {
  q = q.to(torch::kDouble);
  k = k.to(torch::kDouble);
  e = e.to(torch::kDouble);
  const int64_t lq = q.size(2), lk = k.size(2), npos = e.size(0);
  const double s = scale.value_or(1.0 / std::sqrt(static_cast<double>(q.size(3))));
  auto opts = torch::TensorOptions().dtype(torch::kLong);
  auto qp = torch::arange(lq, opts) + q_offset;
  auto kp = torch::arange(lk, opts) + k_offset;
  auto visible = kp.unsqueeze(0) <= qp.unsqueeze(1);
  auto logits = torch::matmul(q, k.transpose(-1, -2)) * s;
  logits = logits.masked_fill(visible.logical_not(), -INFINITY);
  auto gates = torch::sigmoid(logits);
  auto pos = gates.flip({-1}).cumsum(-1).flip({-1}).clamp_max(static_cast<double>(npos - 1));
  auto ceil = pos.ceil().to(torch::kLong), floor = pos.floor().to(torch::kLong);
  auto z = torch::matmul(q, e.t());
  auto w = pos - floor;
  auto out = z.gather(-1, ceil) * w + z.gather(-1, floor) * (1 - w);
  return out.masked_fill(visible.logical_not(), 0.0);
}

struct Case {
  int64_t b, h, lq, lk, d, npos, q_offset, k_offset;
  std::optional<double> scale;
};

const Case kCases[] = {
    {2, 3, 7, 7, 8, 4, 0, 0, std::nullopt}, {1, 2, 5, 12, 16, 16, 7, 0, std::nullopt},
    {2, 1, 9, 6, 4, 3, 0, 2, 0.7},          {1, 2, 20, 20, 8, 1, 0, 0, std::nullopt},
    {2, 2, 1, 300, 8, 8, 299, 0, std::nullopt},
};

class CopeForward : public ::testing::TestWithParam<torch::ScalarType> {};

TEST_P(CopeForward, MatchesReference) {
  const auto dtype = GetParam();
  torch::manual_seed(0);
  for (const auto& c : kCases) {
    auto q = torch::randn({c.b, c.h, c.lq, c.d}, torch::kDouble).to(dtype);
    auto k = torch::randn({c.b, c.h, c.lk, c.d}, torch::kDouble).to(dtype);
    auto e = torch::randn({c.npos, c.d}, torch::kDouble).to(dtype);
    auto got = posenc::ops::cope_scores(q, k, e, c.scale, c.q_offset, c.k_offset);
    ASSERT_EQ(got.scalar_type(), dtype);
    ASSERT_EQ(got.sizes(), (std::vector<int64_t>{c.b, c.h, c.lq, c.lk}));
    auto want = ref_cope(q, k, e, c.scale, c.q_offset, c.k_offset);
    const double mag = std::max(1.0, want.abs().max().item<double>());
    const double tol = dtype == torch::kDouble ? 1e-12 : dtype == torch::kFloat ? 1e-5 : 2e-2 * mag;
    EXPECT_TRUE(torch::allclose(got.to(torch::kDouble), want, tol, tol))
        << "case lq=" << c.lq << " lk=" << c.lk << " q_offset=" << c.q_offset;
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, CopeForward,
                         ::testing::Values(torch::kDouble, torch::kFloat, torch::kHalf,
                                           torch::kBFloat16));

TEST(Cope, GradientsMatchReference) {
  torch::manual_seed(1);
  for (const auto& c : kCases) {
    auto q = torch::randn({c.b, c.h, c.lq, c.d}, torch::kDouble).requires_grad_();
    auto k = torch::randn({c.b, c.h, c.lk, c.d}, torch::kDouble).requires_grad_();
    auto e = torch::randn({c.npos, c.d}, torch::kDouble).requires_grad_();
    auto g = torch::randn({c.b, c.h, c.lq, c.lk}, torch::kDouble);
    auto got = torch::autograd::grad({posenc::ops::cope_scores(q, k, e, c.scale, c.q_offset, c.k_offset)},
                                     {q, k, e}, {g});
    auto want = torch::autograd::grad({ref_cope(q, k, e, c.scale, c.q_offset, c.k_offset)}, {q, k, e}, {g});
    for (int t = 0; t < 3; ++t) {
      EXPECT_TRUE(torch::allclose(got[t], want[t], 1e-10, 1e-10)) << "input " << t << " lq=" << c.lq;
    }
  }
}

TEST(Cope, DecodeEqualsLastRowAndBackwardIsDeterministic) {
  torch::manual_seed(2);
  auto q = torch::randn({2, 3, 40, 16});
  auto k = torch::randn({2, 3, 40, 16});
  auto e = torch::randn({10, 16});
  auto full = posenc::ops::cope_scores(q, k, e);
  auto step = posenc::ops::cope_scores(q.narrow(2, 39, 1), k, e, std::nullopt, 39, 0);
  EXPECT_TRUE(torch::equal(step, full.narrow(2, 39, 1)));
  auto g = torch::randn_like(full);
  auto a = posenc::ops::cope_scores(q.requires_grad_(), k.requires_grad_(), e.requires_grad_());
  auto first = torch::autograd::grad({a}, {q, k, e}, {g});
  auto second = torch::autograd::grad({posenc::ops::cope_scores(q, k, e)}, {q, k, e}, {g});
  for (int t = 0; t < 3; ++t) EXPECT_TRUE(torch::equal(first[t], second[t]));
}

TEST(Cope, BadInputsNameTheArgument) {
  auto q = torch::randn({1, 2, 3, 4}), k = torch::randn({1, 2, 5, 4}), e = torch::randn({6, 4});
  using posenc_test::expect_error;
  expect_error([&] { posenc::ops::cope_scores(q, k, torch::randn({6, 5})); },
               {"posenc.cope_scores: argument 'pos_emb' must have q's head_dim (4) in dim 1",
                "but got shape [6, 5]"});
  expect_error([&] { posenc::ops::cope_scores(q, torch::randn({1, 3, 5, 4}), e); },
               {"posenc.cope_scores: argument 'k' must have q's batch, heads and head_dim",
                "but got shape [1, 3, 5, 4]"});
  expect_error([&] { posenc::ops::cope_scores(q, k, torch::randn({0, 4})); },
               {"argument 'pos_emb' must have at least one row (npos_max >= 1)"});
  expect_error([&] { posenc::ops::cope_scores(q, k, e, NAN); },
               {"posenc.cope_scores: argument 'scale' must be finite, but got nan"});
  expect_error([&] { posenc::ops::cope_scores(q.to(torch::kDouble), k, e); },
               {"argument 'k' must have the dtype of 'q' (Double), but got dtype Float"});
  // A valid call afterwards.
  EXPECT_TRUE(torch::allclose(posenc::ops::cope_scores(q, k, e).to(torch::kDouble),
                              ref_cope(q, k, e, std::nullopt, 0, 0), 1e-5, 1e-5));
}

TEST(CopeModule, ZeroTableStateDictAndForward) {
  torch::manual_seed(3);
  posenc::nn::CoPE m(posenc::nn::CoPEOptions(6, 4).scale(0.5));
  auto params = m->named_parameters();
  ASSERT_EQ(params.size(), 1u);
  ASSERT_TRUE(params.contains("pos_emb"));
  EXPECT_EQ(m->pos_emb.sizes(), (std::vector<int64_t>{6, 4}));
  EXPECT_FALSE(m->pos_emb.any().item<bool>());  // zeros, as the paper's code
  {
    torch::NoGradGuard no_grad;
    m->pos_emb.copy_(torch::randn({6, 4}));
  }
  auto q = torch::randn({2, 2, 5, 4}), k = torch::randn({2, 2, 7, 4});
  auto got = m(q, k, 2, 0);
  EXPECT_TRUE(torch::allclose(got.to(torch::kDouble), ref_cope(q, k, m->pos_emb.detach(), 0.5, 2, 0),
                              1e-5, 1e-5));
  got.sum().backward();
  EXPECT_TRUE(m->pos_emb.grad().defined());
  std::ostringstream os;
  m->pretty_print(os);
  EXPECT_EQ(os.str(), "posenc::nn::CoPE(npos_max=6, head_dim=4, scale=0.5)");
  using posenc_test::expect_error;
  expect_error<c10::ValueError>([] { posenc::nn::CoPE(0, 4); },
                                {"posenc.CoPE: option 'npos_max' must be > 0, but got 0"});
  expect_error<c10::ValueError>([] { posenc::nn::CoPE(posenc::nn::CoPEOptions(4, 4).scale(INFINITY)); },
                                {"posenc.CoPE: option 'scale' must be finite, but got inf"});
}

}  // namespace
