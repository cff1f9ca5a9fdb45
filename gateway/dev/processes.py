"""Stopping the processes the development stack starts (each in a session of its own)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from types import TracebackType
from typing import Any, Self

__all__ = ["StoppedOnExit", "terminate_group"]


class StoppedOnExit:
    """A started process used as a context manager: ``stop()`` when the block ends."""

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def terminate_group(proc: subprocess.Popen[Any], timeout: float) -> None:
    """SIGTERM the process group led by ``proc``, wait, then SIGKILL it after ``timeout``.

    The group is signalled only while its leader has not been reaped (poll() is
    None), so the group id cannot have been reused by an unrelated process.
    """
    if proc.poll() is not None:
        return
    pgid = proc.pid  # start_new_session=True: the child leads its own group
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        proc.wait()
