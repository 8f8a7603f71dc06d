"""Registry loader at national scale: snapshot load rate, memory, switch time, change apply rate.

Generates a synthetic registry, starts a private redis-server, and runs the real
``gatekeeper-loader`` in a subprocess (so its peak RSS is its own). The baseline in the
same run is reading and CSV-parsing the same file with nothing else: the floor any
Python loader pays.

    .venv/bin/python -m bench.loading --people 1000000 [--gzip]

Writes bench/results/loader-<people>.json and .md.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.harness import cpu_seconds, publish, run_header, start_redis
from loader.generate import generate

LOADER = str(Path(sys.executable).parent / "gatekeeper-loader")


def peak_rss(pid: int) -> int:
    """VmHWM of a running process, in bytes (0 once it is gone).

    Not getrusage's ru_maxrss: Linux carries that across exec, so a child of this (large)
    process would report this process's size. VmHWM belongs to the address space exec made.
    """
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def children(pid: int) -> list[int]:
    """The direct children of a process (the loader's parsing workers)."""
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (FileNotFoundError, ProcessLookupError):
        return []


@dataclass
class LoaderRun:
    """One run of gatekeeper-loader, as seen from outside."""

    summary: dict[str, Any]  # its --json summary
    seconds: float  # wall
    peak_rss: int  # bytes, the loader and its parsing workers together
    cpu_own: float  # CPU seconds of the loader's own process (read every 0.1 s: at most that short)
    cpu_workers: float  # CPU seconds of its parsing workers (the rest of what wait4 reports)
    cpu_redis: float  # CPU seconds redis-server spent meanwhile


def _cpu_of(pid: int) -> float:
    try:
        return cpu_seconds(pid)
    except (FileNotFoundError, ProcessLookupError):
        return 0.0


def run_loader(
    redis_url: str,
    redis_pid: int,
    *args: str,
    command: Sequence[str] = (LOADER,),
    env: Mapping[str, str] | None = None,
) -> LoaderRun:
    """Run gatekeeper-loader (``command``: another tree's, for bench.compare) and watch its
    memory and CPU, and Redis's."""
    started, redis_before = time.monotonic(), cpu_seconds(redis_pid)
    process = subprocess.Popen(
        [*command, "--redis-url", redis_url, *args, "--json"], env=env, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    peak, own_cpu = 0, 0.0
    workers: dict[int, int] = {}  # each worker's own peak: they live as long as the parse
    while True:  # VmHWM only grows: the last reading is the peak but for ~0.1 s
        own = peak_rss(process.pid)
        own_cpu = max(own_cpu, _cpu_of(process.pid))
        for child in children(process.pid):
            workers[child] = max(workers.get(child, 0), peak_rss(child))
        peak = max(peak, own + sum(workers.values()))
        waited, status, usage = os.wait4(process.pid, os.WNOHANG)
        if waited:
            break
        time.sleep(0.1)
    process.returncode = os.waitstatus_to_exitcode(status)
    elapsed, redis_cpu = time.monotonic() - started, cpu_seconds(redis_pid) - redis_before
    output = process.stdout.read()
    if process.returncode != 0:
        raise RuntimeError(f"gatekeeper-loader {' '.join(args)} failed with {process.returncode}")
    tree_cpu = usage.ru_utime + usage.ru_stime  # the loader and the workers it waited for
    return LoaderRun(json.loads(output), elapsed, peak, own_cpu, max(0.0, tree_cpu - own_cpu), redis_cpu)


def csv_baseline(path: Path) -> float:
    """Rows per second of merely reading and CSV-parsing the file."""
    started = time.monotonic()
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as raw, io.TextIOWrapper(raw, encoding="utf-8-sig", newline="") as text:  # type: ignore[operator]
        rows = sum(1 for _ in csv.reader(text)) - 1
    return rows / (time.monotonic() - started)


def used_memory(client: Any) -> int:
    return int(client.info("memory")["used_memory"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--people", type=int, default=1_000_000)
    parser.add_argument("--gzip", action="store_true", help="load a .csv.gz snapshot")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--changes", type=int, help="change-feed records (default: people / 10)")
    parser.add_argument("--no-reload", action="store_true", help="skip the second load (the switch over a full cache)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="gk-bench-") as directory:
        data = Path(directory) / "registry"
        data.mkdir()
        started = time.monotonic()
        changes_wanted = args.changes or max(10, args.people // 10)
        registry = generate(data, args.people, seed=args.seed, compress=args.gzip, changes=changes_wanted)
        generate_seconds = time.monotonic() - started
        snapshot_bytes = registry.snapshot.stat().st_size
        baseline_rate = csv_baseline(registry.snapshot)

        redis_dir = Path(directory) / "redis"
        redis_dir.mkdir()
        redis_server = start_redis(redis_dir)
        try:
            client = redis_server.client()
            before = used_memory(client)
            pid = redis_server.process.pid
            load = run_loader(redis_server.url, pid, "snapshot", str(registry.snapshot))
            after = used_memory(client)
            applying = run_loader(
                redis_server.url, pid, "apply", *map(str, registry.change_files), "--quarantine", str(data / "q.jsonl")
            )
            # A second load of the same snapshot: the switch with a generation in place, and the
            # replay of every change applied since the snapshot's watermark.
            reload: dict[str, Any] = {
                "replayed_changes": None,
                "replay_seconds": float("nan"),
                "switch_seconds": float("nan"),
            }
            reload_seconds = float("nan")
            if not args.no_reload:
                reloading = run_loader(redis_server.url, pid, "snapshot", str(registry.snapshot))
                reload, reload_seconds = reloading.summary, reloading.seconds
        finally:
            redis_server.stop()

    snapshot, load_seconds, changes, apply_seconds = load.summary, load.seconds, applying.summary, applying.seconds
    rows = snapshot["rows"]
    result = {
        **run_header("loader", "bench.loading"),
        "people": args.people,
        "rows": rows,
        "snapshot_file": registry.snapshot.name,
        "snapshot_bytes": snapshot_bytes,
        "generate_seconds": round(generate_seconds, 1),
        "load_seconds_wall": round(load_seconds, 1),
        "load_rows_per_s": round(rows / load_seconds),
        "baseline_csv_rows_per_s": round(baseline_rate),
        "ratio_load_to_baseline": round(rows / load_seconds / baseline_rate, 3),
        "loader_peak_rss_mb": round(load.peak_rss / 2**20, 1),  # with its parsing workers
        # Where a snapshot row's time goes: CPU microseconds per row of each process, and
        # of all three (what two cores must supply for every row).
        "cpu_us_per_row_loader": round(load.cpu_own / rows * 1e6, 2),
        "cpu_us_per_row_parsers": round(load.cpu_workers / rows * 1e6, 2),
        "cpu_us_per_row_redis": round(load.cpu_redis / rows * 1e6, 2),
        "cpu_us_per_row_total": round((load.cpu_own + load.cpu_workers + load.cpu_redis) / rows * 1e6, 2),
        "redis_used_memory_before": before,
        "redis_used_memory_after": after,
        "redis_bytes_per_practitioner": round((after - before) / snapshot["practitioners"], 1),
        # The load's parts: reading, parsing and gathering the rows (both cores busy), the
        # bulk HSETs and the rows merged by gk_insert (Redis busy, the other core mostly idle).
        "read_seconds": round(snapshot["read_seconds"], 1),
        "bulk_seconds": round(snapshot["bulk_seconds"], 1),
        "merge_seconds": round(snapshot["merge_seconds"], 1),
        "merge_rows": snapshot["merge_rows"],
        "switch_ms": round(snapshot["switch_seconds"] * 1000, 1),
        "reload_replayed_changes": reload["replayed_changes"],
        "reload_replay_ms": round(reload["replay_seconds"] * 1000, 1),
        "reload_switch_ms": round(reload["switch_seconds"] * 1000, 1),
        "reload_seconds_wall": round(reload_seconds, 1),
        "changes_applied": changes["applied"],
        "changes_per_s": round((changes["applied"] + changes["stale"]) / changes["seconds"]),
        "apply_seconds_wall": round(apply_seconds, 1),
    }
    stem = f"loader-{args.people}{'-gz' if args.gzip else ''}"
    lines = [f"# Loader, {args.people:,} practitioners\n", f"`{result['command']}` on {result['machine']}\n"]
    lines += ["| measure | value |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in result.items() if key not in ("benchmark", "command", "machine")]
    publish(stem, result, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
