"""Parameter binding: caller values and claims -> typed, validated statement parameters. Pure.

Sources, in the only places they may come from:

- the path template (``/v1/orders/{order_id}``);
- the query string for GET, HEAD and DELETE; the JSON body (an object) for POST, PUT and PATCH;
- ``from: claim.NAME``: the token. A caller value for a claim-bound parameter is ignored (and
  reported in ``ignored`` for the audit trail, by ``ignored_values`` also when the request is
  refused), never used. A claim the token lacks is a 403 ``claim-missing``: the statement cannot
  be scoped, so it does not run;
- ``from: cursor.COLUMN`` (a paginated query): bound to null here, the first page; the gateway
  binds the values of the caller's cursor once it has opened it (``gateway.shaping.paging``). A
  caller value under such a parameter's name is a 400 ``param-unknown``: it is no parameter the
  caller has;
- ``from: page_size``: the caller's value under the parameter's name, as any other, within the
  query's ``pagination.page_size`` (at least 1, at most ``max``, ``default`` when absent).

A name the query does not declare is a 400 ``param-unknown``; a declared parameter that is absent
takes its ``default``, else null when ``nullable``, else is a 400 ``param-missing``. Constraints:
``min``/``max`` (inclusive), ``max_length`` (characters, bytes or elements), ``pattern`` (the whole
value must match), ``enum``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from gateway.auth.principal import MISSING, Principal
from gateway.errors import Forbidden, ParameterError
from gateway.policy.model import Pagination, Param
from gateway.policy.regex import Regex, compile_regex
from gateway.policy.sqltoken import GOOGLESQL, POSTGRESQL, Dialect
from gateway.policy.types import ParamType, SpannerTimestamp, TypeProblem, coerce

__all__ = ["Bound", "ParamSpec", "bind_params", "claim_values", "compile_param", "ignored_values"]

BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


@dataclass(frozen=True)
class ParamSpec:
    name: str
    ptype: ParamType
    claim: str | None
    nullable: bool
    has_default: bool
    default: Any
    min: Any
    max: Any
    max_length: int | None
    pattern: Regex | None
    enum: tuple[Any, ...] | None
    cursor: str | None = None  # from: cursor.COLUMN: the keyset column
    page_size: bool = False  # from: page_size

    @property
    def caller_sets(self) -> bool:
        """Whether a caller may give this parameter (not from a claim or a cursor)."""
        return self.claim is None and self.cursor is None


@dataclass(frozen=True)
class Bound:
    values: dict[str, Any]  # name -> typed value, every declared parameter
    claim_bound: frozenset[str]  # names whose value came from the token
    ignored: dict[str, Any]  # caller values sent for claim-bound parameters (never used)
    # names the caller did not send: their declared default, or null for a nullable one
    defaulted: frozenset[str] = frozenset()
    cursor_bound: frozenset[str] = frozenset()  # from: cursor.COLUMN (null here: a first page)
    # name -> (what the caller sent, whether as text: a path or query-string value), before
    # ``coerce``: the audit trail records it where it differs from the bound value (replay)
    sent: Mapping[str, tuple[Any, bool]] = field(default_factory=dict)


def _ordered(value: Any) -> Any:
    # A timestamp orders by its instant, then by the nanoseconds a datetime cannot hold.
    return (value.value, value.nanos) if isinstance(value, SpannerTimestamp) else value


def compile_param(
    name: str,
    param: Param,
    pagination: Pagination | None = None,
    dialect: Dialect = GOOGLESQL,
) -> ParamSpec:
    """Pre-coerce a param's constraints; the validator has already checked they fit the type.
    The page size parameter takes its bounds from ``pagination``. In a PostgreSQL-dialect
    policy a NUMERIC takes PG.NUMERIC's values (``ParamType.postgresql``)."""
    ptype = param.ptype
    if dialect == POSTGRESQL:
        ptype = replace(ptype, postgresql=True)
    element = (
        ParamType(ptype.element, postgresql=ptype.postgresql)
        if ptype.is_array and ptype.element
        else ptype
    )

    def pre(value: Any) -> Any:
        return None if value is None else coerce(element, value, from_text=False)

    if param.is_page_size and pagination is not None:
        size = pagination.page_size
        return ParamSpec(
            name=name,
            ptype=ptype,
            claim=None,
            nullable=False,
            has_default=True,
            default=size.default,
            min=1,
            max=size.max,
            max_length=None,
            pattern=None,
            enum=None,
            page_size=True,
        )
    return ParamSpec(
        name=name,
        ptype=ptype,
        claim=param.claim,
        nullable=param.nullable,
        has_default=param.has_default,
        default=coerce(ptype, param.default, from_text=False) if param.has_default else None,
        min=pre(param.min),
        max=pre(param.max),
        max_length=param.max_length,
        pattern=compile_regex(param.pattern) if param.pattern is not None else None,
        enum=tuple(pre(v) for v in param.enum) if param.enum is not None else None,
        cursor=param.cursor_column,
    )


def check_constraints(spec: ParamSpec, value: Any) -> None:
    """Raise TypeProblem when a typed value breaks its constraints."""
    if value is None:
        if not spec.nullable:
            raise TypeProblem("must not be null")
        return
    if spec.max_length is not None and len(value) > spec.max_length:
        unit = (
            "elements"
            if spec.ptype.is_array
            else ("bytes" if spec.ptype.kind == "BYTES" else "characters")
        )
        raise TypeProblem(f"longer than {spec.max_length} {unit}")
    items = value if spec.ptype.is_array else [value]
    for item in items:
        if item is None:
            continue
        if (spec.min is not None or spec.max is not None) and item != item:
            raise TypeProblem("NaN is outside every range")  # NaN compares false with anything
        if spec.min is not None and _ordered(item) < _ordered(spec.min):
            raise TypeProblem(f"must be at least {_show(spec.min)}")
        if spec.max is not None and _ordered(item) > _ordered(spec.max):
            raise TypeProblem(f"must be at most {_show(spec.max)}")
        if spec.pattern is not None and isinstance(item, str) and not spec.pattern.fullmatch(item):
            raise TypeProblem(f"must match {spec.pattern.pattern}")
        if spec.enum is not None and item not in spec.enum:
            raise TypeProblem(f"must be one of {[_show(v) for v in spec.enum]}")


def _show(value: Any) -> Any:
    return (
        value.rfc3339()
        if isinstance(value, SpannerTimestamp)
        else value
        if isinstance(value, int | float | str)
        else str(value)
    )


def ignored_values(
    specs: Mapping[str, ParamSpec],
    query: Sequence[tuple[str, str]] = (),
    body: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The values a caller sent for claim-bound parameters (a list when a query repeats one):
    never used, only recorded. Reads nothing else, so it holds whether binding succeeds or not."""
    grouped: dict[str, list[str]] = {}
    for name, value in query:
        spec = specs.get(name)
        if spec is not None and spec.claim is not None:
            grouped.setdefault(name, []).append(value)
    ignored: dict[str, Any] = {k: v if len(v) > 1 else v[0] for k, v in grouped.items()}
    for name, value in (body or {}).items():
        spec = specs.get(name)
        if spec is not None and spec.claim is not None:
            ignored[name] = value
    return ignored


def _claim_bound(name: str, spec: ParamSpec, claim_path: str, principal: Principal) -> Any:
    """The value of claim-bound parameter ``name`` for ``principal``'s token, or 403
    ``claim-missing`` / ``claim-invalid``."""
    claim = principal.claim(claim_path)
    if claim is MISSING or claim is None:
        raise Forbidden(
            f"the token has no '{claim_path}' claim, which parameter '{name}' is bound to",
            code="claim-missing",
        )
    try:
        value = coerce(spec.ptype, claim, from_text=False)
        check_constraints(spec, value)
    except TypeProblem as exc:
        raise Forbidden(
            f"the token's '{claim_path}' claim does not fit parameter '{name}': {exc}",
            code="claim-invalid",
        ) from None
    return value


def claim_values(
    specs: Mapping[str, ParamSpec], names: Sequence[str], principal: Principal
) -> dict[str, Any] | None:
    """What ``principal``'s token binds for the claim-bound parameters ``names``, as a call of
    its own would bind them; None when it lacks one of those claims or one does not fit (or a
    name is not claim-bound: nothing to compare). An approver's side of ``approval.match``."""
    values: dict[str, Any] = {}
    for name in names:
        spec = specs.get(name)
        if spec is None or spec.claim is None:
            return None
        try:
            values[name] = _claim_bound(name, spec, spec.claim, principal)
        except Forbidden:
            return None
    return values


def bind_params(
    specs: Mapping[str, ParamSpec],
    principal: Principal,
    *,
    path_params: Mapping[str, str],
    query: Sequence[tuple[str, str]] = (),
    body: Mapping[str, Any] | None = None,
) -> Bound:
    """Bind every declared parameter or raise ParameterError (400) / Forbidden (403)."""
    raw: dict[str, tuple[Any, bool]] = {}  # name -> (value, from_text)
    for name, value in path_params.items():
        raw[name] = (value, True)

    grouped: dict[str, list[str]] = {}
    for name, value in query:
        grouped.setdefault(name, []).append(value)
    for name, given_values in grouped.items():
        spec = specs.get(name)
        if spec is None or spec.cursor is not None:
            raise ParameterError(name, "is not a parameter of this route", code="param-unknown")
        if spec.claim is not None:
            continue  # ignored: see ignored_values
        if name in raw:
            raise ParameterError(
                name, "is given in the path and must not be repeated", code="param-invalid"
            )
        if len(given_values) > 1 and not spec.ptype.is_array:
            raise ParameterError(name, "is given more than once")
        raw[name] = (given_values if spec.ptype.is_array else given_values[0], True)

    for name, value in (body or {}).items():
        spec = specs.get(name)
        if spec is None or spec.cursor is not None:
            raise ParameterError(name, "is not a parameter of this route", code="param-unknown")
        if spec.claim is not None:
            continue  # ignored: see ignored_values
        if name in raw:
            raise ParameterError(
                name, "is given in the path and must not be repeated", code="param-invalid"
            )
        raw[name] = (value, False)

    values: dict[str, Any] = {}
    claim_bound = set()
    defaulted = set()
    for name, spec in specs.items():
        if spec.cursor is not None:
            values[name] = None  # the first page; a cursor's values replace it once opened
            continue
        if spec.claim is not None:
            values[name] = _claim_bound(name, spec, spec.claim, principal)
            claim_bound.add(name)
            continue
        if name in raw:
            given, from_text = raw[name]
            try:
                value = coerce(spec.ptype, given, from_text=from_text)
                check_constraints(spec, value)
            except TypeProblem as exc:
                raise ParameterError(name, str(exc)) from None
            values[name] = value
        elif spec.has_default:
            values[name] = spec.default
            defaulted.add(name)
        elif spec.nullable:
            values[name] = None
            defaulted.add(name)
        else:
            raise ParameterError(name, "is required", code="param-missing")
    cursor_bound = frozenset(n for n, s in specs.items() if s.cursor is not None)
    return Bound(
        values,
        frozenset(claim_bound),
        ignored_values(specs, query, body),
        defaulted=frozenset(defaulted),
        cursor_bound=cursor_bound,
        sent=raw,
    )
