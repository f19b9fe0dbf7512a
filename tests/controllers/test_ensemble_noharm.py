"""The ``ensemble`` kind (val_present input, validation withheld, bootstrap members), the
do-no-harm rule and the fit options that make them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from ctl_synth import FAST_PARAMS, FEATURES, KEEP, Synth, save_kwargs, split_runs

from trajlib.controllers import EnsembleController, HarmRule, load_controller, save_controller
from trajlib.controllers._ensemble import withheld_share, withhold_validation
from trajlib.controllers._harm import (
    Z_GRID,
    calibrate_rule,
    choose_z,
    per_action_z,
    rule_actions,
    rule_table,
)
from trajlib.errors import CheckpointError, ConfigError

VAL = [FEATURES.index("noise_a"), FEATURES.index("noise_b")]  # stand-ins for val features


def ensemble(base: str, **over: object) -> EnsembleController:
    params: dict = {
        "base": base,
        "base_params": FAST_PARAMS[base],
        "n_members": 3,
        "val_columns": VAL,
        "val_withhold": 0.5,
    }
    return EnsembleController(**{**params, **over})


def test_withholding_is_deterministic_by_run_id() -> None:
    runs = np.array([f"run{i:03d}" for i in range(200) for _ in range(3)])
    X = np.arange(600 * 4, dtype=float).reshape(600, 4)
    idx, masked = withhold_validation(X, runs, [2, 3], 0.5)
    chosen = {r for r in runs if withheld_share(r) < 0.5}
    assert 60 < len(chosen) < 140  # about half
    assert idx.size == 600 + 3 * len(chosen) and masked.sum() == 3 * len(chosen)
    assert set(runs[idx[masked]]) == chosen
    # the same runs whatever the row order
    perm = np.random.default_rng(0).permutation(600)
    idx2, masked2 = withhold_validation(X[perm], runs[perm], [2, 3], 0.5)
    assert set(runs[perm][idx2[masked2]]) == chosen
    assert withhold_validation(X, runs, [2, 3], 0.0)[1].sum() == 0
    assert withhold_validation(X, runs, [2, 3], 1.0)[1].sum() == 600


@pytest.mark.parametrize("base", ["gbt", "mlp", "gru"])
def test_round_trip_and_single_row_path(base: str, synth: Synth, tmp_path: Path) -> None:
    train, test = split_runs(synth)
    ctl = ensemble(base).fit(synth.X[train], synth.T[train], synth.runs[train], synth.steps[train])
    assert len(ctl.members_) == 3
    assert ctl.members_[0].n_features_in_ == len(FEATURES) + 1  # + val_present
    rule = HarmRule(z=1.0, margin=0.001, calibration={"note": "test"})
    path = save_controller(ctl, tmp_path / base, decision_rule=rule, **save_kwargs())
    lc = load_controller(path)
    assert lc.decision_rule == rule
    assert [n for n in lc.manifest["files"] if n.startswith("m0.")]
    Xt, rt, st = synth.X[test], synth.runs[test], synth.steps[test]
    m0, s0 = ctl.predict_spread(Xt, rt, st)
    m1, s1 = lc.controller.predict_spread(Xt, rt, st)
    np.testing.assert_allclose(m1, m0, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(s1, s0, rtol=1e-6, atol=1e-9)
    assert (s0 > 0).any()
    # the single-row path (with state for gru) equals the batch prediction, run by run
    run = rt[0]
    rows = np.flatnonzero(rt == run)
    state = lc.controller.initial_state()
    for i in rows[np.argsort(st[rows])]:
        mean, std, state = lc.controller.decide_spread(Xt[i], state)
        np.testing.assert_allclose(mean, m0[i], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(std, s0[i], rtol=1e-4, atol=1e-6)


def test_missing_validation_changes_the_input_not_the_width(synth: Synth) -> None:
    ctl = ensemble("gbt", val_withhold=1.0).fit(synth.X, synth.T, synth.runs, synth.steps)
    X = synth.X[:40].copy()
    X[:, VAL] = np.nan
    mean, std = ctl.predict_spread(X)
    assert np.isfinite(mean).all() and np.isfinite(std).all()
    Z = ctl._augment(X)
    assert Z.shape[1] == len(FEATURES) + 1 and (Z[:, -1] == 0).all()
    assert (ctl._augment(synth.X[:40])[:, -1] == 1).all()


def test_ensemble_params_are_checked(synth: Synth) -> None:
    for bad in (
        {"n_members": 0},
        {"val_withhold": 1.5},
        {"val_withhold": 0.5, "val_columns": []},
        {"val_columns": [99]},
    ):
        with pytest.raises(ConfigError):
            ensemble("gbt", **bad).fit(synth.X, synth.T, synth.runs)
    with pytest.raises(ConfigError):
        EnsembleController(base="ensemble").fit(synth.X, synth.T, synth.runs)


def test_rule_choices() -> None:
    keep = 1
    mean = np.array([[0.10, 0.0, 0.05], [0.02, 0.0, -0.3], [-0.1, 0.0, -0.2]])
    std = np.array([[0.01, 0.0, 0.0], [0.05, 0.0, 0.0], [0.0, 0.0, 0.0]])
    np.testing.assert_array_equal(rule_actions(mean, std, keep, 0.0, 0.0), [0, 0, 1])
    np.testing.assert_array_equal(rule_actions(mean, std, keep, 1.0, 0.0), [0, 1, 1])
    # z = 8: row 0's bound of action 0 (0.02) is below action 2's (0.05): the safer move
    np.testing.assert_array_equal(rule_actions(mean, std, keep, 8.0, 0.0), [2, 1, 1])
    np.testing.assert_array_equal(rule_actions(mean, std, keep, 0.0, 0.06), [0, 1, 1])
    a, kept = HarmRule(z=1.0).choose(mean[1], std[1], keep)
    assert (a, kept) == (1, True)
    assert HarmRule(z=1.0).choose(mean[2], std[2], keep) == (1, False)  # keep anyway: not "kept"
    with pytest.raises(ConfigError):
        HarmRule(z=-1.0)
    with pytest.raises(CheckpointError):
        HarmRule.from_dict({"kind": "other", "z": 1, "margin": 0})


def test_rule_table_and_choice() -> None:
    T = np.array([[0.1, 0.0], [-0.2, 0.0], [0.3, 0.0], [np.nan, 0.0]])
    mean = np.array([[0.2, 0.0], [0.05, 0.0], [0.4, 0.0], [0.1, 0.0]])
    std = np.array([[0.05, 0.0], [0.1, 0.0], [0.1, 0.0], [0.0, 0.0]])
    table = rule_table(mean, std, T, 1, z_grid=(0.0, 1.0, 5.0))
    assert [r["n_rows"] for r in table] == [3.0, 3.0, 3.0]  # row 3's chosen outcome is unknown
    assert table[0]["precision"] == pytest.approx(2 / 3) and table[1]["precision"] == 1.0
    assert table[2]["acted_share"] == 0.0
    assert choose_z(table, 0.9) == 1.0
    assert choose_z(table, 0.5) == 0.0
    assert choose_z(table[:1], 0.9) == 0.0  # none reaches it: the best mean realized


def test_per_action_rule_never_takes_an_imprecise_action() -> None:
    keep = 1
    mean = np.array([[0.10, 0.0, 0.05], [0.02, 0.0, -0.3], [-0.1, 0.0, -0.2]])
    std = np.array([[0.01, 0.0, 0.0], [0.05, 0.0, 0.0], [0.0, 0.0, 0.0]])
    # action 0 never (None), action 2 at z = 0: row 0 moves by action 2, the others keep
    np.testing.assert_array_equal(
        rule_actions(mean, std, keep, np.array([np.inf, 0.0, 0.0]), 0.0), [2, 1, 1]
    )
    rule = HarmRule(z=1.0, z_by_action=(None, 1.0, 0.0))
    assert rule.choose(mean[0], std[0], keep) == (2, False)
    assert rule.choose(mean[1], std[1], keep) == (1, True)  # the argmax (0) is never taken
    assert HarmRule.from_dict(json.loads(json.dumps(rule.to_dict()))) == rule
    with pytest.raises(ConfigError):
        HarmRule(z=1.0, z_by_action=(-1.0, 0.0, 0.0))
    with pytest.raises(ConfigError, match="z_by_action"):
        HarmRule(z=1.0, z_by_action=(None, 1.0)).choose(mean[0], std[0], keep)
    # calibration: action 0 is right half the time whatever z, action 2 always: 0 is never taken
    rng = np.random.default_rng(0)
    n = 400
    mean = np.column_stack([rng.uniform(0.0, 0.2, n), np.zeros(n), rng.uniform(0.0, 0.2, n)])
    std = np.full((n, 3), 0.01)
    T = np.column_stack([rng.choice([-0.1, 0.1], n), np.zeros(n), np.full(n, 0.05)])
    z, tables = per_action_z(mean, std, T, keep, 0.0, 0.8, z_grid=(0.0, 1.0), min_acted=10)
    assert z[0] is None and z[2] == 0.0
    assert {int(r["z"]) for r in tables["0"]} == {0, 1} and "1" not in tables
    assert all(r["precision"] < 0.8 for r in tables["0"])  # never precise enough


def test_calibration_by_family_refits_per_fold(synth: Synth) -> None:
    fam = np.array([f"fam{int(t[-1]) % 2}" for t in synth.table["task"].to_list()])
    rule = calibrate_rule(
        ensemble("gbt"), synth.X, synth.T, synth.runs, synth.steps, fam, KEEP, min_precision=0.7
    )
    cal = rule.calibration
    assert cal["grouped_by"] == "family" and cal["n_folds"] == 2
    acted = [r["acted_share"] for r in cal["table"]]
    assert acted == sorted(acted, reverse=True)
    assert choose_z(cal["table"], 0.7) == rule.z
    json.dumps(rule.to_dict(), allow_nan=False)  # manifest-safe
    per = calibrate_rule(
        ensemble("gbt"), synth.X, synth.T, synth.runs, synth.steps, fam, KEEP,
        min_precision=0.7, per_action=True, min_acted=5,
    )  # fmt: skip
    assert per.z == rule.z and per.z_by_action is not None
    assert len(per.z_by_action) == synth.T.shape[1]
    assert set(per.calibration["per_action"]["tables"]) == {
        str(a) for a in range(synth.T.shape[1]) if a != KEEP
    }
    json.dumps(per.to_dict(), allow_nan=False)


def test_fit_store_options_are_checked(tiny_store: Path, tmp_path: Path) -> None:
    from trajlib.controllers import fit_store

    for bad in (
        {"ensemble": 0},
        {"ensemble": 2.5},
        {"val_withhold": 1.5},
        {"val_withhold": "half"},
        {"no_harm": "yes"},
        {"harm_z": -1.0},
        {"harm_z": float("inf")},
        {"harm_margin": float("nan"), "no_harm": True},
        {"harm_precision": 0.0, "no_harm": True},
        {"no_harm": True, "ensemble": 1},
    ):
        with pytest.raises(ConfigError):
            fit_store(tiny_store, out=tmp_path / "x", **bad)
    assert not (tmp_path / "x").exists()


def test_defaults_keep_todays_checkpoint(tiny_checkpoint: Path) -> None:
    lc = load_controller(tiny_checkpoint)
    assert lc.manifest["kind"] == "gbt" and lc.decision_rule is None
    assert "validation" not in lc.manifest["training_data"]


def test_cli_fit_options(tiny_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from trajlib.cli import main

    out = tmp_path / "cli"
    rc = main(
        [
            "fit",
            str(tiny_store),
            "--out",
            str(out),
            "--ensemble",
            "2",
            "--val-withhold",
            "0.5",
            "--harm-z",
            "1.5",
            "--harm-margin",
            "0.01",
        ]
    )
    assert rc == 0 and "noval_regret" in capsys.readouterr().out
    lc = load_controller(out)
    assert lc.manifest["params"]["n_members"] == 2 and lc.manifest["params"]["val_withhold"] == 0.5
    assert lc.decision_rule == HarmRule(z=1.5, margin=0.01)
    assert main(["model", "info", str(out)]) == 0
    assert "act iff mean - 1.5 x std > 0.01; set by hand" in capsys.readouterr().out
    pa = tmp_path / "per-action"
    assert main(["fit", str(tiny_store), "--out", str(pa), "--harm-per-action"]) == 0
    rule = load_controller(pa).decision_rule
    assert rule is not None and rule.z_by_action is not None  # --harm-per-action implies the rule
    capsys.readouterr()
    assert main(["model", "info", str(pa)]) == 0
    assert "z_a (" in capsys.readouterr().out
    assert main(["fit", str(tiny_store), "--out", str(tmp_path / "y"), "--ensemble", "0"]) != 0


def test_one_row_choose_equals_the_batch_rule() -> None:
    """``HarmRule.choose`` (plain floats, one row) takes the batch rule's action, and says
    "kept" exactly when the plain argmax (NaN: not scored) would have moved."""
    rng = np.random.default_rng(0)
    for trial in range(400):
        n = int(rng.integers(2, 7))
        keep = int(rng.integers(0, n))
        mean = rng.normal(0, 1, n) * rng.choice([1e-3, 1.0])
        std = np.abs(rng.normal(0, 1, n)) * rng.choice([0.0, 1.0])
        mean[rng.random(n) < 0.2] = np.nan
        mean[keep] = 0.0
        zs = None
        if trial % 2:
            zs = tuple(None if rng.random() < 0.3 else float(rng.choice(Z_GRID)) for _ in range(n))
        rule = HarmRule(
            z=float(rng.choice(Z_GRID)), margin=float(rng.choice([0.0, 0.01])), z_by_action=zs
        )
        want = int(rule_actions(mean[None, :], std[None, :], keep, rule.z_vector, rule.margin)[0])
        plain = int(np.nanargmax(mean))
        assert rule.choose(mean, std, keep) == (want, want == keep and plain != keep)
