"""Amazon sequence files as prepared for sequential recommendation (S3-Rec / ICLRec ``Beauty.txt``).

One line per user: ``user item item item ...`` separated by spaces, items in time order, ids from 1.
``num_items`` is the largest item id (ids are already dense there; 0 stays padding). A line with a user
but no item, a non-integer or non-positive id, or a user seen on an earlier line is malformed.
Blank lines carry no record and are ignored. The files have no timestamps.
"""

from __future__ import annotations

import os

import numpy as np

from recsys_kernels.data._io import LineErrors, check_on_error, open_text
from recsys_kernels.data.types import Sequences


def load_amazon_sequences(path: str | os.PathLike, *, on_error: str = "raise") -> Sequences:
    """Load ``user item item ...`` lines into :class:`Sequences` (file order; ``user_ids`` holds each user id).

    sequences: list of (len,) int64 item ids in [1, num_items]; timestamps None.
    """
    check_on_error(on_error)
    errors = LineErrors(path, on_error)
    sequences: list[np.ndarray] = []
    users: list[int] = []
    first_seen: dict[int, int] = {}
    with open_text(path) as f:
        for line_number, line in enumerate(f, start=1):
            fields = line.split()
            if not fields:
                continue
            try:
                ids = np.array(fields, dtype=np.int64) if len(fields) > 1 else None
                user = int(fields[0])
            except (ValueError, OverflowError):
                bad = next((tok for tok in fields if not _is_int64(tok)), fields[0])
                errors.bad(line_number, f"id {bad!r} is not an integer in int64 range")
                continue
            if ids is None:
                errors.bad(line_number, f"user {user} has no items")
                continue
            if ids[1:].min() < 1:
                errors.bad(line_number, f"item id {int(ids[1:].min())} is not >= 1 (0 is padding)")
                continue
            if user in first_seen:
                errors.bad(line_number, f"user {user} already appeared on line {first_seen[user]}")
                continue
            first_seen[user] = line_number
            users.append(user)
            sequences.append(ids[1:])
    num_items = int(max((s.max() for s in sequences), default=0))
    return Sequences(sequences=sequences, num_items=num_items, timestamps=None,
                     skipped_lines=errors.finish(), user_ids=np.asarray(users, dtype=np.int64))


def _is_int64(token: str) -> bool:
    try:
        value = int(token)
    except ValueError:
        return False
    return -(2**63) <= value < 2**63
