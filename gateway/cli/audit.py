"""``spangate audit verify FILE...``: check a whole audit trail, across rotated files and processes.

Files of different names are different trails (``spangate serve --workers N`` writes one per
worker: ``audit.w1.jsonl``, ``audit.w2.jsonl``…; a file and its rotations are one trail): each is
verified on its own, under a ``trail NAME:`` heading, and a last line counts them; exit 1 when any
is broken. ``--anchor`` is one trail's hash: with several trails it is a usage error.

Exit 0 when every event is intact and in its place (notes, if any, go to stderr: a last line
with no newline, a write in progress or torn by a crash, is one, and is not verified), 1 at the
first break, printed as ``FILE:LINE: seq N KIND: why`` (KIND: edited, deleted, reordered,
inserted, missing-file, unanchored), and 1 for a trail with no complete event (``not verified:``):
there is nothing to call ok. The ``ok`` line says where the verified trail starts (its first event's
chain, seq and prev, and whether that is genesis) and where it ends. ``--from-genesis`` and
``--anchor HASH`` make a trail that does not start there a break. The key is
``SPANGATE_AUDIT_KEY`` (as the gateway reads it), or the contents of ``--key-file``; ``--no-key``
checks a trail written without one (plain SHA-256: it proves nothing against an editor).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["register"]


def _hash(value: str) -> str:
    from gateway.audit.verify import HEX64

    if not HEX64.fullmatch(value.lower()):  # either case on the command line
        raise argparse.ArgumentTypeError("an anchor is an event hash: 64 hexadecimal digits")
    return value.lower()


def register(sub: Any) -> None:
    audit = sub.add_parser("audit", help="audit trail tools")
    asub = audit.add_subparsers(dest="audit_command", required=True)
    verify = asub.add_parser(
        "verify",
        help="check an audit trail's hash chain; name the first broken event",
        description="Pass every file of the trail (audit.jsonl*: rotated files are put in order).",
    )
    verify.add_argument("files", nargs="+", type=Path, metavar="FILE")
    keys = verify.add_mutually_exclusive_group()
    keys.add_argument("--key-file", type=Path, help="read the audit key from this file")
    keys.add_argument(
        "--no-key", action="store_true", help="the trail was written without SPANGATE_AUDIT_KEY"
    )
    start = verify.add_mutually_exclusive_group()
    start.add_argument(
        "--from-genesis",
        action="store_true",
        help="fail unless the trail starts at its very first event (seq 1, prev all zeros): "
        "no older file or event was removed",
    )
    start.add_argument(
        "--anchor",
        type=_hash,
        metavar="HASH",
        help="fail unless the trail continues from this hash: its first event's prev is HASH, "
        "or an event has it (pass the last hash a verify of the previous archive printed)",
    )
    verify.set_defaults(handler=_verify)


def _secret(args: argparse.Namespace) -> bytes | None:
    if args.no_key:
        return None
    if args.key_file is not None:
        from gateway.cli.files import read_bytes

        return read_bytes(args.key_file, "--key-file").rstrip(b"\r\n")
    from gateway.settings import Settings

    key = Settings().audit_key
    return key.get_secret_value().encode() if key else None


def _verify(args: argparse.Namespace) -> int:
    from gateway.audit.chain import GENESIS
    from gateway.audit.verify import trail_groups
    from gateway.cli.files import require_files

    require_files(args.files, "the trail")  # exit 2, as a missing --key-file is
    groups = trail_groups(args.files)
    if len(groups) > 1 and args.anchor is not None:
        names = ", ".join(str(group[-1]) for group in groups)
        print(
            f"spangate: --anchor names one trail's hash, and these files are {len(groups)} "
            f"trails ({names}): verify each trail's files with its own anchor",
            file=sys.stderr,
        )
        return 2
    secret = _secret(args)
    anchor = GENESIS if args.from_genesis else args.anchor
    if len(groups) == 1:
        return 0 if _verify_one(groups[0], secret, anchor, "") == "ok" else 1
    # One trail per worker (spangate serve --workers N): each verified on its own.
    outcomes = []
    for group in groups:
        print(f"trail {group[-1]}:")
        outcomes.append(_verify_one(group, secret, anchor, "  "))
    broken, empty = outcomes.count("broken"), outcomes.count("empty")
    print(
        f"{len(groups)} trails: {outcomes.count('ok')} ok"
        + (f", {broken} broken" if broken else "")
        + (f", {empty} with no complete event" if empty else "")
    )
    return 1 if broken or empty else 0


def _key_hint(path: Path, secret: bytes | None) -> str:
    """Why a trail's very first event fails its hash, when the first events say: each names the
    hash of the one before it (``prev``), so they were written as a chain, under another key
    than the one given (none, or another); or they hash as plain SHA-256 (written unkeyed)."""
    from gateway.audit.chain import event_hash

    events: list[dict[str, Any]] = []
    with path.open("rb") as lines:
        for raw in lines:
            if len(events) == 3 or not raw.endswith(b"\n"):
                break
            try:
                event = json.loads(raw)
            except ValueError:
                break
            if not isinstance(event, dict) or not isinstance(event.get("hash"), str):
                break
            events.append(event)
    linked = len(events) > 1 and all(
        later.get("prev") == earlier["hash"] for earlier, later in itertools.pairwise(events)
    )
    if secret is None:
        if linked:
            return (
                "its events chain to each other, but none matches a hash without a key: the "
                "trail is keyed; give --key-file or set SPANGATE_AUDIT_KEY"
            )
        return "set SPANGATE_AUDIT_KEY, if the trail was written with one"
    if events and all(event_hash(e, None) == e["hash"] for e in events):
        return "the trail was written without a key: verify it with --no-key"
    if linked:
        return "its events chain to each other under another key: is it the gateway's key?"
    return "is it the gateway's key?"


def _verify_one(files: list[Path], secret: bytes | None, anchor: str | None, indent: str) -> str:
    """Verify one trail and print what was found: ``ok``, ``broken`` or ``empty`` (sound, but
    not one complete event was read: nothing was verified)."""
    from gateway.audit.chain import AuditKeys
    from gateway.audit.verify import verify_trail
    from gateway.cli.files import reason
    from gateway.errors import UsageError

    try:
        report = verify_trail(files, AuditKeys.from_secret(secret).chain, anchor=anchor)
    except OSError as exc:  # a file that went away or became unreadable after the check
        name = exc.filename or ", ".join(map(str, files))
        raise UsageError(f"cannot read the trail: {name}: {reason(exc)}") from None
    for note in report.notes:
        print(f"note: {note}", file=sys.stderr)
    if report.broken is not None:
        print(f"{indent}{report.broken}")
        if report.broken.line == 1 and report.broken.file == str(files[0]):
            if report.broken.kind == "edited":
                hint = _key_hint(files[0], secret)
                print(f"  (the very first event fails: {hint})", file=sys.stderr)
        return "broken"
    if report.events == 0:  # sound, but nothing was read: no reason to say ok
        print(
            f"{indent}not verified: no complete event in {', '.join(map(str, files))} (the trail "
            "is empty, or its only line has no newline: a write in progress or torn)"
        )
        return "empty"
    mode = (
        "HMAC-SHA256"
        if secret
        else "SHA-256 without a key: detects accidents only, proves nothing against anyone who "
        "can write the files (they can re-hash every event)"
    )
    print(
        f"{indent}ok: {report.events} events in {report.files} file(s), {report.chains} "
        f"chain(s), {mode}"
    )
    if report.start is not None:
        s = report.start
        if report.anchored_at is not None:
            where = f"anchored: the anchor is the event at {report.anchored_at}"
            where = f"genesis; {where}" if s.genesis else where
        elif s.genesis:
            where = "genesis: the first event ever written"
        elif anchor is not None:
            where = "anchored: prev is the anchor"
        else:
            where = (
                "not genesis: earlier events are not in these files; "
                "--anchor proves none were removed"
            )
        print(
            f"{indent}starts: {s.file}:{s.line} chain {s.chain} seq {s.seq} prev {s.prev} "
            f"({where})"
        )
    if report.head is not None:
        chain, seq, digest = report.head
        print(
            f"{indent}last event: chain {chain} seq {seq} hash {digest} (events cut off the end "
            "are not detectable: compare it with a copy kept elsewhere)"
        )
    return "ok"
