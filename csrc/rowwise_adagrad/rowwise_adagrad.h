// Exact row-wise Adagrad (FBGEMM's EXACT_ROWWISE_ADAGRAD): hyper-parameters, the stochastic-rounding hash
// and the input checks shared by the CPU and CUDA kernels (and mirrored by the Triton kernel and the
// reference, recsys_kernels/reference/rowwise_adagrad.py).
//
// For every distinct row r touched by a step, with g = the sum of the gradient rows of its occurrences:
//   "l2":        g' = g + wd * w        (only inside the mean of squares; see correction below)
//   m_r       += mean_d(g'²)            (g' = g for "none" and "decoupled")
//   multiplier = lr / (sqrt(m_r) + eps)
//   correction = 1 - multiplier * wd  ("l2"),  1 - lr * wd  ("decoupled"),  1  ("none")
//   w_r        = correction * w_r - multiplier * g
// which is fbgemm_gpu/codegen/genscript/optimizers.py:rowwise_adagrad with weight_decay_mode 0, 1, 2.
#pragma once
#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "common/checks.h"
#include "common/host_device.h"


namespace recsys {

enum RowwiseWeightDecay : int { kWeightDecayNone = 0, kWeightDecayL2 = 1, kWeightDecayDecoupled = 2 };

struct RowwiseAdagradHyper {
  double lr;
  double eps;
  double weight_decay;
  int mode;             // RowwiseWeightDecay
  bool stochastic;      // stochastic rounding of fp16/bf16 weights
  uint32_t sr_key;      // per-call key derived from the seed
};

// 32-bit integer finaliser (the "lowbias32" mix); the same function in every backend so a seed means the
// same random bits everywhere.
RECSYS_HOST_DEVICE uint32_t rowwise_mix32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352dU;
  x ^= x >> 15;
  x *= 0x846ca68bU;
  x ^= x >> 16;
  return x;
}

inline uint32_t rowwise_sr_key(int64_t seed) {
  const uint64_t s = static_cast<uint64_t>(seed);
  return rowwise_mix32(static_cast<uint32_t>(s) ^ rowwise_mix32(static_cast<uint32_t>(s >> 32)));
}

// Per-row part of the hash; the element hash is rowwise_mix32(row_key ^ d).
RECSYS_HOST_DEVICE uint32_t rowwise_sr_row_key(uint32_t key, int64_t row) {
  const uint64_t r = static_cast<uint64_t>(row);
  return rowwise_mix32(rowwise_mix32(key ^ static_cast<uint32_t>(r)) ^ static_cast<uint32_t>(r >> 32));
}

// Stochastic rounding of a float32 bit pattern to a format that keeps the top (32 - drop) bits
// (drop = 16 for bfloat16, 13 for float16 in its normal range): add `drop` random bits and truncate.
// The result is exactly representable in the target format (fp16 subnormals round to nearest on conversion).
RECSYS_HOST_DEVICE uint32_t rowwise_sr_bits(uint32_t bits, uint32_t random, int drop) {
  if ((bits & 0x7f800000U) == 0x7f800000U) return bits;  // inf / nan pass through
  const uint32_t mask = (1U << drop) - 1U;
  return (bits + (random & mask)) & ~mask;
}

inline int parse_weight_decay_mode(std::string_view mode) {
  if (mode == "none") return kWeightDecayNone;
  if (mode == "l2") return kWeightDecayL2;
  if (mode == "decoupled") return kWeightDecayDecoupled;
  TORCH_CHECK(false, "weight_decay_mode must be 'none', 'l2' or 'decoupled', got '", fmt(std::string(mode)), "'");
  return 0;
}

inline bool parse_rowwise_pooling_mean(std::string_view pooling) {
  TORCH_CHECK(pooling == "sum" || pooling == "mean", "pooling must be 'sum' or 'mean', got '",
              fmt(std::string(pooling)), "'");
  return pooling == "mean";
}

inline RowwiseAdagradHyper check_rowwise_adagrad_hyper(double lr, double eps, double weight_decay,
                                                       std::string_view weight_decay_mode,
                                                       int64_t stochastic_rounding_seed) {
  TORCH_CHECK(std::isfinite(lr) && lr >= 0, "lr must be a finite number >= 0, got ", fmt(lr));
  TORCH_CHECK(std::isfinite(eps) && eps >= 0, "eps must be a finite number >= 0, got ", fmt(eps));
  TORCH_CHECK(std::isfinite(weight_decay) && weight_decay >= 0, "weight_decay must be a finite number >= 0, got ",
              fmt(weight_decay));
  TORCH_CHECK(stochastic_rounding_seed >= -1, "stochastic_rounding_seed must be -1 (off) or >= 0, got ",
              fmt(stochastic_rounding_seed));
  RowwiseAdagradHyper h;
  h.lr = lr;
  h.eps = eps;
  h.weight_decay = weight_decay;
  h.mode = parse_weight_decay_mode(weight_decay_mode);
  h.stochastic = stochastic_rounding_seed >= 0;
  h.sr_key = h.stochastic ? rowwise_sr_key(stochastic_rounding_seed) : 0U;
  return h;
}

inline void check_index_dtype(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kInt || t.scalar_type() == at::kLong, name, " must be int32 or int64, got ",
              fmt(t.scalar_type()));
}

// weight (E, D) contiguous float, momentum (E,) float32 (float64 only beside a float64 weight).
inline void check_rowwise_state(const at::Tensor& weight, const at::Tensor& momentum) {
  check_dim(weight, 2, "weight", "(E, D)");
  check_float_dtype(weight, "weight");
  TORCH_CHECK(weight.size(1) >= 1, "weight must have at least one column (D >= 1), got ", fmt(weight.sizes()));
  TORCH_CHECK(weight.is_contiguous(), "weight must be contiguous (it is updated in place), got strides ",
              fmt(weight.strides()));
  check_dim(momentum, 1, "momentum", "(E,)");
  const bool f64 = weight.scalar_type() == at::kDouble;
  TORCH_CHECK(momentum.scalar_type() == at::kFloat || (f64 && momentum.scalar_type() == at::kDouble),
              "momentum must be float32 (float64 only beside a float64 weight), got ", fmt(momentum.scalar_type()));
  TORCH_CHECK(momentum.size(0) == weight.size(0), "momentum must have shape (E,) = (", fmt(weight.size(0)),
              ",) like weight's rows, got ", fmt(momentum.sizes()));
  TORCH_CHECK(momentum.is_contiguous(), "momentum must be contiguous (it is updated in place)");
  check_same_device(weight, "weight", momentum, "momentum");
}

// Gradients come in the weight's dtype or in float32.
inline void check_rowwise_grad_dtype(const at::Tensor& grad, const char* name, const at::Tensor& weight) {
  TORCH_CHECK(grad.scalar_type() == weight.scalar_type() || grad.scalar_type() == at::kFloat, name,
              " must have weight's dtype (", fmt(weight.scalar_type()), ") or float32, got ", fmt(grad.scalar_type()));
}

struct RowwiseUpdateShape {
  int64_t E, D, N;
};

inline RowwiseUpdateShape check_rowwise_update_inputs(const at::Tensor& weight, const at::Tensor& momentum,
                                                      const at::Tensor& indices, const at::Tensor& grad_rows) {
  check_rowwise_state(weight, momentum);
  check_dim(indices, 1, "indices", "(N,)");
  check_index_dtype(indices, "indices");
  check_dim(grad_rows, 2, "grad_rows", "(N, D)");
  check_rowwise_grad_dtype(grad_rows, "grad_rows", weight);
  check_same_device(weight, "weight", indices, "indices");
  check_same_device(weight, "weight", grad_rows, "grad_rows");
  TORCH_CHECK(grad_rows.size(0) == indices.size(0) && grad_rows.size(1) == weight.size(1),
              "grad_rows must have shape (N, D) = (", fmt(indices.size(0)), ", ", fmt(weight.size(1)), "), got ",
              fmt(grad_rows.sizes()));
  return {weight.size(0), weight.size(1), indices.size(0)};
}

struct RowwiseFusedShape {
  int64_t E, D, N, T, B;
  bool mean;
};

// offsets (T*B + 1,) table-major (bag t*B + b is sample b of table t); table_offsets (T + 1,) row offsets of
// the tables in the concatenated weight (None: one table, T = 1); grad_output (B, T*D).
inline RowwiseFusedShape check_rowwise_fused_inputs(const at::Tensor& weight, const at::Tensor& momentum,
                                                    const at::Tensor& indices, const at::Tensor& offsets,
                                                    const at::Tensor& grad_output,
                                                    const std::optional<at::Tensor>& table_offsets,
                                                    std::string_view pooling,
                                                    const std::optional<at::Tensor>& per_sample_weights) {
  check_rowwise_state(weight, momentum);
  check_dim(indices, 1, "indices", "(N,)");
  check_index_dtype(indices, "indices");
  check_dim(offsets, 1, "offsets", "(T*B + 1,)");
  check_index_dtype(offsets, "offsets");
  TORCH_CHECK(offsets.size(0) >= 1, "offsets must have at least one element (T*B + 1), got none");
  check_same_device(weight, "weight", indices, "indices");
  check_same_device(weight, "weight", offsets, "offsets");
  int64_t T = 1;
  if (table_offsets.has_value()) {
    check_dim(*table_offsets, 1, "table_offsets", "(T + 1,)");
    check_index_dtype(*table_offsets, "table_offsets");
    TORCH_CHECK(table_offsets->size(0) >= 2, "table_offsets must have shape (T + 1,) with T >= 1, got ",
                fmt(table_offsets->sizes()));
    check_same_device(weight, "weight", *table_offsets, "table_offsets");
    T = table_offsets->size(0) - 1;
  }
  const int64_t bags = offsets.size(0) - 1;
  TORCH_CHECK(bags % T == 0, "offsets must have T*B + 1 elements for T = ", fmt(T), " tables, got ", fmt(offsets.size(0)));
  const int64_t B = bags / T;
  const int64_t D = weight.size(1);
  check_dim(grad_output, 2, "grad_output", "(B, T*D)");
  check_rowwise_grad_dtype(grad_output, "grad_output", weight);
  check_same_device(weight, "weight", grad_output, "grad_output");
  TORCH_CHECK(grad_output.size(0) == B && grad_output.size(1) == T * D, "grad_output must have shape (B, T*D) = (",
              fmt(B), ", ", fmt(T * D), "), got ", fmt(grad_output.sizes()));
  const bool mean = parse_rowwise_pooling_mean(pooling);
  if (per_sample_weights.has_value()) {
    TORCH_CHECK(!mean, "per_sample_weights is only supported with pooling='sum'");
    check_dim(*per_sample_weights, 1, "per_sample_weights", "(N,)");
    check_float_dtype(*per_sample_weights, "per_sample_weights");
    TORCH_CHECK(per_sample_weights->size(0) == indices.size(0), "per_sample_weights must have shape (N,) = (",
                fmt(indices.size(0)), ",), got ", fmt(per_sample_weights->sizes()));
    check_same_device(weight, "weight", *per_sample_weights, "per_sample_weights");
  }
  return {weight.size(0), D, indices.size(0), T, B, mean};
}

}  // namespace recsys
