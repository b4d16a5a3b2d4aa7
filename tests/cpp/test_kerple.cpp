// KERPLE bias against an fp64 reference written from Chi et al. 2022 (logarithmic and power
// kernels), gradients against torch::autograd through that reference.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <limits>
#include <string>
#include <vector>

#include "posenc/ops.h"
#include "test_util.h"

namespace {

// d = |q_pos - k_pos|, or max(q_pos - k_pos, 0) when causal.
at::Tensor ref_distance(int64_t q_len, int64_t k_len, int64_t q_offset, int64_t k_offset, bool causal) {
  auto qp = at::arange(q_len, at::kDouble) + q_offset;
  auto kp = at::arange(k_len, at::kDouble) + k_offset;
  auto d = qp.unsqueeze(1) - kp.unsqueeze(0);
  return causal ? d.clamp_min(0) : d.abs();
}

at::Tensor ref_bias(const at::Tensor& r1, const at::Tensor& r2, int64_t q_len, int64_t k_len,
                    int64_t q_offset, int64_t k_offset, const std::string& kind, bool causal) {
  auto d = ref_distance(q_len, k_len, q_offset, k_offset, causal).unsqueeze(0);
  auto a = r1.to(at::kDouble).view({-1, 1, 1});
  auto b = r2.to(at::kDouble).view({-1, 1, 1});
  if (kind == "log") return -a * at::log(1 + b * d);
  // d^b with the d = 0 entries (value 0) kept out of pow, so the reference gradient has no NaN
  auto safe_d = at::where(d > 0, d, at::ones_like(d));
  return at::where(d > 0, -a * at::pow(safe_d, b), at::zeros_like(d * a));
}

using posenc_test::expect_error;

struct Shape { int64_t h, q, k, qo, ko; };
const std::vector<Shape> kShapes{{4, 7, 9, 0, 0}, {3, 5, 11, 6, 0}, {2, 1, 33, 32, 0}, {5, 8, 4, 3, 7}, {1, 64, 64, 0, 0}};

}  // namespace

TEST(Kerple, MatchesReference) {
  for (const std::string kind : {"log", "power"}) {
    for (bool causal : {true, false}) {
      for (auto s : kShapes) {
        auto r1 = at::rand({s.h}, at::kDouble) * 2 + 0.01;
        auto r2 = at::rand({s.h}, at::kDouble) + 0.01;
        auto got = posenc::ops::kerple_bias(r1, r2, s.q, s.k, s.qo, s.ko, kind, causal);
        ASSERT_EQ(got.sizes(), (at::IntArrayRef{s.h, s.q, s.k}));
        EXPECT_TRUE(got.is_contiguous());
        EXPECT_TRUE(at::allclose(got, ref_bias(r1, r2, s.q, s.k, s.qo, s.ko, kind, causal), 1e-12, 1e-12))
            << kind << " causal " << causal << " q " << s.q << " k " << s.k;
      }
    }
  }
}

TEST(Kerple, KnownValues) {
  // one head, r1 = 2, r2 = 0.5, query 3, keys 0..4
  auto r1 = at::tensor({2.0}, at::kDouble), r2 = at::tensor({0.5}, at::kDouble);
  auto log_c = posenc::ops::kerple_bias(r1, r2, 1, 5, 3, 0, "log", true)[0][0];
  auto want = at::tensor({-2 * std::log(2.5), -2 * std::log(2.0), -2 * std::log(1.5), 0.0, 0.0}, at::kDouble);
  EXPECT_TRUE(at::allclose(log_c, want, 1e-14, 1e-14)) << log_c;
  auto pow_b = posenc::ops::kerple_bias(r1, r2, 1, 5, 3, 0, "power", false)[0][0];
  want = at::tensor({-2 * std::sqrt(3.0), -2 * std::sqrt(2.0), -2.0, 0.0, -2.0}, at::kDouble);
  EXPECT_TRUE(at::allclose(pow_b, want, 1e-14, 1e-14)) << pow_b;
  // +0 (not -0) where d = 0
  EXPECT_FALSE(std::signbit(pow_b[3].item<double>()));
  EXPECT_FALSE(std::signbit(log_c[3].item<double>()));
}

TEST(Kerple, Dtypes) {
  auto r1 = at::rand({3}) + 0.5, r2 = at::rand({3}) + 0.1;
  for (auto dt : {at::kFloat, at::kDouble, at::kHalf, at::kBFloat16}) {
    auto got = posenc::ops::kerple_bias(r1.to(dt), r2.to(dt), 6, 40, 34, 0, "log", false);
    EXPECT_EQ(got.scalar_type(), dt);
    const double tol = dt == at::kHalf ? 4e-3 : dt == at::kBFloat16 ? 3e-2 : 1e-5;
    // the reference from the rounded parameters
    auto ref = ref_bias(r1.to(dt), r2.to(dt), 6, 40, 34, 0, "log", false);
    EXPECT_TRUE(at::allclose(got.to(at::kDouble), ref, tol, tol)) << dt;
  }
}

TEST(Kerple, AutogradMatchesReference) {
  for (const std::string kind : {"log", "power"}) {
    for (bool causal : {true, false}) {
      auto r1 = (at::rand({3}, at::kDouble) + 0.1).requires_grad_();
      auto r2 = (at::rand({3}, at::kDouble) + 0.1).requires_grad_();
      auto g = at::randn({3, 12, 20}, at::kDouble);
      (posenc::ops::kerple_bias(r1, r2, 12, 20, 10, 1, kind, causal) * g).sum().backward();
      auto a = r1.detach().clone().requires_grad_(), b = r2.detach().clone().requires_grad_();
      (ref_bias(a, b, 12, 20, 10, 1, kind, causal) * g).sum().backward();
      EXPECT_TRUE(at::allclose(r1.grad(), a.grad(), 1e-10, 1e-12)) << kind << causal;
      EXPECT_TRUE(at::allclose(r2.grad(), b.grad(), 1e-10, 1e-12)) << kind << causal;
      EXPECT_FALSE(r2.grad().isnan().any().item<bool>());
      // deterministic
      auto first1 = r1.grad().clone(), first2 = r2.grad().clone();
      r1.mutable_grad().zero_();
      r2.mutable_grad().zero_();
      (posenc::ops::kerple_bias(r1, r2, 12, 20, 10, 1, kind, causal) * g).sum().backward();
      EXPECT_TRUE(at::equal(first1, r1.grad()));
      EXPECT_TRUE(at::equal(first2, r2.grad()));
    }
  }
}

TEST(Kerple, PowerAtZeroDistance) {
  // only d = 0 entries (one query, one key, same position): value 0, gradients 0, no NaN,
  // even for r2 = 0 where 0^0 would be 1
  auto r1 = at::tensor({1.5, 2.0}, at::kDouble).requires_grad_();
  auto r2 = at::tensor({0.5, 0.0}, at::kDouble).requires_grad_();
  auto out = posenc::ops::kerple_bias(r1, r2, 1, 1, 4, 4, "power", false);
  EXPECT_TRUE(at::equal(out, at::zeros({2, 1, 1}, at::kDouble)));
  out.sum().backward();
  EXPECT_TRUE(at::equal(r1.grad(), at::zeros({2}, at::kDouble)));
  EXPECT_TRUE(at::equal(r2.grad(), at::zeros({2}, at::kDouble)));
}

TEST(Kerple, EmptyAndMeta) {
  auto r1 = at::rand({2}).requires_grad_(), r2 = at::rand({2}).requires_grad_();
  auto out = posenc::ops::kerple_bias(r1, r2, 0, 5);
  EXPECT_EQ(out.sizes(), (at::IntArrayRef{2, 0, 5}));
  out.sum().backward();
  EXPECT_TRUE(at::equal(r1.grad(), at::zeros({2})));
  auto m = at::empty({4}, at::TensorOptions().device(at::kMeta).dtype(at::kBFloat16));
  auto meta = posenc::ops::kerple_bias(m, m, 3, 7, 0, 0, "power", true);
  EXPECT_EQ(meta.sizes(), (at::IntArrayRef{4, 3, 7}));
  EXPECT_EQ(meta.strides(), (at::IntArrayRef{21, 7, 1}));
  EXPECT_EQ(meta.scalar_type(), at::kBFloat16);
}

TEST(Kerple, Errors) {
  auto r = at::rand({3});
  expect_error([&] { posenc::ops::kerple_bias(r, r, 3, 3, 0, 0, "cosine"); },
               "posenc.kerple_bias: argument 'kind' must be one of \"log\", \"power\", but got \"cosine\"");
  expect_error([&] { posenc::ops::kerple_bias(r.view({1, 3}), r, 3, 3); },
               "posenc.kerple_bias: argument 'r1' must be a 1-D tensor of shape (num_heads,)");
  expect_error([&] { posenc::ops::kerple_bias(r, at::rand({4}), 3, 3); },
               "posenc.kerple_bias: argument 'r2' must have the length of 'r1' (3), but got length 4");
  expect_error([&] { posenc::ops::kerple_bias(r, r.to(at::kDouble), 3, 3); },
               "posenc.kerple_bias: argument 'r2' must have the dtype of 'r1' (Float), but got dtype Double");
  expect_error([&] { posenc::ops::kerple_bias(at::ones({3}, at::kLong), at::ones({3}, at::kLong), 3, 3); },
               "argument 'r1' must have dtype float16, bfloat16, float32 or float64");
  expect_error([&] { posenc::ops::kerple_bias(r, r, -1, 3); }, "posenc.kerple_bias: argument 'q_len' must be >= 0, but got -1");
  expect_error([&] { posenc::ops::kerple_bias(r, at::tensor({0.5f, -0.25f, 1.f}), 3, 3, 0, 0, "log"); },
               "posenc.kerple_bias: argument 'r2' must be >= 0 for kind \"log\" (1 + r2 * d must stay positive), but got r2[1] = -0.25");
  // negative r2 is fine for the power kernel
  EXPECT_NO_THROW(posenc::ops::kerple_bias(r, at::tensor({0.5f, -0.25f, 1.f}), 3, 3, 0, 0, "power"));
  static auto bwd = c10::Dispatcher::singleton()
                        .findSchemaOrThrow("posenc::kerple_bias_backward", "")
                        .typed<std::tuple<at::Tensor, at::Tensor>(
                            const at::Tensor&, const at::Tensor&, const at::Tensor&, c10::SymInt, c10::SymInt,
                            c10::SymInt, c10::SymInt, c10::string_view, bool)>();
  expect_error([&] { bwd.call(at::randn({3, 2, 2}), r, r, 2, 5, 0, 0, "log", true); },
               "posenc.kerple_bias_backward: argument 'grad' must have shape (num_heads, q_len, k_len) = [3, 2, 5], but got shape [3, 2, 2]");
  // the Meta kernel raises the same errors
  auto m = at::empty({3}, at::kMeta);
  expect_error([&] { posenc::ops::kerple_bias(m, m, 3, 3, 0, 0, "linear"); },
               "posenc.kerple_bias: argument 'kind' must be one of \"log\", \"power\", but got \"linear\"");
}

// NaN/inf parameters used to give NaN/inf biases silently.
TEST(Kerple, NonFiniteParametersRaise) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  static auto bwd = c10::Dispatcher::singleton()
                        .findSchemaOrThrow("posenc::kerple_bias_backward", "")
                        .typed<std::tuple<at::Tensor, at::Tensor>(
                            const at::Tensor&, const at::Tensor&, const at::Tensor&, c10::SymInt, c10::SymInt,
                            c10::SymInt, c10::SymInt, c10::string_view, bool)>();
  for (auto dtype : {at::kFloat, at::kDouble, at::kHalf, at::kBFloat16}) {
    for (const char* kind : {"log", "power"}) {
      auto ok = at::full({3}, 0.5, dtype);
      auto r1 = at::tensor({1.0, nan, 1.0}, at::kDouble).to(dtype);
      auto r2 = at::tensor({0.5, 0.5, inf}, at::kDouble).to(dtype);
      expect_error([&] { posenc::ops::kerple_bias(r1, ok, 3, 4, 0, 0, kind); },
                   "posenc.kerple_bias: argument 'r1' must be finite, but got r1[1] = nan");
      expect_error([&] { posenc::ops::kerple_bias(ok, r2, 3, 4, 0, 0, kind); },
                   "posenc.kerple_bias: argument 'r2' must be finite, but got r2[2] = inf");
      expect_error([&] { bwd.call(at::ones({3, 3, 4}, dtype), ok, -r2, 3, 4, 0, 0, kind, true); },
                   "posenc.kerple_bias_backward: argument 'r2' must be finite, but got r2[2] = -inf");
    }
  }
}

TEST(Kerple, OutputTooLargeForInt64) {
  const int64_t n = int64_t{1} << 40;
  auto r = at::ones({4}, at::kDouble);
  expect_error([&] { posenc::ops::kerple_bias(r, r, n, n); },
               "posenc.kerple_bias: argument 'k_len' is too large: the output's size in bytes must "
               "fit in int64, but got an output of shape [4, 1099511627776, 1099511627776] and dtype Double");
  auto m = at::empty({4}, at::kMeta);
  expect_error([&] { posenc::ops::kerple_bias(m, m, n, n); }, "posenc.kerple_bias: argument 'k_len' is too large");
}
