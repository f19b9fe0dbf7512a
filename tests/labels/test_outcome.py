"""``outcome`` labels: runs without branches labelled from the trajectory and the propensities."""

from __future__ import annotations

import copy
import functools
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from trajlib import schema as S
from trajlib.errors import ConfigError
from trajlib.labels import OutcomeLabels, compare_labels, make_labels, trajectory_labels

KEEP, A = 2, 5


def steps_frame(loss: list[float], run_id: str = "r0") -> pl.DataFrame:
    return pl.DataFrame(
        {S.RUN_ID: [run_id] * len(loss), S.STEP: list(range(len(loss))), S.LOSS: loss},
        schema={S.RUN_ID: pl.String, S.STEP: pl.Int32, S.LOSS: pl.Float32},
    )


def decisions_frame(rows: list[tuple[int, int, float]], run_id: str = "r0") -> pl.DataFrame:
    return pl.DataFrame(
        {
            S.RUN_ID: [run_id] * len(rows),
            S.STEP: [r[0] for r in rows],
            S.ACTION: [r[1] for r in rows],
            S.PROPENSITY: [r[2] for r in rows],
        },
        schema={
            S.RUN_ID: pl.String,
            S.STEP: pl.Int32,
            S.ACTION: pl.Int16,
            S.PROPENSITY: pl.Float32,
        },
    )


def test_taken_action_only_against_a_keep_baseline() -> None:
    # loss falls by a factor 0.9 per 10 steps under keep, by 0.5 after the action-4 decision
    loss = [1.0] * 10 + [0.9] * 10 + [0.45] * 10 + [0.405] * 10 + [0.405]
    dec = decisions_frame([(10, KEEP, 0.5), (20, 4, 0.25), (30, KEEP, 0.5), (40, 0, 0.2)])
    lab = trajectory_labels(steps_frame(loss), dec, KEEP, A, horizon=10, window=1, bandwidth=100.0)
    # step 40 + H runs past the end (last step 40): dropped
    assert lab[S.STEP].to_list() == [10, 20, 30]
    adv = lab.select([f"adv_{i}" for i in range(A)]).to_numpy()
    # keep rows: 0 for keep, NaN elsewhere
    assert adv[0, KEEP] == 0 and adv[2, KEEP] == 0
    assert np.isnan(np.delete(adv[0], KEEP)).all()
    # action 4 at step 20: d = log(0.405/0.9) ... window 1: L(29)/L(19) = 0.45/0.9
    # baseline: the keep decisions' weighted mean change, log(0.9/1.0) and log(0.405/0.45)
    base = math.log(0.9)
    assert adv[1, 4] == pytest.approx(base - math.log(0.5), rel=1e-5)
    assert np.isnan(np.delete(adv[1], 4)).all()
    assert lab["best_action"].to_list() == [KEEP, 4, KEEP]
    assert lab["weight"].to_list() == pytest.approx([2.0, 4.0, 2.0])
    # controllers see the taken action's target only; the rest is masked
    assert lab["n_valid"].to_list() == [1, 1, 1]


def test_a_worse_move_is_negative_and_divergence_is_penalised() -> None:
    loss = [1.0] * 10 + [0.9] * 10 + [1.2] * 10 + [0.81] * 10 + [float("nan")] * 11
    dec = decisions_frame([(10, KEEP, 0.5), (20, 3, 0.5), (30, KEEP, 0.5), (40, 1, 0.5)])
    lab = OutcomeLabels(horizon=10, window=1, diverged_penalty=2.0).labels(
        steps_frame(loss), dec, KEEP, A
    )
    by = {r[S.STEP]: r for r in lab.iter_rows(named=True)}
    assert by[20]["adv_3"] < 0 and by[20]["best_action"] == KEEP
    assert by[40]["adv_1"] == -2.0


def test_importance_weights_are_clipped_and_weight_the_baseline() -> None:
    # two keep decisions with different outcomes; the rarer one (p = 0.01) dominates up to clip
    loss = [1.0] * 10 + [0.5] * 10 + [0.5] * 10 + [0.45] * 11
    dec = decisions_frame([(10, KEEP, 0.01), (20, 4, 0.5), (30, KEEP, 0.5)])
    strat = OutcomeLabels(horizon=10, window=1, bandwidth=100.0, clip=3.0)
    lab = strat.labels(steps_frame(loss), dec, KEEP, A)
    assert lab["weight"].to_list() == pytest.approx([3.0, 2.0, 2.0])
    d_keep = np.array([math.log(0.5), math.log(0.45 / 0.5)])
    base = (3.0 * d_keep[0] + 2.0 * d_keep[1]) / 5.0
    assert lab["adv_4"][1] == pytest.approx(base - 0.0, rel=1e-5)


def test_bad_input_is_refused() -> None:
    with pytest.raises(ConfigError):
        OutcomeLabels(source="test")
    with pytest.raises(ConfigError):
        OutcomeLabels(clip=0.5)
    dec = decisions_frame([(0, KEEP, 0.0)])
    with pytest.raises(ConfigError, match="propensities"):
        trajectory_labels(steps_frame([1.0] * 30), dec, KEEP, A, horizon=10)
    # branch labelling with a trajectory strategy points to the right function
    br = pl.DataFrame({S.RUN_ID: ["r"], S.STEP: [0], S.ACTION: [KEEP], S.PROPENSITY: [1.0]})
    with pytest.raises(ConfigError, match="trajectory_labels"):
        make_labels(br.with_columns(pl.lit(False).alias(S.BRANCH_DIVERGED)), "outcome", KEEP)


@pytest.mark.parametrize("kind", ["gbt", "mlp", "gru"])
def test_fit_store_on_outcome_labels(tiny_store: Path, tmp_path: Path, kind: str) -> None:
    """A real store fitted with labels='outcome': NaN targets of unobserved actions are masked."""
    from trajlib.controllers import fit_store, load_controller

    params = {"n_estimators": 20, "min_child_samples": 2} if kind == "gbt" else {"epochs": 5}
    path, metrics = fit_store(
        tiny_store, kind=kind, labels="outcome", out=tmp_path / kind, params=params
    )
    assert metrics["n_train_rows"] > 0 and metrics["n_test_rows"] > 0
    loaded = load_controller(path)
    assert "outcome" in str(loaded.manifest["label_strategy"])
    ctl = loaded.controller
    values = ctl.predict_values(np.zeros((3, ctl.n_features_in_)))
    assert values.shape == (3, A) and np.isfinite(values).all()


def test_fit_store_on_a_store_without_branches(unbranched_store: Path, tmp_path: Path) -> None:
    """Runs recorded without branches train a controller with labels='outcome' only."""
    from trajlib.controllers import fit_store
    from trajlib.controllers._from_store import training_table
    from trajlib.store import open_store

    assert open_store(unbranched_store).branches().collect().height == 0
    with pytest.raises(ConfigError, match="outcome"):
        fit_store(unbranched_store, kind="gbt", labels="greedy", out=tmp_path / "g")
    table, lab, spec = training_table(unbranched_store, labels="outcome")
    adv = lab.select([f"adv_{i}" for i in range(A)]).to_numpy()
    assert lab.height > 0 and (np.isfinite(adv).sum(axis=1) == 1).all()  # one known target a row
    keep = spec.action_space.keep_index
    assert (adv[:, keep][np.isfinite(adv[:, keep])] == 0).all()
    path, metrics = fit_store(
        unbranched_store,
        kind="gbt",
        labels="outcome",
        out=tmp_path / "o",
        params={"n_estimators": 10, "min_child_samples": 2},
    )
    assert path.exists() and metrics["n_test_rows"] > 0


@pytest.fixture(scope="module")
def branched_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real store big enough to compare labels: 2 tasks x 8 runs x 200 steps, all branched."""
    from tests._tiny import TINY_RECIPE
    from trajlib.collect import collect, parse_recipe
    from trajlib.store import create_store, open_store

    recipe = copy.deepcopy(TINY_RECIPE)
    recipe["collect"]["runs_per_task"] = 8
    path = tmp_path_factory.mktemp("cmp") / "store"
    create_store(path)
    threads = torch.get_num_threads()
    collect(parse_recipe(recipe), functools.partial(open_store, path), workers=1, progress=False)
    torch.set_num_threads(threads)
    return path


def test_outcome_labels_agree_with_branch_labels(branched_store: Path) -> None:
    """Labels from the main trajectory alone rank the taken moves like the greedy branches do."""
    from trajlib.controllers._from_store import training_table
    from trajlib.store import open_store

    st = open_store(branched_store)
    _, greedy, spec = training_table(st, labels="greedy")
    _, outcome, _ = training_table(st, labels="outcome")
    keep = spec.action_space.keep_index
    cmp = compare_labels(outcome, greedy, st.decisions().collect(), keep)
    print(cmp)
    assert cmp["n_moves"] >= 50
    assert cmp["spearman"] > 0.1
    assert cmp["sign_agreement"] > 0.55
    assert cmp["argmax_agreement_reachable"] > 0.5
