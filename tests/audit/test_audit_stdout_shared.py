"""The stdout sink shared by workers (``spangate serve --workers N``): with a lock file, batches
from two writers never split each other's lines in the pipe, and a batch cut short by a stalled
reader makes whichever writer comes next start on a new line."""

from __future__ import annotations

import functools
import json
import os
import threading
from pathlib import Path

from shared_pipe import at_once, drain, one_pipe

from gateway.audit.sinks import Sealed
from gateway.audit.stdout_sink import StdoutSink

LINE_BYTES = 6000  # more than PIPE_BUF (4096): each line takes two writes


def _batch(writer: int, number: int) -> list[Sealed]:
    lines = [
        json.dumps({"w": writer, "n": number, "k": k, "pad": "x" * LINE_BYTES}) + "\n"
        for k in range(3)
    ]
    return [Sealed({}, line.encode()) for line in lines]


def _two_writers_through_one_pipe(lock: Path | None) -> list[str]:
    with one_pipe() as pipe:
        sinks = [StdoutSink(fd=pipe.write, lock=lock) for _ in range(2)]
        for sink in sinks:
            sink.open()

        def run(writer: int) -> None:
            for number in range(40):
                sinks[writer].write(_batch(writer, number))

        at_once(*(functools.partial(run, w) for w in range(2)))
        for sink in sinks:
            sink.close()
    return pipe.lines()


def test_two_workers_batches_stay_whole_lines(tmp_path: Path) -> None:
    lines = _two_writers_through_one_pipe(tmp_path / "stdout.lock")
    assert len(lines) == 2 * 40 * 3
    seen = {(e["w"], e["n"], e["k"]) for e in map(json.loads, lines)}  # every line is JSON
    assert len(seen) == 2 * 40 * 3


def test_without_the_lock_the_same_writes_can_split_lines(tmp_path: Path) -> None:
    # What the lock prevents (the test above would not fail without it otherwise): two writers
    # of lines longer than PIPE_BUF interleave. Repeated, since a run may happen not to.
    for _ in range(20):
        lines = _two_writers_through_one_pipe(None)
        broken = 0
        for line in lines:
            try:
                json.loads(line)
            except ValueError:
                broken += 1
        if broken:
            return
    raise AssertionError("two unlocked writers never split a line in 20 runs")


def test_a_batch_cut_short_makes_the_next_writer_start_a_new_line(tmp_path: Path) -> None:
    lock = tmp_path / "stdout.lock"
    read, write = os.pipe()
    os.set_blocking(write, False)
    first, second = StdoutSink(fd=write, lock=lock, deadline=0.1), StdoutSink(fd=write, lock=lock)
    first.open()
    second.open()
    try:
        big = Sealed({}, b'{"pad":"' + b"p" * 300_000 + b'"}\n')  # more than the pipe holds
        try:
            first.write([big])
        except OSError:
            pass
        else:
            raise AssertionError("the pipe took 300 KB without a reader")
        assert lock.read_bytes()[:1] == b"1"  # cut short mid-line: said for every worker
        received = bytearray()
        reader = threading.Thread(target=drain, args=(read, received))
        reader.start()
        second.write([Sealed({}, b'{"next":1}\n')])
        assert lock.read_bytes()[:1] == b"0"
    finally:
        first.close()
        second.close()
        os.close(write)
    reader.join()
    os.close(read)
    lines = received.decode().splitlines()
    assert lines[-1] == '{"next":1}'  # on a line of its own, after the cut-off one
    assert lines[-2].startswith('{"pad":"ppp') and not lines[-2].endswith('"}')
