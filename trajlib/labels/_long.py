"""``long``: a weighted combination of the outcome at H/2, at H and after the cool-down."""

from __future__ import annotations

import math
from typing import Any

import polars as pl

from trajlib import schema as S
from trajlib.errors import ConfigError
from trajlib.labels._base import LabelStrategy

__all__ = ["LongHorizonLabels"]


class LongHorizonLabels(LabelStrategy):
    """Outcome = weighted mean of log-losses along the branch, the far end weighted most.

    ``log_outcome = (discount * log L(H/2) + log L(H) + cooled_weight * log L_cooled) / total``
    where ``total`` sums the weights of the terms present. ``L(H/2)`` (``val_loss_half``) and
    ``L_cooled`` (``val_loss_cooled``, used only where ``cooldown > 0``) are optional per row;
    ``L(H)`` is required. ``discount`` in ``[0, 1]`` is how much the half-way point counts next to
    the end (0 reduces to ``greedy``); the mean keeps the label in log-loss units.

    Averaging over the branch rewards actions that help along the whole horizon, and the cooled
    term (when measured) removes part of the short-horizon bias without committing the deployment
    to a cool-down as strongly as ``annealed`` does.
    """

    name = "long"
    required_columns = (S.RUN_ID, S.STEP, S.ACTION, S.BRANCH_VAL_LOSS, S.BRANCH_DIVERGED)

    def __init__(
        self,
        discount: float = 0.5,
        cooled_weight: float = 1.0,
        tie_tol: float = 1e-3,
        diverged_penalty: float = 1.0,
    ) -> None:
        super().__init__(tie_tol=tie_tol, diverged_penalty=diverged_penalty)
        if not (isinstance(discount, int | float) and 0.0 <= discount <= 1.0):
            raise ConfigError("discount", "a number in [0, 1]", discount)
        if not (isinstance(cooled_weight, int | float) and math.isfinite(cooled_weight)):
            raise ConfigError("cooled_weight", "a finite number >= 0", cooled_weight)
        if cooled_weight < 0:
            raise ConfigError("cooled_weight", "a finite number >= 0", cooled_weight)
        self.discount = float(discount)
        self.cooled_weight = float(cooled_weight)

    def params(self) -> dict[str, Any]:
        return {"discount": self.discount, "cooled_weight": self.cooled_weight, **super().params()}

    def log_outcome(self) -> pl.Expr:
        # An optional term counts only where measured; its weight joins the normaliser likewise.
        end = pl.col(S.BRANCH_VAL_LOSS).cast(pl.Float64).log()
        num = end
        den = pl.lit(1.0)
        # ``schema`` is fixed, but tables built by hand may lack the optional columns; make_labels
        # adds them as nulls before evaluating this expression.
        half = pl.col(S.BRANCH_VAL_LOSS_HALF).cast(pl.Float64).log()
        has_half = pl.col(S.BRANCH_VAL_LOSS_HALF).is_not_null()
        num = num + pl.when(has_half).then(self.discount * half).otherwise(0.0)
        den = den + pl.when(has_half).then(self.discount).otherwise(0.0)
        cooled = pl.col(S.BRANCH_VAL_LOSS_COOLED).cast(pl.Float64).log()
        has_cooled = pl.col(S.BRANCH_VAL_LOSS_COOLED).is_not_null() & (
            pl.col(S.COOLDOWN).fill_null(0) > 0
        )
        num = num + pl.when(has_cooled).then(self.cooled_weight * cooled).otherwise(0.0)
        den = den + pl.when(has_cooled).then(self.cooled_weight).otherwise(0.0)
        return pl.when(end.is_null()).then(None).otherwise(num / den)
