"""The gatekeeper on the hot path, against the gRPC stack's own cost, in one run.

Generates a registry (default 1 million practitioners, ~5 % suspended or terminated),
loads it into a private redis-server, then measures, each server on the same port in turn:

- the ceiling server (bench/ceiling.py: same proto, constant response) and the gatekeeper
  with 2 workers: throughput at saturation, latency at fixed offered rates, and server CPU
  time per call from the server processes' own counters (robust on a noisy machine);
- the gatekeeper with 1 worker at saturation (how it scales with workers);
- a realistic mix through a Python client (Zipf-distributed practitioners, outpatient claims
  of ~10 items with 1-3 practitioners, some inpatient claims of a few hundred items, a few
  emergency items) while the loader applies changes: near-cache hit ratio after warm-up
  and change -> enforced latency at every worker (from the workers' own counters);
- the CheckClaims batch API: line-item checks per second.

Load comes from h2load (nghttp2-client: C, pre-encoded gRPC frames) for the saturation and
fixed-rate phases. h2load sees HTTP status only, so a Python client samples each phase and
checks every sampled response's grpc-status and verdict.

    scripts/bench            # installs h2load and the bench extras, then runs this

Writes bench/results/serving.json, serving.md and serving.png.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import csv
import itertools
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import redis
from grpc import aio
from prometheus_client.parser import text_string_to_metric_families

from bench.harness import (
    RESULTS,
    free_port,
    process_tree_cpu_seconds,
    publish,
    run_header,
    start_decision_record,
    start_redis,
)
from gatekeeper.core.cst import format_cst, parse_cst
from gatekeeper.v1 import gatekeeper_pb2 as pb
from gatekeeper.v1 import gatekeeper_pb2_grpc as pb_grpc
from loader.cache import ApplyStats, ChangeApplier
from loader.generate import generate
from loader.rows import encode_change

BIN = Path(sys.executable).parent
CHECK_CLAIM = "/gatekeeper.v1.Gatekeeper/CheckClaim"
CHECK_CLAIMS = "/gatekeeper.v1.Gatekeeper/CheckClaims"
SERVICE_DAY = parse_cst("2026-11-20 08:00:00")
INSTITUTION = "H11010500001"
# h2load's shape in the saturation and fixed-rate phases: 16 connections of 8 streams each.
# A gatekeeper refuses streams beyond --max-streams-per-connection (32): h2load opens its
# streams without waiting for the server's settings, so at 32 a share of them were refused
# (counted as failed, and the CPU they cost charged to the calls that succeeded), where a
# gRPC client queues them. The ceiling has no such limit.
CLIENTS, STREAMS = 16, 8


# --- the claim mix --------------------------------------------------------------------------


class Practitioners:
    """Registry codes drawn with a Zipf law: a few bill all day, most rarely."""

    def __init__(self, codes: list[str], exponent: float, rng: random.Random) -> None:
        self.codes = codes[:]
        rng.shuffle(self.codes)  # rank is not tied to region or type
        weights = [1 / rank**exponent for rank in range(1, len(self.codes) + 1)]
        self._cumulative = list(itertools.accumulate(weights))
        self._rng = rng

    def draw(self) -> str:
        point = self._rng.random() * self._cumulative[-1]
        return self.codes[bisect.bisect_left(self._cumulative, point)]


def registry_codes(snapshot: Path) -> tuple[list[str], set[str]]:
    """Every code of a snapshot, sorted, and those never suspended or terminated (a claim of
    theirs is all clear, like the ceiling's answer)."""
    with snapshot.open(newline="", encoding="utf-8") as rows:
        registry = list(csv.DictReader(rows))
    barred = {row["prac_psn_code"] for row in registry if row["status"] != "1"}
    codes = sorted({row["prac_psn_code"] for row in registry})
    return codes, set(codes) - barred


def line_item(number: int, practitioners: list[str], emergency: bool, minutes: int) -> pb.LineItem:
    return pb.LineItem(
        feedetl_sn=str(number),
        fee_ocur_time=format_cst(SERVICE_DAY + 60 * minutes),
        med_list_codg="001101000010000",
        amount_fen=1_000 + number,
        bilg_dr_codg=practitioners[number % len(practitioners)],
        orders_dr_code=practitioners[-1] if number % 3 == 0 and len(practitioners) > 1 else "",
        emergency=emergency,
    )


def realistic_claim(number: int, people: Practitioners, rng: random.Random) -> pb.CheckClaimRequest:
    """~98 % outpatient (about 10 items, 1-3 practitioners), ~2 % inpatient (a few hundred)."""
    inpatient = rng.random() < 0.02
    items = rng.randint(150, 400) if inpatient else rng.randint(6, 14)
    practitioners = [people.draw() for _ in range(rng.randint(2, 4) if inpatient else rng.randint(1, 3))]
    return pb.CheckClaimRequest(
        claim_id=f"bench-{number}",
        fixmedins_code=INSTITUTION,
        med_type="21" if inpatient else "11",
        items=[line_item(n, practitioners, rng.random() < 0.01, n) for n in range(items)],
    )


def grpc_frame(message: bytes) -> bytes:
    """One length-prefixed gRPC message (uncompressed)."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


# --- servers --------------------------------------------------------------------------------


@dataclass
class Server:
    """A server under test: its processes and its captured log."""

    name: str
    process: subprocess.Popen[str]
    log: list[str] = field(default_factory=list)

    def cpu(self) -> float:
        """CPU seconds of the server and its workers so far."""
        return process_tree_cpu_seconds(self.process.pid)

    def signal_workers(self, signum: int) -> None:
        self.process.send_signal(signum)

    def stop(self) -> list[str]:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=60)
        return self.log


def start_server(
    name: str, command: list[str], env: dict[str, str], ready: str, count: int, timeout: float = 180.0
) -> Server:
    """Start a server and wait until ``count`` log lines contain ``ready``; a server that
    exits first, or is not ready within ``timeout`` seconds (it is then stopped), fails the run."""
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    server = Server(name, process)
    started = threading.Event()

    def drain() -> None:  # the whole log, for as long as the server writes it
        assert process.stderr is not None
        seen = 0
        for line in process.stderr:
            server.log.append(line)
            if ready in line:
                seen += 1
                if seen == count:
                    started.set()
        started.set()  # the server exited: the check below tells which

    threading.Thread(target=drain, daemon=True).start()
    if not started.wait(timeout) or process.poll() is not None:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=60)
        raise RuntimeError(f"{name} did not start within {timeout:.0f} s:\n{''.join(server.log)}")
    return server


# --- load -----------------------------------------------------------------------------------


@dataclass
class LoadResult:
    offered_rps: float | None
    achieved_rps: float
    succeeded: int
    failed: int
    seconds: float
    p50_ms: float | None = None
    p99_ms: float | None = None
    p999_ms: float | None = None
    cpu_us_per_call: float | None = None


def h2load(
    port: int,
    body: Path,
    seconds: float,
    clients: int,
    streams: int,
    rps: float | None,
    log: Path,
    path: str = CHECK_CLAIM,
) -> LoadResult:
    """Drive a method (CheckClaim by default) with h2load; latency percentiles from its per-request log."""
    # h2load takes whole seconds ("8", not "8.0").
    command = ["h2load", "-c", str(clients), "-m", str(streams), "-D", str(round(seconds)), "--data", str(body)]
    command += ["-H", "content-type: application/grpc", "-H", "te: trailers", "--log-file", str(log)]
    if rps is not None:
        command += ["--rps", f"{rps / clients:.2f}"]
    command.append(f"http://127.0.0.1:{port}{path}")
    finished = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
    output = finished.stdout
    done = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed", output)
    if done is None:
        raise RuntimeError(f"h2load output not understood:\n{output}\n{finished.stderr}")
    succeeded, failed = int(done.group(4)), int(done.group(5))
    latencies = sorted(int(line.split("\t")[2]) / 1000 for line in log.read_text().splitlines() if line)
    log.unlink()

    def at(fraction: float) -> float | None:
        return round(latencies[min(len(latencies) - 1, int(fraction * len(latencies)))], 3) if latencies else None

    return LoadResult(rps, round(succeeded / seconds, 1), succeeded, failed, seconds, at(0.5), at(0.99), at(0.999))


@dataclass
class GcPauses:
    """The garbage collector's passes in a server's workers (``gatekeeper_gc_pause_seconds``)."""

    passes: float = 0.0
    seconds: float = 0.0
    # passes at most ``le`` seconds long, by bucket bound (cumulative, as Prometheus counts them)
    within: dict[float, float] = field(default_factory=dict)

    @classmethod
    def scrape(cls, ports: list[int]) -> GcPauses:
        pauses = cls()
        for port in ports:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
                text = answer.read().decode()
            for family in text_string_to_metric_families(text):
                if family.name != "gatekeeper_gc_pause_seconds":
                    continue
                for sample in family.samples:
                    if sample.name.endswith("_count"):
                        pauses.passes += sample.value
                    elif sample.name.endswith("_sum"):
                        pauses.seconds += sample.value
                    elif sample.name.endswith("_bucket") and sample.labels["le"] != "+Inf":
                        bound = float(sample.labels["le"])
                        pauses.within[bound] = pauses.within.get(bound, 0.0) + sample.value
        return pauses

    def since(self, before: GcPauses) -> dict[str, Any]:
        """What happened between ``before`` and this scrape, for the results."""
        passes = self.passes - before.passes
        within = {bound: count - before.within.get(bound, 0.0) for bound, count in self.within.items()}
        longest = min((bound for bound, count in within.items() if count >= passes), default=None)
        return {
            "passes": int(passes),
            "total_ms": round((self.seconds - before.seconds) * 1000, 1),
            "over_5ms": int(passes - within.get(0.005, 0.0)),
            "longest_at_most_ms": None if longest is None else longest * 1000,
        }


def sample_statuses(target: str, request: pb.CheckClaimRequest, stop: threading.Event, expected: int) -> list[str]:
    """Call CheckClaim now and then while h2load runs; describe any response that is wrong."""
    problems = []
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.GatekeeperStub(channel)
        while not stop.wait(0.05):
            try:
                response = stub.CheckClaim(request, timeout=10)
                if response.verdict != expected:
                    problems.append(f"verdict {response.verdict}, expected {expected}")
            except grpc.RpcError as error:
                problems.append(f"grpc-status {error.code().name}: {error.details()}")
    return problems


def measured(
    server: Server,
    port: int,
    body: Path,
    request: pb.CheckClaimRequest,
    expected: int,
    seconds: float,
    clients: int,
    streams: int,
    rps: float | None,
    work: Path,
) -> LoadResult:
    """One h2load phase with server CPU accounting and grpc-status sampling."""
    stop = threading.Event()
    problems: list[str] = []
    sampler = threading.Thread(
        target=lambda: problems.extend(sample_statuses(f"127.0.0.1:{port}", request, stop, expected))
    )
    cpu_before = server.cpu()
    sampler.start()
    result = h2load(port, body, seconds, clients, streams, rps, work / "h2load.log")
    stop.set()
    sampler.join()
    cpu = server.cpu() - cpu_before
    if problems:
        raise RuntimeError(f"{server.name}: wrong responses while under load: {problems[:5]}")
    result.cpu_us_per_call = round(cpu / max(result.succeeded, 1) * 1e6, 1)
    return result


async def realistic_load(
    target: str, claims: Iterator[bytes], seconds: float, rate: float
) -> tuple[int, dict[str, int]]:
    """Send realistic claims at a fixed rate over several connections (so that every worker
    gets some: the kernel spreads connections, not calls); (OK, errors by status code)."""
    ok = 0
    errors: dict[str, int] = {}
    channels = [aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) for _ in range(8)]
    calls = [channel.unary_unary(CHECK_CLAIM) for channel in channels]
    try:
        loop = asyncio.get_running_loop()
        start = loop.time()
        pending: set[asyncio.Task[Any]] = set()
        for number in itertools.count():
            when = start + number / rate
            if when - start > seconds:
                break
            delay = when - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)

            async def one(call: Any, body: bytes) -> None:
                nonlocal ok
                try:
                    await call(body, timeout=10)
                    ok += 1
                except aio.AioRpcError as error:
                    errors[error.code().name] = errors.get(error.code().name, 0) + 1

            task = asyncio.create_task(one(calls[number % len(calls)], next(claims)))
            pending.add(task)
            task.add_done_callback(pending.discard)
        await asyncio.gather(*pending)
    finally:
        for channel in channels:
            await channel.close()
    return ok, errors


def near_cache_lines(log: list[str], after: int) -> list[dict[str, float]]:
    """The near-cache counters each worker logged (after line ``after``)."""
    pattern = re.compile(
        r"near cache: hits=(\d+) misses=(\d+) invalidations=(\d+) clears=(\d+) "
        r"notification_lag_ms p50=([\d.]+) p99=([\d.]+) max=([\d.]+) n=(\d+)"
    )
    found = []
    for line in log[after:]:
        match = pattern.search(line)
        if match:
            hits, misses, invalidations, clears, p50, p99, most, count = match.groups()
            found.append(
                {
                    "hits": int(hits),
                    "misses": int(misses),
                    "invalidations": int(invalidations),
                    "clears": int(clears),
                    "lag_p50_ms": float(p50),
                    "lag_p99_ms": float(p99),
                    "lag_max_ms": float(most),
                    "lag_count": int(count),
                }
            )
    return found


def wait_for_lines(server: Server, after: int, count: int) -> list[dict[str, float]]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        lines = near_cache_lines(server.log, after)
        if len(lines) >= count:
            return lines
        time.sleep(0.05)
    raise RuntimeError("the workers did not log their near-cache counters")


def wait_until_warmed(server: Server, workers: int, seconds: float = 300, required: bool = True) -> None:
    """Wait until every worker has warmed its near cache from the snapshot (it reads the
    whole registry once at start): measuring meanwhile would count that read as serving.
    With ``required`` False, a tree that does not warm is waited for ``seconds`` only."""
    deadline = time.monotonic() + seconds
    while sum("near cache: warmed" in line for line in server.log) < workers:
        if time.monotonic() > deadline:
            if not required:
                return
            raise RuntimeError("the workers did not warm their near caches")
        time.sleep(0.1)


def suspensions(people: Practitioners, first_seq: int, count: int, rng: random.Random) -> Iterator[dict[str, Any]]:
    """New suspensions of practitioners who bill (their items must start being blocked)."""
    for n in range(count):
        yield {
            "prac_psn_code": people.draw(),
            "prac_psn_type": "1",
            "chg_id": f"BENCH{first_seq + n}",
            "status": "2",
            "begntime": "2026-11-01 00:00:00",
            "endtime": "2027-02-01 00:00:00",
            "ban_endtime": "",
            "chg_rea": "基准测试: 记分9分",
            "vali_flag": "1",
            "seq": first_seq + n,
        }


# --- the run --------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--people", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each measured phase")
    parser.add_argument("--zipf", type=float, default=1.1, help="exponent of the practitioners' Zipf law")
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()
    if shutil.which("h2load") is None:
        print("bench: h2load is missing (apt-get install nghttp2-client, or run scripts/bench)", file=sys.stderr)
        return 2
    rng = random.Random(args.seed)
    results: dict[str, Any] = {
        **run_header("serving", "bench.serving"),
        "people": args.people,
    }

    with tempfile.TemporaryDirectory(prefix="gk-serving-") as directory:
        work = Path(directory)
        (work / "redis").mkdir()
        registry = generate(work, args.people, seed=args.seed, changes=10)
        redis_server = start_redis(work / "redis")
        record, database_url = start_decision_record()  # the record is on, as in production
        servers: list[Server] = []
        try:
            env = {**os.environ, "REDIS_URL": redis_server.url, "DATABASE_URL": database_url}
            env["GATEKEEPER_AUDIT_SPOOL_DIR"] = str(work / "spool")
            subprocess.run(
                [str(BIN / "gatekeeper-loader"), "snapshot", str(registry.snapshot)],
                env=env,
                check=True,
                capture_output=True,
                timeout=600,
            )
            codes, never_barred = registry_codes(registry.snapshot)
            people = Practitioners(codes, args.zipf, rng)

            # One fixed, typical 10-item claim for h2load: three practitioners who bill often
            # and were never suspended or terminated, so that the claim is all clear, like the
            # ceiling's answer (a claim with blocked items carries more work and more bytes).
            typical = [code for code in people.codes if code in never_barred][:3]
            fixed = pb.CheckClaimRequest(
                claim_id="fixed",
                fixmedins_code=INSTITUTION,
                med_type="11",
                items=[line_item(n, typical, False, n) for n in range(10)],
            )
            body = work / "claim.grpc"
            body.write_bytes(grpc_frame(fixed.SerializeToString()))
            port = free_port()
            target = f"127.0.0.1:{port}"
            env["GATEKEEPER_LISTEN"] = target

            metrics_port = free_port()  # worker i serves its metrics on this port + i

            def gatekeeper(workers: int) -> Server:
                command = [str(BIN / "gatekeeper"), "serve", "--workers", str(workers)]
                command += ["--metrics-listen", f"127.0.0.1:{metrics_port}"]
                return start_server(f"gatekeeper ({workers} workers)", command, env, "health: SERVING", workers)

            ceiling = start_server(
                "ceiling (2 workers)",
                [sys.executable, "-m", "bench.ceiling", "--listen", target, "--workers", "2"],
                env,
                "listening on port",
                2,
            )
            servers.append(ceiling)
            saturation = dict(seconds=args.seconds, clients=CLIENTS, streams=STREAMS, rps=None, work=work)
            measured(
                ceiling, port, body, fixed, pb.CLAIM_VERDICT_ALLOW, seconds=2, clients=2, streams=8, rps=None, work=work
            )  # warm-up
            ceiling_saturated = measured(ceiling, port, body, fixed, pb.CLAIM_VERDICT_ALLOW, **saturation)
            rates = [round(ceiling_saturated.achieved_rps * share) for share in (0.2, 0.35, 0.5, 0.65, 0.8)]
            ceiling_curve = [
                measured(
                    ceiling,
                    port,
                    body,
                    fixed,
                    pb.CLAIM_VERDICT_ALLOW,
                    seconds=args.seconds,
                    clients=CLIENTS,
                    streams=STREAMS,
                    rps=rate,
                    work=work,
                )
                for rate in rates
            ]
            ceiling.stop()
            servers.remove(ceiling)

            reference = pb_grpc.GatekeeperStub(grpc.insecure_channel(target))
            curves: dict[str, Any] = {}
            batch = batch_request(people, rng)
            for workers in (1, 2):
                server = gatekeeper(workers)
                servers.append(server)
                wait_until_warmed(server, workers)
                expected = reference.CheckClaim(fixed, timeout=10).verdict
                if expected != pb.CLAIM_VERDICT_ALLOW:
                    raise RuntimeError(f"the fixed claim is not all clear: {pb.ClaimVerdict.Name(expected)}")
                measured(server, port, body, fixed, expected, seconds=2, clients=2, streams=8, rps=None, work=work)
                worker_metrics = [metrics_port + i for i in range(workers)]
                gc_before = GcPauses.scrape(worker_metrics)
                saturated = measured(server, port, body, fixed, expected, **saturation)
                curve = []
                if workers == 2:
                    results["gc_pauses"] = {"saturation": GcPauses.scrape(worker_metrics).since(gc_before)}
                    gc_before = GcPauses.scrape(worker_metrics)
                    curve = [
                        measured(
                            server,
                            port,
                            body,
                            fixed,
                            expected,
                            seconds=args.seconds,
                            clients=CLIENTS,
                            streams=STREAMS,
                            rps=rate,
                            work=work,
                        )
                        for rate in rates
                    ]
                if workers == 2:
                    results["gc_pauses"]["fixed_rates"] = GcPauses.scrape(worker_metrics).since(gc_before)
                curves[f"gatekeeper_{workers}"] = (saturated, curve)
                if workers == 1:
                    # One worker leaves the other core to the database, Redis and h2load: the
                    # server's cost per item with the least contention this machine allows.
                    results["batch_1_worker"] = batch_phase(server, port, batch, work)
                if workers == 2:
                    results.update(realistic_phase(server, target, people, rng, args, redis_server.url))
                    results["batch"] = batch_phase(server, port, batch, work)
                    # The decision record shares these two cores: say if it fell behind (its
                    # writer spools to disk then, in the workers, and that is counted).
                    results["record_warnings"] = [line for line in server.log if "audit:" in line][:10]
                server.stop()
                servers.remove(server)
        finally:
            for server in servers:
                server.process.kill()
            redis_server.stop()
            record.stop()

    one, _ = curves["gatekeeper_1"]
    two, two_curve = curves["gatekeeper_2"]
    middle = len(rates) // 2  # the 50 % point
    results["servers"] = {
        "ceiling_2_workers": {"saturation": vars(ceiling_saturated), "curve": [vars(r) for r in ceiling_curve]},
        "gatekeeper_2_workers": {"saturation": vars(two), "curve": [vars(r) for r in two_curve]},
        "gatekeeper_1_worker": {"saturation": vars(one)},
    }
    results["ratios"] = {
        "cpu_per_claim_vs_ceiling": round(two.cpu_us_per_call / ceiling_saturated.cpu_us_per_call, 2),  # type: ignore[operator]
        "throughput_vs_ceiling": round(two.achieved_rps / ceiling_saturated.achieved_rps, 2),
        "two_workers_vs_one": round(two.achieved_rps / one.achieved_rps, 2),
        "p99_at_50pct_vs_ceiling": round(two_curve[middle].p99_ms / ceiling_curve[middle].p99_ms, 2),  # type: ignore[operator]
    }
    write_results(results, ceiling_curve, two_curve)
    return 0


def realistic_phase(
    server: Server, target: str, people: Practitioners, rng: random.Random, args: argparse.Namespace, redis_url: str
) -> dict[str, Any]:
    """Zipf mix at a modest fixed rate while the loader applies suspensions."""
    # Drawn afresh for every call: the Zipf tail keeps bringing practitioners a worker has not
    # seen yet, as real traffic does, rather than a fixed pool that warm-up would exhaust.
    claims = (realistic_claim(n, people, rng).SerializeToString() for n in itertools.count())
    rate = 800.0
    asyncio.run(realistic_load(target, claims, seconds=20, rate=rate))  # warm-up
    mark = len(server.log)
    server.signal_workers(signal.SIGUSR1)  # counters restart after the warm-up
    wait_for_lines(server, mark, 2)
    changes = list(suspensions(people, 900_000_000, 200, rng))
    applier_client = redis.Redis.from_url(redis_url)

    def apply_changes_meanwhile() -> None:
        # 20 publications of 10 suspensions, one every 0.4 s, while claims keep coming.
        applier = ChangeApplier(applier_client)
        for batch in range(20):
            time.sleep(0.4)
            rows = [encode_change(change) for change in changes[batch * 10 : batch * 10 + 10]]
            applier.apply(rows, ApplyStats())

    applier = threading.Thread(target=apply_changes_meanwhile)
    applier.start()
    ok, errors = asyncio.run(realistic_load(target, claims, seconds=max(args.seconds, 10), rate=rate))
    applier.join()
    applier_client.close()
    mark = len(server.log)
    server.signal_workers(signal.SIGUSR1)
    workers = wait_for_lines(server, mark, 2)
    hits = sum(w["hits"] for w in workers)
    misses = sum(w["misses"] for w in workers)
    return {
        "realistic_mix": {
            "offered_rps": rate,
            "answered_ok": ok,
            "errors_by_status": errors,
            "zipf_exponent": args.zipf,
            "near_cache_hit_ratio": round(hits / max(hits + misses, 1), 4),
            "hits": hits,
            "misses": misses,
            "changes_applied": len(changes),
            "change_to_enforced_ms_p99_worst_worker": max(w["lag_p99_ms"] for w in workers),
            "change_to_enforced_ms_max": max(w["lag_max_ms"] for w in workers),
            "per_worker": workers,
        }
    }


def batch_request(people: Practitioners, rng: random.Random) -> pb.CheckClaimsRequest:
    """The batch API's benchmark call: 500 ten-item claims of 1–3 practitioners of the mix."""
    claims = []
    for n in range(500):
        practitioners = [people.draw() for _ in range(rng.randint(1, 3))]
        items = [line_item(i, practitioners, False, i) for i in range(10)]
        claims.append(pb.CheckClaimRequest(claim_id=f"b-{n}", fixmedins_code=INSTITUTION, items=items))
    return pb.CheckClaimsRequest(claims=claims)


def batch_phase(server: Server, port: int, request: pb.CheckClaimsRequest, work: Path) -> dict[str, Any]:
    """CheckClaims with ``request``, driven by h2load with the batch pre-encoded (a client
    that does not compete for the server's cores with Python); the server's own CPU per line
    item from its processes' counters. One call made with a Python client first checks that
    every claim of the batch gets a decision, not an error."""
    payload = request.SerializeToString()
    body = work / "batch.grpc"
    body.write_bytes(grpc_frame(payload))
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary("/gatekeeper.v1.Gatekeeper/CheckClaims")
        answer = pb.CheckClaimsResponse.FromString(call(payload, timeout=60))
    if not all(r.WhichOneof("result") == "response" for r in answer.results):
        raise RuntimeError("CheckClaims answered a claim of the benchmark batch with an error")
    items_per_call = sum(len(c.items) for c in request.claims)
    h2load(port, body, 2, 2, 2, None, work / "h2load-batch.log", path=CHECK_CLAIMS)  # warm-up
    saturated = _batch_load(server, port, body, items_per_call, None, work)
    # And at half the saturated rate, where the decision record's database (sharing these two
    # cores) keeps up: says whether spooling at saturation inflated the CPU per item.
    at_rate = _batch_load(server, port, body, items_per_call, max(1.0, saturated["calls_per_s"] / 2), work)
    return {
        "claims_per_call": len(request.claims),
        "items_per_claim": 10,
        "client": "h2load, 2 connections x 2 streams, pre-encoded batch",
        "calls": saturated["calls"],
        "line_item_checks_per_s": saturated["line_item_checks_per_s"],
        "server_cpu_us_per_item": saturated["server_cpu_us_per_item"],
        "seconds": saturated["seconds"],
        "at_half_rate": at_rate,
    }


def _batch_load(
    server: Server, port: int, body: Path, items_per_call: int, calls_per_s: float | None, work: Path
) -> dict[str, Any]:
    """One h2load phase of the batch: calls and line items per second, and the server's CPU per item."""
    cpu_before = server.cpu()
    result = h2load(port, body, 8, 2, 2, calls_per_s, work / "h2load-batch.log", path=CHECK_CLAIMS)
    cpu = server.cpu() - cpu_before
    if result.failed:
        raise RuntimeError(f"CheckClaims: {result.failed} calls failed under h2load")
    checks = result.succeeded * items_per_call
    return {
        "offered_calls_per_s": calls_per_s,
        "calls": result.succeeded,
        "calls_per_s": result.achieved_rps,
        "line_item_checks_per_s": round(checks / result.seconds),
        "server_cpu_us_per_item": round(cpu / max(checks, 1) * 1e6, 2),
        "seconds": result.seconds,
    }


def write_results(results: dict[str, Any], ceiling: list[LoadResult], gatekeeper: list[LoadResult]) -> None:
    servers = results["servers"]
    ratios = results["ratios"]
    mix = results["realistic_mix"]
    batch = results["batch"]
    half = batch["at_half_rate"]
    one_worker = results["batch_1_worker"]
    rows = ["| | ceiling (2 workers) | gatekeeper (2 workers) | gatekeeper (1 worker) |", "|---|---|---|---|"]
    sat = {name: servers[name]["saturation"] for name in servers}
    names = ("ceiling_2_workers", "gatekeeper_2_workers", "gatekeeper_1_worker")
    rows.append(
        "| throughput at saturation (calls/s) | " + " | ".join(str(sat[n]["achieved_rps"]) for n in names) + " |"
    )
    rows.append("| server CPU per call (µs) | " + " | ".join(str(sat[n]["cpu_us_per_call"]) for n in names) + " |")
    rows.append("| failed calls at saturation | " + " | ".join(str(sat[n]["failed"]) for n in names) + " |")
    for c, g in zip(ceiling, gatekeeper, strict=True):
        rows.append(
            f"| p50 / p99 / p99.9 ms at {c.offered_rps:.0f} calls/s | {c.p50_ms} / {c.p99_ms} / {c.p999_ms} | "
            f"{g.p50_ms} / {g.p99_ms} / {g.p999_ms} | |"
        )
    lines = [
        "# Serving benchmark",
        "",
        f"`{results['command']}` on {results['machine']}; {results['people']:,} "
        "practitioners. Saturation and latency: h2load, one typical 10-item claim; the mix: Zipf.",
        "",
        *rows,
        "",
        "| target | measured |",
        "|---|---|",
        f"| server CPU per claim ≤ 1.25 × ceiling | {ratios['cpu_per_claim_vs_ceiling']} × |",
        f"| throughput ≥ 0.8 × ceiling | {ratios['throughput_vs_ceiling']} × |",
        f"| 2 workers ≥ 1.5 × 1 worker | {ratios['two_workers_vs_one']} × |",
        f"| p99 at 50 % of ceiling saturation ≤ 1.5 × ceiling's | {ratios['p99_at_50pct_vs_ceiling']} × |",
        f"| near-cache hit ratio ≥ 98 % (Zipf {mix['zipf_exponent']}, after warm-up) | "
        f"{mix['near_cache_hit_ratio']:.2%} |",
        f"| batch API ≥ 250,000 line-item checks/s, 2 workers | {batch['line_item_checks_per_s']:,} at saturation, "
        f"{batch['server_cpu_us_per_item']} µs of server CPU per item, so "
        f"{2e6 / batch['server_cpu_us_per_item']:,.0f} per second of two cores (at {half['calls_per_s']} "
        f"calls/s: {half['server_cpu_us_per_item']} µs per item) |",
        f"| the same, 1 worker (a core left to the database, Redis and h2load) | "
        f"{one_worker['line_item_checks_per_s']:,} at saturation, {one_worker['server_cpu_us_per_item']} µs per "
        f"item, so {2e6 / one_worker['server_cpu_us_per_item']:,.0f} per second of two cores |",
        f"| change → enforced at every worker, p99 ≤ 1 s | {mix['change_to_enforced_ms_p99_worst_worker']} ms "
        f"(max {mix['change_to_enforced_ms_max']} ms) |",
    ]
    if results["record_warnings"]:
        count = len(results["record_warnings"])
        lines += ["", f"The decision record fell behind ({count} warning(s) logged): see the JSON."]
    gc = results["gc_pauses"]
    lines += [
        "",
        "Garbage-collector passes in the gatekeeper's two workers (`gatekeeper_gc_pause_seconds`): "
        + "; ".join(
            f"{phase.replace('_', ' ')}: {g['passes']:,} passes, {g['total_ms']} ms in all, "
            f"{g['over_5ms']} over 5 ms, the longest ≤ {g['longest_at_most_ms']} ms"
            for phase, g in gc.items()
        )
        + ".",
    ]
    publish("serving", results, "\n".join(lines))
    plot(ceiling, gatekeeper)


def plot(ceiling: list[LoadResult], gatekeeper: list[LoadResult]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("bench: matplotlib is missing; no plot (pip install -e '.[bench]')", file=sys.stderr)
        return
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for name, curve, colour in (("ceiling", ceiling, "tab:grey"), ("gatekeeper", gatekeeper, "tab:blue")):
        rates = [r.achieved_rps for r in curve]
        axes.plot(rates, [r.p50_ms for r in curve], "o--", color=colour, label=f"{name} p50")
        axes.plot(rates, [r.p99_ms for r in curve], "s-", color=colour, label=f"{name} p99")
    axes.set_xlabel("throughput (calls/s)")
    axes.set_ylabel("latency (ms)")
    axes.set_title("CheckClaim latency against throughput (2 workers, 2 cores)")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(RESULTS / "serving.png", dpi=110)


if __name__ == "__main__":
    sys.exit(main())
