"""Safety: the scheduler never raises inside training for a runtime condition; misuse fails (or
warns) up front with a message that says what to do."""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from tests.deploy._helpers import batch, make_model, nan_steps, optimizer_step, train, two_groups
from trajlib.controllers import load_controller
from trajlib.deploy import ControllerScheduler

V6 = Path(__file__).resolve().parents[2] / "models" / "trajlib-lr-v6" / "checkpoint"

LOSSES = ["ok", "nan", "inf", "none", "missing", "twice"]
GRADS = ["ok", "zero", "nan", "no_grad_layer", "skip_step", "huge"]
VALS = ["none", "ok", "nan", "after_step", "tensor"]
_LOADED: dict[str, object] = {}


@settings(
    max_examples=int(os.environ.get("TRAJLIB_FUZZ_EXAMPLES", "12")),
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
@given(
    ops=st.lists(
        st.tuples(st.sampled_from(LOSSES), st.sampled_from(GRADS), st.sampled_from(VALS)),
        min_size=10,
        max_size=45,
    ),
    layerwise=st.booleans(),
    save_at=st.integers(0, 45),
)
def test_fuzzed_training_never_raises_and_lrs_stay_in_bounds(
    tiny_checkpoint, ops, layerwise, save_at
):
    torch.set_num_threads(1)
    if "l" not in _LOADED:
        _LOADED["l"] = load_controller(tiny_checkpoint)
    loaded = _LOADED["l"]
    lo, hi = loaded.hp_space["lr"].low, loaded.hp_space["lr"].high
    model = make_model()
    opt = two_groups(model)
    bases = [g["lr"] for g in opt.param_groups]
    sched = ControllerScheduler(opt, loaded, total_steps=40, every=5, layerwise=layerwise)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for t, (lk, gk, vk) in enumerate(ops):
            x, y = batch(t, 8)
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            if gk == "no_grad_layer":
                model[0](x).sum().backward()  # the last layer gets no gradient
            else:
                loss.backward()
            if gk == "zero":
                for p in model.parameters():
                    p.grad.zero_()
            elif gk == "nan":
                model[2].weight.grad[0, 0] = math.nan
            elif gk == "huge":
                for p in model.parameters():
                    p.grad.mul_(1e30)
            if gk != "skip_step":
                opt.step()
            value = {"ok": loss, "nan": loss * math.nan, "inf": loss * math.inf}.get(lk)
            if lk == "twice":
                sched.observe(loss)
                sched.observe(float(loss.detach()))
            elif lk != "missing":
                sched.observe(value)
            if vk == "ok":
                sched.observe_validation(1.0, 0.5)
            elif vk == "nan":
                sched.observe_validation(math.nan)
            elif vk == "tensor":
                sched.observe_validation(torch.tensor(0.7))
            sched.step()
            if vk == "after_step":
                sched.observe_validation(0.9)
            if t == save_at:
                sched.load_state_dict(sched.state_dict())
            for lr, base, m in zip(sched.get_last_lr(), bases, sched.lr_multipliers):
                assert math.isfinite(lr)
                assert lo * (1 - 1e-9) <= m <= hi * (1 + 1e-9)
                assert lr == pytest.approx(base * m)
            assert sched.get_last_lr() == [g["lr"] for g in opt.param_groups]
    assert sched.step_count == len(ops)
    assert sched.events["skipped_steps"] == sum(g == "skip_step" for _, g, _ in ops)


def test_non_finite_features_hold_the_lr_and_are_counted(tiny_checkpoint):
    model = nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    # without the guard (with it, a start that is never finite is rescued: tests/deploy/test_guard)
    sched = ControllerScheduler(opt, tiny_checkpoint, total_steps=100, every=10, guard=None)
    nan_steps(model, opt, sched, 60)
    assert sched.get_last_lr() == [0.1]
    assert sched.events["held_nonfinite"] == 6 and sched.events["decisions"] == 0


def test_non_finite_controller_output_holds_the_lr(tiny_checkpoint):
    loaded = load_controller(tiny_checkpoint)
    loaded.controller.decide_values = lambda x, s=None: (np.full(5, np.nan), s)  # type: ignore
    model = make_model()
    opt = two_groups(model)
    sched = ControllerScheduler(opt, loaded, total_steps=100, every=10)
    lrs, _ = train(model, opt, sched, 0, 50, val_every=5)
    assert {tuple(r) for r in lrs} == {(0.05, 0.01)}
    assert sched.events["held_nonfinite"] == 5


def test_stepping_the_scheduler_before_the_optimizer_warns_once(tiny_checkpoint):
    opt = torch.optim.SGD(make_model().parameters(), lr=0.1)
    sched = ControllerScheduler(opt, tiny_checkpoint, total_steps=10)
    with pytest.warns(UserWarning, match=r"before `optimizer.step\(\)`"):
        sched.step()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sched.step()  # once only


def test_misuse_fails_up_front_with_a_clear_message(tiny_checkpoint):
    opt = torch.optim.SGD(make_model().parameters(), lr=0.1)
    for bad in (0, -5, 2.5, True, None):
        with pytest.raises(ValueError, match="total_steps"):
            ControllerScheduler(opt, tiny_checkpoint, total_steps=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="every"):
        ControllerScheduler(opt, tiny_checkpoint, total_steps=10, every=0)
    with pytest.raises(ValueError, match="optimizer"):
        ControllerScheduler(object(), tiny_checkpoint, total_steps=10)  # type: ignore[arg-type]


def test_misuse_inside_the_loop_warns_once_and_never_raises(tiny_checkpoint):
    # a deployed controller never raises inside the training: what the loop hands it that it
    # cannot take is said once (field, expected, got) and then used as best it can be
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = ControllerScheduler(opt, tiny_checkpoint, total_steps=10)
    with pytest.warns(UserWarning, match=r"`loss` expected a scalar.*shape \(4,\): using its mean"):
        sched.observe(torch.tensor([1.0, 2.0, 3.0, 6.0]))  # per-sample losses
    assert sched._loss == pytest.approx(3.0)
    sched.observe(torch.ones(2, 2))  # said once
    with pytest.warns(UserWarning, match=r"`loss` expected a scalar tensor or a float; got 'str'"):
        sched.observe("high")  # type: ignore[arg-type]
    assert sched.events["bad_loss"] == 1 and sched._loss_n == 2
    x, y = batch(0)
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    with pytest.warns(UserWarning, match=r"`epoch` expected None.*got 3: ignored"):
        sched.step(3)  # type: ignore[arg-type]
    assert sched.last_epoch == 1 and sched.events["errors"] == 0
    sched.observe(torch.ones(1, 1))  # one element is a scalar
    sched.observe("0.5")  # type: ignore[arg-type]  # a string is not a loss, even a numeric one
    assert sched.events["bad_loss"] == 2


def test_bad_validation_input_warns_once_per_argument_and_is_not_an_error(tiny_checkpoint):
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = ControllerScheduler(opt, tiny_checkpoint, total_steps=10)
    sched.observe(1.0)
    with pytest.warns(UserWarning, match=r"`val_loss` expected a scalar.*\(4, 1\): using its mean"):
        sched.observe_validation(torch.tensor([[1.0], [2.0], [3.0], [6.0]]))  # unreduced
    assert sched._val == (pytest.approx(3.0), None)
    sched.observe_validation(torch.ones(3))  # said once
    with pytest.warns(
        UserWarning, match=r"`val_acc` expected a scalar tensor or a float; got 'str'"
    ):
        sched.observe_validation(0.5, "high")  # type: ignore[arg-type]
    assert sched._val == (0.5, None)
    sched.observe_validation(object())  # type: ignore[arg-type]
    assert sched.events["bad_validation"] == 2 and sched.events["errors"] == 0


def test_close_removes_the_hooks(tiny_checkpoint):
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = ControllerScheduler(opt, tiny_checkpoint, total_steps=10)
    sched.close()
    x, y = batch(0)
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    assert sched._probe.steps_seen == 0


def test_steps_after_close_follow_the_base_schedule_quietly(tiny_checkpoint):
    """After close() nothing is measured or decided; step() goes on with the base schedule at
    the current multiplier instead of warning that no optimizer step ran."""
    import warnings

    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = ControllerScheduler(opt, V6, total_steps=100)  # cosine base
    sched.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train(model, opt, sched, 0, 60)
    assert sched.events["decisions"] == 0 and sched.events["skipped_steps"] == 0
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 0.6)))


def _misstepped(ckpt, n: int, step_calls) -> tuple[ControllerScheduler, list[str]]:
    """``n`` optimizer steps, each followed by ``step_calls(t)`` calls of the scheduler's
    ``step()``; the scheduler and every warning's message."""
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = ControllerScheduler(opt, ckpt, total_steps=400)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for t in range(n):
            sched.observe(optimizer_step(model, opt, t))
            for _ in range(step_calls(t)):
                sched.step()
    return sched, [str(w.message) for w in caught]


def test_a_scheduler_stepped_per_epoch_says_so_once(tiny_checkpoint):
    # torch's epoch schedulers are stepped once per epoch (here 10 optimizer steps); this one
    # counts optimizer steps
    sched, caught = _misstepped(tiny_checkpoint, 60, lambda t: int(t % 10 == 9))
    said = [m for m in caught if "between two step() calls" in m]
    assert len(said) == 1 and "10 optimizer steps" in said[0] and "not epochs" in said[0]
    assert sched.events["extra_optimizer_steps"] == 6 * 9 and sched.events["errors"] == 0


def test_stepped_after_every_optimizer_step_nothing_is_said(tiny_checkpoint):
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = ControllerScheduler(opt, tiny_checkpoint, total_steps=60)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # neither warning below, nor any other
        train(model, opt, sched, 0, 60)
    assert sched.events["extra_optimizer_steps"] == 0 and sched.events["decisions"] > 0
    assert sched.events["errors"] == 0  # a warning turned error inside step() counts here


def test_a_scheduler_stepped_twice_per_optimizer_step_says_so_once(tiny_checkpoint):
    # e.g. once in train_step and once in the loop
    sched, caught = _misstepped(tiny_checkpoint, 60, lambda t: 2)
    said = [m for m in caught if "followed no optimizer step" in m]
    assert len(said) == 1 and "called twice per optimizer step" in said[0]
    assert sched.events["skipped_steps"] == 60 and sched.events["errors"] == 0


def test_stepping_past_total_steps_says_so_once(tiny_checkpoint):
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = ControllerScheduler(opt, tiny_checkpoint, total_steps=50)
    train(model, opt, sched, 0, 50)  # the whole budget: nothing said
    with pytest.warns(UserWarning, match=r"past total_steps=50: .*final value"):
        train(model, opt, sched, 50, 53)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train(model, opt, sched, 53, 55)  # once
    assert sched.events["errors"] == 0


def test_a_budget_shorter_than_the_decision_interval_warns_up_front(tiny_checkpoint):
    opt = torch.optim.SGD(make_model().parameters(), lr=0.1)
    every = load_controller(tiny_checkpoint).every
    with pytest.warns(UserWarning, match=rf"total_steps={every} .* never decides"):
        ControllerScheduler(opt, tiny_checkpoint, total_steps=every)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ControllerScheduler(opt, tiny_checkpoint, total_steps=every + 1)


def test_a_loop_that_never_observes_its_loss_is_told_so(tiny_checkpoint):
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = ControllerScheduler(opt, tiny_checkpoint, total_steps=120)
    with pytest.warns(RuntimeWarning, match=r"no training loss was reported.*observe\(loss\)"):
        train(model, opt, sched, 0, 120, observed=lambda t, loss: None)  # no loss observed
    assert sched.events["missing_loss"] == 120 and sched.events["decisions"] == 0
    assert sched.events["held_nonfinite"] > 0 and sched.events["errors"] == 0


def test_a_group_frozen_at_lr_0_neither_stops_the_controller_nor_moves():
    """A param group at LR 0 (a frozen layer) before a trainable one: the features read the
    trainable group, so the controller decides; the frozen group stays at 0."""
    model = make_model()
    opt = torch.optim.SGD(
        [{"params": model[0].parameters(), "lr": 0.0}, {"params": model[2].parameters()}],
        lr=0.05,
        momentum=0.9,
    )
    sched = ControllerScheduler(opt, V6, total_steps=120)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        lrs, _ = train(model, opt, sched, 0, 120)
    assert sched.events["decisions"] > 0 and sched.events["held_nonfinite"] == 0
    assert all(lr[0] == 0.0 for lr in lrs) and sched.events["errors"] == 0


def test_an_lr_of_0_everywhere_holds_and_says_why():
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
    sched = ControllerScheduler(opt, V6, total_steps=120)
    with pytest.warns(RuntimeWarning, match=r"initial LR is 0 in every param group"):
        lrs, _ = train(model, opt, sched, 0, 120)
    assert sched.events["held_nonfinite"] > 0 and sched.events["errors"] == 0
    assert all(lr == [0.0] for lr in lrs)


def test_a_loss_that_reaches_zero_is_named_when_the_controller_holds():
    # a hinge loss on separable data reaches exactly 0; log(loss) features are then undefined
    torch.manual_seed(0)
    model = nn.Linear(8, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    sched = ControllerScheduler(opt, V6, total_steps=200)  # decides without validation
    with pytest.warns(RuntimeWarning, match=r"loss was exactly 0 \(last at step \d+\)"):
        for t in range(200):
            x, _ = batch(t)
            x[:, 0] = x[:, 0].sign() * (x[:, 0].abs() + 1.0)  # separable with a margin
            y = torch.where(x[:, :1] > 0, 1.0, -1.0)
            loss = torch.clamp(1 - y * model(x * torch.tensor([10.0] + [0.0] * 7)), min=0).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.observe(loss)
            sched.step()
    assert sched.events["held_nonfinite"] > 0 and sched.events["errors"] == 0


def test_a_loss_below_zero_holds_the_run_and_says_why(tiny_checkpoint):
    # a Gaussian NLL goes below 0: ratios and logs of such a loss are undefined or inverted, so
    # the controller follows the base schedule from there, and says so once
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = ControllerScheduler(opt, tiny_checkpoint, total_steps=200, every=25)
    x = torch.randn(512, 20)
    y = x[:, :1].sin() + 0.01 * torch.randn(512, 1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for t in range(200):
            i = torch.arange(64) + 64 * (t % 8)
            out = model(x[i])
            loss = nn.functional.gaussian_nll_loss(out[:, :1], y[i], out[:, 1:].exp())
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.observe(loss)
            sched.step()
    assert loss.item() < 0
    held = [str(w.message) for w in caught if "went below 0" in str(w.message)]
    assert len(held) == 1 and "observe such a loss" in held[0]
    at = sched._neg_loss[0]
    assert not [s for s, *_ in sched.actions_taken if s > at]  # nothing decided after it
    assert sched.events["held_nonfinite"] == 7 - sum(1 for s, *_ in sched.actions_taken)
    assert sched.events["errors"] == 0


def test_warnings_point_at_the_user_s_line(tiny_checkpoint):
    """A warning names the line of the loop that handed over what it could not take, not a line
    inside trajlib or torch; an error in the decision path names the exception."""
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = ControllerScheduler(opt, tiny_checkpoint, total_steps=100)
    with pytest.warns(UserWarning) as rec:
        sched.observe(torch.ones(3))
    assert rec[0].filename == __file__
    with pytest.warns(RuntimeWarning, match=r"decision path \(ValueError: boom\)") as rec:
        try:
            raise ValueError("boom")
        except ValueError:
            sched._count_error()
    assert rec[0].filename == __file__
