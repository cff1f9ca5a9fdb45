"""The one path of every call, whatever its transport: ``Gateway.perform`` (``CallPath``, a base
of ``Gateway``).

    perform: resolve (the transport's part: token, route, the caller's values)
          -> decision [-> the shadow's decision] -> [approval asked, or checked and used]
          -> idempotency key -> [cursor opened] -> budget spent -> statement
          -> [page cut, next cursor sealed] -> masks -> exactly one audit event -> Outcome

HTTP (``gateway.app``) and MCP (``gateway.mcp``) each resolve a call their way and hand it here;
if a change to HTTP handling would not also reach MCP, the path has been forked. Traces
(``gateway.tracing``): when ``tracing`` is None the path tests that and creates no span.

Every error is a ``GatewayError`` the transport answers (RFC 9457 problem+json with a stable
``code``, or an MCP tool result carrying it); an unexpected exception becomes a 500 ``internal``
without details (logged with the request id). At the server's shutdown timeout, ``cut_short``
stops the calls still deciding or executing: each is answered 503 ``shutting-down`` and audited.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from gateway.approvals.service import Approvals
from gateway.audit.event import CallRecord
from gateway.audit.recorder import in_transaction_hook, record_call, record_nowait, settle_hook
from gateway.audit.trail import AuditTrail
from gateway.auth.principal import Principal
from gateway.budgets.check import Budgets, Spend
from gateway.call_approval import approval_id_of, ask_approval
from gateway.call_shadow import shadow_decide, shadow_facts, shadow_undecided
from gateway.call_shaping import masked, page_values, paged
from gateway.call_types import Active, Outcome, Resolve, Target
from gateway.errors import AuditUnavailable, BudgetExceeded, GatewayError, ShuttingDown
from gateway.metrics import GatewayMetrics
from gateway.policy.approval import APPROVAL_HEADER
from gateway.policy.compiled import CompiledPolicy
from gateway.policy.decide import Decision, decide_route
from gateway.policy.reads import NO_READS
from gateway.settings import Settings
from gateway.shaping.cursors import CursorKeys
from gateway.shaping.masks import MaskKey
from gateway.spanner.execute import SENT_LOOKUP, SENT_STATEMENT, Executor, Sent, tags_for
from gateway.spanner.idempotency import request_key
from gateway.spanner.results import response_body
from gateway.tracing import Tracing

__all__ = ["CallPath"]

log = logging.getLogger("spangate")


class CallPath:
    """The call path of ``Gateway`` (its base): ``perform``, ``verify``, ``cut_short``. What it
    reads of the gateway is declared here; ``Gateway.__init__`` sets it."""

    settings: Settings
    tracing: Tracing | None  # None: traces are off (nothing on the call path but a test)
    audit: AuditTrail
    budgets: Budgets
    executor: Executor
    approvals: Approvals
    metrics: GatewayMetrics
    unrecorded: int  # calls on their way to the audit trail (batched sinks wait only for these)
    mask_key: MaskKey | None  # the key of `hash` masks (SPANGATE_MASK_KEY)
    cursor_keys: CursorKeys | None  # pagination cursors' (SPANGATE_CURSOR_KEYS)
    clock: Callable[[], float]  # cursors' expiry (tests inject their own)
    _audit_key: bytes | None  # the key of redacted values (AuditKeys.redact)
    _database: str  # the database's resource name, as audit events and spans name it
    # Calls deciding or executing, by the task running each (cut_short stops them), and
    # those cut_short cancelled and that have not yet taken it back (_was_cut).
    _cuttable: dict[asyncio.Task[Any], CallRecord]
    _cut: set[asyncio.Task[Any]]

    async def perform(self, call: CallRecord, active: Active, resolve: Resolve) -> Outcome:
        """One call from any transport (HTTP in ``gateway.app``, MCP in ``gateway.mcp``):
        ``resolve`` does the transport's part (the token, the route, the caller's values), then
        decision, execution and exactly one audit event. The answer is the JSON body or the
        error to answer."""
        self.unrecorded += 1  # on its way to the audit trail (batched sinks wait only for these)
        policy = active.policy  # calls in flight finish on the policy they started with
        if self.settings.audit_claims == "off":  # the event records no claims
            call.reads = NO_READS
        elif active.shadow is not None:  # the event records the claims both policies read
            call.reads = active.reads
        tracing = self.tracing
        if tracing is not None:
            tracing.bind(call)  # the audit event names the request's span
        body: dict[str, Any] | None = None
        task = asyncio.current_task()
        if task is not None:
            self._cuttable[task] = call
        try:
            try:
                body = await self._run(call, active, await resolve(call, active))
            finally:
                if task is not None:
                    self._cuttable.pop(task, None)
            status = call.answer_status  # 200, or 202 approval-required
        except asyncio.CancelledError:
            if not self._was_cut(task):
                self._cancelled(call, policy)
                raise
            status = self._shutting_down(call)
        except GatewayError as exc:
            call.error = exc
            status = exc.status
            if active.shadow is not None and call.decision is None:
                shadow_undecided(call, active, exc.code, self.metrics)
        except Exception:
            log.exception("request %s failed", call.request_id)
            call.error = GatewayError(
                "an unexpected error occurred; see the logs for this request id"
            )
            if call.write:  # as the executor saw it (not-committed when it never got there)
                call.error.extra["outcome"] = call.extra.get("outcome", "not-committed")
            status = 500
        if self._was_cut(task) and call.error is not None:
            # Cut short, but the cancellation came out of the work as another error: the same
            # answer as when it came out as itself.
            status = self._shutting_down(call)
        call.status = status
        self.unrecorded -= 1
        recording = record_call(
            self.audit, call, policy, key=self._audit_key, database=self._database
        )
        if await (recording if tracing is None else tracing.traced("spangate.audit", recording)):
            status, body = call.status, None  # 503 audit-unavailable (or 500): fail closed
        route = call.decision.route if call.decision else None
        self.metrics.observe(
            route.template if route else None,
            status,
            call.error.code if call.error else (call.answer_code or "ok"),
            time.perf_counter() - call.started,
        )
        limits: dict[str, str] = call.extra.get("ratelimit", {})
        if call.error is None and "location" in call.extra:  # 202: where the request is
            limits = {**limits, "Location": call.extra["location"]}
        if call.error is not None and limits:  # every budgeted answer carries them
            call.error.headers = {**limits, **call.error.headers}
        return Outcome(status, body if call.error is None else None, call.error, limits)

    def _cancelled(self, call: CallRecord, policy: CompiledPolicy) -> None:
        """The server gave up on the call (a client gone, the answer window of a shutdown over):
        still one event, queued without waiting."""
        call.error = GatewayError("the request was cancelled", code="cancelled")
        if call.write:  # as the executor saw it (not-committed when it never got there)
            call.error.extra["outcome"] = call.extra.get("outcome", "not-committed")
        call.status = 499
        self.unrecorded -= 1
        record_nowait(self.audit, call, policy, key=self._audit_key, database=self._database)

    @staticmethod
    def _shutting_down(call: CallRecord) -> int:
        """The call was cut short by the shutdown (``cut_short``): its error and status."""
        error = ShuttingDown(
            "the server is stopping and this call did not finish within the shutdown timeout: "
            "it was stopped; retry it"
        )
        if call.write:  # as the executor saw it (not-committed when it never got there)
            error.extra["outcome"] = call.extra.get("outcome", "not-committed")
        call.error = error
        return error.status

    def _was_cut(self, task: asyncio.Task[Any] | None) -> bool:
        """Was ``task`` cancelled by ``cut_short`` alone? Then the cancellation is taken back
        (the call is answered ``shutting-down``); any other cancellation stands."""
        if task is None or task not in self._cut:
            return False
        self._cut.discard(task)
        return task.uncancel() == 0

    def cut_short(self) -> int:
        """The server's shutdown timeout is over: stop every call still deciding, executing or
        reading its body (not one already recording its event or answering), each to be answered
        503 ``shutting-down`` and audited so; returns how many. Calls that end later are
        cancelled by the server (``gateway.server``)."""
        for task in list(self._cuttable):
            if not task.done():
                self._cut.add(task)
                task.cancel(msg="shutting down")
        return len(self._cut)

    async def _run(self, call: CallRecord, active: Active, target: Target) -> dict[str, Any]:
        """Decision, then the statement: the transport-neutral part of ``perform``."""
        policy = active.policy
        assert call.principal is not None  # resolve verified the token
        tracing = self.tracing
        if tracing is None:
            decision = self._decide(policy, target, call)
        else:
            with tracing.step("spangate.decision") as span:
                decision = self._decide(policy, target, call)
                span.set_attributes(
                    {"spangate.decision.allow": decision.allow, "spangate.reason": decision.reason}
                )
        call.decision = decision
        if active.shadow is not None:
            facts = call.extra.pop("facts", None)
            shadow_decide(call, active, facts or shadow_facts(call, target), self.metrics)
        if not decision.allow:
            assert decision.problem is not None
            raise decision.problem
        assert decision.route is not None and decision.bound is not None
        route = decision.route
        if route.model.approval is not None:  # its event says the call waited, whatever follows
            presented = any(k == APPROVAL_HEADER for k, _ in target.idempotency)
            step = "approval.presented" if presented else "approval.requested"
            call.approval = {"id": None, "event": step}
        if not self.audit.available:  # a sink is failing: do not run what cannot be recorded
            raise AuditUnavailable("the audit trail cannot be written; the statement did not run")
        # Cheap refusals before the budget is spent: a malformed Idempotency-Key is a 400 here,
        # before an approval is asked for (a 202 accepts the call as it was sent).
        idempotency = request_key(
            target.idempotency,
            call.principal,
            route,
            decision.bound.values,
            ttl_seconds=self.settings.idempotency_ttl_seconds,
        )
        approval_id: str | None = None
        if route.model.approval is not None:  # nothing runs without an approval (202 first)
            approval_id = approval_id_of(target.idempotency)
            if approval_id is None:
                return await ask_approval(call, policy, decision, self.budgets, self.approvals)
            call.approval = {"id": approval_id, "event": "approval.presented", "used": False}
            await self.approvals.check(
                policy, decision, call.principal, approval_id, keyed=idempotency is not None
            )
        paging = route.query.paging
        values: Mapping[str, Any] = decision.bound.values
        if paging is not None:  # a cheap refusal too: a cursor that does not open spends nothing
            values = page_values(call, decision, paging, self.cursor_keys, self.clock)
        tags = tags_for(
            route.query_name, target.method or route.model.method, route.template, call.request_id
        )
        call.request_tag = tags.request
        # The budget: spent (calls, writes) before the statement runs, or 429/503 here; given
        # back for what the call never sent to Spanner (see gateway.budgets.check).
        try:
            spending = self.budgets.spend(
                policy, route, decision.roles, call.principal, counted=idempotency is None
            )
            spend = await (
                spending if tracing is None else tracing.traced("spangate.budget", spending)
            )
        except BudgetExceeded as refusal:
            if idempotency is None:
                raise
            # The retry of a keyed write that spent its budget is never refused for it: its
            # stored answer, if the key holds one for this very request, is replayed (nothing
            # spent; audited as a replay). Otherwise the 429.
            stored = await self.executor.stored_answer(route.query, idempotency)
            if stored is None:
                self.budgets.note_refusal(refusal)
                raise
            if decision.masked:  # a replay is masked for this caller, as every answer
                analysis = self.executor.analysis(policy)  # run at start-up and by every reload
                stored = masked(
                    call, stored, route.query, decision.masked, analysis, self.mask_key
                )
            call.result = stored
            call.extra["ratelimit"] = {
                k: v for k, v in refusal.headers.items() if k.startswith("RateLimit")
            }
            return response_body(stored)
        if spend is not None:
            call.extra["ratelimit"] = spend.headers
        sent: set[Sent] = set()  # what reached Spanner (the key's lookup, the statement)
        guard = None
        if approval_id is not None:
            if route.query.is_dml:  # used in the write's own transaction, iff it commits
                use = self.approvals.guard(decision, call.principal, approval_id, call.request_id)
                guarded_id = approval_id

                async def guard(transaction: Any) -> None:
                    await use(transaction)
                    # Before in_transaction_hook writes the Spanner sink's row in this same
                    # transaction: that row says used exactly when the transaction commits.
                    call.approval = {"id": guarded_id, "event": "approval.presented", "used": True}

            else:  # used in a transaction of its own, before the read
                try:
                    await self.approvals.claim(
                        decision, call.principal, approval_id, call.request_id
                    )
                except Exception:
                    if spend is not None:
                        await self._give_back(call, spend, sent)
                    raise
                call.approval = {"id": approval_id, "event": "approval.presented", "used": True}
        try:
            running = self.executor.run(
                route.query,
                values,
                tags=tags,
                idempotency=idempotency,
                in_transaction=in_transaction_hook(  # the Spanner sink's row commits with the write
                    self.audit, call, policy, key=self._audit_key, database=self._database
                ),
                on_settled=settle_hook(  # a 504 whose Commit was in flight: how it ended, audited
                    self.audit, call, policy, key=self._audit_key, database=self._database
                ),
                on_outcome=lambda outcome: call.extra.__setitem__("outcome", outcome),
                on_sent=sent.add,
                guard=guard,
            )
            if tracing is None:
                result = await running
            else:
                result = await tracing.statement(running, route.query, policy, self._database)
        except Exception:
            if guard is not None:  # the write did not commit (as far as this call knows)
                call.approval = {"id": approval_id, "event": "approval.presented", "used": False}
            if spend is not None:  # what it never sent to Spanner is given back (never raises)
                await self._give_back(call, spend, sent)
            raise
        if guard is not None and not result.replayed:  # the write committed, and used it
            call.approval = {"id": approval_id, "event": "approval.presented", "used": True}
        cursor = None
        if paging is not None:  # the page, and the cursor of the next one (from clear rows)
            result, cursor = paged(
                call,
                result,
                decision,
                paging,
                self.cursor_keys,
                self.clock,
                self.settings.cursor_ttl_seconds,
            )
        if decision.masked:  # before anything else sees the rows, whatever the transport
            analysis = self.executor.analysis(policy)  # run at start-up and by every reload
            result = masked(call, result, route.query, decision.masked, analysis, self.mask_key)
        call.result = result
        if spend is not None:
            if SENT_STATEMENT not in sent:  # a replay: no statement ran for this call
                await self._give_back(call, spend, sent)
            elif not route.query.is_dml:  # rows: counted after the read
                await self.budgets.count_rows(spend, call.result.row_count)
            call.extra["ratelimit"] = spend.headers
        body = response_body(call.result)
        if cursor is not None:
            body["next_cursor"] = cursor
        return body

    @staticmethod
    def _decide(policy: CompiledPolicy, target: Target, call: CallRecord) -> Decision:
        assert call.principal is not None  # resolve verified the token
        return decide_route(
            policy,
            target.route,
            target.path_params,
            call.principal,
            query=target.query,
            body=target.body,
            verdict=target.verdict,
        )

    def verify(self, active: Active, token: str) -> Awaitable[Principal]:
        """The bearer token's Principal (``active``'s verifier), in its own span when traced:
        the HTTP path and /mcp's door both verify here (untraced: the verifier's own
        coroutine, nothing around it)."""
        verifying = active.verifier.verify(token)
        tracing = self.tracing
        return verifying if tracing is None else tracing.traced("spangate.token", verifying)

    async def _give_back(self, call: CallRecord, spend: Spend, sent: set[Sent]) -> None:
        looked_up, statement = SENT_LOOKUP in sent, SENT_STATEMENT in sent
        await self.budgets.give_back(
            spend, looked_up=looked_up, statement=statement, request=call.request_id
        )
        call.extra["ratelimit"] = spend.headers

