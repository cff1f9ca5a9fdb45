"""Routes that can shadow each other: two templates, one method, one path both match. Pure.

A template's segments are literals or parameters; a parameter matches any one non-empty segment.
Templates of different depths never match the same path. Of two templates of one depth:

- ``A`` refines ``B`` when every path ``A`` matches, ``B`` matches too: at each position ``B`` has
  a parameter, or the same literal as ``A``;
- they overlap when some path matches both: at each position the literals are equal, or one of
  them is a parameter (facing a non-empty literal).

The router prefers a literal to a parameter at the first position where two templates differ, so
when one of two overlapping templates refines the other, the more specific one always wins and
both stay reachable. When neither refines the other (``/a/{x}`` and ``/{y}/b``, both matching
``/a/b``), the winner would be an accident of the order of segments, unless a third route is
exactly their intersection (``/a/b``, which refines both and wins). The loader refuses such a pair
without that route, so for every request that matches, exactly one matching route is more specific
than all the others (the property tests check this against an enumeration of paths).
Equal shapes (each refines the other) are duplicates, reported by the validator itself.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

__all__ = ["Overlap", "overlaps", "refines", "route_overlaps", "segments_of"]

_PARAM = re.compile(r"^\{[A-Za-z_][A-Za-z0-9_]*\}$")

Segments = tuple[str | None, ...]  # None: a parameter


@dataclass(frozen=True)
class Overlap:
    """Routes ``later`` and ``earlier`` (indices, ``earlier < later``) both match ``example``,
    and no route is ``meet``, the template of every path they both match."""

    later: int
    earlier: int
    example: str
    meet: str


def segments_of(template: str) -> Segments:
    """``/a/{x}/`` -> ``("a", None, "")``."""
    return tuple(None if _PARAM.match(s) else s for s in template.split("/")[1:])


def _meet(a: str | None, b: str | None) -> bool:
    if a is None:
        return b != ""  # a parameter meets any literal but the empty trailing segment
    if b is None:
        return a != ""
    return a == b


def overlaps(a: Segments, b: Segments) -> bool:
    """Whether some path matches both templates."""
    return len(a) == len(b) and all(_meet(x, y) for x, y in zip(a, b, strict=True))


def refines(a: Segments, b: Segments) -> bool:
    """Whether every path that ``a`` matches, ``b`` matches too."""
    return len(a) == len(b) and all(
        (y is None and x != "") or x == y for x, y in zip(a, b, strict=True)
    )


def _meet_template(a: str, b: str) -> str:
    pairs = zip(a.split("/")[1:], b.split("/")[1:], strict=True)
    return "/" + "/".join(x if not x.startswith("{") else y for x, y in pairs)


def _example(a: Segments, b: Segments) -> str:
    return "/" + "/".join(
        x if x is not None else (y if y is not None else "x") for x, y in zip(a, b, strict=True)
    )


@dataclass
class _Node:
    literal: dict[str, _Node] = field(default_factory=dict)
    param: _Node | None = None
    routes: list[int] = field(default_factory=list)


def _insert(root: _Node, segments: Segments, index: int) -> None:
    node = root
    for seg in segments:
        if seg is None:
            node.param = node.param or _Node()
            node = node.param
        else:
            node = node.literal.setdefault(seg, _Node())
    node.routes.append(index)


def _overlapping(node: _Node, segments: Segments, i: int) -> Iterator[int]:
    if i == len(segments):
        yield from node.routes
        return
    seg = segments[i]
    if seg is None:
        for literal, child in node.literal.items():
            if literal != "":
                yield from _overlapping(child, segments, i + 1)
    elif seg in node.literal:
        yield from _overlapping(node.literal[seg], segments, i + 1)
    if node.param is not None and seg != "":
        yield from _overlapping(node.param, segments, i + 1)


def route_overlaps(routes: Sequence[tuple[str, str]]) -> list[Overlap]:
    """Every pair of (method, template) routes that can shadow each other (duplicates aside).

    A trie per method: each template is compared only with the earlier templates it overlaps, so
    the cost grows with the number of overlaps, not with the square of the number of routes.
    """
    tries: dict[str, _Node] = {}
    shapes = [segments_of(template) for _, template in routes]
    present = {(method.upper(), shape) for (method, _), shape in zip(routes, shapes, strict=True)}
    found: list[Overlap] = []
    for index, (method, template) in enumerate(routes):
        shape = shapes[index]
        root = tries.setdefault(method.upper(), _Node())
        for other in _overlapping(root, shape, 0):
            theirs = shapes[other]
            if refines(shape, theirs) or refines(theirs, shape):
                continue
            meet = tuple(x if x is not None else y for x, y in zip(shape, theirs, strict=True))
            if (method.upper(), meet) not in present:
                both = _meet_template(template, routes[other][1])
                found.append(Overlap(index, other, _example(shape, theirs), both))
        _insert(root, shape, index)
    return found
