"""The authenticated caller: a frozen value built from a verified token, read by roles and binding."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

__all__ = ["MISSING", "NESTED_ONLY", "Principal", "claim_value", "is_delegation_path"]


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()

# RFC 8693 delegation claims: JSON objects, read only as such. A path under one of them never
# falls back to a flat claim, so a token carrying a claim literally named ``act.sub`` is no
# delegated token and names no actor.
NESTED_ONLY = frozenset({"act", "may_act"})


def is_delegation_path(path: str) -> bool:
    """Whether ``path`` reads the ``act`` claim or a claim under it (the current actor)."""
    return path.split(".", 1)[0] == "act"


def claim_value(claims: Mapping[str, Any], path: str) -> Any:
    """The claim at ``path``, a dot-separated walk through nested objects. A key may itself
    contain dots (``kubernetes.io``, ``https://x.example/roles``): at each object the walk tries
    the shortest key first (``a``, then ``a.b``, then ``a.b.c``...) and backtracks to a longer
    one when the shorter leads nowhere; the first complete walk found wins. So the nested claim
    wins (a flat claim literally named ``org.tenant`` never stands in for ``org: {tenant: ...}``),
    ``kubernetes.io.namespace`` reaches ``{"kubernetes.io": {"namespace": ...}}``, and an exact
    top-level key is found last. Under ``act`` and ``may_act`` (``NESTED_ONLY``) only the plain
    walk counts (one key per dot). Returns ``MISSING`` when absent."""
    parts = path.split(".")
    if parts[0] in NESTED_ONLY:
        node: Any = claims
        for part in parts:
            if not isinstance(node, Mapping) or part not in node:
                return MISSING
            node = node[part]
        return node
    return _walk(claims, parts, 0, set())


def _walk(node: Any, parts: list[str], start: int, dead: set[tuple[int, int]]) -> Any:
    """``claim_value``'s backtracking walk from ``parts[start]`` in ``node``. ``dead`` remembers
    (object, position) pairs that led nowhere, so a hostile token's keys cannot make the walk
    try every split of a long path more than once per object."""
    if start == len(parts):
        return node
    if not isinstance(node, Mapping) or (id(node), start) in dead:
        return MISSING
    for end in range(start + 1, len(parts) + 1):
        key = ".".join(parts[start:end])
        if key in node:
            found = _walk(node[key], parts, end, dead)
            if found is not MISSING:
                return found
    dead.add((id(node), start))
    return MISSING


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling. ``issuer`` is the policy's name for the token's issuer, ``iss`` its URL."""

    issuer: str
    iss: str
    subject: str
    client_id: str | None = None
    user_id: str | None = None
    scopes: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()
    claims: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    token_id: str | None = None
    expires_at: int | None = None
    introspected: bool = False  # from an RFC 7662 answer (an opaque token), not a JWT's claims

    @property
    def act(self) -> Mapping[str, Any] | None:
        """RFC 8693 delegation: the actor acting for ``subject`` (nested for chains)."""
        value = self.claims.get("act")
        return value if isinstance(value, Mapping) else None

    @property
    def delegated(self) -> bool:
        """The token carries an ``act`` claim: someone (``act.sub``) acts for ``subject``. Any
        ``act`` counts (verification refuses one that is not an object), so a malformed one can
        never make a delegated token pass for a direct one."""
        return "act" in self.claims

    @property
    def actors(self) -> tuple[str | None, ...]:
        """The ``sub`` of each actor of the ``act`` chain, the current actor first."""
        out: list[str | None] = []
        node: Any = self.act
        while isinstance(node, Mapping) and len(out) < 16:
            sub = node.get("sub")
            out.append(sub if isinstance(sub, str) else None)
            node = node.get("act")
        return tuple(out)

    def claim(self, path: str) -> Any:
        return claim_value(self.claims, path)
