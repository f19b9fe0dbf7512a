"""Ablation: label strategy x controller kind x way to act (free / residual), held-out final loss.

    python scripts/ablation.py --free data/full --residual data/full-residual --out runs/ablation \
        [--tasks synth-classification,char-lm] [--seeds 5] [--workers 16] [--fit-only | --eval-only]

Fits every combination into OUT/models/<mode>-<kind>-<labels>/ (skipping ones that exist), then
trains every held-out task x seed with each controller and with constant / cosine baselines from
the task's default LR (a process pool, one thread per process), and writes OUT/ablation.md and
OUT/ablation.csv (final validation loss, mean and 95 % bootstrap CI over seeds; test loss).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import math
import multiprocessing as mp
import sys
import time
from pathlib import Path

KINDS = ("gbt", "mlp", "gru")
LABELS = ("greedy", "annealed", "long")


def _fit(args: tuple[str, str, str, str, str]) -> tuple[str, dict]:
    store, mode, kind, labels, out = args
    import torch

    torch.set_num_threads(1)
    from trajlib.controllers import fit_store

    if Path(out, "manifest.json").exists():
        return out, {}
    _, metrics = fit_store(store, kind=kind, labels=labels, out=out, overwrite=True)
    return out, metrics


def _eval(job: tuple[str, str, str | None, int]) -> dict:
    task_name, method_name, ckpt, seed = job
    import torch

    torch.set_num_threads(1)
    from trajlib.evaluate import constant_method, controller_method, cosine_method, train_task
    from trajlib.tasks import get_task

    if method_name == "constant":
        method = constant_method()
    elif method_name == "cosine":
        method = cosine_method()
    else:
        method = controller_method(ckpt, name=method_name)
    tr = train_task(get_task(task_name), method, seed)
    return {
        "task": task_name,
        "method": method_name,
        "seed": seed,
        "final_val_loss": tr.final_val_loss,
        "test_loss": tr.test_loss,
        "diverged": tr.diverged,
        "wall_time_s": tr.wall_time_s,
    }


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--free", required=True)
    p.add_argument("--residual")
    p.add_argument("--out", required=True)
    p.add_argument("--tasks", default="synth-classification,char-lm")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--fit-only", action="store_true")
    p.add_argument("--eval-only", action="store_true")
    a = p.parse_args()
    out = Path(a.out)
    stores = {"free": a.free} | ({"residual": a.residual} if a.residual else {})
    fits = [
        (s, m, k, lab, str(out / "models" / f"{m}-{k}-{lab}"))
        for m, s in stores.items()
        for k in KINDS
        for lab in LABELS
    ]
    ctx = mp.get_context("spawn")
    t0 = time.time()
    if not a.eval_only:
        with cf.ProcessPoolExecutor(a.workers, mp_context=ctx) as pool:
            for path, metrics in pool.map(_fit, fits):
                if metrics:
                    Path(path, "..", Path(path).name + ".metrics.json").resolve().write_text(
                        json.dumps(metrics)
                    )
                print(f"fit {path} ({time.time() - t0:.0f} s)", file=sys.stderr)
    if a.fit_only:
        return 0
    tasks = a.tasks.split(",")
    methods: list[tuple[str, str | None]] = [("constant", None), ("cosine", None)]
    methods += [(Path(f[4]).name, f[4]) for f in fits]
    jobs = [(t, m, c, s) for t in tasks for s in range(a.seeds) for m, c in methods]
    rows = []
    with cf.ProcessPoolExecutor(a.workers, mp_context=ctx) as pool:
        for i, r in enumerate(pool.map(_eval, jobs, chunksize=1)):
            rows.append(r)
            if i % 20 == 0:
                print(f"eval {i + 1}/{len(jobs)} ({time.time() - t0:.0f} s)", file=sys.stderr)
    import polars as pl

    from trajlib.evaluate._report import bootstrap_ci

    df = pl.DataFrame(rows)
    df.write_csv(out / "ablation_runs.csv")
    lines = [
        "| task | method | final val loss, mean [95% CI] | test loss | vs cosine (median ratio) | diverged |",
        "|---|---|---|---|---|---|",
    ]
    cos = {(r["task"], r["seed"]): r["final_val_loss"] for r in rows if r["method"] == "cosine"}
    summary = []
    for (task, method), g in df.group_by(["task", "method"], maintain_order=True):
        m, lo, hi = bootstrap_ci(g["final_val_loss"].to_list())
        ratios = [
            r["final_val_loss"] / cos[(task, r["seed"])]
            for r in g.iter_rows(named=True)
            if math.isfinite(r["final_val_loss"]) and cos.get((task, r["seed"]))
        ]
        med = sorted(ratios)[len(ratios) // 2] if ratios else math.nan
        tl = bootstrap_ci(g["test_loss"].to_list())[0]
        summary.append(
            {
                "task": task,
                "method": method,
                "final_val_loss": m,
                "lo": lo,
                "hi": hi,
                "test_loss": tl,
                "ratio_vs_cosine": med,
                "diverged": int(g["diverged"].sum()),
            }
        )
        lines.append(
            f"| {task} | {method} | {m:.3f} [{lo:.3f}, {hi:.3f}] | {tl:.3f} | {med:.3f} | "
            f"{int(g['diverged'].sum())}/{g.height} |"
        )
    pl.DataFrame(summary).write_csv(out / "ablation.csv")
    (out / "ablation.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"total {time.time() - t0:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
