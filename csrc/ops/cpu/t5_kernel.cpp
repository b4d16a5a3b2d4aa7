#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "../t5.h"

namespace posenc {
namespace {

at::Tensor t5_relative_bucket_kernel(const at::Tensor& relative_position_in, bool bidirectional,
                                     int64_t num_buckets, int64_t max_distance) {
  detail::check_t5_relative_bucket("t5_relative_bucket", relative_position_in, bidirectional,
                                   num_buckets, max_distance);
  const auto rp = relative_position_in.contiguous();
  auto out = at::empty(rp.sizes(), rp.options());
  const int64_t n = rp.numel();
  if (n == 0) return out;
  const int64_t* r = rp.const_data_ptr<int64_t>();
  int64_t* o = out.mutable_data_ptr<int64_t>();
  at::parallel_for(0, n, detail::row_grain(1), [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      o[k] = detail::t5_bucket(r[k], bidirectional, num_buckets, max_distance);
    }
  });
  return out;
}

// The bucket depends only on the distance k_pos - q_pos, so it is computed once per diagonal
// of the (q_len, k_len) grid: lut[j - i + q_len - 1] = bucket(k_offset + j - q_offset - i).
// O(q_len + k_len) integers, never a (q_len, k_len) bucket tensor.
std::vector<int64_t> diagonal_buckets(int64_t q_len, int64_t k_len, int64_t q_offset,
                                      int64_t k_offset, bool bidirectional, int64_t num_buckets,
                                      int64_t max_distance) {
  const int64_t n = q_len + k_len - 1;
  const int64_t d0 = k_offset - q_offset - (q_len - 1);  // distance on diagonal 0
  std::vector<int64_t> lut(n);
  at::parallel_for(0, n, detail::row_grain(1), [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      lut[t] = detail::t5_bucket(d0 + t, bidirectional, num_buckets, max_distance);
    }
  });
  return lut;
}

at::Tensor t5_bias_forward_kernel(const at::Tensor& table_in, int64_t q_len, int64_t k_len,
                                  int64_t q_offset, int64_t k_offset, bool bidirectional,
                                  int64_t max_distance) {
  detail::check_t5_bias("t5_bias", table_in, q_len, k_len, bidirectional, max_distance);
  detail::check_offsets("t5_bias", q_offset, k_offset);
  const auto table = table_in.contiguous();
  const int64_t num_buckets = table.size(0);
  const int64_t heads = table.size(1);
  auto out = at::empty({heads, q_len, k_len}, table.options());
  if (out.numel() == 0) return out;
  const auto lut = diagonal_buckets(q_len, k_len, q_offset, k_offset, bidirectional, num_buckets,
                                    max_distance);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, table.scalar_type(), "t5_bias_cpu", [&] {
    const scalar_t* tab = table.const_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, heads * q_len, detail::row_grain(k_len), [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t h = row / q_len;
        const int64_t* lrow = lut.data() + (q_len - 1 - row % q_len);  // lrow[j]: bucket of (i, j)
        scalar_t* orow = o + row * k_len;
        for (int64_t j = 0; j < k_len; ++j) orow[j] = tab[lrow[j] * heads + h];
      }
    });
  });
  return out;
}

at::Tensor t5_bias_backward_kernel(const at::Tensor& grad_in, const at::Tensor& table,
                                   int64_t q_len, int64_t k_len, int64_t q_offset,
                                   int64_t k_offset, bool bidirectional, int64_t max_distance) {
  detail::check_t5_bias_backward("t5_bias_backward", grad_in, table, q_len, k_len, bidirectional,
                                 max_distance);
  detail::check_offsets("t5_bias_backward", q_offset, k_offset);
  const int64_t num_buckets = table.size(0);
  const int64_t heads = table.size(1);
  auto grad_table = at::zeros({num_buckets, heads}, table.options());
  if (heads == 0 || q_len == 0 || k_len == 0) return grad_table;
  const auto grad = grad_in.to(table.scalar_type()).contiguous();
  const auto lut = diagonal_buckets(q_len, k_len, q_offset, k_offset, bidirectional, num_buckets,
                                    max_distance);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, table.scalar_type(), "t5_bias_backward_cpu", [&] {
    const scalar_t* g = grad.const_data_ptr<scalar_t>();
    scalar_t* gt = grad_table.mutable_data_ptr<scalar_t>();
    // One head per task, per-bucket fp64 accumulators, fixed summation order: deterministic.
    at::parallel_for(0, heads, 1, [&](int64_t begin, int64_t end) {
      std::vector<double> acc(num_buckets);
      for (int64_t h = begin; h < end; ++h) {
        std::fill(acc.begin(), acc.end(), 0.0);
        for (int64_t i = 0; i < q_len; ++i) {
          const int64_t* lrow = lut.data() + (q_len - 1 - i);
          const scalar_t* grow = g + (h * q_len + i) * k_len;
          for (int64_t j = 0; j < k_len; ++j) acc[lrow[j]] += static_cast<double>(grow[j]);
        }
        for (int64_t b = 0; b < num_buckets; ++b) gt[b * heads + h] = static_cast<scalar_t>(acc[b]);
      }
    });
  });
  return grad_table;
}

}  // namespace
}  // namespace posenc

TORCH_LIBRARY_IMPL(posenc, CPU, m) {
  m.impl("t5_relative_bucket", &posenc::t5_relative_bucket_kernel);
  m.impl("t5_bias", &posenc::t5_bias_forward_kernel);
  m.impl("t5_bias_backward", &posenc::t5_bias_backward_kernel);
}
