"""Jagged <-> padded-dense helpers in Triton: ``recsys::lengths_to_offsets_triton``,
``recsys::jagged_to_padded_dense_triton``, ``recsys::padded_dense_to_jagged_triton``.

Semantics in recsys_kernels/reference/jagged.py. The copies run one program per (sequence, block of
BLOCK_T positions), looping over the feature dim in BLOCK_D chunks: each row is one contiguous span, so
loads and stores coalesce. ``lengths_to_offsets`` is one program scanning BLOCK_B lengths at a time with
``tl.cumsum`` and a running carry (B is at most a few thousand; a single pass is launch-bound anyway).
Offsets are validated on the host in eager mode (reference.check_offsets: a device sync on CUDA).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch._subclasses.fake_tensor import is_fake
from torch.library import triton_op, wrap_triton
from triton.runtime.jit import JITFunction

from recsys_kernels.reference.jagged import (check_lengths, check_offsets, check_padded_dense_inputs, check_values,
                                             index_on)

__all__ = ["lengths_to_offsets_triton", "jagged_to_padded_dense_triton", "padded_dense_to_jagged_triton"]


@triton.jit
def _lengths_to_offsets_kernel(lengths_ptr, out_ptr, B, BLOCK_B: tl.constexpr):
    carry = tl.zeros((1,), dtype=out_ptr.dtype.element_ty)
    tl.store(out_ptr + tl.arange(0, 1), carry)
    for b0 in range(0, B, BLOCK_B):
        bs = b0 + tl.arange(0, BLOCK_B)
        x = tl.load(lengths_ptr + bs, mask=bs < B, other=0).to(out_ptr.dtype.element_ty)
        c = tl.cumsum(x, 0) + tl.sum(carry, 0)
        tl.store(out_ptr + 1 + bs, c, mask=bs < B)
        carry = carry + tl.sum(x, 0)


@triton.jit
def _jagged_to_padded_kernel(values_ptr, offsets_ptr, out_ptr, pad, max_len, D, s_vl, s_vd,
                             BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    b = tl.program_id(0)
    t = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
    start = tl.load(offsets_ptr + b).to(tl.int64)
    n = tl.minimum(tl.load(offsets_ptr + b + 1).to(tl.int64) - start, max_len)
    out_rows = out_ptr + (b.to(tl.int64) * max_len + t) * D
    src_rows = values_ptr + (start + t) * s_vl
    for d0 in range(0, D, BLOCK_D):
        ds = d0 + tl.arange(0, BLOCK_D)
        dm = ds < D
        x = tl.load(src_rows[:, None] + ds[None, :] * s_vd, mask=(t < n)[:, None] & dm[None, :], other=0)
        x = tl.where((t < n)[:, None], x, (tl.zeros((BLOCK_T, BLOCK_D), dtype=tl.float32) + pad).to(x.dtype))
        tl.store(out_rows[:, None] + ds[None, :], x, mask=(t < max_len)[:, None] & dm[None, :])


@triton.jit
def _padded_to_jagged_kernel(dense_ptr, offsets_ptr, out_ptr, N, D, s_db, s_dn, s_dd,
                             BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    b = tl.program_id(0)
    t = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
    start = tl.load(offsets_ptr + b).to(tl.int64)
    n = tl.minimum(tl.load(offsets_ptr + b + 1).to(tl.int64) - start, N)
    src_rows = dense_ptr + b.to(tl.int64) * s_db + t.to(tl.int64) * s_dn
    out_rows = out_ptr + (start + t) * D
    for d0 in range(0, D, BLOCK_D):
        ds = d0 + tl.arange(0, BLOCK_D)
        m = (t < n)[:, None] & (ds < D)[None, :]
        x = tl.load(src_rows[:, None] + ds[None, :] * s_dd, mask=m)
        tl.store(out_rows[:, None] + ds[None, :], x, mask=m)


_INTERPRETED = not isinstance(_jagged_to_padded_kernel, JITFunction)


def _no_data(t: torch.Tensor) -> bool:
    return t.device.type == "meta" or (_INTERPRETED and is_fake(t))


def _check_device(t: torch.Tensor, name: str) -> None:
    if t.device.type not in ("cuda", "meta") and not _INTERPRETED:
        raise ValueError(f"{name}: the Triton jagged kernels need CUDA tensors (or TRITON_INTERPRET=1 set before "
                         f"import), got device {t.device}")


def _block_d(D: int) -> int:
    return min(128, max(16, triton.next_power_of_2(max(D, 1))))


@triton_op("recsys::lengths_to_offsets_triton", mutates_args=())
def lengths_to_offsets_triton(lengths: torch.Tensor) -> torch.Tensor:
    """lengths (B,) int32|int64 -> offsets (B + 1,) same dtype."""
    check_lengths(lengths)
    _check_device(lengths, "lengths")
    out = torch.empty(lengths.shape[0] + 1, dtype=lengths.dtype, device=lengths.device)
    if _no_data(out):
        return out
    wrap_triton(_lengths_to_offsets_kernel)[(1,)](lengths, out, lengths.shape[0], BLOCK_B=1024)
    return out


@triton_op("recsys::jagged_to_padded_dense_triton", mutates_args=())
def jagged_to_padded_dense_triton(values: torch.Tensor, offsets: torch.Tensor, max_len: int,
                                  padding_value: float = 0.0) -> torch.Tensor:
    """values (L, D), offsets (B + 1,) -> (B, max_len, D), padding_value past each sequence's length."""
    check_offsets(offsets, values.shape[0] if values.dim() == 2 else None)
    check_values(values, offsets, "values", 2)
    if max_len < 0:
        raise ValueError(f"max_len must be >= 0, got {max_len}")
    _check_device(values, "values")
    B, D = offsets.shape[0] - 1, values.shape[1]
    out = torch.empty((B, max_len, D), dtype=values.dtype, device=values.device)
    if out.numel() == 0 or _no_data(out):
        return out
    offsets = index_on(offsets, values.device)
    block_t = 16
    wrap_triton(_jagged_to_padded_kernel)[(B, triton.cdiv(max_len, block_t))](
        values, offsets, out, padding_value, max_len, D, values.stride(0), values.stride(1),
        BLOCK_T=block_t, BLOCK_D=_block_d(D))
    return out


@triton_op("recsys::padded_dense_to_jagged_triton", mutates_args=())
def padded_dense_to_jagged_triton(dense: torch.Tensor, offsets: torch.Tensor, total_len: int) -> torch.Tensor:
    """dense (B, N, D), offsets (B + 1,) -> (total_len, D); rows no sequence position maps to are zero."""
    check_padded_dense_inputs(dense, offsets, total_len)
    B, N, D = dense.shape
    _check_device(dense, "dense")
    out = torch.zeros((total_len, D), dtype=dense.dtype, device=dense.device)
    if out.numel() == 0 or B * N == 0 or _no_data(out):
        return out
    offsets = index_on(offsets, dense.device)
    block_t = 16
    wrap_triton(_padded_to_jagged_kernel)[(B, triton.cdiv(N, block_t))](
        dense, offsets, out, N, D, dense.stride(0), dense.stride(1), dense.stride(2),
        BLOCK_T=block_t, BLOCK_D=_block_d(D))
    return out


def _j2d_setup(ctx, inputs, output) -> None:  # type: ignore[no-untyped-def]
    values, offsets, _max_len, _pad = inputs
    ctx.save_for_backward(offsets)
    ctx.total_len = values.shape[0]


def _j2d_backward(ctx, grad):  # type: ignore[no-untyped-def]
    (offsets,) = ctx.saved_tensors
    return padded_dense_to_jagged_triton(grad, offsets, ctx.total_len), None, None, None


def _d2j_setup(ctx, inputs, output) -> None:  # type: ignore[no-untyped-def]
    dense, offsets, _total_len = inputs
    ctx.save_for_backward(offsets)
    ctx.max_len = dense.shape[1]


def _d2j_backward(ctx, grad):  # type: ignore[no-untyped-def]
    (offsets,) = ctx.saved_tensors
    return jagged_to_padded_dense_triton(grad, offsets, ctx.max_len, 0.0), None, None


torch.library.register_autograd("recsys::jagged_to_padded_dense_triton", _j2d_backward, setup_context=_j2d_setup)
torch.library.register_autograd("recsys::padded_dense_to_jagged_triton", _d2j_backward, setup_context=_d2j_setup)

if _INTERPRETED:
    # wrap_triton cannot capture interpreted kernels: keep the ops opaque to AOTDispatcher (see dot_interaction).
    from torch._subclasses.functional_tensor import FunctionalTensorMode

    def _keep_opaque(mode, op, types, args, kwargs):  # type: ignore[no-untyped-def]
        return mode.__torch_dispatch__(op, types, args, kwargs)

    for _op in (lengths_to_offsets_triton, jagged_to_padded_dense_triton, padded_dense_to_jagged_triton):
        _op.register_torch_dispatch(FunctionalTensorMode, _keep_opaque)
