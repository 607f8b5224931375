"""Jagged HSTU attention with the fused relative attention bias (HSTU, Zhai et al., ICML 2024).

    hstu_attention(q: (L, H, Dqk), k: (L, H, Dqk), v: (L, H, Dv), seq_offsets: (B + 1,) int32|int64, *,
                   max_seq_len: int, alpha: float, causal=True, num_targets: (B,) int32|int64 | None = None,
                   contextual_seq_len=0, max_attn_len=0, timestamps: (L,) int64 | None = None,
                   pos_bias: (2 max_seq_len - 1,) | None = None, time_bias: (num_buckets + 1,) | None = None,
                   time_bucket="log" | "sqrt") -> (L, H, Dv)

Per sequence b (rows seq_offsets[b]:seq_offsets[b+1]) and head h: O = (SiLU(alpha Q Kᵀ + R) / max_seq_len ⊙ M) V,
no softmax. M is generative-recommenders' ``_get_valid_attn_mask`` (causal with the diagonal; each of the
last num_targets[b] items sees the history and itself; a contextual prefix of contextual_seq_len rows sees
everything but the targets; a local window of max_attn_len). R[i, j] = pos_bias[j - i + N - 1] +
time_bias[bucket(ts[i+1] - ts[j])] (zero when both tables are None; either may be given alone; full
semantics in recsys_kernels/reference/hstu_attention.py). R is computed inside the kernels, never
materialised per head. dtypes float32, float16, bfloat16 (float64 on the CPU kernel and the reference, for
gradcheck); the bias tables have q's dtype. Head dims 1..256, any value. Rows of q past seq_offsets[B] give
zero output. Sequences must be at most max_seq_len long; zero-length sequences and B = 0 work.
seq_offsets and num_targets are checked on the host before any kernel runs: on q's device that read is a device
sync per call (forward and backward); passed on the CPU (a training loop knows the lengths before they go to
the GPU) they are read with no sync, and every backend copies them up itself.
Differentiable in q, k, v, pos_bias and time_bias; the kernel backends (cuda, triton, cpu) have deterministic
backwards (no float atomics: CUDA sums the time-bias gradient as integers); the reference's is autograd's, whose
index_select backward adds with float atomics on CUDA.

Backends (chosen per call by recsys_kernels._backend):
  cuda      csrc/hstu_attention/hstu_attention_cuda.cu — tensor-core tiles (wgmma with TMA tile loads on sm_90 in
            a 9.0a build, else mma.sync; fp32/fp64 on CUDA cores), bias and masks in the kernel, deterministic
            backward (integer atomics only). The CUDA default: the fastest backend on the H100 at every issue-3
            shape (e.g. forward 0.43 ms at B 16, N 4096, H 4, d 128 against Triton's 0.58), and a call costs
            ~0.05 ms of host time against Triton's ~0.28 ms (benchmarks/RESULTS.md)
  triton    recsys_kernels/triton/hstu_attention.py — wgmma tiles, bias in the kernel, deterministic backward
            (dK/dV per key block, dQ per query block, bias gradients from per-tile partials)
  cpu       csrc/hstu_attention/hstu_attention_cpu.cpp — parallel over (sequence, head)
  reference recsys_kernels/reference/hstu_attention.py — padded dense, static shapes; the HPU path
Registered ops: torch.ops.recsys.hstu_attention, torch.ops.recsys.hstu_attention_backward.
"""

from __future__ import annotations

import torch

from recsys_kernels import _backend
from recsys_kernels.reference import hstu_attention as reference


def hstu_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seq_offsets: torch.Tensor, *,
                   max_seq_len: int, alpha: float, causal: bool = True, num_targets: torch.Tensor | None = None,
                   contextual_seq_len: int = 0, max_attn_len: int = 0, timestamps: torch.Tensor | None = None,
                   pos_bias: torch.Tensor | None = None, time_bias: torch.Tensor | None = None,
                   time_bucket: str = "log") -> torch.Tensor:
    """q, k (L, H, Dqk), v (L, H, Dv), seq_offsets (B + 1,) -> (L, H, Dv) in q's dtype."""
    args = (q, k, v, seq_offsets, max_seq_len, float(alpha), causal, num_targets, contextual_seq_len, max_attn_len,
            timestamps, pos_bias, time_bias, time_bucket)
    backend = _backend.choose("hstu_attention", q.device)
    if backend == "reference":
        return reference.hstu_attention(*args)
    if backend == "triton":
        return torch.ops.recsys.hstu_attention_triton(*args)
    return torch.ops.recsys.hstu_attention(*args)


def _fake(q, k, v, seq_offsets, max_seq_len, alpha, causal=True, num_targets=None, contextual_seq_len=0,
          max_attn_len=0, timestamps=None, pos_bias=None, time_bias=None, time_bucket="log"):
    reference.check_inputs(q, k, v, seq_offsets, max_seq_len, num_targets, contextual_seq_len, max_attn_len,
                           timestamps, pos_bias, time_bias, time_bucket)
    return q.new_empty(q.shape[0], q.shape[1], v.shape[2])


def _fake_backward(grad_output, q, k, v, seq_offsets, max_seq_len, alpha, causal, num_targets, contextual_seq_len,
                   max_attn_len, timestamps, pos_bias, time_bias, time_bucket):
    reference.check_inputs(q, k, v, seq_offsets, max_seq_len, num_targets, contextual_seq_len, max_attn_len,
                           timestamps, pos_bias, time_bias, time_bucket)
    return (torch.empty_like(q), torch.empty_like(k), torch.empty_like(v),
            torch.empty_like(pos_bias) if pos_bias is not None else q.new_empty(0),
            torch.empty_like(time_bias) if time_bias is not None else q.new_empty(0))


def setup_context(ctx, inputs, output) -> None:
    (q, k, v, seq_offsets, max_seq_len, alpha, causal, num_targets, contextual_seq_len, max_attn_len, timestamps,
     pos_bias, time_bias, time_bucket) = inputs
    ctx.save_for_backward(q, k, v, seq_offsets, num_targets, timestamps, pos_bias, time_bias)
    ctx.args = (max_seq_len, alpha, causal, contextual_seq_len, max_attn_len, time_bucket)


def backward_with(op):
    """The autograd rule of a forward op whose backward op is ``op`` (same schema as hstu_attention_backward)."""

    def backward(ctx, grad_output):
        q, k, v, seq_offsets, num_targets, timestamps, pos_bias, time_bias = ctx.saved_tensors
        max_seq_len, alpha, causal, contextual_seq_len, max_attn_len, time_bucket = ctx.args
        dq, dk, dv, d_pos, d_time = op(grad_output.contiguous(), q, k, v, seq_offsets, max_seq_len, alpha, causal,
                                       num_targets, contextual_seq_len, max_attn_len, timestamps, pos_bias,
                                       time_bias, time_bucket)
        return (dq, dk, dv, None, None, None, None, None, None, None, None,
                d_pos if pos_bias is not None else None, d_time if time_bias is not None else None, None)

    return backward


if _backend.EXTENSION_LOADED:
    torch.library.register_fake("recsys::hstu_attention")(_fake)
    torch.library.register_fake("recsys::hstu_attention_backward")(_fake_backward)
    torch.library.register_autograd("recsys::hstu_attention",
                                    backward_with(lambda *a: torch.ops.recsys.hstu_attention_backward(*a)),
                                    setup_context=setup_context)
