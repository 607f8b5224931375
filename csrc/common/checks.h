// Shared input checks for every C++ kernel: errors name the offending argument.
#pragma once
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <string>
#include <type_traits>

namespace recsys {

// Every non-literal argument of a TORCH_CHECK message goes through fmt(): integers and shapes become
// strings via std::to_string instead of the ostream inside c10::str. On the lent H100 (torch 2.11, extension
// built there) formatting an integer through that ostream crashed the process instead of raising.
inline std::string shape(at::IntArrayRef sizes) {
  std::string out = "(";
  for (size_t i = 0; i < sizes.size(); ++i) out += (i ? ", " : "") + std::to_string(sizes[i]);
  return out + (sizes.size() == 1 ? ",)" : ")");
}
inline std::string fmt(at::IntArrayRef sizes) { return shape(sizes); }
template <typename T>
decltype(auto) fmt(const T& v) {
  if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) return std::to_string(v);
  else if constexpr (std::is_floating_point_v<T>) return std::to_string(v);
  else return (v);
}

// float64 is accepted for gradcheck and reference comparisons; kernels tune for the other three.
inline void check_float_dtype(const at::Tensor& t, const char* name) {
  const auto dt = t.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16 || dt == at::kDouble,
              name, " must be float32, float16, bfloat16 (or float64), got ", dt);
}

inline void check_dim(const at::Tensor& t, int64_t dim, const char* name, const char* expected) {
  TORCH_CHECK(t.dim() == dim, name, " must have shape ", expected, " (", fmt(dim), " dims), got shape ",
              recsys::shape(t.sizes()));
}

inline void check_same_device(const at::Tensor& a, const char* an, const at::Tensor& b, const char* bn) {
  TORCH_CHECK(a.device() == b.device(), an, " and ", bn, " must be on the same device, got ", a.device(),
              " and ", b.device());
}

// Index tensors (offsets, num_targets) may sit on the CPU next to values on a device: the ops then read them on
// the host without a device sync, and copy them up themselves (index_on).
inline void check_device_or_cpu(const at::Tensor& values, const char* vn, const at::Tensor& idx, const char* in) {
  TORCH_CHECK(idx.device() == values.device() || idx.device().is_cpu(), in, " must be on ", vn, "'s device (",
              fmt(values.device().str()), ") or on the CPU, got ", fmt(idx.device().str()));
}

// idx on ``device``: itself (contiguous) when already there, else copied up through pinned memory without
// blocking the host (a copy from pageable memory could wait for the stream). The pinned buffer comes from
// torch's caching host allocator: Tensor::pin_memory() costs ~25-125 us of host time a call (it first asks the
// driver whether the source is pinned), which made it the largest host cost of a small HSTU step.
inline at::Tensor index_on(const at::Tensor& idx, const at::Device& device) {
  if (idx.device() == device) return idx.contiguous();
  auto pinned = at::empty(idx.sizes(), idx.options().pinned_memory(true));
  pinned.copy_(idx);
  return pinned.to(device, /*non_blocking=*/true);
}

inline void check_same_dtype(const at::Tensor& a, const char* an, const at::Tensor& b, const char* bn) {
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), an, " and ", bn, " must have the same dtype, got ",
              a.scalar_type(), " and ", b.scalar_type());
}

}  // namespace recsys
