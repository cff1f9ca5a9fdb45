"""Durability ``written`` on real files: answered once write(2) returned, fdatasync'd on the syncer
thread, so a sync the disk holds up delays only the events that need it (``strict`` ones, and
``written`` ones once the unsynced backlog is past its bounds), a request waits for a sync at most
the sink's deadline (then ``AuditUnavailable``), a stalled sync makes the sink unhealthy and a
failed one reopens it; the chain verifies after all of it.

The disk is slowed through the file sink's ``sync`` seam: an fdatasync that waits at a gate the
test holds shut (no patching of ``os``)."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from audit_helpers import KEY

from gateway.audit.chain import AuditKeys, Chain
from gateway.audit.sinks import FileSink
from gateway.audit.verify import verify_trail
from gateway.audit.writer import Durability, SinkWriter
from gateway.errors import AuditUnavailable

WAIT = 20.0  # bounds every wait for something that must happen (never asserted on)


class GatedSync:
    """``os.fdatasync`` behind a gate: shut, every sync waits there (a disk that other users
    hold up); ``failing``: the next sync fails with EIO instead."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()  # a sync has reached the gate
        self.failing = 0
        self.calls = 0

    def __call__(self, fd: int) -> None:
        self.calls += 1
        self.entered.set()
        if self.failing:
            self.failing -= 1
            raise OSError(errno.EIO, "Input/output error")
        self.gate.wait()
        os.fdatasync(fd)

    def shut(self) -> None:
        self.entered.clear()
        self.gate.clear()

    async def stalled(self) -> None:
        """Until a sync is held at the gate."""
        assert await asyncio.to_thread(self.entered.wait, WAIT)


def make(
    path: Path,
    sync: GatedSync,
    *,
    durability: Durability | None = None,
    interval: float = 0.0,
    max_unsynced: float = 600.0,
    max_bytes: int = 1 << 30,
    deadline: float = 600.0,
) -> SinkWriter:
    sink = FileSink(
        path,
        sync=sync,
        sync_interval=interval,
        max_unsynced=max_unsynced,
        max_unsynced_bytes=max_bytes,
        sync_deadline=deadline,
    )
    return SinkWriter(sink, Chain(KEY), durability=durability, window=0.0, max_batch=64)


def events(path: Path) -> list[dict[str, object]]:
    """The file as another reader sees it now (written, whether synced or not)."""
    return [json.loads(line) for line in path.read_bytes().splitlines()]


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(int(WAIT / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the condition never held")


async def done(*futures: Awaitable[None]) -> None:
    await asyncio.wait_for(asyncio.gather(*futures), WAIT)


async def test_a_stalled_sync_holds_strict_events_and_not_written_ones(tmp_path: Path) -> None:
    path, sync = tmp_path / "audit.jsonl", GatedSync()
    w = make(path, sync)  # the default: strict for writes, written for reads
    assert (w.reads, w.writes) == ("written", "strict")
    sync.shut()
    await done(w.submit({"n": 0}, write=False))  # answered; its sync now waits at the gate
    await sync.stalled()
    write = w.submit({"n": 1}, write=True)
    reads = [w.submit({"n": i}, write=False) for i in range(2, 12)]
    await done(*reads)  # written and answered while the sync is held up
    assert [e["n"] for e in events(path)] == list(range(12))  # the write's event is written too
    assert not write.done()  # ... but not answered: it needs a sync, and none has finished
    stats = w.snapshot()
    assert stats.unsynced_bytes == path.stat().st_size and stats.waiting_for_sync == 1
    assert w.healthy and not stats.sync_stalled  # within the deadline (600 s here)
    sync.gate.set()
    await done(write)
    await w.close()
    assert w.snapshot().unsynced_bytes == 0
    report = verify_trail([path], KEY)
    assert report.ok and report.events == 12, report.broken


async def test_strict_events_wait_for_their_sync_written_ones_do_not(tmp_path: Path) -> None:
    path, sync = tmp_path / "audit.jsonl", GatedSync()
    w = make(path, sync, durability="strict")
    sync.shut()
    first = w.submit({"n": 0}, write=False)  # a read, but this sink is strict for everything
    await sync.stalled()
    await until(lambda: w.snapshot().waiting_for_sync == 1)
    assert not first.done() and len(events(path)) == 1  # written, not synced, not answered
    sync.gate.set()
    await done(first)
    await w.close()
    assert verify_trail([path], KEY).ok


async def test_past_the_backlog_bound_written_events_wait_then_fail_closed(
    tmp_path: Path,
) -> None:
    path, sync = tmp_path / "audit.jsonl", GatedSync()
    w = make(path, sync, max_unsynced=0.05, deadline=0.5)
    sync.shut()
    await done(w.submit({"n": 0}, write=False))  # within the bound: answered once written
    await sync.stalled()
    await until(lambda: w.snapshot().unsynced_seconds > 0.05)  # the backlog is past its bound
    behind = w.submit({"n": 1}, write=False)
    await until(lambda: w.snapshot().waiting_for_sync == 1)  # written, now waiting for a sync
    with pytest.raises(AuditUnavailable):  # the sync never came within the deadline: 503
        await asyncio.wait_for(behind, WAIT)
    await until(lambda: w.snapshot().sync_stalled)  # the sync has run past the deadline
    assert not w.healthy  # the gateway refuses statements before they run
    with pytest.raises(AuditUnavailable):  # refused without waiting: the sync is stalled
        await asyncio.wait_for(w.submit({"n": 2}, write=False), WAIT)
    assert w.snapshot().failures == 2
    sync.gate.set()  # the disk answers again
    await until(lambda: not w.snapshot().sync_stalled and w.snapshot().unsynced_bytes == 0)
    await done(w.submit({"n": 3}, write=False))  # the next event finds the sink healthy
    assert w.healthy
    await w.close()
    # The refused events were written before they were refused: the trail has no gap.
    assert [e["n"] for e in events(path)] == [0, 1, 2, 3]
    assert verify_trail([path], KEY).ok


async def test_past_the_byte_bound_written_events_wait_for_their_sync(tmp_path: Path) -> None:
    path, sync = tmp_path / "audit.jsonl", GatedSync()
    w = make(path, sync, max_bytes=1)  # any unsynced byte is too many
    sync.shut()
    event = w.submit({"n": 0}, write=False)
    await sync.stalled()
    await until(lambda: w.snapshot().waiting_for_sync == 1)
    assert not event.done()
    sync.gate.set()
    await done(event)
    await w.close()


async def test_written_events_are_synced_in_the_background_and_at_close(tmp_path: Path) -> None:
    path, sync = tmp_path / "audit.jsonl", GatedSync()
    w = make(path, sync, interval=3600.0)  # after the first, no background sync for an hour
    await done(w.submit({"n": 0}, write=False))  # an idle sink syncs at once
    await until(lambda: w.snapshot().syncs == 1)
    await done(*(w.submit({"n": i}, write=False) for i in range(1, 5)))
    stats = w.snapshot()
    assert stats.syncs == 1 and stats.unsynced_bytes > 0 and stats.unsynced_seconds >= 0
    assert len(events(path)) == 5  # written all the same
    await done(w.submit({"n": 5}, write=True))  # a strict event does not wait for the interval
    assert w.snapshot().unsynced_bytes == 0
    await done(w.submit({"n": 6}, write=False))
    await w.close()  # the last sync, of what was written since
    assert w.snapshot().unsynced_bytes == 0 and sync.calls == 3
    assert verify_trail([path], KEY).ok


async def test_a_failed_sync_refuses_its_waiters_and_reopens_the_sink(tmp_path: Path) -> None:
    path, sync = tmp_path / "audit.jsonl", GatedSync()
    w = make(path, sync)
    await done(w.submit({"n": 0}, write=True))
    sync.failing = 1
    with pytest.raises(AuditUnavailable):
        await asyncio.wait_for(w.submit({"n": 1}, write=True), WAIT)
    assert not w.healthy and w.snapshot().last_error == "Input/output error"
    await done(w.submit({"n": 2}, write=True))  # opened again: a new descriptor, synced
    assert w.healthy
    await w.close()
    assert [e["n"] for e in events(path)] == [0, 1, 2]
    assert verify_trail([path], KEY).ok


async def test_a_rotation_is_synced_with_the_new_file(tmp_path: Path) -> None:
    path, sync = tmp_path / "audit.jsonl", GatedSync()
    sink = FileSink(path, rotate_bytes=1024, sync=sync, sync_interval=0.0)
    w = SinkWriter(sink, Chain(KEY), durability=None, window=0.0, max_batch=64)
    for i in range(12):
        await done(w.submit({"n": i, "pad": "x" * 150}, write=i % 2 == 0))
    await w.close()
    assert sink.rotations >= 2 and w.snapshot().unsynced_bytes == 0
    files = [*sorted(tmp_path.glob("audit.jsonl.*")), path]
    assert verify_trail(files, KEY).ok


def test_written_is_not_a_spanner_durability() -> None:
    class Committing:
        name = "spanner:T"
        written_ok = False

        def open(self) -> str | None:
            return None

        def write(self, batch: object) -> None:
            return None

        def close(self) -> None:
            return None

    with pytest.raises(ValueError, match="durability written needs a sink that writes"):
        SinkWriter(Committing(), Chain(None), durability="written", window=0.0, max_batch=8)


async def test_a_gateway_whose_disk_stalls_fails_closed_and_says_so(
    make_settings: Callable[..., Any], serve: Any, token_for: Callable[..., str], audit_key: str
) -> None:
    """Through the real gateway: reads keep being answered while a sync is held up; once it has
    run past the deadline, /readyz says 503 ``audit-sync-stalled`` and calls are refused (503
    ``audit-unavailable``, before their statement runs); the disk answers, service comes back."""
    headers = {"Authorization": f"Bearer {token_for('support-console')}"}
    async with serve(make_settings()) as (gateway, http):
        writer = gateway.audit.writers[0]
        sink = writer.sink
        assert isinstance(sink, FileSink) and (writer.reads, writer.writes) == ("written", "strict")
        sync = GatedSync()
        sink.sync = sync  # the seam; bounds of 10 minutes, then of 50 and 300 ms
        sink.max_unsynced, sink.sync_deadline = 600.0, 600.0
        sync.shut()
        first = await http.get("/v1/orders/O-1001", headers=headers)
        assert first.status_code == 200
        await sync.stalled()
        second = await http.get("/v1/orders/O-1001", headers=headers)  # the sync is held up
        assert second.status_code == 200
        sink.max_unsynced, sink.sync_deadline = 0.05, 0.3
        await until(lambda: writer.sync_stalled)
        ready = await http.get("/readyz")
        assert ready.status_code == 503 and ready.json()["reason"] == "audit-sync-stalled"
        (state,) = ready.json()["audit"]["sinks"].values()
        assert state["sync_stalled"] and not state["healthy"] and state["unsynced_bytes"] > 0
        refused = await http.get("/v1/orders/O-1001", headers=headers)
        assert refused.status_code == 503 and refused.json()["code"] == "audit-unavailable"
        metrics = (await http.get("/metrics")).text
        assert "spangate_audit_unsynced_bytes{sink=" in metrics
        sync.gate.set()
        await until(lambda: not writer.sync_stalled)
        probe = await http.get("/v1/orders/O-1001", headers=headers)  # its event probes the sink
        again = await http.get("/v1/orders/O-1001", headers=headers)
        assert (await http.get("/readyz")).status_code == 200
    assert probe.status_code == 503 and again.status_code == 200
    key = AuditKeys.from_secret(audit_key.encode()).chain
    report = verify_trail([sink.path], key)
    assert report.ok and report.events == 5, report.broken
