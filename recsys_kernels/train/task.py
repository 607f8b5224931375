"""The Task protocol: what the trainer (loop.py) and the CLI need from one kind of recommendation problem.

A Task owns its data (already split), builds its model from a config dict, yields training batches, computes a
scalar loss and evaluates on "valid" / "test". The trainer knows nothing about sequences, ratings or clicks.
"""

from __future__ import annotations

from typing import Any, Iterable, Protocol, runtime_checkable

import torch


@runtime_checkable
class Task(Protocol):
    name: str                      # "next-item" | "ratings" | "ctr"
    primary_metric: str            # e.g. "NDCG@10", "RMSE", "AUC"
    higher_is_better: bool

    def build_model(self, config: dict) -> torch.nn.Module:
        ...

    def train_batches(self, epoch: int, device) -> Iterable[Any]:
        """Batches for one epoch, shuffled with config seed + epoch (so a resumed run sees the same order)."""
        ...

    def loss(self, model, batch) -> torch.Tensor:
        """Scalar training loss of one batch."""
        ...

    def batch_size_of(self, batch) -> int:
        """Samples in the batch (for samples/s)."""
        ...

    def evaluate(self, model, split: str, device) -> dict[str, float]:
        """Metrics on split "valid" or "test"; must contain self.primary_metric."""
        ...

    def make_optimizers(self, model, config) -> list[torch.optim.Optimizer]:
        """E.g. Adam for dense parameters + RowWiseAdagrad for sparse tables; may be empty if the model
        updates its tables inside backward."""
        ...
