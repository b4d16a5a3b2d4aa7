// posenc::rope_config_from_json / rope_config_from_file on real-shaped transformers configs:
// the fields read, the warnings, and the errors (types and messages). Parity with the Python
// reader, and bit-identity with transformers, are tested in tests/python/test_hf_config.py.
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <unistd.h>

#include <charconv>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "posenc/posenc.h"
#include "test_util.h"

namespace {

using posenc::rope_config_from_file;
using posenc::rope_config_from_json;
using posenc::RopeScalingConfig;
using posenc::RopeType;

// Collects TORCH_WARN messages while alive.
class Warnings : public c10::WarningHandler {
 public:
  Warnings() : guard_(this) {}
  void process(const c10::Warning& w) override { messages.push_back(w.msg()); }
  std::vector<std::string> messages;

 private:
  c10::WarningUtils::WarningHandlerGuard guard_;
};

using posenc_test::expect_error;

std::string floats_json(const std::vector<double>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) {
    char buf[32];
    const auto r = std::to_chars(buf, buf + sizeof(buf), v[i]);  // shortest round trip
    s += (i ? ", " : "") + std::string(buf, r.ptr);
  }
  return s + "]";
}

std::vector<double> ramp(int n, double lo, double step) {
  std::vector<double> v;
  for (int i = 0; i < n; ++i) v.push_back(lo + step * i);
  return v;
}

const char* kLlama31 = R"({
  "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
  "num_attention_heads": 32, "num_key_value_heads": 8, "max_position_embeddings": 131072,
  "rope_theta": 500000.0, "torch_dtype": "bfloat16",
  "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                   "original_max_position_embeddings": 8192, "rope_type": "llama3"}
})";

TEST(HfConfig, Llama31OldAndNewStyle) {
  for (const std::string text :
       {std::string(kLlama31),
        std::string(R"({"model_type": "llama", "hidden_size": 4096, "num_attention_heads": 32,
          "head_dim": 128, "max_position_embeddings": 131072,
          "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192}})")}) {
    Warnings w;
    const RopeScalingConfig c = rope_config_from_json(text);
    EXPECT_TRUE(w.messages.empty());
    EXPECT_EQ(c.type, RopeType::Llama3);
    EXPECT_EQ(c.head_dim, 128);
    EXPECT_EQ(c.rope_theta, 500000.0);
    EXPECT_EQ(c.partial_rotary_factor, 1.0);
    EXPECT_EQ(c.factor, 8.0);
    EXPECT_EQ(c.low_freq_factor, 1.0);
    EXPECT_EQ(c.high_freq_factor, 4.0);
    EXPECT_EQ(c.original_max_position_embeddings, 8192);
    EXPECT_EQ(c.max_position_embeddings, 131072);
    EXPECT_FALSE(c.attention_factor.has_value());
    const auto p = posenc::compute_rope_parameters(c);
    EXPECT_EQ(p.inv_freq.size(0), 64);
    EXPECT_EQ(p.attention_factor, 1.0);
  }
}

TEST(HfConfig, Qwen2YarnLegacyTypeKey) {
  const auto c = rope_config_from_json(R"({"model_type": "qwen2", "hidden_size": 3584,
    "num_attention_heads": 28, "max_position_embeddings": 32768, "rope_theta": 1000000.0,
    "rope_scaling": {"factor": 4.0, "original_max_position_embeddings": 32768, "type": "yarn"}})");
  EXPECT_EQ(c.type, RopeType::YaRN);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.rope_theta, 1e6);
  EXPECT_EQ(c.factor, 4.0);
  EXPECT_EQ(c.original_max_position_embeddings, 32768);
  EXPECT_TRUE(c.truncate);
  EXPECT_FALSE(c.beta_fast.has_value());
  EXPECT_DOUBLE_EQ(posenc::compute_rope_parameters(c).attention_factor, 0.1 * std::log(4.0) + 1.0);
  // rope_type wins over the legacy type; a null truncate is false (as transformers reads it)
  const auto d = rope_config_from_json(R"({"head_dim": 64, "max_position_embeddings": 8192,
    "rope_scaling": {"type": "linear", "rope_type": "yarn", "factor": 2.0, "truncate": null}})");
  EXPECT_EQ(d.type, RopeType::YaRN);
  EXPECT_FALSE(d.truncate);
  EXPECT_EQ(d.original_max_position_embeddings, 8192);  // no original: max_position_embeddings
}

TEST(HfConfig, Phi3LongRopeShortLongFactors) {
  const auto shrt = ramp(48, 1.0, 0.01), lng = ramp(48, 1.5, 0.5);
  const std::string scaling = c10::str(R"("short_factor": )", floats_json(shrt),
                                       R"(, "long_factor": )", floats_json(lng));
  const std::string phi3 = c10::str(R"({"model_type": "phi3", "hidden_size": 3072,
    "num_attention_heads": 32, "max_position_embeddings": 131072,
    "original_max_position_embeddings": 4096, "rope_theta": 10000.0, "rope_scaling": {"type": )");
  for (const char* name : {"\"longrope\"", "\"su\"", "\"yarn\""}) {  // Phi3Config's aliases
    Warnings w;
    const auto c = rope_config_from_json(
        c10::str(phi3, name, R"(, "original_max_position_embeddings": 999, )", scaling, "}}"));
    EXPECT_TRUE(w.messages.empty()) << name;
    EXPECT_EQ(c.type, RopeType::LongRoPE) << name;
    EXPECT_EQ(c.head_dim, 96);
    EXPECT_EQ(c.original_max_position_embeddings, 4096);  // the top-level value wins
    EXPECT_EQ(c.short_factor, shrt);
    EXPECT_EQ(c.long_factor, lng);
    EXPECT_FALSE(c.factor.has_value());
    const auto p = posenc::compute_rope_parameters(c, 4097);
    EXPECT_DOUBLE_EQ(p.attention_factor,
                     std::sqrt(1.0 + std::log(131072.0 / 4096.0) / std::log(4096.0)));
  }
  // "yarn" is YaRN outside Phi-3, and the longrope lists are then ignored with a warning
  Warnings w;
  const auto c = rope_config_from_json(c10::str(
      R"({"hidden_size": 3072, "num_attention_heads": 32, "max_position_embeddings": 131072,
          "rope_scaling": {"type": "yarn", "factor": 32.0, )", scaling, "}}"));
  EXPECT_EQ(c.type, RopeType::YaRN);
  EXPECT_TRUE(c.short_factor.empty());
  ASSERT_EQ(w.messages.size(), 1u);
  EXPECT_NE(w.messages[0].find("posenc.rope_config_from_json: keys not used by rope_type 'yarn' "
                               "ignored: ['long_factor', 'short_factor']"),
            std::string::npos)
      << w.messages[0];
}

TEST(HfConfig, GptNeoXRotaryPct) {
  const auto c = rope_config_from_json(R"({"model_type": "gpt_neox", "hidden_size": 512,
    "num_attention_heads": 8, "rotary_pct": 0.25, "rotary_emb_base": 50000,
    "max_position_embeddings": 2048})");
  EXPECT_EQ(c.type, RopeType::Default);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.partial_rotary_factor, 0.25);
  EXPECT_EQ(c.rope_theta, 50000.0);
  EXPECT_EQ(c.rotary_dim(), 16);
  // transformers 5 writes them into rope_parameters; the dict's win over the top level
  const auto d = rope_config_from_json(R"({"hidden_size": 512, "num_attention_heads": 8,
    "rotary_pct": 0.25, "partial_rotary_factor": 0.75, "rope_theta": 7.0,
    "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5}})");
  EXPECT_EQ(d.partial_rotary_factor, 0.5);
  EXPECT_EQ(d.rope_theta, 10000.0);
  // the config's partial_rotary_factor wins over rotary_pct; explicit head_dim over the ratio
  const auto e = rope_config_from_json(
      R"({"hidden_size": 512, "num_attention_heads": 8, "head_dim": 32, "rotary_pct": 0.25,
          "partial_rotary_factor": 0.75})");
  EXPECT_EQ(e.head_dim, 32);
  EXPECT_EQ(e.partial_rotary_factor, 0.75);
  EXPECT_EQ(e.rope_theta, 10000.0);
}

TEST(HfConfig, DeepSeekYarnMscale) {
  const auto c = rope_config_from_json(R"({"model_type": "deepseek_v3", "hidden_size": 7168,
    "num_attention_heads": 128, "head_dim": 64, "qk_rope_head_dim": 64,
    "max_position_embeddings": 163840, "rope_theta": 10000,
    "rope_scaling": {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096,
      "beta_fast": 32, "beta_slow": 1, "mscale": 0.707, "mscale_all_dim": 1.0}})");
  EXPECT_EQ(c.type, RopeType::YaRN);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.factor, 40.0);
  EXPECT_EQ(c.beta_fast, 32.0);
  EXPECT_EQ(c.beta_slow, 1.0);
  EXPECT_EQ(c.mscale, 0.707);
  EXPECT_EQ(c.mscale_all_dim, 1.0);
  const double l = std::log(40.0);
  EXPECT_DOUBLE_EQ(posenc::compute_rope_parameters(c).attention_factor,
                   (0.1 * 0.707 * l + 1.0) / (0.1 * 1.0 * l + 1.0));
}

TEST(HfConfig, NestedPerLayerType) {
  const std::string text = R"({"model_type": "gemma3_text", "head_dim": 256,
    "max_position_embeddings": 131072, "rope_parameters": {
      "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
      "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0},
      "no_rope": null}})";
  const auto full = rope_config_from_json(text, "full_attention");
  EXPECT_EQ(full.type, RopeType::Linear);
  EXPECT_EQ(full.factor, 8.0);
  EXPECT_EQ(full.rope_theta, 1e6);
  const auto local = rope_config_from_json(text, "sliding_attention");
  EXPECT_EQ(local.type, RopeType::Default);
  EXPECT_EQ(local.rope_theta, 1e4);
  expect_error<c10::ValueError>([&] { rope_config_from_json(text); },
                                "posenc.rope_config_from_json: the config has RoPE parameters per "
                                "layer type ['full_attention', 'no_rope', 'sliding_attention']; "
                                "pass layer_type= one of them");
  expect_error<c10::ValueError>([&] { rope_config_from_json(text, "global"); },
                                "layer_type must be one of ['full_attention', 'no_rope', "
                                "'sliding_attention'], but got 'global'");
  expect_error<c10::ValueError>([&] { rope_config_from_json(text, "no_rope"); },
                                "layer type 'no_rope' has no RoPE (its parameters are None)");
  // layer_type is ignored for a flat dict
  EXPECT_EQ(rope_config_from_json(kLlama31, "full_attention").type, RopeType::Llama3);
}

TEST(HfConfig, DynamicLinearNtkXposDefault) {
  const auto dyn = rope_config_from_json(
      R"({"head_dim": 64, "max_position_embeddings": 4096, "rope_scaling": {"type": "dynamic", "factor": 2.0}})");
  EXPECT_EQ(dyn.type, RopeType::Dynamic);
  EXPECT_EQ(dyn.factor, 2.0);
  EXPECT_EQ(dyn.max_position_embeddings, 4096);
  EXPECT_FALSE(dyn.original_max_position_embeddings.has_value());
  const auto lin = rope_config_from_json(
      R"({"hidden_size": 256, "num_attention_heads": 4, "rope_scaling": {"type": "linear", "factor": 2}})");
  EXPECT_EQ(lin.type, RopeType::Linear);
  EXPECT_EQ(lin.factor, 2.0);
  EXPECT_EQ(lin.rope_theta, 10000.0);
  EXPECT_EQ(lin.head_dim, 64);
  const auto ntk = rope_config_from_json(R"({"head_dim": 64, "rope_scaling": {"rope_type": "ntk", "factor": 4.0}})");
  EXPECT_EQ(ntk.type, RopeType::NTK);
  const auto xpos = rope_config_from_json(
      R"({"head_dim": 64, "rope_scaling": {"rope_type": "xpos", "xpos_gamma": 0.5, "xpos_scale_base": 256}})");
  EXPECT_EQ(xpos.type, RopeType::XPos);
  EXPECT_EQ(xpos.xpos_gamma, 0.5);
  EXPECT_EQ(xpos.xpos_scale_base, 256.0);
  // no RoPE dict, an empty one, or a null type: default; mrope (Qwen2-VL) is default too
  for (const char* text : {R"({"head_dim": 32, "rope_theta": 1e6})",
                           R"({"head_dim": 32, "rope_theta": 1e6, "rope_scaling": {}})",
                           R"({"head_dim": 32, "rope_theta": 1e6, "rope_scaling": null})",
                           R"({"head_dim": 32, "rope_theta": 1e6, "rope_scaling": {"rope_type": null}})",
                           R"({"head_dim": 32, "rope_theta": 1e6, "rope_scaling": {"type": "mrope", "mrope_section": [4, 6, 6]}})"}) {
    Warnings w;
    const auto c = rope_config_from_json(text);
    EXPECT_EQ(c.type, RopeType::Default) << text;
    EXPECT_EQ(c.rope_theta, 1e6) << text;
    EXPECT_TRUE(w.messages.empty()) << text;
  }
}

TEST(HfConfig, MisspelledTypesNameRopeType) {
  const std::string types =
      "rope_type must be one of 'default', 'linear', 'ntk', 'dynamic', 'yarn', 'llama3', "
      "'longrope', 'xpos', but got ";
  const std::vector<std::pair<std::string, std::string>> cases{
      {"Yarn", "'Yarn' (did you mean 'yarn'?)"},
      {"lineer", "'lineer' (did you mean 'linear'?)"},
      {"LLAMA3", "'LLAMA3' (did you mean 'llama3'?)"},
      {"long_rope", "'long_rope' (did you mean 'longrope'?)"},
      {"proportional", "'proportional'"},
      {"dynamic-ntk", "'dynamic-ntk' (did you mean 'dynamic'?)"},
      {"MROPE", "'MROPE' (did you mean 'longrope'?)"},
      {"Su", "'Su'"},
  };
  for (const auto& [name, given] : cases) {
    const std::string text = c10::str(R"({"head_dim": 64, "rope_scaling": {"rope_type": ")", name,
                                      R"(", "factor": 2.0}})");
    expect_error<c10::ValueError>([&] { rope_config_from_json(text); },
                                  "posenc.rope_config_from_json: " + types + given);
    if (given.find("did you mean") == std::string::npos) {
      try {
        rope_config_from_json(text);
      } catch (const c10::Error& e) {
        EXPECT_EQ(std::string(e.what_without_backtrace()).find("did you mean"), std::string::npos);
      }
    }
  }
  expect_error<c10::ValueError>(
      [] { rope_config_from_json(R"({"head_dim": 64, "rope_scaling": {"rope_type": 3.5}})"); },
      "posenc.rope_config_from_json: rope_type must be a string, but got 3.5");
  expect_error<c10::ValueError>(
      [] { rope_config_from_json(R"({"head_dim": 64, "rope_scaling": {"type": true}})"); },
      "rope_type must be a string, but got True");
}

TEST(HfConfig, Warnings) {
  Warnings w;
  const auto c = rope_config_from_json(R"({"head_dim": 64, "max_position_embeddings": 8192,
    "rope_scaling": {"rope_type": "linear", "factor": 4.0, "beta_fastt": 8.0, "beta_fast": 2,
                     "attention_factor": 2.0, "mrope_section": [1, 2]}})");
  EXPECT_FALSE(c.beta_fast.has_value());
  EXPECT_FALSE(c.attention_factor.has_value());  // transformers ignores it for linear
  ASSERT_EQ(w.messages.size(), 2u);
  EXPECT_EQ(w.messages[0],
            "posenc.rope_config_from_json: unrecognized keys for rope_type 'linear' ignored: "
            "['beta_fastt']");
  EXPECT_EQ(w.messages[1],
            "posenc.rope_config_from_json: keys not used by rope_type 'linear' ignored: "
            "['attention_factor', 'beta_fast']");
}

TEST(HfConfig, FieldErrors) {
  // missing / out-of-range fields: RopeScalingConfig::validate's c10::Error
  expect_error([] { rope_config_from_json(R"({"head_dim": 64, "rope_scaling": {"type": "linear"}})"); },
               "posenc.rope_scaling_inv_freq: argument 'factor' must be given for rope_type "
               "\"linear\", but got None");
  expect_error([] {
    rope_config_from_json(R"({"head_dim": 64, "rope_scaling": {"type": "llama3", "factor": 8,
      "low_freq_factor": 1, "high_freq_factor": 4, "original_max_position_embeddings": null}})");
  }, "argument 'original_max_position_embeddings' must be given for rope_type \"llama3\"");
  expect_error([] { rope_config_from_json(R"({"head_dim": -4})"); },
               "argument 'head_dim' must be > 0, but got -4");
  // head_dim fallback
  expect_error<c10::ValueError>(
      [] { rope_config_from_json(R"({"rope_theta": 1e4})"); },
      "posenc.rope_config_from_json: the config needs head_dim or hidden_size and "
      "num_attention_heads, but got head_dim=None, hidden_size=None, num_attention_heads=None");
  expect_error<c10::ValueError>(
      [] { rope_config_from_json(R"({"head_dim": 0, "hidden_size": 10, "num_attention_heads": 0})"); },
      "but got head_dim=0, hidden_size=10, num_attention_heads=0");
  EXPECT_EQ(rope_config_from_json(R"({"head_dim": 0, "hidden_size": 2560, "num_attention_heads": 32})").head_dim, 80);
  // wrong JSON types (the Python reader is duck-typed there; this one is strict)
  expect_error<c10::ValueError>(
      [] { rope_config_from_json(R"({"head_dim": 64, "rope_scaling": {"type": "linear", "factor": "2.0"}})"); },
      "posenc.rope_config_from_json: 'factor' must be a number, but got '2.0'");
  expect_error<c10::ValueError>(
      [] { rope_config_from_json(R"({"head_dim": 64, "max_position_embeddings": 4096.0})"); },
      "'max_position_embeddings' must be an integer, but got 4096.0");
  expect_error<c10::ValueError>(
      [] { rope_config_from_json(R"({"head_dim": 64, "rope_scaling": {"type": "longrope", "short_factor": [1, null]}})"); },
      "'short_factor' must be a list of numbers, but got None at index 1");
  expect_error<c10::ValueError>(
      [] { rope_config_from_json(R"({"head_dim": 64, "rope_scaling": "abc"})"); },
      "posenc.rope_config_from_json: 'rope_scaling'/'rope_parameters' must be a dict, but got "
      "str: 'abc'");
  expect_error<c10::ValueError>(
      [] { rope_config_from_json(R"({"head_dim": 64, "rope_parameters": [1e-05, 1e16, 123.0, "it's"]})"); },
      "must be a dict, but got list: [1e-05, 1e+16, 123.0, \"it's\"]");
}

TEST(HfConfig, BadJsonAndFiles) {
  expect_error<c10::ValueError>([] { rope_config_from_json("{\"head_dim\": 64,"); },
                                "posenc.rope_config_from_json: the config is not valid JSON: "
                                "parse error at line 1, column 17");
  expect_error<c10::ValueError>([] { rope_config_from_json(""); }, "is not valid JSON");
  expect_error<c10::ValueError>([] { rope_config_from_json(R"({"head_dim": NaN})"); },
                                "is not valid JSON");
  expect_error<c10::ValueError>([] { rope_config_from_json("[1, 2]"); },
                                "the config must be a JSON object, but got list: [1, 2]");
  expect_error<c10::ValueError>([] { rope_config_from_json(std::string(100000, '[')); },
                                "is not valid JSON");

  const auto dir = std::filesystem::temp_directory_path() /
                   c10::str("posenc_hf_config_", ::getpid());
  std::filesystem::create_directories(dir);
  const auto good = (dir / "config.json").string();
  std::ofstream(good) << kLlama31;
  EXPECT_EQ(rope_config_from_file(good).type, RopeType::Llama3);
  const auto bad = (dir / "bad.json").string();
  std::ofstream(bad) << "{\n  \"head_dim\": 64,\n  oops\n}";
  expect_error<c10::ValueError>([&] { rope_config_from_file(bad); },
                                "posenc.rope_config_from_file: '" + bad +
                                    "' is not valid JSON: parse error at line 3");
  const auto missing = (dir / "missing.json").string();
  expect_error([&] { rope_config_from_file(missing); },
               "posenc.rope_config_from_file: cannot open '" + missing +
                   "': No such file or directory");
  expect_error([&] { rope_config_from_file(dir.string()); }, "it is a directory");
  // content errors from a file name rope_config_from_file
  const auto typo = (dir / "typo.json").string();
  std::ofstream(typo) << R"({"head_dim": 64, "rope_scaling": {"rope_type": "Yarn"}})";
  expect_error<c10::ValueError>([&] { rope_config_from_file(typo); },
                                "posenc.rope_config_from_file: rope_type must be one of");
  std::filesystem::remove_all(dir);
}

}  // namespace
