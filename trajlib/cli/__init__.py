"""Minimal ``trajlib`` command line for the store stage's own tests (the lead's replaces it).

Exit codes: 0 success, 1 failure (e.g. validate found problems), 2 user error (one line).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from trajlib.errors import TrajlibError

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    from trajlib.cli._store_cmds import add_store_commands

    p = argparse.ArgumentParser(prog="trajlib")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    add_store_commands(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    try:
        return int(args.func(args) or 0)
    except TrajlibError as e:
        print(f"trajlib: error: {e}", file=sys.stderr)
        return 2
