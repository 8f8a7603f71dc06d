"""What taking a decision for the record costs the worker, before any I/O.

An RPC hands its decision to ``AuditLog.record`` and answers; the writer task forms batches
in the background. This measures the CPU of both per decision, with a store that takes each
batch without I/O (writing is bench.audit_driver's subject), with decisions arriving one per
turn of the event loop (as RPCs at a modest rate hand them over) and eight per turn (a busy
worker). The baseline, in the same run: the same loop turns taking no decision, subtracted.
With ``--baseline CHECKOUT`` the same measurement also runs against another checkout's
writer, in turns with this one's (A B, B A, …).

    python -m bench.audit_taking [--baseline /path/to/other/checkout]

Writes bench/results/audit-taking.json and .md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DECISIONS = 300_000
PER_TURN = (1, 8)
HERE = Path(__file__).resolve().parent.parent


class Discarding:
    """A record store that takes every batch at once."""

    def __init__(self) -> None:
        self.decisions = 0

    async def write(self, batch: object) -> bool:
        self.decisions += len(batch.entries)  # type: ignore[attr-defined]
        return True

    async def reachable(self) -> bool:
        return True

    async def close(self) -> None:
        pass


async def cpu_per_decision(per_turn: int) -> float:
    """µs of CPU per decision: record() and the writer, less the bare loop turns."""
    from gatekeeper.audit.spool import Spool
    from gatekeeper.audit.writer import AuditLog
    from gatekeeper.core.policy import RegionPolicy
    from gatekeeper.core.rules import Claim, Item, decide_claim

    items = tuple(Item(str(n), 1_763_604_000, 1234, ("D410102000002",), False) for n in range(10))
    claim = Claim("c", "H41130200746", items)
    decision = decide_claim(claim, {}, RegionPolicy())
    turns = DECISIONS // per_turn
    with tempfile.TemporaryDirectory() as directory:
        store = Discarding()
        log = AuditLog(store, Spool(Path(directory)))  # type: ignore[arg-type]
        log.start()
        await asyncio.sleep(0.05)  # the writer looked for orphaned spools and waits
        started = time.process_time()
        for _ in range(turns):
            await asyncio.sleep(0)
        bare = time.process_time() - started
        started = time.process_time()
        for _ in range(turns):
            for _ in range(per_turn):
                log.record("0" * 32, claim, decision, "snap@1", time.time())
            await asyncio.sleep(0)
        await log.close()
        spent = time.process_time() - started - bare
        assert store.decisions == turns * per_turn, store.decisions
    return spent / (turns * per_turn) * 1e6


def measure_here() -> dict[int, float]:
    import uvloop  # the workers' loop

    return {per_turn: uvloop.run(cpu_per_decision(per_turn)) for per_turn in PER_TURN}


def measure_in(tree: Path) -> dict[int, float]:
    """The same measurement in a child process importing ``tree``'s gatekeeper package."""
    code = (
        f"import sys, json, runpy; sys.path.insert(0, {str(tree)!r}); "
        f"print(json.dumps(runpy.run_path({__file__!r})['measure_here']()))"
    )
    finished = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=600)
    return {int(k): v for k, v in json.loads(finished.stdout.splitlines()[-1]).items()}


def main() -> int:
    from bench.harness import commit_of, in_turns, markdown_table, publish, run_header

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", type=Path, help="another checkout, measured in turns with this one")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    trees = {"this": HERE} | ({"baseline": args.baseline.resolve()} if args.baseline else {})
    turns: dict[str, dict[int, list[float]]] = {name: {n: [] for n in PER_TURN} for name in trees}
    for round_number in range(args.rounds):
        for name, tree in in_turns(trees, round_number):
            for per_turn, value in measure_in(tree).items():
                turns[name][per_turn].append(value)
    medians = {name: {n: round(statistics.median(v), 2) for n, v in by.items()} for name, by in turns.items()}
    commits = {name: commit_of(tree) for name, tree in trees.items()}
    results = {
        **run_header("audit-taking", "bench.audit_taking"),
        "decisions": DECISIONS,
        "trees": {name: str(tree) for name, tree in trees.items()},
        "commits": commits,
        "cpu_us_per_decision": medians,
        "turns": turns,
    }
    header = ["decisions per loop turn", *(f"{name} (µs per decision)" for name in trees)]
    rows = [[str(n), *(f"{medians[name][n]:.2f}" for name in trees)] for n in PER_TURN]
    markdown = "\n".join(
        [
            f"# Taking a decision for the record: worker CPU per decision, median of {args.rounds} turns",
            "",
            markdown_table(header, rows),
            f"`{results['command']}` on {results['machine']}; {DECISIONS:,} decisions a turn, a store "
            "that takes each batch without I/O, the bare loop turns subtracted. Trees: "
            + ", ".join(f"{name} at commit {commits[name]}" for name in trees)
            + ".",
        ]
    )
    publish("audit-taking", results, markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
