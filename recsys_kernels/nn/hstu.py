"""HSTU attention layer: jagged pointwise attention with a learned relative (position + time) bias."""

from __future__ import annotations

import torch

from recsys_kernels.ops.hstu_attention import hstu_attention
from recsys_kernels.reference.hstu_attention import TIME_BUCKETS


class HSTUAttention(torch.nn.Module):
    """q, k (L, H, Dqk), v (L, H, Dv), seq_offsets (B + 1,) -> (L, H, Dv); see recsys_kernels.ops.hstu_attention.

    With ``relative_bias`` the layer owns ``pos_bias`` (2 max_seq_len - 1,) and ``time_bias``
    (num_buckets + 1,) float32 parameters (N(0, 0.02) init, as in generative-recommenders), cast to q's dtype
    per call; ``timestamps`` (L,) int64 are then required. ``alpha`` defaults to 1 / Dqk.
    """

    def __init__(self, max_seq_len: int, *, alpha: float | None = None, causal: bool = True,
                 contextual_seq_len: int = 0, max_attn_len: int = 0, relative_bias: bool = True,
                 num_buckets: int = 128, time_bucket: str = "log"):
        super().__init__()
        if max_seq_len < 1:
            raise ValueError(f"max_seq_len must be >= 1, got {max_seq_len}")
        if time_bucket not in TIME_BUCKETS:
            raise ValueError(f"time_bucket must be 'log' or 'sqrt', got {time_bucket!r}")
        if num_buckets < 0:
            raise ValueError(f"num_buckets must be >= 0, got {num_buckets}")
        self.max_seq_len, self.alpha, self.causal = max_seq_len, alpha, causal
        self.contextual_seq_len, self.max_attn_len, self.time_bucket = contextual_seq_len, max_attn_len, time_bucket
        if relative_bias:
            self.pos_bias = torch.nn.Parameter(torch.empty(2 * max_seq_len - 1).normal_(0, 0.02))
            self.time_bias = torch.nn.Parameter(torch.empty(num_buckets + 1).normal_(0, 0.02))
        else:
            self.register_parameter("pos_bias", None)
            self.register_parameter("time_bias", None)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seq_offsets: torch.Tensor,
                num_targets: torch.Tensor | None = None, timestamps: torch.Tensor | None = None) -> torch.Tensor:
        pos = self.pos_bias.to(q.dtype) if self.pos_bias is not None else None
        time = self.time_bias.to(q.dtype) if self.time_bias is not None else None
        if time is not None and timestamps is None:
            raise ValueError("timestamps are required: this HSTUAttention has a relative time bias")
        return hstu_attention(q, k, v, seq_offsets, max_seq_len=self.max_seq_len,
                              alpha=self.alpha if self.alpha is not None else 1.0 / q.shape[2], causal=self.causal,
                              num_targets=num_targets, contextual_seq_len=self.contextual_seq_len,
                              max_attn_len=self.max_attn_len, timestamps=timestamps, pos_bias=pos, time_bias=time,
                              time_bucket=self.time_bucket)

    def extra_repr(self) -> str:
        return (f"max_seq_len={self.max_seq_len}, causal={self.causal}, contextual_seq_len={self.contextual_seq_len}, "
                f"max_attn_len={self.max_attn_len}, relative_bias={self.pos_bias is not None}, "
                f"time_bucket={self.time_bucket!r}")
