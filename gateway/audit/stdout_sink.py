"""The stdout audit sink: the same JSON lines on the process's standard output, for Kubernetes and
Cloud Logging collectors (``sinks`` says what a sink is)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from gateway.audit.sinks import Sealed

__all__ = ["STDOUT_DEADLINE_SECONDS", "StdoutSink"]

STDOUT_DEADLINE_SECONDS = 5.0


class StdoutSink:
    """JSON lines on the process's standard output (Kubernetes / Cloud Logging collectors).

    Durable here means handed to the pipe; the collector takes it from there. Bounded: a reader
    that stalls (a full pipe) fails the batch after ``deadline`` seconds (503
    ``audit-unavailable``) instead of hanging the request: each chunk waits for ``poll`` to say
    the fd is writable and is at most ``PIPE_BUF`` bytes, which a writable pipe takes without
    blocking. A batch cut short leaves a partial line in the pipe (it cannot be taken back): the
    next batch starts with a newline, so it ends there as one malformed line.

    ``lock`` (``spangate serve --workers N``, whose workers share one stdout): a lock file that
    makes each batch whole in the pipe (a batch is written in ``PIPE_BUF`` chunks, which another
    worker's could otherwise split); waiting for it counts against the same deadline. A batch cut
    short is remembered in the lock file (its first byte), so whichever worker writes next starts
    with the newline."""

    def __init__(
        self,
        *,
        fd: int | None = None,
        deadline: float = STDOUT_DEADLINE_SECONDS,
        lock: Path | None = None,
    ) -> None:
        self.name = "stdout"
        self.read_durability = "written"  # strict and written are one here: handed to the pipe
        self.written_ok = True
        self._fd = fd
        self.write_deadline = deadline
        self._partial = False
        self._stalled = False
        self._lock_path = lock
        self._lock_fd: int | None = None

    def open(self) -> str | None:
        if self._lock_path is not None and self._lock_fd is None:
            self._lock_fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        return None

    def write(self, batch: Sequence[Sealed]) -> None:
        # A reader that stalled the last batch gets no new wait: refused at once until it drains.
        until = time.monotonic() + (0 if self._stalled else self.write_deadline)
        lock = self._lock_fd
        if lock is None:
            self._write(batch, until)
            return
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= until:
                    raise OSError(
                        errno.ETIMEDOUT,
                        f"stdout not writable within {self.write_deadline:g}s (another worker "
                        "holds it)",
                    ) from None
                time.sleep(0.001)
        try:
            self._partial = os.pread(lock, 1, 0) == b"1"
            try:
                self._write(batch, until)
            finally:
                os.pwrite(lock, b"1" if self._partial else b"0", 0)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)

    def _write(self, batch: Sequence[Sealed], until: float) -> None:
        fd = sys.stdout.fileno() if self._fd is None else self._fd
        data = b"".join(s.line for s in batch)
        if self._partial:
            data = b"\n" + data
        view = memoryview(data)
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        while view:
            events = poller.poll(max(0, int((until - time.monotonic()) * 1000)))
            if not events:
                self._partial |= len(view) < len(data)
                self._stalled = True
                raise OSError(
                    errno.ETIMEDOUT,
                    f"stdout not writable within {self.write_deadline:g}s (a stalled reader)",
                )
            if any(mask & (select.POLLERR | select.POLLHUP | select.POLLNVAL) for _, mask in events):
                self._partial |= len(view) < len(data)
                raise OSError(errno.EPIPE, "stdout is closed")
            try:
                written = os.write(fd, view[: select.PIPE_BUF])
            except BlockingIOError:
                continue
            except OSError:
                self._partial |= len(view) < len(data)
                raise
            view = view[written:]
        self._partial = self._stalled = False

    def close(self) -> None:
        """Nothing buffered: every write went to the fd."""
        if self._lock_fd is not None:
            fd, self._lock_fd = self._lock_fd, None
            with contextlib.suppress(OSError):
                os.close(fd)
