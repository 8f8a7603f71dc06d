"""Measure real parts for benchmarks: CPU time of processes; redis-server from the tests' fixtures."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import psycopg

from gatekeeper.audit.database import migrate
from tests.servers import PostgresServer, RedisServer, free_port, start_postgres, start_redis

__all__ = [
    "RESULTS",
    "PostgresServer",
    "RedisServer",
    "cpu_seconds",
    "free_port",
    "markdown_table",
    "process_tree_cpu_seconds",
    "publish",
    "run_header",
    "start_decision_record",
    "start_redis",
]

RESULTS = Path(__file__).parent / "results"


def publish(stem: str, results: Mapping[str, Any], markdown: str) -> None:
    """Write a benchmark's ``bench/results/<stem>.json`` and ``<stem>.md``, and print the Markdown."""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    text = markdown.rstrip("\n") + "\n"
    (RESULTS / f"{stem}.md").write_text(text, encoding="utf-8")
    print(text, end="")


def run_header(benchmark: str, module: str) -> dict[str, str]:
    """What every results file starts with: the benchmark, the command that ran it (with this
    run's arguments) and the machine."""
    return {
        "benchmark": benchmark,
        "command": f"python -m {module} " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
    }


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A Markdown table, a line per row."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def start_decision_record() -> tuple[PostgresServer, str]:
    """A private PostgreSQL with a migrated ``gatekeeper`` database: the decision record a
    benchmarked gatekeeper writes to, as in production. Returns the server and its URL."""
    server = start_postgres()
    with psycopg.connect(server.url(), autocommit=True) as connection:
        connection.execute("CREATE DATABASE gatekeeper")
    url = server.url("gatekeeper")
    with psycopg.connect(url, autocommit=True) as connection:
        migrate(connection)
    return server, url


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used, from /proc (robust on a noisy machine)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def process_tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and its direct children (gatekeeper workers)."""
    total = cpu_seconds(pid)
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        for child in children.read_text().split():
            with contextlib.suppress(FileNotFoundError):
                total += cpu_seconds(int(child))
    return total


def commit_of(tree: Path) -> str:
    """The tree's commit (short), with "+" when it has uncommitted changes; "?" outside git."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "-C", str(tree), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"
    return commit + ("+" if changed else "")


def in_turns(trees: Mapping[str, Path], round_number: int) -> list[tuple[str, Path]]:
    """The trees to measure in a round: in order on even rounds, reversed on odd ones (A B,
    B A, …), so that a machine drifting during a run favours none of them."""
    return list(trees.items())[:: -1 if round_number % 2 else 1]
