// Reading a transformers config.json into a RopeScalingConfig: the C++ twin of
// python/posenc/hf.py. Every rule mirrors hf.py's (same precedence, aliases, warnings and error
// texts), so tests/python/test_hf_config.py can compare the two readers on the same configs.
// Python semantics that the rules depend on are spelled out here: a JSON null is Python's None
// (`_get` treats it as absent), `x or y` uses Python truthiness, and error messages write values
// as Python's repr() does (single-quoted strings, None/True/False, shortest float repr).
#include "posenc/hf_config.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <unordered_map>
#include <utility>
#include <vector>

namespace posenc {
namespace {

// ordered_json keeps the keys in file order, as Python's json.loads does (dict reprs in
// messages list them in that order).
using Json = nlohmann::ordered_json;

// ---- Python-style repr of JSON values ------------------------------------------------------

// repr(float): the shortest round-trip digits, positional for exponents in [-4, 16), otherwise
// scientific with at least two exponent digits ("1e-05", "1e+16"), and ".0" for integers.
std::string float_repr(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  char buf[64];
  const auto res = std::to_chars(buf, buf + sizeof(buf), v, std::chars_format::scientific);
  std::string s(buf, res.ptr);  // "-d.ddde+XX"
  std::string sign;
  if (s[0] == '-') {
    sign = "-";
    s.erase(0, 1);
  }
  const size_t e = s.find('e');
  const int exp = std::stoi(s.substr(e + 1));
  std::string digits;
  for (char ch : s.substr(0, e)) {
    if (ch != '.') digits += ch;
  }
  const int n = static_cast<int>(digits.size());
  if (exp >= -4 && exp < 16) {
    if (exp < 0) return sign + "0." + std::string(-exp - 1, '0') + digits;
    if (n <= exp + 1) return sign + digits + std::string(exp + 1 - n, '0') + ".0";
    return sign + digits.substr(0, exp + 1) + "." + digits.substr(exp + 1);
  }
  std::string mant = digits.substr(0, 1);
  if (n > 1) mant += "." + digits.substr(1);
  const std::string e_digits = std::to_string(std::abs(exp));
  return sign + mant + (exp < 0 ? "e-" : "e+") + (e_digits.size() < 2 ? "0" : "") + e_digits;
}

std::string hex2(unsigned v) {
  static const char* d = "0123456789abcdef";
  return std::string("\\x") + d[(v >> 4) & 15] + d[v & 15];
}

// repr(str): single quotes unless the text has a ' and no "; control characters escaped.
// Non-ASCII characters are kept as they are (Python also escapes the few non-printable ones
// among them; of those only U+0080..U+00A0 and U+00AD are handled here).
std::string str_repr(const std::string& s) {
  const bool dq = s.find('\'') != std::string::npos && s.find('"') == std::string::npos;
  const char q = dq ? '"' : '\'';
  std::string out(1, q);
  for (size_t i = 0; i < s.size(); ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c == '\\') {
      out += "\\\\";
    } else if (c == static_cast<unsigned char>(q)) {
      out += '\\';
      out += q;
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c < 0x20 || c == 0x7f) {
      out += hex2(c);
    } else if (c == 0xc2 && i + 1 < s.size() &&
               ((static_cast<unsigned char>(s[i + 1]) >= 0x80 &&
                 static_cast<unsigned char>(s[i + 1]) <= 0xa0) ||
                static_cast<unsigned char>(s[i + 1]) == 0xad)) {
      out += hex2(static_cast<unsigned char>(s[++i]));
    } else {
      out += static_cast<char>(c);
    }
  }
  return out + q;
}

std::string repr(const Json& v, int depth = 0) {
  if (depth > 32) return "...";  // bounded recursion on hostile nesting
  switch (v.type()) {
    case Json::value_t::null:
      return "None";
    case Json::value_t::boolean:
      return v.get<bool>() ? "True" : "False";
    case Json::value_t::number_integer:
      return std::to_string(v.get<int64_t>());
    case Json::value_t::number_unsigned:
      return std::to_string(v.get<uint64_t>());
    case Json::value_t::number_float:
      return float_repr(v.get<double>());
    case Json::value_t::string:
      return str_repr(v.get_ref<const std::string&>());
    case Json::value_t::array: {
      std::string out = "[";
      for (size_t i = 0; i < v.size(); ++i) out += (i ? ", " : "") + repr(v[i], depth + 1);
      return out + "]";
    }
    case Json::value_t::object: {
      std::string out = "{";
      bool first = true;
      for (const auto& [k, x] : v.items()) {
        out += (first ? "" : ", ") + str_repr(k) + ": " + repr(x, depth + 1);
        first = false;
      }
      return out + "}";
    }
    default:
      return "<binary>";
  }
}

std::string list_repr(const std::vector<std::string>& keys) {
  std::string out = "[";
  for (size_t i = 0; i < keys.size(); ++i) out += (i ? ", " : "") + str_repr(keys[i]);
  return out + "]";
}

// type(x).__name__ of the Python value json.loads gives.
const char* py_type_name(const Json& v) {
  switch (v.type()) {
    case Json::value_t::null:
      return "NoneType";
    case Json::value_t::boolean:
      return "bool";
    case Json::value_t::number_integer:
    case Json::value_t::number_unsigned:
      return "int";
    case Json::value_t::number_float:
      return "float";
    case Json::value_t::string:
      return "str";
    case Json::value_t::array:
      return "list";
    case Json::value_t::object:
      return "dict";
    default:
      return "bytes";
  }
}

// bool(x) in Python.
bool truthy(const Json* v) {
  if (v == nullptr) return false;
  switch (v->type()) {
    case Json::value_t::null:
      return false;
    case Json::value_t::boolean:
      return v->get<bool>();
    case Json::value_t::number_integer:
      return v->get<int64_t>() != 0;
    case Json::value_t::number_unsigned:
      return v->get<uint64_t>() != 0;
    case Json::value_t::number_float:
      return v->get<double>() != 0.0;
    case Json::value_t::string:  // (json::empty() is false for every string)
      return !v->get_ref<const std::string&>().empty();
    case Json::value_t::array:
    case Json::value_t::object:
      return !v->empty();
    default:
      return true;
  }
}

// ---- difflib.get_close_matches(word, names, n=1) --------------------------------------------

std::u32string code_points(const std::string& s) {
  // The strings come from nlohmann (valid UTF-8) or the caller; a stray byte counts as one.
  std::u32string out;
  for (size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    const int len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 1;
    if (len == 1 || i + len > s.size()) {
      out += static_cast<char32_t>(c);
      ++i;
      continue;
    }
    char32_t cp = c & (0x7f >> len);
    for (int k = 1; k < len; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3f);
    out += cp;
    i += len;
  }
  return out;
}

// Ratcliff/Obershelp similarity 2 M / (|a| + |b|), M the characters in the matching blocks
// found by recursively taking the longest common block (the earliest in a, then in b), as
// Python's difflib.SequenceMatcher(None, a, b).ratio(). difflib's "autojunk" rule only acts
// for |b| >= 200, and such a word is never within 0.6 of a type name (at most 8 characters).
double similarity(const std::u32string& a, const std::u32string& b) {
  const int na = static_cast<int>(a.size()), nb = static_cast<int>(b.size());
  auto longest = [&](int alo, int ahi, int blo, int bhi) {
    int besti = alo, bestj = blo, bestsize = 0;
    for (int i = alo; i < ahi; ++i) {
      for (int j = blo; j < bhi; ++j) {
        int k = 0;
        while (i + k < ahi && j + k < bhi && a[i + k] == b[j + k]) ++k;
        if (k > bestsize) {
          besti = i;
          bestj = j;
          bestsize = k;
        }
      }
    }
    return std::array<int, 3>{besti, bestj, bestsize};
  };
  int64_t matches = 0;
  std::vector<std::array<int, 4>> todo{{0, na, 0, nb}};
  while (!todo.empty()) {
    const auto [alo, ahi, blo, bhi] = todo.back();
    todo.pop_back();
    const auto [i, j, k] = longest(alo, ahi, blo, bhi);
    if (k == 0) continue;
    matches += k;
    if (alo < i && blo < j) todo.push_back({alo, i, blo, j});
    if (i + k < ahi && j + k < bhi) todo.push_back({i + k, ahi, j + k, bhi});
  }
  return na + nb ? 2.0 * static_cast<double>(matches) / (na + nb) : 1.0;
}

// The closest name with similarity >= 0.6 (ties: the larger name), or "" (hf.py's hint).
std::string close_match(const std::string& word, const std::vector<std::string>& names) {
  std::string lowered = word;  // str.lower(), ASCII letters only
  std::transform(lowered.begin(), lowered.end(), lowered.begin(),
                 [](unsigned char ch) { return static_cast<char>(std::tolower(ch)); });
  const std::u32string w = code_points(lowered);
  if (w.size() > 64) return "";  // 2 * 8 / (8 + 64) < 0.6: no name can match
  double best = -1.0;
  std::string out;
  for (const auto& name : names) {
    const double r = similarity(code_points(name), w);
    if (r >= 0.6 && (r > best || (r == best && name > out))) {
      best = r;
      out = name;
    }
  }
  return out;
}

// ---- the reader ----------------------------------------------------------------------------

// RoPE dict keys each type reads (besides rope_type/type, rope_theta, partial_rotary_factor):
// hf.py's ROPE_TYPE_KEYS.
const std::vector<std::string>& type_keys(RopeType t) {
  static const std::unordered_map<int, std::vector<std::string>> keys{
      {static_cast<int>(RopeType::Default), {}},
      {static_cast<int>(RopeType::Linear), {"factor"}},
      {static_cast<int>(RopeType::NTK), {"factor"}},
      {static_cast<int>(RopeType::Dynamic), {"factor"}},
      {static_cast<int>(RopeType::YaRN),
       {"factor", "original_max_position_embeddings", "attention_factor", "beta_fast",
        "beta_slow", "mscale", "mscale_all_dim", "truncate"}},
      {static_cast<int>(RopeType::Llama3),
       {"factor", "original_max_position_embeddings", "low_freq_factor", "high_freq_factor"}},
      {static_cast<int>(RopeType::LongRoPE),
       {"factor", "original_max_position_embeddings", "attention_factor", "short_factor",
        "long_factor"}},
      {static_cast<int>(RopeType::XPos), {"xpos_gamma", "xpos_scale_base"}},
  };
  return keys.at(static_cast<int>(t));
}

const std::set<std::string>& common_keys() {
  static const std::set<std::string> k{"rope_type", "type", "rope_theta", "partial_rotary_factor"};
  return k;
}

// Keys transformers knows that carry nothing for the frequencies (Qwen2-VL's mrope).
const std::set<std::string>& ignored_keys() {
  static const std::set<std::string> k{"mrope_section", "mrope_interleaved"};
  return k;
}

const std::set<std::string>& all_keys() {
  static const std::set<std::string> k = [] {
    std::set<std::string> out = common_keys();
    out.insert(ignored_keys().begin(), ignored_keys().end());
    for (const auto& name : rope_type_names()) {
      const auto& tk = type_keys(parse_rope_type(name));
      out.insert(tk.begin(), tk.end());
    }
    return out;
  }();
  return k;
}

class Reader {
 public:
  Reader(std::string fn, const Json& config) : fn_(std::move(fn)), config_(config) {}

  RopeScalingConfig read(const std::optional<std::string>& layer_type) {
    const Json params = rope_dict(layer_type);
    RopeScalingConfig c;
    c.type = rope_type(params);
    warn_about_keys(params, c.type);
    c.head_dim = head_dim();

    const Json* theta = param(params, "rope_theta");
    if (theta == nullptr) theta = get(config_, "rope_theta");
    if (theta == nullptr) theta = get(config_, "rotary_emb_base");
    c.rope_theta = theta ? number("rope_theta", *theta) : 10000.0;
    const Json* partial = param(params, "partial_rotary_factor");
    if (partial == nullptr) partial = get(config_, "partial_rotary_factor");
    if (partial == nullptr) partial = get(config_, "rotary_pct");
    c.partial_rotary_factor = partial ? number("partial_rotary_factor", *partial) : 1.0;
    c.max_position_embeddings = opt_length("max_position_embeddings", get(config_, "max_position_embeddings"));

    const auto& used = type_keys(c.type);
    auto field = [&](const char* key) -> const Json* {
      return std::find(used.begin(), used.end(), key) != used.end() ? param(params, key) : nullptr;
    };
    c.factor = opt_number("factor", field("factor"));
    c.attention_factor = opt_number("attention_factor", field("attention_factor"));
    c.beta_fast = opt_number("beta_fast", field("beta_fast"));
    c.beta_slow = opt_number("beta_slow", field("beta_slow"));
    c.mscale = opt_number("mscale", field("mscale"));
    c.mscale_all_dim = opt_number("mscale_all_dim", field("mscale_all_dim"));
    c.low_freq_factor = opt_number("low_freq_factor", field("low_freq_factor"));
    c.high_freq_factor = opt_number("high_freq_factor", field("high_freq_factor"));
    c.short_factor = numbers("short_factor", field("short_factor"));
    c.long_factor = numbers("long_factor", field("long_factor"));

    if (c.type == RopeType::YaRN || c.type == RopeType::Llama3 || c.type == RopeType::LongRoPE) {
      // Phi-3 keeps it at the top level (wins); else the dict's (a null there stays None),
      // else max_position_embeddings.
      const char* key = "original_max_position_embeddings";
      if (const Json* top = get(config_, key)) {
        c.original_max_position_embeddings = opt_length(key, top);
      } else if (params.contains(key)) {
        c.original_max_position_embeddings = opt_length(key, &params.at(key));
      } else {
        c.original_max_position_embeddings = c.max_position_embeddings;
      }
    }
    // transformers: `if rope_parameters.get("truncate", True)`, so a null is false.
    if (c.type == RopeType::YaRN && params.contains("truncate")) c.truncate = truthy(&params.at("truncate"));
    // read for every type, as hf.py does (they only matter for xpos)
    if (params.contains("xpos_gamma")) c.xpos_gamma = number("xpos_gamma", params.at("xpos_gamma"));
    if (params.contains("xpos_scale_base")) {
      c.xpos_scale_base = number("xpos_scale_base", params.at("xpos_scale_base"));
    }
    c.validate();
    return c;
  }

 private:
  // config[key] unless absent or null (hf.py's _get).
  static const Json* get(const Json& obj, const char* key) {
    const auto it = obj.find(key);
    return it == obj.end() || it->is_null() ? nullptr : &*it;
  }
  static const Json* param(const Json& params, const char* key) { return get(params, key); }

  Json rope_dict(const std::optional<std::string>& layer_type) const {
    // `config.rope_scaling or config.rope_parameters or {}`
    const Json* scaling = get(config_, "rope_scaling");
    const Json* params = truthy(scaling) ? scaling : get(config_, "rope_parameters");
    if (!truthy(params)) return Json::object();
    TORCH_CHECK_VALUE(params->is_object(), fn_,
                      ": 'rope_scaling'/'rope_parameters' must be a dict, but got ",
                      py_type_name(*params), ": ", repr(*params));
    bool nested = !params->contains("rope_type") && !params->contains("type");
    std::vector<std::string> names;
    for (const auto& [k, v] : params->items()) {
      nested = nested && (v.is_object() || v.is_null());
      names.push_back(k);
    }
    if (!nested) return *params;
    std::sort(names.begin(), names.end());
    TORCH_CHECK_VALUE(layer_type.has_value(), fn_,
                      ": the config has RoPE parameters per layer type ", list_repr(names),
                      "; pass layer_type= one of them");
    TORCH_CHECK_VALUE(params->contains(*layer_type), fn_, ": layer_type must be one of ",
                      list_repr(names), ", but got ", str_repr(*layer_type));
    const Json& entry = params->at(*layer_type);
    TORCH_CHECK_VALUE(!entry.is_null(), fn_, ": layer type ", str_repr(*layer_type),
                      " has no RoPE (its parameters are None)");
    return entry;
  }

  RopeType rope_type(const Json& params) const {
    const Json* name = param(params, "rope_type");
    if (!truthy(name)) name = param(params, "type");
    if (!truthy(name)) return RopeType::Default;
    TORCH_CHECK_VALUE(name->is_string(), fn_, ": rope_type must be a string, but got ", repr(*name));
    const std::string& s = name->get_ref<const std::string&>();
    const Json* model_type = get(config_, "model_type");
    // Phi3Config reads "yarn" as longrope; "su" is longrope's name in early Phi-3 configs.
    if (s == "su" || (s == "yarn" && model_type && *model_type == "phi3")) return RopeType::LongRoPE;
    if (s == "mrope") return RopeType::Default;  // Qwen2-VL: mrope_section only splits positions
    const auto names = rope_type_names();
    if (std::find(names.begin(), names.end(), s) == names.end()) {
      std::string expected;
      for (size_t i = 0; i < names.size(); ++i) expected += (i ? ", " : "") + str_repr(names[i]);
      const std::string close = close_match(s, names);
      TORCH_CHECK_VALUE(false, fn_, ": rope_type must be one of ", expected, ", but got ",
                        str_repr(s), close.empty() ? "" : " (did you mean " + str_repr(close) + "?)");
    }
    return parse_rope_type(s);
  }

  void warn_about_keys(const Json& params, RopeType t) const {
    const auto& used = type_keys(t);
    std::vector<std::string> unknown, unused;
    for (const auto& [k, v] : params.items()) {
      if (!all_keys().count(k)) {
        unknown.push_back(k);
      } else if (std::find(used.begin(), used.end(), k) == used.end() && !common_keys().count(k) &&
                 !ignored_keys().count(k)) {
        unused.push_back(k);
      }
    }
    std::sort(unknown.begin(), unknown.end());
    std::sort(unused.begin(), unused.end());
    const std::string name = str_repr(rope_type_name(t));
    if (!unknown.empty()) {
      TORCH_WARN(fn_, ": unrecognized keys for rope_type ", name, " ignored: ", list_repr(unknown));
    }
    if (!unused.empty()) {
      TORCH_WARN(fn_, ": keys not used by rope_type ", name, " ignored: ", list_repr(unused));
    }
  }

  int64_t head_dim() const {
    const Json* head = get(config_, "head_dim");
    if (truthy(head)) return integer("head_dim", *head, /*truncate=*/true);
    const Json* hidden = get(config_, "hidden_size");
    const Json* heads = get(config_, "num_attention_heads");
    if (!truthy(hidden) || !truthy(heads)) {
      TORCH_CHECK_VALUE(false, fn_,
                        ": the config needs head_dim or hidden_size and num_attention_heads, but "
                        "got head_dim=", head ? repr(*head) : "None", ", hidden_size=",
                        hidden ? repr(*hidden) : "None", ", num_attention_heads=",
                        heads ? repr(*heads) : "None");
    }
    if (hidden->is_number_integer() && heads->is_number_integer()) {
      const int64_t a = integer("hidden_size", *hidden, false);
      const int64_t b = integer("num_attention_heads", *heads, false);
      TORCH_CHECK_VALUE(!(a == std::numeric_limits<int64_t>::min() && b == -1), fn_,
                        ": 'hidden_size' // 'num_attention_heads' must be within int64, but got ",
                        a, " // ", b);
      int64_t q = a / b;
      if ((a % b != 0) && ((a < 0) != (b < 0))) --q;  // floor division, as Python's //
      return q;
    }
    // float // float: floor of the quotient, then int() as hf.py's RopeConfig(head_dim=...)
    return to_int64("head_dim", std::floor(number("hidden_size", *hidden) /
                                           number("num_attention_heads", *heads)));
  }

  // ---- typed reads: a JSON number (not a bool), an integer for lengths --------------------

  double number(const char* key, const Json& v) const {
    TORCH_CHECK_VALUE(v.is_number(), fn_, ": '", key, "' must be a number, but got ", repr(v));
    return v.get<double>();
  }

  std::optional<double> opt_number(const char* key, const Json* v) const {
    if (v == nullptr) return std::nullopt;
    return number(key, *v);
  }

  int64_t to_int64(const char* key, double x) const {
    // int(x) in Python: truncation; non-finite values and values beyond int64 are rejected.
    TORCH_CHECK_VALUE(std::isfinite(x) && std::fabs(x) < 9.2e18, fn_, ": '", key,
                      "' must be an integer within int64, but got ", float_repr(x));
    return static_cast<int64_t>(x);
  }

  int64_t integer(const char* key, const Json& v, bool truncate) const {
    if (v.is_number_unsigned()) {
      const auto u = v.get<uint64_t>();
      TORCH_CHECK_VALUE(u <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()), fn_,
                        ": '", key, "' must be an integer within int64, but got ", u);
      return static_cast<int64_t>(u);
    }
    if (v.is_number_integer()) return v.get<int64_t>();
    if (truncate && v.is_number_float()) return to_int64(key, v.get<double>());
    TORCH_CHECK_VALUE(false, fn_, ": '", key, "' must be an integer, but got ", repr(v));
    return 0;
  }

  std::optional<int64_t> opt_length(const char* key, const Json* v) const {
    if (v == nullptr || v->is_null()) return std::nullopt;
    return integer(key, *v, /*truncate=*/false);
  }

  std::vector<double> numbers(const char* key, const Json* v) const {
    if (v == nullptr) return {};
    TORCH_CHECK_VALUE(v->is_array(), fn_, ": '", key, "' must be a list of numbers, but got ",
                      repr(*v));
    std::vector<double> out;
    out.reserve(v->size());
    for (const auto& x : *v) {
      TORCH_CHECK_VALUE(x.is_number(), fn_, ": '", key, "' must be a list of numbers, but got ",
                        repr(x), " at index ", out.size());
      out.push_back(x.get<double>());
    }
    return out;
  }

  std::string fn_;
  const Json& config_;
};

// Deepest nesting of [ and { outside strings. nlohmann parses any depth without recursion,
// but copying, comparing and printing a tree recurse once per level: a config of a million
// nested arrays overflowed the stack in the copy of the RoPE dict (found by tests/fuzz). A
// config.json nests 3 or 4 levels.
constexpr int64_t kMaxDepth = 128;

int64_t nesting_depth(const std::string& text) {
  int64_t depth = 0, deepest = 0;
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\') {
        ++i;  // the escaped character
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      deepest = std::max(deepest, ++depth);
    } else if (c == ']' || c == '}') {
      --depth;  // unbalanced text is the parser's to report
    }
  }
  return deepest;
}

RopeScalingConfig from_text(const std::string& text, const std::optional<std::string>& layer_type,
                            const std::string& fn, const std::string& source) {
  Json config;
  try {
    config = Json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    // "[json.exception.parse_error.101] parse error at line 1, column 2: ...": drop the tag
    std::string what = e.what();
    if (!what.empty() && what[0] == '[') {
      const size_t end = what.find("] ");
      if (end != std::string::npos) what = what.substr(end + 2);
    }
    TORCH_CHECK_VALUE(false, fn, ": ", source, " is not valid JSON: ", what);
  }
  // After the parse (nlohmann's parser and destructor do not recurse, so invalid text still
  // reads "not valid JSON"), before the Reader copies the dict (its copy recurses per level).
  const int64_t depth = nesting_depth(text);
  TORCH_CHECK_VALUE(depth <= kMaxDepth, fn, ": ", source, " nests JSON arrays/objects ", depth,
                    " levels deep; at most ", kMaxDepth, " are read (a config.json nests 3 or 4)");
  if (!config.is_object()) {
    std::string r = repr(config);
    if (r.size() > 80) r = r.substr(0, 77) + "...";
    TORCH_CHECK_VALUE(false, fn, ": ", source, " must be a JSON object, but got ",
                      py_type_name(config), ": ", r);
  }
  return Reader(fn, config).read(layer_type);
}

}  // namespace

RopeScalingConfig rope_config_from_json(const std::string& config_json,
                                        const std::optional<std::string>& layer_type) {
  return from_text(config_json, layer_type, "posenc.rope_config_from_json", "the config");
}

RopeScalingConfig rope_config_from_file(const std::string& path,
                                        const std::optional<std::string>& layer_type) {
  const char* fn = "posenc.rope_config_from_file";
  std::error_code ec;
  TORCH_CHECK(!std::filesystem::is_directory(path, ec), fn, ": cannot read '", path,
              "': it is a directory");
  std::ifstream in(path, std::ios::binary);
  TORCH_CHECK(in.is_open(), fn, ": cannot open '", path, "': ", std::strerror(errno));
  std::ostringstream text;
  text << in.rdbuf();
  TORCH_CHECK(!in.bad(), fn, ": cannot read '", path, "'");
  return from_text(text.str(), layer_type, fn, c10::str("'", path, "'"));
}

}  // namespace posenc
