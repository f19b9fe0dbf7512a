"""Deploy-time lookahead: exact restore (the run equals the plain run that took the same actions,
bitwise on the CPU), the choice rule, the compute charge, and that nothing inside it ever reaches
the training loop."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from tests.deploy._helpers import with_policy
from trajlib.controllers import load_controller
from trajlib.deploy import ControllerScheduler, Lookahead
from trajlib.errors import ConfigError

SHIPPED = Path(__file__).resolve().parents[2] / "models" / "trajlib-lr-v1" / "checkpoint"
STEPS, EVERY = 120, 25


def _data() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(STEPS * 32, 10, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long() + (x[:, 2] > 1).long()
    return [(x[i : i + 32], y[i : i + 32]) for i in range(0, len(x), 32)]


OPTIMIZERS = {
    "SGD": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
    "Adam": lambda p: torch.optim.Adam(p, lr=3e-3),
    "AdamW": lambda p: torch.optim.AdamW(p, lr=3e-3, weight_decay=0.01),
    "RMSprop": lambda p: torch.optim.RMSprop(p, lr=1e-3, momentum=0.5),
}


def _run(
    opt_name: str,
    controller: Any,
    *,
    look: dict[str, Any] | None = None,
    scaler: bool = False,
    branch_step: Any = None,
    feed: bool = True,
) -> dict[str, Any]:
    """Train a BatchNorm + dropout MLP for STEPS steps; returns the run's end state."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(10, 32, bias=False),
        nn.BatchNorm1d(32),
        nn.ReLU(),
        nn.Dropout(0.2),
        nn.Linear(32, 3),
    )
    opt = OPTIMIZERS[opt_name](model.parameters())
    sc = torch.amp.GradScaler("cpu", init_scale=2.0**4, growth_interval=3) if scaler else None

    def train_step(batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        if sc is not None:
            sc.scale(loss).backward()
            sc.step(opt)
            sc.update()
        else:
            loss.backward()
            opt.step()
        return loss

    la = None
    if look is not None:
        step_fn = train_step if branch_step is None else branch_step(train_step)
        la = Lookahead(step_fn, model, scaler=sc, **look)
    sched = ControllerScheduler(opt, controller, total_steps=STEPS, every=EVERY, lookahead=la)
    data = _data()
    losses = []
    for t, batch in enumerate(sched.batches(data) if feed else data):
        loss = train_step(batch)
        losses.append(float(loss.detach()))
        sched.observe(loss)
        if (t + 1) % 10 == 0:
            model.eval()
            with torch.no_grad():
                x, y = data[0]
                sched.observe_validation(nn.functional.cross_entropy(model(x), y))
            model.train()
        sched.step()
    return {
        "losses": losses,
        "model": {k: v.clone() for k, v in model.state_dict().items()},
        "opt": opt.state_dict(),
        "scaler": None if sc is None else sc.state_dict(),
        "rng": torch.rand(4),
        "sched": sched,
        "lrs": sched.get_last_lr(),
    }


def _linear(make_opt: Any) -> tuple[nn.Module, torch.optim.Optimizer, Any]:
    """A linear classifier, its optimizer ``make_opt(params)`` and one whole training step."""
    torch.manual_seed(0)
    model = nn.Linear(10, 3)
    opt = make_opt(model.parameters())

    def train_step(batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        loss = nn.functional.cross_entropy(model(batch[0]), batch[1])
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss

    return model, opt, train_step


def _replay(actions: list[tuple[int, int, int]]) -> Any:
    """The shipped controller scripted to take ``actions`` in order (a plain run's decisions)."""
    it = iter([a for _, _, a in actions])
    return with_policy(load_controller(SHIPPED), lambda x: next(it))


def _assert_same(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a["losses"] == b["losses"]
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    sa, sb = a["opt"], b["opt"]
    assert sa["param_groups"] == sb["param_groups"]
    for p in sa["state"]:
        for k, v in sa["state"][p].items():
            w = sb["state"][p][k]
            assert torch.equal(v, w) if torch.is_tensor(v) else v == w, (p, k)
    assert a["scaler"] == b["scaler"]
    assert torch.equal(a["rng"], b["rng"])
    assert a["lrs"] == b["lrs"]
    # the scheduler's own view (features from the probe's statistics, losses) is untouched too
    fa, fb = (r["sched"].units[0].features.values() for r in (a, b))
    np.testing.assert_array_equal(fa, fb)


@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
def test_lookahead_run_equals_the_plain_run_with_its_actions(opt_name: str) -> None:
    look = _run(opt_name, SHIPPED, look={"top_k": 2, "horizon": 8})
    sched = look["sched"]
    ev = sched.events
    assert ev["decisions"] == ev["lookahead_decisions"] == (STEPS - 1) // EVERY
    assert ev["lookahead_errors"] == 0 and ev["errors"] == 0 and ev["lookahead_steps"] > 0
    assert ev["extra_optimizer_steps"] == 0  # the branches' steps are not the run's
    plain = _run(opt_name, _replay(sched.actions_taken))
    assert plain["sched"].actions_taken == sched.actions_taken
    _assert_same(look, plain)


def test_lookahead_restores_a_grad_scaler_exactly() -> None:
    look = _run("SGD", SHIPPED, look={"top_k": 3, "horizon": 7, "cooldown": 3}, scaler=True)
    assert look["sched"].events["lookahead_steps"] > 0
    _assert_same(look, _run("SGD", _replay(look["sched"].actions_taken), scaler=True))


def test_choice_rule_and_compute_charge() -> None:
    # a controller whose first choice is always to halve the LR: the lookahead measures it against
    # "keep" on the same batches and applies whichever trained to the lower loss

    ctrl = with_policy(load_controller(SHIPPED), lambda x: 0)  # "lr x0.5" ranked first
    res = _run("SGD", ctrl, look={"top_k": 1, "horizon": 10})
    la, sched = res["sched"].lookahead, res["sched"]
    assert la.decisions
    keep = sched.actions.keep_index
    for d in la.decisions:
        assert d.controller_choice == 0 and set(d.candidates) == {0, keep}
        best = d.candidates[int(np.argmin(d.scores))]
        assert d.chosen == (best if min(d.scores) < d.scores[0] else 0)
        assert all(math.isfinite(s) for s in d.scores)
    assert [a for _, _, a in sched.actions_taken] == [d.chosen for d in la.decisions]
    # every candidate ran `horizon` steps: charged, and the ratio says so
    assert sched.events["lookahead_steps"] == sum(
        d.horizon * len(d.candidates) for d in la.decisions
    )
    assert sched.compute_ratio == pytest.approx(1 + sched.events["lookahead_steps"] / STEPS)
    assert sched.compute_ratio > 1.0


def test_margin_keeps_the_controller_choice() -> None:
    ctrl = with_policy(load_controller(SHIPPED), lambda x: 0)
    res = _run("SGD", ctrl, look={"top_k": 1, "horizon": 10, "margin": 0.99})
    assert [a for _, _, a in res["sched"].actions_taken] == [0] * 4


def test_same_effect_actions_are_tried_once() -> None:
    # momentum moves on Adam's betas[0] differ, but on SGD without momentum they act as keep
    ctrl = with_policy(load_controller(SHIPPED), lambda x: 5)  # a momentum move first
    # momentum 0: stays 0
    model, opt, train_step = _linear(lambda p: torch.optim.SGD(p, lr=0.05))

    la = Lookahead(train_step, model, top_k=1, horizon=5)
    sched = ControllerScheduler(opt, ctrl, total_steps=60, every=EVERY, lookahead=la)
    for batch in sched.batches(_data()[:60]):
        sched.observe(train_step(batch))
        sched.observe_validation(1.0)
        sched.step()
    assert la.decisions and all(len(set(d.candidates)) == 2 for d in la.decisions)
    assert sched.events["lookahead_steps"] == 5 * len(la.decisions)  # one branch each
    assert opt.param_groups[0]["momentum"] == 0


def test_an_error_inside_the_lookahead_restores_and_falls_back() -> None:
    calls = {"n": 0}

    def flaky(train_step: Any) -> Any:
        def step(batch: Any) -> Any:
            calls["n"] += 1
            loss = train_step(batch)  # a real step first: the restore must undo it
            if calls["n"] % 3 == 0:
                raise RuntimeError("out of memory (simulated in the branch)")
            return loss

        return step

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        look = _run("AdamW", SHIPPED, look={"top_k": 2, "horizon": 6}, branch_step=flaky)
    ev = look["sched"].events
    assert ev["lookahead_errors"] == ev["decisions"] > 0 and ev["errors"] == 0
    assert ev["lookahead_decisions"] == 0
    msgs = [str(w.message) for w in caught if "lookahead failed" in str(w.message)]
    assert len(msgs) == 1 and "out of memory" in msgs[0]
    # every decision fell back to the plain one, from the restored state: the plain run exactly
    _assert_same(look, _run("AdamW", SHIPPED))


def test_a_loop_that_does_not_feed_batches_decides_without_lookahead() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = _run("Adam", SHIPPED, look={"top_k": 2, "horizon": 5}, feed=False)
    ev = res["sched"].events
    assert ev["lookahead_skipped"] == ev["decisions"] == (STEPS - 1) // EVERY
    assert ev["lookahead_steps"] == 0 and res["sched"].compute_ratio == 1.0
    assert sum("scheduler.batches" in str(w.message) for w in caught) == 1
    _assert_same(res, _run("Adam", SHIPPED))


def test_a_decision_at_the_end_of_the_source_is_taken_plainly() -> None:
    model, opt, train_step = _linear(lambda p: torch.optim.Adam(p, lr=1e-3))

    la = Lookahead(train_step, model, horizon=5)
    sched = ControllerScheduler(opt, SHIPPED, total_steps=100, every=EVERY, lookahead=la)
    data = _data()
    for epoch in range(2):  # two "epochs" of 25 batches: each ends on a decision point
        for batch in sched.batches(data[epoch * 25 : (epoch + 1) * 25]):
            sched.observe(train_step(batch))
            sched.observe_validation(1.0)
            sched.step()
    assert sched.events["decisions"] == 2 and sched.events["lookahead_decisions"] == 0
    assert la._due is None


def test_lookahead_arguments() -> None:
    model = nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def step(batch: Any) -> float:
        return 0.0

    for kwargs in ({"top_k": 0}, {"horizon": 0}, {"cooldown": -1}, {"margin": 1.5}):
        with pytest.raises(ConfigError):
            Lookahead(step, model, **kwargs)
    with pytest.raises(ConfigError, match="train_step"):
        Lookahead("not callable", model)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="model"):
        Lookahead(step, opt)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="layerwise"):
        ControllerScheduler(
            opt, SHIPPED, total_steps=10, layerwise=True, lookahead=Lookahead(step, model)
        )
    # without a lookahead, batches() passes the source through and the ratio is 1
    sched = ControllerScheduler(opt, SHIPPED, total_steps=10)
    assert list(sched.batches([1, 2, 3])) == [1, 2, 3] and sched.compute_ratio == 1.0
    with pytest.raises(ConfigError, match="when"):
        Lookahead(step, model, when="sometimes")
    with pytest.raises(ConfigError, match="do-no-harm rule"):  # v1 has no rule to be unsure of
        ControllerScheduler(
            opt, SHIPPED, total_steps=10, lookahead=Lookahead(step, model, when="unsure")
        )


V2 = SHIPPED.parents[1] / "trajlib-lr-v2" / "checkpoint"


def test_unsure_lookahead_looks_only_where_the_rule_would_keep() -> None:
    # a v2 checkpoint (ensemble + do-no-harm rule) scripted per decision: a confident move (the
    # rule acts), an unsure move (mean > 0, lower bound < 0: the rule keeps), and a decision where
    # even the mean prefers keep; the lookahead must spend branch steps on the unsure ones only
    import copy
    import dataclasses

    loaded = load_controller(V2)
    keep, up = loaded.action_space.keep_index, len(loaded.action_space) - 1
    z = loaded.decision_rule.z
    holder: dict[str, Any] = {}
    ctrl = copy.deepcopy(loaded.controller)

    def decide_spread(x: np.ndarray, state: Any = None) -> tuple[np.ndarray, np.ndarray, Any]:
        kind = holder["sched"].events["decisions"] % 3
        mean, sd = np.full(len(loaded.action_space), -0.05), np.full(len(loaded.action_space), 0.01)
        mean[keep] = 0.0
        if kind == 0:  # confident: lower bound 0.1 - z * 0.01 > 0
            mean[up] = 0.1
        elif kind == 1:  # unsure: mean 0.02 > 0, lower bound 0.02 - z * 0.05 < 0
            mean[up], sd[up] = 0.02, 0.05
        return mean, sd, state

    ctrl.decide_spread = decide_spread  # type: ignore[method-assign]
    scripted = dataclasses.replace(loaded, controller=ctrl)
    assert 0.02 - z * 0.05 < 0 < 0.1 - z * 0.01
    model, opt, train_step = _linear(lambda p: torch.optim.Adam(p, lr=1e-3))

    la = Lookahead(train_step, model, top_k=1, horizon=5, cooldown=2)  # auto: unsure with a rule
    sched = ControllerScheduler(opt, scripted, total_steps=STEPS, every=20, lookahead=la)
    holder["sched"] = sched
    for batch in sched.batches(_data()):
        sched.observe(train_step(batch))
        sched.step()
    ev = sched.events
    taken = [a for _, _, a in sched.actions_taken]
    assert len(taken) == ev["decisions"] == 5 and ev["lookahead_errors"] == 0
    assert ev["lookahead_decisions"] == 2 and ev["lookahead_sure"] == 3  # decisions 1 and 4
    assert [taken[i] for i in (0, 2, 3)] == [up, keep, up]  # the plain path's choices
    for d in la.decisions:  # the rule's keep is the first choice; the move must measure better
        assert d.controller_choice == keep and d.candidates == (up, keep)
        best = d.candidates[int(np.argmin(d.scores))]
        assert d.chosen == (best if min(d.scores) < d.scores[1] else keep)
    assert [taken[1], taken[4]] == [d.chosen for d in la.decisions]
    assert ev["lookahead_steps"] == 2 * 2 * (5 + 2)  # two decisions x two candidates x 7 steps
    assert la.when == "unsure"
    # a per-action rule that never takes the favoured move: nothing to be unsure about, no branch
    never = dataclasses.replace(
        scripted,
        manifest={
            **scripted.manifest,
            "decision_rule": {
                **scripted.manifest["decision_rule"],
                "z_by_action": [
                    None if a == up else 1.0 for a in range(len(scripted.action_space))
                ],
            },
        },
    )
    la2 = Lookahead(train_step, model, top_k=1, horizon=5)
    sched = ControllerScheduler(opt, never, total_steps=STEPS, every=20, lookahead=la2)
    holder["sched"] = sched
    for batch in sched.batches(_data()):
        sched.observe(train_step(batch))
        sched.step()
    assert sched.events["lookahead_steps"] == 0 and sched.events["lookahead_sure"] == 5
    assert up not in [a for _, _, a in sched.actions_taken]
    # without a rule (v1), auto looks at every decision
    la1 = Lookahead(train_step, model, horizon=5)
    ControllerScheduler(opt, SHIPPED, total_steps=STEPS, lookahead=la1)
    assert la1.when == "always"


def test_a_loss_below_zero_holds_the_lookahead_too() -> None:
    # the lookahead's candidates come from the controller's features, which a negative loss
    # makes meaningless: it looks nowhere and the plain path holds (and says why, once)
    model, opt, train_step = _linear(lambda p: torch.optim.Adam(p, lr=1e-3))
    la = Lookahead(train_step, model, top_k=2, horizon=5)
    sched = ControllerScheduler(opt, SHIPPED, total_steps=100, every=EVERY, lookahead=la)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for t, batch in enumerate(sched.batches(_data()[:100])):
            loss = train_step(batch)
            # one step's loss below 0: the loss features' averages stay finite, so only the
            # negative loss itself can stop the lookahead from branching on them
            sched.observe(loss - 10.0 if t == 10 else loss)
            sched.observe_validation(1.0)
            sched.step()
    ev = sched.events
    assert ev["held_nonfinite"] == 3 and ev["lookahead_decisions"] == 0
    assert ev["lookahead_steps"] == 0 and not sched.actions_taken and ev["errors"] == 0
    assert sum("went below 0" in str(w.message) for w in caught) == 1


def test_a_branch_that_raises_leaves_the_raise_guard_as_it_was() -> None:
    """A branch that tries a raise puts it on trial inside the branch (a new trial supersedes the
    watched raise and drops its copy); after the branch the guard is exactly as before: the
    watch, its copy, the parents and the counters. (Before, only the trial and the ceiling came
    back: a branch that tried a raise ended the watch of the raise before it.)"""
    loaded = load_controller(SHIPPED)
    lr_moves = [a.moves.get("lr", 0.0) for a in loaded.action_space.actions]
    up, keep = int(np.argmax(lr_moves)), loaded.action_space.keep_index
    model, opt, train_step = _linear(lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9))
    la = Lookahead(train_step, model, top_k=2, horizon=5, cooldown=2)
    sched = ControllerScheduler(opt, loaded, total_steps=STEPS, every=EVERY, lookahead=la)
    u = sched.units[0]
    watch = (1.0, 0.5, 0.6, 0.01)
    u.relapse, u.worse_windows, u.recent = watch, 1, [(0.55, 0.01)]
    u.parents = [(0.5, 0.7, 0.8, 0.02)]
    sched._kept = {"step": 0, "weights": "the watched raise's copy"}
    sched._window_stat = (EVERY, 0.5, False)  # the window the decision closed
    before = sched._guard_snapshot(u)
    seen: list[Any] = []

    def apply(a: int) -> None:
        sched._apply_action(0, u, a, EVERY)
        seen.append((a, u.probation is not None, u.relapse, sched._kept))

    la._branches(EVERY, [up, keep], apply, _data()[:10], 5, 2)
    assert seen[0] == (up, True, None, None)  # the raise went on trial in there
    assert sched._guard_snapshot(u) == before
    assert sched._kept is before[7] and u.relapse == watch and len(u.parents) == 1
