"""Build, start and stop the gRPC server; ``serve`` runs it until SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import gc
import logging
import os
import select
import signal
import socket
import ssl
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc import aio
from grpc_health.v1 import health, health_pb2
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]  # missing from grpc-stubs
from grpc_reflection.v1alpha import reflection

from gatekeeper import defaults
from gatekeeper.api.admission import Admission
from gatekeeper.api.callers import load_callers
from gatekeeper.api.handlers import add_gatekeeper_servicer, add_health_servicer
from gatekeeper.api.http_json import HttpDoor
from gatekeeper.api.servicer import GatekeeperServicer
from gatekeeper.api.validation import Limits
from gatekeeper.audit.writer import AuditLog
from gatekeeper.cache.store import CachingEligibilityStore, RedisEligibilityStore
from gatekeeper.core import native
from gatekeeper.core.eligibility import EligibilityStore, StoreStats
from gatekeeper.core.errors import CacheUnavailable
from gatekeeper.core.policy import Policy, load_policy
from gatekeeper.core.readiness import readiness
from gatekeeper.ops import metrics
from gatekeeper.ops.tasks import stop_task
from gatekeeper.settings import Settings, SettingsError, split_host_port
from gatekeeper.urls import url_shown
from gatekeeper.v1 import gatekeeper_pb2

log = logging.getLogger(__name__)

SERVICE_NAME = gatekeeper_pb2.DESCRIPTOR.services_by_name["Gatekeeper"].full_name
# gRPC itself refuses messages above this (RESOURCE_EXHAUSTED); between a method's limit
# (max_request_bytes, or max_batch_bytes for CheckClaims) and this, the request is answered
# INVALID_ARGUMENT naming its size, without being decoded.
TRANSPORT_SIZE_FACTOR = 4
# The server pings each connection this often and drops it when the ping is not answered
# within the timeout: a dead peer, or one that stopped reading, frees its streams.
KEEPALIVE_TIME_MS = 60_000
KEEPALIVE_TIMEOUT_MS = 20_000


@dataclass
class GatekeeperServer:
    """A bound, not yet started, gatekeeper server."""

    server: aio.Server
    port: int
    health: health_aio.HealthServicer
    store: EligibilityStore
    settings: Settings
    metrics_state: metrics.ServerState = field(default_factory=metrics.ServerState)
    metrics_endpoint: metrics.MetricsEndpoint | None = field(default=None, repr=False)
    audit: AuditLog | None = None
    admission: Admission | None = None
    http: HttpDoor | None = None  # the JSON-over-HTTP door, with settings.http_listen
    _health_task: asyncio.Task[None] | None = field(default=None, repr=False)
    _activity_task: asyncio.Task[None] | None = field(default=None, repr=False)
    _stopping: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    async def start(self) -> None:
        """Start serving; health turns SERVING once a registry snapshot is present."""
        self.store.start()
        self.metrics_state.store = self.store.stats
        self.metrics_state.near_cache = self.settings.near_cache_entries > 0
        if self.settings.metrics_listen:
            self.metrics_endpoint = metrics.MetricsEndpoint(*split_host_port(self.settings.metrics_listen))
            log.info("metrics on port %d (GET /metrics)", self.metrics_endpoint.port)
        metrics.SERVERS.attach(self.metrics_state)
        if self.audit is not None:
            self.metrics_state.audit = self.audit.stats
            self.metrics_state.audit_queued = lambda audit=self.audit: audit.queued
            self.metrics_state.audit_spool_bytes = lambda audit=self.audit: audit.spool.size
            self.audit.start()
        await self.server.start()
        if self.http is not None:
            await self.http.start()
            log.info("JSON over HTTP on port %d", self.http.port)
        self._health_task = asyncio.create_task(self._watch_registry(), name="registry-health")
        if self.settings.activity_log_seconds > 0 and self.audit is not None:
            self._activity_task = asyncio.create_task(self._report_activity(self.audit), name="activity-log")

    async def _report_activity(self, audit: AuditLog) -> None:
        """Log, once an interval while claims come, what this worker did: an operator
        watching the log sees the service at work (the metrics say more)."""
        interval = self.settings.activity_log_seconds
        stats, record = self.store.stats, audit.stats
        last = (record.taken, stats.hits, stats.misses, stats.degraded_lookups, record.spooled, record.refused)
        while True:
            await asyncio.sleep(interval)
            now = (record.taken, stats.hits, stats.misses, stats.degraded_lookups, record.spooled, record.refused)
            decided, hits, misses, degraded, spooled, refused = (a - b for a, b in zip(now, last, strict=True))
            last = now
            if decided or refused:
                looked_up = hits + misses
                ratio = f"{100 * hits / looked_up:.1f} %" if looked_up else "-"
                log.info(
                    "activity: %d claim(s) decided in the last %g s; near cache hits %s of %d codes; "
                    "%d lookup(s) in degraded mode; record: %d batch(es) spooled, %d decision(s) refused",
                    decided,
                    interval,
                    ratio,
                    looked_up,
                    degraded,
                    spooled,
                    refused,
                )

    async def _set_health(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for service in ("", SERVICE_NAME):
            await self.health.set(service, status)
        self.metrics_state.serving = serving

    async def _watch_registry(self) -> None:
        """Health follows the registry data's age and whether decisions can be recorded."""
        serving: bool | None = None
        ready = None
        while not self._stopping.is_set():
            try:
                updated_at = await self.store.registry_updated_at()
            except CacheUnavailable as error:  # a Redis blip keeps the last status rather than flapping (counted)
                log.warning("could not check the registry data's age: %s", error)
            except Exception:  # a bug: keep its traceback, and the last status
                log.warning("could not check the registry data's age", exc_info=True)
            else:
                self.metrics_state.registry_updated_at = updated_at
                ready = readiness(updated_at, time.time(), self.settings.max_registry_age_seconds)
            if ready is not None:
                recording = self.audit is None or self.audit.recording
                now_serving = ready.serving and recording
                if now_serving != serving:
                    serving = now_serving
                    await self._set_health(serving)
                    if serving:
                        log.info("health: SERVING (%s)", ready.why)
                    elif not recording:
                        log.warning("health: NOT_SERVING (decisions cannot be recorded)")
                    else:
                        log.warning("health: NOT_SERVING (%s)", ready.why)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.settings.health_poll_seconds)

    async def stop(self, grace: float | None = None) -> None:
        """Turn health NOT_SERVING, let RPCs in flight finish within ``grace``, close."""
        # The flag as well as the cancel: the Redis client can swallow a cancellation that
        # lands mid-command, and the loop would then poll on forever.
        self._stopping.set()
        if self._health_task is not None:
            await stop_task(self._health_task)
        if self._activity_task is not None:
            await stop_task(self._activity_task)
        await self.health.enter_graceful_shutdown()
        grace = self.settings.shutdown_grace_seconds if grace is None else grace
        if self.http is None:
            await self.server.stop(grace)
        else:
            await asyncio.gather(self.server.stop(grace), self.http.stop(grace))
        if self.admission is not None:
            await self.admission.close()
        metrics.SERVERS.detach(self.metrics_state)
        if self.metrics_endpoint is not None:
            await self.metrics_endpoint.close()
        if self.audit is not None:  # after the last RPC: every decision is written or spooled
            await self.audit.close()
        await self.store.close()


def build_store(settings: Settings, on_warmed: Callable[[], None] | None = None) -> EligibilityStore:
    """Redis behind a near cache, or Redis alone when the near cache is turned off;
    ``on_warmed`` is called each time the near cache has been warmed from a snapshot."""
    if settings.near_cache_entries > 0:
        return CachingEligibilityStore.from_url(
            settings.redis_url,
            settings.near_cache_entries,
            settings.near_cache_max_age_seconds,
            settings.redis_timeout_seconds,
            settings.degraded_max_age_seconds,
            settings.redis_replica_reads,
            warm=settings.near_cache_warm,
            on_warmed=on_warmed,
        )
    degraded = settings.degraded_max_age_seconds > 0
    return RedisEligibilityStore.from_url(
        settings.redis_url, settings.redis_timeout_seconds, degraded, settings.redis_replica_reads
    )


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS credentials from the settings' files (client certificates required with a client
    CA); None for plain text, which is for local development only and says so loudly."""
    if settings.tls_cert_path is None or settings.tls_key_path is None:
        log.warning(
            "PLAIN TEXT: no --tls-cert, so claims travel unencrypted and callers are not identified. "
            "This mode is for local development only; never run it in production."
        )
        return None
    key, cert = settings.tls_key_path.read_bytes(), settings.tls_cert_path.read_bytes()
    if settings.tls_client_ca_path is None:
        log.warning("TLS without --tls-client-ca: callers are not identified and may submit for any institution")
        return grpc.ssl_server_credentials([(key, cert)])
    client_ca = settings.tls_client_ca_path.read_bytes()
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=client_ca, require_client_auth=True)


def http_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The JSON-over-HTTP door's TLS: the gRPC port's certificate, and with a client CA the
    same demand for a client certificate it signed; None for plain text (as for gRPC)."""
    if settings.tls_cert_path is None or settings.tls_key_path is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(settings.tls_cert_path, settings.tls_key_path)
    context.set_alpn_protocols(["http/1.1"])
    if settings.tls_client_ca_path is not None:
        context.load_verify_locations(settings.tls_client_ca_path)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def connection_options(settings: Settings) -> list[tuple[str, int]]:
    """The gRPC core options that bound what one connection can hold.

    Streams beyond the per-connection limit are refused (RST_STREAM) by gRPC itself, counted
    against the limit as sent, not as acknowledged, so a burst sent before the server's
    settings arrive is refused too. A connection is closed after its maximum age, RPCs in
    flight given the grace; a peer that does not answer keepalive pings is cut off sooner.
    """
    return [
        ("grpc.max_concurrent_streams", settings.max_streams_per_connection),
        ("grpc.max_connection_age_ms", int(settings.max_connection_age_seconds * 1000)),
        ("grpc.max_connection_age_grace_ms", int(settings.max_connection_age_grace_seconds * 1000)),
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    ]


async def create_server(
    settings: Settings,
    store: EligibilityStore | None = None,
    policy: Policy | None = None,
) -> GatekeeperServer:
    """Build the server and bind ``settings.listen`` (port 0 picks a free port)."""
    if store is None:
        store = build_store(settings)
    if policy is None:
        policy = load_policy(settings.policy_path)
    callers = load_callers(settings.callers_path)
    credentials = server_credentials(settings)
    transport_limit = max(settings.max_request_bytes, settings.max_batch_bytes) * TRANSPORT_SIZE_FACTOR
    server = aio.server(
        options=[
            ("grpc.max_receive_message_length", transport_limit),
            # Workers share one port; a single server must notice a port already in use.
            ("grpc.so_reuseport", 1 if settings.workers > 1 else 0),
            *connection_options(settings),
        ],
    )
    limits = Limits(settings.max_items, settings.max_request_bytes, settings.max_batch_claims, settings.max_batch_bytes)
    audit = AuditLog.from_url(settings.database_url, settings.audit_spool_dir, settings.database_timeout_seconds)
    # Overload is refused at once (RESOURCE_EXHAUSTED) rather than queued without bound; the
    # admission counts it, and bounds the time a request may take to arrive. Its slots are
    # the HTTP door's too.
    admission = Admission(settings.max_concurrent_rpcs, settings.request_read_seconds)
    servicer = GatekeeperServicer(store, policy, audit, limits, callers=callers, c_path=settings.c_path)
    add_gatekeeper_servicer(servicer, server, admission, limits, c_path=settings.c_path)
    health_servicer = health_aio.HealthServicer()
    add_health_servicer(health_servicer, server, admission)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    if credentials is None:
        port = server.add_insecure_port(settings.listen)
    else:
        port = server.add_secure_port(settings.listen, credentials)
    gk = GatekeeperServer(server, port, health_servicer, store, settings, audit=audit, admission=admission)
    if settings.http_listen:
        # The same worker, the same servicer and the same slots as gRPC: no gRPC hop.
        gk.http = HttpDoor(
            servicer,
            admission,
            limits,
            serving=lambda: gk.metrics_state.serving,
            request_read_seconds=settings.request_read_seconds,
            max_connection_age_seconds=settings.max_connection_age_seconds,
            idle_seconds=defaults.HTTP_IDLE_SECONDS,
            ssl_context=http_ssl_context(settings),
        )
        host, http_port = split_host_port(settings.http_listen)
        await gk.http.bind(host, http_port, reuse_port=settings.workers > 1)
    await gk._set_health(False)
    return gk


STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def stop_event() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT; call it first thing in a worker (see run_workers).

    A worker is forked with these signals blocked: one sent while it was starting is
    delivered now, to the handler, instead of killing it half started.
    """
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, stopping.set)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    return stopping


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run a worker's event loop: uvloop's (libuv), which costs less per RPC than asyncio's
    own; asyncio's where uvloop is not installed."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; a source tree without it still runs
        asyncio.run(main)
        return
    uvloop.run(main)


def settle_the_heap() -> None:
    """After start-up: move everything alive now (modules, the servicer) out of the garbage
    collector's sight. The thresholds stay Python's: each RPC leaves a few objects in a
    reference cycle inside gRPC, which only the collector frees, and a pass's pause grows
    with what it finds. A youngest generation of 50,000 made passes of 20-60 ms, each a
    stall of every RPC in flight; of 700, nearly all passes take under 5 ms, for about the
    same total time (the passes are in bench/results/serving.md). The records a worker holds are not tracked at all
    (PractitionerRecord is a gc=False struct). Every pass is observed from here on
    (``gatekeeper_gc_pause_seconds``)."""
    gc.collect()
    gc.freeze()
    metrics.watch_gc_pauses()


async def _serve_one(settings: Settings) -> None:
    stopping = stop_event()
    loop = asyncio.get_running_loop()
    # What warming read stays for the snapshot's life: out of the collector's sight, or
    # each full collection walks the near cache (~20 ms a pass with a million entries).
    gk = await create_server(settings, build_store(settings, on_warmed=gc.freeze))
    await gk.start()
    redis_url = url_shown(settings.redis_url)  # never a password in the log
    claim_path = "plain claims in C"
    if not settings.c_path:
        claim_path = "every claim in Python: --no-c-path"
    elif not native.BUILT:
        claim_path = "every claim in Python: gatekeeper._speedups was not built"
    log.info("gatekeeper pid %d listening on port %d (redis %s; %s)", os.getpid(), gk.port, redis_url, claim_path)
    settle_the_heap()
    counted = StoreCounts(gk.store)
    # SIGUSR1: log the store's counts since the last SIGUSR1 (the counters themselves run on).
    loop.add_signal_handler(signal.SIGUSR1, counted.log)
    await stopping.wait()
    log.info("draining: health NOT_SERVING, up to %.0f s for RPCs in flight", settings.shutdown_grace_seconds)
    await gk.stop()
    counted.log()
    log.info("stopped")


class StoreCounts:
    """Logs what a store counted since it last logged, without touching the counters that
    metrics read (the benchmark reads these lines after its warm-up)."""

    def __init__(self, store: EligibilityStore) -> None:
        self._store = store
        self._logged = store.stats.copy()

    def since_last(self) -> tuple[StoreStats, list[float]]:
        """The counts since the last call, and the notification lags measured meanwhile."""
        now = self._store.stats.copy()
        counts, self._logged = now.since(self._logged), now
        return counts, sorted(self._store.notification_lags_ms())

    def log(self) -> None:
        """One log line of :meth:`since_last`."""
        stats, lags = self.since_last()
        log.info(
            "near cache: hits=%d misses=%d invalidations=%d clears=%d "
            "notification_lag_ms p50=%.1f p99=%.1f max=%.1f n=%d",
            stats.hits,
            stats.misses,
            stats.invalidations,
            stats.clears,
            lags[len(lags) // 2] if lags else 0.0,
            lags[int(len(lags) * 0.99)] if lags else 0.0,
            lags[-1] if lags else 0.0,
            len(lags),
        )


class PortTaken(Exception):
    """Another process serves or holds the port; the message says which port."""


# Held by the first gatekeeper on a port (and inherited by its workers) for as long as any
# of its processes lives: an abstract Unix socket name, freed by the kernel when the last
# holder exits, and private to the network namespace, like the port.
_PORT_LOCK = "\0settlement-gatekeeper:{port}"


def claim_ports(settings: Settings) -> socket.socket | None:
    """Make sure this instance is the only one on its ports, before any worker starts.

    Workers share the gRPC port through SO_REUSEPORT, which lets any process of the same
    user join: a second instance would silently take every other connection. The lock
    refuses a second gatekeeper (even one starting at the same moment); the probe, a bind
    without SO_REUSEPORT, refuses a port any other program listens on (and the metrics
    ports, which workers bind alone). Returns the lock, to be kept open; PortTaken if not.
    """
    host, port = split_host_port(settings.listen)
    if port == 0:
        return None
    lock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        lock.bind(_PORT_LOCK.format(port=port))
    except OSError:
        lock.close()
        raise PortTaken(f"port {port} is already served by another gatekeeper on this host") from None
    try:
        _probe(host, port, "gRPC")
        if settings.http_listen:
            _probe(*split_host_port(settings.http_listen), "HTTP")
        if settings.metrics_listen:
            metrics_host, metrics_port = split_host_port(settings.metrics_listen)
            for index in range(settings.workers if metrics_port else 0):
                _probe(metrics_host, metrics_port + index, "metrics")
    except PortTaken:
        lock.close()
        raise
    return lock


def _probe(host: str, port: int, what: str) -> None:
    """PortTaken when something listens on ``host:port`` (a bind without SO_REUSEPORT fails)."""
    try:
        addresses = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        return  # gRPC reports a host it cannot resolve
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # connections in TIME_WAIT are no holder
            try:
                probe.bind(address)
            except OSError as error:
                if error.errno == errno.EADDRINUSE:
                    raise PortTaken(f"the {what} port {port} is in use by another process") from None
                # Another problem (no IPv6 here, say) is for the real bind to report.


def serve(settings: Settings) -> int:
    """Run ``settings.workers`` server processes on one port until SIGTERM or SIGINT."""
    if settings.workers > 1 and settings.listen.endswith(":0"):
        log.error("--workers > 1 needs a fixed port: each worker binds the same one")
        return 2
    if settings.workers > 1 and settings.http_listen.endswith(":0"):
        log.error("--workers > 1 needs a fixed HTTP port: each worker binds the same one")
        return 2
    if settings.workers > 1 and settings.metrics_listen.endswith(":0"):
        log.error("--workers > 1 needs a fixed metrics port: worker i serves its metrics on that port + i")
        return 2
    try:
        lock = claim_ports(settings)
    except (PortTaken, SettingsError) as error:
        log.error("cannot serve: %s", error)
        return 2
    try:
        return run_workers(settings.workers, lambda index: run_loop(_serve_one(settings.for_worker(index))))
    finally:
        if lock is not None:
            lock.close()


# A worker that dies is restarted after a backoff that doubles with each restart in the
# window, up to the cap. More than MAX_RESTARTS in RESTART_WINDOW_SECONDS is something a
# restart does not mend: the supervisor stops the service (exit 1) for systemd or
# Kubernetes to act on, as before.
RESTART_BACKOFF_SECONDS = 0.5
RESTART_BACKOFF_MAX_SECONDS = 30.0
MAX_RESTARTS = 5
RESTART_WINDOW_SECONDS = 60.0


def run_workers(workers: int, worker: Callable[[int], None]) -> int:
    """Run ``worker(index)`` in ``workers`` processes until SIGTERM or SIGINT; 0 when all
    ended well. A worker that dies meanwhile is restarted (see :class:`Supervisor`).

    Workers are forked before any gRPC object exists (gRPC does not survive a fork) and
    share the port through SO_REUSEPORT, so the kernel spreads connections over them. The
    stop signals stay blocked from before the fork until each worker's handlers are in
    place (``worker`` must call :func:`stop_event`), so a stop during start-up is graceful.
    """
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    if workers <= 1:
        worker(0)
        return 0
    return Supervisor(workers, worker).run()


class Supervisor:
    """The parent of the workers: forwards stop signals, restarts a worker that died."""

    def __init__(self, workers: int, worker: Callable[[int], None], clock: Callable[[], float] = time.monotonic):
        self._workers = workers
        self._worker = worker
        self._clock = clock
        self._children: dict[int, tuple[int, int]] = {}  # pid -> (worker index, pidfd)
        self._due: dict[int, float] = {}  # worker index -> when to restart it
        self._recent_restarts: list[float] = []
        self.restarts = [0] * workers  # per worker index, since the service started
        self._stopping = False
        self._status = 0

    def _start(self, index: int) -> int:
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)  # unblocked by the worker's stop_event()
        supervisor = os.getpid()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            code = 1
            try:
                for signum in (*STOP_SIGNALS, signal.SIGUSR1):  # the supervisor's handlers are not the worker's
                    signal.signal(signum, signal.SIG_DFL)
                for _, pidfd in self._children.values():
                    os.close(pidfd)
                _die_with_parent(supervisor)
                metrics.WORKER_RESTARTS.set(self.restarts[index])
                self._worker(index)
                code = 0
            finally:
                os._exit(code)
        self._children[pid] = (index, os.pidfd_open(pid))
        return pid

    def _forward(self, signum: int, _frame: object = None) -> None:
        if signum in STOP_SIGNALS:
            self._stopping = True
        for child in self._children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signum)

    def run(self) -> int:
        """Start the workers and supervise them until they have all stopped; the exit status."""
        for index in range(self._workers):
            self._start(index)
        signal.signal(signal.SIGTERM, self._forward)
        signal.signal(signal.SIGINT, self._forward)
        signal.signal(signal.SIGUSR1, self._forward)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # now forwarded, not fatal
        while self._children or (self._due and not self._stopping):
            timeout = None
            if self._due and not self._stopping:
                timeout = max(0.0, min(self._due.values()) - self._clock())
            pidfds = [pidfd for _, pidfd in self._children.values()]
            if pidfds:
                select.select(pidfds, [], [], timeout)  # a signal interrupts it; PEP 475 resumes it
            elif timeout:
                time.sleep(timeout)
            self._reap()
            if not self._stopping:
                self._restart_due()
        return self._status

    def _reap(self) -> None:
        for pid, (index, pidfd) in list(self._children.items()):
            ended, wait_status = os.waitpid(pid, os.WNOHANG)
            if ended == 0:
                continue
            os.close(pidfd)
            del self._children[pid]
            code = os.waitstatus_to_exitcode(wait_status)
            if self._stopping:
                if code != 0:
                    log.error("worker %d (pid %d) %s while stopping", index, pid, _how_it_ended(code))
                    self._status = 1
            else:
                self._died(index, pid, code)

    def _died(self, index: int, pid: int, code: int) -> None:
        now = self._clock()
        self._recent_restarts = [t for t in self._recent_restarts if now - t < RESTART_WINDOW_SECONDS]
        how = _how_it_ended(code)
        if len(self._recent_restarts) >= MAX_RESTARTS:
            log.error(
                "worker %d (pid %d) %s; %d restarts in the last %.0f s: giving up, stopping the service",
                index,
                pid,
                how,
                len(self._recent_restarts),
                RESTART_WINDOW_SECONDS,
            )
            self._status = 1
            self._forward(signal.SIGTERM)
            return
        self._recent_restarts.append(now)
        self.restarts[index] += 1
        delay = min(RESTART_BACKOFF_MAX_SECONDS, RESTART_BACKOFF_SECONDS * 2 ** (len(self._recent_restarts) - 1))
        self._due[index] = now + delay
        log.error(
            "worker %d (pid %d) %s; restarting it in %.1f s (restart %d of at most %d per %.0f s; "
            "worker_restarts=%d); the other workers keep serving",
            index,
            pid,
            how,
            delay,
            len(self._recent_restarts),
            MAX_RESTARTS,
            RESTART_WINDOW_SECONDS,
            sum(self.restarts),
        )

    def _restart_due(self) -> None:
        now = self._clock()
        for index, when in list(self._due.items()):
            if when <= now:
                del self._due[index]
                pid = self._start(index)
                signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
                log.warning("worker %d restarted as pid %d", index, pid)


def _how_it_ended(code: int) -> str:
    return f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with {code}"


def _die_with_parent(parent: int) -> None:
    """Have the kernel send this worker SIGTERM when the supervisor dies (even by SIGKILL):
    orphaned workers would hold the port for ever. Linux only; elsewhere nothing happens."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != parent:  # the supervisor died before prctl: nobody will send it
        os.kill(os.getpid(), signal.SIGTERM)
