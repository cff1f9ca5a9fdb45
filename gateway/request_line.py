"""The request's log line as the gateway writes it (``gateway.logs`` formats and writes it), and
``StatusSend``: an ASGI ``send`` that remembers the status it answered, for that line and the
request's span. Every request path writes its line here: fixed endpoints and policy routes
(``gateway.app``), ``/mcp``, ``/approvals`` (``gateway.approvals.endpoints``).
"""

from __future__ import annotations

import time

from opentelemetry.trace import get_current_span as current_span

from gateway.audit.event import CallRecord
from gateway.audit.origin import trace_context
from gateway.http import Message, Scope, Send
from gateway.logs import log_request, request_fields

__all__ = ["StatusSend", "log_request_line"]


def log_request_line(
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


class StatusSend:
    """``send``, remembering the status it answered (for the request's log line and span)."""

    __slots__ = ("_send", "status")

    def __init__(self, send: Send) -> None:
        self._send = send
        self.status = 0

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        await self._send(message)
