"""One lock per output stream shared by the workers of ``spangate serve --workers N``.

The workers inherit the supervisor's stdout and stderr: one pipe (or terminal, or file) each,
often one for both (``2>&1``, a terminal). A write of more than ``PIPE_BUF`` bytes is not atomic
on a pipe, so the audit lines of the stdout sink and the log lines of two workers could split
each other. Each writer holds an exclusive ``flock`` on a lock file while it writes a batch
whole: one lock file per stream, named after what the file descriptor points to (its device and
inode), so stdout and stderr share one lock exactly when they are the same stream, and a log
line never lands inside an audit line. Each process opens the lock file itself: a lock taken
through an inherited descriptor (one open file description for every worker) would exclude no
one. The lock file's first byte says whether the last write was cut short mid-line (``"1"``):
whoever writes next starts with a newline (``gateway.audit.stdout_sink``).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["output_lock_path"]


def output_lock_path(run_dir: Path, fd: int) -> Path:
    """The lock file in ``run_dir`` of the stream ``fd`` points to."""
    stat = os.fstat(fd)
    return run_dir / f"output-{stat.st_dev:x}-{stat.st_ino:x}.lock"
