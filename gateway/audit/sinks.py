"""Where audit lines go: what a sink is, and the JSON-lines file (rotated by size). Standard
output: ``stdout_sink``; Spanner: ``spanner_sink``.

A sink is blocking and is called from its own writer thread only (``writer.SinkWriter``). Contract:
``open()`` returns the predecessor's last hash (the newest event already in the trail) or None;
``write(batch)`` makes the whole batch durable before it returns, or raises ``OSError`` and leaves
nothing of it behind (no partial line). A sink that failed is opened again on the next batch.

A sink that can tell written from synced (the file sink) also has ``append(batch)`` (written to the
OS, returns the bytes appended ever) and ``sync_appended()`` (durable up to what it returns), which
the writer calls from two threads (``syncer.Syncer``). ``read_durability`` is the durability of a
read's event when the policy names none; ``written_ok`` says whether ``written`` means anything
here (not for Spanner, where a batch is durable when it commits).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

__all__ = [
    "MAX_UNSYNCED_BYTES",
    "MAX_UNSYNCED_SECONDS",
    "SYNC_DEADLINE_SECONDS",
    "SYNC_INTERVAL_SECONDS",
    "FileSink",
    "Sealed",
    "Sink",
    "SyncingSink",
    "last_hash",
    "rotated_paths",
]

log = logging.getLogger("spangate.audit")

_TAIL_CHUNK = 65536

# A file sink's durability defaults (the policy's file sink keys override the first two).
SYNC_INTERVAL_SECONDS = 0.1  # ``sync_interval``: background syncs of ``written`` events
MAX_UNSYNCED_SECONDS = 1.0  # ``max_unsynced``: the most ``written`` answers run ahead of the disk
MAX_UNSYNCED_BYTES = 16 * 1024 * 1024  # ... and in bytes
SYNC_DEADLINE_SECONDS = 5.0  # the longest a request waits for a sync (then 503)


@dataclass(frozen=True)
class Sealed:
    """One sealed event: the dict (for sinks with columns) and its exact line."""

    event: dict[str, Any]
    line: bytes


class Sink(Protocol):
    name: str

    def open(self) -> str | None:
        """Get ready to write; return the predecessor's last hash when there is one."""

    def write(self, batch: Sequence[Sealed]) -> None:
        """Make every event of the batch durable, or raise OSError leaving none of it."""

    def close(self) -> None: ...


class SyncingSink(Sink, Protocol):
    """A sink whose appends and syncs are apart (see the module docstring)."""

    sync_interval: float
    max_unsynced: float
    max_unsynced_bytes: int
    sync_deadline: float
    appended: int

    def append(self, batch: Sequence[Sealed]) -> int: ...

    def sync_appended(self) -> int: ...


def rotated_paths(path: Path) -> list[Path]:
    """``path``'s rotated files (``NAME.000001``…), oldest first."""
    pattern = re.compile(re.escape(path.name) + r"\.([0-9]+)$")
    found = []
    if path.parent.is_dir():
        for child in path.parent.iterdir():
            m = pattern.match(child.name)
            if m:
                found.append((int(m.group(1)), child))
    return [p for _, p in sorted(found)]


def _last_line(fd: int, size: int) -> tuple[bytes, int] | None:
    """The last line of the first ``size`` bytes of ``fd`` (without its newline) and its offset."""
    end = size
    if end and os.pread(fd, 1, end - 1) == b"\n":
        end -= 1
    buf = b""
    pos = end
    while pos > 0:
        start = max(0, pos - _TAIL_CHUNK)
        buf = os.pread(fd, pos - start, start) + buf
        pos = start
        cut = buf.rfind(b"\n")
        if cut >= 0:
            return buf[cut + 1 :], pos + cut + 1
    return (buf, 0) if buf else None


def last_hash(path: Path) -> str | None:
    """The ``hash`` of the last event of the file at ``path`` (None: empty, missing, unreadable).

    A last line that is not an event is skipped: the chain links to the newest one that is."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        size = os.fstat(fd).st_size
        while size > 0:
            found = _last_line(fd, size)
            if found is None:
                return None
            line, size = found
            try:
                value = json.loads(line).get("hash")
            except (ValueError, AttributeError):
                value = None
            if isinstance(value, str):
                return value
        return None
    finally:
        os.close(fd)


class FileSink:
    """JSON lines appended to ``path``; ``append`` hands a batch to the OS (``write(2)``),
    ``sync_appended`` makes what was appended durable (``fdatasync``), ``write`` does both.

    - One process writes a file at a time: an exclusive ``flock`` on ``.NAME.lock`` beside it
      (a second gateway on the same file answers 503 until the first is gone).
    - A partial last line left by a crash (never acknowledged) is cut off when the file is opened.
    - ``rotate_bytes``: before a batch would take the file past it, the file becomes
      ``NAME.000001`` (the next free number) and a new ``NAME`` starts; the chain goes on.
    - A failed append is undone with ``ftruncate`` to the size before the batch.

    Threads: ``open``, ``append``, ``write`` and ``close`` are the writer thread's;
    ``sync_appended`` may run at the same time on a syncer thread (``syncer.Syncer``). A file
    descriptor replaced by a rotation or a re-open is not closed there but retired: the next
    ``sync_appended`` syncs and closes it (and syncs the directory after a rotation), so a sync
    in progress never loses its descriptor, and a sync covers the rotated file, the rename and
    the new file alike. ``sync`` (``os.fdatasync``) is the seam a test slows down.

    The durability keys (``syncer.Syncer``, ``writer.SinkWriter``): ``sync_interval`` (seconds
    between background syncs of ``written`` events), ``max_unsynced`` (seconds) and
    ``max_unsynced_bytes`` (the most ``written`` answers may run ahead of the disk),
    ``sync_deadline`` (the longest a request waits for a sync).
    """

    def __init__(
        self,
        path: Path,
        *,
        rotate_bytes: int | None = None,
        sync: Callable[[int], None] = os.fdatasync,
        sync_interval: float = SYNC_INTERVAL_SECONDS,
        max_unsynced: float = MAX_UNSYNCED_SECONDS,
        max_unsynced_bytes: int = MAX_UNSYNCED_BYTES,
        sync_deadline: float = SYNC_DEADLINE_SECONDS,
    ) -> None:
        self.name = f"file:{path}"
        self.read_durability = "written"
        self.written_ok = True
        self.path = path
        self.rotate_bytes = rotate_bytes
        self.sync = sync
        self.sync_interval = sync_interval
        self.max_unsynced = max_unsynced
        self.max_unsynced_bytes = max_unsynced_bytes
        self.sync_deadline = sync_deadline
        self._fd: int | None = None
        self._lock_fd: int | None = None
        self._size = 0
        self.rotations = 0
        # Shared with the syncer thread, under _fds: the descriptor appended to, those replaced
        # and not yet synced, whether a rename awaits a directory sync, bytes appended (ever).
        self._fds = threading.Lock()
        self._retired: list[int] = []
        self._renamed = False
        self.appended = 0

    # -- opening ---------------------------------------------------------------------------
    def open(self) -> str | None:
        self._retire()
        self._unlock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = os.open(self.path.parent / f".{self.path.name}.lock", os.O_RDWR | os.O_CREAT, 0o640)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock)
            raise OSError(f"another process is writing {self.path}") from None
        except OSError:
            os.close(lock)
            raise
        self._lock_fd = lock
        try:
            self._open_active()
        except OSError:
            self._unlock()
            raise
        predecessor = last_hash(self.path)
        if predecessor is None:
            rotated = rotated_paths(self.path)
            predecessor = last_hash(rotated[-1]) if rotated else None
        return predecessor

    def _open_active(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            size = self._cut_partial_tail(fd, os.fstat(fd).st_size)
        except OSError:
            os.close(fd)
            raise
        with self._fds:
            self._fd = fd
        self._size = size

    def _cut_partial_tail(self, fd: int, size: int) -> int:
        if size == 0:
            return 0
        reader = os.open(self.path, os.O_RDONLY)
        try:
            if os.pread(reader, 1, size - 1) == b"\n":
                return size
            keep = size
            while keep > 0:
                start = max(0, keep - _TAIL_CHUNK)
                cut = os.pread(reader, keep - start, start).rfind(b"\n")
                if cut >= 0:
                    keep = start + cut + 1
                    break
                keep = start
        finally:
            os.close(reader)
        log.warning(
            "audit file %s ended with %d bytes of an unfinished line (a write cut short by a "
            "crash, never acknowledged); cut off",
            self.path,
            size - keep,
        )
        os.ftruncate(fd, keep)
        os.fsync(fd)
        return keep

    # -- writing ---------------------------------------------------------------------------
    def append(self, batch: Sequence[Sealed]) -> int:
        """Hand ``batch`` to the OS (``write(2)`` returned for all of it: another process reads
        it, a crash of this one loses none of it); return ``appended``. Not synced."""
        if self._fd is None:
            raise OSError(f"{self.path} is not open")
        data = b"".join(s.line for s in batch)
        if self.rotate_bytes and self._size and self._size + len(data) > self.rotate_bytes:
            self._rotate()
        fd = self._fd
        before = self._size
        view = memoryview(data)
        try:
            while view:
                written = os.write(fd, view)
                view = view[written:]
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, before)
            raise
        self._size = before + len(data)
        with self._fds:
            self.appended += len(data)
            return self.appended

    def sync_appended(self) -> int:
        """Make everything appended so far durable; return how far that is (``appended``)."""
        with self._fds:
            fd, retired, renamed = self._fd, self._retired, self._renamed
            self._retired, self._renamed = [], False
            covered = self.appended
        try:
            for old in retired:
                try:
                    self._sync_fd(old)
                finally:
                    os.close(old)
            if renamed:
                dirfd = os.open(self.path.parent, os.O_RDONLY)
                try:
                    os.fsync(dirfd)
                finally:
                    os.close(dirfd)
            if fd is not None:
                self._sync_fd(fd)
        except OSError:
            with self._fds:
                self._renamed |= renamed
            raise
        return covered

    def _sync_fd(self, fd: int) -> None:
        try:
            self.sync(fd)
        except OSError as exc:
            if exc.errno != errno.EINVAL:  # EINVAL: a special file (/dev/full): nothing to sync
                raise

    def write(self, batch: Sequence[Sealed]) -> None:
        """``append`` and ``sync_appended``: durable before it returns."""
        self.append(batch)
        self.sync_appended()

    def _rotate(self) -> None:
        assert self._fd is not None
        rotated = rotated_paths(self.path)
        number = int(rotated[-1].name.rsplit(".", 1)[1]) + 1 if rotated else 1
        target = self.path.with_name(f"{self.path.name}.{number:06d}")
        os.rename(self.path, target)
        self._retire()
        with self._fds:
            self._renamed = True
        self._open_active()
        self.rotations += 1
        log.info("audit file rotated to %s", target)

    def _retire(self) -> None:
        """Stop appending to the current descriptor; the next sync syncs and closes it."""
        with self._fds:
            if self._fd is not None:
                self._retired.append(self._fd)
                self._fd = None

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            fd, self._lock_fd = self._lock_fd, None
            with contextlib.suppress(OSError):
                os.close(fd)

    def close(self) -> None:
        """Close every descriptor (no sync: ``sync_appended`` first when that is wanted)."""
        with self._fds:
            fds = [*self._retired, *([self._fd] if self._fd is not None else [])]
            self._retired, self._fd = [], None
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._unlock()
