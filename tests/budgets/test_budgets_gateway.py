"""Budgets through the real gateway in process (httpx over ASGI, the real OpenID provider, the
emulator): what a call spends when its statement never ran (an Idempotency-Key replay over HTTP
and MCP, a reused key, a malformed key), and the budget store in ``/readyz``."""

from __future__ import annotations

import asyncio
import json
import re
import secrets
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.app import Gateway
from gateway.budgets.core import UNKEYED_WARNING
from gateway.dev.idp import IdpProcess
from gateway.dev.ports import free_port
from gateway.runtime import build_gateway
from gateway.settings import Settings
from gateway.spanner.execute import WriteHooks

REPO = Path(__file__).resolve().parents[2]


def policy(folder: Path, budgets: str, *, redact: bool = True, write_timeout: str = "5s") -> Path:
    text = (REPO / "policy.example.yaml").read_text()
    start, end = text.index("\nbudgets:"), text.index("\naudit:")
    text = text[:start] + "\n" + budgets.rstrip() + "\n" + text[end:]
    text = text.replace("    timeout: 5s\n", f"    timeout: {write_timeout}\n", 1)  # create_order's
    if not redact:
        text = text.replace("  redact: [total_cents]", "")
    path = folder / "policy.yaml"
    path.write_text(text)
    return path


async def started(settings: Settings, idp: IdpProcess) -> Gateway:
    app = build_gateway(settings, env={"OKTA_ISSUER": idp.issuer})
    await app.startup()
    return app


@pytest.fixture
async def writer_gateway(
    tmp_path: Path, demo_database: str, idp: IdpProcess, audit_key: str
) -> AsyncIterator[Gateway]:
    settings = Settings(
        policy=policy(tmp_path, "budgets:\n  order-writer: {calls: 20/day, writes: 3/day}"),
        spanner_emulator_host=demo_database,
        audit_path=tmp_path / "audit.jsonl",
        audit_key=audit_key,
    )
    app = await started(settings, idp)
    try:
        yield app
    finally:
        await app.shutdown()


def order() -> dict[str, Any]:
    return {"order_id": f"O-{secrets.randbelow(10**12)}", "customer_id": "C-1", "total_cents": 5}


def left(answer: httpx.Response) -> tuple[int, int]:
    """(calls, writes) remaining, as the RateLimit field says."""
    found = dict(re.findall(r'"(\w+)";r=(\d+)', answer.headers["RateLimit"]))
    return int(found["calls"]), int(found["writes"])


async def test_a_call_whose_statement_never_ran_spends_no_write(
    writer_gateway: Gateway, token_for: Callable[..., str]
) -> None:
    """A replay (HTTP or MCP), a reused key and a malformed key run no statement: the writes
    budget (3 a day) is spent by the three writes that ran (one of them refused by Spanner), and
    only by them. The replays and the reused key read the key's record in a read-write
    transaction: they spend their call (20 a day); the malformed key is refused before the
    budget is asked."""
    token = token_for("order-writer")
    transport = httpx.ASGITransport(app=writer_gateway)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:

        async def post(body: dict[str, Any], key: str | None) -> httpx.Response:
            headers = {"Authorization": f"Bearer {token}"}
            if key is not None:
                headers["Idempotency-Key"] = key
            return await http.post("/v1/orders", json=body, headers=headers)

        async def mcp(body: dict[str, Any], key: str) -> dict[str, Any]:
            call = {
                "jsonrpc": "2.0",
                "id": 7,
                "method": "tools/call",
                "params": {"name": "create_order", "arguments": {**body, "idempotency_key": key}},
            }
            answer = await http.post(
                "/mcp",
                json=call,
                headers={
                    "Authorization": f"Bearer {token}",
                    "Accept": "application/json, text/event-stream",
                    "MCP-Protocol-Version": "2025-11-25",
                },
            )
            assert answer.status_code == 200, answer.text
            result: dict[str, Any] = answer.json()["result"]
            return result

        first, key = order(), secrets.token_hex(8)
        ran = await post(first, key)
        assert ran.status_code == 200, ran.text
        assert left(ran) == (19, 2)
        replayed = await post(first, key)  # the stored answer: nothing ran again
        assert replayed.status_code == 200 and replayed.content == ran.content
        assert left(replayed) == (18, 2)
        over_mcp = await mcp(first, key)  # MCP's replay: the same path (a call, no write)
        assert over_mcp["isError"] is False
        assert over_mcp["structuredContent"] == ran.json()
        reused = await post({**first, "total_cents": 6}, key)  # another request, same key
        assert reused.status_code == 422 and reused.json()["code"] == "idempotency-key-reused"
        assert left(reused) == (16, 2)
        malformed = await post(order(), "\x7f")  # refused before the budget is asked
        assert malformed.status_code == 400, malformed.text
        assert malformed.json()["code"] == "idempotency-key-invalid"
        second = await mcp(order(), secrets.token_hex(8))
        assert second["isError"] is False, second
        third = await post(first, None)  # the same order again: it ran, and Spanner refused it
        assert third.status_code == 409, third.text
        assert left(third) == (14, 0)  # a statement that ran spends
        fourth = await post(order(), secrets.token_hex(8))  # three writes ran: spent
        assert fourth.status_code == 429, fourth.text
        assert fourth.json()["budget"] == "writes"
        assert left(fourth) == (14, 0)


async def test_a_keyed_retry_refused_by_its_budget_gets_the_answer_of_the_write_it_spent(
    tmp_path: Path, demo_database: str, idp: IdpProcess, audit_key: str,
    token_for: Callable[..., str],
) -> None:  # fmt: skip
    """writes: 1/day. A keyed write is cut by its deadline with its Commit in flight (504,
    outcome unknown) and commits afterwards, spending the day's write. Its retry with the same
    key is refused by the budget, so the gateway reads the key's record (read-only) and answers
    the stored response: the caller learns the outcome, nothing is spent, and the event is the
    replay's. Over MCP too. Another request under that key, a new key and no key get the 429."""
    audit = tmp_path / "audit.jsonl"
    settings = Settings(
        policy=policy(tmp_path, "budgets:\n  order-writer: {writes: 1/day}", write_timeout="1s"),
        spanner_emulator_host=demo_database,
        audit_path=audit,
        audit_key=audit_key,
    )
    app = await started(settings, idp)
    commits = {"delay": 2.0}

    async def slow_commit() -> None:
        delay, commits["delay"] = commits["delay"], 0.0
        await asyncio.sleep(delay)

    token = token_for("order-writer")
    try:
        app.executor.hooks = WriteHooks(before_commit=slow_commit)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:

            async def post(body: dict[str, Any], key: str | None) -> httpx.Response:
                headers = {"Authorization": f"Bearer {token}"}
                if key is not None:
                    headers["Idempotency-Key"] = key
                return await http.post("/v1/orders", json=body, headers=headers)

            first, key = order(), secrets.token_hex(8)
            cut = await post(first, key)
            assert (cut.status_code, cut.json()["outcome"]) == (504, "unknown"), cut.text
            assert cut.headers["RateLimit"].startswith('"writes";r=0;')
            while app.executor.settling:  # its Commit lands after the answer
                await asyncio.sleep(0.1)
            retried = await post(first, key)
            assert retried.status_code == 200, retried.text
            assert retried.json()["row_count"] == 1 and retried.json()["commit_timestamp"]
            assert retried.headers["RateLimit"].startswith('"writes";r=0;')
            assert "Retry-After" not in retried.headers
            again = await post(first, key)  # still nothing spent: the same answer
            assert again.status_code == 200 and again.content == retried.content
            answer = await http.post(
                "/mcp",
                json={
                    "jsonrpc": "2.0", "id": 1, "method": "tools/call",
                    "params": {"name": "create_order",
                               "arguments": {**first, "idempotency_key": key}},
                },
                headers={
                    "Authorization": f"Bearer {token}",
                    "Accept": "application/json, text/event-stream",
                    "MCP-Protocol-Version": "2025-11-25",
                },
            )  # fmt: skip
            over_mcp = answer.json()["result"]
            assert over_mcp["isError"] is False, over_mcp
            assert over_mcp["structuredContent"] == retried.json()
            other = await post({**first, "total_cents": 6}, key)  # another request, same key
            fresh = await post(order(), secrets.token_hex(8))
            unkeyed = await post(order(), None)
            for refused in (other, fresh, unkeyed):
                assert refused.status_code == 429, refused.text
                assert refused.json()["budget"] == "writes"
            metrics = (await http.get("/metrics")).text
        assert (
            'spangate_budget_refusals_total{budget="writes",role="order-writer"} 3.0'
            in metrics.splitlines()
        )  # the answered retries were not refusals
        events = [json.loads(line) for line in audit.read_text().splitlines()]
        [event] = [
            e for e in events
            if e["protoPayload"]["requestMetadata"]["requestAttributes"]["id"]
            == retried.headers["x-request-id"]
        ]  # fmt: skip
        assert event["httpRequest"]["status"] == 200
        assert "budget" not in event["protoPayload"]["metadata"]
        response = event["protoPayload"]["response"]
        assert (response["outcome"], response["commitTimestamp"]) == (
            "committed", retried.json()["commit_timestamp"]
        )  # fmt: skip
    finally:
        await app.shutdown()


async def test_a_keyed_retry_answered_from_its_record_is_masked_for_its_caller(
    tmp_path: Path, demo_database: str, idp: IdpProcess, audit_key: str,
    token_for: Callable[..., str],
) -> None:  # fmt: skip
    """The stored answer a keyed retry refused by its budget gets (see above) passes through the
    caller's masks like every answer: a THEN RETURN column masked for the writer stays masked."""
    path = policy(tmp_path, "budgets:\n  order-writer: {writes: 1/day}")
    text = path.read_text()
    text = text.replace(
        "PENDING_COMMIT_TIMESTAMP())\n",
        "PENDING_COMMIT_TIMESTAMP())\n      THEN RETURN OrderId, CustomerId\n",
        1,
    ).replace("    timeout: 5s\n", "    timeout: 5s\n    mask:\n      CustomerId: {with: redact}\n", 1)
    path.write_text(text)
    settings = Settings(
        policy=path,
        spanner_emulator_host=demo_database,
        audit_path=tmp_path / "audit.jsonl",
        audit_key=audit_key,
    )
    app = await started(settings, idp)
    headers = {"Authorization": f"Bearer {token_for('order-writer')}"}
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
            body, key = order(), secrets.token_hex(8)
            first = await http.post(
                "/v1/orders", json=body, headers={**headers, "Idempotency-Key": key}
            )
            assert first.status_code == 200, first.text
            assert first.json()["rows"] == [{"OrderId": body["order_id"], "CustomerId": "***"}]
            spent = await http.post("/v1/orders", json=order(), headers=headers)
            assert spent.status_code == 429, spent.text  # the day's write is spent
            retried = await http.post(
                "/v1/orders", json=body, headers={**headers, "Idempotency-Key": key}
            )
            assert retried.status_code == 200, retried.text
            assert retried.json()["rows"] == first.json()["rows"]  # masked, not C-1
            assert "C-1" not in retried.text
    finally:
        await app.shutdown()


async def test_readyz_reports_the_budget_store(
    writer_gateway: Gateway, token_for: Callable[..., str]
) -> None:
    transport = httpx.ASGITransport(app=writer_gateway)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
        ready = await http.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["budgets"] == {
        "store": "memory",
        "reachable": True,
        "last_error": None,
        "keyed": True,
        "warning": None,
    }


async def test_an_unreachable_redis_is_reported_but_stays_ready(
    tmp_path: Path, demo_database: str, idp: IdpProcess, token_for: Callable[..., str]
) -> None:
    """Redis is shared by every replica: were it part of readiness, a Redis outage would take
    every replica out of the Service at once, unbudgeted routes with it, and clients would get
    connection errors instead of 503 with Retry-After. /readyz says what it saw of Redis (and
    that an unkeyed one is readable) and stays 200; budgeted calls are refused, others served."""
    settings = Settings(
        policy=policy(tmp_path, "budgets:\n  order-agent: {calls: 5/day}", redact=False),
        spanner_emulator_host=demo_database,
        audit_path=tmp_path / "audit.jsonl",
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        redis_timeout_seconds=0.5,
    )
    app = await started(settings, idp)
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
            refused = await http.get(
                "/v1/orders/O-1001", headers={"Authorization": f"Bearer {token_for('order-agent')}"}
            )
            served = await http.get(
                "/v1/orders/O-1001",
                headers={"Authorization": f"Bearer {token_for('support-console')}"},
            )
            ready = await http.get("/readyz")
            metrics = (await http.get("/metrics")).text
        assert refused.status_code == 503, refused.text
        assert refused.json()["code"] == "budget-store-unavailable"
        assert refused.headers["Retry-After"] == "1"
        assert served.status_code == 200, served.text  # no budget: Redis is not asked
        assert ready.status_code == 200, ready.text
        body = ready.json()
        assert body["status"] == "ready" and body["databases_warmed"] is True
        budgets = body["budgets"]
        assert (budgets["store"], budgets["reachable"], budgets["keyed"]) == ("redis", False, False)
        assert isinstance(budgets["last_error"], str) and budgets["last_error"]
        assert budgets["warning"] == UNKEYED_WARNING
        assert "spangate_ready 1.0" in metrics.splitlines()
    finally:
        await app.shutdown()
