"""Where audit lines go. Sinks are blocking and called from the trail's writer thread only."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Protocol

__all__ = ["FileSink", "Sink", "StdoutSink"]


class Sink(Protocol):
    name: str

    def write(self, data: bytes) -> None:
        """Append whole lines; raise OSError when they cannot be written."""

    def close(self) -> None: ...


class FileSink:
    """JSON lines appended with O_APPEND: one write per batch, so lines never interleave."""

    def __init__(self, path: Path, *, fsync: bool = False) -> None:
        self.name = f"file:{path}"
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        self._fsync = fsync

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        if self._fsync:
            os.fsync(self._fd)

    def close(self) -> None:
        os.close(self._fd)


class StdoutSink:
    def __init__(self) -> None:
        self.name = "stdout"

    def write(self, data: bytes) -> None:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()

    def close(self) -> None:
        sys.stdout.buffer.flush()
