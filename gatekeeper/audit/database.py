"""The decision record's PostgreSQL schema: versioned migrations, daily partitions, retention.

Migrations are the files ``migrations/NNNN_name.sql``, applied in order by
``gatekeeper audit migrate`` and recorded in ``schema_version``; ``serve`` refuses to start
on a schema other than :data:`LATEST_VERSION`. Decisions and their items are partitioned
by decision day in China Standard Time: one partition of each table per day, created ahead
by the writer, dropped by ``gatekeeper audit prune`` once older than the retention.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, timedelta
from importlib import resources

import psycopg
from psycopg import sql

PARTITIONED = ("decisions", "decision_items")
MIGRATION_LOCK = 7_424_001  # pg_advisory_lock key: one migration at a time
PARTITION_LOCK = 7_424_002  # one partition creator at a time
_MIGRATION_FILE = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")
_PARTITION = re.compile(r"(decisions|decision_items)_(\d{8})")


class SchemaError(RuntimeError):
    """The database's schema is not the one this version of the gatekeeper writes."""


@dataclass(frozen=True)
class Migration:
    """One versioned schema change."""

    version: int
    name: str
    statements: str


def migrations() -> list[Migration]:
    """Every migration shipped with this version, oldest first."""
    found = []
    for entry in resources.files("gatekeeper.audit").joinpath("migrations").iterdir():
        match = _MIGRATION_FILE.fullmatch(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text(encoding="utf-8")))
    return sorted(found, key=lambda m: m.version)


LATEST_VERSION = migrations()[-1].version


def schema_version(connection: psycopg.Connection) -> int:
    """The newest migration applied; 0 on a database with none."""
    exists = connection.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        return 0
    row = connection.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()
    return int(row[0]) if row else 0


def migrate(connection: psycopg.Connection) -> list[Migration]:
    """Apply the migrations the database lacks, each in its own transaction; returns them."""
    applied = []
    with connection.transaction():
        connection.execute("SELECT pg_advisory_xact_lock(%s)", [MIGRATION_LOCK])
        connection.execute(
            "CREATE TABLE IF NOT EXISTS schema_version ("
            " version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        current = schema_version(connection)
        if current > LATEST_VERSION:
            raise SchemaError(
                f"the database has schema version {current}, newer than this gatekeeper's {LATEST_VERSION}"
            )
        for migration in migrations():
            if migration.version > current:
                connection.execute(migration.statements.encode())
                connection.execute(
                    "INSERT INTO schema_version (version, name) VALUES (%s, %s)", [migration.version, migration.name]
                )
                applied.append(migration)
    return applied


def check_schema(connection: psycopg.Connection) -> None:
    """SchemaError unless the database is at :data:`LATEST_VERSION`."""
    version = schema_version(connection)
    if version != LATEST_VERSION:
        raise SchemaError(
            f"the decision record's schema is at version {version}, this gatekeeper needs {LATEST_VERSION}: "
            "run `gatekeeper audit migrate`"
        )


def partition_name(table: str, day: date) -> str:
    """``decisions_20261130``: the partition of ``table`` for one CST day."""
    return f"{table}_{day:%Y%m%d}"


def partition_statements(day: date) -> list[sql.Composed]:
    """CREATE TABLE … PARTITION OF for both tables, for one CST day (idempotent)."""
    start, end = f"{day:%Y-%m-%d} 00:00:00+08", f"{day + timedelta(days=1):%Y-%m-%d} 00:00:00+08"
    return [
        sql.SQL("CREATE TABLE IF NOT EXISTS {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})").format(
            sql.Identifier(partition_name(table, day)), sql.Identifier(table), sql.Literal(start), sql.Literal(end)
        )
        for table in PARTITIONED
    ]


def ensure_partitions(connection: psycopg.Connection, days: set[date]) -> None:
    """Create the partitions of ``days`` that are missing."""
    with connection.transaction():
        connection.execute("SELECT pg_advisory_xact_lock(%s)", [PARTITION_LOCK])
        for day in sorted(days):
            for statement in partition_statements(day):
                connection.execute(statement)


def partition_days(connection: psycopg.Connection) -> list[date]:
    """The days that have a partition of the decisions table, oldest first."""
    rows = connection.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'decisions'::regclass"
    ).fetchall()
    days = []
    for (name,) in rows:
        match = _PARTITION.fullmatch(name)
        if match:
            text = match.group(2)
            days.append(date(int(text[:4]), int(text[4:6]), int(text[6:])))
    return sorted(days)


def prune(connection: psycopg.Connection, keep_days: int, today: date) -> list[date]:
    """Drop the partitions of days before ``today - keep_days + 1`` (keeping ``keep_days`` days
    including today), and the batch ids as old; returns the days dropped."""
    cutoff = today - timedelta(days=keep_days - 1)
    dropped = [day for day in partition_days(connection) if day < cutoff]
    with connection.transaction():
        connection.execute("SELECT pg_advisory_xact_lock(%s)", [PARTITION_LOCK])
        for day in dropped:
            for table in PARTITIONED:
                connection.execute(
                    sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(partition_name(table, day)))
                )
        connection.execute("DELETE FROM audit_batches WHERE written_at < %s::date - 1", [cutoff])
    return dropped
