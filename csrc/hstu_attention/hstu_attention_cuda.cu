// Jagged HSTU attention, CUDA kernels. HSTU: Zhai et al., "Actions Speak Louder than Words: Trillion-Parameter
// Sequential Transducers for Generative Recommendations", ICML 2024; tiling after FlashAttention-2 (Dao, 2023).
// Semantics (mask, relative bias, precision) in recsys_kernels/reference/hstu_attention.py.
//
// Per sequence b and head h: S = alpha Q Kᵀ + R, P = SiLU(S) / N ⊙ M, O = P V. There is no softmax, so the
// forward needs no running max or normaliser: O is a plain sum over key tiles.
//
// Forward: one block per (query block, head, sequence), 4 warps, each warp owning 16 or 32 query rows (16 with
// the bias). Q stays in shared memory; K and V tiles stream through two cp.async stages. Per key tile a warp
// computes its slice of S with mma.sync m16n8k16 (fp32 accumulators), adds R (pos_bias by j - i from the tile's
// window of the table, copied with K and V; time_bias by the bucket of the timestamp gap, from a quarter-octave
// table in shared memory that holds the bias values: R is never materialised), applies the
// mask and SiLU, rounds P to fp16/bf16 in registers (the accumulator layout of S is the A-operand layout of
// P V) and accumulates O. Key tiles outside the block's key span (causal diagonal, local window) are never
// loaded; tiles entirely inside the mask skip the per-element test. Head dims are padded with zeros in shared
// memory up to 64, 128 or 256 (the template size), so 25 or 50 need nothing from the caller. fp32 and fp64 run
// the same kernels with FMA tile products (fp64 exists for gradcheck). On an sm_90 GPU (a build with 9.0a code)
// the fp16/bf16 forward runs hstu_fwd_wgmma.cuh instead: the same algorithm with its tile products on wgmma.
//
// Backward, deterministic (no float atomics): a dK/dV kernel per key block walks the query blocks that can see it
// (S and dP recomputed transposed, dV += Pᵀ dO, dK += dSᵀ Q); a dQ kernel per query block walks its key tiles
// (dQ += dS K) and also reduces the bias gradient dR = dS (unrounded, summed over heads): per tile, the
// diagonal sums of dS (one thread per diagonal, fixed order, carried across neighbouring tiles) go to a
// per-program slice of a scratch buffer indexed by j - i, and the time buckets to a per-program histogram kept
// in integers (exact_histogram.cuh: shared-memory atomics, exact sums). Two small kernels then sum the slices
// in a fixed order. Every result is bit-identical run to run. On an sm_90 GPU the fp16/bf16 dK/dV kernel, and
// the dQ kernel without the bias, run on wgmma (hstu_dkdv_wgmma.cuh, hstu_dq_wgmma.cuh), with the same work lists.
//
// Work lists: the host (which reads seq_offsets anyway for the input checks) lists the non-empty programs, so
// max_seq_len far above the real lengths costs nothing, programs of one (sequence, head) run side by side
// (K and V stay in L2), and the heaviest query blocks of a causal mask start first. The lists travel in the
// kernels' parameters when they fit (InlineWork).
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cudaTypedefs.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <mutex>
#include <optional>
#include <tuple>
#include <vector>

#include "hstu_attention/exact_histogram.cuh"
#include "hstu_attention/hstu_attention_cuda.cuh"

namespace recsys {
namespace hstu_cuda {
namespace {

// ---------------------------------------------------------------- tiles
template <typename T, int DP, bool kBias = false>
struct Cfg {
  static constexpr bool kTC = kTensorCores<T>;
  static constexpr int kLd = DP + 16 / static_cast<int>(sizeof(T));  // 16-byte row pad: conflict-free ldmatrix
  // 4 warps; 2 on the FMA path for wide fp32/fp64 rows so that the tiles fit an A100's shared memory.
  static constexpr int kWarps = kTC || DP * sizeof(T) <= 512 ? 4 : 2;
  static constexpr int kThreads = 32 * kWarps;
  // Tile sizes keep the fp32 accumulators of a warp (O or dQ or dK + dV, plus S and dP) within 255 registers
  // (ptxas, sm_90a: at most 8 bytes of spills, in the 16-bit dQ and fp64 forward kernels at d = 64 / 128); 32 query
  // rows per warp halve the shared-memory reads per mma where they fit (the 128 x 32 / 64 x 64 choice of
  // FlashAttention-2 at head dim 128).
  // forward: query rows per warp. 16 with the bias: its per-element work needs the registers (at 32, the bf16
  // d = 128 build serialised each element's dependent chain of ~9 instructions and a shared gather).
  static constexpr int kFwdWM = kTC && DP <= 128 && !kBias ? 32 : 16;
  static constexpr int kFwdBM = kWarps * kFwdWM;
  static constexpr int kFwdBN = kTC && DP <= 64 ? 64 : 32;       // forward: key tile
  static constexpr int kDqBM = kWarps * 16;                      // dQ: 16 query rows per warp
  static constexpr int kDqBN = kTC && DP <= 128 && !kBias ? 64 : 32;  // dQ: key tile (32 with the bias, as above)
  static constexpr int kKvBN = kWarps * 16;                      // dK/dV: 16 keys per warp
  static constexpr int kKvBM = kTC && DP <= 64 ? 64 : 32;        // dK/dV: query tile
  static constexpr int kChunk = DP < (kTC ? 128 : 64) ? DP : (kTC ? 128 : 64);  // dK/dV output columns
  static_assert(kDqBM + kDqBN - 1 <= kThreads, "one thread per diagonal of a dQ tile");
};

struct Work {
  int b, h, blk, chunk;
};

// A launch carries its work list and sequences in the kernel's parameters instead of a pinned upload
// (probe_upload_latency, H100: a 9 KB upload puts ~8 us in front of a 5 us kernel). H100, bf16, B 128, N 256,
// H 2, d 64, bias-free forward (512 programs + 129 offsets): 0.0425 -> 0.0310 ms with a 4 KB parameter. CUDA 12.1+
// takes up to 32,764 bytes of parameters on sm_70+, so 30 KB hold every issue-3 shape's lists (at most 4,096
// programs + 257 offsets). words: count work items packed as b | h << 16 | blk << 22, then B + 1 int32 offsets,
// then B num_targets when given. count 0: the launch uses Params::work and Params::offsets (uploaded).
constexpr int kInlineWords = 7680;  // 30 KB
struct InlineWork {
  int count, B;
  uint32_t words[kInlineWords];
};

__host__ __device__ __forceinline__ Work unpack_work(uint32_t x) {
  return Work{static_cast<int>(x & 0xffffu), static_cast<int>((x >> 16) & 63u), static_cast<int>(x >> 22), 0};
}

template <typename A>
struct Params {
  const void *q, *k, *v, *dout;
  void *out, *dq, *dk, *dv;
  const int64_t* offsets;    // (B + 1,)
  const int* num_targets;    // (B,) or null
  const int64_t* ts;         // (L,) or null
  const Work* work;          // this launch's programs
  const int64_t* pos_base;   // (B,) first pos partial of each sequence (dQ kernel)
  A* part_pos;               // dQ kernel: per program, diagonal sums of dS by j - i
  double* part_time;         // dQ kernel: per program, dS summed by time bucket (2 nbins, value of bin x at 2x)
  const A* norms;            // dQ kernel: max squared row norms of dO and V (row_norm_max_kernel)
  Pointwise<A> pw;
  int64_t ldq, ldv;          // row strides H * Dqk, H * Dv
  int H, Dqk, Dv, c, w, stages;
  int hist_copies;           // dQ kernel: time-histogram copies in shared memory; 0: in part_time instead
  bool causal, targets, vec, tb_in_smem, hist_wide;
};

// Whether the kernels carry the "log" bucket table (LogBin) in shared memory.
template <typename A>
__host__ __device__ bool log_bins(const Params<A>& p) {
  return p.pw.has_time && p.pw.log_bucket;
}

// Shared-memory carving, evaluated identically on the host (size) and in the kernels (offsets).
struct Carve {
  size_t top = 0;
  __host__ __device__ size_t take(size_t bytes) {
    const size_t at = top;
    top += (bytes + 15) / 16 * 16;
    return at;
  }
};

template <typename T, int DP, bool kBias>
struct FwdSmem {
  size_t q, k, v, kts, qts, tb, bins, pos, scr, total;
  __host__ __device__ FwdSmem(int stages, bool time, bool tb_smem, bool log_bins, int nbins, bool pos_bias) {
    using C = Cfg<T, DP, kBias>;
    const size_t row = C::kLd * sizeof(T);
    Carve c;
    q = c.take(C::kFwdBM * row);
    k = c.take(stages * C::kFwdBN * row);
    v = c.take(stages * C::kFwdBN * row);
    kts = c.take(time ? stages * C::kFwdBN * 8 : 0);
    qts = c.take(time ? C::kFwdBM * 8 : 0);
    tb = c.take(tb_smem ? nbins * sizeof(acc_t<T>) : 0);
    bins = c.take(log_bins ? kLogBins * sizeof(LogBin<acc_t<T>>) : 0);
    pos = c.take(pos_bias ? stages * (C::kFwdBM + C::kFwdBN) * sizeof(acc_t<T>) : 0);
    scr = c.take(C::kTC ? 0 : C::kWarps * 16 * (C::kFwdBN + 1) * sizeof(acc_t<T>));
    total = c.top;
  }
};

template <typename T, int DP, bool kBias>
struct DqSmem {
  size_t q, dout, k, v, kts, qts, tb, bins, pwin, ds, carry, hist, scr, total;
  __host__ __device__ DqSmem(int stages, bool time, bool tb_smem, bool log_bins, int nbins, bool pos, int hist_copies,
                             bool wide) {
    using C = Cfg<T, DP, kBias>;
    using A = acc_t<T>;
    const size_t row = C::kLd * sizeof(T);
    Carve c;
    q = c.take(C::kDqBM * row);
    dout = c.take(C::kDqBM * row);
    k = c.take(stages * C::kDqBN * row);
    v = c.take(stages * C::kDqBN * row);
    kts = c.take(time ? stages * C::kDqBN * 8 : 0);
    qts = c.take(time ? C::kDqBM * 8 : 0);
    tb = c.take(tb_smem ? nbins * sizeof(A) : 0);
    bins = c.take(log_bins ? kLogBins * sizeof(LogBin<A>) : 0);
    pwin = c.take(pos ? stages * (C::kDqBM + C::kDqBN) * sizeof(A) : 0);
    ds = c.take(pos ? C::kDqBM * (C::kDqBN + 1) * sizeof(A) : 0);
    carry = c.take(pos ? 2 * C::kDqBM * sizeof(A) : 0);
    hist = c.take(time ? size_t{1} * hist_cell_bytes(wide) * hist_copies * nbins : 0);
    scr = c.take(C::kTC ? 0 : C::kWarps * 16 * (C::kDqBN + 1) * sizeof(A));
    total = c.top;
  }
};

template <typename T, int DP>
struct KvSmem {
  size_t k, v, q, dout, qts, kts, tb, bins, pos, scr, total;
  __host__ __device__ KvSmem(int stages, bool time, bool tb_smem, bool log_bins, int nbins, bool pos_bias) {
    using C = Cfg<T, DP>;
    const size_t row = C::kLd * sizeof(T);
    Carve c;
    k = c.take(C::kKvBN * row);
    v = c.take(C::kKvBN * row);
    q = c.take(stages * C::kKvBM * row);
    dout = c.take(stages * C::kKvBM * row);
    qts = c.take(time ? stages * C::kKvBM * 8 : 0);
    kts = c.take(time ? C::kKvBN * 8 : 0);
    tb = c.take(tb_smem ? nbins * sizeof(acc_t<T>) : 0);
    bins = c.take(log_bins ? kLogBins * sizeof(LogBin<acc_t<T>>) : 0);
    pos = c.take(pos_bias ? stages * (C::kKvBM + C::kKvBN) * sizeof(acc_t<T>) : 0);
    scr = c.take(C::kTC ? 0 : C::kWarps * 16 * (C::kKvBM + 1) * sizeof(acc_t<T>));
    total = c.top;
  }
};

struct Seq {
  int64_t start;
  Mask m;
};

template <typename A>
__device__ __forceinline__ Seq sequence(const Params<A>& p, int b) {
  const int64_t start = p.offsets[b];
  const int n = static_cast<int>(p.offsets[b + 1] - start);
  return Seq{start, make_mask(n, p.targets ? p.num_targets[b] : 0, p.targets, p.c, p.w, p.causal)};
}

// The program's work item and sequence, from the kernel's parameters when the launch carries them (InlineWork).
template <typename A>
__device__ __forceinline__ Seq program_sequence(const Params<A>& p, const InlineWork& iw, Work& wk) {
  if (iw.count == 0) {
    wk = p.work[blockIdx.x];
    return sequence(p, wk.b);
  }
  wk = unpack_work(iw.words[blockIdx.x]);
  const uint32_t* off = iw.words + iw.count;
  const int64_t start = static_cast<int32_t>(off[wk.b]);
  const int n = static_cast<int>(static_cast<int32_t>(off[wk.b + 1]) - start);
  const int nt = p.targets ? static_cast<int32_t>(off[iw.B + 1 + wk.b]) : 0;
  return Seq{start, make_mask(n, nt, p.targets, p.c, p.w, p.causal)};
}

// One (sequence, head)'s operands: pointers to its first row (the next rows follow at the operand's row stride),
// and the sequence's timestamps when the time bias is on. dout is null in the forward.
template <typename T>
struct HeadRows {
  const T *q, *k, *v, *dout;
  const int64_t* ts;
};

template <typename T, typename A>
__device__ __forceinline__ HeadRows<T> head_rows(const Params<A>& p, const Seq& sq, int h) {
  const int64_t qk = sq.start * p.ldq + h * p.Dqk, vo = sq.start * p.ldv + h * p.Dv;
  return {static_cast<const T*>(p.q) + qk, static_cast<const T*>(p.k) + qk, static_cast<const T*>(p.v) + vo,
          p.dout ? static_cast<const T*>(p.dout) + vo : nullptr, p.pw.has_time ? p.ts + sq.start : nullptr};
}

// The same head's first row of an (L, H, D) result x whose rows are ld apart.
template <typename T>
__device__ __forceinline__ T* head_out(void* x, const Seq& sq, int64_t ld, int h, int D) {
  return static_cast<T*>(x) + sq.start * ld + h * D;
}

// "log" buckets: the quarter-octave table with its time-bias values goes to shared memory (log_time_bias; 4 KB).
// "sqrt": the time table does when small (gathers there are cheap); else it is read from global. The kernels'
// first barrier comes before any use.
template <typename A>
__device__ __forceinline__ const A* time_table(const Params<A>& p, A* s_tb, LogBin<A>* s_bins) {
  if (!p.pw.has_time) return nullptr;
  if (p.pw.log_bucket)
    for (int i = threadIdx.x; i < kLogBins; i += blockDim.x) {
      const int2 step = p.pw.log_steps[i];
      s_bins[i] = LogBin<A>{__int_as_float(step.y), step.x, p.pw.tb[step.x], p.pw.tb[min(step.x + 1, p.pw.nb)]};
    }
  if (!p.tb_in_smem) return p.pw.tb;
  for (int i = threadIdx.x; i <= p.pw.nb; i += blockDim.x) s_tb[i] = p.pw.tb[i];
  return s_tb;
}

// Each kernel is built twice: kBias false (no bias table given) compiles the bias code out, kBias true the
// bias-free score loops (for_each_score). With the bias
// loops in the same kernel the bias-free forward ran 8-14% slower on the H100, though it never runs them
// (registers: bf16 d = 128 went from 251 to 255 plus 32 bytes of spills; split: 238, none), and the dQ
// histogram code took the bias-free bf16 dQ kernel at d = 64 from 168 to 255 registers.
template <bool kBias, typename A>
__device__ __forceinline__ Params<A> specialise(const Params<A>& params) {
  Params<A> p = params;
  if (!kBias) p.pw.has_pos = p.pw.has_time = false;  // constants from here on
  return p;
}

// ---------------------------------------------------------------- forward
template <typename T, int DP, bool kBias>
__global__ void __launch_bounds__(Cfg<T, DP>::kThreads) hstu_fwd_kernel(const Params<acc_t<T>> params,
                                                                         const __grid_constant__ InlineWork iw) {
  using C = Cfg<T, DP, kBias>;
  using A = acc_t<T>;
  const Params<A> p = specialise<kBias>(params);
  constexpr int LD = C::kLd, BM = C::kFwdBM, BN = C::kFwdBN, WM = C::kFwdWM, MT = WM / 16, NT = BN / 8, OT = DP / 8;
  extern __shared__ __align__(16) unsigned char smem[];
  const FwdSmem<T, DP, kBias> L(p.stages, p.pw.has_time, p.tb_in_smem, log_bins(p), p.pw.nb + 1, p.pw.has_pos);
  T* sQ = reinterpret_cast<T*>(smem + L.q);
  T* sK = reinterpret_cast<T*>(smem + L.k);
  T* sV = reinterpret_cast<T*>(smem + L.v);
  int64_t* sKts = reinterpret_cast<int64_t*>(smem + L.kts);
  int64_t* sQts = reinterpret_cast<int64_t*>(smem + L.qts);
  A* sPos = reinterpret_cast<A*>(smem + L.pos);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  A* scr = reinterpret_cast<A*>(smem + L.scr) + warp * 16 * (BN + 1);

  Work wk;
  const Seq sq = program_sequence(p, iw, wk);
  const Mask& m = sq.m;
  const int m0 = wk.blk * BM;
  const Pointwise<A>& pw = p.pw;
  LogBin<A>* bins = reinterpret_cast<LogBin<A>*>(smem + L.bins);
  const HeadRows<T> rows = head_rows<T>(p, sq, wk.h);
  const Span span = key_span(m, m0, min(m0 + BM, m.n));
  const int kb0 = span.lo / BN, kb1 = (span.hi + BN - 1) / BN;

  load_tile<T, BM, DP, LD>(sQ, rows.q, p.ldq, m0, m.n, p.Dqk, p.vec);
  if (pw.has_time) load_ts<BM>(sQts, rows.ts, m0, m.n, true);
  auto load_kv = [&](int kb, int st) {
    load_tile<T, BN, DP, LD>(sK + st * BN * LD, rows.k, p.ldq, kb * BN, m.n, p.Dqk, p.vec);
    load_tile<T, BN, DP, LD>(sV + st * BN * LD, rows.v, p.ldv, kb * BN, m.n, p.Dv, p.vec);
    if (pw.has_time) load_ts<BN>(sKts + st * BN, rows.ts, kb * BN, m.n, false);
    if (pw.has_pos) load_pos_window<BM, BN>(sPos + st * (BM + BN), pw.pos, m0, kb * BN, pw.N);
    cp_async_commit();
  };
  load_kv(kb0, 0);
  // After the first copies are issued, so that the tables' global reads overlap them.
  const A* tb = time_table(p, reinterpret_cast<A*>(smem + L.tb), bins);

  A o[MT][OT][4];
  zero(o);
  for (int kb = kb0; kb < kb1; ++kb) {
    const int st = p.stages == 2 ? (kb - kb0) & 1 : 0;
    if (p.stages == 2 && kb + 1 < kb1) {
      load_kv(kb + 1, st ^ 1);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const int n0 = kb * BN;
    A s[MT][NT][4];
    zero(s);
    gemm_ss<T, MT, NT, DP / 16, false>(s, sQ + warp * WM * LD, LD, sK + st * BN * LD, LD, lane);
    const bool full = tile_full(m, m0, m0 + BM, n0, n0 + BN);
    const A* pdiag = sPos + st * (BM + BN) + BM - 1 - warp * WM;
    for_each_score<true, kBias>(s, pw, tb, bins, pdiag, m, full, m0 + warp * WM, n0, sQts + warp * WM,
                                sKts + st * BN, lane, [&](A& x, bool, A y, int, int, int, int) {
                                  x = silu_over_n<T>(y, pw.inv_n);  // y = 0 when masked
                                });
    gemm_rs<T, MT, OT, BN / 16, true>(o, s, sV + st * BN * LD, LD, scr, lane);
    __syncthreads();  // this stage is free again
    if (p.stages == 1 && kb + 1 < kb1) load_kv(kb + 1, 0);
  }
  cp_async_wait<0>();
  __syncthreads();
  acc_to_smem<T, MT, OT>(sQ + warp * WM * LD, LD, o, A(1), lane);
  __syncthreads();
  T* oh = head_out<T>(p.out, sq, p.ldv, wk.h, p.Dv);
  store_tile<T, BM, DP, LD>(oh, sQ, p.ldv, m0, m.n, 0, p.Dv, p.vec);
}

}  // namespace
}  // namespace hstu_cuda
}  // namespace recsys

// The Hopper (wgmma) forward, dK / dV and dQ kernels, built from the pieces above.
#include "hstu_attention/hstu_dkdv_wgmma.cuh"
#include "hstu_attention/hstu_dq_wgmma.cuh"
#include "hstu_attention/hstu_fwd_wgmma.cuh"

namespace recsys {
namespace hstu_cuda {
namespace {

// ---------------------------------------------------------------- backward: dQ and the bias partials
template <typename T, int DP, bool kBias>
__global__ void __launch_bounds__(Cfg<T, DP>::kThreads) hstu_dq_kernel(const Params<acc_t<T>> params,
                                                                       const __grid_constant__ InlineWork iw) {
  using C = Cfg<T, DP, kBias>;
  using A = acc_t<T>;
  const Params<A> p = specialise<kBias>(params);
  constexpr int LD = C::kLd, BM = C::kDqBM, BN = C::kDqBN, NT = BN / 8, QT = DP / 8, W = C::kWarps;
  extern __shared__ __align__(16) unsigned char smem[];
  const int nbins = p.pw.nb + 1;
  const DqSmem<T, DP, kBias> L(p.stages, p.pw.has_time, p.tb_in_smem, log_bins(p), nbins, p.pw.has_pos,
                               p.hist_copies, p.hist_wide);
  T* sQ = reinterpret_cast<T*>(smem + L.q);
  T* sO = reinterpret_cast<T*>(smem + L.dout);
  T* sK = reinterpret_cast<T*>(smem + L.k);
  T* sV = reinterpret_cast<T*>(smem + L.v);
  int64_t* sKts = reinterpret_cast<int64_t*>(smem + L.kts);
  int64_t* sQts = reinterpret_cast<int64_t*>(smem + L.qts);
  A* sPos = reinterpret_cast<A*>(smem + L.pwin);
  A* sDS = reinterpret_cast<A*>(smem + L.ds);
  A* sCarry = reinterpret_cast<A*>(smem + L.carry);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, cq = lane & 3;
  A* scr = reinterpret_cast<A*>(smem + L.scr) + warp * 16 * (BN + 1);

  Work wk;
  const Seq sq = program_sequence(p, iw, wk);
  const Mask& m = sq.m;
  const int m0 = wk.blk * BM;
  const Pointwise<A>& pw = p.pw;
  LogBin<A>* bins = reinterpret_cast<LogBin<A>*>(smem + L.bins);
  // Before the first copies here (after them, as in the other kernels, the d = 256 builds spilled).
  const A* tb = time_table(p, reinterpret_cast<A*>(smem + L.tb), bins);
  const HeadRows<T> rows = head_rows<T>(p, sq, wk.h);
  const Span span = key_span(m, m0, min(m0 + BM, m.n));
  const int kb0 = span.lo / BN, kb1 = (span.hi + BN - 1) / BN;

  // Bias partials of this program: pos by u = j - i + m0 + BM - 1 in [0, n + BM - 1); time per warp.
  const int U = m.n + BM - 1;
  A* part_pos = nullptr;
  if (pw.has_pos) {
    const int nmb = (m.n + BM - 1) / BM;
    part_pos = p.part_pos + p.pos_base[wk.b] + (static_cast<int64_t>(wk.h) * nmb + wk.blk) * U;
    if (tid < BM) sCarry[tid] = A(0);
  }
  // Time histogram, exact (exact_histogram.cuh): in shared memory, or (too many buckets) in this program's
  // slice of part_time, 16 bytes a bin (its two words, in 2 copies or one of 64 bits); bin x's value then goes
  // to the slice's double 2x.
  double* time_out = p.part_time + static_cast<int64_t>(blockIdx.x) * 2 * nbins;
  ExactHist<A> hist;
  if (pw.has_time) {
    const int copies = p.hist_copies ? p.hist_copies : p.hist_wide ? 1 : 2;
    unsigned* words =
        p.hist_copies ? reinterpret_cast<unsigned*>(smem + L.hist) : reinterpret_cast<unsigned*>(time_out);
    const int n_words = copies * nbins * hist_cell_bytes(p.hist_wide) / 4;
    ExactHist<A>::zero(words, n_words, tid, blockDim.x);
    const int64_t per_lane = static_cast<int64_t>((m.n + BN - 1) / BN) * (BN / 2);  // a lane's elements, at most
    const A bound = sqrt(p.norms[0]) * sqrt(p.norms[1]) * pw.inv_n * A(1.1);  // |dS| <= |dO||V| / N max|SiLU'|
    hist.init(words, p.hist_copies > 0, copies, lane, p.hist_wide, bound, per_lane * W * (32 / copies));
  }

  load_tile<T, BM, DP, LD>(sQ, rows.q, p.ldq, m0, m.n, p.Dqk, p.vec);
  load_tile<T, BM, DP, LD>(sO, rows.dout, p.ldv, m0, m.n, p.Dv, p.vec);
  if (pw.has_time) load_ts<BM>(sQts, rows.ts, m0, m.n, true);
  auto load_kv = [&](int kb, int st) {
    load_tile<T, BN, DP, LD>(sK + st * BN * LD, rows.k, p.ldq, kb * BN, m.n, p.Dqk, p.vec);
    load_tile<T, BN, DP, LD>(sV + st * BN * LD, rows.v, p.ldv, kb * BN, m.n, p.Dv, p.vec);
    if (pw.has_time) load_ts<BN>(sKts + st * BN, rows.ts, kb * BN, m.n, false);
    if (pw.has_pos) load_pos_window<BM, BN>(sPos + st * (BM + BN), pw.pos, m0, kb * BN, pw.N);
    cp_async_commit();
  };
  load_kv(kb0, 0);

  A dq[1][QT][4];
  zero(dq);
  const int il0 = warp * 16 + g;  // this lane's rows: il0 and il0 + 8
  for (int kb = kb0; kb < kb1; ++kb) {
    const int it = kb - kb0, st = p.stages == 2 ? it & 1 : 0;
    if (p.stages == 2 && kb + 1 < kb1) {
      load_kv(kb + 1, st ^ 1);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const int n0 = kb * BN;
    const T* k_s = sK + st * BN * LD;
    A s[1][NT][4], ds[1][NT][4];
    int bucket[NT][4];
    zero(s);
    zero(ds);
    gemm_ss<T, 1, NT, DP / 16, false>(s, sQ + warp * 16 * LD, LD, k_s, LD, lane);
    gemm_ss<T, 1, NT, DP / 16, false>(ds, sO + warp * 16 * LD, LD, sV + st * BN * LD, LD, lane);
    const bool full = tile_full(m, m0, m0 + BM, n0, n0 + BN);
    const A* pdiag = sPos + st * (BM + BN) + BM - 1 - warp * 16;
    for_each_score<true, kBias>(s, pw, tb, bins, pdiag, m, full, m0 + warp * 16, n0, sQts + warp * 16,
                                sKts + st * BN, lane, [&](A&, bool ok, A x, int bk, int, int nt, int f) {
                                  const A sig = sigmoid<T>(x);
                                  ds[0][nt][f] = ok ? ds[0][nt][f] * pw.inv_n * sig * (A(1) + x * (A(1) - sig)) : A(0);
                                  bucket[nt][f] = bk;
                                });
    if (pw.has_time) {
      if (hist.fast()) {  // the common case without a branch an element
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
          for (int f = 0; f < 4; ++f) hist.add_fast(bucket[nt][f], ds[0][nt][f]);
      } else {
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
          for (int f = 0; f < 4; ++f)
            if (bucket[nt][f] >= 0) hist.add(bucket[nt][f], ds[0][nt][f]);
      }
    }
    if (pw.has_pos) {
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int f = 0; f < 4; ++f) sDS[(il0 + 8 * (f >> 1)) * (BN + 1) + 8 * nt + 2 * cq + (f & 1)] = ds[0][nt][f];
    }
    gemm_rs<T, 1, QT, BN / 16, true>(dq, ds, k_s, LD, scr, lane);
    __syncthreads();  // this stage is free again; sDS is complete
    if (p.stages == 1 && kb + 1 < kb1) load_kv(kb + 1, 0);
    if (pw.has_pos && tid < BM + BN - 1) {
      // Thread t sums the tile diagonal u = n0 + t (jl - il = t - BM + 1). The next tile starts at u = n0 + BN,
      // so t >= BN is carried to its thread t - BN (ping-pong buffers); t < BN is final and is stored.
      const int t = tid, par = it & 1;
      // Four running sums (rows il = lo + 4k + r), added in a fixed order: a quarter of the dependent chain.
      const int lo = max(0, BM - 1 - t), hi = min(BM - 1, BM + BN - 2 - t);
      const A* diag = sDS + t - (BM - 1);
      A d4[4] = {A(0), A(0), A(0), A(0)};
      int il = lo;
      for (; il + 3 <= hi; il += 4)
#pragma unroll
        for (int r = 0; r < 4; ++r) d4[r] += diag[(il + r) * (BN + 2)];
#pragma unroll
      for (int r = 0; r < 3; ++r)
        if (il + r <= hi) d4[r] += diag[(il + r) * (BN + 2)];
      A d = (d4[0] + d4[1]) + (d4[2] + d4[3]);
      if (t < BM - 1) d += sCarry[par * BM + t];
      if (t >= BN && kb + 1 < kb1) sCarry[(par ^ 1) * BM + t - BN] = d;
      else if (n0 + t < U) part_pos[n0 + t] = d;
    }
  }
  cp_async_wait<0>();
  __syncthreads();
  if (pw.has_time) {
    const bool bad = __syncthreads_or(hist.bad);
    hist.reduce_rows(nbins, tid, blockDim.x);
    __syncthreads();
    for (int i = tid; i < nbins; i += blockDim.x) time_out[2 * i] = bad ? nan("") : hist.total(i);
  }
  acc_to_smem<T, 1, QT>(sQ + warp * 16 * LD, LD, dq, pw.alpha, lane);
  __syncthreads();
  T* dqh = head_out<T>(p.dq, sq, p.ldq, wk.h, p.Dqk);
  store_tile<T, BM, DP, LD>(dqh, sQ, p.ldq, m0, m.n, 0, p.Dqk, p.vec);
}

// ---------------------------------------------------------------- backward: dK, dV
template <typename T, int DP, bool kBias>
__global__ void __launch_bounds__(Cfg<T, DP>::kThreads) hstu_dkdv_kernel(const Params<acc_t<T>> params,
                                                                         const __grid_constant__ InlineWork iw) {
  using C = Cfg<T, DP>;
  using A = acc_t<T>;
  const Params<A> p = specialise<kBias>(params);
  constexpr int LD = C::kLd, BN = C::kKvBN, BM = C::kKvBM, CH = C::kChunk, NT = BM / 8, CT = CH / 8;
  extern __shared__ __align__(16) unsigned char smem[];
  const KvSmem<T, DP> L(p.stages, p.pw.has_time, p.tb_in_smem, log_bins(p), p.pw.nb + 1, p.pw.has_pos);
  T* sK = reinterpret_cast<T*>(smem + L.k);
  T* sV = reinterpret_cast<T*>(smem + L.v);
  T* sQ = reinterpret_cast<T*>(smem + L.q);
  T* sO = reinterpret_cast<T*>(smem + L.dout);
  int64_t* sQts = reinterpret_cast<int64_t*>(smem + L.qts);
  int64_t* sKts = reinterpret_cast<int64_t*>(smem + L.kts);
  A* sPos = reinterpret_cast<A*>(smem + L.pos);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  A* scr = reinterpret_cast<A*>(smem + L.scr) + warp * 16 * (BM + 1);

  Work wk;
  const Seq sq = program_sequence(p, iw, wk);
  const Mask& m = sq.m;
  const int n0 = wk.blk * BN, n1 = min(n0 + BN, m.n), c0 = wk.chunk * CH;
  const Pointwise<A>& pw = p.pw;
  LogBin<A>* bins = reinterpret_cast<LogBin<A>*>(smem + L.bins);
  const HeadRows<T> rows = head_rows<T>(p, sq, wk.h);

  // Query blocks whose key span meets this key block, in increasing order.
  const int nmb = (m.n + BM - 1) / BM;
  auto next_block = [&](int mb) { return next_query_block<BM>(m, mb, n0, n1); };
  auto load_q = [&](int mb, int st) {
    load_tile<T, BM, DP, LD>(sQ + st * BM * LD, rows.q, p.ldq, mb * BM, m.n, p.Dqk, p.vec);
    load_tile<T, BM, DP, LD>(sO + st * BM * LD, rows.dout, p.ldv, mb * BM, m.n, p.Dv, p.vec);
    if (pw.has_time) load_ts<BM>(sQts + st * BM, rows.ts, mb * BM, m.n, true);
    if (pw.has_pos) load_pos_window<BM, BN>(sPos + st * (BM + BN), pw.pos, mb * BM, n0, pw.N);
    cp_async_commit();
  };
  load_tile<T, BN, DP, LD>(sK, rows.k, p.ldq, n0, m.n, p.Dqk, p.vec);
  load_tile<T, BN, DP, LD>(sV, rows.v, p.ldv, n0, m.n, p.Dv, p.vec);
  if (pw.has_time) load_ts<BN>(sKts, rows.ts, n0, m.n, false);
  int mb = next_block(0);
  if (mb < nmb) load_q(mb, 0);
  else cp_async_commit();
  // After the first copies are issued, so that the tables' global reads overlap them.
  const A* tb = time_table(p, reinterpret_cast<A*>(smem + L.tb), bins);

  A dk[1][CT][4], dv[1][CT][4];
  zero(dk);
  zero(dv);
  for (int it = 0; mb < nmb; ++it) {
    const int st = p.stages == 2 ? it & 1 : 0, nxt = next_block(mb + 1);
    if (p.stages == 2 && nxt < nmb) {
      load_q(nxt, st ^ 1);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const int m0 = mb * BM;
    const T* q_s = sQ + st * BM * LD;
    const T* o_s = sO + st * BM * LD;
    A s[1][NT][4], dp[1][NT][4];  // transposed tiles: rows are keys, columns queries
    zero(s);
    zero(dp);
    gemm_ss<T, 1, NT, DP / 16, false>(s, sK + warp * 16 * LD, LD, q_s, LD, lane);
    gemm_ss<T, 1, NT, DP / 16, false>(dp, sV + warp * 16 * LD, LD, o_s, LD, lane);
    const bool full = tile_full(m, m0, m0 + BM, n0, n0 + BN);
    const A* pdiag = sPos + st * (BM + BN) + BM - 1 + warp * 16;
    for_each_score<false, kBias>(s, pw, tb, bins, pdiag, m, full, n0 + warp * 16, m0, sKts + warp * 16,
                                 sQts + st * BM, lane, [&](A& x, bool ok, A y, int, int, int nt, int f) {
                                   const A sig = sigmoid<T>(y);
                                   x = y * sig * pw.inv_n;  // y = 0 when masked
                                   dp[0][nt][f] = ok ? dp[0][nt][f] * pw.inv_n * sig * (A(1) + y * (A(1) - sig)) : A(0);
                                 });
    gemm_rs<T, 1, CT, BM / 16, true>(dv, s, o_s + c0, LD, scr, lane);
    gemm_rs<T, 1, CT, BM / 16, true>(dk, dp, q_s + c0, LD, scr, lane);
    __syncthreads();  // this stage is free again
    if (p.stages == 1 && nxt < nmb) load_q(nxt, 0);
    mb = nxt;
  }
  cp_async_wait<0>();
  __syncthreads();
  acc_to_smem<T, 1, CT>(sK + warp * 16 * LD, LD, dk, pw.alpha, lane);
  acc_to_smem<T, 1, CT>(sV + warp * 16 * LD, LD, dv, A(1), lane);
  __syncthreads();
  T* dkh = head_out<T>(p.dk, sq, p.ldq, wk.h, p.Dqk);
  T* dvh = head_out<T>(p.dv, sq, p.ldv, wk.h, p.Dv);
  store_tile<T, BN, CH, LD>(dkh, sK, p.ldq, n0, m.n, c0, p.Dqk, p.vec);
  store_tile<T, BN, CH, LD>(dvh, sV, p.ldv, n0, m.n, c0, p.Dv, p.vec);
}

// ---------------------------------------------------------------- backward: bias gradients
// Stage 1: group y of the dQ programs, output x: the sum over its programs in program order (double).
// pos: program (b, h, mb) holds u = x + m0 + BM - N over the key tiles it visited; time: its histogram.
template <typename A>
__global__ void bias_partials_kernel(const Params<A> p, int programs, int groups, int len, int BM, int BN, bool pos,
                                     double* out) {
  const int x = blockIdx.x * blockDim.x + threadIdx.x, grp = blockIdx.y;
  if (x >= len) return;
  const int lo = static_cast<int>(static_cast<int64_t>(grp) * programs / groups);
  const int hi = static_cast<int>(static_cast<int64_t>(grp + 1) * programs / groups);
  double sum = 0;
  for (int e = lo; e < hi; ++e) {
    if (pos) {
      const Work wk = p.work[e];
      const Seq sq = sequence(p, wk.b);
      const int n = sq.m.n, m0 = wk.blk * BM, U = n + BM - 1;
      const Span sp = key_span(sq.m, m0, min(m0 + BM, n));
      const int u = x + m0 + BM - p.pw.N;
      const int u_lo = sp.lo / BN * BN, u_hi = min(U, (sp.hi + BN - 1) / BN * BN + BM - 1);
      if (u >= u_lo && u < u_hi) {
        const int64_t slice = p.pos_base[wk.b] + (static_cast<int64_t>(wk.h) * ((n + BM - 1) / BM) + wk.blk) * U;
        sum += static_cast<double>(p.part_pos[slice + u]);
      }
    } else {
      sum += p.part_time[(static_cast<int64_t>(e) * len + x) * 2];
    }
  }
  out[static_cast<int64_t>(grp) * len + x] = sum;
}

template <typename T>
__global__ void bias_finish_kernel(const double* part, int groups, int len, T* out) {
  const int x = blockIdx.x * blockDim.x + threadIdx.x;
  if (x >= len) return;
  double sum = 0;
  for (int grp = 0; grp < groups; ++grp) sum += part[static_cast<int64_t>(grp) * len + x];
  out[x] = Num<T>::out(static_cast<acc_t<T>>(sum));
}

// ---------------------------------------------------------------- host side
void check_device(const at::Tensor& q, const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device() == q.device(), name, " and q must be on the same device for the CUDA kernel, got ",
              fmt(t.device().str()), " and ", fmt(q.device().str()));
}

// A CPU stand-in with t's dtype and shape and no storage, so that the shared checks (which read only sizes,
// dtypes and devices of these tensors) run on the host next to the host copies of the index tensors.
at::Tensor shadow(const at::Tensor& t) { return at::empty({}, t.options().device(at::kCPU)).expand(t.sizes()); }
std::optional<at::Tensor> shadow(const std::optional<at::Tensor>& t) {
  return t.has_value() ? std::optional<at::Tensor>(shadow(*t)) : std::nullopt;
}

struct Inputs {
  HstuShape s;                // with seq_offsets and num_targets on the host (they go up with the work lists)
  at::Tensor ts, pos, tb;     // device tensors in the kernels' formats
};

Inputs prepare(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& seq_offsets,
               int64_t max_seq_len, const std::optional<at::Tensor>& num_targets, int64_t contextual_seq_len,
               int64_t max_attn_len, const std::optional<at::Tensor>& timestamps,
               const std::optional<at::Tensor>& pos_bias, const std::optional<at::Tensor>& time_bias,
               c10::string_view time_bucket) {
  TORCH_CHECK(q.is_cuda(), "q must be a CUDA tensor for the CUDA kernel, got device ", fmt(q.device().str()));
  check_device(q, k, "k");
  check_device(q, v, "v");
  check_device_or_cpu(q, "q", seq_offsets, "seq_offsets");  // on the CPU: read without a device sync
  if (num_targets.has_value()) check_device_or_cpu(q, "q", *num_targets, "num_targets");
  if (timestamps.has_value()) check_device(q, *timestamps, "timestamps");
  if (pos_bias.has_value()) check_device(q, *pos_bias, "pos_bias");
  if (time_bias.has_value()) check_device(q, *time_bias, "time_bias");
  // The value checks need seq_offsets and num_targets on the host (one device-to-host copy each, a sync, unless
  // the caller passed them on the CPU).
  const at::Tensor offsets_cpu = seq_offsets.to(at::kCPU);
  const std::optional<at::Tensor> targets_cpu =
      num_targets.has_value() ? std::optional<at::Tensor>(num_targets->to(at::kCPU)) : std::nullopt;
  Inputs in;
  in.s = check_hstu_inputs(shadow(q), shadow(k), shadow(v), offsets_cpu, max_seq_len, targets_cpu,
                           contextual_seq_len, max_attn_len, shadow(timestamps), shadow(pos_bias), shadow(time_bias),
                           time_bucket);
  TORCH_CHECK(q.scalar_type() != at::kDouble || std::max(in.s.Dqk, in.s.Dv) <= 128,
              "q: float64 on the CUDA kernel (meant for gradcheck) supports head dims up to 128, got ",
              fmt(std::max(in.s.Dqk, in.s.Dv)), "; use the cpu or reference backend");
  TORCH_CHECK(max_seq_len <= (int64_t{1} << 30), "max_seq_len must be at most 2^30 for the CUDA kernel, got ",
              fmt(max_seq_len));
  TORCH_CHECK(!time_bias.has_value() || time_bias->size(0) <= (int64_t{1} << 30),
              "time_bias: at most 2^30 buckets for the CUDA kernel, got ", fmt(time_bias->size(0)));
  const auto acc = q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  if (time_bias.has_value()) {
    in.ts = timestamps->to(at::kLong).contiguous();
    in.tb = time_bias->to(acc).contiguous();
  }
  if (pos_bias.has_value()) in.pos = pos_bias->to(acc).contiguous();
  return in;
}

// The "log" bucket table of log_time_bias for nb buckets: per quarter-octave k of x = max(float(|diff|), 1)
// (bits(x) >> 21 = 508 + k), {its bucket at the start, the bits of the smallest x where it steps up (+inf:
// none)}, from the formula itself by bisection (it is monotone in x). Built once per (device, nb) and kept: ~6k
// evaluations of the formula.
const int2* log_steps(int64_t nb, const at::Device& device) {
  static std::mutex mutex;
  static auto* cache = new std::map<std::pair<int, int64_t>, at::Tensor>();  // never freed: outlives CUDA teardown
  const std::lock_guard<std::mutex> lock(mutex);
  auto& table = (*cache)[{device.index(), nb}];
  if (!table.defined()) {
    constexpr uint32_t kInf = 0x7f800000u;
    std::vector<int32_t> host(kLogBins * 2);
    for (uint32_t k = 0; k < kLogBins; ++k) {
      const uint32_t first = (kLogBinFirst + k) << 21, last = first + (1u << 21) - 1;  // bits of the quarter
      auto at = [&](uint32_t bits) {
        float x;
        std::memcpy(&x, &bits, sizeof x);
        return hstu_time_bucket_of(x, nb, true);
      };
      const int64_t lo = at(first);
      uint32_t step = kInf;
      if (at(last) > lo) {
        uint32_t a = first + 1, b = last;  // the smallest bits in (first, last] with a larger bucket
        while (a < b) {
          const uint32_t mid = a + (b - a) / 2;
          if (at(mid) > lo) b = mid;
          else a = mid + 1;
        }
        TORCH_CHECK(at(last) == lo + 1, "hstu_attention (CUDA): log bucket table, quarter-octave ", k,
                    ": more than one step");  // a quarter-octave spans <= 1.25x, a bucket 1.35x: cannot happen
        step = a;
      }
      host[2 * k] = static_cast<int32_t>(lo);
      host[2 * k + 1] = static_cast<int32_t>(step);
    }
    auto pinned = at::empty({kLogBins * 2}, at::TensorOptions().dtype(at::kInt).pinned_memory(true));
    std::memcpy(pinned.data_ptr(), host.data(), host.size() * sizeof(int32_t));
    table = pinned.to(device, /*non_blocking=*/false);
  }
  return reinterpret_cast<const int2*>(table.const_data_ptr<int32_t>());
}

template <typename A>
Params<A> make_params(const Inputs& in, double alpha, bool causal, int64_t contextual_seq_len, int64_t max_attn_len) {
  const HstuShape& s = in.s;
  Params<A> p{};
  p.ts = in.ts.defined() ? in.ts.const_data_ptr<int64_t>() : nullptr;
  p.pw.alpha = static_cast<A>(alpha);
  p.pw.inv_n = A(1) / static_cast<A>(s.N);
  p.pw.N = static_cast<int>(s.N);
  p.pw.has_pos = in.pos.defined();
  p.pw.has_time = in.tb.defined();
  p.pw.log_bucket = s.log_bucket;
  p.pw.pos = p.pw.has_pos ? in.pos.const_data_ptr<A>() : nullptr;
  p.pw.tb = p.pw.has_time ? in.tb.const_data_ptr<A>() : nullptr;
  p.pw.nb = p.pw.has_time ? static_cast<int>(in.tb.size(0)) - 1 : 0;
  p.pw.log_steps = p.pw.has_time && s.log_bucket ? log_steps(p.pw.nb, in.tb.device()) : nullptr;
  p.ldq = s.H * s.Dqk;
  p.ldv = s.H * s.Dv;
  p.H = static_cast<int>(s.H);
  p.Dqk = static_cast<int>(s.Dqk);
  p.Dv = static_cast<int>(s.Dv);
  p.c = static_cast<int>(std::min(contextual_seq_len, s.N + 1));  // see Mask
  p.w = static_cast<int>(std::min(max_attn_len, s.N));
  p.causal = causal;
  p.targets = !s.num_targets.empty();
  p.tb_in_smem = p.pw.has_time && !s.log_bucket && (p.pw.nb + 1) * sizeof(A) <= 8192;  // "log": LogBin
  return p;
}

// 16-byte vectors for every row of every (L, H, D) operand: the head dims hold whole vectors and the bases
// are aligned.
bool vectorizable(int64_t elem, int64_t Dqk, int64_t Dv, std::initializer_list<const void*> ptrs) {
  const int64_t V = 16 / elem;
  bool ok = Dqk % V == 0 && Dv % V == 0;
  for (const void* ptr : ptrs) ok = ok && reinterpret_cast<uintptr_t>(ptr) % 16 == 0;
  return ok;
}

// Programs: (b, h, block[, chunk]) of the non-empty sequences, (b, h)-major so that the blocks of one head
// run side by side; query blocks last-first (under a causal mask they see the most keys). (Sorting the heaviest
// blocks first across groups of ~264 programs, for a shorter tail, made every backward slower on the H100: up to
// 20% at B 256, N 256, where a head's blocks no longer ran together; RESULTS.md, twenty-fourth session.)
std::vector<Work> query_work(const HstuShape& s, int BM) {
  std::vector<Work> w;
  for (int64_t b = 0; b < s.B; ++b) {
    const int nmb = static_cast<int>((s.offsets[b + 1] - s.offsets[b] + BM - 1) / BM);
    for (int h = 0; h < s.H; ++h)
      for (int mb = nmb - 1; mb >= 0; --mb) w.push_back(Work{static_cast<int>(b), h, mb, 0});
  }
  return w;
}

std::vector<Work> key_work(const HstuShape& s, int BN, int chunks) {
  std::vector<Work> w;
  for (int64_t b = 0; b < s.B; ++b) {
    const int nkb = static_cast<int>((s.offsets[b + 1] - s.offsets[b] + BN - 1) / BN);
    for (int h = 0; h < s.H; ++h)
      for (int kb = 0; kb < nkb; ++kb)
        for (int ch = 0; ch < chunks; ++ch) w.push_back(Work{static_cast<int>(b), h, kb, ch});
  }
  return w;
}

// Host arrays bound for the device, packed into one pinned buffer (16-byte aligned slots) and sent by one
// asynchronous copy on the current stream. Each small copy costs ~10-20 us of host time (aten::to,
// cudaMemcpyAsync), and a backward used to make four: seq_offsets, two work lists, the pos partials' bases.
class Upload {
 public:
  template <typename X>
  int64_t add(const std::vector<X>& host) {  // the slot's first int32 word
    static_assert(sizeof(X) % sizeof(int32_t) == 0, "uploaded as int32 words");
    const int64_t at = (static_cast<int64_t>(words_.size()) + 3) / 4 * 4;
    words_.resize(at + host.size() * sizeof(X) / sizeof(int32_t));
    if (!host.empty()) std::memcpy(words_.data() + at, host.data(), host.size() * sizeof(X));
    return at;
  }
  void send(const at::Device& device) {
    auto pinned = at::empty({std::max<int64_t>(static_cast<int64_t>(words_.size()), 1)},
                            at::TensorOptions().dtype(at::kInt).pinned_memory(true));
    if (!words_.empty()) std::memcpy(pinned.data_ptr(), words_.data(), words_.size() * sizeof(int32_t));
    sent_ = pinned.to(device, at::kInt, /*non_blocking=*/true);
  }
  template <typename X>
  const X* on_device(int64_t slot) const {
    return reinterpret_cast<const X*>(sent_.const_data_ptr<int32_t>() + slot);
  }

 private:
  std::vector<int32_t> words_;
  at::Tensor sent_;
};

// The sequences' offsets and num_targets, in the kernels' formats (int64, int32).
struct SequenceSlots {
  int64_t offsets, num_targets;
  SequenceSlots(Upload& up, const HstuShape& s)
      : offsets(up.add(s.offsets)),
        num_targets(up.add(std::vector<int32_t>(s.num_targets.begin(), s.num_targets.end()))) {}
  template <typename A>
  void attach(const Upload& up, Params<A>& p) const {
    p.offsets = up.on_device<int64_t>(offsets);
    p.num_targets = p.targets ? up.on_device<int>(num_targets) : nullptr;
  }
};

int smem_optin(int dev) {
  int v = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  return v;
}

// Two pipeline stages when they fit, else one; the choice and the size come from the same layout as the kernel's.
template <typename Layout>
std::pair<int, size_t> pick_stages(const Layout& two, const Layout& one, int limit, const char* what) {
  if (two.total <= static_cast<size_t>(limit)) return {2, two.total};
  TORCH_CHECK(one.total <= static_cast<size_t>(limit), "hstu_attention (CUDA ", what, "): needs ", fmt(one.total),
              " bytes of shared memory per block, more than the ", fmt(limit), " this device allows");
  return {1, one.total};
}

// Copies of the dQ kernel's time histogram in shared memory (lanes sharing a copy serialise on a common bin): the
// most, up to 32, that keep the blocks an SM holds without them; else the most that fit; 0 (global memory) when
// none fits. bytes(c): the block's shared memory with c copies. Cached per kernel and size.
template <typename Kernel, typename Bytes>
int hist_copies(Kernel kernel, int threads, int limit, Bytes&& bytes) {
  static std::mutex mutex;
  static std::map<std::tuple<const void*, size_t, size_t, int>, int> cache;
  const std::lock_guard<std::mutex> lock(mutex);
  int dev = 0;
  C10_CUDA_CHECK(cudaGetDevice(&dev));
  auto& copies = cache.try_emplace({reinterpret_cast<const void*>(kernel), bytes(0), bytes(1), dev}, -1).first->second;
  if (copies >= 0) return copies;
  auto blocks = [&](size_t smem) {
    int n = 0;
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
    C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, threads, smem));
    return n;
  };
  const int want = blocks(bytes(0));
  copies = 0;
  for (int c = 32; c >= 1 && copies == 0; c /= 2)
    if (bytes(c) <= static_cast<size_t>(limit) && blocks(bytes(c)) >= want) copies = c;
  for (int c = 32; c >= 1 && copies == 0; c /= 2)
    if (bytes(c) <= static_cast<size_t>(limit)) copies = c;
  return copies;
}

template <typename Kernel, typename... P>
void launch(Kernel kernel, size_t programs, int threads, size_t smem, const P&... p) {
  if (programs == 0) return;
  TORCH_CHECK(programs <= 0x7fffffffu, "hstu_attention (CUDA): too many blocks (", fmt(programs), ")");
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  kernel<<<static_cast<unsigned>(programs), threads, smem, c10::cuda::getCurrentCUDAStream()>>>(p...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// A kernel's parameters: at most 32,764 bytes (CUDA 12.1+, sm_70+).
static_assert(sizeof(Params<double>) + sizeof(InlineWork) + sizeof(tma::Maps) <= 32764, "kernel parameters too large");

// A launch's work list and sequences packed for the kernel's parameters, when they fit (else count 0: the launch
// reads the uploaded Params::work). RECSYS_KERNELS_HSTU_INLINE=0 always uploads (read every call, for comparisons).
InlineWork inline_work(const HstuShape& s, const std::vector<Work>& work) {
  InlineWork iw;
  iw.count = 0;
  iw.B = static_cast<int>(s.B);
  const int64_t words = static_cast<int64_t>(work.size()) + s.B + 1 + static_cast<int64_t>(s.num_targets.size());
  const char* env = std::getenv("RECSYS_KERNELS_HSTU_INLINE");
  if (work.empty() || words > kInlineWords || s.B > 0xffff || s.H > 64 ||
      s.offsets.back() > std::numeric_limits<int32_t>::max() || (env != nullptr && env[0] == '0'))
    return iw;
  for (const Work& w : work)
    if (w.blk >= 1024 || w.chunk != 0) return iw;
  uint32_t* out = iw.words;
  for (const Work& w : work)
    *out++ = static_cast<uint32_t>(w.b) | static_cast<uint32_t>(w.h) << 16 | static_cast<uint32_t>(w.blk) << 22;
  for (const int64_t o : s.offsets) *out++ = static_cast<uint32_t>(o);
  for (const int64_t t : s.num_targets) *out++ = static_cast<uint32_t>(t);
  iw.count = static_cast<int>(work.size());
  return iw;
}

// Whether the forward, dK / dV and the bias-free dQ run the wgmma kernels (hstu_{fwd,dkdv,dq}_wgmma_kernel):
// fp16/bf16 with head dims up to 128 in 16-byte rows, on an sm_90 device, in a build with sm_90a code (setup.py
// defines RECSYS_KERNELS_SM90A when TORCH_CUDA_ARCH_LIST has 9.0a). RECSYS_KERNELS_HSTU_WGMMA=0 keeps the
// mma.sync kernels (read every call: the benchmark compares the two).
template <typename T, int DP>
bool use_wgmma(const Params<acc_t<T>>& p, const at::Device& device) {
#ifdef RECSYS_KERNELS_SM90A
  if constexpr (kTensorCores<T> && DP <= 128) {
    const char* env = std::getenv("RECSYS_KERNELS_HSTU_WGMMA");
    if (!p.vec || (env != nullptr && env[0] == '0')) return false;
    int major = 0, minor = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device.index()));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device.index()));
    return major == 9 && minor == 0;
  }
#endif
  return false;
}

#ifdef RECSYS_KERNELS_SM90A
// The driver's TMA map encoder, looked up once through the runtime (the extension does not link libcuda).
PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
  static const PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult found = cudaDriverEntryPointSymbolNotFound;
    C10_CUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault, &found));
    TORCH_CHECK(found == cudaDriverEntryPointSuccess && f != nullptr,
                "hstu_attention (CUDA): the driver has no cuTensorMapEncodeTiled");
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(f);
  }();
  return fn;
}

// A TMA map over an (L, H, D) tensor of 16-bit values whose rows lie ld elements apart: boxes of 64 rows x 64
// columns of one head, 128-byte swizzled as the wgmma kernels' tiles (common/wgmma.cuh).
template <typename T>
CUtensorMap head_tile_map(const void* base, int64_t L, int64_t H, int64_t D, int64_t ld) {
  static_assert(sizeof(T) == 2, "16-bit values");
  CUtensorMap map;
  const cuuint64_t dims[3] = {static_cast<cuuint64_t>(D), static_cast<cuuint64_t>(H), static_cast<cuuint64_t>(L)};
  const cuuint64_t strides[2] = {static_cast<cuuint64_t>(D) * 2, static_cast<cuuint64_t>(ld) * 2};  // bytes
  const cuuint32_t box[3] = {64, 1, 64}, steps[3] = {1, 1, 1};
  const CUresult r = tensor_map_encoder()(
      &map, std::is_same_v<T, __nv_bfloat16> ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 3,
      const_cast<void*>(base), dims, strides, box, steps, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
      CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  TORCH_CHECK(r == CUDA_SUCCESS, "hstu_attention (CUDA): encoding a TMA map failed (CUresult ", static_cast<int>(r),
              ")");
  return map;
}
#endif

// The TMA maps of q, k, v and dO (when given) if the wgmma kernels are to load by TMA: 16-byte rows (p.vec), row
// indices in 32 bits, and RECSYS_KERNELS_HSTU_TMA not 0 (read every call, for comparisons); else none, and they
// load by cp.async.
template <typename T, typename A>
std::optional<tma::Maps> tma_maps(const Params<A>& p, const HstuShape& s) {
#ifdef RECSYS_KERNELS_SM90A
  if constexpr (sizeof(T) != 2) {
    return std::nullopt;  // (only the wgmma kernels' fp16 / bf16 call this)
  } else {
    const char* env = std::getenv("RECSYS_KERNELS_HSTU_TMA");
    if (!p.vec || s.L == 0 || s.L >= std::numeric_limits<int32_t>::max() || (env != nullptr && env[0] == '0')) {
      return std::nullopt;
    }
    tma::Maps maps{};
    maps.q = head_tile_map<T>(p.q, s.L, s.H, s.Dqk, p.ldq);
    maps.k = head_tile_map<T>(p.k, s.L, s.H, s.Dqk, p.ldq);
    maps.v = head_tile_map<T>(p.v, s.L, s.H, s.Dv, p.ldv);
    if (p.dout != nullptr) maps.dout = head_tile_map<T>(p.dout, s.L, s.H, s.Dv, p.ldv);
    return maps;
  }
#else
  return std::nullopt;
#endif
}

template <typename T, int DP, bool kBias>
void launch_forward(Params<acc_t<T>> p, const Inputs& in, const at::Device& device) {
  using C = Cfg<T, DP, kBias>;
  const bool hopper = use_wgmma<T, DP>(p, device);
  size_t smem = 0;
  if (hopper) {
    smem = WgmmaFwdSmem<DP>(p.pw.has_time, p.tb_in_smem, log_bins(p), p.pw.nb + 1, p.pw.has_pos).total;
  } else {
    auto layout = [&](int stages) {
      return FwdSmem<T, DP, kBias>(stages, p.pw.has_time, p.tb_in_smem, log_bins(p), p.pw.nb + 1, p.pw.has_pos);
    };
    std::tie(p.stages, smem) = pick_stages(layout(2), layout(1), smem_optin(device.index()), "forward");
  }
  const auto work = query_work(in.s, hopper ? WgmmaFwd<DP>::BM : C::kFwdBM);
  const InlineWork iw = inline_work(in.s, work);
  Upload up;
  if (iw.count == 0) {
    const SequenceSlots seqs(up, in.s);
    const int64_t work_slot = up.add(work);
    up.send(device);
    seqs.attach(up, p);
    p.work = up.on_device<Work>(work_slot);
  }
  if constexpr (kTensorCores<T> && DP <= 128) {
    if (hopper) {
      const auto maps = tma_maps<T>(p, in.s);
      const auto kernel = maps ? hstu_fwd_wgmma_kernel<T, DP, kBias, true> : hstu_fwd_wgmma_kernel<T, DP, kBias, false>;
      return launch(kernel, work.size(), WgmmaFwd<DP>::kThreads, smem, p, iw, maps.value_or(tma::Maps{}));
    }
  }
  launch(hstu_fwd_kernel<T, DP, kBias>, work.size(), C::kThreads, smem, p, iw);
}

template <typename T, int DP>
void run_forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::Tensor& out, const Inputs& in,
                 double alpha, bool causal, int64_t c, int64_t w) {
  auto p = make_params<acc_t<T>>(in, alpha, causal, c, w);
  p.q = q.const_data_ptr();
  p.k = k.const_data_ptr();
  p.v = v.const_data_ptr();
  p.out = out.data_ptr();
  p.vec = vectorizable(sizeof(T), in.s.Dqk, in.s.Dv, {p.q, p.k, p.v, p.out});
  if (p.pw.has_pos || p.pw.has_time) launch_forward<T, DP, true>(p, in, q.device());
  else launch_forward<T, DP, false>(p, in, q.device());
}

template <typename T, int DP>
void run_backward(const at::Tensor& go, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                  at::Tensor& dq, at::Tensor& dk, at::Tensor& dv, at::Tensor& d_pos, at::Tensor& d_time,
                  const Inputs& in, double alpha, bool causal, int64_t c, int64_t w) {
  using C = Cfg<T, DP>;
  using A = acc_t<T>;
  const HstuShape& s = in.s;
  auto p = make_params<A>(in, alpha, causal, c, w);
  p.q = q.const_data_ptr();
  p.k = k.const_data_ptr();
  p.v = v.const_data_ptr();
  p.dout = go.const_data_ptr();
  p.dq = dq.data_ptr();
  p.dk = dk.data_ptr();
  p.dv = dv.data_ptr();
  p.vec = vectorizable(sizeof(T), s.Dqk, s.Dv, {p.q, p.k, p.v, p.dout, p.dq, p.dk, p.dv});
  const int nbins = p.pw.nb + 1, limit = smem_optin(q.get_device());
  const auto dev = q.device();
  const bool bias = p.pw.has_pos || p.pw.has_time;
  constexpr int BM = C::kDqBM, W = C::kWarps;
  const int BN = bias ? Cfg<T, DP, true>::kDqBN : C::kDqBN;  // dQ key tile

  // Both kernels' work lists and sequences in their parameters when they fit; else (and with the bias, whose
  // partial sums are read back per program) everything the kernels read from the host, in one copy.
  const auto kv_work = key_work(s, C::kKvBN, DP / C::kChunk);
  const auto work = query_work(s, BM);
  InlineWork kv_iw = inline_work(s, kv_work), iw = inline_work(s, work);
  Upload up;
  int64_t kv_work_slot = 0, work_slot = 0, pos_total = 0, pos_base_slot = 0;
  if (bias || kv_iw.count == 0 || iw.count == 0) {
    kv_iw.count = iw.count = 0;
    const SequenceSlots seqs(up, s);
    kv_work_slot = up.add(kv_work);
    work_slot = up.add(work);
    if (p.pw.has_pos) {
      std::vector<int64_t> pos_base(s.B);
      for (int64_t b = 0; b < s.B; ++b) {
        const int64_t n = s.offsets[b + 1] - s.offsets[b];
        pos_base[b] = pos_total;
        pos_total += n ? s.H * ((n + BM - 1) / BM) * (n + BM - 1) : 0;
      }
      pos_base_slot = up.add(pos_base);
    }
    up.send(dev);
    seqs.attach(up, p);
    p.work = up.on_device<Work>(work_slot);
  }

  // dK, dV
  [&] {
    auto pk = p;
    if (kv_iw.count == 0) pk.work = up.on_device<Work>(kv_work_slot);
    if constexpr (kTensorCores<T> && DP <= 128) {
      if (use_wgmma<T, DP>(p, dev)) {
        const size_t smem = WgmmaKvSmem<DP>(p.pw.has_time, p.tb_in_smem, log_bins(p), nbins, p.pw.has_pos).total;
        // With the bias it loads by cp.async: its TMA build spills and ran 6-7% longer on the H100 (RESULTS.md).
        const auto maps = bias ? std::nullopt : tma_maps<T>(p, s);
        const auto kernel = bias   ? hstu_dkdv_wgmma_kernel<T, DP, true, false>
                            : maps ? hstu_dkdv_wgmma_kernel<T, DP, false, true>
                                   : hstu_dkdv_wgmma_kernel<T, DP, false, false>;
        return launch(kernel, kv_work.size(), WgmmaKv<DP>::kThreads, smem, pk, kv_iw, maps.value_or(tma::Maps{}));
      }
    }
    auto layout = [&](int stages) {
      return KvSmem<T, DP>(stages, p.pw.has_time, p.tb_in_smem, log_bins(p), nbins, p.pw.has_pos);
    };
    const auto [stages, smem] = pick_stages(layout(2), layout(1), limit, "dK/dV");
    pk.stages = stages;
    const auto kernel = bias ? hstu_dkdv_kernel<T, DP, true> : hstu_dkdv_kernel<T, DP, false>;
    launch(kernel, kv_work.size(), C::kThreads, smem, pk, kv_iw);
  }();

  // dQ and the bias partials
  const auto acc = q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor part_pos, part_time;
  if (p.pw.has_pos) {
    p.pos_base = up.on_device<int64_t>(pos_base_slot);
    part_pos = at::empty({std::max<int64_t>(pos_total, 1)}, q.options().dtype(acc));
    p.part_pos = part_pos.data_ptr<A>();
  }
  at::Tensor norms;
  if (p.pw.has_time) {
    part_time = at::empty({std::max<int64_t>(static_cast<int64_t>(work.size()) * 2 * nbins, 1)},
                          q.options().dtype(at::kDouble));
    p.part_time = part_time.data_ptr<double>();
    // The bound on |dS| that scales the exact histogram: max row norms of dO and V over the rows in use.
    norms = at::zeros({2}, q.options().dtype(acc));
    const int64_t rows = s.offsets.back() * s.H;
    const dim3 grid(static_cast<unsigned>(std::min<int64_t>((rows + 255) / 256, 4096)), 2);
    const bool vec = vectorizable(sizeof(T), s.Dv, s.Dv, {p.dout, p.v});
    row_norm_max_kernel<T><<<grid, 256, 0, c10::cuda::getCurrentCUDAStream()>>>(
        static_cast<const T*>(p.dout), static_cast<const T*>(p.v), rows, static_cast<int>(s.Dv), vec,
        norms.data_ptr<A>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    p.norms = norms.const_data_ptr<A>();
    int max_n = 0;
    for (int64_t b = 0; b < s.B; ++b) max_n = std::max<int>(max_n, static_cast<int>(s.offsets[b + 1] - s.offsets[b]));
    const int64_t per_lane = static_cast<int64_t>((max_n + BN - 1) / BN) * (BN / 2);
    p.hist_wide = std::is_same_v<A, double> || value_bits(32, per_lane * 32 * W) < kMinSplitBits;  // worst: 1 copy
  }
  auto launch_dq = [&](auto bias_build) {
    constexpr bool kBias = decltype(bias_build)::value;
    if constexpr (!kBias && kTensorCores<T> && DP <= 128) {
      // (Written to hold for every T: the compiler checks it outside this branch too.)
      static_assert(!kTensorCores<T> || WgmmaDq<DP>::BM == BM, "the wgmma dQ kernel takes the mma.sync work list");
      if (use_wgmma<T, DP>(p, dev)) {
        const auto maps = tma_maps<T>(p, s);
        const auto kernel = maps ? hstu_dq_wgmma_kernel<T, DP, true> : hstu_dq_wgmma_kernel<T, DP, false>;
        return launch(kernel, work.size(), WgmmaDq<DP>::kThreads, WgmmaDqSmem<DP>().total, p, iw,
                      maps.value_or(tma::Maps{}));
      }
    }
    const auto kernel = hstu_dq_kernel<T, DP, kBias>;
    auto layout = [&](int stages, int copies) {
      return DqSmem<T, DP, kBias>(stages, p.pw.has_time, p.tb_in_smem, log_bins(p), nbins, p.pw.has_pos, copies,
                                  p.hist_wide);
    };
    const int stages = pick_stages(layout(2, 0), layout(1, 0), limit, "dQ").first;
    p.stages = stages;
    auto bytes = [&](int copies) { return layout(stages, copies).total; };
    p.hist_copies = p.pw.has_time ? hist_copies(kernel, C::kThreads, limit, bytes) : 0;
    launch(kernel, work.size(), C::kThreads, layout(stages, p.hist_copies).total, p, iw);
  };
  if (bias) launch_dq(std::true_type{});
  else launch_dq(std::false_type{});

  // Bias gradients: fixed-order sums of the partials.
  const int programs = static_cast<int>(work.size());
  const int groups = std::max(1, std::min(programs, 64));
  auto reduce = [&](bool pos, at::Tensor& out) {
    const int len = static_cast<int>(out.size(0));
    auto stage = at::empty({static_cast<int64_t>(groups) * len}, q.options().dtype(at::kDouble));
    const auto stream = c10::cuda::getCurrentCUDAStream();
    const dim3 grid((len + 255) / 256, groups);
    bias_partials_kernel<A><<<grid, 256, 0, stream>>>(p, programs, groups, len, BM, BN, pos, stage.data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    bias_finish_kernel<T><<<(len + 255) / 256, 256, 0, stream>>>(stage.const_data_ptr<double>(), groups, len,
                                                                  static_cast<T*>(out.data_ptr()));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };
  if (p.pw.has_pos) reduce(true, d_pos);
  if (p.pw.has_time) reduce(false, d_time);
}

// fp16 / bf16 / fp32 / fp64 x padded head dim 64 / 128 / 256 (fp64 up to 128).
template <typename F>
void dispatch(at::ScalarType dt, int64_t dmax, F&& f) {
  auto by_dim = [&](auto tag) {
    using T = decltype(tag);
    if (dmax <= 64) f(T{}, std::integral_constant<int, 64>{});
    else if (dmax <= 128) f(T{}, std::integral_constant<int, 128>{});
    else if constexpr (!std::is_same_v<T, double>) f(T{}, std::integral_constant<int, 256>{});
  };
  switch (dt) {
    case at::kHalf: by_dim(__half{}); break;
    case at::kBFloat16: by_dim(__nv_bfloat16{}); break;
    case at::kFloat: by_dim(float{}); break;
    case at::kDouble: by_dim(double{}); break;
    default: TORCH_CHECK(false, "q must be float16, bfloat16, float32 or float64, got ", fmt(dt));
  }
}

// Rows past seq_offsets[B] belong to no sequence: zero.
void zero_tail(at::Tensor& x, const HstuShape& s) {
  const int64_t used = s.offsets.back();
  if (used < s.L) x.narrow(0, used, s.L - used).zero_();
}

at::Tensor hstu_attention_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                               const at::Tensor& seq_offsets, int64_t max_seq_len, double alpha, bool causal,
                               const std::optional<at::Tensor>& num_targets, int64_t contextual_seq_len,
                               int64_t max_attn_len, const std::optional<at::Tensor>& timestamps,
                               const std::optional<at::Tensor>& pos_bias, const std::optional<at::Tensor>& time_bias,
                               c10::string_view time_bucket) {
  const Inputs in = prepare(q, k, v, seq_offsets, max_seq_len, num_targets, contextual_seq_len, max_attn_len,
                            timestamps, pos_bias, time_bias, time_bucket);
  c10::cuda::CUDAGuard guard(q.device());
  const HstuShape& s = in.s;
  auto out = at::empty({s.L, s.H, s.Dv}, q.options());
  zero_tail(out, s);
  const auto qc = q.contiguous(), kc = k.contiguous(), vc = v.contiguous();
  dispatch(q.scalar_type(), std::max(s.Dqk, s.Dv), [&](auto tag, auto dp) {
    run_forward<decltype(tag), decltype(dp)::value>(qc, kc, vc, out, in, alpha, causal, contextual_seq_len,
                                                    max_attn_len);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> hstu_attention_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& seq_offsets, int64_t max_seq_len, double alpha, bool causal,
    const std::optional<at::Tensor>& num_targets, int64_t contextual_seq_len, int64_t max_attn_len,
    const std::optional<at::Tensor>& timestamps, const std::optional<at::Tensor>& pos_bias,
    const std::optional<at::Tensor>& time_bias, c10::string_view time_bucket) {
  const Inputs in = prepare(q, k, v, seq_offsets, max_seq_len, num_targets, contextual_seq_len, max_attn_len,
                            timestamps, pos_bias, time_bias, time_bucket);
  check_device(q, grad_output, "grad_output");
  TORCH_CHECK(grad_output.sizes() == v.sizes(), "grad_output must have v's shape ", fmt(shape(v.sizes())), ", got ",
              fmt(shape(grad_output.sizes())));
  check_same_dtype(grad_output, "grad_output", v, "v");
  c10::cuda::CUDAGuard guard(q.device());
  const HstuShape& s = in.s;
  auto dq = at::empty({s.L, s.H, s.Dqk}, q.options());
  auto dk = at::empty({s.L, s.H, s.Dqk}, q.options());
  auto dv = at::empty({s.L, s.H, s.Dv}, q.options());
  for (auto* x : {&dq, &dk, &dv}) zero_tail(*x, s);
  // The bias gradients are fully written by the reduction, or are zero when no sequence has a row.
  const bool empty = s.offsets.back() == 0;
  auto bias_grad = [&](const std::optional<at::Tensor>& table) {
    const int64_t n = table.has_value() ? table->size(0) : 0;
    return empty ? at::zeros({n}, q.options()) : at::empty({n}, q.options());
  };
  auto d_pos = bias_grad(pos_bias), d_time = bias_grad(time_bias);
  if (empty) return {dq, dk, dv, d_pos, d_time};
  const auto go = grad_output.contiguous(), qc = q.contiguous(), kc = k.contiguous(), vc = v.contiguous();
  dispatch(q.scalar_type(), std::max(s.Dqk, s.Dv), [&](auto tag, auto dp) {
    run_backward<decltype(tag), decltype(dp)::value>(go, qc, kc, vc, dq, dk, dv, d_pos, d_time, in, alpha, causal,
                                                     contextual_seq_len, max_attn_len);
  });
  return {dq, dk, dv, d_pos, d_time};
}

}  // namespace
}  // namespace hstu_cuda

TORCH_LIBRARY_IMPL(recsys, CUDA, m) {
  m.impl("hstu_attention", &hstu_cuda::hstu_attention_cuda);
  m.impl("hstu_attention_backward", &hstu_cuda::hstu_attention_backward_cuda);
}

}  // namespace recsys
