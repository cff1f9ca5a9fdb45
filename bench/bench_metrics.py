"""What the metrics cost on the request path: the updates one policy-route call makes.

A call counts itself by (route template, status, code), observes its latency, and its statement
observes its own (by query name). Rows, per call:

- the hand-written counters ``/metrics`` used before ``prometheus_client`` (kept here as the
  baseline: a ``Counter`` increment and a bucket loop; no statement latency then);
- ``GatewayMetrics`` in one process (``prometheus_client``'s mutex-protected values);
- ``GatewayMetrics`` in multi-process mode (``spangate serve --workers N``: every value a
  memory-mapped file), measured in a child process started with ``PROMETHEUS_MULTIPROC_DIR``.

The note gives nanoseconds per call. A mix of 12 label sets and latencies spread over the buckets.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from typing import Any

from bench.table import Row, Table

__all__ = ["run"]

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_ROUTES = ("/v1/orders/{order_id}", "/v1/orders", "/v1/customers/{customer_id}", None)
_OUTCOMES = ((200, "ok"), (403, "no-allow-role"), (401, "token-expired"))
_QUERIES = ("get_order", "list_orders", "create_order")


class HandWritten:
    """The request counters of the hand-written exposition (before prometheus_client)."""

    def __init__(self) -> None:
        self.requests: Counter[tuple[str, int, str]] = Counter()
        self.buckets = [0] * (len(_BUCKETS) + 1)
        self.latency_sum = 0.0

    def observe(self, route: str | None, status: int, code: str, seconds: float) -> None:
        self.requests[(route or "", status, code)] += 1
        self.latency_sum += seconds
        for i, bound in enumerate(_BUCKETS):
            if seconds <= bound:
                self.buckets[i] += 1
                return
        self.buckets[-1] += 1

    def observe_statement(self, query: str, seconds: float) -> None:
        """Not measured before (no such series)."""


def _calls(n: int) -> list[tuple[str | None, int, str, str, float]]:
    out = []
    for i in range(n):
        status, code = _OUTCOMES[i % len(_OUTCOMES)]
        latency = _BUCKETS[i % len(_BUCKETS)] * 0.9
        out.append((_ROUTES[i % len(_ROUTES)], status, code, _QUERIES[i % len(_QUERIES)], latency))
    return out


def measure(metrics: Any, n: int) -> float:
    """Seconds for ``n`` calls' updates (best of three)."""
    calls = _calls(1000)
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for i in range(n):
            route, status, code, query, latency = calls[i % 1000]
            metrics.observe(route, status, code, latency)
            if status == 200:
                metrics.observe_statement(query, latency / 2)
        best = min(best, time.perf_counter() - started)
    return best


def _multiprocess(n: int) -> float:
    with tempfile.TemporaryDirectory(prefix="bench-metrics-") as folder:
        code = (
            "import json, sys\n"
            "from bench.bench_metrics import measure\n"
            "from gateway.metrics import GatewayMetrics\n"
            "m = GatewayMetrics()\n"
            "assert m.multiprocess\n"
            f"print(json.dumps(measure(m, {n})))\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": folder},
            capture_output=True,
            text=True,
            check=True,
        )
        seconds: float = json.loads(out.stdout)
        return seconds


def run(quick: bool) -> Table:
    from gateway.metrics import GatewayMetrics

    n = 20_000 if quick else 200_000
    table = Table("Metrics on the request path: one call's updates (count, latency, statement)")
    for name, seconds in (
        ("hand-written counters (before)", measure(HandWritten(), n)),
        ("prometheus_client, one process", measure(GatewayMetrics(), n)),
        ("prometheus_client, multi-process", _multiprocess(n)),
    ):
        table.add(Row(name, n / seconds, note=f"{seconds / n * 1e9:,.0f} ns per call"))
    return table
