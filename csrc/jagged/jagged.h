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

}  // namespace recsys
