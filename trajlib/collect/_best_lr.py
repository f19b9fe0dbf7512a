"""Where each task's best start LR sits: measured from a probe collection, used as a recipe's
start-LR centre.

A probe is a collection whose runs only follow the cosine base (``behaviour.kind = "keep"``, no
branches) from start LRs spread wide around each task's default. :func:`best_lr_table` reads it
back: per task, the start LR of the complete run with the lowest final validation loss (the
"tuned cosine" of that spread). A recipe with ``space.lr_center = "best"`` and
``collect.best_lr_table`` set draws its start LRs around those values for tasks that carry no
``best_lr`` of their own (generated tasks), so its runs start too low, about right and too high
in the proportions its ``lr_range`` says, not in those of the tasks' default LRs.

Why (issue 16, twenty-second pass): over gen2 tasks the best cosine start is a median ~15x the
task's default LR, so a collection centred on the default started most of its runs far below the
best LR, and a controller fitted on it learned to raise.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import polars as pl

from trajlib.errors import ConfigError

__all__ = ["BEST_LR_COLUMNS", "best_lr_table", "read_best_lr_table"]

#: The columns a best-LR table has; a recipe reads ``task`` and ``best_lr``.
BEST_LR_COLUMNS = ("task", "best_lr", "default_lr", "best_over_default", "runs", "complete")


def best_lr_table(store: Any) -> pl.DataFrame:
    """Per task of ``store`` (a :class:`~trajlib.store.Store`), the start LR of its complete run
    with the lowest final validation loss; ``runs`` / ``complete`` count the task's runs and
    those that finished with a finite validation loss (a task with none is left out). Every run
    must follow its base schedule unmoved (behaviour ``keep``): a run whose LR moved says nothing
    about its start LR."""
    from trajlib.tasks import get_task

    runs = store.runs().collect()
    if not runs.height:
        raise ConfigError("store", "a store with committed runs", "none")
    moved = runs.filter(pl.col("behaviour") != "keep")
    if moved.height:
        r = moved.row(0, named=True)
        raise ConfigError(
            "behaviour",
            "'keep' for every run of a best-LR probe (the LR must follow its base schedule)",
            r["behaviour"],
            f"run {r['run_id']}",
        )
    lr0 = [float(json.loads(e)["lr0"]) for e in runs["entry"].to_list()]
    runs = runs.with_columns(pl.Series("lr0", lr0, dtype=pl.Float64))
    rows = []
    for task in sorted(set(runs["task"].to_list())):
        g = runs.filter(pl.col("task") == task)
        ok = g.filter((pl.col("status") == "complete") & pl.col("final_val_loss").is_finite())
        if not ok.height:
            continue
        best = float(ok.sort("final_val_loss", "lr0")["lr0"][0])
        default = float(get_task(task).default_lr)
        rows.append((task, best, default, best / default, g.height, ok.height))
    return pl.DataFrame(rows, schema=list(BEST_LR_COLUMNS), orient="row")


def read_best_lr_table(path: str | Path) -> dict[str, float]:
    """``task -> best_lr`` from a CSV written by ``trajlib store best-lr`` (columns ``task`` and
    ``best_lr`` at least; every LR finite and positive, every task once)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError("collect.best_lr_table", "an existing CSV file", str(path))
    try:
        t = pl.read_csv(p)
    except Exception as e:  # noqa: BLE001
        raise ConfigError("collect.best_lr_table", "a CSV file", str(path), str(e)) from None
    missing = [c for c in ("task", "best_lr") if c not in t.columns]
    if missing:
        raise ConfigError("collect.best_lr_table", "columns task and best_lr", t.columns)
    out: dict[str, float] = {}
    for task, lr in zip(t["task"].cast(pl.Utf8).to_list(), t["best_lr"].to_list()):
        if task in out:
            raise ConfigError("collect.best_lr_table", "each task once", task, "repeated")
        if not (isinstance(lr, int | float) and math.isfinite(lr) and lr > 0):
            raise ConfigError("collect.best_lr_table", "a positive best_lr", lr, f"task {task}")
        out[task] = float(lr)
    return out
