"""Traces through the real app (real emulator, real OpenID provider), spans kept in memory.

The gateway is given a ``Tracing`` over an SDK provider with an ``InMemorySpanExporter`` (the seam
``build_gateway(tracing=...)``); the Spanner client gets the same provider, so its own spans are
in the same exporter. Every test reads the spans of its own trace.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from pydantic import SecretStr
from served import EXAMPLE_POLICY

from gateway.app import Gateway
from gateway.dev.idp import IdpProcess
from gateway.dev.ports import free_port
from gateway.errors import ConfigError
from gateway.logs import REQUEST_EXTRA
from gateway.runtime import build_gateway
from gateway.settings import Settings
from gateway.tracing import SPAN, Tracing, tracing_from_env
from gateway.tracing_context import parent_context

SPANNER_SCOPE = "cloud.google.com/python/spanner"
MCP_HEADERS = {
    "Host": "127.0.0.1:8080",
    "Content-Type": "application/json",
    "Accept": "application/json, text/event-stream",
    "MCP-Protocol-Version": "2025-11-25",
}
STEPS = ["spangate.token", "spangate.decision", "spangate.budget", "spangate.statement"]


@pytest.fixture(scope="module")
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture(scope="module")
def traced_audit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("traced") / "audit.jsonl"


TRUSTED_PROXIES = "203.0.113.0/24"  # the traced gateway's SPANGATE_TRUSTED_PROXIES


def in_memory(env: dict[str, str] | None = None) -> tuple[Tracing, InMemorySpanExporter]:
    """Tracing as tracing_from_env builds it from ``env`` (sampler, ids, resource), its spans
    kept in memory (a simple processor, behind the scrubbing one as every processor)."""
    exporter = InMemorySpanExporter()
    tracing = Tracing.with_sdk(env or {})
    tracing.add_processor(SimpleSpanProcessor(exporter))
    return tracing, exporter


@pytest.fixture(scope="module")
async def traced_app(
    settings: Settings, idp: IdpProcess, exporter: InMemorySpanExporter, traced_audit: Path
) -> AsyncIterator[Gateway]:
    tracing = Tracing.with_sdk({})
    tracing.add_processor(SimpleSpanProcessor(exporter))  # as tracing_from_env adds its own
    app = build_gateway(
        settings.model_copy(
            update={"audit_path": traced_audit, "trusted_proxies": TRUSTED_PROXIES}
        ),
        env={"OKTA_ISSUER": idp.issuer},
        tracing=tracing,
    )
    await app.startup()
    try:
        yield app
    finally:
        await app.shutdown()


def client_of(app: Gateway, address: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(address, 50000))
    return httpx.AsyncClient(transport=transport, base_url="http://gateway.test")


@pytest.fixture(scope="module")
async def traced(traced_app: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    """A client calling through a trusted proxy (its sampled flags are followed)."""
    async with client_of(traced_app, "203.0.113.9") as http:
        yield http


@pytest.fixture(scope="module")
async def untrusted(traced_app: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    """A client calling directly, from no trusted proxy."""
    async with client_of(traced_app, "198.51.100.7") as http:
        yield http


def spans_of(exporter: InMemorySpanExporter, trace_id: int) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.context.trace_id == trace_id]


def server_span(spans: list[ReadableSpan]) -> ReadableSpan:
    (server,) = [s for s in spans if s.kind == SpanKind.SERVER]
    return server


def children(spans: list[ReadableSpan], parent: ReadableSpan) -> list[ReadableSpan]:
    return sorted(
        (s for s in spans if s.parent is not None and s.parent.span_id == parent.context.span_id),
        key=lambda s: s.start_time or 0,
    )


def event_of(audit: Path, request_id: str) -> dict[str, Any]:
    for line in audit.read_text().splitlines():
        event: dict[str, Any] = json.loads(line)
        if event["protoPayload"]["requestMetadata"]["requestAttributes"]["id"] == request_id:
            return event
    raise AssertionError(f"no audit event for {request_id}")


def traceparent(sampled: bool = True) -> tuple[str, str, str]:
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-{'01' if sampled else '00'}", trace_id, span_id


async def test_a_read_is_one_server_span_with_a_child_per_step_and_spanner_below(
    traced: httpx.AsyncClient,
    exporter: InMemorySpanExporter,
    traced_audit: Path,
    token_for: Callable[..., str],
) -> None:
    header, trace_id, caller_span = traceparent()
    answer = await traced.get(
        "/v1/orders/O-1001",
        headers={
            "Authorization": f"Bearer {token_for('support-console')}",
            "traceparent": header,
            "tracestate": "vendor=abc,other=1",
            "User-Agent": "trace-test/1",
        },
    )
    assert answer.status_code == 200, answer.text
    spans = spans_of(exporter, int(trace_id, 16))
    server = server_span(spans)
    # the caller's traceparent continued: same trace, the caller's span is the parent
    assert server.parent is not None and server.parent.span_id == int(caller_span, 16)
    assert server.parent.is_remote
    assert server.context.trace_state.get("vendor") == "abc"
    assert server.name == "GET /v1/orders/{order_id}"
    attributes = dict(server.attributes or {})
    assert attributes["http.request.method"] == "GET"
    assert attributes["http.route"] == "/v1/orders/{order_id}"
    assert attributes["url.path"] == "/v1/orders/O-1001"
    assert attributes["http.response.status_code"] == 200
    assert attributes["user_agent.original"] == "trace-test/1"
    assert attributes["client.address"] == "203.0.113.9"
    assert attributes["spangate.query"] == "get_order"
    assert attributes["spangate.code"] == "ok"
    assert attributes["spangate.transport"] == "http"
    assert server.status.status_code == StatusCode.UNSET
    steps = children(spans, server)
    assert [s.name for s in steps] == [*STEPS, "spangate.audit"]
    statement = steps[3]
    assert statement.attributes is not None
    assert statement.attributes["db.system.name"] == "gcp.spanner"
    assert statement.attributes["spangate.identity"] == "shop_reader"
    assert statement.attributes["db.response.returned_rows"] == 1
    assert "@order_id" in str(statement.attributes["db.query.text"])  # the SQL, not the values
    assert "O-1001" not in json.dumps(dict(statement.attributes))
    # the Spanner client's own spans, below the statement's
    below = [s for s in spans if s.instrumentation_scope and s.instrumentation_scope.name == SPANNER_SCOPE]
    assert below, [s.name for s in spans]
    ids = {s.context.span_id: s for s in spans}
    for span in below:
        parent = span
        while parent.parent is not None and parent.parent.span_id in ids:
            parent = ids[parent.parent.span_id]
            if parent is statement:
                break
        assert parent is statement, f"{span.name} is not below spangate.statement"
    # the audit event names the trace and the request's span
    event = event_of(traced_audit, answer.headers["x-request-id"])
    assert event["trace"] == trace_id
    assert event["spanId"] == f"{server.context.span_id:016x}"


async def test_a_new_trace_without_a_traceparent_and_in_the_audit_event(
    traced: httpx.AsyncClient,
    exporter: InMemorySpanExporter,
    traced_audit: Path,
    token_for: Callable[..., str],
) -> None:
    answer = await traced.get(
        "/v1/orders?status=PAID&limit=2",
        headers={"Authorization": f"Bearer {token_for('order-agent')}"},
    )
    assert answer.status_code == 200, answer.text
    event = event_of(traced_audit, answer.headers["x-request-id"])
    assert event["trace"] is not None and len(event["trace"]) == 32
    spans = spans_of(exporter, int(event["trace"], 16))
    server = server_span(spans)
    assert server.parent is None
    assert server.name == "GET /v1/orders"
    assert f"{server.context.span_id:016x}" == event["spanId"]
    assert [s.name for s in children(spans, server)] == [*STEPS, "spangate.audit"]


async def test_a_denied_call_has_no_statement_span(
    traced: httpx.AsyncClient, exporter: InMemorySpanExporter, token_for: Callable[..., str]
) -> None:
    header, trace_id, _ = traceparent()
    answer = await traced.get(
        "/v1/orders/O-1001",
        headers={"Authorization": f"Bearer {token_for('outsider')}", "traceparent": header},
    )
    assert answer.status_code == 403
    spans = spans_of(exporter, int(trace_id, 16))
    server = server_span(spans)
    steps = children(spans, server)
    assert [s.name for s in steps] == ["spangate.token", "spangate.decision", "spangate.audit"]
    assert steps[1].attributes is not None
    assert steps[1].attributes["spangate.decision.allow"] is False
    assert steps[1].status.status_code == StatusCode.UNSET
    assert server.attributes is not None
    assert server.attributes["http.response.status_code"] == 403
    assert server.attributes["spangate.code"] == answer.json()["code"]
    assert server.status.status_code == StatusCode.UNSET  # a 4xx is the caller's, not ours


async def test_a_refused_token_marks_its_span_with_the_stable_code(
    traced: httpx.AsyncClient, exporter: InMemorySpanExporter
) -> None:
    header, trace_id, _ = traceparent()
    answer = await traced.get(
        "/v1/orders/O-1001", headers={"Authorization": "Bearer not.a.jwt", "traceparent": header}
    )
    assert answer.status_code == 401
    spans = spans_of(exporter, int(trace_id, 16))
    steps = children(spans, server_span(spans))
    assert [s.name for s in steps] == ["spangate.token", "spangate.audit"]
    token = steps[0]
    assert token.status.status_code == StatusCode.ERROR
    assert token.status.description == answer.json()["code"]
    assert token.attributes is not None
    assert token.attributes["error.type"] == answer.json()["code"]
    assert not token.events  # no exception event: its text may carry what the caller sent


MODERN = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientCapabilities": {},
}


@pytest.mark.parametrize(
    ("version", "meta"),
    [
        ("2025-11-25", {}),  # the SDK's single-exchange entry
        ("2026-07-28", MODERN),  # the SDK's session manager (its own task group)
        # an MCP client's own trace context in _meta (the SDK reads it for its own no-op span):
        # the gateway's spans stay below the request's span all the same
        ("2025-11-25", {"traceparent": f"00-{'ab' * 16}-{'cd' * 8}-01"}),
    ],
    ids=["2025-11-25", "2026-07-28", "meta-traceparent"],
)
async def test_an_mcp_tool_call_makes_the_same_spans(
    traced: httpx.AsyncClient,
    exporter: InMemorySpanExporter,
    traced_audit: Path,
    token_for: Callable[..., str],
    version: str,
    meta: dict[str, Any],
) -> None:
    header, trace_id, caller_span = traceparent()
    params: dict[str, Any] = {"name": "get_order", "arguments": {"order_id": "O-1001"}}
    if meta:
        params["_meta"] = meta
    answer = await traced.post(
        "/mcp",
        json={"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": params},
        headers={
            **MCP_HEADERS,
            "MCP-Protocol-Version": version,
            "Mcp-Method": "tools/call",
            "Mcp-Name": "get_order",
            "Authorization": f"Bearer {token_for('order-agent')}",
            "traceparent": header,
        },
    )
    assert answer.status_code == 200, answer.text
    assert "error" not in answer.json() and not answer.json()["result"].get("isError")
    spans = spans_of(exporter, int(trace_id, 16))
    server = server_span(spans)
    assert server.parent is not None and server.parent.span_id == int(caller_span, 16)
    assert server.name == "POST /mcp"
    assert server.attributes is not None
    assert server.attributes["gen_ai.tool.name"] == "get_order"
    assert server.attributes["spangate.transport"] == "mcp"
    assert server.attributes["spangate.query"] == "get_order"
    assert [s.name for s in children(spans, server)] == [*STEPS, "spangate.audit"]
    event = event_of(traced_audit, answer.headers["x-request-id"])
    assert event["trace"] == trace_id
    assert event["spanId"] == f"{server.context.span_id:016x}"


async def test_an_unsampled_caller_through_a_trusted_proxy_gets_no_spans(
    traced: httpx.AsyncClient,
    exporter: InMemorySpanExporter,
    traced_audit: Path,
    token_for: Callable[..., str],
) -> None:
    header, trace_id, _ = traceparent(sampled=False)
    answer = await traced.get(
        "/v1/orders/O-1001",
        headers={"Authorization": f"Bearer {token_for('support-console')}", "traceparent": header},
    )
    assert answer.status_code == 200
    assert spans_of(exporter, int(trace_id, 16)) == []  # parentbased_always_on: not sampled
    assert event_of(traced_audit, answer.headers["x-request-id"])["trace"] == trace_id


@pytest.mark.parametrize("header", ["traceparent", "x-cloud-trace-context"])
async def test_a_caller_from_no_trusted_proxy_does_not_decide_sampling(
    untrusted: httpx.AsyncClient,
    exporter: InMemorySpanExporter,
    traced_audit: Path,
    token_for: Callable[..., str],
    header: str,
) -> None:
    """"Not sampled" from a caller that is not a trusted proxy: the sampler decides as for a new
    trace (parentbased_always_on: recorded), and the span stays in the caller's trace, below
    its span, with its tracestate."""
    trace_id, caller_span = secrets.token_hex(16), secrets.token_hex(8)
    headers = {"Authorization": f"Bearer {token_for('support-console')}"}
    if header == "traceparent":
        headers |= {"traceparent": f"00-{trace_id}-{caller_span}-00", "tracestate": "v=1"}
    else:
        headers["X-Cloud-Trace-Context"] = f"{trace_id}/{int(caller_span, 16)};o=0"
    answer = await untrusted.get("/v1/orders/O-1001", headers=headers)
    assert answer.status_code == 200
    spans = spans_of(exporter, int(trace_id, 16))
    server = server_span(spans)
    assert server.parent is not None and server.parent.span_id == int(caller_span, 16)
    if header == "traceparent":
        assert server.context.trace_state.get("v") == "1"
    assert [s.name for s in children(spans, server)] == [*STEPS, "spangate.audit"]
    event = event_of(traced_audit, answer.headers["x-request-id"])
    assert (event["trace"], event["spanId"]) == (trace_id, f"{server.context.span_id:016x}")


async def test_a_sampled_caller_from_no_trusted_proxy_is_not_recorded_when_the_sampler_says_no(
    settings: Settings, idp: IdpProcess, tmp_path: Path, token_for: Callable[..., str]
) -> None:
    """parentbased_always_off: a trusted proxy's "sampled" is followed, anyone else's is not."""
    env = {"OTEL_TRACES_SAMPLER": "parentbased_always_off"}
    headers = {"Authorization": f"Bearer {token_for('support-console')}"}
    proxy, direct = traceparent(), traceparent()
    async with gateway_with(
        settings, idp, tmp_path, tracing_env=env, trusted_proxies=TRUSTED_PROXIES
    ) as (app, exporter, audit):
        async with client_of(app, "203.0.113.9") as http:
            through = await http.get("/v1/orders/O-1001", headers={**headers, "traceparent": proxy[0]})
        async with client_of(app, "198.51.100.7") as http:
            straight = await http.get("/v1/orders/O-1001", headers={**headers, "traceparent": direct[0]})
    assert (through.status_code, straight.status_code) == (200, 200)
    assert server_span(spans_of(exporter, int(proxy[1], 16))).parent is not None
    assert spans_of(exporter, int(direct[1], 16)) == []
    assert event_of(audit, straight.headers["x-request-id"])["trace"] == direct[1]  # still named


async def test_x_cloud_trace_context_without_a_span_is_continued_as_a_root(
    traced: httpx.AsyncClient,
    exporter: InMemorySpanExporter,
    traced_audit: Path,
    token_for: Callable[..., str],
) -> None:
    trace_id = secrets.token_hex(16)
    answer = await traced.get(
        "/v1/orders/O-1001",
        headers={
            "Authorization": f"Bearer {token_for('support-console')}",
            "X-Cloud-Trace-Context": f"{trace_id};o=1",
        },
    )
    assert answer.status_code == 200
    spans = spans_of(exporter, int(trace_id, 16))
    server = server_span(spans)
    assert server.parent is None
    assert [s.name for s in children(spans, server)] == [*STEPS, "spangate.audit"]
    event = event_of(traced_audit, answer.headers["x-request-id"])
    assert (event["trace"], event["spanId"]) == (trace_id, f"{server.context.span_id:016x}")


async def test_x_cloud_trace_context_is_continued_too(
    traced: httpx.AsyncClient, exporter: InMemorySpanExporter, token_for: Callable[..., str]
) -> None:
    trace_id = secrets.token_hex(16)
    answer = await traced.get(
        "/v1/orders/O-1001",
        headers={
            "Authorization": f"Bearer {token_for('support-console')}",
            "X-Cloud-Trace-Context": f"{trace_id}/12345;o=1",
        },
    )
    assert answer.status_code == 200
    server = server_span(spans_of(exporter, int(trace_id, 16)))
    assert server.parent is not None and server.parent.span_id == 12345


@pytest.mark.parametrize(
    "tracestate",
    ["\x00bad", "a=1,a=2", "x" * 5000, ",".join(f"k{i}=v" for i in range(40)), "UPPER=1"],
)
async def test_a_hostile_tracestate_is_dropped_quietly(
    traced: httpx.AsyncClient,
    exporter: InMemorySpanExporter,
    token_for: Callable[..., str],
    tracestate: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    header, trace_id, _ = traceparent()
    answer = await traced.get(
        "/v1/orders/O-1001",
        headers={
            "Authorization": f"Bearer {token_for('support-console')}",
            "traceparent": header,
            "tracestate": tracestate.encode("latin-1").decode("latin-1"),
        },
    )
    assert answer.status_code == 200
    server = server_span(spans_of(exporter, int(trace_id, 16)))
    assert len(server.context.trace_state) == 0
    assert not [r for r in caplog.records if r.name.startswith("opentelemetry")]


async def test_a_malformed_traceparent_starts_a_new_trace(
    traced: httpx.AsyncClient,
    exporter: InMemorySpanExporter,
    traced_audit: Path,
    token_for: Callable[..., str],
) -> None:
    answer = await traced.get(
        "/v1/orders/O-1001",
        headers={
            "Authorization": f"Bearer {token_for('support-console')}",
            "traceparent": "00-" + "0" * 32 + "-" + "1" * 16 + "-01",
        },
    )
    assert answer.status_code == 200
    event = event_of(traced_audit, answer.headers["x-request-id"])
    server = server_span(spans_of(exporter, int(event["trace"], 16)))
    assert server.parent is None


async def test_fixed_endpoints_make_no_spans(
    traced: httpx.AsyncClient, exporter: InMemorySpanExporter
) -> None:
    header, trace_id, _ = traceparent()
    assert (await traced.get("/healthz", headers={"traceparent": header})).status_code == 200
    assert spans_of(exporter, int(trace_id, 16)) == []


async def test_tracing_is_off_without_a_traces_exporter_or_endpoint(
    gateway: Gateway, client: httpx.AsyncClient, token_for: Callable[..., str], audit_path: Path
) -> None:
    assert gateway.tracing is None  # the session gateway: built from an env without OTEL_*
    header, trace_id, caller_span = traceparent()
    answer = await client.get(
        "/v1/orders/O-1001",
        headers={"Authorization": f"Bearer {token_for('support-console')}", "traceparent": header},
    )
    assert answer.status_code == 200
    event = event_of(audit_path, answer.headers["x-request-id"])
    assert (event["trace"], event["spanId"]) == (trace_id, caller_span)  # the caller's own


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"OTEL_TRACES_EXPORTER": "none"},
        {"OTEL_TRACES_EXPORTER": " none "},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_SDK_DISABLED": "true"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_TRACES_EXPORTER": "none"},
        {"OTEL_SERVICE_NAME": "x"},
    ],
)
def test_off_unless_an_exporter_or_endpoint_is_named(env: dict[str, str]) -> None:
    assert tracing_from_env(env) is None


DEFAULT_TRACES = "http://localhost:4318/v1/traces"
RATIO = {"OTEL_TRACES_EXPORTER": "console", "OTEL_TRACES_SAMPLER": "traceidratio"}


@pytest.mark.parametrize(
    ("env", "installed"),
    [
        ({"OTEL_TRACES_EXPORTER": "otlp"}, [("otlp", DEFAULT_TRACES)]),
        ({"OTEL_TRACES_EXPORTER": "console"}, [("console", None)]),
        (
            {"OTEL_TRACES_EXPORTER": "otlp,console,otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/"},
            [("otlp", "http://c:4318/v1/traces"), ("console", None)],
        ),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, [("otlp", "http://127.0.0.1:4318/v1/traces")]),
        (
            {
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:9/traces",
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://ignored:4318",
            },
            [("otlp", "http://127.0.0.1:9/traces")],
        ),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
            [("otlp", DEFAULT_TRACES)],
        ),
    ],
)
async def test_on_when_an_exporter_or_endpoint_is_named(
    env: dict[str, str], installed: list[tuple[str, str | None]]
) -> None:
    tracing = tracing_from_env(env)
    assert tracing is not None
    assert [(e.name, e.endpoint) for e in tracing.exporting] == installed
    for one in tracing.exporting:
        kind = OTLPSpanExporter if one.name == "otlp" else ConsoleSpanExporter
        assert isinstance(one.exporter, kind)
        if isinstance(one.exporter, OTLPSpanExporter):
            assert one.exporter._endpoint == one.endpoint  # what the SDK's exporter uses
    resource = tracing.provider.resource  # type: ignore[attr-defined]
    assert resource.attributes["service.name"] == "spangate"
    await tracing.aclose()


async def test_everything_is_read_from_the_environment_given_not_the_process_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The process's own OTEL_* variables say otherwise; the mapping given is what counts (as
    it decided that traces are on)."""
    for name, value in {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://process:4318",
        "OTEL_EXPORTER_OTLP_HEADERS": "x-process=1",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "99",
        "OTEL_TRACES_SAMPLER": "always_off",
        "OTEL_SERVICE_NAME": "process",
        "OTEL_BSP_SCHEDULE_DELAY": "99999",
    }.items():
        monkeypatch.setenv(name, value)
    tracing = tracing_from_env(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://given:4318",
            "OTEL_EXPORTER_OTLP_HEADERS": "Authorization=Bearer%20t,x-given=2",
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "3",
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": "0.25",
            "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment.name=prod,service.name=ignored",
            "OTEL_SERVICE_NAME": "given",
        }
    )
    assert tracing is not None
    (one,) = tracing.exporting
    assert one.endpoint == "http://given:4318/v1/traces"
    assert isinstance(one.exporter, OTLPSpanExporter)
    sent = one.exporter._client  # the headers and timeout its requests carry
    assert (sent._headers["authorization"], sent._headers["x-given"]) == ("Bearer t", "2")
    assert sent._timeout == 3.0
    sampler = tracing.provider.sampler  # type: ignore[attr-defined]
    assert sampler.get_description().startswith("CallerSampler{ParentBased{root:TraceIdRatioBased{0.25}")
    attributes = tracing.provider.resource.attributes  # type: ignore[attr-defined]
    assert (attributes["service.name"], attributes["deployment.environment.name"]) == ("given", "prod")
    await tracing.aclose()


def test_the_console_exporter_writes_one_line_per_span(capsys: pytest.CaptureFixture[str]) -> None:
    tracing = tracing_from_env({"OTEL_TRACES_EXPORTER": "console"})
    assert tracing is not None
    with tracing.tracer.start_as_current_span("one", attributes={"a": "x\ny"}):
        pass
    with tracing.tracer.start_as_current_span("two"):
        pass
    tracing.provider.force_flush()  # type: ignore[attr-defined]
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["name"] for line in lines] == ["one", "two"]
    tracing.provider.shutdown()  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"OTEL_TRACES_EXPORTER": "jaeger"}, "OTEL_TRACES_EXPORTER"),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "PROTOCOL"),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4317", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc"},
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        ),
        ({"OTEL_TRACES_EXPORTER": "console", "OTEL_TRACES_SAMPLER": "sometimes"}, "OTEL_TRACES_SAMPLER"),
        ({**RATIO, "OTEL_TRACES_SAMPLER_ARG": "2"}, "OTEL_TRACES_SAMPLER_ARG"),
        ({**RATIO, "OTEL_TRACES_SAMPLER_ARG": "x"}, "OTEL_TRACES_SAMPLER_ARG"),
        ({"OTEL_TRACES_EXPORTER": "console", "OTEL_BSP_SCHEDULE_DELAY": "soon"}, "OTEL_BSP_SCHEDULE_DELAY"),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_TIMEOUT": "ten"}, "OTEL_EXPORTER_OTLP_TIMEOUT"),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_COMPRESSION": "zstd"}, "COMPRESSION"),
    ],
)
def test_an_exporter_or_setting_it_cannot_honour_stops_the_start(
    env: dict[str, str], named: str
) -> None:
    with pytest.raises(ConfigError, match=named):
        tracing_from_env(env)


CAST_QUERY = """
  cast_email:
    identity: shop_reader
    sql: |
      SELECT CAST(Email AS INT64) AS n, Email FROM Customers
      WHERE TenantId = @tenant AND CustomerId = @customer_id
    params:
      tenant: {type: STRING, from: claim.tenant}
      customer_id: {type: STRING, max_length: 36}
    mask:
      Email: {with: redact}
"""
CAST_ROUTE = """
  - {path: "/v1/customers/{customer_id}/cast", method: GET, query: cast_email, allow: [support]}
"""


def span_text(span: ReadableSpan) -> str:
    """Everything of a span an exporter sends, as text."""
    return json.dumps(
        {
            "name": span.name,
            "attributes": dict(span.attributes or {}),
            "events": [(e.name, dict(e.attributes or {})) for e in span.events],
            "status": [span.status.status_code.name, span.status.description],
            "links": [dict(link.attributes or {}) for link in span.links],
            "resource": dict(span.resource.attributes),
        },
        default=str,
    )


async def test_spanners_error_text_quoting_a_masked_value_is_in_no_span(
    settings: Settings, idp: IdpProcess, tmp_path: Path, token_for: Callable[..., str]
) -> None:
    """CAST('wile@acme.example' AS INT64) fails and Spanner's message quotes the masked value;
    the Spanner client records it as its span's status and an exception event. Every exported
    span, through the real wiring (``Tracing.add_processor``), is free of it."""
    text = EXAMPLE_POLICY.read_text()
    text = text.replace("\nroutes:\n", CAST_QUERY + "\nroutes:\n", 1)
    text = text.replace("\nbudgets:", CAST_ROUTE.rstrip() + "\n\nbudgets:", 1)
    policy = tmp_path / "policy.yaml"
    policy.write_text(text)
    exporter = InMemorySpanExporter()
    tracing = Tracing(TracerProvider())
    tracing.add_processor(SimpleSpanProcessor(exporter))
    app = build_gateway(
        settings.model_copy(update={"policy": policy, "audit_path": tmp_path / "audit.jsonl"}),
        env={"OKTA_ISSUER": idp.issuer},
        tracing=tracing,
    )
    await app.startup()
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw.test") as http:
            answer = await http.get(
                "/v1/customers/C-1/cast",
                headers={"Authorization": f"Bearer {token_for('support-console')}"},
            )
    finally:
        await app.shutdown()
    assert answer.status_code == 400 and answer.json()["code"] == "statement-rejected"
    spans = exporter.get_finished_spans()
    failed = [
        s for s in spans
        if s.instrumentation_scope is not None and s.instrumentation_scope.name == SPANNER_SCOPE
        and s.status.status_code == StatusCode.ERROR
    ]  # fmt: skip
    assert failed, [s.name for s in spans]  # the error did pass through the client's spans
    for span in spans:
        assert "wile@acme.example" not in span_text(span), span.name
        assert "Bad int64" not in span_text(span), span.name


async def test_a_unique_violation_quoting_the_key_is_in_no_span(
    settings: Settings, idp: IdpProcess, tmp_path: Path, token_for: Callable[..., str]
) -> None:
    """A write whose key exists fails with ALREADY_EXISTS, and Spanner's message quotes the key;
    the Spanner client records it as its span's status and an exception event. No exported span,
    through the real wiring (``Tracing.add_processor``), has it anywhere."""
    exporter = InMemorySpanExporter()
    tracing = Tracing(TracerProvider())
    tracing.add_processor(SimpleSpanProcessor(exporter))
    app = build_gateway(
        settings.model_copy(update={"audit_path": tmp_path / "audit.jsonl"}),
        env={"OKTA_ISSUER": idp.issuer},
        tracing=tracing,
    )
    order_id = f"O-{secrets.randbelow(10**12):012d}"
    body = {"order_id": order_id, "customer_id": "C-1", "total_cents": 5}
    headers = {"Authorization": f"Bearer {token_for('order-writer')}"}
    await app.startup()
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw.test") as http:
            first = await http.post("/v1/orders", json=body, headers=headers)
            again = await http.post("/v1/orders", json=body, headers=headers)
    finally:
        await app.shutdown()
    assert first.status_code == 200, first.text
    assert again.status_code == 409 and again.json()["code"] == "conflict", again.text
    spans = exporter.get_finished_spans()
    failed = [
        s for s in spans
        if s.instrumentation_scope is not None and s.instrumentation_scope.name == SPANNER_SCOPE
        and s.status.status_code == StatusCode.ERROR
    ]  # fmt: skip
    assert failed, [s.name for s in spans]  # the error did pass through the client's spans
    for span in spans:
        assert order_id not in span_text(span), span.name
        assert not [e for e in span.events if e.name == "exception"], span.name
        assert span.instrumentation_scope is not None
        if span.instrumentation_scope.name != "spangate":
            assert not span.status.description, span.name


@contextlib.asynccontextmanager
async def gateway_with(
    settings: Settings,
    idp: IdpProcess,
    tmp_path: Path,
    policy_text: str | None = None,
    tracing_env: dict[str, str] | None = None,
    **updates: Any,
) -> AsyncIterator[tuple[Gateway, InMemorySpanExporter, Path]]:
    """A traced gateway of its own (a policy of its own, the OTEL_* variables of
    ``tracing_env``, settings changed): the app, its spans, its audit file."""
    tracing, exporter = in_memory(tracing_env)
    audit = tmp_path / "audit.jsonl"
    if policy_text is not None:
        updates["policy"] = tmp_path / "policy.yaml"
        updates["policy"].write_text(policy_text)
    app = build_gateway(
        settings.model_copy(update={"audit_path": audit, **updates}),
        env={"OKTA_ISSUER": idp.issuer},
        tracing=tracing,
    )
    await app.startup()
    try:
        yield app, exporter, audit
    finally:
        await app.shutdown()


def access_lines(caplog: pytest.LogCaptureFixture) -> dict[str, logging.LogRecord]:
    """The request lines logged, by request id."""
    return {
        getattr(r, REQUEST_EXTRA)["request_id"]: r
        for r in caplog.records
        if r.name == "spangate.access"
    }


async def test_a_redacted_path_parameter_is_in_no_span_log_line_or_audit_path(
    settings: Settings,
    idp: IdpProcess,
    tmp_path: Path,
    token_for: Callable[..., str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``order_id`` redacted: the request span's url.path and the log line show the segment as
    ``{order_id}``, the audit event's path holds its keyed hash; allowed, refused before routing
    (401) or refused for its method (405) alike."""
    text = EXAMPLE_POLICY.read_text()
    assert "redact: [total_cents]" in text
    text = text.replace("redact: [total_cents]", "redact: [total_cents, order_id]")
    caplog.set_level(logging.INFO, "spangate.access")
    support = {"Authorization": f"Bearer {token_for('support-console')}"}
    async with gateway_with(settings, idp, tmp_path, text) as (app, exporter, audit), client_of(
        app, "203.0.113.9"
    ) as http:
        answers = {
            "O-1001": await http.get("/v1/orders/O-1001", headers=support),
            "O-1002": await http.get("/v1/orders/O-1002"),
            "O-1003": await http.delete("/v1/orders/O-1003", headers=support),
        }
    assert [a.status_code for a in answers.values()] == [200, 401, 405]
    lines = access_lines(caplog)
    for value, answer in answers.items():
        rid = answer.headers["x-request-id"]
        event = event_of(audit, rid)
        (server,) = [
            s for s in exporter.get_finished_spans()
            if s.kind == SpanKind.SERVER and f"{s.context.trace_id:032x}" == event["trace"]
        ]  # fmt: skip
        assert server.attributes is not None
        assert server.attributes["url.path"] == "/v1/orders/{order_id}"
        assert value not in span_text(server)
        fields = getattr(lines[rid], REQUEST_EXTRA)
        assert fields["path"] == "/v1/orders/{order_id}"
        assert value not in json.dumps(fields)
        url = event["httpRequest"]["requestUrl"]
        assert url.startswith("/v1/orders/redacted:hmac-sha256:"), url
        assert value not in json.dumps(event)
    bound = event_of(audit, answers["O-1001"].headers["x-request-id"])
    assert bound["httpRequest"]["requestUrl"] == (
        "/v1/orders/" + bound["protoPayload"]["request"]["params"]["order_id"]["value"]
    )


async def test_a_failed_mcp_tool_call_is_an_error_in_its_span_and_log_line(
    settings: Settings,
    idp: IdpProcess,
    tmp_path: Path,
    token_for: Callable[..., str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A tools/call is answered HTTP 200 however it ends: its span and log line take their
    error and severity from the call (503: the budget store is down; 403: refused), while
    ``status`` and ``http.response.status_code`` say 200."""
    caplog.set_level(logging.INFO, "spangate.access")
    nobody = SecretStr(f"redis://127.0.0.1:{free_port()}/0")
    down = {"redis_url": nobody, "redis_timeout_seconds": 0.5}
    call = {
        "jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "get_order", "arguments": {"order_id": "O-1001"}},
    }  # fmt: skip
    async with gateway_with(settings, idp, tmp_path, **down) as (app, exporter, audit), client_of(
        app, "203.0.113.9"
    ) as http:
        failed = await http.post(
            "/mcp", json=call,
            headers={**MCP_HEADERS, "Authorization": f"Bearer {token_for('order-agent')}"},
        )  # fmt: skip
        refused = await http.post(
            "/mcp", json=call,
            headers={**MCP_HEADERS, "Authorization": f"Bearer {token_for('outsider')}"},
        )  # fmt: skip
    lines = access_lines(caplog)
    expected = [
        (failed, "budget-store-unavailable", logging.ERROR, StatusCode.ERROR),
        (refused, "no-allow-role", logging.WARNING, StatusCode.UNSET),
    ]
    for answer, code, level, span_status in expected:
        assert answer.status_code == 200, answer.text
        result = answer.json()["result"]
        assert result["isError"] and result["structuredContent"]["code"] == code
        rid = answer.headers["x-request-id"]
        line = lines[rid]
        assert line.levelno == level
        assert getattr(line, REQUEST_EXTRA)["status"] == 200
        assert getattr(line, REQUEST_EXTRA)["code"] == code
        event = event_of(audit, rid)
        (server,) = [
            s for s in exporter.get_finished_spans()
            if s.kind == SpanKind.SERVER and f"{s.context.trace_id:032x}" == event["trace"]
        ]  # fmt: skip
        assert server.attributes is not None
        assert server.attributes["http.response.status_code"] == 200
        assert server.status.status_code == span_status
        assert server.attributes.get("error.type") == (
            code if span_status == StatusCode.ERROR else None
        )



def test_the_request_span_made_current_again_records_no_exception() -> None:
    """``Tracing.resume`` (around an MCP tool call) lets an exception through untouched: no
    exception event, no status with its text on the request span."""
    exporter = InMemorySpanExporter()
    tracing = Tracing(TracerProvider())
    tracing.add_processor(SimpleSpanProcessor(exporter))
    span = tracing.tracer.start_span("request")
    scope: dict[str, Any] = {"state": {SPAN: span}}
    with pytest.raises(ValueError, match="wile"):
        with Tracing.resume(scope):
            raise ValueError("wile@acme.example")
    span.end()
    (done,) = exporter.get_finished_spans()
    assert list(done.events) == []
    assert done.status.status_code == StatusCode.UNSET and not done.status.description


def test_an_untrusted_callers_sampling_ignores_whatever_span_is_current() -> None:
    """CallerSampler decides an untrusted caller's span as a root: not as the child of a span
    that happens to be current where the request starts."""
    from opentelemetry.sdk.trace.sampling import Decision

    from gateway.tracing_setup import sampler_from_env

    tracing, _ = in_memory()
    sampler = sampler_from_env({"OTEL_TRACES_SAMPLER": "parentbased_always_off"})
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    headers = [(b"traceparent", f"00-{trace_id}-{span_id}-01".encode())]
    untrusted = parent_context(headers, trusted=False)
    with tracing.tracer.start_as_current_span("something current", context=Context()):
        decided = sampler.should_sample(untrusted, int(trace_id, 16), "GET")
    assert decided.decision == Decision.DROP
    trusted = sampler.should_sample(parent_context(headers), int(trace_id, 16), "GET")
    assert trusted.decision == Decision.RECORD_AND_SAMPLE
