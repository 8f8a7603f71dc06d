"""Load a full registry snapshot into a new generation and switch readers to it."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import redis

from gatekeeper.cache import keys
from gatekeeper.cache.layout import Meta
from loader.cache import (
    DEFAULT_LEASE_SECONDS,
    GenerationWriter,
    WriteStats,
    drop_generation,
    ensure_listpack_settings,
    read_state,
    refused_reason,
)
from loader.progress import Progress
from loader.quarantine import Quarantine
from loader.rows import EncodedRow, HeaderError, RowError, RowParser

DEFAULT_MAX_BAD_SHARE = 0.01  # a snapshot with more bad rows than this is refused
DEFAULT_MAX_SHRINK = 0.05  # a snapshot losing more practitioners than this is refused
BATCH_ROWS = 1_000  # rows per gk_insert call: a few milliseconds of Redis time


class SnapshotRefused(RuntimeError):
    """A snapshot that must not replace the cache (unless forced); nothing was switched."""


@dataclass(frozen=True)
class Manifest:
    """``<snapshot>.manifest.json``: what the registry says the snapshot holds."""

    snapshot_id: str
    row_count: int
    watermark_seq: int
    sha256: str
    generated_at: str


def manifest_path(path: Path) -> Path:
    """Where the manifest of a snapshot file lies."""
    return path.with_name(path.name + ".manifest.json")


def read_manifest(path: Path) -> Manifest:
    """The manifest beside a snapshot file; SnapshotRefused if missing or unreadable."""
    try:
        document = json.loads(manifest_path(path).read_text(encoding="utf-8"))
        return Manifest(
            snapshot_id=str(document["snapshot_id"]),
            row_count=int(document["row_count"]),
            watermark_seq=int(document["watermark_seq"]),
            sha256=str(document["sha256"]).lower(),
            generated_at=str(document.get("generated_at", "")),
        )
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise SnapshotRefused(f"{manifest_path(path)}: unusable manifest ({error})") from error


@dataclass(frozen=True)
class SnapshotOptions:
    """How strict a snapshot load is."""

    force: bool = False  # switch even when a check fails
    max_bad_share: float = DEFAULT_MAX_BAD_SHARE
    max_shrink: float = DEFAULT_MAX_SHRINK
    quarantine: Path | None = None  # default: <snapshot>.quarantine.jsonl
    lease_seconds: float = DEFAULT_LEASE_SECONDS


@dataclass
class SnapshotResult:
    """What a snapshot load did."""

    snapshot_id: str
    generation: int
    rows: int  # data rows read, good and bad
    practitioners: int
    bad_rows: int
    quarantine: Path | None
    truncated_rows: int = 0  # loaded with a field cut to its limit (and reported)
    replayed_changes: int = 0
    replaced_generation: int | None = None
    findings: list[str] = field(default_factory=list)  # codes re-registered during a ban
    problems: list[str] = field(default_factory=list)  # failed checks (forced through)
    listpack_settings_ok: bool = True
    seconds: float = 0.0
    replay_seconds: float = 0.0
    switch_seconds: float = 0.0


class _HashingReader(io.RawIOBase):
    """Passes bytes through while hashing them: the checksum is of the file as delivered."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self.sha256 = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        count = self._raw.readinto(buffer)  # type: ignore[attr-defined]
        if count:
            self.sha256.update(buffer[:count])
        return int(count or 0)

    def close(self) -> None:
        self._raw.close()
        super().close()


def _records(path: Path, hasher: _HashingReader) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of each non-blank CSV record, after the header."""
    raw: BinaryIO = io.BufferedReader(hasher, buffer_size=1 << 20)
    if path.suffix == ".gz":
        raw = gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[assignment]
    # A UTF-8 BOM is skipped; undecodable bytes become U+FFFD and fail that row only.
    text = io.TextIOWrapper(raw, encoding="utf-8-sig", errors="replace", newline="")
    reader = csv.reader(text)
    try:
        header = next(reader, None)
        if header is None:
            return
        yield 1, header
        end_of_previous = reader.line_num
        for values in reader:
            # A record with a quoted newline spans lines: report the one it starts on.
            start, end_of_previous = end_of_previous + 1, reader.line_num
            if not values or (len(values) == 1 and not values[0].strip()):
                continue  # blank line
            yield start, values
    except (csv.Error, EOFError, OSError) as error:  # e.g. a gzip stream cut short
        yield -1, [f"unreadable: {error}"]
    # Read whatever parsing left unread, so the checksum covers the whole file.
    while hasher.read(1 << 20):
        pass


def load_snapshot(
    client: redis.Redis,
    path: Path,
    options: SnapshotOptions = SnapshotOptions(),
    progress: Progress | None = None,
) -> SnapshotResult:
    """Stream a snapshot into a new generation; switch readers only if every check passes.

    Raises SnapshotRefused (nothing switched, the new generation dropped) when the
    snapshot is older than the one loaded, the manifest does not match, too many rows are
    bad, or the practitioner count shrinks too much, unless ``options.force``.
    """
    manifest = read_manifest(path)
    previous = read_state(client)
    # The registry never goes backwards: refused before minutes of loading, not after.
    backwards = _backwards(manifest, previous)
    if backwards and not options.force:
        raise SnapshotRefused(backwards)
    listpack_ok = ensure_listpack_settings(client)
    quarantine = Quarantine(options.quarantine or path.with_name(path.name + ".quarantine.jsonl"))
    progress = progress or Progress("snapshot", total=manifest.row_count)
    writer = GenerationWriter(
        client, keys.bucket_count_for(manifest.row_count), manifest.watermark_seq, options.lease_seconds
    )
    try:
        stats, rows, bad, truncated, hasher = _write_rows(writer, path, quarantine, progress)
        replay_started = progress.elapsed
        replayed = writer.replay_changes()
        replay_seconds = progress.elapsed - replay_started
        # Counted in Redis, not from what gk_insert reported: a code that a change wrote
        # into this generation before its snapshot row came is a practitioner all the same.
        practitioners = writer.count_practitioners()
        problems = [backwards] if backwards else []
        problems += _check(manifest, previous.record_count, practitioners, rows, bad, hasher, options)
        if problems and not options.force:
            raise SnapshotRefused("; ".join(problems))
        switch_started = progress.elapsed
        replaced = writer.switch(manifest.snapshot_id, practitioners)
        switch_seconds = progress.elapsed - switch_started
    except BaseException:
        writer.abandon()
        raise
    finally:
        quarantine.close()
        progress.clear()
    if replaced is not None:
        drop_generation(client, replaced)
    if backwards:
        # The changes after its watermark must come again: `follow` resumes from there.
        cursor = client.get(keys.FOLLOW_CURSOR)
        if cursor is not None and int(cursor) > manifest.watermark_seq:
            client.set(keys.FOLLOW_CURSOR, manifest.watermark_seq)
    return SnapshotResult(
        snapshot_id=manifest.snapshot_id,
        generation=writer.generation,
        rows=rows,
        practitioners=practitioners,
        bad_rows=bad,
        quarantine=quarantine.path if quarantine.count else None,
        truncated_rows=truncated,
        replayed_changes=replayed,
        replaced_generation=replaced,
        findings=sorted(stats.findings),
        problems=problems,
        listpack_settings_ok=listpack_ok,
        seconds=progress.elapsed,
        replay_seconds=replay_seconds,
        switch_seconds=switch_seconds,
    )


def _write_rows(
    writer: GenerationWriter, path: Path, quarantine: Quarantine, progress: Progress
) -> tuple[WriteStats, int, int, int, _HashingReader]:
    stats = WriteStats()
    rows = bad = truncated = 0
    batch: list[EncodedRow] = []
    lines: list[int] = []  # of the rows in batch, to report a refused one
    notes: list[str] = []
    with path.open("rb") as raw:
        hasher = _HashingReader(raw)
        records = _records(path, hasher)
        first = next(records, None)
        if first is None:
            raise SnapshotRefused(f"{path}: the file is empty")
        try:
            parser = RowParser(first[1])
        except HeaderError as error:
            raise SnapshotRefused(f"{path}: {error}") from error
        for line, values in records:
            rows += 1
            try:
                if line < 0:
                    raise RowError(values[0])
                batch.append(parser.encode(values, notes))
                lines.append(line)
                if notes:
                    truncated += 1
                    for note in notes:
                        quarantine.add(str(path), line, note)
                    notes.clear()
            except RowError as error:
                bad += 1
                quarantine.add(str(path), line, str(error))
            if len(batch) == BATCH_ROWS:
                writer.add(batch, stats, lines)
                progress.advance(len(batch))
                batch, lines = [], []
                bad += _report_refused(stats, path, quarantine)
        if batch:
            writer.add(batch, stats, lines)
            progress.advance(len(batch))
        writer.flush(stats)
        bad += _report_refused(stats, path, quarantine)
    return stats, rows, bad, truncated, hasher


def _report_refused(stats: WriteStats, path: Path, quarantine: Quarantine) -> int:
    """Quarantine the rows Redis refused since the last call (a record full of periods)."""
    for line, code in stats.refused:
        quarantine.add(str(path), line, refused_reason(code))
    count = len(stats.refused)
    stats.refused.clear()
    return count


def _backwards(manifest: Manifest, previous: Meta) -> str:
    """Why loading this snapshot would take the cache back in time; empty when it would not.

    A snapshot older than the changes applied since the loaded one is fine: those changes
    are in gk:changes and are replayed into it. One older than the loaded snapshot is not:
    what changed between the two reached the cache only through the loaded snapshot.
    """
    if manifest.watermark_seq >= previous.watermark_seq:
        return ""
    return (
        f"the snapshot's watermark_seq {manifest.watermark_seq} is below the loaded snapshot's "
        f"{previous.watermark_seq} (the cache has applied up to seq {previous.applied_seq}): the registry would go "
        "backwards (--force loads it anyway; then re-apply the changes after its watermark)"
    )


def _check(
    manifest: Manifest,
    previous_count: int,
    practitioners: int,
    rows: int,
    bad: int,
    hasher: _HashingReader,
    options: SnapshotOptions,
) -> list[str]:
    """Why this snapshot must not replace the cache; empty when it may."""
    problems = []
    digest = hasher.sha256.hexdigest()
    if digest != manifest.sha256:
        problems.append(f"checksum {digest} does not match the manifest's {manifest.sha256}")
    if rows != manifest.row_count:
        problems.append(f"{rows} rows read, the manifest says {manifest.row_count}")
    if rows and bad / rows > options.max_bad_share:
        problems.append(f"{bad} of {rows} rows are bad, more than {options.max_bad_share:.1%}")
    if previous_count and practitioners < previous_count * (1 - options.max_shrink):
        problems.append(
            f"{practitioners} practitioners would replace {previous_count}, "
            f"a drop of more than {options.max_shrink:.0%}"
        )
    return problems
