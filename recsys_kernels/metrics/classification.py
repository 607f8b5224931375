"""Click-through metrics: exact tie-aware AUC, user-averaged AUC (CoLLM's UAUC), log-loss."""

from __future__ import annotations

import numpy as np

from recsys_kernels.metrics._arrays import as_numpy, binary_labels, same_length


def _grouped_auc(groups: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-group Mann-Whitney AUC with average ranks for ties; returns (auc, defined) per distinct group.

    Sort by (group, score); a run of equal scores within a group shares the mean of its positions, so a tie
    between a positive and a negative counts one half — the exact AUC, not an order-dependent one.
    """
    order = np.lexsort((scores, groups))
    g, s, y = groups[order], scores[order], labels[order]
    n = g.size
    new_group = np.ones(n, dtype=bool)
    new_group[1:] = g[1:] != g[:-1]
    group_start = np.maximum.accumulate(np.where(new_group, np.arange(n), 0))
    position = np.arange(n) - group_start + 1.0  # 1-based within the group
    new_run = new_group.copy()
    new_run[1:] |= s[1:] != s[:-1]
    # runs never cross groups (a new group opens a new run), so a run's last element is the next run's
    # first minus one
    run_starts = np.flatnonzero(new_run)
    run_ends = np.append(run_starts[1:] - 1, n - 1)
    run_id = np.cumsum(new_run) - 1
    avg_rank = 0.5 * (position[run_starts] + position[run_ends])[run_id]
    group_id = np.cumsum(new_group) - 1
    positives = np.bincount(group_id, weights=y)
    sizes = np.bincount(group_id).astype(np.float64)
    negatives = sizes - positives
    rank_sum = np.bincount(group_id, weights=avg_rank * y)
    defined = (positives > 0) & (negatives > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)
    return auc, defined


def auc(labels, scores) -> float:
    """Area under the ROC curve, exact and tie-aware. labels: (N,) in {0, 1}; scores: (N,) any real.

    numpy or torch inputs. Raises ValueError when only one class is present (AUC is undefined) or a score is NaN.
    """
    y = binary_labels(labels)
    s = as_numpy(scores, "scores")
    same_length(labels=y, scores=s)
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    value, defined = _grouped_auc(np.zeros(y.size, dtype=np.int64), y, s)
    if not defined[0]:
        raise ValueError("AUC needs both classes in labels")
    return float(value[0])


def user_averaged_auc(user_ids, labels, scores) -> float:
    """Unweighted mean of per-user AUC over the users that have both a positive and a negative (UAUC).

    user_ids: (N,) int; labels: (N,) in {0, 1}; scores: (N,). Raises ValueError when no user has both classes.
    """
    users = as_numpy(user_ids, "user_ids", np.int64)
    y = binary_labels(labels)
    s = as_numpy(scores, "scores")
    same_length(user_ids=users, labels=y, scores=s)
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    value, defined = _grouped_auc(users, y, s)
    if not defined.any():
        raise ValueError("no user has both a positive and a negative label")
    return float(value[defined].mean())


def log_loss(labels, probs, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy; probs clipped to [eps, 1 - eps] so a confident miss costs -log(eps), not inf."""
    y = binary_labels(labels)
    p = np.clip(as_numpy(probs, "probs"), eps, 1.0 - eps)
    same_length(labels=y, probs=p)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log1p(-p)))
