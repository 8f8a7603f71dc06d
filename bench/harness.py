"""Measure real parts for benchmarks: CPU time of processes; redis-server from the tests' fixtures."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from tests.servers import RedisServer, free_port, start_redis

__all__ = ["RedisServer", "cpu_seconds", "free_port", "process_tree_cpu_seconds", "start_redis"]

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
