"""``gbt``: one LightGBM regressor per action on the advantage target.

Why one model per action rather than one model with the action as a feature: each action's
target has its own rows (an action that was not branched is simply absent from its model, no
masking tricks), its own scale (a diverged "x2" is a large negative outlier that should not shape
the other actions' trees), and the fit cost stays ``A x (n rows)`` instead of a model over
``A x n`` stacked rows. Actions whose known targets are all equal (the keep action: exactly 0)
need no model at all. A single decision walks every forest at once with the numpy evaluator in
:mod:`trajlib.controllers._treewalk` (exactly LightGBM's split rule, NaN handled natively).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightgbm as lgb
import numpy as np

from trajlib.controllers._base import Controller, ControllerState
from trajlib.controllers._registry import register_controller_kind
from trajlib.controllers._treewalk import Forests
from trajlib.errors import CheckpointError

__all__ = ["GBTController"]


@register_controller_kind
class GBTController(Controller):
    """Gradient-boosted trees (LightGBM), one regressor per action.

    Parameters
    ----------
    n_estimators: trees per action (100 x 15 leaves x 4 actions keeps a single decision near
        40 us; decision tables are thousands to a million rows, where more trees add little).
    num_leaves: leaves per tree (15 keeps trees shallow and single decisions fast).
    learning_rate: shrinkage.
    min_child_samples: minimum rows per leaf.
    subsample, colsample_bytree: row / feature fraction per tree (1.0 = deterministic fit).
    reg_lambda: L2 on leaf values.
    random_state: seed for LightGBM.
    num_threads: threads used by ``fit`` and batch prediction (1: the machine is shared).
    """

    kind = "gbt"

    def __init__(
        self,
        n_estimators: int = 100,
        num_leaves: int = 15,
        learning_rate: float = 0.1,
        min_child_samples: int = 20,
        subsample: float = 1.0,
        colsample_bytree: float = 1.0,
        reg_lambda: float = 1.0,
        random_state: int = 0,
        num_threads: int = 1,
    ) -> None:
        self.n_estimators = n_estimators
        self.num_leaves = num_leaves
        self.learning_rate = learning_rate
        self.min_child_samples = min_child_samples
        self.subsample = subsample
        self.colsample_bytree = colsample_bytree
        self.reg_lambda = reg_lambda
        self.random_state = random_state
        self.num_threads = num_threads

    def _lgb_params(self) -> dict[str, Any]:
        return {
            "objective": "regression",
            "num_leaves": int(self.num_leaves),
            "learning_rate": float(self.learning_rate),
            "min_child_samples": int(self.min_child_samples),
            "bagging_fraction": float(self.subsample),
            "bagging_freq": 1 if self.subsample < 1.0 else 0,
            "feature_fraction": float(self.colsample_bytree),
            "lambda_l2": float(self.reg_lambda),
            "seed": int(self.random_state),
            "num_threads": int(self.num_threads),
            "deterministic": True,
            "force_row_wise": True,
            "verbosity": -1,
        }

    def _fit(
        self, X: np.ndarray, T: np.ndarray, groups: np.ndarray | None, order: np.ndarray | None
    ) -> None:
        params = self._lgb_params()
        full: lgb.Dataset | None = None
        boosters: list[lgb.Booster | None] = []
        constants: list[float | None] = []
        for a in range(T.shape[1]):
            known = ~np.isnan(T[:, a])
            y = T[known, a]
            if y.size == 0 or np.all(y == y[0]) or y.size < 2 * int(self.min_child_samples):
                boosters.append(None)
                constants.append(float(y.mean()) if y.size else None)
                continue
            if known.all():
                if full is None:  # bin the features once, reuse for every fully known action
                    full = lgb.Dataset(X, label=y, params=params, free_raw_data=False).construct()
                else:
                    full.set_label(y)
                ds = full
            else:
                ds = lgb.Dataset(X[known], label=y, params=params)
            booster = lgb.train(params, ds, num_boost_round=int(self.n_estimators))
            # Round-trip through the text format, so a fitted and a loaded controller are the
            # same model bit for bit.
            boosters.append(lgb.Booster(model_str=booster.model_to_string()))
            constants.append(None)
        self._set_models(boosters, constants)

    def _set_models(
        self, boosters: list[lgb.Booster | None], constants: list[float | None]
    ) -> None:
        self.boosters_ = boosters
        self.constants_ = constants
        # one forest per modelled action (an ensemble asked for some actions walks only theirs)
        # and all of them as one node table
        self.action_forests_ = {
            i: Forests([b.dump_model()]) for i, b in enumerate(boosters) if b is not None
        }
        self.forests_ = Forests.concat(list(self.action_forests_.values()))
        self.model_actions_ = np.array(list(self.action_forests_), dtype=np.intp)
        # unseen actions (no known target at all) are never chosen
        self.base_values_ = np.array(
            [
                (-np.inf if c is None else c) if b is None else 0.0
                for b, c in zip(boosters, constants)
            ]
        )

    def _predict_values(
        self, X: np.ndarray, groups: np.ndarray | None, order: np.ndarray | None
    ) -> np.ndarray:
        out = np.tile(self.base_values_, (X.shape[0], 1))
        for a, b in enumerate(self.boosters_):
            if b is not None:
                out[:, a] = b.predict(X, num_threads=int(self.num_threads))
        return out

    def _decide_values(
        self, x: np.ndarray, state: ControllerState
    ) -> tuple[np.ndarray, ControllerState]:
        values = self.base_values_.copy()
        if self.model_actions_.size:
            values[self.model_actions_] = self.forests_.predict_one(x)
        return values, state

    # ------------------------------------------------------------------ checkpoint payload
    def _payload(self) -> tuple[dict[str, bytes], dict[str, Any]]:
        files: dict[str, bytes] = {}
        for a, b in enumerate(self.boosters_):
            if b is not None:
                files[f"model_{a}.txt"] = b.model_to_string().encode("utf-8")
        state = {
            "n_features_in": int(self.n_features_in_),
            "n_actions": int(self.n_actions_),
            "constants": self.constants_,
            "models": {
                str(a): f"model_{a}.txt" for a, b in enumerate(self.boosters_) if b is not None
            },
        }
        return files, state

    @classmethod
    def _from_payload(
        cls, params: Mapping[str, Any], files: Mapping[str, bytes], state: Mapping[str, Any]
    ) -> GBTController:
        ctl = cls(**params)
        try:
            n_actions = int(state["n_actions"])
            constants = list(state["constants"])
            models = {int(k): str(v) for k, v in dict(state["models"]).items()}
            n_features = int(state["n_features_in"])
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"model_state.json: malformed gbt state ({e!r})") from e
        if len(constants) != n_actions:
            raise CheckpointError(
                f"model_state.json: expected {n_actions} constants, got {len(constants)}"
            )
        boosters: list[lgb.Booster | None] = []
        for a in range(n_actions):
            name = models.get(a)
            if name is None:
                boosters.append(None)
                continue
            if name not in files:
                raise CheckpointError(f"{name}: payload file missing from the manifest")
            try:
                booster = lgb.Booster(model_str=files[name].decode("utf-8"))
            except (lgb.basic.LightGBMError, UnicodeDecodeError) as e:
                raise CheckpointError(f"{name}: not a LightGBM text model ({e})") from e
            if booster.num_feature() != n_features:
                raise CheckpointError(
                    f"{name}: model expects {booster.num_feature()} features, "
                    f"manifest says {n_features}"
                )
            boosters.append(booster)
        ctl._set_models(boosters, constants)
        ctl.n_features_in_ = n_features
        ctl.n_actions_ = n_actions
        return ctl
