// The Hopper forward of the CUDA HSTU attention (sm_90a, fp16/bf16, head dims padded to 64 or 128, 16-byte rows):
// the same algorithm, bias and work list as hstu_fwd_kernel, with its tile products on wgmma instead of mma.sync.
// Included by hstu_attention_cuda.cu, whose Params / InlineWork / for_each_score it uses.
//
// A block is two warpgroups of 64 query rows each (128 rows, as the mma.sync forward's block). Q, and K and V in
// two stages of 64 keys, sit in shared memory in the 128-byte-swizzled layout (common/wgmma.cuh), loaded by TMA
// (common/tma.cuh; by cp.async under RECSYS_KERNELS_HSTU_TMA=0), so
// S = Q Kᵀ reads both operands straight from shared memory (no ldmatrix, no registers for Q) and O += P V takes
// P from registers: the wgmma accumulator layout of each warp's 16 rows is the mma.sync m16n8 C layout, so
// for_each_score (mask, relative bias from the tables and timestamps staged as in hstu_fwd_kernel, SiLU) and the P
// packing are the mma.sync forward's, with 16 query rows a warp.
//
// Per key tile a warpgroup issues S, waits, applies the pointwise part, issues P V and waits; two stages.
// O (DP / 2 registers) + S (32) + P (16) fit the 128 registers that keep two blocks (four warpgroups) on an SM,
// and the SM overlaps one warpgroup's SiLU with another's tensor-core work. (FlashAttention-3's intra-warpgroup
// overlap, S of tile j issued with P V of tile j - 1, needs a third stage and more registers, hence one block an
// SM: 26% slower on the H100 at B 64, N 1024, H 4, d 128, benchmarks/RESULTS.md.)
#pragma once
#include "common/tma.cuh"
#include "common/wgmma.cuh"

namespace recsys {
namespace hstu_cuda {
namespace {

template <int DP>
struct WgmmaFwd {
  static constexpr int kWarpgroups = 2, kThreads = 128 * kWarpgroups, BM = 64 * kWarpgroups, BN = 64;
  static constexpr int kStages = 2, kBlocksPerSm = 2;
  static constexpr int kQBytes = BM * DP * 2, kKvBytes = BN * DP * 2;  // K and V stage sizes alike
  static constexpr int kOutLd = DP + 8;                                 // the output staging tile's row stride
  static_assert(BM * kOutLd * 2 <= 2 * kStages * kKvBytes, "the output is staged in the K / V stages");
};

// Shared memory of the wgmma forward, evaluated identically on the host (size) and in the kernel (offsets): 1024
// bytes of slack first (the swizzle atoms need 1024-byte alignment, which dynamic shared memory does not promise),
// then Q, the K and V stages, and with the bias the timestamps, the time tables and the position-bias windows
// (as FwdSmem).
template <int DP>
struct WgmmaFwdSmem {
  size_t q, k, v, bars, qts, kts, tb, bins, pos, total;
  __host__ __device__ WgmmaFwdSmem(bool time, bool tb_smem, bool log_bins, int nbins, bool pos_bias) {
    using C = WgmmaFwd<DP>;
    Carve c;
    q = c.take(C::kQBytes);
    k = c.take(C::kStages * C::kKvBytes);
    v = c.take(C::kStages * C::kKvBytes);
    bars = c.take((1 + C::kStages) * sizeof(uint64_t));  // TMA loads' mbarriers: Q, then one a K / V stage
    qts = c.take(time ? C::BM * 8 : 0);
    kts = c.take(time ? C::kStages * C::BN * 8 : 0);
    tb = c.take(tb_smem ? nbins * sizeof(float) : 0);
    bins = c.take(log_bins ? kLogBins * sizeof(LogBin<float>) : 0);
    pos = c.take(pos_bias ? C::kStages * (C::BM + C::BN) * sizeof(float) : 0);
    total = 1024 + c.top;
  }
};

// Rows [r0, r0 + R) of one head into a swizzled tile at s (16-byte cp.async chunks; rows past n and columns past D
// are zeros), by a block of NT threads. Each thread copies one fixed column chunk of every (NT / CPR)-th row: its
// shared offset steps by a constant (the swizzle repeats every 8 rows) and its global address by one 64-bit add a
// row. Recomputing either per chunk cost ~40 instructions a cp.async (then ~20: the compiler multiplied each row's
// index by the stride again), a third of the forward's instructions.
template <typename T, int R, int DP, int NT>
__device__ __forceinline__ void load_tile_swizzled(unsigned char* s, const T* x, int64_t ldg, int r0, int n, int D) {
  constexpr int CPR = DP / 8, RSTEP = NT / CPR;
  static_assert(NT % CPR == 0 && RSTEP % 8 == 0 && (R * CPR) % NT == 0, "whole rows, swizzle-aligned steps");
  const int rr = threadIdx.x / CPR, col = (threadIdx.x % CPR) * 8;
  unsigned char* dst = s + wgmma::swizzled_offset(rr, col, R);
  const T* src = x + static_cast<int64_t>(r0 + rr) * ldg + col;
  const int64_t step = RSTEP * ldg;
  const int rows = col < D ? n - r0 - rr : 0;  // chunk i exists when i * RSTEP < rows
#pragma unroll
  for (int i = 0; i < R / RSTEP; ++i) {
    const bool ok = i * RSTEP < rows;
    cp_async<16>(dst + i * RSTEP * 128, ok ? src : x, ok);
    src += step;
  }
}

// The TMA form of load_tile_swizzled, issued by one thread: rows [row, row + R) (row: in the whole (L, H, D)
// tensor) of head h through map, as R / 64 x DP / 64 boxes of 64 x 64 completing on bar (R * DP * 2 bytes).
// Rows past L and columns past D arrive as zeros; rows of the next sequences arrive as they are (zero_rows).
template <int R, int DP>
__device__ __forceinline__ void tma_tile(unsigned char* s, const CUtensorMap* map, uint64_t* bar, int64_t row, int h) {
#pragma unroll
  for (int cb = 0; cb < DP / 64; ++cb)
#pragma unroll
    for (int rb = 0; rb < R / 64; ++rb)
      tma::load_3d(s + cb * R * 128 + rb * 64 * 128, map, bar, cb * 64, h, static_cast<int>(row) + rb * 64);
}

// Where a head's rows of one tensor come from: its TMA map, and for cp.async the head's first row (of the sequence),
// the row stride and the columns.
template <typename T>
struct TileSource {
  const CUtensorMap* map;
  const T* rows;
  int64_t ld;
  int D;
};

// Rows [r0, r0 + R) (of the n of the sequence that starts at row `start` of the whole tensor) of head h of two
// tensors into the swizzled tiles sa and sb. kTma: thread 0 issues both on bar (2 R DP 16-bit values), which the
// block then waits on; else every thread's cp.async share, which the caller commits.
template <typename T, int R, int DP, int NT, bool kTma>
__device__ __forceinline__ void load_tile_pair(unsigned char* sa, const TileSource<T>& a, unsigned char* sb,
                                               const TileSource<T>& b, uint64_t* bar, int64_t start, int h, int r0,
                                               int n) {
  if constexpr (kTma) {
    if (threadIdx.x == 0) {
      tma::arrive_expect_bytes(bar, 2 * R * DP * 2);
      tma_tile<R, DP>(sa, a.map, bar, start + r0, h);
      tma_tile<R, DP>(sb, b.map, bar, start + r0, h);
    }
  } else {
    load_tile_swizzled<T, R, DP, NT>(sa, a.rows, a.ld, r0, n, a.D);
    load_tile_swizzled<T, R, DP, NT>(sb, b.rows, b.ld, r0, n, b.D);
  }
}

// n mbarriers of one arrival each for a block's TMA loads, initialised by thread 0 and published by a barrier.
__device__ __forceinline__ void init_tma_barriers(uint64_t* bars, int n) {
  if (threadIdx.x == 0) {
    for (int i = 0; i < n; ++i) tma::mbar_init(bars + i, 1);
    tma::fence_mbar_init();
  }
  __syncthreads();
}

// Zeroes rows [lim, R) of a swizzled tile of 16-bit values (whole rows, so the swizzle does not matter), by a
// block of NT threads. A TMA tile that runs past its sequence holds the next sequence's rows: P V multiplies
// them by P = 0, which is 0 only for finite values.
template <int R, int DP, int NT>
__device__ __forceinline__ void zero_rows(unsigned char* s, int lim) {
  constexpr int CPR = DP / 8;
  lim = max(lim, 0);
  for (int i = threadIdx.x; i < (R - lim) * CPR; i += NT) {
    const int r = lim + i / CPR, c = i % CPR;
    *reinterpret_cast<uint4*>(s + (c / 8) * R * 128 + r * 128 + (c % 8) * 16) = make_uint4(0u, 0u, 0u, 0u);
  }
}

// Issues S (this warpgroup's 64 rows x 64 keys) = A Bᵀ over DP / 16 k-steps, e.g. Q Kᵀ. a / b: k_major descriptors
// of the warpgroup's first A row (rows of RA / 64 rows a 64-column block) and of the B stage (64 rows). A k-step
// starts 32 bytes further into the 128-byte row.
template <typename T, int DP, int RA>
__device__ __forceinline__ void issue_s(float (&s)[1][8][4], const wgmma::Desc& a, const wgmma::Desc& b) {
#pragma unroll
  for (int ks = 0; ks < DP / 16; ++ks) {
    const uint64_t da = a + ((ks >> 2) * RA * 128 + (ks & 3) * 32), db = b + ((ks >> 2) * 64 * 128 + (ks & 3) * 32);
    if (ks == 0) wgmma::mma_m64n64_ss<T, 0>(&s[0][0][0], da, db);
    else wgmma::mma_m64n64_ss<T, 1>(&s[0][0][0], da, db);
  }
}

// The descriptor of a K-major operand tile (Q, K: 8-row groups 1024 bytes apart) at shared address addr.
__device__ __forceinline__ wgmma::Desc k_major(uint32_t addr) { return wgmma::Desc(addr, 16, 1024); }
// The descriptor of an MN-major operand tile of 64 rows (V: its 64-column blocks along the output lie 8 KB apart).
__device__ __forceinline__ wgmma::Desc mn_major(uint32_t addr) { return wgmma::Desc(addr, 8192, 1024); }

// Issues O += P V over the tile's 64 keys (four k-steps of 16 keys, 2 KB apart); dv: mn_major of the V stage.
template <typename T, int DP>
__device__ __forceinline__ void issue_pv(float (&o)[1][DP / 8][4], const uint32_t (&a)[4][4], const wgmma::Desc& dv) {
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) wgmma::mma_rs<T, DP>(&o[0][0][0], a[kk], dv + kk * 2048);
}

// Where a warp's bias inputs sit in shared memory (all null without the bias): the time tables, the position-bias
// window of the stage from the warp's first row (for_each_score's pdiag), the rows' and the stage's keys'
// timestamps.
struct BiasView {
  const float* tb;
  const LogBin<float>* bins;
  const float* pdiag;
  const int64_t *rts, *cts;
};

// Accumulator tile (one warp's 16 x 64 slice, C layout) -> the A fragments of four k-steps, rounded to T.
template <typename T>
__device__ __forceinline__ void pack_a(const float (&x)[1][8][4], uint32_t (&a)[4][4]) {
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) {
    a[kk][0] = pack2<T>(x[0][2 * kk][0], x[0][2 * kk][1]);
    a[kk][1] = pack2<T>(x[0][2 * kk][2], x[0][2 * kk][3]);
    a[kk][2] = pack2<T>(x[0][2 * kk + 1][0], x[0][2 * kk + 1][1]);
    a[kk][3] = pack2<T>(x[0][2 * kk + 1][2], x[0][2 * kk + 1][3]);
  }
}

// P = SiLU(alpha S + R) / N ⊙ M of one warp's 16 x 64 slice (row0, n0: positions of its first row and key),
// rounded to T in the A-fragment layout of four k-steps. kFolded (bias-free bf16): pw.alpha is alpha / 2 and the
// slice holds N P (silu_of_half); the caller scales the output by 1 / N.
template <typename T, bool kBias, bool kFolded>
__device__ __forceinline__ void silu_to_p(float (&s)[1][8][4], uint32_t (&a)[4][4], const Pointwise<float>& pw,
                                          const BiasView& bv, const Mask& m, bool full, int row0, int n0, int lane) {
  static_assert(!(kFolded && kBias), "the bias tables are not halved");
  for_each_score<true, kBias>(s, pw, bv.tb, bv.bins, bv.pdiag, m, full, row0, n0, bv.rts, bv.cts, lane,
                              [&](float& x, bool, float y, int, int, int, int) {
                                // y = 0 when masked
                                x = kFolded ? silu_of_half(y) : silu_over_n<T>(y, pw.inv_n);
                              });
  pack_a<T>(s, a);
}

// The epilogue of the forward and dQ kernels: once every warpgroup is done with the K / V stages, one warp's 16 x DP
// accumulator rows (times scale, rounded to T) go to row r_off of a BM-row tile staged there, and the tile's rows
// [m0, m0 + BM) ∩ [0, n), columns [0, D), to out (the head's first row, row stride ldg).
template <typename T, int BM, int DP, int LDO>
__device__ __forceinline__ void store_acc_tile(T* out, int64_t ldg, T* stage, int r_off,
                                               const float (&acc)[1][DP / 8][4], float scale, int m0, int n, int D,
                                               int lane) {
  cp_async_wait<0>();  // (no key tile: the first loads may still be landing)
  __syncthreads();
  acc_to_smem<T, 1, DP / 8>(stage + r_off * LDO, LDO, acc, scale, lane);
  __syncthreads();
  store_tile<T, BM, DP, LDO>(out, stage, ldg, m0, n, 0, D, true);
}

// kTma: Q, K and V arrive by TMA (maps.q / k / v) instead of cp.async.
template <typename T, int DP, bool kBias, bool kTma>
__global__ void __launch_bounds__(WgmmaFwd<DP>::kThreads, WgmmaFwd<DP>::kBlocksPerSm)
    hstu_fwd_wgmma_kernel(const Params<float> params, const __grid_constant__ InlineWork iw,
                          const __grid_constant__ tma::Maps maps) {
#if RECSYS_WGMMA_ENABLED
  using C = WgmmaFwd<DP>;
  constexpr int BM = C::BM, BN = C::BN, OT = DP / 8, LDO = C::kOutLd;
  const Params<float> p = specialise<kBias>(params);
  const Pointwise<float>& pw = p.pw;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  unsigned char* smem = smem_raw + ((1024 - smem_addr(smem_raw) % 1024) % 1024);
  const WgmmaFwdSmem<DP> L(pw.has_time, p.tb_in_smem, log_bins(p), pw.nb + 1, pw.has_pos);
  unsigned char* sQ = smem + L.q;
  unsigned char* sK = smem + L.k;
  unsigned char* sV = smem + L.v;
  int64_t* sQts = reinterpret_cast<int64_t*>(smem + L.qts);
  int64_t* sKts = reinterpret_cast<int64_t*>(smem + L.kts);
  float* sPos = reinterpret_cast<float*>(smem + L.pos);
  LogBin<float>* bins = reinterpret_cast<LogBin<float>*>(smem + L.bins);
  uint64_t* bars = reinterpret_cast<uint64_t*>(smem + L.bars);  // [0]: Q, [1 + st]: K / V stage st
  const int lane = threadIdx.x & 31, warp = (threadIdx.x >> 5) & 3;
  const int wg = __shfl_sync(0xffffffffu, threadIdx.x >> 7, 0);  // known warp-uniform: descriptors stay scalar
  const int r_off = 64 * wg + 16 * warp;  // this warp's first row in the block

  Work wk;
  const Seq sq = program_sequence(p, iw, wk);
  const Mask& m = sq.m;
  const int m0 = wk.blk * BM, w0 = m0 + 64 * wg;  // the block's and this warpgroup's first query row
  const HeadRows<T> rows = head_rows<T>(p, sq, wk.h);
  const Span span = key_span(m, m0, min(m0 + BM, m.n));
  const int kb0 = span.lo / BN, kb1 = (span.hi + BN - 1) / BN;

  if constexpr (kTma) {
    init_tma_barriers(bars, 1 + C::kStages);
    if (threadIdx.x == 0) {
      tma::arrive_expect_bytes(bars, C::kQBytes);
      tma_tile<BM, DP>(sQ, &maps.q, bars, sq.start + m0, wk.h);
    }
  } else {
    load_tile_swizzled<T, BM, DP, C::kThreads>(sQ, rows.q, p.ldq, m0, m.n, p.Dqk);
  }
  if (pw.has_time) load_ts<BM>(sQts, rows.ts, m0, m.n, true);
  const TileSource<T> src_k{&maps.k, rows.k, p.ldq, p.Dqk}, src_v{&maps.v, rows.v, p.ldv, p.Dv};
  auto load_kv = [&](int kb, int st) {
    load_tile_pair<T, BN, DP, C::kThreads, kTma>(sK + st * C::kKvBytes, src_k, sV + st * C::kKvBytes, src_v,
                                                 bars + 1 + st, sq.start, wk.h, kb * BN, m.n);
    if (pw.has_time) load_ts<BN>(sKts + st * BN, rows.ts, kb * BN, m.n, false);
    if (pw.has_pos) load_pos_window<BM, BN>(sPos + st * (BM + BN), pw.pos, m0, kb * BN, pw.N);
    cp_async_commit();
  };
  if (kb0 < kb1) load_kv(kb0, 0);
  // After the first copies are issued, so that the tables' global reads overlap them.
  const float* tb = time_table(p, reinterpret_cast<float*>(smem + L.tb), bins);
  auto bias_view = [&](int st) {
    return BiasView{tb, bins, sPos + st * (BM + BN) + BM - 1 - r_off, sQts + r_off, sKts + st * BN};
  };

  const wgmma::Desc q_km = k_major(smem_addr(sQ) + 64 * wg * 128), k_km = k_major(smem_addr(sK)),
                    v_mn = mn_major(smem_addr(sV));
  // Bias-free bf16: scores scaled by alpha / 2 and P held as N P (silu_of_half), 1 / N applied to O at the end:
  // three multiplies an element fewer. (fp16 keeps P: N P could pass its 65504.)
  constexpr bool kFolded = !kBias && std::is_same_v<T, __nv_bfloat16>;
  Pointwise<float> pw_p = pw;
  if (kFolded) pw_p.alpha = 0.5f * pw.alpha;
  float o[1][OT][4];
  zero(o);
  if constexpr (kTma) tma::wait(bars, 0);
  // This warpgroup's own keys (a causal diagonal block's first warpgroup skips the last key tile).
  const Span wspan = w0 < m.n ? key_span(m, w0, min(w0 + 64, m.n)) : Span{0, 0};
  for (int kb = kb0; kb < kb1; ++kb) {
    // One barrier a tile: after it, tile kb is in shared memory for everyone and every warpgroup is done with tile
    // kb - 1, whose stage then takes tile kb + 1 while this one is computed.
    const int st = (kb - kb0) & 1, n0 = kb * BN;
    if constexpr (kTma) {
      tma::wait(bars + 1 + st, ((kb - kb0) >> 1) & 1);
      if (n0 + BN > m.n) zero_rows<BN, DP, C::kThreads>(sV + st * C::kKvBytes, m.n - n0);
    }
    cp_async_wait<0>();
    wgmma::fence_proxy_async();
    __syncthreads();
    if (kb + 1 < kb1) load_kv(kb + 1, st ^ 1);
    if (n0 < wspan.hi && n0 + BN > wspan.lo) {  // warpgroup-uniform
      float s[1][8][4];
      uint32_t a[4][4];
      wgmma::fence();
      issue_s<T, DP, BM>(s, q_km, k_km.shifted(st * C::kKvBytes));
      wgmma::commit();
      wgmma::wait<0>();
      wgmma::fence_operands<32>(&s[0][0][0]);
      silu_to_p<T, kBias, kFolded>(s, a, pw_p, bias_view(st), m, tile_full(m, w0, w0 + 64, n0, n0 + BN),
                                   w0 + 16 * warp, n0, lane);
      wgmma::fence();
      issue_pv<T, DP>(o, a, v_mn.shifted(st * C::kKvBytes));
      wgmma::commit();
      wgmma::wait<0>();  // V's stage is overwritten after the next barrier
      wgmma::fence_operands<OT * 4>(&o[0][0][0]);
    }
  }
  // The K / V stages stage the output.
  store_acc_tile<T, BM, DP, LDO>(head_out<T>(p.out, sq, p.ldv, wk.h, p.Dv), p.ldv, reinterpret_cast<T*>(sK), r_off, o,
                                 kFolded ? pw.inv_n : 1.f, m0, m.n, p.Dv, lane);
#endif
}

}  // namespace
}  // namespace hstu_cuda
}  // namespace recsys
