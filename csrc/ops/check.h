// Input validation shared by every kernel (CPU, CUDA, Meta) so that a bad call raises the
// same message on every backend, on the host, before anything is allocated or launched.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/util/Exception.h>
#include <c10/util/safe_numerics.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>

namespace posenc {
namespace detail {

inline std::string shape_str(const at::Tensor& t) {
  return c10::str(t.sym_sizes());
}

// "posenc.<op>: argument '<arg>' <expected>, but got <given>"
#define POSENC_CHECK_ARG(cond, op, arg, expected, ...)                                     \
  TORCH_CHECK((cond), "posenc.", op, ": argument '", arg, "' ", expected, ", but got ", \
              __VA_ARGS__)

inline void check_defined(const char* op, const char* arg, const at::Tensor& t) {
  POSENC_CHECK_ARG(t.defined(), op, arg, "must be a tensor", "an undefined tensor");
}

inline void check_dim(const char* op, const char* arg, const at::Tensor& t, int64_t dim,
                      const char* shape_doc) {
  check_defined(op, arg, t);
  POSENC_CHECK_ARG(t.dim() == dim, op, arg,
                   c10::str("must be a ", dim, "-D tensor of shape ", shape_doc),
                   "a ", t.dim(), "-D tensor of shape ", shape_str(t));
}

inline bool is_float_dtype(at::ScalarType s) {
  return s == at::kFloat || s == at::kDouble || s == at::kHalf || s == at::kBFloat16;
}

inline void check_floating(const char* op, const char* arg, const at::Tensor& t) {
  check_defined(op, arg, t);
  POSENC_CHECK_ARG(is_float_dtype(t.scalar_type()), op, arg,
                   "must have dtype float16, bfloat16, float32 or float64", "dtype ",
                   t.scalar_type());
}

inline void check_dtype(const char* op, const char* arg, const at::Tensor& t,
                        at::ScalarType expected) {
  check_defined(op, arg, t);
  POSENC_CHECK_ARG(t.scalar_type() == expected, op, arg, c10::str("must have dtype ", expected),
                   "dtype ", t.scalar_type());
}

// Index tensors (cu_seqlens, position ids): int64, or int32 as flash-attn and vLLM pass them.
inline void check_index_dtype(const char* op, const char* arg, const at::Tensor& t) {
  check_defined(op, arg, t);
  POSENC_CHECK_ARG(t.scalar_type() == at::kLong || t.scalar_type() == at::kInt, op, arg,
                   "must have dtype int64 or int32", "dtype ", t.scalar_type());
}

inline void check_same_dtype(const char* op, const char* arg, const at::Tensor& t,
                             const char* other_arg, const at::Tensor& other) {
  POSENC_CHECK_ARG(t.scalar_type() == other.scalar_type(), op, arg,
                   c10::str("must have the dtype of '", other_arg, "' (", other.scalar_type(), ")"),
                   "dtype ", t.scalar_type());
}

inline void check_same_device(const char* op, const char* arg, const at::Tensor& t,
                              const char* other_arg, const at::Tensor& other) {
  POSENC_CHECK_ARG(t.device() == other.device(), op, arg,
                   c10::str("must be on the device of '", other_arg, "' (", other.device(), ")"),
                   "device ", t.device());
}

// A backward op's incoming gradient has the dtype of the forward's output, which is the dtype
// of '<other_arg>' (the parameters of a bias op, q of the score ops). The kernels read it in that
// dtype; a gradient of another dtype is a caller's error, not something to convert silently.
inline void check_grad_dtype(const char* op, const char* arg, const at::Tensor& grad,
                             const char* other_arg, const at::Tensor& other) {
  POSENC_CHECK_ARG(grad.scalar_type() == other.scalar_type(), op, arg,
                   c10::str("must have the dtype of the forward's output, the dtype of '",
                            other_arg, "' (", other.scalar_type(), ")"),
                   "dtype ", grad.scalar_type());
}

template <typename T>
inline void check_nonnegative(const char* op, const char* arg, const T& value) {
  POSENC_CHECK_ARG(value >= 0, op, arg, "must be >= 0", value);
}

template <typename T>
inline void check_positive(const char* op, const char* arg, const T& value) {
  POSENC_CHECK_ARG(value > 0, op, arg, "must be > 0", value);
}

}  // namespace detail
}  // namespace posenc

namespace posenc {
namespace detail {

// Lengths arrive as int64 in the CPU/CUDA kernels and as SymInt in the Meta kernels; a
// symbolic length is checked when it becomes concrete in a real kernel.
inline std::optional<int64_t> concrete(const c10::SymInt& v) { return v.maybe_as_int(); }
inline std::optional<int64_t> concrete(int64_t v) { return v; }

template <typename T>
inline void check_length(const char* op, const char* arg, const T& v) {
  if (auto c = concrete(v)) {
    check_nonnegative(op, arg, *c);
  }
}

// Outputs whose size in bytes overflows int64 get a posenc error here instead of torch's
// "Storage size calculation overflowed" from the allocation. Sizes of 0 count as 1: the
// strides of an empty tensor must fit too. An output that fits in int64 but not in memory is
// left to the allocator (a catchable error). Symbolic sizes are checked by the real kernel.
inline void check_output_size(const char* op, const char* arg, c10::SymIntArrayRef sizes,
                              at::ScalarType dtype) {
  uint64_t bytes = at::elementSize(dtype);
  bool overflow = false;
  for (const auto& s : sizes) {
    const auto v = concrete(s);
    if (!v || *v < 0) return;  // symbolic, or a negative length the caller reports
    overflow |= c10::mul_overflows(bytes, static_cast<uint64_t>(std::max<int64_t>(*v, 1)), &bytes);
  }
  overflow |= bytes > static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
  POSENC_CHECK_ARG(!overflow, op, arg,
                   "is too large: the output's size in bytes must fit in int64",
                   "an output of shape ", sizes, " and dtype ", dtype);
}

// Outputs larger than this cannot be allocated on any machine posenc runs on: 2^47 bytes
// (128 TiB) is the whole user address space of x86-64 and arm64 with 48-bit virtual
// addresses. Refusing them up front matters where the kernel overcommits memory
// (vm.overcommit_memory = 1): there a huge allocation "succeeds" and the process is killed
// when the kernel writes it.
constexpr uint64_t kMaxAllocBytes = uint64_t{1} << 47;

inline uint64_t size_bytes(at::IntArrayRef sizes, at::ScalarType dtype) {
  uint64_t bytes = at::elementSize(dtype);  // sizes already fit int64 bytes (check_output_size)
  for (const int64_t s : sizes) bytes *= static_cast<uint64_t>(s);
  return bytes;
}

// "posenc.<op>: argument '<arg>' is too large: the output cannot be allocated, ..."
inline void check_allocatable(const char* op, const char* arg, at::IntArrayRef sizes,
                              at::ScalarType dtype) {
  const uint64_t bytes = size_bytes(sizes, dtype);
  POSENC_CHECK_ARG(bytes <= kMaxAllocBytes, op, arg,
                   "is too large: the output cannot be allocated (more than 2^47 bytes, the "
                   "address space)",
                   "an output of shape ", sizes, " and dtype ", dtype, " (", bytes, " bytes)");
}

// Allocates an op's output. One that fits in int64 bytes (check_output_size) but not in memory
// gets a posenc error naming the op, the argument and the size in bytes, instead of the
// allocator's bare message; nothing is left allocated, so the process stays usable. With valid
// sizes, at::empty can only fail in the allocator, so every c10::Error here is that failure
// (c10::OutOfMemoryError on CUDA, a plain c10::Error from the CPU allocator).
inline at::Tensor empty_output(const char* op, const char* arg, at::IntArrayRef sizes,
                               const at::TensorOptions& options) {
  const auto dtype = at::typeMetaToScalarType(options.dtype());
  check_allocatable(op, arg, sizes, dtype);
  try {
    return at::empty(sizes, options);
  } catch (const c10::Error& e) {
    const std::string why = e.what_without_backtrace();
    POSENC_CHECK_ARG(false, op, arg, "is too large: the output cannot be allocated",
                     "an output of shape ", sizes, " and dtype ", dtype, " (",
                     size_bytes(sizes, dtype), " bytes; ", why.substr(0, why.find('\n')), ")");
  }
  return at::Tensor();  // unreachable
}

// The (num_heads, q_len, k_len) bias ops name the longer of their two lengths.
template <typename Int>
inline void check_bias_size(const char* op, const c10::SymInt& heads, const Int& q_len,
                            const Int& k_len, at::ScalarType dtype) {
  const auto q = concrete(q_len), k = concrete(k_len);
  const char* arg = (q && k && *q > *k) ? "q_len" : "k_len";
  check_output_size(op, arg, {heads, c10::SymInt(q_len), c10::SymInt(k_len)}, dtype);
}

// The out= variants of the bias ops write a caller's buffer: it must be exactly the output
// (shape, dtype, device) and contiguous, so the kernels can write it as they write their own.
inline void check_bias_out(const char* op, const at::Tensor& out, const c10::SymInt& heads,
                           const c10::SymInt& q_len, const c10::SymInt& k_len,
                           const at::Tensor& param, const char* param_arg) {
  check_defined(op, "out", out);
  POSENC_CHECK_ARG(out.dim() == 3 && out.sym_size(0) == heads && out.sym_size(1) == q_len &&
                       out.sym_size(2) == k_len,
                   op, "out",
                   c10::str("must have shape (num_heads, q_len, k_len) = [", heads, ", ", q_len,
                            ", ", k_len, "]"),
                   "shape ", shape_str(out));
  POSENC_CHECK_ARG(out.scalar_type() == param.scalar_type(), op, "out",
                   c10::str("must have the dtype of '", param_arg, "' (", param.scalar_type(), ")"),
                   "dtype ", out.scalar_type());
  check_same_device(op, "out", out, param_arg, param);
  POSENC_CHECK_ARG(out.is_contiguous(), op, "out", "must be contiguous",
                   "strides ", out.sym_strides());
}

// Parameter values (a (H,) vector on the host) must be finite: a NaN or inf slope would fill
// the bias with NaN/inf that surfaces far away, in the softmax. Device tensors are not read
// here (that would synchronise the stream); see the ops' docs.
inline void check_finite(const char* op, const char* arg, const at::Tensor& t) {
  if (!t.device().is_cpu()) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, t.scalar_type(), "posenc_check_finite", [&] {
    const scalar_t* v = t.const_data_ptr<scalar_t>();
    const int64_t stride = t.stride(0);
    for (int64_t i = 0; i < t.size(0); ++i) {
      const double x = static_cast<double>(v[i * stride]);
      POSENC_CHECK_ARG(std::isfinite(x), op, arg, "must be finite", arg, "[", i, "] = ", x);
    }
  });
}

// Grain for at::parallel_for over rows of `row_len` elements: about 32K elements a chunk.
inline int64_t row_grain(int64_t row_len) {
  return std::max<int64_t>(1, int64_t{1 << 15} / std::max<int64_t>(1, row_len));
}

}  // namespace detail
}  // namespace posenc

namespace posenc {
namespace detail {

// Relative ops form q_offset + i - (k_offset + j) in int64; offsets within +-2^61 (and lengths,
// bounded by memory) keep that from wrapping into a wrong distance.
constexpr int64_t kMaxOffset = int64_t{1} << 61;

template <typename Int>
inline void check_offsets(const char* op, const Int& q_offset, const Int& k_offset) {
  if (auto q = concrete(q_offset)) {
    POSENC_CHECK_ARG(*q >= -kMaxOffset && *q <= kMaxOffset, op, "q_offset",
                     "must be within [-2^61, 2^61]", *q);
  }
  if (auto k = concrete(k_offset)) {
    POSENC_CHECK_ARG(*k >= -kMaxOffset && *k <= kMaxOffset, op, "k_offset",
                     "must be within [-2^61, 2^61]", *k);
  }
}

}  // namespace detail
}  // namespace posenc
