// DLRM dot interaction, CPU kernel: parallel over the batch.
//
// Per sample, the rows of T = [dense; sparse] (n x D) are read in place (float32 with D a multiple of 16) or
// converted once into an L1-resident scratch block; only the 4x4 blocks of T Tᵀ on and below the diagonal
// are computed (about half the FLOPs of a full bmm) and scattered into the output row in the requested
// layout. The backward builds the symmetric pair-gradient matrix G and forms grad_T = G T with a
// broadcast-FMA register-blocked product.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <vector>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

#include "dot_interaction/dot_interaction.h"

namespace recsys {
namespace {

constexpr int kMR = 4, kNR = 16;  // register block of C: rows x columns
inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// One kMR x kCols block of C = A . B at (i0, j0): the block stays in vector registers while k runs; per step,
// kMR broadcasts of A, kCols / lanes loads of B and kMR * kCols / lanes FMAs, and no horizontal sums.
template <int kCols, typename T>
inline __attribute__((always_inline)) void gemm_block(const T* A, int64_t lda, const T* B, int64_t ldb, T* C,
                                                      int64_t ldc, int64_t i0, int64_t j0, int64_t K) {
  T acc[kMR][kCols] = {};
  for (int64_t k = 0; k < K; ++k) {
    const T* b = B + k * ldb + j0;
    for (int64_t i = 0; i < kMR; ++i) {
      const T a = A[(i0 + i) * lda + k];
#pragma omp simd
      for (int64_t j = 0; j < kCols; ++j) acc[i][j] += a * b[j];
    }
  }
  for (int64_t i = 0; i < kMR; ++i)
#pragma omp simd
    for (int64_t j = 0; j < kCols; ++j) C[(i0 + i) * ldc + j0 + j] = acc[i][j];
}

// C (m, N) = A (m, K) . B (K, N), row-major with leading dimensions; m a multiple of kMR and N of kNR (the
// callers zero-pad their scratch). Blocks 4 x 64 wide where they fit (16 AVX-512 accumulators: four FMAs per
// load of B instead of one), then 4 x 16.
template <typename T>
inline __attribute__((always_inline)) void gemm_rows_impl(const T* A, int64_t lda, const T* B, int64_t ldb, T* C,
                                                          int64_t ldc, int64_t m, int64_t K, int64_t N) {
  for (int64_t i0 = 0; i0 < m; i0 += kMR) {
    int64_t j0 = 0;
    for (; j0 + 4 * kNR <= N; j0 += 4 * kNR) gemm_block<4 * kNR>(A, lda, B, ldb, C, ldc, i0, j0, K);
    for (; j0 < N; j0 += kNR) gemm_block<kNR>(A, lda, B, ldb, C, ldc, i0, j0, K);
  }
}

// c[r * ldc + c] = t_r . t_c for the 4x4 blocks on and below the diagonal; rows (n_rows,) point at rows of
// length ld (n_rows a multiple of 4, padding rows all zeros). Dot-product form: 16 vector accumulators and 8
// row loads per step of d, one horizontal sum per dot product, and no transposed copy of T.
template <typename T>
inline __attribute__((always_inline)) void gram_lower_impl(const T* const* rows, int64_t ld, int64_t n_rows, T* c,
                                                           int64_t ldc) {
  for (int64_t r0 = 0; r0 < n_rows; r0 += 4) {
    const T *a0 = rows[r0], *a1 = rows[r0 + 1], *a2 = rows[r0 + 2], *a3 = rows[r0 + 3];
    for (int64_t c0 = 0; c0 <= r0; c0 += 4) {
      const T *b0 = rows[c0], *b1 = rows[c0 + 1], *b2 = rows[c0 + 2], *b3 = rows[c0 + 3];
      T s00 = 0, s01 = 0, s02 = 0, s03 = 0, s10 = 0, s11 = 0, s12 = 0, s13 = 0;
      T s20 = 0, s21 = 0, s22 = 0, s23 = 0, s30 = 0, s31 = 0, s32 = 0, s33 = 0;
#pragma omp simd reduction(+ : s00, s01, s02, s03, s10, s11, s12, s13, s20, s21, s22, s23, s30, s31, s32, s33)
      for (int64_t d = 0; d < ld; ++d) {
        const T x0 = a0[d], x1 = a1[d], x2 = a2[d], x3 = a3[d];
        const T y0 = b0[d], y1 = b1[d], y2 = b2[d], y3 = b3[d];
        s00 += x0 * y0; s01 += x0 * y1; s02 += x0 * y2; s03 += x0 * y3;
        s10 += x1 * y0; s11 += x1 * y1; s12 += x1 * y2; s13 += x1 * y3;
        s20 += x2 * y0; s21 += x2 * y1; s22 += x2 * y2; s23 += x2 * y3;
        s30 += x3 * y0; s31 += x3 * y1; s32 += x3 * y2; s33 += x3 * y3;
      }
      T* o = c + r0 * ldc + c0;
      o[0] = s00; o[1] = s01; o[2] = s02; o[3] = s03; o += ldc;
      o[0] = s10; o[1] = s11; o[2] = s12; o[3] = s13; o += ldc;
      o[0] = s20; o[1] = s21; o[2] = s22; o[3] = s23; o += ldc;
      o[0] = s30; o[1] = s31; o[2] = s32; o[3] = s33;
    }
  }
}

// The extension is built for baseline x86-64, so the hot loops are compiled again for AVX2+FMA and AVX-512
// and picked by what the CPU reports at run time (target_clones' resolver keys on CPU model names and
// misses e.g. AMD EPYC parts, so the choice is made here explicitly).
#if defined(__x86_64__) && defined(__GNUC__)
inline int simd_level() {
  static const int level = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") ? 2
                           : __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")       ? 1
                                                                                                   : 0;
  return level;
}
#define RECSYS_SIMD_DISPATCH(ret, name, impl, params, args)                          \
  __attribute__((target("avx512f,avx512vl,fma"))) ret name##_avx512 params { return impl args; } \
  __attribute__((target("avx2,fma"))) ret name##_avx2 params { return impl args; }               \
  ret name params {                                                                  \
    if (simd_level() == 2) return name##_avx512 args;                                \
    if (simd_level() == 1) return name##_avx2 args;                                  \
    return impl args;                                                                \
  }
#else
#define RECSYS_SIMD_DISPATCH(ret, name, impl, params, args) \
  ret name params { return impl args; }
#endif
#define RECSYS_GEMM_PARAMS(T) \
  (const T* A, int64_t lda, const T* B, int64_t ldb, T* C, int64_t ldc, int64_t m, int64_t K, int64_t N)
#define RECSYS_GEMM_ARGS (A, lda, B, ldb, C, ldc, m, K, N)
RECSYS_SIMD_DISPATCH(void, gemm_rows, gemm_rows_impl, RECSYS_GEMM_PARAMS(float), RECSYS_GEMM_ARGS)
RECSYS_SIMD_DISPATCH(void, gemm_rows, gemm_rows_impl, RECSYS_GEMM_PARAMS(double), RECSYS_GEMM_ARGS)

#if defined(__x86_64__) && defined(__GNUC__)
// gram_lower for float32 with AVX-512 intrinsics. The 16 dot products of a 4x4 block end as 16 vector
// accumulators; summing each one horizontally on its own (what the compiler makes of the simd reduction: the
// accumulators spilled and re-read lane by lane) cost several times the FMAs. Here one transpose-and-add tree
// turns the 16 accumulators into one vector of their 16 sums: 8 + 4 + 4 shuffle-adds instead of 16 reductions.
// ld must be a multiple of 16 (Scratch pads rows to kNR = 16). (GCC 12's avx512fintrin.h trips its own
// -Wmaybe-uninitialized on the _mm512_undefined_* inside these intrinsics; silenced for this function only.)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
__attribute__((target("avx512f,avx512vl,fma"))) void gram_lower_f32_avx512(const float* const* rows, int64_t ld,
                                                                           int64_t n_rows, float* c, int64_t ldc) {
  for (int64_t r0 = 0; r0 < n_rows; r0 += 4) {
    const float *a0 = rows[r0], *a1 = rows[r0 + 1], *a2 = rows[r0 + 2], *a3 = rows[r0 + 3];
    for (int64_t c0 = 0; c0 <= r0; c0 += 4) {
      const float *b0 = rows[c0], *b1 = rows[c0 + 1], *b2 = rows[c0 + 2], *b3 = rows[c0 + 3];
      __m512 acc[16];
      for (int k = 0; k < 16; ++k) acc[k] = _mm512_setzero_ps();
      for (int64_t d = 0; d < ld; d += 16) {
        const __m512 x[4] = {_mm512_loadu_ps(a0 + d), _mm512_loadu_ps(a1 + d), _mm512_loadu_ps(a2 + d),
                             _mm512_loadu_ps(a3 + d)};
        const __m512 y[4] = {_mm512_loadu_ps(b0 + d), _mm512_loadu_ps(b1 + d), _mm512_loadu_ps(b2 + d),
                             _mm512_loadu_ps(b3 + d)};
        for (int i = 0; i < 4; ++i)
          for (int j = 0; j < 4; ++j) acc[i * 4 + j] = _mm512_fmadd_ps(x[i], y[j], acc[i * 4 + j]);
      }
      // (1) pairs (2k, 2k+1): per 128-bit lane [a0 b0 a1 b1] + [a2 b2 a3 b3] = two partials of each.
      __m512 t[8];
      for (int k = 0; k < 8; ++k)
        t[k] = _mm512_add_ps(_mm512_unpacklo_ps(acc[2 * k], acc[2 * k + 1]),
                             _mm512_unpackhi_ps(acc[2 * k], acc[2 * k + 1]));
      // (2) per 128-bit lane, one partial of each of accumulators 4k .. 4k+3.
      __m512 u[4];
      for (int k = 0; k < 4; ++k) {
        const __m512d p = _mm512_castps_pd(t[2 * k]), q = _mm512_castps_pd(t[2 * k + 1]);
        u[k] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(p, q)), _mm512_castpd_ps(_mm512_unpackhi_pd(p, q)));
      }
      // (3) across the four 128-bit lanes: lane g of the result holds the sums of accumulators 4g .. 4g+3.
      const __m512 w01 = _mm512_add_ps(_mm512_shuffle_f32x4(u[0], u[1], 0x44), _mm512_shuffle_f32x4(u[0], u[1], 0xEE));
      const __m512 w23 = _mm512_add_ps(_mm512_shuffle_f32x4(u[2], u[3], 0x44), _mm512_shuffle_f32x4(u[2], u[3], 0xEE));
      const __m512 sums = _mm512_add_ps(_mm512_shuffle_f32x4(w01, w23, 0x88), _mm512_shuffle_f32x4(w01, w23, 0xDD));
      float* o = c + r0 * ldc + c0;
      _mm_storeu_ps(o, _mm512_extractf32x4_ps(sums, 0));
      _mm_storeu_ps(o + ldc, _mm512_extractf32x4_ps(sums, 1));
      _mm_storeu_ps(o + 2 * ldc, _mm512_extractf32x4_ps(sums, 2));
      _mm_storeu_ps(o + 3 * ldc, _mm512_extractf32x4_ps(sums, 3));
    }
  }
}

#pragma GCC diagnostic pop

__attribute__((target("avx2,fma"))) void gram_lower_f32_avx2(const float* const* rows, int64_t ld, int64_t n_rows,
                                                             float* c, int64_t ldc) {
  gram_lower_impl(rows, ld, n_rows, c, ldc);
}

void gram_lower(const float* const* rows, int64_t ld, int64_t n_rows, float* c, int64_t ldc) {
  if (simd_level() == 2) return gram_lower_f32_avx512(rows, ld, n_rows, c, ldc);
  if (simd_level() == 1) return gram_lower_f32_avx2(rows, ld, n_rows, c, ldc);
  gram_lower_impl(rows, ld, n_rows, c, ldc);
}
#else
RECSYS_SIMD_DISPATCH(void, gram_lower, gram_lower_impl,
                     (const float* const* rows, int64_t ld, int64_t n_rows, float* c, int64_t ldc),
                     (rows, ld, n_rows, c, ldc))
#endif
RECSYS_SIMD_DISPATCH(void, gram_lower, gram_lower_impl,
                     (const double* const* rows, int64_t ld, int64_t n_rows, double* c, int64_t ldc),
                     (rows, ld, n_rows, c, ldc))

// Per-sample scratch in the accumulation type, zero-padded so gemm_rows sees whole register blocks:
// t (n_rows, ld_t) = [dense; sparse] with n_rows = n rounded up to kMR and ld_t = D rounded up to kNR,
// c (n_rows, ld_c) the Gram matrix or grad_T, ld_c = max(ld_t, n rounded up to kNR); g (n_rows, n) the
// symmetric pair-gradient matrix. Padding stays zero across samples.
template <typename acc_t>
struct Scratch {
  int64_t n_rows, ld_t, ld_c;
  std::vector<acc_t> t, c, g;
  explicit Scratch(const DotInteractionShape& s)
      : n_rows(round_up(s.n, kMR)), ld_t(round_up(s.D, kNR)), ld_c(std::max(ld_t, round_up(s.n, kNR))),
        t(n_rows * ld_t, acc_t(0)), c(n_rows * ld_c, acc_t(0)),
        g(n_rows * s.n, acc_t(0)) {}

  std::vector<const acc_t*> rows;

  // Pointers to the n_rows rows of T for gram_lower: straight into the inputs when they already are the
  // accumulation type with whole vectors per row (no copy), else into t after converting.
  template <typename scalar_t>
  const acc_t* const* rows_of(const scalar_t* dense, const scalar_t* sparse, const DotInteractionShape& s) {
    rows.resize(n_rows);
    if constexpr (std::is_same_v<scalar_t, acc_t>) {
      if (s.D == ld_t) {
        rows[0] = dense;
        for (int64_t r = 1; r < s.n; ++r) rows[r] = sparse + (r - 1) * s.D;
        for (int64_t r = s.n; r < n_rows; ++r) rows[r] = t.data() + r * ld_t;  // zero padding rows
        return rows.data();
      }
    }
    load(dense, sparse, s);
    for (int64_t r = 0; r < n_rows; ++r) rows[r] = t.data() + r * ld_t;
    return rows.data();
  }

  template <typename scalar_t>
  void load(const scalar_t* dense, const scalar_t* sparse, const DotInteractionShape& s) {
    for (int64_t r = 0; r < s.n; ++r) {
      const scalar_t* src = r == 0 ? dense : sparse + (r - 1) * s.D;
      acc_t* dst = t.data() + r * ld_t;
      for (int64_t d = 0; d < s.D; ++d) dst[d] = static_cast<acc_t>(src[d]);
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
      gram_lower(w.rows_of(dp + b * s.D, sp + b * s.F * s.D, s), w.ld_t, w.n_rows, w.c.data(), w.ld_c);
      scalar_t* row = op + b * s.out_cols;
      std::copy(dp + b * s.D, dp + (b + 1) * s.D, row);
      scalar_t* pairs = row + s.D;
      for (int64_t r = 0; r < s.n; ++r)
        for (int64_t c = 0; c < r + diag; ++c)
          pairs[dot_interaction_pair_index(r, c, s.n, s.self_interaction, s.upper)] =
              static_cast<scalar_t>(w.c[r * w.ld_c + c]);
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
      w.load(dp + b * s.D, sp + b * s.F * s.D, s);
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
      gemm_rows(w.g.data(), s.n, w.t.data(), w.ld_t, w.c.data(), w.ld_t, w.n_rows, s.n, w.ld_t);
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
