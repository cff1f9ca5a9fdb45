"""``/mcp``: MCP's Streamable HTTP transport (the official SDK), stateless, JSON responses.

    POST /mcp -> the door (here): method, Host/Origin (DNS-rebinding protection, ``hosts``),
                 bearer token (the gateway's own verifier: 401 with ``resource_metadata``), body
                 limits
              -> the SDK (StreamableHTTPSessionManager, stateless, json_response): JSON-RPC,
                 protocol revisions 2026-07-28 and 2025-11-25; a 2025-11-25-era ``tools/call``
                 (``messages.single_tool_call``) is answered by the gateway when its params are
                 only a name and arguments (``messages.plain_tool_call``: the tool, then the
                 bytes the SDK's runner would answer, ``messages.tool_result_body``), else goes
                 to the SDK's single-exchange entry (``serve_one``: same runner, no per-request
                 transport, streams and task)
              -> tools/list, tools/call: ``handlers`` (``Gateway.perform`` for each call)

A refusal at the door is a problem+json answer with its stable code, audited like any call; so
is a ``tools/call`` the SDK would refuse before any tool runs (``messages.malformed_tool_call``:
its JSON-RPC error, answered here). Protocol errors are JSON-RPC errors, not audited: a body that
is no strict JSON (``messages.read_json``, the HTTP routes' reader: -32700, 400), a
handshake-era body that is no JSON-RPC message (``messages.envelope_refusal``), params a
method's schema refuses (``_params_in_words``), each naming the member, never pydantic's text.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import mcp_types as types
from mcp.server._streamable_http_modern import _SingleExchangeDispatchContext
from mcp.server.connection import Connection
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.lowlevel.server import Server
from mcp.server.runner import serve_one
from mcp.server.streamable_http import check_accept_headers
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecurityMiddleware
from mcp.shared.exceptions import MCPError
from mcp.shared.jsonrpc_dispatcher import (
    handler_exception_to_error_data,
    progress_token_from_params,
)
from mcp.shared.message import ServerMessageMetadata
from mcp.shared.transport_context import TransportContext
from pydantic import ValidationError
from starlette.requests import Request

from gateway import __version__
from gateway.auth.principal import Principal
from gateway.auth.verify import bearer_token
from gateway.call_types import Active, Target
from gateway.errors import (
    AuthError,
    Forbidden,
    GatewayError,
    MethodNotAllowed,
    MisdirectedRequest,
    UnsupportedMediaType,
)
from gateway.http import (
    Message,
    Receive,
    Scope,
    Send,
    dumps,
    parse_query,
    problem,
    read_body,
    send_problem,
    send_response,
    token_in_query,
    with_request_id,
)
from gateway.mcp.handlers import DOOR_STATE, Door, Handlers, door_of, new_mcp_call
from gateway.mcp.hosts import public_base, request_host, security_settings, setting_items
from gateway.mcp.messages import (
    envelope_refusal,
    malformed_tool_call,
    params_problem,
    parse_error,
    plain_tool_call,
    read_json,
    single_tool_call,
    tool_result_body,
)
from gateway.mcp.metadata import metadata_url

if TYPE_CHECKING:
    from gateway.app import Gateway
    from gateway.audit.event import CallRecord

__all__ = ["McpEndpoint"]

log = logging.getLogger("spangate")


def _audience_of(principal: Principal) -> set[str]:
    """The token's ``aud`` (a string or a list of them, RFC 7519 §4.1.3), as a set."""
    aud = principal.claims.get("aud")
    if isinstance(aud, str):
        return {aud}
    if isinstance(aud, list):
        return {a for a in aud if isinstance(a, str)}
    return set()


async def _params_in_words(
    ctx: ServerRequestContext[Any, Any], call_next: CallNext
) -> HandlerResult:
    """Server middleware (around the SDK runner's params validation and handler): a pydantic
    refusal of the request's params is -32602 with a message naming each member and what it
    must be (``params_problem``) instead of the SDK's bare "Invalid request parameters"; any
    other error, as the SDK maps it."""
    try:
        return await call_next(ctx)
    except ValidationError:
        problem = params_problem(ctx.method, ctx.protocol_version, ctx.params)
        if problem is None:  # not the params (or no model of them): the SDK's answer
            raise
        raise MCPError(code=types.INVALID_PARAMS, message=problem) from None


class McpEndpoint:
    """The ASGI app of ``/mcp`` (``Gateway`` routes the path here)."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        settings = gateway.settings
        self.security = security_settings(settings)
        self._guard = TransportSecurityMiddleware(self.security)
        self._audiences = set(setting_items(settings.mcp_audience))  # none: any audience the IdP's
        self.handlers = Handlers(gateway)  # tools/list, tools/call
        self.server: Server[Any] = Server(
            "spangate",
            version=__version__,
            instructions="Each tool runs one whitelisted Spanner statement that your token may "
            "run; results are the rows (structuredContent) and their JSON text.",
            on_list_tools=self.handlers.list_tools,
            on_call_tool=self.handlers.call_tool,
        )
        # The SDK wraps every message in an OpenTelemetry span of its own (~0.1 ms per call even
        # with no tracer configured); the gateway's own request path is what is traced. Params a
        # method's model refuses are told in words (``params_problem``), not the SDK's
        # "Invalid request parameters".
        self.server.middleware = [_params_in_words]
        self.manager = self._manager()
        self._running: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    def _manager(self) -> StreamableHTTPSessionManager:
        return StreamableHTTPSessionManager(
            self.server,
            json_response=True,
            stateless=True,
            security_settings=self.security,
            max_request_body_size=max(1, self.gateway.settings.max_body_bytes),
        )

    # -- lifecycle (the gateway's lifespan) ----------------------------------------------------
    async def start(self) -> None:
        """Run the SDK's session manager in a task of its own (its task group is entered and
        left in one task, whichever tasks start and stop the gateway)."""
        if self._running is not None:
            return
        started = asyncio.Event()
        self._stopping = asyncio.Event()
        manager = self.manager = self._manager()  # a manager runs once

        async def run() -> None:
            async with manager.run():
                started.set()
                await self._stopping.wait()

        self._running = asyncio.create_task(run(), name="spangate-mcp")
        waiter = asyncio.create_task(started.wait())
        await asyncio.wait({self._running, waiter}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if self._running.done():
            failed, self._running = self._running, None
            failed.result()  # raises what stopped it

    async def stop(self) -> None:
        running, self._running = self._running, None
        if running is not None:
            self._stopping.set()
            await running

    # -- the door ------------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send, rid: str) -> None:
        active = self.gateway.active
        request = Request(scope)  # its headers parsed once, for the SDK's checks
        try:
            principal, body = await self._enter(scope, receive, active, request)
        except AuthError as exc:
            await self._refuse(scope, send, rid, active, self._challenge(exc, scope))
            return
        except GatewayError as exc:
            await self._refuse(scope, send, rid, active, exc)
            return
        except asyncio.CancelledError:  # the server gave up on the request: still one event
            await self._cancelled(scope, rid, active)
            raise
        except Exception:  # a bug at the door: an audited 500, as ``Gateway.perform`` answers
            log.exception("request %s failed at /mcp's door", rid)
            error = GatewayError("an unexpected error occurred; see the logs for this request id")
            await self._refuse(scope, send, rid, active, error)
            return
        parsed, unparsable = read_json(body)
        if unparsable is not None and check_accept_headers(request)[0]:  # else the SDK's 406
            await send_response(send, 400, parse_error(unparsable), "application/json", rid)
            return
        malformed = malformed_tool_call(parsed)
        if malformed is not None:
            await self._answer_malformed(scope, send, rid, active, principal, *malformed)
            return
        scope.setdefault("state", {})[DOOR_STATE] = Door(principal, active, rid)
        single = single_tool_call(scope, parsed, request)
        if single is not None:
            await self._serve_one(scope, send, rid, *single)
            return
        refusal = envelope_refusal(scope, parsed, request)
        if refusal is not None:
            await send_response(send, 400, refusal, "application/json", rid)
            return
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.manager.handle_request(scope, replay, with_request_id(send, rid))

    async def _serve_one(
        self,
        scope: Scope,
        send: Send,
        rid: str,
        message: types.JSONRPCRequest,
        version: str,
    ) -> None:
        """One stateless ``tools/call``, answered as the SDK's JSON transport answers: 200
        ``application/json``, the JSON-RPC response or error. A plain call (``plain_tool_call``)
        is answered here: the tool, then its result's bytes (``tool_result_body``), none of the
        SDK runner's per-call kernel, context, second params validation and result models; any
        other goes through the SDK's single-exchange entry (``serve_one``: the same runner,
        middleware, params validation, handler and result serialisation as its transport's
        dispatcher), without a per-request transport, memory streams and server task. A handler
        exception maps as the SDK's dispatcher maps it."""
        body: bytes | None = None
        try:
            if plain_tool_call(message, version):
                params = message.params
                assert params is not None  # plain_tool_call
                door = door_of(scope)
                answer, is_error = await self.handlers.tool_call(
                    door, scope, message.id, params["name"], params.get("arguments")
                )
                body = tool_result_body(message.id, answer, is_error)
            else:
                result = await self._sdk_serve_one(scope, message, version)
                reply: types.JSONRPCResponse | types.JSONRPCError = types.JSONRPCResponse(
                    jsonrpc="2.0", id=message.id, result=result
                )
        except Exception as exc:
            error = handler_exception_to_error_data(exc)
            if error is None:  # as the SDK's dispatcher answers an unmapped exception
                log.exception("MCP request %s: the tools/call handler raised", rid)
                error = types.ErrorData(code=0, message=str(exc))
            reply = types.JSONRPCError(jsonrpc="2.0", id=message.id, error=error)
        if body is None:
            body = reply.model_dump_json(by_alias=True, exclude_unset=True).encode("utf-8")
        await send_response(send, 200, body, "application/json", rid)

    async def _sdk_serve_one(
        self, scope: Scope, message: types.JSONRPCRequest, version: str
    ) -> dict[str, Any]:
        """``message`` through the SDK's single-exchange entry: its result, or what it raised."""
        dctx = _SingleExchangeDispatchContext(
            transport=TransportContext(kind="streamable-http", can_send_request=False),
            request_id=message.id,
            message_metadata=ServerMessageMetadata(request_context=Request(scope)),
            progress_token=progress_token_from_params(message.params),
        )
        return await serve_one(
            self.server,
            dctx,
            message.method,
            message.params,
            connection=Connection.from_envelope(version, None, None),
            lifespan_state=self.manager._lifespan_state,  # entered once by manager.run()
        )

    async def _enter(
        self, scope: Scope, receive: Receive, active: Active, request: Request
    ) -> tuple[Principal, bytes]:
        """The door's checks, in order: method (405), Host (421), Origin (403: at most one
        header, an allowed one), token (401; its audience when SPANGATE_MCP_AUDIENCE is set),
        query string (400), media type (415), body (413/408); raises the refusal. The token and
        the body."""
        settings = self.gateway.settings
        headers: list[tuple[bytes, bytes]] = scope.get("headers", [])
        if scope["method"] != "POST":  # stateless JSON: no GET stream, no session to DELETE
            raise MethodNotAllowed(
                f"{scope['method']} is not allowed on /mcp: POST JSON-RPC messages",
                allow=["POST"],
            )
        # strictly, before anything uses it (the 401's challenge)
        request_host(settings, scope, self.security.allowed_hosts)
        if sum(1 for k, _ in headers if k == b"origin") > 1:  # the SDK reads only the first
            raise Forbidden(
                "a request to /mcp carries at most one Origin header",
                code="origin-not-allowed",
            )
        refused = await self._guard.validate_request(request, is_post=False)
        if refused is not None:
            if refused.status_code == 421:
                raise MisdirectedRequest(
                    "this Host is not one /mcp answers (SPANGATE_MCP_ALLOWED_HOSTS)"
                )
            raise Forbidden(
                "this Origin may not call /mcp (SPANGATE_MCP_ALLOWED_ORIGINS)",
                code="origin-not-allowed",
            )
        query_string: bytes = scope.get("query_string", b"")
        token = bearer_token(
            [v.decode("latin-1") for k, v in headers if k == b"authorization"],
            token_in_query=token_in_query(query_string),
            max_bytes=settings.max_token_bytes,
        )
        principal = await self.gateway.verify(active, token)  # its span when traced
        if self._audiences and not _audience_of(principal) & self._audiences:
            raise AuthError(
                "the token's audience is not this MCP resource (SPANGATE_MCP_AUDIENCE)",
                code="audience-mismatch",
            )
        parse_query(query_string)  # as HTTP reads it, once the token is (an anonymous 401)
        ctype = next((v for k, v in headers if k == b"content-type"), b"")
        media = ctype.decode("latin-1").split(";", 1)[0].strip().lower()
        if media != "application/json":  # JSON-RPC messages (the SDK's own check, answered
            raise UnsupportedMediaType(  # here as a problem)
                f"the body must be application/json, not {media or 'unspecified'}"
            )
        body = await read_body(
            receive,
            headers,
            limit=settings.max_body_bytes,
            timeout=settings.body_timeout_seconds,
        )
        return principal, body

    async def _answer_malformed(
        self,
        scope: Scope,
        send: Send,
        rid: str,
        active: Active,
        principal: Principal,
        message: dict[str, Any],
        error: GatewayError,
    ) -> None:
        """A ``tools/call`` the SDK would refuse before any tool runs (a ``name`` that is no
        string, ``arguments`` that are no object): its JSON-RPC error (-32602, ``data`` the
        problem), answered here so that the call gets its audit event."""
        call = new_mcp_call(self.gateway, scope, rid)
        call.principal = principal
        name = message["params"].get("name") if isinstance(message["params"], dict) else None
        call.tool = name if isinstance(name, str) else None
        call.jsonrpc_id = message["id"]

        async def resolve(call: CallRecord, active: Active) -> Target:
            raise error

        outcome = await self.gateway.perform(call, active, resolve)
        assert outcome.error is not None
        answer = {
            "jsonrpc": "2.0",
            "id": message["id"],
            "error": {
                "code": types.INVALID_PARAMS,
                "message": outcome.error.detail,
                "data": problem(outcome.error, rid),
            },
        }
        await send_response(send, 200, dumps(answer), "application/json", rid)

    def _challenge(self, exc: AuthError, scope: Scope) -> AuthError:
        """The 401's challenge names where the resource's metadata is (RFC 9728 §5.1); without
        it when no URL can be made of the settings and the request."""
        try:
            url = metadata_url(public_base(self.gateway.settings, scope))
        except Exception:  # the door checked the Host; never a 500 for want of a challenge
            log.warning("no resource_metadata URL for /mcp's 401", exc_info=True)
            return exc
        challenge = exc.headers.get("WWW-Authenticate", "Bearer")
        fresh = type(exc).__new__(type(exc))  # a copy: the verifier's error may be a cached one
        fresh.__dict__.update(exc.__dict__)
        fresh.args = exc.args
        fresh.headers = {
            **exc.headers,
            "WWW-Authenticate": challenge.replace(
                "Bearer ", f'Bearer resource_metadata="{url}", ', 1
            ),
        }
        return fresh

    async def _cancelled(self, scope: Scope, rid: str, active: Active) -> None:
        """A request cancelled at the door: its 499 event, as ``Gateway.perform`` records one."""
        call = new_mcp_call(self.gateway, scope, rid)

        async def resolve(call: CallRecord, active: Active) -> Target:
            raise asyncio.CancelledError

        try:
            await self.gateway.perform(call, active, resolve)
        except asyncio.CancelledError:
            pass

    async def _refuse(
        self, scope: Scope, send: Send, rid: str, active: Active, error: GatewayError
    ) -> None:
        """A refusal at the door: audited (one event, as every call), answered problem+json."""
        call = new_mcp_call(self.gateway, scope, rid)

        async def resolve(call: CallRecord, active: Active) -> Target:
            raise error

        outcome = await self.gateway.perform(call, active, resolve)
        assert outcome.error is not None
        await send_problem(send, outcome.error, rid, head=False)
