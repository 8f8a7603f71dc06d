"""The ``gatekeeper-loader`` command: load snapshots into the eligibility cache."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import redis

from gatekeeper.settings import redis_url_from
from loader.cache import read_state
from loader.snapshot import load_snapshot


def _snapshot(args: argparse.Namespace) -> int:
    client = redis.Redis.from_url(args.redis_url)
    started = time.monotonic()
    result = load_snapshot(client, Path(args.path))
    if not result.listpack_settings_ok:
        print(
            "warning: could not raise hash-max-listpack-entries/value (CONFIG SET refused); "
            "set them in redis.conf or the cache will use several times more memory (docs/cache-layout.md)",
            file=sys.stderr,
        )
    for bad in result.bad_rows:
        print(f"{bad.path}:{bad.line}: {bad.reason}", file=sys.stderr)
    print(
        f"loaded snapshot {result.snapshot_id}: {result.practitioners} practitioners from {result.rows} rows "
        f"({len(result.bad_rows)} bad) into generation {result.generation} in {time.monotonic() - started:.1f} s"
    )
    return 0


def _status(args: argparse.Namespace) -> int:
    state = read_state(redis.Redis.from_url(args.redis_url))
    if state.generation is None:
        print("no registry snapshot loaded")
        return 1
    print(json.dumps(state.__dict__, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``gatekeeper-loader``."""
    parser = argparse.ArgumentParser(prog="gatekeeper-loader", description=__doc__)
    parser.add_argument("--redis-url", default=redis_url_from(), help="eligibility cache (env REDIS_URL)")
    commands = parser.add_subparsers(dest="command", required=True)
    snapshot = commands.add_parser("snapshot", help="load a full snapshot (.csv or .csv.gz)")
    snapshot.add_argument("path")
    snapshot.set_defaults(run=_snapshot)
    status = commands.add_parser("status", help="what is loaded")
    status.set_defaults(run=_status)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``gatekeeper-loader``."""
    args = build_parser().parse_args(argv)
    sys.exit(args.run(args))
