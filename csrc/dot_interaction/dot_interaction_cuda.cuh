// Device building blocks of the CUDA dot interaction (dot_interaction_cuda.cu): type conversion,
// asynchronous copies, ldmatrix / mma.sync (sm_80+ PTX, also fine on sm_90a), the per-sample loader of
// T = [dense; sparse] into padded shared memory, and the inverse of the pair index.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "dot_interaction/dot_interaction.h"

namespace recsys {
namespace dot_cuda {

// ---- conversions (torch builds with __CUDA_NO_HALF_CONVERSIONS__, so everything is explicit) ----
__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_f(float x);
template <>
__device__ __forceinline__ float from_f<float>(float x) { return x; }
template <>
__device__ __forceinline__ __half from_f<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

template <typename To, typename From>
__device__ __forceinline__ To cvt(From x) {
  if constexpr (std::is_same_v<To, From>) return x;
  else return from_f<To>(to_f(x));
}

// Two floats -> one 32-bit word of two 16-bit values (first in the low half, i.e. at the lower address).
template <typename T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  if constexpr (std::is_same_v<T, __half>) {
    __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
  } else {
    __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
  }
}

// VEC elements of S (in shared memory, 16-byte aligned) -> one 16-byte vector of T.
template <typename T, typename S>
__device__ __forceinline__ uint4 load_vec16(const S* p) {
  if constexpr (std::is_same_v<T, S>) {
    return *reinterpret_cast<const uint4*>(p);
  } else {  // S = float, T = 16-bit: 8 floats -> 8 halves
    static_assert(std::is_same_v<S, float> && sizeof(T) == 2, "unsupported stage/output pair");
    const float4 a = reinterpret_cast<const float4*>(p)[0];
    const float4 b = reinterpret_cast<const float4*>(p)[1];
    return make_uint4(pack2<T>(a.x, a.y), pack2<T>(a.z, a.w), pack2<T>(b.x, b.y), pack2<T>(b.z, b.w));
  }
}

// ---- PTX wrappers ----
__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte global -> shared copy that bypasses registers and L1; with valid == false it writes zeros.
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
               "r"(valid ? 16 : 0)
               : "memory");
}
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_all;\n" ::: "memory"); }

__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p))
               : "memory");
}
__device__ __forceinline__ void ldsm_x4_trans(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p))
               : "memory");
}

// d (16x8 fp32) += a (16x16, row-major fragment) * b (16x8, col-major fragment); fp16 or bf16 inputs.
template <typename T>
__device__ __forceinline__ void mma16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (std::is_same_v<T, __half>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

__device__ __forceinline__ void zero_smem(void* p, int bytes) {  // bytes: a multiple of 16
  uint4* q = reinterpret_cast<uint4*>(p);
  for (int i = threadIdx.x; i < bytes / 16; i += blockDim.x) q[i] = make_uint4(0, 0, 0, 0);
}

// ---- pair index helpers ----
// Offset of the pair (major m, minor k) in the pair block is row_base(m) + k: the shared pair index is linear
// in the free row, so evaluating it at k = 0 (lower: pair (m, k)) or r = 0 (upper: pair (k, m)) gives the base.
__device__ __forceinline__ int pair_row_base(int m, int n, bool self, bool upper) {
  return upper ? static_cast<int>(dot_interaction_pair_index(0, m, n, self, true))
               : static_cast<int>(dot_interaction_pair_index(m, 0, n, self, false));
}
// Does (major m, minor k) name a kept pair? lower: k < m (k <= m with self); upper: k > m (k >= m with self).
__device__ __forceinline__ bool pair_valid(int m, int k, int n, bool self, bool upper) {
  return upper ? (k < n && k + self > m) : (m < n && k < m + self);
}

// Inverse of dot_interaction_pair_index: pair position p -> (r, c) with r > c (r >= c with self). The upper
// order read backwards is the lower order of the mirrored rows (n-1-c, n-1-r), so both reduce to inverting
// the lower-triangle row start R(R-1)/2 (R(R+1)/2 with self).
__host__ __device__ __forceinline__ void pair_from_index(int p, int n, bool self, bool upper, int& r, int& c) {
  const int P = self ? n * (n + 1) / 2 : n * (n - 1) / 2;
  const int q = upper ? P - 1 - p : p;
  const float s = sqrtf(8.0f * static_cast<float>(q) + 1.0f);
  int R = self ? static_cast<int>((s - 1.0f) * 0.5f) : static_cast<int>((s + 1.0f) * 0.5f);
  auto start = [self](int x) { return self ? x * (x + 1) / 2 : x * (x - 1) / 2; };
  if (start(R) > q) --R;
  else if (start(R + 1) <= q) ++R;
  const int C = q - start(R);
  if (upper) {
    r = n - 1 - C;
    c = n - 1 - R;
  } else {
    r = R;
    c = C;
  }
}

// ---- loader of T = [dense; sparse] for one sample, columns [c0, c0 + DC), into smem rows of ld elements ----
// Lanes are laid over (row, 16-byte vector) so that short rows still keep the whole warp busy: rows_per_iter
// rows of vpr vectors each per warp step. Columns >= D are written as zeros, so the padding the tensor-core
// tiles read is always zero, whatever the previous chunk left there.
struct LoadPlan {
  int rpi;   // rows per warp step
  int lrow;  // this lane's row within the step (>= rpi: idle)
  int lcol;  // this lane's first vector (element, on the scalar path) in the row
};

__device__ __forceinline__ LoadPlan make_load_plan(int per_row, int lane) {
  LoadPlan lp;
  if (per_row >= 32) {
    lp.rpi = 1;
    lp.lrow = 0;
    lp.lcol = lane;
  } else {
    lp.rpi = 32 / per_row;
    lp.lrow = lane / per_row;
    lp.lcol = lane - lp.lrow * per_row;
  }
  return lp;
}

template <typename T>
__device__ __forceinline__ const T* t_row(const T* dense, const T* sparse, int64_t b, int F, int D, int r) {
  return r == 0 ? dense + b * D : sparse + (b * F + (r - 1)) * static_cast<int64_t>(D);
}

// kVec: 16-byte cp.async (needs D % VEC == 0, 16-byte aligned bases, c0 % VEC == 0), else element loads.
template <typename T, bool kVec>
__device__ __forceinline__ void load_T(T* sT, int ld, const T* __restrict__ dense, const T* __restrict__ sparse,
                                       int64_t b, int F, int D, int n, int c0, int DC, const LoadPlan& lp,
                                       int warp, int nwarps) {
  constexpr int VEC = 16 / sizeof(T);
  if (lp.lrow >= lp.rpi) return;
  const int per_row = kVec ? DC / VEC : DC;
  for (int r = warp * lp.rpi + lp.lrow; r < n; r += nwarps * lp.rpi) {
    const T* src = t_row(dense, sparse, b, F, D, r);
    T* dst = sT + r * ld;
    for (int v = lp.lcol; v < per_row; v += 32) {
      if constexpr (kVec) {
        const int col = c0 + v * VEC;
        cp_async16(dst + v * VEC, src + (col < D ? col : 0), col < D);
      } else {
        const int col = c0 + v;
        dst[v] = col < D ? src[col] : from_f<T>(0.0f);
      }
    }
  }
}

}  // namespace dot_cuda
}  // namespace recsys
