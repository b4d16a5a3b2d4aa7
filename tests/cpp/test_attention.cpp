// Fused relative attention (posenc::ops::relative_attention) and the modules' attention():
// against an fp64 reference written from the formula softmax(scale q k^T + P + mask) v in plain
// ATen, with P from the bias ops (themselves tested against the papers).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <string>
#include <vector>

#include "posenc/nn.h"
#include "posenc/ops.h"
#include "test_util.h"

namespace {

using posenc::ops::RelativeAttentionOptions;

const auto f64 = torch::TensorOptions().dtype(torch::kDouble);

// (B, H, Lq, Dv) fp64 reference; every row here has at least one key.
torch::Tensor reference(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                        const torch::Tensor& bias, bool causal, int64_t q_offset,
                        int64_t k_offset) {
  const int64_t g = q.size(1) / k.size(1);
  auto kk = k.repeat_interleave(g, 1), vv = v.repeat_interleave(g, 1);
  auto s = torch::matmul(q, kk.transpose(-1, -2)) / std::sqrt(static_cast<double>(q.size(3)));
  if (bias.defined()) s = s + bias;
  if (causal) {
    auto qi = torch::arange(q.size(2)).unsqueeze(1) + q_offset;
    auto kj = torch::arange(k.size(2)).unsqueeze(0) + k_offset;
    s = s.masked_fill(kj > qi, -INFINITY);
  }
  return torch::matmul(torch::softmax(s, -1), vv);
}

struct Case {
  std::string family;
  bool causal;
  int64_t q_offset, k_offset;
};

class RelativeAttention : public ::testing::TestWithParam<Case> {};

TEST_P(RelativeAttention, MatchesFp64Reference) {
  const auto c = GetParam();
  torch::manual_seed(0);
  const int64_t B = 2, H = 4, Hkv = 2, Lq = 29, Lk = 41, D = 12;
  auto q = torch::randn({B, H, Lq, D}, f64).requires_grad_();
  auto k = torch::randn({B, Hkv, Lk, D}, f64).requires_grad_();
  auto v = torch::randn({B, Hkv, Lk, D}, f64).requires_grad_();
  auto o = RelativeAttentionOptions().causal(c.causal).q_offset(c.q_offset).k_offset(c.k_offset);
  torch::Tensor bias, param;
  if (c.family == "alibi") {
    param = posenc::ops::alibi_slopes(H, torch::kDouble).requires_grad_();
    o.slopes(param);
    bias = posenc::ops::alibi_bias(param, Lq, Lk, c.q_offset, c.k_offset, c.causal);
  } else if (c.family == "t5") {
    param = torch::randn({32, H}, f64).requires_grad_();
    o.table(param).max_distance(50);
    bias = posenc::ops::t5_bias(param, Lq, Lk, c.q_offset, c.k_offset, !c.causal, 50);
  } else if (c.family == "kerple") {
    param = torch::rand({H}, f64).add_(0.1).requires_grad_();
    auto r2 = torch::rand({H}, f64).add_(0.1);
    o.r1(param).r2(r2);
    bias = posenc::ops::kerple_bias(param, r2, Lq, Lk, c.q_offset, c.k_offset, "log", c.causal);
  } else if (c.family == "rel") {
    param = (torch::randn({H, 2 * 70 + 1, D}, f64) * 0.3).requires_grad_();
    o.rel_emb(param);
    bias = posenc::ops::rel_pos_scores(q, param, c.q_offset, c.k_offset, Lk);
  }
  auto [out, lse] = posenc::ops::relative_attention(q, k, v, o);
  if (bias.defined() && bias.dim() == 3) bias = bias.unsqueeze(0);
  auto want = reference(q, k, v, bias, c.causal, c.q_offset, c.k_offset);
  EXPECT_TRUE(torch::allclose(out, want, 1e-10, 1e-10)) << (out - want).abs().max();
  EXPECT_EQ(lse.sizes(), (std::vector<int64_t>{B, H, Lq}));
  EXPECT_EQ(lse.scalar_type(), torch::kDouble);

  auto g = torch::randn_like(out);
  std::vector<torch::Tensor> leaves{q, k, v};
  if (param.defined()) leaves.push_back(param);
  auto got = torch::autograd::grad({(out * g).sum()}, leaves);
  auto exp = torch::autograd::grad({(want * g).sum()}, leaves);
  for (size_t i = 0; i < leaves.size(); ++i) {
    EXPECT_TRUE(torch::allclose(got[i], exp[i], 1e-9, 1e-9))
        << c.family << " grad " << i << ": " << (got[i] - exp[i]).abs().max();
  }
}

INSTANTIATE_TEST_SUITE_P(
    Families, RelativeAttention,
    ::testing::Values(Case{"none", true, 12, 0}, Case{"alibi", true, 12, 0},
                      Case{"alibi", false, 0, 4}, Case{"t5", true, 12, 0},
                      Case{"t5", false, 3, 0}, Case{"kerple", true, 12, 0},
                      Case{"kerple", false, 0, 0}, Case{"rel", true, 12, 0},
                      Case{"rel", false, 5, 9}),
    [](const auto& info) {
      return info.param.family + (info.param.causal ? "_causal" : "_bidirectional");
    });

TEST(RelativeAttention, BackwardIsBitIdentical) {
  torch::manual_seed(1);
  auto q = torch::randn({1, 4, 150, 32}).requires_grad_();
  auto k = torch::randn({1, 2, 150, 32}).requires_grad_();
  auto v = torch::randn({1, 2, 150, 32}).requires_grad_();
  auto table = torch::randn({32, 4}).requires_grad_();
  auto run = [&] {
    auto [out, lse] = posenc::ops::relative_attention(
        q, k, v, RelativeAttentionOptions().table(table).causal(true));
    return torch::autograd::grad({out.square().sum() + lse.sum()}, {q, k, v, table});
  };
  auto a = run(), b = run();
  for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(torch::equal(a[i], b[i])) << i;
}

TEST(RelativeAttention, BadInputsNameOpAndArgument) {
  auto q = torch::randn({1, 4, 8, 16}), k = torch::randn({1, 4, 8, 16});
  using posenc_test::expect_error;
  expect_error([&] { posenc::ops::relative_attention(q, torch::randn({1, 3, 8, 16}), torch::randn({1, 3, 8, 16})); },
               {"posenc.relative_attention", "argument 'k'", "divides"});
  expect_error(
      [&] {
        posenc::ops::relative_attention(q, k, k, RelativeAttentionOptions()
                                                     .slopes(posenc::ops::alibi_slopes(4))
                                                     .table(torch::randn({32, 4})));
      },
      {"posenc.relative_attention", "at most one"});
  expect_error([&] { posenc::ops::relative_attention(q, k, k, RelativeAttentionOptions().slopes(torch::ones({3}))); },
               {"posenc.relative_attention", "argument 'slopes'", "[3]"});
  expect_error([&] { posenc::ops::relative_attention(q, k, k.to(torch::kDouble)); },
               {"posenc.relative_attention", "argument 'v'", "dtype"});
  expect_error(
      [&] {
        posenc::ops::relative_attention(
            q.view({8, 4, 16}), k.view({8, 4, 16}), k.view({8, 4, 16}),
            RelativeAttentionOptions().layout("thd").cu_seqlens_q(torch::tensor({0, 5, 3, 8})));
      },
      {"posenc.relative_attention", "argument 'cu_seqlens_q'"});
}

TEST(ModuleAttention, ALiBiEqualsBiasPlusSoftmax) {
  torch::manual_seed(2);
  posenc::nn::ALiBi alibi(4);
  auto q = torch::randn({2, 4, 17, 8}, f64), k = torch::randn({2, 4, 20, 8}, f64),
       v = torch::randn({2, 4, 20, 8}, f64);
  alibi->to(torch::kDouble);
  auto out = alibi->attention(q, k, v, std::nullopt, /*q_offset=*/3);
  auto want = reference(q, k, v, alibi->forward(17, 20, 3, 0).unsqueeze(0), true, 3, 0);
  EXPECT_TRUE(torch::allclose(out, want, 1e-10, 1e-10));
}

TEST(ModuleAttention, TransformerXLEqualsPaperScores) {
  torch::manual_seed(3);
  posenc::nn::TransformerXLRelativeScore txl(16, 2, 8);
  txl->to(torch::kDouble);
  const int64_t L = 9, M = 4;
  auto q = torch::randn({1, 2, L, 8}, f64), k = torch::randn({1, 2, M + L, 8}, f64),
       v = torch::randn({1, 2, M + L, 8}, f64);
  auto out = txl->attention(q, k, v, M);
  auto scores = (torch::matmul(txl->content_query(q), k.transpose(-1, -2)) + txl->forward(q, M)) /
                std::sqrt(8.0);
  auto keep = torch::arange(M + L).unsqueeze(0) <= torch::arange(L).unsqueeze(1) + M;
  auto want = torch::matmul(torch::softmax(scores.masked_fill(~keep, -INFINITY), -1), v);
  EXPECT_TRUE(torch::allclose(out, want, 1e-10, 1e-10)) << (out - want).abs().max();
}

}  // namespace
