"""PMF: biased matrix factorisation for explicit ratings, and its implicit-feedback BPR mode.

    rating(u, i) = mu + b_u + b_i + <p_u, q_i>                       (Koren, Bell & Volinsky 2009)
    loss         = mean_batch[(rating - r)² + reg · (|p_u|² + |q_i|²) + reg_bias · (b_u² + b_i²)]
    BPR (Rendle et al. 2009):  s(u, i) = b_i + <p_u, q_i>,  loss = -mean log σ(s(u, i⁺) − s(u, i⁻)) + L2

The regulariser is taken per occurrence in the batch (the SGD formulation of Salakhutdinov & Mnih's MAP
objective, as Surprise's SVD applies it), so a frequently rated item is shrunk in proportion to its evidence.

The four tables (factors p, q and biases b_u, b_i) live in one recsys_kernels.nn.FusedEmbeddingBagCollection
looked up with bags of size 1: its backward applies row-wise Adagrad to the rows the batch touched, in place,
so the tables never get a gradient tensor and no optimizer step is needed for them. Row-wise Adagrad's
per-row step size suits ratings data, whose rows range from a handful of ratings to hundreds. The global mean
``mu`` is a fixed buffer (the training mean), the usual choice for biased MF.
"""

from __future__ import annotations

import torch

from recsys_kernels.nn import EmbeddingBagConfig, FusedEmbeddingBagCollection
from recsys_kernels.optim import RowWiseAdagradConfig

__all__ = ["PMF"]

MODES = ("rating", "bpr")


class PMF(torch.nn.Module):
    """Biased matrix factorisation over ``num_users`` × ``num_items`` with ``embedding_dim`` factors.

    mode "rating": forward(users (B,) int64, items (B,) int64) -> (B,) float32 predicted ratings;
    mode "bpr":    forward(...) -> (B,) float32 preference scores (no global mean or user bias: they cancel).
    Factors start N(0, init_std²), biases at 0; ``lr``/``eps`` are the tables' row-wise Adagrad settings
    (applied inside backward). ``seed`` fixes the initial rows.
    """

    def __init__(self, num_users: int, num_items: int, embedding_dim: int = 64, *, mode: str = "rating",
                 global_mean: float = 0.0, reg: float = 0.1, reg_bias: float = 0.01, init_std: float = 0.1,
                 lr: float = 0.05, eps: float = 1e-8, seed: int | None = None):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be 'rating' or 'bpr', got {mode!r}")
        if reg < 0 or reg_bias < 0:
            raise ValueError(f"reg and reg_bias must be >= 0, got {reg} and {reg_bias}")
        self.num_users, self.num_items, self.embedding_dim = num_users, num_items, embedding_dim
        self.mode, self.reg, self.reg_bias = mode, reg, reg_bias
        tables = [EmbeddingBagConfig("user", num_users, embedding_dim),
                  EmbeddingBagConfig("item", num_items, embedding_dim),
                  EmbeddingBagConfig("user_bias", num_users, 1), EmbeddingBagConfig("item_bias", num_items, 1)]
        self.tables = FusedEmbeddingBagCollection(tables, optimizer=RowWiseAdagradConfig(lr=lr, eps=eps), seed=seed)
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        with torch.no_grad():  # the views share storage with the collection's Parameters
            rows = self.tables.split_embedding_weights()
            for name in ("user", "item"):
                rows[name].copy_(torch.randn(rows[name].shape, generator=gen) * init_std)
            rows["user_bias"].zero_()
            rows["item_bias"].zero_()
        self.register_buffer("global_mean", torch.tensor(float(global_mean)))

    def _lookup(self, users: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(p (B, k), q (B, k), b_u (B,), b_i (B,)) for B (user, item) pairs, as one-row bags."""
        offsets = torch.arange(users.shape[0] + 1, device=users.device)
        out = self.tables({"user": (users, offsets), "item": (items, offsets),
                           "user_bias": (users, offsets), "item_bias": (items, offsets)})
        k = self.embedding_dim
        return out[:, :k], out[:, k:2 * k], out[:, 2 * k], out[:, 2 * k + 1]

    def _score(self, p, q, bu, bi) -> torch.Tensor:
        dot = (p * q).sum(-1)
        if self.mode == "bpr":
            return bi + dot
        return self.global_mean + bu + bi + dot

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self._score(*self._lookup(users, items))

    def _penalty(self, p, q, bu, bi) -> torch.Tensor:
        """(B,) per-occurrence L2 of the looked-up rows."""
        return self.reg * (p.square().sum(-1) + q.square().sum(-1)) + self.reg_bias * (bu.square() + bi.square())

    def rating_loss(self, users: torch.Tensor, items: torch.Tensor, ratings: torch.Tensor) -> torch.Tensor:
        """Scalar regularised squared error of ratings (B,) float32 (mode "rating")."""
        p, q, bu, bi = self._lookup(users, items)
        err = self._score(p, q, bu, bi) - ratings
        return (err.square() + self._penalty(p, q, bu, bi)).mean()

    def bpr_loss(self, users: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        """Scalar BPR loss for B triples (user, item seen, item sampled as unseen), all (B,) int64.

        One lookup of 2B bags (the user's row twice) so each touched row gets one Adagrad step per batch."""
        B = users.shape[0]
        p, q, bu, bi = self._lookup(torch.cat([users, users]), torch.cat([positives, negatives]))
        s = self._score(p, q, bu, bi)
        # The user row appears twice: halve its penalty so it is regularised once per triple.
        penalty = (self.reg * (0.5 * p.square().sum(-1) + q.square().sum(-1)) + self.reg_bias * bi.square())
        return -torch.nn.functional.logsigmoid(s[:B] - s[B:]).mean() + penalty.view(2, B).sum(0).mean()

    def extra_repr(self) -> str:
        return (f"num_users={self.num_users}, num_items={self.num_items}, embedding_dim={self.embedding_dim}, "
                f"mode={self.mode!r}, reg={self.reg}, reg_bias={self.reg_bias}")
