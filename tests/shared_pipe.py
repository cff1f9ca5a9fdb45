"""Writers sharing one pipe, as the workers of ``spangate serve --workers N`` share stdout and
stderr (test_logs.py, audit/test_audit_stdout_shared.py): a pipe whose read end a thread drains,
and writers run at once, each in a thread of its own."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

__all__ = ["Pipe", "at_once", "drain", "one_pipe"]


def drain(fd: int, into: bytearray) -> None:
    """Read ``fd`` into ``into`` until every write end is closed."""
    while chunk := os.read(fd, 65536):
        into += chunk


@dataclass
class Pipe:
    write: int  # the write end: writers write to it (or to a copy, os.dup)
    received: bytearray = field(default_factory=bytearray)

    def lines(self) -> list[str]:
        return self.received.decode().splitlines()


@contextmanager
def one_pipe() -> Iterator[Pipe]:
    """A pipe whose read end a thread drains into ``Pipe.received``. When the block ends (the
    writers have closed their copies of the write end), its write end is closed, the reader
    joined and the read end closed: ``Pipe.lines()`` is then everything written."""
    read, write = os.pipe()
    pipe = Pipe(write)
    reader = threading.Thread(target=drain, args=(read, pipe.received))
    reader.start()
    yield pipe
    os.close(write)
    reader.join()
    os.close(read)


def at_once(*writers: Callable[[], None]) -> None:
    """Run ``writers`` each in a thread of its own, all started before any is waited for."""
    threads = [threading.Thread(target=writer) for writer in writers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
