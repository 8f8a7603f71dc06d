"""Progress of long runs on a terminal: rows/s and ETA, then a one-line summary."""

from __future__ import annotations

import sys
import time
from typing import TextIO

REFRESH_SECONDS = 0.5


class Progress:
    """Redraws one status line at most twice a second, only on a terminal."""

    def __init__(self, label: str, total: int | None = None, stream: TextIO = sys.stderr) -> None:
        self.label = label
        self.total = total
        self.done = 0
        self._stream = stream
        self._live = stream.isatty()
        self._started = time.monotonic()
        self._drawn = 0.0

    @property
    def elapsed(self) -> float:
        """Seconds since the start."""
        return time.monotonic() - self._started

    @property
    def rate(self) -> float:
        """Items per second so far."""
        return self.done / self.elapsed if self.elapsed > 0 else 0.0

    def advance(self, count: int) -> None:
        """Count ``count`` more items done."""
        self.done += count
        now = time.monotonic()
        if self._live and now - self._drawn >= REFRESH_SECONDS:
            self._drawn = now
            line = f"{self.label}: {self.done:,} rows, {self.rate:,.0f} rows/s"
            if self.total and self.rate > 0:
                remaining = max(0, self.total - self.done) / self.rate
                line += f", {100 * self.done / self.total:.0f}%, ETA {remaining:.0f} s"
            self._stream.write("\r\033[K" + line)
            self._stream.flush()

    def clear(self) -> None:
        """Remove the status line before other output."""
        if self._live:
            self._stream.write("\r\033[K")
            self._stream.flush()
