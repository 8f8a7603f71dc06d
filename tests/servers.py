"""Real servers for tests (and benchmarks): a private redis-server on a free loopback port."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import redis

from loader.cache import LISTPACK_SETTINGS

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class RedisServer:
    """A redis-server process of our own on 127.0.0.1."""

    process: subprocess.Popen[str]
    port: int
    directory: Path

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


def start_redis(directory: Path, port: int | None = None, extra_args: Sequence[str] = ()) -> RedisServer:
    """Start redis-server (no persistence unless ``extra_args`` turn it on, listpack limits
    raised) and wait until it is ready."""
    port = port or free_port()
    args = [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    args += ["--dir", str(directory), "--loglevel", "notice"]
    for name, value in LISTPACK_SETTINGS.items():
        args += [f"--{name}", value]
    args += extra_args  # later options win
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert process.stdout is not None
    seen = []
    for line in process.stdout:  # the ready signal: redis logs this once it listens
        seen.append(line)
        if "Ready to accept connections" in line:
            break
    else:
        raise RuntimeError("redis-server did not start:\n" + "".join(seen))
    threading.Thread(target=process.stdout.read, daemon=True).start()  # keep draining its log
    return RedisServer(process, port, directory)
