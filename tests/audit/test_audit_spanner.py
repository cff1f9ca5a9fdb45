"""The Spanner sink: batches of rows under the audit identity; a write's row commits in the write's
own transaction, so it exists if and only if the write committed (also under fault injection)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import (
    INSTANCE,
    POLICY,
    PROJECT,
    audit_schema,
    read_events,
    request_id,
    update_ddl,
)

from gateway.audit.chain import GENESIS, AuditKeys, canonical, event_hash
from gateway.dev.database import create_database
from gateway.dev.emulator import EmulatorProcess, start_emulator
from gateway.settings import Settings

Token = Callable[..., str]
TABLE = "SpangateAudit"


@pytest.fixture
def spanner_policy(tmp_path: Path) -> Path:
    """The audit policy with a Spanner sink written by its own identity, beside the file sink."""
    doc = yaml.safe_load(POLICY.read_text())
    doc["identities"]["audit_writer"] = {"database_role": "audit_writer"}
    doc["audit"]["sinks"].append({"type": "spanner", "identity": "audit_writer", "table": TABLE})
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


ROWS_SQL = """
SELECT InsertId, RequestId, Query, Status, Allowed, ChainId, Seq, PrevHash, EventHash, Event,
       CommitTime
FROM SpangateAudit WHERE @query IS NULL OR Query = @query ORDER BY ChainId, Seq"""


def _rows(gateway: Any, query: str | None = None) -> list[dict[str, Any]]:
    from google.cloud.spanner_v1 import param_types

    database = gateway.executor.databases.get("audit_writer")
    with database.snapshot() as snapshot:
        result = snapshot.execute_sql(
            ROWS_SQL, params={"query": query}, param_types={"query": param_types.STRING}
        )
        rows = list(result)
        names = [f.name for f in result.fields]
    return [dict(zip(names, row, strict=True)) for row in rows]


def _orders(gateway: Any, ids: list[str]) -> dict[str, Any]:
    from google.cloud.spanner_v1 import param_types

    database = gateway.executor.databases.get("shop_reader")
    with database.snapshot() as snapshot:
        rows = snapshot.execute_sql(
            "SELECT OrderId, CreatedAt FROM Orders WHERE TenantId = 't1' AND OrderId IN UNNEST(@ids)",
            params={"ids": ids},
            param_types={"ids": param_types.Array(param_types.STRING)},
        )
        return {r[0]: r[1] for r in rows}


def _post(http: Any, token: str, order_id: str) -> Any:
    body = {"order_id": order_id, "customer_id": "C-1", "total_cents": 10}
    return http.post("/v1/orders", json=body, headers={"Authorization": f"Bearer {token}"})


async def test_rows_in_batches_and_a_writes_row_in_its_transaction(
    make_settings: Callable[..., Settings],
    serve: Any,
    token_for: Token,
    spanner_policy: Path,
    audit_file: Path,
    audit_key: str,
) -> None:
    reader, writer = token_for("support-console"), token_for("order-writer")
    new_order = f"O-{time.time_ns() % 10**12}"
    async with serve(make_settings(policy=spanner_policy)) as (gateway, http):
        reads = [await http.get("/v1/orders/O-1001", headers={"Authorization": f"Bearer {reader}"})
                 for _ in range(3)]  # fmt: skip
        denied = await http.get("/v1/orders/O-1001")
        wrote = await _post(http, writer, new_order)
        duplicate = await _post(http, writer, "O-1001")
        assert [r.status_code for r in (*reads, denied, wrote, duplicate)] == [
            200, 200, 200, 401, 200, 409,
        ]  # fmt: skip
        ids = [r.headers["x-request-id"] for r in (*reads, denied, wrote, duplicate)]
        rows = {r["RequestId"]: r for r in await asyncio.to_thread(_rows, gateway)}
        orders = await asyncio.to_thread(_orders, gateway, [new_order])
    assert set(ids) <= set(rows)
    key = AuditKeys.from_secret(audit_key.encode()).chain
    batched = [rows[i] for i in ids if i != wrote.headers["x-request-id"]]
    chain = [r for r in batched if r["ChainId"] == batched[0]["ChainId"]]
    assert [r["Seq"] for r in chain] == list(range(chain[0]["Seq"], chain[0]["Seq"] + len(chain)))
    for row in chain:  # each batched row is a sealed event of this process's chain
        event = json.loads(row["Event"])
        assert event_hash(event, key) == row["EventHash"] == event["hash"]
        assert event["seq"] == row["Seq"] and event["prev"] == row["PrevHash"]
    assert chain[0]["Seq"] != 1 or chain[0]["PrevHash"] == GENESIS
    own = rows[wrote.headers["x-request-id"]]  # the write's row: in the write's transaction
    assert own["Seq"] is None and own["ChainId"] is None and own["Status"] == 200
    assert own["CommitTime"] == orders[new_order]  # one commit: the same commit timestamp
    event = json.loads(own["Event"])
    assert own["EventHash"] == event_hash(event, key) and canonical(event).decode() == own["Event"]
    filed = {request_id(e): e for e in read_events(audit_file)}
    sealed = filed[wrote.headers["x-request-id"]]  # the file has the sealed event, same insertId
    assert sealed["insertId"] == own["InsertId"]
    assert sealed["protoPayload"]["response"]["commitTimestamp"] == wrote.json()["commit_timestamp"]
    assert rows[duplicate.headers["x-request-id"]]["Status"] == 409  # a failed write: batched
    assert rows[denied.headers["x-request-id"]]["Allowed"] is False


ROUNDS = 6  # at most, of 90 writes each (see the test under fault injection)
ABORTED = "was aborted in the emulator to mimic production"  # the emulator's log, per abort


@pytest.fixture
def faulty_emulator(tmp_path: Path) -> Iterator[EmulatorProcess]:
    """An emulator of its own that aborts ~6 % of commits (logged), with the audit database."""
    with start_emulator(
        extra_args=["--enable_fault_injection", "--log_requests"],
        log_path=tmp_path / "emulator.log",
    ) as emulator:
        ddl, dml = audit_schema()
        create_database(
            emulator.host, project=PROJECT, instance=INSTANCE, database="audit", ddl=ddl, dml=dml
        )
        yield emulator


async def test_a_writes_row_exists_iff_the_write_committed_under_fault_injection(
    make_settings: Callable[..., Settings],
    serve: Any,
    token_for: Token,
    spanner_policy: Path,
    faulty_emulator: EmulatorProcess,
) -> None:
    writer = token_for("order-writer")
    log_path = faulty_emulator.log_path
    assert log_path is not None  # the fixture gave one: --log_requests shows the injected aborts
    settings = make_settings(policy=spanner_policy, spanner_emulator_host=faulty_emulator.host)
    answers: list[Any] = []
    wanted: set[str] = set()
    aborted = False
    async with serve(settings) as (gateway, http):
        # Rounds of 90 writes until the emulator has aborted at least one commit: ~2.5 aborts a
        # round on average, so one round alone sees none ~8 % of the time (a test that would
        # then prove nothing about aborts); six rounds all without one, ~1 in 3 million.
        for round_ in range(ROUNDS):
            stamp = time.time_ns() % 10**7
            batch = [f"O-{stamp:07d}{round_}{i:03d}" for i in range(80)]
            batch += batch[:10]  # ten of them twice: those writes must fail (ALREADY_EXISTS)
            wanted.update(batch)
            answers += await asyncio.gather(*(_post(http, writer, o) for o in batch))
            if ABORTED in log_path.read_text(errors="replace"):
                aborted = True
                break
        rows = await asyncio.to_thread(_rows, gateway, "create_order")
        orders = await asyncio.to_thread(_orders, gateway, sorted(wanted))
    assert aborted, f"no commit was aborted in {ROUNDS} rounds of writes"
    by_request = {r["RequestId"]: r for r in rows}
    committed = [a for a in answers if a.status_code == 200]
    failed = [a for a in answers if a.status_code != 200]
    assert len(committed) == len(wanted) and len(failed) == len(answers) - len(wanted)
    assert len(failed) == 10 * (round_ + 1)
    assert len(rows) == len(answers)  # one row per request, whatever happened
    for answer in committed:
        row = by_request[answer.headers["x-request-id"]]
        order_id = json.loads(row["Event"])["protoPayload"]["request"]["params"]["order_id"]
        assert row["Seq"] is None and row["CommitTime"] == orders[order_id["value"]]
    assert {by_request[a.headers["x-request-id"]]["Status"] for a in failed} == {409}
    assert all(by_request[a.headers["x-request-id"]]["Seq"] is not None for a in failed)
    ok_rows = [r for r in rows if r["Status"] == 200]
    # no write without its row, no row without its write
    assert len(ok_rows) == len(orders) == len(wanted)


async def test_a_write_that_used_its_approval_says_so_in_its_spanner_row(
    make_settings: Callable[..., Settings],
    serve: Any,
    token_for: Token,
    spanner_policy: Path,
    audit_file: Path,
    audit_database: str,
) -> None:
    """The write's row is written in the write's transaction, after the approval was used in it:
    it says ``used: true``, as the file's event does (it said false, written before)."""
    from gateway.spanner.approvals import DDL as APPROVALS_DDL

    try:
        update_ddl(audit_database, list(APPROVALS_DDL))
    except Exception as exc:  # noqa: BLE001 - another test made it
        assert "Duplicate name" in str(exc) or "already exists" in str(exc), exc
    doc = yaml.safe_load(spanner_policy.read_text())
    writes = next(r for r in doc["routes"] if r["query"] == "create_order")
    writes["approval"] = {"approvers": ["support"]}
    spanner_policy.write_text(yaml.safe_dump(doc, sort_keys=False))
    writer, lead = token_for("order-writer"), token_for("support-console")
    new_order = f"O-{time.time_ns() % 10**12}"
    async with serve(make_settings(policy=spanner_policy)) as (gateway, http):
        asked = await _post(http, writer, new_order)
        assert asked.status_code == 202, asked.text
        approval = asked.json()["approval"]["id"]
        approved = await http.post(
            f"/approvals/{approval}/approve", json={}, headers={"Authorization": f"Bearer {lead}"}
        )
        assert approved.status_code == 200, approved.text
        body = {"order_id": new_order, "customer_id": "C-1", "total_cents": 10}
        ran = await http.post(
            "/v1/orders",
            json=body,
            headers={"Authorization": f"Bearer {writer}", "Approval-Id": approval},
        )
        assert ran.status_code == 200, ran.text
        rows = {r["RequestId"]: r for r in await asyncio.to_thread(_rows, gateway)}
    own = rows[ran.headers["x-request-id"]]
    assert own["Seq"] is None  # the write's own row, in its transaction
    in_spanner = json.loads(own["Event"])["protoPayload"]["metadata"]["approval"]
    assert in_spanner == {"id": approval, "event": "approval.presented", "used": True}
    filed = {request_id(e): e for e in read_events(audit_file)}
    assert filed[ran.headers["x-request-id"]]["protoPayload"]["metadata"]["approval"] == in_spanner
