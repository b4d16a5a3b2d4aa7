// Relative position scores against an fp64 reference written from Dai et al. 2019 §3.3 /
// Shaw et al. 2018 eq. 5: gather rel_emb rows c + clamp(q_pos - k_pos, -M, M), contract with q.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <optional>
#include <string>
#include <tuple>

#include "posenc/ops.h"
#include "test_util.h"

namespace {

torch::Tensor ref_scores(const torch::Tensor& q, const torch::Tensor& rel_emb, int64_t q_offset,
                         int64_t k_offset, int64_t k_len, std::optional<int64_t> max_distance) {
  const int64_t c = (rel_emb.size(1) - 1) / 2;
  const int64_t m = max_distance.value_or(c);
  auto opts = torch::TensorOptions().dtype(torch::kLong);
  auto qp = torch::arange(q.size(2), opts) + q_offset;
  auto kp = torch::arange(k_len, opts) + k_offset;
  auto idx = (qp.unsqueeze(1) - kp.unsqueeze(0)).clamp(-m, m) + c;  // (Lq, k_len)
  auto gathered = rel_emb.to(torch::kDouble).index({torch::indexing::Slice(), idx});
  return torch::einsum("bhid,hijd->bhij", {q.to(torch::kDouble), gathered});
}

struct Case {
  int64_t b, h, lq, d, r, q_offset, k_offset, k_len;
  std::optional<int64_t> m;
};

const Case kCases[] = {
    {2, 3, 5, 8, 11, 0, 0, 5, std::nullopt}, {1, 2, 3, 4, 9, 2, 0, 5, std::nullopt},
    {2, 2, 4, 16, 7, 6, 0, 10, std::nullopt}, {1, 3, 6, 5, 9, 0, 0, 6, 2},
    {2, 1, 7, 3, 5, 3, 1, 12, 0},             {1, 2, 4, 9, 13, -5, -3, 7, 4},
    {1, 1, 3, 2, 5, 0, 5, 4, std::nullopt},
};

class RelPosForward : public ::testing::TestWithParam<torch::ScalarType> {};

TEST_P(RelPosForward, MatchesReference) {
  const auto dtype = GetParam();
  torch::manual_seed(0);
  for (const auto& c : kCases) {
    auto q = torch::randn({c.b, c.h, c.lq, c.d}, torch::kDouble).to(dtype);
    auto e = torch::randn({c.h, c.r, c.d}, torch::kDouble).to(dtype);
    auto got = posenc::ops::rel_pos_scores(q, e, c.q_offset, c.k_offset, c.k_len, c.m);
    ASSERT_EQ(got.scalar_type(), dtype);
    ASSERT_EQ(got.sizes(), (std::vector<int64_t>{c.b, c.h, c.lq, c.k_len}));
    auto want = ref_scores(q, e, c.q_offset, c.k_offset, c.k_len, c.m);
    const double tol = dtype == torch::kDouble ? 1e-12 : dtype == torch::kFloat ? 1e-5 : 2e-2;
    EXPECT_TRUE(torch::allclose(got.to(torch::kDouble), want, tol, tol))
        << "case b=" << c.b << " lq=" << c.lq << " q_offset=" << c.q_offset;
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, RelPosForward,
                         ::testing::Values(torch::kDouble, torch::kFloat, torch::kHalf,
                                           torch::kBFloat16));

TEST(RelPos, MemoryOffsetGivesTrueDistancesBothSides) {
  // C14: q_len 3, memory 2, k_len 5; rel_emb row c + d holds d, so the score is the distance.
  auto q = torch::ones({1, 1, 3, 1}, torch::kDouble);
  auto e = (torch::arange(9, torch::kDouble) - 4).view({1, 9, 1});
  auto got = posenc::ops::rel_pos_scores(q, e, 2, 0, 5)[0][0];
  auto want = torch::tensor({2., 1., 0., -1., -2., 3., 2., 1., 0., -1., 4., 3., 2., 1., 0.},
                            torch::kDouble)
                  .view({3, 5});
  EXPECT_TRUE(torch::equal(got, want));
}

TEST(RelPos, ClippingUsesEdgeRows) {
  auto q = torch::ones({1, 1, 6, 1}, torch::kDouble);
  auto e = (torch::arange(9, torch::kDouble) - 4).view({1, 9, 1});
  auto got = posenc::ops::rel_pos_scores(q, e, 0, 0, 6, 2)[0][0];
  auto pos = torch::arange(6, torch::kLong);
  auto d = (pos.unsqueeze(1) - pos.unsqueeze(0)).clamp(-2, 2).to(torch::kDouble);
  EXPECT_TRUE(torch::equal(got, d));
}

TEST(RelPos, IncrementalRowsEqualFull) {
  torch::manual_seed(1);
  auto q = torch::randn({2, 3, 8, 8});
  auto e = torch::randn({3, 9, 8});
  auto full = posenc::ops::rel_pos_scores(q, e, 0, 0, 8, 3);
  for (int64_t p = 0; p < 8; ++p) {
    auto row = posenc::ops::rel_pos_scores(q.narrow(2, p, 1), e, p, 0, p + 1, 3);
    EXPECT_TRUE(torch::allclose(row.select(2, 0), full.select(2, p).narrow(2, 0, p + 1), 0, 1e-6));
  }
}

TEST(RelPos, AutogradMatchesReferenceGradient) {
  torch::manual_seed(2);
  for (std::optional<int64_t> m : {std::optional<int64_t>(), std::optional<int64_t>(0),
                                   std::optional<int64_t>(2)}) {
    auto q = torch::randn({2, 3, 5, 6}, torch::kDouble).requires_grad_();
    auto e = torch::randn({3, 7, 6}, torch::kDouble).requires_grad_();
    auto g = torch::randn({2, 3, 5, 9}, torch::kDouble);
    (posenc::ops::rel_pos_scores(q, e, 3, 1, 9, m) * g).sum().backward();
    auto q2 = q.detach().clone().requires_grad_();
    auto e2 = e.detach().clone().requires_grad_();
    (ref_scores(q2, e2, 3, 1, 9, m) * g).sum().backward();
    EXPECT_TRUE(torch::allclose(q.grad(), q2.grad(), 1e-12, 1e-12));
    EXPECT_TRUE(torch::allclose(e.grad(), e2.grad(), 1e-12, 1e-12));
  }
}

TEST(RelPos, CausalZeroesFutureKeysAndMatchesReference) {
  // Keys after the query are written as 0 and pass no gradient; the rest equal the reference.
  torch::manual_seed(3);
  for (const auto& c : kCases) {
    auto q = torch::randn({c.b, c.h, c.lq, c.d}, torch::kDouble).requires_grad_();
    auto e = torch::randn({c.h, c.r, c.d}, torch::kDouble).requires_grad_();
    auto g = torch::randn({c.b, c.h, c.lq, c.k_len}, torch::kDouble);
    auto got = posenc::ops::rel_pos_scores(q, e, c.q_offset, c.k_offset, c.k_len, c.m, true);
    (got * g).sum().backward();
    auto opts = torch::TensorOptions().dtype(torch::kLong);
    auto qp = torch::arange(c.lq, opts) + c.q_offset;
    auto kp = torch::arange(c.k_len, opts) + c.k_offset;
    auto fut = kp.unsqueeze(0) > qp.unsqueeze(1);
    auto q2 = q.detach().clone().requires_grad_();
    auto e2 = e.detach().clone().requires_grad_();
    auto want = ref_scores(q2, e2, c.q_offset, c.k_offset, c.k_len, c.m).masked_fill(fut, 0.0);
    (want * g).sum().backward();
    EXPECT_TRUE(torch::allclose(got, want, 1e-12, 1e-12)) << "lq=" << c.lq << " q_offset=" << c.q_offset;
    EXPECT_TRUE(torch::allclose(q.grad(), q2.grad(), 1e-12, 1e-12));
    EXPECT_TRUE(torch::allclose(e.grad(), e2.grad(), 1e-12, 1e-12));
  }
}

TEST(RelPos, EmptyInputs) {
  auto q = torch::randn({1, 2, 0, 4}).requires_grad_();
  auto e = torch::randn({2, 5, 4}).requires_grad_();
  auto out = posenc::ops::rel_pos_scores(q, e, 0, 0, 3);
  EXPECT_EQ(out.sizes(), (std::vector<int64_t>{1, 2, 0, 3}));
  out.sum().backward();
  EXPECT_EQ(e.grad().sizes(), e.sizes());
  EXPECT_FALSE(e.grad().any().item<bool>());
  auto none = posenc::ops::rel_pos_scores(torch::randn({1, 2, 3, 4}), torch::randn({2, 5, 4}), 0, 0, 0);
  EXPECT_EQ(none.sizes(), (std::vector<int64_t>{1, 2, 3, 0}));
}

using posenc_test::expect_error;

TEST(RelPos, BadInputsNameOpAndArgument) {
  auto q = torch::randn({1, 2, 3, 4});
  auto e = torch::randn({2, 7, 4});
  using posenc::ops::rel_pos_scores;
  EXPECT_THROW(rel_pos_scores(q, torch::randn({2, 6, 4})), c10::Error);
  expect_error([&] { rel_pos_scores(q, torch::randn({2, 6, 4})); },
               "posenc.rel_pos_scores: argument 'rel_emb' must have an odd number of rows");
  expect_error([&] { rel_pos_scores(q, e, 0, 0, 3, 4); },
               "argument 'max_distance' must be in [0, c] with c = (R - 1) / 2 = 3, but got 4");
  expect_error([&] { rel_pos_scores(q, torch::randn({2, 7, 5})); },
               "argument 'rel_emb' must have q's head_dim (4) in dim 2, but got shape [2, 7, 5]");
  expect_error([&] { rel_pos_scores(q, torch::randn({3, 7, 4})); },
               "argument 'rel_emb' must have q's number of heads (2) in dim 0");
  expect_error([&] { rel_pos_scores(q[0], e); }, "argument 'q' must be a 4-D tensor");
  expect_error([&] { rel_pos_scores(torch::randn({4}), e); },
               "posenc.rel_pos_scores: argument 'q' must be a 4-D tensor");
  expect_error([&] { rel_pos_scores(q, e.to(torch::kDouble)); },
               "argument 'rel_emb' must have the dtype of 'q' (Float), but got dtype Double");
  expect_error([&] { rel_pos_scores(q, e, 0, 0, -1); },
               "posenc.rel_pos_scores: argument 'k_len' must be >= 0, but got -1");
  // an output whose size in bytes overflows int64: a posenc error, on CPU and Meta
  const int64_t huge = int64_t{1} << 62;
  expect_error([&] { rel_pos_scores(q, e, 0, 0, huge); },
               "posenc.rel_pos_scores: argument 'k_len' is too large: the output's size in bytes "
               "must fit in int64, but got an output of shape [1, 2, 3, 4611686018427387904] and dtype Float");
  expect_error([&] { rel_pos_scores(q.to(torch::kMeta), e.to(torch::kMeta), 0, 0, huge); },
               "posenc.rel_pos_scores: argument 'k_len' is too large");
}

}  // namespace
