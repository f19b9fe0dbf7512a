"""LR sweep of every built-in task: constant LR, the task's own budget, final validation loss.

For each task, ``--n-lrs`` log-spaced LRs from default/``--span`` to default*``--span`` times
``--seeds`` seeds are trained together as one population (K = n_lrs * seeds), so a task's sweep
costs about one population run. Prints a markdown table (task, family, optimizer, budget, default
LR, best LR found, default/best ratio, per-step time of one run) and writes it, with the full grid,
to ``--out`` (default docs/tasks.md's generated section is printed; paste it in).

    PYTHONPATH=. python scripts/sweep_tasks.py [--tasks a b] [--out sweep.json]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import numpy as np
import torch

from trajlib.collect._engine import Population
from trajlib.tasks import get_task, list_tasks


def sweep(name: str, n_lrs: int, seeds: int, span: float) -> dict:
    task = get_task(name)
    data = task.make_data()
    grid = task.default_lr * np.logspace(-math.log10(span), math.log10(span), n_lrs)
    lrs = np.repeat(grid, seeds)
    member_seeds = [1000 + s for _ in grid for s in range(seeds)]
    pop = Population(task, data, member_seeds, {"lr": lrs}, record=False)
    lr = torch.as_tensor(lrs, dtype=torch.float32)
    t0 = time.perf_counter()
    for _ in range(task.budget):
        pop.step(lr)
    wall = time.perf_counter() - t0
    val = pop.evaluate("val")[0].numpy().reshape(n_lrs, seeds)
    val = np.where(np.isfinite(val), val, np.inf)
    mean = val.mean(1)
    best = int(np.argmin(mean))
    single = Population(task, data, [0], {"lr": [task.default_lr]}, record=True)
    one = torch.tensor([task.default_lr])
    t1 = time.perf_counter()
    for _ in range(task.budget):
        single.step(one)
    run_s = time.perf_counter() - t1
    return {
        "task": name,
        "family": task.family,
        "optimizer": task.optimizer,
        "budget": task.budget,
        "default_lr": task.default_lr,
        "best_lr": float(grid[best]),
        "ratio": task.default_lr / float(grid[best]),
        "grid": grid.tolist(),
        "final_val_loss": [float(v) for v in mean],
        # the grid is symmetric around the default, so the default itself lies between two
        # points; report the one just below it
        "near_default_lr": float(grid[n_lrs // 2 - 1]),
        "default_val_loss": float(mean[n_lrs // 2 - 1]),
        "best_val_loss": float(mean[best]),
        "sweep_wall_s": wall,
        "run_s": run_s,
    }


def table(rows: list[dict]) -> str:
    head = (
        "| task | family | optimizer | budget | default LR | best LR found | default/best | "
        "val loss near default* | at best | one run (s, recorded) |\n"
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n"
    )
    lines = [
        f"| {r['task']} | {r['family']} | {r['optimizer']} | {r['budget']} | "
        f"{r['default_lr']:.3g} | {r['best_lr']:.3g} | {r['ratio']:.2g} | "
        f"{r['default_val_loss']:.3f} | {r['best_val_loss']:.3f} | {r['run_s']:.1f} |"
        for r in rows
    ]
    return head + "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="*", default=list_tasks())
    ap.add_argument("--n-lrs", type=int, default=8)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--span", type=float, default=30.0, help="grid from default/span to *span")
    ap.add_argument("--out", default="", help="write the rows as JSON here")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for name in args.tasks:
        r = sweep(name, args.n_lrs, args.seeds, args.span)
        rows.append(r)
        print(
            f"{name}: best {r['best_lr']:.3g} (default {r['default_lr']:.3g}, "
            f"ratio {r['ratio']:.2g}), sweep {r['sweep_wall_s']:.1f}s, run {r['run_s']:.1f}s",
            file=sys.stderr,
            flush=True,
        )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
