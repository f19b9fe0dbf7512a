"""Beyond the LR: momentum / beta1 and weight decay, clamped to the checkpoint's bounds."""

from __future__ import annotations

import math

import pytest
import torch

from tests.deploy._helpers import make_model, train, two_groups, with_policy
from trajlib.controllers import load_controller
from trajlib.deploy import ControllerScheduler
from trajlib.space import Action, ActionSpace, HyperParam, HyperparameterSpace

ACTIONS = ActionSpace(
    (
        Action({}, "keep"),
        Action({"lr": math.log(2.0)}, "lr x2"),
        Action({"momentum": 1.0}, "momentum up"),
        Action({"momentum": -1.0}, "momentum down"),
        Action({"weight_decay": math.log(10.0)}, "wd x10"),
    )
)
SPACE = HyperparameterSpace(
    (
        HyperParam("lr", 0.25, 4.0, "log"),
        HyperParam("momentum", 0.5, 0.95, "logit"),
        HyperParam("weight_decay", 1e-5, 1e-2, "log"),
    )
)


def _loaded(tiny_checkpoint, action: int):
    return with_policy(load_controller(tiny_checkpoint), lambda x: action, ACTIONS, SPACE)


def test_sgd_momentum_moves_per_group_and_is_clamped(tiny_checkpoint):
    model = make_model()
    opt = two_groups(model, momentum=0.9)
    opt.param_groups[1]["momentum"] = 0.6
    sched = ControllerScheduler(opt, _loaded(tiny_checkpoint, 2), total_steps=200, every=10)
    seen = []
    for t in range(0, 120, 10):
        train(model, opt, sched, t, t + 10, val_every=5)
        seen.append([g["momentum"] for g in opt.param_groups])
    assert seen[0][0] > 0.9 and seen[0][1] > 0.6  # each group moved by the same logit step
    assert seen[0][1] < seen[0][0]
    assert seen[-1] == [0.95, 0.95]  # clamped at the bound
    assert all(0.5 <= m <= 0.95 for row in seen for m in row)
    assert [g["lr"] for g in opt.param_groups] == [0.05, 0.01]  # the LR was not moved


def test_adam_beta1_and_weight_decay(tiny_checkpoint):
    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=0.0)
    sched = ControllerScheduler(opt, _loaded(tiny_checkpoint, 3), total_steps=200, every=10)
    train(model, opt, sched, 0, 100, val_every=5)
    assert opt.param_groups[0]["betas"] == (0.5, 0.99)  # beta1 down to its bound, beta2 kept
    sched.close()
    opt2 = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    sched = ControllerScheduler(opt2, _loaded(tiny_checkpoint, 4), total_steps=200, every=10)
    wds = []
    for t in range(0, 60, 10):
        train(model, opt2, sched, t, t + 10, val_every=5)
        wds.append(opt2.param_groups[0]["weight_decay"])
    # x10 per decision, capped at the bound 1e-2
    assert wds[0] == pytest.approx(1e-3)
    assert wds[-1] == pytest.approx(1e-2)
    assert all(1e-5 <= w <= 1e-2 for w in wds)


def test_hyperparameters_the_user_switched_off_stay_off(tiny_checkpoint):
    """Weight decay 0 and momentum 0 are the user's choice: a controller that moves them leaves
    them at 0 (an RMSprop with momentum 0 never made a momentum buffer: raising it made
    ``optimizer.step()`` raise KeyError)."""
    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    sched = ControllerScheduler(opt, _loaded(tiny_checkpoint, 4), total_steps=200, every=10)
    train(model, opt, sched, 0, 40, val_every=5)
    assert sched.events["decisions"] == 4 and opt.param_groups[0]["weight_decay"] == 0.0
    for make in (
        lambda p: torch.optim.SGD(p, lr=0.05),
        lambda p: torch.optim.RMSprop(p, lr=1e-3),
        lambda p: torch.optim.Adam(p, lr=1e-3, betas=(0.0, 0.99)),
    ):
        model = make_model()
        opt = make(model.parameters())
        sched = ControllerScheduler(opt, _loaded(tiny_checkpoint, 2), total_steps=200, every=10)
        train(model, opt, sched, 0, 40, val_every=5)  # raises if a momentum buffer is missing
        assert sched.events["decisions"] == 4 and sched.events["errors"] == 0
        g = opt.param_groups[0]
        assert (g["betas"][0] if "betas" in g else g["momentum"]) == 0.0


def test_lr_multiplier_is_clamped_to_the_checkpoint_bounds(tiny_checkpoint):
    model = make_model()
    opt = two_groups(model)
    sched = ControllerScheduler(opt, _loaded(tiny_checkpoint, 1), total_steps=200, every=10)
    lrs, _ = train(model, opt, sched, 0, 100, val_every=5)
    assert sched.lr_multipliers == [4.0, 4.0]
    assert lrs[-1] == pytest.approx([0.05 * 4, 0.01 * 4])  # each group keeps its initial LR
    for row in lrs:
        for lr, base in zip(row, (0.05, 0.01)):
            assert base * 0.25 * (1 - 1e-9) <= lr <= base * 4.0 * (1 + 1e-9)


def test_an_optimizer_without_momentum_gets_lr_only_control(tiny_checkpoint):
    """Adagrad has no momentum: a momentum move acts as "keep", the LR moves are applied."""
    model = make_model()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.01)
    sched = ControllerScheduler(opt, _loaded(tiny_checkpoint, 2), total_steps=200, every=10)
    train(model, opt, sched, 0, 40, val_every=5)
    assert sched.events["decisions"] == 4 and sched.lr_multipliers == [1.0]
    assert "momentum" not in opt.param_groups[0] and "betas" not in opt.param_groups[0]
    model = make_model()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.01)
    sched = ControllerScheduler(opt, _loaded(tiny_checkpoint, 1), total_steps=200, every=10)
    lrs, _ = train(model, opt, sched, 0, 40, val_every=5)
    assert sched.lr_multipliers == [4.0] and lrs[-1] == [pytest.approx(0.04)]


def test_checkpoint_moving_an_unsettable_hyperparameter_fails_up_front(tiny_checkpoint):
    actions = ActionSpace((Action({}, "keep"), Action({"l2": 1.0}, "l2 up")))
    loaded = with_policy(load_controller(tiny_checkpoint), lambda x: 0, actions)
    opt = torch.optim.SGD(make_model().parameters(), lr=0.1)
    with pytest.raises(ValueError, match="l2"):
        ControllerScheduler(opt, loaded, total_steps=100)


def test_initial_values_outside_the_bounds_warn(tiny_checkpoint):
    opt = torch.optim.SGD(make_model().parameters(), lr=0.1, momentum=0.99)
    with pytest.warns(UserWarning, match="momentum 0.99 is outside"):
        ControllerScheduler(opt, _loaded(tiny_checkpoint, 0), total_steps=100)


pytestmark = pytest.mark.filterwarnings("ignore:ControllerScheduler. weight_decay 0.0 is outside")
