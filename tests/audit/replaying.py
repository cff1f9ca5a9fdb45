"""What the replay tests share (test_replay.py, test_replay_approvals.py): a call decided under a
live policy and recorded as the gateway records it, its event built by the real event builder and
sealed by the real ``Chain``, and that event read back as a recorded call. No network, no fakes."""

from __future__ import annotations

from typing import Any

from gateway.audit.chain import AuditKeys, Chain
from gateway.audit.event import CallRecord, build_event
from gateway.audit.recorded import Recorded, recorded
from gateway.auth.principal import Principal
from gateway.policy.compiled import CompiledPolicy
from gateway.policy.decide import decide
from gateway.policy.simulate import request_facts

__all__ = ["decided_call", "rec", "sealed_event"]


def decided_call(
    request: str,
    principal: Principal,
    live: CompiledPolicy,
    *,
    body: dict[str, Any] | None = None,
    arguments: dict[str, Any] | None = None,
    request_id: str | None = None,
) -> CallRecord:
    """The record of ``request`` (``simulate.request_facts``: ``"GET /path"``, ``"MCP tool"``) by
    ``principal``, decided under ``live``: its transport, principal and decision, the decision's
    problem as its error, and the status that gives (200 when allowed)."""
    facts = request_facts(request, body, arguments)
    decision = decide(live, facts, principal)
    call = CallRecord(
        request_id=request_id or f"r-{request}",
        method="POST" if facts.tool else facts.method,
        path="/mcp" if facts.tool else facts.path,
        started=0.0,
        client=None,
        user_agent=None,
    )
    if facts.tool:
        call.transport, call.tool = "mcp", facts.tool
    call.principal, call.decision = principal, decision
    call.error = decision.problem
    call.status = call.error.status if call.error else 200
    return call


def sealed_event(call: CallRecord, live: CompiledPolicy, keys: AuditKeys) -> dict[str, Any]:
    """The audit event of ``call`` under ``live``, built and sealed with ``keys``."""
    sealed, _ = Chain(keys.chain).seal(build_event(call, live, key=keys.redact))
    return sealed


def rec(event: dict[str, Any]) -> Recorded:
    """``event`` read back as a recorded call (it must be one)."""
    found = recorded(event, "audit.jsonl:1")
    assert isinstance(found, Recorded), found
    return found
