"""Fit a controller straight from a trajectory store: features -> labels -> fit -> checkpoint."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from trajlib import schema as S
from trajlib.controllers._checkpoint import save_controller
from trajlib.controllers._fit import fit_from_table
from trajlib.errors import ConfigError
from trajlib.features import derive, get_feature_set
from trajlib.labels import get_label_strategy, make_labels, trajectory_labels
from trajlib.spec import DecisionSpec, FeatureSetRef, RunConfig
from trajlib.store import open_store

__all__ = ["fit_store", "training_table"]


def _one(values: list[Any], field: str) -> Any:
    uniq = {json.dumps(v, sort_keys=True) for v in values}
    if len(uniq) != 1:
        raise ConfigError(
            field,
            "the same value in every run of the store (fit one controller per setting)",
            sorted(uniq)[:3],
        )
    return values[0]


def training_table(
    store: Any, feature_set: str = "default", labels: str = "greedy", tasks: list[str] | None = None
) -> tuple[pl.DataFrame, pl.DataFrame, DecisionSpec]:
    """Decision table (features), labels and the decision spec shared by a store's runs.

    Returns ``(table, labels, spec)``; ``table`` has ``run_id``, ``step``, ``task`` and the
    feature columns; ``labels`` comes from :func:`trajlib.labels.make_labels`; ``spec`` holds
    the action space, hyperparameter bounds, decision interval, mode and base schedule shared by
    all runs, and the feature set the table was derived with.
    """
    table, lab, spec, _ = _training_data(store, feature_set, labels, tasks)
    return table, lab, spec


def _training_data(
    store: Any, feature_set: str, labels: str, tasks: list[str] | None
) -> tuple[pl.DataFrame, pl.DataFrame, DecisionSpec, pl.DataFrame]:
    """:func:`training_table` plus the runs frame."""
    st = open_store(store) if not hasattr(store, "steps") else store
    runs = st.runs(task=tasks).collect()
    if runs.height == 0:
        raise ConfigError("STORE", "a store with committed runs", str(getattr(st, "path", store)))
    decisions = st.decisions(task=tasks).collect()
    strat = get_label_strategy(labels)
    branches = st.branches(task=tasks).collect() if strat.needs_branches else None
    if branches is not None and branches.height == 0:
        raise ConfigError(
            "STORE",
            "runs collected with branching on (labels come from branch outcomes)",
            "no branch rows",
            hint="label runs recorded without branches with labels='outcome'",
        )
    specs = [RunConfig.from_dict(json.loads(e)).decision for e in runs[S.ENTRY].to_list() if e]
    _one([d.action_space.to_dict() for d in specs], "actions")
    _one([d.every for d in specs], "every")
    _one([[d.mode, d.base_schedule] for d in specs], "space")
    _one([d.hp_space.to_dict() for d in specs], "hp_space")
    fs = get_feature_set(feature_set)
    spec = specs[0].with_feature_set(
        FeatureSetRef(name=fs.name, version=str(fs.version), hash=fs.hash, names=tuple(fs.names))
    )
    points = decisions.select(S.RUN_ID, S.STEP).unique().sort(S.RUN_ID, S.STEP)
    table = derive(st.steps(task=tasks), points, runs.select(S.RUN_ID, S.BUDGET), fs)
    table = table.join(runs.select(S.RUN_ID, S.TASK), on=S.RUN_ID, how="left")
    keep, n_act = spec.action_space.keep_index, len(spec.action_space)
    if branches is None:  # labels from the trajectory and the logged propensities
        lab = trajectory_labels(st.steps(task=tasks), decisions, keep, n_act, strat)
    else:
        lab = make_labels(branches, strat, keep_index=keep, n_actions=n_act)
    return table, lab, spec, runs


def fit_store(
    store: str | Path,
    *,
    kind: str = "gbt",
    labels: str = "greedy",
    out: str | Path,
    feature_set: str = "default",
    params: Mapping[str, Any] | None = None,
    random_state: int = 0,
    tasks: list[str] | None = None,
    overwrite: bool = False,
) -> tuple[Path, dict[str, float]]:
    """Fit a ``kind`` controller on ``labels`` from the store and write a checkpoint to ``out``.

    ``labels`` names a branch strategy (``greedy``, ``annealed``, ``long``: stores collected with
    branches) or ``outcome`` (any store, e.g. runs recorded without branches: only the taken
    action's target is known per decision, the others are NaN and masked by every kind).

    Offline metrics come from a split grouped by task (or by run with one task); the saved
    controller is then refit on every row. Returns ``(checkpoint path, metrics)``.
    """
    get_label_strategy(labels)  # unknown name -> clear error before any work
    table, lab, spec, runs = _training_data(store, feature_set, labels, tasks)
    names = list(spec.feature_set.names) if spec.feature_set else []
    controller, metrics = fit_from_table(
        table,
        lab,
        names,
        kind,
        params,
        keep_index=spec.action_space.keep_index,
        random_state=random_state,
        refit=True,
    )
    feats = table.select(names).to_numpy().astype(np.float64)
    nan_fraction = {n: float(np.mean(~np.isfinite(feats[:, i]))) for i, n in enumerate(names)}
    best = lab["best_action"].to_numpy()
    training_data = {
        "store": str(store),
        "n_rows": int(table.height),
        "n_runs": int(runs.height),
        "tasks": sorted(set(runs[S.TASK].to_list())),
        "best_action_share": {
            str(a): float(np.mean(best == a)) for a in range(len(spec.action_space))
        },
        "feature_nan_fraction": nan_fraction,
    }
    path = save_controller(
        controller,
        out,
        spec=spec,
        label_strategy=labels,
        training_data=training_data,
        offline_metrics=metrics,
        overwrite=overwrite,
    )
    return Path(path), metrics
