"""The raise guard: an LR raise the training loss punishes is undone (and rolled back)."""

from __future__ import annotations

import math
import random
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from tests.deploy._helpers import (
    batch,
    make_model,
    nan_steps,
    train,
    with_policy,
)
from trajlib.controllers import load_controller
from trajlib.deploy import (
    DEAD_TOL,
    DEAD_WINDOWS,
    OVERFIT_REPORTS,
    STALL_FACTOR,
    STALL_WINDOWS,
    ControllerScheduler,
)
from trajlib.errors import ConfigError

STEPS = 200


def raiser(tiny_checkpoint: Path) -> Any:
    """The tiny checkpoint with a controller that always takes the largest LR raise."""
    loaded = load_controller(tiny_checkpoint)
    lr_moves = [a.moves.get("lr", 0.0) for a in loaded.action_space.actions]
    up = max(range(len(lr_moves)), key=lambda i: lr_moves[i])
    assert lr_moves[up] > 0

    def always_up(x: Any) -> int:
        return up

    return with_policy(loaded, always_up)


def run(
    ckpt: Any,
    observed: Any,
    *,
    steps: int = STEPS,
    at_decision: Any = None,
    model: nn.Module | None = None,
    val_of: Any = None,
    val_every: int = 20,
    **kw: Any,
) -> ControllerScheduler:
    """Train the toy problem for real, but report ``observed(t, true_loss)`` as the training
    loss (the guard reads only what the loop observes; ``val_of`` likewise for the validation
    loss, every ``val_every`` steps); ``at_decision(sched, model, opt, t)`` runs after each
    decision step."""
    model = model or make_model(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    sched = ControllerScheduler(opt, ckpt, total_steps=steps, model=model, **kw)
    for t0 in range(0, steps, sched.every):
        stop = min(t0 + sched.every, steps)
        train(model, opt, sched, t0, stop, val_every, observed=observed, val_of=val_of)
        if at_decision is not None:
            at_decision(sched, model, opt, t0 + sched.every)
    sched.close()
    return sched


def test_a_raise_the_loss_punishes_is_undone_and_capped(tiny_checkpoint: Path) -> None:
    """Loss 1 until the first raise, then 10: the next decision undoes the raise, warns once,
    and no later raise goes past the multiplier the run had before it."""
    ckpt = raiser(tiny_checkpoint)
    every = ckpt.every
    mults: dict[int, float] = {}
    with pytest.warns(RuntimeWarning, match="raise was undone") as rec:
        sched = run(
            ckpt,
            lambda t, _: 1.0 if t < every else 10.0,
            at_decision=lambda s, m, o, t: mults.__setitem__(t, s.mult),
            rollback=False,
        )
    assert sum("raise was undone" in str(w.message) for w in rec) == 1
    assert mults[every] > 1.0  # the raise at the first decision
    assert mults[2 * every] == 1.0  # undone at the second
    assert all(v == 1.0 for t, v in mults.items() if t > every)  # capped for good
    assert sched.events["guard_reverts"] == 1
    assert sched.events["guard_capped"] == (STEPS - 1) // every - 2  # every decision after
    assert sched.events["guard_rollbacks"] == 0
    # a revert is the decision of its step: one per decision point, as without the guard
    assert sched.events["decisions"] == (STEPS - 1) // every


def test_a_raise_the_loss_rewards_stays(tiny_checkpoint: Path) -> None:
    ckpt = raiser(tiny_checkpoint)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        sched = run(ckpt, lambda t, _: 1.0 / (1 + t))
    assert sched.events["guard_reverts"] == 0 and sched.events["guard_capped"] == 0
    assert sched.mult > 4.0  # raised at every decision, none undone


def cutter(tiny_checkpoint: Path) -> Any:
    """The tiny checkpoint with a controller that always takes the largest LR cut."""
    loaded = load_controller(tiny_checkpoint)
    lr_moves = [a.moves.get("lr", 0.0) for a in loaded.action_space.actions]
    down = min(range(len(lr_moves)), key=lambda i: lr_moves[i])
    assert lr_moves[down] < 0
    return with_policy(loaded, lambda x: down)


def lifted_at(mults: dict[int, float], every: int) -> list[int]:
    """The decision steps whose multiplier went up (``mults``: step -> multiplier after it)."""
    return [t for t in mults if t > every and mults[t] > mults[t - every]]


def test_a_cut_that_stalls_the_run_is_partly_undone(tiny_checkpoint: Path) -> None:
    """A flat loss under a controller that cuts at every decision: after STALL_WINDOWS windows
    without a new best the multiplier goes back up STALL_FACTOR x, on trial like a raise, said
    once; later cuts stop at that floor; nothing in the last STALL_WINDOWS windows."""
    ckpt = cutter(tiny_checkpoint)
    every = ckpt.every
    span = STALL_WINDOWS * every
    mults: dict[int, float] = {}
    with pytest.warns(RuntimeWarning, match="cut was partly undone") as rec:
        sched = run(
            ckpt,
            lambda t, _: 1.0,
            steps=400,
            at_decision=lambda s, m, o, t: mults.__setitem__(t, s.mult),
        )
    assert sum("partly undone" in str(w.message) for w in rec) == 1
    stalls = lifted_at(mults, every)
    assert stalls and stalls[0] == every + span  # the first window is the best, never beaten
    first = stalls[0]
    assert mults[first] == pytest.approx(min(1.0, mults[first - every] * STALL_FACTOR))
    assert all(mults[t] >= mults[first] for t in mults if t > first)  # cuts stop at the floor
    assert all(t <= 400 - span for t in stalls) and len(stalls) == 2
    ev = sched.events
    assert ev["guard_stalls"] == len(stalls) and ev["guard_capped"] > 0 and ev["errors"] == 0


def test_a_failed_lift_is_tried_again_after_twice_the_wait(tiny_checkpoint: Path) -> None:
    """A flat loss that every lift punishes (10x while the multiplier is above where the lift
    found it): each lift fails its trial and is undone, and the next comes after twice the wait,
    counted from the undo, past the ceiling the failed one set."""
    ckpt = cutter(tiny_checkpoint)
    every, steps = ckpt.every, 800
    span = STALL_WINDOWS * every
    mults: dict[int, float] = {}
    state = {"lifted": False}

    def at_decision(s: ControllerScheduler, m: Any, o: Any, t: int) -> None:
        mults[t] = s.mult
        state["lifted"] = t > every and s.mult > mults[t - every]

    with pytest.warns(RuntimeWarning, match="cut was partly undone"):
        sched = run(
            ckpt, lambda t, _: 10.0 if state["lifted"] else 1.0, steps=steps,
            at_decision=at_decision,
        )  # fmt: skip
    lifts = lifted_at(mults, every)
    first = every + span
    again = first + every + 2 * span  # undone one window after the lift, then twice the wait
    assert lifts == [first, again]  # the third would wait 4 spans: past the run's end
    assert all(mults[t + every] == mults[t - every] for t in lifts)  # each undone at once
    ev = sched.events
    assert ev["guard_stalls"] == 2 and ev["guard_reverts"] == 2 and ev["errors"] == 0


def test_the_stall_check_survives_a_state_dict_round_trip(tiny_checkpoint: Path) -> None:
    """Saved after a failed lift, a resumed scheduler keeps the plateau, the lift and its
    failure: the next lift comes at the same step as in the run that was not interrupted."""
    ckpt = cutter(tiny_checkpoint)
    every, steps = ckpt.every, 800
    span = STALL_WINDOWS * every
    first = every + span
    model = make_model(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    sched = ControllerScheduler(opt, ckpt, total_steps=steps, model=model)
    mults: dict[int, float] = {}
    state = {"lifted": False}

    def leg(s: ControllerScheduler, start: int, stop: int) -> None:
        for t0 in range(start, stop, every):
            train(
                model,
                opt,
                s,
                t0,
                t0 + every,
                observed=lambda t, _: 10.0 if state["lifted"] else 1.0,
            )
            t = t0 + every
            mults[t] = s.mult
            state["lifted"] = t > every and s.mult > mults[t - every]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        leg(sched, 0, first + 2 * every)  # the first lift, undone at its trial
        u = sched.units[0]
        assert (u.lift_at, u.lift_fails, len(u.span)) == (first, 1, STALL_WINDOWS)
        saved = sched.state_dict()
        sched.close()
        again = _resumed(saved, opt, ckpt, steps, model=model)
        v = again.units[0]
        fields = ("span", "lift_at", "lift_watch", "lift_fails", "best", "floor", "ceiling")
        assert [getattr(v, f) for f in fields] == [getattr(u, f) for f in fields]
        leg(again, first + 2 * every, steps)
    lifts = lifted_at(mults, every)
    assert lifts == [first, first + every + 2 * span]


def test_a_lift_is_not_undone_by_a_plateau_s_noise(tiny_checkpoint: Path) -> None:
    """A plateau whose windows differ by a third from one to the next: the lift off it is
    judged on the plateau's level and scatter, so windows back at the plateau's high end do not
    read as a relapse (the tolerance of a share of the best window did: 0.9 -> 1.3 twice)."""
    ckpt = cutter(tiny_checkpoint)
    every = ckpt.every
    cycle = [1.0, 1.3, 0.9, 1.3, 1.3, 1.0]

    def loss(t: int, _: Any) -> float:
        w = t // every
        return 2.0 if w == 0 else 0.9 if w == 1 else cycle[w % len(cycle)]

    mults: dict[int, float] = {}
    with pytest.warns(RuntimeWarning, match="cut was partly undone"):
        sched = run(
            ckpt, loss, steps=600, at_decision=lambda s, m, o, t: mults.__setitem__(t, s.mult)
        )
    ev = sched.events
    assert ev["guard_stalls"] >= 1
    assert ev["guard_relapses"] == 0 and ev["guard_reverts"] == 0 and ev["errors"] == 0
    first = min(lifted_at(mults, every))
    assert all(mults[t] >= mults[first] for t in mults if t > first)  # never taken back


def test_a_cut_the_loss_rewards_is_not_undone(tiny_checkpoint: Path) -> None:
    """A loss that sets a new best at every window: the cuts stand (no stall)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        sched = run(cutter(tiny_checkpoint), lambda t, _: 1.0 / (1 + t), steps=400)
    assert sched.events["guard_stalls"] == 0 and sched.mult < 0.1


def test_tolerance_and_off(tiny_checkpoint: Path) -> None:
    """A loss 30 % up is within the default tolerance (0.5), not within 0.2; guard=None never
    reverts."""
    ckpt = raiser(tiny_checkpoint)
    every = ckpt.every

    def observed(t: int, _: float) -> float:
        return 1.0 if t < every else 1.3

    assert run(ckpt, observed).events["guard_reverts"] == 0
    with pytest.warns(RuntimeWarning, match="raise was undone"):
        assert run(ckpt, observed, guard=0.2).events["guard_reverts"] == 1
    off = run(ckpt, lambda t, _: 1.0 if t < every else 1e6, guard=None)
    assert off.events["guard_reverts"] == 0 and off.mult > 1.0


def test_a_non_finite_loss_after_a_raise_is_a_failed_trial(tiny_checkpoint: Path) -> None:
    ckpt = raiser(tiny_checkpoint)
    every = ckpt.every
    with pytest.warns(RuntimeWarning):
        sched = run(ckpt, lambda t, v: float("nan") if t == every + 3 else v, rollback=False)
    assert sched.events["guard_reverts"] == 1


def test_rollback_restores_the_weights_and_optimizer_state_of_the_raise(
    tiny_checkpoint: Path,
) -> None:
    """With rollback (the default), the weights, optimizer state and BatchNorm statistics are
    the ones of the decision that raised, bitwise; training goes on from there."""
    ckpt = raiser(tiny_checkpoint)
    every = ckpt.every
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.Tanh(), nn.Linear(16, 3))
    seen: dict[int, dict[str, Any]] = {}

    def grab(s: ControllerScheduler, m: nn.Module, o: torch.optim.Optimizer, t: int) -> None:
        seen[t] = {
            "model": {k: v.clone() for k, v in m.state_dict().items()},
            "momentum": [o.state[p]["momentum_buffer"].clone() for p in m.parameters()],
        }

    with pytest.warns(RuntimeWarning, match="raise was undone"):
        sched = run(
            ckpt,
            lambda t, v: v if t < every else 10.0,
            at_decision=grab,
            model=model,
        )
    assert sched.events["guard_rollbacks"] == 1
    assert sched.events["guard_rolled_back_steps"] == every
    a, b = seen[every], seen[2 * every]
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k  # running_mean / var included
    for x, y in zip(a["momentum"], b["momentum"], strict=True):
        assert torch.equal(x, y)
    # later decisions are capped, so the run trains on at the pre-raise LR
    assert not torch.equal(seen[3 * every]["model"]["0.weight"], a["model"]["0.weight"])


def test_a_raise_stays_on_trial_for_two_windows(tiny_checkpoint: Path) -> None:
    """A raise whose first window is fine and whose second blows up (a late divergence) is undone
    at the second decision after it, and the weights go back to those of the raise."""
    ckpt = _raise_once(tiny_checkpoint)
    every = ckpt.every
    seen: dict[int, Any] = {}
    grab = _grabber(seen)

    with pytest.warns(RuntimeWarning, match="raise was undone"):
        sched = run(
            ckpt,
            lambda t, v: v if t < 2 * every else 10.0,
            at_decision=grab,
        )
    assert sched.events["guard_reverts"] == 1
    assert sched.events["guard_rolled_back_steps"] == 2 * every
    assert seen[every][1] > 1.0 and seen[2 * every][1] == seen[every][1]  # passed window 1
    weights, mult = seen[3 * every]
    assert mult == 1.0 and all(torch.equal(v, weights[k]) for k, v in seen[every][0].items())


def test_the_trial_survives_a_state_dict_round_trip(tiny_checkpoint: Path) -> None:
    """Saved mid-trial, a resumed scheduler still judges the raise (without the weights copy,
    which is not part of the scheduler's state: it undoes the raise without a rollback)."""
    ckpt = raiser(tiny_checkpoint)
    every = ckpt.every
    model = make_model(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def steps(sched: ControllerScheduler, ts: range, reported: float) -> None:
        for t in ts:
            x, y = batch(t)
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            sched.observe(reported)
            sched.observe_validation(1.0)
            sched.step()

    sched = ControllerScheduler(opt, ckpt, total_steps=STEPS)
    steps(sched, range(every + 5), 1.0)
    state = sched.state_dict()
    assert state["trajlib"]["units"][0]["probation"] is not None
    sched.close()
    again = _resumed(state, opt, ckpt, STEPS)
    with pytest.warns(RuntimeWarning, match="raise was undone"):
        steps(again, range(every + 5, 2 * every), 10.0)
    assert again.events["guard_reverts"] == 1 and again.events["guard_rollbacks"] == 0
    assert again.mult == 1.0


def _saved(state: dict[str, Any]) -> Any:
    import io

    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return buf


def _resumed(
    state: dict[str, Any], opt: torch.optim.Optimizer, ckpt: Any, steps: int, **kw: Any
) -> ControllerScheduler:
    """A new scheduler on ``opt`` resumed from ``state`` through ``torch.save`` and
    ``torch.load(weights_only=True)``, as a checkpointed run would be."""
    again = ControllerScheduler(opt, ckpt, total_steps=steps, **kw)
    again.load_state_dict(torch.load(_saved(state), weights_only=True))
    return again


@pytest.mark.parametrize("bad", [-0.5, 0, True, "0.5"])
def test_a_bad_guard_fails_up_front(tiny_checkpoint: Path, bad: Any) -> None:
    opt = torch.optim.SGD(make_model(0).parameters(), lr=0.01)
    with pytest.raises(ConfigError, match="guard"):
        ControllerScheduler(opt, tiny_checkpoint, total_steps=10, guard=bad)


def test_a_start_that_turns_non_finite_is_rescued(tiny_checkpoint: Path) -> None:
    """A non-finite loss before the first decision: back to the initial weights, the LR
    multiplier cut by the checkpoint's largest cut, raises capped there; once."""
    loaded = load_controller(tiny_checkpoint)
    every = loaded.every
    cut = min(a.moves.get("lr", 0.0) for a in loaded.action_space.actions)
    model = make_model(0)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    at: dict[int, Any] = {}

    def grab(s: ControllerScheduler, m: nn.Module, o: torch.optim.Optimizer, t: int) -> None:
        at[t] = ({k: v.clone() for k, v in m.state_dict().items()}, s.mult)

    with pytest.warns(RuntimeWarning, match="turned non-finite before the first decision"):
        sched = run(
            tiny_checkpoint,
            lambda t, v: math.nan if 3 <= t < every else v,  # non-finite up to the decision
            at_decision=grab,
            model=model,
        )
    assert sched.events["guard_rescues"] == 1 and sched.events["guard_rollbacks"] == 1
    assert sched.events["guard_rolled_back_steps"] == every
    weights, mult = at[every]
    assert all(torch.equal(v, weights[k]) for k, v in start.items())
    assert mult == pytest.approx(math.exp(cut))
    assert all(m <= mult + 1e-12 for _, m in at.values())
    # a loss never finite: rescued at every decision, down to the multiplier's floor, never raised
    lin = nn.Linear(8, 1)
    opt = torch.optim.SGD(lin.parameters(), lr=0.1)
    nan = ControllerScheduler(opt, tiny_checkpoint, total_steps=100, every=10)
    nan_steps(lin, opt, nan, 60)
    assert nan.events["guard_rescues"] == 6 and nan.events["errors"] == 0
    assert nan.mult == pytest.approx(max(math.exp(6 * cut), loaded.hp_space["lr"].low))
    # without rollback nothing is copied at the start: the run is not rescued
    off = run(tiny_checkpoint, lambda t, v: math.nan if 3 <= t < every else v, rollback=False)
    assert off.events["guard_rescues"] == 0


def test_one_bad_batch_before_the_first_decision_is_not_a_rescue(tiny_checkpoint: Path) -> None:
    """A single non-finite loss (a GradScaler-skipped step, a corrupt sample) in a start that goes
    on finite: the run keeps its weights and LR, says nothing, and is not capped."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        sched = run(tiny_checkpoint, lambda t, v: math.nan if t == 3 else v)
    ev = sched.events
    assert ev["guard_rescues"] == 0 and ev["guard_rollbacks"] == 0 and ev["errors"] == 0
    assert sched.units[0].ceiling == math.inf


def test_a_decision_judged_twice_uses_one_window(tiny_checkpoint: Path) -> None:
    """The lookahead hands some decisions back to the plain path, which asks the guard again at
    the same step: the second ask neither judges nor shortens the trial."""
    ckpt = raiser(tiny_checkpoint)
    every = ckpt.every
    model = make_model(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    sched = ControllerScheduler(opt, ckpt, total_steps=STEPS)
    train(model, opt, sched, 0, 2 * every, observed=lambda t, v: 1.0)
    u = sched.units[0]
    trial, saved = u.probation, sched._saved
    assert trial is not None and trial[2] == 2 and trial[3] == 2 * every  # raised again at 2*every
    assert sched._guard(u, 2 * every) is False
    assert u.probation == trial and sched._saved is saved


def _grabber(seen: dict[int, Any]) -> Any:
    """An ``at_decision`` for :func:`run` that records, per decision step, the model's weights and
    the multiplier in ``seen``."""

    def grab(s: ControllerScheduler, m: nn.Module, o: torch.optim.Optimizer, t: int) -> None:
        seen[t] = ({k: v.clone() for k, v in m.state_dict().items()}, s.mult)

    return grab


def _raise_once(tiny_checkpoint: Path, times: int = 1) -> Any:
    """The tiny checkpoint with a controller that takes the largest raise at its first ``times``
    decisions and keeps after."""
    loaded = load_controller(tiny_checkpoint)
    keep = loaded.action_space.keep_index
    lr_moves = [a.moves.get("lr", 0.0) for a in loaded.action_space.actions]
    up = max(range(len(lr_moves)), key=lambda i: lr_moves[i])
    calls: list[int] = []

    def policy(x: Any) -> int:
        calls.append(1)
        return up if len(calls) <= times else keep

    return with_policy(loaded, policy)


def test_a_relapse_after_the_trial_is_undone_and_rolled_back(tiny_checkpoint: Path) -> None:
    """A raise passes its two-window trial, the loss keeps falling one more window, then sits at
    10x its best for two windows: the raise is undone and the weights go back to the raise's copy
    (kept since the trial passed), bitwise."""
    ckpt = _raise_once(tiny_checkpoint)
    every = ckpt.every
    seen: dict[int, Any] = {}
    grab = _grabber(seen)

    with pytest.warns(RuntimeWarning, match="relapsed after an LR raise had passed its trial"):
        sched = run(
            ckpt,
            lambda t, v: 1.0 / (1 + t) if t < 4 * every else 10.0,
            at_decision=grab,
        )
    ev = sched.events
    assert ev["guard_reverts"] == 0 and ev["guard_relapses"] == 1  # the trial itself passed
    assert seen[5 * every][1] > 1.0 and seen[6 * every][1] == 1.0  # undone at the 2nd bad window
    assert ev["guard_rollbacks"] == 1 and ev["guard_rolled_back_steps"] == 5 * every
    weights, _ = seen[6 * every]
    assert all(torch.equal(v, weights[k]) for k, v in seen[every][0].items())
    assert ev["decisions"] == (STEPS - 1) // every  # the undo is the decision of its step


def test_a_relapse_still_below_the_raise_undoes_the_lr_but_keeps_the_weights(
    tiny_checkpoint: Path,
) -> None:
    """A raise takes the loss from 1.0 to 0.1, then it relapses to 0.5 for two windows: clearly
    worse than its best (the relative rule), but still half the loss the raise found. The raise
    is undone, and the weights are *not* sent back to the raise's copy, which is behind the run
    (a long run rolled back this way near its end used to lose 200 steps of progress)."""
    ckpt = _raise_once(tiny_checkpoint)
    every = ckpt.every
    seen: dict[int, Any] = {}
    levels = [1.0, 0.5, 0.3, 0.1, 0.5, 0.5, 0.5, 0.5]

    with pytest.warns(RuntimeWarning, match="weights kept") as rec:
        sched = run(ckpt, lambda t, v: levels[min(t // every, 7)], at_decision=_grabber(seen))
    ev = sched.events
    assert ev["guard_relapses"] == 1 and ev["guard_rollbacks"] == 0, ev
    assert seen[5 * every][1] > 1.0 and seen[6 * every][1] == 1.0  # the 2nd window: undone
    weights, raised = seen[6 * every][0], seen[every][0]
    assert not all(torch.equal(v, raised[k]) for k, v in weights.items())  # not rolled back
    assert not any("weights back" in str(w.message) for w in rec)


def test_a_non_finite_loss_after_the_trial_undoes_the_raise_at_once(tiny_checkpoint: Path) -> None:
    """A raise passes its trial, the run goes on at the raised LR, then its loss turns non-finite
    and stays so (a run that diverges late): that window's decision undoes the raise and rolls
    the weights back to the raise's copy, instead of holding a diverged run to its end. One bad
    batch in a run that goes on finite is no divergence."""
    ckpt = _raise_once(tiny_checkpoint)
    every = ckpt.every
    seen: dict[int, Any] = {}
    grab = _grabber(seen)

    bad = 4 * every + 3  # in the window after the trial passed: non-finite from here on
    with pytest.warns(RuntimeWarning, match="non-finite after an LR raise had passed its trial"):
        sched = run(
            ckpt, lambda t, v: math.nan if bad <= t < 5 * every else 1.0 / (1 + t), at_decision=grab
        )
    ev = sched.events
    assert ev["guard_reverts"] == 0 and ev["guard_relapses"] == 1
    assert seen[4 * every][1] > 1.0 and seen[5 * every][1] == 1.0  # undone at that window's end
    assert ev["guard_rollbacks"] == 1 and ev["guard_rolled_back_steps"] == 4 * every
    weights, _ = seen[5 * every]
    assert all(torch.equal(v, weights[k]) for k, v in seen[every][0].items())
    assert sched.mult == 1.0  # capped where it was before the raise
    # one non-finite loss (a bad batch) in a run that goes on finite is not a divergence
    ckpt = _raise_once(tiny_checkpoint)
    blip = run(ckpt, lambda t, v: math.inf if t == bad else 1.0 / (1 + t))
    assert blip.events["guard_relapses"] == 0 and blip.mult > 1.0
    # without a raise that passed its trial, a non-finite loss is not the controller's to undo
    keep = with_policy(load_controller(tiny_checkpoint), lambda x: ckpt.action_space.keep_index)
    held = run(keep, lambda t, v: math.inf if t == bad else 1.0 / (1 + t))
    assert held.events["guard_relapses"] == 0 and held.events["guard_rollbacks"] == 0


def test_a_relapse_needs_two_windows_clearly_worse(tiny_checkpoint: Path) -> None:
    """20 % above the best window (inside the 25 % tolerance, and under the run's first window)
    for good, or 10x for one window only: no relapse. Without rollback a relapse is undone
    without restoring weights."""
    ckpt = _raise_once(tiny_checkpoint)
    every = ckpt.every
    mild = run(ckpt, lambda t, _: 2.0 if t < every else 1.0 if t < 4 * every else 1.2)
    assert mild.events["guard_relapses"] == 0 and mild.mult > 1.0
    ckpt = _raise_once(tiny_checkpoint)
    blip = run(ckpt, lambda t, _: 10.0 if 4 * every <= t < 5 * every else 1.0)
    assert blip.events["guard_relapses"] == 0 and blip.mult > 1.0
    ckpt = _raise_once(tiny_checkpoint)
    with pytest.warns(RuntimeWarning, match="relapsed"):
        plain = run(ckpt, lambda t, _: 1.0 if t < 4 * every else 10.0, rollback=False)
    assert plain.events["guard_relapses"] == 1 and plain.events["guard_rollbacks"] == 0
    assert plain.mult == 1.0


def _noisy(level: float, t: int, sd: float = 0.1) -> float:
    """A training loss around ``level`` with noise of ``sd`` (deterministic in ``t``)."""
    return level + sd * random.Random(t).gauss(0.0, 1.0)


def test_a_run_worse_than_its_start_has_relapsed(tiny_checkpoint: Path) -> None:
    """A classifier collapsed to chance after an early raise: a noisy loss at 2.3 before the
    first decision, 2.2 through the trial, then 2.6 (13 % above the best window, inside the
    relative tolerance) — above where the run started by far more than the noise: undone and
    rolled back, with its own warning. The same noisy loss back at its start's level, or a run
    that never gets worse than its start, is no relapse."""
    ckpt = _raise_once(tiny_checkpoint)
    every = ckpt.every
    seen: dict[int, Any] = {}

    def collapsed(t: int, v: float) -> float:
        return _noisy(2.3 if t < every else 2.2 if t < 3 * every else 2.6, t)

    with pytest.warns(RuntimeWarning, match="above the run's first window") as rec:
        sched = run(ckpt, collapsed, at_decision=_grabber(seen))
    ev = sched.events
    assert ev["guard_reverts"] == 0 and ev["guard_relapses"] == 1, ev
    assert seen[4 * every][1] > 1.0 and seen[5 * every][1] == 1.0  # the 2nd window above: undone
    assert ev["guard_rollbacks"] == 1 and ev["guard_rolled_back_steps"] == 4 * every
    assert sum("relapsed" in str(w.message) for w in rec) == 1
    # the relative rule alone would not have seen it: 2.6 is under best + 25 % of it
    med, se = sched._start_window  # type: ignore[misc]
    assert abs(med - 2.3) < 0.1 and 0 < se < 0.1

    for level in (2.3, 2.25):  # back at (or under) the start's level: noise, not a relapse
        ckpt = _raise_once(tiny_checkpoint)
        flat = run(ckpt, lambda t, _, lv=level: _noisy(2.3 if t < every else lv, t))
        assert flat.events["guard_relapses"] == 0 and flat.mult > 1.0, level


def test_a_run_back_above_where_the_raise_found_it_has_relapsed(tiny_checkpoint: Path) -> None:
    """Two raises: the run falls from 2.3 to 2.1 after the first, the second passes its trial
    (2.05, 2.1), then the loss sits at 2.3 — its start's level, under the best window + 25 %,
    but far above the 2.1 where the second raise found it, in both windows: the second raise is
    undone (back to the first raise's multiplier) and rolled back, with its own warning. The same
    run settling at 2.12 (within the noise of 2.1) keeps its raises."""
    every = load_controller(tiny_checkpoint).every
    seen: dict[int, Any] = {}

    def levels(after: float) -> Any:
        def observed(t: int, v: float) -> float:
            w = t // every  # the window (0: before the first decision)
            return _noisy([2.3, 2.1, 2.05, 2.1][w] if w < 4 else after, t)

        return observed

    with pytest.warns(RuntimeWarning, match=r"above the 2\.0\d+ of the window before the raise"):
        sched = run(_raise_once(tiny_checkpoint, times=2), levels(2.3), at_decision=_grabber(seen))
    ev = sched.events
    assert ev["guard_reverts"] == 0 and ev["guard_relapses"] == 1, ev
    first, second = seen[every][1], seen[2 * every][1]
    assert 1.0 < first < second and seen[5 * every][1] == second  # one window above: not yet
    assert seen[6 * every][1] == first  # the second above: the second raise undone
    assert ev["guard_rollbacks"] == 1 and ev["guard_rolled_back_steps"] == 4 * every
    assert all(torch.equal(v, seen[6 * every][0][k]) for k, v in seen[2 * every][0].items())

    settled = run(_raise_once(tiny_checkpoint, times=2), levels(2.12))
    assert settled.events["guard_relapses"] == 0 and settled.mult == second


def test_an_earlier_raise_is_watched_again_when_the_one_after_it_is_undone(
    tiny_checkpoint: Path,
) -> None:
    """Two raises in a row, the second undone by its trial: the first is watched again, so a run
    that diverges later at its LR has it undone too and goes back to the last good copy (the
    second raise's, which the revert restored), instead of being held, diverged, to its end."""
    ckpt = _raise_once(tiny_checkpoint, times=2)
    every = ckpt.every
    seen: dict[int, Any] = {}
    grab = _grabber(seen)

    def observed(t: int, v: float) -> float:
        if 2 * every <= t < 3 * every:
            return 10.0  # the second raise's window: it fails its trial
        if t >= 5 * every + 3:
            return math.nan  # diverged late, at the first raise's LR
        return 1.0 / (1 + t)

    with pytest.warns(RuntimeWarning) as rec:
        sched = run(ckpt, observed, at_decision=grab)
    ev = sched.events
    assert ev["guard_reverts"] == 1 and ev["guard_relapses"] == 1, ev
    first = seen[every][1]
    assert first > 1.0 and seen[2 * every][1] > first  # two raises
    assert seen[3 * every][1] == first  # the second undone
    assert seen[5 * every][1] == first and seen[6 * every][1] == 1.0  # then the first
    # the reported loss stays non-finite after that, at the base LR: each later decision sends
    # the run back to the copy the last rollback restored, with the LR cut (a rescue)
    assert ev["guard_rescues"] >= 1 and ev["guard_rollbacks"] == 2 + ev["guard_rescues"]
    assert seen[7 * every][1] < 1.0
    weights, _ = seen[6 * every]
    assert all(torch.equal(v, weights[k]) for k, v in seen[2 * every][0].items())
    assert any("passed its trial" in str(w.message) for w in rec)
    assert sched.units[0].parents == []
    # the remembered raise survives a state_dict round trip
    ckpt = _raise_once(tiny_checkpoint, times=2)
    model = make_model(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    live = ControllerScheduler(opt, ckpt, total_steps=STEPS, model=model)
    train(model, opt, live, 0, 2 * every, observed=lambda t, v: 1.0 / (1 + t))
    state = live.state_dict()
    assert len(state["trajlib"]["units"][0]["parents"]) == 1
    again = _resumed(state, opt, ckpt, STEPS, model=model)
    assert again.units[0].parents == live.units[0].parents


def test_a_param_group_added_later_is_rolled_back_too(tiny_checkpoint: Path) -> None:
    """``add_param_group`` after construction: the guard's copy takes the new group as it joined,
    so a rescue restores every parameter (the copy used to be one list the new group shifted,
    and the rollback failed as an error in the decision path)."""
    every = load_controller(tiny_checkpoint).every
    torch.manual_seed(0)
    model, head = make_model(0), nn.Linear(8, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    sched = ControllerScheduler(opt, tiny_checkpoint, total_steps=STEPS, model=model)
    joined: dict[str, torch.Tensor] = {}
    with pytest.warns(RuntimeWarning, match="turned non-finite before the first decision"):
        for t in range(every + 5):
            if t == 5:
                opt.add_param_group({"params": head.parameters(), "lr": 0.01})
            x, y = batch(t)
            out = model(x) + (head(x) if t >= 5 else 0)
            loss = nn.functional.cross_entropy(out, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.observe(math.nan if t >= 10 else loss)
            sched.step()
            if t == 5:  # adopted at this step(): the copy holds the head as it is now
                joined = {k: v.clone() for k, v in head.state_dict().items()}
            if t == every - 1:
                at_rescue = {k: v.clone() for k, v in head.state_dict().items()}
    ev = sched.events
    assert ev["errors"] == 0 and ev["guard_rescues"] == 1, ev
    assert all(torch.equal(v, joined[k]) for k, v in at_rescue.items())


def test_the_relapse_watch_survives_a_state_dict_round_trip(tiny_checkpoint: Path) -> None:
    """Saved after the trial passed, a resumed scheduler still watches the raise (it undoes it
    without a rollback: the copy stays with the process that took it)."""
    ckpt = _raise_once(tiny_checkpoint)
    every = ckpt.every
    model = make_model(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    sched = ControllerScheduler(opt, ckpt, total_steps=STEPS, model=model)
    train(model, opt, sched, 0, 4 * every, observed=lambda t, v: 1.0)
    state = sched.state_dict()
    assert state["trajlib"]["units"][0]["relapse"] is not None
    sched.close()
    again = _resumed(state, opt, ckpt, STEPS, model=model)
    assert again._start_window == sched._start_window == (1.0, 0.0)  # the first window's too
    # the watch's windows and the error of the window before the raise, too
    assert again.units[0].recent == sched.units[0].recent == [(1.0, 0.0)]
    assert again.units[0].relapse == sched.units[0].relapse
    assert sched.units[0].relapse is not None and len(sched.units[0].relapse) == 4
    with pytest.warns(RuntimeWarning, match="relapsed"):
        train(model, opt, again, 4 * every, 7 * every, observed=lambda t, v: 10.0)
    assert again.events["guard_relapses"] == 1 and again.events["guard_rollbacks"] == 0
    assert again.mult == 1.0


def test_the_window_median_is_numpys_median_bit_for_bit() -> None:
    import numpy as np

    from trajlib.deploy._scheduler import _median

    rng = np.random.default_rng(0)
    for n in (1, 2, 3, 24, 25, 50):
        for _ in range(20):
            w = (rng.standard_normal(n) * 10.0 ** rng.uniform(-8, 8, n)).tolist()
            assert _median(w) == float(np.median(w))


def test_a_run_that_diverges_at_the_base_lr_after_a_rollback_is_rescued(
    tiny_checkpoint: Path,
) -> None:
    """A raise undone and rolled back leaves the run on a trajectory of its own; if it then
    diverges at the base LR (no raise left to undo), it goes back to the copy the rollback
    restored with the multiplier cut, instead of being held, diverged, to its end."""
    ckpt = _raise_once(tiny_checkpoint, times=1)
    every = ckpt.every
    seen: dict[int, Any] = {}
    grab = _grabber(seen)

    def observed(t: int, v: float) -> float:
        if every <= t < 2 * every:
            return 10.0  # the raise's window: it fails its trial and is rolled back
        if 3 * every + 3 <= t < 4 * every:
            return math.nan  # then the run diverges at the base LR
        return 1.0 / (1 + t)

    with pytest.warns(RuntimeWarning) as rec:
        sched = run(ckpt, observed, at_decision=grab)
    ev = sched.events
    assert ev["guard_reverts"] == 1 and ev["guard_rescues"] == 1 and ev["guard_relapses"] == 0
    assert ev["guard_rollbacks"] == 2
    assert seen[every][1] > 1.0 and seen[2 * every][1] == 1.0 and seen[3 * every][1] == 1.0
    assert seen[4 * every][1] < 1.0  # cut by the checkpoint's largest cut
    assert sched.units[0].ceiling <= seen[4 * every][1]  # capped there
    weights, _ = seen[4 * every]  # back to the state the first rollback restored (step every)
    assert all(torch.equal(v, weights[k]) for k, v in seen[2 * every][0].items())
    assert any("after a rollback, at the base LR" in str(w.message) for w in rec)
    # a run that never raised has no trajectory of its own: diverged, it is held as cosine's
    # would be (nothing to go back to)
    keep_only = with_policy(
        load_controller(tiny_checkpoint), lambda x: ckpt.action_space.keep_index
    )
    with pytest.warns(RuntimeWarning):
        plain = run(keep_only, lambda t, v: math.nan if t >= 3 * every + 3 else 1.0 / (1 + t))
    assert plain.events["guard_rescues"] == 0 and plain.events["held_nonfinite"] > 0


def _chance(t: int, val: float) -> float:
    """The validation loss of a network at chance (the dead-run tests' loops): flat, so the
    overfit check has nothing to see."""
    return 2.3


def test_a_raise_that_leaves_the_run_where_it_started_is_undone(tiny_checkpoint: Path) -> None:
    """A controller that raises at every decision while the loss stays at its first window's
    level (noisy): DEAD_WINDOWS windows after the first raise the multiplier goes back to 1, the
    weights back to that raise's copy, said once, and no later raise goes above 1."""
    ckpt = raiser(tiny_checkpoint)
    every = ckpt.every
    dead = every + DEAD_WINDOWS * every  # the first raise is at the first decision
    steps = dead + 4 * every
    seen: dict[int, Any] = {}
    with pytest.warns(RuntimeWarning, match="stayed at its first window's level") as rec:
        sched = run(
            ckpt,
            lambda t, _: _noisy(2.3, t),
            steps=steps,
            at_decision=_grabber(seen),
            val_of=_chance,
        )
    assert sum("first window's level" in str(w.message) for w in rec) == 1
    assert all(seen[t][1] > 1.0 for t in seen if every <= t < dead)  # raised all along
    assert seen[dead][1] == 1.0 and all(seen[t][1] <= 1.0 for t in seen if t >= dead)
    ev = sched.events
    assert ev["guard_stalls"] == 1 and ev["guard_reverts"] == ev["guard_relapses"] == 0, ev
    assert ev["guard_rollbacks"] == 1 and ev["guard_rolled_back_steps"] == dead - every
    weights, _ = seen[dead]  # as the first raise found them
    assert all(torch.equal(v, weights[k]) for k, v in seen[every][0].items())
    assert not all(torch.equal(v, weights[k]) for k, v in seen[dead - every][0].items())
    assert ev["decisions"] == (steps - 1) // every and ev["errors"] == 0


def test_a_raised_run_that_learns_a_little_is_not_undone(tiny_checkpoint: Path) -> None:
    """The same raises, the loss a little more than DEAD_TOL under its first window's level after
    the first raise: progress, however slow, so the raises stay (and so does a run raised for
    fewer than DEAD_WINDOWS windows)."""
    ckpt = raiser(tiny_checkpoint)
    every = ckpt.every
    steps = (DEAD_WINDOWS + 6) * every
    below = 2.3 * (1.0 - 1.5 * DEAD_TOL)
    sched = run(
        ckpt,
        lambda t, _: _noisy(2.3 if t < every else below, t, sd=0.02),
        steps=steps,
        val_of=_chance,
    )
    assert sched.events["guard_stalls"] == 0 and sched.mult > 1.0, sched.events
    short = run(
        raiser(tiny_checkpoint),
        lambda t, _: _noisy(2.3, t),
        steps=DEAD_WINDOWS * every,
        val_of=_chance,
    )
    assert short.events["guard_stalls"] == 0 and short.mult > 1.0


def test_the_dead_run_check_survives_a_state_dict_round_trip(tiny_checkpoint: Path) -> None:
    """Saved while raised, a resumed scheduler knows since when: it undoes the raises at the same
    step as the run that was not interrupted (without a rollback: the copies stay with the
    process that took them)."""
    ckpt = raiser(tiny_checkpoint)
    every = ckpt.every
    dead = every + DEAD_WINDOWS * every
    steps = dead + 2 * every
    model = make_model(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    sched = ControllerScheduler(opt, ckpt, total_steps=steps, model=model)
    noisy = lambda t, _: _noisy(2.3, t)  # noqa: E731
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        train(model, opt, sched, 0, dead - 3 * every, observed=noisy, val_of=_chance)
        assert sched.units[0].raised_from == every
        saved = sched.state_dict()
        sched.close()
        again = _resumed(saved, opt, ckpt, steps, model=model)
        assert again.units[0].raised_from == every
        train(model, opt, again, dead - 3 * every, dead - every, observed=noisy, val_of=_chance)
        assert again.mult > 1.0 and again.events["guard_stalls"] == 0
        train(model, opt, again, dead - every, dead, observed=noisy, val_of=_chance)
    assert again.mult == 1.0 and again.events["guard_stalls"] == 1
    assert again.events["guard_rollbacks"] == 0


def _falling(t: int, loss: float) -> float:
    """A training loss that falls all along (the overfit tests': only validation turns)."""
    return 1.0 / (1 + t)


def _overfit_run(ckpt: Any, val_of: Any, steps: int, **kw: Any) -> ControllerScheduler:
    """:func:`run` with a falling training loss and ``val_of`` reported at every decision
    point (before ``step()``)."""
    return run(ckpt, _falling, steps=steps, val_of=val_of, val_every=ckpt.every, **kw)


def _rises_after(turn: int, factor: float = 1.25) -> Any:
    """A validation loss (reported after step ``t``, ``t + 1`` steps done) that falls until
    ``turn`` steps, then sits ``factor`` x its best."""
    return lambda t, _: 1.0 / (t + 1) if t + 1 <= turn else factor / turn


def test_a_raise_that_overfits_is_undone_back_to_its_best_report(tiny_checkpoint: Path) -> None:
    """A controller that raises at every decision, a training loss that falls all along, and a
    validation loss that falls until 3 windows in and then sits 25 % above its best: at the
    OVERFIT_REPORTS-th report above it the multiplier goes back to 1, the weights to those of the
    best report, said once; later raises stop at 1."""
    ckpt = raiser(tiny_checkpoint)
    every = ckpt.every
    steps = (5 + OVERFIT_REPORTS) * every
    seen: dict[int, Any] = {}  # after each decision (at 3 windows: as the report found them)
    with pytest.warns(RuntimeWarning, match="validation loss rose") as rec:
        sched = _overfit_run(ckpt, _rises_after(3 * every), steps, at_decision=_grabber(seen))
    assert sum("validation loss rose" in str(w.message) for w in rec) == 1
    fired = (3 + OVERFIT_REPORTS) * every  # the reports from 4 windows on are above the best
    ev = sched.events
    assert ev["guard_overfits"] == 1 and ev["guard_reverts"] == ev["guard_relapses"] == 0, ev
    assert ev["guard_rollbacks"] == 1 and ev["guard_rolled_back_steps"] == fired - 3 * every
    assert sched.mult == 1.0 and sched.units[0].ceiling == 1.0
    assert sched.actions_taken[-1][0] > fired  # it went on raising, held at 1
    # the decision at ``fired`` put back the weights of the best report
    best = seen[3 * every][0]
    assert all(torch.equal(seen[fired][0][k], v) for k, v in best.items())
    assert not all(torch.equal(seen[fired - every][0][k], v) for k, v in best.items())


def test_an_overfit_from_before_the_raise_goes_back_to_the_raise(tiny_checkpoint: Path) -> None:
    """The best validation loss is the report just before the first raise: OVERFIT_REPORTS
    reports 25 % above it undo the raises and roll back to the raise's own copy."""
    ckpt = raiser(tiny_checkpoint)
    every = ckpt.every
    with pytest.warns(RuntimeWarning, match="validation loss rose"):
        sched = _overfit_run(ckpt, _rises_after(every), (3 + OVERFIT_REPORTS) * every)
    ev = sched.events
    assert ev["guard_overfits"] == 1 and ev["guard_rolled_back_steps"] == OVERFIT_REPORTS * every


@pytest.mark.parametrize("case", ["slow rise", "one spike", "bump", "guard off", "no raise"])
def test_validation_that_does_not_clearly_rise_undoes_nothing(
    tiny_checkpoint: Path, case: str
) -> None:
    """5 % above the best (under OVERFIT_TOL), one report above it, a bump the run comes back
    from (reports above the best, each lower than the one before), the guard off, or a run that
    never raised: the multiplier stays where the controller put it."""
    every = load_controller(tiny_checkpoint).every
    ckpt = raiser(tiny_checkpoint)
    kw: dict[str, Any] = {}
    val_of = _rises_after(2 * every, 1.05)  # under OVERFIT_TOL (10 %)
    if case == "one spike":
        val_of = lambda t, _: (1.0 + 0.3 * (t + 1 == 4 * every)) / (t + 1)  # noqa: E731
    elif case == "bump":  # 1.6, 1.4, 1.2 x the best at 3, 4, 5 windows, then falling again
        bump = {3 * every: 1.6, 4 * every: 1.4, 5 * every: 1.2}
        val_of = lambda t, _: bump.get(t + 1, 2 * every / (t + 1)) / (2 * every)  # noqa: E731
    elif case == "guard off":
        kw["guard"], val_of = None, _rises_after(2 * every)
    elif case == "no raise":
        keep = load_controller(tiny_checkpoint).action_space.keep_index
        ckpt, val_of = (
            with_policy(load_controller(tiny_checkpoint), lambda x: keep),
            _rises_after(every),
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        sched = _overfit_run(ckpt, val_of, (5 + OVERFIT_REPORTS) * every, **kw)
    assert sched.events["guard_overfits"] == 0 and sched.events["guard_rollbacks"] == 0
    assert sched.mult == 1.0 if case == "no raise" else sched.mult > 4.0


def test_the_overfit_check_survives_a_state_dict_round_trip(tiny_checkpoint: Path) -> None:
    """Saved before the last of the reports above the best, a resumed scheduler undoes the raises
    at the same step (without a rollback: the copies stay with the process that took them)."""
    ckpt = raiser(tiny_checkpoint)
    every = ckpt.every
    steps = (5 + OVERFIT_REPORTS) * every
    last = (3 + OVERFIT_REPORTS) * every  # the report that undoes
    model = make_model(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    sched = ControllerScheduler(opt, ckpt, total_steps=steps, model=model)
    reports = {"observed": _falling, "val_of": _rises_after(3 * every)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        train(model, opt, sched, 0, last - every + 1, every, **reports)
        assert sched.units[0].val_worse == OVERFIT_REPORTS - 1
        saved = sched.state_dict()
        sched.close()
        again = _resumed(saved, opt, ckpt, steps, model=model)
        assert again.units[0].val_worse == OVERFIT_REPORTS - 1
        assert again.units[0].val_best == pytest.approx(1.0 / (3 * every))
        train(model, opt, again, last - every + 1, last - 1, every, **reports)
        assert again.mult > 1.0
        train(model, opt, again, last - 1, last, every, **reports)  # the last report
    assert again.mult == 1.0 and again.events["guard_overfits"] == 1
    assert again.events["guard_rollbacks"] == 0


def test_a_rollback_starts_the_overfit_count_again(tiny_checkpoint: Path) -> None:
    """Reports above the best, then a raise the training loss punishes is reverted and rolled
    back: the reports before the rollback measured weights that are gone, so the count starts
    again and the overfit check fires OVERFIT_REPORTS reports after the rollback, not before."""
    ckpt = raiser(tiny_checkpoint)
    every = ckpt.every
    revert = 4 * every  # the raise at 3 windows is judged on a window of loss 10
    turn = 2 * every

    def val_of(t: int, _: float) -> float:  # falls until ``turn``, then rises 5 % a report
        done = t + 1
        return 1.0 / done if done <= turn else 1.25 * 1.05 ** ((done - turn) // every) / turn

    def counts(s: ControllerScheduler, m: nn.Module, o: torch.optim.Optimizer, t: int) -> None:
        at[t] = (s.events["guard_reverts"], s.events["guard_overfits"])

    at: dict[int, tuple[int, int]] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        run(
            ckpt,
            lambda t, _: 10.0 if 3 * every <= t < revert else 1.0 / (1 + t),
            steps=revert + (OVERFIT_REPORTS + 2) * every,
            val_of=val_of,
            val_every=every,
            at_decision=counts,
        )
    assert at[revert] == (1, 0)  # reverted with 2 reports above the best counted
    fired = revert + OVERFIT_REPORTS * every
    assert at[fired - every] == (1, 0) and at[fired] == (1, 1), at
