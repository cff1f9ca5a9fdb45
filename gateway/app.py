"""The ASGI application: fixed endpoints through FastAPI, policy routes through the compiled router.

    request -> Gateway.__call__ (pure ASGI: request id, timing, one audit event per request,
               one log line per request, a span per request when traces are on)
            -> /healthz /readyz /openapi.json /docs : FastAPI
            -> /approvals : gateway.approvals.endpoints;  /mcp : gateway.mcp
            -> anything else: token -> Principal -> Decision -> [cursor opened] -> statement
               -> [page cut, next cursor sealed] -> masks -> JSON rows

Here: the ASGI entry, the request's frame (its span, its log line: ``gateway.request_line``) and
HTTP's part of a call (the token, the route, the JSON body, the answer). The part every
transport shares, from the decision to the audit event, is ``Gateway.perform``
(``gateway.call_path``); start-up and shutdown are ``gateway.lifecycle``.

Traces (``gateway.tracing``) are off unless the environment turns them on: then
``self.tracing`` is a ``Tracing``, else None, and the request path tests that and creates no span.

A shadow policy (``spangate serve --shadow-policy``) is ``Active.shadow``: when set, every call
is decided under it too, after the live decision (``gateway.call_shadow``). It never changes the
answer. Without one, the request path tests ``None`` and nothing more.

Every error is RFC 9457 ``application/problem+json`` with a stable ``code`` and the ``request_id``;
unexpected exceptions become a 500 ``internal`` without details (logged with the request id).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from gateway import lifecycle
from gateway.approvals.endpoints import APPROVALS_PATH, ApprovalsEndpoint
from gateway.approvals.service import Approvals
from gateway.audit.chain import UNKEYED_WARNING
from gateway.audit.event import CallRecord, database_resource
from gateway.audit.origin import IPNetwork, parse_networks, peer_trusted
from gateway.audit.recorder import new_call
from gateway.audit.trail import AuditTrail
from gateway.auth.verify import TokenVerifier, bearer_token
from gateway.budgets.check import Budgets
from gateway.budgets.store import MemoryStore
from gateway.call_path import CallPath
from gateway.call_types import Active, Target
from gateway.endpoints import FIXED_PATHS, MOVED_PATHS, fixed_endpoints
from gateway.errors import BadRequest, GatewayError, RouteNotFound
from gateway.http import (
    CALL,
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
    token_in_query,
    with_request_id,
)
from gateway.mcp.metadata import MCP_PATH
from gateway.mcp.server import McpEndpoint
from gateway.metrics import GatewayMetrics
from gateway.policy.bind import BODY_METHODS
from gateway.policy.compiled import CompiledPolicy
from gateway.policy.decide import RequestFacts, match_route, role_verdict
from gateway.policy.redaction import shown_path
from gateway.request_line import StatusSend, log_request_line
from gateway.settings import Settings
from gateway.shaping.cursors import CursorKeys
from gateway.shaping.masks import MaskKey
from gateway.spanner.execute import Executor
from gateway.tracing import SPAN, Tracing

__all__ = ["Gateway", "create_app"]


class Gateway(CallPath):
    """The whole gateway as one ASGI callable; its call path (``perform``, ``verify``,
    ``cut_short``) is ``CallPath``'s.

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

    # -- lifecycle (gateway.lifecycle) --------------------------------------------------------
    async def startup(self) -> None:
        """Fetch every issuer's keys and warm every identity's Database, then say ready."""
        await lifecycle.startup(self)

    def drain(self) -> None:
        """The server is stopping (SIGTERM or SIGINT, ``gateway.server``): from now on ``/readyz``
        answers 503 ``draining``; requests are still served."""
        self.draining = True

    async def shutdown(self) -> None:
        """Record, settle, flush and close, in that order (``gateway.lifecycle.shutdown``)."""
        await lifecycle.shutdown(self)

    # -- ASGI ---------------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifecycle.lifespan(self, receive, send)
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
        sent = StatusSend(with_request_id(send, rid))
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
            log_request_line(scope, rid, path, status, status, started, "http")

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
        sent = StatusSend(send) if mcp else None  # a policy route's status is its call's
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
            transport = "mcp" if mcp else "http"
            log_request_line(scope, rid, path, status, outcome, started, transport, call)

    # -- HTTP's part of a call (the rest is Gateway.perform's) ---------------------------------
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

    async def _resolve_http(
        self,
        scope: Scope,
        receive: Receive,
        headers: list[tuple[bytes, bytes]],
        call: CallRecord,
        active: Active,
    ) -> Target:
        """HTTP's part of a call: the bearer token, the query string, the route, the JSON body."""
        method = scope["method"]
        query_string: bytes = scope.get("query_string", b"")
        token = bearer_token(
            [v.decode("latin-1") for k, v in headers if k == b"authorization"],
            token_in_query=token_in_query(query_string),
            max_bytes=self.settings.max_token_bytes,
        )
        call.principal = await self.verify(active, token)
        query = parse_query(query_string)  # judged only once the token is (an anonymous 401)
        path = routed_path(scope)  # the raw path: what the trail records (call.path) is routed
        found = match_route(active.policy, method, path)
        if isinstance(found, GatewayError):
            if active.shadow is not None:  # what the shadow decides on (no body was read)
                call.extra["facts"] = RequestFacts(method, path, query)
            raise found
        route, path_params = found
        # The roles before the body: a caller the route refuses gets its 403 whatever its body
        # holds, and learns nothing of what the body must be (400, 413, 415, 408). Its body is
        # still read (bounded as any) when it can be: the trail records a claim-bound value it
        # tried to set (the ignored tenant), and a shadow policy judges the body sent.
        verdict = role_verdict(active.policy, route, call.principal)
        refused = verdict[2] is not None
        body = None
        try:
            body = await read_json_body(
                receive,
                headers,
                method,
                limit=self.settings.max_body_bytes,
                timeout=self.settings.body_timeout_seconds,
            )
        except GatewayError:
            if not refused:
                raise  # refused anyway: its 403 first (with no body to record)
        if not refused and method in BODY_METHODS and query:
            raise BadRequest(
                f"{method} parameters go in the JSON body, not the query string",
                code="query-not-allowed",
            )
        return Target(
            route,
            path_params,
            query=query,
            body=body,
            idempotency=headers,
            method=method,
            verdict=verdict,
        )


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
