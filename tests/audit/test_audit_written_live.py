"""Durability ``written`` through a real ``spangate serve``: every answered request's event is in
the file, readable by another process, when the answer arrives; SIGKILL right after the answers
loses none of them (the kernel holds what was written, synced or not); the trail verifies. On the
audit tests' policy and database (``conftest.POLICY``)."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from conftest import POLICY
from served import start_served

from gateway.audit.chain import AuditKeys
from gateway.audit.verify import verify_trail

# Syncs far apart: most answers below go out while their event is written and not yet synced.
SINK = "{type: file, path: audit.jsonl, durability: written, sync_interval: 4s, max_unsynced: 5s}"


def _ids_in(path: Path) -> list[str]:
    """The request ids of the file's whole lines, read as any other process reads it."""
    return [
        json.loads(line)["protoPayload"]["requestMetadata"]["requestAttributes"]["id"]
        for line in path.read_bytes().splitlines(keepends=True)
        if line.endswith(b"\n")
    ]


def test_written_answers_are_in_the_file_and_survive_kill_9(
    audit_database: str,
    idp: Any,
    token_for: Callable[..., str],
    audit_key: str,
    tmp_path: Path,
) -> None:
    text = POLICY.read_text()  # the audit tests' own database: writes stay out of the demo's
    default = "{type: file, path: audit.jsonl}"
    assert default in text
    policy = tmp_path / "policy.yaml"
    policy.write_text(text.replace(default, SINK))
    server = start_served(
        tmp_path, database=audit_database, issuer=idp.issuer, audit_key=audit_key, policy=policy
    )
    reader = {"Authorization": f"Bearer {token_for('support-console')}"}
    writer = {"Authorization": f"Bearer {token_for('order-writer')}"}
    answered: list[str] = []
    try:
        with httpx.Client(base_url=server.base, timeout=30) as http:
            for i in range(40):
                if i % 4 == 3:  # a write: with durability written, it too is answered once written
                    body = {"order_id": f"O-{time.time_ns() % 10**12}", "customer_id": "C-1",
                            "total_cents": i}  # fmt: skip
                    r = http.post("/v1/orders", json=body, headers=writer)
                else:
                    r = http.get("/v1/orders/O-1001", headers=reader)
                assert r.status_code == 200, r.text
                rid = r.headers["x-request-id"]
                assert rid in _ids_in(server.audit)  # on file before this process saw the answer
                answered.append(rid)
            os.kill(server.process.pid, signal.SIGKILL)  # right after the last answer
            server.process.wait(timeout=30)
    finally:
        server.stop()
    assert set(answered) <= set(_ids_in(server.audit))  # a crash lost no answered event
    report = verify_trail([server.audit], AuditKeys.from_secret(audit_key.encode()).chain)
    assert report.ok and report.events == len(answered), report.broken
