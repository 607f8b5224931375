// DLRM dot interaction, CPU kernel: parallel over the batch.
//
// Per sample, T = [dense; sparse] (n x D) is converted once to a float32 (float64 for double) scratch
// block that stays in L1/L2, then only the kept triangle of T Tᵀ is computed with vectorised dot products
// (half the FLOPs of a full bmm) and written straight into the output row. The backward forms
// grad_T = G T from the symmetric pair-gradient matrix G the same way.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <vector>

#include "dot_interaction/dot_interaction.h"

namespace recsys {
namespace {

template <typename acc_t>
acc_t dot(const acc_t* a, const acc_t* b, int64_t D) {
  using Vec = at::vec::Vectorized<acc_t>;
  constexpr int64_t W = Vec::size();
  Vec s0(0), s1(0);
  int64_t d = 0;
  for (; d + 2 * W <= D; d += 2 * W) {
    s0 = at::vec::fmadd(Vec::loadu(a + d), Vec::loadu(b + d), s0);
    s1 = at::vec::fmadd(Vec::loadu(a + d + W), Vec::loadu(b + d + W), s1);
  }
  for (; d + W <= D; d += W) s0 = at::vec::fmadd(Vec::loadu(a + d), Vec::loadu(b + d), s0);
  acc_t s = at::vec::vec_reduce_all<acc_t>([](Vec& x, Vec& y) { return x + y; }, s0 + s1);
  for (; d < D; ++d) s += a[d] * b[d];
  return s;
}

// y += alpha * x
template <typename acc_t>
void axpy(acc_t alpha, const acc_t* x, acc_t* y, int64_t D) {
  using Vec = at::vec::Vectorized<acc_t>;
  constexpr int64_t W = Vec::size();
  const Vec va(alpha);
  int64_t d = 0;
  for (; d + W <= D; d += W) at::vec::fmadd(va, Vec::loadu(x + d), Vec::loadu(y + d)).store(y + d);
  for (; d < D; ++d) y[d] += alpha * x[d];
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
  at::parallel_for(0, s.B, grain, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> t(s.n * s.D);
    for (int64_t b = begin; b < end; ++b) {
      load_rows(dp + b * s.D, sp + b * s.F * s.D, s.F, s.D, t.data());
      scalar_t* row = op + b * s.out_cols;
      std::copy(dp + b * s.D, dp + (b + 1) * s.D, row);
      scalar_t* pairs = row + s.D;
      const int64_t diag = s.self_interaction ? 1 : 0;
      for (int64_t r = 0; r < s.n; ++r)
        for (int64_t c = 0; c < r + diag; ++c)
          pairs[dot_interaction_pair_index(r, c, s.n, s.self_interaction, s.upper)] =
              static_cast<scalar_t>(dot(t.data() + r * s.D, t.data() + c * s.D, s.D));
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
  at::parallel_for(0, s.B, grain, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> t(s.n * s.D), gt(s.n * s.D);
    const int64_t diag = s.self_interaction ? 1 : 0;
    for (int64_t b = begin; b < end; ++b) {
      load_rows(dp + b * s.D, sp + b * s.F * s.D, s.F, s.D, t.data());
      std::fill(gt.begin(), gt.end(), acc_t(0));
      const scalar_t* g = gp + b * g_stride;
      for (int64_t r = 0; r < s.n; ++r) {
        for (int64_t c = 0; c < r + diag; ++c) {
          const int64_t p = s.D + dot_interaction_pair_index(r, c, s.n, s.self_interaction, s.upper);
          const acc_t gv = static_cast<acc_t>(g[p * g_col]);
          // d(t_r . t_c) = t_c dt_r + t_r dt_c; on the diagonal both terms land on t_r (factor 2).
          axpy(gv, t.data() + c * s.D, gt.data() + r * s.D, s.D);
          axpy(gv, t.data() + r * s.D, gt.data() + c * s.D, s.D);
        }
      }
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
