"""Full-ranking next-item metrics: the target's rank among all items, then HR@K, NDCG@K, MRR.

Protocol (ICLRec / SASRec full ranking): every item is a candidate except column 0 (padding) and the items
the caller excludes (the user's own input items) — but the target itself is never excluded, even when it
also occurs in the input. No sampled negatives.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


def _exclusion_index(exclude, num_users: int, num_columns: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, cols) of every excluded (user, item) pair."""
    if isinstance(exclude, torch.Tensor):
        if exclude.dim() != 2 or exclude.shape[0] != num_users:
            raise ValueError(f"exclude as a tensor must be (U={num_users}, L) item ids padded with 0, "
                             f"got shape {tuple(exclude.shape)}")
        cols = exclude.to(device, torch.long)
        rows = torch.arange(num_users, device=device)[:, None].expand_as(cols)
        rows, cols = rows.reshape(-1), cols.reshape(-1)
    else:
        if len(exclude) != num_users:
            raise ValueError(f"exclude must hold one id list per user ({num_users}), got {len(exclude)}")
        parts = [torch.as_tensor(np.asarray(e) if not isinstance(e, torch.Tensor) else e).reshape(-1)
                 for e in exclude]
        lengths = torch.tensor([p.numel() for p in parts], device=device)
        cols = (torch.cat(parts) if parts else torch.zeros(0)).to(device, torch.long)
        rows = torch.repeat_interleave(torch.arange(num_users, device=device), lengths)
    if cols.numel() and (int(cols.min()) < 0 or int(cols.max()) >= num_columns):
        raise ValueError(f"exclude holds item ids outside [0, {num_columns - 1}]")
    return rows, cols


def rank_of_targets(scores: torch.Tensor, targets: torch.Tensor,
                    exclude: Sequence[torch.Tensor] | torch.Tensor | None = None) -> torch.Tensor:
    """0-based rank of each user's target among the candidate items.

    scores: (U, num_items + 1) float, column 0 = padding (never a candidate). targets: (U,) int item ids in
    [1, num_items]. exclude: per user the item ids that are not candidates — a list of U 1-D tensors/arrays,
    or a (U, L) tensor padded with 0 — the target is never excluded.
    Returns (U,) int64: how many candidates score at least as high as the target. Ties count against the
    target (pessimistic), so a constant scorer gets the worst rank rather than a lucky one, and a NaN score
    (target's or a candidate's) counts as a higher-scored candidate.
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be (U, num_items + 1), got shape {tuple(scores.shape)}")
    num_users, num_columns = scores.shape
    targets = torch.as_tensor(targets).to(scores.device)
    if targets.shape != (num_users,) or targets.is_floating_point():
        raise ValueError(f"targets must be ({num_users},) integer item ids, got {tuple(targets.shape)} {targets.dtype}")
    targets = targets.long()
    if num_users and (int(targets.min()) < 1 or int(targets.max()) >= num_columns):
        raise ValueError(f"targets must be item ids in [1, {num_columns - 1}] (0 is padding)")
    target_scores = scores.gather(1, targets[:, None])
    higher = (scores >= target_scores) | scores.isnan() | target_scores.isnan()
    higher[:, 0] = False
    if exclude is not None:
        rows, cols = _exclusion_index(exclude, num_users, num_columns, scores.device)
        higher[rows, cols] = False
    higher.scatter_(1, targets[:, None], False)
    return higher.sum(1)


def _ranks(ranks) -> np.ndarray:
    r = ranks.detach().cpu().numpy() if isinstance(ranks, torch.Tensor) else np.asarray(ranks)
    r = r.astype(np.float64).reshape(-1)
    if r.size == 0:
        raise ValueError("ranks is empty")
    if (r < 0).any():
        raise ValueError("ranks must be >= 0 (0 = the target scored highest)")
    return r


def _check_k(k: int) -> None:
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")


def hit_rate_at_k(ranks, k: int) -> float:
    """Fraction of users whose target is in the top k (rank < k). ranks: (U,) 0-based, tensor or array."""
    _check_k(k)
    return float(np.mean(_ranks(ranks) < k))


def ndcg_at_k(ranks, k: int) -> float:
    """Mean of 1 / log2(rank + 2) over users, 0 beyond the top k (one relevant item, so IDCG = 1)."""
    _check_k(k)
    r = _ranks(ranks)
    return float(np.mean(np.where(r < k, 1.0 / np.log2(r + 2.0), 0.0)))


def mrr(ranks) -> float:
    """Mean reciprocal rank over the full ranking, 1 / (rank + 1), not truncated at any k."""
    return float(np.mean(1.0 / (_ranks(ranks) + 1.0)))


def ranking_metrics(ranks, ks: Sequence[int] = (5, 10, 20)) -> dict[str, float]:
    """{"HR@k": ..., "NDCG@k": ... for each k, "MRR": ...}."""
    out: dict[str, float] = {}
    for k in ks:
        out[f"HR@{k}"] = hit_rate_at_k(ranks, k)
        out[f"NDCG@{k}"] = ndcg_at_k(ranks, k)
    out["MRR"] = mrr(ranks)
    return out
