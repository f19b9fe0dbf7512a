"""``annealed``: the validation loss after a short linear LR cool-down at the branch's end."""

from __future__ import annotations

import polars as pl

from trajlib import schema as S
from trajlib.errors import ConfigError
from trajlib.labels._base import LabelStrategy

__all__ = ["AnnealedLabels"]


class AnnealedLabels(LabelStrategy):
    """Outcome = ``val_loss_cooled``: each branch is cooled linearly to LR 0 before measuring.

    Cooling removes the noise advantage of a small LR, so these labels correct the short-horizon
    bias. **They match only a deployment that ends with a cool-down** (a forced final decay, or the
    residual mode on a decaying base schedule such as cosine or wsd): without one, a controller
    trained on them keeps raising the LR and never lowers it (see ANCHORS, "What a small prototype
    of this pipeline found").

    Branches measured without a cool-down (``cooldown == 0``) are refused with a
    :class:`~trajlib.errors.ConfigError`.
    """

    name = "annealed"
    required_columns = (
        S.RUN_ID,
        S.STEP,
        S.ACTION,
        S.COOLDOWN,
        S.BRANCH_VAL_LOSS_COOLED,
        S.BRANCH_DIVERGED,
    )

    def check(self, branches: pl.DataFrame) -> None:
        super().check(branches)
        n_bad = branches.filter(pl.col(S.COOLDOWN).fill_null(0) <= 0).height
        if n_bad:
            raise ConfigError(
                "branches.cooldown",
                "> 0 on every branch for label strategy 'annealed'",
                f"{n_bad} of {branches.height} branch rows with cooldown == 0",
                hint="collect branches with a cool-down (branch cooldown > 0), "
                "or use label strategy 'greedy' or 'long'",
            )

    def log_outcome(self) -> pl.Expr:
        return pl.col(S.BRANCH_VAL_LOSS_COOLED).cast(pl.Float64).log()
