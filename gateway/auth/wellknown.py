"""The issuers that have a preset of their own: Google's and GitHub Actions'. Pure; read by the
policy model (a load error) and by the presets.

Anyone gets their tokens for any audience (any service account of any project, any workflow of
any repository). Only under their own preset does the gateway check what such a token must
carry (a verified email) and require the roles that admit their callers to say who the caller
is (``gateway.policy.pinning``); under ``oidc`` an ``authenticated: true`` role would let in
every one of them.
"""

from __future__ import annotations

from urllib.parse import urlsplit

__all__ = ["GITHUB_ISSUER", "GOOGLE_ISSUER", "own_preset"]

GOOGLE_ISSUER = "https://accounts.google.com"
GITHUB_ISSUER = "https://token.actions.githubusercontent.com"

_OWN_PRESETS = {
    urlsplit(GOOGLE_ISSUER).netloc: ("google", "Google's"),
    urlsplit(GITHUB_ISSUER).netloc: ("github-actions", "GitHub Actions'"),
}


def own_preset(issuer: str) -> tuple[str, str] | None:
    """The preset an issuer at URL ``issuer`` must have, and whose issuer it is: ``google`` on
    host ``accounts.google.com``, ``github-actions`` on ``token.actions.githubusercontent.com``
    (an enterprise's issuer, a path under it, included); None elsewhere."""
    try:
        host = urlsplit(issuer).hostname
    except ValueError:
        return None
    return _OWN_PRESETS.get(host or "")
