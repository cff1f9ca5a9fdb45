"""Budgets end to end: real ``spangate serve`` processes (the example policy with test budgets),
the real OpenID provider, the emulator, and a real redis-server shared by two gateways. Windows
are a day long, so no test straddles one (a day's boundary is midnight UTC)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import redis as redis_sync
from served import EXAMPLE_POLICY, Served, served
from test_mcp_live import connected

from gateway.audit.schema import AuditEvent
from gateway.dev.idp import IdpProcess
from gateway.dev.ports import free_port
from gateway.dev.redis import RedisProcess

ORDER = "/v1/orders/O-1001"


def budgeted(folder: Path, budgets: str, *, extra_role: str = "") -> Path:
    """The example policy with ``budgets`` instead of its own (and a second agent role)."""
    text = EXAMPLE_POLICY.read_text()
    start, end = text.index("\nbudgets:"), text.index("\naudit:")
    text = text[:start] + "\n" + budgets.rstrip() + "\n" + text[end:]
    if extra_role:
        text = text.replace("\nqueries:\n", f"\n  {extra_role}:\n    - issuer: okta\n"
                            "      scopes: [orders.read]\n\nqueries:\n", 1)  # fmt: skip
        text = text.replace(
            "allow: [support, order-agent, agent-for-support]",
            f"allow: [support, order-agent, agent-for-support, {extra_role}]",
        )
    path = folder / "policy.yaml"
    path.write_text(text)
    return path


def get(server: Served, path: str, token: str, **params: Any) -> httpx.Response:
    return httpx.get(
        server.base + path,
        params=params,
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )


def options(demo_database: str, idp: IdpProcess, audit_key: str) -> dict[str, Any]:
    return {"database": demo_database, "issuer": idp.issuer, "audit_key": audit_key}


async def test_http_and_mcp_spend_one_budget_and_the_next_call_is_429(
    tmp_path: Path, demo_database: str, idp: IdpProcess, audit_key: str,
    token_for: Callable[..., str],
) -> None:  # fmt: skip
    policy = budgeted(tmp_path, "budgets:\n  order-agent: {calls: 3/day}")
    agent = token_for("order-agent")
    with served(tmp_path, policy=policy, **options(demo_database, idp, audit_key)) as gw:
        for left in (2, 1):
            answer = get(gw, ORDER, agent)
            assert answer.status_code == 200, answer.text
            assert answer.headers["RateLimit-Policy"] == '"calls";q=3;w=86400'
            assert answer.headers["RateLimit"].startswith(f'"calls";r={left};t=')
        async with connected(gw.base, agent, "legacy") as client:
            spent = await client.call_tool("get_order", {"order_id": "O-1001"})
            assert spent.is_error is False  # the third call: over MCP
            refused = await client.call_tool("get_order", {"order_id": "O-1001"})
        assert refused.is_error is True
        problem = refused.structured_content
        assert problem is not None
        assert (problem["status"], problem["code"]) == (429, "budget-exceeded")
        assert (problem["budget"], problem["role"], problem["limit"]) == (
            "calls", "order-agent", "3/day"
        )  # fmt: skip
        answer = get(gw, ORDER, agent)
        assert answer.status_code == 429, answer.text
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.json()["code"] == "budget-exceeded"
        assert 0 < int(answer.headers["Retry-After"]) <= 86_400
        assert answer.headers["RateLimit-Policy"] == '"calls";q=3;w=86400'
        assert answer.headers["RateLimit"].startswith('"calls";r=0;t=')
        [event] = gw.events(answer.headers["x-request-id"])
        AuditEvent.model_validate(event)  # the published schema: metadata.budget
        payload = event["protoPayload"]
        assert payload["status"]["message"] == "budget-exceeded"
        assert payload["metadata"]["budget"] == {
            "budget": "calls", "role": "order-agent", "limit": "3/day"
        }  # fmt: skip
        # another caller, without a budget: no RateLimit fields, never refused
        support = get(gw, ORDER, token_for("support-console"))
        assert support.status_code == 200 and "RateLimit" not in support.headers
        metrics = httpx.get(gw.base + "/metrics", timeout=10).text
        assert 'spangate_budget_refusals_total{budget="calls",role="order-agent"} 2.0' in (
            metrics.splitlines()
        )


def test_rows_are_counted_after_and_the_most_generous_role_applies(
    tmp_path: Path, demo_database: str, idp: IdpProcess, audit_key: str,
    token_for: Callable[..., str],
) -> None:  # fmt: skip
    policy = budgeted(
        tmp_path,
        "budgets:\n  order-agent: {calls: 1/day, rows: 2/day}\n"
        "  agent-plus: {calls: 5/day, rows: 3/day}",
        extra_role="agent-plus",
    )
    agent = token_for("order-agent")  # holds order-agent and agent-plus
    with served(tmp_path, policy=policy, **options(demo_database, idp, audit_key)) as gw:
        first = get(gw, "/v1/orders", agent, limit=2)
        assert first.status_code == 200, first.text
        assert first.json()["row_count"] == 2
        assert first.headers["RateLimit-Policy"] == '"calls";q=5;w=86400, "rows";q=3;w=86400'
        assert '"rows";r=1;' in first.headers["RateLimit"]
        crossing = get(gw, "/v1/orders", agent, limit=2)  # 4 rows of 3: answered all the same
        assert crossing.status_code == 200, crossing.text
        assert crossing.json()["row_count"] == 2
        assert '"rows";r=0;' in crossing.headers["RateLimit"]
        refused = get(gw, "/v1/orders", agent, limit=2)
        assert refused.status_code == 429, refused.text
        assert (refused.json()["budget"], refused.json()["role"]) == ("rows", "agent-plus")
        [event] = gw.events(refused.headers["x-request-id"])
        assert event["protoPayload"]["metadata"]["budget"]["budget"] == "rows"


def test_an_unreachable_redis_is_503_never_a_free_pass(
    tmp_path: Path, demo_database: str, idp: IdpProcess, audit_key: str,
    token_for: Callable[..., str],
) -> None:  # fmt: skip
    policy = budgeted(tmp_path, "budgets:\n  order-agent: {calls: 3/day}")
    nobody = f"redis://127.0.0.1:{free_port()}/0"
    env = {"SPANGATE_REDIS_URL": nobody, "SPANGATE_REDIS_TIMEOUT_SECONDS": "0.5"}
    with served(
        tmp_path, policy=policy, env=env, **options(demo_database, idp, audit_key)
    ) as gw:
        answer = get(gw, ORDER, token_for("order-agent"))
        assert answer.status_code == 503, answer.text
        assert answer.json()["code"] == "budget-store-unavailable"
        assert answer.headers["Retry-After"] == "1"
        [event] = gw.events(answer.headers["x-request-id"])
        assert event["protoPayload"]["response"] is None  # the statement did not run
        # a call without a budget does not need the store
        assert get(gw, ORDER, token_for("support-console")).status_code == 200


def test_two_gateways_on_one_redis_share_one_budget(
    tmp_path: Path, demo_database: str, idp: IdpProcess, audit_key: str,
    token_for: Callable[..., str], redis_server: RedisProcess,
) -> None:  # fmt: skip
    redis_sync.Redis.from_url(redis_server.url).flushdb()
    policy = budgeted(tmp_path, "budgets:\n  order-agent: {calls: 3/day}")
    env = {"SPANGATE_REDIS_URL": redis_server.url}
    agent = token_for("order-agent")
    common = options(demo_database, idp, audit_key)
    with (
        served(tmp_path, policy=policy, env=env, **common) as one,
        served(tmp_path, policy=policy, env=env, **common) as two,
    ):
        assert [get(gw, ORDER, agent).status_code for gw in (one, two, one)] == [200, 200, 200]
        fourth = get(two, ORDER, agent)  # the N+1st across both
        assert fourth.status_code == 429, fourth.text
        assert fourth.headers["RateLimit"].startswith('"calls";r=0;')
        assert get(one, ORDER, agent).status_code == 429
    keys = redis_sync.Redis.from_url(redis_server.url).keys("spangate:budget:v1:*")
    assert len(keys) == 1 and redis_sync.Redis.from_url(redis_server.url).ttl(keys[0]) > 0
