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
from trajlib.labels import get_label_strategy, make_labels
from trajlib.space import ActionSpace, HyperParam, HyperparameterSpace, lr_action_space
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
) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, Any]]:
    """Decision table (features), labels and the collection settings of a store.

    Returns ``(table, labels, settings)``; ``table`` has ``run_id``, ``step``, ``task`` and the
    feature columns; ``labels`` comes from :func:`trajlib.labels.make_labels`; ``settings`` holds
    the action space, hyperparameter bounds, decision interval and mode shared by all runs.
    """
    st = open_store(store) if not hasattr(store, "steps") else store
    runs = st.runs(task=tasks).collect()
    if runs.height == 0:
        raise ConfigError("STORE", "a store with committed runs", str(getattr(st, "path", store)))
    decisions = st.decisions(task=tasks).collect()
    branches = st.branches(task=tasks).collect()
    if branches.height == 0:
        raise ConfigError(
            "STORE",
            "runs collected with branching on (labels come from branch outcomes)",
            "no branch rows",
        )
    entries = [json.loads(e) for e in runs[S.ENTRY].to_list() if e]
    actions = _one(
        [e.get("action_space") or lr_action_space(e["actions"]).to_dict() for e in entries],
        "actions",
    )
    every = _one([e["every"] for e in entries], "every")
    space = _one(
        [
            {k: e["space"][k] for k in ("lr_min", "lr_max", "mode", "base_schedule")}
            for e in entries
        ],
        "space",
    )
    hp_space = _one(
        [
            e.get("hp_space")
            or [HyperParam("lr", space["lr_min"], space["lr_max"], "log").to_dict()]
            for e in entries
        ],
        "hp_space",
    )
    fs = get_feature_set(feature_set)
    points = decisions.select(S.RUN_ID, S.STEP).unique().sort(S.RUN_ID, S.STEP)
    table = derive(st.steps(task=tasks), points, runs.select(S.RUN_ID, S.BUDGET), fs)
    table = table.join(runs.select(S.RUN_ID, S.TASK), on=S.RUN_ID, how="left")
    action_space = ActionSpace.from_dict(actions)
    lab = make_labels(
        branches, labels, keep_index=action_space.keep_index, n_actions=len(action_space)
    )
    settings = {
        "action_space": action_space,
        "hp_space": HyperparameterSpace.from_dict(hp_space),
        "every": int(every),
        "mode": space["mode"],
        "base_schedule": space["base_schedule"],
        "feature_set": fs,
        "runs": runs,
    }
    return table, lab, settings


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

    Offline metrics come from a split grouped by task (or by run with one task); the saved
    controller is then refit on every row. Returns ``(checkpoint path, metrics)``.
    """
    get_label_strategy(labels)  # unknown name -> clear error before any work
    table, lab, cfg = training_table(store, feature_set, labels, tasks)
    fs = cfg["feature_set"]
    controller, metrics = fit_from_table(
        table,
        lab,
        list(fs.names),
        kind,
        params,
        keep_index=cfg["action_space"].keep_index,
        random_state=random_state,
        refit=True,
    )
    feats = table.select(fs.names).to_numpy().astype(np.float64)
    nan_fraction = {n: float(np.mean(~np.isfinite(feats[:, i]))) for i, n in enumerate(fs.names)}
    runs = cfg["runs"]
    best = lab["best_action"].to_numpy()
    training_data = {
        "store": str(store),
        "n_rows": int(table.height),
        "n_runs": int(runs.height),
        "tasks": sorted(set(runs[S.TASK].to_list())),
        "best_action_share": {
            str(a): float(np.mean(best == a)) for a in range(len(cfg["action_space"]))
        },
        "feature_nan_fraction": nan_fraction,
    }
    path = save_controller(
        controller,
        out,
        feature_set_name=fs.name,
        feature_set_version=fs.version,
        feature_set_hash=fs.hash,
        feature_names=list(fs.names),
        action_space=cfg["action_space"],
        hp_space=cfg["hp_space"],
        every=cfg["every"],
        mode=cfg["mode"],
        base_schedule=cfg["base_schedule"],
        label_strategy=labels,
        training_data=training_data,
        offline_metrics=metrics,
        overwrite=overwrite,
    )
    return Path(path), metrics
