"""``spangate policy explain`` and ``policy test`` express an MCP call: ``MCP tool_name`` with its
arguments, decided by ``decide`` as the gateway decides a tools/call (the route the tool names,
the arguments bound as its parameters, a write's ``idempotency_key`` set aside)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.errors import PolicyError
from gateway.policy.compiled import compile_policy
from gateway.policy.decide import decide
from gateway.policy.load import load_policy
from gateway.policy.simulate import SimulationError, principal_for, request_facts
from gateway.policy.testing import run_case_files

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "policy.example.yaml"
AGENT = {"iss": "okta", "scp": ["orders.read"], "tenant": "t1"}
ENV = {"OKTA_ISSUER": "https://idp.example/oauth2/default"}


def test_explain_an_mcp_call(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OKTA_ISSUER", ENV["OKTA_ISSUER"])
    base = ["policy", "explain", "--policy", str(EXAMPLE), "--claims", json.dumps(AGENT), "--json"]
    arguments = json.dumps({"order_id": "O-1001", "tenant": "t2"})
    assert main([*base, "--arguments", arguments, "MCP", "get_order"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["request"]["tool"] == "get_order"
    assert record["route"]["path"] == "/v1/orders/{order_id}"
    sources = {p["name"]: (p["value"], p["source"]) for p in record["params"]}
    assert sources == {"tenant": ("t1", "claim tenant"), "order_id": ("O-1001", "argument")}
    assert main([*base, "--arguments", "{}", "MCP", "get_customer"]) == 1
    assert json.loads(capsys.readouterr().out)["decision"]["reason"] == "no-allow-role"
    assert main([*base, "MCP", "drop_tables"]) == 1
    assert json.loads(capsys.readouterr().out)["decision"]["reason"] == "no-route"
    # a path argument obeys the router's segment rule, as the gateway decides it
    dots = json.dumps({"order_id": ".."})
    assert main([*base, "--arguments", dots, "MCP", "get_order"]) == 1
    assert json.loads(capsys.readouterr().out)["decision"]["reason"] == "path-invalid"


def test_arguments_belong_to_mcp_calls_and_bodies_to_http() -> None:
    with pytest.raises(SimulationError) as caught:
        request_facts("MCP list_orders", {"limit": 1})
    assert caught.value.key == "body"
    with pytest.raises(SimulationError) as caught:
        request_facts("GET /v1/orders", None, {"limit": 1})
    assert caught.value.key == "arguments"


def test_a_write_tools_idempotency_key_is_set_aside() -> None:
    policy = compile_policy(load_policy(EXAMPLE, env=ENV))
    writer = principal_for(policy.model, {"iss": "okta", "scp": ["orders.write"], "tenant": "t1"})
    arguments = {"order_id": "O-1", "customer_id": "C-1", "total_cents": 5, "idempotency_key": "k"}
    decision = decide(policy, request_facts("MCP create_order", None, arguments), writer)
    assert decision.allow and decision.bound is not None
    assert "idempotency_key" not in decision.bound.values
    # a read's tool has no such argument: it is an unknown parameter there
    agent = principal_for(policy.model, AGENT)
    refused = decide(
        policy, request_facts("MCP list_orders", None, {"idempotency_key": "k"}), agent
    )
    assert refused.reason == "param-unknown"


def test_a_case_with_arguments_on_an_http_request_is_a_problem(tmp_path: Path) -> None:
    path = tmp_path / "cases.yaml"
    path.write_text(
        f"policy: {EXAMPLE}\ncases:\n"
        + textwrap.indent(
            textwrap.dedent(
                """\
                - name: arguments on HTTP
                  claims: {iss: okta, scp: [orders.read], tenant: t1}
                  request: GET /v1/orders
                  arguments: {limit: 1}
                  expect: {allow: true}
                """
            ),
            "  ",
        )
    )
    with pytest.raises(PolicyError) as caught:
        run_case_files([path], env=ENV)
    [problem] = caught.value.problems
    assert problem.where == "cases[0].arguments"
    assert (problem.line, problem.column) == (6, 16)  # the arguments mapping
    assert "arguments are for an MCP call" in problem.message
