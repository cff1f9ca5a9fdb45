"""Other libraries' spans lose Spanner's error text before an exporter sees them (the real SDK:
a provider, tracers named as the libraries name theirs, an in-memory exporter)."""

from __future__ import annotations

import json

import pytest
from google.api_core import exceptions as gexc
from google.cloud.spanner_v1 import _opentelemetry_tracing as spanner_tracing
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status, StatusCode

from gateway.scrubbing import scrubbed
from gateway.tracing import TRACER_NAME, Tracing

SPANNER_SCOPE = "cloud.google.com/python/spanner"
CLEAR = "wile@acme.example"


def everything(span: ReadableSpan) -> str:
    """All a span carries that an exporter sends, as text."""
    return json.dumps(
        {
            "name": span.name,
            "attributes": dict(span.attributes or {}),
            "events": [(e.name, dict(e.attributes or {})) for e in span.events],
            "status": [span.status.status_code.name, span.status.description],
            "links": [dict(link.attributes or {}) for link in span.links],
        }
    )


@pytest.fixture
def exported() -> tuple[Tracing, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracing = Tracing(TracerProvider())
    tracing.add_processor(SimpleSpanProcessor(exporter))
    return tracing, exporter


def test_the_spanner_scope_is_the_librarys() -> None:
    assert spanner_tracing.TRACER_NAME == SPANNER_SCOPE


def test_a_spanner_span_loses_its_error_text_and_keeps_its_code(
    exported: tuple[Tracing, InMemorySpanExporter],
) -> None:
    tracing, exporter = exported
    tracer = tracing.provider.get_tracer(SPANNER_SCOPE)
    with pytest.raises(gexc.InvalidArgument):
        with tracer.start_as_current_span("CloudSpanner.Snapshot.execute_sql") as span:
            span.set_attribute("db.statement", "SELECT CAST(Email AS INT64) AS n FROM Customers")
            span.add_event("Acquiring session", {"id": "s-1"})
            span.add_event("Transaction was aborted in user operation, retrying",
                           {"delay_seconds": 0.1, "cause": f"Aborted: {CLEAR}"})  # fmt: skip
            span.set_status(Status(StatusCode.ERROR, f"400 Bad int64 value: {CLEAR}"))
            raise gexc.InvalidArgument(f"Bad int64 value: {CLEAR}")
    (span,) = exporter.get_finished_spans()
    assert CLEAR not in everything(span)
    assert span.status.status_code == StatusCode.ERROR and span.status.description is None
    assert [(e.name, dict(e.attributes or {})) for e in span.events] == [
        ("Acquiring session", {"id": "s-1"}),
        ("Transaction was aborted in user operation, retrying", {"delay_seconds": 0.1}),
    ]
    assert dict(span.attributes or {}) == {
        "db.statement": "SELECT CAST(Email AS INT64) AS n FROM Customers"
    }
    assert span.instrumentation_scope is not None
    assert span.instrumentation_scope.name == SPANNER_SCOPE
    assert span.context is not None and span.end_time is not None


def test_any_other_librarys_span_is_scrubbed_the_gateways_own_is_not(
    exported: tuple[Tracing, InMemorySpanExporter],
) -> None:
    tracing, exporter = exported
    for scope in ("google.api_core", "some.other.library"):
        with pytest.raises(ValueError):
            with tracing.provider.get_tracer(scope).start_as_current_span("call"):
                raise ValueError(CLEAR)
    with tracing.provider.get_tracer(TRACER_NAME).start_as_current_span("spangate.step") as own:
        own.set_status(Status(StatusCode.ERROR, "statement-rejected"))
        own.add_event("note", {"cause": "kept"})
    first, second, mine = exporter.get_finished_spans()
    assert CLEAR not in everything(first) + everything(second)
    assert first.status.status_code == StatusCode.ERROR  # the SDK's own status, text dropped
    assert mine.status.description == "statement-rejected"
    assert [dict(e.attributes or {}) for e in mine.events] == [{"cause": "kept"}]


def test_a_span_with_nothing_to_drop_is_passed_as_it_is(
    exported: tuple[Tracing, InMemorySpanExporter],
) -> None:
    tracing, exporter = exported
    with tracing.provider.get_tracer(SPANNER_SCOPE).start_as_current_span("GetSession") as span:
        span.add_event("Creating Session")
    (done,) = exporter.get_finished_spans()
    assert [e.name for e in done.events] == ["Creating Session"]
    assert scrubbed(done, TRACER_NAME) is done  # nothing to drop: no copy
