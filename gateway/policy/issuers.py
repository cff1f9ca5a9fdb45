"""The load error for two issuers a token's ``iss`` would pick alike. Pure.

The gateway picks a token's issuer by its ``iss`` (``presets.accepted_iss``: the issuer's URL,
and ``accounts.google.com`` for Google's under ``preset: google``), and that issuer's preset,
audiences and keys decide. With two issuers answering to one ``iss``, verification would take
one and the policy's tools (``explain``, policy tests, shadow) possibly the other: a policy whose
roles look pinned under one preset could admit tokens under the other's rules.
"""

from __future__ import annotations

from gateway.auth.presets import accepted_iss
from gateway.policy.constraints import Finding
from gateway.policy.model import Policy

__all__ = ["issuer_findings"]


def issuer_findings(policy: Policy) -> list[Finding]:
    """Each issuer that answers to an ``iss`` an earlier issuer answers to, as (path, message)."""
    seen: dict[str, str] = {}
    found: list[Finding] = []
    for name, issuer in policy.issuers.items():
        for iss in accepted_iss(issuer):
            first = seen.setdefault(iss, name)
            if first != name:
                found.append((("issuers", name, "issuer"), (
                    f"issuer '{first}' already takes the tokens whose iss is {iss!r}: a token "
                    "names one issuer; keep one entry for it (list several audiences there)"
                )))
                break
    return found
