// DLRM dot interaction: shapes, pair ordering and input checks shared by the CPU and CUDA kernels.
//
// T = [dense; sparse] is (B, n, D) with n = F + 1. The output row is
//   [dense (D) | one dot product per unordered pair (P) | zeros up to a multiple of pad_to_multiple].
// "lower": pairs (i, j) with j < i (j <= i with self_interaction) in row-major order of the lower
//          triangle (dlrm / NVIDIA order).
// "upper": pairs (i, j) with i < j (i <= j with self_interaction) in row-major order of the upper
//          triangle (torchrec InteractionArch order).
#pragma once
#include <string_view>

#include "common/checks.h"
#include "common/host_device.h"


namespace recsys {

struct DotInteractionShape {
  int64_t B;         // batch
  int64_t F;         // sparse features
  int64_t D;         // embedding dim
  int64_t n;         // F + 1 rows of T
  int64_t pairs;     // P
  int64_t out_cols;  // D + P rounded up to pad_to_multiple
  bool self_interaction;
  bool upper;
};

RECSYS_HOST_DEVICE int64_t dot_interaction_num_pairs(int64_t n, bool self_interaction) {
  return self_interaction ? n * (n + 1) / 2 : n * (n - 1) / 2;
}

// Position in the pair block of the dot product of rows r and c of T, for r > c
// (r >= c with self_interaction). The product is symmetric, so (r, c) and (c, r) share it.
RECSYS_HOST_DEVICE int64_t dot_interaction_pair_index(int64_t r, int64_t c, int64_t n, bool self_interaction,
                                                      bool upper) {
  if (!upper) return self_interaction ? r * (r + 1) / 2 + c : r * (r - 1) / 2 + c;
  // upper: the pair is (c, r) with c < r (c <= r); rows before c contribute n - i (n - 1 - i) entries.
  return self_interaction ? c * n - c * (c - 1) / 2 + (r - c) : c * n - c * (c + 1) / 2 + (r - c - 1);
}

inline bool parse_dot_interaction_layout(std::string_view layout) {
  TORCH_CHECK(layout == "lower" || layout == "upper", "layout must be 'lower' or 'upper', got '",
              fmt(std::string(layout)), "'");
  return layout == "upper";
}

inline DotInteractionShape check_dot_interaction_inputs(const at::Tensor& dense, const at::Tensor& sparse,
                                                        bool self_interaction, std::string_view layout,
                                                        int64_t pad_to_multiple) {
  check_dim(dense, 2, "dense", "(B, D)");
  check_dim(sparse, 3, "sparse", "(B, F, D)");
  check_float_dtype(dense, "dense");
  check_same_dtype(dense, "dense", sparse, "sparse");
  check_same_device(dense, "dense", sparse, "sparse");
  TORCH_CHECK(dense.size(0) == sparse.size(0), "dense and sparse must have the same batch size, got ",
              fmt(dense.size(0)), " and ", fmt(sparse.size(0)));
  TORCH_CHECK(dense.size(1) == sparse.size(2), "dense (B, D) and sparse (B, F, D) must have the same D, got ",
              fmt(dense.size(1)), " and ", fmt(sparse.size(2)));
  TORCH_CHECK(sparse.size(1) >= 1, "sparse must have at least one feature (F >= 1), got F = ", fmt(sparse.size(1)));
  TORCH_CHECK(pad_to_multiple >= 1, "pad_to_multiple must be >= 1, got ", fmt(pad_to_multiple));
  DotInteractionShape s;
  s.B = dense.size(0);
  s.F = sparse.size(1);
  s.D = dense.size(1);
  s.n = s.F + 1;
  s.self_interaction = self_interaction;
  s.upper = parse_dot_interaction_layout(layout);
  s.pairs = dot_interaction_num_pairs(s.n, self_interaction);
  const int64_t cols = s.D + s.pairs;
  s.out_cols = (cols + pad_to_multiple - 1) / pad_to_multiple * pad_to_multiple;
  return s;
}

inline DotInteractionShape check_dot_interaction_backward_inputs(const at::Tensor& grad_output,
                                                                 const at::Tensor& dense,
                                                                 const at::Tensor& sparse, bool self_interaction,
                                                                 std::string_view layout) {
  DotInteractionShape s = check_dot_interaction_inputs(dense, sparse, self_interaction, layout, 1);
  check_dim(grad_output, 2, "grad_output", "(B, D + P [+ pad])");
  check_same_dtype(grad_output, "grad_output", dense, "dense");
  check_same_device(grad_output, "grad_output", dense, "dense");
  TORCH_CHECK(grad_output.size(0) == s.B && grad_output.size(1) >= s.D + s.pairs,
              "grad_output must have shape (", fmt(s.B), ", >= ", fmt(s.D + s.pairs), "), got ",
              fmt(shape(grad_output.sizes())));
  return s;
}

}  // namespace recsys
