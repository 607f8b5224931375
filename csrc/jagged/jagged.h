// Jagged offsets: read and validate on the host (shared by the jagged helpers and HSTU attention).
#pragma once
#include <vector>

#include "common/checks.h"

namespace recsys {

// offsets (B + 1,) int32|int64 on the CPU -> int64 values; checks offsets[0] == 0, non-decreasing and
// offsets[B] <= total_len, naming ``name`` in every error.
inline std::vector<int64_t> read_offsets(const at::Tensor& offsets, int64_t total_len, const char* name) {
  check_dim(offsets, 1, name, "(B + 1,)");
  TORCH_CHECK(offsets.size(0) >= 1, name, " must have shape (B + 1,) with at least one element, got shape ",
              fmt(shape(offsets.sizes())));
  TORCH_CHECK(offsets.scalar_type() == at::kInt || offsets.scalar_type() == at::kLong, name,
              " must be int32 or int64, got ", fmt(offsets.scalar_type()));
  const auto c = offsets.contiguous();
  std::vector<int64_t> o(c.size(0));
  if (c.scalar_type() == at::kInt) {
    const int32_t* p = c.const_data_ptr<int32_t>();
    for (size_t i = 0; i < o.size(); ++i) o[i] = p[i];
  } else {
    const int64_t* p = c.const_data_ptr<int64_t>();
    for (size_t i = 0; i < o.size(); ++i) o[i] = p[i];
  }
  TORCH_CHECK(o[0] == 0, name, " must start at 0, got ", fmt(o[0]));
  for (size_t i = 1; i < o.size(); ++i)
    TORCH_CHECK(o[i] >= o[i - 1], name, " must be non-decreasing, got ", fmt(o[i - 1]), " then ", fmt(o[i]),
                " at position ", fmt(int64_t(i)));
  TORCH_CHECK(o.back() <= total_len, name, "[-1] = ", fmt(o.back()), " is past the number of rows L = ",
              fmt(total_len));
  return o;
}

// Checks shared by the CPU and CUDA kernels of the two copies (offsets read on the host: a sync on CUDA unless
// the caller passes them on the CPU).
// jagged_to_padded_dense: values (L, D), max_len >= 0 -> the offsets' values.
inline std::vector<int64_t> check_jagged_to_padded(const at::Tensor& values, const at::Tensor& offsets,
                                                   int64_t max_len) {
  check_dim(values, 2, "values", "(L, D)");
  check_device_or_cpu(values, "values", offsets, "offsets");
  TORCH_CHECK(max_len >= 0, "max_len must be >= 0, got ", fmt(max_len));
  return read_offsets(offsets.cpu(), values.size(0), "offsets");
}

// padded_dense_to_jagged: dense (B, N, D), offsets (B + 1,) ending at most at total_len >= 0.
inline std::vector<int64_t> check_padded_to_jagged(const at::Tensor& dense, const at::Tensor& offsets,
                                                   int64_t total_len) {
  check_dim(dense, 3, "dense", "(B, N, D)");
  check_device_or_cpu(dense, "dense", offsets, "offsets");
  TORCH_CHECK(total_len >= 0, "total_len must be >= 0, got ", fmt(total_len));
  auto o = read_offsets(offsets.cpu(), total_len, "offsets");
  TORCH_CHECK(static_cast<int64_t>(o.size()) == dense.size(0) + 1, "offsets must have shape (B + 1,) = (",
              fmt(dense.size(0) + 1), ",) for dense (B, N, D), got ", fmt(shape(offsets.sizes())));
  return o;
}

}  // namespace recsys
