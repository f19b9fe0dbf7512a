"""Validation-optional checkpoints and the do-no-harm rule in a live loop (real fits, real store)."""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from tests.deploy._helpers import batch, make_model, optimizer_step
from trajlib.controllers import HarmRule, load_controller
from trajlib.deploy import ControllerScheduler

REPO = Path(__file__).resolve().parents[2]
V1 = REPO / "models" / "trajlib-lr-v1" / "checkpoint"
GBT = {"n_estimators": 30}


def loop(ckpt: Any, steps: int = 200, val_every: int | None = None) -> ControllerScheduler:
    """SGD on the deterministic toy problem; validation only when ``val_every`` is given."""
    model = make_model(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = ControllerScheduler(opt, ckpt, total_steps=steps)
    for t in range(steps):
        sched.observe(optimizer_step(model, opt, t))
        if val_every and (t + 1) % val_every == 0:
            with torch.no_grad():
                xv, yv = batch(99_999, 128)
                sched.observe_validation(float(nn.functional.cross_entropy(model(xv), yv)))
        sched.step()
    sched.close()
    return sched


@pytest.fixture(scope="module")
def noval_ckpt(tiny_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A gbt ensemble trained with validation withheld from every run (a masked copy of each)."""
    from trajlib.controllers import fit_store

    out = tmp_path_factory.mktemp("noharm") / "noval"
    path, _ = fit_store(
        tiny_store, kind="gbt", out=out, params=GBT, ensemble=3, val_withhold=1.0, harm_z=0.0
    )
    return path


def test_plain_checkpoint_holds_without_validation_and_says_why(tiny_checkpoint: Path) -> None:
    """The problem the piece solves: a checkpoint trained with validation always present holds
    every decision in a loop that never reports it, and warns once with the reason."""
    with pytest.warns(RuntimeWarning, match="no validation reported") as rec:
        sched = loop(tiny_checkpoint)
    assert sum("no validation reported" in str(w.message) for w in rec) == 1
    assert sched.events["decisions"] == 0 and sched.events["held_nonfinite"] > 0


def test_val_withheld_checkpoint_decides_without_validation(noval_ckpt: Path) -> None:
    lc = load_controller(noval_ckpt)
    assert lc.manifest["kind"] == "ensemble"
    val = lc.manifest["training_data"]["validation"]
    assert val["indicator"] == "val_present" and val["withheld_runs"] == 6
    assert val["features"] == ["val_gap", "val_trend", "val_age"]
    assert all(lc.feature_nan_fraction[n] > 0 for n in val["features"])
    with warnings.catch_warnings():
        warnings.filterwarnings("error", ".*holding", RuntimeWarning)  # no hold warning at all
        sched = loop(noval_ckpt)
    assert sched.events["held_nonfinite"] == 0 and sched.events["errors"] == 0
    assert sched.events["decisions"] == (200 - 1) // lc.every
    # with validation it decides too, and the indicator makes the inputs differ
    with_val = loop(noval_ckpt, val_every=25)
    assert with_val.events["decisions"] == (200 - 1) // lc.every
    assert with_val.events["held_nonfinite"] == 0


def _with_rule(lc: Any, z: float) -> Any:
    manifest = json.loads(json.dumps(lc.manifest))
    manifest["decision_rule"] = HarmRule(z=z).to_dict()
    return dataclasses.replace(lc, manifest=manifest)


def test_rule_keeps_more_as_z_grows(noval_ckpt: Path) -> None:
    lc = load_controller(noval_ckpt)
    keep = lc.action_space.keep_index
    kept, moved = [], []
    for z in (0.0, 1.0, 1e6):
        sched = loop(_with_rule(lc, z), val_every=25)
        assert sched.events["held_nonfinite"] == 0
        kept.append(sched.events["kept_by_rule"])
        moved.append(sum(a != keep for _, _, a in sched.actions_taken))
    assert kept[0] == 0  # z = 0 is the plain argmax
    assert moved[0] > 0, "the fitted ensemble never moved: the test shows nothing"
    assert kept == sorted(kept) and kept[-1] > 0
    assert moved[-1] == 0  # an enormous z never acts: the base schedule, exactly
    assert moved == sorted(moved, reverse=True)


def test_rule_offline_acts_less_as_z_grows(noval_ckpt: Path, tiny_store: Path) -> None:
    from trajlib.controllers._from_store import training_table
    from trajlib.controllers._harm import rule_actions

    lc = load_controller(noval_ckpt)
    table, _, _ = training_table(tiny_store)
    X = table.select(lc.feature_names).to_numpy()
    mean, std = lc.controller.predict_spread(X)
    assert (std > 0).any()  # bootstrap members disagree somewhere
    keep = lc.action_space.keep_index
    acted = [int((rule_actions(mean, std, keep, z, 0.0) != keep).sum()) for z in (0, 0.5, 1, 2, 4)]
    assert acted == sorted(acted, reverse=True) and acted[0] > acted[-1]
    # z = 0, margin = 0 equals the argmax wherever the argmax moves
    plain = mean.argmax(1)
    a0 = rule_actions(mean, std, keep, 0.0, 0.0)
    np.testing.assert_array_equal(a0[plain != keep], plain[plain != keep])


def test_calibrated_rule_is_stored_and_applied(tiny_store: Path, tmp_path: Path) -> None:
    from trajlib.controllers import fit_store
    from trajlib.controllers._harm import Z_GRID, choose_z

    path, metrics = fit_store(
        tiny_store, kind="gbt", out=tmp_path / "ck", params=GBT, ensemble=3, no_harm=True
    )
    lc = load_controller(path)
    rule = lc.decision_rule
    assert rule is not None and rule.z in Z_GRID and metrics["harm_z"] == rule.z
    cal = rule.calibration
    assert cal["grouped_by"] == "family" and cal["n_groups"] == 2
    assert [r["z"] for r in cal["table"]] == list(Z_GRID)
    assert choose_z(cal["table"], cal["min_precision"]) == rule.z
    sched = loop(path, val_every=25)
    assert sched.events["decisions"] == (200 - 1) // lc.every
    assert sched.events["held_nonfinite"] == 0


def test_v1_loads_and_decides_on_the_argmax_as_before() -> None:
    """The shipped v1 has no rule: every decision is the argmax of its own prediction."""
    lc = load_controller(V1)
    assert lc.decision_rule is None and "decision_rule" not in lc.manifest
    assert lc.manifest["kind"] == "mlp"
    seen: list[np.ndarray] = []
    ctrl = lc.controller
    real = ctrl.decide_values

    def recording(x: np.ndarray, state: Any = None) -> Any:
        values, s = real(x, state)
        seen.append(np.asarray(values))
        return values, s

    object.__setattr__(ctrl, "decide_values", recording)
    try:
        sched = loop(lc, steps=400, val_every=25)
    finally:
        object.__delattr__(ctrl, "decide_values")
    assert sched.events["kept_by_rule"] == 0 and sched.events["held_nonfinite"] == 0
    assert len(seen) == len(sched.actions_taken) > 0
    assert [a for _, _, a in sched.actions_taken] == [int(v.argmax()) for v in seen]


def test_collection_policy_applies_the_rule(noval_ckpt: Path, tiny_store: Path) -> None:
    """ControllerPolicy (collect around a controller) decides as the scheduler does."""
    import polars as pl

    from trajlib import schema as S
    from trajlib.collect import DecisionContext
    from trajlib.controllers._policy import ControllerPolicy
    from trajlib.store import open_store

    lc = load_controller(noval_ckpt)
    keep = lc.action_space.keep_index
    steps = open_store(tiny_store).steps().collect()
    run = steps[S.RUN_ID][0]
    hist = steps.filter(pl.col(S.RUN_ID) == run).sort(S.STEP)
    cols = {c: hist[c].to_numpy() for c in hist.columns}
    chosen: dict[float, list[int]] = {}
    for z in (0.0, 1e6):
        policy = ControllerPolicy(noval_ckpt)
        policy._loaded = _with_rule(lc, z)
        chosen[z] = []
        for s in (50, 100, 150):
            ctx = DecisionContext(
                step=s,
                budget=200,
                every=lc.every,
                lr_mult=1.0,
                lr_factors=np.ones(len(lc.action_space)),
                keep=keep,
                mult_bounds=(0.01, 100.0),
                history=lambda: cols,
            )
            p = policy(ctx)
            assert p.sum() == 1.0
            chosen[z].append(int(p.argmax()))
    assert all(a == keep for a in chosen[1e6])
    assert any(a != keep for a in chosen[0.0]), "nothing to keep: the test shows nothing"
