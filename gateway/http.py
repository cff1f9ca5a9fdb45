"""HTTP plumbing of the gateway's own routes: request ids, JSON bodies, responses, problems.

Pure ASGI (no BaseHTTPMiddleware): the request path pays for nothing it does not use.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qsl

from gateway import strictjson
from gateway.errors import (
    BadRequest,
    GatewayError,
    PayloadTooLarge,
    RequestTimeout,
    UnsupportedMediaType,
)
from gateway.policy.bind import BODY_METHODS

__all__ = [
    "CALL",
    "PROBLEM_TYPE",
    "Message",
    "Receive",
    "Scope",
    "Send",
    "dumps",
    "parse_json",
    "parse_query",
    "problem",
    "read_body",
    "read_json_body",
    "request_id",
    "routed_path",
    "send_problem",
    "send_response",
    "token_in_query",
    "with_request_id",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

PROBLEM_TYPE = "https://spangate.dev/problems/"
# The ASGI scope's state key of a request's CallRecord (its audit record), set by the transport
# that makes it (``Gateway._handle``, ``McpEndpoint``), read for the request's log line and span.
CALL = "spangate.call"
_JSON_TYPES = ("application/json",)
MAX_JSON_DEPTH = 100  # arrays and objects in a body nest at most this deep


def request_id(given: bytes | None) -> str:
    """The caller's X-Request-ID when it is printable ASCII of at most 128 characters, else new."""
    if given and len(given) <= 128 and all(0x21 <= b <= 0x7E for b in given):
        return given.decode("ascii")
    return secrets.token_hex(16)


def parse_query(query_string: bytes) -> list[tuple[str, str]]:
    """A request's query string as (name, value) pairs, blank values kept (``?access_token=``
    is a token in the query all the same); 400 ``query-invalid`` when it is not UTF-8."""
    if not query_string:
        return []
    try:
        return parse_qsl(query_string.decode("latin-1"), keep_blank_values=True, errors="strict")
    except UnicodeDecodeError:
        raise BadRequest(
            "the query string is not valid UTF-8 after percent-decoding", code="query-invalid"
        ) from None


def token_in_query(query_string: bytes) -> bool:
    """Does the query string name an ``access_token`` (``?access_token=`` too)? Read leniently
    (bytes that are not UTF-8 replaced), so the token is checked before anything about the query
    string is judged: an anonymous caller gets its 401 whatever it sent (``parse_query`` later)."""
    if b"access_token" not in query_string and b"%" not in query_string:
        return False  # the name can only be spelt so, or percent-encoded (the common case: no parse)
    pairs = parse_qsl(query_string.decode("latin-1"), keep_blank_values=True, errors="replace")
    return any(k == "access_token" for k, _ in pairs)


def routed_path(scope: Scope) -> str:
    """The path as the router sees it and the audit trail records it: the raw path, still
    percent-encoded (``/v1/orders/O-1%3Ftenant=t2`` is one segment, not a query), without the
    query string, its bytes read as Latin-1."""
    raw: bytes = scope.get("raw_path") or scope["path"].encode()
    return raw.decode("latin-1").split("?", 1)[0]


def dumps(obj: Any) -> bytes:
    # "replace": a lone surrogate from a token claim becomes "?" instead of failing the response.
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode(
        "utf-8", "replace"
    )


async def read_json_body(
    receive: Receive,
    headers: list[tuple[bytes, bytes]],
    method: str,
    *,
    limit: int,
    timeout: float,
) -> dict[str, Any] | None:
    """The JSON object of parameters in the body (None when the method takes no body).

    The whole body must arrive within ``timeout`` seconds (408 ``request-timeout``): a body that
    trickles or never ends cannot hold the request, its connection and its audit event open.
    """
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
    raw = await read_body(receive, headers, limit=limit, timeout=timeout)
    if not raw.strip():
        return {}  # an empty body (chunked or not) is no parameters, as Content-Length: 0 is
    body = parse_json(raw)
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object of parameters", code="body-invalid")
    return body


async def read_body(
    receive: Receive, headers: list[tuple[bytes, bytes]], *, limit: int, timeout: float
) -> bytes:
    """The whole raw body, at most ``limit`` bytes (413), within ``timeout`` seconds (408)."""
    length = next((v for k, v in headers if k == b"content-length"), None)
    if length is not None:
        try:
            declared = int(length)
        except ValueError:
            raise BadRequest("invalid Content-Length", code="body-invalid") from None
        if declared > limit:
            raise PayloadTooLarge(f"the body is larger than {limit} bytes")
    try:
        async with asyncio.timeout(timeout):
            return await _read_body(receive, limit)
    except TimeoutError:
        raise RequestTimeout(f"the body did not arrive within {timeout:g} seconds") from None


async def _read_body(receive: Receive, limit: int) -> bytes:
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
            return b"".join(chunks)


def _too_deep(value: Any, limit: int) -> bool:
    """Do arrays and objects nest more than ``limit`` levels in ``value``? (Without recursion.)"""
    stack: list[tuple[Any, int]] = [(value, 1)] if isinstance(value, dict | list) else []
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        children = node.values() if isinstance(node, dict) else node
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return False


def parse_json(raw: bytes) -> Any:
    """Strict JSON: UTF-8 only, no duplicate keys, no NaN/Infinity (nor a number beyond a double's
    range, such as ``1e400``), no lone surrogates,
    nesting at most ``MAX_JSON_DEPTH`` levels (what binds and audits a value may recurse through
    it). Anything else is a 400 ``body-invalid``, so what the gateway binds and audits is exactly
    what any other JSON reader would see."""
    try:
        text = raw.decode("utf-8")
        value = strictjson.loads(text)
        if _too_deep(value, MAX_JSON_DEPTH):
            raise RecursionError
    except UnicodeError:
        raise BadRequest("the body is not valid UTF-8 JSON", code="body-invalid") from None
    except RecursionError:
        raise BadRequest(
            f"the body nests more than {MAX_JSON_DEPTH} levels deep", code="body-invalid"
        ) from None
    except ValueError as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}", code="body-invalid") from None
    return value


def problem(error: GatewayError, rid: str) -> dict[str, Any]:
    """The RFC 9457 body of an error."""
    return {
        "type": PROBLEM_TYPE + error.code,
        "title": error.title,
        "status": error.status,
        "detail": error.detail,
        "code": error.code,
        "request_id": rid,
        **error.extra,
    }


async def send_problem(send: Send, error: GatewayError, rid: str, *, head: bool) -> None:
    await send_response(
        send,
        error.status,
        dumps(problem(error, rid)),
        "application/problem+json",
        rid,
        head=head,
        extra=error.headers,
    )


def with_request_id(send: Send, rid: str) -> Send:
    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
        await send(message)

    return wrapped


async def send_response(
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
