"""OpenTelemetry traces: off unless the environment says where spans go; then a span per request.

Turned on by the standard variables (``tracing_from_env``; docs/observability.md): tracing is on
when ``OTEL_SDK_DISABLED`` is not ``true`` and ``OTEL_TRACES_EXPORTER`` names an exporter
(``otlp``, ``console``; ``none`` is off) or ``OTEL_EXPORTER_OTLP_ENDPOINT`` /
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set (then ``otlp``). Unlike the specification's default
(``otlp`` to localhost:4318), nothing is exported unless asked. The SDK reads the rest itself:
the OTLP/HTTP exporter's endpoint, headers, timeout, compression and TLS files
(``OTEL_EXPORTER_OTLP_*``), the sampler (``OTEL_TRACES_SAMPLER[_ARG]``, default
``parentbased_always_on``), the batch processor (``OTEL_BSP_*``), the resource
(``OTEL_SERVICE_NAME``, default ``spangate``; ``OTEL_RESOURCE_ATTRIBUTES``).

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
import re
from collections.abc import Awaitable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

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
from gateway.errors import ConfigError, GatewayError, SpannerError
from gateway.http import Scope

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

    from gateway.audit.event import CallRecord
    from gateway.policy.compiled import CompiledPolicy, CompiledQuery
    from gateway.spanner.results import Result

T = TypeVar("T")

__all__ = ["SPAN", "TRACER_NAME", "Tracing", "parent_context", "tracing_from_env"]

TRACER_NAME = "spangate"
SPAN = "spangate.span"  # the ASGI scope's state key of the request's span
EXPORTERS = ("otlp", "console", "none")
_HTTP_PROTOBUF = "http/protobuf"
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


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() == "true"


def _exporter_names(env: Mapping[str, str]) -> list[str]:
    """The exporters asked for: ``OTEL_TRACES_EXPORTER``'s list, else ``otlp`` when an OTLP
    endpoint is set, else none; ConfigError for a name this gateway cannot load."""
    given = env.get("OTEL_TRACES_EXPORTER", "").strip()
    if not given:
        endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get(
            "OTEL_EXPORTER_OTLP_ENDPOINT"
        )
        return ["otlp"] if endpoint and endpoint.strip() else []
    names = [n.strip().lower() for n in given.split(",") if n.strip()]
    for name in names:
        if name not in EXPORTERS:
            raise ConfigError(
                f"OTEL_TRACES_EXPORTER: {name!r} is not an exporter spangate has "
                f"(one or more of {', '.join(EXPORTERS)})"
            )
    return [n for n in names if n != "none"]


def _check_protocol(env: Mapping[str, str]) -> None:
    for variable in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        value = env.get(variable, "").strip()
        if value:
            if value != _HTTP_PROTOBUF:
                raise ConfigError(
                    f"{variable}: {value!r} is not a protocol spangate exports with "
                    f"(only {_HTTP_PROTOBUF}: OTLP over HTTP, port 4318 by default)"
                )
            return


def _exporter(name: str) -> SpanExporter:
    if name == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()  # OTEL_EXPORTER_OTLP_[TRACES_]* from the environment
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter

    return ConsoleSpanExporter()


def tracing_from_env(env: Mapping[str, str]) -> Tracing | None:
    """The gateway's tracing as the ``OTEL_*`` variables of ``env`` ask (see the module's
    docstring), or None: off. ConfigError for an exporter or protocol it cannot honour."""
    if _truthy(env.get("OTEL_SDK_DISABLED")):
        return None
    names = _exporter_names(env)
    if not names:
        return None
    if "otlp" in names:
        _check_protocol(env)
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    tracing = Tracing.with_sdk()
    for name in dict.fromkeys(names):
        tracing.add_processor(BatchSpanProcessor(_exporter(name)))
    return tracing


def _resource() -> Any:
    """The SDK's resource from the environment, named ``spangate`` unless it names itself."""
    from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource

    detected = Resource.create({SERVICE_VERSION: __version__})
    name = detected.attributes.get(SERVICE_NAME)
    if not name or str(name).startswith("unknown_service"):
        detected = detected.merge(Resource({SERVICE_NAME: TRACER_NAME}))
    return detected


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


def parent_context(headers: list[tuple[bytes, bytes]]) -> Any:
    """The OpenTelemetry context of the caller's span (W3C traceparent and tracestate, else
    X-Cloud-Trace-Context with a span), or None (a new trace). Malformed headers are ignored
    without a log line (a caller could otherwise write to the log at will)."""
    found: TraceParent | None = trace_parent(
        next((v for k, v in headers if k == b"traceparent"), None),
        next((v for k, v in headers if k == b"x-cloud-trace-context"), None),
    )
    if found is None or found.span is None or set(found.span) == {"0"}:
        return None
    remote = SpanContext(
        trace_id=int(found.trace, 16),
        span_id=int(found.span, 16),
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED if found.sampled else TraceFlags.DEFAULT),
        trace_state=_tracestate(headers) if found.w3c else None,
    )
    return trace.set_span_in_context(NonRecordingSpan(remote))


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

    @classmethod
    def with_sdk(cls) -> Tracing:
        """An SDK ``TracerProvider`` (sampler from ``OTEL_TRACES_SAMPLER``; resource from the
        environment, named ``spangate``) with no processor yet (``add_processor``)."""
        from opentelemetry.sdk.trace import TracerProvider

        return cls(TracerProvider(resource=_resource(), shutdown_on_exit=False))

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

    async def aclose(self) -> None:
        """Export what is buffered and stop (blocking, bounded by the exporter's timeout: in a
        thread)."""
        shutdown = getattr(self.provider, "shutdown", None)
        if shutdown is not None:
            await asyncio.to_thread(shutdown)

    # -- spans --------------------------------------------------------------------------------
    def server(self, scope: Scope) -> contextlib.AbstractContextManager[Span]:
        """The request's span, current while the request runs (named by ``finish``)."""
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
        return self.tracer.start_as_current_span(
            method if known else "HTTP",
            context=parent_context(headers),
            kind=SpanKind.SERVER,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        )

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
