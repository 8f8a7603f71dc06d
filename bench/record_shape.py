"""What the decision record's shape costs the database: a row per line item (the record as it
is, gatekeeper/audit/migrations) against a row per decision holding its items, with a row per
practitioner it names for retroactive review (a candidate, not a schema the product has).

The same batches (500 decisions of 10 items naming three practitioners, one item in three with
an executing one) go through the writer's one-JSON-document statement into each shape, in
turns, in one private PostgreSQL. Reported: the database backend's CPU per decision, median
of the turns, and the bytes each shape holds per decision (tables and indexes).

    python -m bench.record_shape

Writes bench/results/record-shape.json and record-shape.md.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from datetime import timedelta

import psycopg

from bench.harness import cpu_seconds, publish, run_header, start_decision_record
from gatekeeper.audit.database import partition_statements
from gatekeeper.audit.records import Batch, Entry, encode
from gatekeeper.audit.writer import _NAMES, _WRITE_ENTRIES, cst_day
from gatekeeper.core.policy import RegionPolicy
from gatekeeper.core.rules import Claim, Item, decide_claim

DECISIONS, ITEMS = 500, 10
PRACTITIONERS = ("D410102000002", "D410102000003", "D410102000004")

# The candidate: a decision's items kept as the JSON arrays the writer sends, and for review
# one row per practitioner a decision names, with the service times of its items.
PER_DECISION_SCHEMA = """
CREATE TABLE decisions_with_items (
    decided_at timestamptz NOT NULL, decision_id text NOT NULL, claim_id text NOT NULL,
    fixmedins_code text NOT NULL, registry_version text NOT NULL, verdict text NOT NULL,
    enforced boolean NOT NULL, allowed_amount_fen bigint NOT NULL, blocked_amount_fen bigint NOT NULL,
    batch_id text NOT NULL, items jsonb NOT NULL, item_decisions jsonb NOT NULL,
    PRIMARY KEY (decision_id, decided_at)
) PARTITION BY RANGE (decided_at);
CREATE INDEX decisions_with_items_claim ON decisions_with_items (claim_id);
CREATE TABLE decision_practitioners (
    prac_psn_code text NOT NULL, first_fee_ocur_time timestamptz NOT NULL,
    last_fee_ocur_time timestamptz NOT NULL, decided_at timestamptz NOT NULL, decision_id text NOT NULL
) PARTITION BY RANGE (decided_at);
CREATE INDEX decision_practitioners_by_time ON decision_practitioners (prac_psn_code, last_fee_ocur_time);
"""
PER_DECISION_TABLES = ("decisions_with_items", "decision_practitioners")
PER_ITEM_TABLES = ("decisions", "decision_items")
WRITE_PER_DECISION = """
WITH entries AS (
    SELECT e->>0 AS decision_id, e->1 AS claim, e->2 AS decision, e->>3 AS registry_version,
           'epoch'::timestamptz + (e->>4)::bigint * interval '1 millisecond' AS decided_at
    FROM jsonb_array_elements(%(entries)s::jsonb) AS e
), decided AS (
    INSERT INTO decisions_with_items
    SELECT decided_at, decision_id, claim->>0, claim->>1, registry_version,
           (%(claim_verdicts)s::text[])[(decision->>0)::int], (decision->>4)::boolean,
           (decision->>2)::bigint, (decision->>3)::bigint, %(batch_id)s, claim->2, decision->1
    FROM entries
)
INSERT INTO decision_practitioners
SELECT code, to_timestamp(min((item->>1)::bigint)), to_timestamp(max((item->>1)::bigint)), decided_at, decision_id
FROM entries, jsonb_array_elements(claim->2) AS item, jsonb_array_elements_text(item->3) AS code
WHERE code <> ''
GROUP BY decision_id, decided_at, code
"""
STATEMENTS = {"a row per line item (the record)": _WRITE_ENTRIES, "a row per decision (candidate)": WRITE_PER_DECISION}
TABLES = dict(zip(STATEMENTS, (PER_ITEM_TABLES, PER_DECISION_TABLES), strict=True))


def batch(now: float) -> Batch:
    when = int(now) - 3600
    items = tuple(
        Item(str(n), when + n, 1234, PRACTITIONERS[n % 3 : n % 3 + (2 if n % 3 == 0 else 1)], False)
        for n in range(ITEMS)
    )
    claims = [Claim(f"c{n}", "H41130200746", items) for n in range(DECISIONS)]
    decision = decide_claim(claims[0], {}, RegionPolicy())
    entries = (Entry(uuid.uuid4().hex, c, decision, "snap@7", int(now * 1000)) for c in claims)
    return Batch(uuid.uuid4().hex, tuple(entries))


async def write(connection: psycopg.AsyncConnection, statement: str, b: Batch) -> None:
    async with connection.transaction():
        await connection.execute("INSERT INTO audit_batches (batch_id) VALUES (%s)", [b.batch_id])
        await connection.execute(statement, {"entries": encode(b.entries).decode(), "batch_id": b.batch_id, **_NAMES})


async def run(url: str, batches: int, rounds: int) -> dict[str, list[float]]:
    database_cpu: dict[str, list[float]] = {name: [] for name in STATEMENTS}
    connection = await psycopg.AsyncConnection.connect(url, autocommit=True)
    pid = connection.info.backend_pid
    now = time.time()
    for _ in range(rounds):
        for name, statement in STATEMENTS.items():
            prepared = [batch(now) for _ in range(batches)]  # built outside the measured time
            await write(connection, statement, prepared.pop())
            started = cpu_seconds(pid)
            for b in prepared:
                await write(connection, statement, b)
            database_cpu[name].append((cpu_seconds(pid) - started) / (len(prepared) * DECISIONS) * 1e6)
    await connection.close()
    return database_cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=30, help="batches per shape per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    server, url = start_decision_record()
    try:
        with psycopg.connect(url, autocommit=True) as connection:
            day = cst_day(time.time())
            for statement in partition_statements(day):
                connection.execute(statement)
            connection.execute(PER_DECISION_SCHEMA)
            since, until = day - timedelta(days=1), day + timedelta(days=2)
            for table in PER_DECISION_TABLES:
                connection.execute(
                    f"CREATE TABLE {table}_now PARTITION OF {table} FOR VALUES FROM ('{since}') TO ('{until}')"
                )
        database_cpu = asyncio.run(run(url, args.batches, args.rounds))
        with psycopg.connect(url, autocommit=True) as connection:
            recorded = connection.execute("SELECT count(*) FROM decisions").fetchone()
            sizes = {
                name: connection.execute(
                    "SELECT sum(pg_total_relation_size(inhrelid)) FROM pg_inherits"
                    " WHERE inhparent = ANY(%s::regclass[])",
                    [list(tables)],
                ).fetchone()
                for name, tables in TABLES.items()
            }
    finally:
        server.stop()
    decisions = int(recorded[0]) if recorded else 0
    medians = {name: round(statistics.median(values), 1) for name, values in database_cpu.items()}
    per_decision = {
        name: round(int(size[0]) / decisions) if size and decisions else None for name, size in sizes.items()
    }
    results = {
        **run_header("record-shape", "bench.record_shape"),
        "decisions_per_batch": DECISIONS,
        "items_per_decision": ITEMS,
        "database_cpu_us_per_decision_median": medians,
        "database_cpu_us_per_decision": {name: [round(v, 1) for v in values] for name, values in database_cpu.items()},
        "bytes_per_decision": per_decision,
    }
    lines = [
        f"# The decision record's shape: database CPU per decision ({ITEMS} items), median of {args.rounds} turns",
        "",
        "| shape | database µs per decision | bytes per decision (tables and indexes) |",
        "|---|---|---|",
        *(f"| {name} | {value} | {per_decision[name]} |" for name, value in medians.items()),
        "",
        f"`{results['command']}` on {results['machine']}; {args.batches} batches of {DECISIONS} per shape per turn,"
        f" {decisions} decisions in each shape at the end.",
    ]
    publish("record-shape", results, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
