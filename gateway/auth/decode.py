"""A JWT's header and claims read before (or without) checking its signature, strictly.

``decode_unverified`` is the one reading of a token's JSON: the verifier reads every JWT through
it before it picks an issuer, and ``spangate policy explain --token`` reads the token it explains
through it, so explain never explains a token the gateway would refuse as malformed. The JSON is
strict (``gateway.strictjson``): a member twice in the header or the claims (which one counts is every
reader's guess), NaN or Infinity is refused. Refusals are ``token-malformed`` with one of the fixed
sentences ``NOT_A_JWT``, ``NOT_STRICT`` or ``NOT_ACCEPTED``; the JWT library's own words (which
change with its versions and may echo the token's parts) go to the log only, at INFO.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from typing import Any

import jwt

from gateway import strictjson
from gateway.errors import AuthError

__all__ = [
    "NOT_ACCEPTED",
    "NOT_A_JWT",
    "NOT_STRICT",
    "decode_unverified",
    "refused",
]

log = logging.getLogger("spangate.auth")

NOT_A_JWT = (
    "the token is not a well-formed JWT: three base64url parts (a JSON header, a JSON payload, "
    "a signature) separated by dots"
)
NOT_ACCEPTED = "the token has a header or claim that is not valid (it was not accepted)"
NOT_STRICT = (
    "the token's header or claims are not strict JSON: a member appears twice, NaN or Infinity "
    "stands for a number (or a number is beyond a double's range), or a string holds a lone "
    "UTF-16 surrogate"
)
_LOGGED_CHARS = 200


def refused(code: str, exc: Exception) -> None:
    """The JWT library's reason for a refusal, for the log (never the caller)."""
    words = str(exc)
    if len(words) > _LOGGED_CHARS:
        words = words[:_LOGGED_CHARS] + "..."
    log.info("token refused (%s): %s: %s", code, type(exc).__name__, words)


class _NotStrict(jwt.DecodeError):
    """A payload that is JSON to a lenient reader only: a member twice, NaN or Infinity."""


class _StrictJWT(jwt.PyJWT):
    """pyjwt, its claims read by ``strictjson.loads`` (``_decode_payload`` is pyjwt's documented
    override point): a token with a claim twice is a ``DecodeError``, never the last one
    silently."""

    def _decode_payload(self, decoded: dict[str, Any]) -> dict[str, Any]:
        try:
            payload = strictjson.loads(decoded["payload"])
        except (ValueError, RecursionError) as exc:
            try:  # JSON to a lenient reader (a member twice, NaN), or no JSON at all?
                json.loads(decoded["payload"])
            except (ValueError, RecursionError):
                raise jwt.DecodeError(f"Invalid payload string: {exc}") from exc
            raise _NotStrict(f"Invalid payload string: {exc}") from exc
        if not isinstance(payload, dict):
            raise jwt.DecodeError("Invalid payload string: must be a json object")
        return payload


_JWT = _StrictJWT()


def _check_header_members(token: str) -> None:
    """The JOSE header (which pyjwt has decoded already) read strictly too (``strictjson.loads``):
    a member twice (two ``alg``, two ``kid``) is ``token-malformed``."""
    segment = token.split(".", 1)[0]
    try:
        strictjson.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (ValueError, binascii.Error, RecursionError) as exc:
        refused("token-malformed", exc)
        raise AuthError(NOT_STRICT, code="token-malformed") from None


def decode_unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The header and claims of the JWT ``token``, its signature NOT checked (nor any claim):
    AuthError ``token-malformed`` (``NOT_STRICT``, ``NOT_A_JWT``, or ``NOT_ACCEPTED`` for a
    header pyjwt refuses, such as an unknown ``crit``) when the gateway cannot read it."""
    try:
        parsed = _JWT.decode_complete(token, options={"verify_signature": False})
    except jwt.InvalidTokenError as exc:
        refused("token-malformed", exc)
        detail = (
            NOT_STRICT
            if isinstance(exc, _NotStrict)
            else NOT_A_JWT
            if isinstance(exc, jwt.DecodeError)
            else NOT_ACCEPTED  # crit
        )
        raise AuthError(detail, code="token-malformed") from exc
    _check_header_members(token)
    header: dict[str, Any] = parsed["header"]
    claims: dict[str, Any] = parsed["payload"]
    return header, claims
