// DLRM dot interaction (Naumov et al., "Deep Learning Recommendation Model for Personalization and
// Recommendation Systems", 2019), CUDA kernels: one fused pass per sample.
//
// Forward. A block (1-8 warps, persistent over the batch) copies T = [dense; sparse] (n x D) of one sample
// into shared memory with 16-byte cp.async (rows padded to n_pad = a multiple of 16 with zeros, each row
// padded against bank conflicts), then computes only the kept triangle of T Tᵀ in 16x16 tiles: fp16/bf16 with
// tensor cores (ldmatrix + mma.sync m16n8k16, fp32 accumulators), fp32 on CUDA cores (4x2 register tiles per
// lane, fp32 FMA, no TF32). Each tile scatters its kept dot products into a shared "stage" laid out in output
// order (dense copy first) and shifted by the output row's 16-byte phase, so the whole output row — whose
// length D + P is rarely a multiple of 8 — leaves in aligned 16-byte stores. The next sample's loads are
// issued before the current row is written. When T does not fit, D is cut into chunks and the stage holds
// fp32 partial sums.
//
// Backward. grad_T = G T with G the symmetric n x n matrix of pair gradients (diagonal 2 g with self
// interaction), built in shared memory from grad_output (exact in fp16/bf16); G T runs as 16x16 output tiles
// (tensor cores, B fragments via ldmatrix.trans) or as 16x32 fp32 register tiles, row 0 adds
// grad_output[:, :D], and each tile is written with coalesced 16-byte stores.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <tuple>

#include "dot_interaction/dot_interaction_cuda.cuh"

namespace recsys {
namespace dot_cuda {
namespace {

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
  int g_off, gsm_off, scr_off;
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

template <typename T, typename S, bool kVec>
__global__ void __launch_bounds__(kMaxWarps * 32)
    dot_fwd_kernel(const T* __restrict__ dense, const T* __restrict__ sparse, T* __restrict__ out,
                   const FwdParams p) {
  constexpr int VEC = 16 / sizeof(T);
  constexpr bool kTC = !std::is_same_v<T, float>;
  extern __shared__ __align__(16) unsigned char smem[];
  T* sT = reinterpret_cast<T*>(smem);
  S* stage = reinterpret_cast<S*>(smem + p.stage_off);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  const int nb = p.n_pad / 16, ntiles = nb * (nb + 1) / 2;
  const LoadPlan lp = make_load_plan(kVec ? p.DC / VEC : p.DC, lane);

  zero_smem(sT + p.n * p.ld, (p.n_pad - p.n) * p.ld * static_cast<int>(sizeof(T)));  // rows the loads never touch
  int64_t b = blockIdx.x;
  load_T<T, kVec>(sT, p.ld, dense, sparse, b, p.F, p.D, p.n, 0, p.DC, lp, warp, nwarps);
  for (; b < p.B; b += gridDim.x) {
    const int phase = static_cast<int>((p.out_phase0 + (b % VEC) * (p.out_cols % VEC)) % VEC);
    for (int ch = 0; ch < p.nchunks; ++ch) {
      const int c0 = ch * p.DC;
      if constexpr (kVec) cp_async_wait_all();
      __syncthreads();
      const int dw = min(p.DC, p.D - c0);
      for (int j = threadIdx.x; j < dw; j += blockDim.x) stage[phase + c0 + j] = cvt<S>(sT[j]);
      // Tiles (s, t), t <= s, in row-major order of the lower triangle, dealt round-robin to the warps; the
      // upper layout takes the transposed tile so that its majors (rows of the upper triangle) are the A rows.
      int s = 0, t = warp;
      while (t > s) { t -= s + 1; ++s; }
      for (int q = warp; q < ntiles; q += nwarps) {
        const int ms = p.upper ? t : s, ks = p.upper ? s : t;
        if constexpr (kTC) fwd_tile_tc<T, S>(sT, ms, ks, stage, phase + p.D, p, ch == 0, lane);
        else fwd_tile_simt<S>(sT, ms, ks, stage, phase + p.D, p, ch == 0, lane);
        t += nwarps;
        while (t > s) { t -= s + 1; ++s; }
      }
      __syncthreads();  // T is free: start the next chunk's (or sample's) loads before writing this row
      if (ch + 1 < p.nchunks)
        load_T<T, kVec>(sT, p.ld, dense, sparse, b, p.F, p.D, p.n, c0 + p.DC, p.DC, lp, warp, nwarps);
      else if (b + gridDim.x < p.B)
        load_T<T, kVec>(sT, p.ld, dense, sparse, b + gridDim.x, p.F, p.D, p.n, 0, p.DC, lp, warp, nwarps);
    }
    write_row<T, S>(out + b * p.out_cols - phase, stage, phase, p.D + p.P, p.out_cols);
  }
}

// ---------------------------------------------------------------- backward
// G[r][c] = G[c][r] = grad of pair (r, c) (2x on the diagonal), and grad_output[:, :D] as fp32. Only kept
// pairs are written; the rest of G was zeroed once and stays zero.
template <typename T>
__device__ __forceinline__ void build_G(T* sG, int gld, float* gsm, const T* __restrict__ go_row,
                                        const BwdParams& p) {
  constexpr int U = 4;  // loads in flight per thread
  for (int i0 = threadIdx.x; i0 < p.P; i0 += U * blockDim.x) {
    T v[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int i = i0 + u * blockDim.x;
      v[u] = i < p.P ? go_row[p.D + i] : from_f<T>(0.0f);
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int i = i0 + u * blockDim.x;
      if (i >= p.P) break;
      int r, c;
      pair_from_index(i, p.n, p.self, p.upper, r, c);
      if (r == c) {
        sG[r * gld + r] = from_f<T>(2.0f * to_f(v[u]));
      } else {
        sG[r * gld + c] = v[u];
        sG[c * gld + r] = v[u];
      }
    }
  }
  for (int j = threadIdx.x; j < p.D; j += blockDim.x) gsm[j] = to_f(go_row[j]);
}

template <typename T>
__device__ __forceinline__ T* grad_row(T* gd, T* gs, int64_t b, const BwdParams& p, int m) {
  return m == 0 ? gd + b * p.D : gs + (b * p.F + (m - 1)) * static_cast<int64_t>(p.D);
}

// 16x16 tile of grad_T: rows of strip i, columns [c0 + 16 d, +16).
template <typename T, bool kVec>
__device__ __forceinline__ void bwd_tile_tc(const T* sG, const T* sT, const float* gsm, T* scr, int i, int d,
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
        if (dc < p.D) v0 += gsm[dc];
        if (dc + 1 < p.D) v1 += gsm[dc + 1];
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
__device__ __forceinline__ void bwd_tile_simt(const float* sG, const float* sT, const float* gsm, int i, int d,
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
        if (dc + e < p.D) v[e] += gsm[dc + e];
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

template <typename T, bool kVec>
__global__ void __launch_bounds__(kMaxWarps * 32)
    dot_bwd_kernel(const T* __restrict__ go, const T* __restrict__ dense, const T* __restrict__ sparse,
                   T* __restrict__ gd, T* __restrict__ gs, const BwdParams p) {
  constexpr int VEC = 16 / sizeof(T);
  constexpr bool kTC = !std::is_same_v<T, float>;
  extern __shared__ __align__(16) unsigned char smem[];
  T* sT = reinterpret_cast<T*>(smem);
  T* sG = reinterpret_cast<T*>(smem + p.g_off);
  float* gsm = reinterpret_cast<float*>(smem + p.gsm_off);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  T* scr = reinterpret_cast<T*>(smem + p.scr_off) + warp * 16 * kScrLd;
  const int tile_cols = kTC ? 16 : 32;
  const int ndb = p.DC / tile_cols, nitems = (p.n_pad / 16) * ndb;
  const LoadPlan lp = make_load_plan(kVec ? p.DC / VEC : p.DC, lane);

  zero_smem(sT + p.n * p.ld, (p.n_pad - p.n) * p.ld * static_cast<int>(sizeof(T)));
  zero_smem(sG, p.n_pad * p.gld * static_cast<int>(sizeof(T)));
  __syncthreads();  // G's zeros land before any thread scatters pair gradients into it
  int64_t b = blockIdx.x;
  load_T<T, kVec>(sT, p.ld, dense, sparse, b, p.F, p.D, p.n, 0, p.DC, lp, warp, nwarps);
  build_G<T>(sG, p.gld, gsm, go + b * p.go_stride, p);
  for (; b < p.B; b += gridDim.x) {
    for (int ch = 0; ch < p.nchunks; ++ch) {
      const int c0 = ch * p.DC;
      if constexpr (kVec) cp_async_wait_all();
      __syncthreads();
      for (int q = warp; q < nitems; q += nwarps) {
        const int i = q / ndb, d = q - i * ndb;
        if constexpr (kTC) bwd_tile_tc<T, kVec>(sG, sT, gsm, scr, i, d, c0, b, gd, gs, p, lane);
        else bwd_tile_simt<kVec>(sG, sT, gsm, i, d, c0, b, gd, gs, p, lane);
      }
      __syncthreads();  // T (and after the last chunk G) are free: fetch what comes next
      if (ch + 1 < p.nchunks) {
        load_T<T, kVec>(sT, p.ld, dense, sparse, b, p.F, p.D, p.n, c0 + p.DC, p.DC, lp, warp, nwarps);
      } else if (b + gridDim.x < p.B) {
        load_T<T, kVec>(sT, p.ld, dense, sparse, b + gridDim.x, p.F, p.D, p.n, 0, p.DC, lp, warp, nwarps);
        build_G<T>(sG, p.gld, gsm, go + (b + gridDim.x) * p.go_stride, p);
      }
    }
  }
}

// ---------------------------------------------------------------- host side
int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

struct Device {
  int sms, smem_optin;
};

Device device_info(int dev) {
  // Attributes straight from the runtime (cheap, no cuBLAS-carrying ATen context header needed).
  Device d;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&d.sms, cudaDevAttrMultiProcessorCount, dev));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&d.smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  return d;
}

int warps_override(const char* name) {  // tuning hook, not part of the API
  const char* v = std::getenv(name);
  return v ? std::max(1, std::min(kMaxWarps, std::atoi(v))) : 0;
}

template <typename Kernel>
int64_t persistent_grid(Kernel kernel, int threads, int64_t smem, int64_t B, const Device& dev) {
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                                      cudaSharedmemCarveoutMaxShared));
  int per_sm = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, static_cast<size_t>(smem)));
  TORCH_CHECK(per_sm > 0, "dot_interaction (CUDA): a block of ", threads, " threads with ", smem,
              " bytes of shared memory cannot be resident on this device");
  return std::min<int64_t>(B, static_cast<int64_t>(per_sm) * dev.sms);
}

[[noreturn]] void too_large(const DotInteractionShape& s, at::ScalarType dt, int64_t need, const Device& dev) {
  TORCH_CHECK(false, "dot_interaction (CUDA): F = ", s.F, ", D = ", s.D, " in ", dt, " needs ", need,
              " bytes of shared memory per block, more than the ", dev.smem_optin,
              " this device allows; use fewer features (F) or the triton/reference backend");
}

template <typename T>
void launch_forward(const at::Tensor& dense, const at::Tensor& sparse, at::Tensor& out,
                    const DotInteractionShape& s, const Device& dev) {
  constexpr bool kTC = !std::is_same_v<T, float>;
  constexpr int VEC = 16 / sizeof(T);
  FwdParams p;
  p.B = s.B; p.F = s.F; p.D = s.D; p.n = s.n; p.P = s.pairs; p.out_cols = s.out_cols;
  p.self = s.self_interaction; p.upper = s.upper;
  p.n_pad = round_up(s.n, 16);
  const int64_t gran = kTC ? 16 : 8;   // chunk granularity (k step of the tile loop)
  const int64_t row_pad = kTC ? 8 : 4; // stride pad: 16 bytes (ldmatrix) / 4 floats (float4 reads)
  auto t_bytes = [&](int64_t dc) { return round_up(p.n_pad * (round_up(dc, gran) + row_pad) * sizeof(T), 16); };
  const int64_t stage_elems = round_up(s.D + s.pairs + VEC, 4);
  const int64_t dfull = kTC ? round_up(s.D, 16) : round_up(s.D, 4);
  bool stage_f32 = !kTC;
  int64_t dc = dfull;
  if (t_bytes(dc) + stage_elems * sizeof(T) > dev.smem_optin) {  // chunk D; partial sums in an fp32 stage
    stage_f32 = true;
    const int64_t avail = dev.smem_optin - stage_elems * 4 - 16;
    const int64_t dmax = (avail / (p.n_pad * static_cast<int64_t>(sizeof(T))) - row_pad) / gran * gran;
    if (dmax < gran) too_large(s, dense.scalar_type(), t_bytes(gran) + stage_elems * 4, dev);
    const int64_t nch = (dfull + dmax - 1) / dmax;
    dc = round_up((dfull + nch - 1) / nch, gran);
  }
  p.DC = static_cast<int>(dc);
  p.nchunks = static_cast<int>((s.D + dc - 1) / dc);
  p.ld = static_cast<int>(round_up(dc, gran) + row_pad);
  p.stage_off = static_cast<int>(t_bytes(dc));
  const int64_t smem = p.stage_off + stage_elems * (stage_f32 ? 4 : sizeof(T));
  p.out_phase0 = static_cast<int>((reinterpret_cast<uintptr_t>(out.data_ptr()) / sizeof(T)) % VEC);

  const int nb = p.n_pad / 16, ntiles = nb * (nb + 1) / 2;
  int nw = kTC ? (ntiles <= 3 ? 1 : ntiles <= 10 ? 2 : ntiles <= 21 ? 4 : 8) : std::min(ntiles, kMaxWarps);
  if (int o = warps_override("RECSYS_DI_FWD_WARPS")) nw = o;
  const bool vec = s.D % VEC == 0 && reinterpret_cast<uintptr_t>(dense.data_ptr()) % 16 == 0 &&
                   reinterpret_cast<uintptr_t>(sparse.data_ptr()) % 16 == 0;
  const T* dp = reinterpret_cast<const T*>(dense.data_ptr());
  const T* sp = reinterpret_cast<const T*>(sparse.data_ptr());
  T* op = reinterpret_cast<T*>(out.data_ptr());
  auto go = [&](auto kernel) {
    const int64_t grid = persistent_grid(kernel, nw * 32, smem, s.B, dev);
    kernel<<<grid, nw * 32, smem, c10::cuda::getCurrentCUDAStream()>>>(dp, sp, op, p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };
  if (stage_f32) {
    if (vec) go(dot_fwd_kernel<T, float, true>);
    else go(dot_fwd_kernel<T, float, false>);
  } else if constexpr (kTC) {
    if (vec) go(dot_fwd_kernel<T, T, true>);
    else go(dot_fwd_kernel<T, T, false>);
  }
}

template <typename T>
void launch_backward(const at::Tensor& go, const at::Tensor& dense, const at::Tensor& sparse, at::Tensor& gd,
                     at::Tensor& gs, const DotInteractionShape& s, const Device& dev) {
  constexpr bool kTC = !std::is_same_v<T, float>;
  constexpr int VEC = 16 / sizeof(T);
  BwdParams p;
  p.B = s.B; p.go_stride = go.stride(0); p.F = s.F; p.D = s.D; p.n = s.n; p.P = s.pairs;
  p.self = s.self_interaction; p.upper = s.upper;
  p.n_pad = round_up(s.n, 16);
  const int64_t gran = kTC ? 16 : 32;  // output tile width
  const int64_t row_pad = kTC ? 8 : 4;
  p.gld = static_cast<int>(p.n_pad + row_pad);
  const int64_t g_bytes = round_up(p.n_pad * p.gld * sizeof(T), 16);
  const int64_t gsm_bytes = round_up(s.D * 4, 16);
  const int64_t scr_bytes_per_warp = kTC ? 16 * kScrLd * sizeof(T) : 0;
  auto t_bytes = [&](int64_t dc) { return round_up(p.n_pad * (dc + row_pad) * sizeof(T), 16); };
  const int64_t fixed = g_bytes + gsm_bytes + kMaxWarps * scr_bytes_per_warp;
  const int64_t dfull = round_up(s.D, gran);
  int64_t dc = dfull;
  if (t_bytes(dc) + fixed > dev.smem_optin) {
    const int64_t dmax = ((dev.smem_optin - fixed - 16) / (p.n_pad * static_cast<int64_t>(sizeof(T))) - row_pad) /
                         gran * gran;
    if (dmax < gran) too_large(s, dense.scalar_type(), t_bytes(gran) + fixed, dev);
    const int64_t nch = (dfull + dmax - 1) / dmax;
    dc = round_up((dfull + nch - 1) / nch, gran);
  }
  p.DC = static_cast<int>(dc);
  p.nchunks = static_cast<int>((s.D + dc - 1) / dc);
  p.ld = static_cast<int>(dc + row_pad);
  const int nitems = (p.n_pad / 16) * static_cast<int>(dc / gran);
  int nw = std::max(1, std::min(kMaxWarps, (nitems + 3) / 4));
  if (int o = warps_override("RECSYS_DI_BWD_WARPS")) nw = o;
  p.g_off = static_cast<int>(t_bytes(dc));
  p.gsm_off = static_cast<int>(p.g_off + g_bytes);
  p.scr_off = static_cast<int>(p.gsm_off + gsm_bytes);
  const int64_t smem = p.scr_off + nw * scr_bytes_per_warp;

  const bool vec = s.D % VEC == 0 && reinterpret_cast<uintptr_t>(dense.data_ptr()) % 16 == 0 &&
                   reinterpret_cast<uintptr_t>(sparse.data_ptr()) % 16 == 0;
  const T* gop = reinterpret_cast<const T*>(go.data_ptr());
  const T* dp = reinterpret_cast<const T*>(dense.data_ptr());
  const T* sp = reinterpret_cast<const T*>(sparse.data_ptr());
  T* gdp = reinterpret_cast<T*>(gd.data_ptr());
  T* gsp = reinterpret_cast<T*>(gs.data_ptr());
  auto launch = [&](auto kernel) {
    const int64_t grid = persistent_grid(kernel, nw * 32, smem, s.B, dev);
    kernel<<<grid, nw * 32, smem, c10::cuda::getCurrentCUDAStream()>>>(gop, dp, sp, gdp, gsp, p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };
  if (vec) launch(dot_bwd_kernel<T, true>);
  else launch(dot_bwd_kernel<T, false>);
}

void check_cuda(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor for the CUDA kernel, got ", t.device());
}

// Sizes are int32 inside the kernels; shared memory bounds them long before this does.
void check_int32(const DotInteractionShape& s) {
  TORCH_CHECK(s.n <= 65535 && s.D <= (1 << 24) && s.out_cols <= (1LL << 30),
              "dot_interaction (CUDA): shape too large (F = ", s.F, ", D = ", s.D, ", output columns = ",
              s.out_cols, ")");
}

template <typename F>
void dispatch(at::ScalarType dt, F&& f) {
  switch (dt) {
    case at::kHalf: f(__half{}); break;
    case at::kBFloat16: f(__nv_bfloat16{}); break;
    case at::kFloat: f(float{}); break;
    default: TORCH_CHECK(false, "dot_interaction (CUDA): unsupported dtype ", dt);
  }
}

at::Tensor dot_interaction_cuda(const at::Tensor& dense, const at::Tensor& sparse, bool self_interaction,
                                c10::string_view layout, int64_t pad_to_multiple) {
  const auto s = check_dot_interaction_inputs(dense, sparse, self_interaction, layout, pad_to_multiple);
  check_cuda(dense, "dense");
  check_cuda(sparse, "sparse");
  check_int32(s);
  c10::cuda::CUDAGuard guard(dense.device());
  auto out = at::empty({s.B, s.out_cols}, dense.options());
  if (s.B == 0) return out;
  const auto d = dense.contiguous();
  const auto sp = sparse.contiguous();
  const Device dev = device_info(dense.get_device());
  dispatch(dense.scalar_type(), [&](auto tag) { launch_forward<decltype(tag)>(d, sp, out, s, dev); });
  return out;
}

std::tuple<at::Tensor, at::Tensor> dot_interaction_backward_cuda(const at::Tensor& grad_output,
                                                                 const at::Tensor& dense,
                                                                 const at::Tensor& sparse, bool self_interaction,
                                                                 c10::string_view layout) {
  const auto s = check_dot_interaction_backward_inputs(grad_output, dense, sparse, self_interaction, layout);
  check_cuda(grad_output, "grad_output");
  check_cuda(dense, "dense");
  check_cuda(sparse, "sparse");
  check_int32(s);
  c10::cuda::CUDAGuard guard(dense.device());
  auto gd = at::empty({s.B, s.D}, dense.options());
  auto gs = at::empty({s.B, s.F, s.D}, sparse.options());
  if (s.B == 0) return {gd, gs};
  // grad_output is read row by row through its row stride; only a strided column dimension forces a copy.
  const auto go = grad_output.stride(1) == 1 ? grad_output : grad_output.contiguous();
  const auto d = dense.contiguous();
  const auto sp = sparse.contiguous();
  const Device dev = device_info(dense.get_device());
  dispatch(dense.scalar_type(), [&](auto tag) { launch_backward<decltype(tag)>(go, d, sp, gd, gs, s, dev); });
  return {gd, gs};
}

}  // namespace
}  // namespace dot_cuda

TORCH_LIBRARY_IMPL(recsys, CUDA, m) {
  m.impl("dot_interaction", &dot_cuda::dot_interaction_cuda);
  m.impl("dot_interaction_backward", &dot_cuda::dot_interaction_backward_cuda);
}

}  // namespace recsys
