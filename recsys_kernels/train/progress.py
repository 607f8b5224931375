"""Progress display for training epochs: tqdm when it is installed, else one self-rewriting line.

tqdm is optional (not a dependency of the package). Without it, a terminal gets a single line redrawn in
place at most ``refresh_s`` apart; a log file or pipe gets nothing until ``close()``, which prints one
summary line, so captured logs are not flooded with carriage returns.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress"]


class Progress:
    """``update(n_batches, loss=..., samples_per_s=...)`` per step (values may be None to keep the last);
    ``close()`` prints the final state."""

    def __init__(self, desc: str, total: int | None = None, stream: TextIO | None = None, refresh_s: float = 0.5,
                 use_tqdm: bool = True):
        self.desc, self.total, self.stream, self.refresh_s = desc, total, stream or sys.stderr, refresh_s
        self.count, self.postfix = 0, {}
        self._last = 0.0
        self._tqdm = None
        if use_tqdm:
            try:
                from tqdm.auto import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self._tqdm = tqdm(total=total, desc=desc, unit="batch", file=self.stream, dynamic_ncols=True,
                                  leave=True)
        self._tty = self._tqdm is None and hasattr(self.stream, "isatty") and self.stream.isatty()

    def due(self) -> bool:
        """Whether a refresh would show now (callers fetch values that cost a device sync only then)."""
        return time.perf_counter() - self._last >= self.refresh_s

    def update(self, n: int = 1, **postfix) -> None:
        self.count += n
        self.postfix.update({k: v for k, v in postfix.items() if v is not None})
        if self._tqdm is not None:
            self._tqdm.update(n)
            if postfix and self.due():
                self._tqdm.set_postfix_str(self._postfix_text(), refresh=False)
                self._last = time.perf_counter()
        elif self._tty and self.due():
            self.stream.write("\r" + self._line())
            self.stream.flush()
            self._last = time.perf_counter()

    def _postfix_text(self) -> str:
        parts = []
        for k, v in self.postfix.items():
            parts.append(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}")
        return " ".join(parts)

    def _line(self) -> str:
        count = f"{self.count}/{self.total}" if self.total else f"{self.count}"
        return f"{self.desc}: {count} batches {self._postfix_text()}"

    def close(self, **postfix) -> None:
        self.postfix.update({k: v for k, v in postfix.items() if v is not None})
        if self._tqdm is not None:
            self._tqdm.set_postfix_str(self._postfix_text(), refresh=True)
            self._tqdm.close()
            return
        self.stream.write(("\r" if self._tty else "") + self._line() + "\n")
        self.stream.flush()
