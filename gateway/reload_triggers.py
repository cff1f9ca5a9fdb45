"""What starts a policy reload (``PolicyReloader.reload``, ``gateway.reload``): SIGHUP, and with
``SPANGATE_WATCH_POLICY`` the file watcher and the poll.

- SIGHUP reloads, and PLAN-analyses an unchanged policy again (``reanalyse``).
- The watcher watches the folders ``gateway.reload_paths`` names, for the changes it says can
  change the policy (a Kubernetes ConfigMap's update included). Once its watches are set up, and
  again after each restart, it reloads once: a change made while it was starting (or down) is
  not missed, and an unchanged policy costs one read.
- It never stops for good: an error in it (an inotify limit, a folder gone) is logged and it is
  restarted with back-off (1 s doubling to 60 s), and counted (``watcher_restarts``).
- A poll (``poll_seconds``, ``SPANGATE_POLICY_POLL_SECONDS``, 30 s) compares a SHA-256 of the
  policy's files (``source.fingerprint``) with the one of the last reload, and reloads when they
  differ (an event any watcher missed: network file systems, a watch limit), or while a refusal
  is to be retried; it also restarts the watcher when the symlinks now lead to other folders.
- A shadow policy (``shadow_path``) is reloaded by the same triggers: the watcher watches its
  folders too, the poll fingerprints its files too.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import signal
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

from gateway.policy.source import fingerprint
from gateway.reload_paths import policy_change, watch_folders

__all__ = ["POLL_SECONDS", "ReloadTriggers", "Watcher"]

log = logging.getLogger("spangate.reload")

# watchfiles.awatch's shape: (*folders, watch_filter=, recursive=, stop_event=, debounce=) ->
# batches of (change, path). Injected in tests (a watcher that fails); awatch otherwise.
Watcher = Callable[..., AsyncIterator[set[tuple[Any, str]]]]

POLL_SECONDS = 30.0  # SPANGATE_POLICY_POLL_SECONDS' default
_RESTART_MAX_SECONDS = 60.0  # the watcher's restart back-off: 1 s doubling to this
_HEALTHY_SECONDS = 60.0  # a watch that ran this long before failing restarts the back-off


class ReloadTriggers(abc.ABC):
    """The triggers of ``reload`` (``PolicyReloader``'s base): ``start`` installs them,
    ``stop`` ends them and any reload in progress."""

    def __init__(
        self,
        path: Path,
        *,
        shadow_path: Path | None,
        watch: bool,
        poll_seconds: float,
        watcher: Watcher | None,
    ) -> None:
        self.path = path
        self.shadow_path = shadow_path
        self.watch = watch
        self.poll_seconds = poll_seconds
        # The last refusal may pass with the files unchanged (issuer keys, an error): retried.
        self.retry = False
        self.watcher_restarts = 0
        self._watcher = watcher
        # the files' fingerprints (each, or None) when the last reload read them
        self._seen: tuple[str | None, ...] | None = None
        self._watching: list[Path] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stop = asyncio.Event()
        self._rewatch = asyncio.Event()  # ends the current watch (stop, or folders changed)

    @abc.abstractmethod
    async def reload(self, *, reanalyse: bool = False) -> bool:
        """Load, validate and swap in the policy; False when it is refused. Never raises (but
        CancelledError)."""

    # -- triggers -----------------------------------------------------------------------------
    async def start(self) -> None:
        """Install the SIGHUP handler and, when enabled, the file watcher and the poll (call on
        the loop)."""
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        except (NotImplementedError, RuntimeError):  # not the main thread, or no signals here
            log.warning("SIGHUP reload is not available in this process")
        if self.watch:
            self._spawn(self._watch_forever(), "policy watcher")
            if self.poll_seconds > 0:
                self._spawn(self._poll_forever(), "policy poll")

    async def stop(self) -> None:
        """Stop the watcher, the poll and any reload in progress (at shutdown)."""
        self._stop.set()
        self._rewatch.set()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task, outcome in zip(
            tasks, await asyncio.gather(*tasks, return_exceptions=True), strict=True
        ):
            if isinstance(outcome, Exception):
                log.error("%s had failed: %s", task.get_name(), outcome, exc_info=outcome)
        try:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        except (NotImplementedError, RuntimeError):
            pass

    def _spawn(self, work: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(work)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._ended)
        return task

    def _ended(self, task: asyncio.Task[Any]) -> None:
        """A task of the reloader ended: it is forgotten, and if it was not stopped, said (the
        watcher and the poll catch everything but cancellation, so this is never expected)."""
        self._tasks.discard(task)
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            log.error("the %s failed: %s", task.get_name(), error, exc_info=error)
        elif not self._stop.is_set() and task.get_name() != "policy reload":
            log.error("the %s stopped", task.get_name())

    def _on_sighup(self) -> None:
        log.info("SIGHUP: reloading %s", self.path)
        self._reload_soon(reanalyse=True)

    def _reload_soon(self, *, reanalyse: bool = False) -> None:
        if not self._stop.is_set():
            self._spawn(self.reload(reanalyse=reanalyse), "policy reload")

    async def _stopped_within(self, seconds: float) -> bool:
        try:
            await asyncio.wait_for(self._stop.wait(), seconds)
        except TimeoutError:
            return False
        return True

    async def _watch_forever(self) -> None:
        """Watch until stopped; a watch that fails or ends is restarted (with back-off after a
        failure), and each (re)start reloads once."""
        loop = asyncio.get_running_loop()
        failures = 0
        while not self._stop.is_set():
            began = loop.time()
            self._rewatch.clear()
            try:
                await self._watch_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the watcher must outlive anything: logged, restarted
                if loop.time() - began >= _HEALTHY_SECONDS:
                    failures = 0
                wait = min(2.0**failures, _RESTART_MAX_SECONDS)
                failures += wait < _RESTART_MAX_SECONDS
                self.watcher_restarts += 1
                log.error(
                    "the policy watcher failed (%s: %s): restarting it in %g s%s",
                    type(exc).__name__,
                    exc,
                    wait,
                    f"; the poll every {self.poll_seconds:g} s covers the gap"
                    if self.poll_seconds > 0
                    else "",
                    exc_info=exc,
                )
                if await self._stopped_within(wait):
                    return
            else:
                if self._stop.is_set():
                    return
                self.watcher_restarts += 1
                log.info("watching the policy again: %s", ", ".join(map(str, self._watching)))

    async def _watch_once(self) -> None:
        watcher = self._watcher
        if watcher is None:
            from watchfiles import awatch

            watcher = awatch
        folders = self._watching = self._folders()
        tests = [policy_change(path) for path in self._paths()]
        # Runs once the watcher has set up its watches (it does so before its first wait): a
        # change since the policy was read, or while no watch was running, is reloaded.
        asyncio.get_running_loop().call_soon(self._reload_soon)
        async for _changes in watcher(
            *folders,
            watch_filter=lambda _change, changed: any(test(changed) for test in tests),
            recursive=False,
            stop_event=self._rewatch,
            debounce=200,
        ):
            log.info("%s changed: reloading", self.path)
            await self.reload()

    async def _poll_forever(self) -> None:
        while not await self._stopped_within(self.poll_seconds):
            try:
                current = await asyncio.to_thread(self._fingerprint)
                if current != self._seen or self.retry:
                    log.info(
                        "%s: %s; reloading",
                        self.path,
                        "retrying the refused reload" if current == self._seen else "changed",
                    )
                    await self.reload()
                folders = await asyncio.to_thread(self._folders)
                if folders != self._watching:
                    log.info("the policy's symlinks lead elsewhere now: watching them again")
                    self._rewatch.set()
            except asyncio.CancelledError:
                raise
            except Exception:  # the poll must outlive anything: logged, polled again
                log.exception("the policy poll failed; polling again in %g s", self.poll_seconds)

    def _paths(self) -> list[Path]:
        """The live policy's path, and the shadow's when there is one."""
        return [p for p in (self.path, self.shadow_path) if p is not None]

    def _folders(self) -> list[Path]:
        folders: list[Path] = []
        for path in self._paths():
            folders += [f for f in watch_folders(path) if f not in folders]
        return folders

    def _fingerprint(self) -> tuple[str | None, ...]:
        """The policy's fingerprint and the shadow's, each on its own (None: that file cannot
        be read): a shadow file removed, or unreadable, never hides a change of the live one."""
        return tuple(fingerprint(path) for path in self._paths())
