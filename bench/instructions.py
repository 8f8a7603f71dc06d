"""Instructions per CheckClaim under callgrind: the gatekeeper against the gRPC stack alone.

Timings on a shared 2-core machine move by ±20 % between runs; the instructions a server
executes per call do not. Each server runs twice under valgrind's callgrind, answering
``--calls`` calls (h2load, 4 connections of 8 streams) in one run and ``--calls`` + 500 in the
other, so that (I₂ − I₁) / 500 is its instructions per call with start-up and shutdown
cancelled out. The servers:

- ``ceiling``: bench/ceiling.py's servicer as bench.serving runs it (grpc.aio on asyncio, a
  unary method, a constant all-clear answer);
- ``transport``: the same servicer with the gatekeeper's transport: uvloop, the method served
  client-streaming with the request read in the handler (api/admission.py), the connection
  options (server.connection_options) and registered method handlers; with ``--each``, each
  of these four alone as well;
- ``gatekeeper``: ``gatekeeper serve --workers 1``, its near cache warmed and the decision
  record on (a private redis-server and PostgreSQL), answering one all-clear 10-item claim.

    python -m bench.instructions [--people 20000] [--each]   # needs valgrind

Writes bench/results/instructions.json and .md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import grpc
from grpc import aio

from bench.ceiling import constant_response
from bench.harness import free_port, markdown_table, publish, run_header, start_decision_record, start_redis
from bench.serving import INSTITUTION, grpc_frame, line_item, registry_codes
from gatekeeper.server import connection_options
from gatekeeper.settings import Settings
from gatekeeper.v1 import gatekeeper_pb2 as pb
from loader.generate import generate

BIN = Path(sys.executable).parent
SERVICE = "gatekeeper.v1.Gatekeeper"
EXTRA_CALLS = 500  # the second run's calls beyond the first's
# What the gatekeeper's transport adds to the ceiling's, one switch each (--variant).
TRANSPORT = ("uvloop", "streaming", "options", "registered")


# --- the ceiling's servicer on a chosen transport (run under valgrind by this module) ---------


async def _serve_variant(port: int, variant: frozenset[str], stop_file: Path) -> None:
    answer = constant_response()

    async def unary(request: pb.CheckClaimRequest, context: aio.ServicerContext[Any, Any]) -> pb.CheckClaimResponse:
        return answer

    async def streaming(requests: Any, context: aio.ServicerContext[Any, Any]) -> pb.CheckClaimResponse:
        await context.read()
        return answer

    options: list[tuple[str, int]] = [("grpc.so_reuseport", 0)]
    if "options" in variant:
        options += connection_options(Settings())  # the defaults a gatekeeper serves with
    server = aio.server(options=options)
    parse, serialize = pb.CheckClaimRequest.FromString, pb.CheckClaimResponse.SerializeToString
    if "streaming" in variant:
        handler = grpc.stream_unary_rpc_method_handler(streaming, parse, serialize)
    else:
        handler = grpc.unary_unary_rpc_method_handler(unary, parse, serialize)
    handlers = {"CheckClaim": handler}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    if "registered" in variant:
        server.add_registered_method_handlers(SERVICE, handlers)  # type: ignore[attr-defined]
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("ready", flush=True)
    while not stop_file.exists():  # a file, not a signal: valgrind must see the process end by itself
        await asyncio.sleep(0.2)
    await server.stop(0)


def serve_variant(port: int, variant: frozenset[str], stop_file: Path) -> None:
    if "uvloop" in variant:
        import uvloop

        uvloop.run(_serve_variant(port, variant, stop_file))
    else:
        asyncio.run(_serve_variant(port, variant, stop_file))


# --- measuring ------------------------------------------------------------------------------


def h2load_calls(port: int, body: Path, calls: int) -> None:
    command = ["h2load", "-n", str(calls), "-c", "4", "-m", "8", "--data", str(body)]
    command += ["-H", "content-type: application/grpc", "-H", "te: trailers"]
    finished = subprocess.run(
        [*command, f"http://127.0.0.1:{port}/{SERVICE}/CheckClaim"], capture_output=True, text=True, timeout=900
    )
    if f"{calls} succeeded" not in finished.stdout:
        raise RuntimeError(f"h2load did not get {calls} answers:\n{finished.stdout}\n{finished.stderr}")


def instructions(outs: list[Path]) -> int:
    """The total instructions callgrind counted in one run, over its processes."""
    total = 0
    for out in outs:
        totals = [line for line in out.read_text().splitlines() if line.startswith(("summary:", "totals:"))]
        if not totals:
            raise RuntimeError(f"{out}: no totals")
        total += int(totals[0].split()[1])
    return total


def run_once(
    command: list[str],
    env: Mapping[str, str],
    ready: str,
    stop: Callable[[subprocess.Popen[str]], None],
    port: int,
    body: Path,
    calls: int,
    work: Path,
) -> int:
    """Instructions of one run of ``command`` under callgrind, answering ``calls`` calls."""
    # One file per process (%p): a forked process writes its own.
    valgrind = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={work}/callgrind.out.%p", *command]
    process = subprocess.Popen(valgrind, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert process.stdout is not None
    for line in process.stdout:
        if ready in line:
            break
    else:
        raise RuntimeError(f"{command[:3]} did not start under valgrind")
    h2load_calls(port, body, calls)
    time.sleep(0.5)  # let the last answers' bookkeeping (the decision record) finish
    stop(process)
    process.communicate(timeout=600)
    outs = sorted(work.glob("callgrind.out.*"))
    count = instructions(outs)
    for out in outs:
        out.unlink()
    return count


def per_call(measure: Callable[[int], int], calls: int) -> int:
    return round((measure(calls + EXTRA_CALLS) - measure(calls)) / EXTRA_CALLS)


def variant_instructions(variant: frozenset[str], env: Mapping[str, str], body: Path, calls: int, work: Path) -> int:
    """Instructions per call of the ceiling's servicer on ``variant`` of the transport."""
    port, stop_file = free_port(), work / "stop"
    command = [sys.executable, "-m", "bench.instructions", "--serve", str(port)]
    command += ["--variant", ",".join(sorted(variant)), "--stop-file", str(stop_file)]

    def measure(count: int) -> int:
        stop_file.unlink(missing_ok=True)
        return run_once(command, env, "ready", lambda _process: stop_file.touch(), port, body, count, work)

    return per_call(measure, calls)


def typical_claim(snapshot: Path) -> pb.CheckClaimRequest:
    """A 10-item claim of three practitioners never suspended or terminated: all clear."""
    _, never_barred = registry_codes(snapshot)
    chosen = random.Random(3).sample(sorted(never_barred), 3)
    items = [line_item(n, chosen, False, n) for n in range(10)]
    return pb.CheckClaimRequest(claim_id="fixed", fixmedins_code=INSTITUTION, med_type="11", items=items)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--people", type=int, default=20_000)
    parser.add_argument("--calls", type=int, default=100, help="calls of the shorter run")
    parser.add_argument("--each", action="store_true", help="also each transport switch alone")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)  # the variant server, run under valgrind
    parser.add_argument("--variant", default="", help=argparse.SUPPRESS)
    parser.add_argument("--stop-file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        serve_variant(args.serve, frozenset(args.variant.split(",")) - {""}, args.stop_file)
        return 0
    for tool in ("valgrind", "h2load"):
        if shutil.which(tool) is None:
            print(f"bench: {tool} is missing (apt-get install valgrind nghttp2-client)", file=sys.stderr)
            return 2

    variants = {"ceiling": frozenset(), "transport": frozenset(TRANSPORT)}
    if args.each:
        variants.update({f"ceiling + {switch}": frozenset({switch}) for switch in TRANSPORT})
    figures: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="gk-instructions-") as directory:
        work = Path(directory)
        (work / "redis").mkdir()
        registry = generate(work, args.people, seed=3, changes=1)
        body = work / "claim.grpc"
        body.write_bytes(grpc_frame(typical_claim(registry.snapshot).SerializeToString()))
        env = dict(os.environ)

        for name, variant in variants.items():
            figures[name] = variant_instructions(variant, env, body, args.calls, work)
            print(f"{name}: {figures[name]:,} instructions per call", flush=True)

        redis_server = start_redis(work / "redis")
        record, database_url = start_decision_record()
        try:
            env.update(REDIS_URL=redis_server.url, DATABASE_URL=database_url)
            env["GATEKEEPER_AUDIT_SPOOL_DIR"] = str(work / "spool")
            loader = [str(BIN / "gatekeeper-loader"), "snapshot", str(registry.snapshot)]
            subprocess.run(loader, env=env, check=True, capture_output=True, timeout=600)
            port = free_port()
            env["GATEKEEPER_LISTEN"] = f"127.0.0.1:{port}"

            def measure_gatekeeper(calls: int) -> int:
                command = [str(BIN / "gatekeeper"), "serve", "--workers", "1", "--log-format", "text"]
                return run_once(
                    command, env, "near cache: warmed", lambda p: p.send_signal(signal.SIGTERM), port, body, calls, work
                )

            figures["gatekeeper"] = per_call(measure_gatekeeper, args.calls)
            print(f"gatekeeper: {figures['gatekeeper']:,} instructions per call", flush=True)
        finally:
            redis_server.stop()
            record.stop()

    ceiling = figures["ceiling"]
    results = {
        **run_header("instructions", "bench.instructions"),
        "people": args.people,
        "instructions_per_call": figures,
        "gatekeeper_vs_ceiling": round(figures["gatekeeper"] / ceiling, 2),
    }
    rows = [(name, f"{count:,}", f"{count / ceiling:.2f} ×") for name, count in figures.items()]
    markdown = "\n".join(
        [
            "# Instructions per CheckClaim (callgrind)",
            "",
            f"`{results['command']}` on {results['machine']}: instructions per call, from two runs of "
            f"each server {EXTRA_CALLS} calls apart.",
            "",
            markdown_table(("server", "instructions per call", "against the ceiling"), rows),
        ]
    )
    publish("instructions", results, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
