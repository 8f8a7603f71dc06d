"""Real servers for tests (and benchmarks): a private redis-server and a private PostgreSQL on free loopback ports."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
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


def postgres_bindir() -> Path | None:
    """Where initdb and pg_ctl are: pg_config's answer, else Debian's newest version."""
    pg_config = shutil.which("pg_config")
    if pg_config:
        found = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False).stdout.strip()
        if found and (Path(found) / "initdb").exists():
            return Path(found)
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    return versions[-1].parent if versions else None


@dataclass
class PostgresServer:
    """A PostgreSQL cluster of our own on 127.0.0.1 (trust authentication), in a throwaway directory."""

    bindir: Path
    directory: Path
    port: int
    run_as: list[str]

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def pg_ctl(self, *args: str) -> None:
        command = [*self.run_as, str(self.bindir / "pg_ctl"), "-D", str(self.directory / "data"), "-w", *args]
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    def stop(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError):
            self.pg_ctl("stop", "-m", "fast")
        shutil.rmtree(self.directory, ignore_errors=True)


def start_postgres(port: int | None = None) -> PostgresServer:
    """initdb and start a private cluster; as root (initdb and pg_ctl refuse to run as root),
    as the ``postgres`` user that Debian's package creates."""
    bindir = postgres_bindir()
    if bindir is None:
        raise RuntimeError("PostgreSQL's initdb is missing: apt-get install postgresql (scripts/install does)")
    directory = Path(tempfile.mkdtemp(prefix="gk-postgres-"))
    run_as: list[str] = []
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(directory, user.pw_uid, user.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    port = port or free_port()
    server = PostgresServer(bindir, directory, port, run_as)
    data = directory / "data"
    subprocess.run(
        [*run_as, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    options = f"-p {port} -k {directory} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"
    server.pg_ctl("start", "-l", str(directory / "postgres.log"), "-o", options)
    return server
