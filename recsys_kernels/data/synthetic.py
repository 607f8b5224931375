"""Synthetic data with planted structure: the built-in default data and the tests' ground truth.

Each generator is deterministic given ``seed`` (numpy's PCG64 via ``default_rng``) and plants a model a
learner can recover, so quality checks have a known answer:
- sequences: a Markov chain where every item has a few likely successors, so a sequence model beats
  popularity by a wide margin;
- ratings: low rank + user/item biases + Gaussian noise (``Ratings.planted`` is the noise-free rating, whose
  RMSE against the data is about ``noise``);
- CTR: a logistic model over dense features, per-category effects and pairwise dot products of planted
  embeddings (``CTRData.planted_probs`` gives the best achievable AUC/log-loss).
"""

from __future__ import annotations

import numpy as np

from recsys_kernels.data.types import CTRData, Ratings, Sequences


def _popularity(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    """(n,) Zipf-like probabilities over a random order of the ids (so popularity is not the id order)."""
    weights = 1.0 / np.arange(1, n + 1) ** exponent
    probs = np.empty(n)
    probs[rng.permutation(n)] = weights / weights.sum()
    return probs


def synthetic_sequences(num_users: int = 2000, num_items: int = 500, *, min_length: int = 5, max_length: int = 50,
                        seed: int = 0, num_successors: int = 3, follow_prob: float = 0.8,
                        popularity_exponent: float = 1.0) -> Sequences:
    """Item sequences from a Markov chain with planted successors.

    Each item gets ``num_successors`` distinct other items with probabilities halving down the list; a step
    follows one of them with probability ``follow_prob`` and otherwise jumps to an item drawn by (Zipf)
    popularity, which also draws the first item. Lengths are uniform in [min_length, max_length].
    Timestamps (seconds) strictly increase with gaps mixing minutes, hours and days, so time-aware models
    see varied gaps. Returns item ids 1..num_items; ``user_ids`` are 1..num_users.
    """
    if not 1 <= min_length <= max_length:
        raise ValueError(f"need 1 <= min_length <= max_length, got {min_length}, {max_length}")
    if num_items < num_successors + 1:
        raise ValueError(f"num_items ({num_items}) must exceed num_successors ({num_successors})")
    rng = np.random.default_rng(seed)
    popularity = _popularity(rng, num_items, popularity_exponent)
    pop_cdf = np.cumsum(popularity)
    # successors: distinct non-zero offsets from the item itself, resampling rows that drew a duplicate
    offsets = rng.integers(1, num_items, size=(num_items, num_successors))
    while True:
        sorted_offsets = np.sort(offsets, axis=1)
        dup = (sorted_offsets[:, 1:] == sorted_offsets[:, :-1]).any(axis=1)
        if not dup.any():
            break
        offsets[dup] = rng.integers(1, num_items, size=(int(dup.sum()), num_successors))
    successors = (np.arange(num_items)[:, None] + offsets) % num_items
    succ_probs = 0.5 ** np.arange(num_successors)
    succ_cdf = np.cumsum(succ_probs / succ_probs.sum())

    def draw_popular(size: int) -> np.ndarray:
        return np.minimum(np.searchsorted(pop_cdf, rng.random(size), side="right"), num_items - 1)

    lengths = rng.integers(min_length, max_length + 1, size=num_users)
    items = np.empty((num_users, max_length), dtype=np.int64)
    items[:, 0] = draw_popular(num_users)
    for step in range(1, max_length):
        follow = rng.random(num_users) < follow_prob
        choice = np.minimum(np.searchsorted(succ_cdf, rng.random(num_users), side="right"), num_successors - 1)
        items[:, step] = np.where(follow, successors[items[:, step - 1], choice], draw_popular(num_users))
    # gaps: mostly within a session (minutes), sometimes hours, sometimes days apart
    scale = rng.choice(np.array([120.0, 3600.0, 3 * 86400.0]), p=[0.7, 0.2, 0.1], size=(num_users, max_length))
    gaps = 1 + np.floor(rng.exponential(scale)).astype(np.int64)
    start = 1_500_000_000 + rng.integers(0, 10**8, size=num_users)
    times = start[:, None] + np.cumsum(gaps, axis=1)
    sequences = [items[u, :lengths[u]] + 1 for u in range(num_users)]
    timestamps = [times[u, :lengths[u]].copy() for u in range(num_users)]
    return Sequences(sequences=sequences, num_items=num_items, timestamps=timestamps,
                     user_ids=np.arange(1, num_users + 1, dtype=np.int64))


def synthetic_ratings(num_users: int = 500, num_items: int = 400, *, rank: int = 8, density: float = 0.05,
                      noise: float = 0.3, seed: int = 0) -> Ratings:
    """Ratings = clip(mu + b_user + b_item + <p_user, q_item> + noise * N(0, 1), 1, 5) on a random subset of pairs.

    About ``density * num_users * num_items`` pairs, plus one per user and one per item so every dense id is
    rated. Factor entries have variance sqrt(0.64 / rank) so the interaction term has std 0.8 whatever the
    rank. Rows are in timestamp order; ``planted`` holds the noise-free clipped rating.
    """
    if not 0 < density <= 1:
        raise ValueError(f"density must be in (0, 1], got {density}")
    rng = np.random.default_rng(seed)
    user_bias = rng.normal(0.0, 0.35, num_users)
    item_bias = rng.normal(0.0, 0.45, num_items)
    sigma = (0.64 / rank) ** 0.25
    p = rng.normal(0.0, sigma, (num_users, rank))
    q = rng.normal(0.0, sigma, (num_items, rank))
    n_random = int(round(density * num_users * num_items))
    pairs = np.concatenate([
        rng.choice(num_users * num_items, size=n_random, replace=False),
        np.arange(num_users) * num_items + rng.integers(0, num_items, num_users),
        rng.integers(0, num_users, num_items) * num_items + np.arange(num_items),
    ])
    pairs = np.unique(pairs)
    users, items = pairs // num_items, pairs % num_items
    mean = 3.6 + user_bias[users] + item_bias[items] + np.einsum("nr,nr->n", p[users], q[items])
    ratings = np.clip(mean + noise * rng.normal(size=mean.size), 1.0, 5.0)
    timestamps = 1_500_000_000 + rng.integers(0, 10**8, size=mean.size)
    order = np.argsort(timestamps, kind="stable")
    return Ratings(users=users[order].astype(np.int64), items=items[order].astype(np.int64),
                   ratings=ratings[order].astype(np.float32), timestamps=timestamps[order].astype(np.int64),
                   num_users=num_users, num_items=num_items,
                   planted=np.clip(mean[order], 1.0, 5.0).astype(np.float32))


def synthetic_ctr(num_samples: int = 200_000, *, table_sizes: tuple[int, ...] | list[int] = (1000,) * 8,
                  num_dense: int = 13, seed: int = 0, num_interactions: int = 3, embedding_dim: int = 4,
                  missing_prob: float = 0.05, click_rate: float = 0.25) -> CTRData:
    """CTR rows from a planted logistic model; labels ~ Bernoulli(planted_probs).

    dense: (N, num_dense) log(1 + max(count, 0)) of heavy-tailed counts (missing -> 0), like Criteo's I1..I13.
    sparse: (N, T) power-law ids in [1, size), 0 (missing) with probability ``missing_prob``.
    logit = bias + w . standardised(dense) + sum_t effect_t[id_t] + sum over ``num_interactions`` disjoint table
    pairs (s, t) of <E_s[id_s], E_t[id_t]>; the bias is solved so the mean click probability is ``click_rate``.
    Effects and embeddings are drawn only for the ids that occur, so 4M-row tables cost O(N) memory.
    """
    sizes = [int(s) for s in table_sizes]
    if any(s < 2 for s in sizes):
        raise ValueError(f"table sizes must be >= 2 (id 0 is missing), got {sizes}")
    rng = np.random.default_rng(seed)
    n, t = num_samples, len(sizes)
    log_scale = rng.uniform(0.5, 4.0, num_dense)
    counts = np.floor(np.exp(rng.normal(log_scale, 1.2, (n, num_dense)))) - 1.0
    counts[rng.random((n, num_dense)) < missing_prob] = 0.0
    dense = np.log1p(np.maximum(counts, 0.0))
    sparse = np.empty((n, t), dtype=np.int64)
    for j, size in enumerate(sizes):
        ids = 1 + np.floor((size - 1) * rng.random(n) ** 3).astype(np.int64)  # density ~ x^(-2/3): a few hot ids
        ids[rng.random(n) < missing_prob] = 0
        sparse[:, j] = ids
    z = (dense - dense.mean(0)) / np.maximum(dense.std(0), 1e-6)
    logit = z @ rng.normal(0.0, 0.3, num_dense)
    for j in range(t):
        uniq, inverse = np.unique(sparse[:, j], return_inverse=True)
        effect = rng.normal(0.0, 0.4, uniq.size)
        effect[uniq == 0] = 0.0
        logit += effect[inverse]
    for s, u in [(2 * i, 2 * i + 1) for i in range(min(num_interactions, t // 2))]:
        emb = []
        for col in (s, u):
            uniq, inverse = np.unique(sparse[:, col], return_inverse=True)
            table = rng.normal(0.0, 0.6, (uniq.size, embedding_dim))
            table[uniq == 0] = 0.0
            emb.append(table[inverse])
        logit += np.einsum("nd,nd->n", emb[0], emb[1])
    lo, hi = -20.0, 20.0  # bisection on the bias: mean sigmoid is monotone in it
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if np.mean(1.0 / (1.0 + np.exp(-(logit + mid)))) < click_rate:
            lo = mid
        else:
            hi = mid
    probs = 1.0 / (1.0 + np.exp(-(logit + 0.5 * (lo + hi))))
    labels = (rng.random(n) < probs).astype(np.float32)
    return CTRData(dense=dense.astype(np.float32), sparse=sparse, labels=labels, table_sizes=sizes,
                   planted_probs=probs.astype(np.float32))


def kfold_ratings(r: Ratings, k: int = 5, seed: int = 0) -> list[tuple[Ratings, Ratings]]:
    """``k`` (train, test) pairs from a random partition of the rows into ``k`` near-equal folds.

    Both sides keep the full id spaces and mappings, so a model built for ``r`` fits every fold; rows keep
    their original order within each side.
    """
    n = len(r)
    if k < 2 or n < k:
        raise ValueError(f"need 2 <= k <= number of ratings ({n}), got k={k}")
    folds = np.array_split(np.random.default_rng(seed).permutation(n), k)
    out = []
    for fold in folds:
        test = np.zeros(n, dtype=bool)
        test[fold] = True
        out.append((r.subset(~test), r.subset(test)))
    return out
