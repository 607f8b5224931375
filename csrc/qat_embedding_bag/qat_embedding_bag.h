// Quantization-aware-training embedding bags: input checks shared by the CPU and CUDA kernels of
// qat_embedding_bag and qat_embedding_bag_backward (semantics: recsys_kernels/reference/qat_embedding_bag.py).
// The fake-quantization arithmetic is the INT4 storage's own (int4_embedding_bag.h), so that tables converted
// with to_int4() reproduce the QAT forward exactly.
#pragma once
#include "int4_embedding_bag/int4_embedding_bag.h"

namespace recsys {

struct QatShape : BagLayout {
  int64_t E = 0, D = 0;
  bool table_mode = false;  // qparams == "table"
};

inline QatShape check_qat_inputs(const at::Tensor& weight, const at::Tensor& indices, const at::Tensor& offsets,
                                 const std::optional<at::Tensor>& table_offsets, std::string_view pooling,
                                 const std::optional<at::Tensor>& per_sample_weights, std::string_view qparams,
                                 const std::optional<at::Tensor>& table_scale, std::string_view bounds_check) {
  check_dim(weight, 2, "weight", "(E, D)");
  TORCH_CHECK(weight.scalar_type() == at::kFloat || weight.scalar_type() == at::kDouble,
              "weight must be float32 (float64 for tests), got ", fmt(weight.scalar_type()));
  TORCH_CHECK(weight.size(0) >= 1, "weight must have at least one row, got ", fmt(weight.sizes()));
  TORCH_CHECK(weight.size(1) >= 2 && weight.size(1) % 2 == 0,
              "weight's D must be an even number >= 2 (INT4 rows pack two codes a byte), got D = ", fmt(weight.size(1)));
  TORCH_CHECK(weight.is_contiguous(), "weight must be contiguous (a table is never copied)");
  QatShape s;
  static_cast<BagLayout&>(s) =
      check_bag_layout(weight, "weight", indices, offsets, table_offsets, pooling, per_sample_weights, bounds_check);
  TORCH_CHECK(qparams == "row" || qparams == "table", "qparams must be 'row' or 'table', got '", fmt(std::string(qparams)),
              "'");
  s.table_mode = qparams == "table";
  if (s.table_mode) {
    TORCH_CHECK(table_scale.has_value(), "table_scale (T,) float32 is required with qparams='table'");
    TORCH_CHECK(table_scale->dim() == 1 && table_scale->size(0) == s.T, "table_scale must have shape (T,) = (", fmt(s.T),
                ",), got ", fmt(table_scale->sizes()));
    TORCH_CHECK(table_scale->scalar_type() == at::kFloat, "table_scale must be float32, got ",
                fmt(table_scale->scalar_type()));
    check_same_device(weight, "weight", *table_scale, "table_scale");
  }
  s.E = weight.size(0);
  s.D = weight.size(1);
  return s;
}

inline QatShape check_qat_backward_inputs(const at::Tensor& grad_output, const at::Tensor& indices,
                                          const at::Tensor& offsets, const std::optional<at::Tensor>& table_offsets,
                                          std::string_view pooling,
                                          const std::optional<at::Tensor>& per_sample_weights, int64_t num_rows) {
  check_dim(grad_output, 2, "grad_output", "(B, T*D)");
  TORCH_CHECK(grad_output.scalar_type() == at::kFloat || grad_output.scalar_type() == at::kDouble,
              "grad_output must be float32 (or float64), got ", fmt(grad_output.scalar_type()));
  QatShape s;
  static_cast<BagLayout&>(s) = check_bag_layout(grad_output, "grad_output", indices, offsets, table_offsets, pooling,
                                                per_sample_weights, "error");
  TORCH_CHECK(grad_output.size(0) == s.B && grad_output.size(1) % s.T == 0 && grad_output.size(1) / s.T >= 2,
              "grad_output must have shape (B, T*D) = (", fmt(s.B), ", ", fmt(s.T), "*D), got ", fmt(grad_output.sizes()));
  TORCH_CHECK(num_rows >= 1, "num_rows must be >= 1, got ", fmt(num_rows));
  s.E = num_rows;
  s.D = grad_output.size(1) / s.T;
  return s;
}

// bounds_check="error" on CPU data (defined in qat_embedding_bag_cpu.cpp; the CUDA kernel calls it on CPU copies
// once its device flag reports bad input): offsets and table_offsets int64 (undefined: one table).
void check_qat_values_cpu(const QatShape& s, const at::Tensor& indices, const at::Tensor& offsets,
                          const at::Tensor& table_offsets);

// Bag of position p: the largest k in [0, n_bags) with clamp(off[k], 0, N) <= p (the bag holding p for valid
// offsets, empty bags skipped); any offsets give some k in range, so a kernel never indexes out of bounds.
template <typename offset_t>
RECSYS_HOST_DEVICE int64_t bag_of_position(const offset_t* off, int64_t n_bags, int64_t p) {
  int64_t lo = 0, hi = n_bags - 1;
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) / 2;
    if (static_cast<int64_t>(off[mid]) <= p) lo = mid; else hi = mid - 1;
  }
  return lo;
}

}  // namespace recsys
