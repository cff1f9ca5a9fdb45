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
and its log line. What the spans say is ``gateway.tracing_attributes`` (caller-supplied strings
cut to ``MAX_STRING_BYTES``); how the caller's trace is continued, ``gateway.tracing_context``.
Fixed endpoints (``/healthz``, ``/readyz``, ``/metrics``, ``/openapi.json``, ``/docs``) get no
span: probes and scrapes would drown the traces.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Awaitable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from gateway import __version__
from gateway.errors import GatewayError, SpannerError
from gateway.http import Scope
from gateway.tracing_attributes import (
    METHODS,
    finish_request_span,
    request_attributes,
    statement_attributes,
)
from gateway.tracing_context import caller_parent, caller_trace_id, parent_context

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
    "Tracing",
    "tracing_from_env",
]

log = logging.getLogger("spangate.tracing")

TRACER_NAME = "spangate"
SPAN = "spangate.span"  # the ASGI scope's state key of the request's span
SHUTDOWN_SECONDS = 5.0  # at most this long exporting what is buffered at shutdown, in all


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
        attributes = request_attributes(scope, headers)
        parent = parent_context(headers, trusted=trusted)
        named = None
        if parent is None and (found := caller_parent(headers)) is not None:
            named = int(found.trace, 16)  # a trace without a span: continued as its root
        with caller_trace_id(named):
            starting = self.tracer.start_as_current_span(
                method if method in METHODS else "HTTP",
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

    # Name the request's span after its route and set what the request came to (its status,
    # its call's attributes): ``tracing_attributes.finish_request_span``.
    finish = staticmethod(finish_request_span)

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
        """The statement's span (``tracing_attributes.statement_attributes``: the whitelisted SQL,
        never a parameter value) and what it came to; the Spanner client's spans are its
        children."""
        if not trace.get_current_span().is_recording():
            return await running
        attributes = statement_attributes(query, policy, database)
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
