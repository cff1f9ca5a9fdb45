"""Spans of other libraries lose the error text they record, before any exporter sees them.

The Spanner client is handed the gateway's tracer provider (``Tracing.spanner_options``), so its
spans (instrumentation scope ``cloud.google.com/python/spanner``) go through the gateway's span
processors. It records Spanner's error text verbatim: as the span status's description
(``Status(ERROR, str(error))``), as an ``exception`` event (the SDK records one when an
exception leaves a span), and as the ``cause`` of its retry events. Spanner's messages can
quote a row's value (``Bad int64 value: wile@acme.example``, a unique index's key): a masked
column, a parameter the audit trail redacts, anything.

``ScrubbingProcessor`` wraps each processor ``Tracing.add_processor`` is given. A span whose
instrumentation scope is not the gateway's own (``TRACER_NAME``: its spans never record
exception text, their status description is a stable code) reaches the wrapped processor, and
so its exporter, without:

- its ``exception`` events (``exception.message``, ``exception.stacktrace``);
- its status description (the status code stays: ERROR is still ERROR);
- the ``cause`` attribute of its other events.

Always, not only for queries with masks: the same words can quote any value. The span's name,
attributes (the policy's SQL as ``db.statement``, never a parameter value), other events, links
and timing are kept as they were.
"""

from __future__ import annotations

from opentelemetry.context import Context
from opentelemetry.sdk.trace import Event, ReadableSpan, Span, SpanProcessor
from opentelemetry.trace import Status

__all__ = ["DROPPED_EVENT_ATTRIBUTES", "ScrubbingProcessor", "scrubbed"]

DROPPED_EVENT_ATTRIBUTES = frozenset({"cause"})  # google-cloud-spanner's retry events: str(exc)
_EXCEPTION = "exception"


def _event(event: Event) -> Event | None:
    if event.name == _EXCEPTION:
        return None
    attributes = event.attributes or {}
    if not any(k in DROPPED_EVENT_ATTRIBUTES for k in attributes):
        return event
    kept = {k: v for k, v in attributes.items() if k not in DROPPED_EVENT_ATTRIBUTES}
    return Event(event.name, kept, timestamp=event.timestamp)


def scrubbed(span: ReadableSpan, own_scope: str) -> ReadableSpan:
    """``span`` as exporters may see it (see the module doc); the same object when it is the
    gateway's own or has nothing to drop."""
    scope = span.instrumentation_scope
    if scope is not None and scope.name == own_scope:
        return span
    events = [e for e in (_event(event) for event in span.events) if e is not None]
    same_events = len(events) == len(span.events) and all(
        a is b for a, b in zip(events, span.events, strict=True)
    )
    if same_events and not span.status.description:
        return span
    return ReadableSpan(
        name=span.name,
        context=span.context,
        parent=span.parent,
        resource=span.resource,
        attributes=span.attributes,
        events=tuple(events),
        links=span.links,
        kind=span.kind,
        status=Status(span.status.status_code),
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=scope,
    )


class ScrubbingProcessor(SpanProcessor):
    """``inner`` (a batch or simple processor and its exporter), fed scrubbed spans."""

    def __init__(self, inner: SpanProcessor, own_scope: str) -> None:
        self.inner = inner
        self.own_scope = own_scope

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        self.inner.on_start(span, parent_context=parent_context)

    def _on_ending(self, span: Span) -> None:
        self.inner._on_ending(span)

    def on_end(self, span: ReadableSpan) -> None:
        self.inner.on_end(scrubbed(span, self.own_scope))

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)
