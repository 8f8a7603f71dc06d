"""Locust load test of the gatekeeper over gRPC, with the benchmark's claim mix.

    .venv/bin/locust -f bench/locustfile.py --headless --users 50 --spawn-rate 10 \
        --run-time 60s --host 127.0.0.1:50051

Practitioner codes come from GATEKEEPER_REGISTRY (a registry snapshot CSV, e.g. one made
by `gatekeeper-loader generate`), default demo/registry.csv. Only loopback hosts are
targeted unless GATEKEEPER_LOAD_ALLOW_REMOTE=1 is set: point it at your own test
deployment, never at production.
"""

from __future__ import annotations

import ipaddress
import os
import random
import time
from pathlib import Path
from typing import Any

import grpc
import grpc.experimental.gevent as grpc_gevent
from locust import User, events, task

from bench.serving import Practitioners, realistic_claim
from gatekeeper.v1 import gatekeeper_pb2_grpc as pb_grpc

grpc_gevent.init_gevent()  # locust runs users on gevent; gRPC must cooperate with it

REGISTRY = Path(os.environ.get("GATEKEEPER_REGISTRY", Path(__file__).parents[1] / "demo" / "registry.csv"))


def _codes(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8-sig").splitlines()[1:]
    return sorted({line.split(",", 1)[0] for line in lines if line})


def _loopback(host: str) -> bool:
    name = host.rsplit(":", 1)[0].strip("[]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


@events.init.add_listener
def _refuse_remote_targets(environment: Any, **_: Any) -> None:
    host = environment.host or ""
    if not _loopback(host) and os.environ.get("GATEKEEPER_LOAD_ALLOW_REMOTE") != "1":
        raise SystemExit(f"refusing to load {host!r}: not a loopback address (set GATEKEEPER_LOAD_ALLOW_REMOTE=1)")


class GatekeeperUser(User):
    """A hospital HIS settling claims one after another."""

    host = "127.0.0.1:50051"
    _people: Practitioners | None = None

    def on_start(self) -> None:
        if GatekeeperUser._people is None:
            GatekeeperUser._people = Practitioners(_codes(REGISTRY), 1.1, random.Random())
        self._rng = random.Random()
        self._channel = grpc.insecure_channel(self.host)
        self._stub = pb_grpc.GatekeeperStub(self._channel)
        self._claims = 0

    def on_stop(self) -> None:
        self._channel.close()

    @task
    def check_claim(self) -> None:
        assert self._people is not None
        self._claims += 1
        request = realistic_claim(self._claims, self._people, self._rng)
        started = time.perf_counter()
        exception: Exception | None = None
        size = 0
        try:
            size = self._stub.CheckClaim(request, timeout=10).ByteSize()
        except grpc.RpcError as error:  # every non-OK grpc-status counts as a failure
            exception = error
        self.environment.events.request.fire(
            request_type="grpc",
            name="CheckClaim",
            response_time=(time.perf_counter() - started) * 1000,
            response_length=size,
            exception=exception,
            context={},
        )
