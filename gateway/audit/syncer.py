"""A file sink's background sync: its own daemon thread, so that appending never waits for a sync.

The writer thread appends a batch (``write(2)``) and tells the syncer how far the file now goes
(``appended``, a running byte count across rotations and re-opens). The syncer thread makes the
file durable up to there (``flush``: ``FileSink.sync_appended``) and records how far it got
(``synced``). Nothing else ever calls ``fdatasync``, so a sync held up by the disk (other disk
users, a dying device) never holds up the next append.

When it syncs: as soon as someone waits for bytes not yet synced (``want``: a ``strict`` or
``batched`` event, or a ``written`` one past the backlog bound), else at most once per
``interval`` while there is something to sync (at once after an idle spell longer than that).

What it tells: ``want`` returns True at once when the bytes are synced already; otherwise
``on_synced(synced, error)`` is called on the syncer thread after each sync while anyone waits,
and after every failed one (the writer hands it to its event loop). ``unsynced_bytes``,
``oldest_unsynced`` (when the oldest unsynced byte was appended) and ``running_since`` (the sync
in progress started then) let the writer bound the backlog and see a stall.

A failed sync is tried again after ``RETRY_SECONDS`` (or ``interval``, if longer); ``stop``
makes one last sync of everything appended (one try) and ends the thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

__all__ = ["RETRY_SECONDS", "Syncer"]

log = logging.getLogger("spangate.audit")

RETRY_SECONDS = 0.1


class Syncer:
    def __init__(
        self,
        flush: Callable[[], int],
        *,
        interval: float,
        on_synced: Callable[[int, BaseException | None], None],
        name: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._flush = flush  # syncs everything appended so far; returns how far that was
        self.interval = interval
        self._on_synced = on_synced
        self._clock = clock
        self._cond = threading.Condition(threading.Lock())
        self.appended = 0
        self.synced = 0
        self._marks: deque[tuple[int, float]] = deque()  # (appended up to, when), unsynced
        self._want = 0  # the furthest byte someone waits for (0: nobody)
        self._idle = False  # waiting for an append, with no deadline
        self._stop = False
        self._stopped: Callable[[], None] | None = None
        self._last_start = -float("inf")
        self._retry_at = -float("inf")
        self.running_since: float | None = None  # a sync in progress started then
        # Counters (read by the event loop as they are: single int and float stores)
        self.syncs = 0
        self.failures = 0
        self.seconds_total = 0.0
        self.seconds_max = 0.0
        self.seconds_last = 0.0
        self.last_error: str | None = None
        self._thread = threading.Thread(target=self._run, name=f"audit-sync-{name}", daemon=True)
        self._thread.start()

    # -- the writer thread ---------------------------------------------------------------------
    def appended_to(self, total: int) -> None:
        """The file now goes up to ``total`` (bytes appended by this sink, ever)."""
        now = self._clock()
        with self._cond:
            if total <= self.appended:
                return
            self.appended = total
            self._marks.append((total, now))
            if self._idle:
                self._cond.notify()

    # -- the event loop ------------------------------------------------------------------------
    def want(self, total: int) -> bool:
        """True when everything up to ``total`` is synced; else sync it soon and call
        ``on_synced`` once a sync has covered it (or failed)."""
        with self._cond:
            if self.synced >= total:
                return True
            if total > self._want:
                self._want = total
                self._cond.notify()
            return False

    @property
    def unsynced_bytes(self) -> int:
        return self.appended - self.synced

    def oldest_unsynced(self) -> float | None:
        """When the oldest byte not yet synced was appended (None: all are synced)."""
        with self._cond:
            return self._marks[0][1] if self._marks else None

    def stop(self, stopped: Callable[[], None]) -> None:
        """Sync what was appended, then end the thread and call ``stopped`` on it. A daemon
        thread: a sync that never returns never holds up the process's exit."""
        with self._cond:
            self._stopped = stopped
            self._stop = True
            self._cond.notify()

    # -- the syncer thread ---------------------------------------------------------------------
    def _due(self) -> float | None:
        """Seconds until the next sync should start (<= 0: now; None: nothing to sync)."""
        if self.appended <= self.synced:
            return None
        now = self._clock()
        if self._stop:
            return 0.0
        if self._want > self.synced:
            return self._retry_at - now
        return max(self._last_start + self.interval, self._retry_at) - now

    def _run(self) -> None:
        try:
            self._loop()
        finally:
            if self._stopped is not None:
                self._stopped()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while (due := self._due()) is None or due > 0:
                    if self._stop:
                        return
                    self._idle = due is None
                    self._cond.wait(due)
                    self._idle = False
                started = self._last_start = self.running_since = self._clock()
            error: BaseException | None = None
            covered = 0
            try:
                covered = self._flush()
            except Exception as exc:  # noqa: BLE001 - handed to the writer, logged
                error = exc
            elapsed = self._clock() - started
            with self._cond:
                self.running_since = None
                self.syncs += 1
                self.seconds_total += elapsed
                self.seconds_last = elapsed
                self.seconds_max = max(self.seconds_max, elapsed)
                if error is None:
                    self.synced = max(self.synced, covered)
                    while self._marks and self._marks[0][0] <= self.synced:
                        self._marks.popleft()
                else:
                    self.failures += 1
                    self.last_error = getattr(error, "strerror", None) or str(error)
                    self._retry_at = self._clock() + max(RETRY_SECONDS, self.interval)
                tell = error is not None or self._want > 0
                if self._want <= self.synced:
                    self._want = 0
                synced, stopping = self.synced, self._stop
            if error is not None:
                log.error("audit sync failed (%s bytes unsynced): %s", self.unsynced_bytes, error)
            if tell:
                self._on_synced(synced, error)
            if stopping and error is not None:
                return  # one last try at shutdown, not a loop
