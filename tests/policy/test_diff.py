"""``spangate policy diff``: what a reviewer of a policy change needs to see."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from builders import EXAMPLE, REPO, base

from gateway.cli import main
from gateway.policy.diff import AccessChange, diff_policies, render_diff
from gateway.policy.load import load_policy_data
from gateway.policy.model import Policy


def model(data: dict[str, Any]) -> Policy:
    return load_policy_data(data, base_dir=REPO).policy


def test_no_change_is_empty() -> None:
    assert diff_policies(model(base()), model(base())).empty
    assert render_diff(diff_policies(model(base()), model(base()))) == "no changes\n"


def test_role_flips_on_routes_are_listed_per_route_and_role() -> None:
    new = base()
    new["roles"]["agent"] = [{"scopes": ["things.read"]}]
    get, post = new["routes"]
    get["allow"] = ["agent"]  # staff: allow -> none; agent: none -> allow
    get["deny"] = []  # blocked: deny -> none
    post["deny"] = ["staff"]  # staff: allow -> deny
    post["path"] = "/things"
    diff = diff_policies(model(base()), model(new))
    assert diff.access == [
        AccessChange("GET /things/{id}", "staff", "allow", "none"),
        AccessChange("GET /things/{id}", "blocked", "deny", "none"),
        AccessChange("GET /things/{id}", "agent", "none", "allow"),
        AccessChange("POST /things", "staff", "allow", "deny"),
    ]
    text = render_diff(diff)
    assert "GET /things/{id}  staff: allow -> none  (no longer allowed)" in text
    assert "POST /things      staff: allow -> deny  (now denied (was allowed))" in text
    assert (
        "blocked: deny -> none  (deny lifted: its holders get in when another of their roles"
        in text
    )


def test_added_and_removed_routes_and_renamed_parameters() -> None:
    new = base()
    new["routes"][0]["path"] = "/things/{thing}"  # same shape: the same route
    new["queries"]["get_thing"]["sql"] = (
        "SELECT * FROM Things WHERE Tenant = @tenant AND Id = @thing"
    )
    new["queries"]["get_thing"]["params"]["thing"] = new["queries"]["get_thing"]["params"].pop("id")
    del new["routes"][1]
    new["routes"].append(
        {"path": "/v2/things", "method": "POST", "query": "add_thing", "allow": ["blocked"]}
    )
    diff = diff_policies(model(base()), model(new))
    assert diff.access == [
        AccessChange("POST /v2/things", "blocked", "none", "allow"),
        AccessChange("POST /things", "staff", "allow", "none"),
    ]
    routes = [(c.kind, c.name, c.summary) for c in diff.changes if c.section == "routes"]
    assert routes == [
        ("~", "GET /things/{thing}", "path /things/{id} -> /things/{thing}"),
        ("+", "POST /v2/things", "-> add_thing (allow ['blocked'], deny [])"),
        ("-", "POST /things", "was -> add_thing"),
    ]


def test_who_holds_a_role_statements_and_identities_are_compared() -> None:
    new = base()
    new["roles"]["staff"] = {
        "description": "now with contractors",
        "any_of": [{"groups": ["staff"]}, {"groups": ["contractors"]}],
    }
    new["queries"]["get_thing"]["sql"] += "\n  AND Deleted IS NULL"
    new["queries"]["get_thing"]["params"]["id"]["max_length"] = 36
    new["identities"]["writer"]["database_role"] = "admin"
    new["issuers"]["okta"]["audience"] = ["api", "api2"]
    diff = diff_policies(model(base()), model(new))
    assert diff.access == []  # no route changed, but who gets in did:
    changes = {(c.section, c.name): c for c in diff.changes}
    staff = changes[("roles", "staff")]
    assert staff.summary == (
        "entries changed; who holds it changes for GET /things/{id} (allow), POST /things (allow)"
    )
    assert staff.lines == ('+ {"groups": ["contractors"]}',)
    query = changes[("queries", "get_thing")]
    assert query.summary == "changed: sql, params"
    assert "  +   AND Deleted IS NULL" in query.lines
    assert '  + id: {"max_length": 36, "type": "STRING"}' in query.lines
    assert changes[("identities", "writer")].lines == (
        '- database_role: "writer"',
        '+ database_role: "admin"',
    )
    assert changes[("issuers", "okta")].summary == "changed: audience"


def test_the_cli_exits_1_on_changes_0_without_and_2_on_a_bad_policy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["policy", "diff", str(EXAMPLE), str(EXAMPLE)]) == 0
    assert capsys.readouterr().out == "no changes\n"
    changed = tmp_path / "policy.yaml"
    changed.write_text(
        EXAMPLE.read_text().replace("allow: [support]\n", "allow: [support, order-agent]\n")
    )
    assert main(["policy", "diff", str(EXAMPLE), str(changed)]) == 1
    out = capsys.readouterr().out
    assert "GET /v1/customers/{customer_id}  order-agent: none -> allow  (now allowed)" in out
    assert main(["policy", "diff", "--json", str(EXAMPLE), str(changed)]) == 1
    record = json.loads(capsys.readouterr().out)
    assert record["access"] == [
        {
            "route": "GET /v1/customers/{customer_id}",
            "role": "order-agent",
            "old": "none",
            "new": "allow",
        }
    ]
    broken = tmp_path / "broken.yaml"
    broken.write_text("version: 1\n")
    assert main(["policy", "diff", str(EXAMPLE), str(broken)]) == 2
    assert "missing required key 'spanner'" in capsys.readouterr().err
