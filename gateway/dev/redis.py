"""A real ``redis-server`` on a free loopback port, for shared budgets in tests and the demo.

Started like the emulator: its own process session, no persistence (``--save '' --appendonly
no``), bound to 127.0.0.1, ready once it answers PING; stopped by its pid (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import weakref
from pathlib import Path
from typing import IO

from gateway.dev.ports import HOST, free_port
from gateway.dev.processes import StoppedOnExit, terminate_group

__all__ = [
    "INSTALL",
    "RedisMissing",
    "RedisProcess",
    "RedisStartError",
    "find_redis",
    "start_redis",
]

INSTALL = "apt-get install redis-server"


class RedisMissing(RuntimeError):
    """``redis-server`` is not on PATH."""


class RedisStartError(RuntimeError):
    """``redis-server`` exited or did not answer PING in time."""


def find_redis() -> str:
    found = shutil.which("redis-server")
    if found is None:
        raise RedisMissing(
            f"redis-server was not found on PATH: install it with `{INSTALL}` (Debian/Ubuntu; "
            "the package redis-server), then run this again"
        )
    return found


def _answers_as(port: int, pid: int, timeout: float) -> bool:
    """Whether the Redis on ``port`` answers and is the process ``pid`` (``INFO server``'s
    ``process_id``): a free port can be taken by someone else's server between choosing it and
    starting ours, and a test must never flush another's data."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(b"INFO server\r\n")
            reply = b""
            while b"process_id:" not in reply or not reply.split(b"process_id:", 1)[1].count(b"\r\n"):
                chunk = sock.recv(65536)
                if not chunk or len(reply) > 1 << 20:
                    return False
                reply += chunk
    except OSError:
        return False
    found = reply.split(b"process_id:", 1)[1].split(b"\r\n", 1)[0].strip()
    return found == str(pid).encode()


class RedisProcess(StoppedOnExit):
    """A running ``redis-server``; ``url`` is the value for ``SPANGATE_REDIS_URL``."""

    def __init__(
        self, proc: subprocess.Popen[bytes], port: int, log_path: Path | None, log: IO[bytes] | None
    ) -> None:
        self._proc = proc
        self.port = port
        self.url = f"redis://{HOST}:{port}/0"
        self.log_path = log_path
        self._log = log
        self._finalizer = weakref.finalize(self, terminate_group, proc, 5.0)

    @property
    def pid(self) -> int:
        return self._proc.pid

    def is_running(self) -> bool:
        return self._proc.poll() is None

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM to its process group (it leads its own session), SIGKILL after ``timeout``."""
        self._finalizer.detach()
        terminate_group(self._proc, timeout)
        if self._log is not None:
            self._log.close()
            self._log = None



def start_redis(
    *, log_path: Path | None = None, timeout: float = 20.0, port: int | None = None
) -> RedisProcess:
    """Start ``redis-server`` on a free 127.0.0.1 port (or ``port``) and wait until it answers as
    itself. Raises ``RedisMissing`` (saying what to install) or ``RedisStartError`` (with the
    log's tail)."""
    binary = find_redis()
    port = free_port() if port is None else port
    argv = [binary, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no",
            "--protected-mode", "yes", "--daemonize", "no"]  # fmt: skip
    log: IO[bytes] | None = None
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = log_path.open("wb")
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=log if log is not None else subprocess.DEVNULL,
        stderr=subprocess.STDOUT if log is not None else subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
        cwd="/",
    )
    server = RedisProcess(proc, port, log_path, log)
    deadline = time.monotonic() + timeout
    while not _answers_as(port, proc.pid, 0.5):
        if not server.is_running() or time.monotonic() > deadline:
            tail = log_path.read_text(errors="replace")[-2000:] if log_path else ""
            server.stop()
            raise RedisStartError(
                f"{' '.join(argv)} did not answer as process {proc.pid} (another server on the "
                f"port, or it failed to start):\n{tail}"
            )
        time.sleep(0.05)
    return server
