"""What a ``matches`` pattern spells out literally. Pure.

The pinning rule (``pinning.py``) asks whether a pattern names the owner of a token (a GitHub
owner, a Google Cloud project): only text the pattern spells out letter by letter does.
``branches(pattern)`` splits a pattern into its top-level alternatives, each as a list of atoms:
a literal character (a class of one member, ``[.]``, included), or ``None`` for anything that
can match more than one text (``.``, a class, a group, an escape such as ``\\d``, an atom made
optional or repeatable by ``*``, ``?``, ``{``).
``a+`` is ``a`` then ``None``. When a pattern uses what this reader does not follow (``\\Q``),
it answers None: nothing is known, so nothing is pinned. Conservative by design: a pattern it
reads as open may in fact be closed (``a{2}``), never the reverse.
"""

from __future__ import annotations

__all__ = ["Atoms", "branches", "literal_prefix", "literal_suffix"]

Atoms = list[str | None]

_META = frozenset(".^$|()[]{}*+?\\")


def _close_class(text: str, i: int) -> int | None:
    """The index after the ``]`` closing the class that opens at ``text[i]`` (``[``)."""
    i += 1
    if i < len(text) and text[i] == "^":
        i += 1
    if i < len(text) and text[i] == "]":  # a leading ] is a member
        i += 1
    while i < len(text):
        if text[i] == "\\":
            i += 2
        elif text.startswith("[:", i):
            end = text.find(":]", i + 2)
            i = end + 2 if end >= 0 else i + 1
        elif text[i] == "]":
            return i + 1
        else:
            i += 1
    return None


def _close_group(text: str, i: int) -> int | None:
    """The index after the ``)`` closing the group that opens at ``text[i]`` (``(``)."""
    depth = 0
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "[":
            end = _close_class(text, i)
            if end is None:
                return None
            i = end
            continue
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return None


def _split(text: str) -> list[str] | None:
    """The top-level alternatives of ``text``."""
    parts: list[str] = []
    start = i = 0
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
        elif c == "[":
            end = _close_class(text, i)
            if end is None:
                return None
            i = end
        elif c == "(":
            end = _close_group(text, i)
            if end is None:
                return None
            i = end
        elif c == "|":
            parts.append(text[start:i])
            start = i = i + 1
        else:
            i += 1
    parts.append(text[start:])
    return parts


def _repetition(text: str, i: int) -> int | None:
    """The index after a ``{n}``, ``{n,}`` or ``{n,m}`` at ``text[i]``, None if it is none (RE2
    then reads ``{`` as a literal)."""
    end = text.find("}", i)
    if end < 0:
        return None
    inside = text[i + 1 : end]
    low, _, high = inside.partition(",")
    if low.isdigit() and (high == "" or high.isdigit()):
        return end + 1
    return None


def _one_member(inside: str) -> str | None:
    """The character a class of one member stands for (``[.]``, ``[\\.]``), else None."""
    if len(inside) == 1 and inside not in "^\\":
        return inside
    if len(inside) == 2 and inside[0] == "\\" and not inside[1].isalnum():
        return inside[1]
    return None


def _atoms(text: str) -> Atoms | None:
    atoms: Atoms = []
    end: int | None
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\":
            if i + 1 >= len(text):
                return None
            nxt = text[i + 1]
            if nxt.isalnum():
                if nxt in "QE":
                    return None  # \Q...\E quoting: not followed here
                i += 2
                if nxt in "pPx" and i < len(text) and text[i] == "{":
                    brace = text.find("}", i)
                    if brace < 0:
                        return None
                    i = brace + 1
                elif nxt in "pP":
                    i += 1  # \pN: one letter
                elif nxt == "x":
                    i += 2  # \x41
                elif nxt.isdigit():
                    while i < len(text) and text[i].isdigit():
                        i += 1  # an octal escape, \123
                atoms.append(None)
            else:
                atoms.append(nxt)  # an escaped punctuation character: itself
                i += 2
            continue
        if c == "[":
            end = _close_class(text, i)
            if end is None:
                return None
            atoms.append(_one_member(text[i + 1 : end - 1]))
            i = end
            continue
        if c == "(":
            end = _close_group(text, i)
            if end is None:
                return None
            atoms.append(None)
            i = end
            continue
        if c in "*?":
            if atoms:
                atoms[-1] = None
            atoms.append(None)  # keeps what follows from joining what precedes
            i += 1
            continue
        if c == "+":
            atoms.append(None)
            i += 1
            continue
        if c == "{" and (end := _repetition(text, i)) is not None:
            if atoms:
                atoms[-1] = None
            atoms.append(None)
            i = end
            continue
        atoms.append(None if c in ".^$" else c)  # an anchor inside a branch: not followed
        i += 1
    return atoms


def _unwrapped(text: str) -> str:
    """``text`` without a group around all of it (``(a|b)``, ``(?:a|b)``)."""
    while text.startswith("(") and _close_group(text, 0) == len(text):
        inner = text[1:-1]
        if inner.startswith("?:"):
            inner = inner[2:]
        elif inner.startswith("?"):
            return text  # flags or a named group: not followed
        text = inner
    return text


def _anchorless(text: str) -> str:
    """``text`` without a leading ``^`` nor a trailing unescaped ``$`` (matches are whole-text)."""
    text = text.removeprefix("^")
    if text.endswith("$"):
        backslashes = len(text[:-1]) - len(text[:-1].rstrip("\\"))
        if backslashes % 2 == 0:
            text = text[:-1]
    return text


def branches(pattern: str) -> list[Atoms] | None:
    """The atoms of each alternative of ``pattern`` (alternatives inside a group around a whole
    alternative included), or None when it cannot tell."""
    text = _anchorless(pattern)
    unwrapped = _unwrapped(text)
    parts = _split(unwrapped)
    if parts is None:
        return None
    if len(parts) == 1 and unwrapped == text:
        atoms = _atoms(text)
        return None if atoms is None else [atoms]
    out: list[Atoms] = []
    for part in parts:
        found = branches(part)
        if found is None:
            return None
        out.extend(found)
    return out


def literal_prefix(atoms: Atoms) -> str:
    """The text every match of the branch starts with."""
    out = []
    for atom in atoms:
        if atom is None:
            break
        out.append(atom)
    return "".join(out)


def literal_suffix(atoms: Atoms) -> str:
    """The text every match of the branch ends with."""
    out = []
    for atom in reversed(atoms):
        if atom is None:
            break
        out.append(atom)
    return "".join(reversed(out))
