"""The lookahead's scale search: at the first decision point, measure the current LR against
factors of it on the same batches and apply the best."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn

from tests.deploy.test_lookahead import V2, _data, _linear
from trajlib.deploy import ControllerScheduler, Lookahead
from trajlib.deploy._lookahead import search_choice
from trajlib.errors import ConfigError
from trajlib.evaluate.suite._loop import LookaheadSetting

STEPS, EVERY = 120, 20


def _search_run(
    lr: float, search: tuple[float, ...], guard: float | None = 0.5, **kwargs: Any
) -> tuple[ControllerScheduler, Lookahead, list[list[float]]]:
    model, opt, train_step = _linear(lambda p: torch.optim.SGD(p, lr=lr, momentum=0.9))
    la = Lookahead(train_step, model, top_k=1, horizon=5, search=search, **kwargs)
    sched = ControllerScheduler(opt, V2, total_steps=STEPS, every=EVERY, lookahead=la, guard=guard)
    lrs = []
    for batch in sched.batches(_data()):
        lrs.append([g["lr"] for g in opt.param_groups])
        sched.observe(train_step(batch))
        sched.step()
    return sched, la, lrs


@pytest.mark.parametrize(("lr", "direction"), [(1e-4, "up"), (30.0, "down")])
def test_search_finds_the_scale_of_a_start_far_off(lr: float, direction: str) -> None:
    sched, la, _ = _search_run(lr, (1 / 16, 0.25, 4, 16), search_horizon=12, search_budget=1.0)
    first = la.decisions[0]
    assert first.step == EVERY and first.lr_factors[0] == 1.0 and not first.candidates
    assert first.horizon == 12 and len(first.scores) == len(first.lr_factors)
    # the applied factor is the measured best: a linear classifier at lr 1e-4 learns nothing in
    # 12 steps, at lr 30 with momentum it diverges
    best = first.lr_factors[min(range(len(first.scores)), key=first.scores.__getitem__)]
    assert (best > 1) if direction == "up" else (best < 1)
    assert first.scores[0] == math.inf or first.scores[0] > min(first.scores)
    hp = sched._bounds["lr"]
    assert first.factor == pytest.approx(hp.clamp(best) if hp else best)
    assert sum(1 for d in la.decisions if d.lr_factors) == 1  # once, at the first decision
    assert sched.events["errors"] == sched.events["lookahead_errors"] == 0


def test_search_charges_its_steps_and_applies_the_factor_to_the_next_steps() -> None:
    sched, la, lrs = _search_run(1e-4, (4.0, 16.0), search_horizon=10, guard=None)
    first = la.decisions[0]
    assert sched.events["lookahead_steps"] >= 10 * len(first.lr_factors)
    assert sched.compute_ratio == pytest.approx(1 + sched.events["lookahead_steps"] / STEPS)
    # the step after the search trains at the chosen multiplier of the base schedule
    before, after = lrs[EVERY - 1][0], lrs[EVERY][0]
    base = sched.base_lrs[0]
    f_before = sched._base_factor(EVERY - 1)
    f_after = sched._base_factor(EVERY)
    assert before == pytest.approx(base * f_before)
    assert after == pytest.approx(base * f_after * first.factor)


def test_a_search_raise_is_on_the_guards_trial_and_capped_by_its_ceiling() -> None:
    model, opt, train_step = _linear(lambda p: torch.optim.SGD(p, lr=1e-4, momentum=0.9))
    la = Lookahead(train_step, model, top_k=1, horizon=5, search=(16.0,), search_horizon=10)
    sched = ControllerScheduler(opt, V2, total_steps=STEPS, every=EVERY, lookahead=la)
    u = sched.units[0]
    for batch in sched.batches(_data()):
        sched.observe(train_step(batch))
        sched.step()
        if sched.step_count == EVERY + 1:  # just after the search's decision
            break
    first = la.decisions[0]
    assert first.lr_factors and first.factor > 1
    # the raise is on the guard's trial like a controller's raise (from multiplier 1, at the
    # decision, for GUARD_WINDOWS windows), with a copy of the weights for a rollback
    assert u.probation is not None and u.probation[0] == 1.0 and u.probation[3] == EVERY
    assert sched._saved is not None and sched._saved["step"] == EVERY
    hp = sched._bounds["lr"]
    assert hp is None or u.mult <= hp.high
    # a ceiling set by an earlier revert bounds the search's raises
    model, opt, train_step = _linear(lambda p: torch.optim.SGD(p, lr=1e-4, momentum=0.9))
    la2 = Lookahead(train_step, model, top_k=1, horizon=5, search=(16.0,), search_horizon=10)
    s2 = ControllerScheduler(opt, V2, total_steps=STEPS, every=EVERY, lookahead=la2)
    s2.units[0].ceiling = s2.units[0].mult * 2
    for batch in s2.batches(_data()[: EVERY + 15]):
        s2.observe(train_step(batch))
        s2.step()
    assert la2.decisions[0].factor == pytest.approx(2.0)


def test_search_keeps_the_lr_on_a_tie_and_with_a_margin() -> None:
    # a margin of 0.99: no factor beats the current LR's loss by 99 %
    _, la, _ = _search_run(0.05, (0.25, 4.0), search_horizon=8, margin=0.99)
    first = la.decisions[0]
    assert first.factor == 1.0 and all(math.isfinite(s) for s in first.scores)


def test_search_arguments_and_the_suite_setting() -> None:
    model = nn.Linear(2, 1)

    def step(batch: Any) -> float:
        return 0.0

    for bad in ((1.0,), (0.0,), (-2.0,), (float("inf"),), ("x",), 3, (True,)):
        with pytest.raises(ConfigError, match="search"):
            Lookahead(step, model, search=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="search_horizon"):
        Lookahead(step, model, search=(4.0,), search_horizon=0)
    assert Lookahead(step, model, search=[4, 0.5]).search == (4.0, 0.5)
    s = LookaheadSetting.of((1, 6, 3, "unsure", (0.25, 4, 16), 20))
    assert s is not None and s.tag() == "la1x6c3-unsure-s0.25_4_16h20w4b0.3"
    assert LookaheadSetting.of((1, 6)).tag() == "la1x6"  # type: ignore[union-attr]
    with pytest.raises(ConfigError, match="lookahead"):
        LookaheadSetting.of((1, 6, 0, "always", (1.0,)))


def test_search_then_the_plain_lookahead() -> None:
    # looking at every decision: the search at the first, the controller's candidates after
    sched, la, _ = _search_run(1e-4, (4.0,), when="always")
    assert la.decisions[0].lr_factors and all(not d.lr_factors for d in la.decisions[1:])
    assert all(d.candidates for d in la.decisions[1:])
    assert sched.events["lookahead_decisions"] == len(la.decisions) == (STEPS - 1) // EVERY


def test_search_choice_moves_only_on_a_paired_gain() -> None:
    base = [2.3, 2.31, 2.29, 2.3, 2.32, 2.28, 2.3, 2.31]
    # one lucky batch in the second half: lower on average, not consistently: no move
    lucky = base[:4] + [2.32, 1.6, 2.31, 2.33]
    scores, chosen = search_choice({1.0: base, 4.0: lucky}, horizon=8)
    assert scores[4.0] < scores[1.0] and chosen == 1.0
    # consistently lower on the same batches: moves, to the lowest of the eligible factors
    better = [v - 0.2 for v in base]
    best = [v - 0.3 for v in base]
    assert search_choice({1.0: base, 4.0: better, 16.0: best}, horizon=8)[1] == 16.0
    assert search_choice({1.0: base, 4.0: better, 16.0: lucky}, horizon=8)[1] == 4.0
    # the first half does not count (the branches start from the same state)
    early = [0.1] * 4 + base[4:]
    assert search_choice({1.0: base, 4.0: early}, horizon=8)[1] == 1.0
    # a margin a gain must exceed (relative to the current LR's score)
    assert search_choice({1.0: base, 4.0: better}, horizon=8, margin=0.2)[1] == 1.0
    # the current LR diverged: any finite factor is eligible; all diverged: None
    scores, chosen = search_choice({1.0: None, 0.25: base, 4.0: None}, horizon=8)
    assert chosen == 0.25 and scores[1.0] == scores[4.0] == math.inf
    assert search_choice({1.0: None, 4.0: None}, horizon=8)[1] is None
    # the cool-down's losses (after the horizon) are part of the tail
    cooled = base + [2.0, 2.0]
    assert search_choice({1.0: base + [2.3, 2.3], 4.0: cooled}, horizon=8)[1] == 1.0
    assert search_choice({1.0: base + [2.3, 2.3], 4.0: better + [2.0, 2.0]}, horizon=8)[1] == 4.0


def test_search_waits_for_a_decision_point_with_its_whole_horizon_in_the_epoch() -> None:
    # epochs of 30 batches, a decision every 20 steps, a search of 12 + 3 steps: at step 20 only
    # 10 batches are left in the epoch, so the search runs at step 40 (10 into the second epoch)
    model, opt, train_step = _linear(lambda p: torch.optim.SGD(p, lr=1e-4, momentum=0.9))
    la = Lookahead(
        train_step, model, top_k=1, horizon=5, cooldown=3, search=(4.0, 16.0), search_horizon=12
    )
    sched = ControllerScheduler(opt, V2, total_steps=STEPS, every=EVERY, lookahead=la)
    epoch = _data()[:30]
    for _ in range(4):
        for batch in sched.batches(epoch):
            sched.observe(train_step(batch))
            sched.step()
    searches = [d for d in la.decisions if d.lr_factors]
    assert [d.step for d in searches] == [2 * EVERY] and searches[0].horizon == 12
    assert sched.events["lookahead_searches"] == 1


def test_a_resumed_run_does_not_search_again() -> None:
    def run(state: Any, batches: list[Any]) -> tuple[ControllerScheduler, Lookahead]:
        model, opt, train_step = _linear(lambda p: torch.optim.SGD(p, lr=1e-4, momentum=0.9))
        la = Lookahead(train_step, model, top_k=1, horizon=5, search=(4.0,), search_horizon=10)
        sched = ControllerScheduler(
            opt, V2, total_steps=STEPS, every=EVERY, lookahead=la, guard=None
        )
        if state is not None:
            sched.load_state_dict(state)
        for batch in sched.batches(batches):
            sched.observe(train_step(batch))
            sched.step()
        return sched, la

    first, la1 = run(None, _data()[:30])  # the search at step 20
    assert [d.step for d in la1.decisions if d.lr_factors] == [EVERY]
    # resumed at step 30: decision points 40, 60 and 80 are within the search's reach, but it ran
    again, la2 = run(first.state_dict(), _data()[30:90])
    assert again.step_count == 90 and again.events["lookahead_searches"] == 1
    assert not any(d.lr_factors for d in la2.decisions)
    # without the record of the search (a state from before it), the resumed run searches
    state = first.state_dict()
    state["trajlib"]["events"].pop("lookahead_searches")
    _, la4 = run(state, _data()[30:90])
    assert [d.step for d in la4.decisions if d.lr_factors] == [2 * EVERY]


def test_search_keeps_within_its_compute_budget() -> None:
    # 60 steps, a search of 12 + 3 steps over 3 learning rates would cost 45 steps (75 %); its
    # budget of 30 % (18 steps) leaves 6 per branch
    model, opt, train_step = _linear(lambda p: torch.optim.SGD(p, lr=1e-4, momentum=0.9))
    la = Lookahead(
        train_step, model, top_k=1, horizon=5, cooldown=3, search=(4.0, 16.0), search_horizon=12
    )
    sched = ControllerScheduler(opt, V2, total_steps=60, every=EVERY, lookahead=la, guard=None)
    for batch in sched.batches(_data()[:60]):
        sched.observe(train_step(batch))
        sched.step()
    search = la.decisions[0]
    assert search.lr_factors and search.horizon == 6
    assert sched.events["lookahead_steps"] >= 6 * 3
    # a budget too small for 2 steps per branch: no search, the plain decision
    model, opt, train_step = _linear(lambda p: torch.optim.SGD(p, lr=1e-4, momentum=0.9))
    la = Lookahead(train_step, model, search=(4.0,), search_horizon=12, search_budget=0.05)
    sched = ControllerScheduler(opt, V2, total_steps=60, every=EVERY, lookahead=la, guard=None)
    for batch in sched.batches(_data()[:60]):
        sched.observe(train_step(batch))
        sched.step()
    assert not any(d.lr_factors for d in la.decisions) and sched.events["errors"] == 0
    for bad in (0, 1.5, -0.1, True, "x"):
        with pytest.raises(ConfigError, match="search_budget"):
            Lookahead(train_step, model, search=(4.0,), search_budget=bad)  # type: ignore[arg-type]
