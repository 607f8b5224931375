"""Turning explicit ratings into next-item sequences (ML-100K/ML-1M next-item protocol)."""

from __future__ import annotations

import numpy as np

from recsys_kernels.data.types import Ratings, Sequences


def ratings_to_sequences(r: Ratings, *, min_length: int = 1) -> Sequences:
    """One sequence per user, ordered by timestamp (ties keep file order: a stable sort).

    Item ids become 1-based (``item + 1``) so 0 can pad; ``num_items`` stays ``r.num_items``. Users with
    fewer than ``min_length`` ratings get no sequence (a filter the caller asks for; the count of users
    kept is ``len(result)``). ``user_ids`` holds each sequence's original user id when ``r`` knows it,
    else its dense id. The rating values are not kept: every rating counts as an interaction.
    """
    if min_length < 1:
        raise ValueError(f"min_length must be >= 1, got {min_length}")
    by_time = np.argsort(r.timestamps, kind="stable")
    order = by_time[np.argsort(r.users[by_time], kind="stable")]
    counts = np.bincount(r.users, minlength=r.num_users)
    bounds = np.concatenate(([0], np.cumsum(counts)))
    items = r.items[order] + 1
    times = r.timestamps[order]
    kept = np.flatnonzero(counts >= min_length)
    names = r.user_ids if r.user_ids is not None else np.arange(r.num_users, dtype=np.int64)
    return Sequences(
        sequences=[items[bounds[u]:bounds[u + 1]] for u in kept],
        num_items=r.num_items,
        timestamps=[times[bounds[u]:bounds[u + 1]] for u in kept],
        skipped_lines=r.skipped_lines,
        user_ids=np.asarray(names[kept], dtype=np.int64),
    )
