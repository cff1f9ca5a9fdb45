"""Approvals in replay and in the shadow: whether an allowed call waits for an approval is part
of its decision. A candidate that adds or removes ``approval:`` on a route is an ``approval``
change in replay and a disagreement of the shadow; the approval flow's events (202 requested, a
call presented with Approval-Id, over HTTP and MCP) replay as the decisions they record, and
the events of /approvals (approvers' calls, no route) are skipped as ``approvals``.

Events are built by the real event builder (``build_event``, sealed by the real ``Chain``) from
real decisions of the example policy, whose ``cancel_order`` route waits for a support lead."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from replaying import decided_call, rec, sealed_event

from gateway.audit.chain import AuditKeys
from gateway.audit.event import CallRecord
from gateway.audit.recorded import Skipped, recorded
from gateway.audit.replay import Replayed, changes, replay
from gateway.audit.replay_report import ReplayReport
from gateway.auth.principal import Principal
from gateway.errors import ApprovalRefused, BadRequest, Forbidden, GatewayError
from gateway.policy.compiled import CompiledPolicy, compile_policy
from gateway.policy.decide import decide
from gateway.policy.load import load_policy, load_policy_data
from gateway.policy.shadow import disagreement, waits_for_approval
from gateway.policy.simulate import principal_for, request_facts

EXAMPLE = Path(__file__).resolve().parents[2] / "policy.example.yaml"
LIVE = compile_policy(load_policy(EXAMPLE, env={}))
KEYS = AuditKeys.from_secret(b"replay-approvals-test-key")
ID = "0123456789abcdef" * 2
CANCEL = "POST /v1/orders/O-1/cancel"
READ = "GET /v1/orders/O-1"


def edited(change: Any) -> CompiledPolicy:
    data = LIVE.model.model_dump(by_alias=True, exclude_none=True)
    change(data)
    return compile_policy(load_policy_data(data, base_dir=EXAMPLE.parent))


def _without_approval(data: dict[str, Any]) -> None:
    for route in data["routes"]:
        route.pop("approval", None)


def _read_waits(data: dict[str, Any]) -> None:
    route = next(r for r in data["routes"] if r["query"] == "get_order")
    route["approval"] = {"approvers": ["support-leads"], "ttl": "5m"}


def _other_approvers(data: dict[str, Any]) -> None:
    route = next(r for r in data["routes"] if r["query"] == "cancel_order")
    route["approval"] = {"approvers": ["support", "support-leads"], "ttl": "1h"}


NO_APPROVAL = edited(_without_approval)
READ_WAITS = edited(_read_waits)
OTHER_APPROVERS = edited(_other_approvers)


def person(sub: str = "00u-support-1", *groups: str) -> Principal:
    claims = {"iss": "okta", "sub": sub, "groups": list(groups or ["support"]), "tenant": "t1"}
    return principal_for(LIVE.model, claims)


SUPPORT = person()
LEAD = person("00u-lead-1", "support", "support-leads")


def seal(call: CallRecord) -> dict[str, Any]:
    return sealed_event(call, LIVE, KEYS)


def route_event(
    request: str,
    principal: Principal = SUPPORT,
    *,
    step: str | None = None,
    error: GatewayError | None = None,
    arguments: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The event of a call to a policy route, as ``Gateway._run`` records it: ``step`` its
    ``metadata.approval`` event (a 202 for ``approval.requested`` without an error)."""
    body = None if arguments is not None or request.startswith("GET") else {}
    call = decided_call(
        request, principal, LIVE, body=body, arguments=arguments, request_id=f"r-{request}-{step}"
    )
    if error is not None:
        call.error, call.status = error, error.status
    if step is not None:
        call.approval = {"id": ID, "event": step}
        if step == "approval.requested" and call.error is None:
            call.answer_code, call.answer_status, call.status = "approval-required", 202, 202
    return seal(call)


def approvals_event(
    path: str, method: str = "POST", error: GatewayError | None = None
) -> dict[str, Any]:
    """The event of an approver's call to /approvals (no route, no decision)."""
    call = CallRecord(
        request_id=f"r-{method}-{path}",
        method=method,
        path=path,
        started=0.0,
        client=None,
        user_agent=None,
    )
    call.principal, call.error = LEAD, error
    call.status = error.status if error else 200
    call.approval = {"id": ID, "event": "approval.approved"}
    call.authorization = [
        {"resource": f"{method} /approvals/{{id}}/approve", "permission": "approval.approve",
         "granted": error is None}
    ]  # fmt: skip
    return seal(call)


def replayed(candidate: CompiledPolicy, event: dict[str, Any]) -> tuple[Replayed, list[str]]:
    call = rec(event)
    result = replay(candidate, call, KEYS.redact)
    assert isinstance(result, Replayed), result
    return result, changes(call, result, KEYS.redact)


# -- replay -------------------------------------------------------------------------------------

FLOW = [
    route_event(CANCEL, step="approval.requested"),  # the 202
    route_event(CANCEL, step="approval.presented"),  # repeated with Approval-Id, ran
    route_event(CANCEL, step="approval.presented",
                error=ApprovalRefused("used", code="approval-used")),
    route_event(CANCEL, step="approval.presented", error=BadRequest("x", code="approval-id-invalid")),
    route_event(CANCEL, step="approval.requested",
                error=ApprovalRefused("no table", code="approval-table-missing")),
    route_event("MCP cancel_order", step="approval.requested", arguments={"order_id": "O-1"}),
    route_event("MCP cancel_order", step="approval.presented",
                arguments={"order_id": "O-1", "approval_id": ID}),
]  # fmt: skip


def test_the_approval_flow_replays_unchanged_under_the_live_policy() -> None:
    for event in FLOW:
        call = rec(event)
        assert call.live.allow and call.live.approval in (
            "approval.requested",
            "approval.presented",
        )
        result, found = replayed(LIVE, event)
        assert result.allow and result.approval and result.query == "cancel_order"
        assert found == [], (event["protoPayload"]["status"], found)
    # other approvers or another ttl are no change of "approval required"
    assert all(replayed(OTHER_APPROVERS, e)[1] == [] for e in FLOW)


def test_a_candidate_that_removes_the_approval_is_an_approval_change() -> None:
    for event in FLOW[:5]:  # over HTTP the Approval-Id header is then ignored: the call runs
        result, found = replayed(NO_APPROVAL, event)
        assert result.allow and not result.approval and found == ["approval"]
    result, found = replayed(NO_APPROVAL, FLOW[5])  # MCP without approval_id: runs too
    assert found == ["approval"]
    # an MCP call with approval_id: that tool takes no such argument any more
    result, found = replayed(NO_APPROVAL, FLOW[6])
    assert (result.allow, result.reason, found) == (False, "param-unknown", ["allow->deny"])


def test_a_candidate_that_adds_an_approval_is_an_approval_change() -> None:
    event = route_event(READ)
    assert rec(event).live.approval is None
    assert replayed(LIVE, event)[1] == []
    result, found = replayed(READ_WAITS, event)
    assert result.allow and result.approval and found == ["approval"]
    # a refused call is no approval change (whether it waits is for allowed calls)
    refused = route_event(READ, person("00u-m-1", "marketing"))
    assert replayed(READ_WAITS, refused)[1] == []


def test_the_report_says_which_way_approval_changed() -> None:
    report = ReplayReport(candidate=NO_APPROVAL.sha256)
    for event in FLOW[:2]:
        call = rec(event)
        report.add(call, replay(NO_APPROVAL, call, KEYS.redact), KEYS.redact)
    added = ReplayReport(candidate=READ_WAITS.sha256)
    call = rec(route_event(READ))
    added.add(call, replay(READ_WAITS, call, KEYS.redact), KEYS.redact)
    assert report.count("approval") == 2 and report.flips == 0
    [group] = report.as_json()["groups"]
    assert (group["kind"], group["route"], group["role"]) == (
        "approval",
        "POST /v1/orders/{order_id}/cancel",
        "support",
    )
    assert group["reasons"] == {"approval required -> none": 2}
    assert report.as_json()["changes"]["approval"] == 2
    text = report.render()
    assert "0 masked, 2 approval" in text and "approval required -> none: 2" in text
    assert added.as_json()["groups"][0]["reasons"] == {"none -> approval required": 1}


def test_the_events_of_approvals_are_skipped_as_approvals() -> None:
    decided = approvals_event(f"/approvals/{ID}/approve")
    assert decided["protoPayload"]["metadata"]["decision"]["reason"] == "ok"
    # reasons that are codes of the policy's decisions too: never taken for a route's decision
    suspended = approvals_event(
        f"/approvals/{ID}/approve", error=Forbidden("denied", code="denied-by-role")
    )
    assert suspended["protoPayload"]["metadata"]["decision"]["reason"] == "denied-by-role"
    unknown = approvals_event("/approvals", "GET", BadRequest("x", code="param-unknown"))
    for event in (decided, suspended, unknown):
        assert recorded(event, "audit.jsonl:1") == Skipped("approvals")
    anonymous = approvals_event("/approvals", "GET")
    anonymous["protoPayload"]["authenticationInfo"] = None
    assert recorded(anonymous, "x") == Skipped("no-principal")


# -- the shadow ---------------------------------------------------------------------------------


def test_the_shadow_disagrees_when_a_candidate_adds_or_removes_an_approval() -> None:
    cancel = request_facts(CANCEL, {})
    live = decide(LIVE, cancel, SUPPORT)
    assert waits_for_approval(live)
    assert disagreement(live, live.reason, decide(LIVE, cancel, SUPPORT), LIVE.sha256) is None
    other = decide(OTHER_APPROVERS, cancel, SUPPORT)
    assert disagreement(live, live.reason, other, OTHER_APPROVERS.sha256) is None

    removed = disagreement(live, live.reason, decide(NO_APPROVAL, cancel, SUPPORT), "0" * 64)
    assert removed is not None
    assert (removed.route, removed.live, removed.shadow) == (
        "/v1/orders/{order_id}/cancel",
        "allowed",
        "allowed",
    )
    assert removed.record["approval"] is False and removed.record["allow"] is True

    read = request_facts(READ)
    live = decide(LIVE, read, SUPPORT)
    added = disagreement(live, live.reason, decide(READ_WAITS, read, SUPPORT), "0" * 64)
    assert added is not None and added.record["approval"] is True
    # a refusal waits for nothing: no disagreement from the approval alone
    outsider = person("00u-m-1", "marketing")
    live = decide(LIVE, read, outsider)
    assert disagreement(live, live.reason, decide(READ_WAITS, read, outsider), "0" * 64) is None
    # a call the live policy did not route, allowed by a shadow route that waits: recorded so
    found = disagreement(None, "no-route", decide(READ_WAITS, read, SUPPORT), "0" * 64)
    assert found is not None and found.record["approval"] is True


def test_the_shadow_and_replay_agree_on_approvals() -> None:
    """What a shadow records and what a replay of the live event computes is one decision."""
    for candidate in (LIVE, NO_APPROVAL, READ_WAITS, OTHER_APPROVERS):
        for request, event in ((CANCEL, FLOW[0]), (READ, route_event(READ))):
            body = {} if request.startswith("POST") else None
            shadow = decide(candidate, request_facts(request, body), SUPPORT)
            result, found = replayed(candidate, event)
            assert (result.allow, result.approval) == (shadow.allow, waits_for_approval(shadow))
            live = decide(LIVE, request_facts(request, body), SUPPORT)
            differs = disagreement(live, live.reason, shadow, candidate.sha256) is not None
            assert differs == ("approval" in found)
