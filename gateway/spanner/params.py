"""Policy types -> Spanner parameter types and values (always with ``param_types``: without them
the emulator takes every parameter as INT64).

In a PostgreSQL-dialect database a parameter travels under its wire name (``$k`` as ``pk``:
``CompiledQuery.wire``), NUMERIC as PG.NUMERIC (sent as text: the client refuses a Decimal past
GoogleSQL's scale of 9) and JSON as PG.JSONB; the other types are the same on the wire."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

from google.api_core.datetime_helpers import DatetimeWithNanoseconds
from google.cloud.spanner_v1 import param_types
from google.cloud.spanner_v1.types import Type

from gateway.policy.bind import ParamSpec
from gateway.policy.sqltoken import GOOGLESQL, POSTGRESQL, Dialect
from gateway.policy.types import ParamType, SpannerTimestamp

__all__ = ["PG_SCALARS", "spanner_params", "spanner_type"]

_SCALARS: Mapping[str, Type] = {
    "BOOL": param_types.BOOL,
    "INT64": param_types.INT64,
    "FLOAT64": param_types.FLOAT64,
    "NUMERIC": param_types.NUMERIC,
    "STRING": param_types.STRING,
    "BYTES": param_types.BYTES,
    "DATE": param_types.DATE,
    "TIMESTAMP": param_types.TIMESTAMP,
    "JSON": param_types.JSON,
}


PG_SCALARS: Mapping[str, Type] = {
    **_SCALARS,
    "NUMERIC": param_types.PG_NUMERIC,
    "JSON": param_types.PG_JSONB,
}


def spanner_type(ptype: ParamType, dialect: Dialect = GOOGLESQL) -> Type:
    scalars = PG_SCALARS if dialect == POSTGRESQL else _SCALARS
    if ptype.is_array:
        assert ptype.element is not None
        return param_types.Array(scalars[ptype.element])  # type: ignore[no-untyped-call,no-any-return]
    return scalars[ptype.kind]


def _value(kind: str, value: Any, dialect: Dialect) -> Any:
    if value is None:
        return None
    if kind == "NUMERIC" and dialect == POSTGRESQL:
        return format(value, "f")
    if kind == "BYTES":
        # The client expects base64 text: raw bytes raise, and ASCII bytes would be taken as base64.
        return base64.b64encode(value)
    if kind == "TIMESTAMP" and isinstance(value, SpannerTimestamp):
        v = value.value
        return DatetimeWithNanoseconds(  # type: ignore[no-untyped-call]
            v.year,
            v.month,
            v.day,
            v.hour,
            v.minute,
            v.second,
            nanosecond=value.nanos,
            tzinfo=v.tzinfo,
        )
    if kind == "JSON":
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return value


def spanner_params(
    specs: Mapping[str, ParamSpec],
    values: Mapping[str, Any],
    wire: Mapping[str, str] | None = None,
    dialect: Dialect = GOOGLESQL,
) -> tuple[dict[str, Any], dict[str, Type]]:
    """Bound values -> (params, param_types) for ``execute_sql``/``execute_update``, keyed by
    each parameter's ``wire`` name (its own name when absent)."""
    params: dict[str, Any] = {}
    types: dict[str, Type] = {}
    for name, spec in specs.items():
        ptype = spec.ptype
        value = values.get(name)
        key = wire.get(name, name) if wire is not None else name
        if ptype.is_array and value is not None:
            assert ptype.element is not None
            params[key] = [_value(ptype.element, v, dialect) for v in value]
        else:
            params[key] = _value(ptype.kind, value, dialect)
        types[key] = spanner_type(ptype, dialect)
    return params, types
