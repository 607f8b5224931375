// QAT embedding bags (DQRM, Zhou et al. 2023), CUDA kernels.
//
// Forward: S lanes per bag (a warp; or 8 lanes, four bags a warp, when bags average fewer than 8 lookups and
// D <= 128, so that a warp has four rows in flight where one bag of one lookup would give it one). Lane l holds
// columns l, l + S, ... (COLS = ceil(D / S) rounded up to a power of two, D <= 1024), so a row is COLS coalesced
// loads; the lanes walk the bag U rows at a time (all U rows' loads issued before any is used). Each row is
// fake-quantized in registers: "row" reduces min and max over the bag's lanes with shuffles and applies the INT4
// storage's own arithmetic (int4_embedding_bag.h); "table" uses the table's fp16 scale. Every column accumulates
// sequentially over the bag with the INT4 lookup's expressions (int4_embedding_bag_cuda.cuh), so the exported
// INT4 tables pool bit-identically.
//
// Backward (straight-through estimator): one warp per G consecutive bags (G about 32 / the mean bag length),
// walking their positions 32 at a time: coalesced index (and weight) reads, each position's bag counted from
// the G bag starts the lanes hold, then the gradient rows one after another, grad_output[b, t*D:(t+1)*D] * w_p
// (/ L) written with coalesced 16-byte stores when D % 4 == 0 (several rows at once for small D): the values of
// the sparse COO gradient; rows[p] = table_offsets[t] + indices[p] (0 and a zero row for an index outside its
// table). An earlier version ran a thread per (position, 4 columns) that found its bag by binary search: 32
// searches of 16 dependent loads per lookup at D = 128 (H100: about 1.5 ms of a 2.0 ms step at E = 4M, L = 32).
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

template <typename index_t, typename offset_t, int COLS, int S>
__global__ void __launch_bounds__(kThreads)
    qat_fwd_kernel(const float* __restrict__ weight, int64_t E, int D, const index_t* __restrict__ indices,
                   const offset_t* __restrict__ offsets, const int64_t* __restrict__ table_offsets,
                   const float* __restrict__ table_scale, const float* __restrict__ psw, float* __restrict__ out,
                   int64_t N, int64_t B, int64_t T, bool mean, bool check, int* __restrict__ err) {
  constexpr int U = rows_in_flight<COLS>();
  const int64_t k = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / S;
  const int lane = threadIdx.x & (S - 1);
  // The S lanes of one bag: they take the same branches, so their shuffles need no other lanes.
  const unsigned group = S == 32 ? kFull : ((1u << S) - 1u) << (threadIdx.x & 31 & ~(S - 1));
  if (k >= T * B) return;  // whole lane groups leave together
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
        const int d = lane + S * i;
        x[u][i] = ok[u] && d < D ? __ldg(row + d) : 0.f;
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      if (!ok[u]) continue;  // uniform over the lane group
      const float w = weighted ? psw[p0 + u] : 1.f;
      if (table_scale) {
#pragma unroll
        for (int i = 0; i < COLS; ++i) acc[i] = pool_add(acc[i], w, int4_table_value(x[u][i], tparams), weighted);
      } else {
        float mn = INFINITY, mx = -INFINITY;
#pragma unroll
        for (int i = 0; i < COLS; ++i) {
          if (lane + S * i < D) {
            mn = fminf(mn, x[u][i]);
            mx = fmaxf(mx, x[u][i]);
          }
        }
#pragma unroll
        for (int m = S / 2; m >= 1; m /= 2) {
          mn = fminf(mn, __shfl_xor_sync(group, mn, m, S));
          mx = fmaxf(mx, __shfl_xor_sync(group, mx, m, S));
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
    if (lane + S * i < D) dst[lane + S * i] = acc[i];
  if (check && lane == 0) flag_error(err, bad);
}

// VEC floats of a bag's pooled gradient at grad + src + d (src < 0: a zero row).
template <int VEC>
__device__ __forceinline__ std::conditional_t<VEC == 4, float4, float> load_grad(const float* __restrict__ grad,
                                                                                  int64_t src, int d) {
  if constexpr (VEC == 4) {
    return src >= 0 ? __ldg(reinterpret_cast<const float4*>(grad + src + d)) : make_float4(0.f, 0.f, 0.f, 0.f);
  } else {
    return src >= 0 ? __ldg(grad + src + d) : 0.f;
  }
}

// dst[0, VEC) = g * w (/ len for "mean"), the reference's two roundings. (Plain stores: streaming ones,
// __stcs, measured 0.8% slower on the H100 at 26 tables, L = 1.)
template <int VEC>
__device__ __forceinline__ void store_grad(float* __restrict__ dst, std::conditional_t<VEC == 4, float4, float> g,
                                           float w, float len, bool mean) {
  if constexpr (VEC == 4) {
    g.x = g.x * w; g.y = g.y * w; g.z = g.z * w; g.w = g.w * w;
    if (mean) { g.x = g.x / len; g.y = g.y / len; g.z = g.z / len; g.w = g.w / len; }
    *reinterpret_cast<float4*>(dst) = g;
  } else {
    g = g * w;
    if (mean) g = g / len;
    *dst = g;
  }
}

// The gradient rows of positions p0 .. p0 + n (n <= 32) when a row is at most one VEC-vector a lane (lane col of
// each row writes columns [col * VEC, col * VEC + VEC) if active): kRows rows' loads in flight before their stores
// (one row at a time left a warp a single 512-byte load in flight at D = 128). src / w / len: lane i's position's
// values, shuffled to the lanes that write its row.
template <int VEC>
__device__ __forceinline__ void write_short_rows(const float* __restrict__ grad, float* __restrict__ grad_rows,
                                                 int64_t p0, int n, int D, int64_t src, float w, float len, bool mean,
                                                 int rows_at_once, int sub, int col, bool active) {
  constexpr int kRows = 4;
  const int d = col * VEC;
  for (int i0 = 0; i0 < n; i0 += rows_at_once * kRows) {
    std::conditional_t<VEC == 4, float4, float> g[kRows];
    float w_u[kRows], len_u[kRows];
#pragma unroll
    for (int u = 0; u < kRows; ++u) {
      const int i = i0 + u * rows_at_once + sub;
      const int64_t src_i = __shfl_sync(kFull, src, i & 31);
      w_u[u] = __shfl_sync(kFull, w, i & 31);
      len_u[u] = __shfl_sync(kFull, len, i & 31);
      g[u] = load_grad<VEC>(grad, active && i < n ? src_i : -1, d);
    }
#pragma unroll
    for (int u = 0; u < kRows; ++u) {
      const int i = i0 + u * rows_at_once + sub;
      if (active && i < n) store_grad<VEC>(grad_rows + (p0 + i) * D + d, g[u], w_u[u], len_u[u], mean);
    }
  }
}

template <typename index_t, typename offset_t, int VEC>
__global__ void __launch_bounds__(kThreads)
    qat_bwd_kernel(const float* __restrict__ grad, int64_t g_stride, const index_t* __restrict__ indices,
                   const offset_t* __restrict__ offsets, const int64_t* __restrict__ table_offsets,
                   const float* __restrict__ psw, int64_t* __restrict__ rows_out, float* __restrict__ grad_rows,
                   int64_t N, int64_t B, int64_t T, int64_t E, int D, int G, bool mean) {
  const int64_t n_bags = T * B;
  const int64_t k0 = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32 * G;
  const int lane = threadIdx.x & 31;
  if (k0 >= n_bags) return;  // whole warps leave together
  const int n_group = static_cast<int>(min(static_cast<int64_t>(G), n_bags - k0));
  const auto clamped = [&](int64_t k) { return min(max(static_cast<int64_t>(offsets[k]), int64_t(0)), N); };
  // Lane j < n_group holds x_j, the clamped start of bag k0 + j; end: the group's end.
  const int64_t x = lane < n_group ? clamped(k0 + lane) : N;
  const int64_t end = clamped(k0 + n_group);
  // Positions [x_0, end), except that the first group starts at 0 and the last ends at N: the groups cover [0, N)
  // for any offsets (no gradient row left unwritten), each position once for offsets the forward accepts.
  const int64_t first = k0 == 0 ? 0 : __shfl_sync(kFull, x, 0);
  const int64_t last = k0 + n_group == n_bags ? N : end;
  // Lanes a gradient row (a power of two covering its VEC-float groups, at most 32) and rows at once.
  const int groups = (D + VEC - 1) / VEC;
  int per_row = 1;
  while (per_row < groups && per_row < 32) per_row *= 2;
  const int rows_at_once = 32 / per_row, sub = lane / per_row, col = lane % per_row;
  for (int64_t p0 = first; p0 < last; p0 += 32) {
    // 32 positions a step, one a lane: its bag (k0 + the group's later bags that start at or before it), row
    // number, weight (with 1 / L for "mean") and gradient source row.
    const int64_t p = p0 + lane;
    const bool in = p < last;
    int j = 0;
    for (int i = 1; i < n_group; ++i) j += __shfl_sync(kFull, x, i) <= p;
    const int64_t k = k0 + j;
    const int64_t t = k / B, b = k - t * B;
    const int64_t r = in ? static_cast<int64_t>(indices[p]) : -1;
    int64_t lo = 0, rows = E;
    if (table_offsets && in) {
      lo = table_offsets[t];
      rows = max(table_offsets[t + 1] - lo, int64_t(0));
    }
    const bool keep = in && r >= 0 && r < rows && lo + r >= 0 && lo + r < E;
    if (in) rows_out[p] = keep ? lo + r : 0;
    const float w = in && psw ? psw[p] : 1.f;
    float len = 1.f;
    if (mean) {
      const int64_t o0 = __shfl_sync(kFull, x, j), next = __shfl_sync(kFull, x, (j + 1) & 31);  // all lanes shuffle
      len = static_cast<float>(max((j + 1 < n_group ? next : end) - o0, int64_t(1)));
    }
    const int64_t src_at = keep ? b * g_stride + t * D : -1;
    const int n = static_cast<int>(min(last - p0, int64_t(32)));
    if (groups <= per_row) {
      write_short_rows<VEC>(grad, grad_rows, p0, n, D, src_at, w, len, mean, rows_at_once, sub, col, col < groups);
      continue;
    }
    for (int i0 = 0; i0 < n; i0 += rows_at_once) {  // rows of more than 32 vectors: a lane loops over its own
      const int i = i0 + sub;
      const int64_t src_i = __shfl_sync(kFull, src_at, i & 31);
      const float w_i = __shfl_sync(kFull, w, i & 31), len_i = __shfl_sync(kFull, len, i & 31);
      if (i >= n) continue;
      for (int v = col; v < groups; v += per_row) {
        store_grad<VEC>(grad_rows + (p0 + i) * D + v * VEC, load_grad<VEC>(grad, src_i, v * VEC), w_i, len_i, mean);
      }
    }
  }
}

void check_cuda(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor for the CUDA kernel, got ", fmt(t.device()));
}

int64_t blocks_for(int64_t threads) { return (threads + kThreads - 1) / kThreads; }

// Lanes a bag: 32 (a warp), or 8 for short bags of D <= 128 — four bags a warp, so four rows in flight where a
// warp-per-bag kernel has one (Criteo's L = 1). COLS: columns a lane, ceil(D / S) rounded up to a power of two.
template <typename F>
void dispatch_cols(int64_t D, bool short_bags, F&& f) {
  TORCH_CHECK(D <= kMaxD, "the CUDA QAT kernel takes D <= ", fmt(kMaxD), ", got D = ", fmt(D));
  using std::integral_constant;
  if (short_bags && D <= 128) {
    const int64_t cols = (D + 7) / 8;
    if (cols <= 4) f(integral_constant<int, 4>{}, integral_constant<int, 8>{});
    else if (cols <= 8) f(integral_constant<int, 8>{}, integral_constant<int, 8>{});
    else f(integral_constant<int, 16>{}, integral_constant<int, 8>{});
    return;
  }
  const int64_t cols = (D + 31) / 32;
  if (cols <= 1) f(integral_constant<int, 1>{}, integral_constant<int, 32>{});
  else if (cols <= 2) f(integral_constant<int, 2>{}, integral_constant<int, 32>{});
  else if (cols <= 4) f(integral_constant<int, 4>{}, integral_constant<int, 32>{});
  else if (cols <= 8) f(integral_constant<int, 8>{}, integral_constant<int, 32>{});
  else if (cols <= 16) f(integral_constant<int, 16>{}, integral_constant<int, 32>{});
  else f(integral_constant<int, 32>{}, integral_constant<int, 32>{});
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
  const auto off = offsets.contiguous();  // int32 or int64, read as it is (no conversion pass)
  const auto check_on_cpu = [&] {
    check_qat_values_cpu(s, idx.cpu(), off.to(at::kCPU, at::kLong), table_offsets ? to.cpu() : at::Tensor());
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
    using idx_t = index_t;
    AT_DISPATCH_INDEX_TYPES(off.scalar_type(), "qat_embedding_bag_cuda_offsets", [&] {
      using off_t = index_t;
      dispatch_cols(s.D, s.N < 8 * n_bags, [&](auto cols, auto lanes) {
        constexpr int S = decltype(lanes)::value;
        qat_fwd_kernel<idx_t, off_t, decltype(cols)::value, S>
            <<<blocks_for(n_bags * S), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
                weight.const_data_ptr<float>(), s.E, static_cast<int>(s.D), idx.const_data_ptr<idx_t>(),
                off.const_data_ptr<off_t>(), table_offsets ? to.const_data_ptr<int64_t>() : nullptr,
                s.table_mode ? scale.const_data_ptr<float>() : nullptr,
                per_sample_weights ? psw.const_data_ptr<float>() : nullptr, out.mutable_data_ptr<float>(), s.N, s.B,
                s.T, s.mean, s.error, s.error ? err.mutable_data_ptr<int>() : nullptr);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
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
  const auto off = offsets.contiguous();
  const auto g = grad_output.contiguous();
  // Bags a warp: about 32 positions' worth (1 at L >= 32, 32 at L = 1), a power of two.
  int G = 1;
  while (G < 32 && G * s.N < 32 * n_bags) G *= 2;
  const bool vec =
      s.D % 4 == 0 && g.stride(0) % 4 == 0 && reinterpret_cast<uintptr_t>(g.const_data_ptr()) % 16 == 0;
  AT_DISPATCH_INDEX_TYPES(idx.scalar_type(), "qat_embedding_bag_backward_cuda", [&] {
    using idx_t = index_t;
    AT_DISPATCH_INDEX_TYPES(off.scalar_type(), "qat_embedding_bag_backward_cuda_offsets", [&] {
      using off_t = index_t;
      const auto launch = [&](auto vec_c) {
        constexpr int VEC = decltype(vec_c)::value;
        qat_bwd_kernel<idx_t, off_t, VEC><<<blocks_for((n_bags + G - 1) / G * 32), kThreads, 0,
                                            c10::cuda::getCurrentCUDAStream()>>>(
            g.const_data_ptr<float>(), g.stride(0), idx.const_data_ptr<idx_t>(), off.const_data_ptr<off_t>(),
            table_offsets ? to.const_data_ptr<int64_t>() : nullptr,
            per_sample_weights ? psw.const_data_ptr<float>() : nullptr, rows.mutable_data_ptr<int64_t>(),
            grad_rows.mutable_data_ptr<float>(), s.N, s.B, s.T, s.E, static_cast<int>(s.D), G, s.mean);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      };
      if (vec) launch(std::integral_constant<int, 4>{});
      else launch(std::integral_constant<int, 1>{});
    });
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
