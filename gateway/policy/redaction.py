"""A request path as the gateway's records show it, without the values ``audit.redact`` hides. Pure.

A route's path parameter that the policy's ``audit.redact`` names is recorded as a keyed hash in
the audit trail's ``request.params``; the same value sits in the request's path. Every record
that carries the path replaces that segment:

- the log line and the request span's ``url.path`` show it as ``{name}`` (``shown_path``);
- the audit event's ``httpRequest.requestUrl`` holds its keyed hash (``gateway.audit.event``),
  the one ``request.params`` records when the call bound it.

Which segments: those of the call's route, when it has one; else (the token was refused before
routing, the method is not the route's (405), the path is not one the router accepts (400
``path-invalid``)) those of every route whose template the path fits segment by segment (same
number of segments, equal literals; whatever the method). A path that fits no such template
carries no redacted parameter and is shown as received.
"""

from __future__ import annotations

from urllib.parse import unquote

from gateway.policy.compiled import CompiledPolicy, CompiledRoute
from gateway.policy.router import template_segments

__all__ = ["redacted_segments", "shown_path"]


def _param(segment: str) -> str | None:
    if len(segment) > 2 and segment[0] == "{" and segment[-1] == "}":
        return segment[1:-1]
    return None


def _fits(template: list[str], raw: list[str]) -> bool:
    """Does the raw path (split on ``/``, the empty first item left out) fit the template's
    segments: as many, each literal equal (as received or percent-decoded)?"""
    if len(template) != len(raw):
        return False
    return all(
        _param(literal) is not None or literal == given or literal == unquote(given)
        for literal, given in zip(template, raw, strict=True)
    )


def redacted_segments(
    policy: CompiledPolicy, path: str, route: CompiledRoute | None = None
) -> dict[int, str]:
    """{index in ``path.split("/")``: parameter name} of each segment of ``path`` that a route
    binds to a parameter ``audit.redact`` names (see the module doc); empty when none does."""
    redact = policy.model.audit.redact
    if not redact:
        return {}
    if route is not None:
        candidates = [route] if any(p in redact for p in route.path_params) else []
    else:
        candidates = [r for r in policy.routes if any(p in redact for p in r.path_params)]
    if not candidates:
        return {}
    raw = path.split("/")[1:]
    found: dict[int, str] = {}
    for candidate in candidates:
        segments = template_segments(candidate.template)
        if not _fits(segments, raw):
            continue
        for index, segment in enumerate(segments, start=1):
            name = _param(segment)
            if name is not None and name in redact:
                found.setdefault(index, name)
    return found


def shown_path(policy: CompiledPolicy, path: str, route: CompiledRoute | None = None) -> str:
    """``path`` with each redacted segment (``redacted_segments``) as ``{name}``: what the log
    line and the request span show."""
    found = redacted_segments(policy, path, route)
    if not found:
        return path
    parts = path.split("/")
    for index, name in found.items():
        parts[index] = "{" + name + "}"
    return "/".join(parts)
