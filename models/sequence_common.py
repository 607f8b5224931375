"""What the four sequential models share: the batch they read, the item table, the model interface.

Batches are right-padded: sequence b occupies items[b, :lengths[b]], the rest is 0 (item ids are
1..num_items, 0 is padding). Every model returns one hidden vector per *valid* position, in jagged order
(sequence 0's positions, then sequence 1's, ...), so losses and scoring never touch padding and the HSTU
model can run its whole stack on the jagged layout. Index tensors that depend on the lengths (``last``,
``label_index``) are built on the host by the collation code, so nothing on the device has a
data-dependent shape (the HPU rule in DESIGN.md).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

__all__ = ["ItemTable", "SequenceBatch", "SequentialModel"]


@dataclass
class SequenceBatch:
    """One batch of item sequences.

    items:       (B, N) int64, right-padded with 0; every sequence has at least one item.
    lengths:     (B,) int64 in [1, N].
    last:        (B,) int64, jagged index of each sequence's last position (cumsum(lengths) - 1).
    total_len:   L = sum(lengths), a Python int (sizes the jagged tensors).
    timestamps:  (B, N) int64 aligned with items, or None when the data has none.
    label_index: (M,) int64 jagged positions that carry a training label, or None (evaluation).
    labels:      (M,) int64 item id to predict at each of those positions, or None.
    host_offsets: (B + 1,) int64 jagged offsets [0, cumsum(lengths)] that stay on the CPU (``to`` leaves them
                 there), or None: the jagged ops read CPU offsets without a device sync.
    """

    items: torch.Tensor
    lengths: torch.Tensor
    last: torch.Tensor
    total_len: int
    timestamps: torch.Tensor | None = None
    label_index: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    host_offsets: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return int(self.items.shape[0])

    def to(self, device: torch.device | str) -> SequenceBatch:
        moved = {}
        for f in fields(self):
            value = getattr(self, f.name)
            on_device = isinstance(value, torch.Tensor) and f.name != "host_offsets"
            moved[f.name] = value.to(device, non_blocking=True) if on_device else value
        return SequenceBatch(**moved)


class ItemTable(torch.nn.Module):
    """The (num_rows, D) item embedding table, read by id at the input and again by the output scores.

    With ``sparse=True`` every lookup produces a sparse COO gradient (only the rows a batch touched), which
    ``recsys_kernels.optim.RowWiseAdagrad`` applies through ``ops.rowwise_adagrad_update_``; with
    ``sparse=False`` the table is an ordinary dense parameter for Adam. ``full()`` reads the whole table
    (full-ranking evaluation, BERT4Rec's full softmax): under ``sparse=True`` it is for no-grad use only.
    Rows start N(0, init_std²).
    """

    def __init__(self, num_rows: int, dim: int, *, sparse: bool = False, init_std: float = 0.02):
        super().__init__()
        self.num_rows, self.dim, self.sparse = num_rows, dim, sparse
        self.weight = torch.nn.Parameter(torch.empty(num_rows, dim).normal_(0.0, init_std))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (*S) int64 in [0, num_rows) -> (*S, D)."""
        return F.embedding(ids, self.weight, sparse=self.sparse)

    def full(self) -> torch.Tensor:
        return self.weight

    def normalized(self, ids: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
        """ids (*S) -> (*S, D) l2-normalised rows. Dense tables normalise the (num_rows, D) table once and
        gather, far cheaper than normalising K sampled rows per position; sparse tables normalise the
        gathered rows, so the gradient stays on the rows the batch touched."""
        if self.sparse:
            return F.normalize(self(ids), dim=-1, eps=eps)
        table = F.normalize(self.weight, dim=-1, eps=eps)
        return table.index_select(0, ids.reshape(-1)).view(*ids.shape, self.dim)

    def extra_repr(self) -> str:
        return f"{self.num_rows}, {self.dim}, sparse={self.sparse}"


class SequentialModel(torch.nn.Module):
    """Interface of SASRec, BERT4Rec, GRU4Rec and HSTU.

    forward(batch) -> (L, D) hidden state at every valid position, jagged order.
    loss(hidden (L, D), batch) -> scalar training loss at batch.label_index / batch.labels.
    scores(hidden_last (B, D)) -> (B, num_items + 1) float32; column 0 (padding) is -inf.
    ``objective`` is "causal" (labels are next items; evaluation reads the last input position) or "cloze"
    (labels are masked items; evaluation appends ``mask_token`` and reads that position).
    ``sparse_parameters()`` lists the tables with sparse gradients (for RowWiseAdagrad).
    """

    objective: str = "causal"
    mask_token: int | None = None
    num_items: int

    def loss(self, hidden: torch.Tensor, batch: SequenceBatch) -> torch.Tensor:
        raise NotImplementedError

    def scores(self, hidden_last: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def sparse_parameters(self) -> list[torch.nn.Parameter]:
        return [m.weight for m in self.modules() if isinstance(m, ItemTable) and m.sparse]

    def labelled(self, hidden: torch.Tensor, batch: SequenceBatch) -> torch.Tensor:
        """(M, D) hidden rows at batch.label_index."""
        if batch.label_index is None or batch.labels is None:
            raise ValueError("the batch has no labels: build it with labels for training")
        return hidden.index_select(0, batch.label_index)


def padding_column_to_neg_inf(scores: torch.Tensor) -> torch.Tensor:
    """scores (B, V + 1) -> float32 copy with column 0 (the padding id) at -inf, so it never ranks."""
    is_padding = torch.arange(scores.shape[1], device=scores.device) == 0
    return scores.float().masked_fill(is_padding, float("-inf"))
