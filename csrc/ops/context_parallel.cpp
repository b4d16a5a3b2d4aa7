// Context-parallel chunk bookkeeping (see posenc/context_parallel.h). Pure index arithmetic
// plus narrow/cat: no kernels, so nothing here is dispatched.
#include "posenc/context_parallel.h"

#include <c10/util/Exception.h>

#include <algorithm>

#include "posenc/ops.h"

// Same wording as the ops' checks, but c10::ValueError (Python: ValueError) like the Python twin.
#define POSENC_CP_CHECK(cond, fn, arg, expected, ...)                                  \
  TORCH_CHECK_VALUE((cond), "posenc.", fn, ": argument '", arg, "' ", expected, \
                    ", but got ", __VA_ARGS__)

namespace posenc {
namespace context_parallel {

namespace {

void check_split(const char* fn, int64_t seq_len, int64_t world_size, int64_t rank) {
  POSENC_CP_CHECK(seq_len >= 0, fn, "seq_len", "must be >= 0", seq_len);
  POSENC_CP_CHECK(world_size > 0, fn, "world_size", "must be > 0", world_size);
  POSENC_CP_CHECK(rank >= 0 && rank < world_size, fn, "rank",
                  c10::str("must be in [0, world_size) = [0, ", world_size, ")"), rank);
}

// Chunk `index` of `num_chunks` with torch.tensor_split lengths (the first seq_len % n are one
// token longer).
Chunk nth_chunk(int64_t seq_len, int64_t num_chunks, int64_t index) {
  const int64_t base = seq_len / num_chunks;
  const int64_t extra = seq_len % num_chunks;
  return {index * base + std::min(index, extra), base + (index < extra ? 1 : 0)};
}

std::vector<Chunk> unchecked_chunks(int64_t seq_len, int64_t world_size, int64_t rank,
                                    bool load_balanced) {
  if (!load_balanced) return {nth_chunk(seq_len, world_size, rank)};
  const int64_t n = 2 * world_size;
  return {nth_chunk(seq_len, n, rank), nth_chunk(seq_len, n, n - 1 - rank)};
}

int64_t norm_dim(const char* fn, int64_t dim, int64_t ndim) {
  POSENC_CP_CHECK(dim >= -ndim && dim < ndim, fn, "dim",
                  c10::str("must be in [-", ndim, ", ", ndim, ") for a ", ndim, "-D tensor"),
                  dim);
  return dim < 0 ? dim + ndim : dim;
}

at::Tensor cat_or_single(std::vector<at::Tensor> parts, int64_t dim) {
  return parts.size() == 1 ? parts.front() : at::cat(parts, dim);
}

}  // namespace

std::vector<Chunk> chunks(int64_t seq_len, int64_t world_size, int64_t rank,
                          bool load_balanced) {
  check_split("chunks", seq_len, world_size, rank);
  return unchecked_chunks(seq_len, world_size, rank, load_balanced);
}

at::Tensor positions(int64_t seq_len, int64_t world_size, int64_t rank, bool load_balanced,
                     int64_t offset, at::Device device) {
  check_split("positions", seq_len, world_size, rank);
  std::vector<at::Tensor> parts;
  for (const auto& c : unchecked_chunks(seq_len, world_size, rank, load_balanced)) {
    parts.push_back(at::arange(offset + c.start, offset + c.start + c.length,
                               at::TensorOptions().dtype(at::kLong).device(device)));
  }
  return cat_or_single(std::move(parts), 0);
}

at::Tensor shard(const at::Tensor& x, int64_t dim, int64_t world_size, int64_t rank,
                 bool load_balanced) {
  POSENC_CP_CHECK(x.defined() && x.dim() > 0, "shard", "x", "must have at least 1 dimension",
                  x.defined() ? "a 0-D tensor" : "an undefined tensor");
  const int64_t d = norm_dim("shard", dim, x.dim());
  check_split("shard", x.size(d), world_size, rank);
  std::vector<at::Tensor> parts;
  for (const auto& c : unchecked_chunks(x.size(d), world_size, rank, load_balanced)) {
    parts.push_back(x.narrow(d, c.start, c.length));
  }
  return cat_or_single(std::move(parts), d);
}

at::Tensor unshard(at::TensorList parts, int64_t dim, bool load_balanced) {
  const auto world_size = static_cast<int64_t>(parts.size());
  POSENC_CP_CHECK(world_size > 0, "unshard", "parts", "must hold one tensor per rank",
                  "an empty list");
  for (const auto& p : parts) {
    POSENC_CP_CHECK(p.defined() && p.dim() > 0, "unshard", "parts",
                    "must hold tensors of at least 1 dimension",
                    p.defined() ? "a 0-D tensor" : "an undefined tensor");
  }
  const int64_t d = norm_dim("unshard", dim, parts[0].dim());
  int64_t seq_len = 0;
  for (const auto& p : parts) {
    POSENC_CP_CHECK(p.dim() == parts[0].dim(), "unshard", "parts",
                    c10::str("must hold tensors of equal rank (", parts[0].dim(), ")"), "a ",
                    p.dim(), "-D tensor");
    seq_len += p.size(d);
  }
  const int64_t num_chunks = load_balanced ? 2 * world_size : world_size;
  std::vector<at::Tensor> pieces(num_chunks);
  for (int64_t r = 0; r < world_size; ++r) {
    const auto local = unchecked_chunks(seq_len, world_size, r, load_balanced);
    int64_t expected = 0;
    for (const auto& c : local) expected += c.length;
    POSENC_CP_CHECK(parts[r].size(d) == expected, "unshard", "parts",
                    c10::str("must have rank ", r, "'s local length ", expected, " along dim ",
                             dim, " (global length ", seq_len, ", world_size ", world_size, ")"),
                    parts[r].size(d));
    // The local chunks are global chunks r and (load-balanced) num_chunks - 1 - r.
    int64_t pos = 0;
    for (size_t i = 0; i < local.size(); ++i) {
      pieces[i == 0 ? r : num_chunks - 1 - r] = parts[r].narrow(d, pos, local[i].length);
      pos += local[i].length;
    }
  }
  return at::cat(pieces, d);
}

std::vector<std::vector<Block>> bias_blocks(int64_t seq_len, int64_t world_size, int64_t rank,
                                            bool load_balanced, std::optional<int64_t> k_rank,
                                            int64_t offset) {
  check_split("bias_blocks", seq_len, world_size, rank);
  if (k_rank) {
    POSENC_CP_CHECK(*k_rank >= 0 && *k_rank < world_size, "bias_blocks", "k_rank",
                    c10::str("must be in [0, world_size) = [0, ", world_size,
                             ") (or omitted for all keys)"),
                    *k_rank);
  }
  const auto k_chunks = k_rank ? unchecked_chunks(seq_len, world_size, *k_rank, load_balanced)
                               : std::vector<Chunk>{{0, seq_len}};
  std::vector<std::vector<Block>> out;
  for (const auto& q : unchecked_chunks(seq_len, world_size, rank, load_balanced)) {
    std::vector<Block> row;
    for (const auto& k : k_chunks) {
      row.push_back({offset + q.start, q.length, offset + k.start, k.length});
    }
    out.push_back(std::move(row));
  }
  return out;
}

at::Tensor local_bias(const BiasFn& bias_fn, int64_t seq_len, int64_t world_size, int64_t rank,
                      bool load_balanced, std::optional<int64_t> k_rank, int64_t offset) {
  std::vector<at::Tensor> rows;
  for (const auto& row : bias_blocks(seq_len, world_size, rank, load_balanced, k_rank, offset)) {
    std::vector<at::Tensor> cols;
    for (const auto& b : row) cols.push_back(bias_fn(b.q_len, b.k_len, b.q_offset, b.k_offset));
    rows.push_back(cat_or_single(std::move(cols), -1));
  }
  return cat_or_single(std::move(rows), -2);
}

at::Tensor local_rel_pos_scores(const at::Tensor& q, const at::Tensor& rel_emb, int64_t seq_len,
                                int64_t world_size, int64_t rank, bool load_balanced,
                                std::optional<int64_t> k_rank, int64_t offset,
                                std::optional<int64_t> max_distance) {
  const auto blocks = bias_blocks(seq_len, world_size, rank, load_balanced, k_rank, offset);
  int64_t local_len = 0;
  for (const auto& row : blocks) local_len += row.front().q_len;
  POSENC_CP_CHECK(q.defined() && q.dim() == 4 && q.size(2) == local_len, "local_rel_pos_scores",
                  "q",
                  c10::str("must be a 4-D tensor (B, H, ", local_len, ", D) holding rank ", rank,
                           "'s local queries"),
                  "shape ", q.defined() ? c10::str(q.sizes()) : std::string("undefined"));
  std::vector<at::Tensor> rows;
  int64_t pos = 0;
  for (const auto& row : blocks) {
    const auto q_chunk = q.narrow(2, pos, row.front().q_len);
    pos += row.front().q_len;
    std::vector<at::Tensor> cols;
    for (const auto& b : row) {
      cols.push_back(ops::rel_pos_scores(q_chunk, rel_emb, b.q_offset, b.k_offset, b.k_len,
                                         max_distance));
    }
    rows.push_back(cat_or_single(std::move(cols), -1));
  }
  return cat_or_single(std::move(rows), -2);
}

}  // namespace context_parallel
}  // namespace posenc
