"""The policy document, format version 1 (see ``policy-format.md``): pydantic models, extra=forbid.

These models check shape and local rules only; references between sections (roles, identities,
queries, issuers) and the SQL are checked in ``validate.py`` so that every problem is reported at
once. The JSON Schema in ``policies/policy.schema.json`` is generated from ``Policy``.
"""

from __future__ import annotations

import functools
import re
from typing import Annotated, Any, ClassVar, Literal, cast

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    field_validator,
    model_validator,
)

from gateway.auth.audiences import api_server_audience, gateway_url_problem
from gateway.auth.principal import is_delegation_path
from gateway.auth.urls import issuer_problem, url_problem
from gateway.auth.wellknown import own_preset
from gateway.budgets.rates import RATE_PATTERN, Rate, parse_rate, rate_of
from gateway.policy.regex import compile_regex
from gateway.policy.sqltoken import GOOGLESQL, Dialect
from gateway.policy.types import ParamType, parse_type

__all__ = [
    "ALGORITHMS",
    "Approval",
    "Audit",
    "Budget",
    "ClaimNames",
    "ClaimTest",
    "FileSink",
    "MASK_MODES",
    "Mask",
    "MaskMode",
    "Identity",
    "KEYSET_TYPES",
    "PageSize",
    "Pagination",
    "Introspection",
    "Issuer",
    "Param",
    "Policy",
    "Query",
    "Role",
    "RoleDef",
    "RoleEntry",
    "Route",
    "SpannerSink",
    "SpannerTarget",
    "StdoutSink",
    "parse_duration",
    "parse_size",
    "secret_fields",
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

# Each pattern's mismatch is said in words by shape.py (its _PATTERNS, or _KEY_PATTERNS where
# keys share a pattern, as these identifiers do): a new pattern needs its words there.
_NAME = r"^[A-Za-z][A-Za-z0-9_.-]*$"
_PARAM_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
_COLUMN_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
_ROLE_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"  # a Spanner database role
_SERVICE_ACCOUNT = r"^[^@\s]+@[^@\s]+\.iam\.gserviceaccount\.com$"
_TABLE_NAME = r"^[A-Za-z][A-Za-z0-9_]{0,127}$"
_FROM = r"^(?:claim\.[A-Za-z0-9_:/.-]+|cursor\.[A-Za-z_][A-Za-z0-9_]*|page_size)$"
TOOL_NAME = r"^[A-Za-z0-9_.-]{1,128}$"  # MCP's tool names
_DURATION_RE = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


@functools.lru_cache(maxsize=256)  # a query's timeout is read on every call (a handful of texts)
def parse_duration(text: str) -> float:
    """``"250ms"``, ``"10s"``, ``"1.5m"``, ``"1h"`` -> seconds."""
    m = _DURATION_RE.match(text.strip()) if isinstance(text, str) else None
    if m is None:
        raise ValueError(f"expected a duration such as 500ms, 10s, 1m or 1h, got {text!r}")
    return float(m.group(1)) * _DURATION_UNITS[m.group(2)]


Duration = Annotated[str, Field(pattern=_DURATION_RE.pattern, examples=["500ms", "10s", "1m"])]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# A field holding a secret: never shown (repr, `policy diff`), "writeOnly" in the JSON Schema.
_SECRET: dict[str, Any] = {"writeOnly": True}


def secret_fields(model: type[BaseModel]) -> frozenset[str]:
    """The names (aliases where given) of ``model``'s fields that hold secrets."""
    return frozenset(
        info.alias or name
        for name, info in model.model_fields.items()
        if isinstance(info.json_schema_extra, dict) and info.json_schema_extra.get("writeOnly")
    )


class SpannerTarget(_Strict):
    """Where statements run. SPANGATE_SPANNER_PROJECT/INSTANCE/DATABASE override each field."""

    project: str = Field(min_length=1)
    instance: str = Field(min_length=1)
    database: str = Field(min_length=1)
    dialect: Dialect = Field(
        GOOGLESQL,
        description="The database's SQL dialect, which the statements are written in: "
        "googlesql (@name parameters) or postgresql ($1..$N, the query's params in the order "
        "declared). The gateway asks the database for its dialect at start-up (and `policy "
        "check --database`) and refuses to serve when they differ.",
    )


class Introspection(_Strict):
    """RFC 7662 token introspection for opaque tokens (client authentication required)."""

    client_id: str = Field(min_length=1)
    client_secret: str = Field(
        min_length=1,
        repr=False,
        json_schema_extra=_SECRET,
        description="A secret: write ${VAR}; the policy tools never print it.",
    )
    endpoint: str | None = Field(
        None, description="Default: from discovery, else {issuer}/v1/introspect."
    )
    auth_method: Literal["client_secret_basic", "client_secret_post"] = "client_secret_basic"
    token_min_length: int = Field(
        16,
        ge=1,
        le=16_384,
        description="Shorter opaque tokens are refused (token-malformed) without asking the IdP.",
    )
    token_max_length: int = Field(
        1024,
        ge=1,
        le=16_384,
        description="Longer opaque tokens are refused (token-malformed) without asking the IdP. "
        "A maximum above SPANGATE_MAX_TOKEN_BYTES never applies: longer tokens are refused first.",
    )
    token_charset: Literal["b64token", "base64url", "hex"] = Field(
        "b64token",
        description="The characters this IdP's opaque tokens use: b64token (RFC 6750: "
        "A-Z a-z 0-9 - . _ ~ + / and trailing =), base64url (A-Z a-z 0-9 - _), hex (0-9 a-f A-F). "
        "Other opaque tokens are refused without asking the IdP.",
    )

    @field_validator("endpoint")
    @classmethod
    def _safe_endpoint(cls, value: str | None) -> str | None:
        if value is not None and (problem := url_problem(value)):
            raise ValueError(f"the introspection endpoint {problem}")
        return value

    @model_validator(mode="after")
    def _length_bounds(self) -> Introspection:
        if self.token_min_length > self.token_max_length:
            raise ValueError("token_min_length is larger than token_max_length")
        return self


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
    preset: Literal["okta", "oidc", "kubernetes", "google", "github-actions"] = Field(
        "oidc",
        description="oidc: scope -> scopes, client_id (else azp) -> client, groups -> groups; "
        "okta: scp -> scopes, cid -> client, uid -> user, groups -> groups; "
        "kubernetes: a cluster's service-account tokens (sub system:serviceaccount:NS:NAME, "
        "kubernetes.io.* claims; API-server audiences refused); google: Google-signed ID tokens "
        "(the principal is the verified email; audience: the gateway's URL); github-actions: "
        "GitHub Actions OIDC tokens (actor -> user; repository, ref, environment... as claims). "
        "Workload presets take no introspection.",
    )
    algorithms: list[Algorithm] = Field(default_factory=_default_algorithms, min_length=1)
    jwks_uri: str | None = Field(None, description="Default: from discovery.")
    claims: ClaimNames | None = None
    introspection: Introspection | None = None
    refuse_id_tokens: bool = Field(
        True,
        description="Refuse a token that is recognisably an OpenID ID token (nonce, at_hash, "
        "c_hash or s_hash claims) sent as an access token. Not with preset google, where the "
        "ID token is the credential.",
    )
    description: str | None = None

    @field_validator("issuer")
    @classmethod
    def _safe_issuer(cls, value: str) -> str:
        if problem := issuer_problem(value):
            raise ValueError(f"the issuer {problem}")
        return value

    @field_validator("jwks_uri")
    @classmethod
    def _safe_jwks_uri(cls, value: str | None) -> str | None:
        if value is not None and (problem := url_problem(value)):
            raise ValueError(f"jwks_uri {problem}")
        return value

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

    @model_validator(mode="after")
    def _preset_rules(self) -> Issuer:
        own = own_preset(self.issuer)
        if own is not None and self.preset != own[0]:
            raise ValueError(
                f"the issuer is {own[1]}, whose tokens anyone can get for any audience: it "
                f"takes preset {own[0]}, which checks them and makes the roles that admit its "
                "callers say who the caller is"
            )
        if self.preset in ("kubernetes", "google", "github-actions"):
            if self.introspection is not None:
                raise ValueError(
                    f"preset {self.preset} takes no introspection: its tokens are JWTs "
                    "verified with the issuer's keys"
                )
        if self.preset == "google" and "refuse_id_tokens" in self.model_fields_set:
            raise ValueError(
                "refuse_id_tokens does not apply under preset google: a Google ID token minted "
                "for the gateway's URL is the credential"
            )
        for audience in self.audiences:
            if self.preset == "google" and (problem := gateway_url_problem(audience)):
                raise ValueError(f"audience {audience!r} {problem}")
            if self.preset == "kubernetes" and api_server_audience(audience, self.issuer):
                raise ValueError(
                    f"audience {audience!r} is the Kubernetes API server's: every default "
                    "service-account token carries it; choose an audience of the gateway's own "
                    "(its URL) and mount projected tokens for it"
                )
        return self

    @property
    def audiences(self) -> tuple[str, ...]:
        return (self.audience,) if isinstance(self.audience, str) else tuple(self.audience)


class Identity(_Strict):
    """A least-privilege workload identity that statements run under."""

    database_role: str | None = Field(
        None,
        pattern=_ROLE_NAME,
        description="Spanner fine-grained access control role.",
    )
    service_account: str | None = Field(
        None,
        pattern=_SERVICE_ACCOUNT,
        description="Impersonated on GCP (not with the emulator).",
    )
    description: str | None = None


class ClaimTest(_Strict):
    """A test on a claim other than equality: exactly one of ``matches``, ``present``."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, json_schema_extra={"minProperties": 1, "maxProperties": 1}
    )
    matches: str | None = Field(
        None,
        description="A regular expression (RE2 syntax) the whole claim value must match (a string "
        "claim, or any string element of an array claim).",
    )
    present: Literal[True] | None = Field(
        None, description="The token has the claim, with any value but null."
    )

    @field_validator("matches")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            compile_regex(value)  # RegexProblem is a ValueError: a load error at the pattern
        return value

    @model_validator(mode="after")
    def _one(self) -> ClaimTest:
        if (self.matches is None) == (self.present is None):
            raise ValueError("give exactly one of matches, present")
        return self


ClaimValue = Scalar | list[Scalar] | ClaimTest


class RoleEntry(_Strict):
    """An entry holds if ALL of its keys hold; a role holds if ANY of its entries holds."""

    issuer: str | None = Field(None, description="The name of an issuer in `issuers`.")
    groups: list[str] | None = Field(None, min_length=1, description="Any of these groups.")
    scopes: list[str] | None = Field(None, min_length=1, description="All of these scopes.")
    claims: dict[str, ClaimValue] | None = Field(
        None,
        min_length=1,
        description="Claim equals the value; a list means any of; {matches: REGEX}; "
        "{present: true}; dotted paths reach nested claims.",
    )
    authenticated: Literal[True] | None = None
    delegated: bool | None = Field(
        None,
        description="Whether the entry holds for a delegated token (RFC 8693: one with an `act` "
        "claim, an actor acting for the token's subject). Absent or false: direct tokens only "
        "(absent: a deny role still holds for delegated tokens); true: direct and delegated "
        "tokens. A `claims` test under `act` (`act.sub: order-agent`) names the actor and "
        "implies true.",
    )

    @model_validator(mode="after")
    def _not_empty(self) -> RoleEntry:
        if all(
            v is None
            for v in (self.issuer, self.groups, self.scopes, self.claims, self.authenticated)
        ):
            raise ValueError(
                "a role entry needs at least one of issuer, groups, scopes, claims, authenticated"
                + (
                    ""
                    if self.delegated is None
                    else " (delegated only says which tokens the others judge)"
                )
            )
        if self.delegated is False and self.actor_claims:
            raise ValueError(
                f"delegated: false contradicts the claims test on {self.actor_claims[0]}, "
                "which only a delegated token can pass"
            )
        return self

    @property
    def actor_claims(self) -> tuple[str, ...]:
        """The ``claims`` paths under ``act``: they name the actor of a delegated token."""
        return tuple(p for p in self.claims or () if is_delegation_path(p))

    @property
    def delegation(self) -> Literal["default", "direct", "any"]:
        """Which tokens the entry judges: ``any`` (``delegated: true``, or a claims test under
        ``act``), ``direct`` (``delegated: false``), ``default`` (absent: direct tokens, and
        delegated ones too when a route's ``deny`` names the role)."""
        if self.delegated or self.actor_claims:
            return "any"
        return "default" if self.delegated is None else "direct"


class Role(_Strict):
    """A role holds if ANY of its entries holds. Written as the list of entries, or as a mapping
    with ``any_of`` (the entries) and a ``description``."""

    description: str | None = None
    any_of: list[RoleEntry] = Field(min_length=1, description="The role holds if any holds.")
    _short_form: bool = PrivateAttr(default=False)
    short_form: ClassVar[str] = "any_of"  # a list in the document stands for this field

    def entry_path(self, index: int) -> tuple[str | int, ...]:
        """Where entry ``index`` is in the document, relative to the role."""
        return (index,) if self._short_form else ("any_of", index)


def _role_forms(value: object, handler: ValidatorFunctionWrapHandler) -> Role:
    if isinstance(value, list):
        role: Role = handler({"any_of": value})
        role._short_form = True
        return role
    if isinstance(value, dict) and not set(value) & set(Role.model_fields):
        if set(value) & set(RoleEntry.model_fields):
            raise ValueError(
                "a role is a list of entries: write '- ' before this entry, or put it under any_of"
            )
    if isinstance(value, dict | Role):
        return cast(Role, handler(value))
    raise ValueError("expected a list of role entries, or a mapping with any_of and description")


RoleDef = Annotated[Role, WrapValidator(_role_forms, json_schema_input_type=list[RoleEntry] | Role)]


class Param(_Strict):
    type: str = Field(
        description="BOOL, INT64, FLOAT64, NUMERIC, STRING, BYTES, DATE, TIMESTAMP, JSON or ARRAY<...>."
    )
    from_: str | None = Field(
        None,
        alias="from",
        pattern=_FROM,
        description="Where the value comes from when not from the caller. claim.NAME (dotted "
        "path allowed): from the token, never from the caller. cursor.COLUMN: the keyset column "
        "COLUMN of the last row of the previous page, from the caller's cursor (null on the "
        "first page); page_size: the page size, which the caller asks under this parameter's "
        "name within the query's pagination.page_size. The last two only in a query with "
        "pagination.",
    )
    min: int | float | str | None = None
    max: int | float | str | None = None
    max_length: int | None = Field(None, ge=0, strict=True)
    pattern: str | None = Field(
        None,
        description="A regular expression (RE2 syntax, linear time) the whole value must match; "
        "give max_length too.",
    )
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
            compile_regex(value)  # RegexProblem is a ValueError: a load error at the pattern
        return value

    @property
    def ptype(self) -> ParamType:
        return parse_type(self.type)

    @property
    def claim(self) -> str | None:
        """The claim path this parameter is bound from, or None."""
        if self.from_ is None or not self.from_.startswith("claim."):
            return None
        return self.from_.removeprefix("claim.")

    @property
    def cursor_column(self) -> str | None:
        """The keyset column this parameter is bound from (``from: cursor.COLUMN``), or None."""
        if self.from_ is None or not self.from_.startswith("cursor."):
            return None
        return self.from_.removeprefix("cursor.")

    @property
    def is_page_size(self) -> bool:
        """``from: page_size``: the parameter carries the page size."""
        return self.from_ == "page_size"

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


MaskMode = Literal["redact", "null", "hash", "last4"]
MASK_MODES: tuple[str, ...] = ("redact", "null", "hash", "last4")


def _yaml_null(value: object) -> object:
    """``with: null`` unquoted is YAML's null: it can only mean the ``null`` mode."""
    return "null" if value is None else value


class Mask(_Strict):
    """How one result column is masked, and for whom it is not (``docs/masking.md``)."""

    with_: Annotated[
        MaskMode, BeforeValidator(_yaml_null, json_schema_input_type=MaskMode | None)
    ] = Field(
        alias="with",
        description="redact: a STRING answers \"***\", any other type null; null: null; hash: a "
        "keyed HMAC-SHA256 of the value (base64url; equal values mask equally within the "
        "query's column, or within its domain; needs SPANGATE_MASK_KEY); last4: \"***\" and the "
        "last four characters of a STRING of at least 8 characters, else \"***\" (STRING "
        "columns only). A NULL stays NULL; an ARRAY is masked element by element (null: the "
        "whole array).",
    )
    unless: list[str] = Field(
        default_factory=list,
        description="Roles (names in `roles`) whose holders see the clear value: a role counts "
        "as it does in a route's allow, so a delegated token holds it only through an entry "
        "that admits delegated tokens. Empty: masked for everyone.",
    )
    domain: str | None = Field(
        None,
        pattern=_NAME,
        max_length=128,
        description="hash only: the name of the key the hash is made with. Masks naming the "
        "same domain hash equal values equally (a caller can join on them across queries); "
        "without one, each query's column has a key of its own.",
    )
    description: str | None = None

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("unless")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("a role is listed twice")
        return value


# The Spanner types a keyset column may have: what a cursor carries and binds back exactly.
KEYSET_TYPES: tuple[str, ...] = (
    "STRING", "INT64", "TIMESTAMP", "DATE", "NUMERIC", "BYTES", "BOOL", "FLOAT64",
)  # fmt: skip


class PageSize(_Strict):
    """How many rows one page holds: what the caller asks under the ``from: page_size``
    parameter's name, at least 1 and at most ``max``; ``default`` when it asks nothing."""

    default: int = Field(ge=1, le=100_000, strict=True, description="The page size asked for none.")
    max: int = Field(
        ge=1,
        le=100_000,
        strict=True,
        description="The largest page a caller may ask for; at most the query's max_rows.",
    )

    @model_validator(mode="after")
    def _default_within(self) -> PageSize:
        if self.default > self.max:
            raise ValueError(f"default {self.default} is larger than max {self.max}")
        return self


class Pagination(_Strict):
    """Keyset pagination of a read (``docs/pagination.md``): the statement orders by ``keyset``
    and reads past the previous page through its ``from: cursor.COLUMN`` parameters (null on the
    first page); answers carry ``next_cursor`` while rows remain, a token sealed for the caller."""

    keyset: list[Annotated[str, Field(pattern=_COLUMN_NAME, max_length=128)]] = Field(
        min_length=1,
        max_length=8,
        description="Result columns, as the statement returns them, that order the rows and "
        "name one row uniquely together (end with a unique key): the statement's ORDER BY "
        "lists exactly them, in this order, each ASC or DESC. NOT NULL columns of the types "
        "STRING, INT64, TIMESTAMP, DATE, NUMERIC, BYTES, BOOL or FLOAT64; never a masked "
        "column.",
    )
    page_size: PageSize
    description: str | None = None

    @field_validator("keyset")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("a column is listed twice")
        return value


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
    timeout: Duration = Field(
        "10s",
        description="Deadline for the statement (a write: for all its attempts); past it -> 504.",
    )
    priority: Literal["low", "medium", "high"] | None = Field(
        None, description="Spanner request priority; Spanner's default (high) when absent."
    )
    mask: dict[Annotated[str, Field(min_length=1, max_length=128)], Mask] = Field(
        default_factory=dict,
        description="Per result column (its name exactly as the statement returns it): how it "
        "is masked and which roles see it clear. A column the statement does not return is a "
        "load error.",
    )
    pagination: Pagination | None = Field(
        None,
        description="Keyset pagination (reads only): the keyset columns and the page size; "
        "the statement's cursor.COLUMN and page_size parameters carry them.",
    )
    description: str | None = None

    @property
    def timeout_seconds(self) -> float:
        return parse_duration(self.timeout)


MAX_APPROVAL_TTL_SECONDS = 24 * 3600.0  # an approval is good for at most a day


class Approval(_Strict):
    """A route whose calls wait for a person's approval (``docs/approvals.md``): an allowed
    call answers 202 ``approval-required`` with an approval id; a holder of an ``approvers``
    role (never the requester) approves or rejects it; the requester repeats the call with
    ``Approval-Id`` and the statement runs once, with exactly the approved parameters."""

    approvers: list[str] = Field(
        min_length=1,
        description="Roles (names in `roles`) whose holders may approve or reject a request: "
        "a role counts as in a route's allow (a delegated token holds it only through an "
        "entry that admits delegated tokens), a deny role of the route holding refuses, and "
        "nobody decides a request they made (its subject, or an actor acting in it).",
    )
    ttl: Duration = Field(
        "15m",
        description="How long a request waits for a decision, and how long an approval is "
        "good for once given: from 1s to 24h.",
    )
    match: list[str] | None = Field(
        None,
        description="Claim-bound parameters (from: claim.NAME) of the route's query whose "
        "values an approver's own token must bind alike: an approver sees and decides only "
        "requests whose values it shares (a lead of tenant t2 never sees tenant t1's). Default: "
        "every claim-bound parameter of the query; [] lets any approver decide any request. A "
        "parameter bound from claim.sub cannot be matched (no approver is the requester).",
    )
    description: str | None = None

    @field_validator("approvers")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("a role is listed twice")
        return value

    @field_validator("match")
    @classmethod
    def _unique_params(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError("a parameter is listed twice")
        return value

    @field_validator("ttl")
    @classmethod
    def _bounded(cls, value: str) -> str:
        seconds = parse_duration(value)
        if not 1.0 <= seconds <= MAX_APPROVAL_TTL_SECONDS:
            raise ValueError(f"ttl must be from 1s to 24h, got {value}")
        return value

    @property
    def ttl_seconds(self) -> float:
        return parse_duration(self.ttl)


class Route(_Strict):
    path: str = Field(pattern=r"^/", description="A path template: /v1/orders/{order_id}.")
    method: Method
    query: str = Field(description="The name of a query in `queries`.")
    allow: list[str] = Field(min_length=1, description="Roles any of which allows the call.")
    deny: list[str] = Field(
        default_factory=list, description="Roles any of which denies it; deny wins."
    )
    description: str | None = None
    tool: Annotated[str, Field(pattern=TOOL_NAME)] | Literal[False] | None = Field(
        None,
        description="The route's MCP tool name (/mcp): 1 to 128 letters, digits, _ - and . "
        "(default: the query's name); false keeps the route off MCP.",
    )
    approval: Approval | None = Field(
        None,
        description="Calls wait for an approval by a holder of one of `approvers` "
        "(docs/approvals.md); not on a paginated query's route.",
    )

    @field_validator("method", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value


_SIZE_RE = re.compile(r"^([0-9]+)\s*(B|KiB|MiB|GiB|KB|MB|GB)?$")
_SIZE_UNITS = {None: 1, "B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "KB": 1000,
               "MB": 1000**2, "GB": 1000**3}  # fmt: skip

Durability = Literal["strict", "written", "batched"]
SpannerDurability = Literal["strict", "batched"]
_DURABILITY = (
    "strict: the response waits until this sink holds the event durably (fdatasync'd, handed to "
    "the pipe), flushed at once; written: the response waits until the event is written to the OS "
    "(a crash of the process loses nothing answered), a file sink fdatasyncs it in the background "
    "(sync_interval, max_unsynced); batched: as strict, flushed together within "
    "SPANGATE_AUDIT_BATCH_WINDOW_MS. Default: strict for writes (DML), written for the rest."
)
_SPANNER_DURABILITY = (
    "strict: the response waits until the event's batch has committed, committed at once; "
    "batched: batches commit at most once per SPANGATE_AUDIT_BATCH_WINDOW_MS and responses wait "
    "for theirs. Default: strict for writes (their row commits in their own transaction), "
    "batched for the rest."
)
MAX_SYNC_WAIT_SECONDS = 5.0  # audit.sinks.SYNC_DEADLINE_SECONDS: max_unsynced stays within it


def parse_size(text: str | int) -> int:
    """``"64MiB"``, ``"500KB"``, ``1048576`` -> bytes."""
    m = _SIZE_RE.match(str(text).strip())
    if m is None:
        raise ValueError(f"expected a size such as 64MiB, 500KB or 1048576, got {text!r}")
    return int(m.group(1)) * _SIZE_UNITS[m.group(2)]


class FileSink(_Strict):
    type: Literal["file"]
    path: str = Field(min_length=1, description="Relative paths are relative to the policy file.")
    durability: Durability | None = Field(None, description=_DURABILITY)
    sync_interval: Duration = Field(
        "100ms",
        description="written: events written are fdatasync'd in the background at most this "
        "often (at once after an idle spell; 0ms: continuously), so while the disk keeps up a "
        "power loss loses at most about this much of the events answered.",
    )
    max_unsynced: Duration = Field(
        "1s",
        description="written: how far answers may run ahead of the disk: once the oldest event "
        "written but not fdatasync'd is older than this (a slow or stalled disk), answers wait "
        "for their sync as with strict. Longer than sync_interval, at most 5s.",
    )
    rotate_size: Annotated[str, Field(pattern=_SIZE_RE.pattern)] | int | None = Field(
        None,
        description="Rotate the file to PATH.000001, .000002… before it would grow past this "
        "size (64MiB, 500KB, or bytes); the hash chain goes on across files.",
    )

    @property
    def rotate_bytes(self) -> int | None:
        return parse_size(self.rotate_size) if self.rotate_size is not None else None

    @property
    def sync_interval_seconds(self) -> float:
        return parse_duration(self.sync_interval)

    @property
    def max_unsynced_seconds(self) -> float:
        return parse_duration(self.max_unsynced)

    @model_validator(mode="after")
    def _sync_bounds(self) -> FileSink:
        interval, bound = self.sync_interval_seconds, self.max_unsynced_seconds
        if bound > MAX_SYNC_WAIT_SECONDS:
            raise ValueError(
                f"max_unsynced must be at most {MAX_SYNC_WAIT_SECONDS:g}s (a request waits for a "
                "sync at most that long)"
            )
        if bound <= interval:
            raise ValueError(
                f"max_unsynced ({self.max_unsynced}) must be longer than sync_interval "
                f"({self.sync_interval}), or answers would keep waiting for their sync"
            )
        return self

    @field_validator("rotate_size")
    @classmethod
    def _positive(cls, value: str | int | None) -> str | int | None:
        if value is not None and parse_size(value) < 1024:
            raise ValueError("rotate_size must be at least 1KiB")
        return value


class StdoutSink(_Strict):
    type: Literal["stdout"]
    durability: Durability | None = Field(None, description=_DURABILITY)


class SpannerSink(_Strict):
    type: Literal["spanner"]
    identity: str = Field(
        description="The identity that writes the batches: a database role with INSERT on the "
        "table and nothing else."
    )
    table: str = Field(
        "SpangateAudit",
        pattern=_TABLE_NAME,
        description="The append-only audit table (created by spangate init-db).",
    )
    durability: SpannerDurability | None = Field(None, description=_SPANNER_DURABILITY)

    @field_validator("durability", mode="before")
    @classmethod
    def _not_written(cls, value: object) -> object:
        if value == "written":
            raise ValueError(
                "durability written is for file and stdout sinks: a Spanner batch is durable "
                "when it commits, nothing comes between (use strict or batched)"
            )
        return value


Sink = Annotated[FileSink | StdoutSink | SpannerSink, Field(discriminator="type")]


def _default_sinks() -> list[FileSink | StdoutSink | SpannerSink]:
    return [StdoutSink(type="stdout")]


class Audit(_Strict):
    sinks: list[Sink] = Field(
        default_factory=_default_sinks,
        min_length=1,
        description="Where events go, all at once: at most one sink of each type.",
    )
    redact: list[str] = Field(
        default_factory=list,
        description="Parameter names whose values the trail stores as a keyed hash (HMAC) "
        "instead of the value, and claim.PATH for a claim a role tests (the claims a decision "
        "read are recorded for replay; a claim bound to a redacted parameter is hashed too); "
        "the gateway refuses to start without SPANGATE_AUDIT_KEY.",
    )

    @field_validator("sinks")
    @classmethod
    def _one_of_each(
        cls, value: list[FileSink | StdoutSink | SpannerSink]
    ) -> list[FileSink | StdoutSink | SpannerSink]:
        kinds = [s.type for s in value]
        twice = sorted({k for k in kinds if kinds.count(k) > 1})
        if twice:
            raise ValueError(f"at most one sink of each type ({', '.join(twice)} given twice)")
        return value


RateText = Annotated[str, Field(pattern=RATE_PATTERN, examples=["60/min", "5000/hour", "100/day"])]


class Budget(_Strict):
    """What one principal holding the role may spend per fixed window (HTTP and MCP alike):
    past a limit, 429 budget-exceeded. A caller holding several roles that allow the route gets,
    per limit, the most generous one of them (none when one of them has no such limit)."""

    calls: RateText | None = Field(
        None, description="Calls, counted before the statement runs: 60/min, 1000/hour."
    )
    rows: RateText | None = Field(
        None,
        description="Rows that reads return, counted after they ran: the read that crosses the "
        "limit still answers, the next call is refused.",
    )
    writes: RateText | None = Field(
        None, description="Writes (DML routes), counted before the statement runs: 100/day."
    )
    per: Literal["subject", "client", "actor"] = Field(
        "subject",
        description="Whose budget it is: subject (issuer + sub, the default), client (the "
        "token's client id; its subject when it has none) or actor (the delegating actor of a "
        "token with `act`, act.sub; the subject for direct tokens).",
    )
    description: str | None = None

    @field_validator("calls", "rows", "writes")
    @classmethod
    def _rate(cls, value: str | None) -> str | None:
        if value is not None:
            parse_rate(value)
        return value

    @model_validator(mode="after")
    def _not_empty(self) -> Budget:
        if self.calls is None and self.rows is None and self.writes is None:
            raise ValueError("a budget needs at least one of calls, rows, writes")
        return self

    def rate(self, kind: str) -> Rate | None:
        text: str | None = getattr(self, kind)
        return rate_of(text) if text is not None else None  # parsed once (validated at load)


class Policy(_Strict):
    """A spangate policy, format version 1."""

    version: Literal[1]
    spanner: SpannerTarget
    issuers: dict[Annotated[str, Field(pattern=_NAME)], Issuer] = Field(min_length=1)
    identities: dict[Annotated[str, Field(pattern=_NAME)], Identity] = Field(min_length=1)
    roles: dict[Annotated[str, Field(pattern=_NAME)], RoleDef] = Field(default_factory=dict)
    queries: dict[Annotated[str, Field(pattern=_NAME)], Query] = Field(min_length=1)
    routes: list[Route] = Field(min_length=1)
    audit: Audit = Field(default_factory=Audit)
    budgets: dict[Annotated[str, Field(pattern=_NAME)], Budget] = Field(
        default_factory=dict,
        description="Per role (a name in `roles`): what a principal holding it may spend.",
    )
