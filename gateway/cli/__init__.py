"""``spangate``: the command line.

    spangate serve --policy PATH [--shadow-policy CANDIDATE] [--host 127.0.0.1] [--port 8080]
                   [--workers N]
    spangate dev [--policy policy.example.yaml] [--port 8080]
    spangate policy check PATH [--database]
    spangate policy replay --policy CANDIDATE [--key-file F | --no-key] [--json] AUDIT_FILE...
    spangate grants --policy PATH [--schema FILE] [--check]
    spangate init-db --policy PATH [--print]
    spangate audit verify [--key-file F | --no-key] [--from-genesis | --anchor HASH] FILE...
    spangate --version

Each command group is a module of this package with ``register(subparsers)``; the function it sets
as ``handler`` returns the exit code. Exit codes: 0 ok, 1 a check failed or a runtime failure,
2 usage, settings or policy errors.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from google.api_core.exceptions import GoogleAPIError
from google.auth.exceptions import GoogleAuthError
from pydantic import ValidationError

from gateway import __version__
from gateway.cli import audit, db, policy, serve
from gateway.errors import ConfigError, PolicyError, UsageError
from gateway.logs import configured

__all__ = ["main"]

COMMANDS = (serve, policy, audit, db)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spangate", description="An identity-aware gateway in front of Google Cloud Spanner."
    )
    parser.add_argument("--version", action="version", version=f"spangate {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMANDS:
        module.register(sub)
    return parser


def _report(text: str) -> None:
    """A fatal error: on stderr, as a log line when the command logs (``serve``: a JSON log
    stream stays all JSON), else as it is."""
    if configured():
        logging.getLogger("spangate").critical("%s", text)
    else:
        print(text, file=sys.stderr)


def print_policy_error(exc: PolicyError) -> None:
    lines = [f"spangate: the policy has {len(exc.problems)} problem(s):"]
    lines += [f"  {problem}" for problem in exc.problems]
    _report("\n".join(lines))


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        code: int = args.handler(args)
    except PolicyError as exc:
        print_policy_error(exc)
        return 2
    except ValidationError as exc:  # Settings() read from the environment
        from gateway.settings import settings_problems

        _report(f"spangate: invalid settings:\n{settings_problems(exc)}")
        return 2
    except (ConfigError, UsageError) as exc:
        _report(f"spangate: {exc}")
        return 2
    except BrokenPipeError:
        # Its reader went away (`spangate audit verify ... | head`): stop quietly, as other
        # tools do, and let nothing more be written to the closed pipe at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (GoogleAuthError, GoogleAPIError) as exc:
        _report(
            f"spangate: cannot use Spanner: {exc}\n"
            "  (set SPANNER_EMULATOR_HOST=host:port for an emulator, or Application Default "
            "Credentials for Cloud Spanner)"
        )
        return 1
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
