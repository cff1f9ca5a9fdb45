"""One event per request, whatever happened, in the Cloud Audit Logs shape of the published schema.

Through the real app on the emulator with real tokens. 429 has no producer in the gateway yet
(no rate limits), so it is not in the table.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import read_events, request_id, update_ddl

from gateway.audit.schema import AuditEvent, render
from gateway.settings import Settings

Token = Callable[..., str]
REPO = Path(__file__).resolve().parents[2]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# (name, persona, method, path, body, status, code, statement ran, query)
CASES: list[tuple[str, str | None, str, str, Any, int, str, bool, str | None]] = [
    ("read", "support-console", "GET", "/v1/orders/O-1001", None, 200, "ok", True, "get_order"),
    ("write", "order-writer", "POST", "/v1/orders", "new", 200, "ok", True, "create_order"),
    ("bad parameter", "support-console", "GET", "/v1/orders/O-1001?colour=red", None, 400,
     "param-unknown", False, "get_order"),
    ("no token", None, "GET", "/v1/orders/O-1001", None, 401, "token-missing", False, None),
    ("no role", "outsider", "GET", "/v1/orders/O-1001", None, 403, "no-allow-role", False,
     "get_order"),
    ("no route", "support-console", "GET", "/v1/nowhere", None, 404, "no-route", False, None),
    ("wrong method", "support-console", "DELETE", "/v1/orders", None, 405,
     "method-not-allowed", False, None),
    ("duplicate", "order-writer", "POST", "/v1/orders", "O-1001", 409, "conflict", True,
     "create_order"),
    ("body too large", "order-writer", "POST", "/v1/orders", "x" * 5000, 413, "body-too-large",
     False, None),
    ("not json", "order-writer", "POST", "/v1/orders", b"a=b", 415, "unsupported-media-type",
     False, None),
    ("schema changed", "support-console", "GET", "/v1/notes", None, 500, "statement-invalid",
     True, "scratch_notes"),
    ("deadline", "support-console", "GET", "/v1/slow-report", None, 504, "timeout", True,
     "slow_report"),
]  # fmt: skip


def _send(http: httpx.AsyncClient, token_for: Token, case: tuple[Any, ...]) -> Any:
    _, persona, method, path, body, *_ = case
    headers = bearer(token_for(persona)) if persona else {}
    headers["User-Agent"] = "audit-test/1"
    if body is None:
        return http.request(method, path, headers=headers)
    if isinstance(body, bytes):
        headers["Content-Type"] = "application/x-www-form-urlencoded"
        return http.request(method, path, headers=headers, content=body)
    if isinstance(body, str) and body.startswith("x"):
        headers["Content-Type"] = "application/json"
        return http.request(method, path, headers=headers, content=json.dumps({"pad": body}))
    order = f"O-{time.time_ns() % 10**12}" if body == "new" else body
    return http.request(
        method, path, headers=headers,
        json={"order_id": order, "customer_id": "C-1", "total_cents": 777, "tenant": "t2"},
    )  # fmt: skip


async def test_every_status_gives_exactly_one_event_with_the_right_fields(
    make_settings: Callable[..., Settings],
    serve: Any,
    token_for: Token,
    audit_file: Path,
    scratch: str,
) -> None:
    responses = []
    async with serve(make_settings()) as (_, http):
        for case in CASES:
            if case[0] == "schema changed":  # the table the query reads is dropped under it
                await asyncio.to_thread(update_ddl, scratch, ["DROP TABLE Scratch"])
            response = await _send(http, token_for, case)
            assert response.status_code == case[5], (case[0], response.text)
            responses.append(response)
    events = read_events(audit_file)
    assert len(events) == len(CASES)  # exactly one each: nothing more, nothing less
    tokens = [token_for(p) for p in ("support-console", "order-writer", "outsider")]
    for case, response, event in zip(CASES, responses, events, strict=True):
        name, persona, method, path, _, status, code, ran, query = case
        assert request_id(event) == response.headers["x-request-id"], name
        AuditEvent.model_validate(event)  # strict: the published schema's shape exactly
        payload = event["protoPayload"]
        assert event["httpRequest"]["status"] == status, name
        assert event["httpRequest"]["requestMethod"] == method
        assert event["httpRequest"]["requestUrl"] == path.split("?")[0]
        assert event["httpRequest"]["remoteIp"] == "203.0.113.9"
        assert event["httpRequest"]["userAgent"] == "audit-test/1"
        assert event["severity"] == ("INFO" if status < 400 else "WARNING" if status < 500
                                     else "ERROR")  # fmt: skip
        assert payload["status"]["message"] == code, name
        assert payload["methodName"] == query, name
        assert payload["resourceName"] == "projects/demo-project/instances/demo/databases/audit"
        decision = payload["metadata"]["decision"]
        assert decision["allow"] is (status not in (400, 401, 403, 404, 405, 413, 415)), name
        if persona is None:
            assert payload["authenticationInfo"] is None
        else:
            assert payload["authenticationInfo"]["principalSubject"] == persona
            assert payload["authenticationInfo"]["thirdPartyPrincipal"]["clientId"] == persona
        assert (payload["response"] is not None) is ran, name
        if query is not None:
            assert payload["request"]["query"] == query
        raw = json.dumps(event)
        assert not any(t[:40] in raw for t in tokens), f"{name}: the token is in the event"
    read, write, _, _, denied, *_ = events
    assert read["protoPayload"]["request"]["params"] == {
        "tenant": {"value": "t1", "from": "claim"},
        "order_id": {"value": "O-1001", "from": "caller"},
    }
    assert read["protoPayload"]["response"] == {
        "rowCount": 1, "truncated": False, "commitTimestamp": None, "spannerCode": None,
    }  # fmt: skip
    assert read["protoPayload"]["metadata"]["decision"]["rule"] == "support"
    assert "support" in read["protoPayload"]["metadata"]["decision"]["roles"]
    statement = write["protoPayload"]["request"]
    assert statement["databaseRole"] == "shop_writer" and statement["identity"] == "shop_writer"
    assert statement["params"]["total_cents"]["value"].startswith("redacted:hmac-sha256:")
    assert statement["ignoredCallerValues"] == {"tenant": "t2"}  # claim-bound: ignored, recorded
    assert write["protoPayload"]["response"]["commitTimestamp"].endswith("Z")
    assert write["protoPayload"]["request"]["requestTag"].startswith(request_id(write))
    assert denied["protoPayload"]["authorizationInfo"] == [
        {"resource": "GET /v1/orders/{order_id}", "permission": "get_order", "granted": False}
    ]
    conflict = events[7]["protoPayload"]["response"]
    assert conflict["spannerCode"] == "ALREADY_EXISTS" and conflict["rowCount"] is None
    assert events[10]["protoPayload"]["response"]["spannerCode"] == "INVALID_ARGUMENT"


async def test_a_crash_half_way_still_gives_one_event(
    make_settings: Callable[..., Settings], serve: Any, token_for: Token, audit_file: Path
) -> None:
    async with serve(make_settings()) as (gateway, http):
        await gateway.executor.aclose()  # a request racing the shutdown: the sessions are gone
        response = await http.get("/v1/orders/O-1001", headers=bearer(token_for("support-console")))
    assert response.status_code == 500 and response.json()["code"] == "internal"
    (event,) = read_events(audit_file)
    AuditEvent.model_validate(event)
    assert request_id(event) == response.headers["x-request-id"]
    assert event["protoPayload"]["status"] == {"code": 13, "message": "internal"}
    assert event["protoPayload"]["metadata"]["decision"]["allow"] is True  # it got that far


async def test_client_address_through_trusted_proxies_only_and_the_trace(
    make_settings: Callable[..., Settings], serve: Any, token_for: Token, audit_file: Path
) -> None:
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    headers = {
        **bearer(token_for("support-console")),
        "X-Forwarded-For": "6.6.6.6, 198.51.100.4",  # the left part is the caller's own claim
        "traceparent": f"00-{trace}-00f067aa0ba902b7-01",
    }
    async with serve(make_settings(trusted_proxies="203.0.113.0/24")) as (_, http):
        await http.get("/v1/orders/O-1001", headers=headers)
    async with serve(make_settings()) as (_, http):  # nobody trusted: the peer is the client
        await http.get("/v1/orders/O-1001", headers=headers)
    proxied, direct = read_events(audit_file)
    assert proxied["httpRequest"]["remoteIp"] == "198.51.100.4"
    assert proxied["protoPayload"]["requestMetadata"]["callerIp"] == "198.51.100.4"
    assert direct["httpRequest"]["remoteIp"] == "203.0.113.9"
    assert (proxied["trace"], proxied["spanId"]) == (trace, "00f067aa0ba902b7")


def test_the_published_schema_is_current() -> None:
    assert (REPO / "policies" / "audit-event.schema.json").read_text() == render(), (
        "run: python -m gateway.audit.schema > policies/audit-event.schema.json"
    )


def test_the_schema_refuses_what_is_not_an_event() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        AuditEvent.model_validate({"insertId": "x"})


async def test_a_request_the_server_cancels_still_gives_one_event(
    make_settings: Callable[..., Settings], serve: Any, token_for: Token, audit_file: Path
) -> None:
    headers = {**bearer(token_for("support-console")), "X-Request-ID": "cancel-me"}
    async with serve(make_settings()) as (_, http):
        started = time.perf_counter()
        with pytest.raises(TimeoutError):  # the ASGI app runs in this task: it is cancelled
            await asyncio.wait_for(http.get("/v1/crawl", headers=headers), timeout=0.3)
        assert time.perf_counter() - started < 5  # cancelled, not run to the end
    (event,) = read_events(audit_file)  # shutdown flushed the event queued on cancellation
    assert request_id(event) == "cancel-me"
    assert event["httpRequest"]["status"] == 499
    assert event["protoPayload"]["status"] == {"code": 1, "message": "cancelled"}
    assert event["protoPayload"]["request"]["query"] == "crawl"
    AuditEvent.model_validate(event)
