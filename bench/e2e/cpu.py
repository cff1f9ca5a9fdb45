"""CPU time from /proc: what each measured process spent, and what the rest of the machine did.

A phase is measured between two samples. Each sample reads the machine's counters (the first
line of /proc/stat) and ``utime + stime`` of every process we started (/proc/PID/stat, all its
threads, and its descendants'). Between the samples:

- a process's CPU seconds are the difference of its ``utime + stime`` (a process that starts and
  ends between the samples, such as ``wrk``, is given by its ``wait4`` resource usage instead);
- the machine's busy time is the difference of ``user + nice + system + irq + softirq + steal``
  (``guest`` is part of ``user``; ``idle`` and ``iowait`` are not busy). ``steal`` counts: a
  hypervisor running someone else is the machine being busy with something else;
- the foreign CPU is busy time minus ours (every process we started, this one included), as a
  share of the machine's capacity, ``cores * wall``. Above a threshold the phase is refused.

Every tick the kernel counts is in clock ticks (``SC_CLK_TCK``, 100 a second on Linux). Without
``CONFIG_IRQ_TIME_ACCOUNTING`` an interrupt's ticks land both in /proc/stat's irq/softirq and in
the stime of the process it interrupted, so the foreign share may come out a little low; it is
never below 0.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "CLK_TCK",
    "CpuMeter",
    "CpuUsage",
    "MachineTicks",
    "descendants",
    "foreign_share",
    "parse_machine",
    "parse_process",
    "process_ticks",
    "too_busy",
]

CLK_TCK = os.sysconf("SC_CLK_TCK")
PROC = Path("/proc")


@dataclass(frozen=True)
class MachineTicks:
    busy: int
    total: int


def parse_machine(text: str) -> MachineTicks:
    """The aggregate ``cpu`` line of /proc/stat: busy and total ticks of all cores."""
    for line in text.splitlines():
        if line.startswith("cpu "):
            values = [int(v) for v in line.split()[1:]]
            values += [0] * (8 - len(values))
            user, nice, system, idle, iowait, irq, softirq, steal = values[:8]
            busy = user + nice + system + irq + softirq + steal
            return MachineTicks(busy=busy, total=busy + idle + iowait)
    raise ValueError("no aggregate 'cpu' line in /proc/stat")


def parse_process(text: str) -> tuple[int, int]:
    """``(ppid, utime + stime)`` of one /proc/PID/stat line. The command name (field 2) may hold
    spaces and parentheses: the fields are counted from its last ``)``."""
    rest = text[text.rindex(")") + 2 :].split()
    # rest[0] is field 3 (state): ppid is field 4, utime 14, stime 15.
    return int(rest[1]), int(rest[11]) + int(rest[12])


def _read(pid: int) -> tuple[int, int] | None:
    try:
        return parse_process((PROC / str(pid) / "stat").read_text())
    except (OSError, ValueError, IndexError):  # gone, or a reused number's odd line
        return None


def process_ticks(pid: int) -> int | None:
    """``utime + stime`` of ``pid`` (every thread of it) in clock ticks; None once it is gone."""
    read = _read(pid)
    return None if read is None else read[1]


def descendants(pids: Iterable[int]) -> set[int]:
    """``pids`` and every process below them (``spangate serve --workers N`` forks workers)."""
    parents: dict[int, int] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit() and (read := _read(int(entry.name))) is not None:
            parents[int(entry.name)] = read[0]
    found = set(pids)
    grew = True
    while grew:
        below = {pid for pid, ppid in parents.items() if ppid in found} - found
        found |= below
        grew = bool(below)
    return found


def foreign_share(busy_ticks: int, ours_ticks: float, wall_s: float, cores: int, hz: int) -> float:
    """The machine's busy time that was not ours, as a share of its capacity ``cores * wall``."""
    capacity = wall_s * cores * hz
    if capacity <= 0:
        return 0.0
    return max(0.0, busy_ticks - ours_ticks) / capacity


def too_busy(foreign: float, limit: float) -> bool:
    """Whether a phase with this foreign share is refused; a ``limit`` of 1 or more turns the
    check off (a smoke run on a shared machine)."""
    return limit < 1 and foreign > limit


@dataclass
class CpuUsage:
    """One phase's CPU: seconds per role, ours in all, the machine's busy and foreign share."""

    wall_s: float
    cores: int
    seconds: dict[str, float]
    ours_s: float
    busy_s: float
    foreign: float  # share of the machine's capacity (0..1)

    def per_request_ms(self, role: str, requests: int) -> float | None:
        if role not in self.seconds or requests <= 0:
            return None
        return self.seconds[role] / requests * 1000


@dataclass
class CpuMeter:
    """Measures the processes of each role (their descendants too) and, unreported but ours,
    ``others`` (the OpenID provider, this process), between :meth:`start` and :meth:`stop`."""

    roles: Mapping[str, Iterable[int]]
    others: Iterable[int] = ()
    cores: int = field(default_factory=lambda: os.cpu_count() or 1)
    _pids: dict[str, set[int]] = field(default_factory=dict, init=False)
    _before: dict[int, int] = field(default_factory=dict, init=False)
    _machine: MachineTicks | None = field(default=None, init=False)
    _at: float = field(default=0.0, init=False)

    def start(self) -> None:
        self._pids = {role: descendants(pids) for role, pids in self.roles.items()}
        self._pids[""] = descendants(self.others) - set().union(*self._pids.values())
        self._before = {
            pid: ticks
            for pids in self._pids.values()
            for pid in pids
            if (ticks := process_ticks(pid)) is not None
        }
        self._machine = parse_machine((PROC / "stat").read_text())
        self._at = time.monotonic()

    def stop(self, exited: Mapping[str, float] | None = None) -> CpuUsage:
        """End the measurement. ``exited``: CPU seconds of processes of a role that started and
        ended inside it (their ``wait4`` usage), added to that role."""
        if self._machine is None:
            raise RuntimeError("CpuMeter.stop() before start()")
        machine = parse_machine((PROC / "stat").read_text())
        wall = time.monotonic() - self._at
        ticks: dict[str, float] = {}
        for role, pids in self._pids.items():
            spent = 0
            for pid in pids:
                now = process_ticks(pid)
                if now is not None and pid in self._before:
                    spent += now - self._before[pid]
            ticks[role] = spent
        for role, seconds in (exited or {}).items():
            ticks[role] = ticks.get(role, 0) + seconds * CLK_TCK
        ours = sum(ticks.values())
        busy = machine.busy - self._machine.busy
        return CpuUsage(
            wall_s=wall,
            cores=self.cores,
            seconds={role: t / CLK_TCK for role, t in ticks.items() if role},
            ours_s=ours / CLK_TCK,
            busy_s=busy / CLK_TCK,
            foreign=foreign_share(busy, ours, wall, self.cores, CLK_TCK),
        )
