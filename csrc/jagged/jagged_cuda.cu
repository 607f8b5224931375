// Jagged <-> padded-dense helpers, CUDA kernels (semantics in recsys_kernels/reference/jagged.py).
//
// The copies are memory-bound row moves: one block per tile of kRows positions of one sequence, its threads
// walking the tile's kRows * D contiguous elements, so loads and stores coalesce whatever D is. Offsets are
// validated on the host first (a copy to the CPU and a sync, as the Triton path does in eager mode), so every
// copy stays inside its tensor. lengths_to_offsets is one block scanning the lengths kScanThreads at a time
// with a running carry (B is a batch size: the pass is launch-bound), and flags the first negative length.
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cub/block/block_scan.cuh>

#include "jagged/jagged.h"

namespace recsys {
namespace {

constexpr int kRows = 8;           // positions per tile
constexpr int kThreads = 256;      // threads per copy block
constexpr int kScanThreads = 256;  // 1024 int64 scan threads exceed the register file (launch fails)
constexpr int64_t kMaxBlocks = int64_t(1) << 20;  // grid-stride beyond this

void check_cuda(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor for the CUDA kernel, got ", t.device());
}

template <typename index_t>
__global__ void __launch_bounds__(kScanThreads)
    lengths_to_offsets_kernel(const index_t* __restrict__ lengths, index_t* __restrict__ out, int64_t B,
                              unsigned long long* first_negative) {
  using Scan = cub::BlockScan<index_t, kScanThreads>;
  __shared__ typename Scan::TempStorage temp;
  __shared__ index_t carry;
  if (threadIdx.x == 0) {
    carry = 0;
    out[0] = 0;
  }
  __syncthreads();
  for (int64_t base = 0; base < B; base += kScanThreads) {
    const int64_t b = base + threadIdx.x;
    const index_t x = b < B ? lengths[b] : index_t(0);
    if (x < 0) atomicMin(first_negative, static_cast<unsigned long long>(b));
    index_t inclusive, total;
    Scan(temp).InclusiveSum(x, inclusive, total);
    if (b < B) out[b + 1] = carry + inclusive;
    __syncthreads();  // every thread has read carry, and temp may be reused
    if (threadIdx.x == 0) carry += total;
    __syncthreads();
  }
}

template <typename scalar_t, typename offset_t>
__global__ void jagged_to_padded_kernel(const scalar_t* __restrict__ values, const offset_t* __restrict__ offsets,
                                        scalar_t* __restrict__ out, scalar_t pad, int64_t B, int64_t max_len,
                                        int64_t D, int64_t tiles_per_seq) {
  for (int64_t tile = blockIdx.x; tile < B * tiles_per_seq; tile += gridDim.x) {
    const int64_t b = tile / tiles_per_seq, t0 = (tile % tiles_per_seq) * kRows;
    const int64_t start = offsets[b];
    const int64_t n = min(static_cast<int64_t>(offsets[b + 1]) - start, max_len);  // positions with a row
    const int64_t count = min(static_cast<int64_t>(kRows), max_len - t0) * D;
    const scalar_t* src = values + (start + t0) * D;
    scalar_t* dst = out + (b * max_len + t0) * D;
    for (int64_t e = threadIdx.x; e < count; e += blockDim.x) dst[e] = t0 + e / D < n ? src[e] : pad;
  }
}

template <typename scalar_t, typename offset_t>
__global__ void padded_to_jagged_kernel(const scalar_t* __restrict__ dense, const offset_t* __restrict__ offsets,
                                        scalar_t* __restrict__ out, int64_t B, int64_t N, int64_t D,
                                        int64_t tiles_per_seq) {
  for (int64_t tile = blockIdx.x; tile < B * tiles_per_seq; tile += gridDim.x) {
    const int64_t b = tile / tiles_per_seq, t0 = (tile % tiles_per_seq) * kRows;
    const int64_t start = offsets[b];
    const int64_t n = min(static_cast<int64_t>(offsets[b + 1]) - start, N);
    if (t0 >= n) continue;  // rows past N stay zero (the output is zero-filled)
    const int64_t count = min(static_cast<int64_t>(kRows), n - t0) * D;
    const scalar_t* src = dense + (b * N + t0) * D;
    scalar_t* dst = out + (start + t0) * D;
    for (int64_t e = threadIdx.x; e < count; e += blockDim.x) dst[e] = src[e];
  }
}

int blocks_for(int64_t tiles) { return static_cast<int>(std::min(tiles, kMaxBlocks)); }

at::Tensor lengths_to_offsets_cuda(const at::Tensor& lengths) {
  check_dim(lengths, 1, "lengths", "(B,)");
  check_cuda(lengths, "lengths");
  TORCH_CHECK(lengths.scalar_type() == at::kInt || lengths.scalar_type() == at::kLong,
              "lengths must be int32 or int64, got ", lengths.scalar_type());
  const c10::cuda::CUDAGuard guard(lengths.device());
  const auto l = lengths.contiguous();
  const int64_t B = l.size(0);
  auto out = at::empty({B + 1}, l.options());
  auto first_negative = at::full({1}, B, l.options().dtype(at::kLong));
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_INDEX_TYPES(l.scalar_type(), "lengths_to_offsets_cuda", [&] {
    lengths_to_offsets_kernel<index_t><<<1, kScanThreads, 0, stream>>>(
        l.const_data_ptr<index_t>(), out.mutable_data_ptr<index_t>(), B,
        reinterpret_cast<unsigned long long*>(first_negative.mutable_data_ptr<int64_t>()));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  const int64_t bad = first_negative.item<int64_t>();  // the one sync: the error must name the length
  if (bad < B) {
    const int64_t value = l[bad].item<int64_t>();
    TORCH_CHECK(false, "lengths must be non-negative, got lengths[", fmt(bad), "] = ", fmt(value));
  }
  return out;
}

at::Tensor jagged_to_padded_dense_cuda(const at::Tensor& values, const at::Tensor& offsets, int64_t max_len,
                                       double padding_value) {
  check_cuda(values, "values");
  const auto o = check_jagged_to_padded(values, offsets, max_len);
  const c10::cuda::CUDAGuard guard(values.device());
  const int64_t B = static_cast<int64_t>(o.size()) - 1, D = values.size(1);
  auto out = at::empty({B, max_len, D}, values.options());
  if (out.numel() == 0) return out;
  const auto v = values.contiguous();
  const auto off = index_on(offsets, values.device());
  const int64_t tiles = (max_len + kRows - 1) / kRows;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_ALL_TYPES_AND2(at::kHalf, at::kBFloat16, v.scalar_type(), "jagged_to_padded_dense_cuda", [&] {
    AT_DISPATCH_INDEX_TYPES(off.scalar_type(), "jagged_to_padded_dense_cuda_offsets", [&] {
      jagged_to_padded_kernel<scalar_t, index_t><<<blocks_for(B * tiles), kThreads, 0, stream>>>(
          v.const_data_ptr<scalar_t>(), off.const_data_ptr<index_t>(), out.mutable_data_ptr<scalar_t>(),
          static_cast<scalar_t>(padding_value), B, max_len, D, tiles);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return out;
}

at::Tensor padded_dense_to_jagged_cuda(const at::Tensor& dense, const at::Tensor& offsets, int64_t total_len) {
  check_cuda(dense, "dense");
  const auto o = check_padded_to_jagged(dense, offsets, total_len);
  const int64_t B = dense.size(0), N = dense.size(1), D = dense.size(2);
  const c10::cuda::CUDAGuard guard(dense.device());
  auto out = at::zeros({total_len, D}, dense.options());
  const int64_t tiles = (N + kRows - 1) / kRows;
  if (out.numel() == 0 || B * tiles == 0) return out;
  const auto d = dense.contiguous();
  const auto off = index_on(offsets, dense.device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_ALL_TYPES_AND2(at::kHalf, at::kBFloat16, d.scalar_type(), "padded_dense_to_jagged_cuda", [&] {
    AT_DISPATCH_INDEX_TYPES(off.scalar_type(), "padded_dense_to_jagged_cuda_offsets", [&] {
      padded_to_jagged_kernel<scalar_t, index_t><<<blocks_for(B * tiles), kThreads, 0, stream>>>(
          d.const_data_ptr<scalar_t>(), off.const_data_ptr<index_t>(), out.mutable_data_ptr<scalar_t>(), B, N, D,
          tiles);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(recsys, CUDA, m) {
  m.impl("lengths_to_offsets", &lengths_to_offsets_cuda);
  m.impl("jagged_to_padded_dense", &jagged_to_padded_dense_cuda);
  m.impl("padded_dense_to_jagged", &padded_dense_to_jagged_cuda);
}

}  // namespace recsys
