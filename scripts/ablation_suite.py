"""The issue-16 ablation: fit controller variants on one store, run each on the held-out suite.

Each variant changes one thing against the shipped fit settings (the ``base`` row, named by
``--base-name``: ``v2`` on data/gen-v2, ``v3`` on data/gen-v3): data breadth (5 generated tasks
instead of 130), validation-optional training (off), the do-no-harm rule (off), the label strategy
(greedy / long / final instead of annealed), deploy-time lookahead (on, at every decision or only
where the rule is unsure). Every variant is a real fit on the store and a real suite run; baselines
(cosine, tuned cosine, schedule-free) come from one shared result cache, so they are computed
once. Prints and writes a markdown table.

    PYTHONPATH=. python scripts/ablation_suite.py --store data/gen-v2 --out runs/ablation \
        --seeds 3 --workers 2 [--only base,no-harm-rule] [--v1 models/trajlib-lr-v1/checkpoint]
    PYTHONPATH=. python scripts/ablation_suite.py --store data/gen-v3 --base-name v3 \
        --out runs/ablation-v3 --seeds 3 --workers 2
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import polars as pl

# The shipped recipe's fit settings; each variant overrides some of them.
BASE: dict[str, Any] = {
    "kind": "gbt",
    "labels": "annealed",
    "val_withhold": 0.5,
    "no_harm": True,
    "harm_precision": 0.8,
}
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "base": ("the shipped settings", {}),
    "5-tasks": ("data breadth: 5 generated tasks (80 runs) instead of 130", {"n_tasks": 5}),
    "no-val-withhold": ("validation-optional training off", {"val_withhold": 0.0}),
    "no-harm-rule": ("do-no-harm rule off (one model, argmax)", {"no_harm": False}),
    "labels-greedy": ("labels: greedy (validation loss after the branch)", {"labels": "greedy"}),
    "labels-long": ("labels: long (a discounted mix of horizons)", {"labels": "long"}),
    "labels-final": ("labels: final (annealing-law extrapolation to the end)", {"labels": "final"}),
    "lookahead": ("+ deploy-time lookahead (top-1 + keep, 10 steps)", {"lookahead": (1, 10)}),
    "lookahead-unsure": (
        "+ lookahead only where the rule is unsure (top-1 + keep, 10 steps + 5 cool-down)",
        {"lookahead": (1, 10, 5, "unsure")},
    ),
}


def _tasks(store: str, n: int) -> list[str]:
    from trajlib.store import open_store

    names = sorted(set(open_store(store).runs().collect()["task"].to_list()))
    names.sort(key=lambda t: int(t.split("-")[1]) if t.startswith("gen-") else 10**9)
    return names[:n]


def fit_variant(store: str, out: Path, settings: dict[str, Any]) -> Path:
    from trajlib.controllers import fit_store

    ckpt = out / "checkpoint"
    if (ckpt / "manifest.json").exists():
        return ckpt
    s = dict(settings)
    s.pop("lookahead", None)
    n_tasks = s.pop("n_tasks", None)
    tasks = _tasks(store, n_tasks) if n_tasks else None
    t0 = time.perf_counter()
    path, metrics = fit_store(store, out=ckpt, tasks=tasks, overwrite=True, **s)
    (out / "fit.json").write_text(
        json.dumps(
            {
                "settings": settings,
                "tasks": tasks,
                "fit_s": time.perf_counter() - t0,
                "metrics": metrics,
            },
            indent=1,
            default=str,
        )
    )
    return path


def _row(name: str, what: str, res: Any) -> dict[str, Any]:
    row: dict[str, Any] = {"variant": name, "what": what}
    for with_val, tag in ((True, "val"), (False, "noval")):
        s = res.summary.filter((pl.col("family") == "ALL") & (pl.col("with_val") == with_val))
        if s.height == 0:
            continue
        worst = res.summary.filter((pl.col("family") != "ALL") & (pl.col("with_val") == with_val))
        row[f"win_{tag}"] = float(s["win_rate"][0])
        row[f"ratio_cos_{tag}"] = float(s["median_ratio_cosine"][0])
        row[f"ratio_tuned_{tag}"] = float(s["median_ratio_tuned"][0])
        row[f"worst_family_{tag}"] = float(worst["median_ratio_cosine"].max())
        row[f"crashes_{tag}"] = int(s["crashes"][0])
    for with_val, tag in ((True, "val"), (False, "noval")):
        pr = res.pairs.filter(pl.col("with_val") == with_val)
        if pr.height:
            row[f"worst_run_{tag}"] = float(pr["ratio_cosine"].max())
            row[f"harmed_{tag}"] = float((pr["ratio_cosine"] > 1.10).mean())
    ctl = res.results.filter(pl.col("method") == "controller")
    row["compute_ratio"] = float(ctl["compute_ratio"].mean()) if ctl.height else 1.0
    return row


def markdown(rows: list[dict[str, Any]], seeds: int) -> str:
    head = (
        f"Held-out suite (11 families x 3 starts x {seeds} seeds per mode). win = share of runs "
        "strictly better than cosine from the same start; ratios are medians over runs; worst = "
        "the worst family's median ratio to cosine.\n\n"
        "| variant | what changes | win (val) | ratio to cosine (val) | ratio to tuned (val) | "
        "worst family (val) | win (no val) | ratio to cosine (no val) | ratio to tuned (no val) | "
        "worst family (no val) | runs > 1.10x cosine (val / no val) | worst run (val / no val) | "
        "crashes | compute |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in rows:

        def f(k: str, pct: bool = False, r: dict[str, Any] = r) -> str:
            v = r.get(k)
            if v is None:
                return "–"
            return f"{100 * v:.0f}%" if pct else f"{v:.3f}"

        crashes = r.get("crashes_val", 0) + r.get("crashes_noval", 0)
        lines.append(
            f"| {r['variant']} | {r['what']} | {f('win_val', True)} | {f('ratio_cos_val')} | "
            f"{f('ratio_tuned_val')} | {f('worst_family_val')} | {f('win_noval', True)} | "
            f"{f('ratio_cos_noval')} | {f('ratio_tuned_noval')} | {f('worst_family_noval')} | "
            f"{f('harmed_val', True)} / {f('harmed_noval', True)} | "
            f"{f('worst_run_val')} / {f('worst_run_noval')} | "
            f"{crashes} | {r.get('compute_ratio', 1.0):.2f}x |"
        )
    return head + "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--store", required=True)
    ap.add_argument("--out", default="runs/ablation")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cache", default=None, help="suite result cache (default <out>/cache)")
    ap.add_argument("--only", default="", help="comma-separated variant names")
    ap.add_argument("--v1", default="", help="also evaluate this checkpoint (the v1 row)")
    ap.add_argument("--families", default="", help="comma-separated suite families (default all)")
    ap.add_argument("--base-name", default="v2", help="the base row's name (its fit directory)")
    args = ap.parse_args()

    from trajlib.evaluate import run_suite

    out = Path(args.out)
    cache = args.cache or str(out / "cache")
    fams = [f for f in args.families.split(",") if f] or None
    names = [n for n in args.only.split(",") if n] or list(VARIANTS)
    rows = []
    todo: list[tuple[str, str, Path, Any]] = []
    if args.v1:
        what = "trajlib-lr-v1 (80 runs of 5 built-in tasks, MLP, long labels)"
        todo.append(("v1", what, Path(args.v1), None))
    for name in names:
        what, over = VARIANTS[name]
        if "lookahead" in over or name == "base":  # the base checkpoint (with lookahead)
            ckpt = fit_variant(args.store, out / args.base_name, BASE)
        else:
            ckpt = fit_variant(args.store, out / name, {**BASE, **over})
        label = args.base_name if name == "base" else name
        todo.append((label, what, ckpt, over.get("lookahead")))
    for name, what, ckpt, lookahead in todo:
        res = run_suite(
            ckpt,
            seeds=args.seeds,
            workers=args.workers,
            out=out / name / "suite",
            cache=cache,
            families=fams,
            progress=False,
            lookahead=lookahead,
        )
        rows.append(_row(name, what, res))
        print(json.dumps(rows[-1]), flush=True)
    md = markdown(rows, args.seeds)
    (out / "ablation.md").write_text(md)
    (out / "ablation.json").write_text(json.dumps(rows, indent=1))
    print(md)


if __name__ == "__main__":
    main()
