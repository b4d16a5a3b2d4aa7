// Sinusoidal table against an fp64 reference written from Vaswani et al. 2017 §3.5 and from
// tensor2tensor's get_timing_signal_1d.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <string>

#include "posenc/ops.h"
#include "test_util.h"

namespace {

at::Tensor ref_table(const at::Tensor& positions, int64_t dim, double base, bool interleaved) {
  const int64_t half = dim / 2;
  auto opts = at::TensorOptions().dtype(at::kDouble);
  auto i = at::arange(half, opts);
  at::Tensor freq;
  if (interleaved) {
    freq = at::pow(base, -2.0 * i / static_cast<double>(dim));
  } else {
    freq = at::exp(-i * std::log(base) / static_cast<double>(std::max<int64_t>(half - 1, 1)));
  }
  auto angle = positions.to(at::kDouble).unsqueeze(1) * freq.unsqueeze(0);
  if (interleaved) {
    return at::stack({angle.sin(), angle.cos()}, -1).reshape({positions.size(0), dim});
  }
  return at::cat({angle.sin(), angle.cos()}, 1);
}

using posenc_test::expect_error;

}  // namespace

TEST(Sinusoidal, C04Variants) {
  auto paper = posenc::ops::sinusoidal_table(1, 4, 10000.0, 1, true, at::kDouble);
  auto want = at::tensor({0.8414710, 0.5403023, 0.0099998, 0.9999500}, at::kDouble);
  EXPECT_TRUE(at::allclose(paper[0], want, 0, 1e-7)) << paper;
  auto t2t = posenc::ops::sinusoidal_table(1, 4, 10000.0, 1, false, at::kDouble);
  want = at::tensor({0.8414710, 0.0001, 0.5403023, 0.99999999}, at::kDouble);
  EXPECT_TRUE(at::allclose(t2t[0], want, 0, 1e-7)) << t2t;
}

TEST(Sinusoidal, MatchesReference) {
  for (bool interleaved : {true, false}) {
    for (int64_t dim : {2, 4, 6, 64, 130}) {
      for (int64_t offset : {0, 7, -9}) {
        for (double base : {10000.0, 500.0}) {
          auto got = posenc::ops::sinusoidal_table(17, dim, base, offset, interleaved, at::kDouble);
          auto pos = at::arange(offset, offset + 17, at::kLong);
          ASSERT_EQ(got.sizes(), (at::IntArrayRef{17, dim}));
          EXPECT_TRUE(at::allclose(got, ref_table(pos, dim, base, interleaved), 1e-12, 1e-12))
              << "dim " << dim << " offset " << offset << " interleaved " << interleaved;
        }
      }
    }
  }
}

TEST(Sinusoidal, ArbitraryPositions) {
  auto pos = at::tensor({5, -3, 0, 1000000, 2}, at::kLong);
  for (bool interleaved : {true, false}) {
    auto got = posenc::ops::sinusoidal_table_at(pos, 8, 10000.0, interleaved, at::kDouble);
    EXPECT_TRUE(at::allclose(got, ref_table(pos, 8, 10000.0, interleaved), 1e-12, 1e-12));
    // non-contiguous positions give the same rows
    auto strided = at::stack({pos, pos}, 1).select(1, 0);
    ASSERT_FALSE(strided.is_contiguous());
    EXPECT_TRUE(at::equal(posenc::ops::sinusoidal_table_at(strided, 8, 10000.0, interleaved),
                          posenc::ops::sinusoidal_table_at(pos, 8, 10000.0, interleaved)));
  }
}

TEST(Sinusoidal, Dtypes) {
  auto pos = at::arange(-20, 3000, 7, at::kLong);
  auto want = ref_table(pos, 32, 10000.0, true);
  auto f32 = posenc::ops::sinusoidal_table_at(pos, 32);
  EXPECT_EQ(f32.scalar_type(), at::kFloat);
  // fp64 angles rounded once: within half a float ulp (|x| <= 1); fp32 angles at position
  // ~3000 would be off by ~1e-4.
  EXPECT_LE((f32.to(at::kDouble) - want).abs().max().item<double>(), 3.0e-8);
  for (auto dt : {at::kHalf, at::kBFloat16}) {
    auto got = posenc::ops::sinusoidal_table_at(pos, 32, 10000.0, true, dt);
    EXPECT_EQ(got.scalar_type(), dt);
    EXPECT_TRUE(at::allclose(got.to(at::kDouble), want, 0, dt == at::kHalf ? 5e-4 : 4e-3));
  }
}

TEST(Sinusoidal, EmptyAndMeta) {
  auto empty = posenc::ops::sinusoidal_table(0, 8);
  EXPECT_EQ(empty.sizes(), (at::IntArrayRef{0, 8}));
  auto meta = posenc::ops::sinusoidal_table_at(at::empty({5}, at::TensorOptions().dtype(at::kLong).device(at::kMeta)),
                                               6, 10000.0, false, at::kHalf);
  EXPECT_TRUE(meta.is_meta());
  EXPECT_EQ(meta.sizes(), (at::IntArrayRef{5, 6}));
  EXPECT_EQ(meta.strides(), (at::IntArrayRef{6, 1}));
  EXPECT_EQ(meta.scalar_type(), at::kHalf);
}

TEST(Sinusoidal, Errors) {
  expect_error([] { posenc::ops::sinusoidal_table(3, 5); },
               "posenc.sinusoidal_table: argument 'dim' must be even and > 0, but got 5");
  expect_error([] { posenc::ops::sinusoidal_table(3, 0); }, "argument 'dim' must be even and > 0");
  expect_error([] { posenc::ops::sinusoidal_table(-1, 4); },
               "posenc.sinusoidal_table: argument 'num_positions' must be >= 0, but got -1");
  expect_error([] { posenc::ops::sinusoidal_table(3, 4, -2.0); }, "argument 'base' must be finite and > 0");
  expect_error([] { posenc::ops::sinusoidal_table_at(at::arange(3, at::kFloat), 4); },
               "posenc.sinusoidal_table: argument 'positions' must have dtype int64 or int32, but got dtype Float");
  expect_error([] { posenc::ops::sinusoidal_table_at(at::zeros({2, 2}, at::kLong), 4); },
               "argument 'positions' must be a 1-D tensor");
  expect_error([] { posenc::ops::sinusoidal_table_at(at::arange(3, at::kLong), 4, 1e4, true, at::kInt); },
               "argument 'dtype' must be float16, bfloat16, float32 or float64");
  // the Meta kernel raises the same errors
  expect_error([] {
    posenc::ops::sinusoidal_table_at(at::empty({3}, at::TensorOptions().dtype(at::kLong).device(at::kMeta)), 3);
  }, "argument 'dim' must be even and > 0, but got 3");
}

// Tables whose size in bytes overflows int64: a posenc error, before the positions are made.
TEST(Sinusoidal, OutputTooLargeForInt64) {
  const int64_t n = int64_t{1} << 62;
  expect_error([&] { posenc::ops::sinusoidal_table(n, 64); },
               "posenc.sinusoidal_table: argument 'num_positions' is too large: the output's size in "
               "bytes must fit in int64, but got an output of shape [4611686018427387904, 64] and dtype Float");
  expect_error([&] { posenc::ops::sinusoidal_table(3, n); }, "argument 'dim' is too large");
  expect_error([&] { posenc::ops::sinusoidal_table_at(at::arange(3, at::kLong), n, 1e4, true, at::kHalf); },
               "posenc.sinusoidal_table: argument 'dim' is too large: the output's size in bytes must "
               "fit in int64, but got an output of shape [3, 4611686018427387904] and dtype Half");
  expect_error([&] {
    posenc::ops::sinusoidal_table_at(at::empty({3}, at::TensorOptions().dtype(at::kLong).device(at::kMeta)), n);
  }, "argument 'dim' is too large");
}
