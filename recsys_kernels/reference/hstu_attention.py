"""Jagged HSTU attention with the fused relative attention bias, reference implementation (padded dense,
static shapes given max_seq_len; also the HPU path and the test oracle).

HSTU (Zhai et al., "Actions Speak Louder than Words: Trillion-Parameter Sequential Transducers for
Generative Recommendations", ICML 2024). Per sequence b (rows seq_offsets[b]:seq_offsets[b+1], length n)
and head h, with N = max_seq_len and no softmax:

    S = alpha Q Kᵀ + R,   P = SiLU(S) / N ⊙ M,   O = P V

Mask M (as generative-recommenders' ``_get_valid_attn_mask``): position ids id(i) = i; with a contextual
prefix c > 0, id(i) = max(i - c + 1, 0) and the id limit is n - c + 1 (else n); with targets the limit drops
by num_targets[b] and ids are clamped to it (so the targets share one id). With dist = id(i) - id(j)
(|dist| when not causal): M[i, j] = (i == j) or dist > 0; with max_attn_len > 0 also dist <= max_attn_len;
with c > 0, rows of id 0 (the contextual prefix) also see every column whose id is below the limit.
Positions past n are masked.

Relative bias R (zero when pos_bias and time_bias are None; either may be given alone):
    R[i, j] = pos_bias[j - i + N - 1] + time_bias[bucket(ts[i + 1] - ts[j])]
where ts[i + 1] is the next item's timestamp (the last item of a sequence uses its own), and
bucket(x) = clamp(floor(log(max(|x|, 1)) / 0.301), 0, nb) ("log") or clamp(floor(sqrt(|x|)), 0, nb)
("sqrt"), nb = len(time_bias) - 1, computed in float32 by every backend.

Precision: float32 accumulation (float64 for float64 inputs); P and dS are rounded to the input dtype
before their matmuls, where a tensor-core kernel rounds them, so this reference run in bf16/fp16 is the
yardstick the kernels are held to.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from recsys_kernels.reference.jagged import (_eager, check_index_device, check_offsets, index_on,
                                             jagged_to_padded_dense, padded_dense_to_jagged)

TIME_BUCKETS = ("log", "sqrt")
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
MAX_HEAD_DIM = 256


def check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seq_offsets: torch.Tensor, max_seq_len: int,
                 num_targets: torch.Tensor | None, contextual_seq_len: int, max_attn_len: int,
                 timestamps: torch.Tensor | None, pos_bias: torch.Tensor | None, time_bias: torch.Tensor | None,
                 time_bucket: str) -> torch.Tensor | None:
    """Raise ValueError naming the argument; value checks on offsets/targets only in eager mode. Returns the
    int64 CPU copy of seq_offsets that the value checks read (None when they read nothing: tracing, fake, HPU)."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 3:
            raise ValueError(f"{name} must have shape (L, H, D), got {tuple(t.shape)}")
        if t.dtype not in _FLOAT_DTYPES:
            raise ValueError(f"{name} must be float32, float16 or bfloat16 (or float64), got {t.dtype}")
        if t.dtype != q.dtype:
            raise ValueError(f"q and {name} must have the same dtype, got {q.dtype} and {t.dtype}")
        if t.device != q.device:
            raise ValueError(f"q and {name} must be on the same device, got {q.device} and {t.device}")
        if not 1 <= t.shape[2] <= MAX_HEAD_DIM:
            raise ValueError(f"{name}: head dim must be in [1, {MAX_HEAD_DIM}], got {t.shape[2]}")
    if k.shape != q.shape:
        raise ValueError(f"q and k must have the same shape (L, H, Dqk), got {tuple(q.shape)} and {tuple(k.shape)}")
    if v.shape[:2] != q.shape[:2]:
        raise ValueError(f"v must have shape (L, H, Dv) with q's L and H, got {tuple(v.shape)} for q {tuple(q.shape)}")
    check_index_device(q, "q", seq_offsets, "seq_offsets")
    offsets_read = check_offsets(seq_offsets, q.shape[0], "seq_offsets")
    if max_seq_len < 1:
        raise ValueError(f"max_seq_len must be >= 1, got {max_seq_len}")
    if contextual_seq_len < 0:
        raise ValueError(f"contextual_seq_len must be >= 0, got {contextual_seq_len}")
    if max_attn_len < 0:
        raise ValueError(f"max_attn_len must be >= 0, got {max_attn_len}")
    if time_bucket not in TIME_BUCKETS:
        raise ValueError(f"time_bucket must be 'log' or 'sqrt', got {time_bucket!r}")
    B = seq_offsets.shape[0] - 1
    if num_targets is not None:
        if num_targets.shape != (B,) or num_targets.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"num_targets must be a ({B},) int32|int64 tensor, got {tuple(num_targets.shape)} "
                             f"{num_targets.dtype}")
        check_index_device(q, "q", num_targets, "num_targets")
    if pos_bias is not None:
        if pos_bias.shape != (2 * max_seq_len - 1,):
            raise ValueError(f"pos_bias must have shape (2 * max_seq_len - 1,) = ({2 * max_seq_len - 1},), "
                             f"got {tuple(pos_bias.shape)}")
        if pos_bias.dtype != q.dtype or pos_bias.device != q.device:
            raise ValueError(f"pos_bias must have q's dtype and device, got {pos_bias.dtype} on {pos_bias.device}")
    if time_bias is not None:
        if time_bias.dim() != 1 or time_bias.shape[0] < 1:
            raise ValueError(f"time_bias must have shape (num_buckets + 1,), got {tuple(time_bias.shape)}")
        if time_bias.dtype != q.dtype or time_bias.device != q.device:
            raise ValueError(f"time_bias must have q's dtype and device, got {time_bias.dtype} on {time_bias.device}")
        if timestamps is None:
            raise ValueError("timestamps are required with time_bias")
    if timestamps is not None:
        if timestamps.shape != (q.shape[0],) or timestamps.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"timestamps must be a ({q.shape[0]},) int64 tensor, got {tuple(timestamps.shape)} "
                             f"{timestamps.dtype}")
        if timestamps.device != q.device:
            raise ValueError(f"timestamps and q must be on the same device, got {timestamps.device} and {q.device}")
    if offsets_read is not None and (num_targets is None or _eager(num_targets)):
        lengths = offsets_read.diff()
        longest = lengths.max().item() if B > 0 else 0
        if longest > max_seq_len:
            raise ValueError(f"seq_offsets: a sequence of length {longest} exceeds max_seq_len = {max_seq_len}")
        if num_targets is not None and B > 0:
            nt = num_targets.detach().to("cpu", torch.int64)
            if bool((nt < 0).any()) or bool((nt > lengths).any()):
                raise ValueError("num_targets must be in [0, sequence length] for every sequence")
    return offsets_read


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _lengths(seq_offsets: torch.Tensor) -> torch.Tensor:
    o = seq_offsets.to(torch.int64)
    return o[1:] - o[:-1]


def valid_mask(lengths: torch.Tensor, N: int, causal: bool, num_targets: torch.Tensor | None,
               contextual_seq_len: int, max_attn_len: int) -> torch.Tensor:
    """(B, N, N) bool: M[b, i, j] of the module docstring."""
    B = lengths.shape[0]
    device = lengths.device
    pos = torch.arange(N, device=device, dtype=torch.int64)
    ids = pos.view(1, N).expand(B, N)
    max_ids = lengths.view(B, 1)
    if contextual_seq_len > 0:
        ids = (ids - contextual_seq_len + 1).clamp(min=0)
        max_ids = max_ids - contextual_seq_len + 1
    if num_targets is not None:
        max_ids = max_ids - num_targets.to(torch.int64).view(B, 1)
        ids = torch.minimum(ids, max_ids)
    row, col = ids.view(B, N, 1), ids.view(B, 1, N)
    dist = row - col
    if not causal:
        dist = dist.abs()
    valid = (pos.view(1, N, 1) == pos.view(1, 1, N)) | (dist > 0)
    if max_attn_len > 0:
        valid = valid & (dist <= max_attn_len)
    if contextual_seq_len > 0:
        valid = valid | ((row == 0) & (col < max_ids.view(B, 1, 1)))
    inside = pos.view(1, N) < lengths.view(B, 1)
    return valid & inside.view(B, N, 1) & inside.view(B, 1, N)


def time_buckets(diff: torch.Tensor, num_buckets: int, time_bucket: str) -> torch.Tensor:
    """int64 bucket of integer time differences ``diff`` (float32 math, as in every backend)."""
    x = diff.abs().to(torch.float32)
    if time_bucket == "log":
        b = torch.floor(torch.log(x.clamp(min=1.0)) / 0.301)
    else:
        b = torch.floor(torch.sqrt(x))
    return b.clamp(0, num_buckets).to(torch.int64)


def _pos_index(N: int, device: torch.device) -> torch.Tensor:
    pos = torch.arange(N, device=device, dtype=torch.int64)
    return pos.view(1, N) - pos.view(N, 1) + N - 1  # [i, j] -> j - i + N - 1


def _bucket_index(timestamps: torch.Tensor, seq_offsets: torch.Tensor, lengths: torch.Tensor, N: int,
                  num_buckets: int, time_bucket: str) -> torch.Tensor:
    """(B, N, N) int64 bucket of ts[next(i)] - ts[j]."""
    B = lengths.shape[0]
    ts = jagged_to_padded_dense(timestamps.to(torch.int64).view(-1, 1), seq_offsets, N).view(B, N)
    nxt = torch.minimum(torch.arange(N, device=ts.device).view(1, N) + 1, (lengths - 1).clamp(min=0).view(B, 1))
    ts_next = ts.gather(1, nxt)
    return time_buckets(ts_next.view(B, N, 1) - ts.view(B, 1, N), num_buckets, time_bucket)


def relative_bias(timestamps: torch.Tensor | None, pos_bias: torch.Tensor | None, time_bias: torch.Tensor | None,
                  seq_offsets: torch.Tensor, N: int, time_bucket: str, acc: torch.dtype) -> torch.Tensor | None:
    """(B, N, N) R in ``acc`` (broadcast over b when only pos_bias is given), or None."""
    if pos_bias is None and time_bias is None:
        return None
    lengths = _lengths(seq_offsets)
    r = torch.zeros((), dtype=acc, device=seq_offsets.device)
    if pos_bias is not None:
        r = r + pos_bias.to(acc).index_select(0, _pos_index(N, pos_bias.device).reshape(-1)).view(1, N, N)
    if time_bias is not None:
        idx = _bucket_index(timestamps, seq_offsets, lengths, N, time_bias.shape[0] - 1, time_bucket)
        r = r + time_bias.to(acc).index_select(0, idx.reshape(-1)).view(-1, N, N)
    return r


def _padded_heads(x: torch.Tensor, seq_offsets: torch.Tensor, N: int, acc: torch.dtype) -> torch.Tensor:
    L, H, D = x.shape
    B = seq_offsets.shape[0] - 1
    return jagged_to_padded_dense(x.reshape(L, H * D), seq_offsets, N).view(B, N, H, D).transpose(1, 2).to(acc)


def _jagged_heads(x: torch.Tensor, seq_offsets: torch.Tensor, L: int, dtype: torch.dtype) -> torch.Tensor:
    B, H, N, D = x.shape
    return padded_dense_to_jagged(x.to(dtype).transpose(1, 2).reshape(B, N, H * D), seq_offsets, L).view(L, H, D)


def _scores(q, k, seq_offsets, N, alpha, causal, num_targets, contextual_seq_len, max_attn_len, timestamps,
            pos_bias, time_bias, time_bucket, acc):
    """(S (B, H, N, N), mask / N (B, 1, N, N)) in acc."""
    qp, kp = _padded_heads(q, seq_offsets, N, acc), _padded_heads(k, seq_offsets, N, acc)
    s = alpha * torch.matmul(qp, kp.transpose(-1, -2))
    r = relative_bias(timestamps, pos_bias, time_bias, seq_offsets, N, time_bucket, acc)
    if r is not None:
        s = s + r.unsqueeze(1)
    m = valid_mask(_lengths(seq_offsets), N, causal, num_targets, contextual_seq_len, max_attn_len)
    return s, (m.to(acc) / N).unsqueeze(1)


def indices_on(device: torch.device, seq_offsets: torch.Tensor, num_targets: torch.Tensor | None
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """seq_offsets and num_targets on ``device`` (they may come on the CPU: read there without a sync)."""
    return index_on(seq_offsets, device), (index_on(num_targets, device) if num_targets is not None else None)


def hstu_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seq_offsets: torch.Tensor, max_seq_len: int,
                   alpha: float, causal: bool = True, num_targets: torch.Tensor | None = None,
                   contextual_seq_len: int = 0, max_attn_len: int = 0, timestamps: torch.Tensor | None = None,
                   pos_bias: torch.Tensor | None = None, time_bias: torch.Tensor | None = None,
                   time_bucket: str = "log") -> torch.Tensor:
    """q, k (L, H, Dqk), v (L, H, Dv), seq_offsets (B + 1,) -> (L, H, Dv) in q's dtype. Differentiable (by
    autograd through torch ops) in q, k, v, pos_bias and time_bias."""
    check_inputs(q, k, v, seq_offsets, max_seq_len, num_targets, contextual_seq_len, max_attn_len, timestamps,
                 pos_bias, time_bias, time_bucket)
    seq_offsets, num_targets = indices_on(q.device, seq_offsets, num_targets)
    acc = _acc_dtype(q.dtype)
    s, m = _scores(q, k, seq_offsets, max_seq_len, alpha, causal, num_targets, contextual_seq_len, max_attn_len,
                   timestamps, pos_bias, time_bias, time_bucket, acc)
    p = (F.silu(s) * m).to(q.dtype).to(acc)
    o = torch.matmul(p, _padded_heads(v, seq_offsets, max_seq_len, acc))
    return _jagged_heads(o, seq_offsets, q.shape[0], q.dtype)


def hstu_attention_backward(grad_output: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                            seq_offsets: torch.Tensor, max_seq_len: int, alpha: float, causal: bool,
                            num_targets: torch.Tensor | None, contextual_seq_len: int, max_attn_len: int,
                            timestamps: torch.Tensor | None, pos_bias: torch.Tensor | None,
                            time_bias: torch.Tensor | None, time_bucket: str
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """grad_output (L, H, Dv) -> (dq, dk, dv, d_pos_bias (2N - 1,) or (0,), d_time_bias (nb + 1,) or (0,)).

    dV = Pᵀ dO;  dP = dO Vᵀ;  dS = dP ⊙ M / N ⊙ SiLU'(S);  dQ = alpha dS K;  dK = alpha dSᵀ Q;
    dR = Σ_h dS, scattered to pos_bias by j - i and to time_bias by bucket (index_add: fixed order)."""
    check_inputs(q, k, v, seq_offsets, max_seq_len, num_targets, contextual_seq_len, max_attn_len, timestamps,
                 pos_bias, time_bias, time_bucket)
    if grad_output.shape != v.shape or grad_output.dtype != v.dtype or grad_output.device != v.device:
        raise ValueError(f"grad_output must match v: shape {tuple(v.shape)}, {v.dtype} on {v.device}; got "
                         f"{tuple(grad_output.shape)}, {grad_output.dtype} on {grad_output.device}")
    seq_offsets, num_targets = indices_on(q.device, seq_offsets, num_targets)
    N, L, dtype = max_seq_len, q.shape[0], q.dtype
    acc = _acc_dtype(dtype)
    s, m = _scores(q, k, seq_offsets, N, alpha, causal, num_targets, contextual_seq_len, max_attn_len,
                   timestamps, pos_bias, time_bias, time_bucket, acc)
    sig = torch.sigmoid(s)
    p = (s * sig * m).to(dtype).to(acc)
    do = _padded_heads(grad_output, seq_offsets, N, acc)
    vp = _padded_heads(v, seq_offsets, N, acc)
    dv = torch.matmul(p.transpose(-1, -2), do)
    dp = torch.matmul(do, vp.transpose(-1, -2))
    ds_full = dp * m * (sig * (1 + s * (1 - sig)))
    ds = ds_full.to(dtype).to(acc)
    dq = alpha * torch.matmul(ds, _padded_heads(k, seq_offsets, N, acc))
    dk = alpha * torch.matmul(ds.transpose(-1, -2), _padded_heads(q, seq_offsets, N, acc))
    d_pos, d_time = q.new_zeros(0), q.new_zeros(0)
    if pos_bias is not None or time_bias is not None:
        dr = ds_full.sum(1)  # (B, N, N)
        if pos_bias is not None:
            d_pos = torch.zeros(2 * N - 1, dtype=acc, device=q.device).index_add_(
                0, _pos_index(N, q.device).reshape(-1), dr.sum(0).reshape(-1)).to(pos_bias.dtype)
        if time_bias is not None:
            idx = _bucket_index(timestamps, seq_offsets, _lengths(seq_offsets), N, time_bias.shape[0] - 1, time_bucket)
            d_time = torch.zeros(time_bias.shape[0], dtype=acc, device=q.device).index_add_(
                0, idx.reshape(-1), dr.reshape(-1)).to(time_bias.dtype)
    return (_jagged_heads(dq, seq_offsets, L, dtype), _jagged_heads(dk, seq_offsets, L, dtype),
            _jagged_heads(dv, seq_offsets, L, dtype), d_pos, d_time)
