"""Where each issuer keeps what roles read (claims -> scopes, groups, client, user), and the
rules a preset adds to verification.

Presets:

- ``okta`` (custom authorization servers: ``scp`` array, ``cid``, ``uid``, ``groups``) and
  ``oidc`` (RFC 9068 / generic: ``scope`` string, ``client_id`` else ``azp``, ``groups``);
- ``kubernetes``: a cluster's service-account tokens. ``sub`` must read
  ``system:serviceaccount:NS:NAME`` and agree with the nested ``kubernetes.io`` claims (when they
  are there); a token with an audience of the API server's (a default token, also when it names
  the gateway's audience beside it, or a legacy Secret-based one,
  ``iss: kubernetes/serviceaccount``) is refused with ``api-server-token`` and
  told to use a projected token with the gateway's audience;
- ``google``: Google-signed ID tokens, where the ID token is the credential (``refuse_id_tokens``
  does not apply). ``email`` must be there (``email-missing``) and ``email_verified`` exactly
  ``true`` (``email-unverified``); the principal's subject is the ``email``. The issuer
  ``https://accounts.google.com`` also accepts tokens whose ``iss`` is ``accounts.google.com``
  (Google issues both);
- ``github-actions``: GitHub's OIDC tokens for workflow jobs; ``sub`` as GitHub builds it,
  ``actor`` as the user, every other claim (``repository``, ``ref``, ``environment``...) by name.

An issuer's ``claims:`` overrides any claim name; names are claim paths (dotted for nested
claims, see ``claim_value``). RFC 7662 introspection answers use the standard ``scope`` and
``client_id`` members whatever the preset, unless ``claims:`` names others.

Anyone can get a Google ID token or a GitHub Actions token for any audience (any service account
of any project, any workflow of any repository): the audience does not keep strangers out. The
policy's validation therefore requires every role entry that allows a route to such an issuer's
callers to test one of the preset's ``PINS`` claims with values or a pattern naming the owner
(``gateway/policy/pinning.py``); and the issuers of Google and GitHub Actions load only under
their own preset (``gateway/auth/wellknown.py``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from gateway.auth.audiences import api_server_audience
from gateway.auth.principal import MISSING, Principal, claim_value
from gateway.auth.wellknown import GOOGLE_ISSUER
from gateway.errors import AuthError
from gateway.policy.model import ClaimNames, Issuer

__all__ = [
    "GOOGLE_ISSUER",
    "LEGACY_KUBERNETES_ISSUER",
    "PINS",
    "PRESETS",
    "WORKLOAD_PRESETS",
    "accepted_iss",
    "audience_refusal",
    "check_act",
    "claim_names",
    "effective_names",
    "introspection_names",
    "is_org_server",
    "legacy_kubernetes_refusal",
    "principal_for_issuer",
    "principal_from_claims",
    "subject_claim",
]

PRESETS: Mapping[str, ClaimNames] = MappingProxyType(
    {
        # Okta custom authorization servers: scp is an array, cid the client, uid the user.
        "okta": ClaimNames(groups="groups", scopes="scp", client="cid", user="uid"),
        # Generic OIDC / OAuth 2.0 (RFC 9068): scope is a space-separated string.
        "oidc": ClaimNames(groups="groups", scopes="scope", client="client_id", user=None),
        # Workload tokens carry no scopes, groups or client: roles test their claims.
        "kubernetes": ClaimNames(),
        "google": ClaimNames(),
        "github-actions": ClaimNames(user="actor"),
    }
)

# Presets for workload tokens: JWTs only (no introspection), each with rules of its own.
WORKLOAD_PRESETS = frozenset({"kubernetes", "google", "github-actions"})

# Presets whose tokens anyone can get for any audience, and the claims that can say who the
# caller is: an allowing role entry must test one of them with a value or a pattern that names
# the owner (``gateway/policy/pinning.py``). Not ``job_workflow_ref``: it names the reusable
# workflow a job calls, the same for every repository that calls it.
PINS: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        "google": frozenset({"email", "sub"}),
        "github-actions": frozenset(
            {
                "sub",
                "repository",
                "repository_id",
                "repository_owner",
                "repository_owner_id",
                "workflow_ref",
                "enterprise",
                "enterprise_id",
            }
        ),
    }
)

LEGACY_KUBERNETES_ISSUER = "kubernetes/serviceaccount"
_SERVICE_ACCOUNT = re.compile(r"system:serviceaccount:([^:]+):([^:]+)")

_MINT_ADVICE = {
    "kubernetes": "mount a projected service-account token with audience {aud} "
    "(serviceAccountToken.audience in the pod's projected volume)",
    "google": "mint the ID token for audience {aud} "
    "(gcloud auth print-identity-token --audiences={aud} --include-email, or the metadata "
    "server's identity?audience={aud}&format=full)",
    "github-actions": "request the job's token for audience {aud} "
    "(permissions: id-token: write, then core.getIDToken('{aud}'))",
}


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


def subject_claim(issuer: Issuer) -> str:
    """The claim that names the principal (``Principal.subject``): ``email`` under ``google``
    (a service account's numeric ``sub`` says nothing to a reader of the audit trail), else
    ``sub``."""
    return "email" if issuer.preset == "google" else "sub"


def accepted_iss(issuer: Issuer) -> tuple[str, ...]:
    """The ``iss`` values that pick ``issuer``: its URL, and under ``google`` for Google's own
    issuer also the scheme-less ``accounts.google.com`` Google puts in some tokens."""
    if issuer.preset == "google" and issuer.issuer == GOOGLE_ISSUER:
        return (issuer.issuer, urlsplit(GOOGLE_ISSUER).netloc)
    return (issuer.issuer,)


def effective_names(issuer: Issuer, introspected: bool) -> ClaimNames:
    """The claim names a principal of ``issuer`` was read with."""
    return introspection_names(issuer) if introspected else claim_names(issuer)


def is_org_server(issuer: Issuer) -> bool:
    """An Okta org authorization server (``preset: okta``, no ``/oauth2/`` in the issuer's path):
    its access tokens are for Okta's own APIs and cannot be validated locally."""
    return issuer.preset == "okta" and "/oauth2/" not in urlsplit(issuer.issuer).path + "/"


def _audiences(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [a for a in value if isinstance(a, str)]
    return []


def audience_refusal(issuer: Issuer, name: str, aud: Any) -> AuthError:
    """The refusal of a signed token of ``issuer`` whose ``aud`` holds none of its audiences, or
    under ``kubernetes`` one of the API server's: ``api-server-token`` for a Kubernetes token the
    API server accepts (its audience alone, or beside the gateway's), else
    ``audience-mismatch``; under a workload preset the detail says how to mint the right one."""
    wanted = issuer.audiences[0]
    advice = _MINT_ADVICE.get(issuer.preset, "").format(aud=wanted)
    given = _audiences(aud)
    if issuer.preset == "kubernetes" and any(
        api_server_audience(a, issuer.issuer) for a in given
    ):
        return AuthError(
            f"this service-account token is for the Kubernetes API server (aud {given[:3]}), "
            "and the gateway takes none the API server also accepts (issuer "
            f"'{name}' accepts {list(issuer.audiences)}): {advice}",
            code="api-server-token",
        )
    detail = f"the token's audience is not one of {list(issuer.audiences)}"
    return AuthError(f"{detail}; {advice}" if advice else detail, code="audience-mismatch")


def legacy_kubernetes_refusal() -> AuthError:
    """A legacy Secret-based service-account token (``iss: kubernetes/serviceaccount``, no
    audience, no expiry) when the policy has a ``kubernetes`` issuer: it is for the API server.
    Refused before any signature is checked, so anyone can send one: the detail names neither
    the issuer nor its audiences."""
    return AuthError(
        "this is a legacy service-account token (from a Secret: no audience, no expiry), "
        "meant for the Kubernetes API server; the gateway accepts projected service-account "
        "tokens minted for its own audience (serviceAccountToken.audience in the pod's "
        "projected volume)",
        code="api-server-token",
    )


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


def _check_kubernetes(name: str, issuer: Issuer, claims: Mapping[str, Any]) -> None:
    """No audience of the token is the API server's (a token the API server also accepts is one
    whoever receives it could call the API server with, as the pod); ``sub`` is
    ``system:serviceaccount:NS:NAME``, and the nested ``kubernetes.io`` claims, when present, name
    the same namespace and service account: roles may test either."""
    given = _audiences(claims.get("aud"))
    if any(api_server_audience(a, issuer.issuer) for a in given):
        raise audience_refusal(issuer, name, given)
    sub = claims.get("sub")
    match = _SERVICE_ACCOUNT.fullmatch(sub) if isinstance(sub, str) else None
    if match is None:
        raise AuthError(
            "the token's sub is not a service account (system:serviceaccount:NAMESPACE:NAME)",
            code="token-malformed",
        )
    nested = claims.get("kubernetes.io", MISSING)
    if nested is MISSING:
        return
    namespace = claim_value(claims, "kubernetes.io.namespace")
    account = claim_value(claims, "kubernetes.io.serviceaccount.name")
    if not isinstance(nested, Mapping) or (namespace, account) != match.groups():
        raise AuthError(
            "the token's kubernetes.io claims do not name the service account its sub names",
            code="token-malformed",
        )


def _check_google(claims: Mapping[str, Any]) -> None:
    """The ID token names a verified email: the principal."""
    email = claims.get("email")
    if not isinstance(email, str) or not email:
        raise AuthError(
            "the Google ID token carries no email: mint it with the email included "
            "(gcloud ... --include-email, the metadata server's format=full, "
            "generateIdToken's includeEmail)",
            code="email-missing",
        )
    if claims.get("email_verified") is not True:
        raise AuthError(
            "the Google ID token's email is not verified (email_verified is not true)",
            code="email-unverified",
        )


def principal_for_issuer(name: str, issuer: Issuer, claims: Mapping[str, Any]) -> Principal:
    """The Principal of a verified token of ``issuer`` (the policy's ``name`` for it): the
    preset's checks (an AuthError with the preset's code when one fails), its claim names, its
    subject claim; ``iss`` is the issuer's configured URL whichever accepted form the token used,
    so budgets, cursors and the audit trail see one issuer."""
    if issuer.preset == "kubernetes":
        _check_kubernetes(name, issuer, claims)
    elif issuer.preset == "google":
        _check_google(claims)
    principal = principal_from_claims(
        name, claim_names(issuer), claims, subject=subject_claim(issuer)
    )
    if principal.iss != issuer.issuer and principal.iss in accepted_iss(issuer):
        principal = replace(principal, iss=issuer.issuer)
    return principal


def principal_from_claims(
    name: str,
    names: ClaimNames,
    claims: Mapping[str, Any],
    *,
    subject: str = "sub",
    introspected: bool = False,
) -> Principal:
    """Build the Principal of a verified token (``sub`` and ``iss`` already required; ``subject``
    names the claim that becomes ``Principal.subject``); a malformed ``act`` is an AuthError
    (``check_act``). ``introspected``: ``claims`` is an RFC 7662 answer (``names``:
    ``introspection_names``)."""
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
        subject=str(claims[subject]),
        client_id=client,
        user_id=_string(claim_value(claims, names.user)) if names.user else None,
        scopes=scopes,
        groups=_groups(claim_value(claims, names.groups)) if names.groups else frozenset(),
        claims=MappingProxyType(dict(claims)),
        token_id=_string(claims.get("jti")),
        expires_at=claims.get("exp") if isinstance(claims.get("exp"), int) else None,
        introspected=introspected,
    )
