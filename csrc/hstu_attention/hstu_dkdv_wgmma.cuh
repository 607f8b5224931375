// The Hopper dK / dV kernel of the CUDA HSTU attention (sm_90a, fp16/bf16, head dims padded to 64 or 128, 16-byte
// rows): hstu_dkdv_kernel's algorithm and work list (one program per 64 keys, walking the query blocks that see
// them) with its four tile products on wgmma. Included by hstu_attention_cuda.cu after hstu_fwd_wgmma.cuh, whose
// loaders and issue helpers it uses.
//
// One warpgroup a block (its 4 warps own 16 keys each, as in hstu_dkdv_kernel). K and V stay in shared memory;
// query tiles of 64 rows of Q and dO stream through two stages (TMA, or cp.async with the bias), 128-byte swizzled.
// Per query tile: Sᵀ = K Qᵀ and dPᵀ = V dOᵀ from shared memory; the pointwise part (for_each_score with keys as
// rows) gives Pᵀ and dSᵀ in registers; then dV += Pᵀ dO and dK += dSᵀ Q with dO and Q read transposed (MN-major),
// as V in the forward. Registers: dK + dV (DP a thread) + Sᵀ + dPᵀ (64), within the 255 of two blocks an SM. Each
// step waits for its products: overlapping the pointwise part with dPᵀ and dV (two commit groups) gained nothing on
// the H100 (RESULTS.md, twenty-first session; presumably the SM's other warpgroup already fills those gaps).

#pragma once
#include "hstu_attention/hstu_fwd_wgmma.cuh"

namespace recsys {
namespace hstu_cuda {
namespace {

template <int DP>
struct WgmmaKv {
  static constexpr int kThreads = 128, BN = 64, BM = 64, kStages = 2;  // BN keys a block, BM queries a tile
  static constexpr int kTileBytes = 64 * DP * 2;                       // one swizzled tile of 64 rows
  static constexpr int kOutLd = DP + 8;                                // the output staging tiles' row stride
  static_assert(2 * BN * kOutLd * 2 <= 2 * kStages * kTileBytes, "dK and dV are staged in the Q / dO stages");
};

// Shared memory of the wgmma dK / dV kernel (host: size; kernel: offsets): 1024 bytes of alignment slack, K, V,
// the Q and dO stages (every tile a multiple of 1024 bytes, so each stays aligned), then the bias inputs as in
// KvSmem.
template <int DP>
struct WgmmaKvSmem {
  size_t k, v, q, dout, bars, qts, kts, tb, bins, pos, total;
  __host__ __device__ WgmmaKvSmem(bool time, bool tb_smem, bool log_bins, int nbins, bool pos_bias) {
    using C = WgmmaKv<DP>;
    Carve c;
    k = c.take(C::kTileBytes);
    v = c.take(C::kTileBytes);
    q = c.take(C::kStages * C::kTileBytes);
    dout = c.take(C::kStages * C::kTileBytes);
    bars = c.take((1 + C::kStages) * sizeof(uint64_t));  // TMA loads' mbarriers: K and V, then one a Q / dO stage
    qts = c.take(time ? C::kStages * C::BM * 8 : 0);
    kts = c.take(time ? C::BN * 8 : 0);
    tb = c.take(tb_smem ? nbins * sizeof(float) : 0);
    bins = c.take(log_bins ? kLogBins * sizeof(LogBin<float>) : 0);
    pos = c.take(pos_bias ? C::kStages * (C::BM + C::BN) * sizeof(float) : 0);
    total = 1024 + c.top;
  }
};

// kTma: K, V, Q and dO arrive by TMA (maps) instead of cp.async.
template <typename T, int DP, bool kBias, bool kTma>
__global__ void __launch_bounds__(WgmmaKv<DP>::kThreads, 2)
    hstu_dkdv_wgmma_kernel(const Params<float> params, const __grid_constant__ InlineWork iw,
                           const __grid_constant__ tma::Maps maps) {
#if RECSYS_WGMMA_ENABLED
  using C = WgmmaKv<DP>;
  constexpr int BN = C::BN, BM = C::BM, OT = DP / 8, LDO = C::kOutLd, TB = C::kTileBytes;
  const Params<float> p = specialise<kBias>(params);
  const Pointwise<float>& pw = p.pw;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  unsigned char* smem = smem_raw + ((1024 - smem_addr(smem_raw) % 1024) % 1024);
  const WgmmaKvSmem<DP> L(pw.has_time, p.tb_in_smem, log_bins(p), pw.nb + 1, pw.has_pos);
  unsigned char* sK = smem + L.k;
  unsigned char* sV = smem + L.v;
  unsigned char* sQ = smem + L.q;
  unsigned char* sO = smem + L.dout;
  int64_t* sQts = reinterpret_cast<int64_t*>(smem + L.qts);
  int64_t* sKts = reinterpret_cast<int64_t*>(smem + L.kts);
  float* sPos = reinterpret_cast<float*>(smem + L.pos);
  LogBin<float>* bins = reinterpret_cast<LogBin<float>*>(smem + L.bins);
  uint64_t* bars = reinterpret_cast<uint64_t*>(smem + L.bars);  // [0]: K and V, [1 + st]: Q / dO stage st
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;

  Work wk;
  const Seq sq = program_sequence(p, iw, wk);
  const Mask& m = sq.m;
  const int n0 = wk.blk * BN, n1 = min(n0 + BN, m.n);
  const HeadRows<T> rows = head_rows<T>(p, sq, wk.h);

  // Query blocks whose key span meets this key block, in increasing order.
  const int nmb = (m.n + BM - 1) / BM;
  auto next_block = [&](int mb) { return next_query_block<BM>(m, mb, n0, n1); };
  const TileSource<T> src_q{&maps.q, rows.q, p.ldq, p.Dqk}, src_o{&maps.dout, rows.dout, p.ldv, p.Dv},
      src_k{&maps.k, rows.k, p.ldq, p.Dqk}, src_v{&maps.v, rows.v, p.ldv, p.Dv};
  auto load_q = [&](int mb, int st) {
    load_tile_pair<T, BM, DP, C::kThreads, kTma>(sQ + st * TB, src_q, sO + st * TB, src_o, bars + 1 + st, sq.start,
                                                 wk.h, mb * BM, m.n);
    if (pw.has_time) load_ts<BM>(sQts + st * BM, rows.ts, mb * BM, m.n, true);
    if (pw.has_pos) load_pos_window<BM, BN>(sPos + st * (BM + BN), pw.pos, mb * BM, n0, pw.N);
    cp_async_commit();
  };
  if constexpr (kTma) init_tma_barriers(bars, 1 + C::kStages);
  load_tile_pair<T, BN, DP, C::kThreads, kTma>(sK, src_k, sV, src_v, bars, sq.start, wk.h, n0, m.n);
  if (pw.has_time) load_ts<BN>(sKts, rows.ts, n0, m.n, false);
  int mb = next_block(0);
  if (mb < nmb) load_q(mb, 0);
  else cp_async_commit();
  // After the first copies are issued, so that the tables' global reads overlap them.
  const float* tb = time_table(p, reinterpret_cast<float*>(smem + L.tb), bins);

  const wgmma::Desc k_km = k_major(smem_addr(sK)), v_km = k_major(smem_addr(sV)), q_km = k_major(smem_addr(sQ)),
                    o_km = k_major(smem_addr(sO)), q_mn = mn_major(smem_addr(sQ)), o_mn = mn_major(smem_addr(sO));
  // Bias-free bf16: scores scaled by alpha / 2, the tiles hold N P and 2 N dS (dsilu_of_half), and dV, dK take
  // 1 / N and alpha / (2N) at the end: ~6 instructions an element fewer.
  constexpr bool kFolded = !kBias && std::is_same_v<T, __nv_bfloat16>;
  Pointwise<float> pw_s = pw;
  if (kFolded) pw_s.alpha = 0.5f * pw.alpha;
  float dk[1][OT][4], dv[1][OT][4];
  zero(dk);
  zero(dv);
  if constexpr (kTma) tma::wait(bars, 0);
  for (int it = 0; mb < nmb; ++it) {
    // One barrier a tile (as the forward's): tile mb is in, the other stage is free for the next block.
    const int st = it & 1, nxt = next_block(mb + 1), m0 = mb * BM;
    if constexpr (kTma) {
      tma::wait(bars + 1 + st, (it >> 1) & 1);
      if (m0 + BM > m.n) {  // Pᵀ = dSᵀ = 0 there, Q and dO need not be
        zero_rows<BM, DP, C::kThreads>(sQ + st * TB, m.n - m0);
        zero_rows<BM, DP, C::kThreads>(sO + st * TB, m.n - m0);
      }
    }
    cp_async_wait<0>();
    wgmma::fence_proxy_async();
    __syncthreads();
    if (nxt < nmb) load_q(nxt, st ^ 1);
    float s[1][8][4], dp[1][8][4];  // transposed tiles: rows are keys, columns queries
    wgmma::fence();
    issue_s<T, DP, BN>(s, k_km, q_km.shifted(st * TB));
    issue_s<T, DP, BN>(dp, v_km, o_km.shifted(st * TB));
    wgmma::commit();
    wgmma::wait<0>();
    wgmma::fence_operands<32>(&s[0][0][0]);
    wgmma::fence_operands<32>(&dp[0][0][0]);
    const BiasView bv{tb, bins, sPos + st * (BM + BN) + BM - 1 + warp * 16, sKts + warp * 16, sQts + st * BM};
    for_each_score<false, kBias>(s, pw_s, bv.tb, bv.bins, bv.pdiag, m, tile_full(m, m0, m0 + BM, n0, n0 + BN),
                                 n0 + warp * 16, m0, bv.rts, bv.cts, lane,
                                 [&](float& x, bool ok, float y, int, int, int nt, int f) {
                                   // y = 0 when masked
                                   if constexpr (kFolded) {
                                     const float v = dsilu_of_half(y, x);
                                     dp[0][nt][f] = ok ? dp[0][nt][f] * v : 0.f;
                                   } else {
                                     const float sig = sigmoid<T>(y);
                                     x = y * sig * pw.inv_n;
                                     dp[0][nt][f] = ok ? dp[0][nt][f] * pw.inv_n * sig * (1.f + y * (1.f - sig)) : 0.f;
                                   }
                                 });
    uint32_t a_p[4][4], a_ds[4][4];
    pack_a<T>(s, a_p);
    pack_a<T>(dp, a_ds);
    wgmma::fence();
    issue_pv<T, DP>(dv, a_p, o_mn.shifted(st * TB));   // dV += Pᵀ dO
    issue_pv<T, DP>(dk, a_ds, q_mn.shifted(st * TB));  // dK += dSᵀ Q
    wgmma::commit();
    wgmma::wait<0>();  // this stage is overwritten after the next barrier
    wgmma::fence_operands<OT * 4>(&dv[0][0][0]);
    wgmma::fence_operands<OT * 4>(&dk[0][0][0]);
    mb = nxt;
  }
  cp_async_wait<0>();  // (no query block: the first loads may still be landing)
  __syncthreads();
  T* sOut = reinterpret_cast<T*>(sQ);  // dK rows, then dV rows
  acc_to_smem<T, 1, OT>(sOut + warp * 16 * LDO, LDO, dk, kFolded ? 0.5f * pw.alpha * pw.inv_n : pw.alpha, lane);
  acc_to_smem<T, 1, OT>(sOut + (BN + warp * 16) * LDO, LDO, dv, kFolded ? pw.inv_n : 1.f, lane);
  __syncthreads();
  T* dkh = head_out<T>(p.dk, sq, p.ldq, wk.h, p.Dqk);
  T* dvh = head_out<T>(p.dv, sq, p.ldv, wk.h, p.Dv);
  store_tile<T, BN, DP, LDO>(dkh, sOut, p.ldq, n0, m.n, 0, p.Dqk, true);
  store_tile<T, BN, DP, LDO>(dvh, sOut + BN * LDO, p.ldv, n0, m.n, 0, p.Dv, true);
#endif
}

}  // namespace
}  // namespace hstu_cuda
}  // namespace recsys
