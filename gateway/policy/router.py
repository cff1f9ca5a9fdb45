"""Compiled path matching: method + raw path -> one route and its decoded path parameters.

Built once per policy. A segment trie: matching walks the request's segments, so its cost depends on
the path's depth, not on the number of routes. Rules:

- the raw (still percent-encoded) path is split on ``/`` and each segment is decoded exactly once;
- a segment that is ``.`` or ``..`` (raw or decoded), contains an encoded ``/`` or ``\\``, a NUL or
  another control character is refused (``PathInvalid``), never normalised into another route;
- a literal segment beats a parameter at the same depth (with backtracking, so ``/a/b/c`` and
  ``/a/{x}/d`` both stay reachable); the validator rejects templates of the same shape;
- a trailing slash is a different path; HEAD follows GET;
- a path that matches some template with another method gives ``MethodMismatch`` (405 + Allow).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from urllib.parse import unquote_to_bytes

__all__ = [
    "Match",
    "MethodMismatch",
    "PathInvalid",
    "Router",
    "check_param_segment",
    "check_segment",
    "template_params",
    "template_segments",
]

_PARAM_RE = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_]*)\}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class PathInvalid(ValueError):
    """The request path is not one any route can match safely."""


@dataclass(frozen=True)
class Match:
    route: int  # the index of the route in the policy
    params: dict[str, str]


@dataclass(frozen=True)
class MethodMismatch:
    allow: tuple[str, ...]


def template_segments(template: str) -> list[str]:
    return template.split("/")[1:]


def template_params(template: str) -> list[str]:
    return [m.group(1) for s in template_segments(template) if (m := _PARAM_RE.match(s))]


@dataclass
class _Leaf:
    methods: dict[str, tuple[int, tuple[str, ...]]] = field(default_factory=dict)


@dataclass
class _Node:
    literal: dict[str, _Node] = field(default_factory=dict)
    param: _Node | None = None
    leaf: _Leaf | None = None


def decode_path(raw_path: str) -> list[str]:
    """Split a raw request path into decoded segments, refusing anything ambiguous."""
    if not raw_path.startswith("/"):
        raise PathInvalid("the path must start with /")
    segments = []
    for raw in raw_path.split("/")[1:]:
        if raw in (".", ".."):
            raise PathInvalid("dot segments are not allowed")
        if "%" in raw:
            try:
                decoded = unquote_to_bytes(raw).decode("utf-8", errors="strict")
            except UnicodeDecodeError:
                raise PathInvalid("the path is not valid UTF-8 after percent-decoding") from None
        else:
            decoded = raw  # what unquote_to_bytes(raw).decode() gives, without the work
        check_segment(decoded)
        segments.append(decoded)
    return segments


def check_segment(decoded: str) -> None:
    """The rule every decoded path segment obeys (``decode_path``; an MCP tool's path arguments
    too): no dot segment, slash, backslash or control character; raises ``PathInvalid``."""
    if decoded in (".", "..") or "/" in decoded or "\\" in decoded:
        raise PathInvalid("encoded dot segments or slashes are not allowed")
    if _CONTROL.search(decoded):
        raise PathInvalid("control characters are not allowed in the path")


def check_param_segment(decoded: str) -> None:
    """A path parameter's value: one segment (``check_segment``) that is not empty (the router
    never matches a parameter on an empty segment)."""
    if decoded == "":
        raise PathInvalid("a path parameter cannot be empty")
    check_segment(decoded)


class Router:
    """Routes as (method, template) pairs, indexed by their position in the policy."""

    def __init__(self, routes: Sequence[tuple[str, str]]) -> None:
        self._root = _Node()
        for index, (method, template) in enumerate(routes):
            node = self._root
            names = []
            for seg in template_segments(template):
                if seg.startswith("{") and _PARAM_RE.match(seg):
                    names.append(seg[1:-1])
                    node.param = node.param or _Node()
                    node = node.param
                else:
                    child = node.literal.get(seg)
                    if child is None:
                        child = node.literal[seg] = _Node()
                    node = child
            node.leaf = node.leaf or _Leaf()
            # First definition wins; the validator reports duplicates before a Router is built.
            node.leaf.methods.setdefault(method.upper(), (index, tuple(names)))

    def _leaves(
        self, node: _Node, segments: list[str], i: int, values: list[str]
    ) -> Iterator[tuple[_Leaf, list[str]]]:
        if i == len(segments):
            if node.leaf is not None:
                yield node.leaf, values
            return
        child = node.literal.get(segments[i])
        if child is not None:
            yield from self._leaves(child, segments, i + 1, values)
        if node.param is not None and segments[i] != "":
            yield from self._leaves(node.param, segments, i + 1, [*values, segments[i]])

    def match(self, method: str, raw_path: str) -> Match | MethodMismatch | None:
        """Match a request; raises PathInvalid for a path that must not be routed."""
        segments = decode_path(raw_path)
        wanted = "GET" if method == "HEAD" else method
        allow: list[str] = []
        for leaf, values in self._leaves(self._root, segments, 0, []):
            hit = leaf.methods.get(wanted)
            if hit is not None:
                index, names = hit
                return Match(index, dict(zip(names, values, strict=True)))
            for m in leaf.methods:
                allow.extend(["GET", "HEAD"] if m == "GET" else [m])
        if allow:
            return MethodMismatch(tuple(sorted(set(allow))))
        return None
