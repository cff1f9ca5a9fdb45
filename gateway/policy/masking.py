"""Column masks, the policy's side (pure): who sees which column clear, and what a mask may name.

A query's ``mask:`` maps result columns to a ``Mask`` (``with``: redact, null, hash or last4;
``unless``: roles). A caller sees a column clear when ANY role of its ``unless`` holds for the
caller's token, judged as a route's ``allow`` judges roles (``RoleTable.held``): a delegated
token (``act``) holds a role only through an entry that says ``delegated: true`` or names the
actor, so an agent acting for a person never unmasks on the person's claims alone. Which role
allowed the call does not matter (a caller holds its roles whatever the route's ``allow`` order).

Checks:

- ``mask_findings`` (the loader, ``policy check``): ``unless`` names known roles; a DML
  statement without ``THEN RETURN`` returns nothing to mask; each masked column must be one the
  statement returns when its select list names its columns (``selectlist.result_columns``);
- ``column_findings`` (the PLAN analysis: start-up, reload, ``policy check --database``): each
  masked column is a result column (exactly, case included: rows are keyed by it), and ``last4``
  masks a STRING (or ARRAY<STRING>) column only.

Warnings (the policy serves, but says what it may not mean):

- ``mask_warnings`` (the loader, from the text): a result column that differs from a masked one
  only in case (``SELECT c.Email, u.email`` with a mask on ``Email``: ``email`` is answered
  clear); a ``hash`` column whose value the statement takes from a parameter (``INSERT …
  VALUES (@email) THEN RETURN Email``, ``SELECT @x AS Email``): its caller can have values of
  its choice hashed with that column's key (or its ``domain``'s) and test guesses;
- ``column_warnings`` (the analysis): the case rule on Spanner's columns, for statements whose
  text does not name them (``SELECT *``).

The values themselves are masked by ``gateway.shaping.masks``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from gateway.policy.constraints import Finding, Where
from gateway.policy.model import Mask, Policy, Query
from gateway.policy.selectlist import result_columns, result_items, set_from_params
from gateway.policy.sqlscan import SqlInfo
from gateway.policy.sqltoken import GOOGLESQL, POSTGRESQL, Dialect

__all__ = [
    "MaskVerdict",
    "column_findings",
    "column_warnings",
    "hash_domains",
    "hash_masks",
    "mask_findings",
    "mask_warnings",
    "mask_verdicts",
    "masked_columns",
]

_LAST4_TYPES = frozenset({"STRING", "ARRAY<STRING>"})


@dataclass(frozen=True)
class MaskVerdict:
    """One masked column for one caller: ``masked`` or clear, and why (for ``explain``)."""

    column: str
    mode: str
    masked: bool
    why: str
    unless: tuple[str, ...] = ()


def masked_columns(query: Query, roles: Collection[str]) -> tuple[str, ...]:
    """The columns of ``query`` masked for a caller holding ``roles`` (in the policy's order)."""
    return tuple(
        column
        for column, mask in query.mask.items()
        if not any(role in roles for role in mask.unless)
    )


def mask_verdicts(query: Query, roles: Collection[str]) -> tuple[MaskVerdict, ...]:
    """Every mask of ``query`` with the verdict for a caller holding ``roles``."""
    out = []
    for column, mask in query.mask.items():
        holding = [r for r in mask.unless if r in roles]
        if holding:
            why = f"role {holding[0]} holds (unless {mask.unless})"
        elif mask.unless:
            why = f"none of the roles {mask.unless} holds for this token"
        else:
            why = "masked for everyone (no unless roles)"
        out.append(MaskVerdict(column, mask.with_, not holding, why, tuple(mask.unless)))
    return tuple(out)


def hash_masks(policy: Policy) -> list[str]:
    """``query.column`` of every ``with: hash`` mask (they need SPANGATE_MASK_KEY)."""
    return [
        f"{name}.{column}"
        for name, query in policy.queries.items()
        for column, mask in query.mask.items()
        if mask.with_ == "hash"
    ]


def _hint(name: str, choices: Sequence[str]) -> str:
    from gateway.policy.validate import did_you_mean

    return did_you_mean(name, [c for c in choices if c])


def mask_findings(
    name: str,
    query: Query,
    info: SqlInfo | None,
    unknown_role: Callable[[str], str | None],
    dialect: Dialect = GOOGLESQL,
) -> list[Finding]:
    """What is wrong with the masks of query ``name`` as written (``info``: its scanned SQL, or
    None when it did not scan); ``unknown_role`` gives the message for an unknown role name."""
    found: list[Finding] = []
    where: Where = ("queries", name, "mask")
    for column, mask in query.mask.items():
        for k, role in enumerate(mask.unless):
            if msg := unknown_role(role):
                found.append(((*where, column, "unless", k), msg))
        if mask.domain is not None and mask.with_ != "hash":
            found.append(((*where, column, "domain"), (
                f"domain names the key of a hash; this mask is with: {mask.with_}"
            )))
    if info is None or not query.mask:
        return found
    if info.kind == "dml" and not info.returning:
        for column in query.mask:
            found.append(((*where, column), (
                f"query {name} is DML without {_returning(dialect)}: it returns no rows, so there "
                f"is no "
                f"column {column} to mask"
            )))
        return found
    columns = result_columns(query.sql, dialect)
    if columns is None:  # SELECT *, or items the text alone does not name: Spanner decides
        return found
    for column in query.mask:
        if column not in columns:
            found.append(((*where, column), _not_returned(name, column, columns)))
    return found


def _not_returned(name: str, column: str, columns: Sequence[str]) -> str:
    shown = ", ".join(c or "(unnamed)" for c in columns) or "none"
    return (
        f"mask on column {column!r}, which query {name} does not return (its columns: {shown})"
        + _hint(column, columns)
    )


def column_findings(
    name: str, masks: dict[str, Mask], columns: Sequence[tuple[str, str]]
) -> list[Finding]:
    """What is wrong with the masks of query ``name`` given its analysed result ``columns``
    (name, Spanner type): a column it does not return, ``last4`` on a column that is no string."""
    found: list[Finding] = []
    types = dict(columns)
    names = [c for c, _ in columns]
    for column, mask in masks.items():
        where: Where = ("queries", name, "mask", column)
        if column not in types:
            found.append((where, _not_returned(name, column, names)))
        elif mask.with_ == "last4" and types[column] not in _LAST4_TYPES:
            found.append(((*where, "with"), (
                f"last4 keeps the last four characters of a STRING; column {column} of query "
                f"{name} is {types[column]}: use redact, null or hash"
            )))
    return found


def _case_twins(
    name: str, masks: dict[str, Mask], columns: Sequence[str]
) -> list[Finding]:
    found: list[Finding] = []
    for masked in masks:
        twins = [
            c for c in columns
            if c != masked and c not in masks and c.casefold() == masked.casefold()
        ]  # fmt: skip
        for twin in twins:
            found.append((("queries", name, "mask", masked), (
                f"query {name} also returns {twin}, which differs from the masked column "
                f"{masked} only in case: it is answered unmasked (rows are keyed by the exact "
                f"name); mask {twin} too, or rename it with AS"
            )))
    return found


def _returning(dialect: Dialect) -> str:
    return "RETURNING" if dialect == POSTGRESQL else "THEN RETURN"


def mask_warnings(
    name: str,
    query: Query,
    masks_by_domain: dict[str, list[str]],
    dialect: Dialect = GOOGLESQL,
) -> list[Finding]:
    """What the masks of query ``name`` may not mean, read from its text (see the module doc);
    ``masks_by_domain``: each hash domain's masks as ``query.column``."""
    if not query.mask:
        return []
    items = result_items(query.sql, dialect)
    if items is None:
        return []
    found = _case_twins(name, query.mask, [item.name for item in items])
    fed = set_from_params(query.sql, dialect)
    for column, mask in query.mask.items():
        if mask.with_ != "hash":
            continue
        item = next((i for i in items if i.name == column), None)
        if item is None:
            continue
        if not (item.has_param or (item.source is not None and item.source.upper() in fed)):
            continue
        if mask.domain is not None:
            others = [m for m in masks_by_domain.get(mask.domain, []) if m != f"{name}.{column}"]
            key = f"the key of domain {mask.domain}" + (
                f" (also hashing {', '.join(others)})" if others else ""
            )
        else:
            key = "this column's key"
        found.append((("queries", name, "mask", column, "with"), (
            f"query {name} hashes {column}, whose value it takes from a parameter: a caller "
            f"can have any value of its choice hashed with {key} and compare the hash with "
            "others made with it, testing guesses; the hash of what the caller sent hides "
            "nothing from that caller. Return the column unmasked, mask it with redact or null, "
            "or leave it out"
        )))
    return found


def hash_domains(policy: Policy) -> dict[str, list[str]]:
    """Each ``domain`` of the policy's hash masks: its masks as ``query.column``."""
    out: dict[str, list[str]] = {}
    for name, query in policy.queries.items():
        for column, mask in query.mask.items():
            if mask.with_ == "hash" and mask.domain is not None:
                out.setdefault(mask.domain, []).append(f"{name}.{column}")
    return out


def column_warnings(
    name: str, query: Query, columns: Sequence[tuple[str, str]], dialect: Dialect = GOOGLESQL
) -> list[Finding]:
    """The case rule of ``mask_warnings`` on the analysed ``columns`` (name, type), for a
    statement whose text does not name its columns (else the loader has warned already)."""
    if not query.mask or result_columns(query.sql, dialect) is not None:
        return []
    return _case_twins(name, query.mask, [c for c, _ in columns])
