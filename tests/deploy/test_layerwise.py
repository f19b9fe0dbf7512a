"""Layer-wise adaptation: one feature stream, one multiplier per param group, one shared controller."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.deploy._helpers import make_model, train, with_policy
from trajlib.controllers import load_controller
from trajlib.deploy import ControllerScheduler


def _opt(model: torch.nn.Module) -> torch.optim.SGD:
    # group 0 learns fast (large update/weight ratio), group 1 barely moves
    return torch.optim.SGD(
        [
            {"params": model[0].parameters(), "lr": 0.5},
            {"params": model[2].parameters(), "lr": 1e-4},
        ],
        lr=0.1,
        momentum=0.9,
    )


def _by_update_ratio(names: list[str]):
    i = names.index("log_upd_ratio_mean")
    up, down = 4, 0  # lr x2 and lr x0.5 in the checkpoint's action space

    def policy(x: np.ndarray) -> int:
        return up if x[i] < math.log(1e-3) else down

    return policy


def test_groups_with_different_statistics_get_different_multipliers(tiny_checkpoint):
    loaded = load_controller(tiny_checkpoint)
    assert loaded.action_space.labels[0] == "lr x0.5" and loaded.action_space.labels[4] == "lr x2"
    scripted = with_policy(loaded, _by_update_ratio(loaded.feature_names))
    model = make_model()
    opt = _opt(model)
    # the guard off: its stall check would lift group 0's cuts off the floor on this toy loss
    sched = ControllerScheduler(
        opt, scripted, total_steps=400, every=10, layerwise=True, guard=None
    )
    lrs, _ = train(model, opt, sched, 0, 200, val_every=5)
    lo, hi = loaded.hp_space["lr"].low, loaded.hp_space["lr"].high
    m0, m1 = sched.lr_multipliers
    assert m0 < 1.0 < m1
    assert m0 == pytest.approx(lo) or m1 == pytest.approx(hi)
    for row in lrs:  # bounds hold per group
        for lr, base in zip(row, (0.5, 1e-4)):
            assert base * lo * (1 - 1e-9) <= lr <= base * hi * (1 + 1e-9)
    # each group's features read its own statistics, the loss is shared
    f0, f1 = (u.features.values_dict() for u in sched.units)
    assert f0["log_upd_ratio_mean"] > f1["log_upd_ratio_mean"]
    assert f0["grad_norm_cv_100"] != f1["grad_norm_cv_100"]
    assert f0["loss_slope_50"] == f1["loss_slope_50"]
    assert f0["log_lr_mult"] == pytest.approx(math.log(m0))


def test_global_mode_gives_every_group_the_same_multiplier(tiny_checkpoint):
    loaded = load_controller(tiny_checkpoint)
    scripted = with_policy(loaded, _by_update_ratio(loaded.feature_names))
    model = make_model()
    opt = _opt(model)
    sched = ControllerScheduler(opt, scripted, total_steps=400, every=10)
    train(model, opt, sched, 0, 60, val_every=5)
    m = sched.lr_multipliers
    assert m[0] == m[1] and len(sched.units) == 1
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.5 * m[0], 1e-4 * m[0]])


def test_layerwise_adopts_a_param_group_added_later(tiny_checkpoint):
    model = make_model()
    opt = torch.optim.SGD(model[0].parameters(), lr=0.05)
    sched = ControllerScheduler(opt, tiny_checkpoint, total_steps=100, every=10, layerwise=True)
    train(model, opt, sched, 0, 15, val_every=5)
    opt.add_param_group({"params": model[2].parameters(), "lr": 0.01})
    train(model, opt, sched, 15, 45, val_every=5)
    assert len(sched.units) == 2 and len(sched.get_last_lr()) == 2
    assert sched.events["errors"] == 0


def test_a_param_group_without_parameters_is_left_alone_quietly(tiny_checkpoint):
    """Layer-wise, an empty group has nothing to measure or decide for: it is skipped, not held
    as if its statistics were non-finite (which also used the one hold warning up). The run
    decides as the same run without the empty group."""
    loaded = load_controller(tiny_checkpoint)
    keep = loaded.action_space.keep_index
    events = []
    for empty in (False, True):
        model = make_model()
        groups = [{"params": model.parameters()}] + ([{"params": [], "lr": 0.5}] if empty else [])
        opt = torch.optim.SGD(groups, lr=0.1, momentum=0.9)
        sched = ControllerScheduler(
            opt, with_policy(loaded, lambda x: keep), total_steps=100, every=10, layerwise=True
        )
        train(model, opt, sched, 0, 60)
        events.append(sched.events)
    assert events[1] == events[0]
    assert events[1]["decisions"] == 5 and events[1]["errors"] == 0
