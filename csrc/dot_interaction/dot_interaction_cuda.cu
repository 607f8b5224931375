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
#include <tuple>

#include "dot_interaction/dot_interaction_cuda.cuh"
#include "dot_interaction/dot_interaction_cuda_f64.cuh"

namespace recsys {
namespace dot_cuda {
namespace {

// ---------------------------------------------------------------- kernels (tiles in dot_interaction_cuda.cuh)
// Forward: S is the stage type (T for a single chunk, float when D is chunked); kVec: 16-byte loads of T.
template <typename T, typename S, bool kVec>
__global__ void __launch_bounds__(kMaxWarps * 32, 3)
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

  zero_smem(sT + p.n * p.ld, (p.n_pad - p.n) * p.ld * static_cast<int>(sizeof(T)));  // rows loads never touch
  int64_t b = blockIdx.x;
  load_T<T, kVec>(sT, p.ld, dense, sparse, b, p.F, p.D, p.n, 0, p.DC, lp, warp, nwarps);
  for (; b < p.B; b += gridDim.x) {
    const int phase = static_cast<int>((p.out_phase0 + (b % VEC) * (p.out_cols % VEC)) % VEC);
    const bool more = b + gridDim.x < p.B;
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
      // T is free: start the next chunk's (or sample's) loads, then write this row while they fly. (Double
      // buffering T, i.e. also hiding the loads behind the tiles, measured slower: fewer blocks fit.)
      __syncthreads();
      if (ch + 1 < p.nchunks)
        load_T<T, kVec>(sT, p.ld, dense, sparse, b, p.F, p.D, p.n, c0 + p.DC, p.DC, lp, warp, nwarps);
      else if (more)
        load_T<T, kVec>(sT, p.ld, dense, sparse, b + gridDim.x, p.F, p.D, p.n, 0, p.DC, lp, warp, nwarps);
    }
    write_row<T, S>(out + b * p.out_cols - phase, stage, phase, p.D + p.P, p.out_cols);
  }
}

// Backward: per sample, G from the staged grad_output row, then G T tiles chunk by chunk over D.
template <typename T, bool kVec>
__global__ void __launch_bounds__(kMaxWarps * 32, 3)
    dot_bwd_kernel(const T* __restrict__ go, const T* __restrict__ dense, const T* __restrict__ sparse,
                   T* __restrict__ gd, T* __restrict__ gs, const BwdParams p) {
  constexpr int VEC = 16 / sizeof(T);
  constexpr bool kTC = !std::is_same_v<T, float>;
  extern __shared__ __align__(16) unsigned char smem[];
  T* sT = reinterpret_cast<T*>(smem);
  T* sG = reinterpret_cast<T*>(smem + p.g_off);
  T* gst = reinterpret_cast<T*>(smem + p.gst_off);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  T* scr = reinterpret_cast<T*>(smem + p.scr_off) + warp * 16 * kScrLd;
  const int tile_cols = kTC ? 16 : 32;
  const int ndb = p.DC / tile_cols, nitems = (p.n_pad / 16) * ndb;
  const LoadPlan lp = make_load_plan(kVec ? p.DC / VEC : p.DC, lane);

  zero_smem(sT + p.n * p.ld, (p.n_pad - p.n) * p.ld * static_cast<int>(sizeof(T)));
  zero_smem(sG, p.n_pad * p.gld * static_cast<int>(sizeof(T)));
  int64_t b = blockIdx.x;
  load_T<T, kVec>(sT, p.ld, dense, sparse, b, p.F, p.D, p.n, 0, p.DC, lp, warp, nwarps);
  if (p.stage_go) load_go(gst, go + b * p.go_stride, p.D + p.P);
  for (; b < p.B; b += gridDim.x) {
    const T* go_row = go + b * p.go_stride;
    const T* gorow = p.stage_go ? gst + go_phase(go_row) : go_row;  // grad_output[b, col] = gorow[col]
    for (int ch = 0; ch < p.nchunks; ++ch) {
      const int c0 = ch * p.DC;
      cp_async_wait_all();
      __syncthreads();  // also orders the one-time zeroing of G before its first fill
      if (ch == 0) {
        build_G<T>(sG, p.gld, gorow + p.D, p);
        __syncthreads();
      }
      for (int q = warp; q < nitems; q += nwarps) {
        const int i = q / ndb, d = q - i * ndb;
        if constexpr (kTC) bwd_tile_tc<T, kVec>(sG, sT, gorow, scr, i, d, c0, b, gd, gs, p, lane);
        else bwd_tile_simt<kVec>(sG, sT, gorow, i, d, c0, b, gd, gs, p, lane);
      }
      __syncthreads();  // T (and after the last chunk G and the row stage) are free: fetch what comes next
      if (ch + 1 < p.nchunks) {
        load_T<T, kVec>(sT, p.ld, dense, sparse, b, p.F, p.D, p.n, c0 + p.DC, p.DC, lp, warp, nwarps);
      } else if (b + gridDim.x < p.B) {
        load_T<T, kVec>(sT, p.ld, dense, sparse, b + gridDim.x, p.F, p.D, p.n, 0, p.DC, lp, warp, nwarps);
        if (p.stage_go) load_go(gst, go + (b + gridDim.x) * p.go_stride, p.D + p.P);
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

template <typename Kernel>
int64_t persistent_grid(Kernel kernel, int threads, int64_t smem, int64_t B, const Device& dev) {
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                                      cudaSharedmemCarveoutMaxShared));
  int per_sm = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, static_cast<size_t>(smem)));
  TORCH_CHECK(per_sm > 0, "dot_interaction (CUDA): a block of ", fmt(threads), " threads with ", fmt(smem),
              " bytes of shared memory cannot be resident on this device");
  return std::min<int64_t>(B, static_cast<int64_t>(per_sm) * dev.sms);
}

void check_fits(bool fits, const DotInteractionShape& s, at::ScalarType dt, int64_t need, const Device& dev) {
  TORCH_CHECK(fits, "dot_interaction (CUDA): F = ", fmt(s.F), ", D = ", fmt(s.D), " in ", fmt(dt), " needs ", fmt(need),
              " bytes of shared memory per block, more than the ", fmt(dev.smem_optin),
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
    check_fits(dmax >= gran, s, dense.scalar_type(), t_bytes(gran) + stage_elems * 4, dev);
    const int64_t nch = (dfull + dmax - 1) / dmax;
    dc = round_up((dfull + nch - 1) / nch, gran);
  }
  p.DC = static_cast<int>(dc);
  p.nchunks = static_cast<int>((s.D + dc - 1) / dc);
  p.ld = static_cast<int>(round_up(dc, gran) + row_pad);
  const int64_t stage_bytes = stage_elems * (stage_f32 ? 4 : sizeof(T));
  const int nb = p.n_pad / 16, ntiles = nb * (nb + 1) / 2;
  p.stage_off = static_cast<int>(t_bytes(dc));
  const int64_t smem = p.stage_off + stage_bytes;
  p.out_phase0 = static_cast<int>((reinterpret_cast<uintptr_t>(out.data_ptr()) / sizeof(T)) % VEC);

  // Warps per block, measured on an H100 (B = 65536; F = 26, D = 128 and F = 100, D = 64): one warp per sample
  // when there are few tiles (more samples in flight per SM), four or eight when there are many.
  const int nw = kTC ? (ntiles <= 3 ? 1 : 4) : (nb >= 4 ? 8 : 4);
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
  int64_t gst_bytes = round_up((s.D + s.pairs) * sizeof(T) + 32, 16);
  const int64_t scr_bytes_per_warp = kTC ? 16 * kScrLd * sizeof(T) : 0;
  auto t_bytes = [&](int64_t dc) { return round_up(p.n_pad * (dc + row_pad) * sizeof(T), 16); };
  const int64_t dfull = round_up(s.D, gran);
  // Staging the grad_output row lets its loads fly with T's; for very large F it is dropped to make room for G.
  p.stage_go = g_bytes + gst_bytes + kMaxWarps * scr_bytes_per_warp + t_bytes(gran) <= dev.smem_optin;
  if (!p.stage_go) gst_bytes = 0;
  const int64_t fixed = g_bytes + gst_bytes + kMaxWarps * scr_bytes_per_warp;
  int64_t dc = dfull;
  if (t_bytes(dc) + fixed > dev.smem_optin) {
    const int64_t dmax = ((dev.smem_optin - fixed - 16) / (p.n_pad * static_cast<int64_t>(sizeof(T))) - row_pad) /
                         gran * gran;
    check_fits(dmax >= gran, s, dense.scalar_type(), t_bytes(gran) + fixed, dev);
    const int64_t nch = (dfull + dmax - 1) / dmax;
    dc = round_up((dfull + nch - 1) / nch, gran);
  }
  p.DC = static_cast<int>(dc);
  p.nchunks = static_cast<int>((s.D + dc - 1) / dc);
  p.ld = static_cast<int>(dc + row_pad);
  const int nitems = (p.n_pad / 16) * static_cast<int>(dc / gran);
  const int nw = std::min(nitems, p.n_pad >= 64 ? 8 : 4);  // measured as for the forward
  p.g_off = static_cast<int>(t_bytes(dc));
  p.gst_off = static_cast<int>(p.g_off + g_bytes);
  p.scr_off = static_cast<int>(p.gst_off + gst_bytes);
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
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor for the CUDA kernel, got ", fmt(t.device()));
}

// Sizes are int32 inside the kernels; shared memory bounds them long before this does.
void check_int32(const DotInteractionShape& s) {
  TORCH_CHECK(s.n <= 65535 && s.D <= (1 << 24) && s.out_cols <= (1LL << 30),
              "dot_interaction (CUDA): shape too large (F = ", fmt(s.F), ", D = ", fmt(s.D),
              ", output columns = ", fmt(s.out_cols), ")");
}

// float64 (gradcheck, accuracy checks) takes the plain kernels of dot_interaction_cuda_f64.cuh.
template <typename F, typename F64>
void dispatch(at::ScalarType dt, F&& f, F64&& f64) {
  switch (dt) {
    case at::kHalf: f(__half{}); break;
    case at::kBFloat16: f(__nv_bfloat16{}); break;
    case at::kFloat: f(float{}); break;
    case at::kDouble: f64(); break;
    default:  // check_float_dtype admits only the four above
      TORCH_CHECK(false, "dense must be float64, float32, float16 or bfloat16, got ", fmt(dt));
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
  dispatch(dense.scalar_type(), [&](auto tag) { launch_forward<decltype(tag)>(d, sp, out, s, dev); },
           [&] { dot_cuda_f64::forward(d, sp, out, s); });
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
  dispatch(dense.scalar_type(), [&](auto tag) { launch_backward<decltype(tag)>(go, d, sp, gd, gs, s, dev); },
           [&] { dot_cuda_f64::backward(go, d, sp, gd, gs, s); });
  return {gd, gs};
}

}  // namespace
}  // namespace dot_cuda

TORCH_LIBRARY_IMPL(recsys, CUDA, m) {
  m.impl("dot_interaction", &dot_cuda::dot_interaction_cuda);
  m.impl("dot_interaction_backward", &dot_cuda::dot_interaction_backward_cuda);
}

}  // namespace recsys
