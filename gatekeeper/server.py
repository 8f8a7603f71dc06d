"""Build, start and stop the gRPC server; ``serve`` runs it until SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from dataclasses import dataclass, field

from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]  # missing from grpc-stubs
from grpc_reflection.v1alpha import reflection

from gatekeeper.audit import AuditLog
from gatekeeper.handlers import add_gatekeeper_servicer
from gatekeeper.nearcache import CachingEligibilityStore
from gatekeeper.policy import Policy, load_policy
from gatekeeper.servicer import GatekeeperServicer
from gatekeeper.settings import Settings
from gatekeeper.store import EligibilityStore, RedisEligibilityStore
from gatekeeper.tasks import stop_task
from gatekeeper.v1 import gatekeeper_pb2
from gatekeeper.validation import Limits

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
    audit: AuditLog | None = None
    _health_task: asyncio.Task[None] | None = field(default=None, repr=False)

    async def start(self) -> None:
        """Start serving; health turns SERVING once a registry snapshot is present."""
        if isinstance(self.store, CachingEligibilityStore):
            self.store.start()
        if self.audit is not None:
            self.audit.start()
        await self.server.start()
        self._health_task = asyncio.create_task(self._watch_registry(), name="registry-health")

    async def _set_health(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for service in ("", SERVICE_NAME):
            await self.health.set(service, status)

    async def _watch_registry(self) -> None:
        serving: bool | None = None
        while True:
            try:
                loaded = await self.store.registry_loaded()
            except Exception:  # a Redis blip keeps the last status rather than flapping
                log.warning("could not check whether a registry snapshot is loaded", exc_info=True)
            else:
                if loaded != serving:
                    serving = loaded
                    await self._set_health(serving)
                    log.info("health: %s", "SERVING" if serving else "NOT_SERVING (no registry snapshot)")
            await asyncio.sleep(self.settings.health_poll_seconds)

    async def stop(self, grace: float | None = None) -> None:
        """Turn health NOT_SERVING, let RPCs in flight finish within ``grace``, close."""
        if self._health_task is not None:
            await stop_task(self._health_task)
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self.settings.shutdown_grace_seconds if grace is None else grace)
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
    transport_limit = settings.max_request_bytes * TRANSPORT_SIZE_FACTOR
    server = aio.server(
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
    servicer = GatekeeperServicer(store, policy, limits, audit=audit)
    add_gatekeeper_servicer(servicer, server)
    health_servicer = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    port = server.add_insecure_port(settings.listen)
    gk = GatekeeperServer(server, port, health_servicer, store, settings, audit)
    await gk._set_health(False)
    return gk


async def _serve_one(settings: Settings) -> None:
    gk = await create_server(settings)
    await gk.start()
    log.info("gatekeeper pid %d listening on port %d (redis %s)", os.getpid(), gk.port, settings.redis_url)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    await stopping.wait()
    log.info("draining: health NOT_SERVING, up to %.0f s for RPCs in flight", settings.shutdown_grace_seconds)
    await gk.stop()
    log.info("stopped")


def _run_worker(settings: Settings) -> int:
    asyncio.run(_serve_one(settings))
    return 0


def serve(settings: Settings) -> int:
    """Run ``settings.workers`` server processes on one port until SIGTERM or SIGINT.

    Workers are forked before any gRPC object exists (gRPC does not survive a fork) and
    share the port through SO_REUSEPORT, so the kernel spreads connections over them.
    """
    if settings.workers <= 1:
        return _run_worker(settings)
    if settings.listen.endswith(":0"):
        log.error("--workers > 1 needs a fixed port: each worker binds the same one")
        return 2
    children: set[int] = set()
    for _ in range(settings.workers):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            code = 1
            try:
                code = _run_worker(settings)
            finally:
                os._exit(code)
        children.add(pid)

    stopping = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
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


def main_serve(settings: Settings) -> None:
    """Entry point used by the CLI."""
    sys.exit(serve(settings))
