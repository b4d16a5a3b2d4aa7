// Forgetting-gate bias (Lin et al. 2025) against an fp64 reference written from the paper's
// product form (D_ij = sum of the log gates after key j up to the query's position, -inf for
// future keys), gradients against torch::autograd through that reference; the C++ module.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <limits>
#include <vector>

#include "posenc/nn.h"
#include "posenc/ops.h"
#include "test_util.h"

namespace {

using posenc_test::expect_error;

at::Tensor log_gates(int64_t b, int64_t h, int64_t k) {
  return at::log_sigmoid(at::randn({b, h, k}, at::kDouble) * 2 + 1);
}

// Segment sums in fp64; -inf where k_pos > q_pos.
at::Tensor ref_bias(const at::Tensor& lf_in, int64_t q_len, int64_t q_offset, int64_t k_offset) {
  const auto lf = lf_in.to(at::kDouble);
  const int64_t B = lf.size(0), H = lf.size(1), K = lf.size(2);
  auto out = at::empty({B, H, q_len, K}, at::kDouble);
  for (int64_t i = 0; i < q_len; ++i) {
    const int64_t t = q_offset - k_offset + i;
    for (int64_t j = 0; j < K; ++j) {
      out.select(2, i).select(2, j).copy_(
          j <= t ? lf.slice(2, j + 1, t + 1).sum(-1)
                 : at::full({B, H}, -std::numeric_limits<double>::infinity(), at::kDouble));
    }
  }
  return out;
}

struct Case { int64_t b, h, k, q, qo, ko; };
const std::vector<Case> kCases{{2, 3, 7, 7, 0, 0}, {1, 2, 9, 4, 5, 0}, {2, 1, 6, 1, 12, 7}, {1, 1, 1, 1, 0, 0}};

}  // namespace

TEST(ForgettingGate, MatchesReference) {
  for (const auto& c : kCases) {
    const auto lf = log_gates(c.b, c.h, c.k);
    const auto want = ref_bias(lf, c.q, c.qo, c.ko);
    for (auto dt : {at::kDouble, at::kFloat}) {
      const auto got = posenc::ops::forgetting_gate_bias(lf.to(dt), c.q, c.qo, c.ko);
      ASSERT_EQ(got.sizes(), (at::IntArrayRef{c.b, c.h, c.q, c.k}));
      EXPECT_EQ(got.scalar_type(), dt);
      const auto fin = at::isfinite(want);
      EXPECT_TRUE(at::equal(at::isfinite(got), fin));
      const double tol = dt == at::kDouble ? 1e-12 : 1e-5;
      EXPECT_TRUE(at::allclose(got.to(at::kDouble).masked_select(fin), want.masked_select(fin), tol, tol));
    }
  }
}

TEST(ForgettingGate, DecodeRowEqualsFullCall) {
  const auto lf = log_gates(2, 2, 10);
  const auto full = posenc::ops::forgetting_gate_bias(lf, 10);
  EXPECT_TRUE(at::equal(posenc::ops::forgetting_gate_bias(lf, 1, 9, 0), full.slice(2, 9, 10)));
}

TEST(ForgettingGate, GradientMatchesReference) {
  const auto lf = log_gates(2, 3, 8).requires_grad_(true);
  const auto g = at::randn({2, 3, 3, 8}, at::kDouble);
  const auto out = posenc::ops::forgetting_gate_bias(lf, 3, 5, 0);
  const auto got = torch::autograd::grad({out}, {lf}, {g})[0];
  const auto x = lf.detach().clone().requires_grad_(true);
  const auto ref = ref_bias(x, 3, 5, 0);
  const auto want = torch::autograd::grad({ref.masked_fill(at::isinf(ref), 0)}, {x}, {g})[0];
  EXPECT_TRUE(at::allclose(got, want, 1e-12, 1e-12));
}

TEST(ForgettingGate, GradientDeterministicAcrossThreads) {
  const auto lf = log_gates(3, 2, 129).to(at::kFloat).requires_grad_(true);
  const auto g = at::randn({3, 2, 129, 129});
  const int threads = at::get_num_threads();
  std::vector<at::Tensor> grads;
  for (int n : {1, 2, 1}) {
    at::set_num_threads(n);
    grads.push_back(torch::autograd::grad({posenc::ops::forgetting_gate_bias(lf, 129)}, {lf}, {g})[0]);
  }
  at::set_num_threads(threads);
  EXPECT_TRUE(at::equal(grads[0], grads[1]));
  EXPECT_TRUE(at::equal(grads[0], grads[2]));
}

TEST(ForgettingGate, BadInputs) {
  using posenc::ops::forgetting_gate_bias;
  expect_error([] { forgetting_gate_bias(at::zeros({2, 5}), 5); },
               {"posenc.forgetting_gate_bias: argument 'log_fgate' must be a 3-D tensor", "2-D"});
  expect_error([] { forgetting_gate_bias(at::zeros({1, 1, 5}), 6); },
               {"argument 'q_offset' must place every query at a key position", "q_len = 6"});
  expect_error([] { forgetting_gate_bias(at::tensor({0.0, std::nan(""), -1.0}).view({1, 1, 3}), 3); },
               {"argument 'log_fgate' must be finite", "log_fgate[0, 0, 1] = nan"});
  expect_error([] { forgetting_gate_bias(at::tensor({-1.0, 0.5}).view({1, 1, 2}), 2); },
               {"argument 'log_fgate' must be <= 0", "log_fgate[0, 0, 1] = 0.5"});
}

TEST(ForgettingGate, Module) {
  posenc::nn::ForgettingGate m(posenc::nn::ForgettingGateOptions(8, 3));
  const auto sd = m->named_parameters();
  ASSERT_EQ(sd.size(), 2u);
  EXPECT_TRUE(sd.contains("proj.weight") && sd.contains("proj.bias"));
  EXPECT_TRUE(at::equal(m->proj->bias, at::zeros({3})));
  const auto x = at::randn({2, 5, 8});
  const auto lf = at::log_sigmoid(at::matmul(x, m->proj->weight.t()) + m->proj->bias).transpose(1, 2);
  EXPECT_TRUE(at::allclose(m->log_fgate(x), lf));
  const auto want = ref_bias(lf.detach(), 5, 0, 0);
  const auto got = m->forward(x).to(at::kDouble);
  const auto fin = at::isfinite(want);
  EXPECT_TRUE(at::equal(at::isfinite(got), fin));
  EXPECT_TRUE(at::allclose(got.masked_select(fin), want.masked_select(fin), 1e-5, 1e-6));
  expect_error<c10::ValueError>([] { posenc::nn::ForgettingGate(posenc::nn::ForgettingGateOptions(0, 2)); },
                                {"posenc.ForgettingGate: option 'd_model' must be > 0, but got 0"});
  expect_error([&] { m->forward(at::randn({2, 5})); },
               {"posenc.ForgettingGate: argument 'x' must be a 3-D tensor"});
}
