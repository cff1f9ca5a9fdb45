"""Where each issuer keeps what roles read: claims -> scopes, groups, client, user.

Presets: ``okta`` (custom authorization servers: ``scp`` array, ``cid``, ``uid``, ``groups``) and
``oidc`` (RFC 9068 / generic: ``scope`` string, ``client_id`` else ``azp``, ``groups``). An issuer's
``claims:`` overrides any of these names; names are claim paths (dotted for nested claims).
RFC 7662 introspection answers use the standard ``scope`` and ``client_id`` members whatever the
preset, unless ``claims:`` names others.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from gateway.auth.principal import MISSING, Principal, claim_value
from gateway.errors import AuthError
from gateway.policy.model import ClaimNames, Issuer

__all__ = [
    "PRESETS",
    "check_act",
    "claim_names",
    "effective_names",
    "introspection_names",
    "is_org_server",
    "principal_from_claims",
]

PRESETS: Mapping[str, ClaimNames] = MappingProxyType(
    {
        # Okta custom authorization servers: scp is an array, cid the client, uid the user.
        "okta": ClaimNames(groups="groups", scopes="scp", client="cid", user="uid"),
        # Generic OIDC / OAuth 2.0 (RFC 9068): scope is a space-separated string.
        "oidc": ClaimNames(groups="groups", scopes="scope", client="client_id", user=None),
    }
)


def claim_names(issuer: Issuer) -> ClaimNames:
    """The preset's claim names with the issuer's ``claims:`` overrides applied."""
    base = PRESETS[issuer.preset]
    if issuer.claims is None:
        return base
    return base.model_copy(update=issuer.claims.model_dump(exclude_none=True))


def introspection_names(issuer: Issuer) -> ClaimNames:
    """``claim_names`` for an RFC 7662 answer: scopes from ``scope``, the client from
    ``client_id``, unless the issuer's ``claims:`` names other members."""
    names = claim_names(issuer).model_copy(update={"scopes": "scope", "client": "client_id"})
    if issuer.claims is None:
        return names
    return names.model_copy(update=issuer.claims.model_dump(exclude_none=True))


def effective_names(issuer: Issuer, introspected: bool) -> ClaimNames:
    """The claim names a principal of ``issuer`` was read with."""
    return introspection_names(issuer) if introspected else claim_names(issuer)


def is_org_server(issuer: Issuer) -> bool:
    """An Okta org authorization server (``preset: okta``, no ``/oauth2/`` in the issuer's path):
    its access tokens are for Okta's own APIs and cannot be validated locally."""
    return issuer.preset == "okta" and "/oauth2/" not in urlsplit(issuer.issuer).path + "/"


def _strings(value: Any) -> frozenset[str]:
    if value is MISSING or value is None:
        return frozenset()
    if isinstance(value, str):
        return frozenset(value.split())
    if isinstance(value, list):
        return frozenset(v for v in value if isinstance(v, str))
    return frozenset()


def _groups(value: Any) -> frozenset[str]:
    """Groups: an array of names, or one name as a string (never split: "Support Team" is one
    group; only scopes are space-separated)."""
    return frozenset({value}) if isinstance(value, str) and value else _strings(value)


def _string(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def check_act(claims: Mapping[str, Any]) -> None:
    """RFC 8693: ``act`` (and each ``act`` nested in it, for a chain) is a JSON object. Anything
    else is ``token-malformed``: a delegated token must never pass for a direct one, nor name its
    actor in a form the roles, the binding and the audit trail would read differently."""
    node: Any = claims
    while "act" in node:
        node = node["act"]
        if not isinstance(node, Mapping):
            raise AuthError(
                "the token's act claim (RFC 8693 delegation) is not a JSON object",
                code="token-malformed",
            )


def principal_from_claims(
    name: str, names: ClaimNames, claims: Mapping[str, Any], *, introspected: bool = False
) -> Principal:
    """Build the Principal of a verified token (``sub`` and ``iss`` already required); a
    malformed ``act`` is an AuthError (``check_act``). ``introspected``: ``claims`` is an RFC
    7662 answer (``names``: ``introspection_names``)."""
    check_act(claims)
    scopes = _strings(claim_value(claims, names.scopes)) if names.scopes else frozenset()
    if not scopes and names.scopes == "scope":  # generic issuers sometimes use Okta's scp
        scopes = _strings(claim_value(claims, "scp"))
    client = _string(claim_value(claims, names.client)) if names.client else None
    if client is None and names.client == "client_id":
        client = _string(claims.get("azp"))
    return Principal(
        issuer=name,
        iss=str(claims["iss"]),
        subject=str(claims["sub"]),
        client_id=client,
        user_id=_string(claim_value(claims, names.user)) if names.user else None,
        scopes=scopes,
        groups=_groups(claim_value(claims, names.groups)) if names.groups else frozenset(),
        claims=MappingProxyType(dict(claims)),
        token_id=_string(claims.get("jti")),
        expires_at=claims.get("exp") if isinstance(claims.get("exp"), int) else None,
        introspected=introspected,
    )
