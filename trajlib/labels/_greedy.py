"""``greedy``: the validation loss at the end of the branch's horizon."""

from __future__ import annotations

import polars as pl

from trajlib import schema as S
from trajlib.labels._base import LabelStrategy

__all__ = ["GreedyLabels"]


class GreedyLabels(LabelStrategy):
    """Outcome = ``val_loss`` after ``horizon`` steps.

    Cheapest and most direct, but it carries the short-horizon bias (Wu et al. 2018): a smaller LR
    lowers the loss *now* by lowering noise, so greedy labels favour decay too early. Prefer
    ``annealed`` or ``long`` when the branches were measured with a cool-down.
    """

    name = "greedy"
    required_columns = (S.RUN_ID, S.STEP, S.ACTION, S.BRANCH_VAL_LOSS, S.BRANCH_DIVERGED)

    def log_outcome(self) -> pl.Expr:
        return pl.col(S.BRANCH_VAL_LOSS).cast(pl.Float64).log()
