"""The ``gatekeeper-loader`` command end to end: generate, snapshot, apply, status; a corrupt
snapshot refused without touching what is loaded."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import on_both_redis
from tests.servers import RedisServer

CLI = Path(sys.executable).parent / "gatekeeper-loader"
# What status reports about the data (not its age or memory, which move on their own).
LOADED_FIELDS = ("snapshot_id", "generation", "watermark_seq", "applied_seq", "registry_version", "record_count")


@pytest.fixture
def cli_env(redis_server: RedisServer) -> dict[str, str]:
    redis_server.client().flushall()
    return {**os.environ, "REDIS_URL": redis_server.url}


def run(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CLI), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60)


def status(env: dict[str, str], cwd: Path) -> tuple[int, dict[str, Any]]:
    result = run("status", "--json", env=env, cwd=cwd)
    return result.returncode, json.loads(result.stdout)


@on_both_redis
def test_generate_snapshot_apply_and_status(cli_env: dict[str, str], tmp_path: Path) -> None:
    code, empty = status(cli_env, tmp_path)
    assert (code, empty["snapshot_id"], empty["generation"]) == (1, None, None)  # nothing loaded yet

    registry = tmp_path / "registry"
    generated = run("generate", str(registry), "--people", "2000", env=cli_env, cwd=tmp_path)
    assert generated.returncode == 0, generated.stderr
    summary = re.search(
        r"generated 2,000 practitioners \(([\d,]+) rows, watermark (\d+)\) in (\S+) "
        r"and (\d+) change files up to seq (\d+)",
        generated.stdout,
    )
    assert summary, generated.stdout
    rows, watermark, snapshot, files, last = summary.groups()
    assert Path(snapshot) == registry / "registry-20261120.csv"
    assert Path(snapshot + ".manifest.json").exists()
    change_files = sorted(registry.glob("changes-*.jsonl"))
    assert len(change_files) == int(files) == 1

    loaded = run("snapshot", snapshot, env=cli_env, cwd=tmp_path)
    assert loaded.returncode == 0, loaded.stderr
    assert f"loaded snapshot 20261120: 2,000 practitioners from {rows} rows (0 bad)" in loaded.stdout
    # Where the time went: an operator sees which part of a slow load was slow.
    assert re.search(
        r"read and parsed in [\d.]+ s, bulk-written in [\d.]+ s, [\d,]+ rows merged in [\d.]+ s", loaded.stdout
    )

    applied = run("apply", *map(str, change_files), env=cli_env, cwd=tmp_path)
    assert applied.returncode == 0, applied.stderr
    assert "applied 20 changes from 1 files (0 older than what was loaded, 0 bad)" in applied.stdout

    code, report = status(cli_env, tmp_path)
    assert code == 0
    assert report["snapshot_id"] == "20261120"
    assert report["watermark_seq"] == int(watermark)
    assert report["applied_seq"] == int(last) == int(watermark) + 20
    assert report["registry_version"] == f"20261120@{last}"
    assert report["record_count"] == 2_000
    assert report["loading"] is None
    assert report["used_memory"] > 0

    # The same snapshot with one byte changed in transfer: its manifest no longer matches.
    corrupt = tmp_path / "corrupt.csv"
    data = bytearray(Path(snapshot).read_bytes())
    position = data.index(b",1,CHG") - 1  # the last digit of a practitioner code
    data[position] = ord("7") if data[position] != ord("7") else ord("8")
    corrupt.write_bytes(bytes(data))
    (tmp_path / "corrupt.csv.manifest.json").write_bytes(Path(snapshot + ".manifest.json").read_bytes())
    refused = run("snapshot", str(corrupt), env=cli_env, cwd=tmp_path)
    assert refused.returncode != 0
    assert "refused" in refused.stderr and "checksum" in refused.stderr
    code, after = status(cli_env, tmp_path)
    assert code == 0
    assert {k: after[k] for k in LOADED_FIELDS} == {k: report[k] for k in LOADED_FIELDS}
