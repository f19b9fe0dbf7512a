"""``end``: the validation loss at the end of the run, measured by branches that reach the budget.

A branch that runs to the run's budget (``step + horizon == budget``; a collection recipe with
``branch.horizon`` at least the longest budget and ``cooldown = 0``, such as
``collectors/generated-v10.toml``) holds its action to the end under the base schedule, which
anneals the LR by itself (cosine ends at 0). Its validation loss there is the run's final
validation loss under "take this move, then keep": a measured end-of-run outcome, where ``final``
extrapolates a short branch with a fitted annealing law. Branches that stop short of the budget
are *not measured* (null), so a store that mixes short and full branches is labelled from the
full ones only; a decision point whose keep branch stops short has no label.
"""

from __future__ import annotations

import polars as pl

from trajlib import schema as S
from trajlib.errors import ConfigError
from trajlib.labels._base import LabelStrategy

__all__ = ["EndLabels"]


class EndLabels(LabelStrategy):
    """Outcome = ``val_loss`` of branches whose horizon reaches the run's budget; null elsewhere."""

    name = "end"
    needs_trajectory = True  # reads the runs table (budgets); the step table is not scanned
    required_columns = (
        S.RUN_ID,
        S.STEP,
        S.ACTION,
        S.HORIZON,
        S.BRANCH_VAL_LOSS,
        S.BRANCH_DIVERGED,
    )

    def log_outcome(self) -> pl.Expr:
        raise self._needs_tables("each run's budget")

    def branch_log_outcomes(
        self,
        branches: pl.DataFrame,
        steps: pl.DataFrame | pl.LazyFrame | None = None,
        runs: pl.DataFrame | None = None,
    ) -> pl.Series:
        if runs is None or S.BUDGET not in runs.columns or S.RUN_ID not in runs.columns:
            raise ConfigError(
                "runs",
                f"a runs table with {S.RUN_ID!r} and {S.BUDGET!r}",
                None if runs is None else runs.columns,
                hint="label strategy 'end'",
            )
        budgets = runs.select(pl.col(S.RUN_ID).cast(pl.String), pl.col(S.BUDGET).cast(pl.Int64))
        frame = branches.with_row_index("_row").with_columns(pl.col(S.RUN_ID).cast(pl.String))
        frame = frame.join(budgets.unique(S.RUN_ID), on=S.RUN_ID, how="left").sort("_row")
        unknown = frame.filter(pl.col(S.BUDGET).is_null())
        if unknown.height:
            raise ConfigError(
                "runs",
                "a row (with its budget) for every run of the branches table",
                f"{unknown[S.RUN_ID].n_unique()} runs missing, e.g. {unknown[S.RUN_ID][0]!r}",
                hint="label strategy 'end'",
            )
        reaches = (pl.col(S.STEP).cast(pl.Int64) + pl.col(S.HORIZON).cast(pl.Int64)) >= pl.col(
            S.BUDGET
        )
        out = pl.when(reaches).then(pl.col(S.BRANCH_VAL_LOSS).cast(pl.Float64).log())
        return frame.select(out.alias("_lo")).to_series()
