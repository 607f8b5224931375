// INT4 rows (FBGEMM TBE layout), CUDA kernels: quantize_int4_rows, dequantize_int4_rows and the TBE-style lookup
// int4_embedding_bag (row-wise 4-bit quantization with fp16 scale and bias: FBGEMM's fused N-bit rowwise format,
// Khudia et al., 2021).
//
// Lookup. A row is row_bytes = round_up(4 + D/2, 16) bytes on a 16-byte boundary, i.e. C = row_bytes / 16
// aligned 16-byte units; one thread owns one unit of every row of one bag: unit 0 holds the fp16 scale and bias
// and 24 codes, unit c >= 1 holds 32 codes (columns 24 + 32 (c - 1) ...). So a row costs C independent 16-byte
// loads spread over C neighbouring lanes (one coalesced 80-byte request for D = 128), threads of unit c >= 1 read
// the 4-byte scale/bias word of the row (same sector, an L1 hit), and each thread walks its bag one row at a
// time. Memory parallelism comes from resident warps rather than rows in flight: blocks of 64 threads under 64
// registers, 16 blocks (32 warps) an SM. Every column is accumulated sequentially over the bag's rows in float32
// (the QAT kernel uses the same order and expressions), divided by the bag length for "mean" and converted once.
// Short bags (Criteo's one-row bags) store their output through shared memory with streaming stores, from
// blocks of whole bags, with their rows prefetched into L2; long ones straight from registers (see
// int4_bag_kernel and pool_direct). Blocks belong to one table (block_start), so tables of different D and row
// counts share the launch (TBE batching).
//
// Measured (H100, 2026-12-07, fp32 output, ms; RESULTS.md "Sixteenth session"): the previous 256-thread blocks
// with 3 rows in flight and 3 blocks an SM took 0.183 (one table, L = 32), 0.609 (26 tables, L = 1) and 3.023
// (26 tables, L = 32); this kernel 0.159, 0.545 and 2.658. Of eight variants, more rows in flight (3 or 6) lost
// everywhere; staging at L = 32 cost 6%, direct stores at L = 1 cost 60%; a warp-level barrier instead of the
// block's did not help. At one table the lookup reads ~126 DRAM bytes a random 80-byte row (ncu: HBM is read
// in 64-byte pieces), which bounds it near 50% of copy bandwidth by real bytes. Short-bag path, 2026-12-07
// (seventeenth session, eleven variants): 0.542 -> 0.520 ms at Criteo's L = 1 (0.5200, 65.1% of copy, in the
// eighteenth session's benchmark of this code); ncu puts both this kernel and the Triton one at the same DRAM and
// L2 traffic there, the Triton one issuing at 11.5 cycles an instruction a warp against 18, the difference being
// short-scoreboard and MIO stalls: this kernel's shared-memory output stage.
// (Measured and dropped, 2026-12-05: the same walk with the rows copied through shared memory by cp.async, 8-16
// rows in flight per thread, was faster for one table, 0.166 vs 0.197 ms, but 2.6x slower for 26 tables, 8.6 vs
// 3.3 ms: its 40 KB of shared memory a block cut the resident blocks per SM.)
//
// bounds_check="error": threads flag bad indices / offsets / table_offsets in a device word that the host reads
// once after the launch; "ignore": no flag and no sync. Either way a bad index is skipped and offsets are
// clamped into [0, N]: nothing is read out of bounds.
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include "int4_embedding_bag/int4_embedding_bag_cuda.cuh"

namespace recsys {
namespace int4_cuda {
namespace {

constexpr int kBagThreads = 64;    // lookup block: 2 warps
constexpr int kBagBlocksPerSM = 16;  // 32 warps an SM under 64 registers a thread, no spills (sm_90a)
constexpr int kStageBelowRows = 8;   // bags averaging fewer rows stage their output (see int4_bag_kernel)

// Table t of the block: the largest t with block_start[t] <= blockIdx.x.
__device__ __forceinline__ int block_table(const TableParams& tp) {
  int lo = 0, hi = tp.T - 1;
  const int blk = static_cast<int>(blockIdx.x);
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (tp.block_start[mid] <= blk) lo = mid; else hi = mid - 1;
  }
  return lo;
}

// Where this thread's 16-byte unit c of table row r lies: packed + base + r * rb + 16 c, if r is valid.
struct RowSource {
  const uint8_t* packed;
  int64_t total_bytes, base, rows;
  int rb, c;
  __device__ __forceinline__ bool locate(int64_t r, const uint8_t*& row) const {
    const int64_t at = base + r * rb;
    const bool ok = r >= 0 && r < rows && at >= 0 && at + rb <= total_bytes;
    row = packed + (ok ? at : 0);
    return ok;
  }
};

// acc[j] (column j of this thread's run) += one row's dequantized unit: data = the unit's 16 bytes, sb = the
// row's fp16 scale and bias. Both walks use it; the QAT kernel repeats the same expressions (pool_add), so an
// exported table pools bit-identically.
template <bool kMagic>
__device__ __forceinline__ void add_unit(float (&acc)[32], const uint4& data, uint32_t sb, int c, float w,
                                         bool weighted) {
  const __half2 qp = *reinterpret_cast<const __half2*>(&sb);
  const float scale = __low2float(qp), bias = __high2float(qp);
  // Unit 0's codes start after the 4 qparam bytes: shift its words so that acc[j] is always column j of
  // this thread's run (compile-time register indices).
  const uint32_t words[4] = {c == 0 ? data.y : data.x, c == 0 ? data.z : data.y, c == 0 ? data.w : data.z,
                             c == 0 ? 0u : data.w};
#pragma unroll
  for (int wi = 0; wi < 4; ++wi) {
#pragma unroll
    for (int n = 0; n < 8; ++n) {
      // kMagic: the code as the float 2^23 + q minus 2^23 (exact, so the same v) instead of an int -> float
      // conversion, which issues at a quarter of the FP32 rate
      const uint32_t q = (words[wi] >> (4 * n)) & 15u;
      const float qf = kMagic ? __uint_as_float(q | 0x4B000000u) - 8388608.f : static_cast<float>(q);
      const float v = fmaf(qf, scale, bias);
      acc[wi * 8 + n] = pool_add(acc[wi * 8 + n], w, v, weighted);
    }
  }
}

__device__ __forceinline__ void prefetch_l2(const void* p) { asm volatile("prefetch.global.L2 [%0];" ::"l"(p)); }

// Rows [start, stop) of the bag, one at a time straight into registers. kShort (the short-bag path): rows two
// places ahead are prefetched into L2 (the first two before the loop, so a one-row bag prefetches its row just
// before loading it), and codes become floats by the 2^23 trick. Both are measured choices (see the top of the
// file): they pay only together with whole-bag blocks and streaming stores, and each of them slowed the long-bag
// path (prefetching 2.3x at 26 tables, L = 32).
template <bool kShort, typename index_t>
__device__ __forceinline__ void pool_direct(const RowSource& src, const index_t* __restrict__ indices,
                                            const float* __restrict__ psw, int64_t start, int64_t stop,
                                            float (&acc)[32], int& bad) {
  constexpr int kAhead = kShort ? 2 : 0;
  const bool weighted = psw != nullptr;
#pragma unroll
  for (int a = 0; a < kAhead; ++a) {
    const uint8_t* row;
    if (start + a < stop && src.locate(static_cast<int64_t>(indices[start + a]), row)) prefetch_l2(row + 16 * src.c);
  }
  for (int64_t p = start; p < stop; ++p) {
    const uint8_t* row;
    if (!src.locate(static_cast<int64_t>(indices[p]), row)) {
      bad |= kBadIndex;
      continue;
    }
    const uint4 data = load_nc_16(row + 16 * src.c);
    if (kAhead > 0 && p + kAhead < stop) {
      const uint8_t* ahead;
      if (src.locate(static_cast<int64_t>(indices[p + kAhead]), ahead)) prefetch_l2(ahead + 16 * src.c);
    }
    const uint32_t sb = src.c == 0 ? data.x : load_nc_4(row);
    add_unit<kShort>(acc, data, sb, src.c, weighted ? psw[p] : 1.f, weighted);
  }
}

// Table t's first byte and row count in packed, and whether table_offsets are broken there. Every thread works
// them out for itself (a warp's loads of the same words are one broadcast) rather than thread 0 for its block
// behind a barrier: that barrier put one more dependent round trip in front of every block's row loads.
struct TableExtent {
  int64_t base, rows;
  bool broken;
};

__device__ __forceinline__ TableExtent table_extent(const int64_t* __restrict__ table_offsets, const TableParams& tp,
                                                    int t, int rb, int64_t total_bytes, bool uniform) {
  if (!table_offsets) return {0, total_bytes / rb, false};
  const int64_t lo = table_offsets[t], hi = table_offsets[t + 1];
  int64_t base = 0;
  if (uniform) {
    base = lo * rb;
  } else {
    for (int u = 0; u < t; ++u) base += max(table_offsets[u + 1] - table_offsets[u], int64_t(0)) * tp.row_bytes[u];
  }
  const int64_t rows = max(hi - lo, int64_t(0));
  return {base, rows, hi < lo || table_offsets[0] != 0 || base + rows * rb > total_bytes};
}

// Columns [first, end) of the bag's output row that unit c's thread pools (end = first when the unit is padding).
__device__ __forceinline__ int unit_first_col(int c, int D) { return min(c == 0 ? 0 : 24 + 32 * (c - 1), D); }
__device__ __forceinline__ int unit_end_col(int c, int D) { return min(c == 0 ? 24 : 24 + 32 * c, D); }

// kStaged: the block's pooled values go out through shared memory. Its threads own one contiguous run of the
// flattened (bag, column) space, but each thread's own run is 96-128 bytes wide, so direct 16-byte stores put a
// warp's 32 lanes on 32 different lines a store: at L = 1 (Criteo) the output is 6x the bytes of the rows read and
// those scattered stores cost 60%. Staged, consecutive lanes store consecutive 16-byte units of each output
// row. At L = 32 (fp32) the output is a sixth of the traffic and the staging's barrier and shared memory (taken
// from L1) cost 6%, so long bags store straight from registers.
template <typename index_t, typename offset_t, typename out_t, bool kStaged>
__global__ void __launch_bounds__(kBagThreads, kBagBlocksPerSM)
    int4_bag_kernel(const uint8_t* __restrict__ packed, int64_t total_bytes, const index_t* __restrict__ indices,
                    const offset_t* __restrict__ offsets, const int64_t* __restrict__ table_offsets,
                    const float* __restrict__ psw, out_t* __restrict__ out, int64_t out_stride, int64_t N, int64_t B,
                    bool uniform, bool mean, bool check, int* __restrict__ err, const __grid_constant__ TableParams tp) {
  constexpr int V = 16 / sizeof(out_t);
  __shared__ alignas(16) out_t stage[kStaged ? kBagThreads * 32 : V];  // 32 values a thread at most
  const int t = block_table(tp);
  const int D = tp.D[t], rb = tp.row_bytes[t], C = rb / 16;
  // Staged blocks hold whole bags: threads past the last bag that fits stay idle (4 of 64 at D = 128), and no
  // bag's output row is split between two blocks.
  const int span = kStaged ? (kBagThreads / C) * C : kBagThreads;
  const int64_t first_local = static_cast<int64_t>(blockIdx.x - tp.block_start[t]) * span;
  const int64_t local = first_local + threadIdx.x;
  const bool active = static_cast<int>(threadIdx.x) < span && local < B * C;
  const int64_t b = local / C, k = t * B + b;
  const int c = static_cast<int>(local - b * C);
  float acc[32];
#pragma unroll
  for (int i = 0; i < 32; ++i) acc[i] = 0.f;
  if (active) {
    const TableExtent ext = table_extent(table_offsets, tp, t, rb, total_bytes, uniform);
    int64_t start, stop;
    int bad = 0;
    if (bag_range(offsets, k, static_cast<int64_t>(tp.T) * B, N, start, stop)) bad |= kBadOffsets;
    if (ext.broken && b == 0) bad |= kBadTableOffsets;
    const RowSource src{packed, total_bytes, ext.base, ext.rows, rb, c};
    pool_direct<kStaged>(src, indices, psw, start, stop, acc, bad);
    if (mean && stop > start) {
      const float len = static_cast<float>(stop - start);
#pragma unroll
      for (int i = 0; i < 32; ++i) acc[i] = acc[i] / len;
    }
    if (check && c == 0) flag_error(err, bad);
  }
  const int col0 = unit_first_col(c, D), n = unit_end_col(c, D) - col0;
  out_t* const table_out = out + tp.col[t];
  // Same for the whole launch but the table's column: a uniform branch around the barrier.
  const bool staged = kStaged && D % V == 0 && out_stride % V == 0 && tp.col[t] % V == 0 &&
                      reinterpret_cast<uintptr_t>(out) % 16 == 0;
  if (!staged) {
    if (active && n > 0) store_row(table_out + b * out_stride + col0, acc, n);
    return;
  }
  // Flattened position (bag - first bag) * D + column of the block's first value; n and col0 are multiples of V.
  const int64_t first_b = first_local / C;
  const int first_col = unit_first_col(static_cast<int>(first_local - first_b * C), D);
  if (active && n > 0) {
    const int at = static_cast<int>((b - first_b) * D + col0 - first_col);
#pragma unroll
    for (int i = 0; i < 32; i += V) {
      if (i < n) {
        alignas(16) out_t tmp[V];
#pragma unroll
        for (int j = 0; j < V; ++j) tmp[j] = static_cast<out_t>(acc[i + j]);
        *reinterpret_cast<uint4*>(stage + at + i) = *reinterpret_cast<const uint4*>(tmp);
      }
    }
  }
  __syncthreads();
  const int64_t last_local = min(first_local + static_cast<int64_t>(span), B * C) - 1;
  const int64_t last_b = last_local / C;
  const int last_end = unit_end_col(static_cast<int>(last_local - last_b * C), D);
  const int values = static_cast<int>((last_b - first_b) * D + last_end - first_col);
  for (int u = threadIdx.x * V; u < values; u += blockDim.x * V) {
    const int r = first_col + u, bag = r / D, col = r - bag * D;
    // evict-first: the output is written once and is most of the traffic; L2 keeps the rows instead
    __stcs(reinterpret_cast<uint4*>(table_out + (first_b + bag) * out_stride + col),
           *reinterpret_cast<const uint4*>(stage + u));
  }
}

// One warp per row: min and max over the row (two passes over it, the second from L1/L2), then one byte per lane.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    quantize_kernel(const scalar_t* __restrict__ w, uint8_t* __restrict__ out, int64_t E, int64_t D) {
  const int64_t e = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x & 31;
  if (e >= E) return;
  const scalar_t* x = w + e * D;
  float mn = INFINITY, mx = -INFINITY;
  for (int64_t d = lane; d < D; d += 32) {
    const float f = static_cast<float>(x[d]);
    mn = fminf(mn, f);
    mx = fmaxf(mx, f);
  }
#pragma unroll
  for (int m = 16; m >= 1; m /= 2) {
    mn = fminf(mn, __shfl_xor_sync(0xffffffffu, mn, m));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, m));
  }
  const Int4RowParams p = int4_row_params(mn, mx);
  const int64_t rb = int4_row_bytes(D);
  uint8_t* row = out + e * rb;
  if (lane == 0) {
    const __half2 qp = __floats2half2_rn(p.scale, p.bias);
    *reinterpret_cast<__half2*>(row) = qp;
  }
  for (int64_t k = lane; k < rb - kInt4QParamBytes; k += 32) {
    uint8_t byte = 0;
    if (k < D / 2) {
      const auto lo = static_cast<uint32_t>(int4_code(static_cast<float>(x[2 * k]), p.bias, p.inv));
      const auto hi = static_cast<uint32_t>(int4_code(static_cast<float>(x[2 * k + 1]), p.bias, p.inv));
      byte = static_cast<uint8_t>(lo | (hi << 4));
    }
    row[kInt4QParamBytes + k] = byte;
  }
}

// One thread per byte of codes: two output elements.
template <typename out_t>
__global__ void __launch_bounds__(kThreads)
    dequantize_kernel(const uint8_t* __restrict__ packed, out_t* __restrict__ out, int64_t E, int64_t D, int64_t rb) {
  const int64_t half = D / 2;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= E * half) return;
  const int64_t e = i / half, k = i - e * half;
  const uint8_t* row = packed + e * rb;
  const __half2 qp = *reinterpret_cast<const __half2*>(row);
  const float scale = __low2float(qp), bias = __high2float(qp);
  const uint8_t byte = row[kInt4QParamBytes + k];
  using acc_t = std::conditional_t<std::is_same_v<out_t, double>, double, float>;
  out[e * D + 2 * k] = static_cast<out_t>(static_cast<acc_t>(byte & 15) * acc_t(scale) + acc_t(bias));
  out[e * D + 2 * k + 1] = static_cast<out_t>(static_cast<acc_t>(byte >> 4) * acc_t(scale) + acc_t(bias));
}

void check_cuda(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor for the CUDA kernel, got ", fmt(t.device()));
}

int64_t blocks_for(int64_t threads) { return (threads + kThreads - 1) / kThreads; }

at::Tensor quantize_int4_rows_cuda(const at::Tensor& weight) {
  check_dim(weight, 2, "weight", "(E, D)");
  check_float_dtype(weight, "weight");
  check_int4_D(weight.size(1), "weight.shape[1] (D)");
  check_cuda(weight, "weight");
  c10::cuda::CUDAGuard guard(weight.device());
  const int64_t E = weight.size(0), D = weight.size(1);
  auto out = at::empty({E, int4_row_bytes(D)}, weight.options().dtype(at::kByte));
  if (E == 0) return out;
  const auto w = weight.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, w.scalar_type(), "quantize_int4_rows_cuda", [&] {
    quantize_kernel<scalar_t><<<blocks_for(E * 32), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        w.const_data_ptr<scalar_t>(), out.mutable_data_ptr<uint8_t>(), E, D);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor dequantize_int4_rows_cuda(const at::Tensor& packed, int64_t D, at::ScalarType dtype) {
  check_dequantize_inputs(packed, D, dtype);
  check_cuda(packed, "packed");
  c10::cuda::CUDAGuard guard(packed.device());
  const int64_t E = packed.size(0);
  auto out = at::empty({E, D}, packed.options().dtype(dtype));
  if (E == 0) return out;
  const auto p = packed.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "dequantize_int4_rows_cuda", [&] {
    dequantize_kernel<scalar_t><<<blocks_for(E * D / 2), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        p.const_data_ptr<uint8_t>(), out.mutable_data_ptr<scalar_t>(), E, D, p.size(1));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor int4_embedding_bag_cuda(const at::Tensor& packed, const at::Tensor& indices, const at::Tensor& offsets,
                                   c10::IntArrayRef D, const std::optional<at::Tensor>& table_offsets,
                                   c10::string_view pooling, const std::optional<at::Tensor>& per_sample_weights,
                                   at::ScalarType output_dtype, c10::string_view bounds_check) {
  const auto s = check_int4_bag_inputs(packed, indices, offsets, D, table_offsets, pooling, per_sample_weights,
                                       output_dtype, bounds_check);
  check_cuda(packed, "packed");
  check_table_count(s.T);
  c10::cuda::CUDAGuard guard(packed.device());
  auto out = at::empty({s.B, s.total_D}, packed.options().dtype(output_dtype));
  const int64_t n_bags = s.T * s.B;
  at::Tensor to;
  if (table_offsets) to = table_offsets->to(at::kLong).contiguous();
  const auto idx = indices.contiguous();
  const auto off = offsets.contiguous();
  const auto check_on_cpu = [&] {
    check_int4_bag_values_cpu(s, packed.numel(), idx.cpu(), off.to(at::kCPU, at::kLong),
                              table_offsets ? to.cpu() : at::Tensor());
  };
  if (n_bags == 0) {
    if (s.error) check_on_cpu();
    return out;
  }
  TableParams tp{};
  tp.T = static_cast<int32_t>(s.T);
  // The average bag is short, so the output dominates: the staged kernel, whose blocks hold whole bags (every row
  // at most kBagThreads units: D up to 2040).
  bool stage = idx.numel() < kStageBelowRows * n_bags;
  for (int64_t t = 0; t < s.T; ++t) stage = stage && s.row_bytes[t] / 16 <= kBagThreads;
  int64_t blocks = 0;
  for (int64_t t = 0; t < s.T; ++t) {
    tp.D[t] = static_cast<int32_t>(s.D[t]);
    tp.col[t] = static_cast<int32_t>(s.D_offsets[t]);
    tp.row_bytes[t] = static_cast<int32_t>(s.row_bytes[t]);
    tp.block_start[t] = static_cast<int32_t>(blocks);
    const int64_t C = s.row_bytes[t] / 16, bags_per_block = kBagThreads / C;
    blocks += stage ? (s.B + bags_per_block - 1) / bags_per_block : (s.B * C + kBagThreads - 1) / kBagThreads;
  }
  TORCH_CHECK(blocks < (int64_t(1) << 31), "int4_embedding_bag: batch too large for one launch (", fmt(blocks), " blocks)");
  tp.block_start[s.T] = static_cast<int32_t>(blocks);
  at::Tensor psw;
  if (per_sample_weights) psw = per_sample_weights->to(at::kFloat).contiguous();
  at::Tensor err;
  if (s.error) err = at::zeros({1}, packed.options().dtype(at::kInt));
  AT_DISPATCH_INDEX_TYPES(idx.scalar_type(), "int4_embedding_bag_cuda", [&] {
    using idx_t = index_t;
    AT_DISPATCH_INDEX_TYPES(off.scalar_type(), "int4_embedding_bag_cuda_offsets", [&] {
      using off_t = index_t;
      const auto launch = [&](auto out_tag) {
        using out_t = decltype(out_tag);
        const auto kernel = stage ? int4_bag_kernel<idx_t, off_t, out_t, true>
                                  : int4_bag_kernel<idx_t, off_t, out_t, false>;
        kernel<<<blocks, kBagThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
            packed.const_data_ptr<uint8_t>(), packed.numel(), idx.const_data_ptr<idx_t>(),
            off.const_data_ptr<off_t>(), table_offsets ? to.const_data_ptr<int64_t>() : nullptr,
            per_sample_weights ? psw.const_data_ptr<float>() : nullptr, out.mutable_data_ptr<out_t>(),
            s.total_D, s.N, s.B, s.uniform, s.mean, s.error, s.error ? err.mutable_data_ptr<int>() : nullptr, tp);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      };
      if (output_dtype == at::kFloat) launch(float{});
      else if (output_dtype == at::kHalf) launch(c10::Half{});
      else launch(c10::BFloat16{});
    });
  });
  if (s.error) raise_if_flagged(err, "int4_embedding_bag", check_on_cpu);
  return out;
}

}  // namespace
}  // namespace int4_cuda

TORCH_LIBRARY_IMPL(recsys, CUDA, m) {
  m.impl("quantize_int4_rows", &int4_cuda::quantize_int4_rows_cuda);
  m.impl("dequantize_int4_rows", &int4_cuda::dequantize_int4_rows_cuda);
  m.impl("int4_embedding_bag", &int4_cuda::int4_embedding_bag_cuda);
}

}  // namespace recsys
