// The bad-input table for the C++ API (posenc::ops::*, posenc::nn modules, the JSON config
// reader), the twin of tests/python/test_bad_inputs.py. Each row is an error whose message,
// without the backtrace, must contain every needle (op or module, argument, what was
// expected, what was given), or a result checked against an fp64 reference written here from
// the formula. After every row a valid call runs and is checked: an error leaves the process
// usable. The meta device stands in for a second device (no GPU here).
#include <torch/torch.h>

#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "posenc/hf_config.h"
#include "posenc/nn.h"
#include "posenc/ops.h"
#include "test_util.h"

namespace {


constexpr int64_t kI64Max = std::numeric_limits<int64_t>::max();
constexpr int64_t kI64Min = std::numeric_limits<int64_t>::min();
const double kNan = std::numeric_limits<double>::quiet_NaN();
const double kInf = std::numeric_limits<double>::infinity();

enum class Expect { kError, kValueError, kResult };

struct Row {
  std::string name;
  Expect expect;
  std::function<void()> fn;  // error rows: throws; result rows: checks its own result
  std::vector<std::string> needles;
};

torch::Tensor meta(const torch::Tensor& t) { return t.to(torch::Device(torch::kMeta)); }

// q_pos - k_pos in exact int64, then fp64 (offsets near 2^61 are not exact in fp64)
torch::Tensor distances(int64_t q_len, int64_t k_len, int64_t q_off, int64_t k_off) {
  auto qp = torch::arange(q_len, torch::kLong) + q_off;
  auto kp = torch::arange(k_len, torch::kLong) + k_off;
  return (qp.unsqueeze(1) - kp.unsqueeze(0)).to(torch::kDouble);
}

// Press et al. 2022: -slope * (q_pos - k_pos), |.| when bidirectional
torch::Tensor ref_alibi(const torch::Tensor& slopes, int64_t q_len, int64_t k_len, int64_t q_off,
                        int64_t k_off, bool causal) {
  auto d = distances(q_len, k_len, q_off, k_off);
  if (!causal) d = d.abs();
  return -slopes.to(torch::kDouble).view({-1, 1, 1}) * d;
}

// Chi et al. 2022, logarithmic kernel: -r1 * log(1 + r2 * d), d clamped at 0 when causal
torch::Tensor ref_kerple_log(const torch::Tensor& r1, const torch::Tensor& r2, int64_t q_len,
                             int64_t k_len, int64_t q_off, int64_t k_off, bool causal) {
  auto d = distances(q_len, k_len, q_off, k_off);
  d = causal ? d.clamp_min(0) : d.abs();
  return -r1.to(torch::kDouble).view({-1, 1, 1}) *
         torch::log1p(r2.to(torch::kDouble).view({-1, 1, 1}) * d);
}

// Vaswani et al. 2017 §3.5, interleaved sin/cos pairs at the given (fp64) positions
torch::Tensor ref_sinusoidal(const std::vector<double>& pos, int64_t dim) {
  auto p = torch::tensor(pos, torch::kDouble).view({-1, 1});
  auto i = torch::arange(dim / 2, torch::kDouble);
  auto ang = p * torch::pow(10000.0, -2.0 * i / static_cast<double>(dim));
  return torch::stack({torch::sin(ang), torch::cos(ang)}, -1).view({p.size(0), dim});
}

// Su et al. 2021 eq. 34, half-split pairs; x (B, H, S, D), positions (S,)
torch::Tensor ref_rope(const torch::Tensor& x, const torch::Tensor& pos, const torch::Tensor& inv) {
  auto xd = x.to(torch::kDouble);
  const int64_t h = inv.size(0);
  auto ang = pos.to(torch::kDouble).unsqueeze(1) * inv.to(torch::kDouble).unsqueeze(0);
  auto c = torch::cos(ang), s = torch::sin(ang);
  auto x1 = xd.narrow(-1, 0, h), x2 = xd.narrow(-1, h, h);
  auto rest = xd.narrow(-1, 2 * h, xd.size(-1) - 2 * h);
  return torch::cat({x1 * c - x2 * s, x2 * c + x1 * s, rest}, -1);
}

void expect_close(const torch::Tensor& out, const torch::Tensor& ref, double atol, double rtol = 1e-6) {
  ASSERT_EQ(out.sizes(), ref.sizes());
  EXPECT_TRUE(torch::allclose(out.to(torch::kDouble), ref, rtol, atol))
      << "max abs diff " << (out.to(torch::kDouble) - ref).abs().max().item<double>();
}

torch::Tensor slopes2() { return torch::tensor({0.5f, 0.25f}); }
torch::Tensor r1() { return torch::tensor({1.0f, 2.0f}); }
torch::Tensor r2() { return torch::tensor({0.5f, 1.5f}); }
torch::Tensor xq() {
  torch::manual_seed(0);
  return torch::randn({1, 2, 3, 8});
}

std::vector<Row> rows() {
  using E = Expect;
  std::vector<Row> r;
  auto err = [&](std::string name, std::function<void()> fn, std::vector<std::string> needles) {
    r.push_back({std::move(name), E::kError, std::move(fn), std::move(needles)});
  };
  auto verr = [&](std::string name, std::function<void()> fn, std::vector<std::string> needles) {
    r.push_back({std::move(name), E::kValueError, std::move(fn), std::move(needles)});
  };
  auto ok = [&](std::string name, std::function<void()> fn) {
    r.push_back({std::move(name), E::kResult, std::move(fn), {}});
  };
  namespace ops = posenc::ops;
  namespace pnn = posenc::nn;

  // ---- sinusoidal_table
  const std::string st = "posenc.sinusoidal_table: argument ";
  err("SinDimOdd", [] { ops::sinusoidal_table(4, 3); }, {st + "'dim' must be even and > 0", "but got 3"});
  err("SinDimZero", [] { ops::sinusoidal_table(4, 0); }, {st + "'dim' must be even and > 0", "but got 0"});
  err("SinNumNeg", [] { ops::sinusoidal_table(-1, 4); }, {st + "'num_positions' must be >= 0", "but got -1"});
  err("SinBaseNan", [] { ops::sinusoidal_table(4, 4, kNan); }, {st + "'base' must be finite and > 0", "but got nan"});
  err("SinBaseNeg", [] { ops::sinusoidal_table(4, 4, -2.0); }, {st + "'base' must be finite and > 0", "but got -2"});
  err("SinDtypeInt", [] { ops::sinusoidal_table(4, 4, 1e4, 0, true, torch::kLong); },
      {st + "'dtype' must be float16, bfloat16, float32 or float64", "but got Long"});
  err("SinBytesOverflow", [] { ops::sinusoidal_table(int64_t{1} << 62, 1024); },
      {st + "'num_positions' is too large: the output's size in bytes must fit in int64", "[4611686018427387904, 1024]"});
  err("SinCannotAllocate", [] { ops::sinusoidal_table(int64_t{1} << 40, 1024); },
      {st + "'num_positions' is too large: the output cannot be allocated", "[1099511627776, 1024]",
       "4503599627370496 bytes"});
  err("SinOffsetPastInt64", [] { ops::sinusoidal_table(2, 4, 1e4, kI64Max); },
      {st + "'offset' must keep the last position", "within int64", std::to_string(kI64Max)});
  ok("SinOffsetInt64Max", [] {
    expect_close(ops::sinusoidal_table(1, 4, 1e4, kI64Max, true, torch::kDouble),
                 ref_sinusoidal({static_cast<double>(kI64Max)}, 4), 1e-9);
  });
  ok("SinOffsetInt64Min", [] {
    expect_close(ops::sinusoidal_table(1, 4, 1e4, kI64Min, true, torch::kDouble),
                 ref_sinusoidal({static_cast<double>(kI64Min)}, 4), 1e-9);
  });
  ok("SinEmpty", [] { EXPECT_EQ(ops::sinusoidal_table(0, 6).sizes(), (std::vector<int64_t>{0, 6})); });
  err("SinPositionsFloat", [] { ops::sinusoidal_table_at(torch::zeros({3}), 4); },
      {st + "'positions' must have dtype int64 or int32", "Float"});
  err("SinPositions2D", [] { ops::sinusoidal_table_at(torch::zeros({2, 3}, torch::kLong), 4); },
      {st + "'positions' must be a 1-D tensor", "2-D"});
  err("SinPositionsExpandedPastAddressSpace",
      [] { ops::sinusoidal_table_at(torch::tensor(int64_t{0}).expand({int64_t{1} << 40}), 1024); },
      {st + "'positions' is too large: the output cannot be allocated (more than 2^47 bytes",
       "4503599627370496 bytes"});
  ok("SinPositionsStrided", [] {
    expect_close(ops::sinusoidal_table_at(torch::arange(10, torch::kLong).slice(0, 0, 10, 3), 4, 1e4,
                                          true, torch::kDouble),
                 ref_sinusoidal({0, 3, 6, 9}, 4), 1e-12);
  });

  // ---- alibi
  const std::string ab = "posenc.alibi_bias: argument ";
  err("AlibiSlopesZero", [] { ops::alibi_slopes(0); }, {"posenc.alibi_slopes: argument 'num_heads' must be > 0", "but got 0"});
  err("AlibiSlopes2D", [] { ops::alibi_bias(slopes2().unsqueeze(0), 3, 3); }, {ab + "'slopes' must be a 1-D tensor", "2-D"});
  err("AlibiSlopesInt", [] { ops::alibi_bias(torch::tensor({1, 2}), 3, 3); },
      {ab + "'slopes' must have dtype float16, bfloat16, float32 or float64", "Long"});
  err("AlibiSlopesBool", [] { ops::alibi_bias(torch::tensor({true}), 3, 3); }, {ab + "'slopes' must have dtype", "Bool"});
  err("AlibiSlopesComplex", [] { ops::alibi_bias(slopes2().to(torch::kComplexFloat), 3, 3); },
      {ab + "'slopes' must have dtype", "ComplexFloat"});
  err("AlibiQLenNeg", [] { ops::alibi_bias(slopes2(), -1, 3); }, {ab + "'q_len' must be >= 0", "but got -1"});
  err("AlibiSlopeNan", [] { ops::alibi_bias(torch::tensor({0.5, kNan}), 3, 3); },
      {ab + "'slopes' must be finite", "slopes[1] = nan"});
  err("AlibiSlopeInf", [] { ops::alibi_bias(torch::tensor({kInf}), 3, 3, 0, 0, false); },
      {ab + "'slopes' must be finite", "slopes[0] = inf"});
  err("AlibiBytesOverflow", [] { ops::alibi_bias(slopes2(), int64_t{1} << 40, int64_t{1} << 40); },
      {ab + "'k_len' is too large: the output's size in bytes must fit in int64"});
  err("AlibiPastAddressSpace", [] { ops::alibi_bias(slopes2(), int64_t{1} << 24, int64_t{1} << 23); },
      {ab + "'q_len' is too large: the output cannot be allocated", "1125899906842624 bytes"});
  err("AlibiQOffsetHuge", [] { ops::alibi_bias(slopes2(), 2, 2, int64_t{1} << 62); },
      {ab + "'q_offset' must be within [-2^61, 2^61]", std::to_string(int64_t{1} << 62)});
  err("AlibiKOffsetInt64Min", [] { ops::alibi_bias(slopes2(), 2, 2, 0, kI64Min); },
      {ab + "'k_offset' must be within [-2^61, 2^61]", std::to_string(kI64Min)});
  ok("AlibiOffsetsAtLimit", [] {
    const int64_t o = int64_t{1} << 61;
    expect_close(ops::alibi_bias(slopes2().to(torch::kDouble), 2, 3, o, o - 1), ref_alibi(slopes2(), 2, 3, o, o - 1, true), 0);
  });
  ok("AlibiEmpty", [] { EXPECT_EQ(ops::alibi_bias(slopes2(), 0, 4).sizes(), (std::vector<int64_t>{2, 0, 4})); });
  ok("AlibiSlopesStrided", [] {
    auto s = torch::tensor({0.5f, 9.f, 0.25f, 9.f}).slice(0, 0, 4, 2);
    expect_close(ops::alibi_bias(s, 3, 4, 2, 0, false), ref_alibi(slopes2(), 3, 4, 2, 0, false), 1e-6);
  });
  ok("AlibiSlopesExpanded", [] {
    auto s = torch::tensor(0.5f).expand({3});
    expect_close(ops::alibi_bias(s, 2, 2), ref_alibi(torch::full({3}, 0.5), 2, 2, 0, 0, true), 1e-6);
  });
  err("AlibiOutShape", [] { auto o = torch::empty({2, 3, 4}); ops::alibi_bias_out(o, slopes2(), 3, 3); },
      {ab + "'out' must have shape (num_heads, q_len, k_len) = [2, 3, 3]", "[2, 3, 4]"});
  err("AlibiOutDevice", [] { auto o = torch::empty({2, 3, 3}, torch::Device(torch::kMeta)); ops::alibi_bias_out(o, slopes2(), 3, 3); },
      {ab + "'out' must be on the device of 'slopes'", "meta"});
  err("AlibiOutStrided", [] { auto o = torch::empty({2, 3, 6}).slice(2, 0, 6, 2); ops::alibi_bias_out(o, slopes2(), 3, 3); },
      {ab + "'out' must be contiguous"});

  // ---- t5
  const std::string tb = "posenc.t5_relative_bucket: argument ";
  const std::string t5 = "posenc.t5_bias: argument ";
  err("T5BucketFloat", [] { ops::t5_relative_bucket(torch::zeros({3})); }, {tb + "'relative_position' must have dtype Long", "Float"});
  err("T5BucketOdd", [] { ops::t5_relative_bucket(torch::zeros({3}, torch::kLong), true, 5); }, {tb + "'num_buckets'", "5"});
  err("T5BucketMaxDist", [] { ops::t5_relative_bucket(torch::zeros({3}, torch::kLong), true, 32, 8); }, {tb + "'max_distance'", "8"});
  ok("T5BucketInt64Extremes", [] {
    // bidirectional, 32 buckets, max_distance 128: every |d| >= 128 is the last bucket of its half
    auto b = ops::t5_relative_bucket(torch::tensor({kI64Min, kI64Max, int64_t{0}}));
    EXPECT_TRUE(torch::equal(b, torch::tensor({int64_t{15}, int64_t{31}, int64_t{0}})));
  });
  err("T5Table1D", [] { ops::t5_bias(torch::randn({32}), 3, 3); }, {t5 + "'table' must be a 2-D tensor", "1-D"});
  err("T5TableInt", [] { ops::t5_bias(torch::zeros({32, 2}, torch::kLong), 3, 3); }, {t5 + "'table' must have dtype", "Long"});
  err("T5KLenNeg", [] { ops::t5_bias(torch::randn({32, 2}), 3, -1); }, {t5 + "'k_len' must be >= 0", "-1"});
  err("T5PastAddressSpace", [] { ops::t5_bias(torch::randn({32, 2}), int64_t{1} << 23, int64_t{1} << 24); },
      {t5 + "'k_len' is too large: the output cannot be allocated", "1125899906842624 bytes"});
  err("T5KOffsetHuge", [] { ops::t5_bias(torch::randn({32, 2}), 2, 2, 0, -(int64_t{1} << 62)); },
      {t5 + "'k_offset' must be within [-2^61, 2^61]"});

  // ---- kerple
  const std::string kb = "posenc.kerple_bias: argument ";
  err("KerpleR1Int", [] { ops::kerple_bias(torch::ones({2}, torch::kLong), torch::ones({2}, torch::kLong), 3, 3); },
      {kb + "'r1' must have dtype", "Long"});
  err("KerpleR2Dtype", [] { ops::kerple_bias(r1(), r2().to(torch::kDouble), 3, 3); }, {kb + "'r2' must have the dtype of 'r1'", "Double"});
  err("KerpleR2Length", [] { ops::kerple_bias(r1(), r2().slice(0, 0, 1), 3, 3); }, {kb + "'r2' must have the length of 'r1' (2)", "length 1"});
  err("KerpleR2Device", [] { ops::kerple_bias(r1(), meta(r2()), 3, 3); }, {kb + "'r2' must be on the device of 'r1'", "meta"});
  err("KerpleKind", [] { ops::kerple_bias(r1(), r2(), 3, 3, 0, 0, "exp"); }, {kb + "'kind' must be one of \"log\", \"power\"", "\"exp\""});
  err("KerpleR1Nan", [] { ops::kerple_bias(torch::tensor({kNan, 1.0}), torch::tensor({0.5, 0.5}), 3, 3); },
      {kb + "'r1' must be finite", "r1[0] = nan"});
  err("KerpleR2NegLog", [] { ops::kerple_bias(r1(), torch::tensor({0.5f, -0.25f}), 3, 3); },
      {kb + "'r2' must be >= 0 for kind \"log\"", "r2[1] = -0.25"});
  err("KerpleR2InfPower", [] { ops::kerple_bias(r1(), torch::tensor({kInf, 1.0}).to(torch::kFloat), 3, 3, 0, 0, "power"); },
      {kb + "'r2' must be finite", "r2[0] = inf"});
  err("KerplePastAddressSpace", [] { ops::kerple_bias(r1(), r2(), int64_t{1} << 24, int64_t{1} << 23); },
      {kb + "'q_len' is too large: the output cannot be allocated", "1125899906842624 bytes"});
  ok("KerpleStridedR1", [] {
    auto a = torch::tensor({1.f, 7.f, 2.f, 7.f}).slice(0, 0, 4, 2);
    expect_close(ops::kerple_bias(a, r2(), 3, 5, 0, 2), ref_kerple_log(r1(), r2(), 3, 5, 0, 2, true), 1e-5);
  });

  // ---- rel_pos_scores
  const std::string rp = "posenc.rel_pos_scores: argument ";
  err("RelPosQ3D", [] { ops::rel_pos_scores(torch::randn({2, 3, 4}), torch::randn({2, 7, 4})); }, {rp + "'q' must be a 4-D tensor", "3-D"});
  err("RelPosQInt", [] { ops::rel_pos_scores(torch::zeros({1, 2, 3, 4}, torch::kLong), torch::zeros({2, 7, 4}, torch::kLong)); },
      {rp + "'q'", "Long"});
  err("RelPosEvenR", [] { ops::rel_pos_scores(torch::randn({1, 2, 3, 4}), torch::randn({2, 6, 4})); }, {rp + "'rel_emb'", "6"});
  err("RelPosDevice", [] { ops::rel_pos_scores(torch::randn({1, 2, 3, 4}), meta(torch::randn({2, 7, 4}))); },
      {rp + "'rel_emb' must be on the device of 'q'", "meta"});
  err("RelPosMaxDist", [] { ops::rel_pos_scores(torch::randn({1, 2, 3, 4}), torch::randn({2, 7, 4}), 0, 0, std::nullopt, 4); },
      {rp + "'max_distance' must be in [0, c] with c = (R - 1) / 2 = 3", "but got 4"});
  err("RelPosKLenNeg", [] { ops::rel_pos_scores(torch::randn({1, 2, 3, 4}), torch::randn({2, 7, 4}), 0, 0, -1); },
      {rp + "'k_len' must be >= 0", "-1"});

  // ---- rope
  const std::string ro = "posenc.rope: argument ";
  err("RopeInvFreqBaseInf", [] { ops::rope_inv_freq(8, kInf); }, {"posenc.rope_inv_freq: argument 'base' must be finite and > 1", "inf"});
  err("RopeInvFreqDimOdd", [] { ops::rope_inv_freq(7); }, {"posenc.rope_inv_freq: argument 'dim'", "7"});
  err("RopeX3D", [] { ops::rope(torch::randn({2, 3, 8}), std::nullopt, ops::rope_inv_freq(8)); }, {ro + "'x' must be a 4-D tensor", "3-D"});
  err("RopeXInt", [] { ops::rope(torch::zeros({1, 2, 3, 8}, torch::kLong), std::nullopt, ops::rope_inv_freq(8)); }, {ro + "'x'", "Long"});
  err("RopeInvFreqNan", [] { ops::rope(xq(), std::nullopt, torch::tensor({1.f, NAN, 0.1f, 0.01f})); },
      {ro + "'inv_freq' must be finite", "inv_freq[1] = nan"});
  err("RopePositionsDevice", [] { ops::rope(xq(), meta(torch::arange(3)), ops::rope_inv_freq(8)); }, {ro + "'positions'", "meta"});
  err("RopeCuUnsorted", [] {
    ops::rope(torch::randn({5, 2, 8}), std::nullopt, ops::rope_inv_freq(8), 0, std::nullopt, false, "thd",
              torch::tensor({int64_t{0}, int64_t{4}, int64_t{2}, int64_t{5}}));
  }, {ro + "'cu_seqlens'"});
  err("RopeCuNotEndingAtT", [] {
    ops::rope(torch::randn({5, 2, 8}), std::nullopt, ops::rope_inv_freq(8), 0, std::nullopt, false, "thd",
              torch::tensor({int64_t{0}, int64_t{2}, int64_t{4}}));
  }, {ro + "'cu_seqlens'", "4"});
  err("RopeRotaryDimOdd", [] { ops::rope(xq(), std::nullopt, ops::rope_inv_freq(8).slice(0, 0, 2), 0, 3); }, {ro + "'rotary_dim'", "3"});
  ok("RopeNonContiguous", [] {
    auto x = xq();
    auto xt = x.transpose(1, 2).contiguous().transpose(1, 2);
    auto inv = ops::rope_inv_freq(8);
    expect_close(ops::rope(xt, std::nullopt, inv, 5), ref_rope(x, torch::arange(5, 8), inv), 1e-5);
  });

  // offset + explicit positions past int64 (it used to wrap silently)
  const std::string wrap = ro + "'offset' must keep every position offset + positions[i] within int64";
  err("RopePositionsOffsetWraps", [] { ops::rope(xq(), torch::tensor({int64_t{0}, int64_t{1}, kI64Max - 5}), ops::rope_inv_freq(8), 10); },
      {wrap, "but got 10 with positions in [0, " + std::to_string(kI64Max - 5) + "]"});
  err("RopePositionsNegativeOffsetWraps", [] {
    ops::rope(xq(), torch::tensor({int64_t{3}, -(int64_t{1} << 62), int64_t{0}}), ops::rope_inv_freq(8), kI64Min + (int64_t{1} << 61));
  }, {wrap, "with positions in [" + std::to_string(-(int64_t{1} << 62)) + ", 3]"});
  err("RopeInt32PositionsOffsetWraps", [] {
    ops::rope(xq(), torch::tensor({0, 1, 2147483647}, torch::kInt), ops::rope_inv_freq(8), kI64Max - (int64_t{1} << 30));
  }, {wrap, "with positions in [0, 2147483647]"});
  ok("RopePositionsOffsetAtLimit", [] {
    auto x = xq();
    auto inv = ops::rope_inv_freq(8);
    EXPECT_TRUE(torch::equal(ops::rope(x, torch::tensor({int64_t{0}, int64_t{1}, int64_t{2}}), inv, kI64Max - 2),
                             ops::rope(x, std::nullopt, inv, kI64Max - 2)));
  });
  // the default k_len = q_offset + q_len - k_offset used to wrap in int64
  err("RelPosDefaultKLenWraps", [] {
    ops::rel_pos_scores(torch::randn({1, 2, 3, 4}), torch::randn({2, 7, 4}), int64_t{1} << 62, -(int64_t{1} << 62));
  }, {rp + "'k_len' (default q_offset + q_len - k_offset) must be within int64",
      "but got q_offset " + std::to_string(int64_t{1} << 62) + ", q_len 3 and k_offset " + std::to_string(-(int64_t{1} << 62))});
  // backward ops refuse a gradient of another dtype than the forward's output
  err("RelPosBackwardGradDtype", [] {
    static auto bwd = c10::Dispatcher::singleton()
                          .findSchemaOrThrow("posenc::rel_pos_scores_backward", "")
                          .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                                    c10::SymInt, c10::SymInt, c10::SymInt,
                                                                    std::optional<int64_t>, bool)>();
    bwd.call(torch::zeros({1, 2, 3, 3}), torch::randn({1, 2, 3, 4}, torch::kDouble), torch::randn({2, 7, 4}, torch::kDouble), 0, 0, 3,
             std::nullopt, false);
  }, {"posenc.rel_pos_scores_backward: argument 'grad' must have the dtype of the forward's output, the dtype of 'q' (Double)",
      "but got dtype Float"});
  err("AlibiBackwardGradDtype", [] {
    static auto bwd = c10::Dispatcher::singleton()
                          .findSchemaOrThrow("posenc::alibi_bias_backward", "")
                          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, c10::SymInt, c10::SymInt, c10::SymInt,
                                            c10::SymInt, bool)>();
    bwd.call(torch::zeros({2, 3, 3}, torch::kDouble), slopes2(), 3, 3, 0, 0, true);
  }, {"posenc.alibi_bias_backward: argument 'grad' must have the dtype of the forward's output, the dtype of 'slopes' (Float)",
      "but got dtype Double"});

  // ---- relative_attention
  const std::string at = "posenc.relative_attention: argument ";
  auto q = [] { return torch::randn({1, 2, 3, 4}); };
  auto kv = [] { return torch::randn({1, 2, 5, 4}); };
  err("AttnKDtype", [=] { ops::relative_attention(q(), kv().to(torch::kDouble), kv()); }, {at + "'k'", "Double"});
  err("AttnVDevice", [=] { ops::relative_attention(q(), kv(), meta(kv())); }, {at + "'v'", "meta"});
  err("AttnScaleNan", [=] { ops::relative_attention(q(), kv(), kv(), ops::RelativeAttentionOptions().scale(kNan)); },
      {at + "'scale' must be finite", "nan"});
  err("AttnSlopesNan", [=] {
    ops::relative_attention(q(), kv(), kv(), ops::RelativeAttentionOptions().slopes(torch::tensor({kNan, 1.0}).to(torch::kFloat)));
  }, {at + "'slopes' must be finite", "nan"});
  err("AttnQOffsetHuge", [=] { ops::relative_attention(q(), kv(), kv(), ops::RelativeAttentionOptions().q_offset(int64_t{1} << 62)); },
      {at + "'q_offset'", "2^61"});

  // ---- modules
  const std::string le = "posenc.LearnedPositionalEmbedding: ";
  verr("LearnedMaxLenZero", [] { pnn::LearnedPositionalEmbedding(0, 4); }, {le + "option 'max_len' must be > 0", "0"});
  err("LearnedPastTable", [] { pnn::LearnedPositionalEmbedding m(8, 4); m(torch::zeros({1, 3, 4}), 6); },
      {le + "position 8 is past the table of 8 positions (max_len)"});
  err("LearnedOffsetInt64Max", [] { pnn::LearnedPositionalEmbedding m(8, 4); m(torch::zeros({1, 3, 4}), kI64Max); },
      {le + "position " + std::to_string(kI64Max) + " + 2 is past the table of 8 positions"});
  err("LearnedOffsetNeg", [] { pnn::LearnedPositionalEmbedding m(8, 4); m(torch::zeros({1, 3, 4}), -1); },
      {le + "argument 'offset' must be >= 0", "-1"});
  const std::string re = "posenc.RotaryEmbedding: ";
  verr("RotaryRotaryDimOdd", [] { pnn::RotaryEmbedding(pnn::RotaryEmbeddingOptions(8).rotary_dim(3)); },
       {re + "option 'rotary_dim'", "3"});
  verr("RotaryBaseNan", [] { pnn::RotaryEmbedding(pnn::RotaryEmbeddingOptions(8).base(kNan)); }, {re + "option 'base'", "nan"});
  err("RotaryMixedDtype", [] { pnn::RotaryEmbedding m(8); m(xq(), xq().to(torch::kDouble)); },
      {re + "argument 'k' must have the dtype of 'q' (Float)", "but got dtype Double"});
  err("RotaryMixedDevice", [] { pnn::RotaryEmbedding m(8); m(xq(), meta(xq())); },
      {re + "argument 'k' must be on the device of 'q' (cpu)", "but got device meta"});
  err("RotaryQDim", [] { pnn::RotaryEmbedding m(8); m(torch::randn({1, 2, 3, 6}), xq()); },
      {re + "argument 'q' must have last dimension dim (8)", "[1, 2, 3, 6]"});
  verr("KerplePowerEps", [] { pnn::KERPLEBias(pnn::KERPLEBiasOptions(2).kind("power").eps(2.5)); },
       {"posenc.KERPLEBias: option 'eps' must be <= 2 for kind \"power\"", "2.5"});
  verr("T5BucketsOdd", [] { pnn::T5RelativeBias(pnn::T5RelativeBiasOptions(2).num_buckets(7)); },
       {"posenc.T5RelativeBias: option 'num_buckets'", "7"});
  err("AlibiModuleKLenNeg", [] { pnn::ALiBi m(2); m(3, -1); }, {ab + "'k_len' must be >= 0", "-1"});
  err("TxlIntQ", [] { pnn::TransformerXLRelativeScore m(8, 2, 4); m(torch::zeros({1, 2, 3, 4}, torch::kLong)); },
      {"posenc.TransformerXLRelativeScore: argument 'q'", "Long"});
  err("TxlMemNeg", [] { pnn::TransformerXLRelativeScore m(8, 2, 4); m(torch::randn({1, 2, 3, 4}), -1); },
      {"posenc.TransformerXLRelativeScore: argument 'mem_len' must be >= 0", "-1"});
  err("SinModuleX2D", [] { pnn::SinusoidalPositionalEncoding m(4); m(torch::zeros({3, 4})); },
      {"posenc.SinusoidalPositionalEncoding: argument 'x'", "[3, 4]"});

  // ---- the JSON config reader
  const std::string js = "posenc.rope_config_from_json: ";
  verr("JsonTruncated", [] { posenc::rope_config_from_json("{\"head_dim\": 64,"); }, {js});
  verr("JsonNotObject", [] { posenc::rope_config_from_json("[1, 2]"); }, {js, "object"});
  verr("JsonNanLiteral", [] { posenc::rope_config_from_json("{\"head_dim\": 64, \"rope_theta\": NaN}"); }, {js});
  verr("JsonDeepNesting", [] { posenc::rope_config_from_json(std::string(100000, '[') + std::string(100000, ']')); }, {js});
  verr("JsonThetaString", [] { posenc::rope_config_from_json("{\"head_dim\": 64, \"rope_theta\": \"big\"}"); }, {js, "rope_theta"});
  verr("JsonInvalidUtf8", [] { posenc::rope_config_from_json("{\"head_dim\": 64, \"rope_type\": \"\xff\xfe\"}"); }, {js});
  err("FileMissing", [] { posenc::rope_config_from_file("/nonexistent/config.json"); },
      {"posenc.rope_config_from_file", "/nonexistent/config.json"});
  return r;
}

// The call run after every row: the ops and a module still give reference results.
void valid_calls() {
  expect_close(posenc::ops::alibi_bias(slopes2(), 3, 4, 1, 0), ref_alibi(slopes2(), 3, 4, 1, 0, true), 1e-6);
  expect_close(posenc::ops::sinusoidal_table(2, 4, 1e4, 3), ref_sinusoidal({3, 4}, 4), 1e-6);
  posenc::nn::RotaryEmbedding m(8);
  auto x = xq();
  auto [qr, kr] = m(x, x);
  expect_close(qr, ref_rope(x, torch::arange(3), posenc::ops::rope_inv_freq(8)), 1e-5);
}

class BadInputs : public ::testing::TestWithParam<Row> {};

TEST_P(BadInputs, Row) {
  const Row& row = GetParam();
  switch (row.expect) {
    case Expect::kResult:
      row.fn();
      break;
    case Expect::kValueError: {
      std::vector<const char*> n;
      for (const auto& s : row.needles) n.push_back(s.c_str());
      try {
        row.fn();
        ADD_FAILURE() << "no exception thrown, expected c10::ValueError: " << row.needles[0];
      } catch (const c10::ValueError& e) {
        const std::string msg = e.what_without_backtrace();
        for (const auto& s : row.needles) EXPECT_NE(msg.find(s), std::string::npos) << "'" << s << "' not in: " << msg;
      } catch (const std::exception& e) {
        ADD_FAILURE() << "wrong exception type: " << e.what();
      }
      break;
    }
    case Expect::kError: {
      try {
        row.fn();
        ADD_FAILURE() << "no exception thrown, expected c10::Error: " << row.needles[0];
      } catch (const c10::Error& e) {
        const std::string msg = e.what_without_backtrace();
        for (const auto& s : row.needles) EXPECT_NE(msg.find(s), std::string::npos) << "'" << s << "' not in: " << msg;
      } catch (const std::exception& e) {
        ADD_FAILURE() << "wrong exception type: " << e.what();
      }
      break;
    }
  }
  valid_calls();
}

INSTANTIATE_TEST_SUITE_P(Table, BadInputs, ::testing::ValuesIn(rows()),
                         [](const ::testing::TestParamInfo<Row>& info) { return info.param.name; });

TEST(BadInputs, TableSize) { EXPECT_GE(rows().size(), 90u); }

}  // namespace
