"""Which Hosts and Origins ``/mcp`` answers (the SDK's DNS-rebinding protection, on), and the
gateway's public base URL as ``/mcp``'s 401 challenge and its RFC 9728 metadata name it.

The hosts and origins are SPANGATE_MCP_ALLOWED_HOSTS and SPANGATE_MCP_ALLOWED_ORIGINS, and the
public URL's own (SPANGATE_PUBLIC_URL). A Host is strictly a host name or IP literal with an
optional port (``metadata.parse_host``); ``name:*`` allows any port.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mcp.server.transport_security import TransportSecuritySettings

from gateway.errors import MisdirectedRequest
from gateway.http import Scope
from gateway.mcp.metadata import parse_host

if TYPE_CHECKING:
    from gateway.settings import Settings

__all__ = ["host_allowed", "public_base", "request_host", "security_settings", "setting_items"]


def setting_items(value: str) -> list[str]:
    """The items of a comma-separated setting, stripped, the empty ones dropped."""
    return [v.strip() for v in value.split(",") if v.strip()]


def security_settings(settings: Settings) -> TransportSecuritySettings:
    """The SDK's DNS-rebinding protection, on, with the hosts and origins of the settings (and
    the public URL's own)."""
    hosts = setting_items(settings.mcp_allowed_hosts)
    origins = setting_items(settings.mcp_allowed_origins)
    if settings.public_url:
        from urllib.parse import urlsplit

        parts = urlsplit(settings.public_url)
        hosts.append(parts.netloc)
        origins.append(f"{parts.scheme}://{parts.netloc}")
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True, allowed_hosts=hosts, allowed_origins=origins
    )


def host_allowed(host: str, allowed: list[str]) -> bool:
    """Is ``host`` (already ``parse_host``-checked) one of ``allowed`` (``name:*``: any port)?"""
    return host in allowed or any(
        a.endswith(":*") and host.startswith(a[:-1]) and host[len(a) - 1 :].isdigit()
        for a in allowed
    )


def request_host(settings: Settings, scope: Scope, allowed: list[str] | None = None) -> str:
    """The request's one Host header, strictly a host name or IP literal with an optional port
    1-65535 (``parse_host``), and one the gateway answers as /mcp (SPANGATE_MCP_ALLOWED_HOSTS,
    the public URL's host; ``allowed``: those, when the caller has them already); else
    ``MisdirectedRequest`` (421 ``host-not-allowed``)."""
    headers: list[tuple[bytes, bytes]] = scope.get("headers", [])
    values = [v.decode("latin-1") for k, v in headers if k == b"host"]
    if len(values) != 1 or parse_host(values[0]) is None:
        raise MisdirectedRequest(
            "the Host header must be one host name or IP literal, with an optional port 1-65535"
        )
    if allowed is None:
        allowed = security_settings(settings).allowed_hosts
    if not host_allowed(values[0], allowed):
        raise MisdirectedRequest("this Host is not one /mcp answers (SPANGATE_MCP_ALLOWED_HOSTS)")
    return values[0]


def public_base(settings: Settings, scope: Scope) -> str:
    """The gateway's public base URL: the setting, else the request's scheme and (checked) Host
    (``request_host``: raises ``MisdirectedRequest``)."""
    if settings.public_url:
        return settings.public_url
    scheme = "https" if scope.get("scheme") == "https" else "http"
    return f"{scheme}://{request_host(settings, scope)}"
