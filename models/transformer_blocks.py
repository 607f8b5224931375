"""Softmax self-attention blocks for SASRec (causal, pre-LayerNorm) and BERT4Rec (bidirectional, post-LN).

Padded layout (B, N, D). Attention is torch's scaled_dot_product_attention: recsys_kernels has no softmax
attention op (its attention op is HSTU's pointwise one), and SDPA already picks a fused kernel per device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["BidirectionalBlock", "CausalBlock", "SelfAttention"]


class SelfAttention(torch.nn.Module):
    """Multi-head softmax self-attention: x (B, N, D) -> (B, N, D).

    ``key_valid`` (B, N) bool marks the keys a query may see (padding excluded); ``causal`` adds the
    lower-triangular mask.
    """

    def __init__(self, dim: int, num_heads: int, dropout: float):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embedding_dim {dim} must be divisible by num_heads {num_heads}")
        self.num_heads, self.dropout = num_heads, dropout
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.out = torch.nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, *, causal: bool, key_valid: torch.Tensor | None = None) -> torch.Tensor:
        B, N, D = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)
        mask = None
        if key_valid is not None:
            mask = key_valid.view(B, 1, 1, N)
            if causal:
                mask = mask & torch.ones(N, N, dtype=torch.bool, device=x.device).tril()
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0,
                                           is_causal=causal and mask is None)
        return self.out(a.transpose(1, 2).reshape(B, N, D))


class CausalBlock(torch.nn.Module):
    """SASRec block (pre-LN): x + Attn(LN(x)), then + FFN(LN(·)) with a ReLU FFN of width ``ffn_dim``.

    With right padding, a valid position only attends earlier, valid positions, so no padding mask is needed.
    """

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.norm_attn, self.norm_ffn = torch.nn.LayerNorm(dim, eps=1e-8), torch.nn.LayerNorm(dim, eps=1e-8)
        self.attention = SelfAttention(dim, num_heads, dropout)
        self.ffn = torch.nn.Sequential(torch.nn.Linear(dim, ffn_dim), torch.nn.ReLU(), torch.nn.Dropout(dropout),
                                       torch.nn.Linear(ffn_dim, dim))
        self.dropout = torch.nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout(self.attention(self.norm_attn(x), causal=True))
        return x + self.dropout(self.ffn(self.norm_ffn(x)))


class BidirectionalBlock(torch.nn.Module):
    """BERT block (post-LN): LN(x + Attn(x)), then LN(· + FFN(·)) with a GELU FFN of width ``ffn_dim``."""

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.attention = SelfAttention(dim, num_heads, dropout)
        self.norm_attn, self.norm_ffn = torch.nn.LayerNorm(dim), torch.nn.LayerNorm(dim)
        self.ffn = torch.nn.Sequential(torch.nn.Linear(dim, ffn_dim), torch.nn.GELU(), torch.nn.Dropout(dropout),
                                       torch.nn.Linear(ffn_dim, dim))
        self.dropout = torch.nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, key_valid: torch.Tensor) -> torch.Tensor:
        x = self.norm_attn(x + self.dropout(self.attention(x, causal=False, key_valid=key_valid)))
        return self.norm_ffn(x + self.dropout(self.ffn(x)))
