"""Prometheus metrics: the named metric objects, the RPC duration histogram, the HTTP endpoint.

A leaf: it imports nothing of the gatekeeper but the generated protobuf names. Stores and
the audit keep their own counters (plain objects, never replaced); the server hands them to
a :class:`ServerState`, and the collector reads them at scrape time. Each process has its
own metrics (prometheus_client's default registry): with ``--workers N``, worker ``i``
serves them on the metrics port + ``i``. Items decided ``REASON_UNVERIFIED`` are counted by
``gatekeeper_item_decisions`` like every other reason.
"""

from __future__ import annotations

import asyncio
import bisect
import concurrent.futures
import gc
import itertools
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from gatekeeper.v1 import gatekeeper_pb2 as pb


class CacheCounters(Protocol):
    """What the collector reads of a store's counters (gatekeeper.core.eligibility.StoreStats)."""

    hits: int
    misses: int
    invalidations: int
    degraded_lookups: int
    unverified: int
    redis_errors: dict[str, int]


class AuditCounters(Protocol):
    """What the collector reads of the decision audit's counters."""

    appended: int
    duplicates: int
    spooled: int
    replayed: int
    write_failures: int


DURATION_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
_BOUNDS = [*map(str, DURATION_BUCKETS), "+Inf"]  # the buckets' "le" labels, as prometheus_client writes them

UNRECORDED = Counter(
    "gatekeeper_unrecorded_decisions",
    "Claims whose decision could not be recorded (database and spool unwritable), by what the region policy "
    "did: refused (UNAVAILABLE) or settled (unenforced)",
    ["outcome"],
)
WORKER_RESTARTS = Gauge(
    "gatekeeper_worker_restarts",
    "Times the supervisor restarted this worker (worker i: the metrics port + i) after it died",
)
GC_PAUSE = Histogram(
    "gatekeeper_gc_pause_seconds",
    "Passes of Python's garbage collector in this worker, by generation: each stops every RPC in flight",
    ["generation"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25),
)
RPC_REFUSED = Counter(
    "gatekeeper_rpc_refused",
    "RPCs refused before any work, by method, status code and reason: concurrency_limit (RESOURCE_EXHAUSTED), "
    "request_read_timeout (DEADLINE_EXCEEDED: the request message was not received in time), "
    "deadline_passed (DEADLINE_EXCEEDED: the caller's deadline passed while the request waited)",
    ["method", "code", "reason"],
)


@dataclass
class ServerState:
    """What a running server reports at scrape time."""

    store: CacheCounters | None = None
    near_cache: bool = False  # the store has a near cache: its hit and miss counts mean something
    audit: AuditCounters | None = None
    audit_queued: Callable[[], int] | None = None  # decisions waiting to be written
    audit_spool_bytes: Callable[[], int] | None = None  # bytes of decisions waiting on disk
    registry_updated_at: float | None = None  # epoch seconds; None: no snapshot loaded (or not yet known)
    serving: bool = False


class _ServerCollector(Collector):
    """Reads the state of the servers running in this process (one, but for tests) at scrape time."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._servers: list[ServerState] = []

    def attach(self, state: ServerState) -> None:
        with self._lock:
            self._servers.append(state)

    def detach(self, state: ServerState) -> None:
        with self._lock:
            self._servers = [s for s in self._servers if s is not state]

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            servers = list(self._servers)
        yield from self._cache_metrics(servers)
        yield from self._audit_metrics(servers)
        age = GaugeMetricFamily(
            "gatekeeper_registry_age_seconds",
            "Seconds since the registry data was last updated (snapshot switch or change applied)",
        )
        known = [s.registry_updated_at for s in servers if s.registry_updated_at is not None]
        if known:
            age.add_metric([], max(0.0, self._clock() - min(known)))
        serving = GaugeMetricFamily("gatekeeper_serving", "1 while health reports SERVING")
        if servers:
            serving.add_metric([], float(all(s.serving for s in servers)))
        yield from (age, serving)

    @staticmethod
    def _cache_metrics(servers: list[ServerState]) -> Iterator[Metric]:
        lookups = CounterMetricFamily(
            "gatekeeper_near_cache_lookups", "Practitioner codes looked up in the near cache", labels=["result"]
        )
        invalidations = CounterMetricFamily(
            "gatekeeper_near_cache_invalidations", "Codes dropped from the near cache by change notifications"
        )
        degraded = CounterMetricFamily("gatekeeper_degraded_lookups", "Lookups answered without Redis (degraded mode)")
        unverified = CounterMetricFamily(
            "gatekeeper_unverified_codes", "Practitioner codes degraded mode could not answer for"
        )
        errors = CounterMetricFamily(
            "gatekeeper_redis_errors",
            "Failed Redis operations: lookup (a claim), health (the registry check), changes (the near cache follower)",
            labels=["operation"],
        )
        stores = [s.store for s in servers if s.store is not None]
        caches = [s.store for s in servers if s.store is not None and s.near_cache]
        if caches:
            lookups.add_metric(["hit"], sum(c.hits for c in caches))
            lookups.add_metric(["miss"], sum(c.misses for c in caches))
            invalidations.add_metric([], sum(c.invalidations for c in caches))
        if stores:
            degraded.add_metric([], sum(c.degraded_lookups for c in stores))
            unverified.add_metric([], sum(c.unverified for c in stores))
            for operation in sorted({op for c in stores for op in c.redis_errors}):
                errors.add_metric([operation], sum(c.redis_errors.get(operation, 0) for c in stores))
        yield from (lookups, invalidations, degraded, unverified, errors)

    @staticmethod
    def _audit_metrics(servers: list[ServerState]) -> Iterator[Metric]:
        records = CounterMetricFamily(
            "gatekeeper_audit_records", "Decisions appended to the audit (duplicates of a replay not counted)"
        )
        batches = CounterMetricFamily(
            "gatekeeper_audit_batches",
            "Audit batches by what became of them: spooled (the database away), replayed (from a spool), "
            "duplicate (already stored), failed (a write that failed)",
            labels=["outcome"],
        )
        queued = GaugeMetricFamily("gatekeeper_audit_queued", "Decisions waiting in memory to be written")
        audits = [s.audit for s in servers if s.audit is not None]
        if audits:
            records.add_metric([], sum(a.appended for a in audits))
            batches.add_metric(["spooled"], sum(a.spooled for a in audits))
            batches.add_metric(["replayed"], sum(a.replayed for a in audits))
            batches.add_metric(["duplicate"], sum(a.duplicates for a in audits))
            batches.add_metric(["failed"], sum(a.write_failures for a in audits))
        depths = [s.audit_queued() for s in servers if s.audit_queued is not None]
        if depths:
            queued.add_metric([], sum(depths))
        spool = GaugeMetricFamily(
            "gatekeeper_audit_spool_bytes", "Bytes of decisions in this worker's spool file, waiting for the database"
        )
        sizes = [s.audit_spool_bytes() for s in servers if s.audit_spool_bytes is not None]
        if sizes:
            spool.add_metric([], sum(sizes))
        yield from (records, batches, queued, spool)


SERVERS = _ServerCollector()
REGISTRY.register(SERVERS)

_VERDICT = {v: pb.Verdict.Name(v).removeprefix("VERDICT_") for v in pb.Verdict.values()}
_REASON = {r: pb.Reason.Name(r).removeprefix("REASON_") for r in pb.Reason.values()}
_CLAIM_VERDICT = {v: pb.ClaimVerdict.Name(v).removeprefix("CLAIM_VERDICT_") for v in pb.ClaimVerdict.values()}


# What every RPC counts is counted in plain dicts and lists on the event loop's thread and read
# at scrape time: prometheus_client's Counter and Histogram take a lock for each increment and
# walk the buckets in Python, several calls per RPC. A scrape runs in another thread and may
# see an observation in its bucket before its sum (as prometheus_client's own may).


class _Decisions(Collector):
    """Claims and items decided: ``gatekeeper_claim_decisions``, ``gatekeeper_item_decisions``."""

    def __init__(self) -> None:
        self.claims: dict[int, int] = {}  # ClaimVerdict number -> claims
        self.items: dict[tuple[int, int, bool], int] = {}  # (verdict, reason, enforced) -> items

    def count(self, verdict: int, kinds: Mapping[tuple[int, int, bool], int]) -> None:
        """Count a claim's decision (its ClaimVerdict number) and its items, by (verdict,
        reason, enforced) numbers: the servicer tallies them from the decision itself, so
        nothing walks the response message again."""
        claims, items = self.claims, self.items
        claims[verdict] = claims.get(verdict, 0) + 1
        for key, count in kinds.items():
            items[key] = items.get(key, 0) + count

    def collect(self) -> Iterator[Metric]:
        claims = CounterMetricFamily(
            "gatekeeper_claim_decisions", "Claims decided, by claim verdict", labels=["verdict"]
        )
        for verdict, count in list(self.claims.items()):
            claims.add_metric([_CLAIM_VERDICT.get(verdict, str(verdict))], count)
        items = CounterMetricFamily(
            "gatekeeper_item_decisions",
            "Line items decided, by verdict and reason; enforced=false in monitor mode",
            labels=["verdict", "reason", "enforced"],
        )
        for (verdict, reason, enforced), count in list(self.items.items()):
            labels = [_VERDICT.get(verdict, str(verdict)), _REASON.get(reason, str(reason)), str(enforced).lower()]
            items.add_metric(labels, count)
        yield from (claims, items)


class _Durations(Collector):
    """A histogram of durations (:data:`DURATION_BUCKETS`) by method and status code name."""

    def __init__(self, name: str, documentation: str) -> None:
        self._name, self._documentation = name, documentation
        # (method, code) -> observations per bucket (the last one +Inf), then their sum
        self.counts: dict[tuple[str, str], list[float]] = {}

    def observe(self, method: str, code: str, seconds: float) -> None:
        """One duration, by method ("package.Service/Method") and status code name."""
        counts = self.counts.get((method, code))
        if counts is None:
            counts = self.counts[method, code] = [0.0] * (len(DURATION_BUCKETS) + 2)
        counts[bisect.bisect_left(DURATION_BUCKETS, seconds)] += 1  # a bucket counts durations <= its bound
        counts[-1] += seconds

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self._name, self._documentation, labels=["method", "code"])
        for (method, code), counts in list(self.counts.items()):
            cumulative = list(itertools.accumulate(counts[:-1]))
            family.add_metric([method, code], list(zip(_BOUNDS, cumulative, strict=True)), counts[-1])
        yield family


DECISIONS = _Decisions()
RPC_DURATIONS = _Durations(
    "gatekeeper_rpc_duration_seconds", "Time from receiving a unary RPC to its answer, by method and gRPC status code"
)
HTTP_DURATIONS = _Durations(
    "gatekeeper_http_duration_seconds",
    "Time from a JSON-over-HTTP request's head to its answer, by the RPC it stands for and the gRPC status name",
)
for _collector in (DECISIONS, RPC_DURATIONS, HTTP_DURATIONS):
    REGISTRY.register(_collector)

count_claim = DECISIONS.count
# One unary RPC's duration by method ("package.Service/Method") and status code name.
observe_duration = RPC_DURATIONS.observe
# One JSON-over-HTTP request's duration by its RPC's name and gRPC status code name.
observe_http = HTTP_DURATIONS.observe


def watch_gc_pauses() -> None:
    """Observe every pass of the garbage collector in :data:`GC_PAUSE` from now on."""
    children = [GC_PAUSE.labels(str(generation)) for generation in range(3)]
    started = 0.0

    def on_pass(phase: str, info: dict[str, int]) -> None:
        nonlocal started
        if phase == "start":
            started = time.perf_counter()
        else:
            children[info["generation"]].observe(time.perf_counter() - started)

    gc.callbacks.append(on_pass)


# The metrics endpoint: scrapers are few, so connections beyond this many are closed
# unanswered; each has this long to send its request, then it is closed.
METRICS_MAX_CONNECTIONS = 8
METRICS_READ_SECONDS = 5.0
_MAX_REQUEST_HEAD_BYTES = 8192


def _http_response(status: str, body: bytes, *headers: str) -> bytes:
    head = [f"HTTP/1.1 {status}", f"Content-Length: {len(body)}", "Connection: close", *headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def _answer(request_line: bytes) -> bytes:
    """The response to one request: the metrics for GET /metrics, else 400, 404 or 405."""
    parts = request_line.split(b" ")
    if len(parts) != 3:
        return _http_response("400 Bad Request", b"")
    method, target, _version = parts
    if target.split(b"?", 1)[0] != b"/metrics":
        return _http_response("404 Not Found", b"only /metrics is served here\n", "Content-Type: text/plain")
    if method != b"GET":
        return _http_response("405 Method Not Allowed", b"", "Allow: GET")
    return _http_response("200 OK", generate_latest(REGISTRY), f"Content-Type: {CONTENT_TYPE_LATEST}")


class MetricsEndpoint:
    """GET /metrics in the Prometheus text format, on its own thread and event loop (a busy
    gRPC loop does not delay scrapes). Other paths are 404, other methods 405; at most
    ``max_connections`` at once (more are closed unanswered), each closed when it has not
    sent its request within ``read_seconds``: half-sent connections cannot pile up."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        max_connections: int = METRICS_MAX_CONNECTIONS,
        read_seconds: float = METRICS_READ_SECONDS,
    ) -> None:
        self.max_connections = max_connections
        self.read_seconds = read_seconds
        self._open = 0
        self._loop = asyncio.new_event_loop()
        started: concurrent.futures.Future[int] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._run, args=(host, port, started), name="metrics", daemon=True)
        self._thread.start()
        self.port: int = started.result()

    def _run(self, host: str, port: int, started: concurrent.futures.Future[int]) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            server = self._loop.run_until_complete(
                asyncio.start_server(self._serve, host, port, limit=_MAX_REQUEST_HEAD_BYTES)
            )
        except BaseException as error:  # the port is taken, say: the caller raises it
            started.set_exception(error)
            self._loop.close()
            return
        started.set_result(int(server.sockets[0].getsockname()[1]))
        self._loop.run_forever()
        server.close()
        connections = asyncio.all_tasks(self._loop)
        for task in connections:
            task.cancel()
        self._loop.run_until_complete(asyncio.gather(*connections, return_exceptions=True))
        self._loop.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._open >= self.max_connections:
            writer.close()
            return
        self._open += 1
        try:
            async with asyncio.timeout(self.read_seconds):
                head = await reader.readuntil(b"\r\n\r\n")
                writer.write(_answer(head.split(b"\r\n", 1)[0]))
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass  # half-sent, oversized or gone: closed without an answer
        finally:
            self._open -= 1
            writer.close()

    async def close(self) -> None:
        """Stop serving and release the port."""
        self._loop.call_soon_threadsafe(self._loop.stop)
        await asyncio.to_thread(self._thread.join, 5)
