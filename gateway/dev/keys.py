"""Signing keys for the local OpenID provider (``dev/idp/server.js``).

The provider reads ``IDP_KEYS``: a JSON file ``{"keys": [<private JWK>, ...]}``. This module
makes a fresh one with one RSA 2048 key (alg RS256) and one EC P-256 key (alg ES256), both
``use: sig``, each with ``kid`` set to its RFC 7638 thumbprint (unique per key).

    python -m gateway.dev.keys PATH     # writes PATH (mode 0600) and prints the kids

These are development keys: never use them for anything but the local provider.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

JWK = dict[str, Any]
JWKSet = dict[str, list[JWK]]

# RFC 7638 section 3.2: the members of the public key that make its thumbprint, per kty.
_THUMBPRINT_MEMBERS = {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y")}


def jwk_thumbprint(jwk: JWK) -> str:
    """Return the RFC 7638 SHA-256 thumbprint of ``jwk`` (public or private), base64url."""
    members = _THUMBPRINT_MEMBERS[jwk["kty"]]
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    digest = hashlib.sha256(canonical.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _finish(jwk: JWK, alg: str) -> JWK:
    jwk = {k: v for k, v in jwk.items() if k != "key_ops"}  # pyjwt says ["sign"]: not for a JWKS
    jwk["kid"] = jwk_thumbprint(jwk)
    jwk["alg"] = alg
    jwk["use"] = "sig"
    return jwk


def generate_signing_keys() -> JWKSet:
    """Return a new private key set ``{"keys": [rsa_jwk, ec_jwk]}``.

    ``rsa_jwk``: RSA 2048-bit private JWK, ``alg`` RS256; ``ec_jwk``: EC P-256 private JWK,
    ``alg`` ES256. Both have ``use: sig`` and a unique ``kid`` (the RFC 7638 thumbprint). The
    result holds private key material (``d``, ``p``, ``q``...): keep it out of logs.
    """
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    rsa_jwk: JWK = RSAAlgorithm.to_jwk(rsa_key, as_dict=True)
    ec_jwk: JWK = ECAlgorithm.to_jwk(ec_key, as_dict=True)
    return {"keys": [_finish(rsa_jwk, "RS256"), _finish(ec_jwk, "ES256")]}


def write_signing_keys(path: str | os.PathLike[str]) -> JWKSet:
    """Generate a key set (see ``generate_signing_keys``), write it as JSON to ``path``.

    The file is created (or truncated) with mode 0600; parent directories must exist.
    Returns the key set written.
    """
    keys = generate_signing_keys()
    data = json.dumps(keys, indent=2).encode() + b"\n"
    fd = os.open(os.fspath(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.chmod(path, 0o600)  # O_CREAT's mode does not apply to an existing file
    return keys


def main(argv: list[str] | None = None) -> int:
    """``python -m gateway.dev.keys PATH``: write a fresh key set to PATH, print the kids."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m gateway.dev.keys PATH", file=sys.stderr)
        return 2
    keys = write_signing_keys(Path(args[0]))
    for jwk in keys["keys"]:
        print(f"{jwk['alg']} {jwk['kid']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
