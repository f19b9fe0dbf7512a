"""The ``trajlib`` command line.

Exit codes: 0 success, 2 bad input (one line naming what was wrong), 1 failure.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from trajlib import __version__
from trajlib.errors import TrajlibError

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    from trajlib.cli._commands import add_main_commands
    from trajlib.cli._features_cmd import add_features_command
    from trajlib.cli._model_cmds import add_model_commands
    from trajlib.cli._store_cmds import add_store_commands

    p = argparse.ArgumentParser(prog="trajlib", description="Learned hyperparameter controllers.")
    p.add_argument("--version", action="version", version=f"trajlib {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    add_main_commands(sub)
    add_store_commands(sub)
    add_features_command(sub)
    add_model_commands(sub)
    return p


class _UsageError(Exception):
    pass


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = build_parser()

    def _error(message: str) -> None:  # argparse usage errors: exit 2 with one line, no traceback
        raise _UsageError(message)

    parser.error = _error  # type: ignore[method-assign]
    for action in parser._subparsers._group_actions if parser._subparsers else []:  # noqa: SLF001
        for sp in getattr(action, "choices", {}).values():
            sp.error = _error  # type: ignore[method-assign]
            for a2 in sp._subparsers._group_actions if sp._subparsers else []:  # noqa: SLF001
                for sp2 in getattr(a2, "choices", {}).values():
                    sp2.error = _error  # type: ignore[method-assign]
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
