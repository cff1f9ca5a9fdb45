"""Fail closed: when a strict sink cannot write, callers get 503 audit-unavailable, never an
unaudited 200; when it recovers, the trail goes on without a gap."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import POLICY, read_events, request_id

from gateway.audit.chain import AuditKeys
from gateway.audit.verify import verify_trail
from gateway.dev.ports import free_port
from gateway.settings import Settings

Token = Callable[..., str]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _order(http: httpx.AsyncClient, token: str) -> httpx.Response:
    body = {"order_id": f"O-{time.time_ns() % 10**12}", "customer_id": "C-1", "total_cents": 5}
    return await http.post("/v1/orders", json=body, headers=bearer(token))


async def test_a_full_disk_refuses_writes_and_reads_until_it_has_room(
    make_settings: Callable[..., Settings],
    serve: Any,
    token_for: Token,
    audit_file: Path,
    audit_key: str,
) -> None:
    audit_file.symlink_to("/dev/full")  # every write fails with ENOSPC
    writer, reader = token_for("order-writer"), token_for("support-console")
    async with serve(make_settings()) as (gateway, http):
        refused = [await _order(http, writer) for _ in range(3)]
        refused.append(await http.get("/v1/orders/O-1001", headers=bearer(reader)))
        assert [r.status_code for r in refused] == [503] * 4
        assert all(r.json()["code"] == "audit-unavailable" for r in refused)
        assert refused[0].headers["retry-after"]
        assert gateway.audit.metrics().failures >= 4 and not gateway.audit.available
        audit_file.unlink()  # room again: the next event re-opens the sink
        probe = await http.get("/v1/orders/O-1001", headers=bearer(reader))
        served = [await _order(http, writer) for _ in range(2)]
    # The probe's statement did not run while the sink was failing; its refusal was recorded.
    assert probe.status_code == 503 and [r.status_code for r in served] == [200, 200]
    events = read_events(audit_file)
    assert [request_id(e) for e in events] == [
        probe.headers["x-request-id"], *(r.headers["x-request-id"] for r in served),
    ]  # fmt: skip
    assert [e["seq"] for e in events] == [1, 2, 3]  # the refused events left no gap
    assert events[0]["protoPayload"]["status"]["message"] == "audit-unavailable"
    assert verify_trail([audit_file], AuditKeys.from_secret(audit_key.encode()).chain).ok


async def test_an_unwritable_path_gives_503s_not_unaudited_200s(
    make_settings: Callable[..., Settings],
    serve: Any,
    token_for: Token,
    tmp_path: Path,
) -> None:
    blocker = tmp_path / "logs"
    blocker.write_text("a file where the audit directory should be")
    path = blocker / "audit.jsonl"
    async with serve(make_settings(audit_path=path)) as (gateway, http):
        assert not gateway.audit.available  # it could not be opened at start-up
        token = token_for("order-writer")
        statuses = [(await _order(http, token)).status_code for _ in range(3)]
        assert statuses == [503, 503, 503]
        blocker.unlink()  # the volume is mounted: the next event opens the file
        first = await _order(http, token)
        second = await _order(http, token)
    assert (first.status_code, second.status_code) == (503, 200)
    assert [request_id(e) for e in read_events(path)] == [
        first.headers["x-request-id"], second.headers["x-request-id"],
    ]  # fmt: skip


# -- a real process whose disk fills up under load ----------------------------------------------


@pytest.fixture
def limited_server(
    audit_database: str, idp: Any, tmp_path: Path, audit_key: str
) -> Iterator[tuple[str, Path, subprocess.Popen[bytes]]]:
    port = free_port()
    audit = tmp_path / "audit.jsonl"
    env = {
        **os.environ,
        "SPANGATE_DRAIN_SECONDS": "0",  # stopped without a drain (tests/served.py)
        "SPANNER_EMULATOR_HOST": audit_database,
        "OKTA_ISSUER": idp.issuer,
        "SPANGATE_AUDIT_PATH": str(audit),
        "SPANGATE_AUDIT_KEY": audit_key,
        "SPANGATE_LOG_LEVEL": "error",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--policy", str(POLICY), "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    # Its "disk": writes past 20 KB fail with EFBIG (Python ignores SIGXFSZ). Nothing is written
    # before the first request, so setting the limit just after the start is in time.
    resource.prlimit(process.pid, resource.RLIMIT_FSIZE, (20_000, resource.RLIM_INFINITY))
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert process.poll() is None, "the server exited"
            try:
                if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        else:
            raise AssertionError("the server did not become ready within 30 s")
        yield base, audit, process
    finally:
        process.kill()
        process.wait()


def test_a_disk_that_fills_up_under_load_never_serves_an_unaudited_200(
    limited_server: tuple[str, Path, subprocess.Popen[bytes]], token_for: Token, audit_key: str
) -> None:
    base, audit, process = limited_server
    headers = bearer(token_for("support-console"))
    answered: list[tuple[int, str]] = []
    with httpx.Client(base_url=base, headers=headers, timeout=10) as http:
        for _ in range(60):  # ~1.5 KB per event: the 20 KB "disk" fills up on the way
            r = http.get("/v1/orders/O-1001")
            answered.append((r.status_code, r.headers["x-request-id"]))
        statuses = [s for s, _ in answered]
        assert 200 in statuses and 503 in statuses, statuses
        first_refusal = statuses.index(503)
        assert set(statuses[first_refusal:]) == {503}  # no 200 once the disk is full
        full_size = audit.stat().st_size
        assert full_size <= 20_000 and audit.read_bytes().endswith(b"\n")  # no partial line
        resource.prlimit(process.pid, resource.RLIMIT_FSIZE, (10_000_000, resource.RLIM_INFINITY))
        after = [http.get("/v1/orders/O-1001") for _ in range(3)]
    assert [r.status_code for r in after][-2:] == [200, 200]
    written = {request_id(e) for e in read_events(audit)}
    ok = [rid for status, rid in answered if status == 200]
    assert ok and set(ok) <= written  # every 200 is in the trail
    assert {r.headers["x-request-id"] for r in after if r.status_code == 200} <= written
    report = verify_trail([audit], AuditKeys.from_secret(audit_key.encode()).chain)
    assert report.ok, report.broken
