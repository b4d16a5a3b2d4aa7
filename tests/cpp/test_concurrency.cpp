// Concurrency through the C++ API: ops (forward and backward) and modules called from 4
// std::threads at once, each thread with its own inputs and many iterations, give exactly the
// results of a single-threaded call (torch::equal). Shared modules are called from every
// thread; RotaryEmbedding "dynamic" gets a different length in every thread, so its
// per-length table is computed concurrently.
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <atomic>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "posenc/nn.h"
#include "posenc/ops.h"
#include "posenc/rope_scaling.h"

namespace {

namespace ops = posenc::ops;
namespace pnn = posenc::nn;

constexpr int kThreads = 4;
constexpr int kIterations = 8;

using Outputs = std::vector<torch::Tensor>;

torch::Tensor randn(torch::Generator& g, torch::IntArrayRef shape, bool grad = true) {
  return torch::randn(shape, g, torch::kFloat).requires_grad_(grad);
}

// Forward outputs + gradients of sum(out * upstream) w.r.t. every leaf.
Outputs finish(const Outputs& outs, const std::vector<torch::Tensor>& leaves, torch::Generator& g) {
  std::vector<torch::Tensor> ups;
  for (const auto& o : outs) ups.push_back(torch::randn(o.sizes(), g, o.scalar_type()));
  auto grads = torch::autograd::grad(outs, leaves, ups, /*retain_graph=*/false,
                                     /*create_graph=*/false, /*allow_unused=*/true);
  Outputs res;
  for (const auto& o : outs) res.push_back(o.detach());
  for (size_t i = 0; i < grads.size(); ++i) {
    res.push_back(grads[i].defined() ? grads[i] : torch::zeros_like(leaves[i]));
  }
  return res;
}

struct Case {
  std::string name;
  std::function<Outputs(uint64_t seed)> run;
};

std::vector<Case> cases() {
  std::vector<Case> c;
  c.push_back({"alibi", [](uint64_t seed) {
                 auto g = at::make_generator<at::CPUGeneratorImpl>(seed);
                 auto s = (torch::rand({4}, g) * 0.5 + 0.01).requires_grad_();
                 return finish({ops::alibi_bias(s, 160, 256, 96, 0, false)}, {s}, g);
               }});
  c.push_back({"t5", [](uint64_t seed) {
                 auto g = at::make_generator<at::CPUGeneratorImpl>(seed);
                 auto table = randn(g, {32, 4});
                 return finish({ops::t5_bias(table, 160, 256, 96, 0, false, 128)}, {table}, g);
               }});
  c.push_back({"kerple", [](uint64_t seed) {
                 auto g = at::make_generator<at::CPUGeneratorImpl>(seed);
                 auto r1 = (torch::rand({4}, g) + 0.1).requires_grad_();
                 auto r2 = (torch::rand({4}, g) + 0.1).requires_grad_();
                 return finish({ops::kerple_bias(r1, r2, 160, 256, 96, 0, "log", true)}, {r1, r2}, g);
               }});
  c.push_back({"rel_pos_scores", [](uint64_t seed) {
                 auto g = at::make_generator<at::CPUGeneratorImpl>(seed);
                 auto q = randn(g, {2, 4, 64, 16});
                 auto rel = randn(g, {4, 2 * 90 + 1, 16});
                 return finish({ops::rel_pos_scores(q, rel, 8, 0, 72, 24, true)}, {q, rel}, g);
               }});
  c.push_back({"rope", [](uint64_t seed) {
                 auto g = at::make_generator<at::CPUGeneratorImpl>(seed);
                 auto x = randn(g, {2, 64, 4, 32});
                 auto pos = torch::randint(0, 1000, {2, 64}, g, torch::kLong);
                 auto zeta = torch::linspace(0.3, 1.0, 8);
                 return finish({ops::rope(x, pos, ops::rope_inv_freq(16), 3, 16, true, "bshd",
                                          std::nullopt, 1.1, zeta, 128.0, true, 500)},
                               {x}, g);
               }});
  c.push_back({"rope_thd", [](uint64_t seed) {
                 auto g = at::make_generator<at::CPUGeneratorImpl>(seed);
                 auto x = randn(g, {100, 4, 32});
                 auto cu = torch::tensor({int64_t{0}, int64_t{37}, int64_t{100}});
                 return finish({ops::rope(x, std::nullopt, ops::rope_inv_freq(32), 5, std::nullopt,
                                          false, "thd", cu)},
                               {x}, g);
               }});
  c.push_back({"apply_rotary_pos_emb", [](uint64_t seed) {
                 auto g = at::make_generator<at::CPUGeneratorImpl>(seed);
                 auto x = randn(g, {2, 4, 64, 32});
                 auto cs = randn(g, {64, 16});
                 auto sn = randn(g, {64, 16});
                 return finish({ops::apply_rotary_pos_emb(x, cs, sn)}, {x, cs, sn}, g);
               }});
  c.push_back({"sinusoidal_table", [](uint64_t seed) {
                 return Outputs{ops::sinusoidal_table(1024, 64, 1e4, static_cast<int64_t>(seed)),
                                ops::sinusoidal_table(300, 32, 500.0, -5, false, torch::kDouble)};
               }});
  for (const char* term : {"none", "alibi", "t5", "kerple", "txl"}) {
    c.push_back({std::string("relative_attention_") + term, [term](uint64_t seed) {
                   auto g = at::make_generator<at::CPUGeneratorImpl>(seed);
                   auto q = randn(g, {2, 4, 48, 16});
                   auto k = randn(g, {2, 4, 56, 16});
                   auto v = randn(g, {2, 4, 56, 16});
                   std::vector<torch::Tensor> leaves{q, k, v};
                   ops::RelativeAttentionOptions o;
                   o.causal(true).q_offset(8);
                   const std::string t = term;
                   if (t == "alibi") {
                     auto s = ops::alibi_slopes(4).requires_grad_();
                     o.slopes(s);
                     leaves.push_back(s);
                   } else if (t == "t5") {
                     auto table = randn(g, {32, 4});
                     o.table(table);
                     leaves.push_back(table);
                   } else if (t == "kerple") {
                     auto r1 = (torch::rand({4}, g) + 0.1).requires_grad_();
                     auto r2 = (torch::rand({4}, g) + 0.1).requires_grad_();
                     o.r1(r1).r2(r2);
                     leaves.push_back(r1);
                     leaves.push_back(r2);
                   } else if (t == "txl") {
                     auto rel = (torch::randn({4, 2 * 104 + 1, 16}, g) * 0.1).requires_grad_();
                     auto qr = randn(g, {2, 4, 48, 16});
                     o.rel_emb(rel).q_rel(qr);
                     leaves.push_back(rel);
                     leaves.push_back(qr);
                   }
                   auto [out, lse] = ops::relative_attention(q, k, v, o);
                   return finish({out, lse}, leaves, g);
                 }});
  }
  return c;
}

void expect_equal(const Outputs& a, const Outputs& b, const std::string& what,
                  std::atomic<int>& failures) {
  bool same = a.size() == b.size();
  for (size_t i = 0; same && i < a.size(); ++i) {
    same = a[i].sizes() == b[i].sizes() && a[i].scalar_type() == b[i].scalar_type() &&
           torch::equal(a[i], b[i]);
  }
  if (!same) {
    // gtest assertions are thread-safe on POSIX, but count here to report once per thread
    ADD_FAILURE() << what << ": results differ from the single-threaded call";
    ++failures;
  }
}

// Runs work(t) on kThreads threads; an exception in a thread is a failure, not a crash.
void in_threads(const std::function<void(int)>& work, std::atomic<int>& failures) {
  std::vector<std::thread> pool;
  for (int t = 0; t < kThreads; ++t) {
    pool.emplace_back([&, t] {
      try {
        work(t);
      } catch (const std::exception& e) {
        ADD_FAILURE() << "thread " << t << " threw: " << e.what();
        ++failures;
      }
    });
  }
  for (auto& th : pool) th.join();
}

TEST(Concurrency, OpsFromFourThreads) {
  const auto all = cases();
  std::vector<std::vector<Outputs>> expected(kThreads);
  for (int t = 0; t < kThreads; ++t) {
    for (const auto& c : all) expected[t].push_back(c.run(100 + t));
  }
  std::atomic<int> failures{0};
  in_threads(
      [&](int t) {
        for (int it = 0; it < kIterations && failures == 0; ++it) {
          // each thread starts at another case, so that different ops overlap
          for (size_t n = 0; n < all.size(); ++n) {
            const size_t i = (n + static_cast<size_t>(t) * 3 + static_cast<size_t>(it)) % all.size();
            expect_equal(expected[t][i], all[i].run(100 + t),
                         all[i].name + " in thread " + std::to_string(t), failures);
          }
        }
      },
      failures);
  EXPECT_EQ(failures.load(), 0);
}

TEST(Concurrency, SharedModulesFromFourThreads) {
  torch::manual_seed(0);
  posenc::RopeScalingConfig cfg;
  cfg.type = posenc::RopeType::Dynamic;
  cfg.head_dim = 32;
  cfg.factor = 4.0;
  cfg.max_position_embeddings = 64;
  pnn::RotaryEmbedding rotary(pnn::RotaryEmbeddingOptions(32).scaling(cfg));
  pnn::ALiBi alibi(4);
  pnn::T5RelativeBias t5(4);
  pnn::KERPLEBias kerple(pnn::KERPLEBiasOptions(4).kind("power"));
  pnn::TransformerXLRelativeScore txl(64, 4, 16);
  pnn::LearnedPositionalEmbedding learned(512, 32);
  pnn::SinusoidalPositionalEncoding sinusoidal(32);

  struct In {
    int64_t s;
    torch::Tensor q, k, qx, x;
  };
  std::vector<In> in;
  for (int t = 0; t < kThreads; ++t) {
    auto g = at::make_generator<at::CPUGeneratorImpl>(200 + t);
    const int64_t s = 100 + 40 * t;  // past max_position_embeddings: a table per thread
    in.push_back({s, torch::randn({1, 4, s, 32}, g), torch::randn({1, 4, s, 32}, g),
                  torch::randn({1, 4, 24 + t, 16}, g), torch::randn({2, s, 32}, g)});
  }
  auto call = [&](int t) {
    const In& a = in[static_cast<size_t>(t)];
    torch::NoGradGuard no_grad;
    auto [qr, kr] = rotary->forward(a.q, a.k);
    return Outputs{qr,
                   kr,
                   alibi->forward(a.s, a.s + 3),
                   t5->forward(a.s, a.s),
                   kerple->forward(a.s, a.s + 1, 2, 0),
                   txl->forward(a.qx, t),
                   txl->attention(a.qx, a.qx.repeat({1, 1, 2, 1}).narrow(2, 0, 24 + 2 * t),
                                  a.qx.repeat({1, 1, 2, 1}).narrow(2, 0, 24 + 2 * t), t),
                   learned->forward(a.x, t),
                   sinusoidal->forward(a.x, 7 * t)};
  };
  std::vector<Outputs> expected;
  for (int t = 0; t < kThreads; ++t) expected.push_back(call(t));
  std::atomic<int> failures{0};
  in_threads(
      [&](int t) {
        for (int it = 0; it < 3 * kIterations && failures == 0; ++it) {
          expect_equal(expected[static_cast<size_t>(t)], call(t),
                       "modules in thread " + std::to_string(t), failures);
        }
      },
      failures);
  EXPECT_EQ(failures.load(), 0);
}

}  // namespace
