"""BERT4Rec: sequential recommendation with a bidirectional Transformer and the cloze objective
(Sun et al., CIKM 2019).

    x = LN(item(ids) + pos(0..N-1)); dropout                (B, N, D); ids may be mask_token = num_items + 1
    x = post-LN bidirectional blocks (padding keys masked)  (B, N, D)
    h = LN(GELU(W x))                                       (B, N, D) output transform, then jagged (L, D)
    logits = h · item(1..V)ᵀ + b                            full softmax over every item, table tied to the input

Training masks a random fraction ``mask_prob`` of each sequence's items (at least one; the batch code also
masks only the last item of a fraction of sequences, so training sees the evaluation pattern) and predicts
them; evaluation appends ``mask_token`` to the history and reads that position.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from recsys_kernels import ops

from .sequence_common import ItemTable, SequenceBatch, SequentialModel, padding_column_to_neg_inf
from .sequence_losses import full_softmax_loss
from .transformer_blocks import BidirectionalBlock

__all__ = ["BERT4Rec"]


class BERT4Rec(SequentialModel):
    """BERT4Rec over items 1..num_items: forward(batch) -> (L, D); scores(h (B, D)) -> (B, num_items + 1)."""

    objective = "cloze"

    def __init__(self, num_items: int, *, embedding_dim: int = 64, num_blocks: int = 2, num_heads: int = 2,
                 ffn_dim: int | None = None, max_len: int = 200, dropout: float = 0.1, sparse_items: bool = False):
        super().__init__()
        if sparse_items:
            raise ValueError("BERT4Rec's full softmax reads the whole item table every step, so its gradient is "
                             "dense: use item_optimizer 'adam' (sparse_items=False)")
        self.num_items, self.dim, self.max_len = num_items, embedding_dim, max_len
        self.mask_token = num_items + 1
        self.items = ItemTable(num_items + 2, embedding_dim)
        self.positions = torch.nn.Parameter(torch.empty(max_len, embedding_dim).normal_(0.0, 0.02))
        self.input_norm = torch.nn.LayerNorm(embedding_dim)
        self.input_dropout = torch.nn.Dropout(dropout)
        self.blocks = torch.nn.ModuleList(
            BidirectionalBlock(embedding_dim, num_heads, ffn_dim or 4 * embedding_dim, dropout)
            for _ in range(num_blocks))
        self.head = torch.nn.Sequential(torch.nn.Linear(embedding_dim, embedding_dim), torch.nn.GELU(),
                                        torch.nn.LayerNorm(embedding_dim))
        self.output_bias = torch.nn.Parameter(torch.zeros(num_items + 1))

    def forward(self, batch: SequenceBatch) -> torch.Tensor:
        B, N = batch.items.shape
        key_valid = torch.arange(N, device=batch.items.device).view(1, N) < batch.lengths.view(B, 1)
        x = self.input_dropout(self.input_norm(self.items(batch.items) + self.positions[:N]))
        for block in self.blocks:
            x = block(x, key_valid)
        return ops.padded_dense_to_jagged(self.head(x), ops.lengths_to_offsets(batch.lengths), batch.total_len)

    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        table = self.items.full()[: self.num_items + 1]  # drop the mask token's row: never a prediction
        return padding_column_to_neg_inf(F.linear(h.float(), table.float(), self.output_bias.float()))

    def loss(self, hidden: torch.Tensor, batch: SequenceBatch) -> torch.Tensor:
        return full_softmax_loss(self._logits(self.labelled(hidden, batch)), batch.labels)

    def scores(self, hidden_last: torch.Tensor) -> torch.Tensor:
        return self._logits(hidden_last)
