// Device building blocks of the CUDA HSTU attention (hstu_attention_cuda.cu holds the kernels, the launch
// logic and the algorithm note; the PTX wrappers are in common/ptx.cuh): numbers, the int32 mask with its
// block-level bounds, the time bucket, tile loaders, the warp-level tile
// products and the pointwise part. Every tile product leaves its result in the mma.sync m16n8 accumulator
// layout, so the fp32/fp64 FMA path runs the very same kernels as the fp16/bf16 tensor-core path.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "common/ptx.cuh"
#include "hstu_attention/hstu_attention.h"

namespace recsys {
namespace hstu_cuda {

// ---------------------------------------------------------------- numbers
// torch builds with __CUDA_NO_HALF_CONVERSIONS__: every conversion is explicit.
template <typename T>
struct Num;
template <>
struct Num<float> {
  using acc = float;
  static __device__ __forceinline__ float in(float x) { return x; }
  static __device__ __forceinline__ float out(float x) { return x; }
};
template <>
struct Num<double> {
  using acc = double;
  static __device__ __forceinline__ double in(double x) { return x; }
  static __device__ __forceinline__ double out(double x) { return x; }
};
template <>
struct Num<__half> {
  using acc = float;
  static __device__ __forceinline__ float in(__half x) { return __half2float(x); }
  static __device__ __forceinline__ __half out(float x) { return __float2half_rn(x); }
};
template <>
struct Num<__nv_bfloat16> {
  using acc = float;
  static __device__ __forceinline__ float in(__nv_bfloat16 x) { return __bfloat162float(x); }
  static __device__ __forceinline__ __nv_bfloat16 out(float x) { return __float2bfloat16_rn(x); }
};
template <typename T>
using acc_t = typename Num<T>::acc;
template <typename T>
constexpr bool kTensorCores = sizeof(T) == 2;


// ---------------------------------------------------------------- mask
// HstuMask in int32 for one sequence. The host clamps c to max_seq_len + 1 and w to max_seq_len, which keeps
// every sum in range and changes no mask value (c > n makes every id 0 and limit <= 0: only the diagonal is
// valid, whatever c is; a window >= n never binds).
struct Mask {
  int n, limit, c, w;
  bool targets, causal;

  __host__ __device__ __forceinline__ int id(int x) const {
    if (c > 0) x = x - c + 1 > 0 ? x - c + 1 : 0;
    if (targets && x > limit) x = limit;
    return x;
  }
  // Valid pair for positions i, j < n with ids ii = id(i), jj = id(j) (exactly HstuMask::valid).
  __host__ __device__ __forceinline__ bool valid(int i, int j, int ii, int jj) const {
    int dist = ii - jj;
    if (!causal && dist < 0) dist = -dist;
    bool ok = i == j || dist > 0;
    if (w > 0) ok = ok && dist <= w;
    if (c > 0) ok = ok || (ii == 0 && jj < limit);
    return ok;
  }
};

__host__ __device__ __forceinline__ Mask make_mask(int n, int num_targets, bool targets, int c, int w, bool causal) {
  return Mask{n, (c > 0 ? n - c + 1 : n) - (targets ? num_targets : 0), c, w, targets, causal};
}

struct Span {
  int lo, hi;
};

// Keys that query rows [r0, r1) (0 <= r0 < r1 <= n) can see: every valid (i, j) has lo <= j < hi. Ids never
// decrease with the position, so the first and last row bound the whole block.
__host__ __device__ __forceinline__ Span key_span(const Mask& m, int r0, int r1) {
  // A contextual row (id 0, possible only while limit > 0) sees every key whose id is below the limit.
  if (m.c > 0 && m.limit > 0 && r0 <= m.c - 1) return Span{0, m.n};
  Span s{0, m.n};
  // Off the diagonal a causal pair needs id(i) > id(j), hence j < i.
  if (m.causal) s.hi = r1;
  if (m.w > 0) {
    const int lowest = m.id(r0) - m.w;  // smallest key id within the window of any row of the block
    if (lowest > 0) s.lo = lowest + (m.c > 0 ? m.c - 1 : 0);
    if (!m.causal) {
      const int highest = m.id(r1 - 1) + m.w;
      if (highest < m.id(m.n - 1)) s.hi = max(r1, highest + (m.c > 0 ? m.c : 1));
    }
  }
  return s;
}

// The first query block, from block mb on (blocks of BM rows), whose key span meets keys [n0, n1); the block
// count when none does. The dK / dV kernels walk their query blocks with it.
template <int BM>
__host__ __device__ __forceinline__ int next_query_block(const Mask& m, int mb, int n0, int n1) {
  const int nmb = (m.n + BM - 1) / BM;
  for (; mb < nmb; ++mb) {
    const Span sp = key_span(m, mb * BM, min(mb * BM + BM, m.n));
    if (sp.lo < n1 && sp.hi > n0) break;
  }
  return mb;
}

// Every pair of rows [r0, r1) x keys [c0, c1) is valid and inside the sequence: the kernels then skip the
// per-element mask. Sufficient, not necessary (the contextual rule only adds pairs).
__host__ __device__ __forceinline__ bool tile_full(const Mask& m, int r0, int r1, int c0, int c1) {
  if (r1 > m.n || c1 > m.n) return false;
  const int a = m.id(r0), b = m.id(r1 - 1), x = m.id(c0), y = m.id(c1 - 1);
  if (a > y) return m.w == 0 || b - x <= m.w;
  if (!m.causal && b < x) return m.w == 0 || y - a <= m.w;
  return false;
}

// ---------------------------------------------------------------- relative bias
// hstu_time_bucket, the float32 formula of every backend, exactly. "log" needs no logarithm. x = max(float(|diff|),
// 1) lies in quarter-octave k = (bits(x) >> 21) - 508 (exponent and top two mantissa bits; x < 2^64 gives k <
// 256). A quarter-octave spans a factor of at most 1.25 and a bucket e^0.301 = 1.35, so it holds at most one step:
// the bucket is lo + (x >= thr). The host tabulates (lo, thr) from hstu_time_bucket_of (log_steps in
// hstu_attention_cuda.cu); each kernel copies the table to shared memory with the two time-bias values of the
// quarter-octave beside them (LogBin), so one 16-byte gather gives the bias and the bucket: ~8 instructions an
// element, where the octave table with three thresholds and a second gather took ~18 (sm_90 SASS) and the SFU
// log2 with an out-of-line exact call near bucket edges ~4x that. "sqrt" is exact as written (IEEE sqrtf; the
// root of |diff| < 2^63 fits int64).
constexpr int kLogBins = 256;      // quarter-octaves of x in [1, 2^64)
constexpr int kLogBinFirst = 508;  // bits(1.0f) >> 21

template <typename A>
struct alignas(16) LogBin {
  float thr;  // the quarter-octave's bucket step (+inf: none)
  int lo;     // its bucket below thr
  A v0, v1;   // time_bias[lo], time_bias[min(lo + 1, nb)]
};

// The time bias of diff under "log" buckets; bucket gets its index.
template <typename A>
__device__ __forceinline__ A log_time_bias(int64_t diff, const LogBin<A>* bins, int& bucket) {
  const float x = fmaxf(fabsf(static_cast<float>(diff)), 1.f);  // float(|diff|) = |float(diff)|: symmetric rounding
  const LogBin<A> b = bins[(__float_as_uint(x) >> 21) - kLogBinFirst];
  const bool up = x >= b.thr;
  bucket = b.lo + up;
  return up ? b.v1 : b.v0;
}

__device__ __forceinline__ int sqrt_time_bucket(int64_t diff, int nb) {
  const int64_t k = static_cast<int64_t>(sqrtf(fabsf(static_cast<float>(diff))));
  return k < nb ? static_cast<int>(k) : nb;
}

// The constants of S = alpha Q Kᵀ + R and P = SiLU(S) / N.
template <typename A>
struct Pointwise {
  A alpha, inv_n;
  int N, nb;
  bool has_pos, has_time, log_bucket;
  const A* pos;           // (2N - 1,)
  const A* tb;            // (nb + 1,)
  const int2* log_steps;  // (kLogBins,) "log" buckets: (lo, bits of thr) a quarter-octave, see log_time_bias
};

// Visits the elements of an accumulator tile (MT x NT tiles of 16 x 8, C layout) with their positions: g(i, j, ii,
// jj, rts_row, col, mt, nt, e) for query position i, key position j and their mask ids ii, jj (rts_row: the row's
// index into the row timestamps, col: the column's index into the column timestamps). Columns are the outer loop
// so that only the 2 MT rows' data stay in registers.
template <bool kQueryRows, int MT, int NT, typename G>
__device__ __forceinline__ void for_each_position(const Mask& m, int row0, int col0, int lane, G&& g) {
  const int gr = lane >> 2, c = lane & 3;
  int rpos[MT][2], rid[MT][2];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
      rpos[mt][hr] = row0 + 16 * mt + gr + 8 * hr;
      rid[mt][hr] = m.id(rpos[mt][hr]);
    }
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int ec = 0; ec < 2; ++ec) {
      const int cl = 8 * nt + 2 * c + ec, cpos = col0 + cl, cid = m.id(cpos);
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int hr = 0; hr < 2; ++hr) {
          const int i = kQueryRows ? rpos[mt][hr] : cpos, j = kQueryRows ? cpos : rpos[mt][hr];
          const int ii = kQueryRows ? rid[mt][hr] : cid, jj = kQueryRows ? cid : rid[mt][hr];
          g(i, j, ii, jj, 16 * mt + gr + 8 * hr, cl, mt, nt, 2 * hr + ec);
        }
    }
}

// Visits the elements of an accumulator tile under the plain (causal or full) mask, no targets, context or window:
// g(ok, rl, cl, mt, nt, e) with rl / cl the element's row / column within the tile. Key j is valid for query i iff
// j <= last(i), the query's last visible key (i for causal, n - 1 otherwise; -1 past the sequence): one compare
// an element, last() hoisted per row / column. Its own loop rather than through for_each_position: with the ids
// of the general mask in the same loop, the fp32 dK/dV kernels spilled 36-44 bytes.
template <bool kQueryRows, int MT, int NT, typename G>
__device__ __forceinline__ void for_each_plain(const Mask& m, int row0, int col0, int lane, G&& g) {
  const int gr = lane >> 2, c = lane & 3;
  auto last = [&](int i) { return i < m.n ? (m.causal ? i : m.n - 1) : -1; };
  int rlast[MT][2];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
      const int rpos = row0 + 16 * mt + gr + 8 * hr;
      rlast[mt][hr] = kQueryRows ? last(rpos) : rpos;  // keys as rows keep their position
    }
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int ec = 0; ec < 2; ++ec) {
      const int cl = 8 * nt + 2 * c + ec, cpos = col0 + cl, ckey = kQueryRows ? cpos : last(cpos);
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int hr = 0; hr < 2; ++hr) {
          const bool ok = kQueryRows ? ckey <= rlast[mt][hr] : rlast[mt][hr] <= ckey;  // key <= last(query)
          g(ok, 16 * mt + gr + 8 * hr, cl, mt, nt, 2 * hr + ec);
        }
    }
}

// Runs f(x, ok, s, bucket, mt, nt, e) over the elements x of an accumulator tile (MT x NT tiles of 16 x 8, C
// layout) holding the products q·k: ok is the mask, s = alpha x + R the score of a valid pair (0 when masked),
// bucket its time bucket (-1 when masked or without time bias). kQueryRows: the tile's rows are queries (forward,
// dQ), else keys (dK/dV, which works on Sᵀ). row0 / col0: positions of the tile's first row / column; rts / cts:
// their timestamps in shared memory (ts[next(i)] for queries, ts[j] for keys); tb: the time table (shared or
// global memory); bins: the "log" table in shared memory (log_time_bias); pdiag: the tile's position-bias values
// (load_pos_window) from the warp's first row and column, by column - row (queries as rows) or row - column
// (keys as rows). full: every pair is valid (no test).
// kBias: the kernel build that runs only with a bias table, so the bias-free loops are compiled out of it (bf16
// d = 64 forward: 12.8k SASS instructions to 9.7k; the bf16 d = 128 forward's spills gone).
// Separate loops, each unrolled over the tile: without bias (valid tiles, the plain mask, the general mask), the
// bias of the HSTU models (both tables, "log" buckets, plain mask: no branch in the loop), and every other bias
// case. One loop holding every case took ~120 instructions an element (~7,500 a tile pass, mostly branches
// around the bias), which made masked tiles instruction-bound; branches left in a loop also serialise it (each
// element waits for the last one's loads).
template <bool kQueryRows, bool kBias, int MT, int NT, typename A, typename F>
__device__ __forceinline__ void for_each_score(A (&acc)[MT][NT][4], const Pointwise<A>& pw, const A* tb,
                                               const LogBin<A>* bins, const A* pdiag, const Mask& m, bool full,
                                               int row0, int col0, const int64_t* rts, const int64_t* cts, int lane,
                                               F&& f) {
  const bool plain = !m.targets && m.c == 0 && m.w == 0;
  if constexpr (!kBias) {
    if (full) {
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e) f(acc[mt][nt][e], true, pw.alpha * acc[mt][nt][e], -1, mt, nt, e);
    } else if (plain) {
      for_each_plain<kQueryRows, MT, NT>(m, row0, col0, lane, [&](bool ok, int, int, int mt, int nt, int e) {
        f(acc[mt][nt][e], ok, ok ? pw.alpha * acc[mt][nt][e] : A(0), -1, mt, nt, e);
      });
    } else {
      for_each_position<kQueryRows, MT, NT>(m, row0, col0, lane,
                                            [&](int i, int j, int ii, int jj, int, int, int mt, int nt, int e) {
        const bool ok = (i < m.n) & (j < m.n) && m.valid(i, j, ii, jj);
        f(acc[mt][nt][e], ok, ok ? pw.alpha * acc[mt][nt][e] : A(0), -1, mt, nt, e);
      });
    }
    return;
  }
  if (pw.has_pos && pw.has_time && pw.log_bucket && plain) {
    // The diagonal of element (mt, nt, e) is this lane's (from its first row g and column 2c) plus a constant:
    // each position-bias read is one shared load at an immediate offset from pos_lane.
    const int g = lane >> 2, c = lane & 3;
    const A* pos_lane = pdiag + (kQueryRows ? 2 * c - g : g - 2 * c);
    for_each_plain<kQueryRows, MT, NT>(m, row0, col0, lane, [&](bool ok, int rl, int cl, int mt, int nt, int e) {
      const int dc = 8 * nt + (e & 1), dr = 16 * mt + 8 * (e >> 1);
      int bucket;
      const A tv = log_time_bias(kQueryRows ? rts[rl] - cts[cl] : cts[cl] - rts[rl], bins, bucket);
      const A s = pw.alpha * acc[mt][nt][e] + pos_lane[kQueryRows ? dc - dr : dr - dc] + tv;
      f(acc[mt][nt][e], ok, ok ? s : A(0), ok ? bucket : -1, mt, nt, e);
    });
    return;
  }
  for_each_position<kQueryRows, MT, NT>(m, row0, col0, lane,
                                        [&](int i, int j, int ii, int jj, int r, int cl, int mt, int nt, int e) {
    const bool ok = full | ((i < m.n) & (j < m.n) && m.valid(i, j, ii, jj));
    // Computed for every element (no divergent branch); padding positions read the window's zeros.
    A s = pw.alpha * acc[mt][nt][e];
    int bucket = -1;
    if (pw.has_pos) s += pdiag[kQueryRows ? (j - col0) - (i - row0) : (j - row0) - (i - col0)];
    if (pw.has_time) {
      const int64_t diff = kQueryRows ? rts[r] - cts[cl] : cts[cl] - rts[r];
      if (pw.log_bucket) {
        s += log_time_bias(diff, bins, bucket);
      } else {
        bucket = sqrt_time_bucket(diff, pw.nb);
        s += tb[bucket];
      }
    }
    f(acc[mt][nt][e], ok, ok ? s : A(0), ok ? bucket : -1, mt, nt, e);
  });
}

// 1 / (1 + e^-x). bf16 rounds P to 8 bits right after, so 0.5 + 0.5 tanh(x / 2) by the one-instruction
// tanh.approx.f32 (relative error ~2^-11; one special-function op instead of two, as the Triton kernel does); fp16
// keeps 11 bits, so the SFU exponential and reciprocal; fp32/fp64 use the accurate library functions (the fp32
// reference is held to ~1e-6).
template <typename T, typename A>
__device__ __forceinline__ A sigmoid(A x) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    float t;
    asm("tanh.approx.f32 %0, %1;" : "=f"(t) : "f"(0.5f * x));
    return fmaf(0.5f, t, 0.5f);
  } else if constexpr (std::is_same_v<T, __half>) {
    return __fdividef(1.f, 1.f + __expf(-x));
  } else if constexpr (std::is_same_v<A, float>) {
    return 1.f / (1.f + expf(-x));
  } else {
    return 1.0 / (1.0 + exp(-x));
  }
}

// P = SiLU(x) / N = x sigmoid(x) inv_n; 0 at x = 0, so masked scores (0) need no select. bf16: with h = x / 2
// and t = tanh(h), P = u t + u for u = h inv_n (four instructions with one special-function op).
template <typename T, typename A>
__device__ __forceinline__ A silu_over_n(A x, A inv_n) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    const float h = 0.5f * x;
    float t;
    asm("tanh.approx.f32 %0, %1;" : "=f"(t) : "f"(h));
    const float u = h * inv_n;
    return fmaf(u, t, u);
  } else {
    return x * sigmoid<T>(x) * inv_n;
  }
}

// N P = SiLU(x) from h = x / 2 in bf16's range: h + h tanh(h), two instructions with one special-function op. A
// forward that takes its scores pre-scaled by alpha / 2 and scales its output by 1 / N spends these two an element
// instead of silu_over_n's four after the alpha multiply.
__device__ __forceinline__ float silu_of_half(float h) {
  float t;
  asm("tanh.approx.f32 %0, %1;" : "=f"(t) : "f"(h));
  return fmaf(h, t, h);
}

// The bias-free bf16 backward's pointwise part from h = alpha s / 2 (scores pre-scaled), t = tanh(h): returns
// 2 N dS / dP = (1 + t) + h (1 - t^2) (SiLU'(2h) = sigmoid (1 + 2h (1 - sigmoid)) with sigmoid = (1 + t) / 2),
// and N P = h + h t in np. Four instructions with one special-function op, against ~10 for the same values with
// 1 / N, 1 / 2 and alpha applied per element; the kernels scale dK, dQ by alpha / (2N) and dV by 1 / N instead.
__device__ __forceinline__ float dsilu_of_half(float h, float& np) {
  float t;
  asm("tanh.approx.f32 %0, %1;" : "=f"(t) : "f"(h));
  np = fmaf(h, t, h);
  return fmaf(h, fmaf(-t, t, 1.f), 1.f + t);
}

// ---------------------------------------------------------------- loaders
// Rows [r0, r0 + R) of one head into s (row stride LD): x points at the sequence's first row of that head,
// ldg is the row stride in global memory. Rows past n and columns past D are written as zeros, so the padded
// products add nothing. vec: 16-byte cp.async (D a multiple of the vector, 16-byte aligned rows), else plain
// loads (odd head dims such as 25).
template <typename T, int R, int DP, int LD>
__device__ __forceinline__ void load_tile(T* s, const T* x, int64_t ldg, int r0, int n, int D, bool vec) {
  if (vec) {
    constexpr int V = 16 / sizeof(T), CPR = DP / V;
    for (int idx = threadIdx.x; idx < R * CPR; idx += blockDim.x) {
      const int r = idx / CPR, col = (idx - r * CPR) * V;
      const bool ok = r0 + r < n && col < D;
      cp_async<16>(s + r * LD + col, ok ? x + (r0 + r) * ldg + col : x, ok);
    }
  } else {
    for (int idx = threadIdx.x; idx < R * DP; idx += blockDim.x) {
      const int r = idx / DP, col = idx - r * DP;
      s[r * LD + col] = r0 + r < n && col < D ? x[(r0 + r) * ldg + col] : Num<T>::out(0.f);
    }
  }
}

// Timestamps of rows [r0, r0 + R) (ts points at the sequence's first row): ts[min(i + 1, n - 1)] for queries
// (the next item's time), ts[j] for keys; zeros past n.
template <int R>
__device__ __forceinline__ void load_ts(int64_t* s, const int64_t* ts, int r0, int n, bool next) {
  for (int r = threadIdx.x; r < R; r += blockDim.x) {
    const int i = r0 + r;
    const bool ok = i < n;
    cp_async<8>(s + r, ok ? ts + (next ? min(i + 1, n - 1) : i) : ts, ok);
  }
}

// The position-bias values of a tile of QB queries from qi0 and KB keys from kj0: s[u] = pos[j - i + N - 1] for
// u = (j - kj0) - (i - qi0) + QB - 1, zero past the table (padding rows, never valid). Read by diagonal
// (for_each_score's pdiag), it spares each element a global gather with its 64-bit address.
template <int QB, int KB, typename A>
__device__ __forceinline__ void load_pos_window(A* s, const A* pos, int qi0, int kj0, int N) {
  const int x0 = kj0 - qi0 - (QB - 1) + N - 1;
  for (int u = threadIdx.x; u < QB + KB - 1; u += blockDim.x) {
    const int x = x0 + u;
    const bool ok = x >= 0 && x <= 2 * N - 2;
    cp_async<sizeof(A)>(s + u, ok ? pos + x : pos, ok);
  }
}

// ---------------------------------------------------------------- warp tile products
// acc (MT x NT tiles of 16x8 in the mma.sync C layout: lane (g, c) = (lane / 4, lane % 4) holds rows g and
// g + 8, columns 2c and 2c + 1) += A B over KS k-steps of 16. A: 16 MT rows of a row-major tile at sA (stride
// lda). B in shared memory, either as [n][k] (kBKN false, e.g. K in Q Kᵀ) or as [k][n] (true, e.g. V in P V).
template <typename T, int MT, int NT, int KS, bool kBKN>
__device__ __forceinline__ void gemm_ss(acc_t<T> (&acc)[MT][NT][4], const T* sA, int lda, const T* sB, int ldb,
                                        int lane) {
  if constexpr (kTensorCores<T>) {
    static_assert(NT % 2 == 0, "B fragments come in pairs of n-tiles");
#pragma unroll
    for (int ks = 0; ks < KS; ++ks) {
      uint32_t a[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) ldsm_x4(a[mt], sA + (16 * mt + (lane & 15)) * lda + ks * 16 + (lane >> 4) * 8);
#pragma unroll
      for (int np = 0; np < NT / 2; ++np) {
        uint32_t b[4];
        if constexpr (kBKN) ldsm_x4_trans(b, sB + (ks * 16 + (lane & 15)) * ldb + np * 16 + (lane >> 4) * 8);
        else ldsm_x4(b, sB + (np * 16 + (lane & 7) + ((lane >> 4) << 3)) * ldb + ks * 16 + ((lane >> 3) & 1) * 8);
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          mma16816<T>(acc[mt][2 * np], a[mt], b[0], b[1]);
          mma16816<T>(acc[mt][2 * np + 1], a[mt], b[2], b[3]);
        }
      }
    }
  } else {
    const int g = lane >> 2, c = lane & 3;
#pragma unroll 2
    for (int k = 0; k < KS * 16; ++k) {
      T a[MT][2];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        a[mt][0] = sA[(16 * mt + g) * lda + k];
        a[mt][1] = sA[(16 * mt + g + 8) * lda + k];
      }
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        const int col = 8 * nt + 2 * c;
        const T b0 = kBKN ? sB[k * ldb + col] : sB[col * ldb + k];
        const T b1 = kBKN ? sB[k * ldb + col + 1] : sB[(col + 1) * ldb + k];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          acc[mt][nt][0] = fma(a[mt][0], b0, acc[mt][nt][0]);
          acc[mt][nt][1] = fma(a[mt][0], b1, acc[mt][nt][1]);
          acc[mt][nt][2] = fma(a[mt][1], b0, acc[mt][nt][2]);
          acc[mt][nt][3] = fma(a[mt][1], b1, acc[mt][nt][3]);
        }
      }
    }
  }
}

// acc += P B with P (MT x 2 KS tiles, C layout) held in registers. Tensor cores: the C layout of two adjacent
// n-tiles is the A-fragment layout of one k-step, so P is only rounded to T (as the reference rounds P and
// dS before their products). FMA path: P goes through the warp's scratch tile (16 MT x (16 KS + 1)).
template <typename T, int MT, int NT, int KS, bool kBKN>
__device__ __forceinline__ void gemm_rs(acc_t<T> (&acc)[MT][NT][4], const acc_t<T> (&pa)[MT][2 * KS][4],
                                        const T* sB, int ldb, acc_t<T>* scratch, int lane) {
  if constexpr (kTensorCores<T>) {
#pragma unroll
    for (int ks = 0; ks < KS; ++ks) {
      uint32_t a[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        a[mt][0] = pack2<T>(pa[mt][2 * ks][0], pa[mt][2 * ks][1]);
        a[mt][1] = pack2<T>(pa[mt][2 * ks][2], pa[mt][2 * ks][3]);
        a[mt][2] = pack2<T>(pa[mt][2 * ks + 1][0], pa[mt][2 * ks + 1][1]);
        a[mt][3] = pack2<T>(pa[mt][2 * ks + 1][2], pa[mt][2 * ks + 1][3]);
      }
#pragma unroll
      for (int np = 0; np < NT / 2; ++np) {
        uint32_t b[4];
        if constexpr (kBKN) ldsm_x4_trans(b, sB + (ks * 16 + (lane & 15)) * ldb + np * 16 + (lane >> 4) * 8);
        else ldsm_x4(b, sB + (np * 16 + (lane & 7) + ((lane >> 4) << 3)) * ldb + ks * 16 + ((lane >> 3) & 1) * 8);
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          mma16816<T>(acc[mt][2 * np], a[mt], b[0], b[1]);
          mma16816<T>(acc[mt][2 * np + 1], a[mt], b[2], b[3]);
        }
      }
    }
  } else {
    constexpr int LDP = 16 * KS + 1;
    const int g = lane >> 2, c = lane & 3;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int nt = 0; nt < 2 * KS; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) scratch[(16 * mt + g + 8 * (e >> 1)) * LDP + 8 * nt + 2 * c + (e & 1)] = pa[mt][nt][e];
    __syncwarp();
    gemm_ss<T, MT, NT, KS, kBKN>(acc, scratch, LDP, sB, ldb, lane);
    __syncwarp();
  }
}

template <typename A, int MT, int NT>
__device__ __forceinline__ void zero(A (&acc)[MT][NT][4]) {
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[mt][nt][e] = A(0);
}

// Accumulator tile (rows 16 MT, columns 8 NT, C layout) * scale -> T rows of a shared tile (stride ld), ready to
// leave with store_tile.
template <typename T, int MT, int NT>
__device__ __forceinline__ void acc_to_smem(T* s, int ld, const acc_t<T> (&acc)[MT][NT][4], acc_t<T> scale,
                                            int lane) {
  const int g = lane >> 2, c = lane & 3;
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e)
        s[(16 * mt + g + 8 * (e >> 1)) * ld + 8 * nt + 2 * c + (e & 1)] = Num<T>::out(acc[mt][nt][e] * scale);
}

// Rows [r0, r0 + R) ∩ [0, n) and columns [c0, c0 + CW) ∩ [0, D) of the shared tile s (its column 0 is global
// column c0) to global memory (x at the sequence's first row of the head, row stride ldg).
template <typename T, int R, int CW, int LD>
__device__ __forceinline__ void store_tile(T* x, const T* s, int64_t ldg, int r0, int n, int c0, int D, bool vec) {
  if (vec) {  // D and c0 are multiples of the vector: whole vectors are in or out
    constexpr int V = 16 / sizeof(T), CPR = CW / V;
    for (int idx = threadIdx.x; idx < R * CPR; idx += blockDim.x) {
      const int r = idx / CPR, col = (idx - r * CPR) * V;
      if (r0 + r < n && c0 + col < D)
        *reinterpret_cast<uint4*>(x + (r0 + r) * ldg + c0 + col) = *reinterpret_cast<const uint4*>(s + r * LD + col);
    }
  } else {
    for (int idx = threadIdx.x; idx < R * CW; idx += blockDim.x) {
      const int r = idx / CW, col = idx - r * CW;
      if (r0 + r < n && c0 + col < D) x[(r0 + r) * ldg + c0 + col] = s[r * LD + col];
    }
  }
}

}  // namespace hstu_cuda
}  // namespace recsys
