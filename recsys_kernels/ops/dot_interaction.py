"""Sparse feature interaction (DLRM dot interaction).

    dot_interaction(dense: (B, D), sparse: (B, F, D), *, self_interaction=False, layout="lower",
                    pad_to_multiple=1) -> (B, D + P [+ pad])

T = [dense; sparse] (B, F+1, D). Every unordered pair of rows of T gives one dot product:
  layout="lower": S[r, c] for c < r, row-major over the strictly-lower triangle (dlrm, NVIDIA DLRM);
  layout="upper": S[c, r] for c < r, row-major over the strictly-upper triangle (torchrec InteractionArch);
  self_interaction=True also keeps the diagonal, so P = n(n+1)/2 instead of n(n-1)/2 with n = F + 1.
Returns concat(dense, pairs), zero-padded on the right to a multiple of ``pad_to_multiple`` (e.g. 8 for
tensor-core-friendly top MLPs). dtypes float32, float16, bfloat16 (float32 accumulation) and float64 (float64
accumulation; on CUDA a plain kernel meant for gradcheck, not speed). B = 0 gives a (0, cols) result. Differentiable in dense and sparse.

Backends (chosen per call by recsys_kernels._backend):
  cuda      csrc/dot_interaction/dot_interaction_cuda.cu  — one pass, tensor cores for fp16/bf16
  triton    recsys_kernels/triton/dot_interaction.py
  cpu       csrc/dot_interaction/dot_interaction_cpu.cpp  — parallel over the batch
  reference recsys_kernels/reference/dot_interaction.py   — plain torch ops; the HPU path
Registered ops: torch.ops.recsys.dot_interaction, torch.ops.recsys.dot_interaction_backward.
"""

from __future__ import annotations

import torch

from recsys_kernels import _backend
from recsys_kernels.reference import dot_interaction as reference


def dot_interaction(dense: torch.Tensor, sparse: torch.Tensor, *, self_interaction: bool = False,
                    layout: str = "lower", pad_to_multiple: int = 1) -> torch.Tensor:
    """dense (B, D), sparse (B, F, D) -> (B, D + P rounded up to pad_to_multiple), dtype of the inputs."""
    backend = _backend.choose("dot_interaction", dense.device)
    if backend == "reference":
        return reference.dot_interaction(dense, sparse, self_interaction, layout, pad_to_multiple)
    if backend == "triton":
        return torch.ops.recsys.dot_interaction_triton(dense, sparse, self_interaction, layout, pad_to_multiple)
    return torch.ops.recsys.dot_interaction(dense, sparse, self_interaction, layout, pad_to_multiple)


def _fake(dense, sparse, self_interaction=False, layout="lower", pad_to_multiple=1):
    reference.check_inputs(dense, sparse, self_interaction, layout, pad_to_multiple)
    cols = reference.output_columns(dense.shape[1], sparse.shape[1] + 1, self_interaction, pad_to_multiple)
    return dense.new_empty(dense.shape[0], cols)


def _fake_backward(grad_output, dense, sparse, self_interaction, layout):
    reference.check_backward_inputs(grad_output, dense, sparse, self_interaction, layout)
    return torch.empty_like(dense), torch.empty_like(sparse)


def _setup_context(ctx, inputs, output):
    dense, sparse, self_interaction, layout, _ = inputs
    ctx.save_for_backward(dense, sparse)
    ctx.self_interaction, ctx.layout = self_interaction, layout


def _backward(ctx, grad_output):
    dense, sparse = ctx.saved_tensors
    grad_dense, grad_sparse = torch.ops.recsys.dot_interaction_backward(
        grad_output, dense, sparse, ctx.self_interaction, ctx.layout)
    return grad_dense, grad_sparse, None, None, None


if _backend.EXTENSION_LOADED:
    torch.library.register_fake("recsys::dot_interaction")(_fake)
    torch.library.register_fake("recsys::dot_interaction_backward")(_fake_backward)
    torch.library.register_autograd("recsys::dot_interaction", _backward, setup_context=_setup_context)
