// DLRM dot interaction, CPU kernel: parallel over the batch.
//
// Per sample, T = [dense; sparse] (n x D) is converted once to a float32 (float64 for double) scratch
// block that stays in L1/L2, then only the lower triangle of T Tᵀ is computed, in 4x4 register blocks
// (about half the FLOPs of a full bmm), and scattered into the output row in the requested layout.
// The backward builds the symmetric pair-gradient matrix G and forms grad_T = G T.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <vector>

#include "dot_interaction/dot_interaction.h"

namespace recsys {
namespace {

// The hot loops are plain C++ that GCC/Clang vectorise; target_clones builds them for AVX-512, AVX2+FMA
// and baseline x86-64 and picks one at load time, since the extension itself is built for baseline x86-64.
#if defined(__x86_64__) && defined(__GNUC__)
#define RECSYS_CPU_CLONES __attribute__((target_clones("arch=skylake-avx512", "arch=haswell", "default")))
#else
#define RECSYS_CPU_CLONES
#endif

// s[r * n + c] = t_r . t_c for c <= r, t (n, D) row-major. 4x4 register blocks: 8 row loads feed 16
// accumulators per step of d, and the horizontal sums are paid once per 16 dot products.
template <typename T>
inline __attribute__((always_inline)) void gram_lower_impl(const T* t, int64_t n, int64_t D, T* s) {
  int64_t r0 = 0;
  for (; r0 + 4 <= n; r0 += 4) {
    const T *a0 = t + r0 * D, *a1 = a0 + D, *a2 = a1 + D, *a3 = a2 + D;
    int64_t c0 = 0;
    for (; c0 + 4 <= r0 + 4; c0 += 4) {
      const T *b0 = t + c0 * D, *b1 = b0 + D, *b2 = b1 + D, *b3 = b2 + D;
      T s00 = 0, s01 = 0, s02 = 0, s03 = 0, s10 = 0, s11 = 0, s12 = 0, s13 = 0;
      T s20 = 0, s21 = 0, s22 = 0, s23 = 0, s30 = 0, s31 = 0, s32 = 0, s33 = 0;
#pragma omp simd reduction(+ : s00, s01, s02, s03, s10, s11, s12, s13, s20, s21, s22, s23, s30, s31, s32, s33)
      for (int64_t d = 0; d < D; ++d) {
        const T x0 = a0[d], x1 = a1[d], x2 = a2[d], x3 = a3[d];
        const T y0 = b0[d], y1 = b1[d], y2 = b2[d], y3 = b3[d];
        s00 += x0 * y0; s01 += x0 * y1; s02 += x0 * y2; s03 += x0 * y3;
        s10 += x1 * y0; s11 += x1 * y1; s12 += x1 * y2; s13 += x1 * y3;
        s20 += x2 * y0; s21 += x2 * y1; s22 += x2 * y2; s23 += x2 * y3;
        s30 += x3 * y0; s31 += x3 * y1; s32 += x3 * y2; s33 += x3 * y3;
      }
      T* o = s + r0 * n + c0;
      o[0] = s00; o[1] = s01; o[2] = s02; o[3] = s03;
      o += n; o[0] = s10; o[1] = s11; o[2] = s12; o[3] = s13;
      o += n; o[0] = s20; o[1] = s21; o[2] = s22; o[3] = s23;
      o += n; o[0] = s30; o[1] = s31; o[2] = s32; o[3] = s33;
    }
  }
  for (int64_t r = r0; r < n; ++r) {  // the last n % 4 rows, one dot product at a time
    for (int64_t c = 0; c <= r; ++c) {
      T acc = 0;
      const T *a = t + r * D, *b = t + c * D;
#pragma omp simd reduction(+ : acc)
      for (int64_t d = 0; d < D; ++d) acc += a[d] * b[d];
      s[r * n + c] = acc;
    }
  }
}

// gt (n, D) = g (n, n) . t (n, D), all row-major.
template <typename T>
inline __attribute__((always_inline)) void symm_times_rows_impl(const T* g, const T* t, int64_t n, int64_t D,
                                                                T* gt) {
  for (int64_t r = 0; r < n; ++r) {
    T* out = gt + r * D;
#pragma omp simd
    for (int64_t d = 0; d < D; ++d) out[d] = 0;
    for (int64_t c = 0; c < n; ++c) {
      const T w = g[r * n + c];
      const T* row = t + c * D;
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) out[d] += w * row[d];
    }
  }
}

RECSYS_CPU_CLONES void gram_lower(const float* t, int64_t n, int64_t D, float* s) { gram_lower_impl(t, n, D, s); }
RECSYS_CPU_CLONES void gram_lower(const double* t, int64_t n, int64_t D, double* s) { gram_lower_impl(t, n, D, s); }
RECSYS_CPU_CLONES void symm_times_rows(const float* g, const float* t, int64_t n, int64_t D, float* gt) {
  symm_times_rows_impl(g, t, n, D, gt);
}
RECSYS_CPU_CLONES void symm_times_rows(const double* g, const double* t, int64_t n, int64_t D, double* gt) {
  symm_times_rows_impl(g, t, n, D, gt);
}

template <typename scalar_t, typename acc_t>
void load_rows(const scalar_t* dense, const scalar_t* sparse, int64_t F, int64_t D, acc_t* t) {
  for (int64_t d = 0; d < D; ++d) t[d] = static_cast<acc_t>(dense[d]);
  for (int64_t i = 0; i < F * D; ++i) t[D + i] = static_cast<acc_t>(sparse[i]);
}

template <typename scalar_t>
void forward_kernel(const at::Tensor& dense, const at::Tensor& sparse, at::Tensor& out,
                    const DotInteractionShape& s) {
  using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
  const scalar_t* dp = dense.const_data_ptr<scalar_t>();
  const scalar_t* sp = sparse.const_data_ptr<scalar_t>();
  scalar_t* op = out.mutable_data_ptr<scalar_t>();
  const int64_t grain = std::max<int64_t>(1, 4096 / (s.n * s.n + 1));
  const int64_t diag = s.self_interaction ? 1 : 0;
  at::parallel_for(0, s.B, grain, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> t(s.n * s.D), gram(s.n * s.n);
    for (int64_t b = begin; b < end; ++b) {
      load_rows(dp + b * s.D, sp + b * s.F * s.D, s.F, s.D, t.data());
      gram_lower(t.data(), s.n, s.D, gram.data());
      scalar_t* row = op + b * s.out_cols;
      std::copy(dp + b * s.D, dp + (b + 1) * s.D, row);
      scalar_t* pairs = row + s.D;
      for (int64_t r = 0; r < s.n; ++r)
        for (int64_t c = 0; c < r + diag; ++c)
          pairs[dot_interaction_pair_index(r, c, s.n, s.self_interaction, s.upper)] =
              static_cast<scalar_t>(gram[r * s.n + c]);
      std::fill(row + s.D + s.pairs, row + s.out_cols, scalar_t(0));
    }
  });
}

template <typename scalar_t>
void backward_kernel(const at::Tensor& grad_output, const at::Tensor& dense, const at::Tensor& sparse,
                     at::Tensor& grad_dense, at::Tensor& grad_sparse, const DotInteractionShape& s) {
  using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
  const scalar_t* gp = grad_output.const_data_ptr<scalar_t>();
  const int64_t g_stride = grad_output.stride(0), g_col = grad_output.stride(1);
  const scalar_t* dp = dense.const_data_ptr<scalar_t>();
  const scalar_t* sp = sparse.const_data_ptr<scalar_t>();
  scalar_t* gdp = grad_dense.mutable_data_ptr<scalar_t>();
  scalar_t* gsp = grad_sparse.mutable_data_ptr<scalar_t>();
  const int64_t grain = std::max<int64_t>(1, 4096 / (s.n * s.n + 1));
  const int64_t diag = s.self_interaction ? 1 : 0;
  at::parallel_for(0, s.B, grain, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> t(s.n * s.D), gt(s.n * s.D), g_sym(s.n * s.n, acc_t(0));
    for (int64_t b = begin; b < end; ++b) {
      load_rows(dp + b * s.D, sp + b * s.F * s.D, s.F, s.D, t.data());
      // G symmetric: d(t_r . t_c) = t_c dt_r + t_r dt_c, so the diagonal (self-interaction) counts twice.
      const scalar_t* g = gp + b * g_stride;
      for (int64_t r = 0; r < s.n; ++r) {
        for (int64_t c = 0; c < r + diag; ++c) {
          const int64_t p = s.D + dot_interaction_pair_index(r, c, s.n, s.self_interaction, s.upper);
          const acc_t gv = static_cast<acc_t>(g[p * g_col]);
          g_sym[r * s.n + c] = gv;
          g_sym[c * s.n + r] = r == c ? 2 * gv : gv;
        }
      }
      symm_times_rows(g_sym.data(), t.data(), s.n, s.D, gt.data());
      for (int64_t d = 0; d < s.D; ++d)
        gdp[b * s.D + d] = static_cast<scalar_t>(static_cast<acc_t>(g[d * g_col]) + gt[d]);
      for (int64_t i = 0; i < s.F * s.D; ++i) gsp[b * s.F * s.D + i] = static_cast<scalar_t>(gt[s.D + i]);
    }
  });
}

void check_cpu(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor for the CPU kernel, got ", t.device());
}

at::Tensor dot_interaction_cpu(const at::Tensor& dense, const at::Tensor& sparse, bool self_interaction,
                               c10::string_view layout, int64_t pad_to_multiple) {
  const auto s = check_dot_interaction_inputs(dense, sparse, self_interaction, layout, pad_to_multiple);
  check_cpu(dense, "dense");
  check_cpu(sparse, "sparse");
  auto out = at::empty({s.B, s.out_cols}, dense.options());
  const auto d = dense.contiguous();
  const auto sp = sparse.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dense.scalar_type(), "dot_interaction_cpu",
                                  [&] { forward_kernel<scalar_t>(d, sp, out, s); });
  return out;
}

std::tuple<at::Tensor, at::Tensor> dot_interaction_backward_cpu(const at::Tensor& grad_output,
                                                                const at::Tensor& dense,
                                                                const at::Tensor& sparse, bool self_interaction,
                                                                c10::string_view layout) {
  const auto s = check_dot_interaction_backward_inputs(grad_output, dense, sparse, self_interaction, layout);
  check_cpu(grad_output, "grad_output");
  check_cpu(dense, "dense");
  check_cpu(sparse, "sparse");
  auto grad_dense = at::empty({s.B, s.D}, dense.options());
  auto grad_sparse = at::empty({s.B, s.F, s.D}, sparse.options());
  const auto d = dense.contiguous();
  const auto sp = sparse.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dense.scalar_type(), "dot_interaction_backward_cpu",
                                  [&] { backward_kernel<scalar_t>(grad_output, d, sp, grad_dense, grad_sparse, s); });
  return {grad_dense, grad_sparse};
}

}  // namespace

TORCH_LIBRARY_IMPL(recsys, CPU, m) {
  m.impl("dot_interaction", &dot_interaction_cpu);
  m.impl("dot_interaction_backward", &dot_interaction_backward_cpu);
}

}  // namespace recsys
