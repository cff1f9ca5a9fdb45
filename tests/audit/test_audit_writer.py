"""Sink writers on real files: group commit, strict vs batched, fail closed without a chain gap,
rotation, a predecessor's last hash, a crash's partial line, one process per file. (``written``:
test_audit_written.py.)"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest
from audit_helpers import KEY

from gateway.audit.chain import GENESIS, Chain
from gateway.audit.sinks import FileSink, Sealed, rotated_paths
from gateway.audit.trail import AuditTrail
from gateway.audit.verify import verify_trail
from gateway.audit.writer import SinkWriter
from gateway.errors import AuditUnavailable


def writer(path: Path, *, window: float = 10.0, max_batch: int = 512, **kw: object) -> SinkWriter:
    """Strict writes and batched reads (the default for reads before ``written``)."""
    rotate = kw.pop("rotate_bytes", None)
    assert isinstance(rotate, int | None)
    return SinkWriter(
        FileSink(path, rotate_bytes=rotate),
        Chain(KEY),
        durability=None,
        reads="batched",
        window=window,
        max_batch=max_batch,
    )


def events(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


async def test_a_strict_event_flushes_at_once_with_the_batched_ones_before_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "audit.jsonl"
    w = writer(path)  # a 10 s window: only the strict event can cause a flush here
    reads = [w.submit({"n": i}, write=False) for i in range(5)]
    write = w.submit({"n": 5}, write=True)
    await asyncio.wait_for(asyncio.gather(*reads, write), timeout=5)
    assert [e["n"] for e in events(path)] == [0, 1, 2, 3, 4, 5]
    assert [e["seq"] for e in events(path)] == [1, 2, 3, 4, 5, 6]
    assert w.stats.batches == 1 and w.stats.events_written == 6
    await w.close()


async def test_batched_events_wait_for_their_window_and_close_flushes_them(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    w = writer(path, window=10.0)
    await w.submit({"n": "idle"}, write=False)  # an idle sink flushes a batched event at once
    pending = [w.submit({"n": i}, write=False) for i in range(3)]
    await asyncio.sleep(0.1)
    assert not any(f.done() for f in pending)  # at most one flush per window (10 s here)
    assert len(events(path)) == 1 and w.stats.queue_depth == 3
    await w.close()  # graceful shutdown: flushed at once, not after the window
    assert all(f.done() and f.exception() is None for f in pending)
    assert len(events(path)) == 4 and w.stats.batches == 2 and w.stats.queue_depth == 0


async def test_batched_events_do_not_wait_when_nobody_else_is_coming(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    w = writer(path, window=10.0)
    coming = [2]
    w.expecting = lambda: coming[0]
    await w.submit({"n": "idle"}, write=False)
    pending = w.submit({"n": 1}, write=False)
    await asyncio.sleep(0.1)
    assert not pending.done()  # two requests are still on their way: the window holds
    coming[0] = 0
    second = w.submit({"n": 2}, write=False)  # the last of them: nobody left to join
    await asyncio.wait_for(asyncio.gather(pending, second), timeout=2.0)
    assert len(events(path)) == 3 and w.stats.batches == 2
    await w.close()


async def test_a_full_batch_is_flushed_without_waiting(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    w = writer(path, window=10.0, max_batch=4)
    await w.submit({"n": "idle"}, write=False)
    pending = [w.submit({"n": i}, write=False) for i in range(4)]
    await asyncio.wait_for(asyncio.gather(*pending), timeout=5)
    assert len(events(path)) == 5
    await w.close()


async def test_a_full_disk_refuses_the_batch_and_leaves_no_gap(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.symlink_to("/dev/full")  # every write fails with ENOSPC, as on a full disk
    w = writer(path, window=0.0)
    await w.start()
    assert w.healthy  # opening works; writing does not
    failing = [w.submit({"n": i}, write=True) for i in range(3)]
    results = await asyncio.gather(*failing, return_exceptions=True)
    assert all(isinstance(r, AuditUnavailable) for r in results)
    assert not w.healthy and w.stats.failures >= 1 and w.stats.events_written == 0
    assert w.chain.seq == 0  # the refused events were rolled back out of the chain
    path.unlink()  # the disk has room again; the sink is opened again for the next batch
    await w.submit({"n": "after"}, write=True)
    await w.submit({"n": "later"}, write=False)
    assert w.healthy
    assert [(e["n"], e["seq"]) for e in events(path)] == [("after", 1), ("later", 2)]
    assert verify_trail([path], KEY).ok
    await w.close()


async def test_a_new_process_names_its_predecessors_last_hash(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    first = writer(path, window=0.0)
    for i in range(3):
        await first.submit({"n": i}, write=True)
    last = first.chain.last_hash
    await first.close()
    second = writer(path, window=0.0)
    await second.start()
    await second.submit({"n": 3}, write=True)
    await second.close()
    later = events(path)[3]
    assert (
        later["seq"] == 1 and later["prev"] == last and later["chain"] != events(path)[0]["chain"]
    )
    report = verify_trail([path], KEY)
    assert report.ok and report.chains == 2 and report.notes == []


async def test_rotation_keeps_the_chain_across_files_and_restarts(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    w = writer(path, window=0.0, rotate_bytes=1024)
    for i in range(12):
        await w.submit({"n": i, "pad": "x" * 150}, write=True)
    await w.close()
    rotated = rotated_paths(path)
    assert len(rotated) >= 2 and all(p.stat().st_size <= 1024 for p in rotated)
    assert [p.name for p in rotated][:2] == ["audit.jsonl.000001", "audit.jsonl.000002"]
    newest = int(rotated[-1].name.rsplit(".", 1)[1])
    path.rename(path.with_name(f"audit.jsonl.{newest + 1:06d}"))  # a crash inside a rotation
    rotated = rotated_paths(path)
    again = writer(path, window=0.0, rotate_bytes=1024)
    await again.submit({"n": "restart"}, write=True)
    await again.close()
    report = verify_trail([path, *rotated], KEY)
    assert report.ok and report.events == 13 and report.chains == 2 and report.notes == []
    assert verify_trail([path, *rotated[1:]], KEY).ok  # a trail may start at any file
    gap = verify_trail([path, rotated[0], *rotated[2:]], KEY).broken  # a file is missing
    assert gap is not None and (gap.kind, gap.file, gap.line) == ("missing-file", str(rotated[1]), None)


async def test_a_crash_partial_line_is_cut_when_the_file_is_opened(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    w = writer(path, window=0.0)
    await w.submit({"n": 0}, write=True)
    await w.close()
    whole = path.read_bytes()
    with path.open("ab") as f:
        f.write(b'{"chain":"abc","n":1,"pre')  # a batch write cut short by kill -9
    sink = FileSink(path)
    assert sink.open() == json.loads(whole)["hash"]
    sink.close()
    assert path.read_bytes() == whole


def test_one_process_per_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    first = FileSink(path)
    assert first.open() is None
    second = FileSink(path)
    with pytest.raises(OSError, match="another process is writing"):
        second.open()
    first.write([Sealed({}, b"{}\n")])
    first.close()
    assert second.open() is None  # {} has no hash: nothing to link to
    second.close()


def test_an_unwritable_path_fails_on_open_and_recovers(tmp_path: Path) -> None:
    blocker = tmp_path / "logs"
    blocker.write_text("a file where the directory should be")
    sink = FileSink(blocker / "audit.jsonl")
    with pytest.raises(OSError):
        sink.open()
    blocker.unlink()
    assert sink.open() is None
    sink.write([Sealed({}, b"{}\n")])
    sink.close()
    assert (blocker / "audit.jsonl").read_bytes() == b"{}\n"


async def test_the_trail_fails_closed_when_any_sink_fails(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.jsonl", tmp_path / "bad.jsonl"
    bad.symlink_to("/dev/full")
    trail = AuditTrail([writer(good, window=0.0), writer(bad, window=0.0)])
    await trail.start()
    assert trail.available  # both opened: /dev/full fails only when written
    with pytest.raises(AuditUnavailable):
        await trail.record({"n": 1}, write=True)
    metrics = trail.metrics()
    assert metrics.failures == 1 and metrics.events_written == 1 and metrics.queue_depth == 0
    assert not trail.available
    await trail.close()
    with pytest.raises(AuditUnavailable):
        await trail.record({"n": 2}, write=False)
    assert os.path.exists(good) and GENESIS == events(good)[0]["prev"]


async def test_the_last_flush_counts_the_events_it_lost(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.jsonl", tmp_path / "bad.jsonl"
    bad.symlink_to("/dev/full")  # the disk fills up before the last flush
    fine = AuditTrail([writer(good)])
    full = AuditTrail([writer(good.with_name("other.jsonl")), writer(bad)])
    lost = []
    for trail in (fine, full):
        await trail.start()
        trail.record_nowait({"n": 1}, write=False)  # cancelled calls' last word, queued as the
        trail.record_nowait({"n": 2}, write=False)  # server stops: the last flush writes them
        lost.append(await trail.close())
    assert lost == [0, 2]  # the full sink refused both
    assert [e["n"] for e in events(good)] == [1, 2]
    assert fine.lost == 0 and full.lost == 2
    full.record_nowait({"n": 3}, write=False)  # after the close: dropped, and counted
    assert full.lost == 3
