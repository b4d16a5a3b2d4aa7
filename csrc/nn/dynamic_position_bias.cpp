#include "posenc/nn/dynamic_position_bias.h"

#include <torch/nn/modules/activation.h>

#include "nn/check.h"
#include "posenc/ops_mlp_bias.h"

namespace posenc {
namespace nn {

namespace {
constexpr const char* kName = "DynamicPositionBias";
}

void DynamicPositionBiasNormImpl::reset() {
  gamma = register_parameter("gamma", torch::ones({dim}));
}

void DynamicPositionBiasNormImpl::pretty_print(std::ostream& stream) const {
  stream << "posenc::nn::DynamicPositionBiasNorm(" << dim << ")";
}

DynamicPositionBiasImpl::DynamicPositionBiasImpl(const DynamicPositionBiasOptions& options_)
    : options(options_) {
  reset();
}

void DynamicPositionBiasImpl::reset() {
  const int64_t dim = options.dim(), heads = options.num_heads(), depth = options.depth();
  POSENC_CHECK_OPTION(dim > 0, kName, "dim", "must be > 0", dim);
  POSENC_CHECK_OPTION(heads > 0, kName, "num_heads", "must be > 0", heads);
  POSENC_CHECK_OPTION(depth >= 1, kName, "depth", "must be >= 1", depth);
  linears.clear();
  norms.clear();
  mlp = torch::nn::ModuleList();
  for (int64_t l = 0; l < depth; ++l) {
    torch::nn::ModuleList block;
    torch::nn::Linear lin(torch::nn::LinearOptions(l == 0 ? 1 : dim, dim));
    block->push_back(lin);
    linears.push_back(lin);
    if (options.norm()) {
      DynamicPositionBiasNorm g(dim);
      block->push_back(g);
      norms.push_back(g);
    }
    block->push_back(torch::nn::SiLU());
    mlp->push_back(block);
  }
  torch::nn::Linear out(torch::nn::LinearOptions(dim, heads));
  mlp->push_back(out);
  linears.push_back(out);
  register_module("mlp", mlp);
}

void DynamicPositionBiasImpl::pretty_print(std::ostream& stream) const {
  stream << "posenc::nn::DynamicPositionBias(dim=" << options.dim()
         << ", num_heads=" << options.num_heads() << ", depth=" << options.depth()
         << ", log_distance=" << detail::fmt(options.log_distance())
         << ", norm=" << detail::fmt(options.norm()) << ", causal=" << detail::fmt(options.causal())
         << ")";
}

torch::Tensor DynamicPositionBiasImpl::forward(int64_t q_len, int64_t k_len, int64_t q_offset,
                                               int64_t k_offset) {
  std::vector<torch::Tensor> w, b, g;
  for (const auto& lin : linears) {
    w.push_back(lin->weight);
    b.push_back(lin->bias);
  }
  for (const auto& n : norms) g.push_back(n->gamma);
  return ops::dynamic_position_bias(w, b, q_len, k_len, q_offset, k_offset,
                                    options.log_distance(), options.causal(), g);
}

}  // namespace nn
}  // namespace posenc
