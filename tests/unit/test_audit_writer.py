"""How the decision record's writer forms batches: the decisions of a linger together, a whole
batch at once, everything on close (a store in memory: the database is tests/integration's)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from builders import claim, item

from gatekeeper.audit.records import Batch
from gatekeeper.audit.spool import Spool
from gatekeeper.audit.writer import AuditLog
from gatekeeper.core.policy import RegionPolicy
from gatekeeper.core.rules import decide_claim

A_WHILE = 30.0  # a linger no test waits out
PROMPTLY = 2.0


class Batches:
    """A record store that keeps the batches it is given."""

    def __init__(self) -> None:
        self.batches: list[Batch] = []
        self.written = asyncio.Event()

    async def write(self, batch: Batch) -> bool:
        self.batches.append(batch)
        self.written.set()
        return True

    async def reachable(self) -> bool:
        return True

    async def close(self) -> None:
        pass


def take(log: AuditLog, count: int) -> None:
    for n in range(count):
        decided = claim(item("2026-11-20 10:00:00", "D110105000001", sn=str(n)), claim_id=f"C{n}")
        assert log.record(f"d{n}", decided, decide_claim(decided, {}, RegionPolicy()), "snap@7", 1.0)


async def started(tmp_path: Path, batch_size: int, linger_seconds: float) -> tuple[AuditLog, Batches]:
    store = Batches()
    log = AuditLog(store, Spool(tmp_path), batch_size=batch_size, linger_seconds=linger_seconds)
    log.start()
    await asyncio.sleep(0.05)  # the writer has looked for orphaned spools and waits for decisions
    return log, store


def test_the_decisions_taken_while_the_writer_lingers_are_written_as_one_batch(tmp_path: Path) -> None:
    async def run() -> list[int]:
        log, store = await started(tmp_path, batch_size=500, linger_seconds=0.3)
        for _ in range(10):  # one decision per turn of the loop, as RPCs hand them over
            take(log, 1)
            await asyncio.sleep(0)
        await asyncio.wait_for(store.written.wait(), PROMPTLY)
        await log.close()
        return [len(batch.entries) for batch in store.batches]

    assert asyncio.run(run()) == [10]


def test_a_whole_batch_taken_is_written_at_once_without_waiting_out_the_linger(tmp_path: Path) -> None:
    async def run() -> list[int]:
        log, store = await started(tmp_path, batch_size=5, linger_seconds=A_WHILE)
        take(log, 1)
        await asyncio.sleep(0.05)  # the writer has the first decision and lingers for more
        take(log, 4)
        await asyncio.wait_for(store.written.wait(), PROMPTLY)
        sizes = [len(batch.entries) for batch in store.batches]
        await log.close()
        return sizes

    assert asyncio.run(run()) == [5]


def test_closing_writes_every_decision_taken_without_waiting_out_the_linger(tmp_path: Path) -> None:
    async def run() -> list[int]:
        log, store = await started(tmp_path, batch_size=500, linger_seconds=A_WHILE)
        take(log, 3)
        await asyncio.sleep(0.05)  # the writer lingers for more
        await asyncio.wait_for(log.close(), PROMPTLY)
        return [len(batch.entries) for batch in store.batches]

    assert asyncio.run(run()) == [3]


def test_closing_at_once_after_taking_decisions_does_not_wait_out_the_linger(tmp_path: Path) -> None:
    """close() before the writer has even seen the first decision: the writer must not then
    start a linger that nothing will end."""

    async def run() -> list[int]:
        log, store = await started(tmp_path, batch_size=500, linger_seconds=A_WHILE)
        take(log, 3)
        async with asyncio.timeout(PROMPTLY):
            await log.close()  # in this task: it has asked the writer to stop before the writer runs
        return [len(batch.entries) for batch in store.batches]

    assert asyncio.run(run()) == [3]


def test_closing_with_more_than_a_batch_taken_writes_them_all_in_batches_in_order(tmp_path: Path) -> None:
    async def run() -> list[list[str]]:
        log, store = await started(tmp_path, batch_size=5, linger_seconds=A_WHILE)
        take(log, 12)
        await asyncio.wait_for(log.close(), PROMPTLY)
        return [[entry.decision_id for entry in batch.entries] for batch in store.batches]

    ids = [f"d{n}" for n in range(12)]
    assert asyncio.run(run()) == [ids[:5], ids[5:10], ids[10:]]
