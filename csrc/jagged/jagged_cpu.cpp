// Jagged <-> padded-dense helpers, CPU kernels (semantics in recsys_kernels/reference/jagged.py).
//
// Plain row copies, parallel over sequences; offsets are validated first (start at 0, non-decreasing,
// last <= L), so every copy stays inside its tensor.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <cstring>
#include <vector>

#include "jagged/jagged.h"

namespace recsys {
namespace {

void check_cpu(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor for the CPU kernel, got ", fmt(t.device()));
}

at::Tensor lengths_to_offsets_cpu(const at::Tensor& lengths) {
  check_dim(lengths, 1, "lengths", "(B,)");
  check_cpu(lengths, "lengths");
  TORCH_CHECK(lengths.scalar_type() == at::kInt || lengths.scalar_type() == at::kLong,
              "lengths must be int32 or int64, got ", fmt(lengths.scalar_type()));
  const auto l = lengths.contiguous();
  auto out = at::empty({l.size(0) + 1}, l.options());
  AT_DISPATCH_INDEX_TYPES(l.scalar_type(), "lengths_to_offsets_cpu", [&] {
    const index_t* lp = l.const_data_ptr<index_t>();
    index_t* op = out.mutable_data_ptr<index_t>();
    op[0] = 0;
    for (int64_t b = 0; b < l.size(0); ++b) {
      TORCH_CHECK(lp[b] >= 0, "lengths must be non-negative, got lengths[", fmt(b), "] = ", fmt(int64_t(lp[b])));
      op[b + 1] = op[b] + lp[b];
    }
  });
  return out;
}

at::Tensor jagged_to_padded_dense_cpu(const at::Tensor& values, const at::Tensor& offsets, int64_t max_len,
                                      double padding_value) {
  check_cpu(values, "values");
  check_cpu(offsets, "offsets");
  const auto o = check_jagged_to_padded(values, offsets, max_len);
  const int64_t B = static_cast<int64_t>(o.size()) - 1, D = values.size(1);
  auto out = at::empty({B, max_len, D}, values.options());
  const auto v = values.contiguous();
  AT_DISPATCH_ALL_TYPES_AND2(at::kHalf, at::kBFloat16, v.scalar_type(), "jagged_to_padded_dense_cpu", [&] {
    const scalar_t* vp = v.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    const scalar_t pad = static_cast<scalar_t>(padding_value);
    at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        const int64_t n = std::min(o[b + 1] - o[b], max_len);
        scalar_t* dst = op + b * max_len * D;
        if (n > 0) std::memcpy(dst, vp + o[b] * D, sizeof(scalar_t) * n * D);
        std::fill(dst + n * D, dst + max_len * D, pad);
      }
    });
  });
  return out;
}

at::Tensor padded_dense_to_jagged_cpu(const at::Tensor& dense, const at::Tensor& offsets, int64_t total_len) {
  check_cpu(dense, "dense");
  check_cpu(offsets, "offsets");
  const auto o = check_padded_to_jagged(dense, offsets, total_len);
  const int64_t B = dense.size(0), N = dense.size(1), D = dense.size(2);
  auto out = at::zeros({total_len, D}, dense.options());
  const auto d = dense.contiguous();
  AT_DISPATCH_ALL_TYPES_AND2(at::kHalf, at::kBFloat16, d.scalar_type(), "padded_dense_to_jagged_cpu", [&] {
    const scalar_t* dp = d.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        const int64_t n = std::min(o[b + 1] - o[b], N);
        if (n > 0) std::memcpy(op + o[b] * D, dp + b * N * D, sizeof(scalar_t) * n * D);
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(recsys, CPU, m) {
  m.impl("lengths_to_offsets", &lengths_to_offsets_cpu);
  m.impl("jagged_to_padded_dense", &jagged_to_padded_dense_cpu);
  m.impl("padded_dense_to_jagged", &padded_dense_to_jagged_cpu);
}

}  // namespace recsys
