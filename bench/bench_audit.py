"""Audit cost per request: building the event, then making it durable, file and Spanner sinks,
strict vs batched, one caller and 32 concurrent callers, and a steady arrival rate.

Each closed-loop row runs callers that each build a real event (``build_event`` on the example
policy: a support read with its principal, decision and bound parameters) and ``await
trail.record(...)`` one at a time; the latency is one ``record`` (queue, seal on the writer thread,
write, fsync or commit, wake-up). The baseline row builds events only; "no I/O" records into a
sink that writes nothing (the pipeline's own cost). ``batched`` uses the default 5 ms window. The
"at N/s" rows start events at a steady rate (open loop), as a busy gateway does: there batching
trades latency for fewer fsyncs. The note gives events per flush (how many requests shared one
fsync or one commit). File rows write to a temporary directory on this machine's disk; Spanner
rows to a fresh emulator (its commits are not production's: compare strict with batched there).
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.table import Row, Table
from gateway.audit.chain import Chain
from gateway.audit.event import CallRecord, build_event
from gateway.audit.sinks import FileSink, Sink
from gateway.audit.spanner_sink import SpannerSink, audit_table_ddl
from gateway.audit.trail import AuditTrail
from gateway.audit.writer import Durability, SinkWriter
from gateway.auth.principal import Principal
from gateway.policy.compiled import CompiledPolicy
from gateway.policy.decide import RequestFacts, decide

__all__ = ["run"]

REPO = Path(__file__).resolve().parent.parent
WINDOW = 0.005


def _policy() -> CompiledPolicy:
    from gateway.runtime import load_compiled

    return load_compiled(REPO / "policy.example.yaml", {})


def _event_factory(policy: CompiledPolicy) -> Callable[[], dict[str, Any]]:
    principal = Principal(
        issuer="okta",
        iss="https://dev-000000.okta.com/oauth2/default",
        subject="support-console",
        client_id="support-console",
        groups=frozenset({"support"}),
        claims={"tenant": "t1", "groups": ["support"], "sub": "support-console"},
        token_id="jti-1",  # noqa: S106 - a token id (jti), not a secret
    )
    facts = RequestFacts(method="GET", path="/v1/orders", query=[("status", "PAID")])
    decision = decide(policy, facts, principal)
    assert decision.allow, decision.reason

    def make() -> dict[str, Any]:
        call = CallRecord(
            request_id="4f1c2b9a0d8e4c6b8a7f6e5d4c3b2a19",
            method="GET",
            path="/v1/orders",
            started=time.perf_counter(),
            client="203.0.113.7",
            user_agent="bench/1",
            principal=principal,
            decision=decision,
            status=200,
            request_tag="4f1c2b9a list_orders GET /v1/orders",
        )
        return build_event(call, policy, key=b"k" * 32)

    return make


class _NullSink:
    name = "null"

    def open(self) -> str | None:
        return None

    def write(self, batch: Any) -> None:
        return None

    def close(self) -> None:
        return None


async def _steady(
    trail: AuditTrail, make: Callable[[], dict[str, Any]], *, rate: float, seconds: float
) -> tuple[list[float], float]:
    """Open loop: an event starts every 1/rate s, whether or not the earlier ones are done."""
    latencies: list[float] = []

    async def one() -> None:
        started = time.perf_counter()
        await trail.record(make(), write=False)
        latencies.append(time.perf_counter() - started)

    tasks = []
    began = time.perf_counter()
    n = 0
    while (now := time.perf_counter()) < began + seconds:
        due = began + n / rate
        if now < due:
            await asyncio.sleep(due - now)
        tasks.append(asyncio.create_task(one()))
        n += 1
    await asyncio.gather(*tasks)
    return latencies, time.perf_counter() - began


async def _drive(
    trail: AuditTrail | None,
    make: Callable[[], dict[str, Any]],
    *,
    callers: int,
    seconds: float,
    write: bool,
) -> tuple[list[float], float]:
    latencies: list[float] = []
    stop = time.perf_counter() + seconds
    waiting = [0]
    if trail is not None:
        # As in the gateway: batched sinks wait only while some caller may still submit.
        trail.expect_from(lambda: callers - waiting[0])

    async def caller() -> None:
        while time.perf_counter() < stop:
            started = time.perf_counter()
            event = make()
            if trail is not None:
                waiting[0] += 1
                try:
                    await trail.record(event, write=write)
                finally:
                    waiting[0] -= 1
            latencies.append(time.perf_counter() - started)
            if trail is None and len(latencies) % 64 == 0:
                await asyncio.sleep(0)

    began = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(callers)))
    return latencies, time.perf_counter() - began


async def _row(
    name: str,
    sink: Sink | None,
    make: Callable[[], dict[str, Any]],
    *,
    durability: Durability | None,
    callers: int,
    seconds: float,
    rate: float | None = None,
) -> Row:
    trail = None
    if sink is not None:
        writer = SinkWriter(
            sink, Chain(b"k" * 32), durability=durability, window=WINDOW, max_batch=512
        )
        trail = AuditTrail([writer])
        await trail.start()
    if rate is not None:
        assert trail is not None
        latencies, wall = await _steady(trail, make, rate=rate, seconds=seconds)
    else:
        latencies, wall = await _drive(trail, make, callers=callers, seconds=seconds, write=False)
    note = ""
    if trail is not None:
        stats = trail.metrics().sinks[0]
        await trail.close()
        note = f"{stats.events_written / max(stats.batches, 1):.1f} events/flush"
    return Row.from_latencies(name, latencies, wall, note)


def _spanner_database(stack: Any) -> Any:
    from gateway.dev.database import create_database, load_demo_sql
    from gateway.dev.emulator import start_emulator
    from gateway.spanner.identities import default_client_factory

    emulator = stack.enter_context(start_emulator())
    ddl, _ = load_demo_sql(REPO)
    create_database(
        emulator.host,
        project="bench-project",
        instance="bench",
        database="audit",
        ddl=[*ddl, audit_table_ddl("SpangateAudit")],
    )
    client = default_client_factory(emulator.host)("bench-project", None)
    return client.instance("bench").database("audit")


def run(quick: bool) -> Table:
    import contextlib

    seconds = 0.5 if quick else 3.0
    policy = _policy()
    make = _event_factory(policy)
    table = Table("audit: cost of one event (build, then durable in the sink)", unit="events/s")

    async def all_rows() -> None:
        table.add(await _row("build only", None, make, durability=None, callers=1, seconds=seconds))
        no_io = _NullSink()
        table.add(
            await _row("no I/O, 32 callers", no_io, make, durability="strict", callers=32,
                       seconds=seconds)
        )  # fmt: skip
        with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
            for mode in ("strict", "batched"):
                sink = FileSink(Path(tmp) / f"{mode}-steady.jsonl")
                table.add(
                    await _row(
                        f"file {mode}, at 2,000/s",
                        sink,
                        make,
                        durability=mode,  # type: ignore[arg-type]
                        callers=0,
                        seconds=seconds,
                        rate=2000,
                    )
                )
            for mode in ("batched", "strict"):
                for callers in (1, 32):
                    sink = FileSink(Path(tmp) / f"{mode}-{callers}.jsonl")
                    name = f"file {mode}, {callers} caller{'s' if callers > 1 else ''}"
                    table.add(
                        await _row(
                            name,
                            sink,
                            make,
                            durability=mode,  # type: ignore[arg-type]
                            callers=callers,
                            seconds=seconds,
                        )
                    )
            database = await asyncio.to_thread(_spanner_database, stack)
            for mode in ("batched", "strict"):
                for callers in (1, 32):
                    sink = SpannerSink(database, "SpangateAudit", key=None, retry_delay=0.01)
                    name = f"spanner {mode}, {callers} caller{'s' if callers > 1 else ''}"
                    table.add(
                        await _row(
                            name,
                            sink,
                            make,
                            durability=mode,  # type: ignore[arg-type]
                            callers=callers,
                            seconds=seconds,
                        )
                    )

    asyncio.run(all_rows())
    return table
