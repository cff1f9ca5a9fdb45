"""The ASGI application: fixed endpoints through FastAPI, policy routes through the compiled router.

    request -> Gateway.__call__ (pure ASGI: request id, timing, one audit event per request,
               one log line per request, a span per request when traces are on)
            -> /healthz /readyz /openapi.json /docs : FastAPI
            -> anything else: token -> Principal -> Decision -> [cursor opened] -> statement
               -> [page cut, next cursor sealed] -> masks -> JSON rows

Traces (``gateway.tracing``) are off unless the environment turns them on: then
``self.tracing`` is a ``Tracing``, else None, and the request path tests that and creates no span.

A shadow policy (``spangate serve --shadow-policy``) is ``Active.shadow``: when set, every call
is decided under it too, after the live decision (``gateway.policy.shadow``); a disagreement goes
into the call's audit event and ``/metrics``. It never changes the answer, and a failure in it is
logged and counted, never a 500. Without one, the request path tests ``None`` and nothing more.

Every error is RFC 9457 ``application/problem+json`` with a stable ``code`` and the ``request_id``;
unexpected exceptions become a 500 ``internal`` without details (logged with the request id).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from opentelemetry.trace import get_current_span as current_span

from gateway.approvals.endpoints import APPROVALS_PATH, ApprovalsEndpoint
from gateway.approvals.record import parse_approval_id
from gateway.approvals.service import Approvals
from gateway.audit.chain import UNKEYED_WARNING
from gateway.audit.event import CallRecord, database_resource
from gateway.audit.origin import IPNetwork, parse_networks, peer_trusted, trace_context
from gateway.audit.recorder import (
    in_transaction_hook,
    new_call,
    record_call,
    record_nowait,
    settle_hook,
)
from gateway.audit.trail import AuditTrail
from gateway.auth.principal import Principal
from gateway.auth.verify import TokenVerifier, bearer_token
from gateway.budgets.check import Budgets, Spend
from gateway.budgets.store import MemoryStore
from gateway.endpoints import FIXED_PATHS, MOVED_PATHS, fixed_endpoints
from gateway.errors import (
    AuditUnavailable,
    BadRequest,
    BudgetExceeded,
    CursorRefused,
    GatewayError,
    RouteNotFound,
    ShuttingDown,
)
from gateway.http import (
    CALL,
    Message,
    Receive,
    Scope,
    Send,
    dumps,
    parse_query,
    read_json_body,
    request_id,
    routed_path,
    send_problem,
    send_response,
    with_request_id,
)
from gateway.logs import log_request, request_fields
from gateway.mcp.metadata import MCP_PATH
from gateway.mcp.server import McpEndpoint
from gateway.metrics import GatewayMetrics
from gateway.policy.approval import APPROVAL_HEADER
from gateway.policy.bind import BODY_METHODS
from gateway.policy.compiled import CompiledPolicy, CompiledQuery, CompiledRoute
from gateway.policy.decide import Decision, RequestFacts, decide, decide_route, match_route
from gateway.policy.pagination import Paging
from gateway.policy.reads import NO_READS, ClaimReads
from gateway.policy.redaction import shown_path
from gateway.policy.shadow import ROUTING_REASONS, ShadowIssuers, disagreement
from gateway.settings import Settings
from gateway.shaping.cursors import CursorKeys, CursorNotOpened
from gateway.shaping.masks import MaskFailed, MaskKey, expect_columns, mask_result
from gateway.shaping.paging import (
    PageFailed,
    cut_page,
    next_cursor,
    open_page,
    page_size_of,
    run_values,
)
from gateway.spanner.execute import SENT_LOOKUP, SENT_STATEMENT, Executor, Sent, tags_for
from gateway.spanner.idempotency import request_key
from gateway.spanner.results import Result, response_body
from gateway.tracing import SPAN, Tracing

__all__ = ["Active", "Gateway", "Outcome", "Resolve", "Target", "create_app"]

log = logging.getLogger("spangate")

# At shutdown, calls still on their way to the audit trail (cancelled by the server's shutdown
# timeout, unwinding) get up to this many 10 ms steps to queue their events.
_RECORD_WAIT_STEPS = 100

Resolve = Callable[[CallRecord, "Active"], Awaitable["Target"]]


@dataclass(frozen=True)
class Target:
    """What a transport resolved a call to: the route, the caller's values as the route's
    parameters bind them, and the headers that may carry its ``Idempotency-Key`` and its
    ``Approval-Id`` (``idempotency``: an MCP call's arguments turned into those headers)."""

    route: CompiledRoute
    path_params: Mapping[str, str]
    query: Sequence[tuple[str, str]] = ()
    body: Mapping[str, Any] | None = None
    idempotency: Sequence[tuple[bytes, bytes]] = ()
    method: str | None = None  # as the caller said it (HEAD for GET's route); else the route's


@dataclass(frozen=True)
class Outcome:
    """A call's answer: ``body`` (the JSON the route answers) when ``error`` is None;
    ``headers``: the budget's RateLimit header fields (also on ``error.headers`` for errors)."""

    status: int
    body: dict[str, Any] | None
    error: GatewayError | None
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Active:
    """What a request runs on, swapped as one: a reload never mixes two policies' parts.
    ``shadow``: the candidate decided beside ``policy`` (never answering), or None; ``reads``:
    the claims the audit events record (both policies', when there is a shadow);
    ``shadow_issuers``: how the candidate reads the live policy's tokens, worked out once per
    swap (None without a shadow)."""

    policy: CompiledPolicy
    verifier: TokenVerifier
    shadow: CompiledPolicy | None = None
    reads: ClaimReads = field(init=False)
    shadow_issuers: ShadowIssuers | None = field(init=False)

    def __post_init__(self) -> None:
        reads = self.policy.reads
        issuers = None
        if self.shadow is not None:
            reads = reads.union(self.shadow.reads)
            issuers = ShadowIssuers(self.policy.model, self.shadow.model)
        object.__setattr__(self, "reads", reads)
        object.__setattr__(self, "shadow_issuers", issuers)


class Gateway:
    """The whole gateway as one ASGI callable.

    ``swap()`` replaces the policy and its verifier atomically (hot reload); each request reads
    ``active`` once, so requests in flight finish on the policy they started with.
    """

    def __init__(
        self,
        settings: Settings,
        policy: CompiledPolicy,
        *,
        verifier: TokenVerifier,
        executor: Executor,
        audit: AuditTrail,
        audit_key: bytes | None = None,
        closers: list[Callable[[], Awaitable[None]]] | None = None,
        budgets: Budgets | None = None,
        tracing: Tracing | None = None,
        mask_key: MaskKey | None = None,
        shadow: CompiledPolicy | None = None,
        cursor_keys: CursorKeys | None = None,
    ) -> None:
        self.settings = settings
        self.tracing = tracing  # None: traces are off (nothing on the request path but a test)
        self.mask_key = mask_key  # the key of `hash` masks (SPANGATE_MASK_KEY)
        if cursor_keys is None and settings.cursor_keys is not None:  # runtime checked them
            cursor_keys = CursorKeys.parse(settings.cursor_keys.get_secret_value())
        self.cursor_keys = cursor_keys  # pagination cursors' (SPANGATE_CURSOR_KEYS)
        self.clock: Callable[[], float] = time.time  # cursors' expiry (tests inject their own)
        # The policy's budgets: counters in this process unless runtime gives a shared store.
        self.budgets = budgets if budgets is not None else Budgets(MemoryStore())
        self._closers = closers if closers is not None else []
        self.active = Active(policy, verifier, shadow)
        self.on_startup: list[Callable[[], Awaitable[None]]] = []
        self.metrics = GatewayMetrics()
        if executor.on_statement is None:  # each statement's latency, by query name
            executor.on_statement = self.metrics.observe_statement
        self.reloader: Any = None  # a gateway.reload.PolicyReloader once wired by runtime
        self.executor = executor
        # approval requests, decisions and their use (gateway.approvals); /approvals serves them
        self.approvals = Approvals(executor, audit_key=audit_key)
        self.audit = audit
        self.unrecorded = 0
        # Calls deciding or executing, by the task running each (cut_short stops them), and
        # those cut_short cancelled and that have not yet taken it back (_was_cut).
        self._cuttable: dict[asyncio.Task[Any], CallRecord] = {}
        self._cut: set[asyncio.Task[Any]] = set()
        audit.expect_from(lambda: self.unrecorded)
        self._audit_key = audit_key  # the key of redacted values (AuditKeys.redact)
        # Shown in /readyz while the trail is unkeyed (see audit.configure.unkeyed_warning).
        self.audit_warning: str | None = None if audit_key else UNKEYED_WARNING
        self._trusted = parse_networks(settings.trusted_proxies)
        target = executor.databases.target
        self._database = database_resource(target.project, target.instance, target.database)
        self.ready = False
        # Set on SIGTERM/SIGINT (gateway.server): /readyz says 503 "draining" while the server
        # still answers, so load balancers stop sending before the listener closes.
        self.draining = False
        self.worker: int | None = None  # the worker number under `spangate serve --workers N`
        self.api = fixed_endpoints(self)
        # With SPANGATE_ADMIN_PORT these are served there only (/healthz stays on both).
        self._moved = MOVED_PATHS if settings.admin_port else frozenset()
        self.mcp = McpEndpoint(self)
        self.approvals_api = ApprovalsEndpoint(self)

    @property
    def trusted(self) -> Sequence[IPNetwork]:
        """The proxies whose X-Forwarded-For is believed (SPANGATE_TRUSTED_PROXIES)."""
        return self._trusted

    @property
    def policy(self) -> CompiledPolicy:
        return self.active.policy

    @property
    def verifier(self) -> TokenVerifier:
        return self.active.verifier

    @property
    def shadow(self) -> CompiledPolicy | None:
        """The shadow policy (``--shadow-policy``), or None."""
        return self.active.shadow

    def swap(
        self, policy: CompiledPolicy, verifier: TokenVerifier, shadow: CompiledPolicy | None = None
    ) -> None:
        self.active = Active(policy, verifier, shadow)

    # -- lifecycle ----------------------------------------------------------------------------
    async def startup(self) -> None:
        """Fetch every issuer's keys and warm every identity's Database, then say ready."""
        await self.mcp.start()
        for cache in self.verifier.caches.values():
            await cache.start()
        await self.executor.warm()
        for hook in self.on_startup:
            await hook()
        self.ready = True

    def drain(self) -> None:
        """The server is stopping (SIGTERM or SIGINT, ``gateway.server``): from now on ``/readyz``
        answers 503 ``draining``; requests are still served."""
        self.draining = True

    async def shutdown(self) -> None:
        """Calls the server cancelled record their events first (bounded), then settling writes
        (bounded by ``SPANGATE_SETTLE_SECONDS``: their follow-up events go to the trail), then
        the audit trail (flushed), then the rest (the databases), the last metrics, and last the
        spans still buffered (at most ``tracing.SHUTDOWN_SECONDS``: a collector that does not
        answer never holds the exit)."""
        self.draining = True
        self.ready = False
        await self.mcp.stop()
        for _ in range(_RECORD_WAIT_STEPS):  # a cancelled call queues its event as it unwinds
            if self.unrecorded <= 0:
                break
            await asyncio.sleep(0.01)
        await self.executor.settle(self.settings.settle_seconds)
        if lost := await self.audit.close():
            log.error(
                "the last audit flush lost %d event(s) (see the lines above): the process "
                "exits 1",
                lost,
            )
        self.executor.close()
        for close in self._closers:
            await close()
        await self.budgets.store.aclose()
        self.metrics.publish(self)  # with several workers: this worker's last counts stay
        if self.tracing is not None:  # last: bounded (Tracing.aclose), the databases' spans too
            await self.tracing.aclose()

    # -- ASGI ---------------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] == "websocket":
            # The server runs without WebSockets (gateway.server); under another server, refuse
            # the handshake (403) rather than leave it to the server's 500.
            await receive()  # websocket.connect
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http":
            return
        headers = scope.get("headers", [])
        rid = request_id(next((v for k, v in headers if k == b"x-request-id"), None))
        # The raw path: "/%68ealthz" is not /healthz (it goes to the policy router, like any path).
        path = routed_path(scope)
        started = time.perf_counter()
        state = scope.setdefault("state", {})
        if path in FIXED_PATHS:  # no span (probes and scrapes), a log line
            refuse = None
            if path in self._moved:
                refuse = f"{path} is served on the admin port (SPANGATE_ADMIN_PORT), not this one"
            await self.fixed(scope, receive, send, rid, path, started, refuse=refuse)
            return
        mcp = path == MCP_PATH
        if path == APPROVALS_PATH or path.startswith(APPROVALS_PATH + "/"):
            await self.approvals_api(scope, receive, send, rid, path, started)
            return
        tracing = self.tracing
        if tracing is None:
            await self._exchange(scope, receive, send, rid, path, mcp, started)
            return
        peer = scope.get("client")
        trusted = peer_trusted(peer[0] if peer else None, self._trusted)  # its sampled flag
        with tracing.server(scope, trusted=trusted) as span:
            state[SPAN] = span  # Tracing.resume
            await self._exchange(scope, receive, send, rid, path, mcp, started, span)

    async def fixed(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        rid: str,
        path: str,
        started: float,
        *,
        refuse: str | None = None,
    ) -> None:
        """A fixed endpoint (FastAPI), and its log line; with ``refuse`` (why), a 404
        ``no-route`` instead (a path the other port serves: ``gateway.admin``)."""
        scope.setdefault("state", {})["request_id"] = rid
        sent = _Status(with_request_id(send, rid))
        unanswered = 500
        try:
            if refuse is not None:
                error = RouteNotFound(refuse)
                await send_problem(sent, error, rid, head=scope["method"] == "HEAD")
            else:
                await self.api(scope, receive, sent)
        except asyncio.CancelledError:
            unanswered = 499  # the server gave up on the request (as a policy route logs it)
            raise
        finally:
            status = sent.status or unanswered
            self._log(scope, rid, path, status, status, started, "http")

    async def _exchange(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        rid: str,
        path: str,
        mcp: bool,
        started: float,
        span: Any = None,
    ) -> None:
        """A request to /mcp or to a policy route, then its log line (and its span's name and
        attributes, ``span`` being the request's span when traces are on)."""
        state = scope["state"]
        sent = _Status(send) if mcp else None  # a policy route's status is its call's
        status = 500
        try:
            if sent is not None:
                await self.mcp(scope, receive, sent, rid)
            else:
                await self._handle(scope, receive, send, rid)
        except asyncio.CancelledError:
            status = 499
            raise
        finally:
            call: CallRecord | None = state.get(CALL)
            if sent is not None and sent.status:
                status = sent.status
            elif call is not None and status != 499:
                status = call.status
            # How the call ended (an MCP tools/call answers 200 whatever it came to): the log
            # line's severity and the span's error; ``status`` stays what HTTP answered.
            outcome = call.status if call is not None and status != 499 else status
            if not mcp:  # without the values audit.redact hides (gateway.policy.redaction)
                route = call.decision.route if call is not None and call.decision else None
                path = shown_path(self.active.policy, path, route)
            if span is not None:
                Tracing.finish(span, scope, call, status, outcome, path=path, mcp=mcp)
            self._log(scope, rid, path, status, outcome, started, "mcp" if mcp else "http", call)

    def _log(
        self,
        scope: Scope,
        rid: str,
        path: str,
        status: int,
        outcome: int,
        started: float,
        transport: str,
        call: CallRecord | None = None,
    ) -> None:
        """The request's log line (``gateway.logs``; ``path`` as shown, at ``outcome``'s
        severity); its trace: the call's (the request's span, or the caller's traceparent when
        traces are off), else the current span's (the request's), else the caller's."""
        headers: list[tuple[bytes, bytes]] = scope.get("headers", [])
        agent = next((v for k, v in headers if k == b"user-agent"), None)
        peer = scope.get("client")
        fields = request_fields(
            request_id=rid,
            method=scope["method"],
            path=path,
            status=status,
            seconds=time.perf_counter() - started,
            transport=transport,
            call=call,
            user_agent=agent.decode("latin-1") if agent is not None else None,
            client=peer[0] if peer else None,
        )
        if call is not None:
            trace_id, span_id = call.trace, call.span
        elif current_span().get_span_context().is_valid:
            trace_id = span_id = None  # the writer stamps the current span's ids
        else:  # no call and no span (a fixed endpoint, traces off): the caller's, as an event
            found = trace_context(
                next((v for k, v in headers if k == b"traceparent"), None),
                next((v for k, v in headers if k == b"x-cloud-trace-context"), None),
            )
            trace_id, span_id = found if found is not None else (None, None)
        log_request(fields, trace_id, span_id, outcome=outcome)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    log.exception("start-up failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _handle(self, scope: Scope, receive: Receive, send: Send, rid: str) -> None:
        headers: list[tuple[bytes, bytes]] = scope.get("headers", [])
        call = new_call(scope, rid, time.perf_counter(), self._trusted)
        scope["state"][CALL] = call

        async def resolve(call: CallRecord, active: Active) -> Target:
            return await self._resolve_http(scope, receive, headers, call, active)

        outcome = await self.perform(call, self.active, resolve)
        head = scope["method"] == "HEAD"
        if outcome.error is not None:
            await send_problem(send, outcome.error, rid, head=head)
        else:
            body = dumps(outcome.body) if outcome.body is not None else b""
            await send_response(
                send,
                outcome.status,
                body,
                "application/json",
                rid,
                head=head,
                extra=dict(outcome.headers),
            )

    # -- the one path of every call, whatever its transport -------------------------------------
    async def perform(self, call: CallRecord, active: Active, resolve: Resolve) -> Outcome:
        """One call from any transport (HTTP here, MCP in ``gateway.mcp``): ``resolve`` does the
        transport's part (the token, the route, the caller's values), then decision, execution
        and exactly one audit event. The answer is the JSON body or the error to answer."""
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
                self._shadow_undecided(call, active, exc.code)
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

    async def _resolve_http(
        self,
        scope: Scope,
        receive: Receive,
        headers: list[tuple[bytes, bytes]],
        call: CallRecord,
        active: Active,
    ) -> Target:
        """HTTP's part of a call: the query string, the bearer token, the route, the JSON body."""
        method = scope["method"]
        query = parse_query(scope.get("query_string", b""))
        token = bearer_token(
            [v.decode("latin-1") for k, v in headers if k == b"authorization"],
            token_in_query=any(k == "access_token" for k, _ in query),
            max_bytes=self.settings.max_token_bytes,
        )
        call.principal = await self.verify(active, token)
        path = routed_path(scope)  # the raw path: what the trail records (call.path) is routed
        found = match_route(active.policy, method, path)
        if isinstance(found, GatewayError):
            if active.shadow is not None:  # what the shadow decides on (no body was read)
                call.extra["facts"] = RequestFacts(method, path, query)
            raise found
        body = await read_json_body(
            receive,
            headers,
            method,
            limit=self.settings.max_body_bytes,
            timeout=self.settings.body_timeout_seconds,
        )
        if method in BODY_METHODS and query:
            raise BadRequest(
                f"{method} parameters go in the JSON body, not the query string",
                code="query-not-allowed",
            )
        route, path_params = found
        return Target(
            route, path_params, query=query, body=body, idempotency=headers, method=method
        )

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
            self._shadow_decide(call, active, facts or _facts(call, target))
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
            approval_id = _approval_id(target.idempotency)
            if approval_id is None:
                return await self._ask_approval(call, policy, decision)
            call.approval = {"id": approval_id, "event": "approval.presented", "used": False}
            await self.approvals.check(
                policy, decision, call.principal, approval_id, keyed=idempotency is not None
            )
        paging = route.query.paging
        values: Mapping[str, Any] = decision.bound.values
        if paging is not None:  # a cheap refusal too: a cursor that does not open spends nothing
            values = self._page_values(call, decision, paging)
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
                stored = self._masked(call, stored, route.query, decision.masked, policy)
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
            result, cursor = self._paged(call, result, decision, paging)
        if decision.masked:  # before anything else sees the rows, whatever the transport
            result = self._masked(call, result, route.query, decision.masked, policy)
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

    async def _ask_approval(
        self, call: CallRecord, policy: CompiledPolicy, decision: Decision
    ) -> dict[str, Any]:
        """An allowed call to a route with ``approval:`` and no ``Approval-Id``: a pending
        request stored, answered 202 ``approval-required``. It spends a call of the caller's
        budget (a read-write transaction wrote its row), never a write: its statement did not
        run; none when the request could not be stored."""
        route = decision.route
        assert route is not None and route.model.approval is not None
        assert call.principal is not None
        spend = await self.budgets.spend(policy, route, decision.roles, call.principal)
        if spend is not None:
            await self.budgets.refund(spend, ("writes",))
            call.extra["ratelimit"] = spend.headers
        try:
            record = await self.approvals.request(
                policy, decision, call.principal, call.request_id
            )
        except Exception:
            if spend is not None:  # no request stored (503 approval-table-missing, Spanner down)
                await self.budgets.refund(spend, ("calls",))
            raise
        call.approval = {
            "id": record.approval_id,
            "event": "approval.requested",
            "route": record.route,
            "query": record.query,
            "expiresAt": record.view(record.created_at)["expires_at"],
        }
        call.answer_code, call.answer_status = "approval-required", 202
        call.extra["location"] = f"/approvals/{record.approval_id}"
        who = ", ".join(route.model.approval.approvers)
        return {
            "code": "approval-required",
            "detail": f"this call waits for an approval by a holder of one of the roles {who}, "
            "never you; once approved, repeat it exactly, with the header Approval-Id: "
            f"{record.approval_id}, before it expires",
            "approval": record.view(self.approvals.clock()),
            "request_id": call.request_id,
        }

    # -- the shadow policy ----------------------------------------------------------------------
    def _shadow_decide(self, call: CallRecord, active: Active, facts: RequestFacts) -> None:
        """Decide ``call`` under the shadow policy too; record a disagreement on the call (its
        audit event) and in ``/metrics``. Never raises: a failure here is a bug in the candidate's
        evaluation, logged and counted, and the call goes on as the live policy decided."""
        shadow, issuers = active.shadow, active.shadow_issuers
        assert shadow is not None and issuers is not None and call.principal is not None
        try:
            seen = issuers.principal(call.principal)
            if isinstance(seen, str):  # the candidate refuses the token
                verdict = Decision(allow=False, reason=seen)
            else:
                verdict = decide(shadow, facts, seen)
            live = call.decision
            code = live.reason if live is not None else (call.error.code if call.error else "")
            differs = disagreement(live, code, verdict, shadow.sha256)
            if differs is not None:
                call.shadow = differs.record
                self.metrics.observe_shadow(differs.route, differs.live, differs.shadow)
        except Exception:
            call.shadow = None
            log.exception("request %s: the shadow policy's decision failed", call.request_id)
            self.metrics.observe_shadow_error()

    def _shadow_undecided(self, call: CallRecord, active: Active, code: str) -> None:
        """A call the live policy refused before deciding (no route…): the shadow decides it on
        what the transport had read (``call.extra["facts"]``), when there is a principal."""
        facts = call.extra.pop("facts", None)
        if call.principal is None or code not in ROUTING_REASONS:
            return
        if not isinstance(facts, RequestFacts):
            if call.transport == "mcp":
                if call.tool is None:
                    return
                facts = RequestFacts("MCP", call.tool, (), {}, tool=call.tool)
            else:
                facts = RequestFacts(call.method, call.path)
        self._shadow_decide(call, active, facts)

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
        )

    def verify(self, active: Active, token: str) -> Awaitable[Principal]:
        """The bearer token's Principal (``active``'s verifier), in its own span when traced:
        the HTTP path and /mcp's door both verify here (untraced: the verifier's own
        coroutine, nothing around it)."""
        verifying = active.verifier.verify(token)
        tracing = self.tracing
        return verifying if tracing is None else tracing.traced("spangate.token", verifying)

    def _page_values(self, call: CallRecord, decision: Decision, paging: Paging) -> dict[str, Any]:
        """What a paginated query runs with (``paging.run_values``): the caller's cursor opened
        (400 ``cursor-invalid`` or ``cursor-expired`` when it does not open: its reason goes to
        the audit trail, nothing of it to the caller), and the page size plus one."""
        assert decision.route is not None and decision.bound is not None
        assert call.principal is not None
        query, bound = decision.route.query, decision.bound.values
        record: dict[str, Any] = {
            "cursor": "none",
            "pageSize": page_size_of(bound, paging),
            "nextCursor": False,
        }
        call.extra["pagination"] = record
        keys = self.cursor_keys
        if keys is None:  # runtime refuses to start so; an app assembled without keys
            log.error("query %s is paginated and no SPANGATE_CURSOR_KEYS are set", query.name)
            raise GatewayError("pagination cursors are not configured; see the logs")
        opened = None
        if decision.cursor is not None:
            try:
                opened = open_page(
                    keys, query, paging, bound, call.principal, decision.cursor, now=self.clock()
                )
            except CursorNotOpened as exc:
                record.update(cursor="refused", refused=exc.reason)
                raise CursorRefused(exc.reason) from None
            record["cursor"] = "opened"
        return run_values(bound, paging, opened)

    def _paged(
        self, call: CallRecord, result: Result, decision: Decision, paging: Paging
    ) -> tuple[Result, str | None]:
        """The page of ``result`` (it holds one row more when a next page exists) and the next
        page's cursor, sealed for this caller, or None on the last page. A cursor that cannot
        be sealed: 500 ``internal``, nothing of the rows answered."""
        assert decision.route is not None and decision.bound is not None
        assert call.principal is not None and self.cursor_keys is not None
        bound = decision.bound.values
        page, more = cut_page(result, page_size_of(bound, paging))
        if not more:
            return page, None
        try:
            cursor = next_cursor(
                self.cursor_keys,
                decision.route.query,
                paging,
                bound,
                call.principal,
                page.rows[-1],
                now=self.clock(),
                ttl_seconds=self.settings.cursor_ttl_seconds,
            )
        except PageFailed as exc:  # it names the column, never a value
            log.error("request %s: query %s: %s", call.request_id, decision.query_name, exc)
            call.result = replace(page, rows=[])  # the trail records counts, never rows
            raise GatewayError(
                "the next page's cursor could not be made, so nothing of this page is answered; "
                "see the logs for this request id"
            ) from None
        call.extra["pagination"]["nextCursor"] = True
        return page, cursor

    def _masked(
        self,
        call: CallRecord,
        result: Result,
        query: CompiledQuery,
        columns: Sequence[str],
        policy: CompiledPolicy,
    ) -> Result:
        """``result`` with ``columns`` masked (``gateway.shaping.masks``), typed by the
        statement's own result fields (else by the policy's PLAN analysis). Fails closed: a
        result whose columns are not those the policy's analysis found (a view or the schema
        changed since it was analysed), a masked column missing from it, or a value that cannot
        be masked: 500 ``internal``, nothing of the rows answered (a write says it committed)."""
        analysis = self.executor.analysis(policy)  # run at start-up and by every reload
        shape = analysis.shapes.get(query.name) if analysis is not None else None
        if len(result.types) == len(result.columns):
            types: dict[str, str | None] = dict(zip(result.columns, result.types, strict=True))
        else:  # an Idempotency-Key record stored without types
            types = {c.name: c.type for c in shape.columns} if shape is not None else {}
        masks = {column: query.model.mask[column] for column in columns}
        modes = {column: mask.with_ for column, mask in masks.items()}
        root = self.mask_key
        keys = {
            column: root.for_mask(query.name, column, mask.domain)
            for column, mask in masks.items()
            if mask.with_ == "hash" and root is not None
        }
        try:
            if shape is not None:
                expect_columns(result, [(c.name, c.type) for c in shape.columns])
            return mask_result(result, modes, types, keys)
        except MaskFailed as exc:  # its message names the mode and type, never the value
            log.error("request %s: query %s: %s", call.request_id, query.name, exc)
            call.result = replace(result, rows=[])  # the trail records counts, never rows
            error = GatewayError(
                "the result could not be masked, so none of it is answered; see the logs for "
                "this request id"
            )
            if query.is_dml:
                error.extra["outcome"] = "committed"  # it ran; only its answer failed
            raise error from None

    async def _give_back(self, call: CallRecord, spend: Spend, sent: set[Sent]) -> None:
        looked_up, statement = SENT_LOOKUP in sent, SENT_STATEMENT in sent
        await self.budgets.give_back(
            spend, looked_up=looked_up, statement=statement, request=call.request_id
        )
        call.extra["ratelimit"] = spend.headers


def create_app(
    settings: Settings,
    policy: CompiledPolicy,
    *,
    verifier: TokenVerifier,
    executor: Executor,
    audit: AuditTrail,
    audit_key: bytes | None = None,
    closers: list[Callable[[], Awaitable[None]]] | None = None,
    budgets: Budgets | None = None,
    tracing: Tracing | None = None,
    mask_key: MaskKey | None = None,
    shadow: CompiledPolicy | None = None,
    cursor_keys: CursorKeys | None = None,
) -> Gateway:
    """The gateway with its seams injected (tests pass their own verifier, executor, audit,
    tracing); ``cursor_keys``: else from ``settings``."""
    return Gateway(
        settings,
        policy,
        verifier=verifier,
        executor=executor,
        audit=audit,
        audit_key=audit_key,
        closers=closers,
        budgets=budgets,
        tracing=tracing,
        mask_key=mask_key,
        shadow=shadow,
        cursor_keys=cursor_keys,
    )


def _approval_id(headers: Sequence[tuple[bytes, bytes]]) -> str | None:
    """The ``Approval-Id`` header's approval id, None when absent; 400 ``approval-id-invalid``
    when malformed or sent twice."""
    given = [v for k, v in headers if k == APPROVAL_HEADER]
    if not given:
        return None
    if len(given) > 1:
        return parse_approval_id(None)  # raises approval-id-invalid
    return parse_approval_id(given[0])


def _facts(call: CallRecord, target: Target) -> RequestFacts:
    """The request as a shadow policy decides it: as the live one did (an MCP call by its tool's
    name and arguments, which the shadow's route may split otherwise)."""
    if call.transport == "mcp" and call.tool is not None:
        arguments = {**target.path_params, **(target.body or {})}
        return RequestFacts("MCP", call.tool, (), arguments, tool=call.tool)
    return RequestFacts(target.method or call.method, call.path, target.query, target.body)


class _Status:
    """``send``, remembering the status it answered (for the request's log line and span)."""

    __slots__ = ("_send", "status")

    def __init__(self, send: Send) -> None:
        self._send = send
        self.status = 0

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        await self._send(message)
