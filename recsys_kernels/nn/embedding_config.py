"""Specification of one embedding-bag table, shared by the embedding-bag collections (fused-optimizer,
QAT / INT4)."""

from __future__ import annotations

from dataclasses import dataclass

POOLINGS = ("sum", "mean")

__all__ = ["POOLINGS", "EmbeddingBagConfig"]


@dataclass(frozen=True)
class EmbeddingBagConfig:
    """One table: ``name`` (the key of its feature in a collection's input dict), ``num_embeddings`` rows of
    ``embedding_dim`` columns, and how a bag's rows are pooled ("sum" or "mean"; an empty bag pools to 0)."""

    name: str
    num_embeddings: int
    embedding_dim: int
    pooling: str = "sum"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name must be a non-empty string, got {self.name!r}")
        if self.num_embeddings < 1:
            raise ValueError(f"num_embeddings of table {self.name!r} must be >= 1, got {self.num_embeddings}")
        if self.embedding_dim < 1:
            raise ValueError(f"embedding_dim of table {self.name!r} must be >= 1, got {self.embedding_dim}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling of table {self.name!r} must be 'sum' or 'mean', got {self.pooling!r}")
