// Bag pooling shared by the CPU kernels of int4_embedding_bag and qat_embedding_bag: both run the same
// accumulation code, so an INT4 table made by QATEmbeddingBagCollection.to_int4() pools to bit-identical
// results. Threads split the T*B bags; every bag is pooled into a float32 (float64) scratch row in occurrence
// order, then divided by its length ("mean") and converted once to the output dtype.
#pragma once
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "int4_embedding_bag/int4_embedding_bag.h"

namespace recsys {

// Rows r of table t that may be read: r_lo <= r < r_hi (the table's rows, clipped to the storage so that a
// bad index or table_offsets entry with bounds_check="ignore" is skipped instead of read out of bounds).
struct TableExtent {
  int64_t base = 0;  // first element (INT4: byte) of the table's row 0 in the storage
  int64_t rows = 0;
  int64_t r_lo = 0, r_hi = 0;
};

// Extents of T tables stored back to back (row_size[t] storage elements a row) in storage of `capacity`
// elements; table_offsets (T + 1,) int64 on the CPU (nullptr: one table of capacity / row_size[0] rows).
// `contiguous_rows`: tables start at table_offsets[t] * row_size (QAT weight), else at the sum of the
// previous tables' sizes (INT4 flat storage of mixed D; the same for one D and table_offsets[0] = 0).
inline std::vector<TableExtent> table_extents(const int64_t* to, int64_t T, const std::vector<int64_t>& row_size,
                                              int64_t capacity, bool contiguous_rows) {
  std::vector<TableExtent> ext(T);
  int64_t base = 0;
  for (int64_t t = 0; t < T; ++t) {
    auto& e = ext[t];
    const int64_t rs = row_size[t];
    e.rows = to ? std::max<int64_t>(to[t + 1] - to[t], 0) : capacity / rs;
    if (contiguous_rows) {
      const int64_t lo = to ? to[t] : 0;
      e.base = lo * rs;
      e.r_lo = std::max<int64_t>(0, -lo);
      e.r_hi = std::min<int64_t>(e.rows, capacity / rs - lo);
    } else {
      e.base = base;
      e.r_lo = 0;
      e.r_hi = std::min<int64_t>(e.rows, std::max<int64_t>(capacity - base, 0) / rs);
      base += e.rows * rs;
    }
    e.r_hi = std::max(e.r_hi, e.r_lo);
  }
  return ext;
}

// Validates every index (bounds_check="error") before any work, with the reference's message.
template <typename index_t>
void check_indices_values(const index_t* idx, const int64_t* off, const BagLayout& s,
                          const std::vector<TableExtent>& ext) {
  for (int64_t k = 0; k < s.T * s.B; ++k) {
    const int64_t t = k / s.B;
    for (int64_t p = off[k]; p < off[k + 1]; ++p) {
      const int64_t r = static_cast<int64_t>(idx[p]);
      if (r < 0 || r >= ext[t].rows) throw_index_error(p, r, t, ext[t].rows);
    }
  }
}

// out (B, out_stride) gets bag t*B + b in columns [D_offsets[t], D_offsets[t] + D[t]) of row b.
// row_fn(t, r, v) writes the D[t] dequantized values of row r of table t into v (acc_t).
template <typename acc_t, typename index_t, typename out_t, typename RowFn>
void pool_bags_cpu(const BagLayout& s, const std::vector<TableExtent>& ext, const std::vector<int64_t>& D,
                   const std::vector<int64_t>& D_offsets, int64_t max_D, const index_t* idx, const int64_t* off,
                   const acc_t* psw, out_t* out, int64_t out_stride, const RowFn& row_fn) {
  const int64_t n_bags = s.T * s.B;
  if (n_bags == 0) return;
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(1, s.N / n_bags * max_D));
  at::parallel_for(0, n_bags, grain, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc(max_D), v(max_D);
    for (int64_t k = begin; k < end; ++k) {
      const int64_t t = k / s.B, b = k % s.B, d_t = D[t];
      const TableExtent& e = ext[t];
      // Clamped bag range: never reads indices out of bounds, whatever the offsets.
      const int64_t start = std::clamp<int64_t>(off[k], 0, s.N);
      const int64_t stop = std::clamp<int64_t>(off[k + 1], start, s.N);
      std::fill(acc.begin(), acc.begin() + d_t, acc_t(0));
      for (int64_t p = start; p < stop; ++p) {
        const int64_t r = static_cast<int64_t>(idx[p]);
        if (r < e.r_lo || r >= e.r_hi) continue;
        row_fn(t, r, v.data());
        if (psw) {
          const acc_t w = psw[p];
          for (int64_t d = 0; d < d_t; ++d) acc[d] += w * v[d];
        } else {
          for (int64_t d = 0; d < d_t; ++d) acc[d] += v[d];
        }
      }
      if (s.mean && stop > start) {
        const acc_t len = static_cast<acc_t>(stop - start);
        for (int64_t d = 0; d < d_t; ++d) acc[d] /= len;
      }
      out_t* o = out + b * out_stride + D_offsets[t];
      for (int64_t d = 0; d < d_t; ++d) o[d] = static_cast<out_t>(acc[d]);
    }
  });
}

}  // namespace recsys
