"""The ``trajlib`` command line.

Exit codes: 0 success, 2 bad input (one line naming what was wrong), 1 failure.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from trajlib import __version__
from trajlib.errors import TrajlibError

__all__ = ["main", "build_parser"]


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors raise instead of exiting, so :func:`main` prints
    them as one line and returns 2. Sub-commands are built with the same class (argparse's
    ``add_subparsers`` defaults ``parser_class`` to the parent's type)."""

    def error(self, message: str) -> NoReturn:
        raise _UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    from trajlib.cli._commands import add_main_commands
    from trajlib.cli._features_cmd import add_features_command
    from trajlib.cli._model_cmds import add_model_commands
    from trajlib.cli._store_cmds import add_store_commands
    from trajlib.cli._suite_cmd import add_suite_command

    p = _Parser(prog="trajlib", description="Learned hyperparameter controllers.")
    p.add_argument("--version", action="version", version=f"trajlib {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    add_main_commands(sub)
    add_store_commands(sub)
    add_features_command(sub)
    add_model_commands(sub)
    add_suite_command(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
        return int(args.func(args) or 0)
    except _UsageError as e:
        print(f"trajlib: error: {e}", file=sys.stderr)
        return 2
    except TrajlibError as e:
        print(f"trajlib: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "trajlib: interrupted (committed runs are kept; run the same command to resume)",
            file=sys.stderr,
        )
        return 130


def _entry() -> None:  # pragma: no cover
    sys.exit(main())
