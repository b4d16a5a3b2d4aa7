// FIRE (Li et al. 2023) and dynamic position bias (x-transformers' DynamicPositionBias) from C++:
// the ops against fp64 references written from the formulas (the MLP on the full distance
// matrix), gradients against torch::autograd through those references, the modules' state_dict
// keys, decode consistency and errors.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <string>
#include <vector>

#include "posenc/nn/dynamic_position_bias.h"
#include "posenc/nn/fire.h"
#include "posenc/ops_mlp_bias.h"
#include "test_util.h"

namespace {

namespace po = posenc::ops;
namespace pn = posenc::nn;
using posenc_test::expect_error;

at::Tensor positions(int64_t n, int64_t offset) { return at::arange(n, at::kDouble) + offset; }

// ---- dynamic position bias -------------------------------------------------------------
struct Mlp {
  std::vector<at::Tensor> w, b, g;
};

Mlp make_mlp(int64_t dim, int64_t heads, int64_t depth, bool norm) {
  Mlp m;
  int64_t in = 1;
  for (int64_t l = 0; l <= depth; ++l) {
    const int64_t out = l == depth ? heads : dim;
    m.w.push_back((torch::randn({out, in}, at::kDouble) * 0.7).requires_grad_());
    m.b.push_back((torch::randn({out}, at::kDouble) * 0.3).requires_grad_());
    if (norm && l < depth) m.g.push_back((1 + 0.2 * torch::randn({out}, at::kDouble)).requires_grad_());
    in = out;
  }
  return m;
}

// x-transformers' forward: the MLP on every (i, j) of the distance matrix q_pos - k_pos.
at::Tensor ref_dpb(const Mlp& m, int64_t q_len, int64_t k_len, int64_t q_offset, int64_t k_offset,
                   bool log_distance, bool causal) {
  auto qp = positions(q_len, q_offset), kp = positions(k_len, k_offset);
  auto d = qp.unsqueeze(1) - kp.unsqueeze(0);
  auto x = (log_distance ? at::sign(d) * at::log(d.abs() + 1) : d).unsqueeze(-1);
  for (size_t l = 0; l + 1 < m.w.size(); ++l) {
    x = torch::nn::functional::linear(x, m.w[l], m.b[l]);
    if (!m.g.empty()) {
      x = at::layer_norm(x, {x.size(-1)}, {}, {}, 1e-5) * m.g[l];
    }
    x = at::silu(x);
  }
  auto out = torch::nn::functional::linear(x, m.w.back(), m.b.back()).permute({2, 0, 1});
  if (causal) out = at::where((kp.unsqueeze(0) > qp.unsqueeze(1)).unsqueeze(0), at::zeros_like(out), out);
  return out;
}

std::vector<at::Tensor> all_params(const Mlp& m) {
  std::vector<at::Tensor> p(m.w);
  p.insert(p.end(), m.b.begin(), m.b.end());
  p.insert(p.end(), m.g.begin(), m.g.end());
  return p;
}

TEST(DynamicPositionBias, ForwardAndGradientsMatchReference) {
  torch::manual_seed(0);
  struct Case { int64_t depth; bool norm, log, causal; int64_t q, k, qo, ko; };
  for (const Case& c : std::vector<Case>{{1, false, false, false, 5, 5, 0, 0},
                                         {2, true, true, true, 6, 9, 4, 0},
                                         {3, false, true, false, 70, 66, 0, 5},
                                         {2, true, false, true, 4, 7, 0, 2}}) {
    const auto m = make_mlp(5, 3, c.depth, c.norm);
    auto got = po::dynamic_position_bias(m.w, m.b, c.q, c.k, c.qo, c.ko, c.log, c.causal, m.g);
    auto want = ref_dpb(m, c.q, c.k, c.qo, c.ko, c.log, c.causal);
    EXPECT_TRUE(at::allclose(got, want, 1e-12, 1e-12));
    auto g = torch::randn_like(want);
    const auto p = all_params(m);
    auto ga = torch::autograd::grad({(got * g).sum()}, p);
    auto gb = torch::autograd::grad({(want * g).sum()}, p);
    for (size_t k = 0; k < p.size(); ++k) EXPECT_TRUE(at::allclose(ga[k], gb[k], 1e-10, 1e-10)) << k;
  }
}

TEST(DynamicPositionBias, DecodeRowEqualsLastRow) {
  torch::manual_seed(1);
  const auto m = make_mlp(6, 2, 2, true);
  const int64_t n = 19;
  auto full = po::dynamic_position_bias(m.w, m.b, n, n, 0, 0, true, true, m.g);
  auto step = po::dynamic_position_bias(m.w, m.b, 1, n, n - 1, 0, true, true, m.g);
  EXPECT_TRUE(at::equal(step.select(1, 0), full.select(1, n - 1)));
}

TEST(DynamicPositionBias, ModuleKeysAndForward) {
  pn::DynamicPositionBias m(pn::DynamicPositionBiasOptions(8, 4).depth(2).norm(true).log_distance(true));
  std::vector<std::string> keys;
  for (const auto& kv : m->named_parameters()) keys.push_back(kv.key());
  const std::vector<std::string> want{"mlp.0.0.weight", "mlp.0.0.bias", "mlp.0.1.gamma",
                                      "mlp.1.0.weight", "mlp.1.0.bias", "mlp.1.1.gamma",
                                      "mlp.2.weight",   "mlp.2.bias"};
  EXPECT_EQ(keys, want);
  Mlp ref;
  for (const auto& l : m->linears) {
    ref.w.push_back(l->weight.to(at::kDouble));
    ref.b.push_back(l->bias.to(at::kDouble));
  }
  for (const auto& g : m->norms) ref.g.push_back(g->gamma.to(at::kDouble));
  EXPECT_TRUE(at::allclose(m(5, 7, 2, 0).to(at::kDouble), ref_dpb(ref, 5, 7, 2, 0, true, false), 1e-5, 1e-5));
  expect_error<c10::ValueError>([] { pn::DynamicPositionBias(pn::DynamicPositionBiasOptions(4, 2).depth(0)); },
                                "posenc.DynamicPositionBias: option 'depth' must be >= 1, but got 0");
}

TEST(DynamicPositionBias, Errors) {
  const auto m = make_mlp(5, 3, 2, false);
  expect_error([&] { po::dynamic_position_bias({m.w[0]}, {m.b[0]}, 3, 3); },
               "posenc.dynamic_position_bias: argument 'weights' must hold at least 2 tensors");
  expect_error([&] { po::dynamic_position_bias(m.w, {m.b[0], m.b[1]}, 3, 3); },
               "argument 'biases' must hold one tensor per weight (3), but got 2 tensors");
  expect_error([&] { po::dynamic_position_bias({m.w[0], m.w[1].narrow(1, 0, 2), m.w[2]}, m.b, 3, 3); },
               "argument 'weights[1]' must have in_features 5 (the previous layer's out_features), but got shape [5, 2]");
  expect_error([&] { po::dynamic_position_bias(m.w, m.b, -1, 3); },
               "argument 'q_len' must be >= 0, but got -1");
}

// ---- FIRE -------------------------------------------------------------------------------
struct Fire {
  at::Tensor c, L, w1, b1, w2, b2;
  std::vector<at::Tensor> all() const { return {c, L, w1, b1, w2, b2}; }
};

Fire make_fire(int64_t hidden, int64_t heads, double c, double L) {
  return {torch::tensor(c, at::kDouble).requires_grad_(), torch::tensor(L, at::kDouble).requires_grad_(),
          torch::randn({hidden, 1}, at::kDouble).requires_grad_(),
          (torch::randn({hidden}, at::kDouble) * 0.5).requires_grad_(),
          (torch::randn({heads, hidden}, at::kDouble) * 0.5).requires_grad_(),
          (torch::randn({heads}, at::kDouble) * 0.2).requires_grad_()};
}

// Li et al. 2023, eq. 3-4, as the paper's code: f(log(|c (i - j)| + 1) / (log(|c max(i, |L|)| + 1) + eps)).
at::Tensor ref_fire(const Fire& p, int64_t q_len, int64_t k_len, int64_t q_offset, int64_t k_offset,
                    bool causal, double eps = 1e-6) {
  auto qp = positions(q_len, q_offset), kp = positions(k_len, k_offset);
  auto rel = qp.unsqueeze(1) - kp.unsqueeze(0);
  auto num = at::log(at::abs(p.c * rel) + 1);
  auto den = at::log(at::abs(p.c * at::maximum(qp, at::abs(p.L))) + 1) + eps;
  auto x = (num / den.unsqueeze(1)).unsqueeze(-1);
  auto h = at::relu(torch::nn::functional::linear(x, p.w1, p.b1));
  auto out = torch::nn::functional::linear(h, p.w2, p.b2).permute({2, 0, 1});
  if (causal) out = at::where((kp.unsqueeze(0) > qp.unsqueeze(1)).unsqueeze(0), at::zeros_like(out), out);
  return out;
}

TEST(FIRE, ForwardAndGradientsMatchReference) {
  torch::manual_seed(2);
  struct Case { int64_t q, k, qo, ko; bool causal; double c, L; };
  for (const Case& c : std::vector<Case>{{6, 6, 0, 0, true, 0.3, 6.5},
                                         {5, 12, 7, 0, true, -0.2, 9.5},
                                         {9, 9, 3, 1, false, 1.2, -2.5},
                                         {20, 30, 0, 0, true, 0.05, 0.0}}) {
    const auto p = make_fire(7, 3, c.c, c.L);
    auto got = po::fire_bias(p.c, p.L, p.w1, p.b1, p.w2, p.b2, c.q, c.k, c.qo, c.ko, c.causal);
    auto want = ref_fire(p, c.q, c.k, c.qo, c.ko, c.causal);
    EXPECT_TRUE(at::allclose(got, want, 1e-12, 1e-12));
    auto g = torch::randn_like(want);
    auto ga = torch::autograd::grad({(got * g).sum()}, p.all());
    auto gb = torch::autograd::grad({(want * g).sum()}, p.all());
    for (size_t k = 0; k < ga.size(); ++k) EXPECT_TRUE(at::allclose(ga[k], gb[k], 1e-9, 1e-10)) << k;
  }
}

TEST(FIRE, DecodeRowEqualsLastRowAndModuleKeys) {
  torch::manual_seed(3);
  pn::FIRE m(pn::FIREOptions(4).mlp_width(8).init_L(6.0));
  const int64_t n = 15;
  auto full = m(n, n);
  auto step = m(1, n, n - 1, 0);
  EXPECT_TRUE(at::equal(step.select(1, 0), full.select(1, n - 1)));
  std::vector<std::string> keys;
  for (const auto& kv : m->named_parameters()) keys.push_back(kv.key());
  for (const auto& kv : m->named_buffers()) keys.push_back(kv.key());
  const std::vector<std::string> want{"c", "L_multiplier", "mlp.0.weight", "mlp.0.bias",
                                      "mlp.2.weight", "mlp.2.bias", "init_L"};
  EXPECT_EQ(keys, want);
  expect_error<c10::ValueError>([] { pn::FIRE(pn::FIREOptions(2).init_L(0.0)); },
                                "posenc.FIRE: option 'init_L' must be finite and > 0, but got 0");
}

TEST(FIRE, Errors) {
  const auto p = make_fire(4, 2, 0.1, 5.0);
  expect_error([&] { po::fire_bias(p.c, p.L, p.w1, p.b1, p.w2, p.b2, 3, 3, -1, 0); },
               "posenc.fire_bias: argument 'q_offset' must be >= 0");
  expect_error([&] { po::fire_bias(p.c.view({1}), p.L, p.w1, p.b1, p.w2, p.b2, 3, 3); },
               "argument 'c' must be a 0-D tensor of shape () (a scalar), but got a 1-D tensor");
  expect_error([&] { po::fire_bias(p.c, p.L, p.w1, p.b1, p.w2.narrow(1, 0, 3), p.b2, 3, 3); },
               "argument 'w2' must have shape (num_heads, hidden = 4), but got shape [2, 3]");
}

}  // namespace
