"""The results of a rollout: per run, the step, decision and branch frames, the per-layer array and
the runs-table row a store commits (columns as in :mod:`trajlib.schema`).

Per-layer LR multipliers are stored in the run's ``entry`` JSON under ``layer_lr`` (in the order
of ``layer_names``); with ``space.layer_lr_walk`` > 0, the values set at each decision are stored
under ``layer_lr_path`` as ``[step, [multipliers]]`` pairs (the multipliers of a step are those of
the last decision at or before it).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from trajlib import schema as S
from trajlib.collect._rollout import Rollout
from trajlib.spec import RunConfig

__all__ = ["RunResult", "failed_result", "results"]


@dataclass
class RunResult:
    """Everything a store needs to commit one run."""

    run: dict[str, Any]
    steps: pl.DataFrame
    decisions: pl.DataFrame
    branches: pl.DataFrame
    layers: np.ndarray | None
    layer_names: list[str]


@dataclass(frozen=True)
class _Record:
    """What every run of a rollout shares: the population's record, read once at the end."""

    cols: dict[str, np.ndarray]  # step columns [n, K] (Population.columns)
    layers: np.ndarray  # [n, K, L, 3]
    step_times: np.ndarray  # [n] host seconds per population step
    val_mask: np.ndarray  # [budget] validation recorded after the step
    test_loss: np.ndarray  # [K]
    test_acc: np.ndarray  # [K]
    n_done: int
    wall_s: float
    created: str


def results(rollout: Rollout) -> list[RunResult]:
    """One :class:`RunResult` per member of a finished rollout."""
    pop = rollout.pop
    test_loss, test_acc = (z.cpu().numpy() for z in pop.evaluate("test"))
    wall = time.perf_counter() - rollout.t_start
    n_done = min(pop.t, rollout.budget)
    cols = pop.columns(0, n_done)
    val_mask = np.zeros(rollout.budget, dtype=bool)
    val_mask[rollout.val_rows] = True
    record = _Record(
        cols=cols,
        layers=cols.pop("layers"),
        step_times=np.asarray(pop.step_times, dtype=np.float32),
        val_mask=val_mask,
        test_loss=test_loss,
        test_acc=test_acc,
        n_done=n_done,
        wall_s=wall,
        created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    )
    return [_result(rollout, record, i) for i in range(rollout.K)]


def _result(rollout: Rollout, record: _Record, i: int) -> RunResult:
    n = rollout.budget if rollout.diverged_at[i] < 0 else int(rollout.diverged_at[i]) + 1
    n = min(n, record.n_done)
    steps = _step_frame(rollout, record, i, n)
    names = list(rollout.pop.spec.names)
    decisions = rollout.decisions[i]
    branches = rollout.branches[i]
    return RunResult(
        run=_run_row(rollout, record, i, n, steps),
        steps=steps,
        decisions=pl.DataFrame(decisions, schema=S.DECISION_SCHEMA, orient="row")
        if decisions
        else S.empty_frame(S.DECISION_SCHEMA),
        branches=pl.DataFrame(branches).cast(_dtypes(S.BRANCH_SCHEMA)).select(list(S.BRANCH_SCHEMA))
        if branches
        else S.empty_frame(S.BRANCH_SCHEMA),
        layers=np.ascontiguousarray(record.layers[:n, i], dtype=np.float32),
        layer_names=names,
    )


def _step_frame(rollout: Rollout, record: _Record, i: int, n: int) -> pl.DataFrame:
    """Member i's first ``n`` steps (``trajlib.schema.STEP_SCHEMA``)."""
    frame: dict[str, Any] = {
        S.RUN_ID: [rollout.configs[i].run_id] * n,
        S.STEP: np.arange(n, dtype=np.int32),
    }
    not_validated = np.flatnonzero(~record.val_mask[:n])
    for name, v in record.cols.items():
        column: Any = v[:n, i]
        if name in (S.VAL_LOSS, S.VAL_ACC):
            column = pl.Series(name, column, dtype=pl.Float32).scatter(not_validated, None)
        frame[name] = column
    for name, h in rollout.hist.items():
        frame[name] = h[:n, i]
    frame[S.L2] = np.full(n, rollout.l2[i], dtype=np.float32)
    frame[S.INPUT_NOISE] = np.full(n, rollout.noise[i], dtype=np.float32)
    frame[S.BASE_FACTOR] = rollout.base_hist[:n]
    frame[S.STEP_TIME_S] = record.step_times[:n] / rollout.K
    return (
        pl.DataFrame(frame)
        .with_columns(pl.col(S.GRAD_COS, S.UPDATE_COS).fill_nan(None))
        .cast(_dtypes(S.STEP_SCHEMA))
        .select(list(S.STEP_SCHEMA))
    )


def _run_row(
    rollout: Rollout, record: _Record, i: int, n: int, steps: pl.DataFrame
) -> dict[str, Any]:
    """Member i's runs-table row (``trajlib.schema.RUN_SCHEMA`` columns)."""
    config = rollout.configs[i]
    ok = rollout.diverged_at[i] < 0
    last_val = steps.filter(pl.col(S.VAL_LOSS).is_not_null()).tail(1)
    validated = ok and len(last_val) > 0
    entry = {**config.to_dict(), "layer_lr": [float(v) for v in rollout.layer_lr0[i]]}
    if rollout.walks[i]:
        entry["layer_lr_path"] = rollout.layer_path[i]
    if rollout.pop.engine == "loop":  # why this task's members were trained one at a time
        entry["engine"] = rollout.pop.engine
        entry["engine_reason"] = rollout.pop.engine_reason
    return {
        S.RUN_ID: config.run_id,
        S.TASK: rollout.task.name,
        S.SEED: config.seed,
        S.STATUS: S.STATUS_COMPLETE if ok else S.STATUS_DIVERGED,
        S.STEPS_DONE: n,
        S.BUDGET: rollout.budget,
        S.DIVERGED_AT: None if ok else int(rollout.diverged_at[i]),
        S.FINAL_VAL_LOSS: _opt(last_val[S.VAL_LOSS][0]) if validated else None,
        S.FINAL_VAL_ACC: _opt(last_val[S.VAL_ACC][0]) if validated else None,
        S.FINAL_TEST_LOSS: _opt(record.test_loss[i]) if ok else None,
        S.FINAL_TEST_ACC: _opt(record.test_acc[i]) if ok else None,
        S.RECIPE: config.recipe,
        S.ENTRY: json.dumps(entry, sort_keys=True),
        S.BEHAVIOUR: config.behaviour.kind,
        S.BASE_SCHEDULE: rollout.schedule,
        S.OPTIMIZER: rollout.task.optimizer,
        S.EVERY: rollout.every,
        S.VAL_EVERY: rollout.val_every,
        S.WALL_TIME_S: record.wall_s / rollout.K,
        S.ERROR: None,
        S.CREATED: record.created,
        S.LAYER_NAMES: json.dumps(list(rollout.pop.spec.names)),
    }


def _dtypes(schema: Mapping[str, pl.DataType]) -> dict[Any, Any]:
    return dict(schema)


def _opt(x: Any) -> float | None:
    return None if x is None or not math.isfinite(float(x)) else float(x)


def failed_result(config: RunConfig, exc: BaseException) -> dict[str, Any]:
    """The runs-table row of a run whose training raised."""
    return {
        S.RUN_ID: config.run_id,
        S.TASK: config.task,
        S.SEED: config.seed,
        S.STATUS: S.STATUS_FAILED,
        S.STEPS_DONE: 0,
        S.BUDGET: config.budget,
        S.RECIPE: config.recipe,
        S.ENTRY: json.dumps(config.to_dict(), sort_keys=True),
        S.ERROR: "".join(traceback.format_exception_only(type(exc), exc)).strip()[:2000],
        S.CREATED: _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
