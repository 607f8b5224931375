"""Jagged HSTU attention in Triton: ``recsys::hstu_attention_triton`` and its backward.

Algorithm: HSTU pointwise attention (Zhai et al., ICML 2024, "Actions Speak Louder than Words"), tiled
as in FlashAttention (Dao et al. 2022) but with no softmax, so the forward needs no running max or
normaliser: per (sequence, head, query block) program, O = Σ over key blocks of (SiLU(αQKᵀ + R) ⊙ M) V / N.
The relative bias R is computed per tile inside the kernel from the timestamps and the two tables (one
gather each), never materialised. Head dims are padded inside the kernel to a power of two >= 16 by masked
loads (zeros add nothing to the dot products), so 25 or 50 work without the caller padding. Causal masks
without a contextual prefix skip the key blocks past the diagonal, and tiles that the mask cannot touch
(wholly below the diagonal, inside the sequence, before the targets) run without any mask or predicated
load; only the tiles on the diagonal and at the sequence's end pay for them. The longest query blocks
are launched first, so the short ones fill the tail.

Backward, deterministic (no atomics): one kernel per key block accumulates dK and dV over the query
blocks; another per query block accumulates dQ over the key blocks and, with a bias, writes per-tile
partial bias gradients (pos: the tile's 2·BLK-1 diagonal sums; time: a per-program bucket histogram
weighted by dS, over only the bucket chunks the tile touches; both by one-hot reductions) into buffers that
torch reduces in a fixed order. The bias-gradient path uses 16 x 16 tiles (its one-hot reductions grow with
the tile). Tile sizes per kernel: ``_tiles`` (swept on the H100); the forward's 128-register launch for bf16
d <= 128: ``_four_programs_an_sm``.

float32 dot products use "tf32x3" (about fp32-accurate); float64 (gradcheck) uses IEEE. Under
TRITON_INTERPRET=1, fp16/bf16 tiles are widened to fp32 after loading (the interpreter's bf16 is raw bits).
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl
from torch._subclasses.fake_tensor import is_fake
from torch.library import triton_op, wrap_triton
from triton.runtime.jit import JITFunction

from recsys_kernels.reference.hstu_attention import check_inputs, indices_on

__all__ = ["hstu_attention_triton", "hstu_attention_triton_backward"]

BIAS_BLOCK = 16


@triton.jit
def _dot(a, b, acc):
    if a.dtype == tl.float64:
        return tl.dot(a, b, acc, input_precision="ieee", out_dtype=tl.float64)
    elif a.dtype == tl.float32:
        return tl.dot(a, b, acc, input_precision="tf32x3")
    else:
        return tl.dot(a, b, acc)


@triton.jit
def _zeros(M: tl.constexpr, N: tl.constexpr, like_ptr):
    if like_ptr.dtype.element_ty == tl.float64:
        return tl.zeros((M, N), dtype=tl.float64)
    else:
        return tl.zeros((M, N), dtype=tl.float32)


@triton.jit
def _load_rows(ptr, rows, n, s_l, col, D, UPCAST: tl.constexpr, ROW_MASK: tl.constexpr = True,
               COL_MASK: tl.constexpr = True):
    """(len(rows), len(col)) tile of one head of a (L, H, D) tensor at ``ptr`` (head offset applied), zero past
    row n and column D. Without the masks (rows known inside the sequence, D a power of two) the loads are
    unpredicated and vectorise."""
    p = ptr + rows[:, None].to(tl.int64) * s_l + col[None, :]
    if ROW_MASK and COL_MASK:
        x = tl.load(p, mask=(rows < n)[:, None] & (col < D)[None, :], other=0.0)
    elif ROW_MASK:
        x = tl.load(p, mask=(rows < n)[:, None], other=0.0)
    elif COL_MASK:
        x = tl.load(p, mask=(col < D)[None, :], other=0.0)
    else:
        x = tl.load(p)
    if UPCAST:
        x = x.to(tl.float32)
    return x


@triton.jit
def _to_out(x, dtype: tl.constexpr, ROUND_BF16: tl.constexpr):
    """Round to the output dtype (nearest even); the interpreter truncates fp32 -> bf16, so round the bits."""
    if ROUND_BF16:
        bits = x.to(tl.float32).to(tl.uint32, bitcast=True)
        bits = (bits + (0x7FFF + ((bits >> 16) & 1))) & 0xFFFF0000
        x = bits.to(tl.float32, bitcast=True)
    return x.to(dtype)


@triton.jit
def _ids(x, C, limit, TARGETS: tl.constexpr, HAS_CTX: tl.constexpr):
    if HAS_CTX:
        x = tl.maximum(x - C + 1, 0)
    if TARGETS:
        x = tl.minimum(x, limit)
    return x


@triton.jit
def _valid(rows, cols, n, C, W, limit, CAUSAL: tl.constexpr, TARGETS: tl.constexpr, HAS_CTX: tl.constexpr,
           HAS_WINDOW: tl.constexpr):
    """generative-recommenders' _get_valid_attn_mask on a (rows x cols) tile, positions past n masked."""
    ii = _ids(rows, C, limit, TARGETS, HAS_CTX)[:, None]
    jj = _ids(cols, C, limit, TARGETS, HAS_CTX)[None, :]
    dist = ii - jj
    if not CAUSAL:
        dist = tl.abs(dist)
    ok = (rows[:, None] == cols[None, :]) | (dist > 0)
    if HAS_WINDOW:
        ok = ok & (dist <= W)
    if HAS_CTX:
        ok = ok | ((ii == 0) & (jj < limit))
    return ok & (rows < n)[:, None] & (cols < n)[None, :]


@triton.jit
def _buckets(rows, cols, n, ts_ptr, NB, LOG_BUCKET: tl.constexpr):
    """bucket(ts[min(i + 1, n - 1)] - ts[j]) on a tile (float32 math, as every backend); ts_ptr at row 0."""
    nxt = tl.minimum(rows + 1, n - 1)
    ti = tl.load(ts_ptr + nxt, mask=rows < n, other=0)
    tj = tl.load(ts_ptr + cols, mask=cols < n, other=0)
    diff = ti[:, None] - tj[None, :]
    x = tl.where(diff < 0, -diff, diff).to(tl.float32)
    if LOG_BUCKET:
        b = tl.floor(tl.log(tl.maximum(x, 1.0)) / 0.301)
    else:
        b = tl.floor(tl.sqrt_rn(x))
    return tl.minimum(tl.maximum(b.to(tl.int32), 0), NB)


@triton.jit
def _scores(q, k, rows, cols, n, N, alpha, pos_ptr, ts_ptr, time_ptr, NB, HAS_POS: tl.constexpr,
            HAS_TIME: tl.constexpr, LOG_BUCKET: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr):
    """alpha q kᵀ + R on a tile, in the accumulation dtype (bias gathers masked past row or column n)."""
    s = _dot(q, tl.trans(k), _zeros(BM, BN, pos_ptr)) * alpha
    inside = (rows < n)[:, None] & (cols < n)[None, :]
    if HAS_POS:
        s += tl.load(pos_ptr + (cols[None, :] - rows[:, None] + N - 1), mask=inside, other=0.0).to(s.dtype)
    if HAS_TIME:
        bucket = _buckets(rows, cols, n, ts_ptr, NB, LOG_BUCKET)
        s += tl.load(time_ptr + bucket, mask=inside, other=0.0).to(s.dtype)
    return s


@triton.jit
def _sigmoid(x, like):
    """σ(x) in float32. With bf16 tiles (``like``'s dtype): 0.5 + 0.5 tanh(x / 2) by the one-instruction
    tanh.approx.f32 (relative error about 2^-11, under bf16's 2^-8 rounding of the result): one special-function
    op a score instead of an exponential and a reciprocal. Those ops, not the tensor cores, bound the forward."""
    if like.dtype == tl.bfloat16:
        t = tl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=f,f", [x * 0.5], dtype=tl.float32, is_pure=True,
                                      pack=1)
        return 0.5 + 0.5 * t
    else:
        return tl.sigmoid(x)


@triton.jit
def _sequence(offsets_ptr, nt_ptr, b, C, HAS_CTX: tl.constexpr, TARGETS: tl.constexpr):
    """Sequence b's first row, its length, and the first row that is a target (or the context limit)."""
    start = tl.load(offsets_ptr + b).to(tl.int64)
    n = (tl.load(offsets_ptr + b + 1).to(tl.int64) - start).to(tl.int32)
    limit = n
    if HAS_CTX:
        limit = n - C + 1
    if TARGETS:
        limit = limit - tl.load(nt_ptr + b).to(tl.int32)
    return start, n, limit


@triton.jit
def _visible_to_all_from(r0, limit, TARGETS: tl.constexpr):
    """Key columns below this bound are visible to every query row >= r0 of the sequence (causal, no context or
    window): they precede the row and, with targets, are history rather than another target."""
    bound = r0
    if TARGETS:
        bound = tl.minimum(bound, limit)
    return bound


@triton.jit
def _fwd_tile(acc, q, rows, n0, K, V, s_kl, s_vl, n, N, alpha, C, W, limit, pos_ptr, ts_ptr, time_ptr, NB,
              dq, dv, DQK, DV, CAUSAL: tl.constexpr, TARGETS: tl.constexpr, HAS_CTX: tl.constexpr,
              HAS_WINDOW: tl.constexpr, HAS_POS: tl.constexpr, HAS_TIME: tl.constexpr, LOG_BUCKET: tl.constexpr,
              UPCAST: tl.constexpr, MASKED: tl.constexpr, EVEN_QK: tl.constexpr, EVEN_V: tl.constexpr,
              BM: tl.constexpr, BN: tl.constexpr):
    """acc += SiLU(alpha q kᵀ + R) ⊙ M · v over one key tile (the 1 / N is applied once, at the end)."""
    cols = n0 + tl.arange(0, BN)
    k = _load_rows(K, cols, n, s_kl, dq, DQK, UPCAST, MASKED, not EVEN_QK)
    v = _load_rows(V, cols, n, s_vl, dv, DV, UPCAST, MASKED, not EVEN_V)
    s = _scores(q, k, rows, cols, n, N, alpha, pos_ptr, ts_ptr, time_ptr, NB, HAS_POS, HAS_TIME, LOG_BUCKET, BM, BN)
    p = s * _sigmoid(s, v)
    if MASKED:
        p = tl.where(_valid(rows, cols, n, C, W, limit, CAUSAL, TARGETS, HAS_CTX, HAS_WINDOW), p, 0.0)
    return _dot(p.to(v.dtype), v, acc)


@triton.jit
def _fwd_kernel(Q, K, V, O, offsets_ptr, nt_ptr, ts_ptr, pos_ptr, time_ptr,
                s_ql, s_qh, s_kl, s_kh, s_vl, s_vh, s_ol, s_oh,
                H, N, alpha, C, W, NB, DQK, DV,
                CAUSAL: tl.constexpr, TARGETS: tl.constexpr, HAS_CTX: tl.constexpr, HAS_WINDOW: tl.constexpr,
                HAS_POS: tl.constexpr, HAS_TIME: tl.constexpr, LOG_BUCKET: tl.constexpr, UPCAST: tl.constexpr,
                ROUND_BF16: tl.constexpr, EVEN_QK: tl.constexpr, EVEN_V: tl.constexpr, BM: tl.constexpr,
                BN: tl.constexpr, DQK_PAD: tl.constexpr, DV_PAD: tl.constexpr):
    bh = tl.program_id(0)
    pid_m = tl.num_programs(1) - 1 - tl.program_id(1)  # the longest (last) query blocks start first
    b = bh // H
    h = bh % H
    start, n, limit = _sequence(offsets_ptr, nt_ptr, b, C, HAS_CTX, TARGETS)
    m0 = pid_m * BM
    if m0 >= n:
        return
    rows = m0 + tl.arange(0, BM)
    dq = tl.arange(0, DQK_PAD)
    dv = tl.arange(0, DV_PAD)
    q = _load_rows(Q + start * s_ql + h * s_qh, rows, n, s_ql, dq, DQK, UPCAST)
    K = K + start * s_kl + h * s_kh
    V = V + start * s_vl + h * s_vh
    ts = ts_ptr + start
    acc = _zeros(BM, DV_PAD, pos_ptr)
    hi = n
    if CAUSAL and not HAS_CTX:
        hi = tl.minimum(n, m0 + BM)
    # Key tiles wholly before the query block need no mask (rows past n are computed but never stored).
    plain = 0
    if CAUSAL and not HAS_CTX and not HAS_WINDOW:
        plain = (_visible_to_all_from(m0, limit, TARGETS) // BN) * BN
    for n0 in range(0, plain, BN):
        acc = _fwd_tile(acc, q, rows, n0, K, V, s_kl, s_vl, n, N, alpha, C, W, limit, pos_ptr, ts, time_ptr, NB,
                        dq, dv, DQK, DV, CAUSAL, TARGETS, HAS_CTX, HAS_WINDOW, HAS_POS, HAS_TIME, LOG_BUCKET, UPCAST,
                        False, EVEN_QK, EVEN_V, BM, BN)
    for n0 in range(plain, hi, BN):
        acc = _fwd_tile(acc, q, rows, n0, K, V, s_kl, s_vl, n, N, alpha, C, W, limit, pos_ptr, ts, time_ptr, NB,
                        dq, dv, DQK, DV, CAUSAL, TARGETS, HAS_CTX, HAS_WINDOW, HAS_POS, HAS_TIME, LOG_BUCKET, UPCAST,
                        True, EVEN_QK, EVEN_V, BM, BN)
    acc = acc * (1.0 / N)
    out = O + start * s_ol + h * s_oh + rows[:, None].to(tl.int64) * s_ol + dv[None, :]
    tl.store(out, _to_out(acc, O.dtype.element_ty, ROUND_BF16), mask=(rows < n)[:, None] & (dv < DV)[None, :])


@triton.jit
def _dscores(s, sig, do, v, like_ptr, BM: tl.constexpr, BN: tl.constexpr):
    """dS of a (BM, BN) tile without the 1 / N: (dO vᵀ) ⊙ SiLU'(s), SiLU'(s) = σ(s) (1 + s (1 - σ(s)))."""
    return _dot(do, tl.trans(v), _zeros(BM, BN, like_ptr)) * sig * (1.0 + s * (1.0 - sig))


@triton.jit
def _dkdv_tile(dk, dvacc, k, v, cols, m0, Q, DO, s_ql, s_ol, n, N, alpha, C, W, limit, pos_ptr, ts, time_ptr, NB,
               dq, dv, DQK, DV, CAUSAL: tl.constexpr, TARGETS: tl.constexpr, HAS_CTX: tl.constexpr,
               HAS_WINDOW: tl.constexpr, HAS_POS: tl.constexpr, HAS_TIME: tl.constexpr, LOG_BUCKET: tl.constexpr,
               UPCAST: tl.constexpr, MASKED: tl.constexpr, EVEN_QK: tl.constexpr, EVEN_V: tl.constexpr,
               BM: tl.constexpr, BN: tl.constexpr):
    """dk += dSᵀ q and dv += Pᵀ dO over one query tile (without the 1 / N and alpha, applied at the end)."""
    rows = m0 + tl.arange(0, BM)
    q = _load_rows(Q, rows, n, s_ql, dq, DQK, UPCAST, MASKED, not EVEN_QK)
    do = _load_rows(DO, rows, n, s_ol, dv, DV, UPCAST, MASKED, not EVEN_V)
    s = _scores(q, k, rows, cols, n, N, alpha, pos_ptr, ts, time_ptr, NB, HAS_POS, HAS_TIME, LOG_BUCKET, BM, BN)
    sig = _sigmoid(s, v)
    p = s * sig
    ds = _dscores(s, sig, do, v, pos_ptr, BM, BN)
    if MASKED:
        valid = _valid(rows, cols, n, C, W, limit, CAUSAL, TARGETS, HAS_CTX, HAS_WINDOW)
        p = tl.where(valid, p, 0.0)
        ds = tl.where(valid, ds, 0.0)
    dvacc = _dot(tl.trans(p.to(do.dtype)), do, dvacc)
    dk = _dot(tl.trans(ds.to(q.dtype)), q, dk)
    return dk, dvacc


@triton.jit
def _bwd_dkdv_kernel(Q, K, V, DO, DK, DV_, offsets_ptr, nt_ptr, ts_ptr, pos_ptr, time_ptr,
                     s_ql, s_qh, s_kl, s_kh, s_vl, s_vh, s_ol, s_oh,
                     H, N, alpha, C, W, NB, DQK, DV,
                     CAUSAL: tl.constexpr, TARGETS: tl.constexpr, HAS_CTX: tl.constexpr, HAS_WINDOW: tl.constexpr,
                     HAS_POS: tl.constexpr, HAS_TIME: tl.constexpr, LOG_BUCKET: tl.constexpr, UPCAST: tl.constexpr,
                     ROUND_BF16: tl.constexpr, EVEN_QK: tl.constexpr, EVEN_V: tl.constexpr, BM: tl.constexpr,
                     BN: tl.constexpr, DQK_PAD: tl.constexpr, DV_PAD: tl.constexpr):
    """dK, dV of one key block: Σ over query blocks (dq/dk/dv/do share q's and v's layouts)."""
    bh = tl.program_id(0)
    pid_n = tl.program_id(1)  # the first key blocks, seen by the most queries, start first
    b = bh // H
    h = bh % H
    start, n, limit = _sequence(offsets_ptr, nt_ptr, b, C, HAS_CTX, TARGETS)
    n0 = pid_n * BN
    if n0 >= n:
        return
    cols = n0 + tl.arange(0, BN)
    dq = tl.arange(0, DQK_PAD)
    dv = tl.arange(0, DV_PAD)
    k = _load_rows(K + start * s_kl + h * s_kh, cols, n, s_kl, dq, DQK, UPCAST)
    v = _load_rows(V + start * s_vl + h * s_vh, cols, n, s_vl, dv, DV, UPCAST)
    Q = Q + start * s_ql + h * s_qh
    DO = DO + start * s_ol + h * s_oh
    ts = ts_ptr + start
    dk = _zeros(BN, DQK_PAD, pos_ptr)
    dvacc = _zeros(BN, DV_PAD, pos_ptr)
    lo = 0
    if CAUSAL and not HAS_CTX:
        lo = (n0 // BM) * BM
    # Query blocks [mid, full) lie wholly after the key block and inside the sequence: no masks at all.
    mid = n
    full = (n // BM) * BM
    if CAUSAL and not HAS_CTX and not HAS_WINDOW:
        if n0 + BN <= _visible_to_all_from(n0 + BN, limit, TARGETS):  # the block holds no target
            mid = tl.minimum(tl.cdiv(n0 + BN, BM) * BM, n)
    for m0 in range(lo, mid, BM):
        dk, dvacc = _dkdv_tile(dk, dvacc, k, v, cols, m0, Q, DO, s_ql, s_ol, n, N, alpha, C, W, limit, pos_ptr, ts,
                               time_ptr, NB, dq, dv, DQK, DV, CAUSAL, TARGETS, HAS_CTX, HAS_WINDOW, HAS_POS, HAS_TIME,
                               LOG_BUCKET, UPCAST, True, EVEN_QK, EVEN_V, BM, BN)
    for m0 in range(mid, full, BM):
        dk, dvacc = _dkdv_tile(dk, dvacc, k, v, cols, m0, Q, DO, s_ql, s_ol, n, N, alpha, C, W, limit, pos_ptr, ts,
                               time_ptr, NB, dq, dv, DQK, DV, CAUSAL, TARGETS, HAS_CTX, HAS_WINDOW, HAS_POS, HAS_TIME,
                               LOG_BUCKET, UPCAST, False, EVEN_QK, EVEN_V, BM, BN)
    for m0 in range(tl.maximum(mid, full), n, BM):
        dk, dvacc = _dkdv_tile(dk, dvacc, k, v, cols, m0, Q, DO, s_ql, s_ol, n, N, alpha, C, W, limit, pos_ptr, ts,
                               time_ptr, NB, dq, dv, DQK, DV, CAUSAL, TARGETS, HAS_CTX, HAS_WINDOW, HAS_POS, HAS_TIME,
                               LOG_BUCKET, UPCAST, True, EVEN_QK, EVEN_V, BM, BN)
    dk = dk * (alpha / N)
    dvacc = dvacc * (1.0 / N)
    mask_k = (cols < n)[:, None] & (dq < DQK)[None, :]
    mask_v = (cols < n)[:, None] & (dv < DV)[None, :]
    tl.store(DK + start * s_ql + h * s_qh + cols[:, None].to(tl.int64) * s_ql + dq[None, :],
             _to_out(dk, DK.dtype.element_ty, ROUND_BF16), mask=mask_k)
    tl.store(DV_ + start * s_ol + h * s_oh + cols[:, None].to(tl.int64) * s_ol + dv[None, :],
             _to_out(dvacc, DV_.dtype.element_ty, ROUND_BF16), mask=mask_v)


@triton.jit
def _dq_tile(dq_acc, q, do, rows, n0, K, V, s_kl, s_vl, n, N, alpha, C, W, limit, pos_ptr, ts, time_ptr, NB,
             dq_, dv, DQK, DV, CAUSAL: tl.constexpr, TARGETS: tl.constexpr, HAS_CTX: tl.constexpr,
             HAS_WINDOW: tl.constexpr, HAS_POS: tl.constexpr, HAS_TIME: tl.constexpr, LOG_BUCKET: tl.constexpr,
             UPCAST: tl.constexpr, MASKED: tl.constexpr, EVEN_QK: tl.constexpr, EVEN_V: tl.constexpr,
             BM: tl.constexpr, BN: tl.constexpr):
    """dq += dS k over one key tile; also returns dS (without the 1 / N) for the bias gradients."""
    cols = n0 + tl.arange(0, BN)
    k = _load_rows(K, cols, n, s_kl, dq_, DQK, UPCAST, MASKED, not EVEN_QK)
    v = _load_rows(V, cols, n, s_vl, dv, DV, UPCAST, MASKED, not EVEN_V)
    s = _scores(q, k, rows, cols, n, N, alpha, pos_ptr, ts, time_ptr, NB, HAS_POS, HAS_TIME, LOG_BUCKET, BM, BN)
    ds = _dscores(s, _sigmoid(s, v), do, v, pos_ptr, BM, BN)
    if MASKED:
        ds = tl.where(_valid(rows, cols, n, C, W, limit, CAUSAL, TARGETS, HAS_CTX, HAS_WINDOW), ds, 0.0)
    return _dot(ds.to(k.dtype), k, dq_acc), ds


@triton.jit
def _bwd_dq_kernel(Q, K, V, DO, DQ, offsets_ptr, nt_ptr, ts_ptr, pos_ptr, time_ptr, part_pos, part_time,
                   s_ql, s_qh, s_kl, s_kh, s_vl, s_vh, s_ol, s_oh,
                   H, N, NBLK, alpha, C, W, NB, DQK, DV,
                   CAUSAL: tl.constexpr, TARGETS: tl.constexpr, HAS_CTX: tl.constexpr, HAS_WINDOW: tl.constexpr,
                   HAS_POS: tl.constexpr, HAS_TIME: tl.constexpr, LOG_BUCKET: tl.constexpr, UPCAST: tl.constexpr,
                   ROUND_BF16: tl.constexpr, EVEN_QK: tl.constexpr, EVEN_V: tl.constexpr, BM: tl.constexpr,
                   BN: tl.constexpr, DQK_PAD: tl.constexpr, DV_PAD: tl.constexpr, NB_PAD: tl.constexpr,
                   CH: tl.constexpr):
    """dQ of one query block: Σ over key blocks; with a bias also the partial bias gradients (BM == BN)."""
    bh = tl.program_id(0)
    pid_m = tl.num_programs(1) - 1 - tl.program_id(1)  # the longest (last) query blocks start first
    b = bh // H
    h = bh % H
    start, n, limit = _sequence(offsets_ptr, nt_ptr, b, C, HAS_CTX, TARGETS)
    m0 = pid_m * BM
    if m0 >= n:
        return
    rows = m0 + tl.arange(0, BM)
    dq_ = tl.arange(0, DQK_PAD)
    dv = tl.arange(0, DV_PAD)
    q = _load_rows(Q + start * s_ql + h * s_qh, rows, n, s_ql, dq_, DQK, UPCAST)
    do = _load_rows(DO + start * s_ol + h * s_oh, rows, n, s_ol, dv, DV, UPCAST)
    K = K + start * s_kl + h * s_kh
    V = V + start * s_vl + h * s_vh
    ts = ts_ptr + start
    dq = _zeros(BM, DQK_PAD, pos_ptr)
    hi = n
    if CAUSAL and not HAS_CTX:
        hi = tl.minimum(n, m0 + BM)
    if HAS_POS or HAS_TIME:
        inv_n = 1.0 / N
        if HAS_TIME:
            hist = _zeros(NB_PAD // CH, CH, pos_ptr)  # bucket c0 + t at [c0 // CH, t]
        for n0 in range(0, hi, BN):
            cols = n0 + tl.arange(0, BN)
            dq, ds = _dq_tile(dq, q, do, rows, n0, K, V, s_kl, s_vl, n, N, alpha, C, W, limit, pos_ptr, ts, time_ptr,
                              NB, dq_, dv, DQK, DV, CAUSAL, TARGETS, HAS_CTX, HAS_WINDOW, HAS_POS, HAS_TIME,
                              LOG_BUCKET, UPCAST, True, EVEN_QK, EVEN_V, BM, BN)
            ds = ds * inv_n
            if HAS_POS:
                # Diagonal sums of the tile: local offset j - i + BM - 1 in [0, 2 BM - 1).
                o = (cols[None, :] - n0) - (rows[:, None] - m0) + BM - 1
                hit = o[:, :, None] == tl.arange(0, 2 * BM)[None, None, :]
                diag = tl.sum(tl.sum(tl.where(hit, ds[:, :, None], 0.0), 0), 0)
                slot = ((bh * NBLK + pid_m) * NBLK + n0 // BN).to(tl.int64) * (2 * BM)
                tl.store(part_pos + slot + tl.arange(0, 2 * BM), diag)
            if HAS_TIME:
                # Weighted histogram of the tile's buckets, one chunk of CH buckets at a time (bounded registers),
                # visiting only the chunks between the tile's smallest and largest bucket (neighbours in time
                # share few buckets).
                valid = _valid(rows, cols, n, C, W, limit, CAUSAL, TARGETS, HAS_CTX, HAS_WINDOW)
                bucket = _buckets(rows, cols, n, ts, NB, LOG_BUCKET)
                b_lo = tl.min(tl.min(tl.where(valid, bucket, NB_PAD), 1), 0)
                b_hi = tl.max(tl.max(tl.where(valid, bucket, -1), 1), 0)
                for c0 in range((b_lo // CH) * CH, b_hi + 1, CH):
                    hit = bucket[:, :, None] == (c0 + tl.arange(0, CH))[None, None, :]
                    chunk = tl.sum(tl.sum(tl.where(hit, ds[:, :, None], 0.0), 0), 0)
                    hist += tl.where((tl.arange(0, NB_PAD // CH) == c0 // CH)[:, None], chunk[None, :], 0.0)
        if HAS_TIME:
            slots = tl.arange(0, NB_PAD // CH)[:, None] * CH + tl.arange(0, CH)[None, :]
            tl.store(part_time + (bh * NBLK + pid_m).to(tl.int64) * NB_PAD + slots, hist)
    else:
        # Key tiles wholly before the query block need no mask (rows past n are computed but never stored).
        plain = 0
        if CAUSAL and not HAS_CTX and not HAS_WINDOW:
            plain = (_visible_to_all_from(m0, limit, TARGETS) // BN) * BN
        for n0 in range(0, plain, BN):
            dq, _ = _dq_tile(dq, q, do, rows, n0, K, V, s_kl, s_vl, n, N, alpha, C, W, limit, pos_ptr, ts, time_ptr,
                             NB, dq_, dv, DQK, DV, CAUSAL, TARGETS, HAS_CTX, HAS_WINDOW, HAS_POS, HAS_TIME, LOG_BUCKET,
                             UPCAST, False, EVEN_QK, EVEN_V, BM, BN)
        for n0 in range(plain, hi, BN):
            dq, _ = _dq_tile(dq, q, do, rows, n0, K, V, s_kl, s_vl, n, N, alpha, C, W, limit, pos_ptr, ts, time_ptr,
                             NB, dq_, dv, DQK, DV, CAUSAL, TARGETS, HAS_CTX, HAS_WINDOW, HAS_POS, HAS_TIME, LOG_BUCKET,
                             UPCAST, True, EVEN_QK, EVEN_V, BM, BN)
    dq = dq * (alpha / N)
    tl.store(DQ + start * s_ql + h * s_qh + rows[:, None].to(tl.int64) * s_ql + dq_[None, :],
             _to_out(dq, DQ.dtype.element_ty, ROUND_BF16), mask=(rows < n)[:, None] & (dq_ < DQK)[None, :])


_INTERPRETED = not isinstance(_fwd_kernel, JITFunction)


def _no_data(t: torch.Tensor) -> bool:
    return t.device.type == "meta" or (_INTERPRETED and is_fake(t))


def _pad(d: int) -> int:
    if type(d) is int:  # triton.next_power_of_2 costs ~1.5 us a call on the host; SymInts (tracing) need it
        return max(16, 1 << (d - 1).bit_length())
    return max(16, triton.next_power_of_2(d))


def _zero_unwritten(x: torch.Tensor, host_offsets: torch.Tensor | None) -> torch.Tensor:
    """x (L, H, D) fresh from torch.empty, for a kernel output. The kernels write every row of every sequence
    (each program stores all of its rows below the sequence's length), so only rows past seq_offsets[B] need
    zeros: at B 64, N 1024, H 4, d 128 a full zero fill is a 64 MB memset (~20 us of the H100) for each of the
    forward's output and the backward's dq, dk and dv. Without the host copy of the offsets (tracing), all of x."""
    if host_offsets is None:
        return x.zero_()
    used = int(host_offsets[-1])
    if used < x.shape[0]:
        x[used:].zero_()
    return x


def _rowmajor(x: torch.Tensor) -> torch.Tensor:
    # The kernels index the head dim with stride 1; (L, H, D) activations almost always are.
    return x if x.stride(-1) == 1 else x.contiguous()


def _common(q, k, v, seq_offsets, max_seq_len, alpha, causal, num_targets, contextual_seq_len, max_attn_len,
            timestamps, pos_bias, time_bias, time_bucket):
    """Launch arguments shared by the three kernels: (tensor args, scalar args, constexpr flags)."""
    if q.device.type not in ("cuda", "meta") and not _INTERPRETED:
        raise ValueError(f"q: the Triton hstu_attention kernel needs CUDA tensors (or TRITON_INTERPRET=1 set before "
                         f"import), got device {q.device}")
    H, Dqk, Dv = q.shape[1], q.shape[2], v.shape[2]
    ptrs = (seq_offsets, num_targets if num_targets is not None else seq_offsets,
            timestamps if timestamps is not None else seq_offsets,
            pos_bias if pos_bias is not None else q, time_bias if time_bias is not None else q)
    nb = time_bias.shape[0] - 1 if time_bias is not None else 0
    scalars = (H, max_seq_len, float(alpha), contextual_seq_len, max_attn_len, nb, Dqk, Dv)
    upcast = _INTERPRETED and q.dtype in (torch.float16, torch.bfloat16)
    flags = dict(CAUSAL=causal, TARGETS=num_targets is not None, HAS_CTX=contextual_seq_len > 0,
                 HAS_WINDOW=max_attn_len > 0, HAS_POS=pos_bias is not None, HAS_TIME=time_bias is not None,
                 LOG_BUCKET=time_bucket == "log", UPCAST=upcast,
                 ROUND_BF16=_INTERPRETED and q.dtype == torch.bfloat16, EVEN_QK=Dqk == _pad(Dqk),
                 EVEN_V=Dv == _pad(Dv), DQK_PAD=_pad(Dqk), DV_PAD=_pad(Dv))
    return ptrs, scalars, flags


# Per-kernel tile overrides, kernel name ("fwd", "dkdv", "dq") -> (BM, BN, num_warps, num_stages): for the tile
# sweep (benchmarks/ops/sweep_hstu_triton.py) and for tests that run uneven tiles under the interpreter.
TILE_OVERRIDE: dict[str, tuple[int, int, int, int]] = {}


def _tiles(kernel: str, dtype: torch.dtype, N: int, Dqk: int, Dv: int) -> tuple[int, int, int, int]:
    """(BM query rows, BN key rows, num_warps, num_stages) of one kernel. BM x BN is the score tile; for "dkdv"
    BN is the key block a program owns and BM the query tile it loops over.

    16-bit rows up to 256 bytes (d <= 128): the H100 sweep of 2026-12-06 (benchmarks/ops/sweep_hstu_triton.py,
    RESULTS.md). Wider rows shrink the tiles until the software pipeline's stages fit in shared memory (fp32 at
    d = 256 needs 233 KB at 64 x 32); at d = 256 in 16 bits the dK/dV kernel's 32 x 64 tile gave wrong dK on the
    H100 (Triton 3.6; right under the interpreter), 32 x 32 is right. float64 (gradcheck), short sequences and
    the interpreter use 16 x 16."""
    if kernel in TILE_OVERRIDE:
        return TILE_OVERRIDE[kernel]
    if not all(type(x) is int for x in (N, Dqk, Dv)):  # SymInts (dynamic-shape tracing) are unhashable: no cache
        return _default_tiles.__wrapped__(kernel, dtype, N, Dqk, Dv)
    return _default_tiles(kernel, dtype, N, Dqk, Dv)


@functools.lru_cache(maxsize=256)  # a few microseconds a call otherwise, on the host's critical path
def _default_tiles(kernel: str, dtype: torch.dtype, N: int, Dqk: int, Dv: int) -> tuple[int, int, int, int]:
    if _INTERPRETED or dtype == torch.float64:
        return 16, 16, 4, 1
    row_bytes = max(_pad(Dqk), _pad(Dv)) * torch.finfo(dtype).bits // 8
    if row_bytes >= 1024:
        tiles = {"fwd": (32, 32, 4, 2), "dkdv": (16, 32, 4, 2), "dq": (32, 32, 4, 2)}
    elif row_bytes >= 512:
        tiles = {"fwd": (64, 32, 4, 2), "dkdv": (32, 32, 4, 2), "dq": (64, 32, 4, 2)}
    else:
        tiles = {"fwd": (64, 32, 4, 3), "dkdv": (64, 64, 4, 2), "dq": (64, 64, 4, 2)}
    bm, bn, warps, stages = tiles[kernel]
    cap = max(16, triton.next_power_of_2(N))
    return min(bm, cap), min(bn, cap), warps, stages


@triton_op("recsys::hstu_attention_triton", mutates_args=())
def hstu_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seq_offsets: torch.Tensor,
                          max_seq_len: int, alpha: float, causal: bool = True,
                          num_targets: torch.Tensor | None = None, contextual_seq_len: int = 0,
                          max_attn_len: int = 0, timestamps: torch.Tensor | None = None,
                          pos_bias: torch.Tensor | None = None, time_bias: torch.Tensor | None = None,
                          time_bucket: str = "log") -> torch.Tensor:
    """HSTU attention forward (Triton): q, k (L, H, Dqk), v (L, H, Dv), seq_offsets (B + 1,) -> (L, H, Dv).
    Semantics and argument shapes as recsys_kernels.ops.hstu_attention."""
    host_offsets = check_inputs(q, k, v, seq_offsets, max_seq_len, num_targets, contextual_seq_len, max_attn_len,
                                timestamps, pos_bias, time_bias, time_bucket)
    seq_offsets, num_targets = indices_on(q.device, seq_offsets, num_targets)
    q, k, v = _rowmajor(q), _rowmajor(k), _rowmajor(v)
    L, H, Dv = q.shape[0], q.shape[1], v.shape[2]
    B = seq_offsets.shape[0] - 1
    out = _zero_unwritten(torch.empty((L, H, Dv), dtype=q.dtype, device=q.device), host_offsets)
    if B == 0 or L == 0 or _no_data(out):
        return out
    ptrs, scalars, flags = _common(q, k, v, seq_offsets, max_seq_len, alpha, causal, num_targets,
                                   contextual_seq_len, max_attn_len, timestamps, pos_bias, time_bias, time_bucket)
    bm, bn, warps, stages = _tiles("fwd", q.dtype, max_seq_len, q.shape[2], v.shape[2])
    regs = {}
    if _four_programs_an_sm(q.dtype, max_seq_len, q.shape[2], v.shape[2], pos_bias is None and time_bias is None):
        (bm, bn, warps, stages), regs = FOUR_PROGRAMS_TILE, {"maxnreg": 128}
    wrap_triton(_fwd_kernel)[(B * H, triton.cdiv(max_seq_len, bm))](
        q, k, v, out, *ptrs,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), out.stride(0), out.stride(1),
        *scalars, **flags, BM=bm, BN=bn, num_warps=warps, num_stages=stages, **regs)
    return out


# The forward waits for each S = Q Kᵀ wgmma right after issuing it (Triton 3.8's code for sm_90a keeps only the P V
# product in flight), so a warp runs wgmma -> SiLU -> wgmma serially and the SM hides latency only across its
# resident programs: 3 at 160 registers and 3 pipeline stages. Capped at 128 registers (~50 bytes of spills) with 2 stages (48 KB of shared
# memory), 4 fit: -13% at B 64, N 1024, H 4, d 128, bf16, bias off, on the H100 (RESULTS.md, eighteenth and
# nineteenth sessions); no gain at N 512 (-1%), none or a loss at N 256 (0 to +4%: a short key loop has
# little to hide), slower at N 2048 (+5%: longer key loops want the third stage) and at d 64 (+24%). maxnreg is a
# launch option that torch's Triton wrapper does not pass through when it traces (torch.compile, opcheck), so it is
# used only for direct launches, which is what triton_op makes of an eager call on real tensors.
FOUR_PROGRAMS_TILE = (64, 32, 4, 2)


def _four_programs_an_sm(dtype: torch.dtype, N: int, Dqk: int, Dv: int, bias_free: bool) -> bool:
    try:
        from torch._library.triton import is_wrap_triton_enabled
    except ImportError:  # a torch without the switch: keep every launch traceable
        return False
    return (bias_free and dtype == torch.bfloat16 and 512 < N <= 1024 and 64 < max(Dqk, Dv) <= 128
            and not _INTERPRETED and "fwd" not in TILE_OVERRIDE and not is_wrap_triton_enabled())


@triton_op("recsys::hstu_attention_triton_backward", mutates_args=())
def hstu_attention_triton_backward(grad_output: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                   seq_offsets: torch.Tensor, max_seq_len: int, alpha: float, causal: bool,
                                   num_targets: torch.Tensor | None, contextual_seq_len: int, max_attn_len: int,
                                   timestamps: torch.Tensor | None, pos_bias: torch.Tensor | None,
                                   time_bias: torch.Tensor | None, time_bucket: str
                                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """HSTU attention backward (Triton) -> (dq, dk, dv, d_pos_bias or (0,), d_time_bias or (0,))."""
    host_offsets = check_inputs(q, k, v, seq_offsets, max_seq_len, num_targets, contextual_seq_len, max_attn_len,
                                timestamps, pos_bias, time_bias, time_bucket)
    if grad_output.shape != v.shape or grad_output.dtype != v.dtype:
        raise ValueError(f"grad_output must match v: shape {tuple(v.shape)}, {v.dtype}; got "
                         f"{tuple(grad_output.shape)}, {grad_output.dtype}")
    seq_offsets, num_targets = indices_on(q.device, seq_offsets, num_targets)
    # dq/dk/do/dv are written with q's and v's strides, so everything is made row-major alike.
    q, k, v, do = (x.contiguous() for x in (q, k, v, grad_output))
    L, H, Dqk, Dv = q.shape[0], q.shape[1], q.shape[2], v.shape[2]
    B, N = seq_offsets.shape[0] - 1, max_seq_len
    dq, dk, dv = (_zero_unwritten(torch.empty_like(x), host_offsets) for x in (q, k, v))
    d_pos = torch.zeros_like(pos_bias) if pos_bias is not None else q.new_zeros(0)
    d_time = torch.zeros_like(time_bias) if time_bias is not None else q.new_zeros(0)
    if B == 0 or L == 0 or _no_data(dq):
        return dq, dk, dv, d_pos, d_time
    ptrs, scalars, flags = _common(q, k, v, seq_offsets, max_seq_len, alpha, causal, num_targets,
                                   contextual_seq_len, max_attn_len, timestamps, pos_bias, time_bias, time_bucket)
    strides = (q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), v.stride(0), v.stride(1))
    bm, bn, warps, stages = _tiles("dkdv", q.dtype, N, Dqk, Dv)
    wrap_triton(_bwd_dkdv_kernel)[(B * H, triton.cdiv(N, bn))](
        q, k, v, do, dk, dv, *ptrs, *strides, *scalars, **flags, BM=bm, BN=bn, num_warps=warps, num_stages=stages)
    # With a bias the dQ kernel also reduces the bias gradients per tile, by one-hot sums that grow with the
    # tile: square 16 x 16 tiles there.
    has_bias = pos_bias is not None or time_bias is not None
    bm, bn, warps, stages = (BIAS_BLOCK, BIAS_BLOCK, 4, 2) if has_bias else _tiles("dq", q.dtype, N, Dqk, Dv)
    nblk = triton.cdiv(N, bm)
    ch = 32  # buckets per histogram chunk
    nb_pad = max(ch, triton.next_power_of_2(time_bias.shape[0])) if time_bias is not None else ch
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    part_pos = torch.zeros((B * H, nblk, nblk, 2 * bm) if pos_bias is not None else (1,), dtype=acc, device=q.device)
    part_time = torch.zeros((B * H, nblk, nb_pad) if time_bias is not None else (1,), dtype=acc, device=q.device)
    wrap_triton(_bwd_dq_kernel)[(B * H, nblk)](
        q, k, v, do, dq, *ptrs, part_pos, part_time, *strides, scalars[0], N, nblk, *scalars[2:], **flags,
        BM=bm, BN=bn, NB_PAD=nb_pad, CH=ch, num_warps=warps, num_stages=stages)
    if pos_bias is not None:
        d_pos = _fold_pos(part_pos, N, bm).to(pos_bias.dtype)
    if time_bias is not None:
        d_time = part_time.double().sum((0, 1))[: time_bias.shape[0]].to(time_bias.dtype)
    return dq, dk, dv, d_pos, d_time


def _fold_pos(part: torch.Tensor, N: int, blk: int) -> torch.Tensor:
    """(BH, nblk, nblk, 2 blk) per-tile diagonal sums -> (2N - 1,) pos_bias gradient, in a fixed order.

    Tile (mb, kb) holds offsets j - i = (kb - mb) blk + k - blk + 1 for k in [0, 2 blk - 1). Summing the
    tiles of each block diagonal is a product with a static one-hot matrix; the two halves of each
    diagonal's vector then land on consecutive blocks of the flat offset axis."""
    nblk = part.shape[1]
    tiles = part.double().sum(0).reshape(nblk * nblk, 2 * blk)
    mb = torch.arange(nblk, device=part.device).view(nblk, 1)
    kb = torch.arange(nblk, device=part.device).view(1, nblk)
    onehot = torch.nn.functional.one_hot((kb - mb + nblk - 1).reshape(-1), 2 * nblk - 1).double()
    diag = onehot.t() @ tiles  # (2 nblk - 1, 2 blk)
    flat = torch.zeros(2 * nblk, blk, dtype=torch.float64, device=part.device)
    flat[: 2 * nblk - 1] += diag[:, :blk]
    flat[1:] += diag[:, blk:]
    first = nblk * blk - N
    return flat.reshape(-1)[first: first + 2 * N - 1]


# The same autograd rule as the CUDA/CPU op's (recsys_kernels/ops/hstu_attention.py), with this backward op.
from recsys_kernels.ops.hstu_attention import backward_with, setup_context  # noqa: E402

torch.library.register_autograd("recsys::hstu_attention_triton", backward_with(hstu_attention_triton_backward),
                                setup_context=setup_context)

if _INTERPRETED:
    # wrap_triton cannot capture interpreted kernels: keep the ops opaque to AOTDispatcher (see dot_interaction).
    from torch._subclasses.functional_tensor import FunctionalTensorMode

    def _keep_opaque(mode, op, types, args, kwargs):  # type: ignore[no-untyped-def]
        return mode.__torch_dispatch__(op, types, args, kwargs)

    for _op in (hstu_attention_triton, hstu_attention_triton_backward):
        _op.register_torch_dispatch(FunctionalTensorMode, _keep_opaque)
