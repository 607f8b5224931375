"""Exact row-wise Adagrad in Triton: ``recsys::rowwise_adagrad_update_triton_`` and the fused
``recsys::embedding_bag_backward_rowwise_adagrad_triton_``.

Algorithm (Adagrad, Duchi et al. 2011, in FBGEMM's exact row-wise form: one fp32 accumulator per row;
semantics in recsys_kernels/reference/rowwise_adagrad.py). Deterministic, no floating-point atomics:

1. every occurrence p gets its row (fused: ``table_offsets[t] + indices[p]`` with t from p's bag), and a
   stable ``torch.sort`` groups occurrences by row, positions ascending inside a row;
2. the sorted occurrences are cut into chunks of CH positions; a *piece* is the part of a row's run inside
   one chunk. One program per piece loads its gradient rows as one tile and sums them (fused: read straight from
   grad_output[sample, table slice], times the per-sample weight or 1 / bag length — no (N, D) gradient).
   A run that fits in its chunk is finished by the same program: mean of squares, momentum, row update;
3. runs that cross chunk boundaries left one partial sum per chunk (slot 1 of the chunk where they start,
   slot 0 of every later chunk); one program per starting chunk adds them in chunk order and updates the
   row. Hot rows are thus split across many programs yet summed in a fixed order.

Grid: one program per sorted position (only piece starts work) and one per chunk; BLOCK_D covers D.
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
def _gather_sum(grad_ptr, perm_ptr, bag_ptr, psw_ptr, off_ptr, start, count, ld, B, D, d, dmask,
                FUSED: tl.constexpr, HAS_PSW: tl.constexpr, MEAN: tl.constexpr, CH: tl.constexpr):
    """The sum of the gradient rows of sorted occurrences [start, start + count), count <= CH: all of them are
    loaded at once as one (CH, BLOCK_D) tile (independent loads in flight, not a chain per occurrence) and
    reduced by the same fixed tree every run, so the result is deterministic."""
    k = tl.arange(0, CH)
    km = k < count
    p = tl.load(perm_ptr + start + k, mask=km, other=0)
    if FUSED:
        bag = tl.load(bag_ptr + p, mask=km, other=0)
        t = bag // B
        row_off = (bag - t * B) * ld + t * D
    else:
        row_off = p * ld
    x = tl.load(grad_ptr + row_off[:, None] + d[None, :], mask=km[:, None] & dmask[None, :], other=0.0)
    x = x.to(tl.float32)
    if HAS_PSW:
        x = x * tl.load(psw_ptr + p, mask=km, other=0.0)[:, None]
    if MEAN:
        n = tl.load(off_ptr + bag + 1, mask=km, other=1) - tl.load(off_ptr + bag, mask=km, other=0)
        x = x * (1.0 / n.to(tl.float32))[:, None]
    return tl.sum(x, axis=0)


@triton.jit
def _update_row(weight_ptr, momentum_ptr, r, g, d, dmask, D, lr, eps, wd, sr_key,
                MODE: tl.constexpr, SR_DROP: tl.constexpr):
    """One row-wise Adagrad step of row r given its summed gradient g (BLOCK_D, fp32, 0 past D)."""
    w_ptrs = weight_ptr + r * D + d
    w = tl.load(w_ptrs, mask=dmask, other=0.0).to(tl.float32)
    if MODE == 1:
        gg = g + wd * w
    else:
        gg = g
    sum_sq = tl.sum(gg * gg, axis=0)
    m = tl.load(momentum_ptr + r) + sum_sq / D
    tl.store(momentum_ptr + r, m)
    multiplier = lr / (tl.sqrt_rn(m) + eps)
    if MODE == 1:
        correction = 1.0 - multiplier * wd
    elif MODE == 2:
        correction = 1.0 - lr * wd
    else:
        correction = 1.0
    new = correction * w - multiplier * g
    out_ty = weight_ptr.dtype.element_ty
    if out_ty == tl.float32:
        tl.store(w_ptrs, new, mask=dmask)
    else:
        bits = new.to(tl.uint32, bitcast=True)
        exp_mask = tl.full([], 0x7F800000, tl.uint32)
        finite = (bits & exp_mask) != exp_mask
        if SR_DROP > 0:
            r64 = r.to(tl.int64)
            key = sr_key.to(tl.uint32)  # an i32 or i64 argument (never specialised), truncated to its 32 bits
            row_key = _mix32(_mix32(key ^ (r64 & 0xFFFFFFFF).to(tl.uint32)) ^ (r64 >> 32).to(tl.uint32))
            rnd = _mix32(row_key ^ d.to(tl.uint32))
            low = tl.full([], (1 << SR_DROP) - 1, tl.uint32)
            high = tl.full([], 0xFFFFFFFF ^ ((1 << SR_DROP) - 1), tl.uint32)
            bits = tl.where(finite, (bits + (rnd & low)) & high, bits)
            tl.store(w_ptrs, bits.to(tl.float32, bitcast=True).to(out_ty), mask=dmask)
        elif out_ty == tl.bfloat16:
            # Round to nearest even on the bits, so the (exact) cast also holds under the CPU interpreter,
            # which truncates fp32 -> bf16.
            bits = tl.where(finite, (bits + (0x7FFF + ((bits >> 16) & 1))) & tl.full([], 0xFFFF0000, tl.uint32),
                            bits)
            tl.store(w_ptrs, bits.to(tl.float32, bitcast=True).to(out_ty), mask=dmask)
        else:
            tl.store(w_ptrs, new.to(out_ty), mask=dmask)


@triton.jit(do_not_specialize=["sr_key"])
def _piece_kernel(rows_ptr, perm_ptr, grad_ptr, bag_ptr, psw_ptr, off_ptr, weight_ptr, momentum_ptr, partial_ptr,
                  N, D, ld, B, lr, eps, wd, sr_key,
                  FUSED: tl.constexpr, HAS_PSW: tl.constexpr, MEAN: tl.constexpr, MODE: tl.constexpr,
                  SR_DROP: tl.constexpr, CH: tl.constexpr, BLOCK_D: tl.constexpr):
    i = tl.program_id(0).to(tl.int64)
    r = tl.load(rows_ptr + i).to(tl.int64)  # rows may be sorted as int32; r * D needs 64 bits
    prev = tl.load(rows_ptr + i - 1, mask=i > 0, other=-1)
    is_start = (i == 0) | (prev != r)
    chunk = i // CH
    if is_start | (i == chunk * CH):
        chunk_end = tl.minimum(chunk * CH + CH, N)
        ks = tl.arange(0, CH)
        ahead = tl.load(rows_ptr + i + ks, mask=(i + ks) < chunk_end, other=-1)
        count = tl.min(tl.where(ahead == r, CH, ks), axis=0)
        nxt = i + count
        continues = tl.load(rows_ptr + nxt, mask=nxt < N, other=-1) == r
        d = tl.arange(0, BLOCK_D)
        dmask = d < D
        g = _gather_sum(grad_ptr, perm_ptr, bag_ptr, psw_ptr, off_ptr, i, count, ld, B, D, d, dmask,
                        FUSED, HAS_PSW, MEAN, CH)
        if is_start & (continues == 0):
            _update_row(weight_ptr, momentum_ptr, r, g, d, dmask, D, lr, eps, wd, sr_key, MODE, SR_DROP)
        else:
            slot = chunk * 2 + is_start.to(tl.int64)  # slot 1: the run starts here; slot 0: a continuation
            tl.store(partial_ptr + slot * D + d, g, mask=dmask)


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
        _update_row(weight_ptr, momentum_ptr, r, g, d, dmask, D, lr, eps, wd, sr_key, MODE, SR_DROP)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")


def _check_device(weight: torch.Tensor) -> None:
    if weight.device.type not in ("cuda", "meta") and not _interpreting():
        raise ValueError(f"weight: the Triton rowwise_adagrad kernel needs CUDA tensors, got device {weight.device}")
    if weight.dtype == torch.float64:
        raise ValueError("weight: the Triton rowwise_adagrad kernel takes float32, float16 or bfloat16, got float64")


def _launch(weight: torch.Tensor, momentum: torch.Tensor, rows: torch.Tensor, grad: torch.Tensor, *,
            bag: torch.Tensor | None, psw: torch.Tensor | None, offsets: torch.Tensor | None, B: int, mean: bool,
            lr: float, eps: float, weight_decay: float, weight_decay_mode: str, seed: int) -> None:
    if _interpreting() and ref.is_traced(weight):
        # The CPU interpreter runs kernels eagerly, even on fake tensors (wrap_triton passes interpreted kernels
        # through), so under tracing the launch goes into the graph as an opaque op that runs at call time.
        torch.ops.recsys.rowwise_adagrad_triton_interpreted_(weight, momentum, rows, grad, bag, psw, offsets, B,
                                                             mean, lr, eps, weight_decay, weight_decay_mode, seed)
        return
    _run_kernels(weight, momentum, rows, grad, bag, psw, offsets, B, mean, lr, eps, weight_decay,
                 weight_decay_mode, seed)


@torch.library.custom_op("recsys::rowwise_adagrad_triton_interpreted_", mutates_args={"weight", "momentum"})
def _interpreted(weight: torch.Tensor, momentum: torch.Tensor, rows: torch.Tensor, grad: torch.Tensor,
                 bag: torch.Tensor | None, psw: torch.Tensor | None, offsets: torch.Tensor | None, B: int, mean: bool,
                 lr: float, eps: float, weight_decay: float, weight_decay_mode: str, seed: int) -> None:
    _run_kernels(weight, momentum, rows, grad, bag, psw, offsets, B, mean, lr, eps, weight_decay,
                 weight_decay_mode, seed)


@_interpreted.register_fake
def _(weight, momentum, rows, grad, bag, psw, offsets, B, mean, lr, eps, weight_decay, weight_decay_mode, seed):
    return None


def _run_kernels(weight: torch.Tensor, momentum: torch.Tensor, rows: torch.Tensor, grad: torch.Tensor,
                 bag: torch.Tensor | None, psw: torch.Tensor | None, offsets: torch.Tensor | None, B: int, mean: bool,
                 lr: float, eps: float, weight_decay: float, weight_decay_mode: str, seed: int) -> None:
    N = rows.shape[0]
    D = weight.shape[1]
    # Rows fit in 32 bits for any table that fits in memory: a 32-bit sort makes half the radix passes.
    keys = rows.to(torch.int32) if weight.shape[0] <= torch.iinfo(torch.int32).max else rows
    sorted_rows, perm = torch.sort(keys, stable=True)
    num_chunks = triton.cdiv(N, _CH)
    partial = torch.empty((num_chunks * 2, D), dtype=torch.float32, device=weight.device)
    block_d = triton.next_power_of_2(D)
    num_warps = max(1, min(8, block_d // 128))
    sr_drop = 0
    if seed >= 0 and weight.dtype in (torch.float16, torch.bfloat16):
        sr_drop = 16 if weight.dtype == torch.bfloat16 else 13
    key = ref.sr_key(seed) if sr_drop else 0
    fused = bag is not None
    dummy = rows  # never read when the matching constexpr flag is off
    wrap_triton(_piece_kernel)[(N,)](
        sorted_rows, perm, grad, bag if fused else dummy, psw if psw is not None else dummy,
        offsets if offsets is not None else dummy, weight, momentum, partial,
        N, D, grad.stride(0), max(B, 1), lr, eps, weight_decay, key,
        FUSED=fused, HAS_PSW=psw is not None, MEAN=mean, MODE=_MODES[weight_decay_mode], SR_DROP=sr_drop,
        CH=_CH, BLOCK_D=block_d, num_warps=num_warps,
    )
    wrap_triton(_finish_kernel)[(num_chunks,)](
        sorted_rows, weight, momentum, partial, N, D, lr, eps, weight_decay, key,
        MODE=_MODES[weight_decay_mode], SR_DROP=sr_drop, CH=_CH, BLOCK_D=block_d, num_warps=num_warps,
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
    if not ref.is_traced(weight):
        ref.check_update_values(weight, indices)
    if indices.shape[0] == 0:
        return
    grad = grad_rows if grad_rows.stride(1) == 1 else grad_rows.contiguous()
    _launch(weight, momentum, indices.to(torch.int64), grad, bag=None, psw=None, offsets=None, B=1, mean=False,
            lr=lr, eps=eps, weight_decay=weight_decay, weight_decay_mode=weight_decay_mode,
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
    if not ref.is_traced(weight):
        ref.check_fused_values(weight, indices, offsets, table_offsets, T, B)
    N = indices.shape[0]
    if N == 0:
        return
    bag = ref.bag_ids(offsets, N)
    rows = indices.to(torch.int64)
    if table_offsets is not None:
        rows = rows + table_offsets.to(torch.int64).index_select(0, torch.div(bag, B, rounding_mode="floor"))
    grad = grad_output if grad_output.stride(1) == 1 else grad_output.contiguous()
    psw = None if per_sample_weights is None else per_sample_weights.to(torch.float32).contiguous()
    _launch(weight, momentum, rows, grad, bag=bag, psw=psw, offsets=offsets.to(torch.int64), B=B,
            mean=pooling == "mean", lr=lr, eps=eps, weight_decay=weight_decay,
            weight_decay_mode=weight_decay_mode, seed=stochastic_rounding_seed)
