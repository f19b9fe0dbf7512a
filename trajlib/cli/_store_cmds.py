"""``trajlib store info|validate|gc|compact|best-lr DIR``, ``trajlib export tensorboard STORE OUTDIR`` and
``trajlib plot STORE --out DIR``.

Each handler takes the parsed ``args`` and returns an exit code; user errors are raised as
:class:`~trajlib.errors.TrajlibError` for ``trajlib.cli.main`` to print as one line (exit 2).
"""

from __future__ import annotations

import argparse
import json
import sys

STORE_HELP = "store directory or URL (s3://bucket/prefix; credentials from the AWS environment)"


def add_store_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register ``store`` (info, validate, gc, compact) and ``export`` (tensorboard)."""
    store = subparsers.add_parser("store", help="inspect and maintain a trajectory store")
    ssub = store.add_subparsers(dest="store_command", metavar="ACTION")
    ssub.required = True

    p = ssub.add_parser("info", help="runs by task and status, steps, decisions, size on disk")
    p.add_argument("dir", metavar="DIR", help=STORE_HELP)
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.set_defaults(func=cmd_store_info)

    p = ssub.add_parser("validate", help="check every committed run; exit 1 listing problems")
    p.add_argument("dir", metavar="DIR", help=STORE_HELP)
    p.set_defaults(func=cmd_store_validate)

    p = ssub.add_parser("gc", help="remove unfinished runs' files, temp files and stale claims")
    p.add_argument("dir", metavar="DIR", help=STORE_HELP)
    p.set_defaults(func=cmd_store_gc)

    p = ssub.add_parser("compact", help="merge per-run fragments into sorted part files")
    p.add_argument("dir", metavar="DIR", help=STORE_HELP)
    p.add_argument(
        "--rows-per-file",
        type=int,
        default=4_000_000,
        help="step rows per compacted file (default 4,000,000)",
    )
    p.set_defaults(func=cmd_store_compact)

    p = ssub.add_parser(
        "best-lr",
        help="each task's best start LR in a probe store (runs that only follow the base "
        "schedule): the CSV a recipe's collect.best_lr_table reads",
    )
    p.add_argument("dir", metavar="DIR", help=STORE_HELP)
    p.add_argument("--out", metavar="CSV", help="write the table here (default: print it)")
    p.set_defaults(func=cmd_store_best_lr)

    export = subparsers.add_parser("export", help="export a store to other formats")
    esub = export.add_subparsers(dest="export_command", metavar="FORMAT")
    esub.required = True
    p = esub.add_parser("tensorboard", help="TensorBoard event files, one directory per run")
    p.add_argument("store", metavar="STORE", help=STORE_HELP)
    p.add_argument("outdir", metavar="OUTDIR", help="log directory to write")
    p.add_argument(
        "--run",
        dest="run_ids",
        action="append",
        metavar="RUN_ID",
        help="export only this run (repeatable; default: all committed runs)",
    )
    p.set_defaults(func=cmd_export_tensorboard)

    p = subparsers.add_parser(
        "plot",
        help="PNG figures of a store: overview, per run loss/HP curves, layer heat map, branch fans",
    )
    p.add_argument("store", metavar="STORE", help=STORE_HELP)
    p.add_argument("--out", required=True, metavar="DIR", help="directory to write the PNGs into")
    p.add_argument(
        "--run",
        dest="run_ids",
        action="append",
        metavar="ID",
        help="plot this run (repeatable; default: the first run of each task)",
    )
    p.add_argument("--no-overview", action="store_true", help="skip overview.png")
    p.set_defaults(func=cmd_plot)


def cmd_store_info(args: argparse.Namespace) -> int:
    from trajlib.store import open_store

    info = open_store(args.dir).info()
    if args.json:
        print(json.dumps(info, sort_keys=True))
        return 0
    print(f"store      {info['path']} (schema version {info['schema_version']})")
    print(f"runs       {info['runs']:,}")
    for task, statuses in info["runs_by_task"].items():
        counts = ", ".join(f"{s} {n:,}" for s, n in statuses.items())
        print(f"  {task:24s} {counts}")
    print(f"steps      {info['steps']:,}")
    print(f"decisions  {info['decisions']:,}   branches {info['branches']:,}")
    print(
        f"on disk    {info['size_bytes'] / 1e6:,.1f} MB in {info['files']:,} files "
        f"({info['fragments']:,} step fragments, {info['parts']:,} compacted)"
    )
    if info["compaction_pending"]:
        print("note       an interrupted compaction is pending; `trajlib store gc` finishes it")
    return 0


def cmd_store_best_lr(args: argparse.Namespace) -> int:
    import numpy as np
    import polars as pl

    from trajlib.collect import best_lr_table
    from trajlib.store import open_store

    t = best_lr_table(open_store(args.dir))
    if args.out:
        t.write_csv(args.out, float_precision=6)
    else:
        with pl.Config(tbl_rows=-1, tbl_hide_dataframe_shape=True):
            print(t)
    r = t["best_over_default"].to_numpy()
    print(
        f"{t.height} tasks; best start LR / default LR: median {float(np.median(r)):.3g}, "
        f"{float((r >= 3).mean()):.0%} at 3x the default or more, "
        f"{float((r <= 1 / 3).mean()):.0%} at a third or less"
        + (f"; written to {args.out}" if args.out else "")
    )
    return 0


def cmd_store_validate(args: argparse.Namespace) -> int:
    from trajlib.store import open_store

    store = open_store(args.dir)
    problems = store.validate()
    if not problems:
        print(f"{store.url}: ok")
        return 0
    print(f"{store.url}: {len(problems)} problem(s)", file=sys.stderr)
    for p in problems:
        print(f"  - {p}", file=sys.stderr)
    return 1


def cmd_store_gc(args: argparse.Namespace) -> int:
    from trajlib.store import open_store

    removed = open_store(args.dir).gc()
    for r in removed:
        print(f"removed {r}")
    print(f"{len(removed)} path(s) removed")
    return 0


def cmd_store_compact(args: argparse.Namespace) -> int:
    from trajlib.errors import ConfigError
    from trajlib.store import open_store

    if args.rows_per_file < 1:
        raise ConfigError("--rows-per-file", "a positive integer", args.rows_per_file)
    stats = open_store(args.dir).compact(rows_per_file=args.rows_per_file)
    print(
        f"compacted {stats['runs']} run(s): {stats['files_before']} -> {stats['files_after']} "
        f"files in {stats['seconds']:.2f} s"
    )
    return 0


def cmd_export_tensorboard(args: argparse.Namespace) -> int:
    from trajlib.store import export_tensorboard, open_store

    dirs = export_tensorboard(open_store(args.store), args.outdir, run_ids=args.run_ids)
    print(f"wrote {len(dirs)} run(s) to {args.outdir}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from trajlib.evaluate._plots import plot_store

    paths = plot_store(args.store, args.out, run_ids=args.run_ids, overview=not args.no_overview)
    for p in paths:
        print(p)
    print(f"wrote {len(paths)} figure(s) to {args.out}")
    return 0
