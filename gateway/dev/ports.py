"""Free TCP ports on 127.0.0.1 for the development servers (OpenID provider, Spanner emulator).

A port is "free" only when a bind test succeeds AND nothing answers a TCP connect on it:
servers that set SO_REUSEPORT (the Spanner emulator does) can share a port with a stale
instance, which would then silently answer in its place.
"""

from __future__ import annotations

import socket

HOST = "127.0.0.1"


def _answers(port: int, host: str = HOST, timeout: float = 0.2) -> bool:
    """Whether something accepts a TCP connection on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def port_is_free(port: int, host: str = HOST) -> bool:
    """Whether ``host:port`` can be bound (with SO_REUSEADDR, as servers do) and nobody answers.

    True means free at the time of the call only: another process may take it right after.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return not _answers(port, host)


def free_port(attempts: int = 20) -> int:
    """Return a TCP port on 127.0.0.1 that nobody listens on or answers at the time of the call.

    Binds 127.0.0.1:0, reads the port the kernel chose, closes the socket, then checks that no
    process answers a TCP connect on that port (an SO_REUSEPORT server can hold a port that
    still binds). Tries ``attempts`` times, then raises RuntimeError. The caller should start
    its server promptly: the port is not reserved.
    """
    for _ in range(attempts):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((HOST, 0))
            port: int = sock.getsockname()[1]
        if not _answers(port):
            return port
    raise RuntimeError(f"no free TCP port found on {HOST} after {attempts} attempts")
