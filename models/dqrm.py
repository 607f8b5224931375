"""DQRM (Zhou et al. 2023, "DQRM: Deep Quantized Recommendation Models"): DLRM whose embedding tables train
with INT4 quantization-aware training and ship as INT4.

The tables are a recsys_kernels.nn.QATEmbeddingBagCollection: float32 master rows, each looked-up row
fake-quantized to INT4 inside the lookup, straight-through gradient returned **sparse** (one row per
occurrence) so that row-wise Adagrad (recsys_kernels.optim.RowWiseAdagrad, ``sparse_parameters()``) touches
only the rows of the batch — DQRM's point that QAT must not densify the table update. ``qparams``: "row"
(per-row asymmetric scale and bias, FBGEMM's INT4 row format) or "table" (DQRM's per-table symmetric scale
max|W| / 7, refreshed every ``scale_refresh_every`` training steps).

``to_int4()`` returns the inference model: a DLRM with an Int4EmbeddingBagCollection (FBGEMM's INT4 row
layout) and copies of the MLPs, whose forward equals this model's forward exactly.
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch

from recsys_kernels.models.dlrm import DLRM
from recsys_kernels.nn import EmbeddingBagConfig, Int4EmbeddingBagCollection, QATEmbeddingBagCollection
from recsys_kernels.ops.int4_embedding_bag import row_bytes
from recsys_kernels.optim import RowWiseAdagrad

__all__ = ["DQRM", "table_bytes"]


def table_bytes(embedding: torch.nn.Module) -> int:
    """Bytes of the tables' stored rows: packed INT4 rows (scale, bias and row padding included) or the float
    weights, whichever ``embedding`` holds; optimizer state and scale buffers are not counted."""
    if isinstance(embedding, Int4EmbeddingBagCollection):
        return sum(embedding.int4_rows(t.name).numel() for t in embedding.tables)
    return sum(p.numel() * p.element_size() for p in embedding.parameters())


class DQRM(DLRM):
    """DLRM (see recsys_kernels.models.dlrm.DLRM for the arguments, shapes and forward) with INT4 QAT tables.

    qparams: "row" | "table"; scale_refresh_every: training steps between "table" scale refreshes.
    ``sparse_lr`` / ``sparse_eps`` / ``sparse_weight_decay`` are not used by the module: they are the settings of
    RowWiseAdagrad over ``sparse_parameters()`` (``make_sparse_optimizer``). Embedding dims must be even (two
    INT4 codes per byte).
    """

    def __init__(self, table_sizes: Sequence[int], embedding_dim: int = 16, num_dense: int = 13,
                 bottom_mlp: Sequence[int] = (512, 256, 64, 16), top_mlp: Sequence[int] = (512, 256, 1), *,
                 qparams: str = "row", scale_refresh_every: int = 100, max_table_rows: int | None = None,
                 interaction_pad: int = 1, self_interaction: bool = False, sparse_lr: float = 0.01,
                 sparse_eps: float = 1e-8,
                 sparse_weight_decay: float = 0.0, seed: int | None = None):
        self.sparse_lr, self.sparse_eps, self.sparse_weight_decay = sparse_lr, sparse_eps, sparse_weight_decay
        names = [f"t{t}" for t in range(len(table_sizes))]
        rows = [int(min(s, max_table_rows) if max_table_rows else s) for s in table_sizes]
        qat = QATEmbeddingBagCollection([EmbeddingBagConfig(n, r, embedding_dim) for n, r in zip(names, rows)],
                                        qparams=qparams, scale_refresh_every=scale_refresh_every, seed=seed)
        super().__init__(table_sizes, embedding_dim, num_dense, bottom_mlp, top_mlp, max_table_rows=max_table_rows,
                         interaction_pad=interaction_pad, self_interaction=self_interaction, embedding=qat,
                         seed=seed)

    def sparse_parameters(self) -> list[torch.nn.Parameter]:
        """The QAT master tables: sparse COO gradients, to be stepped by RowWiseAdagrad."""
        return list(self.embedding.parameters())

    def make_sparse_optimizer(self) -> RowWiseAdagrad:
        """RowWiseAdagrad over the QAT tables with this model's sparse settings ("l2" decay as in DLRM)."""
        return RowWiseAdagrad(self.sparse_parameters(), lr=self.sparse_lr, eps=self.sparse_eps,
                              weight_decay=self.sparse_weight_decay,
                              weight_decay_mode="l2" if self.sparse_weight_decay else "none")

    @torch.no_grad()
    def to_int4(self) -> DLRM:
        """The INT4 inference model (eval mode, same device): Int4EmbeddingBagCollection tables holding exactly
        the values the QAT forward uses, and copies of the MLPs; its forward equals this model's forward."""
        int4 = DLRM(**self.arch, embedding=self.embedding.to_int4())
        int4.bottom_mlp, int4.top_mlp = copy.deepcopy(self.bottom_mlp), copy.deepcopy(self.top_mlp)
        return int4.eval()

    def table_bytes(self) -> dict[str, int]:
        """{"fp32": bytes of the float32 tables, "int4": bytes of their INT4 rows as to_int4() stores them (FBGEMM's
        rows padded to 16 bytes), "int4_unpadded": the same without the padding (4 + D/2 bytes a row)}."""
        tables = self.embedding.tables
        return {"fp32": table_bytes(self.embedding),
                "int4": sum(t.num_embeddings * row_bytes(t.embedding_dim) for t in tables),
                "int4_unpadded": sum(t.num_embeddings * (4 + t.embedding_dim // 2) for t in tables)}
