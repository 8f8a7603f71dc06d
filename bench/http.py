"""What the JSON-over-HTTP door costs against gRPC: the same claim, the same server, one run.

Starts a private redis-server and PostgreSQL (the decision record), writes and loads a
synthetic registry, starts ``gatekeeper serve --workers 1`` with both doors, then measures
the same 10-item claim through each:

- one client, sequential calls (Python: grpc's stub; http.client on one keep-alive
  connection): latency and server CPU per call; every answer is checked;
- saturation with h2load: gRPC over HTTP/2 (pre-encoded frame, ``-c 4 -m 8``) and HTTP/1.1
  (``--h1 -c 32``: one request at a time per connection, so the same 32 in flight):
  throughput, latency and server CPU per call, from the server process's own counters.

    .venv/bin/python -m bench.http [--people 100000] [--calls 3000] [--seconds 8]

Writes bench/results/http.json and http.md. Needs h2load (scripts/bench installs it).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
from google.protobuf import json_format

from bench.check_claim import claim, percentile, write_registry
from bench.harness import (
    free_port,
    markdown_table,
    process_tree_cpu_seconds,
    publish,
    run_header,
    start_decision_record,
    start_redis,
)
from gatekeeper.v1 import gatekeeper_pb2 as pb
from gatekeeper.v1 import gatekeeper_pb2_grpc as pb_grpc
from loader.snapshot import load_snapshot

BIN = Path(sys.executable).parent


def start_gatekeeper(env: dict[str, str]) -> subprocess.Popen[str]:
    server = subprocess.Popen(
        [str(BIN / "gatekeeper"), "serve", "--workers", "1"], env=env, stderr=subprocess.PIPE, text=True
    )
    assert server.stderr is not None
    for line in server.stderr:
        if "health: SERVING" in line:
            break
    else:
        raise RuntimeError("the gatekeeper stopped before it was SERVING")
    # Keep reading its log, so that a full pipe never stalls it.
    threading.Thread(target=lambda: server.stderr and server.stderr.read(), daemon=True).start()
    return server


def sequential(name: str, call: Callable[[], object], calls: int, server_pid: int) -> dict[str, float | str | int]:
    for _ in range(min(200, calls)):  # warm-up: connections, caches, code paths
        call()
    cpu_before = process_tree_cpu_seconds(server_pid)
    latencies = []
    started = time.perf_counter()
    for _ in range(calls):
        t0 = time.perf_counter()
        call()
        latencies.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - started
    cpu = process_tree_cpu_seconds(server_pid) - cpu_before
    return {
        "door": name,
        "client": "one client, sequential",
        "calls": calls,
        "calls_per_s": round(calls / elapsed, 1),
        "p50_ms": round(percentile(latencies, 0.50) * 1000, 3),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 3),
        "server_cpu_us_per_call": round(cpu / calls * 1e6, 1),
    }


def h2load(
    name: str, url: str, body: Path, headers: list[str], shape: list[str], seconds: int, server_pid: int, log: Path
) -> dict[str, float | str | int]:
    command = ["h2load", *shape, "-D", str(seconds), "--data", str(body), "--log-file", str(log)]
    for header in headers:
        command += ["-H", header]
    cpu_before = process_tree_cpu_seconds(server_pid)
    finished = subprocess.run([*command, url], capture_output=True, text=True, timeout=seconds + 60)
    cpu = process_tree_cpu_seconds(server_pid) - cpu_before
    done = re.search(
        r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed", finished.stdout
    )
    if done is None:
        raise RuntimeError(f"h2load output not understood:\n{finished.stdout}\n{finished.stderr}")
    succeeded, failed = int(done.group(4)), int(done.group(5))
    if failed:
        raise RuntimeError(f"{name}: {failed} requests failed under h2load")
    latencies = sorted(int(line.split("\t")[2]) / 1000 for line in log.read_text().splitlines() if line)
    log.unlink()
    return {
        "door": name,
        "client": "h2load " + " ".join(shape),
        "calls": succeeded,
        "calls_per_s": round(succeeded / seconds, 1),
        "p50_ms": round(percentile(latencies, 0.50), 3) if latencies else 0.0,
        "p99_ms": round(percentile(latencies, 0.99), 3) if latencies else 0.0,
        "server_cpu_us_per_call": round(cpu / max(succeeded, 1) * 1e6, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--people", type=int, default=100_000)
    parser.add_argument("--calls", type=int, default=3_000)
    parser.add_argument("--seconds", type=int, default=8, help="each h2load phase")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    if shutil.which("h2load") is None:
        print("bench.http: h2load is missing (apt-get install nghttp2-client, or run scripts/bench)", file=sys.stderr)
        return 2
    rng = random.Random(args.seed)

    with tempfile.TemporaryDirectory() as directory:
        work = Path(directory)
        redis_server = start_redis(work)
        postgres, database_url = start_decision_record()
        server = None
        try:
            registry = work / "registry.csv"
            write_registry(registry, args.people, rng)
            load_snapshot(redis_server.client(), registry)
            listen, http_listen = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
            env = {
                **os.environ,
                "REDIS_URL": redis_server.url,
                "DATABASE_URL": database_url,
                "GATEKEEPER_LISTEN": listen,
                "GATEKEEPER_HTTP_LISTEN": http_listen,
                "GATEKEEPER_AUDIT_SPOOL_DIR": str(work / "spool"),
            }
            server = start_gatekeeper(env)

            request = claim(0, args.people, rng)
            message = request.SerializeToString()
            document = json.dumps(json_format.MessageToDict(request, preserving_proto_field_name=True)).encode()
            (work / "claim.grpc").write_bytes(b"\x00" + len(message).to_bytes(4, "big") + message)
            (work / "claim.json").write_bytes(document)

            with grpc.insecure_channel(listen) as channel:
                stub = pb_grpc.GatekeeperStub(channel)
                expected = stub.CheckClaim(request, timeout=5).verdict
                expected_name = pb.ClaimVerdict.Name(expected)
                connection = http.client.HTTPConnection(*http_listen.split(":"), timeout=5)

                def over_grpc() -> None:
                    if stub.CheckClaim(request, timeout=5).verdict != expected:
                        raise RuntimeError("gRPC: a different verdict")

                def over_http() -> None:
                    connection.request("POST", "/v1/claims:check", document, {"Content-Type": "application/json"})
                    answer = connection.getresponse()
                    body = json.loads(answer.read())
                    if answer.status != 200 or body["verdict"] != expected_name:
                        raise RuntimeError(f"HTTP: {answer.status} {body}")

                rows = [
                    sequential("gRPC", over_grpc, args.calls, server.pid),
                    sequential("JSON over HTTP", over_http, args.calls, server.pid),
                ]
                connection.close()
            grpc_headers = ["content-type: application/grpc", "te: trailers"]
            rows.append(
                h2load(
                    "gRPC",
                    f"http://{listen}/gatekeeper.v1.Gatekeeper/CheckClaim",
                    work / "claim.grpc",
                    grpc_headers,
                    ["-c", "4", "-m", "8"],
                    args.seconds,
                    server.pid,
                    work / "h2load.log",
                )
            )
            rows.append(
                h2load(
                    "JSON over HTTP",
                    f"http://{http_listen}/v1/claims:check",
                    work / "claim.json",
                    ["content-type: application/json"],
                    ["--h1", "-c", "32"],
                    args.seconds,
                    server.pid,
                    work / "h2load.log",
                )
            )
        finally:
            if server is not None:
                server.terminate()
                server.wait(timeout=30)
            redis_server.stop()
            postgres.stop()

    def ratio(client: str, column: str) -> float:
        grpc_row, http_row = [r for r in rows if str(r["client"]).startswith(client)]
        return round(float(http_row[column]) / float(grpc_row[column]), 2)

    ratios = {
        "sequential_p50": ratio("one client", "p50_ms"),
        "sequential_server_cpu": ratio("one client", "server_cpu_us_per_call"),
        "saturation_throughput": ratio("h2load", "calls_per_s"),
        "saturation_server_cpu": ratio("h2load", "server_cpu_us_per_call"),
    }
    result = {
        **run_header("http", "bench.http"),
        "people": args.people,
        "rows": rows,
        "http_over_grpc": ratios,
    }
    columns = ("door", "client", "calls_per_s", "p50_ms", "p99_ms", "server_cpu_us_per_call")
    header = ("door", "client", "calls/s", "p50 ms", "p99 ms", "server CPU µs/call")
    table = markdown_table(header, ([r[c] for c in columns] for r in rows))
    summary = (
        f"JSON over HTTP / gRPC: sequential p50 ×{ratios['sequential_p50']}, server CPU "
        f"×{ratios['sequential_server_cpu']}; at saturation throughput ×{ratios['saturation_throughput']}, "
        f"server CPU ×{ratios['saturation_server_cpu']}\n"
    )
    title = f"# JSON over HTTP vs gRPC, the same 10-item claim\n\n`{result['command']}` on {result['machine']}, "
    title += f"{args.people} practitioners in Redis, 1 worker with both doors, decisions recorded in PostgreSQL.\n\n"
    publish("http", result, title + table + "\n" + summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
