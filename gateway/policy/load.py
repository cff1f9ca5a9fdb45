"""Load a policy: one YAML file, or every ``*.yaml``/``*.yml`` file directly in a folder.

``source.py`` reads and parses the files (positions, ``${VAR}`` interpolation, folder merge);
then pydantic validates the shape (``Policy``; ``shape.py`` phrases its errors), then
``validate_policy`` the cross-references; with shape errors, the cross-references are still
checked on the entries that are valid.

Every problem found is raised at once as ``PolicyError``, sorted by file, line and column. A file
that cannot be read or parsed stops the load after its own problems (nothing else is trusted).

A policy that loads may still carry warnings (``LoadedPolicy.warnings``): ``policy_warnings`` of
``validate.py``, and with ``placeholders=True`` the notes on unset ``${VAR}``s (``source.py``). The
CLI prints them as ``file:line:column: warning: ...``; the server logs them at start and reload.

``compile_policy(load_policy(path, env=...))`` is the whole path from files to a servable policy:
pure apart from reading the files, with no state kept between calls, so a reload runs it and swaps
the result in (or keeps the old policy when it raises).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from gateway.errors import PolicyError, PolicyProblem
from gateway.policy.model import (
    Audit,
    Identity,
    Issuer,
    Policy,
    Query,
    RoleDef,
    Route,
    SpannerTarget,
)
from gateway.policy.shape import shape_problems
from gateway.policy.source import (
    Document,
    Position,
    SourceMap,
    digest,
    dotted,
    interpolate,
    merge_documents,
    parse_document,
    read_documents,
)
from gateway.policy.sqltoken import DIALECTS, GOOGLESQL
from gateway.policy.validate import Salvage, Where, policy_warnings, validate_policy

__all__ = [
    "LoadedPolicy",
    "PolicySource",
    "Position",
    "dotted",
    "interpolate",
    "load_policy",
    "load_policy_data",
    "load_policy_sources",
]

PolicySource = tuple[Path, str, bytes]  # a policy file's path, name (for the hash) and bytes


@dataclass(frozen=True)
class LoadedPolicy:
    """A valid policy and where it came from.

    ``files`` are the files merged, in name order (policy test files excluded); ``sha256`` hashes
    their raw bytes, each prefixed by its name and length, so any edit of any file changes it;
    ``base_dir`` (absolute) is the policy file's folder, or the folder loaded: relative paths in the
    policy (audit files) are relative to it. ``warnings``: located, sorted, none of them stops the
    load.
    """

    policy: Policy
    files: tuple[Path, ...]
    sha256: str
    base_dir: Path
    warnings: tuple[PolicyProblem, ...] = ()
    # the values (document paths) in which an unset ``${VAR}`` (placeholders=True) or a
    # ``${VAR:-default}``'s default stood in: not the value a deployment would load
    stand_ins: frozenset[Where] = frozenset()
    _source: SourceMap = field(default_factory=SourceMap.empty, repr=False, compare=False)
    # (file, name, bytes) of each file merged, as read: what ``load_policy_sources`` loads again
    sources: tuple[PolicySource, ...] = field(default=(), repr=False, compare=False)

    def locate(self, where: Where) -> Position:
        """(file, 1-based line, 1-based column) of the node at ``where``, or of its nearest located
        ancestor. A mapping entry whose value is a block collection or empty is located at its key.
        """
        return self._source.at(where)


_SECTIONS: dict[str, TypeAdapter[Any]] = {
    "issuers": TypeAdapter(Issuer),
    "identities": TypeAdapter(Identity),
    "roles": TypeAdapter(RoleDef),
    "queries": TypeAdapter(Query),
}


def _valid(adapter: TypeAdapter[Any], value: Any) -> Any:
    try:
        return adapter.validate_python(value, by_alias=True, by_name=False)
    except ValidationError:
        return None


def _salvage(data: dict[str, Any]) -> tuple[Policy, Salvage]:
    """The valid entries of a policy with shape errors, for the cross-reference checks."""
    kept: dict[str, dict[str, Any]] = {}
    broken: dict[str, frozenset[str] | None] = {}
    for key, adapter in _SECTIONS.items():
        raw = data.get(key, {})
        if not isinstance(raw, dict):
            kept[key], broken[key] = {}, None
            continue
        good = {name: v for name, entry in raw.items() if (v := _valid(adapter, entry)) is not None}
        kept[key], broken[key] = good, frozenset(set(raw) - set(good))
    routes, index, routed = [], [], set()
    raw_routes = data.get("routes", [])
    if isinstance(raw_routes, list):
        for i, entry in enumerate(raw_routes):
            route = _valid(TypeAdapter(Route), entry)
            if route is not None:
                routes.append(route)
                index.append(i)
            elif isinstance(entry, dict) and isinstance(entry.get("query"), str):
                routed.add(entry["query"])
    else:
        broken["routes"] = None
    redactable: set[str] | None = set()
    for name in broken["queries"] or ():
        entry = data["queries"][name]
        params = entry.get("params") if isinstance(entry, dict) else None
        if redactable is not None and isinstance(params, dict):
            redactable |= set(params)
        else:
            redactable = None
    if broken["queries"] is None:
        redactable = None
    raw_audit = data.get("audit", {})
    audit = _valid(TypeAdapter(Audit), raw_audit)
    if audit is None:
        raw_redact = raw_audit.get("redact") if isinstance(raw_audit, dict) else None
        redact: list[str] = []
        if isinstance(raw_redact, list) and all(isinstance(r, str) for r in raw_redact):
            redact = raw_redact
        audit = Audit.model_construct(redact=redact)
    raw_spanner = data.get("spanner")
    dialect = raw_spanner.get("dialect") if isinstance(raw_spanner, dict) else None
    policy = Policy.model_construct(  # never served: only cross-checked, spanner unused
        version=1,
        spanner=SpannerTarget.model_construct(  # its dialect reads the statements
            project="",
            instance="",
            database="",
            dialect=dialect if dialect in DIALECTS else GOOGLESQL,
        ),
        issuers=kept["issuers"],
        identities=kept["identities"],
        roles=kept["roles"],
        queries=kept["queries"],
        routes=routes,
        audit=audit,
    )
    salvage = Salvage(
        route_index=tuple(index),
        broken=broken,
        routed=frozenset(routed),
        redactable=None if redactable is None else frozenset(redactable),
    )
    return policy, salvage


def _sorted(problems: list[PolicyProblem]) -> list[PolicyProblem]:
    unique = dict.fromkeys(problems)
    return sorted(unique, key=lambda p: (p.file, p.line or 0, p.column or 0, p.where, p.message))


def load_policy(
    path: Path, *, env: Mapping[str, str], placeholders: bool = False
) -> LoadedPolicy:
    """Load and validate the policy at ``path`` (a file or a folder); raises PolicyError with
    every problem found. ``env`` supplies ``${VAR}`` values (never read from os.environ here).
    ``placeholders=True`` (the offline policy tools, never the server): an unset ``${VAR}`` stays
    as written, with a warning, instead of being a problem."""
    problems: list[PolicyProblem] = []
    docs = read_documents(path, env, problems, placeholders=placeholders)
    base_dir = (path if path.is_dir() else path.parent).absolute()
    return _loaded(path, docs, problems, base_dir)


def load_policy_sources(
    path: Path, sources: Sequence[PolicySource], *, base_dir: Path, env: Mapping[str, str]
) -> LoadedPolicy:
    """Load and validate a policy from the bytes of its files as they were when it was loaded
    before (``LoadedPolicy.sources``), not from the files as they are now; ``path`` and
    ``base_dir`` as then. The same policy, problems and ``sha256`` as ``load_policy`` gave for
    those bytes (a replacement worker loads the policy the gateway accepted: ``gateway.accepted``)."""
    problems: list[PolicyProblem] = []
    docs: list[Document] = []
    for file, name, raw in sources:
        doc = parse_document(file, name, raw, env, problems)
        if doc is None:
            return _loaded(path, None, problems, base_dir)  # raises
        docs.append(doc)
    return _loaded(path, docs, problems, base_dir)


def _loaded(
    path: Path, docs: list[Document] | None, problems: list[PolicyProblem], base_dir: Path
) -> LoadedPolicy:
    if docs is None:
        raise PolicyError(_sorted(problems))
    data, source = merge_documents(path, docs, problems)
    policy = _validated(data, source, problems)
    if problems or policy is None:
        raise PolicyError(_sorted(problems))
    notes = [note for doc in docs for note in doc.notes]
    return LoadedPolicy(
        policy=policy,
        files=tuple(doc.path for doc in docs),
        sha256=digest(docs),
        base_dir=base_dir,
        warnings=_warnings(policy, source, notes),
        stand_ins=frozenset(where for doc in docs for where in doc.stand_ins),
        _source=source,
        sources=tuple((doc.path, doc.name, doc.raw) for doc in docs),
    )


def _warnings(
    policy: Policy, source: SourceMap, notes: list[PolicyProblem]
) -> tuple[PolicyProblem, ...]:
    found = [source.problem(where, message) for where, message in policy_warnings(policy)]
    return tuple(_sorted(notes + found))


def load_policy_data(
    data: Mapping[str, Any], *, base_dir: Path, label: str = "<policy>"
) -> LoadedPolicy:
    """Validate a policy given as plain data (generated policies, tools, benchmarks) exactly as
    ``load_policy`` validates a file; problems carry ``label`` and no line. ``sha256`` hashes the
    canonical JSON of ``data``."""
    problems: list[PolicyProblem] = []
    document = dict(data)
    source = SourceMap((label, None, None), {}, {})
    policy = _validated(document, source, problems)
    if problems or policy is None:
        raise PolicyError(_sorted(problems))
    canonical = json.dumps(document, sort_keys=True, default=str, separators=(",", ":"))
    return LoadedPolicy(
        policy=policy,
        files=(),
        sha256=hashlib.sha256(canonical.encode()).hexdigest(),
        base_dir=base_dir.absolute(),
        warnings=_warnings(policy, source, []),
        _source=source,
    )


def _validated(
    data: dict[str, Any], source: SourceMap, problems: list[PolicyProblem]
) -> Policy | None:
    """The policy when its shape is valid (else None); every problem goes to ``problems``."""
    policy: Policy | None = None
    try:
        policy = Policy.model_validate(data, by_alias=True, by_name=False)
    except ValidationError as exc:
        problems.extend(shape_problems(exc, data, source))
        partial, salvage = _salvage(data)
        findings = validate_policy(partial, salvage=salvage)
    else:
        findings = validate_policy(policy)
    problems.extend(source.problem(where, message) for where, message in findings)
    return policy
