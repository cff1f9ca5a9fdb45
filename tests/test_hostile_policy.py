"""Policies that once let a caller stall the gateway or read another tenant, end to end: a
catastrophic ``pattern`` is matched in linear time (RE2), and SQL whose comment Spanner would end
at a carriage return is refused at load and at reload."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

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
      ORDER BY CreatedAt DESC, OrderId
      LIMIT @limit
"""
# The same statement, but Spanner ends the comment at the CR and runs `OR TRUE`: every tenant.
CR_EXPLOIT = (
    '    sql: "SELECT OrderId, CustomerId, Status, TotalCents, Currency, CreatedAt FROM Orders '
    "WHERE TenantId = @tenant -- scoped\\r OR TRUE\\n AND (@status IS NULL OR Status = @status) "
    'AND TotalCents >= @min_total_cents ORDER BY CreatedAt DESC, OrderId LIMIT @limit"\n'
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


@pytest.fixture
async def catastrophic_gateway(
    tmp_path: Path, repo: Path, demo_database: str, idp: Any, caplog: pytest.LogCaptureFixture
) -> AsyncIterator[Gateway]:
    policy = _policy(
        tmp_path,
        repo,
        "      order_id: {type: STRING, max_length: 36}\n    max_rows: 1\n    timeout: 2s\n",
        f'      order_id: {{type: STRING, pattern: "{CATASTROPHIC}"}}\n'
        "    max_rows: 1\n    timeout: 2s\n",
    )
    with caplog.at_level(logging.WARNING, logger="spangate.reload"):
        app = await _started(policy, demo_database, idp, tmp_path)
    try:
        yield app
    finally:
        await app.shutdown()


@pytest.mark.timeout(120)  # start-up included; the hostile request itself takes microseconds
async def test_a_catastrophic_pattern_cannot_stall_the_gateway(
    catastrophic_gateway: Gateway,
    token_for: Callable[..., str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Started with a warning: the pattern has no max_length.
    warned = [r.getMessage() for r in caplog.get_records("setup") if r.name == "spangate.reload"]
    assert any(
        "warning: queries.get_order.params.order_id.pattern: pattern without max_length" in m
        for m in warned
    ), warned
    headers = {"Authorization": f"Bearer {token_for('support-console')}"}
    transport = httpx.ASGITransport(app=catastrophic_gateway)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
        # With Python's re this value would take longer than the age of the universe.
        hostile = await http.get("/v1/orders/" + "A" * 5000 + "!", headers=headers)
        assert hostile.status_code == 400, hostile.text
        assert hostile.json()["code"] == "param-invalid"
        assert (await http.get("/healthz")).status_code == 200
        fine = await http.get("/v1/orders/O-1001", headers=headers)
        assert fine.status_code == 200, fine.text
        assert fine.json()["rows"][0]["OrderId"] == "O-1001"


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
