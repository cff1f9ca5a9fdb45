"""``spangate policy ...``: tools for the people who write policies."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

__all__ = ["register"]


def register(sub: Any) -> None:
    policy = sub.add_parser("policy", help="policy tools")
    psub = policy.add_subparsers(dest="policy_command", required=True)
    check = psub.add_parser(
        "check", help="validate a policy; print every problem with file:line:column"
    )
    check.add_argument("path", type=Path)
    check.set_defaults(handler=_check)


def _check(args: argparse.Namespace) -> int:
    from gateway.runtime import load_compiled

    policy = load_compiled(args.path, os.environ)
    model = policy.model
    print(
        f"{args.path}: ok ({len(model.routes)} routes, {len(model.queries)} queries, "
        f"{len(model.roles)} roles, sha256 {policy.sha256[:12]})"
    )
    return 0
