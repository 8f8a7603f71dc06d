"""Two source trees of the gatekeeper against each other, in one run: serving and loading.

For a refactoring or an optimisation, "before vs after, same run": both trees serve the
same registry from the same private redis-server, in turns (A B, B A, A B …), so a machine whose
speed drifts affects both alike. Per turn:

- serving: ``gatekeeper serve --workers 2`` of the tree, warmed up, then h2load at
  saturation with one pre-encoded 10-item claim; throughput and server CPU per call from
  the server processes' own counters; then the same claim at a fixed rate (``--rate``) and
  its p99 latency;
- loading: ``gatekeeper-loader snapshot`` of the tree on the same snapshot; rows per second
  and the loader's peak RSS.

A private PostgreSQL holds the decision record (``DATABASE_URL``, migrated with this tree's
schema): a tree that records decisions there does so, exactly as in
production; an older tree that does not ignores it.

    python -m bench.compare --baseline /path/to/old/checkout --label layout

Each tree runs with ``PYTHONPATH`` set to it and this environment's packages. Writes
bench/results/compare-<label>.json and .md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import grpc

from bench.harness import commit_of, free_port, in_turns, publish, run_header, start_decision_record
from bench.loading import run_loader
from bench.serving import (
    CLIENTS,
    INSTITUTION,
    STREAMS,
    grpc_frame,
    line_item,
    measured,
    registry_codes,
    start_server,
    wait_until_warmed,
)
from gatekeeper.v1 import gatekeeper_pb2 as pb
from gatekeeper.v1 import gatekeeper_pb2_grpc as pb_grpc
from loader.generate import generate
from tests.servers import RedisServer, start_redis

HERE = Path(__file__).resolve().parents[1]


def command(tree: Path, entry: str) -> list[str]:
    """Run ``entry`` ("gatekeeper.cli" or "loader.cli") of ``tree``."""
    return [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(tree)!r}); from {entry} import main; main()"]


def load(tree: Path, env: dict[str, str], snapshot: Path, redis: RedisServer) -> dict[str, float]:
    """One snapshot load by ``tree``'s loader: rows/s and peak RSS (its parsing processes
    included, as bench.loading measures it)."""
    run = run_loader(
        redis.url, redis.process.pid, "snapshot", str(snapshot), command=command(tree, "loader.cli"), env=env
    )
    rows_per_second = round(run.summary["rows"] / run.seconds)
    return {
        "rows_per_second": rows_per_second,
        "seconds": round(run.seconds, 2),
        "peak_rss_mb": round(run.peak_rss / 2**20),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", type=Path, required=True, help="the other checkout (A); this one is B")
    parser.add_argument("--label", required=True, help="names the results file")
    parser.add_argument("--people", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=6.0, help="each saturation phase")
    parser.add_argument(
        "--rate", type=float, default=1200.0, help="calls/s of the fixed-rate phase after it (p99_ms_at_rate)"
    )
    parser.add_argument(
        "--only", choices=("serving", "loading"), help="measure one of the two (a change that touches only it)"
    )
    args = parser.parse_args()
    kinds = (args.only,) if args.only else ("serving", "loading")
    if "serving" in kinds and shutil.which("h2load") is None:
        print("bench: h2load is missing (apt-get install nghttp2-client, or run scripts/bench)", file=sys.stderr)
        return 2
    trees = {"baseline": args.baseline.resolve(), "this": HERE}
    runs: dict[str, dict[str, list[dict[str, float]]]] = {name: {"serving": [], "loading": []} for name in trees}
    with tempfile.TemporaryDirectory(prefix="gk-compare-") as directory:
        work = Path(directory)
        (work / "redis").mkdir()
        registry = generate(work, args.people, seed=5, changes=10)
        redis_server = start_redis(work / "redis")
        postgres, database_url = start_decision_record()
        try:
            port = free_port()
            target = f"127.0.0.1:{port}"
            env = {**os.environ, "REDIS_URL": redis_server.url, "GATEKEEPER_LISTEN": target}
            env["GATEKEEPER_AUDIT_SPOOL_DIR"] = str(work / "spool")
            env.pop("PYTHONPATH", None)
            env["DATABASE_URL"] = database_url
            # Three practitioners never suspended or terminated: an all-clear claim, as bench.serving's.
            codes = sorted(registry_codes(registry.snapshot)[1])[:3]
            fixed = pb.CheckClaimRequest(
                claim_id="fixed",
                fixmedins_code=INSTITUTION,
                med_type="11",
                items=[line_item(n, codes, False, n) for n in range(10)],
            )
            body = work / "claim.grpc"
            body.write_bytes(grpc_frame(fixed.SerializeToString()))
            for round_number in range(args.rounds):
                for name, tree in in_turns(trees, round_number):
                    if "loading" in kinds:
                        runs[name]["loading"].append(load(tree, env, registry.snapshot, redis_server))
                        print(f"round {round_number + 1} {name}: {runs[name]['loading'][-1]}")
                    if "serving" not in kinds:
                        continue
                    server = start_server(
                        f"{name} gatekeeper",
                        [*command(tree, "gatekeeper.cli"), "serve", "--workers", "2"],
                        env,
                        "health: SERVING",
                        2,
                    )
                    # A tree that warms its near caches is measured once they are warm; one
                    # that does not is given the same time to settle.
                    wait_until_warmed(server, 2, seconds=20, required=False)
                    try:
                        with grpc.insecure_channel(target) as channel:
                            expected = pb_grpc.GatekeeperStub(channel).CheckClaim(fixed, timeout=10).verdict
                        warm = dict(seconds=2, clients=2, streams=8, rps=None, work=work)
                        measured(server, port, body, fixed, expected, **warm)  # type: ignore[arg-type]
                        result = measured(
                            server, port, body, fixed, expected, args.seconds, CLIENTS, STREAMS, None, work
                        )
                        steady = measured(
                            server, port, body, fixed, expected, args.seconds, CLIENTS, STREAMS, args.rate, work
                        )
                    finally:
                        server.stop()
                    runs[name]["serving"].append(
                        {
                            "rps": result.achieved_rps,
                            "cpu_us_per_call": result.cpu_us_per_call or 0.0,
                            "p99_ms_at_rate": steady.p99_ms or 0.0,
                        }
                    )
                    print(f"round {round_number + 1} {name}: {runs[name]['serving'][-1]}")
        finally:
            redis_server.stop()
            postgres.stop()

    def median(name: str, kind: str, figure: str) -> float:
        # Of an even number of turns: the mean of the middle two, to the figures' own precision.
        return round(statistics.median(run[figure] for run in runs[name][kind]), 3)

    summary = {
        figure: {
            "baseline": median("baseline", kind, figure),
            "this": median("this", kind, figure),
            "this/baseline": round(median("this", kind, figure) / median("baseline", kind, figure), 3),
        }
        for kind, figures in (
            ("serving", ("rps", "cpu_us_per_call", "p99_ms_at_rate")),
            ("loading", ("rows_per_second", "peak_rss_mb")),
        )
        if kind in kinds
        for figure in figures
    }
    results: dict[str, Any] = {
        **run_header("compare", "bench.compare"),
        "baseline": str(trees["baseline"]),
        "commits": {name: commit_of(tree) for name, tree in trees.items()},
        "people": args.people,
        "rounds": args.rounds,
        "medians": summary,
        "runs": runs,
    }
    lines = [f"# {args.label}: this tree vs the baseline, same run (medians of {args.rounds} turns each)", ""]
    lines += ["| figure | baseline | this | this/baseline |", "|---|---|---|---|"]
    lines += [f"| {k} | {v['baseline']:,} | {v['this']:,} | {v['this/baseline']} |" for k, v in summary.items()]
    commits = results["commits"]
    lines += ["", f"`{results['command']}` on {results['machine']}, {args.people:,} practitioners."]
    lines += ["", f"The baseline at commit {commits['baseline']}, this tree at commit {commits['this']}."]
    publish(f"compare-{args.label}", results, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
