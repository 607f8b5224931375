"""GRU4Rec: session-based recommendation with recurrent networks (Hidasi et al., ICLR 2016; the BPR-max
loss and sampling of Hidasi & Karatzoglou, CIKM 2018).

    x = dropout(item(ids))                 (B, N, D) right-padded; padding sits after the valid items, so a
    h = dropout(GRU(x))                    forward GRU never mixes it into valid positions
    h = jagged(h)                          (L, D) via ops.padded_dense_to_jagged
    score(h, i) = h · item(i) + b_i        the item table is shared by input and output (the "constrained
                                           embedding" of the authors' current implementation)

Losses: "bpr_max" (with its softmax-weighted score regulariser ``bpr_reg``) or "sampled_softmax", both
against K uniform negatives shared by the whole batch (one (M, D) × (D, K) product, like the original's
shared mini-batch + extra samples).
"""

from __future__ import annotations

import torch

from recsys_kernels import ops

from .sequence_common import ItemTable, SequenceBatch, SequentialModel, padding_column_to_neg_inf
from .sequence_losses import bpr_max_loss, sample_negatives, sampled_softmax_loss

__all__ = ["GRU4Rec"]

LOSSES = ("bpr_max", "sampled_softmax")


class GRU4Rec(SequentialModel):
    """GRU4Rec over items 1..num_items: forward(batch) -> (L, D); scores(h (B, D)) -> (B, num_items + 1).

    ``max_len`` only bounds the batches' truncation (a GRU has no position table).
    """

    objective = "causal"

    def __init__(self, num_items: int, *, embedding_dim: int = 100, num_layers: int = 1, max_len: int = 50,
                 dropout: float = 0.0, embedding_dropout: float = 0.0, loss: str = "bpr_max",
                 num_negatives: int = 128, shared_negatives: bool = True, bpr_reg: float = 1.0,
                 temperature: float = 1.0, sparse_items: bool = False):
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"GRU4Rec loss must be one of {LOSSES}, got {loss!r}")
        self.num_items, self.dim, self.max_len, self.loss_kind = num_items, embedding_dim, max_len, loss
        self.num_negatives, self.shared_negatives = num_negatives, shared_negatives
        self.bpr_reg, self.temperature = bpr_reg, temperature
        self.items = ItemTable(num_items + 1, embedding_dim, sparse=sparse_items, init_std=embedding_dim ** -0.5)
        self.output_bias = ItemTable(num_items + 1, 1, sparse=sparse_items, init_std=0.0)
        self.embedding_dropout = torch.nn.Dropout(embedding_dropout)
        self.gru = torch.nn.GRU(embedding_dim, embedding_dim, num_layers=num_layers, batch_first=True,
                                dropout=dropout if num_layers > 1 else 0.0)
        self.dropout = torch.nn.Dropout(dropout)

    def forward(self, batch: SequenceBatch) -> torch.Tensor:
        h, _ = self.gru(self.embedding_dropout(self.items(batch.items)))
        return ops.padded_dense_to_jagged(self.dropout(h), ops.lengths_to_offsets(batch.lengths), batch.total_len)

    def loss(self, hidden: torch.Tensor, batch: SequenceBatch) -> torch.Tensor:
        query = self.labelled(hidden, batch)
        neg_ids = sample_negatives(self.num_items, query.shape[0], self.num_negatives, self.shared_negatives,
                                   query.device)
        # the bias enters as one more coordinate: [h, 1] · [e_i, b_i]
        ones = torch.ones_like(query[:, :1])
        query = torch.cat([query, ones], dim=-1)
        pos = torch.cat([self.items(batch.labels), self.output_bias(batch.labels)], dim=-1)
        neg = torch.cat([self.items(neg_ids), self.output_bias(neg_ids)], dim=-1)
        if self.loss_kind == "bpr_max":
            return bpr_max_loss(query, pos, neg, batch.labels, neg_ids, self.bpr_reg)
        return sampled_softmax_loss(query, pos, neg, batch.labels, neg_ids, self.temperature)

    def scores(self, hidden_last: torch.Tensor) -> torch.Tensor:
        logits = hidden_last.float() @ self.items.full().float().t() + self.output_bias.full().float().view(1, -1)
        return padding_column_to_neg_inf(logits)
