"""Measure real parts for benchmarks: CPU time of processes; redis-server from the tests' fixtures."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import psycopg

from gatekeeper.audit.database import migrate
from tests.servers import PostgresServer, RedisServer, free_port, start_postgres, start_redis

__all__ = [
    "PostgresServer",
    "RedisServer",
    "cpu_seconds",
    "free_port",
    "process_tree_cpu_seconds",
    "start_decision_record",
    "start_redis",
]


def start_decision_record() -> tuple[PostgresServer, str]:
    """A private PostgreSQL with a migrated ``gatekeeper`` database: the decision record a
    benchmarked gatekeeper writes to, as in production. Returns the server and its URL."""
    server = start_postgres()
    with psycopg.connect(server.url(), autocommit=True) as connection:
        connection.execute("CREATE DATABASE gatekeeper")
    url = server.url("gatekeeper")
    with psycopg.connect(url, autocommit=True) as connection:
        migrate(connection)
    return server, url


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used, from /proc (robust on a noisy machine)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def process_tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and its direct children (gatekeeper workers)."""
    total = cpu_seconds(pid)
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        for child in children.read_text().split():
            with contextlib.suppress(FileNotFoundError):
                total += cpu_seconds(int(child))
    return total
