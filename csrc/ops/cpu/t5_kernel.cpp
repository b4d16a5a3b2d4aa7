#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "../t5.h"
#include "bias_reduce.h"

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

void t5_bias_fill(const at::Tensor& table, int64_t q_len, int64_t k_len, int64_t q_offset,
                  int64_t k_offset, bool bidirectional, int64_t max_distance,
                  const at::Tensor& out) {
  const int64_t num_buckets = table.size(0);
  const int64_t heads = table.size(1);
  const int64_t nd = q_len + k_len - 1;
  const auto buckets = diagonal_buckets(q_len, k_len, q_offset, k_offset, bidirectional,
                                        num_buckets, max_distance);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, table.scalar_type(), "t5_bias_cpu", [&] {
    const scalar_t* tab = table.const_data_ptr<scalar_t>();
    std::vector<scalar_t> lut(heads * nd);
    for (int64_t h = 0; h < heads; ++h) {
      for (int64_t t = 0; t < nd; ++t) lut[h * nd + t] = tab[buckets[t] * heads + h];
    }
    detail::fill_bias_from_diagonals(out.mutable_data_ptr<scalar_t>(), lut.data(), heads, q_len,
                                     k_len);
  });
}

at::Tensor t5_bias_forward_kernel(const at::Tensor& table_in, int64_t q_len, int64_t k_len,
                                  int64_t q_offset, int64_t k_offset, bool bidirectional,
                                  int64_t max_distance) {
  detail::check_t5_bias("t5_bias", table_in, q_len, k_len, bidirectional, max_distance);
  detail::check_offsets("t5_bias", q_offset, k_offset);
  const auto table = table_in.contiguous();
  auto out = detail::empty_output("t5_bias", q_len > k_len ? "q_len" : "k_len",
                                  {table.size(1), q_len, k_len}, table.options());
  if (out.numel() > 0) {
    t5_bias_fill(table, q_len, k_len, q_offset, k_offset, bidirectional, max_distance, out);
  }
  return out;
}

void t5_bias_out_kernel(const at::Tensor& table_in, int64_t q_len, int64_t k_len,
                        int64_t q_offset, int64_t k_offset, bool bidirectional,
                        int64_t max_distance, at::Tensor& out) {
  detail::check_t5_bias("t5_bias", table_in, q_len, k_len, bidirectional, max_distance);
  detail::check_offsets("t5_bias", q_offset, k_offset);
  detail::check_bias_out("t5_bias", out, table_in.size(1), q_len, k_len, table_in, "table");
  const auto table = table_in.contiguous();
  if (out.numel() > 0) {
    t5_bias_fill(table, q_len, k_len, q_offset, k_offset, bidirectional, max_distance, out);
  }
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
  const auto buckets = diagonal_buckets(q_len, k_len, q_offset, k_offset, bidirectional,
                                        num_buckets, max_distance);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, table.scalar_type(), "t5_bias_backward_cpu", [&] {
    // Each block's diagonal sums go to their diagonal's bucket.
    const auto total = detail::reduce_bias_gradient(
        grad.const_data_ptr<scalar_t>(), heads, q_len, k_len, num_buckets,
        [&](int64_t, int64_t t_lo, const double* diag, int64_t n, double* partial) {
          const int64_t* b = buckets.data() + t_lo;
          for (int64_t u = 0; u < n; ++u) partial[b[u]] += diag[u];
        });
    scalar_t* gt = grad_table.mutable_data_ptr<scalar_t>();
    for (int64_t h = 0; h < heads; ++h) {
      for (int64_t b = 0; b < num_buckets; ++b) {
        gt[b * heads + h] = static_cast<scalar_t>(total[h * num_buckets + b]);
      }
    }
  });
  return grad_table;
}

}  // namespace
}  // namespace posenc

TORCH_LIBRARY_IMPL(posenc, CPU, m) {
  m.impl("t5_relative_bucket", &posenc::t5_relative_bucket_kernel);
  m.impl("t5_bias", &posenc::t5_bias_forward_kernel);
  m.impl("t5_bias.out", &posenc::t5_bias_out_kernel);
  m.impl("t5_bias_backward", &posenc::t5_bias_backward_kernel);
}
