"""A call to a route with ``approval:`` (``gateway.policy.approval``), as the call path meets it:
the ``Approval-Id`` header read, and without one, the approval asked for (202
``approval-required``). Checking and using a presented approval is ``Approvals``' (in
``Gateway._run``, with the statement); the approvers' side is ``gateway.approvals.endpoints``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gateway.approvals.record import parse_approval_id
from gateway.approvals.service import Approvals
from gateway.audit.event import CallRecord
from gateway.budgets.check import Budgets
from gateway.policy.approval import APPROVAL_HEADER
from gateway.policy.compiled import CompiledPolicy
from gateway.policy.decide import Decision

__all__ = ["approval_id_of", "ask_approval"]


def approval_id_of(headers: Sequence[tuple[bytes, bytes]]) -> str | None:
    """The ``Approval-Id`` header's approval id, None when absent; 400 ``approval-id-invalid``
    when malformed or sent twice."""
    given = [v for k, v in headers if k == APPROVAL_HEADER]
    if not given:
        return None
    if len(given) > 1:
        return parse_approval_id(None)  # raises approval-id-invalid
    return parse_approval_id(given[0])


async def ask_approval(
    call: CallRecord,
    policy: CompiledPolicy,
    decision: Decision,
    budgets: Budgets,
    approvals: Approvals,
) -> dict[str, Any]:
    """An allowed call to a route with ``approval:`` and no ``Approval-Id``: a pending
    request stored, answered 202 ``approval-required``. It spends a call of the caller's
    budget (a read-write transaction wrote its row), never a write: its statement did not
    run; none when the request could not be stored."""
    route = decision.route
    assert route is not None and route.model.approval is not None
    assert call.principal is not None
    spend = await budgets.spend(policy, route, decision.roles, call.principal)
    if spend is not None:
        await budgets.refund(spend, ("writes",))
        call.extra["ratelimit"] = spend.headers
    try:
        record = await approvals.request(policy, decision, call.principal, call.request_id)
    except Exception:
        if spend is not None:  # no request stored (503 approval-table-missing, Spanner down)
            await budgets.refund(spend, ("calls",))
        raise
    call.approval = {
        "id": record.approval_id,
        "event": "approval.requested",
        "route": record.route,
        "query": record.query,
        "expiresAt": record.view(record.created_at)["expires_at"],
    }
    call.answer_code, call.answer_status = "approval-required", 202
    call.extra["location"] = f"/approvals/{record.approval_id}"
    who = ", ".join(route.model.approval.approvers)
    repeat = (  # the header's twin on MCP is the tool's approval_id argument
        f"the argument approval_id: {record.approval_id}"
        if call.transport == "mcp"
        else f"the header Approval-Id: {record.approval_id}"
    )
    return {
        "code": "approval-required",
        "detail": f"this call waits for an approval by a holder of one of the roles {who}, "
        f"never you; once approved, repeat it exactly, with {repeat}, before it expires",
        "approval": record.view(approvals.clock()),
        "request_id": call.request_id,
    }
