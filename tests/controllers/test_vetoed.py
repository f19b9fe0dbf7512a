"""The ``vetoed`` kind: a primary proposes, a veto fitted on other labels blocks what it predicts
harmful; composed from two fitted controllers or two checkpoints, saved and deployed as one."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ctl_synth import KEEP, Synth, make_controller, save_kwargs, split_runs

from tests.deploy._helpers import make_model, train
from trajlib.controllers import (
    VetoedController,
    combine_checkpoints,
    load_controller,
    save_controller,
)
from trajlib.controllers._harm import HarmRule
from trajlib.deploy import ControllerScheduler
from trajlib.errors import CheckpointError, ConfigError, FeatureSetMismatchError

ENS = {"n_members": 3, "val_columns": [], "val_withhold": 0.0}


def _parts(synth: Synth) -> tuple:
    """A primary fitted on the synthetic advantages, and a veto fitted on labels where the two
    raises (actions 3 and 4) always lose: a short label that sees only their harm."""
    train, _ = split_runs(synth)
    X, T, g = synth.X[train], synth.T[train], synth.runs[train]
    primary = make_controller("ensemble", **ENS).fit(X, T, g)
    Tv = T.copy()
    Tv[:, 3:] = -np.abs(Tv[:, 3:]) - 0.01
    veto = make_controller("ensemble", **ENS).fit(X, Tv, g)
    return primary, veto


@pytest.fixture(scope="module")
def parts(synth: Synth) -> tuple:
    return _parts(synth)


def test_the_veto_blocks_what_it_predicts_harmful_and_nothing_else(synth: Synth, parts) -> None:
    primary, veto = parts
    ctl = VetoedController.of(primary, veto, keep=KEEP)
    _, test = split_runs(synth)
    X = synth.X[test]
    pm, ps = primary.predict_spread(X)
    vm, vs = veto.predict_spread(X)
    mean, std = ctl.predict_spread(X)
    blocked = ctl.blocked(X)
    np.testing.assert_array_equal(blocked, (vm < 0) & (np.arange(5) != KEEP))
    assert blocked[:, 3:].mean() > 0.9  # the raises, nearly everywhere
    np.testing.assert_array_equal(mean[~blocked], pm[~blocked])  # the rest: the primary's
    np.testing.assert_array_equal(mean[blocked], np.minimum(pm, vm)[blocked])
    assert (mean[blocked] < 0).all()  # so neither keep (0) nor a rule with margin >= 0 takes it
    np.testing.assert_array_equal(std, ps)
    # the primary alone raises often; vetoed, a raise is taken only where the veto let it
    acts = mean.argmax(1)
    assert (pm.argmax(1) >= 3).mean() > 0.3
    assert not blocked[np.arange(len(acts)), acts].any()
    rule = HarmRule(z=0.5)
    for i in range(len(X)):
        a, _ = rule.choose(mean[i], std[i], KEEP)
        assert not blocked[i, a]


def test_a_controller_vetoed_by_itself_decides_as_it_does_alone(synth: Synth, parts) -> None:
    primary, _ = parts
    ctl = VetoedController.of(primary, primary, keep=KEEP)
    _, test = split_runs(synth)
    X = synth.X[test]
    np.testing.assert_array_equal(ctl.predict(X), primary.predict(X))


def test_a_larger_z_blocks_less(synth: Synth, parts) -> None:
    primary, veto = parts
    X = synth.X[split_runs(synth)[1]]
    n = [
        VetoedController.of(primary, veto, keep=KEEP, veto_z=z).blocked(X).sum()
        for z in (0, 1, 4, 50)
    ]
    assert n[0] >= n[1] >= n[2] >= n[3] and n[0] > n[3]


def test_a_negative_z_blocks_what_the_veto_is_not_sure_is_harmless(synth: Synth, parts) -> None:
    """``veto_z < 0`` blocks more than 0, and every action it blocks scores below keep, even
    where the veto's own mean is positive (its lower bound is the blocked mean)."""
    primary, veto = parts
    X = synth.X[split_runs(synth)[1]]
    zero = VetoedController.of(primary, veto, keep=KEEP, veto_z=0.0)
    neg = VetoedController.of(primary, veto, keep=KEEP, veto_z=-1.0)
    b0, b1 = zero.blocked(X), neg.blocked(X)
    assert (b1 | ~b0).all() and b1.sum() > b0.sum()  # a superset, strictly larger
    vm, _ = veto.predict_spread(X)
    assert (b1 & ~b0 & (vm > 0)).any()  # blocked although the veto's mean is positive
    mean, _ = neg.predict_spread(X)
    assert (mean[b1] < 0).all()
    assert not b1[:, KEEP].any()
    pm, _ = primary.predict_spread(X)
    np.testing.assert_array_equal(mean[~b1], pm[~b1])  # the rest is the primary's


def test_round_trip_and_single_row_paths(synth: Synth, parts, tmp_path: Path) -> None:
    primary, veto = parts
    ctl = VetoedController.of(primary, veto, keep=KEEP, veto_z=0.5)
    path = save_controller(ctl, tmp_path / "v", decision_rule=HarmRule(z=1.0), **save_kwargs())
    m = json.loads((path / "manifest.json").read_text())
    assert m["kind"] == "vetoed" and m["params"] == {"keep": KEEP, "veto_z": 0.5}
    assert any(f.startswith("p.m0.") for f in m["files"]) and any(
        f.startswith("v.m2.") for f in m["files"]
    )
    for f in path.iterdir():
        assert not f.read_bytes().startswith(b"\x80"), f.name  # never a pickle
    lc = load_controller(path)
    X = synth.X[split_runs(synth)[1]]
    m0, s0 = ctl.predict_spread(X)
    m1, s1 = lc.controller.predict_spread(X)
    np.testing.assert_allclose(m1, m0, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(s1, s0, rtol=1e-9, atol=1e-12)
    only = (1, KEEP, 4)
    for i in range(0, len(X), 7):
        mean, std, state = lc.controller.decide_spread(X[i])
        assert state is None
        np.testing.assert_allclose(mean, m0[i], rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(std, s0[i], rtol=1e-6, atol=1e-9)
        mo, so, _ = lc.controller.decide_spread(X[i], only=only)
        np.testing.assert_array_equal(mo[list(only)], mean[list(only)])
        np.testing.assert_array_equal(so[list(only)], std[list(only)])
    # NaN / inf features: finite values, as every kind
    for x in (np.full(6, np.nan), np.array([np.nan, 0.5, np.inf, -np.inf, 0.0, 1.0])):
        v, _ = lc.controller.decide_values(x)
        assert np.isfinite(v).all()


def test_what_cannot_be_composed_is_refused(synth: Synth, parts, tmp_path: Path) -> None:
    primary, veto = parts
    with pytest.raises(ConfigError, match="fit the primary and the veto separately"):
        VetoedController().fit(synth.X, synth.T)
    for z in (math.nan, math.inf, True):
        with pytest.raises(ConfigError, match="veto_z"):
            VetoedController.of(primary, veto, keep=KEEP, veto_z=z)
    with pytest.raises(ConfigError, match="keep"):
        VetoedController.of(primary, veto, keep=5)
    narrow = make_controller("gbt").fit(synth.X[:, :4], synth.T)
    with pytest.raises(FeatureSetMismatchError, match="4 features"):
        VetoedController.of(primary, narrow, keep=KEEP)
    gru = make_controller("gru", epochs=1).fit(synth.X, synth.T, synth.runs, synth.steps)
    with pytest.raises(ConfigError, match="stateless"):
        VetoedController.of(primary, gru, keep=KEEP)
    # a checkpoint whose part file is missing from its manifest
    path = save_controller(
        VetoedController.of(primary, veto, keep=KEEP), tmp_path / "v", **save_kwargs()
    )
    state = json.loads((path / "model_state.json").read_text())
    state["veto"]["files"].append("model_9.txt")
    files = {f.name: f.read_bytes() for f in path.iterdir()}
    with pytest.raises(CheckpointError, match=r"v\.model_9\.txt: payload file missing"):
        VetoedController._from_payload({"veto_z": 0.0, "keep": KEEP}, files, state)
    del state["primary"]["kind"]
    with pytest.raises(CheckpointError, match="malformed primary part"):
        VetoedController._from_payload({"veto_z": 0.0, "keep": KEEP}, files, state)


def test_combine_checkpoints_checks_that_both_decide_the_same_thing(
    tiny_checkpoint: Path, tmp_path: Path, synth: Synth, parts
) -> None:
    other = save_controller(parts[0], tmp_path / "synth", **save_kwargs())
    with pytest.raises(FeatureSetMismatchError, match="hash abc123"):
        combine_checkpoints(tiny_checkpoint, other, tmp_path / "x")
    m = json.loads((tiny_checkpoint / "manifest.json").read_text())
    shifted = tmp_path / "shifted"
    shifted.mkdir()
    for f in tiny_checkpoint.iterdir():
        (shifted / f.name).write_bytes(f.read_bytes())
    m["every"] = m["every"] + 5
    (shifted / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ConfigError, match="veto every"):
        combine_checkpoints(tiny_checkpoint, shifted, tmp_path / "x")


def test_a_combined_checkpoint_deploys_from_the_command_line(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    out = tmp_path / "combined"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "trajlib",
            "combine",
            str(tiny_checkpoint),
            str(tiny_checkpoint),
            "--out",
            str(out),
            "--veto-z",
            "0.5",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    lc = load_controller(out)
    m = lc.manifest
    assert m["kind"] == "vetoed" and m["label_strategy"]["veto_z"] == 0.5
    assert m["training_data"]["veto"]["store"] == m["training_data"]["store"]
    # deployed: the same decisions as the primary alone (it never proposes what it predicts < 0)
    taken = []
    for ckpt in (tiny_checkpoint, out):
        model = make_model(0)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        sched = ControllerScheduler(opt, ckpt, total_steps=120)
        train(model, opt, sched, 0, 120, val_every=10)
        assert sched.events["errors"] == 0
        taken.append(list(sched.actions_taken))
    assert taken[0] and taken[0] == taken[1]


@pytest.mark.parametrize("version", ["v7", "v8"])
def test_the_shipped_vetoed_models_are_their_primary_vetoed_by_v6(version: str) -> None:
    models = Path(__file__).resolve().parents[2] / "models"
    loaded = load_controller(models / f"trajlib-lr-{version}" / "checkpoint")
    v6 = load_controller(models / "trajlib-lr-v6" / "checkpoint").controller
    ctl = loaded.controller
    assert isinstance(ctl, VetoedController) and ctl.veto_z == 0.0
    keep = loaded.action_space.keep_index
    rule = loaded.decision_rule
    assert rule is not None
    # v7's rule reads the moves it may take; v8's one rule for every move reads them all
    only = rule.actions_read(keep, len(loaded.action_space))
    if only is None:
        only = tuple(range(ctl.n_actions_))
    assert keep in only
    rng = np.random.default_rng(0)
    X = rng.normal(0, 2, size=(150, ctl.n_features_in_))
    X[rng.random(X.shape) < 0.1] = np.nan
    pm, _ = ctl.primary_.predict_spread(X)
    vm, _ = v6.predict_spread(X)
    mean, _ = ctl.predict_spread(X)
    blocked = (vm < 0) & (np.arange(ctl.n_actions_) != keep)
    assert blocked.any() and (~blocked).any()
    np.testing.assert_array_equal(mean[~blocked], pm[~blocked])
    for i, x in enumerate(X):
        m1, s1, _ = ctl.decide_spread(x)
        m2, s2, _ = ctl.decide_spread(x, only=only)
        np.testing.assert_allclose(m1, mean[i], rtol=1e-9, atol=1e-12)
        np.testing.assert_array_equal(m2[list(only)], m1[list(only)])
        np.testing.assert_array_equal(s2[list(only)], s1[list(only)])
        a, _ = rule.choose(m2, s2, keep)
        assert a == keep or not blocked[i, a]
