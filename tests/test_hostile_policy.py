"""Policies that once let a caller stall the gateway or read another tenant, end to end: a
catastrophic ``pattern`` is matched in linear time (RE2: a real ``spangate serve`` keeps answering
/healthz while hostile values arrive), and SQL whose comment Spanner would end
at a carriage return is refused at load and at reload."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from served import served as serving

from gateway.app import Gateway
from gateway.cli import main
from gateway.runtime import build_gateway
from gateway.settings import Settings

CATASTROPHIC = "^([A-Z0-9]+-?)+$"  # seconds for 27 bytes with a backtracking engine

LIST_ORDERS = """\
    sql: |
      SELECT OrderId, CustomerId, Status, TotalCents, Currency, CreatedAt
      FROM Orders
      WHERE TenantId = @tenant
        AND (@status IS NULL OR Status = @status)
        AND TotalCents >= @min_total_cents
        AND (@after_created IS NULL                 -- the first page
             OR CreatedAt < @after_created          -- newest first: older orders come next,
             OR (CreatedAt = @after_created AND OrderId > @after_order))  -- then ties by id
      ORDER BY CreatedAt DESC, OrderId
      LIMIT @limit
"""
# The same statement, but Spanner ends the comment at the CR and runs `OR TRUE`: every tenant.
CR_EXPLOIT = (
    '    sql: "SELECT OrderId, CustomerId, Status, TotalCents, Currency, CreatedAt FROM Orders '
    "WHERE TenantId = @tenant -- scoped\\r OR TRUE\\n AND (@status IS NULL OR Status = @status) "
    "AND TotalCents >= @min_total_cents AND (@after_created IS NULL OR CreatedAt < @after_created "
    "OR (CreatedAt = @after_created AND OrderId > @after_order)) "
    'ORDER BY CreatedAt DESC, OrderId LIMIT @limit"\n'
)


def _policy(tmp_path: Path, repo: Path, old: str = "", new: str = "") -> Path:
    text = (repo / "policy.example.yaml").read_text()
    if old:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    return path


async def _started(policy: Path, host: str, idp: Any, tmp_path: Path) -> Gateway:
    settings = Settings(
        policy=policy,
        spanner_emulator_host=host,
        audit_path=tmp_path / "audit.jsonl",
        audit_key="hostile-policy-test-key",  # the example policy redacts, which needs a key
    )
    app = build_gateway(settings, env={"OKTA_ISSUER": idp.issuer})
    await app.startup()
    return app


HOSTILE = "A" * 5000 + "!"  # with Python's re: longer than the age of the universe


@pytest.fixture
def catastrophic_server(
    tmp_path: Path, repo: Path, demo_database: str, idp: Any, audit_key: str
) -> Iterator[tuple[str, Path]]:
    """A real ``spangate serve`` whose GET /v1/orders takes ``status`` with the catastrophic
    pattern and no max_length; yields its base URL and its log file."""
    policy = _policy(
        tmp_path,
        repo,
        "      status:          {type: STRING, enum: [OPEN, PAID, SHIPPED, CANCELLED], "
        "nullable: true}\n",
        f'      status:          {{type: STRING, pattern: "{CATASTROPHIC}", nullable: true}}\n',
    )
    with serving(
        tmp_path, database=demo_database, issuer=idp.issuer, audit_key=audit_key, policy=policy
    ) as server:
        yield server.base, server.log


@pytest.mark.timeout(120)  # start-up included; the hostile requests themselves take microseconds
async def test_a_catastrophic_pattern_cannot_stall_the_gateway(
    catastrophic_server: tuple[str, Path], token_for: Callable[..., str]
) -> None:
    base, log_path = catastrophic_server
    # Started with a warning: the pattern has no max_length.
    assert (
        "warning: queries.list_orders.params.status.pattern: pattern without max_length"
        in log_path.read_text()
    )
    headers = {"Authorization": f"Bearer {token_for('support-console')}"}
    done = asyncio.Event()
    polls: list[float] = []

    async def poll_health() -> None:
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:  # a stall: ReadTimeout
            while not done.is_set() or len(polls) < 5:
                started = time.monotonic()
                response = await http.get("/healthz")
                polls.append(time.monotonic() - started)
                assert response.status_code == 200, response.text
                await asyncio.sleep(0.01)

    async def hostile() -> list[httpx.Response]:
        try:
            async with httpx.AsyncClient(base_url=base, timeout=60, headers=headers) as http:
                await asyncio.sleep(0.05)  # the polls are under way
                return list(
                    await asyncio.gather(
                        *(http.get("/v1/orders", params={"status": HOSTILE}) for _ in range(8))
                    )
                )
        finally:
            done.set()

    poller = asyncio.create_task(poll_health())
    responses = await hostile()
    await poller
    for response in responses:
        assert response.status_code == 400, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["code"] == "param-invalid"
    # /healthz answered throughout: a backtracking matcher would hold the event loop for ever.
    # Generous for a loaded 2-core machine; a stalled loop would not answer at all.
    assert max(polls) < 2.0, polls
    async with httpx.AsyncClient(base_url=base, timeout=30, headers=headers) as http:
        fine = await http.get("/v1/orders", params={"status": "OPEN"})
        assert fine.status_code == 200, fine.text
        assert all(row["Status"] == "OPEN" for row in fine.json()["rows"])


def test_policy_check_refuses_sql_with_a_carriage_return(
    tmp_path: Path, repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = _policy(tmp_path, repo, LIST_ORDERS, CR_EXPLOIT)
    assert main(["policy", "check", str(policy)]) == 2
    err = capsys.readouterr().err
    line = policy.read_text().splitlines().index(CR_EXPLOIT.rstrip("\n")) + 1
    assert f"{policy}:{line}:10: queries.list_orders.sql: U+000D (CARRIAGE RETURN) is not " in err
    assert "(SQL line 1, column 115)" in err


@pytest.mark.timeout(120)
async def test_a_reload_with_the_cr_comment_exploit_is_refused(
    tmp_path: Path, repo: Path, demo_database: str, idp: Any, token_for: Callable[..., str]
) -> None:
    policy = _policy(tmp_path, repo)
    app = await _started(policy, demo_database, idp, tmp_path)
    try:
        transport = httpx.ASGITransport(app=app)
        headers = {"Authorization": f"Bearer {token_for('support-console')}"}  # tenant t1
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
            before = await http.get("/v1/orders?limit=100", headers=headers)
            assert before.status_code == 200, before.text
            sha = app.policy.sha256
            policy.write_text(policy.read_text().replace(LIST_ORDERS, CR_EXPLOIT))
            assert await app.reloader.reload() is False
            assert "U+000D (CARRIAGE RETURN) is not allowed" in (app.reloader.last_error or "")
            assert app.policy.sha256 == sha
            after = await http.get("/v1/orders?limit=100", headers=headers)
            assert after.json()["rows"] == before.json()["rows"]  # still tenant t1's only
    finally:
        await app.shutdown()


@pytest.mark.timeout(120)
async def test_a_reload_logs_the_warnings_of_the_policy_it_swaps_in(
    tmp_path: Path, repo: Path, demo_database: str, idp: Any, caplog: pytest.LogCaptureFixture
) -> None:
    policy = _policy(tmp_path, repo)
    app = await _started(policy, demo_database, idp, tmp_path)
    try:
        bounded = '{type: STRING, max_length: 14, pattern: "^O-[0-9]{1,12}$"}'
        policy.write_text(
            policy.read_text().replace(bounded, '{type: STRING, pattern: "^O-[0-9]{1,12}$"}')
        )
        with caplog.at_level(logging.WARNING, logger="spangate.reload"):
            assert await app.reloader.reload() is True
        [logged] = [r.getMessage() for r in caplog.records if "warning:" in r.getMessage()]
        assert logged.startswith(f"policy {policy}:")
        assert "warning: queries.create_order.params.order_id.pattern: pattern without" in logged
    finally:
        await app.shutdown()


@pytest.mark.parametrize(
    ("example", "old", "new", "says"),
    [
        (  # Spanner: the hex number 0X1e, then a comment: `@tenant = TenantId` never runs
            "policy.example.yaml",
            "      WHERE TenantId = @tenant AND OrderId = @order_id\n",
            "      WHERE 0X1e = 0X1e--@tenant = TenantId\n      AND OrderId = @order_id\n",
            "tenant",
        ),
        (  # Spanner: a hint whose `--` hides its first `*/`: the tenant filter is in the hint
            "policy.example.postgresql.yaml",
            "      WHERE tenant_id = $1 AND order_id = $2\n",
            "      /*@ force_index=_base_table -- */ WHERE tenant_id = $1\n"
            "      */ WHERE order_id = $2\n",
            "statement hint",
        ),
    ],
)
def test_policy_check_refuses_a_tenant_filter_spanner_would_not_run(
    tmp_path: Path, repo: Path, capsys: pytest.CaptureFixture[str],
    example: str, old: str, new: str, says: str,
) -> None:  # fmt: skip
    """Both were accepted once (the gateway read the filter; Spanner, run by hand on the
    emulator, returned every tenant's order)."""
    text = (repo / example).read_text()
    assert old in text
    policy = tmp_path / "policy.yaml"
    policy.write_text(text.replace(old, new, 1))
    assert main(["policy", "check", str(policy)]) == 2
    assert says in capsys.readouterr().err
