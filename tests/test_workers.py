"""The supervisor's pure parts (``gateway.workers``, ``gateway.server.StopSignals``) and the
worker's tie to its parent, without a gateway."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from gateway.server import ECHO_SECONDS, StopSignals

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
