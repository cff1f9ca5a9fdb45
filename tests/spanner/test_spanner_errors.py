"""Spanner errors -> stable codes: the mapping table (pure), and the emulator stopped and started
again under a running gateway (503s, then recovery without restarting the gateway)."""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from pathlib import Path
from typing import Any

import pytest
from google.api_core import exceptions as gexc
from spanner_stack import Token, bearer, gateway_on, make_database, policy_text

from gateway.dev.emulator import start_emulator
from gateway.spanner.errors import map_error, withheld


@pytest.mark.parametrize(
    ("exc", "status", "code", "retry_after"),
    [
        (gexc.AlreadyExists("Row [1] in table Items already exists"), 409, "conflict", None),
        (gexc.FailedPrecondition("foreign key"), 409, "precondition-failed", None),
        (gexc.Aborted("Transaction was aborted."), 409, "aborted", None),
        (gexc.InvalidArgument("division by zero"), 400, "statement-rejected", None),
        (gexc.OutOfRange("overflow"), 400, "statement-rejected", None),
        (gexc.DeadlineExceeded("Deadline Exceeded"), 504, "timeout", None),
        (gexc.ServiceUnavailable("connection refused"), 503, "spanner-unavailable", "2"),
        (gexc.ResourceExhausted("quota"), 503, "spanner-unavailable", "2"),
        (gexc.RetryError("retries exhausted", None), 503, "spanner-unavailable", "2"),
        (gexc.PermissionDenied("Role r lacks SELECT"), 500, "identity-lacks-grant", None),
        (gexc.NotFound("Table not found: Items"), 500, "statement-invalid", None),
        (gexc.NotFound("Session not found: projects/p/..."), 503, "spanner-unavailable", "2"),
        (gexc.NotFound("Parent row for row [t3,O-1] in table Items is missing. Row cannot be "
                       "written."), 409, "parent-row-missing", None),
        (gexc.NotFound("Insert failed because key was not found in parent table:  Parent Table: "
                       "Items  Child Table: Orders  Key: {String(\"t3\")}"), 409,
         "parent-row-missing", None),
        (gexc.InvalidArgument("Table not found: Items [at 1:15]"), 500, "statement-invalid", None),
        (gexc.InvalidArgument("Unrecognized name: Qty"), 500, "statement-invalid", None),
        (gexc.MethodNotImplemented("STRUCT"), 500, "statement-invalid", None),
        (gexc.InvalidArgument("The transaction contains too many mutations."), 422,
         "too-many-mutations", None),
        (gexc.Unknown("?"), 500, "spanner-error", None),
    ],
)  # fmt: skip
def test_map_error(exc: Exception, status: int, code: str, retry_after: str | None) -> None:
    error = map_error(exc, query="q", identity="i", role="r")
    assert (error.status, error.code) == (status, code)
    assert error.headers.get("Retry-After") == retry_after
    assert "Items" not in error.detail  # Spanner's words (tables, SQL) never reach the caller


def test_permission_denied_is_logged_loudly(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("ERROR", logger="spangate.spanner"):
        map_error(gexc.PermissionDenied("Role shop_reader lacks SELECT"), query="get_order",
                  identity="shop_reader", role="shop_reader")  # fmt: skip
    record = caplog.records[-1]
    assert record.levelname == "ERROR"
    assert "get_order" in record.getMessage() and "shop_reader" in record.getMessage()


QUOTING = [  # Spanner's messages quote values: a cast, a unique index, a check constraint
    gexc.InvalidArgument("Bad int64 value: wile@acme.example"),
    gexc.AlreadyExists("Unique index violation on index CustomersByEmail at index key "
                       "[wile@acme.example,C-1]. It conflicts with row [C-1] in table Customers."),
    gexc.OutOfRange("Check constraint `Positive` is violated for value wile@acme.example"),
    gexc.PermissionDenied("Role reader lacks SELECT on column Email: wile@acme.example"),
    gexc.NotFound("Session not found: wile@acme.example"),
    gexc.InvalidArgument("Unrecognized name: wile@acme.example"),
    gexc.FailedPrecondition("Foreign key violation: wile@acme.example"),
    gexc.Unknown("wile@acme.example"),
]  # fmt: skip


@pytest.mark.parametrize("exc", QUOTING, ids=lambda e: type(e).__name__)
def test_spanners_message_never_reaches_the_log(
    exc: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    """Whatever the query (masks or not): the log has the code and a digest, never the words."""
    with caplog.at_level("DEBUG", logger="spangate.spanner"):
        map_error(exc, query="q", identity="i", role="r")
    assert "wile" not in caplog.text
    for record in caplog.records:
        assert "Spanner's message withheld (digest " in record.getMessage()


def test_the_digest_tells_messages_apart_and_is_keyed() -> None:
    one = withheld(gexc.InvalidArgument("Bad int64 value: wile@acme.example"))
    assert one == withheld(gexc.InvalidArgument("Bad int64 value: wile@acme.example"))
    assert one != withheld(gexc.InvalidArgument("Bad int64 value: beep@acme.example"))
    digest = re.fullmatch(r"Spanner's message withheld \(digest ([0-9a-f]{12})\)", one)
    assert digest is not None
    plain = hashlib.sha256(b"Bad int64 value: wile@acme.example").hexdigest()
    assert digest[1] not in plain  # not a plain hash: a guess cannot be tested against it


POLICY = """\
identities:
  reader: {database_role: restart_reader}
  writer: {database_role: restart_writer}
queries:
  get:
    identity: reader
    sql: SELECT Id FROM Items WHERE Id = @id
    params: {id: {type: INT64}}
    timeout: 2s
  add:
    identity: writer
    sql: INSERT INTO Items (Id) VALUES (@id)
    params: {id: {type: INT64}}
    timeout: 2s
routes:
  - {path: "/items/{id}", method: GET, query: get, allow: [tester]}
  - {path: /items, method: POST, query: add, allow: [tester]}
"""
DDL = ["CREATE TABLE Items (Id INT64 NOT NULL) PRIMARY KEY (Id)"]
SEED = ["INSERT INTO Items (Id) VALUES (1)"]


async def test_emulator_stopped_then_started_again(
    tmp_path: Path, idp: Any, token_for: Token
) -> None:
    headers = bearer(token_for("support-console"))
    emulator = start_emulator(log_path=tmp_path / "emulator.log")
    port = emulator.port
    try:
        make_database(emulator.host, "restart", DDL, SEED)
        policy = policy_text("restart", POLICY)
        async with gateway_on(tmp_path, emulator.host, policy, issuer=idp.issuer) as (_, http):
            assert (await http.get("/items/1", headers=headers)).status_code == 200
            emulator.stop()
            down: list[tuple[int, str, float]] = []
            for item in (2, 3):
                started = time.perf_counter()
                read = await http.get("/items/1", headers=headers)
                down.append((read.status_code, read.json()["code"], time.perf_counter() - started))
                write = await http.post("/items", json={"id": item}, headers=headers)
                down.append((write.status_code, write.json()["code"], 0.0))
                assert write.headers["retry-after"] == "2"
            assert {(s, c) for s, c, _ in down} == {(503, "spanner-unavailable")}, down
            assert all(t < 2.5 for _, _, t in down)  # within the query's 2 s deadline
            emulator = start_emulator(port=port, log_path=tmp_path / "emulator2.log")
            make_database(emulator.host, "restart", DDL, SEED)  # its data died with it
            seen: list[tuple[int, str]] = []
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                read = await http.get("/items/1", headers=headers)
                if read.status_code == 200:
                    break
                seen.append((read.status_code, read.json()["code"]))
                await asyncio.sleep(0.2)
            assert read.status_code == 200, seen
            assert {s for s, _ in seen} <= {503}, seen  # never a 500 on the way back
            write = await http.post("/items", json={"id": 7}, headers=headers)
            assert write.status_code == 200, write.text
    finally:
        emulator.stop()
