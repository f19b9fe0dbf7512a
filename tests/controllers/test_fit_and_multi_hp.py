"""fit_from_table end to end (branches -> labels -> fit), and a multi-hyperparameter action space."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from ctl_synth import (
    ALL_KINDS,
    FAST_PARAMS,
    FEATURES,
    KEEP,
    MULTS,
    Synth,
    decision_spec,
    make_controller,
    save_kwargs,
)

from trajlib import schema as S
from trajlib.controllers import load_controller, save_controller
from trajlib.controllers._fit import fit_from_table, infer_keep_index
from trajlib.errors import ConfigError
from trajlib.labels import make_labels
from trajlib.space import Action, ActionSpace, HyperParam, HyperparameterSpace


def branches_from(s: Synth) -> pl.DataFrame:
    """Branch outcomes whose greedy advantages are the synthetic targets."""
    n, A = s.T.shape
    base = np.exp(np.random.default_rng(3).normal(0, 0.3, size=n))  # loss of keep per decision
    return pl.DataFrame(
        {
            S.RUN_ID: np.repeat(s.runs, A),
            S.STEP: np.repeat(s.steps, A),
            S.ACTION: np.tile(np.arange(A), n),
            S.HORIZON: 100,
            S.COOLDOWN: 0,
            S.BRANCH_TRAIN_LOSS: 1.0,
            S.BRANCH_VAL_LOSS_HALF: None,
            S.BRANCH_VAL_LOSS: (base[:, None] * np.exp(-s.T)).reshape(-1),
            S.BRANCH_VAL_LOSS_COOLED: None,
            S.BRANCH_VAL_ACC: None,
            S.BRANCH_DIVERGED: False,
        },
        schema=S.BRANCH_SCHEMA,
    )


def test_fit_from_table_end_to_end(synth: Synth) -> None:
    runs = synth.table.select(S.RUN_ID, S.TASK).unique()
    labels = make_labels(branches_from(synth), "greedy", KEEP, runs=runs)
    np.testing.assert_allclose(
        labels.select(f"adv_{i}" for i in range(5)).to_numpy(), synth.T, atol=2e-6
    )
    table = synth.table.drop(S.TASK)  # task comes from the labels' join with runs
    ctl, m = fit_from_table(table, labels, FEATURES, "gbt", FAST_PARAMS["gbt"])
    assert all(isinstance(v, float) for v in m.values())
    assert m["split_by_task"] == 1.0 and m["n_test_tasks"] >= 1
    assert m["n_test_rows"] % 300 == 0  # whole tasks (12 runs x 25 decisions) held out
    assert m["n_train_runs"] + m["n_test_runs"] == 48  # no run on both sides
    assert m["regret"] < m["regret_keep"] and m["regret"] < m["regret_random"]
    assert m["agreement"] > m["agreement_keep"]
    assert ctl.n_features_in_ == len(FEATURES)


def test_fit_from_table_split_by_run_and_refit(synth: Synth) -> None:
    labels = synth.labels.drop("best_action")  # best action falls back to the argmax
    ctl, m = fit_from_table(
        synth.table, labels, FEATURES, make_controller("mlp"), split="run", refit=True
    )
    assert m["split_by_task"] == 0.0
    assert m["n_train_runs"] + m["n_test_runs"] == 48
    assert m["n_train_rows"] + m["n_test_rows"] == synth.table.height
    assert m["regret"] < m["regret_keep"]


def test_fit_from_table_errors(synth: Synth) -> None:
    with pytest.raises(ConfigError, match="feature_names"):
        fit_from_table(synth.table, synth.labels, ["nope"], "gbt")
    with pytest.raises(ConfigError, match="split"):
        fit_from_table(synth.table, synth.labels, FEATURES, "gbt", split="fold")
    with pytest.raises(ConfigError, match="no matching"):
        fit_from_table(synth.table, synth.labels.with_columns(pl.col(S.STEP) + 1), FEATURES, "gbt")
    assert infer_keep_index(synth.T) == KEEP


# ------------------------------------------------------------------- multiple hyperparameters
def lr_momentum_space() -> tuple[ActionSpace, HyperparameterSpace]:
    actions = ActionSpace(
        (
            Action({}, "keep"),
            Action({"lr": math.log(2.0)}, "lr x2"),
            Action({"lr": math.log(0.5)}, "lr x0.5"),
            Action({"momentum": 0.7}, "momentum up"),
            Action({"momentum": -0.7}, "momentum down"),
        )
    )
    hps = HyperparameterSpace(
        (HyperParam("lr", 1e-5, 1.0, "log"), HyperParam("momentum", 0.5, 0.99, "logit"))
    )
    return actions, hps


def lr_momentum_data(n_runs: int = 30, n_points: int = 20, seed: int = 1):
    """x0 says how far the LR is from its best, x1 the same for momentum; the best action fixes
    the larger gap (keep when both are small)."""
    rng = np.random.default_rng(seed)
    n = n_runs * n_points
    X = rng.normal(size=(n, 4))
    gl, gm = X[:, 0], X[:, 1]
    T = np.zeros((n, 5))
    T[:, 1] = 0.02 * (gl - 0.5)
    T[:, 2] = 0.02 * (-gl - 0.5)
    T[:, 3] = 0.02 * (gm - 0.5)
    T[:, 4] = 0.02 * (-gm - 0.5)
    T[:, 1:] += rng.normal(0, 0.002, size=(n, 4))
    groups = np.repeat(np.arange(n_runs), n_points)
    return X, T, groups


@pytest.mark.parametrize("kind", [k for k in ALL_KINDS if not k.startswith("test-")])
def test_lr_and_momentum_action_space(kind: str, tmp_path: Path) -> None:
    actions, hps = lr_momentum_space()
    assert actions.keep_index == 0 and actions.hyperparameters == ["lr", "momentum"]
    X, T, groups = lr_momentum_data()
    train = groups < 22
    ctl = make_controller(kind).fit(X[train], T[train], groups[train])
    chosen = ctl.predict_values(X[~train], groups[~train]).argmax(1)
    best = np.where(T[~train].max(1) > 1e-3, T[~train].argmax(1), 0)
    assert np.mean(chosen == best) > 0.6
    assert {1, 2, 3, 4} <= set(chosen.tolist())  # it moves both hyperparameters

    names = ["lr_gap", "momentum_gap", "noise_a", "noise_b"]
    kw = {**save_kwargs(4), "spec": decision_spec(names, action_space=actions, hp_space=hps)}
    path = save_controller(ctl, tmp_path / "ckpt", **kw)
    loaded = load_controller(path)
    assert loaded.action_space == actions and loaded.hp_space == hps
    a, _ = loaded.controller.decide(np.array([0.0, 3.0, 0.0, 0.0]))  # momentum far too low
    assert a == 3
    values = loaded.action_space[a].apply({"lr": 0.1, "momentum": 0.9}, loaded.hp_space)
    assert values["lr"] == pytest.approx(0.1) and values["momentum"] > 0.9

    no_momentum = HyperparameterSpace((HyperParam("lr", 1e-5, 1.0, "log"),))
    with pytest.raises(ConfigError, match=r"hp_space.*\['momentum'\]"):
        save_controller(
            ctl, tmp_path / "bad", **{**kw, "spec": replace(kw["spec"], hp_space=no_momentum)}
        )
    assert len(MULTS) == 5
