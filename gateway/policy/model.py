"""The policy document, format version 1 (see ``policy-format.md``): pydantic models, extra=forbid.

These models check shape and local rules only; references between sections (roles, identities,
queries, issuers) and the SQL are checked in ``validate.py`` so that every problem is reported at
once. The JSON Schema in ``policies/policy.schema.json`` is generated from ``Policy``.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway.policy.types import ParamType, parse_type

__all__ = [
    "ALGORITHMS",
    "Audit",
    "ClaimNames",
    "FileSink",
    "Identity",
    "Introspection",
    "Issuer",
    "Param",
    "Policy",
    "Query",
    "RoleEntry",
    "Route",
    "SpannerTarget",
    "StdoutSink",
    "parse_duration",
]

ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)
Algorithm = Literal[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"
]
Method = Literal["GET", "POST", "PUT", "PATCH", "DELETE"]
Scalar = str | int | float | bool

_NAME = r"^[A-Za-z][A-Za-z0-9_.-]*$"
_PARAM_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
_DURATION_RE = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """``"250ms"``, ``"10s"``, ``"1.5m"``, ``"1h"`` -> seconds."""
    m = _DURATION_RE.match(text.strip()) if isinstance(text, str) else None
    if m is None:
        raise ValueError(f"expected a duration such as 500ms, 10s, 1m or 1h, got {text!r}")
    return float(m.group(1)) * _DURATION_UNITS[m.group(2)]


Duration = Annotated[str, Field(pattern=_DURATION_RE.pattern, examples=["500ms", "10s", "1m"])]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SpannerTarget(_Strict):
    """Where statements run. SPANGATE_SPANNER_PROJECT/INSTANCE/DATABASE override each field."""

    project: str = Field(min_length=1)
    instance: str = Field(min_length=1)
    database: str = Field(min_length=1)


class Introspection(_Strict):
    """RFC 7662 token introspection for opaque tokens (client authentication required)."""

    client_id: str = Field(min_length=1)
    client_secret: str = Field(min_length=1)
    endpoint: str | None = Field(
        None, description="Default: from discovery, else {issuer}/v1/introspect."
    )
    auth_method: Literal["client_secret_basic", "client_secret_post"] = "client_secret_basic"


class ClaimNames(_Strict):
    """Which claim holds what roles read. Dotted paths reach nested claims."""

    groups: str | None = None
    scopes: str | None = Field(None, description="A space-separated string or an array.")
    client: str | None = None
    user: str | None = None


def _default_algorithms() -> list[Algorithm]:
    return ["RS256", "ES256"]


class Issuer(_Strict):
    issuer: str = Field(min_length=1, description="Must equal the token's `iss` exactly.")
    audience: str | list[str] = Field(description="The token's aud must contain one of these.")
    preset: Literal["okta", "oidc"] = Field(
        "oidc", description="okta: scp -> scopes, cid -> client, uid -> user, groups -> groups."
    )
    algorithms: list[Algorithm] = Field(default_factory=_default_algorithms, min_length=1)
    jwks_uri: str | None = Field(None, description="Default: from discovery.")
    claims: ClaimNames | None = None
    introspection: Introspection | None = None
    description: str | None = None

    @field_validator("audience")
    @classmethod
    def _audience_not_empty(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and not value:
            raise ValueError("at least one audience is required")
        return value

    @field_validator("algorithms")
    @classmethod
    def _unique_algorithms(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("algorithms are listed twice")
        return value

    @property
    def audiences(self) -> tuple[str, ...]:
        return (self.audience,) if isinstance(self.audience, str) else tuple(self.audience)


class Identity(_Strict):
    """A least-privilege workload identity that statements run under."""

    database_role: str | None = Field(
        None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Spanner fine-grained access control role.",
    )
    service_account: str | None = Field(
        None,
        pattern=r"^[^@\s]+@[^@\s]+\.iam\.gserviceaccount\.com$",
        description="Impersonated on GCP (not with the emulator).",
    )
    description: str | None = None


ClaimValue = Scalar | list[Scalar]


class RoleEntry(_Strict):
    """An entry holds if ALL of its keys hold; a role holds if ANY of its entries holds."""

    issuer: str | None = Field(None, description="The name of an issuer in `issuers`.")
    groups: list[str] | None = Field(None, min_length=1, description="Any of these groups.")
    scopes: list[str] | None = Field(None, min_length=1, description="All of these scopes.")
    claims: dict[str, ClaimValue] | None = Field(
        None,
        min_length=1,
        description="Claim equals the value; a list means any of; dotted paths reach nested claims.",
    )
    authenticated: Literal[True] | None = None

    @model_validator(mode="after")
    def _not_empty(self) -> RoleEntry:
        if all(
            v is None
            for v in (self.issuer, self.groups, self.scopes, self.claims, self.authenticated)
        ):
            raise ValueError(
                "a role entry needs at least one of issuer, groups, scopes, claims, authenticated"
            )
        return self


class Param(_Strict):
    type: str = Field(
        description="BOOL, INT64, FLOAT64, NUMERIC, STRING, BYTES, DATE, TIMESTAMP, JSON or ARRAY<...>."
    )
    from_: str | None = Field(
        None,
        alias="from",
        pattern=r"^claim\.[A-Za-z0-9_:/.-]+$",
        description="claim.NAME (dotted path allowed): bound from the token, never from the caller.",
    )
    min: int | float | str | None = None
    max: int | float | str | None = None
    max_length: int | None = Field(None, ge=0, strict=True)
    pattern: str | None = None
    enum: list[Scalar] | None = Field(None, min_length=1)
    default: Any = None
    nullable: bool = False
    description: str | None = None

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        return str(parse_type(value))

    @field_validator("min", "max", mode="before")
    @classmethod
    def _not_bool(cls, value: object) -> object:
        # YAML true/false would otherwise pass as the integers 1 and 0.
        if isinstance(value, bool):
            raise ValueError("expected a number, or a string for NUMERIC, DATE and TIMESTAMP")
        return value

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"invalid regular expression: {exc}") from exc
        return value

    @property
    def ptype(self) -> ParamType:
        return parse_type(self.type)

    @property
    def claim(self) -> str | None:
        """The claim path this parameter is bound from, or None."""
        return self.from_.removeprefix("claim.") if self.from_ else None

    @property
    def has_default(self) -> bool:
        return "default" in self.model_fields_set


class Staleness(_Strict):
    max: Duration | None = Field(None, description="Bounded staleness: read at most this old.")
    exact: Duration | None = Field(None, description="Exact staleness: read as of this long ago.")

    @model_validator(mode="after")
    def _one(self) -> Staleness:
        if (self.max is None) == (self.exact is None):
            raise ValueError("give exactly one of max, exact")
        return self


class Query(_Strict):
    identity: str = Field(description="The name of an identity in `identities`.")
    sql: str = Field(min_length=1)
    params: dict[Annotated[str, Field(pattern=_PARAM_NAME)], Param] = Field(default_factory=dict)
    max_rows: int = Field(
        1000, ge=1, le=100_000, strict=True, description="More rows -> truncated: true."
    )
    staleness: Duration | Staleness | None = Field(
        None, description="A duration means bounded (max) staleness; strong reads when absent."
    )
    timeout: Duration = Field("10s", description="Deadline for the statement.")
    description: str | None = None

    @property
    def timeout_seconds(self) -> float:
        return parse_duration(self.timeout)


class Route(_Strict):
    path: str = Field(pattern=r"^/", description="A path template: /v1/orders/{order_id}.")
    method: Method
    query: str = Field(description="The name of a query in `queries`.")
    allow: list[str] = Field(min_length=1, description="Roles any of which allows the call.")
    deny: list[str] = Field(
        default_factory=list, description="Roles any of which denies it; deny wins."
    )
    description: str | None = None

    @field_validator("method", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value


class FileSink(_Strict):
    type: Literal["file"]
    path: str = Field(min_length=1, description="Relative paths are relative to the policy file.")


class StdoutSink(_Strict):
    type: Literal["stdout"]


Sink = Annotated[FileSink | StdoutSink, Field(discriminator="type")]


def _default_sinks() -> list[FileSink | StdoutSink]:
    return [StdoutSink(type="stdout")]


class Audit(_Strict):
    sinks: list[Sink] = Field(default_factory=_default_sinks, min_length=1)
    redact: list[str] = Field(
        default_factory=list,
        description="Parameter names whose values the trail hashes instead of storing.",
    )


class Policy(_Strict):
    """A spangate policy, format version 1."""

    version: Literal[1]
    spanner: SpannerTarget
    issuers: dict[Annotated[str, Field(pattern=_NAME)], Issuer] = Field(min_length=1)
    identities: dict[Annotated[str, Field(pattern=_NAME)], Identity] = Field(min_length=1)
    roles: dict[Annotated[str, Field(pattern=_NAME)], list[RoleEntry]] = Field(default_factory=dict)
    queries: dict[Annotated[str, Field(pattern=_NAME)], Query] = Field(min_length=1)
    routes: list[Route] = Field(min_length=1)
    audit: Audit = Field(default_factory=Audit)
