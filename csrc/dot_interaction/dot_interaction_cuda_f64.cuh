// DLRM dot interaction in float64 on CUDA: one thread per output element, plain loops. float64 is for
// gradcheck and accuracy checks, not speed, so these kernels trade every optimisation of the fp16/bf16/fp32
// kernels for obviousness. Same pair order and padding as dot_interaction.h.
#pragma once
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>

#include "dot_interaction/dot_interaction.h"

namespace recsys {
namespace dot_cuda_f64 {

__device__ __forceinline__ const double* row_of_T(const double* dense, const double* sparse, int64_t b, int64_t i,
                                                  int64_t F, int64_t D) {
  return i == 0 ? dense + b * D : sparse + (b * F + (i - 1)) * D;
}

// One thread per (b, column): the dense copy, one pair's dot product, or a padding zero.
__global__ void forward_kernel(const double* __restrict__ dense, const double* __restrict__ sparse,
                               double* __restrict__ out, const DotInteractionShape s,
                               const int64_t* __restrict__ pair_rows) {
  const int64_t total = s.B * s.out_cols;
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; k < total;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = k / s.out_cols, col = k % s.out_cols;
    double v = 0.0;
    if (col < s.D) {
      v = dense[b * s.D + col];
    } else if (col < s.D + s.pairs) {
      const int64_t rc = pair_rows[col - s.D];  // r * n + c of this pair
      const double* x = row_of_T(dense, sparse, b, rc / s.n, s.F, s.D);
      const double* y = row_of_T(dense, sparse, b, rc % s.n, s.F, s.D);
      for (int64_t d = 0; d < s.D; ++d) v += x[d] * y[d];
    }
    out[k] = v;
  }
}

// One thread per (b, i, d): grad_T[i, d] = sum_j G[i, j] T[j, d] with G the symmetric pair gradients (2 g on
// the diagonal with self interaction); row 0 also takes grad_output[:, :D].
__global__ void backward_kernel(const double* __restrict__ go, int64_t go_stride, const double* __restrict__ dense,
                                const double* __restrict__ sparse, double* __restrict__ gd, double* __restrict__ gs,
                                const DotInteractionShape s) {
  const int64_t total = s.B * s.n * s.D;
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; k < total;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = k / (s.n * s.D), i = (k / s.D) % s.n, d = k % s.D;
    const double* g = go + b * go_stride;
    double acc = i == 0 ? g[d] : 0.0;
    for (int64_t j = 0; j < s.n; ++j) {
      if (j == i && !s.self_interaction) continue;
      const int64_t r = i > j ? i : j, c = i > j ? j : i;
      const double gij = g[s.D + dot_interaction_pair_index(r, c, s.n, s.self_interaction, s.upper)];
      acc += (j == i ? 2.0 * gij : gij) * row_of_T(dense, sparse, b, j, s.F, s.D)[d];
    }
    if (i == 0) gd[b * s.D + d] = acc;
    else gs[(b * s.F + (i - 1)) * s.D + d] = acc;
  }
}

inline int blocks_for(int64_t n) {
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>((n + 255) / 256, 65535)));
}

// (r, c) of every pair in output order, as r * n + c, on the device of `like`.
inline at::Tensor pair_rows(const DotInteractionShape& s, const at::Tensor& like) {
  auto host = at::empty({std::max<int64_t>(s.pairs, 1)}, at::TensorOptions().dtype(at::kLong));
  int64_t* p = host.mutable_data_ptr<int64_t>();
  for (int64_t r = 0; r < s.n; ++r)
    for (int64_t c = 0; c < (s.self_interaction ? r + 1 : r); ++c)
      p[dot_interaction_pair_index(r, c, s.n, s.self_interaction, s.upper)] = r * s.n + c;
  return host.to(like.device());
}

inline void forward(const at::Tensor& dense, const at::Tensor& sparse, at::Tensor& out, const DotInteractionShape& s) {
  const auto rows = pair_rows(s, dense);
  forward_kernel<<<blocks_for(s.B * s.out_cols), 256, 0, c10::cuda::getCurrentCUDAStream()>>>(
      dense.const_data_ptr<double>(), sparse.const_data_ptr<double>(), out.mutable_data_ptr<double>(), s,
      rows.const_data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

inline void backward(const at::Tensor& go, const at::Tensor& dense, const at::Tensor& sparse, at::Tensor& gd,
                     at::Tensor& gs, const DotInteractionShape& s) {
  backward_kernel<<<blocks_for(s.B * s.n * s.D), 256, 0, c10::cuda::getCurrentCUDAStream()>>>(
      go.const_data_ptr<double>(), go.stride(0), dense.const_data_ptr<double>(), sparse.const_data_ptr<double>(),
      gd.mutable_data_ptr<double>(), gs.mutable_data_ptr<double>(), s);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace dot_cuda_f64
}  // namespace recsys
