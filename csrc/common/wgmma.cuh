// Hopper warpgroup matrix multiply (wgmma, sm_90a only) for the CUDA kernels: shared-memory matrix descriptors
// for the 128-byte-swizzled layout, the fence / commit / wait instructions, and the few m64nNk16 shapes the
// kernels use with fp32 accumulators and fp16/bf16 inputs. Everything here compiles to nothing unless the pass
// targets sm_90a (callers guard their kernels the same way, RECSYS_WGMMA_ENABLED).
//
// Layout (the one every descriptor here assumes): a tile is stored as blocks of 64 columns (128 bytes of 16-bit
// values), each block row-major with 128-byte rows, 16-byte chunk c of row r at chunk c ^ (r % 8) (the hardware's
// 128-byte swizzle, which needs each 8-row atom 1024-byte aligned). Row-major [rows][k] tiles are "K-major"
// operands (Q and K in S = Q Kᵀ); a row-major [k][n] tile such as V in O = P V is "MN-major" and is read
// transposed.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define RECSYS_WGMMA_ENABLED 1
#else
#define RECSYS_WGMMA_ENABLED 0
#endif

namespace recsys {
namespace wgmma {

// Byte offset of element (r, c) in a swizzled tile of R rows (blocks of 64 columns, R * 128 bytes each).
__host__ __device__ __forceinline__ int swizzled_offset(int r, int c, int R) {
  const int chunk = (c & 63) >> 3;
  return (c >> 6) * R * 128 + r * 128 + ((chunk ^ (r & 7)) << 4) + ((c & 7) << 1);
}

// Descriptor of a 128-byte-swizzled operand at shared address addr, kept as its two words. lbo: bytes between
// 64-column blocks along M/N (MN-major operands; unused by K-major ones), sbo: bytes between 8-row groups.
// desc + b is the descriptor of the operand b bytes further on: the start address sits in lo's low 14 bits
// (address >> 4, the shared window < 256 KB), so moving it adds b >> 4 to lo with no carry into the fields above,
// and a kernel builds one descriptor and steps it by constants. Building one per k-step cost ~7 instructions and
// two register-to-uniform moves each: ~110 instructions of the forward's tile.
struct Desc {
  uint32_t lo, hi;
  __device__ __forceinline__ Desc(uint32_t addr, uint32_t lbo, uint32_t sbo)
      : lo(((addr & 0x3FFFF) >> 4) | ((lbo & 0x3FFFF) >> 4) << 16), hi(((sbo & 0x3FFFF) >> 4) | 1u << 30) {}
  __device__ __forceinline__ uint64_t operator+(uint32_t bytes) const {
    return static_cast<uint64_t>(hi) << 32 | (lo + (bytes >> 4));
  }
  __device__ __forceinline__ Desc shifted(uint32_t bytes) const { return Desc{lo + (bytes >> 4), hi}; }

 private:
  __device__ __forceinline__ Desc(uint32_t l, uint32_t h) : lo(l), hi(h) {}
};

// The descriptor as one 64-bit word.
__device__ __forceinline__ uint64_t desc(uint32_t addr, uint32_t lbo, uint32_t sbo) {
  return Desc(addr, lbo, sbo) + 0u;
}

__device__ __forceinline__ void fence() {
#if RECSYS_WGMMA_ENABLED
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void commit() {
#if RECSYS_WGMMA_ENABLED
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}
template <int N>
__device__ __forceinline__ void wait() {
#if RECSYS_WGMMA_ENABLED
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#endif
}
// Shared memory written through the generic proxy (stores, cp.async) is read next by wgmma (the async proxy).
__device__ __forceinline__ void fence_proxy_async() {
#if RECSYS_WGMMA_ENABLED
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}
// Pins accumulator registers in place across an asynchronous wgmma (the compiler must not move or reuse them
// between issue and wait).
template <int N>
__device__ __forceinline__ void fence_operands(float* d) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
}
template <int N>
__device__ __forceinline__ void fence_operands(uint32_t* r) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+r"(r[i])::"memory");
}

#define RECSYS_WGMMA_R32 \
  "%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15," \
  "%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31"
#define RECSYS_WGMMA_R64 \
  RECSYS_WGMMA_R32 "," \
  "%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47," \
  "%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63"
#define RECSYS_WGMMA_D32 \
  "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), \
  "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
  "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), \
  "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), \
  "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), \
  "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
  "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), \
  "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
#define RECSYS_WGMMA_D64 \
  RECSYS_WGMMA_D32, \
  "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), \
  "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), \
  "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), \
  "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), \
  "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), \
  "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), \
  "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), \
  "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])

// d (64 x 64, fp32) = d * kScaleD + A B with A (64 x 16) and B (16 x 64 as Bᵀ, K-major) in shared memory.
template <typename T, int kScaleD>
__device__ __forceinline__ void mma_m64n64_ss(float* d, uint64_t da, uint64_t db) {
#if RECSYS_WGMMA_ENABLED
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {" RECSYS_WGMMA_R32 "},"
                 " %32, %33, p, 1, 1, 0, 0;\n}\n"
                 : RECSYS_WGMMA_D32
                 : "l"(da), "l"(db), "n"(kScaleD));
  } else {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 {" RECSYS_WGMMA_R32 "},"
                 " %32, %33, p, 1, 1, 0, 0;\n}\n"
                 : RECSYS_WGMMA_D32
                 : "l"(da), "l"(db), "n"(kScaleD));
  }
#endif
}

// d (64 x N, fp32) += A B with A (64 x 16) in registers (the mma.sync m16n8k16 A fragment of each warp's 16 rows)
// and B (16 x N, MN-major: read transposed) in shared memory. N is 64 or 128.
template <typename T, int N, int kScaleD = 1>
__device__ __forceinline__ void mma_rs(float* d, const uint32_t (&a)[4], uint64_t db) {
#if RECSYS_WGMMA_ENABLED
  static_assert(N == 64 || N == 128, "wgmma::mma_rs: N is 64 or 128");
  if constexpr (N == 64 && std::is_same_v<T, __nv_bfloat16>) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {" RECSYS_WGMMA_R32 "},"
                 " {%32,%33,%34,%35}, %36, p, 1, 1, 1;\n}\n"
                 : RECSYS_WGMMA_D32
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "n"(kScaleD));
  } else if constexpr (N == 64) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 {" RECSYS_WGMMA_R32 "},"
                 " {%32,%33,%34,%35}, %36, p, 1, 1, 1;\n}\n"
                 : RECSYS_WGMMA_D32
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "n"(kScaleD));
  } else if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {" RECSYS_WGMMA_R64 "},"
                 " {%64,%65,%66,%67}, %68, p, 1, 1, 1;\n}\n"
                 : RECSYS_WGMMA_D64
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "n"(kScaleD));
  } else {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 {" RECSYS_WGMMA_R64 "},"
                 " {%64,%65,%66,%67}, %68, p, 1, 1, 1;\n}\n"
                 : RECSYS_WGMMA_D64
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "n"(kScaleD));
  }
#endif
}

}  // namespace wgmma
}  // namespace recsys
