// Context parallelism (posenc::context_parallel): the split against torch::tensor_split and the
// Megatron-LM / Llama 3 layout, and sharded RoPE / ALiBi / T5 / rel_pos_scores against the
// unsharded ops.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <string>
#include <vector>

#include "posenc/posenc.h"
#include "test_util.h"

namespace cp = posenc::context_parallel;
using cp::Chunk;

namespace {

// Global indices of rank's tokens, from torch::tensor_split (independent of the helper).
torch::Tensor split_reference(int64_t seq_len, int64_t world_size, int64_t rank, bool balanced) {
  auto idx = torch::arange(seq_len);
  if (!balanced) return torch::tensor_split(idx, world_size)[rank];
  auto pieces = torch::tensor_split(idx, 2 * world_size);
  return torch::cat({pieces[rank], pieces[2 * world_size - 1 - rank]});
}

using posenc_test::expect_error;

}  // namespace

TEST(ContextParallel, ChunksPlainAndBalanced) {
  EXPECT_EQ(cp::chunks(16, 2, 0, true), (std::vector<Chunk>{{0, 4}, {12, 4}}));
  EXPECT_EQ(cp::chunks(16, 2, 1, true), (std::vector<Chunk>{{4, 4}, {8, 4}}));
  EXPECT_EQ(cp::chunks(16, 4, 0, true), (std::vector<Chunk>{{0, 2}, {14, 2}}));
  EXPECT_EQ(cp::chunks(16, 4, 3, true), (std::vector<Chunk>{{6, 2}, {8, 2}}));
  EXPECT_EQ(cp::chunks(16, 4, 2), (std::vector<Chunk>{{8, 4}}));
  EXPECT_EQ(cp::chunks(16, 2, 1), (std::vector<Chunk>{{8, 8}}));
}

TEST(ContextParallel, ChunksUneven) {
  // tensor_split: 10 in 4 -> 3, 3, 2, 2; 10 in 8 -> 2, 2, 1, 1, 1, 1, 1, 1.
  EXPECT_EQ(cp::chunks(10, 4, 1), (std::vector<Chunk>{{3, 3}}));
  EXPECT_EQ(cp::chunks(10, 4, 3), (std::vector<Chunk>{{8, 2}}));
  EXPECT_EQ(cp::chunks(10, 4, 0, true), (std::vector<Chunk>{{0, 2}, {9, 1}}));
  EXPECT_EQ(cp::chunks(10, 4, 3, true), (std::vector<Chunk>{{5, 1}, {6, 1}}));
  EXPECT_EQ(cp::chunks(3, 4, 3), (std::vector<Chunk>{{3, 0}}));
  EXPECT_EQ(cp::chunks(0, 2, 1, true), (std::vector<Chunk>{{0, 0}, {0, 0}}));
}

TEST(ContextParallel, PositionsPartitionTheSequence) {
  for (int64_t w : {1, 2, 3, 4}) {
    for (bool balanced : {false, true}) {
      for (int64_t s : {0, 3, 13, 16, 31}) {
        auto seen = torch::zeros({s}, torch::kLong);
        for (int64_t r = 0; r < w; ++r) {
          auto pos = cp::positions(s, w, r, balanced);
          ASSERT_EQ(pos.scalar_type(), torch::kLong);
          ASSERT_TRUE(torch::equal(pos, split_reference(s, w, r, balanced)))
              << "W=" << w << " S=" << s << " r=" << r << " balanced=" << balanced;
          EXPECT_TRUE(torch::equal(cp::positions(s, w, r, balanced, 9), pos + 9));
          seen.index_add_(0, pos, torch::ones_like(pos));
        }
        EXPECT_TRUE(torch::equal(seen, torch::ones({s}, torch::kLong)));
      }
    }
  }
}

TEST(ContextParallel, ShardUnshardRoundTrip) {
  auto x = torch::randn({3, 13, 2});
  for (int64_t w : {2, 4}) {
    for (bool balanced : {false, true}) {
      for (int64_t dim : {1, -2}) {
        std::vector<torch::Tensor> parts;
        for (int64_t r = 0; r < w; ++r) {
          parts.push_back(cp::shard(x, dim, w, r, balanced));
          EXPECT_TRUE(torch::equal(parts.back(), x.index_select(1, split_reference(13, w, r, balanced))));
        }
        EXPECT_TRUE(torch::equal(cp::unshard(parts, dim, balanced), x));
      }
    }
  }
}

TEST(ContextParallel, RopeShardedEqualsUnsharded) {
  auto inv_freq = posenc::ops::rope_inv_freq(8);
  for (const std::string layout : {"bhsd", "bshd"}) {
    const int64_t seq_dim = layout == "bhsd" ? 2 : 1;
    for (int64_t s : {16, 13}) {
      auto x = layout == "bhsd" ? torch::randn({2, 3, s, 8}) : torch::randn({2, s, 3, 8});
      auto full = posenc::ops::rope(x, std::nullopt, inv_freq, 5, std::nullopt, false, layout);
      for (int64_t w : {2, 4}) {
        for (bool balanced : {false, true}) {
          std::vector<torch::Tensor> parts;
          for (int64_t r = 0; r < w; ++r) {
            parts.push_back(posenc::ops::rope(cp::shard(x, seq_dim, w, r, balanced),
                                              cp::positions(s, w, r, balanced, 5), inv_freq, 0,
                                              std::nullopt, false, layout));
          }
          EXPECT_TRUE(torch::equal(cp::unshard(parts, seq_dim, balanced), full))
              << layout << " W=" << w << " S=" << s << " balanced=" << balanced;
          if (balanced && s == 16) {
            // The check can fail: the plain split's positions on a balanced shard are wrong.
            std::vector<torch::Tensor> wrong;
            for (int64_t r = 0; r < w; ++r) {
              wrong.push_back(posenc::ops::rope(cp::shard(x, seq_dim, w, r, true),
                                                cp::positions(s, w, r, false, 5), inv_freq, 0,
                                                std::nullopt, false, layout));
            }
            EXPECT_FALSE(torch::equal(cp::unshard(wrong, seq_dim, true), full));
          }
        }
      }
    }
  }
}

TEST(ContextParallel, BiasShardedEqualsUnsharded) {
  auto slopes = posenc::ops::alibi_slopes(4, torch::kDouble);
  auto table = torch::randn({16, 4}, torch::kDouble);
  posenc::nn::ALiBi alibi(posenc::nn::ALiBiOptions(4).causal(false));
  std::vector<cp::BiasFn> families = {
      [&](int64_t ql, int64_t kl, int64_t qo, int64_t ko) {
        return posenc::ops::alibi_bias(slopes, ql, kl, qo, ko, true);
      },
      [&](int64_t ql, int64_t kl, int64_t qo, int64_t ko) {
        return posenc::ops::t5_bias(table, ql, kl, qo, ko, true, 20);
      },
      [&](int64_t ql, int64_t kl, int64_t qo, int64_t ko) {
        return alibi->forward(ql, kl, qo, ko);
      },
  };
  for (const auto& fn : families) {
    for (int64_t s : {16, 13, 3}) {
      auto full = fn(s, s, 7, 7);
      for (int64_t w : {2, 4}) {
        for (bool balanced : {false, true}) {
          std::vector<torch::Tensor> rows;
          for (int64_t r = 0; r < w; ++r) {
            auto local = cp::local_bias(fn, s, w, r, balanced, std::nullopt, 7);
            ASSERT_TRUE(torch::equal(local, full.index_select(1, split_reference(s, w, r, balanced))));
            rows.push_back(local);
            // Ring attention: this rank's queries against each rank's key shard.
            std::vector<torch::Tensor> blocks;
            for (int64_t kr = 0; kr < w; ++kr) {
              blocks.push_back(cp::local_bias(fn, s, w, r, balanced, kr, 7));
            }
            EXPECT_TRUE(torch::equal(cp::unshard(blocks, -1, balanced), local));
          }
          EXPECT_TRUE(torch::equal(cp::unshard(rows, -2, balanced), full));
        }
      }
    }
  }
}

TEST(ContextParallel, RelPosScoresShardedEqualsUnsharded) {
  auto q = torch::randn({2, 3, 13, 8}, torch::kDouble);
  auto rel_emb = torch::randn({3, 25, 8}, torch::kDouble);
  auto full = posenc::ops::rel_pos_scores(q, rel_emb, 2, 2, 13);
  for (int64_t w : {2, 4}) {
    for (bool balanced : {false, true}) {
      std::vector<torch::Tensor> rows;
      for (int64_t r = 0; r < w; ++r) {
        rows.push_back(cp::local_rel_pos_scores(cp::shard(q, 2, w, r, balanced), rel_emb, 13, w,
                                                r, balanced, std::nullopt, 2));
      }
      EXPECT_TRUE(torch::equal(cp::unshard(rows, 2, balanced), full));
    }
  }
}

TEST(ContextParallel, BiasBlocks) {
  auto blocks = cp::bias_blocks(16, 2, 0, true, 1, 100);
  ASSERT_EQ(blocks.size(), 2u);
  EXPECT_EQ(blocks[0], (std::vector<cp::Block>{{100, 4, 104, 4}, {100, 4, 108, 4}}));
  EXPECT_EQ(blocks[1], (std::vector<cp::Block>{{112, 4, 104, 4}, {112, 4, 108, 4}}));
  EXPECT_EQ(cp::bias_blocks(10, 4, 2)[0], (std::vector<cp::Block>{{6, 2, 0, 10}}));
}

TEST(ContextParallel, BadArgumentsNameFunctionAndArgument) {
  expect_error<c10::ValueError>([] { cp::chunks(-1, 2, 0); },
                              "posenc.chunks: argument 'seq_len' must be >= 0, but got -1");
  expect_error<c10::ValueError>([] { cp::chunks(8, 0, 0); },
                              "posenc.chunks: argument 'world_size' must be > 0, but got 0");
  expect_error<c10::ValueError>([] { cp::positions(8, 2, 2); },
                              "posenc.positions: argument 'rank' must be in [0, world_size) = [0, 2), but got 2");
  expect_error<c10::ValueError>([] { cp::shard(torch::zeros({4, 8}), 2, 2, 0); },
                              "posenc.shard: argument 'dim' must be in [-2, 2) for a 2-D tensor, but got 2");
  expect_error<c10::ValueError>([] { cp::unshard({}, 0); },
                              "posenc.unshard: argument 'parts' must hold one tensor per rank, but got an empty list");
  expect_error<c10::ValueError>(
      [] { cp::unshard({torch::zeros({3}), torch::zeros({5})}, 0); },
      "posenc.unshard: argument 'parts' must have rank 0's local length 4 along dim 0 (global "
      "length 8, world_size 2), but got 3");
  expect_error<c10::ValueError>([] { cp::bias_blocks(8, 2, 0, false, 2); },
                              "posenc.bias_blocks: argument 'k_rank' must be in [0, world_size) = [0, 2) "
                              "(or omitted for all keys), but got 2");
  expect_error<c10::ValueError>(
      [] { cp::local_rel_pos_scores(torch::zeros({1, 1, 3, 2}), torch::zeros({1, 5, 2}), 8, 2, 1); },
      "posenc.local_rel_pos_scores: argument 'q' must be a 4-D tensor (B, H, 4, D) holding rank "
      "1's local queries, but got shape [1, 1, 3, 2]");
}
