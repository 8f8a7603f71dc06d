"""Write small registry snapshots for tests, in the export format the loader reads."""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import redis

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
    data = path.read_bytes()
    manifest = {
        "snapshot_id": snapshot_id,
        "row_count": len(rows),
        "watermark_seq": watermark_seq if watermark_seq is not None else max((int(r["seq"]) for r in rows), default=0),
        "sha256": hashlib.sha256(data).hexdigest(),
        "generated_at": "2026-11-20 02:00:00",
    }
    path.with_name(path.name + ".manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return path


def load(client: redis.Redis, path: Path) -> None:
    """Load a snapshot the way ``gatekeeper-loader snapshot`` does."""
    from loader.snapshot import load_snapshot

    load_snapshot(client, path)
