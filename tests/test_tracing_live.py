"""Traces from a real ``spangate serve`` to an OTLP/HTTP receiver that the test runs.

The receiver is a small HTTP server on 127.0.0.1 that decodes each ``POST /v1/traces`` body as
an ``ExportTraceServiceRequest`` (opentelemetry-proto) and keeps its spans. The gateway is told
where it is by the standard variables alone (``OTEL_EXPORTER_OTLP_ENDPOINT``) and exports in
batches far apart (``OTEL_BSP_SCHEDULE_DELAY``), so the spans of the requests arrive when the
server stops: what a graceful shutdown must flush.
"""

from __future__ import annotations

import gzip
import json
import secrets
import signal
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from served import served, start_served, stop_process

from gateway.dev.idp import IdpProcess
from gateway.tracing import SHUTDOWN_SECONDS

SERVER_KIND = 2  # opentelemetry.proto.trace.v1.Span.SPAN_KIND_SERVER
SPANNER_SCOPE = "cloud.google.com/python/spanner"
STEPS = ["spangate.token", "spangate.decision", "spangate.budget", "spangate.statement"]


@dataclass
class Received:
    """One span as the receiver got it."""

    trace_id: str
    span_id: str
    parent: str
    name: str
    kind: int
    scope: str
    attributes: dict[str, Any]
    resource: dict[str, Any]
    start: int


def _values(attributes: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in attributes:
        assert isinstance(kv, KeyValue)
        which = kv.value.WhichOneof("value")
        out[kv.key] = getattr(kv.value, which) if which else None
    return out


class Receiver:
    """An OTLP/HTTP traces endpoint on a free loopback port."""

    def __init__(self) -> None:
        self.spans: list[Received] = []
        self.requests = 0
        lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path != "/v1/traces" or (
                    self.headers.get("Content-Type") != "application/x-protobuf"
                ):
                    self.send_error(404)
                    return
                request = ExportTraceServiceRequest.FromString(body)
                spans = [
                    Received(
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent=span.parent_span_id.hex(),
                        name=span.name,
                        kind=span.kind,
                        scope=scoped.scope.name,
                        attributes=_values(span.attributes),
                        resource=_values(resource.resource.attributes),
                        start=span.start_time_unix_nano,
                    )
                    for resource in request.resource_spans
                    for scoped in resource.scope_spans
                    for span in scoped.spans
                ]
                with lock:
                    owner.spans.extend(spans)
                    owner.requests += 1
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def of(self, trace_id: str) -> list[Received]:
        return sorted((s for s in self.spans if s.trace_id == trace_id), key=lambda s: s.start)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    running.thread.start()
    try:
        yield running
    finally:
        running.server.shutdown()
        running.server.server_close()


def event_of(audit: Path, request_id: str) -> dict[str, Any]:
    for line in audit.read_text().splitlines():
        event: dict[str, Any] = json.loads(line)
        if event["protoPayload"]["requestMetadata"]["requestAttributes"]["id"] == request_id:
            return event
    raise AssertionError(f"no audit event for {request_id}")


def check_tree(spans: list[Received], caller_span: str) -> Received:
    """The request's span continues the caller's, with a child per step and the Spanner
    client's spans below the statement's; returns the request's span."""
    (server,) = [s for s in spans if s.kind == SERVER_KIND]
    assert server.parent == caller_span
    steps = [s for s in spans if s.parent == server.span_id]
    assert [s.name for s in steps] == [*STEPS, "spangate.audit"]
    statement = steps[3]
    by_id = {s.span_id: s for s in spans}
    below = [s for s in spans if s.scope == SPANNER_SCOPE]
    assert below, [s.name for s in spans]
    for span in below:
        node = span
        while node.parent in by_id and node is not statement:
            node = by_id[node.parent]
        assert node is statement, f"{span.name} is not below spangate.statement"
    return server


def test_spans_reach_an_otlp_receiver_from_spangate_serve(
    tmp_path: Path,
    demo_database: str,
    idp: IdpProcess,
    audit_key: str,
    token_for: Callable[..., str],
    receiver: Receiver,
) -> None:
    read_trace, mcp_trace = secrets.token_hex(16), secrets.token_hex(16)
    read_parent, mcp_parent = secrets.token_hex(8), secrets.token_hex(8)
    with served(
        tmp_path,
        database=demo_database,
        issuer=idp.issuer,
        audit_key=audit_key,
        env={
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.port}",
            "OTEL_BSP_SCHEDULE_DELAY": "600000",  # nothing leaves before shutdown flushes it
            "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment.name=test",
            "SPANGATE_LOG_LEVEL": "info",
        },
    ) as server:
        read = httpx.get(
            f"{server.base}/v1/orders/O-1001",
            headers={
                "Authorization": f"Bearer {token_for('support-console')}",
                "traceparent": f"00-{read_trace}-{read_parent}-01",
            },
            timeout=30,
        )
        assert read.status_code == 200, read.text
        call = {
            "jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "get_order", "arguments": {"order_id": "O-1001"}},
        }  # fmt: skip
        mcp = httpx.post(
            f"{server.base}/mcp",
            json=call,
            headers={
                "Content-Type": "application/json",
                "Accept": "application/json, text/event-stream",
                "MCP-Protocol-Version": "2025-11-25",
                "Authorization": f"Bearer {token_for('order-agent')}",
                "traceparent": f"00-{mcp_trace}-{mcp_parent}-01",
            },
            timeout=30,
        )
        assert mcp.status_code == 200, mcp.text
        assert receiver.of(read_trace) == []  # still in the gateway's batch
    # stopped: the shutdown exported what was buffered
    read_server = check_tree(receiver.of(read_trace), read_parent)
    assert read_server.name == "GET /v1/orders/{order_id}"
    assert read_server.attributes["http.route"] == "/v1/orders/{order_id}"
    assert read_server.attributes["http.response.status_code"] == 200
    assert read_server.resource["service.name"] == "spangate"
    assert read_server.resource["deployment.environment.name"] == "test"
    mcp_server = check_tree(receiver.of(mcp_trace), mcp_parent)
    assert mcp_server.name == "POST /mcp"
    assert mcp_server.attributes["gen_ai.tool.name"] == "get_order"
    for answer, trace_id, span in ((read, read_trace, read_server), (mcp, mcp_trace, mcp_server)):
        rid = answer.headers["x-request-id"]
        event = event_of(server.audit, rid)
        assert (event["trace"], event["spanId"]) == (trace_id, span.span_id)
        (line,) = [
            x
            for x in map(json.loads, server.log.read_text().splitlines())
            if x.get("request_id") == rid
        ]
        assert (line["trace_id"], line["span_id"]) == (trace_id, span.span_id)


def test_a_collector_that_never_answers_does_not_hold_the_exit(
    tmp_path: Path,
    demo_database: str,
    idp: IdpProcess,
    audit_key: str,
    token_for: Callable[..., str],
) -> None:
    """The OTLP endpoint accepts connections and never answers (a black hole): after SIGTERM,
    `spangate serve` exports what it holds for at most tracing.SHUTDOWN_SECONDS and exits 0,
    though the exporter's own timeout (60 s here) and the SDK's shutdown (30 s per processor)
    are far longer."""
    hole = socket.create_server(("127.0.0.1", 0), backlog=16)  # never accepted: no answer
    try:
        server = start_served(
            tmp_path,
            database=demo_database,
            issuer=idp.issuer,
            audit_key=audit_key,
            env={
                "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{hole.getsockname()[1]}",
                "OTEL_EXPORTER_OTLP_TIMEOUT": "60",
                "OTEL_BSP_SCHEDULE_DELAY": "600000",  # the span waits for the shutdown
            },
        )
        try:
            read = httpx.get(
                f"{server.base}/v1/orders/O-1001",
                headers={"Authorization": f"Bearer {token_for('support-console')}"},
                timeout=30,
            )
            assert read.status_code == 200, read.text
            server.process.send_signal(signal.SIGTERM)
            try:
                code = server.process.wait(timeout=SHUTDOWN_SECONDS + 15)  # the bound, and room
            except subprocess.TimeoutExpired:
                code = None
        finally:
            stop_process(server.process, timeout=1)
        assert code == 0, server.log.read_text()
        assert f"the trace exporter did not finish within {SHUTDOWN_SECONDS:g} s" in server.log.read_text()
    finally:
        hole.close()
