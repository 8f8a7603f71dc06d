"""CheckClaim over real gRPC and Redis, against the gRPC stack's own cost in the same run.

Starts a private redis-server, writes a synthetic registry, starts ``gatekeeper serve``
and sends 10-item claims one at a time; the baseline is the health Check RPC of the same
server (a handler that does nothing), so the difference is what checking costs.

    .venv/bin/python -m bench.check_claim [--people 100000] [--calls 3000]

Writes bench/results/check_claim.json and .md.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.harness import free_port, markdown_table, process_tree_cpu_seconds, publish, run_header, start_redis
from gatekeeper.core.cst import format_cst, parse_cst
from gatekeeper.v1 import gatekeeper_pb2 as pb
from gatekeeper.v1 import gatekeeper_pb2_grpc as pb_grpc
from loader.rows import FIELDS
from loader.snapshot import load_snapshot, manifest_path

SERVICE_DAY = parse_cst("2026-11-20 08:00:00")


def practitioner_code(n: int) -> str:
    return f"D110105{n:06d}"


def write_registry(path: Path, people: int, rng: random.Random) -> None:
    """A snapshot and manifest: everyone registered, ~4 % suspended and ~1 % terminated."""
    rows = []
    for n in range(people):
        code = practitioner_code(n)
        rows.append([code, "1", f"r{n}", "1", "2020-01-01 00:00:00", "", "", "", "1", str(2 * n + 1)])
        draw = rng.random()
        if draw < 0.04:
            window = [format_cst(SERVICE_DAY - 86400 * 30), format_cst(SERVICE_DAY + 86400 * 60), ""]
            rows.append([code, "1", f"b{n}", "2", *window, "累计记分9分,暂停3个月", "1", str(2 * n + 2)])
        elif draw < 0.05:
            window = [format_cst(SERVICE_DAY - 86400 * 90), "", format_cst(SERVICE_DAY + 86400 * 365)]
            rows.append([code, "1", f"b{n}", "3", *window, "记满12分,终止", "1", str(2 * n + 2)])
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(FIELDS)
        writer.writerows(rows)
    manifest = {
        "snapshot_id": "bench",
        "row_count": len(rows),
        "watermark_seq": 2 * people,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "generated_at": format_cst(SERVICE_DAY),
    }
    manifest_path(path).write_text(json.dumps(manifest), encoding="utf-8")


def claim(number: int, people: int, rng: random.Random, items: int = 10) -> pb.CheckClaimRequest:
    doctors = [practitioner_code(rng.randrange(people)) for _ in range(2)]
    nurse = practitioner_code(rng.randrange(people))
    return pb.CheckClaimRequest(
        claim_id=f"bench-{number}",
        fixmedins_code="H11010500001",
        items=[
            pb.LineItem(
                feedetl_sn=str(i),
                fee_ocur_time=format_cst(SERVICE_DAY + 60 * i),
                med_list_codg="001101000010000",
                amount_fen=1000 + i,
                bilg_dr_codg=doctors[i % 2],
                orders_dr_code=nurse if i % 3 == 0 else "",
            )
            for i in range(items)
        ],
    )


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def measure(name: str, call: Callable[[int], object], calls: int, server_pid: int) -> dict[str, float | str | int]:
    for n in range(min(200, calls)):  # warm-up: connections, caches, code paths
        call(n)
    cpu_before = process_tree_cpu_seconds(server_pid)
    latencies = []
    started = time.perf_counter()
    for n in range(calls):
        t0 = time.perf_counter()
        call(n)
        latencies.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - started
    cpu = process_tree_cpu_seconds(server_pid) - cpu_before
    return {
        "rpc": name,
        "calls": calls,
        "calls_per_s_sequential": round(calls / elapsed, 1),
        "p50_ms": round(percentile(latencies, 0.50) * 1000, 3),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 3),
        "mean_ms": round(statistics.fmean(latencies) * 1000, 3),
        "server_cpu_us_per_call": round(cpu / calls * 1e6, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--people", type=int, default=100_000)
    parser.add_argument("--calls", type=int, default=3_000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rng = random.Random(args.seed)

    with tempfile.TemporaryDirectory() as directory:
        redis_server = start_redis(Path(directory))
        server = None
        try:
            # The loader's own path: a registry of D110105000000.. with ~5 % barred, loaded.
            registry = Path(directory) / "registry.csv"
            write_registry(registry, args.people, rng)
            load_snapshot(redis_server.client(), registry)
            listen = f"127.0.0.1:{free_port()}"
            env = {**os.environ, "REDIS_URL": redis_server.url, "GATEKEEPER_LISTEN": listen}
            gatekeeper_bin = str(Path(sys.executable).parent / "gatekeeper")
            server = subprocess.Popen([gatekeeper_bin, "serve"], env=env, stderr=subprocess.PIPE, text=True)
            assert server.stderr is not None
            for line in server.stderr:
                if "health: SERVING" in line:
                    break
            with grpc.insecure_channel(listen) as channel:
                stub = pb_grpc.GatekeeperStub(channel)
                health = health_pb2_grpc.HealthStub(channel)
                claims = [claim(n, args.people, rng) for n in range(args.calls)]
                check = {"name": "CheckClaim (10 items)", "call": lambda n: stub.CheckClaim(claims[n], timeout=5)}
                ping = {
                    "name": "Health.Check (baseline)",
                    "call": lambda n: health.Check(health_pb2.HealthCheckRequest(), timeout=5),
                }
                rows = [measure(str(c["name"]), c["call"], args.calls, server.pid) for c in (ping, check)]  # type: ignore[arg-type]
        finally:
            if server is not None:
                server.terminate()
                server.wait(timeout=30)
            redis_server.stop()

    baseline, checked = rows
    result = {
        **run_header("check_claim", "bench.check_claim"),
        "people": args.people,
        "rows": rows,
        "ratio_p50": round(float(checked["p50_ms"]) / float(baseline["p50_ms"]), 2),
        "ratio_server_cpu": round(
            float(checked["server_cpu_us_per_call"]) / float(baseline["server_cpu_us_per_call"]), 2
        ),
    }
    columns = ("rpc", "calls_per_s_sequential", "p50_ms", "p99_ms", "server_cpu_us_per_call")
    header = ("rpc", "calls/s (one client, sequential)", "p50 ms", "p99 ms", "server CPU µs/call")
    table = markdown_table(header, ([r[c] for c in columns] for r in rows))
    summary = f"CheckClaim / baseline: p50 ×{result['ratio_p50']}, server CPU ×{result['ratio_server_cpu']}\n"
    title = f"# CheckClaim vs the gRPC baseline\n\n`{result['command']}` on {result['machine']}, "
    title += f"{args.people} practitioners in Redis.\n\n"
    publish("check_claim", result, title + table + "\n" + summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
