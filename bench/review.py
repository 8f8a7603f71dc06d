"""Retroactive review on a year's scale: one practitioner's recorded items looked up by index
over at least 10 million recorded items, as review does for every change that reaches into
the past.

Fills a private PostgreSQL's decision record with ``--items`` items spread over ``--days``
daily partitions (server-side, with generate_series: ~20 items a claim, practitioners drawn
from ``--practitioners`` codes, a third of the items with an executing practitioner too),
then times ``items_of_practitioner`` (the two index scans review runs) for random
practitioners, over the whole record and, as continuous review does for a window that began
weeks ago, from 30 days back only (partitions of older days pruned), and shows the plan.

    python -m bench.review                     # 10 M items
    python -m bench.review --items 1000000     # quicker

Writes bench/results/review.json and review.md.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from datetime import date, timedelta

import psycopg

from bench.harness import publish, run_header
from gatekeeper.audit.database import migrate, partition_statements
from gatekeeper.audit.records import moment
from gatekeeper.audit.review import items_of_practitioner
from gatekeeper.core.cst import parse_cst
from tests.servers import start_postgres


def code(n: int) -> str:
    return f"D4101020{n:05d}"


def fill(connection: psycopg.Connection, items: int, days: int, practitioners: int) -> float:
    """Insert ``items`` items over ``days`` partitions; returns seconds taken."""
    first = date(2026, 1, 1)
    started = time.monotonic()
    per_day = items // days
    for offset in range(days):
        day = first + timedelta(days=offset)
        for statement in partition_statements(day):
            connection.execute(statement)
        connection.execute(
            """
            INSERT INTO decision_items
            SELECT %(day)s::timestamptz + (n %% 86400) * interval '1 second',
                   'd' || %(offset)s || '-' || (n / 20), n %% 20, 'H41130200746', 'c' || (n / 20), (n %% 20)::text,
                   %(day)s::timestamptz + (n %% 86400) * interval '1 second' - interval '1 hour',
                   100 + n %% 1000, n %% 50 = 0,
                   'D4101020' || lpad((((n + %(base)s)::bigint * 7919) %% %(practitioners)s)::text, 5, '0'),
                   CASE WHEN n %% 3 = 0 THEN 'N4101020'
                        || lpad((((n + %(base)s)::bigint * 104729) %% %(practitioners)s)::text, 5, '0') END,
                   CASE WHEN n %% 40 = 0 THEN 'BLOCK' ELSE 'ALLOW' END,
                   CASE WHEN n %% 40 = 0 THEN 'SUSPENDED' ELSE 'OK' END,
                   '', true
            FROM generate_series(1, %(count)s) AS n
            """,
            {
                "day": f"{day:%Y-%m-%d} 00:00:00+08",
                "offset": offset,
                "base": offset * per_day,
                "practitioners": practitioners,
                "count": per_day,
            },
        )
    connection.execute("ANALYZE decision_items")
    return time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=10_000_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--practitioners", type=int, default=50_000)
    parser.add_argument("--lookups", type=int, default=200)
    args = parser.parse_args()
    server = start_postgres()
    try:
        with psycopg.connect(server.url(), autocommit=True) as connection:
            connection.execute("CREATE DATABASE review")
        with psycopg.connect(server.url("review"), autocommit=True) as connection:
            migrate(connection)
            fill_seconds = fill(connection, args.items, args.days, args.practitioners)
            total = connection.execute("SELECT count(*) FROM decision_items").fetchone()
            size = connection.execute("SELECT pg_size_pretty(pg_database_size('review'))").fetchone()
            rng = random.Random(7)
            last_day = date(2026, 1, 1) + timedelta(days=args.days)
            recent = parse_cst(f"{last_day - timedelta(days=30):%Y-%m-%d} 00:00:00")
            timings: dict[str, list[float]] = {"whole record": [], "last 30 days": []}
            found: dict[str, list[int]] = {"whole record": [], "last 30 days": []}
            for _ in range(args.lookups):
                practitioner = code(rng.randrange(args.practitioners))
                for name, since in (("whole record", None), ("last 30 days", recent)):
                    started = time.perf_counter()
                    rows = items_of_practitioner(connection, practitioner, since)
                    timings[name].append((time.perf_counter() - started) * 1000)
                    found[name].append(len(rows))
            plan = [
                row[0]
                for row in connection.execute(
                    "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) SELECT * FROM decision_items"
                    " WHERE bilg_dr_codg = %s AND fee_ocur_time >= %s AND decided_at >= %s"
                    " UNION ALL SELECT * FROM decision_items"
                    " WHERE orders_dr_code = %s AND fee_ocur_time >= %s AND decided_at >= %s",
                    [code(42), moment(recent), moment(recent - 86_400)] * 2,
                ).fetchall()
            ]
    finally:
        server.stop()

    def percentiles(values: list[float]) -> dict[str, float]:
        ordered = sorted(values)
        return {
            "p50": round(ordered[len(ordered) // 2], 2),
            "p99": round(ordered[int(len(ordered) * 0.99)], 2),
            "max": round(ordered[-1], 2),
        }

    results = {
        **run_header("review", "bench.review"),
        "items": int(total[0]) if total else 0,
        "days": args.days,
        "practitioners": args.practitioners,
        "database_size": size[0] if size else "",
        "fill_seconds": round(fill_seconds, 1),
        "lookups": args.lookups,
        "items_found_median": {name: statistics.median(values) for name, values in found.items()},
        "lookup_ms": {name: percentiles(values) for name, values in timings.items()},
        "plan_last_30_days": plan,
    }
    lines = [
        f"# Review of one practitioner over {results['items']:,} recorded items",
        "",
        f"{args.days} daily partitions, {args.practitioners:,} practitioners, database {results['database_size']}.",
        "",
        "| items of one practitioner | items found (median) | p50 ms | p99 ms | max ms |",
        "|---|---|---|---|---|",
        *(
            "| {} | {} | {p50} | {p99} | {max} |".format(name, results["items_found_median"][name], **ms)
            for name, ms in results["lookup_ms"].items()
        ),
        "",
        "Plan, last 30 days (one practitioner; older partitions pruned):",
        "",
        "```",
        *plan[:24],
        "```",
        "",
        f"`{results['command']}` on {results['machine']}; {args.lookups} practitioners drawn at random.",
    ]
    publish("review", results, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
