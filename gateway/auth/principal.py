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
    """The claim at ``path``: a dotted walk through nested objects first, else the exact key
    (claims like ``https://x.example/roles`` contain dots). The nested claim wins, so a flat claim
    literally named ``org.tenant`` can never stand in for ``org: {tenant: ...}``; under ``act``
    and ``may_act`` (``NESTED_ONLY``) there is no flat fallback at all. Returns ``MISSING`` when
    absent."""
    node: Any = claims
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            if "." not in path or path.split(".", 1)[0] in NESTED_ONLY:
                return MISSING
            return claims.get(path, MISSING)
        node = node[part]
    return node


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
