"""What the live tests of ``spangate serve --workers 2`` share (test_workers_live.py,
test_workers_lifecycle_live.py): the options ``served`` starts the supervisor with, requests on
new connections (which the kernel may hand to either worker), the workers' pids, and bounded
waits."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from served import EXAMPLE_POLICY, Served

from gateway.dev.idp import IdpProcess
from gateway.dev.redis import RedisProcess

__all__ = ["WAIT_SECONDS", "fresh", "readyz_of_both", "until", "worker_options", "workers_of"]

WAIT_SECONDS = 60  # bounds every wait (a loaded machine), never asserted on


def worker_options(
    tmp_path: Path, demo_database: str, idp: IdpProcess, audit_key: str, redis: RedisProcess,
    policy: Path | None = None, **env: str,
) -> dict[str, Any]:  # fmt: skip
    """``served``'s options for two workers on the session's emulator, OpenID provider and
    redis-server (the example policy has budgets, which workers must share): ``policy``, or a
    copy of the example policy in ``tmp_path``; ``env`` added to the environment."""
    if policy is None:
        policy = tmp_path / "policy.yaml"
        policy.write_text(EXAMPLE_POLICY.read_text())
    return {
        "policy": policy,
        "database": demo_database,
        "issuer": idp.issuer,
        "audit_key": audit_key,
        "env": {"SPANGATE_WORKERS": "2", "SPANGATE_REDIS_URL": redis.url, **env},
    }


def until(check: Callable[[], Any], what: str, seconds: float = WAIT_SECONDS) -> Any:
    """Repeat ``check`` until it returns something true (bounded: then the test fails)."""
    deadline = time.monotonic() + seconds
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.05)


def fresh(server: Served, path: str, token: str | None = None) -> httpx.Response:
    """One request on a new connection (so the kernel may hand it to either worker)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.get(server.base + path, headers=headers, timeout=30)


def readyz_of_both(server: Served) -> dict[int, dict[str, Any]]:
    """/readyz of worker 1 and worker 2 (new connections until each has answered)."""
    seen: dict[int, dict[str, Any]] = {}

    def both() -> bool:
        body = fresh(server, "/readyz").json()
        seen[body["worker"]] = body
        return len(seen) == 2

    until(both, "both workers answered /readyz")
    assert set(seen) == {1, 2}
    return seen


def workers_of(server: Served) -> dict[int, int]:
    """{worker number: pid} of the supervisor's children started with ``--worker N``."""
    found: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == server.process.pid and b"--worker" in argv:
            found[int(argv[argv.index(b"--worker") + 1])] = int(entry.name)
    return found
