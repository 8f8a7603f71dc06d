"""Memory of a full near cache: how many bytes one entry costs a worker (sizes the pods' memory).

Fills a NearCache with decoded records the way a worker does (``put_many`` with records
decoded from the cache's MessagePack), 95 % registrations and 5 % with a suspension and its
reason text, as the registry's mix; the baseline is the same process before the fill. The
resident set is read from /proc (VmRSS), so freed memory the allocator keeps is counted too.

    .venv/bin/python -m bench.near_cache_memory [--entries 1000000]

Writes bench/results/near-cache-memory.json and .md.
"""

from __future__ import annotations

import argparse
import gc
import platform
import sys
from pathlib import Path

from bench.harness import publish
from gatekeeper.cache.nearcache import NearCache
from gatekeeper.core.records import PractitionerRecord, StatusPeriod, decode_record, encode_record

BATCH = 30  # codes per claim's lookup, as put_many receives them


def resident_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def encoded_records() -> tuple[bytes, bytes]:
    # 13-character chg_ids, as the generated registries have: each decoded record holds its own.
    registered = PractitionerRecord(1, (StatusPeriod(1, 1577808000, "CHG2020000001", 1),))
    suspended = PractitionerRecord(
        1,
        (
            StatusPeriod(1, 1577808000, "CHG2020000001", 1),
            StatusPeriod(2, 1790000000, "CHG2026000007", 7, 1795000000, 0, "违规记分达到9分，暂停医保支付资格"),
        ),
    )
    return encode_record(registered), encode_record(suspended)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    args = parser.parse_args()
    registered, suspended = encoded_records()
    cache = NearCache(args.entries, 120.0)
    gc.collect()
    before = resident_bytes()
    for start in range(0, args.entries, BATCH):
        codes = [f"D{410102000000 + i}" for i in range(start, min(start + BATCH, args.entries))]
        records = {code: decode_record(suspended if i % 20 == 0 else registered) for i, code in enumerate(codes)}
        cache.put_many(codes, records, cache.epoch)
    gc.collect()
    after = resident_bytes()
    assert len(cache) == args.entries
    result = {
        "benchmark": "near_cache_memory",
        "command": f"python -m bench.near_cache_memory --entries {args.entries}",
        "machine": f"{platform.machine()}, Python {sys.version.split()[0]}",
        "entries": args.entries,
        "rss_before_bytes": before,
        "rss_after_bytes": after,
        "bytes_per_entry": round((after - before) / args.entries, 1),
    }
    mib = (after - before) / 2**20
    publish(
        "near-cache-memory",
        result,
        "# Near-cache memory\n\n"
        f"`{result['command']}` on {result['machine']}\n\n"
        "| measure | value |\n|---|---|\n"
        f"| entries | {args.entries:,} (95 % registrations, 5 % with a suspension and its reason) |\n"
        f"| worker RSS before / after | {before / 2**20:.1f} / {after / 2**20:.1f} MiB |\n"
        f"| near cache | {mib:.1f} MiB, {result['bytes_per_entry']} bytes per entry |\n",
    )


if __name__ == "__main__":
    main()
