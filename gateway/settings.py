"""Process settings, read once from the environment at start-up.

Every setting is ``SPANGATE_<NAME>`` except ``SPANNER_EMULATOR_HOST``, the name Google's tools use.
Nothing else in the package reads ``os.environ`` (the policy's ``${VAR}`` interpolation receives
the environment as an argument, and so does ``gateway.tracing``, which turns traces on from the
standard ``OTEL_*`` variables; the OpenTelemetry SDK then reads the rest of them itself).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "env_name", "settings_problems"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SPANGATE_", extra="ignore", frozen=True)

    policy: Path = Field(Path("policy.yaml"), description="Policy file or folder.")
    watch_policy: bool = Field(
        False, description="Reload when the policy file or folder changes (SIGHUP always reloads)."
    )
    policy_poll_seconds: float = Field(
        30.0,
        ge=0,
        le=3600,
        allow_inf_nan=False,
        description="With SPANGATE_WATCH_POLICY, also compare the policy files' SHA-256 this "
        "often and reload when it changed (what the file watcher may miss), and retry a reload "
        "refused because a new issuer's keys could not be fetched; 0: no poll.",
    )
    shadow_policy: Path | None = Field(
        None,
        description="A candidate policy file or folder decided beside the live one on every call "
        "(never answering, never running a statement): disagreements go to the audit trail and "
        "/metrics. Reloaded with the live policy.",
    )
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    admin_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="A port of its own for /healthz, /readyz and /metrics (on SPANGATE_HOST), "
        "with its own small connection budget (not SPANGATE_MAX_CONNECTIONS): probes and "
        "scrapes still answer when the API port is full, and the API port then answers 404 "
        "for /readyz and /metrics. 0: off, everything on SPANGATE_PORT.",
    )
    workers: int = Field(
        1,
        ge=1,
        le=64,
        description="Processes serving on one port (`spangate serve --workers N`), each with its "
        "own Spanner clients, audit chain and file, connection limits and counters.",
    )

    # Shutdown (SIGTERM, SIGINT): gateway.server
    drain_seconds: float = Field(
        5.0,
        ge=0,
        le=600,
        allow_inf_nan=False,
        description="After SIGTERM or SIGINT, how long /readyz answers 503 draining while the "
        "server still serves (answers close their connections), before it stops listening.",
    )
    shutdown_timeout_seconds: float = Field(
        10.0,
        ge=0,
        le=600,
        allow_inf_nan=False,
        description="Once it stops listening, how long requests in flight get to finish; calls "
        "still running then are stopped and answered 503 shutting-down (and audited so) within "
        "an answer window of 7 s more.",
    )

    # Spanner target: overrides the policy's `spanner:` block when set.
    spanner_project: str | None = None
    spanner_instance: str | None = None
    spanner_database: str | None = None
    spanner_emulator_host: str | None = Field(
        None,
        validation_alias=AliasChoices("SPANNER_EMULATOR_HOST", "SPANGATE_SPANNER_EMULATOR_HOST"),
        description="host:port of a Cloud Spanner emulator; selects anonymous credentials.",
    )
    idempotency_ttl_seconds: float = Field(
        86_400.0,
        ge=1,
        allow_inf_nan=False,
        le=30 * 86_400,
        description="How long a write's Idempotency-Key record answers retries (then it expires).",
    )
    settle_seconds: float = Field(
        10.0,
        ge=0,
        le=600,
        description="At shutdown, how long to wait for writes whose Commit was in flight when "
        "their caller was answered (their follow-up audit events), before closing the trail.",
    )
    max_settling_writes: int = Field(
        256,
        ge=1,
        le=100_000,
        description="At most this many answered writes settle in the background; more writes "
        "are refused up front (503 spanner-unavailable, nothing sent).",
    )
    spanner_direct_reads: bool = Field(
        True,
        description="Send reads' RPCs straight on the Spanner client's channel (the client's "
        "request and headers, without its per-call overhead; one unary ExecuteSql for reads "
        "whose statement bounds their rows). false: every read through the client's "
        "execute_sql.",
    )

    # Requests
    max_body_bytes: int = Field(1_048_576, ge=0, description="Larger request bodies get 413.")
    max_token_bytes: int = Field(16_384, ge=512, description="Larger bearer tokens get 401.")

    # Connections (the HTTP layer, gateway.http_protocol)
    max_header_bytes: int = Field(
        65_536,
        ge=4096,
        description="A request line and headers larger than this get 431 (read no further).",
    )
    max_headers: int = Field(100, ge=8, description="More header fields than this get 431.")
    header_timeout_seconds: float = Field(
        10.0,
        gt=0,
        le=600,
        allow_inf_nan=False,
        description="The request line and headers must arrive within this time (else 408).",
    )
    body_timeout_seconds: float = Field(
        30.0,
        gt=0,
        le=3600,
        allow_inf_nan=False,
        description="A request body must arrive within this time (else 408).",
    )
    max_connections: int = Field(
        1000,
        ge=1,
        description="Open connections at most: beyond it an idle or slow one is closed to make "
        "room, or the new one is refused.",
    )
    max_connections_per_ip: int = Field(
        0,
        ge=0,
        description="Open connections at most from one peer address (0: no such limit; behind a "
        "load balancer every peer is the balancer).",
    )
    keepalive_timeout_seconds: int = Field(
        5, ge=1, le=300, description="An idle keep-alive connection is closed after this time."
    )

    # Tokens
    leeway_seconds: int = Field(30, ge=0, le=300, description="Clock skew allowed for exp/nbf/iat.")
    jwks_refresh_seconds: int = Field(
        300,
        ge=10,
        description="Default JWKS refresh interval (Cache-Control max-age may shorten it).",
    )
    jwks_stale_seconds: int = Field(
        3600, ge=0, description="How long the last good keys serve while the IdP is unreachable."
    )
    jwks_min_refetch_seconds: float = Field(
        5.0,
        ge=0,
        le=3600,
        allow_inf_nan=False,
        description="At most one JWKS fetch per issuer per this interval for unknown kids.",
    )
    http_timeout_seconds: float = Field(
        5.0,
        gt=0,
        le=300,
        allow_inf_nan=False,
        description="Timeout for calls to identity providers; also the overall deadline of one "
        "key fetch or endpoint discovery, however many metadata documents are tried.",
    )
    jwks_retry_max_seconds: float = Field(
        60.0,
        ge=1,
        allow_inf_nan=False,
        le=3600,
        description="While an issuer's keys are missing or failing, they are fetched again in the "
        "background after 1 s, doubling up to this (jittered).",
    )
    introspection_cache_seconds: float = Field(
        60.0,
        ge=0,
        allow_inf_nan=False,
        le=3600,
        description="How long an introspection answer is reused (an active one never past its "
        "exp); 0: ask the IdP on every request, so revocations are seen at once.",
    )
    introspection_rate: float = Field(
        50.0,
        gt=0,
        le=1_000_000,
        allow_inf_nan=False,
        description="Introspection calls per second per issuer (token bucket); beyond it, "
        "503 introspection-busy without calling the IdP (cached answers keep serving).",
    )
    introspection_burst: int = Field(
        100, ge=1, description="Introspection calls per issuer allowed at once after a quiet spell."
    )
    introspection_concurrency: int = Field(
        8,
        ge=1,
        le=1024,
        description="Introspection calls in flight per issuer (as many again may wait for a slot).",
    )

    # Audit
    audit_path: Path | None = Field(
        None, description="Overrides the path of the policy's first file audit sink."
    )

    audit_key: SecretStr | None = Field(
        None,
        description="HMAC key for the audit hash chain and redacted values; without it plain "
        "SHA-256 is used, which only detects accidents. A key derived from it also keys the "
        "principals in budget counter keys (the same on every replica sharing a Redis).",
    )
    audit_claims: Literal["read", "off"] = Field(
        "read",
        description="What audit events record of the token's claims for policy replay "
        "(metadata.claimsRead): read, the claims the live and shadow policies read and whether "
        "the caller holds each group and scope they name; off, nothing (replay cannot judge "
        "roles that test claims, groups or scopes).",
    )
    mask_key: SecretStr | None = Field(
        None,
        description="HMAC key of the policy's `hash` column masks (at least 16 characters); "
        "required when a query masks a column with `hash`. Empty: not set.",
    )

    cursor_keys: SecretStr | None = Field(
        None,
        description="Comma-separated base64url 256-bit keys of pagination cursors (AES-256-GCM): "
        "the first seals, all open, so keys rotate; required when a query has `pagination`. "
        "Every replica needs the same keys. Empty: not set.",
    )
    cursor_ttl_seconds: int = Field(
        3600,
        ge=1,
        le=30 * 86_400,
        description="How long a pagination cursor opens after it was sealed (then 400 "
        "cursor-expired: the caller lists again from the first page).",
    )


    @model_validator(mode="after")
    def _ports(self) -> Settings:
        if self.admin_port and self.admin_port == self.port:
            raise ValueError(
                f"SPANGATE_ADMIN_PORT ({self.admin_port}) must differ from SPANGATE_PORT "
                "(0 turns the admin port off)"
            )
        return self

    @field_validator("mask_key", "cursor_keys")
    @classmethod
    def _empty_is_unset(cls, value: SecretStr | None) -> SecretStr | None:
        # Keys are checked where they are used (runtime.mask_key, runtime.cursor_keys): a
        # validation error here would print the value.
        return value if value is not None and value.get_secret_value() else None

    audit_batch_window_ms: float = Field(
        5.0,
        ge=0,
        allow_inf_nan=False,
        le=1000,
        description="How long a batched audit sink gathers events before one fsync or commit.",
    )
    audit_max_batch: int = Field(
        512, ge=1, le=10_000, description="A batch is flushed at once when it has this many events."
    )
    audit_max_event_bytes: int = Field(
        16_384,  # audit.bounds.DEFAULT_MAX_EVENT_BYTES
        ge=4096,
        le=1_048_576,
        description="The longest audit line (bytes, newline included): an event over it has its "
        "largest caller values dropped to their SHA-256 until it fits; it is never refused.",
    )
    trusted_proxies: str = Field(
        "",
        description="Comma-separated addresses or CIDR ranges of proxies whose X-Forwarded-For "
        "is believed for the client address (none by default: the TCP peer is the client), and "
        "whose traceparent / X-Cloud-Trace-Context sampled flag decides whether a request is "
        "traced (from anyone else, the sampler decides).",
    )

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: str) -> str:
        from gateway.audit.origin import parse_networks

        parse_networks(value)
        return value

    # Budgets (the policy's `budgets:`)
    redis_url: SecretStr | None = Field(
        None,
        description="redis://[:password@]host:port/db (rediss:// for TLS): budget counters in "
        "this Redis, shared by every replica; unset: in each process.",
    )
    redis_timeout_seconds: float = Field(
        0.25,
        gt=0,
        le=10,
        description="Deadline of one Redis call (no retry); past it the call is refused with "
        "503 budget-store-unavailable.",
    )

    # MCP (/mcp) and its protected resource metadata (RFC 9728)
    public_url: str | None = Field(
        None,
        description="The gateway's public base URL (https://spangate.example.com): the MCP "
        "resource is <it>/mcp. Default: the scheme and Host of each request.",
    )
    mcp_allowed_hosts: str = Field(
        "127.0.0.1,127.0.0.1:*,localhost,localhost:*,[::1],[::1]:*",
        description="Comma-separated Host values /mcp answers (DNS-rebinding protection); "
        "host:* allows any port. The public URL's host is always allowed.",
    )
    mcp_allowed_origins: str = Field(
        "http://127.0.0.1,http://127.0.0.1:*,http://localhost,http://localhost:*,"
        "http://[::1],http://[::1]:*",
        description="Comma-separated Origin values /mcp accepts from browsers (requests "
        "without Origin are accepted); origin:* allows any port. The public URL's origin is "
        "always allowed.",
    )

    mcp_audience: str = Field(
        "",
        description="Comma-separated audiences /mcp requires: when set, a token whose aud "
        "contains none of them is 401 audience-mismatch at /mcp (RFC 8707: the MCP resource's "
        "URL, <public URL>/mcp); the HTTP routes are unaffected. Empty: any audience the "
        "token's issuer accepts.",
    )

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from urllib.parse import urlsplit

        parts = urlsplit(value)
        if (
            parts.scheme not in ("http", "https")
            or not parts.hostname
            or "@" in parts.netloc
            or parts.query
            or parts.fragment
            or "?" in value
            or "#" in value
        ):
            raise ValueError(
                "must be an http(s) URL without userinfo, query or fragment, such as https://host"
            )
        from gateway.mcp.metadata import parse_host

        if parse_host(parts.netloc) is None:
            raise ValueError("its host must be a host name or IP literal, with a port 1-65535")
        return value.rstrip("/")

    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    log_format: Literal["auto", "json", "text"] = Field(
        "auto",
        description="Log lines on stderr: json (one object per line), text (for a person), or "
        "auto: text when stderr is a terminal, else json.",
    )


def env_name(field: str) -> str:
    """The environment variable of a setting: ``port`` -> ``SPANGATE_PORT``."""
    if field == "spanner_emulator_host":
        return "SPANNER_EMULATOR_HOST"
    return "SPANGATE_" + field.upper()


_SHOWN_CHARS = 40
_BOUNDS = {"ge": "at least", "le": "at most", "gt": "more than", "lt": "less than"}
_KINDS = {
    "int_parsing": "must be an integer",
    "int_type": "must be an integer",
    "int_from_float": "must be an integer",
    "float_parsing": "must be a number",
    "float_type": "must be a number",
    "bool_parsing": "must be true or false",
    "bool_type": "must be true or false",
}


def _plain(error: Mapping[str, object]) -> str:
    """What a setting must be, in our words where pydantic's are long-winded."""
    kind = str(error.get("type", ""))
    if kind in _KINDS:
        return _KINDS[kind]
    context = error.get("ctx")
    if isinstance(context, Mapping):
        for key, words in _BOUNDS.items():
            if key in context and kind.endswith(("_equal", "_than")):
                return f"must be {words} {context[key]}"
    return str(error.get("msg", "is invalid"))


def settings_problems(exc: ValidationError, options: Mapping[str, str] | None = None) -> str:
    """One line per wrong setting, for a person: the variable (and the command-line option that
    gave it, from ``options``: field -> ``--port``), what it must be, and the value given, except
    a secret's (``SecretStr``), which is never shown. Never pydantic's own text (its URLs, its
    ``[type=...]``)."""
    lines = []
    for error in exc.errors(include_url=False):
        loc = error.get("loc") or ()
        field = str(loc[0]) if loc else ""
        message = _plain(error)
        for prefix in ("Value error, ", "Assertion failed, "):
            message = message.removeprefix(prefix)
        if message.startswith("Input should be "):
            message = "must be " + message.removeprefix("Input should be ")
        elif message.startswith("Input "):
            message = message.removeprefix("Input ")
        if field not in Settings.model_fields:  # a check across settings names them itself
            lines.append(f"  {message}")
            continue
        name = env_name(field)
        if options and field in options:
            name = f"{options[field]} ({name})"
        annotation = Settings.model_fields[field].annotation
        secret = annotation is not None and "SecretStr" in str(annotation)
        given = error.get("input")
        shown = ""
        if not secret and isinstance(given, str | int | float | bool):
            text = str(given)
            if len(text) > _SHOWN_CHARS:
                text = text[:_SHOWN_CHARS] + "..."
            shown = f" (given: {text!r})"
        lines.append(f"  {name}: {message}{shown}")
    return "\n".join(lines)
