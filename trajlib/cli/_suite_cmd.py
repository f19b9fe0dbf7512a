"""``trajlib suite CHECKPOINT``: the held-out suite of user-style loops (trajlib.evaluate.suite)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from trajlib.cli._commands import _csv, _positive_int
from trajlib.errors import ConfigError

__all__ = ["add_suite_command", "cmd_suite"]


def add_suite_command(sub: Any) -> None:
    p = sub.add_parser(
        "suite",
        help="held-out suite: user-style loops, starts /10 x1 x10, with and without validation, "
        "vs cosine, tuned cosine and schedule-free",
    )
    p.add_argument("checkpoint", help="controller checkpoint directory")
    p.add_argument("--seeds", type=_positive_int, default=5, help="number of seeds (0..N-1)")
    p.add_argument("--workers", type=_positive_int, default=1, help="processes")
    p.add_argument("--out", default="runs/suite", help="report directory")
    p.add_argument("--cache", help="result cache directory (default: OUT/cache); share it "
                   "between checkpoints to compute the baselines once (a controller run is "
                   "keyed by the checkpoint's and the controller code's content hashes: a code "
                   "change recomputes it)")  # fmt: skip
    p.add_argument("--families", type=_csv,
                   help="comma-separated families of any set (default: every family of --set)")  # fmt: skip
    p.add_argument("--set", dest="family_set", choices=("suite", "fresh", "outside"),
                   default="suite",
                   help="suite: the eleven held-out families of the headline; fresh: eight more, "
                   "defined after the shipped controllers were chosen; outside: eight more, "
                   "written from the README alone after trajlib-lr-v8 was shipped")  # fmt: skip
    modes = p.add_mutually_exclusive_group()
    modes.add_argument("--no-val-only", action="store_true",
                       help="only the controller without validation reports")  # fmt: skip
    modes.add_argument("--val-only", action="store_true",
                       help="only the controller with validation reports")  # fmt: skip
    p.add_argument("--quick", action="store_true", help="at most 2 seeds")
    p.add_argument("--budget", type=_positive_int, help="override every family's step budget")
    p.add_argument("--lookahead", type=_positive_int, nargs=2, metavar=("TOP_K", "HORIZON"),
                   help="run the controller with deploy-time lookahead")  # fmt: skip
    p.add_argument("--lookahead-cooldown", type=_nonnegative_int, default=0, metavar="STEPS",
                   help="score each lookahead branch after annealing its LR to 0 over STEPS")  # fmt: skip
    p.add_argument("--lookahead-when", choices=("always", "unsure", "auto"), default="always",
                   help="look at every decision, or only where the do-no-harm rule is unsure")  # fmt: skip
    p.add_argument("--lookahead-search", type=float, nargs="+", default=(), metavar="FACTOR",
                   help="scale search at the first decision: try these LR factors too")  # fmt: skip
    p.add_argument("--lookahead-search-horizon", type=_nonnegative_int, default=0, metavar="STEPS",
                   help="steps each factor of the scale search runs (default: HORIZON)")  # fmt: skip
    p.add_argument("--guard", type=float, metavar="TOL",
                   help="the controller's raise guard tolerance (default: the scheduler's)")  # fmt: skip
    p.add_argument("--no-guard", action="store_true", help="run the controller without its guard")
    p.add_argument("--no-rollback", action="store_true",
                   help="the guard undoes a raise without restoring the weights")  # fmt: skip
    p.add_argument("--report-only", action="store_true",
                   help="run nothing: write OUT's report again from its results.parquet (the "
                   "header of the runs kept)")  # fmt: skip
    p.add_argument("--list", action="store_true", help="list the families and exit")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_suite)


def _nonnegative_int(value: str) -> int:
    return 0 if value.strip() == "0" else _positive_int(value)


def cmd_suite(args: argparse.Namespace) -> int:
    from trajlib.evaluate.suite import families_markdown, run_suite

    if args.list:
        print(families_markdown(args.families, args.family_set), end="")
        return 0
    if args.report_only:  # run nothing: the report again from OUT's results
        from trajlib.evaluate.suite import rerender_suite_report

        print(f"report: {rerender_suite_report(args.out)}")
        return 0
    from trajlib.controllers import resolve_checkpoint

    args.checkpoint = str(resolve_checkpoint(args.checkpoint))  # a shipped controller's name too
    if not Path(args.checkpoint).is_dir():
        raise ConfigError("CHECKPOINT", "an existing checkpoint directory", args.checkpoint)
    guard: dict[str, Any] = {}  # absent: the scheduler's default tolerance
    if args.no_guard or args.guard is not None:
        guard["guard"] = None if args.no_guard else args.guard
    res = run_suite(
        args.checkpoint,
        seeds=args.seeds,
        families=args.families,
        family_set=args.family_set,
        workers=args.workers,
        out=args.out,
        cache=args.cache,
        with_val=not args.no_val_only,
        without_val=not args.val_only,
        quick=args.quick,
        budget=args.budget,
        progress=not args.quiet,
        lookahead=None
        if args.lookahead is None
        else (
            *args.lookahead,
            args.lookahead_cooldown,
            args.lookahead_when,
            tuple(args.lookahead_search),
            args.lookahead_search_horizon,
        ),
        rollback=not args.no_rollback,
        **guard,
    )
    for t in res.targets:
        print(
            f"{'with' if t['with_val'] else 'without'} validation: win rate {t['win_rate']:.0%}, "
            f"median ratio to tuned cosine {t['median_ratio_tuned']:.3f}, worst family median "
            f"ratio to cosine {t['worst_family_median_ratio_cosine']:.3f}, crashes {t['crashes']}"
            f" -> targets {'met' if t['all_met'] else 'missed'}"
        )
    print(f"{res.computed} runs computed, {res.results.height - res.computed} from the cache, "
          f"{res.wall_s:.0f} s; report: {res.report}")  # fmt: skip
    return 0
