// pybind11 binding of the C++ config.json reader: posenc._C.rope_config_from_json /
// rope_config_from_file return the RopeScalingConfig as a dict of posenc.rope_config.RopeConfig's
// fields (posenc.hf.rope_config_from_json wraps it). C++ warnings become UserWarnings and
// c10::ValueError a ValueError (HANDLE_TH_ERRORS).
#include <torch/csrc/Exceptions.h>
#include <torch/extension.h>

#include <exception>
#include <optional>
#include <string>
#include <vector>

#include "posenc/hf_config.h"

namespace py = pybind11;

namespace posenc {
namespace python {
namespace {

py::object opt(const std::optional<double>& v) { return v ? py::cast(*v) : py::none(); }
py::object opt(const std::optional<int64_t>& v) { return v ? py::cast(*v) : py::none(); }
// RopeScalingConfig has no "absent" list: an empty one is None, as RopeConfig's default.
py::object opt(const std::vector<double>& v) { return v.empty() ? py::none() : py::cast(v); }

py::dict to_dict(const RopeScalingConfig& c) {
  py::dict d;
  d["head_dim"] = c.head_dim;
  d["rope_type"] = rope_type_name(c.type);
  d["rope_theta"] = c.rope_theta;
  d["partial_rotary_factor"] = c.partial_rotary_factor;
  d["factor"] = opt(c.factor);
  d["max_position_embeddings"] = opt(c.max_position_embeddings);
  d["original_max_position_embeddings"] = opt(c.original_max_position_embeddings);
  d["attention_factor"] = opt(c.attention_factor);
  d["beta_fast"] = opt(c.beta_fast);
  d["beta_slow"] = opt(c.beta_slow);
  d["mscale"] = opt(c.mscale);
  d["mscale_all_dim"] = opt(c.mscale_all_dim);
  d["truncate"] = c.truncate;
  d["low_freq_factor"] = opt(c.low_freq_factor);
  d["high_freq_factor"] = opt(c.high_freq_factor);
  d["short_factor"] = opt(c.short_factor);
  d["long_factor"] = opt(c.long_factor);
  d["xpos_gamma"] = c.xpos_gamma;
  d["xpos_scale_base"] = c.xpos_scale_base;
  return d;
}

// Runs the reader, then re-emits its TORCH_WARNs as plain UserWarnings (torch's own handler
// appends "(Triggered internally at <file>:<line>.)", which the Python reader's warnings do not
// have), before any error it raised, in the order the Python reader emits them.
class CollectWarnings : public c10::WarningHandler {
 public:
  void process(const c10::Warning& w) override { messages.push_back(w.msg()); }
  std::vector<std::string> messages;
};

template <typename Read>
py::dict read_with_warnings(const Read& read) {
  CollectWarnings handler;
  std::optional<RopeScalingConfig> config;
  std::exception_ptr error;
  {
    c10::WarningUtils::WarningHandlerGuard guard(&handler);
    try {
      config = read();
    } catch (...) {
      error = std::current_exception();
    }
  }
  for (const auto& msg : handler.messages) {
    if (PyErr_WarnEx(PyExc_UserWarning, msg.c_str(), 1) < 0) throw py::error_already_set();
  }
  HANDLE_TH_ERRORS
  if (error) std::rethrow_exception(error);
  return to_dict(*config);
  END_HANDLE_TH_ERRORS_PYBIND
}

}  // namespace

void init_hf_config(py::module& m) {
  m.def(
      "rope_config_from_json",
      [](const std::string& text, std::optional<std::string> layer_type) {
        return read_with_warnings([&] { return rope_config_from_json(text, layer_type); });
      },
      py::arg("config_json"), py::arg("layer_type") = py::none(),
      "posenc::rope_config_from_json: the RoPE fields of a transformers config.json text, as a "
      "dict of posenc.rope_config.RopeConfig's fields");
  m.def(
      "rope_config_from_file",
      [](const std::string& path, std::optional<std::string> layer_type) {
        return read_with_warnings([&] { return rope_config_from_file(path, layer_type); });
      },
      py::arg("path"), py::arg("layer_type") = py::none(),
      "posenc::rope_config_from_file: rope_config_from_json on a config.json file");
}

}  // namespace python
}  // namespace posenc
