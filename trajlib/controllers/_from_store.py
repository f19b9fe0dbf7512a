"""Fit a controller straight from a trajectory store: features -> labels -> fit -> checkpoint."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from trajlib import schema as S
from trajlib.controllers._base import Controller
from trajlib.controllers._checkpoint import save_controller
from trajlib.controllers._ensemble import (
    EnsembleController,
    withheld_share,
    withhold_validation,
)
from trajlib.controllers._fit import fit_from_table, join_table
from trajlib.controllers._harm import HarmRule, calibrate_rule, check_rule_values
from trajlib.controllers._registry import get_controller_kind
from trajlib.errors import ConfigError
from trajlib.features import (
    VALIDATION_INDICATOR,
    FeatureSet,
    derive,
    get_feature_set,
    validation_feature_indices,
)
from trajlib.labels import LabelStrategy, get_label_strategy, make_labels, trajectory_labels
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


def _store_list(store: Any) -> list[Any]:
    """``store`` as a list: a list or tuple names several stores, anything else is one."""
    stores = list(store) if isinstance(store, list | tuple) else [store]
    if not stores:
        raise ConfigError("STORE", "at least one store", "none")
    return stores


def _training_data(
    store: Any, feature_set: str, labels: str, tasks: list[str] | None
) -> tuple[pl.DataFrame, pl.DataFrame, DecisionSpec, pl.DataFrame]:
    """:func:`training_table` plus the runs frame; ``store`` may be a list of stores, whose runs
    are pooled (they must share the action space, interval, mode and hyperparameter space, and
    no run may be in two of them)."""
    strat = get_label_strategy(labels)
    fs = get_feature_set(feature_set)
    tables, labs, all_runs, specs = [], [], [], []
    seen: dict[str, str] = {}
    stores = _store_list(store)
    for one in stores:
        st = open_store(one) if not hasattr(one, "steps") else one
        where = str(getattr(st, "path", one))
        runs = st.runs(task=tasks).collect()
        if runs.height == 0:
            if tasks is not None and len(stores) > 1:
                continue  # none of the asked tasks in this store: the others may have them
            raise ConfigError("STORE", "a store with committed runs", where)
        for rid in runs[S.RUN_ID].to_list():
            if rid in seen:
                raise ConfigError(
                    "STORE", "stores with distinct runs", f"run {rid} in {seen[rid]} and {where}"
                )
            seen[rid] = where
        table, lab, spec_k = _one_store(st, where, runs, fs, strat, tasks)
        tables.append(table)
        labs.append(lab)
        all_runs.append(runs)
        specs.extend(spec_k)
    if not specs:
        raise ConfigError("STORE", f"runs of the tasks {tasks}", "none in any store")
    _one([d.action_space.to_dict() for d in specs], "actions")
    _one([d.every for d in specs], "every")
    _one([[d.mode, d.base_schedule] for d in specs], "space")
    _one([d.hp_space.to_dict() for d in specs], "hp_space")
    spec = specs[0].with_feature_set(
        FeatureSetRef(name=fs.name, version=str(fs.version), hash=fs.hash, names=tuple(fs.names))
    )
    if len(tables) == 1:
        return tables[0], labs[0], spec, all_runs[0]
    return (
        pl.concat(tables, how="vertical_relaxed"),
        pl.concat(labs, how="vertical_relaxed"),
        spec,
        pl.concat(all_runs, how="diagonal_relaxed"),
    )


def _one_store(
    st: Any,
    where: str,
    runs: pl.DataFrame,
    fs: FeatureSet,
    strat: LabelStrategy,
    tasks: list[str] | None,
) -> tuple[pl.DataFrame, pl.DataFrame, list[DecisionSpec]]:
    """One store's decision table, labels and its runs' decision specs."""
    decisions = st.decisions(task=tasks).collect()
    branches = st.branches(task=tasks).collect() if strat.needs_branches else None
    if branches is not None and branches.height == 0:
        raise ConfigError(
            "STORE",
            "runs collected with branching on (labels come from branch outcomes)",
            f"no branch rows in {where}",
            hint="label runs recorded without branches with labels='outcome'",
        )
    specs = [RunConfig.from_dict(json.loads(e)).decision for e in runs[S.ENTRY].to_list() if e]
    _one([d.action_space.to_dict() for d in specs], "actions")
    action_space = specs[0].action_space
    labelled = decisions if branches is None else branches  # a branch stride leaves some unlabelled
    points = labelled.select(S.RUN_ID, S.STEP).unique().sort(S.RUN_ID, S.STEP)
    table = derive(st.steps(task=tasks), points, runs.select(S.RUN_ID, S.BUDGET), fs)
    table = table.join(runs.select(S.RUN_ID, S.TASK), on=S.RUN_ID, how="left")
    keep, n_act = action_space.keep_index, len(action_space)
    if branches is None:  # labels from the trajectory and the logged propensities
        lab = trajectory_labels(st.steps(task=tasks), decisions, keep, n_act, strat)
    else:
        lab = make_labels(
            branches,
            strat,
            keep_index=keep,
            n_actions=n_act,
            runs=runs if strat.needs_trajectory else None,
            steps=st.steps(task=tasks) if strat.needs_trajectory else None,
        )
    return table, lab, specs


#: Members of the ensemble when the do-no-harm rule is on and ``ensemble`` is not given.
DEFAULT_HARM_MEMBERS = 5


def _check_fit_options(
    ensemble: Any,
    val_withhold: Any,
    no_harm: Any,
    harm_z: Any,
    harm_margin: Any,
    harm_precision: Any,
    harm_per_action: Any,
) -> tuple[int, bool]:
    """ConfigError for a bad option; returns the number of ensemble members and whether the
    do-no-harm rule is on."""
    if ensemble is not None and (
        isinstance(ensemble, bool) or not isinstance(ensemble, int | np.integer) or ensemble < 1
    ):
        raise ConfigError("ensemble", "a positive integer (members of the ensemble)", ensemble)
    if (
        isinstance(val_withhold, bool)
        or not isinstance(val_withhold, int | float)
        or not 0.0 <= val_withhold <= 1.0
    ):
        raise ConfigError("val_withhold", "a share of runs in [0, 1]", val_withhold)
    for name, flag in (("no_harm", no_harm), ("harm_per_action", harm_per_action)):
        if not isinstance(flag, bool):
            raise ConfigError(name, "True or False", flag)
    if harm_z is not None:
        check_rule_values(harm_z, 0.0)
    check_rule_values(0.0, harm_margin)
    if (
        isinstance(harm_precision, bool)
        or not isinstance(harm_precision, int | float)
        or not 0.0 < harm_precision <= 1.0
    ):
        raise ConfigError("harm_precision", "a share in (0, 1]", harm_precision)
    rule = no_harm or harm_per_action or harm_z is not None
    k = int(ensemble) if ensemble is not None else (DEFAULT_HARM_MEMBERS if rule else 1)
    if rule and k < 2:
        raise ConfigError(
            "ensemble", "at least 2 members with the do-no-harm rule (it reads their spread)", k
        )
    return k, rule


def _families(runs: pl.DataFrame) -> dict[str, str]:
    """Task -> family: the recorded ``task_meta.family``, a registered or generated task's family,
    else the task's own name."""
    from trajlib.tasks import get_task, is_generated, list_tasks

    known = set(list_tasks())
    out: dict[str, str] = {}
    for task, entry in zip(runs[S.TASK].to_list(), runs[S.ENTRY].to_list()):
        if task in out:
            continue
        fam = None
        try:
            meta = (json.loads(entry) if entry else {}).get("task_meta") or {}
            fam = meta.get("family")
        except (json.JSONDecodeError, AttributeError):
            fam = None
        if not fam and (task in known or is_generated(task)):
            try:
                fam = get_task(task).family
            except Exception:  # noqa: BLE001 - a task that fails to build keeps its own name
                fam = None
        out[task] = str(fam or task)
    return out


def fit_store(
    store: str | Path | Sequence[str | Path],
    *,
    kind: str = "gbt",
    labels: str = "greedy",
    out: str | Path,
    feature_set: str = "default",
    params: Mapping[str, Any] | None = None,
    random_state: int = 0,
    tasks: list[str] | None = None,
    overwrite: bool = False,
    ensemble: int | None = None,
    val_withhold: float = 0.0,
    no_harm: bool = False,
    harm_z: float | None = None,
    harm_margin: float = 0.0,
    harm_precision: float = 0.6,
    harm_per_action: bool = False,
) -> tuple[Path, dict[str, float]]:
    """Fit a ``kind`` controller on ``labels`` from the store and write a checkpoint to ``out``.

    ``store`` may be a list of stores (several collections, e.g. one per recipe or machine): their
    runs are pooled as one data set. They must share the action space, decision interval, mode and
    hyperparameter space, and no run may be in two of them.

    ``labels`` names a branch strategy (``greedy``, ``annealed``, ``long``: stores collected with
    branches) or ``outcome`` (any store, e.g. runs recorded without branches: only the taken
    action's target is known per decision, the others are NaN and masked by every kind).

    Offline metrics come from a split grouped by task (or by run with one task); the saved
    controller is then refit on every row. Returns ``(checkpoint path, metrics)``.

    Validation-optional and do-no-harm fits (any of the options below away from its default)
    write an ``ensemble`` checkpoint of ``kind`` members (:class:`EnsembleController`) that also
    reads a ``val_present`` indicator:

    - ``ensemble``: K members on bootstrap resamples of the runs, each with its own seed
      (default 1; 5 with the do-no-harm rule).
    - ``val_withhold``: share of runs (chosen by a hash of the run id) whose decision rows are
      added again with every validation-derived feature NaN and ``val_present`` 0, so the
      controller also decides in a loop that never reports validation; the metrics then include
      ``noval_*`` (held-out rows with validation masked).
    - ``no_harm``: store the do-no-harm rule (:class:`~trajlib.controllers._harm.HarmRule`): act
      only when ``mean - z * std`` of the best action's advantage exceeds ``harm_margin``. ``z`` is
      calibrated by cross-validation grouped by task family: the smallest ``z`` whose held-out
      acted decisions are right (realized advantage > 0) in at least ``harm_precision`` of cases.
    - ``harm_z``: use this ``z`` instead of calibrating (implies ``no_harm``).
    - ``harm_per_action``: calibrate each action's own ``z`` to ``harm_precision`` as well; an
      action never that precise on held-out families is never taken (implies ``no_harm``).
    """
    get_label_strategy(labels)  # unknown name -> clear error before any work
    k, use_rule = _check_fit_options(
        ensemble, val_withhold, no_harm, harm_z, harm_margin, harm_precision, harm_per_action
    )
    wrapped = k > 1 or val_withhold > 0 or use_rule
    table, lab, spec, runs = _training_data(store, feature_set, labels, tasks)
    names = list(spec.feature_set.names) if spec.feature_set else []
    val_cols = validation_feature_indices(feature_set)
    if wrapped:
        get_controller_kind(kind)  # unknown base kind -> clear error
        model: str | Controller = EnsembleController(
            base=kind,
            base_params=dict(params or {}),
            n_members=k,
            val_columns=list(val_cols),
            val_withhold=float(val_withhold),
            random_state=int(random_state),
        )
        model_params = None
    else:
        model, model_params = kind, params
    controller, metrics = fit_from_table(
        table,
        lab,
        names,
        model,
        model_params,
        keep_index=spec.action_space.keep_index,
        random_state=random_state,
        refit=True,
        mask_columns=val_cols if wrapped and val_withhold > 0 else None,
    )
    rule: HarmRule | None = None
    if use_rule:
        rule = _harm_rule(
            model, table, lab, names, runs, spec.action_space.keep_index, harm_z, harm_margin,
            harm_precision, harm_per_action,
        )  # fmt: skip
        metrics["harm_z"] = rule.z
    withhold = float(val_withhold) if wrapped else None
    path = save_controller(
        controller,
        out,
        spec=spec,
        label_strategy=labels,
        training_data=_training_meta(
            store, table, lab, runs, len(spec.action_space), names, val_cols, withhold
        ),  # fmt: skip
        offline_metrics=metrics,
        overwrite=overwrite,
        decision_rule=rule,
    )
    return Path(path), metrics


def _training_meta(
    store: str | Path | Sequence[str | Path],
    table: pl.DataFrame,
    lab: pl.DataFrame,
    runs: pl.DataFrame,
    n_actions: int,
    names: list[str],
    val_cols: Sequence[int],
    withhold: float | None,
) -> dict[str, Any]:
    """The manifest's ``training_data``: the store, rows, runs and tasks, the best action's
    shares, the features' NaN shares, and (``withhold`` not None: a validation-optional fit) the
    validation metadata."""
    best = lab["best_action"].to_numpy()
    meta: dict[str, Any] = {
        "store": [str(s) for s in store] if isinstance(store, list | tuple) else str(store),
        "n_rows": int(table.height),
        "n_runs": int(runs.height),
        "tasks": sorted(set(runs[S.TASK].to_list())),
        "best_action_share": {str(a): float(np.mean(best == a)) for a in range(n_actions)},
        "feature_nan_fraction": _nan_fraction(table, names, val_cols, withhold or 0.0),
    }
    if withhold is not None:
        meta["validation"] = _validation_meta(runs, names, val_cols, withhold)
    return meta


def _nan_fraction(
    table: pl.DataFrame, names: list[str], val_cols: Sequence[int], withhold: float
) -> dict[str, float]:
    """Share of non-finite values per feature over the rows the model saw (with ``withhold`` >
    0, the copies of withheld runs with validation masked included)."""
    feats = table.select(names).to_numpy().astype(np.float64)
    if withhold > 0:
        idx, masked = withhold_validation(
            feats, table[S.RUN_ID].cast(pl.String).to_numpy(), val_cols, withhold
        )
        feats = feats[idx]
        feats[np.ix_(masked, np.asarray(val_cols, dtype=np.intp))] = np.nan
    return {n: float(np.mean(~np.isfinite(feats[:, i]))) for i, n in enumerate(names)}


def _validation_meta(
    runs: pl.DataFrame, names: list[str], val_cols: Sequence[int], withhold: float
) -> dict[str, Any]:
    """The manifest's ``training_data.validation``: indicator, features, share withheld."""
    run_ids = runs[S.RUN_ID].cast(pl.String).to_list()
    return {
        "indicator": VALIDATION_INDICATOR,
        "features": [names[i] for i in val_cols],
        "withhold": withhold,
        "withheld_runs": sum(withheld_share(r) < withhold for r in run_ids),
    }


def _harm_rule(
    model: str | Controller,
    table: pl.DataFrame,
    lab: pl.DataFrame,
    names: list[str],
    runs: pl.DataFrame,
    keep: int,
    harm_z: float | None,
    harm_margin: float,
    harm_precision: float,
    per_action: bool = False,
) -> HarmRule:
    """The do-no-harm rule: ``harm_z`` as given, else calibrated grouped by task family."""
    if harm_z is not None:
        return HarmRule(z=float(harm_z), margin=float(harm_margin))
    X, T, run_ids, steps, _, task_arr = join_table(table, lab, names)
    fam_of = _families(runs)
    fams = np.array([fam_of.get(t, t) for t in (task_arr if task_arr is not None else run_ids)])
    return calibrate_rule(
        model if isinstance(model, Controller) else EnsembleController(),
        X,
        T,
        run_ids,
        steps,
        fams,
        keep,
        margin=float(harm_margin),
        min_precision=float(harm_precision),
        per_action=per_action,
    )
