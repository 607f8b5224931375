"""Metrics against hand-computed values and brute force (no sklearn): ranks, HR/NDCG/MRR, AUC, UAUC, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from recsys_kernels.metrics import (
    auc, hit_rate_at_k, log_loss, mae, mrr, ndcg_at_k, rank_of_targets, ranking_metrics, rmse, user_averaged_auc,
)


def brute_rank(scores: np.ndarray, target: int, exclude: set[int]) -> int:
    """Candidates (not padding, not excluded, not the target) scoring >= the target."""
    return sum(1 for j in range(1, scores.size)
               if j != target and j not in exclude and (scores[j] >= scores[target] or np.isnan(scores[j])))


def brute_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    pos, neg = scores[labels == 1], scores[labels == 0]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return wins / (pos.size * neg.size)


# ---------------------------------------------------------------- ranks


def test_rank_by_hand(device):
    #                      pad   1    2    3    4    5
    scores = torch.tensor([[9.0, 0.1, 0.5, 0.3, 0.5, 0.7],
                           [9.0, 0.1, 0.5, 0.3, 0.5, 0.7]], device=device)
    targets = torch.tensor([2, 2], device=device)
    # items 4 (tie: counts against the target) and 5 are at least as high; padding never counts
    assert rank_of_targets(scores, targets).tolist() == [2, 2]
    # excluding item 5 for user 0 and the target itself for user 1 (ignored: the target is never excluded)
    ranks = rank_of_targets(scores, targets, [torch.tensor([5]), torch.tensor([2, 4])])
    assert ranks.tolist() == [1, 1] and ranks.dtype == torch.int64 and ranks.device.type == device
    padded = torch.tensor([[5, 0], [2, 4]], device=device)
    assert rank_of_targets(scores, targets, padded).tolist() == [1, 1]


def test_constant_scores_get_the_worst_rank():
    scores = torch.zeros(3, 11)
    ranks = rank_of_targets(scores, torch.tensor([1, 5, 10]))
    assert ranks.tolist() == [9, 9, 9]
    assert hit_rate_at_k(ranks, 5) == 0.0


def test_nan_scores_count_against_the_target():
    scores = torch.tensor([[0.0, 1.0, float("nan"), 0.5, 2.0]])
    assert rank_of_targets(scores, torch.tensor([1])).tolist() == [2]  # item 4 higher, item 2 NaN
    assert rank_of_targets(scores, torch.tensor([2])).tolist() == [3]  # NaN target: everything counts


def test_rank_matches_brute_force():
    rng = np.random.default_rng(0)
    users, items = 40, 30
    scores = rng.integers(0, 8, (users, items + 1)).astype(np.float32)  # many ties
    targets = rng.integers(1, items + 1, users)
    exclude = [rng.integers(1, items + 1, rng.integers(0, 12)) for _ in range(users)]
    got = rank_of_targets(torch.from_numpy(scores), torch.from_numpy(targets), [torch.from_numpy(e) for e in exclude])
    want = [brute_rank(scores[u], int(targets[u]), set(exclude[u].tolist()) - {int(targets[u])}) for u in range(users)]
    assert got.tolist() == want
    numpy_exclude = rank_of_targets(torch.from_numpy(scores), torch.from_numpy(targets), exclude)
    assert numpy_exclude.tolist() == want


def test_rank_validates_inputs():
    scores = torch.zeros(2, 5)
    with pytest.raises(ValueError, match="targets"):
        rank_of_targets(scores, torch.tensor([0, 1]))  # 0 is padding
    with pytest.raises(ValueError, match="targets"):
        rank_of_targets(scores, torch.tensor([1, 5]))
    with pytest.raises(ValueError, match="targets"):
        rank_of_targets(scores, torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="exclude"):
        rank_of_targets(scores, torch.tensor([1, 2]), [torch.tensor([7]), torch.tensor([1])])
    with pytest.raises(ValueError, match="exclude"):
        rank_of_targets(scores, torch.tensor([1, 2]), [torch.tensor([1])])
    with pytest.raises(ValueError, match="scores"):
        rank_of_targets(torch.zeros(5), torch.tensor([1]))


# ---------------------------------------------------------------- HR / NDCG / MRR


def test_ranking_metrics_by_hand():
    ranks = torch.tensor([0, 1, 4, 20])
    assert hit_rate_at_k(ranks, 5) == 0.75 and hit_rate_at_k(ranks, 1) == 0.25 and hit_rate_at_k(ranks, 21) == 1.0
    assert ndcg_at_k(ranks, 5) == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(6)) / 4)
    assert ndcg_at_k(ranks, 2) == pytest.approx((1 + 1 / math.log2(3)) / 4)
    assert mrr(ranks) == pytest.approx((1 + 1 / 2 + 1 / 5 + 1 / 21) / 4)
    m = ranking_metrics(np.array([0, 1, 4, 20]))
    assert list(m) == ["HR@5", "NDCG@5", "HR@10", "NDCG@10", "HR@20", "NDCG@20", "MRR"]
    assert m["HR@20"] == 0.75 and m["NDCG@5"] == ndcg_at_k(ranks, 5)
    with pytest.raises(ValueError):
        hit_rate_at_k(ranks, 0)
    with pytest.raises(ValueError):
        mrr(torch.tensor([], dtype=torch.long))


# ---------------------------------------------------------------- AUC, UAUC, log-loss


def test_auc_by_hand():
    assert auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75
    assert auc([0, 1], [0.2, 0.9]) == 1.0 and auc([1, 0], [0.2, 0.9]) == 0.0
    assert auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5  # every pair tied
    assert auc([0, 1, 1], [0.3, 0.3, 0.9]) == 0.75  # one tie (half), one win
    with pytest.raises(ValueError, match="both classes"):
        auc([1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="0 or 1"):
        auc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="NaN"):
        auc([0, 1], [0.1, float("nan")])
    with pytest.raises(ValueError, match="lengths differ"):
        auc([0, 1, 1], [0.1, 0.2])


@pytest.mark.parametrize("seed", range(5))
def test_auc_matches_pair_count(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 400)
    scores = rng.integers(0, 15, 400) / 7.0  # heavy ties
    assert auc(labels, scores) == pytest.approx(brute_auc(labels, scores), abs=1e-12)
    t = auc(torch.from_numpy(labels).bool(), torch.from_numpy(scores).to(torch.bfloat16))
    assert t == pytest.approx(brute_auc(labels, torch.from_numpy(scores).to(torch.bfloat16).double().numpy()), abs=1e-12)


def test_user_averaged_auc():
    users = np.array([7, 7, 7, 3, 3, 9, 9, 9])
    labels = np.array([1, 0, 0, 1, 1, 0, 1, 0])  # user 3 has one class: left out
    scores = np.array([0.9, 0.1, 0.95, 0.2, 0.3, 0.5, 0.5, 0.1])
    # user 7: positive beats one of two negatives -> 0.5; user 9: tie + win -> 0.75
    assert user_averaged_auc(users, labels, scores) == pytest.approx(0.625)
    rng = np.random.default_rng(1)
    users = rng.integers(0, 30, 1000)
    labels = rng.integers(0, 2, 1000)
    scores = rng.integers(0, 6, 1000).astype(float)
    per_user = [brute_auc(labels[users == u], scores[users == u]) for u in np.unique(users)
                if 0 < labels[users == u].sum() < (users == u).sum()]
    assert user_averaged_auc(torch.from_numpy(users), labels, scores) == pytest.approx(np.mean(per_user), abs=1e-12)
    with pytest.raises(ValueError, match="no user"):
        user_averaged_auc([1, 2], [0, 1], [0.3, 0.4])


def test_log_loss_and_errors():
    assert log_loss([1, 0], [0.8, 0.3]) == pytest.approx(-(math.log(0.8) + math.log(0.7)) / 2)
    assert log_loss([1], [0.0]) == pytest.approx(-math.log(1e-7))  # clipped, not inf
    assert log_loss(torch.tensor([0.0, 1.0]), torch.tensor([0.5, 0.5])) == pytest.approx(math.log(2))
    assert rmse([1, 2, 3], [1, 2, 5]) == pytest.approx(math.sqrt(4 / 3))
    assert mae(torch.tensor([1.0, 2.0, 3.0]), np.array([2, 2, 1])) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        rmse([1, 2], [1])
    with pytest.raises(ValueError):
        mae([], [])
