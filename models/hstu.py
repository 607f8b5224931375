"""HSTU: Hierarchical Sequential Transduction Units (Zhai et al., "Actions Speak Louder than Words",
ICML 2024), the retrieval model of generative-recommenders' ML-1M / Amazon experiments.

The whole stack runs on the jagged batch (L rows = the valid positions of all sequences):

    x   = item(ids) · sqrt(D) + pos(position); dropout                         (L, D)
    per block:
        u, v, q, k = split(SiLU(LayerNorm(x) W_uvqk))                           (L, H·dv) ×2, (L, H·dqk) ×2
        a   = hstu_attention(q, k, v, offsets, relative position + time bias)   (L, H, dv), pointwise SiLU, no softmax
        x   = x + W_o dropout(LayerNorm(a) ⊙ u)
    h   = x / |x|                                                               (L, D)

LayerNorms have no affine parameters and eps 1e-6; attention scores are not scaled (alpha = 1; the tuned
``-fast`` quality configs use generative-recommenders' newer STU default, 1/sqrt(dqk)) and are divided by
max_len inside the op, the relative time bias buckets log(|Δt|)/0.301 into 128 buckets — all as
generative-recommenders' research code for its ML-1M configs. Training: sampled softmax against uniformly
sampled negatives with l2-normalised query and item embeddings and a temperature. Data without timestamps
gets all-zero timestamps: the time bias then degenerates to one learned constant.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from recsys_kernels import nn as rknn
from recsys_kernels import ops

from .sequence_common import ItemTable, SequenceBatch, SequentialModel, padding_column_to_neg_inf
from .sequence_losses import negative_logits_by_id, sample_negatives, sampled_softmax_from_logits, sampled_softmax_loss

__all__ = ["HSTU", "HSTUBlock"]

_EPS = 1e-6


class HSTUBlock(torch.nn.Module):
    """One HSTU layer on jagged rows: x (L, D), offsets (B + 1,), timestamps (L,) int64 -> (L, D)."""

    def __init__(self, dim: int, num_heads: int, dqk: int, dv: int, max_len: int, dropout: float,
                 alpha: float, num_buckets: int):
        super().__init__()
        self.dim, self.num_heads, self.dqk, self.dv = dim, num_heads, dqk, dv
        self.uvqk = torch.nn.Linear(dim, num_heads * (2 * dv + 2 * dqk), bias=False)
        torch.nn.init.normal_(self.uvqk.weight, 0.0, 0.02)
        self.attention = rknn.HSTUAttention(max_len, alpha=alpha, causal=True, relative_bias=True,
                                            num_buckets=num_buckets, time_bucket="log")
        self.out = torch.nn.Linear(num_heads * dv, dim)
        torch.nn.init.xavier_uniform_(self.out.weight)
        self.dropout = torch.nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, offsets: torch.Tensor, timestamps: torch.Tensor) -> torch.Tensor:
        L, H = x.shape[0], self.num_heads
        uvqk = F.silu(self.uvqk(F.layer_norm(x, (self.dim,), eps=_EPS)))
        u, v, q, k = torch.split(uvqk, [H * self.dv, H * self.dv, H * self.dqk, H * self.dqk], dim=1)
        a = self.attention(q.reshape(L, H, self.dqk), k.reshape(L, H, self.dqk), v.reshape(L, H, self.dv),
                           offsets, timestamps=timestamps)
        a = F.layer_norm(a.reshape(L, H * self.dv), (H * self.dv,), eps=_EPS)
        return x + self.out(self.dropout(a * u))


class HSTU(SequentialModel):
    """HSTU retrieval model over items 1..num_items.

    forward(batch) -> (L, D) l2-normalised user states; scores(h (B, D)) -> (B, num_items + 1) cosine
    similarities (column 0 -inf). Sequences must be at most ``max_len`` long (the batches truncate).
    ``sparse_items`` gives the item table sparse gradients (RowWiseAdagrad), else it is dense (Adam).
    """

    objective = "causal"

    def __init__(self, num_items: int, *, embedding_dim: int = 50, num_blocks: int = 2, num_heads: int = 1,
                 dqk: int = 50, dv: int = 50, max_len: int = 200, dropout: float = 0.2,
                 linear_dropout: float | None = None, alpha: float = 1.0, num_buckets: int = 128,
                 num_negatives: int = 128, shared_negatives: bool = False, temperature: float = 0.05,
                 sparse_items: bool = False):
        super().__init__()
        self.num_items, self.dim, self.max_len = num_items, embedding_dim, max_len
        self.num_negatives, self.shared_negatives, self.temperature = num_negatives, shared_negatives, temperature
        self.items = ItemTable(num_items + 1, embedding_dim, sparse=sparse_items)
        # std sqrt(1/D) for positions, 0.02 for items: generative-recommenders' initialisation
        self.positions = torch.nn.Parameter(torch.empty(max_len, embedding_dim).normal_(0.0, embedding_dim ** -0.5))
        self.input_dropout = torch.nn.Dropout(dropout)
        block_dropout = dropout if linear_dropout is None else linear_dropout
        self.blocks = torch.nn.ModuleList(
            HSTUBlock(embedding_dim, num_heads, dqk, dv, max_len, block_dropout, alpha, num_buckets)
            for _ in range(num_blocks))

    def forward(self, batch: SequenceBatch) -> torch.Tensor:
        # offsets on the CPU when the batch has them: the jagged copy and every attention call (forward and
        # backward, each layer) then check them on the host without a device sync
        offsets = batch.host_offsets if batch.host_offsets is not None else ops.lengths_to_offsets(batch.lengths)
        B, N = batch.items.shape
        # ids, timestamps and positions go to the jagged layout in one copy (one offsets check, not three)
        positions = torch.arange(N, device=batch.items.device, dtype=torch.int64).expand(B, N)
        ts_dense = batch.timestamps if batch.timestamps is not None else torch.zeros_like(batch.items)
        columns = torch.stack([batch.items, ts_dense.to(torch.int64), positions], dim=-1)  # (B, N, 3)
        ids, ts, pos = ops.padded_dense_to_jagged(columns, offsets, batch.total_len).t().contiguous()  # (L,) each
        x = self.items(ids) * math.sqrt(self.dim) + self.positions.index_select(0, pos)
        x = self.input_dropout(x)
        for block in self.blocks:
            x = block(x, offsets, ts)
        return F.normalize(x, dim=-1, eps=_EPS)

    def loss(self, hidden: torch.Tensor, batch: SequenceBatch) -> torch.Tensor:
        query = self.labelled(hidden, batch)
        neg_ids = sample_negatives(self.num_items, query.shape[0], self.num_negatives, self.shared_negatives,
                                   query.device)
        if self.items.sparse:  # normalise only the gathered rows: the gradient stays on the rows the batch touched
            pos = self.items.normalized(batch.labels, _EPS)
            neg = self.items.normalized(neg_ids, _EPS)
            return sampled_softmax_loss(query, pos, neg, batch.labels, neg_ids, self.temperature)
        table = F.normalize(self.items.full(), dim=-1, eps=_EPS)
        pos = table.index_select(0, batch.labels)
        neg_logit = negative_logits_by_id(query, table, neg_ids)
        return sampled_softmax_from_logits(query, pos, neg_logit, batch.labels, neg_ids, self.temperature)

    def scores(self, hidden_last: torch.Tensor) -> torch.Tensor:
        table = F.normalize(self.items.full(), dim=-1, eps=_EPS)
        return padding_column_to_neg_inf(hidden_last.float() @ table.float().t())
