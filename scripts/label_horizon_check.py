"""Which label strategy ranks a decision's actions like the end of the run does?

    python scripts/label_horizon_check.py [--out DIR] [--modes free,wsd] [--budget 300] ...

For each mode it collects the same runs twice (same tasks, seeds, start LRs, behaviour; batches
are a function of (seed, step), so the main trajectories are identical, which it checks):

* a **short** store: every action branched for ``every`` steps plus a cool-down of ``every // 5``
  (what the labels ``greedy``, ``annealed``, ``long`` and ``final`` are computed from);
* a **long** store: every action branched to the end of the budget (``horizon = budget``). In
  ``free`` mode (constant base) each long branch then cools down linearly to 0 over
  ``round(0.1 * budget)`` steps and the truth is that cooled loss (``annealed`` on the long
  store); in ``wsd`` mode (residual on a warmup-stable-decay base, which ends at 0) the truth is
  the loss at the end of the budget (``greedy`` on the long store). Both match ``final``'s
  assumption (the action's multiplier kept to the end, ending with a cool-down).

It prints, per mode and strategy, the per-decision Spearman correlation between the strategy's
action ranking and the true end-of-run ranking (mean, median), the top-1 agreement and the mean
regret in log-loss (:func:`trajlib.labels.rank_agreement`), and ``final``'s fit counts.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path
from typing import Any

import polars as pl

from trajlib import schema as S
from trajlib.labels import FinalLabels, make_labels, rank_agreement
from trajlib.pipeline import collect_into
from trajlib.spec import RunConfig
from trajlib.store import open_store

STRATEGIES = ("greedy", "annealed", "long", "final")


def recipe(
    tasks: list[str], runs_per_task: int, budget: int, every: int, mode: str, seed: int = 0
) -> dict[str, Any]:
    """The shared recipe of both stores (branch section set by :func:`pair`)."""
    space = (
        {"mode": "free", "base_schedule": "constant"}
        if mode == "free"
        else {"mode": "residual", "base_schedule": mode}
    )
    return {
        "name": f"horizon-check-{mode}",
        "collect": {
            "tasks": tasks,
            "runs_per_task": runs_per_task,
            "budget": budget,
            "every": every,
            "val_every": every,
            "seed": seed,
        },
        "space": space,
        "executor": {"workers": 1},
    }


def pair(base: dict[str, Any], out: Path) -> tuple[Path, Path, str]:
    """Collect the short and the long store of ``base``; ``(short, long, truth strategy)``."""
    every, budget = base["collect"]["every"], base["collect"]["budget"]
    free = base["space"]["mode"] == "free"
    short, long_ = copy.deepcopy(base), copy.deepcopy(base)
    short["branch"] = {"horizon": every, "cooldown": max(1, every // 5)}
    long_["branch"] = {"horizon": budget, "cooldown": round(0.1 * budget) if free else 0}
    paths = []
    for name, rec in (("short", short), ("long", long_)):
        path = out / f"{base['name']}-{name}"
        collect_into(_as_recipe(rec), path, progress=False)
        paths.append(path)
    return paths[0], paths[1], "annealed" if free else "greedy"


def _as_recipe(d: dict[str, Any]) -> Any:
    from trajlib.collect import parse_recipe

    return parse_recipe(d)


def _run_key(runs: pl.DataFrame) -> pl.DataFrame:
    """run_id -> (task, index) from the entry (run ids differ between the stores: the branch
    settings enter the id)."""
    idx = [json.loads(e)["index"] for e in runs[S.ENTRY].to_list()]
    return runs.select(S.RUN_ID, S.TASK).with_columns(pl.Series("index", idx))


def check(short: Path, long_: Path, truth: str) -> dict[str, Any]:
    """Per-strategy agreement of ``short``'s labels with the end-of-run labels of ``long_``."""
    st_s, st_l = open_store(short), open_store(long_)
    runs_s, runs_l = st_s.runs().collect(), st_l.runs().collect()
    keep = RunConfig.from_dict(json.loads(runs_s[S.ENTRY][0])).decision.action_space.keep_index
    br_s, br_l = st_s.branches().collect(), st_l.branches().collect()
    n_act = int(br_s[S.ACTION].max()) + 1  # type: ignore[arg-type]
    # map the long store's run ids onto the short store's
    m = _run_key(runs_l).join(_run_key(runs_s), on=[S.TASK, "index"], suffix="_s")
    ids = dict(zip(m[S.RUN_ID].to_list(), m[f"{S.RUN_ID}_s"].to_list(), strict=True))
    ref = make_labels(br_l, truth, keep, n_actions=n_act).with_columns(
        pl.col(S.RUN_ID).replace_strict(ids, default=None)
    )
    # identical main trajectories?
    loss_s = st_s.steps().select(S.RUN_ID, S.STEP, S.LOSS).collect()
    loss_l = (
        st_l.steps()
        .select(S.RUN_ID, S.STEP, S.LOSS)
        .collect()
        .with_columns(pl.col(S.RUN_ID).replace_strict(ids, default=None))
    )
    jl = loss_s.join(loss_l, on=[S.RUN_ID, S.STEP], suffix="_l")
    same = float((jl[S.LOSS] - jl[f"{S.LOSS}_l"]).abs().max() or 0.0)  # type: ignore[arg-type]
    out: dict[str, Any] = {"runs": runs_s.height, "main_loss_max_abs_diff": same, "rows": {}}
    steps = st_s.steps()
    for name in STRATEGIES:
        strat: Any = FinalLabels() if name == "final" else name
        t0 = time.perf_counter()
        lab = make_labels(br_s, strat, keep, n_actions=n_act, steps=steps, runs=runs_s)
        row = rank_agreement(lab, ref)
        row["seconds"] = time.perf_counter() - t0
        if name == "final":
            row |= {f"final_{k}": float(v) for k, v in strat.stats.items()}
        out["rows"][name] = row
    return out


def _print(mode: str, res: dict[str, Any]) -> None:
    print(
        f"\n== mode {mode}: {res['runs']} runs, main-trajectory max |loss diff| between the two "
        f"stores {res['main_loss_max_abs_diff']:.2g}"
    )
    print(
        f"{'strategy':10s} {'n':>5s} {'rho mean':>9s} {'rho med':>8s} {'top1':>6s} {'regret':>8s}"
    )
    for name, r in res["rows"].items():
        print(
            f"{name:10s} {int(r['n_points']):5d} {r['spearman_mean']:9.3f} "
            f"{r['spearman_median']:8.3f} {r['top1']:6.3f} {r['regret']:8.4f}"
        )
    fin = res["rows"].get("final", {})
    if fin:
        print(
            f"final: {int(fin['final_runs_fitted'])}/{int(fin['final_runs'])} runs fitted, "
            f"{int(fin['final_branches_fallback'])} branch rows fell back to greedy"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="data/horizon-check", help="folder for the stores")
    ap.add_argument("--modes", default="free,wsd", help="free and/or a residual base: wsd, cosine")
    ap.add_argument("--tasks", default="teacher-student,digits-mlp")
    ap.add_argument("--runs-per-task", type=int, default=6)
    ap.add_argument("--budget", type=int, default=300)
    ap.add_argument("--every", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="also print the results as JSON")
    args = ap.parse_args()
    out = Path(args.out)
    results = {}
    for mode in args.modes.split(","):
        base = recipe(
            args.tasks.split(","), args.runs_per_task, args.budget, args.every, mode, args.seed
        )
        short, long_, truth = pair(base, out)
        results[mode] = check(short, long_, truth)
        _print(mode, results[mode])
    if args.json:
        print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
