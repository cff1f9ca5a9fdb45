"""``spangate policy diff``: what a reviewer of a policy change needs to see."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from builders import EXAMPLE, REPO, base, where_in

from gateway.cli import main
from gateway.errors import PolicyError
from gateway.policy.diff import AccessChange, diff_policies, render_diff
from gateway.policy.load import load_policy_data
from gateway.policy.model import Policy
from gateway.runtime import load_compiled


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


# --- secrets, and the tools without them ---------------------------------------------------------

WITH_SECRETS = Path(__file__).parent / "data" / "policy.example.yaml"  # introspection, ${VAR}s
SECRET_LINE = "      client_secret: ${OKTA_CLIENT_SECRET}\n"  # noqa: S105 - a line of the policy
OLD_SECRET, NEW_SECRET = "old-hunter2-secret", "new-swordfish-secret"


def _variant(tmp_path: Path, name: str, old: str, new: str) -> Path:
    text = WITH_SECRETS.read_text()
    assert text.count(old) == 1
    path = tmp_path / name
    path.write_text(text.replace(old, new))
    return path


def _diff(capsys: pytest.CaptureFixture[str], old: Path, new: Path) -> tuple[int, str, str, str]:
    """(exit code, text, JSON text, stderr of both runs)."""
    code = main(["policy", "diff", str(old), str(new)])
    text, err = capsys.readouterr()
    assert main(["policy", "diff", "--json", str(old), str(new)]) == code
    as_json, err2 = capsys.readouterr()
    return code, text, as_json, err + err2


def test_diff_shows_that_a_secret_changed_never_its_value(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OKTA_CLIENT_ID", "client-id")
    monkeypatch.setenv("OKTA_CLIENT_SECRET", OLD_SECRET)
    monkeypatch.setenv("ROTATED_SECRET", NEW_SECRET)
    rotated = _variant(
        tmp_path, "rotated.yaml", SECRET_LINE, "      client_secret: ${ROTATED_SECRET}\n"
    )
    code, text, as_json, err = _diff(capsys, WITH_SECRETS, rotated)
    assert code == 1
    for shown in (text, as_json, err):
        assert OLD_SECRET not in shown and NEW_SECRET not in shown
    assert text == (
        "issuers:\n"
        "  ~ okta: changed: introspection\n"
        "      introspection:\n"
        "        ~ client_secret: (secret, changed)\n"
    )
    [change] = json.loads(as_json)["changes"]
    assert change["lines"] == ["introspection:", "  ~ client_secret: (secret, changed)"]

    # The same value from another variable is no change; a change beside it says the secret did not.
    monkeypatch.setenv("ROTATED_SECRET", OLD_SECRET)
    assert main(["policy", "diff", str(WITH_SECRETS), str(rotated)]) == 0
    capsys.readouterr()
    moved = _variant(
        tmp_path,
        "moved.yaml",
        SECRET_LINE,
        SECRET_LINE + "      endpoint: https://dev-000000.okta.com/oauth2/default/v1/introspect\n",
    )
    code, text, as_json, err = _diff(capsys, WITH_SECRETS, moved)
    assert code == 1 and OLD_SECRET not in text + as_json + err
    assert "        client_secret: (secret, unchanged)\n" in text
    assert '        + endpoint: "https://dev-000000.okta.com/oauth2/default/v1/introspect"\n' in text

    # An added (or removed) secret is shown as (secret).
    plain = _variant(
        tmp_path,
        "plain.yaml",
        "    introspection:              # optional RFC 7662, for opaque tokens\n"
        "      client_id: ${OKTA_CLIENT_ID}          # ${VAR}: from the environment; "
        "missing -> load error\n" + SECRET_LINE,
        "",
    )
    code, text, as_json, err = _diff(capsys, plain, WITH_SECRETS)
    assert code == 1 and OLD_SECRET not in text + as_json + err
    assert '+ introspection: {"client_id": "client-id", "client_secret": "(secret)"}' in text
    code, text, _, _ = _diff(capsys, WITH_SECRETS, plain)
    assert '- introspection: {"client_id": "client-id", "client_secret": "(secret)"}' in text


def test_the_policy_tools_run_without_the_secrets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OKTA_CLIENT_ID", raising=False)
    monkeypatch.delenv("OKTA_CLIENT_SECRET", raising=False)
    note = (
        "issuers.okta.introspection.client_secret: environment variable OKTA_CLIENT_SECRET is "
        "not set: the text ${OKTA_CLIENT_SECRET} stands in for its value"
    )
    secret_at = where_in(WITH_SECRETS, "${OKTA_CLIENT_SECRET}")

    # Both sides name the same unset variables: no change, and a located note on stderr.
    copy = tmp_path / "same.yaml"
    copy.write_text(WITH_SECRETS.read_text())
    assert main(["policy", "diff", str(WITH_SECRETS), str(copy)]) == 0
    out, err = capsys.readouterr()
    assert out == "no changes\n"
    assert f"{secret_at}: warning: {note}" in err

    assert main(["policy", "check", str(WITH_SECRETS)]) == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"{WITH_SECRETS}: ok") and f"{secret_at}: warning: {note}" in err

    claims = json.dumps({"iss": "okta", "groups": ["support"], "tenant": "t1"})
    args = ["policy", "explain", "--policy", str(WITH_SECRETS), "--claims", claims]
    assert main([*args, "GET", "/v1/orders/O-1"]) == 0
    assert f"{secret_at}: warning: {note}" in capsys.readouterr().err

    cases = tmp_path / "cases.yaml"
    cases.write_text(
        f"policy: {WITH_SECRETS}\n"
        "cases:\n"
        "  - name: support reads an order\n"
        "    claims: {iss: okta, groups: [support], tenant: t1}\n"
        "    request: GET /v1/orders/O-1\n"
        "    expect: {allow: true}\n"
    )
    assert main(["policy", "test", str(cases)]) == 0
    out, err = capsys.readouterr()
    assert "1 cases, 1 passed, 0 failed" in out and f"{secret_at}: warning: {note}" in err

    # What reaches Spanner or serves refuses an unset variable.
    assert main(["policy", "check", "--database", str(WITH_SECRETS)]) == 2
    err = capsys.readouterr().err
    assert f"{secret_at}: issuers.okta.introspection.client_secret: environment variable " in err
    with pytest.raises(PolicyError, match="environment variable OKTA_CLIENT_SECRET is not set"):
        load_compiled(WITH_SECRETS, {})


def test_budget_changes_are_listed() -> None:
    old, new = base(), base()
    old["budgets"] = {"staff": {"calls": "60/min"}}
    new["budgets"] = {"staff": {"calls": "30/min", "rows": "100/hour"}, "blocked": {"calls": "1/s"}}
    text = render_diff(diff_policies(model(old), model(new)))
    assert "budgets:\n  ~ staff: changed: calls, rows\n" in text
    assert '      - calls: "60/min"\n      + calls: "30/min"\n      + rows: "100/hour"\n' in text
    assert '  + blocked: {"calls": "1/s"}\n' in text


# --- column masks ------------------------------------------------------------------------------


def masked(masks: dict[str, Any], roles: dict[str, Any] | None = None) -> dict[str, Any]:
    data = base()
    data["roles"].update(roles or {"leads": [{"groups": ["leads"]}]})
    data["queries"]["get_thing"]["mask"] = masks
    return data


def test_mask_changes_are_their_own_lines_per_query_column() -> None:
    old = masked({
        "Owner": {"with": "redact", "unless": ["leads"]},
        "Secret": {"with": "null"},
        "Token": {"with": "hash"},
    })  # fmt: skip
    new = masked({
        "Owner": {"with": "redact", "unless": ["leads", "staff"]},  # staff now sees it clear
        "Token": {"with": "hash", "domain": "tokens"},
        "Phone": {"with": "last4"},
    })  # fmt: skip
    diff = diff_policies(model(old), model(new))
    masks = [(c.kind, c.name, c.summary) for c in diff.changes if c.section == "masks"]
    assert masks == [
        ("~", "get_thing.Owner",
         "unless ['leads'] -> ['leads', 'staff'] (now clear for staff)"),
        ("~", "get_thing.Token",
         "domain (the column's own key) -> tokens: its hashes change"),
        ("+", "get_thing.Phone", "masked: last4, for every caller"),
        ("-", "get_thing.Secret",
         "no longer masked (was null, for every caller): now clear for every caller"),
    ]  # fmt: skip
    assert not [c for c in diff.changes if c.section == "queries"]  # not a query change too
    text = render_diff(diff)
    assert "masks:\n  ~ get_thing.Owner: unless ['leads'] -> ['leads', 'staff'] (now clear " \
        "for staff)\n" in text  # fmt: skip
    assert "  - get_thing.Secret: no longer masked (was null, for every caller): now clear for " \
        "every caller\n" in text  # fmt: skip


def test_a_mode_change_and_a_lost_unless_role_are_said() -> None:
    old = masked({"Owner": {"with": "hash", "unless": ["leads", "staff"]}})
    new = masked({"Owner": {"with": "redact", "unless": ["leads"]}})
    (change,) = [c for c in diff_policies(model(old), model(new)).changes if c.section == "masks"]
    assert change.summary == (
        "with hash -> redact; unless ['leads', 'staff'] -> ['leads'] (no longer clear for staff)"
    )
    gone = base()
    del gone["queries"]["get_thing"]
    gone["routes"] = [r for r in gone["routes"] if r["query"] != "get_thing"]
    removed = [c for c in diff_policies(model(old), model(gone)).changes if c.section == "masks"]
    assert [(c.kind, c.summary) for c in removed] == [
        ("-", "no longer masked (was hash, clear for leads, staff): the query is removed")
    ]


def test_a_role_change_names_the_masks_it_unmasks() -> None:
    old = masked({"Owner": {"with": "redact", "unless": ["leads"]}})
    new = masked({"Owner": {"with": "redact", "unless": ["leads"]}},
                 roles={"leads": [{"groups": ["leads"]}, {"groups": ["interns"]}]})  # fmt: skip
    (leads,) = [c for c in diff_policies(model(old), model(new)).changes if c.section == "roles"]
    assert leads.summary == "entries changed; who sees get_thing.Owner clear changes (unless)"
    added = masked({"Owner": {"with": "redact", "unless": ["leads"]}}, roles={"leads": []})
    added["roles"].pop("leads")
    added["queries"]["get_thing"].pop("mask")
    diff = diff_policies(model(added), model(old))
    (role,) = [c for c in diff.changes if c.section == "roles"]
    assert role.kind == "+" and role.summary.endswith(
        "; who sees get_thing.Owner clear changes (unless)"
    )
