"""Follow-up events (``recorder.settle_hook``): a write answered 504 with outcome ``unknown``
gets, when its Commit settles, a second event that names the first; whichever of the two the
gateway learns first (the settlement can come before the request's own event is recorded), the
request's own event is written first. A Commit that stays unknown gets no follow-up."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from conftest import POLICY, read_events

from gateway.audit.chain import Chain
from gateway.audit.event import CallRecord
from gateway.audit.recorder import record_call, settle_hook
from gateway.audit.schema import AuditEvent
from gateway.audit.sinks import FileSink
from gateway.audit.trail import AuditTrail
from gateway.audit.writer import SinkWriter
from gateway.policy.compiled import compile_policy
from gateway.policy.load import load_policy
from gateway.spanner.errors import timeout_error
from gateway.spanner.execute import Result, Settled

COMPILED = compile_policy(
    load_policy(POLICY, env={"OKTA_ISSUER": "https://idp.example/oauth2/default"})
)
STAMP = "2026-12-02T05:00:00.123456Z"


def _trail(path: Path) -> AuditTrail:
    writer = SinkWriter(FileSink(path), Chain(None), durability="strict", window=0.0, max_batch=8)
    return AuditTrail([writer])


def _call() -> CallRecord:
    return CallRecord(
        request_id="a" * 32,
        method="POST",
        path="/v1/orders",
        started=time.perf_counter(),
        client="203.0.113.9",
        user_agent="test",
        status=504,
        error=timeout_error(2.0, outcome="unknown"),
    )


@pytest.mark.parametrize("settled_first", [False, True], ids=["recorded-first", "settled-first"])
@pytest.mark.parametrize("committed", [True, False], ids=["committed", "not-committed"])
async def test_a_settled_write_gets_one_follow_up_after_its_own_event(
    tmp_path: Path, committed: bool, settled_first: bool
) -> None:
    path = tmp_path / "audit.jsonl"
    trail = _trail(path)
    await trail.start()
    call = _call()
    hook = settle_hook(trail, call, COMPILED, key=None)
    result = Result(row_count=1, commit_timestamp=STAMP, is_dml=True) if committed else None
    outcome = Settled(committed=committed, result=result, seconds=3.25, error=None)
    if settled_first:
        hook(outcome)
        assert read_events(path) == []  # it waits for the request's own event
    await record_call(trail, call, COMPILED, key=None)
    if not settled_first:
        hook(outcome)
    await trail.close()
    first, follow = read_events(path)
    for event in (first, follow):
        AuditEvent.model_validate(event)
    assert first["httpRequest"]["status"] == follow["httpRequest"]["status"] == 504
    assert first["protoPayload"]["status"]["message"] == "timeout"
    assert "settlement" not in first["protoPayload"]["metadata"]
    assert follow["insertId"] != first["insertId"]
    assert follow["seq"] == first["seq"] + 1
    settlement = follow["protoPayload"]["metadata"]["settlement"]
    word = "committed" if committed else "not-committed"
    assert settlement == {
        "outcome": word,
        "corrects": first["insertId"],
        "rowInTransaction": None,
        "settledAfter": "3.250000s",
    }
    assert follow["protoPayload"]["response"]["outcome"] == word
    if committed:
        assert follow["protoPayload"]["status"] == {"code": 0, "message": "ok"}
        assert follow["protoPayload"]["response"]["commitTimestamp"] == STAMP
    else:
        assert follow["protoPayload"]["status"]["message"] == "timeout"
        assert follow["protoPayload"]["response"]["commitTimestamp"] is None


async def test_a_commit_that_stays_unknown_gets_no_follow_up(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    trail = _trail(path)
    await trail.start()
    call = _call()
    await record_call(trail, call, COMPILED, key=None)
    settle_hook(trail, call, COMPILED, key=None)(
        Settled(committed=None, result=None, seconds=60.0, error="ServiceUnavailable")
    )
    await trail.close()
    assert len(read_events(path)) == 1


@pytest.mark.parametrize("committed", [True, None], ids=["committed", "stays-unknown"])
async def test_the_settle_hook_names_the_event_it_corrects_for_the_log(
    tmp_path: Path, committed: bool | None, caplog: pytest.LogCaptureFixture
) -> None:
    """The executor's settle log line names the request's event: the hook returns its insertId;
    a follow-up is also logged (request id, both insertIds), so a sink that cannot take it does
    not lose what it says."""
    path = tmp_path / "audit.jsonl"
    trail = _trail(path)
    await trail.start()
    call = _call()
    await record_call(trail, call, COMPILED, key=None)
    result = Result(row_count=1, commit_timestamp=STAMP, is_dml=True) if committed else None
    caplog.set_level(logging.INFO, logger="spangate.audit")
    named = settle_hook(trail, call, COMPILED, key=None)(
        Settled(committed=committed, result=result, seconds=1.0, error=None)
    )
    await trail.close()
    events = read_events(path)
    assert named == events[0]["insertId"]
    lines = [r.getMessage() for r in caplog.records if "follow-up audit event" in r.getMessage()]
    if committed:
        [line] = lines
        assert call.request_id in line and events[0]["insertId"] in line
        assert events[1]["insertId"] in line and "committed" in line
    else:
        assert lines == [] and len(events) == 1
