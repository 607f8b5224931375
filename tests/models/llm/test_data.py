"""Data for the LLM recommenders: the CoLLM ML-1M pickles and MovieLens-100K candidate lists (real files in
the shared data folder; skipped where they are absent)."""

from __future__ import annotations

import numpy as np
import pytest

from recsys_kernels.data import data_root
from recsys_kernels.models.llm.data import load_collm_ml1m, movielens_candidates, subset

ROOT = data_root()


def _need(relative: str):
    if ROOT is None or not (ROOT / relative).exists():
        pytest.skip(f"{relative} is not in the shared data folder")
    return ROOT / relative


def test_collm_split_sizes_and_histories():
    pytest.importorskip("pandas")
    data = load_collm_ml1m(_need("collm-ml-1m/ml-1m.zip"))
    sizes = {s: len(r) for s, r in data.splits.items()}
    assert sizes == {"train": 33891, "valid": 10401, "test": 7331}
    test = data.splits["test"]
    assert set(np.unique(test.labels)) == {0, 1}
    for n in range(0, len(test), 997):  # liked and disliked items are earlier rows of the same user
        assert 0 not in test.liked[n]
        assert all(data.titles[i] for i in test.liked[n]) and data.titles[test.items[n]]
    assert sum(len(d) for d in test.disliked) > 0
    small = subset(test, 50, seed=1)
    assert len(small) == 50 and len(small.liked) == 50


def test_movielens_candidates():
    data = movielens_candidates(_need("ml-100k"), max_history=10)
    test, valid = data.splits["test"], data.splits["valid"]
    assert len(test) == len(valid) == 943 and test.candidates.shape == (943, 20)
    assert len(data.titles) == data.num_items + 1 == 1683 and data.titles[0] == ""
    rows = np.arange(len(test))
    assert (test.candidates == test.targets[:, None]).sum(1).tolist() == [1] * len(test)
    assert all(1 <= len(h) <= 10 for h in test.histories)
    for n in range(0, len(test), 101):  # negatives are never items the user rated
        seq = data.train_sequences[n]
        negatives = test.candidates[n][test.candidates[n] != test.targets[n]]
        assert not np.isin(negatives, seq).any() and not np.isin(negatives, test.histories[n]).any()
    assert len(np.unique(test.candidates[rows, 0])) > 50  # the target's position is shuffled
