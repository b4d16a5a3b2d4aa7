// CUDA kernels of RoPE / apply_rotary_pos_emb, relative position scores and ALiBi against the
// CPU kernels, forward and backward (the CPU kernels are checked against the papers in
// test_rope.cpp, test_rel_pos.cpp and test_alibi.cpp). Skipped without a CUDA device;
// POSENC_CUDA_TEST_DEVICE=cpu runs them on the CPU, a dry run of the tests themselves.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

#include "posenc/ops.h"

namespace {

torch::Device test_device() {
  const char* env = std::getenv("POSENC_CUDA_TEST_DEVICE");
  if (env != nullptr && std::string(env) == "cpu") return torch::Device(torch::kCPU);
  return torch::Device(torch::kCUDA);
}

#define POSENC_REQUIRE_DEVICE()                                        \
  if (test_device().is_cuda() && !torch::cuda::is_available()) {       \
    GTEST_SKIP() << "needs a CUDA device";                             \
  }

double tolerance(torch::ScalarType dtype) {
  switch (dtype) {
    case torch::kDouble:
      return 1e-12;
    case torch::kFloat:
      return 1e-5;
    case torch::kHalf:
      return 2e-3;
    default:
      return 1.6e-2;
  }
}

// `got` was computed on the test device, `want` by the CPU kernel from the same inputs.
void expect_close(const at::Tensor& got, const at::Tensor& want, const std::string& what) {
  ASSERT_EQ(got.device().type(), test_device().type()) << what;
  ASSERT_EQ(got.scalar_type(), want.scalar_type()) << what;
  ASSERT_EQ(got.sizes(), want.sizes()) << what;
  EXPECT_TRUE(got.is_contiguous()) << what;
  const auto a = got.cpu().to(torch::kDouble);
  const auto b = want.to(torch::kDouble);
  const double tol = tolerance(want.scalar_type());
  EXPECT_TRUE(torch::allclose(a, b, tol, tol))
      << what << ": max |difference| " << (a.numel() ? (a - b).abs().max().item<double>() : 0.0);
}

// Random values made in double then rounded, so both devices see the same inputs.
at::Tensor randn(std::vector<int64_t> shape, torch::ScalarType dtype) {
  return torch::randn(shape, torch::kDouble).to(dtype);
}

// Leaf copy on `device` that requires grad.
at::Tensor leaf(const at::Tensor& t, torch::Device device) {
  return t.to(device).detach().requires_grad_();
}

const torch::ScalarType kDtypes[] = {torch::kFloat, torch::kDouble, torch::kHalf, torch::kBFloat16};

std::string name(torch::ScalarType dtype) { return c10::toString(dtype); }

}  // namespace

struct RopeCase {
  int64_t B, H, S, D, R, offset;
  bool interleaved, bshd, with_positions;
};

TEST(CudaRope, ForwardAndBackwardMatchCpu) {
  POSENC_REQUIRE_DEVICE();
  torch::manual_seed(0);
  const RopeCase cases[] = {
      {2, 3, 5, 8, 8, 0, false, false, false},   {2, 3, 5, 8, 8, 4, true, true, true},
      {1, 4, 7, 10, 6, 1800, false, true, false}, {3, 2, 4, 130, 128, 9, true, false, true},
      {1, 37, 3, 8, 4, 2, false, true, true},
  };
  const auto dev = test_device();
  for (const auto dtype : kDtypes) {
    for (const auto& c : cases) {
      const std::string layout = c.bshd ? "bshd" : "bhsd";
      const std::string what = name(dtype) + " " + layout + " D=" + std::to_string(c.D);
      auto x = c.bshd ? randn({c.B, c.S, c.H, c.D}, dtype) : randn({c.B, c.H, c.S, c.D}, dtype);
      auto g = randn(x.sizes().vec(), dtype);
      auto inv = posenc::ops::rope_inv_freq(c.R);
      std::optional<at::Tensor> pos;
      if (c.with_positions) pos = torch::randint(0, 3000, {c.B, c.S}, torch::kLong);

      auto run = [&](torch::Device d) {
        auto xl = leaf(x, d);
        std::optional<at::Tensor> p;
        if (pos) p = pos->to(d);
        auto out = posenc::ops::rope(xl, p, inv.to(d), c.offset, c.R, c.interleaved, layout);
        auto gx = torch::autograd::grad({out}, {xl}, {g.to(d)})[0];
        return std::make_pair(out, gx);
      };
      const auto [out_cpu, gx_cpu] = run(torch::kCPU);
      const auto [out_dev, gx_dev] = run(dev);
      expect_close(out_dev, out_cpu, "rope " + what);
      expect_close(gx_dev, gx_cpu, "rope grad " + what);
      // dims >= R pass through bit-exactly
      EXPECT_TRUE(torch::equal(out_dev.slice(-1, c.R).cpu(), x.slice(-1, c.R))) << what;
    }
  }
}

TEST(CudaRope, ApplyRotaryForwardAndBackwardMatchCpu) {
  POSENC_REQUIRE_DEVICE();
  torch::manual_seed(1);
  const auto dev = test_device();
  for (const auto dtype : kDtypes) {
    for (const bool batched : {false, true}) {
      for (const bool interleaved : {false, true}) {
        const bool bshd = interleaved;  // both layouts, both pairings
        const int64_t B = 2, H = 5, S = 6, D = 12, R = 8;
        auto x = bshd ? randn({B, S, H, D}, dtype) : randn({B, H, S, D}, dtype);
        auto cos = batched ? randn({B, S, R}, dtype) : randn({S, R}, dtype);
        auto sin = batched ? randn({B, S, R}, dtype) : randn({S, R}, dtype);
        auto g = randn(x.sizes().vec(), dtype);
        const std::string layout = bshd ? "bshd" : "bhsd";
        auto run = [&](torch::Device d) {
          auto xl = leaf(x, d), cl = leaf(cos, d), sl = leaf(sin, d);
          auto out = posenc::ops::apply_rotary_pos_emb(xl, cl, sl, interleaved, layout);
          auto grads = torch::autograd::grad({out}, {xl, cl, sl}, {g.to(d)});
          return std::vector<at::Tensor>{out, grads[0], grads[1], grads[2]};
        };
        const auto want = run(torch::kCPU);
        const auto got = run(dev);
        const char* names[] = {"out", "grad_x", "grad_cos", "grad_sin"};
        for (int k = 0; k < 4; ++k) {
          expect_close(got[k], want[k],
                       std::string("apply_rotary_pos_emb ") + names[k] + " " + name(dtype) +
                           (batched ? " batched" : " shared") + " " + layout);
        }
      }
    }
  }
}

TEST(CudaRope, PackedQkvViewsAreReadInPlace) {
  POSENC_REQUIRE_DEVICE();
  torch::manual_seed(2);
  const auto dev = test_device();
  auto qkv = torch::randn({5, 3 * 2 * 8}, torch::TensorOptions().device(dev));
  const auto before = qkv.clone();
  auto q = qkv.slice(1, 0, 16).view({1, 5, 2, 8});  // (B, S, H, D), row stride 48
  ASSERT_FALSE(q.is_contiguous());
  auto inv = posenc::ops::rope_inv_freq(8, 10000.0, dev);
  for (const bool il : {false, true}) {
    auto got = posenc::ops::rope(q, std::nullopt, inv, 3, std::nullopt, il, "bshd");
    auto want = posenc::ops::rope(q.contiguous(), std::nullopt, inv, 3, std::nullopt, il, "bshd");
    EXPECT_TRUE(torch::equal(got, want));
    auto odd = q.slice(-1, 0, 8, 2);  // last-dim stride 2
    auto inv4 = posenc::ops::rope_inv_freq(4, 10000.0, dev);
    EXPECT_TRUE(torch::equal(posenc::ops::rope(odd, std::nullopt, inv4, 1, std::nullopt, il, "bshd"),
                             posenc::ops::rope(odd.contiguous(), std::nullopt, inv4, 1,
                                               std::nullopt, il, "bshd")));
  }
  EXPECT_TRUE(torch::equal(qkv, before));
}

TEST(CudaRope, EmptyInputsAndErrors) {
  POSENC_REQUIRE_DEVICE();
  const auto dev = test_device();
  auto opts = torch::TensorOptions().device(dev);
  auto inv = posenc::ops::rope_inv_freq(8, 10000.0, dev);
  auto empty = posenc::ops::rope(torch::randn({1, 8, 0, 8}, opts), std::nullopt, inv);
  EXPECT_EQ(empty.sizes(), torch::IntArrayRef({1, 8, 0, 8}));
  EXPECT_EQ(empty.device().type(), dev.type());
  auto x = torch::randn({2, 3, 5, 8}, opts);
  try {
    posenc::ops::rope(x, std::nullopt, inv, 0, 7);
    ADD_FAILURE() << "expected c10::Error";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("posenc.rope: argument 'rotary_dim'"), std::string::npos)
        << e.what();
  }
  // the device still works after the error
  expect_close(posenc::ops::rope(x, std::nullopt, inv, 2), posenc::ops::rope(x.cpu(), std::nullopt, inv.cpu(), 2),
               "rope after an error");
  if (dev.is_cuda()) {
    EXPECT_THROW(posenc::ops::rope(x, std::nullopt, inv.cpu()), c10::Error);  // device mismatch
  }
}

struct RelPosCase {
  int64_t b, h, lq, d, r, q_offset, k_offset, k_len;
  std::optional<int64_t> m;
};

TEST(CudaRelPos, ForwardAndBackwardMatchCpu) {
  POSENC_REQUIRE_DEVICE();
  torch::manual_seed(3);
  const RelPosCase cases[] = {
      {2, 3, 5, 8, 11, 0, 0, 5, std::nullopt}, {1, 2, 3, 4, 9, 2, 0, 5, std::nullopt},
      {2, 2, 4, 16, 7, 6, 0, 10, std::nullopt}, {1, 3, 6, 5, 9, 0, 0, 6, 2},
      {2, 1, 7, 3, 5, 3, 1, 12, 0},             {1, 2, 4, 9, 13, -5, -3, 7, 4},
      {4, 1, 300, 8, 5, 0, 0, 300, std::nullopt}, {1, 2, 2, 200, 9, 0, 0, 400, 3},
  };
  const auto dev = test_device();
  for (const auto dtype : kDtypes) {
    for (const auto& c : cases) {
      auto q = randn({c.b, c.h, c.lq, c.d}, dtype);
      auto e = randn({c.h, c.r, c.d}, dtype);
      auto g = randn({c.b, c.h, c.lq, c.k_len}, dtype);
      auto run = [&](torch::Device d) {
        auto ql = leaf(q, d), el = leaf(e, d);
        auto out = posenc::ops::rel_pos_scores(ql, el, c.q_offset, c.k_offset, c.k_len, c.m);
        auto grads = torch::autograd::grad({out}, {ql, el}, {g.to(d)});
        return std::vector<at::Tensor>{out, grads[0], grads[1]};
      };
      const auto want = run(torch::kCPU);
      const auto got = run(dev);
      const std::string what = name(dtype) + " lq=" + std::to_string(c.lq) +
                               " k_len=" + std::to_string(c.k_len);
      expect_close(got[0], want[0], "rel_pos_scores " + what);
      expect_close(got[1], want[1], "grad_q " + what);
      expect_close(got[2], want[2], "grad_rel_emb " + what);
    }
  }
}

TEST(CudaRelPos, NonContiguousAndEmpty) {
  POSENC_REQUIRE_DEVICE();
  torch::manual_seed(4);
  const auto dev = test_device();
  auto opts = torch::TensorOptions().device(dev);
  auto qkv = torch::randn({2, 5, 3 * 3 * 8}, opts);
  auto q = qkv.slice(-1, 0, 24).view({2, 5, 3, 8}).transpose(1, 2);  // (B, H, L, D) view
  auto e = torch::randn({9, 3, 8}, opts).transpose(0, 1);
  ASSERT_FALSE(q.is_contiguous());
  EXPECT_TRUE(torch::equal(posenc::ops::rel_pos_scores(q, e, 2, 0, 7, 3),
                           posenc::ops::rel_pos_scores(q.contiguous(), e.contiguous(), 2, 0, 7, 3)));
  auto empty = posenc::ops::rel_pos_scores(torch::randn({1, 2, 0, 4}, opts), torch::randn({2, 5, 4}, opts), 0, 0, 0);
  EXPECT_EQ(empty.sizes(), torch::IntArrayRef({1, 2, 0, 0}));
}

TEST(CudaAlibi, ForwardAndBackwardMatchCpu) {
  POSENC_REQUIRE_DEVICE();
  torch::manual_seed(5);
  struct C {
    int64_t h, lq, lk, q_offset, k_offset;
  };
  const C cases[] = {{4, 7, 9, 0, 0}, {3, 5, 11, 6, 0}, {5, 8, 4, 3, 7}, {12, 64, 300, 1000, -5}};
  const auto dev = test_device();
  for (const auto dtype : kDtypes) {
    for (const auto& c : cases) {
      for (const bool causal : {true, false}) {
        auto slopes = posenc::ops::alibi_slopes(c.h, dtype);
        auto g = randn({c.h, c.lq, c.lk}, dtype);
        auto run = [&](torch::Device d) {
          auto s = leaf(slopes, d);
          auto out = posenc::ops::alibi_bias(s, c.lq, c.lk, c.q_offset, c.k_offset, causal);
          auto gs = torch::autograd::grad({out}, {s}, {g.to(d)})[0];
          return std::make_pair(out, gs);
        };
        const auto [out_cpu, gs_cpu] = run(torch::kCPU);
        const auto [out_dev, gs_dev] = run(dev);
        // one rounding of (-d) * slope in opmath on both devices: bit-exact
        EXPECT_TRUE(torch::equal(out_dev.cpu(), out_cpu)) << name(dtype) << " h=" << c.h;
        expect_close(gs_dev, gs_cpu, "alibi grad " + name(dtype));
      }
    }
  }
}

TEST(CudaAlibi, EmptyAndErrors) {
  POSENC_REQUIRE_DEVICE();
  const auto dev = test_device();
  auto slopes = posenc::ops::alibi_slopes(4, torch::kFloat, dev);
  EXPECT_EQ(posenc::ops::alibi_bias(slopes, 0, 5).sizes(), torch::IntArrayRef({4, 0, 5}));
  EXPECT_THROW(posenc::ops::alibi_bias(slopes, -1, 5), c10::Error);
  EXPECT_TRUE(torch::equal(posenc::ops::alibi_bias(slopes, 2, 3).cpu(),
                           posenc::ops::alibi_bias(slopes.cpu(), 2, 3)));
}
