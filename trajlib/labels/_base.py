"""The label-strategy interface: how one branch's outcome is scored.

A strategy turns each row of the branches table (``trajlib.schema.BRANCH_SCHEMA``: one row per
``(run_id, step, action)``) into a **log-loss outcome** (lower is better). :func:`make_labels` then
compares each action's outcome with the keep action's outcome at the same decision point.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import polars as pl

from trajlib.errors import ConfigError

__all__ = ["LabelStrategy"]


class LabelStrategy(ABC):
    """Scores branch outcomes; one small subclass per strategy, registered by ``name``.

    Parameters shared by every strategy
    -----------------------------------
    tie_tol:
        Advantages (log-loss units) within ``tie_tol`` of the best one count as ties; among ties the
        keep action wins, so noise does not push the hyperparameters away. ``1e-3`` is a 0.1 % loss
        difference.
    diverged_penalty:
        A diverged branch (``diverged`` true, or a non-finite outcome) scores ``diverged_penalty``
        log-units worse than the worst finite branch of the same decision point (and never better
        than ``-diverged_penalty`` relative to keep). It stays finite so regressors can fit it.
    """

    name: ClassVar[str] = ""
    required_columns: ClassVar[tuple[str, ...]] = ()
    #: False for strategies that label from the trajectory alone (runs recorded without branches)
    needs_branches: ClassVar[bool] = True
    #: True for branch strategies that also read each run's main trajectory and run row (``final``):
    #: :func:`~trajlib.labels.make_labels` then needs its ``steps`` and ``runs`` arguments
    needs_trajectory: ClassVar[bool] = False

    def __init__(self, tie_tol: float = 1e-3, diverged_penalty: float = 1.0) -> None:
        if not (isinstance(tie_tol, int | float) and math.isfinite(tie_tol) and tie_tol >= 0):
            raise ConfigError("tie_tol", "a finite number >= 0", tie_tol)
        if not (
            isinstance(diverged_penalty, int | float)
            and math.isfinite(diverged_penalty)
            and diverged_penalty > 0
        ):
            raise ConfigError("diverged_penalty", "a finite number > 0", diverged_penalty)
        self.tie_tol = float(tie_tol)
        self.diverged_penalty = float(diverged_penalty)

    def check(self, branches: pl.DataFrame) -> None:
        """Raise :class:`ConfigError` when ``branches`` cannot be labelled by this strategy."""
        missing = [c for c in self.required_columns if c not in branches.columns]
        if missing:
            raise ConfigError(
                "branches",
                f"a branches table with columns {list(self.required_columns)}",
                f"missing {missing}",
                hint=f"label strategy {self.name!r}",
            )

    @abstractmethod
    def log_outcome(self) -> pl.Expr:
        """Expression over the branches table: Float64 log-loss per branch (lower is better).

        Null means "not measured" (the action's advantage stays unknown); NaN or infinity means the
        branch blew up and is scored like a diverged one.
        """

    def branch_log_outcomes(
        self,
        branches: pl.DataFrame,
        steps: pl.DataFrame | pl.LazyFrame | None = None,
        runs: pl.DataFrame | None = None,
    ) -> pl.Series:
        """Float64 log-outcome per row of ``branches``, in row order, with the meaning of
        :meth:`log_outcome` (null = not measured, NaN / infinity = blew up). The default evaluates
        :meth:`log_outcome`; strategies with ``needs_trajectory`` override it and read ``steps``
        and ``runs`` too."""
        return branches.select(self.log_outcome().cast(pl.Float64).alias("_lo")).to_series()

    def _needs_tables(self, reads: str) -> ConfigError:
        """The error of :meth:`log_outcome` for a strategy that also reads ``reads`` (its
        outcomes come from :meth:`branch_log_outcomes` with the step and runs tables)."""
        return ConfigError(
            "label strategy",
            "a strategy that labels from the branches table alone",
            repr(self.name),
            hint=f"{self.name!r} also reads {reads}: make_labels(branches, {self.name!r}, "
            "keep, steps=store.steps(), runs=store.runs().collect())",
        )

    def params(self) -> dict[str, Any]:
        """Constructor parameters (JSON-able), recorded in checkpoints."""
        return {"tie_tol": self.tie_tol, "diverged_penalty": self.diverged_penalty}

    def to_dict(self) -> dict[str, Any]:
        """``{"name": ..., "params": {...}}`` for manifests."""
        return {"name": self.name, "params": self.params()}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"
