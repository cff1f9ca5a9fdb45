"""Policy source text -> plain data with a source position for every document path.

The only I/O of the policy package is reading files, here. Then, purely:

1. YAML is composed with ``yaml.SafeLoader`` (nodes keep their marks) and turned into plain data
   here, so that every document path has a source position. Mapping keys are always strings as
   written; timestamps stay strings (``min: 2026-01-01`` is the text a DATE wants); only the
   standard scalar tags are accepted; merge keys (``<<``) and duplicate keys are problems.
2. ``${VAR}`` in string values (never keys) is replaced from ``env``; ``${VAR:-default}`` takes the
   default when VAR is unset or empty; ``$${`` is a literal ``${``. The result is always a string.
   An unset VAR (without a default) is a problem, except with ``placeholders=True`` (the offline
   tools: check, test, explain, diff, which must run without real secrets): the text ``${VAR}``
   then stays as it is, standing in for the value, and a note (``Document.notes``) says so.
   The values in which such a placeholder or a default stood in are ``Document.stand_ins``.
3. A folder's files are merged: ``issuers``, ``identities``, ``roles`` and ``queries`` by name (a
   name in two files is one problem naming both places), ``routes`` concatenated in file order,
   ``version`` equal wherever given, any other key (``spanner``, ``audit``) in one file only.
   Files whose top level has ``cases:`` are policy tests and are skipped, and so are dotfiles
   (``._policy.yaml``: macOS metadata, editors' temporary files; ``policy_files``).

Problems are appended to the caller's list as ``PolicyProblem``; a file that cannot be read or
parsed yields no document (nothing else in it is trusted).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import CollectionNode, MappingNode, Node, ScalarNode, SequenceNode

from gateway.errors import PolicyProblem
from gateway.policy.validate import Where

__all__ = [
    "Document",
    "Position",
    "SourceMap",
    "digest",
    "dotted",
    "fingerprint",
    "interpolate",
    "merge_documents",
    "parse_document",
    "policy_files",
    "read_documents",
    "show_position",
]

Position = tuple[str, int | None, int | None]

_MAX_NODES = 200_000  # aliases can expand a small file exponentially
_NAMED = {"issuers": "issuer", "identities": "identity", "roles": "role", "queries": "query"}
_TAG = "tag:yaml.org,2002:"
_REF = re.compile(r"\$\$\{|\$\{([^}]*)\}|\$\{")
_VAR = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?$", re.DOTALL)



# PyYAML's messages for a line whose indentation does not fit the mapping around it.
_MAPPING_VALUES = "mapping values are not allowed here"
_INDENT_PROBLEMS = frozenset(
    {
        _MAPPING_VALUES,
        "expected <block end>, but found '<block mapping start>'",
        "expected <block end>, but found '<block sequence start>'",
        "found character '\\t' that cannot start any token",
    }
)

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


def show_position(pos: Position) -> str:
    file, line, column = pos
    return file + (f":{line}" if line else "") + (f":{column}" if line and column else "")


@dataclass(frozen=True)
class SourceMap:
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
    def empty(cls) -> SourceMap:
        return cls(("<policy>", None, None), {}, {})

    def problem(self, where: Where, message: str, *, key: bool = False) -> PolicyProblem:
        file, line, column = self.key_at(where) if key else self.at(where)
        return PolicyProblem(file, line, column, dotted(where), message)


def interpolate(
    text: str,
    env: Mapping[str, str],
    *,
    unset: list[str] | None = None,
    defaulted: list[str] | None = None,
) -> tuple[str, list[str]]:
    """Replace ``${VAR}``, ``${VAR:-default}`` and ``$${``; returns the text and the problems.

    With any problem the text is returned unchanged, so that nothing else is reported about it.
    When ``unset`` is a list, a VAR that is not set is no problem: ``${VAR}`` is kept as written
    (a placeholder) and VAR is appended to ``unset``. When ``defaulted`` is a list, each VAR
    whose default stood in (unset or empty) is appended to it.
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
            if not value and defaulted is not None:
                defaulted.append(name)
            return value if value else default
        if value is None:
            if unset is not None:
                unset.append(name)
            else:
                problems.append(f"environment variable {name} is not set")
            return token
        return value

    result = _REF.sub(sub, text)
    return (text, problems) if problems else (result, [])


class _TooLarge(Exception):
    pass


class _Builder:
    """Plain data from a composed YAML node, with a position per document path."""

    def __init__(self, label: str, env: Mapping[str, str], placeholders: bool) -> None:
        self.label = label
        self.env = env
        self.placeholders = placeholders
        self.problems: list[PolicyProblem] = []
        self.notes: list[PolicyProblem] = []
        self.stand_ins: set[Where] = set()
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
            unset: list[str] | None = [] if self.placeholders else None
            defaulted: list[str] = []
            value, problems = interpolate(node.value, self.env, unset=unset, defaulted=defaulted)
            if unset or defaulted:
                self.stand_ins.add(where)
            for message in problems:
                self.problem(node.start_mark, where, message)
            for name in dict.fromkeys(unset or ()):
                note = (
                    f"environment variable {name} is not set: the text ${{{name}}} stands in for "
                    "its value (the policy tools only; spangate serve refuses an unset variable)"
                )
                self.notes.append(PolicyProblem(*self.pos(node.start_mark), dotted(where), note))
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
class Document:
    path: Path
    name: str  # relative to the folder (the file's name), for the hash
    raw: bytes
    data: dict[str, Any]
    nodes: dict[Where, Position]
    keys: dict[Where, Position]
    notes: tuple[PolicyProblem, ...] = ()  # unset variables with placeholders=True
    # the values in which an unset variable (placeholders=True) or a default stood in
    stand_ins: frozenset[Where] = frozenset()


def parse_document(
    path: Path,
    name: str,
    raw: bytes,
    env: Mapping[str, str],
    problems: list[PolicyProblem],
    *,
    placeholders: bool = False,
) -> Document | None:
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
        if exc.problem in _INDENT_PROBLEMS:  # PyYAML's words for a key indented off its siblings
            message += (
                ": is this line indented differently from the keys beside it? Keys of one "
                "mapping start in the same column (spaces, never tabs)"
            )
            if exc.problem == _MAPPING_VALUES:
                message += "; or does a value hold ': ' unquoted (quote the value)?"
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
    builder = _Builder(label, env, placeholders)
    try:
        data = builder.mapping(root, ())
    except _TooLarge:
        problems.append(PolicyProblem(label, None, None, "", "too many nodes (alias expansion)"))
        return None
    builder.nodes[()] = builder.pos(root.start_mark)
    problems.extend(builder.problems)
    notes = tuple(builder.notes)
    stand_ins = frozenset(builder.stand_ins)
    return Document(path, name, raw, data, builder.nodes, builder.keys, notes, stand_ins)


def policy_files(path: Path) -> list[Path] | None:
    """The files a policy at ``path`` is read from: the file itself, or a folder's ``*.yaml`` and
    ``*.yml`` files by name, skipping dotfiles (``._policy.yaml``, which macOS and some editors
    leave beside a file, and Kubernetes' ``..data``); None when ``path`` is neither."""
    if path.is_dir():
        return sorted(
            (
                p
                for p in path.iterdir()
                if p.suffix in (".yaml", ".yml") and not p.name.startswith(".") and p.is_file()
            ),
            key=lambda p: p.name,
        )
    if path.is_file():
        return [path]
    return None


def fingerprint(path: Path) -> str | None:
    """SHA-256 over the names and bytes of ``policy_files(path)`` (policy test files included),
    without parsing: what the policy watcher's poll compares to notice a change. None when the
    files cannot be listed or read (the reload that follows says why)."""
    files = policy_files(path)
    if files is None:
        return None
    h = hashlib.sha256()
    try:
        for file in files:
            raw = file.read_bytes()
            h.update(f"{file.name}\0{len(raw)}\0".encode())
            h.update(raw)
    except OSError:
        return None
    return h.hexdigest()


def read_documents(
    path: Path,
    env: Mapping[str, str],
    problems: list[PolicyProblem],
    *,
    placeholders: bool = False,
) -> list[Document] | None:
    """The policy documents at ``path`` (sorted by name), or None when one could not be parsed."""
    folder = path.is_dir()
    files = policy_files(path)
    if files is None:
        problems.append(PolicyProblem(str(path), None, None, "", "no such file or folder"))
        return None
    docs: list[Document] = []
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
        doc = parse_document(file, file.name, raw, env, found, placeholders=placeholders)
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


def merge_documents(
    path: Path, docs: list[Document], problems: list[PolicyProblem]
) -> tuple[dict[str, Any], SourceMap]:
    """One document from several; conflicts are reported at the later file, naming both."""
    if len(docs) == 1:
        doc = docs[0]
        return doc.data, SourceMap(doc.nodes[()], doc.nodes, doc.keys)
    merged: dict[str, Any] = {}
    nodes: dict[Where, Position] = {}
    keys: dict[Where, Position] = {}

    def take(doc: Document, prefix: Where, shift: int = 0) -> None:
        n = len(prefix)
        for source, target in ((doc.nodes, nodes), (doc.keys, keys)):
            for where, pos in source.items():
                if where[:n] == prefix:
                    step = where[n] if len(where) > n else None
                    if shift and isinstance(step, int):
                        where = (*prefix, step + shift, *where[n + 1 :])
                    target.setdefault(where, pos)

    def clash(doc: Document, where: Where, what: str) -> None:
        first, second = keys[where], doc.keys[where]
        problems.append(
            PolicyProblem(
                *second,
                dotted(where),
                f"{what} is defined twice: at {show_position(first)} and {show_position(second)}",
            )
        )

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
                    problems.append(
                        PolicyProblem(
                            *doc.nodes[(key,)],
                            "version",
                            f"version {value!r} differs from version {current!r} at "
                            f"{show_position(nodes[(key,)])}; all files must agree",
                        )
                    )
            else:
                merged[key] = value
                take(doc, (key,))
    return merged, SourceMap((str(path), None, None), nodes, keys)


def digest(docs: list[Document]) -> str:
    h = hashlib.sha256()
    for doc in sorted(docs, key=lambda d: d.name):
        h.update(f"{doc.name}\0{len(doc.raw)}\0".encode())
        h.update(doc.raw)
    return h.hexdigest()
