"""The audit spool: batches on disk, one fsynced JSON line each, while the audit store is away."""

from __future__ import annotations

import fcntl
import logging
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from gatekeeper.audit.records import Batch, decode_batch, encode

log = logging.getLogger(__name__)

SPOOL_PATTERN = "audit-*.spool"


def _parse_batches(data: bytes, path: Path) -> tuple[list[Batch], int]:
    """The batches of a spool file's bytes, and how many complete lines could not be read.
    A last line without its newline was torn by a crash mid-write: skipped, as it was never
    acknowledged. Any other unreadable line (another version's format, damage) is counted:
    the file is then kept for an operator rather than deleted after the replay."""
    batches, unreadable = [], 0
    lines = data.split(b"\n")
    for number, line in enumerate(lines, start=1):
        if not line:
            continue
        try:
            batches.append(decode_batch(line))
        except (msgspec.DecodeError, msgspec.ValidationError):
            if number == len(lines):  # no newline after it: torn mid-write
                log.warning("audit spool %s line %d was torn by a crash mid-write: skipped", path, number)
            else:
                unreadable += 1
                log.error("audit spool %s line %d is not a batch this version can read", path, number)
    return batches, unreadable


@dataclass
class Orphan:
    """The spool file of a process that is gone, locked by this one while it replays it."""

    path: Path
    descriptor: int
    batches: list[Batch]
    unreadable: int = 0  # complete lines that could not be read

    def remove(self) -> None:
        """Delete the file (it has been replayed) and let go of it; a file with lines that
        could not be read is renamed ``….unreadable`` instead, for an operator to look at."""
        if self.unreadable:
            kept = self.path.with_suffix(".unreadable")
            self.path.rename(kept)
            log.error(
                "audit spool %s: %d line(s) could not be read and were not replayed; kept as %s",
                self.path,
                self.unreadable,
                kept,
            )
        else:
            self.path.unlink(missing_ok=True)
        os.close(self.descriptor)

    def release(self) -> None:
        """Let go of it without replaying: a later attempt, or another process, will."""
        os.close(self.descriptor)


@dataclass
class Spool:
    """A directory of append-only spool files, one per process; this process writes its own.

    Each file is held under an exclusive ``flock`` by its writer for the writer's whole
    life, so a file nobody can lock belongs to a live process and a file that can be
    locked is an orphan whose process is gone.
    """

    directory: Path
    depth: int = 0  # batches in this process's file not yet replayed
    path: Path | None = None  # this process's file, once opened
    _descriptor: int = field(default=-1, repr=False)
    _size: int = field(default=0, repr=False)

    def open(self) -> None:
        """Create the directory and this process's file now, so that a directory that cannot
        be written to stops the service at start rather than losing records later."""
        if self._descriptor >= 0:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"audit-{os.getpid()}-{uuid.uuid4().hex[:8]}.spool"
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        _fsync_directory(self.directory)
        self._descriptor, self.path, self._size, self.depth = descriptor, path, 0, 0

    def append(self, batch: Batch) -> None:
        """Append one batch and fsync it: once this returns, the batch survives a crash.
        On an error (a full disk) the file is cut back, so no torn line stays in it."""
        self.open()
        data = encode(batch) + b"\n"
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._descriptor, view) :]
            os.fsync(self._descriptor)
        except OSError:
            os.ftruncate(self._descriptor, self._size)
            raise
        self._size += len(data)
        self.depth += 1

    def pending(self) -> list[Batch]:
        """The batches of this process's file."""
        if self.path is None:
            return []
        return _parse_batches(os.pread(self._descriptor, self._size, 0), self.path)[0]

    def empty(self) -> None:
        """Forget the batches of this process's file (they have been replayed)."""
        if self._descriptor >= 0:
            os.ftruncate(self._descriptor, 0)
            os.fsync(self._descriptor)
        self._size = self.depth = 0

    def orphans(self) -> Iterator[Orphan]:
        """Spool files of processes that are gone, each locked until removed or released."""
        if not self.directory.is_dir():
            return
        for path in sorted(self.directory.glob(SPOOL_PATTERN)):
            if path == self.path:
                continue
            try:
                descriptor = os.open(path, os.O_RDONLY)
            except FileNotFoundError:  # another process replayed and removed it just now
                continue
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if not path.exists():  # removed between our open and our lock
                    raise BlockingIOError
                data = path.read_bytes()
            except BlockingIOError:  # its process is alive, or another one is replaying it
                os.close(descriptor)
                continue
            yield Orphan(path, descriptor, *_parse_batches(data, path))

    @property
    def size(self) -> int:
        """Bytes in this process's file (decisions waiting on disk for the database)."""
        return self._size

    def close(self) -> None:
        """Let go of this process's file; remove it when it holds nothing to replay."""
        if self._descriptor < 0 or self.path is None:
            return
        if self.depth == 0:
            self.path.unlink(missing_ok=True)
        os.close(self._descriptor)
        self._descriptor = -1


def _fsync_directory(directory: Path) -> None:
    """Make a file's creation itself durable."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


# --- The writer ----------------------------------------------------------------------------
