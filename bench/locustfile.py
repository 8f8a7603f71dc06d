"""Locust load test of the gatekeeper over gRPC, with the benchmark's claim mix.

What a settlement platform runs against its own test deployment before go-live
(``scripts/install --load`` installs locust)::

    .venv/bin/locust -f bench/locustfile.py --headless --users 200 --spawn-rate 20 \
        --run-time 10m --csv go-live --host 10.0.0.5:50051

Where it sends claims: ``--host HOST:PORT``, else GATEKEEPER_LISTEN, else a running
scripts/demo's gatekeeper (.demo/state.json), else 127.0.0.1:50051. Only loopback hosts are
targeted unless GATEKEEPER_LOAD_ALLOW_REMOTE=1 is set: point it at your own test
deployment, never at production.

Which practitioners the claims name: codes of the registry loaded in the gatekeeper's Redis
(REDIS_URL, else the demo's, else 127.0.0.1:6379), so that claims are decided against real
records rather than coming back UNREGISTERED; or the snapshot CSV named by
GATEKEEPER_REGISTRY (e.g. one made by ``gatekeeper-loader generate``).
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
import redis
from locust import User, events, task

from bench.serving import Practitioners, realistic_claim
from gatekeeper.cache import keys
from gatekeeper.cache.layout import Meta
from gatekeeper.settings import redis_address, target_address
from gatekeeper.v1 import gatekeeper_pb2_grpc as pb_grpc

grpc_gevent.init_gevent()  # locust runs users on gevent; gRPC must cooperate with it

# Buckets read for codes: about 48 practitioners each, so up to ~100,000 codes to draw from.
MAX_BUCKETS_READ = 2_000


def codes_in_csv(path: Path) -> list[str]:
    """The practitioner codes of a registry snapshot CSV."""
    lines = path.read_text(encoding="utf-8-sig").splitlines()[1:]
    return sorted({line.split(",", 1)[0] for line in lines if line})


def codes_in_redis(url: str) -> list[str]:
    """Practitioner codes of the registry loaded in the Redis at ``url`` (a sample of its buckets)."""
    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        meta = Meta.from_hash(client.hgetall(keys.META))
        if meta.generation is None:
            return []
        pipeline = client.pipeline(transaction=False)
        for bucket in range(min(meta.buckets, MAX_BUCKETS_READ)):
            pipeline.hkeys(keys.bucket_key(meta.generation, bucket))
        fields = [field.decode() for bucket in pipeline.execute() for field in bucket]
    finally:
        client.close()
    return sorted(code for code in fields if code != keys.BUCKET_SENTINEL)


def registry_codes() -> tuple[list[str], str]:
    """The codes claims are drawn from, and where they came from; SystemExit if there are none."""
    if os.environ.get("GATEKEEPER_REGISTRY"):
        path = Path(os.environ["GATEKEEPER_REGISTRY"])
        return codes_in_csv(path), str(path)
    where = redis_address(None, os.environ)
    try:
        codes = codes_in_redis(where.value)
    except redis.RedisError as error:
        raise SystemExit(f"cannot read the registry's codes from Redis at {where.shown}: {error}") from None
    if not codes:
        raise SystemExit(f"no registry is loaded in Redis at {where.shown} (gatekeeper-loader snapshot FILE)")
    return codes, f"Redis at {where.shown}"


def _loopback(host: str) -> bool:
    name = host.rsplit(":", 1)[0].strip("[]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


@events.init.add_listener
def _choose_target(environment: Any, **_: Any) -> None:
    if not environment.host:  # no --host: the demo's gatekeeper or GATEKEEPER_LISTEN, said aloud
        target = target_address(None, os.environ)
        environment.host = target.value
        print(f"locust: no --host, so the gatekeeper at {target.shown}", flush=True)
    host = environment.host
    if not _loopback(host) and os.environ.get("GATEKEEPER_LOAD_ALLOW_REMOTE") != "1":
        raise SystemExit(f"refusing to load {host!r}: not a loopback address (set GATEKEEPER_LOAD_ALLOW_REMOTE=1)")
    codes, source = registry_codes()
    GatekeeperUser.people = Practitioners(codes, 1.1, random.Random())
    print(f"locust: claims name {len(codes):,} practitioners from {source}", flush=True)


class GatekeeperUser(User):
    """A hospital HIS settling claims one after another."""

    people: Practitioners | None = None

    def on_start(self) -> None:
        self._rng = random.Random()
        self._channel = grpc.insecure_channel(self.environment.host)
        self._stub = pb_grpc.GatekeeperStub(self._channel)
        self._claims = 0

    def on_stop(self) -> None:
        self._channel.close()

    @task
    def check_claim(self) -> None:
        assert self.people is not None
        self._claims += 1
        request = realistic_claim(self._claims, self.people, self._rng)
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
