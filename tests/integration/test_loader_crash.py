"""A loader killed with SIGKILL mid-snapshot: readers stay on the previous complete snapshot,
and running the load again finishes the job and removes the half-written generation."""

from __future__ import annotations

import csv
import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis

from gatekeeper.cache import keys
from gatekeeper.core.cst import parse_cst
from gatekeeper.core.rules import Reason, standing_at
from gatekeeper.v1 import gatekeeper_pb2 as pb
from loader.cache import read_state
from loader.generate import GeneratedRegistry, generate
from loader.snapshot import load_snapshot
from tests.integration.conftest import StartGatekeeper
from tests.integration.registry import REPO, lookup, period, write_snapshot
from tests.servers import RedisServer, start_redis

CLI = Path(sys.executable).parent / "gatekeeper-loader"
DECEMBER = "2026-12-01 00:00:00"
# The same load as `gatekeeper-loader snapshot`, with a 1 s lease instead of 30 s: a killed
# loader's lease must lapse before the next load may start, and the CLI has no lease option.
SHORT_LEASE_LOADER = """
import sys
from pathlib import Path
import redis
from loader.snapshot import SnapshotOptions, load_snapshot
load_snapshot(redis.Redis.from_url(sys.argv[1]), Path(sys.argv[2]), SnapshotOptions(lease_seconds=1.0))
"""


@pytest.fixture(scope="module")
def snapshot_b(tmp_path_factory: pytest.TempPathFactory) -> GeneratedRegistry:
    """A snapshot big enough to be caught mid-load."""
    return generate(tmp_path_factory.mktemp("crash"), 300_000, snapshot_id="B", changes=10)


@pytest.fixture(scope="module")
def subject(snapshot_b: GeneratedRegistry) -> str:
    """A practitioner registered in B: suspended in A."""
    with snapshot_b.snapshot.open(encoding="utf-8", newline="") as handle:
        for row in itertools.islice(csv.DictReader(handle), 100):
            if row["status"] == "1" and row["endtime"] == "":
                return row["prac_psn_code"]
    raise AssertionError("no open registration among B's first rows")


def load_a(env: dict[str, str], directory: Path, subject: str) -> int:
    """Snapshot A, loaded by the CLI; its generation."""
    rows = [period(subject, "a-suspension", 2, "2026-01-01 00:00:00", "2027-06-01 00:00:00", seq=1, chg_rea="暂停")]
    rows += [period(f"D1101050{n:05d}", f"a{n}", 1, "2020-01-01 00:00:00", seq=n + 2) for n in range(50)]
    path = write_snapshot(directory, rows, snapshot_id="A", watermark_seq=100, name="a.csv")
    loaded = subprocess.run([str(CLI), "snapshot", str(path)], env=env, capture_output=True, text=True, timeout=60)
    assert loaded.returncode == 0, loaded.stderr
    generation = read_state(redis.Redis.from_url(env["REDIS_URL"])).generation
    assert generation is not None
    return generation


def wait_until_loading_rows(client: redis.Redis, process: subprocess.Popen[str]) -> int:
    """Until a load holds the lease and its generation has practitioners in it; that generation."""
    deadline = time.monotonic() + 30
    while True:
        assert process.poll() is None, f"the loader exited with {process.returncode} before it could be killed"
        assert time.monotonic() < deadline, "the load never started writing"
        loading = client.get(keys.LOADING)
        if loading:
            generation = int(loading.split()[0])
            pipe = client.pipeline(transaction=False)
            for bucket in range(256):
                pipe.hlen(keys.bucket_key(generation, bucket))
            # Every bucket starts with its sentinel field; more fields are practitioners.
            if sum(pipe.execute()) > 256:
                return generation
        threading.Event().wait(0.005)


def kill(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)
    assert process.returncode == -signal.SIGKILL


def generation_keys(client: redis.Redis, generation: int) -> int:
    return sum(1 for _ in client.scan_iter(match=keys.generation_pattern(generation), count=1000))


def test_a_loader_killed_mid_snapshot_leaves_readers_on_the_previous_snapshot(
    redis_client: redis.Redis,
    redis_server: RedisServer,
    start_gatekeeper: StartGatekeeper,
    snapshot_b: GeneratedRegistry,
    subject: str,
    tmp_path: Path,
) -> None:
    env = {**os.environ, "REDIS_URL": redis_server.url}
    generation_a = load_a(env, tmp_path, subject)
    gatekeeper = start_gatekeeper()
    claim = pb.CheckClaimRequest(
        claim_id="crash",
        fixmedins_code="H11010500001",
        items=[pb.LineItem(feedetl_sn="1", fee_ocur_time=DECEMBER, bilg_dr_codg=subject, amount_fen=100)],
    )

    process = subprocess.Popen(
        [str(CLI), "snapshot", str(snapshot_b.snapshot)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        abandoned = wait_until_loading_rows(redis_client, process)
        during = gatekeeper.stub.CheckClaim(claim, timeout=5)
        assert (during.registry_version, during.items[0].reason) == ("A@100", pb.REASON_SUSPENDED)
    finally:
        kill(process)

    state = read_state(redis_client)
    assert (state.snapshot_id, state.generation) == ("A", generation_a)
    after = gatekeeper.stub.CheckClaim(claim, timeout=5)
    assert after.registry_version == "A@100"
    assert [(item.verdict, item.reason) for item in after.items] == [(pb.VERDICT_BLOCK, pb.REASON_SUSPENDED)]
    # The half-written generation is left behind, for the next load to drop.
    assert abandoned != generation_a
    assert str(abandoned).encode() in redis_client.smembers(keys.GENERATIONS)
    assert generation_keys(redis_client, abandoned) > 0


def test_loading_again_after_a_killed_load_finishes_the_job(
    redis_client: redis.Redis, redis_server: RedisServer, snapshot_b: GeneratedRegistry, subject: str, tmp_path: Path
) -> None:
    env = {**os.environ, "REDIS_URL": redis_server.url}
    generation_a = load_a(env, tmp_path, subject)
    process = subprocess.Popen(
        [sys.executable, "-c", SHORT_LEASE_LOADER, redis_server.url, str(snapshot_b.snapshot)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        abandoned = wait_until_loading_rows(redis_client, process)
    finally:
        kill(process)
    assert read_state(redis_client).snapshot_id == "A"
    assert generation_keys(redis_client, abandoned) > 0

    # Run again, as an operator would: it waits out the dead loader's lease, then loads.
    rerun = subprocess.run(
        [str(CLI), "snapshot", str(snapshot_b.snapshot)], env=env, capture_output=True, text=True, timeout=60
    )
    assert rerun.returncode == 0, rerun.stderr
    assert "loaded snapshot B: 300,000 practitioners" in rerun.stdout

    state = read_state(redis_client)
    assert (state.snapshot_id, state.record_count) == ("B", 300_000)
    found = lookup(redis_server.url, [subject])
    assert found.registry_version == f"B@{snapshot_b.watermark_seq}"
    assert standing_at(found.records[subject], parse_cst(DECEMBER)).reason == Reason.OK
    # Only B is left: the abandoned generation and A were both dropped.
    assert generation_keys(redis_client, abandoned) == 0
    assert generation_keys(redis_client, generation_a) == 0
    assert {int(g) for g in redis_client.smembers(keys.GENERATIONS)} == {state.generation}


def test_redis_refusing_the_bulk_writes_fails_the_load_and_leaves_nothing_behind(tmp_path: Path) -> None:
    """Out of memory halfway through the bulk HSETs: the load fails with Redis's error, and
    the clean-up after it (the lease released, the half-written generation dropped) is not
    thrown off by the answers still unread on the loader's connection."""
    (tmp_path / "redis").mkdir()
    server = start_redis(tmp_path / "redis", extra_args=["--maxmemory", "1500kb", "--maxmemory-policy", "noeviction"])
    try:
        client = redis.Redis.from_url(server.url)
        path = write_snapshot(
            tmp_path,
            [period(f"D1101050{n:05d}", f"r{n}", 1, "2020-01-01 00:00:00", seq=n + 1) for n in range(20_000)],
            snapshot_id="A",
            name="a.csv",
        )
        with pytest.raises(redis.exceptions.OutOfMemoryError) as refused:
            load_snapshot(client, path)
        assert any(frame.name == "write_bulk" for frame in refused.traceback)  # refused halfway through
        assert client.get(keys.LOADING) is None  # the lease released
        # The generation dropped, nothing switched: only the counter of generations is left.
        assert client.keys("*") == [keys.GENERATION_COUNTER.encode()]
    finally:
        server.stop()
