// Jagged HSTU attention: input checks, the attention mask and the time bucket, shared by the C++ kernels.
// Semantics in recsys_kernels/reference/hstu_attention.py (the mask follows generative-recommenders'
// _get_valid_attn_mask; the relative bias its RelativeBucketedTimeAndPositionBasedBias).
#pragma once
#include <cmath>
#include <optional>
#include <string_view>
#include <vector>

#include "common/checks.h"
#include "common/host_device.h"
#include "jagged/jagged.h"


namespace recsys {

constexpr int64_t kHstuMaxHeadDim = 256;

// Per-sequence mask parameters: n the length, limit the id limit (n - c + 1 with a contextual prefix,
// else n; minus num_targets), c the contextual prefix, w the local window (0: none).
struct HstuMask {
  int64_t n, limit, c, w;
  bool targets, causal;

  RECSYS_HOST_DEVICE int64_t id(int64_t x) const {
    if (c > 0) x = x - c + 1 > 0 ? x - c + 1 : 0;
    if (targets && x > limit) x = limit;
    return x;
  }
  RECSYS_HOST_DEVICE bool valid(int64_t i, int64_t j) const {
    const int64_t ii = id(i), jj = id(j);
    int64_t dist = ii - jj;
    if (!causal && dist < 0) dist = -dist;
    bool ok = i == j || dist > 0;
    if (w > 0) ok = ok && dist <= w;
    if (c > 0) ok = ok || (ii == 0 && jj < limit);
    return ok;
  }
};

inline HstuMask make_hstu_mask(int64_t n, int64_t num_targets, bool has_targets, int64_t c, int64_t w, bool causal) {
  return HstuMask{n, (c > 0 ? n - c + 1 : n) - num_targets, c, w, has_targets, causal};
}

// bucket(x) in float32, as every backend computes it: "log" floor(log(max(|x|, 1)) / 0.301), "sqrt"
// floor(sqrt(|x|)), clamped to [0, nb].
// x = float(|diff|); the CUDA kernel tabulates the "log" case per quarter-octave from this function. logf (glibc)
// and torch.log (Sleef, 1 ULP) differ by an ULP for some x, so a gap within an ULP of a step can land one bucket
// apart here and in the torch reference: 11,455,709 is bucket 54 here and 53 there, 15,479,070 is 54 and 55.
RECSYS_HOST_DEVICE int64_t hstu_time_bucket_of(float x, int64_t nb, bool log_bucket) {
  const float b = log_bucket ? floorf(logf(x > 1.f ? x : 1.f) / 0.301f) : floorf(sqrtf(x));
  const int64_t k = static_cast<int64_t>(b);
  return k < 0 ? 0 : (k > nb ? nb : k);
}
RECSYS_HOST_DEVICE int64_t hstu_time_bucket(int64_t diff, int64_t nb, bool log_bucket) {
  return hstu_time_bucket_of(static_cast<float>(diff < 0 ? -diff : diff), nb, log_bucket);
}

struct HstuShape {
  int64_t L, H, Dqk, Dv, B, N;
  std::vector<int64_t> offsets, num_targets;  // num_targets empty when None
  bool log_bucket;
};

inline std::vector<int64_t> read_index_vector(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kInt || t.scalar_type() == at::kLong, name, " must be int32 or int64, got ",
              fmt(t.scalar_type()));
  const auto c = t.contiguous().to(at::kLong);
  const int64_t* p = c.const_data_ptr<int64_t>();
  return std::vector<int64_t>(p, p + c.numel());
}

inline HstuShape check_hstu_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                   const at::Tensor& seq_offsets, int64_t max_seq_len,
                                   const std::optional<at::Tensor>& num_targets, int64_t contextual_seq_len,
                                   int64_t max_attn_len, const std::optional<at::Tensor>& timestamps,
                                   const std::optional<at::Tensor>& pos_bias,
                                   const std::optional<at::Tensor>& time_bias, std::string_view time_bucket) {
  check_dim(q, 3, "q", "(L, H, Dqk)");
  check_dim(k, 3, "k", "(L, H, Dqk)");
  check_dim(v, 3, "v", "(L, H, Dv)");
  check_float_dtype(q, "q");
  check_same_dtype(q, "q", k, "k");
  check_same_dtype(q, "q", v, "v");
  check_same_device(q, "q", k, "k");
  check_same_device(q, "q", v, "v");
  check_same_device(q, "q", seq_offsets, "seq_offsets");
  TORCH_CHECK(k.sizes() == q.sizes(), "q and k must have the same shape (L, H, Dqk), got ", fmt(shape(q.sizes())),
              " and ", fmt(shape(k.sizes())));
  TORCH_CHECK(v.size(0) == q.size(0) && v.size(1) == q.size(1), "v must have shape (L, H, Dv) with q's L and H, got ",
              fmt(shape(v.sizes())), " for q ", fmt(shape(q.sizes())));
  TORCH_CHECK(q.size(2) >= 1 && q.size(2) <= kHstuMaxHeadDim, "q: head dim must be in [1, 256], got ", fmt(q.size(2)));
  TORCH_CHECK(v.size(2) >= 1 && v.size(2) <= kHstuMaxHeadDim, "v: head dim must be in [1, 256], got ", fmt(v.size(2)));
  HstuShape s;
  s.L = q.size(0);
  s.H = q.size(1);
  s.Dqk = q.size(2);
  s.Dv = v.size(2);
  s.offsets = read_offsets(seq_offsets, s.L, "seq_offsets");
  s.B = static_cast<int64_t>(s.offsets.size()) - 1;
  s.N = max_seq_len;
  TORCH_CHECK(max_seq_len >= 1, "max_seq_len must be >= 1, got ", fmt(max_seq_len));
  TORCH_CHECK(contextual_seq_len >= 0, "contextual_seq_len must be >= 0, got ", fmt(contextual_seq_len));
  TORCH_CHECK(max_attn_len >= 0, "max_attn_len must be >= 0, got ", fmt(max_attn_len));
  TORCH_CHECK(time_bucket == "log" || time_bucket == "sqrt", "time_bucket must be 'log' or 'sqrt', got '",
              fmt(std::string(time_bucket)), "'");
  s.log_bucket = time_bucket == "log";
  for (int64_t b = 0; b < s.B; ++b)
    TORCH_CHECK(s.offsets[b + 1] - s.offsets[b] <= max_seq_len, "seq_offsets: a sequence of length ",
                fmt(s.offsets[b + 1] - s.offsets[b]), " exceeds max_seq_len = ", fmt(max_seq_len));
  if (num_targets.has_value()) {
    const auto& nt = *num_targets;
    TORCH_CHECK(nt.dim() == 1 && nt.size(0) == s.B, "num_targets must be a (", fmt(s.B), ",) int32|int64 tensor, got ",
                fmt(shape(nt.sizes())));
    check_same_device(q, "q", nt, "num_targets");
    s.num_targets = read_index_vector(nt, "num_targets");
    for (int64_t b = 0; b < s.B; ++b)
      TORCH_CHECK(s.num_targets[b] >= 0 && s.num_targets[b] <= s.offsets[b + 1] - s.offsets[b],
                  "num_targets must be in [0, sequence length] for every sequence, got ", fmt(s.num_targets[b]),
                  " for sequence ", fmt(b));
  }
  if (pos_bias.has_value()) {
    TORCH_CHECK(pos_bias->dim() == 1 && pos_bias->size(0) == 2 * max_seq_len - 1,
                "pos_bias must have shape (2 * max_seq_len - 1,) = (", fmt(2 * max_seq_len - 1), ",), got ",
                fmt(shape(pos_bias->sizes())));
    check_same_dtype(q, "q", *pos_bias, "pos_bias");
    check_same_device(q, "q", *pos_bias, "pos_bias");
  }
  if (time_bias.has_value()) {
    TORCH_CHECK(time_bias->dim() == 1 && time_bias->size(0) >= 1,
                "time_bias must have shape (num_buckets + 1,), got ", fmt(shape(time_bias->sizes())));
    check_same_dtype(q, "q", *time_bias, "time_bias");
    check_same_device(q, "q", *time_bias, "time_bias");
    TORCH_CHECK(timestamps.has_value(), "timestamps are required with time_bias");
  }
  if (timestamps.has_value()) {
    TORCH_CHECK(timestamps->dim() == 1 && timestamps->size(0) == s.L &&
                    (timestamps->scalar_type() == at::kLong || timestamps->scalar_type() == at::kInt),
                "timestamps must be a (", fmt(s.L), ",) int64 tensor, got ", fmt(shape(timestamps->sizes())));
    check_same_device(q, "q", *timestamps, "timestamps");
  }
  return s;
}

}  // namespace recsys
