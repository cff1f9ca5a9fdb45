"""The supervisor's pure parts (``gateway.workers``, ``gateway.server.StopSignals``) and the
worker's tie to its parent, without a gateway."""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.server import ECHO_SECONDS, StopSignals
from gateway.settings import Settings
from gateway.workers import (
    STORM_CRASHES,
    STORM_EXIT,
    CrashBudget,
    _Slot,
    _Supervisor,
    restart_delay,
)

WAIT_SECONDS = 30  # bounds the waits below, never asserted on


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_stop_signal_delivered_twice_counts_once_and_a_later_one_counts() -> None:
    clock = Clock()
    stops = StopSignals(clock)
    assert stops.count() is True  # the first stop
    clock.now += ECHO_SECONDS / 10
    assert stops.count() is False  # the same stop through a wrapper that forwards it
    clock.now += ECHO_SECONDS
    assert stops.count() is True  # sent on purpose, later: a second stop
    assert stops.counted == 2


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_a_worker_gets_sigterm_when_its_parent_is_killed() -> None:
    # parent (killed with SIGKILL) -> child that called die_with_parent() and sleeps
    child = (
        "import sys, time\n"
        "from gateway.workers import die_with_parent\n"
        "assert die_with_parent()\n"
        "print('armed', flush=True)\n"
        "time.sleep(600)\n"
    )
    parent = (
        "import subprocess, sys, time\n"
        f"p = subprocess.Popen([sys.executable, '-c', {child!r}])\n"
        "print(p.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    pid = 0
    with subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True) as middle:
        try:
            assert middle.stdout is not None
            pid = int(middle.stdout.readline())
            assert middle.stdout.readline().strip() == "armed"
            os.kill(middle.pid, signal.SIGKILL)
            middle.wait()
            deadline = time.monotonic() + WAIT_SECONDS
            while _alive(pid):
                assert time.monotonic() < deadline, "the child outlived its parent"
                time.sleep(0.05)
        finally:
            if middle.poll() is None:
                middle.kill()
            if pid and _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_restart_delays_double_up_to_their_cap() -> None:
    delays = [restart_delay(n) for n in range(1, 9)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]


def test_more_crashes_than_the_budget_within_its_window_is_a_storm() -> None:
    clock = Clock()
    budget = CrashBudget(crashes=3, seconds=60.0, clock=clock)
    assert [budget.crashed() for _ in range(3)] == [False, False, False]
    clock.now += 61  # the window moved past them
    assert [budget.crashed() for _ in range(3)] == [False, False, False]
    assert budget.crashed() is True


class _Crashing(_Supervisor):
    """Workers that die at once (real processes, exit 1): the supervisor's restart path."""

    spawned: list[int]

    def _spawn(
        self, slot: _Slot, fd: int, fds: list[int], admin: list[str]
    ) -> subprocess.Popen[bytes]:
        self.spawned.append(slot.number)
        return subprocess.Popen([sys.executable, "-c", "raise SystemExit(1)"])


def test_a_restart_storm_stops_the_supervisor_non_zero(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "metrics").mkdir()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        supervisor = _Crashing(Settings(workers=2), {}, sock, tmp_path)
        supervisor.spawned = []
        with caplog.at_level(logging.INFO, "spangate.workers"):
            code = supervisor.run()
    assert code == STORM_EXIT != 0
    assert len(supervisor.spawned) == STORM_CRASHES + 1  # each death but the last replaced
    assert "restart storm" in caplog.text
    # replaced after a back-off: the same worker's second restart waited longer than its first
    said = r"worker (\d) \(pid \d+\) died \(exit 1\): starting another in its place in (\S+) s"
    delays = re.findall(said, caplog.text)
    assert ("1", "1") in delays and ("1", "2") in delays
    assert sock.fileno() == -1  # closed when it stopped
