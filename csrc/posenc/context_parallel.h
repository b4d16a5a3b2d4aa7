// Context parallelism: which global positions a rank's local sequence chunk holds. The C++
// twin of Python's posenc.context_parallel (same names, rules and error messages).
//
// A sequence of seq_len tokens is sharded along its sequence dimension across world_size
// ranks, in one of two layouts:
//  - plain: world_size contiguous chunks; rank r holds chunk r.
//  - load-balanced: 2 * world_size chunks; rank r holds chunks r and 2 * world_size - 1 - r,
//    in that order (its local order). Pairing an early and a late chunk evens out causal
//    attention work: the split of Megatron-LM's get_batch_on_this_cp_rank and of the Llama 3
//    paper (Llama Team, "The Llama 3 Herd of Models", 2024, §3.3.2).
// Uneven lengths follow torch.tensor_split: of n chunks, the first seq_len % n have
// seq_len / n + 1 tokens, the others seq_len / n (possibly 0). The chunks of all ranks
// partition [0, seq_len) exactly once; with divisible lengths they equal Megatron-LM's.
//
// Positions are global absolute positions (query i at q_offset + i, key j at k_offset + j, the
// posenc convention), so RoPE with positions(...) and the bias ops with the offsets of
// bias_blocks(...) give every rank exactly its rows of the unsharded result.
//
// Errors: bad arguments throw c10::ValueError (Python: ValueError) reading
// "posenc.<fn>: argument '<arg>' <expected>, but got <given>".
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <vector>

namespace posenc {
namespace context_parallel {

/// A contiguous run of global token indices [start, start + length).
struct Chunk {
  int64_t start = 0;
  int64_t length = 0;
  bool operator==(const Chunk& other) const = default;
};

/// One block of a bias: queries at q_offset + [0, q_len) against keys at k_offset + [0, k_len).
struct Block {
  int64_t q_offset = 0;
  int64_t q_len = 0;
  int64_t k_offset = 0;
  int64_t k_len = 0;
  bool operator==(const Block& other) const = default;
};

/// The global chunks `rank` holds, in local order: one (plain) or two (load-balanced: chunk
/// rank, then chunk 2 * world_size - 1 - rank). Throws c10::ValueError for seq_len < 0,
/// world_size <= 0, or rank outside [0, world_size).
std::vector<Chunk> chunks(int64_t seq_len, int64_t world_size, int64_t rank,
                          bool load_balanced = false);

/// Global positions of `rank`'s local tokens, int64 (S_local,) on `device`: the concatenated
/// aranges of chunks(...) plus `offset` (the position of the sequence's first token). Feed it
/// to posenc::ops::rope / posenc::nn::Rotary as positions. Errors as chunks().
at::Tensor positions(int64_t seq_len, int64_t world_size, int64_t rank,
                     bool load_balanced = false, int64_t offset = 0,
                     at::Device device = at::kCPU);

/// `rank`'s local part of x along dimension `dim` (negative counts from the end): the chunks of
/// chunks(x.size(dim), ...) concatenated in local order; a view for the plain split, a new
/// tensor for the load-balanced one. Throws c10::ValueError for a 0-D x, dim out of range, or
/// the errors of chunks().
at::Tensor shard(const at::Tensor& x, int64_t dim, int64_t world_size, int64_t rank,
                 bool load_balanced = false);

/// Inverse of shard(): parts[r] is rank r's local tensor (world_size = parts.size(), global
/// length the sum of the parts' lengths along dim). Throws c10::ValueError for no parts, a 0-D
/// part, parts of different rank, dim out of range, or a part whose length along dim is not
/// its rank's local length.
at::Tensor unshard(at::TensorList parts, int64_t dim, bool load_balanced = false);

/// The blocks of `rank`'s queries against a key set: out[a][b] is local query chunk a against
/// key chunk b. Keys are all seq_len keys in global order (k_rank empty: one block per query
/// chunk, k_offset = offset, k_len = seq_len) or the keys rank k_rank holds, in its local
/// order (ring attention). `offset` is added to q_offset and k_offset. Throws c10::ValueError
/// as chunks(), or for k_rank outside [0, world_size).
std::vector<std::vector<Block>> bias_blocks(int64_t seq_len, int64_t world_size, int64_t rank,
                                            bool load_balanced = false,
                                            std::optional<int64_t> k_rank = std::nullopt,
                                            int64_t offset = 0);

/// A bias family: (q_len, k_len, q_offset, k_offset) -> (..., q_len, k_len), e.g.
/// [&](auto ql, auto kl, auto qo, auto ko) { return alibi->forward(ql, kl, qo, ko); }.
using BiasFn = std::function<at::Tensor(int64_t q_len, int64_t k_len, int64_t q_offset,
                                        int64_t k_offset)>;

/// bias_fn over every block of bias_blocks(...), concatenated (key blocks along dim -1, query
/// blocks along dim -2): (..., S_local, seq_len), the rows of the unsharded
/// bias_fn(seq_len, seq_len, offset, offset) at `rank`'s positions, or
/// (..., S_local, S_local(k_rank)) against k_rank's keys. Errors as bias_blocks().
at::Tensor local_bias(const BiasFn& bias_fn, int64_t seq_len, int64_t world_size, int64_t rank,
                      bool load_balanced = false, std::optional<int64_t> k_rank = std::nullopt,
                      int64_t offset = 0);

/// posenc::ops::rel_pos_scores for `rank`'s local queries q (B, H, S_local, D): each local
/// query chunk goes to the op with its global start as q_offset, against the key blocks of
/// bias_blocks(...); concatenated as local_bias(). Throws c10::ValueError as bias_blocks(), or
/// for q not 4-D with q.size(2) == the rank's local length; the op's own c10::Error otherwise.
at::Tensor local_rel_pos_scores(const at::Tensor& q, const at::Tensor& rel_emb, int64_t seq_len,
                                int64_t world_size, int64_t rank, bool load_balanced = false,
                                std::optional<int64_t> k_rank = std::nullopt, int64_t offset = 0,
                                std::optional<int64_t> max_distance = std::nullopt);

}  // namespace context_parallel
}  // namespace posenc
