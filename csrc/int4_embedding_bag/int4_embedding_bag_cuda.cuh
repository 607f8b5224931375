// Device pieces shared by the INT4 and QAT CUDA kernels: per-table launch parameters (passed by value as a
// __grid_constant__ struct, so a launch needs no host-to-device copy), read-only loads, the bounds-check
// flag, pooling accumulation and row stores. Both lookups accumulate every output column sequentially over
// the bag's rows with the same expressions, so a table exported from QAT pools bit-identically.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "int4_embedding_bag/int4_embedding_bag.h"

namespace recsys {
namespace int4_cuda {

constexpr int kMaxTables = 160;  // keeps TableParams under the 4 KiB kernel-parameter limit
constexpr int kThreads = 256;

enum ErrorBits : int { kBadIndex = 1, kBadOffsets = 2, kBadTableOffsets = 4 };

struct TableParams {
  int32_t T;
  int32_t D[kMaxTables];            // dims
  int32_t col[kMaxTables];          // first output column
  int32_t row_bytes[kMaxTables];    // INT4 row size
  int32_t block_start[kMaxTables + 1];  // first block of each table (INT4 lookup grid)
};

inline void check_table_count(int64_t T) {
  TORCH_CHECK(T <= kMaxTables, "the CUDA INT4/QAT kernels take at most ", fmt(kMaxTables), " tables per call, got ", fmt(T),
              "; split the tables over several calls");
}

__device__ __forceinline__ uint4 load_nc_16(const uint8_t* p) { return __ldg(reinterpret_cast<const uint4*>(p)); }
__device__ __forceinline__ uint32_t load_nc_4(const uint8_t* p) { return __ldg(reinterpret_cast<const uint32_t*>(p)); }

__device__ __forceinline__ void flag_error(int* err, int bits) {
  if (bits) atomicOr(err, bits);
}

// acc += w * v (one rounding) or acc += v: the only accumulation both lookups use.
__device__ __forceinline__ float pool_add(float acc, float w, float v, bool weighted) {
  return weighted ? fmaf(w, v, acc) : acc + v;
}

// Clamped bag range [start, stop) of bag k (never reads indices out of bounds), and whether its offsets are bad
// for bounds_check="error" (decreasing, or the first / last offset not 0 / N).
template <typename offset_t>
__device__ __forceinline__ bool bag_range(const offset_t* __restrict__ offsets, int64_t k, int64_t n_bags, int64_t N,
                                          int64_t& start, int64_t& stop) {
  const int64_t o0 = static_cast<int64_t>(offsets[k]), o1 = static_cast<int64_t>(offsets[k + 1]);
  start = min(max(o0, int64_t(0)), N);
  stop = min(max(o1, start), N);
  return o1 < o0 || (k == 0 && o0 != 0) || (k == n_bags - 1 && o1 != N);
}

// Stores n <= 32 pooled values (acc[0..n)) to dst, 16 bytes at a time when dst is 16-byte aligned.
template <typename out_t, int kMax>
__device__ __forceinline__ void store_row(out_t* dst, const float (&acc)[kMax], int n) {
  constexpr int V = 16 / sizeof(out_t);
  if (reinterpret_cast<uintptr_t>(dst) % 16 == 0 && n % V == 0) {
#pragma unroll
    for (int i = 0; i < kMax; i += V) {
      if (i < n) {
        alignas(16) out_t tmp[V];
#pragma unroll
        for (int j = 0; j < V; ++j) tmp[j] = static_cast<out_t>(acc[i + j]);
        *reinterpret_cast<uint4*>(dst + i) = *reinterpret_cast<const uint4*>(tmp);
      }
    }
  } else {
#pragma unroll
    for (int i = 0; i < kMax; ++i)
      if (i < n) dst[i] = static_cast<out_t>(acc[i]);
  }
}

// Reads the device error word after a launch with bounds_check="error" (one sync) and, when set, runs the CPU
// checks on host copies for the detailed message.
template <typename Check>
void raise_if_flagged(const at::Tensor& err, const char* op, Check&& check_on_cpu) {
  const int bits = err.item<int>();
  if (bits == 0) return;
  check_on_cpu();
  TORCH_CHECK(false, fmt(op), ": the kernel flagged invalid ",
              fmt((bits & kBadTableOffsets) ? "table_offsets" : (bits & kBadOffsets) ? "offsets" : "indices"));
}

}  // namespace int4_cuda
}  // namespace recsys
