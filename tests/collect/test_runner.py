"""The runner: branches use common random numbers, divergence stops only the diverged member,
hyperparameters stay within bounds, every behaviour family produces valid, recorded choices, and
an injected controller policy drives the 'controller' behaviour."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import polars as pl
import pytest

from trajlib import schema as S
from trajlib.collect import BEHAVIOURS, DecisionContext, parse_recipe, run_population
from trajlib.collect._behaviour import draw_params, make_behaviour, target_multiplier


def _recipe(**sections):
    base = {"collect": {"tasks": ["digits-mlp"], "runs_per_task": 2, "budget": 60, "every": 20}}
    for k, v in sections.items():
        if k == "collect":
            base["collect"].update(v)
        else:
            base[k] = v
    return parse_recipe(base, name="test")


def test_branch_keep_equals_main_trajectory_validation():
    """Common random numbers: the 'keep' branch from step s, run for H steps, ends where the main
    trajectory (which kept) is at step s + H: the same validation loss."""
    r = _recipe(
        collect={"val_every": 20, "runs_per_task": 3, "population": 3},
        actions={"lr": [0.5, 1.0, 2.0], "momentum": [-0.5, 0.0, 0.5]},
        behaviour={"kind": "keep"},
        branch={"enabled": True, "horizon": 20, "cooldown": 0},
    )
    results = run_population(r.run_configs())
    keep = r.action_space.keep_index
    checked = 0
    for res in results:
        val = dict(
            res.steps.filter(pl.col(S.VAL_LOSS).is_not_null())
            .select(S.STEP, S.VAL_LOSS)
            .iter_rows()
        )
        kept = res.branches.filter(pl.col(S.ACTION) == keep)
        assert len(kept) == 2  # decisions at 20 and 40
        for s, v in kept.select(S.STEP, S.BRANCH_VAL_LOSS).iter_rows():
            assert math.isclose(v, val[s + 20 - 1], rel_tol=1e-4), (s, v, val[s + 19])
            checked += 1
        others = res.branches.filter(pl.col(S.ACTION) != keep)[S.BRANCH_VAL_LOSS].to_numpy()
        assert np.isfinite(others).all()
        assert (res.decisions[S.ACTION] == keep).all()
        assert (res.decisions[S.PROPENSITY] == 1.0).all()
    assert checked == 6


def test_divergence_stops_only_the_diverged_member():
    r = _recipe(
        collect={"runs_per_task": 3, "population": 3, "budget": 80},
        branch={"enabled": False},
        behaviour={"kind": "keep"},
    )
    specs = r.run_configs()
    specs[1] = replace(specs[1], lr0=1e4)  # a huge LR
    results = run_population(specs)
    bad = results[1].run
    assert bad[S.STATUS] == S.STATUS_DIVERGED
    assert bad[S.DIVERGED_AT] is not None and 0 <= bad[S.DIVERGED_AT] < 80
    assert bad[S.STEPS_DONE] == bad[S.DIVERGED_AT] + 1 == len(results[1].steps)
    assert results[1].layers.shape[0] == bad[S.STEPS_DONE]  # the record is kept
    for i in (0, 2):
        assert results[i].run[S.STATUS] == S.STATUS_COMPLETE
        assert len(results[i].steps) == 80
        assert math.isfinite(results[i].run[S.FINAL_VAL_LOSS])
        assert results[i].steps[S.FINITE].all()


def test_hyperparameters_move_within_bounds():
    r = _recipe(
        collect={"runs_per_task": 4, "population": 4, "budget": 200, "every": 10},
        space={
            "lr_min": 0.5,
            "lr_max": 2.0,
            "momentum_range": 3.0,
            "momentum_min": 0.8,
            "momentum_max": 0.95,
            "weight_decay_range": 10.0,
            "weight_decay_min": 1e-4,
            "weight_decay_max": 1e-3,
            "l2": 1e-4,
            "l2_range": 10.0,
            "input_noise": 0.1,
            "input_noise_range": 3.0,
            "layer_lr_range": 10.0,
            "layer_lr_min": 0.5,
            "layer_lr_max": 2.0,
        },
        actions={"lr": [0.5, 1, 2], "momentum": [-1.0, 0, 1.0], "weight_decay": [0.1, 1, 10]},
        behaviour={"kind": "random-walk", "p_move": 1.0},
        branch={"enabled": False},
    )
    results = run_population(r.run_configs())
    moved = {"mult": set(), "mom": set(), "wd": set()}
    for res in results:
        st = res.steps
        lr0 = json.loads(res.run[S.ENTRY])["lr0"]
        assert st[S.LR_MULT].min() >= 0.5 - 1e-6 and st[S.LR_MULT].max() <= 2.0 + 1e-6
        np.testing.assert_allclose(st[S.LR].to_numpy(), lr0 * st[S.LR_MULT].to_numpy(), rtol=1e-5)
        assert st[S.MOMENTUM].min() >= 0.8 - 1e-6 and st[S.MOMENTUM].max() <= 0.95 + 1e-6
        assert st[S.WEIGHT_DECAY].min() >= 1e-4 * (1 - 1e-5)
        assert st[S.WEIGHT_DECAY].max() <= 1e-3 * (1 + 1e-5)
        assert 1e-5 - 1e-9 <= st[S.L2][0] <= 1e-3 + 1e-9
        assert 0.1 / 3 - 1e-7 <= st[S.INPUT_NOISE][0] <= 0.3 + 1e-7
        layer_lr = json.loads(res.run[S.ENTRY])["layer_lr"]
        assert len(layer_lr) == 4 and all(0.5 <= v <= 2.0 for v in layer_lr)
        moved["mult"] |= set(st[S.LR_MULT].unique().to_list())
        moved["mom"] |= set(st[S.MOMENTUM].unique().to_list())
        moved["wd"] |= set(st[S.WEIGHT_DECAY].unique().to_list())
        assert res.run[S.STATUS] == S.STATUS_COMPLETE
    assert all(len(v) > 2 for v in moved.values())  # every hyperparameter actually moved


def _ctx(step, mult, factors, history=None):
    return DecisionContext(
        step=step,
        budget=1000,
        every=50,
        lr_mult=mult,
        lr_factors=factors,
        keep=int(np.argmin(np.abs(np.log(factors)))),
        mult_bounds=(1e-3, 1e2),
        history=history or (lambda: {"loss": np.ones(step)}),
    )


@pytest.mark.parametrize("kind", [k for k in BEHAVIOURS if k != "controller"])
def test_each_behaviour_family_gives_valid_probabilities_and_tracks_its_schedule(kind):
    rng = np.random.default_rng(0)
    params = draw_params(kind, rng)
    beh = make_behaviour(kind, 0.6, params=params, epsilon=0.1)
    factors = np.array([0.5, 0.7, 1.0, 1.4, 2.0])
    m = beh.initial_mult()
    losses = list(np.linspace(2.0, 1.0, 300)) + [1.0] * 700  # a plateau for reduce-on-plateau
    for s in range(50, 1000, 50):
        ctx = _ctx(s, m, factors, lambda s=s: {"loss": np.array(losses[:s])})
        p = beh.probabilities(ctx)
        assert p.shape == (5,) and (p >= 0).all() and math.isclose(p.sum(), 1.0)
        a, prop = beh.choose(np.random.default_rng(s), ctx)
        assert 0 <= a < 5 and 0 < prop <= 1
        before = m
        m = float(np.clip(m * factors[a], 1e-3, 1e2))
        if kind in ("cosine", "step", "warmup-cosine", "one-cycle", "piecewise-constant"):
            target = max(target_multiplier(kind, params, (s + 25) / 1000), 1e-3)
            # tracked on the grid: the greedy move closes the gap by a full x2 step, or lands
            # within half a grid step of the target
            if prop > 0.5:
                err_before, err = abs(math.log(before / target)), abs(math.log(m / target))
                assert err <= max(err_before - math.log(2.0), math.log(2.0) / 2) + 1e-9
    if kind == "reduce-on-plateau":
        assert beh.target < 1.0  # the plateau made it decay


def test_behaviour_families_are_recorded_with_spec_seed_and_propensities():
    kinds = ["random-walk", "cosine", "step", "warmup-cosine", "one-cycle", "reduce-on-plateau"]
    r = _recipe(
        collect={"runs_per_task": 6, "population": 6, "budget": 100, "every": 10},
        behaviour={"kind": kinds, "epsilon": 0.2},
        branch={"enabled": False},
    )
    results = run_population(r.run_configs())
    n_actions = len(r.action_space)
    for kind, res in zip(kinds, results):
        entry = json.loads(res.run[S.ENTRY])
        assert res.run[S.BEHAVIOUR] == kind == entry["behaviour"]["kind"]
        assert entry["behaviour"]["seed"] == res.run[S.SEED]
        params = entry["behaviour"]["params"]
        assert (params == {}) == (kind == "random-walk")  # the drawn schedule parameters
        d = res.decisions
        assert len(d) == 9 and (d[S.N_ACTIONS] == n_actions).all()
        p = d[S.PROPENSITY].to_numpy()
        assert ((p > 0) & (p <= 1)).all()
        if kind != "random-walk":  # tracking policies: 1 - eps + eps / A, or eps / A
            allowed = np.array([0.8 + 0.2 / n_actions, 0.2 / n_actions])
            assert np.isclose(p[:, None], allowed[None, :], rtol=1e-5).any(1).all()


def test_controller_behaviour_uses_the_injected_policy_with_epsilon_exploration():
    r = _recipe(
        collect={"runs_per_task": 2, "population": 2, "budget": 60, "every": 20},
        behaviour={"kind": "controller", "checkpoint": "models/some-controller", "epsilon": 0.2},
        branch={"enabled": False},
    )
    seen = []

    def policy(ctx: DecisionContext) -> np.ndarray:
        seen.append({**{k: len(v) for k, v in ctx.history().items()}, "ctx": ctx})
        p = np.zeros(5)
        p[4] = 1.0  # always x2
        return p

    results = run_population(r.run_configs(), policy=policy)
    assert len(seen) == 4
    assert seen[0][S.LOSS] == 20 and seen[0][S.LR] == 20 and seen[1][S.GRAD_NORM] == 20
    assert seen[-1][S.LOSS] == 40
    assert [(d["ctx"].step, d["ctx"].budget, d["ctx"].every) for d in seen] == [
        (20, 60, 20),
        (20, 60, 20),
        (40, 60, 20),
        (40, 60, 20),
    ]
    for res in results:
        p = res.decisions[S.PROPENSITY].to_numpy()
        a = res.decisions[S.ACTION].to_numpy()
        np.testing.assert_allclose(p, np.where(a == 4, 0.8 + 0.2 / 5, 0.2 / 5), rtol=1e-6)


def test_controller_behaviour_without_a_policy_is_a_config_error():
    from trajlib.errors import ConfigError

    r = _recipe(behaviour={"kind": "controller", "checkpoint": "x"}, branch={"enabled": False})
    with pytest.raises(ConfigError, match="behaviour.kind"):
        run_population(r.run_configs())


def test_layer_lr_walk_moves_per_layer_multipliers_at_decisions_within_bounds():
    space = {"layer_lr_range": 2.0, "layer_lr_min": 0.5, "layer_lr_max": 2.0}
    walk = _recipe(
        collect={"runs_per_task": 3, "population": 3, "budget": 100, "every": 20, "val_every": 10},
        space={**space, "layer_lr_walk": 0.5},
        behaviour={"kind": "keep"},
        branch={"enabled": True, "horizon": 10, "cooldown": 0},
    )
    fixed = _recipe(
        collect={"runs_per_task": 3, "population": 3, "budget": 100, "every": 20},
        space=space,
        behaviour={"kind": "keep"},
        branch={"enabled": True, "horizon": 10, "cooldown": 0},
    )
    # a walk-free recipe's entries (so its run ids) are what they were before the key existed
    assert "layer_lr_walk" not in fixed.run_configs()[0].to_dict()["hp0"]
    assert "layer_lr_walk" not in fixed.run_configs()[0].to_dict()["space"]
    runs = run_population(walk.run_configs())
    again = run_population(walk.run_configs()[1:2])  # the same member trained alone
    for res in runs:
        entry = json.loads(res.run[S.ENTRY])
        path = entry["layer_lr_path"]
        assert [p[0] for p in path] == [20, 40, 60, 80]
        values = np.array([entry["layer_lr"], *[p[1] for p in path]])
        assert values.shape == (5, 4) and ((values >= 0.5) & (values <= 2.0)).all()
        assert (np.abs(np.diff(np.log(values), axis=0)) > 0).any()  # they moved
        # the walk happens before branching: the 'keep' branch still ends where the run does
        val = dict(
            res.steps.filter(pl.col(S.VAL_LOSS).is_not_null())
            .select(S.STEP, S.VAL_LOSS)
            .iter_rows()
        )
        kept = res.branches.filter(pl.col(S.ACTION) == walk.action_space.keep_index)
        for s, v in kept.select(S.STEP, S.BRANCH_VAL_LOSS).iter_rows():
            assert math.isclose(v, val[s + 10 - 1], rel_tol=1e-4)
    assert (
        json.loads(again[0].run[S.ENTRY])["layer_lr_path"]
        == json.loads(runs[1].run[S.ENTRY])["layer_lr_path"]
    )
    np.testing.assert_allclose(
        again[0].steps[S.LOSS].to_numpy(), runs[1].steps[S.LOSS].to_numpy(), rtol=1e-4
    )
    assert "layer_lr_path" not in json.loads(run_population(fixed.run_configs())[0].run[S.ENTRY])
    # the moves are applied: without the walk the same run matches up to the first decision only
    spec = walk.run_configs()[1]
    no_walk = replace(spec, start=replace(spec.start, layer_lr_walk=0.0))
    still = run_population([no_walk])[0].steps[S.LOSS].to_numpy()
    moved = runs[1].steps[S.LOSS].to_numpy()
    np.testing.assert_allclose(still[:21], moved[:21], rtol=1e-5)
    assert not np.allclose(still[21:], moved[21:], rtol=1e-4)


def test_layer_lr_walk_out_of_range_is_a_config_error():
    with pytest.raises(Exception, match="space.layer_lr_walk"):
        _recipe(space={"layer_lr_walk": 3.0})


def test_a_population_refuses_runs_of_different_settings():
    from trajlib.errors import ConfigError

    a = _recipe().run_configs()[0]
    with pytest.raises(ConfigError) as e:
        run_population([a, replace(a, budget=a.budget + 20)])
    assert e.value.field == "configs.budget"
    with pytest.raises(ConfigError) as e:
        run_population([a, replace(a, decision=replace(a.decision, every=7))])
    assert e.value.field == "configs.decision"
    with pytest.raises(ConfigError, match="at least one run config"):
        run_population([])
