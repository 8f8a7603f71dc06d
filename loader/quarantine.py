"""The quarantine report: every row that was not applied, with its file, line and reason."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TextIO


class Quarantine:
    """Writes JSON Lines ``{"file", "line", "reason"}``; the file is created on the first row.

    A report is of one run (truncated on its first row) unless ``append``: a long-running
    ``follow`` is restarted many times and keeps one report across its runs.
    """

    def __init__(self, path: Path, *, append: bool = False) -> None:
        self.path = path
        self.append = append
        self.count = 0
        self._file: TextIO | None = None

    def add(self, file: str, line: int, reason: str) -> None:
        """Record one bad row."""
        if self._file is None:
            # A lone surrogate in a bad row's excerpt is written as its JSON escape, \\udXXX,
            # instead of failing the report (and the loader) on the row it reports.
            self._file = self.path.open("a" if self.append else "w", encoding="utf-8", errors="backslashreplace")
        self._file.write(json.dumps({"file": file, "line": line, "reason": reason}, ensure_ascii=False) + "\n")
        self.count += 1

    def close(self) -> None:
        """Flush and close the report."""
        if self._file is not None:
            self._file.close()
            self._file = None
