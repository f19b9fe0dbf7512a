"""``fit_from_table``: decision table + labels -> fitted controller + held-out offline metrics."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import polars as pl
from sklearn.base import clone
from sklearn.model_selection import GroupShuffleSplit

from trajlib import schema as S
from trajlib.controllers._base import Controller
from trajlib.controllers._metrics import offline_metrics
from trajlib.controllers._registry import get_controller_kind
from trajlib.errors import ConfigError

__all__ = ["fit_from_table", "infer_keep_index", "join_table", "SPLITS"]

SPLITS = ("auto", "task", "run")
_BEST = "best_action"


def _adv_columns(labels: pl.DataFrame) -> list[str]:
    cols: list[str] = []
    while f"adv_{len(cols)}" in labels.columns:
        cols.append(f"adv_{len(cols)}")
    if not cols:
        raise ConfigError("labels", "a labels frame with adv_0 .. adv_{A-1}", labels.columns)
    return cols


def infer_keep_index(targets: np.ndarray) -> int:
    """The action whose every known advantage is exactly 0 (how labels encode keep)."""
    known = ~np.isnan(targets)
    zero = [
        a
        for a in range(targets.shape[1])
        if known[:, a].any() and (targets[known[:, a], a] == 0).all()
    ]
    if len(zero) != 1:
        raise ConfigError(
            "keep_index",
            "inferable from the labels (one all-zero adv column)",
            zero,
            hint="pass keep_index=ActionSpace.keep_index",
        )
    return zero[0]


def join_table(
    table: pl.DataFrame, labels: pl.DataFrame, feature_names: list[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Features joined with labels on ``(run_id, step)``, sorted by run and step:
    ``(X [n, f], T [n, A], runs, steps, best action or None, tasks or None)``."""
    for name, frame in (("table", table), ("labels", labels)):
        missing = [c for c in (S.RUN_ID, S.STEP) if c not in frame.columns]
        if missing:
            raise ConfigError(name, f"a frame with columns {S.RUN_ID!r}, {S.STEP!r}", missing)
    feats = list(feature_names)
    missing = [c for c in feats if c not in table.columns]
    if missing or not feats:
        raise ConfigError(
            "feature_names", "non-empty names of columns of the table", missing or feats
        )
    adv = _adv_columns(labels)
    task_col = S.TASK if (S.TASK in table.columns or S.TASK in labels.columns) else None

    left = table.select(
        pl.col(S.RUN_ID).cast(pl.String),
        pl.col(S.STEP).cast(pl.Int64),
        *([pl.col(S.TASK)] if S.TASK in table.columns else []),
        *[pl.col(c).cast(pl.Float64) for c in feats],
    )
    right = labels.select(
        pl.col(S.RUN_ID).cast(pl.String),
        pl.col(S.STEP).cast(pl.Int64),
        *([pl.col(S.TASK)] if (S.TASK in labels.columns and S.TASK not in table.columns) else []),
        *([pl.col(_BEST)] if _BEST in labels.columns else []),
        *[pl.col(c).cast(pl.Float64) for c in adv],
    )
    joined = left.join(right, on=[S.RUN_ID, S.STEP], how="inner").sort(S.RUN_ID, S.STEP)
    if joined.height == 0:
        raise ConfigError(
            "labels", "rows matching the table on (run_id, step)", "no matching decision points"
        )
    X = joined.select(feats).to_numpy().astype(np.float64)
    T = joined.select(adv).to_numpy().astype(np.float64)
    runs = joined[S.RUN_ID].to_numpy()
    steps = joined[S.STEP].to_numpy()
    best = joined[_BEST].to_numpy() if _BEST in joined.columns else None
    tasks = joined[task_col].cast(pl.String).fill_null("").to_numpy() if task_col else None
    return X, T, runs, steps, best, tasks


def fit_from_table(
    table: pl.DataFrame,
    labels: pl.DataFrame,
    feature_names: list[str],
    kind: str | Controller,
    params: Mapping[str, Any] | None = None,
    *,
    keep_index: int | None = None,
    split: str = "auto",
    test_size: float = 0.25,
    random_state: int = 0,
    refit: bool = False,
    mask_columns: Sequence[int] | None = None,
) -> tuple[Controller, dict[str, float]]:
    """Join features with labels on ``(run_id, step)``, fit on a grouped split, measure the rest.

    Parameters
    ----------
    table: decision table: ``run_id``, ``step``, the feature columns (optionally ``task``).
    labels: output of :func:`trajlib.labels.make_labels` (``best_action``, ``adv_*``; optionally
        ``task``).
    feature_names: feature columns, in the order the controller will see them.
    kind: registered kind name, or an unfitted controller instance to clone.
    params: constructor parameters for ``kind`` (only with a name).
    keep_index: keep action; inferred from the labels (the all-zero ``adv`` column) if omitted.
    split: ``"task"`` holds out whole tasks, ``"run"`` whole runs; ``"auto"`` picks task when a
        ``task`` column has at least two tasks, else run. No run is ever on both sides.
    test_size: share of groups (tasks or runs) held out.
    random_state: seed of the split.
    refit: after measuring, refit on every row (the metrics still describe the held-out fit).
    mask_columns: feature indices (the validation-derived ones) to set to NaN for a second
        measurement on the held-out rows, reported with the prefix ``noval_`` (how the controller
        does in a loop that never reports validation).

    Returns
    -------
    (controller, metrics): metrics from :func:`offline_metrics` on the held-out rows plus
    ``n_train_rows``, ``n_test_rows``, ``n_train_runs``, ``n_test_runs``, ``n_test_tasks`` and
    ``split_by_task`` (1.0 / 0.0), all floats.
    """
    if split not in SPLITS:
        raise ConfigError("split", f"one of {SPLITS}", split)
    if not (isinstance(test_size, float | int) and 0 < test_size < 1):
        raise ConfigError("test_size", "a fraction in (0, 1)", test_size)
    X, T, runs, steps, best, tasks = join_table(table, labels, feature_names)
    keep = infer_keep_index(T) if keep_index is None else int(keep_index)
    if not 0 <= keep < T.shape[1]:
        raise ConfigError("keep_index", f"an action index in [0, {T.shape[1] - 1}]", keep_index)

    by_task = split == "task" or (
        split == "auto" and tasks is not None and len(np.unique(tasks)) >= 2
    )
    if by_task and (tasks is None or len(np.unique(tasks)) < 2):
        raise ConfigError("split", "'task' only with a task column holding >= 2 tasks", split)
    group = tasks if (by_task and tasks is not None) else runs
    if len(np.unique(group)) < 2:
        raise ConfigError(
            "table", "at least 2 runs to hold one out", f"{len(np.unique(group))} group(s)"
        )
    splitter = GroupShuffleSplit(n_splits=1, test_size=test_size, random_state=random_state)
    train, test = next(splitter.split(X, groups=group))

    if isinstance(kind, Controller):
        if params:
            raise ConfigError("params", "empty when kind is a controller instance", params)
        proto = kind
    else:
        proto = get_controller_kind(kind)(**dict(params or {}))
    ctl = clone(proto)
    ctl.fit(X[train], T[train], groups=runs[train], order=steps[train])
    pred = ctl.predict_values(X[test], groups=runs[test], order=steps[test])
    metrics = offline_metrics(pred, T[test], keep, None if best is None else best[test])
    metrics.update(
        n_train_rows=float(train.size),
        n_test_rows=float(test.size),
        n_train_runs=float(len(np.unique(runs[train]))),
        n_test_runs=float(len(np.unique(runs[test]))),
        n_test_tasks=float(len(np.unique(tasks[test]))) if tasks is not None else float("nan"),
        split_by_task=1.0 if by_task else 0.0,
    )
    if mask_columns:
        Xm = X[test].copy()
        Xm[:, list(mask_columns)] = np.nan
        pm = ctl.predict_values(Xm, groups=runs[test], order=steps[test])
        noval = offline_metrics(pm, T[test], keep, None if best is None else best[test])
        metrics.update({f"noval_{k}": v for k, v in noval.items()})
    if refit:
        ctl = clone(proto).fit(X, T, groups=runs, order=steps)
    return ctl, metrics
