"""``spangate audit verify FILE...``: check a whole audit trail, across rotated files and processes.

Exit 0 when every event is intact and in its place (notes, if any, go to stderr), 1 at the first
break, printed as ``FILE:LINE: seq N KIND: why`` (KIND: edited, deleted, reordered, inserted).
The key is ``SPANGATE_AUDIT_KEY`` (as the gateway reads it), or the contents of ``--key-file``;
``--no-key`` checks a trail written without one (plain SHA-256).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

__all__ = ["register"]


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
    verify.set_defaults(handler=_verify)


def _secret(args: argparse.Namespace) -> bytes | None:
    if args.no_key:
        return None
    if args.key_file is not None:
        key_file: Path = args.key_file
        return key_file.read_bytes().rstrip(b"\r\n")
    from gateway.settings import Settings

    key = Settings().audit_key
    return key.get_secret_value().encode() if key else None


def _verify(args: argparse.Namespace) -> int:
    from gateway.audit.chain import AuditKeys
    from gateway.audit.verify import trail_order, verify_trail

    missing = [str(p) for p in args.files if not p.is_file()]
    if missing:
        print(f"spangate: no such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    secret = _secret(args)
    report = verify_trail(args.files, AuditKeys.from_secret(secret).chain)
    for note in report.notes:
        print(f"note: {note}", file=sys.stderr)
    if report.broken is not None:
        print(f"{report.broken}")
        first = trail_order(args.files)[0]
        if report.broken.line == 1 and report.broken.file == str(first):
            hint = "set SPANGATE_AUDIT_KEY" if secret is None else "is it the gateway's key?"
            print(f"  (the very first event fails: {hint})", file=sys.stderr)
        return 1
    mode = "HMAC-SHA256" if secret else "SHA-256 (no key: detects accidents only)"
    head = ""
    if report.head is not None:
        chain, seq, digest = report.head
        head = f"; last event: chain {chain} seq {seq} hash {digest}"
    print(
        f"ok: {report.events} events in {report.files} file(s), {report.chains} chain(s), "
        f"{mode}{head}"
    )
    return 0
