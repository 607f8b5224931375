"""DLRM dot interaction in Triton: ``recsys::dot_interaction_triton`` and its backward.

Algorithm (DLRM, Naumov et al. 2019, "Deep Learning Recommendation Model for Personalization and
Recommendation Systems"; the tensor-core formulation follows NVIDIA's DLRM interaction kernels):
one program per sample b. T_b = [dense_b; sparse_b] is (n, D), n = F + 1, loaded as zero-padded
(BLOCK_N, BLOCK_K) tiles straight from ``dense`` and ``sparse`` (never concatenated in memory).

Forward: the Gram matrix S = T Tᵀ is built one (BLOCK_N x BLOCK_N) output tile at a time, only for
the tiles that hold part of the wanted triangle ("lower": tiles (i, j) with j <= i; "upper": j >= i),
each accumulated over K chunks with ``tl.dot`` in float32 (tensor cores for fp16/bf16; IEEE fp32 FMA
for float32 so results match float64 to ~1e-6). Each tile is stored straight to its pair positions,
computed from the closed-form pair index; the index is affine in the tile's column, so every tile row
is one contiguous span of the output. The program also copies dense to columns [0, D) and zeroes the
padding columns, so every output element is written exactly once and the inputs are read from HBM
once (tile re-reads for large n hit L1/L2: one sample is at most a few tens of KiB).

Backward: with G the symmetric (n, n) matrix of pair gradients (G[r][c] = G[c][r] = g_pair; diagonal
2·g_pair with self_interaction, else 0), grad_T = G T. Tiles of G are gathered from grad_output with the
same pair-index formula and multiplied on tensor cores against T tiles; row 0 of grad_T plus
grad_output[:, :D] is grad_dense, rows 1.. are grad_sparse.

Block sizes come from small heuristics of (n, D, dtype); the batch size is a runtime argument so a new
B never recompiles. Importing this module only defines the kernels and registers the ops.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from recsys_kernels.reference.dot_interaction import (
    check_backward_inputs,
    check_inputs,
    num_pairs,
    output_columns,
)

__all__ = ["dot_interaction_triton", "dot_interaction_triton_backward"]

_PAD_BLOCK = 16


@triton.jit
def _dot(a, b, acc):
    # fp32 (and fp64) inputs: IEEE products, no TF32, so fp32 matches a float64 reference to ~1e-6.
    if (a.dtype == tl.float32) or (a.dtype == tl.float64):
        return tl.dot(a, b, acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc)


@triton.jit
def _load_t_tile(dense_row, sparse_row, rows, ks, n, D, s_dk, s_sf, s_sk, UPCAST: tl.constexpr):
    """(BLOCK_N, BLOCK_K) tile of T = [dense; sparse] for one sample, zero outside (n, D)."""
    kmask = ks < D
    sp = tl.load(
        sparse_row + (rows[:, None] - 1).to(tl.int64) * s_sf + ks[None, :] * s_sk,
        mask=((rows[:, None] >= 1) & (rows[:, None] < n)) & kmask[None, :],
        other=0.0,
    )
    dn = tl.load(dense_row + ks * s_dk, mask=kmask, other=0.0)
    t = tl.where(rows[:, None] == 0, dn[None, :], sp)
    if UPCAST:
        t = t.to(tl.float32)
    return t


@triton.jit
def _pair_index(r, c, n, SELF: tl.constexpr, UPPER: tl.constexpr):
    """Pair position of rows r > c (r >= c with SELF) of T; int32 tensors broadcast together."""
    if UPPER:
        if SELF:
            return c * n - (c * (c - 1)) // 2 + (r - c)
        else:
            return c * n - (c * (c + 1)) // 2 + (r - c - 1)
    else:
        if SELF:
            return (r * (r + 1)) // 2 + c
        else:
            return (r * (r - 1)) // 2 + c


@triton.jit
def _dot_interaction_fwd_kernel(
    dense_ptr, sparse_ptr, out_ptr,
    n, D, P, out_cols,
    s_db, s_dk, s_sb, s_sf, s_sk, s_ob,
    SELF: tl.constexpr, UPPER: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PAD_BLOCK: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    dense_row = dense_ptr + b * s_db
    sparse_row = sparse_ptr + b * s_sb
    out_row = out_ptr + b * s_ob
    ar_n = tl.arange(0, BLOCK_N)
    ar_k = tl.arange(0, BLOCK_K)

    # Columns [0, D): dense copied.
    for k0 in range(0, D, BLOCK_K):
        ks = k0 + ar_k
        x = tl.load(dense_row + ks * s_dk, mask=ks < D)
        tl.store(out_row + ks, x, mask=ks < D)

    # Columns [D, D + P): one Gram tile per (i, j) on the wanted side of the diagonal.
    # Tile rows a index the pair's first listed element, tile columns c the second, so the pair
    # index is affine in c and each tile row lands on one contiguous span of the output.
    pairs_row = out_row + D
    nt = tl.cdiv(n, BLOCK_N)
    for ti in range(0, nt):
        a = ti * BLOCK_N + ar_n
        if UPPER:
            tj_lo = ti
            tj_hi = nt
        else:
            tj_lo = 0
            tj_hi = ti + 1
        for tj in range(tj_lo, tj_hi):
            c = tj * BLOCK_N + ar_n
            acc = tl.zeros((BLOCK_N, BLOCK_N), dtype=tl.float32)
            for k0 in range(0, D, BLOCK_K):
                ks = k0 + ar_k
                ta = _load_t_tile(dense_row, sparse_row, a, ks, n, D, s_dk, s_sf, s_sk, UPCAST)
                tc = _load_t_tile(dense_row, sparse_row, c, ks, n, D, s_dk, s_sf, s_sk, UPCAST)
                acc = _dot(ta, tl.trans(tc), acc)
            aa = a[:, None]
            cc = c[None, :]
            if UPPER:
                # pair (a, c), a < c (a <= c with SELF)
                if SELF:
                    keep = (aa <= cc) & (cc < n)
                else:
                    keep = (aa < cc) & (cc < n)
                idx = _pair_index(cc, aa, n, SELF, UPPER)
            else:
                # pair (a, c), c < a (c <= a with SELF)
                if SELF:
                    keep = (cc <= aa) & (aa < n)
                else:
                    keep = (cc < aa) & (aa < n)
                idx = _pair_index(aa, cc, n, SELF, UPPER)
            tl.store(pairs_row + idx, acc.to(out_ptr.dtype.element_ty), mask=keep)

    # Columns [D + P, out_cols): zero padding (fewer than pad_to_multiple columns).
    for p0 in range(D + P, out_cols, PAD_BLOCK):
        ps = p0 + tl.arange(0, PAD_BLOCK)
        tl.store(out_row + ps, tl.zeros((PAD_BLOCK,), dtype=out_ptr.dtype.element_ty), mask=ps < out_cols)


@triton.jit
def _dot_interaction_bwd_kernel(
    grad_out_ptr, dense_ptr, sparse_ptr, grad_dense_ptr, grad_sparse_ptr,
    n, D,
    s_gb, s_gk, s_db, s_dk, s_sb, s_sf, s_sk, s_gdb, s_gsb, s_gsf,
    SELF: tl.constexpr, UPPER: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    go_row = grad_out_ptr + b * s_gb
    go_pairs = go_row + D * s_gk
    dense_row = dense_ptr + b * s_db
    sparse_row = sparse_ptr + b * s_sb
    gd_row = grad_dense_ptr + b * s_gdb
    gs_row = grad_sparse_ptr + b * s_gsb
    ar_n = tl.arange(0, BLOCK_N)
    ar_k = tl.arange(0, BLOCK_K)
    nt = tl.cdiv(n, BLOCK_N)

    for ti in range(0, nt):
        a = ti * BLOCK_N + ar_n
        aa = a[:, None]
        for k0 in range(0, D, BLOCK_K):
            ks = k0 + ar_k
            kmask = ks < D
            acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
            for tj in range(0, nt):
                c = tj * BLOCK_N + ar_n
                cc = c[None, :]
                # G tile (a, c), gathered: the pair of rows {a, c} under the layout's ordering.
                hi = tl.maximum(aa, cc)
                lo = tl.minimum(aa, cc)
                idx = _pair_index(hi, lo, n, SELF, UPPER)
                valid = (aa < n) & (cc < n)
                if not SELF:
                    valid = valid & (aa != cc)
                g = tl.load(go_pairs + idx * s_gk, mask=valid, other=0.0)
                if UPCAST:
                    g = g.to(tl.float32)
                if SELF:
                    # d(T_a . T_a)/dT_a = 2 T_a; doubling is exact in every float dtype.
                    g = tl.where(aa == cc, g + g, g)
                tc = _load_t_tile(dense_row, sparse_row, c, ks, n, D, s_dk, s_sf, s_sk, UPCAST)
                acc = _dot(g, tc, acc)
            # Row 0 of grad_T belongs to dense, which also passes grad_output[:, :D] through.
            gdn = tl.load(go_row + ks * s_gk, mask=kmask, other=0.0).to(tl.float32)
            acc = tl.where(aa == 0, acc + gdn[None, :], acc)
            res = acc.to(grad_dense_ptr.dtype.element_ty)
            kk = ks[None, :]
            tl.store(gd_row + kk + aa * 0, res, mask=(aa == 0) & kmask[None, :])
            tl.store(
                gs_row + (aa - 1).to(tl.int64) * s_gsf + kk,
                res,
                mask=((aa >= 1) & (aa < n)) & kmask[None, :],
            )


def _next_pow2(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


def _forward_config(n: int, D: int, dtype: torch.dtype) -> tuple[int, int, int]:
    """(BLOCK_N, BLOCK_K, num_warps) for the forward kernel.

    BLOCK_N covers n in one tile up to 64 rows (tl.dot needs >= 16); beyond that the Gram matrix is
    tiled so the fp32 accumulator stays at <= 64x64 (32 registers/thread at 4 warps). BLOCK_K takes
    the whole embedding up to 128 for 16-bit inputs (one K step for the common D <= 128); fp32 runs
    on FMAs, where a smaller K chunk keeps the operand registers down.
    """
    block_n = min(max(16, _next_pow2(n)), 64)
    k_cap = 64 if dtype == torch.float32 else 128
    block_k = min(max(16, _next_pow2(D)), k_cap)
    num_warps = 2 if block_n == 16 else (4 if block_n == 32 else 8)
    return block_n, block_k, num_warps


def _backward_config(n: int, D: int, dtype: torch.dtype) -> tuple[int, int, int]:
    """(BLOCK_N, BLOCK_K, num_warps) for the backward kernel (accumulator is BLOCK_N x BLOCK_K)."""
    block_n = min(max(16, _next_pow2(n)), 64)
    k_cap = 64 if dtype == torch.float32 else 128
    block_k = min(max(16, _next_pow2(D)), k_cap)
    num_warps = 2 if block_n * block_k <= 1024 else (4 if block_n * block_k <= 4096 else 8)
    return block_n, block_k, num_warps


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")


def _upcast(dtype: torch.dtype) -> bool:
    # Triton's CPU interpreter keeps bf16 as raw uint16 and its tl.dot / arithmetic act on the bit
    # patterns, so there bf16 tiles are widened to fp32 right after loading (exact: bf16 products
    # are exact in fp32 and accumulation is fp32 either way). Never taken on a GPU.
    return dtype == torch.bfloat16 and _interpreting()


def _check_device(dense: torch.Tensor) -> None:
    # Triton runs on CUDA devices, or anywhere under its CPU interpreter (tests).
    if dense.device.type not in ("cuda", "meta") and not _interpreting():
        raise ValueError(
            f"dense: the Triton dot_interaction kernel needs CUDA tensors, got device {dense.device}"
        )


@triton_op("recsys::dot_interaction_triton", mutates_args=())
def dot_interaction_triton(
    dense: torch.Tensor,
    sparse: torch.Tensor,
    self_interaction: bool,
    layout: str,
    pad_to_multiple: int,
) -> torch.Tensor:
    """DLRM dot interaction forward (Triton).

    dense: (B, D), sparse: (B, F, D), both float32|float16|bfloat16, same dtype and device.
    Returns (B, out_cols) in the input dtype: [dense (D) | pair dot products (P) | zeros], with
    P = n(n-1)/2 (n(n+1)/2 with self_interaction), n = F + 1, out_cols = D + P rounded up to a
    multiple of pad_to_multiple; pairs ordered by ``layout`` ("lower" or "upper").
    """
    check_inputs(dense, sparse, self_interaction, layout, pad_to_multiple)
    _check_device(dense)
    B, F, D = sparse.shape
    n = F + 1
    P = num_pairs(n, self_interaction)
    out_cols = output_columns(D, n, self_interaction, pad_to_multiple)
    out = torch.empty((B, out_cols), dtype=dense.dtype, device=dense.device)
    if B == 0:
        return out
    block_n, block_k, num_warps = _forward_config(n, D, dense.dtype)
    wrap_triton(_dot_interaction_fwd_kernel)[(B,)](
        dense, sparse, out,
        n, D, P, out_cols,
        dense.stride(0), dense.stride(1),
        sparse.stride(0), sparse.stride(1), sparse.stride(2),
        out.stride(0),
        SELF=self_interaction, UPPER=(layout == "upper"), UPCAST=_upcast(dense.dtype),
        BLOCK_N=block_n, BLOCK_K=block_k, PAD_BLOCK=_PAD_BLOCK,
        num_warps=num_warps,
    )
    return out


@triton_op("recsys::dot_interaction_triton_backward", mutates_args=())
def dot_interaction_triton_backward(
    grad_output: torch.Tensor,
    dense: torch.Tensor,
    sparse: torch.Tensor,
    self_interaction: bool,
    layout: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DLRM dot interaction backward (Triton).

    grad_output: (B, >= D + P) in the input dtype (columns past D + P, the padding, are ignored; any
    strides). dense: (B, D), sparse: (B, F, D). Returns (grad_dense (B, D), grad_sparse (B, F, D)).
    """
    check_backward_inputs(grad_output, dense, sparse, self_interaction, layout)
    _check_device(dense)
    B, F, D = sparse.shape
    n = F + 1
    grad_dense = torch.empty((B, D), dtype=dense.dtype, device=dense.device)
    grad_sparse = torch.empty((B, F, D), dtype=sparse.dtype, device=sparse.device)
    if B == 0:
        return grad_dense, grad_sparse
    block_n, block_k, num_warps = _backward_config(n, D, dense.dtype)
    wrap_triton(_dot_interaction_bwd_kernel)[(B,)](
        grad_output, dense, sparse, grad_dense, grad_sparse,
        n, D,
        grad_output.stride(0), grad_output.stride(1),
        dense.stride(0), dense.stride(1),
        sparse.stride(0), sparse.stride(1), sparse.stride(2),
        grad_dense.stride(0), grad_sparse.stride(0), grad_sparse.stride(1),
        SELF=self_interaction, UPPER=(layout == "upper"), UPCAST=_upcast(dense.dtype),
        BLOCK_N=block_n, BLOCK_K=block_k,
        num_warps=num_warps,
    )
    return grad_dense, grad_sparse


def _setup_context(ctx, inputs, output) -> None:  # type: ignore[no-untyped-def]
    dense, sparse, self_interaction, layout, _pad_to_multiple = inputs
    ctx.save_for_backward(dense, sparse)
    ctx.self_interaction = self_interaction
    ctx.layout = layout


def _backward(ctx, grad_output: torch.Tensor):  # type: ignore[no-untyped-def]
    dense, sparse = ctx.saved_tensors
    grad_dense, grad_sparse = torch.ops.recsys.dot_interaction_triton_backward(
        grad_output, dense, sparse, ctx.self_interaction, ctx.layout
    )
    return grad_dense, grad_sparse, None, None, None


torch.library.register_autograd(
    "recsys::dot_interaction_triton", _backward, setup_context=_setup_context
)
