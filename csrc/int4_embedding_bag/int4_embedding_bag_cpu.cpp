// INT4 rows (FBGEMM TBE layout), CPU kernels: quantize_int4_rows and dequantize_int4_rows parallel over rows,
// int4_embedding_bag parallel over the T*B bags (int4_pool_cpu.h).
//
// Row-wise asymmetric 4-bit quantization with fp16 scale and bias is FBGEMM's "fused N-bit rowwise" format
// (Khudia et al., "FBGEMM: Enabling High-Performance Low-Precision Deep Learning Inference", 2021); the
// lookup dequantizes each code as q * scale + bias in float32 (exact: a 4-bit code times an fp16 scale fits
// float32's mantissa, so only the bias add rounds) and pools in float32.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <cstring>

#include "int4_embedding_bag/int4_embedding_bag.h"
#include "int4_embedding_bag/int4_pool_cpu.h"

namespace recsys {
namespace {

void check_cpu(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor for the CPU kernel, got ", fmt(t.device()));
}

inline void write_qparams(uint8_t* row, float scale, float bias) {
  const c10::Half sb[2] = {c10::Half(scale), c10::Half(bias)};
  std::memcpy(row, sb, kInt4QParamBytes);
}

inline void read_qparams(const uint8_t* row, float& scale, float& bias) {
  c10::Half sb[2];
  std::memcpy(sb, row, kInt4QParamBytes);
  scale = static_cast<float>(sb[0]);
  bias = static_cast<float>(sb[1]);
}

template <typename scalar_t>
void quantize_kernel(const scalar_t* w, uint8_t* out, int64_t E, int64_t D) {
  const int64_t rb = int4_row_bytes(D);
  at::parallel_for(0, E, std::max<int64_t>(1, 16384 / D), [&](int64_t begin, int64_t end) {
    std::vector<float> x(D);
    for (int64_t e = begin; e < end; ++e) {
      float mn = INFINITY, mx = -INFINITY;
      for (int64_t d = 0; d < D; ++d) {
        x[d] = static_cast<float>(w[e * D + d]);
        mn = std::min(mn, x[d]);
        mx = std::max(mx, x[d]);
      }
      const Int4RowParams p = int4_row_params(mn, mx);
      uint8_t* row = out + e * rb;
      write_qparams(row, p.scale, p.bias);
      uint8_t* data = row + kInt4QParamBytes;
      for (int64_t k = 0; k < D / 2; ++k) {
        const auto lo = static_cast<uint8_t>(int4_code(x[2 * k], p.bias, p.inv));
        const auto hi = static_cast<uint8_t>(int4_code(x[2 * k + 1], p.bias, p.inv));
        data[k] = static_cast<uint8_t>(lo | (hi << 4));
      }
      std::fill(data + D / 2, row + rb, uint8_t(0));
    }
  });
}

// The D values of one row, q * scale + bias in acc_t.
template <typename acc_t>
inline void dequantize_row(const uint8_t* row, int64_t D, acc_t* v) {
  float scale, bias;
  read_qparams(row, scale, bias);
  const uint8_t* data = row + kInt4QParamBytes;
  const acc_t s = scale, b = bias;
  for (int64_t k = 0; k < D / 2; ++k) {
    v[2 * k] = static_cast<acc_t>(data[k] & 15) * s + b;
    v[2 * k + 1] = static_cast<acc_t>(data[k] >> 4) * s + b;
  }
}

at::Tensor quantize_int4_rows_cpu(const at::Tensor& weight) {
  check_dim(weight, 2, "weight", "(E, D)");
  check_float_dtype(weight, "weight");
  check_int4_D(weight.size(1), "weight.shape[1] (D)");
  check_cpu(weight, "weight");
  const int64_t E = weight.size(0), D = weight.size(1);
  auto out = at::empty({E, int4_row_bytes(D)}, weight.options().dtype(at::kByte));
  const auto w = weight.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, w.scalar_type(), "quantize_int4_rows_cpu", [&] {
    quantize_kernel<scalar_t>(w.const_data_ptr<scalar_t>(), out.mutable_data_ptr<uint8_t>(), E, D);
  });
  return out;
}

at::Tensor dequantize_int4_rows_cpu(const at::Tensor& packed, int64_t D, at::ScalarType dtype) {
  check_dequantize_inputs(packed, D, dtype);
  check_cpu(packed, "packed");
  const int64_t E = packed.size(0), rb = packed.size(1);
  auto out = at::empty({E, D}, packed.options().dtype(dtype));
  const auto p = packed.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "dequantize_int4_rows_cpu", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    const uint8_t* src = p.const_data_ptr<uint8_t>();
    scalar_t* dst = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, E, std::max<int64_t>(1, 16384 / D), [&](int64_t begin, int64_t end) {
      std::vector<acc_t> v(D);
      for (int64_t e = begin; e < end; ++e) {
        dequantize_row<acc_t>(src + e * rb, D, v.data());
        for (int64_t d = 0; d < D; ++d) dst[e * D + d] = static_cast<scalar_t>(v[d]);
      }
    });
  });
  return out;
}

at::Tensor int4_embedding_bag_cpu(const at::Tensor& packed, const at::Tensor& indices, const at::Tensor& offsets,
                                  c10::IntArrayRef D, const std::optional<at::Tensor>& table_offsets,
                                  c10::string_view pooling, const std::optional<at::Tensor>& per_sample_weights,
                                  at::ScalarType output_dtype, c10::string_view bounds_check) {
  const auto s = check_int4_bag_inputs(packed, indices, offsets, D, table_offsets, pooling, per_sample_weights,
                                       output_dtype, bounds_check);
  check_cpu(packed, "packed");
  auto out = at::zeros({s.B, s.total_D}, packed.options().dtype(output_dtype));
  const auto off = offsets.to(at::kLong).contiguous();
  const int64_t* offp = off.const_data_ptr<int64_t>();
  const int64_t capacity = packed.numel();
  at::Tensor to;
  if (table_offsets) to = table_offsets_int64_cpu(table_offsets);
  const int64_t* top = table_offsets ? to.const_data_ptr<int64_t>() : nullptr;
  const auto ext = table_extents(top, s.T, s.row_bytes, capacity, /*contiguous_rows=*/false);
  const auto idx = indices.contiguous();
  if (s.error) check_int4_bag_values_cpu(s, capacity, idx, off, to);
  at::Tensor psw;
  if (per_sample_weights) psw = per_sample_weights->to(at::kFloat).contiguous();
  const uint8_t* base = packed.const_data_ptr<uint8_t>();
  AT_DISPATCH_INDEX_TYPES(idx.scalar_type(), "int4_embedding_bag_cpu", [&] {
    const index_t* ip = idx.const_data_ptr<index_t>();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, output_dtype, "int4_embedding_bag_cpu_out", [&] {
      const auto row_fn = [&](int64_t t, int64_t r, float* v) {
        dequantize_row<float>(base + ext[t].base + r * s.row_bytes[t], s.D[t], v);
      };
      pool_bags_cpu<float>(s, ext, s.D, s.D_offsets, s.max_D, ip, offp,
                           per_sample_weights ? psw.const_data_ptr<float>() : nullptr,
                           out.mutable_data_ptr<scalar_t>(), s.total_D, row_fn);
    });
  });
  return out;
}

}  // namespace

void check_int4_bag_values_cpu(const Int4BagShape& s, int64_t capacity, const at::Tensor& indices,
                               const at::Tensor& offsets, const at::Tensor& table_offsets) {
  const int64_t* offp = offsets.const_data_ptr<int64_t>();
  const int64_t* top = table_offsets.defined() ? table_offsets.const_data_ptr<int64_t>() : nullptr;
  const auto ext = table_extents(top, s.T, s.row_bytes, capacity, /*contiguous_rows=*/false);
  if (top) {
    check_table_offsets_values(top, s.T);
    int64_t need = 0;
    for (int64_t t = 0; t < s.T; ++t) need += ext[t].rows * s.row_bytes[t];
    TORCH_CHECK(need <= capacity, "table_offsets describe ", fmt(need), " bytes of INT4 rows (dims ", fmt(c10::IntArrayRef(s.D)),
                "), but packed holds ", fmt(capacity));
  }
  check_offsets_values(offp, s.T * s.B, s.N);
  AT_DISPATCH_INDEX_TYPES(indices.scalar_type(), "check_int4_bag_values_cpu", [&] {
    check_indices_values(indices.const_data_ptr<index_t>(), offp, s, ext);
  });
}

TORCH_LIBRARY_IMPL(recsys, CPU, m) {
  m.impl("quantize_int4_rows", &quantize_int4_rows_cpu);
  m.impl("dequantize_int4_rows", &dequantize_int4_rows_cpu);
  m.impl("int4_embedding_bag", &int4_embedding_bag_cpu);
}

}  // namespace recsys
