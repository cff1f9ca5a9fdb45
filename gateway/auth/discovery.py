"""Authorization-server metadata: OpenID Connect Discovery or RFC 8414, with the issuer checked.

``discover`` tries, in order, ``{issuer}/.well-known/openid-configuration``,
``{issuer}/.well-known/oauth-authorization-server`` (where Okta serves it) and RFC 8414's own
form ``{origin}/.well-known/oauth-authorization-server{path}``; the first document that answers
200 with a JSON object is used. Its ``issuer`` must equal the configured issuer exactly (a mix-up
defence: otherwise another server's keys could be trusted), and each endpoint it names must be
https (or loopback http) before anything calls it.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import httpx

from gateway.auth.urls import url_problem

__all__ = ["DiscoveryError", "discover", "metadata_urls", "metadata_url_field"]


class DiscoveryError(ValueError):
    """No usable metadata document: unreachable, malformed, or naming another issuer."""


def metadata_urls(issuer: str) -> list[str]:
    """Where the metadata of ``issuer`` may be, in the order tried."""
    base = issuer.rstrip("/")
    urls = [
        f"{base}/.well-known/openid-configuration",
        f"{base}/.well-known/oauth-authorization-server",
    ]
    parts = urlsplit(issuer)
    path = parts.path.rstrip("/")
    if path:
        urls.append(f"{parts.scheme}://{parts.netloc}/.well-known/oauth-authorization-server{path}")
    return urls


async def discover(client: httpx.AsyncClient, issuer: str) -> dict[str, Any]:
    """The metadata of ``issuer`` (see the module docstring); DiscoveryError otherwise."""
    failures: list[str] = []
    for url in metadata_urls(issuer):
        try:
            response = await client.get(url, headers={"Accept": "application/json"})
            response.raise_for_status()
            meta = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            failures.append(f"{url}: {type(exc).__name__}: {exc}")
            continue
        if not isinstance(meta, dict):
            failures.append(f"{url}: not a JSON object")
            continue
        if meta.get("issuer") != issuer:
            raise DiscoveryError(
                f"{url} says issuer {meta.get('issuer')!r}, the policy says {issuer!r}"
            )
        return meta
    raise DiscoveryError("discovery failed: " + "; ".join(failures))


def metadata_url_field(meta: dict[str, Any], field: str) -> str | None:
    """The endpoint ``field`` of a metadata document, checked like configured URLs; None when
    the document does not name one. DiscoveryError when it names one that may not be called."""
    value = meta.get(field)
    if value is None:
        return None
    if not isinstance(value, str):
        raise DiscoveryError(f"metadata field {field} is not a string")
    problem = url_problem(value)
    if problem is not None:
        raise DiscoveryError(f"metadata field {field} {problem}: {value}")
    return value
