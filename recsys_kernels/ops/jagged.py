"""Jagged <-> padded-dense helpers (what HSTU needs from fbgemm's jagged ops, without fbgemm).

    lengths_to_offsets(lengths: (B,) int32|int64) -> (B + 1,) same dtype
    jagged_to_padded_dense(values: (L, *F), offsets: (B + 1,) int32|int64, max_len, padding_value=0.)
        -> (B, max_len, *F): positions past a sequence's length hold padding_value; longer sequences truncate
    padded_dense_to_jagged(dense: (B, N, *F), offsets: (B + 1,), total_len) -> (total_len, *F): rows past N
        of a sequence and rows past offsets[B] are zero

offsets start at 0, never decrease and end at most at L (checked in eager mode; on CUDA the check reads the
offsets, a device sync, unless they are passed on the CPU: every backend accepts CPU offsets for device values
and copies them up itself). values dtypes float32|float16|bfloat16|float64|int32|int64; the copies are
differentiable (each is the other's adjoint). Trailing feature dims are flattened for the kernels.

Backends (chosen per call by recsys_kernels._backend):
  cuda      csrc/jagged/jagged_cuda.cu — a block per 8-position tile, coalesced row copies; one-block scan
  triton    recsys_kernels/triton/jagged.py
  cpu       csrc/jagged/jagged_cpu.cpp
  reference recsys_kernels/reference/jagged.py — plain torch ops, static shapes; the HPU path
Registered ops: torch.ops.recsys.{lengths_to_offsets, jagged_to_padded_dense, padded_dense_to_jagged}.
"""

from __future__ import annotations

import math

import torch

from recsys_kernels import _backend
from recsys_kernels.reference import jagged as reference


def lengths_to_offsets(lengths: torch.Tensor) -> torch.Tensor:
    """lengths (B,) int32|int64 -> offsets (B + 1,) same dtype: [0, l0, l0 + l1, ...]."""
    backend = _backend.choose("lengths_to_offsets", lengths.device)
    if backend == "reference":
        return reference.lengths_to_offsets(lengths)
    if backend == "triton":
        return torch.ops.recsys.lengths_to_offsets_triton(lengths)
    return torch.ops.recsys.lengths_to_offsets(lengths)


def _j2d(values: torch.Tensor, offsets: torch.Tensor, max_len: int, padding_value: float) -> torch.Tensor:
    backend = _backend.choose("jagged_to_padded_dense", values.device)
    if backend == "reference":
        return reference.jagged_to_padded_dense(values, offsets, max_len, padding_value)
    if backend == "triton":
        return torch.ops.recsys.jagged_to_padded_dense_triton(values, offsets, max_len, padding_value)
    return torch.ops.recsys.jagged_to_padded_dense(values, offsets, max_len, padding_value)


def _d2j(dense: torch.Tensor, offsets: torch.Tensor, total_len: int) -> torch.Tensor:
    backend = _backend.choose("padded_dense_to_jagged", dense.device)
    if backend == "reference":
        return reference.padded_dense_to_jagged(dense, offsets, total_len)
    if backend == "triton":
        return torch.ops.recsys.padded_dense_to_jagged_triton(dense, offsets, total_len)
    return torch.ops.recsys.padded_dense_to_jagged(dense, offsets, total_len)


def jagged_to_padded_dense(values: torch.Tensor, offsets: torch.Tensor, max_len: int,
                           padding_value: float = 0.0) -> torch.Tensor:
    """values (L, *F), offsets (B + 1,) -> (B, max_len, *F) in values' dtype."""
    if values.dim() < 1:
        raise ValueError(f"values must have shape (L, *F), got {tuple(values.shape)}")
    feat = values.shape[1:]
    flat = values.reshape(values.shape[0], math.prod(feat))
    out = _j2d(flat, offsets, max_len, padding_value)
    return out.view(out.shape[0], max_len, *feat)


def padded_dense_to_jagged(dense: torch.Tensor, offsets: torch.Tensor, total_len: int) -> torch.Tensor:
    """dense (B, N, *F), offsets (B + 1,) -> (total_len, *F) in dense's dtype."""
    if dense.dim() < 2:
        raise ValueError(f"dense must have shape (B, N, *F), got {tuple(dense.shape)}")
    feat = dense.shape[2:]
    out = _d2j(dense.reshape(dense.shape[0], dense.shape[1], math.prod(feat)), offsets, total_len)
    return out.view(total_len, *feat)


def _fake_lengths_to_offsets(lengths):
    reference.check_lengths(lengths)
    return lengths.new_empty(lengths.shape[0] + 1)


def _fake_j2d(values, offsets, max_len, padding_value=0.0):
    reference.check_offsets(offsets, None)
    reference.check_values(values, offsets, "values", 2)
    return values.new_empty(offsets.shape[0] - 1, max_len, values.shape[1])


def _fake_d2j(dense, offsets, total_len):
    reference.check_offsets(offsets, None)
    reference.check_values(dense, offsets, "dense", 3)
    return dense.new_empty(total_len, dense.shape[2])


def _j2d_setup(ctx, inputs, output):
    values, offsets, _max_len, _pad = inputs
    ctx.save_for_backward(offsets)
    ctx.total_len = values.shape[0]


def _j2d_backward(ctx, grad):
    (offsets,) = ctx.saved_tensors
    return torch.ops.recsys.padded_dense_to_jagged(grad, offsets, ctx.total_len), None, None, None


def _d2j_setup(ctx, inputs, output):
    dense, offsets, _total_len = inputs
    ctx.save_for_backward(offsets)
    ctx.max_len = dense.shape[1]


def _d2j_backward(ctx, grad):
    (offsets,) = ctx.saved_tensors
    return torch.ops.recsys.jagged_to_padded_dense(grad, offsets, ctx.max_len, 0.0), None, None


if _backend.EXTENSION_LOADED:
    torch.library.register_fake("recsys::lengths_to_offsets")(_fake_lengths_to_offsets)
    torch.library.register_fake("recsys::jagged_to_padded_dense")(_fake_j2d)
    torch.library.register_fake("recsys::padded_dense_to_jagged")(_fake_d2j)
    torch.library.register_autograd("recsys::jagged_to_padded_dense", _j2d_backward, setup_context=_j2d_setup)
    torch.library.register_autograd("recsys::padded_dense_to_jagged", _d2j_backward, setup_context=_d2j_setup)
