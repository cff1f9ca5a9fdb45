"""The ASGI application: fixed endpoints through FastAPI, policy routes through the compiled router.

    request -> Gateway.__call__ (pure ASGI: request id, timing, one audit event per request)
            -> /healthz /readyz /openapi.json /docs : FastAPI
            -> anything else: token -> Principal -> Decision -> statement -> JSON rows

Every error is RFC 9457 ``application/problem+json`` with a stable ``code`` and the ``request_id``;
unexpected exceptions become a 500 ``internal`` without details (logged with the request id).
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from gateway import __version__
from gateway.audit.event import params_record, principal_record, utc_now
from gateway.audit.trail import AuditTrail
from gateway.auth.principal import Principal
from gateway.auth.verify import TokenVerifier, bearer_token
from gateway.errors import (
    AuditUnavailable,
    BadRequest,
    GatewayError,
    PayloadTooLarge,
    SpannerError,
    UnsupportedMediaType,
)
from gateway.openapi import openapi_document
from gateway.policy.bind import BODY_METHODS
from gateway.policy.compiled import CompiledPolicy
from gateway.policy.decide import Decision, RequestFacts, decide, match_route
from gateway.settings import Settings
from gateway.spanner.execute import Executor, Result

__all__ = ["Gateway", "create_app"]

log = logging.getLogger("spangate")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

FIXED_PATHS = frozenset({"/healthz", "/readyz", "/openapi.json", "/docs", "/docs/oauth2-redirect"})
PROBLEM_TYPE = "https://spangate.dev/problems/"
_JSON_TYPES = ("application/json",)


def _request_id(given: bytes | None) -> str:
    if given and len(given) <= 128 and all(0x21 <= b <= 0x7E for b in given):
        return given.decode("ascii")
    return secrets.token_hex(16)


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


@dataclass
class _Call:
    """What the audit event needs to know about one request, filled in as it goes."""

    request_id: str
    method: str
    path: str
    started: float
    client: str | None
    user_agent: str | None
    principal: Principal | None = None
    decision: Decision | None = None
    result: Result | None = None
    error: GatewayError | None = None
    status: int = 500
    extra: dict[str, Any] = field(default_factory=dict)


class Gateway:
    """The whole gateway as one ASGI callable. ``policy`` may be swapped atomically (reload)."""

    def __init__(
        self,
        settings: Settings,
        policy: CompiledPolicy,
        *,
        verifier: TokenVerifier,
        executor: Executor,
        audit: AuditTrail,
        audit_key: bytes | None = None,
        closers: list[Callable[[], Awaitable[None]]] | None = None,
    ) -> None:
        self.settings = settings
        self._closers = closers or []
        self.policy = policy
        self.verifier = verifier
        self.executor = executor
        self.audit = audit
        self._audit_key = audit_key
        self.ready = False
        self.api = self._fixed_endpoints()

    # -- lifecycle ----------------------------------------------------------------------------
    async def startup(self) -> None:
        """Fetch every issuer's keys and warm every identity's Database, then say ready."""
        for cache in self.verifier.caches.values():
            await cache.start()
        await self.executor.warm()
        self.ready = True

    async def shutdown(self) -> None:
        self.ready = False
        await self.audit.close()
        self.executor.close()
        for close in self._closers:
            await close()

    # -- ASGI ---------------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        headers = scope.get("headers", [])
        rid = _request_id(next((v for k, v in headers if k == b"x-request-id"), None))
        if scope["path"] in FIXED_PATHS:
            await self.api(scope, receive, _with_request_id(send, rid))
            return
        await self._handle(scope, receive, send, rid)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    log.exception("start-up failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _handle(self, scope: Scope, receive: Receive, send: Send, rid: str) -> None:
        headers: list[tuple[bytes, bytes]] = scope.get("headers", [])
        client = scope.get("client")
        call = _Call(
            request_id=rid,
            method=scope["method"],
            path=scope["path"],
            started=time.perf_counter(),
            client=client[0] if client else None,
            user_agent=next((v.decode("latin-1") for k, v in headers if k == b"user-agent"), None),
        )
        policy = self.policy  # requests in flight finish on the policy they started with
        try:
            status, body = await self._serve(scope, receive, headers, call, policy)
        except GatewayError as exc:
            call.error = exc
            status, body = exc.status, None
        except Exception:
            log.exception("request %s failed", rid)
            call.error = GatewayError(
                "an unexpected error occurred; see the logs for this request id"
            )
            status, body = 500, None
        call.status = status
        try:
            await self.audit.record(self._event(call, policy))
        except AuditUnavailable as exc:
            call.error, status, body = exc, exc.status, None
        except Exception:
            log.exception("audit failed for request %s", rid)
            call.error = AuditUnavailable("the audit trail cannot be written")
            status, body = 503, None
        if call.error is not None:
            await self._send_problem(send, call.error, rid, head=scope["method"] == "HEAD")
        else:
            await _send(
                send, status, body or b"", "application/json", rid, head=scope["method"] == "HEAD"
            )

    async def _serve(
        self,
        scope: Scope,
        receive: Receive,
        headers: list[tuple[bytes, bytes]],
        call: _Call,
        policy: CompiledPolicy,
    ) -> tuple[int, bytes]:
        method = scope["method"]
        query_string: bytes = scope.get("query_string", b"")
        query = (
            parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)
            if query_string
            else []
        )
        token = bearer_token(
            [v.decode("latin-1") for k, v in headers if k == b"authorization"],
            token_in_query=any(k == "access_token" for k, _ in query),
            max_bytes=self.settings.max_token_bytes,
        )
        call.principal = await self.verifier.verify(token)
        raw_path = scope.get("raw_path") or scope["path"].encode()
        path = raw_path.decode("latin-1").split("?", 1)[0]
        found = match_route(policy, method, path)
        if isinstance(found, GatewayError):
            raise found
        body = await self._read_body(receive, headers, method)
        if method in BODY_METHODS and query:
            raise BadRequest(
                f"{method} parameters go in the JSON body, not the query string",
                code="query-not-allowed",
            )
        facts = RequestFacts(method=method, path=path, query=query, body=body)
        decision = decide(policy, facts, call.principal)
        call.decision = decision
        if not decision.allow:
            assert decision.problem is not None
            raise decision.problem
        assert decision.route is not None and decision.bound is not None
        route = decision.route
        call.result = await self.executor.run(
            route.query,
            decision.bound.values,
            tag=f"spangate:{route.query_name}:{call.request_id}"[:50],
        )
        result = call.result
        if result.is_dml and not result.rows:
            payload: dict[str, Any] = {"row_count": result.row_count}
        else:
            payload = {
                "rows": result.rows,
                "row_count": result.row_count,
                "truncated": result.truncated,
            }
        if result.commit_timestamp is not None:
            payload["commit_timestamp"] = result.commit_timestamp
        return 200, _dumps(payload)

    async def _read_body(
        self, receive: Receive, headers: list[tuple[bytes, bytes]], method: str
    ) -> dict[str, Any] | None:
        limit = self.settings.max_body_bytes
        length = next((v for k, v in headers if k == b"content-length"), None)
        chunked = any(k == b"transfer-encoding" for k, _ in headers)
        has_body = chunked or (length is not None and length.strip() not in (b"", b"0"))
        if method not in BODY_METHODS:
            if has_body:
                raise BadRequest(
                    f"{method} requests take no body: send parameters in the query string",
                    code="body-not-allowed",
                )
            return None
        if not has_body:
            return {}
        ctype = next((v for k, v in headers if k == b"content-type"), b"").decode("latin-1")
        media = ctype.split(";", 1)[0].strip().lower()
        if media not in _JSON_TYPES and not media.endswith("+json"):
            raise UnsupportedMediaType(
                f"the body must be application/json, not {media or 'unspecified'}"
            )
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                raise BadRequest("invalid Content-Length", code="body-invalid") from None
            if declared > limit:
                raise PayloadTooLarge(f"the body is larger than {limit} bytes")
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise BadRequest("the client disconnected", code="body-invalid")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"the body is larger than {limit} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        try:
            body = json.loads(b"".join(chunks))
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadRequest(f"the body is not valid JSON: {exc}", code="body-invalid") from None
        if not isinstance(body, dict):
            raise BadRequest("the body must be a JSON object of parameters", code="body-invalid")
        return body

    # -- responses and audit --------------------------------------------------------------------
    async def _send_problem(self, send: Send, error: GatewayError, rid: str, *, head: bool) -> None:
        problem: dict[str, Any] = {
            "type": PROBLEM_TYPE + error.code,
            "title": error.title,
            "status": error.status,
            "detail": error.detail,
            "code": error.code,
            "request_id": rid,
            **error.extra,
        }
        await _send(
            send,
            error.status,
            _dumps(problem),
            "application/problem+json",
            rid,
            head=head,
            extra=error.headers,
        )

    def _event(self, call: _Call, policy: CompiledPolicy) -> dict[str, Any]:
        decision = call.decision
        route = decision.route if decision else None
        event: dict[str, Any] = {
            "time": utc_now(),
            "request_id": call.request_id,
            "policy_sha256": policy.sha256,
            "principal": principal_record(call.principal, decision.roles if decision else ())
            if call.principal
            else None,
            "request": {
                "method": call.method,
                "path": call.path,
                "route": route.template if route else None,
                "client_ip": call.client,
                "user_agent": call.user_agent,
            },
            "decision": {
                "allow": bool(decision and decision.allow),
                "reason": decision.reason
                if decision
                else (call.error.code if call.error else None),
                "rule": decision.rule if decision else None,
            },
            "statement": None,
            "outcome": {
                "status": call.status,
                "code": call.error.code if call.error else "ok",
                "row_count": call.result.row_count if call.result else None,
                "truncated": call.result.truncated if call.result else None,
                "commit_timestamp": call.result.commit_timestamp if call.result else None,
                "spanner_code": call.error.spanner_code
                if isinstance(call.error, SpannerError)
                else None,
            },
            "latency_ms": round((time.perf_counter() - call.started) * 1000, 3),
        }
        if route is not None:
            query = route.query
            identity = query.model.identity
            statement: dict[str, Any] = {
                "query": query.name,
                "identity": identity,
                "database_role": policy.model.identities[identity].database_role,
            }
            if decision is not None and decision.bound is not None:
                statement["params"] = params_record(
                    decision.bound.values,
                    claim_bound=decision.bound.claim_bound,
                    redact=set(policy.model.audit.redact),
                    key=self._audit_key,
                )
                if decision.bound.ignored:
                    statement["ignored_caller_values"] = {
                        k: (
                            f"redacted:{len(str(v))} chars" if k in policy.model.audit.redact else v
                        )
                        for k, v in decision.bound.ignored.items()
                    }
            event["statement"] = statement
        return event

    # -- fixed endpoints ------------------------------------------------------------------------
    def _fixed_endpoints(self) -> FastAPI:
        api = FastAPI(
            title="spangate",
            version=__version__,
            openapi_url=None,  # served below, built from the policy, and rebuilt on reload
            docs_url=None,
            redoc_url=None,
        )
        gateway = self

        @api.get("/healthz", include_in_schema=False)
        async def healthz() -> dict[str, str]:
            return {"status": "ok"}

        @api.get("/readyz", include_in_schema=False)
        async def readyz() -> JSONResponse:
            issuers = {}
            for name, cache in gateway.verifier.caches.items():
                state = cache.state()
                issuers[name] = {
                    "ready": state.ready,
                    "keys": state.keys,
                    "age_seconds": None
                    if state.age_seconds is None
                    else round(state.age_seconds, 1),
                    "last_error": state.last_error,
                }
            ready = gateway.ready and all(i["ready"] for i in issuers.values())
            body = {
                "status": "ready" if ready else "not-ready",
                "databases_warmed": gateway.ready,
                "issuers": issuers,
                "policy_sha256": gateway.policy.sha256,
            }
            return JSONResponse(body, status_code=200 if ready else 503)

        @api.get("/openapi.json", include_in_schema=False)
        async def openapi() -> JSONResponse:
            return JSONResponse(openapi_document(gateway.policy, version=__version__))

        @api.get("/docs", include_in_schema=False)
        async def docs() -> Any:
            from fastapi.openapi.docs import get_swagger_ui_html

            return get_swagger_ui_html(openapi_url="/openapi.json", title="spangate")

        return api


def _with_request_id(send: Send, rid: str) -> Send:
    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
        await send(message)

    return wrapped


async def _send(
    send: Send,
    status: int,
    body: bytes,
    content_type: str,
    rid: str,
    *,
    head: bool = False,
    extra: dict[str, str] | None = None,
) -> None:
    headers = [
        (b"content-type", content_type.encode()),
        (b"content-length", str(len(body)).encode()),
        (b"x-request-id", rid.encode()),
        (b"cache-control", b"no-store"),
    ]
    headers += [(k.lower().encode(), v.encode()) for k, v in (extra or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else body})


def create_app(
    settings: Settings,
    policy: CompiledPolicy,
    *,
    verifier: TokenVerifier,
    executor: Executor,
    audit: AuditTrail,
    audit_key: bytes | None = None,
    closers: list[Callable[[], Awaitable[None]]] | None = None,
) -> Gateway:
    """The gateway with its seams injected (tests pass their own verifier, executor, audit)."""
    return Gateway(
        settings,
        policy,
        verifier=verifier,
        executor=executor,
        audit=audit,
        audit_key=audit_key,
        closers=closers,
    )
