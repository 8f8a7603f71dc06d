"""The read path on one Redis against a six-node Redis Cluster, in the same run.

Starts a private redis-server and a private cluster (three masters, three replicas), loads
the same synthetic registry into both with the loader, and looks up a 10-item claim's
practitioners (three codes) one claim at a time through the service's own store:

- ``one Redis``: ``redis://``, every lookup read from Redis (no near cache);
- ``cluster``: ``redis+cluster://``, the same;
- ``cluster, replica reads``: the same, read from the replicas;
- ``cluster, warm near cache``: the near cache in front, every code already held.

For each it reports lookups/s, latency, the client's CPU per lookup, and what the Redis
nodes saw per lookup: commands, their CPU, and how many nodes (a pipeline to one node is one
round trip). Every key is in one slot (docs/cache-layout.md), so one node serves every read:
the nodes' CPU per lookup is what that costs it. So is the change stream: the bench then
starts ``--followers`` near caches on the cluster, each following ``{gk}:changes`` with one
blocking ``XREAD`` a second as a worker does, and reports the master's CPU per follower,
against the same time with none; and how long a write to the cache's master takes to reach
its replica (the staleness replica reads add). Writes bench/results/cluster.json and .md.

    .venv/bin/python -m bench.cluster [--people 100000] [--lookups 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import redis

from bench.check_claim import practitioner_code, write_registry
from bench.harness import markdown_table, publish, run_header
from gatekeeper.cache import keys
from gatekeeper.cache.store import CachingEligibilityStore, RedisEligibilityStore
from gatekeeper.core.eligibility import EligibilityStore
from loader.snapshot import load_snapshot
from tests.servers import RedisServer, start_cluster, start_redis

TIMEOUT_SECONDS = 0.5


def commands_by_node(nodes: Sequence[RedisServer]) -> dict[int, int]:
    """Commands each node has processed (INFO stats), the benchmark's own INFO calls included."""
    counts = {}
    for node in nodes:
        with redis.Redis(port=node.port) as client:
            counts[node.port] = int(client.info("stats")["total_commands_processed"])
    return counts


def cpu_by_node(nodes: Sequence[RedisServer]) -> dict[int, float]:
    """CPU seconds each node has used (INFO cpu: its main thread and the rest, user and system)."""
    seconds = {}
    for node in nodes:
        with redis.Redis(port=node.port) as client:
            cpu = client.info("cpu")
            seconds[node.port] = float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])
    return seconds


def claims(people: int, count: int, rng: random.Random) -> list[list[str]]:
    """The practitioners of ``count`` 10-item claims: two doctors and a nurse each."""
    return [[practitioner_code(rng.randrange(people)) for _ in range(3)] for _ in range(count)]


async def measure(
    name: str, store: EligibilityStore, lookups: list[list[str]], nodes: Sequence[RedisServer], warm: bool = False
) -> dict[str, object]:
    store.start()
    if isinstance(store, CachingEligibilityStore):
        await asyncio.wait_for(store.caught_up.wait(), 10)
    for codes in lookups[:1_000] if not warm else lookups:  # warm-up: connections and slot map; all codes if warm
        await store.lookup(codes)
    before = commands_by_node(nodes)
    node_cpu_before = cpu_by_node(nodes)
    cpu_before = time.process_time()
    latencies = []
    started = time.perf_counter()
    for codes in lookups:
        t0 = time.perf_counter()
        await store.lookup(codes)
        latencies.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_before
    node_cpu = sum(cpu_by_node(nodes).values()) - sum(node_cpu_before.values())
    after = commands_by_node(nodes)
    await store.close()
    # Less the INFO that commands_by_node sent to each node after the run.
    seen = {port: after[port] - before[port] - 1 for port in after}
    busy = {port: count for port, count in seen.items() if count > len(lookups) // 100}
    ordered = sorted(latencies)
    return {
        "read_path": name,
        "lookups": len(lookups),
        "lookups_per_s_sequential": round(len(lookups) / elapsed, 1),
        "p50_us": round(ordered[len(ordered) // 2] * 1e6, 1),
        "p99_us": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1e6, 1),
        "mean_us": round(statistics.fmean(latencies) * 1e6, 1),
        "client_cpu_us_per_lookup": round(cpu / len(lookups) * 1e6, 1),
        "redis_commands_per_lookup": round(sum(seen.values()) / len(lookups), 2),
        # Every node's, idle work (cron, the cluster bus) included: an upper bound.
        "redis_cpu_us_per_lookup": round(node_cpu / len(lookups) * 1e6, 1),
        "nodes_serving_lookups": len(busy),
        "commands_by_node": seen,
    }


async def following(cluster_url: str, master: RedisServer, followers: int, seconds: float) -> dict[str, float]:
    """The change stream's cost to the master that holds it: its CPU over ``seconds`` with
    ``followers`` near caches following the stream, and over the same time with none."""
    idle_before = cpu_by_node([master])[master.port]
    await asyncio.sleep(seconds)
    idle = cpu_by_node([master])[master.port] - idle_before
    stores = [
        CachingEligibilityStore.from_url(cluster_url, 1_000, 3_600, TIMEOUT_SECONDS, warm=False)
        for _ in range(followers)
    ]
    for store in stores:
        store.start()
    await asyncio.gather(*(asyncio.wait_for(store.caught_up.wait(), 10) for store in stores))
    reads_before = xread_calls(master)
    busy_before = cpu_by_node([master])[master.port]
    await asyncio.sleep(seconds)
    busy = cpu_by_node([master])[master.port] - busy_before
    reads = xread_calls(master) - reads_before
    for store in stores:
        await store.close()
    return {
        "followers": followers,
        "seconds": seconds,
        "xread_per_follower_per_s": round(reads / followers / seconds, 2),
        "master_cpu_ms_per_s_idle": round(idle / seconds * 1e3, 2),
        "master_cpu_ms_per_s_followed": round(busy / seconds * 1e3, 2),
        "master_cpu_us_per_follower_per_s": round(max(0.0, busy - idle) / seconds / followers * 1e6, 1),
    }


def replication_lag(master: RedisServer, replica: RedisServer, writes: int) -> dict[str, float]:
    """How long after a write to the cache's master its replica has it: a key in the cache's
    slot written ``writes`` times, the replica polled after each until it answers the new value."""
    lags = []
    key = f"{keys.PREFIX}:bench-replication-lag"
    with redis.Redis(port=master.port) as writer, redis.Redis(port=replica.port) as reader:
        reader.execute_command("READONLY")
        for n in range(writes):
            written = time.perf_counter()
            writer.set(key, n)
            while reader.get(key) != str(n).encode():
                pass
            lags.append(time.perf_counter() - written)
        writer.delete(key)
    ordered = sorted(lags)
    return {
        "writes": writes,
        "p50_us": round(ordered[len(ordered) // 2] * 1e6, 1),
        "p99_us": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1e6, 1),
        "max_us": round(ordered[-1] * 1e6, 1),
    }


def xread_calls(node: RedisServer) -> int:
    with redis.Redis(port=node.port) as client:
        return int(client.info("commandstats").get("cmdstat_xread", {}).get("calls", 0))


async def run(
    args: argparse.Namespace, single: RedisServer, cluster_url: str, nodes: list[RedisServer]
) -> list[dict[str, object]]:
    lookups = claims(args.people, args.lookups, random.Random(args.seed))
    return [
        await measure("one Redis", RedisEligibilityStore.from_url(single.url, TIMEOUT_SECONDS), lookups, [single]),
        await measure("cluster", RedisEligibilityStore.from_url(cluster_url, TIMEOUT_SECONDS), lookups, nodes),
        await measure(
            "cluster, replica reads",
            RedisEligibilityStore.from_url(cluster_url, TIMEOUT_SECONDS, replica_reads=True),
            lookups,
            nodes,
        ),
        await measure(
            "cluster, warm near cache",
            CachingEligibilityStore.from_url(cluster_url, 1_000_000, 3_600, TIMEOUT_SECONDS),
            lookups,
            nodes,
            warm=True,
        ),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--people", type=int, default=100_000)
    parser.add_argument("--lookups", type=int, default=5_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--followers", type=int, default=32, help="near caches following the change stream")
    parser.add_argument("--follow-seconds", type=float, default=10.0)
    parser.add_argument("--lag-writes", type=int, default=1_000, help="writes timed to the replica")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as directory:
        (Path(directory) / "single").mkdir()
        single = start_redis(Path(directory) / "single")
        cluster = start_cluster(Path(directory) / "cluster")
        try:
            registry = Path(directory) / "registry.csv"
            write_registry(registry, args.people, random.Random(args.seed))
            load_snapshot(single.client(), registry)
            load_snapshot(cluster.client(), registry)
            with redis.Redis(port=cluster.master_of(keys.META).port) as master:
                master.wait(1, 60_000)  # the replica has the registry too before anything is timed
            rows = asyncio.run(run(args, single, cluster.url, cluster.nodes))
            master = cluster.master_of(keys.META)
            stream = asyncio.run(following(cluster.url, master, args.followers, args.follow_seconds))
            lag = replication_lag(master, cluster.replica_of(master), args.lag_writes)
        finally:
            single.stop()
            cluster.stop()

    result = {
        **run_header("cluster", "bench.cluster"),
        "people": args.people,
        "rows": rows,
        "change_stream": stream,
        "replication_lag": lag,
    }
    columns = (
        "read_path",
        "lookups_per_s_sequential",
        "p50_us",
        "p99_us",
        "client_cpu_us_per_lookup",
        "redis_commands_per_lookup",
        "redis_cpu_us_per_lookup",
        "nodes_serving_lookups",
    )
    header = (
        *("read path", "lookups/s (sequential)", "p50 µs", "p99 µs", "client CPU µs/lookup"),
        *("Redis commands/lookup", "Redis CPU µs/lookup", "nodes serving lookups"),
    )
    table = markdown_table(header, ([r[c] for c in columns] for r in rows))
    title = f"# The read path: one Redis against a Redis Cluster\n\n`{result['command']}` on {result['machine']}, "
    title += f"{args.people} practitioners, one claim's three codes per lookup, all in one process.\n\n"
    footer = (
        f"\n\nRedis CPU: every node's (INFO cpu), idle work included. The change stream: "
        f"{stream['followers']} near caches following `{{gk}}:changes` for {stream['seconds']:.0f} s, "
        f"{stream['xread_per_follower_per_s']} `XREAD`s each a second, cost its master "
        f"{stream['master_cpu_ms_per_s_followed']} ms of CPU a second against "
        f"{stream['master_cpu_ms_per_s_idle']} ms with none: "
        f"{stream['master_cpu_us_per_follower_per_s']} µs a second per follower. Replication: "
        f"a write to the cache's master was on its replica after {lag['p50_us']} µs (p50), "
        f"{lag['p99_us']} µs (p99), {lag['max_us']} µs at most, over {lag['writes']} writes (the "
        f"time includes the polling reads'; loopback)."
    )
    publish("cluster", result, title + table + footer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
