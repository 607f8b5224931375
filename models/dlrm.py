"""DLRM (Naumov et al. 2019): bottom MLP on dense features, pooled embedding tables, pairwise dot interaction,
top MLP to a click logit.

    dense (B, 13) ──bottom MLP──> x (B, D) ─┐
    features {t: (ids, offsets)} ──tables──> (B, T, D) ─┴─ DotInteraction ──> (B, D + (T+1)T/2 [+ pad])
                                                                             ──top MLP──> logit (B,)

The tables are a recsys_kernels.nn.FusedEmbeddingBagCollection: its backward applies row-wise Adagrad to the
rows the batch touched (FBGEMM's optimizer-in-backward), so the tables never hold a gradient and only the MLPs
need an optimizer (``dense_parameters()``). DQRM (models/dqrm.py) swaps in INT4 QAT tables.

Named architectures (``CONFIGS``):
  dlrm-criteo-kaggle  the DLRM repository's Criteo Kaggle run: --arch-sparse-feature-size=16
                      --arch-mlp-bot=13-512-256-64-16 --arch-mlp-top=512-256-1, 26 tables of the Kaggle
                      cardinalities (KAGGLE_CARDINALITIES)
  dlrm-mlperf         MLPerf's DLRM sizes: bottom 13-512-256-128, D = 128, top 1024-1024-512-256-1, the 26 Kaggle
                      tables capped at 4M rows (ids hashed by modulo), interaction padded to a multiple of 8
  dlrm-tiny           a few small tables for tests
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch

from recsys_kernels.nn import DotInteraction, EmbeddingBagConfig, FusedEmbeddingBagCollection
from recsys_kernels.optim import RowWiseAdagradConfig

__all__ = ["CONFIGS", "DLRM", "KAGGLE_CARDINALITIES", "mlp", "single_hot_features"]

# Distinct values of C1..C26 in the Criteo Kaggle training set (the DLRM repository's day_fea_count).
KAGGLE_CARDINALITIES = (1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194, 27,
                        14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572)

CONFIGS: dict[str, dict[str, Any]] = {
    "dlrm-criteo-kaggle": dict(table_sizes=KAGGLE_CARDINALITIES, embedding_dim=16, bottom_mlp=(512, 256, 64, 16),
                               top_mlp=(512, 256, 1)),
    "dlrm-mlperf": dict(table_sizes=KAGGLE_CARDINALITIES, embedding_dim=128, bottom_mlp=(512, 256, 128),
                        top_mlp=(1024, 1024, 512, 256, 1), max_table_rows=4_000_000, interaction_pad=8),
    "dlrm-tiny": dict(table_sizes=(50, 40, 30, 20), embedding_dim=8, bottom_mlp=(16, 8), top_mlp=(16, 1)),
}


def mlp(sizes: Sequence[int], relu_last: bool, generator: torch.Generator | None = None) -> torch.nn.Sequential:
    """Linear layers sizes[0] -> sizes[1] -> ... with ReLU between them (and after the last if ``relu_last``).

    Weights N(0, 2 / (fan_in + fan_out)), biases N(0, 1 / fan_out): DLRM's initialisation."""
    layers: list[torch.nn.Module] = []
    for k, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        lin = torch.nn.Linear(n_in, n_out)
        with torch.no_grad():
            lin.weight.normal_(0.0, math.sqrt(2.0 / (n_in + n_out)), generator=generator)
            lin.bias.normal_(0.0, math.sqrt(1.0 / n_out), generator=generator)
        layers.append(lin)
        if relu_last or k < len(sizes) - 2:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers)


def single_hot_features(ids: torch.Tensor, names: Sequence[str],
                        num_rows: Sequence[int] | None = None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(B, T) int64 ids, one per table (Criteo's layout) -> {names[t]: (indices (B,), offsets (B + 1,))}.

    ``num_rows``: ids are reduced modulo each table's rows (hashing into capped tables)."""
    if ids.dim() != 2 or ids.shape[1] != len(names):
        raise ValueError(f"ids must be (B, {len(names)}) with one id per table, got {tuple(ids.shape)}")
    offsets = torch.arange(ids.shape[0] + 1, device=ids.device)
    columns = ids.t().contiguous()  # one (B,) row per table, read in place below
    out = {}
    for t, name in enumerate(names):
        col = columns[t] if num_rows is None else columns[t].remainder(num_rows[t])
        out[name] = (col, offsets)
    return out


class DLRM(torch.nn.Module):
    """DLRM over ``len(table_sizes)`` single- or multi-hot categorical features and ``num_dense`` dense ones.

    table_sizes: rows per table (capped at ``max_table_rows``); embedding_dim: D of every table;
    bottom_mlp: widths after the num_dense input, the last equal to D; top_mlp: widths after the interaction,
    the last equal to 1; interaction_pad: pad the interaction row to a multiple of this (tensor-core tiles);
    self_interaction: also feed each vector's dot with itself to the top MLP (DLRM's --arch-interaction-itself);
    sparse_lr / sparse_eps / sparse_weight_decay: the tables' row-wise Adagrad (FBGEMM's "l2" weight decay: only
    the rows a batch touches decay, so a row is shrunk in proportion to how often it is seen).
    ``embedding``: a prebuilt collection (any module with
    ``tables`` and forward(features) -> (B, T*D)) instead of the fused one — DQRM and the INT4 export use it.

    forward(dense (B, num_dense) float32, features) -> (B,) float32 click logits, where features is
    {table name: (indices (N_t,), offsets (B + 1,)[, per_sample_weights])}, a torchrec KeyedJaggedTensor, or a
    (B, T) int64 tensor with one id per table (``single_hot_features``; ids hashed modulo capped tables).
    """

    def __init__(self, table_sizes: Sequence[int], embedding_dim: int = 16, num_dense: int = 13,
                 bottom_mlp: Sequence[int] = (512, 256, 64, 16), top_mlp: Sequence[int] = (512, 256, 1), *,
                 max_table_rows: int | None = None, interaction_pad: int = 1, self_interaction: bool = False,
                 sparse_lr: float = 0.01,
                 sparse_eps: float = 1e-8, sparse_weight_decay: float = 0.0,
                 embedding: torch.nn.Module | None = None, seed: int | None = None):
        super().__init__()
        if not table_sizes:
            raise ValueError("table_sizes must name at least one table")
        if not bottom_mlp or bottom_mlp[-1] != embedding_dim:
            raise ValueError(f"bottom_mlp must end in embedding_dim={embedding_dim} (the dense vector joins the "
                             f"interaction), got {tuple(bottom_mlp)}")
        if not top_mlp or top_mlp[-1] != 1:
            raise ValueError(f"top_mlp must end in 1 (the click logit), got {tuple(top_mlp)}")
        self.embedding_dim, self.num_dense = embedding_dim, num_dense
        # what rebuilds this architecture around other tables (DQRM.to_int4)
        self.arch = dict(table_sizes=tuple(int(s) for s in table_sizes), embedding_dim=embedding_dim,
                         num_dense=num_dense, bottom_mlp=tuple(bottom_mlp), top_mlp=tuple(top_mlp),
                         max_table_rows=max_table_rows, interaction_pad=interaction_pad,
                         self_interaction=self_interaction)
        self.table_names = [f"t{t}" for t in range(len(table_sizes))]
        self.num_rows = [int(min(s, max_table_rows) if max_table_rows else s) for s in table_sizes]
        self._capped = max_table_rows is not None and any(r < s for r, s in zip(self.num_rows, table_sizes))
        if embedding is None:
            embedding = FusedEmbeddingBagCollection(self.tables(), seed=seed,
                                                    optimizer=RowWiseAdagradConfig(
                lr=sparse_lr, eps=sparse_eps, weight_decay=sparse_weight_decay,
                weight_decay_mode="l2" if sparse_weight_decay else "none"))
        self.embedding = embedding
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        self.bottom_mlp = mlp([num_dense, *bottom_mlp], relu_last=True, generator=gen)
        self.interaction = DotInteraction(self_interaction=self_interaction, layout="lower",
                                          pad_to_multiple=interaction_pad)
        self.top_mlp = mlp([self.interaction.output_dim(len(table_sizes), embedding_dim), *top_mlp], relu_last=False,
                           generator=gen)

    def tables(self) -> list[EmbeddingBagConfig]:
        return [EmbeddingBagConfig(n, r, self.embedding_dim) for n, r in zip(self.table_names, self.num_rows)]

    def features(self, features: Any) -> Any:
        """Normalise ``features`` to what the embedding collection takes (see the class docstring)."""
        if isinstance(features, torch.Tensor):
            return single_hot_features(features, self.table_names, self.num_rows if self._capped else None)
        return features

    def forward(self, dense: torch.Tensor, features: Mapping[str, tuple[torch.Tensor, ...]] | Any) -> torch.Tensor:
        x = self.bottom_mlp(dense)                                           # (B, D)
        pooled = self.embedding(self.features(features))                     # (B, T*D)
        sparse = pooled.view(pooled.shape[0], len(self.table_names), self.embedding_dim)
        # Under autocast the bottom MLP yields bf16/fp16 while the tables pool in their own dtype: the interaction
        # takes one dtype, that of the MLP side.
        sparse = sparse.to(x.dtype)
        return self.top_mlp(self.interaction(x, sparse)).squeeze(-1)        # (B,)

    def dense_parameters(self) -> list[torch.nn.Parameter]:
        """The MLPs' parameters (for Adam/SGD); the tables are not among them."""
        return [*self.bottom_mlp.parameters(), *self.top_mlp.parameters()]

    def sparse_parameters(self) -> list[torch.nn.Parameter]:
        """Tables that need an optimizer step with their sparse gradients: none, the fused tables update in
        backward."""
        return []

    @staticmethod
    def loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean binary cross-entropy of (B,) logits against (B,) {0, 1} float labels."""
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
