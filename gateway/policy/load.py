"""Load a policy from YAML: one file, or every ``*.yaml``/``*.yml`` file directly in a folder.

The only I/O of the policy package is reading those files. Then, purely:

1. YAML is composed with ``yaml.SafeLoader`` (nodes keep their marks) and turned into plain data
   here, so that every document path has a source position. Mapping keys are always strings as
   written; timestamps stay strings (``min: 2026-01-01`` is the text a DATE wants); only the
   standard scalar tags are accepted; merge keys (``<<``) and duplicate keys are problems.
2. ``${VAR}`` in string values (never keys) is replaced from ``env``; ``${VAR:-default}`` takes the
   default when VAR is unset or empty; ``$${`` is a literal ``${``. The result is always a string.
3. A folder's files are merged: ``issuers``, ``identities``, ``roles`` and ``queries`` by name (a
   name in two files is one problem naming both places), ``routes`` concatenated in file order,
   ``version`` equal wherever given, any other key (``spanner``, ``audit``) in one file only.
   Files whose top level has ``cases:`` are policy tests and are skipped.
4. pydantic validates the shape (``Policy``), then ``validate_policy`` the cross-references; with
   shape errors, the cross-references are still checked on the entries that are valid.

Every problem found is raised at once as ``PolicyError``, sorted by file, line and column. A file
that cannot be read or parsed stops the load after its own problems (nothing else is trusted).
"""

from __future__ import annotations

import difflib
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, TypeAdapter, ValidationError
from yaml.constructor import SafeConstructor
from yaml.nodes import CollectionNode, MappingNode, Node, ScalarNode, SequenceNode

from gateway.errors import PolicyError, PolicyProblem
from gateway.policy.model import (
    _DURATION_RE,
    _NAME,
    _PARAM_NAME,
    Audit,
    Identity,
    Issuer,
    Policy,
    Query,
    RoleEntry,
    Route,
    SpannerTarget,
)
from gateway.policy.validate import Salvage, Where, did_you_mean, validate_policy

__all__ = ["LoadedPolicy", "Position", "dotted", "interpolate", "load_policy"]

Position = tuple[str, int | None, int | None]

_MAX_NODES = 200_000  # aliases can expand a small file exponentially
_NAMED = {"issuers": "issuer", "identities": "identity", "roles": "role", "queries": "query"}
_TAG = "tag:yaml.org,2002:"
_REF = re.compile(r"\$\$\{|\$\{([^}]*)\}|\$\{")
_VAR = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?$", re.DOTALL)


def dotted(where: Where) -> str:
    """``("routes", 2, "allow", 0)`` -> ``"routes[2].allow[0]"``."""
    out = ""
    for part in where:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z0-9_-]+", part):
            out += f".{part}" if out else part
        else:
            out += f"[{part!r}]"
    return out


def _show_position(pos: Position) -> str:
    file, line, column = pos
    return file + (f":{line}" if line else "") + (f":{column}" if line and column else "")


@dataclass(frozen=True)
class _SourceMap:
    """Document path -> source position, for every node (``nodes``) and mapping key (``keys``)."""

    root: Position
    nodes: Mapping[Where, Position]
    keys: Mapping[Where, Position]

    def at(self, where: Where) -> Position:
        for k in range(len(where), -1, -1):
            pos = self.nodes.get(where[:k])
            if pos is not None:
                return pos
        return self.root

    def key_at(self, where: Where) -> Position:
        return self.keys.get(where) or self.at(where)

    @classmethod
    def empty(cls) -> _SourceMap:
        return cls(("<policy>", None, None), {}, {})

    def problem(self, where: Where, message: str, *, key: bool = False) -> PolicyProblem:
        file, line, column = self.key_at(where) if key else self.at(where)
        return PolicyProblem(file, line, column, dotted(where), message)


@dataclass(frozen=True)
class LoadedPolicy:
    """A valid policy and where it came from.

    ``files`` are the files merged, in name order (policy test files excluded); ``sha256`` hashes
    their raw bytes, each prefixed by its name and length, so any edit of any file changes it;
    ``base_dir`` (absolute) is the policy file's folder, or the folder loaded: relative paths in the
    policy (audit files) are relative to it.
    """

    policy: Policy
    files: tuple[Path, ...]
    sha256: str
    base_dir: Path
    _source: _SourceMap = field(default_factory=_SourceMap.empty, repr=False, compare=False)

    def locate(self, where: Where) -> Position:
        """(file, 1-based line, 1-based column) of the node at ``where``, or of its nearest located
        ancestor. A mapping entry whose value is a block collection or empty is located at its key.
        """
        return self._source.at(where)


def interpolate(text: str, env: Mapping[str, str]) -> tuple[str, list[str]]:
    """Replace ``${VAR}``, ``${VAR:-default}`` and ``$${``; returns the text and the problems.

    With any problem the text is returned unchanged, so that nothing else is reported about it.
    """
    problems: list[str] = []

    def sub(m: re.Match[str]) -> str:
        token = m.group(0)
        if token == "$${":  # noqa: S105 - not a password
            return "${"
        if m.group(1) is None:
            problems.append("unterminated ${ (write $${ for a literal ${)")
            return token
        ref = _VAR.match(m.group(1))
        if ref is None:
            problems.append(f"invalid reference {token}: expected ${{NAME}} or ${{NAME:-default}}")
            return token
        name, default = ref.group(1), ref.group(2)
        value = env.get(name)
        if default is not None:
            return value if value else default
        if value is None:
            problems.append(f"environment variable {name} is not set")
            return token
        return value

    result = _REF.sub(sub, text)
    return (text, problems) if problems else (result, [])


class _TooLarge(Exception):
    pass


class _Builder:
    """Plain data from a composed YAML node, with a position per document path."""

    def __init__(self, label: str, env: Mapping[str, str]) -> None:
        self.label = label
        self.env = env
        self.problems: list[PolicyProblem] = []
        self.nodes: dict[Where, Position] = {}
        self.keys: dict[Where, Position] = {}
        self._constructor = SafeConstructor()
        self._budget = _MAX_NODES
        self._open: set[int] = set()

    def pos(self, mark: yaml.Mark) -> Position:
        return (self.label, mark.line + 1, mark.column + 1)

    def problem(self, mark: yaml.Mark, where: Where, message: str) -> None:
        self.problems.append(PolicyProblem(*self.pos(mark), dotted(where), message))

    def build(self, node: Node, where: Where, key_mark: yaml.Mark | None = None) -> Any:
        self._budget -= 1
        if self._budget < 0:
            raise _TooLarge
        block = isinstance(node, CollectionNode) and not node.flow_style
        empty = isinstance(node, ScalarNode) and node.value == "" and not node.style
        mark = key_mark if key_mark is not None and (block or empty) else node.start_mark
        self.nodes[where] = self.pos(mark)
        if isinstance(node, ScalarNode):
            return self.scalar(node, where)
        if id(node) in self._open:
            self.problem(node.start_mark, where, "a recursive alias")
            return None
        self._open.add(id(node))
        try:
            if isinstance(node, SequenceNode):
                return [self.build(item, (*where, i)) for i, item in enumerate(node.value)]
            assert isinstance(node, MappingNode)
            return self.mapping(node, where)
        finally:
            self._open.discard(id(node))

    def mapping(self, node: MappingNode, where: Where) -> dict[str, Any]:
        out: dict[str, Any] = {}
        first: dict[str, yaml.Mark] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode):
                self.problem(key_node.start_mark, where, "a mapping key must be a plain name")
                continue
            if key_node.tag == _TAG + "merge":
                self.problem(key_node.start_mark, where, "YAML merge keys (<<) are not supported")
                continue
            key = key_node.value
            child = (*where, key)
            if key in first:
                line = first[key].line + 1
                message = f"duplicate key '{key}' (first defined at line {line})"
                self.problem(key_node.start_mark, child, message)
                continue
            first[key] = key_node.start_mark
            self.keys[child] = self.pos(key_node.start_mark)
            out[key] = self.build(value_node, child, key_node.start_mark)
        return out

    def scalar(self, node: ScalarNode, where: Where) -> Any:
        tag = node.tag
        if tag == _TAG + "str":
            value, problems = interpolate(node.value, self.env)
            for message in problems:
                self.problem(node.start_mark, where, message)
            return value
        if tag == _TAG + "timestamp":
            return node.value
        if tag in (_TAG + "null", _TAG + "bool", _TAG + "int", _TAG + "float"):
            try:
                return self._constructor.construct_object(node, deep=True)
            except (yaml.YAMLError, ValueError) as exc:
                self.problem(node.start_mark, where, f"invalid value {node.value!r}: {exc}")
                return node.value
        shown = tag.replace(_TAG, "!!", 1)
        self.problem(node.start_mark, where, f"unsupported YAML tag {shown}")
        return node.value


@dataclass(frozen=True)
class _Doc:
    path: Path
    name: str  # relative to the folder (the file's name), for the hash
    raw: bytes
    data: dict[str, Any]
    nodes: dict[Where, Position]
    keys: dict[Where, Position]


def _parse(path: Path, name: str, raw: bytes, env: Mapping[str, str],
           problems: list[PolicyProblem]) -> _Doc | None:
    label = str(path)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        problems.append(PolicyProblem(label, line, None, "", "the file is not valid UTF-8"))
        return None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        message = f"invalid YAML: {exc.problem or exc.context}"
        if exc.context and exc.context_mark and exc.problem:
            message += f" ({exc.context} at line {exc.context_mark.line + 1})"
        if mark is None:
            problems.append(PolicyProblem(label, None, None, "", message))
        else:
            problems.append(PolicyProblem(label, mark.line + 1, mark.column + 1, "", message))
        return None
    except yaml.YAMLError as exc:  # ReaderError: a character YAML does not allow
        problems.append(PolicyProblem(label, None, None, "", f"invalid YAML: {exc}"))
        return None
    if not isinstance(root, MappingNode):
        found = "a list" if isinstance(root, SequenceNode) else "a scalar" if root else "nothing"
        line, column = (root.start_mark.line + 1, root.start_mark.column + 1) if root else (1, 1)
        message = f"the top level must be a mapping (version:, spanner:, …), found {found}"
        problems.append(PolicyProblem(label, line, column, "", message))
        return None
    builder = _Builder(label, env)
    try:
        data = builder.mapping(root, ())
    except _TooLarge:
        problems.append(PolicyProblem(label, None, None, "", "too many nodes (alias expansion)"))
        return None
    builder.nodes[()] = builder.pos(root.start_mark)
    problems.extend(builder.problems)
    return _Doc(path, name, raw, data, builder.nodes, builder.keys)


def _read(path: Path, env: Mapping[str, str], problems: list[PolicyProblem]) -> list[_Doc] | None:
    """The policy documents at ``path`` (sorted by name), or None when one could not be parsed."""
    folder = path.is_dir()
    if folder:
        files = sorted(
            (p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file()),
            key=lambda p: p.name,
        )
    elif path.is_file():
        files = [path]
    else:
        problems.append(PolicyProblem(str(path), None, None, "", "no such file or folder"))
        return None
    docs: list[_Doc] = []
    ok = True
    for file in files:
        try:
            raw = file.read_bytes()
        except OSError as exc:
            message = f"cannot read: {exc.strerror}"
            problems.append(PolicyProblem(str(file), None, None, "", message))
            ok = False
            continue
        found: list[PolicyProblem] = []
        doc = _parse(file, file.name, raw, env, found)
        if folder and doc is not None and "cases" in doc.data:
            continue  # a policy test file, not part of the policy
        problems.extend(found)
        if doc is None:
            ok = False
        else:
            docs.append(doc)
    if ok and not docs:
        problems.append(PolicyProblem(str(path), None, None, "", "no policy files (*.yaml, *.yml)"))
        ok = False
    return docs if ok else None


def _merge(
    path: Path, docs: list[_Doc], problems: list[PolicyProblem]
) -> tuple[dict[str, Any], _SourceMap]:
    """One document from several; conflicts are reported at the later file, naming both."""
    if len(docs) == 1:
        doc = docs[0]
        return doc.data, _SourceMap(doc.nodes[()], doc.nodes, doc.keys)
    merged: dict[str, Any] = {}
    nodes: dict[Where, Position] = {}
    keys: dict[Where, Position] = {}

    def take(doc: _Doc, prefix: Where, shift: int = 0) -> None:
        n = len(prefix)
        for source, target in ((doc.nodes, nodes), (doc.keys, keys)):
            for where, pos in source.items():
                if where[:n] == prefix:
                    step = where[n] if len(where) > n else None
                    if shift and isinstance(step, int):
                        where = (*prefix, step + shift, *where[n + 1 :])
                    target.setdefault(where, pos)

    def clash(doc: _Doc, where: Where, what: str) -> None:
        first, second = keys[where], doc.keys[where]
        problems.append(PolicyProblem(
            *second, dotted(where),
            f"{what} is defined twice: at {_show_position(first)} and {_show_position(second)}",
        ))

    for doc in docs:
        for key, value in doc.data.items():
            current = merged.get(key)
            if key == "routes" and isinstance(value, list) and isinstance(current, list | None):
                routes = merged[key] = current or []  # an empty `routes:` in another file is none
                take(doc, (key,), shift=len(routes))
                routes.extend(value)
            elif key in _NAMED and isinstance(value, dict) and isinstance(current, dict | None):
                section = merged[key] = current or {}
                # The section's own position is where it first appears.
                nodes.setdefault((key,), doc.nodes[(key,)])
                keys.setdefault((key,), doc.keys[(key,)])
                for name, entry in value.items():
                    if name in section:
                        clash(doc, (key, name), f"{_NAMED[key]} '{name}'")
                    else:
                        section[name] = entry
                        take(doc, (key, name))
            elif key in merged:
                if key != "version":
                    clash(doc, (key,), f"'{key}'")
                elif type(current) is not type(value) or current != value:
                    problems.append(PolicyProblem(
                        *doc.nodes[(key,)], "version",
                        f"version {value!r} differs from version {current!r} at "
                        f"{_show_position(nodes[(key,)])}; all files must agree",
                    ))
            else:
                merged[key] = value
                take(doc, (key,))
    return merged, _SourceMap((str(path), None, None), nodes, keys)


_SECTIONS: dict[str, TypeAdapter[Any]] = {
    "issuers": TypeAdapter(Issuer),
    "identities": TypeAdapter(Identity),
    "roles": TypeAdapter(list[RoleEntry]),
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
    policy = Policy.model_construct(  # never served: only cross-checked, spanner unused
        version=1,
        spanner=SpannerTarget.model_construct(project="", instance="", database=""),
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


def _digest(docs: list[_Doc]) -> str:
    h = hashlib.sha256()
    for doc in sorted(docs, key=lambda d: d.name):
        h.update(f"{doc.name}\0{len(doc.raw)}\0".encode())
        h.update(doc.raw)
    return h.hexdigest()


def _sorted(problems: list[PolicyProblem]) -> list[PolicyProblem]:
    unique = dict.fromkeys(problems)
    return sorted(unique, key=lambda p: (p.file, p.line or 0, p.column or 0, p.where, p.message))


def load_policy(path: Path, *, env: Mapping[str, str]) -> LoadedPolicy:
    """Load and validate the policy at ``path`` (a file or a folder); raises PolicyError with
    every problem found. ``env`` supplies ``${VAR}`` values (never read from os.environ here)."""
    problems: list[PolicyProblem] = []
    docs = _read(path, env, problems)
    if docs is None:
        raise PolicyError(_sorted(problems))
    data, source = _merge(path, docs, problems)
    try:
        policy = Policy.model_validate(data, by_alias=True, by_name=False)
    except ValidationError as exc:
        problems.extend(_shape_problems(exc, data, source))
        partial, salvage = _salvage(data)
        findings = validate_policy(partial, salvage=salvage)
    else:
        findings = validate_policy(policy)
    problems.extend(source.problem(where, message) for where, message in findings)
    if problems:
        raise PolicyError(_sorted(problems))
    return LoadedPolicy(
        policy=policy,
        files=tuple(doc.path for doc in docs),
        sha256=_digest(docs),
        base_dir=(path if path.is_dir() else path.parent).absolute(),
        _source=source,
    )


# --- pydantic errors -> problems ---------------------------------------------------------------
# A pydantic ``loc`` mixes document steps with its own tags (a union member such as ``str`` or
# ``function-after[_one(), Staleness]``, a discriminator value such as ``file``, ``[key]``). Tags
# are told apart by walking the data. For a union, branches that only say "wrong type" at the
# union itself are dropped when another branch got further; if none did, they become one problem
# ("expected a string or a list").

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
    _PARAM_NAME: "a parameter name starts with a letter or _ and holds letters, digits and _",
    "^/": "a path template must start with /",
}


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
    return _Err(loc, tuple(tags), tuple(where), error["type"], error["msg"],
                error.get("ctx") or {}, error.get("input"))


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
        out.append(_Err(first.loc[:depth], first.tag[:depth], first.where, "union", "",
                        {"expected": _one_of(list(dict.fromkeys(wanted)))}, first.input))
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


def _field_names(where: Where) -> list[str]:
    """The keys the model allows at ``where`` (every model of a union), by alias."""
    current: list[Any] = [Policy]
    for part in where:
        following: list[Any] = []
        for tp in (t for c in current for t in _unwrap(c)):
            origin = get_origin(tp)
            if isinstance(tp, type) and issubclass(tp, BaseModel) and isinstance(part, str):
                following.extend(
                    f.annotation for n, f in tp.model_fields.items() if (f.alias or n) == part
                )
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


def _message(err: _Err) -> _Said:
    """What to say about one pruned error, and where."""
    where, ctx = err.where, err.ctx
    if err.type == "extra_forbidden":
        key = str(err.loc[-1])
        allowed = _field_names(where[:-1])
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
        rule = _PATTERNS.get(str(ctx.get("pattern")), err.msg)
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
        text = _PATTERNS.get(str(ctx.get("pattern")), f"should match {ctx.get('pattern')}")
        return _Said(where, f"{_show(err.input)}: {text}")
    if err.type in ("too_short", "string_too_short") and ctx.get("min_length") == 1:
        return _Said(where, "must not be empty")
    if err.type in ("value_error", "assertion_error"):
        text = err.msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")
        return _Said(where, text)
    return _Said(where, f"{err.msg.removeprefix('Input ')}, got {_show(err.input)}")


def _shape_problems(exc: ValidationError, data: Any, source: _SourceMap) -> list[PolicyProblem]:
    said = [_message(e) for e in _prune([_classify(e, data) for e in exc.errors()])]
    # "unknown key 'alow'; did you mean 'allow'?" already explains the missing 'allow'.
    meant = {s.meant for s in said if s.meant is not None}
    return [
        source.problem(s.where, s.message, key=s.at_key)
        for s in said
        if s.missing is None or s.missing not in meant
    ]
