"""``/approvals`` over HTTP: what approvers decide, and what a requester may look at.

    GET  /approvals?state=pending&limit=50   requests to routes the caller may decide (oldest
         [&cursor=...]                       first; pending: unexpired, never the caller's own)
    GET  /approvals/{id}                     one request (its requester, or who may decide it)
    POST /approvals/{id}/approve             {"reason": "..."} optional
    POST /approvals/{id}/reject              {"reason": "..."} optional

Every call presents a bearer token, verified as a policy route's is (the live policy's
verifier), is judged under the live policy (``Approvals``), answers JSON or problem+json with a
stable code, and gets one audit event (``metadata.approval``: the event, the approval id, the
route, the requester, the approver role, the reason). ``state`` is one of pending, approved,
rejected, used; ``limit`` 1 to 100 (50 by default): a longer list answers ``truncated: true``
and ``next_cursor``, which ``?cursor=`` (with the same ``state``) continues from
(``record.ListCursor``: it only positions; 400 ``cursor-invalid`` for anything else).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from gateway.approvals.record import (
    ApprovalRecord,
    ListCursor,
    check_reason,
    parse_approval_id,
    parse_list_cursor,
    parse_states,
)
from gateway.audit.event import CallRecord
from gateway.audit.recorder import new_call, record_call
from gateway.auth.verify import bearer_token
from gateway.errors import BadRequest, GatewayError, MethodNotAllowed, RouteNotFound
from gateway.http import (
    CALL,
    Receive,
    Scope,
    Send,
    dumps,
    parse_query,
    read_json_body,
    send_problem,
    send_response,
    token_in_query,
)
from gateway.request_line import log_request_line

if TYPE_CHECKING:
    from gateway.app import Gateway
    from gateway.call_types import Active

__all__ = [
    "APPROVALS_PATH",
    "ApprovalsEndpoint",
    "ApprovalsPath",
    "DEFAULT_LIMIT",
    "MAX_LIMIT",
    "parse_path",
]

log = logging.getLogger("spangate")

APPROVALS_PATH = "/approvals"
DEFAULT_LIMIT = 50
MAX_LIMIT = 100
Action = Literal["list", "view", "approve", "reject"]
_DIGITS = re.compile(r"[0-9]{1,3}")


def _limit(values: list[str]) -> int:
    if not values:
        return DEFAULT_LIMIT
    # ASCII digits only: str.isdigit() admits superscript and fullwidth digits, which int() refuses or reads
    if len(values) == 1 and _DIGITS.fullmatch(values[0]) and 1 <= int(values[0]) <= MAX_LIMIT:
        return int(values[0])
    raise BadRequest(f"limit is an integer from 1 to {MAX_LIMIT} (once)", code="query-invalid")


@dataclass(frozen=True)
class ApprovalsPath:
    """What a path under ``/approvals`` asks for: ``action`` (list, view, approve, reject),
    the id segment as sent (``raw_id``: parsed after the token is verified, so an anonymous
    caller learns nothing about ids) and the audit event's ``resource`` (ids as ``{id}``)."""

    action: Action
    raw_id: str | None
    resource: str


def parse_path(path: str, method: str) -> ApprovalsPath:
    """``path`` (``/approvals`` or below it) and ``method`` as an ``ApprovalsPath`` (pure): 404
    for a path that is none of the four, 405 for a method the path does not take (HEAD as GET)."""
    parts = path[len(APPROVALS_PATH) :].split("/")[1:]  # "" -> [], "/x/approve" -> [x, approve]
    if parts and parts[-1] == "" and len(parts) > 1:
        raise RouteNotFound("no such approvals path")
    if len(parts) > 2 or (len(parts) == 2 and parts[1] not in ("approve", "reject")):
        raise RouteNotFound("no such approvals path")
    wants = "POST" if len(parts) == 2 else "GET"
    if method not in (wants, "HEAD") or (method == "HEAD" and wants == "POST"):
        raise MethodNotAllowed(f"{method} is not allowed on this path", allow=[wants])
    if not parts:
        return ApprovalsPath("list", None, f"{method} {APPROVALS_PATH}")
    resource = f"{method} {APPROVALS_PATH}/{{id}}"
    if len(parts) == 1:
        return ApprovalsPath("view", parts[0], resource)
    action: Action = "approve" if parts[1] == "approve" else "reject"
    return ApprovalsPath(action, parts[0], f"{resource}/{parts[1]}")


def _requester(record: ApprovalRecord) -> dict[str, Any]:
    return {"iss": record.iss, "sub": record.subject, "actors": list(record.actors)}


class ApprovalsEndpoint:
    """``/approvals`` of one gateway (pure ASGI, like the policy routes)."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def __call__(
        self, scope: Scope, receive: Receive, send: Send, rid: str, path: str, started: float
    ) -> None:
        gateway = self.gateway
        call = new_call(scope, rid, time.perf_counter(), gateway.trusted)
        scope.setdefault("state", {})[CALL] = call
        active = gateway.active
        gateway.unrecorded += 1
        status = 500
        body: dict[str, Any] | None = None
        try:
            try:
                body = await self._answer(scope, receive, call, active, path)
                status = 200
            except GatewayError as exc:
                call.error = exc
                status = exc.status
            except asyncio.CancelledError:
                call.error = GatewayError("the request was cancelled", code="cancelled")
                status = 499
                raise
            except Exception:
                log.exception("request %s failed", rid)
                call.error = GatewayError(
                    "an unexpected error occurred; see the logs for this request id"
                )
        finally:
            call.status = status
            gateway.unrecorded -= 1
            if status == 499:
                from gateway.audit.recorder import record_nowait

                record_nowait(
                    gateway.audit, call, active.policy, key=gateway._audit_key,
                    database=gateway._database,
                )  # fmt: skip
                log_request_line(scope, rid, path, 499, 499, started, "http", call)
        if await record_call(
            gateway.audit, call, active.policy, key=gateway._audit_key, database=gateway._database
        ):
            body = None  # 503 audit-unavailable: fail closed
        gateway.metrics.observe(
            None,
            call.status,
            call.error.code if call.error else "ok",
            time.perf_counter() - call.started,
        )
        head = scope["method"] == "HEAD"
        if call.error is not None or body is None:
            error = call.error or GatewayError("the audit trail failed")
            await send_problem(send, error, rid, head=head)
        else:
            await send_response(send, 200, dumps(body), "application/json", rid, head=head)
        log_request_line(scope, rid, path, call.status, call.status, started, "http", call)

    async def _answer(
        self, scope: Scope, receive: Receive, call: CallRecord, active: Active, path: str
    ) -> dict[str, Any]:
        gateway = self.gateway
        method = scope["method"]
        headers: list[tuple[bytes, bytes]] = scope.get("headers", [])
        target = parse_path(path, method)  # 404 and 405 before the token is looked at
        query_string: bytes = scope.get("query_string", b"")
        token = bearer_token(
            [v.decode("latin-1") for k, v in headers if k == b"authorization"],
            token_in_query=token_in_query(query_string),
            max_bytes=gateway.settings.max_token_bytes,
        )
        who = call.principal = await gateway.verify(active, token)
        query = parse_query(query_string)  # judged only once the token is (an anonymous 401)
        policy = active.policy
        approvals = gateway.approvals
        now = approvals.clock()
        resource = target.resource
        if target.action == "list":
            state = parse_states([v for k, v in query if k == "state"])
            limit = _limit([v for k, v in query if k == "limit"])
            unknown = sorted({k for k, _ in query} - {"state", "limit", "cursor"})
            if unknown:
                raise BadRequest(f"unknown query parameter {unknown[0]!r}", code="param-unknown")
            cursors = [v for k, v in query if k == "cursor"]
            # whether a cursor came (never what it holds), and whether the answer carried one
            call.approval = {
                "id": None, "event": "approval.listed", "state": state, "count": 0,
                "cursor": bool(cursors), "nextCursor": False,
            }  # fmt: skip
            call.authorization = [
                {"resource": resource, "permission": "approval.list", "granted": True}
            ]
            after = parse_list_cursor(cursors, state)
            rows, truncated = await approvals.listing(
                policy, who, state=state, limit=limit, after=after
            )
            call.approval["count"] = len(rows)
            answer: dict[str, Any] = {
                "approvals": [r.view(now) for r in rows],
                "state": state,
                "truncated": truncated,
            }
            if truncated and rows:
                answer["next_cursor"] = ListCursor.after(rows[-1]).text()
                call.approval["nextCursor"] = True
            return answer
        approval_id = parse_approval_id(target.raw_id)
        if query:
            raise BadRequest("this path takes no query string", code="query-not-allowed")
        if target.action == "view":
            call.approval = {"id": approval_id, "event": "approval.viewed"}
            call.authorization = [
                {"resource": resource, "permission": "approval.view", "granted": False}
            ]
            record = await approvals.get(policy, who, approval_id)
            call.authorization[0]["granted"] = True
            call.approval.update(route=record.route, query=record.query)
            return {"approval": record.view(now)}
        approve = target.action == "approve"
        body = await read_json_body(
            receive,
            headers,
            method,
            limit=gateway.settings.max_body_bytes,
            timeout=gateway.settings.body_timeout_seconds,
        )
        body = body or {}
        extra = sorted(set(body) - {"reason"})
        if extra:
            raise BadRequest(f"unknown body member {extra[0]!r}", code="body-invalid")
        reason = check_reason(body.get("reason"))
        event = "approval.approved" if approve else "approval.rejected"
        call.approval = {"id": approval_id, "event": event}
        if reason is not None:
            call.approval["reason"] = reason
        permission = "approval.approve" if approve else "approval.reject"
        call.authorization = [{"resource": resource, "permission": permission, "granted": False}]
        decided, role = await approvals.decide(
            policy, who, approval_id, approve=approve, reason=reason
        )
        call.authorization[0]["granted"] = True
        call.approval.update(
            route=decided.route,
            query=decided.query,
            requester=_requester(decided),
            role=role,
            expiresAt=decided.view(now)["expires_at"],
        )
        return {"approval": decided.view(approvals.clock())}
