"""Audit cost per request: building the event, sealing it, then recording it: file sinks
strict, written and batched, and the Spanner sink strict and batched; one caller, 32 concurrent
callers, and a steady arrival rate.

Each closed-loop row runs callers that each build a real event (``build_event`` on the example
policy: a support read with its principal, decision and bound parameters) and ``await
trail.record(...)`` one at a time; the latency is one ``record`` (queue, seal on the writer thread,
write, fsync or commit, wake-up). The baseline row builds events only (bounding one encodes its
members, as the gateway does); the "alone" rows build them with nothing else (no event loop):
the list's, and a point read's (``GET /v1/orders/{id}``, one row found); the seal rows seal
them: joining those members (the gateway's path), encoding the event once (events built
otherwise), and as sealing did before (two more encodes: a copy of that code, here only to be
measured); "no I/O" records into a sink that writes nothing (the pipeline's own cost).
``written`` answers once write(2) returned and syncs every 100 ms in the background; ``batched``
uses the default 5 ms window. The "at N/s" rows start events at a steady rate (open loop), as a
busy gateway does. The note gives events per flush (how many requests shared one write, fsync or
commit), fsyncs per second, and the process's CPU time per event (all threads: building,
sealing, writing, syncing, the hand-offs; ``time.process_time``). File rows write to a temporary
directory on this machine's disk; Spanner rows to a fresh emulator (its commits are not
production's: compare strict with batched there).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.table import Row, Table
from gateway.audit.chain import _ENCODER, Chain, Members, line_text, writable
from gateway.audit.event import CallRecord, build_event_encoded
from gateway.audit.sinks import FileSink, Sink
from gateway.audit.spanner_sink import SpannerSink, audit_table_ddl
from gateway.audit.trail import AuditTrail
from gateway.audit.writer import Durability, SinkWriter
from gateway.auth.principal import Principal
from gateway.policy.compiled import CompiledPolicy
from gateway.policy.decide import RequestFacts, decide
from gateway.spanner.results import Result

__all__ = ["run"]

REPO = Path(__file__).resolve().parent.parent
WINDOW = 0.005


def _policy() -> CompiledPolicy:
    from gateway.runtime import load_compiled

    return load_compiled(REPO / "policy.example.yaml", {})


Event = tuple[dict[str, Any], Members | None]  # an event and its members, as the gateway makes them


def _event_factory(
    policy: CompiledPolicy,
    path: str = "/v1/orders",
    query: list[tuple[str, str]] | None = None,
    result: Result | None = None,
) -> Callable[[], Event]:
    """A call to ``path`` (the list by default: ``?status=PAID``) by a support person's token,
    answered with ``result``."""
    principal = Principal(
        issuer="okta",
        iss="https://dev-000000.okta.com/oauth2/default",
        subject="support-console",
        client_id="support-console",
        groups=frozenset({"support"}),
        claims={"tenant": "t1", "groups": ["support"], "sub": "support-console"},
        token_id="jti-1",  # noqa: S106 - a token id (jti), not a secret
    )
    query = [("status", "PAID")] if query is None else query
    facts = RequestFacts(method="GET", path=path, query=query)
    decision = decide(policy, facts, principal)
    assert decision.allow and decision.route is not None, decision.reason
    tag = f"4f1c2b9a {decision.route.query_name} GET {decision.route.template}"

    def make() -> Event:
        call = CallRecord(
            request_id="4f1c2b9a0d8e4c6b8a7f6e5d4c3b2a19",
            method="GET",
            path=path,
            started=time.perf_counter(),
            client="203.0.113.7",
            user_agent="bench/1",
            principal=principal,
            decision=decision,
            status=200,
            request_tag=tag,
            result=result,
        )
        return build_event_encoded(call, policy, key=b"k" * 32)

    return make


def _seal_before(chain: Chain, event: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
    """Chain.seal as it was before one encode (commit a7fb35c): ``writable`` encodes the event to
    check it, then the sealed form is encoded, the line spliced as text and encoded again."""
    event = dict(writable(event))
    chain.seq += 1
    sealed = {**event, "chain": chain.chain_id, "seq": chain.seq, "prev": chain.last_hash}
    sealed.pop("hash", None)
    text = _ENCODER.encode(sealed)
    body = text.encode()
    assert chain.key is not None
    digest = hmac.new(chain.key, body, hashlib.sha256).hexdigest()
    sealed["hash"] = chain.last_hash = digest
    before = {k: v for k, v in sealed.items() if k < "hash"}
    cut = len(_ENCODER.encode(before)) - 1
    line = f'{text[:cut]},"hash":"{digest}"{text[cut:]}'
    return sealed, (line_text(line) + "\n").encode()


def _build_row(name: str, make: Callable[[], Event], seconds: float) -> Row:
    """Building one call's event after another, with nothing else (no trail, no event loop):
    what the request path spends on its event."""
    latencies: list[float] = []
    cpu = time.process_time()
    began = time.perf_counter()
    stop = began + seconds
    while time.perf_counter() < stop:
        started = time.perf_counter()
        make()
        latencies.append(time.perf_counter() - started)
    wall = time.perf_counter() - began
    per_event = (time.process_time() - cpu) / max(len(latencies), 1) * 1e6
    return Row.from_latencies(name, latencies, wall, f"{per_event:.1f} us CPU/event")


def _seal_row(
    name: str, make: Callable[[], Event], seal: Callable[[Chain, Event], Any], seconds: float
) -> Row:
    events = [make() for _ in range(256)]
    chain = Chain(b"k" * 32)
    latencies: list[float] = []
    cpu = time.process_time()
    began = time.perf_counter()
    stop = began + seconds
    while time.perf_counter() < stop:
        for event in events:
            started = time.perf_counter()
            seal(chain, event)
            latencies.append(time.perf_counter() - started)
    wall = time.perf_counter() - began
    per_event = (time.process_time() - cpu) / max(len(latencies), 1) * 1e6
    return Row.from_latencies(name, latencies, wall, f"{per_event:.1f} us CPU/event")


class _NullSink:
    name = "null"

    def open(self) -> str | None:
        return None

    def write(self, batch: Any) -> None:
        return None

    def close(self) -> None:
        return None


async def _steady(
    trail: AuditTrail, make: Callable[[], Event], *, rate: float, seconds: float
) -> tuple[list[float], float]:
    """Open loop: an event starts every 1/rate s, whether or not the earlier ones are done."""
    latencies: list[float] = []

    async def one() -> None:
        started = time.perf_counter()
        event, members = make()
        await trail.record(event, write=False, members=members)
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
    make: Callable[[], Event],
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
            event, members = make()
            if trail is not None:
                waiting[0] += 1
                try:
                    await trail.record(event, write=write, members=members)
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
    make: Callable[[], Event],
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
    cpu = time.process_time()
    if rate is not None:
        assert trail is not None
        latencies, wall = await _steady(trail, make, rate=rate, seconds=seconds)
    else:
        latencies, wall = await _drive(trail, make, callers=callers, seconds=seconds, write=False)
    per_event = (time.process_time() - cpu) / max(len(latencies), 1) * 1e6
    note = f"{per_event:.0f} us CPU/event"
    if trail is not None:
        stats = trail.metrics().sinks[0]
        await trail.close()
        note = f"{stats.events_written / max(stats.batches, 1):.1f} events/flush, " + note
        if stats.syncs:
            note = f"{stats.syncs / wall:.0f} fsyncs/s, " + note
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


def run(quick: bool, *, spanner: bool = True) -> Table:
    """``spanner``: also the Spanner sink's rows (they start an emulator)."""
    import contextlib

    seconds = 0.5 if quick else 3.0
    policy = _policy()
    make = _event_factory(policy)
    table = Table("audit: cost of one event (build, then durable in the sink)", unit="events/s")

    async def all_rows() -> None:
        table.add(await _row("build only", None, make, durability=None, callers=1, seconds=seconds))
        table.add(_build_row("build: a list, alone", make, seconds))
        found = Result(columns=["OrderId"], rows=[{"OrderId": "O-1001"}], row_count=1)
        point = _event_factory(policy, "/v1/orders/O-1001", [], found)
        table.add(_build_row("build: a point read, alone", point, seconds))
        table.add(_seal_row("seal, members from building", make,
                            lambda c, e: c.seal(e[0], e[1]), seconds))  # fmt: skip
        table.add(_seal_row("seal, encoding the event", make, lambda c, e: c.seal(e[0]), seconds))
        table.add(_seal_row("seal: two encodes (before)", make,
                            lambda c, e: _seal_before(c, e[0]), seconds))  # fmt: skip
        no_io = _NullSink()
        table.add(
            await _row("no I/O, 32 callers", no_io, make, durability="strict", callers=32,
                       seconds=seconds)
        )  # fmt: skip
        modes: tuple[Durability, ...] = ("strict", "written", "batched")
        with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
            for rate in (2000, 200):
                for mode in modes:
                    sink = FileSink(Path(tmp) / f"{mode}-{rate}.jsonl")
                    table.add(
                        await _row(f"file {mode}, at {rate:,}/s", sink, make, durability=mode,
                                   callers=0, seconds=seconds, rate=rate)
                    )  # fmt: skip
            for callers in (1, 32):
                for mode in modes:
                    sink = FileSink(Path(tmp) / f"{mode}-{callers}.jsonl")
                    name = f"file {mode}, {callers} caller{'s' if callers > 1 else ''}"
                    table.add(
                        await _row(name, sink, make, durability=mode, callers=callers,
                                   seconds=seconds)
                    )  # fmt: skip
            if spanner:
                database = await asyncio.to_thread(_spanner_database, stack)
                spanner_modes: tuple[Durability, ...] = ("batched", "strict")
                for mode in spanner_modes:
                    for callers in (1, 32):
                        committing = SpannerSink(
                            database, "SpangateAudit", key=None, retry_delay=0.01
                        )
                        name = f"spanner {mode}, {callers} caller{'s' if callers > 1 else ''}"
                        table.add(
                            await _row(name, committing, make, durability=mode,
                                       callers=callers, seconds=seconds)
                        )  # fmt: skip

    asyncio.run(all_rows())
    return table
