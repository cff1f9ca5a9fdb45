"""How a file sink's rotated files are named and put in order: ``NAME.000001``, ``NAME.000002``, …
then the active ``NAME``.

Rotation gives a file the number after the newest rotated one, so the rotated files of one base
are numbered without gaps; the oldest may have any number (older ones were shipped away).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["RotationGap", "rotation_gaps", "trail_groups", "trail_order"]

_ROTATED = re.compile(r"^(?P<base>.+)\.(?P<n>[0-9]+)$")


def _rotation(path: Path) -> tuple[str, int] | None:
    """(base, number) of a rotated file (``audit.jsonl.000003``, not ``audit.000003``)."""
    m = _ROTATED.match(str(path))
    if m and Path(m.group("base")).suffix:
        return m.group("base"), int(m.group("n"))
    return None


def _order_key(path: Path) -> tuple[str, int]:
    return _rotation(path) or (str(path), 1 << 62)


def trail_order(paths: Sequence[Path]) -> list[Path]:
    """Rotated files (``NAME.000001``…) by number, each base's active file ``NAME`` after them."""
    return sorted(dict.fromkeys(paths), key=_order_key)


def trail_groups(paths: Sequence[Path]) -> list[list[Path]]:
    """``paths`` split into trails, each in ``trail_order``: a file and its rotated files
    (``NAME``, ``NAME.000001``…) are one trail; files of different names are different trails
    (one per worker under ``spangate serve --workers N``: ``audit.w1.jsonl``, ``audit.w2.jsonl``)."""
    groups: dict[str, list[Path]] = {}
    for path in trail_order(paths):
        groups.setdefault(_order_key(path)[0], []).append(path)
    return list(groups.values())


@dataclass(frozen=True)
class RotationGap:
    """Rotated files ``first`` to ``last`` are missing between ``before`` and ``after``."""

    before: Path
    first: Path
    last: Path
    after: Path


def rotation_gaps(paths: Sequence[Path]) -> list[RotationGap]:
    """Every gap in the rotation numbering of ``paths``, in trail order."""
    gaps: list[RotationGap] = []
    last: dict[str, tuple[int, Path]] = {}
    for path in trail_order(paths):
        rotated = _rotation(path)
        if rotated is None:
            continue
        base, number = rotated
        if base in last and number > last[base][0] + 1:
            before, width = last[base], len(path.name) - len(Path(base).name) - 1
            first, final = (Path(f"{base}.{n:0{width}d}") for n in (before[0] + 1, number - 1))
            gaps.append(RotationGap(before[1], first, final, path))
        last[base] = number, path
    return gaps
