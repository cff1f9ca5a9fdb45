"""The authenticated caller: a frozen value built from a verified token, read by roles and binding."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

__all__ = ["MISSING", "Principal", "claim_value"]


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


def claim_value(claims: Mapping[str, Any], path: str) -> Any:
    """The claim at ``path``: a dotted walk through nested objects first, else the exact key
    (claims like ``https://x.example/roles`` contain dots). The nested claim wins, so a flat claim
    literally named ``org.tenant`` can never stand in for ``org: {tenant: ...}``. Returns
    ``MISSING`` when absent."""
    node: Any = claims
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return claims.get(path, MISSING) if "." in path else MISSING
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

    @property
    def act(self) -> Mapping[str, Any] | None:
        """RFC 8693 delegation: the actor acting for ``subject`` (nested for chains)."""
        value = self.claims.get("act")
        return value if isinstance(value, Mapping) else None

    def claim(self, path: str) -> Any:
        return claim_value(self.claims, path)
