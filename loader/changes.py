"""Apply the registry's change feed: JSON Lines files, in any order, any number of times."""

from __future__ import annotations

import json
import re
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import redis

from loader.cache import ApplyStats, ChangeApplier, refused_reason
from loader.progress import Progress
from loader.quarantine import Quarantine
from loader.rows import EncodedRow, RowError, encode_change

_json = msgspec.json.Decoder()
CHANGE_FILE = re.compile(r"changes-(\d+)-(\d+)\.jsonl")


def parse_change(text: str, notes: list[str] | None = None) -> EncodedRow:
    """Validate one change-feed line; what was cut to fit is noted in ``notes``."""
    try:
        document = _json.decode(text)
    except msgspec.DecodeError as error:
        # msgspec refuses a lone surrogate escape (\\ud800) that Python's json accepts, as a
        # feed page read by `follow` does: decoded that way, the row gets the same reason
        # from the same check whichever way it arrives.
        try:
            document = json.loads(text)
        except ValueError:
            raise RowError(f"not JSON: {error}") from None
    if not isinstance(document, dict):
        raise RowError("not a JSON object")
    return encode_change(document, notes)


def read_change_file(path: Path) -> Iterator[tuple[int, EncodedRow | RowError, list[str]]]:
    """(line number, change or error, what was cut to fit) for each non-blank line of a change file."""
    with path.open(encoding="utf-8-sig", errors="replace") as lines:
        for number, line in enumerate(lines, start=1):
            text = line.strip()
            if not text:
                continue
            notes: list[str] = []
            try:
                yield number, parse_change(text, notes), notes
            except RowError as error:
                yield number, error, []


def _first_seq(path: Path) -> int:
    match = CHANGE_FILE.fullmatch(path.name)
    return int(match.group(1)) if match else 0


@dataclass
class ApplyResult:
    """What applying change files did."""

    files: int = 0
    stats: ApplyStats = field(default_factory=ApplyStats)
    bad_rows: int = 0
    truncated_rows: int = 0  # applied with a field cut to its limit (and reported)


def apply_change_files(
    client: redis.Redis, paths: Iterable[Path], quarantine: Quarantine, progress: Progress | None = None
) -> ApplyResult:
    """Apply change files; a change older than what is applied for its chg_id is skipped."""
    applier = ChangeApplier(client)
    result = ApplyResult()
    progress = progress or Progress("apply")
    # Any order is correct (merges compare seq); seq order just skips fewer stale writes.
    for path in sorted(paths, key=lambda p: (_first_seq(p), p.name)):
        result.files += 1

        lines = array("L")  # of each row given to the applier, to report a refused one

        def good_rows(path: Path = path, lines: array[int] = lines) -> Iterator[EncodedRow]:
            for line, row, notes in read_change_file(path):
                if isinstance(row, RowError):
                    result.bad_rows += 1
                    quarantine.add(str(path), line, str(row))
                else:
                    if notes:
                        result.truncated_rows += 1
                        for note in notes:
                            quarantine.add(str(path), line, note)
                    progress.advance(1)
                    lines.append(line)
                    yield row

        for position, code in applier.apply(good_rows(), result.stats):
            result.bad_rows += 1
            quarantine.add(str(path), lines[position], refused_reason(code))
    progress.clear()
    return result
