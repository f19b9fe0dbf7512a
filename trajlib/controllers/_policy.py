"""A fitted controller as a collection behaviour (for collect -> fit -> collect again).

:class:`ControllerPolicy` implements collect's ``DecisionPolicy`` protocol: given the
``DecisionContext`` of one run at a decision point (step, budget, decision interval, the step
table so far) it returns the probabilities of the recipe's actions — all mass on the
controller's choice; the collector adds the recipe's epsilon-exploration. It lives here, not in collect, because
collect sits left of features and controllers; the caller injects it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from trajlib import schema as S
from trajlib.controllers._checkpoint import LoadedController, load_controller
from trajlib.features import get_feature_set
from trajlib.features._offline import derive_arrays

if TYPE_CHECKING:  # collect's protocol; importing collect here would load its engine
    from trajlib.collect import DecisionContext

__all__ = ["ControllerPolicy"]


class ControllerPolicy:
    """Picks the controller's best action at each decision point of a run being collected.

    Picklable by construction (only the checkpoint path is kept until first use), so a process
    pool or Ray can ship ``functools.partial(ControllerPolicy, path)`` to its workers.
    """

    def __init__(self, checkpoint: str | Path) -> None:
        self.checkpoint = str(checkpoint)
        self._loaded: LoadedController | None = None

    @property
    def loaded(self) -> LoadedController:
        if self._loaded is None:
            self._loaded = load_controller(self.checkpoint)
            fs = get_feature_set(self._loaded.feature_set_name)
            if fs.hash != self._loaded.feature_set_hash:
                from trajlib.errors import FeatureSetMismatchError

                raise FeatureSetMismatchError(
                    f"checkpoint {self.checkpoint} uses feature set hash {self._loaded.feature_set_hash}, "
                    f"this trajlib computes {fs.hash}"
                )
        return self._loaded

    def __call__(self, ctx: DecisionContext) -> np.ndarray:
        lc = self.loaded
        s, budget, every = ctx.step, ctx.budget, ctx.every
        cols = {
            c: np.asarray(v)[:s]
            for c, v in ctx.history().items()
            if c in S.STEP_SCHEMA and c not in (S.RUN_ID, S.STEP)
        }
        frame = pl.DataFrame({S.RUN_ID: ["r"] * s, S.STEP: np.arange(s, dtype=np.int32), **cols})
        for c in (S.VAL_LOSS, S.VAL_ACC):  # not measured -> null, as in the store
            if c in frame.columns:
                frame = frame.with_columns(pl.col(c).fill_nan(None))
        # every decision point so far (the GRU reads the whole sequence; others use the last row)
        recurrent = lc.controller.kind == "gru" or getattr(lc.controller, "base", None) == "gru"
        pts = np.arange(every, s + 1, every, dtype=np.int64) if recurrent else np.array([s])
        points = pl.DataFrame({S.RUN_ID: ["r"] * len(pts), S.STEP: pts})
        X, _ = derive_arrays(frame, points, {"r": budget}, lc.feature_set_name)
        keep = lc.action_space.keep_index
        rule = lc.decision_rule
        mean, std = lc.controller.predict_spread(X)
        values, spread = mean[-1], std[-1]
        p = np.zeros(len(lc.action_space))
        if not (np.all(np.isfinite(values)) and np.all(np.isfinite(spread))):
            p[keep] = 1.0
        elif rule is not None:  # the do-no-harm rule, as deployed
            p[rule.choose(values, spread, keep)[0]] = 1.0
        else:
            p[int(np.argmax(values))] = 1.0
        return p
