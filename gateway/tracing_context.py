"""The caller's trace, as the request's span continues it (``Tracing.server``).

The caller names its span in W3C ``traceparent`` (with ``tracestate``), else in
``X-Cloud-Trace-Context`` (``gateway.audit.origin`` parses both); ``parent_context`` makes that
the OpenTelemetry context the request's span starts in. A caller's sampled flag is followed only
from a trusted proxy (``SPANGATE_TRUSTED_PROXIES``): from anyone else the context says so
(``UNTRUSTED_PARENT``) and the sampler decides as for a new trace
(``tracing_setup.CallerSampler``). A trace named without a span is continued as its root: its id
is handed to the id generator (``caller_trace_id``, ``tracing_setup.CallerTraceIds``).
Malformed headers are ignored without a log line (a caller could otherwise write to the log at
will).
"""

from __future__ import annotations

import contextlib
import contextvars
import re
from collections.abc import Iterator
from typing import Any

from opentelemetry import context as context_api
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState

from gateway.audit.origin import TraceParent, trace_parent

__all__ = [
    "CALLER_TRACE",
    "UNTRUSTED_PARENT",
    "caller_parent",
    "caller_trace_id",
    "parent_context",
]

# In the context of a caller's span that did not come through a trusted proxy: the sampler
# decides (``tracing_setup.CallerSampler``), not the caller's flag.
UNTRUSTED_PARENT = context_api.create_key("spangate-untrusted-parent")
# The trace a caller named without a span: a span started with no parent gets it
# (``tracing_setup.CallerTraceIds``). The SDK is imported only when traces are on.
CALLER_TRACE: contextvars.ContextVar[int] = contextvars.ContextVar(
    "spangate_caller_trace", default=0
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


def caller_parent(headers: list[tuple[bytes, bytes]]) -> TraceParent | None:
    """The trace (and span, if any) the caller named: ``traceparent``, else
    ``X-Cloud-Trace-Context``; None when it named none (or malformed)."""
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
    found = caller_parent(headers)
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
