// Deterministic fuzz driver for the config.json reader (csrc/posenc/hf_config.h): no libFuzzer
// (g++ only), a seeded mutation engine over a corpus of real-shaped config.json files.
//
// Every input goes to every public reader entry point (rope_config_from_json with and without
// a layer_type, rope_config_from_file) and, where one succeeds, through what a user does next
// (validate, rotary_dim, compute_rope_parameters in float32 and float64, with and without
// seq_len). The only allowed outcomes are success or c10::Error (c10::ValueError included)
// whose message starts with "posenc." (the reader or the op, which name the field); warnings
// must start with "posenc." too. Anything else -- another exception type, an empty or foreign
// message, a sanitizer report, a signal, an input that runs past --time-limit-ms -- is a
// finding: the driver prints the input in hex, writes it to --finding-dir and exits 1.
//
//   fuzz_hf_config --corpus tests/fuzz/corpus [--iterations 100000] [--seed 1]
//                  [--time-limit-ms 10000] [--finding-dir .] [--verbose]
//   fuzz_hf_config [options] --replay FILE...   # run given inputs (e.g. a saved finding) once
// --time-limit-ms caps the CPU time one input may take (all its entry points together).
//
// Input i is generated from (seed, i) alone, so a finding is reproduced by --seed S
// --first I --iterations 1.
#include <c10/util/Exception.h>
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <pthread.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "posenc/hf_config.h"
#include "posenc/rope_scaling.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#define POSENC_FUZZ_ASAN 1
#endif
#include <csignal>

namespace {

using Json = nlohmann::ordered_json;

// ---- PRNG: splitmix64, one stream per (seed, iteration) -------------------------------------

struct Rng {
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed) {}
  uint64_t next() {
    uint64_t z = (s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  uint64_t below(uint64_t n) { return n ? next() % n : 0; }
  bool chance(int percent) { return static_cast<int>(below(100)) < percent; }
  template <typename T>
  const T& pick(const std::vector<T>& v) { return v[below(v.size())]; }
};

// ---- the state a finding report needs (read from the watchdog and the death callback) -------

std::string g_input;                      // the input being run
std::atomic<int64_t> g_index{-1};         // its iteration number
std::atomic<int64_t> g_started_ms{0};     // when it started (main thread CPU time), 0 when idle
clockid_t g_main_clock;                   // the main thread's CPU clock
uint64_t g_seed = 1;
std::string g_finding_dir = ".";
const char* g_stage = "idle";             // entry point being called

void write_all(int fd, const char* p, size_t n) {
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w <= 0) return;
    p += w;
    n -= static_cast<size_t>(w);
  }
}

// Async-signal-safe: only write(2), no allocation (the death callback and the watchdog may run
// while the heap is broken or the main thread holds a lock).
void report_finding(const char* kind) {
  static std::atomic<bool> once{false};
  if (once.exchange(true)) return;
  char head[512];
  const int n = std::snprintf(head, sizeof(head),
                              "\nposenc fuzz FINDING (%s) at iteration %lld (seed %llu, stage %s); "
                              "reproduce: --seed %llu --first %lld --iterations 1\n"
                              "input (%zu bytes, hex):\n",
                              kind, static_cast<long long>(g_index.load()),
                              static_cast<unsigned long long>(g_seed), g_stage,
                              static_cast<unsigned long long>(g_seed),
                              static_cast<long long>(g_index.load()), g_input.size());
  write_all(2, head, static_cast<size_t>(n));
  static const char* hexd = "0123456789abcdef";
  char line[130];
  for (size_t i = 0; i < g_input.size(); i += 64) {
    size_t k = 0;
    for (size_t j = i; j < g_input.size() && j < i + 64; ++j) {
      const auto c = static_cast<unsigned char>(g_input[j]);
      line[k++] = hexd[c >> 4];
      line[k++] = hexd[c & 15];
    }
    line[k++] = '\n';
    write_all(2, line, k);
  }
  // also as a file, for --replay and a regression test
  char path[4096];
  std::snprintf(path, sizeof(path), "%s/fuzz_hf_config_finding_seed%llu_iter%lld.json",
                g_finding_dir.c_str(), static_cast<unsigned long long>(g_seed),
                static_cast<long long>(g_index.load()));
  FILE* f = std::fopen(path, "wb");
  if (f) {
    std::fwrite(g_input.data(), 1, g_input.size(), f);
    std::fclose(f);
    char msg[4200];
    const int m = std::snprintf(msg, sizeof(msg), "saved to %s\n", path);
    write_all(2, msg, static_cast<size_t>(m));
  }
}

[[noreturn]] void finding(const std::string& kind, const std::string& detail) {
  std::cerr << "\nposenc fuzz: " << kind << ": " << detail.substr(0, 4000) << "\n";
  report_finding(kind.c_str());
  std::_Exit(1);
}

// CPU time of the main thread, in ms (+1, so that 0 means idle): the per-input cap counts the
// work the input causes, not the time other processes take on a shared machine.
int64_t now_ms() {
  timespec ts{};
  clock_gettime(g_main_clock, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000 + 1;
}

void on_signal(int sig) {
  report_finding(sig == SIGSEGV ? "SIGSEGV" : sig == SIGABRT ? "SIGABRT" : sig == SIGFPE ? "SIGFPE" : "signal");
  std::_Exit(1);
}

void on_sanitizer_death() { report_finding("sanitizer report (see above)"); }

// ---- warnings: must name posenc ---------------------------------------------------------------

class CheckingWarnings : public c10::WarningHandler {
 public:
  void process(const c10::Warning& w) override {
    ++count;
    const std::string& m = w.msg();
    if (m.rfind("posenc.", 0) != 0) finding("warning not naming posenc", m);
  }
  int64_t count = 0;
};

// ---- the mutation engine -------------------------------------------------------------------

// Keys the reader reads (top level and inside the RoPE dict): mutations favour them.
const std::vector<std::string> kKeys = {
    "rope_scaling", "rope_parameters", "rope_type", "type", "rope_theta", "rotary_emb_base",
    "partial_rotary_factor", "rotary_pct", "head_dim", "hidden_size", "num_attention_heads",
    "max_position_embeddings", "original_max_position_embeddings", "model_type", "factor",
    "attention_factor", "beta_fast", "beta_slow", "mscale", "mscale_all_dim", "truncate",
    "low_freq_factor", "high_freq_factor", "short_factor", "long_factor", "xpos_gamma",
    "xpos_scale_base", "mrope_section", "mrope_interleaved", "full_attention",
    "sliding_attention", "unknown_key", ""};

const std::vector<std::string> kStrings = {
    "default", "linear", "ntk", "dynamic", "yarn", "llama3", "longrope", "xpos", "su", "mrope",
    "Yarn", "LLAMA3", "llama_3", "long_rope", "proportional", "phi3", "llama", "", " ", "2.0",
    "4096", "nan", "inf", "-1", "true", "null", "\xc3\xa9t\xc3\xa9", "\xe2\x80\xae", "a\nb",
    "'\"\\", std::string(300, 'y'), std::string(1, '\0'), "\x7f", "\xc2\x85"};

// Numbers as JSON text, including those nlohmann rejects (NaN, Infinity) or overflows (1e309).
const std::vector<std::string> kNumberTexts = {
    "0", "-0", "-0.0", "0.0", "1", "-1", "2", "0.5", "1e-300", "5e-324", "4.9e-324", "1e-400",
    "1e308", "1.7976931348623157e308", "1e309", "-1e309", "1e999999", "NaN", "nan", "Infinity",
    "-Infinity", "inf", "9223372036854775807", "9223372036854775808", "-9223372036854775808",
    "-9223372036854775809", "18446744073709551615", "18446744073709551616",
    "99999999999999999999999999999999", "4611686018427387904", "9007199254740993", "4096",
    "131072", "1e19", "-1e19", "9.3e18", "9.2e18", "1E+2", "1.", ".5", "01", "+1", "0x10", "1e",
    "2147483648", "-2147483649", "1.0000000000000002", "0.9999999999999999", "65536", "64", "3",
    "1048576", "1073741824"};

// Raw text fragments: invalid UTF-8, escapes, garbage.
const std::vector<std::string> kRawTexts = {
    "\"\xff\"", "\"\xc3\"", "\"\xc0\xaf\"", "\"\xed\xa0\x80\"", "\"\xf4\x90\x80\x80\"",
    "\"\xfe\xff\"", "\"\\ud800\"", "\"\\udc00\\ud800\"", "\"\\u0000\"", "\"a\\u0000b\"",
    "\"\t\"", "\"\\x41\"", "\"\\q\"", "\"unterminated", "[", "{", "]", "}", ",", ":", "[,]",
    "{,}", "{\"a\"}", "[1,]", "{\"a\":1,}", "tru", "nul", "True", "None", "undefined", "'x'",
    "/* c */ 1", "// c\n1", "\"\xef\xbb\xbf\"", "\xef\xbb\xbf"};

// Replaced in the dumped text by a raw fragment: a string value "\u0001R<n>\u0001" (dumped as
// "\"\\u0001R<n>\\u0001\"").
std::string placeholder(size_t n) { return std::string("\x01R") + std::to_string(n) + "\x01"; }

struct Mutator {
  Rng& rng;
  std::vector<std::string> raws;  // fragments to splice in, by placeholder number

  Json raw(std::string text) {
    raws.push_back(std::move(text));
    return Json(placeholder(raws.size() - 1));
  }

  std::string number_text() { return rng.pick(kNumberTexts); }

  std::string deep_text() {
    static const std::vector<size_t> depths = {10, 33, 100, 127, 128, 129, 1000, 5000};
    // a million levels and more (MBs of text) in 2% of the deep cases
    const size_t d = rng.chance(2) ? (rng.chance(50) ? 1000000 : 3000000) : depths[rng.below(depths.size())];
    const int kind = static_cast<int>(rng.below(3));
    std::string open, close;
    if (kind == 0) {
      open = "[";
      close = "]";
    } else if (kind == 1) {
      open = "{\"rope_type\":";
      close = "}";
    } else {
      open = "{\"a\":";
      close = "}";
    }
    std::string out;
    out.reserve(d * (open.size() + close.size()) + 8);
    for (size_t i = 0; i < d; ++i) out += open;
    out += rng.chance(50) ? "1" : "{}";
    if (!rng.chance(10)) {  // sometimes unbalanced
      for (size_t i = 0; i < d; ++i) out += close;
    }
    return out;
  }

  Json long_array() {
    static const std::vector<size_t> lengths = {0, 1, 2, 47, 48, 49, 64, 128, 1000};
    // 10^5 and 10^6 elements (up to 9 MB of text) in 2% of the long arrays
    const size_t n = rng.chance(2) ? (rng.chance(50) ? 100000 : 1000000) : lengths[rng.below(lengths.size())];
    Json a = Json::array();
    const int kind = static_cast<int>(rng.below(4));
    for (size_t i = 0; i < n; ++i) {
      if (kind == 0) {
        a.push_back(1.0 + 0.01 * static_cast<double>(i));
      } else if (kind == 1) {
        a.push_back(static_cast<int64_t>(i));
      } else if (kind == 2) {
        a.push_back(i + 1 == n ? Json("x") : Json(1.5));
      } else {
        a.push_back(i % 7 == 3 ? Json(-1.0) : Json(2.0));
      }
    }
    return a;
  }

  Json random_value(int depth = 0) {
    switch (rng.below(depth > 2 ? 8 : 11)) {
      case 0:
        return nullptr;
      case 1:
        return rng.chance(50);
      case 2:
        return static_cast<int64_t>(rng.next()) >> rng.below(64);
      case 3: {
        static const std::vector<double> doubles = {
            0.0, -0.0, 1.0, -1.0, 0.5, 2.0, 1e-300, 5e-324, 1e308, 1.7976931348623157e308,
            4096.0, 8.0, 32.0, 0.1, 1e-5, 1e19, -1e19, 9.223372036854775807e18, 3.0};
        return rng.pick(doubles);
      }
      case 4:
        return rng.pick(kStrings);
      case 5:
        return raw(number_text());
      case 6:
        return raw(rng.pick(kRawTexts));
      case 7:
        return static_cast<uint64_t>(rng.next());
      case 8: {
        Json a = Json::array();
        const auto n = rng.below(4);
        for (uint64_t i = 0; i < n; ++i) a.push_back(random_value(depth + 1));
        return a;
      }
      case 9: {
        Json o = Json::object();
        const auto n = rng.below(4);
        for (uint64_t i = 0; i < n; ++i) o[rng.pick(kKeys)] = random_value(depth + 1);
        return o;
      }
      default:
        return long_array();
    }
  }

  // Same value, other JSON type (number <-> string <-> array <-> object <-> null <-> bool).
  Json type_swap(const Json& v) {
    switch (rng.below(7)) {
      case 0:
        return nullptr;
      case 1:
        return v.is_boolean() ? Json(!v.get<bool>()) : Json(rng.chance(50));
      case 2:
        return v.is_string() ? v : Json(v.dump());  // 4096 -> "4096"
      case 3:
        return Json::array({v});
      case 4: {
        Json o = Json::object();
        o["value"] = v;
        return o;
      }
      case 5:
        if (v.is_string()) {
          const auto& s = v.get_ref<const std::string&>();
          // "4096" -> 4096 when it parses, else a number
          Json parsed = Json::parse(s, nullptr, false);
          if (!parsed.is_discarded() && parsed.is_number()) return parsed;
        }
        return v.is_number() ? Json(v.get<double>() * -1.0) : Json(static_cast<int64_t>(rng.below(5)));
      default:
        return raw(number_text());
    }
  }

  // Every node of the tree as (parent, key or index), chosen uniformly, with the RoPE dict's
  // children chosen more often.
  struct Slot {
    Json* parent;
    std::string key;  // for objects
    size_t index;     // for arrays
  };
  void collect(Json& node, std::vector<Slot>& out, int depth) {
    if (depth > 8) return;
    if (node.is_object()) {
      for (auto& [k, v] : node.items()) {
        out.push_back({&node, k, 0});
        collect(v, out, depth + 1);
      }
    } else if (node.is_array()) {
      const size_t n = std::min<size_t>(node.size(), 64);
      for (size_t i = 0; i < n; ++i) {
        out.push_back({&node, "", i});
        collect(node[i], out, depth + 1);
      }
    }
  }
  static Json& at(const Slot& s) {
    return s.parent->is_object() ? (*s.parent)[s.key] : (*s.parent)[s.index];
  }

  // An object keeps duplicate keys when its ordered_map (a vector of pairs) is appended to.
  static void add_duplicate(Json& obj, const std::string& key, Json value) {
    auto& map = obj.get_ref<Json::object_t&>();
    using Base = std::vector<std::pair<const std::string, Json>>;
    static_cast<Base&>(map).emplace_back(key, std::move(value));
  }

  Json* rope_dict(Json& root) {
    for (const char* k : {"rope_scaling", "rope_parameters"}) {
      if (root.is_object() && root.contains(k) && root[k].is_object()) return &root[k];
    }
    return nullptr;
  }

  void mutate_tree(Json& root) {
    if (!root.is_object()) return;
    std::vector<Slot> slots;
    collect(root, slots, 0);
    Json* rd = rope_dict(root);
    auto pick_slot = [&]() -> std::optional<Slot> {
      if (rd && !rd->empty() && rng.chance(40)) {
        std::vector<Slot> inner;
        for (auto& [k, v] : rd->items()) inner.push_back({rd, k, 0});
        return inner[rng.below(inner.size())];
      }
      if (slots.empty()) return std::nullopt;
      return slots[rng.below(slots.size())];
    };
    auto pick_object = [&]() -> Json* {
      if (rd && rng.chance(50)) return rd;
      if (rng.chance(50)) return &root;
      std::vector<Json*> objs;
      for (auto& s : slots) {
        Json& v = at(s);
        if (v.is_object()) objs.push_back(&v);
      }
      return objs.empty() ? &root : objs[rng.below(objs.size())];
    };

    switch (rng.below(12)) {
      case 0: {  // type swap
        if (auto s = pick_slot()) at(*s) = type_swap(at(*s));
        break;
      }
      case 1: {  // interesting number
        if (auto s = pick_slot()) at(*s) = raw(number_text());
        break;
      }
      case 2: {  // delete a key
        if (auto s = pick_slot(); s && s->parent->is_object()) s->parent->erase(s->key);
        break;
      }
      case 3: {  // add or overwrite a reader key with a random value
        (*pick_object())[rng.pick(kKeys)] = random_value();
        break;
      }
      case 4: {  // duplicate key with another value
        Json* o = pick_object();
        std::string key = rng.pick(kKeys);
        if (!o->empty() && rng.chance(60)) {
          auto it = o->begin();
          std::advance(it, static_cast<long>(rng.below(o->size())));
          key = it.key();
        }
        add_duplicate(*o, key, random_value());
        break;
      }
      case 5: {  // deep nesting
        if (auto s = pick_slot()) {
          at(*s) = raw(deep_text());
        } else {
          root[rng.pick(kKeys)] = raw(deep_text());
        }
        break;
      }
      case 6: {  // long array, where arrays are read
        Json* o = rd ? rd : &root;
        (*o)[rng.chance(70) ? (rng.chance(50) ? "short_factor" : "long_factor") : rng.pick(kKeys)] =
            long_array();
        break;
      }
      case 7: {  // random value anywhere
        if (auto s = pick_slot()) at(*s) = random_value();
        break;
      }
      case 8: {  // rope type names
        Json* o = rd ? rd : &root["rope_scaling"];
        if (!o->is_object()) *o = Json::object();
        (*o)[rng.chance(70) ? "rope_type" : "type"] = rng.chance(80) ? Json(rng.pick(kStrings)) : random_value();
        break;
      }
      case 9: {  // move the RoPE dict around: other style, per layer type, both
        if (rd) {
          Json copy = *rd;
          const int how = static_cast<int>(rng.below(4));
          if (how == 0) {
            root["rope_parameters"] = copy;
            root.erase("rope_scaling");
          } else if (how == 1) {
            Json nested = Json::object();
            nested["full_attention"] = copy;
            nested["sliding_attention"] = rng.chance(30) ? Json(nullptr) : copy;
            root["rope_parameters"] = nested;
            root.erase("rope_scaling");
          } else if (how == 2) {
            root["rope_scaling"] = copy;
            root["rope_parameters"] = random_value();
          } else {
            *rd = Json::array({copy});
          }
        }
        break;
      }
      case 10: {  // strings with invalid UTF-8 as keys or values
        Json* o = pick_object();
        if (rng.chance(50)) {
          (*o)[std::string("k\xff") + rng.pick(kKeys)] = 1;  // raw byte key (dumped with ignore)
        }
        (*o)[rng.pick(kKeys)] = raw(rng.pick(kRawTexts));
        break;
      }
      default: {  // replace the root with another type
        if (rng.chance(20)) root = random_value();
        break;
      }
    }
  }

  std::string dump(const Json& root) {
    std::string text;
    try {
      // invalid UTF-8 placed in keys by case 10 is dropped here; kRawTexts splices it back
      text = root.dump(rng.chance(50) ? 2 : -1, ' ', false, Json::error_handler_t::ignore);
    } catch (const Json::exception&) {
      text = "{}";
    }
    // splice the raw fragments in
    for (size_t n = 0; n < raws.size(); ++n) {
      const std::string ph = "\"\\u0001R" + std::to_string(n) + "\\u0001\"";
      const size_t pos = text.find(ph);
      if (pos != std::string::npos) text.replace(pos, ph.size(), raws[n]);
    }
    return text;
  }

  void mutate_bytes(std::string& text) {
    if (text.empty()) return;
    switch (rng.below(7)) {
      case 0:  // truncation
        text.resize(rng.below(text.size() + 1));
        break;
      case 1:  // bit flips
        for (uint64_t k = 0, n = 1 + rng.below(4); k < n; ++k) {
          text[rng.below(text.size())] ^= static_cast<char>(1u << rng.below(8));
        }
        break;
      case 2:  // random bytes
        for (uint64_t k = 0, n = 1 + rng.below(4); k < n; ++k) {
          text[rng.below(text.size())] = static_cast<char>(rng.below(256));
        }
        break;
      case 3: {  // delete a span
        const size_t a = rng.below(text.size());
        text.erase(a, rng.below(std::min<size_t>(64, text.size() - a) + 1));
        break;
      }
      case 4: {  // duplicate a span
        const size_t a = rng.below(text.size());
        const size_t n = rng.below(std::min<size_t>(128, text.size() - a) + 1);
        text.insert(a, text.substr(a, n));
        break;
      }
      case 5:  // insert a raw fragment or number
        text.insert(rng.below(text.size() + 1), rng.chance(50) ? rng.pick(kRawTexts) : number_text());
        break;
      default: {  // replace a number token with an interesting one
        std::vector<size_t> starts;
        for (size_t i = 1; i < text.size(); ++i) {
          if ((std::isdigit(static_cast<unsigned char>(text[i])) || text[i] == '-') &&
              (text[i - 1] == ' ' || text[i - 1] == ':' || text[i - 1] == '[' || text[i - 1] == ',')) {
            starts.push_back(i);
          }
        }
        if (starts.empty()) break;
        const size_t a = starts[rng.below(starts.size())];
        size_t b = a;
        while (b < text.size() && std::strchr("0123456789+-.eE", text[b])) ++b;
        text.replace(a, b - a, number_text());
        break;
      }
    }
  }
};

struct Seed {
  std::string name;
  std::string text;
  Json json;  // parsed seed (ordered: as the file)
};

std::string generate(const std::vector<Seed>& seeds, uint64_t seed, int64_t i) {
  Rng rng(seed * 0x100000001b3ULL + static_cast<uint64_t>(i) * 0x9e3779b97f4a7c15ULL + 1);
  rng.next();
  const uint64_t mode = rng.below(100);
  if (mode < 1) {  // tiny and empty inputs
    static const std::vector<std::string> tiny = {"", " ", "\n", "{", "}", "{}", "[]", "null",
                                                  "0", "\"x\"", "\xef\xbb\xbf{}", "{\"\":0}",
                                                  std::string(1, '\0'), "{}{}", "{} x"};
    return rng.pick(tiny);
  }
  const Seed& s = seeds[rng.below(seeds.size())];
  if (mode < 3) return s.text;  // the seeds themselves, unchanged
  Mutator m{rng, {}};
  std::string text;
  if (mode < 85) {
    Json root = s.json;
    for (uint64_t k = 0, n = 1 + rng.below(4); k < n; ++k) m.mutate_tree(root);
    text = m.dump(root);
    if (rng.chance(15)) m.mutate_bytes(text);
  } else {
    text = s.text;
    for (uint64_t k = 0, n = 1 + rng.below(3); k < n; ++k) m.mutate_bytes(text);
  }
  return text;
}

// ---- running one input through every entry point -------------------------------------------

struct Stats {
  int64_t inputs = 0, calls = 0, ok = 0, value_errors = 0, errors = 0, computes = 0;
};

std::string g_tmp_path;

void check_error_message(const c10::Error& e) {
  const std::string msg = e.what_without_backtrace();
  if (msg.empty()) finding("c10::Error with an empty message", "");
  if (msg.rfind("posenc.", 0) != 0) finding("c10::Error not naming posenc", msg);
}

// Runs f; success and posenc c10::Errors are fine, anything else is a finding.
template <typename F>
bool expect_clean(const char* stage, Stats& st, F&& f) {
  g_stage = stage;
  ++st.calls;
  try {
    f();
    return true;
  } catch (const c10::ValueError& e) {
    ++st.value_errors;
    check_error_message(e);
  } catch (const c10::Error& e) {
    ++st.errors;
    check_error_message(e);
  } catch (const std::exception& e) {
    finding(std::string("non-posenc exception from ") + stage, std::string(typeid(e).name()) + ": " + e.what());
  } catch (...) {
    finding(std::string("unknown exception from ") + stage, "");
  }
  return false;
}

void use_result(const posenc::RopeScalingConfig& c, Stats& st) {
  expect_clean("validate", st, [&] { c.validate(); });
  const int64_t d = c.rotary_dim();
  if (d < 2 || c.num_frequencies() != (d + 1) / 2) {
    finding("validated config with a bad rotary dimension", std::to_string(d));
  }
  // no seq_len (short factors, default length) and one past the length (long factors, the
  // dynamic rescale), in reference and exact precision
  const int64_t len = c.max_position_embeddings.value_or(4096);
  const int64_t past = len < std::numeric_limits<int64_t>::max() ? len + 1 : len;
  for (const auto& run : {std::pair{std::optional<int64_t>(), at::kFloat},
                          std::pair{std::optional<int64_t>(past), at::kDouble}}) {
    {
      const auto seq = run.first;
      const auto dt = run.second;
      ++st.computes;
      expect_clean("compute_rope_parameters", st, [&] {
        const auto p = posenc::compute_rope_parameters(c, seq, at::kCPU, dt);
        if (p.inv_freq.numel() != c.num_frequencies()) {
          finding("compute_rope_parameters: wrong inv_freq length", std::to_string(p.inv_freq.numel()));
        }
        if (!std::isfinite(p.attention_factor) || p.attention_factor <= 0) {
          finding("compute_rope_parameters: attention factor not finite and > 0",
                  std::to_string(p.attention_factor));
        }
      });
    }
  }
}

void run_one(const std::string& text, Stats& st) {
  ++st.inputs;
  g_input = text;
  g_started_ms.store(now_ms());
  const std::vector<std::optional<std::string>> layer_types = {std::nullopt, "full_attention",
                                                               "sliding_attention"};
  for (const auto& lt : layer_types) {
    posenc::RopeScalingConfig c;
    if (expect_clean("rope_config_from_json", st, [&] { c = posenc::rope_config_from_json(text, lt); })) {
      ++st.ok;
      if (!lt) use_result(c, st);
    }
  }
  {
    std::ofstream out(g_tmp_path, std::ios::binary | std::ios::trunc);
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
  }
  posenc::RopeScalingConfig from_file;
  expect_clean("rope_config_from_file", st, [&] { from_file = posenc::rope_config_from_file(g_tmp_path); });
  g_stage = "idle";
  g_started_ms.store(0);
}

std::vector<Seed> load_corpus(const std::string& dir) {
  std::vector<Seed> seeds;
  std::vector<std::filesystem::path> files;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    if (e.is_regular_file() && e.path().extension() == ".json") files.push_back(e.path());
  }
  std::sort(files.begin(), files.end());  // deterministic order
  for (const auto& p : files) {
    std::ifstream in(p, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    Seed s{p.filename().string(), ss.str(), {}};
    s.json = Json::parse(s.text);  // the corpus itself must be valid JSON
    seeds.push_back(std::move(s));
  }
  return seeds;
}

void usage() {
  std::cerr << "usage: fuzz_hf_config --corpus DIR [--iterations N] [--seed S] [--first I]\n"
               "                      [--time-limit-ms MS] [--finding-dir DIR] [--verbose]\n"
               "       fuzz_hf_config --replay FILE...\n";
}

}  // namespace

int main(int argc, char** argv) {
  std::string corpus;
  int64_t iterations = 100000, first = 0, time_limit_ms = 10000;
  bool verbose = false;
  std::vector<std::string> replay;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) {
        usage();
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--corpus") {
      corpus = value();
    } else if (a == "--iterations") {
      iterations = std::stoll(value());
    } else if (a == "--seed") {
      g_seed = std::stoull(value());
    } else if (a == "--first") {
      first = std::stoll(value());
    } else if (a == "--time-limit-ms") {
      time_limit_ms = std::stoll(value());
    } else if (a == "--finding-dir") {
      g_finding_dir = value();
    } else if (a == "--verbose") {
      verbose = true;
    } else if (a == "--replay") {
      while (i + 1 < argc) replay.push_back(argv[++i]);
    } else {
      usage();
      return 2;
    }
  }
  if (corpus.empty() && replay.empty()) {
    usage();
    return 2;
  }

#ifdef POSENC_FUZZ_ASAN
  // ASan handles the signals itself and calls this before it exits
  __sanitizer_set_death_callback(on_sanitizer_death);
  (void)on_signal;
#else
  (void)on_sanitizer_death;
  for (int sig : {SIGSEGV, SIGABRT, SIGFPE, SIGBUS, SIGILL}) std::signal(sig, on_signal);
#endif
  // One thread: the reader is single-threaded, and ATen's pool only adds noise under ASan.
  at::set_num_threads(1);
  CheckingWarnings warnings;
  c10::WarningUtils::WarningHandlerGuard guard(&warnings);

  char tmpl[] = "/tmp/posenc_fuzz_XXXXXX";
  const int fd = mkstemp(tmpl);
  if (fd < 0) {
    std::perror("mkstemp");
    return 2;
  }
  ::close(fd);
  g_tmp_path = tmpl;

  // The per-input time cap (CPU time of this thread): a watchdog thread, since a hang may be
  // anywhere.
  pthread_getcpuclockid(pthread_self(), &g_main_clock);
  std::thread([time_limit_ms] {
    for (;;) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      const int64_t t0 = g_started_ms.load();
      if (t0 != 0 && now_ms() - t0 > time_limit_ms) {
        report_finding("timeout: an input ran past --time-limit-ms");
        std::_Exit(1);
      }
    }
  }).detach();

  Stats st;
  const auto t0 = std::chrono::steady_clock::now();
  // fixed cases first: a missing file, a directory
  expect_clean("rope_config_from_file", st, [] { posenc::rope_config_from_file("/nonexistent/config.json"); });
  expect_clean("rope_config_from_file", st, [] { posenc::rope_config_from_file("/tmp"); });

  if (!replay.empty()) {
    for (const auto& path : replay) {
      std::ifstream in(path, std::ios::binary);
      std::stringstream ss;
      ss << in.rdbuf();
      g_index.store(-1);
      run_one(ss.str(), st);
    }
  } else {
    const std::vector<Seed> seeds = load_corpus(corpus);
    if (seeds.empty()) {
      std::cerr << "fuzz_hf_config: no *.json files in " << corpus << "\n";
      return 2;
    }
    for (int64_t i = first; i < first + iterations; ++i) {
      g_index.store(i);
      const std::string text = generate(seeds, g_seed, i);
      run_one(text, st);
      if (verbose && (i - first + 1) % 10000 == 0) {
        const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        std::cerr << "fuzz_hf_config: " << (i - first + 1) << " inputs, " << s << " s\n";
      }
    }
  }
  std::remove(g_tmp_path.c_str());
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::cout << "fuzz_hf_config: " << st.inputs << " inputs (seed " << g_seed << "), " << st.calls
            << " calls in " << secs << " s: " << st.ok << " configs read, " << st.value_errors
            << " c10::ValueError, " << st.errors << " c10::Error, " << st.computes
            << " compute_rope_parameters, " << warnings.count << " warnings; no finding\n";
  return 0;
}
