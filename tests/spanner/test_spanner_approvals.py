"""The approvals table missing: the start-up analysis says so (``approvals_ready``, a warning),
every call that needs the table answers 503 ``approval-table-missing`` (problem+json, audited,
nothing run), and a reload runs the same analysis again: SIGHUP's after ``spangate init-db``
made the table (calls then ask for approval), and a changed policy's that adds an approval; the
same in a PostgreSQL-dialect database."""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest
from google.api_core.datetime_helpers import DatetimeWithNanoseconds
from spanner_stack import (
    Token,
    apply_ddl,
    bearer,
    gateway_on,
    make_database,
    policy_text,
    query_rows,
)

from gateway.app import Gateway
from gateway.approvals.record import ListCursor
from gateway.spanner.approvals import DDL as APPROVALS_DDL
from gateway.spanner.approvals import PG_DDL as APPROVALS_PG_DDL
from gateway.spanner.results import rfc3339 as results_rfc3339

TABLE = ["CREATE TABLE Tickets (Id INT64 NOT NULL, Status STRING(16)) PRIMARY KEY (Id)"]
SEED = ["INSERT INTO Tickets (Id, Status) VALUES (1, 'OPEN'), (2, 'OPEN')"]
SEED_PG = ["INSERT INTO tickets (id, status) VALUES (1, 'OPEN'), (2, 'OPEN')"]

POLICY = """\
identities:
  writer: {{database_role: tickets_writer}}
queries:
  close:
    identity: writer
    sql: UPDATE Tickets SET Status = 'CLOSED' WHERE Id = @id THEN RETURN Id, Status
    params:
      id: {{type: INT64}}
routes:
  - path: "/tickets/{{id}}/close"
    method: POST
    query: close
    allow: [tester]
{approval}audit:
  sinks:
    - {{type: file, path: audit.jsonl}}
"""
APPROVAL = """\
    approval:
      approvers: [writer]
"""
WARNING = "identity writer cannot read the approvals table"


def _policy(database: str, *, approval: bool) -> str:
    return policy_text(database, POLICY.format(approval=APPROVAL if approval else ""))


def _ready(app: Gateway) -> dict[str, bool]:
    analysis = app.executor.analysis(app.policy)
    assert analysis is not None
    return dict(analysis.approvals_ready)


def _missing(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["code"] == "approval-table-missing" and body["request_id"]
    assert response.headers["retry-after"] == "5"
    assert "SpangateApprovals" not in response.text  # Spanner's words stay in the log


def _status(host: str, database: str, ticket: int) -> str:
    sql = f"SELECT Status FROM Tickets WHERE Id = {ticket}"  # noqa: S608
    return str(query_rows(host, database, sql)[0][0])


async def test_without_the_table_calls_are_503_until_init_db_and_a_sighup(
    demo_database: str,
    idp: Any,
    tmp_path: Path,
    token_for: Token,
    caplog: pytest.LogCaptureFixture,
) -> None:
    name = "sgnoapprovals"
    make_database(demo_database, name, TABLE, SEED)
    asker, approver = bearer(token_for("support-console")), bearer(token_for("order-writer"))
    caplog.set_level(logging.WARNING, logger="spangate")
    audit = tmp_path / "audit.jsonl"
    async with gateway_on(
        tmp_path, demo_database, _policy(name, approval=True), issuer=idp.issuer, audit_path=audit
    ) as (app, http):
        assert _ready(app) == {"writer": False}  # the start-up analysis
        assert WARNING in caplog.text

        asked = await http.post("/tickets/1/close", json={}, headers=asker)
        _missing(asked)
        assert "location" not in asked.headers
        presented = await http.post(
            "/tickets/1/close", json={}, headers={**asker, "Approval-Id": "0" * 32}
        )
        _missing(presented)
        _missing(await http.get("/approvals", headers=approver))  # what the approver may decide
        _missing(await http.get(f"/approvals/{'1' * 32}", headers=approver))
        _missing(await http.post(f"/approvals/{'1' * 32}/approve", json={}, headers=approver))
        assert _status(demo_database, name, 1) == "OPEN"  # nothing ran
        assert "the approvals table is missing: run `spangate init-db`" in caplog.text

        # `spangate init-db` makes the table; SIGHUP analyses the unchanged policy again.
        apply_ddl(demo_database, name, APPROVALS_DDL)
        assert await app.reloader.reload(reanalyse=True) is True  # what SIGHUP does
        assert _ready(app) == {"writer": True}
        asked = await http.post("/tickets/1/close", json={}, headers=asker)
        assert asked.status_code == 202, asked.text
        assert asked.json()["code"] == "approval-required"
        assert _status(demo_database, name, 1) == "OPEN"

    events = [json.loads(line) for line in audit.read_text().splitlines() if line]
    refused = [
        e["protoPayload"] for e in events
        if e["protoPayload"]["status"]["message"] == "approval-table-missing"
    ]  # fmt: skip
    assert len(refused) == 5
    assert {p["status"]["code"] for p in refused} == {14}  # UNAVAILABLE, as 503 maps


# The table as made before approval.match (no Scope column): `spangate init-db` adds the column.
OLD_TABLE = (
    APPROVALS_DDL[0]
    .replace("  Scope STRING(64),\n", "")
    .replace("  DeciderActors ARRAY<STRING(MAX)>,\n", "")
)


async def test_a_table_from_before_match_is_missing_its_column_until_init_db(
    demo_database: str, idp: Any, tmp_path: Path, token_for: Token
) -> None:
    assert "Scope" not in OLD_TABLE and "DeciderActors" not in OLD_TABLE
    name = "sgoldapprovals"
    make_database(demo_database, name, [*TABLE, OLD_TABLE], SEED)
    asker, approver = bearer(token_for("support-console")), bearer(token_for("order-writer"))
    async with gateway_on(
        tmp_path, demo_database, _policy(name, approval=True), issuer=idp.issuer
    ) as (app, http):
        assert _ready(app) == {"writer": False}  # the probe reads Scope too
        _missing(await http.post("/tickets/1/close", json={}, headers=asker))
        _missing(await http.get("/approvals", headers=approver))

        apply_ddl(demo_database, name, APPROVALS_DDL)  # what init-db runs: ALTER ... ADD COLUMN
        apply_ddl(demo_database, name, APPROVALS_DDL)  # again: a no-op once there
        assert await app.reloader.reload(reanalyse=True) is True
        assert _ready(app) == {"writer": True}
        asked = await http.post("/tickets/1/close", json={}, headers=asker)
        assert asked.status_code == 202, asked.text
        approval = asked.json()["approval"]["id"]
        listed = await http.get("/approvals", headers=approver)
        assert approval in [a["id"] for a in listed.json()["approvals"]]  # match []: no claims
        decided = await http.post(f"/approvals/{approval}/approve", json={}, headers=approver)
        assert decided.status_code == 200, decided.text
        ran = await http.post(
            "/tickets/1/close", json={}, headers={**asker, "Approval-Id": approval}
        )
        assert ran.status_code == 200, ran.text
        assert _status(demo_database, name, 1) == "CLOSED"


async def test_a_reloaded_policy_that_adds_an_approval_is_analysed_again(
    demo_database: str,
    idp: Any,
    tmp_path: Path,
    token_for: Token,
    caplog: pytest.LogCaptureFixture,
) -> None:
    name = "sgnoapprovals2"
    make_database(demo_database, name, TABLE, SEED)
    asker = bearer(token_for("support-console"))
    caplog.set_level(logging.WARNING, logger="spangate")
    async with gateway_on(
        tmp_path, demo_database, _policy(name, approval=False), issuer=idp.issuer
    ) as (app, http):
        assert _ready(app) == {}  # no route waits for approval: the table is not needed
        assert WARNING not in caplog.text
        ran = await http.post("/tickets/2/close", json={}, headers=asker)
        assert ran.status_code == 200, ran.text

        (tmp_path / "policy.yaml").write_text(_policy(name, approval=True))
        assert await app.reloader.reload() is True
        assert app.policy.routes[0].model.approval is not None
        assert _ready(app) == {"writer": False}  # the reload's own analysis
        assert WARNING in caplog.text
        _missing(await http.post("/tickets/1/close", json={}, headers=asker))
        assert _status(demo_database, name, 1) == "OPEN"


async def test_an_ask_that_could_not_be_stored_spends_no_budget(
    demo_database: str, idp: Any, tmp_path: Path, token_for: Token
) -> None:
    """A call of the budget is spent by asking (its row is a write), and given back when the row
    could not be written: three asks without the table are three 503s, never a 429."""
    name = "sgnoapprovals3"
    make_database(demo_database, name, TABLE, SEED)
    text = _policy(name, approval=True) + "budgets:\n  tester: {calls: 1/min}\n"
    asker = bearer(token_for("support-console"))
    async with gateway_on(tmp_path, demo_database, text, issuer=idp.issuer) as (_app, http):
        for _ in range(3):
            _missing(await http.post("/tickets/1/close", json={}, headers=asker))


PG_TABLE = ["CREATE TABLE tickets (id int8 NOT NULL, status varchar(16), PRIMARY KEY (id))"]
PG_POLICY = """\
identities:
  writer: {database_role: tickets_writer}
queries:
  close:
    identity: writer
    sql: UPDATE tickets SET status = 'CLOSED' WHERE id = $1 RETURNING id AS "Id", status AS "Status"
    params:
      id: {type: int8}
routes:
  - path: "/tickets/{id}/close"
    method: POST
    query: close
    allow: [tester]
    approval:
      approvers: [writer]
"""


async def test_a_postgresql_database_without_the_table_answers_503_until_init_db(
    demo_database: str, idp: Any, tmp_path: Path, token_for: Token
) -> None:
    """The same in a PostgreSQL-dialect database: Spanner's words for the missing table (the
    insert's, the list's ``relation ... does not exist``) are mapped alike, and once init-db's
    PostgreSQL table exists a request is asked, listed, approved and run."""
    name = "pgnoapprovals"
    make_database(demo_database, name, PG_TABLE, SEED_PG, dialect="postgresql")
    text = policy_text(name, PG_POLICY).replace(
        f"database: {name}}}", f"database: {name}, dialect: postgresql}}"
    )
    assert "dialect: postgresql" in text
    asker, approver = bearer(token_for("support-console")), bearer(token_for("order-writer"))
    async with gateway_on(tmp_path, demo_database, text, issuer=idp.issuer) as (app, http):
        assert _ready(app) == {"writer": False}  # the probe, in PostgreSQL
        _missing(await http.post("/tickets/1/close", json={}, headers=asker))
        _missing(await http.get("/approvals", headers=approver))
        _missing(await http.get(f"/approvals/{'1' * 32}", headers=approver))
        assert query_rows(demo_database, name, "SELECT status FROM tickets WHERE id = 1") == [
            ["OPEN"]
        ]

        apply_ddl(demo_database, name, APPROVALS_PG_DDL)  # what init-db runs in this dialect
        assert await app.reloader.reload(reanalyse=True) is True
        assert _ready(app) == {"writer": True}
        asked = await http.post("/tickets/1/close", json={}, headers=asker)
        assert asked.status_code == 202, asked.text
        approval = asked.json()["approval"]["id"]
        listed = await http.get("/approvals", headers=approver)
        assert [a["id"] for a in listed.json()["approvals"]] == [approval]
        decided = await http.post(f"/approvals/{approval}/approve", json={}, headers=approver)
        assert decided.status_code == 200, decided.text
        ran = await http.post(
            "/tickets/1/close", json={}, headers={**asker, "Approval-Id": approval}
        )
        assert ran.status_code == 200, ran.text
        assert ran.json()["rows"] == [{"Id": 1, "Status": "CLOSED"}]
        used = await http.post(
            "/tickets/1/close", json={}, headers={**asker, "Approval-Id": approval}
        )
        assert (used.status_code, used.json()["code"]) == (409, "approval-used")


@pytest.mark.parametrize("dialect", ["googlesql", "postgresql"])
async def test_the_list_pages_through_requests_of_the_same_instant_exactly_once(
    demo_database: str, idp: Any, tmp_path: Path, token_for: Token, dialect: str
) -> None:
    """Keyset pages on (CreatedAt, ApprovalId), the list's SQL on the emulator in both dialects:
    requests made at the same instant (the service's clock held still) are told apart by their
    id, and instants one nanosecond apart (the same microsecond) by the nanosecond the cursor
    keeps. Pages of 1 and of 2 answer every request exactly once, in the list's order."""
    name = f"{dialect[:2]}approvalpages"
    if dialect == "postgresql":
        make_database(
            demo_database, name, [*PG_TABLE, *APPROVALS_PG_DDL], SEED_PG, dialect="postgresql"
        )
        text = policy_text(name, PG_POLICY).replace(
            f"database: {name}}}", f"database: {name}, dialect: postgresql}}"
        )
        assert "dialect: postgresql" in text
    else:
        make_database(demo_database, name, [*TABLE, *APPROVALS_DDL], SEED)
        text = _policy(name, approval=True)
    asker, approver = bearer(token_for("support-console")), bearer(token_for("order-writer"))
    now = dt.datetime.now(dt.UTC)

    def instant(nanos: int) -> dt.datetime:
        return DatetimeWithNanoseconds(  # type: ignore[no-untyped-call,no-any-return]
            now.year, now.month, now.day, now.hour, now.minute, now.second,
            nanosecond=nanos, tzinfo=dt.UTC,
        )  # fmt: skip

    ta = instant(123456789)
    tb = instant(123456790)  # the same microsecond as ta, one nanosecond later
    tc = instant(124000000)
    instants = [tb, ta, tc, ta, tb, ta, ta]  # made in this order; listed by instant, then id
    async with gateway_on(tmp_path, demo_database, text, issuer=idp.issuer) as (app, http):
        made: list[tuple[str, str]] = []  # (CreatedAt as the cursor writes it, id)
        for ticket, at in enumerate(instants, start=1):
            app.approvals.clock = lambda at=at: at
            asked = await http.post(f"/tickets/{ticket}/close", json={}, headers=asker)
            assert asked.status_code == 202, asked.text
            made.append((results_rfc3339(at), asked.json()["approval"]["id"]))
        app.approvals.clock = lambda: ta  # none has expired
        expected = [approval for _, approval in sorted(made)]
        assert len(set(expected)) == len(instants)

        async def walk(limit: int, state: str = "pending") -> list[list[str]]:
            pages: list[list[str]] = []
            cursor: str | None = None
            while True:
                query = {"limit": str(limit), "state": state}
                if cursor is not None:
                    query["cursor"] = cursor
                got = await http.get("/approvals", params=query, headers=approver)
                assert got.status_code == 200, got.text
                body = got.json()
                pages.append([a["id"] for a in body["approvals"]])
                assert len(pages) <= len(instants) + 1, pages  # it ends
                cursor = body.get("next_cursor")
                assert body["truncated"] is (cursor is not None)
                if cursor is None:
                    return pages
                assert len(pages[-1]) == limit

        for limit in (1, 2, 3, 100):
            pages = await walk(limit)
            assert [a for page in pages for a in page] == expected, limit
            assert all(pages[:-1]) and len(pages) == -(-len(instants) // limit)

        # a cursor only positions: one of the list's own instants and ids, made by hand
        def after(at: dt.datetime, approval: str) -> str:
            return ListCursor("pending", results_rfc3339(at), approval).text()

        async def listed(cursor: str) -> list[str]:
            got = await http.get(
                "/approvals", params={"limit": "100", "cursor": cursor}, headers=approver
            )
            assert got.status_code == 200, got.text
            return [a["id"] for a in got.json()["approvals"]]

        at_ta = len([i for i in instants if i is ta])
        assert await listed(after(ta, "0" * 32)) == expected  # before every row of ta
        assert await listed(after(ta, "f" * 32)) == expected[at_ta:]  # past them all
        assert await listed(after(ta, expected[0])) == expected[1:]
        assert await listed(after(tb, "f" * 32)) == expected[-1:]  # tc's alone
        assert await listed(after(tc, "f" * 32)) == []
        assert await listed(after(now.replace(year=2000), "0" * 32)) == expected
        assert (await walk(1, "approved")) == [[]]  # another state's list: none of these
