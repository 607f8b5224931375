"""File helpers shared by the loaders: opening (plain or gzip), malformed-line bookkeeping.

Every loader reports a bad line the same way: ``on_error="raise"`` raises :class:`MalformedLineError`
naming the file, the 1-based line number and what is wrong; ``on_error="skip"`` drops the line, counts
it, and warns once per file with the count and the first offence. Nothing is dropped silently.
"""

from __future__ import annotations

import gzip
import io
import os
import warnings
from pathlib import Path
from typing import IO

ON_ERROR = ("raise", "skip")


class MalformedLineError(ValueError):
    """A line of a data file that cannot be parsed; the message is ``"<file>:<line>: <reason>"``."""

    def __init__(self, path: str | os.PathLike, line_number: int, reason: str) -> None:
        self.path = str(path)
        self.line_number = line_number
        self.reason = reason
        super().__init__(f"{self.path}:{line_number}: {reason}")


class MalformedLinesSkipped(UserWarning):
    """Issued once per file when ``on_error="skip"`` dropped lines."""


def check_on_error(on_error: str) -> None:
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")


def open_binary(path: str | os.PathLike) -> IO[bytes]:
    """Open ``path`` for reading bytes; ``.gz`` files (Criteo Terabyte day files ship so) are decompressed."""
    path = Path(path)
    if path.suffix == ".gz":
        return gzip.open(path, "rb")
    return open(path, "rb")


def open_text(path: str | os.PathLike, encoding: str = "utf-8") -> IO[str]:
    """Open ``path`` as text; ``newline=""`` would keep ``\\r``, so universal newlines are left on."""
    return io.TextIOWrapper(open_binary(path), encoding=encoding, errors="strict")


class LineErrors:
    """Collects the malformed lines of one file according to ``on_error``."""

    def __init__(self, path: str | os.PathLike, on_error: str) -> None:
        check_on_error(on_error)
        self.path = str(path)
        self.on_error = on_error
        self.count = 0
        self.first: tuple[int, str] | None = None

    def bad(self, line_number: int, reason: str) -> None:
        """Record one malformed line: raise now, or count it."""
        if self.on_error == "raise":
            raise MalformedLineError(self.path, line_number, reason)
        self.count += 1
        if self.first is None:
            self.first = (line_number, reason)

    def finish(self, stacklevel: int = 3) -> int:
        """Warn once if lines were skipped; return how many."""
        if self.count:
            line, reason = self.first  # type: ignore[misc]
            warnings.warn(f"{self.path}: skipped {self.count} malformed line(s); first at line {line}: {reason}",
                          MalformedLinesSkipped, stacklevel=stacklevel)
        return self.count
