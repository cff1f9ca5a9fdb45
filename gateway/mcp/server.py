"""``/mcp``: MCP's Streamable HTTP transport (the official SDK), stateless, JSON responses.

    POST /mcp -> the door (here): method, Host/Origin (DNS-rebinding protection), bearer token
                 (the gateway's own verifier: 401 with ``resource_metadata``), body limits
              -> the SDK (StreamableHTTPSessionManager, stateless, json_response): JSON-RPC,
                 protocol revisions 2026-07-28 and 2025-11-25; a 2025-11-25-era ``tools/call``
                 (``single_tool_call``) is answered by the gateway when its params are only a
                 name and arguments (``plain_tool_call``: the tool, then the bytes the SDK's
                 runner would answer, ``tool_result_body``), else goes to the SDK's
                 single-exchange entry (``serve_one``: same runner, no per-request transport,
                 streams and task)
              -> tools/list: ``tools.tools_for`` (the routes the token's roles allow)
              -> tools/call: ``Gateway.perform``, the very path of an HTTP request (decision,
                 binding, execution, one audit event with ``transport: mcp``)

A refusal at the door is a problem+json answer with its stable code, audited like any call. A
tool call that is refused or fails is a tool result with ``isError: true`` whose
``structuredContent`` is the problem body HTTP would answer (code, detail, request id); an
unknown tool is a JSON-RPC error (invalid params), audited as ``no-route``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import mcp_types as types
import pydantic_core
from mcp.server._streamable_http_modern import _SingleExchangeDispatchContext
from mcp.server.connection import Connection
from mcp.server.lowlevel.server import Server
from mcp.server.runner import serve_one
from mcp.server.streamable_http import check_accept_headers
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecurityMiddleware, TransportSecuritySettings
from mcp.shared.exceptions import MCPError
from mcp.shared.inbound import MCP_PROTOCOL_VERSION_HEADER
from mcp.shared.jsonrpc_dispatcher import (
    handler_exception_to_error_data,
    progress_token_from_params,
)
from mcp.shared.message import ServerMessageMetadata
from mcp.shared.transport_context import TransportContext
from mcp_types.methods import serialize_server_result
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from pydantic import ValidationError
from starlette.requests import Request

from gateway import __version__
from gateway.audit.recorder import new_call
from gateway.auth.principal import Principal
from gateway.auth.verify import bearer_token
from gateway.call_types import Active, Target
from gateway.errors import (
    AuthError,
    BadRequest,
    Forbidden,
    GatewayError,
    MethodNotAllowed,
    MisdirectedRequest,
    RouteNotFound,
    UnsupportedMediaType,
)
from gateway.http import (
    CALL,
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
    with_request_id,
)
from gateway.mcp.metadata import metadata_url, parse_host
from gateway.mcp.tools import arguments_of, find_tool, tools_for
from gateway.policy.decide import RequestFacts

if TYPE_CHECKING:
    from gateway.app import Gateway
    from gateway.audit.event import CallRecord
    from gateway.settings import Settings

__all__ = ["McpEndpoint", "host_allowed", "public_base", "request_host", "security_settings"]

_STATE = "spangate.mcp"
log = logging.getLogger("spangate")


@dataclass(frozen=True)
class _Door:
    """What the door established for one POST to /mcp (kept in the ASGI scope's state)."""

    principal: Principal
    active: Active
    request_id: str


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _audience_of(principal: Principal) -> set[str]:
    """The token's ``aud`` (a string or a list of them, RFC 7519 §4.1.3), as a set."""
    aud = principal.claims.get("aud")
    if isinstance(aud, str):
        return {aud}
    if isinstance(aud, list):
        return {a for a in aud if isinstance(a, str)}
    return set()


def security_settings(settings: Settings) -> TransportSecuritySettings:
    """The SDK's DNS-rebinding protection, on, with the hosts and origins of the settings (and
    the public URL's own)."""
    hosts = _split(settings.mcp_allowed_hosts)
    origins = _split(settings.mcp_allowed_origins)
    if settings.public_url:
        from urllib.parse import urlsplit

        parts = urlsplit(settings.public_url)
        hosts.append(parts.netloc)
        origins.append(f"{parts.scheme}://{parts.netloc}")
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True, allowed_hosts=hosts, allowed_origins=origins
    )


def host_allowed(host: str, allowed: list[str]) -> bool:
    """Is ``host`` (already ``parse_host``-checked) one of ``allowed`` (``name:*``: any port)?"""
    return host in allowed or any(
        a.endswith(":*") and host.startswith(a[:-1]) and host[len(a) - 1 :].isdigit()
        for a in allowed
    )


def request_host(settings: Settings, scope: Scope, allowed: list[str] | None = None) -> str:
    """The request's one Host header, strictly a host name or IP literal with an optional port
    1-65535 (``parse_host``), and one the gateway answers as /mcp (SPANGATE_MCP_ALLOWED_HOSTS,
    the public URL's host; ``allowed``: those, when the caller has them already); else
    ``MisdirectedRequest`` (421 ``host-not-allowed``)."""
    headers: list[tuple[bytes, bytes]] = scope.get("headers", [])
    values = [v.decode("latin-1") for k, v in headers if k == b"host"]
    if len(values) != 1 or parse_host(values[0]) is None:
        raise MisdirectedRequest(
            "the Host header must be one host name or IP literal, with an optional port 1-65535"
        )
    if allowed is None:
        allowed = security_settings(settings).allowed_hosts
    if not host_allowed(values[0], allowed):
        raise MisdirectedRequest("this Host is not one /mcp answers (SPANGATE_MCP_ALLOWED_HOSTS)")
    return values[0]


def public_base(settings: Settings, scope: Scope) -> str:
    """The gateway's public base URL: the setting, else the request's scheme and (checked) Host
    (``request_host``: raises ``MisdirectedRequest``)."""
    if settings.public_url:
        return settings.public_url
    scheme = "https" if scope.get("scheme") == "https" else "http"
    return f"{scheme}://{request_host(settings, scope)}"


_SHOWN = 128  # characters of a caller's tool name that an answer repeats


def _shown(name: str) -> str:
    """A caller's tool name as an answer repeats it: at most 128 characters (then ``...``)."""
    return name if len(name) <= _SHOWN else name[:_SHOWN] + "..."


NOT_JSON: Any = object()  # ``json_of`` for a body that is no JSON


def json_of(body: bytes) -> Any:
    """The body's JSON value, parsed once for the door's two looks at it (``NOT_JSON`` when it is
    none; the SDK answers such bodies)."""
    try:
        return pydantic_core.from_json(body)
    except ValueError:
        return NOT_JSON


def malformed_tool_call(message: Any) -> tuple[dict[str, Any], GatewayError] | None:
    """A JSON-RPC ``tools/call`` request (one message, with an id; ``message`` as ``json_of``
    parsed it) whose params the SDK would refuse with -32602 before calling the tool: (the
    message, ``tool-call-invalid``); else None (other messages, and bodies that are no JSON, are
    the SDK's)."""
    if not isinstance(message, dict) or message.get("method") != "tools/call":
        return None
    rpc_id = message.get("id")
    if message.get("jsonrpc") != "2.0" or isinstance(rpc_id, bool):
        return None
    if not isinstance(rpc_id, str | int):
        return None  # a notification, or an id the SDK refuses: the SDK's answer
    params = message.get("params")
    if not isinstance(params, dict):
        detail = "tools/call needs params: an object with the tool's name and arguments"
    elif not isinstance(params.get("name"), str):
        detail = "tools/call's name must be a string: the tool's name"
    elif not isinstance(params.get("arguments"), dict | None):
        detail = "tools/call's arguments must be an object (or absent)"
    else:
        return None
    return message, BadRequest(detail, code="tool-call-invalid")


_VERSION_HEADER = MCP_PROTOCOL_VERSION_HEADER.lower().encode("ascii")


def single_tool_call(
    scope: Scope, parsed: Any, request: Request | None = None
) -> tuple[types.JSONRPCRequest, str] | None:
    """A POST that the SDK's stateless JSON transport would hand its dispatcher as one
    ``tools/call`` request of the handshake era (``MCP-Protocol-Version`` absent or one of
    ``HANDSHAKE_PROTOCOL_VERSIONS``, ``Accept`` taking JSON, a body that is one JSON-RPC request,
    checked by the SDK's own model; ``parsed`` as ``json_of`` parsed it; ``request``: the
    scope's, when the caller has one, its headers parsed once): (the request, its
    protocol version); else None
    (everything else, the 2026-07-28 revision and every refusal included, is the SDK
    manager's)."""
    headers: list[tuple[bytes, bytes]] = scope.get("headers", [])
    version = next((v.decode("latin-1") for k, v in headers if k == _VERSION_HEADER), None)
    if version is not None and version not in HANDSHAKE_PROTOCOL_VERSIONS:
        return None
    if not check_accept_headers(request if request is not None else Request(scope))[0]:
        return None  # the SDK's 406
    if parsed is NOT_JSON:
        return None
    try:
        message = types.jsonrpc_message_adapter.validate_python(parsed, by_name=False)
    except (ValueError, ValidationError):  # not JSON, or no JSON-RPC message: the SDK answers
        return None
    if not isinstance(message, types.JSONRPCRequest) or message.method != "tools/call":
        return None
    return message, version if version is not None else types.DEFAULT_NEGOTIATED_VERSION


_PLAIN_PARAMS = frozenset({"name", "arguments"})


def _plain_result_versions() -> frozenset[str]:
    """The handshake-era revisions whose ``tools/call`` result the SDK's serialisation passes
    through unchanged (its per-revision sieve keeps ``content``, ``isError`` and
    ``structuredContent`` as they are): the ones ``tool_result_body`` may answer. Asked of the
    SDK itself, once: a revision whose sieve changes the result stays with the SDK's runner."""
    probe = {
        "content": [{"text": "t", "type": "text"}],
        "isError": False,
        "structuredContent": {"k": [1, None, "v"]},
    }
    plain = set()
    for version in HANDSHAKE_PROTOCOL_VERSIONS:
        try:
            shaped = serialize_server_result("tools/call", version, probe)
        except (KeyError, ValueError):  # ValidationError is a ValueError
            continue
        if shaped == probe and list(shaped) == list(probe):
            plain.add(version)
    return frozenset(plain)


PLAIN_RESULT_VERSIONS = _plain_result_versions()


def plain_tool_call(message: types.JSONRPCRequest, version: str) -> bool:
    """May the gateway answer this one ``tools/call`` (``single_tool_call``'s) itself, with the
    bytes the SDK's runner would answer: params that are only ``name`` (a string) and
    ``arguments`` (an object, or absent or null), which every handshake-era revision's params
    model accepts as they are (``malformed_tool_call`` refused other types), and a revision
    whose result the SDK passes through unchanged (``PLAIN_RESULT_VERSIONS``). Anything else
    (``_meta``, ``task``, another revision) is the SDK runner's, with its validation and
    answers."""
    params = message.params
    return (
        version in PLAIN_RESULT_VERSIONS
        and params is not None
        and params.keys() <= _PLAIN_PARAMS
        and isinstance(params.get("name"), str)
        and isinstance(params.get("arguments"), dict | None)
    )


def tool_result_body(rpc_id: str | int, answer: dict[str, Any], is_error: bool) -> bytes:
    """The JSON-RPC response of a ``tools/call`` whose tool answered ``answer`` (the rows, or the
    problem when ``is_error``), as the SDK's runner and JSON transport answer it (same members,
    same order): its text content is the answer's JSON, its structured content the same JSON,
    encoded once."""
    text = dumps(answer)
    return b"".join(
        (
            b'{"jsonrpc":"2.0","id":',
            dumps(rpc_id),
            b',"result":{"content":[{"text":',
            dumps(text.decode("utf-8")),
            b',"type":"text"}],"isError":',
            b"true" if is_error else b"false",
            b',"structuredContent":',
            text,
            b"}}",
        )
    )


class McpEndpoint:
    """The ASGI app of ``/mcp`` (``Gateway`` routes the path here)."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        settings = gateway.settings
        self.security = security_settings(settings)
        self._guard = TransportSecurityMiddleware(self.security)
        self._audiences = set(_split(settings.mcp_audience))  # none: any audience the IdP's
        self.server: Server[Any] = Server(
            "spangate",
            version=__version__,
            instructions="Each tool runs one whitelisted Spanner statement that your token may "
            "run; results are the rows (structuredContent) and their JSON text.",
            on_list_tools=self._list_tools,
            on_call_tool=self._call_tool,
        )
        # The SDK wraps every message in an OpenTelemetry span of its own (~0.1 ms per call even
        # with no tracer configured); the gateway's own request path is what is traced.
        self.server.middleware = []
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
        parsed = json_of(body)
        malformed = malformed_tool_call(parsed)
        if malformed is not None:
            await self._answer_malformed(scope, send, rid, active, principal, *malformed)
            return
        scope.setdefault("state", {})[_STATE] = _Door(principal, active, rid)
        single = single_tool_call(scope, parsed, request)
        if single is not None:
            await self._serve_one(scope, send, rid, *single)
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
                door = self._door_of(scope)
                answer, is_error = await self._tool_call(
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
        """The door's checks, in order: method (405), Host (421), Origin (403), token (401; its
        audience when SPANGATE_MCP_AUDIENCE is set), media type (415), body (413/408); raises
        the refusal. The token and the body."""
        settings = self.gateway.settings
        headers: list[tuple[bytes, bytes]] = scope.get("headers", [])
        if scope["method"] != "POST":  # stateless JSON: no GET stream, no session to DELETE
            raise MethodNotAllowed(
                f"{scope['method']} is not allowed on /mcp: POST JSON-RPC messages",
                allow=["POST"],
            )
        # strictly, before anything uses it (the 401's challenge)
        request_host(settings, scope, self.security.allowed_hosts)
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
        query = parse_query(scope.get("query_string", b""))  # as HTTP reads it
        token = bearer_token(
            [v.decode("latin-1") for k, v in headers if k == b"authorization"],
            token_in_query=any(k == "access_token" for k, _ in query),
            max_bytes=settings.max_token_bytes,
        )
        principal = await self.gateway.verify(active, token)  # its span when traced
        if self._audiences and not _audience_of(principal) & self._audiences:
            raise AuthError(
                "the token's audience is not this MCP resource (SPANGATE_MCP_AUDIENCE)",
                code="audience-mismatch",
            )
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
        call = self._new_call(scope, rid)
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
        call = self._new_call(scope, rid)

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
        call = self._new_call(scope, rid)

        async def resolve(call: CallRecord, active: Active) -> Target:
            raise error

        outcome = await self.gateway.perform(call, active, resolve)
        assert outcome.error is not None
        await send_problem(send, outcome.error, rid, head=False)

    def _new_call(self, scope: Scope, rid: str) -> CallRecord:
        call = new_call(scope, rid, time.perf_counter(), self.gateway.trusted)
        call.transport = "mcp"
        scope.setdefault("state", {})[CALL] = call  # the request's log line and span read it
        return call

    # -- the tools -----------------------------------------------------------------------------
    @staticmethod
    def _door_of(scope: Scope) -> _Door:
        door = scope.get("state", {}).get(_STATE)
        if not isinstance(door, _Door):  # only the door hands requests to the SDK
            raise MCPError(types.INTERNAL_ERROR, "the request did not pass the gateway's door")
        return door

    @classmethod
    def _door(cls, ctx: Any) -> _Door:
        request = ctx.request
        return cls._door_of(request.scope if request is not None else {})

    async def _list_tools(
        self, ctx: Any, params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        door = self._door(ctx)
        policy = door.active.policy
        analysis = await self.gateway.executor.analysis_of(policy)
        tools = tools_for(policy, door.principal, analysis)
        return types.ListToolsResult(tools=[types.Tool.model_validate(t) for t in tools])

    async def _call_tool(
        self, ctx: Any, params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        """The SDK's ``tools/call`` handler (every call that ``_serve_one`` does not answer
        itself: the 2026-07-28 revision, params with ``_meta``...)."""
        door = self._door(ctx)
        answer, is_error = await self._tool_call(
            door, ctx.request.scope, ctx.request_id, params.name, params.arguments
        )
        return types.CallToolResult(
            content=[types.TextContent(text=dumps(answer).decode("utf-8"))],
            structured_content=answer,
            is_error=is_error,
        )

    async def _tool_call(
        self,
        door: _Door,
        scope: Scope,
        rpc_id: str | int,
        name: str,
        arguments: dict[str, Any] | None,
    ) -> tuple[dict[str, Any], bool]:
        """One tool call through ``Gateway.perform``: (its answer, whether it is an error): the
        rows, or the problem body HTTP would answer. An unknown tool raises ``MCPError``
        (invalid params, the problem as its data)."""
        call = self._new_call(scope, door.request_id)
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
