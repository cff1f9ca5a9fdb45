"""``spangate serve`` and ``spangate dev``."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

__all__ = ["register"]


def register(sub: Any) -> None:
    serve = sub.add_parser("serve", help="serve a policy (settings from SPANGATE_* variables)")
    serve.add_argument("--policy", type=Path, help="policy file or folder (SPANGATE_POLICY)")
    serve.add_argument(
        "--shadow-policy",
        type=Path,
        metavar="CANDIDATE",
        help="also decide every call under this candidate policy, never answering with it "
        "(SPANGATE_SHADOW_POLICY; see docs/policy/rollout.md)",
    )
    serve.add_argument("--host", help="address to bind (SPANGATE_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (SPANGATE_PORT, default 8080)")
    serve.add_argument(
        "--workers",
        type=int,
        help="processes serving on the port (SPANGATE_WORKERS, default 1; see docs/operations.md)",
    )
    serve.set_defaults(handler=_serve)

    dev = sub.add_parser(
        "dev", help="run the demo: emulator, OpenID provider and gateway, with tokens to try"
    )
    dev.add_argument(
        "--policy",
        type=Path,
        help="the policy to serve (default: policy.example.yaml, or policy.example.postgresql.yaml "
        "with --dialect postgresql)",
    )
    dev.add_argument(
        "--dialect",
        choices=["googlesql", "postgresql"],
        help="the demo database's SQL dialect (default: the policy's spanner.dialect)",
    )
    dev.add_argument(
        "--schema",
        type=Path,
        help="DDL to create the demo database from instead of the demo shop's (statements "
        "separated by ';', in the policy's dialect)",
    )
    dev.add_argument(
        "--seed",
        type=Path,
        help="DML to fill it with (default: the demo shop's seed without --schema, none with it)",
    )
    dev.add_argument("--port", type=int, default=0, help="gateway port (default: a free one)")
    dev.add_argument("--repo", type=Path, default=Path("."), help="repository root (dev/ lives there)")
    dev.set_defaults(handler=_dev)


def _serve(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from gateway.errors import ConfigError
    from gateway.logs import configure_logging
    from gateway.runtime import build_gateway
    from gateway.server import run_server
    from gateway.settings import Settings, settings_problems

    given = {
        "policy": args.policy,
        "shadow_policy": args.shadow_policy,
        "host": args.host,
        "port": args.port,
        "workers": args.workers,
    }
    given = {k: v for k, v in given.items() if v is not None}
    try:
        settings = Settings(**given)
    except ValidationError as exc:
        configure_logging("auto", "info")  # the settings error is a log line too (cli.main)
        options = {k: "--" + k.replace("_", "-") for k in given}  # what the options gave
        raise ConfigError(f"invalid settings:\n{settings_problems(exc, options)}") from None
    # Before anything logs: start-up warnings and a refused policy are lines of the same stream.
    configure_logging(settings.log_format, settings.log_level)
    if settings.workers > 1:
        from gateway.workers import run_workers

        # The workers read their settings as this process did: the options become variables.
        env = {**os.environ, **{f"SPANGATE_{k.upper()}": str(v) for k, v in given.items()}}
        return run_workers(settings, env)
    app = build_gateway(settings, env=os.environ)
    return run_server(app, settings)


def _dev(args: argparse.Namespace) -> int:
    from gateway.cli.files import require_files
    from gateway.dev.demo import DEFAULT_POLICIES, run_demo
    from gateway.errors import UsageError

    # Before anything starts (the emulator, the provider, Redis): exit 2, no traceback.
    repo: Path = args.repo
    if not (repo / "dev").is_dir():
        raise UsageError(f"--repo {repo}: no dev/ folder there (pass the repository's root)")
    policy: Path = args.policy or repo / DEFAULT_POLICIES[args.dialect or "googlesql"]
    if not policy.exists():
        raise UsageError(f"--policy {policy}: no such file or folder")
    for path, what in ((args.schema, "--schema"), (args.seed, "--seed")):
        if path is not None:
            require_files([path], what)
    return run_demo(
        policy=args.policy,
        port=args.port,
        repo=args.repo,
        dialect=args.dialect,
        schema=args.schema,
        seed=args.seed,
    )
