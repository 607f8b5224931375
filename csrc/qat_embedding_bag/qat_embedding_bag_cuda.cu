// QAT embedding bags (DQRM, Zhou et al. 2023), CUDA kernels.
//
// Forward: one warp per bag. Lane l holds columns l, l + 32, ... (COLS = ceil(D / 32) rounded up to a power of
// two, D <= 1024), so a row is COLS coalesced 128-byte loads; the warp walks the bag U rows at a time (all U
// rows' loads issued before any is used). Each row is fake-quantized in registers: "row" reduces min and max
// over the warp with shuffles and applies the INT4 storage's own arithmetic (int4_embedding_bag.h); "table"
// uses the table's fp16 scale. Every column accumulates sequentially over the bag with the INT4 lookup's
// expressions (int4_embedding_bag_cuda.cuh), so the exported INT4 tables pool bit-identically.
//
// Backward (straight-through estimator): one thread per (occurrence, 4 columns). The occurrence's bag comes from
// a binary search over the offsets (every occurrence is written, whatever the offsets), its gradient row is
// grad_output[b, t*D:(t+1)*D] * w_p (/ L), written with 16-byte stores when D % 4 == 0: the values of the sparse
// COO gradient; rows[p] = table_offsets[t] + indices[p] (0 and a zero row for an index outside its table).
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include "int4_embedding_bag/int4_embedding_bag_cuda.cuh"
#include "qat_embedding_bag/qat_embedding_bag.h"

namespace recsys {
namespace qat_cuda {
namespace {

using namespace int4_cuda;
constexpr unsigned kFull = 0xffffffffu;
constexpr int kMaxD = 1024;

template <int COLS>
constexpr int rows_in_flight() {
  return COLS <= 4 ? 4 : (COLS <= 8 ? 2 : 1);
}

template <typename index_t, int COLS>
__global__ void __launch_bounds__(kThreads)
    qat_fwd_kernel(const float* __restrict__ weight, int64_t E, int D, const index_t* __restrict__ indices,
                   const int64_t* __restrict__ offsets, const int64_t* __restrict__ table_offsets,
                   const float* __restrict__ table_scale, const float* __restrict__ psw, float* __restrict__ out,
                   int64_t N, int64_t B, int64_t T, bool mean, bool check, int* __restrict__ err) {
  constexpr int U = rows_in_flight<COLS>();
  const int64_t k = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x & 31;
  if (k >= T * B) return;  // whole warps leave together
  const int64_t t = k / B, b = k - t * B;
  int64_t lo = 0, rows = E;
  int bad = 0;
  if (table_offsets) {
    lo = table_offsets[t];
    const int64_t hi = table_offsets[t + 1];
    rows = max(hi - lo, int64_t(0));
    if (b == 0 && (hi < lo || hi > E || table_offsets[0] != 0)) bad |= kBadTableOffsets;
  }
  int64_t start, stop;
  if (bag_range(offsets, k, T * B, N, start, stop)) bad |= kBadOffsets;
  Int4TableParams tparams{0.f, 0.f};
  if (table_scale) tparams = int4_table_params(table_scale[t]);
  const bool weighted = psw != nullptr;
  float acc[COLS];
#pragma unroll
  for (int i = 0; i < COLS; ++i) acc[i] = 0.f;
  for (int64_t p0 = start; p0 < stop; p0 += U) {
    float x[U][COLS];
    bool ok[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t p = p0 + u;
      const int64_t r = p < stop ? static_cast<int64_t>(indices[p]) : 0;
      const int64_t g = lo + r;
      ok[u] = p < stop && r >= 0 && r < rows && g >= 0 && g < E;
      if (p < stop && !ok[u]) bad |= kBadIndex;
      const float* row = weight + (ok[u] ? g : 0) * D;
#pragma unroll
      for (int i = 0; i < COLS; ++i) {
        const int d = lane + 32 * i;
        x[u][i] = ok[u] && d < D ? __ldg(row + d) : 0.f;
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      if (!ok[u]) continue;  // warp-uniform
      const float w = weighted ? psw[p0 + u] : 1.f;
      if (table_scale) {
#pragma unroll
        for (int i = 0; i < COLS; ++i) acc[i] = pool_add(acc[i], w, int4_table_value(x[u][i], tparams), weighted);
      } else {
        float mn = INFINITY, mx = -INFINITY;
#pragma unroll
        for (int i = 0; i < COLS; ++i) {
          if (lane + 32 * i < D) {
            mn = fminf(mn, x[u][i]);
            mx = fmaxf(mx, x[u][i]);
          }
        }
#pragma unroll
        for (int m = 16; m >= 1; m /= 2) {
          mn = fminf(mn, __shfl_xor_sync(kFull, mn, m));
          mx = fmaxf(mx, __shfl_xor_sync(kFull, mx, m));
        }
        const Int4RowParams q = int4_row_params(mn, mx);
#pragma unroll
        for (int i = 0; i < COLS; ++i) {
          const float v = fmaf(int4_code(x[u][i], q.bias, q.inv), q.scale, q.bias);
          acc[i] = pool_add(acc[i], w, v, weighted);
        }
      }
    }
  }
  if (mean && stop > start) {
    const float len = static_cast<float>(stop - start);
#pragma unroll
    for (int i = 0; i < COLS; ++i) acc[i] = acc[i] / len;
  }
  float* dst = out + b * T * D + t * D;
#pragma unroll
  for (int i = 0; i < COLS; ++i)
    if (lane + 32 * i < D) dst[lane + 32 * i] = acc[i];
  if (check && lane == 0) flag_error(err, bad);
}

template <typename index_t, int VEC>
__global__ void __launch_bounds__(kThreads)
    qat_bwd_kernel(const float* __restrict__ grad, int64_t g_stride, const index_t* __restrict__ indices,
                   const int64_t* __restrict__ offsets, const int64_t* __restrict__ table_offsets,
                   const float* __restrict__ psw, int64_t* __restrict__ rows_out, float* __restrict__ grad_rows,
                   int64_t N, int64_t B, int64_t T, int64_t E, int D, bool mean) {
  const int groups = (D + VEC - 1) / VEC;
  const int64_t item = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (item >= N * groups) return;
  const int64_t p = item / groups;
  const int d0 = static_cast<int>(item - p * groups) * VEC;
  const int64_t n_bags = T * B;
  const int64_t k = bag_of_position(offsets, n_bags, p);
  const int64_t t = k / B, b = k - t * B;
  const int64_t r = static_cast<int64_t>(indices[p]);
  int64_t lo = 0, rows = E;
  if (table_offsets) {
    lo = table_offsets[t];
    rows = max(table_offsets[t + 1] - lo, int64_t(0));
  }
  const bool keep = r >= 0 && r < rows && lo + r >= 0 && lo + r < E;
  if (d0 == 0) rows_out[p] = keep ? lo + r : 0;
  float scale = psw ? psw[p] : 1.f;
  float len = 1.f;
  if (mean) {
    const int64_t o0 = min(max(offsets[k], int64_t(0)), N), o1 = min(max(offsets[k + 1], int64_t(0)), N);
    len = static_cast<float>(max(o1 - o0, int64_t(1)));
  }
  const float* src = grad + b * g_stride + t * D + d0;
  float* dst = grad_rows + p * D + d0;
  if constexpr (VEC == 4) {
    float4 g = keep ? *reinterpret_cast<const float4*>(src) : make_float4(0.f, 0.f, 0.f, 0.f);
    g.x = g.x * scale; g.y = g.y * scale; g.z = g.z * scale; g.w = g.w * scale;
    if (mean) { g.x = g.x / len; g.y = g.y / len; g.z = g.z / len; g.w = g.w / len; }
    *reinterpret_cast<float4*>(dst) = g;
  } else {
    float g = keep ? src[0] * scale : 0.f;
    if (mean) g = g / len;
    dst[0] = g;
  }
}

void check_cuda(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor for the CUDA kernel, got ", fmt(t.device()));
}

int64_t blocks_for(int64_t threads) { return (threads + kThreads - 1) / kThreads; }

template <typename F>
void dispatch_cols(int64_t D, F&& f) {
  TORCH_CHECK(D <= kMaxD, "the CUDA QAT kernel takes D <= ", fmt(kMaxD), ", got D = ", fmt(D));
  const int64_t cols = (D + 31) / 32;
  if (cols <= 1) f(std::integral_constant<int, 1>{});
  else if (cols <= 2) f(std::integral_constant<int, 2>{});
  else if (cols <= 4) f(std::integral_constant<int, 4>{});
  else if (cols <= 8) f(std::integral_constant<int, 8>{});
  else if (cols <= 16) f(std::integral_constant<int, 16>{});
  else f(std::integral_constant<int, 32>{});
}

at::Tensor qat_embedding_bag_cuda(const at::Tensor& weight, const at::Tensor& indices, const at::Tensor& offsets,
                                  const std::optional<at::Tensor>& table_offsets, c10::string_view pooling,
                                  const std::optional<at::Tensor>& per_sample_weights, c10::string_view qparams,
                                  const std::optional<at::Tensor>& table_scale, c10::string_view bounds_check) {
  const auto s = check_qat_inputs(weight, indices, offsets, table_offsets, pooling, per_sample_weights, qparams,
                                  table_scale, bounds_check);
  check_cuda(weight, "weight");
  TORCH_CHECK(weight.scalar_type() == at::kFloat, "weight must be float32 for the CUDA kernel (float64: use the CPU "
              "or reference backend), got ", fmt(weight.scalar_type()));
  c10::cuda::CUDAGuard guard(weight.device());
  auto out = at::empty({s.B, s.T * s.D}, weight.options());
  const int64_t n_bags = s.T * s.B;
  at::Tensor to;
  if (table_offsets) to = table_offsets->to(at::kLong).contiguous();
  const auto idx = indices.contiguous();
  const auto off = offsets.to(at::kLong).contiguous();
  const auto check_on_cpu = [&] {
    check_qat_values_cpu(s, idx.cpu(), off.cpu(), table_offsets ? to.cpu() : at::Tensor());
  };
  if (n_bags == 0) {
    if (s.error) check_on_cpu();
    return out;
  }
  at::Tensor psw, err;
  if (per_sample_weights) psw = per_sample_weights->to(at::kFloat).contiguous();
  if (s.error) err = at::zeros({1}, weight.options().dtype(at::kInt));
  const auto scale = s.table_mode ? table_scale->contiguous() : at::Tensor();
  AT_DISPATCH_INDEX_TYPES(idx.scalar_type(), "qat_embedding_bag_cuda", [&] {
    dispatch_cols(s.D, [&](auto cols) {
      qat_fwd_kernel<index_t, decltype(cols)::value>
          <<<blocks_for(n_bags * 32), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
              weight.const_data_ptr<float>(), s.E, static_cast<int>(s.D), idx.const_data_ptr<index_t>(),
              off.const_data_ptr<int64_t>(), table_offsets ? to.const_data_ptr<int64_t>() : nullptr,
              s.table_mode ? scale.const_data_ptr<float>() : nullptr,
              per_sample_weights ? psw.const_data_ptr<float>() : nullptr, out.mutable_data_ptr<float>(), s.N, s.B,
              s.T, s.mean, s.error, s.error ? err.mutable_data_ptr<int>() : nullptr);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  if (s.error) raise_if_flagged(err, "qat_embedding_bag", check_on_cpu);
  return out;
}

std::tuple<at::Tensor, at::Tensor> qat_embedding_bag_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& indices, const at::Tensor& offsets,
    const std::optional<at::Tensor>& table_offsets, c10::string_view pooling,
    const std::optional<at::Tensor>& per_sample_weights, int64_t num_rows) {
  const auto s = check_qat_backward_inputs(grad_output, indices, offsets, table_offsets, pooling, per_sample_weights,
                                           num_rows);
  check_cuda(grad_output, "grad_output");
  TORCH_CHECK(grad_output.scalar_type() == at::kFloat, "grad_output must be float32 for the CUDA kernel, got ",
              fmt(grad_output.scalar_type()));
  c10::cuda::CUDAGuard guard(grad_output.device());
  const int64_t n_bags = s.T * s.B;
  if (n_bags == 0 || s.N == 0) {
    return {at::zeros({s.N}, indices.options().dtype(at::kLong)), at::zeros({s.N, s.D}, grad_output.options())};
  }
  auto rows = at::empty({s.N}, indices.options().dtype(at::kLong));
  auto grad_rows = at::empty({s.N, s.D}, grad_output.options());
  at::Tensor to, psw;
  if (table_offsets) to = table_offsets->to(at::kLong).contiguous();
  if (per_sample_weights) psw = per_sample_weights->to(at::kFloat).contiguous();
  const auto idx = indices.contiguous();
  const auto off = offsets.to(at::kLong).contiguous();
  const auto g = grad_output.contiguous();
  const bool vec = s.D % 4 == 0 && g.stride(0) % 4 == 0;
  AT_DISPATCH_INDEX_TYPES(idx.scalar_type(), "qat_embedding_bag_backward_cuda", [&] {
    const auto launch = [&](auto vec_c) {
      constexpr int VEC = decltype(vec_c)::value;
      qat_bwd_kernel<index_t, VEC><<<blocks_for(s.N * ((s.D + VEC - 1) / VEC)), kThreads, 0,
                                     c10::cuda::getCurrentCUDAStream()>>>(
          g.const_data_ptr<float>(), g.stride(0), idx.const_data_ptr<index_t>(), off.const_data_ptr<int64_t>(),
          table_offsets ? to.const_data_ptr<int64_t>() : nullptr,
          per_sample_weights ? psw.const_data_ptr<float>() : nullptr, rows.mutable_data_ptr<int64_t>(),
          grad_rows.mutable_data_ptr<float>(), s.N, s.B, s.T, s.E, static_cast<int>(s.D), s.mean);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    if (vec) launch(std::integral_constant<int, 4>{});
    else launch(std::integral_constant<int, 1>{});
  });
  return {rows, grad_rows};
}

}  // namespace
}  // namespace qat_cuda

TORCH_LIBRARY_IMPL(recsys, CUDA, m) {
  m.impl("qat_embedding_bag", &qat_cuda::qat_embedding_bag_cuda);
  m.impl("qat_embedding_bag_backward", &qat_cuda::qat_embedding_bag_backward_cuda);
}

}  // namespace recsys
