"""Column masking end to end: real ``spangate serve`` processes on the emulator with the real
OpenID provider. The example policy masks customers' ``Email`` for everyone but support leads,
over HTTP and MCP alike; a policy with every mode (hash, last4, null, redact, a write's THEN
RETURN) masks exactly as ``docs/masking.md`` says; neither the audit trail nor the server's log
ever holds a masked value (Spanner's own error messages, which quote values, included); a mask
the statement cannot honour is refused by ``policy check --database``, at start and on reload."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from served import EXAMPLE_POLICY, SPANGATE, Served, served, start_served
from test_mcp_live import connected

from gateway.audit.schema import AuditEvent
from gateway.dev.idp import IdpProcess

CUSTOMER = "/v1/customers/C-1"
EMAILS = ("wile@acme.example", "beep@acme.example", "elmer@acme.example")  # tenant t1's
MASK_KEY = "test-mask-key-not-a-secret-0123456789"


def get(base: str, path: str, token: str, **kwargs: Any) -> httpx.Response:
    return httpx.get(f"{base}{path}", headers={"Authorization": f"Bearer {token}"}, timeout=30,
                     **kwargs)  # fmt: skip


def event(server: Served, request_id: str) -> dict[str, Any]:
    (found,) = server.events(request_id)
    AuditEvent.model_validate(found)  # the published schema, strictly
    return found


def assert_never_in_clear(server: Served) -> None:
    """No masked value anywhere in the audit file or the server's output."""
    for where in (server.audit, server.log):
        text = where.read_text()
        for email in EMAILS:
            assert email not in text, f"{email} in {where.name}"


def log_with(server: Served, text: str) -> str:
    """The server's log once it holds ``text`` (a thread writes the lines, every 50 ms), or as
    it is after 10 s."""
    deadline = time.monotonic() + 10
    while True:
        log = server.log.read_text()
        if text in log or time.monotonic() > deadline:
            return log
        time.sleep(0.05)


def published_hash(type_name: str, canonical: bytes, *, domain: str) -> str:
    """docs/masking.md's formula for a mask naming ``domain``, computed here, not by the
    gateway's code."""
    root = hmac.new(MASK_KEY.encode(), b"spangate mask v1", hashlib.sha256).digest()
    key = hmac.new(root, b"domain\x00" + domain.encode(), hashlib.sha256).digest()
    digest = hmac.new(key, type_name.encode() + b"\x00" + canonical, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


# --- the example policy ----------------------------------------------------------------------


def test_support_sees_the_email_masked_and_a_support_lead_clear(
    example_server: Served, token_for: Callable[..., str]
) -> None:
    support = get(example_server.base, CUSTOMER, token_for("support-console"))
    assert support.status_code == 200, support.text
    assert support.json()["rows"] == [
        {"CustomerId": "C-1", "Name": "Wile E. Coyote", "Email": "***",
         "CreatedAt": "2026-01-02T09:00:00Z"}
    ]  # fmt: skip
    metadata = event(example_server, support.headers["x-request-id"])["protoPayload"]["metadata"]
    assert metadata["masked"] == ["Email"]
    assert metadata["decision"]["roles"] == ["support"]

    lead = get(example_server.base, CUSTOMER, token_for("support-lead"))
    assert lead.status_code == 200, lead.text
    assert lead.json()["rows"][0]["Email"] == "wile@acme.example"
    metadata = event(example_server, lead.headers["x-request-id"])["protoPayload"]["metadata"]
    assert metadata["masked"] == []  # it has masks; none applied to this caller
    assert metadata["decision"]["roles"] == ["support", "support-leads"]

    orders = get(example_server.base, "/v1/orders/O-1001", token_for("support-console"))
    meta = event(example_server, orders.headers["x-request-id"])["protoPayload"]["metadata"]
    assert "masked" not in meta  # a query without masks says nothing about them
    assert_never_in_clear(example_server)


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
async def test_an_mcp_tool_masks_as_the_route_does(
    example_server: Served, token_for: Callable[..., str], mode: str
) -> None:
    # The SDK's client checks structuredContent against the tool's outputSchema: the masked
    # shape must be what this token's tools/list said.
    async with connected(example_server.base, token_for("support-console"), mode) as client:
        tool = {t.name: t for t in (await client.list_tools()).tools}["get_customer"]
        email = tool.output_schema["properties"]["rows"]["items"]["properties"]["Email"]
        assert email["enum"] == ["***", None] and "masked (redact)" in email["description"]
        result = await client.call_tool("get_customer", {"customer_id": "C-1"})
    assert result.is_error is False
    assert result.structured_content is not None
    assert result.structured_content["rows"][0]["Email"] == "***"
    assert "wile@acme.example" not in json.dumps([c.model_dump() for c in result.content])
    async with connected(example_server.base, token_for("support-lead"), mode) as client:
        tool = {t.name: t for t in (await client.list_tools()).tools}["get_customer"]
        email = tool.output_schema["properties"]["rows"]["items"]["properties"]["Email"]
        assert email == {"type": ["string", "null"]}  # clear, for this token
        lead = await client.call_tool("get_customer", {"customer_id": "C-1"})
    assert lead.structured_content is not None
    assert lead.structured_content["rows"][0]["Email"] == "wile@acme.example"
    masked_events = [
        e for e in example_server.events()
        if e["protoPayload"]["metadata"].get("mcp", {}).get("tool") == "get_customer"
    ]  # fmt: skip
    assert {tuple(e["protoPayload"]["metadata"]["masked"]) for e in masked_events} == {
        ("Email",), ()
    }  # fmt: skip
    assert_never_in_clear(example_server)


def test_openapi_says_who_sees_the_email_clear(example_server: Served) -> None:
    doc = httpx.get(f"{example_server.base}/openapi.json", timeout=30).json()
    ok = doc["paths"]["/v1/customers/{customer_id}"]["get"]["responses"]["200"]
    row = ok["content"]["application/json"]["schema"]["properties"]["rows"]["items"]
    email = row["properties"]["Email"]
    assert email["anyOf"] == [{"type": ["string", "null"]}, {"enum": ["***", None]}]
    assert email["description"] == (
        "masked (redact) unless the caller holds a role of: support-leads; then clear"
    )
    assert email["x-spangate-mask"] == {"with": "redact", "unless": ["support-leads"]}


# --- every mode, a write's THEN RETURN, Spanner's errors ---------------------------------------

MODES_POLICY = """
  list_customers:
    identity: shop_reader
    sql: SELECT CustomerId, Name, Email, CreatedAt FROM Customers WHERE TenantId = @tenant ORDER BY CustomerId
    params:
      tenant: {type: STRING, from: claim.tenant}
    mask:
      Email: {with: hash, unless: [support-leads], domain: email}
      Name: {with: last4}
      CreatedAt: {with: null}        # YAML null: the null mode
  orders_with_email:
    identity: shop_reader
    sql: |
      SELECT o.OrderId, c.Email AS Contact FROM Orders o
      JOIN Customers c ON c.TenantId = o.TenantId AND c.CustomerId = o.CustomerId
      WHERE o.TenantId = @tenant ORDER BY o.OrderId
    params:
      tenant: {type: STRING, from: claim.tenant}
    mask:
      Contact: {with: hash, domain: email}   # the same domain: a caller joins the two
  cast_email:
    identity: shop_reader
    sql: |
      SELECT CAST(Email AS INT64) AS n, Email FROM Customers
      WHERE TenantId = @tenant AND CustomerId = @customer_id
    params:
      tenant: {type: STRING, from: claim.tenant}
      customer_id: {type: STRING, max_length: 36}
    mask:
      Email: {with: redact}
  touch_customer:
    identity: shop_writer
    sql: |
      UPDATE Customers SET Name = Name WHERE TenantId = @tenant AND CustomerId = @customer_id
      THEN RETURN CustomerId, Email
    params:
      tenant: {type: STRING, from: claim.tenant}
      customer_id: {type: STRING, max_length: 36}
    mask:
      Email: {with: last4, unless: [support-leads]}
  customers_and_lower:
    identity: shop_reader
    sql: SELECT c.*, LOWER(c.Email) AS email FROM Customers c WHERE c.TenantId = @tenant
    params:
      tenant: {type: STRING, from: claim.tenant}
    mask:
      Email: {with: redact}   # c.*: only Spanner names the columns; `email` is answered clear
  cast_text:
    identity: shop_reader
    sql: SELECT CAST(@text AS INT64) AS n
    params:
      text: {type: STRING, max_length: 64}
"""
MODES_ROUTES = """
  - {path: /v1/customers, method: GET, query: list_customers, allow: [support]}
  - {path: /v1/orders-with-contact, method: GET, query: orders_with_email, allow: [support]}
  - {path: "/v1/customers/{customer_id}/cast", method: GET, query: cast_email, allow: [support]}
  - {path: "/v1/customers/{customer_id}/touch", method: POST, query: touch_customer, allow: [support]}
  - {path: /v1/cast, method: GET, query: cast_text, allow: [support]}
  - {path: /v1/customers-lower, method: GET, query: customers_and_lower, allow: [support]}
"""


def modes_policy(folder: Path, queries: str = MODES_POLICY) -> Path:
    """The example policy with the queries and routes above."""
    text = EXAMPLE_POLICY.read_text()
    text = text.replace("\nroutes:\n", "\n" + queries.rstrip() + "\n\nroutes:\n", 1)
    text = text.replace("\nbudgets:", MODES_ROUTES.rstrip() + "\n\nbudgets:", 1)
    path = folder / "policy.yaml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def modes_server(
    demo_database: str, idp: IdpProcess, tmp_path_factory: pytest.TempPathFactory, audit_key: str
) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("masks")
    with served(
        folder,
        database=demo_database,
        issuer=idp.issuer,
        audit_key=audit_key,
        policy=modes_policy(folder),
        env={"SPANGATE_MASK_KEY": MASK_KEY},
    ) as server:
        yield server


def test_hash_last4_and_null_mask_each_row_and_hashes_join(
    modes_server: Served, token_for: Callable[..., str]
) -> None:
    support = token_for("support-console")
    answer = get(modes_server.base, "/v1/customers", support)
    assert answer.status_code == 200, answer.text
    rows = answer.json()["rows"]
    assert rows == [
        {"CustomerId": "C-1", "Name": "***yote", "CreatedAt": None,
         "Email": published_hash("STRING", b"wile@acme.example", domain="email")},
        {"CustomerId": "C-2", "Name": "***nner", "CreatedAt": None,
         "Email": published_hash("STRING", b"beep@acme.example", domain="email")},
        {"CustomerId": "C-3", "Name": "***Fudd", "CreatedAt": None,
         "Email": published_hash("STRING", b"elmer@acme.example", domain="email")},
    ]  # fmt: skip
    # equal values mask equally across the queries of one domain: a caller joins orders to
    # customers by hash
    contacts = get(modes_server.base, "/v1/orders-with-contact", support).json()["rows"]
    by_hash = {r["Email"]: r["CustomerId"] for r in rows}
    seeded = {"O-1001", "O-1002", "O-1003", "O-1004"}  # other tests add orders to the shared t1
    assert [(r["OrderId"], by_hash[r["Contact"]]) for r in contacts if r["OrderId"] in seeded] == [
        ("O-1001", "C-1"), ("O-1002", "C-2"), ("O-1003", "C-1"), ("O-1004", "C-3")
    ]  # fmt: skip (the seed's orders: tests that ran before may have added others to the demo)
    again = get(modes_server.base, "/v1/customers", support).json()["rows"]
    assert again == rows  # stable
    lead = get(modes_server.base, "/v1/customers", token_for("support-lead")).json()["rows"]
    assert [r["Email"] for r in lead] == list(EMAILS)  # clear for the lead...
    assert [r["Name"] for r in lead] == ["***yote", "***nner", "***Fudd"]  # ...not Name
    masked = event(modes_server, answer.headers["x-request-id"])["protoPayload"]["metadata"]
    assert masked["masked"] == ["Email", "Name", "CreatedAt"]
    assert_never_in_clear(modes_server)


def test_a_write_returns_its_then_return_rows_masked_and_so_does_its_replay(
    modes_server: Served, token_for: Callable[..., str]
) -> None:
    support = token_for("support-console")
    key = f"mask-{os.getpid()}-{time.monotonic_ns()}"
    headers = {"Authorization": f"Bearer {support}", "Idempotency-Key": key}
    url = f"{modes_server.base}/v1/customers/C-1/touch"
    first = httpx.post(url, json={}, headers=headers, timeout=30)
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["rows"] == [{"CustomerId": "C-1", "Email": "***mple"}]
    assert body["row_count"] == 1 and body["commit_timestamp"]
    replay = httpx.post(url, json={}, headers=headers, timeout=30)
    assert replay.json() == body  # answered from its Idempotency-Key record, masked again
    lead = httpx.post(url, json={}, headers={"Authorization": f"Bearer {token_for('support-lead')}"},
                      timeout=30)  # fmt: skip
    assert lead.json()["rows"] == [{"CustomerId": "C-1", "Email": "wile@acme.example"}]
    written = event(modes_server, first.headers["x-request-id"])["protoPayload"]
    assert written["metadata"]["masked"] == ["Email"]
    assert written["response"]["outcome"] == "committed"
    assert_never_in_clear(modes_server)


def test_spanners_message_quoting_a_masked_value_never_reaches_the_log(
    modes_server: Served, token_for: Callable[..., str]
) -> None:
    # CAST('wile@acme.example' AS INT64) fails; Spanner's message quotes the value.
    answer = get(modes_server.base, "/v1/customers/C-1/cast", token_for("support-lead"))
    assert answer.status_code == 400, answer.text
    problem = answer.json()
    assert problem["code"] == "statement-rejected"
    assert "wile" not in answer.text
    line = "spanner OUT_OF_RANGE running query 'cast_email' as identity 'shop_reader' " \
        "(role 'shop_reader'): Spanner's message withheld (digest "  # fmt: skip
    assert line in log_with(modes_server, line)
    assert_never_in_clear(modes_server)


def test_spanners_message_is_withheld_for_a_query_without_masks_too(
    modes_server: Served, token_for: Callable[..., str]
) -> None:
    # Spanner's words quote the parameter: the log holds no parameter value (nor any other).
    guess = "guess-4711@acme.example"
    answer = get(modes_server.base, "/v1/cast", token_for("support-console"),
                 params={"text": guess})  # fmt: skip
    assert answer.status_code == 400, answer.text
    assert answer.json()["code"] == "statement-rejected"
    log = log_with(modes_server, "running query 'cast_text'")
    assert "running query 'cast_text'" in log and guess not in log


def test_a_column_that_differs_from_a_masked_one_only_in_case_is_a_located_warning(
    modes_server: Served, demo_database: str, idp: IdpProcess
) -> None:
    args = list(modes_server.process.args)  # type: ignore[arg-type]
    path = Path(args[args.index("--policy") + 1])
    lines = path.read_text().splitlines()
    line = next(i for i, text in enumerate(lines) if "`email` is answered clear" in text) + 1
    warning = (
        f"{path}:{line}:14: warning: queries.customers_and_lower.mask.Email: query "
        "customers_and_lower also returns email, which differs from the masked column Email "
        "only in case: it is answered unmasked"
    )
    assert warning in log_with(modes_server, warning)  # at start-up, from Spanner's analysis
    env = {"SPANNER_EMULATOR_HOST": demo_database, "OKTA_ISSUER": idp.issuer}
    offline = run("policy", "check", str(path), env=env)
    assert offline.returncode == 0 and "also returns email" not in offline.stderr  # c.*
    checked = run("policy", "check", "--database", str(path), env=env)
    assert checked.returncode == 0, checked.stderr
    assert warning in checked.stderr


def test_a_reload_with_a_mask_spanner_cannot_honour_is_refused(
    modes_server: Served, token_for: Callable[..., str], tmp_path: Path
) -> None:
    args = list(modes_server.process.args)  # type: ignore[arg-type]
    policy = Path(args[args.index("--policy") + 1])
    good = policy.read_text()
    try:
        # SELECT *: the text names no columns, so only Spanner's analysis can refuse the mask
        policy.write_text(good.replace(
            "SELECT CustomerId, Name, Email, CreatedAt FROM Customers WHERE TenantId = @tenant",
            "SELECT * FROM Customers WHERE TenantId = @tenant",
        ).replace("      Name: {with: last4}", "      Nmae: {with: last4}"))  # fmt: skip
        modes_server.process.send_signal(signal.SIGHUP)
        refused = _metric(modes_server, 'spangate_policy_reloads_total{result="refused"}', 1)
        assert refused
    finally:
        policy.write_text(good)
    refusal = "mask on column 'Nmae', which query list_customers does not return"
    assert refusal in modes_server.log_with(refusal)
    rows = get(modes_server.base, "/v1/customers", token_for("support-console")).json()["rows"]
    assert rows[0]["Name"] == "***yote"  # the old policy keeps serving


def _metric(server: Served, name: str, value: int) -> bool:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = httpx.get(f"{server.base}/metrics", timeout=5).text
        if f"{name} {value}" in text:
            return True
        time.sleep(0.1)
    raise AssertionError(f"{name} never reached {value}")


# --- refusals at start, by policy check --database, and on reload without a key ----------------

BROKEN = """
  all_customers:
    identity: shop_reader
    sql: SELECT * FROM Customers WHERE TenantId = @tenant
    params:
      tenant: {type: STRING, from: claim.tenant}
    mask:
      Emial: {with: redact}
  order_totals:
    identity: shop_reader
    sql: SELECT OrderId, TotalCents FROM Orders WHERE TenantId = @tenant
    params:
      tenant: {type: STRING, from: claim.tenant}
    mask:
      TotalCents: {with: last4}
"""
BROKEN_ROUTES = """
  - {path: /v1/all-customers, method: GET, query: all_customers, allow: [support]}
  - {path: /v1/order-totals, method: GET, query: order_totals, allow: [support]}
"""


def broken_policy(folder: Path) -> Path:
    text = EXAMPLE_POLICY.read_text()
    text = text.replace("\nroutes:\n", "\n" + BROKEN.rstrip() + "\n\nroutes:\n", 1)
    text = text.replace("\nbudgets:", BROKEN_ROUTES.rstrip() + "\n\nbudgets:", 1)
    path = folder / "broken.yaml"
    path.write_text(text)
    return path


def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SPANGATE, *args], env={**os.environ, **env}, capture_output=True, text=True, timeout=120
    )


def test_masks_spanner_cannot_honour_are_refused_by_check_database_and_at_start(
    demo_database: str, idp: IdpProcess, tmp_path: Path, audit_key: str
) -> None:
    path = broken_policy(tmp_path)
    text = path.read_text()
    env = {"SPANNER_EMULATOR_HOST": demo_database, "OKTA_ISSUER": idp.issuer}
    offline = run("policy", "check", str(path), env=env)
    assert offline.returncode == 0, offline.stderr  # SELECT *: the text cannot tell
    checked = run("policy", "check", "--database", str(path), env=env)
    assert checked.returncode == 2, checked.stdout + checked.stderr
    lines = text.splitlines()
    emial = next(i for i, line in enumerate(lines) if "Emial:" in line) + 1
    total = next(i for i, line in enumerate(lines) if "TotalCents: {with: last4}" in line) + 1
    assert f"{path}:{emial}:14: queries.all_customers.mask.Emial: mask on column 'Emial', which " \
        "query all_customers does not return (its columns: TenantId, CustomerId, Name, Email, " \
        "CreatedAt); did you mean 'Email'?" in checked.stderr  # fmt: skip
    assert f"{path}:{total}:26: queries.order_totals.mask.TotalCents.with: last4 keeps the last " \
        "four characters of a STRING; column TotalCents of query order_totals is INT64" \
        in checked.stderr  # fmt: skip

    server = start_served(tmp_path, database=demo_database, issuer=idp.issuer,
                          audit_key=audit_key, policy=path, wait="no")  # fmt: skip
    try:
        code = server.process.wait(timeout=120)
    finally:
        server.stop()
    assert code != 0
    log = server.log.read_text()
    assert "mask on column 'Emial'" in log and "last4 keeps the last four characters" in log


def test_a_hash_mask_without_a_key_refuses_to_start_and_to_reload(
    demo_database: str, idp: IdpProcess, tmp_path: Path, audit_key: str,
    token_for: Callable[..., str],
) -> None:  # fmt: skip
    hashed = EXAMPLE_POLICY.read_text().replace(
        "Email: {with: redact, unless: [support-leads]}",
        "Email: {with: hash, unless: [support-leads]}",
    )
    path = tmp_path / "hashed.yaml"
    path.write_text(hashed)
    env = {"SPANNER_EMULATOR_HOST": demo_database, "SPANGATE_AUDIT_KEY": audit_key,
           "SPANGATE_MASK_KEY": ""}  # fmt: skip
    refused = run("serve", "--policy", str(path), "--port", "1", env=env)
    assert refused.returncode == 2
    assert "the policy masks get_customer.Email with hash, which needs SPANGATE_MASK_KEY" in (
        refused.stderr
    )
    short = run("serve", "--policy", str(path), "--port", "1",
                env={**env, "SPANGATE_MASK_KEY": "too-short"})  # fmt: skip
    assert short.returncode == 2 and "shorter than 16 characters" in short.stderr
    assert "too-short" not in short.stderr

    plain = tmp_path / "policy.yaml"
    plain.write_text(EXAMPLE_POLICY.read_text())
    with served(tmp_path, database=demo_database, issuer=idp.issuer, audit_key=audit_key,
                policy=plain, env={"SPANGATE_MASK_KEY": ""}) as server:  # fmt: skip
        plain.write_text(hashed)
        server.process.send_signal(signal.SIGHUP)
        assert _metric(server, 'spangate_policy_reloads_total{result="refused"}', 1)
        answer = get(server.base, CUSTOMER, token_for("support-console"))
        assert answer.json()["rows"][0]["Email"] == "***"  # still the redacting policy
    assert "which needs SPANGATE_MASK_KEY: this gateway started without one" in (
        server.log.read_text()
    )


# --- the select list read from text agrees with Spanner --------------------------------------

AGREED = [
    "SELECT CustomerId, Name, Email, CreatedAt FROM Customers",
    "SELECT c.Email AS contact, `Name`, c.CustomerId FROM Customers c",
    "SELECT email, customerid AS cid FROM Customers",
    "SELECT DISTINCT Email, FROM Customers",
    "SELECT CAST(TotalCents AS STRING) AS s, EXTRACT(YEAR FROM CreatedAt) AS y FROM Orders",
    "SELECT COUNT(*) FROM Orders",
    "WITH x AS (SELECT OrderId, Status FROM Orders) SELECT OrderId AS z, x.Status FROM x",
    "SELECT OrderId AS e FROM Orders UNION ALL SELECT CustomerId AS f FROM Customers",
    "SELECT o.OrderId, ARRAY(SELECT Sku FROM OrderItems i WHERE i.OrderId = o.OrderId) AS skus "
    "FROM Orders o",
    "SELECT x.Limit, x.`From` FROM (SELECT 1 AS `Limit`, 2 AS `From`) x",
    "SELECT * FROM Customers",
    "SELECT OrderId Id FROM Orders",
    "SELECT Status IS NULL FROM Orders",
    "SELECT (OrderId) FROM Orders",
]


def test_result_columns_read_from_text_agree_with_spanners_plan(demo_database: str) -> None:
    from google.cloud.spanner_v1 import ExecuteSqlRequest

    from gateway.policy.selectlist import result_columns
    from gateway.spanner.identities import default_client_factory

    client = default_client_factory(demo_database)("demo-project", None)
    database = client.instance("demo").database("shop")
    decided = 0
    for sql in AGREED:
        with database.snapshot() as snapshot:
            stream = snapshot.execute_sql(sql, query_mode=ExecuteSqlRequest.QueryMode.PLAN)
            list(stream)
            spanner = tuple(f.name for f in stream.fields)
        read = result_columns(sql)
        assert read is None or read == spanner, (sql, read, spanner)
        decided += read is not None
    assert decided == 10  # the text decides these; Spanner alone the rest


async def test_the_executor_keeps_the_types_of_a_masking_querys_columns(gateway: Any) -> None:
    """What the masks type their values by: the statement's own result fields (in process)."""
    from gateway.spanner.execute import tags_for

    policy = gateway.policy
    tags = tags_for("get_customer", "GET", "/v1/customers/{customer_id}", "types-test")
    result = await gateway.executor.run(
        policy.queries["get_customer"], {"tenant": "t1", "customer_id": "C-1"}, tags=tags
    )
    assert result.types == ["STRING", "STRING", "STRING", "TIMESTAMP"]
    plain = await gateway.executor.run(
        policy.queries["get_order"], {"tenant": "t1", "order_id": "O-1001"}, tags=tags
    )
    assert plain.types == []  # a query without masks needs none


async def test_a_value_that_cannot_be_masked_answers_500_and_nothing_of_the_rows(
    demo_database: str, idp: IdpProcess, tmp_path: Path, audit_key: str,
    token_for: Callable[..., str], caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    from gateway.runtime import build_gateway
    from gateway.settings import Settings

    hashed = tmp_path / "hashed.yaml"
    hashed.write_text(EXAMPLE_POLICY.read_text().replace(
        "Email: {with: redact, unless: [support-leads]}", "Email: {with: hash}"
    ))  # fmt: skip
    settings = Settings(
        policy=hashed, spanner_emulator_host=demo_database, audit_path=tmp_path / "audit.jsonl",
        audit_key=audit_key, mask_key=MASK_KEY,
    )  # fmt: skip
    app = build_gateway(settings, env={"OKTA_ISSUER": idp.issuer})
    await app.startup()
    try:
        app.mask_key = None  # what start-up and reload never allow: a hash mask without its key
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw.test") as client:
            answer = await client.get(
                CUSTOMER, headers={"Authorization": f"Bearer {token_for('support-console')}"}
            )
    finally:
        await app.shutdown()
    assert answer.status_code == 500 and answer.json()["code"] == "internal"
    assert "wile" not in answer.text and "Wile" not in answer.text
    assert "a hash mask without SPANGATE_MASK_KEY" in caplog.text
    assert "wile@acme.example" not in caplog.text
    (line,) = (tmp_path / "audit.jsonl").read_text().splitlines()
    payload = json.loads(line)["protoPayload"]
    assert payload["status"]["message"] == "internal" and payload["response"]["rowCount"] == 1


# --- the schema changes under a running gateway ----------------------------------------------

DRIFT_POLICY = """\
version: 1
spanner: {{project: demo-project, instance: demo, database: {database}}}
issuers:
  okta: {{issuer: "{issuer}", audience: "api://shop", preset: okta}}
identities:
  reader: {{database_role: drift_reader}}
roles:
  tester:
    - groups: [support]
queries:
  get_person:
    identity: reader
    sql: SELECT * FROM People WHERE Id = @id
    params: {{id: {{type: STRING, max_length: 36}}}}
    mask:
      Email: {{with: redact}}
routes:
  - {{path: "/people/{{id}}", method: GET, query: get_person, allow: [tester]}}
"""


async def test_a_schema_changed_after_start_answers_500_until_analysed_again(
    demo_database: str, idp: IdpProcess, tmp_path: Path, audit_key: str,
    token_for: Callable[..., str], caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """The masks were judged on the columns Spanner's analysis gave at start: a result with
    other columns (here SELECT * after a column was added) is refused, never answered with
    masks judged on another shape; SIGHUP analyses the unchanged policy again."""
    import asyncio

    from gateway.dev.database import create_database, emulator_client
    from gateway.runtime import build_gateway
    from gateway.settings import Settings

    name = f"drift{os.getpid()}"
    create_database(
        demo_database, project="demo-project", instance="demo", database=name,
        ddl=["CREATE TABLE People (Id STRING(36) NOT NULL, Email STRING(MAX)) PRIMARY KEY (Id)"],
        dml=["INSERT INTO People (Id, Email) VALUES ('P-1', 'wile@acme.example')"],
    )  # fmt: skip
    policy = tmp_path / "policy.yaml"
    policy.write_text(DRIFT_POLICY.format(database=name, issuer=idp.issuer))
    settings = Settings(policy=policy, spanner_emulator_host=demo_database,
                        audit_path=tmp_path / "audit.jsonl", audit_key=audit_key)  # fmt: skip
    app = build_gateway(settings, env={})
    await app.startup()
    headers = {"Authorization": f"Bearer {token_for('support-console')}"}
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw.test") as client:
            before = await client.get("/people/P-1", headers=headers)
            assert before.json()["rows"] == [{"Id": "P-1", "Email": "***"}], before.text
            none = await client.get("/people/P-404", headers=headers)
            assert none.status_code == 200 and none.json()["rows"] == []  # no rows: still fine

            database = emulator_client(demo_database, project="demo-project").instance(
                "demo").database(name)  # fmt: skip
            await asyncio.to_thread(lambda: database.update_ddl(
                ["ALTER TABLE People ADD COLUMN Phone STRING(MAX)"]).result(timeout=60))  # fmt: skip
            after = await client.get("/people/P-1", headers=headers)
            assert after.status_code == 500 and after.json()["code"] == "internal", after.text
            assert "wile" not in after.text
            assert "the statement returned the columns Id STRING, Email STRING, Phone STRING, " \
                "but the policy was analysed with Id STRING, Email STRING" in caplog.text  # fmt: skip

            assert await app.reloader.reload(reanalyse=True) is True  # what SIGHUP does
            again = await client.get("/people/P-1", headers=headers)
            assert again.json()["rows"] == [{"Id": "P-1", "Email": "***", "Phone": None}]
    finally:
        await app.shutdown()
    assert "wile@acme.example" not in caplog.text
