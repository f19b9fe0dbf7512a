"""Multi-run baselines: choose on validation, score on test, charge every step."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import linear_task

from trajlib.errors import ConfigError
from trajlib.evaluate import cosine_method, train_task
from trajlib.evaluate._pbt import RayPBT
from trajlib.evaluate._strategies import GridSearch, OptunaSearch, SuccessiveHalving, lr_grid
from trajlib.evaluate._t1t2 import T1T2
from trajlib.tasks import get_task


def test_lr_grid_is_log_spaced() -> None:
    g = lr_grid(8)
    assert len(g) == 8 and g[0] == pytest.approx(1 / 30) and g[-1] == pytest.approx(30)
    assert np.allclose(np.diff(np.log(g)), np.log(900) / 7)


def test_grid_chooses_on_validation_and_reports_test() -> None:
    task = get_task("tiny-mlp")
    grid = [0.1, 0.5, 2.0]
    tr = GridSearch(grid, name="tuned").run(task, 0, budget=80)
    vals = tr.info["grid_val_loss"]
    best = int(np.nanargmin(np.array(vals, dtype=float)))
    assert tr.info["chosen_lr_scale"] == grid[best]
    assert tr.info["at_grid_edge"] == (best in (0, 2))
    assert tr.cost == 3 and tr.cost_steps == 3 * 80
    # the score is the *test* loss of that very run (same seed -> same init and batches)
    ref = train_task(task, cosine_method(grid[best]), 0, budget=80)
    assert tr.final_val_loss == pytest.approx(ref.final_val_loss)
    assert tr.test_loss == pytest.approx(ref.test_loss) and tr.test_loss != tr.final_val_loss


def test_grid_prefers_validation_over_test() -> None:
    # validation targets are 0: val prefers the slowest learner, while test (same law as train)
    # prefers the fastest. The grid must follow validation.
    task = linear_task("zero", budget=60)
    tr = GridSearch([0.01, 0.3]).run(task, 0)
    assert tr.info["chosen_lr_scale"] == 0.01
    fast = train_task(task, cosine_method(0.3), 0)
    assert fast.test_loss < tr.test_loss


def test_optuna_search_runs_prunes_and_charges_steps() -> None:
    task = get_task("tiny-mlp")
    tr = OptunaSearch(5, low=0.2, high=5.0).run(task, 0, budget=100)
    assert tr.method == "optuna cosine (5 trials)"
    assert 0.2 <= tr.info["chosen_lr_scale"] <= 5.0
    assert tr.info["trials"] == 5
    assert 0 < tr.cost <= 5 and math.isfinite(tr.test_loss)
    if tr.info["pruned"]:
        assert tr.cost < 5


def test_successive_halving_charges_total_steps() -> None:
    task = get_task("tiny-mlp")
    sh = SuccessiveHalving([0.25, 0.5, 1.0, 2.0])
    assert sh.rounds(80) == [20, 40, 80]
    tr = sh.run(task, 0, budget=80)
    # 4 LRs for 20 steps, 2 for the next 20, 1 for the last 40
    assert tr.cost_steps == pytest.approx(4 * 20 + 2 * 20 + 1 * 40)
    assert tr.info["chosen_lr_scale"] == tr.info["rounds"][-1]["kept_lr_scale"][0]
    # warm start: the survivor's trace is its own uninterrupted run
    ref = train_task(task, cosine_method(tr.info["chosen_lr_scale"]), 0, budget=80)
    assert tr.final_val_loss == pytest.approx(ref.final_val_loss)
    assert tr.test_loss == pytest.approx(ref.test_loss)


@pytest.mark.parametrize(("mode", "direction"), [("zero", 1), ("double", -1)])
def test_t1t2_moves_l2_and_noise_the_right_way(mode: str, direction: int) -> None:
    """Val targets 0 -> more regularisation helps; val targets 2 w* -> less helps."""
    s = T1T2(l2_init=1e-2, noise_init=0.3, every=1, hyper_lr=0.05)
    tr = s.run(linear_task(mode, budget=100), 0)
    assert direction * (tr.info["final_l2"] - 1e-2) > 0
    assert direction * (tr.info["final_noise"] - 0.3) > 0
    assert math.isfinite(tr.info["t1t2_overhead"]) and tr.info["t1t2_reference_wall_s"] > 0
    assert tr.cost == pytest.approx(1 + 2 * tr.info["hyper_steps"] / 100)


def test_strategy_arguments_are_validated() -> None:
    with pytest.raises(ConfigError, match="n_trials"):
        OptunaSearch(0)
    with pytest.raises(ConfigError, match="eta"):
        SuccessiveHalving(eta=1)
    with pytest.raises(ConfigError, match="population"):
        RayPBT(population=1)
    with pytest.raises(ConfigError, match="multipliers"):
        GridSearch([])


@pytest.mark.slow
@pytest.mark.ray
def test_pbt_ray_tune_returns_a_trace_and_charges_population() -> None:
    import dataclasses

    pytest.importorskip("ray.tune")
    # a built-in (Ray ships it to its workers); validation every 10 steps -> 6 Tune iterations
    task = dataclasses.replace(get_task("digits-mlp"), val_every=10)
    pbt = RayPBT(population=4, perturb_every=2)
    try:
        tr = pbt.run(task, 0, budget=60)
    finally:
        pbt.close()
    assert tr.method == "PBT (Ray Tune, 4 members)"
    assert tr.cost == 4 and tr.cost_steps == 240
    assert list(tr.val_steps) == [10, 20, 30, 40, 50, 60]
    assert not tr.diverged and math.isfinite(tr.test_loss)
    lo, hi = task.default_lr / 30, task.default_lr * 30
    assert all(lo * 0.999 <= v <= hi * 1.001 for v in tr.lr)
    assert tr.info["member_errors"] == []
