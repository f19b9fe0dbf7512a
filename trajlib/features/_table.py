"""The decision table: features at every decision point joined with the action taken, its
propensity, and the outcome of every branched action (one row per decision point)."""

from __future__ import annotations

import polars as pl

from trajlib import schema
from trajlib.errors import ConfigError
from trajlib.features._offline import derive
from trajlib.features._set import FeatureSet, get_feature_set

__all__ = ["decision_table", "BRANCH_OUTCOMES"]

# branch columns pivoted to one column per action: ``{col}_a{i}``
BRANCH_OUTCOMES = (
    schema.BRANCH_VAL_LOSS,
    schema.BRANCH_VAL_LOSS_HALF,
    schema.BRANCH_VAL_LOSS_COOLED,
    schema.BRANCH_TRAIN_LOSS,
    schema.BRANCH_VAL_ACC,
    schema.BRANCH_DIVERGED,
)


def _frame(x: pl.DataFrame | pl.LazyFrame | None, what: str) -> pl.DataFrame | None:
    if x is None:
        return None
    if isinstance(x, pl.LazyFrame):
        return x.collect()
    if isinstance(x, pl.DataFrame):
        return x
    raise ConfigError(what, "a polars DataFrame or LazyFrame", type(x).__name__)


def decision_table(
    runs: pl.DataFrame | pl.LazyFrame,
    steps: pl.DataFrame | pl.LazyFrame,
    decisions: pl.DataFrame | pl.LazyFrame,
    branches: pl.DataFrame | pl.LazyFrame | None = None,
    feature_set: str | FeatureSet = "default",
) -> pl.DataFrame:
    """One row per decision point: features, the behaviour's action and branch outcomes.

    ``runs`` needs ``run_id, budget``; ``steps`` the step table (:data:`schema.STEP_SCHEMA`);
    ``decisions`` ``run_id, step, action, propensity`` (``n_actions`` optional); ``branches`` (may be
    None or empty) ``run_id, step, action`` plus outcome columns.

    Returns ``run_id, step, <features>, n_missing, action, propensity, n_actions`` and, when there
    are branches, ``horizon, cooldown`` and ``{outcome}_a{i}`` for every action index ``i`` in
    ``0 .. n_actions - 1`` and every outcome in :data:`BRANCH_OUTCOMES` present (null where that
    action was not branched), in the order of ``decisions`` sorted by ``(run_id, step)``.
    """
    fs = get_feature_set(feature_set)
    runs_df = _frame(runs, "runs")
    dec = _frame(decisions, "decisions")
    br = _frame(branches, "branches")
    if runs_df is None or dec is None:
        raise ConfigError("runs/decisions", "polars frames", None)
    for name, df, need in (
        ("runs", runs_df, ("run_id", "budget")),
        ("decisions", dec, ("run_id", "step", "action", "propensity")),
    ):
        missing = [c for c in need if c not in df.columns]
        if missing:
            raise ConfigError(
                name, f"a frame with columns {list(need)}", sorted(df.columns), f"missing {missing}"
            )
    dec = dec.with_columns(pl.col("run_id").cast(pl.String)).sort(["run_id", "step"])
    ids = dec.get_column("run_id").unique()
    if isinstance(steps, pl.LazyFrame):
        steps = steps.filter(pl.col("run_id").is_in(ids.implode()))
    budgets = runs_df.select(pl.col("run_id").cast(pl.String), pl.col("budget"))
    feats = derive(steps, dec.select("run_id", "step"), budgets, fs)
    n_actions_col = (
        pl.col(schema.N_ACTIONS).cast(pl.Int16)
        if schema.N_ACTIONS in dec.columns
        else pl.lit(None, dtype=pl.Int16).alias(schema.N_ACTIONS)
    )
    out = pl.concat(
        [
            feats,
            dec.select(
                pl.col(schema.ACTION).cast(pl.Int16),
                pl.col(schema.PROPENSITY).cast(pl.Float64),
                n_actions_col,
            ),
        ],
        how="horizontal",
    )
    if br is None or br.height == 0:
        return out
    br = br.with_columns(pl.col("run_id").cast(pl.String), pl.col("step").cast(out["step"].dtype))
    n_act = int(br[schema.ACTION].max()) + 1  # type: ignore[arg-type]
    if schema.N_ACTIONS in dec.columns and dec[schema.N_ACTIONS].max() is not None:
        n_act = max(n_act, int(dec[schema.N_ACTIONS].max()))  # type: ignore[arg-type]
    keys = ["run_id", "step"]
    meta = [c for c in (schema.HORIZON, schema.COOLDOWN) if c in br.columns]
    if meta:
        out = out.join(br.group_by(keys).agg(pl.col(meta).first()), on=keys, how="left")
    outcomes = [c for c in BRANCH_OUTCOMES if c in br.columns]
    for i in range(n_act):
        part = br.filter(pl.col(schema.ACTION) == i).unique(keys, keep="first")
        part = part.select(*keys, *[pl.col(c).alias(f"{c}_a{i}") for c in outcomes])
        out = out.join(part, on=keys, how="left", maintain_order="left")
    return out
