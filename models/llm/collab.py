"""Collaborative encoders: this package's PMF and SASRec, pretrained, then frozen inside the LLM recommenders.

    pmf = train_pmf(users, items, labels, num_users, num_items)            # CoLLM-MF
    sas = train_sasrec(train_sequences, num_items)                         # CoLLM-SASRec, LLaRA, A-LLMRec
    enc = PMFEncoder(pmf) | SASRecEncoder(sas)
    enc.user_vectors(users (B,), histories) -> (B, d);  enc.item_vectors(items (S,)) -> (S, d)

The encoders never train once wrapped (the papers freeze the collaborative model after its own training);
they run in eval mode under ``no_grad`` so PMF's in-backward row-wise Adagrad never fires.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from recsys_kernels.models.pmf import PMF
from recsys_kernels.models.sasrec import SASRec
from recsys_kernels.train.sequence_batches import causal_batch, eval_batch

__all__ = ["CollaborativeEncoder", "PMFEncoder", "SASRecEncoder", "train_pmf", "train_sasrec"]


class CollaborativeEncoder(torch.nn.Module):
    """``user_from``: "id" (the user's own row) or "history" (a representation of the items seen)."""

    dim: int
    user_from: str

    def user_vectors(self, users: torch.Tensor, histories: Sequence[np.ndarray] | None) -> torch.Tensor:
        raise NotImplementedError

    def item_vectors(self, items: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def train(self, mode: bool = True) -> CollaborativeEncoder:
        return super().train(False)  # frozen: dropout stays off whatever the surrounding stage does

    @torch.no_grad()
    def score(self, users: torch.Tensor, histories: Sequence[np.ndarray] | None, items: torch.Tensor) -> torch.Tensor:
        """(B,) preference score of item b for user b (the collaborative baseline's CTR score)."""
        return (self.user_vectors(users, histories) * self.item_vectors(items)).sum(-1)


class PMFEncoder(CollaborativeEncoder):
    """User and item factor rows of a trained PMF; ``score`` is PMF's own prediction (biases included)."""

    user_from = "id"

    def __init__(self, pmf: PMF):
        super().__init__()
        self.pmf = pmf.eval()
        self.dim = pmf.embedding_dim
        for p in self.pmf.parameters():
            p.requires_grad_(False)

    def _rows(self, name: str, ids: torch.Tensor) -> torch.Tensor:
        return self.pmf.tables.split_embedding_weights()[name].index_select(0, ids)

    @torch.no_grad()
    def user_vectors(self, users, histories=None):
        return self._rows("user", users)

    @torch.no_grad()
    def item_vectors(self, items):
        return self._rows("item", items)

    @torch.no_grad()
    def score(self, users, histories, items):
        return self.pmf(users, items)


class SASRecEncoder(CollaborativeEncoder):
    """SASRec's item table rows, and its last hidden state over a user's history as the user vector."""

    user_from = "history"

    def __init__(self, sasrec: SASRec):
        super().__init__()
        self.sasrec = sasrec.eval()
        self.dim = sasrec.dim
        for p in self.sasrec.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def user_vectors(self, users, histories):
        if histories is None:
            raise ValueError("SASRecEncoder needs the users' item histories")
        device = self.sasrec.positions.device
        batch = eval_batch([np.asarray(h, dtype=np.int64) for h in histories], None, self.sasrec.max_len).to(device)
        return self.sasrec(batch).index_select(0, batch.last)

    @torch.no_grad()
    def item_vectors(self, items):
        return self.sasrec.items(items)


def _shuffled_batches(n: int, batch_size: int, rng: np.random.Generator):
    order = rng.permutation(n)
    for start in range(0, n, batch_size):
        yield order[start:start + batch_size]


def train_pmf(users: np.ndarray, items: np.ndarray, labels: np.ndarray, num_users: int, num_items: int, *,
              dim: int = 64, epochs: int = 10, batch_size: int = 1024, lr: float = 0.05, reg: float = 0.05,
              seed: int = 0, device: torch.device | str = "cpu") -> PMF:
    """PMF (mode "rating") fitted to click labels (0/1) by squared error, as CoLLM pretrains its MF on the
    same training rows. The tables update inside backward (row-wise Adagrad): no optimizer here."""
    pmf = PMF(num_users, num_items, dim, mode="rating", global_mean=float(np.mean(labels)), reg=reg,
              lr=lr, init_std=0.1, seed=seed).to(device)
    rng = np.random.default_rng(seed)
    u, i, y = (torch.as_tensor(a) for a in (users, items, labels.astype(np.float32)))
    pmf.train()
    for _ in range(epochs):
        for idx in _shuffled_batches(len(u), batch_size, rng):
            idx = torch.from_numpy(idx)
            loss = pmf.rating_loss(u[idx].to(device), i[idx].to(device), y[idx].to(device))
            loss.backward()
    return pmf.eval()


def train_sasrec(sequences: Sequence[np.ndarray], num_items: int, *, dim: int = 64, max_len: int = 50,
                 epochs: int = 20, batch_size: int = 128, lr: float = 1e-3, dropout: float = 0.2, seed: int = 0,
                 device: torch.device | str = "cpu") -> SASRec:
    """SASRec (the paper's BCE loss) on item sequences (ids 1..num_items, each of length >= 2)."""
    torch.manual_seed(seed)
    seqs = [np.asarray(s, dtype=np.int64) for s in sequences if len(s) >= 2]
    if not seqs:
        raise ValueError("train_sasrec needs sequences of at least 2 items")
    model = SASRec(num_items, embedding_dim=dim, num_blocks=2, num_heads=1, max_len=max_len, dropout=dropout).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.98))
    rng = np.random.default_rng(seed)
    model.train()
    for _ in range(epochs):
        for idx in _shuffled_batches(len(seqs), batch_size, rng):
            batch = causal_batch([seqs[j] for j in idx], None, max_len).to(device)
            loss = model.loss(model(batch), batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model.eval()
