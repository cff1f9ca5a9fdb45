"""Pagination in the request path, pure: the digest of the other parameters, what the statement
runs with, the page cut from one row more, the next cursor sealed from the page's last row and
opened into typed values for each keyset type, what cannot be sealed, the audit event's record,
and the OpenAPI and MCP schemas of a paginated route."""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import re
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.audit.event import CallRecord, build_event
from gateway.audit.schema import AuditEvent
from gateway.errors import CursorRefused
from gateway.mcp.tools import input_schema
from gateway.openapi import openapi_document
from gateway.policy.compiled import compile_policy
from gateway.policy.decide import decide
from gateway.policy.load import load_policy, load_policy_data
from gateway.policy.simulate import principal_for, request_facts
from gateway.policy.types import SpannerTimestamp
from gateway.shaping.cursors import CursorKeys, CursorNotOpened
from gateway.shaping.paging import (
    PageFailed,
    cut_page,
    next_cursor,
    open_page,
    params_digest,
    run_values,
)
from gateway.spanner.results import Result

REPO = Path(__file__).resolve().parents[2]
POLICY = compile_policy(load_policy(REPO / "policy.example.yaml", env={}))
QUERY = POLICY.queries["list_orders"]
PAGING = QUERY.paging
assert PAGING is not None
KEYS = CursorKeys.from_bytes([b"k" * 32])
NOW = 1_800_000_000.0
SUPPORT = principal_for(POLICY.model, {"iss": "okta", "sub": "alice", "groups": ["support"],
                                       "tenant": "t1"})  # fmt: skip
ROW = {"OrderId": "O-1003", "CustomerId": "C-1", "Status": "SHIPPED", "TotalCents": 11795,
       "Currency": "USD", "CreatedAt": "2026-02-05T16:40:00.123456789Z"}  # fmt: skip


def bound(target: str, principal: Any = SUPPORT) -> dict[str, Any]:
    decision = decide(POLICY, request_facts(target), principal)
    assert decision.allow and decision.bound is not None
    return decision.bound.values


def test_the_digest_covers_every_parameter_but_the_page_size_and_the_cursors() -> None:
    first = params_digest(bound("GET /v1/orders?limit=2"), PAGING)
    assert params_digest(bound("GET /v1/orders?limit=50"), PAGING) == first
    opened = {**bound("GET /v1/orders"), "after_created": "x", "after_order": "y"}
    assert params_digest(opened, PAGING) == first
    assert params_digest(bound("GET /v1/orders?status=PAID"), PAGING) != first
    assert params_digest(bound("GET /v1/orders?min_total_cents=0"), PAGING) == first  # default
    other = principal_for(POLICY.model, {"iss": "okta", "sub": "alice", "groups": ["support"],
                                         "tenant": "t2"})  # fmt: skip
    assert params_digest(bound("GET /v1/orders", other), PAGING) != first  # a claim counts


def test_the_statement_reads_one_row_past_the_page() -> None:
    values = bound("GET /v1/orders?limit=2")
    assert run_values(values, PAGING, None) == {**values, "limit": 3}
    opened = {"after_created": "a", "after_order": "b"}
    assert run_values(values, PAGING, opened) == {**values, **opened, "limit": 3}
    assert values["limit"] == 2  # the decision's values are left as they were


def test_a_page_is_cut_from_the_row_more() -> None:
    rows = [{"OrderId": f"O-{n}"} for n in range(3)]
    page, more = cut_page(Result(columns=["OrderId"], rows=rows, row_count=3), 2)
    assert (page.rows, page.row_count, more) == (rows[:2], 2, True)
    page, more = cut_page(Result(columns=["OrderId"], rows=rows[:2], row_count=2), 2)
    assert (page.rows, more) == (rows[:2], False)


def test_a_cursor_opens_into_the_typed_values_of_the_last_row() -> None:
    values = bound("GET /v1/orders?limit=1")
    token = next_cursor(KEYS, QUERY, PAGING, values, SUPPORT, ROW, now=NOW, ttl_seconds=60)
    opened = open_page(KEYS, QUERY, PAGING, values, SUPPORT, token, now=NOW + 59)
    assert opened == {
        "after_created": SpannerTimestamp(
            dt.datetime(2026, 2, 5, 16, 40, 0, 123456, tzinfo=dt.UTC), 123456789
        ),
        "after_order": "O-1003",
    }
    with pytest.raises(CursorNotOpened, match="expired"):
        open_page(KEYS, QUERY, PAGING, values, SUPPORT, token, now=NOW + 60)
    agent = principal_for(POLICY.model, {"iss": "okta", "sub": "alice", "groups": ["support"],
                                         "tenant": "t1", "act": {"sub": "order-agent"}})  # fmt: skip
    with pytest.raises(CursorNotOpened, match="unauthentic"):  # the person, through an agent
        open_page(KEYS, QUERY, PAGING, values, agent, token, now=NOW)


def _typed_policy(kind: str) -> Any:
    data = {
        "version": 1,
        "spanner": {"project": "p", "instance": "i", "database": "d"},
        "issuers": {"okta": {"issuer": "https://idp.example/o", "audience": "api"}},
        "identities": {"reader": {}},
        "roles": {"anyone": [{"authenticated": True}]},
        "queries": {"q": {
            "identity": "reader",
            "sql": "SELECT k, id FROM t WHERE (@k IS NULL OR k > @k OR (k = @k AND id > @i)) "
                   "ORDER BY k, id LIMIT @n",
            "params": {"k": {"type": kind, "from": "cursor.k"},
                       "i": {"type": "INT64", "from": "cursor.id"},
                       "n": {"type": "INT64", "from": "page_size"}},
            "pagination": {"keyset": ["k", "id"], "page_size": {"default": 1, "max": 5}},
        }},
        "routes": [{"path": "/q", "method": "GET", "query": "q", "allow": ["anyone"]}],
    }  # fmt: skip
    return compile_policy(load_policy_data(data, base_dir=REPO))


@pytest.mark.parametrize(
    ("kind", "answered", "typed"),
    [
        ("STRING", "caf\u00e9", "caf\u00e9"),
        ("INT64", 2**63 - 1, 2**63 - 1),
        ("TIMESTAMP", "0001-01-01T00:00:00.000000001Z",
         SpannerTimestamp(dt.datetime(1, 1, 1, tzinfo=dt.UTC), 1)),
        ("DATE", "9999-12-31", dt.date(9999, 12, 31)),
        ("NUMERIC", "-99999999999999999999999999999.999999999",
         decimal.Decimal("-99999999999999999999999999999.999999999")),
        ("BYTES", "AP8=", b"\x00\xff"),
        ("BOOL", False, False),
        ("FLOAT64", 0.1, 0.1),
        ("FLOAT64", "-Infinity", float("-inf")),
        ("FLOAT64", -0.0, -0.0),
    ],
)  # fmt: skip
def test_every_keyset_type_binds_back_exactly(kind: str, answered: Any, typed: Any) -> None:
    policy = _typed_policy(kind)
    query = policy.queries["q"]
    assert query.paging is not None
    principal = principal_for(policy.model, {"iss": "okta", "sub": "bob"})
    values = decide(policy, request_facts("GET /q"), principal).bound.values  # type: ignore[union-attr]
    row = {"k": answered, "id": 7}
    token = next_cursor(KEYS, query, query.paging, values, principal, row, now=NOW, ttl_seconds=1)
    opened = open_page(KEYS, query, query.paging, values, principal, token, now=NOW)
    assert opened == {"k": typed, "i": 7}
    assert type(opened["k"]) is type(typed)
    if isinstance(typed, float):
        assert str(opened["k"]) == str(typed)  # -0.0 stays -0.0


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({**ROW, "OrderId": None}, "keyset column OrderId is NULL (or absent) in the page's last row"),
        ({k: v for k, v in ROW.items() if k != "CreatedAt"}, "keyset column CreatedAt is NULL"),
        ({**ROW, "CreatedAt": "not a time"}, "keyset column CreatedAt's value is not a TIMESTAMP"),
        ({**ROW, "OrderId": "O-" + "9" * 5000}, "the next cursor cannot be sealed: the cursor "
         "would be"),
    ],
)  # fmt: skip
def test_what_cannot_be_carried_fails_naming_the_column_never_the_value(
    row: dict[str, Any], message: str
) -> None:
    with pytest.raises(PageFailed, match=re.escape(message)) as caught:
        next_cursor(KEYS, QUERY, PAGING, bound("GET /v1/orders"), SUPPORT, row, now=NOW,
                    ttl_seconds=60)  # fmt: skip
    assert "not a time" not in str(caught.value) and "9999" not in str(caught.value)


def test_a_refusal_says_nothing_of_the_cursor() -> None:
    invalid, expired = CursorRefused("unauthentic"), CursorRefused("expired")
    assert (invalid.status, invalid.code, expired.code) == (400, "cursor-invalid", "cursor-expired")
    assert invalid.reason == "unauthentic" and "unauthentic" not in invalid.detail
    assert CursorRefused("params").detail == invalid.detail == CursorRefused("malformed").detail


# --- the audit event -------------------------------------------------------------------------------


def _event(target: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    decision = decide(POLICY, request_facts(target), SUPPORT)
    call = CallRecord(request_id="r1", method="GET", path="/v1/orders", started=time.perf_counter(),
                      client=None, user_agent=None, principal=SUPPORT, decision=decision,
                      status=200 if decision.allow else 400)  # fmt: skip
    if extra is not None:
        call.extra["pagination"] = extra
    event = build_event(call, POLICY, key=b"k" * 32)
    sealed = {**event, "chain": "0" * 16, "seq": 1, "prev": "0" * 64, "hash": "0" * 64}
    AuditEvent.model_validate(sealed)  # the published schema, strictly
    return event["protoPayload"]


def test_the_audit_event_records_the_cursor_never_its_content() -> None:
    record = {"cursor": "refused", "refused": "params", "pageSize": 2, "nextCursor": False}
    payload = _event("GET /v1/orders?limit=2&cursor=SECRET-CURSOR", record)
    assert payload["metadata"]["pagination"] == record
    assert payload["request"]["params"]["after_created"] == {"from": "cursor", "value": None}
    assert payload["request"]["params"]["limit"] == {
        "from": "caller",
        "value": 2,
        "sent": "2",  # as the query string carried it (replay re-checks it: docs/policy/rollout.md)
        "text": True,
    }
    assert "SECRET-CURSOR" not in repr(payload)
    assert _event("GET /v1/orders?limit=x&cursor=c")["metadata"]["pagination"] == {
        "cursor": "not-checked", "pageSize": None, "nextCursor": False
    }  # fmt: skip
    assert _event("GET /v1/orders?limit=x")["metadata"]["pagination"]["cursor"] == "none"
    assert "pagination" not in _event("GET /v1/orders/O-1")["metadata"]


# --- OpenAPI and MCP -------------------------------------------------------------------------------


def test_openapi_and_the_mcp_tool_show_cursor_and_next_cursor_never_the_cursor_parameters() -> None:
    doc = openapi_document(POLICY, version="test")
    listing = doc["paths"]["/v1/orders"]["get"]
    params = {p["name"]: p for p in listing["parameters"]}
    assert set(params) == {"status", "min_total_cents", "limit", "cursor"}
    assert params["cursor"]["schema"]["maxLength"] == 4096 and not params["cursor"]["required"]
    assert params["limit"]["schema"] == {"type": "integer", "format": "int64", "minimum": 1,
                                         "maximum": 100, "default": 20}  # fmt: skip
    ok = listing["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok["properties"]["next_cursor"]["type"] == "string"
    assert ok["required"] == ["rows", "row_count", "truncated"]
    assert "next_cursor" not in doc["paths"]["/v1/orders/{order_id}"]["get"]["responses"]["200"][
        "content"]["application/json"]["schema"]["properties"]  # fmt: skip
    route = next(r for r in POLICY.routes if r.query_name == "list_orders")
    schema = input_schema(route)
    assert set(schema["properties"]) == {"status", "min_total_cents", "limit", "cursor"}
    assert schema["properties"]["cursor"]["type"] == ["string", "null"]
    assert "required" not in schema
    body_route = dataclasses.replace(route, model=route.model.model_copy(update={"method": "POST"}))
    assert "cursor" in input_schema(body_route)["properties"]
