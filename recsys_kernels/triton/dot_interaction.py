"""DLRM dot interaction in Triton: ``recsys::dot_interaction_triton`` and its backward.

Algorithm (DLRM, Naumov et al. 2019, "Deep Learning Recommendation Model for Personalization and
Recommendation Systems"; the tensor-core formulation follows NVIDIA's DLRM interaction kernels):
one program per sample b. T_b = [dense_b; sparse_b] is (n, D), n = F + 1, loaded as zero-padded
(BLOCK_N, BLOCK_K) tiles straight from ``dense`` and ``sparse`` (never concatenated in memory).

Forward: the Gram matrix S = T Tᵀ is built one (BLOCK_N x BLOCK_N) output tile at a time, only for
the tiles that hold part of the wanted triangle ("lower": tiles (i, j) with j <= i; "upper": j >= i),
each accumulated over K chunks with ``tl.dot`` in float32 (tensor cores for fp16/bf16; for float32
inputs "tf32x3", never plain TF32, so results match float64 to ~1e-7 relative). Each tile is stored
straight to its pair positions, computed from the closed-form pair index; the index is affine in the
tile's column, so every tile row is one contiguous span of the output. The program also copies dense
to columns [0, D) and zeroes the padding columns, so every output element is written exactly once and
the inputs are read from HBM once (tile re-reads for large n hit L1/L2: a sample is a few tens of KiB).

Backward: with G the symmetric (n, n) matrix of pair gradients (G[r][c] = G[c][r] = g_pair; diagonal
2·g_pair with self_interaction, else 0), grad_T = G T. Tiles of G are gathered from grad_output with the
same pair-index formula and multiplied against T tiles (tensor cores for fp16/bf16, IEEE FMA for
float32); row 0 of grad_T plus grad_output[:, :D] is grad_dense, rows 1.. are grad_sparse.
float64 inputs (gradcheck) accumulate in float64.

Block sizes come from small heuristics of (n, D, dtype); the batch size is a runtime argument so a new
B never recompiles. Importing this module only defines the kernels and registers the ops.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch._subclasses.fake_tensor import is_fake
from torch.library import triton_op, wrap_triton
from triton.runtime.jit import JITFunction

from recsys_kernels.reference.dot_interaction import (
    check_backward_inputs,
    check_inputs,
    num_pairs,
    output_columns,
)

__all__ = ["dot_interaction_triton", "dot_interaction_triton_backward"]

_PAD_BLOCK = 16


@triton.jit
def _dot(a, b, acc, FP32_PREC: tl.constexpr):
    """acc + a @ b. fp32 inputs never use plain TF32: FP32_PREC is "ieee" (FMA) or "tf32x3" (three
    TF32 tensor-core products with the low-order split, ~fp32 accurate: measured within 2e-7 of float64
    relative to |T_r||T_c| on H100, same as ieee, and 3.4x faster for the forward's T·Tᵀ)."""
    if a.dtype == tl.float64:
        return tl.dot(a, b, acc, input_precision="ieee", out_dtype=tl.float64)
    elif a.dtype == tl.float32:
        return tl.dot(a, b, acc, input_precision=FP32_PREC)
    else:
        return tl.dot(a, b, acc)


@triton.jit
def _acc_zeros(M: tl.constexpr, N: tl.constexpr, like_ptr):
    # float32 accumulation; float64 inputs (gradcheck) accumulate in float64.
    if like_ptr.dtype.element_ty == tl.float64:
        return tl.zeros((M, N), dtype=tl.float64)
    else:
        return tl.zeros((M, N), dtype=tl.float32)


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
def _to_out(x, dtype: tl.constexpr, UPCAST: tl.constexpr):
    """fp32 -> output dtype, round to nearest even. The interpreter truncates fp32 -> bf16, so under
    UPCAST the rounding is done on the bits first (the cast is then exact)."""
    if UPCAST:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + (0x7FFF + ((bits >> 16) & 1))) & 0xFFFF0000
        x = bits.to(tl.float32, bitcast=True)
    return x.to(dtype)


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
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, ONE_K: tl.constexpr, PAD_BLOCK: tl.constexpr,
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
        if ONE_K:
            ta = _load_t_tile(dense_row, sparse_row, a, ar_k, n, D, s_dk, s_sf, s_sk, UPCAST)
        if UPPER:
            tj_lo = ti
            tj_hi = nt
        else:
            tj_lo = 0
            tj_hi = ti + 1
        for tj in range(tj_lo, tj_hi):
            c = tj * BLOCK_N + ar_n
            acc = _acc_zeros(BLOCK_N, BLOCK_N, dense_ptr)
            if ONE_K:
                # D fits one K chunk: the row block of tile i was loaded once, above. (Reusing it for
                # the diagonal tile's other operand measured slower on H100 than a second, L1-hit load.)
                tc = _load_t_tile(dense_row, sparse_row, c, ar_k, n, D, s_dk, s_sf, s_sk, UPCAST)
                acc = _dot(ta, tl.trans(tc), acc, "tf32x3")
            else:
                for k0 in range(0, D, BLOCK_K):
                    ks = k0 + ar_k
                    tak = _load_t_tile(dense_row, sparse_row, a, ks, n, D, s_dk, s_sf, s_sk, UPCAST)
                    tck = _load_t_tile(dense_row, sparse_row, c, ks, n, D, s_dk, s_sf, s_sk, UPCAST)
                    acc = _dot(tak, tl.trans(tck), acc, "tf32x3")
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
            tl.store(pairs_row + idx, _to_out(acc, out_ptr.dtype.element_ty, UPCAST), mask=keep)

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
            acc = _acc_zeros(BLOCK_N, BLOCK_K, dense_ptr)
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
                acc = _dot(g, tc, acc, "ieee")
            # Row 0 of grad_T belongs to dense, which also passes grad_output[:, :D] through.
            gdn = tl.load(go_row + ks * s_gk, mask=kmask, other=0.0).to(acc.dtype)
            acc = tl.where(aa == 0, acc + gdn[None, :], acc)
            res = _to_out(acc, grad_dense_ptr.dtype.element_ty, UPCAST)
            kk = ks[None, :]
            tl.store(gd_row + kk + aa * 0, res, mask=(aa == 0) & kmask[None, :])  # row 0 only
            tl.store(
                gs_row + (aa - 1).to(tl.int64) * s_gsf + kk,
                res,
                mask=((aa >= 1) & (aa < n)) & kmask[None, :],
            )


# TRITON_INTERPRET=1 at import makes @triton.jit return interpreted (CPU, numpy) functions instead.
_INTERPRETED = not isinstance(_dot_interaction_fwd_kernel, JITFunction)


def _next_pow2(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


def _forward_config(n: int, D: int, dtype: torch.dtype) -> tuple[int, int, int, int]:
    """(BLOCK_N, BLOCK_K, num_warps, num_stages) for the forward kernel.

    Measured on H100 (B = 65536, fp16; GB/s of compulsory traffic): 32-row Gram tiles with 2 warps beat
    64-row tiles at every n tried (n = 27: 1790 vs 850; n = 101: 1450 vs 1130; n = 129: 1320 vs
    1070): more resident samples per SM hide more memory latency, and masked waste is smaller. BLOCK_K
    takes the whole row up to 128 (one K step, the row block of tile i loaded once); no software
    pipelining (the K loop is usually a single step). fp32 (tf32x3) peaks at BLOCK_K = 64; fp64 only
    serves gradcheck and stays small.
    """
    block_n = 16 if n <= 16 else 32
    block_k = min(max(16, _next_pow2(D)), _k_cap(dtype))
    return block_n, block_k, 2, 1


def _backward_config(n: int, D: int, dtype: torch.dtype) -> tuple[int, int, int, int]:
    """(BLOCK_N, BLOCK_K, num_warps, num_stages) for the backward kernel (accumulator BLOCK_N x BLOCK_K).

    Measured on H100 (fp16): BLOCK_K = 64 with 2 pipeline stages over the G-tile loop wins (n = 27,
    D = 128: 2230 GB/s vs 2110 at BLOCK_K = 128); 64-row tiles with 8 warps win where they pad n no
    more than 32-row tiles do (n = 101: 1490 vs 1360 GB/s), 32-row tiles otherwise (n = 129: 930 vs 850).
    """
    if dtype in (torch.float32, torch.float64):
        # IEEE FMA products: a 64-row G tile spills (38 GB/s at n = 101 vs 2300 GB/s at 32 rows, n = 27).
        block_k = min(max(16, _next_pow2(D)), _k_cap(dtype))
        return (16 if n <= 16 else 32), block_k, 4, 1
    if n <= 16:
        block_n = 16
    elif n > 32 and triton.cdiv(n, 64) * 64 <= triton.cdiv(n, 32) * 32:
        block_n = 64
    else:
        block_n = 32
    block_k = min(max(16, _next_pow2(D)), 64)
    return block_n, block_k, (8 if block_n == 64 else 2), 2


def _k_cap(dtype: torch.dtype) -> int:
    return {torch.float32: 64, torch.float64: 32}.get(dtype, 128)


def _upcast(dtype: torch.dtype) -> bool:
    # Triton's CPU interpreter keeps bf16 as raw uint16 and its tl.dot / arithmetic act on the bit
    # patterns, so there bf16 tiles are widened to fp32 right after loading (exact: bf16 products
    # are exact in fp32 and accumulation is fp32 either way). Never taken on a GPU.
    return dtype == torch.bfloat16 and _INTERPRETED


def _no_data(t: torch.Tensor) -> bool:
    """True when ``t`` has no memory to run a kernel on. Meta tensors never do; under
    TRITON_INTERPRET=1 wrap_triton hands back the raw interpreted kernel (no tracing wrapper), so fake
    tensors (opcheck, shape propagation) must not reach it either. On a GPU, wrap_triton's wrapper
    itself turns the launch into a no-op for fake tensors."""
    return t.device.type == "meta" or (_INTERPRETED and is_fake(t))


def _check_device(dense: torch.Tensor) -> None:
    # Triton runs on CUDA devices, or anywhere under its CPU interpreter (tests).
    if dense.device.type not in ("cuda", "meta") and not _INTERPRETED:
        raise ValueError(
            f"dense: the Triton dot_interaction kernel needs CUDA tensors (or TRITON_INTERPRET=1 set "
            f"before import), got device {dense.device}"
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

    dense: (B, D), sparse: (B, F, D), both float32|float16|bfloat16 (float64 also runs, for gradcheck),
    same dtype, on CUDA (or CPU under TRITON_INTERPRET=1).
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
    if B == 0 or _no_data(out):
        return out
    block_n, block_k, num_warps, num_stages = _forward_config(n, D, dense.dtype)
    wrap_triton(_dot_interaction_fwd_kernel)[(B,)](
        dense, sparse, out,
        n, D, P, out_cols,
        dense.stride(0), dense.stride(1),
        sparse.stride(0), sparse.stride(1), sparse.stride(2),
        out.stride(0),
        SELF=self_interaction, UPPER=(layout == "upper"), UPCAST=_upcast(dense.dtype),
        BLOCK_N=block_n, BLOCK_K=block_k, ONE_K=(D <= block_k), PAD_BLOCK=_PAD_BLOCK,
        num_warps=num_warps,
        num_stages=num_stages,
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
    if B == 0 or _no_data(grad_dense):
        return grad_dense, grad_sparse
    block_n, block_k, num_warps, num_stages = _backward_config(n, D, dense.dtype)
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
        num_stages=num_stages,
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

if _INTERPRETED:
    # wrap_triton cannot capture interpreted kernels, so AOTDispatcher (torch.compile, opcheck) must
    # keep these ops opaque instead of inlining their bodies, or the launch would vanish from the graph.
    from torch._subclasses.functional_tensor import FunctionalTensorMode

    def _keep_opaque(mode, op, types, args, kwargs):  # type: ignore[no-untyped-def]
        return mode.__torch_dispatch__(op, types, args, kwargs)

    for _op in (dot_interaction_triton, dot_interaction_triton_backward):
        _op.register_torch_dispatch(FunctionalTensorMode, _keep_opaque)
