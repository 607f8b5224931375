"""Synthetic generators: deterministic given the seed, and the planted structure is there to find."""

from __future__ import annotations

import numpy as np
import pytest

from recsys_kernels.data import synthetic_ctr, synthetic_ratings, synthetic_sequences
from recsys_kernels.metrics import auc, hit_rate_at_k, rmse


def test_sequences_deterministic_and_well_formed():
    a, b = synthetic_sequences(300, 80, seed=5), synthetic_sequences(300, 80, seed=5)
    assert all(np.array_equal(x, y) for x, y in zip(a.sequences, b.sequences))
    assert all(np.array_equal(x, y) for x, y in zip(a.timestamps, b.timestamps))
    c = synthetic_sequences(300, 80, seed=6)
    assert not all(np.array_equal(x, y) for x, y in zip(a.sequences, c.sequences))
    lengths = np.array([len(s) for s in a.sequences])
    assert lengths.min() >= 5 and lengths.max() <= 50 and a.num_items == 80
    assert min(s.min() for s in a.sequences) >= 1 and max(s.max() for s in a.sequences) <= 80
    gaps = np.concatenate([np.diff(t) for t in a.timestamps])
    assert gaps.min() >= 1 and np.percentile(gaps, 95) > 50 * np.median(gaps)  # strictly increasing, varied gaps
    with pytest.raises(ValueError):
        synthetic_sequences(10, 10, min_length=6, max_length=5)


def test_bigram_beats_popularity_on_markov_sequences():
    seqs = synthetic_sequences(seed=0)
    train, _, test = seqs.leave_one_out()
    n = seqs.num_items + 1
    popularity = np.zeros(n)
    bigram = np.zeros((n, n))
    for inputs, target in zip(train.inputs, train.targets):
        full = np.append(inputs, target)
        np.add.at(popularity, full, 1)
        np.add.at(bigram, (full[:-1], full[1:]), 1)
    last = np.array([x[-1] for x in test.inputs])

    def hr10(scores: np.ndarray) -> float:
        scores = scores.copy()
        scores[:, 0] = -np.inf
        target_scores = scores[np.arange(len(test)), test.targets]
        ranks = (scores >= target_scores[:, None]).sum(1) - 1
        return hit_rate_at_k(ranks, 10)

    pop_hr = hr10(np.tile(popularity, (len(test), 1)))
    bigram_hr = hr10(bigram[last] + 1e-3 * popularity)  # popularity breaks ties among unseen successors
    assert bigram_hr > 0.6 and bigram_hr > 3 * pop_hr, (bigram_hr, pop_hr)


def test_ratings_planted_low_rank():
    r = synthetic_ratings(seed=1)
    again = synthetic_ratings(seed=1)
    np.testing.assert_array_equal(r.ratings, again.ratings)
    np.testing.assert_array_equal(r.users, again.users)
    assert r.ratings.min() >= 1 and r.ratings.max() <= 5 and r.ratings.dtype == np.float32
    assert np.unique(r.users).size == 500 and np.unique(r.items).size == 400  # every id is rated
    assert abs(len(r) / (500 * 400) - 0.05) < 0.01
    assert np.all(np.diff(r.timestamps) >= 0)
    # the planted mean explains the data down to the noise (clipping only shrinks the error)
    assert 0.2 < rmse(r.ratings, r.planted) <= 0.31
    # and it carries more than the biases: a user+item mean model is clearly worse
    assert rmse(r.ratings, np.full(len(r), r.ratings.mean())) > 0.8


def test_ctr_planted_model():
    data = synthetic_ctr(50_000, table_sizes=(200,) * 6, seed=2)
    again = synthetic_ctr(50_000, table_sizes=(200,) * 6, seed=2)
    np.testing.assert_array_equal(data.labels, again.labels)
    np.testing.assert_array_equal(data.sparse, again.sparse)
    assert data.dense.shape == (50_000, 13) and data.sparse.shape == (50_000, 6) and data.table_sizes == [200] * 6
    assert (data.dense >= 0).all() and (data.sparse >= 0).all() and (data.sparse < 200).all()
    assert (data.sparse == 0).mean() == pytest.approx(0.05, abs=0.01)  # missing values
    assert abs(data.labels.mean() - 0.25) < 0.01
    assert auc(data.labels, data.planted_probs) > 0.75
    # the pairwise interaction term is a sizeable part of the planted logit: the same draws without it
    # (interactions are drawn last, so everything else is identical) move the logit by about 1 on average
    additive = synthetic_ctr(50_000, table_sizes=(200,) * 6, seed=2, num_interactions=0)
    np.testing.assert_array_equal(additive.sparse, data.sparse)

    def logit(p: np.ndarray) -> np.ndarray:
        p = p.astype(np.float64)
        return np.log(p / (1 - p))

    assert np.std(logit(data.planted_probs) - logit(additive.planted_probs)) > 0.8
