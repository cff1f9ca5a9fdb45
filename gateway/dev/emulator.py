"""Start and stop a local Cloud Spanner emulator for development and tests.

Only the gRPC server (``emulator_main``) is started: it serves in tens of
milliseconds, whereas ``gateway_main`` adds a REST front end (~1 s) and leaves
its ``emulator_main`` child running when it alone is killed.

Contracts:

* The emulator is always bound to ``127.0.0.1`` on a port that nothing answered
  on just before the start: two emulators can share a port (SO_REUSEPORT) and a
  stale one would silently serve the caller's requests.
* The emulator runs in its own session (process group), and :meth:`EmulatorProcess.stop`
  signals that group only, never processes found by name.
* :func:`start_emulator` returns only once a gRPC call (ListInstanceConfigs)
  has succeeded, so the caller can create instances straight away.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Final

from gateway.dev.ports import free_port
from gateway.dev.processes import StoppedOnExit, terminate_group

__all__ = [
    "EMULATOR_DIR",
    "EMULATOR_DIR_ENV",
    "EmulatorError",
    "EmulatorMissing",
    "EmulatorPortInUse",
    "EmulatorProcess",
    "EmulatorStartError",
    "find_emulator",
    "start_emulator",
]

EMULATOR_DIR: Final = Path("/usr/lib/google-cloud-sdk/bin/cloud_spanner_emulator")
"""Where the Google Cloud SDK (apt or gcloud components) installs the emulator."""

EMULATOR_DIR_ENV: Final = "SPANGATE_EMULATOR_DIR"
"""Environment variable naming another directory holding ``emulator_main``."""

EMULATOR_BINARY: Final = "emulator_main"

LOOPBACK: Final = "127.0.0.1"

# Project used for the readiness probe; the emulator accepts any project id.
_PROBE_PROJECT: Final = "spangate-probe"


class EmulatorError(RuntimeError):
    """Base class of the errors raised by this module."""


class EmulatorMissing(EmulatorError):
    """The ``emulator_main`` binary is not installed where it was looked for."""


class EmulatorPortInUse(EmulatorError):
    """Something already answers on the port an emulator was asked to use."""


class EmulatorStartError(EmulatorError):
    """The emulator exited or did not become ready in time; the message has the log tail."""


def find_emulator(emulator_dir: Path | str | None = None) -> Path:
    """Return the path of the ``emulator_main`` executable.

    ``emulator_dir`` defaults to ``$SPANGATE_EMULATOR_DIR`` when that is set and
    non-empty, else :data:`EMULATOR_DIR`. The environment is read here only, at
    call time. Raises :class:`EmulatorMissing` (with installation instructions)
    when the directory has no executable ``emulator_main``.
    """
    if emulator_dir is None:
        emulator_dir = os.environ.get(EMULATOR_DIR_ENV) or EMULATOR_DIR
    binary = Path(emulator_dir) / EMULATOR_BINARY
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        raise EmulatorMissing(
            f"the Cloud Spanner emulator was not found at {binary}: install it with "
            "`gcloud components install cloud-spanner-emulator` or the apt package "
            "`google-cloud-cli-spanner-emulator`, or run its container image "
            "(gcr.io/cloud-spanner-emulator/emulator) and set "
            "SPANNER_EMULATOR_HOST=host:port"
        )
    return binary


def _answers(port: int, host: str = LOOPBACK, timeout: float = 0.25) -> bool:
    """Return True when a TCP connect to ``host:port`` succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _grpc_ready(host: str, timeout: float) -> str | None:
    """Make one ListInstanceConfigs call; return None on success, else the error text."""
    # Imported lazily: google.cloud.spanner_* costs ~0.3 s to import.
    import grpc
    from google.cloud.spanner_admin_instance_v1 import InstanceAdminClient
    from google.cloud.spanner_admin_instance_v1.services.instance_admin.transports import (
        InstanceAdminGrpcTransport,
    )

    channel = grpc.insecure_channel(host)
    try:
        client = InstanceAdminClient(transport=InstanceAdminGrpcTransport(channel=channel))
        pages = client.list_instance_configs(parent=f"projects/{_PROBE_PROJECT}", timeout=timeout)
        next(iter(pages), None)
    except Exception as exc:  # noqa: BLE001 - any failure means "not ready yet"
        return f"{type(exc).__name__}: {exc}"
    finally:
        channel.close()
    return None


def _log_tail(log_path: Path | None, max_bytes: int = 4000) -> str:
    """Return the end of the emulator log, or a note saying why there is none."""
    if log_path is None:
        return "(no log captured: pass log_path to start_emulator to keep one)"
    try:
        with log_path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            text = fh.read().decode("utf-8", "replace")
    except OSError as exc:
        return f"(log {log_path} unreadable: {exc})"
    return text.strip() or f"(log {log_path} is empty)"


class EmulatorProcess(StoppedOnExit):
    """A running ``emulator_main`` started by :func:`start_emulator`.

    ``host`` is ``"127.0.0.1:PORT"``, the value for ``SPANNER_EMULATOR_HOST`` or a
    client's ``api_endpoint``. :meth:`stop` is idempotent; leaving a ``with``
    block stops the emulator, and so does interpreter exit if nobody did.
    """

    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        port: int,
        log_path: Path | None,
        log_file: IO[bytes] | None,
    ) -> None:
        self._proc = proc
        self.port: int = port
        self.host: str = f"{LOOPBACK}:{port}"
        self.log_path: Path | None = log_path
        self._log_file = log_file
        # Safety net: do not let the emulator outlive this interpreter.
        self._finalizer = weakref.finalize(self, terminate_group, proc, 5.0)

    @property
    def pid(self) -> int:
        """Process id of ``emulator_main`` (also its process group id)."""
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        """Exit status once the process has exited, else None."""
        return self._proc.poll()

    def is_running(self) -> bool:
        """Return True while the emulator process has not exited."""
        return self._proc.poll() is None

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the emulator: SIGTERM to its process group, SIGKILL after ``timeout`` s.

        Returns once the process has been reaped. Safe to call more than once.
        """
        self._finalizer.detach()
        terminate_group(self._proc, timeout)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


    def __repr__(self) -> str:
        state = "running" if self.is_running() else f"exited({self._proc.returncode})"
        return f"EmulatorProcess(host={self.host!r}, pid={self.pid}, {state})"


def start_emulator(
    *,
    port: int | None = None,
    extra_args: Sequence[str] = (),
    log_path: Path | None = None,
    timeout: float = 20.0,
    emulator_dir: Path | str | None = None,
) -> EmulatorProcess:
    """Start ``emulator_main --host_port 127.0.0.1:PORT`` and wait until it serves gRPC.

    ``port`` defaults to a free one. If something already answers on the given
    port, raises :class:`EmulatorPortInUse` instead of starting a second emulator
    on it. ``extra_args`` are passed through, e.g. ``["--log_requests"]`` or
    ``["--enable_fault_injection"]``. Output goes to ``log_path`` (truncated)
    or is discarded. Raises :class:`EmulatorMissing` when the binary is absent,
    and :class:`EmulatorStartError` (with the log tail) when the process exits
    or does not answer a gRPC call within ``timeout`` seconds; in that case the
    process has been stopped.
    """
    binary = find_emulator(emulator_dir)
    if port is not None and not 0 < port < 65536:
        raise ValueError(f"invalid port {port}")
    if port is None:
        port = free_port()
    elif _answers(port):
        raise EmulatorPortInUse(
            f"port {port} on {LOOPBACK} already answers: refusing to start a second "
            "emulator there (two emulators can share a port and the old one would "
            "answer); stop it or pass port=None for a free port"
        )
    argv = [str(binary), "--host_port", f"{LOOPBACK}:{port}", *extra_args]
    log_file: IO[bytes] | None = None
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_file = log_path.open("wb")
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log_file if log_file is not None else subprocess.DEVNULL,
            stderr=subprocess.STDOUT if log_file is not None else subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
        )
    except BaseException:
        if log_file is not None:
            log_file.close()
        raise
    emulator = EmulatorProcess(proc, port, log_path, log_file)

    try:
        _wait_ready(emulator, argv, timeout)
    except BaseException:
        emulator.stop()
        raise
    return emulator


def _wait_ready(emulator: EmulatorProcess, argv: Sequence[str], timeout: float) -> None:
    """Poll until ``emulator`` accepts TCP and answers ListInstanceConfigs, else raise."""
    deadline = time.monotonic() + timeout
    last_error = "port never accepted a TCP connection"
    delay = 0.01
    while True:
        code = emulator.returncode
        if code is not None:
            raise EmulatorStartError(
                f"{' '.join(argv)} exited with status {code} before serving:\n"
                f"{_log_tail(emulator.log_path)}"
            )
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise EmulatorStartError(
                f"{' '.join(argv)} (pid {emulator.pid}) did not serve gRPC within "
                f"{timeout:g} s (last error: {last_error}):\n{_log_tail(emulator.log_path)}"
            )
        if _answers(emulator.port, timeout=min(0.25, remaining)):
            error = _grpc_ready(emulator.host, timeout=max(0.1, min(2.0, remaining)))
            if error is None:
                # The port may also be served by a stale emulator sharing it
                # (SO_REUSEPORT); ours must still be alive for the answer to count.
                if emulator.is_running():
                    return
                continue
            last_error = error
        time.sleep(delay)
        delay = min(delay * 2, 0.2)
