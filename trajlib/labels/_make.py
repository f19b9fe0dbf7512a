"""``make_labels``: branches table -> one row of per-action advantages per decision point."""

from __future__ import annotations

import numpy as np
import polars as pl

from trajlib import schema as S
from trajlib.errors import ConfigError
from trajlib.labels._base import LabelStrategy
from trajlib.labels._registry import get_label_strategy

__all__ = ["make_labels", "BEST_ACTION", "N_VALID", "adv_column", "adv_columns"]

BEST_ACTION = "best_action"
N_VALID = "n_valid"
_OPTIONAL = {
    S.BRANCH_VAL_LOSS_HALF: pl.Float32(),
    S.BRANCH_VAL_LOSS_COOLED: pl.Float32(),
    S.COOLDOWN: pl.Int32(),
}


def adv_column(i: int) -> str:
    """Name of the advantage column of action ``i``: ``adv_<i>``."""
    return f"adv_{i}"


def adv_columns(n_actions: int) -> list[str]:
    """``["adv_0", ..., "adv_{n_actions-1}"]``."""
    return [adv_column(i) for i in range(n_actions)]


def make_labels(
    branches: pl.DataFrame,
    strategy: str | LabelStrategy,
    keep_index: int,
    *,
    n_actions: int | None = None,
    runs: pl.DataFrame | None = None,
    steps: pl.DataFrame | pl.LazyFrame | None = None,
) -> pl.DataFrame:
    """Per-decision labels from a branches table.

    Parameters
    ----------
    branches:
        ``BRANCH_SCHEMA`` frame, one row per ``(run_id, step, action)``.
    strategy:
        A registered name (``"greedy"``, ``"annealed"``, ``"long"``) or a :class:`LabelStrategy`.
    keep_index:
        Index of the action that moves nothing (``ActionSpace.keep_index``); the reference.
    n_actions:
        Size of the action space; default ``max(action) + 1`` in ``branches``.
    runs:
        Optional runs table; when given, its ``task`` column is joined onto the labels. Required
        (with ``run_id, budget, entry``) by strategies that read the trajectory (``final``).
    steps:
        The step table of the branches' runs (``STEP_SCHEMA``, a frame or a lazy scan); required
        only by strategies with ``needs_trajectory`` (``final``), ignored otherwise.

    Returns
    -------
    pl.DataFrame
        One row per decision point that has a keep branch, sorted by ``(run_id, step)``:
        ``run_id`` (String), ``step`` (Int32), ``best_action`` (Int16), ``adv_0 .. adv_{A-1}``
        (Float64) and ``n_valid`` (Int16), plus ``task`` when ``runs`` is given.
        ``adv_a = log(loss_keep) - log(loss_a)`` (higher is better, keep is exactly 0); NaN where
        action ``a`` was not branched or not measured. A diverged branch gets
        ``min(0, worst finite advantage of its decision point) - diverged_penalty``; when the keep
        branch itself diverged it counts as that penalty above the worst finite branch, so
        finite branches get positive advantages. ``n_valid`` counts actions with a known
        advantage (finite or diverged). ``best_action`` is the argmax; any action within
        ``tie_tol`` of the best loses to keep. Decision points without a keep branch are dropped.
    """
    strat = get_label_strategy(strategy) if isinstance(strategy, str) else strategy
    if not isinstance(strat, LabelStrategy):
        raise ConfigError("strategy", "a label strategy name or LabelStrategy", strategy)
    if not isinstance(branches, pl.DataFrame):
        raise ConfigError("branches", "a polars DataFrame", type(branches).__name__)
    strat.check(branches)
    if branches.height == 0:
        raise ConfigError("branches", "a non-empty branches table", "0 rows")
    max_action = int(branches[S.ACTION].max())  # type: ignore[arg-type]
    min_action = int(branches[S.ACTION].min())  # type: ignore[arg-type]
    A = max_action + 1 if n_actions is None else int(n_actions)
    if min_action < 0 or max_action >= A:
        raise ConfigError(
            "branches.action", f"indices in [0, {A - 1}]", f"[{min_action}, {max_action}]"
        )
    if not (isinstance(keep_index, int | np.integer) and 0 <= keep_index < A):
        raise ConfigError("keep_index", f"an action index in [0, {A - 1}]", keep_index)

    frame = branches.with_columns(
        [pl.lit(None, dtype=t).alias(c) for c, t in _OPTIONAL.items() if c not in branches.columns]
    )
    if strat.needs_trajectory:
        if steps is None or runs is None:
            raise ConfigError(
                "steps/runs",
                f"the step table and the runs table for label strategy {strat.name!r}",
                "steps" if steps is None else "runs",
                hint="make_labels(branches, strategy, keep, steps=store.steps(), "
                "runs=store.runs().collect())",
            )
        outcome = strat.branch_log_outcomes(frame, steps, runs).alias("_lo")
    else:
        outcome = frame.select(strat.log_outcome().cast(pl.Float64).alias("_lo")).to_series()
    frame = frame.with_columns(outcome.alias("_lo")).select(
        pl.col(S.RUN_ID).cast(pl.String),
        pl.col(S.STEP).cast(pl.Int32),
        pl.col(S.ACTION).cast(pl.Int64),
        pl.col("_lo").cast(pl.Float64),
        pl.col(S.BRANCH_DIVERGED).fill_null(False).alias("_div"),
    )
    dup = frame.group_by(S.RUN_ID, S.STEP, S.ACTION).len().filter(pl.col("len") > 1)
    if dup.height:
        first = dup.row(0, named=True)
        raise ConfigError(
            "branches",
            "one row per (run_id, step, action)",
            f"{dup.height} duplicated keys, e.g. {first[S.RUN_ID]!r} step {first[S.STEP]} "
            f"action {first[S.ACTION]}",
        )
    keys = frame.select(S.RUN_ID, S.STEP).unique().sort(S.RUN_ID, S.STEP).with_row_index("_r")
    frame = frame.join(keys, on=[S.RUN_ID, S.STEP], how="left")
    n = keys.height
    r = frame["_r"].to_numpy()
    a = frame[S.ACTION].to_numpy()
    lo_in = frame["_lo"].to_numpy().astype(np.float64)  # null -> NaN
    known_in = frame["_lo"].is_not_null().to_numpy()
    div_in = frame["_div"].to_numpy().astype(bool) | (known_in & ~np.isfinite(lo_in))

    lo = np.full((n, A), np.nan)
    div = np.zeros((n, A), dtype=bool)
    lo[r, a] = np.where(div_in, np.nan, lo_in)
    div[r, a] = div_in
    adv = _advantages(lo, div, keep_index, strat.diverged_penalty)
    keep_known = ~np.isnan(adv[:, keep_index])
    adv = adv[keep_known]
    best = _best_action(adv, keep_index, strat.tie_tol)
    n_valid = (~np.isnan(adv)).sum(axis=1)

    out = keys.filter(pl.Series(keep_known)).drop("_r")
    out = out.with_columns(
        pl.Series(BEST_ACTION, best, dtype=pl.Int16),
        *[pl.Series(adv_column(i), adv[:, i], dtype=pl.Float64) for i in range(A)],
        pl.Series(N_VALID, n_valid, dtype=pl.Int16),
    )
    if runs is not None:
        if S.TASK not in runs.columns or S.RUN_ID not in runs.columns:
            raise ConfigError(
                "runs", f"a runs table with {S.RUN_ID!r} and {S.TASK!r}", runs.columns
            )
        out = out.join(runs.select(S.RUN_ID, S.TASK).unique(S.RUN_ID), on=S.RUN_ID, how="left")
    return out


def _advantages(lo: np.ndarray, div: np.ndarray, keep: int, penalty: float) -> np.ndarray:
    """``[n, A]`` advantages over ``keep`` from log-losses ``lo`` (NaN unknown) and ``div`` flags."""
    finite = ~np.isnan(lo)
    any_finite = finite.any(axis=1)
    worst = np.where(any_finite, np.nanmax(np.where(finite, lo, -np.inf), axis=1), 0.0)
    ref = np.where(div[:, keep], worst + penalty, lo[:, keep])  # keep's effective log-loss
    adv = ref[:, None] - lo
    # Diverged: `penalty` below the worst finite branch and at least `penalty` below keep; when
    # keep itself diverged, every diverged branch ties with it at 0.
    worst_adv = np.where(any_finite, ref - worst, 0.0)
    div_adv = np.where(div[:, keep], 0.0, np.minimum(0.0, worst_adv) - penalty)
    adv = np.where(div, div_adv[:, None], adv)
    return adv


def _best_action(adv: np.ndarray, keep: int, tol: float) -> np.ndarray:
    """Argmax per row; keep wins whenever it is within ``tol`` of the best."""
    filled = np.where(np.isnan(adv), -np.inf, adv)
    best = filled.argmax(axis=1)
    keep_ties = filled[:, keep] >= filled.max(axis=1) - tol
    return np.where(keep_ties, keep, best).astype(np.int16)
