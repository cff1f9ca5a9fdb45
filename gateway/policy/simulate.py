"""A request and a caller without a network: what policy tests and ``explain`` feed to ``decide``.

Pure. ``principal_for`` builds the Principal the gateway would build from a verified token with
these claims (the issuer's preset and ``claims:`` names apply: ``scp`` -> scopes for Okta, ...).
``iss`` may name the issuer by its policy name (``okta``) or by an ``iss`` the gateway picks it by
(its URL; ``accounts.google.com`` too under ``preset: google``); without ``iss``, a policy with a
single issuer means that one. A legacy Kubernetes token's ``iss`` is refused as the gateway
refuses it (``api-server-token``). ``sub`` is optional here.

``request_facts`` turns ``"GET /v1/orders?status=PAID"`` (the raw, percent-encoded target) and an
optional JSON body into the ``RequestFacts`` the gateway would decide on: the query string parsed
as the gateway parses it, a body only for POST, PUT and PATCH and a query string only for the
others (the gateway answers the other combinations with 400 before the policy is consulted).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any
from urllib.parse import parse_qsl

from gateway.auth.presets import (
    LEGACY_KUBERNETES_ISSUER,
    accepted_iss,
    legacy_kubernetes_refusal,
    principal_for_issuer,
)
from gateway.auth.principal import Principal
from gateway.errors import AuthError
from gateway.policy.bind import BODY_METHODS
from gateway.policy.decide import RequestFacts
from gateway.policy.model import Policy

__all__ = ["SimulationError", "issuer_for", "principal_for", "request_facts"]

_REQUEST = re.compile(r"^([A-Z]+) (/\S*)$")
_MCP = re.compile(r"^MCP (\S+)$")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"})


class SimulationError(ValueError):
    """Claims or a request that the gateway would never see in this form; ``key`` says which
    input is at fault: ``claims``, ``request`` or ``body``."""

    def __init__(self, message: str, *, key: str) -> None:
        super().__init__(message)
        self.key = key


def issuer_for(policy: Policy, iss: object) -> str:
    """The policy's name of the issuer that ``iss`` (a name or an issuer URL) means."""
    if iss is None:
        if len(policy.issuers) == 1:
            return next(iter(policy.issuers))
        names = ", ".join(sorted(policy.issuers))
        raise SimulationError(
            f"the claims need iss: the policy has several issuers ({names})", key="claims"
        )
    if isinstance(iss, str):
        if iss in policy.issuers:
            return iss
        by_url = [name for name, cfg in policy.issuers.items() if iss in accepted_iss(cfg)]
        if by_url:
            return by_url[0]
        kubernetes = any(c.preset == "kubernetes" for c in policy.issuers.values())
        if iss == LEGACY_KUBERNETES_ISSUER and kubernetes:
            refusal = legacy_kubernetes_refusal()
            raise SimulationError(
                f"{refusal.detail} (the gateway answers 401 {refusal.code})", key="claims"
            )
    names = ", ".join(sorted(policy.issuers))
    raise SimulationError(
        f"iss {iss!r} is no issuer of the policy: give an issuer's name ({names}) or its URL",
        key="claims",
    )


def principal_for(policy: Policy, claims: Mapping[str, Any]) -> Principal:
    """The Principal of a verified token carrying ``claims`` (``iss`` as described above)."""
    name = issuer_for(policy, claims.get("iss"))
    issuer = policy.issuers[name]
    given = {**claims, "iss": issuer.issuer}
    try:
        principal = principal_for_issuer(
            name, issuer, {**given, "sub": str(claims.get("sub", ""))}
        )
    except AuthError as exc:  # the gateway would answer 401: no decision to simulate
        raise SimulationError(
            f"{exc.detail} (the gateway answers 401 {exc.code})", key="claims"
        ) from None
    return dataclasses.replace(principal, claims=MappingProxyType(given))


def request_facts(
    request: str,
    body: Mapping[str, Any] | None = None,
    arguments: Mapping[str, Any] | None = None,
) -> RequestFacts:
    """``"METHOD /raw/path?query"`` (and a JSON body), or ``"MCP tool_name"`` (and its
    arguments) -> RequestFacts; SimulationError if the gateway would refuse it before consulting
    the policy, or it is not a request line."""
    tool = _MCP.match(request.strip())
    if tool is not None:
        if body is not None:
            raise SimulationError("an MCP call takes arguments, not a body", key="body")
        name = tool.group(1)
        return RequestFacts("MCP", name, (), dict(arguments or {}), tool=name)
    if arguments is not None:
        raise SimulationError(
            "arguments are for an MCP call (request: MCP tool_name)", key="arguments"
        )
    m = _REQUEST.match(request.strip())
    if m is None:
        raise SimulationError(
            f"expected a request such as 'GET /v1/orders?status=PAID' or 'MCP list_orders', "
            f"got {request!r}",
            key="request",
        )
    method, target = m.groups()
    if method not in _METHODS:
        known = ", ".join(sorted(_METHODS))
        raise SimulationError(f"unknown method {method}: one of {known}", key="request")
    path, _, query_string = target.partition("?")
    query = parse_qsl(query_string, keep_blank_values=True) if query_string else []
    if method in BODY_METHODS:
        if query:
            raise SimulationError(
                f"{method} parameters go in the body, not the query string", key="request"
            )
        return RequestFacts(method, path, (), dict(body or {}))
    if body is not None:
        raise SimulationError(f"{method} requests take no body: use the query string", key="body")
    return RequestFacts(method, path, tuple(query), None)
