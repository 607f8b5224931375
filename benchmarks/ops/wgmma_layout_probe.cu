// Standalone check of csrc/common/wgmma.cuh on an sm_90 GPU (not part of the package): one warpgroup computes
// S = A Bᵀ (both operands K-major in shared memory) and O = S V (S from registers, V MN-major), compared with the
// host. Variant 0 is the layout the kernels use; variant 1 swaps V's lbo / sbo and must fail (the probe can fail).
//   nvcc -std=c++20 -O2 -gencode=arch=compute_90a,code=sm_90a -Icsrc benchmarks/ops/wgmma_layout_probe.cu -o /tmp/probe
//   /tmp/probe      (H100, twentieth and twenty-first sessions: variant 0 exact to fp32 rounding, variant 1's O
//                    wrong, exit status 0; benchmarks/results/wgmma-probe-*.txt)
#include <cstdio>
#include <cstdlib>
#include <vector>
#include <cmath>
#include "common/ptx.cuh"
#include "common/wgmma.cuh"
using namespace recsys;
using T = __nv_bfloat16;

template <int VAR>
__global__ void probe(const T* A, const T* B, const T* V, float* S, float* O) {
  extern __shared__ __align__(16) unsigned char raw[];
  unsigned char* sm = raw + ((1024 - smem_addr(raw) % 1024) % 1024);
  unsigned char *sA = sm, *sB = sm + 16384, *sV = sm + 32768;
  for (int i = threadIdx.x; i < 64 * 128; i += 128) {
    int r = i / 128, c = i % 128;
    *reinterpret_cast<T*>(sA + wgmma::swizzled_offset(r, c, 64)) = A[i];
    *reinterpret_cast<T*>(sB + wgmma::swizzled_offset(r, c, 64)) = B[i];
    *reinterpret_cast<T*>(sV + wgmma::swizzled_offset(r, c, 64)) = V[i];
  }
  wgmma::fence_proxy_async();
  __syncthreads();
  float s[8][4];
  wgmma::fence();
#pragma unroll
  for (int ks = 0; ks < 8; ++ks) {
    uint64_t da = wgmma::desc(smem_addr(sA) + (ks >> 2) * 64 * 128 + (ks & 3) * 32, 16, 1024);
    uint64_t db = wgmma::desc(smem_addr(sB) + (ks >> 2) * 64 * 128 + (ks & 3) * 32, 16, 1024);
    if (ks == 0) wgmma::mma_m64n64_ss<T, 0>(&s[0][0], da, db);
    else wgmma::mma_m64n64_ss<T, 1>(&s[0][0], da, db);
  }
  wgmma::commit();
  wgmma::wait<0>();
  wgmma::fence_operands<32>(&s[0][0]);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, c = lane & 3;
  for (int nt = 0; nt < 8; ++nt)
    for (int e = 0; e < 4; ++e) S[(16 * warp + g + 8 * (e >> 1)) * 64 + 8 * nt + 2 * c + (e & 1)] = s[nt][e];
  uint32_t a[4][4];
  for (int kk = 0; kk < 4; ++kk) {
    a[kk][0] = pack2<T>(s[2 * kk][0], s[2 * kk][1]);
    a[kk][1] = pack2<T>(s[2 * kk][2], s[2 * kk][3]);
    a[kk][2] = pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]);
    a[kk][3] = pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3]);
  }
  float o[16][4];
  for (int i = 0; i < 16; ++i) for (int e = 0; e < 4; ++e) o[i][e] = 0.f;
  wgmma::fence();
  for (int kk = 0; kk < 4; ++kk) {
    uint64_t dv = VAR == 0 ? wgmma::desc(smem_addr(sV) + kk * 16 * 128, 64 * 128, 1024)
                           : wgmma::desc(smem_addr(sV) + kk * 16 * 128, 1024, 64 * 128);
    wgmma::mma_rs<T, 128>(&o[0][0], a[kk], dv);
  }
  wgmma::commit();
  wgmma::wait<0>();
  wgmma::fence_operands<64>(&o[0][0]);
  for (int nt = 0; nt < 16; ++nt)
    for (int e = 0; e < 4; ++e) O[(16 * warp + g + 8 * (e >> 1)) * 128 + 8 * nt + 2 * c + (e & 1)] = o[nt][e];
}

int main() {
  std::vector<T> A(64 * 128), B(64 * 128), V(64 * 128);
  std::vector<float> fA(64 * 128), fB(64 * 128), fV(64 * 128);
  srand(1);
  auto rnd = [] { return (rand() % 2001 - 1000) / 1000.f; };
  for (int i = 0; i < 64 * 128; ++i) {
    A[i] = __float2bfloat16(rnd()); fA[i] = __bfloat162float(A[i]);
    B[i] = __float2bfloat16(rnd()); fB[i] = __bfloat162float(B[i]);
    V[i] = __float2bfloat16(rnd()); fV[i] = __bfloat162float(V[i]);
  }
  T *dA, *dB, *dV; float *dS, *dO;
  cudaMalloc(&dA, 2 * 8192); cudaMalloc(&dB, 2 * 8192); cudaMalloc(&dV, 2 * 8192);
  cudaMalloc(&dS, 4 * 4096); cudaMalloc(&dO, 4 * 8192);
  cudaMemcpy(dA, A.data(), 2 * 8192, cudaMemcpyHostToDevice);
  cudaMemcpy(dB, B.data(), 2 * 8192, cudaMemcpyHostToDevice);
  cudaMemcpy(dV, V.data(), 2 * 8192, cudaMemcpyHostToDevice);
  std::vector<float> Sr(4096), Or(8192);
  for (int i = 0; i < 64; ++i) for (int j = 0; j < 64; ++j) {
    double x = 0; for (int k = 0; k < 128; ++k) x += fA[i * 128 + k] * fB[j * 128 + k];
    Sr[i * 64 + j] = x;
  }
  for (int i = 0; i < 64; ++i) for (int n = 0; n < 128; ++n) {
    double x = 0;
    for (int j = 0; j < 64; ++j) x += __bfloat162float(__float2bfloat16(Sr[i * 64 + j])) * fV[j * 128 + n];
    Or[i * 128 + n] = x;
  }
  int failed = 0;
  for (int var = 0; var < 2; ++var) {
    auto k = var == 0 ? probe<0> : probe<1>;
    cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, 50 * 1024);
    k<<<1, 128, 50 * 1024>>>(dA, dB, dV, dS, dO);
    cudaError_t err = cudaDeviceSynchronize();
    std::vector<float> S(4096), O(8192);
    cudaMemcpy(S.data(), dS, 4 * 4096, cudaMemcpyDeviceToHost);
    cudaMemcpy(O.data(), dO, 4 * 8192, cudaMemcpyDeviceToHost);
    double es = 0, eo = 0, ms = 0, mo = 0;
    for (int i = 0; i < 4096; ++i) { es = fmax(es, fabs(S[i] - Sr[i])); ms = fmax(ms, fabs(Sr[i])); }
    for (int i = 0; i < 8192; ++i) { eo = fmax(eo, fabs(O[i] - Or[i])); mo = fmax(mo, fabs(Or[i])); }
    printf("variant %d (%s): err %s  S max|err| %.4g (max|S| %.3g)  O max|err| %.4g (max|O| %.3g)\n", var,
           var == 0 ? "lbo=BN*128 sbo=1024" : "lbo=1024 sbo=BN*128", cudaGetErrorString(err), es, ms, eo, mo);
    const bool ok = err == cudaSuccess && es <= 1e-4 * ms && eo <= 1e-3 * mo;
    failed += ok != (var == 0);  // variant 0 must match, variant 1 must not
  }
  printf("%s\n", failed ? "FAILED" : "ok");
  return failed ? 1 : 0;
}
