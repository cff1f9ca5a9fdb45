"""Keyset pagination end to end: real ``spangate serve`` processes on the emulator with the real
OpenID provider. Walking every page of tenant t1's orders gives each order once, in order (ties
on CreatedAt included); a cursor replayed by another principal, with other parameters, for
another query, tampered, cut short, expired, or sealed by a key that was retired is 400 with its
code and audited (never its content); keys rotate across restarts and replicas; a keyset of every
type a cursor carries round-trips exactly through Spanner; MCP tools take ``cursor`` and answer
``next_cursor``; a gateway without cursor keys does not start."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from google.cloud.spanner_v1 import KeySet
from served import EXAMPLE_POLICY, SPANGATE, Served, served
from test_mcp_live import connected

from gateway.audit.schema import AuditEvent
from gateway.dev.database import emulator_client
from gateway.dev.idp import IdpProcess
from gateway.policy.compiled import compile_policy
from gateway.policy.decide import RequestFacts, decide
from gateway.policy.load import load_policy
from gateway.policy.simulate import principal_for
from gateway.shaping.cursors import CursorKeys, CursorState, seal_cursor
from gateway.shaping.paging import binding, params_digest

PROJECT, INSTANCE, DATABASE = "demo-project", "demo", "shop"
K_OLD = base64.urlsafe_b64encode(b"O" * 32).rstrip(b"=").decode()
K_NEW = base64.urlsafe_b64encode(b"N" * 32).rstrip(b"=").decode()

# The example policy with two more paginated queries: t1's orders oldest first (another query
# for a cursor to be replayed on), and rows of every type a keyset may hold, from literals.
TYPES = ("s", "i", "t", "d", "n", "b", "bo", "f")
TYPE_OF = {"s": "STRING", "i": "INT64", "t": "TIMESTAMP", "d": "DATE", "n": "NUMERIC",
           "b": "BYTES", "bo": "BOOL", "f": "FLOAT64"}  # fmt: skip
BASE_ROW = ("'a'", "1", "TIMESTAMP '2026-01-01T00:00:00.123456789Z'", "DATE '2026-01-01'",
            "NUMERIC '1.000000001'", "b'\\x00\\xff'", "false", "0.1")  # fmt: skip
# Row k differs from the base in column 8 - k, upwards: each row sorts after the one before,
# first told apart by a column one further left, so a page boundary falls on every column.
CHANGES = {7: "0.2", 6: "true", 5: "b'\\x01'", 4: "NUMERIC '1.000000002'",
           3: "DATE '2026-01-02'", 2: "TIMESTAMP '2026-01-01T00:00:00.12345679Z'", 1: "2",
           0: "'b'"}  # fmt: skip


def _typed_rows() -> str:
    rows = [BASE_ROW]
    for column in range(7, -1, -1):
        row = list(BASE_ROW)
        row[column] = CHANGES[column]
        rows.append(tuple(row))
    return ",\n        ".join("(" + ", ".join(r) + ")" for r in reversed(rows))  # unsorted


def _after(columns: tuple[str, ...]) -> str:
    """The lexicographic "after the cursor" predicate over ``columns``, nested."""
    head, *rest = columns
    if not rest:
        return f"{head} > @after_{head}"
    return f"({head} > @after_{head} OR ({head} = @after_{head} AND {_after(tuple(rest))}))"


EXTRA_QUERIES = f"""
  list_orders_oldest:
    identity: shop_reader
    sql: |
      SELECT OrderId, CreatedAt FROM Orders
      WHERE TenantId = @tenant AND (@status IS NULL OR Status = @status)
        AND (@after_created IS NULL OR CreatedAt > @after_created
             OR (CreatedAt = @after_created AND OrderId > @after_order))
      ORDER BY CreatedAt ASC, OrderId ASC
      LIMIT @limit
    params:
      tenant: {{type: STRING, from: claim.tenant}}
      status: {{type: STRING, nullable: true}}
      limit: {{type: INT64, from: page_size}}
      after_created: {{type: TIMESTAMP, from: cursor.CreatedAt}}
      after_order: {{type: STRING, from: cursor.OrderId}}
    pagination: {{keyset: [CreatedAt, OrderId], page_size: {{default: 20, max: 100}}}}
  every_type:
    identity: shop_reader
    sql: |
      SELECT {", ".join(TYPES)}
      FROM UNNEST(ARRAY<STRUCT<{", ".join(f"{c} {TYPE_OF[c]}" for c in TYPES)}>>[
        {_typed_rows()}
      ])
      WHERE @tenant IS NOT NULL AND (@after_s IS NULL OR {_after(TYPES)})
      ORDER BY {", ".join(TYPES)}
      LIMIT @limit
    params:
      tenant: {{type: STRING, from: claim.tenant}}
      limit: {{type: INT64, from: page_size}}
{chr(10).join(f"      after_{c}: {{type: {TYPE_OF[c]}, from: cursor.{c}}}" for c in TYPES)}
    pagination: {{keyset: [{", ".join(TYPES)}], page_size: {{default: 1, max: 10}}}}
"""  # noqa: S608 - a test policy made of constants
EXTRA_ROUTES = """
  - {path: /v1/orders-oldest, method: GET, query: list_orders_oldest, allow: [support]}
  - {path: /v1/every-type, method: POST, query: every_type, allow: [support]}
"""


def paged_policy(folder: Path) -> Path:
    text = EXAMPLE_POLICY.read_text()
    text = text.replace("\nroutes:\n", "\n" + EXTRA_QUERIES.rstrip() + "\n\nroutes:\n", 1)
    text = text.replace("\nbudgets:", EXTRA_ROUTES.rstrip() + "\n\nbudgets:", 1)
    path = folder / "policy.yaml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pages")


@pytest.fixture(scope="module")
def server(
    demo_database: str, idp: IdpProcess, folder: Path, audit_key: str
) -> Iterator[Served]:
    """The gateway in the middle of a key rotation: K_NEW seals, K_OLD still opens."""
    with served(
        folder,
        database=demo_database,
        issuer=idp.issuer,
        audit_key=audit_key,
        policy=paged_policy(folder),
        env={"SPANGATE_CURSOR_KEYS": f"{K_NEW},{K_OLD}"},
    ) as gateway:
        yield gateway


def get(base: str, path: str, token: str, params: Any = None) -> httpx.Response:
    return httpx.get(f"{base}{path}", params=params, timeout=30,
                     headers={"Authorization": f"Bearer {token}"})  # fmt: skip


def walk(base: str, token: str, params: dict[str, Any]) -> list[httpx.Response]:
    """Every page, following next_cursor; fails on any answer but 200."""
    pages: list[httpx.Response] = []
    cursor = None
    while True:
        answer = get(base, "/v1/orders", token, {**params, **({"cursor": cursor} if cursor else {})})
        assert answer.status_code == 200, answer.text
        pages.append(answer)
        cursor = answer.json().get("next_cursor")
        if cursor is None:
            return pages
        assert len(pages) < 100, "the walk does not end"


def t1_orders(demo_database: str, status: str | None = None) -> list[str]:
    """Tenant t1's order ids newest first, read from the emulator itself."""
    database = emulator_client(demo_database, project=PROJECT).instance(INSTANCE).database(DATABASE)
    sql = "SELECT OrderId FROM Orders WHERE TenantId = 't1'"
    if status is not None:
        sql += f" AND Status = '{status}'"
    with database.snapshot() as snapshot:
        return [row[0] for row in snapshot.execute_sql(sql + " ORDER BY CreatedAt DESC, OrderId")]


def event(server: Served, request_id: str) -> dict[str, Any]:
    (found,) = server.events(request_id)
    AuditEvent.model_validate(found)  # the published schema, strictly
    return found


@pytest.fixture
def tied_orders(demo_database: str) -> Iterator[list[str]]:
    """Three more orders of t1 created at the same instant (ties on CreatedAt, broken by
    OrderId), deleted again afterwards."""
    database = emulator_client(demo_database, project=PROJECT).instance(INSTANCE).database(DATABASE)
    ids = ["O-PG-3", "O-PG-1", "O-PG-2"]
    at = dt.datetime(2026, 2, 4, 8, 0, 0, 500_000, tzinfo=dt.UTC)
    columns = ("TenantId", "OrderId", "CustomerId", "Status", "TotalCents", "Currency", "CreatedAt")
    with database.batch() as batch:
        batch.insert("Orders", columns, [("t1", i, "C-1", "OPEN", 100, "USD", at) for i in ids])
    try:
        yield sorted(ids)
    finally:
        with database.batch() as batch:
            batch.delete("Orders", KeySet(keys=[["t1", i] for i in ids]))


# --- walking the pages -------------------------------------------------------------------------


@pytest.mark.parametrize("limit", [1, 2, 3])
def test_walking_every_page_gives_each_order_once_in_order(
    server: Served, demo_database: str, token_for: Callable[..., str], tied_orders: list[str],
    limit: int,
) -> None:
    expected = t1_orders(demo_database)
    assert set(tied_orders) <= set(expected) and len(expected) >= 7
    pages = walk(server.base, token_for("support-console"), {"limit": limit})
    seen = [row["OrderId"] for page in pages for row in page.json()["rows"]]
    assert seen == expected  # every order once, newest first, ties by OrderId
    bodies = [page.json() for page in pages]
    assert all(len(b["rows"]) == limit == b["row_count"] for b in bodies[:-1])
    assert 1 <= len(bodies[-1]["rows"]) <= limit  # never an empty page after a full one
    assert "next_cursor" not in bodies[-1]
    assert all(b["truncated"] is False for b in bodies)
    first = event(server, pages[0].headers["x-request-id"])["protoPayload"]
    assert first["metadata"]["pagination"] == {"cursor": "none", "pageSize": limit,
                                               "nextCursor": True}  # fmt: skip
    assert first["request"]["params"]["after_created"] == {"from": "cursor", "value": None}
    assert first["request"]["params"]["limit"] == {  # with the text the query string carried
        "from": "caller",
        "value": limit,
        "sent": str(limit),
        "text": True,
    }
    last = event(server, pages[-1].headers["x-request-id"])["protoPayload"]
    assert last["metadata"]["pagination"] == {"cursor": "opened", "pageSize": limit,
                                              "nextCursor": False}  # fmt: skip
    assert last["request"]["params"]["after_order"] == {"from": "cursor", "value": None}
    assert last["response"]["rowCount"] == len(bodies[-1]["rows"])
    cursors = [b["next_cursor"] for b in bodies[:-1]]
    for where in (server.audit, server.log):  # a cursor is never recorded nor logged
        recorded = where.read_text()
        assert not [c for c in cursors if c in recorded]


def test_a_filter_holds_on_every_page_and_the_page_size_may_change(
    server: Served, demo_database: str, token_for: Callable[..., str], tied_orders: list[str]
) -> None:
    token = token_for("support-console")
    pages = walk(server.base, token, {"limit": 1, "status": "OPEN"})
    assert [r["OrderId"] for p in pages for r in p.json()["rows"]] == t1_orders(
        demo_database, "OPEN"
    )
    first = get(server.base, "/v1/orders", token, {"limit": 2}).json()
    rest = get(server.base, "/v1/orders", token, {"limit": 50, "cursor": first["next_cursor"]})
    assert rest.status_code == 200, rest.text
    seen = [r["OrderId"] for r in first["rows"] + rest.json()["rows"]]
    assert seen == t1_orders(demo_database) and "next_cursor" not in rest.json()


def test_one_page_holding_everything_has_no_next_cursor(
    server: Served, token_for: Callable[..., str]
) -> None:
    # PAID: the seeded orders only (other tests add OPEN ones to the shared t1), fewer than 20
    answer = get(server.base, "/v1/orders", token_for("support-console"), {"status": "PAID"})
    assert answer.status_code == 200, answer.text
    assert set(answer.json()) == {"rows", "row_count", "truncated"}  # as before pagination
    assert get(server.base, "/v1/orders", token_for("support-console"),
               {"limit": 101}).json()["code"] == "param-invalid"  # fmt: skip


def test_a_keyset_of_every_type_round_trips_through_spanner(
    server: Served, token_for: Callable[..., str]
) -> None:
    """Nine literal rows, each told apart from the one before by one column of another type
    (TIMESTAMP by a nanosecond, NUMERIC by 10^-9, BYTES \\x00\\xff against \\x01, FLOAT64 0.1
    against 0.2...): one row per page, each cursor carrying all eight typed values, must give
    each row exactly once. A value that did not bind back exactly would skip or repeat one."""
    token = token_for("support-console")
    rows, cursor = [], None
    while True:
        body = {"cursor": cursor} if cursor else {}
        answer = httpx.post(f"{server.base}/v1/every-type", json=body, timeout=30,
                            headers={"Authorization": f"Bearer {token}"})  # fmt: skip
        assert answer.status_code == 200, answer.text
        page = answer.json()
        assert len(page["rows"]) == 1
        rows.append(page["rows"][0])
        cursor = page.get("next_cursor")
        if cursor is None:
            break
        assert len(rows) < 20
    assert len(rows) == 9
    assert rows[0] == {"s": "a", "i": 1, "t": "2026-01-01T00:00:00.123456789Z", "d": "2026-01-01",
                       "n": "1.000000001", "b": "AP8=", "bo": False, "f": 0.1}  # fmt: skip
    assert [r["f"] for r in rows[:2]] == [0.1, 0.2]
    assert rows[6]["t"] == "2026-01-01T00:00:00.12345679Z"  # one nanosecond later
    assert rows[8]["s"] == "b"
    assert len({json.dumps(r, sort_keys=True) for r in rows}) == 9


# --- refusals --------------------------------------------------------------------------------------


def expired_cursor(server: Served, token: str) -> str:
    """A cursor sealed with the server's sealing key for this token's caller and list_orders
    with limit=1, expired ten seconds ago: made here with the gateway's own functions, as an
    operator holding the key could."""
    claims = jwt.decode(token, options={"verify_signature": False})
    policy = compile_policy(load_policy(server_policy(server), env={"OKTA_ISSUER": claims["iss"]}))
    principal = principal_for(policy.model, claims)
    decision = decide(policy, RequestFacts("GET", "/v1/orders", query=[("limit", "1")]), principal)
    assert decision.allow and decision.route is not None and decision.bound is not None
    query = decision.route.query
    assert query.paging is not None
    state = CursorState(
        params_digest(decision.bound.values, query.paging),
        (("TIMESTAMP", "2026-02-05T16:40:00Z"), ("STRING", "O-1003")),
        int(time.time()) - 10,
    )
    return seal_cursor(CursorKeys.parse(K_NEW), binding(principal, query, query.paging), state)


def server_policy(server: Served) -> Path:
    return server.audit.parent / "policy.yaml"


def test_each_refusal_is_400_with_its_code_and_audited(
    server: Served, token_for: Callable[..., str]
) -> None:
    support = token_for("support-console")
    first = get(server.base, "/v1/orders", support, {"limit": 1}).json()
    cursor = first["next_cursor"]
    middle = len(cursor) // 2
    flipped = cursor[:middle] + ("A" if cursor[middle] != "A" else "B") + cursor[middle + 1:]
    tries: list[tuple[str, str, str, Any, str, str]] = [
        # (who, caller, path, params, code, reason in the trail)
        ("another principal of the tenant", "support-lead", "/v1/orders",
         {"limit": 1, "cursor": cursor}, "cursor-invalid", "unauthentic"),
        ("an agent of the tenant", "order-agent", "/v1/orders",
         {"limit": 1, "cursor": cursor}, "cursor-invalid", "unauthentic"),
        ("another tenant", "support-t2", "/v1/orders",
         {"limit": 1, "cursor": cursor}, "cursor-invalid", "unauthentic"),
        ("other parameters", "support-console", "/v1/orders",
         {"limit": 1, "status": "PAID", "cursor": cursor}, "cursor-invalid", "params"),
        ("another query", "support-console", "/v1/orders-oldest",
         {"limit": 1, "cursor": cursor}, "cursor-invalid", "unauthentic"),
        ("tampered", "support-console", "/v1/orders",
         {"limit": 1, "cursor": flipped}, "cursor-invalid", "unauthentic"),
        # 8 characters off (a multiple of 4): still base64url whatever the cursor's length, so
        # it opens and fails authentication (6 off could make it no base64url: malformed)
        ("cut short", "support-console", "/v1/orders",
         {"limit": 1, "cursor": cursor[:-8]}, "cursor-invalid", "unauthentic"),
        ("garbage", "support-console", "/v1/orders",
         {"limit": 1, "cursor": "not-a-cursor!"}, "cursor-invalid", "malformed"),
        ("given twice", "support-console", "/v1/orders",
         [("limit", "1"), ("cursor", cursor), ("cursor", cursor)], "cursor-invalid", "malformed"),
        ("expired", "support-console", "/v1/orders",
         {"limit": 1, "cursor": expired_cursor(server, support)}, "cursor-expired", "expired"),
    ]  # fmt: skip
    for what, who, path, params, code, reason in tries:
        answer = get(server.base, path, token_for(who), params)
        assert answer.status_code == 400, (what, answer.text)
        assert answer.headers["content-type"] == "application/problem+json"
        problem = answer.json()
        assert problem["code"] == code, what
        assert problem["request_id"] == answer.headers["x-request-id"]
        assert cursor[:20] not in answer.text and "O-100" not in answer.text  # nothing of it
        payload = event(server, answer.headers["x-request-id"])["protoPayload"]
        assert payload["status"]["message"] == code
        assert payload["metadata"]["pagination"] == {
            "cursor": "refused", "refused": reason, "pageSize": 1, "nextCursor": False
        }, what  # fmt: skip
        assert payload["response"] is None  # no statement ran
    assert cursor not in server.audit.read_text() and cursor not in server.log.read_text()
    # The cursor still serves its own caller, with its own parameters.
    again = get(server.base, "/v1/orders", support, {"limit": 1, "cursor": cursor})
    assert again.status_code == 200, again.text


def test_a_cursor_parameter_is_no_parameter_of_the_caller(
    server: Served, token_for: Callable[..., str]
) -> None:
    answer = get(server.base, "/v1/orders", token_for("support-console"),
                 {"after_created": "2026-01-01T00:00:00Z"})  # fmt: skip
    assert answer.status_code == 400 and answer.json()["code"] == "param-unknown"
    payload = event(server, answer.headers["x-request-id"])["protoPayload"]
    assert payload["metadata"]["pagination"] == {"cursor": "none", "pageSize": None,
                                                 "nextCursor": False}  # fmt: skip


def test_a_denied_call_never_opens_its_cursor(
    server: Served, token_for: Callable[..., str]
) -> None:
    answer = get(server.base, "/v1/orders", token_for("outsider"), {"cursor": "anything"})
    assert answer.status_code == 403 and answer.json()["code"] == "no-allow-role"
    payload = event(server, answer.headers["x-request-id"])["protoPayload"]
    assert payload["metadata"]["pagination"]["cursor"] == "not-checked"


# --- keys: rotation, replicas, none ----------------------------------------------------------------


def test_cursors_outlive_a_key_rotation_until_their_key_is_retired(
    server: Served, demo_database: str, idp: IdpProcess, folder: Path, audit_key: str,
    token_for: Callable[..., str],
) -> None:
    token = token_for("support-console")
    expected = t1_orders(demo_database)
    # 1. before the rotation: K_OLD alone seals.
    with served(folder, database=demo_database, issuer=idp.issuer, audit_key=audit_key,
                policy=server_policy(server),
                env={"SPANGATE_CURSOR_KEYS": K_OLD}) as old:  # fmt: skip
        first = get(old.base, "/v1/orders", token, {"limit": 1}).json()
    sealed_by_old = first["next_cursor"]
    # 2. during it (the module's gateway): K_NEW first, K_OLD listed: the old cursor opens,
    # and the next one is sealed by K_NEW.
    second = get(server.base, "/v1/orders", token, {"limit": 1, "cursor": sealed_by_old})
    assert second.status_code == 200, second.text
    sealed_by_new = second.json()["next_cursor"]
    # 3. after it: K_OLD retired. Another process (a replica, a restart) opens K_NEW's cursor.
    with served(folder, database=demo_database, issuer=idp.issuer, audit_key=audit_key,
                policy=server_policy(server),
                env={"SPANGATE_CURSOR_KEYS": K_NEW}) as new:  # fmt: skip
        refused = get(new.base, "/v1/orders", token, {"limit": 1, "cursor": sealed_by_old})
        assert refused.status_code == 400 and refused.json()["code"] == "cursor-invalid"
        reason = event(new, refused.headers["x-request-id"])["protoPayload"]["metadata"]
        assert reason["pagination"]["refused"] == "unknown-key"
        rest = walk(new.base, token, {"limit": 1})[1:]  # from its own first page on...
        third = get(new.base, "/v1/orders", token, {"limit": 1, "cursor": sealed_by_new})
        assert third.status_code == 200, third.text
    seen = first["rows"] + second.json()["rows"] + third.json()["rows"]
    assert [r["OrderId"] for r in seen] == expected[: len(seen)]
    assert rest  # the new replica pages on its own too


def test_without_cursor_keys_a_paginating_policy_does_not_start(
    demo_database: str, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "SPANGATE_CURSOR_KEYS"}
    env |= {"SPANNER_EMULATOR_HOST": demo_database, "SPANGATE_AUDIT_KEY": "k",
            "SPANGATE_AUDIT_PATH": str(tmp_path / "audit.jsonl")}  # fmt: skip
    command = [*SPANGATE, "serve", "--policy", str(EXAMPLE_POLICY), "--port", "0"]
    out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    assert "paginates list_orders" in out.stderr and "SPANGATE_CURSOR_KEYS" in out.stderr
    bad = "c2hvcnQta2V5"  # "short-key": 9 bytes
    out = subprocess.run(command, env={**env, "SPANGATE_CURSOR_KEYS": f"{K_NEW},{bad}"},
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert "SPANGATE_CURSOR_KEYS: key 2 is 9 bytes, not 32 (256 bits)" in out.stderr
    assert bad not in out.stderr and K_NEW not in out.stderr


def test_policy_check_database_refuses_a_cursor_parameter_of_another_type(
    demo_database: str, tmp_path: Path
) -> None:
    text = EXAMPLE_POLICY.read_text().replace(
        "after_created:   {type: TIMESTAMP, from: cursor.CreatedAt}",
        "after_created:   {type: STRING, from: cursor.CreatedAt}",
    )  # Spanner coerces a STRING parameter to TIMESTAMP: it plans the statement all the same
    assert "{type: STRING, from: cursor.CreatedAt}" in text
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    env = {**os.environ, "SPANNER_EMULATOR_HOST": demo_database}
    out = subprocess.run([*SPANGATE, "policy", "check", "--database", str(path)], env=env,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 2, out.stdout + out.stderr
    assert "queries.list_orders.params.after_created.type: parameter after_created carries " \
           "keyset column CreatedAt, which is TIMESTAMP: declare it type: TIMESTAMP" in out.stderr


# --- OpenAPI and MCP -------------------------------------------------------------------------------


def test_openapi_documents_cursor_and_next_cursor(server: Served) -> None:
    doc = httpx.get(f"{server.base}/openapi.json", timeout=30).json()
    listing = doc["paths"]["/v1/orders"]["get"]
    params = {p["name"]: p for p in listing["parameters"]}
    assert set(params) == {"status", "min_total_cents", "limit", "cursor"}
    assert params["cursor"]["required"] is False
    assert params["limit"]["schema"] == {"type": "integer", "format": "int64", "minimum": 1,
                                         "maximum": 100, "default": 20}  # fmt: skip
    ok = listing["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok["properties"]["next_cursor"]["type"] == "string"
    assert "next_cursor" not in ok["required"] and ok["properties"]["rows"]["maxItems"] == 100
    assert "cursor-invalid" in listing["responses"]["400"]["description"]
    body = doc["paths"]["/v1/every-type"]["post"]["requestBody"]["content"]["application/json"]
    assert set(body["schema"]["properties"]) == {"limit", "cursor"}


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
async def test_an_mcp_tool_takes_cursor_and_answers_next_cursor(
    server: Served, demo_database: str, token_for: Callable[..., str], mode: str
) -> None:
    token = token_for("support-console")  # a budget that any number of t1's orders fits
    async with connected(server.base, token, mode) as client:
        tool = {t.name: t for t in (await client.list_tools()).tools}["list_orders"]
        assert set(tool.input_schema["properties"]) == {"status", "min_total_cents", "limit",
                                                        "cursor"}  # fmt: skip
        assert tool.output_schema["properties"]["next_cursor"]["type"] == "string"
        seen: list[str] = []
        arguments: dict[str, Any] = {"limit": 2, "cursor": None}  # null: the first page
        while True:
            result = await client.call_tool("list_orders", arguments)
            assert result.is_error is False, result.content
            page = result.structured_content
            assert page is not None
            seen += [r["OrderId"] for r in page["rows"]]
            if "next_cursor" not in page:
                break
            arguments = {"limit": 2, "cursor": page["next_cursor"]}
        assert seen == t1_orders(demo_database)
        refused = await client.call_tool("list_orders", {"limit": 2, "cursor": "x" * 40})
        assert refused.is_error is True
        assert refused.structured_content is not None
        assert refused.structured_content["code"] == "cursor-invalid"
        # A cursor is the caller's, whatever the transport: one from HTTP goes on over MCP.
        http = get(server.base, "/v1/orders", token, {"limit": 2}).json()
        onward = await client.call_tool("list_orders", {"limit": 2, "cursor": http["next_cursor"]})
        assert onward.is_error is False and onward.structured_content is not None
        assert [r["OrderId"] for r in http["rows"] + onward.structured_content["rows"]] == seen[:4]
    events = [e for e in server.events()
              if e["protoPayload"]["metadata"].get("mcp", {}).get("tool") == "list_orders"]
    assert {e["protoPayload"]["metadata"]["pagination"]["cursor"] for e in events} >= {
        "none", "opened", "refused"
    }  # fmt: skip
