"""Approvals end to end: a real ``spangate serve`` on the example policy, the Spanner emulator and
the OpenID provider. Support asks to cancel an order (202 approval-required, nothing runs), a
support lead (another principal) approves it, the requester repeats the call with Approval-Id and
it runs once; every other replay is refused with its code; concurrent replays: one wins; a
rejection, an expiry (a policy whose ttl is 2s), /approvals for approvers, MCP, and the audit
events linked by the approval id. The tests of ``server`` run on both dialects: the GoogleSQL
shop and the PostgreSQL one (``policy.example.postgresql.yaml``, its approvals table and list
in that dialect)."""

from __future__ import annotations

import concurrent.futures
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from served import EXAMPLE_POLICY, Served, served

from gateway.dev.database import create_database, load_demo_sql
from gateway.policy.compiled import compile_policy
from gateway.policy.load import load_policy
from gateway.spanner.ddl import shipped_ddl

REPO = EXAMPLE_POLICY.parent

Token = Callable[..., str]


def _auth(token: str, **headers: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **headers}


def _new_order(base: str, token_for: Token) -> str:
    """A fresh OPEN order of tenant t1 (the order writer's)."""
    order = f"O-{secrets.randbelow(10**12)}"
    made = httpx.post(
        f"{base}/v1/orders",
        json={"order_id": order, "customer_id": "C-1", "total_cents": 100},
        headers=_auth(token_for("order-writer")),
        timeout=30,
    )
    assert made.status_code == 200, made.text
    return order


def _status(base: str, token: str, order: str) -> str:
    got = httpx.get(f"{base}/v1/orders/{order}", headers=_auth(token), timeout=30)
    assert got.status_code == 200, got.text
    return str(got.json()["rows"][0]["Status"])


def _cancel(base: str, token: str, order: str, approval: str | None = None) -> httpx.Response:
    headers = _auth(token) if approval is None else _auth(token, **{"Approval-Id": approval})
    return httpx.post(f"{base}/v1/orders/{order}/cancel", json={}, headers=headers, timeout=30)


def _decide(base: str, token: str, approval: str, verb: str, **body: Any) -> httpx.Response:
    return httpx.post(
        f"{base}/approvals/{approval}/{verb}", json=body, headers=_auth(token), timeout=30
    )


def _events(server: Served, approval: str) -> list[dict[str, Any]]:
    """The audit events of one approval, as written (the trail is written by a thread)."""
    deadline = time.monotonic() + 15
    while True:
        found = [
            e
            for e in server.events()
            if (e["protoPayload"]["metadata"].get("approval") or {}).get("id") == approval
        ]
        if len(found) >= 3 or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def _events_of(server: Served, request_id: str) -> list[dict[str, Any]]:
    """The audit events of one request, once written (the trail is written by a thread)."""
    deadline = time.monotonic() + 15
    while not (found := server.events(request_id)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return found


PG_POLICY = EXAMPLE_POLICY.with_name("policy.example.postgresql.yaml")
PG_DATABASE = "shoppgapprovals"


@pytest.fixture(scope="module", params=["googlesql", "postgresql"])
def server(
    request: pytest.FixtureRequest,
    demo_database: str,
    idp: Any,
    tmp_path_factory: pytest.TempPathFactory,
    audit_key: str,
) -> Iterator[Served]:
    """The example policy served in either dialect: the GoogleSQL shop of the session, or the
    PostgreSQL shop (``policy.example.postgresql.yaml``) in a database of its own, made as
    ``make demo DIALECT=postgresql`` makes it (``init-db``'s tables, the approvals' included)."""
    folder = tmp_path_factory.mktemp(f"approvals-{request.param}")
    if request.param == "googlesql":
        with served(folder, database=demo_database, issuer=idp.issuer, audit_key=audit_key) as it:
            yield it
        return
    ddl, dml = load_demo_sql(REPO, "postgresql")
    policy = compile_policy(load_policy(PG_POLICY, env={"OKTA_ISSUER": idp.issuer}))
    create_database(
        demo_database, project="demo-project", instance="demo", database=PG_DATABASE,
        ddl=[*ddl, *shipped_ddl(policy)], dml=dml, dialect="postgresql",
    )  # fmt: skip
    with served(
        folder,
        database=demo_database,
        issuer=idp.issuer,
        audit_key=audit_key,
        policy=PG_POLICY,
        env={"SPANGATE_SPANNER_DATABASE": PG_DATABASE},
    ) as it:
        yield it


def test_a_cancellation_waits_for_a_lead_and_runs_once(server: Served, token_for: Token) -> None:
    base = server.base
    support, lead = token_for("support-console"), token_for("support-lead")
    order = _new_order(base, token_for)

    asked = _cancel(base, support, order)
    assert asked.status_code == 202, asked.text
    body = asked.json()
    assert body["code"] == "approval-required"
    approval = body["approval"]["id"]
    assert asked.headers["location"] == f"/approvals/{approval}"
    assert body["approval"]["state"] == "pending"
    assert body["approval"]["params"] == {"order_id": order, "tenant": "t1"}
    assert body["approval"]["approvers"] == ["support-leads"]
    assert body["approval"]["route"] == "POST /v1/orders/{order_id}/cancel"
    assert _status(base, support, order) == "OPEN"  # nothing ran

    pending = _cancel(base, support, order, approval)
    assert (pending.status_code, pending.json()["code"]) == (409, "approval-pending")
    not_approver = _decide(base, support, approval, "approve")
    assert (not_approver.status_code, not_approver.json()["code"]) == (403, "not-approver")

    listed = httpx.get(f"{base}/approvals?state=pending", headers=_auth(lead), timeout=30)
    assert listed.status_code == 200, listed.text
    assert approval in [a["id"] for a in listed.json()["approvals"]]
    hidden = httpx.get(f"{base}/approvals", headers=_auth(token_for("outsider")), timeout=30)
    assert hidden.status_code == 200 and hidden.json()["approvals"] == []
    seen = httpx.get(f"{base}/approvals/{approval}", headers=_auth(support), timeout=30)
    assert seen.status_code == 200 and seen.json()["approval"]["state"] == "pending"
    unseen = httpx.get(
        f"{base}/approvals/{approval}", headers=_auth(token_for("outsider")), timeout=30
    )
    assert (unseen.status_code, unseen.json()["code"]) == (404, "approval-not-found")

    approved = _decide(base, lead, approval, "approve", reason="customer asked, ticket 42")
    assert approved.status_code == 200, approved.text
    assert approved.json()["approval"]["state"] == "approved"
    again = _decide(base, lead, approval, "reject")
    assert (again.status_code, again.json()["code"]) == (409, "approval-decided")

    other = _cancel(base, lead, order, approval)  # another principal
    assert (other.status_code, other.json()["code"]) == (403, "approval-mismatch")
    other_order = _cancel(base, support, _new_order(base, token_for), approval)  # other values
    assert (other_order.status_code, other_order.json()["code"]) == (403, "approval-mismatch")
    assert _status(base, support, order) == "OPEN"

    ran = _cancel(base, support, order, approval)
    assert ran.status_code == 200, ran.text
    assert ran.json()["rows"] == [{"OrderId": order, "Status": "CANCELLED"}]
    assert _status(base, support, order) == "CANCELLED"
    used = _cancel(base, support, order, approval)
    assert (used.status_code, used.json()["code"]) == (409, "approval-used")
    listed = httpx.get(f"{base}/approvals?state=used", headers=_auth(lead), timeout=30)
    assert approval in [a["id"] for a in listed.json()["approvals"]]

    events = _events(server, approval)
    steps = [
        (
            e["protoPayload"]["metadata"]["approval"]["event"],
            e["protoPayload"]["metadata"]["approval"].get("used"),
            e["protoPayload"]["status"]["message"],
            e["protoPayload"]["authenticationInfo"]["thirdPartyPrincipal"]["clientId"],
        )
        for e in events
    ]
    assert steps[0] == ("approval.requested", None, "approval-required", "support-console")
    assert ("approval.approved", None, "ok", "support-lead") in steps
    assert ("approval.approved", None, "not-approver", "support-console") in steps
    assert ("approval.rejected", None, "approval-decided", "support-lead") in steps
    assert ("approval.presented", True, "ok", "support-console") in steps
    assert [s for s in steps if s[1] is True] == [
        ("approval.presented", True, "ok", "support-console")
    ]  # used once
    assert ("approval.presented", False, "approval-used", "support-console") in steps
    decided = next(  # the lead's; support's refused attempt has its event too (not-approver)
        e
        for e in events
        if e["protoPayload"]["metadata"]["approval"]["event"] == "approval.approved"
        and e["protoPayload"]["status"]["message"] == "ok"
    )
    meta = decided["protoPayload"]["metadata"]["approval"]
    assert meta["reason"] == "customer asked, ticket 42" and meta["role"] == "support-leads"
    assert meta["requester"]["sub"] == "support-console"
    assert decided["protoPayload"]["authorizationInfo"] == [
        {
            "resource": "POST /approvals/{id}/approve",
            "permission": "approval.approve",
            "granted": True,
        }
    ]


def test_the_requester_never_approves_their_own_request(server: Served, token_for: Token) -> None:
    base = server.base
    lead = token_for("support-lead")  # holds support (asks) and support-leads (approves)
    asked = _cancel(base, lead, _new_order(base, token_for))
    assert asked.status_code == 202, asked.text
    own = _decide(base, lead, asked.json()["approval"]["id"], "approve")
    assert (own.status_code, own.json()["code"]) == (403, "approval-own-request")
    listed = httpx.get(f"{base}/approvals", headers=_auth(lead), timeout=30).json()
    assert asked.json()["approval"]["id"] not in [a["id"] for a in listed["approvals"]]


def test_a_rejected_request_never_runs(server: Served, token_for: Token) -> None:
    base = server.base
    support, lead = token_for("support-console"), token_for("support-lead")
    order = _new_order(base, token_for)
    approval = _cancel(base, support, order).json()["approval"]["id"]
    rejected = _decide(base, lead, approval, "reject", reason="not this one")
    assert rejected.status_code == 200 and rejected.json()["approval"]["state"] == "rejected"
    refused = _cancel(base, support, order, approval)
    assert (refused.status_code, refused.json()["code"]) == (403, "approval-rejected")
    assert _status(base, support, order) == "OPEN"


def test_concurrent_replays_run_the_write_once(server: Served, token_for: Token) -> None:
    base = server.base
    support, lead = token_for("support-console"), token_for("support-lead")
    order = _new_order(base, token_for)
    approval = _cancel(base, support, order).json()["approval"]["id"]
    assert _decide(base, lead, approval, "approve").status_code == 200
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: _cancel(base, support, order, approval), range(4)))
    codes = sorted((a.status_code, a.json().get("code", "ok")) for a in answers)
    assert codes == [(200, "ok"), (409, "approval-used"), (409, "approval-used"),
                     (409, "approval-used")], codes  # fmt: skip
    used = [
        e
        for e in _events(server, approval)
        if e["protoPayload"]["metadata"]["approval"].get("used") is True
    ]
    assert len(used) == 1


def test_malformed_approval_ids_are_400(server: Served, token_for: Token) -> None:
    base = server.base
    support = token_for("support-console")
    bad = _cancel(base, support, "O-1001", "not-an-id")
    assert (bad.status_code, bad.json()["code"]) == (400, "approval-id-invalid")
    # its event says the call waited for an approval (replay compares that), though no id
    [event] = _events_of(server, bad.json()["request_id"])
    assert event["protoPayload"]["metadata"]["approval"] == {
        "id": None,
        "event": "approval.presented",
    }
    assert event["protoPayload"]["metadata"]["decision"]["allow"] is True
    path = httpx.get(f"{base}/approvals/nope", headers=_auth(support), timeout=30)
    assert (path.status_code, path.json()["code"]) == (400, "approval-id-invalid")
    assert path.headers["content-type"] == "application/problem+json"
    anonymous = httpx.get(f"{base}/approvals", timeout=30)
    assert (anonymous.status_code, anonymous.json()["code"]) == (401, "token-missing")
    wrong = httpx.delete(f"{base}/approvals/{'0' * 32}", headers=_auth(support), timeout=30)
    assert wrong.status_code == 405


def test_an_mcp_call_that_needs_approval_says_so(server: Served, token_for: Token) -> None:
    base = server.base
    support, lead = token_for("support-console"), token_for("support-lead")
    order = _new_order(base, token_for)

    def call(arguments: dict[str, Any]) -> dict[str, Any]:
        answer = httpx.post(
            f"{base}/mcp",
            json={
                "jsonrpc": "2.0",
                "id": 7,
                "method": "tools/call",
                "params": {"name": "cancel_order", "arguments": arguments},
            },
            headers=_auth(
                support,
                Accept="application/json, text/event-stream",
                **{"MCP-Protocol-Version": "2025-11-25"},
            ),
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        result: dict[str, Any] = answer.json()["result"]
        return result

    asked = call({"order_id": order})
    assert asked["isError"] is True
    assert asked["structuredContent"]["code"] == "approval-required"
    approval = asked["structuredContent"]["approval"]["id"]
    detail = asked["structuredContent"]["detail"]  # the header's twin: the tool's argument
    assert f"with the argument approval_id: {approval}" in detail and "header" not in detail
    assert _decide(base, lead, approval, "approve").status_code == 200
    ran = call({"order_id": order, "approval_id": approval})
    assert ran.get("isError") is not True, ran
    assert ran["structuredContent"]["rows"] == [{"OrderId": order, "Status": "CANCELLED"}]
    again = call({"order_id": order, "approval_id": approval})
    assert again["isError"] is True and again["structuredContent"]["code"] == "approval-used"


@pytest.fixture(scope="module")
def short_lived(
    demo_database: str, idp: Any, tmp_path_factory: pytest.TempPathFactory, audit_key: str
) -> Iterator[Served]:
    """The example policy with approvals good for 2 seconds."""
    folder = tmp_path_factory.mktemp("approvals-ttl")
    policy = folder / "policy.yaml"
    text = EXAMPLE_POLICY.read_text().replace("      ttl: 15m", "      ttl: 2s")
    assert "ttl: 2s" in text
    policy.write_text(text.replace("path: audit.jsonl", f"path: {folder / 'a.jsonl'}"))
    with served(
        folder, database=demo_database, issuer=idp.issuer, audit_key=audit_key, policy=policy
    ) as server:
        yield server


def test_an_approval_expires_and_so_does_a_pending_request(
    short_lived: Served, token_for: Token
) -> None:
    base = short_lived.base
    support, lead = token_for("support-console"), token_for("support-lead")
    order = _new_order(base, token_for)
    approved = _cancel(base, support, order).json()["approval"]["id"]
    assert _decide(base, lead, approved, "approve").status_code == 200
    pending = _cancel(base, support, order).json()["approval"]["id"]
    time.sleep(2.5)  # past both ttls (an expiry, not a speed: nothing is timed)
    late = _cancel(base, support, order, approved)
    assert (late.status_code, late.json()["code"]) == (409, "approval-expired")
    undecided = _decide(base, lead, pending, "approve")
    assert (undecided.status_code, undecided.json()["code"]) == (409, "approval-expired")
    seen = httpx.get(f"{base}/approvals/{approved}", headers=_auth(support), timeout=30)
    assert seen.json()["approval"]["state"] == "expired"
    assert _status(base, support, order) == "OPEN"


@pytest.mark.parametrize(
    ("policy", "table", "added"),
    [
        (EXAMPLE_POLICY, "CREATE TABLE IF NOT EXISTS SpangateApprovals (", True),
        (PG_POLICY, 'CREATE TABLE IF NOT EXISTS "SpangateApprovals" (', False),
    ],
)
def test_init_db_prints_the_approvals_table(policy: Path, table: str, added: bool) -> None:
    """In the policy's dialect; GoogleSQL also adds Scope to an older table, PostgreSQL's has it
    from the start."""
    import subprocess
    import sys

    printed = subprocess.run(
        [sys.executable, "-m", "gateway", "init-db", "--policy", str(policy), "--print"],
        capture_output=True,
        text=True,
        env={"OKTA_ISSUER": "http://127.0.0.1:1/x", "PATH": "/usr/bin:/bin"},
        timeout=60,
        check=False,
    )
    assert printed.returncode == 0, printed.stderr
    assert table in printed.stdout
    assert ("ADD COLUMN IF NOT EXISTS Scope" in printed.stdout) is added
    if not added:
        assert '"Scope" varchar(64),' in printed.stdout
        assert "TTL INTERVAL '7 days' ON \"ExpiresAt\";" in printed.stdout


def test_a_malformed_idempotency_key_is_refused_before_an_approval_is_asked(
    server: Served, token_for: Token
) -> None:
    """A 202 accepts the call as it was sent: invalid data is refused first (400), and no
    request is stored."""
    base = server.base
    support = token_for("support-console")
    refused = httpx.post(
        f"{base}/v1/orders/{_new_order(base, token_for)}/cancel",
        json={},
        headers=_auth(support, **{"Idempotency-Key": "k" * 256}),
        timeout=30,
    )
    assert (refused.status_code, refused.json()["code"]) == (400, "idempotency-key-invalid")
    assert "location" not in refused.headers
    [event] = _events_of(server, refused.json()["request_id"])
    assert event["protoPayload"]["metadata"]["approval"] == {
        "id": None,
        "event": "approval.requested",
    }


def test_a_lead_of_another_tenant_neither_lists_sees_nor_decides(
    server: Served, token_for: Token
) -> None:
    """The example's approval matches the claim-bound tenant (``approval.match``'s default): a
    support lead of t2 is a support lead, but t1's requests are none of its business."""
    base = server.base
    support, lead, t2_lead = (
        token_for("support-console"), token_for("support-lead"), token_for("support-lead-t2")
    )  # fmt: skip
    order = _new_order(base, token_for)
    asked = _cancel(base, support, order)
    assert asked.status_code == 202, asked.text
    approval = asked.json()["approval"]["id"]

    for state in ("pending", "approved", "rejected", "used"):
        listed = httpx.get(f"{base}/approvals?state={state}&limit=100", headers=_auth(t2_lead),
                           timeout=30)  # fmt: skip
        assert listed.status_code == 200, listed.text
        assert all(a["params"]["tenant"] == "t2" for a in listed.json()["approvals"]), state
    viewed = httpx.get(f"{base}/approvals/{approval}", headers=_auth(t2_lead), timeout=30)
    assert (viewed.status_code, viewed.json()["code"]) == (404, "approval-not-found")
    for verb in ("approve", "reject"):
        refused = _decide(base, t2_lead, approval, verb)
        assert (refused.status_code, refused.json()["code"]) == (404, "approval-not-found")
    assert _cancel(base, support, order, approval).json()["code"] == "approval-pending"

    # t1's lead lists and decides it; t2's lead decides t2's own requests
    listed = httpx.get(f"{base}/approvals?limit=100", headers=_auth(lead), timeout=30)
    assert approval in [a["id"] for a in listed.json()["approvals"]]
    assert _decide(base, lead, approval, "approve").status_code == 200
    assert _cancel(base, support, order, approval).status_code == 200
    theirs = _cancel(base, token_for("support-t2"), "O-1002")
    assert theirs.status_code == 202, theirs.text
    t2_approval = theirs.json()["approval"]["id"]
    listed = httpx.get(f"{base}/approvals?limit=100", headers=_auth(t2_lead), timeout=30)
    assert t2_approval in [a["id"] for a in listed.json()["approvals"]]
    assert approval not in [a["id"] for a in listed.json()["approvals"]]
    assert _decide(base, lead, t2_approval, "reject").json()["code"] == "approval-not-found"
    assert _decide(base, t2_lead, t2_approval, "reject", reason="not ours").status_code == 200

    # once decided and used, each tenant's lists still hold its own requests only
    def listed_ids(who: str, state: str) -> list[str]:
        listed = httpx.get(f"{base}/approvals?state={state}&limit=100", headers=_auth(who),
                           timeout=30)  # fmt: skip
        assert listed.status_code == 200, listed.text
        assert len({a["params"]["tenant"] for a in listed.json()["approvals"]}) <= 1
        return [a["id"] for a in listed.json()["approvals"]]

    assert approval in listed_ids(lead, "used") and approval not in listed_ids(t2_lead, "used")
    assert t2_approval in listed_ids(t2_lead, "rejected")
    assert t2_approval not in listed_ids(lead, "rejected")
    suspended = token_for("suspended-support")  # support, suspended: asks nothing, sees nothing
    seen = httpx.get(f"{base}/approvals/{t2_approval}", headers=_auth(suspended), timeout=30)
    assert (seen.status_code, seen.json()["code"]) == (404, "approval-not-found")


def test_the_list_pages_with_a_cursor_to_its_end(server: Served, token_for: Token) -> None:
    """Three requests, the lead's list a request a page: ``next_cursor`` leads through every
    page once, the last page has none and says ``truncated: false``; a cursor only positions
    (the lead's own request is on no page); a tampered cursor and a cursor of another state's
    list are 400 ``cursor-invalid``; the audit trail says a cursor came, never what it held."""
    base = server.base
    support, lead = token_for("support-console"), token_for("support-lead")
    made = [
        _cancel(base, support, _new_order(base, token_for)).json()["approval"]["id"]
        for _ in range(3)
    ]
    own = _cancel(base, lead, _new_order(base, token_for))  # the lead's own: never its to list
    assert own.status_code == 202, own.text

    def page(**params: str) -> httpx.Response:
        return httpx.get(f"{base}/approvals", params=params, headers=_auth(lead), timeout=30)

    pages: list[dict[str, Any]] = []
    cursors: list[str] = []
    while True:
        got = page(limit="1", **({"cursor": cursors[-1]} if cursors else {}))
        assert got.status_code == 200, got.text
        body = got.json()
        pages.append(body)
        assert len(pages) < 500, "the pages never end"
        if "next_cursor" not in body:
            break
        assert body["truncated"] is True and len(body["approvals"]) == 1
        cursors.append(body["next_cursor"])
    assert pages[-1]["truncated"] is False and len(pages[-1]["approvals"]) == 1
    listed = [a for body in pages for a in body["approvals"]]
    ids = [a["id"] for a in listed]
    assert len(ids) == len(set(ids))  # none twice
    assert [i for i in ids if i in made] == made  # each once, oldest first
    assert own.json()["approval"]["id"] not in ids
    times = [a["created_at"] for a in listed]
    assert times == sorted(times)
    assert all(body["state"] == "pending" for body in pages)
    # a page of 2 from the first cursor answers what pages of 1 did after it
    two = page(limit="2", cursor=cursors[0]).json()
    assert [a["id"] for a in two["approvals"]] == ids[1:3]

    cursor = cursors[0]
    tampered = ("f" if cursor[0] != "f" else "e") + cursor[1:]  # its first byte is no "{"
    twice = f"{base}/approvals?cursor={cursor}&cursor={cursor}"
    for refused in (
        page(limit="1", cursor=tampered),
        page(limit="1", cursor=cursor + "A"),
        page(limit="1", cursor=cursor[:-2]),
        httpx.get(twice, headers=_auth(lead), timeout=30),
        page(limit="1", state="approved", cursor=cursor),  # another state's list
        page(state="used", cursor=cursor),
    ):
        assert refused.status_code == 400, refused.text
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.json()["code"] == "cursor-invalid"
        assert cursor not in refused.text
    # none of the approver's own, nor another tenant's, even with a cursor
    t2 = page(limit="100", cursor=cursor)
    assert own.json()["approval"]["id"] not in [a["id"] for a in t2.json()["approvals"]]
    other_tenant = httpx.get(
        f"{base}/approvals",
        params={"limit": "100", "cursor": cursor},
        headers=_auth(token_for("support-lead-t2")),
        timeout=30,
    )
    assert other_tenant.status_code == 200, other_tenant.text
    assert all(a["params"]["tenant"] == "t2" for a in other_tenant.json()["approvals"])

    followed = page(limit="1", cursor=cursor)
    [event] = _events_of(server, followed.headers["x-request-id"])
    meta = event["protoPayload"]["metadata"]["approval"]
    assert meta == {"id": None, "event": "approval.listed", "state": "pending", "count": 1,
                    "cursor": True, "nextCursor": True}  # fmt: skip
    assert cursor not in str(event)
    [event] = _events_of(server, page(limit="1", state="used", cursor=cursor).json()["request_id"])
    assert event["protoPayload"]["status"]["message"] == "cursor-invalid"
    assert event["protoPayload"]["metadata"]["approval"]["cursor"] is True
    assert cursor not in str(event)
