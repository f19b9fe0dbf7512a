"""Training/serving parity end to end: the features a deployed ``ControllerScheduler`` computes
online equal ``derive()`` on the collector's record of the same run.

One run (K = 1) of ``digits-mlp`` is collected by the built-in collector under its random-walk
behaviour. The same run is then trained again as a user would: an ``nn.Module``, ``torch.optim.SGD``
with the run's start values, the run's batches, validation every ``val_every`` steps, and a
``ControllerScheduler`` whose controller (a registered controller kind, saved and loaded through
the checkpoint interface) replays the collector's recorded actions and keeps the features the
scheduler hands it at each decision. Both sides then hold the same trajectory (the replayed run's
losses agree with the recorded ones to float32 rounding, ~2e-7 relative), so the features at every
decision point must agree; a scheduler that fed the online engine a shifted row, a wrong LR /
multiplier / momentum column, validation on the wrong step or a statistic defined differently
from the collector's would differ by far more than the tolerance.

Tolerance: 1e-6 absolute plus 1e-6 relative, for every feature. The two trainings are not
bit-equal (the collector's hand-written float32 MLP path and autograd round differently, and the
stored columns are float32), which leaves differences of up to ~1e-6 after 150 steps (measured:
loss_slope_10 8.6e-7, log_upd_ratio_median 1.1e-6 on values ~5, everything else <= 5e-7; the
LR, multiplier, progress, age and weight-norm features agree to 1e-15 or exactly). NaN must match
NaN (features that need more rows than seen).
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import polars as pl
import pytest
import torch
from torch import nn

from trajlib.controllers import Controller, register_controller_kind, save_controller
from trajlib.deploy import ControllerScheduler
from trajlib.features import derive, get_feature_set
from trajlib.spec import FeatureSetRef, RunConfig
from trajlib.tasks import batch_slot, epoch_order, get_task

BUDGET, EVERY, VAL_EVERY = 150, 25, 25
RECIPE: dict[str, Any] = {
    "name": "serving-parity",
    "collect": {
        "tasks": ["digits-mlp"],
        "runs_per_task": 1,
        "budget": BUDGET,
        "every": EVERY,
        "val_every": VAL_EVERY,
    },
    "behaviour": {"p_move": 0.9},  # the LR multiplier moves at most decisions
    "branch": {"enabled": False},
    "executor": {"workers": 1},
}
ATOL = RTOL = 1e-6


@register_controller_kind
class ReplayController(Controller):
    """Decides the recorded ``actions`` in order (a scripted policy) and keeps the features it was
    given at each decision in ``seen_`` (what the deployed scheduler computed online)."""

    kind: ClassVar[str] = "test-replay"
    stateful: ClassVar[bool] = True

    def __init__(self, actions: tuple[int, ...] = ()) -> None:
        self.actions = actions

    def initial_state(self) -> int:
        return 0

    def _fit(self, X: Any, T: Any, groups: Any, order: Any) -> None:
        self.seen_: list[np.ndarray] = []

    def _predict_values(self, X: np.ndarray, groups: Any, order: Any) -> np.ndarray:
        out = np.zeros((X.shape[0], self.n_actions_))
        for i in range(X.shape[0]):
            out[i, self.actions[i % len(self.actions)]] = 1.0
        return out

    def _decide_values(self, x: np.ndarray, state: Any) -> tuple[np.ndarray, Any]:
        self.seen_.append(x.copy())
        v = np.zeros(self.n_actions_)
        v[self.actions[state]] = 1.0
        return v, state + 1

    def _payload(self) -> tuple[dict[str, bytes], dict[str, Any]]:
        return {}, {"n_features_in": self.n_features_in_, "n_actions": self.n_actions_}

    @classmethod
    def _from_payload(
        cls, params: Mapping[str, Any], files: Mapping[str, bytes], state: Mapping[str, Any]
    ) -> ReplayController:
        ctl = cls(tuple(params["actions"]))
        ctl.n_features_in_ = int(state["n_features_in"])
        ctl.n_actions_ = int(state["n_actions"])
        ctl.seen_ = []
        return ctl


@pytest.fixture(scope="module")
def collected(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The collector's record of one run: run row, entry, steps and decisions."""
    from trajlib.collect import collect, parse_recipe
    from trajlib.store import create_store, open_store

    path = tmp_path_factory.mktemp("parity") / "store"
    create_store(path)
    recipe = parse_recipe(RECIPE)
    threads = torch.get_num_threads()
    collect(recipe, functools.partial(open_store, path), workers=1, progress=False)
    torch.set_num_threads(threads)
    store = open_store(path)
    runs = store.runs().collect()
    assert runs.height == 1
    run = runs.row(0, named=True)
    assert run["status"] == "complete"
    return {
        "recipe": recipe,
        "run": run,
        "config": RunConfig.from_dict(json.loads(run["entry"])),
        "steps": store.steps().collect().sort("step"),
        "decisions": store.decisions().collect().sort("step"),
    }


def _replay(collected: dict[str, Any], ckpt: Path) -> tuple[ControllerScheduler, list[float]]:
    """Train the collected run again with plain torch and a scheduler replaying its actions."""
    run, cfg = collected["run"], collected["config"]
    task = get_task(run["task"])
    assert task.optimizer == "sgd" and task.loss == "cross_entropy"
    data = task.make_data()
    hp0 = cfg.start
    assert hp0.l2 == 0.0 and hp0.input_noise == 0.0  # the plain loop has neither
    torch.manual_seed(run["seed"])  # the collector's member initialisation
    model = task.make_model()
    opt = torch.optim.SGD(
        model.parameters(),
        lr=cfg.lr0,
        momentum=hp0.momentum,
        weight_decay=hp0.weight_decay,
    )
    sched = ControllerScheduler(opt, str(ckpt), total_steps=BUDGET)
    n, bs = data.x_train.shape[0], task.batch_size
    lrs = []
    for t in range(BUDGET):
        epoch, start = batch_slot(t, n, bs)
        idx = epoch_order(run["seed"], epoch, n)[start : start + bs]
        loss = nn.functional.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
        opt.zero_grad()
        loss.backward()
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.observe(loss)
        if (t + 1) % VAL_EVERY == 0 or t + 1 == BUDGET:
            with torch.no_grad():
                out = model(data.x_val)
                vl = float(nn.functional.cross_entropy(out, data.y_val))
                va = float((out.argmax(1) == data.y_val).float().mean())
            sched.observe_validation(vl, va)
        sched.step()
    return sched, lrs


def test_deployed_features_equal_derive_on_the_collected_run(
    collected: dict[str, Any], tmp_path: Path
) -> None:
    fs = get_feature_set("default")
    spec, dec = collected["config"].decision, collected["decisions"]
    actions = tuple(int(a) for a in dec["action"])
    decision_steps = dec["step"].to_list()
    assert decision_steps == list(range(EVERY, BUDGET, EVERY))
    assert spec.every == EVERY
    n_actions = len(spec.action_space)
    assert len(set(actions) - {spec.action_space.keep_index}) >= 2  # the LR really moved

    ctl = ReplayController(actions).fit(np.zeros((2, len(fs))), np.zeros((2, n_actions)))
    ckpt = save_controller(
        ctl,
        tmp_path / "replay",
        spec=spec.with_feature_set(
            FeatureSetRef(name=fs.name, version=str(fs.version), hash=fs.hash, names=fs.names)
        ),
        label_strategy="greedy",
        training_data={},  # no feature NaN fractions: the scheduler lets NaN features through
        offline_metrics={},
    )
    sched, lrs = _replay(collected, ckpt)

    # the scripted policy was followed at every decision, so the two runs are the same run
    assert sched.events["decisions"] == len(actions) and sched.events["errors"] == 0
    assert [(s, a) for s, _, a in sched.actions_taken] == list(zip(decision_steps, actions))
    steps = collected["steps"]
    np.testing.assert_allclose(lrs, steps["lr"].to_numpy(), rtol=1e-6)  # float32 column

    seen = sched.loaded.controller.seen_  # type: ignore[attr-defined]
    assert len(seen) == len(decision_steps)
    rid = collected["run"]["run_id"]
    points = pl.DataFrame({"run_id": [rid] * len(decision_steps), "step": decision_steps})
    offline = derive(steps, points, {rid: BUDGET}, fs).select(fs.names).to_numpy()
    online = np.stack(seen)
    bad = []
    for k, s in enumerate(decision_steps):
        for j, name in enumerate(fs.names):
            a, b = float(online[k, j]), float(offline[k, j])
            if math.isnan(a) or math.isnan(b):
                ok = math.isnan(a) and math.isnan(b)
            else:
                ok = abs(a - b) <= ATOL + RTOL * abs(b)
            if not ok:
                bad.append((s, name, a, b))
    assert not bad, bad
    # the comparison is not vacuous: at the last decision every feature but the ones that need
    # an event which did not happen is a number
    assert np.isfinite(online[-1]).sum() >= len(fs) - 2
