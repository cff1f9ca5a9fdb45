"""What traces and the request log line cost the gateway per request, I/O aside.

The real ``Gateway`` ASGI app on the example policy is called directly (no server, no sockets)
for ``GET /v1/orders/O-1001``, one request at a time, with its outside world stubbed so that only
the gateway's own work is timed: the token verifier answers a fixed principal, the executor a
fixed row, the audit trail takes each (real, fully built) event and returns. Rounds of each
configuration alternate, so all see the same machine:

- baseline: traces off (``OTEL_*`` unset: ``Gateway.tracing`` is None) and the request's log
  line below the log level (no line);
- the default: traces off, the JSON request line through the writer thread (to /dev/null);
- traces on: an SDK provider, every span sampled, a batch processor to an exporter that drops
  them (the SDK's cost, not a collector's), and the log line;
- traces on, the caller's traceparent not sampled (spans are non-recording), and the log line.

The note gives the difference to the row above in microseconds per request. With traces off the
request path only tests ``self.tracing is None`` (five times) and calls two small methods, which
``bench_observability`` cannot tell from noise: compare the first two rows' difference with
the log line's cost.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.table import Row, Table

__all__ = ["run"]

REPO = Path(__file__).resolve().parent.parent


class _Verifier:
    caches: dict[str, Any] = {}  # noqa: RUF012 - the verifier's shape, read-only here
    introspectors: dict[str, Any] = {}  # noqa: RUF012

    def __init__(self, principal: Any) -> None:
        self._principal = principal

    async def verify(self, token: str) -> Any:
        return self._principal


@dataclass
class _Target:
    project: str = "demo-project"
    instance: str = "demo"
    database: str = "shop"


class _Databases:
    target = _Target()


class _Executor:
    databases = _Databases()
    on_statement: Any = None  # the gateway sets its statement-latency metric here

    async def run(self, query: Any, values: Any, **options: Any) -> Any:
        from gateway.spanner.results import Result

        return Result(
            columns=["OrderId", "Status", "TotalCents"],
            rows=[{"OrderId": "O-1001", "Status": "PAID", "TotalCents": 7499}],
            row_count=1,
        )


class _Trail:
    """The audit trail's shape: takes the (fully built) event and returns at once."""

    writers: Sequence[Any] = ()
    max_event_bytes = 16384
    available = True

    def expect_from(self, count: Any) -> None:
        pass

    async def record(self, event: dict[str, Any], **options: Any) -> None:
        pass


class _DropExporter:
    def export(self, spans: Any) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def _app(tracing: Any) -> Any:
    from gateway.app import create_app
    from gateway.policy.simulate import principal_for
    from gateway.runtime import load_compiled
    from gateway.settings import Settings

    policy = load_compiled(REPO / "policy.example.yaml", {"OKTA_ISSUER": "https://idp.example/o"})
    principal = principal_for(
        policy.model, {"iss": "okta", "sub": "support-console", "groups": ["support"], "tenant": "t1"}
    )
    settings = Settings(policy=REPO / "policy.example.yaml")
    return create_app(
        settings,
        policy,
        verifier=_Verifier(principal),  # type: ignore[arg-type]
        executor=_Executor(),  # type: ignore[arg-type]
        audit=_Trail(),  # type: ignore[arg-type]
        audit_key=b"k" * 32,
        tracing=tracing,
    )


def _scope(sampled: bool | None) -> dict[str, Any]:
    headers = [
        (b"host", b"127.0.0.1:8080"),
        (b"authorization", b"Bearer a.b.c"),
        (b"user-agent", b"bench/1"),
    ]
    if sampled is not None:
        flags = b"01" if sampled else b"00"
        headers.append((b"traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-" + flags))
    return {
        "type": "http",
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/v1/orders/O-1001",
        "raw_path": b"/v1/orders/O-1001",
        "query_string": b"",
        "headers": headers,
        "client": ("203.0.113.7", 50000),
        "server": ("127.0.0.1", 8080),
    }


async def _receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _round(app: Any, scope: dict[str, Any], n: int) -> list[float]:
    statuses: list[int] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    latencies = []
    for _ in range(n):
        request = dict(scope)
        started = time.perf_counter()
        await app(request, _receive, send)
        latencies.append(time.perf_counter() - started)
    assert set(statuses) == {200}, statuses[:3]
    return latencies


async def _compare(quick: bool) -> Table:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from gateway import logs
    from gateway.tracing import Tracing

    provider = TracerProvider()
    tracing = Tracing(provider)
    tracing.add_processor(BatchSpanProcessor(_DropExporter()))  # type: ignore[arg-type]
    off, on = _app(None), _app(tracing)  # the processor as served: behind the scrubbing one
    sink = open(os.devnull, "w")  # closed below
    access = logging.getLogger(logs.ACCESS_LOGGER)
    configs = [
        ("traces off, no log line", off, None, False),
        ("traces off, JSON log line (default)", off, None, True),
        ("traces on (all sampled), log line", on, True, True),
        ("traces on, caller not sampled, log line", on, False, True),
    ]
    per = 300 if quick else 2000
    rounds = 2 if quick else 5
    samples: dict[str, list[float]] = {name: [] for name, *_ in configs}
    logs.configure_logging("json", "info", stream=sink)
    try:
        for _, app, sampled, line in configs:  # warm up each path once
            access.disabled = not line
            await _round(app, _scope(sampled), 50)
        for _ in range(rounds):
            for name, app, sampled, line in configs:
                access.disabled = not line
                samples[name] += await _round(app, _scope(sampled), per)
    finally:
        access.disabled = False
        logs.configure_logging("json", "info", stream=io.StringIO())
        logs._stop()
        provider.shutdown()
        sink.close()
    table = Table(
        f"The gateway's own cost per request (GET /v1/orders/O-1001, stubbed I/O), {rounds}x{per}"
    )
    previous: float | None = None
    for name, *_ in configs:
        latencies = samples[name]
        mean = statistics.fmean(latencies)
        note = f"{mean * 1e6:.1f} us mean"
        if previous is not None:
            note += f", {(mean - previous) * 1e6:+.1f} us vs the row above"
        table.add(Row.from_latencies(name, latencies, sum(latencies), note))
        previous = mean
    return table


def run(quick: bool) -> Table:
    return asyncio.run(_compare(quick))


if __name__ == "__main__":
    print(run(quick=True).render())
