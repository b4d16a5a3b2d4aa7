// pybind11 bindings of posenc::nn: posenc._C.<Name> (a torch.nn.Module wrapper made by
// torch::python::bind_module) with the same keyword arguments and defaults as posenc.nn.<Name>.
#include <torch/extension.h>
#include <torch/python.h>

#include <sstream>

#include "posenc/nn.h"
#include "posenc/nn/dynamic_position_bias.h"
#include "posenc/nn/fire.h"

namespace py = pybind11;

namespace posenc {
namespace python {
namespace {

// bind_module's __repr__ prints only the type name; show the options as pretty_print does.
template <typename Impl, typename Class>
Class& with_repr(Class& cls) {
  auto repr = [](Impl& self) {
    std::ostringstream os;
    self.pretty_print(os);
    return os.str();
  };
  cls.attr("__repr__") = py::cpp_function(repr, py::name("__repr__"), py::is_method(cls));
  cls.attr("__str__") = py::cpp_function(repr, py::name("__str__"), py::is_method(cls));
  return cls;
}

// Binds forward under both names with the given argument spec (the wrapper's __call__ goes
// through torch.nn.Module.__call__ to forward, the raw class is callable directly).
template <typename Class, typename Fn, typename... Args>
void bind_forward(Class& cls, Fn fn, const Args&... args) {
  cls.def("forward", fn, args...);
  cls.def("__call__", fn, args...);
}

// The Python posenc.rope_config.RopeConfig (or None) as a C++ RopeScalingConfig, field by
// field (the names are the same). Anything else is a TypeError naming the option.
std::optional<RopeScalingConfig> rope_config_from_py(const py::object& obj) {
  if (obj.is_none()) return std::nullopt;
  py::object rc = py::module_::import("posenc.rope_config").attr("RopeConfig");
  if (!py::isinstance(obj, rc)) {
    throw py::type_error(c10::str(
        "posenc.RotaryEmbedding: option 'scaling' must be a posenc.rope_config.RopeConfig or "
        "None (use posenc.cpp.RotaryEmbedding.from_config for a transformers config), but got ",
        py::str(py::type::of(obj)).cast<std::string>()));
  }
  auto opt_double = [&](const char* name) -> std::optional<double> {
    py::object v = obj.attr(name);
    return v.is_none() ? std::nullopt : std::optional<double>(v.cast<double>());
  };
  auto opt_int = [&](const char* name) -> std::optional<int64_t> {
    py::object v = obj.attr(name);
    return v.is_none() ? std::nullopt : std::optional<int64_t>(v.cast<int64_t>());
  };
  auto list = [&](const char* name) {
    py::object v = obj.attr(name);
    return v.is_none() ? std::vector<double>() : v.cast<std::vector<double>>();
  };
  RopeScalingConfig c;
  c.type = parse_rope_type(obj.attr("rope_type").cast<std::string>());
  c.rope_theta = obj.attr("rope_theta").cast<double>();
  c.head_dim = obj.attr("head_dim").cast<int64_t>();
  c.partial_rotary_factor = obj.attr("partial_rotary_factor").cast<double>();
  c.factor = opt_double("factor");
  c.max_position_embeddings = opt_int("max_position_embeddings");
  c.original_max_position_embeddings = opt_int("original_max_position_embeddings");
  c.attention_factor = opt_double("attention_factor");
  c.beta_fast = opt_double("beta_fast");
  c.beta_slow = opt_double("beta_slow");
  c.mscale = opt_double("mscale");
  c.mscale_all_dim = opt_double("mscale_all_dim");
  c.truncate = obj.attr("truncate").cast<bool>();
  c.low_freq_factor = opt_double("low_freq_factor");
  c.high_freq_factor = opt_double("high_freq_factor");
  c.short_factor = list("short_factor");
  c.long_factor = list("long_factor");
  c.xpos_gamma = obj.attr("xpos_gamma").cast<double>();
  c.xpos_scale_base = obj.attr("xpos_scale_base").cast<double>();
  return c;
}

}  // namespace

void init_nn(py::module& m) {
  using namespace posenc::nn;

  {
    using Impl = SinusoidalPositionalEncodingImpl;
    auto cls = torch::python::bind_module<Impl, /*force_enable=*/true>(
        m, "SinusoidalPositionalEncoding");
    cls.def(py::init([](int64_t dim, double base, double dropout, bool interleaved) {
              return std::make_shared<Impl>(SinusoidalPositionalEncodingOptions(dim)
                                                .base(base)
                                                .dropout(dropout)
                                                .interleaved(interleaved));
            }),
            py::arg("dim"), py::arg("base") = 10000.0, py::arg("dropout") = 0.0,
            py::arg("interleaved") = true);
    bind_forward(cls, &Impl::forward, py::arg("x"), py::arg("offset") = 0);
    with_repr<Impl>(cls);
  }
  {
    using Impl = LearnedPositionalEmbeddingImpl;
    auto cls = torch::python::bind_module<Impl, true>(m, "LearnedPositionalEmbedding");
    cls.def(py::init([](int64_t max_len, int64_t dim, double dropout) {
              return std::make_shared<Impl>(
                  LearnedPositionalEmbeddingOptions(max_len, dim).dropout(dropout));
            }),
            py::arg("max_len"), py::arg("dim"), py::arg("dropout") = 0.0);
    bind_forward(cls, &Impl::forward, py::arg("x"), py::arg("offset") = 0);
    with_repr<Impl>(cls);
  }
  {
    using Impl = RotaryEmbeddingImpl;
    auto cls = torch::python::bind_module<Impl, true>(m, "RotaryEmbedding");
    cls.def(py::init([](int64_t dim, std::optional<int64_t> rotary_dim, double base,
                        bool interleaved, std::string layout, const py::object& scaling,
                        std::string precision, int64_t xpos_centre) {
              return std::make_shared<Impl>(RotaryEmbeddingOptions(dim)
                                                .rotary_dim(rotary_dim)
                                                .base(base)
                                                .interleaved(interleaved)
                                                .layout(std::move(layout))
                                                .scaling(rope_config_from_py(scaling))
                                                .precision(std::move(precision))
                                                .xpos_centre(xpos_centre));
            }),
            py::arg("dim"), py::arg("rotary_dim") = py::none(), py::arg("base") = 10000.0,
            py::arg("interleaved") = false, py::arg("layout") = "bhsd",
            py::arg("scaling") = py::none(), py::arg("precision") = "reference",
            py::arg("xpos_centre") = 0);
    bind_forward(cls, &Impl::forward, py::arg("q"), py::arg("k"),
                 py::arg("positions") = py::none(), py::arg("offset") = 0,
                 py::arg("cu_seqlens") = py::none(), py::arg("seq_len") = py::none());
    cls.def("frequencies", &Impl::frequencies, py::arg("seq_len") = py::none());
    cls.def_property_readonly("attention_factor", &Impl::attention_factor);
    with_repr<Impl>(cls);
  }
  {
    using Impl = ALiBiImpl;
    auto cls = torch::python::bind_module<Impl, true>(m, "ALiBi");
    cls.def(py::init([](int64_t num_heads, bool causal) {
              return std::make_shared<Impl>(ALiBiOptions(num_heads).causal(causal));
            }),
            py::arg("num_heads"), py::arg("causal") = true);
    bind_forward(cls, &Impl::forward, py::arg("q_len"), py::arg("k_len"),
                 py::arg("q_offset") = 0, py::arg("k_offset") = 0);
    cls.def("attention", &Impl::attention, py::arg("q"), py::arg("k"), py::arg("v"),
            py::arg("key_padding_mask") = py::none(), py::arg("q_offset") = 0,
            py::arg("k_offset") = 0, py::arg("scale") = py::none());
    with_repr<Impl>(cls);
  }
  {
    using Impl = T5RelativeBiasImpl;
    auto cls = torch::python::bind_module<Impl, true>(m, "T5RelativeBias");
    cls.def(py::init([](int64_t num_heads, int64_t num_buckets, int64_t max_distance,
                        bool bidirectional) {
              return std::make_shared<Impl>(T5RelativeBiasOptions(num_heads)
                                                .num_buckets(num_buckets)
                                                .max_distance(max_distance)
                                                .bidirectional(bidirectional));
            }),
            py::arg("num_heads"), py::arg("num_buckets") = 32, py::arg("max_distance") = 128,
            py::arg("bidirectional") = true);
    bind_forward(cls, &Impl::forward, py::arg("q_len"), py::arg("k_len"),
                 py::arg("q_offset") = 0, py::arg("k_offset") = 0);
    cls.def("attention", &Impl::attention, py::arg("q"), py::arg("k"), py::arg("v"),
            py::arg("key_padding_mask") = py::none(), py::arg("q_offset") = 0,
            py::arg("k_offset") = 0, py::arg("scale") = py::none());
    with_repr<Impl>(cls);
  }
  {
    using Impl = KERPLEBiasImpl;
    auto cls = torch::python::bind_module<Impl, true>(m, "KERPLEBias");
    cls.def(py::init([](int64_t num_heads, std::string kind, bool causal, double eps) {
              return std::make_shared<Impl>(
                  KERPLEBiasOptions(num_heads).kind(std::move(kind)).causal(causal).eps(eps));
            }),
            py::arg("num_heads"), py::arg("kind") = "log", py::arg("causal") = true,
            py::arg("eps") = 1e-2);
    bind_forward(cls, &Impl::forward, py::arg("q_len"), py::arg("k_len"),
                 py::arg("q_offset") = 0, py::arg("k_offset") = 0);
    cls.def("attention", &Impl::attention, py::arg("q"), py::arg("k"), py::arg("v"),
            py::arg("key_padding_mask") = py::none(), py::arg("q_offset") = 0,
            py::arg("k_offset") = 0, py::arg("scale") = py::none());
    with_repr<Impl>(cls);
  }
  {
    using Impl = DynamicPositionBiasImpl;
    auto cls = torch::python::bind_module<Impl, true>(m, "DynamicPositionBias");
    cls.def(py::init([](int64_t dim, int64_t num_heads, int64_t depth, bool log_distance,
                        bool norm, bool causal) {
              return std::make_shared<Impl>(DynamicPositionBiasOptions(dim, num_heads)
                                                .depth(depth)
                                                .log_distance(log_distance)
                                                .norm(norm)
                                                .causal(causal));
            }),
            py::arg("dim"), py::arg("num_heads"), py::arg("depth") = 2,
            py::arg("log_distance") = false, py::arg("norm") = false, py::arg("causal") = false);
    bind_forward(cls, &Impl::forward, py::arg("q_len"), py::arg("k_len"),
                 py::arg("q_offset") = 0, py::arg("k_offset") = 0);
    with_repr<Impl>(cls);
  }
  {
    using Impl = FIREImpl;
    auto cls = torch::python::bind_module<Impl, true>(m, "FIRE");
    cls.def(py::init([](int64_t num_heads, int64_t mlp_width, double init_c, double init_L,
                        double eps, bool causal) {
              return std::make_shared<Impl>(FIREOptions(num_heads)
                                                .mlp_width(mlp_width)
                                                .init_c(init_c)
                                                .init_L(init_L)
                                                .eps(eps)
                                                .causal(causal));
            }),
            py::arg("num_heads"), py::arg("mlp_width") = 32, py::arg("init_c") = 0.1,
            py::arg("init_L") = 512.0, py::arg("eps") = 1e-6, py::arg("causal") = true);
    bind_forward(cls, &Impl::forward, py::arg("q_len"), py::arg("k_len"),
                 py::arg("q_offset") = 0, py::arg("k_offset") = 0);
    with_repr<Impl>(cls);
  }
  {
    using Impl = ForgettingGateImpl;
    auto cls = torch::python::bind_module<Impl, true>(m, "ForgettingGate");
    cls.def(py::init([](int64_t d_model, int64_t num_heads, double init_std) {
              return std::make_shared<Impl>(
                  ForgettingGateOptions(d_model, num_heads).init_std(init_std));
            }),
            py::arg("d_model"), py::arg("num_heads"), py::arg("init_std") = 0.02);
    bind_forward(cls, &Impl::forward, py::arg("x"));
    cls.def("log_fgate", &Impl::log_fgate, py::arg("x"));
    cls.def("attention", &Impl::attention, py::arg("q"), py::arg("k"), py::arg("v"),
            py::arg("x"), py::arg("key_padding_mask") = py::none(), py::arg("q_offset") = 0,
            py::arg("k_offset") = 0, py::arg("scale") = py::none());
    with_repr<Impl>(cls);
  }
  {
    using Impl = NoPEImpl;
    auto cls = torch::python::bind_module<Impl, true>(m, "NoPE");
    cls.def(py::init([](bool causal) {
              return std::make_shared<Impl>(NoPEOptions().causal(causal));
            }),
            py::arg("causal") = true);
    bind_forward(cls, &Impl::forward, py::arg("x"));
    cls.def("attention", &Impl::attention, py::arg("q"), py::arg("k"), py::arg("v"),
            py::arg("key_padding_mask") = py::none(), py::arg("q_offset") = 0,
            py::arg("k_offset") = 0, py::arg("scale") = py::none());
    with_repr<Impl>(cls);
  }
  {
    using Impl = TransformerXLRelativeScoreImpl;
    auto cls = torch::python::bind_module<Impl, true>(m, "TransformerXLRelativeScore");
    cls.def(py::init([](int64_t d_model, int64_t num_heads, int64_t head_dim, double base) {
              return std::make_shared<Impl>(
                  TransformerXLRelativeScoreOptions(d_model, num_heads, head_dim).base(base));
            }),
            py::arg("d_model"), py::arg("num_heads"), py::arg("head_dim"),
            py::arg("base") = 10000.0);
    bind_forward(cls, &Impl::forward, py::arg("q"), py::arg("mem_len") = 0,
                 py::arg("causal") = false);
    cls.def("content_query", &Impl::content_query, py::arg("q"));
    cls.def("attention", &Impl::attention, py::arg("q"), py::arg("k"), py::arg("v"),
            py::arg("mem_len") = 0, py::arg("key_padding_mask") = py::none(),
            py::arg("scale") = py::none(), py::arg("causal") = true);
    with_repr<Impl>(cls);
  }
  {
    using Impl = CoPEImpl;
    auto cls = torch::python::bind_module<Impl, true>(m, "CoPE");
    cls.def(py::init([](int64_t npos_max, int64_t head_dim, std::optional<double> scale) {
              return std::make_shared<Impl>(CoPEOptions(npos_max, head_dim).scale(scale));
            }),
            py::arg("npos_max"), py::arg("head_dim"), py::arg("scale") = py::none());
    bind_forward(cls, &Impl::forward, py::arg("q"), py::arg("k"), py::arg("q_offset") = 0,
                 py::arg("k_offset") = 0);
    cls.def("attention", &Impl::attention, py::arg("q"), py::arg("k"), py::arg("v"),
            py::arg("q_offset") = 0, py::arg("k_offset") = 0);
    with_repr<Impl>(cls);
  }
}

}  // namespace python
}  // namespace posenc
