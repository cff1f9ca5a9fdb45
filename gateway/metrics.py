"""Prometheus text exposition of the gateway's counters, collected at scrape time.

Counting on the request path is one dict increment; everything else (key state, audit counters,
reloads) is read from the components when ``/metrics`` is scraped.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.app import Gateway

__all__ = ["RequestMetrics", "render_metrics", "serving_ready"]

# Latency buckets in seconds (Prometheus histogram, cumulative).
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class RequestMetrics:
    """Per (route template, status, code) request counts and one latency histogram."""

    def __init__(self) -> None:
        self.requests: Counter[tuple[str, int, str]] = Counter()
        self.buckets = [0] * (len(BUCKETS) + 1)
        self.latency_sum = 0.0

    def observe(self, route: str | None, status: int, code: str, seconds: float) -> None:
        self.requests[(route or "", status, code)] += 1
        self.latency_sum += seconds
        for i, bound in enumerate(BUCKETS):
            if seconds <= bound:
                self.buckets[i] += 1
                return
        self.buckets[-1] += 1


def serving_ready(gateway: Gateway) -> bool:
    """What ``/readyz`` answers 200 for: every identity warmed and every issuer able to verify.

    Not the budget store: Redis is shared by every replica, so while it does not answer all of
    them would go unready at once, the Service would lose every endpoint, and unbudgeted routes
    would die with the budgeted ones (clients would get connection errors instead of 503
    budget-store-unavailable with Retry-After). ``/readyz`` reports it instead."""
    return gateway.ready and all(c.state().ready for c in gateway.verifier.caches.values())


def _label(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render_metrics(gateway: Gateway) -> str:
    m = gateway.metrics
    out = [
        "# HELP spangate_requests_total Policy-route requests by route template, status and code.",
        "# TYPE spangate_requests_total counter",
    ]
    for (route, status, code), count in sorted(m.requests.items()):
        labels = f'route="{_label(route)}",status="{status}",code="{_label(code)}"'
        out.append(f"spangate_requests_total{{{labels}}} {count}")
    out += [
        "# HELP spangate_request_duration_seconds Time from request to response on policy routes.",
        "# TYPE spangate_request_duration_seconds histogram",
    ]
    cumulative = 0
    for bound, count in zip((*BUCKETS, float("inf")), m.buckets, strict=True):
        cumulative += count
        le = "+Inf" if bound == float("inf") else repr(bound)
        out.append(f'spangate_request_duration_seconds_bucket{{le="{le}"}} {cumulative}')
    out.append(f"spangate_request_duration_seconds_sum {m.latency_sum}")
    out.append(f"spangate_request_duration_seconds_count {cumulative}")

    out += [
        "# HELP spangate_budget_refusals_total Calls refused (429 budget-exceeded) per role and "
        "budget (calls, rows, writes).",
        "# TYPE spangate_budget_refusals_total counter",
    ]
    for (role, budget), count in sorted(gateway.budgets.refusals.items()):
        labels = f'role="{_label(role)}",budget="{_label(budget)}"'
        out.append(f"spangate_budget_refusals_total{{{labels}}} {count}")
    out += [
        "# HELP spangate_jwks_fetches_total JWKS fetches per issuer.",
        "# TYPE spangate_jwks_fetches_total counter",
    ]
    for name, cache in sorted(gateway.verifier.caches.items()):
        out.append(f'spangate_jwks_fetches_total{{issuer="{_label(name)}"}} {cache.fetches}')
    out += [
        "# HELP spangate_jwks_keys_ready Whether the issuer has usable signing keys.",
        "# TYPE spangate_jwks_keys_ready gauge",
    ]
    for name, cache in sorted(gateway.verifier.caches.items()):
        out.append(
            f'spangate_jwks_keys_ready{{issuer="{_label(name)}"}} {int(cache.state().ready)}'
        )

    introspectors = sorted(gateway.verifier.introspectors.items())
    out += [
        "# HELP spangate_introspection_calls_total Introspection calls to the IdP per issuer, "
        "by result (active, inactive, throttled: a 429, error).",
        "# TYPE spangate_introspection_calls_total counter",
    ]
    for name, introspector in introspectors:
        for result, count in sorted(introspector.results.items()):
            labels = f'issuer="{_label(name)}",result="{_label(result)}"'
            out.append(f"spangate_introspection_calls_total{{{labels}}} {count}")
    out += [
        "# HELP spangate_introspection_refused_total Tokens refused without calling the IdP per "
        'issuer, by reason (format, rate, concurrency, backoff); issuer "": opaque tokens that '
        "fit no introspecting issuer's format.",
        "# TYPE spangate_introspection_refused_total counter",
    ]
    if introspectors:  # issuer "": opaque tokens that fit no introspecting issuer's format
        count = gateway.verifier.refusals["format"]
        out.append(f'spangate_introspection_refused_total{{issuer="",reason="format"}} {count}')
    for name, introspector in introspectors:
        for reason, count in sorted(introspector.refused.items()):
            labels = f'issuer="{_label(name)}",reason="{_label(reason)}"'
            out.append(f"spangate_introspection_refused_total{{{labels}}} {count}")
    out += [
        "# HELP spangate_introspection_cache_hits_total Introspection answers served from the "
        "cache per issuer.",
        "# TYPE spangate_introspection_cache_hits_total counter",
    ]
    for name, introspector in introspectors:
        hits = introspector.cache_hits
        out.append(f'spangate_introspection_cache_hits_total{{issuer="{_label(name)}"}} {hits}')

    series = (
        ("events_written_total", "counter", "Audit events written, per sink.", "events_written"),
        (
            "batches_total",
            "counter",
            "Audit flushes (writes, fsyncs or commits), per sink.",
            "batches",
        ),
        ("write_failures_total", "counter", "Audit batches that could not be written.", "failures"),
        ("queue_depth", "gauge", "Audit events waiting for their flush, per sink.", "queue_depth"),
        ("flush_seconds_total", "counter", "Time spent flushing, per sink.", "flush_seconds_total"),
        ("flush_seconds_max", "gauge", "The slowest flush so far, per sink.", "flush_seconds_max"),
    )
    sinks = gateway.audit.metrics().sinks
    for name, kind, text, attribute in series:
        out += [f"# HELP spangate_audit_{name} {text}", f"# TYPE spangate_audit_{name} {kind}"]
        for stats in sinks:
            value = getattr(stats, attribute)
            out.append(f'spangate_audit_{name}{{sink="{_label(stats.sink)}"}} {value}')
    reloader = gateway.reloader
    if reloader is not None:
        out += [
            "# HELP spangate_policy_reloads_total Policy reloads by result.",
            "# TYPE spangate_policy_reloads_total counter",
            f'spangate_policy_reloads_total{{result="ok"}} {reloader.reloads}',
            f'spangate_policy_reloads_total{{result="refused"}} {reloader.failures}',
        ]
    out += [
        "# HELP spangate_policy_info The policy being served.",
        "# TYPE spangate_policy_info gauge",
        f'spangate_policy_info{{sha256="{gateway.policy.sha256}"}} 1',
        "# HELP spangate_writes_settling Writes answered before they ended, still settling.",
        "# TYPE spangate_writes_settling gauge",
        f"spangate_writes_settling {gateway.executor.settling}",
        "# HELP spangate_ready Whether /readyz says ready.",
        "# TYPE spangate_ready gauge",
        f"spangate_ready {int(serving_ready(gateway))}",
    ]
    return "\n".join(out) + "\n"
