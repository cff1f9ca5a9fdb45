"""Policy types -> Spanner parameter types and values (always with ``param_types``: without them
the emulator takes every parameter as INT64)."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

from google.api_core.datetime_helpers import DatetimeWithNanoseconds
from google.cloud.spanner_v1 import param_types
from google.cloud.spanner_v1.types import Type

from gateway.policy.bind import ParamSpec
from gateway.policy.types import ParamType, SpannerTimestamp

__all__ = ["spanner_params", "spanner_type"]

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


def spanner_type(ptype: ParamType) -> Type:
    if ptype.is_array:
        assert ptype.element is not None
        return param_types.Array(_SCALARS[ptype.element])  # type: ignore[no-untyped-call,no-any-return]
    return _SCALARS[ptype.kind]


def _value(kind: str, value: Any) -> Any:
    if value is None:
        return None
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
    specs: Mapping[str, ParamSpec], values: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, Type]]:
    """Bound values -> (params, param_types) for ``execute_sql``/``execute_update``."""
    params: dict[str, Any] = {}
    types: dict[str, Type] = {}
    for name, spec in specs.items():
        ptype = spec.ptype
        value = values.get(name)
        if ptype.is_array and value is not None:
            assert ptype.element is not None
            params[name] = [_value(ptype.element, v) for v in value]
        else:
            params[name] = _value(ptype.kind, value)
        types[name] = spanner_type(ptype)
    return params, types
