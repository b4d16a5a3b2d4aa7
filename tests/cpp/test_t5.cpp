// T5 relative bias against a plain-ATen reference of the bucket formula of Raffel et al. 2020
// as Hugging Face's T5Attention._relative_position_bucket computes it (fp32 log term).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <string>
#include <vector>

#include "posenc/ops.h"
#include "test_util.h"

namespace {

at::Tensor ref_bucket(const at::Tensor& rp, bool bidirectional, int64_t num_buckets,
                      int64_t max_distance) {
  auto buckets = at::zeros_like(rp);
  at::Tensor n;
  if (bidirectional) {
    num_buckets /= 2;
    buckets = buckets + (rp > 0).to(at::kLong) * num_buckets;
    n = rp.abs();
  } else {
    n = -at::minimum(rp, at::zeros_like(rp));
  }
  const int64_t max_exact = num_buckets / 2;
  auto large = max_exact + (at::log(n.to(at::kFloat) / max_exact) /
                            std::log(static_cast<double>(max_distance) / max_exact) *
                            (num_buckets - max_exact))
                               .to(at::kLong);
  large = at::minimum(large, at::full_like(large, num_buckets - 1));
  return buckets + at::where(n < max_exact, n, large);
}

at::Tensor ref_bias(const at::Tensor& table, int64_t q_len, int64_t k_len, int64_t q_offset,
                    int64_t k_offset, bool bidirectional, int64_t max_distance) {
  auto qp = at::arange(q_len, at::kLong) + q_offset;
  auto kp = at::arange(k_len, at::kLong) + k_offset;
  auto b = ref_bucket(kp.unsqueeze(0) - qp.unsqueeze(1), bidirectional, table.size(0),
                      max_distance);
  return table.index_select(0, b.flatten()).view({q_len, k_len, table.size(1)}).permute({2, 0, 1});
}

using posenc_test::expect_error;

}  // namespace

TEST(T5, C13Buckets) {
  auto bi = at::tensor({-1000, -128, -64, -16, -9, -8, -7, -1, 0, 1, 8, 16, 64, 127, 1000}, at::kLong);
  auto want_bi = at::tensor({15, 15, 14, 10, 8, 8, 7, 1, 0, 17, 24, 26, 30, 31, 31}, at::kLong);
  EXPECT_TRUE(at::equal(posenc::ops::t5_relative_bucket(bi, true, 32, 128), want_bi));
  auto ca = at::tensor({-1000, -128, -100, -32, -16, -8, -1, 0, 1, 5, 1000}, at::kLong);
  auto want_ca = at::tensor({31, 31, 30, 21, 16, 8, 1, 0, 0, 0, 0}, at::kLong);
  EXPECT_TRUE(at::equal(posenc::ops::t5_relative_bucket(ca, false, 32, 128), want_ca));
}

TEST(T5, BucketsMatchReference) {
  auto rp = at::arange(-3000, 3000, at::kLong).view({60, 100});
  for (bool bi : {true, false}) {
    for (auto cfg : std::vector<std::pair<int64_t, int64_t>>{{32, 128}, {8, 20}, {64, 256}, {4, 3}, {16, 1000}}) {
      if (!bi && cfg.first == 4) continue;
      auto got = posenc::ops::t5_relative_bucket(rp, bi, cfg.first, cfg.second);
      EXPECT_EQ(got.sizes(), rp.sizes());
      EXPECT_TRUE(at::equal(got, ref_bucket(rp, bi, cfg.first, cfg.second)))
          << "bidirectional " << bi << " num_buckets " << cfg.first << " max_distance " << cfg.second;
    }
  }
  // causal with only 2 buckets: max_exact 1
  EXPECT_TRUE(at::equal(posenc::ops::t5_relative_bucket(rp, false, 2, 5), ref_bucket(rp, false, 2, 5)));
  // extreme distances stay in range
  auto extreme = at::tensor({INT64_MIN, INT64_MIN + 1, INT64_MAX}, at::kLong);
  EXPECT_TRUE(at::equal(posenc::ops::t5_relative_bucket(extreme, true, 32, 128),
                        at::tensor({15, 15, 31}, at::kLong)));
  EXPECT_TRUE(at::equal(posenc::ops::t5_relative_bucket(extreme, false, 32, 128),
                        at::tensor({31, 31, 0}, at::kLong)));
}

TEST(T5, BiasMatchesReference) {
  struct Case { int64_t h, q, k, qo, ko; };
  for (auto c : std::vector<Case>{{4, 7, 9, 0, 0}, {3, 5, 200, 195, 0}, {2, 1, 33, 32, 0}, {5, 8, 4, 3, 7}, {1, 300, 300, 0, 0}}) {
    for (bool bi : {true, false}) {
      auto table = at::randn({32, c.h}, at::kDouble);
      auto got = posenc::ops::t5_bias(table, c.q, c.k, c.qo, c.ko, bi, 128);
      ASSERT_EQ(got.sizes(), (at::IntArrayRef{c.h, c.q, c.k}));
      EXPECT_TRUE(got.is_contiguous());
      EXPECT_TRUE(at::equal(got, ref_bias(table, c.q, c.k, c.qo, c.ko, bi, 128)));
    }
  }
}

TEST(T5, Dtypes) {
  for (auto dt : {at::kFloat, at::kDouble, at::kHalf, at::kBFloat16}) {
    auto table = at::randn({16, 3}).to(dt);
    auto got = posenc::ops::t5_bias(table, 6, 10, 4, 0, true, 40);
    EXPECT_EQ(got.scalar_type(), dt);
    // a gather: bit-exact in every dtype
    EXPECT_TRUE(at::equal(got, ref_bias(table, 6, 10, 4, 0, true, 40)));
  }
}

TEST(T5, AutogradMatchesReference) {
  for (bool bi : {true, false}) {
    auto table = at::randn({32, 3}, at::kDouble).requires_grad_();
    auto table2 = table.detach().clone().requires_grad_();
    auto g = at::randn({3, 40, 150}, at::kDouble);
    (posenc::ops::t5_bias(table, 40, 150, 110, 0, bi, 128) * g).sum().backward();
    (ref_bias(table2, 40, 150, 110, 0, bi, 128) * g).sum().backward();
    EXPECT_TRUE(at::allclose(table.grad(), table2.grad(), 1e-12, 1e-12));
    // deterministic: the same bits on a second run
    auto first = table.grad().clone();
    table.mutable_grad().zero_();
    (posenc::ops::t5_bias(table, 40, 150, 110, 0, bi, 128) * g).sum().backward();
    EXPECT_TRUE(at::equal(first, table.grad()));
  }
  // fp32 table: fp64 accumulation, so the sum of 4000 terms is exact to fp32 rounding
  auto table = at::randn({8, 2}).requires_grad_();
  auto g = at::randn({2, 50, 80});
  (posenc::ops::t5_bias(table, 50, 80, 0, 0, false, 16) * g).sum().backward();
  auto t64 = table.detach().to(at::kDouble).requires_grad_();
  (ref_bias(t64, 50, 80, 0, 0, false, 16) * g.to(at::kDouble)).sum().backward();
  EXPECT_TRUE(at::equal(table.grad(), t64.grad().to(at::kFloat)));
}

TEST(T5, EmptyAndMeta) {
  auto table = at::randn({32, 2}).requires_grad_();
  auto out = posenc::ops::t5_bias(table, 0, 5);
  EXPECT_EQ(out.sizes(), (at::IntArrayRef{2, 0, 5}));
  out.sum().backward();
  EXPECT_TRUE(at::equal(table.grad(), at::zeros({32, 2})));
  EXPECT_EQ(posenc::ops::t5_relative_bucket(at::empty({0, 3}, at::kLong)).sizes(), (at::IntArrayRef{0, 3}));
  auto meta = posenc::ops::t5_bias(at::empty({32, 4}, at::TensorOptions().device(at::kMeta).dtype(at::kHalf)), 3, 7);
  EXPECT_EQ(meta.sizes(), (at::IntArrayRef{4, 3, 7}));
  EXPECT_EQ(meta.strides(), (at::IntArrayRef{21, 7, 1}));
  EXPECT_EQ(meta.scalar_type(), at::kHalf);
}

TEST(T5, Errors) {
  auto rp = at::arange(-3, 3, at::kLong);
  expect_error([&] { posenc::ops::t5_relative_bucket(rp.to(at::kInt)); },
               "posenc.t5_relative_bucket: argument 'relative_position' must have dtype Long, but got dtype Int");
  expect_error([&] { posenc::ops::t5_relative_bucket(rp, true, 2, 128); },
               "posenc.t5_relative_bucket: argument 'num_buckets' must be even and >= 4 when bidirectional");
  expect_error([&] { posenc::ops::t5_relative_bucket(rp, true, 33, 128); },
               "argument 'num_buckets' must be even and >= 4 when bidirectional (half per direction), but got 33");
  expect_error([&] { posenc::ops::t5_relative_bucket(rp, false, 1, 128); },
               "argument 'num_buckets' must be >= 2 when causal, but got 1");
  expect_error([&] { posenc::ops::t5_relative_bucket(rp, true, 32, 8); },
               "posenc.t5_relative_bucket: argument 'max_distance' must be > max_exact = 8");
  expect_error([&] { posenc::ops::t5_bias(at::randn({32}), 3, 3); },
               "posenc.t5_bias: argument 'table' must be a 2-D tensor of shape (num_buckets, num_heads)");
  expect_error([&] { posenc::ops::t5_bias(at::zeros({32, 2}, at::kLong), 3, 3); },
               "posenc.t5_bias: argument 'table' must have dtype float16, bfloat16, float32 or float64");
  expect_error([&] { posenc::ops::t5_bias(at::randn({7, 2}), 3, 3); },
               "posenc.t5_bias: argument 'table' must have a number of rows (num_buckets) that is even and >= 4 when bidirectional (half per direction), but got 7 rows");
  expect_error([&] { posenc::ops::t5_bias(at::randn({32, 2}), -1, 3); },
               "posenc.t5_bias: argument 'q_len' must be >= 0, but got -1");
  expect_error([&] { posenc::ops::t5_bias(at::randn({32, 2}), 3, 3, 0, 0, false, 16); },
               "posenc.t5_bias: argument 'max_distance' must be > max_exact = 16");
  // backward op: a grad of the wrong shape is rejected, never read out of bounds
  static auto bwd = c10::Dispatcher::singleton()
                        .findSchemaOrThrow("posenc::t5_bias_backward", "")
                        .typed<at::Tensor(const at::Tensor&, const at::Tensor&, c10::SymInt, c10::SymInt,
                                          c10::SymInt, c10::SymInt, bool, int64_t)>();
  expect_error([&] { bwd.call(at::randn({2, 3, 3}), at::randn({32, 2}), 3, 4, 0, 0, true, 128); },
               "posenc.t5_bias_backward: argument 'grad' must have shape (num_heads, q_len, k_len) = [2, 3, 4], but got shape [2, 3, 3]");
  // the Meta kernel raises the same errors
  expect_error([&] { posenc::ops::t5_bias(at::empty({7, 2}, at::kMeta), 3, 3); },
               "posenc.t5_bias: argument 'table' must have a number of rows");
}

TEST(T5, OutputTooLargeForInt64) {
  const int64_t n = int64_t{1} << 62;
  expect_error([&] { posenc::ops::t5_bias(at::ones({32, 8}), n, 3); },
               "posenc.t5_bias: argument 'q_len' is too large: the output's size in bytes must fit "
               "in int64, but got an output of shape [8, 4611686018427387904, 3] and dtype Float");
  expect_error([&] { posenc::ops::t5_bias(at::ones({32, 8}, at::kMeta), 3, n); },
               "posenc.t5_bias: argument 'k_len' is too large");
}
