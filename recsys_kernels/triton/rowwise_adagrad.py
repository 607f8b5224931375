"""Exact row-wise Adagrad in Triton: ``recsys::rowwise_adagrad_update_triton_`` and the fused
``recsys::embedding_bag_backward_rowwise_adagrad_triton_``.

Algorithm (Adagrad, Duchi et al. 2011, in FBGEMM's exact row-wise form: one fp32 accumulator per row;
semantics in recsys_kernels/reference/rowwise_adagrad.py). Deterministic, no floating-point atomics:

1. a prepare kernel gives every occurrence p its row as a 32-bit sort key (fused: ``table_offsets[t] +
   indices[p]``, p's bag found by binary search in offsets) and validates indices, offsets and table_offsets
   into an error word (bad rows become row 0, so everything after it is safe on any input); a stable
   ``torch.sort`` groups occurrences by row, positions ascending inside a row; the host reads the error word
   once, after the sort is queued and before anything is written (not while tracing);
2. one program per chunk of CH sorted occurrences loads all their gradient rows as one (CH, BLOCK_D) tile
   (fused: straight from grad_output[sample, table slice], times the per-sample weight or 1 / bag length — no
   (N, D) gradient) and sums each row's run with a segmented scan down the tile. Every run that ends in the
   chunk and started in it is updated right there, all of them at once as a tile: mean of squares, momentum,
   row update;
3. a run that crosses chunk boundaries leaves one partial sum per chunk (slot 1 of the chunk where it starts,
   slot 0 of every later chunk); one program per starting chunk adds them in chunk order and updates the row.
   Hot rows are thus split across many programs yet summed in a fixed order.

fp16/bf16 weights are rounded to nearest even, or stochastically with the same hash as every backend.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from recsys_kernels.reference import rowwise_adagrad as ref

__all__ = ["embedding_bag_backward_rowwise_adagrad_triton_", "rowwise_adagrad_update_triton_"]

_CH = 32  # sorted positions per chunk: the most gradient rows one program sums before handing over
_MODES = {"none": 0, "l2": 1, "decoupled": 2}


@triton.jit
def _mix32(x):
    x = x ^ (x >> 16)
    x = x * tl.full([], 0x7FEB352D, tl.uint32)
    x = x ^ (x >> 15)
    x = x * tl.full([], 0x846CA68B, tl.uint32)
    return x ^ (x >> 16)


@triton.jit
def _store_rows(weight_ptr, r, rmask, new, d, dmask, D, sr_key, SR_DROP: tl.constexpr):
    """Writes new (R, BLOCK_D) fp32 values to rows r (R,) of weight, rounded to its dtype."""
    w_ptrs = weight_ptr + r[:, None] * D + d[None, :]
    mask = rmask[:, None] & dmask[None, :]
    out_ty = weight_ptr.dtype.element_ty
    if out_ty == tl.float32:
        tl.store(w_ptrs, new, mask=mask)
    else:
        bits = new.to(tl.uint32, bitcast=True)
        exp_mask = tl.full([], 0x7F800000, tl.uint32)
        finite = (bits & exp_mask) != exp_mask
        if SR_DROP > 0:
            key = sr_key.to(tl.uint32)  # an i32 or i64 argument (never specialised), truncated to its 32 bits
            row_key = _mix32(_mix32(key ^ (r & 0xFFFFFFFF).to(tl.uint32)) ^ (r >> 32).to(tl.uint32))
            rnd = _mix32(row_key[:, None] ^ d[None, :].to(tl.uint32))
            low = tl.full([], (1 << SR_DROP) - 1, tl.uint32)
            high = tl.full([], 0xFFFFFFFF ^ ((1 << SR_DROP) - 1), tl.uint32)
            bits = tl.where(finite, (bits + (rnd & low)) & high, bits)
            tl.store(w_ptrs, bits.to(tl.float32, bitcast=True).to(out_ty), mask=mask)
        elif out_ty == tl.bfloat16:
            # Round to nearest even on the bits, so the (exact) cast also holds under the CPU interpreter,
            # which truncates fp32 -> bf16.
            bits = tl.where(finite, (bits + (0x7FFF + ((bits >> 16) & 1))) & tl.full([], 0xFFFF0000, tl.uint32),
                            bits)
            tl.store(w_ptrs, bits.to(tl.float32, bitcast=True).to(out_ty), mask=mask)
        else:
            tl.store(w_ptrs, new.to(out_ty), mask=mask)


@triton.jit
def _update_rows(weight_ptr, momentum_ptr, r, rmask, g, d, dmask, D, lr, eps, wd, sr_key,
                 MODE: tl.constexpr, SR_DROP: tl.constexpr):
    """One row-wise Adagrad step of rows r (R,) where rmask, given their summed gradients g (R, BLOCK_D) fp32."""
    mask = rmask[:, None] & dmask[None, :]
    w = tl.load(weight_ptr + r[:, None] * D + d[None, :], mask=mask, other=0.0).to(tl.float32)
    if MODE == 1:
        gg = g + wd * w
    else:
        gg = g
    gg = tl.where(mask, gg, 0.0)
    m = tl.load(momentum_ptr + r, mask=rmask, other=0.0) + tl.sum(gg * gg, axis=1) / D
    tl.store(momentum_ptr + r, m, mask=rmask)
    multiplier = tl.where(rmask, lr / (tl.sqrt_rn(m) + eps), 0.0)  # rows left alone: no overflow
    if MODE == 1:
        new = (1.0 - multiplier * wd)[:, None] * w - multiplier[:, None] * g
    elif MODE == 2:
        new = (1.0 - lr * wd) * w - multiplier[:, None] * g
    else:
        new = w - multiplier[:, None] * g
    _store_rows(weight_ptr, r, rmask, new, d, dmask, D, sr_key, SR_DROP)


@triton.jit
def _segment_add(a, a_starts, b, b_starts):
    """Combine of a segmented inclusive scan: the sum restarts at every element flagged as a segment start."""
    return tl.where(b_starts != 0, b, a + b), a_starts | b_starts


@triton.jit(do_not_specialize=["sr_key"])
def _chunk_kernel(rows_ptr, perm_ptr, grad_ptr, bag_ptr, psw_ptr, off_ptr, weight_ptr, momentum_ptr, partial_ptr,
                  N, D, ld, B, lr, eps, wd, sr_key,
                  FUSED: tl.constexpr, HAS_PSW: tl.constexpr, MEAN: tl.constexpr, MODE: tl.constexpr,
                  SR_DROP: tl.constexpr, CH: tl.constexpr, BLOCK_D: tl.constexpr):
    c = tl.program_id(0).to(tl.int64)
    k = tl.arange(0, CH)
    j = c * CH + k
    valid = j < N
    r = tl.load(rows_ptr + j, mask=valid, other=-1).to(tl.int64)  # sorted as int32; r * D needs 64 bits
    prev = tl.load(rows_ptr + j - 1, mask=valid & (j > 0), other=-1).to(tl.int64)
    nxt = tl.load(rows_ptr + j + 1, mask=(j + 1) < N, other=-1).to(tl.int64)
    starts = valid & (r != prev)
    run_ends = valid & (r != nxt)
    piece_ends = run_ends | (valid & ((k == CH - 1) | (j == N - 1)))
    started_here = tl.cumsum(starts.to(tl.int32), 0) > 0  # the run through k began inside this chunk
    updates = run_ends & started_here

    p = tl.load(perm_ptr + j, mask=valid, other=0)
    if FUSED:
        bag = tl.load(bag_ptr + p, mask=valid, other=0)
        t = bag // B
        row_off = (bag - t * B) * ld + t * D
    else:
        row_off = p * ld
    d = tl.arange(0, BLOCK_D)
    dmask = d < D
    x = tl.load(grad_ptr + row_off[:, None] + d[None, :], mask=valid[:, None] & dmask[None, :], other=0.0)
    x = x.to(tl.float32)
    if HAS_PSW:
        x = x * tl.load(psw_ptr + p, mask=valid, other=0.0)[:, None]
    if MEAN:
        n = tl.load(off_ptr + bag + 1, mask=valid, other=1) - tl.load(off_ptr + bag, mask=valid, other=0)
        x = x * (1.0 / n.to(tl.float32))[:, None]
    # Running sum of each piece (a run's part in this chunk) down the tile; read at the piece's last row.
    seg = tl.broadcast_to((starts | (k == 0)).to(tl.int32)[:, None], (CH, BLOCK_D))
    sums, _ = tl.associative_scan((x, seg), 0, _segment_add)

    _update_rows(weight_ptr, momentum_ptr, r, updates, sums, d, dmask, D, lr, eps, wd, sr_key, MODE, SR_DROP)
    to_partial = piece_ends & (updates == 0)
    slot = c * 2 + started_here.to(tl.int64)  # slot 1: the run starts here and goes on; slot 0: a continuation
    tl.store(partial_ptr + slot[:, None] * D + d[None, :], sums, mask=to_partial[:, None] & dmask[None, :])


@triton.jit(do_not_specialize=["sr_key"])
def _finish_kernel(rows_ptr, weight_ptr, momentum_ptr, partial_ptr, N, D, lr, eps, wd, sr_key,
                   MODE: tl.constexpr, SR_DROP: tl.constexpr, CH: tl.constexpr, BLOCK_D: tl.constexpr):
    c = tl.program_id(0).to(tl.int64)
    first = c * CH
    last = tl.minimum(first + CH, N) - 1
    r = tl.load(rows_ptr + last).to(tl.int64)
    after = tl.load(rows_ptr + last + 1, mask=last + 1 < N, other=-1)
    before = tl.load(rows_ptr + first - 1, mask=first > 0, other=-1)
    # The run at the end of chunk c goes on past it and started inside it: this program finishes it.
    if (after == r) & (before != r):
        d = tl.arange(0, BLOCK_D)
        dmask = d < D
        g = tl.load(partial_ptr + (c * 2 + 1) * D + d, mask=dmask, other=0.0)
        nc = c + 1
        more = r == r
        while more:
            g = g + tl.load(partial_ptr + (nc * 2) * D + d, mask=dmask, other=0.0)
            nxt = (nc + 1) * CH
            more = (nxt < N) & (tl.load(rows_ptr + nxt, mask=nxt < N, other=-1) == r)
            nc += 1
        one = tl.arange(0, 1)
        _update_rows(weight_ptr, momentum_ptr, r + one, one == 0, g[None, :], d, dmask, D, lr, eps, wd, sr_key,
                     MODE, SR_DROP)


# Bits of the error word (Triton reads globals only as constexpr).
_ERR_INDEX = tl.constexpr(1)
_ERR_OFFSETS = tl.constexpr(2)
_ERR_TABLES = tl.constexpr(4)


@triton.jit
def _prepare_update_kernel(idx_ptr, keys_ptr, err_ptr, N, E, BLOCK: tl.constexpr):
    p = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    pm = p < N
    r = tl.load(idx_ptr + p, mask=pm, other=0).to(tl.int64)
    bad = pm & ((r < 0) | (r >= E))
    tl.store(keys_ptr + p, tl.where(bad, 0, r).to(keys_ptr.dtype.element_ty), mask=pm)
    if tl.max(bad.to(tl.int32), axis=0) > 0:
        tl.atomic_or(err_ptr, _ERR_INDEX)


@triton.jit
def _prepare_fused_kernel(idx_ptr, off_ptr, tabs_ptr, keys_ptr, bag_ptr, err_ptr, N, T, B, E, steps,
                          BLOCK: tl.constexpr):
    """Rows and bags of occurrences [pid * BLOCK, +BLOCK), and the checks of offsets and table_offsets."""
    p = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    TB = T * B
    err = tl.full([], 0, tl.int32)
    # offsets: from 0 to N, non-decreasing (this block checks bags [pid * BLOCK, +BLOCK)); table_offsets alike.
    km = p < TB
    o0 = tl.load(off_ptr + p, mask=km, other=0)
    o1 = tl.load(off_ptr + p + 1, mask=km, other=0)
    if tl.max((km & (o0 > o1)).to(tl.int32), axis=0) > 0:
        err |= _ERR_OFFSETS
    if tl.program_id(0) == 0:
        if (tl.load(off_ptr) != 0) | (tl.load(off_ptr + TB) != N):
            err |= _ERR_OFFSETS
        if (tl.load(tabs_ptr) < 0) | (tl.load(tabs_ptr + T) > E):
            err |= _ERR_TABLES
    tm = p < T
    if tl.max((tm & (tl.load(tabs_ptr + p, mask=tm, other=0) > tl.load(tabs_ptr + p + 1, mask=tm, other=0))
               ).to(tl.int32), axis=0) > 0:
        err |= _ERR_TABLES
    pm = p < N
    # bag = the last k with offsets[k] <= p: binary search over [0, TB) in `steps` halvings.
    lo = tl.zeros([BLOCK], tl.int64)
    hi = tl.zeros([BLOCK], tl.int64) + TB
    for _ in range(steps):
        mid = (lo + hi + 1) // 2
        go_up = tl.load(off_ptr + mid, mask=pm & (mid < TB), other=N + 1) <= p
        lo = tl.where(go_up, mid, lo)
        hi = tl.where(go_up, hi, mid - 1)
    bag = tl.maximum(tl.minimum(lo, TB - 1), 0)  # no bags at all (TB = 0) was flagged above
    t = bag // B
    idx = tl.load(idx_ptr + p, mask=pm, other=0).to(tl.int64)
    t_lo = tl.load(tabs_ptr + t, mask=pm, other=0)
    t_hi = tl.load(tabs_ptr + t + 1, mask=pm, other=0)
    r = t_lo + idx
    bad = pm & ((idx < 0) | (idx >= t_hi - t_lo) | (r < 0) | (r >= E))
    if tl.max(bad.to(tl.int32), axis=0) > 0:
        err |= _ERR_INDEX
    tl.store(keys_ptr + p, tl.where(bad, 0, r).to(keys_ptr.dtype.element_ty), mask=pm)
    tl.store(bag_ptr + p, bag.to(tl.int32), mask=pm)
    if err != 0:
        tl.atomic_or(err_ptr, err)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")


def _check_device(weight: torch.Tensor) -> None:
    if weight.device.type not in ("cuda", "meta") and not _interpreting():
        raise ValueError(f"weight: the Triton rowwise_adagrad kernel needs CUDA tensors, got device {weight.device}")
    if weight.dtype == torch.float64:
        raise ValueError("weight: the Triton rowwise_adagrad kernel takes float32, float16 or bfloat16, got float64")


def _launch(weight: torch.Tensor, momentum: torch.Tensor, indices: torch.Tensor, grad: torch.Tensor, *,
            offsets: torch.Tensor | None, table_offsets: torch.Tensor | None, psw: torch.Tensor | None, T: int,
            B: int, mean: bool, lr: float, eps: float, weight_decay: float, weight_decay_mode: str,
            seed: int) -> None:
    if _interpreting() and ref.is_traced(weight):
        # The CPU interpreter runs kernels eagerly, even on fake tensors (wrap_triton passes interpreted kernels
        # through), so under tracing the launch goes into the graph as an opaque op that runs at call time.
        torch.ops.recsys.rowwise_adagrad_triton_interpreted_(weight, momentum, indices, grad, offsets,
                                                             table_offsets, psw, T, B, mean, lr, eps, weight_decay,
                                                             weight_decay_mode, seed)
        return
    _run_kernels(weight, momentum, indices, grad, offsets, table_offsets, psw, T, B, mean, lr, eps, weight_decay,
                 weight_decay_mode, seed)


@torch.library.custom_op("recsys::rowwise_adagrad_triton_interpreted_", mutates_args={"weight", "momentum"})
def _interpreted(weight: torch.Tensor, momentum: torch.Tensor, indices: torch.Tensor, grad: torch.Tensor,
                 offsets: torch.Tensor | None, table_offsets: torch.Tensor | None, psw: torch.Tensor | None, T: int,
                 B: int, mean: bool, lr: float, eps: float, weight_decay: float, weight_decay_mode: str,
                 seed: int) -> None:
    _run_kernels(weight, momentum, indices, grad, offsets, table_offsets, psw, T, B, mean, lr, eps, weight_decay,
                 weight_decay_mode, seed)


@_interpreted.register_fake
def _(weight, momentum, indices, grad, offsets, table_offsets, psw, T, B, mean, lr, eps, weight_decay,
      weight_decay_mode, seed):
    return None


_PREPARE_BLOCK = 1024


def _run_kernels(weight: torch.Tensor, momentum: torch.Tensor, indices: torch.Tensor, grad: torch.Tensor,
                 offsets: torch.Tensor | None, table_offsets: torch.Tensor | None, psw: torch.Tensor | None, T: int,
                 B: int, mean: bool, lr: float, eps: float, weight_decay: float, weight_decay_mode: str,
                 seed: int) -> None:
    """offsets is None for the update op (grad holds one row per occurrence), else the fused backward's."""
    N = indices.shape[0]
    E, D = weight.shape
    dev = weight.device
    # Rows fit 32-bit keys for any table that fits in memory: a 32-bit sort makes half the radix passes.
    keys = torch.empty(N, dtype=torch.int32 if E <= torch.iinfo(torch.int32).max else torch.int64, device=dev)
    err = torch.zeros(1, dtype=torch.int32, device=dev)
    fused = offsets is not None
    grid = (triton.cdiv(N, _PREPARE_BLOCK),)
    if fused:
        bag = torch.empty(N, dtype=torch.int32, device=dev)
        tabs = table_offsets if table_offsets is not None else torch.tensor([0, E], dtype=torch.int64, device=dev)
        steps = max(1, (T * B).bit_length() + 1)
        wrap_triton(_prepare_fused_kernel)[grid](indices, offsets, tabs, keys, bag, err, N, T, B, E, steps,
                                                 BLOCK=_PREPARE_BLOCK)
    else:
        bag = keys  # never read
        wrap_triton(_prepare_update_kernel)[grid](indices, keys, err, N, E, BLOCK=_PREPARE_BLOCK)
    sorted_rows, perm = torch.sort(keys, stable=True)
    # The one sync: after the sort is queued (it is safe on any keys), before anything is written.
    if not ref.is_traced(weight) and int(err.item()) != 0:
        # The detailed message (which index, which bag) comes from the host-side checks.
        if fused:
            ref.check_fused_values(weight, indices, offsets, table_offsets, T, B)
        else:
            ref.check_update_values(weight, indices)
        raise ValueError("rowwise_adagrad: invalid indices, offsets or table_offsets")
    num_chunks = triton.cdiv(N, _CH)
    partial = torch.empty((num_chunks * 2, D), dtype=torch.float32, device=dev)
    block_d = triton.next_power_of_2(D)
    sr_drop = 0
    if seed >= 0 and weight.dtype in (torch.float16, torch.bfloat16):
        sr_drop = 16 if weight.dtype == torch.bfloat16 else 13
    key = ref.sr_key(seed) if sr_drop else 0
    dummy = keys  # never read when the matching constexpr flag is off
    wrap_triton(_chunk_kernel)[(num_chunks,)](
        sorted_rows, perm, grad, bag, psw if psw is not None else dummy, offsets if fused else dummy, weight,
        momentum, partial, N, D, grad.stride(0), max(B, 1), lr, eps, weight_decay, key,
        FUSED=fused, HAS_PSW=psw is not None, MEAN=mean, MODE=_MODES[weight_decay_mode], SR_DROP=sr_drop,
        CH=_CH, BLOCK_D=block_d, num_warps=max(1, min(8, _CH * block_d // 1024)),
    )
    wrap_triton(_finish_kernel)[(num_chunks,)](
        sorted_rows, weight, momentum, partial, N, D, lr, eps, weight_decay, key,
        MODE=_MODES[weight_decay_mode], SR_DROP=sr_drop, CH=_CH, BLOCK_D=block_d,
        num_warps=max(1, min(8, block_d // 128)),
    )


@triton_op("recsys::rowwise_adagrad_update_triton_", mutates_args={"weight", "momentum"})
def rowwise_adagrad_update_triton_(weight: torch.Tensor, momentum: torch.Tensor, indices: torch.Tensor,
                                   grad_rows: torch.Tensor, *, lr: float = 0.01, eps: float = 1e-8,
                                   weight_decay: float = 0.0, weight_decay_mode: str = "none",
                                   stochastic_rounding_seed: int = -1) -> None:
    """Row-wise Adagrad step (Triton). weight (E, D) float32|float16|bfloat16, momentum (E,) float32,
    indices (N,) int32|int64, grad_rows (N, D) in weight's dtype or float32. Mutates weight and momentum."""
    ref.check_update_inputs(weight, momentum, indices, grad_rows)
    ref.check_hyper(lr, eps, weight_decay, weight_decay_mode, stochastic_rounding_seed)
    _check_device(weight)
    if indices.shape[0] == 0:
        return
    grad = grad_rows if grad_rows.stride(1) == 1 else grad_rows.contiguous()
    _launch(weight, momentum, indices.contiguous(), grad, offsets=None, table_offsets=None, psw=None, T=1, B=1,
            mean=False, lr=lr, eps=eps, weight_decay=weight_decay, weight_decay_mode=weight_decay_mode,
            seed=stochastic_rounding_seed)


@triton_op("recsys::embedding_bag_backward_rowwise_adagrad_triton_", mutates_args={"weight", "momentum"})
def embedding_bag_backward_rowwise_adagrad_triton_(
        weight: torch.Tensor, momentum: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor,
        grad_output: torch.Tensor, table_offsets: torch.Tensor | None = None,
        per_sample_weights: torch.Tensor | None = None, *, pooling: str = "sum", lr: float = 0.01,
        eps: float = 1e-8, weight_decay: float = 0.0, weight_decay_mode: str = "none",
        stochastic_rounding_seed: int = -1) -> None:
    """Row-wise Adagrad step from the pooled gradient grad_output (B, T*D) of T tables' bags (Triton);
    arguments as recsys_kernels.ops.embedding_bag_backward_rowwise_adagrad_ (custom ops cannot take
    keyword-only tensors, so table_offsets and per_sample_weights may also be positional here).
    Mutates weight and momentum."""
    T, B = ref.check_fused_inputs(weight, momentum, indices, offsets, grad_output, table_offsets, pooling,
                                  per_sample_weights)
    ref.check_hyper(lr, eps, weight_decay, weight_decay_mode, stochastic_rounding_seed)
    _check_device(weight)
    N = indices.shape[0]
    if N == 0:
        if not ref.is_traced(weight):
            ref.check_fused_values(weight, indices, offsets, table_offsets, T, B)
        return
    grad = grad_output if grad_output.stride(1) == 1 else grad_output.contiguous()
    psw = None if per_sample_weights is None else per_sample_weights.to(torch.float32).contiguous()
    tabs = None if table_offsets is None else table_offsets.to(torch.int64).contiguous()
    _launch(weight, momentum, indices.contiguous(), grad, offsets=offsets.to(torch.int64).contiguous(),
            table_offsets=tabs, psw=psw, T=T, B=B, mean=pooling == "mean", lr=lr, eps=eps,
            weight_decay=weight_decay, weight_decay_mode=weight_decay_mode, seed=stochastic_rounding_seed)
