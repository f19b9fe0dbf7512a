"""The pipeline commands: tasks, doctor, collect, fit, evaluate, demo."""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path
from typing import Any

from trajlib.errors import ConfigError

REPO_COLLECTORS = Path(__file__).resolve().parents[2] / "collectors"
DEMO_HELD_OUT = ("synth-classification", "char-lm")


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


def add_main_commands(sub: Any) -> None:
    p = sub.add_parser("tasks", help="list the built-in tasks")
    p.set_defaults(func=cmd_tasks)

    p = sub.add_parser(
        "doctor",
        help="what trajlib runs on here: versions, threads, GPUs, native kernels (for bug reports)",
    )
    p.add_argument("--json", action="store_true", help="one JSON object instead of lines")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("collect", help="run a collection recipe into a store")
    p.add_argument("recipe", help="path to a collectors/*.toml recipe")
    p.add_argument("--store", required=True, help="store directory (created if missing)")
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

    p = sub.add_parser("fit", help="fit a controller on a store")
    p.add_argument("store", help="store directory")
    p.add_argument("--kind", default="gbt", help="controller kind: gbt | mlp | gru")
    p.add_argument("--labels", default="greedy", help="label strategy: greedy | annealed | long")
    p.add_argument("--set", dest="feature_set", default="default", help="feature set name")
    p.add_argument("--out", required=True, help="checkpoint directory to write")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_fit)

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

    p = sub.add_parser(
        "iterate", help="collect -> fit -> collect again with the controller, R rounds"
    )
    p.add_argument("recipe", help="path to a collectors/*.toml recipe (round 0 uses its behaviour)")
    p.add_argument("--rounds", type=_positive_int, default=2)
    p.add_argument("--kind", default="gbt", help="controller kind: gbt | mlp | gru")
    p.add_argument("--labels", default="greedy", help="label strategy: greedy | annealed | long")
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
    p.add_argument("--recipe", default=str(REPO_COLLECTORS / "quickstart.toml"))
    p.add_argument(
        "--tasks", type=_csv, default=list(DEMO_HELD_OUT), help="held-out evaluation tasks"
    )
    p.add_argument("--seeds", type=_positive_int, default=3)
    p.add_argument("--workers", type=_positive_int, default=2)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_demo)


def cmd_tasks(args: argparse.Namespace) -> int:
    from trajlib.tasks import get_task, list_tasks

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
    return 0


def cmd_collect(args: argparse.Namespace) -> int:
    from trajlib.collect import collect, load_recipe
    from trajlib.store import create_store, open_store

    recipe = load_recipe(args.recipe)  # validated before anything runs or is written
    policy_factory = None
    if "controller" in recipe.behaviour.kinds:
        from trajlib.controllers import ControllerPolicy, verify_checkpoint

        ckpt = recipe.behaviour.checkpoint
        if not ckpt or not Path(ckpt).is_dir():
            raise ConfigError("behaviour.checkpoint", "a controller checkpoint directory", ckpt)
        problems = verify_checkpoint(ckpt)
        if problems:
            raise ConfigError("behaviour.checkpoint", "a valid checkpoint", ckpt, problems[0])
        policy_factory = functools.partial(ControllerPolicy, ckpt)
    create_store(args.store, exist_ok=True)
    report = collect(
        recipe,
        functools.partial(open_store, args.store),
        executor=args.executor,
        workers=args.workers,
        address=args.address,
        device=args.device,
        progress=not args.quiet,
        policy_factory=policy_factory,
    )
    print(
        f"collected {report.committed} runs ({report.skipped} already there, {report.diverged} diverged, "
        f"{report.failed} failed) of {report.total}: {report.steps:,} steps + {report.branch_steps:,} branch "
        f"steps in {report.wall_time_s:.1f} s into {args.store}"
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
        args.store,
        kind=args.kind,
        labels=args.labels,
        out=args.out,
        feature_set=args.feature_set,
        random_state=args.seed,
    )
    print(f"wrote {ckpt}")
    print(
        json.dumps(
            {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}, indent=1
        )
    )
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from trajlib.evaluate import run_evaluation_parallel, write_report

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


def cmd_iterate(args: argparse.Namespace) -> int:
    import dataclasses
    import math

    from trajlib.collect import collect, load_recipe
    from trajlib.controllers import ControllerPolicy, fit_store
    from trajlib.evaluate import controller_method, run_evaluation
    from trajlib.store import create_store, open_store
    from trajlib.tasks import get_task

    if not 0 <= args.epsilon <= 1:
        raise ConfigError("--epsilon", "a probability in [0, 1]", args.epsilon)
    for t in args.tasks:
        get_task(t)
    base = load_recipe(args.recipe)
    held = set(args.tasks) & set(base.collect.tasks)
    if held:
        raise ConfigError(
            "--tasks", "tasks the recipe does not collect from (held out)", sorted(held)
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    create_store(args.store, exist_ok=True)
    rows = []
    ckpt: Path | None = None
    for r in range(args.rounds):
        recipe = base
        policy_factory = None
        if r > 0 and ckpt is not None:
            recipe = dataclasses.replace(
                base,
                name=f"{base.name}-round{r}",
                collect=dataclasses.replace(base.collect, seed=base.collect.seed + 1000 * r),
                behaviour=dataclasses.replace(
                    base.behaviour, kind="controller", epsilon=args.epsilon, checkpoint=str(ckpt)
                ),
            )
            policy_factory = functools.partial(ControllerPolicy, str(ckpt))
        print(
            f"[round {r}] collect ({recipe.behaviour.kinds[0]}{'' if r == 0 else f', epsilon {args.epsilon}'})"
        )
        rep = collect(
            recipe,
            functools.partial(open_store, args.store),
            workers=args.workers,
            progress=not args.quiet,
            policy_factory=policy_factory,
        )
        ckpt, metrics = fit_store(
            args.store, kind=args.kind, labels=args.labels, out=out / f"round-{r}", overwrite=True
        )
        res = run_evaluation(
            [controller_method(ckpt)],
            args.tasks,
            list(range(args.seeds)),
            budget=args.budget,
            progress=False,
        )
        losses = [t.final_val_loss for t in res.traces]
        finite = [v for v in losses if math.isfinite(v)]
        row = {
            "round": r,
            "runs": rep.committed + rep.skipped,
            "new_runs": rep.committed,
            "regret": metrics.get("regret", math.nan),
            "regret_keep": metrics.get("regret_keep", math.nan),
            "agreement": metrics.get("agreement", math.nan),
            "held_out_final_val_loss": sum(finite) / len(finite) if finite else math.nan,
        }
        rows.append(row)
        print(
            f"[round {r}] regret {row['regret']:.4f} (keep {row['regret_keep']:.4f}), held-out final val loss "
            f"{row['held_out_final_val_loss']:.4f}"
        )
    md = [
        "| round | new runs | offline regret | regret of keep | agreement | held-out final val loss |",
        "|---|---|---|---|---|---|",
    ]
    md += [
        f"| {x['round']} | {x['new_runs']} | {x['regret']:.4f} | {x['regret_keep']:.4f} | {x['agreement']:.3f} "
        f"| {x['held_out_final_val_loss']:.4f} |"
        for x in rows
    ]
    (out / "iterate.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from trajlib.collect import collect, load_recipe
    from trajlib.controllers import fit_store
    from trajlib.evaluate import run_evaluation_parallel, write_report
    from trajlib.store import create_store, open_store

    out = Path(args.out)
    t0 = time.perf_counter()
    recipe = load_recipe(args.recipe)
    held = set(args.tasks) & set(recipe.collect.tasks)
    if held:
        raise ConfigError(
            "--tasks", "tasks the recipe does not collect from (held out)", sorted(held)
        )
    store_dir, model_dir, report_dir = out / "store", out / "model", out / "report"
    print(f"[1/3] collect {args.recipe} -> {store_dir}")
    create_store(store_dir, exist_ok=True)
    rep = collect(
        recipe,
        functools.partial(open_store, store_dir),
        workers=args.workers,
        progress=not args.quiet,
    )
    print(
        f"      {rep.committed} new runs, {rep.skipped} already there, {rep.steps:,} steps + "
        f"{rep.branch_steps:,} branch steps, {rep.wall_time_s:.0f} s"
    )
    print(f"[2/3] fit gbt controller -> {model_dir}")
    ckpt, metrics = fit_store(store_dir, kind="gbt", labels="greedy", out=model_dir, overwrite=True)
    print(
        "      offline: "
        + ", ".join(f"{k}={v:.3f}" for k, v in metrics.items() if isinstance(v, float))
    )
    print(
        f"[3/3] evaluate on held-out tasks {', '.join(args.tasks)} x {args.seeds} seeds -> {report_dir}"
    )
    res = run_evaluation_parallel(
        args.tasks,
        list(range(args.seeds)),
        baselines="demo",
        checkpoints=[ckpt],
        workers=args.workers,
        progress=not args.quiet,
    )
    path = write_report(
        res,
        report_dir,
        title="trajlib demo: held-out evaluation",
        preamble=f"Recipe `{args.recipe}`; controller `{ckpt}` (gbt, greedy labels); "
        f"held-out tasks never collected from.\n",
    )
    print()
    print(res.markdown())
    print(f"report: {path}  (plots: {', '.join(p.name for p in sorted(report_dir.glob('*.png')))})")
    print(f"demo finished in {time.perf_counter() - t0:.0f} s")
    return 0
