"""OAuth 2.0 Protected Resource Metadata (RFC 9728) of the MCP endpoint (pure).

Served at ``/.well-known/oauth-protected-resource/mcp`` (the well-known path inserted before the
resource's path, RFC 9728 §3.1), whose ``resource`` is ``<base>/mcp``, and at the bare well-known
path, whose ``resource`` is ``<base>`` itself (§3.3: the resource identifier the well-known URL
was formed from); built from the policy being
served, so it follows reloads. A client that gets 401 from ``/mcp`` reads its
``WWW-Authenticate: Bearer resource_metadata="..."``, then this document, then asks one of the
``authorization_servers`` for a token whose audience is ``resource`` (RFC 8707).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from mcp.server.auth.routes import build_resource_metadata_url
from pydantic import AnyHttpUrl

from gateway.auth.presets import WORKLOAD_PRESETS
from gateway.policy.compiled import CompiledPolicy

__all__ = [
    "MCP_PATH",
    "WELL_KNOWN",
    "metadata_paths",
    "metadata_url",
    "parse_host",
    "resource_metadata",
    "resource_url",
]

MCP_PATH = "/mcp"
WELL_KNOWN = "/.well-known/oauth-protected-resource"


_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_PORT = re.compile(r"^[0-9]{1,5}$")


def parse_host(value: str) -> str | None:
    """A Host header's value, strictly: a DNS name or an IP literal (IPv6 in brackets), and an
    optional decimal port 1-65535; the value itself or None for anything else (userinfo,
    paths, spaces, a port that is no number)."""
    host, port = value, None
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        host, rest = value[: end + 1], value[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                return None
            port = rest[1:]
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return None
    else:
        if ":" in value:
            host, port = value.rsplit(":", 1)
        name = host[:-1] if host.endswith(".") else host
        if not name or len(name) > 253 or not all(_LABEL.match(p) for p in name.split(".")):
            return None
    if port is not None and not (_PORT.match(port) and 1 <= int(port) <= 65535):
        return None
    return value


def resource_url(base: str) -> str:
    """The MCP resource's URL under the gateway's public base URL."""
    return base.rstrip("/") + MCP_PATH


def metadata_url(base: str) -> str:
    return str(build_resource_metadata_url(AnyHttpUrl(resource_url(base))))


def metadata_paths() -> frozenset[str]:
    return frozenset({WELL_KNOWN, WELL_KNOWN + MCP_PATH})


def resource_metadata(policy: CompiledPolicy, resource: str) -> dict[str, Any]:
    """The RFC 9728 document: the resource, the policy's issuers (those an MCP client can get a
    token from: not the workload presets'), every scope read by a role
    that some route allows (a role only denied, or named by no route, grants nothing)."""
    model = policy.model
    # Workload issuers (a cluster, Google, GitHub Actions) hand out no tokens to an MCP client.
    issuers = list(
        dict.fromkeys(
            i.issuer for i in model.issuers.values() if i.preset not in WORKLOAD_PRESETS
        )
    )
    allowing = {name for route in model.routes for name in route.allow}
    scopes = sorted(
        {
            scope
            for name, role in model.roles.items()
            if name in allowing
            for entry in role.any_of
            for scope in entry.scopes or ()
        }
    )
    return {
        "resource": resource,
        "authorization_servers": issuers,
        "scopes_supported": scopes,
        "bearer_methods_supported": ["header"],
        "resource_name": "spangate",
    }
