"""The supervisor of ``spangate serve --workers 2`` and its workers' lives, end to end: how workers
are started (``python -P``), which policy a replacement loads, how signals are counted and
kept, what happens when the supervisor stops or dies, restarts and their budget, and the same
start-up refusals as one process. The emulator, the OpenID provider and a redis-server (the
example policy has budgets, which workers must share) are the session's."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from served import EXAMPLE_POLICY, SPANGATE, Served, served, start_served, stop_process
from served_workers import fresh, readyz_of_both, until, worker_options, workers_of

from gateway.dev.idp import IdpProcess
from gateway.dev.redis import RedisProcess


def _options(
    tmp_path: Path, demo_database: str, idp: IdpProcess, audit_key: str, redis: RedisProcess,
    policy: Path | None = None, **env: str,
) -> dict[str, Any]:  # fmt: skip
    """``worker_options``, logging at info (the supervisor's and drains' lines) unless ``env``
    says otherwise."""
    env.setdefault("SPANGATE_LOG_LEVEL", "info")
    return worker_options(tmp_path, demo_database, idp, audit_key, redis, policy, **env)


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_workers_import_nothing_from_the_working_directory(
    tmp_path: Path, demo_database: str, idp: IdpProcess, audit_key: str,
    redis_server: RedisProcess,
) -> None:  # fmt: skip
    # A `gateway` package in the working directory: `python -m gateway.workers` without -P
    # would run its workers.py instead of the gateway's.
    planted = tmp_path / "gateway"
    planted.mkdir()
    (planted / "__init__.py").write_text("")
    marker = tmp_path / "imported"
    (planted / "workers.py").write_text(
        f"import pathlib, sys\npathlib.Path({str(marker)!r}).write_text('yes')\nsys.exit(1)\n"
    )
    options = _options(tmp_path, demo_database, idp, audit_key, redis_server)
    with served(tmp_path, cwd=tmp_path, **options) as server:
        assert fresh(server, "/readyz").status_code == 200
        assert set(workers_of(server)) == {1, 2}
    assert not marker.exists()


def slow_request(server: Served, token: str) -> socket.socket:
    """A POST whose body stops half way: a request in flight until the client closes."""
    conn = socket.create_connection(("127.0.0.1", server.port))
    body = b'{"order_id": "O-1", "customer_id": "C-1", "total_cents": 5}'
    conn.sendall(
        b"POST /v1/orders HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {token}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body[:10]
    )
    return conn


def refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            return False
    except ConnectionRefusedError:
        return True


def exited(server: Served) -> int:
    until(lambda: server.process.poll() is not None, "the supervisor exited")
    return server.process.returncode


def test_sigterm_while_workers_start_is_kept_and_acted_on(
    tmp_path: Path, demo_database: str, idp: IdpProcess, audit_key: str,
    redis_server: RedisProcess,
) -> None:  # fmt: skip
    options = _options(tmp_path, demo_database, idp, audit_key, redis_server)
    server = start_served(tmp_path, wait="no", **options)
    try:
        until(lambda: set(workers_of(server)) == {1, 2}, "both workers started")
        server.process.send_signal(signal.SIGTERM)  # they are importing: no handler yet
        code = exited(server)
    finally:
        stop_process(server.process)
    log = server.log.read_text()
    # Each worker started, then stopped as told (exit 0); none was ended by the signal.
    assert code == 0, log
    assert "exited -15" not in log and "died" not in log, log


def test_a_stop_signal_delivered_twice_counts_once(
    tmp_path: Path, demo_database: str, idp: IdpProcess, audit_key: str,
    redis_server: RedisProcess,
) -> None:  # fmt: skip
    options = _options(
        tmp_path, demo_database, idp, audit_key, redis_server, SPANGATE_DRAIN_SECONDS="300"
    )
    server = start_served(tmp_path, **options)
    try:
        until(lambda: fresh(server, "/readyz").json()["worker"] == 2, "worker 2 answers")
        until(lambda: fresh(server, "/readyz").json()["worker"] == 1, "worker 1 answers")
        # As a terminal's Ctrl-C or a group's SIGTERM through a wrapper that forwards it.
        # (Two of one kind sent at once may reach it as one: the kernel queues one of each.)
        os.kill(server.process.pid, signal.SIGINT)
        time.sleep(0.2)  # handled by now, mostly: the second is a signal of its own
        os.kill(server.process.pid, signal.SIGTERM)
        until(lambda: server.log.read_text().count("stopping: /readyz says 503") == 2, "drains")
        log = server.log.read_text()
        assert log.count("serving 300 s more") == 2, log  # the drain, not ended at once
        answer = fresh(server, "/readyz")
        assert answer.status_code == 503 and answer.json()["reason"] == "draining"
        time.sleep(1.5)  # past the echo window (gateway.server.ECHO_SECONDS)
        os.kill(server.process.pid, signal.SIGTERM)  # a second stop, on purpose: no more drain
        code = exited(server)  # long before the 300 s drain would have ended
    finally:
        stop_process(server.process)
    assert code == 0, server.log.read_text()


def test_a_supervisor_killed_leaves_no_worker_behind(
    tmp_path: Path, demo_database: str, idp: IdpProcess, audit_key: str,
    redis_server: RedisProcess,
) -> None:  # fmt: skip
    options = _options(tmp_path, demo_database, idp, audit_key, redis_server)
    server = start_served(tmp_path, **options)
    pids = until(lambda: len(found := workers_of(server)) == 2 and found, "both workers")
    try:
        server.process.kill()
        server.process.wait()
        until(lambda: not any(alive(pid) for pid in pids.values()), "the workers stopped")
        with socket.socket() as probe:  # the port is free for the next instance
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(("127.0.0.1", server.port))
    finally:
        for pid in pids.values():
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_the_port_is_released_while_workers_finish_their_requests(
    tmp_path: Path, demo_database: str, idp: IdpProcess, audit_key: str,
    redis_server: RedisProcess, token_for: Callable[..., str],
) -> None:  # fmt: skip
    options = _options(
        tmp_path, demo_database, idp, audit_key, redis_server,
        SPANGATE_SHUTDOWN_TIMEOUT_SECONDS="300", SPANGATE_BODY_TIMEOUT_SECONDS="300",
    )  # fmt: skip
    server = start_served(tmp_path, **options)
    held = slow_request(server, token_for("order-writer"))
    try:
        until(lambda: fresh(server, "/readyz").status_code == 200, "still ready")
        server.process.send_signal(signal.SIGTERM)
        # The workers stop listening after the drain (0 s); the supervisor must not keep the
        # port listening for them, with connections queued that nobody accepts.
        until(lambda: refused(server.port), "the port refuses connections")
        assert server.process.poll() is None  # still finishing the held request
        held.close()
        code = exited(server)
    finally:
        held.close()
        stop_process(server.process)
    assert code == 0, server.log.read_text()


def test_workers_refuse_what_one_process_refuses_alike(tmp_path: Path, audit_key: str) -> None:
    # The example policy paginates: without cursor keys one process refuses to start (exit 2);
    # so must the supervisor, with the same message, before any worker starts.
    env = {k: v for k, v in os.environ.items() if k != "SPANGATE_CURSOR_KEYS"}
    env |= {
        "SPANGATE_AUDIT_KEY": audit_key,
        "OKTA_ISSUER": "https://idp.invalid/oauth2/default",
        "SPANGATE_REDIS_URL": "redis://127.0.0.1:1",  # never reached
    }
    said = {}
    for workers in ("1", "2"):
        done = subprocess.run(
            [*SPANGATE, "serve", "--policy", str(EXAMPLE_POLICY), "--port", "0",
             "--workers", workers],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 2, done.stderr
        said[workers] = [
            json.loads(line)["message"]
            for line in done.stderr.splitlines()
            if "SPANGATE_CURSOR_KEYS" in line
        ]
        assert "worker 1 started" not in done.stderr
    assert said["1"] and said["1"] == said["2"]


def _sha_of_each(server: Served) -> dict[int, str]:
    return {worker: body["policy_sha256"] for worker, body in readyz_of_both(server).items()}


def test_a_replacement_worker_loads_the_accepted_policy_not_the_file_now(
    tmp_path: Path, demo_database: str, idp: IdpProcess, audit_key: str,
    redis_server: RedisProcess,
) -> None:  # fmt: skip
    options = _options(tmp_path, demo_database, idp, audit_key, redis_server)
    policy: Path = options["policy"]
    with served(tmp_path, **options) as server:
        first = set(_sha_of_each(server).values())
        # Reviewed and reloaded: accepted.
        policy.write_text(policy.read_text() + "\n# reviewed\n")
        server.process.send_signal(signal.SIGHUP)
        reloaded: dict[int, str] = {}

        def both_reloaded() -> bool:
            body = fresh(server, "/readyz").json()
            reloaded[body["worker"]] = body["policy_sha256"]
            return len(reloaded) == 2 and not set(reloaded.values()) & first

        until(both_reloaded, "both workers reloaded")
        accepted = set(reloaded.values())
        assert len(accepted) == 1
        # Edited since, never reloaded: a worker started now must not serve it.
        policy.write_text(policy.read_text() + "\n# not reviewed\n")
        victim = workers_of(server)[1]
        os.kill(victim, signal.SIGKILL)
        until(
            lambda: (pid := workers_of(server).get(1)) is not None and pid != victim,
            "worker 1 replaced",
        )

        def replacement_answers() -> bool:
            body = fresh(server, "/readyz").json()
            return body["worker"] == 1 and workers_of(server).get(1) != victim and body
        until(replacement_answers, "the replacement answers")
        assert set(_sha_of_each(server).values()) == accepted
        assert server.process.poll() is None
        metrics = fresh(server, "/metrics").text
        assert 'spangate_worker_restarts_total{worker="1"} 1.0' in metrics
        assert 'spangate_worker_restarts_total{worker="2"} 0.0' in metrics
