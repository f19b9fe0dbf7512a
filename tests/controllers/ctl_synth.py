"""Synthetic decision tables where the best action really depends on the features.

(A uniquely named helper module, not ``conftest``, so other test folders' conftests cannot shadow
it; the fixtures live in this folder's ``conftest.py``.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import polars as pl

from trajlib import schema as S
from trajlib.controllers import Controller, controller_kinds, get_controller_kind
from trajlib.space import HyperParam, HyperparameterSpace, lr_action_space
from trajlib.spec import DecisionSpec, FeatureSetRef

MULTS = (0.5, 0.7, 1.0, 1.4, 2.0)
KEEP = 2
FEATURES = ["lr_gap", "progress", "loss_slope", "grad_cos", "noise_a", "noise_b"]
# Small, fast settings per kind; a user-registered kind without an entry uses its defaults.
FAST_PARAMS: dict[str, dict] = {
    "gbt": {"n_estimators": 60, "num_leaves": 7, "learning_rate": 0.1, "min_child_samples": 10},
    "mlp": {"hidden": 32, "epochs": 25, "batch_size": 128, "lr": 3e-3},
    "gru": {"hidden": 16, "epochs": 25, "batch_runs": 8, "lr": 1e-2},
}
# three bootstrap gbt members; column 3 (grad_cos here, noise_b in 4-feature tables) plays a
# validation-derived feature (withheld from half of the runs, read through val_present)
FAST_PARAMS["ensemble"] = {
    "base": "gbt",
    "base_params": FAST_PARAMS["gbt"],
    "n_members": 3,
    "val_columns": [3],
    "val_withhold": 0.5,
}


@dataclass
class Synth:
    table: pl.DataFrame  # run_id, step, task, features
    labels: pl.DataFrame  # run_id, step, best_action, adv_0..adv_4, n_valid
    X: np.ndarray
    T: np.ndarray
    runs: np.ndarray
    steps: np.ndarray
    best: np.ndarray


def make_synth(
    n_runs: int = 48, n_points: int = 25, seed: int = 0, nan_rate: float = 0.03
) -> Synth:
    """Each run has a hidden "LR log-gap" that drifts; the best log-multiplier is the gap pulled
    towards decay late in the run. ``lr_gap`` observes the gap noisily; ``progress`` the run's
    position. Advantage of multiplier m: c * (2 u log m - log(m)^2) (keep = 0) plus noise."""
    rng = np.random.default_rng(seed)
    rows, T = [], []
    for r in range(n_runs):
        gap = rng.normal(0, 0.8)
        task = f"task{r % 4}"
        for k in range(n_points):
            step = 50 * (k + 1)
            progress = (k + 1) / n_points
            gap += rng.normal(0, 0.15)
            u = np.clip(gap, -1.0, 1.0) * math.log(2.0) - 0.6 * max(progress - 0.7, 0.0) / 0.3
            adv = np.array([0.05 * (2 * u * math.log(m) - math.log(m) ** 2) for m in MULTS])
            adv = adv + rng.normal(0, 0.003, size=adv.size)
            adv[KEEP] = 0.0
            feats = {
                "lr_gap": gap + rng.normal(0, 0.1),
                "progress": progress,
                "loss_slope": -0.1 * gap + rng.normal(0, 0.05),
                "grad_cos": math.tanh(-gap) + rng.normal(0, 0.2),
                "noise_a": rng.normal(),
                "noise_b": rng.normal(),
            }
            for name in ("loss_slope", "grad_cos", "noise_a"):
                if rng.random() < nan_rate:
                    feats[name] = float("nan")
            rows.append({S.RUN_ID: f"run{r:03d}", S.STEP: step, S.TASK: task, **feats})
            T.append(adv)
    table = pl.DataFrame(rows).with_columns(pl.col(S.STEP).cast(pl.Int32))
    T_arr = np.array(T)
    filled = np.where(np.isnan(T_arr), -np.inf, T_arr)
    best = np.where(filled[:, KEEP] >= filled.max(1) - 1e-3, KEEP, filled.argmax(1))
    labels = table.select(S.RUN_ID, S.STEP).with_columns(
        pl.Series("best_action", best, dtype=pl.Int16),
        *[pl.Series(f"adv_{i}", T_arr[:, i]) for i in range(len(MULTS))],
        pl.Series("n_valid", np.full(len(T_arr), len(MULTS)), dtype=pl.Int16),
    )
    return Synth(
        table=table,
        labels=labels,
        X=table.select(FEATURES).to_numpy(),
        T=T_arr,
        runs=table[S.RUN_ID].to_numpy(),
        steps=table[S.STEP].to_numpy(),
        best=best,
    )


def make_controller(kind: str, **over: object) -> Controller:
    return get_controller_kind(kind)(**{**FAST_PARAMS.get(kind, {}), **over})


def split_runs(s: Synth, test_share: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    runs = np.unique(s.runs)
    test_runs = set(runs[:: int(round(1 / test_share))])
    test = np.array([r in test_runs for r in s.runs])
    return ~test, test


def lr_space() -> HyperparameterSpace:
    return HyperparameterSpace((HyperParam("lr", 1e-5, 1.0, "log"),))


def decision_spec(names: list[str] | None = None, **changes) -> DecisionSpec:
    """The decision spec the synthetic controllers are saved with (``changes`` replace fields)."""
    fields = dict(
        action_space=lr_action_space(MULTS),
        hp_space=lr_space(),
        every=50,
        mode="free",
        base_schedule="constant",
        feature_set=FeatureSetRef(
            name="core", version="1", hash="abc123", names=tuple(names or FEATURES)
        ),
    )
    return DecisionSpec(**{**fields, **changes})


def save_kwargs(n_features: int = len(FEATURES)) -> dict:
    return dict(
        spec=decision_spec(FEATURES[:n_features]),
        label_strategy={"name": "greedy", "params": {"tie_tol": 1e-3}},
        training_data={"n_rows": 100, "n_runs": 4, "tasks": ["t"], "store": "data/x"},
        offline_metrics={"agreement": 0.5, "regret": float("nan")},
    )


# every kind fitted on one target table (a composed kind, ``vetoed``, has its own tests)
ALL_KINDS = [
    k for k in controller_kinds() if not getattr(get_controller_kind(k), "composed", False)
]
