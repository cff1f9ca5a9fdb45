"""What a call spends of its budget, by what it sent to Spanner (``Executor.run``'s ``on_sent``),
through the real gateway on the session's emulator, with the executor's seams (``WriteHooks``):

- nothing sent (413 ``request-too-large``, 422 ``too-many-mutations``, 503 ``spanner-unavailable``
  up front): ``calls`` and ``writes`` are given back;
- only the Idempotency-Key lookup (a replay, 422 ``idempotency-key-reused``, 500
  ``idempotency-table-missing``, a deadline during the lookup): ``calls`` stay spent (a read-write
  transaction read the key's row), ``writes`` are given back (no DML ran);
- the statement (a read that then failed, a write aborted after its DML and replayed on its retry):
  everything stays spent.

Budgets are a day long (no test straddles midnight UTC), counted in the process.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from spanner_stack import INSTANCE, PROJECT, Token, bearer, gateway_on, make_database, policy_text
from test_spanner_write_outcomes import Counted, aborted, ids, until_settled, with_key

from gateway.budgets.check import Budgets
from gateway.budgets.store import MemoryStore
from gateway.dev.database import emulator_client
from gateway.dev.emulator import EmulatorProcess
from gateway.spanner import idempotency
from gateway.spanner.execute import WriteHooks, note_commit_send
from gateway.spanner.idempotency import DDL as IDEMPOTENCY_DDL
from gateway.spanner.results import Result

POLICY = """\
identities:
  writer: {database_role: refund_writer}
  reader: {database_role: refund_reader}
queries:
  add:
    identity: writer
    sql: INSERT INTO Items (Id) VALUES (@id)
    params: {id: {type: INT64}}
    timeout: 2s
  note:
    identity: writer
    sql: INSERT INTO Items (Id, Note) VALUES (@id, @note)
    params: {id: {type: INT64}, note: {type: STRING}}
  bulk:
    identity: writer
    sql: INSERT INTO Items (Id) SELECT id FROM UNNEST(@ids) AS id
    params: {ids: {type: "ARRAY<INT64>"}}
  divide:
    identity: reader
    sql: SELECT DIV(10, @d) AS q
    params: {d: {type: INT64}}
routes:
  - {path: /items, method: POST, query: add, allow: [tester]}
  - {path: /notes, method: POST, query: note, allow: [tester]}
  - {path: /bulk, method: POST, query: bulk, allow: [tester]}
  - {path: /divide, method: GET, query: divide, allow: [tester]}
budgets:
  tester: {calls: 100/day, writes: 100/day}
audit:
  sinks:
    - {type: file, path: audit.jsonl}
"""
ITEMS = "CREATE TABLE Items (Id INT64 NOT NULL, Note STRING(MAX)) PRIMARY KEY (Id)"
DDL = [ITEMS, *IDEMPOTENCY_DDL]


def left(answer: httpx.Response) -> dict[str, int]:
    """What remains of each budget, as the answer's RateLimit field says."""
    return {k: int(r) for k, r in re.findall(r'"(\w+)";r=(\d+)', answer.headers["RateLimit"])}


async def post(
    http: httpx.AsyncClient, headers: dict[str, str], path: str, body: dict[str, Any]
) -> httpx.Response:
    return await http.post(path, json=body, headers=headers)


async def test_a_call_that_sent_nothing_gets_its_calls_and_writes_back(
    tmp_path: Path, emulator: EmulatorProcess, idp: Any, token_for: Token
) -> None:
    """Refused by Spanner's limits (413, 422) or up front (503 while writes settle): nothing was
    sent, so nothing is spent; the counters themselves say so (the next write spends one)."""
    database = "refund-nothing-sent"
    make_database(emulator.host, database, DDL)
    headers = bearer(token_for("support-console"))
    hook = Counted()
    commits = {"delay": 3.0}

    async def slow_commit() -> None:
        delay, commits["delay"] = commits["delay"], 0.0
        await asyncio.sleep(delay)

    async with gateway_on(tmp_path, emulator.host, policy_text(database, POLICY),
                          issuer=idp.issuer, max_settling_writes=1,
                          max_body_bytes=12 * 1024 * 1024) as (app, http):  # fmt: skip
        app.executor.hooks = WriteHooks(after_statement=hook)
        ran = await post(http, headers, "/items", {"id": 1})
        assert ran.status_code == 200, ran.text
        assert left(ran) == {"calls": 99, "writes": 99}
        big = await post(http, headers, "/notes", {"id": 2, "note": "x" * (10 * 1024 * 1024)})
        assert (big.status_code, big.json()["code"]) == (413, "request-too-large"), big.text
        assert left(big) == {"calls": 99, "writes": 99}
        many = await post(http, headers, "/bulk", {"ids": list(range(100, 80_101))})
        assert (many.status_code, many.json()["code"]) == (422, "too-many-mutations"), many.text
        assert left(many) == {"calls": 99, "writes": 99}
        app.executor.hooks.before_commit = slow_commit  # one write settles: the next is refused
        cut = await post(http, headers, "/items", {"id": 3})
        assert (cut.status_code, cut.json()["outcome"]) == (504, "unknown"), cut.text
        assert left(cut) == {"calls": 98, "writes": 98}  # its Commit was sent: spent
        refused = await post(http, headers, "/items", {"id": 4})
        assert refused.status_code == 503, refused.text
        assert refused.json()["code"] == "spanner-unavailable"
        assert left(refused) == {"calls": 98, "writes": 98}
        await until_settled(app)
        after = await post(http, headers, "/items", {"id": 4})
        assert after.status_code == 200, after.text
        assert left(after) == {"calls": 97, "writes": 97}
    assert hook.statements == 3  # items 1, 3 and 4: the refused ones sent nothing
    assert ids(emulator.host, database) == [1, 3, 4]


async def test_a_read_that_fails_after_its_statement_was_sent_spends_its_call(
    tmp_path: Path, emulator: EmulatorProcess, idp: Any, token_for: Token
) -> None:
    """Spanner ran the query and failed it (division by zero): the call was spent."""
    database = "refund-read-failed"
    make_database(emulator.host, database, DDL)
    headers = bearer(token_for("support-console"))
    async with gateway_on(tmp_path, emulator.host, policy_text(database, POLICY),
                          issuer=idp.issuer) as (_, http):  # fmt: skip
        ok = await http.get("/divide", params={"d": 2}, headers=headers)
        assert ok.status_code == 200 and ok.json()["rows"] == [{"q": 5}], ok.text
        assert left(ok) == {"calls": 99}
        failed = await http.get("/divide", params={"d": 0}, headers=headers)
        assert failed.status_code >= 400, failed.text
        assert left(failed) == {"calls": 98}
        again = await http.get("/divide", params={"d": 5}, headers=headers)
        assert again.status_code == 200, again.text
        assert left(again) == {"calls": 97}


async def test_a_keyed_write_cut_during_its_lookup_keeps_its_call_and_never_runs(
    tmp_path: Path, emulator: EmulatorProcess, idp: Any, token_for: Token
) -> None:
    """The deadline passes while the key's record is read: 504 unknown, the DML never runs (not
    even later), its write is given back; its call stays spent (a transaction read the key)."""
    database = "refund-cut-lookup"
    make_database(emulator.host, database, DDL)
    headers = with_key(bearer(token_for("support-console")), "cut-in-lookup")
    hook = Counted()
    lookups = {"delay": 3.0}  # the deadline is 2 s

    async def slow_lookup() -> None:
        delay, lookups["delay"] = lookups["delay"], 0.0
        await asyncio.sleep(delay)

    async with gateway_on(tmp_path, emulator.host, policy_text(database, POLICY),
                          issuer=idp.issuer) as (app, http):  # fmt: skip
        app.executor.hooks = WriteHooks(after_lookup=slow_lookup, after_statement=hook)
        cut = await post(http, headers, "/items", {"id": 5})
        assert (cut.status_code, cut.json()["outcome"]) == (504, "unknown"), cut.text
        assert left(cut) == {"calls": 99, "writes": 100}
        await until_settled(app)
        await asyncio.sleep(1.5)  # the lookup hook has returned: nothing runs after it
        assert hook.statements == 0
        assert ids(emulator.host, database) == []
        retried = await post(http, headers, "/items", {"id": 5})
        assert retried.status_code == 200, retried.text
        assert left(retried) == {"calls": 98, "writes": 99}
    assert hook.statements == 1
    assert ids(emulator.host, database) == [5]


async def test_a_keyed_write_without_its_table_keeps_its_call(
    tmp_path: Path, emulator: EmulatorProcess, idp: Any, token_for: Token
) -> None:
    database = "refund-no-table"
    make_database(emulator.host, database, [ITEMS])
    headers = with_key(bearer(token_for("support-console")), "no-table")
    async with gateway_on(tmp_path, emulator.host, policy_text(database, POLICY),
                          issuer=idp.issuer) as (_, http):  # fmt: skip
        missing = await post(http, headers, "/items", {"id": 6})
        assert missing.status_code == 500, missing.text
        assert missing.json()["code"] == "idempotency-table-missing"
        assert left(missing) == {"calls": 99, "writes": 100}
    assert ids(emulator.host, database) == []


async def test_a_replay_whose_statement_already_ran_spends_its_write(
    tmp_path: Path, emulator: EmulatorProcess, idp: Any, token_for: Token
) -> None:
    """Two requests with one key at once: both find no record and run their DML; the other
    commits first, so this one's Commit is ABORTED, the client library retries it, and the
    retry finds the other's record and answers it. Its DML ran (and was rolled back): its write
    stays spent. The abort is injected at this one's first Commit (``WriteHooks``): its
    transaction is rolled back, as Spanner ends an aborted one, and the other request's
    transaction, made by hand, commits before ABORTED is answered."""
    database = "refund-raced"
    make_database(emulator.host, database, DDL)
    token = token_for("support-console")
    claims = jwt.decode(token, options={"verify_signature": False})
    key = idempotency.key_for(
        "raced", issuer=claims["iss"], subject=claims["sub"], method="POST", route="/items",
        query="add", values={"id": 7}, ttl_seconds=86_400,
    )  # fmt: skip
    theirs = Result(columns=[], rows=[], row_count=1, is_dml=True)

    def the_other_commits() -> None:
        client = emulator_client(emulator.host, project=PROJECT)
        db = client.instance(INSTANCE).database(database)
        try:
            db.run_in_transaction(
                lambda tx: idempotency.store(tx, key, theirs, now=dt.datetime.now(dt.UTC))
            )
        finally:
            db.spanner_api.transport.close()

    hook = Counted()
    attempts: list[Any] = []
    commits: list[int] = []

    async def aborted_as_the_other_commits() -> None:
        commits.append(1)
        if len(commits) == 1:  # Spanner aborts this attempt (ending its transaction) and the
            await attempts[0].rollback()  # other one commits
            await asyncio.to_thread(the_other_commits)
            note_commit_send()
            raise aborted()

    async with gateway_on(tmp_path, emulator.host, policy_text(database, POLICY),
                          issuer=idp.issuer) as (app, http):  # fmt: skip
        app.executor.hooks = WriteHooks(
            attempt=attempts.append,
            after_statement=hook,
            before_commit=aborted_as_the_other_commits,
        )
        answer = await post(http, with_key(bearer(token), "raced"), "/items", {"id": 7})
        assert answer.status_code == 200, answer.text
        assert answer.json()["row_count"] == 1  # the other's answer, replayed
        assert (len(attempts), hook.statements, len(commits)) == (2, 1, 1)
        assert left(answer) == {"calls": 99, "writes": 99}
    assert ids(emulator.host, database) == []  # its own insert was aborted with its attempt


class RefundFails(MemoryStore):
    """The in-process store whose refunds fail with something unexpected (not StoreUnavailable)."""

    async def refund(self, counters: Any, at: float) -> list[int]:
        raise RuntimeError("injected refund failure")


async def test_a_refund_that_fails_never_replaces_the_answer(
    tmp_path: Path,
    emulator: EmulatorProcess,
    idp: Any,
    token_for: Token,
    caplog: pytest.LogCaptureFixture,
) -> None:
    database = "refund-fails"
    make_database(emulator.host, database, DDL)
    headers = bearer(token_for("support-console"))
    async with gateway_on(tmp_path, emulator.host, policy_text(database, POLICY),
                          issuer=idp.issuer) as (app, http):  # fmt: skip
        app.budgets = Budgets(RefundFails())
        many = await post(http, headers, "/bulk", {"ids": list(range(80_001))})
        assert (many.status_code, many.json()["code"]) == (422, "too-many-mutations"), many.text
        assert many.json()["outcome"] == "not-committed"
        assert left(many) == {"calls": 99, "writes": 99}  # not given back: said as it stands
        replay_key = with_key(headers, "refund-fails")
        first = await post(http, replay_key, "/items", {"id": 8})
        replayed = await post(http, replay_key, "/items", {"id": 8})
        assert first.status_code == replayed.status_code == 200, replayed.text
        assert replayed.content == first.content
    failures = [r for r in caplog.records if "injected refund failure" in str(r.exc_info)]
    assert len(failures) == 2 and all(r.levelno == logging.ERROR for r in failures)

