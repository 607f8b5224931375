"""SASRec: self-attentive sequential recommendation (Kang & McAuley, ICDM 2018).

    x = item(ids) · sqrt(D) + pos(0..N-1); dropout                    (B, N, D), right-padded
    x = blocks of [x + Attn(LN x) causal; x + FFN(LN x)]; LN(x)       (B, N, D)
    h = jagged(x)                                                     (L, D) via ops.padded_dense_to_jagged
    score(h, i) = h · item(i)                                         item table tied to the input

Losses: "bce" — the paper's binary cross-entropy with one uniformly sampled negative per position (the
paper redraws negatives the user has seen; here only a negative equal to the positive is dropped);
"sampled_softmax" — generative-recommenders' SASRec baseline: query and item vectors l2-normalised,
K negatives, logits / temperature.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from recsys_kernels import ops

from .sequence_common import ItemTable, SequenceBatch, SequentialModel, padding_column_to_neg_inf
from .sequence_losses import bce_loss, sample_negatives, sampled_softmax_loss
from .transformer_blocks import CausalBlock

__all__ = ["SASRec"]

LOSSES = ("bce", "sampled_softmax")


class SASRec(SequentialModel):
    """SASRec over items 1..num_items: forward(batch) -> (L, D); scores(h (B, D)) -> (B, num_items + 1)."""

    objective = "causal"

    def __init__(self, num_items: int, *, embedding_dim: int = 50, num_blocks: int = 2, num_heads: int = 1,
                 ffn_dim: int | None = None, max_len: int = 200, dropout: float = 0.2, loss: str = "bce",
                 num_negatives: int = 128, shared_negatives: bool = False, temperature: float = 0.05,
                 sparse_items: bool = False):
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"SASRec loss must be one of {LOSSES}, got {loss!r}")
        self.num_items, self.dim, self.max_len, self.loss_kind = num_items, embedding_dim, max_len, loss
        self.num_negatives, self.shared_negatives, self.temperature = num_negatives, shared_negatives, temperature
        self.l2 = loss == "sampled_softmax"
        self.items = ItemTable(num_items + 1, embedding_dim, sparse=sparse_items)
        self.positions = torch.nn.Parameter(torch.empty(max_len, embedding_dim).normal_(0.0, 0.02))
        self.input_dropout = torch.nn.Dropout(dropout)
        self.blocks = torch.nn.ModuleList(CausalBlock(embedding_dim, num_heads, ffn_dim or embedding_dim, dropout)
                                          for _ in range(num_blocks))
        self.final_norm = torch.nn.LayerNorm(embedding_dim, eps=1e-8)

    def _item_vectors(self, ids: torch.Tensor) -> torch.Tensor:
        return self.items.normalized(ids, 1e-6) if self.l2 else self.items(ids)

    def forward(self, batch: SequenceBatch) -> torch.Tensor:
        N = batch.items.shape[1]
        x = self.items(batch.items) * math.sqrt(self.dim) + self.positions[:N]
        x = self.input_dropout(x)
        for block in self.blocks:
            x = block(x)
        x = self.final_norm(x)
        h = ops.padded_dense_to_jagged(x, ops.lengths_to_offsets(batch.lengths), batch.total_len)
        return F.normalize(h, dim=-1, eps=1e-6) if self.l2 else h

    def loss(self, hidden: torch.Tensor, batch: SequenceBatch) -> torch.Tensor:
        query = self.labelled(hidden, batch)
        pos = self._item_vectors(batch.labels)
        if self.loss_kind == "bce":
            neg_ids = sample_negatives(self.num_items, query.shape[0], 1, False, query.device)
            return bce_loss(query, pos, self._item_vectors(neg_ids), batch.labels, neg_ids)
        neg_ids = sample_negatives(self.num_items, query.shape[0], self.num_negatives, self.shared_negatives,
                                   query.device)
        return sampled_softmax_loss(query, pos, self._item_vectors(neg_ids), batch.labels, neg_ids, self.temperature)

    def scores(self, hidden_last: torch.Tensor) -> torch.Tensor:
        table = self.items.full()
        if self.l2:
            table = F.normalize(table, dim=-1, eps=1e-6)
        return padding_column_to_neg_inf(hidden_last.float() @ table.float().t())
