"""Load a full registry snapshot into a new generation and switch readers to it."""

from __future__ import annotations

import contextlib
import csv
import gzip
import hashlib
import io
import json
import multiprocessing
import os
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.pool import AsyncResult
from pathlib import Path
from typing import BinaryIO

import redis

from gatekeeper.cache import keys
from gatekeeper.cache.layout import Meta
from loader.bulk import BulkBuffer, FirstRows, SlowRows
from loader.cache import (
    DEFAULT_LEASE_SECONDS,
    GenerationWriter,
    WriteStats,
    drop_generation,
    ensure_listpack_settings,
    read_state,
    refused_reason,
)
from loader.chunks import ParsedChunk, Target, parse_chunk, split_lines
from loader.progress import Progress
from loader.quarantine import Quarantine
from loader.rows import HeaderError, RowParser

DEFAULT_MAX_BAD_SHARE = 0.01  # a snapshot with more bad rows than this is refused
DEFAULT_MAX_SHRINK = 0.05  # a snapshot losing more practitioners than this is refused
BATCH_ROWS = 1_000  # rows per gk_insert call: a few milliseconds of Redis time
# Large snapshots are parsed by worker processes, the loader's own process sending what
# they packed; spawning them costs about a second, so small files are parsed in process.
PARSERS = min(2, os.cpu_count() or 1)
PARALLEL_MIN_BYTES = 16 << 20


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
    # Where the rows' time went: reading, parsing and gathering them; writing the first row
    # of each code and chg_id (bulk HSETs); merging the others (gk_insert, Redis busy).
    read_seconds: float = 0.0
    bulk_seconds: float = 0.0
    merge_seconds: float = 0.0
    merge_rows: int = 0  # rows that went through gk_insert
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


@dataclass
class _Written:
    """What writing a snapshot's rows did, and how long each part took."""

    stats: WriteStats
    rows: int
    bad: int
    truncated: int
    hasher: _HashingReader
    read_seconds: float
    bulk_seconds: float
    merge_seconds: float
    merge_rows: int


def _open_text(path: Path, hasher: _HashingReader) -> io.BufferedIOBase:
    """The snapshot's bytes as delivered, decompressed if it is a .gz file."""
    raw = io.BufferedReader(hasher, buffer_size=1 << 20)
    return gzip.GzipFile(fileobj=raw, mode="rb") if path.suffix == ".gz" else raw


def _header(piece: bytes) -> tuple[list[str], bytes]:
    """The header record of the first piece of a snapshot, and the rest of the piece.
    A UTF-8 BOM is skipped; undecodable bytes become U+FFFD."""
    end = piece.find(b"\n") + 1 or len(piece)
    text = piece[:end].decode("utf-8-sig", errors="replace")
    return next(csv.reader([text]), []), piece[end:]


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
        written = _write_rows(writer, path, quarantine, progress, manifest.row_count)
        stats, rows, bad = written.stats, written.rows, written.bad
        replay_started = progress.elapsed
        replayed = writer.replay_changes()
        replay_seconds = progress.elapsed - replay_started
        # Counted in Redis, not from what gk_insert reported: a code that a change wrote
        # into this generation before its snapshot row came is a practitioner all the same.
        practitioners = writer.count_practitioners()
        problems = [backwards] if backwards else []
        problems += _check(manifest, previous.record_count, practitioners, rows, bad, written.hasher, options)
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
        truncated_rows=written.truncated,
        replayed_changes=replayed,
        replaced_generation=replaced,
        findings=sorted(stats.findings),
        problems=problems,
        listpack_settings_ok=listpack_ok,
        seconds=progress.elapsed,
        read_seconds=written.read_seconds,
        bulk_seconds=written.bulk_seconds,
        merge_seconds=written.merge_seconds,
        merge_rows=written.merge_rows,
        replay_seconds=replay_seconds,
        switch_seconds=switch_seconds,
    )


def _write_rows(
    writer: GenerationWriter, path: Path, quarantine: Quarantine, progress: Progress, expected_rows: int
) -> _Written:
    """Write the snapshot's rows: the first of each code and chg_id with bulk HSETs while the
    file is read (loader/bulk.py), then the others through gk_insert, in the file's order."""
    started = progress.elapsed
    stats = WriteStats()
    rows = bad = truncated = 0
    first_rows = FirstRows(expected_rows)
    bulk = BulkBuffer(writer.target)
    slow = SlowRows(writer.target, BATCH_ROWS)
    with path.open("rb") as raw, contextlib.closing(bulk), contextlib.closing(slow):
        hasher = _HashingReader(raw)
        stream = _open_text(path, hasher)  # held: collecting it would close the file
        pieces = split_lines(stream)
        try:
            first = next(pieces, None)
        except (EOFError, OSError) as error:  # e.g. not gzip at all
            first, unreadable = b"", f"unreadable: {error}"
        else:
            unreadable = ""
        if first is None:
            raise SnapshotRefused(f"{path}: the file is empty")
        if unreadable and not first:  # not even a header could be read
            raise SnapshotRefused(f"{path}: {unreadable}")
        header, rest = _header(first)
        try:
            RowParser(header)
        except HeaderError as error:
            raise SnapshotRefused(f"{path}: {error}") from error
        for parsed in _parsed_chunks(path, header, rest, pieces, writer.target):
            rows += parsed.count
            bad += len(parsed.bad)
            truncated += parsed.truncated
            for line, reason in (*parsed.bad, *parsed.notes):
                quarantine.add(str(path), line, reason)
            firsts, others, new_chg_ids = first_rows.split(parsed)
            bulk.add(parsed, firsts, new_chg_ids)
            slow.add(parsed, others, new_chg_ids)
            stats.practitioners += len(firsts)
            progress.advance(len(firsts))
            if parsed.unreadable:
                unreadable = parsed.unreadable
                break
        bulk_started = progress.elapsed
        _write_bulk(writer, bulk)
        merge_started, merge_rows = progress.elapsed, slow.count
        for batch in slow.batches():
            writer.send(batch, stats)
            progress.advance(len(batch.lines))
            bad += _report_refused(stats, path, quarantine)
        writer.flush(stats)
        # Only now may changes be written here: a merge row whose index entry was bulk-written
        # relies on its chg_id being new to the generation (docs/cache-layout.md).
        writer.end_bulk()
        merge_ended = progress.elapsed
        bad += _report_refused(stats, path, quarantine)
        if unreadable:
            rows, bad = rows + 1, bad + 1
            quarantine.add(str(path), -1, unreadable)
        # Read whatever parsing left unread, so the checksum covers the whole file.
        while hasher.read(1 << 20):
            pass
        del stream
    return _Written(
        stats,
        rows,
        bad,
        truncated,
        hasher,
        read_seconds=bulk_started - started,
        bulk_seconds=merge_started - bulk_started,
        merge_seconds=merge_ended - merge_started,
        merge_rows=merge_rows,
    )


def _write_bulk(writer: GenerationWriter, bulk: BulkBuffer) -> None:
    """Write what ``bulk`` gathered; each of its records must be new to the generation."""
    fields = bulk.rows
    added = writer.write_bulk(bulk.commands())
    if added != fields:  # a first row is first: a field already there is a bug, not data
        raise RuntimeError(f"bulk HSETs added {added} fields of {fields}: some were there already")


def _parsed_chunks(
    path: Path, header: list[str], rest: bytes, pieces: Iterator[bytes], target: Target
) -> Iterator[ParsedChunk]:
    """Each piece of the snapshot after its header, parsed, in the file's order: by
    PARSERS worker processes for a large file (Redis merging on the remaining core), here
    for a small one. A piece the CSV reader or gzip cannot read ends the file."""

    def numbered() -> Iterator[tuple[bytes, int]]:
        line = 2
        if rest:
            yield rest, line
            line += rest.count(b"\n")
        for piece in pieces:
            yield piece, line
            line += piece.count(b"\n")

    chunks = _guarded(numbered())
    if path.stat().st_size < PARALLEL_MIN_BYTES or PARSERS < 2:
        for text, line in chunks:
            yield parse_chunk(text, line, header, target) if line else _unreadable(text)
        return
    with multiprocessing.get_context("spawn").Pool(PARSERS) as pool:
        pending: deque[AsyncResult[ParsedChunk] | ParsedChunk] = deque()
        for text, line in chunks:
            if line:
                pending.append(pool.apply_async(parse_chunk, (text, line, header, target)))
            else:
                pending.append(_unreadable(text))
            while len(pending) > 2 * PARSERS:  # bounded: the file is never read far ahead
                yield _result(pending.popleft())
        while pending:
            yield _result(pending.popleft())


def _guarded(chunks: Iterator[tuple[bytes, int]]) -> Iterator[tuple[bytes, int]]:
    """The chunks until gzip fails, then (the error, line 0) in place of the rest."""
    try:
        yield from chunks
    except (EOFError, OSError) as error:  # e.g. a gzip stream cut short
        yield f"unreadable: {error}".encode(), 0


def _unreadable(message: bytes) -> ParsedChunk:
    return ParsedChunk(unreadable=message.decode())


def _result(pending: AsyncResult[ParsedChunk] | ParsedChunk) -> ParsedChunk:
    return pending if isinstance(pending, ParsedChunk) else pending.get()


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
    are in {gk}:changes and are replayed into it. One older than the loaded snapshot is not:
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
