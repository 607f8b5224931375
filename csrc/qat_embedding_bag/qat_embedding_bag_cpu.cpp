// QAT embedding bags, CPU kernels. Forward: threads split the T*B bags; each looked-up float32 master row is
// fake-quantized to INT4 on the fly (per-row asymmetric, or DQRM's per-table symmetric scale) and pooled with
// the INT4 lookup's own accumulation code (int4_pool_cpu.h). Backward (straight-through estimator): threads
// split the N occurrences; each finds its bag by binary search over the offsets and writes its gradient row
// grad_output[b, t-slice] * weight_p (/ L), giving the sparse gradient's rows and values, never an (E, D) tensor.
//
// DQRM: Zhou et al., "DQRM: Deep Quantized Recommendation Models", 2023 (uniform INT4 + QAT on DLRM).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "int4_embedding_bag/int4_pool_cpu.h"
#include "qat_embedding_bag/qat_embedding_bag.h"

namespace recsys {
namespace {

void check_cpu(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor for the CPU kernel, got ", fmt(t.device()));
}

// Fake-quantized values of one master row x (D) into v, in acc_t (float, or double for float64 tests).
template <typename scalar_t, typename acc_t>
inline void fake_quantize_row(const scalar_t* x, int64_t D, bool table_mode, Int4TableParams tp, acc_t* v) {
  if (table_mode) {
    for (int64_t d = 0; d < D; ++d) v[d] = static_cast<acc_t>(int4_table_value(static_cast<float>(x[d]), tp));
    return;
  }
  float mn = INFINITY, mx = -INFINITY;
  for (int64_t d = 0; d < D; ++d) {
    const float f = static_cast<float>(x[d]);
    mn = std::min(mn, f);
    mx = std::max(mx, f);
  }
  const Int4RowParams p = int4_row_params(mn, mx);
  const acc_t s = p.scale, b = p.bias;
  for (int64_t d = 0; d < D; ++d) v[d] = static_cast<acc_t>(int4_code(static_cast<float>(x[d]), p.bias, p.inv)) * s + b;
}

at::Tensor qat_embedding_bag_cpu(const at::Tensor& weight, const at::Tensor& indices, const at::Tensor& offsets,
                                 const std::optional<at::Tensor>& table_offsets, c10::string_view pooling,
                                 const std::optional<at::Tensor>& per_sample_weights, c10::string_view qparams,
                                 const std::optional<at::Tensor>& table_scale, c10::string_view bounds_check) {
  const auto s = check_qat_inputs(weight, indices, offsets, table_offsets, pooling, per_sample_weights, qparams,
                                  table_scale, bounds_check);
  check_cpu(weight, "weight");
  auto out = at::empty({s.B, s.T * s.D}, weight.options());
  const auto off = offsets.to(at::kLong).contiguous();
  const int64_t* offp = off.const_data_ptr<int64_t>();
  at::Tensor to;
  if (table_offsets) to = table_offsets_int64_cpu(table_offsets);
  const int64_t* top = table_offsets ? to.const_data_ptr<int64_t>() : nullptr;
  const std::vector<int64_t> row_size(s.T, s.D), D(s.T, s.D);
  std::vector<int64_t> D_offsets(s.T + 1);
  for (int64_t t = 0; t <= s.T; ++t) D_offsets[t] = t * s.D;
  const auto ext = table_extents(top, s.T, row_size, s.E * s.D, /*contiguous_rows=*/true);
  if (s.error) check_qat_values_cpu(s, indices.contiguous(), off, to);
  std::vector<Int4TableParams> tparams(s.T);
  if (s.table_mode) {
    const auto ts = table_scale->contiguous();
    for (int64_t t = 0; t < s.T; ++t) tparams[t] = int4_table_params(ts.const_data_ptr<float>()[t]);
  }
  const auto idx = indices.contiguous();
  AT_DISPATCH_INDEX_TYPES(idx.scalar_type(), "qat_embedding_bag_cpu", [&] {
    const index_t* ip = idx.const_data_ptr<index_t>();
    AT_DISPATCH_FLOATING_TYPES(weight.scalar_type(), "qat_embedding_bag_cpu_w", [&] {
      using acc_t = scalar_t;  // float32 weights pool in float32 (as the INT4 lookup), float64 in float64
      at::Tensor psw;
      if (per_sample_weights) psw = per_sample_weights->to(weight.scalar_type()).contiguous();
      const scalar_t* w = weight.const_data_ptr<scalar_t>();
      const auto row_fn = [&](int64_t t, int64_t r, acc_t* v) {
        fake_quantize_row<scalar_t, acc_t>(w + ext[t].base + r * s.D, s.D, s.table_mode, tparams[t], v);
      };
      pool_bags_cpu<acc_t>(s, ext, D, D_offsets, s.D, ip, offp,
                           per_sample_weights ? psw.const_data_ptr<acc_t>() : nullptr,
                           out.mutable_data_ptr<scalar_t>(), s.T * s.D, row_fn);
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> qat_embedding_bag_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& indices, const at::Tensor& offsets,
    const std::optional<at::Tensor>& table_offsets, c10::string_view pooling,
    const std::optional<at::Tensor>& per_sample_weights, int64_t num_rows) {
  const auto s = check_qat_backward_inputs(grad_output, indices, offsets, table_offsets, pooling, per_sample_weights,
                                           num_rows);
  check_cpu(grad_output, "grad_output");
  auto rows = at::empty({s.N}, indices.options().dtype(at::kLong));
  auto grad_rows = at::empty({s.N, s.D}, grad_output.options());
  const auto off = offsets.to(at::kLong).contiguous();
  const int64_t* offp = off.const_data_ptr<int64_t>();
  at::Tensor to;
  if (table_offsets) to = table_offsets_int64_cpu(table_offsets);
  const int64_t* top = table_offsets ? to.const_data_ptr<int64_t>() : nullptr;
  const auto ext = table_extents(top, s.T, std::vector<int64_t>(s.T, s.D), s.E * s.D, /*contiguous_rows=*/true);
  const int64_t n_bags = s.T * s.B;
  const auto idx = indices.contiguous();
  const auto g = grad_output.contiguous();
  AT_DISPATCH_INDEX_TYPES(idx.scalar_type(), "qat_embedding_bag_backward_cpu", [&] {
    AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "qat_embedding_bag_backward_cpu_g", [&] {
      at::Tensor psw;
      if (per_sample_weights) psw = per_sample_weights->to(g.scalar_type()).contiguous();
      const scalar_t* wp = per_sample_weights ? psw.const_data_ptr<scalar_t>() : nullptr;
      const index_t* ip = idx.const_data_ptr<index_t>();
      const scalar_t* gp = g.const_data_ptr<scalar_t>();
      int64_t* rp = rows.mutable_data_ptr<int64_t>();
      scalar_t* grp = grad_rows.mutable_data_ptr<scalar_t>();
      at::parallel_for(0, s.N, std::max<int64_t>(1, 8192 / s.D), [&](int64_t begin, int64_t end) {
        for (int64_t p = begin; p < end; ++p) {
          scalar_t* dst = grp + p * s.D;
          bool keep = n_bags > 0;
          int64_t k = 0, t = 0, r = 0;
          if (keep) {
            k = bag_of_position(offp, n_bags, p);
            t = k / s.B;
            r = static_cast<int64_t>(ip[p]);
            keep = r >= ext[t].r_lo && r < ext[t].r_hi;
          }
          if (!keep) {  // outside its table (bounds_check="ignore"): a zero row at row 0
            rp[p] = 0;
            std::fill(dst, dst + s.D, scalar_t(0));
            continue;
          }
          rp[p] = (top ? top[t] : 0) + r;
          const int64_t b = k % s.B;
          const scalar_t* src = gp + b * s.T * s.D + t * s.D;
          scalar_t scale = wp ? wp[p] : scalar_t(1);
          for (int64_t d = 0; d < s.D; ++d) dst[d] = src[d] * scale;
          if (s.mean) {
            const int64_t len = std::max<int64_t>(1, std::clamp<int64_t>(offp[k + 1], 0, s.N) -
                                                         std::clamp<int64_t>(offp[k], 0, s.N));
            for (int64_t d = 0; d < s.D; ++d) dst[d] /= static_cast<scalar_t>(len);
          }
        }
      });
    });
  });
  return {rows, grad_rows};
}

}  // namespace

void check_qat_values_cpu(const QatShape& s, const at::Tensor& indices, const at::Tensor& offsets,
                          const at::Tensor& table_offsets) {
  const int64_t* offp = offsets.const_data_ptr<int64_t>();
  const int64_t* top = table_offsets.defined() ? table_offsets.const_data_ptr<int64_t>() : nullptr;
  const auto ext = table_extents(top, s.T, std::vector<int64_t>(s.T, s.D), s.E * s.D, /*contiguous_rows=*/true);
  if (top) {
    check_table_offsets_values(top, s.T);
    TORCH_CHECK(top[s.T] <= s.E, "table_offsets end at row ", fmt(top[s.T]), ", past the ", fmt(s.E), " rows of weight");
  }
  check_offsets_values(offp, s.T * s.B, s.N);
  AT_DISPATCH_INDEX_TYPES(indices.scalar_type(), "check_qat_values_cpu", [&] {
    check_indices_values(indices.const_data_ptr<index_t>(), offp, s, ext);
  });
}

TORCH_LIBRARY_IMPL(recsys, CPU, m) {
  m.impl("qat_embedding_bag", &qat_embedding_bag_cpu);
  m.impl("qat_embedding_bag_backward", &qat_embedding_bag_backward_cpu);
}

}  // namespace recsys
