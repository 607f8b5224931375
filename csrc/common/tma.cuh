// Hopper tensor-memory-accelerator (TMA) loads for the CUDA kernels: a tile of a 3-D (D, H, L) tensor copied into
// shared memory in the 128-byte-swizzled layout wgmma reads (common/wgmma.cuh), by one thread, completed on a
// shared-memory mbarrier that the consumers wait on. Device code compiles to nothing unless the pass targets sm_90a.
//
// Why: with cp.async every thread of a block issues its share of a tile's 16-byte copies, each with its own
// address, predicate and zero-fill (~10 instructions a copy, ~90 of a forward warp's ~360 per key tile). One TMA
// instruction moves a 64 x 64 box, fills out-of-range rows and columns with zeros and swizzles on the way.
#pragma once
#include <cuda.h>  // CUtensorMap (a 128-byte kernel parameter); the encoder is looked up at run time (host side)

#include <cstdint>

#include "common/ptx.cuh"
#include "common/wgmma.cuh"

namespace recsys {
namespace tma {

// The maps a kernel loads through (unused members zero); passed as a __grid_constant__ parameter, as TMA reads
// the map from the parameter space.
struct Maps {
  CUtensorMap q, k, v, dout;
};

__device__ __forceinline__ void mbar_init(uint64_t* bar, unsigned arrivals) {
#if RECSYS_WGMMA_ENABLED
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(arrivals) : "memory");
#endif
}
// After mbar_init and before the barrier that publishes it: makes the initialised barriers visible to TMA.
__device__ __forceinline__ void fence_mbar_init() {
#if RECSYS_WGMMA_ENABLED
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
#endif
}
// One arrival that also announces `bytes` to come from TMA copies completing on bar.
__device__ __forceinline__ void arrive_expect_bytes(uint64_t* bar, unsigned bytes) {
#if RECSYS_WGMMA_ENABLED
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(bytes)
               : "memory");
#endif
}
// Waits until the phase with parity `parity` of bar has completed (its arrivals and bytes all in).
__device__ __forceinline__ void wait(uint64_t* bar, unsigned parity) {
#if RECSYS_WGMMA_ENABLED
  asm volatile(
      "{\n.reg .pred done;\nWAIT:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra WAIT;\n}\n" ::"r"(smem_addr(bar)),
      "r"(parity)
      : "memory");
#endif
}
// The box of `map` at element coordinates (x, y, z) (innermost first) into dst (1024-byte aligned for the
// 128-byte swizzle), completing on bar. Elements outside the tensor arrive as zeros.
__device__ __forceinline__ void load_3d(void* dst, const CUtensorMap* map, uint64_t* bar, int x, int y, int z) {
#if RECSYS_WGMMA_ENABLED
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4, %5}], [%2];\n" ::
          "r"(smem_addr(dst)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(smem_addr(bar)), "r"(x), "r"(y), "r"(z)
      : "memory");
#endif
}

}  // namespace tma
}  // namespace recsys
