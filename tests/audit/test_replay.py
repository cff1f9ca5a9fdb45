"""Replay: events built by the real event builder from real decisions, recomputed under candidates.

Each test decides a call under a live policy (``decide``), builds its audit event as the gateway
does (``build_event``, sealed by the real ``Chain``), reads it back (``recorded``) and replays it
under a candidate (``replay``): no network, no fakes.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from replaying import decided_call, rec, sealed_event

from gateway.audit.chain import AuditKeys, Chain
from gateway.audit.event import CallRecord, build_event, redacted
from gateway.audit.recorded import Skipped, TrailUnreadable, read_trail, recorded
from gateway.audit.replay import NotReplayed, Replayed, changes, replay
from gateway.audit.replay_report import UNKNOWN_ROLE, ReplayReport, traffic
from gateway.auth.principal import Principal
from gateway.policy.compiled import CompiledPolicy, compile_policy
from gateway.policy.decide import RequestFacts, decide
from gateway.policy.diff import diff_policies, render_diff
from gateway.policy.load import load_policy_data
from gateway.policy.simulate import principal_for, request_facts

REPO = Path(__file__).resolve().parents[2]
KEYS = AuditKeys.from_secret(b"replay-test-key")

LIVE: dict[str, Any] = {
    "version": 1,
    "spanner": {"project": "p", "instance": "i", "database": "d"},
    "issuers": {
        "okta": {"issuer": "https://idp.example/oauth2/default", "audience": "api", "preset": "okta"}
    },
    "identities": {"reader": {"database_role": "reader"}, "writer": {"database_role": "writer"}},
    "roles": {
        "staff": [{"groups": ["staff"]}],
        "agent": [{"scopes": ["things.read"], "claims": {"kind": "agent"}}],
        "agent-for-staff": [{"groups": ["staff"], "claims": {"act.sub": "bot"}}],
        "blocked": [{"claims": {"sub": ["user-666"]}}],
    },
    "queries": {
        "get_thing": {
            "identity": "reader",
            "sql": "SELECT * FROM Things WHERE Tenant = @tenant AND Id = @id",
            "params": {
                "id": {"type": "STRING", "max_length": 10},
                "tenant": {"type": "STRING", "from": "claim.tenant"},
            },
        },
        "list_things": {
            "identity": "reader",
            "sql": "SELECT * FROM Things WHERE Tenant = @tenant LIMIT @limit",
            "params": {
                "tenant": {"type": "STRING", "from": "claim.tenant"},
                "limit": {"type": "INT64", "min": 1, "max": 100, "default": 20},
            },
        },
        "add_thing": {
            "identity": "writer",
            "sql": "INSERT INTO Things (Tenant, Id, Size) VALUES (@tenant, @id, @size)",
            "params": {
                "id": {"type": "STRING"},
                "tenant": {"type": "STRING", "from": "claim.tenant"},
                "size": {"type": "INT64", "min": 0},
            },
        },
    },
    "routes": [
        {
            "path": "/things/{id}",
            "method": "GET",
            "query": "get_thing",
            "allow": ["staff", "agent", "agent-for-staff"],
            "deny": ["blocked"],
        },
        {"path": "/things", "method": "GET", "query": "list_things", "allow": ["staff"]},
        {"path": "/things", "method": "POST", "query": "add_thing", "allow": ["staff"]},
    ],
    "audit": {"sinks": [{"type": "stdout"}], "redact": ["size"]},
}


def policy(data: dict[str, Any]) -> CompiledPolicy:
    return compile_policy(load_policy_data(data, base_dir=REPO))


def edited(**changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(LIVE)
    data.update(changes)
    return data


LIVE_POLICY = policy(LIVE)
STAFF = {"iss": "okta", "sub": "user-1", "groups": ["staff"], "tenant": "t1"}


def who(live: CompiledPolicy = LIVE_POLICY, **claims: Any) -> Principal:
    return principal_for(live.model, {**STAFF, **claims})


def event_of(
    request: str,
    principal: Principal,
    live: CompiledPolicy = LIVE_POLICY,
    body: dict[str, Any] | None = None,
    arguments: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The sealed audit event of ``request`` by ``principal`` under ``live``."""
    call = decided_call(request, principal, live, body=body, arguments=arguments)
    return sealed_event(call, live, KEYS)


def outcome(
    candidate: CompiledPolicy, event: dict[str, Any], key: bytes | None = KEYS.redact
) -> Replayed | NotReplayed:
    return replay(candidate, rec(event), key)


REQUESTS = [
    ("GET /things/T-1", {}),
    ("GET /things/T-1", {"groups": ["sales"]}),
    ("GET /things/T-1", {"sub": "user-666"}),
    ("GET /things/T-1", {"tenant": None}),
    ("GET /things/T-12345678901", {}),
    ("GET /things?limit=5", {}),
    ("GET /things", {}),
    ("GET /things?limit=500", {}),
    ("GET /nothing", {}),
    ("DELETE /things/T-1", {}),
    ("GET /things/T-1", {"groups": [], "scp": ["things.read"], "kind": "agent"}),
    ("GET /things/T-1", {"groups": ["staff"], "act": {"sub": "bot"}}),
]


@pytest.mark.parametrize(("request_line", "claims"), REQUESTS)
def test_the_live_policy_itself_changes_nothing(request_line: str, claims: dict[str, Any]) -> None:
    principal = who(**claims)
    if claims.get("tenant", "") is None:
        principal = principal_for(LIVE_POLICY.model, {k: v for k, v in STAFF.items() if k != "tenant"})
    event = event_of(request_line, principal)
    result = outcome(LIVE_POLICY, event)
    assert isinstance(result, Replayed), result
    assert changes(rec(event), result, KEYS.redact) == []
    assert result.reason == event["protoPayload"]["metadata"]["decision"]["reason"]


def test_a_write_with_a_redacted_value_and_an_mcp_call_change_nothing() -> None:
    write = event_of("POST /things", who(), body={"id": "T-9", "size": 7})
    assert write["protoPayload"]["request"]["params"]["size"]["value"].startswith("redacted:")
    result = outcome(LIVE_POLICY, write)
    assert isinstance(result, Replayed) and result.unchecked == ("size",)
    assert changes(rec(write), result, KEYS.redact) == []
    tool = event_of("MCP get_thing", who(), arguments={"id": "T-1"})
    assert tool["protoPayload"]["metadata"]["mcp"]["tool"] == "get_thing"
    result = outcome(LIVE_POLICY, tool)
    assert isinstance(result, Replayed) and result.allow and result.params_known
    assert changes(rec(tool), result, KEYS.redact) == []


def test_removing_a_role_from_a_route_flips_its_calls_to_deny() -> None:
    data = edited()
    data["routes"][0]["allow"] = ["agent", "agent-for-staff"]
    candidate = policy(data)
    event = event_of("GET /things/T-1", who())
    result = outcome(candidate, event)
    assert isinstance(result, Replayed)
    assert (result.allow, result.reason) == (False, "no-allow-role")
    assert changes(rec(event), result, KEYS.redact) == ["allow->deny"]


def test_a_new_route_flips_no_route_to_allow_with_its_parameters() -> None:
    data = edited()
    data["routes"].append(
        {"path": "/gadgets/{id}", "method": "GET", "query": "get_thing", "allow": ["staff"],
         "tool": "get_gadget"}
    )
    event = event_of("GET /gadgets/G-1", who())
    assert event["protoPayload"]["metadata"]["decision"]["reason"] == "no-route"
    result = outcome(policy(data), event)
    assert isinstance(result, Replayed) and result.allow and result.params_known
    assert result.params == {"id": ("caller", "G-1"), "tenant": ("claim", "t1")}
    assert changes(rec(event), result, KEYS.redact) == ["deny->allow"]


def test_a_caller_refused_before_binding_flips_with_unknown_parameters() -> None:
    data = edited()
    data["routes"][1]["allow"] = ["staff", "agent"]
    agent = who(groups=[], scp=["things.read"], kind="agent")
    event = event_of("GET /things?limit=5", agent)
    result = outcome(policy(data), event)
    assert isinstance(result, Replayed) and result.allow and not result.params_known
    assert changes(rec(event), result, KEYS.redact) == ["deny->allow"]


def test_a_tighter_constraint_flips_and_a_new_default_changes_parameters() -> None:
    data = edited()
    data["queries"]["list_things"]["params"]["limit"].update(max=3, default=3)
    event = event_of("GET /things?limit=5", who())
    result = outcome(policy(data), event)
    assert isinstance(result, Replayed) and result.reason == "param-invalid"
    data = edited()
    data["queries"]["list_things"]["params"]["limit"]["default"] = 50
    defaulted = event_of("GET /things", who())
    assert defaulted["protoPayload"]["request"]["params"]["limit"]["defaulted"] is True
    result = outcome(policy(data), defaulted)
    assert isinstance(result, Replayed) and result.params == {
        "tenant": ("claim", "t1"),
        "limit": ("caller", 50),
    }
    assert changes(rec(defaulted), result, KEYS.redact) == ["params"]
    sent = event_of("GET /things?limit=5", who())  # a value the caller sent is no default
    assert changes(rec(sent), outcome(policy(data), sent), KEYS.redact) == []  # type: ignore[arg-type]


def test_removing_a_defaulted_parameter_is_no_refusal() -> None:
    data = edited()
    data["queries"]["list_things"]["sql"] = "SELECT * FROM Things WHERE Tenant = @tenant"
    del data["queries"]["list_things"]["params"]["limit"]
    defaulted = event_of("GET /things", who())
    result = outcome(policy(data), defaulted)
    assert isinstance(result, Replayed) and result.allow
    assert changes(rec(defaulted), result, KEYS.redact) == ["params"]
    sent = event_of("GET /things?limit=5", who())
    result = outcome(policy(data), sent)
    assert isinstance(result, Replayed) and result.reason == "param-unknown"


def test_a_role_on_a_claim_the_live_policy_never_read_cannot_be_replayed() -> None:
    data = edited()
    data["roles"]["contractor"] = [{"claims": {"employment": "contractor"}}]
    data["routes"][0]["deny"] = ["blocked", "contractor"]
    event = event_of("GET /things/T-1", who(employment="contractor"))
    assert "employment" not in event["protoPayload"]["metadata"]["claimsRead"]["claims"]
    result = outcome(policy(data), event)
    assert isinstance(result, NotReplayed)
    assert result.roles == ("contractor",) and "claim employment not recorded" in result.why


def test_a_claim_bound_to_a_redacted_parameter_is_a_hash_judged_with_the_key() -> None:
    live = edited(audit={"sinks": [{"type": "stdout"}], "redact": ["size", "tenant"]})
    live_policy = policy(live)
    event = event_of("GET /things/T-1", who(live_policy), live_policy)
    recorded_tenant = event["protoPayload"]["metadata"]["claimsRead"]["claims"]["tenant"]
    assert recorded_tenant.startswith("redacted:hmac-sha256:") and "t1" not in recorded_tenant
    data = copy.deepcopy(live)
    data["roles"]["staff"] = [{"groups": ["staff"], "claims": {"tenant": ["t1", "t3"]}}]
    result = outcome(policy(data), event)
    assert isinstance(result, Replayed) and result.allow
    assert changes(rec(event), result, KEYS.redact) == []
    data["roles"]["staff"] = [{"groups": ["staff"], "claims": {"tenant": "t2"}}]
    result = outcome(policy(data), event)
    assert isinstance(result, Replayed) and result.reason == "no-allow-role"
    unkeyed = outcome(policy(data), event, key=None)
    assert isinstance(unkeyed, NotReplayed) and "no audit key" in unkeyed.why
    data["roles"]["staff"] = [{"groups": ["staff"], "claims": {"tenant": {"matches": "t.*"}}}]
    matching = outcome(policy(data), event)
    assert isinstance(matching, NotReplayed) and "matches" in matching.why


def test_a_claim_of_the_actor_is_read_from_the_delegation_info() -> None:
    event = event_of("GET /things/T-1", who(act={"sub": "bot"}))
    assert "act.sub" not in event["protoPayload"]["metadata"]["claimsRead"]["claims"]
    data = edited()
    data["roles"]["agent-for-staff"] = [{"groups": ["staff"], "claims": {"act.sub": "other"}}]
    result = outcome(policy(data), event)
    assert isinstance(result, Replayed) and result.reason == "no-allow-role"


def test_a_google_sub_is_recorded_apart_from_the_email_subject() -> None:
    """Under ``preset: google`` the subject is the email: a role pinning the numeric ``sub`` and
    a parameter bound to it replay against the recorded ``sub``, never the email."""
    data = copy.deepcopy(LIVE)
    data["issuers"] = {
        "google": {
            "issuer": "https://accounts.google.com",
            "audience": "https://spangate.example",
            "preset": "google",
        }
    }
    data["roles"] = {"deployer": [{"issuer": "google", "claims": {"sub": "108562830391273012345"}}]}
    data["queries"] = {"get_thing": data["queries"]["get_thing"]}
    data["audit"] = {"sinks": [{"type": "stdout"}]}
    data["queries"]["get_thing"]["params"]["tenant"]["from"] = "claim.sub"
    data["routes"] = [{**data["routes"][0], "allow": ["deployer"], "deny": []}]
    live = policy(data)
    principal = principal_for(
        live.model,
        {
            "iss": "google",
            "sub": "108562830391273012345",
            "email": "deployer@shop.iam.gserviceaccount.com",
            "email_verified": True,
        },
    )
    event = event_of("GET /things/T-1", principal, live)
    payload = event["protoPayload"]
    assert payload["authenticationInfo"]["principalSubject"] == principal.subject
    assert payload["metadata"]["claimsRead"]["claims"]["sub"] == "108562830391273012345"
    assert payload["metadata"]["decision"]["allow"] is True
    result = outcome(live, event)
    assert isinstance(result, Replayed) and result.allow, result
    assert result.params is not None and result.params["tenant"] == ("claim", "108562830391273012345")
    assert changes(rec(event), result, KEYS.redact) == []
    data["roles"]["deployer"] = [{"issuer": "google", "claims": {"sub": principal.subject}}]
    result = outcome(policy(data), event)
    assert isinstance(result, Replayed) and result.reason == "no-allow-role"
    # where the subject is the sub (every other preset), it is recorded once, as the subject
    okta = event_of("GET /things/T-1", who(sub="user-666"))
    assert "sub" not in okta["protoPayload"]["metadata"]["claimsRead"]["claims"]


def test_an_older_event_is_replayed_as_far_as_it_goes() -> None:
    event = event_of("GET /things/T-1", who())
    del event["protoPayload"]["metadata"]["claimsRead"]
    result = outcome(LIVE_POLICY, event)
    assert isinstance(result, NotReplayed) and "groups not recorded" in result.why
    data = edited()
    data["roles"]["staff"] = [{"issuer": "okta"}]
    data["queries"]["get_thing"]["params"]["tenant"] = {"type": "STRING"}
    data["queries"]["get_thing"]["sql"] = "SELECT * FROM Things WHERE Id = @id"
    del data["queries"]["get_thing"]["params"]["tenant"]
    result = outcome(policy(data), event)
    assert isinstance(result, Replayed) and result.allow


def test_an_issuer_the_candidate_lacks_refuses_the_token() -> None:
    data = edited()
    data["issuers"] = {"corp": {"issuer": "https://login.corp.example", "audience": "gw"}}
    data["roles"]["agent"] = [{"scopes": ["things.read"]}]
    result = outcome(policy(data), event_of("GET /things/T-1", who()))
    assert isinstance(result, Replayed) and result.reason == "issuer-unknown"


def test_events_without_a_decision_are_skipped_and_garbage_is_refused(tmp_path: Path) -> None:
    event = event_of("GET /things/T-1", who())
    follow = copy.deepcopy(event)
    follow["protoPayload"]["metadata"]["settlement"] = {"outcome": "committed"}
    assert recorded(follow, "x") == Skipped("follow-up")
    anonymous = copy.deepcopy(event)
    anonymous["protoPayload"]["authenticationInfo"] = None
    assert recorded(anonymous, "x") == Skipped("no-principal")
    with pytest.raises(TrailUnreadable):
        recorded({"hello": "world"}, "x")
    trail = tmp_path / "audit.jsonl"
    trail.write_text('{"a": 1}\nnot json\n')
    with pytest.raises(TrailUnreadable, match=r"audit\.jsonl:2"):
        list(read_trail([trail], []))
    trail.write_text('{"a": 1}\n{"cut sh')  # a crash's last line: a note
    notes: list[str] = []
    assert len(list(read_trail([trail], notes))) == 1 and "cut short" in notes[0]


def test_the_report_groups_flips_per_route_and_role() -> None:
    data = edited()
    data["routes"][0]["allow"] = ["agent"]
    candidate = policy(data)
    report = ReplayReport(candidate.sha256)
    for request, claims in REQUESTS:
        if claims.get("tenant", "") is None:
            continue
        found = rec(event_of(request, who(**claims)))
        report.add(found, replay(candidate, found, KEYS.redact), KEYS.redact)
    assert report.flips == 2  # staff, and the agent acting for staff, on GET /things/{id}
    flips = {(g.route, g.role): g.count for g in report.groups.values() if g.kind == "allow->deny"}
    assert flips == {("GET /things/{id}", "staff"): 1, ("GET /things/{id}", "agent-for-staff"): 1}
    document = report.as_json()
    assert document["flips"] == {"allow->deny": 2, "deny->allow": 0}
    assert "allow -> deny:" in report.render()


def test_diff_traffic_counts_the_calls_each_change_touches() -> None:
    data = edited()
    data["routes"][0]["allow"] = ["agent"]
    diff = diff_policies(LIVE_POLICY.model, policy(data).model)
    events = [rec(event_of("GET /things/T-1", who())) for _ in range(3)]
    events.append(rec(event_of("GET /things/T-1", who(groups=["sales"]))))
    seen = traffic(events, diff.access)
    assert seen[("GET /things/{id}", "staff")].calls == 3
    assert seen[("GET /things/{id}", "staff")].allowed == 3
    assert seen[("GET /things/{id}", "agent-for-staff")].calls == 0


def test_diff_traffic_of_a_new_role_is_unknown_and_a_redefined_role_is_annotated() -> None:
    """A role the live policy lacks was never judged when the calls were recorded: its traffic
    is unknown, not 0 (a caller in group sales called); a role whose entries change is shown
    with the calls of its holders on each route naming it."""
    data = edited()
    data["roles"]["sales"] = [{"groups": ["sales"]}]
    data["routes"][0]["allow"].append("sales")
    data["roles"]["staff"] = [{"groups": ["staff-v2"]}]
    live_model = LIVE_POLICY.model
    diff = diff_policies(live_model, policy(data).model)
    redefined = [
        (route, c.name) for c in diff.changes if c.section == "roles" for route in c.routes
    ]
    assert ("GET /things/{id}", "staff") in redefined
    events = [rec(event_of("GET /things/T-1", who())) for _ in range(2)]
    events.append(rec(event_of("GET /things/T-1", who(groups=["sales"]))))
    seen = traffic(events, diff.access, live_roles=live_model.roles.keys(), redefined=redefined)
    sales = seen[("GET /things/{id}", "sales")]
    assert (sales.calls, sales.allowed, sales.unknown) == (None, None, UNKNOWN_ROLE)
    assert seen[("GET /things/{id}", "staff")].calls == 2
    text = render_diff(diff, seen)
    line = next(x for x in text.splitlines() if "sales: none -> allow" in x)
    assert line.endswith("[recorded: unknown (role not in the live policy)]")
    roles = text[text.index("\nroles:\n") :]
    assert (
        "GET /things/{id}  [recorded: 2 calls by its holders as the live policy defines it, "
        "2 allowed]"
    ) in roles


def test_the_shadow_decision_and_the_replay_agree() -> None:
    """What a shadow would record and what a replay of the live event computes are the same
    decision: both are ``decide`` on the same facts."""
    data = edited()
    data["routes"][0]["allow"] = ["agent"]
    candidate = policy(data)
    principal = who()
    shadow = decide(candidate, RequestFacts("GET", "/things/T-1"), principal)
    result = outcome(candidate, event_of("GET /things/T-1", principal))
    assert isinstance(result, Replayed)
    assert (result.allow, result.reason, result.rule) == (shadow.allow, shadow.reason, shadow.rule)


def test_a_claim_named_in_redact_is_hashed_and_a_bad_name_is_refused() -> None:
    from gateway.errors import PolicyError

    live = edited(audit={"sinks": [{"type": "stdout"}], "redact": ["size", "claim.kind"]})
    live_policy = policy(live)
    event = event_of("GET /things/T-1", who(live_policy, kind="agent"), live_policy)
    kind = event["protoPayload"]["metadata"]["claimsRead"]["claims"]["kind"]
    assert kind.startswith("redacted:hmac-sha256:") and "agent" not in kind
    result = outcome(live_policy, event)
    assert isinstance(result, Replayed) and changes(rec(event), result, KEYS.redact) == []
    for name, why in (("claim.email", "no role tests"), ("claim.sub", "authenticationInfo")):
        bad = edited(audit={"sinks": [{"type": "stdout"}], "redact": [name]})
        with pytest.raises(PolicyError, match=why):
            policy(bad)


def test_the_command_reads_workers_trails_and_rotations(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``spangate policy replay`` over one trail per worker, one of them rotated: every event of
    every file, as ``audit verify`` reads them; exit 1 on flips, 0 without, 2 on garbage."""

    from gateway.cli import main

    def write(path: Path, *events: dict[str, Any]) -> None:
        path.write_text("".join(json.dumps(e) + "\n" for e in events))

    staff, sales = who(), who(groups=["sales"])
    write(tmp_path / "audit.w1.jsonl.000001", event_of("GET /things/T-1", staff))
    write(tmp_path / "audit.w1.jsonl", event_of("GET /things/T-2", staff))
    third, fourth = event_of("GET /things/T-3", staff), event_of("GET /things/T-4", sales)
    write(tmp_path / "audit.w2.jsonl", third, fourth)
    files = sorted(str(p) for p in tmp_path.glob("audit.*"))
    data = edited()
    data["routes"][0]["allow"] = ["agent"]
    candidate, same = tmp_path / "candidate.yaml", tmp_path / "live.yaml"
    candidate.write_text(json.dumps(data))
    same.write_text(json.dumps(LIVE))
    key = tmp_path / "key"
    key.write_bytes(b"replay-test-key\n")

    keyed = ["--key-file", str(key), "--json"]
    assert main(["policy", "replay", "--policy", str(candidate), *keyed, *files]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["events"] == 4 and report["replayed"] == 4
    assert report["flips"] == {"allow->deny": 3, "deny->allow": 0}
    examples = report["groups"][0]["examples"]
    assert examples == ["r-GET /things/T-1", "r-GET /things/T-2", "r-GET /things/T-3"]  # in order
    assert main(["policy", "replay", "--policy", str(same), "--no-key", *files]) == 0
    assert "flips: 0 allow -> deny" in capsys.readouterr().out
    (tmp_path / "empty.jsonl").write_text("")
    assert main(["policy", "replay", "--policy", str(same), str(tmp_path / "empty.jsonl")]) == 2
    assert "no audit events" in capsys.readouterr().err
    assert main(["policy", "replay", "--policy", str(same), str(tmp_path / "missing.jsonl")]) == 2


def test_a_huge_redacted_array_claim_is_dropped_for_the_events_size_and_then_unknown() -> None:
    live = edited(audit={"sinks": [{"type": "stdout"}], "redact": ["size", "claim.kind"]})
    live_policy = policy(live)
    principal = who(live_policy, scp=["things.read"], kind=[f"k{i}" for i in range(2000)])
    event = event_of("GET /things/T-1", principal, live_policy)
    assert len(json.dumps(event)) <= 16384
    metadata = event["protoPayload"]["metadata"]
    assert metadata["claimsRead"]["claims"]["kind"] is None
    dropped = [t["field"] for t in metadata["truncated"]]
    assert "/protoPayload/metadata/claimsRead/claims/kind" in dropped
    result = outcome(live_policy, event)
    assert isinstance(result, Replayed) and result.allow  # staff, first: agent's claim not needed
    data = copy.deepcopy(live)
    data["routes"][0]["allow"] = ["agent", "staff"]
    result = outcome(policy(data), event)  # allowed either way: only the rule is uncertain
    assert isinstance(result, Replayed) and result.rule_uncertain == ("agent",)
    data["routes"][0]["deny"] = ["agent"]
    result = outcome(policy(data), event)
    assert isinstance(result, NotReplayed) and "cut for the event's size" in result.why


# -- pagination ----------------------------------------------------------------------------------
def _example(edit: Any = None) -> CompiledPolicy:
    import yaml

    text = (REPO / "policy.example.yaml").read_text()
    data = yaml.safe_load(text.replace("${OKTA_ISSUER:-", "").replace("default}", "default"))
    if edit is not None:
        edit(data)
    return compile_policy(load_policy_data(data, base_dir=REPO))


def test_paginated_calls_replay_unchanged_under_the_same_policy() -> None:
    example = _example()
    support = principal_for(
        example.model, {"iss": "okta", "sub": "u1", "groups": ["support"], "tenant": "t1"}
    )
    for request in ("GET /v1/orders", "GET /v1/orders?limit=5", "GET /v1/orders?limit=5&cursor=c1"):
        recorded_call = rec(event_of(request, support, live=example))
        found = replay(example, recorded_call, KEYS.redact)
        assert isinstance(found, Replayed) and found.allow, (request, found)
        assert found.params is not None and found.params["after_created"] == ("cursor", None)
        assert changes(recorded_call, found, KEYS.redact) == [], request


def test_a_cursor_presented_to_a_candidate_without_pagination_is_param_unknown() -> None:
    def unpaged(data: dict[str, Any]) -> None:
        query = data["queries"]["list_orders"]
        del query["pagination"]
        query["params"]["limit"] = {"type": "INT64", "min": 1, "max": 100, "default": 20}
        query["params"]["after_created"] = {"type": "TIMESTAMP", "nullable": True}
        query["params"]["after_order"] = {"type": "STRING", "nullable": True}

    example, candidate = _example(), _example(unpaged)
    support = principal_for(
        example.model, {"iss": "okta", "sub": "u1", "groups": ["support"], "tenant": "t1"}
    )
    first = rec(event_of("GET /v1/orders", support, live=example))
    assert first.cursor == "none"
    found = replay(candidate, first, KEYS.redact)
    assert isinstance(found, Replayed) and found.allow
    assert changes(first, found, KEYS.redact) == ["params"]  # from: cursor -> from: caller
    nxt = rec(event_of("GET /v1/orders?cursor=c1", support, live=example))
    assert nxt.cursor == "not-checked"
    found = replay(candidate, nxt, KEYS.redact)
    assert isinstance(found, Replayed) and (found.allow, found.reason) == (False, "param-unknown")
    assert changes(nxt, found, KEYS.redact) == ["allow->deny"]


# -- issuers -------------------------------------------------------------------------------------
def test_the_issuer_is_found_by_its_url_first_and_an_audience_change_is_not_replayed() -> None:
    data = copy.deepcopy(LIVE)
    data["roles"]["agent"] = [
        {"issuer": "okta", "scopes": ["things.read"], "claims": {"kind": "agent"}}
    ]
    live = policy(data)
    agent = who(live, groups=[], scp=["things.read"], kind="agent", aud=["api", "other"])
    event = event_of("GET /things/T-1", agent, live=live)
    third = event["protoPayload"]["authenticationInfo"]["thirdPartyPrincipal"]
    assert third["audience"] == ["api"]  # what the live issuer accepted, no more
    recorded_call = rec(event)

    renamed = copy.deepcopy(data)  # okta is now corp (same URL); an okta of another URL
    renamed["issuers"] = {
        "corp": data["issuers"]["okta"],
        "okta": {**data["issuers"]["okta"], "issuer": "https://elsewhere.example/oauth2/x"},
    }
    renamed["roles"]["agent"] = [
        {"issuer": "corp", "scopes": ["things.read"], "claims": {"kind": "agent"}}
    ]
    found = replay(policy(renamed), recorded_call, KEYS.redact)
    assert isinstance(found, Replayed) and (found.allow, found.rule) == (True, "agent")
    assert changes(recorded_call, found, KEYS.redact) == []

    dropped = copy.deepcopy(data)
    dropped["issuers"] = {
        "corp": {**data["issuers"]["okta"], "issuer": "https://elsewhere.example/"}
    }
    dropped["roles"]["agent"] = [{"scopes": ["things.read"], "claims": {"kind": "agent"}}]
    found = replay(policy(dropped), recorded_call, KEYS.redact)
    assert isinstance(found, Replayed) and found.reason == "issuer-unknown"

    audience = copy.deepcopy(data)
    audience["issuers"]["okta"]["audience"] = "another-api"
    found = replay(policy(audience), recorded_call, KEYS.redact)
    assert isinstance(found, NotReplayed) and "audience" in found.why


# -- what claimsRead records ---------------------------------------------------------------------
def test_claims_read_records_only_the_groups_and_scopes_a_policy_names() -> None:
    staff = who(groups=["staff", "payroll-secret"], scp=["things.read", "mail.read"])
    read = event_of("GET /things/T-1", staff)["protoPayload"]["metadata"]["claimsRead"]
    assert read["groups"] == {"staff": True}  # never payroll-secret
    assert read["scopes"] == {"things.read": True}
    found = replay(LIVE_POLICY, rec(event_of("GET /things/T-1", staff)), KEYS.redact)
    assert isinstance(found, Replayed) and found.rule == "staff"
    # a candidate testing a group no loaded policy named cannot be judged from the trail
    data = copy.deepcopy(LIVE)
    data["roles"]["staff"] = [{"groups": ["payroll-secret"]}]
    found = replay(policy(data), rec(event_of("GET /things/T-1", staff)), KEYS.redact)
    assert isinstance(found, NotReplayed) and "group payroll-secret not recorded" in found.why
    # an older event's whole list: complete, so a group not in it is not held
    older = event_of("GET /things/T-1", staff)
    older["protoPayload"]["metadata"]["claimsRead"]["groups"] = ["other"]
    found = replay(LIVE_POLICY, rec(older), KEYS.redact)
    assert isinstance(found, Replayed) and found.reason == "no-allow-role"


def test_claim_groups_in_redact_hashes_each_name_and_replay_hashes_the_candidates() -> None:
    data = copy.deepcopy(LIVE)
    data["audit"]["redact"] = ["size", "claim.groups", "claim.scopes"]
    live = policy(data)
    event = event_of("GET /things/T-1", who(live, groups=["staff"]), live=live)
    held = event["protoPayload"]["metadata"]["claimsRead"]["groups"]
    assert list(held.values()) == [True] and "staff" not in json.dumps(held)
    found = replay(live, rec(event), KEYS.redact)
    assert isinstance(found, Replayed) and found.rule == "staff"
    assert changes(rec(event), found, KEYS.redact) == []
    assert isinstance(replay(live, rec(event), None), NotReplayed)


def test_audit_claims_off_records_no_claims() -> None:
    from gateway.policy.reads import NO_READS

    facts = request_facts("GET /things/T-1")
    call = CallRecord(
        request_id="r", method="GET", path="/things/T-1", started=0.0, client=None, user_agent=None
    )
    call.principal = who()
    call.decision = decide(LIVE_POLICY, facts, call.principal)
    call.reads = NO_READS
    event = build_event(call, LIVE_POLICY, key=KEYS.redact)
    assert "claimsRead" not in event["protoPayload"]["metadata"]
    call.reads = None
    assert "claimsRead" in build_event(call, LIVE_POLICY, key=KEYS.redact)["protoPayload"]["metadata"]


# -- masking -------------------------------------------------------------------------------------
def test_masking_changes_are_a_shadow_disagreement_and_a_replay_change() -> None:
    from gateway.policy.shadow import disagreement

    def unmasked(data: dict[str, Any]) -> None:
        del data["queries"]["get_customer"]["mask"]

    example, candidate = _example(), _example(unmasked)
    claims = {"iss": "okta", "sub": "u1", "groups": ["support"], "tenant": "t1"}
    support = principal_for(example.model, claims)
    facts = request_facts("GET /v1/customers/C-1")
    live = decide(example, facts, support)
    assert live.allow and live.masked == ("Email",)
    assert disagreement(live, live.reason, decide(example, facts, support), example.sha256) is None
    found = disagreement(live, live.reason, decide(candidate, facts, support), candidate.sha256)
    assert found is not None and found.record["masked"] == [] and found.record["params"] is None

    recorded_call = rec(event_of("GET /v1/customers/C-1", support, live=example))
    assert recorded_call.live.masked == ("Email",)
    same = replay(example, recorded_call, KEYS.redact)
    assert isinstance(same, Replayed) and same.masked == ("Email",)
    assert changes(recorded_call, same, KEYS.redact) == []
    other = replay(candidate, recorded_call, KEYS.redact)
    assert isinstance(other, Replayed) and other.masked == ()
    assert changes(recorded_call, other, KEYS.redact) == ["masked"]


# -- an uncertain rule ---------------------------------------------------------------------------
def test_an_unknown_role_before_one_that_holds_leaves_only_the_rule_uncertain() -> None:
    data = copy.deepcopy(LIVE)
    data["roles"]["dept-x"] = [{"claims": {"dept": "x"}}]  # dept: never recorded
    data["roles"]["tenant-t1"] = [{"claims": {"tenant": "t1"}}]  # tenant: recorded (bound)
    data["routes"][0]["allow"] = ["dept-x", "tenant-t1"]
    candidate = policy(data)
    outsider = rec(event_of("GET /things/T-1", who(groups=["other"])))
    assert outsider.live.reason == "no-allow-role"
    found = replay(candidate, outsider, KEYS.redact)
    assert isinstance(found, Replayed) and (found.allow, found.rule) == (True, "tenant-t1")
    assert found.rule_uncertain == ("dept-x",)
    assert changes(outsider, found, KEYS.redact) == ["deny->allow"]
    report = ReplayReport(candidate.sha256)
    report.add(outsider, found, KEYS.redact)
    assert "tenant-t1, or dept-x?" in report.render()

    data["routes"][0]["allow"] = ["staff"]
    data["routes"][0]["deny"] = ["dept-x", "tenant-t1"]
    staff = rec(event_of("GET /things/T-1", who()))
    found = replay(policy(data), staff, KEYS.redact)
    assert isinstance(found, Replayed) and (found.reason, found.rule) == ("denied-by-role", "tenant-t1")
    assert changes(staff, found, KEYS.redact) == ["allow->deny"]

    data["routes"][0]["deny"] = ["dept-x"]  # an unknown deny role: allow itself is unknown
    assert isinstance(replay(policy(data), staff, KEYS.redact), NotReplayed)


def test_calls_not_replayed_without_a_route_are_grouped_as_no_route() -> None:
    report = ReplayReport(LIVE_POLICY.sha256)
    unrouted = rec(event_of("GET /nowhere/1", who()))
    report.add(unrouted, NotReplayed("the path cut for the event's size"), KEYS.redact)
    assert [g.route for g in report.not_replayed_roles.values()] == ["(no route)"]


def test_a_redacted_array_claim_bound_to_a_parameter_replays_unchanged() -> None:
    data = copy.deepcopy(LIVE)
    data["queries"]["team_things"] = {
        "identity": "reader",
        "sql": "SELECT * FROM Things WHERE Team IN UNNEST(@teams)",
        "params": {"teams": {"type": "ARRAY<STRING>", "from": "claim.teams"}},
    }
    route = {"path": "/team-things", "method": "GET", "query": "team_things", "allow": ["staff"]}
    data["routes"].append(route)
    data["audit"]["redact"] = ["size", "teams"]
    live = policy(data)
    event = event_of("GET /team-things", who(live, teams=["crimson", "blue"]), live=live)
    value = event["protoPayload"]["request"]["params"]["teams"]["value"]
    assert value == event["protoPayload"]["metadata"]["claimsRead"]["claims"]["teams"]
    assert len(value) == 2 and "crimson" not in json.dumps(value)
    found = replay(live, rec(event), KEYS.redact)
    assert isinstance(found, Replayed) and found.allow
    assert changes(rec(event), found, KEYS.redact) == []


def test_invalid_settings_in_the_environment_are_unusable_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.cli import main

    trail = tmp_path / "audit.jsonl"
    trail.write_text(json.dumps(event_of("GET /things/T-1", who())) + "\n")
    candidate = tmp_path / "candidate.yaml"
    candidate.write_text(json.dumps(LIVE))
    monkeypatch.setenv("SPANGATE_AUDIT_MAX_EVENT_BYTES", "not-a-number")
    assert main(["policy", "replay", "--policy", str(candidate), str(trail)]) == 2
    err = capsys.readouterr().err
    assert "SPANGATE_AUDIT_MAX_EVENT_BYTES" in err and "Traceback" not in err


def test_a_redacted_path_parameter_is_a_hash_in_the_path_and_replays_as_recorded() -> None:
    """With ``id`` redacted the event's path holds its keyed hash (as ``request.params`` does),
    never the value, whether the call was decided (allowed, denied) or refused before routing;
    replay takes the hash as recorded."""
    data = edited(audit={"sinks": [{"type": "stdout"}], "redact": ["size", "id"]})
    live = policy(data)
    allowed = event_of("GET /things/T-secret1", who(live), live)
    denied = event_of("GET /things/T-secret2", who(live, groups=["sales"]), live)
    assert allowed["httpRequest"]["requestUrl"] == (
        "/things/" + allowed["protoPayload"]["request"]["params"]["id"]["value"]
    )
    # refused before binding: no params, the segment's hash (a STRING binds the same text)
    assert denied["protoPayload"]["request"]["params"] is None
    assert denied["httpRequest"]["requestUrl"] == "/things/" + redacted("T-secret2", KEYS.redact)
    for event in (allowed, denied):
        assert "secret" not in json.dumps([event["httpRequest"], event["protoPayload"]["request"]])
        assert event["httpRequest"]["requestUrl"].startswith("/things/redacted:hmac-sha256:")
        result = outcome(live, event)
        assert isinstance(result, Replayed), result
        assert changes(rec(event), result, KEYS.redact) == []
    result = outcome(live, allowed)
    assert isinstance(result, Replayed) and result.unchecked == ("id",)
    # a 405 (no route for the method, no decision): the path fits the route's template
    wrong = event_of("DELETE /things/T-secret3", who(live), live)
    assert "secret" not in json.dumps(wrong["httpRequest"])
    assert wrong["httpRequest"]["requestUrl"].startswith("/things/redacted:hmac-sha256:")
    # under the live policy without `id` redacted, the path is as received
    assert event_of("GET /things/T-1", who())["httpRequest"]["requestUrl"] == "/things/T-1"


def test_an_issuer_url_written_out_that_differs_refuses_the_token_as_the_shadow_does(
    tmp_path: Path,
) -> None:
    """Only a stand-in URL (a ``${VAR:-default}``'s default) lets replay find the issuer by its
    name; a URL written out (a typo) is refused."""
    import yaml

    from gateway.policy.load import load_policy
    from gateway.policy.shadow import shadow_principal

    typo = edited()
    typo["issuers"]["okta"]["issuer"] = "https://idp.example/oauth2/defualt"
    candidate = policy(typo)
    event = event_of("GET /things/T-1", who())
    found = outcome(candidate, event)
    assert isinstance(found, Replayed) and found.reason == "issuer-unknown"
    assert not found.issuer_by_name and changes(rec(event), found, KEYS.redact) == ["allow->deny"]
    assert shadow_principal(who(), LIVE_POLICY.model, candidate.model) == "issuer-unknown"

    for url, env in (
        ("${OKTA_ISSUER:-https://idp.ci.example/}", {}),
        ("${OKTA_ISSUER:-https://idp.ci.example/}", {"OKTA_ISSUER": ""}),
    ):
        data = edited()
        data["issuers"]["okta"]["issuer"] = url
        path = tmp_path / "candidate.yaml"
        path.write_text(yaml.safe_dump(data))
        loaded = compile_policy(load_policy(path, env=env, placeholders=True))
        assert ("issuers", "okta", "issuer") in loaded.loaded.stand_ins
        found = outcome(loaded, event)
        assert isinstance(found, Replayed) and found.issuer_by_name, url
        assert changes(rec(event), found, KEYS.redact) == []
        report = ReplayReport(loaded.sha256)
        report.add(rec(event), found, KEYS.redact)
        assert report.as_json()["issuerMatchedByName"] == 1
        assert "issuer matched by name, URL differs: 1" in report.render()
    # the variable set: a URL a deployment loads, not a stand-in
    loaded = compile_policy(
        load_policy(path, env={"OKTA_ISSUER": "https://idp.example/oauth2/defualt"})
    )
    assert outcome(loaded, event) == Replayed(False, "issuer-unknown")


def anonymous_event(request_id: str = "r-anon") -> dict[str, Any]:
    """The sealed event of a call without a valid token: no principal, no decision."""
    from gateway.errors import AuthError

    call = CallRecord(
        request_id=request_id, method="GET", path="/things/T-1", started=0.0, client=None,
        user_agent=None,
    )
    call.error, call.status = AuthError("no token", code="token-missing"), 401
    sealed, _ = Chain(KEYS.chain).seal(build_event(call, LIVE_POLICY, key=KEYS.redact))
    return sealed


def test_calls_that_could_not_be_replayed_or_a_trail_without_decisions_exit_non_zero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Nothing flips among the replayed calls but some could not be replayed: exit 3 (a new
    deny role on a claim never read, a role redefined on a group no policy named, can lock out
    everyone there); a trail whose every event is skipped: exit 2."""
    from gateway.cli import main

    trail, key = tmp_path / "audit.jsonl", tmp_path / "key"
    key.write_bytes(b"replay-test-key\n")
    trail.write_text(json.dumps(event_of("GET /things/T-1", who())) + "\n")
    new_deny = edited()
    new_deny["roles"]["contractor"] = [{"claims": {"dept": "contractors"}}]
    new_deny["routes"][0]["deny"] = ["blocked", "contractor"]
    redefined = edited()
    redefined["roles"]["staff"] = [{"groups": ["staff-v2"]}]
    for data in (new_deny, redefined):
        candidate = tmp_path / "candidate.yaml"
        candidate.write_text(json.dumps(data))
        args = ["policy", "replay", "--policy", str(candidate), "--key-file", str(key)]
        assert main([*args, str(trail)]) == 3
        assert "could not be replayed: 1" in capsys.readouterr().out
    same = tmp_path / "live.yaml"
    same.write_text(json.dumps(LIVE))
    assert main(["policy", "replay", "--policy", str(same), "--key-file", str(key), str(trail)]) == 0
    capsys.readouterr()
    trail.write_text(json.dumps(anonymous_event()) + "\n")
    assert main(["policy", "replay", "--policy", str(same), "--key-file", str(key), str(trail)]) == 2
    captured = capsys.readouterr()
    assert "0 recorded decisions" in captured.out and "no decision" in captured.err


def test_a_changed_claims_mapping_of_the_issuer_cannot_be_replayed() -> None:
    """The event records the claims groups and scopes were read from; a candidate whose issuer
    reads them from others (``claims:``, a preset) cannot be judged from what was recorded."""
    event = event_of("GET /things/T-1", who())
    third = event["protoPayload"]["authenticationInfo"]["thirdPartyPrincipal"]
    assert third["claimNames"] == {"groups": "groups", "scopes": "scp"}
    assert third["introspected"] is False
    data = edited()
    data["issuers"]["okta"]["claims"] = {"groups": "roles"}
    found = outcome(policy(data), event)
    assert isinstance(found, NotReplayed), found
    assert "claims mapping changed (groups: claim groups -> roles)" in found.why
    assert found.roles == ("staff",)
    data["issuers"]["okta"]["preset"] = "oidc"  # scopes from scope: the agent's scopes unknown
    data["issuers"]["okta"]["claims"] = {"groups": "groups"}
    agent = event_of("GET /things/T-1", who(groups=[], scp=["things.read"], kind="agent"))
    found = outcome(policy(data), agent)
    assert isinstance(found, NotReplayed) and "scopes: claim scp -> scope" in found.why
    # a mapping of user or client only changes nothing replay judges
    data = edited()
    data["issuers"]["okta"]["claims"] = {"user": "uid2"}
    found = outcome(policy(data), event)
    assert isinstance(found, Replayed) and changes(rec(event), found, KEYS.redact) == []
    # an older event (no claimNames): not checked
    del third["claimNames"]
    data["issuers"]["okta"]["claims"] = {"groups": "roles"}
    assert isinstance(outcome(policy(data), event), Replayed)


@pytest.mark.parametrize(
    ("live_type", "candidate_type", "request_line", "body"),
    [
        ("INT64", "STRING", "GET /things?limit=5", None),
        ("STRING", "BOOL", "GET /things?limit=true", None),
        ("STRING", "ARRAY<STRING>", "GET /things?limit=a", None),
        ("NUMERIC", "FLOAT64", "GET /things?limit=5.5", None),
        ("INT64", "STRING", "POST /things", {"id": "T-9", "size": 1, "limit": "5"}),
    ],
)
def test_a_parameter_changing_type_is_checked_as_the_caller_sent_it(
    live_type: str, candidate_type: str, request_line: str, body: dict[str, Any] | None
) -> None:
    """The trail records what the caller sent where the live type converted it (``"5"`` bound
    as 5); replay checks that against the candidate's type, as ``decide`` would."""
    def typed(kind: str) -> dict[str, Any]:
        data = edited()
        for query in ("list_things", "add_thing"):
            data["queries"][query]["params"]["limit"] = {"type": kind, "nullable": True}
        data["queries"]["add_thing"]["sql"] = (
            "INSERT INTO Things (Tenant, Id, Size, Note) VALUES (@tenant, @id, @size, @limit)"
        )
        return data

    live = policy(typed(live_type))
    candidate = policy(typed(candidate_type))
    event = event_of(request_line, who(live), live, body=body)
    assert event["protoPayload"]["metadata"]["decision"]["allow"]
    found = outcome(candidate, event)
    decided = decide(candidate, request_facts(request_line, body), who(candidate))
    assert isinstance(found, Replayed), found
    assert (found.allow, found.reason) == (decided.allow, decided.reason) == (True, "allowed")
    assert changes(rec(event), found, KEYS.redact) in ([], ["params"])
    # an older event (no "sent"): a query string's value is turned back into text
    for entry in event["protoPayload"]["request"]["params"].values():
        entry.pop("sent", None)
        entry.pop("text", None)
    if body is None:
        found = outcome(candidate, event)
        assert isinstance(found, Replayed) and found.allow, found


def test_the_shadow_reads_an_introspected_token_with_the_introspection_names() -> None:
    """An opaque token's principal comes from an RFC 7662 answer (scopes from ``scope``): a
    candidate changing an unrelated claim name reads it the same way, no disagreement."""
    from gateway.auth.presets import introspection_names, principal_from_claims
    from gateway.policy.shadow import disagreement, shadow_principal

    data = edited()
    data["issuers"]["okta"]["introspection"] = {"client_id": "c", "client_secret": "s"}
    live = policy(data)
    answer = {
        "active": True, "iss": "https://idp.example/oauth2/default", "sub": "user-1",
        "scope": "things.read", "client_id": "c", "kind": "agent", "tenant": "t1", "aud": "api",
    }
    names = introspection_names(live.model.issuers["okta"])
    principal = principal_from_claims("okta", names, answer, introspected=True)
    decided = decide(live, request_facts("GET /things/T-1"), principal)
    assert (decided.allow, decided.rule) == (True, "agent")
    data["issuers"]["okta"]["claims"] = {"user": "uid2"}
    candidate = policy(data)
    shadow = shadow_principal(principal, live.model, candidate.model)
    assert not isinstance(shadow, str) and shadow.scopes == {"things.read"} and shadow.introspected
    under = decide(candidate, request_facts("GET /things/T-1"), shadow)
    assert disagreement(decided, decided.reason, under, candidate.sha256) is None


def test_a_tampered_trail_is_unusable_input_and_without_a_key_integrity_is_not_verified(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With the audit key every event's hash and chain link are verified, as ``audit verify``
    does (not only each file's first event): an edited event stops the run."""
    from gateway.cli import main

    chain = Chain(KEYS.chain)
    events = []
    for n in range(4):
        facts = request_facts(f"GET /things/T-{n}")
        call = CallRecord(
            request_id=f"r-{n}", method="GET", path=facts.path, started=0.0, client=None,
            user_agent=None,
        )
        call.principal, call.decision = who(), decide(LIVE_POLICY, facts, who())
        call.status = 200
        events.append(chain.seal(build_event(call, LIVE_POLICY, key=KEYS.redact))[0])
    trail, key, same = tmp_path / "audit.jsonl", tmp_path / "key", tmp_path / "live.yaml"
    key.write_bytes(b"replay-test-key\n")
    same.write_text(json.dumps(LIVE))
    trail.write_text("".join(json.dumps(e) + "\n" for e in events))
    args = ["policy", "replay", "--policy", str(same)]
    assert main([*args, "--key-file", str(key), str(trail)]) == 0
    events[2]["httpRequest"]["requestUrl"] = "/things/T-9"
    trail.write_text("".join(json.dumps(e) + "\n" for e in events))
    assert main([*args, "--key-file", str(key), str(trail)]) == 2
    err = capsys.readouterr().err
    assert "audit.jsonl:3: seq 3 edited" in err and "does not verify" in err
    assert main([*args, "--no-key", str(trail)]) == 0
    assert "integrity not verified" in capsys.readouterr().out


def test_replay_streams_the_trail_and_keeps_counts_only(tmp_path: Path) -> None:
    """Memory does not grow with the trail: events are read one line at a time and each is
    counted as it comes (measured in allocations with ``tracemalloc``, not in time)."""
    import tracemalloc

    from gateway.cli import main

    chain = Chain(KEYS.chain)
    base = event_of("GET /things/T-1", who())
    trail = tmp_path / "audit.jsonl"
    with trail.open("w") as f:
        for i in range(1500):
            event = copy.deepcopy(base)
            event["protoPayload"]["requestMetadata"]["requestAttributes"]["id"] = f"r{i}"
            for name in ("hash", "seq", "prev", "chain"):
                event.pop(name)
            f.write(json.dumps(chain.seal(event)[0]) + "\n")
    candidate = tmp_path / "live.yaml"
    candidate.write_text(json.dumps(LIVE))
    key = tmp_path / "key"
    key.write_bytes(b"replay-test-key\n")
    args = ["policy", "replay", "--policy", str(candidate), "--key-file", str(key), str(trail)]
    main(args)  # imports and caches warmed up
    tracemalloc.start()
    try:
        assert main(args) == 0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert trail.stat().st_size > 2_500_000 and peak < 2_000_000, peak  # before: 9 MB


def test_an_actor_claim_bound_to_a_redacted_parameter_is_hashed_in_the_delegation_info() -> None:
    data = edited()
    data["queries"]["get_thing"]["params"]["actor_email"] = {
        "type": "STRING", "from": "claim.act.email",
    }
    data["queries"]["get_thing"]["sql"] += " AND Agent = @actor_email"
    data["roles"]["staff"] = [{"groups": ["staff"], "delegated": True}]
    data["audit"]["redact"] = ["size", "actor_email"]
    live = policy(data)
    principal = who(live, act={"sub": "bot", "email": "owner@secret.example", "team": "t"})
    event = event_of("GET /things/T-1", principal, live)
    assert event["protoPayload"]["metadata"]["decision"]["allow"]
    assert "secret" not in json.dumps(event)
    actor = event["protoPayload"]["authenticationInfo"]["serviceAccountDelegationInfo"][0]
    claims = actor["thirdPartyPrincipal"]["thirdPartyClaims"]
    assert claims["email"] == redacted("owner@secret.example", KEYS.redact)
    assert claims["team"] == "t" and actor["principalSubject"] == "bot"
    found = outcome(live, event)
    assert isinstance(found, Replayed) and found.allow and found.unchecked == ("actor_email",)
    assert changes(rec(event), found, KEYS.redact) == []
    # a role testing the hashed actor claim is judged with the key
    data["roles"]["staff"] = [
        {"groups": ["staff"], "delegated": True, "claims": {"act.email": "owner@secret.example"}}
    ]
    found = outcome(policy(data), event)
    assert isinstance(found, Replayed) and found.allow, found
    # a redacted parameter bound to the subject: a warning (the subject is recorded in clear)
    data["queries"]["get_thing"]["params"]["who"] = {"type": "STRING", "from": "claim.sub"}
    data["queries"]["get_thing"]["sql"] += " AND Owner = @who"
    data["audit"]["redact"] = ["size", "who"]
    warnings = [w.message for w in policy(data).loaded.warnings]
    assert any("bound to claim.sub" in w for w in warnings), warnings


def test_changes_on_calls_neither_policy_routes_are_one_no_route_group() -> None:
    report = ReplayReport(LIVE_POLICY.sha256)
    for n in range(3):  # refused as no-route live; by the candidate for another reason
        event = event_of(f"GET /nowhere/{n}", who())
        report.add(rec(event), Replayed(False, "method-not-allowed"), KEYS.redact)
    assert [(g.route, g.count) for g in report.groups.values()] == [("(no route)", 3)]
