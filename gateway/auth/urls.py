"""Which identity-provider URLs the gateway will call: https, or http to a loopback host only.

Pure (no I/O), so the policy validator and the runtime apply the same rule. Loopback means
``localhost``, 127.0.0.0/8 and ``::1``: development and tests run their provider there.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

__all__ = ["issuer_problem", "require_safe_url", "url_problem"]


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def url_problem(url: str) -> str | None:
    """Why ``url`` may not be called (None when it may): not https (http is allowed only to a
    loopback host), no host, or credentials in the URL."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a malformed port
    except ValueError as exc:
        return f"is not a valid URL ({exc})"
    if not host:
        return "has no host"
    if parts.username is not None or parts.password is not None:
        return "must not carry credentials"
    if parts.scheme == "https":
        return None
    if parts.scheme == "http" and _loopback(host):
        return None
    return "must be an https URL (http only for loopback hosts: localhost, 127.0.0.0/8, ::1)"


def issuer_problem(issuer: str) -> str | None:
    """``url_problem``, plus RFC 8414's rule that an issuer has no query and no fragment."""
    problem = url_problem(issuer)
    if problem is not None:
        return problem
    parts = urlsplit(issuer)
    if parts.query or parts.fragment or "?" in issuer or "#" in issuer:
        return "must not have a query or a fragment"
    return None


def require_safe_url(url: str, what: str) -> str:
    """``url`` when it may be called; ValueError naming ``what`` otherwise."""
    problem = url_problem(url)
    if problem is not None:
        raise ValueError(f"{what} {problem}: {url}")
    return url
