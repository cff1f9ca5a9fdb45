"""Audiences a preset's issuer must never accept. Pure; read by the policy model (load errors)
and by verification (the refusal's code)."""

from __future__ import annotations

from urllib.parse import urlsplit

__all__ = ["api_server_audience", "gateway_url_problem"]


def _comparable(url: str) -> str:
    """``url`` with its scheme and host in lower case and no trailing ``/``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url.rstrip("/")
    if not parts.netloc:
        return url.rstrip("/")
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}{parts.path}".rstrip("/")


def api_server_audience(audience: str, issuer_url: str) -> bool:
    """Whether ``audience`` is one a Kubernetes API server takes for itself: the cluster's
    issuer URL (the API server's default ``--api-audiences``) or ``kubernetes.default.svc...``
    (``https://kubernetes.default.svc``, ``...svc.cluster.local``, ``kubernetes``), host names
    compared in any case. A default service-account token carries such an audience; the gateway
    must never accept one. Audiences a cluster adds with ``--api-audiences`` cannot be known
    here: the policy must not use them (a token for one is ``audience-mismatch``)."""
    if _comparable(audience) == _comparable(issuer_url):
        return True
    try:
        if "://" in audience:
            host = urlsplit(audience).hostname
        else:  # kubernetes.default.svc[:443][/...]
            host = audience.split("/", 1)[0].lower().rsplit(":", 1)[0]
    except ValueError:
        return False
    return host is not None and (host == "kubernetes" or host.startswith("kubernetes.default"))


def gateway_url_problem(audience: str) -> str | None:
    """Why ``audience`` cannot be the gateway's URL (None when it can): an ``https`` or ``http``
    URL with a host. Google ID tokens for service accounts carry the audience they were minted
    for; an OAuth client id (``...apps.googleusercontent.com``, gcloud's own among them) would
    accept tokens minted for someone else."""
    try:
        parts = urlsplit(audience)
        host = parts.hostname
    except ValueError as exc:
        return f"is not a valid URL ({exc})"
    if parts.scheme not in ("https", "http") or not host:
        return "must be the gateway's URL (https://...), the audience callers mint tokens for"
    return None
