#include "posenc/nn/fire.h"

#include <torch/nn/modules/activation.h>

#include <cmath>

#include "nn/check.h"
#include "posenc/ops_mlp_bias.h"

namespace posenc {
namespace nn {

namespace {
constexpr const char* kName = "FIRE";
}

FIREImpl::FIREImpl(const FIREOptions& options_) : options(options_) { reset(); }

void FIREImpl::reset() {
  const int64_t h = options.num_heads(), w = options.mlp_width();
  POSENC_CHECK_OPTION(h > 0, kName, "num_heads", "must be > 0", h);
  POSENC_CHECK_OPTION(w > 0, kName, "mlp_width", "must be > 0", w);
  POSENC_CHECK_OPTION(std::isfinite(options.init_c()) && options.init_c() != 0, kName, "init_c",
                      "must be finite and != 0", options.init_c());
  POSENC_CHECK_OPTION(std::isfinite(options.init_L()) && options.init_L() > 0, kName, "init_L",
                      "must be finite and > 0", options.init_L());
  POSENC_CHECK_OPTION(std::isfinite(options.eps()) && options.eps() > 0, kName, "eps",
                      "must be finite and > 0", options.eps());
  fc1 = torch::nn::Linear(torch::nn::LinearOptions(1, w));
  fc2 = torch::nn::Linear(torch::nn::LinearOptions(w, h));
  mlp = register_module("mlp", torch::nn::Sequential(fc1, torch::nn::ReLU(), fc2));
  c = register_parameter("c", torch::tensor(options.init_c(), torch::kFloat));
  init_L = register_buffer("init_L", torch::tensor(options.init_L(), torch::kFloat));
  L_multiplier = register_parameter("L_multiplier", torch::tensor(1.0, torch::kFloat));
}

void FIREImpl::pretty_print(std::ostream& stream) const {
  stream << "posenc::nn::FIRE(num_heads=" << options.num_heads()
         << ", mlp_width=" << options.mlp_width() << ", init_c=" << detail::fmt(options.init_c())
         << ", init_L=" << detail::fmt(options.init_L()) << ", eps=" << detail::fmt(options.eps())
         << ", causal=" << detail::fmt(options.causal()) << ")";
}

torch::Tensor FIREImpl::forward(int64_t q_len, int64_t k_len, int64_t q_offset, int64_t k_offset) {
  return ops::fire_bias(c, L_multiplier * init_L, fc1->weight, fc1->bias, fc2->weight, fc2->bias,
                        q_len, k_len, q_offset, k_offset, options.causal(), options.eps());
}

}  // namespace nn
}  // namespace posenc
