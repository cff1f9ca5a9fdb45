"""The policy's regular expressions (a parameter's ``pattern``, a claim's ``matches``). Pure.

They run on values that callers and tokens supply, so they are compiled with RE2, whose matching
time is linear in the length of the value whatever the pattern: no pattern can make one request
stall the event loop (with a backtracking engine, ``^([A-Z0-9]+-?)+$`` takes seconds on 27 bytes).

Contract:

- ``compile_regex(text)`` compiles RE2 syntax (https://github.com/google/re2/wiki/Syntax) over
  UTF-8 text. A pattern RE2 cannot run in linear time or does not know (backreferences such as
  ``\\1``, lookaround ``(?=`` ``(?!`` ``(?<=``, ``\\Z``, possessive quantifiers, a repetition
  count above 1000, a program above RE2's default memory budget) raises ``RegexProblem`` (a
  ValueError) saying why, and that it must be a linear-time (RE2) pattern when Python's ``re``
  would have taken it; the loader reports it as a load error at the pattern.
- ``Regex.fullmatch(text)``: the WHOLE text matches, as Python's ``re.fullmatch`` (anchors are
  not needed, and a forgotten one never widens the match). A string that is not valid Unicode
  (a lone surrogate) never matches.
- Differences from Python's ``re`` that a pattern may notice: ``\\d``, ``\\w``, ``\\s`` and
  ``\\b`` are ASCII only (use ``\\pN``, ``\\pL`` for Unicode classes); ``$`` is the end of the text,
  never "before a final newline". ``ascii_escapes(text)`` finds those escapes (the loader warns).
- Compiled patterns are cached (``functools.lru_cache``, bounded): the model validators, the
  compiled policy and explain share one compilation per pattern text.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Any

import re2

__all__ = ["Regex", "RegexProblem", "ascii_escapes", "compile_regex"]

_CACHE_SIZE = 1024  # distinct pattern texts kept compiled; a policy rarely has more


class RegexProblem(ValueError):
    """A pattern that is not a valid linear-time (RE2) regular expression."""


def _options() -> Any:
    options = re2.Options()
    options.encoding = re2.Options.Encoding.UTF8
    options.log_errors = False  # RE2 would write refused patterns to stderr
    options.never_capture = True  # only whether the value matches is ever asked
    return options


@dataclass(frozen=True)
class Regex:
    """A compiled RE2 pattern; ``pattern`` is the text as written in the policy."""

    pattern: str
    _compiled: Any = field(repr=False, compare=False)

    def fullmatch(self, text: str) -> bool:
        try:
            return self._compiled.fullmatch(text) is not None
        except UnicodeEncodeError:  # a lone surrogate: not text any UTF-8 pattern can match
            return False


@functools.lru_cache(maxsize=_CACHE_SIZE)
def compile_regex(pattern: str) -> Regex:
    """Compile ``pattern`` with RE2; raises RegexProblem when RE2 refuses it. Cached: the same
    text compiles once (a refusal is not cached; it raises each time)."""
    try:
        compiled = re2.compile(pattern, _options())
    except re2.error as exc:
        why = exc.args[0] if exc.args else "refused"
        if isinstance(why, bytes):
            why = why.decode("utf-8", "replace")
        if _backtracking_accepts(pattern):
            raise RegexProblem(
                f"must be a linear-time (RE2) regular expression: {why} (RE2 has no "
                "backreferences and no lookaround; see https://github.com/google/re2/wiki/Syntax)"
            ) from None
        raise RegexProblem(f"invalid regular expression: {why}") from None
    except UnicodeEncodeError:
        raise RegexProblem("invalid regular expression: it holds a lone surrogate") from None
    return Regex(pattern, compiled)


def _backtracking_accepts(pattern: str) -> bool:
    """Whether Python's ``re`` compiles it (never matches with it): only to word the problem."""
    try:
        re.compile(pattern)
    except (re.error, RecursionError, OverflowError):
        return False
    return True


_ASCII_ONLY = frozenset("dwsbDWSB")


def ascii_escapes(pattern: str) -> list[str]:
    """The escapes in ``pattern`` that RE2 matches on ASCII only where Python's ``re`` is Unicode
    aware (``\\d \\w \\s \\b`` and their negations), each once, in order of appearance. An
    escaped backslash (``\\\\d``) is not one."""
    found: dict[str, None] = {}
    i = 0
    while i < len(pattern) - 1:
        if pattern[i] == "\\":
            if pattern[i + 1] in _ASCII_ONLY:
                found["\\" + pattern[i + 1]] = None
            i += 2
        else:
            i += 1
    return list(found)
