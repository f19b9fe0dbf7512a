"""The pipeline commands: tasks, doctor, collect, fit, evaluate, demo."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from trajlib.errors import ConfigError
from trajlib.pipeline import DEMO_HELD_OUT, QUICKSTART_RECIPE


def _csv(value: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list; got {value!r}")
    return items


def _positive_int(value: str) -> int:
    try:
        v = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {value!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {value!r}")
    return v


def _nonneg_int(value: str) -> int:
    try:
        v = int(value)
    except ValueError:
        v = -1
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0; got {value!r}")
    return v


def add_main_commands(sub: Any) -> None:
    """The pipeline's sub-commands: data (tasks, doctor, collect), models (fit, evaluate) and the
    whole loop (iterate, demo)."""
    _add_data_commands(sub)
    _add_model_commands(sub)
    _add_loop_commands(sub)


def _add_data_commands(sub: Any) -> None:
    p = sub.add_parser("tasks", help="list the built-in tasks (or a sample of generated ones)")
    p.add_argument(
        "--generated",
        type=_nonneg_int,
        default=0,
        metavar="N",
        help="list generated tasks gen-<start> .. instead (trajlib.tasks.generated_tasks)",
    )
    p.add_argument("--start", type=_nonneg_int, default=0, help="first generated index")
    p.add_argument("--family", type=_csv, help="only these generated families (comma-separated)")
    p.add_argument(
        "--version",
        type=int,
        choices=(1, 2, 3),  # trajlib.tasks.GENERATED_VERSIONS (not imported here: no torch)
        default=1,
        help="generator version: 1 gen-<i>, 2 gen2-<i> (adds Adagrad, NAdam, momentum-free SGD), "
        "3 gen3-<i> (version 2 with budgets up to 5,000 steps)",
    )
    p.set_defaults(func=cmd_tasks)

    p = sub.add_parser(
        "doctor",
        help="what trajlib runs on here: versions, threads, GPUs, native kernels (for bug reports)",
    )
    p.add_argument("--json", action="store_true", help="one JSON object instead of lines")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("collect", help="run a collection recipe into a store")
    p.add_argument("recipe", help="path to a collectors/*.toml recipe")
    p.add_argument(
        "--store",
        required=True,
        help="store directory or URL such as s3://bucket/prefix (created if missing)",
    )
    p.add_argument("--executor", choices=("local", "ray"), help="override the recipe's executor")
    p.add_argument("--address", help="Ray cluster address (default: start a local Ray cluster)")
    p.add_argument("--workers", type=_positive_int, help="worker processes (override the recipe)")
    p.add_argument("--device", help="cpu | cuda | cuda:N (override the recipe)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--compact",
        action="store_true",
        help="compact the store at the end (few large sorted files: much faster full scans)",
    )
    p.set_defaults(func=cmd_collect)


def _add_model_commands(sub: Any) -> None:
    _add_fit_command(sub)
    _add_combine_command(sub)
    _add_evaluate_command(sub)


def _add_fit_command(sub: Any) -> None:
    p = sub.add_parser("fit", help="fit a controller on a store")
    p.add_argument(
        "store",
        nargs="+",
        help="store directory or URL (s3://bucket/prefix); several: their runs pooled",
    )
    p.add_argument("--kind", default="gbt", help="controller kind: gbt | mlp | gru")
    p.add_argument(
        "--labels",
        default="greedy",
        help="label strategy: greedy | annealed | long | final | end (branches) | outcome (no branches)",
    )
    p.add_argument("--set", dest="feature_set", default="default", help="feature set name")
    p.add_argument("--out", required=True, help="checkpoint directory to write")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--ensemble",
        type=int,
        metavar="K",
        help="fit K members on bootstrap resamples of the runs (default 1; 5 with --no-harm)",
    )
    p.add_argument(
        "--val-withhold",
        type=float,
        default=0.0,
        metavar="F",
        help="add a share F of runs again with validation masked (validation-optional; 0 = off)",
    )
    p.add_argument(
        "--no-harm",
        action="store_true",
        help="store the do-no-harm rule: act only when the ensemble's lower bound of the best "
        "action's advantage over keep exceeds the margin (z calibrated by task family)",
    )
    p.add_argument(
        "--harm-z", type=float, metavar="Z", help="the rule's z, not calibrated (implies --no-harm)"
    )
    p.add_argument(
        "--harm-margin", type=float, default=0.0, help="the rule's margin (advantage units)"
    )
    p.add_argument(
        "--harm-precision",
        type=float,
        default=0.6,
        help="calibration: smallest z whose held-out acted decisions are right this often",
    )
    p.add_argument(
        "--harm-per-action",
        action="store_true",
        help="calibrate each action's own z to --harm-precision too; an action never that "
        "precise on held-out families is never taken (implies --no-harm)",
    )
    p.set_defaults(func=cmd_fit)


def _add_combine_command(sub: Any) -> None:
    p = sub.add_parser(
        "combine",
        help="one checkpoint proposes, another vetoes the moves it predicts harmful",
    )
    p.add_argument("primary", help="checkpoint whose decisions (and do-no-harm rule) are used")
    p.add_argument("veto", help="checkpoint that blocks a move it predicts worse than keep")
    p.add_argument("--out", required=True, help="checkpoint directory to write")
    p.add_argument(
        "--veto-z",
        type=float,
        default=0.0,
        metavar="Z",
        help="block a move when the veto's mean + Z x its spread is below 0 (default 0; a "
        "negative Z blocks what the veto is not that sure is harmless)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=cmd_combine)


def _add_evaluate_command(sub: Any) -> None:
    p = sub.add_parser("evaluate", help="evaluate a controller against baselines on tasks")
    p.add_argument(
        "checkpoint", type=_csv, help="checkpoint directory (comma-separated for several)"
    )
    p.add_argument("--tasks", type=_csv, required=True, help="comma-separated task names")
    p.add_argument("--seeds", type=_positive_int, default=3, help="number of seeds (0..N-1)")
    p.add_argument("--report", required=True, help="report directory")
    p.add_argument(
        "--baselines",
        default="demo",
        choices=("none", "demo", "quick", "standard"),
        help="demo: constant + cosine; quick: static schedules, schedule-free, hypergradient, "
        "tuned cosine; standard: all of those + Optuna, successive halving, T1-T2, PBT",
    )
    p.add_argument(
        "--robustness",
        action="store_true",
        help="also start each controller 10x below and 10x above the task's best LR",
    )
    p.add_argument("--no-pbt", action="store_true", help="leave PBT (Ray Tune) out of 'standard'")
    p.add_argument("--budget", type=_positive_int, help="override each task's step budget")
    p.add_argument(
        "--workers", type=_positive_int, default=1, help="processes (a task x seed each)"
    )
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_evaluate)


def _add_loop_commands(sub: Any) -> None:
    p = sub.add_parser(
        "iterate", help="collect -> fit -> collect again with the controller, R rounds"
    )
    p.add_argument("recipe", help="path to a collectors/*.toml recipe (round 0 uses its behaviour)")
    p.add_argument("--rounds", type=_positive_int, default=2)
    p.add_argument("--kind", default="gbt", help="controller kind: gbt | mlp | gru")
    p.add_argument(
        "--labels",
        default="greedy",
        help="label strategy: greedy | annealed | long | final | end (branches) | outcome (no branches)",
    )
    p.add_argument("--store", required=True, help="store directory (all rounds collect into it)")
    p.add_argument(
        "--out", required=True, help="directory for round-<r>/ checkpoints and iterate.md"
    )
    p.add_argument("--epsilon", type=float, default=0.2, help="exploration around the controller")
    p.add_argument(
        "--tasks", type=_csv, default=list(DEMO_HELD_OUT), help="held-out evaluation tasks"
    )
    p.add_argument("--seeds", type=_positive_int, default=3)
    p.add_argument("--budget", type=_positive_int, help="override the held-out tasks' budgets")
    p.add_argument("--workers", type=_positive_int)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_iterate)

    p = sub.add_parser("demo", help="the whole pipeline on collectors/quickstart.toml")
    p.add_argument("--out", default="runs/demo", help="output directory (store/, model/, report/)")
    p.add_argument("--recipe", default=str(QUICKSTART_RECIPE))
    p.add_argument(
        "--tasks", type=_csv, default=list(DEMO_HELD_OUT), help="held-out evaluation tasks"
    )
    p.add_argument("--seeds", type=_positive_int, default=3)
    p.add_argument("--workers", type=_positive_int, default=2)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_demo)


def cmd_tasks(args: argparse.Namespace) -> int:
    from trajlib.tasks import generated_tasks, get_task, list_tasks

    if args.generated:
        fams = tuple(args.family) if args.family else None
        for t in generated_tasks(args.generated, args.start, fams, args.version):
            print(
                f"{t.name:9s} {t.family:21s} {t.optimizer:8s} lr={t.default_lr:<9g} "
                f"budget={t.budget:<5d} batch={t.batch_size:<4d} {t.description}"
            )
        return 0
    for name in list_tasks():
        t = get_task(name)
        print(
            f"{name:22s} {t.family:16s} {t.optimizer:6s} lr={t.default_lr:<8g} budget={t.budget:<6d} {t.description}"
        )
    return 0


def doctor_report() -> dict[str, Any]:
    """Versions, threads, accelerators and whether the native measurement kernels load
    (compiling them if needed)."""
    import importlib.metadata as md
    import platform

    import torch

    from trajlib.controllers._treewalk import native_status
    from trajlib.measure import _native

    versions: dict[str, str | None] = {}
    for dist in ("trajlib", "torch", "numpy", "polars", "pyarrow", "zarr", "lightgbm", "ray"):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            versions[dist] = None
    if versions["trajlib"] is None:  # run from a checkout (PYTHONPATH=.)
        import trajlib

        versions["trajlib"] = f"{trajlib.__version__} (from {Path(trajlib.__file__).parent})"
    t0 = time.perf_counter()
    lib = _native.lib()
    tree_walk = native_status()
    cuda = torch.cuda.is_available()
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
        "torch_threads": torch.get_num_threads(),
        "cuda": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if cuda
        else [],
        "native_kernels": lib is not None,
        "native_status": _native.status(),
        "native_load_s": round(time.perf_counter() - t0, 3),
        "native_tree_walk": tree_walk,
    }


def cmd_doctor(args: argparse.Namespace) -> int:
    rep = doctor_report()
    if args.json:
        print(json.dumps(rep))
        return 0
    print(f"python         {rep['python']} on {rep['platform']}")
    for dist, v in rep["versions"].items():
        print(f"{dist:14s} {v or '(not installed)'}")
    print(f"torch threads  {rep['torch_threads']}")
    print(f"cuda           {', '.join(rep['cuda']) or 'no GPU visible'}")
    state = "used" if rep["native_kernels"] else "NOT used (PyTorch fallback: same numbers, slower)"
    print(f"native kernels {state}: {rep['native_status']}")
    print(f"tree walk      {rep['native_tree_walk']}")
    return 0


def cmd_collect(args: argparse.Namespace) -> int:
    from trajlib.pipeline import collect_into
    from trajlib.store import open_store, redact_location

    report = collect_into(
        args.recipe,
        args.store,
        executor=args.executor,
        workers=args.workers,
        address=args.address,
        device=args.device,
        progress=not args.quiet,
    )
    print(
        f"collected {report.committed} runs ({report.skipped} already there, {report.diverged} diverged, "
        f"{report.failed} failed) of {report.total}: {report.steps:,} steps + {report.branch_steps:,} branch "
        f"steps in {report.wall_time_s:.1f} s into {redact_location(args.store)}"
        + (f" ({report.retries} transient store errors retried)" if report.retries else "")
    )
    for e in report.errors[:5]:
        print(f"  failed: {e}", file=sys.stderr)
    if args.compact:
        stats = open_store(args.store).compact()
        print(f"compacted: {stats}")
    return 1 if report.failed and not report.committed else 0


def cmd_fit(args: argparse.Namespace) -> int:
    from trajlib.controllers import fit_store

    ckpt, metrics = fit_store(
        args.store[0] if len(args.store) == 1 else list(args.store),
        kind=args.kind,
        labels=args.labels,
        out=args.out,
        feature_set=args.feature_set,
        random_state=args.seed,
        ensemble=args.ensemble,
        val_withhold=args.val_withhold,
        no_harm=args.no_harm,
        harm_z=args.harm_z,
        harm_margin=args.harm_margin,
        harm_precision=args.harm_precision,
        harm_per_action=args.harm_per_action,
    )
    print(f"wrote {ckpt}")
    print(
        json.dumps(
            {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}, indent=1
        )
    )
    return 0


def cmd_combine(args: argparse.Namespace) -> int:
    from trajlib.controllers import combine_checkpoints

    out = combine_checkpoints(
        args.primary, args.veto, args.out, veto_z=args.veto_z, overwrite=args.overwrite
    )
    print(f"wrote {out}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from trajlib.controllers import resolve_checkpoint
    from trajlib.evaluate import run_evaluation_parallel, write_report

    args.checkpoint = [str(resolve_checkpoint(c)) for c in args.checkpoint]  # names too
    for c in args.checkpoint:
        if not Path(c).exists():
            raise ConfigError("CHECKPOINT", "an existing checkpoint directory", c)
    res = run_evaluation_parallel(
        args.tasks,
        list(range(args.seeds)),
        baselines=args.baselines,
        checkpoints=args.checkpoint,
        robustness=args.robustness,
        pbt=not args.no_pbt,
        budget=args.budget,
        workers=args.workers,
        progress=not args.quiet,
    )
    names = ", ".join(f"`{c}`" for c in args.checkpoint)
    preamble = f"Controllers: {names}; baselines: {args.baselines}; seeds: {args.seeds}.\n"
    path = write_report(res, args.report, preamble=preamble)
    print(res.markdown())
    print(f"report: {path}")
    return 0


@contextlib.contextmanager
def _as_flags(*names: str) -> Iterator[None]:
    """Re-raise a pipeline's ConfigError about keyword ``name`` as one about the flag ``--name``."""
    try:
        yield
    except ConfigError as e:
        if e.field not in names:
            raise
        raise ConfigError(f"--{e.field}", e.expected, e.got) from None


def cmd_iterate(args: argparse.Namespace) -> int:
    from trajlib.pipeline import iterate, iterate_markdown

    with _as_flags("tasks", "epsilon"):
        rounds = iterate(
            args.recipe,
            store=args.store,
            out=args.out,
            rounds=args.rounds,
            kind=args.kind,
            labels=args.labels,
            epsilon=args.epsilon,
            tasks=args.tasks,
            seeds=args.seeds,
            budget=args.budget,
            workers=args.workers,
            progress=not args.quiet,
            log=print,
        )
    print(iterate_markdown(rounds), end="")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from trajlib.pipeline import demo

    with _as_flags("tasks"):
        res = demo(
            args.out,
            recipe=args.recipe,
            tasks=args.tasks,
            seeds=args.seeds,
            workers=args.workers,
            progress=not args.quiet,
            log=print,
        )
    print()
    print(res.evaluation.markdown())
    plots = ", ".join(p.name for p in sorted(res.report.parent.glob("*.png")))
    print(f"report: {res.report}  (plots: {plots})")
    print(f"demo finished in {res.wall_time_s:.0f} s")
    return 0
