"""How the decision record is written with the least CPU in the worker.

The same batches (500 decisions of 10 items, as the writer forms them: ``records.Entry``
objects) are written, in turns, by: the writer (gatekeeper/audit/writer.py: the batch's
entries as one JSON document, expanded into rows by the database in one statement), and
the writer before it: rows built in Python and sent by binary COPY, with psycopg 3 and with
asyncpg. Each batch is one transaction with the batch id inserted first. CPU per decision
is the writing process's own and, separately, the database backend's (on another machine
in production; here it shares the cores).

    python -m bench.audit_driver            # needs asyncpg: pip install asyncpg (the bench extra)

Writes bench/results/audit-driver.json and audit-driver.md.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
import psycopg

from bench.harness import cpu_seconds, publish, run_header, start_decision_record
from gatekeeper.audit.database import partition_statements
from gatekeeper.audit.records import Batch, Entry
from gatekeeper.audit.writer import PostgresRecordStore, cst_day
from gatekeeper.core.policy import RegionPolicy
from gatekeeper.core.rules import Claim, Item, decide_claim

DECISIONS, ITEMS = 500, 10
DECISION_COLUMNS = (
    *("decided_at", "decision_id", "claim_id", "fixmedins_code", "registry_version", "verdict", "enforced"),
    *("allowed_amount_fen", "blocked_amount_fen", "batch_id"),
)
ITEM_COLUMNS = (
    *("decided_at", "decision_id", "item_index", "fixmedins_code", "claim_id", "feedetl_sn", "fee_ocur_time"),
    *("amount_fen", "emergency", "bilg_dr_codg", "orders_dr_code", "verdict", "reason", "prac_psn_code", "enforced"),
)
DECISION_TYPES = ("timestamptz", "text", "text", "text", "text", "text", "bool", "int8", "int8", "text")
ITEM_TYPES = (
    *("timestamptz", "text", "int4", "text", "text", "text", "timestamptz", "int8", "bool"),
    *("text", "text", "text", "text", "text", "bool"),
)


def batch(now: float) -> Batch:
    when = int(now) - 3600
    items = tuple(Item(str(n), when, 1234, ("D410102000002",), False) for n in range(ITEMS))
    claims = [Claim(f"c{n}", "H41130200746", items) for n in range(DECISIONS)]
    decision = decide_claim(claims[0], {}, RegionPolicy())
    entries = (Entry(uuid.uuid4().hex, c, decision, "snap@7", int(now * 1000)) for c in claims)
    return Batch(uuid.uuid4().hex, tuple(entries))


def rows_of(b: Batch) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The rows of a batch, built in Python (the writer before this one)."""
    decisions, items = [], []
    for e in b.entries:
        at = datetime.fromtimestamp(e.decided_at_ms / 1000, UTC)
        c, d = e.claim, e.decision
        verdict, allowed, blocked = d.verdict.name, d.allowed_amount_fen, d.blocked_amount_fen
        head = (at, e.decision_id, c.claim_id, c.fixmedins_code, e.registry_version, verdict, d.enforced)
        decisions.append((*head, allowed, blocked, b.batch_id))
        for index, (i, m) in enumerate(zip(c.items, d.items, strict=True)):
            executing = i.practitioners[1] if len(i.practitioners) > 1 else None
            service_time = datetime.fromtimestamp(i.service_time, UTC)
            head = (at, e.decision_id, index, c.fixmedins_code, c.claim_id, i.feedetl_sn, service_time, m.amount_fen)
            tail = (i.emergency, i.practitioners[0], executing, m.verdict.name, m.reason.name, m.prac_psn_code)
            items.append((*head, *tail, m.enforced))
    return decisions, items


Writer = tuple[Callable[[Batch], Awaitable[None]], Callable[[], Awaitable[int]]]  # write, backend pid


async def the_writer(url: str) -> Writer:
    store = PostgresRecordStore(url)  # what the gatekeeper runs

    async def write(b: Batch) -> None:
        await store.write(b)

    async def backend() -> int:
        connection = await store._connect()
        return connection.info.backend_pid

    return write, backend


async def psycopg_binary(url: str) -> Writer:
    connection = await psycopg.AsyncConnection.connect(url, autocommit=True)

    async def write(b: Batch) -> None:
        decisions, items = rows_of(b)
        async with connection.transaction():
            await connection.execute("INSERT INTO audit_batches (batch_id) VALUES (%s)", [b.batch_id])
            columns = ", ".join(DECISION_COLUMNS)
            async with connection.cursor().copy(f"COPY decisions ({columns}) FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(DECISION_TYPES)
                for row in decisions:
                    await copy.write_row(row)
            columns = ", ".join(ITEM_COLUMNS)
            async with connection.cursor().copy(f"COPY decision_items ({columns}) FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(ITEM_TYPES)
                for item in items:
                    await copy.write_row(item)

    async def backend() -> int:
        return connection.info.backend_pid

    return write, backend


async def asyncpg_binary(url: str) -> Writer:
    connection = await asyncpg.connect(url)

    async def write(b: Batch) -> None:
        decisions, items = rows_of(b)
        async with connection.transaction():
            await connection.execute("INSERT INTO audit_batches (batch_id) VALUES ($1)", b.batch_id)
            await connection.copy_records_to_table("decisions", records=decisions, columns=list(DECISION_COLUMNS))
            await connection.copy_records_to_table("decision_items", records=items, columns=list(ITEM_COLUMNS))

    async def backend() -> int:
        return int(await connection.fetchval("SELECT pg_backend_pid()"))

    return write, backend


DRIVERS = {
    "entries as one JSON document, rows made by the database (the writer)": the_writer,
    "rows made in Python, psycopg binary COPY (the writer before)": psycopg_binary,
    "rows made in Python, asyncpg binary COPY": asyncpg_binary,
}


async def run(url: str, batches: int, rounds: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    writers = {name: await make(url) for name, make in DRIVERS.items()}
    cpu: dict[str, list[float]] = {name: [] for name in DRIVERS}
    database_cpu: dict[str, list[float]] = {name: [] for name in DRIVERS}
    now = time.time()
    for _ in range(rounds):
        for name, (write, backend) in writers.items():
            prepared = [batch(now) for _ in range(batches)]  # built outside the measured time
            await write(prepared.pop())  # connected, partitions known
            pid = await backend()
            database_started, started = cpu_seconds(pid), time.process_time()
            for b in prepared:
                await write(b)
            decisions = len(prepared) * DECISIONS
            cpu[name].append((time.process_time() - started) / decisions * 1e6)
            database_cpu[name].append((cpu_seconds(pid) - database_started) / decisions * 1e6)
    return cpu, database_cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=40, help="batches per driver per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    server, url = start_decision_record()
    try:
        with psycopg.connect(url, autocommit=True) as connection:
            day = cst_day(time.time())
            for statement in partition_statements(day):
                connection.execute(statement)
        cpu, database_cpu = asyncio.run(run(url, args.batches, args.rounds))
    finally:
        server.stop()
    medians = {name: round(statistics.median(values), 1) for name, values in cpu.items()}
    database_medians = {name: round(statistics.median(values), 1) for name, values in database_cpu.items()}
    results = {
        **run_header("audit-driver", "bench.audit_driver"),
        "decisions_per_batch": DECISIONS,
        "items_per_decision": ITEMS,
        "cpu_us_per_decision_median": medians,
        "cpu_us_per_decision": {name: [round(v, 1) for v in values] for name, values in cpu.items()},
        "database_cpu_us_per_decision_median": database_medians,
    }
    lines = [
        f"# Writing the decision record: CPU per decision ({ITEMS} items), median of {args.rounds} turns",
        "",
        "| how | worker µs per decision | database µs per decision |",
        "|---|---|---|",
        *(f"| {name} | {value} | {database_medians[name]} |" for name, value in medians.items()),
        "",
        f"`{results['command']}` on {results['machine']}; {args.batches} batches of {DECISIONS} per driver per turn.",
    ]
    publish("audit-driver", results, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
