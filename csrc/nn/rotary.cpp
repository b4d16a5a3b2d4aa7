#include "posenc/nn/rotary.h"

#include "nn/check.h"
#include "posenc/ops.h"

namespace posenc {
namespace nn {

namespace {
constexpr const char* kName = "RotaryEmbedding";
}

RotaryEmbeddingImpl::RotaryEmbeddingImpl(const RotaryEmbeddingOptions& options_)
    : options(options_) {
  reset();
}

int64_t RotaryEmbeddingImpl::rotary_dim() const {
  return options.rotary_dim().value_or(options.dim());
}

void RotaryEmbeddingImpl::reset() {
  POSENC_CHECK_OPTION(options.dim() > 0, kName, "dim", "must be > 0", options.dim());
  const int64_t rd = rotary_dim();
  // Case C05: an odd rotary dim has a dim without a partner; refuse it here rather than at
  // the first forward.
  POSENC_CHECK_OPTION(rd > 0 && rd % 2 == 0, kName, "rotary_dim",
                      "must be even and > 0 (dims are rotated in pairs)", rd);
  POSENC_CHECK_OPTION(rd <= options.dim(), kName, "rotary_dim",
                      c10::str("must be <= dim (", options.dim(), ")"), rd);
  POSENC_CHECK_OPTION(options.base() > 1, kName, "base", "must be > 1", options.base());
  POSENC_CHECK_OPTION(options.layout() == "bhsd" || options.layout() == "bshd", kName, "layout",
                      "must be \"bhsd\" or \"bshd\"", "\"", options.layout(), "\"");
  // Kept fp32 and unregistered: module.to(kBFloat16) must not round the frequencies (C01).
  auto device = inv_freq.defined() ? inv_freq.device() : torch::Device(torch::kCPU);
  inv_freq = ops::rope_inv_freq(rd, options.base(), device);
}

void RotaryEmbeddingImpl::pretty_print(std::ostream& stream) const {
  stream << "posenc::nn::RotaryEmbedding(dim=" << options.dim() << ", rotary_dim=" << rotary_dim()
         << ", base=" << detail::fmt(options.base())
         << ", interleaved=" << detail::fmt(options.interleaved()) << ", layout=" << options.layout()
         << ")";
}

void RotaryEmbeddingImpl::to(torch::Device device, torch::Dtype dtype, bool non_blocking) {
  torch::nn::Module::to(device, dtype, non_blocking);
  inv_freq = inv_freq.to(device, /*non_blocking=*/non_blocking);
}

void RotaryEmbeddingImpl::to(torch::Dtype dtype, bool non_blocking) {
  torch::nn::Module::to(dtype, non_blocking);
}

void RotaryEmbeddingImpl::to(torch::Device device, bool non_blocking) {
  torch::nn::Module::to(device, non_blocking);
  inv_freq = inv_freq.to(device, /*non_blocking=*/non_blocking);
}

std::tuple<torch::Tensor, torch::Tensor> RotaryEmbeddingImpl::forward(
    const torch::Tensor& q, const torch::Tensor& k, const std::optional<torch::Tensor>& positions,
    int64_t offset) {
  const int64_t d = options.dim();
  POSENC_CHECK_INPUT(q.defined() && q.dim() >= 1 && q.size(-1) == d, kName, "q",
                     c10::str("must have last dimension dim (", d, ")"),
                     q.defined() ? c10::str("shape ", q.sizes()) : std::string("undefined"));
  POSENC_CHECK_INPUT(k.defined() && k.dim() >= 1 && k.size(-1) == d, kName, "k",
                     c10::str("must have last dimension dim (", d, ")"),
                     k.defined() ? c10::str("shape ", k.sizes()) : std::string("undefined"));
  // Inputs on another device than the module (a module never moved) get a copy; the cached
  // tensor is only replaced by to(), so concurrent forwards never write module state.
  const auto inv = inv_freq.device() == q.device() ? inv_freq : inv_freq.to(q.device());
  const int64_t rd = rotary_dim();
  auto q_rot = ops::rope(q, positions, inv, offset, rd, options.interleaved(), options.layout());
  auto k_rot = ops::rope(k, positions, inv, offset, rd, options.interleaved(), options.layout());
  return {q_rot, k_rot};
}

}  // namespace nn
}  // namespace posenc
