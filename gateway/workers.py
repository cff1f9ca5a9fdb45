"""``spangate serve --workers N``: N processes serving on one port, and the supervisor above them.

How the port is shared: the supervisor binds the listening socket once (uvicorn's own
``Config.bind_socket``: the address, ``SO_REUSEADDR``), and the admin port's when
``SPANGATE_ADMIN_PORT`` is set (``gateway.admin``), and starts each worker as a fresh
interpreter (``python -P -m gateway.workers``: ``-P``, so a ``gateway`` or any other module in the
working directory is never imported in its place) that inherits them; each worker runs exactly the server
of a single ``spangate serve`` (``gateway.server.run_server``: the ``GatewayHttpProtocol`` with its
limits, the drain) on that socket, so the kernel hands each new connection to one worker. Not
uvicorn's own ``Multiprocess`` supervisor: it restarts every worker on SIGHUP (the gateway reloads
its policy instead) and cannot tell a worker which one it is (each worker's audit file must be its
own, and continued by its replacement). Not ``SO_REUSEPORT`` either: a worker that stops
listening there resets the connections waiting in its own queue, where a shared queue leaves them
to the workers still listening.

Each worker builds its own gateway (Spanner clients, key caches, audit trail with its own chain,
sealed with its number, and, for a file sink, its own file ``NAME.wK.EXT``), and holds its own
connection limits, introspection budget and in-process counters.

The supervisor:

- checks the settings and the policy first, with the very checks of one process
  (``gateway.runtime.check_startup``: the same message and exit code 2, no worker started);
- creates a private directory (``spangate-*``, mode 0700) under the temporary directory
  (``TMPDIR``, else ``/tmp``: the one writable place in a read-only container) and removes it
  when it exits: ``metrics/`` is every worker's ``PROMETHEUS_MULTIPROC_DIR``, so ``/metrics``
  sums every worker whichever answers (a dead worker's live gauges are dropped:
  ``mark_process_dead``); ``output-*.lock`` (one per shared stream, ``gateway.output``) makes
  each audit batch on stdout and each batch of log lines on stderr whole;
- forwards SIGHUP to every worker (each reloads its policy) and SIGTERM to every worker on
  SIGTERM or SIGINT (each drains, finishes its requests, flushes its trail, exits 0); workers run
  in their own process group, so a terminal's Ctrl-C reaches them once, through the supervisor,
  and a stop signal that comes within a second of the one before is that same stop delivered
  twice (a process group's signal forwarded by a wrapper), not a second one
  (``gateway.server.StopSignals``); a second one sent later still ends the drain at once;
- starts each worker with those signals blocked; the worker records what arrives before its
  server's handlers exist (SIGTERM's and SIGHUP's default action would end it, unflushed) and
  acts on it once it has started;
- keeps the policy it checked, and each worker the one it accepts on a reload, in
  ``accepted-policy.json`` there: every worker loads that one, so a replacement serves what the
  gateway has accepted, never a policy file edited since and not reloaded (``gateway.accepted``);
- restarts a worker that died with the same number, after 1 s, then twice as long each time it
  dies again (at most 30 s; a worker that ran a minute starts over at 1 s), counted by
  ``spangate_worker_restarts_total{worker}``, unless it failed to start (exit 3): then every
  worker is stopped and the supervisor exits 3; more than 5 deaths of workers within 60 s is a
  restart storm: every worker is stopped, and the supervisor says so and exits 1;
- closes its own copy of the listening sockets as soon as it stops (the port is free once the
  workers have closed theirs, while they still finish their requests);
- exits 0 when every worker exited 0 after the stop, else 1.

A worker whose supervisor disappears (killed with SIGKILL) gets SIGTERM from the kernel
(``prctl(PR_SET_PDEATHSIG)``, Linux), so it drains and stops by itself, and none is left
listening on the port; where that is not available it notices within a second (its parent's
pid changed).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from gateway.server import StopSignals
from gateway.settings import Settings

__all__ = [
    "STARTUP_FAILURE",
    "STORM_EXIT",
    "CrashBudget",
    "die_with_parent",
    "restart_delay",
    "run_workers",
    "worker_main",
]

log = logging.getLogger("spangate.workers")

STARTUP_FAILURE = 3  # uvicorn's exit code for a server that could not start
# Restarting workers that died: the first replacement after RESTART_FIRST_SECONDS, each next one
# of the same worker after twice as long (at most RESTART_MAX_SECONDS); a worker that ran
# HEALTHY_SECONDS before it died starts over at the first delay. More than STORM_CRASHES deaths
# (of all workers) within STORM_SECONDS is a restart storm: the supervisor stops every worker and
# exits STORM_EXIT, for the orchestrator to see (a crash loop it can report and back off).
RESTART_FIRST_SECONDS = 1.0
RESTART_MAX_SECONDS = 30.0
HEALTHY_SECONDS = 60.0
STORM_CRASHES = 5
STORM_SECONDS = 60.0
STORM_EXIT = 1
_POLL_SECONDS = 0.1
# What the supervisor passes on to its workers; blocked while one is started (see worker_main).
_FORWARDED = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP})


@dataclass
class _Slot:
    number: int
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    exits: list[int] = field(default_factory=list)
    crashes: int = 0  # deaths in a row (reset by a worker that ran HEALTHY_SECONDS)
    due: float = 0.0  # when the next replacement may start
    restarts: int = 0


def restart_delay(crashes: int) -> float:
    """How long after its ``crashes``-th death in a row a worker is started again."""
    return min(RESTART_FIRST_SECONDS * 2.0 ** max(crashes - 1, 0), RESTART_MAX_SECONDS)


class CrashBudget:
    """Worker deaths within the last ``seconds``: more than ``crashes`` of them is a storm."""

    def __init__(
        self,
        crashes: int = STORM_CRASHES,
        seconds: float = STORM_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.crashes = crashes
        self.seconds = seconds
        self._clock = clock
        self._times: list[float] = []

    def crashed(self) -> bool:
        """Note one death; True when that makes more than ``crashes`` within ``seconds``."""
        now = self._clock()
        self._times = [t for t in self._times if now - t < self.seconds] + [now]
        return len(self._times) > self.crashes


class _Supervisor:
    def __init__(
        self,
        settings: Settings,
        env: Mapping[str, str],
        sock: socket.socket,
        run_dir: Path,
        admin: socket.socket | None = None,
    ) -> None:
        self.settings = settings
        self.sock = sock
        self.admin = admin
        self.run_dir = run_dir
        self.metrics_dir = str(run_dir / "metrics")
        self.env = {**env, "PROMETHEUS_MULTIPROC_DIR": self.metrics_dir}
        self.slots = [_Slot(n) for n in range(1, settings.workers + 1)]
        self.pending: list[int] = []  # signals received, handled by the loop
        self.stops = 0  # SIGTERM/SIGINT received (each stop once)
        self.stop_signals = StopSignals()
        self.failed = False  # a worker could not start
        self.storm = False  # workers died too often (CrashBudget)
        self.budget = CrashBudget()

    # -- signals ------------------------------------------------------------------------------
    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        if sig != signal.SIGHUP and not self.stop_signals.count():
            return  # the same stop delivered twice (gateway.server.StopSignals)
        self.pending.append(sig)  # handled in the loop: nothing else in a signal handler

    def _handle_signals(self) -> None:
        while self.pending:
            sig = self.pending.pop(0)
            if sig == signal.SIGHUP:
                log.info("SIGHUP: every worker reloads its policy")
                self._send(signal.SIGHUP)
            else:  # SIGTERM or SIGINT: each drains and stops; again: each stops sooner
                self.stops += 1
                log.info("%s: stopping %d worker(s)", signal.Signals(sig).name, len(self.slots))
                self._release()
                self._send(signal.SIGTERM)

    def _release(self) -> None:
        """Close the supervisor's own copies of the listening sockets (it starts no worker any
        more): once the workers have closed theirs the port is free for a new instance, and no
        connection waits in a queue that nobody will accept from."""
        self.sock.close()
        if self.admin is not None:
            self.admin.close()

    def _send(self, sig: int) -> None:
        for slot in self.slots:
            if slot.process is not None and slot.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    slot.process.send_signal(sig)

    # -- workers ------------------------------------------------------------------------------
    def _start(self, slot: _Slot) -> None:
        fd = self.sock.fileno()
        fds = [fd]
        admin: list[str] = []
        if self.admin is not None:
            fds.append(self.admin.fileno())
            admin = ["--admin-fd", str(self.admin.fileno())]
        # Started with the forwarded signals blocked (a child inherits the mask across exec):
        # one sent before the worker's handlers exist waits for them (see worker_main).
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _FORWARDED)
        try:
            slot.process = self._spawn(slot, fd, fds, admin)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        slot.started = time.monotonic()
        log.info("worker %d started (pid %d)", slot.number, slot.process.pid)

    def _spawn(
        self, slot: _Slot, fd: int, fds: list[int], admin: list[str]
    ) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [
                sys.executable,
                "-P",  # no script folder or working directory on sys.path: only what is installed
                "-m",
                "gateway.workers",
                "--worker",
                str(slot.number),
                "--fd",
                str(fd),
                *admin,
                "--parent",
                str(os.getpid()),
                "--run-dir",
                str(self.run_dir),
                *(["--replacement"] if slot.restarts else []),
            ],
            env=self.env,
            pass_fds=tuple(fds),
            start_new_session=True,  # Ctrl-C reaches the supervisor, which forwards it once
        )

    def _reap(self, slot: _Slot) -> None:
        """Account for a worker that exited; restart it unless stopping or it could not start."""
        from prometheus_client.multiprocess import mark_process_dead

        process = slot.process
        assert process is not None and process.returncode is not None
        mark_process_dead(process.pid, self.metrics_dir)  # type: ignore[no-untyped-call]
        slot.exits.append(process.returncode)
        slot.process = None
        if self.stops:
            log.info("worker %d (pid %d) exited %d", slot.number, process.pid, process.returncode)
            return
        if process.returncode == STARTUP_FAILURE:
            log.error("worker %d could not start: stopping every worker", slot.number)
            self.failed = True
            self.stops += 1
            self._release()
            self._send(signal.SIGTERM)
            return
        if self.budget.crashed():
            log.error(
                "restart storm: worker %d (pid %d) died (exit %d), the %dth worker death within "
                "%g s: stopping every worker and exiting %d (look for the cause in the lines "
                "before this one)",
                slot.number,
                process.pid,
                process.returncode,
                self.budget.crashes + 1,
                self.budget.seconds,
                STORM_EXIT,
            )
            self.storm = True
            self.stops += 1
            self._release()
            self._send(signal.SIGTERM)
            return
        now = time.monotonic()
        slot.crashes = 1 if now - slot.started >= HEALTHY_SECONDS else slot.crashes + 1
        delay = restart_delay(slot.crashes)
        slot.due = now + delay
        log.error(
            "worker %d (pid %d) died (exit %d): starting another in its place in %g s",
            slot.number,
            process.pid,
            process.returncode,
            delay,
        )

    def run(self) -> int:
        handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in handled}
        try:
            for slot in self.slots:
                self._start(slot)
            while True:
                self._handle_signals()
                running = 0
                for slot in self.slots:
                    if slot.process is not None and slot.process.poll() is not None:
                        self._reap(slot)
                    if slot.process is None and not self.stops:
                        if time.monotonic() >= slot.due:
                            slot.restarts += 1
                            self._start(slot)
                    running += slot.process is not None
                if self.stops and not running:
                    break
                time.sleep(_POLL_SECONDS)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if self.failed:
            return STARTUP_FAILURE
        if self.storm:
            return STORM_EXIT
        last = [slot.exits[-1] for slot in self.slots if slot.exits]
        return 0 if last and all(code == 0 for code in last) else 1


def run_workers(settings: Settings, env: Mapping[str, str]) -> int:
    """Supervise ``settings.workers`` workers on one socket until stopped (see the module
    docstring); the exit code is the supervisor's."""
    from gateway.accepted import save_accepted
    from gateway.runtime import check_startup
    from gateway.server import bind_admin_socket, server_config

    # The checks of one process, before any worker starts: the same refusal (exit 2).
    checked = check_startup(settings, env)
    sock = server_config(None, settings).bind_socket()  # exits 3 when the address is taken
    # The admin port likewise: bound once, inherited by every worker (gateway.admin).
    admin = bind_admin_socket(settings) if settings.admin_port else None
    run_dir = Path(tempfile.mkdtemp(prefix="spangate-"))  # 0700, new: nothing stale in it
    try:
        (run_dir / "metrics").mkdir()
        # Every worker, the first ones too, loads the policy checked here (gateway.accepted).
        save_accepted(run_dir, checked.policy, checked.shadow)
        return _Supervisor(settings, env, sock, run_dir, admin).run()
    finally:
        sock.close()
        if admin is not None:
            admin.close()
        shutil.rmtree(run_dir, ignore_errors=True)


def worker_main(argv: Sequence[str] | None = None) -> int:
    """One worker: the gateway of worker ``--worker`` served on the inherited socket ``--fd``."""
    parser = argparse.ArgumentParser(prog="python -m gateway.workers")
    parser.add_argument("--worker", type=int, required=True)
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--admin-fd", type=int)
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--replacement", action="store_true")  # started after one died
    args = parser.parse_args(argv)
    # Signals before the server's handlers (its own, the reloader's SIGHUP) are recorded, not
    # lost nor fatal (SIGTERM's and SIGHUP's default action ends the process), and raised again
    # once it has started. The supervisor starts a worker with them blocked: none is lost in
    # the moment before these handlers exist either.
    early = _EarlySignals()
    early.install()
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _FORWARDED)
    parent: int | None = args.parent
    if die_with_parent():
        parent = None  # no need to watch for it: the kernel says so (SIGTERM)
    if os.getppid() != args.parent:  # the supervisor died before that: stop as if told to
        early.received.append(signal.SIGTERM)
    sock = socket.socket(fileno=args.fd)
    from gateway.logs import configure_logging, share_output
    from gateway.runtime import build_gateway
    from gateway.server import run_server

    settings = Settings()
    share_output(args.run_dir)  # stderr is every worker's: whole lines under a shared lock
    configure_logging(settings.log_format, settings.log_level)
    try:
        app = build_gateway(settings, env=os.environ, worker=args.worker, run_dir=args.run_dir)
    except Exception:
        log.exception("worker %d could not start", args.worker)
        return STARTUP_FAILURE
    app.metrics.worker_started(args.worker, replacement=args.replacement)
    admin = socket.socket(fileno=args.admin_fd) if args.admin_fd is not None else None
    return run_server(
        app, settings, sockets=[sock], parent=parent, admin_socket=admin, early=early.received
    )


class _EarlySignals:
    """SIGTERM, SIGINT and SIGHUP received while the worker starts, in order (the server raises
    them again once it has started: ``gateway.server.GatewayServer``)."""

    def __init__(self) -> None:
        self.received: list[int] = []

    def install(self) -> None:
        for sig in _FORWARDED:
            signal.signal(sig, self._record)

    def _record(self, sig: int, frame: FrameType | None) -> None:
        self.received.append(sig)


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(sig: int = signal.SIGTERM) -> bool:
    """Have the kernel send ``sig`` to this process when its parent dies (Linux:
    ``prctl(PR_SET_PDEATHSIG)``, through ctypes; cleared by fork, kept across exec). False where
    that is not available (then a worker watches its parent's pid instead)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


if __name__ == "__main__":
    sys.exit(worker_main())
