// Shared input checks for every C++ kernel: errors name the offending argument.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace recsys {

// float64 is accepted for gradcheck and reference comparisons; kernels tune for the other three.
inline void check_float_dtype(const at::Tensor& t, const char* name) {
  const auto dt = t.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16 || dt == at::kDouble,
              name, " must be float32, float16, bfloat16 (or float64), got ", dt);
}

inline void check_dim(const at::Tensor& t, int64_t dim, const char* name, const char* shape) {
  TORCH_CHECK(t.dim() == dim, name, " must have shape ", shape, " (", dim, " dims), got ", t.dim(),
              " dims with sizes ", t.sizes());
}

inline void check_same_device(const at::Tensor& a, const char* an, const at::Tensor& b, const char* bn) {
  TORCH_CHECK(a.device() == b.device(), an, " and ", bn, " must be on the same device, got ", a.device(),
              " and ", b.device());
}

inline void check_same_dtype(const at::Tensor& a, const char* an, const at::Tensor& b, const char* bn) {
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), an, " and ", bn, " must have the same dtype, got ",
              a.scalar_type(), " and ", b.scalar_type());
}

}  // namespace recsys
