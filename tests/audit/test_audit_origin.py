"""Client address through trusted proxies only; trace context from traceparent or Cloud Trace."""

from __future__ import annotations

import pytest

from gateway.audit.origin import (
    TraceParent,
    client_address,
    parse_networks,
    trace_context,
    trace_parent,
)

PROXIES = parse_networks("10.0.0.0/8, 2001:db8::/32")


@pytest.mark.parametrize(
    ("peer", "xff", "expected"),
    [
        ("203.0.113.7", [b"198.51.100.1"], "203.0.113.7"),  # the peer is no proxy: XFF ignored
        ("10.0.0.5", [b"198.51.100.1"], "198.51.100.1"),  # one trusted hop
        ("10.0.0.5", [b"198.51.100.1, 10.1.2.3"], "198.51.100.1"),  # two trusted hops
        ("10.0.0.5", [b"6.6.6.6, 198.51.100.1, 10.1.2.3"], "198.51.100.1"),  # spoofed left part
        ("10.0.0.5", [b"6.6.6.6", b"198.51.100.1"], "198.51.100.1"),  # repeated headers
        ("10.0.0.5", [b"not-an-ip, 10.1.2.3"], "10.1.2.3"),  # stops at garbage
        ("10.0.0.5", [], "10.0.0.5"),  # a proxy that forwarded nothing
        ("10.0.0.5", [b"198.51.100.1:4711"], "198.51.100.1"),  # with a port
        ("2001:db8::1", [b"[2001:db9::7]:443"], "2001:db9::7"),
        ("::ffff:10.0.0.5", [b"198.51.100.1"], "198.51.100.1"),  # v4-mapped peer
        (None, [b"198.51.100.1"], None),
    ],
)
def test_client_address(peer: str | None, xff: list[bytes], expected: str | None) -> None:
    assert client_address(peer, xff, PROXIES) == expected


def test_without_trusted_proxies_the_peer_is_the_client() -> None:
    assert client_address("10.0.0.5", [b"198.51.100.1"], ()) == "10.0.0.5"


def test_bad_proxy_lists_are_refused() -> None:
    with pytest.raises(ValueError, match=r"'example\.com'"):
        parse_networks("10.0.0.0/8, example.com")


@pytest.mark.parametrize(
    ("traceparent", "cloud", "expected"),
    [
        (b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", None,
         ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7")),
        (None, b"4BF92F3577B34DA6A3CE929D0E0E4736/17;o=1",
         ("4bf92f3577b34da6a3ce929d0e0e4736", f"{17:016x}")),
        (None, b"4bf92f3577b34da6a3ce929d0e0e4736", ("4bf92f3577b34da6a3ce929d0e0e4736", None)),
        (b"00-00000000000000000000000000000000-00f067aa0ba902b7-01", None, None),  # invalid id
        (b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", None, None),  # bad version
        (b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7", None, None),
        (b"garbage", b"4bf92f3577b34da6a3ce929d0e0e4736/1", ("4bf92f3577b34da6a3ce929d0e0e4736",
                                                            f"{1:016x}")),
        (None, b"<script>", None),
    ],
)  # fmt: skip
def test_trace_context(
    traceparent: bytes | None, cloud: bytes | None, expected: tuple[str, str | None] | None
) -> None:
    assert trace_context(traceparent, cloud) == expected


@pytest.mark.parametrize(
    ("traceparent", "cloud", "expected"),
    [
        (b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", b"ab" * 16 + b"/1;o=0",
         TraceParent("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", True, True)),
        (b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-02", None,
         TraceParent("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", False, True)),
        (None, b"4BF92F3577B34DA6A3CE929D0E0E4736/17;o=1",
         TraceParent("4bf92f3577b34da6a3ce929d0e0e4736", f"{17:016x}", True, False)),
        (None, b"4bf92f3577b34da6a3ce929d0e0e4736/17",
         TraceParent("4bf92f3577b34da6a3ce929d0e0e4736", f"{17:016x}", False, False)),
    ],
)  # fmt: skip
def test_trace_parent_keeps_the_sampled_flag_and_where_it_came_from(
    traceparent: bytes | None, cloud: bytes | None, expected: TraceParent
) -> None:
    assert trace_parent(traceparent, cloud) == expected
