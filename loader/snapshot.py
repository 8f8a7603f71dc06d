"""Load a full registry snapshot into a new generation and switch readers to it."""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import redis

from gatekeeper import keys
from gatekeeper.records import PractitionerRecord, Status, StatusPeriod, merge_period
from loader.cache import GenerationWriter, drop_abandoned_generations, drop_generation, ensure_listpack_settings
from loader.rows import RegistryRow, RowError, parse_row


@dataclass(frozen=True)
class BadRow:
    """A row that was not applied, with where it is and why."""

    path: str
    line: int
    reason: str


@dataclass
class SnapshotResult:
    """What a snapshot load did."""

    snapshot_id: str
    generation: int
    practitioners: int
    rows: int
    bad_rows: list[BadRow] = field(default_factory=list)
    replaced_generation: int | None = None
    listpack_settings_ok: bool = True


def open_text(path: Path) -> io.TextIOWrapper:
    """Open a .csv or .csv.gz as text; a UTF-8 BOM is skipped, line ends kept for csv."""
    raw = gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")  # noqa: SIM115 - the wrapper owns it
    return io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")


def read_rows(path: Path) -> Iterator[tuple[int, RegistryRow | RowError]]:
    """(line number, row or error) for each non-blank record of a snapshot CSV."""
    with open_text(path) as text:
        reader = csv.reader(text)
        header = [name.strip() for name in next(reader, [])]
        for record in reader:
            line = reader.line_num
            if not any(value.strip() for value in record):
                continue
            if len(record) != len(header):
                yield line, RowError(f"has {len(record)} columns, the header has {len(header)}")
                continue
            try:
                yield line, parse_row(dict(zip(header, record, strict=True)))
            except RowError as error:
                yield line, error


@dataclass
class _Practitioner:
    prac_psn_type: int
    periods: tuple[StatusPeriod, ...] = ()


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
    """The manifest beside a snapshot file."""
    document = json.loads(manifest_path(path).read_text(encoding="utf-8"))
    return Manifest(
        snapshot_id=str(document["snapshot_id"]),
        row_count=int(document["row_count"]),
        watermark_seq=int(document["watermark_seq"]),
        sha256=str(document["sha256"]),
        generated_at=str(document.get("generated_at", "")),
    )


def load_snapshot(client: redis.Redis, path: Path) -> SnapshotResult:
    """Read a whole snapshot, write it as a new generation, switch, drop the old one."""
    manifest = read_manifest(path)
    snapshot_id, watermark_seq = manifest.snapshot_id, manifest.watermark_seq
    people: dict[str, _Practitioner] = {}
    bad: list[BadRow] = []
    rows = 0
    for line, row in read_rows(path):
        if isinstance(row, RowError):
            bad.append(BadRow(str(path), line, str(row)))
            continue
        rows += 1
        person = people.setdefault(row.prac_psn_code, _Practitioner(row.prac_psn_type))
        merged = merge_period(person.periods, row.period)
        if merged is not None:
            person.periods = merged
    records = (
        (code, PractitionerRecord(p.prac_psn_type, tuple(x for x in p.periods if x.status != Status.WITHDRAWN)))
        for code, p in people.items()
    )
    listpack_ok = ensure_listpack_settings(client)
    drop_abandoned_generations(client)
    writer = GenerationWriter(client, keys.bucket_count_for(len(people)))
    count = writer.write(records)
    previous = writer.switch(snapshot_id, watermark_seq, count)
    if previous is not None:
        drop_generation(client, previous)
    return SnapshotResult(snapshot_id, writer.generation, count, rows, bad, previous, listpack_ok)
