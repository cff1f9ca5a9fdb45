"""Files named on the command line, read or checked with a usage error instead of a traceback.

A file that is missing, a folder, not a regular file, unreadable or (for text) not UTF-8 raises
``UsageError``: ``spangate`` prints one line naming the option, the path and why, and exits 2
(usage or input errors, ``docs/reference/cli.md``)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from gateway.errors import UsageError

__all__ = ["file_problems", "read_bytes", "read_text", "reason", "require_files"]


def reason(exc: OSError) -> str:
    """Why a file could not be read, in a few words (no errno, no traceback)."""
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if isinstance(exc, IsADirectoryError):
        return "a folder, not a file"
    if isinstance(exc, PermissionError):
        return "permission denied"
    return (exc.strerror or type(exc).__name__).lower()


def read_bytes(path: Path, what: str) -> bytes:
    """The whole file named by option ``what`` (``--key-file``); ``UsageError`` if it cannot be."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {reason(exc)}") from None


def read_text(path: Path, what: str) -> str:
    """``read_bytes`` as UTF-8 text; ``UsageError`` when it is not UTF-8."""
    try:
        return read_bytes(path, what).decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"cannot read {what} {path}: not UTF-8 text") from None


def file_problems(paths: Iterable[Path]) -> list[str]:
    """``PATH: why`` for each of ``paths`` that is no readable regular file."""
    problems = []
    for path in paths:
        if not path.exists():
            why = "no such file"
        elif path.is_dir():
            why = "a folder, not a file"
        elif not path.is_file():
            why = "not a regular file"
        elif not os.access(path, os.R_OK):
            why = "permission denied"
        else:
            continue
        problems.append(f"{path}: {why}")
    return problems


def require_files(paths: Iterable[Path], what: str) -> None:
    """``UsageError`` unless every one of ``paths`` (option or argument ``what``) is a readable
    regular file."""
    problems = file_problems(paths)
    if problems:
        raise UsageError(f"cannot read {what}: {'; '.join(problems)}")
