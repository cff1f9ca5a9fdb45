"""The MCP tools of a policy, per token, and its RFC 9728 metadata: pure, on the example policy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from gateway.errors import BadRequest
from gateway.mcp.metadata import resource_metadata
from gateway.mcp.tools import arguments_of, find_tool, input_schema, tools_for
from gateway.openapi import path_schema
from gateway.policy.compiled import CompiledPolicy, compile_policy
from gateway.policy.load import load_policy
from gateway.policy.simulate import principal_for
from gateway.settings import Settings
from gateway.spanner.idempotency import HEADER

ISSUER = "https://idp.example/oauth2/default"


def example(
    repo: Path, edit: tuple[str, str] | None = None, tmp: Path | None = None
) -> CompiledPolicy:
    path = repo / "policy.example.yaml"
    if edit is not None:
        assert tmp is not None
        text = path.read_text()
        assert text.count(edit[0]) == 1
        path = tmp / "policy.yaml"
        path.write_text(text.replace(*edit))
    return compile_policy(load_policy(path, env={"OKTA_ISSUER": ISSUER}))


def names(policy: CompiledPolicy, claims: dict[str, Any]) -> list[str]:
    principal = principal_for(policy.model, {"sub": "someone", **claims})
    return [t["name"] for t in tools_for(policy, principal, None)]


def test_the_tools_are_the_routes_the_roles_allow_deny_winning(repo: Path) -> None:
    policy = example(repo)
    assert names(policy, {"groups": ["support"], "tenant": "t1"}) == [
        "get_order", "list_orders", "list_order_items", "get_customer", "cancel_order"
    ]  # fmt: skip
    assert names(policy, {"scp": ["orders.read"], "tenant": "t1"}) == [
        "get_order", "list_orders", "list_order_items"
    ]  # fmt: skip
    assert names(policy, {"groups": ["support", "suspended"], "tenant": "t1"}) == []  # deny wins
    assert names(policy, {"groups": ["marketing"]}) == []
    # an agent acting for a suspended person: the deny role bites the delegated token too
    acting = {"groups": ["support", "suspended"], "act": {"sub": "order-agent"}}
    assert names(policy, {**acting, "scp": ["orders.read"]}) == []
    acting["groups"] = ["support"]
    assert names(policy, {**acting, "scp": ["orders.read"]}) == [
        "get_order", "list_orders", "list_order_items"
    ]  # fmt: skip


def test_tool_names_a_route_and_false_keeps_it_off(repo: Path, tmp_path: Path) -> None:
    renamed = example(
        repo, ("    query: get_customer", "    query: get_customer\n    tool: customer"), tmp_path
    )
    support = {"groups": ["support"], "tenant": "t1"}
    assert names(renamed, support)[-2] == "customer"
    assert find_tool(renamed, "customer") is renamed.routes[3]
    assert find_tool(renamed, "get_customer") is None
    hidden = example(
        repo, ("    query: get_customer", "    query: get_customer\n    tool: false"), tmp_path
    )
    assert "get_customer" not in names(hidden, support)
    assert find_tool(hidden, "get_customer") is None


def test_a_tool_with_approval_takes_approval_id(repo: Path) -> None:
    policy = example(repo)
    route = next(r for r in policy.routes if r.query_name == "cancel_order")
    schema = input_schema(route)
    assert schema["properties"]["approval_id"]["pattern"] == "^[0-9a-f]{32}$"
    assert schema["required"] == ["order_id"]  # approval_id is optional: absent asks for one
    path, values, headers = arguments_of(route, {"order_id": "O-1", "approval_id": "a" * 32})
    assert (path, values, headers) == ({"order_id": "O-1"}, {}, [(b"approval-id", b"a" * 32)])
    assert "approval_id" not in input_schema(policy.routes[0])["properties"]


def test_input_schema_hides_claims_and_requires_path_parameters(repo: Path) -> None:
    policy = example(repo)
    get_order = input_schema(policy.routes[0])
    assert get_order == {
        "type": "object",
        "properties": {"order_id": path_schema(policy.routes[0].query.params["order_id"])},
        "additionalProperties": False,
        "required": ["order_id"],
    }
    assert get_order["properties"]["order_id"] == {
        "type": "string", "maxLength": 36, "pattern": "^(?!\\.\\.?$)[^/\\\\\\x00-\\x1f\\x7f]+$"
    }  # fmt: skip  # one path segment, never null (the OpenAPI document's path schema)
    create = input_schema(policy.routes[4])
    assert create["required"] == ["order_id", "customer_id", "total_cents"]
    assert create["properties"]["currency"] == {
        "type": "string", "enum": ["USD", "EUR", "GBP"], "default": "USD"
    }  # fmt: skip
    assert create["properties"]["order_id"]["pattern"] == "^O-[0-9]{1,12}$"
    assert "tenant" not in create["properties"] and "idempotency_key" in create["properties"]
    assert "idempotency_key" not in input_schema(policy.routes[1])["properties"]  # a read


@pytest.mark.parametrize(
    ("key", "header"),
    [
        ("k-1", [(HEADER, b"k-1")]),
        (None, []),
        (7, [(HEADER, b"")]),
        ("é", [(HEADER, "é".encode())]),
    ],
)
def test_the_idempotency_key_argument_is_the_header(repo: Path, key: Any, header: Any) -> None:
    create = example(repo).routes[4]
    path, values, given = arguments_of(create, {"order_id": "O-1", "idempotency_key": key})
    assert (path, values) == ({}, {"order_id": "O-1"})  # POST /v1/orders: a body parameter
    assert given == header
    read = example(repo).routes[1]
    assert arguments_of(read, {"idempotency_key": "k"}) == (
        {},
        {"idempotency_key": "k"},
        [],
    )  # param-unknown later


def test_path_arguments_bind_as_the_path_would(repo: Path) -> None:
    get_order = example(repo).routes[0]
    assert arguments_of(get_order, {"order_id": "O-1"}) == ({"order_id": "O-1"}, {}, [])
    assert arguments_of(get_order, {"order_id": 12}) == ({"order_id": "12"}, {}, [])  # its text
    assert arguments_of(get_order, {}) == ({}, {}, [])  # param-missing later, when binding


@pytest.mark.parametrize("value", ["..", ".", "a/b", "", "a\x00b", "a\\b", None, True, 1.5, ["a"]])
def test_path_arguments_obey_the_routers_segment_rule(repo: Path, value: Any) -> None:
    get_order = example(repo).routes[0]
    with pytest.raises(BadRequest) as caught:
        arguments_of(get_order, {"order_id": value})
    assert caught.value.code == "path-invalid"
    assert caught.value.extra == {"param": "order_id"}


def test_scopes_supported_are_those_of_roles_some_route_allows(repo: Path, tmp_path: Path) -> None:
    """A deny-only role's scopes (and an unused role's) grant nothing: not advertised."""
    edit = (
        "    - groups: [suspended]         # agent acting for a suspended person\n",
        "    - groups: [suspended]         # agent acting for a suspended person\n"
        "    - scopes: [orders.suspended]\n"
        "  unused:\n"
        "    - scopes: [orders.unused]\n",
    )
    policy = example(repo, edit, tmp_path)
    scopes = resource_metadata(policy, "https://gw.example/mcp")["scopes_supported"]
    assert scopes == ["orders.read", "orders.write"]


def test_protected_resource_metadata(repo: Path) -> None:
    assert resource_metadata(example(repo), "https://gw.example/mcp") == {
        "resource": "https://gw.example/mcp",
        "authorization_servers": [ISSUER],
        "scopes_supported": ["orders.read", "orders.write"],
        "bearer_methods_supported": ["header"],
        "resource_name": "spangate",
    }


def test_workload_issuers_are_no_authorization_servers(repo: Path, tmp_path: Path) -> None:
    """A cluster's service-account issuer gives an MCP client no token: not advertised."""
    edit = (
        "issuers:\n",
        "issuers:\n"
        "  cluster:\n"
        "    issuer: https://k8s.example\n"
        "    audience: https://gw.example\n"
        "    preset: kubernetes\n",
    )
    policy = example(repo, edit, tmp_path)
    assert "cluster" in policy.model.issuers
    document = resource_metadata(policy, "https://gw.example/mcp")
    assert document["authorization_servers"] == [ISSUER]


@pytest.mark.parametrize(
    ("template", "reserved"),
    [
        ("/mcp", "/mcp"),
        ("/mcp/{tool}", "/mcp"),
        ("/.well-known/oauth-protected-resource", "/.well-known/oauth-protected-resource"),
        ("/.well-known/oauth-protected-resource/mcp", "/.well-known/oauth-protected-resource"),
    ],
)
def test_the_mcp_paths_are_reserved(template: str, reserved: str) -> None:
    from gateway.policy.validate import template_problems

    assert template_problems(template) == [
        f"{reserved} is reserved for the gateway's own endpoints"
    ]
    assert template_problems("/mcpx") == []


@pytest.mark.parametrize(
    "url",
    [
        "https://user:secret@gw.example",
        "https://gw.example@evil.example",
        "https://gw.example/?x=1",
        "https://gw.example?",
        "https://gw.example#top",
        "https://gw.example:99999",
        "ftp://gw.example",
        "https://",
    ],
)
def test_the_public_url_refuses_userinfo_query_fragment_and_bad_hosts(url: str) -> None:
    with pytest.raises(ValidationError):
        Settings(public_url=url)


def test_the_public_url_keeps_a_path_prefix() -> None:
    assert Settings(public_url="https://gw.example/api/").public_url == "https://gw.example/api"
    assert Settings(public_url="http://[::1]:8443").public_url == "http://[::1]:8443"
