"""Exact row-wise Adagrad for sparse embedding tables (FBGEMM's EXACT_ROWWISE_ADAGRAD), and the same update
fused into the embedding-bag backward.

    rowwise_adagrad_update_(weight: (E, D)!, momentum: (E,) float32!, indices: (N,) int32|int64,
                            grad_rows: (N, D), *, lr=0.01, eps=1e-8, weight_decay=0.0,
                            weight_decay_mode="none", stochastic_rounding_seed=None) -> None
    embedding_bag_backward_rowwise_adagrad_(weight: (E, D)!, momentum: (E,) float32!, indices: (N,),
                            offsets: (T*B + 1,), grad_output: (B, T*D), *, table_offsets=None, pooling="sum",
                            per_sample_weights=None, lr=0.01, eps=1e-8, weight_decay=0.0,
                            weight_decay_mode="none", stochastic_rounding_seed=None) -> None
    embedding_bag_rowwise_adagrad(weight, momentum, indices, offsets, *, ...) -> (B, T*D)
                            pooled lookup whose backward applies the update (optimizer in backward)

Semantics, for every distinct row r touched (duplicates summed first, g = that sum):
``m_r += mean_d(g'²)``, ``w_r = correction · w_r − lr / (sqrt(m_r) + eps) · g`` with g' and correction set by
``weight_decay_mode`` ("none"; "l2": g' = g + wd·w, correction = 1 − multiplier·wd; "decoupled":
correction = 1 − lr·wd), exactly as FBGEMM's rowwise_adagrad. Rows not touched are neither read nor written.
weight is float32, float16 or bfloat16 (C++ CPU and reference also float64), updated in place and never
copied; momentum is float32; gradients come in weight's dtype or float32; accumulation is float32.
fp16/bf16 weights round to nearest even, or stochastically when ``stochastic_rounding_seed`` is given
(deterministic given the seed; use a new seed every step).

Fused layout (FBGEMM TBE): T tables concatenated row-wise in ``weight`` at ``table_offsets`` (T + 1,)
(None: one table), ``offsets`` table-major — bag t*B + b holds sample b's indices into table t (indices are
local to their table) — and ``grad_output`` (B, T*D) with table t in columns [t*D, (t+1)*D). Each occurrence's
gradient row is grad_output[b, t-slice] × per_sample_weights[p] (sum pooling) or × 1 / bag length (mean);
empty bags contribute nothing. The fused kernels never materialise an (N, D) or (E, D) gradient.

Both ops are deterministic: duplicates are reduced by sorting, never with floating-point atomics, so the same
inputs give bit-identical results run after run (the reference on CUDA only under
torch.use_deterministic_algorithms, see its docstring). Bad input (index out of range, shape mismatch,
non-float32 momentum, negative lr/eps, unknown weight_decay_mode) raises an error naming the argument
before anything is written.

Backends (chosen per call by recsys_kernels._backend):
  cuda      csrc/rowwise_adagrad/rowwise_adagrad_cuda.cu  — radix sort + warp per row piece, no atomics
  triton    recsys_kernels/triton/rowwise_adagrad.py
  cpu       csrc/rowwise_adagrad/rowwise_adagrad_cpu.cpp  — parallel radix sort, threads over sorted runs
  reference recsys_kernels/reference/rowwise_adagrad.py   — plain torch ops, static shapes; the HPU path
Registered ops: torch.ops.recsys.rowwise_adagrad_update_, torch.ops.recsys.embedding_bag_backward_rowwise_adagrad_
(mutating, no autograd), and the Python op torch.ops.recsys.embedding_bag_rowwise_adagrad.
"""

from __future__ import annotations

import torch

from recsys_kernels import _backend
from recsys_kernels.reference import rowwise_adagrad as reference

__all__ = ["embedding_bag_backward_rowwise_adagrad_", "embedding_bag_rowwise_adagrad", "rowwise_adagrad_update_"]

UPDATE_OP = "rowwise_adagrad_update_"
FUSED_OP = "embedding_bag_backward_rowwise_adagrad_"


def _seed(stochastic_rounding_seed: int | None) -> int:
    if stochastic_rounding_seed is None:
        return -1
    if stochastic_rounding_seed < 0:
        raise ValueError(f"stochastic_rounding_seed must be None or >= 0, got {stochastic_rounding_seed}")
    return int(stochastic_rounding_seed)


def rowwise_adagrad_update_(weight: torch.Tensor, momentum: torch.Tensor, indices: torch.Tensor,
                            grad_rows: torch.Tensor, *, lr: float = 0.01, eps: float = 1e-8,
                            weight_decay: float = 0.0, weight_decay_mode: str = "none",
                            stochastic_rounding_seed: int | None = None) -> None:
    """One row-wise Adagrad step in place. weight (E, D), momentum (E,) float32, indices (N,) int32|int64
    (duplicates allowed), grad_rows (N, D) in weight's dtype or float32: row p is occurrence p's gradient."""
    kwargs = dict(lr=lr, eps=eps, weight_decay=weight_decay, weight_decay_mode=weight_decay_mode,
                  stochastic_rounding_seed=_seed(stochastic_rounding_seed))
    backend = _backend.choose(UPDATE_OP, weight.device)
    if backend == "reference":
        reference.rowwise_adagrad_update_(weight, momentum, indices, grad_rows, **kwargs)
    elif backend == "triton":
        torch.ops.recsys.rowwise_adagrad_update_triton_(weight, momentum, indices, grad_rows, **kwargs)
    else:
        torch.ops.recsys.rowwise_adagrad_update_(weight, momentum, indices, grad_rows, **kwargs)


def embedding_bag_backward_rowwise_adagrad_(
        weight: torch.Tensor, momentum: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor,
        grad_output: torch.Tensor, *, table_offsets: torch.Tensor | None = None, pooling: str = "sum",
        per_sample_weights: torch.Tensor | None = None, lr: float = 0.01, eps: float = 1e-8,
        weight_decay: float = 0.0, weight_decay_mode: str = "none",
        stochastic_rounding_seed: int | None = None) -> None:
    """Row-wise Adagrad step in place from the pooled gradient of T tables' embedding bags.

    indices (N,) int32|int64 local to their table; offsets (T*B + 1,) int32|int64, table-major, from 0 to N;
    grad_output (B, T*D) in weight's dtype or float32; table_offsets (T + 1,) (None: T = 1);
    per_sample_weights (N,) float (sum pooling only)."""
    kwargs = dict(table_offsets=table_offsets, pooling=pooling, per_sample_weights=per_sample_weights, lr=lr,
                  eps=eps, weight_decay=weight_decay, weight_decay_mode=weight_decay_mode,
                  stochastic_rounding_seed=_seed(stochastic_rounding_seed))
    backend = _backend.choose(FUSED_OP, weight.device)
    if backend == "reference":
        reference.embedding_bag_backward_rowwise_adagrad_(weight, momentum, indices, offsets, grad_output, **kwargs)
    elif backend == "triton":
        torch.ops.recsys.embedding_bag_backward_rowwise_adagrad_triton_(weight, momentum, indices, offsets,
                                                                         grad_output, **kwargs)
    else:
        torch.ops.recsys.embedding_bag_backward_rowwise_adagrad_(weight, momentum, indices, offsets, grad_output,
                                                                  **kwargs)


# ------------------------------------------------------------------- optimizer-in-backward embedding bags

def pooled_lookup(weight: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor,
                  table_offsets: torch.Tensor | None, per_sample_weights: torch.Tensor | None,
                  pooling: str) -> torch.Tensor:
    """Forward of the fused collection: (B, T*D), sample b's pooled row of table t in columns t*D:(t+1)*D.
    CPU/CUDA use torch's embedding_bag; other devices (HPU) gather and index_add_ with static shapes."""
    T, B = reference.fused_shape(offsets, table_offsets)
    N, D = indices.shape[0], weight.shape[1]
    bag = reference.bag_ids(offsets, N)
    rows = indices.to(torch.int64)
    if table_offsets is not None:
        rows = rows + table_offsets.to(torch.int64).index_select(0, torch.div(bag, max(B, 1), rounding_mode="floor"))
    if weight.device.type in ("cpu", "cuda"):
        pooled = torch.nn.functional.embedding_bag(rows, weight, offsets.to(torch.int64), mode=pooling,
                                                   per_sample_weights=per_sample_weights, include_last_offset=True)
    else:
        acc = torch.float32 if weight.dtype != torch.float64 else torch.float64
        vals = weight.index_select(0, rows).to(acc)
        if per_sample_weights is not None:
            vals = vals * per_sample_weights.to(acc)[:, None]
        pooled = torch.zeros(T * B, D, dtype=acc, device=weight.device).index_add_(0, bag, vals)
        if pooling == "mean":
            pooled = pooled / (offsets[1:] - offsets[:-1]).clamp(min=1).to(acc)[:, None]
        pooled = pooled.to(weight.dtype)
    return pooled.reshape(T, B, D).transpose(0, 1).reshape(B, T * D)


@torch.library.custom_op("recsys::embedding_bag_rowwise_adagrad", mutates_args=())
def _embedding_bag_rowwise_adagrad(weight: torch.Tensor, momentum: torch.Tensor, indices: torch.Tensor,
                                   offsets: torch.Tensor, table_offsets: torch.Tensor | None,
                                   per_sample_weights: torch.Tensor | None, pooling: str, lr: float, eps: float,
                                   weight_decay: float, weight_decay_mode: str,
                                   stochastic_rounding_seed: int) -> torch.Tensor:
    reference.check_fused_inputs(weight, momentum, indices, offsets, None, table_offsets, pooling, per_sample_weights)
    reference.check_hyper(lr, eps, weight_decay, weight_decay_mode, stochastic_rounding_seed)
    return pooled_lookup(weight, indices, offsets, table_offsets, per_sample_weights, pooling)


def _grad_shape(weight: torch.Tensor, offsets: torch.Tensor, table_offsets: torch.Tensor | None) -> tuple[int, int]:
    T, B = reference.fused_shape(offsets, table_offsets)
    return B, T * weight.shape[1]


@_embedding_bag_rowwise_adagrad.register_fake
def _(weight, momentum, indices, offsets, table_offsets, per_sample_weights, pooling, lr, eps, weight_decay,
      weight_decay_mode, stochastic_rounding_seed):
    return weight.new_empty(_grad_shape(weight, offsets, table_offsets))


def _setup_context(ctx, inputs, output) -> None:
    # Kept as attributes, not save_for_backward: the backward mutates weight and momentum in place, and
    # a later backward through the same tables must not trip the saved-tensor version check.
    (ctx.weight, ctx.momentum, ctx.indices, ctx.offsets, ctx.table_offsets, ctx.per_sample_weights, ctx.pooling,
     ctx.lr, ctx.eps, ctx.weight_decay, ctx.weight_decay_mode, ctx.seed) = inputs


def _backward(ctx, grad_output: torch.Tensor):
    embedding_bag_backward_rowwise_adagrad_(
        ctx.weight, ctx.momentum, ctx.indices, ctx.offsets, grad_output, table_offsets=ctx.table_offsets,
        pooling=ctx.pooling, per_sample_weights=ctx.per_sample_weights, lr=ctx.lr, eps=ctx.eps,
        weight_decay=ctx.weight_decay, weight_decay_mode=ctx.weight_decay_mode,
        stochastic_rounding_seed=None if ctx.seed < 0 else ctx.seed)
    return (None,) * 12  # the update is the weight's "gradient": nothing flows further


_embedding_bag_rowwise_adagrad.register_autograd(_backward, setup_context=_setup_context)


def embedding_bag_rowwise_adagrad(weight: torch.Tensor, momentum: torch.Tensor, indices: torch.Tensor,
                                  offsets: torch.Tensor, *, table_offsets: torch.Tensor | None = None,
                                  pooling: str = "sum", per_sample_weights: torch.Tensor | None = None,
                                  lr: float = 0.01, eps: float = 1e-8, weight_decay: float = 0.0,
                                  weight_decay_mode: str = "none",
                                  stochastic_rounding_seed: int | None = None) -> torch.Tensor:
    """Pooled lookup (B, T*D) of T tables (layout as embedding_bag_backward_rowwise_adagrad_) whose backward
    applies the row-wise Adagrad step to ``weight`` and ``momentum`` in place (FBGEMM-style optimizer in
    backward) and passes no gradient on: weight.grad stays None. ``weight`` must require grad for the
    backward to run. per_sample_weights get no gradient."""
    if per_sample_weights is not None and per_sample_weights.requires_grad:
        raise ValueError("per_sample_weights: gradients for per-sample weights are not supported by the fused "
                         "row-wise Adagrad embedding bags; pass a tensor that does not require grad")
    return _embedding_bag_rowwise_adagrad(weight, momentum, indices, offsets, table_offsets, per_sample_weights,
                                          pooling, lr, eps, weight_decay, weight_decay_mode,
                                          _seed(stochastic_rounding_seed))


def _fake_update(weight, momentum, indices, grad_rows, *, lr=0.01, eps=1e-8, weight_decay=0.0,
                 weight_decay_mode="none", stochastic_rounding_seed=-1) -> None:
    reference.check_update_inputs(weight, momentum, indices, grad_rows)
    reference.check_hyper(lr, eps, weight_decay, weight_decay_mode, stochastic_rounding_seed)


def _fake_fused(weight, momentum, indices, offsets, grad_output, *, table_offsets=None, pooling="sum",
                per_sample_weights=None, lr=0.01, eps=1e-8, weight_decay=0.0, weight_decay_mode="none",
                stochastic_rounding_seed=-1) -> None:
    reference.check_fused_inputs(weight, momentum, indices, offsets, grad_output, table_offsets, pooling,
                                 per_sample_weights)
    reference.check_hyper(lr, eps, weight_decay, weight_decay_mode, stochastic_rounding_seed)


if _backend.EXTENSION_LOADED:
    torch.library.register_fake(f"recsys::{UPDATE_OP}")(_fake_update)
    torch.library.register_fake(f"recsys::{FUSED_OP}")(_fake_fused)
