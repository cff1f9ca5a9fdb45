"""A real ``spangate serve`` for end-to-end tests, started the one way every such test needs.

``start_served`` runs ``python -m gateway serve`` on a free loopback port with the given policy (the
example policy by default, which redacts, so an audit key is always set, and paginates, so cursor
keys are always set: ``CURSOR_KEYS`` unless ``env`` says otherwise), the emulator and the
OpenID provider from the session fixtures, and waits for ``/readyz`` (on ``SPANGATE_ADMIN_PORT``
when the test sets one); ``Served.stop`` sends SIGINT (what Ctrl-C and Kubernetes do) and kills
the process if it has not exited within 20 s. Its output goes to ``Served.log``, which a failed
start-up shows.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx

from gateway.dev.ports import free_port

__all__ = [
    "CURSOR_KEYS",
    "EXAMPLE_POLICY",
    "SPANGATE",
    "Served",
    "served",
    "start_served",
    "stop_process",
]

SPANGATE = [sys.executable, "-m", "gateway"]
EXAMPLE_POLICY = Path(__file__).resolve().parents[1] / "policy.example.yaml"
STARTUP_SECONDS = 60  # generous: the start-up warms Spanner sessions on a loaded machine
# The tests' SPANGATE_CURSOR_KEYS (one base64url 256-bit key; not a secret): conftest puts it in
# the environment, which every `spangate serve` and Settings() of the test session reads.
CURSOR_KEYS = "c3BhbmdhdGUtdGVzdC1jdXJzb3Ita2V5LTMyYnl0ZXM"


def stop_process(process: subprocess.Popen[Any], timeout: float = 20) -> int:
    """SIGINT, then SIGKILL when it has not exited within ``timeout``; its exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


@dataclass
class Served:
    process: subprocess.Popen[bytes]
    port: int
    audit: Path
    log: Path
    admin_port: int | None = None  # SPANGATE_ADMIN_PORT, when the test set one

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_with(self, text: str, timeout: float = 15.0) -> str:
        """The server's log once it holds ``text`` (log lines reach the file from a writer thread,
        in batches: a line is not there the moment its request was answered); the log as it is
        after ``timeout`` otherwise, for the caller's assertion to show."""
        deadline = time.monotonic() + timeout
        while True:
            log = self.log.read_text()
            if text in log or time.monotonic() > deadline:
                return log
            time.sleep(0.05)

    @property
    def health_base(self) -> str:
        """Where /healthz, /readyz and /metrics are served: the admin port, else the API's."""
        return f"http://127.0.0.1:{self.admin_port or self.port}"

    def trail_files(self) -> list[Path]:
        """The audit files written so far: the file, or with ``SPANGATE_WORKERS`` one per worker
        (``audit-PORT.wN.jsonl``), and their rotated files."""
        stem, suffix = self.audit.stem, self.audit.suffix
        return sorted(
            {*self.audit.parent.glob(f"{stem}{suffix}*"), *self.audit.parent.glob(
                f"{stem}.w*{suffix}*"
            )}
        )

    def events(self, request_id: str | None = None) -> list[dict[str, Any]]:
        """The audit events written so far, of every file (those of one request id when
        given)."""
        events = [
            json.loads(line)
            for path in self.trail_files()
            for line in path.read_text().splitlines()
            if line
        ]
        if request_id is None:
            return events
        return [
            e
            for e in events
            if e["protoPayload"]["requestMetadata"]["requestAttributes"]["id"] == request_id
        ]

    def stop(self) -> int:
        return stop_process(self.process)


def start_served(
    folder: Path,
    *,
    database: str,
    issuer: str | None,
    audit_key: str | None,
    policy: Path = EXAMPLE_POLICY,
    env: Mapping[str, str] | None = None,
    wait: Literal["ready", "answering", "no"] = "ready",
    cwd: Path | None = None,
) -> Served:
    """Start ``spangate serve``; ``env`` adds or overrides variables (``SPANGATE_*`` settings,
    the policy's ``${VAR}``s). ``wait``: for ``/readyz`` 200, for any answer, or not at all.
    ``cwd``: run it there, as ``python -P`` (nothing in ``cwd`` is imported in its place)."""
    port = free_port()
    audit = folder / f"audit-{port}.jsonl"
    log = folder / f"serve-{port}.log"
    variables = {
        **os.environ,
        "SPANNER_EMULATOR_HOST": database,
        "SPANGATE_AUDIT_PATH": str(audit),
        "SPANGATE_LOG_LEVEL": "warning",
        # Stopped at once: a test that drains says so (env SPANGATE_DRAIN_SECONDS).
        "SPANGATE_DRAIN_SECONDS": "0",
        "SPANGATE_CURSOR_KEYS": os.environ.get("SPANGATE_CURSOR_KEYS", CURSOR_KEYS),
    }
    if issuer is not None:
        variables["OKTA_ISSUER"] = issuer
    if audit_key is not None:
        variables["SPANGATE_AUDIT_KEY"] = audit_key
    variables.update(env or {})
    with log.open("wb") as out:
        command = SPANGATE if cwd is None else [SPANGATE[0], "-P", *SPANGATE[1:]]
        process = subprocess.Popen(
            [*command, "serve", "--policy", str(policy), "--port", str(port)],
            env=variables,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = Served(process, port, audit, log, int(variables.get("SPANGATE_ADMIN_PORT", 0)) or None)
    if wait != "no":
        try:
            _wait(server, ready=wait == "ready")
        except BaseException:
            server.stop()
            raise
    return server


@contextmanager
def served(folder: Path, **options: Any) -> Iterator[Served]:
    """``start_served`` for a ``with`` block: stopped at its end, whatever happened; a server
    that did not exit cleanly (0) after SIGINT fails a block that otherwise passed."""
    server = start_served(folder, **options)
    try:
        yield server
    except BaseException:
        server.stop()
        raise
    code = server.stop()
    assert code == 0, f"spangate serve exited {code} after SIGINT: {server.log.read_text()}"


def _wait(server: Served, *, ready: bool) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while True:
        if server.process.poll() is not None:
            raise AssertionError(f"spangate serve exited: {server.log.read_text()}")
        try:
            answer = httpx.get(f"{server.health_base}/readyz", timeout=2.0)
            if answer.status_code == 200 or not ready:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"spangate serve never became ready: {server.log.read_text()}")
        time.sleep(0.1)
