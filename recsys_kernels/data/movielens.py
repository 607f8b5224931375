"""MovieLens loaders: ratings (100K ``u.data``, 1M ``ratings.dat``, 20M/25M ``ratings.csv``) and titles.

Formats, told apart by the first line, not the file name:
    u.data       ``user \\t item \\t rating \\t unix_ts``
    ratings.dat  ``user::item::rating::unix_ts``
    ratings.csv  header ``userId,movieId,rating,timestamp`` then comma-separated rows
Ids are remapped to dense 0-based ids in ascending order of the original id; the original ids are kept on
``Ratings.user_ids`` / ``Ratings.item_ids``. Lines are parsed in chunks with numpy; a chunk containing a bad
line is re-read line by line to name it. Blank lines carry no record and are ignored.
"""

from __future__ import annotations

import csv
import itertools
import os
from pathlib import Path

import numpy as np

from recsys_kernels.data._io import LineErrors, MalformedLineError, check_on_error, open_text
from recsys_kernels.data.types import Ratings

RATING_FILES = ("u.data", "ratings.dat", "ratings.csv")
TITLE_FILES = ("u.item", "movies.dat", "movies.csv")
CSV_HEADER = "userId,movieId,rating,timestamp"
_COLUMNS = (("user id", np.int64, "integer"), ("item id", np.int64, "integer"),
            ("rating", np.float64, "number"), ("timestamp", np.int64, "integer"))
_CHUNK = 1 << 16


def _resolve(path: str | os.PathLike, names: tuple[str, ...]) -> Path:
    """``path`` itself if a file, else the first of ``names`` inside the directory ``path``."""
    path = Path(path)
    if path.is_dir():
        for name in names:
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(f"{path} holds none of {', '.join(names)}")
    if not path.is_file():
        raise FileNotFoundError(f"no such MovieLens file or directory: {path}")
    return path


def _parse_chunk(lines: list[str], first_line: int, sep: str, errors: LineErrors) -> list[np.ndarray]:
    """Four arrays (users, items, ratings, timestamps) from ``lines``; ``first_line`` numbers ``lines[0]``."""
    rows = [line.rstrip("\n").split(sep) for line in lines]
    if all(len(r) == 4 for r in rows):
        try:
            table = np.array(rows)
            cols = [table[:, c].astype(dtype) for c, (_, dtype, _) in enumerate(_COLUMNS)]
            if np.isfinite(cols[2]).all():
                return cols
        except (ValueError, OverflowError):
            pass  # a field is not a number (or overflows int64): the line-by-line pass below names it
    keep: list[int] = []
    for i, row in enumerate(rows):
        line_number = first_line + i
        if len(row) == 1 and not row[0].strip():
            continue
        if len(row) != 4:
            errors.bad(line_number, f"expected 4 fields separated by {sep!r} (user, item, rating, timestamp), got {len(row)}")
            continue
        reason = None
        for c, (name, dtype, kind) in enumerate(_COLUMNS):
            try:
                value = np.array([row[c]]).astype(dtype)[0]
            except OverflowError:
                reason = f"{name} {row[c]!r} does not fit in int64"
                break
            except ValueError:
                reason = f"{name} {row[c]!r} is not {'an integer' if kind == 'integer' else 'a number'}"
                break
            if c == 2 and not np.isfinite(value):
                reason = f"rating {row[c]!r} is not finite"
                break
        if reason is not None:
            errors.bad(line_number, reason)
            continue
        keep.append(i)
    if not keep:
        return [np.zeros(0, dtype=dtype) for _, dtype, _ in _COLUMNS]
    table = np.array([rows[i] for i in keep])
    return [table[:, c].astype(dtype) for c, (_, dtype, _) in enumerate(_COLUMNS)]


def _detect_separator(first: str, path: Path) -> tuple[str, bool]:
    """(separator, has_header) from the file's first line."""
    if first.rstrip("\r\n").replace(" ", "") == CSV_HEADER:
        return ",", True
    if first.startswith("userId"):
        raise MalformedLineError(path, 1, f"CSV header must be {CSV_HEADER!r}, got {first.strip()!r}")
    for sep in ("::", "\t", ","):
        if sep in first:
            return sep, False
    raise MalformedLineError(path, 1, "cannot tell the format: expected tab, '::' or comma separated "
                                      "user, item, rating, timestamp")


def load_movielens(path: str | os.PathLike, *, on_error: str = "raise") -> Ratings:
    """Load MovieLens ratings from a ratings file or a directory holding one (u.data, ratings.dat, ratings.csv).

    Returns :class:`Ratings` with dense 0-based ``users`` (N,) / ``items`` (N,) int64, ``ratings`` (N,) float32,
    ``timestamps`` (N,) int64 in file order, and the original ids in ``user_ids`` / ``item_ids``.
    ``on_error``: "raise" (default) raises :class:`MalformedLineError` naming file and line; "skip" drops
    bad lines, counts them in ``skipped_lines`` and warns once.
    """
    check_on_error(on_error)
    file = _resolve(path, RATING_FILES)
    errors = LineErrors(file, on_error)
    chunks: list[list[np.ndarray]] = []
    # latin-1 never fails to decode and MovieLens ratings are ASCII, so a stray byte surfaces as a field error
    with open_text(file, encoding="latin-1") as f:
        first = f.readline()
        if not first:
            raise MalformedLineError(file, 1, "the file is empty")
        sep, has_header = _detect_separator(first, file)
        line_number = 2
        if not has_header:
            chunks.append(_parse_chunk([first], 1, sep, errors))
        while True:
            lines = list(itertools.islice(f, _CHUNK))
            if not lines:
                break
            chunks.append(_parse_chunk(lines, line_number, sep, errors))
            line_number += len(lines)
    users_raw, items_raw, ratings, timestamps = (np.concatenate([c[k] for c in chunks]) for k in range(4))
    user_ids, users = np.unique(users_raw, return_inverse=True)
    item_ids, items = np.unique(items_raw, return_inverse=True)
    return Ratings(users=users.astype(np.int64), items=items.astype(np.int64),
                   ratings=ratings.astype(np.float32), timestamps=timestamps,
                   num_users=int(user_ids.size), num_items=int(item_ids.size),
                   skipped_lines=errors.finish(), user_ids=user_ids, item_ids=item_ids)


def load_movielens_titles(path: str | os.PathLike, *, on_error: str = "raise") -> dict[int, str]:
    """Movie titles keyed by ORIGINAL movie id, from u.item (``id|title|...``, latin-1), movies.dat
    (``id::title::genres``, latin-1) or movies.csv (header ``movieId,title,genres``, UTF-8, quoted titles)."""
    file = _resolve(path, TITLE_FILES)
    errors = LineErrors(file, on_error)
    titles: dict[int, str] = {}
    with open_text(file, encoding="latin-1") as f:
        first = f.readline()
    if first.startswith("movieId"):
        with open_text(file, encoding="utf-8") as f:
            reader = csv.reader(f)
            next(reader)
            rows = ((reader.line_num, row) for row in reader)
            _collect_titles(rows, titles, errors)
    else:
        sep = "::" if "::" in first else "|"
        with open_text(file, encoding="latin-1") as f:
            rows = ((n, line.rstrip("\n").split(sep)) for n, line in enumerate(f, start=1) if line.strip())
            _collect_titles(rows, titles, errors)
    errors.finish()
    return titles


def _collect_titles(rows, titles: dict[int, str], errors: LineErrors) -> None:
    for line_number, row in rows:
        if len(row) < 2:
            errors.bad(line_number, f"expected at least 2 fields (id, title), got {len(row)}")
            continue
        try:
            movie = int(row[0])
        except ValueError:
            errors.bad(line_number, f"movie id {row[0]!r} is not an integer")
            continue
        titles[movie] = row[1]
