"""One exception tree for the gateway.

Every error a caller can see has a stable machine ``code`` (kebab-case, never renamed) and an HTTP
``status``; the app renders it as RFC 9457 ``application/problem+json``. The same codes appear in the
audit trail, ``spangate policy explain`` and the policy tests.

    SpangateError
    ├── PolicyError                    a policy that cannot be loaded (never an HTTP error)
    ├── ConfigError                    settings that cannot serve the policy (start-up only)
    ├── UsageError                     a command line's input that cannot be used (exit 2)
    └── GatewayError                   anything answered to a caller (code, status)
        ├── AuthError            401   token-missing, token-malformed, token-expired, ...
        ├── IdpUnavailable       503   idp-unavailable (Retry-After)
        │   └── IntrospectionBusy 503  introspection-busy (Retry-After)
        ├── Forbidden            403   no-allow-role, denied-by-role
        ├── RouteNotFound        404   no-route
        ├── MethodNotAllowed     405   method-not-allowed (Allow header)
        ├── MisdirectedRequest   421   host-not-allowed (/mcp's DNS-rebinding protection)
        ├── BadRequest           400   bad-request, path-invalid, body-invalid, ...
        │   ├── ParameterError   400   param-invalid, param-missing, param-unknown
        │   └── CursorRefused    400   cursor-invalid, cursor-expired
        ├── RequestTimeout       408   request-timeout
        ├── PayloadTooLarge      413   body-too-large
        ├── HeadersTooLarge      431   headers-too-large
        ├── UnsupportedMediaType 415   unsupported-media-type
        ├── BudgetExceeded       429   budget-exceeded (Retry-After, RateLimit headers)
        ├── BudgetStoreUnavailable 503 budget-store-unavailable (Retry-After)
        ├── AuditUnavailable     503   audit-unavailable
        ├── ApprovalRefused      400/403/404/409/503  approval-* codes, not-approver
        ├── ServerBusy           503   server-busy (Retry-After)
        ├── ShuttingDown         503   shutting-down (Retry-After)
        └── SpannerError         4xx/5xx spanner-* codes mapped from gRPC status codes
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "APPROVAL_CODES",
    "ApprovalRefused",
    "AuditUnavailable",
    "AuthError",
    "BadRequest",
    "BudgetExceeded",
    "BudgetStoreUnavailable",
    "ConfigError",
    "CursorRefused",
    "Forbidden",
    "GatewayError",
    "HeadersTooLarge",
    "IdpUnavailable",
    "IntrospectionBusy",
    "MethodNotAllowed",
    "MisdirectedRequest",
    "ParameterError",
    "PayloadTooLarge",
    "PolicyError",
    "PolicyProblem",
    "RequestTimeout",
    "RouteNotFound",
    "ServerBusy",
    "ShuttingDown",
    "SpangateError",
    "SpannerError",
    "UnsupportedMediaType",
    "UsageError",
]


class SpangateError(Exception):
    """The root of every error spangate raises on purpose."""


@dataclass(frozen=True)
class PolicyProblem:
    """One thing wrong with a policy, located in its source."""

    file: str
    line: int | None
    column: int | None
    where: str  # the dotted path in the document, e.g. "routes[2].allow[0]"
    message: str

    @property
    def location(self) -> str:
        """``file:line:column``, as far as known."""
        loc = self.file
        if self.line is not None:
            loc += f":{self.line}"
            if self.column is not None:
                loc += f":{self.column}"
        return loc

    def __str__(self) -> str:
        where = f" {self.where}:" if self.where else ""
        return f"{self.location}:{where} {self.message}"

    def as_warning(self) -> str:
        """``file:line:column: warning: where: message``: for a problem that does not stop a load
        (``LoadedPolicy.warnings``)."""
        where = f" {self.where}:" if self.where else ""
        return f"{self.location}: warning:{where} {self.message}"


class PolicyError(SpangateError):
    """A policy that cannot be loaded; carries every problem found, not just the first."""

    def __init__(self, problems: Sequence[PolicyProblem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class ConfigError(SpangateError):
    """The settings and the policy do not fit together (e.g. ``audit.redact`` without
    ``SPANGATE_AUDIT_KEY``): the gateway refuses to start, naming the setting."""


class UsageError(SpangateError):
    """A command line's input that cannot be used: a file that is missing, a folder, unreadable
    or not text. ``spangate`` prints it as one line and exits 2 (never a traceback)."""


class GatewayError(SpangateError):
    """An error answered to the caller as problem+json."""

    status: int = 500
    code: str = "internal"
    title: str = "Internal error"

    def __init__(
        self,
        detail: str,
        *,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, object] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code
        self.headers: dict[str, str] = dict(headers or {})
        self.extra: dict[str, object] = dict(extra or {})


class AuthError(GatewayError):
    """The bearer token is missing or fails validation: 401 with an RFC 6750 challenge."""

    status = 401
    code = "token-invalid"
    title = "Unauthorized"

    def __init__(self, detail: str, *, code: str, realm: str = "spangate") -> None:
        challenge = f'Bearer realm="{realm}"'
        if code != "token-missing":  # RFC 6750 3.1: no error attribute when no token was sent
            # RFC 6750 3: error_description is %x20-21 / %x23-5B / %x5D-7E; a token's claims
            # end up in details, so nothing else (no CR/LF, no quote) may reach the header.
            description = "".join(
                c if " " <= c <= "~" and c not in '"\\' else "'" if c == '"' else "?"
                for c in detail
            )
            challenge += f', error="invalid_token", error_description="{description}"'
        super().__init__(detail, code=code, headers={"WWW-Authenticate": challenge})


class IdpUnavailable(GatewayError):
    """No usable keys for the token's issuer: the caller's token is not at fault."""

    status = 503
    code = "idp-unavailable"
    title = "Identity provider unavailable"

    def __init__(self, detail: str, *, retry_after: int = 5) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after)})


class IntrospectionBusy(IdpUnavailable):
    """The gateway's own budget of introspection calls to an IdP is spent for now (a flood of
    unknown opaque tokens): refused without calling the IdP; cached tokens keep working."""

    code = "introspection-busy"
    title = "Token introspection busy"


class Forbidden(GatewayError):
    status = 403
    code = "forbidden"
    title = "Forbidden"


class RouteNotFound(GatewayError):
    status = 404
    code = "no-route"
    title = "Not found"


class MethodNotAllowed(GatewayError):
    status = 405
    code = "method-not-allowed"
    title = "Method not allowed"

    def __init__(self, detail: str, *, allow: Sequence[str]) -> None:
        super().__init__(detail, headers={"Allow": ", ".join(allow)})


class MisdirectedRequest(GatewayError):
    """A Host that /mcp does not answer (DNS-rebinding protection, SPANGATE_MCP_ALLOWED_HOSTS)."""

    status = 421
    code = "host-not-allowed"
    title = "Misdirected request"


class BadRequest(GatewayError):
    status = 400
    code = "bad-request"
    title = "Bad request"


class ParameterError(BadRequest):
    """A parameter is missing, unknown or invalid; ``param`` names it."""

    code = "param-invalid"

    def __init__(self, param: str, message: str, *, code: str = "param-invalid") -> None:
        super().__init__(f"parameter '{param}': {message}", code=code, extra={"param": param})
        self.param = param


class CursorRefused(BadRequest):
    """A pagination cursor that does not open for this call: ``cursor-invalid`` (not a cursor,
    tampered, sealed for another principal, query or parameters, or by a retired key) or
    ``cursor-expired`` (its own caller's, past its time). The detail says nothing of the cursor;
    ``reason`` (``gateway.shaping.cursors.REFUSALS``) is for the audit trail only."""

    code = "cursor-invalid"

    def __init__(self, reason: str) -> None:
        expired = reason == "expired"
        super().__init__(
            "the cursor has expired: list again from the first page (without a cursor)"
            if expired
            else "the cursor is not valid for this call: list again from the first page "
            "(without a cursor), with the same parameters for every page",
            code="cursor-expired" if expired else "cursor-invalid",
        )
        self.reason = reason


class PayloadTooLarge(GatewayError):
    status = 413
    code = "body-too-large"
    title = "Payload too large"


class RequestTimeout(GatewayError):
    """The request head or body did not arrive within its deadline."""

    status = 408
    code = "request-timeout"
    title = "Request timeout"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"Connection": "close"})


class HeadersTooLarge(GatewayError):
    """The request line and headers exceed the server's limits (answered by the HTTP layer)."""

    status = 431
    code = "headers-too-large"
    title = "Request header fields too large"


class ShuttingDown(GatewayError):
    """The server is stopping and the call did not finish within the shutdown timeout: it was
    stopped and answered (``gateway.server``, ``Gateway.cut_short``)."""

    status = 503
    code = "shutting-down"
    title = "Shutting down"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"Retry-After": "1"})


class ServerBusy(GatewayError):
    """The server holds as many connections as it may (answered by the HTTP layer)."""

    status = 503
    code = "server-busy"
    title = "Server busy"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"Retry-After": "1"})


class UnsupportedMediaType(GatewayError):
    status = 415
    code = "unsupported-media-type"
    title = "Unsupported media type"


class BudgetExceeded(GatewayError):
    """A budget of the policy's ``budgets:`` is spent for this window; ``extra`` names it."""

    status = 429
    code = "budget-exceeded"
    title = "Budget exceeded"


class BudgetStoreUnavailable(GatewayError):
    """The shared budget store (Redis) did not answer: fail closed, the statement did not run."""

    status = 503
    code = "budget-store-unavailable"
    title = "Budget store unavailable"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"Retry-After": "1"})


class AuditUnavailable(GatewayError):
    """A strict audit sink could not record the call: fail closed."""

    status = 503
    code = "audit-unavailable"
    title = "Audit trail unavailable"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"Retry-After": "5"})


# Every code an approval refusal carries, with its status (``docs/approvals.md``).
APPROVAL_CODES: dict[str, int] = {
    "approval-id-invalid": 400,  # an Approval-Id (or an id in a path) that is no approval id
    "approval-mismatch": 403,  # no approval of this caller for this very call (route, values)
    "approval-rejected": 403,  # an approver rejected it
    "approval-own-request": 403,  # a party of the request tried to decide it
    "not-approver": 403,  # no approver role holds (or the route waits for none any more)
    "approval-not-found": 404,  # no request with this id that this caller may see
    "approval-pending": 409,  # nobody has decided yet
    "approval-used": 409,  # its statement ran already
    "approval-expired": 409,  # past its ttl: ask again
    "approval-decided": 409,  # approved or rejected already
    "approval-table-missing": 503,  # `spangate init-db` has not created the table
}
_TITLES = {400: "Bad request", 403: "Forbidden", 404: "Not found", 409: "Conflict",
           503: "Approvals unavailable"}  # fmt: skip


class ApprovalRefused(GatewayError):
    """What an approval does not allow: a call repeated with ``Approval-Id``, or a decision on
    a request (``APPROVAL_CODES`` gives each code's status)."""

    code = "approval-mismatch"

    def __init__(self, detail: str, *, code: str) -> None:
        headers = {"Retry-After": "5"} if code == "approval-table-missing" else None
        super().__init__(detail, code=code, headers=headers)
        self.status = APPROVAL_CODES[code]
        self.title = _TITLES[self.status]


class SpannerError(GatewayError):
    """A statement failed in Spanner; ``spanner_code`` is the gRPC status name."""

    title = "Statement failed"

    def __init__(
        self,
        detail: str,
        *,
        status: int,
        code: str,
        spanner_code: str | None = None,
        retry_after: int | None = None,
        outcome: str | None = None,
    ) -> None:
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
        super().__init__(detail, code=code, headers=headers)
        self.status = status
        self.spanner_code = spanner_code
        self.outcome = outcome

    @property
    def outcome(self) -> str | None:
        """A failed write's: ``not-committed`` (certain) or ``unknown`` (its Commit was sent and
        did not answer); None for a read. Also the problem's ``outcome`` member."""
        value = self.extra.get("outcome")
        return value if isinstance(value, str) else None

    @outcome.setter
    def outcome(self, value: str | None) -> None:
        if value is None:
            self.extra.pop("outcome", None)
        else:
            self.extra["outcome"] = value
