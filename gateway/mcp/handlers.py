"""``/mcp``'s tools: ``tools/list`` and ``tools/call`` as the SDK's handlers (``Handlers``), and
the gateway's own ``tools/call`` for a plain call (``Handlers.tool_call``, which the SDK's
handler calls too).

    tools/list -> ``tools.tools_for`` (the routes the token's roles allow)
    tools/call -> ``Gateway.perform``, the very path of an HTTP request (decision, binding,
                  execution, one audit event with ``transport: mcp``)

Both run on what the door established for the request (``Door``: the principal, the policy it
started on, the request id), kept in the ASGI scope's state: only the door hands requests on. A
tool call that is refused or fails is a tool result with ``isError: true`` whose
``structuredContent`` is the problem body HTTP would answer; an unknown tool is a JSON-RPC error
(invalid params), audited as ``no-route``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import mcp_types as types
from mcp.shared.exceptions import MCPError

from gateway.audit.recorder import new_call
from gateway.auth.principal import Principal
from gateway.call_types import Active, Target
from gateway.errors import RouteNotFound
from gateway.http import CALL, Scope, dumps, problem
from gateway.mcp.tools import arguments_of, find_tool, tools_for
from gateway.policy.decide import RequestFacts

if TYPE_CHECKING:
    from gateway.app import Gateway
    from gateway.audit.event import CallRecord

__all__ = ["DOOR_STATE", "Door", "Handlers", "door_of", "new_mcp_call"]

DOOR_STATE = "spangate.mcp"  # the ASGI scope's state key of the request's Door
_SHOWN = 128  # characters of a caller's tool name that an answer repeats


@dataclass(frozen=True)
class Door:
    """What the door established for one POST to /mcp (kept in the ASGI scope's state)."""

    principal: Principal
    active: Active
    request_id: str


def door_of(scope: Scope) -> Door:
    """The request's ``Door``; an internal error (JSON-RPC) for a request that has none."""
    door = scope.get("state", {}).get(DOOR_STATE)
    if not isinstance(door, Door):  # only the door hands requests to the SDK
        raise MCPError(types.INTERNAL_ERROR, "the request did not pass the gateway's door")
    return door


def _door(ctx: Any) -> Door:
    request = ctx.request
    return door_of(request.scope if request is not None else {})


def new_mcp_call(gateway: Gateway, scope: Scope, rid: str) -> CallRecord:
    """A call of the MCP transport, kept in the scope's state (the request's log line and span
    read it)."""
    call = new_call(scope, rid, time.perf_counter(), gateway.trusted)
    call.transport = "mcp"
    scope.setdefault("state", {})[CALL] = call  # the request's log line and span read it
    return call


def _shown(name: str) -> str:
    """A caller's tool name as an answer repeats it: at most 128 characters (then ``...``)."""
    return name if len(name) <= _SHOWN else name[:_SHOWN] + "..."


class Handlers:
    """The SDK server's ``tools/list`` and ``tools/call`` handlers, on ``gateway``."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def list_tools(
        self, ctx: Any, params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        door = _door(ctx)
        policy = door.active.policy
        analysis = await self.gateway.executor.analysis_of(policy)
        tools = tools_for(policy, door.principal, analysis)
        return types.ListToolsResult(tools=[types.Tool.model_validate(t) for t in tools])

    async def call_tool(
        self, ctx: Any, params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        """The SDK's ``tools/call`` handler (every call that ``McpEndpoint._serve_one`` does not
        answer itself: the 2026-07-28 revision, params with ``_meta``...)."""
        door = _door(ctx)
        answer, is_error = await self.tool_call(
            door, ctx.request.scope, ctx.request_id, params.name, params.arguments
        )
        return types.CallToolResult(
            content=[types.TextContent(text=dumps(answer).decode("utf-8"))],
            structured_content=answer,
            is_error=is_error,
        )

    async def tool_call(
        self,
        door: Door,
        scope: Scope,
        rpc_id: str | int,
        name: str,
        arguments: dict[str, Any] | None,
    ) -> tuple[dict[str, Any], bool]:
        """One tool call through ``Gateway.perform``: (its answer, whether it is an error): the
        rows, or the problem body HTTP would answer. An unknown tool raises ``MCPError``
        (invalid params, the problem as its data)."""
        call = new_mcp_call(self.gateway, scope, door.request_id)
        call.principal = door.principal
        call.tool = name
        call.jsonrpc_id = rpc_id
        route = find_tool(door.active.policy, name)

        async def resolve(call: CallRecord, active: Active) -> Target:
            if active.shadow is not None:  # what a shadow policy decides on (gateway.call_shadow)
                facts = dict(arguments or {})
                call.extra["facts"] = RequestFacts("MCP", name, (), facts, tool=name)
            if route is None:
                raise RouteNotFound(f"no tool named {_shown(name)!r}")
            path, values, idempotency = arguments_of(route, arguments)
            return Target(route, path, body=values, idempotency=idempotency)

        tracing = self.gateway.tracing
        if tracing is None:
            outcome = await self.gateway.perform(call, door.active, resolve)
        else:
            with tracing.resume(scope):  # not the SDK's span: the request's
                outcome = await self.gateway.perform(call, door.active, resolve)
        if outcome.error is not None:
            body = problem(outcome.error, door.request_id)
            if route is None and outcome.error.code == "no-route":
                raise MCPError(types.INVALID_PARAMS, f"Unknown tool: {_shown(name)}", data=body)
            return body, True
        # approval-required (202): nothing ran; the answer is not the tool's output
        return outcome.body or {}, outcome.status == 202
