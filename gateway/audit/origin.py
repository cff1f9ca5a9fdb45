"""Where a request came from: the client address (through trusted proxies only) and its trace. Pure.

Client address: the TCP peer, unless the peer is a trusted proxy (``SPANGATE_TRUSTED_PROXIES``,
addresses or CIDR ranges); then ``X-Forwarded-For`` is read from the right, skipping trusted
proxies, and the first address that is not one is the client. An address a client wrote itself
(on the left of the first untrusted hop) is never believed. A malformed entry stops the walk at
the last address known to be real.

Trace: W3C ``traceparent`` (``00-<32 hex>-<16 hex>-<2 hex>``), else Google's
``X-Cloud-Trace-Context`` (``<32 hex>/<decimal span>;o=1``). Anything malformed is ignored. The
audit trail records the caller's trace this way whether or not the gateway exports spans; when it
does (``gateway.tracing``), the request's span continues the same trace (its sampled flag is
followed only when the peer is a trusted proxy: ``peer_trusted``).
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "IPNetwork",
    "TraceParent",
    "client_address",
    "parse_networks",
    "peer_trusted",
    "trace_context",
    "trace_parent",
]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_CLOUD_TRACE = re.compile(r"^([0-9a-fA-F]{32})(?:/([0-9]{1,20}))?(?:;o=([0-9]))?$")


def parse_networks(text: str | Iterable[str]) -> tuple[IPNetwork, ...]:
    """``"10.0.0.0/8, 192.0.2.7"`` -> networks; raises ValueError naming a bad entry."""
    items = text.split(",") if isinstance(text, str) else list(text)
    networks = []
    for item in items:
        item = item.strip()
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"not an IP address or CIDR range: {item!r}") from None
    return tuple(networks)


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # [v6]:port
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # v4:port
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


# The TCP peer's address, parsed once per peer (a handful behind a load balancer; bounded):
# ``ipaddress`` parsing costs ~10 µs a request. Never X-Forwarded-For's hops (caller-supplied).
_peer_ip = functools.lru_cache(maxsize=1024)(_ip)


def _trusted(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address, nets: Sequence[IPNetwork]
) -> bool:
    return any(address.version == n.version and address in n for n in nets)


def peer_trusted(peer: str | None, trusted: Sequence[IPNetwork]) -> bool:
    """Is the TCP peer one of the trusted proxies (``SPANGATE_TRUSTED_PROXIES``)?"""
    if peer is None or not trusted:
        return False
    address = _peer_ip(peer)
    return address is not None and _trusted(address, trusted)


def client_address(
    peer: str | None, forwarded_for: Sequence[bytes], trusted: Sequence[IPNetwork]
) -> str | None:
    """The client's address: ``peer``, or the nearest untrusted hop of ``X-Forwarded-For``."""
    if peer is None or not trusted:
        return peer
    current = _peer_ip(peer)
    if current is None or not _trusted(current, trusted):
        return peer
    hops = [h for value in forwarded_for for h in value.decode("latin-1").split(",")]
    for hop in reversed(hops):
        address = _ip(hop)
        if address is None:
            break
        current = address
        if not _trusted(address, trusted):
            break
    return str(current)


@dataclass(frozen=True)
class TraceParent:
    """The caller's trace: ``trace`` (32 hex), ``span`` (16 hex: the caller's span, or None when
    X-Cloud-Trace-Context named none), ``sampled`` (the caller's flag: traceparent's bit 0,
    X-Cloud-Trace-Context's ``o=1``), ``w3c`` (it came from traceparent, so tracestate goes
    with it)."""

    trace: str
    span: str | None
    sampled: bool
    w3c: bool


def trace_parent(traceparent: bytes | None, cloud_trace: bytes | None) -> TraceParent | None:
    """The request's trace headers: traceparent when valid, else X-Cloud-Trace-Context; None."""
    if traceparent is not None:
        m = _TRACEPARENT.match(traceparent.decode("latin-1").strip())
        if m and m.group(1) != "ff" and set(m.group(2)) != {"0"} and set(m.group(3)) != {"0"}:
            return TraceParent(m.group(2), m.group(3), bool(int(m.group(4), 16) & 1), True)
    if cloud_trace is not None:
        m = _CLOUD_TRACE.match(cloud_trace.decode("latin-1").strip())
        if m and set(m.group(1)) != {"0"}:
            span = m.group(2)
            return TraceParent(
                m.group(1).lower(),
                f"{int(span):016x}" if span and int(span) < 2**64 else None,
                m.group(3) == "1",
                False,
            )
    return None


def trace_context(
    traceparent: bytes | None, cloud_trace: bytes | None
) -> tuple[str, str | None] | None:
    """(trace id, span id) from the request's trace headers, or None."""
    found = trace_parent(traceparent, cloud_trace)
    return (found.trace, found.span) if found is not None else None
