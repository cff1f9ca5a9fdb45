"""Sender-constrained tokens: the gateway accepts bearer tokens only.

A token with a ``cnf`` (confirmation) claim, in the JWT or in its introspection answer, is bound
to a key its legitimate holder proves possession of: a DPoP proof (RFC 9449, ``cnf.jkt``) or the
client's TLS certificate (RFC 8705, ``cnf.x5t#S256``). The gateway verifies neither binding, so
accepting such a token as a bearer token would let anyone who copies it use it: it is refused
(401 ``token-sender-constrained``), as is the ``DPoP`` authorization scheme.
"""

from __future__ import annotations

from typing import Any

from gateway.errors import AuthError

__all__ = ["binding", "sender_constrained"]

_KINDS = {"jkt": "a DPoP key (RFC 9449)", "x5t#S256": "a TLS client certificate (RFC 8705)"}


def binding(cnf: Any) -> str:
    """What a ``cnf`` claim binds the token to, in words, for the error detail."""
    if isinstance(cnf, dict):
        for member, kind in _KINDS.items():
            if member in cnf:
                return kind
        return "a key of its holder"
    return "a key of its holder"


def sender_constrained(bound_to: str) -> AuthError:
    return AuthError(
        f"the token is sender-constrained (bound to {bound_to}); this gateway does not verify "
        "DPoP or mutual-TLS bindings and accepts only bearer tokens without cnf",
        code="token-sender-constrained",
    )
