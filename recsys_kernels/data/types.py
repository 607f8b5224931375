"""The three data shapes every loader and generator returns: ratings, item sequences, CTR rows.

All arrays are numpy (the models turn them into tensors where they batch); ids are dense so they index
embedding tables directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Ratings:
    """Explicit feedback, one row per (user, item, rating) event.

    users: (N,) int64 in [0, num_users); items: (N,) int64 in [0, num_items) — dense 0-based ids.
    ratings: (N,) float32. timestamps: (N,) int64, zeros when the source has none.
    user_ids / item_ids: (num_users,) / (num_items,) int64 original ids of each dense id, or None
    (synthetic data has no other names). planted: (N,) float32 noise-free rating of the generator, or None.
    """

    users: np.ndarray
    items: np.ndarray
    ratings: np.ndarray
    timestamps: np.ndarray
    num_users: int
    num_items: int
    skipped_lines: int = 0
    user_ids: np.ndarray | None = None
    item_ids: np.ndarray | None = None
    planted: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.users.shape[0])

    def subset(self, rows: np.ndarray) -> Ratings:
        """The rows ``rows`` (indices or a bool mask) with the same id spaces and mappings."""
        return Ratings(self.users[rows], self.items[rows], self.ratings[rows], self.timestamps[rows],
                       self.num_users, self.num_items, 0, self.user_ids, self.item_ids,
                       None if self.planted is None else self.planted[rows])


@dataclass
class SequenceSplit:
    """Next-item examples: for example ``u``, ``inputs[u]`` is the history and ``targets[u]`` the item to predict.

    inputs: U arrays, each (len,) int64 item ids in [1, num_items], possibly empty.
    targets: (U,) int64 item ids in [1, num_items]. For a training split the target is the last training
    item and a model may use every next-item pair of ``inputs + [target]``.
    input_timestamps / target_timestamps: the same shapes, int64, or None when unknown.
    users: (U,) int64 index of each example's sequence in the parent :class:`Sequences`.
    """

    inputs: list[np.ndarray]
    targets: np.ndarray
    input_timestamps: list[np.ndarray] | None
    target_timestamps: np.ndarray | None
    num_items: int
    users: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def __len__(self) -> int:
        return int(self.targets.shape[0])


@dataclass
class Sequences:
    """One item sequence per user, in time order; item ids are 1..num_items and 0 is padding.

    sequences: list of (len,) int64. timestamps: the same lengths, int64, or None when unknown.
    user_ids: (num_sequences,) int64 the source's user id of each sequence, or None.
    """

    sequences: list[np.ndarray]
    num_items: int
    timestamps: list[np.ndarray] | None = None
    skipped_lines: int = 0
    user_ids: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.sequences)

    def leave_one_out(self) -> tuple[SequenceSplit, SequenceSplit, SequenceSplit]:
        """Split by ICLRec/SASRec's leave-one-out protocol; returns (train, valid, test).

        For a sequence ``s`` of length n >= 3: test predicts s[n-1] from s[:n-1], valid predicts s[n-2]
        from s[:n-2], train is s[:n-2] (target s[n-3], inputs s[:n-3]). A sequence with fewer than 3 items
        goes wholly to train (target its last item, inputs the rest) and has no valid/test example, so the
        splits may hold different users: ``split.users`` says whose each example is. Empty sequences have no
        example at all.
        """
        has_ts = self.timestamps is not None
        parts: dict[str, tuple[list, list, list, list, list]] = {k: ([], [], [], [], []) for k in ("train", "valid", "test")}

        def add(split: str, u: int, seq: np.ndarray, ts: np.ndarray | None, end: int) -> None:
            # the example predicts seq[end] from seq[:end]
            inputs, targets, in_ts, tgt_ts, users = parts[split]
            inputs.append(seq[:end])
            targets.append(seq[end])
            users.append(u)
            if ts is not None:
                in_ts.append(ts[:end])
                tgt_ts.append(ts[end])

        for u, seq in enumerate(self.sequences):
            ts = self.timestamps[u] if has_ts else None
            n = len(seq)
            if n == 0:
                continue
            if n < 3:
                add("train", u, seq, ts, n - 1)
                continue
            add("train", u, seq, ts, n - 3)
            add("valid", u, seq, ts, n - 2)
            add("test", u, seq, ts, n - 1)

        def build(split: str) -> SequenceSplit:
            inputs, targets, in_ts, tgt_ts, users = parts[split]
            return SequenceSplit(
                inputs=inputs,
                targets=np.asarray(targets, dtype=np.int64),
                input_timestamps=in_ts if has_ts else None,
                target_timestamps=np.asarray(tgt_ts, dtype=np.int64) if has_ts else None,
                num_items=self.num_items,
                users=np.asarray(users, dtype=np.int64),
            )

        return build("train"), build("valid"), build("test")


@dataclass
class CTRData:
    """Click-through rows: dense counts, categorical ids, a click label.

    dense: (N, D) float32, already ``log(1 + max(x, 0))`` transformed, missing = 0 (D = 13 for Criteo).
    sparse: (N, T) int64, column t in [0, table_sizes[t]); 0 is the reserved id of a missing value.
    labels: (N,) float32 in {0, 1}. planted_probs: (N,) float32 click probability of the planted model
    (synthetic data only), else None.
    """

    dense: np.ndarray
    sparse: np.ndarray
    labels: np.ndarray
    table_sizes: list[int]
    planted_probs: np.ndarray | None = None
    skipped_lines: int = 0

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, rows: np.ndarray) -> CTRData:
        return CTRData(self.dense[rows], self.sparse[rows], self.labels[rows], list(self.table_sizes),
                       None if self.planted_probs is None else self.planted_probs[rows])

    def split(self, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
              seed: int = 0) -> tuple[CTRData, CTRData, CTRData]:
        """A random (train, valid, test) split of the rows; sizes round(f*N), the test split takes the rest."""
        if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
            raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {fractions}")
        n = len(self)
        perm = np.random.default_rng(seed).permutation(n)
        n_train = int(round(fractions[0] * n))
        n_valid = min(int(round(fractions[1] * n)), n - n_train)
        cuts = (perm[:n_train], perm[n_train:n_train + n_valid], perm[n_train + n_valid:])
        return tuple(self.subset(np.sort(rows)) for rows in cuts)  # type: ignore[return-value]
