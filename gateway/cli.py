"""``spangate``: serve a policy, run the local demo stack, check a policy.

    spangate serve --policy PATH [--host 127.0.0.1] [--port 8080]
    spangate dev [--policy policy.example.yaml] [--port 8080]
    spangate policy check PATH
    spangate --version

Exit codes: 0 ok, 1 runtime failure, 2 usage or policy errors.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from gateway import __version__
from gateway.errors import PolicyError

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spangate", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument("--version", action="version", version=f"spangate {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser(
        "serve", help="serve a policy (settings from SPANGATE_* environment variables)"
    )
    serve.add_argument("--policy", type=Path, help="policy file or folder (SPANGATE_POLICY)")
    serve.add_argument("--host", help="address to bind (SPANGATE_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (SPANGATE_PORT, default 8080)")

    dev = sub.add_parser(
        "dev", help="run the demo: emulator, OpenID provider and gateway, with tokens to try"
    )
    dev.add_argument("--policy", type=Path, default=Path("policy.example.yaml"))
    dev.add_argument("--port", type=int, default=0, help="gateway port (default: a free one)")
    dev.add_argument(
        "--repo", type=Path, default=Path("."), help="repository root (dev/ lives there)"
    )

    policy = sub.add_parser("policy", help="policy tools")
    psub = policy.add_subparsers(dest="policy_command", required=True)
    check = psub.add_parser(
        "check", help="validate a policy; print every problem with file:line:column"
    )
    check.add_argument("path", type=Path)
    return parser


def _settings(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from gateway.settings import Settings

    overrides = {
        k: v
        for k, v in (("policy", args.policy), ("host", args.host), ("port", args.port))
        if v is not None
    }
    return Settings(**overrides)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from gateway.runtime import build_gateway

    settings = _settings(args)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    app = build_gateway(settings, env=os.environ)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        lifespan="on",
        log_level=settings.log_level,
        access_log=False,  # the audit trail records every request
        server_header=False,
    )
    return 0


def _check(args: argparse.Namespace) -> int:
    from gateway.runtime import load_compiled

    policy = load_compiled(args.path, os.environ)
    model = policy.model
    print(
        f"{args.path}: ok ({len(model.routes)} routes, {len(model.queries)} queries, "
        f"{len(model.roles)} roles, sha256 {policy.sha256[:12]})"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "dev":
            from gateway.dev.demo import run_demo

            return run_demo(policy=args.policy, port=args.port, repo=args.repo)
        if args.command == "policy" and args.policy_command == "check":
            return _check(args)
    except PolicyError as exc:
        print(f"spangate: the policy has {len(exc.problems)} problem(s):", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 2
    except ValidationError as exc:
        print(f"spangate: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
