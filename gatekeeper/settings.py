"""Service settings: one frozen object, built from flags and environment at the entry point."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from gatekeeper.audit import DEFAULT_SPOOL_DIR
from gatekeeper.nearcache import DEFAULT_DEGRADED_MAX_AGE_SECONDS, DEFAULT_MAX_AGE_SECONDS, DEFAULT_MAX_ENTRIES
from gatekeeper.validation import (
    DEFAULT_MAX_BATCH_BYTES,
    DEFAULT_MAX_BATCH_CLAIMS,
    DEFAULT_MAX_ITEMS,
    DEFAULT_MAX_REQUEST_BYTES,
)

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_SHUTDOWN_GRACE_SECONDS = 10.0
DEFAULT_HEALTH_POLL_SECONDS = 1.0
DEFAULT_REDIS_TIMEOUT_SECONDS = 0.5  # a hung Redis must not hold a claim longer than this
DEFAULT_WORKERS = os.cpu_count() or 1
# Snapshots come daily: one missed load is an alert (gatekeeper_registry_age_seconds), two
# take the service out of rotation rather than let it judge on data days old.
DEFAULT_MAX_REGISTRY_AGE_SECONDS = 2 * 86_400.0


class SettingsError(ValueError):
    """Settings that do not fit together; the message says which."""


# RPCs one worker works on at once; more are refused with RESOURCE_EXHAUSTED. A claim takes
# about a millisecond of CPU, so this many is a few hundred milliseconds of work queued.
DEFAULT_MAX_CONCURRENT_RPCS = 256
# One HTTP/2 connection may carry this many RPCs at once: a single caller cannot take more
# than an eighth of a worker's slots with one connection.
DEFAULT_MAX_STREAMS_PER_CONNECTION = 32
# A caller has this long, from its RPC's headers, to send the whole request message; a stream
# that sends headers and then nothing (or less than it promised) is ended DEADLINE_EXCEEDED.
DEFAULT_REQUEST_READ_SECONDS = 10.0
# Connections are closed (GOAWAY) after this age, RPCs in flight given the grace to finish;
# after that the connection is cut, whatever it still holds (a client that never reads).
# Callers reconnect at once, which also spreads them over workers restarted since.
DEFAULT_MAX_CONNECTION_AGE_SECONDS = 300.0
DEFAULT_MAX_CONNECTION_AGE_GRACE_SECONDS = 30.0


def redis_url_from(environ: Mapping[str, str] = os.environ) -> str:
    """REDIS_URL, else a Redis on this machine: every command takes --redis-url this way."""
    return environ.get("REDIS_URL") or DEFAULT_REDIS_URL


def audit_spool_dir_from(environ: Mapping[str, str] = os.environ) -> Path:
    """GATEKEEPER_AUDIT_SPOOL_DIR, else ./audit-spool."""
    return Path(environ.get("GATEKEEPER_AUDIT_SPOOL_DIR") or DEFAULT_SPOOL_DIR)


def listen_from(environ: Mapping[str, str] = os.environ) -> str:
    """GATEKEEPER_LISTEN, else loopback port 50051."""
    return environ.get("GATEKEEPER_LISTEN") or DEFAULT_LISTEN


def split_host_port(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:9464`` for IPv6) as host and port, or SettingsError."""
    host, separator, port = listen.rpartition(":")
    if not separator or not host or not port.isdigit() or int(port) > 65535:
        raise SettingsError(f"{listen!r} is not HOST:PORT")
    return host.removeprefix("[").removesuffix("]"), int(port)


@dataclass(frozen=True)
class Settings:
    """Everything ``gatekeeper serve`` can be told."""

    redis_url: str = DEFAULT_REDIS_URL
    listen: str = DEFAULT_LISTEN
    policy_path: Path | None = None
    workers: int = 1
    max_items: int = DEFAULT_MAX_ITEMS
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    max_batch_claims: int = DEFAULT_MAX_BATCH_CLAIMS
    max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES  # a whole CheckClaims request
    max_concurrent_rpcs: int = DEFAULT_MAX_CONCURRENT_RPCS
    max_streams_per_connection: int = DEFAULT_MAX_STREAMS_PER_CONNECTION
    request_read_seconds: float = DEFAULT_REQUEST_READ_SECONDS
    max_connection_age_seconds: float = DEFAULT_MAX_CONNECTION_AGE_SECONDS
    max_connection_age_grace_seconds: float = DEFAULT_MAX_CONNECTION_AGE_GRACE_SECONDS
    near_cache_entries: int = DEFAULT_MAX_ENTRIES  # 0: no near cache, every claim reads Redis
    near_cache_max_age_seconds: float = DEFAULT_MAX_AGE_SECONDS
    redis_timeout_seconds: float = DEFAULT_REDIS_TIMEOUT_SECONDS
    # Degraded mode (Redis unreadable): records held up to this age are used, other codes
    # are unverified and the region policy decides. 0: no degraded mode, UNAVAILABLE.
    degraded_max_age_seconds: float = DEFAULT_DEGRADED_MAX_AGE_SECONDS
    # The decision audit's spool: where decisions wait, on disk, while Redis is away.
    audit_spool_dir: Path = DEFAULT_SPOOL_DIR
    shutdown_grace_seconds: float = DEFAULT_SHUTDOWN_GRACE_SECONDS
    health_poll_seconds: float = DEFAULT_HEALTH_POLL_SECONDS
    # Health turns NOT_SERVING when the registry data was last updated longer ago (0: no bound).
    max_registry_age_seconds: float = DEFAULT_MAX_REGISTRY_AGE_SECONDS
    # TLS: without a certificate the service speaks plain text (local development only).
    tls_cert_path: Path | None = None
    tls_key_path: Path | None = None
    tls_client_ca_path: Path | None = None  # mutual TLS: callers must present a certificate it signed
    callers_path: Path | None = None  # which caller identity may submit for which institutions
    metrics_listen: str = ""  # HOST:PORT of the Prometheus endpoint; "" turns it off

    def __post_init__(self) -> None:
        if (self.tls_cert_path is None) != (self.tls_key_path is None):
            raise SettingsError("--tls-cert and --tls-key go together")
        if self.tls_client_ca_path is not None and self.tls_cert_path is None:
            raise SettingsError("--tls-client-ca needs --tls-cert and --tls-key: mutual TLS is TLS first")
        if (self.callers_path is None) != (self.tls_client_ca_path is None):
            # Callers are known only by their client certificates; a client CA without a
            # callers file would let every certificate it signed submit for every institution.
            raise SettingsError("--callers and --tls-client-ca go together")
        if self.metrics_listen:
            split_host_port(self.metrics_listen)

    @property
    def plain_text(self) -> bool:
        """True without TLS: for local development only."""
        return self.tls_cert_path is None

    def for_worker(self, index: int) -> Settings:
        """The settings of worker ``index`` (0-based): each serves its metrics on the next port."""
        if not self.metrics_listen or index == 0:
            return self
        host, port = split_host_port(self.metrics_listen)
        if port == 0:
            return self
        host = f"[{host}]" if ":" in host else host
        return replace(self, metrics_listen=f"{host}:{port + index}")
