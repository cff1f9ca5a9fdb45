"""Approvals on the request path and for approvers, over the approvals table.

- ``request``: an allowed call to a route with ``approval:`` and no ``Approval-Id`` stores a
  pending request (its values as approvers see them: ``audit.redact``'s as their keyed hash) and
  answers 202 ``approval-required`` (``Gateway._run``).
- ``check``: a call with ``Approval-Id``, before its budget is spent: a strong snapshot read of
  the request and ``record.replay_refusal`` (a cheap refusal; the claim checks again).
- ``guard`` / ``claim``: the use, exactly once. A write's guard reads (and locks) the row in the
  write's own read-write transaction, checks it again and marks it used: marked if and only if
  the write commits; concurrent replays serialise on the row and the losers find it used (409
  ``approval-used``). A read claims its approval in a read-write transaction of its own, then
  runs: a read that then fails has used its approval all the same.
- ``decide``, ``listing``, ``get``: the approvers' side (``gateway.approvals.endpoints``), each
  judged under the live policy (``policy.approval.decider_verdict``) and on the request's
  ``approval.match`` values: a request stores their keyed digest (``Scope``,
  ``record.scope_hash``); an approver sees and decides it only when its own token binds the
  same values (``scope_of``: a lead of tenant t2 never sees tenant t1's requests), and the list
  selects by the approver's digests.

The table and its list are in the policy's ``spanner.dialect`` (``spanner/approvals.py``).
Requests and decisions run under the identity of the route's query; reading a request by its id
or listing them under the first identity (by name) whose query some route's approval guards.
Spanner not knowing the table: 503 ``approval-table-missing`` (logged: run ``spangate init-db``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import hmac
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from typing import Any

from google.api_core import exceptions as gexc

from gateway.approvals.record import (
    ApprovalRecord,
    ListCursor,
    decision_refusal,
    new_approval_id,
    replay_refusal,
    request_hash,
    scope_hash,
)
from gateway.audit.event import redacted
from gateway.auth.principal import Principal
from gateway.errors import ApprovalRefused
from gateway.policy.approval import decider_verdict, match_names
from gateway.policy.bind import claim_values
from gateway.policy.compiled import CompiledPolicy, CompiledRoute
from gateway.policy.decide import Decision
from gateway.policy.types import json_value
from gateway.spanner import approvals as table
from gateway.spanner.errors import grpc_code, map_error, withheld
from gateway.spanner.execute import Executor, Guard

__all__ = ["APPROVAL_TIMEOUT_SECONDS", "Approvals", "route_key"]

log = logging.getLogger("spangate")

APPROVAL_TIMEOUT_SECONDS = 10.0  # a request, a decision, a list, a read's claim


def route_key(route: CompiledRoute) -> str:
    """How a request names its route: ``METHOD /template``."""
    return f"{route.model.method} {route.template}"


def approval_identities(policy: CompiledPolicy) -> list[str]:
    """The identities whose queries some route's approval guards (they use the table)."""
    return sorted({r.query.model.identity for r in policy.routes if r.model.approval is not None})


@contextlib.contextmanager
def _table_errors(identity: str, role: str | None) -> Iterator[None]:
    """Spanner's errors on the approvals table: its absence 503 ``approval-table-missing``,
    anything else mapped as a statement's (never Spanner's words to the caller)."""
    try:
        yield
    except (gexc.InvalidArgument, gexc.NotFound) as exc:
        if table.TABLE in str(exc):
            log.error(
                "the approvals table is missing: run `spangate init-db` (%s, %s)",
                grpc_code(exc),
                withheld(exc),
            )
            raise ApprovalRefused(
                "approvals are not set up on this gateway's database; nothing ran",
                code="approval-table-missing",
            ) from None
        raise map_error(exc, identity=identity, role=role) from exc
    except (gexc.GoogleAPICallError, gexc.RetryError) as exc:
        raise map_error(exc, identity=identity, role=role) from exc


class Approvals:
    """The approvals of one gateway (its executor, its redaction key, its clock)."""

    def __init__(
        self,
        executor: Executor,
        *,
        audit_key: bytes | None,
        clock: Callable[[], dt.datetime] | None = None,
    ) -> None:
        self.executor = executor
        self._key = audit_key
        # the request digest's key (record.request_hash): never the redaction key itself
        self._digest_key = (
            hmac.new(audit_key, b"spangate approval request v1", hashlib.sha256).digest()
            if audit_key
            else None
        )
        self.clock: Callable[[], dt.datetime] = clock or (lambda: dt.datetime.now(dt.UTC))

    # -- helpers --------------------------------------------------------------------------------
    def _role(self, identity: str) -> str | None:
        return self.executor.databases.roles.get(identity)

    async def _transact(self, identity: str, work: Callable[[Any], Any], tag: str) -> Any:
        with _table_errors(identity, self._role(identity)):
            return await self.executor.transact(
                identity, work, tag=tag, timeout=APPROVAL_TIMEOUT_SECONDS
            )

    async def read(self, policy: CompiledPolicy, approval_id: str) -> ApprovalRecord | None:
        """The request ``approval_id`` (a strong snapshot read), None when there is none or the
        policy guards no route with an approval (no identity may read the table)."""
        identities = approval_identities(policy)
        if not identities:
            return None
        identity = identities[0]

        async def read(snapshot: Any) -> ApprovalRecord | None:
            return await table.read(snapshot, approval_id)

        with _table_errors(identity, self._role(identity)):
            return await self.executor.snapshot_read(
                identity, read, timeout=APPROVAL_TIMEOUT_SECONDS
            )

    def shown_params(self, policy: CompiledPolicy, decision: Decision) -> dict[str, Any]:
        """The bound values as approvers see them: ``audit.redact``'s as their keyed hash."""
        assert decision.bound is not None
        redact = set(policy.model.audit.redact)
        return {
            name: redacted(value, self._key) if name in redact else json_value(value)
            for name, value in sorted(decision.bound.values.items())
        }

    def digest(self, decision: Decision) -> str:
        assert decision.route is not None and decision.bound is not None
        route = decision.route
        return request_hash(
            route.model.method,
            route.template,
            route.query_name,
            decision.bound.values,
            self._digest_key,
        )

    def scope(self, route: CompiledRoute, values: Mapping[str, Any]) -> str:
        """The digest of a request's match values (``record.scope_hash``): each with the claim
        it is bound from and its type, so a reload that binds the name from another claim (or
        as another type) shares nothing with the requests made before it."""
        assert route.model.approval is not None
        names = match_names(route.model.approval, route.query.model.params)
        specs = route.query.params
        return scope_hash(
            route.model.method,
            route.template,
            route.query_name,
            {
                name: [specs[name].claim, str(specs[name].ptype), values[name]]
                for name in names
            },
            self._digest_key,
        )

    def scope_of(self, route: CompiledRoute, who: Principal) -> str | None:
        """The digest of the match values ``who``'s own token binds for ``route`` (None when it
        lacks one of the claims: it shares no request's values)."""
        assert route.model.approval is not None
        names = match_names(route.model.approval, route.query.model.params)
        values = claim_values(route.query.params, names, who)
        return None if values is None else self.scope(route, values)

    # -- the request path -----------------------------------------------------------------------
    async def request(
        self, policy: CompiledPolicy, decision: Decision, principal: Principal, request_id: str
    ) -> ApprovalRecord:
        """Store a pending request for this allowed call; its record."""
        route = decision.route
        assert route is not None and route.model.approval is not None
        assert decision.bound is not None
        now = self.clock()
        record = ApprovalRecord(
            approval_id=new_approval_id(),
            state="pending",
            issuer=principal.issuer,
            iss=principal.iss,
            subject=principal.subject,
            actors=tuple(a for a in principal.actors if a),
            route=route_key(route),
            query=route.query_name,
            request_hash=self.digest(decision),
            params=self.shown_params(policy, decision),
            approvers=tuple(route.model.approval.approvers),
            request_id=request_id,
            created_at=now,
            expires_at=now + dt.timedelta(seconds=route.model.approval.ttl_seconds),
            scope=self.scope(route, decision.bound.values),
        )

        async def work(transaction: Any) -> None:
            table.insert(transaction, record)

        await self._transact(route.query.model.identity, work, "spangate approval request")
        return record

    async def check(
        self,
        policy: CompiledPolicy,
        decision: Decision,
        principal: Principal,
        approval_id: str,
        *,
        keyed: bool,
    ) -> ApprovalRecord:
        """The approval of a repeated call, or its refusal (before anything is spent)."""
        assert decision.route is not None
        record = await self.read(policy, approval_id)
        refusal = replay_refusal(
            record,
            principal,
            route=route_key(decision.route),
            query=decision.route.query_name,
            digest=self.digest(decision),
            now=self.clock(),
            keyed=keyed,
        )
        if refusal is not None:
            raise refusal
        assert record is not None
        return record

    def guard(
        self, decision: Decision, principal: Principal, approval_id: str, request_id: str
    ) -> Guard:
        """The use of the approval inside a write's transaction (``Executor.run(guard=...)``)."""
        assert decision.route is not None
        route, query = route_key(decision.route), decision.route.query_name
        digest = self.digest(decision)
        identity = decision.route.query.model.identity
        role = self._role(identity)

        async def use(transaction: Any) -> None:
            with _table_errors(identity, role):
                record = await table.read(transaction, approval_id)
            now = self.clock()
            refusal = replay_refusal(
                record, principal, route=route, query=query, digest=digest, now=now
            )
            if refusal is not None:
                raise refusal
            assert record is not None
            table.update(
                transaction, replace(record, state="used", used_at=now, used_by=request_id)
            )

        return use

    async def claim(
        self, decision: Decision, principal: Principal, approval_id: str, request_id: str
    ) -> None:
        """A read's approval used, in a transaction of its own, before the read runs."""
        assert decision.route is not None
        use = self.guard(decision, principal, approval_id, request_id)
        await self._transact(decision.route.query.model.identity, use, "spangate approval claim")

    # -- the approvers' side --------------------------------------------------------------------
    def _live_route(self, policy: CompiledPolicy, record: ApprovalRecord) -> CompiledRoute | None:
        """The live policy's route of a request, while it still waits for approval."""
        for route in policy.routes:
            if route_key(route) == record.route and route.model.approval is not None:
                return route
        return None

    def may_see(self, policy: CompiledPolicy, record: ApprovalRecord, who: Principal) -> bool:
        """Its requester, and whoever may decide requests to its route and shares the request's
        match values (its tenant, by default), see a request."""
        if record.requested_by(who):
            return True
        route = self._live_route(policy, record)
        if route is None or route.model.approval is None:
            return False
        if decider_verdict(policy.roles, route.model, route.model.approval, who).problem:
            return False
        scope = self.scope_of(route, who)
        return (
            scope is not None
            and record.scope is not None
            and hmac.compare_digest(scope, record.scope)
        )

    async def get(self, policy: CompiledPolicy, who: Principal, approval_id: str) -> ApprovalRecord:
        """A request its requester or an approver may see, else 404 ``approval-not-found``."""
        record = await self.read(policy, approval_id)
        if record is None or not self.may_see(policy, record, who):
            raise ApprovalRefused(
                "no approval request with this id that you may see", code="approval-not-found"
            )
        return record

    async def decide(
        self,
        policy: CompiledPolicy,
        who: Principal,
        approval_id: str,
        *,
        approve: bool,
        reason: str | None,
    ) -> tuple[ApprovalRecord, str | None]:
        """Approve or reject a pending request: (the request as decided, the approver role
        that held). 404 when the caller may not see it; 403 ``not-approver``,
        ``denied-by-role``, ``approval-own-request``; 409 ``approval-decided``,
        ``approval-expired``."""
        found = await self.read(policy, approval_id)
        if found is None or not self.may_see(policy, found, who):
            raise ApprovalRefused(
                "no approval request with this id that you may see", code="approval-not-found"
            )
        route = self._live_route(policy, found)
        if route is None or route.model.approval is None:  # only its requester sees it here
            raise ApprovalRefused(
                "the live policy's route no longer waits for approval: nobody decides this request",
                code="not-approver",
            )
        verdict = decider_verdict(policy.roles, route.model, route.model.approval, who)
        if verdict.problem is not None:
            raise verdict.problem
        approval = route.model.approval
        decided: dict[str, ApprovalRecord] = {}

        async def work(transaction: Any) -> None:
            record = await table.read(transaction, approval_id)
            if record is None:
                raise ApprovalRefused("no such approval request", code="approval-not-found")
            now = self.clock()
            refusal = decision_refusal(record, who, now)
            if refusal is not None:
                raise refusal
            changed = replace(
                record,
                state="approved" if approve else "rejected",
                decided_at=now,
                decider_iss=who.iss,
                decider_subject=who.subject,
                decider_actors=tuple(a for a in who.actors if a),
                reason=reason,
                # an approval is good for ttl from now; a rejection stays until its request's time
                expires_at=now + dt.timedelta(seconds=approval.ttl_seconds)
                if approve
                else record.expires_at,
            )
            table.update(transaction, changed)
            decided["record"] = changed

        await self._transact(route.query.model.identity, work, "spangate approval decision")
        return decided["record"], verdict.role

    async def listing(
        self,
        policy: CompiledPolicy,
        who: Principal,
        *,
        state: str,
        limit: int,
        after: ListCursor | None = None,
    ) -> tuple[list[ApprovalRecord], bool]:
        """The requests in ``state`` to routes ``who`` may decide (pending: not yet expired,
        and never its own), oldest first: at most ``limit``, and whether there were more.
        ``after`` (a cursor of ``state``'s list) only positions: the page starts past that row,
        and selects by the same scopes, expiry and requester as a first page does."""
        scopes = sorted(
            {
                scope
                for r in policy.routes
                if r.model.approval is not None
                and decider_verdict(policy.roles, r.model, r.model.approval, who).problem is None
                and (scope := self.scope_of(r, who)) is not None
            }
        )
        assert after is None or after.state == state  # parse_list_cursor refuses another's
        identities = approval_identities(policy)
        if not scopes or not identities:
            return [], False
        identity = identities[0]
        now = self.clock()

        async def read(snapshot: Any) -> list[ApprovalRecord]:
            return await table.list_rows(
                snapshot,
                state=state,
                scopes=scopes,
                live=now if state in ("pending", "approved") else None,
                limit=limit + 1,
                not_by=(who.iss, who.subject) if state == "pending" else None,
                after=after,
                dialect=policy.model.spanner.dialect,
            )

        with _table_errors(identity, self._role(identity)):
            rows = await self.executor.snapshot_read(
                identity, read, timeout=APPROVAL_TIMEOUT_SECONDS
            )
        return rows[:limit], len(rows) > limit
