"""pydantic validation errors -> located policy problems, phrased for the people who write YAML.

A pydantic ``loc`` mixes document steps with its own tags (a union member such as ``str`` or
``function-after[_one(), Staleness]``, a discriminator value such as ``file``, ``[key]``). Tags
are told apart by walking the data. For a union, branches that only say "wrong type" at the
union itself are dropped when another branch got further; if none did, they become one problem
("expected a string or a list"). An unknown key comes with "did you mean …?" from the keys the
model allows at that place.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from gateway.budgets.rates import RATE_FORM, RATE_PATTERN
from gateway.errors import PolicyProblem
from gateway.policy.model import (
    _COLUMN_NAME,
    _DURATION_RE,
    _FROM,
    _NAME,
    _PARAM_NAME,
    _ROLE_NAME,
    _SERVICE_ACCOUNT,
    _SIZE_RE,
    _TABLE_NAME,
    TOOL_NAME,
    Policy,
)
from gateway.policy.source import SourceMap
from gateway.policy.validate import Where, did_you_mean

__all__ = ["pattern_words", "shape_problems"]

_EXPECTED = {
    "string_type": "a string",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true/false",
    "bool_parsing": "true/false",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "literal_error": "",  # filled from the error's context
    "none_required": "null",
}
_PATTERNS = {
    _DURATION_RE.pattern: "expected a duration such as 500ms, 10s, 1m or 1h",
    _NAME: "a name starts with a letter and holds letters, digits, _ . and -",
    _PARAM_NAME: (
        "a parameter name starts with a letter or _ and holds letters, digits and _, "
        "such as order_id"
    ),
    "^/": "a path template must start with /",
    RATE_PATTERN: RATE_FORM,
    _FROM: "expected claim.NAME (a dotted path allowed), cursor.COLUMN or page_size",
    TOOL_NAME: "a tool name is 1 to 128 letters, digits, _ . and -",
    _SIZE_RE.pattern: "expected a size such as 64MiB, 500KB or a number of bytes",
    _SERVICE_ACCOUNT: (
        "a service account is the email of a Google Cloud service account, NAME@PROJECT"
        ".iam.gserviceaccount.com, such as orders-reader@my-project.iam.gserviceaccount.com"
    ),
    _TABLE_NAME: (
        "a table name starts with a letter and holds at most 128 letters, digits and _, "
        "such as SpangateAudit"
    ),
}
# Keys whose pattern another key shares (a parameter name, a database role and a keyset column
# are all identifiers) say their own words: by (key, pattern) first, then by the pattern.
_KEY_PATTERNS = {
    ("database_role", _ROLE_NAME): (
        "a database role (a Spanner fine-grained access control role) starts with a letter or _ "
        "and holds letters, digits and _, such as shop_reader"
    ),
    ("keyset", _COLUMN_NAME): (
        "a keyset column is the name of a column the statement returns: a letter or _, then "
        "letters, digits and _, such as OrderId"
    ),
}


def pattern_words(key: str | None, pattern: str) -> str | None:
    """What a value of ``key`` (the nearest key name above it) that does not match ``pattern``
    must be, in words with an example; None when no words are known (never the pattern)."""
    return _KEY_PATTERNS.get((key or "", pattern)) or _PATTERNS.get(pattern)


@dataclass(frozen=True)
class _Err:
    loc: tuple[str | int, ...]
    tag: tuple[bool, ...]  # per loc part: a pydantic tag, not a document step
    where: Where  # the document steps
    type: str
    msg: str
    ctx: Mapping[str, Any]
    input: Any


def _classify(error: Mapping[str, Any], data: Any) -> _Err:
    loc = tuple(error["loc"])
    tags: list[bool] = []
    where: list[str | int] = []
    cur = data
    for k, part in enumerate(loc):
        if isinstance(cur, dict) and isinstance(part, str) and part in cur:
            cur = cur[part]
        elif isinstance(cur, list) and isinstance(part, int) and 0 <= part < len(cur):
            cur = cur[part]
        else:
            missing_field = error["type"] == "missing" and k == len(loc) - 1
            tags.append(not (missing_field or part == "[key]"))
            continue
        tags.append(False)
        where.append(part)
    return _Err(
        loc,
        tuple(tags),
        tuple(where),
        error["type"],
        error["msg"],
        error.get("ctx") or {},
        error.get("input"),
    )


def _is_type_error(err: _Err, depth: int) -> bool:
    return len(err.loc) == depth and err.type in _EXPECTED


def _prune(errs: list[_Err], depth: int = 0) -> list[_Err]:
    out = [e for e in errs if len(e.loc) <= depth]
    steps: dict[Any, list[_Err]] = {}
    branches: dict[Any, list[_Err]] = {}
    for e in errs:
        if len(e.loc) > depth:
            (branches if e.tag[depth] else steps).setdefault(e.loc[depth], []).append(e)
    for group in steps.values():
        out.extend(_prune(group, depth + 1))
    pruned = [_prune(group, depth + 1) for group in branches.values()]
    further = [b for b in pruned if not all(_is_type_error(e, depth + 1) for e in b)]
    if further:
        out.extend(e for b in further for e in b)
    elif pruned:
        first = pruned[0][0]
        wanted = [_expected(e) for b in pruned for e in b]
        out.append(
            _Err(
                first.loc[:depth],
                first.tag[:depth],
                first.where,
                "union",
                "",
                {"expected": _one_of(list(dict.fromkeys(wanted)))},
                first.input,
            )
        )
    return out


def _one_of(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]


def _literals(ctx: Mapping[str, Any]) -> str:
    """pydantic's list of allowed literals, with YAML's spelling of booleans."""
    text = str(ctx.get("expected", ""))
    return re.sub(r"\b(True|False)\b", lambda m: m.group(1).lower(), text)


def _expected(err: _Err) -> str:
    if err.type == "literal_error":
        return f"one of {_literals(err.ctx)}"
    if err.type == "union":
        return str(err.ctx["expected"])
    return _EXPECTED.get(err.type) or err.msg


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def _unwrap(tp: Any) -> list[Any]:
    """The alternatives of a type, with Annotated, unions and None removed."""
    origin = get_origin(tp)
    if origin is Annotated:
        return _unwrap(get_args(tp)[0])
    if origin in (Union, UnionType):
        return [t for arg in get_args(tp) for t in _unwrap(arg)]
    return [] if tp is type(None) else [tp]


def _field_names(root: type[BaseModel], where: Where) -> list[str]:
    """The keys the model allows at ``where`` (every model of a union), by alias."""
    current: list[Any] = [root]
    for part in where:
        following: list[Any] = []
        for tp in (t for c in current for t in _unwrap(c)):
            origin = get_origin(tp)
            model = isinstance(tp, type) and issubclass(tp, BaseModel)
            if model and isinstance(part, str):
                following.extend(
                    f.annotation for n, f in tp.model_fields.items() if (f.alias or n) == part
                )
            elif model and isinstance(part, int) and (short := getattr(tp, "short_form", None)):
                # A list written in place of the model stands for its `short_form` field.
                following.append(get_args(tp.model_fields[short].annotation)[0])
            elif origin is dict:
                following.append(get_args(tp)[1])
            elif origin is list and isinstance(part, int):
                following.append(get_args(tp)[0])
        current = following
    names: list[str] = []
    for tp in (t for c in current for t in _unwrap(c)):
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            names.extend(f.alias or n for n, f in tp.model_fields.items())
    return list(dict.fromkeys(names))


@dataclass(frozen=True)
class _Said:
    where: Where
    message: str
    at_key: bool = False  # point at the mapping key rather than its value
    meant: tuple[Where, str] | None = None  # an unknown key's close match, at the parent
    missing: tuple[Where, str] | None = None  # a missing key, at the parent


def _message(err: _Err, root: type[BaseModel]) -> _Said:
    """What to say about one pruned error, and where."""
    where, ctx = err.where, err.ctx
    if err.type == "extra_forbidden":
        key = str(err.loc[-1])
        allowed = _field_names(root, where[:-1])
        close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.7)
        if close:
            hint = f"; did you mean '{close[0]}'?"
        else:
            hint = f"; expected one of {', '.join(allowed)}" if allowed else ""
        meant = (where[:-1], close[0]) if close else None
        return _Said(where, f"unknown key '{key}'{hint}", at_key=True, meant=meant)
    if err.type == "missing":
        name = str(err.loc[-1])
        return _Said(where, f"missing required key '{name}'", missing=(where, name))
    if "[key]" in err.loc:
        rule = pattern_words(None, str(ctx.get("pattern"))) or "not of the form this key takes"
        return _Said(where, f"invalid name '{where[-1]}': {rule}", at_key=True)
    if err.type == "union_tag_invalid":
        disc = str(ctx.get("discriminator", "")).strip("'")
        options = re.findall(r"'([^']*)'", str(ctx.get("expected_tags", "")))
        hint = did_you_mean(str(ctx.get("tag")), options)
        text = f"unknown {disc} {_show(ctx.get('tag'))}; expected one of {ctx.get('expected_tags')}"
        return _Said((*where, disc), text + hint)
    if err.type == "union_tag_not_found":
        disc = str(ctx.get("discriminator", "")).strip("'")
        return _Said(where, f"missing required key '{disc}'")
    if err.type == "literal_error":
        options = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        hint = did_you_mean(err.input, options) if isinstance(err.input, str) else ""
        shown = _show(err.input)
        return _Said(where, f"unexpected value {shown}; expected {_literals(ctx)}{hint}")
    if err.type == "union" or err.type in _EXPECTED:
        return _Said(where, f"expected {_expected(err)}, got {_show(err.input)}")
    if err.type == "string_pattern_mismatch":
        named = next((step for step in reversed(where) if isinstance(step, str)), None)
        words = pattern_words(named, str(ctx.get("pattern")))
        return _Said(where, f"{_show(err.input)}: {words or 'not of the form this key takes'}")
    if err.type in ("too_short", "string_too_short") and ctx.get("min_length") == 1:
        return _Said(where, "must not be empty")
    if err.type in ("value_error", "assertion_error"):
        text = err.msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")
        return _Said(where, text)
    return _Said(where, f"{err.msg.removeprefix('Input ')}, got {_show(err.input)}")


def shape_problems(
    exc: ValidationError, data: Any, source: SourceMap, root: type[BaseModel] = Policy
) -> list[PolicyProblem]:
    """The problems of ``exc`` (raised validating ``data`` as ``root``), located by ``source``."""
    said = [_message(e, root) for e in _prune([_classify(e, data) for e in exc.errors()])]
    # "unknown key 'alow'; did you mean 'allow'?" already explains the missing 'allow'.
    meant = {s.meant for s in said if s.meant is not None}
    return [
        source.problem(s.where, s.message, key=s.at_key)
        for s in said
        if s.missing is None or s.missing not in meant
    ]
