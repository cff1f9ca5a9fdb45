"""``/metrics`` through ``prometheus_client``, correct with one process or several workers.

Two kinds of series:

- counted where they happen, on the request path: requests by route template, status and code,
  request latency, and each Spanner statement's latency by query name (``observe``,
  ``observe_statement``: a dict lookup and an increment or two; label children are cached, so
  ``labels()`` runs once per label set);
- published from the components' own counters (key caches, introspection, budgets, audit sinks,
  reloads, readiness): ``publish`` copies them into the registry just before a scrape, and, when
  several workers serve (``spangate serve --workers N``), every ``PUBLISH_SECONDS`` in every
  worker and once more as a worker stops. A counter is fed what its component's count grew by
  since the last publish (all of it when the component is new, e.g. a key cache a reload
  replaced), so the series only ever goes up.

Label values are bounded: route templates, query names, roles, issuers and sinks come from the
policy and the settings, codes from the gateway's fixed set; a raw path is never a label.

Multi-process mode is prometheus_client's own: ``PROMETHEUS_MULTIPROC_DIR`` (set by
``gateway.workers`` to a private directory before any worker imports this module) makes every
value a per-process memory-mapped file, and the worker that answers a scrape merges the files of
all of them (``MultiProcessCollector``). Counters and histograms are summed over every process
that ever ran (a restarted worker's counts are kept); each gauge says how it merges (``GAUGE_MODES``,
with why). A dead worker's live gauges are dropped by the supervisor (``mark_process_dead``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
from collections.abc import Callable, Iterable, Iterator
from importlib import metadata
from typing import TYPE_CHECKING, Any, Literal

from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client import values as _values
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from gateway import __version__
from gateway.logs import dropped_lines
from gateway.refusals import CODES, REFUSALS

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from gateway.app import Gateway

__all__ = [
    "CONTENT_TYPE",
    "GAUGE_MODES",
    "PUBLISH_SECONDS",
    "REQUEST_BUCKETS",
    "STATEMENT_BUCKETS",
    "GatewayMetrics",
    "multiprocess_dir",
    "serving_ready",
]

# The text exposition format 0.0.4 (what every Prometheus scrapes).
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4

# Request latency buckets in seconds (the whole call: token, decision, statement, audit).
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Statement latency buckets: a Spanner point read is a few milliseconds, a write with its commit
# tens; the top buckets catch queries near their `timeout:` (a write's retries included).
STATEMENT_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip

# How often each worker publishes its components' counters when several workers serve (the one
# that answers a scrape publishes its own at once): the other workers' counts lag by at most this.
PUBLISH_SECONDS = 1.0

_Mode = Literal["livemin", "livemax", "livesum", "max"]

# How each gauge merges across workers (prometheus_client's multiprocess_mode), and why.
GAUGE_MODES: dict[str, _Mode] = {
    # every live worker must be ready for the process group to be: the least of them
    "spangate_ready": "livemin",
    # an issuer is ready when every live worker can verify its tokens
    "spangate_jwks_keys_ready": "livemin",
    # 1 for each policy some live worker serves (two during a reload that is reaching them all)
    "spangate_policy_info": "livemax",
    # writes still settling and events waiting: each worker has its own, the total is the sum
    "spangate_writes_settling": "livesum",
    "spangate_audit_queue_depth": "livesum",
    # the slowest flush and sync so far, of any worker, past or present
    "spangate_audit_flush_seconds_max": "max",
    "spangate_audit_sync_seconds_max": "max",
    # each worker writes its own file: bytes unsynced add up, the oldest of them is the oldest
    "spangate_audit_unsynced_bytes": "livesum",
    "spangate_audit_unsynced_seconds": "livemax",
    # the same constant 1 in every worker
    "spangate_build_info": "max",
}

# Every worker's own series: _created gauges would double the series for nothing.
disable_created_metrics()  # type: ignore[no-untyped-call]


def multiprocess_dir() -> str | None:
    """The directory of prometheus_client's multi-process files, when this process uses them."""
    if getattr(_values.ValueClass, "_multiprocess", False):
        return os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    return None


def serving_ready(gateway: Gateway) -> bool:
    """What ``/readyz`` answers 200 for: not draining, every identity warmed, every issuer able
    to verify, and no audit sink's sync stalled past its deadline (every call would be refused
    until the disk answers).

    Not the budget store: Redis is shared by every replica, so while it does not answer all of
    them would go unready at once, the Service would lose every endpoint, and unbudgeted routes
    would die with the budgeted ones (clients would get connection errors instead of 503
    budget-store-unavailable with Retry-After). ``/readyz`` reports it instead."""
    return (
        gateway.ready
        and not gateway.draining
        and all(c.state().ready for c in gateway.verifier.caches.values())
        and not any(w.sync_stalled for w in gateway.audit.writers)
    )


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return ""


class _Published:
    """A counter fed from a component's own monotonic count (see the module docstring)."""

    def __init__(self, counter: Counter) -> None:
        self.counter = counter
        self._seen: dict[tuple[str, ...], tuple[object, float]] = {}

    def publish(self, labels: tuple[str, ...], source: object, value: float) -> None:
        last = self._seen.get(labels)
        if last is None or last[0] is not source:
            grown = value  # a component the last publish did not see: all its count is new
        else:
            grown = value - last[1]
        self._seen[labels] = (source, value)
        # the series exists, at 0 when nothing happened
        child = self.counter.labels(*labels) if labels else self.counter
        if grown > 0:
            child.inc(grown)


class _Filtered(Collector):
    """The merged multi-process series, less gauges that describe nothing any more: a policy no
    live worker serves (0) and issuers the answering worker's policy no longer names."""

    def __init__(self, merged: Collector, issuers: Callable[[], Iterable[str]]) -> None:
        self._merged = merged
        self._issuers = issuers

    def collect(self) -> Iterator[Metric]:
        issuers = set(self._issuers())
        for family in self._merged.collect():
            if family.name == "spangate_policy_info":
                family.samples = [s for s in family.samples if s.value]
            elif family.name == "spangate_jwks_keys_ready":
                family.samples = [s for s in family.samples if s.labels["issuer"] in issuers]
            yield family


class GatewayMetrics:
    """The gateway's series in a registry of its own (each Gateway its own, so tests may build
    several in one process); with several workers, the exposition merges every worker's files."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.multiprocess = multiprocess_dir()

        def gauge(name: str, text: str, labels: tuple[str, ...] = ()) -> Gauge:
            return Gauge(name, text, labels, registry=r, multiprocess_mode=GAUGE_MODES[name])

        # -- counted on the request path -----------------------------------------------------
        self._requests = Counter(
            "spangate_requests",
            "Policy-route requests by route template, status and code.",
            ("route", "status", "code"),
            registry=r,
        )
        self._latency = Histogram(
            "spangate_request_duration_seconds",
            "Time from request to response on policy routes.",
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self._statements = Histogram(
            "spangate_statement_duration_seconds",
            "Time each Spanner statement took, by the policy's query name (all attempts of a "
            "write, failures and timeouts included).",
            ("query",),
            buckets=STATEMENT_BUCKETS,
            registry=r,
        )
        self._shadow = Counter(
            "spangate_shadow_disagreements",
            "Calls the shadow policy decided otherwise than the live one, by route template and "
            "each policy's reason code.",
            ("route", "live", "shadow"),
            registry=r,
        )
        self._shadow_errors = Counter(
            "spangate_shadow_errors",
            "Shadow decisions that failed (a bug, logged with the request id); the call went on "
            "as the live policy decided.",
            registry=r,
        )
        self._worker_restarts = Counter(
            "spangate_worker_restarts",
            "Workers started in place of one that died, per worker number (--workers N).",
            ("worker",),
            registry=r,
        )
        self._request_children: dict[tuple[str | None, int, str], Any] = {}
        self._statement_children: dict[str, Any] = {}
        self._shadow_children: dict[tuple[str, str, str], Any] = {}

        # -- published from the components ---------------------------------------------------
        def counter(name: str, text: str, labels: tuple[str, ...]) -> _Published:
            return _Published(Counter(name, text, labels, registry=r))

        self._budget_refusals = counter(
            "spangate_budget_refusals",
            "Calls refused (429 budget-exceeded) per role and budget (calls, rows, writes).",
            ("role", "budget"),
        )
        self._jwks_fetches = counter(
            "spangate_jwks_fetches", "JWKS fetches per issuer.", ("issuer",)
        )
        self._jwks_ready = gauge(
            "spangate_jwks_keys_ready", "Whether the issuer has usable signing keys.", ("issuer",)
        )
        self._introspection_calls = counter(
            "spangate_introspection_calls",
            "Introspection calls to the IdP per issuer, by result (active, inactive, throttled: "
            "a 429, error).",
            ("issuer", "result"),
        )
        self._introspection_refused = counter(
            "spangate_introspection_refused",
            "Tokens refused without calling the IdP per issuer, by reason (format, rate, "
            'concurrency, backoff); issuer "": opaque tokens that fit no introspecting '
            "issuer's format.",
            ("issuer", "reason"),
        )
        self._introspection_hits = counter(
            "spangate_introspection_cache_hits",
            "Introspection answers served from the cache per issuer.",
            ("issuer",),
        )
        self._audit_written = counter(
            "spangate_audit_events_written", "Audit events written, per sink.", ("sink",)
        )
        self._audit_batches = counter(
            "spangate_audit_batches",
            "Audit flushes (writes, fsyncs or commits), per sink.",
            ("sink",),
        )
        self._audit_failures = counter(
            "spangate_audit_write_failures",
            "Audit batches that could not be written.",
            ("sink",),
        )
        self._audit_queue = gauge(
            "spangate_audit_queue_depth", "Audit events waiting for their flush, per sink.", ("sink",)
        )
        self._audit_flush_total = counter(
            "spangate_audit_flush_seconds", "Time spent flushing, per sink.", ("sink",)
        )
        self._audit_flush_max = gauge(
            "spangate_audit_flush_seconds_max", "The slowest flush so far, per sink.", ("sink",)
        )
        self._audit_syncs = counter(
            "spangate_audit_syncs", "fdatasyncs of a file sink (on its syncer thread).", ("sink",)
        )
        self._audit_sync_total = counter(
            "spangate_audit_sync_seconds", "Time spent in fdatasync, per sink.", ("sink",)
        )
        self._audit_sync_max = gauge(
            "spangate_audit_sync_seconds_max", "The slowest fdatasync so far, per sink.", ("sink",)
        )
        self._audit_unsynced_bytes = gauge(
            "spangate_audit_unsynced_bytes",
            "Bytes of audit events written to the OS and not yet fdatasync'd, per sink.",
            ("sink",),
        )
        self._audit_unsynced_seconds = gauge(
            "spangate_audit_unsynced_seconds",
            "Age of the oldest audit event written and not yet fdatasync'd (0: none), per sink.",
            ("sink",),
        )
        self._reloads = counter(
            "spangate_policy_reloads",
            "Policy reloads by result (shadow-refused: the shadow policy was refused, the live "
            "one reloaded or kept).",
            ("result",),
        )
        self._server_refusals = counter(
            "spangate_server_refusals",
            "Requests the HTTP server refused before they reached the gateway, by code "
            "(headers-too-large, request-timeout, request-invalid, server-busy).",
            ("code",),
        )
        self._log_dropped = counter(
            "spangate_log_lines_dropped",
            "Log lines dropped because stderr fell behind (the buffer of lines waiting was full).",
            (),
        )
        self._policy = gauge("spangate_policy_info", "The policy being served.", ("sha256",))
        self._settling = gauge(
            "spangate_writes_settling", "Writes answered before they ended, still settling."
        )
        self._ready = gauge("spangate_ready", "Whether /readyz says ready.")
        build = gauge(
            "spangate_build_info",
            "1, labelled with the gateway's version and those of Python and the Spanner client.",
            ("version", "python", "spanner_client"),
        )
        build.labels(__version__, platform.python_version(), _version("google-cloud-spanner")).set(1)
        self._policies: set[str] = set()
        self._issuers: tuple[str, ...] = ()
        self._exposition: CollectorRegistry | None = None
        if self.multiprocess is not None:
            self._exposition = CollectorRegistry(auto_describe=False)
            self._exposition.register(
                _Filtered(
                    MultiProcessCollector(None, path=self.multiprocess),  # type: ignore[no-untyped-call]
                    lambda: self._issuers,
                )
            )

    # -- the request path ---------------------------------------------------------------------
    def observe(self, route: str | None, status: int, code: str, seconds: float) -> None:
        """One policy-route call answered (``route``: its template, None when none matched)."""
        key = (route, status, code)
        child = self._request_children.get(key)
        if child is None:
            child = self._requests.labels(route or "", str(status), code)
            self._request_children[key] = child
        child.inc()
        self._latency.observe(seconds)

    def observe_statement(self, query: str, seconds: float) -> None:
        """One Spanner statement of ``query`` (the policy's name) ended, however it ended."""
        child = self._statement_children.get(query)
        if child is None:
            child = self._statement_children[query] = self._statements.labels(query)
        child.observe(seconds)

    def observe_shadow(self, route: str, live: str, shadow: str) -> None:
        """One call the shadow policy decided otherwise (labels: route template, reason codes)."""
        key = (route, live, shadow)
        child = self._shadow_children.get(key)
        if child is None:
            child = self._shadow_children[key] = self._shadow.labels(route, live, shadow)
        child.inc()

    def worker_started(self, worker: int, *, replacement: bool) -> None:
        """Worker ``worker`` started (``replacement``: in place of one that died). Each start
        adds its one (or its zero, so the series exists) in its own file: the sum over every
        worker that ever ran is the number of restarts."""
        self._worker_restarts.labels(str(worker)).inc(1 if replacement else 0)

    def observe_shadow_error(self) -> None:
        """One shadow decision that failed."""
        self._shadow_errors.inc()

    # -- published state ----------------------------------------------------------------------
    def publish(self, gateway: Gateway) -> None:
        """Copy the components' counters and state into the registry (see the module docstring)."""
        budgets = gateway.budgets
        for (role, budget), count in list(budgets.refusals.items()):
            self._budget_refusals.publish((role, budget), budgets, count)
        verifier = gateway.verifier
        issuers = tuple(verifier.caches)
        self._drop_gone(self._jwks_ready, issuers, self._issuers)
        self._issuers = issuers
        for name, cache in verifier.caches.items():
            self._jwks_fetches.publish((name,), cache, cache.fetches)
            self._jwks_ready.labels(name).set(int(cache.state().ready))
        introspectors = verifier.introspectors
        if introspectors:  # issuer "": opaque tokens that fit no introspecting issuer's format
            refusals = verifier.refusals
            self._introspection_refused.publish(("", "format"), refusals, refusals["format"])
        for name, one in introspectors.items():
            for result, count in list(one.results.items()):
                self._introspection_calls.publish((name, result), one, count)
            for reason, count in list(one.refused.items()):
                self._introspection_refused.publish((name, reason), one, count)
            self._introspection_hits.publish((name,), one, one.cache_hits)
        for stats in gateway.audit.metrics().sinks:
            sink, writer = (stats.sink,), gateway.audit
            self._audit_written.publish(sink, writer, stats.events_written)
            self._audit_batches.publish(sink, writer, stats.batches)
            self._audit_failures.publish(sink, writer, stats.failures)
            self._audit_flush_total.publish(sink, writer, stats.flush_seconds_total)
            self._audit_queue.labels(stats.sink).set(stats.queue_depth)
            self._audit_flush_max.labels(stats.sink).set(stats.flush_seconds_max)
            self._audit_syncs.publish(sink, writer, stats.syncs)
            self._audit_sync_total.publish(sink, writer, stats.sync_seconds_total)
            self._audit_sync_max.labels(stats.sink).set(stats.sync_seconds_max)
            self._audit_unsynced_bytes.labels(stats.sink).set(stats.unsynced_bytes)
            self._audit_unsynced_seconds.labels(stats.sink).set(stats.unsynced_seconds)
        reloader = gateway.reloader
        if reloader is not None:
            self._reloads.publish(("ok",), reloader, reloader.reloads)
            self._reloads.publish(("refused",), reloader, reloader.failures)
            if reloader.shadow_path is not None:
                self._reloads.publish(("shadow-refused",), reloader, reloader.shadow_failures)
        refused = REFUSALS.counts
        for code in (*CODES, *(c for c in list(refused) if c not in CODES)):
            self._server_refusals.publish((code,), REFUSALS, refused[code])
        log_writer, dropped = dropped_lines()
        self._log_dropped.publish((), log_writer, dropped)
        sha = gateway.policy.sha256
        for old in self._policies - {sha}:
            if self.multiprocess is None:
                self._policy.remove(old)
            else:
                self._policy.labels(old).set(0)  # merged files keep it: 0 is filtered out
        self._policies = {sha}
        self._policy.labels(sha).set(1)
        self._settling.set(gateway.executor.settling)
        self._ready.set(int(serving_ready(gateway)))

    def _drop_gone(self, gauge: Gauge, now: tuple[str, ...], before: tuple[str, ...]) -> None:
        if self.multiprocess is None:  # merged files keep them: the exposition filters them
            for gone in set(before) - set(now):
                with contextlib.suppress(KeyError):
                    gauge.remove(gone)

    def render(self, gateway: Gateway) -> bytes:
        """The exposition: this process's series, or every worker's merged."""
        self.publish(gateway)
        return generate_latest(self._exposition or self.registry)

    async def publish_every(self, gateway: Gateway, seconds: float = PUBLISH_SECONDS) -> None:
        """Publish until cancelled (each worker, when several serve)."""
        while True:
            await asyncio.sleep(seconds)
            self.publish(gateway)
