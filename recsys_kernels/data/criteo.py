"""Criteo display-advertising loader: Kaggle ``train.txt``, Terabyte ``day_N`` files, the CSV sample.

Layout of every row: label, 13 integer counts I1..I13, 26 categorical values C1..C26 written as hex
hashes; an empty field is a missing value. Kaggle and Terabyte files are tab-separated without a header
(``.gz`` is read transparently); the CSV sample starts with the header ``label,I1,...,I13,C1,...,C26``
(detected from the first line).

Dense: ``log(1 + max(x, 0))`` as float32 (DLRM's transform; the counts go down to -3 and the negatives carry
no signal there), missing = 0. Categorical: value ``s`` of column t maps to ``1 + int(s, 16) % (table_sizes[t] - 1)``,
and a missing value to the reserved id 0; ``int(s, 16)`` is stable across runs and machines, unlike ``hash()``.
Default table sizes are the published per-feature cardinalities of the Kaggle set (as used by DLRM's Kaggle
configuration; the missing value already counts as one category there) capped at ``table_size_cap``.

Rows are parsed in chunks: first by whole-buffer numpy decoding (``_criteo_fast``), then, for a chunk outside
that path's subset, row-wise with numpy conversions, and line by line only to name a bad line.
"""

from __future__ import annotations

import itertools
import os

import numpy as np

from recsys_kernels.data._criteo_fast import hex_ids, parse_block
from recsys_kernels.data._io import LineErrors, MalformedLineError, check_on_error, open_binary
from recsys_kernels.data.types import CTRData

NUM_DENSE = 13
NUM_SPARSE = 26
NUM_FIELDS = 1 + NUM_DENSE + NUM_SPARSE
# Per-feature cardinalities of Criteo Kaggle (C1..C26) after DLRM's preprocessing, the sizes its Kaggle
# runs (and the DLRM/torchrec examples) give the 26 embedding tables.
KAGGLE_CARDINALITIES: tuple[int, ...] = (
    1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194,
    27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572,
)
CSV_HEADER = ",".join(["label"] + [f"I{i}" for i in range(1, NUM_DENSE + 1)] + [f"C{i}" for i in range(1, NUM_SPARSE + 1)])
_CHUNK = 1 << 16
# byte -> hex digit value; 16 marks the NUL padding numpy adds to shorter byte strings; 255 is not hex
_HEX = np.full(256, 255, dtype=np.uint8)
_HEX[0] = 16
for _c, _v in zip(b"0123456789abcdef", range(16)):
    _HEX[_c] = _v
    _HEX[ord(chr(_c).upper())] = _v
_MAX_FAST_HEX = 15  # 15 hex digits fit uint64 with room for the multiply-by-16 step


def default_table_sizes(table_size_cap: int = 4_000_000) -> list[int]:
    """The Kaggle cardinalities, each capped at ``table_size_cap``."""
    return [min(c, table_size_cap) for c in KAGGLE_CARDINALITIES]


class _BadChunk(Exception):
    pass


def _hash_hex(values: np.ndarray, modulus: np.ndarray) -> np.ndarray:
    """(n, T) byte strings -> (n, T) int64 ids: 0 for empty, else 1 + int(s, 16) % modulus[t]."""
    n, t = values.shape
    width = values.dtype.itemsize
    if width <= _MAX_FAST_HEX:
        ids = hex_ids(np.ascontiguousarray(values).view(np.uint8).reshape(n, t, width), _HEX, modulus)
        if ids is None:
            raise _BadChunk("a categorical value is not hexadecimal")
        return ids
    # rare long hashes: Python's unbounded ints give the ids the 64-bit path would if it could
    out = np.zeros((n, t), dtype=np.int64)
    for i in range(n):
        for j in range(t):
            s = values[i, j]
            if s:
                try:
                    out[i, j] = 1 + int(s, 16) % int(modulus[j])
                except ValueError:
                    raise _BadChunk(f"C{j + 1} {s.decode('latin-1')!r} is not hexadecimal") from None
    return out


def _convert(rows: list[list[bytes]], modulus: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows of 40 byte fields -> labels (n,), dense (n, 13), sparse (n, 26); raises _BadChunk."""
    if any(len(r) != NUM_FIELDS for r in rows):
        raise _BadChunk("wrong field count")
    try:
        labels = np.array([r[0] for r in rows]).astype(np.float64)
        dense = np.array([r[1:1 + NUM_DENSE] for r in rows])
        dense = np.where(dense == b"", b"0", dense).astype(np.float64)
    except ValueError:
        raise _BadChunk("not a number") from None
    if not ((labels == 0) | (labels == 1)).all():
        raise _BadChunk("label not 0/1")
    if not np.isfinite(dense).all():
        raise _BadChunk("dense not finite")
    sparse = _hash_hex(np.array([r[1 + NUM_DENSE:] for r in rows]), modulus)
    dense = np.log1p(np.maximum(dense, 0.0))
    return labels.astype(np.float32), dense.astype(np.float32), sparse


def _line_reason(row: list[bytes], sep: bytes, modulus: np.ndarray) -> str | None:
    """Why one row is malformed, naming the field; None when it parses."""
    if len(row) != NUM_FIELDS:
        return (f"expected {NUM_FIELDS} {'comma' if sep == b',' else 'tab'}-separated fields "
                f"(label, I1..I13, C1..C26), got {len(row)}")
    text = [f.decode("latin-1") for f in row]
    try:
        label = np.array([row[0]]).astype(np.float64)[0]
    except ValueError:
        label = None
    if label not in (0.0, 1.0):
        return f"label {text[0]!r} is not 0 or 1"
    for j in range(NUM_DENSE):
        field = row[1 + j]
        if not field:
            continue
        try:
            value = np.array([field]).astype(np.float64)[0]
        except ValueError:
            return f"I{j + 1} {text[1 + j]!r} is not a number"
        if not np.isfinite(value):
            return f"I{j + 1} {text[1 + j]!r} is not finite"
    for j in range(NUM_SPARSE):
        try:
            _hash_hex(np.array([[row[1 + NUM_DENSE + j]]]), modulus[j:j + 1])
        except _BadChunk:
            return f"C{j + 1} {text[1 + NUM_DENSE + j]!r} is not hexadecimal"
    return None


def _parse_chunk(lines: list[bytes], first_line: int, sep: bytes, modulus: np.ndarray,
                 errors: LineErrors) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    data = b"".join(lines)
    fast = parse_block(data if data.endswith(b"\n") else data + b"\n", sep, NUM_DENSE, NUM_SPARSE, _HEX, modulus)
    if fast is not None:
        labels, dense, sparse = fast
        return labels.astype(np.float32), np.log1p(np.maximum(dense, 0.0)).astype(np.float32), sparse
    rows = [line.rstrip(b"\r\n").split(sep) for line in lines]
    try:
        return _convert(rows, modulus)
    except _BadChunk:
        pass
    keep = []
    for i, row in enumerate(rows):
        if len(row) == 1 and not row[0].strip():
            continue  # blank line: no record
        reason = _line_reason(row, sep, modulus)
        if reason is None:
            keep.append(row)
        else:
            errors.bad(first_line + i, reason)
    if not keep:
        return (np.zeros(0, np.float32), np.zeros((0, NUM_DENSE), np.float32), np.zeros((0, NUM_SPARSE), np.int64))
    return _convert(keep, modulus)


def load_criteo(path: str | os.PathLike, *, table_size_cap: int = 4_000_000, table_sizes: list[int] | None = None,
                max_rows: int | None = None, on_error: str = "raise") -> CTRData:
    """Load Criteo rows into :class:`CTRData`.

    Returns dense (N, 13) float32 (log-transformed, missing 0), sparse (N, 26) int64 with column t in
    [0, table_sizes[t]) (0 = missing), labels (N,) float32 in {0, 1}. ``table_sizes``: 26 sizes >= 2
    (default: :func:`default_table_sizes` of ``table_size_cap``). ``max_rows``: stop after that many rows.
    ``on_error``: "raise" names file and line of a bad row; "skip" drops, counts and warns once.
    """
    check_on_error(on_error)
    sizes = list(table_sizes) if table_sizes is not None else default_table_sizes(table_size_cap)
    if len(sizes) != NUM_SPARSE or any(int(s) < 2 for s in sizes):
        raise ValueError(f"table_sizes must be {NUM_SPARSE} sizes >= 2 (id 0 is reserved for missing), got {sizes}")
    if max_rows is not None and max_rows < 0:
        raise ValueError(f"max_rows must be >= 0, got {max_rows}")
    modulus = np.asarray(sizes, dtype=np.int64) - 1
    errors = LineErrors(path, on_error)
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    remaining = max_rows if max_rows is not None else -1
    with open_binary(path) as f:
        first = f.readline()
        if first.startswith(b"label"):
            if first.rstrip(b"\r\n").decode("latin-1") != CSV_HEADER:
                raise MalformedLineError(path, 1, f"CSV header must be label,I1..I13,C1..C26, got {first[:80]!r}...")
            sep, line_number, pending = b",", 2, []
        else:
            sep, line_number, pending = b"\t", 1, [first] if first else []
        while remaining != 0:
            want = _CHUNK if remaining < 0 else min(_CHUNK, remaining)
            lines = pending + list(itertools.islice(f, want - len(pending)))
            pending = []
            if not lines:
                break
            labels, dense, sparse = _parse_chunk(lines, line_number, sep, modulus, errors)
            line_number += len(lines)
            if remaining > 0:
                labels, dense, sparse = labels[:remaining], dense[:remaining], sparse[:remaining]
                remaining -= len(labels)
            parts.append((labels, dense, sparse))
    labels = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.float32)
    dense = np.concatenate([p[1] for p in parts]) if parts else np.zeros((0, NUM_DENSE), np.float32)
    sparse = np.concatenate([p[2] for p in parts]) if parts else np.zeros((0, NUM_SPARSE), np.int64)
    return CTRData(dense=dense, sparse=sparse, labels=labels, table_sizes=[int(s) for s in sizes],
                   skipped_lines=errors.finish())
