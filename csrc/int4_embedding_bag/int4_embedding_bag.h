// INT4 embedding rows in FBGEMM's TBE layout: the row format, the quantization arithmetic (host and device)
// and the input checks shared by the CPU and CUDA kernels of quantize_int4_rows, dequantize_int4_rows,
// int4_embedding_bag and qat_embedding_bag. The Python reference (recsys_kernels/reference/
// int4_embedding_bag.py) states the semantics; error messages here match its messages.
//
// Row: [fp16 scale][fp16 bias][D/2 bytes of codes, element 2k = low nibble of byte k][zero pad to 16 bytes].
// value = q * scale + bias. Quantization (FBGEMM's FloatToFusedNBitRowwiseQuantizedSBHalf arithmetic):
// bias = fp16(min), scale = fp16((max - bias) / 15) (1 if 0), q = clamp(rint((x - bias) * (1 / scale)), 0, 15).
#pragma once
#include <c10/util/Half.h>
#include <c10/util/Optional.h>

#include <cmath>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "common/checks.h"
#include "common/host_device.h"


namespace recsys {

constexpr int64_t kInt4QParamBytes = 4;
constexpr int64_t kInt4RowAlign = 16;

RECSYS_HOST_DEVICE int64_t int4_row_bytes(int64_t D) {
  return (kInt4QParamBytes + D / 2 + kInt4RowAlign - 1) / kInt4RowAlign * kInt4RowAlign;
}

RECSYS_HOST_DEVICE float round_to_half(float x) { return static_cast<float>(c10::Half(x)); }

struct Int4RowParams {
  float scale, bias, inv;
};

// Scale and bias (fp16 values, held in float) and the inverse scale of a row with minimum mn and maximum mx.
RECSYS_HOST_DEVICE Int4RowParams int4_row_params(float mn, float mx) {
  const float bias = round_to_half(mn);
  const float range = mx - bias;
  float scale = round_to_half(range == 0.f ? 1.f : range / 15.f);
  if (scale == 0.f) scale = 1.f;
  float inv = 1.f / scale;
  if (inv == INFINITY || inv == -INFINITY) scale = inv = 1.f;  // 1 / scale overflowed
  return {scale, bias, inv};
}

// Clamp to [lo, hi] (NaN -> lo) and round to nearest even, for the small integers of INT4 codes. On the host
// the extension is built for baseline x86-64, where rintf, fminf and fmaxf are libm calls per element (no
// SSE4.1 roundss): adding and subtracting 1.5 * 2^23 rounds |y| < 2^22 to nearest even in plain float adds,
// and the comparisons are min/max instructions, so the row loops vectorize (QAT forward 1.9-2.5x, RESULTS.md).
RECSYS_HOST_DEVICE float clamp_round(float y, float lo, float hi) {
#ifdef __CUDA_ARCH__
  return rintf(fminf(fmaxf(y, lo), hi));
#else
  y = y > lo ? y : lo;
  y = y < hi ? y : hi;
  constexpr float kRound = 12582912.f;  // 1.5 * 2^23
  return (y + kRound) - kRound;
#endif
}

// Code 0..15 of x. Clamping before rounding equals FBGEMM's clamp(lrintf(.)) for finite x (and maps NaN to 0).
RECSYS_HOST_DEVICE float int4_code(float x, float bias, float inv) { return clamp_round((x - bias) * inv, 0.f, 15.f); }

// DQRM per-table symmetric fake quantization: s = fp16(scale), q = clamp(rint(x / s), -8, 7) (x * (1/s)).
struct Int4TableParams {
  float scale, inv;
};

RECSYS_HOST_DEVICE Int4TableParams int4_table_params(float scale) {
  const float s = round_to_half(scale);
  return {s, s == 0.f ? 0.f : 1.f / s};
}

RECSYS_HOST_DEVICE float int4_table_value(float x, Int4TableParams p) { return clamp_round(x * p.inv, -8.f, 7.f) * p.scale; }

// ------------------------------------------------------------------------------------------------ checks

inline void check_int4_D(int64_t D, const std::string& name) {
  TORCH_CHECK(D >= 2 && D % 2 == 0, name, " must be an even number >= 2 (two INT4 codes per byte), got ", fmt(D));
}

inline void check_packed_row_bytes(const at::Tensor& packed, int64_t D) {
  TORCH_CHECK(packed.size(1) == int4_row_bytes(D), "packed has ", fmt(packed.size(1)), " bytes a row, but rows of D = ", fmt(D),
              " INT4 codes take row_bytes = ", fmt(int4_row_bytes(D)), " (4 bytes of fp16 scale and bias + D/2, padded to 16)");
}

// dequantize_int4_rows(packed (E, row_bytes) uint8, D, dtype): checks shared by every C++ backend.
inline void check_dequantize_inputs(const at::Tensor& packed, int64_t D, at::ScalarType dtype) {
  check_int4_D(D, "D");
  check_dim(packed, 2, "packed", "(E, row_bytes)");
  TORCH_CHECK(packed.scalar_type() == at::kByte, "packed must be uint8, got ", fmt(packed.scalar_type()));
  check_packed_row_bytes(packed, D);
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16 || dtype == at::kDouble,
              "dtype must be float32, float16, bfloat16 (or float64), got ", fmt(dtype));
}

inline void check_index_tensor(const at::Tensor& t, const char* name, const at::Tensor& like, const char* like_name,
                               const char* shape) {
  TORCH_CHECK(t.dim() == 1, name, " must have shape ", fmt(shape), ", got ", fmt(t.sizes()));
  TORCH_CHECK(t.scalar_type() == at::kInt || t.scalar_type() == at::kLong, name, " must be int32 or int64, got ",
              fmt(t.scalar_type()));
  check_same_device(like, like_name, t, name);
}

// The layout shared by the INT4 and QAT lookups: T tables, B samples, bags table-major.
struct BagLayout {
  int64_t T = 1, B = 0, N = 0;
  bool mean = false;
  bool error = true;  // bounds_check == "error"
};

inline BagLayout check_bag_layout(const at::Tensor& table, const char* table_name, const at::Tensor& indices,
                                  const at::Tensor& offsets, const std::optional<at::Tensor>& table_offsets,
                                  std::string_view pooling, const std::optional<at::Tensor>& per_sample_weights,
                                  std::string_view bounds_check) {
  check_index_tensor(indices, "indices", table, table_name, "(N,)");
  check_index_tensor(offsets, "offsets", table, table_name, "(T*B + 1,)");
  TORCH_CHECK(offsets.size(0) >= 1, "offsets must have T*B + 1 elements (at least one), got none");
  BagLayout s;
  if (table_offsets) {
    check_index_tensor(*table_offsets, "table_offsets", table, table_name, "(T + 1,)");
    s.T = table_offsets->size(0) - 1;
    TORCH_CHECK(s.T >= 1, "table_offsets must have shape (T + 1,) with T >= 1, got ", fmt(table_offsets->sizes()));
  }
  TORCH_CHECK((offsets.size(0) - 1) % s.T == 0, "offsets must have T*B + 1 elements for T = ", fmt(s.T),
              " tables, got ", fmt(offsets.size(0)));
  TORCH_CHECK(pooling == "sum" || pooling == "mean", "pooling must be 'sum' or 'mean', got '", fmt(std::string(pooling)), "'");
  TORCH_CHECK(bounds_check == "error" || bounds_check == "ignore", "bounds_check must be 'error' or 'ignore', got '",
              fmt(std::string(bounds_check)), "'");
  s.B = (offsets.size(0) - 1) / s.T;
  s.N = indices.size(0);
  s.mean = pooling == "mean";
  s.error = bounds_check == "error";
  if (per_sample_weights) {
    const auto& w = *per_sample_weights;
    TORCH_CHECK(w.dim() == 1 && w.size(0) == s.N, "per_sample_weights must have shape (N,) = (", fmt(s.N), ",), got ",
                fmt(w.sizes()));
    TORCH_CHECK(w.scalar_type() == at::kFloat || w.scalar_type() == at::kDouble,
                "per_sample_weights must be float32 (or float64), got ", fmt(w.scalar_type()));
    check_same_device(table, table_name, w, "per_sample_weights");
  }
  return s;
}

struct Int4BagShape : BagLayout {
  std::vector<int64_t> D, D_offsets, row_bytes;  // per table; D_offsets has T + 1 entries
  int64_t total_D = 0, max_D = 0, max_row_bytes = 0;
  bool uniform = true;  // every table has the same D
};

inline Int4BagShape check_int4_bag_inputs(const at::Tensor& packed, const at::Tensor& indices,
                                          const at::Tensor& offsets, c10::IntArrayRef D,
                                          const std::optional<at::Tensor>& table_offsets, std::string_view pooling,
                                          const std::optional<at::Tensor>& per_sample_weights,
                                          at::ScalarType output_dtype, std::string_view bounds_check) {
  TORCH_CHECK(packed.scalar_type() == at::kByte, "packed must be uint8 INT4 rows, got ", fmt(packed.scalar_type()));
  TORCH_CHECK(packed.dim() == 1 || packed.dim() == 2, "packed must have shape (E, row_bytes) or (total_bytes,), got ",
              fmt(packed.sizes()));
  TORCH_CHECK(packed.is_contiguous(), "packed must be contiguous (a table is never copied)");
  Int4BagShape s;
  static_cast<BagLayout&>(s) =
      check_bag_layout(packed, "packed", indices, offsets, table_offsets, pooling, per_sample_weights, bounds_check);
  TORCH_CHECK(static_cast<int64_t>(D.size()) == s.T, "D must give one dimension per table: ", fmt(s.T), " tables, got ",
              fmt(D.size()), " dims ", fmt(D));
  s.D_offsets.push_back(0);
  for (int64_t t = 0; t < s.T; ++t) {
    check_int4_D(D[t], "D[" + std::to_string(t) + "]");
    s.D.push_back(D[t]);
    s.row_bytes.push_back(int4_row_bytes(D[t]));
    s.D_offsets.push_back(s.D_offsets.back() + D[t]);
    s.max_D = std::max(s.max_D, D[t]);
    s.max_row_bytes = std::max(s.max_row_bytes, s.row_bytes.back());
    s.uniform = s.uniform && D[t] == D[0];
  }
  s.total_D = s.D_offsets.back();
  if (packed.dim() == 2) {
    TORCH_CHECK(s.uniform, "packed (E, row_bytes) holds tables of one D; for dims ", fmt(D),
                " pass the tables back to back as a flat (total_bytes,) uint8 tensor");
    check_packed_row_bytes(packed, D[0]);
  }
  TORCH_CHECK(output_dtype == at::kFloat || output_dtype == at::kHalf || output_dtype == at::kBFloat16,
              "output_dtype must be float32, float16 or bfloat16, got ", fmt(output_dtype));
  return s;
}

// --------------------------------------------------------------------------------- value checks (host)

// offsets from 0 to N, non-decreasing (CPU data).
template <typename offset_t>
void check_offsets_values(const offset_t* off, int64_t n_bags, int64_t N) {
  TORCH_CHECK(off[0] == 0 && off[n_bags] == N, "offsets must start at 0 and end at N = ", fmt(N),
              " (the number of indices), got ", fmt(static_cast<int64_t>(off[0])), " and ", fmt(static_cast<int64_t>(off[n_bags])));
  for (int64_t k = 0; k < n_bags; ++k)
    TORCH_CHECK(off[k] <= off[k + 1], "offsets must be non-decreasing, got ", fmt(static_cast<int64_t>(off[k])), " then ",
                fmt(static_cast<int64_t>(off[k + 1])), " at bag ", fmt(k));
}

// table_offsets start at 0 and never decrease (CPU data); the caller checks the end against its table.
template <typename to_t>
void check_table_offsets_values(const to_t* to, int64_t T) {
  TORCH_CHECK(to[0] == 0, "table_offsets must start at 0, got ", fmt(static_cast<int64_t>(to[0])));
  for (int64_t t = 0; t < T; ++t)
    TORCH_CHECK(to[t] <= to[t + 1], "table_offsets must be non-decreasing, got ", fmt(static_cast<int64_t>(to[t])),
                " then ", fmt(static_cast<int64_t>(to[t + 1])), " at table ", fmt(t));
}

[[noreturn]] inline void throw_index_error(int64_t p, int64_t value, int64_t t, int64_t rows) {
  TORCH_CHECK(false, "indices[", fmt(p), "] = ", fmt(value), " is out of range for table ", fmt(t), " with ", fmt(rows), " rows");
  __builtin_unreachable();
}

// bounds_check="error" on CPU data, with the reference's messages (defined in int4_embedding_bag_cpu.cpp; the
// CUDA kernels call it on CPU copies once their device flag reports bad input): table_offsets (int64, or
// undefined for one table), offsets (int64) and indices (contiguous).
void check_int4_bag_values_cpu(const Int4BagShape& s, int64_t capacity, const at::Tensor& indices,
                               const at::Tensor& offsets, const at::Tensor& table_offsets);

inline at::Tensor table_offsets_int64_cpu(const std::optional<at::Tensor>& table_offsets) {
  return table_offsets->to(at::kCPU, at::kLong).contiguous();
}

}  // namespace recsys
