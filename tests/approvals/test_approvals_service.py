"""``gateway.approvals.service.Approvals`` through its seams: the executor (a fake that keeps
the table's rows in memory and applies a transaction's buffered writes only when its work
returns, as Spanner commits) and the clock. The transitions of a request, pending -> approved
or rejected -> used, with who may take each and when; the emulator-backed tests
(tests/test_approvals_live.py, tests/spanner/test_spanner_approvals.py) cover Spanner itself."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from gateway.approvals.record import request_hash
from gateway.approvals.service import Approvals
from gateway.auth.principal import Principal
from gateway.errors import GatewayError
from gateway.policy.compiled import CompiledPolicy, compile_policy
from gateway.policy.decide import Decision, decide
from gateway.policy.load import load_policy, load_policy_data
from gateway.policy.simulate import principal_for, request_facts
from gateway.spanner.approvals import COLUMNS, TABLE

EXAMPLE = Path(__file__).resolve().parents[2] / "policy.example.yaml"
POLICY = compile_policy(load_policy(EXAMPLE, env={}))
T0 = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
TTL = dt.timedelta(minutes=15)  # the example's cancel_order route


class Transaction:
    """What ``gateway.spanner.approvals`` calls on a transaction or a snapshot."""

    def __init__(self, rows: dict[str, tuple[Any, ...]], *, writable: bool) -> None:
        self.rows, self.writable = rows, writable
        self.buffered: list[tuple[str, tuple[Any, ...]]] = []

    async def read(
        self, table: str, columns: Any, keyset: Any, request_options: Any = None
    ) -> AsyncIterator[tuple[Any, ...]]:
        assert table == TABLE and tuple(columns) == COLUMNS
        keys = [key[0] for key in keyset.keys]

        async def rows() -> AsyncIterator[tuple[Any, ...]]:
            for key in keys:
                if key in self.rows:
                    yield self.rows[key]

        return rows()

    def insert(self, table: str, columns: Any, values: list[tuple[Any, ...]]) -> None:
        assert self.writable and table == TABLE
        self.buffered += [("insert", v) for v in values]

    def update(self, table: str, columns: Any, values: list[tuple[Any, ...]]) -> None:
        assert self.writable and table == TABLE
        self.buffered += [("update", v) for v in values]


class Executor:
    """The two calls ``Approvals`` makes of ``spanner.execute.Executor``, over one dict."""

    def __init__(self) -> None:
        self.rows: dict[str, tuple[Any, ...]] = {}
        self.databases = SimpleNamespace(roles={"shop_writer": "shop_writer"})
        self.identities: list[str] = []

    async def transact(
        self, identity: str, work: Callable[[Any], Awaitable[Any]], *, tag: str, timeout: float
    ) -> Any:
        self.identities.append(identity)
        transaction = Transaction(self.rows, writable=True)
        result = await work(transaction)  # raises: nothing is applied
        for kind, values in transaction.buffered:
            assert (values[0] in self.rows) is (kind == "update"), (kind, values[0])
            self.rows[values[0]] = values
        return result

    async def snapshot_read(
        self, identity: str, read: Callable[[Any], Awaitable[Any]], *, timeout: float
    ) -> Any:
        self.identities.append(identity)
        return await read(Transaction(self.rows, writable=False))


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> dt.datetime:
        return self.now


def person(sub: str, *groups: str, **claims: Any) -> Principal:
    return principal_for(
        POLICY.model, {"iss": "okta", "sub": sub, "groups": list(groups), "tenant": "t1", **claims}
    )


ASKER = person("00u-support-1", "support")
LEAD = person("00u-lead-1", "support", "support-leads")
OTHER_LEAD = person("00u-lead-2", "support-leads")
SUSPENDED_LEAD = person("00u-lead-3", "support-leads", "suspended")


def cancel(principal: Principal, order: str = "O-1", policy: CompiledPolicy = POLICY) -> Decision:
    found = decide(policy, request_facts(f"POST /v1/orders/{order}/cancel", {}), principal)
    assert found.allow, found.problem
    return found


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def executor() -> Executor:
    return Executor()


@pytest.fixture
def approvals(executor: Executor, clock: Clock) -> Approvals:
    return Approvals(executor, audit_key=b"k" * 32, clock=clock)  # type: ignore[arg-type]


async def code_of(work: Awaitable[Any]) -> str:
    try:
        await work
    except GatewayError as exc:
        return exc.code
    return "ok"


async def test_the_stored_digest_is_keyed_from_the_audit_key(
    approvals: Approvals, executor: Executor
) -> None:
    """Never the plain SHA-256 of the values, which redacted values are among (record.py)."""
    made = await approvals.request(POLICY, cancel(ASKER), ASKER, "req-1")
    ask = cancel(ASKER)
    assert ask.route is not None and ask.bound is not None
    plain = request_hash("POST", ask.route.template, ask.route.query_name, ask.bound.values)
    assert made.request_hash != plain
    unkeyed = Approvals(executor, audit_key=None)  # type: ignore[arg-type]
    assert unkeyed.digest(ask) == plain  # no key: the policy redacts nothing (serve requires it)


async def test_a_request_is_stored_pending_for_its_ttl(
    approvals: Approvals, executor: Executor
) -> None:
    made = await approvals.request(POLICY, cancel(ASKER), ASKER, "req-1")
    assert executor.identities == ["shop_writer"]  # the route's query's identity
    stored = await approvals.read(POLICY, made.approval_id)
    assert stored == made
    assert (stored.state, stored.created_at, stored.expires_at) == ("pending", T0, T0 + TTL)
    assert stored.route == "POST /v1/orders/{order_id}/cancel" and stored.query == "cancel_order"
    assert dict(stored.params) == {"order_id": "O-1", "tenant": "t1"}
    assert stored.approvers == ("support-leads",) and stored.request_id == "req-1"
    assert (stored.iss, stored.subject) == (ASKER.iss, ASKER.subject)


async def test_approve_then_use_once(approvals: Approvals, clock: Clock) -> None:
    made = await approvals.request(POLICY, cancel(ASKER), ASKER, "req-1")
    ask = cancel(ASKER)
    assert await code_of(approvals.check(POLICY, ask, ASKER, made.approval_id, keyed=False)) == (
        "approval-pending"
    )
    clock.now = T0 + dt.timedelta(minutes=10)
    decided, role = await approvals.decide(POLICY, LEAD, made.approval_id, approve=True,
                                           reason="ticket 42")  # fmt: skip
    assert role == "support-leads" and decided.state == "approved"
    assert decided.decided_at == clock.now and decided.reason == "ticket 42"
    assert (decided.decider_iss, decided.decider_subject) == (LEAD.iss, LEAD.subject)
    assert decided.expires_at == clock.now + TTL  # good for ttl from the decision
    assert await approvals.read(POLICY, made.approval_id) == decided

    again = approvals.decide(POLICY, OTHER_LEAD, made.approval_id, approve=False, reason=None)
    assert await code_of(again) == "approval-decided"
    # another order, another principal: a mismatch
    assert (
        await code_of(
            approvals.check(POLICY, cancel(ASKER, "O-2"), ASKER, made.approval_id, keyed=False)
        )
        == "approval-mismatch"
    )
    assert (
        await code_of(approvals.check(POLICY, cancel(LEAD), LEAD, made.approval_id, keyed=False))
        == "approval-mismatch"
    )

    clock.now = T0 + dt.timedelta(minutes=20)  # past the request's ttl, within the approval's
    assert (await approvals.check(POLICY, ask, ASKER, made.approval_id, keyed=False)) == decided
    await approvals.claim(ask, ASKER, made.approval_id, "req-2")
    used = await approvals.read(POLICY, made.approval_id)
    assert used is not None
    assert (used.state, used.used_at, used.used_by) == ("used", clock.now, "req-2")
    assert await code_of(approvals.claim(ask, ASKER, made.approval_id, "req-3")) == "approval-used"
    assert await code_of(approvals.check(POLICY, ask, ASKER, made.approval_id, keyed=False)) == (
        "approval-used"
    )
    # a keyed write goes on to its key's stored answer; its transaction's guard refuses again
    assert (await approvals.check(POLICY, ask, ASKER, made.approval_id, keyed=True)).state == "used"


async def test_a_rejection_keeps_the_request_s_time_and_never_runs(
    approvals: Approvals, clock: Clock
) -> None:
    made = await approvals.request(POLICY, cancel(ASKER), ASKER, "req-1")
    clock.now = T0 + dt.timedelta(minutes=1)
    decided, _ = await approvals.decide(POLICY, LEAD, made.approval_id, approve=False,
                                        reason="not this one")  # fmt: skip
    assert decided.state == "rejected" and decided.expires_at == T0 + TTL
    assert await code_of(approvals.claim(cancel(ASKER), ASKER, made.approval_id, "r")) == (
        "approval-rejected"
    )
    assert (
        await code_of(
            approvals.decide(POLICY, OTHER_LEAD, made.approval_id, approve=True, reason=None)
        )
        == "approval-decided"
    )


async def test_who_may_decide(approvals: Approvals) -> None:
    made = await approvals.request(POLICY, cancel(LEAD), LEAD, "req-1")  # a lead asks
    own = approvals.decide(POLICY, LEAD, made.approval_id, approve=True, reason=None)
    assert await code_of(own) == "approval-own-request"
    # the lead acting through an agent is the same party
    agent = person("00u-lead-1", "support-leads", act={"sub": "order-agent"})
    assert (
        await code_of(approvals.decide(POLICY, agent, made.approval_id, approve=True, reason=None))
        == "not-approver"
    )  # a delegated token holds support-leads through no entry
    assert (
        await code_of(
            approvals.decide(POLICY, SUSPENDED_LEAD, made.approval_id, approve=True, reason=None)
        )
        == "approval-not-found"
    )  # a deny role: it may not see the request either
    assert (
        await code_of(approvals.decide(POLICY, ASKER, made.approval_id, approve=True, reason=None))
        == "approval-not-found"
    )  # no approver role, not its request: nothing is told
    assert (
        await code_of(approvals.decide(POLICY, OTHER_LEAD, "f" * 32, approve=True, reason=None))
        == "approval-not-found"
    )
    decided, role = await approvals.decide(POLICY, OTHER_LEAD, made.approval_id, approve=True,
                                           reason=None)  # fmt: skip
    assert decided.state == "approved" and role == "support-leads"
    # the requester sees its own request; an outsider does not
    assert (await approvals.get(POLICY, LEAD, made.approval_id)).state == "approved"
    outsider = person("00u-m-1", "marketing")
    assert await code_of(approvals.get(POLICY, outsider, made.approval_id)) == (
        "approval-not-found"
    )


async def test_pending_requests_and_approvals_expire(approvals: Approvals, clock: Clock) -> None:
    late = await approvals.request(POLICY, cancel(ASKER), ASKER, "req-1")
    approved = await approvals.request(POLICY, cancel(ASKER, "O-2"), ASKER, "req-2")
    await approvals.decide(POLICY, LEAD, approved.approval_id, approve=True, reason=None)
    clock.now = T0 + TTL
    assert (
        await code_of(approvals.decide(POLICY, LEAD, late.approval_id, approve=True, reason=None))
        == "approval-expired"
    )
    assert (
        await code_of(approvals.claim(cancel(ASKER, "O-2"), ASKER, approved.approval_id, "r"))
        == "approval-expired"
    )
    shown = await approvals.get(POLICY, ASKER, approved.approval_id)
    assert shown.view(clock.now)["state"] == "expired"


async def test_a_route_that_no_longer_waits_for_approval_has_nobody_to_decide(
    approvals: Approvals,
) -> None:
    made = await approvals.request(POLICY, cancel(ASKER), ASKER, "req-1")
    data = POLICY.model.model_dump(by_alias=True, exclude_none=True)
    for route in data["routes"]:
        route.pop("approval", None)
    live = compile_policy(load_policy_data(data, base_dir=EXAMPLE.parent))
    assert (
        await code_of(approvals.decide(live, LEAD, made.approval_id, approve=True, reason=None))
        == "approval-not-found"
    )
    # (no route of the live policy waits for approval: no identity reads the table at all)
    assert await approvals.read(live, made.approval_id) is None


async def test_a_guard_whose_write_fails_leaves_the_approval_unused(
    approvals: Approvals, executor: Executor
) -> None:
    made = await approvals.request(POLICY, cancel(ASKER), ASKER, "req-1")
    await approvals.decide(POLICY, LEAD, made.approval_id, approve=True, reason=None)
    guard = approvals.guard(cancel(ASKER), ASKER, made.approval_id, "req-2")

    async def write(transaction: Any) -> None:
        await guard(transaction)
        raise RuntimeError("the statement failed")

    with pytest.raises(RuntimeError):
        await executor.transact("shop_writer", write, tag="t", timeout=1)
    stored = await approvals.read(POLICY, made.approval_id)
    assert stored is not None and stored.state == "approved"

    async def commits(transaction: Any) -> None:
        await guard(transaction)

    await executor.transact("shop_writer", commits, tag="t", timeout=1)
    stored = await approvals.read(POLICY, made.approval_id)
    assert stored is not None and (stored.state, stored.used_by) == ("used", "req-2")


T2_LEAD = person("00u-lead-t2", "support-leads", tenant="t2")


def _with_approval(**approval: Any) -> CompiledPolicy:
    """The example policy with the cancel route's ``approval:`` changed."""
    data = POLICY.model.model_dump(by_alias=True, exclude_none=True)
    for route in data["routes"]:
        if "approval" in route:
            route["approval"].update(approval)
    return compile_policy(load_policy_data(data, base_dir=EXAMPLE.parent))


async def test_an_approver_of_another_tenant_neither_sees_nor_decides(
    approvals: Approvals,
) -> None:
    """``approval.match`` by default: every claim-bound parameter (the example's tenant)."""
    made = await approvals.request(POLICY, cancel(ASKER), ASKER, "req-1")
    assert made.scope is not None
    for stranger in (T2_LEAD, person("00u-lead-4", "support-leads", tenant=None)):
        assert await code_of(approvals.get(POLICY, stranger, made.approval_id)) == (
            "approval-not-found"
        )
        deciding = approvals.decide(POLICY, stranger, made.approval_id, approve=True, reason=None)
        assert await code_of(deciding) == "approval-not-found"
    assert (await approvals.read(POLICY, made.approval_id)).state == "pending"  # type: ignore[union-attr]
    # a lead of the requester's tenant decides it; the t2 lead decides t2's own requests
    decided, _ = await approvals.decide(POLICY, OTHER_LEAD, made.approval_id, approve=True,
                                        reason=None)  # fmt: skip
    assert decided.state == "approved"
    t2_asker = person("00u-support-t2", "support", tenant="t2")
    theirs = await approvals.request(POLICY, cancel(t2_asker), t2_asker, "req-2")
    assert theirs.scope != made.scope
    assert (await approvals.get(POLICY, T2_LEAD, theirs.approval_id)).approval_id == (
        theirs.approval_id
    )
    assert await code_of(approvals.get(POLICY, OTHER_LEAD, theirs.approval_id)) == (
        "approval-not-found"
    )


async def test_match_names_what_approvers_must_share_and_empty_shares_nothing(
    approvals: Approvals,
) -> None:
    anyone = _with_approval(match=[])
    made = await approvals.request(anyone, cancel(ASKER, policy=anyone), ASKER, "req-1")
    decided, _ = await approvals.decide(anyone, T2_LEAD, made.approval_id, approve=True,
                                        reason=None)  # fmt: skip
    assert decided.state == "approved"  # match: [] lets any approver decide any request
    # the live policy's match judges: a request made under match [] is no t1 lead's under
    # the default (its stored digest covers other values), and the reverse
    assert await code_of(approvals.get(POLICY, OTHER_LEAD, made.approval_id)) == (
        "approval-not-found"
    )


async def test_the_scope_is_keyed_and_a_row_without_one_is_only_its_requester_s(
    approvals: Approvals, executor: Executor
) -> None:
    made = await approvals.request(POLICY, cancel(ASKER), ASKER, "req-1")
    unkeyed = Approvals(executor, audit_key=None)  # type: ignore[arg-type]
    route = cancel(ASKER).route
    assert route is not None
    assert unkeyed.scope(route, {"tenant": "t1"}) != made.scope  # keyed from the audit key
    assert approvals.scope(route, {"tenant": "t1", "order_id": "O-9"}) == made.scope  # tenant only
    # a row written before the Scope column existed (init-db adds it): no approver sees it
    row = list(executor.rows[made.approval_id])
    row[COLUMNS.index("Scope")] = None
    executor.rows[made.approval_id] = tuple(row)
    assert await code_of(approvals.get(POLICY, OTHER_LEAD, made.approval_id)) == (
        "approval-not-found"
    )
    assert (await approvals.get(POLICY, ASKER, made.approval_id)).scope is None


async def test_a_reload_that_binds_the_matched_name_from_another_claim_shares_nothing(
    approvals: Approvals,
) -> None:
    """The digest covers each value's claim and type, not its name alone."""
    made = await approvals.request(POLICY, cancel(ASKER), ASKER, "req-1")
    data = POLICY.model.model_dump(by_alias=True, exclude_none=True)
    data["queries"]["cancel_order"]["params"]["tenant"]["from"] = "claim.org"
    reloaded = compile_policy(load_policy_data(data, base_dir=EXAMPLE.parent))
    org_lead = person("00u-lead-5", "support-leads", org="t1")
    assert await code_of(approvals.get(reloaded, org_lead, made.approval_id)) == (
        "approval-not-found"
    )
    assert await code_of(approvals.get(POLICY, org_lead, made.approval_id)) == "ok"


async def test_an_agent_deciding_for_a_lead_is_named_in_decided_by(
    approvals: Approvals, executor: Executor
) -> None:
    """Who decided: the lead, and the agent acting for it (its delegation chain, as kept)."""
    data = POLICY.model.model_dump(by_alias=True, exclude_none=True)
    data["roles"]["support-leads"] = [{"groups": ["support-leads"], "delegated": True}]
    policy = compile_policy(load_policy_data(data, base_dir=EXAMPLE.parent))
    made = await approvals.request(policy, cancel(ASKER, policy=policy), ASKER, "req-1")
    agent = person("00u-lead-2", "support-leads", act={"sub": "order-agent"})
    decided, _ = await approvals.decide(policy, agent, made.approval_id, approve=True,
                                        reason=None)  # fmt: skip
    assert decided.decider_actors == ("order-agent",)
    stored = await approvals.read(policy, made.approval_id)
    assert stored is not None
    assert stored.view(T0)["decided_by"] == {
        "iss": agent.iss, "sub": "00u-lead-2", "actors": ["order-agent"]
    }  # fmt: skip
    # a row written before the column existed reads as no actors
    row = list(executor.rows[made.approval_id])
    row[COLUMNS.index("DeciderActors")] = None
    executor.rows[made.approval_id] = tuple(row)
    old = await approvals.read(policy, made.approval_id)
    assert old is not None and old.decider_actors == ()
