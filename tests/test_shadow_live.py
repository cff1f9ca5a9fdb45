"""A policy change rolled out end to end: a real ``spangate serve --shadow-policy`` on the example
policy with a candidate that removes a role, real tokens from the real OpenID provider, calls over
HTTP and MCP; then ``spangate policy replay`` over the audit file it wrote.

The candidate removes ``order-agent`` (the read scope's role): the agent's calls are answered as
the live policy decides (200), each leaves ``metadata.shadow`` in its event and one count in
``spangate_shadow_disagreements_total``, and the replay reports exactly those calls as flips
(exit 1); the live policy itself replays with no flip (exit 0); garbage is unusable (exit 2)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from served import EXAMPLE_POLICY, SPANGATE, Served, served

from gateway.dev.idp import IdpProcess
from gateway.policy.load import load_policy

Token = Callable[..., str]


def without_order_agent(text: str) -> str:
    """The example policy less the role ``order-agent``: its entry under ``roles:`` and under
    ``budgets:`` (each just before ``agent-for-support:``), and its place in every ``allow``."""
    text = re.sub(r"\n  order-agent:.*?\n(?=  agent-for-support:)", "\n", text, flags=re.S)
    text = text.replace("[support, order-agent, agent-for-support]", "[support, agent-for-support]")
    assert "order-agent:" not in text and "[support, agent-for-support]" in text
    return text


@pytest.fixture(scope="module")
def candidate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("candidate") / "candidate.yaml"
    path.write_text(without_order_agent(EXAMPLE_POLICY.read_text()))
    return path


@pytest.fixture(scope="module")
def shadowed(
    demo_database: str,
    idp: IdpProcess,
    tmp_path_factory: pytest.TempPathFactory,
    audit_key: str,
    candidate: Path,
) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("shadowed")
    with served(
        folder,
        database=demo_database,
        issuer=idp.issuer,
        audit_key=audit_key,
        env={"SPANGATE_SHADOW_POLICY": str(candidate)},
    ) as server:
        yield server


def get(server: Served, path: str, token: str) -> httpx.Response:
    return httpx.get(f"{server.base}{path}", headers={"Authorization": f"Bearer {token}"}, timeout=30)


def tool_call(server: Served, tool: str, arguments: dict[str, Any], token: str) -> httpx.Response:
    body = {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "tools/call",
        "params": {"name": tool, "arguments": arguments},
    }
    headers = {
        "Authorization": f"Bearer {token}",
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": "2025-11-25",
    }
    return httpx.post(f"{server.base}/mcp", json=body, headers=headers, timeout=30)


def disagreements(text: str) -> dict[tuple[str, str, str], float]:
    found = {}
    for line in text.splitlines():
        if line.startswith("spangate_shadow_disagreements_total{"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
            found[(labels["route"], labels["live"], labels["shadow"])] = float(line.rsplit(" ", 1)[1])
    return found


def replay(*args: str, audit_key: str, issuer: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SPANGATE_AUDIT_KEY": audit_key, "OKTA_ISSUER": issuer}
    return subprocess.run(
        [*SPANGATE, "policy", "replay", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_the_shadow_records_disagreements_and_replay_reports_exactly_them(
    shadowed: Served, candidate: Path, token_for: Token, idp: IdpProcess, audit_key: str, tmp_path: Path
) -> None:
    agent, support, outsider = token_for("order-agent"), token_for("support-console"), token_for("outsider")
    ready = httpx.get(f"{shadowed.base}/readyz", timeout=30).json()
    expected = load_policy(candidate, env={"OKTA_ISSUER": idp.issuer}).sha256
    assert ready["shadow_policy_sha256"] == expected != ready["policy_sha256"]

    # the answers are the live policy's: the agent still reads
    agreed = [get(shadowed, "/v1/orders/O-1001", support), get(shadowed, "/v1/orders/O-1001", outsider)]
    assert [r.status_code for r in agreed] == [200, 403]
    # a paginated query: a first page, then the next one with its cursor (both agree)
    first = get(shadowed, "/v1/orders?limit=1", support)
    assert first.status_code == 200 and first.json()["next_cursor"], first.text
    following = httpx.get(
        f"{shadowed.base}/v1/orders",
        params={"limit": "1", "cursor": first.json()["next_cursor"]},
        headers={"Authorization": f"Bearer {support}"},
        timeout=30,
    )
    assert following.status_code == 200, following.text
    agreed += [first, following]
    flipped = [get(shadowed, "/v1/orders/O-1001", agent), get(shadowed, "/v1/orders/O-1001/items", agent)]
    assert [r.status_code for r in flipped] == [200, 200], flipped[0].text
    mcp = tool_call(shadowed, "get_order", {"order_id": "O-1001"}, agent)
    assert mcp.status_code == 200 and mcp.json()["result"]["isError"] is False, mcp.text
    flipped.append(mcp)
    flipped_ids = {r.headers["x-request-id"] for r in flipped}

    events = {
        e["protoPayload"]["requestMetadata"]["requestAttributes"]["id"]: e for e in shadowed.events()
    }
    paged = events[following.headers["x-request-id"]]["protoPayload"]["metadata"]["pagination"]
    assert paged["cursor"] == "opened"
    shadowed_ids = {rid for rid, e in events.items() if "shadow" in e["protoPayload"]["metadata"]}
    assert shadowed_ids == flipped_ids
    for rid in flipped_ids:
        metadata = events[rid]["protoPayload"]["metadata"]
        assert metadata["decision"]["allow"] is True and metadata["decision"]["rule"] == "order-agent"
        assert metadata["shadow"]["allow"] is False
        assert metadata["shadow"]["reason"] == "no-allow-role"
        assert metadata["shadow"]["rule"] is None and metadata["shadow"]["policySha256"] == expected
        assert metadata["claimsRead"]["scopes"]["orders.read"] is True  # the names roles test
    assert events[mcp.headers["x-request-id"]]["protoPayload"]["metadata"]["transport"] == "mcp"

    metrics = disagreements(httpx.get(f"{shadowed.base}/metrics", timeout=30).text)
    assert metrics == {
        ("/v1/orders/{order_id}", "allowed", "no-allow-role"): 2,
        ("/v1/orders/{order_id}/items", "allowed", "no-allow-role"): 1,
    }

    # the replay of that trail under the candidate: exactly those calls flip
    trail = [str(p) for p in shadowed.trail_files()]
    done = replay("--policy", str(candidate), "--json", *trail, audit_key=audit_key, issuer=idp.issuer)
    assert done.returncode == 1, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["flips"] == {"allow->deny": 3, "deny->allow": 0}
    groups = {(g["kind"], g["route"], g["role"]): g for g in report["groups"]}
    assert set(groups) == {
        ("allow->deny", "GET /v1/orders/{order_id}", "order-agent"),
        ("allow->deny", "GET /v1/orders/{order_id}/items", "order-agent"),
    }
    orders = groups[("allow->deny", "GET /v1/orders/{order_id}", "order-agent")]
    assert orders["count"] == 2 and orders["transports"] == {"http": 1, "mcp": 1}
    items = groups[("allow->deny", "GET /v1/orders/{order_id}/items", "order-agent")]
    assert {*orders["examples"], *items["examples"]} == flipped_ids
    assert report["notReplayed"]["count"] == 0 and report["replayed"] == len(events)

    text = replay("--policy", str(candidate), *trail, audit_key=audit_key, issuer=idp.issuer)
    assert text.returncode == 1 and "allow -> deny:" in text.stdout
    assert "GET /v1/orders/{order_id}  role order-agent: 2 calls (http 1, mcp 1)" in text.stdout

    same = replay("--policy", str(EXAMPLE_POLICY), *trail, audit_key=audit_key, issuer=idp.issuer)
    assert same.returncode == 0, same.stdout + same.stderr
    assert "flips: 0 allow -> deny, 0 deny -> allow" in same.stdout

    garbage = tmp_path / "garbage.jsonl"
    garbage.write_text("this is not an audit trail\n")
    bad = replay("--policy", str(candidate), str(garbage), audit_key=audit_key, issuer=idp.issuer)
    assert bad.returncode == 2 and "not a JSON audit event" in bad.stderr
    wrong_key = replay("--policy", str(candidate), *trail, audit_key="another-key", issuer=idp.issuer)
    assert wrong_key.returncode == 2 and "does not verify" in wrong_key.stderr

    diff = subprocess.run(
        [*SPANGATE, "policy", "diff", str(EXAMPLE_POLICY), str(candidate), "--audit", *trail],
        capture_output=True,
        text=True,
        env={**os.environ, "OKTA_ISSUER": idp.issuer},
        timeout=120,
    )
    assert diff.returncode == 1, diff.stderr
    lines = diff.stdout.splitlines()
    line = next(x for x in lines if x.strip().startswith("GET /v1/orders/{order_id} "))
    assert "order-agent: allow -> none" in line
    assert "[recorded: 2 calls by its holders, 2 allowed]" in line
