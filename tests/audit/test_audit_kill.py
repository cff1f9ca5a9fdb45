"""A real `spangate serve` under load: kill -9 loses no answered request's event, a restart
chains onto the trail it finds, SIGINT flushes everything, and `spangate audit verify` agrees."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from conftest import POLICY, read_events, request_id

from gateway.dev.ports import free_port

SPANGATE = [sys.executable, "-m", "gateway"]
SECRET = "kill-test-secret"  # noqa: S105 - a test key


def _start(audit: Path, host: str, issuer: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {
        **os.environ,
        "SPANNER_EMULATOR_HOST": host,
        "OKTA_ISSUER": issuer,
        "SPANGATE_AUDIT_PATH": str(audit),
        "SPANGATE_AUDIT_KEY": SECRET,
        "SPANGATE_LOG_LEVEL": "error",
    }
    process = subprocess.Popen(
        [*SPANGATE, "serve", "--policy", str(POLICY), "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, "the server exited"
        try:
            if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                return process, base
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    process.kill()
    raise AssertionError("the server never became ready")


class Load:
    """Threads that send reads and writes until stopped, keeping every answer they got."""

    def __init__(self, base: str, reader: str, writer: str, threads: int = 6) -> None:
        self.answered: list[tuple[str, int]] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, args=(base, reader, writer, i))
            for i in range(threads)
        ]

    def _run(self, base: str, reader: str, writer: str, i: int) -> None:
        with httpx.Client(base_url=base, timeout=5) as http:
            n = 0
            while not self._stop.is_set():
                n += 1
                try:
                    if i % 3 == 0:
                        body = {"order_id": f"O-{i}{n}{time.time_ns() % 10**8}",
                                "customer_id": "C-1", "total_cents": n}  # fmt: skip
                        r = http.post("/v1/orders", json=body, headers={"Authorization": writer})
                    else:
                        r = http.get("/v1/orders/O-1001", headers={"Authorization": reader})
                except httpx.TransportError:
                    continue  # the server is gone: no answer, so no promise
                with self._lock:
                    self.answered.append((r.headers["x-request-id"], r.status_code))

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()

    def wait_for(self, count: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while len(self.answered) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(self.answered) >= count, f"only {len(self.answered)} answers"


def _verify(*files: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SPANGATE_AUDIT_KEY": SECRET}
    return subprocess.run(
        [*SPANGATE, "audit", "verify", *map(str, files)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_kill_9_under_load_then_restart_then_graceful_stop(
    audit_database: str, idp: Any, token_for: Callable[..., str], tmp_path: Path
) -> None:
    audit = tmp_path / "audit.jsonl"
    reader = f"Bearer {token_for('support-console')}"
    writer = f"Bearer {token_for('order-writer')}"

    process, base = _start(audit, audit_database, idp.issuer)
    with Load(base, reader, writer) as load:
        load.wait_for(150)
        os.kill(process.pid, signal.SIGKILL)  # mid-flight: requests are being served
        process.wait()
    killed_answers = list(load.answered)
    assert {s for _, s in killed_answers} == {200}
    written = {request_id(e) for e in read_events_tolerant(audit)}
    missing = [rid for rid, _ in killed_answers if rid not in written]
    assert not missing, f"{len(missing)} answered requests are not in the trail"
    result = _verify(audit)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "chain(s)" in result.stdout and "HMAC-SHA256" in result.stdout

    process, base = _start(audit, audit_database, idp.issuer)  # the same file: a new chain
    spoofed = httpx.get(  # uvicorn must not take X-Forwarded-For from an untrusted peer
        base + "/v1/orders/O-1001",
        headers={"Authorization": reader, "X-Forwarded-For": "198.51.100.9"},
    )
    with Load(base, reader, writer) as load:
        load.wait_for(60)
        process.send_signal(signal.SIGINT)  # graceful: in-flight requests finish, events flush
        assert process.wait(timeout=30) == 0
    second_answers = list(load.answered)
    events = read_events(audit)  # the restart cut any partial line the kill left
    written = {request_id(e) for e in events}
    assert all(rid in written for rid, _ in second_answers)
    (spoof_event,) = [e for e in events if request_id(e) == spoofed.headers["x-request-id"]]
    assert spoof_event["httpRequest"]["remoteIp"] == "127.0.0.1"
    chains = list(dict.fromkeys(e["chain"] for e in events))
    assert len(chains) == 2
    restart = next(e for e in events if e["chain"] == chains[1])
    last_before = [e for e in events if e["chain"] == chains[0]][-1]
    assert restart["seq"] == 1 and restart["prev"] == last_before["hash"]
    result = _verify(audit)
    assert result.returncode == 0 and "2 chain(s)" in result.stdout, result.stdout + result.stderr
    assert "starts without naming its predecessor" not in result.stderr

    lines = audit.read_bytes().splitlines(keepends=True)
    victim = len(lines) // 2
    audit.write_bytes(b"".join(lines[:victim] + lines[victim + 1 :]))  # an event goes missing
    result = _verify(audit)
    assert result.returncode == 1
    assert result.stdout.startswith(f"{audit}:{victim + 1}:") and "deleted" in result.stdout


def read_events_tolerant(path: Path) -> list[dict[str, Any]]:
    """The events of a file a kill may have left with a partial last line."""
    import json

    out = []
    for line in path.read_bytes().splitlines(keepends=True):
        if line.endswith(b"\n"):
            out.append(json.loads(line))
    return out
