// CUDA kernels of the sinusoidal table, T5 bias and KERPLE bias against their CPU kernels,
// forward and backward (through torch::autograd, which calls the registered backward ops).
// Skipped where no CUDA device is visible.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <string>
#include <tuple>
#include <vector>

#include "posenc/ops.h"

namespace {

#define POSENC_NEED_CUDA() \
  if (!torch::cuda::is_available()) GTEST_SKIP() << "needs a CUDA device"

const std::vector<at::ScalarType> kDtypes = {at::kFloat, at::kDouble, at::kHalf, at::kBFloat16};

// Tolerance for a CUDA result against the CPU kernel's: one rounding of the output dtype
// (sums in fp64 in another order; CUDA's log1p/pow within a few ulp of glibc).
double rtol_for(at::ScalarType t) {
  switch (t) {
    case at::kDouble: return 1e-12;
    case at::kFloat: return 1e-6;
    case at::kHalf: return 1e-3;
    default: return 8e-3;
  }
}

bool close(const at::Tensor& cuda, const at::Tensor& cpu, at::ScalarType t, double atol = 1e-6) {
  return at::allclose(cuda.cpu().to(at::kDouble), cpu.to(at::kDouble), rtol_for(t), atol);
}

// (q_len, k_len, q_offset, k_offset)
const std::vector<std::tuple<int64_t, int64_t, int64_t, int64_t>> kShapes = {
    {7, 9, 0, 0}, {5, 200, 195, 0}, {130, 70, 0, 0}, {1, 33, 32, 0}, {8, 4, 3, 7}, {90, 90, -20, 5}};

}  // namespace

TEST(CudaSinusoidal, MatchesCpu) {
  POSENC_NEED_CUDA();
  for (auto dt : kDtypes) {
    for (bool interleaved : {true, false}) {
      for (int64_t dim : {2, 6, 64, 130}) {
        auto pos = at::arange(-40, 300, at::kLong);
        auto cpu = posenc::ops::sinusoidal_table_at(pos, dim, 10000.0, interleaved, dt);
        auto cuda = posenc::ops::sinusoidal_table_at(pos.cuda(), dim, 10000.0, interleaved, dt);
        ASSERT_TRUE(cuda.is_cuda());
        ASSERT_EQ(cuda.scalar_type(), dt);
        ASSERT_EQ(cuda.sizes(), cpu.sizes());
        if (dt == at::kDouble) {
          EXPECT_TRUE(at::allclose(cuda.cpu(), cpu, 0.0, 1e-15)) << dim << interleaved;
        } else {
          // the same fp64 angles rounded once: the same bits
          EXPECT_TRUE(at::equal(cuda.cpu(), cpu)) << dt << dim << interleaved;
        }
      }
    }
  }
  auto empty = posenc::ops::sinusoidal_table_at(at::empty({0}, at::TensorOptions().dtype(at::kLong).device(at::kCUDA)), 4);
  EXPECT_EQ(empty.sizes(), (at::IntArrayRef{0, 4}));
}

TEST(CudaT5, BucketsMatchCpu) {
  POSENC_NEED_CUDA();
  auto rp = at::arange(-20000, 20000, at::kLong);
  for (bool bidirectional : {true, false}) {
    for (auto [nb, md] : std::vector<std::pair<int64_t, int64_t>>{{32, 128}, {8, 16}, {64, 1000}}) {
      auto cpu = posenc::ops::t5_relative_bucket(rp, bidirectional, nb, md);
      auto cuda = posenc::ops::t5_relative_bucket(rp.cuda(), bidirectional, nb, md);
      EXPECT_TRUE(at::equal(cuda.cpu(), cpu)) << bidirectional << " " << nb << " " << md;
    }
  }
}

TEST(CudaT5, BiasForwardBackwardMatchCpu) {
  POSENC_NEED_CUDA();
  for (auto dt : kDtypes) {
    for (bool bidirectional : {true, false}) {
      for (auto [q_len, k_len, q_off, k_off] : kShapes) {
        auto table = at::randn({32, 11}, at::kDouble).to(dt);
        auto g = at::randn({11, q_len, k_len}, at::kDouble).to(dt);
        auto tc = table.clone().requires_grad_();
        auto tg = table.cuda().requires_grad_();
        auto out_c = posenc::ops::t5_bias(tc, q_len, k_len, q_off, k_off, bidirectional, 128);
        auto out_g = posenc::ops::t5_bias(tg, q_len, k_len, q_off, k_off, bidirectional, 128);
        ASSERT_TRUE(out_g.is_cuda());
        EXPECT_TRUE(at::equal(out_g.cpu(), out_c)) << dt << q_len << " " << k_len;  // a gather
        (out_c * g).sum().backward();
        (out_g * g.cuda()).sum().backward();
        EXPECT_TRUE(close(tg.grad(), tc.grad(), dt)) << dt << " " << q_len << " " << k_len;
      }
    }
  }
}

TEST(CudaT5, WideAndLong) {
  POSENC_NEED_CUDA();
  for (auto [heads, q_len, k_len] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{
           {70000, 2, 3}, {2, 70000, 2}, {2, 1, 70000}}) {
    auto table = at::randn({32, heads});
    auto g = at::randn({heads, q_len, k_len});
    auto tc = table.clone().requires_grad_();
    auto tg = table.cuda().requires_grad_();
    auto out_c = posenc::ops::t5_bias(tc, q_len, k_len, 1, 0, true, 128);
    auto out_g = posenc::ops::t5_bias(tg, q_len, k_len, 1, 0, true, 128);
    EXPECT_TRUE(at::equal(out_g.cpu(), out_c)) << heads << " " << q_len << " " << k_len;
    (out_c * g).sum().backward();
    (out_g * g.cuda()).sum().backward();
    EXPECT_TRUE(close(tg.grad(), tc.grad(), at::kFloat, 1e-5)) << heads << " " << q_len;
  }
}

TEST(CudaKerple, BiasForwardBackwardMatchCpu) {
  POSENC_NEED_CUDA();
  for (auto dt : kDtypes) {
    for (const std::string kind : {"log", "power"}) {
      for (bool causal : {true, false}) {
        for (auto [q_len, k_len, q_off, k_off] : kShapes) {
          auto r1 = (at::rand({5}, at::kDouble) * 2 + 0.05).to(dt);
          auto r2 = (at::rand({5}, at::kDouble) * 0.9 + 0.05).to(dt);
          auto g = at::randn({5, q_len, k_len}, at::kDouble).to(dt);
          auto a_c = r1.clone().requires_grad_(), b_c = r2.clone().requires_grad_();
          auto a_g = r1.cuda().requires_grad_(), b_g = r2.cuda().requires_grad_();
          auto out_c = posenc::ops::kerple_bias(a_c, b_c, q_len, k_len, q_off, k_off, kind, causal);
          auto out_g = posenc::ops::kerple_bias(a_g, b_g, q_len, k_len, q_off, k_off, kind, causal);
          ASSERT_TRUE(out_g.is_cuda());
          EXPECT_TRUE(close(out_g, out_c, dt, 1e-5)) << dt << kind << causal << q_len;
          (out_c * g).sum().backward();
          (out_g * g.cuda()).sum().backward();
          EXPECT_TRUE(close(a_g.grad(), a_c.grad(), dt, 1e-5)) << dt << kind << causal << q_len;
          EXPECT_TRUE(close(b_g.grad(), b_c.grad(), dt, 1e-5)) << dt << kind << causal << q_len;
        }
      }
    }
  }
}

TEST(CudaKerple, ErrorsBeforeLaunchAndContextSurvives) {
  POSENC_NEED_CUDA();
  auto r1 = at::rand({3}).cuda();
  auto bad = at::tensor({0.5, -0.25, 1.0}).cuda();
  try {
    posenc::ops::kerple_bias(r1, bad, 3, 3, 0, 0, "log", true);
    ADD_FAILURE() << "no error for r2 < 0";
  } catch (const c10::Error& e) {
    const std::string msg = e.what_without_backtrace();
    EXPECT_NE(msg.find("posenc.kerple_bias: argument 'r2' must be >= 0"), std::string::npos) << msg;
  }
  try {
    posenc::ops::kerple_bias(r1, at::rand({3}), 3, 3, 0, 0, "log", true);
    ADD_FAILURE() << "no error for a CPU r2 with a CUDA r1";
  } catch (const c10::Error& e) {
    const std::string msg = e.what_without_backtrace();
    EXPECT_NE(msg.find("argument 'r2' must be on the device of 'r1'"), std::string::npos) << msg;
  }
  auto out = posenc::ops::kerple_bias(r1, r1, 2, 2, 0, 0, "log", true);
  EXPECT_TRUE(close(out, posenc::ops::kerple_bias(r1.cpu(), r1.cpu(), 2, 2, 0, 0, "log", true), at::kFloat));
}
