"""Delegation end to end: a real ``spangate serve`` on the example policy, the real OpenID
provider's RFC 8693 token exchange and the real emulator. An agent that exchanged a support
person's token must not take the person's roles: it reads orders (the example's
``agent-for-support``: what both may do), never customers ("people only")."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from served import Served

from gateway.dev.idp import IdpProcess, exchange_token


@pytest.fixture(scope="module")
def served(example_server: Served) -> tuple[str, Path]:
    return example_server.base, example_server.audit


@pytest.fixture(scope="module")
def exchange(idp: IdpProcess, personas: dict[str, dict[str, Any]]) -> Callable[..., str]:
    """``exchange(subject_token, scope=...)``: the order agent's RFC 8693 token exchange at the
    real provider: a token for the subject carrying ``act: {sub: order-agent}``."""
    secret = str(personas["order-agent"]["client_secret"])

    def run(subject_token: str, **params: Any) -> str:
        return exchange_token(idp.issuer, "order-agent", secret, subject_token, **params)

    return run


def get(base: str, path: str, token: str) -> httpx.Response:
    return httpx.get(f"{base}{path}", headers={"Authorization": f"Bearer {token}"}, timeout=30)


def event_of(audit: Path, response: httpx.Response) -> dict[str, Any]:
    request_id = response.headers["x-request-id"]
    for line in audit.read_text().splitlines():
        event: dict[str, Any] = json.loads(line)
        payload = event["protoPayload"]
        if payload["requestMetadata"]["requestAttributes"]["id"] == request_id:
            return payload
    raise AssertionError(f"no audit event for {request_id}")


def problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["code"] == code, body
    return body


def test_an_agent_acting_for_support_reads_orders_never_customers(
    served: tuple[str, Path], exchange: Callable[..., str], token_for: Callable[..., str]
) -> None:
    base, audit = served
    person = token_for("support-console")
    assert get(base, "/v1/customers/C-1", person).status_code == 200  # people still may
    agent = exchange(person, scope="orders.read")

    customers = get(base, "/v1/customers/C-1", agent)
    problem(customers, 403, "no-allow-role")
    event = event_of(audit, customers)
    authn = event["authenticationInfo"]
    assert authn["principalSubject"] == "support-console"
    assert authn["serviceAccountDelegationInfo"] == [{"principalSubject": "order-agent"}]
    decision = event["metadata"]["decision"]
    assert (decision["allow"], decision["reason"]) == (False, "no-allow-role")
    assert decision["roles"] == ["agent-for-support"]  # not support: the person's role

    orders = get(base, "/v1/orders/O-1001", agent)
    assert orders.status_code == 200, orders.text
    assert orders.json()["rows"][0]["OrderId"] == "O-1001"
    allowed = event_of(audit, orders)["metadata"]["decision"]
    assert (allowed["allow"], allowed["rule"]) == (True, "agent-for-support")


def test_delegation_without_what_both_may_do_gets_nothing(
    served: tuple[str, Path], exchange: Callable[..., str], token_for: Callable[..., str]
) -> None:
    base, audit = served
    # the agent acting for a support person without the read scope: neither may it read orders
    unscoped = exchange(token_for("support-console"))
    problem(get(base, "/v1/orders/O-1001", unscoped), 403, "no-allow-role")
    # the agent acting for someone outside support: its own scope is not enough
    outsider = exchange(token_for("outsider"), scope="orders.read")
    problem(get(base, "/v1/orders", outsider), 403, "no-allow-role")
    # the agent acting for a suspended support person: the deny role bites the agent too
    suspended = exchange(token_for("suspended-support"), scope="orders.read")
    denied = get(base, "/v1/orders/O-1001", suspended)
    problem(denied, 403, "denied-by-role")
    event = event_of(audit, denied)
    assert event["metadata"]["decision"]["rule"] == "suspended"
    assert event["authenticationInfo"]["serviceAccountDelegationInfo"] == [
        {"principalSubject": "order-agent"}
    ]
