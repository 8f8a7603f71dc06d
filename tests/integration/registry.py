"""Write small registry snapshots and change files for tests, in the export format the loader reads."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path

import redis

from gatekeeper.cache.store import RedisEligibilityStore
from gatekeeper.core.cst import parse_cst
from gatekeeper.core.eligibility import Lookup
from gatekeeper.core.records import PractitionerRecord, StatusPeriod, merge_period
from loader.rows import FIELDS

REPO = Path(__file__).resolve().parents[2]
DEMO_REGISTRY = REPO / "demo" / "registry.csv"
DEMO_CLAIM = REPO / "demo" / "claim.json"


def period(
    code: str,
    chg_id: str,
    status: int,
    begntime: str,
    endtime: str = "",
    *,
    seq: int,
    chg_rea: str = "",
    vali_flag: int = 1,
    ban_endtime: str = "",
    prac_psn_type: int = 1,
) -> dict[str, str]:
    """One registry record with the field names of REGISTRY_FORMAT.md."""
    return {
        "prac_psn_code": code,
        "prac_psn_type": str(prac_psn_type),
        "chg_id": chg_id,
        "status": str(status),
        "begntime": begntime,
        "endtime": endtime,
        "ban_endtime": ban_endtime,
        "chg_rea": chg_rea,
        "vali_flag": str(vali_flag),
        "seq": str(seq),
    }


def write_manifest(
    snapshot: Path,
    *,
    row_count: int,
    watermark_seq: int,
    snapshot_id: str = "test",
    sha256: str | None = None,
) -> Path:
    """The manifest beside ``snapshot``; the checksum is of the file's bytes unless given."""
    manifest = {
        "snapshot_id": snapshot_id,
        "row_count": row_count,
        "watermark_seq": watermark_seq,
        "sha256": sha256 if sha256 is not None else hashlib.sha256(snapshot.read_bytes()).hexdigest(),
        "generated_at": "2026-11-20 02:00:00",
    }
    path = snapshot.with_name(snapshot.name + ".manifest.json")
    path.write_text(json.dumps(manifest), encoding="utf-8")
    return path


def write_snapshot(
    directory: Path,
    records: Iterable[dict[str, str]],
    *,
    snapshot_id: str = "test",
    watermark_seq: int | None = None,
    name: str = "registry.csv",
    fields: Sequence[str] = FIELDS,
) -> Path:
    """A snapshot CSV and its manifest; returns the CSV's path."""
    rows = list(records)
    path = directory / name
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(fields))
        writer.writeheader()
        writer.writerows(rows)
    if watermark_seq is None:
        watermark_seq = max((int(r["seq"]) for r in rows), default=0)
    write_manifest(path, row_count=len(rows), watermark_seq=watermark_seq, snapshot_id=snapshot_id)
    return path


def write_changes(path: Path, records: Iterable[Mapping[str, str]]) -> Path:
    """A change-feed file: one JSON object per line, ``seq`` a number as the registry sends it."""
    lines = [json.dumps({**record, "seq": int(record["seq"])}, ensure_ascii=False) + "\n" for record in records]
    path.write_text("".join(lines), encoding="utf-8")
    return path


def read_changes(paths: Iterable[Path]) -> list[dict[str, str]]:
    """The records of change files, as strings like :func:`period` makes them."""
    return [
        {name: "" if value is None else str(value) for name, value in json.loads(line).items()}
        for path in paths
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]


def load(client: redis.Redis, path: Path) -> None:
    """Load a snapshot the way ``gatekeeper-loader snapshot`` does."""
    from loader.snapshot import load_snapshot

    load_snapshot(client, path)


def lookup(redis_url: str, codes: Collection[str]) -> Lookup:
    """Read records the way the gatekeeper does (RedisEligibilityStore), from a sync test."""

    async def read() -> Lookup:
        store = RedisEligibilityStore.from_url(redis_url)
        try:
            return await store.lookup(codes)
        finally:
            await store.close()

    return asyncio.run(read())


def _status_period(record: Mapping[str, str]) -> StatusPeriod:
    """A registry record as docs/cache-layout.md says it is stored."""
    status = record["status"].strip()

    def moment(name: str) -> int:
        text = record[name].strip()
        return parse_cst(text) if text else 0

    return StatusPeriod(
        status=int(status) if record["vali_flag"].strip() == "1" else 0,
        begntime=moment("begntime"),
        chg_id=record["chg_id"].strip(),
        seq=int(record["seq"]),
        endtime=moment("endtime"),
        ban_endtime=moment("ban_endtime"),
        chg_rea="" if status == "1" else record["chg_rea"],  # registrations keep no reason
    )


def normalised(record: PractitionerRecord) -> PractitionerRecord:
    """The record with its periods in chg_id order: the order they arrived in carries no meaning."""
    return PractitionerRecord(record.prac_psn_type, tuple(sorted(record.periods, key=lambda p: str(p.chg_id))))


def expected_records(
    snapshot: Iterable[Mapping[str, str]],
    changes: Iterable[Mapping[str, str]] = (),
    *,
    watermark_seq: int = 0,
) -> dict[str, PractitionerRecord]:
    """The reference model of REGISTRY_FORMAT.md: every record replaces the period of its
    chg_id only when its seq is higher; changes at or below the snapshot's watermark are
    already in it. Records are normalised."""
    records: dict[str, PractitionerRecord] = {}

    def fold(row: Mapping[str, str]) -> None:
        code, incoming = row["prac_psn_code"].strip(), _status_period(row)
        current = records.get(code)
        if current is None:
            records[code] = PractitionerRecord(int(row["prac_psn_type"]), (incoming,))
            return
        merged = merge_period(current.periods, incoming)
        if merged is not None:
            records[code] = PractitionerRecord(int(row["prac_psn_type"]), merged)

    for row in snapshot:
        fold(row)
    for row in changes:
        if int(row["seq"]) > watermark_seq:
            fold(row)
    return {code: normalised(record) for code, record in records.items()}


def stored_records(redis_url: str, codes: Collection[str]) -> dict[str, PractitionerRecord]:
    """The normalised records readers see for ``codes`` (unknown codes are absent)."""
    return {code: normalised(record) for code, record in lookup(redis_url, codes).records.items()}


def snapshot_rows(path: Path, codes: Collection[str] | None = None) -> list[dict[str, str]]:
    """The records of an uncompressed snapshot CSV (of ``codes`` only, if given)."""
    with path.open(encoding="utf-8-sig", newline="") as handle:
        return [row for row in csv.DictReader(handle) if codes is None or row["prac_psn_code"] in codes]
