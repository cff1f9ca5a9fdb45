"""/mcp end to end: a real ``spangate serve`` on the example policy, the real OpenID provider, the
real emulator, and two MCP clients: the official ``mcp`` SDK's streamable HTTP client, on both
protocol revisions the SDK serves (2025-11-25 with its initialize handshake, 2026-07-28 without),
and the MCP Inspector's CLI (a client nobody here wrote)."""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from served import Served
from served import served as serving

from gateway.dev.idp import IdpProcess

INSPECTOR = (
    Path(__file__).resolve().parents[1]
    / "dev/mcp-inspector/node_modules/@modelcontextprotocol/inspector-cli/build/index.js"
)  # the MCP Inspector's CLI (npm, pinned in dev/mcp-inspector/package-lock.json; make setup)
MODES = ["legacy", "2026-07-28"]  # legacy: the 2025-11-25 initialize handshake


@pytest.fixture(scope="module")
def served(example_server: Served) -> tuple[str, Path]:
    return example_server.base, example_server.audit


@asynccontextmanager
async def connected(base: str, token: str | None, mode: str) -> AsyncIterator[Client]:
    """The SDK's client on /mcp with a bearer token."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx2.AsyncClient(headers=headers, timeout=30) as http:
        transport = streamable_http_client(f"{base}/mcp", http_client=http)
        async with Client(transport, mode=mode) as client:  # type: ignore[arg-type]
            yield client


def event_of(audit: Path, request_id: str) -> dict[str, Any]:
    for line in audit.read_text().splitlines():
        event: dict[str, Any] = json.loads(line)
        if event["protoPayload"]["requestMetadata"]["requestAttributes"]["id"] == request_id:
            return event
    raise AssertionError(f"no audit event for {request_id}")


def by_name(tools: Any) -> dict[str, Any]:
    return {t.name: t for t in tools.tools}


@pytest.mark.parametrize("mode", MODES)
async def test_each_token_lists_the_tools_its_roles_allow(
    served: tuple[str, Path], token_for: Callable[..., str], mode: str
) -> None:
    base, _ = served
    seen: dict[str, set[str]] = {}
    for who in ("support-console", "order-agent", "order-writer", "outsider"):
        async with connected(base, token_for(who), mode) as client:
            seen[who] = set(by_name(await client.list_tools()))
    assert seen == {
        "support-console": {
            "get_order", "list_orders", "list_order_items", "get_customer", "cancel_order"
        },
        "order-agent": {"get_order", "list_orders", "list_order_items"},  # people only: no
        "order-writer": {"create_order"},
        "outsider": set(),  # an empty list, not an error
    }


async def test_a_tool_describes_its_arguments_and_result(
    served: tuple[str, Path], token_for: Callable[..., str]
) -> None:
    base, _ = served
    async with connected(base, token_for("support-console"), "legacy") as client:
        tools = by_name(await client.list_tools())
    listed = tools["list_orders"]
    assert listed.description.startswith("the caller's tenant's orders")
    schema = listed.input_schema
    # no tenant (claim-bound), no after_created, after_order (cursor-bound); the cursor
    assert set(schema["properties"]) == {"status", "min_total_cents", "limit", "cursor"}
    assert schema["additionalProperties"] is False and "required" not in schema
    assert schema["properties"]["limit"]["default"] == 20
    assert {"type": "integer", "format": "int64", "minimum": 1, "maximum": 100} in schema[
        "properties"
    ]["limit"]["oneOf"]
    assert "PAID" in json.dumps(schema["properties"]["status"])  # enum, nullable
    assert listed.annotations.read_only_hint is True
    row = listed.output_schema["properties"]["rows"]["items"]
    assert set(row["properties"]) == {
        "OrderId", "CustomerId", "Status", "TotalCents", "Currency", "CreatedAt"
    }  # fmt: skip
    one = tools["get_order"].input_schema
    assert one["required"] == ["order_id"]  # a path parameter is a required argument
    order_id = one["properties"]["order_id"]  # the path schema: one segment, never null
    assert order_id["type"] == "string" and order_id["maxLength"] == 36
    assert order_id["pattern"] == "^(?!\\.\\.?$)[^/\\\\\\x00-\\x1f\\x7f]+$"
    async with connected(base, token_for("order-writer"), "legacy") as client:
        create = by_name(await client.list_tools())["create_order"]
    assert create.annotations.idempotent_hint is True
    assert create.annotations.read_only_hint is False
    assert "idempotency_key" in create.input_schema["properties"]
    assert "tenant" not in create.input_schema["properties"]


@pytest.mark.parametrize("mode", MODES)
async def test_a_read_answers_what_the_http_route_answers(
    served: tuple[str, Path], token_for: Callable[..., str], mode: str
) -> None:
    base, _ = served
    token = token_for("order-agent")
    http = httpx.get(
        f"{base}/v1/orders",
        params={"limit": 2, "status": "PAID"},
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    assert http.status_code == 200, http.text
    async with connected(base, token, mode) as client:
        result = await client.call_tool("list_orders", {"limit": 2, "status": "PAID"})
    assert result.is_error is False
    assert result.structured_content == http.json()
    assert json.loads(result.content[0].text) == http.json()  # type: ignore[union-attr]
    assert result.structured_content["rows"], "the demo tenant has paid orders"


async def test_the_audit_event_says_mcp_the_tool_and_the_jsonrpc_id(
    served: tuple[str, Path], token_for: Callable[..., str]
) -> None:
    base, audit = served
    token = token_for("order-agent")
    body = {
        "jsonrpc": "2.0",
        "id": "call-42",
        "method": "tools/call",
        "params": {"name": "get_order", "arguments": {"order_id": "O-1001"}},
    }
    answer = raw_post(base, body, token=token)
    assert answer.status_code == 200, answer.text
    result = answer.json()["result"]
    assert result["structuredContent"]["rows"][0]["OrderId"] == "O-1001"
    event = event_of(audit, answer.headers["x-request-id"])
    payload = event["protoPayload"]
    assert payload["metadata"]["transport"] == "mcp"
    assert payload["metadata"]["mcp"] == {"tool": "get_order", "jsonrpcId": "call-42"}
    assert payload["methodName"] == "get_order"
    assert payload["metadata"]["decision"]["rule"] == "order-agent"
    assert event["httpRequest"]["requestMethod"] == "POST"
    assert event["httpRequest"]["requestUrl"] == "/mcp"
    # an HTTP call's event says so too
    http = httpx.get(
        f"{base}/v1/orders/O-1001", headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    payload = event_of(audit, http.headers["x-request-id"])["protoPayload"]
    assert payload["metadata"]["transport"] == "http"
    assert "mcp" not in payload["metadata"]


@pytest.mark.parametrize("mode", MODES)
async def test_refusals_are_tool_errors_with_the_http_codes(
    served: tuple[str, Path], token_for: Callable[..., str], mode: str
) -> None:
    base, audit = served
    async with connected(base, token_for("order-agent"), mode) as client:
        denied = await client.call_tool("get_customer", {"customer_id": "C-1"})  # people only
        too_many = await client.call_tool("list_orders", {"limit": 1000})
        unknown = await client.call_tool("list_orders", {"tenant": "t2", "colour": "red"})
        missing = await client.call_tool("get_order", {})
    for result, code in (
        (denied, "no-allow-role"),
        (too_many, "param-invalid"),
        (unknown, "param-unknown"),
        (missing, "param-missing"),
    ):
        assert result.is_error is True
        problem = result.structured_content
        assert problem["code"] == code, problem
        assert json.loads(result.content[0].text) == problem  # type: ignore[union-attr]
        event = event_of(audit, problem["request_id"])["protoPayload"]
        assert event["metadata"]["decision"]["reason"] == code
        assert event["metadata"]["transport"] == "mcp"
    assert too_many.structured_content["param"] == "limit"
    assert too_many.structured_content["status"] == 400


@pytest.mark.parametrize("mode", MODES)
async def test_an_unknown_tool_is_a_jsonrpc_error(
    served: tuple[str, Path], token_for: Callable[..., str], mode: str
) -> None:
    base, audit = served
    async with connected(base, token_for("order-agent"), mode) as client:
        with pytest.raises(MCPError) as caught:
            await client.call_tool("drop_tables", {})
    assert caught.value.code == -32602  # invalid params
    assert caught.value.data["code"] == "no-route"
    event = event_of(audit, caught.value.data["request_id"])["protoPayload"]
    assert event["metadata"]["mcp"]["tool"] == "drop_tables"
    assert event["status"]["message"] == "no-route"


@pytest.mark.parametrize("mode", MODES)
async def test_a_write_with_an_idempotency_key_applies_once(
    served: tuple[str, Path], token_for: Callable[..., str], mode: str
) -> None:
    base, _ = served
    order = f"O-{secrets.randbelow(10**11) + 10**11}"
    key = f"mcp-{secrets.token_hex(8)}"
    arguments = {
        "order_id": order,
        "customer_id": "C-1",
        "total_cents": 1234,
        "idempotency_key": key,
    }
    async with connected(base, token_for("order-writer"), mode) as client:
        first = await client.call_tool("create_order", arguments)
        again = await client.call_tool("create_order", arguments)
        reused = await client.call_tool("create_order", {**arguments, "total_cents": 1})
        unkeyed = await client.call_tool("create_order", {**arguments, "idempotency_key": None})
        bad_key = await client.call_tool("create_order", {**arguments, "idempotency_key": "\n"})
    assert first.is_error is False, first.structured_content
    assert first.structured_content["row_count"] == 1
    assert again.is_error is False and again.structured_content == first.structured_content
    assert reused.is_error and reused.structured_content["code"] == "idempotency-key-reused"
    # without a key the insert runs again, and the order exists
    assert unkeyed.is_error and unkeyed.structured_content["code"] == "conflict"
    assert bad_key.is_error and bad_key.structured_content["code"] == "idempotency-key-invalid"


def raw_post(
    base: str,
    body: dict[str, Any],
    *,
    token: str | None = None,
    version: str = "2025-11-25",
    **headers: str,
) -> httpx.Response:
    sent = {
        "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": version,
        **headers,
    }
    if token:
        sent["Authorization"] = f"Bearer {token}"
    return httpx.post(f"{base}/mcp", json=body, headers=sent, timeout=30)


LIST = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}


def test_no_token_is_401_naming_the_resource_metadata(served: tuple[str, Path]) -> None:
    base, audit = served
    for token in (None, "not-a-token"):
        answer = raw_post(base, LIST, token=token)
        assert answer.status_code == 401, answer.text
        assert answer.headers["content-type"] == "application/problem+json"
        challenge = answer.headers["www-authenticate"]
        assert challenge.startswith(
            f'Bearer resource_metadata="{base}/.well-known/oauth-protected-resource/mcp", '
            'realm="spangate"'
        ), challenge
        code = answer.json()["code"]
        assert code == ("token-missing" if token is None else "token-malformed")
        event = event_of(audit, answer.headers["x-request-id"])["protoPayload"]
        assert event["status"]["message"] == code
        assert event["metadata"]["transport"] == "mcp"


def test_the_protected_resource_metadata(served: tuple[str, Path], idp: IdpProcess) -> None:
    base, _ = served
    for path in (
        "/.well-known/oauth-protected-resource/mcp",
        "/.well-known/oauth-protected-resource",
    ):
        answer = httpx.get(f"{base}{path}", timeout=10)
        assert answer.status_code == 200
        document = answer.json()
        # RFC 9728 §3.3: the resource the well-known URL was formed from
        assert document["resource"] == (base if path.endswith("resource") else f"{base}/mcp")
        assert document["authorization_servers"] == [idp.issuer]
        assert document["scopes_supported"] == ["orders.read", "orders.write"]
        assert document["bearer_methods_supported"] == ["header"]


def test_dns_rebinding_protection(served: tuple[str, Path], token_for: Callable[..., str]) -> None:
    base, _ = served
    token = token_for("order-agent")
    host = raw_post(base, LIST, token=token, Host="evil.example")
    assert host.status_code == 421 and host.json()["code"] == "host-not-allowed"
    origin = raw_post(base, LIST, token=token, Origin="http://evil.example")
    assert origin.status_code == 403 and origin.json()["code"] == "origin-not-allowed"
    local = raw_post(base, LIST, token=token, Origin="http://localhost:3000")
    assert local.status_code == 200, local.text


ORIGINS = ("http://localhost:3000", "http://evil.example")  # allowed, not allowed


@pytest.mark.parametrize("origins", [ORIGINS, ORIGINS[::-1], (ORIGINS[0], ORIGINS[0])])
def test_more_than_one_origin_header_is_refused(
    served: tuple[str, Path], token_for: Callable[..., str], origins: tuple[str, str]
) -> None:
    """The SDK's check reads only the first Origin: the door refuses a second one, in either
    order, even the same allowed origin twice (a browser sends one)."""
    base, audit = served
    headers = [
        ("Content-Type", "application/json"),
        ("Accept", "application/json, text/event-stream"),
        ("Authorization", f"Bearer {token_for('order-agent')}"),
        *(("Origin", origin) for origin in origins),
    ]
    answer = httpx.post(f"{base}/mcp", json=LIST, headers=headers, timeout=30)
    assert answer.status_code == 403, answer.text
    assert answer.json()["code"] == "origin-not-allowed"
    event = event_of(audit, answer.headers["x-request-id"])["protoPayload"]
    assert event["status"]["message"] == "origin-not-allowed"


def test_both_protocol_revisions_are_answered(
    served: tuple[str, Path], token_for: Callable[..., str]
) -> None:
    base, _ = served
    token = token_for("order-agent")
    hello = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "test", "version": "1"},
        },
    }
    answer = raw_post(base, hello, token=token)
    assert answer.status_code == 200, answer.text
    assert answer.json()["result"]["protocolVersion"] == "2025-11-25"
    listed = raw_post(base, LIST, token=token)
    assert {t["name"] for t in listed.json()["result"]["tools"]} >= {"get_order"}


def test_only_post_and_the_request_limits(
    served: tuple[str, Path], token_for: Callable[..., str]
) -> None:
    base, _ = served
    token = token_for("order-agent")
    got = httpx.get(f"{base}/mcp", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert got.status_code == 405 and got.headers["allow"] == "POST"
    text = raw_post(base, LIST, token=token, **{"Content-Type": "text/plain"})
    assert text.status_code == 415 and text.json()["code"] == "unsupported-media-type"
    big = {**LIST, "params": {"_meta": {"pad": "x" * 1_100_000}}}
    answer = raw_post(base, big, token=token)
    assert answer.status_code == 413 and answer.json()["code"] == "body-too-large"
    # the server's head limits hold for /mcp as for every path (SPANGATE_MAX_HEADER_BYTES)
    huge = raw_post(base, LIST, token=token, **{"X-Padding": "x" * 70_000})
    assert huge.status_code == 431 and huge.json()["code"] == "headers-too-large"


def inspector(base: str, token: str, *args: str) -> Any:
    """Run the MCP Inspector's CLI against /mcp; its JSON output."""
    assert INSPECTOR.is_file(), f"{INSPECTOR} is missing: run make setup (npm ci)"
    argv = ["node", str(INSPECTOR), f"{base}/mcp", "--transport", "http"]
    argv += ["--header", f"Authorization: Bearer {token}", *args]
    # cwd: the CLI looks for its package.json with a path relative to the working directory
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=INSPECTOR.parent)
    assert out.returncode == 0, out.stdout + out.stderr
    return json.loads(out.stdout)


def test_the_mcp_inspector_cli_lists_and_calls_tools(
    served: tuple[str, Path], token_for: Callable[..., str]
) -> None:
    base, _ = served
    listed = {
        who: {t["name"] for t in inspector(base, token_for(who), "--method", "tools/list")["tools"]}
        for who in ("support-console", "order-agent", "outsider")
    }
    assert listed == {
        "support-console": {
            "get_order", "list_orders", "list_order_items", "get_customer", "cancel_order"
        },
        "order-agent": {"get_order", "list_orders", "list_order_items"},
        "outsider": set(),
    }
    token = token_for("order-agent")
    called = inspector(
        base, token, "--method", "tools/call", "--tool-name", "list_orders",
        "--tool-arg", "limit=2", "status=PAID",
    )  # fmt: skip
    http = httpx.get(
        f"{base}/v1/orders",
        params={"limit": 2, "status": "PAID"},
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    assert called.get("isError") in (None, False)
    assert called["structuredContent"] == http.json()
    denied = inspector(
        base, token, "--method", "tools/call", "--tool-name", "get_customer",
        "--tool-arg", "customer_id=C-1",
    )  # fmt: skip
    assert denied["isError"] is True
    assert denied["structuredContent"]["code"] == "no-allow-role"


def with_host(base: str, method: str, path: str, host: str, body: bytes = b"") -> Any:
    """A request with a Host header exactly as given (http.client checks only for CR/LF)."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", host)
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Accept", "application/json, text/event-stream")
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        answer = conn.getresponse()
        return answer.status, dict(answer.getheaders()), answer.read()
    finally:
        conn.close()


BAD_HOSTS = [
    "localhost:abc",
    "localhost:99999",
    "localhost:1 x",
    "localhost:8080@evil.example",
    "localhost:1/../x",
    "localhost:0",
    "evil.example",
]


@pytest.mark.parametrize("host", BAD_HOSTS)
def test_a_bad_host_is_an_audited_421_before_the_challenge(
    served: tuple[str, Path], host: str
) -> None:
    base, audit = served
    status, headers, body = with_host(base, "POST", "/mcp", host, json.dumps(LIST).encode())
    assert status == 421, body
    assert headers["content-type"] == "application/problem+json"
    assert "www-authenticate" not in {k.lower() for k in headers}
    problem = json.loads(body)
    assert problem["code"] == "host-not-allowed"
    payload = event_of(audit, problem["request_id"])["protoPayload"]
    assert payload["status"]["message"] == "host-not-allowed"
    assert payload["metadata"]["transport"] == "mcp"


def test_an_allowed_host_names_itself_in_the_challenge(served: tuple[str, Path]) -> None:
    base, _ = served
    status, headers, _ = with_host(base, "POST", "/mcp", "localhost:8080", json.dumps(LIST).encode())
    assert status == 401
    challenge = {k.lower(): v for k, v in headers.items()}["www-authenticate"]
    assert challenge.startswith(
        'Bearer resource_metadata="http://localhost:8080/.well-known/oauth-protected-resource/mcp"'
    ), challenge


@pytest.mark.parametrize("host", BAD_HOSTS)
def test_the_metadata_never_echoes_a_bad_host(served: tuple[str, Path], host: str) -> None:
    base, _ = served
    for path in ("/.well-known/oauth-protected-resource/mcp", "/.well-known/oauth-protected-resource"):
        status, headers, body = with_host(base, "GET", path, host)
        assert status == 421, body
        assert headers["content-type"] == "application/problem+json"
        assert json.loads(body)["code"] == "host-not-allowed"
        assert b'"resource"' not in body
    status, _, body = with_host(base, "GET", "/.well-known/oauth-protected-resource/mcp", "[::1]:9")
    assert status == 200 and json.loads(body)["resource"] == "http://[::1]:9/mcp"


def call(name: str, arguments: Any, rpc_id: Any = 7) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": rpc_id,
        "method": "tools/call",
        "params": {"name": name, "arguments": arguments},
    }


@pytest.mark.parametrize("value", ["..", ".", "a/b", "", "a\x00b", "a\\b", None, True, 1.5])
def test_path_arguments_obey_the_routers_segment_rule(
    served: tuple[str, Path], token_for: Callable[..., str], value: Any
) -> None:
    base, audit = served
    token = token_for("order-agent")
    answer = raw_post(base, call("get_order", {"order_id": value}), token=token)
    assert answer.status_code == 200, answer.text
    result = answer.json()["result"]
    assert result["isError"] is True
    problem = result["structuredContent"]
    assert problem["code"] == "path-invalid" and problem["param"] == "order_id", problem
    payload = event_of(audit, problem["request_id"])["protoPayload"]
    assert payload["status"]["message"] == "path-invalid"
    assert payload["metadata"]["mcp"]["tool"] == "get_order"


def test_a_path_argument_binds_as_the_path_does(
    served: tuple[str, Path], token_for: Callable[..., str]
) -> None:
    base, _ = served
    token = token_for("order-agent")
    http = httpx.get(
        f"{base}/v1/orders/O-1001/items", headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    assert http.status_code == 200, http.text
    answer = raw_post(base, call("list_order_items", {"order_id": "O-1001"}), token=token)
    assert answer.json()["result"]["structuredContent"] == http.json()
    # a number is its decimal text, as a path carries it (no such order: no rows)
    number = raw_post(base, call("get_order", {"order_id": 1001}), token=token)
    result = number.json()["result"]
    assert result.get("isError") in (None, False), result
    assert result["structuredContent"]["rows"] == []


def test_mcp_audience_binds_mcp_tokens_to_the_resource(
    demo_database: str,
    idp: IdpProcess,
    tmp_path: Path,
    audit_key: str,
    token_for: Callable[..., str],
) -> None:
    token = token_for("order-agent")  # aud: api://shop (the example policy's issuer audience)
    options: dict[str, Any] = {
        "database": demo_database,
        "issuer": idp.issuer,
        "audit_key": audit_key,
    }
    mcp_only = {"SPANGATE_MCP_AUDIENCE": "https://gw.example/mcp"}
    with serving(tmp_path, env=mcp_only, **options) as server:
        refused = raw_post(server.base, LIST, token=token)
        assert refused.status_code == 401, refused.text
        assert refused.json()["code"] == "audience-mismatch"
        assert refused.headers["www-authenticate"].startswith(
            f'Bearer resource_metadata="{server.base}/.well-known/oauth-protected-resource/mcp"'
        )
        [event] = server.events(refused.headers["x-request-id"])
        assert event["protoPayload"]["status"]["message"] == "audience-mismatch"
        http = httpx.get(  # the HTTP routes are unaffected
            f"{server.base}/v1/orders/O-1001",
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
        assert http.status_code == 200, http.text
    either = {"SPANGATE_MCP_AUDIENCE": "https://gw.example/mcp, api://shop"}
    with serving(tmp_path, env=either, **options) as server:
        listed = raw_post(server.base, LIST, token=token)
        assert listed.status_code == 200, listed.text
        assert {t["name"] for t in listed.json()["result"]["tools"]} >= {"get_order"}


@pytest.mark.parametrize(
    "params",
    [
        {"name": 5, "arguments": {}},
        {"name": "get_order", "arguments": ["O-1001"]},
        {"name": "get_order", "arguments": "order_id=O-1001"},
        {"arguments": {}},
        "get_order",
    ],
)
def test_a_malformed_tools_call_is_a_jsonrpc_error_and_audited(
    served: tuple[str, Path], token_for: Callable[..., str], params: Any
) -> None:
    base, audit = served
    body = {"jsonrpc": "2.0", "id": "bad-1", "method": "tools/call", "params": params}
    answer = raw_post(base, body, token=token_for("order-agent"))
    assert answer.status_code == 200, answer.text
    message = answer.json()
    assert message["id"] == "bad-1"
    assert message["error"]["code"] == -32602
    problem = message["error"]["data"]
    assert problem["code"] == "tool-call-invalid" and problem["status"] == 400
    payload = event_of(audit, problem["request_id"])["protoPayload"]
    assert payload["status"]["message"] == "tool-call-invalid"
    assert payload["metadata"]["transport"] == "mcp"
    assert payload["metadata"]["mcp"]["jsonrpcId"] == "bad-1"


@pytest.mark.parametrize(
    ("rpc_id", "recorded"),
    [
        (2**53, 2**53),
        (-(2**53), -(2**53)),
        (2**64, str(2**64)),
        (-(10**40), str(-(10**40))),
    ],
)
def test_a_large_integer_jsonrpc_id_is_recorded_as_text(
    served: tuple[str, Path], token_for: Callable[..., str], rpc_id: int, recorded: Any
) -> None:
    base, audit = served
    body = call("get_order", {"order_id": "O-1001"}, rpc_id=rpc_id)
    answer = raw_post(base, body, token=token_for("order-agent"))
    assert answer.status_code == 200, answer.text
    assert answer.json()["id"] == rpc_id
    payload = event_of(audit, answer.headers["x-request-id"])["protoPayload"]
    assert payload["metadata"]["mcp"]["jsonrpcId"] == recorded


def test_a_long_string_jsonrpc_id_is_bounded(
    served: tuple[str, Path], token_for: Callable[..., str]
) -> None:
    base, audit = served
    body = call("get_order", {"order_id": "O-1001"}, rpc_id="i" * 20_000)
    answer = raw_post(base, body, token=token_for("order-agent"))
    assert answer.status_code == 200, answer.text
    event = event_of(audit, answer.headers["x-request-id"])
    assert len(event["protoPayload"]["metadata"]["mcp"]["jsonrpcId"]) < 20_000
    assert event["protoPayload"]["metadata"]["truncated"]


def test_an_unknown_tools_name_is_repeated_bounded(
    served: tuple[str, Path], token_for: Callable[..., str]
) -> None:
    base, _ = served
    name = "x" * 50_000
    answer = raw_post(base, call(name, {}), token=token_for("order-agent"))
    assert answer.status_code == 200
    assert len(answer.content) < 2_000, len(answer.content)
    error = answer.json()["error"]
    assert error["code"] == -32602 and error["data"]["code"] == "no-route"
    assert error["message"] == f"Unknown tool: {'x' * 128}..."


def test_the_query_string_is_read_as_http_reads_it(
    served: tuple[str, Path], token_for: Callable[..., str]
) -> None:
    base, audit = served
    token = token_for("order-agent")
    headers = {
        "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": "2025-11-25",
        "Authorization": f"Bearer {token}",
    }
    for query, status, code in (
        ("access_token=", 401, "token-malformed"),  # blank, still a token in the query
        ("access_token", 401, "token-malformed"),
        ("%ff=1", 400, "query-invalid"),
    ):
        for where in ("/mcp", "/v1/orders/O-1001"):
            answer = httpx.request(
                "POST" if where == "/mcp" else "GET",
                f"{base}{where}?{query}",
                content=json.dumps(LIST) if where == "/mcp" else None,
                headers=headers,
                timeout=30,
            )
            assert answer.status_code == status, (where, query, answer.text)
            assert answer.json()["code"] == code
            payload = event_of(audit, answer.headers["x-request-id"])["protoPayload"]
            assert payload["status"]["message"] == code
    anonymous = {k: v for k, v in headers.items() if k != "Authorization"}
    for where in ("/mcp", "/v1/orders/O-1001"):  # the token first: a 401 whatever the query
        answer = httpx.request(
            "POST" if where == "/mcp" else "GET",
            f"{base}{where}?%ff=1",
            content=json.dumps(LIST) if where == "/mcp" else None,
            headers=anonymous,
            timeout=30,
        )
        assert answer.status_code == 401, (where, answer.text)
        assert answer.json()["code"] == "token-missing"


def test_a_claim_bound_argument_is_ignored_and_audited(
    served: tuple[str, Path], token_for: Callable[..., str]
) -> None:
    """order-agent's token is tenant t1's: ``tenant: t2`` changes nothing, and is recorded."""
    base, audit = served
    token = token_for("order-agent")
    http = httpx.get(
        f"{base}/v1/orders/O-1001", headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    answer = raw_post(base, call("get_order", {"order_id": "O-1001", "tenant": "t2"}), token=token)
    result = answer.json()["result"]
    assert result.get("isError") in (None, False), result
    assert result["structuredContent"] == http.json()
    assert result["structuredContent"]["rows"][0]["TotalCents"] == 7499  # t1's O-1001, not t2's
    payload = event_of(audit, answer.headers["x-request-id"])["protoPayload"]
    assert payload["metadata"]["transport"] == "mcp"
    assert payload["request"]["ignoredCallerValues"] == {"tenant": "t2"}


def test_the_2026_07_28_revision_is_answered_raw(
    served: tuple[str, Path], token_for: Callable[..., str]
) -> None:
    """No initialize handshake: each request names its revision."""
    base, _ = served
    token = token_for("order-agent")
    meta = {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    listed = raw_post(
        base,
        {**LIST, "params": {"_meta": meta}},
        token=token,
        version="2026-07-28",
        **{"Mcp-Method": "tools/list"},
    )
    assert listed.status_code == 200, listed.text
    assert {t["name"] for t in listed.json()["result"]["tools"]} >= {"get_order"}
    get = call("get_order", {"order_id": "O-1001"})
    get["params"]["_meta"] = meta
    called = raw_post(
        base,
        get,
        token=token,
        version="2026-07-28",
        **{"Mcp-Method": "tools/call", "Mcp-Name": "get_order"},
    )
    assert called.status_code == 200, called.text
    assert called.json()["result"]["structuredContent"]["rows"][0]["OrderId"] == "O-1001"


def without_request_ids(value: Any) -> Any:
    """An answer with its request ids (and the text content that repeats them) left out."""
    if isinstance(value, dict):
        return {k: without_request_ids(v) for k, v in value.items() if k not in ("request_id",)}
    if isinstance(value, list):
        return [without_request_ids(v) for v in value]
    if isinstance(value, str) and value.startswith("{"):
        return without_request_ids(json.loads(value))
    return value


@pytest.mark.parametrize(
    ("name", "arguments"),
    [
        ("get_order", {"order_id": "O-1001"}),  # rows
        ("get_customer", {"customer_id": "C-1"}),  # refused: a tool error
        ("get_order", {"order_id": "a/b"}),  # path-invalid: a tool error
        ("drop_tables", {}),  # unknown: a JSON-RPC error
    ],
)
def test_the_gateways_answer_to_a_plain_call_is_the_sdk_runners(
    served: tuple[str, Path], token_for: Callable[..., str], name: str, arguments: Any
) -> None:
    """A plain tools/call (name and arguments) is answered by the gateway itself
    (``plain_tool_call``); the same call with ``_meta`` goes through the SDK's runner: the two
    answers and their audit events say the same."""
    base, audit = served
    token = token_for("order-agent")
    plain = raw_post(base, call(name, arguments, rpc_id="p-1"), token=token)
    body = call(name, arguments, rpc_id="p-1")
    body["params"]["_meta"] = {"progressToken": "t-1"}
    runner = raw_post(base, body, token=token)
    assert plain.status_code == runner.status_code == 200, (plain.text, runner.text)
    assert without_request_ids(plain.json()) == without_request_ids(runner.json())
    events = [
        event_of(audit, answer.headers["x-request-id"])["protoPayload"]
        for answer in (plain, runner)
    ]
    for part in ("status", "metadata"):
        assert without_request_ids({**events[0][part], "latency": None}) == without_request_ids(
            {**events[1][part], "latency": None}
        )


def post_bytes(base: str, body: bytes, token: str, version: str, **headers: str) -> httpx.Response:
    sent = {
        "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": version,
        "Authorization": f"Bearer {token}",
        **headers,
    }
    return httpx.post(f"{base}/mcp", content=body, headers=sent, timeout=30)


MODERN_META = (
    '"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28",'
    '"io.modelcontextprotocol/clientCapabilities":{}}'
)
NOT_STRICT = {  # what the HTTP routes refuse as body-invalid
    "duplicate id": '{"jsonrpc":"2.0","id":1,"id":2,"method":"tools/list","params":{%s}}',
    "duplicate method": '{"jsonrpc":"2.0","id":1,"method":"tools/list","method":"tools/call",'
    '"params":{"name":"get_order","arguments":{"order_id":"O-1001"}%s}}',
    "duplicate argument": '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{'
    '"name":"get_order","arguments":{"order_id":"O-1001","order_id":"O-1002"}%s}}',
    "NaN argument": '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{'
    '"name":"list_orders","arguments":{"limit":NaN}%s}}',
    "Infinity argument": '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{'
    '"name":"list_orders","arguments":{"min_total_cents":-Infinity,"limit":Infinity}%s}}',
}


@pytest.mark.parametrize("version", ["2025-11-25", "2026-07-28"])
@pytest.mark.parametrize("case", list(NOT_STRICT))
def test_a_body_that_is_not_strict_json_is_a_parse_error(
    served: tuple[str, Path], token_for: Callable[..., str], case: str, version: str
) -> None:
    """/mcp reads JSON as strictly as the HTTP routes (no duplicate keys, no NaN/Infinity, at
    the top level or inside a tool's arguments): the JSON-RPC parse error, 400, no tool run."""
    base, audit = served
    meta = ("," + MODERN_META) if version == "2026-07-28" else ""
    body = (NOT_STRICT[case] % meta).replace("{,", "{").encode()
    method = "tools/call" if "tools/call" in NOT_STRICT[case] else "tools/list"
    answer = post_bytes(base, body, token_for("order-agent"), version, **{"Mcp-Method": method})
    assert answer.status_code == 400, answer.text
    message = answer.json()
    assert message["id"] is None and message["error"]["code"] == -32700
    why = message["error"]["message"]
    assert why.startswith("Parse error: the body is not valid JSON: ")
    assert ("appears twice" if case.startswith("duplicate") else "is not JSON") in why, why
    rid = answer.headers["x-request-id"]
    assert rid not in audit.read_text()  # refused before any tool ran (as any protocol error)


def test_strict_json_still_answers(served: tuple[str, Path], token_for: Callable[..., str]) -> None:
    """The same bodies without the duplicate or the literal are answered (the test above fails
    for what it says)."""
    base, _ = served
    token = token_for("order-agent")
    body = (
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"list_orders",'
        b'"arguments":{"limit":1,"min_total_cents":0}}}'
    )
    answer = post_bytes(base, body, token, "2025-11-25")
    assert answer.status_code == 200 and answer.json()["result"]["isError"] is False
    # a parse error does not pre-empt the SDK's 406 (no acceptable Accept)
    duplicate = b'{"jsonrpc":"2.0","id":1,"id":2,"method":"tools/list"}'
    refused = post_bytes(base, duplicate, token, "2025-11-25", Accept="text/event-stream")
    assert refused.status_code == 406, refused.text


INTERNALS = (
    "pydantic",
    "input_value",
    "input_type",
    "type=",
    "validation error",
    "Meta",
    "JSONRPC",
)


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        # the envelope (the SDK's handshake-era transport: 400, -32602)
        (
            {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": "cursor"},
            400,
            "params must be an object (or absent)",
        ),
        (
            {"jsonrpc": "2.0", "id": 1, "method": "ping", "params": [1]},
            400,
            "params must be an object (or absent)",
        ),
        ({"jsonrpc": "2.0", "id": 1, "method": 5}, 400, "method must be a string"),
        (
            {"jsonrpc": "2.0", "id": 1},
            400,
            "a JSON-RPC message needs a method (a request or notification)",
        ),
        (
            [LIST],
            400,
            "the body must be one JSON-RPC message, an object (batches are not supported)",
        ),
        ({"jsonrpc": "1.0", "id": 1, "method": "ping"}, 400, 'jsonrpc must be "2.0"'),
        # a method's params (the SDK's runner: 200, -32602)
        (
            {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"cursor": 5}},
            200,
            "params.cursor must be a string",
        ),
        (
            {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"capabilities": []}},
            200,
            "params.capabilities must be an object; params.clientInfo is required; "
            "params.protocolVersion is required",
        ),
        (
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "tools/call",
                "params": {"name": "get_order", "arguments": {}, "_meta": 5},
            },
            200,
            "params._meta must be an object",
        ),
        (
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "tools/call",
                "params": {"name": "get_order", "_meta": {"progressToken": 1.5}},
            },
            200,
            "params._meta.progressToken must be a string or an integer",
        ),
        # tools/call's own members (the door: tool-call-invalid)
        (
            {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"arguments": {}}},
            200,
            "tools/call's name must be a string: the tool's name",
        ),
        (
            call("get_order", ["O-1001"]),
            200,
            "tools/call's arguments must be an object (or absent)",
        ),
        (
            {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": "get_order"},
            200,
            "tools/call needs params: an object with the tool's name and arguments",
        ),
    ],
)
def test_protocol_errors_name_the_member_without_pydantic_internals(
    served: tuple[str, Path],
    token_for: Callable[..., str],
    body: Any,
    status: int,
    message: str,
) -> None:
    base, _ = served
    answer = raw_post(base, body, token=token_for("order-agent"))  # type: ignore[arg-type]
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert error["code"] == -32602
    assert error["message"] == message
    for internal in INTERNALS:
        assert internal not in answer.text, answer.text


def test_the_modern_revisions_params_errors_name_the_member_too(
    served: tuple[str, Path], token_for: Callable[..., str]
) -> None:
    base, _ = served
    body = (
        '{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"cursor":5,' + MODERN_META + "}}"
    )
    answer = post_bytes(
        base, body.encode(), token_for("order-agent"), "2026-07-28", **{"Mcp-Method": "tools/list"}
    )
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"] == {"code": -32602, "message": "params.cursor must be a string"}
