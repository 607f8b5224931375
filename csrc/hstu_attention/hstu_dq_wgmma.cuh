// The Hopper dQ kernel of the CUDA HSTU attention without the relative bias (sm_90a, fp16/bf16, head dims padded to
// 64 or 128, 16-byte rows): hstu_dq_kernel's algorithm and work list (one program per 64 query rows, walking the key
// tiles they see) with its three tile products on wgmma. Included by hstu_attention_cuda.cu after
// hstu_fwd_wgmma.cuh, whose loaders and issue helpers it uses. With the bias the mma.sync dQ kernel runs (its
// diagonal sums and exact time histogram of dS): a wgmma version with them was slower, 1.68 against 1.28 ms at
// B 64, N 1024, H 4, d 128 on the H100, as their shared memory left one warpgroup an SM (RESULTS.md).
//
// One warpgroup a block (its 4 warps own 16 query rows each, as in hstu_dq_kernel). Q and dO stay in shared memory;
// K / V tiles of 64 keys stream through two stages (TMA or cp.async, as the forward's), all 128-byte swizzled. Per
// key tile: S = Q Kᵀ and dP = dO Vᵀ from shared memory, the pointwise part (for_each_score) gives dS in registers,
// then dQ += dS K with K read as an MN-major operand (as V in the forward). Registers: dQ (DP / 2 a thread) + S +
// dP (64) + dS (16), within the 255 of two blocks an SM.
#pragma once
#include "hstu_attention/hstu_fwd_wgmma.cuh"

namespace recsys {
namespace hstu_cuda {
namespace {

template <int DP>
struct WgmmaDq {
  static constexpr int kThreads = 128, BM = 64, BN = 64, kStages = 2;  // BM queries a block, BN keys a tile
  static constexpr int kTileBytes = 64 * DP * 2;                       // one swizzled tile of 64 rows
  static constexpr int kOutLd = DP + 8;                                // the output staging tile's row stride
  static_assert(BM * kOutLd * 2 <= 2 * kStages * kTileBytes, "dQ is staged in the K / V stages");
};

// Shared memory of the wgmma dQ kernel: 1024 bytes of alignment slack, Q, dO, then the K and V stages (every tile a
// multiple of 1024 bytes, so each stays aligned).
template <int DP>
struct WgmmaDqSmem {
  size_t q, dout, k, v, bars, total;
  __host__ __device__ WgmmaDqSmem() {
    using C = WgmmaDq<DP>;
    Carve c;
    q = c.take(C::kTileBytes);
    dout = c.take(C::kTileBytes);
    k = c.take(C::kStages * C::kTileBytes);
    v = c.take(C::kStages * C::kTileBytes);
    bars = c.take((1 + C::kStages) * sizeof(uint64_t));  // TMA loads' mbarriers: Q and dO, then one a K / V stage
    total = 1024 + c.top;
  }
};

// kTma: Q, dO, K and V arrive by TMA (maps) instead of cp.async.
template <typename T, int DP, bool kTma>
__global__ void __launch_bounds__(WgmmaDq<DP>::kThreads, 2)
    hstu_dq_wgmma_kernel(const Params<float> params, const __grid_constant__ InlineWork iw,
                         const __grid_constant__ tma::Maps maps) {
#if RECSYS_WGMMA_ENABLED
  using C = WgmmaDq<DP>;
  constexpr int BN = C::BN, BM = C::BM, OT = DP / 8, LDO = C::kOutLd, TB = C::kTileBytes;
  const Params<float> p = specialise<false>(params);
  const Pointwise<float>& pw = p.pw;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  unsigned char* smem = smem_raw + ((1024 - smem_addr(smem_raw) % 1024) % 1024);
  const WgmmaDqSmem<DP> L;
  unsigned char* sQ = smem + L.q;
  unsigned char* sO = smem + L.dout;
  unsigned char* sK = smem + L.k;
  unsigned char* sV = smem + L.v;
  uint64_t* bars = reinterpret_cast<uint64_t*>(smem + L.bars);  // [0]: Q and dO, [1 + st]: K / V stage st
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;

  Work wk;
  const Seq sq = program_sequence(p, iw, wk);
  const Mask& m = sq.m;
  const int m0 = wk.blk * BM;
  const HeadRows<T> rows = head_rows<T>(p, sq, wk.h);
  const Span span = key_span(m, m0, min(m0 + BM, m.n));
  const int kb0 = span.lo / BN, kb1 = (span.hi + BN - 1) / BN;

  if constexpr (kTma) init_tma_barriers(bars, 1 + C::kStages);
  const TileSource<T> src_q{&maps.q, rows.q, p.ldq, p.Dqk}, src_o{&maps.dout, rows.dout, p.ldv, p.Dv},
      src_k{&maps.k, rows.k, p.ldq, p.Dqk}, src_v{&maps.v, rows.v, p.ldv, p.Dv};
  load_tile_pair<T, BM, DP, C::kThreads, kTma>(sQ, src_q, sO, src_o, bars, sq.start, wk.h, m0, m.n);
  auto load_kv = [&](int kb, int st) {
    load_tile_pair<T, BN, DP, C::kThreads, kTma>(sK + st * TB, src_k, sV + st * TB, src_v, bars + 1 + st, sq.start,
                                                 wk.h, kb * BN, m.n);
    cp_async_commit();
  };
  if (kb0 < kb1) load_kv(kb0, 0);

  const wgmma::Desc q_km = k_major(smem_addr(sQ)), o_km = k_major(smem_addr(sO)), k_km = k_major(smem_addr(sK)),
                    v_km = k_major(smem_addr(sV)), k_mn = mn_major(smem_addr(sK));
  // bf16: scores scaled by alpha / 2, the tile holds 2 N dS (dsilu_of_half), and dQ takes alpha / (2N) at the end.
  constexpr bool kFolded = std::is_same_v<T, __nv_bfloat16>;
  Pointwise<float> pw_s = pw;
  if (kFolded) pw_s.alpha = 0.5f * pw.alpha;
  float dq[1][OT][4];
  zero(dq);
  if constexpr (kTma) tma::wait(bars, 0);
  for (int kb = kb0; kb < kb1; ++kb) {
    // One barrier a tile (as the forward's): tile kb is in, the other stage is free for tile kb + 1.
    const int st = (kb - kb0) & 1, n0 = kb * BN;
    if constexpr (kTma) {
      tma::wait(bars + 1 + st, ((kb - kb0) >> 1) & 1);
      if (n0 + BN > m.n) zero_rows<BN, DP, C::kThreads>(sK + st * TB, m.n - n0);  // dS = 0 there, K need not be
    }
    cp_async_wait<0>();
    wgmma::fence_proxy_async();
    __syncthreads();
    if (kb + 1 < kb1) load_kv(kb + 1, st ^ 1);
    float s[1][8][4], dp[1][8][4];
    wgmma::fence();
    issue_s<T, DP, BM>(s, q_km, k_km.shifted(st * TB));
    issue_s<T, DP, BM>(dp, o_km, v_km.shifted(st * TB));
    wgmma::commit();
    wgmma::wait<0>();
    wgmma::fence_operands<32>(&s[0][0][0]);
    wgmma::fence_operands<32>(&dp[0][0][0]);
    const BiasView none{};
    for_each_score<true, false>(s, pw_s, none.tb, none.bins, none.pdiag, m, tile_full(m, m0, m0 + BM, n0, n0 + BN),
                                m0 + warp * 16, n0, none.rts, none.cts, lane,
                                [&](float&, bool ok, float y, int, int, int nt, int f) {
                                  if constexpr (kFolded) {
                                    float np;
                                    const float v = dsilu_of_half(y, np);
                                    dp[0][nt][f] = ok ? dp[0][nt][f] * v : 0.f;
                                  } else {
                                    const float sig = sigmoid<T>(y);
                                    dp[0][nt][f] = ok ? dp[0][nt][f] * pw.inv_n * sig * (1.f + y * (1.f - sig)) : 0.f;
                                  }
                                });
    uint32_t a_ds[4][4];
    pack_a<T>(dp, a_ds);
    wgmma::fence();
    issue_pv<T, DP>(dq, a_ds, k_mn.shifted(st * TB));  // dQ += dS K
    wgmma::commit();
    wgmma::wait<0>();  // K's stage is overwritten after the next barrier
    wgmma::fence_operands<OT * 4>(&dq[0][0][0]);
  }
  store_acc_tile<T, BM, DP, LDO>(head_out<T>(p.dq, sq, p.ldq, wk.h, p.Dqk), p.ldq, reinterpret_cast<T*>(sK),
                                 warp * 16, dq, kFolded ? 0.5f * pw.alpha * pw.inv_n : pw.alpha, m0, m.n, p.Dqk, lane);
#endif
}

}  // namespace
}  // namespace hstu_cuda
}  // namespace recsys
