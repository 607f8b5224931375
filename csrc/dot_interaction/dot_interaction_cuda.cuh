// Device building blocks of the CUDA dot interaction (dot_interaction_cuda.cu, which holds the kernels, the
// launch logic and the algorithm note): type conversion, asynchronous copies, ldmatrix / mma.sync (sm_80+ PTX,
// also fine on sm_90a), the per-sample loader of T = [dense; sparse] into padded shared memory, the inverse
// of the pair index, and the forward / backward tile routines. Included by that one file only.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "common/ptx.cuh"
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
        cp_async<16>(dst + v * VEC, src + (col < D ? col : 0), col < D);
      } else {
        const int col = c0 + v;
        dst[v] = col < D ? src[col] : from_f<T>(0.0f);
      }
    }
  }
}

constexpr int kMaxWarps = 8;
constexpr int kScrLd = 24;  // row stride (elements) of the per-warp 16x16 output tile of the fp16/bf16 backward

struct FwdParams {
  int64_t B;
  int F, D, n, n_pad, P, out_cols;
  int DC, nchunks, ld;  // chunk width (columns of T per pass), number of chunks, smem row stride of T
  int stage_off;        // byte offset of the stage in dynamic shared memory
  int out_phase0;       // (address of out / sizeof(T)) % VEC
  bool self, upper;
};

struct BwdParams {
  int64_t B, go_stride;
  int F, D, n, n_pad, P;
  int DC, nchunks, ld, gld;  // gld: row stride of G
  int g_off, gst_off, scr_off;  // byte offsets of G, the grad_output row stage and the per-warp tiles
  bool stage_go;                // grad_output row staged in shared memory (else read from global memory)
  bool self, upper;
};

template <typename S>
__device__ __forceinline__ void put(S& dst, float v, bool first) {
  if constexpr (std::is_same_v<S, float>) dst = first ? v : dst + v;
  else dst = from_f<S>(v);  // 16-bit stage only ever sees a single chunk
}

// ---------------------------------------------------------------- forward tiles
// One 16x16 tile of T Tᵀ: rows of strip ms (majors m), columns of strip ks (minors k), over DC columns of T.
template <typename T, typename S>
__device__ __forceinline__ void fwd_tile_tc(const T* sT, int ms, int ks, S* stage, int off, const FwdParams& p,
                                            bool first, int lane) {
  float acc[2][4] = {};
  const T* pa = sT + (ms * 16 + (lane & 15)) * p.ld + (lane >> 4) * 8;
  const T* pb = sT + (ks * 16 + (lane & 7) + ((lane >> 4) << 3)) * p.ld + ((lane >> 3) & 1) * 8;
  const bool diag = ms == ks;
  for (int k = 0; k < p.DC; k += 16) {
    uint32_t a[4], b[4];
    ldsm_x4(a, pa + k);
    if (diag) {  // the B fragment of a diagonal tile is the A fragment, re-ordered
      b[0] = a[0]; b[1] = a[2]; b[2] = a[1]; b[3] = a[3];
    } else {
      ldsm_x4(b, pb + k);
    }
    mma16816<T>(acc[0], a, b[0], b[1]);
    mma16816<T>(acc[1], a, b[2], b[3]);
  }
  const int g = lane >> 2, c = lane & 3;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int m = ms * 16 + g + 8 * h;
    if (m >= p.n) continue;
    const int base = off + pair_row_base(m, p.n, p.self, p.upper);
#pragma unroll
    for (int nb = 0; nb < 2; ++nb)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int k = ks * 16 + nb * 8 + 2 * c + e;
        if (pair_valid(m, k, p.n, p.self, p.upper)) put(stage[base + k], acc[nb][2 * h + e], first);
      }
  }
}

// fp32: lane (rg, cg) owns rows rg + 4q and columns cg + 8c of the tile; consecutive rows per load keep the
// float4 reads conflict-free with a row stride of 4 (mod 8) floats.
template <typename S>
__device__ __forceinline__ void fwd_tile_simt(const float* sT, int ms, int ks, S* stage, int off,
                                              const FwdParams& p, bool first, int lane) {
  const int rg = lane >> 3, cg = lane & 7;
  const float* pa = sT + (ms * 16 + rg) * p.ld;
  const float* pb = sT + (ks * 16 + cg) * p.ld;
  float acc[4][2] = {};
#pragma unroll 2
  for (int k = 0; k < p.DC; k += 4) {
    float4 a[4], b[2];
#pragma unroll
    for (int q = 0; q < 4; ++q) a[q] = *reinterpret_cast<const float4*>(pa + 4 * q * p.ld + k);
#pragma unroll
    for (int c = 0; c < 2; ++c) b[c] = *reinterpret_cast<const float4*>(pb + 8 * c * p.ld + k);
#pragma unroll
    for (int q = 0; q < 4; ++q)
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        float s = acc[q][c];
        s = fmaf(a[q].x, b[c].x, s);
        s = fmaf(a[q].y, b[c].y, s);
        s = fmaf(a[q].z, b[c].z, s);
        acc[q][c] = fmaf(a[q].w, b[c].w, s);
      }
  }
#pragma unroll
  for (int q = 0; q < 4; ++q) {
    const int m = ms * 16 + rg + 4 * q;
    if (m >= p.n) continue;
    const int base = off + pair_row_base(m, p.n, p.self, p.upper);
#pragma unroll
    for (int c = 0; c < 2; ++c) {
      const int k = ks * 16 + cg + 8 * c;
      if (pair_valid(m, k, p.n, p.self, p.upper)) put(stage[base + k], acc[q][c], first);
    }
  }
}

// Writes one output row from the stage. row_al is 16-byte aligned and column col sits at index col + phase of
// both row_al and the stage, so full vectors copy straight across; the ragged ends go element by element.
template <typename T, typename S>
__device__ __forceinline__ void write_row(T* row_al, const S* stage, int phase, int DP, int out_cols) {
  constexpr int VEC = 16 / sizeof(T);
  const int nvec = (phase + out_cols + VEC - 1) / VEC;
  for (int v = threadIdx.x; v < nvec; v += blockDim.x) {
    const int lo = v * VEC - phase;
    T* dst = row_al + v * VEC;
    if (lo >= 0 && lo + VEC <= DP) {
      *reinterpret_cast<uint4*>(dst) = load_vec16<T, S>(stage + v * VEC);
    } else if (lo >= DP && lo + VEC <= out_cols) {
      *reinterpret_cast<uint4*>(dst) = make_uint4(0, 0, 0, 0);
    } else {
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        const int col = lo + e;
        if (col >= 0 && col < out_cols) dst[e] = col < DP ? cvt<T>(stage[v * VEC + e]) : from_f<T>(0.0f);
      }
    }
  }
}


// ---------------------------------------------------------------- backward
// The grad_output row [0, D + P) is copied with 16-byte cp.async in whole aligned 16-byte pieces (its start
// is rarely aligned: row length D + P is usually odd), so element col lands at gst[col + phase]. The pieces
// never leave the 16-byte granules holding the row, hence never the allocation.
template <typename T>
__device__ __forceinline__ int go_phase(const T* go_row) {
  return static_cast<int>((reinterpret_cast<uintptr_t>(go_row) & 15) / sizeof(T));
}
template <typename T>
__device__ __forceinline__ void load_go(T* gst, const T* go_row, int cols) {
  const uintptr_t a0 = reinterpret_cast<uintptr_t>(go_row) & ~uintptr_t(15);
  const uintptr_t a1 = reinterpret_cast<uintptr_t>(go_row + cols);
  const int pieces = static_cast<int>((a1 - a0 + 15) / 16);
  for (int i = threadIdx.x; i < pieces; i += blockDim.x)
    cp_async<16>(gst + i * (16 / sizeof(T)), reinterpret_cast<const void*>(a0 + 16 * i), true);
}

// G[r][c] = G[c][r] = grad of pair (r, c) (2x on the diagonal), from the staged row. Only kept pairs are
// written; the rest of G was zeroed once and stays zero.
template <typename T>
__device__ __forceinline__ void build_G(T* sG, int gld, const T* gp, const BwdParams& p) {
  for (int i = threadIdx.x; i < p.P; i += blockDim.x) {
    const T v = gp[i];
    int r, c;
    pair_from_index(i, p.n, p.self, p.upper, r, c);
    if (r == c) {
      sG[r * gld + r] = from_f<T>(2.0f * to_f(v));
    } else {
      sG[r * gld + c] = v;
      sG[c * gld + r] = v;
    }
  }
}

template <typename T>
__device__ __forceinline__ T* grad_row(T* gd, T* gs, int64_t b, const BwdParams& p, int m) {
  return m == 0 ? gd + b * p.D : gs + (b * p.F + (m - 1)) * static_cast<int64_t>(p.D);
}

// 16x16 tile of grad_T: rows of strip i, columns [c0 + 16 d, +16).
template <typename T, bool kVec>
__device__ __forceinline__ void bwd_tile_tc(const T* sG, const T* sT, const T* gorow, T* scr, int i, int d,
                                            int c0, int64_t b, T* gd, T* gs, const BwdParams& p, int lane) {
  float acc[2][4] = {};
  const T* pa = sG + (i * 16 + (lane & 15)) * p.gld + (lane >> 4) * 8;
  const T* pb = sT + (lane & 15) * p.ld + d * 16 + (lane >> 4) * 8;
  const int nb = p.n_pad / 16;
  for (int j = 0; j < nb; ++j) {
    uint32_t a[4], bb[4];
    ldsm_x4(a, pa + j * 16);
    ldsm_x4_trans(bb, pb + j * 16 * p.ld);
    mma16816<T>(acc[0], a, bb[0], bb[1]);
    mma16816<T>(acc[1], a, bb[2], bb[3]);
  }
  const int g = lane >> 2, c = lane & 3;
#pragma unroll
  for (int h = 0; h < 2; ++h)
#pragma unroll
    for (int nbk = 0; nbk < 2; ++nbk) {
      const int row = g + 8 * h, col = nbk * 8 + 2 * c;
      float v0 = acc[nbk][2 * h], v1 = acc[nbk][2 * h + 1];
      if (i == 0 && row == 0) {
        const int dc = c0 + d * 16 + col;
        if (dc < p.D) v0 += to_f(gorow[dc]);
        if (dc + 1 < p.D) v1 += to_f(gorow[dc + 1]);
      }
      *reinterpret_cast<uint32_t*>(scr + row * kScrLd + col) = pack2<T>(v0, v1);
    }
  __syncwarp();
  const int row = lane >> 1, half = lane & 1, m = i * 16 + row, dc = c0 + d * 16 + half * 8;
  if (m < p.n && dc < p.D) {
    T* dst = grad_row(gd, gs, b, p, m) + dc;
    const T* src = scr + row * kScrLd + half * 8;
    if constexpr (kVec) {
      *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(src);
    } else {
#pragma unroll
      for (int e = 0; e < 8; ++e)
        if (dc + e < p.D) dst[e] = src[e];
    }
  }
  __syncwarp();
}

// fp32 16x32 tile: lane (rg, cg) owns rows rg + 4q and the 4 adjacent columns 4 cg.., stored as one float4.
template <bool kVec>
__device__ __forceinline__ void bwd_tile_simt(const float* sG, const float* sT, const float* gorow, int i, int d,
                                              int c0, int64_t b, float* gd, float* gs, const BwdParams& p,
                                              int lane) {
  const int rg = lane >> 3, cg = lane & 7;
  const float* pa = sG + (i * 16 + rg) * p.gld;
  const float* pb = sT + d * 32 + cg * 4;
  float acc[4][4] = {};
  const int kn = (p.n + 3) & ~3;
#pragma unroll 2
  for (int j = 0; j < kn; j += 4) {
    float4 a[4], t[4];
#pragma unroll
    for (int q = 0; q < 4; ++q) a[q] = *reinterpret_cast<const float4*>(pa + 4 * q * p.gld + j);
#pragma unroll
    for (int u = 0; u < 4; ++u) t[u] = *reinterpret_cast<const float4*>(pb + (j + u) * p.ld);
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const float w[4] = {a[q].x, a[q].y, a[q].z, a[q].w};
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        acc[q][0] = fmaf(w[u], t[u].x, acc[q][0]);
        acc[q][1] = fmaf(w[u], t[u].y, acc[q][1]);
        acc[q][2] = fmaf(w[u], t[u].z, acc[q][2]);
        acc[q][3] = fmaf(w[u], t[u].w, acc[q][3]);
      }
    }
  }
  const int dc = c0 + d * 32 + cg * 4;
  if (dc >= p.D) return;
#pragma unroll
  for (int q = 0; q < 4; ++q) {
    const int m = i * 16 + rg + 4 * q;
    if (m >= p.n) continue;
    float v[4] = {acc[q][0], acc[q][1], acc[q][2], acc[q][3]};
    if (m == 0) {
#pragma unroll
      for (int e = 0; e < 4; ++e)
        if (dc + e < p.D) v[e] += gorow[dc + e];
    }
    float* dst = grad_row(gd, gs, b, p, m) + dc;
    if constexpr (kVec) {
      *reinterpret_cast<float4*>(dst) = make_float4(v[0], v[1], v[2], v[3]);
    } else {
#pragma unroll
      for (int e = 0; e < 4; ++e)
        if (dc + e < p.D) dst[e] = v[e];
    }
  }
}

}  // namespace dot_cuda
}  // namespace recsys
