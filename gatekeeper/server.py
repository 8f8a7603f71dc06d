"""Build, start and stop the gRPC server; ``serve`` runs it until SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]  # missing from grpc-stubs
from grpc_reflection.v1alpha import reflection

from gatekeeper.api.callers import load_callers
from gatekeeper.api.handlers import add_gatekeeper_servicer
from gatekeeper.api.servicer import GatekeeperServicer
from gatekeeper.api.validation import Limits
from gatekeeper.audit.writer import AuditLog
from gatekeeper.cache.store import CachingEligibilityStore, RedisEligibilityStore
from gatekeeper.core.eligibility import EligibilityStore, StoreStats
from gatekeeper.core.errors import CacheUnavailable
from gatekeeper.core.policy import Policy, load_policy
from gatekeeper.core.readiness import readiness
from gatekeeper.ops import metrics
from gatekeeper.ops.tasks import stop_task
from gatekeeper.settings import Settings, split_host_port
from gatekeeper.v1 import gatekeeper_pb2

log = logging.getLogger(__name__)

SERVICE_NAME = gatekeeper_pb2.DESCRIPTOR.services_by_name["Gatekeeper"].full_name
# gRPC itself refuses messages above this (RESOURCE_EXHAUSTED); between max_request_bytes
# and this, the servicer answers INVALID_ARGUMENT naming the size.
TRANSPORT_SIZE_FACTOR = 4


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
    _health_task: asyncio.Task[None] | None = field(default=None, repr=False)
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
            self.audit.start()
        await self.server.start()
        self._health_task = asyncio.create_task(self._watch_registry(), name="registry-health")

    async def _set_health(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for service in ("", SERVICE_NAME):
            await self.health.set(service, status)
        self.metrics_state.serving = serving

    async def _watch_registry(self) -> None:
        serving: bool | None = None
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
                if ready.serving != serving:
                    serving = ready.serving
                    await self._set_health(serving)
                    if serving:
                        log.info("health: SERVING (%s)", ready.why)
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
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self.settings.shutdown_grace_seconds if grace is None else grace)
        metrics.SERVERS.detach(self.metrics_state)
        if self.metrics_endpoint is not None:
            await self.metrics_endpoint.close()
        if self.audit is not None:  # after the last RPC: every decision is written or spooled
            await self.audit.close()
        await self.store.close()


def build_store(settings: Settings) -> EligibilityStore:
    """Redis behind a near cache, or Redis alone when the near cache is turned off."""
    if settings.near_cache_entries > 0:
        return CachingEligibilityStore.from_url(
            settings.redis_url,
            settings.near_cache_entries,
            settings.near_cache_max_age_seconds,
            settings.redis_timeout_seconds,
            settings.degraded_max_age_seconds,
        )
    degraded = settings.degraded_max_age_seconds > 0
    return RedisEligibilityStore.from_url(settings.redis_url, settings.redis_timeout_seconds, degraded)


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
    transport_limit = settings.max_request_bytes * TRANSPORT_SIZE_FACTOR
    server = aio.server(
        interceptors=[metrics.MetricsInterceptor()],
        # Overload is refused at once (RESOURCE_EXHAUSTED) rather than queued without bound.
        maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
        options=[
            ("grpc.max_receive_message_length", transport_limit),
            # Workers share one port; a single server must notice a port already in use.
            ("grpc.so_reuseport", 1 if settings.workers > 1 else 0),
        ],
    )
    limits = Limits(settings.max_items, settings.max_request_bytes, settings.max_batch_claims)
    audit = AuditLog.from_url(settings.redis_url, settings.audit_spool_dir, settings.redis_timeout_seconds)
    add_gatekeeper_servicer(GatekeeperServicer(store, policy, audit, limits, callers=callers), server)
    health_servicer = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    if credentials is None:
        port = server.add_insecure_port(settings.listen)
    else:
        port = server.add_secure_port(settings.listen, credentials)
    gk = GatekeeperServer(server, port, health_servicer, store, settings, audit=audit)
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


async def _serve_one(settings: Settings) -> None:
    stopping = stop_event()
    loop = asyncio.get_running_loop()
    gk = await create_server(settings)
    await gk.start()
    log.info("gatekeeper pid %d listening on port %d (redis %s)", os.getpid(), gk.port, settings.redis_url)
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


def serve(settings: Settings) -> int:
    """Run ``settings.workers`` server processes on one port until SIGTERM or SIGINT."""
    if settings.workers > 1 and settings.listen.endswith(":0"):
        log.error("--workers > 1 needs a fixed port: each worker binds the same one")
        return 2
    if settings.workers > 1 and settings.metrics_listen.endswith(":0"):
        log.error("--workers > 1 needs a fixed metrics port: worker i serves its metrics on that port + i")
        return 2
    return run_workers(settings.workers, lambda index: asyncio.run(_serve_one(settings.for_worker(index))))


def run_workers(workers: int, worker: Callable[[int], None]) -> int:
    """Run ``worker(index)`` in ``workers`` processes until SIGTERM or SIGINT; 0 when all
    ended well.

    Workers are forked before any gRPC object exists (gRPC does not survive a fork) and
    share the port through SO_REUSEPORT, so the kernel spreads connections over them. The
    stop signals stay blocked from before the fork until each worker's handlers are in
    place (``worker`` must call :func:`stop_event`), so a stop during start-up is graceful.
    """
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    if workers <= 1:
        worker(0)
        return 0
    children: set[int] = set()
    for index in range(workers):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            code = 1
            try:
                worker(index)
                code = 0
            finally:
                os._exit(code)
        children.add(pid)

    stopping = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        forward_quietly(signum, _frame)

    def forward_quietly(signum: int, _frame: object) -> None:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGUSR1, forward_quietly)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # now forwarded, not fatal
    status = 0
    while children:
        pid, wait_status = os.wait()
        children.discard(pid)
        code = os.waitstatus_to_exitcode(wait_status)
        if not stopping:
            # A worker that ends on its own leaves the port half served: stop them all,
            # so that the process supervisor (systemd, Kubernetes) restarts the service.
            log.error("worker %d exited with %d; stopping the others", pid, code)
            status = 1
            forward(signal.SIGTERM, None)
        elif code != 0:
            log.error("worker %d exited with %d while stopping", pid, code)
            status = 1
    return status
