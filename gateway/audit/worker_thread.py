"""One daemon thread running jobs in order: an audit sink's writer thread.

A ``ThreadPoolExecutor``'s threads are joined at interpreter exit: one stuck in a sink would keep
the process from exiting; this one is a daemon. ``post`` runs a job with no future at all (the
job hands its result back itself: one ``call_soon_threadsafe``); ``submit`` (the ``Executor``
interface, for ``run_in_executor``) is for the rare calls that want one.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import ParamSpec, TypeVar

__all__ = ["WorkerThread"]

_P = ParamSpec("_P")
_T = TypeVar("_T")


class WorkerThread(Executor):
    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], object] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def post(self, fn: Callable[_P, object], /, *args: _P.args, **kwargs: _P.kwargs) -> None:
        """Run ``fn(*args)`` after the jobs before it; its exceptions are the job's to handle."""
        self._jobs.put(lambda: fn(*args, **kwargs))

    def submit(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> Future[_T]:
        future: Future[_T] = Future()

        def job() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:  # noqa: BLE001 - handed to the waiter
                future.set_exception(exc)

        self._jobs.put(job)
        return future

    def _loop(self) -> None:
        while (job := self._jobs.get()) is not None:
            job()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._jobs.put(None)
        if wait:
            self._thread.join()
