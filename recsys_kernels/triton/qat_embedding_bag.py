"""QAT embedding bags in Triton: ``recsys::qat_embedding_bag_triton`` and its straight-through backward
``recsys::qat_embedding_bag_triton_backward`` (semantics: recsys_kernels/reference/qat_embedding_bag.py;
DQRM, Zhou et al. 2023).

Forward: one program per bag (t, b). BLOCK_L looked-up master rows are loaded as a (BLOCK_L, WORDS, 8) tile
— element (w - 1) * 8 + j of the row at [w, j], the very tile shape in which the INT4 lookup
(triton/int4_embedding_bag.py) expands codes, so a table converted with to_int4() pools bit-identically —
fake-quantized in registers ("row": min/max of the row, fp16 scale and bias, codes 0..15; "table": the
table's fp16 scale, codes -8..7), weighted, summed over the rows and accumulated in float32 (float64 for
float64 tests). Bounds checking as in the INT4 kernel (device flag, one host read with bounds_check="error").

Backward: one program per BLOCK_K consecutive bags (about BLOCK_P positions), walking their positions BLOCK_P
at a time; a position's bag is counted from the program's BLOCK_K bag starts. Each position gets its row index
and its gradient row grad_output[b, t*D:(t+1)*D] * w_p (/ L), BLOCK_D columns at a time: the values of the
sparse gradient. (An earlier version binary-searched all the offsets for every position: 16 dependent loads.)
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch._subclasses.functional_tensor import FunctionalTensorMode
from torch.library import triton_op, wrap_triton

from recsys_kernels.reference import qat_embedding_bag as reference
from recsys_kernels.reference.int4_embedding_bag import row_bytes
from recsys_kernels.triton.int4_embedding_bag import (
    _INTERPRETED,
    _bag_range,
    _check_device,
    _code,
    _half,
    _next_pow2,
    _no_data,
    _rint,
    _row_params,
    bag_config,
    keep_opaque,
    raise_if_flagged,
)

__all__ = ["qat_embedding_bag_triton", "qat_embedding_bag_triton_backward"]


# D and the strides stay specialised: Triton then knows rows start on 16-byte boundaries (D % 16 == 0) and
# moves them in 16-byte vectors, which an unspecialised D reduces to 4-byte accesses.
@triton.jit(do_not_specialize=["N", "B", "n_bags", "E"])
def _qat_fwd_kernel(w_ptr, idx_ptr, off_ptr, to_ptr, psw_ptr, scale_ptr, out_ptr, err_ptr,
                    N, B, n_bags, E, D, out_stride,
                    HAS_TO: tl.constexpr, HAS_PSW: tl.constexpr, MEAN: tl.constexpr, CHECK: tl.constexpr,
                    TABLE: tl.constexpr, BLOCK_L: tl.constexpr, WORDS: tl.constexpr):
    k = tl.program_id(0).to(tl.int64)
    t = k // B
    b = k - t * B
    acc_ty = out_ptr.dtype.element_ty
    if HAS_TO:
        lo = tl.load(to_ptr + t).to(tl.int64)
        hi = tl.load(to_ptr + t + 1).to(tl.int64)
        rows = tl.maximum(hi - lo, 0)
        broken = (hi < lo) | (hi > E) | (tl.load(to_ptr).to(tl.int64) != 0)
    else:
        lo = t * 0
        rows = E + lo
        broken = rows < 0
    start, stop, bad_bag = _bag_range(off_ptr, k, n_bags, N, CHECK)
    if TABLE:
        s = _half(tl.load(scale_ptr + t))
        inv = tl.where(s == 0.0, 0.0, tl.math.div_rn(1.0 + s * 0.0, s))
    w = tl.arange(0, WORDS)
    j = tl.arange(0, 8)
    c = (w[:, None] - 1) * 8 + j[None, :]
    cm = (w[:, None] >= 1) & (c < D)
    acc = tl.zeros((WORDS, 8), acc_ty)
    n_bad = (broken | bad_bag).to(tl.int32)
    for p0 in range(start, stop, BLOCK_L):
        p = p0 + tl.arange(0, BLOCK_L)
        pm = p < stop
        r = tl.load(idx_ptr + p, mask=pm, other=0).to(tl.int64)
        g = lo + r
        valid = pm & (r >= 0) & (r < rows) & (g >= 0) & (g < E)
        if CHECK:
            n_bad += tl.sum((pm & ~valid).to(tl.int32), axis=0)
        g = tl.where(valid, g, 0)
        m = valid[:, None, None] & cm[None, :, :]
        x = tl.load(w_ptr + g[:, None, None] * D + c[None, :, :], mask=m, other=0.0).to(tl.float32)
        if TABLE:
            v = _rint(tl.minimum(tl.maximum(x * inv, -8.0), 7.0)).to(acc_ty) * s.to(acc_ty)
        else:
            mn = tl.min(tl.min(tl.where(m, x, float("inf")), axis=2), axis=1)
            mx = tl.max(tl.max(tl.where(m, x, float("-inf")), axis=2), axis=1)
            mn = tl.where(valid, mn, 0.0)  # rows that do not count: finite qparams, no inf - inf
            mx = tl.where(valid, mx, 0.0)
            scale, bias, rinv = _row_params(mn, mx)
            q = _code(x, bias[:, None, None], rinv[:, None, None])
            v = q.to(acc_ty) * scale.to(acc_ty)[:, None, None] + bias.to(acc_ty)[:, None, None]
        if HAS_PSW:
            v = tl.load(psw_ptr + p, mask=valid, other=0.0).to(acc_ty)[:, None, None] * v
        acc += tl.sum(tl.where(valid[:, None, None], v, 0.0), axis=0)
    if MEAN:
        acc = acc / tl.maximum(stop - start, 1).to(acc_ty)
    tl.store(out_ptr + b * out_stride + t * D + c, acc, mask=cm)
    if CHECK:
        if n_bad > 0:
            tl.atomic_max(err_ptr, n_bad)


@triton.jit(do_not_specialize=["N", "B", "n_bags", "E"])  # D, g_stride: as above
def _qat_bwd_kernel(grad_ptr, idx_ptr, off_ptr, to_ptr, psw_ptr, rows_ptr, out_ptr,
                    N, B, n_bags, E, D, g_stride,
                    HAS_TO: tl.constexpr, HAS_PSW: tl.constexpr, MEAN: tl.constexpr,
                    BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr):
    k0 = tl.program_id(0).to(tl.int64) * BLOCK_K
    # Positions [x_k0, x_(k0+BLOCK_K)) with x_k = clamp(offsets[k], 0, N), x_0 = 0, x_n_bags = N: the programs
    # cover [0, N) whatever the offsets (no gradient row left unwritten), each position once for valid offsets.
    first = tl.minimum(tl.maximum(tl.load(off_ptr + k0).to(tl.int64), 0), N)
    first = tl.where(k0 == 0, 0, first)
    k_end = tl.minimum(k0 + BLOCK_K, n_bags)
    last = tl.minimum(tl.maximum(tl.load(off_ptr + k_end).to(tl.int64), 0), N)
    last = tl.where(k_end == n_bags, N, last)
    if BLOCK_K > 1:
        j = tl.arange(0, BLOCK_K)
        inner = (j >= 1) & (k0 + j < n_bags)
        x = tl.minimum(tl.maximum(tl.load(off_ptr + k0 + j, mask=inner, other=0).to(tl.int64), 0), N)
    for p0 in range(first, last, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)
        pm = p < last
        if BLOCK_K > 1:  # the bag of p: k0 + the number of this program's later bags starting at or before p
            k = k0 + tl.sum((inner[None, :] & (x[None, :] <= p[:, None])).to(tl.int64), axis=1)
        else:
            k = k0 + p * 0
        t = k // B
        b = k - t * B
        r = tl.load(idx_ptr + p, mask=pm, other=0).to(tl.int64)
        if HAS_TO:
            t_lo = tl.load(to_ptr + t, mask=pm, other=0).to(tl.int64)
            t_rows = tl.maximum(tl.load(to_ptr + t + 1, mask=pm, other=0).to(tl.int64) - t_lo, 0)
        else:
            t_lo = r * 0
            t_rows = t_lo + E
        glob = t_lo + r
        keep = pm & (r >= 0) & (r < t_rows) & (glob >= 0) & (glob < E)
        tl.store(rows_ptr + p, tl.where(keep, glob, 0), mask=pm)
        scale = tl.zeros((BLOCK_P,), out_ptr.dtype.element_ty) + 1.0
        if HAS_PSW:
            scale = tl.load(psw_ptr + p, mask=pm, other=0.0).to(out_ptr.dtype.element_ty)
        if MEAN:
            o0 = tl.minimum(tl.maximum(tl.load(off_ptr + k, mask=pm, other=0).to(tl.int64), 0), N)
            o1 = tl.minimum(tl.maximum(tl.load(off_ptr + k + 1, mask=pm, other=0).to(tl.int64), 0), N)
            length = tl.maximum(o1 - o0, 1).to(out_ptr.dtype.element_ty)
        for d0 in range(0, D, BLOCK_D):
            d = d0 + tl.arange(0, BLOCK_D)
            dm = d < D
            g = tl.load(grad_ptr + b[:, None] * g_stride + t[:, None] * D + d[None, :],
                        mask=keep[:, None] & dm[None, :], other=0.0)
            val = g * scale[:, None]
            if MEAN:
                val = val / length[:, None]
            val = tl.where(keep[:, None], val, 0.0)
            tl.store(out_ptr + p[:, None] * D + d[None, :], val, mask=pm[:, None] & dm[None, :],
                     eviction_policy="evict_first")


@triton_op("recsys::qat_embedding_bag_triton", mutates_args=())
def qat_embedding_bag_triton(weight: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor,
                             table_offsets: torch.Tensor | None, pooling: str,
                             per_sample_weights: torch.Tensor | None, qparams: str,
                             table_scale: torch.Tensor | None, bounds_check: str) -> torch.Tensor:
    """QAT forward (Triton): weight (E, D) float32 -> (B, T*D) of pooled INT4-fake-quantized rows."""
    T, B = reference.check_inputs(weight, indices, offsets, table_offsets, pooling, per_sample_weights, qparams,
                                  table_scale, bounds_check)
    _check_device(weight, "weight")
    E, D = weight.shape
    out = torch.empty((B, T * D), dtype=weight.dtype, device=weight.device)
    check = bounds_check == "error"
    n_bags, N = T * B, indices.shape[0]
    if _no_data(out):
        return out
    if n_bags == 0:
        if check and reference.reads_values(indices):
            reference.check_values(weight, indices, offsets, table_offsets, B)
        return out
    err = torch.zeros(1, dtype=torch.int32, device=weight.device)
    block_l, n_words, _ = bag_config(row_bytes(D), N / n_bags)
    # One bag a program: a warp per 1024 codes of the (BLOCK_L, WORDS) tile (H100, 2026-11-22: 1.9 / 2.4 ms CUDA /
    # Triton QAT step); the lookup's warps, several bags a program, do not carry over.
    num_warps = max(1, min(4, block_l * n_words * 8 // 1024))
    wrap_triton(_qat_fwd_kernel)[(n_bags,)](
        weight, indices, offsets, table_offsets if table_offsets is not None else offsets,
        per_sample_weights if per_sample_weights is not None else out,
        table_scale if table_scale is not None else out, out, err,
        N, B, n_bags, E, D, out.stride(0),
        HAS_TO=table_offsets is not None, HAS_PSW=per_sample_weights is not None, MEAN=pooling == "mean",
        CHECK=check, TABLE=qparams == "table", BLOCK_L=block_l, WORDS=n_words, num_warps=num_warps)
    if check:
        raise_if_flagged(err, lambda: reference.check_values(weight, indices, offsets, table_offsets, B))
    return out


@triton_op("recsys::qat_embedding_bag_triton_backward", mutates_args=())
def qat_embedding_bag_triton_backward(grad_output: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor,
                                      table_offsets: torch.Tensor | None, pooling: str,
                                      per_sample_weights: torch.Tensor | None,
                                      num_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Straight-through backward (Triton) -> (rows (N,) int64, grad_rows (N, D))."""
    T, B, D = reference.check_backward_inputs(grad_output, indices, offsets, table_offsets, pooling,
                                              per_sample_weights, num_rows)
    _check_device(grad_output, "grad_output")
    N, n_bags = indices.shape[0], T * B
    if n_bags == 0:
        return (torch.zeros(N, dtype=torch.int64, device=grad_output.device),
                torch.zeros(N, D, dtype=grad_output.dtype, device=grad_output.device))
    rows = torch.empty(N, dtype=torch.int64, device=grad_output.device)
    grad_rows = torch.empty(N, D, dtype=grad_output.dtype, device=grad_output.device)
    if N == 0 or _no_data(grad_rows):
        return rows, grad_rows
    g = grad_output.contiguous()
    block_d = min(128, _next_pow2(D))
    block_p = max(1, min(64, 4096 // block_d))
    # Bags a program: about BLOCK_P positions' worth (one bag at L >= 32, 32 bags at L = 1).
    block_k = min(64, _next_pow2(max(1, round(block_p * n_bags / max(N, 1)))))
    wrap_triton(_qat_bwd_kernel)[(triton.cdiv(n_bags, block_k),)](
        g, indices, offsets, table_offsets if table_offsets is not None else offsets,
        per_sample_weights if per_sample_weights is not None else g, rows, grad_rows,
        N, B, n_bags, num_rows, D, g.stride(0),
        HAS_TO=table_offsets is not None, HAS_PSW=per_sample_weights is not None, MEAN=pooling == "mean",
        BLOCK_K=block_k, BLOCK_P=block_p, BLOCK_D=block_d, num_warps=4)
    return rows, grad_rows


# Opaque in compiled graphs, as the INT4 lookup (see there): always the forward (its bounds check reads a
# device flag after the launch), the backward under the interpreter.
for _op in ((qat_embedding_bag_triton, qat_embedding_bag_triton_backward) if _INTERPRETED
            else (qat_embedding_bag_triton,)):
    _op.register_torch_dispatch(FunctionalTensorMode, keep_opaque)


def _register_autograd() -> None:
    from recsys_kernels.ops.qat_embedding_bag import _register_triton_autograd

    _register_triton_autograd()


_register_autograd()
