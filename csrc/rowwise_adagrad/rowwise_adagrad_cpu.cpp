// Exact row-wise Adagrad (Duchi et al. 2011, Adagrad; the row-wise variant of FBGEMM's
// EXACT_ROWWISE_ADAGRAD, one accumulator per embedding row), CPU kernels.
//
// Duplicates are reduced by sorting, never by atomics, so results are bit-identical run to run and for any
// thread count: every occurrence becomes the 64-bit key (row << pos_bits | position), a parallel LSD radix
// sort orders the keys by row (positions stay ascending inside a row: the sort is stable and the position
// is in the key), and each run of equal rows is one row's gradient, summed in position order. Threads take
// equal slices of the sorted occurrences (not of the rows: hot rows cluster) and own the runs that start in
// their slice. The fused embedding-bag backward reads each occurrence's gradient straight from
// grad_output[bag's sample, table's column slice] (times the per-sample weight, or 1 / bag length for mean
// pooling) while summing, so no (N, D) gradient is ever formed.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "rowwise_adagrad/rowwise_adagrad.h"

namespace recsys {
namespace {

#if defined(__x86_64__) && defined(__GNUC__)
#define RECSYS_CPU_CLONES __attribute__((target_clones("arch=skylake-avx512", "arch=haswell", "default")))
#else
#define RECSYS_CPU_CLONES
#endif

constexpr int kRadixBits = 11;

int bits_for(uint64_t max_value) {
  int b = 0;
  while (b < 64 && (max_value >> b) != 0) ++b;
  return b;
}

// Sorted occurrences: key >> pos_bits is the row, key & pos_mask the position.
struct SortedRows {
  std::vector<uint64_t> keys;
  int pos_bits = 0;
  uint64_t pos_mask = 0;
  int64_t row(int64_t i) const { return static_cast<int64_t>(keys[i] >> pos_bits); }
  int64_t pos(int64_t i) const { return static_cast<int64_t>(keys[i] & pos_mask); }
};

// Stable sort of positions [0, N) by rows[p] in [0, E). The sorted sequence is unique, so it does not depend
// on the number of threads or chunks.
SortedRows sort_rows(const std::vector<int64_t>& rows, int64_t E) {
  const int64_t N = static_cast<int64_t>(rows.size());
  SortedRows s;
  s.pos_bits = bits_for(static_cast<uint64_t>(std::max<int64_t>(N - 1, 0)));
  s.pos_mask = s.pos_bits == 0 ? 0 : (~uint64_t(0) >> (64 - s.pos_bits));
  const int row_bits = bits_for(static_cast<uint64_t>(std::max<int64_t>(E - 1, 0)));
  TORCH_CHECK(s.pos_bits + row_bits <= 64, "rowwise_adagrad: E = ", fmt(E), " rows and N = ", fmt(N),
              " occurrences need more than 64 bits of sort key");
  s.keys.resize(N);
  at::parallel_for(0, N, 1 << 14, [&](int64_t b, int64_t e) {
    for (int64_t p = b; p < e; ++p) s.keys[p] = (static_cast<uint64_t>(rows[p]) << s.pos_bits) | uint64_t(p);
  });
  if (N < (1 << 14)) {  // the position is part of the key, so a plain sort is the stable sort by row
    std::sort(s.keys.begin(), s.keys.end());
    return s;
  }
  std::vector<uint64_t> tmp(N);
  const int64_t nchunks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), N >> 14));
  const int64_t chunk = (N + nchunks - 1) / nchunks;
  const int end_bit = s.pos_bits + row_bits;
  for (int shift = s.pos_bits; shift < end_bit; shift += kRadixBits) {
    const int nbits = std::min(kRadixBits, end_bit - shift);
    const int64_t nb = int64_t(1) << nbits;
    const uint64_t dmask = uint64_t(nb - 1);
    std::vector<int64_t> hist(nchunks * nb, 0);
    const uint64_t* src = s.keys.data();
    uint64_t* dst = tmp.data();
    at::parallel_for(0, nchunks, 1, [&](int64_t cb, int64_t ce) {
      for (int64_t c = cb; c < ce; ++c) {
        int64_t* h = hist.data() + c * nb;
        for (int64_t i = c * chunk, e = std::min(N, (c + 1) * chunk); i < e; ++i) ++h[(src[i] >> shift) & dmask];
      }
    });
    int64_t sum = 0;
    for (int64_t d = 0; d < nb; ++d) {
      for (int64_t c = 0; c < nchunks; ++c) {
        const int64_t n = hist[c * nb + d];
        hist[c * nb + d] = sum;
        sum += n;
      }
    }
    at::parallel_for(0, nchunks, 1, [&](int64_t cb, int64_t ce) {
      for (int64_t c = cb; c < ce; ++c) {
        int64_t* h = hist.data() + c * nb;
        for (int64_t i = c * chunk, e = std::min(N, (c + 1) * chunk); i < e; ++i)
          dst[h[(src[i] >> shift) & dmask]++] = src[i];
      }
    });
    s.keys.swap(tmp);
  }
  return s;
}

// ------------------------------------------------------------------------------------------ row arithmetic

RECSYS_CPU_CLONES void axpy_f32(float* g, const float* x, float s, int64_t D) {
#pragma omp simd
  for (int64_t d = 0; d < D; ++d) g[d] += s * x[d];
}

template <typename acc_t, typename grad_t>
void accumulate(acc_t* g, const grad_t* x, acc_t s, int64_t D) {
  if constexpr (std::is_same_v<acc_t, float> && std::is_same_v<grad_t, float>) {
    axpy_f32(g, x, s, D);
  } else {
    for (int64_t d = 0; d < D; ++d) g[d] += s * static_cast<acc_t>(x[d]);
  }
}

RECSYS_CPU_CLONES float sum_squares_f32(const float* g, int64_t D) {
  float acc = 0;
#pragma omp simd reduction(+ : acc)
  for (int64_t d = 0; d < D; ++d) acc += g[d] * g[d];
  return acc;
}

template <typename acc_t>
acc_t sum_squares(const acc_t* g, int64_t D) {
  if constexpr (std::is_same_v<acc_t, float>) {
    return sum_squares_f32(g, D);
  } else {
    acc_t acc = 0;
    for (int64_t d = 0; d < D; ++d) acc += g[d] * g[d];
    return acc;
  }
}

template <typename scalar_t>
inline scalar_t round_to(float v, uint32_t row_key, int64_t d, bool stochastic) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    return v;
  } else {
    if (!stochastic) return static_cast<scalar_t>(v);
    uint32_t bits;
    std::memcpy(&bits, &v, 4);
    const uint32_t rnd = rowwise_mix32(row_key ^ static_cast<uint32_t>(d));
    if constexpr (std::is_same_v<scalar_t, at::BFloat16>) {
      bits = rowwise_sr_bits(bits, rnd, 16);
      return at::BFloat16(static_cast<uint16_t>(bits >> 16), at::BFloat16::from_bits());
    } else {
      bits = rowwise_sr_bits(bits, rnd, 13);
      float t;
      std::memcpy(&t, &bits, 4);
      return static_cast<scalar_t>(t);  // exact in fp16's normal range
    }
  }
}

template <typename scalar_t>
inline scalar_t round_to(double v, uint32_t, int64_t, bool) {
  return static_cast<scalar_t>(v);
}

// Applies one step to row `row` given its summed gradient g (D values, acc_t).
template <typename scalar_t, typename acc_t, typename mom_t>
void update_row(scalar_t* w, mom_t* m, acc_t* g, int64_t D, int64_t row, const RowwiseAdagradHyper& h) {
  const acc_t wd = static_cast<acc_t>(h.weight_decay);
  const acc_t lr = static_cast<acc_t>(h.lr);
  acc_t sumsq;
  if (h.mode == kWeightDecayL2) {
    sumsq = 0;
    for (int64_t d = 0; d < D; ++d) {
      const acc_t gg = g[d] + wd * static_cast<acc_t>(w[d]);
      sumsq += gg * gg;
    }
  } else {
    sumsq = sum_squares(g, D);
  }
  const acc_t m_new = static_cast<acc_t>(*m) + sumsq / static_cast<acc_t>(D);
  *m = static_cast<mom_t>(m_new);
  const acc_t multiplier = lr / (std::sqrt(m_new) + static_cast<acc_t>(h.eps));
  acc_t correction = 1;
  if (h.mode == kWeightDecayL2) correction = acc_t(1) - multiplier * wd;
  else if (h.mode == kWeightDecayDecoupled) correction = acc_t(1) - lr * wd;
  const bool sr = h.stochastic && !std::is_same_v<scalar_t, float> && !std::is_same_v<scalar_t, double>;
  const uint32_t row_key = sr ? rowwise_sr_row_key(h.sr_key, row) : 0U;
  for (int64_t d = 0; d < D; ++d) {
    const acc_t v = correction * static_cast<acc_t>(w[d]) - multiplier * g[d];
    w[d] = round_to<scalar_t>(v, row_key, d, sr);
  }
}

// Where occurrence p's gradient row lives, and its scale.
struct GradSource {
  const void* base = nullptr;
  int64_t ld = 0;                     // elements between rows of grad_rows / grad_output
  const int64_t* bag_of = nullptr;    // fused: bag of each occurrence (null: row p of grad_rows)
  const int64_t* offsets = nullptr;   // fused: (T*B + 1,) as int64
  const double* psw = nullptr;        // fused: per-sample weights as float64 (exact for every input dtype)
  int64_t B = 1, D = 0;
  bool mean = false;
};

template <typename scalar_t, typename grad_t, typename mom_t>
void update_sorted(at::Tensor& weight, at::Tensor& momentum, const SortedRows& s, const GradSource& src,
                   const RowwiseAdagradHyper& h) {
  using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
  const int64_t N = static_cast<int64_t>(s.keys.size());
  const int64_t D = src.D;
  scalar_t* wp = weight.mutable_data_ptr<scalar_t>();
  mom_t* mp = momentum.mutable_data_ptr<mom_t>();
  const grad_t* gp = static_cast<const grad_t*>(src.base);
  const int64_t grain = std::max<int64_t>(1, 16384 / D);
  at::parallel_for(0, N, grain, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> g(D);
    int64_t i = begin;
    while (i < end && i > 0 && s.row(i) == s.row(i - 1)) ++i;  // that run belongs to the previous slice
    while (i < end) {
      const int64_t r = s.row(i);
      std::fill(g.begin(), g.end(), acc_t(0));
      int64_t j = i;
      for (; j < N && s.row(j) == r; ++j) {
        const int64_t p = s.pos(j);
        if (src.bag_of == nullptr) {
          accumulate(g.data(), gp + p * src.ld, acc_t(1), D);
        } else {
          const int64_t bag = src.bag_of[p];
          const int64_t t = bag / src.B, b = bag - t * src.B;
          acc_t scale = 1;
          if (src.psw != nullptr) scale = static_cast<acc_t>(src.psw[p]);
          if (src.mean) scale = acc_t(1) / static_cast<acc_t>(src.offsets[bag + 1] - src.offsets[bag]);
          accumulate(g.data(), gp + b * src.ld + t * D, scale, D);
        }
      }
      update_row(wp + r * D, mp + r, g.data(), D, r, h);
      i = j;
    }
  });
}

void check_cpu(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor for the CPU kernel, got ", fmt(t.device()));
}

std::vector<int64_t> as_int64(const at::Tensor& t) {
  const auto c = t.to(at::kLong).contiguous();
  const int64_t* p = c.const_data_ptr<int64_t>();
  return std::vector<int64_t>(p, p + c.numel());
}

template <typename scalar_t>
void dispatch_grad(at::Tensor& weight, at::Tensor& momentum, const SortedRows& s, const GradSource& src,
                   const RowwiseAdagradHyper& h, at::ScalarType grad_dtype) {
  // momentum is float32, or float64 beside a float64 weight (the float64 oracle)
  if (momentum.scalar_type() == at::kDouble) {
    if constexpr (std::is_same_v<scalar_t, double>) {
      if (grad_dtype == weight.scalar_type()) update_sorted<scalar_t, scalar_t, double>(weight, momentum, s, src, h);
      else update_sorted<scalar_t, float, double>(weight, momentum, s, src, h);
      return;
    }
  }
  if (grad_dtype == weight.scalar_type()) update_sorted<scalar_t, scalar_t, float>(weight, momentum, s, src, h);
  else update_sorted<scalar_t, float, float>(weight, momentum, s, src, h);
}

void run_update(at::Tensor& weight, at::Tensor& momentum, const std::vector<int64_t>& rows, const GradSource& src,
                const RowwiseAdagradHyper& h, at::ScalarType grad_dtype) {
  if (rows.empty()) return;
  const SortedRows s = sort_rows(rows, weight.size(0));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight.scalar_type(), "rowwise_adagrad_cpu",
                                  [&] { dispatch_grad<scalar_t>(weight, momentum, s, src, h, grad_dtype); });
}

void rowwise_adagrad_update_cpu(at::Tensor& weight, at::Tensor& momentum, const at::Tensor& indices,
                                const at::Tensor& grad_rows, double lr, double eps, double weight_decay,
                                c10::string_view weight_decay_mode, int64_t stochastic_rounding_seed) {
  const auto shape = check_rowwise_update_inputs(weight, momentum, indices, grad_rows);
  const auto h = check_rowwise_adagrad_hyper(lr, eps, weight_decay, weight_decay_mode, stochastic_rounding_seed);
  check_cpu(weight, "weight");
  const std::vector<int64_t> rows = as_int64(indices);
  for (int64_t p = 0; p < shape.N; ++p) {
    TORCH_CHECK(rows[p] >= 0 && rows[p] < shape.E, "indices[", fmt(p), "] = ", fmt(rows[p]),
                " is out of range for weight with E = ", fmt(shape.E), " rows");
  }
  const auto g = grad_rows.stride(1) == 1 ? grad_rows : grad_rows.contiguous();
  GradSource src;
  src.base = g.const_data_ptr();
  src.ld = g.stride(0);
  src.D = shape.D;
  run_update(weight, momentum, rows, src, h, g.scalar_type());
}

void embedding_bag_backward_rowwise_adagrad_cpu(
    at::Tensor& weight, at::Tensor& momentum, const at::Tensor& indices, const at::Tensor& offsets,
    const at::Tensor& grad_output, const std::optional<at::Tensor>& table_offsets, c10::string_view pooling,
    const std::optional<at::Tensor>& per_sample_weights, double lr, double eps, double weight_decay,
    c10::string_view weight_decay_mode, int64_t stochastic_rounding_seed) {
  const auto shape = check_rowwise_fused_inputs(weight, momentum, indices, offsets, grad_output, table_offsets,
                                                pooling, per_sample_weights);
  const auto h = check_rowwise_adagrad_hyper(lr, eps, weight_decay, weight_decay_mode, stochastic_rounding_seed);
  check_cpu(weight, "weight");
  const int64_t N = shape.N, T = shape.T, B = shape.B, E = shape.E;
  const std::vector<int64_t> off = as_int64(offsets);
  std::vector<int64_t> tabs = table_offsets.has_value() ? as_int64(*table_offsets) : std::vector<int64_t>{0, E};
  TORCH_CHECK(tabs[0] >= 0 && tabs[T] <= E, "table_offsets must lie in [0, E = ", fmt(E), "], got first ", fmt(tabs[0]),
              " and last ", fmt(tabs[T]));
  for (int64_t t = 0; t < T; ++t)
    TORCH_CHECK(tabs[t] <= tabs[t + 1], "table_offsets must be non-decreasing, got ", fmt(tabs[t]), " then ",
                fmt(tabs[t + 1]), " at table ", fmt(t));
  TORCH_CHECK(off[0] == 0 && off[T * B] == N, "offsets must start at 0 and end at N = ", fmt(N), ", got ", fmt(off[0]),
              " and ", fmt(off[T * B]));
  for (int64_t k = 0; k < T * B; ++k)
    TORCH_CHECK(off[k] <= off[k + 1], "offsets must be non-decreasing, got ", fmt(off[k]), " then ", fmt(off[k + 1]),
                " at bag ", fmt(k));
  std::vector<int64_t> bag_of(N);
  at::parallel_for(0, T * B, 1024, [&](int64_t kb, int64_t ke) {
    for (int64_t k = kb; k < ke; ++k)
      for (int64_t p = off[k]; p < off[k + 1]; ++p) bag_of[p] = k;
  });
  const std::vector<int64_t> idx = as_int64(indices);
  std::vector<int64_t> rows(N);
  for (int64_t p = 0; p < N; ++p) {
    const int64_t t = bag_of[p] / B;
    const int64_t n = tabs[t + 1] - tabs[t];
    TORCH_CHECK(idx[p] >= 0 && idx[p] < n, "indices[", fmt(p), "] = ", fmt(idx[p]), " is out of range for table ", fmt(t),
                " with ", fmt(n), " rows");
    rows[p] = tabs[t] + idx[p];
  }
  const auto g = grad_output.stride(1) == 1 ? grad_output : grad_output.contiguous();
  std::vector<double> psw;
  GradSource src;
  src.base = g.const_data_ptr();
  src.ld = g.stride(0);
  src.bag_of = bag_of.data();
  src.offsets = off.data();
  src.B = B;
  src.D = shape.D;
  src.mean = shape.mean;
  if (per_sample_weights.has_value()) {
    const auto c = per_sample_weights->to(at::kDouble).contiguous();
    psw.assign(c.const_data_ptr<double>(), c.const_data_ptr<double>() + N);
    src.psw = psw.data();
  }
  run_update(weight, momentum, rows, src, h, g.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(recsys, CPU, m) {
  m.impl("rowwise_adagrad_update_", &rowwise_adagrad_update_cpu);
  m.impl("embedding_bag_backward_rowwise_adagrad_", &embedding_bag_backward_rowwise_adagrad_cpu);
}

}  // namespace recsys
