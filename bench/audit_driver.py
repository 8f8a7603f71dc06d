"""Which PostgreSQL driver writes the decision record with the least CPU in the worker?

The same batches (500 decisions of 10 items, as the writer forms them) are written, in turns,
by: psycopg 3 with text COPY, psycopg 3 with binary COPY (gatekeeper/audit/writer.py's
``PostgresRecordStore``, chosen by this benchmark), and asyncpg's ``copy_records_to_table``
(binary). Each batch is one transaction with
the batch id inserted first, as the writer does. CPU is this process's own (the database's
is not the worker's), per decision.

    python -m bench.audit_driver            # needs asyncpg: pip install asyncpg (the bench extra)

Writes bench/results/audit-driver.json and audit-driver.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
import psycopg

from gatekeeper.audit.database import migrate, partition_statements
from gatekeeper.audit.records import DECISION_COLUMNS, ITEM_COLUMNS, AuditItem, AuditRecord, Batch, rows_of
from gatekeeper.audit.writer import PostgresRecordStore, cst_day
from tests.servers import start_postgres

RESULTS = Path(__file__).parent / "results"
DECISIONS, ITEMS = 500, 10


def batch(now: float) -> Batch:
    items = tuple(
        AuditItem(str(n), int(now) - 3600, 1234, False, "D410102000002", "", "ALLOW", "OK", "", True)
        for n in range(ITEMS)
    )
    records = tuple(
        AuditRecord(
            uuid.uuid4().hex, f"c{n}", "H41130200746", int(now * 1000), "snap@7", "ALLOW", True, 12340, 0, items
        )
        for n in range(DECISIONS)
    )
    return Batch(uuid.uuid4().hex, records)


async def psycopg_text(url: str) -> Callable[[Batch], Awaitable[None]]:
    connection = await psycopg.AsyncConnection.connect(url, autocommit=True)

    async def write(b: Batch) -> None:
        decisions, items = rows_of(b)
        async with connection.transaction():
            await connection.execute("INSERT INTO audit_batches (batch_id) VALUES (%s)", [b.batch_id])
            async with connection.cursor().copy(f"COPY decisions ({', '.join(DECISION_COLUMNS)}) FROM STDIN") as copy:
                for row in decisions:
                    await copy.write_row(row)
            async with connection.cursor().copy(f"COPY decision_items ({', '.join(ITEM_COLUMNS)}) FROM STDIN") as copy:
                for item in items:
                    await copy.write_row(item)

    return write


async def psycopg_binary(url: str) -> Callable[[Batch], Awaitable[None]]:
    store = PostgresRecordStore(url)  # what the gatekeeper runs

    async def write(b: Batch) -> None:
        await store.write(b)

    return write


async def asyncpg_binary(url: str) -> Callable[[Batch], Awaitable[None]]:
    connection = await asyncpg.connect(url)

    async def write(b: Batch) -> None:
        decisions, items = rows_of(b)
        async with connection.transaction():
            await connection.execute("INSERT INTO audit_batches (batch_id) VALUES ($1)", b.batch_id)
            await connection.copy_records_to_table("decisions", records=decisions, columns=list(DECISION_COLUMNS))
            await connection.copy_records_to_table("decision_items", records=items, columns=list(ITEM_COLUMNS))

    return write


DRIVERS = {
    "psycopg text COPY": psycopg_text,
    "psycopg binary COPY (the writer)": psycopg_binary,
    "asyncpg binary COPY": asyncpg_binary,
}


async def run(url: str, batches: int, rounds: int) -> dict[str, list[float]]:
    writers = {name: await make(url) for name, make in DRIVERS.items()}
    cpu: dict[str, list[float]] = {name: [] for name in DRIVERS}
    now = time.time()
    for _ in range(rounds):
        for name, write in writers.items():
            prepared = [batch(now) for _ in range(batches)]  # built outside the measured time
            started = time.process_time()
            for b in prepared:
                await write(b)
            cpu[name].append((time.process_time() - started) / (batches * DECISIONS) * 1e6)
    return cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=40, help="batches per driver per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    server = start_postgres()
    try:
        with psycopg.connect(server.url(), autocommit=True) as connection:
            connection.execute("CREATE DATABASE driver")
        url = server.url("driver")
        with psycopg.connect(url, autocommit=True) as connection:
            migrate(connection)
            day = cst_day(time.time())
            for statement in partition_statements(day):
                connection.execute(statement)
        cpu = asyncio.run(run(url, args.batches, args.rounds))
    finally:
        server.stop()
    medians = {name: round(statistics.median(values), 1) for name, values in cpu.items()}
    results = {
        "benchmark": "audit-driver",
        "command": "python -m bench.audit_driver " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "decisions_per_batch": DECISIONS,
        "items_per_decision": ITEMS,
        "cpu_us_per_decision_median": medians,
        "cpu_us_per_decision": {name: [round(v, 1) for v in values] for name, values in cpu.items()},
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "audit-driver.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [
        f"# Writing the decision record: client CPU per decision ({ITEMS} items), median of {args.rounds} turns",
        "",
        "| driver | µs per decision |",
        "|---|---|",
        *(f"| {name} | {value} |" for name, value in medians.items()),
        "",
        f"`{results['command']}` on {results['machine']}; {args.batches} batches of {DECISIONS} per driver per turn.",
    ]
    (RESULTS / "audit-driver.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
