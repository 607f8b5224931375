// DLRM dot interaction, CPU kernel: parallel over the batch.
//
// Per sample, T = [dense; sparse] (n x D) is converted once to a float32 (float64 for double) scratch
// block that stays in L1/L2, then only the lower triangle of T Tᵀ is computed, in register blocks
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

constexpr int64_t kMR = 4, kNR = 16;  // register block of C: rows x columns
inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// C (m, N) = A (m, K) . B (K, N), row-major with leading dimensions; m a multiple of kMR and N of kNR (the
// callers zero-pad their scratch). Each kMR x kNR block of C stays in vector registers while k runs: per
// step, kMR broadcasts of A, one kNR-wide load of B and kMR FMAs per lane group, and no horizontal sums.
// ``lower`` computes only the column blocks that reach the diagonal of each row block (for T Tᵀ, whose
// lower triangle is all we need).
template <typename T>
inline __attribute__((always_inline)) void gemm_rows_impl(const T* A, int64_t lda, const T* B, int64_t ldb, T* C,
                                                          int64_t ldc, int64_t m, int64_t K, int64_t N, bool lower) {
  for (int64_t i0 = 0; i0 < m; i0 += kMR) {
    const int64_t n_end = lower ? std::min(N, round_up(i0 + kMR, kNR)) : N;
    for (int64_t j0 = 0; j0 < n_end; j0 += kNR) {
      T acc[kMR][kNR] = {};
      for (int64_t k = 0; k < K; ++k) {
        const T* b = B + k * ldb + j0;
        for (int64_t i = 0; i < kMR; ++i) {
          const T a = A[(i0 + i) * lda + k];
#pragma omp simd
          for (int64_t j = 0; j < kNR; ++j) acc[i][j] += a * b[j];
        }
      }
      for (int64_t i = 0; i < kMR; ++i)
#pragma omp simd
        for (int64_t j = 0; j < kNR; ++j) C[(i0 + i) * ldc + j0 + j] = acc[i][j];
    }
  }
}

// The extension is built for baseline x86-64, so the hot loop is compiled again for AVX2+FMA and AVX-512
// and picked by what the CPU reports at run time (target_clones' resolver keys on CPU model names and
// misses e.g. AMD EPYC parts, so the choice is made here explicitly).
#if defined(__x86_64__) && defined(__GNUC__)
#define RECSYS_DEFINE_GEMM_ROWS(T)                                                                          \
  __attribute__((target("avx512f,avx512vl,fma"))) void gemm_rows_avx512(const T* A, int64_t lda, const T* B, \
      int64_t ldb, T* C, int64_t ldc, int64_t m, int64_t K, int64_t N, bool lower) {                         \
    gemm_rows_impl(A, lda, B, ldb, C, ldc, m, K, N, lower);                                                  \
  }                                                                                                          \
  __attribute__((target("avx2,fma"))) void gemm_rows_avx2(const T* A, int64_t lda, const T* B, int64_t ldb,  \
      T* C, int64_t ldc, int64_t m, int64_t K, int64_t N, bool lower) {                                      \
    gemm_rows_impl(A, lda, B, ldb, C, ldc, m, K, N, lower);                                                  \
  }                                                                                                          \
  void gemm_rows(const T* A, int64_t lda, const T* B, int64_t ldb, T* C, int64_t ldc, int64_t m, int64_t K,  \
                 int64_t N, bool lower) {                                                                    \
    static const int level = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") ? 2     \
                             : __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")       ? 1     \
                                                                                                     : 0;    \
    if (level == 2) return gemm_rows_avx512(A, lda, B, ldb, C, ldc, m, K, N, lower);                         \
    if (level == 1) return gemm_rows_avx2(A, lda, B, ldb, C, ldc, m, K, N, lower);                           \
    gemm_rows_impl(A, lda, B, ldb, C, ldc, m, K, N, lower);                                                  \
  }
#else
#define RECSYS_DEFINE_GEMM_ROWS(T)                                                                          \
  void gemm_rows(const T* A, int64_t lda, const T* B, int64_t ldb, T* C, int64_t ldc, int64_t m, int64_t K,  \
                 int64_t N, bool lower) {                                                                    \
    gemm_rows_impl(A, lda, B, ldb, C, ldc, m, K, N, lower);                                                  \
  }
#endif
RECSYS_DEFINE_GEMM_ROWS(float)
RECSYS_DEFINE_GEMM_ROWS(double)

// Per-sample scratch in the accumulation type, zero-padded so gemm_rows sees whole register blocks:
// t (n_rows, ld_t) = [dense; sparse] with n_rows = n rounded up to kMR and ld_t = D rounded up to kNR,
// tt (D, ld_tt) its transpose with ld_tt = n rounded up to kNR. Padding stays zero across samples.
template <typename acc_t>
struct Scratch {
  int64_t n_rows, ld_t, ld_tt;
  std::vector<acc_t> t, tt, c, g;
  explicit Scratch(const DotInteractionShape& s)
      : n_rows(round_up(s.n, kMR)), ld_t(round_up(s.D, kNR)), ld_tt(round_up(s.n, kNR)),
        t(n_rows * ld_t, acc_t(0)), tt(s.D * ld_tt, acc_t(0)), c(n_rows * std::max(ld_t, ld_tt), acc_t(0)),
        g(n_rows * s.n, acc_t(0)) {}

  template <typename scalar_t>
  void load(const scalar_t* dense, const scalar_t* sparse, const DotInteractionShape& s, bool transpose) {
    for (int64_t r = 0; r < s.n; ++r) {
      const scalar_t* src = r == 0 ? dense : sparse + (r - 1) * s.D;
      acc_t* dst = t.data() + r * ld_t;
      for (int64_t d = 0; d < s.D; ++d) dst[d] = static_cast<acc_t>(src[d]);
      if (transpose)
        for (int64_t d = 0; d < s.D; ++d) tt[d * ld_tt + r] = dst[d];
    }
  }
};

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
    Scratch<acc_t> w(s);
    for (int64_t b = begin; b < end; ++b) {
      w.load(dp + b * s.D, sp + b * s.F * s.D, s, /*transpose=*/true);
      gemm_rows(w.t.data(), w.ld_t, w.tt.data(), w.ld_tt, w.c.data(), w.ld_tt, w.n_rows, s.D, w.ld_tt, /*lower=*/true);
      scalar_t* row = op + b * s.out_cols;
      std::copy(dp + b * s.D, dp + (b + 1) * s.D, row);
      scalar_t* pairs = row + s.D;
      for (int64_t r = 0; r < s.n; ++r)
        for (int64_t c = 0; c < r + diag; ++c)
          pairs[dot_interaction_pair_index(r, c, s.n, s.self_interaction, s.upper)] =
              static_cast<scalar_t>(w.c[r * w.ld_tt + c]);
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
    Scratch<acc_t> w(s);
    for (int64_t b = begin; b < end; ++b) {
      w.load(dp + b * s.D, sp + b * s.F * s.D, s, /*transpose=*/false);
      // G symmetric: d(t_r . t_c) = t_c dt_r + t_r dt_c, so the diagonal (self-interaction) counts twice.
      const scalar_t* g = gp + b * g_stride;
      for (int64_t r = 0; r < s.n; ++r) {
        for (int64_t c = 0; c < r + diag; ++c) {
          const int64_t p = s.D + dot_interaction_pair_index(r, c, s.n, s.self_interaction, s.upper);
          const acc_t gv = static_cast<acc_t>(g[p * g_col]);
          w.g[r * s.n + c] = gv;
          w.g[c * s.n + r] = r == c ? 2 * gv : gv;
        }
      }
      // grad_T = G T; rows of G past n are zero padding, and so are the rows of grad_T they make.
      gemm_rows(w.g.data(), s.n, w.t.data(), w.ld_t, w.c.data(), w.ld_t, w.n_rows, s.n, w.ld_t, /*lower=*/false);
      for (int64_t d = 0; d < s.D; ++d)
        gdp[b * s.D + d] = static_cast<scalar_t>(static_cast<acc_t>(g[d * g_col]) + w.c[d]);
      for (int64_t r = 1; r < s.n; ++r)
        for (int64_t d = 0; d < s.D; ++d)
          gsp[(b * s.F + r - 1) * s.D + d] = static_cast<scalar_t>(w.c[r * w.ld_t + d]);
    }
  });
}

void check_cpu(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor for the CPU kernel, got ", fmt(t.device()));
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
