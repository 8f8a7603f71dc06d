"""The ``gatekeeper-loader`` command: keep the eligibility cache in sync with the registry."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import redis

from gatekeeper import __version__, console, defaults
from gatekeeper.cache import keys
from gatekeeper.cache.client import command_client
from gatekeeper.console import CommandFailed, HelpFormatter, global_option
from gatekeeper.settings import Address, redis_address
from gatekeeper.urls import url_shown
from loader.cache import LeaseLost, LegacyChangeLog, LoaderBusy, NoSnapshot, read_lease, read_state
from loader.changes import apply_change_files
from loader.feed_client import DEFAULT_MAX_PAGE_BYTES, DEFAULT_TIMEOUT_SECONDS, FeedError
from loader.follow import DEFAULT_LEASE_SECONDS as DEFAULT_FOLLOW_LEASE_SECONDS
from loader.follow import FollowOptions, follow
from loader.quarantine import Quarantine
from loader.snapshot import DEFAULT_MAX_BAD_SHARE, DEFAULT_MAX_SHRINK, SnapshotOptions, SnapshotRefused, load_snapshot

log = logging.getLogger("loader")


def _client(args: argparse.Namespace) -> redis.Redis:
    return command_client(args.redis.value)


def _tell(args: argparse.Namespace, line: str) -> None:
    """A line for people beside the result: on stdout after a summary, on stderr beside JSON."""
    print(f"gatekeeper-loader {args.command}: {line}" if args.json else line, file=sys.stderr if args.json else None)


def _cut(rows: int) -> str:
    """The summary's note of rows loaded with a field cut to its limit, if any."""
    return f", {rows:,} with a field cut to its limit" if rows else ""


def _snapshot(args: argparse.Namespace) -> int:
    path = Path(args.path)
    options = SnapshotOptions(
        force=args.force,
        max_bad_share=args.max_bad_share,
        max_shrink=args.max_shrink,
        quarantine=Path(args.quarantine) if args.quarantine else None,
    )
    try:
        result = load_snapshot(_client(args), path, options)
    except (SnapshotRefused, LoaderBusy, LeaseLost, LegacyChangeLog) as error:
        raise CommandFailed(f"{path}: refused, nothing switched: {error}") from None
    if not result.listpack_settings_ok:
        print(
            "warning: could not raise hash-max-listpack-entries/value (CONFIG SET refused); "
            "set them in redis.conf or the cache will use several times more memory (docs/cache-layout.md)",
            file=sys.stderr,
        )
    for problem in result.problems:
        print(f"warning: forced past a failed check: {problem}", file=sys.stderr)
    for code in result.findings:
        print(f"integrity: {code} has a registration starting before a termination's ban ends", file=sys.stderr)
    if args.json:
        summary = {k: str(v) if isinstance(v, Path) else v for k, v in vars(result).items()}
        print(json.dumps(summary, ensure_ascii=False))
        _tell(args, f"into Redis at {args.redis.shown}")
        return 0
    quarantined = _cut(result.truncated_rows) + (f", quarantined in {result.quarantine}" if result.quarantine else "")
    print(
        f"loaded snapshot {result.snapshot_id}: {result.practitioners:,} practitioners from {result.rows:,} rows "
        f"({result.bad_rows:,} bad{quarantined}) into generation {result.generation} in {result.seconds:.1f} s "
        f"({result.rows / max(result.seconds, 1e-9):,.0f} rows/s): "
        f"read and parsed in {result.read_seconds:.1f} s, bulk-written in {result.bulk_seconds:.1f} s, "
        f"{result.merge_rows:,} rows merged in {result.merge_seconds:.1f} s; "
        f"replayed {result.replayed_changes} changes in {result.replay_seconds * 1000:.0f} ms; "
        f"switch {result.switch_seconds * 1000:.1f} ms"
    )
    _tell(args, f"into Redis at {args.redis.shown}")
    return 0


def _apply(args: argparse.Namespace) -> int:
    paths = [Path(p) for p in args.paths]
    quarantine = Quarantine(Path(args.quarantine))
    started = time.monotonic()
    try:
        result = apply_change_files(_client(args), paths, quarantine)
    except NoSnapshot as error:
        raise CommandFailed(str(error)) from None
    finally:
        quarantine.close()
    stats = result.stats
    for code in sorted(stats.findings):
        print(f"integrity: {code} has a registration starting before a termination's ban ends", file=sys.stderr)
    elapsed = time.monotonic() - started
    if args.json:
        print(
            json.dumps(
                {
                    "files": result.files,
                    "applied": stats.applied,
                    "stale": stats.stale,
                    "bad_rows": result.bad_rows,
                    "truncated_rows": result.truncated_rows,
                    "findings": sorted(stats.findings),
                    "seconds": elapsed,
                }
            )
        )
        _tell(args, f"into Redis at {args.redis.shown}")
        return 0
    quarantined = f", quarantined in {quarantine.path}" if quarantine.count else ""
    print(
        f"applied {stats.applied:,} changes from {result.files} files ({stats.stale:,} older than what was loaded, "
        f"{result.bad_rows:,} bad{_cut(result.truncated_rows)}{quarantined}) in {elapsed:.1f} s "
        f"({(stats.applied + stats.stale) / max(elapsed, 1e-9):,.0f} changes/s)"
    )
    _tell(args, f"into Redis at {args.redis.shown}")
    return 0


def _follow(args: argparse.Namespace) -> int:
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    quarantine = Quarantine(Path(args.quarantine), append=True)
    if args.lease <= 0:
        raise CommandFailed(f"--lease must be more than 0 seconds, not {args.lease:g}", exit_code=2)
    options = FollowOptions(
        limit=args.limit,
        poll_seconds=args.poll,
        timeout_seconds=args.timeout,
        max_page_bytes=args.max_page_bytes,
        lease_seconds=args.lease,
    )
    try:
        stats = follow(_client(args), args.url, stop, quarantine, options)
    except (NoSnapshot, FeedError) as error:
        raise CommandFailed(str(error)) from None
    finally:
        quarantine.close()
    bad = f"{stats.bad_rows} bad{_cut(stats.truncated_rows)}"
    if args.json:
        summary = {
            "after": stats.after,
            "applied": stats.applied.applied,
            "stale": stats.applied.stale,
            "bad_rows": stats.bad_rows,
            "truncated_rows": stats.truncated_rows,
            "requests": stats.requests,
            "errors": stats.errors,
            "refused_pages": stats.refused_pages,
        }
        print(json.dumps(summary))
        _tell(args, f"into Redis at {args.redis.shown}")
        return 0
    print(
        f"stopped after seq {stats.after}: applied {stats.applied.applied:,} changes "
        f"({stats.applied.stale:,} stale, {bad}) in {stats.requests} requests, {stats.errors} errors "
        f"({stats.refused_pages} pages refused)"
    )
    _tell(args, f"into Redis at {args.redis.shown}")
    return 0


def _status(args: argparse.Namespace) -> int:
    client = _client(args)
    state = read_state(client)
    lease = read_lease(client)
    cursor = client.get(keys.FOLLOW_CURSOR)
    following = cast(bytes | None, client.get(keys.FOLLOWING))
    memory = client.info("memory")
    status = {
        "redis_url": url_shown(args.redis.value),
        "redis_url_from": args.redis.source,
        "snapshot_id": state.snapshot_id or None,
        "generation": state.generation,
        "watermark_seq": state.watermark_seq,
        "applied_seq": state.applied_seq,
        "registry_version": state.registry_version if state.loaded else None,
        "record_count": state.record_count,
        "age_seconds": round(time.time() - state.switched_at, 1) if state.generation else None,
        "follow_after": int(cursor) if cursor else None,
        "follow_lease": following.decode(errors="replace") if following else None,
        "loading": lease.description if lease is not None else None,
        "change_log_length": client.xlen(keys.CHANGES),
        "used_memory": memory["used_memory"],
        "used_memory_human": memory["used_memory_human"],
    }
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        print(format_status(args.redis, status))
    return 0 if state.generation is not None else 1


def _age(seconds: float) -> str:
    minutes, second = divmod(int(seconds), 60)
    hours, minute = divmod(minutes, 60)
    days, hour = divmod(hours, 24)
    if days:
        return f"{days} d {hour} h"
    if hours:
        return f"{hours} h {minute} min"
    return f"{minutes} min {second} s" if minutes else f"{second} s"


def format_status(where: Address, status: dict[str, Any]) -> str:
    """What ``status`` found, for people: one fact a line, the Redis it read first."""
    if status["generation"] is None:
        loaded = [("registry", "nothing loaded (gatekeeper-loader snapshot FILE loads one)")]
    else:
        loaded = [
            ("snapshot", f"{status['snapshot_id']} (generation {status['generation']})"),
            ("registry version", status["registry_version"] or "not loaded"),
            ("practitioners", f"{status['record_count']:,}"),
            ("seqs", f"watermark {status['watermark_seq']}, applied up to {status['applied_seq']}"),
            ("updated", f"{_age(status['age_seconds'])} ago (the snapshot's switch)"),
        ]
    follow_after = status["follow_after"]
    facts = [
        ("redis", where.shown),
        *loaded,
        ("follow", "not started" if follow_after is None else f"applied the feed up to seq {follow_after}"),
        ("follow lease", status["follow_lease"] or "not held (no follow running)"),
        ("change log", f"{status['change_log_length']:,} entries"),
        ("loading", status["loading"] or "no load in progress"),
        ("memory", status["used_memory_human"]),
    ]
    width = max(len(name) for name, _ in facts)
    return "\n".join(f"{name.ljust(width)}  {value}" for name, value in facts)


def _generate(args: argparse.Namespace) -> int:
    from loader.generate import generate

    started = time.monotonic()
    directory = Path(args.directory)
    directory.mkdir(parents=True, exist_ok=True)
    try:
        registry = generate(directory, args.people, seed=args.seed, changes=args.changes, compress=args.gzip)
    except ValueError as error:  # a count out of range
        raise CommandFailed(str(error), exit_code=2) from None
    if args.json:
        summary = {
            "people": registry.people,
            "rows": registry.rows,
            "watermark_seq": registry.watermark_seq,
            "snapshot": str(registry.snapshot),
            "change_files": [str(path) for path in registry.change_files],
            "last_change_seq": registry.last_change_seq,
        }
        print(json.dumps(summary))
        return 0
    print(
        f"generated {registry.people:,} practitioners ({registry.rows:,} rows, watermark {registry.watermark_seq}) "
        f"in {registry.snapshot} and {len(registry.change_files)} change files up to seq {registry.last_change_seq} "
        f"in {time.monotonic() - started:.1f} s"
    )
    return 0


def _feed_server(args: argparse.Namespace) -> int:
    from loader.feed import serve_feed

    if args.publish and not Path(args.publish).is_file():
        raise CommandFailed(f"--publish {args.publish}: no such file", exit_code=2)
    try:
        serve_feed(
            Path(args.directory),
            host=args.host,
            port=args.port,
            publish=Path(args.publish) if args.publish else None,
            publish_after=args.publish_after,
        )
    except NotADirectoryError as error:
        raise CommandFailed(str(error), exit_code=2) from None
    except ValueError as error:  # not a loopback address
        raise CommandFailed(str(error), exit_code=2) from None
    except OSError as error:
        raise CommandFailed(f"cannot listen on {args.host}:{args.port}: {error.strerror}") from None
    return 0


# The global options, by destination; each command says which it uses, and one it does not
# use is refused rather than silently ignored.
_GLOBAL_FLAGS = {"redis_url": "--redis-url", "json": "--json"}
_REDIS_AND_JSON = frozenset(_GLOBAL_FLAGS)


def _global_options(*, top: bool) -> argparse.ArgumentParser:
    """The options every command takes, before or after its name (``top``: for the main parser)."""
    options = argparse.ArgumentParser(add_help=False)
    group = options.add_argument_group("global options (before or after the command)")
    global_option(
        group,
        "--redis-url",
        top=top,
        help=f"the eligibility cache (else env REDIS_URL, else the running scripts/demo's, else {defaults.REDIS_URL})",
    )
    global_option(group, "--json", action="store_true", top=top, help="print the result for machines: JSON")
    return options


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``gatekeeper-loader``."""
    parser = argparse.ArgumentParser(
        prog="gatekeeper-loader",
        description=__doc__,
        formatter_class=HelpFormatter,
        parents=[_global_options(top=True)],
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for_subcommand = _global_options(top=False)

    def command(
        name: str, help_text: str, run: Callable[[argparse.Namespace], int], uses: frozenset[str] = _REDIS_AND_JSON
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name, help=help_text, description=help_text, parents=[for_subcommand], formatter_class=HelpFormatter
        )
        sub.set_defaults(run=run, uses=uses)
        return sub

    snapshot = command("snapshot", "load a full snapshot (.csv or .csv.gz beside its manifest)", _snapshot)
    snapshot.add_argument("path", help="the snapshot file; its manifest is PATH.manifest.json")
    snapshot.add_argument("--force", action="store_true", help="switch even if a check fails")
    snapshot.add_argument(
        "--max-bad-share", type=float, default=DEFAULT_MAX_BAD_SHARE, help="refuse when more rows than this are bad"
    )
    snapshot.add_argument(
        "--max-shrink",
        type=float,
        default=DEFAULT_MAX_SHRINK,
        help="refuse when the practitioner count would shrink by more than this share",
    )
    snapshot.add_argument("--quarantine", help="bad-row report (default: <snapshot>.quarantine.jsonl)")

    apply = command("apply", "apply change-feed files (JSON Lines), any order, idempotently", _apply)
    apply.add_argument("paths", nargs="+", metavar="PATH", help="change files")
    apply.add_argument("--quarantine", default="changes.quarantine.jsonl", help="bad-line report (one per run)")

    follow_command = command("follow", "pull the HTTP change feed until SIGTERM", _follow)
    follow_command.add_argument("url", help="feed base URL; GET <url>/v1/changes?after=&limit=")
    follow_command.add_argument("--limit", type=int, default=1000, help="changes asked for per request")
    follow_command.add_argument("--poll", type=float, default=1.0, help="seconds between polls when caught up")
    follow_command.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT_SECONDS, help="seconds for a whole request, body included"
    )
    follow_command.add_argument(
        "--max-page-bytes", type=int, default=DEFAULT_MAX_PAGE_BYTES, help="a larger answer is refused"
    )
    follow_command.add_argument("--quarantine", default="follow.quarantine.jsonl", help="appended to, never truncated")
    follow_command.add_argument(
        "--lease",
        type=float,
        default=DEFAULT_FOLLOW_LEASE_SECONDS,
        help="seconds after its last renewal that a follow which stopped renewing the follow lease is taken "
        "over by a standby (one follow applies changes at a time)",
    )

    command("status", "what is loaded, and in which Redis; exit 1 when nothing is", _status)

    generate = command(
        "generate", "write a synthetic registry (snapshot, manifest, change files)", _generate, frozenset({"json"})
    )
    generate.add_argument("directory", help="created if missing")
    generate.add_argument("--people", type=int, default=10_000, help="practitioners")
    generate.add_argument("--changes", type=int, help="change-feed records (default: people / 100)")
    generate.add_argument("--seed", type=int, default=1, help="the same seed writes the same registry")
    generate.add_argument("--gzip", action="store_true", help="write .csv.gz")

    feed = command(
        "feed-server", "serve change files over HTTP for demos and tests of follow", _feed_server, frozenset()
    )
    feed.add_argument("directory", help="its *.jsonl change files are served, re-read when they change")
    feed.add_argument("--host", default="127.0.0.1", help="a loopback address")
    feed.add_argument("--port", type=int, default=8808, help="0: any free port (printed)")
    feed.add_argument(
        "--publish", metavar="FILE", help="a change file to publish (copy into DIRECTORY) --publish-after seconds in"
    )
    feed.add_argument("--publish-after", type=float, default=60.0, help="seconds before --publish's changes appear")
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``gatekeeper-loader``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    args.redis = redis_address(args.redis_url, os.environ)  # the one place that reads the environment
    sys.exit(_run(args))


def _run(args: argparse.Namespace) -> int:
    """Run the command; an expected failure is one line ``gatekeeper-loader COMMAND: what``, never a traceback."""

    def described(error: Exception) -> str | None:
        # A file named on the command line; any other OSError is unexpected: keep its traceback.
        return console.file_error(error) if isinstance(error, OSError) and error.filename is not None else None

    def run() -> int:
        for name, flag in _GLOBAL_FLAGS.items():
            if name not in args.uses and getattr(args, name) not in (None, False):
                raise CommandFailed(f"{flag} means nothing to this command", exit_code=2)
        return int(args.run(args))

    return console.run_command(f"gatekeeper-loader {args.command}", run, lambda: args.redis.shown, described)
