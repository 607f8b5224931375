// Exact row-wise Adagrad (Duchi et al. 2011; FBGEMM's EXACT_ROWWISE_ADAGRAD: one fp32 accumulator per row),
// CUDA kernels for rowwise_adagrad_update_ and the fused embedding_bag_backward_rowwise_adagrad_.
//
// Deterministic by construction — no floating-point atomics:
// 1. prepare: one thread per occurrence p computes its row (fused: table_offsets[t] + indices[p], with p's bag
//    found by binary search in offsets) and validates indices, offsets and table_offsets into an error word;
// 2. a cub radix sort of (row, p) over only the bits a row needs groups the occurrences by row, positions
//    ascending inside a row (the sort is stable); the error word goes to pinned host memory right after the
//    prepare kernel, and the host waits for that copy only (an event), so the sort and the update kernels are
//    already queued: the GPU never idles while the host reads the word. The update kernels return at once when
//    the word is set, so bad input writes nothing, and the host then raises;
// 3. the sorted occurrences are cut into chunks of 32; a *piece* is a row's run inside one chunk. One warp per
//    piece: each lane fetches one occurrence's position (and bag, scale) with a coalesced load, then the warp
//    walks them in order, summing gradient rows with vector loads (fused: grad_output[sample, table slice],
//    times the per-sample weight or 1 / bag length; no (N, D) gradient exists). A run that fits its chunk is
//    finished by the same warp: mean of squares (warp reduction, lane 0's value broadcast so every lane agrees),
//    momentum, row update;
// 4. a run that crosses chunks left one partial sum per chunk (slot 1 where it starts, slot 0 in later chunks);
//    one warp per starting chunk adds them in chunk order and updates the row. A hot row is therefore summed by
//    many warps in parallel, yet always in the same order.
// Each lane holds NV vectors of VEC elements of the row (16-byte loads for fp32 when D % 4 == 0), D <= 1024.
#include <ATen/Dispatch.h>
#include <ATen/cuda/cub.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <limits>

#include "rowwise_adagrad/rowwise_adagrad.h"

namespace recsys {
namespace rowwise_cuda {
namespace {

constexpr int kChunk = 32;  // sorted positions per chunk: one per lane when a warp reads a piece
// Warps per block. The chunk kernel needs 94-96 registers a thread: an SM then holds 21 warps, which blocks of 4
// fill to 20 and blocks of 8 only to 16 (H100: 1.293 vs 1.307 ms for the update, benchmarks/RESULTS.md).
constexpr int kWarps = 4;
constexpr int kMaxD = 1024;
constexpr unsigned kFull = 0xffffffffu;

enum Error : int { kErrIndex = 1, kErrOffsets = 2, kErrTables = 4 };

struct DeviceHyper {
  float lr, eps, wd;
  int mode;
  bool stochastic;
  uint32_t sr_key;
};

// Where occurrence p's gradient row lives: grad + p * ld (update), or for the fused backward
// grad_output + (bag % B) * ld + (bag / B) * D scaled by the per-sample weight or 1 / bag length.
struct GradView {
  const void* grad;
  int64_t ld;
  const int32_t* bag_of;    // null: the update op
  const float* psw;         // null: no per-sample weights
  const int64_t* offsets;   // mean pooling: bag lengths
  int64_t B;
  bool mean;
};

template <typename T>
__device__ __forceinline__ float to_f(T x) {
  return static_cast<float>(x);
}

template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Pack {
  T v[VEC];
};

template <typename T, int VEC>
__device__ __forceinline__ void load_vec(const T* p, float (&out)[VEC]) {
  const Pack<T, VEC> pk = *reinterpret_cast<const Pack<T, VEC>*>(p);
#pragma unroll
  for (int k = 0; k < VEC; ++k) out[k] = to_f(pk.v[k]);
}

template <typename W>
__device__ __forceinline__ W round_to(float v, uint32_t row_key, int64_t d, bool stochastic) {
  if constexpr (std::is_same_v<W, float>) {
    return v;
  } else {
    if (!stochastic) return W(v);  // round to nearest even
    const uint32_t rnd = rowwise_mix32(row_key ^ static_cast<uint32_t>(d));
    if constexpr (std::is_same_v<W, c10::BFloat16>) {
      const uint32_t bits = rowwise_sr_bits(__float_as_uint(v), rnd, 16);
      return c10::BFloat16(static_cast<uint16_t>(bits >> 16), c10::BFloat16::from_bits());
    } else {
      return W(__uint_as_float(rowwise_sr_bits(__float_as_uint(v), rnd, 13)));  // exact in fp16's normal range
    }
  }
}

// The lane's elements of a row: vector v covers columns (v * 32 + lane) * VEC .. + VEC.
template <int VEC>
__device__ __forceinline__ int64_t col(int v, int lane) {
  return (static_cast<int64_t>(v) * 32 + lane) * VEC;
}

// This lane's elements of row r (0 past D). Loaded before the gradient sum when the row's run is known to end
// in this warp, so the weight read overlaps the gradient reads instead of following them.
template <typename W, int VEC, int NV>
__device__ __forceinline__ void load_row(const W* __restrict__ weight, int64_t r, int64_t D, int lane,
                                         float (&w)[NV][VEC]) {
  const W* row = weight + r * D;
#pragma unroll
  for (int v = 0; v < NV; ++v) {
    const int64_t d = col<VEC>(v, lane);
    if (d < D) {
      load_vec<W, VEC>(row + d, w[v]);
    } else {
#pragma unroll
      for (int k = 0; k < VEC; ++k) w[v][k] = 0.f;
    }
  }
}

// One step of row r from its summed gradient g, its current values w and accumulator m_old.
template <typename W, int VEC, int NV>
__device__ __forceinline__ void update_row(W* __restrict__ weight, float* __restrict__ momentum, int64_t r,
                                           const float (&g)[NV][VEC], const float (&w)[NV][VEC], float m_old,
                                           int64_t D, int lane, const DeviceHyper& h) {
  W* row = weight + r * D;
  float sum_sq = 0.f;
#pragma unroll
  for (int v = 0; v < NV; ++v) {
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      const float gg = h.mode == kWeightDecayL2 ? g[v][k] + h.wd * w[v][k] : g[v][k];
      sum_sq += gg * gg;
    }
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) sum_sq += __shfl_xor_sync(kFull, sum_sq, off);
  sum_sq = __shfl_sync(kFull, sum_sq, 0);  // lanes may differ in the last bit: everyone takes lane 0's
  const float m_new = m_old + sum_sq / static_cast<float>(D);
  __syncwarp();
  if (lane == 0) momentum[r] = m_new;
  const float multiplier = h.lr / (sqrtf(m_new) + h.eps);
  float correction = 1.f;
  if (h.mode == kWeightDecayL2) correction = 1.f - multiplier * h.wd;
  else if (h.mode == kWeightDecayDecoupled) correction = 1.f - h.lr * h.wd;
  const bool sr = h.stochastic && !std::is_same_v<W, float>;
  const uint32_t row_key = sr ? rowwise_sr_row_key(h.sr_key, r) : 0u;
#pragma unroll
  for (int v = 0; v < NV; ++v) {
    const int64_t d = col<VEC>(v, lane);
    if (d < D) {
      Pack<W, VEC> out;
#pragma unroll
      for (int k = 0; k < VEC; ++k) out.v[k] = round_to<W>(correction * w[v][k] - multiplier * g[v][k], row_key, d + k, sr);
      *reinterpret_cast<Pack<W, VEC>*>(row + d) = out;
    }
  }
}

// ------------------------------------------------------------------------------------------------- prepare

// The sort keys: 32-bit unless a table has 2^31 rows or more (half the key bytes for the sort to move).
struct RowKeys {
  void* data;
  bool wide;
  __device__ __forceinline__ void set(int64_t p, int64_t r) const {
    if (wide) static_cast<int64_t*>(data)[p] = r;
    else static_cast<int32_t*>(data)[p] = static_cast<int32_t>(r);
  }
};

template <typename index_t>
__global__ void prepare_update_kernel(const index_t* __restrict__ indices, int64_t N, int64_t E, RowKeys keys,
                                      int32_t* __restrict__ pos, int* err) {
  for (int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; p < N;
       p += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t r = static_cast<int64_t>(indices[p]);
    if (r < 0 || r >= E) {
      atomicOr(err, kErrIndex);
      r = 0;
    }
    keys.set(p, r);
    pos[p] = static_cast<int32_t>(p);
  }
}

template <typename index_t>
__global__ void prepare_fused_kernel(const index_t* __restrict__ indices, const int64_t* __restrict__ offsets,
                                     const int64_t* __restrict__ tabs, int64_t N, int64_t T, int64_t B, int64_t E,
                                     RowKeys keys, int32_t* __restrict__ pos,
                                     int32_t* __restrict__ bag_of, int* err) {
  const int64_t TB = T * B;
  const int64_t total = std::max(N, TB + 1);
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; k < total;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    if (k < TB && offsets[k] > offsets[k + 1]) atomicOr(err, kErrOffsets);
    if (k == 0 && (offsets[0] != 0 || offsets[TB] != N)) atomicOr(err, kErrOffsets);
    if (k < T && tabs[k] > tabs[k + 1]) atomicOr(err, kErrTables);
    if (k == 0 && (tabs[0] < 0 || tabs[T] > E)) atomicOr(err, kErrTables);
    if (k >= N) continue;
    if (TB == 0) {  // occurrences without bags: offsets[0] != N was flagged above
      keys.set(k, 0);
      pos[k] = static_cast<int32_t>(k);
      bag_of[k] = 0;
      continue;
    }
    // bag = the last k with offsets[k] <= p (first j in [1, TB] with offsets[j] > p, minus one)
    int64_t lo = 1, hi = TB;
    while (lo < hi) {
      const int64_t mid = (lo + hi) >> 1;
      if (offsets[mid] > k) hi = mid;
      else lo = mid + 1;
    }
    const int64_t bag = std::min(std::max<int64_t>(lo - 1, 0), TB - 1);
    const int64_t t = bag / B;
    const int64_t idx = static_cast<int64_t>(indices[k]);
    int64_t r = tabs[t] + idx;
    if (idx < 0 || idx >= tabs[t + 1] - tabs[t] || r < 0 || r >= E) {
      atomicOr(err, kErrIndex);
      r = 0;
    }
    keys.set(k, r);
    pos[k] = static_cast<int32_t>(k);
    bag_of[k] = static_cast<int32_t>(bag);
  }
}

// ---------------------------------------------------------------------------------------------- row pieces

// One warp per chunk of 32 sorted occurrences. Lane k reads occurrence first + k's row and gradient address with
// one coalesced load; the warp then walks the chunk U occurrences at a time: their U gradient rows (and, for each
// run that ends among them and started in this chunk, its weight row and accumulator) are loaded together, so
// many rows are in flight, then added strictly in position order. At a run's last occurrence in the chunk the
// warp either updates the row (the run started in this chunk) or writes its sum to a partial slot: slot 0 for a
// run that began in an earlier chunk, slot 1 for one that begins here and goes on past the chunk.
template <typename K, typename W, typename G, int VEC, int NV>
__global__ void __launch_bounds__(kWarps * 32)
    chunk_kernel(const K* __restrict__ rows, const int32_t* __restrict__ pos, int64_t N, int64_t D, GradView gv,
                 W* __restrict__ weight, float* __restrict__ momentum, float* __restrict__ partial, DeviceHyper h,
                 const int* __restrict__ err) {
  if (*err != 0) return;  // bad input: nothing is written
  const int lane = threadIdx.x & 31;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  const int64_t first = c * kChunk;
  if (first >= N) return;
  const int count = static_cast<int>(std::min<int64_t>(kChunk, N - first));
  const int64_t j = first + lane;
  const bool valid = lane < count;
  const int64_t r = valid ? static_cast<int64_t>(rows[j]) : -1;
  const int64_t before = first > 0 ? static_cast<int64_t>(rows[first - 1]) : -1;
  const int64_t after = first + kChunk < N ? static_cast<int64_t>(rows[first + kChunk]) : -1;
  int64_t prev = __shfl_up_sync(kFull, r, 1);
  int64_t next = __shfl_down_sync(kFull, r, 1);
  if (lane == 0) prev = before;
  if (lane == 31) next = after;
  const unsigned starts = __ballot_sync(kFull, valid && r != prev);
  // A piece ends where the run ends or the chunk does.
  const unsigned ends = __ballot_sync(kFull, valid && (r != next || lane == count - 1));
  const unsigned run_ends = __ballot_sync(kFull, valid && r != next);
  // The run ending at lane k started in this chunk iff some lane <= k starts a run.
  const unsigned lanes_upto = lane == 31 ? kFull : (2u << lane) - 1u;
  const unsigned started_here = __ballot_sync(kFull, valid && (starts & lanes_upto) != 0);
  const unsigned updates = run_ends & started_here;

  int64_t my_off = 0;
  float my_scale = 1.f;
  if (valid) {
    const int64_t p = pos[j];
    if (gv.bag_of == nullptr) {
      my_off = p * gv.ld;
    } else {
      const int64_t bag = gv.bag_of[p];
      const int64_t t = bag / gv.B;
      my_off = (bag - t * gv.B) * gv.ld + t * D;
      if (gv.psw != nullptr) my_scale = gv.psw[p];
      if (gv.mean) my_scale = 1.f / static_cast<float>(gv.offsets[bag + 1] - gv.offsets[bag]);
    }
  }
  const G* grad = static_cast<const G*>(gv.grad);
  float acc[NV][VEC];
#pragma unroll
  for (int v = 0; v < NV; ++v)
#pragma unroll
    for (int e = 0; e < VEC; ++e) acc[v][e] = 0.f;
  constexpr int U = NV >= 4 ? 1 : 4 / NV;  // occurrences in flight per step
  for (int k0 = 0; k0 < count; k0 += U) {
    float x[U][NV][VEC];
    float w[U][NV][VEC];
    float m[U];
    float s[U];
    int64_t rr[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int k = k0 + u;
      const int64_t off = __shfl_sync(kFull, my_off, k & 31);
      s[u] = __shfl_sync(kFull, my_scale, k & 31);
      rr[u] = __shfl_sync(kFull, r, k & 31);
#pragma unroll
      for (int v = 0; v < NV; ++v) {
        const int64_t d = col<VEC>(v, lane);
        if (k < count && d < D) {
          load_vec<G, VEC>(grad + off + d, x[u][v]);
        } else {
#pragma unroll
          for (int e = 0; e < VEC; ++e) x[u][v][e] = 0.f;
        }
      }
      m[u] = 0.f;
      if (k < count && ((updates >> k) & 1u)) {
        load_row<W, VEC, NV>(weight, rr[u], D, lane, w[u]);
        m[u] = momentum[rr[u]];
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int k = k0 + u;
      if (k >= count) break;
#pragma unroll
      for (int v = 0; v < NV; ++v)
#pragma unroll
        for (int e = 0; e < VEC; ++e) acc[v][e] += s[u] * x[u][v][e];
      if (!((ends >> k) & 1u)) continue;
      if ((updates >> k) & 1u) {
        update_row<W, VEC, NV>(weight, momentum, rr[u], acc, w[u], m[u], D, lane, h);
      } else {
        const int slot = ((started_here >> k) & 1u) ? 1 : 0;
        float* dst = partial + (c * 2 + slot) * D;
#pragma unroll
        for (int v = 0; v < NV; ++v) {
          const int64_t d = col<VEC>(v, lane);
          if (d < D) {
            Pack<float, VEC> pk;
#pragma unroll
            for (int e = 0; e < VEC; ++e) pk.v[e] = acc[v][e];
            *reinterpret_cast<Pack<float, VEC>*>(dst + d) = pk;
          }
        }
      }
#pragma unroll
      for (int v = 0; v < NV; ++v)
#pragma unroll
        for (int e = 0; e < VEC; ++e) acc[v][e] = 0.f;
    }
  }
}

template <typename K, typename W, int VEC, int NV>
__global__ void __launch_bounds__(kWarps * 32)
    finish_kernel(const K* __restrict__ rows, int64_t N, int64_t num_chunks, int64_t D, W* __restrict__ weight,
                  float* __restrict__ momentum, const float* __restrict__ partial, DeviceHyper h,
                  const int* __restrict__ err) {
  if (*err != 0) return;  // bad input: nothing is written
  const int lane = threadIdx.x & 31;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  if (c >= num_chunks) return;
  const int64_t first = c * kChunk;
  const int64_t last = std::min(first + kChunk, N) - 1;
  const K r = rows[last];
  // Finish the run at the end of chunk c if it goes on past it and started inside it.
  if (last + 1 >= N || rows[last + 1] != r) return;
  if (first > 0 && rows[first - 1] == r) return;
  float g[NV][VEC];
#pragma unroll
  for (int v = 0; v < NV; ++v) {
    const int64_t d = col<VEC>(v, lane);
    if (d < D) {
      load_vec<float, VEC>(partial + (c * 2 + 1) * D + d, g[v]);
    } else {
#pragma unroll
      for (int e = 0; e < VEC; ++e) g[v][e] = 0.f;
    }
  }
  for (int64_t nc = c + 1;; ++nc) {
#pragma unroll
    for (int v = 0; v < NV; ++v) {
      const int64_t d = col<VEC>(v, lane);
      if (d < D) {
        float x[VEC];
        load_vec<float, VEC>(partial + nc * 2 * D + d, x);
#pragma unroll
        for (int e = 0; e < VEC; ++e) g[v][e] += x[e];
      }
    }
    const int64_t next = (nc + 1) * kChunk;
    if (next >= N || rows[next] != r) break;
  }
  float w[NV][VEC];
  load_row<W, VEC, NV>(weight, r, D, lane, w);
  update_row<W, VEC, NV>(weight, momentum, r, g, w, momentum[r], D, lane, h);
}

// ------------------------------------------------------------------------------------------------- host

int bits_for(uint64_t max_value) {
  int b = 0;
  while (b < 64 && (max_value >> b) != 0) ++b;
  return b;
}

DeviceHyper device_hyper(const RowwiseAdagradHyper& h) {
  return {static_cast<float>(h.lr), static_cast<float>(h.eps), static_cast<float>(h.weight_decay), h.mode,
          h.stochastic, h.sr_key};
}

bool aligned(const void* p, int64_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

template <typename K, typename W, typename G, int VEC, int NV>
void launch_pieces(const at::Tensor& rows, const at::Tensor& pos, int64_t N, int64_t D, const GradView& gv,
                   at::Tensor& weight, at::Tensor& momentum, at::Tensor& partial, const DeviceHyper& h,
                   const int* err) {
  auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t num_chunks = (N + kChunk - 1) / kChunk;
  const auto blocks = static_cast<unsigned>((num_chunks + kWarps - 1) / kWarps);
  chunk_kernel<K, W, G, VEC, NV><<<blocks, kWarps * 32, 0, stream>>>(
      rows.const_data_ptr<K>(), pos.const_data_ptr<int32_t>(), N, D, gv, weight.mutable_data_ptr<W>(),
      momentum.mutable_data_ptr<float>(), partial.mutable_data_ptr<float>(), h, err);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  finish_kernel<K, W, VEC, NV><<<blocks, kWarps * 32, 0, stream>>>(
      rows.const_data_ptr<K>(), N, num_chunks, D, weight.mutable_data_ptr<W>(), momentum.mutable_data_ptr<float>(),
      partial.const_data_ptr<float>(), h, err);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename K, typename W, typename G>
void launch_typed(const at::Tensor& rows, const at::Tensor& pos, int64_t N, int64_t D, const GradView& gv,
                  at::Tensor& weight, at::Tensor& momentum, at::Tensor& partial, const DeviceHyper& h,
                  const int* err) {
  const bool vec4 = D % 4 == 0 && gv.ld % 4 == 0 && aligned(weight.const_data_ptr(), 4 * sizeof(W)) &&
                    aligned(gv.grad, 4 * sizeof(G));
  if (vec4) {
    if (D <= 128) launch_pieces<K, W, G, 4, 1>(rows, pos, N, D, gv, weight, momentum, partial, h, err);
    else if (D <= 256) launch_pieces<K, W, G, 4, 2>(rows, pos, N, D, gv, weight, momentum, partial, h, err);
    else if (D <= 512) launch_pieces<K, W, G, 4, 4>(rows, pos, N, D, gv, weight, momentum, partial, h, err);
    else launch_pieces<K, W, G, 4, 8>(rows, pos, N, D, gv, weight, momentum, partial, h, err);
  } else {
    if (D <= 32) launch_pieces<K, W, G, 1, 1>(rows, pos, N, D, gv, weight, momentum, partial, h, err);
    else if (D <= 128) launch_pieces<K, W, G, 1, 4>(rows, pos, N, D, gv, weight, momentum, partial, h, err);
    else launch_pieces<K, W, G, 1, 32>(rows, pos, N, D, gv, weight, momentum, partial, h, err);
  }
}

// The prepare kernel's error word, on its way to the host: copied to pinned memory right after the prepare
// kernel, with an event behind the copy. wait() blocks until that copy is done (not the sort or the update
// queued after it) and returns the word.
class ErrorWord {
 public:
  explicit ErrorWord(const at::Tensor& err)
      : host_(at::empty({1}, at::TensorOptions().dtype(at::kInt).pinned_memory(true))) {
    host_.copy_(err, /*non_blocking=*/true);
    C10_CUDA_CHECK(cudaEventCreateWithFlags(&copied_, cudaEventDisableTiming));
    C10_CUDA_CHECK(cudaEventRecord(copied_, c10::cuda::getCurrentCUDAStream()));
  }
  ErrorWord(const ErrorWord&) = delete;
  ErrorWord& operator=(const ErrorWord&) = delete;
  ~ErrorWord() { cudaEventDestroy(copied_); }
  int wait() {
    C10_CUDA_CHECK(cudaEventSynchronize(copied_));
    return *host_.const_data_ptr<int>();
  }

 private:
  at::Tensor host_;
  cudaEvent_t copied_ = nullptr;
};

// The keys, positions and error word the prepare kernels fill, keys 32-bit whenever rows fit.
struct Prepared {
  at::Tensor keys, pos, err;
  Prepared(int64_t N, int64_t E, const at::TensorOptions& opts)
      : keys(at::empty({N}, opts.dtype(E <= std::numeric_limits<int32_t>::max() ? at::kInt : at::kLong))),
        pos(at::empty({N}, opts.dtype(at::kInt))),
        err(at::zeros({1}, opts.dtype(at::kInt))) {}
  RowKeys row_keys() { return {keys.mutable_data_ptr(), keys.scalar_type() == at::kLong}; }
};

// Sorts the (row, position) pairs by row (stable; only the bits a row needs) and queues the update kernels,
// which sum each row's occurrences and update the row unless the error word is set; then waits for the word
// (raise(e) throws when it is set).
template <typename K, typename Raise>
void sort_and_update_as(at::Tensor& weight, at::Tensor& momentum, Prepared& prep, const GradView& gv,
                        at::ScalarType grad_dtype, const RowwiseAdagradHyper& hyper, Raise&& raise) {
  const int64_t N = prep.keys.numel(), E = weight.size(0), D = weight.size(1);
  ErrorWord error(prep.err);
  auto rows_sorted = at::empty_like(prep.keys);
  auto pos_sorted = at::empty_like(prep.pos);
  if (N > 0) {
    const int end_bit = std::max(1, bits_for(static_cast<uint64_t>(std::max<int64_t>(E - 1, 0))));
    at::cuda::cub::radix_sort_pairs<K, int32_t>(prep.keys.const_data_ptr<K>(), rows_sorted.mutable_data_ptr<K>(),
                                                prep.pos.const_data_ptr<int32_t>(),
                                                pos_sorted.mutable_data_ptr<int32_t>(), N, false, 0, end_bit);
    const DeviceHyper h = device_hyper(hyper);
    const int* err = prep.err.const_data_ptr<int>();
    auto partial = at::empty({(N + kChunk - 1) / kChunk * 2, D}, weight.options().dtype(at::kFloat));
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight.scalar_type(), "rowwise_adagrad_cuda", [&] {
      if constexpr (std::is_same_v<scalar_t, double>) {
        TORCH_CHECK(false, "weight: the CUDA rowwise_adagrad kernel takes float32, float16 or bfloat16, got float64");
      } else {
        if (grad_dtype == weight.scalar_type())
          launch_typed<K, scalar_t, scalar_t>(rows_sorted, pos_sorted, N, D, gv, weight, momentum, partial, h, err);
        else
          launch_typed<K, scalar_t, float>(rows_sorted, pos_sorted, N, D, gv, weight, momentum, partial, h, err);
      }
    });
  }
  if (const int e = error.wait(); e != 0) raise(e);
}

template <typename Raise>
void sort_and_update(at::Tensor& weight, at::Tensor& momentum, Prepared& prep, const GradView& gv,
                     at::ScalarType grad_dtype, const RowwiseAdagradHyper& hyper, Raise&& raise) {
  if (prep.keys.scalar_type() == at::kInt)
    sort_and_update_as<int32_t>(weight, momentum, prep, gv, grad_dtype, hyper, raise);
  else
    sort_and_update_as<int64_t>(weight, momentum, prep, gv, grad_dtype, hyper, raise);
}

void check_cuda_inputs(const at::Tensor& weight, const at::Tensor& momentum, int64_t N) {
  TORCH_CHECK(weight.is_cuda(), "weight must be a CUDA tensor for the CUDA kernel, got ", fmt(weight.device()));
  TORCH_CHECK(weight.scalar_type() != at::kDouble,
              "weight: the CUDA rowwise_adagrad kernel takes float32, float16 or bfloat16, got float64");
  TORCH_CHECK(momentum.scalar_type() == at::kFloat, "momentum must be float32, got ", fmt(momentum.scalar_type()));
  TORCH_CHECK(weight.size(1) <= kMaxD, "weight: the CUDA rowwise_adagrad kernel takes D <= ", fmt(kMaxD), ", got D = ",
              fmt(weight.size(1)));
  TORCH_CHECK(N < (int64_t(1) << 31), "indices: the CUDA rowwise_adagrad kernel takes N < 2^31 occurrences, got ", fmt(N));
}

int blocks_for(int64_t n) {
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>((n + 255) / 256, 65535)));
}

// The error messages, found again on the host (the error path only).
[[noreturn]] void raise_update_error(const at::Tensor& indices, int64_t E) {
  const at::Tensor cpu = indices.to(at::kCPU).to(at::kLong).contiguous();
  const int64_t* p = cpu.const_data_ptr<int64_t>();
  for (int64_t k = 0; k < cpu.numel(); ++k) {
    if (p[k] < 0 || p[k] >= E) {
      TORCH_CHECK(false, "indices[", fmt(k), "] = ", fmt(p[k]), " is out of range for weight with E = ", fmt(E), " rows");
    }
  }
  TORCH_CHECK(false, "indices: out of range for weight with E = ", fmt(E), " rows");
  std::abort();  // unreachable: TORCH_CHECK(false) throws
}

void rowwise_adagrad_update_cuda(at::Tensor& weight, at::Tensor& momentum, const at::Tensor& indices,
                                 const at::Tensor& grad_rows, double lr, double eps, double weight_decay,
                                 c10::string_view weight_decay_mode, int64_t stochastic_rounding_seed) {
  const auto shape = check_rowwise_update_inputs(weight, momentum, indices, grad_rows);
  const auto hyper = check_rowwise_adagrad_hyper(lr, eps, weight_decay, weight_decay_mode, stochastic_rounding_seed);
  check_cuda_inputs(weight, momentum, shape.N);
  c10::cuda::CUDAGuard guard(weight.device());
  const int64_t N = shape.N, E = shape.E;
  const auto g = grad_rows.stride(1) == 1 ? grad_rows : grad_rows.contiguous();
  const GradView gv{g.const_data_ptr(), g.stride(0), nullptr, nullptr, nullptr, 1, false};
  Prepared prep(N, E, indices.options());
  if (N > 0) {
    AT_DISPATCH_INDEX_TYPES(indices.scalar_type(), "rowwise_adagrad_prepare", [&] {
      const auto idx = indices.contiguous();
      prepare_update_kernel<index_t><<<blocks_for(N), 256, 0, c10::cuda::getCurrentCUDAStream()>>>(
          idx.const_data_ptr<index_t>(), N, E, prep.row_keys(), prep.pos.mutable_data_ptr<int32_t>(),
          prep.err.mutable_data_ptr<int>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  sort_and_update(weight, momentum, prep, gv, g.scalar_type(), hyper, [&](int) { raise_update_error(indices, E); });
}

// The fused backward's error message, found again on the host (the error path only).
[[noreturn]] void raise_fused_error(int e, const at::Tensor& indices, const at::Tensor& offsets,
                                    const at::Tensor& tabs, int64_t N, int64_t T, int64_t B, int64_t E) {
  const auto off_c = offsets.to(at::kCPU, at::kLong);
  const auto tab_c = tabs.to(at::kCPU, at::kLong);
  const int64_t* off = off_c.const_data_ptr<int64_t>();
  const int64_t* tab = tab_c.const_data_ptr<int64_t>();
  if (e & kErrTables) {
    TORCH_CHECK(tab[0] >= 0 && tab[T] <= E, "table_offsets must lie in [0, E = ", fmt(E), "], got first ", fmt(tab[0]),
                " and last ", fmt(tab[T]));
    for (int64_t t = 0; t < T; ++t)
      TORCH_CHECK(tab[t] <= tab[t + 1], "table_offsets must be non-decreasing, got ", fmt(tab[t]), " then ", fmt(tab[t + 1]),
                  " at table ", fmt(t));
  }
  if (e & kErrOffsets) {
    TORCH_CHECK(off[0] == 0 && off[T * B] == N, "offsets must start at 0 and end at N = ", fmt(N), ", got ", fmt(off[0]),
                " and ", fmt(off[T * B]));
    for (int64_t k = 0; k < T * B; ++k)
      TORCH_CHECK(off[k] <= off[k + 1], "offsets must be non-decreasing, got ", fmt(off[k]), " then ", fmt(off[k + 1]),
                  " at bag ", fmt(k));
  }
  const auto idx_c = indices.to(at::kCPU, at::kLong);
  const int64_t* idx = idx_c.const_data_ptr<int64_t>();
  for (int64_t k = 0; k < T * B; ++k) {
    const int64_t t = k / B, n = tab[t + 1] - tab[t];
    for (int64_t p = off[k]; p < off[k + 1]; ++p)
      TORCH_CHECK(idx[p] >= 0 && idx[p] < n, "indices[", fmt(p), "] = ", fmt(idx[p]), " is out of range for table ", fmt(t),
                  " with ", fmt(n), " rows");
  }
  TORCH_CHECK(false, "embedding_bag_backward_rowwise_adagrad_: invalid indices, offsets or table_offsets");
  std::abort();  // unreachable: TORCH_CHECK(false) throws
}

void embedding_bag_backward_rowwise_adagrad_cuda(
    at::Tensor& weight, at::Tensor& momentum, const at::Tensor& indices, const at::Tensor& offsets,
    const at::Tensor& grad_output, const std::optional<at::Tensor>& table_offsets, c10::string_view pooling,
    const std::optional<at::Tensor>& per_sample_weights, double lr, double eps, double weight_decay,
    c10::string_view weight_decay_mode, int64_t stochastic_rounding_seed) {
  const auto shape = check_rowwise_fused_inputs(weight, momentum, indices, offsets, grad_output, table_offsets,
                                                pooling, per_sample_weights);
  const auto hyper = check_rowwise_adagrad_hyper(lr, eps, weight_decay, weight_decay_mode, stochastic_rounding_seed);
  check_cuda_inputs(weight, momentum, shape.N);
  TORCH_CHECK(shape.T * shape.B < (int64_t(1) << 31), "offsets: the CUDA kernel takes T*B < 2^31 bags, got ",
              fmt(shape.T * shape.B));
  c10::cuda::CUDAGuard guard(weight.device());
  const int64_t N = shape.N, T = shape.T, B = shape.B, E = shape.E;
  const auto opts = indices.options();
  const auto off = offsets.to(at::kLong).contiguous();
  at::Tensor tabs;
  if (table_offsets.has_value()) {
    tabs = table_offsets->to(at::kLong).contiguous();
  } else {
    tabs = at::empty({2}, at::TensorOptions().dtype(at::kLong));
    tabs.mutable_data_ptr<int64_t>()[0] = 0;
    tabs.mutable_data_ptr<int64_t>()[1] = E;
    tabs = tabs.to(weight.device());
  }
  const auto g = grad_output.stride(1) == 1 ? grad_output : grad_output.contiguous();
  at::Tensor psw;
  if (per_sample_weights.has_value()) psw = per_sample_weights->to(at::kFloat).contiguous();
  auto bag_of = at::empty({N}, opts.dtype(at::kInt));
  const GradView gv{g.const_data_ptr(), g.stride(0), bag_of.const_data_ptr<int32_t>(),
                    psw.defined() ? psw.const_data_ptr<float>() : nullptr, off.const_data_ptr<int64_t>(), B,
                    shape.mean};
  Prepared prep(N, E, opts);
  AT_DISPATCH_INDEX_TYPES(indices.scalar_type(), "rowwise_adagrad_prepare_fused", [&] {
    const auto idx = indices.contiguous();
    prepare_fused_kernel<index_t><<<blocks_for(std::max(N, T * B + 1)), 256, 0, c10::cuda::getCurrentCUDAStream()>>>(
        idx.const_data_ptr<index_t>(), off.const_data_ptr<int64_t>(), tabs.const_data_ptr<int64_t>(), N, T, B, E,
        prep.row_keys(), prep.pos.mutable_data_ptr<int32_t>(), bag_of.mutable_data_ptr<int32_t>(),
        prep.err.mutable_data_ptr<int>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  sort_and_update(weight, momentum, prep, gv, g.scalar_type(), hyper,
                  [&](int e) { raise_fused_error(e, indices, offsets, tabs, N, T, B, E); });
}

}  // namespace
}  // namespace rowwise_cuda

TORCH_LIBRARY_IMPL(recsys, CUDA, m) {
  m.impl("rowwise_adagrad_update_", &rowwise_cuda::rowwise_adagrad_update_cuda);
  m.impl("embedding_bag_backward_rowwise_adagrad_", &rowwise_cuda::embedding_bag_backward_rowwise_adagrad_cuda);
}

}  // namespace recsys
