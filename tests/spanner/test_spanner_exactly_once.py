"""Exactly once under faults: the emulator's ``--enable_fault_injection`` aborts about 6 % of
commits; concurrent callers retry every failed write with its Idempotency-Key; at the end every
write is applied exactly once. The statement is deliberately not idempotent (each run inserts a
new row with a fresh UUID), so a second application would show up as a second row."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import httpx
from spanner_stack import Token, bearer, gateway_on, make_database, policy_text, query_rows

from gateway.dev.emulator import start_emulator
from gateway.spanner.idempotency import DDL as IDEMPOTENCY_DDL

CALLERS = 12
WRITES_EACH = 20
RETRYABLE = {409: "aborted", 503: "spanner-unavailable", 504: "timeout"}

DDL = [
    "CREATE TABLE Ledger (EntryId STRING(36) NOT NULL, Ref STRING(64) NOT NULL, Amount INT64)"
    " PRIMARY KEY (EntryId)",
    *IDEMPOTENCY_DDL,
]
POLICY = """\
identities:
  payer: {database_role: ledger_writer}
  auditor: {database_role: ledger_reader}
queries:
  pay:
    identity: payer
    sql: >-
      INSERT INTO Ledger (EntryId, Ref, Amount) VALUES (GENERATE_UUID(), @ref, @amount)
      THEN RETURN EntryId
    params:
      ref: {type: STRING, max_length: 64}
      amount: {type: INT64, min: 1}
    timeout: 150ms  # short: queued and cut writes time out, and their callers retry
routes:
  - {path: /payments, method: POST, query: pay, allow: [tester]}
"""


async def _until_ok(
    http: httpx.AsyncClient,
    headers: dict[str, str],
    ref: str,
    amount: int,
    outcomes: dict[str, int],
) -> httpx.Response:
    """POST one payment with its key until it succeeds, retrying what a client should retry."""
    for _attempt in range(200):
        response = await http.post(
            "/payments",
            json={"ref": ref, "amount": amount},
            headers={**headers, "Idempotency-Key": f"pay-{ref}"},
        )
        code = response.json().get("code", "")
        outcome = f"{response.status_code} {code}".strip()
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        if response.status_code == 200:
            return response
        assert RETRYABLE.get(response.status_code) == code, response.text
        await asyncio.sleep(0.005)
    raise AssertionError(f"{ref} never succeeded: {outcomes}")


async def _caller(
    http: httpx.AsyncClient, headers: dict[str, str], caller: int, outcomes: dict[str, int]
) -> None:
    for n in range(WRITES_EACH):
        await _until_ok(http, headers, f"c{caller}-w{n}", caller * 1000 + n + 1, outcomes)


async def test_concurrent_retried_writes_apply_exactly_once_under_fault_injection(
    tmp_path: Path, idp: Any, token_for: Token
) -> None:
    headers = bearer(token_for("support-console"))
    log = tmp_path / "emulator.log"
    emulator = start_emulator(
        extra_args=["--enable_fault_injection", "--log_requests"], log_path=log
    )
    try:
        make_database(emulator.host, "ledger", DDL)
        policy = policy_text("ledger", POLICY)
        outcomes: dict[str, int] = {}
        async with gateway_on(tmp_path, emulator.host, policy, issuer=idp.issuer) as (_, http):
            await asyncio.gather(*(_caller(http, headers, c, outcomes) for c in range(CALLERS)))
            # Every tenth request once more, as a late retry: answered from its record.
            late: dict[str, int] = {}
            replays = await asyncio.gather(
                *(
                    _until_ok(http, headers, f"c{c}-w{n}", c * 1000 + n + 1, late)
                    for c in range(CALLERS)
                    for n in range(0, WRITES_EACH, 10)
                )
            )
        rows = query_rows(
            emulator.host, "ledger", "SELECT Ref, COUNT(*), SUM(Amount) FROM Ledger GROUP BY Ref"
        )
    finally:
        emulator.stop()
    expected = {f"c{c}-w{n}": c * 1000 + n + 1 for c in range(CALLERS) for n in range(WRITES_EACH)}
    assert {ref: (count, total) for ref, count, total in rows} == {
        ref: (1, amount) for ref, amount in expected.items()
    }, outcomes
    assert all(r.status_code == 200 and r.json()["row_count"] == 1 for r in replays)
    # The faults happened: the emulator aborted commits, which the client library retried.
    aborted = len(
        re.findall(r"Transaction (was )?aborted|ABORTED", log.read_text(errors="replace"))
    )
    assert aborted > 0, "fault injection aborted nothing"
    assert outcomes["200"] == CALLERS * WRITES_EACH
