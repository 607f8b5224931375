// Jagged HSTU attention, CPU kernels (HSTU: Zhai et al., ICML 2024; semantics in
// recsys_kernels/reference/hstu_attention.py).
//
// One task per (sequence, head), run in parallel. A task converts its rows of Q, K, V (and dO) once to a
// float32 (float64 for double) scratch block that stays in cache, then walks the valid (i, j) pairs of the
// mask. The relative bias is computed per pair from the two small tables and the sequence's timestamps,
// never materialised. No softmax, so the forward needs no running max/normaliser: O_i = Σ_j P_ij V_j.
//
// Backward: each task owns the rows of dQ, dK, dV of its (sequence, head), so they are written without
// synchronisation. The bias gradients are sums over every task: tasks are split into a fixed number of
// groups (independent of the thread count), each group accumulates into its own buffer in task order, and
// the buffers are summed in group order, so the result is bit-reproducible.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <vector>

#include "hstu_attention/hstu_attention.h"

namespace recsys {
namespace {

constexpr int64_t kBiasGroups = 64;

void check_cpu(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor for the CPU kernel, got ", fmt(t.device()));
}

// Keys past this one are masked for query i: with a causal mask and no contextual prefix every valid pair
// has j <= i (ids never decrease with the position), so the upper triangle is skipped.
inline int64_t key_end(const HstuMask& m, int64_t i) { return m.causal && m.c == 0 ? i + 1 : m.n; }

template <typename acc_t>
inline acc_t dot(const acc_t* a, const acc_t* b, int64_t n) {
  acc_t s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t d = 0; d < n; ++d) s += a[d] * b[d];
  return s;
}

template <typename acc_t>
inline void axpy(acc_t a, const acc_t* x, acc_t* y, int64_t n) {
#pragma omp simd
  for (int64_t d = 0; d < n; ++d) y[d] += a * x[d];
}

// Everything a task needs besides its rows: the bias tables in acc_t, timestamps, mask parameters.
template <typename acc_t>
struct Ctx {
  const HstuShape* s;
  acc_t alpha, inv_n;
  bool causal;
  int64_t c, w;
  std::vector<acc_t> pos, time;  // empty when absent
  std::vector<int64_t> ts;  // empty without time_bias

  HstuMask mask(int64_t b) const {
    const int64_t n = s->offsets[b + 1] - s->offsets[b];
    const bool targets = !s->num_targets.empty();
    return make_hstu_mask(n, targets ? s->num_targets[b] : 0, targets, c, w, causal);
  }
  // R[i, j] for sequence b (rows start at row0, length n); time index also returned for the backward.
  acc_t bias(int64_t row0, int64_t n, int64_t i, int64_t j, int64_t* bucket) const {
    acc_t r = 0;
    if (!pos.empty()) r += pos[j - i + s->N - 1];
    if (!time.empty()) {
      const int64_t nxt = std::min(i + 1, n - 1);
      *bucket = hstu_time_bucket(ts[row0 + nxt] - ts[row0 + j], static_cast<int64_t>(time.size()) - 1, s->log_bucket);
      r += time[*bucket];
    }
    return r;
  }
};

template <typename scalar_t, typename acc_t>
std::vector<acc_t> to_acc(const std::optional<at::Tensor>& t) {
  std::vector<acc_t> out;
  if (!t.has_value()) return out;
  const auto c = t->contiguous();
  const scalar_t* p = c.const_data_ptr<scalar_t>();
  out.resize(c.numel());
  for (int64_t i = 0; i < c.numel(); ++i) out[i] = static_cast<acc_t>(p[i]);
  return out;
}

template <typename scalar_t, typename acc_t>
Ctx<acc_t> make_ctx(const HstuShape& s, double alpha, bool causal, int64_t c, int64_t w,
                    const std::optional<at::Tensor>& timestamps, const std::optional<at::Tensor>& pos_bias,
                    const std::optional<at::Tensor>& time_bias) {
  Ctx<acc_t> ctx;
  ctx.s = &s;
  ctx.alpha = static_cast<acc_t>(alpha);
  ctx.inv_n = acc_t(1) / static_cast<acc_t>(s.N);
  ctx.causal = causal;
  ctx.c = c;
  ctx.w = w;
  ctx.pos = to_acc<scalar_t, acc_t>(pos_bias);
  ctx.time = to_acc<scalar_t, acc_t>(time_bias);
  if (time_bias.has_value()) {
    ctx.ts = read_index_vector(*timestamps, "timestamps");
  }
  return ctx;
}

// Rows [row0, row0 + n) of head h of x (L, H, D) contiguous, into dst (n, D) in acc_t.
template <typename scalar_t, typename acc_t>
void load_rows(const scalar_t* x, int64_t H, int64_t D, int64_t row0, int64_t n, int64_t h, acc_t* dst) {
  for (int64_t i = 0; i < n; ++i) {
    const scalar_t* src = x + ((row0 + i) * H + h) * D;
    for (int64_t d = 0; d < D; ++d) dst[i * D + d] = static_cast<acc_t>(src[d]);
  }
}

template <typename scalar_t, typename acc_t>
void store_rows(const acc_t* src, int64_t H, int64_t D, int64_t row0, int64_t n, int64_t h, scalar_t* x) {
  for (int64_t i = 0; i < n; ++i) {
    scalar_t* dst = x + ((row0 + i) * H + h) * D;
    for (int64_t d = 0; d < D; ++d) dst[d] = static_cast<scalar_t>(src[i * D + d]);
  }
}

template <typename scalar_t>
void forward_kernel(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::Tensor& out,
                    const HstuShape& s, double alpha, bool causal, int64_t c, int64_t w,
                    const std::optional<at::Tensor>& timestamps, const std::optional<at::Tensor>& pos_bias,
                    const std::optional<at::Tensor>& time_bias) {
  using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
  const auto ctx = make_ctx<scalar_t, acc_t>(s, alpha, causal, c, w, timestamps, pos_bias, time_bias);
  const scalar_t* qp = q.const_data_ptr<scalar_t>();
  const scalar_t* kp = k.const_data_ptr<scalar_t>();
  const scalar_t* vp = v.const_data_ptr<scalar_t>();
  scalar_t* op = out.mutable_data_ptr<scalar_t>();
  const int64_t H = s.H, Dqk = s.Dqk, Dv = s.Dv;
  at::parallel_for(0, s.B * H, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> qb, kb, vb, ob;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / H, h = task % H, row0 = s.offsets[b], n = s.offsets[b + 1] - row0;
      if (n == 0) continue;
      qb.resize(n * Dqk);
      kb.resize(n * Dqk);
      vb.resize(n * Dv);
      ob.assign(n * Dv, acc_t(0));
      load_rows(qp, H, Dqk, row0, n, h, qb.data());
      load_rows(kp, H, Dqk, row0, n, h, kb.data());
      load_rows(vp, H, Dv, row0, n, h, vb.data());
      const HstuMask m = ctx.mask(b);
      for (int64_t i = 0; i < n; ++i) {
        for (int64_t j = 0; j < key_end(m, i); ++j) {
          if (!m.valid(i, j)) continue;
          int64_t bucket = 0;
          const acc_t x = ctx.alpha * dot(qb.data() + i * Dqk, kb.data() + j * Dqk, Dqk) +
                          ctx.bias(row0, n, i, j, &bucket);
          const acc_t p = x / (acc_t(1) + std::exp(-x)) * ctx.inv_n;
          axpy(p, vb.data() + j * Dv, ob.data() + i * Dv, Dv);
        }
      }
      store_rows(ob.data(), H, Dv, row0, n, h, op);
    }
  });
}

template <typename scalar_t>
void backward_kernel(const at::Tensor& grad_output, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                     at::Tensor& dq, at::Tensor& dk, at::Tensor& dv, at::Tensor& d_pos, at::Tensor& d_time,
                     const HstuShape& s, double alpha, bool causal, int64_t c, int64_t w,
                     const std::optional<at::Tensor>& timestamps, const std::optional<at::Tensor>& pos_bias,
                     const std::optional<at::Tensor>& time_bias) {
  using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
  const auto ctx = make_ctx<scalar_t, acc_t>(s, alpha, causal, c, w, timestamps, pos_bias, time_bias);
  const scalar_t* gp = grad_output.const_data_ptr<scalar_t>();
  const scalar_t* qp = q.const_data_ptr<scalar_t>();
  const scalar_t* kp = k.const_data_ptr<scalar_t>();
  const scalar_t* vp = v.const_data_ptr<scalar_t>();
  scalar_t* dqp = dq.mutable_data_ptr<scalar_t>();
  scalar_t* dkp = dk.mutable_data_ptr<scalar_t>();
  scalar_t* dvp = dv.mutable_data_ptr<scalar_t>();
  const int64_t H = s.H, Dqk = s.Dqk, Dv = s.Dv, tasks = s.B * H;
  const int64_t n_pos = static_cast<int64_t>(ctx.pos.size()), n_time = static_cast<int64_t>(ctx.time.size());
  const int64_t groups = std::max<int64_t>(1, std::min(tasks, kBiasGroups));
  std::vector<acc_t> g_pos(groups * n_pos, acc_t(0)), g_time(groups * n_time, acc_t(0));
  at::parallel_for(0, groups, 1, [&](int64_t g_begin, int64_t g_end) {
    std::vector<acc_t> qb, kb, vb, gb, dqb, dkb, dvb;
    for (int64_t g = g_begin; g < g_end; ++g) {
      acc_t* gpos = g_pos.data() + g * n_pos;
      acc_t* gtime = g_time.data() + g * n_time;
      for (int64_t task = g * tasks / groups; task < (g + 1) * tasks / groups; ++task) {
        const int64_t b = task / H, h = task % H, row0 = s.offsets[b], n = s.offsets[b + 1] - row0;
        if (n == 0) continue;
        qb.resize(n * Dqk);
        kb.resize(n * Dqk);
        vb.resize(n * Dv);
        gb.resize(n * Dv);
        dqb.assign(n * Dqk, acc_t(0));
        dkb.assign(n * Dqk, acc_t(0));
        dvb.assign(n * Dv, acc_t(0));
        load_rows(qp, H, Dqk, row0, n, h, qb.data());
        load_rows(kp, H, Dqk, row0, n, h, kb.data());
        load_rows(vp, H, Dv, row0, n, h, vb.data());
        load_rows(gp, H, Dv, row0, n, h, gb.data());
        const HstuMask m = ctx.mask(b);
        for (int64_t i = 0; i < n; ++i) {
          for (int64_t j = 0; j < key_end(m, i); ++j) {
            if (!m.valid(i, j)) continue;
            int64_t bucket = 0;
            const acc_t x = ctx.alpha * dot(qb.data() + i * Dqk, kb.data() + j * Dqk, Dqk) +
                            ctx.bias(row0, n, i, j, &bucket);
            const acc_t sig = acc_t(1) / (acc_t(1) + std::exp(-x));
            const acc_t p = x * sig * ctx.inv_n;
            const acc_t dp = dot(gb.data() + i * Dv, vb.data() + j * Dv, Dv);
            const acc_t ds = dp * ctx.inv_n * sig * (acc_t(1) + x * (acc_t(1) - sig));
            axpy(p, gb.data() + i * Dv, dvb.data() + j * Dv, Dv);
            axpy(ctx.alpha * ds, kb.data() + j * Dqk, dqb.data() + i * Dqk, Dqk);
            axpy(ctx.alpha * ds, qb.data() + i * Dqk, dkb.data() + j * Dqk, Dqk);
            if (n_pos) gpos[j - i + s.N - 1] += ds;
            if (n_time) gtime[bucket] += ds;
          }
        }
        store_rows(dqb.data(), H, Dqk, row0, n, h, dqp);
        store_rows(dkb.data(), H, Dqk, row0, n, h, dkp);
        store_rows(dvb.data(), H, Dv, row0, n, h, dvp);
      }
    }
  });
  auto reduce = [&](const std::vector<acc_t>& buf, int64_t len, at::Tensor& out) {
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    for (int64_t t = 0; t < len; ++t) {
      acc_t sum = 0;
      for (int64_t g = 0; g < groups; ++g) sum += buf[g * len + t];
      o[t] = static_cast<scalar_t>(sum);
    }
  };
  if (n_pos) reduce(g_pos, n_pos, d_pos);
  if (n_time) reduce(g_time, n_time, d_time);
}

void check_all_cpu(const at::Tensor& q, const at::Tensor& seq_offsets, const std::optional<at::Tensor>& num_targets,
                   const std::optional<at::Tensor>& timestamps, const std::optional<at::Tensor>& pos_bias,
                   const std::optional<at::Tensor>& time_bias) {
  check_cpu(q, "q");
  check_cpu(seq_offsets, "seq_offsets");
  if (num_targets.has_value()) check_cpu(*num_targets, "num_targets");
  if (timestamps.has_value()) check_cpu(*timestamps, "timestamps");
  if (pos_bias.has_value()) check_cpu(*pos_bias, "pos_bias");
  if (time_bias.has_value()) check_cpu(*time_bias, "time_bias");
}

at::Tensor hstu_attention_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                              const at::Tensor& seq_offsets, int64_t max_seq_len, double alpha, bool causal,
                              const std::optional<at::Tensor>& num_targets, int64_t contextual_seq_len,
                              int64_t max_attn_len, const std::optional<at::Tensor>& timestamps,
                              const std::optional<at::Tensor>& pos_bias, const std::optional<at::Tensor>& time_bias,
                              c10::string_view time_bucket) {
  const auto s = check_hstu_inputs(q, k, v, seq_offsets, max_seq_len, num_targets, contextual_seq_len, max_attn_len,
                                   timestamps, pos_bias, time_bias, time_bucket);
  check_all_cpu(q, seq_offsets, num_targets, timestamps, pos_bias, time_bias);
  auto out = at::zeros({s.L, s.H, s.Dv}, q.options());
  const auto qc = q.contiguous(), kc = k.contiguous(), vc = v.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "hstu_attention_cpu", [&] {
    forward_kernel<scalar_t>(qc, kc, vc, out, s, alpha, causal, contextual_seq_len, max_attn_len, timestamps,
                             pos_bias, time_bias);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> hstu_attention_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& seq_offsets, int64_t max_seq_len, double alpha, bool causal,
    const std::optional<at::Tensor>& num_targets, int64_t contextual_seq_len, int64_t max_attn_len,
    const std::optional<at::Tensor>& timestamps, const std::optional<at::Tensor>& pos_bias,
    const std::optional<at::Tensor>& time_bias, c10::string_view time_bucket) {
  const auto s = check_hstu_inputs(q, k, v, seq_offsets, max_seq_len, num_targets, contextual_seq_len, max_attn_len,
                                   timestamps, pos_bias, time_bias, time_bucket);
  check_all_cpu(q, seq_offsets, num_targets, timestamps, pos_bias, time_bias);
  TORCH_CHECK(grad_output.sizes() == v.sizes(), "grad_output must have v's shape ", fmt(shape(v.sizes())), ", got ",
              fmt(shape(grad_output.sizes())));
  check_same_dtype(grad_output, "grad_output", v, "v");
  check_cpu(grad_output, "grad_output");
  auto dq = at::zeros_like(q, at::MemoryFormat::Contiguous);
  auto dk = at::zeros_like(k, at::MemoryFormat::Contiguous);
  auto dv = at::zeros_like(v, at::MemoryFormat::Contiguous);
  auto d_pos = pos_bias.has_value() ? at::empty_like(*pos_bias) : at::zeros({0}, q.options());
  auto d_time = time_bias.has_value() ? at::empty_like(*time_bias) : at::zeros({0}, q.options());
  const auto gc = grad_output.contiguous(), qc = q.contiguous(), kc = k.contiguous(), vc = v.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "hstu_attention_backward_cpu", [&] {
    backward_kernel<scalar_t>(gc, qc, kc, vc, dq, dk, dv, d_pos, d_time, s, alpha, causal, contextual_seq_len,
                              max_attn_len, timestamps, pos_bias, time_bias);
  });
  return std::make_tuple(dq, dk, dv, d_pos, d_time);
}

}  // namespace

TORCH_LIBRARY_IMPL(recsys, CPU, m) {
  m.impl("hstu_attention", &hstu_attention_cpu);
  m.impl("hstu_attention_backward", &hstu_attention_backward_cpu);
}

}  // namespace recsys
