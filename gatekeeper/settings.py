"""Service settings: one frozen object, built from the environment and the command line at the entry point.

Every environment variable the gatekeeper reads is read here, from the mapping the entry
point passes in (``os.environ``); nothing deeper in the code reads the environment.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, TypeVar

from gatekeeper import defaults
from gatekeeper.defaults import LOG_FORMATS
from gatekeeper.urls import cluster_url, url_shown

_T = TypeVar("_T")


class SettingsError(ValueError):
    """Settings that do not fit together, or an environment value that is not one; the message says which."""


def retention_days_from(environ: Mapping[str, str]) -> int:
    """GATEKEEPER_AUDIT_RETENTION_DAYS, else a year and the weeks a late window reaches back."""
    return env_value(environ, "GATEKEEPER_AUDIT_RETENTION_DAYS", _positive_int) or defaults.AUDIT_RETENTION_DAYS


def demo_state_path(environ: Mapping[str, str]) -> Path:
    """GATEKEEPER_DEMO_STATE, else ``.demo/state.json`` in the current directory: what scripts/demo writes."""
    return Path(environ.get("GATEKEEPER_DEMO_STATE") or defaults.DEMO_STATE)


def read_demo_state(path: Path) -> dict[str, str]:
    """The addresses a running scripts/demo wrote to ``path``; empty when there is no demo
    running (no file, not a JSON object, or the demo's process is gone)."""
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(state, dict):
        return {}
    pid = state.get("pid")
    if isinstance(pid, int) and pid > 0:
        try:
            os.kill(pid, 0)  # signal 0: only whether the process exists
        except ProcessLookupError:
            return {}  # left behind by a demo that was killed
        except PermissionError:
            pass  # it exists, run by another user
    return {key: value for key, value in state.items() if isinstance(value, str)}


@dataclass(frozen=True)
class Address:
    """A server a command talks to, and where that address came from (for its messages)."""

    value: str
    source: str  # "--redis-url", "env REDIS_URL", "scripts/demo (.demo/state.json)" or "default"

    def __str__(self) -> str:
        return self.value

    @property
    def shown(self) -> str:
        """The address, its password hidden, and where it came from: ``redis://…/0 (env REDIS_URL)``."""
        return f"{url_shown(self.value)} ({self.source})"


def address(
    given: str | None, flag: str, environ: Mapping[str, str], variable: str, demo_key: str, default: str
) -> Address:
    """A server's address: the flag, else the environment variable, else the running demo's
    (scripts/demo), else the default."""
    if given:
        return Address(given, flag)
    if environ.get(variable):
        return Address(environ[variable], f"env {variable}")
    path = demo_state_path(environ)
    demo = read_demo_state(path).get(demo_key)
    if demo:
        return Address(demo, f"scripts/demo, {path}")
    return Address(default, "default")


def redis_address(given: str | None, environ: Mapping[str, str]) -> Address:
    """The eligibility cache: --redis-url, env REDIS_URL, the demo's, or a Redis on this machine."""
    return address(given, "--redis-url", environ, "REDIS_URL", "redis_url", defaults.REDIS_URL)


def database_address(given: str | None, environ: Mapping[str, str]) -> Address:
    """The decision record: --database-url, env DATABASE_URL, the demo's, or a PostgreSQL on this machine."""
    return address(given, "--database-url", environ, "DATABASE_URL", "database_url", defaults.DATABASE_URL)


def target_address(given: str | None, environ: Mapping[str, str]) -> Address:
    """The gatekeeper a client command calls: --target, env GATEKEEPER_LISTEN, the demo's, or loopback 50051."""
    return address(given, "--target", environ, "GATEKEEPER_LISTEN", "target", defaults.LISTEN)


def split_host_port(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:9464`` for IPv6) as host and port, or SettingsError."""
    host, separator, port = listen.rpartition(":")
    if not separator or not host or not port.isdigit() or int(port) > 65535:
        raise SettingsError(f"{listen!r} is not HOST:PORT")
    return host.removeprefix("[").removesuffix("]"), int(port)


def _positive_int(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise ValueError("expected a whole number, at least 1")
    return int(text)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):  # also refuses nan
        raise ValueError("expected a number of seconds, 0 or more")
    return value


def _log_format(text: str) -> str:
    if text not in LOG_FORMATS:
        raise ValueError(f"must be one of {', '.join(LOG_FORMATS)}")
    return text


def _yes_or_no(text: str) -> bool:
    if text.lower() not in ("yes", "no"):
        raise ValueError("expected yes or no")
    return text.lower() == "yes"


# Settings field <- environment variable, and how its text becomes a value.
ENVIRONMENT: dict[str, tuple[str, Callable[[str], Any]]] = {
    "redis_url": ("REDIS_URL", str),
    "database_url": ("DATABASE_URL", str),
    "listen": ("GATEKEEPER_LISTEN", str),
    "workers": ("GATEKEEPER_WORKERS", _positive_int),
    "max_registry_age_seconds": ("GATEKEEPER_MAX_REGISTRY_AGE", _seconds),
    "audit_spool_dir": ("GATEKEEPER_AUDIT_SPOOL_DIR", Path),
    "tls_cert_path": ("GATEKEEPER_TLS_CERT", Path),
    "tls_key_path": ("GATEKEEPER_TLS_KEY", Path),
    "tls_client_ca_path": ("GATEKEEPER_TLS_CLIENT_CA", Path),
    "callers_path": ("GATEKEEPER_CALLERS", Path),
    "metrics_listen": ("GATEKEEPER_METRICS_LISTEN", str),
    "http_listen": ("GATEKEEPER_HTTP_LISTEN", str),
    "log_format": ("GATEKEEPER_LOG_FORMAT", _log_format),
    "redis_replica_reads": ("GATEKEEPER_REDIS_REPLICA_READS", _yes_or_no),
    "near_cache_warm": ("GATEKEEPER_NEAR_CACHE_WARM", _yes_or_no),
    "c_path": ("GATEKEEPER_C_PATH", _yes_or_no),
    "activity_log_seconds": ("GATEKEEPER_ACTIVITY_LOG_SECONDS", _seconds),
}


def env_value(environ: Mapping[str, str], name: str, parse: Callable[[str], _T]) -> _T | None:
    """The environment variable ``name`` parsed, None when unset or empty; SettingsError naming it when bad."""
    text = environ.get(name, "")
    if not text:
        return None
    try:
        return parse(text)
    except ValueError as error:
        raise SettingsError(f"{name}={text!r}: {error}") from None


@dataclass(frozen=True)
class Settings:
    """Everything ``gatekeeper serve`` can be told."""

    redis_url: str = defaults.REDIS_URL
    # The decision record: every decision is written to this PostgreSQL database.
    database_url: str = defaults.DATABASE_URL
    database_timeout_seconds: float = defaults.DATABASE_TIMEOUT_SECONDS
    listen: str = defaults.LISTEN
    policy_path: Path | None = None
    workers: int = 1
    max_items: int = defaults.MAX_ITEMS
    max_request_bytes: int = defaults.MAX_REQUEST_BYTES
    max_batch_claims: int = defaults.MAX_BATCH_CLAIMS
    max_batch_bytes: int = defaults.MAX_BATCH_BYTES  # a whole CheckClaims request
    max_concurrent_rpcs: int = defaults.MAX_CONCURRENT_RPCS
    max_streams_per_connection: int = defaults.MAX_STREAMS_PER_CONNECTION
    request_read_seconds: float = defaults.REQUEST_READ_SECONDS
    max_connection_age_seconds: float = defaults.MAX_CONNECTION_AGE_SECONDS
    max_connection_age_grace_seconds: float = defaults.MAX_CONNECTION_AGE_GRACE_SECONDS
    near_cache_entries: int = defaults.NEAR_CACHE_ENTRIES  # 0: no near cache, every claim reads Redis
    near_cache_max_age_seconds: float = defaults.NEAR_CACHE_MAX_AGE_SECONDS
    redis_timeout_seconds: float = defaults.REDIS_TIMEOUT_SECONDS
    # A Redis Cluster's replicas answer lookups (one replication lag behind the masters).
    redis_replica_reads: bool = False
    near_cache_warm: bool = defaults.NEAR_CACHE_WARM
    c_path: bool = defaults.C_PATH
    # Degraded mode (Redis unreadable): records held up to this age are used, other codes
    # are unverified and the region policy decides. 0: no degraded mode, UNAVAILABLE.
    degraded_max_age_seconds: float = defaults.DEGRADED_MAX_AGE_SECONDS
    # The decision record's spool: where decisions wait, on disk, while the database is away.
    audit_spool_dir: Path = Path(defaults.AUDIT_SPOOL_DIR)
    shutdown_grace_seconds: float = defaults.SHUTDOWN_GRACE_SECONDS
    health_poll_seconds: float = defaults.HEALTH_POLL_SECONDS
    activity_log_seconds: float = defaults.ACTIVITY_LOG_SECONDS
    # Health turns NOT_SERVING when the registry data was last updated longer ago (0: no bound).
    max_registry_age_seconds: float = defaults.MAX_REGISTRY_AGE_SECONDS
    # TLS: without a certificate the service speaks plain text (local development only).
    tls_cert_path: Path | None = None
    tls_key_path: Path | None = None
    tls_client_ca_path: Path | None = None  # mutual TLS: callers must present a certificate it signed
    callers_path: Path | None = None  # which caller identity may submit for which institutions
    metrics_listen: str = ""  # HOST:PORT of the Prometheus endpoint; "" turns it off
    # HOST:PORT of the JSON-over-HTTP door (gatekeeper/api/http_json.py); "" turns it off.
    # Workers share it as they share the gRPC port; TLS and callers are the gRPC port's.
    http_listen: str = ""
    log_format: str = defaults.LOG_FORMAT

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
        if self.http_listen:
            split_host_port(self.http_listen)
        if self.redis_replica_reads and cluster_url(self.redis_url) is None:
            raise SettingsError(
                "--redis-replica-reads needs a Redis Cluster: a redis+cluster:// or rediss+cluster:// URL"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str], **overrides: Any) -> Settings:
        """Settings from the environment (see :data:`ENVIRONMENT`), then ``overrides`` (the
        command line's flags; None means not given). ``workers`` defaults to the number of
        cores here, where a process is being started, and to 1 for a Settings made in code."""
        values: dict[str, Any] = {"workers": defaults.WORKERS}
        for name, (variable, parse) in ENVIRONMENT.items():
            value = env_value(environ, variable, parse)
            if value is not None:
                values[name] = value
        known = {f.name for f in fields(cls)}
        values.update({k: v for k, v in overrides.items() if v is not None and k in known})
        return cls(**values)

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
