"""The supervisor of ``spangate serve --workers 2`` and its workers' lives, end to end: how workers
are started (``python -P``), which policy a replacement loads, how signals are counted and
kept, what happens when the supervisor stops or dies, restarts and their budget, and the same
start-up refusals as one process. The emulator, the OpenID provider and a redis-server (the
example policy has budgets, which workers must share) are the session's."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from served import EXAMPLE_POLICY, Served, served

from gateway.dev.idp import IdpProcess
from gateway.dev.redis import RedisProcess

WAIT_SECONDS = 60  # bounds every wait below (a loaded machine), never asserted on


def until(check: Callable[[], Any], what: str, seconds: float = WAIT_SECONDS) -> Any:
    """Repeat ``check`` until it returns something true (bounded: then the test fails)."""
    deadline = time.monotonic() + seconds
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.05)


def _options(
    tmp_path: Path, demo_database: str, idp: IdpProcess, audit_key: str, redis: RedisProcess,
    policy: Path | None = None, **env: str,
) -> dict[str, Any]:  # fmt: skip
    if policy is None:
        policy = tmp_path / "policy.yaml"
        policy.write_text(EXAMPLE_POLICY.read_text())
    variables = {"SPANGATE_WORKERS": "2", "SPANGATE_REDIS_URL": redis.url, **env}
    return {
        "policy": policy,
        "database": demo_database,
        "issuer": idp.issuer,
        "audit_key": audit_key,
        "env": variables,
    }


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


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def fresh(server: Served, path: str, token: str | None = None) -> httpx.Response:
    """One request on a new connection (so the kernel may hand it to either worker)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.get(server.base + path, headers=headers, timeout=30)


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
