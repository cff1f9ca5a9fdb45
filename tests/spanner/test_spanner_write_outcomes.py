"""A write's answer means what it says (issue 13, item 16), against a real emulator that is
paused (SIGSTOP, so Spanner "comes back" with its data) or killed (SIGKILL, then restarted empty on
the same port) exactly when the write sends its statement or its Commit:

- Commit never sent by the deadline: the write is abandoned (it can never commit afterwards): 503
  ``spanner-unavailable`` when Spanner is unreachable, else 504 ``timeout``; the event says
  ``not-committed``.
- Commit in flight at the deadline: 504 ``timeout`` (never 503), outcome ``unknown``; when the
  Commit settles, a follow-up event records what happened (``metadata.settlement``), so the trail
  agrees with the database; a retry with the same Idempotency-Key gets the committed answer.

The emulator is paused or killed from inside the client library's own ``execute_update`` /
``commit`` (wrapped by the test, just before the real RPC), so the fault lands on the RPC meant.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from google.api_core import exceptions as gexc
from google.cloud.spanner_v1._async.transaction import Transaction
from spanner_stack import Token, bearer, gateway_on, make_database, policy_text, query_rows

from gateway.audit.sinks import FileSink
from gateway.audit.spanner_sink import audit_table_ddl
from gateway.dev.emulator import EmulatorProcess, start_emulator
from gateway.spanner.execute import WriteHooks, note_commit_send
from gateway.spanner.idempotency import DDL as IDEMPOTENCY_DDL

POLICY = """\
identities:
  writer: {database_role: outcome_writer}
queries:
  add:
    identity: writer
    sql: INSERT INTO Items (Id) VALUES (@id)
    params: {id: {type: INT64}}
    timeout: 2s
routes:
  - {path: /items, method: POST, query: add, allow: [tester]}
audit:
  sinks:
    - {type: file, path: audit.jsonl}
"""
DDL = ["CREATE TABLE Items (Id INT64 NOT NULL) PRIMARY KEY (Id)", *IDEMPOTENCY_DDL]
COMMITTED_LATE = "a write cut by its deadline committed after all"


class Fault:
    """Pause or kill the emulator from inside the next call of a Transaction method (``after``:
    once that call has returned)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, method: str) -> None:
        self.armed: Callable[[], None] | None = None
        self.after: Callable[[], None] | None = None
        original = getattr(Transaction, method)

        async def wrapped(transaction: Any, *args: Any, **kwargs: Any) -> Any:
            action, self.armed = self.armed, None
            if action is not None:
                action()
            returned = await original(transaction, *args, **kwargs)
            action, self.after = self.after, None
            if action is not None:
                action()
            return returned

        monkeypatch.setattr(Transaction, method, wrapped)


def _states(pid: int) -> set[str]:
    """The scheduler states of the process's threads (``T`` stopped, ``Z`` dead)."""
    states = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            states.add((task / "stat").read_text().rsplit(")", 1)[1].split()[0])
        except (OSError, IndexError):
            continue
    return states or {"Z"}


def _signal(pid: int, signum: int, done: set[str]) -> None:
    """Send ``signum`` and return once every thread has taken it (a signal is not instant: a
    Commit sent just after ``kill()`` returned was seen to commit before the process stopped)."""
    os.kill(pid, signum)
    deadline = time.monotonic() + 10
    while not _states(pid) <= done:
        assert time.monotonic() < deadline, _states(pid)
        time.sleep(0.001)


def pause(emulator: EmulatorProcess) -> Callable[[], None]:
    return lambda: _signal(emulator.pid, signal.SIGSTOP, {"T", "t"})


def kill(emulator: EmulatorProcess) -> Callable[[], None]:
    return lambda: _signal(emulator.pid, signal.SIGKILL, {"Z", "X"})


def events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def events_of(path: Path, request_id: str) -> list[dict[str, Any]]:
    return [
        e
        for e in events(path)
        if e["protoPayload"]["requestMetadata"]["requestAttributes"]["id"] == request_id
    ]


async def settlement_of(path: Path, request_id: str, timeout: float = 60.0) -> dict[str, Any]:
    """The follow-up event of a write answered before its Commit settled (waits for it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [
            e for e in events_of(path, request_id) if "settlement" in e["protoPayload"]["metadata"]
        ]
        if found:
            assert len(found) == 1, found
            return found[0]
        await asyncio.sleep(0.1)
    raise AssertionError(f"no follow-up event for {request_id}: {events_of(path, request_id)}")


def ids(host: str, database: str) -> list[int]:
    return [row[0] for row in query_rows(host, database, "SELECT Id FROM Items ORDER BY Id")]


def with_key(headers: dict[str, str], key: str | None) -> dict[str, str]:
    return {**headers, "Idempotency-Key": key} if key else headers


async def post(http: httpx.AsyncClient, headers: dict[str, str], item: int) -> httpx.Response:
    return await http.post("/items", json={"id": item}, headers=headers)


SPANNER_SINK = """\
  auditor: {database_role: outcome_auditor}
"""
AUDIT_ROWS = "SELECT InsertId, Status, Code, Event FROM SpangateAudit WHERE RequestId = '{rid}'"


def with_spanner_sink(policy: str) -> str:
    """The policy with a Spanner audit sink beside the file sink (its own identity)."""
    policy = policy.replace("identities:\n", "identities:\n" + SPANNER_SINK, 1)
    return policy + "    - {type: spanner, identity: auditor, table: SpangateAudit}\n"


@pytest.mark.parametrize("spanner_sink", [False, True], ids=["file-sink", "spanner-sink"])
@pytest.mark.parametrize("key", [None, "outcome-paused-commit"])
async def test_commit_in_flight_at_the_deadline_is_504_and_its_late_commit_is_audited(
    tmp_path: Path,
    idp: Any,
    token_for: Token,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    key: str | None,
    spanner_sink: bool,
) -> None:
    """Spanner pauses once the write's Commit is on its way and comes back 4 s later (the query's
    deadline is 2 s, the audit sinks wait up to 5 s): the caller gets 504 with outcome unknown,
    the Commit lands, and a follow-up event says so. With a Spanner sink, the row written in the
    write's own transaction is there too, and the follow-up names it."""
    headers = with_key(bearer(token_for("support-console")), key)
    audit = tmp_path / "audit.jsonl"
    emulator = start_emulator(log_path=tmp_path / "emulator.log")
    commit = Fault(monkeypatch, "commit")
    try:
        make_database(
            emulator.host,
            "paused",
            [*DDL, audit_table_ddl("SpangateAudit")] if spanner_sink else DDL,
        )
        policy = policy_text("paused", POLICY)
        if spanner_sink:
            policy = with_spanner_sink(policy)
        async with gateway_on(tmp_path, emulator.host, policy, issuer=idp.issuer) as (_, http):
            caplog.set_level(logging.INFO, logger="spangate.spanner")
            loop = asyncio.get_running_loop()

            def pause_for_4s() -> None:
                pause(emulator)()
                loop.call_later(4.0, os.kill, emulator.pid, signal.SIGCONT)

            commit.armed = pause_for_4s  # Spanner stops answering once Commit is on its way
            answer = await post(http, headers, 1)
            assert answer.status_code == 504, answer.text
            assert answer.json()["code"] == "timeout"
            assert answer.json()["outcome"] == "unknown"
            assert "may or may not have committed" in answer.json()["detail"]
            rid = answer.headers["x-request-id"]
            [first] = events_of(audit, rid)
            assert first["httpRequest"]["status"] == 504
            assert first["protoPayload"]["response"]["outcome"] == "unknown"
            follow = await settlement_of(audit, rid)  # Spanner came back, with its data
            settlement = follow["protoPayload"]["metadata"]["settlement"]
            assert settlement["outcome"] == "committed"
            assert settlement["corrects"] == first["insertId"] != follow["insertId"]
            assert follow["httpRequest"]["status"] == 504  # what the caller got
            assert follow["protoPayload"]["status"] == {"code": 0, "message": "ok"}
            assert follow["protoPayload"]["response"]["outcome"] == "committed"
            stamp = follow["protoPayload"]["response"]["commitTimestamp"]
            assert stamp is not None
            assert ids(emulator.host, "paused") == [1]  # the trail agrees with the database
            assert any(COMMITTED_LATE in r.getMessage() for r in caplog.records)
            if spanner_sink:
                row = settlement["rowInTransaction"]
                assert row is not None
                expected = {row: (200, "ok"), first["insertId"]: (504, "timeout"),
                            follow["insertId"]: (504, "ok")}  # fmt: skip
                found: dict[str, tuple[int, str]] = {}
                deadline = time.monotonic() + 30
                while found != expected and time.monotonic() < deadline:
                    await asyncio.sleep(0.2)
                    rows = query_rows(emulator.host, "paused", AUDIT_ROWS.format(rid=rid))
                    found = {r[0]: (r[1], r[2]) for r in rows}
                assert found == expected
                committed_row = json.loads(
                    next(r[3] for r in rows if r[0] == row)
                )  # the row that committed with the write says it committed
                assert committed_row["protoPayload"]["response"]["outcome"] == "committed"
            else:
                assert settlement["rowInTransaction"] is None
            if key is not None:  # the retry gets the committed answer; nothing runs twice
                again = await post(http, headers, 1)
                assert again.status_code == 200, again.text
                assert again.json()["commit_timestamp"] == stamp
            else:  # without a key a retry is a new write (here: a duplicate key)
                again = await post(http, headers, 1)
                assert again.status_code == 409, again.text
            assert ids(emulator.host, "paused") == [1]
    finally:
        os.kill(emulator.pid, signal.SIGCONT)
        emulator.stop()


@pytest.mark.parametrize("key", [None, "outcome-paused-statement"])
async def test_a_write_cut_before_its_commit_never_commits_later(
    tmp_path: Path,
    idp: Any,
    token_for: Token,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    key: str | None,
) -> None:
    """Spanner pauses while the statement runs: the deadline abandons the write, and when Spanner
    comes back (its data intact) nothing of it commits (the gateway used to let it settle, and it
    committed seconds after its caller was told it had failed)."""
    headers = with_key(bearer(token_for("support-console")), key)
    audit = tmp_path / "audit.jsonl"
    emulator = start_emulator(log_path=tmp_path / "emulator.log")
    statement = Fault(monkeypatch, "execute_update")
    try:
        make_database(emulator.host, "cut", DDL)
        policy = policy_text("cut", POLICY)
        async with gateway_on(tmp_path, emulator.host, policy, issuer=idp.issuer) as (_, http):
            caplog.set_level(logging.INFO, logger="spangate.spanner")
            statement.armed = pause(emulator)
            answer = await post(http, headers, 2)
            assert answer.status_code in (503, 504), answer.text
            assert "did not commit" in answer.json()["detail"]
            rid = answer.headers["x-request-id"]
            [event] = events_of(audit, rid)
            assert event["protoPayload"]["response"]["outcome"] == "not-committed"
            os.kill(emulator.pid, signal.SIGCONT)
            # Spanner answers again: a later write goes through, and the cut one never lands.
            later = await _until_served(http, bearer(token_for("support-console")), 3)
            assert later.status_code == 200, later.text
            await asyncio.sleep(3.0)  # room for a background settle (it used to commit in 0-2 s)
            assert ids(emulator.host, "cut") == [3]
            assert not any(COMMITTED_LATE in r.getMessage() for r in caplog.records)
            assert [
                e for e in events_of(audit, rid) if "settlement" in e["protoPayload"]["metadata"]
            ] == []
            again = await post(http, headers, 2)  # with or without the key: it runs, once
            assert again.status_code == 200, again.text
            assert ids(emulator.host, "cut") == [2, 3]
    finally:
        os.kill(emulator.pid, signal.SIGCONT)
        emulator.stop()


async def _until_served(
    http: httpx.AsyncClient, headers: dict[str, str], item: int, timeout: float = 60.0
) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        answer = await post(http, headers, item)
        if answer.status_code == 200 or time.monotonic() > deadline:
            return answer
        assert answer.status_code in (503, 504), answer.text
        await asyncio.sleep(0.2)


@pytest.mark.parametrize("fault", ["commit", "execute_update", "before"])
async def test_emulator_killed_and_restarted_during_writes(
    tmp_path: Path,
    idp: Any,
    token_for: Token,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    fault: str,
) -> None:
    """The emulator is killed just before a write's Commit, its statement, or before the write
    arrives, then restarted empty on the same port (and the database made again): a write whose
    Commit was sent is answered 504 (unknown), never 503; one whose Commit was never sent is
    answered 503 and never commits; with and without Idempotency-Key, a retry runs once."""
    plain = bearer(token_for("support-console"))
    audit = tmp_path / "audit.jsonl"
    emulator = start_emulator(log_path=tmp_path / "emulator.log")
    port = emulator.port
    arm = Fault(monkeypatch, fault) if fault != "before" else None
    try:
        make_database(emulator.host, "killed", DDL)
        policy = policy_text("killed", POLICY)
        async with gateway_on(tmp_path, emulator.host, policy, issuer=idp.issuer) as (_, http):
            caplog.set_level(logging.INFO, logger="spangate.spanner")
            answers: list[tuple[int, str | None, httpx.Response]] = []
            for item, key in ((10, None), (11, f"outcome-killed-{fault}")):
                ready = await _until_served(http, plain, 100 + item)  # the channel is back
                assert ready.status_code == 200, ready.text
                if arm is not None:
                    arm.armed = kill(emulator)
                elif emulator.is_running():
                    kill(emulator)()
                answer = await post(http, with_key(plain, key), item)
                answers.append((item, key, answer))
                await asyncio.to_thread(emulator.stop)  # reaped (it is dead already)
                emulator = start_emulator(port=port, log_path=tmp_path / f"emulator{item}.log")
                make_database(emulator.host, "killed", DDL)  # its data died with it
            for item, _key, answer in answers:
                expected = 504 if fault == "commit" else 503
                assert answer.status_code == expected, (item, answer.text)
                code = "timeout" if expected == 504 else "spanner-unavailable"
                assert answer.json()["code"] == code
                [event] = [
                    e
                    for e in events_of(audit, answer.headers["x-request-id"])
                    if "settlement" not in e["protoPayload"]["metadata"]
                ]
                outcome = "unknown" if expected == 504 else "not-committed"
                assert event["protoPayload"]["response"]["outcome"] == outcome
            later = await _until_served(http, plain, 1)
            assert later.status_code == 200, later.text
            await asyncio.sleep(3.0)
            assert ids(emulator.host, "killed") == [1]  # nothing answered 503 committed
            assert not any(COMMITTED_LATE in r.getMessage() for r in caplog.records)
            for item, key, _answer in answers:  # each retry runs once
                again = await post(http, with_key(plain, key), item)
                assert again.status_code == 200, again.text
                replay = await post(http, with_key(plain, key), item)
                assert replay.status_code == (200 if key else 409), replay.text
            assert ids(emulator.host, "killed") == [1, 10, 11]
    finally:
        emulator.stop()


async def test_concurrent_writes_through_pauses_every_answer_agrees_with_the_database(
    tmp_path: Path,
    idp: Any,
    token_for: Token,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Concurrent callers (half with an Idempotency-Key) write while Spanner pauses for 2.5 s,
    once at an arbitrary moment and once as a Commit is sent (the query's deadline is 1 s).
    Afterwards: every 200 is in the
    database; every write answered not-committed (503, or 504 before its Commit) is not; every
    write answered unknown has a follow-up event, and is in the database exactly when that says
    committed."""
    plain = bearer(token_for("support-console"))
    audit = tmp_path / "audit.jsonl"
    emulator = start_emulator(log_path=tmp_path / "emulator.log")
    answers: dict[int, httpx.Response] = {}
    commit = Fault(monkeypatch, "commit")
    try:
        make_database(emulator.host, "mixed", DDL)
        policy = policy_text("mixed", POLICY.replace("timeout: 2s", "timeout: 1s"))
        async with gateway_on(tmp_path, emulator.host, policy, issuer=idp.issuer) as (app, http):
            caplog.set_level(logging.INFO, logger="spangate.spanner")

            done = asyncio.Event()

            async def caller(n: int) -> None:
                for i in range(1000):
                    if done.is_set():
                        return
                    item = n * 1000 + i
                    key = f"mixed-{item}" if n % 2 else None
                    answers[item] = await post(http, with_key(plain, key), item)
                    await asyncio.sleep(0.05)

            loop = asyncio.get_running_loop()

            def pause_for(seconds: float) -> None:
                pause(emulator)()
                loop.call_later(seconds, os.kill, emulator.pid, signal.SIGCONT)

            async def pauses() -> None:
                await asyncio.sleep(0.5)
                pause_for(2.5)  # whatever is in flight
                await asyncio.sleep(3.5)
                commit.armed = functools.partial(pause_for, 2.5)  # the next Commit
                await asyncio.sleep(4.0)
                done.set()

            await asyncio.gather(pauses(), *(caller(n) for n in range(1, 5)))
            deadline = time.monotonic() + 60
            while app.executor.settling and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            # Every write answered "unknown" gets its follow-up once it settled; on a loaded
            # machine the last ones may still be on their way to the file: wait for them (a
            # lost one fails below, by name, after this generous bound).
            unknown = {
                a.headers["x-request-id"]
                for a in answers.values()
                if a.status_code == 504 and a.json().get("outcome") == "unknown"
            }
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                trail = events(audit)
                followed = {
                    e["protoPayload"]["requestMetadata"]["requestAttributes"]["id"]
                    for e in trail
                    if "settlement" in e["protoPayload"]["metadata"]
                }
                if unknown <= followed:
                    break
                await asyncio.sleep(0.2)
            stored = set(ids(emulator.host, "mixed"))
            trail = events(audit)
    finally:
        os.kill(emulator.pid, signal.SIGCONT)
        emulator.stop()
    by_request = {e["protoPayload"]["requestMetadata"]["requestAttributes"]["id"]: e for e in trail
                  if "settlement" not in e["protoPayload"]["metadata"]}  # fmt: skip
    settled = {e["protoPayload"]["requestMetadata"]["requestAttributes"]["id"]: e for e in trail
               if "settlement" in e["protoPayload"]["metadata"]}  # fmt: skip
    seen: dict[str, int] = {}
    late = 0
    for item, answer in answers.items():
        outcome = "committed" if answer.status_code == 200 else answer.json().get("outcome")
        seen[f"{answer.status_code} {outcome}"] = seen.get(f"{answer.status_code} {outcome}", 0) + 1
        rid = answer.headers["x-request-id"]
        assert by_request[rid]["protoPayload"]["response"]["outcome"] == outcome, item
        if answer.status_code == 200:
            assert item in stored, item
        elif outcome == "not-committed":
            assert answer.status_code in (503, 504), answer.text
            assert item not in stored, (item, answer.text)
        else:
            assert (answer.status_code, outcome) == (504, "unknown"), answer.text
            assert rid in settled, f"no follow-up event for {rid} (answered 504 unknown)"
            follow = settled[rid]["protoPayload"]["metadata"]["settlement"]
            assert (item in stored) == (follow["outcome"] == "committed"), (item, follow)
            late += follow["outcome"] == "committed"
    assert set(settled) <= {a.headers["x-request-id"] for a in answers.values()}
    assert sum(COMMITTED_LATE in r.getMessage() for r in caplog.records) == late
    assert seen.get("200 committed", 0) > 0 and seen.get("504 unknown", 0) > 0, seen


async def test_a_committed_write_whose_event_fails_says_it_committed(
    tmp_path: Path, idp: Any, token_for: Token, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The audit file fails just after a write committed: the caller gets 503
    ``audit-unavailable`` (fail closed), and the problem says ``outcome: committed``, so a 503
    is never read as "not done" for a write that is in the database."""
    headers = bearer(token_for("support-console"))
    emulator = start_emulator(log_path=tmp_path / "emulator.log")
    commit = Fault(monkeypatch, "commit")

    def disk_fails(self: FileSink, batch: Any) -> int:
        raise OSError(28, "No space left on device")

    try:
        make_database(emulator.host, "diskfull", DDL)
        policy = policy_text("diskfull", POLICY)
        async with gateway_on(tmp_path, emulator.host, policy, issuer=idp.issuer) as (_, http):
            commit.after = lambda: monkeypatch.setattr(FileSink, "append", disk_fails)
            answer = await post(http, headers, 5)
            assert answer.status_code == 503, answer.text
            assert answer.json()["code"] == "audit-unavailable"
            assert answer.json()["outcome"] == "committed"
            assert ids(emulator.host, "diskfull") == [5]
    finally:
        emulator.stop()


# -- deterministic seams (Executor.hooks): no pause, no kill; the session's emulator -------------


class Counted:
    """An ``after_statement`` hook: counts the statements run, and sleeps once (``delay``)."""

    def __init__(self, delay: float = 0.0) -> None:
        self.statements = 0
        self.delay = delay

    async def __call__(self) -> None:
        self.statements += 1
        delay, self.delay = self.delay, 0.0
        if delay:
            await asyncio.sleep(delay)


def aborted() -> gexc.Aborted:
    return gexc.Aborted("injected", errors=["injected"])  # the library reads errors[0]


async def until_settled(app: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while app.executor.settling and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert app.executor.settling == 0


@pytest.mark.parametrize("key", [None, "seam-statement"])
async def test_a_write_still_running_at_its_deadline_never_sends_its_commit(
    tmp_path: Path, emulator: EmulatorProcess, idp: Any, token_for: Token, key: str | None
) -> None:
    """The statement succeeds, then the write is held (an async delay in its attempt) past its
    deadline, and let go before the abandoned write is cancelled: the caller got 504
    not-committed, and the write never sends a Commit (the ``state.answered`` guards) and never
    lands. A later write sends exactly one Commit (the Commit RPC is counted at the transport)."""
    database = f"seam-stmt-{'k' if key else 'n'}"
    make_database(emulator.host, database, DDL)
    headers = with_key(bearer(token_for("support-console")), key)
    hook = Counted(delay=3.0)  # the deadline is 2 s; the abandoned write is cut at 2 + 2 s
    async with gateway_on(tmp_path, emulator.host, policy_text(database, POLICY),
                          issuer=idp.issuer) as (app, http):  # fmt: skip
        app.executor.hooks.after_statement = hook
        answer = await post(http, headers, 7)
        assert answer.status_code == 504, answer.text
        assert answer.json()["outcome"] == "not-committed"
        await asyncio.sleep(1.5)  # the hook has returned: the guards alone stop the Commit
        await until_settled(app)
        assert hook.statements == 1
        assert app.executor.commits_sent == 0
        assert ids(emulator.host, database) == []
        again = await post(http, headers, 7)
        assert again.status_code == 200, again.text
        assert app.executor.commits_sent == 1
        assert ids(emulator.host, database) == [7]


async def test_a_commit_aborted_after_the_deadline_is_not_retried_and_did_not_commit(
    tmp_path: Path,
    emulator: EmulatorProcess,
    idp: Any,
    token_for: Token,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The Commit (sent once) is answered ABORTED after the caller got 504 unknown: no second
    attempt runs, nothing lands, and the follow-up says not-committed. The settle log line names
    the request id and the insertId of its event."""
    database = "seam-aborted"
    make_database(emulator.host, database, DDL)
    hook = Counted()

    async def commit_aborted_late() -> None:
        note_commit_send()
        await asyncio.sleep(2.5)
        raise aborted()

    audit = tmp_path / "audit.jsonl"
    async with gateway_on(tmp_path, emulator.host, policy_text(database, POLICY),
                          issuer=idp.issuer) as (app, http):  # fmt: skip
        caplog.set_level(logging.INFO, logger="spangate.spanner")
        app.executor.hooks = WriteHooks(after_statement=hook, before_commit=commit_aborted_late)
        answer = await post(http, bearer(token_for("support-console")), 8)
        assert answer.status_code == 504, answer.text
        assert answer.json()["outcome"] == "unknown"
        rid = answer.headers["x-request-id"]
        follow = await settlement_of(audit, rid)
        assert follow["protoPayload"]["metadata"]["settlement"]["outcome"] == "not-committed"
        await until_settled(app)
        await asyncio.sleep(0.5)  # room for a retry that must not come
        assert hook.statements == 1
        assert ids(emulator.host, database) == []
        [first] = [e for e in events_of(audit, rid) if e["insertId"] != follow["insertId"]]
        [line] = [r.getMessage() for r in caplog.records if "did not commit" in r.getMessage()]
        assert rid in line and first["insertId"] in line, line


@pytest.mark.parametrize("refusal", ["aborted", "failed-precondition"])
async def test_a_refusal_after_a_resent_commit_is_unknown(
    tmp_path: Path, emulator: EmulatorProcess, idp: Any, token_for: Token, refusal: str
) -> None:
    """The same Commit sent twice (the generated client re-sends it on UNAVAILABLE) and then
    refused: the first send may have committed and lost its answer, so the write is 504 unknown
    at once; ABORTED does not re-run the transaction (it could apply the write twice)."""
    database = f"seam-resent-{refusal[:6]}"
    make_database(emulator.host, database, DDL)
    hook = Counted()
    fired: list[int] = []

    async def sent_twice_then_refused() -> None:
        if fired:
            return  # a second attempt commits for real
        fired.append(1)
        note_commit_send()
        note_commit_send()
        raise aborted() if refusal == "aborted" else gexc.FailedPrecondition("injected")

    async with gateway_on(tmp_path, emulator.host, policy_text(database, POLICY),
                          issuer=idp.issuer) as (app, http):  # fmt: skip
        app.executor.hooks = WriteHooks(after_statement=hook, before_commit=sent_twice_then_refused)
        answer = await post(http, bearer(token_for("support-console")), 9)
        assert answer.status_code == 504, answer.text
        assert answer.json()["outcome"] == "unknown"
        assert hook.statements == 1
        assert ids(emulator.host, database) == []
        # the same refusal after one send is proof: ABORTED re-runs it, FAILED_PRECONDITION is 409
        fired.clear()

        async def sent_once_then_refused() -> None:
            if fired:
                return
            fired.append(1)
            note_commit_send()
            raise aborted() if refusal == "aborted" else gexc.FailedPrecondition("injected")

        app.executor.hooks.before_commit = sent_once_then_refused
        again = await post(http, bearer(token_for("support-console")), 9)
        if refusal == "aborted":
            assert again.status_code == 200, again.text
            assert ids(emulator.host, database) == [9]
        else:
            assert again.status_code == 409, again.text
            assert again.json()["outcome"] == "not-committed"
            assert ids(emulator.host, database) == []


async def test_a_keyed_write_cut_during_its_key_lookup_is_unknown(
    tmp_path: Path, emulator: EmulatorProcess, idp: Any, token_for: Token
) -> None:
    """With an Idempotency-Key the write may be the retry of an earlier write that committed:
    cut before its lookup said "no record", its outcome is unknown, not not-committed."""
    database = "seam-lookup"
    make_database(emulator.host, database, DDL)
    lookups = {"delay": 2.5}  # the deadline is 2 s

    async def slow_lookup() -> None:
        delay, lookups["delay"] = lookups["delay"], 0.0
        await asyncio.sleep(delay)

    async with gateway_on(tmp_path, emulator.host, policy_text(database, POLICY),
                          issuer=idp.issuer) as (app, http):  # fmt: skip
        app.executor.hooks = WriteHooks(after_lookup=slow_lookup)
        headers = with_key(bearer(token_for("support-console")), "seam-lookup")
        answer = await post(http, headers, 10)
        assert answer.status_code == 504, answer.text
        assert answer.json()["outcome"] == "unknown"
        await until_settled(app)
        assert ids(emulator.host, database) == []


async def test_settling_writes_are_capped_counted_and_cut_when_abandoned(
    tmp_path: Path, emulator: EmulatorProcess, idp: Any, token_for: Token
) -> None:
    """SPANGATE_MAX_SETTLING_WRITES=1: while one write answered unknown settles, /metrics and
    /readyz count it and another write is refused up front (503, not-committed, nothing sent);
    it settles (committed, follow-up) and writes run again. A write abandoned before its Commit
    is cut after the short rollback bound, not left running for its whole hang."""
    database = "seam-capped"
    make_database(emulator.host, database, DDL)
    hook = Counted()
    commits = {"delay": 3.0}

    async def slow_commit() -> None:
        delay, commits["delay"] = commits["delay"], 0.0
        await asyncio.sleep(delay)

    audit = tmp_path / "audit.jsonl"
    headers = bearer(token_for("support-console"))
    async with gateway_on(tmp_path, emulator.host, policy_text(database, POLICY),
                          issuer=idp.issuer, max_settling_writes=1) as (app, http):  # fmt: skip
        app.executor.hooks = WriteHooks(after_statement=hook, before_commit=slow_commit)
        answer = await post(http, headers, 11)
        assert answer.status_code == 504, answer.text
        assert answer.json()["outcome"] == "unknown"
        assert app.executor.settling == 1
        assert "spangate_writes_settling 1.0" in (await http.get("/metrics")).text.splitlines()
        assert (await http.get("/readyz")).json()["writes_settling"] == 1
        refused = await post(http, headers, 12)
        assert refused.status_code == 503, refused.text
        assert refused.json()["code"] == "spanner-unavailable"
        assert refused.json()["outcome"] == "not-committed"
        assert hook.statements == 1  # nothing was sent for it
        follow = await settlement_of(audit, answer.headers["x-request-id"])
        assert follow["protoPayload"]["metadata"]["settlement"]["outcome"] == "committed"
        await until_settled(app)
        assert "spangate_writes_settling 0.0" in (await http.get("/metrics")).text.splitlines()
        assert (await post(http, headers, 12)).status_code == 200
        assert ids(emulator.host, database) == [11, 12]

        hook.delay = 30.0  # hangs after its statement: abandoned at 2 s, cut at 2 + 2 s
        started = time.monotonic()
        cut = await post(http, headers, 13)
        assert cut.status_code == 504 and cut.json()["outcome"] == "not-committed", cut.text
        await until_settled(app, timeout=20.0)
        assert time.monotonic() - started < 20.0
        assert ids(emulator.host, database) == [11, 12]


@pytest.mark.parametrize("bound", ["settles", "bound-passes"])
async def test_shutdown_waits_for_settling_writes_before_closing_the_trail(
    tmp_path: Path,
    emulator: EmulatorProcess,
    idp: Any,
    token_for: Token,
    caplog: pytest.LogCaptureFixture,
    bound: str,
) -> None:
    """Shutdown starts while a write answered 504 unknown still has its Commit in flight: the
    gateway waits for it (SPANGATE_SETTLE_SECONDS) and its follow-up event is in the trail
    before the trail closes; the log line names the request id and the event's insertId. When
    the bound passes first, the write is logged as an error, still unknown, with both."""
    database = f"seam-shutdown-{bound[:4]}"
    make_database(emulator.host, database, DDL)
    slow = 4.0 if bound == "settles" else 30.0

    async def slow_commit() -> None:
        await asyncio.sleep(slow)

    audit = tmp_path / "audit.jsonl"
    caplog.set_level(logging.INFO, logger="spangate.spanner")
    settle = 30.0 if bound == "settles" else 0.5
    async with gateway_on(tmp_path, emulator.host, policy_text(database, POLICY),
                          issuer=idp.issuer, settle_seconds=settle) as (app, http):  # fmt: skip
        app.executor.hooks = WriteHooks(before_commit=slow_commit)
        answer = await post(http, bearer(token_for("support-console")), 14)
        assert answer.status_code == 504, answer.text
        assert answer.json()["outcome"] == "unknown"
        rid = answer.headers["x-request-id"]
        assert app.executor.settling == 1
    # shut down: the trail is closed, every event it took is in the file
    trail = events_of(audit, rid)
    first = trail[0]
    assert first["protoPayload"]["response"]["outcome"] == "unknown"
    messages = [r.getMessage() for r in caplog.records]
    assert not any("did not settle within" in m for m in messages), messages
    if bound == "settles":
        [follow] = trail[1:]
        assert follow["protoPayload"]["metadata"]["settlement"]["outcome"] == "committed"
        assert ids(emulator.host, database) == [14]
        [line] = [m for m in messages if COMMITTED_LATE in m]
    else:
        assert trail[1:] == []
        assert ids(emulator.host, database) == []
        [line] = [m for m in messages if "had not settled at shutdown" in m]
        assert any(
            r.levelno == logging.ERROR and "had not settled at shutdown" in r.getMessage()
            for r in caplog.records
        )
    assert rid in line and first["insertId"] in line, line


@pytest.mark.parametrize("commit", ["commits", "aborted-then-rollback-fails"])
async def test_a_write_cancelled_with_its_commit_in_flight_is_499_unknown_then_followed_up(
    tmp_path: Path,
    emulator: EmulatorProcess,
    idp: Any,
    token_for: Token,
    monkeypatch: pytest.MonkeyPatch,
    commit: str,
) -> None:
    """The server cancels a request (graceful shutdown's cut) while its Commit is in flight: its
    499 event says outcome unknown, and the follow-up corrects that 499 event. When the Commit
    is ABORTED and the library's own rollback of the abandoned retry then fails (UNAVAILABLE),
    the write is still known not to have committed (the abandonment reason is kept)."""
    database = f"seam-cancel-{commit[:5]}"
    make_database(emulator.host, database, DDL)
    started = asyncio.Event()

    async def commit_in_flight() -> None:
        started.set()
        await asyncio.sleep(1.0)
        if commit != "commits":
            note_commit_send()
            raise aborted()

    async def rollback_fails(self: Any, *args: Any, **kwargs: Any) -> None:
        raise gexc.ServiceUnavailable("injected")

    audit = tmp_path / "audit.jsonl"
    async with gateway_on(tmp_path, emulator.host, policy_text(database, POLICY),
                          issuer=idp.issuer) as (app, http):  # fmt: skip
        app.executor.hooks = WriteHooks(before_commit=commit_in_flight)
        if commit != "commits":  # after start-up (its PLAN analysis rolls back)
            monkeypatch.setattr(Transaction, "rollback", rollback_fails)
        request = asyncio.ensure_future(post(http, bearer(token_for("support-console")), 15))
        await started.wait()
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request
        await until_settled(app)
        await asyncio.sleep(0.5)  # the follow-up reaches the file
        trail = events(audit)
    [first] = [e for e in trail if e["httpRequest"]["status"] == 499
               and "settlement" not in e["protoPayload"]["metadata"]]  # fmt: skip
    assert first["protoPayload"]["response"]["outcome"] == "unknown"
    [follow] = [e for e in trail if "settlement" in e["protoPayload"]["metadata"]]
    settlement = follow["protoPayload"]["metadata"]["settlement"]
    assert settlement["corrects"] == first["insertId"]
    assert follow["httpRequest"]["status"] == 499
    if commit == "commits":
        assert settlement["outcome"] == "committed"
        assert ids(emulator.host, database) == [15]
    else:
        assert settlement["outcome"] == "not-committed"
        assert ids(emulator.host, database) == []


BULK = """\
  bulk:
    identity: writer
    sql: INSERT INTO Items (Id) SELECT id FROM UNNEST(@ids) AS id
    params: {ids: {type: "ARRAY<INT64>"}}
"""


async def test_every_failed_write_carries_its_outcome(
    tmp_path: Path, emulator: EmulatorProcess, idp: Any, token_for: Token
) -> None:
    """Not only Spanner's errors: 422 too-many-mutations (refused before sending) and 500
    internal (an unexpected error in the write's attempt, before its Commit) say
    not-committed too, in the problem and in the audit event."""
    database = "seam-outcomes"
    make_database(emulator.host, database, DDL)
    policy = POLICY.replace("routes:\n", "routes:\n  - {path: /bulk, method: POST, query: bulk, "
                            "allow: [tester]}\n").replace("queries:\n", "queries:\n" + BULK)  # fmt: skip
    headers = bearer(token_for("support-console"))
    audit = tmp_path / "audit.jsonl"

    async def fails() -> None:
        raise RuntimeError("injected")

    async with gateway_on(tmp_path, emulator.host, policy_text(database, policy),
                          issuer=idp.issuer) as (app, http):  # fmt: skip
        many = await http.post("/bulk", json={"ids": list(range(80_001))}, headers=headers)
        assert many.status_code == 422, many.text
        assert many.json()["code"] == "too-many-mutations"
        app.executor.hooks.after_statement = fails
        internal = await post(http, headers, 16)
        assert internal.status_code == 500, internal.text
        assert internal.json()["code"] == "internal"
        for answer in (many, internal):
            assert answer.json()["outcome"] == "not-committed", answer.text
            [event] = events_of(audit, answer.headers["x-request-id"])
            assert event["protoPayload"]["response"]["outcome"] == "not-committed"
    assert ids(emulator.host, database) == []


async def test_a_commit_that_fails_unknown_logs_its_code_never_spanners_words(
    tmp_path: Path, emulator: EmulatorProcess, idp: Any, token_for: Token,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """A Commit that failed without saying whether it committed is logged with its gRPC code
    and a digest: Spanner's message may quote a value (here one no query masks)."""
    database = "seam-commit-words"
    make_database(emulator.host, database, DDL)

    async def sent_then_failed() -> None:
        note_commit_send()
        raise gexc.InternalServerError("Commit failed for key [wile@acme.example]")

    caplog.set_level(logging.INFO, logger="spangate.spanner")
    async with gateway_on(tmp_path, emulator.host, policy_text(database, POLICY),
                          issuer=idp.issuer) as (app, http):  # fmt: skip
        app.executor.hooks = WriteHooks(before_commit=sent_then_failed)
        answer = await post(http, bearer(token_for("support-console")), 11)
        assert answer.status_code == 504, answer.text
        assert answer.json()["outcome"] == "unknown"
    [line] = [r.getMessage() for r in caplog.records if "without saying" in r.getMessage()]
    assert "'add' failed without saying whether it committed: INTERNAL, Spanner's message " \
        "withheld (digest " in line  # fmt: skip
    assert "wile" not in caplog.text
