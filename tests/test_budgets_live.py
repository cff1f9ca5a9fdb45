"""Budgets end to end: real ``spangate serve`` processes (the example policy with test budgets),
the real OpenID provider, the emulator, and a real redis-server shared by two gateways. Windows
are a day long, so no test straddles one (a day's boundary is midnight UTC)."""

from __future__ import annotations

import hashlib
import hmac
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import redis as redis_sync
from served import EXAMPLE_POLICY, Served, served
from test_mcp_live import connected

from gateway.audit.schema import AuditEvent
from gateway.budgets.core import derive_hash_key
from gateway.dev.idp import IdpProcess, exchange_token
from gateway.dev.ports import free_port
from gateway.dev.redis import RedisProcess, start_redis

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
        # rows are no quota unit of the RateLimit fields: only the calls budget is in them
        assert first.headers["RateLimit-Policy"] == '"calls";q=5;w=86400'
        assert first.headers["RateLimit"].startswith('"calls";r=4;')
        crossing = get(gw, "/v1/orders", agent, limit=2)  # 4 rows of 3: answered all the same
        assert crossing.status_code == 200, crossing.text
        assert crossing.json()["row_count"] == 2
        refused = get(gw, "/v1/orders", agent, limit=2)
        assert refused.status_code == 429, refused.text
        assert (refused.json()["budget"], refused.json()["role"]) == ("rows", "agent-plus")
        assert (refused.json()["limit"], refused.headers["RateLimit-Policy"]) == (
            "3/day", '"calls";q=5;w=86400'
        )  # fmt: skip
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
        tmp_path, policy=policy, env=env, wait="answering", **options(demo_database, idp, audit_key)
    ) as gw:
        ready = httpx.get(gw.base + "/readyz", timeout=30)
        assert ready.status_code == 200, ready.text  # reported; Redis is not part of readiness
        assert (ready.json()["budgets"]["store"], ready.json()["budgets"]["reachable"]) == (
            "redis", False
        )  # fmt: skip
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
    keys = redis_sync.Redis.from_url(redis_server.url).keys("spangate:budget:v2:*")
    assert len(keys) == 1 and redis_sync.Redis.from_url(redis_server.url).ttl(keys[0]) > 0
    # The principal in the key: an HMAC keyed from SPANGATE_AUDIT_KEY, as both replicas made it.
    claims = jwt.decode(agent, options={"verify_signature": False})
    who = f"sub\x1f{claims['iss']}\x1f{claims['sub']}".encode()
    hashed = hmac.new(derive_hash_key(audit_key.encode()) or b"", who, hashlib.sha256)
    assert keys[0].decode().startswith(f"spangate:budget:v2:{{{hashed.hexdigest()[:32]}}}:")


@pytest.fixture(scope="module")
def exchange(idp: IdpProcess, personas: dict[str, dict[str, Any]]) -> Callable[..., str]:
    """``exchange(subject_token)``: the order agent's RFC 8693 token exchange at the real
    provider: a token for the subject (its ``sub``) carrying ``act: {sub: order-agent}``, with
    ``cid`` order-agent and the read scope."""
    secret = str(personas["order-agent"]["client_secret"])

    def run(subject_token: str) -> str:
        return exchange_token(idp.issuer, "order-agent", secret, subject_token, scope="orders.read")

    return run


def test_per_client_one_app_spends_one_budget_whatever_its_subjects(
    tmp_path: Path, demo_database: str, idp: IdpProcess, audit_key: str,
    token_for: Callable[..., str], exchange: Callable[..., str],
) -> None:  # fmt: skip
    """The agent's own token (sub order-agent) and its token for a support person (sub
    support-console) have one client id: per client, one budget."""
    policy = budgeted(tmp_path, "budgets:\n  any-agent: {calls: 2/day, per: client}")
    text = policy.read_text().replace(
        "\nqueries:\n",
        "\n  any-agent:\n    - scopes: [orders.read]\n      delegated: true\n\nqueries:\n",
        1,
    )
    policy.write_text(text.replace(
        "allow: [support, order-agent, agent-for-support]", "allow: [support, any-agent]", 1
    ))  # fmt: skip
    with served(tmp_path, policy=policy, **options(demo_database, idp, audit_key)) as gw:
        direct = get(gw, ORDER, token_for("order-agent"))
        assert direct.status_code == 200, direct.text
        assert direct.headers["RateLimit"].startswith('"calls";r=1;')
        for_person = get(gw, ORDER, exchange(token_for("support-console")))
        assert for_person.status_code == 200, for_person.text
        assert for_person.headers["RateLimit"].startswith('"calls";r=0;')  # the same budget
        refused = get(gw, ORDER, exchange(token_for("support-t2")))  # a third subject
        assert refused.status_code == 429, refused.text
        assert (refused.json()["role"], refused.json()["limit"]) == ("any-agent", "2/day")
        [event] = gw.events(refused.headers["x-request-id"])
        assert event["protoPayload"]["authenticationInfo"]["principalSubject"] == "support-t2"


def test_per_actor_an_agent_acting_for_many_people_spends_one_budget(
    tmp_path: Path, demo_database: str, idp: IdpProcess, audit_key: str,
    token_for: Callable[..., str], exchange: Callable[..., str],
) -> None:  # fmt: skip
    policy = budgeted(tmp_path, "budgets:\n  agent-for-support: {calls: 2/day, per: actor}")
    with served(tmp_path, policy=policy, **options(demo_database, idp, audit_key)) as gw:
        first = get(gw, ORDER, exchange(token_for("support-console")))
        assert first.status_code == 200, first.text
        assert first.headers["RateLimit"].startswith('"calls";r=1;')
        second = get(gw, ORDER, exchange(token_for("support-t2")))  # another person
        assert second.status_code == 200, second.text
        assert second.headers["RateLimit"].startswith('"calls";r=0;')
        again = get(gw, ORDER, exchange(token_for("support-console")))  # its 2nd as a subject
        assert again.status_code == 429, again.text
        assert again.json()["role"] == "agent-for-support"
        # the agent's own token holds order-agent, which has no budget here
        own = get(gw, ORDER, token_for("order-agent"))
        assert own.status_code == 200 and "RateLimit" not in own.headers


def test_a_hung_redis_is_503_within_its_deadline_and_recovers(
    tmp_path: Path, demo_database: str, idp: IdpProcess, audit_key: str,
    token_for: Callable[..., str],
) -> None:  # fmt: skip
    """SIGSTOP the redis-server: connections stay open and nothing answers. Each budgeted call is
    refused at SPANGATE_REDIS_TIMEOUT_SECONDS (503, never a hang, never a free pass); /readyz
    reports Redis unreachable and stays ready (so does spangate_ready), and unbudgeted calls are
    served; after SIGCONT budgeted calls recover."""
    policy = budgeted(tmp_path, "budgets:\n  order-agent: {calls: 100/day}")
    agent = token_for("order-agent")
    with start_redis(log_path=tmp_path / "redis.log") as redis:
        env = {"SPANGATE_REDIS_URL": redis.url, "SPANGATE_REDIS_TIMEOUT_SECONDS": "0.5"}
        common = options(demo_database, idp, audit_key)
        with served(tmp_path, policy=policy, env=env, **common) as gw:
            assert get(gw, ORDER, agent).status_code == 200
            os.kill(redis.pid, signal.SIGSTOP)
            try:
                started = time.monotonic()
                hung = get(gw, ORDER, agent)
                waited = time.monotonic() - started
                ready = httpx.get(gw.base + "/readyz", timeout=30)
                metrics = httpx.get(gw.base + "/metrics", timeout=30).text
                unbudgeted = get(gw, ORDER, token_for("support-console"))
            finally:
                os.kill(redis.pid, signal.SIGCONT)
            assert hung.status_code == 503, hung.text
            assert hung.json()["code"] == "budget-store-unavailable"
            assert waited < 10, waited  # bounded by the 0.5 s deadline, not by httpx's 30 s
            [event] = gw.events(hung.headers["x-request-id"])
            assert event["protoPayload"]["response"] is None  # the statement did not run
            assert ready.status_code == 200, ready.text
            assert ready.json()["budgets"]["reachable"] is False
            assert "Timeout" in ready.json()["budgets"]["last_error"]
            assert "spangate_ready 1.0" in metrics.splitlines()
            assert unbudgeted.status_code == 200, unbudgeted.text
            recovered = get(gw, ORDER, agent)
            assert recovered.status_code == 200, recovered.text
            again = httpx.get(gw.base + "/readyz", timeout=30)
            assert again.status_code == 200, again.text
            assert again.json()["budgets"] == {
                "store": "redis", "reachable": True, "last_error": None, "keyed": True,
                "warning": None,
            }  # fmt: skip
