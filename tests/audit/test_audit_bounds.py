"""The trail's edges: a write's own Spanner row versus its event (replays, cancellations), sinks
that stop answering (Spanner down, a stalled stdout reader) and shutdown, odd values in a write's
own row. Fakes stand in for Spanner here; test_audit_spanner.py has the emulator."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.audit.chain import Chain
from gateway.audit.event import CallRecord
from gateway.audit.recorder import in_transaction_hook, record_call, record_nowait
from gateway.audit.sinks import FileSink, Sealed
from gateway.audit.spanner_sink import SpannerSink
from gateway.audit.stdout_sink import StdoutSink
from gateway.audit.trail import AuditTrail
from gateway.audit.writer import SinkWriter
from gateway.auth.principal import Principal
from gateway.errors import AuditUnavailable
from gateway.policy.compiled import CompiledPolicy, compile_policy
from gateway.policy.decide import RequestFacts, decide
from gateway.policy.load import load_policy
from gateway.spanner.results import Result

REPO = Path(__file__).resolve().parents[2]
DATABASE = "projects/p/instances/i/databases/override"


class FakeDatabase:
    """A blocking Database: batches go to ``rows``; ``stall`` makes a batch block until set."""

    def __init__(self) -> None:
        self.rows: list[list[Any]] = []
        self.stall: threading.Event | None = None

    def run_in_transaction(self, fn: Any, **kw: Any) -> None:
        if self.stall is not None:
            self.stall.wait(10)
        outer = self

        class Transaction:
            def insert(self, table: str, columns: Any, rows: list[list[Any]]) -> None:
                outer.rows.extend(rows)

        fn(Transaction())


class FakeTransaction:
    def __init__(self) -> None:
        self.rows: list[list[Any]] = []

    def insert(self, table: str, columns: Any, rows: list[list[Any]]) -> None:
        self.rows.extend(rows)


@pytest.fixture(scope="module")
def policy() -> CompiledPolicy:
    return compile_policy(
        load_policy(REPO / "policy.example.yaml", env={"OKTA_ISSUER": "http://127.0.0.1:1/x"})
    )


def write_call(policy: CompiledPolicy) -> CallRecord:
    principal = Principal(
        issuer="okta",
        iss="http://127.0.0.1:1/x",
        subject="order-writer",
        scopes=frozenset({"orders.write"}),
        claims={"tenant": "t1", "scp": ["orders.write"]},
    )
    body = {"order_id": "O-1", "customer_id": "C-1", "total_cents": 5}
    decision = decide(policy, RequestFacts(method="POST", path="/v1/orders", body=body), principal)
    assert decision.allow
    call = CallRecord(
        request_id="r1", method="POST", path="/v1/orders", started=0.0, client=None, user_agent=None
    )
    call.principal, call.decision = principal, decision
    assert call.write
    return call


@pytest.fixture
def trail(tmp_path: Path) -> Iterator[tuple[AuditTrail, FakeDatabase, Path]]:
    database = FakeDatabase()
    path = tmp_path / "audit.jsonl"
    yield (
        AuditTrail(
            [
                SinkWriter(FileSink(path), Chain(None), durability=None, window=0, max_batch=10),
                SinkWriter(
                    SpannerSink(database, "SpangateAudit", key=None, deadline=0.3),
                    Chain(None),
                    durability=None,
                    window=0,
                    max_batch=10,
                ),
            ]
        ),
        database,
        path,
    )


def filed(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


async def test_a_replay_after_an_aborted_attempt_still_reaches_the_spanner_sink(
    policy: CompiledPolicy, trail: tuple[AuditTrail, FakeDatabase, Path]
) -> None:
    audit, database, path = trail
    call = write_call(policy)
    hook = in_transaction_hook(audit, call, policy, key=None)
    assert hook is not None
    hook(FakeTransaction(), Result(is_dml=True, row_count=1))  # attempt 1: then ABORTED
    # attempt 2 found the Idempotency-Key record: rolled back, the stored result answered
    call.result = Result(is_dml=True, row_count=1, commit_timestamp="2024-01-01T00:00:00Z")
    call.result.replayed = True
    call.status = 200
    assert not await record_call(audit, call, policy, key=None)
    await audit.close()
    assert [row[0] for row in database.rows] == [call.insert_id]  # batched: no row committed
    assert [e["insertId"] for e in filed(path)] == [call.insert_id]


async def test_a_committed_writes_row_is_not_written_twice(
    policy: CompiledPolicy, trail: tuple[AuditTrail, FakeDatabase, Path]
) -> None:
    audit, database, _ = trail
    call = write_call(policy)
    hook = in_transaction_hook(audit, call, policy, key=None)
    assert hook is not None
    own = FakeTransaction()
    hook(own, Result(is_dml=True, row_count=1))
    call.result = Result(is_dml=True, row_count=1, commit_timestamp="2024-01-01T00:00:00Z")
    call.status = 200
    await record_call(audit, call, policy, key=None)
    await audit.close()
    assert database.rows == [] and [r[0] for r in own.rows] == [call.insert_id]


async def test_a_cancelled_or_timed_out_write_never_reuses_its_rows_insert_id(
    policy: CompiledPolicy, trail: tuple[AuditTrail, FakeDatabase, Path]
) -> None:
    audit, database, path = trail
    cancelled, timed_out = write_call(policy), write_call(policy)
    hooks = [in_transaction_hook(audit, c, policy, key=None) for c in (cancelled, timed_out)]
    row_ids = [cancelled.insert_id, timed_out.insert_id]
    cancelled.status = 499
    record_nowait(audit, cancelled, policy, key=None, database=DATABASE)
    timed_out.status = 504
    await record_call(audit, timed_out, policy, key=None, database=DATABASE)
    own = FakeTransaction()
    for hook in hooks:  # the writes settle in the background after their events were queued
        assert hook is not None
        hook(own, Result(is_dml=True, row_count=1))
    await audit.close()
    assert [r[0] for r in own.rows] == row_ids
    events = filed(path)
    assert {e["insertId"] for e in events}.isdisjoint(row_ids)
    assert {r[0] for r in database.rows}.isdisjoint(row_ids)
    assert [e["protoPayload"]["resourceName"] for e in events] == [DATABASE, DATABASE]


async def test_a_spanner_sink_that_does_not_answer_fails_its_batch_in_bounded_time(
    policy: CompiledPolicy, trail: tuple[AuditTrail, FakeDatabase, Path]
) -> None:
    audit, database, _ = trail
    database.stall = threading.Event()
    call = write_call(policy)
    call.status = 401
    started = time.monotonic()
    with pytest.raises(AuditUnavailable):
        await audit.record({"insertId": "a"}, write=False)
    assert time.monotonic() - started < 2
    started = time.monotonic()
    with pytest.raises(AuditUnavailable):  # still stuck: refused at once
        await audit.record({"insertId": "b"}, write=False)
    assert time.monotonic() - started < 0.2 and not audit.available
    started = time.monotonic()
    await audit.close()
    assert time.monotonic() - started < 1
    database.stall.set()


async def test_an_unreachable_spanner_channel_refuses_the_batch_before_sending(
    tmp_path: Path,
) -> None:
    database = FakeDatabase()
    sink = SpannerSink(database, "T", key=None, channel_state=lambda: "TRANSIENT_FAILURE")
    audit = AuditTrail([SinkWriter(sink, Chain(None), durability=None, window=0, max_batch=10)])
    with pytest.raises(AuditUnavailable):
        await audit.record({"insertId": "a"}, write=False)
    await audit.close()
    assert database.rows == []


async def test_close_is_bounded_when_a_sink_hangs(tmp_path: Path) -> None:
    database = FakeDatabase()
    database.stall = threading.Event()
    sink = SpannerSink(database, "T", key=None, deadline=30)
    writer = SinkWriter(sink, Chain(None), durability=None, window=0, max_batch=10)
    audit = AuditTrail([writer])
    pending = writer.submit({"insertId": "a"}, write=False)
    await asyncio.sleep(0.05)
    started = time.monotonic()
    await writer.close(timeout=0.3)
    assert time.monotonic() - started < 1
    with pytest.raises(AuditUnavailable):
        await pending
    assert audit.writers == [writer]
    database.stall.set()


async def test_a_stalled_stdout_reader_fails_the_batch_instead_of_hanging() -> None:
    read, write = os.pipe()
    try:
        sink = StdoutSink(fd=write, deadline=0.2)
        audit = AuditTrail([SinkWriter(sink, Chain(None), durability=None, window=0, max_batch=9)])
        big = {"insertId": "x", "pad": "p" * 300_000}  # more than a pipe holds
        started = time.monotonic()
        with pytest.raises(AuditUnavailable):
            await audit.record(big, write=True)
        assert time.monotonic() - started < 2
        with pytest.raises(AuditUnavailable):  # still stalled: refused without a new wait
            await audit.record({"insertId": "y"}, write=True)
        assert time.monotonic() - started < 2
        os.set_blocking(read, False)
        while True:  # the reader catches up
            try:
                os.read(read, 1 << 20)
            except BlockingIOError:
                break
        await audit.record({"insertId": "z"}, write=True)
        await audit.close()
        tail = os.read(read, 1 << 20)
        assert tail.startswith(b"\n")  # ends the line cut short; the new one is whole
        assert json.loads(tail.splitlines()[-1])["insertId"] == "z"
    finally:
        os.close(read)
        os.close(write)


def test_stdout_writes_whole_lines(tmp_path: Path) -> None:
    path = tmp_path / "out"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        StdoutSink(fd=fd).write([Sealed({}, b'{"a":1}\n'), Sealed({}, b'{"b":2}\n')])
    finally:
        os.close(fd)
    assert path.read_bytes() == b'{"a":1}\n{"b":2}\n'


def test_serve_bounds_its_graceful_shutdown() -> None:
    from gateway.server import ANSWER_SECONDS, server_config
    from gateway.settings import Settings

    # The shutdown timeout, then the answer window of calls cut short, then uvicorn cancels.
    config = server_config(object(), Settings(policy=REPO / "policy.example.yaml"))
    assert config.shutdown_timeout == 10 and config.drain_seconds == 5
    assert config.timeout_graceful_shutdown == 10 + ANSWER_SECONDS
    settings = Settings(
        policy=REPO / "policy.example.yaml", shutdown_timeout_seconds=2.5, drain_seconds=0
    )
    config = server_config(object(), settings)
    assert config.shutdown_timeout == 2.5 and config.drain_seconds == 0
    assert config.timeout_graceful_shutdown == 2.5 + ANSWER_SECONDS


def test_a_writes_own_row_survives_a_lone_surrogate(policy: CompiledPolicy) -> None:
    sink = SpannerSink(FakeDatabase(), "T", key=None)
    call = write_call(policy)
    call.user_agent = "agent \ud800"
    from gateway.audit.event import build_event

    call.status = 200
    call.result = Result(is_dml=True, row_count=1)
    transaction = FakeTransaction()
    sink.insert_in(transaction, build_event(call, policy, key=None))
    (row,) = transaction.rows
    assert (
        json.loads(row[-1])["httpRequest"]["userAgent"] == "agent ?"
    )  # scrubbed: the write goes on
