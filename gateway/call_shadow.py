"""A call decided under the shadow policy too (``--shadow-policy``: ``Active.shadow``).

When there is a shadow, every call is decided under it after the live decision
(``gateway.policy.shadow`` is the pure part); a disagreement goes into the call's audit event
(``call.shadow``) and ``/metrics``. It never changes the answer, and a failure in it is logged and
counted, never a 500. Without one, the call path tests ``None`` and nothing more.
"""

from __future__ import annotations

import logging

from gateway.audit.event import CallRecord
from gateway.call_types import Active, Target
from gateway.metrics import GatewayMetrics
from gateway.policy.decide import Decision, RequestFacts, decide
from gateway.policy.shadow import ROUTING_REASONS, disagreement

__all__ = ["shadow_decide", "shadow_facts", "shadow_undecided"]

log = logging.getLogger("spangate")


def shadow_decide(
    call: CallRecord, active: Active, facts: RequestFacts, metrics: GatewayMetrics
) -> None:
    """Decide ``call`` under the shadow policy too; record a disagreement on the call (its
    audit event) and in ``metrics``. Never raises: a failure here is a bug in the candidate's
    evaluation, logged and counted, and the call goes on as the live policy decided."""
    shadow, issuers = active.shadow, active.shadow_issuers
    assert shadow is not None and issuers is not None and call.principal is not None
    try:
        seen = issuers.principal(call.principal)
        if isinstance(seen, str):  # the candidate refuses the token
            verdict = Decision(allow=False, reason=seen)
        else:
            verdict = decide(shadow, facts, seen)
        live = call.decision
        code = live.reason if live is not None else (call.error.code if call.error else "")
        differs = disagreement(live, code, verdict, shadow.sha256)
        if differs is not None:
            call.shadow = differs.record
            metrics.observe_shadow(differs.route, differs.live, differs.shadow)
    except Exception:
        call.shadow = None
        log.exception("request %s: the shadow policy's decision failed", call.request_id)
        metrics.observe_shadow_error()


def shadow_undecided(call: CallRecord, active: Active, code: str, metrics: GatewayMetrics) -> None:
    """A call the live policy refused before deciding (no route…): the shadow decides it on
    what the transport had read (``call.extra["facts"]``), when there is a principal."""
    facts = call.extra.pop("facts", None)
    if call.principal is None or code not in ROUTING_REASONS:
        return
    if not isinstance(facts, RequestFacts):
        if call.transport == "mcp":
            if call.tool is None:
                return
            facts = RequestFacts("MCP", call.tool, (), {}, tool=call.tool)
        else:
            facts = RequestFacts(call.method, call.path)
    shadow_decide(call, active, facts, metrics)


def shadow_facts(call: CallRecord, target: Target) -> RequestFacts:
    """The request as a shadow policy decides it: as the live one did (an MCP call by its tool's
    name and arguments, which the shadow's route may split otherwise)."""
    if call.transport == "mcp" and call.tool is not None:
        arguments = {**target.path_params, **(target.body or {})}
        return RequestFacts("MCP", call.tool, (), arguments, tool=call.tool)
    return RequestFacts(target.method or call.method, call.path, target.query, target.body)
