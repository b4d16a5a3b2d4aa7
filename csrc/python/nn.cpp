// pybind11 bindings of posenc::nn: posenc._C.<Name> (a torch.nn.Module wrapper made by
// torch::python::bind_module) with the same keyword arguments and defaults as posenc.nn.<Name>.
#include <torch/extension.h>
#include <torch/python.h>

#include <sstream>

#include "posenc/nn.h"

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
                        bool interleaved, std::string layout) {
              return std::make_shared<Impl>(RotaryEmbeddingOptions(dim)
                                                .rotary_dim(rotary_dim)
                                                .base(base)
                                                .interleaved(interleaved)
                                                .layout(std::move(layout)));
            }),
            py::arg("dim"), py::arg("rotary_dim") = py::none(), py::arg("base") = 10000.0,
            py::arg("interleaved") = false, py::arg("layout") = "bhsd");
    bind_forward(cls, &Impl::forward, py::arg("q"), py::arg("k"),
                 py::arg("positions") = py::none(), py::arg("offset") = 0);
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
    bind_forward(cls, &Impl::forward, py::arg("q"), py::arg("mem_len") = 0);
    cls.def("content_query", &Impl::content_query, py::arg("q"));
    with_repr<Impl>(cls);
  }
}

}  // namespace python
}  // namespace posenc
