// Regressions from the config.json fuzz campaign (tests/fuzz/fuzz_hf_config.cpp under ASan +
// UBSan, scripts/sanitize.sh): each input the driver found, reduced, with the clean error the
// reader now gives.
#include <gtest/gtest.h>

#include <cstdint>
#include <limits>
#include <string>

#include "posenc/posenc.h"
#include "test_util.h"

namespace {

using posenc::rope_config_from_json;
using posenc_test::expect_error;

std::string nested(size_t depth, const std::string& open, const std::string& close) {
  std::string s;
  for (size_t i = 0; i < depth; ++i) s += open;
  s += "1";
  for (size_t i = 0; i < depth; ++i) s += close;
  return s;
}

// A million nested arrays or objects (2 MB of text) in a config: nlohmann parses any depth
// without recursion, but the reader then copied the RoPE dict, and basic_json's copy
// constructor recurses once per level: ASan stack-overflow; SIGSEGV with an 8 MB stack, also
// through posenc.hf.rope_config_from_json in Python. Now refused before parsing, by name.
TEST(HfConfigFuzzRegression, DeepNestingIsRefusedNotAStackOverflow) {
  const std::string deep_array = nested(1000000, "[", "]");
  expect_error<c10::ValueError>(
      [&] {
        rope_config_from_json(R"({"head_dim": 64, "rope_scaling": {"rope_type": "linear", "factor": )" +
                              deep_array + "}}");
      },
      {"posenc.rope_config_from_json: the config nests JSON arrays/objects 1000002 levels deep",
       "at most 128"});
  const std::string deep_object = nested(1000000, R"({"rope_type":)", "}");
  expect_error<c10::ValueError>(
      [&] { rope_config_from_json(R"({"head_dim": 64, "rope_parameters": )" + deep_object + "}"); },
      {"nests JSON arrays/objects 1000001 levels deep"});
  // brackets inside strings do not count; unbalanced text is still a syntax error
  const auto c = rope_config_from_json(R"({"head_dim": 64, "name": ")" + std::string(1000, '[') + R"("})");
  EXPECT_EQ(c.head_dim, 64);
  expect_error<c10::ValueError>([] { rope_config_from_json(R"({"head_dim": 64, "x": [[[)"); },
                                {"is not valid JSON"});
  // 128 levels are read (an unknown key holding them is ignored with a warning)
  const auto ok = rope_config_from_json(R"({"head_dim": 64, "x": )" + nested(127, "[", "]") + "}");
  EXPECT_EQ(ok.head_dim, 64);
}

// head_dim 2^40 validated and compute_rope_parameters asked the allocator for a 2^39-entry
// table (ASan: allocation-size-too-big; without ASan an allocator error not naming posenc,
// or with memory overcommit a process killed while writing it).
TEST(HfConfigFuzzRegression, HugeHeadDimIsRefusedByName) {
  expect_error([] { rope_config_from_json(R"({"head_dim": 1099511627776})"); },
               {"posenc.rope_scaling_inv_freq: argument 'head_dim' must be <= 1048576 (2^20), but got "
                "1099511627776"});
  expect_error([] { rope_config_from_json(R"({"hidden_size": 9223372036854775807, "num_attention_heads": 1})"); },
               {"argument 'head_dim' must be <= 1048576"});
  // the largest accepted one computes
  const auto c = rope_config_from_json(R"({"head_dim": 1048576})");
  EXPECT_EQ(posenc::compute_rope_parameters(c).inv_freq.numel(), 524288);
}

// head_dim near 2^63: rotary_dim() cast the double product 2^63 to int64 (UBSan:
// float-cast-overflow) before validate() could refuse it.
TEST(HfConfigFuzzRegression, RotaryDimOfOutOfRangeFieldsIsDefined) {
  posenc::RopeScalingConfig c;
  c.head_dim = std::numeric_limits<int64_t>::max();
  EXPECT_EQ(c.rotary_dim(), 0);
  c.head_dim = 64;
  c.partial_rotary_factor = std::numeric_limits<double>::quiet_NaN();
  EXPECT_EQ(c.rotary_dim(), 0);
  c.partial_rotary_factor = std::numeric_limits<double>::infinity();
  EXPECT_EQ(c.rotary_dim(), 0);
  c.partial_rotary_factor = 0.5;
  EXPECT_EQ(c.rotary_dim(), 32);
  c.head_dim = std::numeric_limits<int64_t>::max();
  c.partial_rotary_factor = 1.0;
  expect_error([&] { c.validate(); }, {"argument 'head_dim' must be <= 1048576"});
}

}  // namespace

namespace {

// A LongRoPE factor of 1.7976931348623157e308 (fuzz seed 1, input 57954: the Phi-3 corpus
// config with short_factor[29] replaced) passed validate() as finite, then
// compute_rope_parameters failed converting it to float32 with c10's generic "cannot be
// converted to type float without overflow". Refused by name now, as is a subnormal factor.
TEST(HfConfigFuzzRegression, LongRopeFactorPastFloat32IsRefusedByName) {
  auto config = [](const std::string& bad) {
    std::string s = R"({"head_dim": 8, "max_position_embeddings": 4096, "rope_scaling": {)"
                    R"("type": "longrope", "original_max_position_embeddings": 1024, )"
                    R"("short_factor": [1.0, 1.0, )" + bad + R"(, 1.0], )"
                    R"("long_factor": [2.0, 2.0, 2.0, 2.0]}})";
    return posenc::compute_rope_parameters(rope_config_from_json(s));
  };
  expect_error([&] { config("1.7976931348623157e308"); },
               {"argument 'short_factor' must hold values in float32's normal range",
                "but got 1.79769e+308 at index 2"});
  expect_error([&] { config("1e-40"); },
               {"argument 'short_factor' must hold values in float32's normal range"});
  EXPECT_EQ(config("3.0e38").inv_freq.numel(), 4);  // the largest float32s still compute
}

}  // namespace
