"""Quantization-aware training of INT4 embedding tables (DQRM, Zhou et al. 2023).

    qat_embedding_bag(weight: (E, D) float32, indices: (N,) int32|int64, offsets: (T*B + 1,) int32|int64, *,
                      table_offsets: (T + 1,) | None = None, pooling="sum"|"mean",
                      per_sample_weights: (N,) float32 | None = None, qparams="row"|"table",
                      table_scale: (T,) float32 | None = None, bounds_check="error"|"ignore") -> (B, T*D)
    table_scales(weight, table_offsets=None) -> (T,) float32    DQRM's max|W_t| / 7 (reads the whole table)

Forward: each looked-up row of the float32 master weight is fake-quantized to INT4 inside the kernel and the
dequantized values are pooled as int4_embedding_bag pools stored rows ("row": per-row asymmetric, the INT4
storage's own arithmetic; "table": symmetric with the table's scale, rounded to fp16, codes clamped to
[-8, 7]; table_scale defaults to table_scales(weight) — pass the module's cached scale to avoid the full read).
Layout: T tables of one D back to back in weight (table_offsets[t] = first row of table t), offsets
table-major (bag t*B + b = sample b of table t, indices local to the table); output (B, T*D), table t in
columns [t*D, (t+1)*D). Empty bags give zeros. bounds_check as in int4_embedding_bag.

Backward: the straight-through estimator. weight receives a **sparse COO** gradient (E, D) holding one row per
occurrence (rows table_offsets[t] + indices[p], values grad_output[b, t-slice] * per_sample_weights[p], / L
for "mean"; uncoalesced, duplicates summed by whoever consumes it: torch.optim.SparseAdam/Adagrad/SGD,
``.coalesce()``) — never a dense (E, D) tensor. per_sample_weights receive no gradient (passing ones that
require grad raises). Under the STE a QAT forward followed by QATEmbeddingBagCollection.to_int4() gives the
INT4 lookup exactly the same output.

Backends (chosen per call by recsys_kernels._backend):
  cuda      csrc/qat_embedding_bag/qat_embedding_bag_cuda.cu  — rows fake-quantized in registers, a warp a bag (8
            lanes for bags under 8 lookups); backward a warp per ~32 lookups' bags
  triton    recsys_kernels/triton/qat_embedding_bag.py
  cpu       csrc/qat_embedding_bag/qat_embedding_bag_cpu.cpp  — parallel over bags / occurrences
  reference recsys_kernels/reference/qat_embedding_bag.py     — plain torch ops; the HPU path
Registered ops: torch.ops.recsys.qat_embedding_bag (+ _backward), their ``_triton`` twins, and the Python op
torch.ops.recsys.qat_embedding_bag_reference that gives the reference the same autograd formula. All three
share one autograd rule (register_autograd) that returns the sparse gradient.
"""

from __future__ import annotations

from typing import Callable

import torch

from recsys_kernels import _backend
from recsys_kernels.reference import qat_embedding_bag as reference

__all__ = ["qat_embedding_bag", "table_scales"]

OP = "qat_embedding_bag"


def table_scales(weight: torch.Tensor, table_offsets: torch.Tensor | None = None) -> torch.Tensor:
    """(T,) float32 DQRM per-table scales max|W_t| / 7 of weight (E, D); reads every row (no gradient)."""
    T = 1 if table_offsets is None else table_offsets.shape[0] - 1
    with torch.no_grad():
        return reference.table_scales(weight, table_offsets, T)


def qat_embedding_bag(weight: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor, *,
                      table_offsets: torch.Tensor | None = None, pooling: str = "sum",
                      per_sample_weights: torch.Tensor | None = None, qparams: str = "row",
                      table_scale: torch.Tensor | None = None, bounds_check: str = "error") -> torch.Tensor:
    """Pooled INT4-fake-quantized lookup of T tables -> (B, T*D) in weight's dtype; STE sparse backward."""
    if per_sample_weights is not None and per_sample_weights.requires_grad:
        raise ValueError("per_sample_weights: QAT embedding bags give per-sample weights no gradient; pass a tensor "
                         "that does not require grad")
    if qparams == "table" and table_scale is None and weight.dim() == 2:
        table_scale = table_scales(weight, table_offsets)
    args = (weight, indices, offsets, table_offsets, pooling, per_sample_weights, qparams, table_scale, bounds_check)
    backend = _backend.choose(OP, weight.device)
    if backend == "reference":
        return torch.ops.recsys.qat_embedding_bag_reference(*args)
    if backend == "triton":
        return torch.ops.recsys.qat_embedding_bag_triton(*args)
    return torch.ops.recsys.qat_embedding_bag(*args)


# ------------------------------------------------------------------------------------------------ autograd

def _setup_context(ctx, inputs, output) -> None:
    weight, indices, offsets, table_offsets, pooling, per_sample_weights, _, _, _ = inputs
    ctx.save_for_backward(indices, offsets, table_offsets, per_sample_weights)
    ctx.pooling, ctx.num_rows, ctx.dim = pooling, weight.shape[0], weight.shape[1]


def _make_backward(backward_op: Callable[..., tuple[torch.Tensor, torch.Tensor]]):
    def backward(ctx, grad_output: torch.Tensor):
        indices, offsets, table_offsets, per_sample_weights = ctx.saved_tensors
        rows, grad_rows = backward_op(grad_output.contiguous(), indices, offsets, table_offsets, ctx.pooling,
                                      per_sample_weights, ctx.num_rows)
        grad_weight = torch.sparse_coo_tensor(rows.unsqueeze(0), grad_rows, (ctx.num_rows, ctx.dim),
                                              check_invariants=False)
        return grad_weight, None, None, None, None, None, None, None, None

    return backward


# The reference as an op of its own, so that it gets the same STE rule and sparse gradient as the kernels.
@torch.library.custom_op("recsys::qat_embedding_bag_reference", mutates_args=())
def _qat_embedding_bag_reference(weight: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor,
                                 table_offsets: torch.Tensor | None, pooling: str,
                                 per_sample_weights: torch.Tensor | None, qparams: str,
                                 table_scale: torch.Tensor | None, bounds_check: str) -> torch.Tensor:
    return reference.qat_embedding_bag(weight, indices, offsets, table_offsets, pooling, per_sample_weights, qparams,
                                       table_scale, bounds_check)


def _fake(weight, indices, offsets, table_offsets, pooling, per_sample_weights, qparams, table_scale, bounds_check):
    T, B = reference.check_inputs(weight, indices, offsets, table_offsets, pooling, per_sample_weights, qparams,
                                  table_scale, bounds_check)
    return weight.new_empty((B, T * weight.shape[1]))


def _fake_backward(grad_output, indices, offsets, table_offsets, pooling, per_sample_weights, num_rows):
    T, B, D = reference.check_backward_inputs(grad_output, indices, offsets, table_offsets, pooling,
                                              per_sample_weights, num_rows)
    N = indices.shape[0]
    return grad_output.new_empty((N,), dtype=torch.int64), grad_output.new_empty((N, D))


_qat_embedding_bag_reference.register_fake(_fake)
_qat_embedding_bag_reference.register_autograd(_make_backward(reference.qat_embedding_bag_backward),
                                               setup_context=_setup_context)


def _register_triton_autograd() -> None:
    """Called by recsys_kernels.triton.qat_embedding_bag once its ops exist."""
    torch.library.register_autograd(
        "recsys::qat_embedding_bag_triton",
        _make_backward(lambda *a: torch.ops.recsys.qat_embedding_bag_triton_backward(*a)),
        setup_context=_setup_context)


if _backend.EXTENSION_LOADED:
    torch.library.register_fake(f"recsys::{OP}")(_fake)
    torch.library.register_fake(f"recsys::{OP}_backward")(_fake_backward)
    torch.library.register_autograd(f"recsys::{OP}", _make_backward(torch.ops.recsys.qat_embedding_bag_backward),
                                    setup_context=_setup_context)
