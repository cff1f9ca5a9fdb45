"""OpenTelemetry traces: off unless the environment says where spans go; then a span per request.

Turned on by the standard variables (``tracing_from_env``; docs/observability.md): tracing is on
when ``OTEL_SDK_DISABLED`` is not ``true`` and ``OTEL_TRACES_EXPORTER`` names an exporter
(``otlp``, ``console``; ``none`` is off) or ``OTEL_EXPORTER_OTLP_ENDPOINT`` /
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set (then ``otlp``). Unlike the specification's default
(``otlp`` to localhost:4318), nothing is exported unless asked. The rest is read from the same
variables (``gateway.tracing_setup``, never the SDK's own reading of ``os.environ``): the
OTLP/HTTP exporter's endpoint, headers, timeout, compression and TLS files
(``OTEL_EXPORTER_OTLP_*``), the sampler (``OTEL_TRACES_SAMPLER[_ARG]``, default
``parentbased_always_on``), the batch processor (``OTEL_BSP_*``), the resource
(``OTEL_SERVICE_NAME``, default ``spangate``; ``OTEL_RESOURCE_ATTRIBUTES``).

A caller's sampled flag is followed only from a trusted proxy (``SPANGATE_TRUSTED_PROXIES``);
from anyone else the request span continues the caller's trace but the sampler decides as for a
new one (``tracing_setup.CallerSampler``). At shutdown, what is buffered is exported for at most
``SHUTDOWN_SECONDS`` (``Tracing.aclose``).

Off, the gateway holds ``None`` instead of a ``Tracing``: the request path tests that and creates
no span. On, each policy request and each request to ``/mcp`` gets::

    <METHOD> <route template>   SERVER  (continues the caller's traceparent/tracestate, else its
      |                                  X-Cloud-Trace-Context; HTTP semantic conventions)
      +- spangate.token          the bearer token verified (JWKS or introspection)
      +- spangate.decision       route, roles, parameters
      +- spangate.budget         the budget spent (memory or Redis)
      +- spangate.statement      the whitelisted statement
      |    +- CloudSpanner.*     the Spanner client's own spans (it is given the same provider;
      |                          exported without Spanner's error text: ``gateway.scrubbing``)
      +- spangate.audit          the audit event recorded

The trace and span ids of the request's span go into its audit event (``trace``, ``spanId``)
and its log line. Caller-supplied strings in attributes are cut to ``MAX_STRING_BYTES``.
Fixed endpoints (``/healthz``, ``/readyz``, ``/metrics``, ``/openapi.json``, ``/docs``) get no
span: probes and scrapes would drown the traces.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import re
import threading
from collections.abc import Awaitable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from opentelemetry import context as context_api
from opentelemetry import trace
from opentelemetry.trace import (
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)

from gateway import __version__
from gateway.audit.bounds import MAX_STRING_BYTES, cut
from gateway.audit.origin import TraceParent, trace_parent
from gateway.errors import GatewayError, SpannerError
from gateway.http import Scope

if TYPE_CHECKING:
    from gateway.audit.event import CallRecord
    from gateway.policy.compiled import CompiledPolicy, CompiledQuery
    from gateway.spanner.results import Result
    from gateway.tracing_setup import Exporting

T = TypeVar("T")

__all__ = [
    "SHUTDOWN_SECONDS",
    "SPAN",
    "TRACER_NAME",
    "check_tracing",
    "UNTRUSTED_PARENT",
    "Tracing",
    "caller_trace_id",
    "parent_context",
    "tracing_from_env",
]

log = logging.getLogger("spangate.tracing")

TRACER_NAME = "spangate"
SPAN = "spangate.span"  # the ASGI scope's state key of the request's span
SHUTDOWN_SECONDS = 5.0  # at most this long exporting what is buffered at shutdown, in all
# In the context of a caller's span that did not come through a trusted proxy: the sampler
# decides (``tracing_setup.CallerSampler``), not the caller's flag.
UNTRUSTED_PARENT = context_api.create_key("spangate-untrusted-parent")
# The trace a caller named without a span: a span started with no parent gets it
# (``tracing_setup.CallerTraceIds``). The SDK is imported only when traces are on.
CALLER_TRACE: contextvars.ContextVar[int] = contextvars.ContextVar(
    "spangate_caller_trace", default=0
)
_METHODS = frozenset(
    ("CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "QUERY", "TRACE")
)
# W3C tracestate: at most 32 members of key=value; anything else is dropped whole (its own
# parser would log every malformed header a caller sends, at WARNING).
_TRACESTATE_MEMBER = re.compile(
    r"(?:[a-z][_0-9a-z\-*/]{0,255}|[a-z0-9][_0-9a-z\-*/]{0,240}@[a-z][_0-9a-z\-*/]{0,13})"
    r"=[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]"
)
_TRACESTATE_MAX_BYTES = 512 * 2  # W3C: vendors may truncate beyond 512; beyond twice that, drop


@contextlib.contextmanager
def caller_trace_id(trace_id: int | None) -> Iterator[None]:
    """A span started inside with no parent gets ``trace_id`` (``CallerTraceIds``)."""
    if not trace_id:
        yield
        return
    token = CALLER_TRACE.set(trace_id)
    try:
        yield
    finally:
        CALLER_TRACE.reset(token)


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() == "true"


def check_tracing(env: Mapping[str, str]) -> None:
    """ConfigError for ``OTEL_*`` variables ``tracing_from_env`` would refuse (exporter names
    and batch options), without building anything: a supervisor's check before its workers
    build theirs."""
    if _truthy(env.get("OTEL_SDK_DISABLED")):
        return
    from gateway.tracing_setup import batch_options, exporter_names

    if exporter_names(env):
        batch_options(env)


def tracing_from_env(env: Mapping[str, str]) -> Tracing | None:
    """The gateway's tracing as the ``OTEL_*`` variables of ``env`` ask (see the module's
    docstring), or None: off. ConfigError for an exporter, protocol, sampler or number it
    cannot honour."""
    if _truthy(env.get("OTEL_SDK_DISABLED")):
        return None
    from gateway.tracing_setup import batch_options, exporter_names, make_exporter

    names = exporter_names(env)
    if not names:
        return None
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    exporting = [make_exporter(name, env) for name in names]
    options = batch_options(env)
    tracing = Tracing.with_sdk(env)
    for one in exporting:
        processor = BatchSpanProcessor(
            one.exporter,
            max_queue_size=options["max_queue_size"],
            schedule_delay_millis=options["schedule_delay_millis"],
            max_export_batch_size=options["max_export_batch_size"],
            export_timeout_millis=options["export_timeout_millis"],
        )
        tracing.add_processor(processor)
        tracing.exporting.append(one)
    return tracing


def _tracestate(headers: list[tuple[bytes, bytes]]) -> TraceState:
    values = [v.decode("latin-1") for k, v in headers if k == b"tracestate"]
    if not values or sum(len(v) for v in values) > _TRACESTATE_MAX_BYTES:
        return TraceState()
    members = [m.strip(" \t") for v in values for m in v.split(",")]
    members = [m for m in members if m]
    if len(members) > 32 or not all(_TRACESTATE_MEMBER.fullmatch(m) for m in members):
        return TraceState()
    pairs = [tuple(m.split("=", 1)) for m in members]
    if len({k for k, _ in pairs}) != len(pairs):
        return TraceState()
    return TraceState([(k, v) for k, v in pairs])


def _caller(headers: list[tuple[bytes, bytes]]) -> TraceParent | None:
    return trace_parent(
        next((v for k, v in headers if k == b"traceparent"), None),
        next((v for k, v in headers if k == b"x-cloud-trace-context"), None),
    )


def parent_context(headers: list[tuple[bytes, bytes]], *, trusted: bool = True) -> Any:
    """The OpenTelemetry context of the caller's span (W3C traceparent and tracestate, else
    X-Cloud-Trace-Context with a span), or None (a new trace). ``trusted``: the request came
    from a trusted proxy, whose sampled flag is followed; else the context says so
    (``UNTRUSTED_PARENT``) and ``CallerSampler`` decides. Malformed headers are ignored without
    a log line (a caller could otherwise write to the log at will)."""
    found = _caller(headers)
    if found is None or found.span is None or set(found.span) == {"0"}:
        return None
    remote = SpanContext(
        trace_id=int(found.trace, 16),
        span_id=int(found.span, 16),
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED if found.sampled else TraceFlags.DEFAULT),
        trace_state=_tracestate(headers) if found.w3c else None,
    )
    context = trace.set_span_in_context(NonRecordingSpan(remote))
    return context if trusted else context_api.set_value(UNTRUSTED_PARENT, True, context)


def _text(value: str | None) -> str | None:
    """A caller's string as an attribute holds it: at most MAX_STRING_BYTES bytes of UTF-8."""
    if value is None or len(value) * 4 <= MAX_STRING_BYTES:
        return value
    return cut(value, MAX_STRING_BYTES)


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    value = next((v for k, v in headers if k == name), None)
    return value.decode("latin-1") if value is not None else None


class Tracing:
    """The gateway's tracer over one ``TracerProvider`` (never the global one: the Spanner
    client is handed this provider, FastAPI and the MCP SDK keep their no-op defaults)."""

    def __init__(self, provider: trace.TracerProvider) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer(TRACER_NAME, __version__)
        self.exporting: list[Exporting] = []  # what tracing_from_env installed

    @classmethod
    def with_sdk(cls, env: Mapping[str, str] | None = None) -> Tracing:
        """An SDK ``TracerProvider`` as ``env`` asks (``gateway.tracing_setup``: the sampler
        behind ``CallerSampler``, the resource named ``spangate``, ``CallerTraceIds``) with no
        processor yet (``add_processor``). ConfigError for a sampler it cannot honour."""
        from opentelemetry.sdk.trace import TracerProvider

        from gateway.tracing_setup import CallerTraceIds, resource_from_env, sampler_from_env

        given = env if env is not None else {}
        return cls(
            TracerProvider(
                sampler=sampler_from_env(given),
                resource=resource_from_env(given),
                id_generator=CallerTraceIds(),
                shutdown_on_exit=False,
            )
        )

    def add_processor(self, processor: Any) -> None:
        """Add a span processor (the provider must be the SDK's), behind a
        ``ScrubbingProcessor``: the Spanner client's spans reach it without Spanner's error
        text, which can quote values (``gateway.scrubbing``). Add processors here only."""
        from gateway.scrubbing import ScrubbingProcessor

        scrubbing = ScrubbingProcessor(processor, TRACER_NAME)
        self.provider.add_span_processor(scrubbing)  # type: ignore[attr-defined]

    @property
    def spanner_options(self) -> dict[str, Any]:
        """``observability_options`` of the Spanner client: its spans go to this provider,
        children of whatever span is current (``spangate.statement``)."""
        return {"tracer_provider": self.provider}

    async def aclose(self, seconds: float = SHUTDOWN_SECONDS) -> None:
        """Export what is buffered and stop, waiting at most ``seconds``: the SDK's shutdown
        joins each batch processor for up to 30 s and an export to a collector that does not
        answer waits out its timeout (and retries), so it runs in a daemon thread that is left
        behind (and dies with the process) when it takes longer; the spans still buffered then
        are lost, and a warning says so."""
        shutdown = getattr(self.provider, "shutdown", None)
        if shutdown is None:
            return
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def finished() -> None:
            if not done.done():
                done.set_result(None)

        def run() -> None:
            try:
                shutdown()
            except Exception:  # stopping: an exporter's failure is only logged
                log.warning("exporting the last spans failed", exc_info=True)
            finally:
                loop.call_soon_threadsafe(finished)

        threading.Thread(target=run, name="spangate-trace-shutdown", daemon=True).start()
        try:
            await asyncio.wait_for(asyncio.shield(done), seconds)
        except TimeoutError:
            log.warning(
                "the trace exporter did not finish within %g s: spans still buffered are lost",
                seconds,
            )

    # -- spans --------------------------------------------------------------------------------
    @contextlib.contextmanager
    def server(self, scope: Scope, *, trusted: bool = False) -> Iterator[Span]:
        """The request's span, current while the request runs (named by ``finish``): a child
        of the caller's span, sampled as its flag says when ``trusted`` (the peer is a trusted
        proxy), else as the sampler decides; a root span of the caller's trace when it named no
        span."""
        headers: list[tuple[bytes, bytes]] = scope.get("headers", [])
        method = scope["method"]
        known = method in _METHODS
        server = scope.get("server") or (None, None)
        client = scope.get("client") or (None, None)
        attributes: dict[str, Any] = {  # url.path is set by finish: redacted segments hidden
            "http.request.method": method if known else "_OTHER",
            "url.scheme": scope.get("scheme", "http"),
            "network.protocol.version": scope.get("http_version", "1.1"),
        }
        if not known:
            attributes["http.request.method_original"] = _text(method)
        optional = {
            "server.address": server[0],
            "server.port": server[1],
            "network.peer.address": client[0],
            "network.peer.port": client[1],
            "user_agent.original": _text(_header(headers, b"user-agent")),
        }
        attributes.update({k: v for k, v in optional.items() if v is not None})
        parent = parent_context(headers, trusted=trusted)
        named = None
        if parent is None and (found := _caller(headers)) is not None:
            named = int(found.trace, 16)  # a trace without a span: continued as its root
        with caller_trace_id(named):
            starting = self.tracer.start_as_current_span(
                method if known else "HTTP",
                context=parent,
                kind=SpanKind.SERVER,
                attributes=attributes,
                record_exception=False,
                set_status_on_exception=False,
            )
            span = starting.__enter__()
        try:
            yield span
        except BaseException as exc:
            if not starting.__exit__(type(exc), exc, exc.__traceback__):
                raise
        else:
            starting.__exit__(None, None, None)

    @staticmethod
    def resume(scope: Scope) -> contextlib.AbstractContextManager[Any]:
        """The request's span current again, where a library set another one: the MCP SDK
        wraps a tool call in its own (no-op) span, whose parent is whatever the JSON-RPC
        ``_meta`` names, not the request."""
        span = scope.get("state", {}).get(SPAN)
        if span is None:
            return contextlib.nullcontext()
        return trace.use_span(
            span, end_on_exit=False, record_exception=False, set_status_on_exception=False
        )

    @staticmethod
    def bind(call: CallRecord) -> None:
        """The call's audit event names the current (request) span: its trace and span id."""
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            call.trace = f"{context.trace_id:032x}"
            call.span = f"{context.span_id:016x}"

    @staticmethod
    def finish(
        span: Span,
        scope: Scope,
        call: CallRecord | None,
        status: int,
        outcome: int,
        *,
        path: str,
        mcp: bool,
    ) -> None:
        """Name the request's span after its route (``/mcp`` for MCP: the tool is an
        attribute) and set what the request came to: ``status`` what HTTP answered,
        ``outcome`` how the call ended (an MCP tool call that failed is answered 200), ``path``
        the path as shown (``gateway.policy.redaction.shown_path``: never a redacted value).
        An outcome of 5xx is an error (``error.type``: the stable code)."""
        decision = call.decision if call is not None else None
        route = decision.route if decision is not None else None
        method = scope["method"]
        template = "/mcp" if mcp else route.template if route is not None else None
        if template is not None:
            span.update_name(f"{method if method in _METHODS else 'HTTP'} {template}")
            span.set_attribute("http.route", template)
        span.set_attribute("url.path", _text(path) or "")
        span.set_attribute("http.response.status_code", status)
        if call is not None:
            code = call.error.code if call.error is not None else "ok"
            attributes: dict[str, Any] = {
                "spangate.request_id": call.request_id,
                "spangate.transport": call.transport,
                "spangate.code": code,
            }
            if call.client is not None:
                attributes["client.address"] = call.client
            if route is not None:
                attributes["spangate.query"] = route.query_name
                attributes["spangate.route"] = f"{route.model.method} {route.template}"
            if call.principal is not None:
                attributes["spangate.issuer"] = call.principal.issuer
            if mcp:
                attributes["mcp.method.name"] = "tools/call"
                attributes["gen_ai.operation.name"] = "execute_tool"
                if call.tool is not None:
                    attributes["gen_ai.tool.name"] = _text(call.tool)
            span.set_attributes(attributes)
            if outcome >= 500:
                span.set_attribute("error.type", code)
        elif outcome >= 500:
            span.set_attribute("error.type", str(outcome))
        if outcome >= 500:
            span.set_status(Status(StatusCode.ERROR))

    def step(
        self, name: str, attributes: Mapping[str, Any] | None = None
    ) -> contextlib.AbstractContextManager[Span]:
        """A child span of the current one around one step of a call. A GatewayError it raises
        marks the span an error with the error's stable code (never its text). Under a span
        that is not recorded (not sampled), none: a span costs tens of microseconds."""
        if not trace.get_current_span().is_recording():
            return contextlib.nullcontext(trace.INVALID_SPAN)
        return self._step(name, attributes)

    @contextlib.contextmanager
    def _step(self, name: str, attributes: Mapping[str, Any] | None) -> Iterator[Span]:
        with self.tracer.start_as_current_span(
            name,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                yield span
            except GatewayError as exc:
                span.set_attribute("error.type", exc.code)
                span.set_status(Status(StatusCode.ERROR, exc.code))
                raise
            except asyncio.CancelledError:
                span.set_attribute("error.type", "cancelled")
                span.set_status(Status(StatusCode.ERROR, "cancelled"))
                raise
            except Exception as exc:
                span.set_attribute("error.type", type(exc).__qualname__)
                span.set_status(Status(StatusCode.ERROR))
                raise

    async def traced(
        self, name: str, awaitable: Awaitable[T], attributes: Mapping[str, Any] | None = None
    ) -> T:
        """``await awaitable`` in a child span ``name`` (a coroutine runs its body only when
        awaited: inside the span, whose context it sees); without one when not sampled."""
        if not trace.get_current_span().is_recording():
            return await awaitable
        with self._step(name, attributes):
            return await awaitable

    async def statement(
        self,
        running: Awaitable[Result],
        query: CompiledQuery,
        policy: CompiledPolicy,
        database: str,
    ) -> Result:
        """The statement's span (database semantic conventions: the whitelisted SQL, never a
        parameter value); the Spanner client's spans are its children."""
        if not trace.get_current_span().is_recording():
            return await running
        identity = query.model.identity
        spec = policy.model.identities.get(identity)
        attributes = {
            "db.system.name": "gcp.spanner",
            "db.namespace": database,
            "db.query.text": query.model.sql,
            "db.operation.name": "DML" if query.is_dml else "SELECT",
            "spangate.query": query.name,
            "spangate.identity": identity,
            "spangate.database_role": (spec.database_role if spec else None) or "",
        }
        with self._step("spangate.statement", attributes) as span:
            try:
                result = await running
            except SpannerError as exc:
                if exc.spanner_code is not None:
                    span.set_attribute("db.response.status_code", exc.spanner_code)
                outcome = exc.extra.get("outcome")
                if isinstance(outcome, str):
                    span.set_attribute("spangate.outcome", outcome)
                raise
            span.set_attribute("db.response.returned_rows", result.row_count)
            if result.truncated:
                span.set_attribute("spangate.truncated", True)
            if query.is_dml:
                span.set_attribute(
                    "spangate.outcome",
                    "committed" if result.commit_timestamp is not None else "not-committed",
                )
            return result
