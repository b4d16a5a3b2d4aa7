// posenc::nn::RotaryEmbedding: rotates queries and keys by their positions (RoPE), with every
// RoPE scaling of posenc::RopeScalingConfig, xPos, packed sequences and two precision modes.
#pragma once

#include <torch/arg.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/modules/common.h>
#include <torch/nn/modules/container/any_value.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

#include <mutex>
#include <optional>
#include <ostream>
#include <string>
#include <tuple>

#include "posenc/rope_scaling.h"

namespace posenc {
namespace nn {

/// Options for RotaryEmbedding (Python: posenc.nn.RotaryEmbedding, same names and defaults).
struct RotaryEmbeddingOptions {
  /* implicit */ RotaryEmbeddingOptions(int64_t dim) : dim_(dim) {}
  /// Options for a scaling config: dim = config.head_dim, scaling = config, base =
  /// config.rope_theta (rotary_dim from the config).
  static RotaryEmbeddingOptions from_config(const RopeScalingConfig& config);
  /// Head dimension D of q and k (their last dimension); > 0.
  TORCH_ARG(int64_t, dim);
  /// Number of leading dims that are rotated (even, <= dim); the rest pass through
  /// (partial rotary, GPT-NeoX / Phi). Unset means dim, or 2 * scaling->num_frequencies()
  /// with scaling (which it must then equal if set).
  TORCH_ARG(std::optional<int64_t>, rotary_dim) = std::nullopt;
  /// Frequency base (10000 in RoFormer, 500000 in Llama 3); finite and > 1. With scaling the
  /// base is scaling->rope_theta, and base must be left at 10000 or equal it.
  TORCH_ARG(double, base) = 10000.0;
  /// false: half-split pairs (i, i + R/2) (GPT-NeoX, Llama); true: interleaved pairs
  /// (2i, 2i+1) (GPT-J, RoFormer).
  TORCH_ARG(bool, interleaved) = false;
  /// "bhsd" for (B, H, S, D) inputs, "bshd" for (B, S, H, D), "thd" for packed (T, H, D) with
  /// cu_seqlens in forward.
  TORCH_ARG(std::string, layout) = "bhsd";
  /// A RoPE scaling (linear, ntk, dynamic, yarn, llama3, longrope, xpos, or default with
  /// Hugging Face's float32 rounding of inv_freq): the frequencies, attention factor and xPos
  /// magnitudes come from compute_rope_parameters. scaling->head_dim must equal dim.
  TORCH_ARG(std::optional<RopeScalingConfig>, scaling) = std::nullopt;
  /// "reference" (default): float32 inv_freq and float32 angles pos * inv_freq, rounded where
  /// Hugging Face transformers rounds them, so outputs match transformers and the checkpoints
  /// trained with its rounding. "exact": float64 inv_freq, fp64 angles reduced mod 2 pi, so
  /// float32 outputs stay within ~1e-6 relative of fp64 at any position (the fp32 angle is off
  /// by up to ~0.03 rad at position 1e6): for long-context or from-scratch training.
  TORCH_ARG(std::string, precision) = "reference";
  /// xPos only: the absolute position c at which the xPos factors are 1 (q_n scales by
  /// zeta^((n - c) / scale_base), k_m by its inverse); one value shared by every call.
  TORCH_ARG(int64_t, xpos_centre) = 0;
};

/// Rotary position embedding (Su et al. 2021, RoFormer, eq. 34), applied to q and k with
/// posenc::ops::rope.
///
/// Frequencies: without scaling, base^(-2i/R), R = rotary_dim (eq. 15), from
/// posenc::ops::rope_inv_freq; with scaling, compute_rope_parameters (bit-identical to
/// transformers' ROPE_INIT_FUNCTIONS in reference precision). They are kept as tensors that
/// are NOT parameters or buffers: the state_dict is empty, to(torch::kBFloat16) keeps them
/// float32 (float64 in exact precision; angles at positions in the thousands need
/// them); to(device) moves them, and forward uses a copy on the inputs' device when they live
/// elsewhere. The attention factor (YaRN / LongRoPE attention_scaling) multiplies the rotary
/// dims of both q and k, as transformers multiplies cos and sin. xPos scales q with
/// xpos_inverse = false and k with true, around xpos_centre (Sun et al. 2022, §3.2).
///
/// Length-dependent scalings ("dynamic", "longrope") read the current total length seq_len
/// (see forward). Static types compute their table once at construction; longrope computes
/// its short and long tables once; dynamic recomputes only when the effective length
/// max(seq_len, max_position_embeddings) changes, keeping the last table (under a lock, so
/// concurrent forwards are safe). Unlike transformers, whose dynamic NTK keeps a grown table
/// until the length falls below max_position_embeddings, the table here is a function of
/// seq_len only.
///
/// Errors (c10::ValueError at construction, naming the module and option): dim <= 0,
/// rotary_dim odd, <= 0 or > dim, base <= 1, layout not "bhsd"/"bshd"/"thd", precision not
/// "reference"/"exact", scaling->head_dim != dim, rotary_dim != 2 * scaling's number of
/// frequencies, base neither 10000 nor scaling->rope_theta; an invalid scaling config throws
/// the c10::Error of RopeScalingConfig::validate. In forward (c10::Error): q or k whose last
/// dimension is not dim, k of another dtype or device than q, cu_seqlens missing with "thd" or given otherwise, seq_len < 0, plus
/// the op's own checks.
class RotaryEmbeddingImpl : public torch::nn::Cloneable<RotaryEmbeddingImpl> {
 public:
  explicit RotaryEmbeddingImpl(int64_t dim) : RotaryEmbeddingImpl(RotaryEmbeddingOptions(dim)) {}
  explicit RotaryEmbeddingImpl(const RotaryEmbeddingOptions& options_);

  /// Validates the options and computes the frequency tables (on the module's device, the
  /// CPU at construction).
  void reset() override;

  /// Prints e.g. `posenc::nn::RotaryEmbedding(dim=64, rotary_dim=64, base=10000, ...)`;
  /// scaling, precision and xpos_centre are shown when not the defaults.
  void pretty_print(std::ostream& stream) const override;

  /// q, k: (B, H, S, D) ("bhsd"), (B, S, H, D) ("bshd") or packed (T, H, D) ("thd"), any float
  /// dtype and strides (q and k may have different head counts, as in grouped-query
  /// attention). positions: int64 or int32 (S,) or (B, S), or none for arange(S) (not with "thd");
  /// offset is added to the positions in every case (KV-cache decoding). cu_seqlens: int64 or int32
  /// (num_seqs + 1,) cumulative sequence starts, required with "thd" (positions restart per
  /// sequence). seq_len: the current total length for "dynamic" / "longrope" (ignored by the
  /// other types); unset, it is inferred as transformers does (max position + 1): offset + S
  /// without positions (S the longer of q's and k's), offset + max(positions) + 1 with them,
  /// offset + the longest packed sequence with "thd". Inference from positions or cu_seqlens
  /// reads a tensor value (a host sync on CUDA): pass seq_len in decode loops.
  /// Returns (q_rot, k_rot) with the inputs' shapes and dtypes.
  std::tuple<torch::Tensor, torch::Tensor> forward(
      const torch::Tensor& q, const torch::Tensor& k,
      const std::optional<torch::Tensor>& positions = std::nullopt, int64_t offset = 0,
      const std::optional<torch::Tensor>& cu_seqlens = std::nullopt,
      std::optional<int64_t> seq_len = std::nullopt);

  /// The inverse frequencies forward uses at total length seq_len (unset: the table of a
  /// static type, the short table of longrope, the default table of dynamic): (R/2,) float32
  /// (float64 in exact precision) on the module's device. Throws c10::Error for seq_len < 0.
  torch::Tensor frequencies(std::optional<int64_t> seq_len = std::nullopt);

  /// Moves the tables with the module (recomputing them on the new device, so a module on the
  /// meta device can move); a dtype change leaves them as they are.
  void to(torch::Device device, torch::Dtype dtype, bool non_blocking = false) override;
  void to(torch::Dtype dtype, bool non_blocking = false) override;
  void to(torch::Device device, bool non_blocking = false) override;

  /// The resolved rotary dimension (options.rotary_dim(), or dim, or from scaling).
  int64_t rotary_dim() const;
  /// The resolved base (options.base() or scaling->rope_theta).
  double base() const;
  /// Factor on the rotary dims of q and k (compute_rope_parameters; 1 without scaling).
  double attention_factor() const { return attention_factor_; }
  /// True for "dynamic" and "longrope", whose frequencies depend on seq_len.
  bool length_dependent() const;

  /// The options the module was built with.
  RotaryEmbeddingOptions options;
  /// (R/2,) inverse frequencies, float32 (float64 in exact precision); not registered (no
  /// state_dict key). For dynamic NTK: the table of the last seq_len seen.
  torch::Tensor inv_freq;
  /// longrope only: the long_factor table (seq_len > original_max_position_embeddings).
  torch::Tensor long_inv_freq;
  /// xpos only: float32 (R/2,) per-pair zeta; undefined otherwise.
  torch::Tensor xpos_zeta;

 protected:
  FORWARD_HAS_DEFAULT_ARGS({2, torch::nn::AnyValue(std::optional<torch::Tensor>())},
                           {3, torch::nn::AnyValue(int64_t{0})},
                           {4, torch::nn::AnyValue(std::optional<torch::Tensor>())},
                           {5, torch::nn::AnyValue(std::optional<int64_t>())})

 private:
  // Guards inv_freq / cached_length_ for dynamic NTK; a copy (clone()) gets a fresh mutex.
  struct Lock {
    std::mutex m;
    Lock() = default;
    Lock(const Lock&) {}
    Lock& operator=(const Lock&) { return *this; }
  };
  int64_t infer_seq_len(const torch::Tensor& q, const torch::Tensor& k,
                        const std::optional<torch::Tensor>& positions, int64_t offset,
                        const std::optional<torch::Tensor>& cu_seqlens) const;
  torch::ScalarType freq_dtype() const;
  void move_tables(torch::Device device, bool non_blocking);
  void compute_tables(torch::Device device);

  double attention_factor_ = 1.0;
  int64_t cached_length_ = -1;  // dynamic: max(seq_len, max_position_embeddings) of inv_freq
  Lock lock_;
};

/// ModuleHolder for RotaryEmbeddingImpl.
TORCH_MODULE(RotaryEmbedding);

}  // namespace nn
}  // namespace posenc
